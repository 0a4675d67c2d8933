//! Model promotion: after a successful run, copy chosen stage outputs to a stable path
//! (e.g. `models/current/`) only when the chosen metric did not get worse.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::store::absolute;
use crate::cache::{Cache, CacheError};
use crate::engine::{RunRecord, RunStatus};
use crate::spec::Promote;

/// The marker promotion writes into every directory it installs. Only a directory holding
/// one (or an empty or absent one) is ever replaced.
pub const MARKER: &str = "promotion.json";

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("promote.to {to:?}: {why}")]
    BadTarget { to: String, why: String },
    #[error("promote: {0}")]
    Missing(String),
    #[error("promote: {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("promote: {0}")]
    Cache(#[from] CacheError),
}

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

/// The directory `to` names, if promotion may replace it: not empty, not the pipeline's
/// directory nor above it, not in (or above) the cache, not a symlink, and either absent,
/// empty, or a directory promotion installed earlier (it holds our [`MARKER`]).
/// Checked before a run starts and again before the swap.
pub fn check_target(cache_root: &Path, base_dir: &Path, to: &str) -> Result<PathBuf, PromoteError> {
    let bad = |why: String| PromoteError::BadTarget { to: to.to_string(), why };
    if to.trim().is_empty() {
        return Err(bad("is empty; name a directory of its own, e.g. \"models/current\"".into()));
    }
    let raw = if Path::new(to).is_absolute() { PathBuf::from(to) } else { base_dir.join(to) };
    if raw.symlink_metadata().map(|m| m.file_type().is_symlink()).unwrap_or(false) {
        return Err(bad(format!("{} is a symlink; promote to a real directory (promotion replaces the directory it names)", raw.display())));
    }
    let target = absolute(&raw);
    let base = absolute(base_dir);
    let cache = absolute(cache_root);
    if base.starts_with(&target) {
        return Err(bad(format!(
            "{} is the pipeline's directory or above it: promotion replaces the directory it names; use a subdirectory such as \"models/current\"",
            target.display()
        )));
    }
    if target.starts_with(&cache) || cache.starts_with(&target) {
        return Err(bad(format!("{} is inside the cache {} (or contains it); promote outside the cache", target.display(), cache.display())));
    }
    match std::fs::symlink_metadata(&target) {
        Err(_) => Ok(target),
        Ok(m) if !m.is_dir() => Err(bad(format!("{} exists and is not a directory", target.display()))),
        Ok(_) => {
            let ours = std::fs::read(target.join(MARKER)).ok().and_then(|b| serde_json::from_slice::<Decision>(&b).ok()).is_some();
            let empty = std::fs::read_dir(&target).map(|mut d| d.next().is_none()).unwrap_or(false);
            if ours || empty {
                Ok(target)
            } else {
                Err(bad(format!(
                    "{} is a directory promotion did not create (it has no {MARKER}) and is not empty: it would be replaced; choose a new directory, or empty it yourself",
                    target.display()
                )))
            }
        }
    }
}

/// Decide and, if the metric did not get worse, copy the outputs. Never called on failed runs.
pub fn promote(cache: &Cache, base_dir: &Path, cfg: &Promote, record: &RunRecord) -> Result<Decision, PromoteError> {
    let to = check_target(cache.root(), base_dir, &cfg.to)?;
    let value = record.metrics().get(&cfg.metric).copied();
    let previous: Option<Decision> = std::fs::read(to.join(MARKER)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    // a value of another metric is no bar (a changed `metric` compared a label statistic
    // against the old accuracy; found by a hostile pass)
    let prev_value = previous.as_ref().filter(|d| d.metric == cfg.metric).and_then(|d| d.value);
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
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PromoteError::Io { path, source }
    };
    // Build the new directory beside the old one, then swap, so readers never see half of it.
    let parent = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = to.file_name().and_then(|f| f.to_str()).unwrap_or("promoted");
    let staging = parent.join(format!(".{name}.new-{}", std::process::id()));
    let _ = crate::cache::ingest::remove_tree(&staging);
    // A failure leaves no staging copy behind (a hostile pass found full copies piling up).
    let staged = std::iter::once(&cfg.stage).chain(cfg.with.iter()).try_for_each(|stage| {
        let s = record.stage(stage).ok_or_else(|| PromoteError::Missing(format!("stage {stage} is not in run {}", record.id)))?;
        let out = s.output.as_ref().ok_or_else(|| PromoteError::Missing(format!("stage {stage} has no output in run {}", record.id)))?;
        cache.export(out, &staging.join(stage), false).map(|_| ()).map_err(PromoteError::from)
    });
    if let Err(e) = staged {
        let _ = crate::cache::ingest::remove_tree(&staging);
        return Err(e);
    }
    d.promoted = true;
    d.reason = match prev_value {
        Some(old) => format!("{} {old:.4} -> {v:.4}", cfg.metric),
        None => format!("first promoted model ({} {v:.4})", cfg.metric),
    };
    let marker = staging.join(MARKER);
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let swap = || -> Result<(), PromoteError> {
        std::fs::write(&marker, serde_json::to_vec_pretty(&d).unwrap_or_default()).map_err(io(&marker))?;
        // The target may have changed while the run ran: check again right before the swap.
        check_target(cache.root(), base_dir, &cfg.to)?;
        if to.exists() {
            std::fs::rename(&to, &old).map_err(io(&to))?;
        }
        if let Err(e) = std::fs::rename(&staging, &to) {
            // put the old one back rather than leave no promoted model at all
            let _ = std::fs::rename(&old, &to);
            return Err(io(&to)(e));
        }
        Ok(())
    };
    if let Err(e) = swap() {
        let _ = crate::cache::ingest::remove_tree(&staging);
        return Err(e);
    }
    let _ = crate::cache::ingest::remove_tree(&old);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_that_would_destroy_user_data_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("proj");
        let cache = base.join("cache");
        std::fs::create_dir_all(base.join("data")).unwrap();
        std::fs::write(base.join("data/x.csv"), "1").unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        for bad in ["", " ", ".", "./", "..", "data", "cache", "cache/models", "/"] {
            let e = check_target(&cache, &base, bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("promote.to {bad:?}")), "{bad:?}: {e}");
        }
        std::fs::write(base.join("file"), "").unwrap();
        assert!(check_target(&cache, &base, "file").is_err());
        std::os::unix::fs::symlink(base.join("data"), base.join("link")).unwrap();
        assert!(check_target(&cache, &base, "link").unwrap_err().to_string().contains("symlink"));
        // absent, empty, or ours: fine
        assert!(check_target(&cache, &base, "models/current").is_ok());
        std::fs::create_dir_all(base.join("empty")).unwrap();
        assert!(check_target(&cache, &base, "empty").is_ok());
        let d = Decision { promoted: true, metric: "m".into(), value: Some(1.0), previous: None, run: 1, reason: String::new(), to: String::new() };
        std::fs::write(base.join("data").join(MARKER), serde_json::to_vec(&d).unwrap()).unwrap();
        assert!(check_target(&cache, &base, "data").is_ok(), "a directory with our marker is ours");
    }

    #[test]
    fn goal_direction() {
        assert!(better_or_equal("max", 0.5, 0.5));
        assert!(!better_or_equal("max", 0.4, 0.5));
        assert!(better_or_equal("min", 0.4, 0.5));
        assert!(!better_or_equal("min", 0.6, 0.5));
    }
}
