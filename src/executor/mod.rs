//! Where a stage's work runs: the execute step of a stage's life (lookup -> execute ->
//! commit). Lookup and commit stay in the engine (one writer for the cache); the executor
//! only turns a [`Job`] into files in `job.out_dir` and a [`StageOutcome`].
//!
//! - [`local::Local`]: in this process, on a blocking thread (the default, today's behaviour);
//! - [`slurm::SlurmStage`]: `pipeline exec-stage JOB.json` as a Slurm batch job, the job
//!   writing only into `out_dir` and its status file; the engine then verifies and commits
//!   what it left exactly as it does a local stage's output.
//!
//! A Kubernetes Job executor would be one more file here: the same `Job` file on a shared
//! volume, `kubectl create job ... -- pipeline exec-stage`, completion by the status file.
//!
//! Executor settings are provenance, like a training backend: they are never part of the
//! cache key, and are recorded in the run (`StageRun::executor`) and with the entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stages::{CancelFlag, DynStage, Progress, StageContext, StageError, StageOutcome};

pub mod config;
pub mod local;
pub mod slurm;

// The settings are plain data in their own file: `dag` reads them without importing the
// executors (which import the engine, which imports `dag`).
pub use config::{ExecutorConfig, KINDS};

/// One stage's execute step, serialisable: what `pipeline exec-stage JOB.json` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub pipeline: String,
    pub stage: String,
    pub run_id: u64,
    /// The stage kind (`command`, `train`...) and its canonical params.
    pub kind: String,
    pub params: Value,
    /// Input name -> a path (a read-only view in the cache, or a file or directory).
    pub inputs: BTreeMap<String, PathBuf>,
    /// Empty directory: everything written here is the output (committed by the orchestrator).
    pub out_dir: PathBuf,
    /// The pipeline file's directory.
    pub base_dir: PathBuf,
    pub previous_output: Option<PathBuf>,
    /// Where `exec-stage` writes its [`JobStatus`]; set by the executor.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
}

/// What `pipeline exec-stage` leaves beside the job: written last, atomically.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub exit_code: i32,
    pub error: Option<String>,
    pub cancelled: bool,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub node: String,
    pub outcome: Option<StageOutcome>,
}

/// How a stage ran: recorded in the run (`runs show`) and with the entry's provenance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecInfo {
    pub executor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Submissions (more than 1 after node failures).
    #[serde(default)]
    pub attempts: u32,
    /// The attempts before the last one, each `<job id> <state>` (`12 NODE_FAIL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<String>,
}

/// The result of the execute step, with how it ran (also when it failed: job id, log).
pub struct Executed {
    pub result: Result<StageOutcome, StageError>,
    pub info: Option<ExecInfo>,
}

pub trait Executor: Send + Sync {
    fn name(&self) -> &'static str;
    /// Run `job`, writing only into `job.out_dir`. `stage` is the kind, resolved (the local
    /// executor runs it in-process; a remote one sends `job.kind` instead).
    fn execute(&self, stage: &dyn DynStage, job: &Job, progress: &Progress, cancel: &CancelFlag) -> Executed;
}

/// The executors of one run: one Slurm queue for all of its jobs (one `squeue` call polls
/// them all).
pub struct RunExecutors {
    local: std::sync::Arc<local::Local>,
    slurm: std::sync::Arc<slurm::Queue>,
    /// `--executor local|slurm`.
    force: Option<String>,
    cache_root: PathBuf,
    base_dir: PathBuf,
}

impl RunExecutors {
    pub fn new(run_id: u64, cache_root: &Path, base_dir: &Path, force: Option<String>) -> Self {
        Self {
            local: std::sync::Arc::new(local::Local),
            slurm: std::sync::Arc::new(slurm::Queue::new(run_id)),
            force,
            cache_root: cache_root.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
        }
    }

    /// The executor of a stage with these settings.
    pub fn for_stage(&self, cfg: &ExecutorConfig) -> std::sync::Arc<dyn Executor> {
        let kind = self.force.as_deref().unwrap_or(cfg.kind());
        match kind {
            "slurm" => {
                let workdir = match &cfg.workdir {
                    Some(w) if w.is_absolute() => w.clone(),
                    Some(w) => self.base_dir.join(w),
                    None => self.cache_root.join("slurm"),
                };
                std::sync::Arc::new(slurm::SlurmStage { queue: self.slurm.clone(), cfg: cfg.clone(), workdir })
            }
            _ => self.local.clone() as std::sync::Arc<dyn Executor>,
        }
    }

    /// Cancel every Slurm job still known to this run (a process exiting after abandoning stages).
    pub fn cancel_all(&self) {
        self.slurm.cancel_all();
    }
}

/// The exit code a stage error maps to in `exec-stage` (and so in Slurm's `FAILED (exit N)`):
/// a command's own exit code where the error carries one, 1 otherwise.
pub fn exit_code_of(e: &StageError) -> i32 {
    match e {
        StageError::Cancelled => 143,
        StageError::Failed(m) => m
            .strip_prefix("command exited with ")
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .filter(|&n: &i32| n != 0)
            .unwrap_or(1),
        _ => 1,
    }
}

/// A run's stages, each with where it ran: what [`describe_jobs`] reads. The engine's run
/// record implements it, so this layer does not import the engine.
pub trait Placements {
    fn placements(&self) -> Vec<(&str, Option<&ExecInfo>)>;
}

/// `runs show`: per stage that ran as a job, where and how long (empty when all ran locally).
pub fn describe_jobs(r: &impl Placements) -> String {
    let secs = |ms: Option<u64>| ms.map(|m| format!("{:.1} s", m as f64 / 1000.0)).unwrap_or_else(|| "-".into());
    let mut out = String::new();
    for (name, e) in r.placements() {
        let Some(e) = e.filter(|e| e.executor != "local") else { continue };
        out.push_str(&format!(
            "{}: {} job {} on {}, queue wait {}, run time {}{}{}\n",
            name,
            e.executor,
            e.job_id.as_deref().unwrap_or("-"),
            e.node.as_deref().unwrap_or("-"),
            secs(e.queue_wait_ms),
            secs(e.run_ms),
            match (e.attempts > 1, e.earlier.is_empty()) {
                (false, _) => String::new(),
                (true, true) => format!(", {} attempts", e.attempts),
                (true, false) => format!(", {} attempts (earlier: job {})", e.attempts, e.earlier.join(", job ")),
            },
            e.log.as_deref().map(|l| format!(", log {l}")).unwrap_or_default(),
        ));
    }
    if out.is_empty() {
        out
    } else {
        format!("jobs:\n{out}")
    }
}

fn now_ms() -> u64 {
    crate::cache::store::now_millis()
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).to_string()
}

static TERM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Why `exec-stage` could not run its job or record the result (a failed stage is not
/// one: it is written into the status file).
#[derive(Debug, thiserror::Error)]
pub enum ExecStageError {
    #[error("{}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{}: not a job file: {source}", path.display())]
    NotAJob { path: std::path::PathBuf, source: serde_json::Error },
}

/// `pipeline exec-stage JOB.json`: run one stage from a job file, writing only into the
/// job's `out_dir` and its status file. SIGTERM (scancel, a time limit) cancels the stage.
/// Returns the process exit code.
pub fn exec_stage(job_file: &Path) -> Result<i32, ExecStageError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| ExecStageError::Io { path: p, source: e }
    };
    let text = std::fs::read_to_string(job_file).map_err(io(job_file))?;
    let job: Job = serde_json::from_str(&text).map_err(|e| ExecStageError::NotAJob { path: job_file.to_path_buf(), source: e })?;
    let started_ms = now_ms();
    let node = hostname();
    eprintln!("pipeline exec-stage: stage `{}` ({}) of run {} on {node}", job.stage, job.kind, job.run_id);
    let cancel = CancelFlag::new();
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
    }
    let watcher = {
        let c = cancel.clone();
        std::thread::spawn(move || loop {
            if TERM.load(std::sync::atomic::Ordering::SeqCst) {
                c.cancel();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        })
    };
    drop(watcher);
    let result = match crate::stages::find(&job.kind) {
        None => Err(StageError::Failed(format!("stage kind `{}` is not in this build of pipeline", job.kind))),
        Some(kind) => {
            let progress = Progress::hidden();
            local::run_in_process(&*kind, &job, &progress, &cancel)
        }
    };
    let (exit_code, error, outcome) = match &result {
        Ok(o) => (0, None, Some(o.clone())),
        Err(e) => (exit_code_of(e), Some(crate::text::clean(&e.to_string())), None),
    };
    if let Some(e) = &error {
        eprintln!("pipeline exec-stage: stage `{}` failed: {e}", job.stage);
    } else {
        eprintln!("pipeline exec-stage: stage `{}` done", job.stage);
    }
    let status = JobStatus {
        exit_code,
        error,
        cancelled: matches!(result, Err(StageError::Cancelled)),
        started_ms,
        ended_ms: now_ms(),
        node,
        outcome,
    };
    if let Some(sf) = &job.status_file {
        let tmp = sf.with_extension("json.tmp");
        // JobStatus is plain data: serialising it cannot fail.
        let bytes = serde_json::to_vec_pretty(&status).unwrap_or_default();
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, sf).map_err(io(sf))?;
    } else {
        println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
    }
    Ok(exit_code)
}

/// A stage context over a job (shared by the local executor and `exec-stage`).
pub(crate) fn context<'a>(job: &'a Job, progress: &'a Progress, cancel: &'a CancelFlag) -> StageContext<'a> {
    StageContext {
        name: &job.stage,
        inputs: &job.inputs,
        out_dir: &job.out_dir,
        base_dir: &job.base_dir,
        previous_output: job.previous_output.as_deref(),
        progress,
        cancel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stage_settings_override_the_pipeline_default_one_by_one() {
        let top = json!({"kind": "slurm", "partition": "gpu", "time": "1:00:00"});
        let st = json!({"time": "2:00:00", "gpus": 2});
        let c = ExecutorConfig::resolve(Some(&top), Some(&st)).unwrap();
        assert_eq!(c.kind(), "slurm");
        assert_eq!(c.partition.as_deref(), Some("gpu"));
        assert_eq!(c.time.as_deref(), Some("2:00:00"));
        assert_eq!(c.gpus, Some(2));
        assert_eq!(ExecutorConfig::resolve(None, None).unwrap().kind(), "local");
    }

    #[test]
    fn bad_settings_are_named() {
        let e = ExecutorConfig::resolve(None, Some(&json!({"kind": "k8s"}))).unwrap_err();
        assert_eq!(e.0, "kind");
        let e = ExecutorConfig::resolve(None, Some(&json!({"gpu": 1}))).unwrap_err();
        assert!(e.1.contains("unknown field `gpu`"), "{}", e.1);
        let e = ExecutorConfig::resolve(None, Some(&json!({"time": "two hours"}))).unwrap_err();
        assert_eq!(e.0, "time");
        // found by a hostile pass: these reached sbatch, stage by stage, or (`--array`) made
        // a run commit the first task's output while the others still ran
        for (v, field) in [
            (json!({"mem": "1e99"}), "mem"),
            (json!({"mem": ""}), "mem"),
            (json!({"mem": "-1"}), "mem"),
            (json!({"partition": ""}), "partition"),
            (json!({"cpus": 0}), "cpus"),
            (json!({"extra_args": [""]}), "extra_args"),
            (json!({"extra_args": ["--array=0-2"]}), "extra_args"),
            (json!({"extra_args": ["-a0-2"]}), "extra_args"),
            (json!({"extra_args": ["--requeue"]}), "extra_args"),
            (json!({"extra_args": ["--output=/tmp/x"]}), "extra_args"),
            (json!({"extra_args": ["--arr=0-2"]}), "extra_args"),
            (json!({"extra_args": ["--exclusive", "-o", "x"]}), "extra_args"),
            (json!({"mem": 1e99}), "mem"),
            (json!({"time": -5}), "time"),
        ] {
            let e = ExecutorConfig::resolve(None, Some(&v)).unwrap_err();
            assert_eq!(e.0, field, "{v}: {}", e.1);
        }
        for ok in [
            json!({"mem": "16G"}),
            json!({"mem": "16GB"}),
            json!({"mem": 1024, "time": 30}),
            json!({"mem": "1024"}),
            json!({"partition": "gpu,cpu"}),
            json!({"extra_args": ["--constraint=a100", "-N", "1"]}),
            // a value that looks like a short flag, and non-ASCII (sliced mid-character: a panic)
            json!({"extra_args": ["--comment", "-dx", "--comment=日本語", "-é"]}),
        ] {
            assert!(ExecutorConfig::resolve(None, Some(&ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_commands_exit_code_becomes_the_jobs() {
        assert_eq!(exit_code_of(&StageError::Failed("command exited with 3: boom".into())), 3);
        assert_eq!(exit_code_of(&StageError::Failed("command was killed by signal 9".into())), 1);
        assert_eq!(exit_code_of(&StageError::Failed("other".into())), 1);
        assert_eq!(exit_code_of(&StageError::Cancelled), 143);
    }

    #[test]
    fn a_job_round_trips_through_json() {
        let job = Job {
            pipeline: "p".into(),
            stage: "s".into(),
            run_id: 3,
            kind: "command".into(),
            params: json!({"cmd": "true"}),
            inputs: [("x".to_string(), PathBuf::from("/c/views/abc"))].into_iter().collect(),
            out_dir: "/c/tmp/out".into(),
            base_dir: "/p".into(),
            previous_output: None,
            status_file: Some("/w/status.json".into()),
        };
        let back: Job = serde_json::from_str(&serde_json::to_string(&job).unwrap()).unwrap();
        assert_eq!(back.inputs, job.inputs);
        assert_eq!(back.params, job.params);
    }
}
