//! What the web view reads, and only from files: never the sled database.
//!
//! sled lets one process open `db/`, and the cache's lock goes with it: a view that opened
//! it would make a `pipeline run` started meanwhile fail with "in use by pid", and would
//! wait for every run. The engine writes everything the view needs as files beside the
//! database: `index/<key>.json` (entry + manifest, at each commit), `runs/<id>.json` (each
//! finished run), `objects/` (the blobs, 0444), `LOCK` and `tmp/run<id>-<stage>-...` (who
//! holds the cache, which stages are running). Each request reads them afresh and keeps
//! nothing open. Nothing here writes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cache::{Entry, Manifest};
use crate::engine::RunRecord;

/// Largest run record or index entry read (a record is a few KB).
const RECORD_MAX: u64 = 64 << 20;

pub use crate::regular::read_regular;

/// Whether `LOCK`'s command line is `actual`'s, where `LOCK` may hold `[redacted]` for a
/// secret (found by a hostile pass: a redacted LOCK never matched, so a run whose command
/// line held a secret never showed as in progress).
fn same_command(locked: &str, actual: &str) -> bool {
    const R: &str = "[redacted]";
    if !locked.contains(R) {
        return locked == actual;
    }
    let parts: Vec<&str> = locked.split(R).collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || !actual.ends_with(last) || actual.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &actual[first.len()..actual.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// An `index/<key>.json` record.
#[derive(Debug, Clone, Deserialize)]
pub struct IndexFile {
    pub entry: Entry,
    pub manifest: Manifest,
}

#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
}

/// The process holding the cache, when it is alive.
#[derive(Debug, Clone)]
pub struct Activity {
    pub pid: u32,
    pub command: String,
    /// A `run` or `schedule` (else a short command such as `cache ls`).
    pub is_run: bool,
    /// The run being recorded, when stages are running.
    pub run_id: Option<u64>,
    /// Stages running now (names as in scratch directories: other characters as `_`), with
    /// when they started (unix ms).
    pub running: Vec<(String, u64)>,
    /// Entries committed by the run in progress so far.
    pub committed: Vec<Entry>,
}

pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Files {
    /// `root` must look like a cache (it is never created).
    pub fn open(root: &Path) -> Result<Self, super::UiError> {
        let root = fs::canonicalize(root).map_err(|e| super::UiError::NoCache { path: root.to_path_buf(), why: e.to_string() })?;
        if !root.join("index").is_dir() && !root.join("db").is_dir() {
            return Err(super::UiError::NoCache { path: root, why: "no index/ nor db/ in it".into() });
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every recorded run, newest first.
    pub fn runs(&self) -> Vec<RunRecord> {
        let mut runs: Vec<RunRecord> = fs::read_dir(self.root.join("runs"))
            .inspect_err(crate::regular::note_exhaustion)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|f| f.file_name().to_str().map(|n| n.ends_with(".json")).unwrap_or(false))
            .filter_map(|f| serde_json::from_slice(&read_regular(&f.path(), RECORD_MAX)?).ok())
            .collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.id));
        runs
    }

    pub fn run(&self, id: u64) -> Option<RunRecord> {
        serde_json::from_slice(&read_regular(&self.root.join("runs").join(format!("{id}.json")), RECORD_MAX)?).ok()
    }

    /// The entry of a full key (64 hex digits; anything else is no entry).
    pub fn entry(&self, key: &str) -> Option<IndexFile> {
        if !is_hex(key, 64) {
            return None;
        }
        let r: IndexFile = serde_json::from_slice(&read_regular(&self.root.join("index").join(format!("{key}.json")), RECORD_MAX)?).ok()?;
        // A record under another name, or naming paths outside a view, is not served.
        (r.entry.key.0 == key && r.manifest.check_paths().is_ok()).then_some(r)
    }

    /// Every entry, newest first.
    pub fn entries(&self) -> Vec<IndexFile> {
        let mut out: Vec<IndexFile> = fs::read_dir(self.root.join("index"))
            .inspect_err(crate::regular::note_exhaustion)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| self.entry(f.file_name().to_str()?.strip_suffix(".json")?))
            .collect();
        out.sort_by(|a, b| b.entry.created.cmp(&a.entry.created).then_with(|| a.entry.key.0.cmp(&b.entry.key.0)));
        out
    }

    /// Artifact digest -> manifest, for reading files of outputs named by runs.
    pub fn manifests(&self) -> BTreeMap<String, Manifest> {
        self.entries().into_iter().map(|r| (r.entry.output, r.manifest)).collect()
    }

    /// The blob of a digest: a regular file (not a link) inside `objects/`, of this size.
    pub fn blob(&self, digest: &str, size: u64) -> Option<PathBuf> {
        if !is_hex(digest, 64) {
            return None;
        }
        let p = self.root.join("objects").join(&digest[..2]).join(&digest[2..]);
        let m = fs::symlink_metadata(&p).ok()?;
        if !m.is_file() || m.len() != size {
            return None;
        }
        // `objects/ab` itself could be a link someone made.
        let real = fs::canonicalize(&p).ok()?;
        real.starts_with(self.root.join("objects")).then_some(real)
    }

    /// A file of an artifact (whole, for small files such as labels.csv).
    pub fn read(&self, manifests: &BTreeMap<String, Manifest>, output: &str, path: &str) -> Option<Vec<u8>> {
        let f = manifests.get(output)?.files.iter().find(|f| f.path == path)?;
        if f.size > 256 << 20 {
            return None;
        }
        read_regular(&self.blob(&f.digest, f.size)?, 256 << 20)
    }

    /// Who holds the cache now, if anyone: the pid in `LOCK`, when that process is alive and
    /// is the command `LOCK` names (the file stays after the holder exits).
    pub fn activity(&self, runs: &[RunRecord]) -> Option<Activity> {
        let lock = String::from_utf8(read_regular(&self.root.join("LOCK"), 64 << 10)?).ok()?;
        let mut lines = lock.lines();
        let pid: u32 = lines.next()?.trim().parse().ok()?;
        let command = lines.next().unwrap_or("").to_string();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline: Vec<String> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).to_string()).collect();
        if !same_command(&command, &cmdline.join(" ")) {
            return None;
        }
        // The subcommand is the first argument that names one (`--cache run` is a directory).
        const SUBCOMMANDS: [&str; 14] = ["run", "plan", "dag", "schema", "cache", "runs", "schedule", "aggregate", "predict", "exec-stage", "demo-data", "ui", "completions", "man"];
        let sub = cmdline.iter().skip(1).enumerate().find(|(i, a)| SUBCOMMANDS.contains(&a.as_str()) && (*i == 0 || !["--cache", "--log-format"].contains(&cmdline[*i].as_str())));
        let is_run = matches!(sub.map(|(_, a)| a.as_str()), Some("run" | "schedule"));
        let mut running = Vec::new();
        let mut ids = Vec::new();
        for d in fs::read_dir(self.root.join("tmp")).into_iter().flatten().flatten() {
            // run<id>-<stage>-<pid>-<ms>-<n>
            let name = d.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix("run") else { continue };
            let parts: Vec<&str> = rest.split('-').collect();
            if parts.len() < 5 || parts[parts.len() - 3] != pid.to_string() {
                continue;
            }
            let (Ok(id), Ok(ms)) = (parts[0].parse::<u64>(), parts[parts.len() - 2].parse::<u64>()) else { continue };
            ids.push(id);
            running.push((parts[1..parts.len() - 3].join("-"), ms));
        }
        running.sort();
        let run_id = ids.into_iter().max().or_else(|| is_run.then(|| runs.iter().map(|r| r.id).max().unwrap_or(0) + 1));
        let committed = match run_id {
            Some(id) if is_run => self.entries().into_iter().map(|r| r.entry).filter(|e| e.run_id == id).collect(),
            _ => Vec::new(),
        };
        Some(Activity { pid, command, is_run, run_id, running, committed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_lock_matches_its_command_line() {
        assert!(same_command("pipeline run p.json", "pipeline run p.json"));
        assert!(!same_command("pipeline run p.json", "pipeline run q.json"));
        assert!(same_command("pipeline run p.json --set a.k=[redacted]", "pipeline run p.json --set a.k=SuperSecret123"));
        assert!(same_command("pipeline run [redacted] --set a.k=[redacted]!", "pipeline run Sec1 --set a.k=Sec2!"));
        assert!(!same_command("pipeline run p.json --set a.k=[redacted]", "pipeline plan p.json --set a.k=SuperSecret123"));
        assert!(!same_command("a[redacted]a", "a"));
    }

    #[test]
    fn only_full_lowercase_hex_names_an_entry_or_blob() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("index")).unwrap();
        let f = Files::open(d.path()).unwrap();
        for bad in ["..", "../../etc/passwd", "/etc/passwd", &"A".repeat(64), &format!("{}/", "a".repeat(63)), ""] {
            assert!(f.entry(bad).is_none(), "{bad}");
            assert!(f.blob(bad, 0).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_blob_that_is_a_link_out_of_the_cache_is_not_served() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("index")).unwrap();
        let digest = "ab".repeat(32);
        fs::create_dir_all(d.path().join("objects/ab")).unwrap();
        let secret = d.path().join("secret");
        fs::write(&secret, "x").unwrap();
        std::os::unix::fs::symlink(&secret, d.path().join("objects/ab").join(&digest[2..])).unwrap();
        let f = Files::open(d.path()).unwrap();
        assert!(f.blob(&digest, 1).is_none());
        // The shard directory as a link out of objects/.
        fs::remove_dir_all(d.path().join("objects/ab")).unwrap();
        let outside = d.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join(&digest[2..]), "x").unwrap();
        std::os::unix::fs::symlink(&outside, d.path().join("objects/ab")).unwrap();
        assert!(f.blob(&digest, 1).is_none());
    }

    #[test]
    fn the_lock_holder_counts_only_while_alive_and_as_itself() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("index")).unwrap();
        fs::create_dir_all(d.path().join("tmp/run7-train-x-1-2")).unwrap();
        let f = Files::open(d.path()).unwrap();
        let holder = |args: &[&str]| {
            let c = std::process::Command::new("sh").args(args).spawn().unwrap();
            fs::write(d.path().join("LOCK"), format!("{}\nsh {}\n", c.id(), args.join(" "))).unwrap();
            c
        };
        let mut c = holder(&["-c", "sleep 5", "x", "run", "p.json"]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let a = f.activity(&[]).expect("alive");
        assert!(a.is_run && a.run_id == Some(1), "{a:?}");
        c.kill().unwrap();
        c.wait().unwrap();
        assert!(f.activity(&[]).is_none(), "a dead holder is no holder");
        let mut c = holder(&["-c", "sleep 5", "x", "--cache", "run", "runs"]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!f.activity(&[]).expect("alive").is_run, "`--cache run` is a directory");
        // Another command under that pid (reused) is not the holder.
        fs::write(d.path().join("LOCK"), format!("{}\npipeline run p.json\n", c.id())).unwrap();
        assert!(f.activity(&[]).is_none());
        c.kill().unwrap();
        c.wait().unwrap();
    }

    #[test]
    fn a_directory_that_is_not_a_cache_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(Files::open(d.path()).is_err());
        assert!(Files::open(&d.path().join("missing")).is_err());
    }
}
