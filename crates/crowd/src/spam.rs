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
    let mut chance = vec![0.0f64; nw];
    for i in 0..a.n_items() {
        let c = a.item_codes(i);
        for (x, &cx) in c.iter().enumerate() {
            let (w, l) = (a.worker_of(cx), a.label_of(cx));
            for (y, &cy) in c.iter().enumerate() {
                if x == y || a.worker_of(cy) == w {
                    continue;
                }
                pairs[w] += 1.0;
                chance[w] += freq[l];
                if a.label_of(cy) == l {
                    agree[w] += 1.0;
                }
            }
        }
    }
    let _ = k;
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
