//! Duplicate and near-duplicate images between two sets (train/test leakage), pure code.
//!
//! Each image gets an [`ImageHash`], computed once:
//! - `exact`: blake3 of its decoded pixels (width, height, channels, bytes). Two files whose
//!   decoded pixels are identical (a byte copy, a PNG re-encode of the same pixels) share it.
//!   Matched through a hash map: O(n + m), no pairwise scan.
//! - `phash`: a DCT perceptual hash (Zauner 2010; the `imagehash` convention, larger):
//!   grayscale, area-averaged down to 32x32, 2-D DCT-II, the 16x16 lowest frequencies, one
//!   bit per coefficient: above their median (256 bits). Resizing and JPEG re-encoding barely
//!   move the low frequencies; a brightness shift moves only the DC term (always above the
//!   median) until pixels clip, and a contrast change scales every coefficient and the median
//!   alike. The common 64-bit pHash (8x8) is too coarse for faces: cropped, aligned faces
//!   share their low frequencies, and distinct synthetic demo faces were 0 bits apart.
//! - `phash_flip`: the pHash of the horizontally mirrored image, from the same DCT (mirroring
//!   x multiplies the coefficient of horizontal frequency v by (-1)^v), so a mirrored copy of
//!   a training image (augmentation flips faces) is found too.
//!
//! Near matches: Hamming distance <= `max_distance` between a query's `phash` or `phash_flip`
//! and a reference's `phash`, found by [`near_pairs`] (multi-index hashing, Norouzi et al.
//! 2012, run as a batch join): the 256 bits are cut into `max_distance + 1` chunks; two
//! hashes that differ in at most `max_distance` bits agree exactly on one chunk (pigeonhole),
//! so only pairs sharing a chunk value are compared. 100k queries against 100k references
//! take seconds on 2 cores (`bench/leakage` times it beside faiss; test
//! `index_finds_exactly_the_planted_matches_at_100k` checks the answer at that size, untimed).
//!
//! Threshold: [`DEFAULT_NEAR_DISTANCE`] (see there for the measurements behind it).

use std::collections::HashMap;

use image::imageops::FilterType;
use rayon::prelude::*;

use crate::Image;

/// Default largest Hamming distance (of 256 bits) between pHashes that counts as a near
/// duplicate. Measured by test `near_duplicate_distances` on 48x48 grayscale faces (worst
/// case over every image):
///
/// | | the study's 700 real faces | 700 synthetic demo faces |
/// | --- | --- | --- |
/// | resized to 32 / 96 px and back | 8 / 10 | 16 / 14 |
/// | JPEG quality 75 (50) | 14 (26) | 20 (42) |
/// | brightness +20 / -20 (+30 / -30) | 14 / 22 (20 / 36) | 20 / 10 (22 / 18) |
/// | contrast x0.8 | 4 | 6 |
/// | mirrored (vs the mirrored hash) | 0-4 | 0-4 |
/// | nearest *distinct* face: min, 1st percentile | 76, 80 | 32, 34 |
///
/// 24 keeps every moderate edit of a real face (up to 22) with 52 bits to spare below the
/// closest pair of distinct real faces, and stays 8 bits below the closest pair of distinct
/// synthetic faces (which share one template, so are far closer than real ones: a higher
/// threshold would flag the demo's own test set). Heavier edits (JPEG 50 on 48 px, clipping
/// brightness shifts) can escape it; exact copies never do.
pub const DEFAULT_NEAR_DISTANCE: u32 = 24;

/// Side of the grayscale image the pHash's DCT runs on.
const PHASH_SIDE: usize = 32;
/// Low-frequency block kept (16x16 = 256 bits).
const PHASH_LOW: usize = 16;
/// Bits of a pHash (the 16x16 low-frequency block).
pub const PHASH_BITS: u32 = (PHASH_LOW * PHASH_LOW) as u32;
/// A pHash: 256 bits, coefficient `u * 16 + v` at bit `(u * 16 + v) % 64` of word `(u * 16 + v) / 64`.
pub type PHash = [u64; 4];

/// What the leakage guard keeps of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageHash {
    /// blake3 of the decoded pixels (and their shape).
    pub exact: [u8; 32],
    /// 256-bit DCT pHash.
    pub phash: PHash,
    /// pHash of the horizontally mirrored image.
    pub phash_flip: PHash,
}

impl ImageHash {
    /// `exact` as 64 hex digits.
    pub fn exact_hex(&self) -> String {
        self.exact.iter().map(|b| format!("{b:02x}")).collect()
    }
    /// Parse 64 hex digits back into an `exact` digest.
    pub fn parse_exact(hex: &str) -> Option<[u8; 32]> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(out)
    }
}

/// Exact digest, pHash and mirrored pHash of an image (1 or 3 channels; colour is reduced to
/// luma with Rec. 601 weights for the pHash only).
pub fn hash_image(img: &Image) -> ImageHash {
    let (phash, phash_flip) = phash_pair(img);
    ImageHash { exact: exact_digest(img), phash, phash_flip }
}

/// blake3 over width, height, channels and the pixel bytes.
pub fn exact_digest(img: &Image) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&img.width.to_le_bytes());
    h.update(&img.height.to_le_bytes());
    h.update(&[img.channels]);
    h.update(&img.data);
    *h.finalize().as_bytes()
}

fn gray_f32(img: &Image) -> Vec<f32> {
    match img.channels {
        1 => img.data.iter().map(|&p| p as f32).collect(),
        c => img
            .data
            .chunks_exact(c as usize)
            .map(|px| 0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32)
            .collect(),
    }
}

/// Area-average (box) resampling weights: output cell `o` of `n_out` covers input
/// `[o * s, (o + 1) * s)` with `s = n_in / n_out`; each input pixel weighs by its overlap.
fn area_weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f32)>> {
    let s = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let (a, b) = (o as f64 * s, (o + 1) as f64 * s);
            let mut w = Vec::new();
            let mut i = a.floor() as usize;
            while (i as f64) < b && i < n_in {
                let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
                if overlap > 0.0 {
                    w.push((i, (overlap / s) as f32));
                }
                i += 1;
            }
            w
        })
        .collect()
}

/// Grayscale `img` resampled to `side` x `side`: area averaging when shrinking; when the
/// image is smaller than `side`, a bilinear upscale first (area weights cannot enlarge).
fn to_square_gray(img: &Image, side: usize) -> Vec<f32> {
    let (w, h) = (img.width as usize, img.height as usize);
    if w == 0 || h == 0 {
        return vec![0.0; side * side];
    }
    if w < side || h < side {
        let g = image::GrayImage::from_raw(
            img.width,
            img.height,
            gray_f32(img).iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect(),
        )
        .expect("gray buffer has w*h bytes");
        let up = image::imageops::resize(&g, (w.max(side)) as u32, (h.max(side)) as u32, FilterType::Triangle);
        let im = Image { width: up.width(), height: up.height(), channels: 1, data: up.into_raw() };
        return to_square_gray(&im, side);
    }
    let g = gray_f32(img);
    let (wx, wy) = (area_weights(w, side), area_weights(h, side));
    // rows first: h x side
    let mut tmp = vec![0f32; h * side];
    for y in 0..h {
        let row = &g[y * w..(y + 1) * w];
        for (ox, ws) in wx.iter().enumerate() {
            tmp[y * side + ox] = ws.iter().map(|&(i, k)| row[i] * k).sum();
        }
    }
    let mut out = vec![0f32; side * side];
    for (oy, ws) in wy.iter().enumerate() {
        for ox in 0..side {
            out[oy * side + ox] = ws.iter().map(|&(i, k)| tmp[i * side + ox] * k).sum();
        }
    }
    out
}

/// `cos(pi (2x + 1) u / 64)` for u < 16, x < 32.
fn dct_table() -> &'static [[f32; PHASH_SIDE]; PHASH_LOW] {
    static T: std::sync::OnceLock<[[f32; PHASH_SIDE]; PHASH_LOW]> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let mut t = [[0f32; PHASH_SIDE]; PHASH_LOW];
        for (u, row) in t.iter_mut().enumerate() {
            for (x, v) in row.iter_mut().enumerate() {
                *v = (std::f64::consts::PI * (2 * x + 1) as f64 * u as f64 / (2 * PHASH_SIDE) as f64).cos() as f32;
            }
        }
        t
    })
}

/// The 16x16 lowest DCT-II coefficients of a 32x32 grayscale image, `[u][v]` with `u` the
/// vertical and `v` the horizontal frequency (unnormalised: scale does not matter).
fn low_dct(g: &[f32]) -> [[f32; PHASH_LOW]; PHASH_LOW] {
    let c = dct_table();
    let mut rows = [[0f32; PHASH_LOW]; PHASH_SIDE]; // [y][v]
    for y in 0..PHASH_SIDE {
        let line = &g[y * PHASH_SIDE..(y + 1) * PHASH_SIDE];
        for v in 0..PHASH_LOW {
            rows[y][v] = line.iter().zip(&c[v]).map(|(a, b)| a * b).sum();
        }
    }
    let mut out = [[0f32; PHASH_LOW]; PHASH_LOW];
    for u in 0..PHASH_LOW {
        for v in 0..PHASH_LOW {
            out[u][v] = (0..PHASH_SIDE).map(|y| c[u][y] * rows[y][v]).sum();
        }
    }
    out
}

fn bits_above_median(vals: &[f32; 256]) -> PHash {
    let mut sorted = *vals;
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = 0.5 * (sorted[127] + sorted[128]);
    let mut out = [0u64; 4];
    for (i, &v) in vals.iter().enumerate() {
        if v > median {
            out[i / 64] |= 1u64 << (i % 64);
        }
    }
    out
}

/// `(pHash, pHash of the mirrored image)`.
pub fn phash_pair(img: &Image) -> (PHash, PHash) {
    let g = to_square_gray(img, PHASH_SIDE);
    let d = low_dct(&g);
    let mut plain = [0f32; 256];
    let mut flipped = [0f32; 256];
    for u in 0..PHASH_LOW {
        for v in 0..PHASH_LOW {
            plain[u * PHASH_LOW + v] = d[u][v];
            flipped[u * PHASH_LOW + v] = if v % 2 == 1 { -d[u][v] } else { d[u][v] };
        }
    }
    (bits_above_median(&plain), bits_above_median(&flipped))
}

/// The pHash alone.
pub fn phash(img: &Image) -> PHash {
    phash_pair(img).0
}

/// Bits that differ.
pub fn hamming(a: PHash, b: PHash) -> u32 {
    (0..4).map(|i| (a[i] ^ b[i]).count_ones()).sum()
}

/// Bits `[start, start + width)` of a 256-bit hash (`width` <= 16).
fn bits_at(h: &PHash, start: usize, width: usize) -> usize {
    let (w, off) = (start / 64, start % 64);
    let mut v = h[w] >> off;
    if off + width > 64 && w + 1 < 4 {
        v |= h[w + 1] << (64 - off);
    }
    (v & ((1u64 << width) - 1)) as usize
}

/// One side of the join, bucketed by one chunk: CSR offsets over the `2^width` values and,
/// per entry, (one 64-bit word of the hash for a cheap first reject, index).
fn buckets(hashes: &[PHash], c: usize, width: usize) -> (Vec<u32>, Vec<(u64, u32)>) {
    let mut count = vec![0u32; (1 << width) + 1];
    for h in hashes {
        count[bits_at(h, c * width, width) + 1] += 1;
    }
    for i in 1..count.len() {
        count[i] += count[i - 1];
    }
    let mut fill = count.clone();
    let mut list = vec![(0u64, 0u32); hashes.len()];
    for (i, h) in hashes.iter().enumerate() {
        let k = bits_at(h, c * width, width);
        list[fill[k] as usize] = (h[c % 4], i as u32);
        fill[k] += 1;
    }
    (count, list)
}

/// Every pair `(query, reference, distance)` with pHashes within `max_distance` bits (at most
/// 64 of 256), sorted, each once.
///
/// Multi-index hashing as a batch join: the 256 bits are cut into `max_distance + 1` chunks;
/// two hashes within `max_distance` bits agree exactly on one chunk at least (pigeonhole).
/// Per chunk, both sides are bucketed by the chunk's value and only pairs within a bucket
/// are compared (a 64-bit word first, then the full distance). Walking buckets rather than
/// looking each query up keeps the memory access sequential: 100k x 100k random hashes take
/// 4 s of CPU here (6 s wall on the busy 2-core machine), where per-query lookups took 16 s.
pub fn near_pairs(reference: &[PHash], queries: &[PHash], max_distance: u32) -> Vec<(usize, usize, u32)> {
    let max_distance = max_distance.min(64);
    let chunks = max_distance as usize + 1;
    let width = (PHASH_BITS as usize / chunks).clamp(1, 16);
    let mut out: Vec<(usize, usize, u32)> = Vec::new();
    for c in 0..chunks {
        let (ro, rl) = buckets(reference, c, width);
        let (qo, ql) = buckets(queries, c, width);
        let found: Vec<(usize, usize, u32)> = (0..(1usize << width))
            .into_par_iter()
            .with_min_len(256)
            .flat_map_iter(|k| {
                let rs = &rl[ro[k] as usize..ro[k + 1] as usize];
                let qs = &ql[qo[k] as usize..qo[k + 1] as usize];
                let mut m = Vec::new();
                if !rs.is_empty() {
                    for &(qw, qi) in qs {
                        for &(rw, ri) in rs {
                            if (qw ^ rw).count_ones() <= max_distance {
                                let d = hamming(queries[qi as usize], reference[ri as usize]);
                                if d <= max_distance {
                                    m.push((qi as usize, ri as usize, d));
                                }
                            }
                        }
                    }
                }
                m
            })
            .collect();
        out.extend(found);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// How a query image matches a reference image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// Same decoded pixels.
    Exact,
    /// pHashes within the threshold: `distance` bits, `flipped` when it is the mirrored
    /// query that matches.
    Near { distance: u32, flipped: bool },
}

/// A query image and the reference image it duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateMatch {
    pub query: usize,
    pub reference: usize,
    pub kind: MatchKind,
}

/// For each query that duplicates a reference image, its best match (exact first, else the
/// smallest pHash distance, plain before mirrored, then the lowest reference index), in
/// query order. `max_distance` = 0 still finds pHash-identical images as near duplicates;
/// `None` checks exact duplicates only.
pub fn find_duplicates(reference: &[ImageHash], queries: &[ImageHash], max_distance: Option<u32>) -> Vec<DuplicateMatch> {
    let mut exact: HashMap<[u8; 32], usize> = HashMap::with_capacity(reference.len());
    for (i, r) in reference.iter().enumerate() {
        exact.entry(r.exact).or_insert(i);
    }
    let n = queries.len();
    // Best per query: (distance, flipped, reference), smallest first.
    let mut best: Vec<Option<(u32, bool, usize)>> = vec![None; n];
    if let Some(d) = max_distance {
        let rh: Vec<PHash> = reference.iter().map(|r| r.phash).collect();
        let qh: Vec<PHash> = queries.iter().map(|q| q.phash).chain(queries.iter().map(|q| q.phash_flip)).collect();
        for (qi, ri, dist) in near_pairs(&rh, &qh, d) {
            let (q, flipped) = if qi >= n { (qi - n, true) } else { (qi, false) };
            let cand = (dist, flipped, ri);
            if best[q].map_or(true, |b| cand < b) {
                best[q] = Some(cand);
            }
        }
    }
    (0..n)
        .filter_map(|qi| {
            if let Some(&r) = exact.get(&queries[qi].exact) {
                return Some(DuplicateMatch { query: qi, reference: r, kind: MatchKind::Exact });
            }
            let (distance, flipped, r) = best[qi]?;
            Some(DuplicateMatch { query: qi, reference: r, kind: MatchKind::Near { distance, flipped } })
        })
        .collect()
}

/// Groups of mutually duplicate images within one set (exact or near, mirrored included),
/// as a group id per image (the smallest index in its group): images of one group must
/// stay on one side of a train/validation split.
pub fn duplicate_groups(hashes: &[ImageHash], max_distance: Option<u32>) -> Vec<usize> {
    let n = hashes.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    let union = |p: &mut Vec<usize>, a: usize, b: usize| {
        let (ra, rb) = (find(p, a), find(p, b));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            p[hi] = lo;
        }
    };
    let mut first: HashMap<[u8; 32], usize> = HashMap::with_capacity(n);
    for (i, h) in hashes.iter().enumerate() {
        if let Some(&j) = first.get(&h.exact) {
            union(&mut parent, i, j);
        } else {
            first.insert(h.exact, i);
        }
    }
    if let Some(d) = max_distance {
        let ph: Vec<PHash> = hashes.iter().map(|h| h.phash).collect();
        let qh: Vec<PHash> = hashes.iter().map(|h| h.phash).chain(hashes.iter().map(|h| h.phash_flip)).collect();
        for (qi, j, _) in near_pairs(&ph, &qh, d) {
            let i = qi % n;
            if i != j {
                union(&mut parent, i, j);
            }
        }
    }
    (0..n).map(|i| find(&mut parent, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const STUDY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/datasets/seed-study/images/results");

    fn gray(img: image::GrayImage) -> Image {
        Image { width: img.width(), height: img.height(), channels: 1, data: img.into_raw() }
    }

    fn demo_faces(n: usize) -> Vec<Image> {
        (0..n).map(|i| gray(crate::render_face(i % 7, 1000 + i as u64, 48))).collect()
    }

    fn study_faces() -> Vec<Image> {
        let mut out = Vec::new();
        for c in crate::CLASSES {
            let Ok(rd) = std::fs::read_dir(std::path::Path::new(STUDY).join(c)) else { return Vec::new() };
            let mut files: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files {
                out.push(crate::load_image(&f, 48, 1).unwrap());
            }
        }
        out
    }

    fn resized(img: &Image, side: u32) -> Image {
        let g = image::GrayImage::from_raw(img.width, img.height, img.data.clone()).unwrap();
        let s = image::imageops::resize(&g, side, side, FilterType::Triangle);
        gray(image::imageops::resize(&s, img.width, img.height, FilterType::Triangle))
    }

    fn jpeg(img: &Image, quality: u8) -> Image {
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality)
            .encode(&img.data, img.width, img.height, image::ExtendedColorType::L8)
            .unwrap();
        crate::decode_image(&buf, std::path::Path::new("x.jpg"), img.width, 1).unwrap()
    }

    fn brightness(img: &Image, delta: i32) -> Image {
        Image { data: img.data.iter().map(|&p| (p as i32 + delta).clamp(0, 255) as u8).collect(), ..img.clone() }
    }

    fn contrast(img: &Image, k: f32) -> Image {
        Image { data: img.data.iter().map(|&p| ((p as f32 - 128.0) * k + 128.0).clamp(0.0, 255.0) as u8).collect(), ..img.clone() }
    }

    fn darker(img: &Image) -> Image {
        brightness(img, -20)
    }

    fn mirror(img: &Image) -> Image {
        let g = image::GrayImage::from_raw(img.width, img.height, img.data.clone()).unwrap();
        gray(image::imageops::flip_horizontal(&g))
    }

    /// Edited copies: (what, image, whether it must stay within the threshold).
    fn edits(img: &Image, real: bool) -> Vec<(&'static str, Image, bool)> {
        let v = vec![
            ("resized 32", resized(img, 32), true),
            ("resized 96", resized(img, 96), true),
            ("jpeg 75", jpeg(img, 75), true),
            ("brighter +20", brightness(img, 20), true),
            ("darker -20", brightness(img, -20), true),
            ("contrast 0.8", contrast(img, 0.8), true),
            ("resized 96 + jpeg 75 + brighter 10", brightness(&jpeg(&resized(img, 96), 75), 10), real),
            // Measured, not required: they destroy detail (clipping, blocking at 48 px).
            ("jpeg 50", jpeg(img, 50), false),
            ("brighter +30", brightness(img, 30), false),
            ("darker -30", brightness(img, -30), false),
        ];
        v
    }

    /// Nearest other image's pHash distance for each image of a set (plain or mirrored).
    fn nearest_distinct(hs: &[ImageHash]) -> Vec<u32> {
        hs.iter()
            .enumerate()
            .map(|(i, a)| {
                hs.iter()
                    .enumerate()
                    .filter(|&(j, b)| j != i && b.exact != a.exact)
                    .map(|(_, b)| hamming(a.phash, b.phash).min(hamming(a.phash_flip, b.phash)))
                    .min()
                    .unwrap_or(64)
            })
            .collect()
    }

    #[test]
    fn near_duplicate_distances() {
        // Synthetic faces share one template, so they are closer to each other than real ones
        // and JPEG at 50 blurs their 1-px features: checked on the milder edits only.
        let mut sets = vec![("demo", demo_faces(700))];
        let study = study_faces();
        if study.is_empty() {
            eprintln!("seed-study images not present: demo faces only");
        } else {
            sets.push(("study", study));
        }
        for (name, imgs) in &sets {
            let hs: Vec<ImageHash> = imgs.iter().map(hash_image).collect();
            // Edited copies stay close to their original.
            let mut worst: std::collections::BTreeMap<&str, (u32, bool)> = Default::default();
            for (img, h) in imgs.iter().zip(&hs) {
                for (what, e, required) in edits(img, *name == "study") {
                    let d = hamming(phash(&e), h.phash);
                    let w = worst.entry(what).or_insert((0, required));
                    w.0 = w.0.max(d);
                }
                let m = hash_image(&mirror(img));
                // The mirrored copy's pHash is the original's mirrored pHash, up to rounding.
                assert!(hamming(m.phash, h.phash_flip) <= 4, "{name}: mirror");
                assert!(hamming(m.phash_flip, h.phash) <= 4, "{name}: mirror");
            }
            let mut nd = nearest_distinct(&hs);
            nd.sort_unstable();
            let pct = |p: f64| nd[((nd.len() - 1) as f64 * p) as usize];
            eprintln!(
                "{name}: worst distance of edited copies {worst:?}; nearest distinct image: min {} p1 {} p5 {} median {}",
                nd[0],
                pct(0.01),
                pct(0.05),
                pct(0.5)
            );
            for (what, (d, required)) in &worst {
                assert!(!required || *d <= DEFAULT_NEAR_DISTANCE, "{name}: {what} moved {d} bits");
            }
            assert!(nd[0] > DEFAULT_NEAR_DISTANCE + 6, "{name}: two distinct images {} bits apart", nd[0]);
        }
    }

    #[test]
    fn finds_exact_near_and_mirrored_copies_and_nothing_else() {
        let faces = demo_faces(140);
        let (train, others) = faces.split_at(100);
        let reference: Vec<ImageHash> = train.iter().map(hash_image).collect();
        let mut queries = vec![
            train[3].clone(),                  // exact
            jpeg(&train[5], 70),               // near
            brightness(&resized(&train[7], 96), 25), // near
            mirror(&train[9]),                 // near, mirrored
        ];
        queries.push(contrast(&darker(&train[11]), 0.9));
        queries.extend(others.iter().cloned()); // 40 distinct faces
        let q: Vec<ImageHash> = queries.iter().map(hash_image).collect();
        let m = find_duplicates(&reference, &q, Some(DEFAULT_NEAR_DISTANCE));
        let got: Vec<(usize, usize)> = m.iter().map(|d| (d.query, d.reference)).collect();
        assert_eq!(got, [(0, 3), (1, 5), (2, 7), (3, 9), (4, 11)], "{m:?}");
        assert_eq!(m[0].kind, MatchKind::Exact);
        assert!(matches!(m[1].kind, MatchKind::Near { flipped: false, .. }));
        assert!(matches!(m[3].kind, MatchKind::Near { flipped: true, .. }), "{:?}", m[3]);
        // Exact only: just the byte copy.
        let m = find_duplicates(&reference, &q, None);
        assert_eq!(m.len(), 1);
        // A re-encoded PNG of the same pixels is exact.
        let png = train[3].to_png().unwrap();
        let back = crate::decode_image(&png, std::path::Path::new("a.png"), 48, 1).unwrap();
        assert_eq!(hash_image(&back).exact, reference[3].exact);
        assert_eq!(ImageHash::parse_exact(&reference[3].exact_hex()), Some(reference[3].exact));
    }

    #[test]
    fn groups_duplicates_within_a_set() {
        let faces = demo_faces(20);
        let mut set: Vec<Image> = faces.clone();
        set.push(faces[2].clone()); // 20: exact copy of 2
        set.push(mirror(&faces[5])); // 21: mirror of 5
        set.push(jpeg(&faces[7], 60)); // 22: near copy of 7
        let hs: Vec<ImageHash> = set.iter().map(hash_image).collect();
        let g = duplicate_groups(&hs, Some(DEFAULT_NEAR_DISTANCE));
        assert_eq!((g[20], g[21], g[22]), (2, 5, 7));
        let distinct: std::collections::HashSet<usize> = g.iter().copied().collect();
        assert_eq!(distinct.len(), 20, "{g:?}");
    }

    fn random_hash(rng: &mut impl Rng) -> PHash {
        [rng.gen(), rng.gen(), rng.gen(), rng.gen()]
    }

    #[test]
    fn index_agrees_with_a_scan() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let base: Vec<PHash> = (0..2000).map(|_| random_hash(&mut rng)).collect();
        // Plant neighbours at distances 0..=40.
        let mut hashes = base.clone();
        for d in 0..=40usize {
            let mut h = base[d];
            let mut bits: Vec<usize> = (0..256).collect();
            for i in 0..d {
                let j = rng.gen_range(i..256);
                bits.swap(i, j);
                h[bits[i] / 64] ^= 1u64 << (bits[i] % 64);
            }
            hashes.push(h);
        }
        let queries: Vec<PHash> = hashes.iter().step_by(7).chain(base.iter().take(41)).copied().collect();
        for r in [0, 3, 15, 16, 24, 31, 40] {
            let got = near_pairs(&hashes, &queries, r);
            let mut scan = Vec::new();
            for (qi, q) in queries.iter().enumerate() {
                for (i, h) in hashes.iter().enumerate() {
                    let d = hamming(*h, *q);
                    if d <= r {
                        scan.push((qi, i, d));
                    }
                }
            }
            assert_eq!(got, scan, "radius {r}");
        }
    }

    #[test]
    fn index_finds_exactly_the_planted_matches_at_100k() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let n = 100_000;
        let mut reference: Vec<ImageHash> = Vec::with_capacity(n);
        for _ in 0..n {
            let phash = random_hash(&mut rng);
            reference.push(ImageHash { exact: [0; 32].map(|_| rng.gen()), phash, phash_flip: random_hash(&mut rng) });
        }
        let mut queries: Vec<ImageHash> = (0..n)
            .map(|_| ImageHash { exact: [0; 32].map(|_| rng.gen()), phash: random_hash(&mut rng), phash_flip: random_hash(&mut rng) })
            .collect();
        for i in 0..100 {
            let mut h = reference[i * 13].phash;
            h[0] ^= 0b1010_0001;
            h[3] ^= 0xff00; // 11 bits off
            queries[i * 7].phash = h;
            queries[i * 7 + 1].exact = reference[i * 11].exact;
        }
        let t = std::time::Instant::now();
        let m = find_duplicates(&reference, &queries, Some(DEFAULT_NEAR_DISTANCE));
        let secs = t.elapsed().as_secs_f64();
        eprintln!("100k x 100k (random 256-bit pHashes, 200 planted): {} matches in {secs:.3} s", m.len());
        assert_eq!(m.iter().filter(|d| d.kind == MatchKind::Exact).count(), 100);
        // Random 256-bit hashes are ~128 bits apart: only the planted ones match.
        assert_eq!(m.iter().filter(|d| matches!(d.kind, MatchKind::Near { .. })).count(), 100);
        // No time limit here: a timed unit test fails on a loaded machine (it did, at 10.005 s
        // beside two trainings), and speed targets belong in benchmarks. The figure is printed.
    }
}
