//! The Slurm executor: a stage runs as `pipeline exec-stage JOB.json` in a batch job.
//!
//! - Submission: `sbatch --parsable --no-requeue --job-name=pipeline-run<id>-<stage>
//!   --output=<jobdir>/slurm-%j.log` plus the stage's settings (`--partition`, `--time`,
//!   `--mem`, `--cpus-per-task`, `--gpus`, `--account`, `--qos`, `extra_args`). No requeue:
//!   Slurm requeues batch jobs by default, which could run a stage twice.
//! - Status: one `squeue --states=all --name=<every job name of the run>` call answers for
//!   every job of the run at once ([`Queue`]), at most every 200 ms and backing off to 5 s
//!   while nothing changes. Completion is the status file the job writes (accounting is not
//!   needed: `sacct` needs slurmdbd, and `squeue` forgets finished jobs after MinJobAge); a
//!   job is taken as done only once Slurm no longer shows it running, so nothing it started
//!   can still write into what the engine commits.
//! - Failures are named with the job id, the state (`FAILED (exit 3)`, `TIMEOUT (time limit
//!   0:10:00)`, `OUT_OF_MEMORY`, `NODE_FAIL`, `CANCELLED`, `PREEMPTED`), the log file and
//!   its tail. NODE_FAIL, PREEMPTED and BOOT_FAIL are resubmitted `retries` times (default 1).
//! - Cancellation (Ctrl-C, SIGTERM of the run) sends `scancel`, and waits for the job to end.
//!
//! The work directory (job files, status files, logs; default `<cache>/slurm`) and the cache
//! (input views, the output directory) must be on a file system the nodes share.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Executed, ExecInfo, Executor, ExecutorConfig, Job, JobStatus};
use crate::stages::{CancelFlag, DynStage, Progress, StageError};

/// One job as `squeue` last showed it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    pub state: String,
    pub node: String,
    pub time_limit: String,
    /// Why a pending job waits (`Resources`, `Priority`, `PartitionDown`...), empty when
    /// Slurm gives none.
    pub reason: String,
}

/// Pending reasons that will not clear by themselves: they need an administrator, or a
/// change to the job (Slurm's `squeue` reason codes; a reason may carry detail after a comma).
const STUCK_REASONS: &[&str] = &[
    "PartitionDown",
    "PartitionInactive",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "PartitionConfig",
    "ReqNodeNotAvail",
    "NodeDown",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "AccountNotAllowed",
    "QOSNotAllowed",
    "DependencyNeverSatisfied",
    "JobHeldAdmin",
    "JobHeldUser",
    "AssocMaxWallDurationPerJobLimit",
    "QOSMaxWallDurationPerJobLimit",
];

fn stuck(reason: &str) -> bool {
    let code = reason.split([',', ' ']).next().unwrap_or("");
    STUCK_REASONS.contains(&code)
}

/// States in which a job may still run code.
fn active(state: &str) -> bool {
    matches!(
        state,
        "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING" | "SUSPENDED" | "REQUEUED" | "RESIZING" | "SIGNALING" | "STAGE_OUT" | "STOPPED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD"
    )
}

struct QueueState {
    /// job id -> job name, for every job of the run not yet settled.
    jobs: BTreeMap<String, String>,
    last_poll: Option<Instant>,
    interval: Duration,
    snapshot: BTreeMap<String, JobState>,
    last_error: Option<String>,
    /// Since when every `squeue` call has failed (the controller down or unreachable).
    failing_since: Option<Instant>,
    polls: u64,
}

/// The jobs of one run, polled together.
pub struct Queue {
    run_id: u64,
    state: Mutex<QueueState>,
}

const MIN_POLL: Duration = Duration::from_millis(200);
const MAX_POLL: Duration = Duration::from_secs(5);
/// A controller unreachable this long fails the stage (instead of waiting forever).
const SQUEUE_GIVE_UP: Duration = Duration::from_secs(300);

impl Queue {
    pub fn new(run_id: u64) -> Self {
        Queue {
            run_id,
            state: Mutex::new(QueueState {
                jobs: BTreeMap::new(),
                last_poll: None,
                interval: MIN_POLL,
                snapshot: BTreeMap::new(),
                last_error: None,
                failing_since: None,
                polls: 0,
            }),
        }
    }

    fn add(&self, id: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.jobs.insert(id.to_string(), name.to_string());
        s.interval = MIN_POLL;
    }

    fn remove(&self, id: &str) {
        self.state.lock().unwrap().jobs.remove(id);
    }

    /// The job's state, from a `squeue` call no older than the current interval, or (with
    /// `fresh_after`) made after that instant. One call covers every job of the run.
    fn state(&self, id: &str, fresh_after: Option<Instant>) -> Option<JobState> {
        let mut s = self.state.lock().unwrap();
        let stale = match s.last_poll {
            None => true,
            Some(t) => t.elapsed() >= s.interval || fresh_after.is_some_and(|f| t < f && t.elapsed() >= MIN_POLL),
        };
        if stale {
            if let Some(f) = fresh_after {
                // Do not poll more often than MIN_POLL even when asked for a fresh answer.
                if let Some(t) = s.last_poll {
                    let wait = MIN_POLL.saturating_sub(t.elapsed());
                    if t < f && !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                }
            }
            let names: BTreeSet<String> = s.jobs.values().cloned().collect();
            if !names.is_empty() {
                match squeue(&names.into_iter().collect::<Vec<_>>()) {
                    Ok(snap) => {
                        s.interval = if snap == s.snapshot { (s.interval.mul_f32(1.5)).min(MAX_POLL) } else { MIN_POLL };
                        s.snapshot = snap;
                        s.last_error = None;
                        s.failing_since = None;
                    }
                    Err(e) => {
                        s.interval = (s.interval * 2).min(MAX_POLL);
                        s.last_error = Some(e);
                        s.failing_since.get_or_insert_with(Instant::now);
                    }
                }
                s.polls += 1;
            }
            s.last_poll = Some(Instant::now());
        }
        s.snapshot.get(id).cloned()
    }

    /// How long `squeue` has failed without a break, and its last error.
    fn failing(&self) -> Option<(Duration, String)> {
        let s = self.state.lock().unwrap();
        s.failing_since.map(|t| (t.elapsed(), s.last_error.clone().unwrap_or_default()))
    }

    /// `squeue` calls made so far (all jobs of the run share each one).
    pub fn polls(&self) -> u64 {
        self.state.lock().unwrap().polls
    }

    pub fn cancel_all(&self) {
        let ids: Vec<String> = self.state.lock().unwrap().jobs.keys().cloned().collect();
        if !ids.is_empty() {
            let _ = Command::new("scancel").args(&ids).output();
        }
    }
}

/// `squeue` for these job names, every state it still knows.
fn squeue(names: &[String]) -> Result<BTreeMap<String, JobState>, String> {
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%i|%T|%N|%l|%r"])
        .arg(format!("--name={}", names.join(",")))
        .output()
        .map_err(|e| format!("cannot run squeue: {e}"))?;
    if !out.status.success() {
        return Err(format!("squeue failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.trim().splitn(5, '|').collect();
        if f.len() >= 4 {
            let reason = f.get(4).map(|r| crate::text::cap(&crate::text::strip_controls(r.trim()), 200)).filter(|r| r != "None").unwrap_or_default();
            m.insert(f[0].to_string(), JobState { state: f[1].to_string(), node: f[2].to_string(), time_limit: f[3].to_string(), reason });
        }
    }
    Ok(m)
}

/// One stage's view of the run's Slurm queue, with the stage's settings.
pub struct SlurmStage {
    pub queue: std::sync::Arc<Queue>,
    pub cfg: ExecutorConfig,
    pub workdir: PathBuf,
}

/// A job name Slurm accepts and `squeue --name` can list (no commas).
fn job_name(run_id: u64, stage: &str) -> String {
    let safe: String = stage.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect();
    format!("pipeline-run{run_id}-{safe}")
}

/// `0:10:00` from `10:00`, as people write time limits.
fn long_time(t: &str) -> String {
    match t.split_once(':') {
        Some((m, s)) if !t.contains('-') && !s.contains(':') => format!("0:{:0>2}:{s}", m),
        _ => t.to_string(),
    }
}

/// The last lines of a log, cleaned and capped.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else { return String::new() };
    let start = bytes.len().saturating_sub(16 << 10);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let v: Vec<&str> = text.lines().collect();
    let tail = v[v.len().saturating_sub(lines)..].join("\n");
    crate::text::cap_tail(&crate::text::strip_controls(&tail), 2048)
}

fn check_writable(dir: &Path) -> Result<(), String> {
    let hint = "set `executor.workdir` to a writable directory on a file system the cluster's nodes share";
    std::fs::create_dir_all(dir).map_err(|e| format!("Slurm work directory {}: cannot create it: {e}; {hint}", dir.display()))?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(|e| format!("Slurm work directory {} is not writable: {e}; {hint}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The `pipeline` binary the node runs: `PIPELINE_EXE`, else this one.
fn exe() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PIPELINE_EXE") {
        return Ok(PathBuf::from(p));
    }
    std::env::current_exe().map_err(|e| format!("cannot find the pipeline executable: {e}"))
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

enum Ended {
    Ok(JobStatus),
    /// Error message, and whether a resubmission may help.
    Failed(String, bool, Option<JobStatus>),
    Cancelled,
}

impl SlurmStage {
    fn sbatch_args(&self, job: &Job, name: &str, dir: &Path) -> Vec<String> {
        let c = &self.cfg;
        let mut a = vec![
            "--parsable".to_string(),
            "--no-requeue".to_string(),
            format!("--job-name={name}"),
            // `%` starts a Slurm filename pattern: `%x` in the cache's path named another
            // directory and the job died at launch (found by a hostile pass)
            format!("--output={}/slurm-%j.log", dir.display().to_string().replace('%', "%%")),
            format!("--chdir={}", dir.display()),
        ];
        if let Some(v) = &c.partition {
            a.push(format!("--partition={v}"));
        }
        if let Some(v) = &c.time {
            a.push(format!("--time={v}"));
        }
        if let Some(v) = &c.mem {
            a.push(format!("--mem={v}"));
        }
        if let Some(v) = c.cpus {
            a.push(format!("--cpus-per-task={v}"));
        }
        if let Some(v) = c.gpus {
            a.push(format!("--gpus={v}"));
        }
        if let Some(v) = &c.account {
            a.push(format!("--account={v}"));
        }
        if let Some(v) = &c.qos {
            a.push(format!("--qos={v}"));
        }
        a.extend(c.extra_args.iter().cloned());
        let _ = job;
        a.push(dir.join("job.sh").display().to_string());
        a
    }

    fn submit(&self, job: &Job, attempt: u32) -> Result<(String, PathBuf, PathBuf, u64), String> {
        check_writable(&self.workdir)?;
        let name = job_name(job.run_id, &job.stage);
        let dir = self.workdir.join(format!("{name}-{}-{}-a{attempt}", std::process::id(), crate::cache::store::now_millis()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let status = dir.join("status.json");
        let mut j = job.clone();
        j.status_file = Some(status.clone());
        let job_file = dir.join("job.json");
        std::fs::write(&job_file, serde_json::to_vec_pretty(&j).map_err(|e| e.to_string())?).map_err(|e| format!("{}: {e}", job_file.display()))?;
        let exe = exe()?;
        let script = format!(
            "#!/bin/sh\n# stage `{}` of run {} ({}), written by pipeline\nexec {} exec-stage {}\n",
            job.stage,
            job.run_id,
            job.pipeline,
            sh_quote(&exe.display().to_string()),
            sh_quote(&job_file.display().to_string())
        );
        std::fs::write(dir.join("job.sh"), script).map_err(|e| format!("{}: {e}", dir.display()))?;
        let args = self.sbatch_args(job, &name, &dir);
        let out = Command::new("sbatch").args(&args).output().map_err(|e| format!("cannot run sbatch (is Slurm installed and SLURM_CONF set?): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "sbatch {} failed: {}",
                args.join(" "),
                crate::text::cap(String::from_utf8_lossy(&out.stderr).trim(), 1024)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text.trim().split(';').next().unwrap_or("").trim().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
            return Err(format!("sbatch printed no job id: {text:?}"));
        }
        let submitted = crate::cache::store::now_millis();
        let log = dir.join(format!("slurm-{id}.log"));
        tracing::info!(stage = %job.stage, job = %id, "submitted to Slurm");
        Ok((id, log, status, submitted))
    }

    /// Wait for a submitted job; `scancel` it on cancellation.
    fn wait(&self, id: &str, log: &Path, status_file: &Path, cancel: &CancelFlag, progress: &Progress) -> Ended {
        let t0 = Instant::now();
        let mut seen = false;
        let mut sleep = Duration::from_millis(50);
        let mut status_seen: Option<Instant> = None;
        let mut last_state = String::new();
        let mut max_pending = self.cfg.max_pending.as_deref().and_then(super::config::slurm_duration);
        let mut warned = String::new();
        loop {
            if cancel.is_cancelled() {
                self.scancel_and_wait(id);
                return Ended::Cancelled;
            }
            let status = if status_file.exists() { read_status(status_file) } else { None };
            if status.is_some() && status_seen.is_none() {
                status_seen = Some(Instant::now());
            }
            let st = self.queue.state(id, status_seen);
            if let Some(s) = &st {
                seen = true;
                // the reason too: a job that cannot start (a partition down) must not look
                // like one that is merely queued
                let shown = if s.reason.is_empty() { s.state.clone() } else { format!("{} ({})", s.state, s.reason) };
                if shown != last_state {
                    progress.set_message(format!("slurm job {id} {}", shown.to_lowercase()));
                    last_state = shown;
                }
                if s.state == "PENDING" && stuck(&s.reason) && warned != s.reason {
                    let until = match &self.cfg.max_pending {
                        Some(m) => format!("it is cancelled after max_pending {m} in the queue"),
                        None => "it waits until that changes (set executor.max_pending to give up, or Ctrl-C)".to_string(),
                    };
                    tracing::warn!(job = %id, "Slurm job {id} is pending: {} usually needs an administrator or a change to the job; {until}", s.reason);
                    warned = s.reason.clone();
                }
                if max_pending.is_some_and(|l| s.state == "PENDING" && t0.elapsed() > l) {
                    // The snapshot may be seconds old and the job may have started since: only a
                    // job that is still pending is cancelled (`--state=PENDING`, applied by the
                    // controller; found by a hostile pass: a job 2 s into its run was killed
                    // and called pending). One that started is waited on as any other.
                    if self.cancel_if_pending(id) {
                        let reason = if s.reason.is_empty() { String::new() } else { format!(" (Slurm's reason: {})", s.reason) };
                        return Ended::Failed(
                            format!(
                                "Slurm job {id} still PENDING after {:.0} s{reason}, over max_pending {}: scancel'ed, nothing was committed",
                                t0.elapsed().as_secs_f64(),
                                self.cfg.max_pending.as_deref().unwrap_or_default()
                            ),
                            false,
                            None,
                        );
                    }
                    max_pending = None;
                    tracing::info!(job = %id, "Slurm job {id} started just as max_pending ran out: waited on");
                }
            }
            if let Some((for_, err)) = self.queue.failing().filter(|(d, _)| *d > SQUEUE_GIVE_UP) {
                let _ = Command::new("scancel").arg(id).output();
                return Ended::Failed(
                    format!("Slurm job {id}: squeue has failed for {:.0} s ({err}); the job was scancel'ed if the controller still takes requests; nothing was committed", for_.as_secs_f64()),
                    false,
                    None,
                );
            }
            let ended = match &st {
                Some(s) => !active(&s.state),
                // Forgotten by squeue (MinJobAge) or not shown yet; while squeue is failing,
                // "not shown" means nothing: the give-up rule above decides (found by a hostile
                // pass: a running job was declared gone after 30 s and left running).
                None => seen || status.is_some() || (t0.elapsed() > Duration::from_secs(30) && self.queue.failing().is_none()),
            };
            if ended {
                // The job may have written its status file just before it ended.
                let status = status.or_else(|| read_status(status_file));
                return self.settle(id, st, status, log);
            }
            // Sleep in short steps: a cancellation is acted on within 50 ms.
            let until = Instant::now() + sleep;
            while Instant::now() < until && !cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(50).min(sleep));
            }
            sleep = (sleep.mul_f32(1.5)).min(Duration::from_secs(2));
        }
    }

    /// `scancel --state=PENDING` the job: true when it ended without starting, false when it
    /// had started (it is left running). Waits (bounded) for a fresh `squeue` to tell.
    fn cancel_if_pending(&self, id: &str) -> bool {
        let _ = Command::new("scancel").args(["--state=PENDING", id]).output();
        let until = Instant::now() + Duration::from_secs(8);
        loop {
            match self.queue.state(id, Some(Instant::now())) {
                Some(s) if s.state == "PENDING" && Instant::now() < until => std::thread::sleep(Duration::from_millis(200)),
                // still pending after 8 s (the controller slow to act): cancel outright
                Some(s) if s.state == "PENDING" => {
                    self.scancel_and_wait(id);
                    return true;
                }
                Some(s) if active(&s.state) => return false,
                _ => return true,
            }
        }
    }

    /// `scancel` the job and wait (bounded, within the engine's grace) for it to stop running.
    fn scancel_and_wait(&self, id: &str) {
        let _ = Command::new("scancel").arg(id).output();
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            match self.queue.state(id, Some(Instant::now())) {
                Some(s) if active(&s.state) => std::thread::sleep(Duration::from_millis(200)),
                _ => break,
            }
        }
    }

    fn settle(&self, id: &str, st: Option<JobState>, status: Option<JobStatus>, log: &Path) -> Ended {
        let state = st.as_ref().map(|s| s.state.as_str()).unwrap_or("");
        let tail = log_tail(log, 20);
        let with_log = |head: String| -> String {
            if tail.is_empty() {
                format!("{head}; log {} (empty)", log.display())
            } else {
                format!("{head}; log {}:\n{tail}", log.display())
            }
        };
        let on = |s: &Option<JobStatus>| match (s, &st) {
            (Some(s), _) => format!(" on {}", s.node),
            (None, Some(j)) if !j.node.is_empty() && j.node != "(null)" => format!(" on {}", j.node),
            _ => String::new(),
        };
        match (state, &status) {
            ("COMPLETED" | "", Some(s)) if s.exit_code == 0 && s.error.is_none() && s.outcome.is_some() => Ended::Ok(s.clone()),
            ("TIMEOUT", _) => {
                let limit = st.as_ref().map(|s| long_time(&s.time_limit)).or(self.cfg.time.clone()).unwrap_or_default();
                Ended::Failed(with_log(format!("Slurm job {id} TIMEOUT (time limit {limit}){}", on(&status))), false, status)
            }
            ("OUT_OF_MEMORY", _) => {
                let mem = self.cfg.mem.as_deref().map(|m| format!(" (mem {m})")).unwrap_or_default();
                Ended::Failed(with_log(format!("Slurm job {id} OUT_OF_MEMORY{mem}{}", on(&status))), false, status)
            }
            // Without cgroups (jobacct_gather's OverMemoryKill) Slurm kills a job over its
            // --mem but reports FAILED; slurmstepd says why in the job's log.
            (s, _) if s != "CANCELLED" && killed_for_memory(log) => {
                let mem = self.cfg.mem.as_deref().map(|m| format!(" (mem {m})")).unwrap_or_default();
                let reported = if s.is_empty() { String::new() } else { format!("; Slurm reports {s}") };
                Ended::Failed(
                    with_log(format!("Slurm job {id} OUT_OF_MEMORY{mem}{}: killed for exceeding its memory limit{reported}", on(&status))),
                    false,
                    status,
                )
            }
            ("CANCELLED", _) => Ended::Failed(
                with_log(format!("Slurm job {id} CANCELLED{} (scancel from outside this run, or an administrator); nothing was committed", on(&status))),
                false,
                status,
            ),
            ("NODE_FAIL" | "PREEMPTED" | "BOOT_FAIL", _) => Ended::Failed(with_log(format!("Slurm job {id} {state}{}", on(&status))), true, status),
            (_, Some(s)) if s.error.is_some() || s.exit_code != 0 => {
                let why = s.error.clone().unwrap_or_default();
                Ended::Failed(with_log(format!("Slurm job {id} FAILED (exit {}){}: {why}", s.exit_code, on(&status))), false, status.clone())
            }
            ("", None) => Ended::Failed(
                with_log(format!("Slurm job {id} left the queue without writing its status file {}", log.with_file_name("status.json").display())),
                false,
                None,
            ),
            (s, _) => Ended::Failed(with_log(format!("Slurm job {id} {s}{} without a status file", on(&status))), false, status),
        }
    }
}

/// Whether slurmstepd wrote into the job's log that it killed the job for its memory:
/// `error: StepId=12.batch exceeded memory limit (489603072 > 52428800), being killed` and
/// `error: Exceeded job memory limit` (jobacct_gather with OverMemoryKill), or the cgroup
/// plugin's `Detected 1 oom-kill event(s)` / `oom_kill event`.
fn killed_for_memory(log: &Path) -> bool {
    let Ok(bytes) = std::fs::read(log) else { return false };
    let start = bytes.len().saturating_sub(64 << 10);
    String::from_utf8_lossy(&bytes[start..]).lines().any(|l| {
        l.starts_with("slurmstepd")
            && (l.contains("exceeded memory limit") || l.contains("Exceeded job memory limit") || l.contains("oom-kill event") || l.contains("oom_kill event"))
    })
}

fn read_status(p: &Path) -> Option<JobStatus> {
    std::fs::read(p).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// The name every job directory starts with (`pipeline-run<id>-<stage>-<pid>-<ms>-a<n>`).
pub const JOB_DIR_PREFIX: &str = "pipeline-run";

/// Whether `name` is one of the files the executor and the job write into a job directory.
fn job_file(name: &str) -> bool {
    matches!(name, "job.json" | "job.sh" | "status.json") || name.starts_with(".probe-") || name.strip_prefix("slurm-").and_then(|r| r.strip_suffix(".log")).is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'_'))
}

/// Remove a job directory, only if it is what the executor makes: a real directory (not a
/// link) named as a job directory, holding only the job's own regular files. Anything else
/// there (a user's file, a subdirectory, a link) keeps it, and the reason comes back.
/// Returns the bytes freed.
pub fn remove_job_dir(dir: &Path) -> Result<u64, String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let shown = dir.display();
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if !name.starts_with(JOB_DIR_PREFIX) {
        return Err(format!("{shown}: not a job directory's name"));
    }
    // Opened without following a link, then used only through the descriptor: a directory
    // swapped for a link after a check cannot send the removals into the link's target.
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| format!("{shown}: a NUL in the path"))?;
    // SAFETY: a NUL-terminated path; the descriptor is owned below
    let raw = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(format!("{shown}: not a directory (a link?): {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a descriptor this function just opened and nothing else owns
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut files = Vec::new();
    let mut bytes = 0;
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| format!("{shown}: {e}"))?;
    for e in listing {
        let n = e.map_err(|e| format!("{shown}: {e}"))?.file_name();
        let shown_n = n.to_string_lossy().to_string();
        let cn = std::ffi::CString::new(n.as_bytes()).map_err(|_| format!("{shown}: a NUL in a name"))?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a directory descriptor, a NUL-terminated name and a zeroed stat buffer
        if unsafe { libc::fstatat(fd.as_raw_fd(), cn.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            return Err(format!("{shown}/{shown_n}: {}", std::io::Error::last_os_error()));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || !job_file(&shown_n) {
            return Err(format!("{shown}: holds {shown_n:?}, which the executor did not write: kept"));
        }
        bytes += st.st_size as u64;
        files.push((cn, shown_n));
    }
    for (cn, n) in files {
        // SAFETY: a directory descriptor and a NUL-terminated name
        if unsafe { libc::unlinkat(fd.as_raw_fd(), cn.as_ptr(), 0) } != 0 {
            return Err(format!("{shown}/{n}: {}", std::io::Error::last_os_error()));
        }
    }
    drop(fd);
    // by name: a link put there meanwhile is not a directory and is refused (ENOTDIR)
    std::fs::remove_dir(dir).map_err(|e| format!("{shown}: {e}"))?;
    Ok(bytes)
}

/// `cache gc`: remove the job directories in `root` (the default work directory,
/// `<cache>/slurm`) untouched for `grace`: the cache is locked, so no run of this cache is
/// using them (a job a killed run left on the cluster, still writing, is spared by the
/// grace). Returns (removed, bytes, messages about those kept).
pub fn sweep_job_dirs(root: &Path, grace: Duration) -> (usize, u64, Vec<String>) {
    let (mut n, mut bytes, mut kept) = (0, 0, Vec::new());
    // a link at `slurm` is not followed: its target is not the cache's
    match std::fs::symlink_metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return (0, 0, vec![format!("{}: not a directory (a link?), not swept", root.display())]),
        Err(_) => return (0, 0, kept),
    }
    let Ok(rd) = std::fs::read_dir(root) else { return (0, 0, kept) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with(JOB_DIR_PREFIX) {
            continue;
        }
        let p = e.path();
        // the newest of the directory and its files
        let newest = std::fs::read_dir(&p)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| f.path().symlink_metadata().ok()?.modified().ok())
            .chain(p.symlink_metadata().ok().and_then(|m| m.modified().ok()))
            .max();
        if newest.is_some_and(|t| t.elapsed().unwrap_or_default() < grace) {
            continue;
        }
        match remove_job_dir(&p) {
            Ok(b) => {
                n += 1;
                bytes += b;
            }
            Err(e) => kept.push(e),
        }
    }
    (n, bytes, kept)
}

/// Empty `dir` (a failed attempt's leftovers) before a resubmission.
fn empty_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        crate::cache::ingest::remove_tree(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

impl Executor for SlurmStage {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn execute(&self, _stage: &dyn DynStage, job: &Job, progress: &Progress, cancel: &CancelFlag) -> Executed {
        let retries = self.cfg.retries.unwrap_or(1);
        let mut info = ExecInfo { executor: "slurm".into(), ..Default::default() };
        let mut attempt = 0;
        loop {
            attempt += 1;
            info.attempts = attempt;
            if attempt > 1 {
                if let Err(e) = empty_dir(&job.out_dir) {
                    return Executed { result: Err(StageError::Failed(e)), info: Some(info) };
                }
            }
            let (id, log, status_file, submitted) = match self.submit(job, attempt) {
                Ok(x) => x,
                Err(e) => return Executed { result: Err(StageError::Failed(e)), info: Some(info) },
            };
            info.job_id = Some(id.clone());
            info.log = Some(log.display().to_string());
            progress.set_message(format!("slurm job {id} submitted"));
            self.queue.add(&id, &job_name(self.queue.run_id, &job.stage));
            let ended = self.wait(&id, &log, &status_file, cancel, progress);
            self.queue.remove(&id);
            let fill = |info: &mut ExecInfo, s: &JobStatus| {
                info.node = Some(s.node.clone());
                info.queue_wait_ms = Some(s.started_ms.saturating_sub(submitted));
                info.run_ms = Some(s.ended_ms.saturating_sub(s.started_ms));
            };
            match ended {
                Ended::Ok(s) => {
                    fill(&mut info, &s);
                    let outcome = s.outcome.unwrap_or_default();
                    // a successful job's files are not needed again (its result is read);
                    // 365 nightly runs had left a directory per stage per night
                    if !self.cfg.keep_logs.unwrap_or(false) {
                        if let Some(dir) = log.parent() {
                            match remove_job_dir(dir) {
                                Ok(_) => info.log = None,
                                Err(e) => tracing::warn!("{e}"),
                            }
                        }
                    }
                    return Executed { result: Ok(outcome), info: Some(info) };
                }
                Ended::Cancelled => return Executed { result: Err(StageError::Cancelled), info: Some(info) },
                Ended::Failed(msg, retry, s) => {
                    if let Some(s) = &s {
                        fill(&mut info, s);
                    }
                    if retry && attempt <= retries && !cancel.is_cancelled() {
                        let state = msg.strip_prefix(&format!("Slurm job {id} ")).and_then(|r| r.split_whitespace().next()).unwrap_or("failed");
                        info.earlier.push(format!("{id} {state}"));
                        tracing::warn!(job = %id, "{msg}; resubmitting (attempt {} of {})", attempt + 1, retries + 1);
                        continue;
                    }
                    return Executed { result: Err(StageError::Failed(msg)), info: Some(info) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_safe_for_squeue() {
        assert_eq!(job_name(7, "train"), "pipeline-run7-train");
        assert_eq!(job_name(7, "a,b c"), "pipeline-run7-a_b_c");
    }

    #[test]
    fn time_limits_are_written_in_full() {
        assert_eq!(long_time("10:00"), "0:10:00");
        assert_eq!(long_time("1:00"), "0:01:00");
        assert_eq!(long_time("2:00:00"), "2:00:00");
        assert_eq!(long_time("1-00:00:00"), "1-00:00:00");
    }

    fn stage(cfg: ExecutorConfig) -> SlurmStage {
        SlurmStage { queue: std::sync::Arc::new(Queue::new(1)), cfg, workdir: "/w".into() }
    }

    fn status(exit: i32, err: Option<&str>) -> Option<JobStatus> {
        Some(JobStatus {
            exit_code: exit,
            error: err.map(String::from),
            cancelled: false,
            started_ms: 0,
            ended_ms: 0,
            node: "n1".into(),
            outcome: if exit == 0 { Some(Default::default()) } else { None },
        })
    }

    fn js(state: &str) -> Option<JobState> {
        Some(JobState { state: state.into(), node: "n1".into(), time_limit: "10:00".into(), reason: String::new() })
    }

    fn msg(e: Ended) -> String {
        match e {
            Ended::Failed(m, _, _) => m,
            Ended::Ok(_) => "ok".into(),
            Ended::Cancelled => "cancelled".into(),
        }
    }

    #[test]
    fn states_map_to_clear_failures() {
        let s = stage(ExecutorConfig { mem: Some("1G".into()), ..Default::default() });
        let log = Path::new("/nonexistent/slurm-5.log");
        assert_eq!(msg(s.settle("5", js("COMPLETED"), status(0, None), log)), "ok");
        // forgotten by squeue: the status file decides
        assert_eq!(msg(s.settle("5", None, status(0, None), log)), "ok");
        let m = msg(s.settle("5", js("FAILED"), status(3, Some("command exited with 3: boom")), log));
        assert!(m.starts_with("Slurm job 5 FAILED (exit 3) on n1: command exited with 3: boom; log /nonexistent/slurm-5.log"), "{m}");
        let m = msg(s.settle("5", js("TIMEOUT"), None, log));
        assert!(m.starts_with("Slurm job 5 TIMEOUT (time limit 0:10:00) on n1"), "{m}");
        assert!(msg(s.settle("5", js("OUT_OF_MEMORY"), None, log)).starts_with("Slurm job 5 OUT_OF_MEMORY (mem 1G)"));
        // a job cancelled from outside fails even if it wrote a (cancelled) status
        assert!(msg(s.settle("5", js("CANCELLED"), status(143, Some("cancelled")), log)).contains("CANCELLED"));
        // memory enforced by jobacct_gather: Slurm says FAILED, slurmstepd's lines say why
        let dir = tempfile::tempdir().unwrap();
        let oom_log = dir.path().join("slurm-6.log");
        std::fs::write(
            &oom_log,
            "started\nslurmstepd-n1: error: StepId=6.batch exceeded memory limit (489603072 > 52428800), being killed\nslurmstepd-n1: error: Exceeded job memory limit\n",
        )
        .unwrap();
        let m = msg(s.settle("6", js("FAILED"), status(137, Some("command killed by signal 9")), &oom_log));
        assert!(m.starts_with("Slurm job 6 OUT_OF_MEMORY (mem 1G) on n1: killed for exceeding its memory limit; Slurm reports FAILED; log "), "{m}");
        let m = msg(s.settle("6", None, None, &oom_log));
        assert!(m.starts_with("Slurm job 6 OUT_OF_MEMORY (mem 1G): killed for exceeding its memory limit; log "), "{m}");
        // a command that prints such words itself is not taken for a memory kill
        std::fs::write(&oom_log, "Exceeded job memory limit\n").unwrap();
        assert!(msg(s.settle("6", js("FAILED"), status(3, Some("command exited with 3")), &oom_log)).contains("FAILED (exit 3)"));
        assert!(matches!(s.settle("5", js("NODE_FAIL"), None, log), Ended::Failed(_, true, _)));
        assert!(matches!(s.settle("5", js("PREEMPTED"), None, log), Ended::Failed(_, true, _)));
        assert!(msg(s.settle("5", None, None, log)).contains("without writing its status file"));
    }

    #[test]
    fn sbatch_gets_every_setting() {
        let s = stage(ExecutorConfig {
            kind: Some("slurm".into()),
            partition: Some("gpu".into()),
            time: Some("2:00:00".into()),
            mem: Some("16G".into()),
            cpus: Some(8),
            gpus: Some(2),
            account: Some("lab".into()),
            qos: Some("high".into()),
            extra_args: vec!["--constraint=a100".into()],
            ..Default::default()
        });
        let job = Job {
            pipeline: "p".into(),
            stage: "train".into(),
            run_id: 4,
            kind: "command".into(),
            params: serde_json::json!({}),
            inputs: Default::default(),
            out_dir: "/o".into(),
            base_dir: "/b".into(),
            previous_output: None,
            status_file: None,
        };
        let a = s.sbatch_args(&job, "pipeline-run4-train", Path::new("/w/j"));
        for want in [
            "--parsable",
            "--no-requeue",
            "--job-name=pipeline-run4-train",
            "--output=/w/j/slurm-%j.log",
            "--partition=gpu",
            "--time=2:00:00",
            "--mem=16G",
            "--cpus-per-task=8",
            "--gpus=2",
            "--account=lab",
            "--qos=high",
            "--constraint=a100",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        assert_eq!(a.last().unwrap(), "/w/j/job.sh");
        // found by a hostile pass: Slurm expanded `%x` in a cache path, the log directory did
        // not exist and every job died at launch
        let a = s.sbatch_args(&job, "n", Path::new("/c%x/j"));
        assert!(a.iter().any(|x| x == "--output=/c%%x/j/slurm-%j.log"), "{a:?}");
        assert!(a.iter().any(|x| x == "--chdir=/c%x/j"), "{a:?}");
        let e = crate::executor::config::ExecutorConfig::resolve(Some(&serde_json::json!({"kind": "slurm", "workdir": ""})), None).unwrap_err();
        assert_eq!(e.0, "workdir");
        assert!(crate::executor::config::ExecutorConfig::resolve(Some(&serde_json::json!({"kind": "slurm", "workdir": "a\\b"})), None).is_err());
    }
}
