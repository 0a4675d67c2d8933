//! `pipeline runs`: the run history recorded in the cache.

use anyhow::{anyhow, Result};
use comfy_table::Cell;

use crate::cache::Cache;
use crate::cli::{fmt_ms, table};
use crate::engine::{RunRecord, StageStatus};

pub fn list(cache: &Cache, last: usize) -> String {
    let mut runs: Vec<RunRecord> = cache.runs();
    runs.sort_by(|a, b| b.id.cmp(&a.id));
    let mut t = table(&["run", "pipeline", "trigger", "status", "ran", "cached", "failed", "time", "metrics"]);
    for r in runs.iter().take(last) {
        let count = |s: StageStatus| r.stages.iter().filter(|x| x.status == s).count();
        let metrics: Vec<String> = r.metrics().iter().map(|(k, v)| format!("{k}={v:.3}")).collect();
        t.add_row(vec![
            Cell::new(r.id),
            Cell::new(&r.pipeline),
            Cell::new(&r.trigger),
            Cell::new(format!("{:?}", r.status).to_lowercase()),
            Cell::new(count(StageStatus::Ran)),
            Cell::new(count(StageStatus::Cached)),
            Cell::new(count(StageStatus::Failed)),
            Cell::new(r.ended_ms.map(|e| fmt_ms(e.saturating_sub(r.started_ms))).unwrap_or_else(|| "running".into())),
            Cell::new(metrics.join(" ")),
        ]);
    }
    format!("{t}\n")
}

pub fn show(cache: &Cache, id: u64) -> Result<String> {
    let r: RunRecord = cache.run(id).ok_or_else(|| anyhow!("no run {id} in {}", cache.root().display()))?;
    let mut out = format!(
        "run {} of {} ({}), trigger {}, status {}\n",
        r.id,
        r.pipeline,
        r.file,
        r.trigger,
        format!("{:?}", r.status).to_lowercase()
    );
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
            None => s.outcome.metrics.iter().map(|(k, v)| format!("{k}={v:.3}")).collect::<Vec<_>>().join(" "),
        };
        t.add_row(vec![
            Cell::new(&s.name),
            Cell::new(&s.kind),
            Cell::new(s.status.as_str()),
            Cell::new(fmt_ms(s.duration_ms)),
            Cell::new(s.key.as_deref().map(|k| &k[..12]).unwrap_or("")),
            Cell::new(info),
        ]);
    }
    out.push_str(&format!("{t}\n"));
    out.push_str(&crate::executor::describe_jobs(&r));
    for (name, e) in &long_errors {
        out.push_str(&format!("\nerror of stage {name}:\n{}\n", crate::text::clean(e)));
    }
    if let Some(p) = &r.promotion {
        out.push_str(&format!("promotion: {p}\n"));
    }
    Ok(out)
}

/// What changed between two runs: params, input digests, flipped labels, metrics.
pub fn diff(cache: &Cache, a: u64, b: u64) -> Result<String> {
    let ra: RunRecord = cache.run(a).ok_or_else(|| anyhow!("no run {a}"))?;
    let rb: RunRecord = cache.run(b).ok_or_else(|| anyhow!("no run {b}"))?;
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
                    lines.push(format!("input \"{name}\" {} -> {}", &o[..12.min(o.len())], &d[..12.min(d.len())]));
                }
            }
        }
        if sa.output != sb.output && sa.output.is_some() && sb.output.is_some() {
            lines.push("output changed".into());
            if sb.kind == "dawid-skene" {
                if let Some(f) = flipped_labels(cache, sa.output.as_deref(), sb.output.as_deref()) {
                    lines.push(f);
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
            Some(va) if (va - vb).abs() > 1e-12 => out.push_str(&format!("{k} {va:.4} -> {vb:.4}\n")),
            Some(va) => out.push_str(&format!("{k} {va:.4} (unchanged)\n")),
            None => out.push_str(&format!("{k} {vb:.4} (new)\n")),
        }
    }
    if changes == 0 {
        out.push_str("no params, inputs or outputs changed\n");
    }
    Ok(out)
}

/// Items whose hard label differs between two `dawid-skene` outputs (`labels.csv`: item,label,...).
fn flipped_labels(cache: &Cache, a: Option<&str>, b: Option<&str>) -> Option<String> {
    let read = |o: &str| -> Option<std::collections::BTreeMap<String, String>> {
        let v = cache.view(o).ok()?;
        let mut r = csv::Reader::from_path(v.join("labels.csv")).ok()?;
        let h = r.headers().ok()?.clone();
        let (ii, li) = (h.iter().position(|c| c == "item")?, h.iter().position(|c| c == "label")?);
        Some(r.records().filter_map(|x| x.ok()).map(|x| (x[ii].to_string(), x[li].to_string())).collect())
    };
    let (la, lb) = (read(a?)?, read(b?)?);
    let flips: Vec<String> = lb
        .iter()
        .filter_map(|(item, l)| la.get(item).filter(|o| *o != l).map(|o| format!("{item}: {o} -> {l}")))
        .collect();
    let shown: Vec<&str> = flips.iter().take(10).map(|s| s.as_str()).collect();
    Some(format!(
        "{} labels flipped{}{}",
        flips.len(),
        if shown.is_empty() { "" } else { ": " },
        shown.join("; ") + if flips.len() > 10 { "; ..." } else { "" }
    ))
}
