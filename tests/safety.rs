//! Data safety: the cache never loses, moves or corrupts anyone's data, whatever a stage or a
//! user does. One test per case of issue 12 (each failed on the code before the fix); every
//! future data-safety bug gets a case here.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn one_stage(cmd: &str) -> String {
    serde_json::json!({"name": "t", "stages": {"a": {"kind": "command", "params": {"cmd": cmd}}}}).to_string()
}

// ---------- 1. promote.to ----------

#[test]
fn promote_never_replaces_a_directory_it_did_not_create() {
    let s = Sandbox::new();
    s.write("data/keep.csv", "user data\n");
    for to in ["", ".", "./", "data", "..", "cache", "cache/models"] {
        let p = serde_json::json!({"name": "t",
            "stages": {"a": {"kind": "command", "params": {"cmd": "echo 1 > $OUT/m"}}},
            "promote": {"stage": "a", "metric": "a.x", "to": to}});
        s.write("t.json", &p.to_string());
        let o = s.run(&["run", "t.json"]);
        assert_eq!(o.status.code(), Some(1), "to={to:?}: {}{}", stdout(&o), stderr(&o));
        assert!(stderr(&o).contains("promote.to"), "to={to:?}: {}", stderr(&o));
        assert!(s.path().join("t.json").is_file(), "to={to:?} deleted the pipeline file");
        assert_eq!(std::fs::read_to_string(s.path().join("data/keep.csv")).unwrap(), "user data\n", "to={to:?}");
        assert!(s.statuses(&o).is_empty(), "nothing runs with a bad target: {}", stdout(&o));
    }
}

/// Found by a hostile pass: a stage named `..` passed validation, and promote exported its
/// output to `<to>/..`, over the user's files beside the target; a stage named twice in
/// `promote` failed only after the whole run and left a full staging copy behind.
#[test]
fn stage_names_dot_and_dotdot_and_a_promote_naming_a_stage_twice_are_refused_up_front() {
    let s = Sandbox::new();
    s.write("models/other.txt", "my other model\n");
    for name in [".", ".."] {
        let p = serde_json::json!({"name": "t",
            "stages": {"a": {"kind": "command", "params": {"cmd": "echo 1 > $OUT/m"}},
                       name: {"kind": "command", "inputs": {"x": "a"}, "params": {"cmd": "echo clobbered > $OUT/other.txt"}}},
            "promote": {"stage": name, "metric": "a.x", "to": "models/current"}});
        s.write("t.json", &p.to_string());
        let o = s.run(&["run", "t.json"]);
        assert_eq!(o.status.code(), Some(1), "{name:?}: {}{}", stdout(&o), stderr(&o));
        assert!(stderr(&o).contains("bad stage name"), "{name:?}: {}", stderr(&o));
        assert!(s.statuses(&o).is_empty(), "{name:?}: nothing runs: {}", stdout(&o));
    }
    assert_eq!(std::fs::read_to_string(s.path().join("models/other.txt")).unwrap(), "my other model\n");
    // a control character is shown escaped, not stripped into a valid-looking name
    s.write("c.json", r#"{"name":"t","stages":{"a\u0007":{"kind":"command","params":{"cmd":"true"}}}}"#);
    let o = s.run(&["plan", "c.json"]);
    assert!(o.status.code() == Some(1) && stderr(&o).contains(r#"bad stage name "a\u{7}""#), "{}", stderr(&o));
    for with in [vec!["b", "b"], vec!["a"]] {
        let p = serde_json::json!({"name": "t",
            "stages": {"a": {"kind": "command", "params": {"cmd": "echo 1 > $OUT/m"}},
                       "b": {"kind": "command", "params": {"cmd": "echo 2 > $OUT/m"}}},
            "promote": {"stage": "a", "with": with, "metric": "a.x", "to": "models/current"}});
        s.write("t.json", &p.to_string());
        let o = s.run(&["run", "t.json"]);
        assert_eq!(o.status.code(), Some(1), "{with:?}: {}{}", stdout(&o), stderr(&o));
        assert!(stderr(&o).contains("named twice"), "{with:?}: {}", stderr(&o));
        assert!(s.statuses(&o).is_empty(), "{with:?}: nothing runs: {}", stdout(&o));
    }
    let left: Vec<_> = std::fs::read_dir(s.path().join("models")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("other.txt")], "a staging copy was left");
}

/// A param file that is a device or a directory is named as what it is (`/dev/zero` was
/// said not to exist).
#[cfg(feature = "ml")]
#[test]
fn a_param_file_that_is_a_device_or_a_directory_is_named_as_such() {
    let s = Sandbox::new();
    std::fs::create_dir_all(s.path().join("wdir")).unwrap();
    for (w, want) in [("/dev/zero", "not a regular file"), ("wdir", "is a directory"), ("nope.safetensors", "does not exist")] {
        let p = serde_json::json!({"name": "t", "stages": {
            "a": {"kind": "command", "params": {"cmd": "true"}},
            "t": {"kind": "train", "inputs": {"images": "a"}, "params": {"model": "vgg16", "weights": w}}}});
        s.write("t.json", &p.to_string());
        let o = s.run(&["plan", "t.json"]);
        assert_eq!(o.status.code(), Some(1), "{w}: {}", stderr(&o));
        assert!(stderr(&o).contains("t.params.weights") && stderr(&o).contains(want), "{w}: {}", stderr(&o));
    }
}

/// Found by a hostile pass: a misspelled promotion metric's stage passed validation, and the
/// run said only "ok" (the decision was in `runs show` alone, promoted or not).
#[test]
fn the_promotion_decision_is_printed_and_a_metric_of_no_stage_is_refused() {
    let s = Sandbox::new();
    let p = |metric: &str| {
        serde_json::json!({"name": "t", "stages": {"a": {"kind": "command", "params": {"cmd": "echo 1 > $OUT/m; echo 'metric acc 0.5'"}}},
            "promote": {"stage": "a", "metric": metric, "to": "models/current"}})
        .to_string()
    };
    s.write("t.json", &p("evalute.acc"));
    let o = s.run(&["run", "t.json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("promote.metric") && stderr(&o).contains("evalute.acc"), "{}", stderr(&o));
    assert!(s.statuses(&o).is_empty(), "nothing runs: {}", stdout(&o));
    s.write("t.json", &p("a.accuracy"));
    let o = s.ok(&["run", "t.json"]);
    assert!(stderr(&o).contains("not promoted: metric a.accuracy not produced by this run"), "{}{}", stdout(&o), stderr(&o));
}

// ---------- 2, 3. links in $OUT ----------

#[test]
fn a_symlink_in_out_to_an_input_directory_copies_it_and_leaves_it_alone() {
    let s = Sandbox::new();
    s.write("data/a.txt", "A");
    s.write("data/sub/b.txt", "B");
    s.write("single.txt", "S");
    let before = tree(&s.path().join("data"));
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"pass":{"kind":"command","inputs":{"x":"data","f":"single.txt"},
            "params":{"cmd":"ln -s $IN_x $OUT/images; ln -s $IN_f $OUT/one.txt"}},
          "next":{"kind":"command","inputs":{"x":"pass"},"params":{"cmd":"cat $IN_x/images/a.txt $IN_x/images/sub/b.txt $IN_x/one.txt > $OUT/all"}}}}"#,
    );
    s.ok(&["run", "t.json"]);
    assert_eq!(tree(&s.path().join("data")), before, "the user's directory must be untouched");
    assert_eq!(std::fs::read_to_string(s.path().join("single.txt")).unwrap(), "S");
    assert!(!std::fs::symlink_metadata(s.path().join("single.txt")).unwrap().file_type().is_symlink());
    let exp = s.export("next");
    assert_eq!(std::fs::read_to_string(exp.join("all")).unwrap(), "ABS");
    let exp = s.export("pass");
    assert_eq!(tree(&exp).iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), vec!["images/a.txt", "images/sub/b.txt", "one.txt"]);
    s.verify_clean();
}

#[test]
fn a_hard_link_to_a_user_file_is_copied_so_editing_the_file_later_corrupts_nothing() {
    let s = Sandbox::new();
    let f = s.write("mine.txt", "original");
    let mode = std::fs::metadata(&f).unwrap().permissions().mode();
    s.write("t.json", r#"{"name":"t","stages":{"a":{"kind":"command","inputs":{"x":"mine.txt"},"params":{"cmd":"ln $IN_x $OUT/copy.txt"}}}}"#);
    s.ok(&["run", "t.json"]);
    assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode(), mode, "the user's file keeps its mode");
    std::fs::write(&f, "edited by the user").unwrap();
    s.verify_clean();
    assert_eq!(std::fs::read_to_string(s.export("a").join("copy.txt")).unwrap(), "original");
}

// ---------- 4. damaged blobs ----------

#[test]
fn a_truncated_blob_is_a_miss_and_is_replaced_by_the_rerun() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"printf 'payload-of-a' > $OUT/a.txt"}},
          "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"cat $IN_x/a.txt > $OUT/b.txt"}}}}"#,
    );
    s.ok(&["run", "t.json"]);
    let blob = blob_with(&s.cache(), b"payload-of-a");
    set_writable(&blob);
    std::fs::write(&blob, "payl").unwrap();
    let o = s.ok(&["run", "t.json", "--force", "b"]);
    assert_eq!(s.status_of(&o, "a"), "ran", "a hit whose blob has the wrong size is a miss");
    assert_eq!(std::fs::read(&blob).unwrap(), b"payload-of-a", "the damaged blob is replaced");
    assert_eq!(std::fs::read_to_string(s.export("b").join("b.txt")).unwrap(), "payload-of-a");
    s.verify_clean();
}

#[test]
fn a_flipped_byte_is_repaired_by_force() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("printf 'flip-me-please' > $OUT/a.txt"));
    s.ok(&["run", "t.json"]);
    let blob = blob_with(&s.cache(), b"flip-me-please");
    set_writable(&blob);
    std::fs::write(&blob, "flip-me-pleasE").unwrap();
    let o = s.ok(&["run", "t.json", "--force", "a"]);
    assert_eq!(s.status_of(&o, "a"), "ran");
    assert_eq!(std::fs::read(&blob).unwrap(), b"flip-me-please", "--force replaces the corrupt blob");
    assert_eq!(std::fs::read_to_string(s.export("a").join("a.txt")).unwrap(), "flip-me-please");
    s.verify_clean();
}

// ---------- 5. input views ----------

#[test]
fn a_stage_that_adds_a_file_to_its_input_fails_and_nobody_sees_the_file() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"echo a > $OUT/a.txt"}},
          "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"echo evil > $IN_x/added.txt; echo b > $OUT/b"}},
          "c":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"ls $IN_x > $OUT/listing"}}}}"#,
    );
    let o = s.run(&["run", "t.json", "-j", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(s.status_of(&o, "b"), "failed", "{}", stdout(&o));
    assert!(stderr(&o).contains("its input `x` (a read-only view of the cache) changed") && stderr(&o).contains("added.txt"), "{}", stderr(&o));
    let listing = std::fs::read_to_string(s.export("c").join("listing")).unwrap();
    assert_eq!(listing.trim(), "a.txt", "c must not see b's file");
    assert_eq!(tree(&s.export("a")).len(), 1);
    s.verify_clean();
}

#[test]
fn a_stage_that_rewrites_a_blob_through_its_input_view_fails_and_the_entry_is_dropped() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"echo good > $OUT/a.txt"}},
          "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"chmod u+w $IN_x/a.txt 2>/dev/null; echo tampered > $IN_x/a.txt; echo b > $OUT/b"}}}}"#,
    );
    let o = s.run(&["run", "t.json"]);
    assert_eq!(s.status_of(&o, "b"), "failed", "{}{}", stdout(&o), stderr(&o));
    s.verify_clean();
    // a's damaged output is gone: the next run recomputes it rather than serve "tampered".
    let p = s.write("t2.json", r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"echo good > $OUT/a.txt"}}}}"#);
    let o = s.ok(&["run", p.to_str().unwrap()]);
    assert_eq!(s.status_of(&o, "a"), "ran");
    assert_eq!(std::fs::read_to_string(s.export("a").join("a.txt")).unwrap(), "good\n");
}

#[test]
fn a_file_deleted_from_a_view_is_restored_and_verify_reports_it() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"echo 1 > $OUT/one; echo 2 > $OUT/two"}},
          "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"cat $IN_x/one $IN_x/two > $OUT/both"}}}}"#,
    );
    s.ok(&["run", "t.json"]);
    let view = std::fs::read_dir(s.cache().join("views")).unwrap().flatten().map(|d| d.path()).find(|p| p.join("two").exists()).unwrap();
    std::fs::remove_file(view.join("two")).unwrap();
    let o = s.run(&["cache", "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("removed view"), "{}", stdout(&o));
    std::fs::remove_file(view.join("one")).ok();
    s.ok(&["run", "t.json", "--force", "b"]);
    assert_eq!(std::fs::read_to_string(s.export("b").join("both")).unwrap(), "1\n2\n");
    s.verify_clean();
}

// ---------- 6, 7, 11. processes ----------

#[test]
fn a_process_left_over_from_a_killed_run_cannot_write_into_the_next_run() {
    let s = Sandbox::new();
    let marker = s.path().join("first-attempt");
    let cmd = format!(
        "if [ ! -e {m} ]; then touch {m}; (sleep 1.5; echo stale > $OUT/stale) & sleep 8; fi; sleep 3; echo ok > $OUT/ok",
        m = marker.display()
    );
    s.write("t.json", &one_stage(&cmd));
    let mut child = s.cmd(&["run", "t.json", "-q"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_file(&marker, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    s.ok(&["run", "t.json"]);
    let exp = s.export("a");
    assert_eq!(tree(&exp).iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), vec!["ok".to_string()], "the old process's file got in");
    s.verify_clean();
}

/// Found by a hostile pass: after `kill -9` of `pipeline run`, its stage's commands ran on
/// (a training job would have used the CPU for hours); the supervisor now dies with it and
/// takes every descendant with it.
#[test]
fn a_killed_run_takes_its_commands_with_it() {
    let s = Sandbox::new();
    let pids = s.path().join("pids");
    let late = s.path().join("late");
    let cmd = format!("echo $$ > {p}.tmp; (sleep 30; echo late > {l}) & echo $! >> {p}.tmp; mv {p}.tmp {p}; sleep 30; echo x > $OUT/f", p = pids.display(), l = late.display());
    s.write("t.json", &one_stage(&cmd));
    let mut child = s.cmd(&["run", "t.json", "-q"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_file(&pids, Duration::from_secs(20));
    child.kill().unwrap();
    child.wait().unwrap();
    let pids: Vec<i32> = std::fs::read_to_string(&pids).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    let t0 = std::time::Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        assert!(t0.elapsed() < Duration::from_secs(15), "the command outlived the killed run: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!late.exists());
}

#[test]
fn a_background_process_of_a_finished_stage_is_killed_before_the_commit() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("(sleep 0.7; echo corrupt >> $OUT/a.txt) & echo clean > $OUT/a.txt"));
    s.ok(&["run", "t.json"]);
    std::thread::sleep(Duration::from_millis(1500));
    s.verify_clean();
    assert_eq!(std::fs::read_to_string(s.export("a").join("a.txt")).unwrap(), "clean\n");
}

/// `setsid` leaves the process group and `env -i` drops the token: only the supervisor
/// (a child subreaper) still finds such a process, here one that holds an open file of $OUT.
#[test]
fn a_process_that_escapes_group_and_token_is_killed_before_the_commit() {
    let s = Sandbox::new();
    let pidfile = s.path().join("escaped.pid");
    let cmd = format!(
        "echo clean > $OUT/a.txt; exec 3>>$OUT/a.txt; env -i setsid sh -c 'echo $$ > {}; sleep 1; echo corrupt >&3; sleep 60' & sleep 0.3",
        pidfile.display()
    );
    s.write("t.json", &one_stage(&cmd));
    s.ok(&["run", "t.json"]);
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(!alive(pid), "the escaped process (pid {pid}) outlived its stage");
    std::thread::sleep(Duration::from_millis(1500));
    s.verify_clean();
    assert_eq!(std::fs::read_to_string(s.export("a").join("a.txt")).unwrap(), "clean\n");
    // Exit statuses pass through the supervisor unchanged.
    s.write("f.json", &one_stage("exit 7"));
    let o = s.run(&["run", "f.json"]);
    assert!(stderr(&o).contains("exited with 7"), "{}", stderr(&o));
    s.write("k.json", &one_stage("kill -9 $$"));
    let o = s.run(&["run", "k.json"]);
    assert!(stderr(&o).contains("killed by signal 9"), "{}", stderr(&o));
}

/// A cancelled run kills an escaped process too (the supervisor passes SIGTERM on).
#[test]
fn an_escaped_process_does_not_outlive_a_cancelled_run() {
    let s = Sandbox::new();
    let pidfile = s.path().join("escaped.pid");
    s.write("t.json", &one_stage(&format!("env -i setsid sh -c 'echo $$ > {}; exec sleep 120' & wait", pidfile.display())));
    let child = s.cmd(&["run", "t.json", "-q"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_file(&pidfile, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let t0 = Instant::now();
    while alive(pid) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "the escaped process (pid {pid}) is still running after the run exited");
}

#[test]
fn a_child_that_ignores_sigterm_does_not_outlive_a_cancelled_run() {
    let s = Sandbox::new();
    let pidfile = s.path().join("pid");
    s.write("t.json", &one_stage(&format!("trap '' TERM; sleep 120 & echo $! > {}; wait", pidfile.display())));
    let child = s.cmd(&["run", "t.json", "-q"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_file(&pidfile, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let t0 = Instant::now();
    while alive(pid) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "the child (pid {pid}) is still running after the run exited");
}

// ---------- 8. gc --keep-last ----------

#[test]
fn gc_keep_last_keeps_every_pipelines_current_outputs_even_after_a_run_of_hits() {
    let s = Sandbox::new();
    s.write("p1.json", r#"{"name":"p1","stages":{"x":{"kind":"command","params":{"cmd":"echo one > $OUT/o"}}}}"#);
    s.write("p2.json", r#"{"name":"p2","stages":{"y":{"kind":"command","params":{"cmd":"echo $P_n > $OUT/o","n":1}}}}"#);
    s.ok(&["run", "p1.json"]);
    // p1's last run is all hits: its current output is recorded by a hit, not a commit.
    let o = s.ok(&["run", "p1.json"]);
    assert_eq!(s.status_of(&o, "x"), "cached");
    for n in 1..4 {
        s.ok(&["run", "p2.json", "--set", &format!("y.n={n}")]);
    }
    let o = s.ok(&["cache", "gc", "--keep-last", "1"]);
    assert!(stdout(&o).contains("removed 2 entries"), "y's two older outputs go, x stays: {}", stdout(&o));
    let o = s.ok(&["run", "p1.json"]);
    assert_eq!(s.status_of(&o, "x"), "cached", "gc deleted p1's current output");
    let o = s.ok(&["run", "p2.json", "--set", "y.n=3"]);
    assert_eq!(s.status_of(&o, "y"), "cached");
}

// ---------- 10. special files ----------

#[test]
fn special_files_in_out_are_refused_by_name_instead_of_hanging() {
    for (cmd, what) in [("mkfifo $OUT/pipe", "$OUT/pipe"), ("ln -s /dev/zero $OUT/zeros", "$OUT/zeros"), ("ln -s $OUT/nowhere $OUT/dangling", "$OUT/dangling")] {
        let s = Sandbox::new();
        s.write("t.json", &one_stage(cmd));
        let t0 = Instant::now();
        let o = s.run(&["run", "t.json"]);
        assert!(t0.elapsed() < Duration::from_secs(20));
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        assert!(stderr(&o).contains(what), "{cmd}: {}", stderr(&o));
        let o = s.ok(&["cache", "ls"]);
        assert!(stdout(&o).contains("0 entries"), "{}", stdout(&o));
    }
}

// ---------- 12. amt image_url ----------

#[test]
fn an_image_url_that_leaves_the_images_directory_is_refused() {
    let s = Sandbox::new();
    s.ok(&["demo-data", "demo", "--per-class", "2"]);
    let batch = s.path().join("demo/amt/batch_results.csv");
    let text = std::fs::read_to_string(&batch).unwrap();
    let start = text.find("\"https://demo.invalid/emotion/").unwrap() + 1;
    let end = start + text[start..].find('"').unwrap();
    let evil = "https://demo.invalid/emotion/../../../../../../../../../../etc/hostname";
    std::fs::write(&batch, format!("{}{evil}{}", &text[..start], &text[end..])).unwrap();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"amt":{"kind":"amt","inputs":{"batches":"demo/amt","images":"demo"},
            "params":{"image_url_prefix":"https://demo.invalid/emotion/"}}}}"#,
    );
    let o = s.run(&["run", "t.json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("leaves the images directory"), "{}", stderr(&o));
}

// ---------- 13, 14. secrets, huge and hostile messages ----------

#[test]
fn secrets_never_reach_the_terminal_the_record_or_the_database() {
    let s = Sandbox::new();
    let token = "FQoGZXIvYXdzEXAMPLESESSIONTOKEN0123456789";
    s.write("t.json", &one_stage("echo \"server said: x-amz-security-token: $AWS_SESSION_TOKEN\" >&2; exit 3"));
    let o = s.cmd(&["run", "t.json"]).env("AWS_SESSION_TOKEN", token).env("PIPELINE_LOG", "debug").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!all.contains(token), "{all}");
    assert!(all.contains("[redacted]"), "{all}");
    let o = s.cmd(&["runs", "show", "1"]).env("AWS_SESSION_TOKEN", token).output().unwrap();
    assert!(!stdout(&o).contains(token));
    let o = s.run(&["runs", "show", "1"]);
    assert!(!stdout(&o).contains(token), "stored redacted, not only printed redacted");
    for f in tree(&s.cache()) {
        assert!(!f.1.windows(token.len()).any(|w| w == token.as_bytes()), "the token is in {}", f.0);
    }
}

#[test]
fn huge_and_hostile_output_is_capped_and_stripped_before_it_is_printed_or_stored() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("head -c 20000000 /dev/zero | tr '\\0' x >&2; printf '\\033[2J\\033]0;pwned\\007 end\\n' >&2; exit 4"));
    let o = s.run(&["run", "t.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).len() < 20_000, "{} bytes of error", stderr(&o).len());
    assert!(!stderr(&o).contains('\u{1b}'), "escape sequences reach the terminal");
    assert!(stderr(&o).contains("exited with 4") && stderr(&o).contains(" end"), "the end of stderr is kept");
    let db: u64 = walk_size(&s.cache().join("db"));
    assert!(db < 5_000_000, "the database grew to {db} bytes");
    let o = s.run(&["runs", "show", "1"]);
    assert!(stdout(&o).len() < 20_000 && !stdout(&o).contains('\u{1b}'));
}

fn walk_size(p: &std::path::Path) -> u64 {
    tree(p).iter().map(|(_, b)| b.len() as u64).sum()
}

// ---------- smaller defects ----------

#[test]
fn printing_commands_exit_quietly_on_a_closed_pipe() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("true"));
    for args in [vec!["schema"], vec!["dag", "t.json"], vec!["cache", "ls"]] {
        let mut child = s.cmd(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        // reader dropped: the pipe is closed
        let o = child.wait_with_output().unwrap();
        assert_ne!(o.status.code(), Some(101), "{args:?} panicked: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn junk_in_objects_does_not_break_verify_or_gc() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("echo a > $OUT/a"));
    s.ok(&["run", "t.json"]);
    std::fs::write(s.cache().join("objects/stray-file"), "junk").unwrap();
    let o = s.ok(&["cache", "verify"]);
    assert!(stdout(&o).contains("not a blob"), "{}", stdout(&o));
    s.ok(&["cache", "gc"]);
    assert!(s.cache().join("objects/stray-file").exists(), "junk is reported, not deleted");
}

#[test]
fn export_refuses_the_cache_and_non_empty_directories_unless_forced() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("echo new > $OUT/a"));
    s.ok(&["run", "t.json"]);
    let objects = s.cache().join("objects");
    let o = s.run(&["cache", "export", "a", objects.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("inside the cache"), "{}", stderr(&o));
    s.write("dest/a", "mine");
    let o = s.run(&["cache", "export", "a", "dest"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not empty") && stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(s.path().join("dest/a")).unwrap(), "mine");
    s.ok(&["cache", "export", "a", "dest", "--force"]);
    assert_eq!(std::fs::read_to_string(s.path().join("dest/a")).unwrap(), "new\n");
    s.verify_clean();
}

#[test]
fn dag_output_escapes_quotes_and_keeps_similar_names_apart() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"say \"hi\"","stages":{"a.b":{"kind":"command","params":{"cmd":"true"}},
          "a-b":{"kind":"command","inputs":{"x":"a.b"},"params":{"cmd":"true"}}}}"#,
    );
    let dot = stdout(&s.ok(&["dag", "t.json", "--format", "dot"]));
    assert!(dot.contains(r#"digraph "say \"hi\"""#), "{dot}");
    let mer = stdout(&s.ok(&["dag", "t.json", "--format", "mermaid"]));
    let ids: Vec<&str> = mer.lines().filter(|l| l.contains("[\"")).map(|l| l.trim().split('[').next().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "{mer}");
}

#[test]
fn validation_reports_an_unknown_top_level_field_beside_the_other_errors() {
    let s = Sandbox::new();
    s.write("t.json", r#"{"name":"t","stagez":1,"stages":{"a":{"kind":"comand","params":{}}}}"#);
    let o = s.run(&["run", "t.json"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("stagez") && e.contains("comand"), "{e}");
}

#[test]
fn a_killed_command_names_its_signal() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("kill -9 $$"));
    let o = s.run(&["run", "t.json"]);
    assert!(stderr(&o).contains("signal 9 (SIGKILL)"), "{}", stderr(&o));
}

#[test]
fn predict_refuses_k_zero_and_a_mistyped_model_path_creates_no_cache() {
    let s = Sandbox::new();
    s.write("img.png", "not really");
    let o = s.cmd(&["predict", "--model", "models/nope", "img.png", "-k", "0"]).env_remove("PIPELINE_CACHE").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = s.cmd(&["predict", "--model", "models/nope", "img.png"]).env_remove("PIPELINE_CACHE").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(!s.path().join("cache").exists(), "a mistyped --model created ./cache");
}

#[test]
fn schedule_exits_130_when_a_signal_cancels_a_running_run() {
    let s = Sandbox::new();
    let flag = s.path().join("started");
    s.write("t.json", &one_stage(&format!("touch {}; sleep 30; echo x > $OUT/x", flag.display())));
    let child = s.cmd(&["schedule", "t.json", "--cron", "* * * * * *"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_file(&flag, Duration::from_secs(30));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
}

// ---------- property: whatever a stage does ----------

mod property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Act {
        Write(u8),
        LinkInside(u8),
        LinkUserDir,
        LinkUserFile,
        HardLinkUserFile,
        HardLinkView,
        Background(u8),
        WriteIntoView,
        RewriteView,
        Exit(u8),
    }

    fn act() -> impl Strategy<Value = Act> {
        prop_oneof![
            3 => (0u8..4).prop_map(Act::Write),
            1 => (0u8..4).prop_map(Act::LinkInside),
            1 => Just(Act::LinkUserDir),
            1 => Just(Act::LinkUserFile),
            1 => Just(Act::HardLinkUserFile),
            1 => Just(Act::HardLinkView),
            1 => (0u8..4).prop_map(Act::Background),
            1 => Just(Act::WriteIntoView),
            1 => Just(Act::RewriteView),
            1 => (0u8..3).prop_map(Act::Exit),
        ]
    }

    fn shell(a: &Act) -> String {
        match a {
            Act::Write(i) => format!("echo w{i} > $OUT/f{i}"),
            Act::LinkInside(i) => format!("echo l{i} > $OUT/t{i}; ln -sf t{i} $OUT/s{i}"),
            Act::LinkUserDir => "ln -sfn $IN_user $OUT/userdir".into(),
            Act::LinkUserFile => "ln -sf $IN_user/a.txt $OUT/usera".into(),
            Act::HardLinkUserFile => "ln -f $IN_user/a.txt $OUT/hard".into(),
            Act::HardLinkView => "ln -f $IN_up/u.txt $OUT/hardview".into(),
            Act::Background(i) => format!("(sleep 0.3; echo late >> $OUT/f{i}) &"),
            Act::WriteIntoView => "echo x > $IN_up/new.txt".into(),
            Act::RewriteView => "echo x > $IN_up/u.txt".into(),
            Act::Exit(c) => format!("exit {c}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn whatever_a_stage_does_user_files_stay_and_the_cache_verifies(acts in proptest::collection::vec(act(), 1..6)) {
            let s = Sandbox::new();
            s.write("user/a.txt", "user a\n");
            s.write("user/sub/b.txt", "user b\n");
            let before = tree(&s.path().join("user"));
            let cmd: Vec<String> = acts.iter().map(shell).collect();
            let p = serde_json::json!({"name": "t", "stages": {
                "up": {"kind": "command", "params": {"cmd": "echo up > $OUT/u.txt"}},
                "s": {"kind": "command", "inputs": {"user": "user", "up": "up"}, "params": {"cmd": cmd.join("; ")}},
                "down": {"kind": "command", "inputs": {"x": "s", "up": "up"}, "params": {"cmd": "ls -R $IN_x > $OUT/ls; cat $IN_up/u.txt > $OUT/u"}}
            }});
            s.write("t.json", &p.to_string());
            let o = s.run(&["run", "t.json", "-j", "1"]);
            prop_assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "{}", stderr(&o));
            std::thread::sleep(Duration::from_millis(400));
            prop_assert_eq!(tree(&s.path().join("user")), before.clone(), "user files changed by {:?}", cmd);
            let v = s.run(&["cache", "verify"]);
            prop_assert!(v.status.success(), "{:?}: {}", cmd, stdout(&v));
            // What downstream saw of `up` is what `up` wrote, whatever `s` did.
            if s.status_of(&o, "down") == "ran" {
                prop_assert_eq!(std::fs::read_to_string(s.export("down").join("u")).unwrap(), "up\n");
            }
            // A rerun never serves something else than a fresh run would.
            let o2 = s.run(&["run", "t.json", "-j", "1"]);
            prop_assert!(o2.status.code() == Some(0) || o2.status.code() == Some(1));
            // (`up`'s entry is gone if `s` damaged its blob through the view: then it is
            // recomputed by every run, never served damaged.)
            let up = s.path().join("up-export");
            let e = s.run(&["cache", "export", "t/up", up.to_str().unwrap()]);
            if e.status.success() {
                prop_assert_eq!(std::fs::read_to_string(up.join("u.txt")).unwrap(), "up\n");
            } else {
                prop_assert!(acts.iter().any(|a| matches!(a, Act::RewriteView)), "{}", stderr(&e));
            }
            prop_assert_eq!(tree(&s.path().join("user")), before);
        }
    }
}

#[test]
fn a_damaged_database_says_how_to_recover_and_rebuild_restores_the_entries() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("echo a > $OUT/a"));
    s.ok(&["run", "t.json"]);
    // Garbage over every file of the sled directory.
    for f in std::fs::read_dir(s.cache().join("db")).unwrap().flatten() {
        if f.path().is_file() {
            std::fs::write(f.path(), vec![0xAB; 4096]).unwrap();
        }
    }
    let o = s.run(&["cache", "ls"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("cache verify --rebuild"), "{}", stderr(&o));
    let o = s.ok(&["cache", "verify", "--rebuild"]);
    assert!(stdout(&o).contains("1 entries restored"), "{}", stdout(&o));
    let o = s.ok(&["run", "t.json"]);
    assert_eq!(s.status_of(&o, "a"), "cached");
}

/// Found by a hostile pass: with db/ removed, an empty database was made, `verify --rebuild`
/// said "nothing to rebuild", and the next run's id 1 overwrote the history's runs/1.json.
#[test]
fn a_lost_database_is_refused_then_rebuilt_with_its_history() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("echo $P_n > $OUT/a"));
    s.ok(&["run", "t.json", "--set", "a.n=1"]);
    s.ok(&["run", "t.json", "--set", "a.n=2"]);
    let run1 = std::fs::read(s.cache().join("runs/1.json")).unwrap();
    std::fs::remove_dir_all(s.cache().join("db")).unwrap();
    let o = s.run(&["cache", "ls"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("db/) is missing") && stderr(&o).contains("cache verify --rebuild"), "{}", stderr(&o));
    assert!(!s.cache().join("db").exists(), "a refused open made a database");
    let o = s.ok(&["cache", "verify", "--rebuild"]);
    assert!(stdout(&o).contains("2 entries restored"), "{}", stdout(&o));
    let o = s.ok(&["runs"]);
    assert!(stdout(&o).lines().filter(|l| l.contains(" ok ")).count() >= 2, "{}", stdout(&o));
    let o = s.ok(&["run", "t.json", "--set", "a.n=2"]);
    assert_eq!(s.status_of(&o, "a"), "cached");
    assert_eq!(std::fs::read(s.cache().join("runs/1.json")).unwrap(), run1, "run 1's record was overwritten");
    assert!(s.cache().join("runs/3.json").exists());
    // an empty database (made by an older build, or a rebuild killed before this one built
    // aside) beside a populated index/ is refused, then rebuilt
    std::fs::remove_dir_all(s.cache().join("db")).unwrap();
    sled_empty(&s.cache().join("db"));
    let o = s.run(&["runs"]);
    assert!(o.status.code() == Some(1) && stderr(&o).contains("holds no entry"), "{}", stderr(&o));
    // second hostile pass: a FIFO in index/ or runs/ hung the rebuild with the cache locked;
    // a leftover of a killed rebuild is cleared
    make_fifo(&s.cache().join("index/zz.json"));
    make_fifo(&s.cache().join("runs/77.json"));
    std::fs::create_dir_all(s.cache().join("db.rebuilding")).unwrap();
    let child = s.cmd(&["cache", "verify", "--rebuild"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let o = finish_within(child, Duration::from_secs(30), "rebuild with FIFOs");
    assert!(o.status.success() && stdout(&o).contains("entries restored"), "{}{}", stdout(&o), stderr(&o));
    std::fs::remove_file(s.cache().join("index/zz.json")).unwrap();
    std::fs::remove_file(s.cache().join("runs/77.json")).unwrap();
    // a run id file at u64::MAX wrapped the next id to 0, every later run overwriting run 0
    std::fs::write(s.cache().join("runs/18446744073709551615.json"), "{}").unwrap();
    s.ok(&["run", "t.json", "--set", "a.n=3"]);
    assert!(s.cache().join("runs/4.json").exists() && !s.cache().join("runs/0.json").exists());
    // third hostile pass: each stage's current output after a rebuild is what the newest run
    // used (not the newest entry), so `gc --keep-last 0` keeps it
    s.ok(&["run", "t.json", "--set", "a.n=1"]);
    std::fs::remove_dir_all(s.cache().join("db")).unwrap();
    s.ok(&["cache", "verify", "--rebuild"]);
    let o = s.ok(&["cache", "show", "a"]);
    assert!(stdout(&o).contains("\"n\":1"), "{}", stdout(&o));
    s.ok(&["cache", "gc", "--keep-last", "0"]);
    let o = s.ok(&["run", "t.json", "--set", "a.n=1"]);
    assert_eq!(s.status_of(&o, "a"), "cached");
    // records whose blobs are gone are set aside by the rebuild instead of locking the cache
    // out for ever; a link at db.rebuilding is refused, never followed
    std::fs::remove_dir_all(s.cache().join("db")).unwrap();
    std::fs::remove_dir_all(s.cache().join("objects")).unwrap();
    std::fs::create_dir_all(s.cache().join("objects")).unwrap();
    std::fs::remove_dir_all(s.cache().join("views")).unwrap();
    let elsewhere = s.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, s.cache().join("db.rebuilding")).unwrap();
    let o = s.run(&["cache", "verify", "--rebuild"]);
    assert!(o.status.code() == Some(1) && stderr(&o).contains("not a directory a rebuild made"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "the rebuild wrote through the link");
    std::fs::remove_file(s.cache().join("db.rebuilding")).unwrap();
    let o = s.run(&["cache", "verify", "--rebuild"]);
    assert!(stderr(&o).contains("set aside"), "{}{}", stdout(&o), stderr(&o));
    s.ok(&["run", "t.json", "--set", "a.n=1"]);
    s.ok(&["cache", "ls"]);
    // pointed at a directory that is no cache, a rebuild refuses and makes nothing there
    let plain = s.path().join("plain");
    std::fs::create_dir_all(plain.join("tmp")).unwrap();
    std::fs::write(plain.join("tmp/work.txt"), "mine").unwrap();
    let o = s.run(&["--cache", plain.to_str().unwrap(), "cache", "verify", "--rebuild"]);
    assert!(o.status.code() == Some(1) && stderr(&o).contains("not a pipeline cache"), "{}", stderr(&o));
    assert!(!plain.join("db").exists() && plain.join("tmp/work.txt").exists());
}

/// A `cache verify --rebuild` in progress (it holds `db.rebuilding/`, whose `db` file sled
/// locks) makes `run --wait` wait for it, and a run without `--wait` say the cache is busy:
/// before, both were told the database was lost and to run the rebuild that was running.
#[test]
fn a_rebuild_in_progress_is_waited_for() {
    use std::os::fd::AsRawFd;
    let s = Sandbox::new();
    s.write("t.json", &one_stage("echo a > $OUT/a"));
    s.ok(&["run", "t.json"]);
    std::fs::rename(s.cache().join("db"), s.path().join("db.saved")).unwrap();
    // what a rebuild holds while it rehashes: its database, locked
    let building = s.cache().join("db.rebuilding");
    std::fs::create_dir_all(&building).unwrap();
    let lock = std::fs::File::create(building.join("db")).unwrap();
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let o = s.run(&["run", "t.json"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("in use") && !stderr(&o).contains("is missing"), "{}", stderr(&o));
    let child = s.cmd(&["--wait", "run", "t.json"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // the rebuild ends: its lock goes, a moment later its database is renamed into place
    drop(lock);
    std::thread::sleep(Duration::from_millis(400));
    std::fs::rename(s.path().join("db.saved"), s.cache().join("db")).unwrap();
    std::fs::remove_dir_all(&building).unwrap();
    let o = finish_within(child, Duration::from_secs(30), "run --wait during a rebuild");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(s.status_of(&o, "a"), "cached");
}

/// Found by a third hostile pass: a first commit killed between its index record and the
/// database (no run record yet) locked the cache out; such a cache opens, and reruns.
#[test]
fn a_first_commit_killed_before_the_database_does_not_lock_the_cache() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("echo a > $OUT/a"));
    s.ok(&["run", "t.json"]);
    // the state a kill between index/<key>.json and the sled transaction leaves
    std::fs::remove_dir_all(s.cache().join("db")).unwrap();
    for f in std::fs::read_dir(s.cache().join("runs")).unwrap().flatten() {
        std::fs::remove_file(f.path()).unwrap();
    }
    let o = s.ok(&["run", "t.json"]);
    assert_eq!(s.status_of(&o, "a"), "ran");
    s.ok(&["cache", "gc"]);
    s.ok(&["cache", "verify"]);
}

/// An empty sled database at `path`, as `Cache::open` made one before it refused.
fn sled_empty(path: &std::path::Path) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["--cache", path.parent().unwrap().join("fresh").to_str().unwrap(), "plan", path.parent().unwrap().parent().unwrap().join("t.json").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::rename(path.parent().unwrap().join("fresh/db"), path).unwrap();
}

// ---------- found by the hostile pass ----------

#[test]
fn a_stage_that_replaces_out_with_a_link_to_user_data_moves_nothing() {
    let s = Sandbox::new();
    s.write("data/p.txt", "precious");
    s.write("data/sub/d.txt", "d");
    let before = tree(&s.path().join("data"));
    s.write("t.json", r#"{"name":"t","stages":{"pass":{"kind":"command","inputs":{"x":"data"},"params":{"cmd":"rmdir $OUT && ln -s $IN_x $OUT"}}}}"#);
    let o = s.run(&["run", "t.json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("replaced its output directory"), "{}", stderr(&o));
    assert_eq!(tree(&s.path().join("data")), before);
}

#[test]
fn results_computed_from_a_damaged_blob_are_dropped_with_it() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"echo cat > $OUT/label.txt"}},
          "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"cat $IN_x/label.txt > $OUT/b.txt"}}}}"#,
    );
    s.ok(&["run", "t.json"]);
    // An in-place edit of a view file is an edit of the blob (same inode).
    let blob = blob_with(&s.cache(), b"cat\n");
    set_writable(&blob);
    std::fs::write(&blob, "dog\n").unwrap();
    // The run checks a's blob before it hands it on: a reruns, b reads the right bytes.
    let o = s.ok(&["run", "t.json", "--force", "b"]);
    assert_eq!(s.status_of(&o, "a"), "ran", "a's damaged output was served: {}", stdout(&o));
    assert_eq!(std::fs::read_to_string(s.export("b").join("b.txt")).unwrap(), "cat\n");
    s.verify_clean();
}

/// Found by a hostile pass: a blob rewritten in place at its own size was handed to the next
/// stage (only sizes were checked), and once `--force a` had repaired the blob, the result
/// computed from the damaged bytes stayed cached and `cache verify` found nothing. Now a hit's
/// blobs are checked (rehashed when their stat moved), and a repair drops what was computed
/// from the damaged copy.
#[test]
fn a_blob_damaged_at_its_size_is_never_handed_on_nor_its_results_kept() {
    let s = Sandbox::new();
    s.write(
        "r.json",
        r#"{"name":"r","stages":{"a":{"kind":"command","params":{"cmd":"echo hello-a > $OUT/a.txt"}},
          "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"tr a-z A-Z < $IN_x/a.txt > $OUT/b.txt; echo $P_v >> $OUT/b.txt","v":1}}}}"#,
    );
    s.ok(&["run", "r.json"]);
    let blob = blob_with(&s.cache(), b"hello-a\n");
    set_writable(&blob);
    let rot = |content: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
        f.write_all(content.as_bytes()).unwrap();
    };
    // a new param for b: a is a hit, and its blob (same size, other bytes) must not reach b
    rot("jello-a\n");
    let o = s.ok(&["run", "r.json", "--set", "b.v=2"]);
    assert_eq!(s.status_of(&o, "a"), "ran", "{}{}", stdout(&o), stderr(&o));
    assert_eq!(std::fs::read_to_string(s.export("b").join("b.txt")).unwrap(), "HELLO-A\n2\n");
    s.verify_clean();
    // the mtime set back does not hide a write (the ctime moves)
    let mtime = std::fs::metadata(&blob).unwrap().modified().unwrap();
    set_writable(&blob);
    rot("jello-a\n");
    std::fs::File::options().write(true).open(&blob).unwrap().set_modified(mtime).unwrap();
    let o = s.ok(&["run", "r.json", "--set", "b.v=3"]);
    assert_eq!(s.status_of(&o, "a"), "ran", "{}{}", stdout(&o), stderr(&o));
    assert_eq!(std::fs::read_to_string(s.export("b").join("b.txt")).unwrap(), "HELLO-A\n3\n");
    // a blob repaired by a stage that stores the same content again: what other stages had
    // computed from the results that need it is dropped (it may have read the damaged bytes)
    s.write(
        "q.json",
        r#"{"name":"q","stages":{"a2":{"kind":"command","params":{"cmd":"echo hello-a > $OUT/a.txt; echo 2 > $OUT/n"}}}}"#,
    );
    let blob = blob_with(&s.cache(), b"hello-a\n");
    set_writable(&blob);
    rot("jello-a\n");
    s.ok(&["run", "q.json"]);
    let o = s.ok(&["run", "r.json", "--set", "b.v=3"]);
    assert_eq!(s.status_of(&o, "b"), "ran", "b's result from before the repair was kept: {}", stdout(&o));
    assert_eq!(std::fs::read_to_string(s.export("b").join("b.txt")).unwrap(), "HELLO-A\n3\n");
    s.verify_clean();
}

#[test]
fn an_in_place_write_that_restores_the_mtime_is_still_caught() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"echo cat > $OUT/label.txt"}},
          "evil":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"t=$(stat -c %y $IN_x/label.txt); printf dog | dd of=$IN_x/label.txt conv=notrunc 2>/dev/null; touch -d \"$t\" $IN_x/label.txt; echo > $OUT/e"}}}}"#,
    );
    let o = s.run(&["run", "t.json"]);
    assert_eq!(s.status_of(&o, "evil"), "failed", "{}{}", stdout(&o), stderr(&o));
    s.verify_clean();
    let o = s.ok(&["run", "t.json", "--only", "a"]);
    assert_eq!(s.status_of(&o, "a"), "ran", "the damaged output must not be served");
    assert_eq!(std::fs::read_to_string(s.export("a").join("label.txt")).unwrap(), "cat\n");
}

#[test]
fn a_directory_that_is_not_a_cache_is_not_used_as_one() {
    let s = Sandbox::new();
    s.write("proj/tmp/notes.txt", "important");
    s.write("t.json", &one_stage("echo a > $OUT/a"));
    let o = s.cmd(&["run", "t.json"]).env("PIPELINE_CACHE", s.path().join("proj")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a pipeline cache"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(s.path().join("proj/tmp/notes.txt")).unwrap(), "important");
    // Found by a hostile pass: a project with an `objects/` directory passed for a cache, and
    // run, gc and verify emptied its tmp/, index/ and views/; a `.git` failed obscurely.
    for d in ["objects", "tmp", "views", "index"] {
        s.write(&format!("proj2/{d}/important.txt"), "mine");
    }
    s.write("git/.git/objects/ab/cdef", "object");
    s.write("git/.git/index", "index");
    for dir in ["proj2", "git/.git"] {
        for args in [&["run", "t.json"][..], &["cache", "gc"], &["cache", "verify"]] {
            let o = s.cmd(args).env("PIPELINE_CACHE", s.path().join(dir)).output().unwrap();
            assert_eq!(o.status.code(), Some(1), "{dir} {args:?}: {}", stderr(&o));
            assert!(stderr(&o).contains("not a pipeline cache"), "{dir} {args:?}: {}", stderr(&o));
        }
    }
    for d in ["objects", "tmp", "views", "index"] {
        assert_eq!(std::fs::read_to_string(s.path().join(format!("proj2/{d}/important.txt"))).unwrap(), "mine");
    }
    assert!(!s.path().join("git/.git/tmp").exists() && !s.path().join("git/.git/views").exists());
    // Found by a third pass: a web project with objects/ beside index/*.json, or some
    // program's db/conf, passed for a cache made by an earlier build (and a failed open
    // tagged it); `verify --rebuild` then moved its db/ aside.
    s.write("web/objects/logo.png", "img");
    s.write("web/index/home.json", "{}");
    s.write("web/tmp/notes.txt", "draft");
    s.write("pg/db/conf", "listen_port=5432\n");
    s.write("pg/views/x/v.html", "html");
    s.write("pg/tmp/work.txt", "work");
    for dir in ["web", "pg"] {
        for args in [&["run", "t.json"][..], &["cache", "verify", "--rebuild"]] {
            let o = s.cmd(args).env("PIPELINE_CACHE", s.path().join(dir)).output().unwrap();
            assert_eq!(o.status.code(), Some(1), "{dir} {args:?}: {}", stderr(&o));
            assert!(stderr(&o).contains("not a pipeline cache"), "{dir} {args:?}: {}", stderr(&o));
        }
        assert!(!s.path().join(dir).join("CACHEDIR.TAG").exists(), "{dir} was tagged");
    }
    assert_eq!(std::fs::read_to_string(s.path().join("web/tmp/notes.txt")).unwrap(), "draft");
    assert_eq!(std::fs::read_to_string(s.path().join("pg/db/conf")).unwrap(), "listen_port=5432\n");
    assert_eq!(std::fs::read_to_string(s.path().join("pg/tmp/work.txt")).unwrap(), "work");
}

/// Found by a third pass: a FIFO at the cache's CACHEDIR.TAG (or LOCK) blocked every command;
/// a tag another program wrote was overwritten.
#[test]
fn the_caches_own_files_must_be_regular_files() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("echo a > $OUT/a"));
    s.ok(&["run", "t.json"]);
    for name in ["CACHEDIR.TAG", "LOCK"] {
        let p = s.cache().join(name);
        std::fs::remove_file(&p).unwrap();
        make_fifo(&p);
        let child = s.cmd(&["run", "t.json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let o = finish_within(child, Duration::from_secs(30), "a FIFO among the cache's files");
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("not a regular file"), "{name}: {}", stderr(&o));
        std::fs::remove_file(&p).unwrap();
        if name == "CACHEDIR.TAG" {
            std::fs::write(&p, "Signature: 8a477f597d28d172789f06886806bc55\n# another program's\n").unwrap();
            let o = s.run(&["run", "t.json"]);
            assert!(o.status.code() == Some(1) && stderr(&o).contains("did not write"), "{}", stderr(&o));
            std::fs::remove_file(&p).unwrap();
        }
    }
    let o = s.ok(&["run", "t.json"]);
    assert_eq!(s.status_of(&o, "a"), "cached");
}

/// Found by a fourth pass: telling an undone write from a hard link by the link count failed
/// a stage that only read its input while a sibling hard-linked the same file into its own
/// output (the link gone again when the sibling's output was stored), and a stage that made
/// and removed a temporary link. Both are legitimate and must pass.
#[test]
fn hard_links_to_a_shared_input_made_and_removed_meanwhile_are_not_writes() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"echo hello > $OUT/f"}},
          "s":{"kind":"command","params":{"cmd":"sleep 0.3; echo s > $OUT/s"}},
          "linker":{"kind":"command","inputs":{"x":"a","y":"s"},"params":{"cmd":"ln $IN_x/f $OUT/f"}},
          "tmp":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"ln $IN_x/f $OUT/tmp; rm $OUT/tmp; echo ok > $OUT/o"}},
          "reader":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"sleep 1.5; cat $IN_x/f > $OUT/o"}}}}"#,
    );
    let o = s.run(&["run", "t.json", "-j", "4"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(std::fs::read_to_string(s.export("reader").join("o")).unwrap(), "hello\n");
    s.verify_clean();
}

/// Found by a third pass: an input file edited in place with its mtime set back kept its old
/// digest (the stat memo now holds the ctime).
#[test]
fn an_input_edited_with_its_mtime_restored_is_rehashed() {
    let s = Sandbox::new();
    // an input file edited in place, its mtime put back
    let f = s.write("data.txt", "label=cat\n");
    s.write("u.json", r#"{"name":"u","stages":{"r":{"kind":"command","inputs":{"x":"data.txt"},"params":{"cmd":"cat $IN_x > $OUT/o"}}}}"#);
    s.ok(&["run", "u.json"]);
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    {
        use std::io::Write;
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().write_all(b"label=dog\n").unwrap();
    }
    std::fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
    let o = s.ok(&["run", "u.json"]);
    assert_eq!(s.status_of(&o, "r"), "ran", "an edited input with its mtime restored was taken as unchanged");
    assert_eq!(std::fs::read_to_string(s.export("r").join("o")).unwrap(), "label=dog\n");
}

/// Found by a hostile pass: with the cache's `views/` (or `index/`) a link to another
/// directory, `cache gc` and `cache verify` deleted files in the link's target.
#[test]
fn a_cache_whose_own_directories_are_links_is_refused() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("echo a > $OUT/a"));
    s.ok(&["run", "t.json"]);
    for d in ["views", "index", "tmp", "objects"] {
        let big = s.path().join(format!("big-{d}"));
        std::fs::rename(s.cache().join(d), &big).unwrap();
        std::os::unix::fs::symlink(&big, s.cache().join(d)).unwrap();
        s.write(&format!("big-{d}/mystuff/f"), "d");
        s.write(&format!("big-{d}/README"), "n");
        for args in [&["cache", "gc"][..], &["cache", "verify"], &["run", "t.json"]] {
            let o = s.run(args);
            assert_eq!(o.status.code(), Some(1), "{d} {args:?}: {}", stderr(&o));
            assert!(stderr(&o).contains("symbolic link"), "{d} {args:?}: {}", stderr(&o));
        }
        assert!(big.join("mystuff/f").exists() && big.join("README").exists(), "{d}: files deleted through the link");
        std::fs::remove_file(s.cache().join(d)).unwrap();
        std::fs::remove_file(big.join("README")).unwrap();
        std::fs::remove_dir_all(big.join("mystuff")).unwrap();
        std::fs::rename(&big, s.cache().join(d)).unwrap();
    }
    let o = s.ok(&["run", "t.json"]);
    assert_eq!(s.status_of(&o, "a"), "cached");
    s.verify_clean();
}

#[test]
fn export_refuses_a_damaged_blob() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("printf 'cat' > $OUT/a"));
    s.ok(&["run", "t.json"]);
    let blob = blob_with(&s.cache(), b"cat");
    set_writable(&blob);
    std::fs::write(&blob, "dog").unwrap();
    let dir = s.path().join("out");
    let o = s.run(&["cache", "export", "a", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
}

#[test]
fn a_process_that_leaves_the_group_is_still_killed_before_the_commit() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("echo start > $OUT/log; timeout 30 sh -c 'exec 3>>\"$OUT/log\"; sleep 1; echo LATE >&3' >/dev/null 2>&1 & sleep 0.3"));
    s.ok(&["run", "t.json"]);
    std::thread::sleep(Duration::from_millis(1500));
    s.verify_clean();
    assert_eq!(std::fs::read_to_string(s.export("a").join("log")).unwrap(), "start\n");
}

/// Found by a hostile pass: log fields carry what a pipeline file says (here the promotion
/// metric's name) and reached the terminal with its escape sequences.
#[test]
fn log_lines_are_stripped_of_escapes_and_redacted() {
    let s = Sandbox::new();
    let secret = "LogSecretValue0123456789abc";
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"echo hi > $OUT/a.txt"}}},"promote":{"stage":"a","metric":"a.acc\u001b]0;PWN\u0007","to":"out"}}"#,
    );
    let o = s.cmd(&["run", "-q", "t.json"]).env("PIPELINE_LOG", "info").env("AWS_SECRET_ACCESS_KEY", secret).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("not promoted reason=metric a.acc not produced"), "{err}");
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
}

#[test]
fn a_secret_cut_at_the_message_boundary_is_still_redacted() {
    let s = Sandbox::new();
    let secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY";
    s.write("t.json", &one_stage("printf %s \"$AWS_SECRET_ACCESS_KEY\" >&2; head -c 2012 /dev/zero | tr '\\0' B >&2; exit 1"));
    let o = s.cmd(&["run", "t.json"]).env("AWS_SECRET_ACCESS_KEY", secret).output().unwrap();
    assert!(!stderr(&o).contains(&secret[4..]), "{}", stderr(&o));
}

#[test]
fn executables_keep_their_mode_in_views_whatever_shares_their_content() {
    let s = Sandbox::new();
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"a":{"kind":"command","params":{"cmd":"printf '#!/bin/sh\necho hi\n' > $OUT/script.txt"}},
          "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"printf '#!/bin/sh\necho hi\n' > $OUT/run.sh; chmod +x $OUT/run.sh"}},
          "c":{"kind":"command","inputs":{"x":"b"},"params":{"cmd":"$IN_x/run.sh > $OUT/out"}}}}"#,
    );
    s.ok(&["run", "t.json"]);
    assert_eq!(std::fs::read_to_string(s.export("c").join("out")).unwrap(), "hi\n");
}

// ---------- pipeline aggregate --out ----------

const CROWD_CSV: &str = "worker,task,label\nw1,t1,a\nw2,t1,a\nw3,t1,b\nw1,t2,b\nw2,t2,b\nw3,t2,b\nw1,t3,a\nw2,t3,b\nw3,t3,a\n";

#[test]
fn aggregate_never_overwrites_what_is_not_its_own() {
    let s = Sandbox::new();
    // The input inside --out, even with --force: refused, the input intact.
    let inp = s.write("d/labels.csv", CROWD_CSV);
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["aggregate", inp.to_str().unwrap(), "--out", "d"];
        args.extend_from_slice(extra);
        let o = s.run(&args);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("contains the input file"), "{}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&inp).unwrap(), CROWD_CSV);
    }
    // A non-empty directory: refused without --force; with it, only aggregate's files change.
    s.write("o/thesis.tex", "years of work");
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--out", "o"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not empty") && stderr(&o).contains("--force"), "{}", stderr(&o));
    assert!(!s.path().join("o/labels.csv").exists());
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "o", "--force"]);
    assert_eq!(std::fs::read_to_string(s.path().join("o/thesis.tex")).unwrap(), "years of work");
    assert!(s.path().join("o/labels.csv").is_file() && s.path().join("o/summary.json").is_file());
    // A file as --out; a new directory; an empty directory.
    s.write("f", "x");
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--out", "f"]);
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(s.path().join("f")).unwrap(), "x");
    std::os::unix::fs::symlink(s.path().join("o"), s.path().join("link")).unwrap();
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--out", "link", "--force"]);
    assert!(stderr(&o).contains("is a symbolic link"), "{}", stderr(&o));
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "new/deep"]);
    std::fs::create_dir(s.path().join("empty")).unwrap();
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "empty"]);
    assert!(s.path().join("empty/labels.csv").is_file());
    // A failure (bad input) leaves no output directory and no staging directory behind.
    let bad = s.write("bad.csv", "worker,task,label\n");
    let o = s.run(&["aggregate", bad.to_str().unwrap(), "--out", "nothing"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!s.path().join("nothing").exists());
    let stray: Vec<_> = std::fs::read_dir(s.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".aggregate-")).collect();
    assert!(stray.is_empty(), "staging left behind: {stray:?}");
}

#[test]
fn aggregate_out_dot_a_directory_in_the_way_and_a_read_only_out() {
    let s = Sandbox::new();
    let inp = s.write("in.csv", CROWD_CSV);
    // `--out .` in an empty directory: written there, nothing staged inside it, the directory
    // itself kept (a shell in it is not left in a deleted directory).
    let here = s.path().join("here");
    std::fs::create_dir(&here).unwrap();
    let o = s.cmd(&["aggregate", inp.to_str().unwrap(), "--out", "."]).current_dir(&here).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(here.join("labels.csv").is_file());
    let stray = |d: &std::path::Path| std::fs::read_dir(d).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".aggregate-")).count();
    assert_eq!(stray(&here) + stray(s.path()), 0);
    // A directory where aggregate would write a file: refused before any file is replaced.
    s.write("o/labels.csv", "old");
    s.write("o/posteriors.csv", "old");
    std::fs::create_dir(s.path().join("o/summary.json")).unwrap();
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--out", "o", "--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("summary.json is a directory"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(s.path().join("o/labels.csv")).unwrap(), "old");
    assert_eq!(std::fs::read_to_string(s.path().join("o/posteriors.csv")).unwrap(), "old");
    assert!(!s.path().join("o/report.md").exists());
    // A read-only (empty) --out is refused, not swapped for a writable one.
    use std::os::unix::fs::PermissionsExt;
    let ro = s.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--out", "ro"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--out ro is not writable"), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&ro).unwrap().permissions().mode() & 0o777, 0o555);
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 0);
    // nor is a new --out made under it (as root it was: access(2) lets root write anywhere)
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--out", "ro/sub/deeper"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot create it, ro is not writable"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 0);
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Found by a hostile pass: a pipe fed from /dev/zero filled the memory; 10,000 labels in a
/// 311 KB file asked for 30 GB; an item whose answers were all dropped got a label; one item
/// with 100,000 answers took 166 s (pairs of answers counted one by one); a million workers
/// took 1.6 GB for majority vote and 1.5 GB for auto; HTML and terminal escapes in a worker's name reached
/// report.md as they were; prior weights of 1e308 made every posterior NaN.
#[test]
fn aggregate_bounds_what_a_hostile_input_can_cost() {
    let s = Sandbox::new();
    let bin = env!("CARGO_BIN_EXE_pipeline");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 1100000000 /dev/zero | {bin} aggregate /dev/stdin --out z"))
        .current_dir(s.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("more than 1073741824 bytes"), "{}", stderr(&o));
    assert!(!s.path().join("z").exists());
    // classes: refused before anything is counted
    let mut many = String::from("worker,task,label\n");
    for i in 0..20_000 {
        many.push_str(&format!("w{},t{},c{}\n", i % 50, i / 2, i % 10_000));
    }
    let inp = s.write("many.csv", &many);
    for m in ["majority-vote", "auto"] {
        let o = s.run(&["aggregate", inp.to_str().unwrap(), "--out", "m", "--method", m]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("10000 classes: at most 64"), "{}", stderr(&o));
        assert!(!s.path().join("m").exists());
    }
    // 64 classes are taken, but not with 3,000 workers: each has a 64 x 64 matrix (a 1 MB
    // file of 20,000 such workers grew to 24 GB)
    let mut wide_k = String::from("worker,task,label\n");
    for i in 0..9_000 {
        wide_k.push_str(&format!("w{},t{},c{}\n", i / 3, i / 3, i % 64));
    }
    let inp = s.write("widek.csv", &wide_k);
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--out", "wk"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("3000 workers x 64 classes"), "{}", stderr(&o));
    assert!(!s.path().join("wk").exists());
    // an item left without answers by `drop` has no label
    let inp = s.write("drop.csv", "worker,task,label\nw1,t1,a\nw2,t1,a\nw1,t2,zzz\nw3,t3,b\nw1,t3,b\n");
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "d", "--classes", "a,b", "--on-unknown-label", "drop"]);
    assert_eq!(std::fs::read_to_string(s.path().join("d/labels.csv")).unwrap(), "task,label\nt1,a\nt3,b\n");
    // one item with 100,000 answers, and a million workers: linear, and small
    let mut one = String::from("worker,task,label\n");
    for i in 0..100_000 {
        one.push_str(&format!("w{i},t,{}\n", i % 3 % 2));
    }
    let inp = s.write("one.csv", &one);
    let child = s.cmd(&["aggregate", inp.to_str().unwrap(), "--out", "one"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let o = finish_within(child, Duration::from_secs(60), "aggregate of one item with 100,000 answers");
    assert!(o.status.success(), "{}", stderr(&o));
    let mut wide = String::from("worker,task,label\n");
    for i in 0..1_000_000 {
        wide.push_str(&format!("w{i},t{},{}\n", i % 1000, i % 7 % 2));
    }
    let inp = s.write("wide.csv", &wide);
    // peak resident kB of a successful `pipeline ARGS` (GNU time's %M, on its last line)
    let peak_kb = |args: &[&str]| -> u64 {
        let o = Command::new("/usr/bin/time").args(["-f", "%M", bin]).args(args).current_dir(s.path()).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o).lines().last().unwrap().trim().parse().unwrap()
    };
    let kb = peak_kb(&["aggregate", inp.to_str().unwrap(), "--out", "w", "--method", "majority-vote"]);
    assert!(kb < 600_000, "a million workers took {kb} kB");
    // auto compares its candidates on a subset of the items, which kept every worker (1.5 GB)
    let kb = peak_kb(&["aggregate", inp.to_str().unwrap(), "--out", "wa"]);
    assert!(kb < 1_100_000, "auto on a million workers took {kb} kB");
    let wm: serde_json::Value = serde_json::from_slice(&std::fs::read(s.path().join("w/worker_matrices.json")).unwrap()).unwrap();
    assert_eq!(wm["workers"].as_object().unwrap().len(), 1_000_000);
    assert_eq!(wm["workers"]["w7"].as_array().unwrap().len(), 2);
    // names with HTML and escapes are shown inert in report.md
    let inp = s.write("h.csv", "worker,task,label\n\"<img src=x onerror=alert(1)>\",t1,\u{1b}]0;PWN\u{7}A\nw2,t1,b\nw3,t2,b\nw2,t2,b\n");
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "h", "--method", "dawid-skene"]);
    let md = std::fs::read_to_string(s.path().join("h/report.md")).unwrap();
    assert!(!md.contains("<img") && !md.contains('\u{1b}') && !md.contains('\u{7}'), "{md}");
    assert!(md.contains("&lt;img src=x onerror=alert\\(1\\)&gt;") && md.contains("\\x1b\\]0;PWN\\x07A"), "{md}");
    // nor Markdown: an image a viewer would load, a link
    let inp = s.write("i.csv", "worker,task,label\n\"![x](http://evil/x.png)\",t1,a\nw2,t1,b\n\"[l](javascript:alert(1))\",t2,a\nw2,t2,a\nw3,t1,a\n");
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "i", "--method", "dawid-skene", "--spammer-min-answers", "1"]);
    let md = std::fs::read_to_string(s.path().join("i/report.md")).unwrap();
    assert!(!md.contains("![x](") && !md.contains("[l](") && md.contains("\\!\\[x\\]\\(http&#58;//evil/x.png\\)"), "{md}");
    // a class named as an image, in the "always <class>" of a spammer, in every table
    let mut sp = String::from("worker,task,label\n");
    let cls = ["cat", "![x](https://evil.example/x.png)", "dog"];
    for t in 0..60 {
        for w in 0..5 {
            sp.push_str(&format!("w{w},t{t},\"{}\"\n", cls[if (t * 7 + w) % 10 < 8 { t % 3 } else { (t + 1) % 3 }]));
        }
        sp.push_str(&format!("spam,t{t},\"{}\"\n", cls[1]));
    }
    let inp = s.write("sp.csv", &sp);
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "sp"]);
    let md = std::fs::read_to_string(s.path().join("sp/report.md")).unwrap();
    assert!(md.contains("always \\!\\[x\\]") && !md.contains("![x]("), "{md}");
    // prior weights whose sum overflows
    let inp = s.write("c.csv", CROWD_CSV);
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "p", "--method", "dawid-skene", "--class-prior", "1e308,1e308"]);
    let post = std::fs::read_to_string(s.path().join("p/posteriors.csv")).unwrap();
    assert!(!post.contains("NaN") && !post.contains("nan"), "{post}");
}

#[test]
fn aggregate_refuses_a_device_names_the_line_of_invalid_utf8_and_reads_past_a_bom() {
    let s = Sandbox::new();
    // /dev/zero never ends: it was read until memory ran out (old and new reader alike)
    let o = s.run(&["aggregate", "/dev/zero", "--out", "z"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("reading /dev/zero: not a file or a pipe"), "{}", stderr(&o));
    assert!(!s.path().join("z").exists());
    // invalid UTF-8: the error names the line (it named only the file)
    let bad = s.path().join("bad.csv");
    std::fs::write(&bad, b"worker,task,label\nw1,t1,a\nw\xff2,t1,b\n").unwrap();
    let o = s.run(&["aggregate", bad.to_str().unwrap(), "--out", "b"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.csv: line 3: invalid UTF-8"), "{}", stderr(&o));
    // a UTF-8 byte order mark (Excel's CSV UTF-8): the same outputs as without it
    let plain = s.write("plain.csv", CROWD_CSV);
    let bom = s.write("bom.csv", &format!("\u{feff}{CROWD_CSV}"));
    s.ok(&["aggregate", plain.to_str().unwrap(), "--out", "p"]);
    s.ok(&["aggregate", bom.to_str().unwrap(), "--out", "q"]);
    assert_eq!(tree(&s.path().join("p")), tree(&s.path().join("q")));
    // a symlink to a file is still read
    std::os::unix::fs::symlink(&plain, s.path().join("link.csv")).unwrap();
    s.ok(&["aggregate", s.path().join("link.csv").to_str().unwrap(), "--out", "l"]);
    assert_eq!(tree(&s.path().join("p")), tree(&s.path().join("l")));
}

#[test]
fn a_refused_export_writes_nothing_inside_or_outside_the_destination() {
    // Found by a hostile pass: `--force` into a tree whose `sub` is a symlink created
    // `sub/`'s directories through the link (outside the destination) and wrote the files
    // listed before it, then refused: half an artifact, and a directory in someone else's tree.
    let s = Sandbox::new();
    s.write("t.json", &one_stage("echo top > $OUT/a; mkdir -p $OUT/sub/deep; echo x > $OUT/sub/deep/b"));
    s.ok(&["run", "t.json"]);
    std::fs::create_dir_all(s.path().join("victim")).unwrap();
    std::fs::create_dir_all(s.path().join("dest")).unwrap();
    std::os::unix::fs::symlink(s.path().join("victim"), s.path().join("dest/sub")).unwrap();
    // Since the export is staged and installed (`outdir`): the link is a name in common,
    // replaced as an entry like a file; nothing goes through it.
    let o = s.run(&["cache", "export", "a", "dest", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(s.path().join("victim")).unwrap().count(), 0, "a directory was created through the link");
    assert!(std::fs::symlink_metadata(s.path().join("dest/sub")).unwrap().is_dir());
    assert_eq!(std::fs::read_to_string(s.path().join("dest/sub/deep/b")).unwrap(), "x\n");
    // a directory in common is refused, and nothing is written
    std::fs::write(s.path().join("dest/a"), "mine").unwrap();
    let o = s.run(&["cache", "export", "a", "dest", "--force"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("dest/sub is a directory, not replaced (nothing was written"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(s.path().join("dest/a")).unwrap(), "mine");
    s.verify_clean();
}

/// Found by a hostile pass (session 12): `..` after a directory that does not exist skipped
/// every check of `cache export` and `demo-data` (`ghost/../mydocs` overwrote a non-empty
/// directory without `--force`, `ghost/../cache/objects` wrote into the cache); `demo-data
/// --force` wrote through a link at `gold.csv`; `cache export --force` removed the user's
/// file before it found the blob damaged; a killed export left half a tree. Both commands now
/// stage and install with `aggregate --out`'s rules.
#[test]
fn export_and_demo_data_write_nothing_through_dotdot_links_or_damaged_blobs() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("printf cat > $OUT/a; mkdir $OUT/sub; echo x > $OUT/sub/b"));
    s.ok(&["run", "t.json"]);
    s.write("mydocs/a", "PRECIOUS");
    for (cmd, dir) in [("export", "ghost/../mydocs"), ("export", "ghost/../cache/objects"), ("demo", "ghost/../mydocs")] {
        let args: Vec<&str> = if cmd == "export" { vec!["cache", "export", "a", dir] } else { vec!["demo-data", "--per-class", "1", dir] };
        let o = s.run(&args);
        assert_eq!(o.status.code(), Some(1), "{dir}: {}", stderr(&o));
        let why = if dir.contains("cache") { "inside the cache" } else { "goes up (`..`) out of ghost, which does not exist" };
        assert!(stderr(&o).contains(why), "{}", stderr(&o));
        assert!(!s.path().join("ghost").exists());
    }
    assert_eq!(std::fs::read_to_string(s.path().join("mydocs/a")).unwrap(), "PRECIOUS");
    // inside the cache, for demo-data too
    let o = s.run(&["demo-data", "--per-class", "1", s.cache().join("tmp/x").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("inside the cache"), "{}", stderr(&o));
    // a link at one of demo-data's names: replaced as an entry, its target untouched
    let victim = s.write("victim", "precious");
    std::fs::create_dir(s.path().join("d1")).unwrap();
    std::os::unix::fs::symlink(&victim, s.path().join("d1/gold.csv")).unwrap();
    s.ok(&["demo-data", "--force", "--per-class", "1", "d1"]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(s.path().join("d1/gold.csv")).unwrap().is_file());
    // its directories are never replaced: refused before any work, nothing left behind
    let o = s.run(&["demo-data", "--force", "--per-class", "1", "d1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("d1/amt is a directory, not replaced (nothing was written"), "{}", stderr(&o));
    assert!(std::fs::read_dir(s.path().join("d1")).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with(".aggregate-")));
    // nor is a user's file at one of their names (found by a hostile pass: `--force` made the
    // file a directory, its content gone, for demo-data and cache export alike)
    std::fs::create_dir(s.path().join("dm")).unwrap();
    s.write("dm/amt", "userdata");
    let o = s.run(&["demo-data", "--force", "--per-class", "1", "dm"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("dm/amt is a file where demo-data writes a directory"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(s.path().join("dm/amt")).unwrap(), "userdata");
    s.write("dd.json", r#"{"name":"dd","stages":{"dd":{"kind":"command","params":{"cmd":"mkdir $OUT/amt; echo x > $OUT/amt/f"}}}}"#);
    s.ok(&["run", "dd.json"]);
    let o = s.run(&["cache", "export", "dd", "dm", "--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a file where cache export writes a directory"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(s.path().join("dm/amt")).unwrap(), "userdata");
    // after a killed run (its leftover has .replaced) the refusal says the directory may be its
    std::fs::create_dir_all(s.path().join("d1/.aggregate-999999999-K/.replaced")).unwrap();
    let o = s.run(&["demo-data", "--force", "--per-class", "1", "d1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("a run killed while moving its files into d1 left it mixed or partial"), "{}", stderr(&o));
    std::fs::remove_dir_all(s.path().join("d1/.aggregate-999999999-K")).unwrap();
    // a damaged blob (in a subdirectory: the staging directory's tree is removed with it):
    // the user's file of the same name is kept, nothing half-written or left behind
    let blob = blob_with(&s.cache(), b"x\n");
    set_writable(&blob);
    std::fs::write(&blob, "dog").unwrap();
    let o = s.run(&["cache", "export", "a", "mydocs", "--force"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(s.path().join("mydocs/a")).unwrap(), "PRECIOUS");
    assert_eq!(std::fs::read_dir(s.path().join("mydocs")).unwrap().count(), 1, "nothing else was written or left");
    let o = s.run(&["cache", "export", "a", "fresh"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!s.path().join("fresh").exists(), "a new directory appears whole or not at all");
    assert!(std::fs::read_dir(s.path()).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with(".aggregate-")), "a staging directory was left");
}

/// Found by a hostile pass: an artifact with a top-level `.replaced` lost it on export (the
/// staging directory's own name); one with `.aggregate-owner` failed with "File exists".
#[test]
fn an_artifact_with_a_staging_name_is_refused_before_anything_is_written() {
    let s = Sandbox::new();
    s.write("t.json", &one_stage("mkdir $OUT/.replaced; echo keep > $OUT/.replaced/k; echo y > $OUT/y.txt"));
    s.ok(&["run", "t.json"]);
    let o = s.run(&["cache", "export", "a", "e"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("top-level name \".replaced\" is one the export keeps for its own bookkeeping"), "{}", stderr(&o));
    assert!(!s.path().join("e").exists());
}

/// Found by a hostile pass: a `--force` export of another entry into a directory where a
/// killed export had set old files aside deleted the only copy of them (the sweep after an
/// install took any complete install for "one complete result"); a run killed while moving
/// its files into an empty directory left half a result that nothing reported.
#[test]
fn a_killed_exports_leftovers_survive_an_export_of_something_else() {
    let s = Sandbox::new();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().replace(' ', "_");
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap().display().to_string();
    s.write("t.json", &one_stage("echo new > $OUT/f1"));
    s.ok(&["run", "t.json"]);
    s.write("u.json", &serde_json::json!({"name": "u", "stages": {"b": {"kind": "command", "params": {"cmd": "echo other > $OUT/x"}}}}).to_string());
    s.ok(&["run", "u.json"]);
    // `out`: an export of `a` killed after replacing f1, the user's original set aside
    s.write("out/f1", "new\n");
    let st = s.path().join("out/.aggregate-999999999-Kill");
    s.write("out/.aggregate-999999999-Kill/.replaced/f1", "the user's original");
    std::fs::write(st.join(".aggregate-owner"), format!("{host} {ns} 999999999\n")).unwrap();
    let o = s.run(&["cache", "export", "u/b", "out", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("did not rewrite every one of those names, so they are kept"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(st.join(".replaced/f1")).unwrap(), "the user's original");
    assert!(stderr(&o).contains("also holds 1 name(s) this export did not write, left as they were: f1"), "{}", stderr(&o));
    // the same entry again: every name rewritten, so the leftovers go
    let o = s.run(&["cache", "export", "t/a", "out", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!st.exists(), "{}", stderr(&o));
    // killed while moving into an empty directory (nothing set aside yet): reported
    s.write("half/f1", "new\n");
    let st = s.path().join("half/.aggregate-999999998-Kill");
    std::fs::create_dir_all(st.join(".replaced")).unwrap();
    std::fs::write(st.join(".aggregate-owner"), format!("{host} {ns} 999999998\n")).unwrap();
    std::fs::write(st.join(".aggregate-names"), "f1").unwrap();
    let o = s.run(&["cache", "export", "t/a", "half"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("killed while moving its files in") && stderr(&o).contains("holding part of one"), "{}", stderr(&o));
    // an export of something else does not rewrite f1: the record of the half result stays
    // (it was taken for done: nothing had been set aside)
    let o = s.run(&["cache", "export", "u/b", "half", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(st.exists() && stderr(&o).contains("so they are kept"), "{}", stderr(&o));
    s.ok(&["cache", "export", "t/a", "half", "--force"]);
    assert!(!st.exists());
    // aggregate --out inside the cache is refused as export's and demo-data's DIR are
    let inp = s.write("in.csv", CROWD_CSV);
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--out", s.cache().join("tmp/agg").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("inside the cache"), "{}", stderr(&o));
}

/// An input named by path is read in place: if it changes while the stage runs, the output
/// was made from other bytes than the key says. Found by a hostile pass (a model swapped
/// under a fine-tuning stage's `init` was cached under the first model's key).
#[test]
fn an_input_file_that_changes_while_its_stage_runs_is_not_cached_under_the_old_key() {
    let s = Sandbox::new();
    let f = s.write("data/in.txt", "first");
    s.write(
        "t.json",
        r#"{"name":"t","stages":{"a":{"kind":"command","inputs":{"x":"data"},
            "params":{"cmd":"cat $IN_x/in.txt > $OUT/copy.txt; printf second > $IN_x/in.txt"}}}}"#,
    );
    let o = s.run(&["run", "t.json"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("input `x`") && all.contains("changed while the stage ran"), "{all}");
    // nothing stored under the key of "first": with "first" back, the stage runs again
    std::fs::write(&f, "first").unwrap();
    let plan = s.run(&["plan", "t.json"]);
    assert!(stdout(&plan).contains("miss"), "{}", stdout(&plan));
    s.verify_clean();
}

/// Two `aggregate --force` runs into one `--out` at once: each installs under a lock on the
/// directory, so `--out` ends as one run's complete result, never labels of one and
/// posteriors of the other (a hostile pass got exactly that mix before the lock).
#[test]
fn concurrent_forced_aggregates_leave_one_complete_result() {
    let s = Sandbox::new();
    let mut csv = String::from("worker,task,label\n");
    for t in 0..3000 {
        for w in 0..3 {
            // mostly the item's class, sometimes the next one: the methods' posteriors differ
            let l = ["a", "b", "c"][if (t * 7 + w * 3) % 5 == 0 { (t + 1) % 3 } else { t % 3 }];
            csv.push_str(&format!("w{},t{t},{l}\n", (t + w * 11) % 40));
        }
    }
    let inp = s.write("in.csv", &csv);
    let methods = ["majority-vote", "one-coin"];
    for m in methods {
        s.ok(&["aggregate", inp.to_str().unwrap(), "--method", m, "--out", &format!("ref-{m}")]);
    }
    let read = |d: &str, f: &str| std::fs::read(s.path().join(d).join(f)).unwrap();
    assert!(read("ref-majority-vote", "posteriors.csv") != read("ref-one-coin", "posteriors.csv"), "the two methods must differ");
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "o"]);
    for _ in 0..4 {
        let kids: Vec<_> = methods
            .iter()
            .map(|m| s.cmd(&["aggregate", inp.to_str().unwrap(), "--method", m, "--out", "o", "--force"]).spawn().unwrap())
            .collect();
        for mut k in kids {
            assert!(k.wait().unwrap().success());
        }
        let which = methods.iter().find(|m| read("o", "labels.csv") == read(&format!("ref-{m}"), "labels.csv") && read("o", "posteriors.csv") == read(&format!("ref-{m}"), "posteriors.csv")).expect("labels and posteriors of one run");
        assert!(read("o", "summary.json") == read(&format!("ref-{which}"), "summary.json"), "summary.json is not {which}'s");
    }
}

/// A killed `aggregate` (kill -9, Ctrl-C) leaves its staging directory beside `--out`; the
/// next run there removes those of processes that no longer exist, and nothing else.
#[test]
fn aggregate_sweeps_the_staging_left_by_killed_runs_and_nothing_else() {
    let s = Sandbox::new();
    let inp = s.write("in.csv", CROWD_CSV);
    // who made a staging directory: host, PID namespace (this test's are the command's), PID
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().replace(' ', "_");
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap().display().to_string();
    let owner = |pid: u64| format!("{host} {ns} {pid}\n");
    // PID 999999999 is above any pid_max: no such process
    s.write(".aggregate-999999999-AbCdEf/labels.csv", "half-written");
    s.write(".aggregate-999999999-AbCdEf/.aggregate-owner", &owner(999999999));
    let mine = format!(".aggregate-{}-keep", std::process::id()); // a live process
    s.write(&format!("{mine}/x"), "x");
    s.write(&format!("{mine}/.aggregate-owner"), &owner(std::process::id() as u64));
    s.write(".aggregate-notes/x", "not a staging name");
    s.write(".aggregate-123456789-file", "a file, not a directory");
    // found by a hostile pass: a user's directory of that shape, and a run on another host
    // (NFS) or in another PID namespace (a container), whose PIDs mean nothing here
    s.write(".aggregate-999999998-mybackup/important", "data");
    s.write(".aggregate-999999997-elsewhere/.aggregate-owner", &format!("otherhost {ns} 999999997\n"));
    s.write(".aggregate-999999996-container/.aggregate-owner", &format!("{host} pid:[1] 999999996\n"));
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "o"]);
    assert!(!s.path().join(".aggregate-999999999-AbCdEf").exists(), "the dead run's staging is removed");
    for kept in [mine.as_str(), ".aggregate-notes", ".aggregate-123456789-file", ".aggregate-999999998-mybackup", ".aggregate-999999997-elsewhere", ".aggregate-999999996-container"] {
        assert!(s.path().join(kept).exists(), "{kept} was removed");
    }
    assert!(s.path().join("o/labels.csv").is_file());
}

/// Found by a hostile pass: `--force` left the old run's `worker_N.png` plots beside the new
/// run's files (a report directory mixing two runs); an empty `--out` was swapped for the
/// staging directory (new inode and owner); `--out a/b/c/../../..` created `a/b/c` before
/// refusing; a repeated answer of a worker in a crowd-kit CSV counted twice.
#[test]
fn aggregate_force_removes_its_stale_files_keeps_an_empty_out_and_creates_nothing_it_refuses() {
    use std::os::unix::fs::MetadataExt;
    let s = Sandbox::new();
    let inp = s.write("in.csv", CROWD_CSV);
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "o"]);
    // 3 workers: the report draws worker_1..3.png; an older run on a larger crowd drew up to 5
    assert!(!s.path().join("o/worker_4.png").exists());
    s.write("o/worker_5.png", "an old run's plot");
    // names the report never writes are the user's (it draws at most worker_5.png)
    let users = ["worker_9b.png", "notes.md", "worker_0.png", "worker_03.png", "worker_6.png"];
    for u in users {
        s.write(&format!("o/{u}"), "the user's file");
    }
    std::fs::create_dir(s.path().join("o/worker_4.png")).unwrap();
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "o", "--force"]);
    assert!(!s.path().join("o/worker_5.png").exists(), "a stale plot of the old run was kept");
    for kept in users.iter().chain(&["worker_4.png"]) {
        assert!(s.path().join("o").join(kept).exists(), "{kept} was removed");
    }
    let fresh = s.path().join("fresh");
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "fresh"]);
    assert_eq!(tree_files(&s.path().join("o"), &users), tree_files(&fresh, &[]));
    // a link or FIFO at a stale result's name went unnoticed (only plain files were stale):
    // the entries are removed, never what a link points to
    std::fs::remove_dir(s.path().join("o/worker_4.png")).unwrap();
    let target = s.write("kept.txt", "the link's target");
    std::os::unix::fs::symlink(&target, s.path().join("o/worker_4.png")).unwrap();
    make_fifo(&s.path().join("o/worker_5.png"));
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--out", "./o/./", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // the path as it can be typed again
    assert!(String::from_utf8_lossy(&o.stdout).contains("wrote ./o/labels.csv, ./o/posteriors.csv"), "{}", String::from_utf8_lossy(&o.stdout));
    for stale in ["o/worker_4.png", "o/worker_5.png"] {
        assert!(std::fs::symlink_metadata(s.path().join(stale)).is_err(), "{stale} was kept beside the new results");
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "the link's target");
    std::fs::remove_file(&target).unwrap();
    // an empty --out is written into, not replaced
    use std::os::unix::fs::PermissionsExt;
    let e = s.path().join("empty");
    std::fs::create_dir(&e).unwrap();
    std::fs::set_permissions(&e, std::fs::Permissions::from_mode(0o750)).unwrap();
    let ino = std::fs::metadata(&e).unwrap().ino();
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "empty"]);
    let m = std::fs::metadata(&e).unwrap();
    assert_eq!((m.ino(), m.mode() & 0o777), (ino, 0o750));
    assert!(e.join("labels.csv").is_file());
    // a new --out gets mkdir's mode (the umask's), not a temporary directory's 0700
    let probe = s.path().join("probe");
    std::fs::create_dir(&probe).unwrap();
    assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, std::fs::metadata(&probe).unwrap().mode() & 0o777);
    // `..` out of a directory that does not exist: refused, nothing created
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--out", "a/b/c/../../.."]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist") && stderr(&o).contains("nothing was created"), "{}", stderr(&o));
    assert!(!s.path().join("a").exists());
    // `..` through directories that exist is a path like any other
    s.ok(&["aggregate", inp.to_str().unwrap(), "--out", "o/../up"]);
    assert!(s.path().join("up/labels.csv").is_file());
    // a worker's repeated answer: the first kept and counted (as the AMT reader), or all
    // kept on request; the labels follow
    let dup = s.write("dup.csv", &format!("{CROWD_CSV}w3,t1,b\nw3,t1,b\nw1,t3,b\n"));
    let o = s.run(&["aggregate", dup.to_str().unwrap(), "--method", "majority-vote", "--out", "d1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("3 repeated answer(s) of a worker on a task dropped (1 of them a different label)"), "{}", stderr(&o));
    s.ok(&["aggregate", inp.to_str().unwrap(), "--method", "majority-vote", "--out", "d0"]);
    assert_eq!(std::fs::read(s.path().join("d1/posteriors.csv")).unwrap(), std::fs::read(s.path().join("d0/posteriors.csv")).unwrap());
    s.ok(&["aggregate", dup.to_str().unwrap(), "--method", "majority-vote", "--duplicates", "keep", "--out", "d2"]);
    let labels = std::fs::read_to_string(s.path().join("d2/labels.csv")).unwrap();
    assert!(labels.contains("t1,b"), "every row counted: w3's three b outvote two a: {labels}");
}

/// Found by a hostile pass: a run killed between its file moves left `--out` with labels of
/// the new run and posteriors of the old, and the next run's sweep deleted the old files it
/// had set aside. Now the set-aside files are kept and the next run says `--out` may be
/// mixed; a --force run makes it one complete result again, and only then are they removed. (A journal rolled forward by
/// the next run was tried and dropped: a forged one could replace files anywhere.)
#[test]
fn a_run_killed_during_its_moves_keeps_the_old_files_and_is_reported() {
    let s = Sandbox::new();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().replace(' ', "_");
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap().display().to_string();
    let inp = s.write("in.csv", CROWD_CSV);
    s.ok(&["aggregate", inp.to_str().unwrap(), "--method", "majority-vote", "--out", "mv"]);
    s.ok(&["aggregate", inp.to_str().unwrap(), "--method", "one-coin", "--out", "o"]);
    let names = tree_files(&s.path().join("o"), &[]);
    // `o`: killed after moving labels.csv of majority-vote in, its old one set aside
    let st = s.path().join("o/.aggregate-999999999-Kill");
    std::fs::create_dir_all(st.join(".replaced")).unwrap();
    std::fs::rename(s.path().join("o/labels.csv"), st.join(".replaced/labels.csv")).unwrap();
    std::fs::copy(s.path().join("mv/labels.csv"), s.path().join("o/labels.csv")).unwrap();
    std::fs::copy(s.path().join("mv/posteriors.csv"), st.join("posteriors.csv")).unwrap();
    std::fs::write(st.join(".aggregate-owner"), format!("{host} {ns} 999999999\n")).unwrap();
    // refused without --force, saying why
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--method", "one-coin", "--out", "o"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("killed while moving its files in"), "{}", stderr(&o));
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--method", "one-coin", "--out", "o", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // the --force run made `o` one complete result: the killed run's leftovers go with it,
    // and the warning with them
    assert!(!st.exists(), "a complete result was written: the leftovers are of no use");
    let o = s.run(&["aggregate", inp.to_str().unwrap(), "--method", "one-coin", "--out", "o", "--force"]);
    assert!(o.status.success() && !stderr(&o).contains("may mix"), "{}", stderr(&o));
    // the --force run is one complete result (the one-coin run's files, all of them)
    s.ok(&["aggregate", inp.to_str().unwrap(), "--method", "one-coin", "--out", "ref"]);
    assert_eq!(tree_files(&s.path().join("o"), &[]), names);
    for n in &names {
        assert_eq!(std::fs::read(s.path().join("o").join(n)).unwrap(), std::fs::read(s.path().join("ref").join(n)).unwrap(), "{n}");
    }
}

/// The names of the plain files under `d`, but `skip`.
fn tree_files(d: &std::path::Path, skip: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !skip.contains(&n.as_str()))
        .collect();
    v.sort();
    v
}
