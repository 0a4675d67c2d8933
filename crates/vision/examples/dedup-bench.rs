//! The leakage index at scale (what `bench/leakage` compares against faiss).
//!
//! `dedup-bench gen <random|clustered> <n> <seed> <dir>`: `n` reference and `n` query images'
//! hashes, seeded, written to `<dir>/ref.txt` and `<dir>/query.txt` (one image a line:
//! `phash phash_flip exact`, 64 hex digits each; a pHash's bytes are its four words
//! little-endian, so bit `i` is bit `i % 8` of byte `i / 8`, the layout faiss reads), and the
//! planted matches to `<dir>/planted.tsv` (`query reference distance plain|flip|exact`).
//! - random: every pHash uniform (random 256-bit hashes are ~128 bits apart: only the
//!   planted pairs match).
//! - clustered: 2,000 centres; each image's pHash is a centre with 4..=40 random bits
//!   flipped, its mirrored pHash the same centre with other flips (faces are nearly
//!   symmetric), so chunk values collide far more often than for random hashes and many
//!   pairs are within the threshold, as with real face pHashes.
//! Both get the same plants: 100 byte copies (exact), 10 near copies at each distance
//! 0..=30 (pHash with that many bits flipped) and 4 mirrored ones at each distance 0..=24
//! (a query whose mirrored pHash is a reference's pHash with that many bits flipped).
//!
//! `dedup-bench check <dir>`: every near pair (`near_pairs` over the reference pHashes and
//! the queries' pHashes then mirrored pHashes, query index `n + q` for a mirrored one, at
//! `DEFAULT_NEAR_DISTANCE`): checks the planted near pairs are found, prints
//! `pairs <count> checksum <sum of mix(query, reference, distance)> matched <queries> planted-near-found <k>`.
//! `dedup-bench time <dir>`: times `find_duplicates` (exact map, near pairs of plain and
//! mirrored queries, best per query) once; prints `ours secs <s> matches <m> exact <e> near <k>`.
//! Reading the files is not timed. Threads: RAYON_NUM_THREADS.
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use pipeline_vision::dedup::{find_duplicates, near_pairs, ImageHash, MatchKind, PHash, DEFAULT_NEAR_DISTANCE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_hash(rng: &mut impl Rng) -> PHash {
    [rng.gen(), rng.gen(), rng.gen(), rng.gen()]
}

/// `h` with `d` distinct random bits flipped.
fn flipped(h: PHash, d: usize, rng: &mut impl Rng) -> PHash {
    let mut h = h;
    for b in rand::seq::index::sample(rng, 256, d) {
        h[b / 64] ^= 1u64 << (b % 64);
    }
    h
}

fn hex(h: &PHash) -> String {
    let mut s = String::with_capacity(64);
    for w in h {
        for b in w.to_le_bytes() {
            write!(s, "{b:02x}").unwrap();
        }
    }
    s
}

fn parse_phash(s: &str) -> PHash {
    let mut h = [0u64; 4];
    for (w, out) in h.iter_mut().enumerate() {
        let mut bytes = [0u8; 8];
        for (i, b) in bytes.iter_mut().enumerate() {
            let k = 2 * (w * 8 + i);
            *b = u8::from_str_radix(&s[k..k + 2], 16).expect("hex");
        }
        *out = u64::from_le_bytes(bytes);
    }
    h
}

fn gen(case: &str, n: usize, seed: u64, dir: &Path) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<PHash> = (0..2000).map(|_| random_hash(&mut rng)).collect();
    let one = |rng: &mut ChaCha8Rng| -> ImageHash {
        let exact = [0u8; 32].map(|_| rng.gen());
        match case {
            "random" => ImageHash { exact, phash: random_hash(rng), phash_flip: random_hash(rng) },
            "clustered" => {
                let c = centres[rng.gen_range(0..centres.len())];
                let (a, b) = (rng.gen_range(4..=40), rng.gen_range(4..=40));
                ImageHash { exact, phash: flipped(c, a, rng), phash_flip: flipped(c, b, rng) }
            }
            _ => panic!("case: random or clustered"),
        }
    };
    let reference: Vec<ImageHash> = (0..n).map(|_| one(&mut rng)).collect();
    let mut queries: Vec<ImageHash> = (0..n).map(|_| one(&mut rng)).collect();
    // Plants on distinct queries, spread over both sets.
    let mut planted = String::new();
    let mut k = 0usize;
    let next = |k: &mut usize| {
        let (q, r) = ((3 + *k * 131) % n, (5 + *k * 197) % n);
        *k += 1;
        (q, r)
    };
    for _ in 0..100 {
        let (q, r) = next(&mut k);
        queries[q] = reference[r];
        writeln!(planted, "{q}\t{r}\t0\texact").unwrap();
    }
    for d in 0..=30 {
        for _ in 0..10 {
            let (q, r) = next(&mut k);
            queries[q].phash = flipped(reference[r].phash, d, &mut rng);
            writeln!(planted, "{q}\t{r}\t{d}\tplain").unwrap();
        }
    }
    for d in 0..=24 {
        for _ in 0..4 {
            let (q, r) = next(&mut k);
            queries[q].phash_flip = flipped(reference[r].phash, d, &mut rng);
            writeln!(planted, "{q}\t{r}\t{d}\tflip").unwrap();
        }
    }
    assert!(k < n / 2, "n too small for the plants");
    std::fs::create_dir_all(dir).unwrap();
    for (name, set) in [("ref.txt", &reference), ("query.txt", &queries)] {
        let mut s = String::with_capacity(set.len() * 196);
        for h in set.iter() {
            writeln!(s, "{} {} {}", hex(&h.phash), hex(&h.phash_flip), h.exact_hex()).unwrap();
        }
        std::fs::write(dir.join(name), s).unwrap();
    }
    std::fs::write(dir.join("planted.tsv"), planted).unwrap();
}

fn load(path: &Path) -> Vec<ImageHash> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            ImageHash { phash: parse_phash(f[0]), phash_flip: parse_phash(f[1]), exact: ImageHash::parse_exact(f[2]).expect("exact hex") }
        })
        .collect()
}

/// splitmix64's finaliser over (query, reference, distance): the bench's pair checksum
/// (the same arithmetic in numpy on faiss's result).
fn mix(q: usize, r: usize, d: u32) -> u64 {
    let mut x = ((((q as u64) << 20) | r as u64) << 8) | d as u64;
    x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    x
}

fn check(dir: &Path) {
    let reference = load(&dir.join("ref.txt"));
    let queries = load(&dir.join("query.txt"));
    let n = queries.len();
    let rh: Vec<PHash> = reference.iter().map(|r| r.phash).collect();
    let qh: Vec<PHash> = queries.iter().map(|q| q.phash).chain(queries.iter().map(|q| q.phash_flip)).collect();
    let pairs = near_pairs(&rh, &qh, DEFAULT_NEAR_DISTANCE);
    let set: std::collections::HashSet<(usize, usize, u32)> = pairs.iter().copied().collect();
    let mut missing = 0;
    let mut planted_near = 0;
    for l in std::fs::read_to_string(dir.join("planted.tsv")).unwrap().lines() {
        let f: Vec<&str> = l.split('\t').collect();
        let (q, r, d): (usize, usize, u32) = (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap());
        let qi = match f[3] {
            "flip" => n + q,
            _ => q,
        };
        if d <= DEFAULT_NEAR_DISTANCE {
            planted_near += 1;
            if !set.contains(&(qi, r, d)) {
                missing += 1;
                eprintln!("planted pair not found: {l}");
            }
        } else {
            assert!(!set.contains(&(qi, r, d)), "pair beyond the threshold reported: {l}");
        }
    }
    assert_eq!(missing, 0, "{missing} planted near pairs not found");
    let checksum = pairs.iter().fold(0u64, |a, &(q, r, d)| a.wrapping_add(mix(q, r, d)));
    let mut matched: Vec<usize> = pairs.iter().map(|p| p.0 % n).collect();
    matched.sort_unstable();
    matched.dedup();
    println!("pairs {} checksum {checksum} matched {} planted-near-found {planted_near}", pairs.len(), matched.len());
}

fn time(dir: &Path) {
    let reference = load(&dir.join("ref.txt"));
    let queries = load(&dir.join("query.txt"));
    let t = Instant::now();
    let m = find_duplicates(&reference, &queries, Some(DEFAULT_NEAR_DISTANCE));
    let secs = t.elapsed().as_secs_f64();
    let exact = m.iter().filter(|d| d.kind == MatchKind::Exact).count();
    println!("ours secs {secs:.3} matches {} exact {exact} near {}", m.len(), m.len() - exact);
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("gen") if a.len() == 6 => gen(&a[2], a[3].parse().unwrap(), a[4].parse().unwrap(), Path::new(&a[5])),
        Some("check") if a.len() == 3 => check(Path::new(&a[2])),
        Some("time") if a.len() == 3 => time(Path::new(&a[2])),
        _ => {
            eprintln!("usage: dedup-bench gen <random|clustered> <n> <seed> <dir> | check <dir> | time <dir>");
            std::process::exit(2);
        }
    }
}
