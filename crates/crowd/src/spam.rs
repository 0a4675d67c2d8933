//! Spammer detection: workers who always give the same answer, and workers whose answers
//! do not depend on the item (random clickers).

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregation;
use crate::data::Answers;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum SpamKind {
    /// At least 90 % of the worker's answers are this label.
    SameAnswer { label: usize },
    /// Agreement with other workers on the same items no better than chance (kappa < 0.05).
    Random,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spammer {
    pub worker: usize,
    pub answers: usize,
    #[serde(flatten)]
    pub kind: SpamKind,
    /// Share of the top answer (same-answer) or kappa (random).
    pub score: f64,
}

/// Each worker's chance-corrected agreement with the other workers on the same items
/// (kappa = (observed - chance) / (1 - chance), chance from the worker's and everyone's
/// label frequencies); `NaN` for a worker who never shares an item. Peers, not the
/// aggregated labels, so a worker's own answers cannot vouch for them.
pub fn peer_kappa(a: &Answers) -> Vec<f64> {
    let k = a.n_classes();
    let nw = a.n_workers();
    let mut agree = vec![0.0f64; nw];
    let mut pairs = vec![0.0f64; nw];
    // chance: the worker's label l against a peer answer drawn from everyone's frequencies
    let all = a.label_counts();
    let total: usize = all.iter().sum();
    let freq: Vec<f64> = all.iter().map(|&c| c as f64 / total.max(1) as f64).collect();
    // per worker and label: answers of other workers on the same items (the pairs), a
    // count per label so that `chance` is one sum at the end
    let mut pairs_by_label = vec![0u64; nw * k];
    let mut agree_n = vec![0u64; nw];
    // Linear in each item's answers (found by a hostile pass: a loop over every pair of an
    // item's answers took 27 s for one item with 40,000 answers): an answer of label `l` by
    // worker `w` agrees with the item's `l` answers not given by `w`, and pairs with those
    // not given by `w`; a worker may answer an item more than once (`--duplicates keep`).
    // Codes (`worker * k + label`) sorted group by worker, then by label within a worker.
    let mut by_label = vec![0u64; k];
    let mut sorted: Vec<u32> = Vec::new();
    for i in 0..a.n_items() {
        let c = a.item_codes(i);
        by_label.iter_mut().for_each(|x| *x = 0);
        for &cx in c {
            by_label[a.label_of(cx)] += 1;
        }
        sorted.clear();
        sorted.extend_from_slice(c);
        sorted.sort_unstable();
        let n = c.len() as u64;
        for of_worker in sorted.chunk_by(|x, y| a.worker_of(*x) == a.worker_of(*y)) {
            let own = of_worker.len() as u64;
            for same_code in of_worker.chunk_by(|x, y| x == y) {
                let (w, l, same) = (a.worker_of(same_code[0]), a.label_of(same_code[0]), same_code.len() as u64);
                // each of the worker's `same` answers of label l
                pairs_by_label[w * k + l] += same * (n - own);
                agree_n[w] += same * (by_label[l] - same);
            }
        }
    }
    let mut chance = vec![0.0f64; nw];
    for w in 0..nw {
        for l in 0..k {
            let p = pairs_by_label[w * k + l];
            pairs[w] += p as f64;
            chance[w] += freq[l] * p as f64;
        }
        agree[w] = agree_n[w] as f64;
    }
    (0..nw)
        .map(|w| {
            if pairs[w] == 0.0 {
                return f64::NAN;
            }
            let po = agree[w] / pairs[w];
            let pe = chance[w] / pairs[w];
            if pe >= 1.0 {
                0.0
            } else {
                (po - pe) / (1.0 - pe)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pair loop the linear count replaced: every pair of an item's answers by two
    /// different workers.
    fn peer_kappa_pairs(a: &Answers) -> Vec<f64> {
        let nw = a.n_workers();
        let (mut agree, mut pairs, mut chance) = (vec![0.0f64; nw], vec![0.0f64; nw], vec![0.0f64; nw]);
        let all = a.label_counts();
        let total: usize = all.iter().sum();
        let freq: Vec<f64> = all.iter().map(|&c| c as f64 / total.max(1) as f64).collect();
        for i in 0..a.n_items() {
            let c = a.item_codes(i);
            for (x, &cx) in c.iter().enumerate() {
                let (w, l) = (a.worker_of(cx), a.label_of(cx));
                for (y, &cy) in c.iter().enumerate() {
                    if x != y && a.worker_of(cy) != w {
                        pairs[w] += 1.0;
                        chance[w] += freq[l];
                        agree[w] += (a.label_of(cy) == l) as u8 as f64;
                    }
                }
            }
        }
        (0..nw)
            .map(|w| {
                if pairs[w] == 0.0 {
                    return f64::NAN;
                }
                let (po, pe) = (agree[w] / pairs[w], chance[w] / pairs[w]);
                if pe >= 1.0 { 0.0 } else { (po - pe) / (1.0 - pe) }
            })
            .collect()
    }

    #[test]
    fn linear_peer_kappa_is_the_pair_loop_with_repeats_and_loners() {
        let mut s = 12345u64;
        let mut rnd = |n: usize| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as usize % n
        };
        for round in 0..40 {
            let (items, workers, k) = (1 + rnd(30), 1 + rnd(12), 2 + rnd(4));
            // repeats of a worker on an item included (`--duplicates keep`)
            let t: Vec<(usize, usize, usize)> = (0..rnd(200)).map(|_| (rnd(items), rnd(workers), rnd(k))).collect();
            let a = Answers::from_triples(items, workers, (0..k).map(|c| c.to_string()).collect(), &t).unwrap();
            let (fast, slow) = (peer_kappa(&a), peer_kappa_pairs(&a));
            for (w, (x, y)) in fast.iter().zip(&slow).enumerate() {
                assert!(x.is_nan() && y.is_nan() || (x - y).abs() < 1e-9, "round {round} worker {w}: {x} vs {y}");
            }
        }
        // one item with many answers: linear (the pair loop took 27 s at 40,000)
        let t: Vec<(usize, usize, usize)> = (0..200_000).map(|w| (0, w, w % 3 % 2)).collect();
        let a = Answers::from_triples(1, 200_000, vec!["0".into(), "1".into()], &t).unwrap();
        let t0 = std::time::Instant::now();
        assert_eq!(peer_kappa(&a).len(), 200_000);
        assert!(t0.elapsed().as_secs() < 20, "{:?}", t0.elapsed());
    }
}

/// Workers with at least `min_answers` answers who look like spammers.
/// `agg` is not needed by the current rules; it is taken so that model-based rules can be
/// added without changing callers.
pub fn detect_spammers(a: &Answers, agg: &Aggregation, min_answers: usize) -> Vec<Spammer> {
    let _ = agg;
    let counts = a.worker_label_counts();
    let kappa = peer_kappa(a);
    let mut out = Vec::new();
    for (w, c) in counts.iter().enumerate() {
        let n: usize = c.iter().sum();
        if n < min_answers.max(1) {
            continue;
        }
        let (top, &top_n) = c.iter().enumerate().max_by_key(|(_, v)| **v).expect("k >= 2");
        let share = top_n as f64 / n as f64;
        if share >= 0.9 {
            out.push(Spammer { worker: w, answers: n, kind: SpamKind::SameAnswer { label: top }, score: share });
        } else if kappa[w] < 0.05 {
            out.push(Spammer { worker: w, answers: n, kind: SpamKind::Random, score: kappa[w] });
        }
    }
    out
}
