//! The shared remote cache (issue 15): two machines' caches sharing one remote, on a
//! directory and on a real S3-compatible server (moto, started by `.ci/s3-up`), and the
//! faults a remote can have.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const PIPELINE: &str = r#"{"name":"t","stages":{
  "a":{"kind":"command","params":{"cmd":"mkdir $OUT/d; for i in 1 2 3; do echo a$i > $OUT/d/f$i; done; yes blob | head -c 200000 > $OUT/big"}},
  "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"cat $IN_x/d/* > $OUT/b.txt"}},
  "c":{"kind":"command","inputs":{"x":"b"},"params":{"cmd":"wc -c < $IN_x/b.txt > $OUT/c.txt"}}}}"#;

/// One machine: its own directory and cache, the pipeline file, a remote URL.
struct Machine {
    s: Sandbox,
    remote: String,
    env: Vec<(String, String)>,
}

impl Machine {
    fn new(remote: &str, env: &[(String, String)]) -> Machine {
        let s = Sandbox::new();
        s.write("t.json", PIPELINE);
        Machine { s, remote: remote.to_string(), env: env.to_vec() }
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.s.cmd(args);
        c.env("PIPELINE_REMOTE", &self.remote);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
    fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd(args).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> std::process::Output {
        let o = self.run(args);
        assert!(o.status.success(), "{args:?}: {}{}", stdout(&o), stderr(&o));
        o
    }
    fn exported(&self, stage: &str) -> Vec<(String, Vec<u8>)> {
        let n = std::fs::read_dir(self.s.path()).unwrap().count();
        let dir = self.s.path().join(format!("exp-{stage}-{n}"));
        self.ok(&["cache", "export", stage, dir.to_str().unwrap()]);
        tree(&dir)
    }
}

fn statuses(m: &Machine, o: &std::process::Output) -> Vec<String> {
    m.s.statuses(o).into_iter().map(|(_, s)| s).collect()
}

/// Every entry on a directory remote has its manifest and blobs (the commit protocol).
fn remote_consistent(dir: &Path) {
    let entries = dir.join("entries");
    let Ok(rd) = std::fs::read_dir(&entries) else { return };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with('#') {
            continue; // object_store's in-flight temporary
        }
        let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        let out = entry["output"].as_str().unwrap();
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("manifests").join(out)).expect("an entry without its manifest")).unwrap();
        for f in m["files"].as_array().unwrap() {
            let d = f["digest"].as_str().unwrap();
            let blob = dir.join("objects").join(&d[..2]).join(&d[2..]);
            assert!(blob.is_file(), "entry {} names a blob the remote lacks", e.path().display());
        }
    }
}

fn two_machines_share_results(remote: &str, env: &[(String, String)]) {
    let a = Machine::new(remote, env);
    let o = a.ok(&["run", "t.json"]);
    assert_eq!(statuses(&a, &o), ["ran", "ran", "ran"]);
    assert!(stdout(&o).contains("uploaded to the remote cache: 3 stages"), "{}", stdout(&o));

    let b = Machine::new(remote, env);
    let plan = b.ok(&["plan", "t.json", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    for s in plan["stages"].as_array().unwrap() {
        assert_eq!((s["status"].as_str(), s["source"].as_str()), (Some("hit"), Some("remote")), "{plan}");
    }
    let o = b.ok(&["run", "t.json"]);
    assert_eq!(statuses(&b, &o), ["cached", "cached", "cached"], "nothing runs on the second machine");
    assert!(stdout(&o).contains("from the remote cache: a, b, c"), "{}", stdout(&o));
    for stage in ["a", "b", "c"] {
        assert_eq!(a.exported(stage), b.exported(stage), "stage {stage}");
    }
    // Now local: no remote needed.
    let o = b.s.ok(&["run", "t.json", "--remote-mode", "off"]);
    assert_eq!(b.s.statuses(&o).iter().filter(|s| s.1 == "cached").count(), 3);
    b.s.verify_clean();
}

#[test]
fn directory_remote_two_caches_share_one_remote() {
    let r = tempfile::tempdir().unwrap();
    two_machines_share_results(r.path().to_str().unwrap(), &[]);
    remote_consistent(r.path());
}

#[test]
fn read_only_mode_uploads_nothing() {
    let r = tempfile::tempdir().unwrap();
    let a = Machine::new(r.path().to_str().unwrap(), &[]);
    a.ok(&["run", "t.json", "--remote-mode", "read-only"]);
    assert!(tree(r.path()).is_empty(), "read-only wrote {:?}", tree(r.path()).iter().map(|f| f.0.clone()).collect::<Vec<_>>());
    // push / pull by hand
    a.ok(&["cache", "push", "--all"]);
    assert!(!tree(r.path()).is_empty());
    let b = Machine::new(r.path().to_str().unwrap(), &[]);
    let o = b.ok(&["cache", "pull", "--all"]);
    assert!(stdout(&o).contains("pulled 3 entries"), "{}", stdout(&o));
    let o = b.s.ok(&["run", "t.json"]);
    assert_eq!(b.s.statuses(&o).iter().filter(|s| s.1 == "cached").count(), 3);
}

/// Found by a hostile pass: a remote blob changed at its own size was refused by every
/// reader, but `cache push` found nothing to do ("0 blobs uploaded") and the remote stayed
/// unpullable. `cache push --verify` hashes what the remote has and uploads it again.
#[test]
fn push_verify_repairs_a_blob_changed_at_its_size() {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    let a = Machine::new(url, &[]);
    a.ok(&["run", "t.json"]);
    // the 200,000-byte blob, same size, other bytes
    let big = tree(&r.path().join("objects")).into_iter().find(|(_, b)| b.len() == 200_000).expect("the big blob").0;
    let big = r.path().join("objects").join(big);
    let mut bytes = std::fs::read(&big).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&big, &bytes).unwrap();
    let o = a.ok(&["cache", "push", "--all"]);
    assert!(stdout(&o).contains("(0 blobs uploaded"), "a plain push trusts the size: {}", stdout(&o));
    let o = a.ok(&["cache", "push", "--all", "--verify"]);
    assert!(stdout(&o).contains("(1 blobs uploaded"), "{}", stdout(&o));
    let b = Machine::new(url, &[]);
    let o = b.ok(&["run", "t.json"]);
    assert_eq!(statuses(&b, &o), ["cached", "cached", "cached"], "not repaired: {}", stderr(&o));
}

/// Found by a hostile pass: a FIFO at a blob's name hung `cache push` and `plan` (the size
/// lookup opened it), and a push wrote through an `objects/XX` directory linked elsewhere.
#[test]
fn a_fifo_blob_is_replaced_and_a_linked_objects_directory_is_refused() {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    let a = Machine::new(url, &[]);
    a.ok(&["run", "t.json"]);
    let blob = r.path().join("objects").join(&tree(&r.path().join("objects"))[0].0);
    make_fifo(&blob);
    let fresh = Machine::new(url, &[]);
    let child = fresh.cmd(&["plan", "t.json"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    finish_within(child, Duration::from_secs(60), "plan on a FIFO in the remote");
    // an entry that is a FIFO too: a push writes it again (create-if-absent kept it)
    let entry = std::fs::read_dir(r.path().join("entries")).unwrap().flatten().next().unwrap().path();
    make_fifo(&entry);
    let o = a.ok(&["cache", "push", "--all"]);
    assert!(stdout(&o).contains("(1 blobs uploaded"), "{}", stdout(&o));
    assert!(std::fs::metadata(&blob).unwrap().is_file());
    assert!(std::fs::metadata(&entry).unwrap().is_file(), "the FIFO entry was kept");
    // a directory at an entry's name (the local backend calls it missing, and a push counted
    // the name as its upload): damaged, and the push that cannot replace it says so
    std::fs::remove_file(&entry).unwrap();
    std::fs::create_dir(&entry).unwrap();
    let o = a.run(&["cache", "push", "--all"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    std::fs::remove_dir(&entry).unwrap();
    a.ok(&["cache", "push", "--all"]);
    let b = Machine::new(url, &[]);
    let o = b.ok(&["run", "t.json"]);
    assert_eq!(statuses(&b, &o), ["cached", "cached", "cached"], "not repaired: {}", stderr(&o));
    // objects/XX linked to a directory elsewhere: refused, nothing written there
    let dir = blob.parent().unwrap().to_path_buf();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), &dir).unwrap();
    let o = a.run(&["cache", "push", "--all"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("is a symbolic link: nothing is written through a link"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

/// Damage the remote in one way, then a fresh machine must not trust it: the stage reruns,
/// the message names the object, and (read-write) the upload repairs the remote.
fn fault(name: &str, damage: impl Fn(&Path)) {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    Machine::new(url, &[]).ok(&["run", "t.json"]);
    damage(r.path());
    let b = Machine::new(url, &[]);
    let o = b.ok(&["run", "t.json"]);
    assert_eq!(b.s.status_of(&o, "a"), "ran", "{name}: a damaged remote hit must rerun: {}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("warning") && (stderr(&o).contains("objects/") || stderr(&o).contains("manifests/")), "{name}: {}", stderr(&o));
    b.s.verify_clean();
    // The rerun's upload repaired it: a third machine gets everything from the remote.
    let c = Machine::new(url, &[]);
    let o = c.ok(&["run", "t.json"]);
    assert_eq!(statuses(&c, &o), ["cached", "cached", "cached"], "{name}: not repaired: {}", stderr(&o));
    assert_eq!(b.exported("c"), c.exported("c"));
}

fn big_blob(r: &Path) -> PathBuf {
    let mut found = None;
    for d in std::fs::read_dir(r.join("objects")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            if std::fs::metadata(f.path()).unwrap().len() == 200000 {
                found = Some(f.path());
            }
        }
    }
    found.expect("the 200 kB blob")
}

#[test]
fn remote_faults_are_never_trusted_and_are_repaired() {
    fault("truncated blob", |r| std::fs::write(big_blob(r), b"yes").unwrap());
    fault("flipped byte", |r| {
        let p = big_blob(r);
        let mut b = std::fs::read(&p).unwrap();
        b[1000] ^= 1;
        std::fs::write(p, b).unwrap();
    });
    fault("missing blob", |r| std::fs::remove_file(big_blob(r)).unwrap());
    fault("entry without its manifest", |r| {
        for m in std::fs::read_dir(r.join("manifests")).unwrap().flatten() {
            std::fs::remove_file(m.path()).unwrap();
        }
    });
}

#[test]
fn an_upload_killed_halfway_leaves_no_entry_without_its_blobs() {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    let a = Machine::new(url, &[]);
    let mut x: u64 = 0x2545f4914f6cdd1d;
    for i in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut child = a.cmd(&["run", "t.json", "-q", "--force", "a"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(20 + x % 200));
        let _ = child.kill();
        let _ = child.wait();
        remote_consistent(r.path());
        let _ = i;
    }
    a.ok(&["run", "t.json"]);
    remote_consistent(r.path());
    let b = Machine::new(url, &[]);
    let o = b.ok(&["run", "t.json"]);
    assert_eq!(statuses(&b, &o), ["cached", "cached", "cached"]);
    // gc --remote with no grace keeps what entries need
    a.ok(&["cache", "gc", "--remote", "--grace", "0"]);
    remote_consistent(r.path());
    let c = Machine::new(url, &[]);
    let o = c.ok(&["run", "t.json"]);
    assert_eq!(statuses(&c, &o), ["cached", "cached", "cached"]);
}

// ---------- S3 ----------

struct S3Server {
    pid: i32,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }
}

/// moto on 127.0.0.1, installed and started by the repo's script. `None` (the test skips
/// with a message) only where it cannot be installed; `PIPELINE_REQUIRE_S3=1` (CI) fails.
fn s3_server() -> Option<S3Server> {
    let dir = tempfile::tempdir().unwrap().keep();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/s3-up");
    let o = Command::new(&script).arg(&dir).output().unwrap();
    if !o.status.success() {
        let why = format!("could not start the S3 test server (.ci/s3-up): {}", stderr(&o));
        if std::env::var("PIPELINE_REQUIRE_S3").is_ok_and(|v| v == "1") {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let endpoint = std::fs::read_to_string(dir.join("endpoint")).unwrap().trim().to_string();
    let pid = std::fs::read_to_string(dir.join("pid")).unwrap().trim().parse().unwrap();
    Some(S3Server { pid, endpoint })
}

fn s3_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "testing-key-id"),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret-key"),
        ("AWS_REGION", "us-east-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn s3_remote_two_caches_share_one_bucket_and_retries_survive_a_flaky_server() {
    let Some(server) = s3_server() else { return };
    two_machines_share_results("s3://pipeline-test/lab-cache", &s3_env(&server.endpoint));

    // A server that fails every third request: object_store's retries carry the run.
    let proxy = flaky_proxy(&server.endpoint);
    let env = s3_env(&proxy);
    let a = Machine::new("s3://pipeline-test/flaky", &env);
    let o = a.ok(&["run", "t.json"]);
    assert!(stdout(&o).contains("uploaded to the remote cache: 3 stages"), "{}{}", stdout(&o), stderr(&o));
    let b = Machine::new("s3://pipeline-test/flaky", &env);
    let o = b.ok(&["run", "t.json"]);
    assert_eq!(statuses(&b, &o), ["cached", "cached", "cached"], "{}", stderr(&o));
    // Credentials never reach the output or the records.
    for f in tree(&b.s.cache()).iter().chain(tree(&a.s.cache()).iter()) {
        assert!(!f.1.windows(18).any(|w| w == b"testing-secret-key"), "secret in {}", f.0);
    }
}

/// An HTTP proxy in front of `upstream` that answers every third request with 503.
fn flaky_proxy(upstream: &str) -> String {
    fault_proxy(upstream, |n, _| (n % 3 == 2).then_some("503 Service Unavailable"))
}

/// An HTTP proxy in front of `upstream` that answers a request with the status `rule` gives
/// (from the request count and its head), else forwards it.
fn fault_proxy(upstream: &str, rule: fn(usize, &str) -> Option<&'static str>) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let up = upstream.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (up, count) = (up.clone(), count.clone());
            std::thread::spawn(move || {
                let mut client = conn;
                loop {
                    // Read one request: head, then Content-Length bytes of body.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match client.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if client.read_exact(&mut body).is_err() {
                        return;
                    }
                    if let Some(status) = rule(count.fetch_add(1, std::sync::atomic::Ordering::SeqCst), &text) {
                        if status == "STALL" {
                            // accept the request and never answer it
                            std::thread::sleep(Duration::from_secs(3600));
                            return;
                        }
                        let _ = client.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes());
                        continue;
                    }
                    // Forward on a fresh connection that closes after the response.
                    let Ok(mut server) = TcpStream::connect(&up) else { return };
                    let fixed = text.replace("Connection: keep-alive", "Connection: close").replacen("\r\n", "\r\nConnection: close\r\n", 1);
                    if server.write_all(fixed.as_bytes()).and_then(|_| server.write_all(&body)).is_err() {
                        return;
                    }
                    let mut resp = Vec::new();
                    let _ = server.read_to_end(&mut resp);
                    // The client keeps its connection: re-frame the response with its length.
                    let Some(split) = resp.windows(4).position(|w| w == b"\r\n\r\n") else { return };
                    let rhead = String::from_utf8_lossy(&resp[..split]).to_string();
                    if text.starts_with("HEAD ") {
                        let out = format!("{}\r\n\r\n", rhead.lines().filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect::<Vec<_>>().join("\r\n"));
                        if client.write_all(out.as_bytes()).is_err() {
                            return;
                        }
                        continue;
                    }
                    let raw = &resp[split + 4..];
                    let chunked = rhead.to_ascii_lowercase().contains("transfer-encoding: chunked");
                    let decoded = if chunked { dechunk(raw) } else { raw.to_vec() };
                    let rbody = decoded.as_slice();
                    let mut lines: Vec<&str> = rhead
                        .lines()
                        .filter(|l| {
                            let l = l.to_ascii_lowercase();
                            !l.starts_with("content-length:") && !l.starts_with("connection:") && !l.starts_with("transfer-encoding:")
                        })
                        .collect();
                    let cl = format!("Content-Length: {}", rbody.len());
                    lines.push(&cl);
                    let out = format!("{}\r\n\r\n", lines.join("\r\n"));
                    if client.write_all(out.as_bytes()).and_then(|_| client.write_all(rbody)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Decode an HTTP/1.1 chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else { break };
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[(size + 2).min(raw.len())..];
    }
    out
}

// ---------- found by the hostile pass ----------

#[test]
fn a_cache_is_never_a_remote_and_remote_gc_deletes_only_its_own_objects() {
    let a = Machine::new("", &[]);
    a.s.ok(&["run", "t.json"]);
    let cache = a.s.cache();
    for url in [cache.display().to_string(), cache.join("tmp/r").display().to_string()] {
        let o = a.s.run(&["cache", "gc", "--remote", &url, "--grace", "0"]);
        assert_eq!(o.status.code(), Some(1), "{url}");
        assert!(stderr(&o).contains("pipeline cache"), "{}", stderr(&o));
    }
    a.s.verify_clean();
    let r = tempfile::tempdir().unwrap();
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("thesis.tex"), "years of work").unwrap();
    let url = r.path().to_str().unwrap();
    a.s.ok(&["cache", "push", "--all", "--remote", url]);
    std::os::unix::fs::symlink(victim.path(), r.path().join("objects/zz")).unwrap();
    std::fs::write(r.path().join("objects/README"), "keep").unwrap();
    std::fs::write(r.path().join("manifests/NOTES.txt"), "keep").unwrap();
    a.s.ok(&["cache", "gc", "--remote", url, "--grace", "0"]);
    assert!(victim.path().join("thesis.tex").exists(), "gc followed a symlink out of the remote");
    assert!(r.path().join("objects/README").exists() && r.path().join("manifests/NOTES.txt").exists());
    remote_consistent(r.path());
}

#[test]
fn a_lying_or_damaged_remote_entry_is_refused_and_replaced() {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    Machine::new(url, &[]).ok(&["run", "t.json"]);
    for e in std::fs::read_dir(r.path().join("entries")).unwrap().flatten() {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        v["key_inputs"]["params"]["cmd"] = serde_json::json!("LIES");
        std::fs::write(e.path(), serde_json::to_vec(&v).unwrap()).unwrap();
    }
    let b = Machine::new(url, &[]);
    let o = b.ok(&["run", "t.json"]);
    assert_eq!(statuses(&b, &o), ["ran", "ran", "ran"], "{}", stderr(&o));
    assert!(stderr(&o).contains("do not hash to its key"), "{}", stderr(&o));
    // b's uploads replaced the lying entries
    let c = Machine::new(url, &[]);
    let o = c.ok(&["run", "t.json"]);
    assert_eq!(statuses(&c, &o), ["cached", "cached", "cached"], "{}", stderr(&o));
}

#[test]
fn credentials_in_an_s3_url_are_refused_without_echoing_them() {
    let a = Machine::new("s3://AKIAURLKEY:UrlSecretXYZ@bucket/x", &[]);
    let o = a.run(&["run", "t.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!stderr(&o).contains("UrlSecretXYZ") && stderr(&o).contains("credentials do not belong in the URL"), "{}", stderr(&o));
}

// ---------- errors that must be loud, big blobs ----------

const BIG: &str = r#"{"name":"big","stages":{
  "a":{"kind":"command","params":{"cmd":"head -c 41000000 /dev/urandom > $OUT/model.bin; echo x > $OUT/small"}},
  "b":{"kind":"command","inputs":{"x":"a"},"params":{"cmd":"sha256sum < $IN_x/model.bin > $OUT/sum"}}}}"#;

#[test]
fn s3_a_missing_bucket_is_an_error_and_big_blobs_go_up_in_parts() {
    let Some(server) = s3_server() else { return };
    let env = s3_env(&server.endpoint);
    // A bucket that does not exist is a configuration error, not "nothing cached".
    let a = Machine::new("s3://no-such-bucket/lab", &env);
    for mode in ["read-write", "read-only"] {
        let o = a.run(&["run", "t.json", "--remote-mode", mode]);
        assert_eq!(o.status.code(), Some(1), "{mode}: {}", stderr(&o));
        assert!(stderr(&o).contains("s3://no-such-bucket/lab") && stderr(&o).contains("the bucket does not exist"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("testing-secret-key"));
    }
    let o = a.run(&["cache", "pull", "--all"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // A 41 MB blob is uploaded in parts (above 16 MiB) and comes back identical.
    let m1 = Machine::new("s3://pipeline-test/big", &env);
    m1.s.write("big.json", BIG);
    let o = m1.ok(&["run", "big.json"]);
    assert!(stdout(&o).contains("uploaded to the remote cache: 2 stages"), "{}{}", stdout(&o), stderr(&o));
    let m2 = Machine::new("s3://pipeline-test/big", &env);
    m2.s.write("big.json", BIG);
    let o = m2.ok(&["run", "big.json"]);
    assert_eq!(statuses(&m2, &o), ["cached", "cached"], "{}", stderr(&o));
    let (x, y) = (m1.exported("a"), m2.exported("a"));
    assert_eq!(x.len(), 2);
    assert!(x == y, "the multipart blob came back different");
    m2.s.verify_clean();
}

#[test]
fn an_unreachable_remote_is_a_warning_for_a_run_and_an_error_for_push() {
    // Nothing listens on port 1; the second endpoint accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    for endpoint in ["http://127.0.0.1:1".to_string(), silent_url] {
        let a = Machine::new("s3://pipeline-test/x", &s3_env(&endpoint));
        let o = a.ok(&["run", "t.json"]);
        assert_eq!(statuses(&a, &o), ["ran", "ran", "ran"]);
        assert!(stderr(&o).contains("is unreachable") && stderr(&o).contains("running without the remote cache"), "{endpoint}: {}", stderr(&o));
        // stderr is a pipe here, as in CI: no colour escapes in the warning.
        assert!(!stderr(&o).contains('\x1b'), "escape sequences in a log: {:?}", stderr(&o));
        let o = a.run(&["cache", "push", "--all"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("is unreachable"), "{}", stderr(&o));
    }
    drop(silent);
}

#[test]
fn plan_does_not_promise_a_remote_hit_whose_blob_is_gone() {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    Machine::new(url, &[]).ok(&["run", "t.json"]);
    let b = Machine::new(url, &[]);
    let o = b.ok(&["plan", "t.json", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["stages"].as_array().unwrap().iter().all(|s| s["status"] == "hit" && s["source"] == "remote"), "{v}");
    std::fs::remove_file(big_blob(r.path())).unwrap();
    let o = b.ok(&["plan", "t.json", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let a = &v["stages"][0];
    assert_eq!(a["status"], "miss", "{v}");
    assert_eq!(a["why"][0]["reason"], "remote-incomplete", "{v}");
    assert!(a["why"][0]["message"].as_str().unwrap().contains("big"), "{v}");
    // and the run then does what plan said, and repairs the remote
    let o = b.ok(&["run", "t.json"]);
    assert_eq!(b.s.status_of(&o, "a"), "ran");
    let c = Machine::new(url, &[]);
    let o = c.ok(&["plan", "t.json", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["stages"].as_array().unwrap().iter().all(|s| s["status"] == "hit"), "{v}");
}

// ---------- hostile remote URLs and layouts ----------

#[test]
fn an_s3_prefix_is_listed_as_it_is_stored_and_dot_segments_are_refused() {
    let Some(server) = s3_server() else { return };
    let env = s3_env(&server.endpoint);
    // object_store stores `café~1` percent-encoded: pull --all and gc must still find it.
    let url = "s3://pipeline-test/café~1/lab";
    Machine::new(url, &env).ok(&["run", "t.json"]);
    let b = Machine::new(url, &env);
    let o = b.ok(&["cache", "pull", "--all"]);
    assert!(stdout(&o).contains("pulled 3 entries"), "{}{}", stdout(&o), stderr(&o));
    b.s.verify_clean();
    // gc under it keeps what its entries need.
    b.ok(&["cache", "gc", "--remote", url, "--grace", "0"]);
    let c = Machine::new(url, &env);
    assert!(stdout(&c.ok(&["cache", "pull", "--all"])).contains("pulled 3 entries"));
    for bad in ["s3://pipeline-test/x/../y", "s3://pipeline-test/a//b", "s3://pipeline-test/./a"] {
        let o = Machine::new(bad, &env).run(&["run", "t.json"]);
        assert_eq!(o.status.code(), Some(1), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains(bad) && stderr(&o).contains("segment"), "{bad}: {}", stderr(&o));
    }
}

#[test]
fn remote_gc_never_deletes_through_a_symlinked_layout_directory() {
    // A remote whose objects/ is a link to a local cache's objects/: every local blob looks
    // like an orphan of the remote.
    let a = Machine::new("", &[]);
    a.s.ok(&["run", "t.json"]);
    let r = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(a.s.cache().join("objects"), r.path().join("objects")).unwrap();
    let n = blobs(&a.s.cache()).len();
    let o = a.s.run(&["cache", "gc", "--remote", r.path().to_str().unwrap(), "--grace", "0"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("objects") && stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(blobs(&a.s.cache()).len(), n, "gc --remote deleted local blobs through a link");
    a.s.verify_clean();
}

#[test]
fn a_relative_file_url_or_a_file_as_the_remote_is_refused() {
    let a = Machine::new("", &[]);
    a.s.write("f", "not a dir");
    for (url, why) in [("file://shared", "absolute path"), ("file://", "absolute path"), ("f", "is not a directory")] {
        let o = a.s.run(&["run", "t.json", "--remote", url]);
        assert_eq!(o.status.code(), Some(1), "{url}: {}", stderr(&o));
        assert!(stderr(&o).contains(why), "{url}: {}", stderr(&o));
    }
    for junk in ["entries", "objects", "manifests", "shared"] {
        assert!(!a.s.path().join(junk).exists(), "{junk} written into the current directory");
    }
    assert_eq!(std::fs::read_to_string(a.s.path().join("f")).unwrap(), "not a dir");
}

#[test]
fn a_remote_blob_of_the_wrong_size_is_not_downloaded() {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    Machine::new(url, &[]).ok(&["run", "t.json"]);
    // 4 MB where the manifest says 200000 bytes.
    std::fs::write(big_blob(r.path()), vec![b'x'; 4_000_000]).unwrap();
    let b = Machine::new(url, &[]);
    let o = b.run(&["cache", "pull", "--all"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("4000000 bytes, expected 200000; not downloaded"), "{}", stderr(&o));
    b.s.verify_clean();
}

#[test]
fn read_only_mode_does_not_create_a_missing_remote_directory() {
    let a = Machine::new("", &[]);
    let missing = a.s.path().join("not-mounted/lab-cache");
    let o = a.s.run(&["run", "t.json", "--remote", missing.to_str().unwrap(), "--remote-mode", "read-only"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no such directory") && stderr(&o).contains("not-mounted/lab-cache"), "{}", stderr(&o));
    assert!(!a.s.path().join("not-mounted").exists(), "read-only mode created the remote directory");
}

#[test]
fn a_huge_remote_entry_is_refused_unread_and_replaced() {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    Machine::new(url, &[]).ok(&["run", "t.json"]);
    for e in std::fs::read_dir(r.path().join("entries")).unwrap().flatten() {
        std::fs::File::create(e.path()).unwrap().set_len(100 << 20).unwrap();
    }
    let b = Machine::new(url, &[]);
    let o = b.ok(&["run", "t.json"]);
    assert_eq!(statuses(&b, &o), ["ran", "ran", "ran"], "{}", stderr(&o));
    assert!(stderr(&o).contains("104857600 bytes, more than such an object can be"), "{}", stderr(&o));
    let c = Machine::new(url, &[]);
    let o = c.ok(&["run", "t.json"]);
    assert_eq!(statuses(&c, &o), ["cached", "cached", "cached"], "not replaced: {}", stderr(&o));
    // a manifest (found by a hostile pass: a sparse 3 GB one was read whole into memory)
    for e in std::fs::read_dir(r.path().join("manifests")).unwrap().flatten() {
        std::fs::File::create(e.path()).unwrap().set_len(300 << 20).unwrap();
    }
    let d = Machine::new(url, &[]);
    let o = d.ok(&["run", "t.json"]);
    assert_eq!(statuses(&d, &o), ["ran", "ran", "ran"], "{}", stderr(&o));
    assert!(stderr(&o).contains("314572800 bytes, more than such an object can be"), "{}", stderr(&o));
}

#[test]
fn remote_gc_that_cannot_read_a_manifest_deletes_nothing() {
    let Some(server) = s3_server() else { return };
    let url = "s3://pipeline-test/gc-read-error";
    Machine::new(url, &s3_env(&server.endpoint)).ok(&["run", "t.json"]);
    // Every manifest read fails (not "missing", not "damaged"): its blobs are not orphans.
    let proxy = fault_proxy(&server.endpoint, |_, head| (head.starts_with("GET ") && head.contains("/manifests/")).then_some("403 Forbidden"));
    let g = Machine::new(url, &s3_env(&proxy));
    let o = g.run(&["cache", "gc", "--remote", url, "--grace", "0"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("manifests/"), "{}", stderr(&o));
    let c = Machine::new(url, &s3_env(&server.endpoint));
    let o = c.ok(&["cache", "pull", "--all"]);
    assert!(stdout(&o).contains("pulled 3 entries"), "gc deleted live objects: {}{}", stdout(&o), stderr(&o));
}

#[test]
fn a_fifo_on_a_directory_remote_is_damaged_not_a_hang() {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    Machine::new(url, &[]).ok(&["run", "t.json"]);
    let entry = std::fs::read_dir(r.path().join("entries")).unwrap().flatten().next().unwrap().path();
    make_fifo(&entry);
    let b = Machine::new(url, &[]);
    let child = b.cmd(&["run", "t.json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let o = finish_within(child, Duration::from_secs(60), "run on a FIFO in the remote");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
}

/// Found by a hostile pass: a pulled entry set its stage's "current output" from the names the
/// remote gave it. A colleague's entry of the same pipeline and stage names replaced the
/// user's own as what `cache export a` gives, and `gc --keep-last` then deleted the user's
/// results; a forged entry named any pipeline's stage.
#[test]
fn a_pulled_entry_never_becomes_another_pipelines_current_output() {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    Machine::new(url, &[]).ok(&["run", "t.json"]);
    // the user's own version of pipeline `t`, never pushed
    let b = Machine::new(url, &[]);
    b.s.write("t2.json", &PIPELINE.replace("echo a$i", "echo B$i"));
    b.ok(&["run", "t2.json", "--remote-mode", "off"]);
    let own = b.exported("a");
    b.ok(&["cache", "pull", "--all"]);
    assert_eq!(b.exported("a"), own, "cache pull changed what `a` is");
    b.ok(&["cache", "gc", "--keep-last", "0"]);
    let o = b.ok(&["run", "t2.json", "--remote-mode", "off"]);
    assert_eq!(statuses(&b, &o), ["cached", "cached", "cached"], "gc deleted the user's results: {}", stdout(&o));
    // a forged entry (names are not part of the key) claims to be pipeline u's stage z
    for e in std::fs::read_dir(r.path().join("entries")).unwrap().flatten() {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        v["stage"] = serde_json::json!("z");
        v["pipeline"] = serde_json::json!("u");
        std::fs::write(e.path(), serde_json::to_vec(&v).unwrap()).unwrap();
    }
    let c = Machine::new(url, &[]);
    c.s.write("u.json", r#"{"name":"u","stages":{"z":{"kind":"command","params":{"cmd":"echo mine > $OUT/z.txt"}}}}"#);
    c.ok(&["run", "u.json", "--remote-mode", "off"]);
    let mine = c.exported("z");
    let o = c.ok(&["run", "t.json", "--remote-mode", "read-only"]);
    assert_eq!(statuses(&c, &o), ["cached", "cached", "cached"], "{}", stderr(&o));
    assert_eq!(c.exported("z"), mine, "a remote entry's names moved u/z");
    c.ok(&["cache", "gc", "--keep-last", "0"]);
    let o = c.ok(&["run", "u.json", "--remote-mode", "off"]);
    assert_eq!(c.s.status_of(&o, "z"), "cached");
}

/// Found by a hostile pass: what a directory remote holds at an object's name. A dangling
/// link was a silent miss that a create-if-absent upload took for the object ("uploaded"),
/// never repaired; a directory was "replaced by the next upload", which then failed every
/// time; a manifest with a 300-byte name, or one blob listed with two sizes, was committed and
/// wedged every later run; killed uploads' partial files were never removed.
#[test]
fn a_directory_remotes_links_directories_bad_manifests_and_partial_uploads() {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    Machine::new(url, &[]).ok(&["run", "t.json"]);
    let entries: Vec<PathBuf> = std::fs::read_dir(r.path().join("entries")).unwrap().flatten().map(|e| e.path()).collect();
    // a dangling link at every entry's name: a warning, a rerun, and the upload replaces it
    for e in &entries {
        std::fs::remove_file(e).unwrap();
        std::os::unix::fs::symlink(r.path().join("nowhere"), e).unwrap();
    }
    let b = Machine::new(url, &[]);
    let o = b.ok(&["run", "t.json"]);
    assert_eq!(statuses(&b, &o), ["ran", "ran", "ran"], "{}", stderr(&o));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert!(entries.iter().all(|e| std::fs::symlink_metadata(e).unwrap().is_file()), "the links were not replaced");
    remote_consistent(r.path());
    // a directory at an entry's name: said, never promised as repaired
    std::fs::remove_file(&entries[0]).unwrap();
    std::fs::create_dir(&entries[0]).unwrap();
    let c = Machine::new(url, &[]);
    let o = c.ok(&["run", "t.json"]);
    assert!(stderr(&o).contains("a directory where an object belongs"), "{}", stderr(&o));
    let o = c.run(&["cache", "push", "--all"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("a directory where an object belongs") && !stderr(&o).contains("replaced by the next upload"), "{}", stderr(&o));
    std::fs::remove_dir(&entries[0]).unwrap();
    c.ok(&["cache", "push", "--all"]);
    remote_consistent(r.path());
    // manifests a file system cannot hold, or with one blob at two sizes: damaged, rerun, and
    // every later run still works
    let forge = |edit: &dyn Fn(&mut serde_json::Value)| forge_manifests(r.path(), edit);
    forge(&|m| {
        let f = m["files"][0].clone();
        let mut long = f.clone();
        long["path"] = serde_json::json!("x".repeat(300));
        m["files"] = serde_json::json!([f, long]);
    });
    let d = Machine::new(url, &[]);
    let o = d.ok(&["run", "t.json"]);
    assert_eq!(statuses(&d, &o), ["ran", "ran", "ran"], "{}", stderr(&o));
    assert!(stderr(&o).contains("longer than a file system holds"), "{}", stderr(&o));
    let o = d.ok(&["run", "t.json", "--remote-mode", "off"]);
    assert_eq!(statuses(&d, &o), ["cached", "cached", "cached"], "{}", stderr(&o));
    d.s.verify_clean();
    let mut keep = Vec::new();
    for e in std::fs::read_dir(r.path().join("entries")).unwrap().flatten() {
        keep.push((e.path(), std::fs::read(e.path()).unwrap()));
    }
    forge(&|m| {
        let f = m["files"][0].clone();
        let mut twin = f.clone();
        twin["path"] = serde_json::json!("zzz-twin");
        twin["size"] = serde_json::json!(f["size"].as_u64().unwrap() + 996);
        m["files"] = serde_json::json!([f, twin]);
    });
    let e = Machine::new(url, &[]);
    let o = e.ok(&["run", "t.json"]);
    assert_eq!(statuses(&e, &o), ["ran", "ran", "ran"], "{}", stderr(&o));
    assert!(stderr(&o).contains("twice with two sizes"), "{}", stderr(&o));
    e.s.verify_clean();
    for (p, b) in keep {
        std::fs::write(p, b).unwrap();
    }
    // partial uploads of killed pushes: removed by gc once older than the grace period
    let part = r.path().join("objects/ab").join(format!("{}#3", "c".repeat(62)));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, vec![7u8; 4096]).unwrap();
    let o = e.s.ok(&["cache", "gc", "--remote", url, "--grace", "3600"]);
    assert!(part.exists(), "a young partial upload (a push in progress) was removed: {}", stdout(&o));
    e.s.ok(&["cache", "gc", "--remote", url, "--grace", "0"]);
    assert!(!part.exists(), "the partial upload is left");
    let f = Machine::new(url, &[]);
    let o = f.ok(&["run", "t.json"]);
    assert_eq!(statuses(&f, &o), ["cached", "cached", "cached"], "gc removed live objects: {}", stderr(&o));
}

/// Rewrite every entry of a directory remote to name a manifest `edit` changed (stored under
/// its own hash, as a hostile writer would).
fn forge_manifests(r: &Path, edit: &dyn Fn(&mut serde_json::Value)) {
    for e in std::fs::read_dir(r.join("entries")).unwrap().flatten() {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        let mpath = r.join("manifests").join(v["output"].as_str().unwrap());
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        edit(&mut m);
        // a manifest's name is the blake3 of its canonical JSON (keys sorted, compact)
        fn sorted(v: &serde_json::Value) -> serde_json::Value {
            match v {
                serde_json::Value::Object(m) => {
                    let b: std::collections::BTreeMap<&String, serde_json::Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                    serde_json::Value::Object(b.into_iter().map(|(k, v)| (k.clone(), v)).collect())
                }
                serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
                o => o.clone(),
            }
        }
        let bytes = serde_json::to_vec(&sorted(&m)).unwrap();
        let d = blake3::hash(&bytes).to_hex().to_string();
        std::fs::write(r.join("manifests").join(&d), &bytes).unwrap();
        v["output"] = serde_json::json!(d);
        std::fs::write(e.path(), serde_json::to_vec(&v).unwrap()).unwrap();
    }
}

/// A pulled path within the manifest's bound (3,000 bytes) but too long under a cache root of
/// 1,200 bytes was committed, and every downstream stage failed on its view: refused at the
/// pull now, and the stage runs here.
#[test]
fn a_pulled_path_too_long_under_this_caches_root_is_refused_and_the_stage_runs() {
    let r = tempfile::tempdir().unwrap();
    let url = r.path().to_str().unwrap();
    Machine::new(url, &[]).ok(&["run", "t.json"]);
    forge_manifests(r.path(), &|m| {
        let f = m["files"][0].clone();
        let mut long = f.clone();
        // 12 parts of 240 bytes: 2,891 bytes, inside the manifest's bound
        long["path"] = serde_json::json!(vec!["y".repeat(240); 12].join("/"));
        m["files"] = serde_json::json!([f, long]);
    });
    let b = Machine::new(url, &[]);
    let mut root = b.s.path().to_path_buf();
    for i in 0..6 {
        root.push(format!("{i}{}", "r".repeat(199)));
    }
    std::fs::create_dir_all(&root).unwrap();
    let cache = root.join("cache");
    let o = b.cmd(&["run", "t.json"]).env("PIPELINE_CACHE", &cache).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(statuses(&b, &o), ["ran", "ran", "ran"], "{}", stderr(&o));
    assert!(stderr(&o).contains("over the system's limit of 4096"), "{}", stderr(&o));
    // and the cache works on: a rerun is all hits
    let o = b.cmd(&["run", "t.json", "--remote-mode", "off"]).env("PIPELINE_CACHE", &cache).output().unwrap();
    assert_eq!(statuses(&b, &o), ["cached", "cached", "cached"], "{}", stderr(&o));
}

/// Found by a hostile pass: `s3:/bucket`, `file:/x` and a quoted `~/cache` made local
/// directories of those names (and the run said it uploaded to the remote cache); `plan`,
/// `cache pull` and `cache gc --remote` created a misspelled directory.
#[test]
fn misspelled_remote_urls_are_refused_and_read_only_commands_create_nothing() {
    let a = Machine::new("", &[]);
    for url in ["s3:/lab-bucket/cache", "file:/tmp/x", "S3:bucket", "~/labcache", "https:/host/x", "s3//b/x", "C:\\x", "C:\\"] {
        for cmd in ["run", "plan"] {
            let o = a.s.run(&[cmd, "t.json", "--remote", url]);
            assert_eq!(o.status.code(), Some(1), "{url}: {}", stderr(&o));
            let e = stderr(&o);
            assert!(e.contains("without `//`") || e.contains("without `:`") || e.contains("`~` is not expanded") || e.contains("a Windows path"), "{cmd} {url}: {e}");
        }
    }
    let names: Vec<_> = std::fs::read_dir(a.s.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    assert!(!names.iter().any(|n| n.starts_with("s3") || n.starts_with("file:") || n == "~" || n.starts_with("S3") || n.starts_with("https") || n.starts_with("C:")), "{names:?}");
    let missing = a.s.path().join("typo/lab-cache");
    let m = missing.to_str().unwrap();
    for args in [&["plan", "t.json", "--remote", m][..], &["cache", "pull", "--all", "--remote", m], &["cache", "gc", "--remote", m]] {
        let o = a.s.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("no such directory"), "{args:?}: {}", stderr(&o));
        assert!(!a.s.path().join("typo").exists(), "{args:?} created the remote directory");
    }
    // a run that uploads creates it, as before
    a.s.ok(&["run", "t.json", "--remote", m]);
    assert!(missing.join("entries").is_dir());
    // the endpoint's password is never shown, however short
    let o = a.s.cmd(&["run", "t.json", "--remote", "s3://b/p"]).env("AWS_ENDPOINT_URL", "http://minio:pw12@127.0.0.1:1").env("AWS_ACCESS_KEY_ID", "testing-key-id").env("AWS_SECRET_ACCESS_KEY", "testing-secret").output().unwrap();
    assert!(!stderr(&o).contains("pw12") && !stdout(&o).contains("pw12"), "{}", stderr(&o));
}

/// Found by a hostile pass: an S3 server that answered the first request (the listing check)
/// and then stalled cost each stage its lookup's and its upload's timeouts (two minutes a
/// stage). Once a request gets no answer, the rest of the run goes on without the remote.
#[test]
fn a_remote_that_stops_answering_is_given_up_once_not_per_request() {
    let Some(server) = s3_server() else { return };
    let proxy = fault_proxy(&server.endpoint, |n, _| (n >= 1).then_some("STALL"));
    let a = Machine::new("s3://pipeline-test/stall", &s3_env(&proxy));
    let t = std::time::Instant::now();
    let o = a.ok(&["run", "t.json"]);
    assert_eq!(statuses(&a, &o), ["ran", "ran", "ran"], "{}", stderr(&o));
    assert!(stderr(&o).contains("not asked again"), "{}", stderr(&o));
    // one request's timeout and retries (about a minute), not six of them
    assert!(t.elapsed() < Duration::from_secs(150), "took {:?}", t.elapsed());
}
