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
    for s in &r.stages {
        let info = s.error.clone().unwrap_or_else(|| s.outcome.metrics.iter().map(|(k, v)| format!("{k}={v:.3}")).collect::<Vec<_>>().join(" "));
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
    if let Some(p) = &r.promotion {
        out.push_str(&format!("promotion: {p}\n"));
    }
    Ok(out)
}
