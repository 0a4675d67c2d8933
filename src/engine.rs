//! Executing a pipeline: tokio runs ready stages concurrently (bounded by `-j`), stage work
//! and hashing go to blocking threads, a failed stage stops only its dependents, and
//! cancellation (Ctrl-C, SIGTERM) stops everything cleanly with nothing half-committed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cache::store::{now_millis, now_secs};
use crate::cache::remote::transfer::{self, Moved};
use crate::cache::remote::{Remote, RemoteMode};
use crate::cache::{Cache, CacheError, Entry};
use crate::dag::inputs::resolve_inputs;
use crate::dag::{InputSource, Pipeline, StageNode};
use crate::executor::{ExecInfo, Executor, Job, RunExecutors};
use crate::progress::Bars;
#[allow(unused_imports)]
use crate::stages::{CancelFlag, Progress, StageContext, StageError, StageOutcome};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stages run at once (`-j`); 0 means the number of CPUs.
    pub jobs: usize,
    /// Run only these stages; what they need must already be cached.
    pub only: Vec<String>,
    /// Run these stages and everything downstream of them.
    pub from: Vec<String>,
    /// Rerun these stages even when cached.
    pub force: Vec<String>,
    pub quiet: bool,
    /// `manual`, `schedule`...
    pub trigger: String,
    /// The `--set` arguments, recorded in the run.
    pub overrides: Vec<String>,
    /// After cancellation, how long to wait for running stages to notice before abandoning
    /// them; `None` = [`CANCEL_GRACE`].
    pub cancel_grace: Option<std::time::Duration>,
    /// `--executor local|slurm`: every stage on this executor, whatever the file says.
    pub executor: Option<String>,
    /// A shared remote cache for this run (`--remote`, `--remote-mode`).
    pub remote: Option<RemoteHandle>,
}

/// Stages check for cancellation between units of work (a batch, an image), but one unit
/// can take long: a GPU kernel compile, a stuck read. After this long a cancelled run stops
/// waiting, records the stage as abandoned and returns; the stage's thread dies with the
/// process. Nothing is half-written either way: a stage's output only enters the cache in
/// one commit, after its work.
pub const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageStatus {
    Ran,
    Cached,
    Failed,
    Skipped,
    NotSelected,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Ran => "ran",
            StageStatus::Cached => "cached",
            StageStatus::Failed => "failed",
            StageStatus::Skipped => "skipped",
            StageStatus::NotSelected => "not selected",
        }
    }
}

/// What happened to one stage in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRun {
    pub name: String,
    pub kind: String,
    pub status: StageStatus,
    pub duration_ms: u64,
    pub key: Option<String>,
    pub output: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub params: Value,
    /// Where it ran: executor, Slurm job id, node, queue wait, run time (never in the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecInfo>,
    /// Input name -> content digest.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    #[serde(default)]
    pub outcome: StageOutcome,
    /// What moved to or from the remote cache for this stage, if one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteActivity>,
}

/// A stage's traffic with the remote cache.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoteActivity {
    /// Its output came from the remote (a hit there): what was downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulled: Option<Moved>,
    /// It ran and was uploaded: what was uploaded (blobs the remote lacked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<Moved>,
    /// A remote problem that made a lookup a miss or an upload fail (never a stage failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// A remote cache and how a run uses it.
#[derive(Clone)]
pub struct RemoteHandle(pub Arc<Remote>, pub RemoteMode);

impl std::fmt::Debug for RemoteHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteHandle({:?})", self.1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Running,
    Ok,
    Failed,
    Cancelled,
}

/// One run of a pipeline, as `pipeline runs` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: u64,
    pub pipeline: String,
    pub file: String,
    pub trigger: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub status: RunStatus,
    pub stages: Vec<StageRun>,
    #[serde(default)]
    pub overrides: Vec<String>,
    #[serde(default)]
    pub promotion: Option<Value>,
}

impl RunRecord {
    pub fn stage(&self, name: &str) -> Option<&StageRun> {
        self.stages.iter().find(|s| s.name == name)
    }
    /// `stage.metric` -> value, for every stage that has metrics.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for s in &self.stages {
            for (k, v) in &s.outcome.metrics {
                m.insert(format!("{}.{k}", s.name), *v);
            }
        }
        m
    }
}

impl crate::executor::Placements for RunRecord {
    fn placements(&self) -> Vec<(&str, Option<&ExecInfo>)> {
        self.stages.iter().map(|s| (s.name.as_str(), s.executor.as_ref())).collect()
    }
}

/// The path a stage sees for each input (views of upstream outputs, files in place), and
/// the views handed out, by input name (checked after the stage: it must not change them).
fn materialize_inputs(
    cache: &Cache,
    node: &StageNode,
    upstream: &dyn Fn(&str) -> Option<String>,
    scratch: &Path,
) -> Result<(BTreeMap<String, PathBuf>, Vec<(String, String)>), String> {
    let mut out = BTreeMap::new();
    let mut views = Vec::new();
    for (name, src) in &node.inputs {
        let path = match src {
            InputSource::Stage { stage, subpath } => {
                let digest = upstream(stage).ok_or_else(|| format!("input `{name}`: stage `{stage}` has no output"))?;
                let view = cache.view(&digest).map_err(|e| e.to_string())?;
                views.push((name.clone(), digest));
                match subpath {
                    Some(s) => view.join(s),
                    None => view,
                }
            }
            InputSource::File(p) | InputSource::Dir(p) => p.clone(),
            InputSource::Glob { matches, .. } => {
                // The stage sees one directory holding the matches.
                let dir = scratch.join(format!("glob-{name}"));
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                for m in matches {
                    let link = dir.join(m.file_name().unwrap_or_default());
                    #[cfg(unix)]
                    std::os::unix::fs::symlink(m, &link).map_err(|e| format!("{}: {e}", link.display()))?;
                }
                dir
            }
        };
        out.insert(name.clone(), path);
    }
    Ok((out, views))
}

/// A scratch directory name no earlier attempt used: a process left over from a killed run
/// may still write into its own, never into this one.
fn scratch_name(run_id: u64, stage: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let safe: String = stage.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("run{run_id}-{safe}-{}-{}-{}", std::process::id(), now_millis(), N.fetch_add(1, Ordering::Relaxed))
}

/// What a finished stage hands to the stages after it.
#[derive(Debug, Clone)]
enum Done {
    /// Output available (ran, cached, or not selected but cached).
    Output { run: StageRun },
    /// No output: failed, skipped or unavailable.
    Nothing { run: StageRun },
}

impl Done {
    fn run(&self) -> &StageRun {
        match self {
            Done::Output { run } | Done::Nothing { run } => run,
        }
    }
}

pub struct Engine {
    pub cache: Arc<Cache>,
    pub cancel: CancelFlag,
    /// A shared remote cache: misses are looked up there, and what ran is uploaded to it
    /// (in read-write mode).
    pub remote: Option<(Arc<Remote>, RemoteMode)>,
}

impl Engine {
    pub fn new(cache: Arc<Cache>, cancel: CancelFlag) -> Self {
        Self { cache, cancel, remote: None }
    }

    pub fn with_remote(mut self, remote: Option<(Arc<Remote>, RemoteMode)>) -> Self {
        self.remote = remote.filter(|(_, m)| *m != RemoteMode::Off);
        self
    }

    /// Run the pipeline; the run is recorded in the cache whatever its outcome.
    pub async fn run(&self, p: Arc<Pipeline>, opts: &RunOptions) -> Result<RunRecord, CacheError> {
        let n = p.stages.len();
        let selected = selection(&p, opts);
        // Stages neither selected nor needed by a selected stage are not even looked up.
        let mut needed = vec![false; n];
        for i in (0..n).filter(|&i| selected[i]) {
            for j in p.upstream_closure(i) {
                needed[j] = true;
            }
        }
        let force: HashSet<usize> = opts.force.iter().filter_map(|s| p.index(s)).collect();
        let jobs = if opts.jobs == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) } else { opts.jobs };
        let sem = Arc::new(Semaphore::new(jobs));
        let bars = Arc::new(Bars::new(opts.quiet));
        let run_id = self.cache.next_run_id()?;
        self.cache.clear_tmp()?;
        let executors = Arc::new(RunExecutors::new(run_id, self.cache.root(), &p.base_dir, opts.executor.clone()));
        let mut record = RunRecord {
            id: run_id,
            pipeline: p.name.clone(),
            file: p.file.display().to_string(),
            trigger: if opts.trigger.is_empty() { "manual".into() } else { opts.trigger.clone() },
            started_ms: now_millis(),
            ended_ms: None,
            status: RunStatus::Running,
            stages: Vec::new(),
            // a record is stored and shown: a secret passed with --set is kept out of it
            overrides: opts.overrides.iter().map(|o| crate::text::redact(o)).collect(),
            promotion: None,
        };
        // Recorded once, at the end: while it runs no other process can read the cache anyway,
        // and a second fsync would cost a no-op rerun a third of its time.
        tracing::info!(run = run_id, pipeline = %p.name, "run started");

        let mut done: Vec<Option<Done>> = vec![None; n];
        let mut started = vec![false; n];
        let mut set: JoinSet<(usize, Done)> = JoinSet::new();
        let mut task_stage = std::collections::HashMap::new();
        let grace = opts.cancel_grace.unwrap_or(CANCEL_GRACE);
        let mut cancel_deadline = None;
        loop {
            // Start every stage whose upstream is settled.
            let mut progressed = true;
            while progressed {
                progressed = false;
                for &i in &p.order {
                    if started[i] {
                        continue;
                    }
                    let ups: Vec<usize> = p.stages[i].upstream().filter_map(|u| p.index(u)).collect();
                    if ups.iter().any(|&u| done[u].is_none()) {
                        continue;
                    }
                    started[i] = true;
                    progressed = true;
                    if !needed[i] {
                        done[i] = Some(Done::Nothing { run: skipped(&p.stages[i], StageStatus::NotSelected, None) });
                        continue;
                    }
                    let blocked = ups.iter().find(|&&u| matches!(done[u], Some(Done::Nothing { .. })));
                    if let Some(&u) = blocked {
                        let why = format!("upstream `{}` {}", p.stages[u].name, done[u].as_ref().map(|d| d.run().status.as_str()).unwrap_or(""));
                        done[i] = Some(Done::Nothing { run: skipped(&p.stages[i], StageStatus::Skipped, Some(why)) });
                        continue;
                    }
                    if self.cancel.is_cancelled() {
                        done[i] = Some(Done::Nothing { run: skipped(&p.stages[i], StageStatus::Skipped, Some("cancelled".into())) });
                        continue;
                    }
                    let outputs: BTreeMap<String, String> = ups
                        .iter()
                        .filter_map(|&u| match &done[u] {
                            Some(Done::Output { run }) => run.output.clone().map(|o| (p.stages[u].name.clone(), o)),
                            _ => None,
                        })
                        .collect();
                    let task = StageTask {
                        p: p.clone(),
                        idx: i,
                        executor: executors.for_stage(&p.stages[i].executor),
                        cache: self.cache.clone(),
                        remote: self.remote.clone().or_else(|| opts.remote.as_ref().map(|h| (h.0.clone(), h.1))).filter(|(_, m)| *m != RemoteMode::Off),
                        cancel: self.cancel.clone(),
                        selected: selected[i],
                        force: force.contains(&i),
                        upstream: outputs,
                        run_id,
                        sem: sem.clone(),
                        bars: bars.clone(),
                    };
                    let handle = set.spawn(async move { (i, task.run().await) });
                    task_stage.insert(handle.id(), i);
                }
            }
            let next = if self.cancel.is_cancelled() {
                let deadline = *cancel_deadline.get_or_insert_with(|| tokio::time::Instant::now() + grace);
                match tokio::time::timeout_at(deadline, set.join_next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        for (i, d) in done.iter_mut().enumerate().filter(|(_, d)| d.is_none()) {
                            let why = if started[i] {
                                tracing::warn!(stage = %p.stages[i].name, "still running {:.0} s after cancellation: abandoned", grace.as_secs_f64());
                                format!("cancelled; still running {:.0} s later, abandoned (nothing committed)", grace.as_secs_f64())
                            } else {
                                "cancelled".to_string()
                            };
                            *d = Some(Done::Nothing { run: skipped(&p.stages[i], StageStatus::Skipped, Some(why)) });
                        }
                        executors.cancel_all();
                        set.detach_all();
                        break;
                    }
                }
            } else {
                // Wake up now and then to notice a cancellation while stages run.
                match tokio::time::timeout(std::time::Duration::from_millis(250), set.join_next()).await {
                    Ok(next) => next,
                    Err(_) => continue,
                }
            };
            match next {
                Some(Ok((i, d))) => {
                    log_stage(d.run());
                    done[i] = Some(d);
                }
                Some(Err(e)) => {
                    // A panic inside a stage task: fail that stage, keep the rest of the run going.
                    tracing::error!("a stage task panicked: {e}");
                    if let Some(&i) = task_stage.get(&e.id()) {
                        let r = skipped(&p.stages[i], StageStatus::Failed, Some(format!("panicked: {e}")));
                        done[i] = Some(Done::Nothing { run: r });
                    }
                }
                None => break,
            }
        }
        record.stages = p.order.iter().filter_map(|&i| done[i].as_ref().map(|d| d.run().clone())).collect();
        record.ended_ms = Some(now_millis());
        record.status = if self.cancel.is_cancelled() {
            RunStatus::Cancelled
        } else if record.stages.iter().any(|s| matches!(s.status, StageStatus::Failed | StageStatus::Skipped)) {
            // (NotSelected stages are not failures.)
            RunStatus::Failed
        } else {
            RunStatus::Ok
        };
        self.cache.put_run(run_id, &record)?;
        tracing::info!(run = run_id, status = ?record.status, "run finished");
        Ok(record)
    }
}

fn log_stage(r: &StageRun) {
    match r.status {
        // The summary prints failures for people; these are for log collectors.
        StageStatus::Failed => tracing::info!(stage = %r.name, error = r.error.as_deref().unwrap_or(""), "stage failed"),
        StageStatus::Skipped => tracing::info!(stage = %r.name, reason = r.error.as_deref().unwrap_or(""), "stage skipped"),
        s => tracing::info!(stage = %r.name, status = s.as_str(), ms = r.duration_ms, key = r.key.as_deref().unwrap_or(""), "stage done"),
    }
}

fn skipped(node: &StageNode, status: StageStatus, why: Option<String>) -> StageRun {
    StageRun {
        name: node.name.clone(),
        kind: node.kind.kind().to_string(),
        status,
        duration_ms: 0,
        key: None,
        output: None,
        error: why,
        // a record is stored and shown: known secret values out of it (the key, a hash, and
        // the cache entry, which must hash to it, keep the value)
        params: crate::text::redact_value(&node.params),
        executor: None,
        inputs: BTreeMap::new(),
        outcome: StageOutcome::default(),
        remote: None,
    }
}

/// Which stages run (true) or are only looked up in the cache (false).
pub fn selection(p: &Pipeline, opts: &RunOptions) -> Vec<bool> {
    p.selection(&opts.only, &opts.from)
}

struct StageTask {
    p: Arc<Pipeline>,
    idx: usize,
    executor: Arc<dyn Executor>,
    cache: Arc<Cache>,
    remote: Option<(Arc<Remote>, RemoteMode)>,
    cancel: CancelFlag,
    selected: bool,
    force: bool,
    upstream: BTreeMap<String, String>,
    run_id: u64,
    sem: Arc<Semaphore>,
    bars: Arc<Bars>,
}

impl StageTask {
    async fn run(self) -> Done {
        let t0 = Instant::now();
        let node = self.p.stages[self.idx].clone();
        let mut run = skipped(&node, StageStatus::Failed, None);
        let fail = |mut run: StageRun, msg: String| {
            run.status = StageStatus::Failed;
            run.error = Some(crate::text::clean(&msg));
            run.duration_ms = t0.elapsed().as_millis() as u64;
            Done::Nothing { run }
        };

        // Hash inputs and look the key up (locally, then on the remote), off the async threads.
        let may_reuse = !self.force && !node.volatile;
        let (cache, up, n2, remote) = (self.cache.clone(), self.upstream.clone(), node.clone(), self.remote.clone());
        let pipeline_name = self.p.name.clone();
        let ask_remote = may_reuse || !self.selected;
        let looked = tokio::task::spawn_blocking(move || {
            let resolved = resolve_inputs(&cache, &n2, &|s| up.get(s).cloned()).map_err(|e| e.to_string())?;
            let key = resolved.key_inputs(&n2).key();
            let mut hit = cache.usable_entry(&key).map_err(|e| e.to_string())?;
            let mut activity = None;
            if let (None, Some((remote, _)), true) = (&hit, &remote, ask_remote) {
                match transfer::pull(&cache, remote, &key, Some((&pipeline_name, &n2.name))) {
                    Ok(Some((entry, moved))) => {
                        hit = Some(entry);
                        activity = Some(RemoteActivity { pulled: Some(moved), ..Default::default() });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // A damaged or unreachable remote is a miss, never a failure.
                        tracing::warn!(stage = %n2.name, "{e}");
                        activity = Some(RemoteActivity { warning: Some(crate::text::clean(&e.to_string())), ..Default::default() });
                    }
                }
            }
            Ok::<_, String>((resolved, key, hit, activity))
        })
        .await;
        let (resolved, key, hit, activity) = match looked {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return fail(run, e),
            Err(e) => return fail(run, format!("panicked while hashing inputs: {e}")),
        };
        run.key = Some(key.0.clone());
        run.inputs = resolved.digests.clone();
        run.remote = activity;

        if let (Some(entry), true) = (hit.as_ref(), may_reuse || !self.selected) {
            let _ = self.cache.set_last(&self.p.name, &node.name, &key);
            // A local hit the remote lacks (its upload was interrupted, or it ran before the
            // remote was configured): share it now.
            if let (Some((remote, RemoteMode::ReadWrite)), None) = (self.remote.clone(), run.remote.as_ref()) {
                let (cache, e) = (self.cache.clone(), entry.clone());
                let pushed = tokio::task::spawn_blocking(move || match remote.has_entry(&e.key) {
                    Ok(true) => None,
                    Ok(false) => Some(upload(&cache, &remote, &e)),
                    Err(err) => Some(RemoteActivity { warning: Some(crate::text::clean(&err.to_string())), ..Default::default() }),
                })
                .await
                .ok()
                .flatten();
                run.remote = pushed;
            }
            run.status = if self.selected { StageStatus::Cached } else { StageStatus::NotSelected };
            run.output = Some(entry.output.clone());
            run.outcome = entry.outcome.clone();
            run.duration_ms = t0.elapsed().as_millis() as u64;
            return Done::Output { run };
        }
        if !self.selected {
            run.status = StageStatus::Skipped;
            run.error = Some("not selected and not in the cache: run it first, or drop --only".into());
            return Done::Nothing { run };
        }

        let _permit = match self.sem.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return fail(run, "scheduler closed".into()),
        };
        if self.cancel.is_cancelled() {
            run.status = StageStatus::Skipped;
            run.error = Some("cancelled".into());
            return Done::Nothing { run };
        }
        let t_run = Instant::now();
        let bar = self.bars.stage(&node.name);
        let progress = Progress::new(bar.clone());
        let (cache, cancel, pipeline, up) = (self.cache.clone(), self.cancel.clone(), self.p.clone(), self.upstream.clone());
        let upload_to = self.remote.clone().filter(|(_, m)| *m == RemoteMode::ReadWrite).map(|(r, _)| r);
        let (n3, key3, run_id) = (node.clone(), key.clone(), self.run_id);
        let hashed_before = resolved.digests.clone();
        let exec_info: Arc<std::sync::Mutex<Option<ExecInfo>>> = Arc::default();
        let (executor, exec_slot) = (self.executor.clone(), exec_info.clone());
        let result = tokio::task::spawn_blocking(move || -> Result<(Entry, StageOutcome, Option<RemoteActivity>), String> {
            let scratch = cache.tmp_dir().join(scratch_name(run_id, &n3.name));
            let out_dir = scratch.join("out");
            std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
            let cleanup = Cleanup(scratch.clone());
            let (inputs, mut views) = materialize_inputs(&cache, &n3, &|s| up.get(s).cloned(), &scratch)?;
            let previous_entry = cache.last(&pipeline.name, &n3.name).and_then(|k| cache.entry(&k).ok().flatten());
            let previous = previous_entry.as_ref().and_then(|e| cache.view(&e.output).ok());
            if let (Some(e), Some(_)) = (&previous_entry, &previous) {
                views.push(("(previous output)".into(), e.output.clone()));
            }
            let snapshots = views
                .iter()
                .map(|(name, d)| cache.snapshot_view(d).map(|s| (name.clone(), s)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            // A stage may not change what other stages and the store see.
            let check_views = || -> Result<(), String> {
                for (name, snap) in &snapshots {
                    if let Err(what) = cache.check_view(snap) {
                        // said as "changed", not "the stage changed": a sibling reading the
                        // same view, or another process, may have (and this stage may then have
                        // read its bytes)
                        return Err(format!("its input `{name}` (a read-only view of the cache) changed while the stage ran (by it, or by a stage or process using the same view): {what}; nothing was committed"));
                    }
                }
                Ok(())
            };
            // Execute: in-process, or as a job elsewhere (Slurm) writing only into out_dir.
            let job = Job {
                pipeline: pipeline.name.clone(),
                stage: n3.name.clone(),
                run_id,
                kind: n3.kind.kind().to_string(),
                params: n3.params.clone(),
                inputs: inputs.clone(),
                out_dir: out_dir.clone(),
                base_dir: pipeline.base_dir.clone(),
                previous_output: previous.clone(),
                status_file: None,
            };
            let executed = executor.execute(&*n3.kind, &job, &progress, &cancel);
            *exec_slot.lock().unwrap_or_else(|e| e.into_inner()) = executed.info;
            let result = executed.result;
            check_views()?;
            // Inputs outside the cache (files and directories named by path) are read in
            // place: one that changed while the stage ran would store an output made from
            // other bytes under the key of the first ones. Hash them again.
            if result.is_ok() && n3.inputs.values().any(|src| !matches!(src, InputSource::Stage { .. })) {
                let now = resolve_inputs(&cache, &n3, &|s| up.get(s).cloned()).map_err(|e| e.to_string())?;
                if let Some((name, _)) = now.digests.iter().find(|(name, d)| hashed_before.get(*name) != Some(*d)) {
                    let from = n3.inputs.get(name).map(|s| s.describe()).unwrap_or_default();
                    return Err(format!("input `{name}` ({from}) changed while the stage ran; nothing was committed: run it again"));
                }
            }
            let outcome = match result {
                Ok(o) => o,
                Err(StageError::Cancelled) => return Err("cancelled".into()),
                Err(e) => return Err(e.to_string()),
            };
            if cancel.is_cancelled() {
                return Err("cancelled".into());
            }
            let manifest = cache.store_dir(&out_dir).map_err(|e| e.to_string())?;
            // Paths a stage printed point into its scratch dir; point them at the view instead.
            let mut outcome = outcome;
            let view_dir = cache.root().join("views").join(manifest.digest());
            let (from, to) = (out_dir.display().to_string(), view_dir.display().to_string());
            for line in outcome.summary.iter_mut() {
                *line = crate::text::clean(&line.replace(&from, &to));
            }
            let entry = Entry {
                key: key3.clone(),
                stage: n3.name.clone(),
                pipeline: pipeline.name.clone(),
                key_inputs: resolved.key_inputs(&n3),
                input_sources: resolved.sources.clone(),
                output: manifest.digest(),
                size: manifest.size(),
                files: manifest.files.len(),
                created: now_secs(),
                duration_ms: t_run.elapsed().as_millis() as u64,
                run_id,
                outcome: outcome.clone(),
            };
            cache.commit(&entry, &manifest).map_err(|e| e.to_string())?;
            cache.view(&entry.output).map_err(|e| e.to_string())?;
            drop(cleanup);
            // Share it: blobs, manifest, entry last. A failed upload is a warning; the result
            // is committed locally either way.
            let pushed = upload_to.map(|remote| upload(&cache, &remote, &entry));
            Ok((entry, outcome, pushed))
        })
        .await;
        run.executor = exec_info.lock().unwrap_or_else(|e| e.into_inner()).take();
        match result {
            Ok(Ok((entry, outcome, pushed))) => {
                bar.finish_and_clear();
                if let Some(p) = pushed {
                    let r = run.remote.get_or_insert_with(Default::default);
                    r.pushed = p.pushed;
                    if p.warning.is_some() {
                        r.warning = p.warning;
                    }
                }
                run.status = StageStatus::Ran;
                run.output = Some(entry.output);
                run.outcome = outcome;
                run.duration_ms = t0.elapsed().as_millis() as u64;
                Done::Output { run }
            }
            Ok(Err(e)) => {
                bar.finish_and_clear();
                fail(run, e)
            }
            Err(e) => {
                bar.finish_and_clear();
                fail(run, format!("panicked: {e}"))
            }
        }
    }
}

/// Upload a committed entry; a failure is a warning in the stage's record, never a failure.
fn upload(cache: &Cache, remote: &Remote, entry: &Entry) -> RemoteActivity {
    match transfer::push(cache, remote, entry, false) {
        Ok(moved) => RemoteActivity { pushed: Some(moved), ..Default::default() },
        Err(e) => {
            tracing::warn!(stage = %entry.stage, "upload failed: {e}");
            RemoteActivity { warning: Some(format!("upload failed: {}", crate::text::clean(&e.to_string()))), ..Default::default() }
        }
    }
}

/// Removes a stage's scratch directory however the stage ends.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = crate::cache::ingest::remove_tree(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::stages::{wrap, InputDecl, Stage};

    /// Blocks, ignoring cancellation, until the test releases it: a stage stuck in one long
    /// unit of work (a GPU kernel compile).
    struct Stuck;
    static RELEASE: AtomicBool = AtomicBool::new(false);

    #[derive(serde::Deserialize, serde::Serialize, schemars::JsonSchema, Default)]
    #[serde(deny_unknown_fields, default)]
    struct NoParams {}

    impl Stage for Stuck {
        type Params = NoParams;
        const KIND: &'static str = "stuck";
        const VERSION: u32 = 1;
        const DESCRIPTION: &'static str = "test";
        const INPUTS: &'static [InputDecl] = &[];
        fn run(_: &NoParams, _: &StageContext<'_>) -> Result<StageOutcome, StageError> {
            while !RELEASE.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(StageOutcome::default())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stage_that_ignores_cancellation_is_abandoned_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(
            &file,
            r#"{"name": "t", "stages": {"a": {"kind": "command", "params": {"cmd": "true"}},
                "b": {"kind": "command", "inputs": {"x": "a"}, "params": {"cmd": "true"}}}}"#,
        )
        .unwrap();
        let mut p = crate::dag::load(&file, &[]).unwrap();
        let a = p.index("a").unwrap();
        p.stages[a].kind = Arc::from(wrap::<Stuck>());
        p.stages[a].params = serde_json::json!({});
        let cache = Arc::new(Cache::open(&dir.path().join("cache"), false).unwrap());
        let cancel = CancelFlag::new();
        let engine = Engine::new(cache.clone(), cancel.clone());
        let opts = RunOptions { quiet: true, cancel_grace: Some(Duration::from_millis(300)), ..Default::default() };
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        // generous bound: without the grace period this never returns until RELEASE
        let record = tokio::time::timeout(Duration::from_secs(20), engine.run(Arc::new(p), &opts)).await;
        RELEASE.store(true, Ordering::SeqCst);
        let record = record.expect("the run should return once the grace period is over").unwrap();
        assert_eq!(record.status, RunStatus::Cancelled, "{:?}", record.stages);
        let a = record.stages.iter().find(|s| s.name == "a").unwrap();
        assert_eq!(a.status, StageStatus::Skipped);
        assert!(a.error.as_deref().unwrap_or("").contains("abandoned"), "{:?}", a.error);
        assert!(a.output.is_none());
        let b = record.stages.iter().find(|s| s.name == "b").unwrap();
        assert_eq!(b.status, StageStatus::Skipped);
        // nothing of `a` reached the cache
        assert!(cache.last("t", "a").is_none());
    }
}
