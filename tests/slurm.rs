//! End to end on a real Slurm: `command` stages on the Slurm executor, through the CLI.
//!
//! The cluster is the one `SLURM_CONF` names when `sinfo` answers there, else one started by
//! `.ci/slurm-up` (a single node on 127.0.0.1, installed from apt when missing). When Slurm
//! cannot be installed or started, every test prints why and passes, unless
//! `PIPELINE_REQUIRE_SLURM=1` (CI), which makes that a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
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
    let before = slurm.squeue(&["-h", "--states=all", "-o", "%i"]).lines().count();
    let o = slurm.run(&["run", "p.json", "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let show = text(&slurm.run(&["runs", "show", "2"]));
    assert!(!show.contains("slurm job"), "the rerun submitted jobs:\n{show}");
    assert_eq!(show.matches("cached").count(), 3, "{show}");
    assert_eq!(slurm.squeue(&["-h", "--states=all", "-o", "%i"]).lines().count(), before, "the rerun submitted jobs");
}

#[test]
fn a_failing_command_on_slurm_says_failed_exit_3_with_the_log_tail() {
    let Some(conf) = cluster() else { return };
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

#[test]
fn a_stage_over_its_time_limit_gives_timeout() {
    let Some(conf) = cluster() else { return };
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

#[test]
fn an_unwritable_work_directory_is_named() {
    let Some(conf) = cluster() else { return };
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
