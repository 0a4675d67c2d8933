//! Property tests of the aggregation methods.
use pipeline_crowd::aggregate::{accuracy, aggregate, ClassPrior, EmOptions, Method};
use pipeline_crowd::sim::{simulate, SimConfig};
use pipeline_crowd::Answers;
use proptest::prelude::*;

fn classes(k: usize) -> Vec<String> {
    (0..k).map(|c| format!("c{c}")).collect()
}

/// Random answers: items x (1..=5 answers) from `nw` workers, `k` classes.
fn answers_strategy() -> impl Strategy<Value = (usize, usize, usize, Vec<(usize, usize, usize)>)> {
    (2usize..6, 2usize..8, 3usize..40).prop_flat_map(|(k, nw, ni)| {
        let triple = (0..ni, 0..nw, 0..k);
        (Just(k), Just(nw), Just(ni), proptest::collection::vec(triple, 1..160))
    })
}

fn all_methods() -> Vec<Method> {
    Method::ALL.to_vec()
}

fn opts_variants() -> Vec<EmOptions> {
    vec![
        EmOptions::default(),
        EmOptions { class_prior: ClassPrior::Learned, diag_prior: 0.0, shrink_strength: Some(3.0), ..EmOptions::default() },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn posteriors_sum_to_one((k, nw, ni, t) in answers_strategy()) {
        let a = Answers::from_triples(ni, nw, classes(k), &t).unwrap();
        for o in opts_variants() {
            for m in all_methods() {
                let r = aggregate(&a, m, &o).unwrap();
                prop_assert_eq!(r.posteriors.len(), ni * k);
                for i in 0..ni {
                    let s: f64 = r.posterior(i).iter().sum();
                    prop_assert!((s - 1.0).abs() < 1e-9, "{m}: item {i} sums to {s}");
                    prop_assert!(r.posterior(i).iter().all(|p| *p >= 0.0));
                }
                let ps: f64 = r.class_prior.iter().sum();
                prop_assert!((ps - 1.0).abs() < 1e-9);
                for w in 0..nw {
                    let mm = r.worker_matrix(w);
                    for j in 0..k {
                        let col: f64 = (0..k).map(|l| mm[l * k + j]).sum();
                        prop_assert!((col - 1.0).abs() < 1e-9, "{m}: worker {w} column {j} sums to {col}");
                    }
                }
            }
        }
    }

    #[test]
    fn em_objective_never_decreases((k, nw, ni, t) in answers_strategy()) {
        let a = Answers::from_triples(ni, nw, classes(k), &t).unwrap();
        for o in opts_variants() {
            for m in [Method::DawidSkene, Method::OneCoin, Method::Pooled, Method::Shrunk] {
                let r = aggregate(&a, m, &EmOptions { tol: 0.0, max_iter: 30, ..o.clone() }).unwrap();
                for w in r.objective.windows(2) {
                    // f32 parameters in the pass: allow rounding, nothing more
                    prop_assert!(w[1] >= w[0] - 1e-5 * w[0].abs().max(1.0), "{m}: {} -> {}", w[0], w[1]);
                }
            }
        }
    }

    #[test]
    fn permuting_items_and_workers_permutes_the_output(
        (k, nw, ni, t) in answers_strategy(),
        seed in any::<u64>(),
    ) {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        // One answer per worker and item (what the amt stage's dedupe leaves). With dozens of
        // repeats of one worker on one item, a perfectly balanced item is a knife edge where
        // the last bit of rounding picks the side, and summation order is rounding.
        let mut seen = std::collections::HashSet::new();
        let t: Vec<(usize, usize, usize)> = t.into_iter().filter(|&(i, w, _)| seen.insert((i, w))).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut pi: Vec<usize> = (0..ni).collect();
        pi.shuffle(&mut rng);
        let mut pw: Vec<usize> = (0..nw).collect();
        pw.shuffle(&mut rng);
        let a = Answers::from_triples(ni, nw, classes(k), &t).unwrap();
        // same answers under new ids; names travel with the items and workers
        let t2: Vec<(usize, usize, usize)> = t.iter().map(|&(i, w, l)| (pi[i], pw[w], l)).collect();
        let mut b = Answers::from_triples(ni, nw, classes(k), &t2).unwrap();
        for i in 0..ni { b.items[pi[i]] = a.items[i].clone(); }
        for w in 0..nw { b.workers[pw[w]] = a.workers[w].clone(); }
        for m in all_methods() {
            // tol > 0: with tol = 0 EM stops when the objective repeats to the last bit,
            // which rounding decides; on these tiny crowds the parameters can still drift
            // along a flat direction then, so a reordering would stop at another point.
            let o = EmOptions { tol: 1e-12, max_iter: 20, ..EmOptions::default() };
            let ra = aggregate(&a, m, &o).unwrap();
            let rb = aggregate(&b, m, &o).unwrap();
            for i in 0..ni {
                for j in 0..k {
                    let (x, y) = (ra.posterior(i)[j], rb.posterior(pi[i])[j]);
                    prop_assert!((x - y).abs() < 1e-4, "{m}: item {i} class {j}: {x} vs {y}");
                }
                // hard labels agree unless the posterior is a near-tie
                let p = ra.posterior(i);
                let mut s = p.to_vec();
                s.sort_by(|x, y| y.partial_cmp(x).unwrap());
                if s[0] - s[1] > 1e-3 {
                    prop_assert_eq!(ra.labels[i], rb.labels[pi[i]]);
                }
            }
            for w in 0..nw {
                for (x, y) in ra.worker_matrix(w).iter().zip(rb.worker_matrix(pw[w])) {
                    prop_assert!((x - y).abs() < 1e-4, "{m}: worker {w}");
                }
            }
        }
    }

    #[test]
    fn perfect_workers_give_the_truth(k in 2usize..6, ni in 60usize..120, nw in 2usize..6, per in 2usize..4, seed in any::<u64>()) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let truth: Vec<usize> = (0..ni).map(|_| rng.gen_range(0..k)).collect();
        let mut t = Vec::new();
        for (i, &c) in truth.iter().enumerate() {
            // at least two answers per item (with one, nothing tells a worker's errors apart)
            // and enough items per worker: on a handful, classic DS has better-scoring
            // solutions that merge classes (its likelihood is not identifiable there)
            for r in 0..per.min(nw) {
                t.push((i, (i + r) % nw, c));
            }
        }
        let a = Answers::from_triples(ni, nw, classes(k), &t).unwrap();
        let gold: Vec<Option<usize>> = truth.iter().map(|&c| Some(c)).collect();
        for m in all_methods() {
            let r = aggregate(&a, m, &EmOptions::default()).unwrap();
            prop_assert_eq!(accuracy(&r.labels, &gold), 1.0, "{}", m);
        }
    }
}

#[test]
fn shrunk_beats_majority_vote_on_sparse_round2_simulation() {
    // The sparse case on a few seeds: per-worker DS overfits, shrinkage does not.
    let (mut mv, mut ds, mut sh) = (0.0, 0.0, 0.0);
    let seeds = 4;
    for s in 0..seeds {
        let d = simulate(&SimConfig::sparse_round2(100 + s));
        let a = Answers::from_triples(700, d.n_workers, classes(7), &d.answers).unwrap();
        let gold: Vec<Option<usize>> = d.truth.iter().map(|&c| Some(c)).collect();
        // the study's balanced design: a uniform prior (a learned one is another question)
        let o = EmOptions { class_prior: ClassPrior::Uniform, ..EmOptions::default() };
        mv += accuracy(&aggregate(&a, Method::MajorityVote, &o).unwrap().labels, &gold);
        ds += accuracy(&aggregate(&a, Method::DawidSkene, &o).unwrap().labels, &gold);
        sh += accuracy(&aggregate(&a, Method::Shrunk, &o).unwrap().labels, &gold);
    }
    let n = seeds as f64;
    assert!(sh / n > mv / n + 0.02, "shrunk {} vs mv {}", sh / n, mv / n);
    assert!(sh / n > ds / n, "shrunk {} vs ds {}", sh / n, ds / n);
}

#[test]
fn spammers_are_detected() {
    let cfg = SimConfig {
        n_items: 600,
        n_workers: 12,
        worker_concentration: Some(50.0),
        constant_spammers: vec![3],
        random_clickers: 1,
        answers_per_item: 4,
        ..SimConfig::sparse_round2(5)
    };
    let d = simulate(&cfg);
    let a = Answers::from_triples(600, d.n_workers, classes(7), &d.answers).unwrap();
    let r = aggregate(&a, Method::Shrunk, &EmOptions::default()).unwrap();
    let sp = pipeline_crowd::detect_spammers(&a, &r, 20);
    let ids: Vec<usize> = sp.iter().map(|s| s.worker).collect();
    assert!(sp.iter().any(|s| s.worker == 12 && s.kind == pipeline_crowd::SpamKind::SameAnswer { label: 3 }), "{sp:?}");
    assert!(ids.contains(&13), "random clicker not found: {sp:?}");
    assert!(ids.iter().all(|&w| w >= 12), "honest workers flagged: {sp:?}");
    // and the spammers get the lowest quality scores
    let worst = (0..d.n_workers).min_by(|&x, &y| r.worker_quality[x].partial_cmp(&r.worker_quality[y]).unwrap()).unwrap();
    assert!(worst >= 12);
}
