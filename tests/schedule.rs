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

/// Found by a hostile pass: the printed crontab line dropped `--cache`, `--set` and `-j`, so
/// the nightly run trained into a new `cache/` beside the pipeline file, without the
/// overrides, and recorded itself as `manual`; a bad file was printed with exit 0.
#[test]
fn the_printed_crontab_line_runs_in_the_users_cache_with_the_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let (d, other) = (dir.path().join("p"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(d.join("s.json"), r#"{"name": "s", "stages": {"a": {"kind": "command", "params": {"cmd": "echo $P_n > $OUT/a.txt", "n": 1}}}}"#).unwrap();
    let mycache = dir.path().join("my cache");
    let mycache_s = mycache.to_str().unwrap();
    let o = Command::new(BIN)
        .args(["--cache", mycache_s, "schedule", "s.json", "--set", "a.n=7", "-j", "1", "--print-cron"])
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let line = text.lines().last().unwrap();
    // what cron does with the line: the command after the five fields, `\%` -> `%`, run by sh
    // from the user's home (here: another directory), without PIPELINE_CACHE
    let command: String = line.splitn(6, ' ').nth(5).unwrap().replace("\\%", "%");
    let o = Command::new("sh").arg("-c").arg(&command).current_dir(&other).env_remove("PIPELINE_CACHE").output().unwrap();
    assert!(o.status.success(), "{command}: {}", String::from_utf8_lossy(&o.stderr));
    assert!(!d.join("cache").exists() && !other.join("cache").exists(), "the nightly run made a cache of its own");
    let (ok, runs, err) = out(&d, &["--cache", mycache_s, "runs"]);
    assert!(ok && runs.contains("schedule"), "{runs}{err}");
    let (ok, exported, err) = out(&d, &["--cache", mycache_s, "cache", "export", "a", dir.path().join("x").to_str().unwrap()]);
    assert!(ok, "{exported}{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("x/a.txt")).unwrap().trim(), "7");
    // a file that does not load is refused before anything is printed
    std::fs::write(d.join("bad.json"), "not json").unwrap();
    for flag in ["--print-cron", "--print-systemd"] {
        let (ok, stdout, err) = out(&d, &["schedule", "bad.json", flag]);
        assert!(!ok && stdout.is_empty() && err.contains("bad.json"), "{flag}: {stdout}{err}");
    }
    // a newline in the file's name never reaches the crontab
    let evil = d.join("x\n* * * * * touch PWNED\n.json");
    std::fs::copy(d.join("s.json"), &evil).unwrap();
    let o = Command::new(BIN).args(["schedule", evil.to_str().unwrap(), "--print-cron"]).current_dir(&d).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && o.stdout.is_empty() && err.contains("control character"), "{err}");
}
