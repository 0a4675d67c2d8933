//! Measurement driver for `bench/aggregate` (not part of the product API).
//!
//! crowd-bench eval LABELS.csv GOLD.csv [METHOD...]      crowd-kit CSV + task,label gold
//! crowd-bench amt BATCH.csv [METHOD...]                  gold = `results/<class>/` in Input.image_url
//! crowd-bench sparse SEEDS [METHOD...]                   700x3, 30 workers, round-2 matrix
//! crowd-bench gen-sparse SEED DIR                        write labels.csv/gold.csv of that simulation
//! crowd-bench gen-scale DIR                              write the scale case as labels.csv
//! crowd-bench scale [ITEMS WORKERS ITERS]               time EM (shrunk) on the scale case
//! Env: CROWD_PRIOR=learned|uniform, CROWD_PRIOR_SMOOTHING=<b>, CROWD_SHRINK=<strength>, CROWD_DIAG=<d>.
use std::time::Instant;

use pipeline_crowd::aggregate::accuracy;
use pipeline_crowd::sim::{simulate, SimConfig};
use pipeline_crowd::*;

fn opts() -> EmOptions {
    let mut o = EmOptions::default();
    if let Ok(p) = std::env::var("CROWD_PRIOR") {
        o.class_prior = if p == "uniform" { ClassPrior::Uniform } else { ClassPrior::Learned };
    }
    if let Ok(s) = std::env::var("CROWD_SHRINK") {
        o.shrink_strength = if s == "auto" { None } else { Some(s.parse().expect("CROWD_SHRINK")) };
    }
    if let Ok(s) = std::env::var("CROWD_PRIOR_SMOOTHING") {
        o.prior_smoothing = s.parse().expect("CROWD_PRIOR_SMOOTHING");
    }
    if let Ok(s) = std::env::var("CROWD_SMOOTHING") {
        o.smoothing = s.parse().expect("CROWD_SMOOTHING");
    }
    if let Ok(s) = std::env::var("CROWD_TOL") {
        o.tol = s.parse().expect("CROWD_TOL");
    }
    if let Ok(s) = std::env::var("CROWD_DIAG") {
        o.diag_prior = s.parse().expect("CROWD_DIAG");
    }
    o
}

fn methods(args: &[String]) -> Vec<Method> {
    if args.is_empty() {
        let mut v = Method::ALL.to_vec();
        v.push(Method::Auto);
        v
    } else {
        args.iter().map(|m| m.parse().expect("method")).collect()
    }
}

fn report(name: &str, a: &Answers, gold: &[Option<usize>], ms: &[Method]) {
    if std::env::var("CROWD_STARTS").is_ok() {
        let o = opts();
        let fits: Vec<Aggregation> = Method::ALL.iter().map(|&m| aggregate(a, m, &o).unwrap()).collect();
        for &m in &[Method::DawidSkene, Method::OneCoin, Method::Pooled] {
            for f in &fits {
                let r = pipeline_crowd::aggregate::aggregate_from(a, m, &o, &f.posteriors).unwrap();
                println!("{name}\t{m} from {}\t{:.4}\tobj {:.2}", f.method, accuracy(&r.labels, gold), r.objective.last().unwrap());
            }
        }
        return;
    }
    for &m in ms {
        let r = aggregate(a, m, &opts()).expect("aggregate");
        let sel = r
            .selection
            .as_ref()
            .map(|s| {
                s.candidates.iter().map(|c| format!("{}={:.4}", c.method, c.per_answer)).collect::<Vec<_>>().join(" ")
            })
            .unwrap_or_default();
        let sel = if sel.is_empty() { sel } else { format!("{} {sel}", r.selection.as_ref().map(|s| s.candidates[0].class_prior.clone()).unwrap_or_default()) };
        println!("{name}\t{m}\t{:.4}\t{}\t{}", accuracy(&r.labels, gold), r.objective.len(), sel);
    }
}

fn scale_data(items: usize, workers: usize, seed: u64) -> (Answers, Vec<usize>) {
    let cfg = SimConfig {
        n_items: items,
        n_classes: 7,
        n_workers: workers,
        answers_per_item: 3,
        matrix: pipeline_crowd::sim::round2_matrix(),
        worker_concentration: Some(50.0),
        constant_spammers: vec![],
        random_clickers: 0,
        balanced: false,
        seed,
    };
    let d = simulate(&cfg);
    let classes: Vec<String> = EMOTIONS.iter().map(|s| s.to_string()).collect();
    (Answers::from_triples(items, d.n_workers, classes, &d.answers).expect("answers"), d.truth)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(|s| s.as_str()) {
        Some("eval") => {
            let labels = std::fs::read_to_string(&args[1]).expect("labels");
            let a = parse_crowdkit_csv(&labels, &args[1]).expect("parse");
            let gold_text = std::fs::read_to_string(&args[2]).expect("gold");
            let mut gold = vec![None; a.n_items()];
            let idx: std::collections::HashMap<&str, usize> =
                a.items.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
            for line in gold_text.lines().skip(1) {
                let mut f = line.split(',');
                let (t, l) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
                if let (Some(&i), Some(c)) = (idx.get(t), a.classes.iter().position(|c| c == l)) {
                    gold[i] = Some(c);
                }
            }
            report(&args[1], &a, &gold, &methods(&args[3..]));
        }
        Some("amt") => {
            let text = std::fs::read_to_string(&args[1]).expect("batch");
            let classes: Vec<String> = EMOTIONS.iter().map(|s| s.to_string()).collect();
            let o = AmtOptions { classes: classes.clone(), ..AmtOptions::default() };
            let b = parse_amt_batch(&text, &args[1], &o).expect("parse");
            let a = b.to_answers(&classes).expect("answers");
            let gold: Vec<Option<usize>> = a
                .items
                .iter()
                .map(|u| {
                    let parts: Vec<&str> = u.split('/').collect();
                    parts.iter().position(|p| *p == "results").and_then(|i| parts.get(i + 1)).and_then(|c| classes.iter().position(|x| x == c))
                })
                .collect();
            report("seed-round1", &a, &gold, &methods(&args[2..]));
        }
        Some("sparse") => {
            let seeds: u64 = args[1].parse().expect("seeds");
            for m in methods(&args[2..]) {
                let mut accs = Vec::new();
                for s in 0..seeds {
                    let d = simulate(&SimConfig::sparse_round2(s));
                    let classes: Vec<String> = EMOTIONS.iter().map(|s| s.to_string()).collect();
                    let a = Answers::from_triples(700, d.n_workers, classes, &d.answers).expect("answers");
                    let r = aggregate(&a, m, &opts()).expect("aggregate");
                    let gold: Vec<Option<usize>> = d.truth.iter().map(|&t| Some(t)).collect();
                    accs.push(accuracy(&r.labels, &gold));
                }
                let mean = accs.iter().sum::<f64>() / accs.len() as f64;
                println!("sparse\t{m}\t{mean:.4}\t{seeds} seeds");
            }
        }
        Some("parse") => {
            let t = Instant::now();
            let text = std::fs::read_to_string(&args[1]).expect("labels");
            let t1 = t.elapsed().as_secs_f64();
            let (a, _) = pipeline_crowd::amt::parse_crowdkit_csv_with(&text, &args[1], &[], OnUnknownLabel::Error).expect("parse");
            println!("read {t1:.3} s, parse {:.3} s: {} items {} answers", t.elapsed().as_secs_f64() - t1, a.n_items(), a.n_answers());
        }
        Some("gen-sparse") => {
            let seed: u64 = args[1].parse().expect("seed");
            let dir = std::path::Path::new(&args[2]);
            std::fs::create_dir_all(dir).expect("dir");
            let d = simulate(&SimConfig::sparse_round2(seed));
            let mut l = String::from("worker,task,label\n");
            for (i, w, c) in &d.answers {
                l.push_str(&format!("{w},{i},{c}\n"));
            }
            let mut g = String::from("task,label\n");
            for (i, t) in d.truth.iter().enumerate() {
                g.push_str(&format!("{i},{t}\n"));
            }
            std::fs::write(dir.join("labels.csv"), l).expect("write");
            std::fs::write(dir.join("gold.csv"), g).expect("write");
        }
        Some("gen-scale") => {
            let dir = std::path::Path::new(&args[1]);
            std::fs::create_dir_all(dir).expect("dir");
            let (a, truth) = scale_data(1_000_000, 2000, 7);
            let mut l = String::with_capacity(a.n_answers() * 16);
            l.push_str("worker,task,label\n");
            for i in 0..a.n_items() {
                for &c in a.item_codes(i) {
                    l.push_str(&format!("{},{},{}\n", a.worker_of(c), i, a.label_of(c)));
                }
            }
            std::fs::write(dir.join("labels.csv"), l).expect("write");
            // the simulation's truth, for checking labels (`task,label`)
            let mut g = String::with_capacity(truth.len() * 10);
            g.push_str("task,label\n");
            for (i, t) in truth.iter().enumerate() {
                g.push_str(&format!("{i},{t}\n"));
            }
            std::fs::write(dir.join("gold.csv"), g).expect("write");
        }
        Some("scale") => {
            let items: usize = args.get(1).map(|s| s.parse().expect("items")).unwrap_or(1_000_000);
            let workers: usize = args.get(2).map(|s| s.parse().expect("workers")).unwrap_or(2000);
            let iters: usize = args.get(3).map(|s| s.parse().expect("iters")).unwrap_or(100);
            let method: Method = args.get(4).map(|s| s.parse().expect("method")).unwrap_or(Method::DawidSkene);
            let (a, truth) = scale_data(items, workers, 7);
            // ITERS = 0: the defaults (max_iter 100 with the default tolerance)
            let o = if iters == 0 { opts() } else { EmOptions { max_iter: iters, tol: 0.0, ..opts() } };
            let t = Instant::now();
            let r = aggregate(&a, method, &o).expect("aggregate");
            let secs = t.elapsed().as_secs_f64();
            let gold: Vec<Option<usize>> = truth.iter().map(|&t| Some(t)).collect();
            println!(
                "scale\t{method}\t{secs:.3}s\t{} iterations\taccuracy {:.4}\tthreads {}\t{}",
                r.objective.len(),
                accuracy(&r.labels, &gold),
                rayon::current_num_threads(),
                r.selection.map(|s| format!("chose {} ({})", s.chosen, s.candidates[0].class_prior)).unwrap_or_default()
            );
        }
        _ => {
            eprintln!("usage: see the header of examples/crowd-bench.rs");
            std::process::exit(2);
        }
    }
}
