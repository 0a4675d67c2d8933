//! The local executor: the stage runs in this process, on the calling (blocking) thread,
//! with the engine's progress bar and cancel flag. Today's behaviour, and the default.

use super::{Executed, ExecInfo, Executor, Job};
use crate::stages::{CancelFlag, DynStage, Progress, StageError, StageOutcome};

pub struct Local;

/// Run `stage` on `job` here (also what `pipeline exec-stage` does on a node).
pub fn run_in_process(stage: &dyn DynStage, job: &Job, progress: &Progress, cancel: &CancelFlag) -> Result<StageOutcome, StageError> {
    let ctx = super::context(job, progress, cancel);
    stage.run(&job.params, &ctx)
}

impl Executor for Local {
    fn name(&self) -> &'static str {
        "local"
    }
    fn execute(&self, stage: &dyn DynStage, job: &Job, progress: &Progress, cancel: &CancelFlag) -> Executed {
        let t0 = std::time::Instant::now();
        let result = run_in_process(stage, job, progress, cancel);
        let info = ExecInfo {
            executor: "local".into(),
            run_ms: Some(t0.elapsed().as_millis() as u64),
            attempts: 1,
            ..Default::default()
        };
        Executed { result, info: Some(info) }
    }
}
