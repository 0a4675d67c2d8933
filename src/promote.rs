//! Model promotion: after a successful run, copy chosen stage outputs to a stable path
//! (e.g. `models/current/`) only when the chosen metric did not get worse.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::engine::{RunRecord, RunStatus};
use crate::spec::Promote;

/// What `promotion.json` in the destination records, and what the run records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    pub promoted: bool,
    pub metric: String,
    pub value: Option<f64>,
    /// Value of the currently promoted model before this run.
    pub previous: Option<f64>,
    pub run: u64,
    pub reason: String,
    pub to: String,
}

fn better_or_equal(goal: &str, new: f64, old: f64) -> bool {
    if goal == "min" {
        new <= old
    } else {
        new >= old
    }
}

/// Decide and, if the metric did not get worse, copy the outputs. Never called on failed runs.
pub fn promote(cache: &Cache, base_dir: &Path, cfg: &Promote, record: &RunRecord) -> Result<Decision> {
    let to: PathBuf = if Path::new(&cfg.to).is_absolute() { PathBuf::from(&cfg.to) } else { base_dir.join(&cfg.to) };
    let value = record.metrics().get(&cfg.metric).copied();
    let previous: Option<Decision> = std::fs::read(to.join("promotion.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let prev_value = previous.as_ref().and_then(|d| d.value);
    let mut d = Decision {
        promoted: false,
        metric: cfg.metric.clone(),
        value,
        previous: prev_value,
        run: record.id,
        reason: String::new(),
        to: to.display().to_string(),
    };
    if record.status != RunStatus::Ok {
        d.reason = "the run did not succeed".into();
        return Ok(d);
    }
    let Some(v) = value else {
        d.reason = format!("metric {} not produced by this run", cfg.metric);
        return Ok(d);
    };
    if let Some(old) = prev_value {
        if !better_or_equal(&cfg.goal, v, old) {
            d.reason = format!("{} {old:.4} -> {v:.4} is worse; kept the current model", cfg.metric);
            return Ok(d);
        }
    }
    // Build the new directory beside the old one, then swap, so readers never see half of it.
    let parent = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".{}.new-{}", to.file_name().and_then(|f| f.to_str()).unwrap_or("promoted"), std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    for stage in std::iter::once(&cfg.stage).chain(cfg.with.iter()) {
        let s = record.stage(stage).ok_or_else(|| anyhow!("promote: stage {stage} is not in run {}", record.id))?;
        let out = s.output.as_ref().ok_or_else(|| anyhow!("promote: stage {stage} has no output in run {}", record.id))?;
        cache.export(out, &staging.join(stage))?;
    }
    d.promoted = true;
    d.reason = match prev_value {
        Some(old) => format!("{} {old:.4} -> {v:.4}", cfg.metric),
        None => format!("first promoted model ({} {v:.4})", cfg.metric),
    };
    std::fs::write(staging.join("promotion.json"), serde_json::to_vec_pretty(&d)?)?;
    let old = parent.join(format!(".{}.old-{}", to.file_name().and_then(|f| f.to_str()).unwrap_or("promoted"), std::process::id()));
    if to.exists() {
        std::fs::rename(&to, &old).with_context(|| format!("moving {} aside", to.display()))?;
    }
    std::fs::rename(&staging, &to).with_context(|| format!("installing {}", to.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::better_or_equal;

    #[test]
    fn goal_direction() {
        assert!(better_or_equal("max", 0.5, 0.5));
        assert!(!better_or_equal("max", 0.4, 0.5));
        assert!(better_or_equal("min", 0.4, 0.5));
        assert!(!better_or_equal("min", 0.6, 0.5));
    }
}
