//! End-to-end tests of the orchestrator through the CLI, with `command` stages only.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const README_EXAMPLE: &str = r#"{"name": "t", "stages": {
  "a": {"kind": "command", "params": {"cmd": "echo $P_n > $OUT/a.txt", "n": 1}},
  "b": {"kind": "command", "inputs": {"x": "a"},
        "params": {"cmd": "cat $IN_x/a.txt > $OUT/b.txt"}}}}"#;

#[test]
fn readme_example_runs_then_is_cached_then_reruns_only_what_changed() {
    let s = Sandbox::new();
    s.write("t.json", README_EXAMPLE);
    let o = s.run(&["run", "t.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.statuses(&o), vec![("a".into(), "ran".into()), ("b".into(), "ran".into())]);

    let o = s.run(&["run", "t.json"]);
    assert_eq!(s.statuses(&o), vec![("a".into(), "cached".into()), ("b".into(), "cached".into())]);

    // The output really is what the command wrote.
    let exp = s.path().join("exported");
    let o = s.run(&["cache", "export", "b", exp.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(exp.join("b.txt")).unwrap().trim(), "1");

    // plan says why, following the change downstream.
    let plan = s.plan("t.json", &["--set", "a.n=2"]);
    assert_eq!(plan[0].1, "miss");
    assert!(plan[0].2.iter().any(|r| r == "params.n 1 -> 2"), "{plan:?}");
    assert!(plan[1].2[0].contains("input `x` changes because a reruns"), "{plan:?}");

    let o = s.run(&["run", "t.json", "--set", "a.n=2"]);
    assert_eq!(s.statuses(&o), vec![("a".into(), "ran".into()), ("b".into(), "ran".into())]);
    // Reverting restores from the cache without running.
    let plan = s.plan("t.json", &[]);
    assert!(plan.iter().all(|p| p.1 == "hit"), "{plan:?}");
    let o = s.run(&["run", "t.json"]);
    assert_eq!(s.statuses(&o), vec![("a".into(), "cached".into()), ("b".into(), "cached".into())]);
}

#[test]
fn early_cutoff_keeps_dependents_cached_when_output_is_identical() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{
        "a":{"kind":"command","params":{"cmd":"echo same > $OUT/a.txt","n":1}},
        "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"cat $IN_x/a.txt > $OUT/b.txt; date +%s%N >> $OUT/b.txt"}}}}"#,
    );
    assert!(s.run(&["run", "t.json"]).status.success());
    let o = s.run(&["run", "t.json", "--set", "a.n=5"]);
    assert_eq!(s.statuses(&o), vec![("a".into(), "ran".into()), ("b".into(), "cached".into())]);
}

#[test]
fn a_stage_name_shared_by_two_pipelines_resolves_to_the_latest_run_or_by_pipeline() {
    let s = Sandbox::new();
    for p in ["one", "two"] {
        s.write(&format!("{p}.json"), &format!(r#"{{"name":"{p}","stages":{{"report":{{"kind":"command","params":{{"cmd":"echo {p} > $OUT/r.txt"}}}}}}}}"#));
    }
    let read = |what: &str| {
        let dir = s.path().join(format!("x-{}", what.replace('/', "-")));
        // (exported twice into one directory: --force)
        let o = s.run(&["cache", "export", what, dir.to_str().unwrap(), "--force"]);
        assert!(o.status.success(), "{}", stderr(&o));
        (std::fs::read_to_string(dir.join("r.txt")).unwrap().trim().to_string(), stderr(&o))
    };
    assert!(s.run(&["run", "two.json"]).status.success());
    assert!(s.run(&["run", "one.json"]).status.success());
    // `one` ran last: a bare name means its output, and stderr says so and names the other.
    let (text, note) = read("report");
    assert_eq!(text, "one");
    assert!(note.contains("`two/report`"), "{note}");
    // An explicit pipeline wins; running `two` again (a cache hit) makes it the latest.
    assert_eq!(read("two/report").0, "two");
    assert!(s.run(&["run", "two.json"]).status.success());
    assert_eq!(read("report").0, "two");
}

#[test]
fn file_inputs_are_keyed_by_content_not_mtime() {
    let s = Sandbox::new();
    s.write("data/in.txt", "hello");
    s.write("t.json", r#"{"name":"t","stages":{"a":{"kind":"command","inputs":{"f":"data/in.txt"},"params":{"cmd":"wc -c < $IN_f > $OUT/n"}}}}"#);
    assert!(s.run(&["run", "t.json"]).status.success());
    // touch: same content, new mtime -> still cached.
    std::thread::sleep(Duration::from_millis(20));
    s.write("data/in.txt", "hello");
    let o = s.run(&["run", "t.json"]);
    assert_eq!(s.statuses(&o), vec![("a".into(), "cached".into())]);
    s.write("data/in.txt", "hello world");
    let plan = s.plan("t.json", &[]);
    assert!(plan[0].2.iter().any(|r| r.starts_with("input `f` changed (file")), "{plan:?}");
    let o = s.run(&["run", "t.json"]);
    assert_eq!(s.statuses(&o), vec![("a".into(), "ran".into())]);
}

#[test]
fn a_failing_stage_stops_its_dependents_only_and_caches_nothing_for_it() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{
        "bad":{"kind":"command","params":{"cmd":"echo partial > $OUT/x; echo boom >&2; exit 3"}},
        "after":{"kind":"command","inputs":{"x":"bad"},"params":{"cmd":"true"}},
        "other":{"kind":"command","params":{"cmd":"echo ok > $OUT/o"}}}}"#,
    );
    let o = s.run(&["run", "t.json"]);
    assert_eq!(o.status.code(), Some(1));
    let st = s.statuses(&o);
    assert!(st.contains(&("bad".into(), "failed".into())), "{st:?}");
    assert!(st.contains(&("after".into(), "skipped".into())), "{st:?}");
    assert!(st.contains(&("other".into(), "ran".into())), "{st:?}");
    let err = stderr(&o);
    assert!(err.contains("stage `bad`") && err.contains("exited with 3") && err.contains("boom"), "{err}");
    let ls = stdout(&s.run(&["cache", "ls"]));
    assert!(ls.contains("1 entries"), "{ls}");
    assert!(std::fs::read_dir(s.path().join("cache/tmp")).unwrap().next().is_none(), "nothing half-written left");
}

#[test]
fn only_from_and_force_select_stages() {
    let s = Sandbox::new();
    s.write("t.json", README_EXAMPLE);
    // --only b needs a, which is not cached yet.
    let o = s.run(&["run", "t.json", "--only", "b"]);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("not selected and not in the cache"), "{}", stdout(&o));
    assert!(s.run(&["run", "t.json", "--only", "a"]).status.success());
    let o = s.run(&["run", "t.json", "--only", "b"]);
    assert_eq!(s.statuses(&o), vec![("a".into(), "not selected".into()), ("b".into(), "ran".into())]);
    let o = s.run(&["run", "t.json", "--force", "a"]);
    // a reruns, writes the same bytes, so b stays cached (early cutoff).
    assert_eq!(s.statuses(&o), vec![("a".into(), "ran".into()), ("b".into(), "cached".into())]);
    let o = s.run(&["run", "t.json", "--from", "b", "--force", "b"]);
    assert_eq!(s.statuses(&o), vec![("a".into(), "not selected".into()), ("b".into(), "ran".into())]);
    let o = s.run(&["run", "t.json", "--only", "zz"]);
    assert!(stderr(&o).contains("no stage named `zz`"));
}

#[test]
fn validation_errors_name_file_path_and_fix_and_cache_nothing() {
    let s = Sandbox::new();
    let cases: &[(&str, &[&str])] = &[
        ("{\"name\": \"t\",\n \"stages\": {\n", &["bad.json:3:", "malformed JSON"]),
        (r#"{"name":"t","stages":{"a":{"kind":"comand","params":{"cmd":"true"}}}}"#, &["stages.a.kind", "did you mean `command`"]),
        (r#"{"name":"t","stages":{"a":{"kind":"command","inputs":{"x":"nope"},"params":{"cmd":"true"}}}}"#, &["stages.a.inputs.x", "`nope`"]),
        (
            r#"{"name":"t","stages":{"a":{"kind":"command","inputs":{"x":"b"},"params":{"cmd":"true"}},"b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"true"}}}}"#,
            &["cycle", "a -> b -> a"],
        ),
        (r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"true"}},"a":{"kind":"command","params":{"cmd":"true"}}}}"#, &["duplicate stage name `a`"]),
        (r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":[1]}}}}"#, &["stages.a.params", "invalid type"]),
    ];
    for (text, needles) in cases {
        s.write("bad.json", text);
        let o = s.run(&["run", "bad.json"]);
        assert_eq!(o.status.code(), Some(1), "{text}");
        let err = stderr(&o);
        assert!(err.contains("bad.json"), "{err}");
        for n in *needles {
            assert!(err.contains(n), "expected `{n}` in: {err}");
        }
    }
    assert!(!s.path().join("cache/db").exists(), "validation failed before the cache was opened");
}

#[test]
fn schema_and_dag_print() {
    let s = Sandbox::new();
    s.write("t.json", README_EXAMPLE);
    let o = s.run(&["schema"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["required"], serde_json::json!(["name", "stages"]));
    let dot = stdout(&s.run(&["dag", "t.json", "--format", "dot"]));
    assert!(dot.contains("\"a\" -> \"b\""), "{dot}");
    let mer = stdout(&s.run(&["dag", "t.json", "--format", "mermaid"]));
    assert!(mer.contains("a -->|x| b"), "{mer}");
}

#[test]
fn second_process_is_told_who_holds_the_cache_and_can_wait() {
    let s = Sandbox::new();
    let flag = s.path().join("started");
    s.write(
        "slow.json",
        &format!(r#"{{"name":"t","stages":{{"a":{{"kind":"command","params":{{"cmd":"touch {}; sleep 1.5; echo x > $OUT/x"}}}}}}}}"#, flag.display()),
    );
    let mut child = s.cmd(&["run", "slow.json", "-q"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_file(&flag, Duration::from_secs(20));
    let o = s.run(&["cache", "ls"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&format!("in use by pid {}", child.id())), "{err}");
    let o = s.run(&["cache", "ls", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 entries"));
    assert!(child.wait().unwrap().success());
}

#[test]
fn interrupt_cancels_cleanly_and_keeps_what_was_committed() {
    let s = Sandbox::new();
    let flag = s.path().join("started");
    s.write(
        "t.json",
        &format!(
            r#"{{"name":"t","stages":{{
            "fast":{{"kind":"command","params":{{"cmd":"echo f > $OUT/f"}}}},
            "slow":{{"kind":"command","inputs":{{"x":"fast"}},"params":{{"cmd":"touch {}; sleep 30; echo s > $OUT/s"}}}}}}}}"#,
            flag.display()
        ),
    );
    let child = s.cmd(&["run", "t.json", "-q"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_file(&flag, Duration::from_secs(20));
    let t0 = Instant::now();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "cancel took {:?}", t0.elapsed());
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let o = s.run(&["run", "t.json", "--only", "fast"]);
    assert_eq!(s.statuses(&o)[0], ("fast".to_string(), "cached".to_string()), "committed before the interrupt");
    let plan = s.plan("t.json", &[]);
    assert_eq!(plan[0].1, "hit");
    assert_eq!(plan[1].1, "miss");
}

/// SIGKILL runs (and `cache gc`) at random moments, including while a 300-file output is
/// being committed; after each kill `cache verify` passes, and at the end every output is
/// byte-identical to an uninterrupted run's.
#[test]
fn killed_runs_never_corrupt_the_cache() {
    const PIPELINE: &str = r#"{"name":"t","stages":{
        "a":{"kind":"command","params":{"cmd":"mkdir $OUT/many; for i in $(seq 1 300); do echo $P_n $i > $OUT/many/f$i; done; yes $P_n | head -c 300000 > $OUT/blob","n":0}},
        "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"cat $IN_x/many/* | sort > $OUT/b.txt; cp $IN_x/blob $OUT/blob2"}},
        "c":{"kind":"command","inputs":{"x":"b"},"params":{"cmd":"wc -l < $IN_x/b.txt > $OUT/c.txt"}}}}"#;
    let s = Sandbox::new();
    s.write("t.json", PIPELINE);
    // A cheap deterministic sequence of delays (no RNG crate needed).
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(x % 150);
        let n = format!("a.n={}", i % 7);
        // every fifth kill hits a garbage collection instead of a run
        let args: Vec<&str> = if i % 5 == 4 { vec!["cache", "gc", "--keep-last", "2"] } else { vec!["run", "t.json", "-q", "--set", &n] };
        let mut child = s.cmd(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        // `--wait`: a command stage's child killed between fork and exec still holds the
        // cache's lock for a moment (until its parent-death signal lands); that is a busy
        // cache, not a corrupt one (seen once in a fresh-clone run)
        let o = s.run(&["--wait", "cache", "verify"]);
        assert!(o.status.success(), "iteration {i}: {}{}", stdout(&o), stderr(&o));
    }
    let reference = Sandbox::new();
    reference.write("t.json", PIPELINE);
    for n in 0..7 {
        let set = format!("a.n={n}");
        let o = s.run(&["run", "t.json", "-q", "--set", &set]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = reference.run(&["run", "t.json", "-q", "--set", &set]);
        assert!(o.status.success(), "{}", stderr(&o));
        for stage in ["a", "b", "c"] {
            let (e1, e2) = (s.path().join(format!("e{n}{stage}")), reference.path().join(format!("e{n}{stage}")));
            assert!(s.run(&["cache", "export", stage, e1.to_str().unwrap()]).status.success());
            assert!(reference.run(&["cache", "export", stage, e2.to_str().unwrap()]).status.success());
            assert_eq!(read_tree(&e1), read_tree(&e2), "n={n} stage {stage} differs from an uninterrupted run");
        }
    }
    let o = s.run(&["cache", "verify"]);
    assert!(o.status.success(), "{}", stdout(&o));
}

fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let out = tree(dir);
    assert!(!out.is_empty(), "{} is empty", dir.display());
    out
}

/// `plan` with `--only`, `--from` and `--force` says exactly what `run` then does.
#[test]
fn plan_honours_only_from_and_force_as_run_does() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{
        "a":{"kind":"command","params":{"cmd":"echo $P_n > $OUT/a","n":1}},
        "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"cat $IN_x/a > $OUT/b"}},
        "c":{"kind":"command","inputs":{"x":"b"},"params":{"cmd":"cat $IN_x/b > $OUT/c"}}}}"#,
    );
    assert!(s.run(&["run", "t.json"]).status.success());
    let expect = |plan: &str| match plan {
        "hit" => "cached",
        "miss" => "ran",
        "not-selected" => "not selected",
        "skipped" => "skipped",
        other => panic!("plan status {other}"),
    };
    for flags in [vec!["--force", "b"], vec!["--only", "b"], vec!["--from", "b"], vec!["--set", "a.n=2", "--from", "b"], vec!["--set", "a.n=3"]] {
        let plan = s.plan("t.json", &flags);
        let mut args = vec!["run", "t.json"];
        args.extend_from_slice(&flags);
        let o = s.run(&args);
        let ran = s.statuses(&o);
        let predicted: Vec<(String, String)> = plan.iter().map(|p| (p.0.clone(), expect(&p.1).to_string())).collect();
        assert_eq!(predicted, ran, "{flags:?}: plan {plan:?}");
    }
}

/// Found by a hostile pass: each of these aborted the whole process (an allocation of 168 TB,
/// 921 GB, a vector grown until the machine ran out of memory, a stack overflow) or made a
/// cache entry nothing could read back; each is now an error naming the param or the file,
/// before anything runs.
#[test]
fn huge_params_deep_overrides_and_odd_output_names_are_refused_up_front() {
    let s = Sandbox::new();
    let emotion = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/emotion.json");
    let emotion = emotion.to_str().unwrap();
    for (set, param) in [
        ("augment.per_class=1000000000000", "per_class"),
        ("train.cnn_dense=100000000", "cnn_dense"),
        ("demo-data.per_class=1000000000000", "per_class"),
        ("augment.width_shift_range=1e308", "width_shift_range"),
    ] {
        let o = s.run(&["plan", emotion, "--set", set]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{set}: {e}");
        assert!(e.contains(param) && !e.contains("panicked") && !e.contains("memory allocation"), "{set}: {e}");
    }
    s.write("t.json", README_EXAMPLE);
    let deep = format!("a.{}=1", vec!["x"; 8000].join("."));
    let o = s.run(&["plan", "t.json", "--set", &deep]);
    assert!(o.status.code() == Some(1) && stderr(&o).contains("8000 levels"), "{}", stderr(&o));
    let deep = format!("a.{}=1", vec!["x"; 62].join("."));
    let o = s.run(&["run", "t.json", "--set", &deep]);
    assert!(o.status.code() == Some(1) && stderr(&o).contains("levels deep"), "{}", stderr(&o));
    // an output name no manifest may hold: refused at the stage, nothing committed
    s.write("tab.json", r#"{"name": "tab", "stages": {"a": {"kind": "command", "params": {"cmd": "printf x > \"$OUT/a\tb\""}}}}"#);
    for _ in 0..2 {
        let o = s.run(&["run", "tab.json"]);
        let e = stderr(&o) + &stdout(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains("$OUT/a\\tb") && e.contains("rename it"), "{e}");
    }
    let o = s.run(&["cache", "ls"]);
    assert!(!stdout(&o).contains("tab"), "{}", stdout(&o));
}

/// Found by a hostile pass: a pipeline's name (now refused) and param values reached the terminal raw in
/// `runs`, `runs show`, `runs diff`, `plan --explain` and `cache show` (a file from elsewhere
/// could retitle, clear or rewrite the terminal).
#[test]
fn escape_sequences_from_a_pipeline_file_never_reach_the_terminal() {
    let s = Sandbox::new();
    s.write(
        "e.json",
        "{\"name\":\"e\",\"description\":\"\\u001b[31mRED\\u001b]0;pwned\\u0007\\u001b[2J\",\"stages\":{\"a\":{\"kind\":\"command\",\"params\":{\"cmd\":\"echo hi > $OUT/x\",\"p\":\"\\u001b[41mBG\"}}}}",
    );
    s.ok(&["run", "-q", "e.json"]);
    s.ok(&["run", "-q", "e.json", "--set", "a.p=X\u{1b}]0;t\u{7}Y"]);
    for args in [
        vec!["runs"],
        vec!["runs", "show", "1"],
        vec!["runs", "diff", "1", "2"],
        vec!["runs", "compare", "1", "2"],
        vec!["plan", "e.json", "--explain", "--set", "a.p=\u{1b}[2JZ"],
        vec!["cache", "show", "a"],
        vec!["cache", "ls"],
        vec!["dag", "e.json"],
    ] {
        let o = s.ok(&args);
        let text = stdout(&o);
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "{args:?}: {text:?}");
    }
    let o = s.ok(&["runs", "diff", "1", "2"]);
    assert!(stdout(&o).contains("BG") && stdout(&o).contains("XY"), "{}", stdout(&o));
}

/// Found by a hostile pass: `runs` with a mistyped --cache made an empty cache there and
/// printed an empty history (exit 0); a secret passed with --set was printed by `runs show`
/// and stored in the run record and LOCK.
#[test]
fn a_missing_cache_is_not_created_by_readers_and_secrets_stay_out_of_records() {
    let s = Sandbox::new();
    let typo = s.path().join("typo");
    for args in [vec!["runs"], vec!["runs", "show", "1"], vec!["cache", "ls"], vec!["cache", "verify"], vec!["cache", "gc"]] {
        let mut full = vec!["--cache", typo.to_str().unwrap()];
        full.extend(args.iter().copied());
        let o = s.run(&full);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stdout(&o));
        assert!(stderr(&o).contains("no cache at"), "{args:?}: {}", stderr(&o));
        assert!(!typo.exists(), "{args:?} created the cache");
    }
    s.write("t.json", README_EXAMPLE);
    let secret = "SuperSecretValue1234567890";
    // A secret as a param is refused before anything is written: redacted wherever it was
    // shown, it was still kept at rest in the entry's key inputs, the database and a remote.
    for args in [vec!["run", "-q", "t.json"], vec!["plan", "t.json"], vec!["schedule", "t.json", "--print-cron"]] {
        let set = format!("a.note={secret}");
        let mut full = args.clone();
        full.extend(["--set", set.as_str()]);
        let o = s.cmd(&full).env("AWS_SECRET_ACCESS_KEY", secret).output().unwrap();
        assert!(!o.status.success(), "{args:?}: {}", stdout(&o));
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(!all.contains(secret), "{args:?}: {all}");
        assert!(all.contains("a.note holds the value of AWS_SECRET_ACCESS_KEY (given with --set)"), "{args:?}: {all}");
    }
    assert!(!s.cache().join("runs/1.json").exists(), "a run record was written");
    // the same value written into the file is named by its JSON path
    s.write("s.json", &README_EXAMPLE.replacen("\"name\"", &format!("\"description\": \"key {secret}\", \"name\""), 1));
    let o = s.cmd(&["run", "-q", "s.json"]).env("AWS_SECRET_ACCESS_KEY", secret).output().unwrap();
    assert!(!o.status.success() && !stderr(&o).contains(secret), "{}", stderr(&o));
    assert!(stderr(&o).contains("s.json: description holds the value of AWS_SECRET_ACCESS_KEY:"), "{}", stderr(&o));
    // without the variable the value is an ordinary string
    let o = s.ok(&["run", "-q", "s.json"]);
    assert!(o.status.success());
    // a secret only in the AWS credentials file (found by a hostile pass: it was read only
    // when a remote was opened, after the check) is refused the same way
    let home = s.path().join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(home.join(".aws/credentials"), "[default]\naws_access_key_id = AKIDFILE0001\naws_secret_access_key = FileSecretZZZ9876543210\n").unwrap();
    let o = s.cmd(&["plan", "t.json", "--set", "a.note=FileSecretZZZ9876543210"]).env("HOME", &home).env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").output().unwrap();
    assert!(!o.status.success() && !stderr(&o).contains("FileSecretZZZ"), "{}", stderr(&o));
    assert!(stderr(&o).contains("a.note holds the value of a credentials file (given with --set)"), "{}", stderr(&o));
    // every profile, botocore's spellings (`:`, upper case, quotes), whatever the environment
    // holds: the amt stage takes its own profile (found by a hostile pass)
    std::fs::write(
        home.join(".aws/credentials"),
        "[default]\naws_access_key_id = AKIDFILE0001\naws_secret_access_key = FileSecretZZZ9876543210\n[prod]\nAWS_SECRET_ACCESS_KEY: \"ProdSecretQQQ123456789\"\n",
    )
    .unwrap();
    let o = s.cmd(&["plan", "t.json", "--set", "a.note=ProdSecretQQQ123456789"]).env("HOME", &home).env("AWS_ACCESS_KEY_ID", "AKIDENV0001").env("AWS_SECRET_ACCESS_KEY", "EnvSecret000111222").output().unwrap();
    assert!(!o.status.success() && !stderr(&o).contains("ProdSecretQQQ"), "{}", stderr(&o));
    // an argument the parser refuses is echoed redacted
    let o = s.cmd(&["run", "t.json", "--trigger", secret]).env("AWS_SECRET_ACCESS_KEY", secret).output().unwrap();
    assert!(!o.status.success() && !stderr(&o).contains(secret) && stderr(&o).contains("[redacted]"), "{}", stderr(&o));
}

/// Found by a hostile pass: a key given twice (`cmd`, `params`, `inputs.x`, `name`) was
/// taken silently, the last one winning; a pipeline name could hold `/` or escapes; a stage
/// named `a.b` could not be given a `--set`, and with a stage `a` beside it `--set a.b.c=2`
/// set `a`'s param `b.c`; a param over 128 KiB failed as "Argument list too long".
#[test]
fn duplicate_keys_bad_names_dotted_stages_and_huge_params_are_named() {
    let s = Sandbox::new();
    s.write("d.json", r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"echo 1 > $OUT/x","cmd":"echo 2 > $OUT/x"}}}}"#);
    let o = s.run(&["plan", "d.json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("stages.a.params.cmd") && stderr(&o).contains("twice"), "{}", stderr(&o));
    for name in ["", "a/b", "x\u{1b}[2J"] {
        s.write("n.json", &format!(r#"{{"name":{},"stages":{{"a":{{"kind":"command","params":{{"cmd":"true"}}}}}}}}"#, serde_json::to_string(name).unwrap()));
        let o = s.run(&["plan", "n.json"]);
        assert!(o.status.code() == Some(1) && stderr(&o).contains("bad pipeline name"), "{name:?}: {}", stderr(&o));
    }
    s.write("dot.json", r#"{"name":"t","stages":{"a.b":{"kind":"command","params":{"cmd":"echo $P_n > $OUT/x","n":1}}}}"#);
    let plan = s.plan("dot.json", &["--set", "a.b.n=2"]);
    assert!(plan[0].2.iter().any(|r| r.contains("params.n")) || plan[0].1 == "miss", "{plan:?}");
    s.ok(&["run", "-q", "dot.json", "--set", "a.b.n=2"]);
    let exp = s.path().join("dot-out");
    s.ok(&["cache", "export", "a.b", exp.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(exp.join("x")).unwrap().trim(), "2");
    s.write("amb.json", r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"true"}},"a.b":{"kind":"command","params":{"cmd":"true"}}}}"#);
    let o = s.run(&["plan", "amb.json", "--set", "a.b.c=2"]);
    assert!(o.status.code() == Some(1) && stderr(&o).contains("ambiguous"), "{}", stderr(&o));
    s.write("big.json", &README_EXAMPLE.replace(r#""n": 1"#, &format!(r#""n": "{}""#, "x".repeat(200_000))));
    let o = s.run(&["run", "-q", "big.json"]);
    let e = stderr(&o) + &stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("$P_n can hold at most") && !e.contains("Argument list too long"), "{}", &e[..e.len().min(2000)]);
}

/// Found by a hostile pass: a FIFO, a device or a link loop given as an input was "neither a
/// stage nor an existing file" (with a "did you mean" hint); each is now named for what it is.
#[test]
fn special_files_given_as_inputs_are_named_for_what_they_are() {
    let s = Sandbox::new();
    make_fifo(&s.path().join("f"));
    std::os::unix::fs::symlink("loop2", s.path().join("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", s.path().join("loop2")).unwrap();
    s.write("t.json", r#"{"name":"t","stages":{"a":{"kind":"command","inputs":{"x":"f","y":"/dev/zero","z":"loop1"},"params":{"cmd":"true"}}}}"#);
    let o = s.run(&["plan", "t.json"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("`f` is a FIFO") && e.contains("`/dev/zero` is a character device") && e.contains("`loop1` is a symbolic link that leads nowhere"), "{e}");
    // a /proc or /sys file is a "regular" file that may never end (/proc/kmsg hung `plan`)
    s.write("p.json", r#"{"name":"t","stages":{"a":{"kind":"command","inputs":{"x":"/proc/self/status","y":"/sys/kernel"},"params":{"cmd":"true"}}}}"#);
    let o = s.run(&["plan", "p.json"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("`/proc/self/status` is on /proc (procfs)") && e.contains("`/sys/kernel` is on /sys (sysfs)"), "{e}");
}

/// Found by a hostile pass: `cache gc --remote` opened a local cache at --cache: it made one
/// there, or failed when --cache named a directory of the user's.
#[test]
fn remote_gc_opens_no_local_cache() {
    let s = Sandbox::new();
    s.write("t.json", README_EXAMPLE);
    let remote = s.path().join("remote");
    s.ok(&["run", "-q", "t.json", "--remote", remote.to_str().unwrap()]);
    let mine = s.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "x").unwrap();
    let o = s.run(&["--cache", mine.to_str().unwrap(), "cache", "gc", "--remote", remote.to_str().unwrap(), "--grace", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1, "gc --remote wrote into --cache");
    let fresh = s.path().join("fresh");
    s.ok(&["--cache", fresh.to_str().unwrap(), "cache", "pull", "--all", "--remote", remote.to_str().unwrap()]);
}
