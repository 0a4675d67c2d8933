//! `run`'s core for `pipeline run` and `pipeline schedule`: the engine's run, then promotion.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::cache::Cache;
use crate::dag::Pipeline;
use crate::engine::{Engine, RunOptions, RunRecord, RunStatus};
use crate::stages::CancelFlag;

/// One run, then the pipeline's `promote` section if any; the decision is recorded in the run.
pub async fn run_and_promote(cache: &Arc<Cache>, p: &Arc<Pipeline>, opts: &RunOptions, cancel: CancelFlag) -> Result<RunRecord> {
    // A promotion target that would replace someone's data fails the run before it starts.
    if let Some(cfg) = &p.promote {
        crate::promote::check_target(cache.root(), &p.base_dir, &cfg.to).with_context(|| format!("{}", p.file.display()))?;
    }
    let mut record = Engine::new(cache.clone(), cancel).run(p.clone(), opts).await?;
    if let (Some(cfg), RunStatus::Ok) = (&p.promote, record.status) {
        let d = crate::promote::promote(cache, &p.base_dir, cfg, &record)?;
        if d.promoted {
            tracing::info!(to = %d.to, reason = %d.reason, "promoted");
        } else {
            tracing::info!(reason = %d.reason, "not promoted");
        }
        record.promotion = Some(serde_json::to_value(&d)?);
        cache.put_run(record.id, &record)?;
    }
    Ok(record)
}
