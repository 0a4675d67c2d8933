//! Stage kind `dawid-skene`: aggregate crowd answers into soft and hard labels.
//!
//! Input `answers`: the output directory of `amt` (`answers.csv`, `summary.json`, `images/`).
//!
//! Output directory:
//! - `labels.csv`: `item,label,image` (image = `images/...` in this directory, or empty);
//! - `posteriors.csv`: `item,<class>...` (the soft labels training uses);
//! - `workers.csv`: `worker,answers,quality,peer_kappa,spammer`;
//! - `worker_matrices.json`: pooled and per-worker confusion matrices, `[answer][true]`;
//! - `prior.json`, `loglik.csv` (objective per EM iteration);
//! - `report.md` with `pooled.png`, `worker_<n>.png` (five least reliable) and `loglik.png`;
//! - `next_round.csv`: `image_url,label` for the next AMT batch (label = the hint shown to
//!   workers), least certain items first, at most `max_items` rows;
//! - `images/`: the input's images, copied through, so `augment` reads this directory only.

use std::collections::HashMap;
use std::path::Path;

use pipeline_crowd::aggregate::{aggregate, ClassPrior, EmOptions, Method};
use pipeline_crowd::report::{self, ReportError};
use pipeline_crowd::AnswersBuilder;
use serde::{Deserialize, Serialize};

use super::{InputDecl, Stage, StageContext, StageError, StageOutcome};

/// `"learned"`, `"uniform"`, or one weight per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum PriorParam {
    Named(String),
    Weights(Vec<f64>),
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DawidSkeneParams {
    /// auto (the default: every model below fitted, the one that best predicts held-out
    /// answers kept) | majority-vote | dawid-skene (classic) | one-coin | pooled | shrunk.
    pub method: String,
    /// "learned" (the default, smoothed) | "uniform" | [weights per class].
    pub class_prior: PriorParam,
    pub max_iter: usize,
    /// Stop on a relative objective change below this (never on a dip).
    pub tol: f64,
    /// Pseudo-count per confusion cell.
    pub smoothing: f64,
    /// `shrunk`: weight of the pooled matrix in answers per true class, the same for all
    /// classes; absent = estimated from the data, per class.
    pub shrink_strength: Option<f64>,
    /// Extra pseudo-count on the pooled matrix's diagonal.
    pub diag_prior: f64,
    /// Seed of tie-breaks.
    pub seed: u64,
    /// Spammer detection: only workers with at least this many answers.
    pub spammer_min_answers: usize,
    /// next_round.csv: at most this many items (least certain first); absent = all.
    pub max_items: Option<usize>,
    /// next_round.csv: name of the hint column (the study's round 2: `label`).
    pub hint_column: String,
}

impl Default for DawidSkeneParams {
    fn default() -> Self {
        let o = EmOptions::default();
        DawidSkeneParams {
            method: Method::Auto.name().into(),
            class_prior: PriorParam::Named("learned".into()),
            max_iter: o.max_iter,
            tol: o.tol,
            smoothing: o.smoothing,
            shrink_strength: o.shrink_strength,
            diag_prior: o.diag_prior,
            seed: 0,
            spammer_min_answers: 10,
            max_items: None,
            hint_column: "label".into(),
        }
    }
}

pub struct DawidSkene;

pub fn em_options(p: &DawidSkeneParams) -> Result<EmOptions, StageError> {
    let class_prior = match &p.class_prior {
        PriorParam::Named(s) if s == "learned" => ClassPrior::Learned,
        PriorParam::Named(s) if s == "uniform" => ClassPrior::Uniform,
        PriorParam::Named(s) => {
            return Err(StageError::bad_param(
                "class_prior",
                format!("\"{s}\": expected \"learned\", \"uniform\" or a list of weights"),
            ))
        }
        PriorParam::Weights(w) => ClassPrior::Fixed(w.clone()),
    };
    Ok(EmOptions {
        max_iter: p.max_iter,
        tol: p.tol,
        class_prior,
        smoothing: p.smoothing,
        prior_smoothing: EmOptions::default().prior_smoothing,
        shrink_strength: p.shrink_strength,
        diag_prior: p.diag_prior,
        seed: p.seed,
    })
}

fn csv_err(path: &Path, e: impl std::fmt::Display) -> StageError {
    StageError::bad_file(path, e)
}

fn report_err(e: ReportError) -> StageError {
    match e {
        ReportError::Io { path, source } => StageError::io(path, source),
        ReportError::Csv { path, source } => StageError::bad_file(path, source),
    }
}

fn copy_dir(src: &Path, dst: &Path) -> Result<(), StageError> {
    std::fs::create_dir_all(dst).map_err(|e| StageError::io(dst, e))?;
    for e in std::fs::read_dir(src).map_err(|e| StageError::io(src, e))? {
        let e = e.map_err(|e| StageError::io(src, e))?;
        let (s, d) = (e.path(), dst.join(e.file_name()));
        if s.is_dir() {
            copy_dir(&s, &d)?;
        } else {
            std::fs::copy(&s, &d).map_err(|e| StageError::io(&s, e))?;
        }
    }
    Ok(())
}

impl Stage for DawidSkene {
    type Params = DawidSkeneParams;
    const KIND: &'static str = "dawid-skene";
    // 2: default method auto, learned class prior, summary.json, model choice in report.md
    // 3: auto skips candidates with a class answered as itself below chance
    // 4: auto keeps the simplest candidate within one standard error of the best
    // 5: auto refits its winner with over-relaxed EM above 150,000 answers (other bytes there)
    const VERSION: u32 = 5;
    const DESCRIPTION: &'static str =
        "Aggregate crowd answers (amt output) into posteriors, hard labels, worker matrices, a report and the next AMT batch";
    const INPUTS: &'static [InputDecl] =
        &[InputDecl { name: "answers", required: true, doc: "output of amt: answers.csv, summary.json, images/" }];

    fn check_params(p: &DawidSkeneParams) -> Result<(), StageError> {
        p.method.parse::<Method>().map_err(|e| StageError::bad_param("method", e))?;
        em_options(p)?;
        if p.max_iter == 0 {
            return Err(StageError::bad_param("max_iter", "at least 1"));
        }
        if !(p.smoothing > 0.0) {
            return Err(StageError::bad_param("smoothing", "must be > 0"));
        }
        if p.max_items == Some(0) {
            return Err(StageError::bad_param("max_items", "at least 1 (or leave it out for all items)"));
        }
        if p.hint_column.trim().is_empty() || p.hint_column == "image_url" {
            return Err(StageError::bad_param("hint_column", "a column name other than image_url"));
        }
        Ok(())
    }

    fn run(p: &DawidSkeneParams, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        Self::check_params(p)?;
        let method: Method = p.method.parse().map_err(|e| StageError::bad_param("method", e))?;
        let opts = em_options(p)?;
        let dir = ctx.input("answers")?;
        let apath = dir.join("answers.csv");
        // classes: amt's summary.json, else the study's
        let classes: Vec<String> = std::fs::read_to_string(dir.join("summary.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v.get("classes").and_then(|c| serde_json::from_value::<Vec<String>>(c.clone()).ok()))
            .filter(|c| c.len() >= 2)
            .unwrap_or_else(|| pipeline_crowd::EMOTIONS.iter().map(|s| s.to_string()).collect());
        let f = std::fs::File::open(&apath).map_err(|e| StageError::io(&apath, e))?;
        let mut rd = csv::ReaderBuilder::new().flexible(true).from_reader(f);
        let header = rd.headers().map_err(|e| csv_err(&apath, e))?.clone();
        let col = |n: &str| header.iter().position(|h| h == n);
        let need = |n: &str| col(n).ok_or_else(|| StageError::bad_file(&apath, format!("no column \"{n}\"")));
        let (ci, cw, cl) = (need("item")?, need("worker")?, need("label")?);
        let (cimg, curl) = (col("image"), col("Input.image_url"));
        let mut b = AnswersBuilder::new(&classes);
        let mut image: HashMap<String, String> = HashMap::new();
        let mut url: HashMap<String, String> = HashMap::new();
        for (n, rec) in rd.records().enumerate() {
            let line = n + 2;
            let rec = rec.map_err(|e| StageError::bad_file(&apath, format!("line {line}: {e}")))?;
            let get = |i: usize| rec.get(i).unwrap_or("").to_string();
            let item = get(ci);
            b.push(&item, &get(cw), &get(cl)).map_err(|l| {
                StageError::bad_file(&apath, format!("line {line}: label \"{l}\" is not one of {}", classes.join(", ")))
            })?;
            if let Some(c) = cimg {
                let v = get(c);
                if !v.is_empty() {
                    image.insert(item.clone(), v);
                }
            }
            let u = curl.map(get).filter(|u| !u.is_empty()).unwrap_or_else(|| item.clone());
            url.insert(item, u);
        }
        let answers = b.build().map_err(|e| StageError::bad_file(&apath, e))?;
        if answers.n_answers() == 0 {
            return Err(StageError::bad_file(
                &apath,
                format!(
                    "no answers to aggregate ({} rows after the header): the amt stage kept none; \
                     check its `statuses`, `classes` and `on_unknown_label`, and the batch file",
                    answers.n_items()
                ),
            ));
        }
        ctx.progress.set_message(format!("{method} on {} answers", answers.n_answers()));
        let r = aggregate(&answers, method, &opts).map_err(|e| StageError::Failed(e.to_string()))?;
        ctx.cancel.check()?;
        let out = ctx.out_dir;

        // labels.csv, posteriors.csv
        let lp = out.join("labels.csv");
        let mut w = csv::Writer::from_path(&lp).map_err(|e| csv_err(&lp, e))?;
        w.write_record(["item", "label", "image"]).map_err(|e| csv_err(&lp, e))?;
        for (i, item) in answers.items.iter().enumerate() {
            let img = image.get(item).cloned().unwrap_or_default();
            w.write_record([item.as_str(), classes[r.labels[i]].as_str(), img.as_str()]).map_err(|e| csv_err(&lp, e))?;
        }
        w.flush().map_err(|e| StageError::io(&lp, e))?;
        report::write_posteriors(&out.join("posteriors.csv"), "item", &answers, &r).map_err(report_err)?;

        // next_round.csv: least certain first
        let mut order: Vec<usize> = (0..answers.n_items()).collect();
        let maxp = |i: usize| r.posterior(i).iter().cloned().fold(0.0, f64::max);
        order.sort_by(|&a, &b| maxp(a).partial_cmp(&maxp(b)).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
        order.truncate(p.max_items.unwrap_or(usize::MAX));
        let np = out.join("next_round.csv");
        let mut w = csv::Writer::from_path(&np).map_err(|e| csv_err(&np, e))?;
        w.write_record(["image_url", p.hint_column.as_str()]).map_err(|e| csv_err(&np, e))?;
        for &i in &order {
            let item = &answers.items[i];
            w.write_record([url.get(item).unwrap_or(item).as_str(), classes[r.labels[i]].as_str()])
                .map_err(|e| csv_err(&np, e))?;
        }
        w.flush().map_err(|e| StageError::io(&np, e))?;

        // images/ through
        let src_images = dir.join("images");
        if src_images.is_dir() {
            copy_dir(&src_images, &out.join("images"))?;
        }

        let next_md = format!(
            "\n## Next round\n\n`next_round.csv`: {} items, least certain first, with the hint column `{}`.\n",
            order.len(),
            p.hint_column
        );
        let extra = report::ReportExtra { md: next_md, ..Default::default() };
        let rep = report::write_report(out, &answers, &r, &p.method, p.spammer_min_answers, &extra).map_err(report_err)?;
        for e in &rep.plot_errors {
            tracing::warn!("dawid-skene report: {e}");
        }
        let (agreement, mmp, spammers) = (rep.agreement, rep.mean_max_posterior, rep.spammers);
        let mut o = StageOutcome::default();
        o.metrics.insert("agreement".into(), agreement);
        o.metrics.insert("mean_max_posterior".into(), mmp);
        o.metrics.insert("spammers".into(), spammers as f64);
        o.metrics.insert("iterations".into(), r.objective.len() as f64);
        if let Some(sel) = &r.selection {
            o.metrics.insert("heldout_loglik_per_answer".into(), sel.candidates[0].per_answer);
            o.metrics.insert("heldout_margin".into(), sel.margin());
        }
        o.summary.push(format!(
            "{}: {} items, mean max posterior {mmp:.3}, agreement {agreement:.3}, {spammers} spammer(s); report: {}",
            report::method_line(&p.method, &r),
            answers.n_items(),
            ctx.out_dir.join("report.md").display()
        ));
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::amt::{Amt, AmtParams};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn ctx_run<S: Stage>(p: &S::Params, inputs: BTreeMap<String, PathBuf>, out: &Path) -> Result<StageOutcome, StageError> {
        crate::stages::test_run::<S>(p, &inputs, out, out, None)
    }

    #[test]
    fn amt_then_dawid_skene_gives_labels_images_and_next_round() {
        let tmp = tempfile::tempdir().unwrap();
        let images = tmp.path().join("img");
        let mut items = Vec::new();
        for i in 0..140 {
            let c = pipeline_crowd::EMOTIONS[i % 7];
            let rel = format!("results/{c}/{c}_{i:03}.png");
            std::fs::create_dir_all(images.join(format!("results/{c}"))).unwrap();
            std::fs::write(images.join(&rel), format!("img {i}")).unwrap();
            items.push((format!("https://demo.invalid/{rel}"), i % 7));
        }
        let batch = tmp.path().join("batch.csv");
        std::fs::write(&batch, pipeline_crowd::simulate_amt_batch(&items, 8, 3, 11)).unwrap();
        let amt_out = tmp.path().join("amt");
        std::fs::create_dir_all(&amt_out).unwrap();
        let ap = AmtParams { image_url_prefix: "https://demo.invalid/".into(), ..AmtParams::default() };
        ctx_run::<Amt>(&ap, BTreeMap::from([("batches".into(), batch), ("images".into(), images)]), &amt_out).unwrap();

        let out = tmp.path().join("ds");
        std::fs::create_dir_all(&out).unwrap();
        let p = DawidSkeneParams { max_items: Some(10), ..DawidSkeneParams::default() };
        let o = ctx_run::<DawidSkene>(&p, BTreeMap::from([("answers".into(), amt_out)]), &out).unwrap();
        assert!(o.metrics["mean_max_posterior"] > 1.0 / 7.0 && o.metrics["mean_max_posterior"] <= 1.0);
        assert!(o.metrics.contains_key("agreement"));
        for f in [
            "labels.csv",
            "posteriors.csv",
            "workers.csv",
            "worker_matrices.json",
            "prior.json",
            "loglik.csv",
            "report.md",
            "next_round.csv",
            "summary.json",
        ] {
            assert!(out.join(f).is_file(), "{f}");
        }
        // the default is auto: the chosen model and every candidate's score are recorded
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(s["method"], "auto");
        assert_eq!(s["selection"]["chosen"], s["model"]);
        assert_eq!(s["selection"]["candidates"].as_array().unwrap().len(), 9);
        assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("## Model choice"));
        assert!(o.metrics.contains_key("heldout_margin"));
        let mut rd = csv::Reader::from_path(out.join("labels.csv")).unwrap();
        assert_eq!(rd.headers().unwrap().iter().collect::<Vec<_>>(), vec!["item", "label", "image"]);
        let mut n = 0;
        for rec in rd.records() {
            let rec = rec.unwrap();
            assert!(out.join(&rec[2]).is_file(), "image {} copied through", &rec[2]);
            n += 1;
        }
        assert_eq!(n, 140);
        let next = std::fs::read_to_string(out.join("next_round.csv")).unwrap();
        assert_eq!(next.lines().next().unwrap(), "image_url,label");
        assert_eq!(next.lines().count(), 11);
        // least certain first
        let post = std::fs::read_to_string(out.join("posteriors.csv")).unwrap();
        let maxp: HashMap<String, f64> = post
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].to_string(), f[1..].iter().map(|x| x.parse::<f64>().unwrap()).fold(0.0, f64::max))
            })
            .collect();
        let firsts: Vec<f64> = next.lines().skip(1).map(|l| maxp[l.split(',').next().unwrap()]).collect();
        assert!(firsts.windows(2).all(|w| w[0] <= w[1] + 1e-6), "{firsts:?}");
        let all_min = maxp.values().cloned().fold(1.0, f64::min);
        assert!((firsts[0] - all_min).abs() < 1e-6);
        // the "always happy" spammer of the simulated batch is reported
        let workers = std::fs::read_to_string(out.join("workers.csv")).unwrap();
        assert!(workers.contains("always happy"), "{workers}");
    }

    #[test]
    fn bad_params_are_named() {
        let p = DawidSkeneParams { method: "glad".into(), ..DawidSkeneParams::default() };
        assert!(DawidSkene::check_params(&p).unwrap_err().to_string().contains("method"));
        let p = DawidSkeneParams { class_prior: PriorParam::Named("flat".into()), ..DawidSkeneParams::default() };
        assert!(DawidSkene::check_params(&p).unwrap_err().to_string().contains("class_prior"));
        let p = DawidSkeneParams { class_prior: PriorParam::Weights(vec![1.0; 7]), ..DawidSkeneParams::default() };
        assert!(DawidSkene::check_params(&p).is_ok());
    }
}
