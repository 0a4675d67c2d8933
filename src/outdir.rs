//! Writing a command's results into a user's `--out` directory without ever losing or mixing
//! files (used by `pipeline aggregate`).
//!
//! - Results are written into a staging directory first: inside `--out` when it exists (same
//!   file system, even when `--out` is a mount point; files get its group and default ACLs),
//!   else beside it. A failure before the install leaves `--out` as it was.
//! - A new `--out` is the staging directory renamed (`RENAME_NOREPLACE`): all or nothing.
//! - An existing one is written file by file under an exclusive `flock` on it, replacing only
//!   the command's own names ([`Target::own`]) and removing its own old files the new run
//!   does not write; the user's other files are never touched. A journal (`.install`: the
//!   target and the names) is written first, so a run killed in the middle of the moves is
//!   finished by the next run that stages there (roll forward: the new result is complete
//!   before the first move); an error rolls back instead.
//! - A staging directory carries `.owner` (host, PID namespace, PID). Only directories with an
//!   owner file naming this host and namespace and a PID that no longer exists are recovered
//!   or removed: never a user's directory of a similar name, never a live run elsewhere.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

const PREFIX: &str = ".aggregate-";
const OWNER: &str = ".owner";
const JOURNAL: &str = ".install";
const REPLACED: &str = ".replaced";

/// Where the results go and what the command may replace there.
pub struct Target<'a> {
    /// `--out`, trailing `/` and inner `.` removed (`lnk/` is the link `lnk`, not its target).
    pub out: PathBuf,
    /// The input file: `--out` must never hold it.
    pub input: &'a Path,
    /// `--force`: write into a non-empty `--out`.
    pub force: bool,
    /// The names the command writes: the only ones it replaces or removes.
    pub own: fn(&str) -> bool,
}

impl<'a> Target<'a> {
    pub fn new(out: &Path, input: &'a Path, force: bool, own: fn(&str) -> bool) -> Target<'a> {
        let out: PathBuf = if out.as_os_str().is_empty() { PathBuf::new() } else { out.components().collect() };
        Target { out, input, force, own }
    }

    /// Refuse an `--out` that is a link, a file, not writable, holds the input, or (without
    /// `--force`) has files in it; a new one whose path goes `..` out of a directory that does
    /// not exist, or whose nearest existing parent is not writable. Checked before the work
    /// and again at the install.
    pub fn check(&self) -> anyhow::Result<()> {
        let out = &self.out;
        if out.as_os_str().is_empty() {
            bail!("--out is empty: name a directory");
        }
        let meta = match std::fs::symlink_metadata(out) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.check_new(),
            Err(e) => bail!("--out {}: {e}", out.display()),
        };
        if meta.file_type().is_symlink() {
            // not followed: the results would land wherever the link points
            bail!("--out {} is a symbolic link: name the directory itself", out.display());
        }
        if !meta.is_dir() {
            bail!("--out {} exists and is not a directory", out.display());
        }
        if meta.permissions().readonly() || !writable(out) {
            bail!("--out {} is not writable", out.display());
        }
        if let (Ok(o), Ok(i)) = (out.canonicalize(), self.input.canonicalize()) {
            if i.starts_with(&o) {
                bail!("--out {} contains the input file {}: choose another output directory", out.display(), self.input.display());
            }
        }
        // another run's staging inside --out is not the user's: it does not make it non-empty
        let non_empty = std::fs::read_dir(out)
            .with_context(|| format!("--out {}", out.display()))?
            .flatten()
            .any(|e| !e.file_name().to_string_lossy().starts_with(PREFIX));
        if non_empty && !self.force {
            bail!("--out {} is not empty: choose a new directory, or pass --force to replace the files aggregate writes there", out.display());
        }
        Ok(())
    }

    /// A new `--out` is created with its parents (as `mkdir -p`), but not through `..` after a
    /// directory that does not exist (`a/b/c/../../..` names `.` only once `a/b/c` is made),
    /// nor through a dangling link, nor under a parent it cannot write.
    fn check_new(&self) -> anyhow::Result<()> {
        let out = &self.out;
        let mut at = PathBuf::new();
        let mut existing = PathBuf::from(".");
        for c in out.components() {
            if !at.as_os_str().is_empty() {
                match (std::fs::symlink_metadata(&at), std::fs::metadata(&at)) {
                    (Ok(_), Ok(m)) if m.is_dir() => existing = at.clone(),
                    (Ok(l), Err(_)) if l.file_type().is_symlink() => {
                        bail!("--out {}: {} is a symbolic link to nothing (nothing was created)", out.display(), at.display())
                    }
                    (Ok(_), Ok(_)) => bail!("--out {}: {} is not a directory (nothing was created)", out.display(), at.display()),
                    _ if c == std::path::Component::ParentDir => bail!(
                        "--out {}: goes up (`..`) out of {}, which does not exist: name the directory without `..` (nothing was created)",
                        out.display(),
                        at.display()
                    ),
                    _ => {}
                }
            } else if matches!(c, std::path::Component::RootDir) {
                existing = PathBuf::from("/");
            }
            at.push(c);
        }
        if !writable(&existing) {
            bail!("--out {}: cannot create it, {} is not writable", out.display(), existing.display());
        }
        Ok(())
    }

    /// A fresh staging directory for the results: inside `--out` when it exists, else beside
    /// it (its parents created). Leftovers of killed runs there are recovered or removed first.
    pub fn stage(&self) -> anyhow::Result<Staging> {
        let out = &self.out;
        let dir = if std::fs::symlink_metadata(out).is_ok_and(|m| m.is_dir()) {
            recover_in(out, self.own);
            out.clone()
        } else {
            // the parent of the absolute path: `--out x/..` must not stage inside itself
            let parent = crate::cache::store::absolute(out).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
            std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
            recover_in(&parent, self.own);
            parent
        };
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir_in(&dir)
            .with_context(|| format!("creating a staging directory in {}", dir.display()))?;
        std::fs::write(tmp.path().join(OWNER), owner_line()).with_context(|| format!("writing into {}", tmp.path().display()))?;
        Ok(Staging { tmp })
    }

    /// Move the staged results into `--out` (see the module's notes): new `--out`, one rename;
    /// else file by file under the lock, journaled, rolled back on an error.
    pub fn install(&self, staging: Staging) -> anyhow::Result<()> {
        let out = &self.out;
        self.check()?;
        let files = staging.results()?;
        if std::fs::symlink_metadata(out).is_err() {
            std::fs::remove_file(staging.path().join(OWNER)).ok();
            let dir = staging.tmp.keep();
            // tempfile's directories get the umask's mode, as mkdir's; the rename never takes
            // the place of a directory another run made meanwhile
            match rename_noreplace(&dir, out) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && std::fs::symlink_metadata(out).is_ok() => {
                    // made meanwhile: written into like any existing one (with --force), from
                    // inside it, where a journaled staging directory always is
                    let appeared = |e: anyhow::Error| e.context(format!("--out {} appeared while this run worked", out.display()));
                    if let Err(e) = self.check() {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(appeared(e));
                    }
                    let inside = out.join(dir.file_name().unwrap_or_default());
                    if let Err(e) = std::fs::rename(&dir, &inside) {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(appeared(anyhow::Error::from(e).context(format!("moving the results into {}", out.display()))));
                    }
                    std::fs::write(inside.join(OWNER), owner_line()).ok();
                    return self.install_into(&inside, &files).map_err(appeared);
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(anyhow::Error::from(e).context(format!("moving the results into {}", out.display())));
                }
            }
        }
        let dir = staging.tmp.keep();
        self.install_into(&dir, &files)
    }

    /// File by file from `dir` into the existing `--out`, under its lock; `dir` is removed,
    /// unless old files could not be put back after an error (the message says where they are).
    fn install_into(&self, dir: &Path, files: &[String]) -> anyhow::Result<()> {
        let out = &self.out;
        let lock = std::fs::File::open(out).with_context(|| format!("--out {}", out.display()))?;
        lock.lock().with_context(|| format!("locking --out {}", out.display()))?;
        let fail = |e: anyhow::Error| -> anyhow::Error {
            let _ = std::fs::remove_dir_all(dir);
            e
        };
        self.check().map_err(fail)?; // what another run left while we waited
        // Every name is checked before the first is moved: a refusal changes nothing.
        for name in files {
            let dst = out.join(name);
            if std::fs::symlink_metadata(&dst).map(|m| m.is_dir()).unwrap_or(false) {
                return Err(fail(anyhow::anyhow!("--out {}: {} is a directory, not replaced (nothing was written)", out.display(), dst.display())));
            }
        }
        let journal = format!("{}\n{}\n", crate::cache::store::absolute(out).display(), files.join("\n"));
        std::fs::write(dir.join(JOURNAL), journal).with_context(|| format!("writing into {}", dir.display())).map_err(fail)?;
        match move_in(out, dir, files, self.own) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(dir);
                Ok(())
            }
            Err((e, lost)) if lost.is_empty() => {
                let _ = std::fs::remove_dir_all(dir);
                Err(e.context(format!("--out {} is as it was", out.display())))
            }
            Err((e, lost)) => {
                // keep the moved-aside files where the user can find them (no journal: a
                // later run must not roll this one forward over what was put back)
                let _ = std::fs::remove_file(dir.join(JOURNAL));
                let _ = std::fs::remove_file(dir.join(OWNER));
                Err(e.context(format!("--out {}: could not put back {} (kept in {})", out.display(), lost.join(", "), dir.join(REPLACED).display())))
            }
        }
    }
}

/// A staging directory (removed when dropped unless installed).
pub struct Staging {
    tmp: tempfile::TempDir,
}

impl Staging {
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// The result files written into it (its own bookkeeping names left out).
    fn results(&self) -> anyhow::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.path())?.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if ![OWNER, JOURNAL, REPLACED].contains(&n.as_str()) {
                v.push(n);
            }
        }
        v.sort();
        Ok(v)
    }
}

/// Move `files` from `dir` into `out`, the replaced ones and the command's own old files that
/// the new run does not write set aside in `dir/.replaced`. On an error everything moved is
/// put back; the names that could not be are returned with it.
fn move_in(out: &Path, dir: &Path, files: &[String], own: fn(&str) -> bool) -> Result<(), (anyhow::Error, Vec<String>)> {
    let replaced = dir.join(REPLACED);
    if let Err(e) = std::fs::create_dir_all(&replaced) {
        return Err((anyhow::Error::from(e).context(format!("creating {}", replaced.display())), Vec::new()));
    }
    // the old run's own files that the new one does not write (plain files only)
    let stale: Vec<String> = std::fs::read_dir(out)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| own(n) && !files.contains(n))
                .collect()
        })
        .unwrap_or_default();
    let (mut old_moved, mut new_moved): (Vec<&String>, Vec<&String>) = (Vec::new(), Vec::new());
    let moved = (|| -> anyhow::Result<()> {
        for name in &stale {
            let dst = out.join(name);
            std::fs::rename(&dst, replaced.join(name)).with_context(|| format!("moving aside {}", dst.display()))?;
            old_moved.push(name);
        }
        for name in files {
            let src = dir.join(name);
            if std::fs::symlink_metadata(&src).is_err() {
                continue; // moved in by the run this one finishes (recovery)
            }
            let dst = out.join(name);
            if std::fs::symlink_metadata(&dst).is_ok() {
                std::fs::rename(&dst, replaced.join(name)).with_context(|| format!("moving aside {}", dst.display()))?;
                old_moved.push(name);
            }
            std::fs::rename(&src, &dst).with_context(|| format!("writing {}", dst.display()))?;
            new_moved.push(name);
        }
        Ok(())
    })();
    let Err(e) = moved else { return Ok(()) };
    for name in new_moved.iter().rev() {
        let _ = std::fs::rename(out.join(name), dir.join(name));
    }
    let mut lost = Vec::new();
    for name in old_moved.iter().rev() {
        if std::fs::rename(replaced.join(name), out.join(name)).is_err() {
            lost.push(name.to_string());
        }
    }
    Err((e, lost))
}

/// Recover or remove the staging directories in `dir` of runs that no longer exist (see the
/// module's notes). A journaled one was killed during its moves: its install is finished (the
/// result it moves in is complete). Anything else is left alone.
fn recover_in(dir: &Path, own: fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let me = owner_line();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
        let Some(pid) = rest.split_once('-').and_then(|(p, _)| p.parse::<i32>().ok()).filter(|&p| p > 0) else { continue };
        if pid as u32 == std::process::id() || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        // ours only: this host and PID namespace, this PID
        let Ok(owner) = std::fs::read_to_string(path.join(OWNER)) else { continue };
        let (host_ns, recorded) = owner.trim_end().rsplit_once(' ').unwrap_or(("", ""));
        if recorded.parse::<i32>().ok() != Some(pid) || me.trim_end().rsplit_once(' ').map(|(h, _)| h) != Some(host_ns) {
            continue;
        }
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let gone = unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if !gone {
            continue;
        }
        match std::fs::read_to_string(path.join(JOURNAL)) {
            Ok(j) => {
                let mut lines = j.lines();
                let target = PathBuf::from(lines.next().unwrap_or_default());
                let files: Vec<String> = lines.map(str::to_string).collect();
                // A journal is data anyone who can write here could have planted: it may
                // only finish an install into the directory it sits in, of the command's own
                // plain names, never send files elsewhere or replace other names.
                let here = std::fs::canonicalize(dir).ok();
                let plain = |n: &String| !n.is_empty() && !n.contains('/') && n != "." && n != ".." && own(n);
                if here.is_none() || std::fs::canonicalize(&target).ok() != here || !files.iter().all(plain) {
                    tracing::warn!("{}: a journal that does not name this directory and its own files; left alone", path.display());
                    continue;
                }
                if finish(&target, &path, &files, own) {
                    let _ = std::fs::remove_dir_all(&path);
                } else {
                    tracing::warn!("{}: the install of a killed run could not be finished; left as it is", path.display());
                }
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

/// Finish a killed run's install into `target` from `dir`, under the lock: the journaled
/// names still staged are moved in, and its own old files the new result does not have go.
fn finish(target: &Path, dir: &Path, files: &[String], own: fn(&str) -> bool) -> bool {
    let Ok(lock) = std::fs::File::open(target) else { return false };
    if lock.lock().is_err() {
        return false;
    }
    let ok = move_in(target, dir, files, own).is_ok();
    if ok {
        tracing::info!("{}: finished the install of a killed run", target.display());
    }
    ok
}

/// `host pid-namespace pid`: who made a staging directory.
fn owner_line() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: a buffer and its length; the name is NUL-terminated within it on success
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).replace(' ', "_")
    } else {
        "unknown-host".into()
    };
    let ns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_else(|_| "pid:?".into()).replace(' ', "_");
    format!("{host} {ns} {}\n", std::process::id())
}

/// Whether `path` may be written by this process (`access(2)`, so root, ACLs and read-only
/// mounts are judged as the kernel will).
fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: a valid NUL-terminated path
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// `rename`, failing where `to` exists (Linux: `RENAME_NOREPLACE`; elsewhere a check first).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: two valid NUL-terminated paths, relative to the current directory
        let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // file systems without RENAME_NOREPLACE: checked, then renamed
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{} appeared meanwhile", to.display())));
    }
    std::fs::rename(from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(n: &str) -> bool {
        n.ends_with(".csv")
    }

    /// A run killed after moving `a.csv` in (the old one set aside), before `b.csv`: the next
    /// run staging into the same `--out` finishes the install (`b.csv` new, its own stale
    /// `c.csv` gone, the user's file kept) and removes the staging directory.
    #[test]
    fn a_dead_runs_journaled_install_is_finished_before_the_next_run_stages() {
        let d = tempfile::tempdir().unwrap();
        let o = d.path().join("o");
        let st = o.join(format!("{PREFIX}999999999-Kill"));
        std::fs::create_dir_all(st.join(REPLACED)).unwrap();
        for (path, text) in [
            (o.join("a.csv"), "new a"),
            (st.join(REPLACED).join("a.csv"), "old a"),
            (o.join("b.csv"), "old b"),
            (st.join("b.csv"), "new b"),
            (o.join("c.csv"), "old c"),
            (o.join("user.txt"), "mine"),
        ] {
            std::fs::write(path, text).unwrap();
        }
        let line = owner_line();
        let (host_ns, _) = line.trim_end().rsplit_once(' ').unwrap();
        std::fs::write(st.join(OWNER), format!("{host_ns} 999999999\n")).unwrap();
        std::fs::write(st.join(JOURNAL), format!("{}\na.csv\nb.csv\n", o.display())).unwrap();
        // a journal of another host's run is left alone
        let theirs = o.join(format!("{PREFIX}999999998-Theirs"));
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::write(theirs.join(OWNER), "otherhost pid:[1] 999999998\n").unwrap();
        std::fs::write(theirs.join(JOURNAL), format!("{}\nz.csv\n", o.display())).unwrap();
        std::fs::write(theirs.join("z.csv"), "theirs").unwrap();

        let t = Target::new(&o, Path::new("/no/such/input"), true, own);
        let staging = t.stage().unwrap();
        let read = |n: &str| std::fs::read_to_string(o.join(n)).ok();
        assert_eq!((read("a.csv"), read("b.csv"), read("c.csv")), (Some("new a".into()), Some("new b".into()), None));
        assert_eq!(read("user.txt").as_deref(), Some("mine"));
        assert!(!st.exists());
        assert!(theirs.join("z.csv").exists() && read("z.csv").is_none());
        assert!(staging.path().starts_with(&o), "an existing --out stages inside itself");
        drop(staging);
    }

    #[test]
    fn trailing_slash_and_dot_name_the_link_itself() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::os::unix::fs::symlink(d.path().join("real"), d.path().join("lnk")).unwrap();
        for out in ["lnk/", "lnk/.", "lnk//"] {
            let t = Target::new(&d.path().join(out), Path::new("/no/such/input"), true, own);
            let e = t.check().unwrap_err().to_string();
            assert!(e.contains("is a symbolic link"), "{out}: {e}");
        }
        std::os::unix::fs::symlink(d.path().join("nowhere"), d.path().join("dang")).unwrap();
        let t = Target::new(&d.path().join("dang/sub"), Path::new("/no/such/input"), false, own);
        let e = t.check().unwrap_err().to_string();
        assert!(e.contains("symbolic link to nothing"), "{e}");
        assert!(!d.path().join("nowhere").exists());
    }

    /// A journal planted in a shared directory (an owner line is easy to forge) must not move
    /// files into another directory, nor replace names that are not the command's own.
    #[test]
    fn a_planted_journal_cannot_send_files_elsewhere_or_replace_other_names() {
        let d = tempfile::tempdir().unwrap();
        let (o, victim) = (d.path().join("o"), d.path().join("victim"));
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("labels.csv"), "victim's").unwrap();
        let line = owner_line();
        let (host_ns, _) = line.trim_end().rsplit_once(' ').unwrap();
        let plant = |name: &str, target: &Path, files: &[&str]| {
            let st = o.join(format!("{PREFIX}99999999{}-{name}", name.len()));
            std::fs::create_dir_all(&st).unwrap();
            std::fs::write(st.join(OWNER), format!("{host_ns} 99999999{}\n", name.len())).unwrap();
            std::fs::write(st.join(JOURNAL), format!("{}\n{}\n", target.display(), files.join("\n"))).unwrap();
            for f in files {
                if !f.contains('/') {
                    std::fs::write(st.join(f), "planted").unwrap();
                }
            }
            st
        };
        std::fs::create_dir_all(&o).unwrap();
        std::fs::write(o.join("thesis.tex"), "years of work").unwrap();
        let a = plant("a", &victim, &["labels.csv"]);
        let b = plant("bb", &o, &["thesis.tex"]);
        let c = plant("ccc", &o, &["../victim/labels.csv"]);
        let t = Target::new(&o, Path::new("/no/such/input"), true, own);
        drop(t.stage().unwrap());
        assert_eq!(std::fs::read_to_string(victim.join("labels.csv")).unwrap(), "victim's");
        assert_eq!(std::fs::read_to_string(o.join("thesis.tex")).unwrap(), "years of work");
        assert!(a.exists() && b.exists() && c.exists(), "left alone");
    }
}
