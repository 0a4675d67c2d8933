//! `pipeline runs`: the run history recorded in the cache.
//!
//! Most functions take the records themselves, not the cache: the web view (`crate::ui`)
//! reads them from `runs/*.json` without opening the database.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use comfy_table::Cell;
use serde::Serialize;
use serde_json::Value;

use crate::cache::Cache;
use crate::engine::{RunRecord, StageStatus};
use crate::fmt::{fmt_ms, fmt_num, table};

#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error("no run {id} in {}", root.display())]
    NoRun { id: u64, root: PathBuf },
    #[error("runs compare: name at least two runs (got {0})")]
    TooFew(usize),
}

/// The metric columns `pipeline runs` shows unless `--metrics` says otherwise.
pub const DEFAULT_METRICS: [&str; 3] = ["accuracy", "macro_f1", "agreement"];

/// Full metric names (`stage.metric`) that the column specs pick among `known`: a spec with a
/// dot is one exact name, a bare name matches that metric of every stage.
pub fn metric_columns(specs: &[String], known: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    let mut cols = Vec::new();
    let mut unmatched = Vec::new();
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let hits: Vec<&String> = known.iter().filter(|k| *k == spec || k.rsplit_once('.').map(|(_, m)| m == spec).unwrap_or(false)).collect();
        if hits.is_empty() {
            unmatched.push(spec.to_string());
        }
        for h in hits {
            if !cols.contains(h) {
                cols.push(h.clone());
            }
        }
    }
    (cols, unmatched)
}

pub fn status_str(r: &RunRecord) -> String {
    format!("{:?}", r.status).to_lowercase()
}

pub fn count(r: &RunRecord, s: StageStatus) -> usize {
    r.stages.iter().filter(|x| x.status == s).count()
}

/// `2026-12-01 21:45:07` in the local time zone.
pub fn fmt_time(ms: u64) -> String {
    use chrono::TimeZone;
    chrono::Local.timestamp_millis_opt(ms as i64).single().map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

pub fn duration(r: &RunRecord) -> String {
    r.ended_ms.map(|e| fmt_ms(e.saturating_sub(r.started_ms))).unwrap_or_else(|| "running".into())
}

/// The newest `last` runs with the key metrics as columns. `specs` as [`metric_columns`];
/// specs no shown run has are named below the table.
pub fn list_records(mut runs: Vec<RunRecord>, last: usize, specs: &[String], explicit: bool) -> String {
    runs.sort_by_key(|r| std::cmp::Reverse(r.id));
    runs.truncate(last);
    let known: BTreeSet<String> = runs.iter().flat_map(|r| r.metrics().into_keys()).collect();
    let (cols, unmatched) = metric_columns(specs, &known);
    let mut headers = vec!["run", "pipeline", "started", "trigger", "status", "ran", "cached", "failed", "time"];
    headers.extend(cols.iter().map(|c| c.as_str()));
    let mut t = table(&headers);
    for r in &runs {
        let m = r.metrics();
        let mut row = vec![
            Cell::new(r.id),
            Cell::new(&r.pipeline),
            Cell::new(fmt_time(r.started_ms)),
            Cell::new(&r.trigger),
            Cell::new(status_str(r)),
            Cell::new(count(r, StageStatus::Ran)),
            Cell::new(count(r, StageStatus::Cached)),
            Cell::new(count(r, StageStatus::Failed)),
            Cell::new(duration(r)),
        ];
        row.extend(cols.iter().map(|c| Cell::new(m.get(c).map(|v| fmt_num(*v)).unwrap_or_default())));
        t.add_row(row);
    }
    let mut out = format!("{t}\n");
    if explicit && !unmatched.is_empty() {
        out.push_str(&format!(
            "no listed run has the metric {} (known: {})\n",
            unmatched.join(", "),
            if known.is_empty() { "none".to_string() } else { known.iter().cloned().collect::<Vec<_>>().join(", ") }
        ));
    }
    out
}

pub fn list(cache: &Cache, last: usize, metrics: Option<&str>) -> String {
    let specs: Vec<String> = match metrics {
        Some(m) => m.split(',').map(|s| s.to_string()).collect(),
        None => DEFAULT_METRICS.iter().map(|s| s.to_string()).collect(),
    };
    let runs: Vec<RunRecord> = cache.runs();
    // Runs recorded before `runs/<id>.json` existed: written once, for `pipeline ui`.
    for r in runs.iter().filter(|r| !cache.root().join("runs").join(format!("{}.json", r.id)).exists()) {
        let _ = cache.put_run(r.id, r);
    }
    list_records(runs, last, &specs, metrics.is_some())
}

fn get(cache: &Cache, id: u64) -> Result<RunRecord, RunsError> {
    cache.run(id).ok_or_else(|| RunsError::NoRun { id, root: cache.root().to_path_buf() })
}

pub fn show(cache: &Cache, id: u64) -> Result<String, RunsError> {
    Ok(show_record(&get(cache, id)?))
}

pub fn show_record(r: &RunRecord) -> String {
    let mut out = format!("run {} of {} ({}), trigger {}, status {}\n", r.id, r.pipeline, r.file, r.trigger, status_str(r));
    if !r.overrides.is_empty() {
        out.push_str(&format!("overrides: {}\n", r.overrides.join(" ")));
    }
    let mut t = table(&["stage", "kind", "status", "time", "key", "metrics / error"]);
    let mut long_errors = Vec::new();
    for s in &r.stages {
        // A long error would make every row of the table as tall: shown in full below it.
        let info = match &s.error {
            Some(e) if e.len() > 200 || e.lines().count() > 3 => {
                long_errors.push((s.name.clone(), e.clone()));
                format!("{}... (below)", crate::text::cap(e.lines().next().unwrap_or(""), 120).trim_end())
            }
            Some(e) => e.clone(),
            None => s.outcome.metrics.iter().map(|(k, v)| format!("{k}={}", fmt_num(*v))).collect::<Vec<_>>().join(" "),
        };
        t.add_row(vec![
            Cell::new(&s.name),
            Cell::new(&s.kind),
            Cell::new(s.status.as_str()),
            Cell::new(fmt_ms(s.duration_ms)),
            Cell::new(s.key.as_deref().map(|k| &k[..12.min(k.len())]).unwrap_or("")),
            Cell::new(info),
        ]);
    }
    out.push_str(&format!("{t}\n"));
    out.push_str(&crate::executor::describe_jobs(r));
    for (name, e) in &long_errors {
        out.push_str(&format!("\nerror of stage {name}:\n{}\n", crate::text::clean(e)));
    }
    if let Some(p) = &r.promotion {
        out.push_str(&format!("promotion: {p}\n"));
    }
    out
}

/// What changed between two runs: params, input digests, flipped labels, metrics.
pub fn diff(cache: &Cache, a: u64, b: u64) -> Result<String, RunsError> {
    let (ra, rb) = (get(cache, a)?, get(cache, b)?);
    Ok(diff_records(&ra, &rb, &|output: &str, path: &str| read_artifact_file(cache, output, path)))
}

/// A file of an artifact, read from its blob (no view is built).
pub fn read_artifact_file(cache: &Cache, output: &str, path: &str) -> Option<Vec<u8>> {
    let m = cache.manifest(output).ok()??;
    let f = m.files.iter().find(|f| f.path == path)?;
    std::fs::read(cache.blob_file(&f.digest)).ok()
}

/// `read(output digest, path)` reads a file of an artifact (for the flipped labels).
pub fn diff_records(ra: &RunRecord, rb: &RunRecord, read: &dyn Fn(&str, &str) -> Option<Vec<u8>>) -> String {
    let (a, b) = (ra.id, rb.id);
    let mut out = format!("run {a} -> run {b}\n");
    let mut changes = 0;
    for sb in &rb.stages {
        let Some(sa) = ra.stage(&sb.name) else {
            out.push_str(&format!("{}: new stage\n", sb.name));
            changes += 1;
            continue;
        };
        let mut lines = Vec::new();
        crate::plan::diff_json("params", &sa.params, &sb.params, &mut lines);
        for (name, d) in &sb.inputs {
            if let Some(o) = sa.inputs.get(name) {
                if o != d {
                    lines.push(format!("input `{name}` {} -> {}", &o[..12.min(o.len())], &d[..12.min(d.len())]));
                }
            }
        }
        if sa.output != sb.output && sa.output.is_some() && sb.output.is_some() {
            lines.push("output changed".into());
            if sb.kind == "dawid-skene" {
                if let Some(f) = flipped_labels(read, sa.output.as_deref(), sb.output.as_deref()) {
                    lines.push(f.describe());
                }
            }
        }
        for l in lines {
            out.push_str(&format!("{}: {l}\n", sb.name));
            changes += 1;
        }
    }
    let (ma, mb) = (ra.metrics(), rb.metrics());
    for (k, vb) in &mb {
        match ma.get(k) {
            Some(va) if (va - vb).abs() > 1e-12 => out.push_str(&format!("{k} {} -> {}\n", fmt_num(*va), fmt_num(*vb))),
            Some(va) => out.push_str(&format!("{k} {} (unchanged)\n", fmt_num(*va))),
            None => out.push_str(&format!("{k} {} (new)\n", fmt_num(*vb))),
        }
    }
    if changes == 0 {
        out.push_str("no params, inputs or outputs changed\n");
    }
    out
}

/// Items whose hard label differs between two `dawid-skene` outputs.
#[derive(Debug, Clone, Serialize)]
pub struct Flips {
    pub count: usize,
    /// The first few, `item: old -> new`.
    pub first: Vec<String>,
}

impl Flips {
    pub fn describe(&self) -> String {
        format!(
            "{} labels flipped{}{}{}",
            self.count,
            if self.first.is_empty() { "" } else { ": " },
            self.first.join("; "),
            if self.count > self.first.len() { "; ..." } else { "" }
        )
    }
}

/// Flipped labels between two `labels.csv` (item,label,...) of `dawid-skene` outputs.
pub fn flipped_labels(read: &dyn Fn(&str, &str) -> Option<Vec<u8>>, a: Option<&str>, b: Option<&str>) -> Option<Flips> {
    let labels = |o: &str| -> Option<BTreeMap<String, String>> {
        let bytes = read(o, "labels.csv")?;
        let mut r = csv::Reader::from_reader(bytes.as_slice());
        let h = r.headers().ok()?.clone();
        let (ii, li) = (h.iter().position(|c| c == "item")?, h.iter().position(|c| c == "label")?);
        Some(r.records().filter_map(|x| x.ok()).filter(|x| x.len() > ii.max(li)).map(|x| (x[ii].to_string(), x[li].to_string())).collect())
    };
    let (la, lb) = (labels(a?)?, labels(b?)?);
    let flips: Vec<String> = lb
        .iter()
        .filter_map(|(item, l)| la.get(item).filter(|o| *o != l).map(|o| format!("{item}: {o} -> {l}")))
        .collect();
    Some(Flips { count: flips.len(), first: flips.into_iter().take(10).collect() })
}

// ---------- compare ----------

/// Several runs side by side, as `dvc exp show`: the params and inputs that differ, every
/// metric. The shape of `runs compare --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub runs: Vec<RunHead>,
    /// `stage.param.path` -> value in each run (null where the run lacks it); differing only.
    pub params: Vec<CompareRow<Value>>,
    /// `stage <- input` -> content digest in each run; differing only.
    pub inputs: Vec<CompareRow<Option<String>>>,
    /// `stage.metric` -> value in each run, every metric any of them has.
    pub metrics: Vec<CompareRow<Option<f64>>>,
    /// `dawid-skene` stages: labels flipped from the first run to each later one.
    pub flipped: Vec<CompareRow<Option<Flips>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunHead {
    pub id: u64,
    pub pipeline: String,
    pub status: String,
    pub trigger: String,
    pub started_ms: u64,
    pub duration_ms: Option<u64>,
    pub overrides: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareRow<T> {
    pub name: String,
    pub values: Vec<T>,
}

/// Leaf values of a params object as `prefix.path` -> value (arrays are leaves).
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                flatten(&format!("{prefix}.{k}"), x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

pub fn compare_records(runs: &[RunRecord], read: &dyn Fn(&str, &str) -> Option<Vec<u8>>) -> Comparison {
    let heads = runs
        .iter()
        .map(|r| RunHead {
            id: r.id,
            pipeline: r.pipeline.clone(),
            status: status_str(r),
            trigger: r.trigger.clone(),
            started_ms: r.started_ms,
            duration_ms: r.ended_ms.map(|e| e.saturating_sub(r.started_ms)),
            overrides: r.overrides.clone(),
        })
        .collect();
    // Stage names in first-seen order.
    let mut stages: Vec<&str> = Vec::new();
    for s in runs.iter().flat_map(|r| &r.stages) {
        if !stages.contains(&s.name.as_str()) {
            stages.push(&s.name);
        }
    }
    let mut params = Vec::new();
    let mut inputs = Vec::new();
    let mut flipped = Vec::new();
    for name in &stages {
        let flat: Vec<BTreeMap<String, Value>> = runs
            .iter()
            .map(|r| {
                let mut m = BTreeMap::new();
                if let Some(s) = r.stage(name) {
                    flatten(name, &s.params, &mut m);
                }
                m
            })
            .collect();
        let paths: BTreeSet<&String> = flat.iter().flat_map(|m| m.keys()).collect();
        for p in paths {
            let values: Vec<Value> = flat.iter().map(|m| m.get(p).cloned().unwrap_or(Value::Null)).collect();
            if values.iter().any(|v| v != &values[0]) {
                params.push(CompareRow { name: p.clone(), values });
            }
        }
        let names: BTreeSet<&String> = runs.iter().filter_map(|r| r.stage(name)).flat_map(|s| s.inputs.keys()).collect();
        for i in names {
            let values: Vec<Option<String>> = runs.iter().map(|r| r.stage(name).and_then(|s| s.inputs.get(i).cloned())).collect();
            if values.iter().any(|v| v != &values[0]) {
                inputs.push(CompareRow { name: format!("{name} <- {i}"), values });
            }
        }
        let first = runs.first().and_then(|r| r.stage(name));
        if first.map(|s| s.kind == "dawid-skene").unwrap_or(false) {
            let a = first.and_then(|s| s.output.as_deref());
            let values: Vec<Option<Flips>> = runs.iter().map(|r| flipped_labels(read, a, r.stage(name).and_then(|s| s.output.as_deref()))).collect();
            if values.iter().skip(1).any(|f| f.as_ref().map(|f| f.count > 0).unwrap_or(false)) {
                flipped.push(CompareRow { name: format!("{name} labels flipped (vs run {})", runs[0].id), values });
            }
        }
    }
    let all: Vec<BTreeMap<String, f64>> = runs.iter().map(|r| r.metrics()).collect();
    let keys: BTreeSet<&String> = all.iter().flat_map(|m| m.keys()).collect();
    let metrics = keys.into_iter().map(|k| CompareRow { name: k.clone(), values: all.iter().map(|m| m.get(k).copied()).collect() }).collect();
    Comparison { runs: heads, params, inputs, metrics, flipped }
}

/// A JSON value in a table cell: strings bare, null as `-`.
pub fn show_value(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().map(fmt_num).unwrap_or_else(|| n.to_string()),
        other => other.to_string(),
    }
}

pub fn render_comparison(c: &Comparison) -> String {
    let ids: Vec<String> = c.runs.iter().map(|r| format!("run {}", r.id)).collect();
    let mut headers = vec![""];
    headers.extend(ids.iter().map(|s| s.as_str()));
    let mut t = table(&headers);
    let row = |name: &str, vals: Vec<String>| {
        let mut r = vec![Cell::new(name)];
        r.extend(vals.into_iter().map(Cell::new));
        r
    };
    t.add_row(row("pipeline", c.runs.iter().map(|r| r.pipeline.clone()).collect()));
    t.add_row(row("started", c.runs.iter().map(|r| fmt_time(r.started_ms)).collect()));
    t.add_row(row("status", c.runs.iter().map(|r| r.status.clone()).collect()));
    t.add_row(row("time", c.runs.iter().map(|r| r.duration_ms.map(fmt_ms).unwrap_or_else(|| "running".into())).collect()));
    if c.runs.iter().any(|r| !r.overrides.is_empty()) {
        t.add_row(row("--set", c.runs.iter().map(|r| r.overrides.join(" ")).collect()));
    }
    for p in &c.params {
        t.add_row(row(&p.name, p.values.iter().map(show_value).collect()));
    }
    for i in &c.inputs {
        t.add_row(row(&i.name, i.values.iter().map(|d| d.as_deref().map(|d| d[..12.min(d.len())].to_string()).unwrap_or_else(|| "-".into())).collect()));
    }
    for f in &c.flipped {
        t.add_row(row(&f.name, f.values.iter().map(|x| x.as_ref().map(|x| x.count.to_string()).unwrap_or_else(|| "-".into())).collect()));
    }
    for m in &c.metrics {
        t.add_row(row(&m.name, m.values.iter().map(|v| v.map(fmt_num).unwrap_or_else(|| "-".into())).collect()));
    }
    let mut out = format!("{t}\n");
    if c.params.is_empty() && c.inputs.is_empty() {
        out.push_str("no params or inputs differ\n");
    }
    out
}

pub fn compare(cache: &Cache, ids: &[u64]) -> Result<Comparison, RunsError> {
    if ids.len() < 2 {
        return Err(RunsError::TooFew(ids.len()));
    }
    let runs = ids.iter().map(|&id| get(cache, id)).collect::<Result<Vec<_>, _>>()?;
    Ok(compare_records(&runs, &|o: &str, p: &str| read_artifact_file(cache, o, p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{RunStatus, StageRun};
    use serde_json::json;

    fn stage(name: &str, params: Value, metrics: &[(&str, f64)]) -> StageRun {
        let mut s: StageRun = serde_json::from_value(json!({
            "name": name, "kind": "command", "status": "ran", "duration_ms": 1200, "key": "k".repeat(64), "output": null, "params": params
        }))
        .unwrap();
        s.outcome.metrics = metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        s
    }

    fn record(id: u64, stages: Vec<StageRun>) -> RunRecord {
        RunRecord {
            id,
            pipeline: "p".into(),
            file: "p.json".into(),
            trigger: "manual".into(),
            started_ms: 1_700_000_000_000 + id,
            ended_ms: Some(1_700_000_002_000 + id),
            status: RunStatus::Ok,
            stages,
            overrides: vec![],
            promotion: None,
        }
    }

    #[test]
    fn bare_metric_names_match_every_stage_and_dotted_names_one() {
        let known: BTreeSet<String> = ["amt.agreement", "dawid-skene.agreement", "evaluate.accuracy", "evaluate.macro_f1"].iter().map(|s| s.to_string()).collect();
        let specs: Vec<String> = ["accuracy", "agreement", "dawid-skene.agreement", "nope"].iter().map(|s| s.to_string()).collect();
        let (cols, un) = metric_columns(&specs, &known);
        assert_eq!(cols, ["evaluate.accuracy", "amt.agreement", "dawid-skene.agreement"]);
        assert_eq!(un, ["nope"]);
    }

    #[test]
    fn list_shows_key_metrics_as_columns_with_counts_as_integers() {
        let runs = vec![
            record(1, vec![stage("amt", json!({}), &[("answers", 2078.0), ("agreement", 0.5)])]),
            record(2, vec![stage("amt", json!({}), &[("answers", 2078.0), ("agreement", 0.625)]), stage("evaluate", json!({}), &[("accuracy", 0.71428)])]),
        ];
        let specs: Vec<String> = DEFAULT_METRICS.iter().map(|s| s.to_string()).collect();
        let out = list_records(runs.clone(), 20, &specs, false);
        let header = out.lines().nth(1).unwrap();
        assert!(header.contains("evaluate.accuracy") && header.contains("amt.agreement"), "{out}");
        assert!(!header.contains("answers") && !out.contains("2078"), "not a default column: {out}");
        assert!(out.contains("0.714") && out.contains("0.625"), "{out}");
        // Newest first.
        assert!(out.find("│ 2 ").unwrap() < out.find("│ 1 ").unwrap(), "{out}");
        let out = list_records(runs, 20, &["answers".to_string(), "f1".to_string()], true);
        assert!(out.contains("2078") && !out.contains("2078.0"), "{out}");
        assert!(out.contains("no listed run has the metric f1"), "{out}");
    }

    #[test]
    fn compare_keeps_only_differing_params_and_every_metric() {
        let a = record(1, vec![stage("train", json!({"lr": 0.001, "epochs": 30, "opt": {"beta": 0.9}}), &[("val_accuracy", 0.6)])]);
        let b = record(2, vec![stage("train", json!({"lr": 0.01, "epochs": 30, "opt": {"beta": 0.9}}), &[("val_accuracy", 0.7)])]);
        let c = record(3, vec![stage("train", json!({"lr": 0.01, "epochs": 30, "opt": {"beta": 0.95}}), &[])]);
        let cmp = compare_records(&[a, b, c], &|_, _| None);
        let names: Vec<&str> = cmp.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["train.lr", "train.opt.beta"]);
        assert_eq!(cmp.metrics[0].values, [Some(0.6), Some(0.7), None]);
        let text = render_comparison(&cmp);
        assert!(text.contains("train.lr") && text.contains("0.010") && !text.contains("train.epochs"), "{text}");
        let j = serde_json::to_value(&cmp).unwrap();
        assert_eq!(j["params"][0]["values"][1], json!(0.01));
        assert_eq!(j["runs"][2]["id"], json!(3));
    }
}
