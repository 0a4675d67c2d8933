//! Stage kind `amt`: fetch AMT results, from batch-results CSV files or the MTurk API.
//!
//! Input `batches` (batch mode): one CSV file, or a directory (a glob input becomes one)
//! whose `*.csv` files are read in name order. Input `images` (optional): a directory;
//! each item's `Input.image_url` minus `image_url_prefix` is a path in it, and the file is
//! copied into the output so downstream stages get a self-contained artifact.
//!
//! Output directory:
//! - `answers.csv`: `item,worker,label,work_time_s,assignment_status,hit_id,assignment_id,image`
//!   then every `Input.<name>` column, one row per kept answer;
//! - `summary.json`: answers, items, workers, answers per item, agreement, drops, classes;
//! - `images/<stem>_<hash8>.<ext>`: a copy of each item's image (with input `images`).
//!
//! API mode (`source: api`) reads the outside world, so the stage is volatile: it runs every
//! time and its output digest decides what reruns downstream. Credentials come from the
//! AWS environment variables or profile and never enter params, logs or the artifact.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use pipeline_crowd::amt::{parse_amt_into, AmtBatch, AmtOptions, OnUnknownLabel};
use serde::{Deserialize, Serialize};

use super::{InputDecl, Stage, StageContext, StageError, StageOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum AmtSource {
    /// Batch-results CSV files (input `batches`).
    #[default]
    Batch,
    /// The MTurk requester API (ListHITs / ListAssignmentsForHIT).
    Api,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownLabel {
    /// An answer outside `classes` fails the stage, naming the file and row.
    #[default]
    Error,
    /// Dropped and counted in summary.json.
    Drop,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AmtParams {
    pub source: AmtSource,
    /// The class list, in order; an answer outside it is handled by `on_unknown_label`.
    pub classes: Vec<String>,
    /// AssignmentStatus values kept (Rejected dropped by default).
    pub statuses: Vec<String>,
    /// Keep only the first answer of a worker who answered the same item twice.
    pub dedupe: bool,
    pub on_unknown_label: UnknownLabel,
    /// Column naming the item (default `Input.image_url`, else `HITId`).
    pub item_column: Option<String>,
    /// The question whose answer is the label (`Answer.<question>.label`, or its key in
    /// `Answer.taskAnswers`, in the API: `<question>.label` or its JSON key); needed when a
    /// HIT asks more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    /// With input `images`: this prefix of `Input.image_url` is replaced by the images dir.
    pub image_url_prefix: String,
    /// API mode: "production", "sandbox" or an endpoint URL.
    pub endpoint: String,
    /// API mode: only HITs of this HIT type.
    pub hit_type_id: Option<String>,
    /// API mode: AWS profile (default: `AWS_PROFILE`, else "default"), when the key
    /// variables are not set.
    pub profile: Option<String>,
}

impl Default for AmtParams {
    fn default() -> Self {
        AmtParams {
            source: AmtSource::Batch,
            classes: pipeline_crowd::EMOTIONS.iter().map(|s| s.to_string()).collect(),
            statuses: vec!["Submitted".into(), "Approved".into()],
            dedupe: true,
            on_unknown_label: UnknownLabel::Error,
            item_column: None,
            question: None,
            image_url_prefix: String::new(),
            endpoint: "production".into(),
            hit_type_id: None,
            profile: None,
        }
    }
}

pub struct Amt;

fn batch_files(path: &Path) -> Result<Vec<PathBuf>, StageError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| StageError::io(&d, e))? {
            let p = e.map_err(|e| StageError::io(&d, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|x| x.to_str()).is_some_and(|x| x.eq_ignore_ascii_case("csv")) {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(StageError::bad_file(path, "no .csv batch-results file here"));
    }
    Ok(out)
}

/// Stable, file-name-safe name for an item's image: `<stem>_<8 hex of hash(item)>.<ext>`.
pub fn image_name(item: &str, ext: &str) -> String {
    let last = item.rsplit(['/', '\\']).next().unwrap_or(item);
    let stem = last.rsplit_once('.').map(|(s, _)| s).unwrap_or(last);
    let stem: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(60).collect();
    let h = blake3::hash(item.as_bytes()).to_hex();
    format!("{}_{}.{ext}", if stem.is_empty() { "item" } else { &stem }, &h.as_str()[..8])
}

impl Stage for Amt {
    type Params = AmtParams;
    const KIND: &'static str = "amt";
    // 2: decisions across downloads, several questions refused (a version-1 output could
    // hold rejected answers, or another question's)
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "Fetch AMT answers (batch-results CSV files or the MTurk API) into answers.csv + summary.json + images/";
    const INPUTS: &'static [InputDecl] = &[
        InputDecl { name: "batches", required: false, doc: "batch mode: a batch-results CSV, or a directory / glob of them" },
        InputDecl { name: "images", required: false, doc: "directory holding the images named by Input.image_url minus image_url_prefix" },
    ];

    fn volatile(p: &AmtParams) -> bool {
        p.source == AmtSource::Api
    }

    fn check_params(p: &AmtParams) -> Result<(), StageError> {
        if p.classes.len() < 2 {
            return Err(StageError::bad_param("classes", "at least two classes"));
        }
        pipeline_classes::check_classes(&p.classes).map_err(|e| StageError::bad_param("classes", e))?;
        if p.statuses.is_empty() {
            return Err(StageError::bad_param("statuses", "keep at least one AssignmentStatus"));
        }
        Ok(())
    }

    fn run(p: &AmtParams, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        Self::check_params(p)?;
        let opts = AmtOptions {
            statuses: p.statuses.clone(),
            dedupe: p.dedupe,
            classes: p.classes.clone(),
            on_unknown_label: match p.on_unknown_label {
                UnknownLabel::Error => OnUnknownLabel::Error,
                UnknownLabel::Drop => OnUnknownLabel::Drop,
            },
            item_column: p.item_column.clone(),
            question: p.question.clone(),
        };
        let mut batch = AmtBatch::default();
        let mut sources = Vec::new();
        match p.source {
            AmtSource::Batch => {
                let input = ctx.input("batches")?;
                for f in batch_files(input)? {
                    ctx.cancel.check()?;
                    let text = std::fs::read_to_string(&f).map_err(|e| StageError::io(&f, e))?;
                    let name = f.display().to_string();
                    parse_amt_into(&mut batch, &text, &name, &opts).map_err(|e| StageError::bad_file(&f, e))?;
                    sources.push(f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or(name));
                }
            }
            AmtSource::Api => {
                let creds = pipeline_crowd::mturk::Credentials::from_env_or_profile(p.profile.as_deref())
                    .map_err(|e| StageError::Failed(e.to_string()))?;
                let client = pipeline_crowd::mturk::Client::new(&p.endpoint, creds);
                let recs = client
                    .fetch_records(p.hit_type_id.as_deref(), &p.statuses, p.question.as_deref())
                    .map_err(|e| StageError::Failed(e.to_string()))?;
                // Same filtering as batch files: statuses, classes, dedupe.
                let mut repeats = pipeline_crowd::amt::Repeats::default();
                batch.input_columns = vec!["image_url".into()];
                for r in recs {
                    batch.report.rows += 1;
                    if !p.statuses.contains(&r.status) {
                        *batch.report.dropped_status.entry(r.status.clone()).or_default() += 1;
                        continue;
                    }
                    if !p.classes.contains(&r.label) {
                        if p.on_unknown_label == UnknownLabel::Error {
                            return Err(StageError::Failed(format!(
                                "{} (assignment {}): label \"{}\" is not one of {:?}",
                                r.source, r.assignment_id, r.label, p.classes
                            )));
                        }
                        batch.report.unknown_labels.push((r.source.clone(), r.row, r.label.clone()));
                        continue;
                    }
                    if p.dedupe && repeats.is_repeat(&mut batch.report, &r.worker, &r.item, &r.label) {
                        continue;
                    }
                    batch.report.kept += 1;
                    batch.records.push(r);
                }
                sources.push(format!("mturk:{}", p.endpoint));
            }
        }
        if batch.records.is_empty() {
            return Err(StageError::Failed("no answers left after filtering (statuses, classes)".into()));
        }

        // Images: item -> relative path in the output.
        let mut image_of: HashMap<String, String> = HashMap::new();
        if let Some(dir) = ctx.inputs.get("images") {
            let out_images = ctx.out_dir.join("images");
            std::fs::create_dir_all(&out_images).map_err(|e| StageError::io(&out_images, e))?;
            for r in &batch.records {
                if image_of.contains_key(&r.item) {
                    continue;
                }
                ctx.cancel.check()?;
                let url = r.inputs.iter().find(|(n, _)| n == "image_url").map(|(_, v)| v.as_str()).unwrap_or(&r.item);
                let rel = url.strip_prefix(p.image_url_prefix.as_str()).ok_or_else(|| {
                    StageError::bad_param("image_url_prefix", format!("image_url \"{url}\" does not start with \"{}\"", p.image_url_prefix))
                })?;
                let refused = |why: String| StageError::bad_file(dir, format!("image_url \"{url}\" of item \"{}\" {why}: refused", r.item));
                let src = contained_path(dir, rel).map_err(refused)?;
                // A URL's path as the file system names it: query and fragment cut, `%20` and
                // the like decoded (`my%20face.jpg` was refused beside `my face.jpg`; found by
                // a hostile pass). The name as written is tried first, and the decoded one
                // passes the same containment check.
                let src = match url_file_name(rel) {
                    Some(decoded) if !src.is_file() && decoded != rel => contained_path(dir, &decoded).map_err(refused)?,
                    _ => src,
                };
                if !src.is_file() {
                    return Err(StageError::bad_file(&src, format!("image of item \"{}\" not found", r.item)));
                }
                let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("img").to_ascii_lowercase();
                let name = image_name(&r.item, &ext);
                std::fs::copy(&src, out_images.join(&name)).map_err(|e| StageError::io(&src, e))?;
                image_of.insert(r.item.clone(), format!("images/{name}"));
            }
        }

        // answers.csv
        let path = ctx.out_dir.join("answers.csv");
        let mut w = csv::Writer::from_path(&path).map_err(|e| StageError::bad_file(&path, e))?;
        let mut header: Vec<String> =
            ["item", "worker", "label", "work_time_s", "assignment_status", "hit_id", "assignment_id", "image"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        header.extend(batch.input_columns.iter().map(|c| format!("Input.{c}")));
        w.write_record(&header).map_err(|e| StageError::bad_file(&path, e))?;
        for r in &batch.records {
            let mut row = vec![
                r.item.clone(),
                r.worker.clone(),
                r.label.clone(),
                r.work_time_s.map(|t| t.to_string()).unwrap_or_default(),
                r.status.clone(),
                r.hit_id.clone(),
                r.assignment_id.clone(),
                image_of.get(&r.item).cloned().unwrap_or_default(),
            ];
            for c in &batch.input_columns {
                row.push(r.inputs.iter().find(|(n, _)| n == c).map(|(_, v)| v.clone()).unwrap_or_default());
            }
            w.write_record(&row).map_err(|e| StageError::bad_file(&path, e))?;
        }
        w.flush().map_err(|e| StageError::io(&path, e))?;

        // summary.json
        let answers = batch.to_answers(&p.classes).map_err(|e| StageError::Failed(e.to_string()))?;
        let per_item: Vec<usize> = (0..answers.n_items()).map(|i| answers.item_codes(i).len()).collect();
        let mv = pipeline_crowd::aggregate::soft_majority(&answers);
        let k = answers.n_classes();
        // per-answer agreement: share of answers equal to their item's plurality answer
        let mut with_majority = 0usize;
        for i in 0..answers.n_items() {
            let row = &mv[i * k..(i + 1) * k];
            let best = row.iter().cloned().fold(0.0, f64::max);
            with_majority += answers.item_codes(i).iter().filter(|&&c| row[answers.label_of(c)] >= best - 1e-12).count();
        }
        let n = answers.n_answers().max(1) as f64;
        let pairwise = answers.pairwise_agreement();
        let label_counts: BTreeMap<String, usize> =
            p.classes.iter().cloned().zip(answers.label_counts()).collect();
        let summary = serde_json::json!({
            "sources": sources,
            "classes": p.classes,
            "answers": answers.n_answers(),
            "items": answers.n_items(),
            "workers": answers.n_workers(),
            "answers_per_item": {
                "mean": answers.n_answers() as f64 / answers.n_items().max(1) as f64,
                "min": per_item.iter().min().copied().unwrap_or(0),
                "max": per_item.iter().max().copied().unwrap_or(0),
            },
            "pairwise_agreement": pairwise,
            "agreement_with_plurality": with_majority as f64 / n,
            "label_counts": label_counts,
            "rows_read": batch.report.rows,
            "dropped_by_status": batch.report.dropped_status,
            "duplicates_dropped": batch.report.duplicates,
            "unknown_labels_dropped": batch.report.unknown_labels.iter().map(|(s, r, l)| serde_json::json!({"source": s, "row": r, "label": l})).collect::<Vec<_>>(),
            "images_copied": image_of.len(),
        });
        let sp = ctx.out_dir.join("summary.json");
        std::fs::write(&sp, serde_json::to_string_pretty(&summary).unwrap_or_default()).map_err(|e| StageError::io(&sp, e))?;

        let mut o = StageOutcome::default();
        o.metrics.insert("answers".into(), answers.n_answers() as f64);
        o.metrics.insert("items".into(), answers.n_items() as f64);
        o.metrics.insert("workers".into(), answers.n_workers() as f64);
        o.metrics.insert("agreement".into(), pairwise);
        // in the run record and the summary line, not in summary.json: the output's bytes
        // (and every key downstream) stay as they were
        o.metrics.insert("duplicates_conflicting".into(), batch.report.duplicates_conflicting as f64);
        let conflicting = match batch.report.duplicates_conflicting {
            0 => String::new(),
            c => format!(" ({c} of them another label than the answer kept)"),
        };
        o.summary.push(format!(
            "{} answers on {} items by {} workers; pairwise agreement {:.3}; dropped: {} by status, {} duplicates{conflicting}, {} unknown labels",
            answers.n_answers(),
            answers.n_items(),
            answers.n_workers(),
            pairwise,
            batch.report.dropped_status.values().sum::<usize>(),
            batch.report.duplicates,
            batch.report.unknown_labels.len()
        ));
        Ok(o)
    }
}

/// The file path a URL path names: the query (`?...`) and fragment (`#...`) cut, percent
/// escapes decoded. `None` when an escape decodes to `/`, NUL or bytes that are not UTF-8:
/// such a name is not taken apart into path syntax.
fn url_file_name(rel: &str) -> Option<String> {
    let path = rel.split(['?', '#']).next().unwrap_or(rel);
    let b = path.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // a `%` not followed by two hex digits is taken as it is
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                let v = h * 16 + l;
                if v == b'/' || v == 0 {
                    return None;
                }
                out.push(v);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `root/rel`, if it stays inside `root` after resolving `..` and symlinks: an
/// `Input.image_url` such as `https://x/../../etc/hostname` must not read outside the images.
fn contained_path(root: &std::path::Path, rel: &str) -> Result<std::path::PathBuf, String> {
    let rel = rel.trim_start_matches('/');
    let mut depth = 0usize;
    for part in rel.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." if depth == 0 => return Err("leaves the images directory".into()),
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    if rel.contains('\0') {
        return Err("holds a NUL byte".into());
    }
    let p = root.join(rel);
    // Symlinks inside the images directory may not lead out of it either.
    if let (Ok(real), Ok(real_root)) = (std::fs::canonicalize(&p), std::fs::canonicalize(root)) {
        if !real.starts_with(&real_root) {
            return Err(format!("resolves to {}, outside the images directory", real.display()));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_stage(p: &AmtParams, inputs: BTreeMap<String, PathBuf>, out: &Path) -> Result<StageOutcome, StageError> {
        crate::stages::test_run::<Amt>(p, &inputs, out, out, None)
    }

    fn sim_batch(dir: &Path) -> (PathBuf, PathBuf) {
        let images = dir.join("img");
        let mut items = Vec::new();
        for i in 0..21 {
            let c = pipeline_crowd::EMOTIONS[i % 7];
            let rel = format!("results/{c}/{c}_{i:02}.png");
            std::fs::create_dir_all(images.join(format!("results/{c}"))).unwrap();
            std::fs::write(images.join(&rel), format!("fake image {i}")).unwrap();
            items.push((format!("https://demo.invalid/x/{rel}"), i % 7));
        }
        let csv = pipeline_crowd::simulate_amt_batch(&items, 5, 3, 3);
        let b = dir.join("batches");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("Batch_1_batch_results.csv"), csv).unwrap();
        (b, images)
    }

    #[test]
    fn batch_dir_with_images_gives_answers_summary_and_image_copies() {
        let tmp = tempfile::tempdir().unwrap();
        let (b, images) = sim_batch(tmp.path());
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let p = AmtParams { image_url_prefix: "https://demo.invalid/x/".into(), ..AmtParams::default() };
        let inputs = BTreeMap::from([("batches".to_string(), b), ("images".to_string(), images)]);
        let o = run_stage(&p, inputs, &out).unwrap();
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(s["items"], 21);
        assert_eq!(s["images_copied"], 21);
        assert_eq!(o.metrics["items"], 21.0);
        let text = std::fs::read_to_string(out.join("answers.csv")).unwrap();
        let header = text.lines().next().unwrap();
        assert_eq!(header, "item,worker,label,work_time_s,assignment_status,hit_id,assignment_id,image,Input.image_url");
        assert!(!text.contains(",Rejected,"), "rejected answers are dropped by default");
        let mut r = csv::Reader::from_reader(text.as_bytes());
        for rec in r.records() {
            let rec = rec.unwrap();
            let img = out.join(&rec[7]);
            assert!(img.is_file(), "{}", img.display());
        }
    }

    /// A worker's repeated answers: dropped, and those that disagree with the answer kept
    /// counted (metric and summary line; summary.json keeps its fields).
    #[test]
    fn repeated_answers_are_counted_with_those_that_disagree() {
        let tmp = tempfile::tempdir().unwrap();
        let (b, images) = sim_batch(tmp.path());
        let f = b.join("Batch_1_batch_results.csv");
        // the simulated batch has rows cut short, as AMT's files do
        let mut r = csv::ReaderBuilder::new().flexible(true).from_path(&f).unwrap();
        let header = r.headers().unwrap().clone();
        let label = header.iter().position(|h| h == "Answer.category.label").unwrap();
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        let first = rows.iter().find(|row| row.get(label).is_some_and(|l| !l.is_empty())).unwrap().clone();
        let mut w = csv::WriterBuilder::new().flexible(true).from_path(&f).unwrap();
        w.write_record(&header).unwrap();
        for row in &rows {
            w.write_record(row).unwrap();
        }
        // the first answer again, as it was and with another label
        w.write_record(&first).unwrap();
        let other = if &first[label] == "happy" { "sad" } else { "happy" };
        w.write_record(first.iter().enumerate().map(|(i, v)| if i == label { other } else { v })).unwrap();
        w.flush().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let p = AmtParams { image_url_prefix: "https://demo.invalid/x/".into(), ..AmtParams::default() };
        let o = run_stage(&p, BTreeMap::from([("batches".to_string(), b), ("images".to_string(), images)]), &out).unwrap();
        assert_eq!(o.metrics["duplicates_conflicting"], 1.0);
        assert!(o.summary[0].contains("2 duplicates (1 of them another label than the answer kept)"), "{:?}", o.summary);
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(s["duplicates_dropped"], 2);
    }

    #[test]
    fn missing_image_and_wrong_prefix_are_errors_naming_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (b, images) = sim_batch(tmp.path());
        std::fs::remove_file(images.join("results/fear/fear_02.png")).unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let inputs = BTreeMap::from([("batches".to_string(), b.clone()), ("images".to_string(), images.clone())]);
        let p = AmtParams { image_url_prefix: "https://demo.invalid/x/".into(), ..AmtParams::default() };
        let e = run_stage(&p, inputs.clone(), &out).unwrap_err().to_string();
        assert!(e.contains("fear_02.png"), "{e}");
        let p = AmtParams { image_url_prefix: "https://elsewhere/".into(), ..AmtParams::default() };
        let e = run_stage(&p, inputs, &out).unwrap_err().to_string();
        assert!(e.contains("image_url_prefix"), "{e}");
    }

    #[test]
    fn unknown_label_error_names_the_file_and_row() {
        let tmp = tempfile::tempdir().unwrap();
        let (b, _) = sim_batch(tmp.path());
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let p = AmtParams { classes: vec!["happy".into(), "sad".into()], ..AmtParams::default() };
        let e = run_stage(&p, BTreeMap::from([("batches".to_string(), b.clone())]), &out).unwrap_err().to_string();
        assert!(e.contains("Batch_1_batch_results.csv") && e.contains("row "), "{e}");
        let p = AmtParams { on_unknown_label: UnknownLabel::Drop, ..p };
        run_stage(&p, BTreeMap::from([("batches".to_string(), b)]), &out).unwrap();
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert!(s["unknown_labels_dropped"].as_array().unwrap().len() > 10);
    }

    /// Found by a hostile pass: a class named `../../x` passed, and `augment` wrote its images
    /// (over a user's file) outside its output.
    #[test]
    fn class_names_that_are_paths_or_twins_are_refused() {
        for classes in [vec!["happy", "../../victim"], vec!["happy", "a/b"], vec!["happy", ".."], vec!["Happy", "happy"], vec!["happy", " sad"]] {
            let p = AmtParams { classes: classes.iter().map(|s| s.to_string()).collect(), ..AmtParams::default() };
            let e = Amt::check_params(&p).unwrap_err().to_string();
            assert!(e.contains("classes"), "{classes:?}: {e}");
        }
    }

    #[test]
    fn url_paths_are_decoded_as_a_browser_would_but_never_into_path_syntax() {
        assert_eq!(url_file_name("happy/my%20face.jpg").as_deref(), Some("happy/my face.jpg"));
        assert_eq!(url_file_name("a.jpg?X-Amz-Signature=abc%2F#top").as_deref(), Some("a.jpg"));
        assert_eq!(url_file_name("caf%C3%A9.png").as_deref(), Some("café.png"));
        assert_eq!(url_file_name("100%.png").as_deref(), Some("100%.png"));
        assert_eq!(url_file_name("a%2Fb.png"), None);
        assert_eq!(url_file_name("a%00b.png"), None);
        assert_eq!(url_file_name("%FF.png"), None);
        // `..` decoded is still checked by contained_path, as any other name
        let d = tempfile::tempdir().unwrap();
        assert!(contained_path(d.path(), &url_file_name("%2e%2e/%2e%2e/etc/hostname").unwrap()).is_err());
    }

    #[test]
    fn api_mode_is_volatile_and_batch_mode_is_not() {
        assert!(Amt::volatile(&AmtParams { source: AmtSource::Api, ..AmtParams::default() }));
        assert!(!Amt::volatile(&AmtParams::default()));
    }

    #[test]
    fn image_names_are_stable_and_distinct() {
        let a = image_name("https://x/results/fear/fear_01.jpg", "jpg");
        assert_eq!(a, image_name("https://x/results/fear/fear_01.jpg", "jpg"));
        assert!(a.starts_with("fear_01_") && a.ends_with(".jpg"));
        assert_ne!(a, image_name("https://x/round2/fear/fear_01.jpg", "jpg"));
    }

    #[test]
    fn image_urls_that_leave_the_images_directory_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("img");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(t.path().join("secret"), "s").unwrap();
        assert!(contained_path(&root, "a/../a/x.png").is_ok());
        for bad in ["../secret", "a/../../secret", "/../../../../etc/hostname", "a\\..\\..\\secret"] {
            assert!(contained_path(&root, bad).is_err(), "{bad}");
        }
        std::os::unix::fs::symlink(t.path().join("secret"), root.join("a/link")).unwrap();
        assert!(contained_path(&root, "a/link").unwrap_err().contains("outside"));
    }
}
