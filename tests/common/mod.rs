//! Helpers shared by the end-to-end tests: a sandbox directory with its own cache, and the
//! `pipeline` binary run inside it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pipeline");

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(self.path()).env("PIPELINE_CACHE", self.cache()).env_remove("PIPELINE_LOG");
        c
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    /// `run`, asserting success.
    pub fn ok(&self, args: &[&str]) -> Output {
        let o = self.run(args);
        assert!(o.status.success(), "{args:?}: {}{}", stdout(&o), stderr(&o));
        o
    }
    /// `plan --json`: (stage, status, reasons) per stage.
    pub fn plan(&self, file: &str, extra: &[&str]) -> Vec<(String, String, Vec<String>)> {
        let mut args = vec!["plan", file, "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                    s["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect(),
                )
            })
            .collect()
    }
    /// Stage name -> status, from a run's summary table.
    pub fn statuses(&self, out: &Output) -> Vec<(String, String)> {
        stdout(out)
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split(['┆', '│']).map(str::trim).filter(|c| !c.is_empty()).collect();
                if cells.len() >= 2 && ["ran", "cached", "failed", "skipped", "not selected"].contains(&cells[1]) {
                    Some((cells[0].to_string(), cells[1].to_string()))
                } else {
                    None
                }
            })
            .collect()
    }
    pub fn status_of(&self, out: &Output, stage: &str) -> String {
        self.statuses(out).into_iter().find(|(n, _)| n == stage).map(|(_, s)| s).unwrap_or_default()
    }
    /// Export a stage's output to a fresh directory and return it.
    pub fn export(&self, what: &str) -> PathBuf {
        let n = std::fs::read_dir(self.path()).unwrap().count();
        let dir = self.path().join(format!("export-{n}"));
        self.ok(&["cache", "export", what, dir.to_str().unwrap()]);
        dir
    }
    /// `cache verify` exits 0.
    pub fn verify_clean(&self) {
        let o = self.run(&["cache", "verify"]);
        assert!(o.status.success(), "cache verify: {}{}", stdout(&o), stderr(&o));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn wait_for_file(p: &Path, timeout: Duration) {
    let t0 = Instant::now();
    while !p.exists() {
        assert!(t0.elapsed() < timeout, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replace the file at `p` with a FIFO (one nobody writes to: opening it blocks).
pub fn make_fifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", p.display());
}

/// Wait for `child`; kill it and fail, naming `what`, if it runs past `limit` (a hang).
pub fn finish_within(mut child: std::process::Child, limit: Duration, what: &str) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Every regular file below `dir` as (relative path, bytes), sorted.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
                out.push((rel, std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// Every blob file of a cache.
pub fn blobs(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(cache.join("objects")).unwrap().flatten() {
        if d.path().is_dir() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                out.push(f.path());
            }
        }
    }
    out
}

/// The blob holding exactly `content`.
pub fn blob_with(cache: &Path, content: &[u8]) -> PathBuf {
    blobs(cache).into_iter().find(|b| std::fs::read(b).map(|c| c == content).unwrap_or(false)).expect("no blob with that content")
}

/// Whether a live (not zombie) process with this pid exists.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s.rfind(')').map(|i| s[i + 1..].split_whitespace().next().unwrap_or("").to_string()).unwrap_or_default();
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

pub fn set_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
}
