//! Sufficient statistics (vote fractions, expected confusion counts, class totals) and the
//! M-step of every EM model: parameters from expected counts, with the log density of the
//! Dirichlet priors (pseudo-counts) the M-step implies.

use crate::data::Answers;

use super::logprod::LogProd;
use super::types::EmOptions;

/// Vote fractions per item (uniform for an item without answers).
pub fn soft_majority(a: &Answers) -> Vec<f64> {
    let k = a.n_classes();
    let mut post = vec![0.0; a.n_items() * k];
    for i in 0..a.n_items() {
        vote_fractions(a.item_codes(i), &mut post[i * k..(i + 1) * k]);
    }
    post
}

/// One item's vote fractions into `row` (`k` zeros on entry; uniform without answers).
pub(crate) fn vote_fractions(codes: &[u32], row: &mut [f64]) {
    let k = row.len();
    if codes.is_empty() {
        row.iter_mut().for_each(|x| *x = 1.0 / k as f64);
        return;
    }
    for &c in codes {
        row[c as usize % k] += 1.0;
    }
    let inv = 1.0 / codes.len() as f64;
    row.iter_mut().for_each(|x| *x *= inv);
}

/// Expected counts `[code][true]` and class totals under majority-vote fractions: the
/// same numbers as `counts_from_posteriors(soft_majority(a))`, without the `n x k` matrix.
pub(crate) fn vote_counts(a: &Answers) -> (Vec<f64>, Vec<f64>) {
    let k = a.n_classes();
    let mut c = vec![0.0; a.n_workers() * k * k];
    let mut class = vec![0.0; k];
    let mut row = vec![0.0; k];
    for i in 0..a.n_items() {
        let codes = a.item_codes(i);
        row.iter_mut().for_each(|x| *x = 0.0);
        vote_fractions(codes, &mut row);
        for &code in codes {
            let r = &mut c[code as usize * k..(code as usize + 1) * k];
            for j in 0..k {
                r[j] += row[j];
            }
        }
        for j in 0..k {
            class[j] += row[j];
        }
    }
    (c, class)
}

pub(crate) fn class_mean(post: &[f64], k: usize) -> Vec<f64> {
    let n = post.len() / k;
    let mut m = class_totals(post, k);
    if n > 0 {
        m.iter_mut().for_each(|x| *x /= n as f64);
    } else {
        m.iter_mut().for_each(|x| *x = 1.0 / k as f64);
    }
    m
}

/// Sum of the posteriors per class.
pub(crate) fn class_totals(post: &[f64], k: usize) -> Vec<f64> {
    let mut m = vec![0.0; k];
    for row in post.chunks(k) {
        for j in 0..k {
            m[j] += row[j];
        }
    }
    m
}

/// Expected counts `[code][true]` (`k` per row) from given posteriors.
pub(crate) fn counts_from_posteriors(a: &Answers, post: &[f64]) -> Vec<f64> {
    let k = a.n_classes();
    let mut c = vec![0.0; a.n_workers() * k * k];
    for i in 0..a.n_items() {
        let p = &post[i * k..(i + 1) * k];
        for &code in a.item_codes(i) {
            let r = &mut c[code as usize * k..(code as usize + 1) * k];
            for j in 0..k {
                r[j] += p[j];
            }
        }
    }
    c
}

pub(crate) fn per_worker_matrices(counts: &[f64], k: usize, a: f64) -> Vec<f64> {
    let nw = counts.len() / (k * k);
    let mut m = vec![0.0; counts.len()];
    for w in 0..nw {
        let c = &counts[w * k * k..(w + 1) * k * k];
        let o = &mut m[w * k * k..(w + 1) * k * k];
        for j in 0..k {
            let n: f64 = (0..k).map(|l| c[l * k + j]).sum();
            for l in 0..k {
                o[l * k + j] = (c[l * k + j] + a) / (n + k as f64 * a);
            }
        }
    }
    m
}

pub(crate) fn pooled_matrix(counts: &[f64], k: usize, a: f64) -> Vec<f64> {
    let mut p = vec![0.0; k * k];
    for w in counts.chunks(k * k) {
        for (x, y) in p.iter_mut().zip(w) {
            *x += y;
        }
    }
    per_worker_matrices(&p, k, a)
}

pub(crate) fn quality(mats: &[f64], prior: &[f64], k: usize) -> Vec<f64> {
    mats.chunks(k * k).map(|m| (0..k).map(|j| prior[j] * m[j * k + j]).sum()).collect()
}

#[derive(Clone)]
pub(crate) enum Model {
    PerWorker,
    OneCoin,
    Pooled,
    /// Per-worker matrices with Dirichlet prior mean = this `k x k` matrix, and these
    /// concentrations, one per true class (pseudo-answers per true class).
    Shrunk(Vec<f64>, Vec<f64>),
}

/// The M-step: parameters from expected counts, plus the log prior density of those
/// parameters (up to a constant), which makes EM monotone in `loglik + log_prior`.
pub(crate) fn m_step(
    model: &Model,
    counts: &[f64],
    class_counts: &[f64],
    k: usize,
    o: &EmOptions,
    prior_fixed: Option<&[f64]>,
) -> (Vec<f64>, Vec<f64>, f64) {
    let a = o.smoothing;
    let nw = counts.len() / (k * k);
    let mut log_prior = 0.0;
    let mats = match model {
        Model::PerWorker => {
            let m = per_worker_matrices(counts, k, a);
            // one `ln` of a running product instead of one per cell (k^2 per worker per
            // iteration was a tenth of a large fit's time)
            let mut prod = LogProd::new();
            m.iter().for_each(|&x| prod.mul(x));
            log_prior += a * prod.ln();
            m
        }
        Model::Pooled => {
            let mut pc = vec![0.0; k * k];
            for w in counts.chunks(k * k) {
                for (x, y) in pc.iter_mut().zip(w) {
                    *x += y;
                }
            }
            for j in 0..k {
                pc[j * k + j] += o.diag_prior;
            }
            let p = per_worker_matrices(&pc, k, a);
            for l in 0..k {
                for j in 0..k {
                    let alpha = a + if l == j { o.diag_prior } else { 0.0 };
                    log_prior += alpha * p[l * k + j].ln();
                }
            }
            let mut m = Vec::with_capacity(nw * k * k);
            for _ in 0..nw {
                m.extend_from_slice(&p);
            }
            m
        }
        Model::OneCoin => {
            let mut m = vec![0.0; nw * k * k];
            for w in 0..nw {
                let c = &counts[w * k * k..(w + 1) * k * k];
                let total: f64 = c.iter().sum();
                let right: f64 = (0..k).map(|j| c[j * k + j]).sum();
                let p = (right + a) / (total + 2.0 * a);
                log_prior += a * (p.ln() + (1.0 - p).ln());
                let off = (1.0 - p) / (k - 1) as f64;
                for l in 0..k {
                    for j in 0..k {
                        m[w * k * k + l * k + j] = if l == j { p } else { off };
                    }
                }
            }
            m
        }
        Model::Shrunk(center, strength) => {
            let mut m = vec![0.0; nw * k * k];
            // a cell's pseudo-count is the same for every worker: sum_w alpha ln v_w =
            // alpha ln prod_w v_w, one `ln` per cell
            let mut prods = vec![LogProd::new(); k * k];
            for w in 0..nw {
                let c = &counts[w * k * k..(w + 1) * k * k];
                for (j, &s) in strength.iter().enumerate() {
                    let n: f64 = (0..k).map(|l| c[l * k + j]).sum();
                    for l in 0..k {
                        let alpha = s * center[l * k + j] + a;
                        let v = (c[l * k + j] + alpha) / (n + s + k as f64 * a);
                        m[w * k * k + l * k + j] = v;
                        prods[l * k + j].mul(v);
                    }
                }
            }
            for (j, &s) in strength.iter().enumerate() {
                for l in 0..k {
                    log_prior += (s * center[l * k + j] + a) * prods[l * k + j].ln();
                }
            }
            m
        }
    };
    let prior = match prior_fixed {
        Some(p) => p.to_vec(),
        None => {
            let b = o.prior_smoothing;
            let n: f64 = class_counts.iter().sum();
            let p: Vec<f64> = class_counts.iter().map(|c| (c + b) / (n + k as f64 * b)).collect();
            if b > 0.0 {
                log_prior += b * p.iter().map(|x| x.ln()).sum::<f64>();
            }
            p
        }
    };
    (mats, prior, log_prior)
}
