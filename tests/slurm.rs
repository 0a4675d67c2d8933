//! End to end on a real Slurm: `command` stages on the Slurm executor, through the CLI.
//!
//! The cluster is the one `SLURM_CONF` names when `sinfo` answers there, else one started by
//! `.ci/slurm-up` (a single node on 127.0.0.1, installed from apt when missing). When Slurm
//! cannot be installed or started, every test prints why and passes, unless
//! `PIPELINE_REQUIRE_SLURM=1` (CI), which makes that a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pipeline");

/// `SLURM_CONF` of a working cluster, or `None` (skip) when there is none to be had.
fn cluster() -> Option<String> {
    static CONF: OnceLock<Result<String, String>> = OnceLock::new();
    let r = CONF.get_or_init(|| {
        if let Ok(conf) = std::env::var("SLURM_CONF") {
            if sinfo_ok(&conf) {
                return Ok(conf);
            }
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/slurm-up");
        let out = Command::new(&script).stderr(Stdio::piped()).output().map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let conf = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("export SLURM_CONF=").map(str::to_string))
            .filter(|_| out.status.success());
        match conf {
            Some(c) if sinfo_ok(&c) => Ok(c),
            _ => Err(format!("{} failed ({}): {}", script.display(), out.status, String::from_utf8_lossy(&out.stderr).trim())),
        }
    });
    match r {
        Ok(c) => Some(c.clone()),
        Err(why) => {
            if std::env::var("PIPELINE_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
                panic!("PIPELINE_REQUIRE_SLURM=1 but no Slurm cluster could be started: {why}");
            }
            eprintln!("SKIPPED: no Slurm cluster could be installed or started here: {why}");
            None
        }
    }
}

/// The tests that take the (single) node down hold this exclusively; every other test holds it
/// shared, so none of them loses its jobs to another's node failure.
static NODE: RwLock<()> = RwLock::new(());
fn shared() -> RwLockReadGuard<'static, ()> {
    NODE.read().unwrap_or_else(|e| e.into_inner())
}
fn exclusive() -> RwLockWriteGuard<'static, ()> {
    NODE.write().unwrap_or_else(|e| e.into_inner())
}

fn sinfo_ok(conf: &str) -> bool {
    Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .env("SLURM_CONF", conf)
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("idle") || String::from_utf8_lossy(&o.stdout).contains("mix") || String::from_utf8_lossy(&o.stdout).contains("alloc"))
}

struct Sandbox {
    dir: tempfile::TempDir,
    conf: String,
}

impl Sandbox {
    fn new(conf: &str) -> Self {
        Self { dir: tempfile::tempdir().unwrap(), conf: conf.to_string() }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.path())
            .env("PIPELINE_CACHE", self.path().join("cache"))
            .env("SLURM_CONF", &self.conf)
            .env_remove("PIPELINE_LOG");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn squeue(&self, args: &[&str]) -> String {
        let o = Command::new("squeue").args(args).env("SLURM_CONF", &self.conf).output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    }
    /// Job ids (any state Slurm still knows) of jobs whose name ends with `-<stage>`.
    fn jobs_of(&self, stage: &str, states: &str) -> Vec<String> {
        self.squeue(&["-h", &format!("--states={states}"), "-o", "%i %j"])
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, n)| n.starts_with("pipeline-run") && n.ends_with(&format!("-{stage}")))
            .map(|(i, _)| i.to_string())
            .collect()
    }
    fn wait_running(&self, stage: &str, within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(id) = self.jobs_of(stage, "RUNNING").first() {
                return id.clone();
            }
            assert!(t0.elapsed() < within, "no running job for `{stage}` after {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fn scontrol(&self, args: &[&str]) -> Output {
        Command::new("scontrol").args(args).env("SLURM_CONF", &self.conf).output().unwrap()
    }
    /// The state `squeue` shows for job `id` (empty once forgotten).
    fn job_state(&self, id: &str) -> String {
        self.squeue(&["-h", "--states=all", "-j", id, "-o", "%T"]).trim().to_string()
    }
    /// The job id `runs show ID` gives for `stage`, and its whole line.
    fn job_line(&self, run: &str, stage: &str) -> (String, String) {
        let show = text(&self.run(&["runs", "show", run]));
        let prefix = format!("{stage}: slurm job ");
        let line = show.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no job line for {stage}:\n{show}")).to_string();
        let id: String = line[prefix.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
        (id, line)
    }
    /// Force the node of running job `id` down (as a node failure looks to the controller),
    /// wait until Slurm shows the job NODE_FAIL, then return the node to service.
    fn fail_node_under(&self, id: &str) {
        let node = self.squeue(&["-h", "-j", id, "-o", "%N"]).trim().to_string();
        assert!(!node.is_empty(), "job {id} has no node");
        let o = self.scontrol(&["update", &format!("nodename={node}"), "state=down", "reason=pipeline-test"]);
        assert!(o.status.success(), "{}", text(&o));
        let t0 = Instant::now();
        while self.job_state(id) != "NODE_FAIL" {
            assert!(t0.elapsed() < Duration::from_secs(20), "job {id} is {:?}, not NODE_FAIL, 20 s after its node went down", self.job_state(id));
            std::thread::sleep(Duration::from_millis(100));
        }
        // With ReturnToService=2 the node may be back already (slurmd re-registers); `resume`
        // is refused then.
        let t0 = Instant::now();
        loop {
            let st = Command::new("sinfo").args(["-h", "-n", &node, "-o", "%T"]).env("SLURM_CONF", &self.conf).output().unwrap();
            let st = String::from_utf8_lossy(&st.stdout).trim().to_string();
            if st.starts_with("idle") || st.starts_with("mix") || st.starts_with("alloc") {
                break;
            }
            let _ = self.scontrol(&["update", &format!("nodename={node}"), "state=resume"]);
            assert!(t0.elapsed() < Duration::from_secs(30), "node {node} is {st:?} 30 s after resume");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fn export(&self, stage: &str, to: &str) -> PathBuf {
        let dst = self.path().join(to);
        let o = self.run(&["cache", "export", stage, dst.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        dst
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every file under `dir`, relative path -> bytes.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push((p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    v.sort();
    v
}

const THREE: &str = r#"{"name": "three", "executor": {"kind": "slurm", "time": "5:00"},
  "stages": {
    "gen": {"kind": "command", "params": {"n": 7,
      "cmd": "echo $P_n > $OUT/n.txt; mkdir $OUT/sub; seq 1 20000 > $OUT/sub/seq.txt"}},
    "double": {"kind": "command", "inputs": {"x": "gen"},
      "params": {"cmd": "echo $(( $(cat $IN_x/n.txt) * 2 )) > $OUT/d.txt; wc -l < $IN_x/sub/seq.txt > $OUT/lines"}},
    "join": {"kind": "command", "inputs": {"a": "gen", "b": "double"},
      "params": {"cmd": "cat $IN_a/n.txt $IN_b/d.txt $IN_b/lines > $OUT/all.txt; echo joined"}}
  }}"#;

#[test]
fn a_pipeline_on_slurm_runs_every_stage_as_a_job_with_the_local_outputs_and_reruns_as_hits() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let slurm = Sandbox::new(&conf);
    slurm.write("p.json", THREE);
    let o = slurm.run(&["run", "p.json", "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let show = text(&slurm.run(&["runs", "show", "1"]));
    for stage in ["gen", "double", "join"] {
        let line = show.lines().find(|l| l.starts_with(&format!("{stage}: slurm job "))).unwrap_or_else(|| panic!("no job line for {stage}:\n{show}"));
        let id: String = line[format!("{stage}: slurm job ").len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
        assert!(!id.is_empty(), "{line}");
        assert!(line.contains(" on ") && line.contains("queue wait") && line.contains("run time"), "{line}");
    }
    // the same pipeline on the local executor, in a cache of its own
    let local = Sandbox::new(&conf);
    local.write("p.json", THREE);
    let o = local.run(&["run", "p.json", "-q", "--executor", "local"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&local.run(&["runs", "show", "1"])).contains("slurm job"), "--executor local ran jobs");
    for stage in ["gen", "double", "join"] {
        let a = tree(&slurm.export(stage, &format!("out-{stage}")));
        let b = tree(&local.export(stage, &format!("out-{stage}")));
        assert!(!a.is_empty());
        assert_eq!(a, b, "outputs of `{stage}` differ between Slurm and local");
    }
    // same keys: the executor is not part of the key
    let keys = |s: &Sandbox| text(&s.run(&["plan", "p.json", "--json"]));
    assert_eq!(keys(&slurm), keys(&local));
    // a rerun is all hits and submits nothing
    // this sandbox's jobs only (by their work directory): the other tests submit jobs too
    let ours = |s: &Sandbox| s.squeue(&["-h", "--states=all", "-o", "%i %Z"]).lines().filter(|l| l.contains(s.path().to_str().unwrap())).count();
    let before = ours(&slurm);
    assert!(before >= 3, "{before}");
    let o = slurm.run(&["run", "p.json", "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let show = text(&slurm.run(&["runs", "show", "2"]));
    assert!(!show.contains("slurm job"), "the rerun submitted jobs:\n{show}");
    assert_eq!(show.matches("cached").count(), 3, "{show}");
    assert_eq!(ours(&slurm), before, "the rerun submitted jobs");
}

#[test]
fn a_failing_command_on_slurm_says_failed_exit_3_with_the_log_tail() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let s = Sandbox::new(&conf);
    s.write(
        "p.json",
        r#"{"name": "f", "stages": {"failing": {"kind": "command", "executor": {"kind": "slurm"},
            "params": {"cmd": "echo about to fail; echo boom-on-stderr >&2; exit 3"}}}}"#,
    );
    let o = s.run(&["run", "p.json", "-q"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("FAILED (exit 3)"), "{t}");
    assert!(t.contains("boom-on-stderr"), "{t}");
    assert!(t.contains("log ") && t.contains(".log"), "{t}");
    let show = text(&s.run(&["runs", "show", "1"]));
    assert!(show.contains("FAILED (exit 3)") && show.contains("failing: slurm job"), "{show}");
    assert!(!s.run(&["cache", "show", "failing"]).status.success(), "a failed stage was committed");
}

/// Found by a hostile pass: a `%` in the cache's path went into `--output` as a Slurm
/// filename pattern (`%x`: the job name), the log's directory did not exist and every job
/// died at launch with "FAILED ... (empty)".
#[test]
fn a_percent_in_the_cache_path_is_not_a_slurm_pattern() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let s = Sandbox::new(&conf);
    s.write("p.json", r#"{"name": "pc", "stages": {"c": {"kind": "command", "executor": {"kind": "slurm"}, "params": {"cmd": "echo c > $OUT/c"}}}}"#);
    let cache = s.path().join("c%x%j");
    let o = s.cmd(&["--cache", cache.to_str().unwrap(), "run", "p.json", "-q"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = s.cmd(&["--cache", cache.to_str().unwrap(), "cache", "show", "c"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_stage_over_its_time_limit_gives_timeout() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let s = Sandbox::new(&conf);
    s.write(
        "p.json",
        r#"{"name": "t", "stages": {"slowpoke": {"kind": "command", "executor": {"kind": "slurm", "time": "1"},
            "params": {"cmd": "echo partial > $OUT/partial; sleep 600"}}}}"#,
    );
    let t0 = Instant::now();
    let o = s.run(&["run", "p.json", "-q"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("TIMEOUT (time limit 0:01:00)"), "{t}");
    assert!(t0.elapsed() < Duration::from_secs(240), "took {:?}", t0.elapsed());
    assert!(!s.run(&["cache", "show", "slowpoke"]).status.success(), "a timed-out stage was committed");
}

#[test]
fn cancelling_the_run_cancels_its_jobs() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let s = Sandbox::new(&conf);
    s.write(
        "p.json",
        r#"{"name": "c", "executor": {"kind": "slurm"}, "stages": {
            "sleepy1": {"kind": "command", "params": {"cmd": "sleep 300"}},
            "sleepy2": {"kind": "command", "params": {"cmd": "sleep 300"}}}}"#,
    );
    let child = s.cmd(&["run", "p.json", "-q", "-j", "2"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    s.wait_running("sleepy1", Duration::from_secs(30));
    s.wait_running("sleepy2", Duration::from_secs(30));
    let t0 = Instant::now();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(15), "cancel took {:?}", t0.elapsed());
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    // none of its jobs is left pending or running
    assert!(s.jobs_of("sleepy1", "PENDING,RUNNING,COMPLETING").is_empty() && s.jobs_of("sleepy2", "PENDING,RUNNING,COMPLETING").is_empty(), "{}", s.squeue(&["-h"]));
}

#[test]
fn a_job_cancelled_from_outside_fails_its_stage_and_commits_nothing() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let s = Sandbox::new(&conf);
    s.write(
        "p.json",
        r#"{"name": "v", "executor": {"kind": "slurm"}, "stages": {
            "victim": {"kind": "command", "params": {"cmd": "echo half > $OUT/half; sleep 300"}},
            "after": {"kind": "command", "inputs": {"x": "victim"}, "params": {"cmd": "cp $IN_x/half $OUT/"}}}}"#,
    );
    let child = s.cmd(&["run", "p.json", "-q"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let id = s.wait_running("victim", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let o = Command::new("scancel").arg(&id).env("SLURM_CONF", &conf).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(&format!("Slurm job {id} CANCELLED")), "{t}");
    assert!(!s.run(&["cache", "show", "victim"]).status.success(), "a cancelled job's output was committed");
    let show = text(&s.run(&["runs", "show", "1"]));
    assert!(show.contains("upstream `victim` failed") || show.contains("skipped"), "{show}");
    let v = s.run(&["cache", "verify"]);
    assert!(v.status.success(), "{}", text(&v));
}

/// Memory is enforced on the test cluster by jobacct_gather/linux with OverMemoryKill (no
/// cgroups in this container): Slurm kills the job and reports it FAILED (reason
/// JobLaunchFailure, exit 0:9), and slurmstepd writes `exceeded memory limit` into its log.
#[test]
fn a_stage_over_its_memory_is_killed_and_named_out_of_memory() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let s = Sandbox::new(&conf);
    s.write(
        "p.json",
        r#"{"name": "m", "executor": {"kind": "slurm", "mem": "50M"}, "stages": {
            "hog": {"kind": "command", "params": {"cmd": "echo partial > $OUT/partial; v=$(head -c 300M /dev/zero | tr '\\0' a); sleep 30; echo ${#v} > $OUT/len"}},
            "light": {"kind": "command", "params": {"cmd": "echo ok > $OUT/ok"}}}}"#,
    );
    let t0 = Instant::now();
    let o = s.run(&["run", "p.json", "-q", "-j", "2"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t0.elapsed() < Duration::from_secs(28), "the job was not killed: took {:?}\n{t}", t0.elapsed());
    let (id, line) = s.job_line("1", "hog");
    assert!(t.contains(&format!("Slurm job {id} OUT_OF_MEMORY (mem 50M) on ")), "{t}");
    assert!(t.contains("exceeding its memory limit") && t.contains(&format!("slurm-{id}.log")), "{t}");
    assert!(line.contains(&format!("slurm-{id}.log")), "{line}");
    assert!(!s.run(&["cache", "show", "hog"]).status.success(), "an out-of-memory stage was committed");
    // the same limit is no obstacle to a stage that stays under it
    assert!(s.run(&["cache", "show", "light"]).status.success(), "{t}");
}

/// A node failure under a running job: Slurm ends the job NODE_FAIL (the batch job is not
/// requeued: `--no-requeue`), and with `retries: 1` the stage is submitted again.
#[test]
fn a_node_failure_is_resubmitted_and_the_second_attempt_is_committed() {
    let Some(conf) = cluster() else { return };
    let _node = exclusive();
    let s = Sandbox::new(&conf);
    s.write(
        "p.json",
        r#"{"name": "n", "stages": {"fragile": {"kind": "command", "executor": {"kind": "slurm", "retries": 1},
            "params": {"cmd": "echo started > $OUT/started; sleep 4; echo ok > $OUT/ok"}}}}"#,
    );
    let child = s.cmd(&["run", "p.json", "-q"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let first = s.wait_running("fragile", Duration::from_secs(30));
    s.fail_node_under(&first);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let (second, line) = s.job_line("1", "fragile");
    assert_ne!(second, first, "{line}");
    assert!(line.contains(&format!("2 attempts (earlier: job {first} NODE_FAIL)")), "{line}");
    assert_eq!(s.job_state(&second), "COMPLETED");
    let out = tree(&s.export("fragile", "out"));
    assert_eq!(out, vec![("ok".to_string(), b"ok\n".to_vec()), ("started".to_string(), b"started\n".to_vec())]);
}

#[test]
fn a_node_failure_without_retries_fails_the_stage_naming_node_fail() {
    let Some(conf) = cluster() else { return };
    let _node = exclusive();
    let s = Sandbox::new(&conf);
    s.write(
        "p.json",
        r#"{"name": "n", "stages": {"fragile": {"kind": "command", "executor": {"kind": "slurm", "retries": 0},
            "params": {"cmd": "echo started > $OUT/started; sleep 4; echo ok > $OUT/ok"}}}}"#,
    );
    let child = s.cmd(&["run", "p.json", "-q"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let id = s.wait_running("fragile", Duration::from_secs(30));
    s.fail_node_under(&id);
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(&format!("Slurm job {id} NODE_FAIL")) && t.contains(&format!("slurm-{id}.log")), "{t}");
    let (again, line) = s.job_line("1", "fragile");
    assert_eq!(again, id, "resubmitted with retries 0: {line}");
    assert!(!s.run(&["cache", "show", "fragile"]).status.success(), "a stage whose node failed was committed");
}

#[test]
fn an_unwritable_work_directory_is_named() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let s = Sandbox::new(&conf);
    std::fs::write(s.path().join("not-a-dir"), "x").unwrap();
    s.write(
        "p.json",
        r#"{"name": "w", "stages": {"a": {"kind": "command", "executor": {"kind": "slurm", "workdir": "not-a-dir/sub"},
            "params": {"cmd": "true"}}}}"#,
    );
    let t = text(&s.run(&["run", "p.json", "-q"]));
    assert!(t.contains("Slurm work directory") && t.contains("executor.workdir"), "{t}");
}

#[test]
fn set_overrides_executor_settings_without_changing_the_key() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let s = Sandbox::new(&conf);
    s.write("p.json", THREE);
    let plan = |extra: &[&str]| {
        let mut a = vec!["plan", "p.json", "--json"];
        a.extend_from_slice(extra);
        let o = s.run(&a);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert_eq!(plan(&[]), plan(&["--set", "join.executor.cpus=2", "--set", "gen.executor.partition=debug"]));
    let o = s.run(&["plan", "p.json", "--set", "join.executor.kind=k8s"]);
    assert!(!o.status.success() && text(&o).contains("stages.join.executor.kind"), "{}", text(&o));
    // a setting that sbatch refuses fails the stage with sbatch's message
    let o = s.run(&["run", "p.json", "-q", "--set", "gen.executor.partition=nosuchpartition"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("sbatch"), "{}", text(&o));
}

/// The embedded study (reduced) with every stage, `train` and `evaluate` among them, as Slurm
/// jobs: the same outputs, byte for byte, as on the local executor, so the same report.
#[cfg(feature = "ml")]
#[test]
fn the_embedded_study_on_slurm_trains_and_evaluates_as_it_does_locally() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let study = repo.join("pipelines/emotion.json");
    let reduced = [
        "--set", "demo-data.per_class=20", "--set", "demo-data.valid_per_class=4", "--set", "demo-data.test_per_class=6",
        "--set", "augment.per_class=60", "--set", "train.epochs=3",
    ];
    let (slurm, local) = (Sandbox::new(&conf), Sandbox::new(&conf));
    for (s, executor) in [(&slurm, "slurm"), (&local, "local")] {
        let mut args = vec!["run", study.to_str().unwrap(), "-q", "--executor", executor];
        args.extend_from_slice(&reduced);
        let o = s.run(&args);
        assert!(o.status.success(), "{executor}: {}", text(&o));
    }
    let show = text(&slurm.run(&["runs", "show", "1"]));
    for stage in ["train", "evaluate"] {
        assert!(show.lines().any(|l| l.starts_with(&format!("{stage}: slurm job "))), "{stage} did not run as a job:\n{show}");
        let a = tree(&slurm.export(stage, &format!("out-{stage}")));
        let b = tree(&local.export(stage, &format!("out-{stage}")));
        assert!(a.iter().any(|(p, _)| p == "report.md" || p == "model.mpk"), "{stage}: {:?}", a.iter().map(|f| &f.0).collect::<Vec<_>>());
        for ((pa, ba), (pb, bb)) in a.iter().zip(b.iter()) {
            assert_eq!(pa, pb);
            assert!(ba == bb, "{stage}: {pa} differs between Slurm and local");
        }
        assert_eq!(a.len(), b.len());
    }
}

/// Puts a partition back up when dropped (a failing test must not leave the cluster down).
struct PartitionUp<'a>(&'a Sandbox, String);
impl Drop for PartitionUp<'_> {
    fn drop(&mut self) {
        let _ = self.0.scontrol(&["update", &format!("partitionname={}", self.1), "state=up"]);
    }
}

/// A job that can never start (its partition is down) was waited on for ever, its progress
/// saying only "pending". Now Slurm's reason is shown and warned about, and `max_pending`
/// gives up: the job is cancelled and the stage fails naming the reason.
#[test]
fn a_job_on_a_partition_that_is_down_shows_slurms_reason_and_max_pending_gives_up() {
    let Some(conf) = cluster() else { return };
    let _node = exclusive();
    let s = Sandbox::new(&conf);
    let o = Command::new("sinfo").args(["-h", "-o", "%P"]).env("SLURM_CONF", &conf).output().unwrap();
    let partition = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim_end_matches('*').to_string();
    assert!(!partition.is_empty(), "sinfo shows no partition");
    let o = s.scontrol(&["update", &format!("partitionname={partition}"), "state=down"]);
    assert!(o.status.success(), "{}", text(&o));
    let _up = PartitionUp(&s, partition.clone());
    s.write(
        "p.json",
        r#"{"name": "stuck", "stages": {"a": {"kind": "command", "executor": {"kind": "slurm", "max_pending": "0:04"},
            "params": {"cmd": "echo ran > $OUT/x"}}}}"#,
    );
    let t0 = Instant::now();
    let o = s.run(&["run", "p.json"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert!(t.contains("still PENDING after") && t.contains("max_pending 0:04") && t.contains("PartitionDown"), "{t}");
    assert!(t.contains("PartitionDown usually needs an administrator"), "no warning naming the reason:\n{t}");
    assert!(!s.run(&["cache", "show", "a"]).status.success(), "a stage that never ran was committed");
    // the job is cancelled, not left queued for when the partition comes back
    let (id, _) = s.job_line("1", "a");
    let st = s.job_state(&id);
    assert!(st.is_empty() || st == "CANCELLED", "job {id} is {st:?}");
}

/// `cache/slurm` grew by a directory per job for ever, `gc` included. A successful job's
/// directory is removed when it ends (unless `keep_logs`); a failed one's is kept for its log
/// until `cache gc`, which removes only what the executor wrote there.
#[test]
fn job_directories_are_removed_after_success_and_by_gc_after_failure() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let s = Sandbox::new(&conf);
    let jobs = || -> Vec<PathBuf> {
        let d = s.path().join("cache/slurm");
        let mut v: Vec<PathBuf> = std::fs::read_dir(&d).map(|r| r.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()).unwrap_or_default();
        v.sort();
        v
    };
    s.write(
        "p.json",
        r#"{"name": "j", "executor": {"kind": "slurm"}, "stages": {
            "ok": {"kind": "command", "params": {"cmd": "echo fine > $OUT/x"}},
            "kept": {"kind": "command", "executor": {"keep_logs": true}, "params": {"cmd": "echo kept > $OUT/x"}},
            "bad": {"kind": "command", "params": {"cmd": "exit 4"}}}}"#,
    );
    let o = s.run(&["run", "p.json", "-q"]);
    assert!(!o.status.success(), "{}", text(&o));
    let left = jobs();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|p| p.to_string_lossy().ends_with("-kept") || p.to_string_lossy().contains("-kept-")), "{left:?}");
    assert!(left.iter().any(|p| p.to_string_lossy().contains("-bad-")), "{left:?}");
    let (_, kept_line) = s.job_line("1", "kept");
    assert!(kept_line.contains(".log"), "{kept_line}");
    let (_, ok_line) = s.job_line("1", "ok");
    assert!(!ok_line.contains(".log"), "a removed log is still named: {ok_line}");
    // a user's file in one job directory keeps that one; gc removes the other
    let bad = left.iter().find(|p| p.to_string_lossy().contains("-bad-")).unwrap().clone();
    std::fs::write(bad.join("notes.txt"), "mine").unwrap();
    let o = s.run(&["cache", "gc", "--grace", "0"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("removed 1 Slurm job directories"), "{t}");
    assert!(t.contains("notes.txt") && t.contains("kept"), "{t}");
    assert_eq!(std::fs::read_to_string(bad.join("notes.txt")).unwrap(), "mine");
    assert_eq!(jobs(), vec![bad.clone()]);
    // within the grace period nothing is removed
    std::fs::remove_file(bad.join("notes.txt")).unwrap();
    let o = s.run(&["cache", "gc"]);
    assert!(!text(&o).contains("Slurm job"), "{}", text(&o));
    assert_eq!(jobs(), vec![bad]);
}

/// A link at `cache/slurm` is not followed by `gc`: its target is not the cache's.
#[test]
fn gc_does_not_follow_a_link_at_the_slurm_directory() {
    let Some(conf) = cluster() else { return };
    let _node = shared();
    let s = Sandbox::new(&conf);
    s.write("p.json", r#"{"name": "l", "stages": {"a": {"kind": "command", "params": {"cmd": "echo x > $OUT/x"}}}}"#);
    assert!(s.run(&["run", "p.json", "-q"]).status.success());
    let theirs = s.path().join("theirs/pipeline-run1-a-1-1-a1");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("job.json"), "{}").unwrap();
    let _ = std::fs::remove_dir_all(s.path().join("cache/slurm"));
    std::os::unix::fs::symlink(s.path().join("theirs"), s.path().join("cache/slurm")).unwrap();
    let o = s.run(&["cache", "gc", "--grace", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(theirs.join("job.json").exists(), "gc followed the link: {}", text(&o));
}
