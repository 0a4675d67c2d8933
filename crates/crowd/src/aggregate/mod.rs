//! Aggregation methods: majority vote, Dawid-Skene (classic, one-coin, pooled, shrunk), and
//! `auto`, which chooses among them ([`crate::select`]).
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
//!
//! Layout: [`types`] (methods, options, results), [`fit`] (one model), [`em`] (the EM loop and
//! its kernel), [`mstep`] (sufficient statistics and M-steps), [`prior`] (the shrunk model's
//! empirical-Bayes strengths). `select` builds on `fit`, and this module on both.

pub(crate) mod em;
pub(crate) mod fit;
pub(crate) mod logprod;
pub(crate) mod mstep;
pub(crate) mod prior;
pub(crate) mod types;

pub use fit::hard_labels;
pub use mstep::soft_majority;
pub use types::{Aggregation, CandidateScore, ClassPrior, EmOptions, Method, Selection};

use crate::data::Answers;
use crate::{CrowdError, Result};

use em::Init;
use fit::check_options;
use mstep::Model;

/// Most confusion cells (workers x classes^2) a fit takes: every method's result holds one
/// matrix per worker, and `auto` fits nine (found by a hostile pass: 64 classes and 20,000
/// workers of three answers each, a 1 MB file, grew to 24 GB). 2,048 workers at 64 classes,
/// 171,000 at 7, two million at 2.
pub const MAX_WORKER_CELLS: u64 = 1 << 23;

/// Run `method` on `answers`.
pub fn aggregate(answers: &Answers, method: Method, opts: &EmOptions) -> Result<Aggregation> {
    let (w, k) = (answers.n_workers() as u64, answers.n_classes() as u64);
    if w * k * k > MAX_WORKER_CELLS {
        return Err(CrowdError::Data(format!(
            "{w} workers x {k} classes: {} confusion cells, more than the {MAX_WORKER_CELLS} a fit takes (each worker has a {k} x {k} matrix); merge classes, or aggregate the answers in parts",
            w * k * k
        )));
    }
    if method == Method::Auto {
        fit::check(answers, opts)?;
        return crate::select::auto(answers, opts);
    }
    fit::fit(answers, method, opts)
}

/// `method` (one of the single-EM models: dawid-skene, one-coin, pooled) with EM started
/// from `init` posteriors (`k` per item) instead of majority vote.
pub fn aggregate_from(answers: &Answers, method: Method, opts: &EmOptions, init: &[f64]) -> Result<Aggregation> {
    let k = answers.n_classes();
    check_options(k, opts)?;
    if answers.n_answers() == 0 || init.len() != answers.n_items() * k {
        return Err(CrowdError::Data("no answers, or init of the wrong size".into()));
    }
    let prior_fixed = fit::fixed_prior(opts, k);
    let model = match method {
        Method::DawidSkene => Model::PerWorker,
        Method::OneCoin => Model::OneCoin,
        Method::Pooled => Model::Pooled,
        _ => return aggregate(answers, method, opts),
    };
    let init = Init::Posteriors(init);
    let out = em::run(answers, model, init, opts, prior_fixed.as_deref())?;
    Ok(fit::from_em(answers, method, out, opts.seed, None, None))
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
    use super::em::{final_objective, run_em};
    use super::*;

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
        // weights whose sum overflows (each finite) are the same prior: every posterior was NaN
        for m in [Method::DawidSkene, Method::Auto, Method::Shrunk] {
            let huge = EmOptions { class_prior: ClassPrior::Fixed(vec![1e308, 1e308]), ..EmOptions::default() };
            let r = aggregate(&a, m, &huge).unwrap();
            assert_eq!(r.class_prior, vec![0.5, 0.5], "{m}");
            assert!(r.posteriors.iter().all(|p| p.is_finite()), "{m}");
        }
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
        // the chosen first, then eligible best first, then the others; the chosen is eligible
        assert!(s.candidates[0].rejected.is_none());
        let rest = &s.candidates[1..];
        assert!(rest.windows(2).all(|w| {
            (w[0].rejected.is_none() && w[1].rejected.is_some())
                || (w[0].rejected.is_some() == w[1].rejected.is_some() && w[0].heldout_loglik >= w[1].heldout_loglik)
        }));
        assert_eq!(s.scored_answers, a.n_answers());
        // one-standard-error rule: the chosen is within one SE of the best, and no eligible
        // candidate within one SE has fewer parameters
        let c = &s.candidates[0];
        assert!(c.vs_best <= 0.0 && -c.vs_best <= c.se_vs_best + 1e-9, "{c:?}");
        let best = s.candidates.iter().find(|x| x.vs_best == 0.0 && x.rejected.is_none()).unwrap();
        assert_eq!(Some(best.method), s.best);
        for x in s.candidates.iter().filter(|x| x.rejected.is_none() && -x.vs_best <= x.se_vs_best) {
            assert!(x.parameters >= c.parameters, "{x:?} is within one SE and simpler than {c:?}");
        }
        // classic DS never displaces shrunk for simplicity (on this crowd shrunk scores best
        // and DS, 20 nats behind within one SE, labels 13 points worse)
        assert!(!(s.best == Some(Method::Shrunk) && s.chosen == Method::DawidSkene), "{:?}", s.candidates);
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
    fn a_flexible_model_must_beat_a_simpler_one_by_more_than_one_standard_error() {
        use crate::select::n_params;
        // parameters: majority vote < pooled < one-coin (many workers) < dawid-skene = shrunk
        let (k, w) = (3, 40);
        assert_eq!(n_params(Method::MajorityVote, true, k, w), 1);
        assert_eq!(n_params(Method::Pooled, false, k, w), 6);
        assert_eq!(n_params(Method::OneCoin, true, k, w), 42);
        assert_eq!(n_params(Method::DawidSkene, false, k, w), 240);
        assert_eq!(n_params(Method::Shrunk, false, k, w), n_params(Method::DawidSkene, false, k, w));
        // the rule on its own: per-item scores of a simple and a flexible candidate
        use crate::select::{one_se_rule, Cand};
        let cand = |order, method, params, items: &[f64], rejected: Option<&str>| Cand {
            order,
            method,
            prior: "uniform".into(),
            params,
            total: items.iter().sum(),
            rejected: rejected.map(String::from),
        };
        let simple: Vec<f64> = (0..100).map(|i| -1.0 - 0.3 * ((i % 7) as f64)).collect();
        // leads by 1 nat in all, per-item differences +-0.5: SE 5, so not enough
        let close: Vec<f64> = simple.iter().enumerate().map(|(i, x)| x + 0.01 + if i % 2 == 0 { 0.5 } else { -0.5 }).collect();
        // leads by 30 nats with the same noise: kept
        let far: Vec<f64> = close.iter().map(|x| x + 0.29).collect();
        let cs = [cand(0, Method::MajorityVote, 1, &simple, None), cand(1, Method::DawidSkene, 240, &close, None)];
        let p = one_se_rule(&cs, &[&simple, &close]);
        assert_eq!((p.best, p.chosen), (1, 0));
        assert!((p.se[0] - 5.0).abs() < 0.1, "{:?}", p.se);
        let cs = [cand(0, Method::MajorityVote, 1, &simple, None), cand(1, Method::DawidSkene, 240, &far, None)];
        assert_eq!(one_se_rule(&cs, &[&simple, &far]).chosen, 1);
        // equal parameters: the better score, not the earlier one
        let cs = [cand(0, Method::OneCoin, 42, &simple, None), cand(1, Method::Pooled, 42, &close, None)];
        let p = one_se_rule(&cs, &[&simple, &close]);
        assert_eq!((p.best, p.chosen), (1, 1));
        // a simpler one inside the rounding slack of the best, but scoring higher, is the best
        let hair: Vec<f64> = simple.iter().map(|x| x + 1e-12).collect();
        let cs = [cand(0, Method::DawidSkene, 240, &simple, None), cand(1, Method::MajorityVote, 1, &hair, None)];
        let p = one_se_rule(&cs, &[&simple, &hair]);
        assert_eq!((p.best, p.chosen), (1, 1));
        assert_eq!(p.se[1], 0.0);
        // found by a hostile pass: a flexible model ahead by rounding alone (4 items of 8),
        // differences of rounding size (SE ~1e-14), was "2 SE" better; now a tie: the simpler
        let small: Vec<f64> = (0..8).map(|i| -0.01 - 0.001 * i as f64).collect();
        let pooled_l: Vec<f64> = small.iter().enumerate().map(|(i, x)| x + if i % 2 == 0 { 4e-17 } else { 0.0 }).collect();
        let cs = [cand(0, Method::Pooled, 99, &pooled_l, None), cand(1, Method::Pooled, 90, &small, None)];
        let p = one_se_rule(&cs, &[&pooled_l, &small]);
        assert!(p.se[1] > 0.0 && cs[0].total - cs[1].total > 2.0 * p.se[1], "{:?}", p.se);
        assert_eq!(p.chosen, 1, "the simpler of two models tied to rounding");
        // a not-eligible candidate is never kept, however simple
        let cs = [cand(0, Method::Pooled, 1, &simple, Some("below chance")), cand(1, Method::DawidSkene, 240, &close, None)];
        assert_eq!(one_se_rule(&cs, &[&simple, &close]).chosen, 1);
    }

    #[test]
    fn a_model_with_a_class_answered_as_itself_below_chance_is_not_eligible() {
        let t: Vec<(usize, usize, usize)> = (0..40).flat_map(|i| [(i, 0, i % 2), (i, 1, i % 2)]).collect();
        let a = Answers::from_triples(40, 2, vec!["a".into(), "b".into()], &t).unwrap();
        let mut r = aggregate(&a, Method::Pooled, &EmOptions::default()).unwrap();
        assert_eq!(crate::select::below_chance_class(&r), None, "{:?}", r.pooled_matrix);
        // [answer][true]: on items of class b the crowd answers b in 0.4 of its answers (chance 0.5)
        r.pooled_matrix = vec![0.9, 0.6, 0.1, 0.4];
        let why = crate::select::below_chance_class(&r).unwrap();
        assert!(why.contains("class `b` is answered `b` in 0.40 of its answers, below chance (0.50); most often `a` (0.60)"), "{why}");
        // at chance is not a violation
        r.pooled_matrix = vec![0.9, 0.5, 0.1, 0.5];
        assert_eq!(crate::select::below_chance_class(&r), None);
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
