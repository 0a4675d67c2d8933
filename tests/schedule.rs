//! Nightly retrain through the CLI: `schedule`, `runs diff`, promotion.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pipeline");

fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).current_dir(dir).env("PIPELINE_CACHE", dir.join("cache")).env_remove("PIPELINE_LOG");
    c
}

fn out(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let o = cmd(dir, args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string())
}

#[test]
fn per_second_schedule_runs_skips_overlap_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slow.json"),
        r#"{"name": "s", "stages": {
          "a": {"kind": "command", "params": {"cmd": "sleep 1.6; echo $P_n > $OUT/a.txt", "n": 1}},
          "b": {"kind": "command", "inputs": {"x": "a"}, "params": {"cmd": "cat $IN_x/a.txt > $OUT/b.txt"}}}}"#,
    )
    .unwrap();
    let child = cmd(dir.path(), &["schedule", "slow.json", "--cron", "* * * * * *", "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait for at least two finished runs, watching the history (the cache is free between runs).
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(30), "no two runs in 30 s");
        std::thread::sleep(Duration::from_millis(300));
        let (ok, text, _) = out(dir.path(), &["runs", "--wait"]);
        if ok && text.matches("schedule").count() >= 2 && text.matches(" ok ").count() >= 2 {
            break;
        }
    }
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let t1 = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(t1.elapsed() < Duration::from_secs(10), "shutdown took {:?}", t1.elapsed());
    assert!(o.status.success(), "scheduler exit: {:?}", o.status);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("tick skipped"), "an overlapping tick must be skipped and logged:\n{log}");
    assert!(log.contains("next run at"), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    // First run ran both stages, later ones were cache hits.
    let (_, runs, _) = out(dir.path(), &["runs"]);
    assert!(runs.contains("schedule"), "{runs}");
}

#[test]
fn runs_diff_shows_params_and_metrics_and_promotion_keeps_the_better_model() {
    let dir = tempfile::tempdir().unwrap();
    // `score` stands in for a trained model's report; promotion copies it when it did not get worse.
    std::fs::write(
        dir.path().join("p.json"),
        r#"{"name": "p",
            "stages": {
              "train": {"kind": "command", "params": {"cmd": "echo model-$P_lr > $OUT/model.txt", "lr": 0.1}},
              "evaluate": {"kind": "command", "inputs": {"m": "train"}, "params": {"cmd": "cat $IN_m/model.txt > $OUT/report.txt"}}},
            "promote": {"stage": "train", "with": ["evaluate"], "metric": "evaluate.accuracy", "to": "models/current"}}"#,
    )
    .unwrap();
    let (ok, _, err) = out(dir.path(), &["run", "p.json", "-q"]);
    assert!(ok, "{err}");
    let (ok, _, err) = out(dir.path(), &["run", "p.json", "-q", "--set", "train.lr=0.01"]);
    assert!(ok, "{err}");
    let (ok, diff, err) = out(dir.path(), &["runs", "diff", "1", "2"]);
    assert!(ok, "{err}");
    assert!(diff.contains("train: params.lr 0.1 -> 0.01"), "{diff}");
    assert!(diff.contains("evaluate: input `m`"), "{diff}");
    // Command stages produce no metric, so nothing is promoted, and the run says why.
    let (_, show, _) = out(dir.path(), &["runs", "show", "2"]);
    assert!(show.contains("promotion") && show.contains("not produced"), "{show}");
    assert!(!dir.path().join("models/current").exists());
}
