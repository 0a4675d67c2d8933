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
    /// Agreement with the aggregated labels no better than chance (Cohen's kappa < 0.1).
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

/// Cohen's kappa of each worker's answers against the aggregated hard labels
/// (`NaN` for a worker without answers).
pub fn worker_kappa(a: &Answers, agg: &Aggregation) -> Vec<f64> {
    let k = a.n_classes();
    let nw = a.n_workers();
    let mut conf = vec![0.0f64; nw * k * k];
    for i in 0..a.n_items() {
        let t = agg.labels[i];
        for &c in a.item_codes(i) {
            let (w, l) = (a.worker_of(c), a.label_of(c));
            conf[w * k * k + l * k + t] += 1.0;
        }
    }
    (0..nw)
        .map(|w| {
            let m = &conf[w * k * k..(w + 1) * k * k];
            let n: f64 = m.iter().sum();
            if n == 0.0 {
                return f64::NAN;
            }
            let po: f64 = (0..k).map(|j| m[j * k + j]).sum::<f64>() / n;
            let pe: f64 = (0..k)
                .map(|j| {
                    let row: f64 = (0..k).map(|t| m[j * k + t]).sum();
                    let col: f64 = (0..k).map(|l| m[l * k + j]).sum();
                    row * col / (n * n)
                })
                .sum();
            if pe >= 1.0 {
                0.0
            } else {
                (po - pe) / (1.0 - pe)
            }
        })
        .collect()
}

/// Workers with at least `min_answers` answers who look like spammers.
pub fn detect_spammers(a: &Answers, agg: &Aggregation, min_answers: usize) -> Vec<Spammer> {
    let counts = a.worker_label_counts();
    let kappa = worker_kappa(a, agg);
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
        } else if kappa[w] < 0.1 {
            out.push(Spammer { worker: w, answers: n, kind: SpamKind::Random, score: kappa[w] });
        }
    }
    out
}
