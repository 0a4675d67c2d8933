//! `Method::Auto`: choose the aggregation model from the data, without gold.
//!
//! Every candidate (majority vote, one-coin, classic Dawid-Skene, pooled, shrunk; each with a
//! learned (smoothed) and with a uniform class prior, unless the user fixed the prior: 9
//! fits) is fitted on all answers; then each is scored by how well it predicts answers it has
//! not seen:
//! for every item `i` and every answer `a` of it,
//!
//! ```text
//!   P(a) = sum_j  P(j | the item's other answers)  *  P(answer of a | true class j, a's worker)
//! ```
//!
//! where both factors use parameters refitted **without item `i`**: item `i`'s expected
//! counts (its posterior, once per answer) are taken out of the M-step's sufficient
//! statistics before the worker matrices and the class prior are computed (one exact M-step
//! without the item, other items' posteriors held fixed; the approximation is that those
//! posteriors were computed with the item in). The score is the sum of `ln P(a)` over answers:
//! leave-one-item-out cross-validation of the answer likelihood, the quantity the models are
//! fitted to, so their numbers compare. A flexible model pays for each worker whose
//! matrix it cannot estimate (a worker whose only answers are on item `i` predicts from the
//! smoothing alone), a rigid one for the structure it misses; nothing in it is tuned to a data
//! set. Majority vote is scored as the model it is the MAP labelling of: one accuracy shared by
//! all workers, errors spread evenly, uniform prior, posteriors = vote fractions.
//!
//! The scores are estimates, and a flexible model can lead a simpler one by less than their
//! noise. So the choice is the **one-standard-error rule** of cross-validated model selection
//! ([`one_se_rule`]): the best-scoring eligible candidate sets the bar, and the eligible
//! candidate with the fewest free parameters ([`n_params`]) within one standard error of it
//! (the standard error of the difference of totals, over items) is kept. On ms (10 classes,
//! 2,945 answers) `shrunk` led one-coin by 20 nats with a standard error of 60, and one-coin
//! labels 4 points better; where the flexible model's lead is real (web, dog, zencrowd-us:
//! many standard errors) it is kept.
//!
//! On large data (> [`SCORE_ANSWERS`] answers) the candidates are fitted and scored on a
//! subset of items chosen by a hash of their names (about `SCORE_ANSWERS` answers, every
//! answer of each chosen item), and the winner is refitted on all items: 9 fits of the whole
//! data would cost 10-20x one fit, and a few hundred thousand answers are enough to rank
//! the candidates (a compute budget, not a constant fitted to any data set; on a crowd where
//! workers have few answers each, the subset makes flexible models look somewhat worse than
//! they would on the whole data). The choice does not depend on item order.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::aggregate::fit::{fit_accelerated, fit_shrunk_from, fit_with};
use crate::aggregate::mstep::{class_totals, counts_from_posteriors};
use crate::aggregate::types::{Aggregation, CandidateScore, ClassPrior, EmOptions, Method, Selection};
use crate::data::Answers;
use crate::{hash_str, mix64, Result};

/// Above this many answers, candidates are compared on a hash-chosen subset of items holding
/// about this many answers (a compute budget: 9 fits of 150k answers cost about one fit of 1.4M).
pub const SCORE_ANSWERS: usize = 150_000;

/// The M-step a candidate's held-out answers are predicted with.
enum Family {
    /// One accuracy for everyone (majority vote).
    Symmetric,
    OneCoin,
    PerWorker,
    /// One matrix for everyone, `diag` extra pseudo-answers on its diagonal.
    Pooled { diag: f64 },
    /// Per-worker matrices with a Dirichlet prior: mean `center`, strength per true class.
    Shrunk { center: Vec<f64>, strength: Vec<f64> },
}

pub(crate) fn auto(a: &Answers, o: &EmOptions) -> Result<Aggregation> {
    if a.n_answers() <= SCORE_ANSWERS {
        return choose(a, o, false);
    }
    // Large data: choose on the items of a hash-chosen subset (about SCORE_ANSWERS answers,
    // every answer of each chosen item), then fit the winner on everything.
    let sub = subset(a, &scored_items(a));
    // Over-relaxed EM for the candidates too: 9 fits of the subset cost more than the refit
    // (scale case: 1.9 of 3.1 s, classic DS and pooled stopping at 100 iterations).
    let chosen = choose(&sub, o, true)?;
    let sel = chosen.selection.clone().expect("choose records its selection");
    drop(chosen);
    let best = &sel.candidates[0]; // the chosen one is listed first
    let prior = match best.class_prior.as_str() {
        "uniform" => ClassPrior::Uniform,
        "learned" => ClassPrior::Learned,
        _ => o.class_prior.clone(),
    };
    // Over-relaxed EM: the same model and objective as `fit`, in fewer passes (on the scale
    // case, classic Dawid-Skene: 29 accepted steps instead of 77, objective 3.5 nats higher).
    let mut r = fit_accelerated(a, best.method, &EmOptions { class_prior: prior, ..o.clone() })?;
    r.selection = Some(Selection {
        criterion: format!(
            "{}; candidates fitted and scored on {} of the {} items (chosen by a hash of their names), the winner refitted on all",
            sel.criterion,
            sub.n_items(),
            a.n_items()
        ),
        ..sel
    });
    Ok(r)
}

/// The answers of `items` only, and the workers who gave them (renumbered in order). Only
/// the choice comes back from the subset, never a worker's index; with every worker kept, a
/// million workers of one answer each cost each of the 9 candidates their rows (1.5 GB for
/// a 15 MB file; found by a hostile pass).
fn subset(a: &Answers, items: &[usize]) -> Answers {
    let k = a.n_classes();
    let mut offsets = Vec::with_capacity(items.len() + 1);
    offsets.push(0);
    let mut codes = Vec::new();
    for &i in items {
        codes.extend_from_slice(a.item_codes(i));
        offsets.push(codes.len());
    }
    let new = crate::data::compact_ids(a.n_workers(), codes.iter().map(|&c| c as usize / k));
    let workers = a.workers.iter().zip(&new).filter(|(_, &n)| n != u32::MAX).map(|(w, _)| w.clone()).collect();
    for c in codes.iter_mut() {
        let (w, l) = (*c as usize / k, *c as usize % k);
        *c = new[w] * k as u32 + l as u32;
    }
    Answers { classes: a.classes.clone(), items: items.iter().map(|&i| a.items[i].clone()).collect(), workers, offsets, codes }
}

/// Fit every candidate on `a` (with over-relaxed EM when `accel`), score each on `a`'s
/// answers, return the one the rule keeps.
fn choose(a: &Answers, o: &EmOptions, accel: bool) -> Result<Aggregation> {
    let k = a.n_classes();
    // The class prior is part of the model: learned (smoothed) and uniform are both fitted
    // unless the user fixed it.
    let priors: Vec<(ClassPrior, &str)> = match &o.class_prior {
        ClassPrior::Learned => vec![(ClassPrior::Learned, "learned"), (ClassPrior::Uniform, "uniform")],
        ClassPrior::Uniform => vec![(ClassPrior::Uniform, "uniform")],
        ClassPrior::Fixed(w) => vec![(ClassPrior::Fixed(w.clone()), "fixed")],
    };
    let scored: Vec<usize> = (0..a.n_items()).filter(|&i| !a.item_codes(i).is_empty()).collect();
    let n_scored: usize = a.n_answers();
    let uniform = vec![1.0 / k as f64; k];
    // The candidates, in a fixed order (exact ties go to the earlier one).
    let mut specs: Vec<(Method, &ClassPrior, &str)> = Vec::new();
    for &m in Method::ALL.iter() {
        for (prior, pname) in &priors {
            // majority vote has no class prior: one candidate
            if m == Method::MajorityVote && pname != &priors[0].1 {
                continue;
            }
            specs.push((m, prior, pname));
        }
    }
    // Fitted and scored in parallel (each fit is deterministic on its own); the choice is
    // then made in the fixed order above, so it does not depend on scheduling. `shrunk`
    // starts from the `pooled` fit with the same prior (its first stage is that fit).
    let opts_of = |prior: &ClassPrior| EmOptions { class_prior: prior.clone(), ..o.clone() };
    let mut fitted: Vec<Option<Aggregation>> = specs
        .par_iter()
        .map(|&(m, prior, _)| -> Result<Option<Aggregation>> {
            if m == Method::Shrunk {
                return Ok(None);
            }
            let om = opts_of(prior);
            fit_with(a, m, &om, accel).map(Some)
        })
        .collect::<Result<Vec<_>>>()?;
    let shrunk: Vec<(usize, Aggregation)> = specs
        .par_iter()
        .enumerate()
        .filter(|(_, s)| s.0 == Method::Shrunk)
        .map(|(i, &(_, prior, pname))| -> Result<(usize, Aggregation)> {
            let om = opts_of(prior);
            let pooled = specs.iter().position(|s| s.0 == Method::Pooled && s.2 == pname).and_then(|j| fitted[j].as_ref());
            let r = match pooled {
                Some(p) => fit_shrunk_from(a, &om, accel, p)?,
                None => fit_with(a, Method::Shrunk, &om, accel)?,
            };
            Ok((i, r))
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, r) in shrunk {
        fitted[i] = Some(r);
    }
    let fits: Vec<(Aggregation, Vec<f64>, String)> = specs
        .par_iter()
        .zip(fitted.into_par_iter())
        .map(|(&(m, prior, pname), r)| -> Result<(Aggregation, Vec<f64>, String)> {
            let om = opts_of(prior);
            let r = r.expect("every candidate fitted above");
            let held = |p: &[f64]| -> Option<Vec<f64>> {
                match prior {
                    ClassPrior::Learned => None,
                    _ => Some(p.to_vec()),
                }
            };
            let (fam, fixed_prior, pname) = match m {
                Method::MajorityVote => (Family::Symmetric, Some(uniform.clone()), "none".to_string()),
                Method::OneCoin => (Family::OneCoin, held(&r.class_prior), pname.to_string()),
                Method::DawidSkene => (Family::PerWorker, held(&r.class_prior), pname.to_string()),
                Method::Pooled => (Family::Pooled { diag: o.diag_prior }, held(&r.class_prior), pname.to_string()),
                Method::Shrunk => (
                    Family::Shrunk {
                        center: r.shrink_center.clone().unwrap_or_else(|| r.pooled_matrix.clone()),
                        strength: r.shrink_strength.clone().unwrap_or_default(),
                    },
                    held(&r.class_prior),
                    pname.to_string(),
                ),
                Method::Auto => unreachable!("not a candidate"),
            };
            let per_item = heldout_loglik(a, &fam, &r.posteriors, fixed_prior.as_deref(), &om, &scored);
            Ok((r, per_item, pname))
        })
        .collect::<Result<Vec<_>>>()?;
    let active_workers = {
        let mut seen = vec![false; a.n_workers()];
        for &c in &a.codes {
            seen[c as usize / k] = true;
        }
        seen.iter().filter(|&&x| x).count()
    };
    let cands: Vec<Cand> = fits
        .iter()
        .enumerate()
        .map(|(order, (r, per_item, pname))| Cand {
            order,
            method: r.method,
            prior: pname.clone(),
            params: n_params(r.method, pname == "learned", k, active_workers),
            // sum in item order: the same total whatever the threads did
            total: per_item.iter().sum(),
            // Majority vote has no latent classes to mislabel: always eligible (the fallback).
            rejected: if r.method == Method::MajorityVote { None } else { below_chance_class(r) },
        })
        .collect();
    let per_item: Vec<&[f64]> = fits.iter().map(|f| f.1.as_slice()).collect();
    let pick = one_se_rule(&cands, &per_item);
    let mut r = fits.into_iter().nth(pick.chosen).map(|f| f.0).expect("the chosen index is a candidate");
    // the chosen first, then the other eligible ones best first, then the fixed order
    let mut idx: Vec<usize> = (0..cands.len()).collect();
    idx.sort_by(|&x, &y| {
        let (cx, cy) = (&cands[x], &cands[y]);
        (x != pick.chosen)
            .cmp(&(y != pick.chosen))
            .then(cx.rejected.is_some().cmp(&cy.rejected.is_some()))
            .then(cy.total.partial_cmp(&cx.total).unwrap_or(std::cmp::Ordering::Equal))
            .then(cx.order.cmp(&cy.order))
    });
    let best_total = cands[pick.best].total;
    let candidates = idx
        .iter()
        .map(|&i| {
            let c = &cands[i];
            CandidateScore {
                method: c.method,
                class_prior: c.prior.clone(),
                heldout_loglik: c.total,
                per_answer: if n_scored > 0 { c.total / n_scored as f64 } else { 0.0 },
                parameters: c.params,
                vs_best: c.total - best_total,
                se_vs_best: pick.se[i],
                rejected: c.rejected.clone(),
            }
        })
        .collect();
    r.selection = Some(Selection {
        chosen: r.method,
        best: Some(cands[pick.best].method),
        best_class_prior: cands[pick.best].prior.clone(),
        criterion: "leave-one-item-out predictive log-likelihood of the answers (nats); the model with the fewest \
                    parameters within one standard error of the best"
            .into(),
        scored_answers: n_scored,
        scored_items: scored.len(),
        candidates,
    });
    Ok(r)
}

/// A scored candidate, in the fixed order of `choose`.
pub(crate) struct Cand {
    pub(crate) order: usize,
    pub(crate) method: Method,
    pub(crate) prior: String,
    pub(crate) params: usize,
    pub(crate) total: f64,
    pub(crate) rejected: Option<String>,
}

/// Which candidate the one-standard-error rule keeps, which scored best, and each
/// candidate's standard error of its difference from the best.
pub(crate) struct Pick {
    pub(crate) chosen: usize,
    pub(crate) best: usize,
    pub(crate) se: Vec<f64>,
}

/// Free parameters of a candidate: what it must estimate from the answers (`k - 1` more with
/// a learned prior). `shrunk` counts as classic Dawid-Skene: it has the same free per-worker
/// matrices, under a prior whose centre and strengths are estimated from all workers
/// together. Counting those on top would let classic Dawid-Skene displace `shrunk` whenever it
/// comes within one standard error, although `shrunk` is the more constrained of the two;
/// counting `shrunk`'s effective (ridge-style) degrees of freedom was tried and dropped: they
/// move with each fit's estimated strengths, so two fits of it ranked each other by noise.
pub(crate) fn n_params(m: Method, learned_prior: bool, k: usize, workers: usize) -> usize {
    let cells = k * k.saturating_sub(1);
    let base = match m {
        Method::MajorityVote => 1,
        Method::OneCoin => workers,
        Method::Pooled => cells,
        Method::DawidSkene | Method::Shrunk => workers * cells,
        Method::Auto => 0,
    };
    base + if learned_prior && m != Method::MajorityVote { k.saturating_sub(1) } else { 0 }
}

/// The one-standard-error rule of cross-validated model choice (Breiman et al. 1984; Hastie,
/// Tibshirani & Friedman, *Elements of Statistical Learning*, 7.10): of the eligible
/// candidates whose held-out score is within one standard error of the best one's, keep the
/// one with the fewest parameters (ties: the fixed order). The standard error is that of the
/// difference of the two totals, from the per-item differences (items are the folds):
/// `sqrt(n * var_i(best_i - c_i))`. A flexible model must beat a simpler one by more than the
/// noise of the comparison to be kept; on ms (10 classes, 2,945 answers) shrunk led one-coin by
/// 2.3 nats of 4,190, well inside the noise. The factor is the textbook one, not fitted.
pub(crate) fn one_se_rule(cands: &[Cand], per_item: &[&[f64]]) -> Pick {
    let eligible: Vec<usize> = (0..cands.len()).filter(|&i| cands[i].rejected.is_none()).collect();
    // a later candidate must beat an earlier one by more than rounding to be the best
    let mut best = eligible[0];
    for &i in &eligible[1..] {
        if cands[i].total > cands[best].total + 1e-9 * cands[best].total.abs() {
            best = i;
        }
    }
    let se = se_vs(best, per_item);
    // Leave the best only for a strictly simpler candidate within one SE; among equally
    // simple ones the higher score wins, then the fixed order.
    let mut chosen = best;
    for &i in &eligible {
        let (c, cur) = (&cands[i], &cands[chosen]);
        // the standard error never below rounding: two models equal to 1e-14 nats (an
        // accurate crowd, where priors barely matter) are a tie, not a 2-SE difference
        let within = c.total >= cands[best].total - se[i].max(1e-9 * cands[best].total.abs());
        let simpler = c.params < cur.params
            || (c.params == cur.params && (c.total > cur.total || (c.total == cur.total && c.order < cur.order)));
        if within && simpler && c.params < cands[best].params {
            chosen = i;
        }
    }
    if chosen != best && cands[chosen].total >= cands[best].total {
        // within the rounding slack above and at least as good: it is the best
        return Pick { chosen, best: chosen, se: se_vs(chosen, per_item) };
    }
    Pick { chosen, best, se }
}

/// Each candidate's standard error of its total's difference from `best`'s, over items.
fn se_vs(best: usize, per_item: &[&[f64]]) -> Vec<f64> {
    (0..per_item.len())
        .map(|i| {
            let (b, c) = (per_item[best], per_item[i]);
            let n = b.len();
            if i == best || n < 2 {
                return 0.0;
            }
            let d: Vec<f64> = b.iter().zip(c).map(|(x, y)| x - y).collect();
            let mean = d.iter().sum::<f64>() / n as f64;
            let var = d.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
            (n as f64 * var).sqrt()
        })
        .collect()
}

/// Why a fitted model's latent classes cannot be read as the answer classes, if they cannot.
///
/// A latent-class model (Dawid-Skene and its relatives) only says which items go together; it
/// names its class `t` after answer `t` on the assumption that, on items of class `t`, the crowd
/// answers `t` at least as often as a random answer would (`1/k`). When a fit breaks that (on
/// cf-amt, a "class" of items the crowd splits on, answered as itself 12 % of the time with 5
/// classes), the class was found from something else the answers share, and the likelihood that
/// rewards it does not reward right labels. The bar is chance, not a tuned constant; the
/// stricter "more often than any other single answer" would reject the study's own crowd,
/// which answers true `disgust` as `neutral` twice as often as `disgust`.
pub fn below_chance_class(r: &Aggregation) -> Option<String> {
    let k = r.classes.len();
    let m = &r.pooled_matrix; // [answer][true]
    if k < 2 || m.len() != k * k {
        return None;
    }
    let chance = 1.0 / k as f64;
    for t in 0..k {
        let diag = m[t * k + t];
        if diag < chance {
            let (j, top) = (0..k).map(|j| (j, m[j * k + t])).fold((t, diag), |b, x| if x.1 > b.1 { x } else { b });
            return Some(format!(
                "class `{}` is answered `{}` in {diag:.2} of its answers, below chance ({chance:.2}); most often `{}` ({top:.2})",
                r.classes[t], r.classes[t], r.classes[j]
            ));
        }
    }
    None
}

/// Items whose answers are scored: all, or about `SCORE_ANSWERS` answers' worth chosen by a
/// hash of the item's name.
fn scored_items(a: &Answers) -> Vec<usize> {
    let n = a.n_answers();
    let all: Vec<usize> = (0..a.n_items()).filter(|&i| !a.item_codes(i).is_empty()).collect();
    if n <= SCORE_ANSWERS {
        return all;
    }
    let keep = SCORE_ANSWERS as f64 / n as f64;
    let cut = (keep * u64::MAX as f64) as u64;
    all.into_iter().filter(|&i| mix64(hash_str(&a.items[i]) ^ 0x5e1ec7) <= cut).collect()
}

/// For each of `items`, the sum over its answers of ln P(answer | the item's other answers),
/// with the parameters of `fam` re-estimated without the item (see the module docs).
fn heldout_loglik(a: &Answers, fam: &Family, q: &[f64], prior_fixed: Option<&[f64]>, o: &EmOptions, items: &[usize]) -> Vec<f64> {
    let k = a.n_classes();
    let nw = a.n_workers();
    let alpha = o.smoothing;
    let beta = o.prior_smoothing;
    let c = counts_from_posteriors(a, q); // [(w * k + l) * k + j]
    let class_tot = class_totals(q, k);
    let n_items = a.n_items() as f64;
    // column totals per worker, right answers per worker, pooled counts
    let mut col = vec![0.0; nw * k];
    let mut right = vec![0.0; nw];
    let mut total = vec![0.0; nw];
    let mut pooled = vec![0.0; k * k];
    for w in 0..nw {
        for l in 0..k {
            for j in 0..k {
                let x = c[(w * k + l) * k + j];
                col[w * k + j] += x;
                total[w] += x;
                pooled[l * k + j] += x;
                if l == j {
                    right[w] += x;
                }
            }
        }
    }
    let mut pooled_col = vec![0.0; k];
    for l in 0..k {
        for j in 0..k {
            pooled_col[j] += pooled[l * k + j];
        }
    }
    let (all_right, all_total): (f64, f64) = (right.iter().sum(), total.iter().sum());
    let kf = k as f64;
    let score_item = |i: usize| -> f64 {
        let codes = a.item_codes(i);
        let n = codes.len();
        let qi = &q[i * k..(i + 1) * k];
        // prior without the item
        let prior: Vec<f64> = match prior_fixed {
            Some(p) => p.to_vec(),
            None => {
                let den = n_items - 1.0 + kf * beta;
                if den <= 0.0 {
                    vec![1.0 / kf; k]
                } else {
                    (0..k).map(|j| ((class_tot[j] - qi[j]).max(0.0) + beta) / den).collect()
                }
            }
        };
        // the item's own answer counts (what its posterior added to the statistics); a long
        // item's counted once into maps (a scan per answer was quadratic: one item with
        // 100,000 answers took 160 s), a short one's by scanning (the same numbers)
        let mut theta = vec![0.0; n * k];
        let item_right: f64 = codes.iter().map(|&cd| qi[cd as usize % k]).sum();
        let tallies = (n > 32).then(|| {
            let (mut by_code, mut by_worker) = (HashMap::<u32, f64>::new(), HashMap::<usize, (f64, f64)>::new());
            let mut by_label = vec![0.0f64; k];
            for &x in codes {
                *by_code.entry(x).or_default() += 1.0;
                let e = by_worker.entry(x as usize / k).or_default();
                e.0 += 1.0;
                e.1 += qi[x as usize % k];
                by_label[x as usize % k] += 1.0;
            }
            (by_code, by_worker, by_label)
        });
        for (t, &code) in codes.iter().enumerate() {
            let (w, l) = (code as usize / k, code as usize % k);
            let (same_code, same_worker) = match &tallies {
                Some((bc, bw, _)) => (bc[&code], bw[&w].0),
                None => (
                    codes.iter().filter(|&&x| x == code).count() as f64,
                    codes.iter().filter(|&&x| x as usize / k == w).count() as f64,
                ),
            };
            let row = &mut theta[t * k..(t + 1) * k];
            match fam {
                Family::PerWorker | Family::Shrunk { .. } => {
                    for j in 0..k {
                        let (mut num, mut den) = (
                            (c[code as usize * k + j] - same_code * qi[j]).max(0.0) + alpha,
                            (col[w * k + j] - same_worker * qi[j]).max(0.0) + kf * alpha,
                        );
                        if let Family::Shrunk { center, strength } = fam {
                            let s = strength.get(j).copied().unwrap_or(0.0);
                            num += s * center[l * k + j];
                            den += s;
                        }
                        row[j] = num / den;
                    }
                }
                Family::Pooled { diag } => {
                    let same_label = match &tallies {
                        Some((_, _, bl)) => bl[l],
                        None => codes.iter().filter(|&&x| x as usize % k == l).count() as f64,
                    };
                    for j in 0..k {
                        let d = if l == j { *diag } else { 0.0 };
                        let num = (pooled[l * k + j] - same_label * qi[j]).max(0.0) + alpha + d;
                        let den = (pooled_col[j] - n as f64 * qi[j]).max(0.0) + kf * alpha + diag;
                        row[j] = num / den;
                    }
                }
                Family::OneCoin | Family::Symmetric => {
                    let (r, tot) = match fam {
                        Family::OneCoin => {
                            let own: f64 = match &tallies {
                                Some((_, bw, _)) => bw[&w].1,
                                None => codes.iter().filter(|&&x| x as usize / k == w).map(|&x| qi[x as usize % k]).sum(),
                            };
                            (right[w] - own, total[w] - same_worker)
                        }
                        _ => (all_right - item_right, all_total - n as f64),
                    };
                    let p = (r.max(0.0) + alpha) / (tot.max(0.0) + 2.0 * alpha);
                    let off = (1.0 - p) / (kf - 1.0);
                    for j in 0..k {
                        row[j] = if l == j { p } else { off };
                    }
                }
            }
        }
        // Short items (nearly all): in probabilities, with no ln per class. With
        // P_j = prior_j prod_t theta_tj, P(class j | the other answers) is
        // (P_j / theta_tj) / D_t with D_t = sum_j P_j / theta_tj, so the held-out answer's
        // probability is sum_j P_j / D_t: one ln per item instead of one per answer and class
        // (the log form below, for items long or small enough to underflow, is the same sum).
        if n <= 32 && theta.iter().all(|&x| x >= 1e-30) && prior.iter().all(|&x| x >= 1e-30) {
            let mut p = prior.clone();
            for t in 0..n {
                for j in 0..k {
                    p[j] *= theta[t * k + j];
                }
            }
            let s: f64 = p.iter().sum();
            let mut prod = 1.0f64;
            for t in 0..n {
                let d: f64 = (0..k).map(|j| p[j] / theta[t * k + j]).sum();
                prod *= s / d;
            }
            if s > 1e-280 && prod > 1e-280 && prod.is_finite() {
                return prod.ln();
            }
        }
        // each ln once (the same values as taking them twice)
        let ln_theta: Vec<f64> = theta.iter().map(|x| x.max(1e-300).ln()).collect();
        let mut base: Vec<f64> = prior.iter().map(|p| p.max(1e-300).ln()).collect();
        for t in 0..n {
            for j in 0..k {
                base[j] += ln_theta[t * k + j];
            }
        }
        let mut ll = 0.0;
        let mut s = vec![0.0; k];
        for t in 0..n {
            let th = &theta[t * k..(t + 1) * k];
            for j in 0..k {
                s[j] = base[j] - ln_theta[t * k + j];
            }
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let (mut z, mut pred) = (0.0, 0.0);
            for j in 0..k {
                let e = (s[j] - m).exp();
                z += e;
                pred += e * th[j];
            }
            ll += (pred / z).max(1e-300).ln();
        }
        ll
    };
    if a.n_answers() < 50_000 {
        items.iter().map(|&i| score_item(i)).collect()
    } else {
        // each item's score is computed alone: the same numbers whatever the threads did
        items.par_iter().map(|&i| score_item(i)).collect()
    }
}
