//! The product's front door: `pipelines/emotion.json` end to end, reduced through `--set`
//! (fewer images and epochs) so it runs in CI, from an empty cache.
#![cfg(feature = "ml")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pipeline");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Smaller than the README's run, same shape.
const REDUCED: &[&str] = &[
    "--set",
    "demo-data.per_class=50",
    "--set",
    "demo-data.valid_per_class=10",
    "--set",
    "demo-data.test_per_class=12",
    "--set",
    "augment.per_class=150",
    "--set",
    "train.epochs=10",
    // Fewer epochs than the README's run, so a faster rate (the README's is 0.001 over 30).
    "--set",
    "train.lr=0.002",
];

fn run(cache: &Path, args: &[&str]) -> Output {
    Command::new(BIN).args(args).current_dir(repo()).env("PIPELINE_CACHE", cache).env_remove("PIPELINE_LOG").output().unwrap()
}

fn pipeline_run(cache: &Path, extra: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["run", "pipelines/emotion.json", "-q"];
    args.extend_from_slice(REDUCED);
    args.extend_from_slice(extra);
    let o = run(cache, &args);
    assert!(o.status.success(), "run failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let runs = run(cache, &["runs", "--last", "1"]);
    assert!(runs.status.success());
    let id: u64 = String::from_utf8_lossy(&runs.stdout)
        .lines()
        .find_map(|l| l.split(['│', '┆']).map(str::trim).find(|c| !c.is_empty()).and_then(|c| c.parse().ok()))
        .expect("a run id");
    let plan_like = run(cache, &["runs", "show", &id.to_string()]);
    String::from_utf8_lossy(&plan_like.stdout)
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(['│', '┆']).map(str::trim).filter(|c| !c.is_empty()).collect();
            (cells.len() >= 3 && ["ran", "cached", "failed", "skipped"].contains(&cells[2])).then(|| (cells[0].to_string(), cells[2].to_string()))
        })
        .collect()
}

fn ran(statuses: &[(String, String)]) -> Vec<String> {
    statuses.iter().filter(|(_, s)| s == "ran").map(|(n, _)| n.clone()).collect()
}

#[test]
fn emotion_pipeline_runs_caches_and_reruns_only_what_an_edit_touches() {
    let cache = tempfile::tempdir().unwrap();
    let stages = ["demo-data", "amt", "dawid-skene", "augment", "train", "evaluate"];

    let first = pipeline_run(cache.path(), &[]);
    assert_eq!(ran(&first), stages, "every stage runs from an empty cache: {first:?}");

    // The evaluation report exists and the model learnt something (chance is 1/7).
    let out = tempfile::tempdir().unwrap();
    let o = run(cache.path(), &["cache", "export", "evaluate", out.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    let acc = report["accuracy"].as_f64().expect("accuracy in report.json");
    eprintln!("reduced emotion pipeline: test accuracy {acc:.3}");
    assert!(acc > 0.40, "accuracy {acc} is not well above chance (0.14)");
    assert!(out.path().join("confusion.png").exists());

    let second = pipeline_run(cache.path(), &[]);
    assert!(ran(&second).is_empty(), "nothing changed, nothing runs: {second:?}");
    assert!(second.iter().all(|(_, s)| s == "cached"), "{second:?}");

    let third = pipeline_run(cache.path(), &["--set", "augment.rotation_range=25"]);
    assert_eq!(ran(&third), ["augment", "train", "evaluate"], "{third:?}");

    // Reverting the edit restores everything from the cache.
    let fourth = pipeline_run(cache.path(), &[]);
    assert!(ran(&fourth).is_empty(), "{fourth:?}");
}
