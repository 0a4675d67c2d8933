//! Aggregation methods: majority vote, Dawid-Skene (classic, one-coin, pooled, shrunk).
//!
//! All EM variants share one fused kernel: a pass over items computes each item's
//! posterior from the current parameters and immediately adds it into the expected
//! confusion counts of the next M-step, so no posterior matrix is stored while iterating
//! and each iteration reads the answers once. Probabilities are multiplied (no `exp`), and
//! the log-likelihood is accumulated as a mantissa/exponent product (no `ln` per item).
//!
//! Every EM method maximises a MAP objective: log-likelihood plus the log-density of the
//! Dirichlet priors its M-step implies (pseudo-counts), and records it per iteration; EM
//! guarantees it never decreases (a property test checks it).

use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Answers;
use crate::{hash_str, mix64, CrowdError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Vote fractions as posteriors; hard label by plurality, ties broken by a seeded hash.
    MajorityVote,
    /// Dawid & Skene (1979): one free confusion matrix per worker.
    DawidSkene,
    /// One accuracy per worker, errors spread evenly.
    OneCoin,
    /// One confusion matrix shared by all workers.
    Pooled,
    /// Per-worker matrices shrunk toward the pooled matrix (Dirichlet prior per true class,
    /// MAP EM; centre and concentrations by empirical Bayes).
    Shrunk,
    /// Fit every method above and keep the one whose model best predicts answers it was
    /// not fitted on (leave-one-item-out predictive log-likelihood; see [`select`]).
    Auto,
}

impl Method {
    /// The fitted models (what `Auto` chooses among).
    pub const ALL: [Method; 5] = [Method::MajorityVote, Method::DawidSkene, Method::OneCoin, Method::Pooled, Method::Shrunk];
    pub fn name(self) -> &'static str {
        match self {
            Method::MajorityVote => "majority-vote",
            Method::DawidSkene => "dawid-skene",
            Method::OneCoin => "one-coin",
            Method::Pooled => "pooled",
            Method::Shrunk => "shrunk",
            Method::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = CrowdError;
    fn from_str(s: &str) -> Result<Method> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "mv" | "majority-vote" | "majority" => Method::MajorityVote,
            "ds" | "dawid-skene" | "dawidskene" => Method::DawidSkene,
            "one-coin" | "onecoin" => Method::OneCoin,
            "pooled" => Method::Pooled,
            "shrunk" | "shrunk-ds" | "hierarchical" => Method::Shrunk,
            "auto" | "default" => Method::Auto,
            other => {
                return Err(CrowdError::Option {
                    option: "method".into(),
                    message: format!(
                        "unknown method \"{other}\" (expected one of: auto, majority-vote, dawid-skene, one-coin, pooled, shrunk)"
                    ),
                })
            }
        })
    }
}

/// How EM treats the class prior.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassPrior {
    /// Estimated by EM (with `EmOptions::prior_smoothing` pseudo-counts).
    Learned,
    /// Held at 1/k: right for a balanced design (the study: 100 images per class).
    Uniform,
    /// Held at these weights (normalised; one per class).
    Fixed(Vec<f64>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmOptions {
    pub max_iter: usize,
    /// Stop when the objective rose by less than `tol * |objective|` (never on a dip).
    pub tol: f64,
    pub class_prior: ClassPrior,
    /// Pseudo-count added to every confusion cell (keeps log-likelihood finite).
    pub smoothing: f64,
    /// Pseudo-count per class for a learned class prior.
    pub prior_smoothing: f64,
    /// `Shrunk`: weight of the pooled matrix, in answers per true class (the same for every
    /// class); `None` = estimated from the data, per true class (empirical Bayes: the
    /// Dirichlet concentration that best explains how much workers' expected counts for
    /// that class differ from the pooled matrix).
    pub shrink_strength: Option<f64>,
    /// Extra pseudo-count on the diagonal of the pooled matrix (answers per true class):
    /// a prior that workers are more often right than wrong, which keeps EM on sparse data
    /// from drifting to a matrix that trades accuracy against the class prior.
    pub diag_prior: f64,
    /// Seed of the tie-break between equally likely labels.
    pub seed: u64,
}

impl Default for EmOptions {
    fn default() -> Self {
        EmOptions {
            max_iter: 100,
            tol: 1e-7,
            class_prior: ClassPrior::Learned,
            smoothing: 0.01,
            prior_smoothing: 1.0,
            shrink_strength: None,
            diag_prior: 30.0,
            seed: 0,
        }
    }
}

/// What every method returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aggregation {
    pub method: Method,
    pub classes: Vec<String>,
    /// `n_items x k`, row-major; each row sums to 1.
    pub posteriors: Vec<f64>,
    pub labels: Vec<usize>,
    pub class_prior: Vec<f64>,
    /// `n_workers x k x k`, `[worker][answer][true]`; each column sums to 1.
    pub worker_matrices: Vec<f64>,
    /// The pooled matrix (`k x k`, `[answer][true]`): the answers of all workers together.
    pub pooled_matrix: Vec<f64>,
    /// Probability that the worker's answer is right: `sum_j prior_j * m[j][j]`.
    pub worker_quality: Vec<f64>,
    /// The MAP objective after each EM iteration (empty for majority vote).
    pub objective: Vec<f64>,
    pub converged: bool,
    /// `Shrunk`: the concentration used per true class (given or estimated).
    pub shrink_strength: Option<Vec<f64>>,
    /// `Shrunk`: the prior mean of the worker matrices (`k x k`, `[answer][true]`).
    #[serde(default)]
    pub shrink_center: Option<Vec<f64>>,
    /// `Auto`: which model was chosen, and the score of every candidate.
    #[serde(default)]
    pub selection: Option<Selection>,
}

/// How `Method::Auto` chose (see [`select`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Selection {
    pub chosen: Method,
    /// What the scores are.
    pub criterion: String,
    /// Answers scored (all, or a hash-chosen subset of items on large data).
    pub scored_answers: usize,
    /// Candidates best first.
    pub candidates: Vec<CandidateScore>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateScore {
    pub method: Method,
    /// The class prior it was fitted with: `learned`, `uniform` or `fixed`.
    pub class_prior: String,
    /// Sum over scored answers of ln P(answer | the item's other answers, parameters fitted
    /// without the item).
    pub heldout_loglik: f64,
    /// `heldout_loglik / scored_answers`.
    pub per_answer: f64,
}

impl Selection {
    /// Winner minus runner-up, total nats over the scored answers (0 with one candidate).
    pub fn margin(&self) -> f64 {
        match self.candidates.as_slice() {
            [a, b, ..] => a.heldout_loglik - b.heldout_loglik,
            _ => 0.0,
        }
    }
    pub fn runner_up(&self) -> Option<Method> {
        self.candidates.get(1).map(|c| c.method)
    }
}

impl Aggregation {
    pub fn k(&self) -> usize {
        self.classes.len()
    }
    pub fn posterior(&self, i: usize) -> &[f64] {
        let k = self.k();
        &self.posteriors[i * k..(i + 1) * k]
    }
    pub fn worker_matrix(&self, w: usize) -> &[f64] {
        let k = self.k();
        &self.worker_matrices[w * k * k..(w + 1) * k * k]
    }
    pub fn mean_max_posterior(&self) -> f64 {
        let n = self.labels.len();
        if n == 0 {
            return 0.0;
        }
        (0..n).map(|i| self.posterior(i).iter().cloned().fold(0.0, f64::max)).sum::<f64>() / n as f64
    }
}

/// Run `method` on `answers`.
pub fn aggregate(answers: &Answers, method: Method, opts: &EmOptions) -> Result<Aggregation> {
    let k = answers.n_classes();
    check_options(k, opts)?;
    if answers.n_answers() == 0 {
        return Err(CrowdError::Data(format!("no answers to aggregate ({} items, {} workers)", answers.n_items(), answers.n_workers())));
    }
    let prior_fixed = match &opts.class_prior {
        ClassPrior::Learned => None,
        ClassPrior::Uniform => Some(vec![1.0 / k as f64; k]),
        ClassPrior::Fixed(w) => {
            let s: f64 = w.iter().sum();
            Some(w.iter().map(|x| x / s).collect())
        }
    };
    if method == Method::MajorityVote {
        let mv = soft_majority(answers);
        let labels = hard_labels(answers, &mv, opts.seed);
        let counts = counts_from_posteriors(answers, &mv);
        let prior = match &prior_fixed {
            Some(p) => p.clone(),
            None => class_mean(&mv, k),
        };
        let mats = per_worker_matrices(&counts, k, opts.smoothing);
        let pooled = pooled_matrix(&counts, k, opts.smoothing);
        let quality = quality(&mats, &prior, k);
        return Ok(Aggregation {
            method,
            classes: answers.classes.clone(),
            posteriors: mv,
            labels,
            class_prior: prior,
            worker_matrices: mats,
            pooled_matrix: pooled,
            worker_quality: quality,
            objective: Vec::new(),
            converged: true,
            shrink_strength: None,
            shrink_center: None,
            selection: None,
        });
    }
    let em = |model: Model, init: Init| -> Result<EmOut> {
        let n = k.next_power_of_two().max(2);
        match n {
            2 => Ok(run_em::<2>(answers, model, init, opts, prior_fixed.as_deref())),
            4 => Ok(run_em::<4>(answers, model, init, opts, prior_fixed.as_deref())),
            8 => Ok(run_em::<8>(answers, model, init, opts, prior_fixed.as_deref())),
            16 => Ok(run_em::<16>(answers, model, init, opts, prior_fixed.as_deref())),
            32 => Ok(run_em::<32>(answers, model, init, opts, prior_fixed.as_deref())),
            64 => Ok(run_em::<64>(answers, model, init, opts, prior_fixed.as_deref())),
            _ => Err(CrowdError::Data(format!("{k} classes: at most 64 are supported"))),
        }
    };
    if method == Method::Auto {
        return crate::select::auto(answers, opts);
    }
    let mut shrink_strength = None;
    let mut shrink_center = None;
    let out = match method {
        Method::MajorityVote | Method::Auto => unreachable!("handled above"),
        Method::DawidSkene => em(Model::PerWorker, Init::Votes)?,
        Method::OneCoin => em(Model::OneCoin, Init::Votes)?,
        Method::Pooled => em(Model::Pooled, Init::Votes)?,
        Method::Shrunk => {
            // Stage 1: one matrix for everyone (well determined even on sparse data);
            // stage 2: per-worker matrices with that matrix as their Dirichlet prior mean.
            let stage1 = em(Model::Pooled, Init::Votes)?;
            let mut center = stage1.pooled.clone();
            let mut strength = match opts.shrink_strength {
                Some(s) => vec![s; k],
                None => estimate_concentrations(&counts_from_posteriors(answers, &stage1.posteriors), &center, k),
            };
            let mut out = stage1;
            // Empirical Bayes, refined: re-estimate centre and concentrations from the
            // shrunk model's posteriors (better than the pooled model's on heterogeneous
            // crowds), then MAP EM with them held fixed. A given strength skips this.
            let rounds = if opts.shrink_strength.is_none() { EB_ROUNDS } else { 1 };
            for round in 0..rounds {
                if round > 0 {
                    let counts = counts_from_posteriors(answers, &out.posteriors);
                    center = pooled_matrix(&counts, k, opts.smoothing);
                    strength = estimate_concentrations(&counts, &center, k);
                }
                let model = Model::Shrunk(center.clone(), strength.clone());
                let next = em(model.clone(), Init::Posteriors(&out.posteriors))?;
                out = if round + 1 == rounds {
                    // EM finds a local optimum: also start the final fit from majority vote
                    // and keep the higher MAP objective (same model, so the two compare).
                    let from_mv = em(model, Init::Votes)?;
                    // Only a real gain counts: two fits of one optimum differ by rounding, and
                    // that must not decide (permuting items would flip the choice).
                    let (a, b) = (final_objective(&from_mv), final_objective(&next));
                    if a > b + 1e-9 * b.abs() {
                        from_mv
                    } else {
                        next
                    }
                } else {
                    next
                };
            }
            shrink_strength = Some(strength);
            shrink_center = Some(center);
            out
        }
    };
    let labels = hard_labels(answers, &out.posteriors, opts.seed);
    let quality = quality(&out.matrices, &out.prior, k);
    Ok(Aggregation {
        method,
        classes: answers.classes.clone(),
        posteriors: out.posteriors,
        labels,
        class_prior: out.prior,
        worker_matrices: out.matrices,
        pooled_matrix: out.pooled,
        worker_quality: quality,
        objective: out.objective,
        converged: out.converged,
        shrink_strength,
        shrink_center,
        selection: None,
    })
}

/// `method` (one of the single-EM models: dawid-skene, one-coin, pooled) with EM started
/// from `init` posteriors (`k` per item) instead of majority vote.
pub fn aggregate_from(answers: &Answers, method: Method, opts: &EmOptions, init: &[f64]) -> Result<Aggregation> {
    let k = answers.n_classes();
    check_options(k, opts)?;
    if answers.n_answers() == 0 || init.len() != answers.n_items() * k {
        return Err(CrowdError::Data("no answers, or init of the wrong size".into()));
    }
    let prior_fixed = match &opts.class_prior {
        ClassPrior::Learned => None,
        ClassPrior::Uniform => Some(vec![1.0 / k as f64; k]),
        ClassPrior::Fixed(w) => {
            let s: f64 = w.iter().sum();
            Some(w.iter().map(|x| x / s).collect())
        }
    };
    let model = match method {
        Method::DawidSkene => Model::PerWorker,
        Method::OneCoin => Model::OneCoin,
        Method::Pooled => Model::Pooled,
        _ => return aggregate(answers, method, opts),
    };
    let init = Init::Posteriors(init);
    let n = k.next_power_of_two().max(2);
    let out = match n {
        2 => run_em::<2>(answers, model, init, opts, prior_fixed.as_deref()),
        4 => run_em::<4>(answers, model, init, opts, prior_fixed.as_deref()),
        8 => run_em::<8>(answers, model, init, opts, prior_fixed.as_deref()),
        16 => run_em::<16>(answers, model, init, opts, prior_fixed.as_deref()),
        32 => run_em::<32>(answers, model, init, opts, prior_fixed.as_deref()),
        64 => run_em::<64>(answers, model, init, opts, prior_fixed.as_deref()),
        _ => return Err(CrowdError::Data(format!("{k} classes: at most 64 are supported"))),
    };
    let labels = hard_labels(answers, &out.posteriors, opts.seed);
    let quality = quality(&out.matrices, &out.prior, k);
    Ok(Aggregation {
        method,
        classes: answers.classes.clone(),
        posteriors: out.posteriors,
        labels,
        class_prior: out.prior,
        worker_matrices: out.matrices,
        pooled_matrix: out.pooled,
        worker_quality: quality,
        objective: out.objective,
        converged: out.converged,
        shrink_strength: None,
        shrink_center: None,
        selection: None,
    })
}

fn check_options(k: usize, o: &EmOptions) -> Result<()> {
    let bad = |option: &str, message: String| Err(CrowdError::Option { option: option.into(), message });
    if k < 2 {
        return bad("classes", format!("need at least 2 classes, got {k}"));
    }
    if !(o.smoothing > 0.0 && o.smoothing.is_finite()) {
        return bad("smoothing", format!("must be > 0, got {}", o.smoothing));
    }
    if !(o.prior_smoothing >= 0.0 && o.prior_smoothing.is_finite()) {
        return bad("prior_smoothing", format!("must be >= 0, got {}", o.prior_smoothing));
    }
    if let Some(s) = o.shrink_strength {
        if !(s >= 0.0 && s.is_finite()) {
            return bad("shrink_strength", format!("must be >= 0, got {s}"));
        }
    }
    if !(o.diag_prior >= 0.0 && o.diag_prior.is_finite()) {
        return bad("diag_prior", format!("must be >= 0, got {}", o.diag_prior));
    }
    if !(o.tol >= 0.0) {
        return bad("tol", format!("must be >= 0, got {}", o.tol));
    }
    if let ClassPrior::Fixed(w) = &o.class_prior {
        if w.len() != k {
            return bad("class_prior", format!("{} weights for {k} classes", w.len()));
        }
        if w.iter().any(|x| !(*x > 0.0 && x.is_finite())) {
            return bad("class_prior", "weights must be positive numbers".into());
        }
    }
    Ok(())
}

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
fn vote_fractions(codes: &[u32], row: &mut [f64]) {
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

/// Where EM starts.
#[derive(Clone, Copy)]
enum Init<'a> {
    /// Majority-vote fractions (computed on the fly, never stored).
    Votes,
    /// These posteriors (`k` per item).
    Posteriors(&'a [f64]),
}

/// Expected counts `[code][true]` and class totals under majority-vote fractions: the
/// same numbers as `counts_from_posteriors(soft_majority(a))`, without the `n x k` matrix.
fn vote_counts(a: &Answers) -> (Vec<f64>, Vec<f64>) {
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

/// Argmax per item; exact-ish ties (within 1e-12 relative) broken by a hash of the
/// item's name and the seed, so the choice does not depend on item order.
pub fn hard_labels(a: &Answers, post: &[f64], seed: u64) -> Vec<usize> {
    let k = a.n_classes();
    (0..a.n_items())
        .into_par_iter()
        .map(|i| {
            let row = &post[i * k..(i + 1) * k];
            let best = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let is_tie = |j: &usize| row[*j] >= best - 1e-12 * best.abs();
            let n = (0..k).filter(is_tie).count();
            let pick = if n <= 1 { 0 } else { (mix64(hash_str(&a.items[i]) ^ seed) % n as u64) as usize };
            (0..k).filter(is_tie).nth(pick).unwrap_or(0)
        })
        .collect()
}

fn class_mean(post: &[f64], k: usize) -> Vec<f64> {
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

fn per_worker_matrices(counts: &[f64], k: usize, a: f64) -> Vec<f64> {
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

fn pooled_matrix(counts: &[f64], k: usize, a: f64) -> Vec<f64> {
    let mut p = vec![0.0; k * k];
    for w in counts.chunks(k * k) {
        for (x, y) in p.iter_mut().zip(w) {
            *x += y;
        }
    }
    per_worker_matrices(&p, k, a)
}

fn quality(mats: &[f64], prior: &[f64], k: usize) -> Vec<f64> {
    mats.chunks(k * k).map(|m| (0..k).map(|j| prior[j] * m[j * k + j]).sum()).collect()
}

#[derive(Clone)]
enum Model {
    PerWorker,
    OneCoin,
    Pooled,
    /// Per-worker matrices with Dirichlet prior mean = this `k x k` matrix, and these
    /// concentrations, one per true class (pseudo-answers per true class).
    Shrunk(Vec<f64>, Vec<f64>),
}

struct EmOut {
    posteriors: Vec<f64>,
    prior: Vec<f64>,
    matrices: Vec<f64>,
    pooled: Vec<f64>,
    objective: Vec<f64>,
    converged: bool,
}

/// The M-step: parameters from expected counts, plus the log prior density of those
/// parameters (up to a constant), which makes EM monotone in `loglik + log_prior`.
fn m_step(
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
            log_prior += a * m.iter().map(|x| x.ln()).sum::<f64>();
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
            for w in 0..nw {
                let c = &counts[w * k * k..(w + 1) * k * k];
                for (j, &s) in strength.iter().enumerate() {
                    let n: f64 = (0..k).map(|l| c[l * k + j]).sum();
                    for l in 0..k {
                        let alpha = s * center[l * k + j] + a;
                        let v = (c[l * k + j] + alpha) / (n + s + k as f64 * a);
                        m[w * k * k + l * k + j] = v;
                        log_prior += alpha * v.ln();
                    }
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

/// Accumulates a product of positive numbers as mantissa * 2^exponent (no `ln` per factor).
#[derive(Clone, Copy)]
struct LogProd {
    m: f64,
    e: i64,
    /// `ln` of factors too extreme for the fast path.
    slow: f64,
}

impl LogProd {
    fn new() -> Self {
        LogProd { m: 1.0, e: 0, slow: 0.0 }
    }
    #[inline(always)]
    fn mul(&mut self, z: f64) {
        if !(1e-300..=1e300).contains(&z) {
            self.slow += z.ln();
            return;
        }
        // m in [1, 2) and z in [1e-300, 1e300]: the product is a normal number.
        self.m *= z;
        let bits = self.m.to_bits();
        let ex = ((bits >> 52) & 0x7ff) as i64;
        self.e += ex - 1023;
        self.m = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1023u64 << 52));
    }
    fn ln(&self) -> f64 {
        self.m.ln() + self.e as f64 * std::f64::consts::LN_2 + self.slow
    }
}

/// The pass's number type: `f32` on large data (half the cache footprint of the scattered
/// parameter rows), `f64` on small data, where speed does not matter and single precision's
/// rounding, amplified by EM near flat or saddle points of tiny crowds, would make the
/// result depend on the order of the items.
trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// Rescale a long item's running product below this (before it underflows).
    const RESCALE_BELOW: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn is_finite(self) -> bool;
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const RESCALE_BELOW: f32 = 1e-20;
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const RESCALE_BELOW: f64 = 1e-200;
    fn from_f64(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
}

/// Below this many answers EM runs in `f64` on one thread; above, in `f32` on all threads.
const SMALL_ANSWERS: usize = 50_000;

/// One worker x answer row: its likelihood per true class and the expected counts the
/// pass accumulates, side by side so each answer touches one cache line (f32, N = 8: 64 bytes).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Row<T, const N: usize> {
    p: [T; N],
    c: [T; N],
}

#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Answers ahead whose parameter rows are prefetched: the rows are scattered (one per
/// worker x label), so without it the pass waits on memory.
const PREFETCH_ANSWERS: usize = 16;

/// Pairwise sum (vectorises; a left fold of floats does not).
#[inline(always)]
fn tree_sum<T: Real, const N: usize>(p: &[T; N]) -> T {
    let mut v = *p;
    let mut n = N;
    while n > 1 {
        n /= 2;
        for j in 0..n {
            v[j] += v[j + n];
        }
    }
    v[0]
}

/// One pass over items `lo..hi`: posteriors under (`tab`, `prior`), accumulated into
/// `counts`/`class`; optionally written to `post` (`k` per item). Returns the log-likelihood.
/// Parameters and counts are `T` (see [`Real`]); the log-likelihood and the class totals
/// are accumulated in `f64`.
#[allow(clippy::too_many_arguments)]
fn pass<T: Real, const N: usize>(
    a: &Answers,
    lo: usize,
    hi: usize,
    rows: &mut [Row<T, N>],
    prior: &[T; N],
    class: &mut [f64; N],
    post: Option<&mut [f64]>,
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { pass_avx2::<T, N>(a, lo, hi, rows, prior, class, post) };
    }
    pass_body::<T, N>(a, lo, hi, rows, prior, class, post)
}

/// The same pass compiled for AVX2 (measured 10 % faster on the scale case). No FMA and no
/// reassociation, so the results are bit-identical to the portable build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn pass_avx2<T: Real, const N: usize>(
    a: &Answers,
    lo: usize,
    hi: usize,
    rows: &mut [Row<T, N>],
    prior: &[T; N],
    class: &mut [f64; N],
    post: Option<&mut [f64]>,
) -> f64 {
    pass_body::<T, N>(a, lo, hi, rows, prior, class, post)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pass_body<T: Real, const N: usize>(
    a: &Answers,
    lo: usize,
    hi: usize,
    rows: &mut [Row<T, N>],
    prior: &[T; N],
    class: &mut [f64; N],
    mut post: Option<&mut [f64]>,
) -> f64 {
    let k = a.n_classes();
    let mut prod = LogProd::new();
    let mut extra = 0.0;
    let codes_all = &a.codes[..];
    let mut block = [T::ZERO; N];
    for i in lo..hi {
        let (s, e) = (a.offsets[i], a.offsets[i + 1]);
        for t in s..e {
            if let Some(&c) = codes_all.get(t + PREFETCH_ANSWERS) {
                prefetch(rows.as_ptr().wrapping_add(c as usize));
            }
        }
        let codes = &codes_all[s..e];
        let mut p = *prior;
        for (t, &c) in codes.iter().enumerate() {
            let r = &rows[c as usize].p;
            for j in 0..N {
                p[j] *= r[j];
            }
            if t & 7 == 7 {
                // long items: rescale before the product underflows
                let m = p.iter().cloned().fold(T::ZERO, |a, b| if b > a { b } else { a });
                if m > T::ZERO && m < T::RESCALE_BELOW {
                    let inv = T::ONE / m;
                    for x in p.iter_mut() {
                        *x *= inv;
                    }
                    extra += m.to_f64().ln();
                }
            }
        }
        let z: T = tree_sum(&p);
        if !(z > T::ZERO && z.is_finite()) {
            // Impossible under the parameters (cannot happen with smoothing > 0): keep the prior.
            p = *prior;
            extra += f64::NEG_INFINITY;
        } else {
            prod.mul(z.to_f64());
            let inv = T::ONE / z;
            for x in p.iter_mut() {
                *x *= inv;
            }
        }
        for &c in codes {
            let r = &mut rows[c as usize].c;
            for j in 0..N {
                r[j] += p[j];
            }
        }
        // class totals: `T` within a block of items, flushed to f64
        for j in 0..N {
            block[j] += p[j];
        }
        if (i - lo) & 1023 == 1023 {
            for j in 0..N {
                class[j] += block[j].to_f64();
            }
            block = [T::ZERO; N];
        }
        if let Some(out) = post.as_deref_mut() {
            let row = &mut out[(i - lo) * k..(i - lo + 1) * k];
            // renormalise in f64 so rows sum to 1 to double precision
            let zz: f64 = p[..k].iter().map(|&x| x.to_f64()).sum();
            for j in 0..k {
                row[j] = p[j].to_f64() / zz;
            }
        }
    }
    for j in 0..N {
        class[j] += block[j].to_f64();
    }
    prod.ln() + extra
}

/// A thread's buffers before a pass: likelihoods from `tab`, counts and class totals zeroed.
fn load_rows<T: Real, const N: usize>(rows: &mut [Row<T, N>], class: &mut [f64; N], tab: &[[T; N]]) {
    for (r, t) in rows.iter_mut().zip(tab) {
        r.p = *t;
        r.c = [T::ZERO; N];
    }
    *class = [0.0; N];
}

fn run_em<const N: usize>(a: &Answers, model: Model, init: Init, o: &EmOptions, prior_fixed: Option<&[f64]>) -> EmOut {
    if a.n_answers() < SMALL_ANSWERS {
        run_em_in::<f64, N>(a, model, init, o, prior_fixed)
    } else {
        run_em_in::<f32, N>(a, model, init, o, prior_fixed)
    }
}

fn run_em_in<T: Real, const N: usize>(
    a: &Answers,
    model: Model,
    init: Init,
    o: &EmOptions,
    prior_fixed: Option<&[f64]>,
) -> EmOut {
    let k = a.n_classes();
    let nc = a.n_workers() * k;
    let n_items = a.n_items();
    let (mut counts, mut class_counts) = match init {
        Init::Votes => vote_counts(a),
        Init::Posteriors(p) => (counts_from_posteriors(a, p), class_totals(p, k)),
    };
    // Contiguous item ranges, one per thread, balanced by answers.
    let threads = rayon::current_num_threads().max(1);
    let parts = if a.n_answers() < SMALL_ANSWERS { 1 } else { threads };
    let mut bounds = vec![0usize];
    for p in 1..parts {
        let target = a.n_answers() * p / parts;
        let i = a.offsets.partition_point(|&x| x < target).min(n_items);
        bounds.push(i.max(*bounds.last().unwrap()));
    }
    bounds.push(n_items);
    let zero = Row::<T, N> { p: [T::ZERO; N], c: [T::ZERO; N] };
    let mut bufs: Vec<(Vec<Row<T, N>>, [f64; N])> = (0..parts).map(|_| (vec![zero; nc], [0.0; N])).collect();

    let mut tab = vec![[T::ZERO; N]; nc];
    let mut prior_n = [T::ZERO; N];
    let mut objective = Vec::new();
    let mut converged = false;
    let mut mats = Vec::new();
    let mut prior = Vec::new();
    for it in 0..o.max_iter.max(1) {
        let (m, p, log_prior) = m_step(&model, &counts, &class_counts, k, o, prior_fixed);
        mats = m;
        prior = p;
        for code in 0..nc {
            let (w, l) = (code / k, code % k);
            let row = &mut tab[code];
            for j in 0..k {
                row[j] = T::from_f64(mats[w * k * k + l * k + j]);
            }
        }
        for j in 0..k {
            prior_n[j] = T::from_f64(prior[j]);
        }
        let ll: f64 = bufs
            .par_iter_mut()
            .enumerate()
            .map(|(pi, (cb, cl))| {
                load_rows(cb, cl, &tab);
                pass::<T, N>(a, bounds[pi], bounds[pi + 1], cb, &prior_n, cl, None)
            })
            .sum();
        counts.iter_mut().for_each(|x| *x = 0.0);
        class_counts.iter_mut().for_each(|x| *x = 0.0);
        for (cb, cl) in &bufs {
            for code in 0..nc {
                for j in 0..k {
                    counts[code * k + j] += cb[code].c[j].to_f64();
                }
            }
            for j in 0..k {
                class_counts[j] += cl[j];
            }
        }
        let obj = ll + log_prior;
        objective.push(obj);
        if it > 0 {
            let prev = objective[it - 1];
            let d = obj - prev;
            // A dip (d < 0, rounding) never stops the loop.
            if d >= 0.0 && d <= o.tol * prev.abs() {
                converged = true;
                break;
            }
        }
    }
    // Final posteriors under the last parameters (the ones the last objective scored).
    // Same item ranges and threads as the iterations; each part writes its own rows.
    let mut post = vec![0.0; n_items * k];
    let mut slices = Vec::with_capacity(parts);
    let mut rest = &mut post[..];
    for pi in 0..parts {
        let (head, tail) = rest.split_at_mut((bounds[pi + 1] - bounds[pi]) * k);
        slices.push(head);
        rest = tail;
    }
    bufs.par_iter_mut().zip(slices).enumerate().for_each(|(pi, ((cb, cl), out))| {
        load_rows(cb, cl, &tab);
        pass::<T, N>(a, bounds[pi], bounds[pi + 1], cb, &prior_n, cl, Some(out));
    });
    let pooled = match &model {
        Model::Pooled => mats[..k * k].to_vec(),
        _ => {
            // the answers of everyone against the final posteriors
            let mut c = vec![0.0; k * k];
            for (cb, _) in &bufs {
                for code in 0..nc {
                    let l = code % k;
                    for j in 0..k {
                        c[l * k + j] += cb[code].c[j].to_f64();
                    }
                }
            }
            per_worker_matrices(&c, k, o.smoothing)
        }
    };
    EmOut { posteriors: post, prior, matrices: mats, pooled, objective, converged }
}

/// Hyperparameter estimates (from the pooled fit, then twice from the shrunk fit's own
/// posteriors), each followed by a MAP EM.
const EB_ROUNDS: usize = 3;

fn final_objective(o: &EmOut) -> f64 {
    o.objective.last().copied().unwrap_or(f64::NEG_INFINITY)
}

/// ln Gamma(x) for x > 0 (Lanczos, g = 7, n = 9; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // reflection
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Per true class `j`, the Dirichlet concentration `s_j` (shared by all workers) that
/// maximises the Dirichlet-multinomial likelihood of the workers' expected answer counts
/// for items of class `j`, with mean `center[.][j]`; searched on a log grid from 0.25 to
/// 4096. Per class because workers agree on some classes (happy) far more than on others
/// (fear vs surprise): one shared strength over-shrinks the first or under-shrinks the second.
fn estimate_concentrations(counts: &[f64], center: &[f64], k: usize) -> Vec<f64> {
    let mut grid = Vec::new();
    let mut s = 0.25f64;
    while s <= 4096.0 {
        grid.push(s);
        s *= 2f64.sqrt();
    }
    // Every (class, strength) score on its own, in parallel; the ln Gamma terms that do not
    // depend on the worker are computed once per score (the same values, summed in the same
    // order, as computing them per worker).
    let score = |j: usize, s: f64| -> f64 {
        let lg_s = ln_gamma(s);
        let lg_a: Vec<f64> = (0..k).map(|l| ln_gamma(s * center[l * k + j])).collect();
        let mut ll = 0.0;
        for c in counts.chunks(k * k) {
            let n: f64 = (0..k).map(|l| c[l * k + j]).sum();
            if n < 1e-9 {
                continue;
            }
            ll += lg_s - ln_gamma(n + s);
            for l in 0..k {
                let a = s * center[l * k + j];
                ll += ln_gamma(c[l * k + j] + a) - lg_a[l];
            }
        }
        ll
    };
    let g = grid.len();
    let scores: Vec<f64> = (0..k * g).into_par_iter().map(|x| score(x / g, grid[x % g])).collect();
    (0..k)
        .map(|j| {
            let mut best = (f64::NEG_INFINITY, 1.0);
            for (&s, &v) in grid.iter().zip(&scores[j * g..(j + 1) * g]) {
                // A larger strength must win by more than rounding: where the likelihood
                // is flat (few answers), rounding alone would pick the point, and a mere
                // reordering of the items could change it.
                if best.0 == f64::NEG_INFINITY || v > best.0 + 1e-9 * best.0.abs() {
                    best = (v, s);
                }
            }
            best.1
        })
        .collect()
}

/// Accuracy of hard labels against gold (`None` entries skipped).
pub fn accuracy(labels: &[usize], gold: &[Option<usize>]) -> f64 {
    let (mut right, mut n) = (0usize, 0usize);
    for (l, g) in labels.iter().zip(gold) {
        if let Some(g) = g {
            n += 1;
            if l == g {
                right += 1;
            }
        }
    }
    if n == 0 {
        0.0
    } else {
        right as f64 / n as f64
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_pass_is_bit_identical_to_the_portable_one() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let sim = crate::sim::simulate(&crate::sim::SimConfig::sparse_round2(3));
        let classes: Vec<String> = (0..7).map(|c| format!("c{c}")).collect();
        let a = Answers::from_triples(700, sim.n_workers, classes, &sim.answers).unwrap();
        let nc = a.n_workers() * 7;
        let rows: Vec<Row<f32, 8>> = (0..nc)
            .map(|c| Row { p: std::array::from_fn(|j| 0.05 + ((c * 31 + j * 7) % 13) as f32 / 20.0), c: [0.0; 8] })
            .collect();
        let prior = [1.0f32 / 7.0; 8];
        let run = |avx: bool| {
            let (mut r, mut cl, mut post) = (rows.clone(), [0.0f64; 8], vec![0.0; 700 * 7]);
            let ll = if avx {
                // SAFETY: AVX2 was detected above.
                unsafe { pass_avx2::<f32, 8>(&a, 0, 700, &mut r, &prior, &mut cl, Some(&mut post)) }
            } else {
                pass_body::<f32, 8>(&a, 0, 700, &mut r, &prior, &mut cl, Some(&mut post))
            };
            let counts: Vec<u32> = r.iter().flat_map(|x| x.c.map(f32::to_bits)).collect();
            (ll.to_bits(), cl.map(f64::to_bits), post.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), counts)
        };
        assert!(run(true) == run(false));
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-12);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((ln_gamma(0.01) - 4.599_479_878_042_02).abs() < 1e-9);
    }

    #[test]
    fn logprod_matches_sum_of_logs() {
        let mut p = LogProd::new();
        let mut s = 0.0;
        for i in 1..5000 {
            let z = (i as f64 * 0.37).sin().abs() * 1e-3 + 1e-301 * (i % 2) as f64;
            p.mul(z);
            s += z.ln();
        }
        assert!((p.ln() - s).abs() < 1e-9 * s.abs());
    }

    #[test]
    fn method_names_round_trip_and_unknown_is_an_error() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
        assert!("glad".parse::<Method>().unwrap_err().to_string().contains("unknown method"));
    }

    #[test]
    fn bad_options_are_errors() {
        let a = Answers::from_triples(1, 1, vec!["a".into(), "b".into()], &[(0, 0, 0)]).unwrap();
        let o = EmOptions { class_prior: ClassPrior::Fixed(vec![1.0]), ..EmOptions::default() };
        assert!(aggregate(&a, Method::DawidSkene, &o).unwrap_err().to_string().contains("class_prior"));
        let o = EmOptions { smoothing: 0.0, ..EmOptions::default() };
        assert!(aggregate(&a, Method::DawidSkene, &o).is_err());
    }

    #[test]
    fn majority_vote_ties_depend_on_seed_not_order() {
        // one item, two answers that disagree: a tie
        let labels: Vec<usize> = (0..64)
            .map(|seed| {
                let a = Answers::from_triples(1, 2, vec!["a".into(), "b".into()], &[(0, 0, 0), (0, 1, 1)]).unwrap();
                aggregate(&a, Method::MajorityVote, &EmOptions { seed, ..EmOptions::default() }).unwrap().labels[0]
            })
            .collect();
        assert!(labels.contains(&0) && labels.contains(&1), "seeded tie-break should vary with the seed");
        let a = Answers::from_triples(1, 2, vec!["a".into(), "b".into()], &[(0, 1, 1), (0, 0, 0)]).unwrap();
        let b = Answers::from_triples(1, 2, vec!["a".into(), "b".into()], &[(0, 0, 0), (0, 1, 1)]).unwrap();
        let o = EmOptions { seed: 9, ..EmOptions::default() };
        assert_eq!(aggregate(&a, Method::MajorityVote, &o).unwrap().labels, aggregate(&b, Method::MajorityVote, &o).unwrap().labels);
        assert_eq!(aggregate(&a, Method::MajorityVote, &o).unwrap().posteriors, vec![0.5, 0.5]);
    }

    #[test]
    fn split_final_pass_gives_each_item_its_own_posterior() {
        // 30,000 items x 3 answers: above SMALL_ANSWERS, so the pass is split across threads
        let cfg = crate::sim::SimConfig { n_items: 30_000, n_workers: 300, ..crate::sim::SimConfig::sparse_round2(1) };
        let sim = crate::sim::simulate(&cfg);
        let classes: Vec<String> = (0..7).map(|c| format!("c{c}")).collect();
        let a = Answers::from_triples(cfg.n_items, sim.n_workers, classes, &sim.answers).unwrap();
        assert!(a.n_answers() >= 50_000);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let r = pool.install(|| aggregate(&a, Method::DawidSkene, &EmOptions { max_iter: 5, ..EmOptions::default() })).unwrap();
        // recompute every posterior from the returned parameters, in f64
        for i in (0..a.n_items()).step_by(97) {
            let mut p: Vec<f64> = r.class_prior.clone();
            for &code in a.item_codes(i) {
                let m = r.worker_matrix(a.worker_of(code));
                for (j, x) in p.iter_mut().enumerate() {
                    *x *= m[a.label_of(code) * 7 + j];
                }
            }
            let z: f64 = p.iter().sum();
            for j in 0..7 {
                assert!((p[j] / z - r.posterior(i)[j]).abs() < 1e-4, "item {i} class {j}");
            }
        }
    }

    #[test]
    fn concentration_is_estimated_per_true_class() {
        // 40 workers, 2 classes. Class 0: every worker answers 0 with the centre's 0.8
        // (little spread: a strong prior fits). Class 1: half the workers are always right,
        // half always wrong (much spread: a weak prior fits).
        let k = 2;
        let mut counts = Vec::new();
        for w in 0..40 {
            let (right1, wrong1) = if w % 2 == 0 { (20.0, 0.0) } else { (0.0, 20.0) };
            // [answer][true]: c[0][0], c[0][1], c[1][0], c[1][1]
            counts.extend_from_slice(&[16.0, wrong1, 4.0, right1]);
        }
        let center = [0.8, 0.5, 0.2, 0.5];
        let s = estimate_concentrations(&counts, &center, k);
        assert!(s[0] > 100.0, "class 0 workers agree with the centre: {s:?}");
        assert!(s[1] < 1.0, "class 1 workers split: {s:?}");
    }

    #[test]
    fn shrunk_final_fit_is_no_worse_than_either_start() {
        // seed 4: the start from the pooled fit wins; seed 5: the start from majority vote
        let mut winners = Vec::new();
        for seed in [4, 5] {
            let sim = crate::sim::simulate(&crate::sim::SimConfig::sparse_round2(seed));
            let classes: Vec<String> = (0..7).map(|c| format!("c{c}")).collect();
            let a = Answers::from_triples(700, sim.n_workers, classes, &sim.answers).unwrap();
            // uniform prior: the runs below hold it fixed too
            let o = EmOptions { shrink_strength: Some(4.0), class_prior: ClassPrior::Uniform, ..EmOptions::default() };
            let r = aggregate(&a, Method::Shrunk, &o).unwrap();
            // the same model fitted from each start alone
            let uniform = Some(&[1.0 / 7.0; 7][..]);
            let stage1 = run_em::<8>(&a, Model::Pooled, Init::Votes, &o, uniform);
            let model = Model::Shrunk(stage1.pooled.clone(), vec![4.0; 7]);
            let from_pooled = run_em::<8>(&a, model.clone(), Init::Posteriors(&stage1.posteriors), &o, uniform);
            let from_mv = run_em::<8>(&a, model, Init::Votes, &o, uniform);
            let (p, m) = (final_objective(&from_pooled), final_objective(&from_mv));
            assert_eq!(*r.objective.last().unwrap(), p.max(m), "seed {seed}");
            assert_eq!(r.shrink_strength, Some(vec![4.0; 7]));
            winners.push(p > m);
        }
        assert_eq!(winners, [true, false], "the seeds should exercise both starts");
    }

    #[test]
    fn fixed_prior_is_held_and_learned_prior_moves() {
        let t: Vec<(usize, usize, usize)> = (0..40).flat_map(|i| [(i, 0, (i % 4 == 0) as usize), (i, 1, (i % 4 == 0) as usize)]).collect();
        let a = Answers::from_triples(40, 2, vec!["a".into(), "b".into()], &t).unwrap();
        let fixed = EmOptions { class_prior: ClassPrior::Fixed(vec![3.0, 1.0]), ..EmOptions::default() };
        let r = aggregate(&a, Method::DawidSkene, &fixed).unwrap();
        assert!((r.class_prior[0] - 0.75).abs() < 1e-12);
        let learned = EmOptions { class_prior: ClassPrior::Learned, ..EmOptions::default() };
        let r = aggregate(&a, Method::DawidSkene, &learned).unwrap();
        assert!(r.class_prior[0] > 0.7 && r.class_prior[0] < 0.8, "{:?}", r.class_prior);
    }

    #[test]
    fn auto_names_the_winner_and_ranks_every_candidate() {
        let sim = crate::sim::simulate(&crate::sim::SimConfig::sparse_round2(2));
        let classes: Vec<String> = (0..7).map(|c| format!("c{c}")).collect();
        let a = Answers::from_triples(700, sim.n_workers, classes, &sim.answers).unwrap();
        let r = aggregate(&a, Method::Auto, &EmOptions::default()).unwrap();
        let s = r.selection.as_ref().unwrap();
        assert_eq!(s.chosen, r.method);
        assert_ne!(r.method, Method::Auto);
        // 5 models, 4 of them with a learned and a uniform prior
        assert_eq!(s.candidates.len(), 9);
        assert!(s.candidates.windows(2).all(|w| w[0].heldout_loglik >= w[1].heldout_loglik));
        assert!(s.margin() >= 0.0 && s.scored_answers == a.n_answers());
        // the winner's labels are that model's own
        let prior = if s.candidates[0].class_prior == "uniform" { ClassPrior::Uniform } else { ClassPrior::Learned };
        let direct = aggregate(&a, r.method, &EmOptions { class_prior: prior, ..EmOptions::default() }).unwrap();
        assert_eq!(direct.labels, r.labels);
        // a fixed prior is kept: one candidate per model
        let r = aggregate(&a, Method::Auto, &EmOptions { class_prior: ClassPrior::Uniform, ..EmOptions::default() }).unwrap();
        assert_eq!(r.selection.unwrap().candidates.len(), 5);
        assert!("auto".parse::<Method>().unwrap() == Method::Auto);
    }

    #[test]
    fn no_answers_is_an_error_for_every_method() {
        let a = Answers::from_triples(3, 2, vec!["a".into(), "b".into()], &[]).unwrap();
        for m in Method::ALL.iter().copied().chain([Method::Auto]) {
            let e = aggregate(&a, m, &EmOptions::default()).unwrap_err().to_string();
            assert!(e.contains("no answers"), "{m}: {e}");
        }
    }
}
