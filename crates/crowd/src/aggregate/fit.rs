//! Fitting one model: majority vote, the single-EM models, and `shrunk`'s empirical-Bayes
//! rounds; hard labels from posteriors.

use rayon::prelude::*;

use crate::data::Answers;
use crate::{hash_str, mix64, CrowdError, Result};

use super::em::{self, final_objective, EmOut, Init};
use super::mstep::{class_mean, counts_from_posteriors, per_worker_matrices, pooled_matrix, quality, soft_majority, Model};
use super::prior::{estimate_concentrations, EB_ROUNDS};
use super::types::{Aggregation, EmOptions, Method, ClassPrior};

/// Fit one model (every method but `Auto`, which chooses among these: see
/// [`crate::select`]) on `answers`.
pub fn fit(answers: &Answers, method: Method, opts: &EmOptions) -> Result<Aggregation> {
    fit_with(answers, method, opts, false)
}

/// [`fit`]; with `accel`, every EM run in it (the shrunk model's stages included) takes
/// over-relaxed steps (see [`em::run_em_in`]): the same models and objectives in fewer passes.
pub(crate) fn fit_with(answers: &Answers, method: Method, opts: &EmOptions, accel: bool) -> Result<Aggregation> {
    let k = answers.n_classes();
    check(answers, opts)?;
    let prior_fixed = fixed_prior(opts, k);
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
    let em = |model: Model, init: Init| -> Result<EmOut> { em::run_with(answers, model, init, opts, prior_fixed.as_deref(), accel) };
    if method == Method::Auto {
        return Err(CrowdError::Option {
            option: "method".into(),
            message: "auto chooses among the models: fit it with `aggregate`".into(),
        });
    }
    let out = match method {
        Method::MajorityVote | Method::Auto => unreachable!("handled above"),
        Method::DawidSkene => em(Model::PerWorker, Init::Votes)?,
        Method::OneCoin => em(Model::OneCoin, Init::Votes)?,
        Method::Pooled => em(Model::Pooled, Init::Votes)?,
        Method::Shrunk => {
            // Stage 1: one matrix for everyone (well determined even on sparse data);
            // stage 2: per-worker matrices with that matrix as their Dirichlet prior mean.
            let stage1 = em(Model::Pooled, Init::Votes)?;
            return shrunk_stages(answers, opts, accel, &stage1.posteriors, &stage1.pooled);
        }
    };
    Ok(from_em(answers, method, out, opts.seed, None, None))
}

/// `shrunk` from its first stage, a `pooled` fit with the same options (`auto` fits that
/// model anyway: its result is reused, the same numbers as fitting it again).
pub(crate) fn fit_shrunk_from(answers: &Answers, opts: &EmOptions, accel: bool, pooled: &Aggregation) -> Result<Aggregation> {
    check(answers, opts)?;
    shrunk_stages(answers, opts, accel, &pooled.posteriors, &pooled.pooled_matrix)
}

/// `shrunk`'s second stage: per-worker matrices with a Dirichlet prior centred on the pooled
/// matrix, its strengths by empirical Bayes.
fn shrunk_stages(answers: &Answers, opts: &EmOptions, accel: bool, stage1_posteriors: &[f64], stage1_pooled: &[f64]) -> Result<Aggregation> {
    let k = answers.n_classes();
    let prior_fixed = fixed_prior(opts, k);
    let em = |model: Model, init: Init| -> Result<EmOut> { em::run_with(answers, model, init, opts, prior_fixed.as_deref(), accel) };
    let mut center = stage1_pooled.to_vec();
    let mut strength = match opts.shrink_strength {
        Some(s) => vec![s; k],
        None => estimate_concentrations(&counts_from_posteriors(answers, stage1_posteriors), &center, k),
    };
    let mut prev: Option<EmOut> = None;
    // Empirical Bayes, refined: re-estimate centre and concentrations from the shrunk
    // model's posteriors (better than the pooled model's on heterogeneous crowds), then
    // MAP EM with them held fixed. A given strength skips this.
    let rounds = if opts.shrink_strength.is_none() { EB_ROUNDS } else { 1 };
    for round in 0..rounds {
        let last_post: &[f64] = prev.as_ref().map_or(stage1_posteriors, |o| &o.posteriors);
        if round > 0 {
            let counts = counts_from_posteriors(answers, last_post);
            center = pooled_matrix(&counts, k, opts.smoothing);
            strength = estimate_concentrations(&counts, &center, k);
        }
        let model = Model::Shrunk(center.clone(), strength.clone());
        let next = em(model.clone(), Init::Posteriors(last_post))?;
        prev = Some(if round + 1 == rounds {
            // EM finds a local optimum: also start the final fit from majority vote and
            // keep the higher MAP objective (same model, so the two compare).
            let from_mv = em(model, Init::Votes)?;
            // Only a real gain counts: two fits of one optimum differ by rounding, and that
            // must not decide (permuting items would flip the choice).
            let (a, b) = (final_objective(&from_mv), final_objective(&next));
            if a > b + 1e-9 * b.abs() {
                from_mv
            } else {
                next
            }
        } else {
            next
        });
    }
    let out = prev.expect("at least one round");
    Ok(from_em(answers, Method::Shrunk, out, opts.seed, Some(strength), Some(center)))
}

/// `method` on `answers` with over-relaxed EM (see [`em::run_em_in`]): the same model and
/// objective in fewer passes, for `auto` on large data (the candidates on the subset and the
/// winner's refit). Majority vote has no EM; `shrunk`'s EM runs are all over-relaxed.
pub(crate) fn fit_accelerated(answers: &Answers, method: Method, opts: &EmOptions) -> Result<Aggregation> {
    fit_with(answers, method, opts, true)
}

/// The class prior held fixed by `opts` (normalised), or `None` when it is learned.
pub(crate) fn fixed_prior(opts: &EmOptions, k: usize) -> Option<Vec<f64>> {
    match &opts.class_prior {
        ClassPrior::Learned => None,
        ClassPrior::Uniform => Some(vec![1.0 / k as f64; k]),
        ClassPrior::Fixed(w) => {
            // scaled by the largest first: weights of 1e308 each overflowed the sum, and every
            // posterior came out NaN (found by a hostile pass)
            let m = w.iter().cloned().fold(0.0f64, f64::max);
            let s: f64 = w.iter().map(|x| x / m).sum();
            Some(w.iter().map(|x| x / m / s).collect())
        }
    }
}

/// The result of one EM fit: hard labels and worker quality derived from it.
pub(crate) fn from_em(
    answers: &Answers,
    method: Method,
    out: EmOut,
    seed: u64,
    shrink_strength: Option<Vec<f64>>,
    shrink_center: Option<Vec<f64>>,
) -> Aggregation {
    let labels = hard_labels(answers, &out.posteriors, seed);
    let quality = quality(&out.matrices, &out.prior, answers.n_classes());
    Aggregation {
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
    }
}

/// The options and the data every method needs: at least 2 classes, valid options, answers.
pub(crate) fn check(answers: &Answers, opts: &EmOptions) -> Result<()> {
    check_options(answers.n_classes(), opts)?;
    if answers.n_answers() == 0 {
        return Err(CrowdError::Data(format!("no answers to aggregate ({} items, {} workers)", answers.n_items(), answers.n_workers())));
    }
    Ok(())
}

pub(crate) fn check_options(k: usize, o: &EmOptions) -> Result<()> {
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
