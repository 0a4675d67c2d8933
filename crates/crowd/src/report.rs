//! The report files of an aggregation, shared by the `dawid-skene` stage and `pipeline
//! aggregate`: `posteriors.csv` (and the CLI's `labels.csv`), `workers.csv`,
//! `worker_matrices.json`, `prior.json`, `loglik.csv`, `report.md` with its plots and
//! `summary.json`. Plain functions writing into a directory; one writer for both callers, so
//! the two write the same bytes.
//!
//! The two large CSV files are formatted in parallel chunks and written with one `write` per
//! chunk (a million items: well under a second).

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::aggregate::Aggregation;
use crate::data::Answers;
use crate::SpamKind;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Csv { path: PathBuf, source: csv::Error },
}

fn io_err(path: &Path, source: std::io::Error) -> ReportError {
    ReportError::Io { path: path.to_path_buf(), source }
}

fn csv_err(path: &Path, source: csv::Error) -> ReportError {
    ReportError::Csv { path: path.to_path_buf(), source }
}

fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    pipeline_report::markdown_table(headers, rows)
}

/// A CSV field: as is, or quoted when it holds a comma, quote or line break.
pub fn push_field(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        buf.push(b'"');
        for b in s.bytes() {
            if b == b'"' {
                buf.push(b'"');
            }
            buf.push(b);
        }
        buf.push(b'"');
    } else {
        buf.extend_from_slice(s.as_bytes());
    }
}

/// `x` in [0, 1] with 6 decimals, the same text as `format!("{x:.6}")`.
pub fn push_prob(buf: &mut Vec<u8>, x: f64) {
    let v = x * 1e6;
    let r = v.round();
    // exact halves (and anything odd) go through the formatter, which rounds the exact value
    if !(0.0..=1e6).contains(&r) || ((v - v.floor()) - 0.5).abs() < 1e-6 {
        let _ = write!(buf, "{x:.6}");
        return;
    }
    let n = r as u32;
    let (int, frac) = (n / 1_000_000, n % 1_000_000);
    buf.push(b'0' + int as u8);
    buf.push(b'.');
    let mut d = [b'0'; 6];
    let mut f = frac;
    for i in (0..6).rev() {
        d[i] = b'0' + (f % 10) as u8;
        f /= 10;
    }
    buf.extend_from_slice(&d);
}

/// Rows `0..n` formatted by `row` in parallel chunks, written in order.
fn write_rows(path: &Path, header: &[u8], n: usize, row: impl Fn(usize, &mut Vec<u8>) + Sync) -> Result<(), ReportError> {
    let f = std::fs::File::create(path).map_err(|e| io_err(path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    w.write_all(header).map_err(|e| io_err(path, e))?;
    const CHUNK: usize = 16_384;
    let chunks: Vec<usize> = (0..n.div_ceil(CHUNK)).collect();
    // a bounded window of chunks at a time keeps the buffers small
    for window in chunks.chunks(rayon::current_num_threads().max(1) * 4) {
        let bufs: Vec<Vec<u8>> = window
            .par_iter()
            .map(|&c| {
                let mut b = Vec::with_capacity(CHUNK * 48);
                for i in c * CHUNK..((c + 1) * CHUNK).min(n) {
                    row(i, &mut b);
                }
                b
            })
            .collect();
        for b in bufs {
            w.write_all(&b).map_err(|e| io_err(path, e))?;
        }
    }
    w.flush().map_err(|e| io_err(path, e))?;
    Ok(())
}

/// `labels.csv` of `pipeline aggregate`: `task,label`, one row per item.
pub fn write_labels(path: &Path, a: &Answers, r: &Aggregation) -> Result<(), ReportError> {
    write_rows(path, b"task,label\n", a.n_items(), |i, b| {
        push_field(b, &a.items[i]);
        b.push(b',');
        push_field(b, &a.classes[r.labels[i]]);
        b.push(b'\n');
    })
}

/// `posteriors.csv`: `<id_column>,<class>...`, one row per item, 6 decimals (the text of
/// `format!("{x:.6}")`; fields quoted as the csv crate quotes them).
pub fn write_posteriors(path: &Path, id_column: &str, a: &Answers, r: &Aggregation) -> Result<(), ReportError> {
    let mut h = Vec::new();
    push_field(&mut h, id_column);
    for c in &a.classes {
        h.push(b',');
        push_field(&mut h, c);
    }
    h.push(b'\n');
    write_rows(path, &h, a.n_items(), |i, b| {
        push_field(b, &a.items[i]);
        for &x in r.posterior(i) {
            b.push(b',');
            push_prob(b, x);
        }
        b.push(b'\n');
    })
}

/// What `write_report` measured.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    pub agreement: f64,
    pub mean_max_posterior: f64,
    pub spammers: usize,
    /// Plots that could not be drawn (left out of report.md; the caller logs them).
    pub plot_errors: Vec<String>,
}

/// `auto -> shrunk` when the model was chosen, else the method's name.
pub fn method_line(requested: &str, r: &Aggregation) -> String {
    match &r.selection {
        Some(s) => format!("{requested} -> {}", s.chosen),
        None => r.method.to_string(),
    }
}

/// The model-choice section of report.md (empty when no choice was made).
fn selection_md(r: &Aggregation) -> String {
    let Some(s) = &r.selection else { return String::new() };
    let Some(chosen) = s.candidates.first() else { return String::new() };
    let prior = |p: &str| if p == "none" { String::new() } else { format!(", {p} prior") };
    let best = s.candidates.iter().find(|c| Some(c.method) == s.best && c.class_prior == s.best_class_prior);
    let why = match best {
        Some(b) if !std::ptr::eq(b, chosen) => format!(
            "the best held-out score is {}{}'s ({} parameters), but only by {:.1} nats, within one standard \
             error of the difference ({:.1} nats over {} items), and {} has fewer parameters ({}): a more flexible \
             model is kept only when it predicts held-out answers better by more than the noise of the comparison",
            b.method,
            prior(&b.class_prior),
            b.parameters,
            -chosen.vs_best,
            chosen.se_vs_best,
            s.scored_items,
            s.chosen,
            chosen.parameters,
        ),
        _ => format!(
            "of the models whose classes read as the answer classes, it predicts answers it was not fitted on best, and \
             no model with fewer parameters is within one standard error of it. Margin over the runner-up ({}): {:.1} \
             nats in all, {:.4} per answer",
            s.runner_up().map(|m| m.to_string()).unwrap_or_else(|| "none".into()),
            s.margin(),
            if s.scored_answers > 0 { s.margin() / s.scored_answers as f64 } else { 0.0 },
        ),
    };
    let mut md = format!(
        "## Model choice\n\n`auto` fitted every model and kept **{}**{}: {why}. Criterion: {}; {} answers \
         scored.\n\n",
        s.chosen,
        prior(&chosen.class_prior),
        s.criterion,
        s.scored_answers,
    );
    let rows: Vec<Vec<String>> = s
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            vec![
                if i == 0 { format!("**{}**", c.method) } else { c.method.to_string() },
                c.class_prior.clone(),
                c.parameters.to_string(),
                format!("{:.1}", c.heldout_loglik),
                format!("{:.4}", c.per_answer),
                format!("{:.1}", c.vs_best),
                format!("{:.1}", c.se_vs_best),
                match &c.rejected {
                    None => "eligible".to_string(),
                    Some(why) => format!("not eligible: {}", pipeline_report::md_text(&why.replace('`', "'"))),
                },
            ]
        })
        .collect();
    md.push_str(&markdown_table(
        &["model", "class prior", "parameters", "held-out log-lik", "per answer", "vs best", "SE of difference", "classes"],
        &rows,
    ));
    md.push('\n');
    md
}

/// Spammers listed in `report.md` (all of them are in `workers.csv`).
const SPAMMER_ROWS: usize = 100;

/// `worker_matrices.json`: classes, layout, pooled matrix and one matrix per worker, written
/// as it is serialised.
struct WorkerMatrices<'a> {
    classes: &'a [String],
    pooled: Vec<Vec<f64>>,
    answers: &'a Answers,
    r: &'a Aggregation,
    k: usize,
}

impl serde::Serialize for WorkerMatrices<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Workers<'b>(&'b WorkerMatrices<'b>);
        impl serde::Serialize for Workers<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let k = self.0.k;
                let mut m = s.serialize_map(Some(self.0.answers.n_workers()))?;
                for (wk, name) in self.0.answers.workers.iter().enumerate() {
                    let w = self.0.r.worker_matrix(wk);
                    let rows: Vec<&[f64]> = (0..k).map(|l| &w[l * k..(l + 1) * k]).collect();
                    m.serialize_entry(name, &rows)?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("classes", self.classes)?;
        m.serialize_entry("layout", "m[answer][true] = P(worker answers `answer` | true class `true`); columns sum to 1")?;
        m.serialize_entry("pooled", &self.pooled)?;
        m.serialize_entry("workers", &Workers(self))?;
        m.end()
    }
}

/// Least reliable workers drawn in the report: `worker_1.png` .. `worker_<this>.png`.
pub const WORKER_PLOTS: usize = 5;

/// Whether `name` is a file of an aggregation's output: `labels.csv` and `posteriors.csv`
/// ([`write_labels`], [`write_posteriors`]), what [`write_report`] writes, and its worker
/// plots (`worker_1.png` .. `worker_5.png` exactly; `worker_0.png` or `worker_03.png` are not).
pub fn is_output_file(name: &str) -> bool {
    const FIXED: [&str; 10] = [
        "labels.csv",
        "posteriors.csv",
        "workers.csv",
        "worker_matrices.json",
        "prior.json",
        "loglik.csv",
        "loglik.png",
        "pooled.png",
        "report.md",
        "summary.json",
    ];
    FIXED.contains(&name)
        || name
            .strip_prefix("worker_")
            .and_then(|r| r.strip_suffix(".png"))
            .and_then(|n| n.parse::<usize>().ok().filter(|&i| (1..=WORKER_PLOTS).contains(&i) && n == i.to_string()))
            .is_some()
}

/// What a caller adds to [`write_report`]'s files: markdown appended to `report.md`, and
/// fields added to `summary.json` (written once, with the rest).
#[derive(Debug, Default)]
pub struct ReportExtra {
    pub md: String,
    pub summary: serde_json::Map<String, serde_json::Value>,
}

/// The report files shared by the stage and `pipeline aggregate`: `workers.csv`,
/// `worker_matrices.json`, `prior.json`, `loglik.csv`, `report.md` (with its PNGs; `extra.md`
/// appended) and `summary.json` (method asked for, model used, how it was chosen, metrics;
/// `extra.summary`'s fields added).
pub fn write_report(
    out: &Path,
    answers: &Answers,
    r: &Aggregation,
    requested: &str,
    spammer_min_answers: usize,
    extra: &ReportExtra,
) -> Result<ReportSummary, ReportError> {
    let classes = &answers.classes;
    let k = classes.len();
    // Draw a plot; a plot that fails is recorded and left out, the labels still count.
    let plot_errors = std::cell::RefCell::new(Vec::new());
    let try_plot = |f: &dyn Fn() -> Result<(), pipeline_report::ReportError>| -> bool {
        match f() {
            Ok(()) => true,
            Err(e) => {
                plot_errors.borrow_mut().push(e.to_string());
                false
            }
        }
    };
    // workers.csv, spammers
    let spammers = crate::detect_spammers(&answers, &r, spammer_min_answers);
    let kappa = crate::spam::peer_kappa(&answers);
    let counts = answers.worker_label_counts();
    let wp = out.join("workers.csv");
    let mut w = csv::Writer::from_path(&wp).map_err(|e| csv_err(&wp, e))?;
    w.write_record(["worker", "answers", "quality", "peer_kappa", "spammer"]).map_err(|e| csv_err(&wp, e))?;
    // by worker: a search of the list per worker was quadratic with a million workers
    let spam_index: std::collections::HashMap<usize, &crate::spam::Spammer> = spammers.iter().map(|s| (s.worker, s)).collect();
    let spam_of = |wk: usize| -> String {
        spam_index
            .get(&wk)
            .map(|s| match &s.kind {
                SpamKind::SameAnswer { label } => format!("always {}", classes[*label]),
                SpamKind::Random => "random".to_string(),
            })
            .unwrap_or_default()
    };
    for (wk, name) in answers.workers.iter().enumerate() {
        w.write_record([
            name.clone(),
            counts[wk].iter().sum::<usize>().to_string(),
            format!("{:.4}", r.worker_quality[wk]),
            if kappa[wk].is_finite() { format!("{:.4}", kappa[wk]) } else { String::new() },
            spam_of(wk),
        ])
        .map_err(|e| csv_err(&wp, e))?;
    }
    w.flush().map_err(|e| io_err(&wp, e))?;

    let mat = |m: &[f64]| -> Vec<Vec<f64>> { (0..k).map(|l| m[l * k..(l + 1) * k].to_vec()).collect() };
    let write = |name: &str, text: String| -> Result<(), ReportError> {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| io_err(&p, e))
    };
    // Streamed, one worker at a time: built as one JSON value it took 2.4 GB for a million
    // workers (found by a hostile pass). Same document as before.
    {
        let p = out.join("worker_matrices.json");
        let f = std::fs::File::create(&p).map_err(|e| io_err(&p, e))?;
        let mut buf = std::io::BufWriter::with_capacity(1 << 20, f);
        let doc = WorkerMatrices { classes, pooled: mat(&r.pooled_matrix), answers, r, k };
        serde_json::to_writer_pretty(&mut buf, &doc).map_err(|e| io_err(&p, e.into()))?;
        std::io::Write::flush(&mut buf).map_err(|e| io_err(&p, e))?;
    }
    let prior: serde_json::Map<String, serde_json::Value> =
        classes.iter().cloned().zip(r.class_prior.iter().map(|x| serde_json::json!(x))).collect();
    write("prior.json", serde_json::to_string_pretty(&prior).unwrap_or_default())?;
    let mut ll = String::from("iteration,objective\n");
    for (i, v) in r.objective.iter().enumerate() {
        ll.push_str(&format!("{},{v}\n", i + 1));
    }
    write("loglik.csv", ll)?;

    // report.md with heatmaps
    let names: Vec<String> = classes.clone();
    let pooled = mat(&r.pooled_matrix);
    let path = out.join("pooled.png");
    let pooled_ok = {
        let (n, m, pth) = (names.clone(), pooled.clone(), path.clone());
        try_plot(&|| pipeline_report::heatmap_png(&pth, "Pooled confusion matrix", &m, &n, &n, "answer", "true class"))
    };
    let mut worst: Vec<usize> = (0..answers.n_workers()).collect();
    worst.sort_by(|&a, &b| r.worker_quality[a].partial_cmp(&r.worker_quality[b]).unwrap_or(std::cmp::Ordering::Equal));
    worst.truncate(WORKER_PLOTS);
    let mut worker_pngs = Vec::new();
    for (n, &wk) in worst.iter().enumerate() {
        let file = format!("worker_{}.png", n + 1);
        let (nm, m, pth) = (names.clone(), mat(r.worker_matrix(wk)), out.join(&file));
        let title = format!("Worker {} (quality {:.2})", answers.workers[wk], r.worker_quality[wk]);
        let ok = try_plot(&|| pipeline_report::heatmap_png(&pth, &title, &m, &nm, &nm, "answer", "true class"));
        worker_pngs.push((wk, file, ok));
    }
    let series = vec![pipeline_report::Series {
        name: "objective".into(),
        points: r.objective.iter().enumerate().map(|(i, v)| ((i + 1) as f64, *v)).collect(),
    }];
    let ll_ok = !r.objective.is_empty() && {
        let pth = out.join("loglik.png");
        try_plot(&|| pipeline_report::line_chart_png(&pth, "EM objective", "iteration", "log-likelihood + log-prior", &series))
    };
    let agreement = answers.pairwise_agreement();
    let mmp = r.mean_max_posterior();
    let mut md = format!(
        "# Crowd labels: {}\n\n{} answers on {} items by {} workers; pairwise agreement {agreement:.3}; \
             mean max posterior {mmp:.3}; {} EM iterations{}{}.\n\n{}## Classes\n\n",
        method_line(requested, r),
        answers.n_answers(),
        answers.n_items(),
        answers.n_workers(),
        r.objective.len(),
        if r.converged { " (converged)" } else { "" },
        r.shrink_strength
            .as_ref()
            .map(|s| format!(
                "; shrink strength per class {}",
                s.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ")
            ))
            .unwrap_or_default(),
        selection_md(r),
    );
    let label_counts = answers.label_counts();
    let rows: Vec<Vec<String>> = (0..k)
        .map(|j| {
            vec![
                pipeline_report::md_text(&classes[j]),
                label_counts[j].to_string(),
                r.labels.iter().filter(|&&l| l == j).count().to_string(),
                format!("{:.3}", r.class_prior[j]),
            ]
        })
        .collect();
    md.push_str(&markdown_table(&["class", "answers", "items labelled", "prior"], &rows));
    md.push_str("\n## Pooled confusion matrix (rows = answer, columns = true class)\n\n");
    let names_md: Vec<String> = classes.iter().map(|c| pipeline_report::md_text(c)).collect();
    let mut hdr: Vec<&str> = vec!["answer \\ true"];
    hdr.extend(names_md.iter().map(|s| s.as_str()));
    let rows: Vec<Vec<String>> = (0..k)
        .map(|l| {
            let mut v = vec![names_md[l].clone()];
            v.extend((0..k).map(|j| format!("{:.2}", pooled[l][j])));
            v
        })
        .collect();
    md.push_str(&markdown_table(&hdr, &rows));
    if pooled_ok {
        md.push_str("\n![pooled](pooled.png)\n");
    }
    md.push_str("\n## Least reliable workers\n\n");
    let rows: Vec<Vec<String>> = worker_pngs
        .iter()
        .map(|(wk, file, ok)| {
            vec![
                pipeline_report::md_text(&answers.workers[*wk]),
                counts[*wk].iter().sum::<usize>().to_string(),
                format!("{:.3}", r.worker_quality[*wk]),
                pipeline_report::md_text(&spam_of(*wk)),
                if *ok { format!("![]({file})") } else { String::new() },
            ]
        })
        .collect();
    md.push_str(&markdown_table(&["worker", "answers", "quality", "spammer", "matrix"], &rows));
    md.push_str(&format!("\n## Spammers ({})\n\n", spammers.len()));
    if spammers.is_empty() {
        md.push_str("None found (same answer >= 90 % of the time, or agreement with peers at chance level).\n");
    } else {
        // the first ones: a crowd of a million clickers made a report of a million rows
        let rows: Vec<Vec<String>> = spammers
            .iter()
            .take(SPAMMER_ROWS)
            .map(|s| vec![pipeline_report::md_text(&answers.workers[s.worker]), s.answers.to_string(), pipeline_report::md_text(&spam_of(s.worker)), format!("{:.3}", s.score)])
            .collect();
        md.push_str(&markdown_table(&["worker", "answers", "kind", "score"], &rows));
        if spammers.len() > SPAMMER_ROWS {
            md.push_str(&format!("\n... and {} more (`workers.csv` lists every worker).\n", spammers.len() - SPAMMER_ROWS));
        }
    }
    if ll_ok {
        md.push_str("\n## EM objective\n\n![objective](loglik.png)\n");
    }
    md.push_str(&extra.md);
    write("report.md", md)?;

    let mut summary = serde_json::json!({
        "method": requested,
        "model": r.method.name(),
        "class_prior": r.class_prior,
        "classes": classes,
        "answers": answers.n_answers(),
        "items": answers.n_items(),
        "workers": answers.n_workers(),
        "iterations": r.objective.len(),
        "converged": r.converged,
        "agreement": agreement,
        "mean_max_posterior": mmp,
        "spammers": spammers.len(),
        "shrink_strength": r.shrink_strength,
        "selection": r.selection.as_ref().map(|s| serde_json::json!({
            "chosen": s.chosen.name(),
            "criterion": s.criterion,
            "scored_answers": s.scored_answers,
            "margin_nats": s.margin(),
            "margin_per_answer": if s.scored_answers > 0 { s.margin() / s.scored_answers as f64 } else { 0.0 },
            "runner_up": s.runner_up().map(|m| m.name()),
            "best": s.best.map(|m| m.name()),
            "best_class_prior": s.best_class_prior,
            "scored_items": s.scored_items,
            "candidates": s.candidates,
        })),
    });
    if let serde_json::Value::Object(m) = &mut summary {
        m.extend(extra.summary.clone());
    }
    write("summary.json", serde_json::to_string_pretty(&summary).unwrap_or_default())?;
    Ok(ReportSummary { agreement, mean_max_posterior: mmp, spammers: spammers.len(), plot_errors: plot_errors.into_inner() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_writer_matches_the_formatter() {
        for x in [0.0, 1.0, 0.5, 1.0 / 3.0, 2.0 / 3.0, 1e-7, 0.9999995, 0.0000005, 0.1234565, 0.999_999_4] {
            let mut b = Vec::new();
            push_prob(&mut b, x);
            assert_eq!(String::from_utf8(b).unwrap(), format!("{x:.6}"), "{x}");
        }
        let mut b = Vec::new();
        push_field(&mut b, "a,\"b\"");
        assert_eq!(b, b"\"a,\"\"b\"\"\"");
    }
}
