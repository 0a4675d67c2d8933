//! Writing a command's results into a user's `--out` directory without ever losing or mixing
//! files (used by `pipeline aggregate --out`, `pipeline cache export` and `pipeline demo-data`).
//!
//! - Results are written into a staging directory first: inside `--out` when it exists (same
//!   file system, even when `--out` is a mount point; files get its group and default ACLs),
//!   else beside it. A failure before the install leaves `--out` as it was.
//! - A new `--out` is the staging directory renamed (`RENAME_NOREPLACE`): all or nothing.
//! - An existing one is written file by file under an exclusive `flock` on it, replacing only
//!   the command's own names ([`Target::own`]) and removing its own old files the new run
//!   does not write; the user's other files are never touched. An error rolls back.
//! - The staging directory is made with `mkdirat` and from then on used only through its
//!   descriptor ([`Staging`]): results are written through `/proc/self/fd/N`, every move is a
//!   `renameat` between descriptors (`--out` opened without following a link), and removal is
//!   `unlinkat`. An `--out` swapped for a link, or a staging directory renamed away and
//!   replaced by one full of links, cannot send the results, or the user's files, anywhere
//!   else, and only the names this run wrote are installed (tests do both).
//! - A staging directory carries `.aggregate-owner` (host, PID namespace, PID). A leftover one is
//!   removed only when it is a real directory owned by this user, its owner file names this
//!   host and namespace and a PID that no longer exists, and it holds no old files set aside
//!   (`.replaced`): a run killed in the middle of its moves leaves `--out` mixed, and its
//!   `.replaced` holds the only copy of the old files, so that one is left and reported until
//!   a `--force` run has made `--out` one complete result. Nothing found there is ever moved into
//!   place: such a directory is data anyone who can write there could have planted (an
//!   earlier design rolled journals forward, and a forged one could replace files anywhere).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The name every staging directory (and its bookkeeping files) starts with.
pub const PREFIX: &str = ".aggregate-";
/// Named with the staging prefix, so a stray one (a kill right after the rename of a new
/// `--out`) does not make `--out` count as non-empty.
const OWNER: &str = ".aggregate-owner";
const REPLACED: &str = ".replaced";
/// The names a run is about to move in, NUL-separated, written just before `.replaced` is
/// made: a later run knows which names a killed one may have left in `--out`.
const NAMES: &str = ".aggregate-names";
/// Made and removed in a staging directory to learn the mode `mkdir` gives there.
const PROBE: &str = ".mode-probe";

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
    /// The command, for messages (`aggregate`, `cache export`, `demo-data`).
    pub cmd: &'static str,
    /// How the user named the directory, for messages: `--out ` (with its space) or empty
    /// (a positional `DIR`).
    pub flag: &'static str,
    /// What `input` is, for messages (`the input file`, `the cache`).
    pub input_is: &'static str,
}

impl<'a> Target<'a> {
    pub fn new(out: &Path, input: &'a Path, force: bool, own: fn(&str) -> bool) -> Target<'a> {
        let out: PathBuf = if out.as_os_str().is_empty() { PathBuf::new() } else { out.components().collect() };
        Target { out, input, force, own, cmd: "aggregate", flag: "--out ", input_is: "the input file" }
    }

    /// The same rules for another command that writes a directory (`cache export`,
    /// `demo-data`): named positionally in messages.
    pub fn for_command(mut self, cmd: &'static str, input_is: &'static str) -> Self {
        self.cmd = cmd;
        self.flag = "";
        self.input_is = input_is;
        self
    }

    /// `--out DIR` or `DIR`, as the user named it.
    fn named(&self) -> String {
        format!("{}{}", self.flag, self.out.display())
    }

    /// Refuse an `--out` that is a link, a file, not writable, holds the input, or (without
    /// `--force`) has files in it; a new one whose path goes `..` out of a directory that does
    /// not exist, or whose nearest existing parent is not writable. Checked before the work
    /// and again at the install.
    pub fn check(&self) -> anyhow::Result<()> {
        let out = &self.out;
        if out.as_os_str().is_empty() {
            bail!("{} is empty: name a directory", if self.flag.is_empty() { "the directory name" } else { self.flag.trim_end() });
        }
        let meta = match std::fs::symlink_metadata(out) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.check_new(),
            Err(e) => bail!("{}: {e}", self.named()),
        };
        if meta.file_type().is_symlink() {
            // not followed: the results would land wherever the link points
            bail!("{} is a symbolic link: name the directory itself", self.named());
        }
        if !meta.is_dir() {
            bail!("{} exists and is not a directory: name a directory (new, or empty)", self.named());
        }
        if meta.permissions().readonly() || !writable(out) {
            bail!("{} is not writable: choose a directory this user can write", self.named());
        }
        if let (Ok(o), Ok(i)) = (out.canonicalize(), self.input.canonicalize()) {
            if i.starts_with(&o) {
                bail!("{} contains {} {}: choose another output directory", self.named(), self.input_is, self.input.display());
            }
        }
        // Another run's staging inside --out is not the user's: it does not make it non-empty,
        // unless it holds old files a killed run set aside (the only copy of the user's
        // earlier results, removed once a --force run has made --out complete).
        let mut non_empty = false;
        let mut killed = None;
        for e in std::fs::read_dir(out).with_context(|| format!("{}", self.named()))?.flatten() {
            if !e.file_name().to_string_lossy().starts_with(PREFIX) {
                non_empty = true;
            } else if moving_in(&e) {
                killed = Some(e);
            }
        }
        if (non_empty || killed.is_some()) && !self.force {
            let hint = match killed {
                Some(e) => format!(
                    " (a run killed while moving its files in, or one still moving them, may have left it mixing two runs' files, or holding part of one; any old ones are in {}: --force with the same input makes it one complete result, once any directory it moved in is removed: --force never replaces one)",
                    e.path().join(REPLACED).display()
                ),
                None => String::new(),
            };
            bail!("{} is not empty: choose a new directory, or pass --force to replace the files {} writes there{hint}", self.named(), self.cmd);
        }
        Ok(())
    }

    /// Refuse, before any work, an existing `--out` that has a directory at one of `names`
    /// (the directories the command will write: `--force` never replaces one). The same
    /// check is made again at the install; this one saves the work.
    pub fn refuse_dirs<S: AsRef<str>>(&self, names: &[S]) -> anyhow::Result<()> {
        for n in names {
            let p = self.out.join(n.as_ref());
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => return Err(self.dir_in_common(&p)),
                // a link is replaced as an entry (its target untouched): only the link is lost
                Ok(m) if m.file_type().is_symlink() => {}
                // a file where the command writes a directory: --force replaced it with the
                // directory, silently, its content gone (found by a hostile pass)
                Ok(_) => bail!(
                    "{}: {} is a file where {} writes a directory: not replaced (nothing was written; --force replaces files with files, never a file with a directory (a link there is replaced, its target untouched): remove it or choose a new directory)",
                    self.named(),
                    p.display(),
                    self.cmd
                ),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// The refusal of a directory at one of the command's names (`--force` never replaces
    /// one); when a killed run's leftover is there, the directory may be that run's: said.
    fn dir_in_common(&self, p: &Path) -> anyhow::Error {
        let hint = match std::fs::read_dir(&self.out).into_iter().flatten().flatten().find(moving_in) {
            Some(e) => format!(
                "; a run killed while moving its files into {} left it mixed or partial, so this directory may be that run's; any old files it set aside are in {}",
                self.out.display(),
                e.path().join(REPLACED).display()
            ),
            None => String::new(),
        };
        anyhow::anyhow!(
            "{}: {} is a directory, not replaced (nothing was written; --force replaces files, never a directory: remove it or choose a new directory{hint})",
            self.named(),
            p.display()
        )
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
                        bail!("{}: {} is a symbolic link to nothing (nothing was created)", self.named(), at.display())
                    }
                    (Ok(_), Ok(_)) => bail!("{}: {} is not a directory (nothing was created)", self.named(), at.display()),
                    _ if c == std::path::Component::ParentDir => bail!(
                        "{}: goes up (`..`) out of {}, which does not exist: name the directory without `..` (nothing was created)",
                        self.named(),
                        at.display()
                    ),
                    _ => {}
                }
            } else if matches!(c, std::path::Component::RootDir) {
                existing = PathBuf::from("/");
            }
            at.push(c);
        }
        // a directory without write bits is refused as an existing --out is, root or not
        // (root may write there, but the mode says nobody should)
        if std::fs::metadata(&existing).is_ok_and(|m| m.permissions().readonly()) || !writable(&existing) {
            bail!("{}: cannot create it, {} is not writable", self.named(), existing.display());
        }
        Ok(())
    }

    /// A fresh staging directory for the results: inside `--out` when it exists, else beside
    /// it (its parents created). Leftovers of killed runs there are removed first (see `sweep`).
    /// It is made and then only used through descriptors (see [`Staging`]).
    pub fn stage(&self) -> anyhow::Result<Staging> {
        let out = &self.out;
        let (dir, inside) = if std::fs::symlink_metadata(out).is_ok_and(|m| m.is_dir()) {
            (out.clone(), true)
        } else {
            // the parent of the absolute path: `--out x/..` must not stage inside itself
            let parent = crate::cache::store::absolute(out).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
            std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
            (parent, false)
        };
        let opened = if inside { OutDir::open(&dir) } else { OutDir::open_following(&dir) };
        let parent = opened.with_context(|| format!("creating a staging directory in {}", dir.display()))?;
        sweep(&parent, None, self.force);
        let staging = Staging::make(parent, inside).with_context(|| format!("creating a staging directory in {}", dir.display()))?;
        std::fs::write(staging.path().join(OWNER), owner_line()).with_context(|| format!("writing into {}", staging.shown().display()))?;
        Ok(staging)
    }

    /// Move the staged results into `--out` (see the module's notes): new `--out`, one rename;
    /// else file by file under the lock, rolled back on an error.
    pub fn install(&self, mut staging: Staging) -> anyhow::Result<()> {
        let out = &self.out;
        self.check().map_err(|e| {
            // staged beside: --out did not exist when this run began
            if !staging.inside && std::fs::symlink_metadata(out).is_ok() {
                e.context(format!("{} appeared while this run worked (another run?)", self.named()))
            } else {
                e
            }
        })?;
        let files = staging.results()?;
        if !staging.inside {
            // staged at 0700 (see `Staging::make`); a new --out gets the mode mkdir gives there
            // (umask, setgid, default ACL), read off a probe directory made inside the staging
            // one, which inherited the parent's setgid bit and default ACL
            let mode = staging.dir.mkdir_mode().with_context(|| format!("reading the mode of a new directory in {}", staging.shown().display()))?;
            staging.dir.chmod(mode).with_context(|| format!("setting the mode of {}", staging.shown().display()))?;
            // the kernel drops a setgid bit on chmod by someone outside the directory's group
            // (mkdir keeps it): say so rather than leave a shared directory half set up
            let got = std::os::unix::fs::MetadataExt::mode(&staging.dir.fd.metadata()?) & 0o7777;
            if mode & 0o2000 != 0 && got & 0o2000 == 0 {
                eprintln!(
                    "warning: {} is made without the setgid bit that mkdir would give it under {}: this user is not in that directory's group, and the kernel drops the bit when such a user sets a mode",
                    self.named(),
                    staging.parent.path.display()
                );
            }
            // the rename never takes the place of a directory another run made meanwhile
            match staging.rename_to(out) {
                Ok(()) => {
                    staging.installed = true;
                    // in --out it is not a result (a kill before this leaves it, to be swept)
                    let _ = staging.dir.unlink(OWNER);
                    // by name in the parent: someone who can write the parent could have put
                    // another directory at the staging name just before, or swapped the
                    // parent for a link (the rename went to the directory it was opened as)
                    if !staging.dir.is_at(out) {
                        let base = crate::cache::store::absolute(out).file_name().map(|n| n.to_os_string()).unwrap_or_default();
                        let ours_there = staging.parent.open_child(&base).is_ok_and(|d| d.same_dir(&staging.dir));
                        if ours_there {
                            bail!(
                                "{}: the results were renamed to {:?} in the directory this run opened as {}, but that path now leads elsewhere (its parent replaced by a link?): look there",
                                self.named(),
                                base,
                                staging.parent.path.display()
                            );
                        }
                        bail!("{}: the directory renamed into place is not this run's (someone else writing into {}?): its results were not installed", self.named(), staging.parent.path.display());
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && std::fs::symlink_metadata(out).is_ok() => {
                    // Made meanwhile: written into like any existing one (with --force). The
                    // staging directory moves inside it first, private again: old files set
                    // aside by a run killed in the moves must lie in the --out they belong to
                    // (beside it, a later run into the parent took them for its own).
                    let moved_in = (|| -> anyhow::Result<()> {
                        staging.dir.chmod(0o700)?;
                        self.check()?;
                        let od = OutDir::open(out)?;
                        staging.parent.move_to(&staging.name, &od)?;
                        staging.parent = od;
                        staging.inside = true;
                        Ok(())
                    })();
                    return moved_in
                        .and_then(|()| self.install_into(staging, &files))
                        .map_err(|e| e.context(format!("{} appeared while this run worked", self.named())));
                }
                Err(e) => return Err(anyhow::Error::from(e).context(format!("moving the results into {}", out.display()))),
            }
        }
        self.install_into(staging, &files)
    }

    /// File by file from the staging directory into the existing `--out`, under its lock; the
    /// staging directory is removed, unless old files could not be put back after an error
    /// (the message says where they are).
    fn install_into(&self, mut staging: Staging, files: &[String]) -> anyhow::Result<()> {
        let out = &self.out;
        let od = OutDir::open(out).with_context(|| format!("{} (a directory, not a link)", self.named()))?;
        if od.fd.try_lock().is_err() {
            eprintln!("waiting for another run to finish writing into {}", out.display());
            od.fd.lock().with_context(|| format!("locking {}", self.named()))?;
        }
        self.check()?; // what another run left while we waited
        // Staged inside: --out must still be the directory it was staged in (not another one
        // put at its path meanwhile).
        if staging.inside && !staging.parent.same_dir(&od) {
            bail!("{} was replaced by another directory while this run worked (nothing was written)", self.named());
        }
        // Every name is checked before the first is moved: a refusal changes nothing.
        for name in files {
            if od.kind(name) == Some(true) {
                return Err(self.dir_in_common(&od.shown(name)));
            }
        }
        #[cfg(test)]
        tests::before_moves();
        match move_in(&od, &staging.dir, files, self.own) {
            Ok(()) => {
                drop(staging);
                // a killed run's set-aside files here are now of no use where this run has
                // rewritten every name they were set aside from: one complete result
                let covered = |n: &str| files.iter().any(|f| f == n) || (self.own)(n);
                sweep(&od, Some(&covered), self.force);
                Ok(())
            }
            Err((e, lost)) if lost.is_empty() => Err(e.context(format!("{} is as it was", self.named()))),
            Err((e, lost)) => {
                // keep the moved-aside files where the user can find them (a sweep leaves a
                // directory with old files set aside alone)
                staging.installed = true;
                Err(e.context(format!("{}: could not put back {} (kept in {})", self.named(), lost.join(", "), staging.shown().join(REPLACED).display())))
            }
        }
    }
}

/// Whether `e` (an entry of `--out`) is this user's staging directory of a run that began
/// moving its files in: `.replaced` is made as the moves begin, so a dead run that has one was
/// killed in them (even with nothing set aside yet, into an empty `--out`: half the results
/// are there). Another user's directory is not ours to count (nor to sweep).
fn moving_in(e: &std::fs::DirEntry) -> bool {
    e.file_name().to_string_lossy().starts_with(PREFIX)
        && std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir() && std::os::unix::fs::MetadataExt::uid(&m) == euid())
        && std::fs::symlink_metadata(e.path().join(REPLACED)).is_ok_and(|m| m.is_dir())
}

/// Whether `name` is one a staging directory uses for itself (`.aggregate-*`, `.replaced`,
/// `.mode-probe`): a result of that name would be taken for bookkeeping (left out of the
/// install, or used as the set-aside directory), so a command must refuse it up front.
pub fn reserved(name: &str) -> bool {
    name.starts_with(PREFIX) || name == REPLACED || name == PROBE
}

/// Refuse a directory `out` that is `root` or lies inside it (`root` a directory the command
/// must not write into: the cache). `absolute` resolves `..` in a part that does not exist
/// as the kernel will once it is made, so `ghost/../cache` is refused here too.
pub fn refuse_inside(out: &Path, root: &Path, what: &str) -> anyhow::Result<()> {
    let root = root.canonicalize().unwrap_or_else(|_| crate::cache::store::absolute(root));
    let abs = crate::cache::store::absolute(out);
    if abs.starts_with(&root) {
        bail!("refusing to write into {}: it is inside {what} {}; choose a directory outside it", out.display(), root.display());
    }
    Ok(())
}

/// A staging directory, made with `mkdirat` relative to the directory it is in and used only
/// through its descriptor from then on: results are written through `/proc/self/fd/N` (the
/// kernel resolves that to the directory itself, whatever has been renamed or swapped for a
/// link on the path since), moves are `renameat`s between descriptors, and it is removed
/// (when dropped, unless installed or kept) by `unlinkat` relative to them. A path through
/// `--out` would follow a link put there by anyone who can write its parent.
pub struct Staging {
    dir: OutDir,
    /// the directory it was made in (`--out`, or `--out`'s parent)
    parent: OutDir,
    name: String,
    /// made inside `--out` (it existed)
    inside: bool,
    /// moved into place, or left on purpose: not removed when dropped
    installed: bool,
}

impl Staging {
    fn make(parent: OutDir, inside: bool) -> std::io::Result<Staging> {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        loop {
            let tag: String = (0..8).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)])).collect();
            let name = format!("{PREFIX}{}-{tag}", std::process::id());
            // 0700: nobody else may put anything into it, whatever the umask (a new --out gets
            // mkdir's mode just before it is renamed into place)
            match parent.make_child(&name, 0o700, false) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            #[cfg(test)]
            tests::after_mkdir(&parent.path.join(&name));
            let dir = parent.open_child(name.as_ref())?;
            // Between mkdirat and openat someone who can write the parent could have put
            // another directory (of links) at that name: ours is this user's, 0700 and empty.
            let ours = {
                use std::os::unix::fs::MetadataExt;
                dir.fd.metadata().is_ok_and(|m| m.uid() == euid() && m.mode() & 0o077 == 0)
            };
            let entries = dir.entries().map_err(|e| {
                std::io::Error::new(e.kind(), format!("reading /proc/self/fd (writing into a directory safely needs /proc): {e}"))
            })?;
            if !ours || !entries.is_empty() {
                // not ours: never made a `Staging`, so nothing in it is touched
                return Err(std::io::Error::other(format!(
                    "{} was replaced while it was being made (someone else writing into {}?); nothing was written",
                    dir.path.display(),
                    parent.path.display()
                )));
            }
            return Ok(Staging { dir, parent, name, inside, installed: false });
        }
    }

    /// Where the results are written: the directory itself, through its descriptor.
    pub fn path(&self) -> PathBuf {
        self.dir.proc_path()
    }

    /// Its path, for messages.
    pub fn shown(&self) -> PathBuf {
        self.parent.path.join(&self.name)
    }

    /// The result files written into it (its own bookkeeping names left out).
    fn results(&self) -> anyhow::Result<Vec<String>> {
        let mut v: Vec<String> = self.dir.entries().with_context(|| format!("reading {}", self.shown().display()))?;
        v.retain(|n| ![OWNER, REPLACED, NAMES].contains(&n.as_str()));
        v.sort();
        Ok(v)
    }

    /// Rename it to the new `--out` (`RENAME_NOREPLACE`).
    fn rename_to(&self, out: &Path) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // its base name in the directory it was staged in (the parent, by descriptor: a
        // parent swapped for a link meanwhile cannot move it elsewhere)
        let abs = crate::cache::store::absolute(out);
        let (to_fd, to) = match abs.file_name() {
            Some(base) => (self.parent.fd.as_raw_fd(), base.to_os_string()),
            None => (libc::AT_FDCWD, out.as_os_str().to_os_string()),
        };
        let (f, t) = (cstr(self.name.as_ref())?, cstr(&to)?);
        // SAFETY: valid descriptors (or AT_FDCWD) and NUL-terminated names
        let r = unsafe { libc::renameat2(self.parent.fd.as_raw_fd(), f.as_ptr(), to_fd, t.as_ptr(), libc::RENAME_NOREPLACE) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // file systems without RENAME_NOREPLACE: checked, then renamed
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        if std::fs::symlink_metadata(out).is_ok() {
            return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{} appeared meanwhile", out.display())));
        }
        OutDir::rename(self.parent.fd.as_raw_fd(), self.name.as_ref(), to_fd, &to)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.installed {
            // its files and `.replaced`, then itself, all relative to descriptors
            if let Ok(rep) = self.dir.open_child(REPLACED.as_ref()) {
                for n in rep.entries().unwrap_or_default() {
                    let _ = rep.unlink(&n);
                }
                let _ = self.dir.remove_child(REPLACED);
            }
            let _ = self.dir.remove_child(PROBE);
            // The owner file last, and only once the rest is gone: a kill before the final
            // rmdir, or an entry that would not go, leaves a directory that still names its
            // dead owner, which the next run's sweep removes. A subdirectory (an exported
            // tree) goes with std's remove_dir_all, which never follows a link.
            let mut left = false;
            for n in self.dir.entries().unwrap_or_default() {
                if n == OWNER {
                    continue;
                }
                let gone = match self.dir.kind(&n) {
                    Some(true) => std::fs::remove_dir_all(self.dir.proc_path().join(&n)).is_ok(),
                    _ => self.dir.unlink(&n).is_ok(),
                };
                left |= !gone;
            }
            if !left {
                let _ = self.dir.unlink(OWNER);
                let _ = self.parent.remove_child(&self.name);
            }
        }
    }
}

/// `--out`, opened as a directory without following a link: every move in or out of it is
/// made relative to this descriptor, so a directory swapped for a link after the checks (by
/// someone who can write to its parent) cannot send the files elsewhere.
struct OutDir {
    fd: std::fs::File,
    /// for messages only
    path: PathBuf,
}

impl OutDir {
    fn open(path: &Path) -> std::io::Result<OutDir> {
        use std::os::unix::fs::OpenOptionsExt;
        let fd = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(path)?;
        Ok(OutDir { fd, path: path.to_path_buf() })
    }
    /// Its subdirectory `name`, opened relative to its descriptor (a link is not followed).
    fn open_child(&self, name: &std::ffi::OsStr) -> std::io::Result<OutDir> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let n = cstr(name)?;
        // SAFETY: a valid descriptor and NUL-terminated name; the new descriptor is owned once
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), n.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else
        Ok(OutDir { fd: unsafe { std::fs::File::from_raw_fd(fd) }, path: self.path.join(name) })
    }
    /// A directory by path, following links (the parent of a new `--out`, which may be
    /// reached through a user's link).
    fn open_following(path: &Path) -> std::io::Result<OutDir> {
        use std::os::unix::fs::OpenOptionsExt;
        let fd = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(path)?;
        Ok(OutDir { fd, path: path.to_path_buf() })
    }
    /// Make the subdirectory `name` (`mode` less the umask); an existing one is an error
    /// unless `exist_ok`.
    fn make_child(&self, name: &str, mode: libc::mode_t, exist_ok: bool) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let n = cstr(name.as_ref())?;
        // SAFETY: a valid descriptor and NUL-terminated name
        if unsafe { libc::mkdirat(self.fd.as_raw_fd(), n.as_ptr(), mode) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if exist_ok && e.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) }
    }
    /// `fchmod`.
    fn chmod(&self, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.fd.set_permissions(std::fs::Permissions::from_mode(mode))
    }
    /// Its path through the descriptor: the directory itself, whatever was renamed or
    /// swapped for a link on the path it was opened by.
    fn proc_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
    /// Whether `path` (its last component not followed) is this directory.
    fn is_at(&self, path: &Path) -> bool {
        same_inode(self.fd.metadata(), std::fs::symlink_metadata(path))
    }
    /// The mode `mkdir` gives a directory made in it: a probe made and removed.
    fn mkdir_mode(&self) -> std::io::Result<u32> {
        use std::os::unix::fs::MetadataExt;
        let _ = self.remove_child(PROBE);
        self.make_child(PROBE, 0o777, false)?;
        let probe = self.open_child(PROBE.as_ref());
        let mode = probe.and_then(|p| p.fd.metadata()).map(|m| m.mode() & 0o7777);
        let _ = self.remove_child(PROBE);
        mode
    }
    /// Whether both descriptors are the same directory.
    fn same_dir(&self, other: &OutDir) -> bool {
        same_inode(self.fd.metadata(), other.fd.metadata())
    }
    /// Every name in it, read through the descriptor.
    fn entries(&self) -> std::io::Result<Vec<String>> {
        Ok(std::fs::read_dir(self.proc_path())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect())
    }
    /// `unlinkat` of the file `name` in it.
    fn unlink(&self, name: &str) -> std::io::Result<()> {
        self.unlinkat(name, 0)
    }
    /// `unlinkat` of the empty directory `name` in it.
    fn remove_child(&self, name: &str) -> std::io::Result<()> {
        self.unlinkat(name, libc::AT_REMOVEDIR)
    }
    fn unlinkat(&self, name: &str, flags: libc::c_int) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let n = cstr(name.as_ref())?;
        // SAFETY: a valid descriptor and NUL-terminated name
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), n.as_ptr(), flags) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    fn shown(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
    /// `Some(is_dir)` when `name` exists in it (a link is not followed).
    fn kind(&self, name: &str) -> Option<bool> {
        use std::os::fd::AsRawFd;
        let n = cstr(name.as_ref()).ok()?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and NUL-terminated name; `st` is written by the call
        let r = unsafe { libc::fstatat(self.fd.as_raw_fd(), n.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        (r == 0).then_some(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }
    /// The names in it that are not directories: plain files, links, FIFOs, sockets, device
    /// nodes (read through the descriptor). Renaming or unlinking any of them touches the
    /// entry only, never what a link points to.
    fn files(&self) -> Vec<String> {
        std::fs::read_dir(self.proc_path())
            .or_else(|_| std::fs::read_dir(&self.path))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
    fn rename(from_fd: i32, from: &std::ffi::OsStr, to_fd: i32, to: &std::ffi::OsStr) -> std::io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: valid descriptors (or AT_FDCWD) and NUL-terminated names
        if unsafe { libc::renameat(from_fd, f.as_ptr(), to_fd, t.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    /// `name` in it -> `name` in `to`.
    fn move_to(&self, name: &str, to: &OutDir) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        Self::rename(self.fd.as_raw_fd(), name.as_ref(), to.fd.as_raw_fd(), name.as_ref())
    }
}

/// Move `files` from `dir` into `out`, the replaced ones and the command's own old files that
/// the new run does not write set aside in `dir/.replaced`. On an error everything moved is
/// put back; the names that could not be are returned with it.
fn move_in(out: &OutDir, stage: &OutDir, files: &[String], own: fn(&str) -> bool) -> Result<(), (anyhow::Error, Vec<String>)> {
    if let Err(e) = std::fs::write(stage.proc_path().join(NAMES), files.join("\0")) {
        return Err((anyhow::Error::from(e).context(format!("writing {}", stage.path.join(NAMES).display())), Vec::new()));
    }
    let replaced = match stage.make_child(REPLACED, 0o700, true).and_then(|()| stage.open_child(REPLACED.as_ref())) {
        Ok(r) => r,
        Err(e) => return Err((anyhow::Error::from(e).context(format!("creating {}", stage.path.join(REPLACED).display())), Vec::new())),
    };
    // the old run's own files that the new one does not write: any entry but a directory (a
    // link or FIFO named `worker_8.png` left beside new results would pass for one of them)
    let stale: Vec<String> = out.files().into_iter().filter(|n| own(n) && !files.contains(n)).collect();
    let (mut old_moved, mut new_moved): (Vec<&String>, Vec<&String>) = (Vec::new(), Vec::new());
    let moved = (|| -> anyhow::Result<()> {
        for name in &stale {
            out.move_to(name, &replaced).with_context(|| format!("moving aside {}", out.shown(name).display()))?;
            old_moved.push(name);
        }
        for name in files {
            if out.kind(name).is_some() {
                out.move_to(name, &replaced).with_context(|| format!("moving aside {}", out.shown(name).display()))?;
                old_moved.push(name);
            }
            stage.move_to(name, out).with_context(|| format!("writing {}", out.shown(name).display()))?;
            new_moved.push(name);
        }
        Ok(())
    })();
    let Err(e) = moved else { return Ok(()) };
    for name in new_moved.iter().rev() {
        let _ = out.move_to(name, stage);
    }
    let mut lost = Vec::new();
    for name in old_moved.iter().rev() {
        if replaced.move_to(name, out).is_err() {
            lost.push(name.to_string());
        }
    }
    Err((e, lost))
}

/// Remove the staging directories in `dir` of runs that no longer exist (see the module's
/// notes); one killed while moving its files in (it has `.replaced`) is left and reported,
/// unless `complete` (this run has just installed its results) says this run rewrote every
/// name set aside there: those old files are then of no use any more. Anything else is left
/// alone.
fn sweep(od: &OutDir, complete: Option<&dyn Fn(&str) -> bool>, force: bool) {
    use std::os::unix::fs::MetadataExt;
    // every path below runs through the descriptor (/proc/self/fd/N): the directory it was
    // opened as, even if its path now leads elsewhere; messages show the path
    let (at, dir) = (od.proc_path(), &od.path);
    let Ok(entries) = std::fs::read_dir(&at) else { return };
    let my_host_ns = host_ns();
    let uid = euid();
    let dead = |owner: &str, pid: Option<i32>| -> bool {
        let (theirs, recorded) = owner.trim_end().rsplit_once(' ').unwrap_or(("", ""));
        let Some(p) = recorded.parse::<i32>().ok().filter(|&p| p > 0 && pid.is_none_or(|q| q == p)) else { return false };
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        theirs == my_host_ns && p as u32 != std::process::id() && unsafe { libc::kill(p, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    };
    for e in entries.flatten() {
        let name = e.file_name();
        // an owner file left in a new --out by a kill between its rename and the file's removal
        if name == OWNER {
            let p = at.join(OWNER);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.uid() == uid && m.len() < 4096)
                && dead(&std::fs::read_to_string(&p).unwrap_or_default(), None)
            {
                let _ = std::fs::remove_file(&p);
            }
            continue;
        }
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
        let Some(pid) = rest.split_once('-').and_then(|(p, _)| p.parse::<i32>().ok()).filter(|&p| p > 0) else { continue };
        let path = at.join(&name);
        let shown = dir.join(&name);
        // a real directory (not a link to one), this user's
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if pid as u32 == std::process::id() || !meta.is_dir() || meta.uid() != uid {
            continue;
        }
        let owner = match std::fs::symlink_metadata(path.join(OWNER)) {
            Ok(m) if m.is_file() => std::fs::read_to_string(path.join(OWNER)).unwrap_or_default(),
            _ => continue,
        };
        if !dead(&owner, Some(pid)) {
            continue;
        }
        // made as its moves began: killed while moving its files in (see `check`)
        let set_aside = std::fs::symlink_metadata(path.join(REPLACED)).is_ok_and(|m| m.is_dir());
        // done with only when this run rewrote every name set aside there (an export of
        // another entry leaves the killed run's names, and their old files are the only copy)
        // (and every name it was moving in: with nothing set aside yet, those are what it may
        // have left in `dir`, half a result)
        let done = complete.is_some_and(|covered| {
            // absent: killed before it was written (or left by an older build); unreadable
            // (not a file, too big): not done
            let names = match std::fs::symlink_metadata(path.join(NAMES)) {
                Ok(m) if m.is_file() && m.len() < (16 << 20) => std::fs::read(path.join(NAMES)).ok(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Vec::new()),
                _ => None,
            };
            names.is_some_and(|names| names.split(|&b| b == 0).filter(|n| !n.is_empty()).all(|n| covered(&String::from_utf8_lossy(n))))
                && std::fs::read_dir(path.join(REPLACED)).is_ok_and(|d| d.flatten().all(|e| covered(&e.file_name().to_string_lossy())))
        });
        if set_aside && !done {
            if complete.is_none() && force {
                // said once, after this run's install, by the sweep that decides (two
                // warnings that contradicted each other were printed)
                continue;
            }
            let then = if complete.is_some() {
                "this run did not rewrite every one of those names, so they are kept: rerun with --force and the input that wrote them"
            } else {
                "rerun with --force and the same input for one complete result"
            };
            eprintln!(
                "warning: {} was left by a run killed while moving its files into {}: that directory may mix two runs' files, or hold part of one; any old ones are in {} ({then})",
                shown.display(),
                dir.display(),
                shown.join(REPLACED).display()
            );
            continue;
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}

/// Whether two files are one (device and inode).
fn same_inode(a: std::io::Result<std::fs::Metadata>, b: std::io::Result<std::fs::Metadata>) -> bool {
    use std::os::unix::fs::MetadataExt;
    matches!((a, b), (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino())
}

/// This process's effective user: the owner of what it makes, and of what it may sweep.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions
    unsafe { libc::geteuid() }
}

/// `host pid-namespace pid`: who made a staging directory.
fn owner_line() -> String {
    format!("{} {}\n", host_ns(), std::process::id())
}

/// `host pid-namespace`: where a PID means this process table (no spaces inside either).
fn host_ns() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: a buffer and its length; the name is NUL-terminated within it on success
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).replace(' ', "_")
    } else {
        "unknown-host".into()
    };
    let ns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_else(|_| "pid:?".into()).replace(' ', "_");
    format!("{host} {ns}")
}


/// A path or name for a libc call (a NUL inside it is an error, never a shorter path).
fn cstr(p: &std::ffi::OsStr) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_bytes()).map_err(std::io::Error::other)
}

/// Whether `path` may be written by this process (`access(2)`, so root, ACLs and read-only
/// mounts are judged as the kernel will).
fn writable(path: &Path) -> bool {
    let Ok(c) = cstr(path.as_os_str()) else { return false };
    // SAFETY: a valid NUL-terminated path
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        /// Run by `install_into` after its checks, just before the first move.
        static BEFORE_MOVES: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    pub(super) fn before_moves() {
        if let Some(f) = BEFORE_MOVES.with(|h| h.borrow_mut().take()) {
            f();
        }
    }

    thread_local! {
        /// Run by `Staging::make` between its mkdirat and openat, with the new path.
        static AFTER_MKDIR: RefCell<Option<Box<dyn FnOnce(&Path)>>> = RefCell::new(None);
    }

    pub(super) fn after_mkdir(path: &Path) {
        if let Some(f) = AFTER_MKDIR.with(|h| h.borrow_mut().take()) {
            f(path);
        }
    }

    /// Between the staging directory's mkdirat and its openat, someone who can write `--out`
    /// renames it away and puts a directory of links to a victim at its name: refused before
    /// anything is written (the links were followed and the victim truncated).
    #[test]
    fn a_staging_directory_replaced_before_it_is_opened_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (o, victim) = (d.path().join("o"), d.path().join("victim.txt"));
        std::fs::create_dir(&o).unwrap();
        std::fs::write(&victim, "precious").unwrap();
        let (away, v2) = (d.path().join("away"), victim.clone());
        AFTER_MKDIR.with(|h| {
            *h.borrow_mut() = Some(Box::new(move |p: &Path| {
                std::fs::rename(p, &away).unwrap();
                std::fs::create_dir(p).unwrap();
                std::os::unix::fs::symlink(&v2, p.join("labels.csv")).unwrap();
            }))
        });
        let t = Target::new(&o, Path::new("/no/such/input"), true, own);
        let e = format!("{:#}", t.stage().err().expect("refused"));
        assert!(e.contains("was replaced while it was being made"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    /// A staging directory is 0700 whatever the umask (others could put links into it); a
    /// new `--out` gets mkdir's mode. An `--out` holding only a killed run's set-aside files
    /// is not empty: a run without `--force` is refused (it used to go on, and remove them).
    #[test]
    fn staging_is_private_a_new_out_gets_mkdirs_mode_and_set_aside_files_count() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let o = d.path().join("o");
        let t = Target::new(&o, Path::new("/no/such/input"), false, own);
        let staging = t.stage().unwrap();
        assert_eq!(std::fs::metadata(staging.shown()).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::write(staging.path().join("a.csv"), "new a").unwrap();
        t.install(staging).unwrap();
        assert_eq!(std::fs::metadata(&o).unwrap().permissions().mode() & 0o777, 0o777 & !crate::cache::store::umask());
        assert!(!o.join(OWNER).exists());
        // under a setgid parent a new --out keeps the bit, as mkdir's (fchmod cleared it)
        let sg = d.path().join("sg");
        std::fs::create_dir(&sg).unwrap();
        std::fs::set_permissions(&sg, std::fs::Permissions::from_mode(0o2775)).unwrap();
        std::fs::create_dir(sg.join("m")).unwrap();
        let t = Target::new(&sg.join("o"), Path::new("/no/such/input"), false, own);
        let staging = t.stage().unwrap();
        t.install(staging).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&sg.join("o")), mode(&sg.join("m")));
        assert_ne!(mode(&sg.join("o")) & 0o2000, 0);
        let k = d.path().join("k");
        let killed = k.join(format!("{PREFIX}999999999-Kill"));
        std::fs::create_dir_all(killed.join(REPLACED)).unwrap();
        std::fs::write(killed.join(OWNER), format!("{} 999999999\n", host_ns())).unwrap();
        std::fs::write(killed.join(REPLACED).join("labels.csv"), "old").unwrap();
        let e = format!("{:#}", Target::new(&k, Path::new("/no/such/input"), false, own).check().unwrap_err());
        assert!(e.contains("is not empty") && e.contains(".replaced"), "{e}");
        assert!(killed.join(REPLACED).join("labels.csv").exists());
    }

    /// `--out` swapped for a link to another directory after every check, just before the
    /// moves (by someone who can write its parent): nothing goes to, or through, the link's
    /// target; the results land in the directory that was checked and the user's files there
    /// stay. Before, the staging directory was named by a path through `--out`, so the old
    /// files were set aside (and its `.replaced` made) inside the link's target.
    #[test]
    fn an_out_swapped_for_a_link_before_the_moves_sends_nothing_through_it() {
        swapped_for_a_link(false);
    }

    /// The same with `--out` relative to the working directory: the staging directory was
    /// compared with `--out` by path, and tempfile had made its path absolute, so a relative
    /// `--out` got none of the protection.
    #[test]
    fn a_relative_out_swapped_for_a_link_before_the_moves_sends_nothing_through_it() {
        swapped_for_a_link(true);
    }

    /// Someone who can write `--out` renames the staging directory away while the results are
    /// written and plants one of that name full of links to a victim file: the results still
    /// go into the real staging directory (written through its descriptor; by path they
    /// truncated the victim) and only they are moved into `--out`.
    #[test]
    fn a_planted_staging_directory_gets_no_writes_and_is_not_installed() {
        let d = tempfile::tempdir().unwrap();
        let (o, victim) = (d.path().join("o"), d.path().join("victim.txt"));
        std::fs::create_dir(&o).unwrap();
        std::fs::write(o.join("mine.txt"), "mine").unwrap();
        std::fs::write(&victim, "precious").unwrap();
        let t = Target::new(&o, Path::new("/no/such/input"), true, own);
        let staging = t.stage().unwrap();
        let real = staging.shown();
        std::fs::rename(&real, d.path().join("away")).unwrap();
        std::fs::create_dir(&real).unwrap();
        for n in ["a.csv", "b.csv", "c.csv"] {
            std::os::unix::fs::symlink(&victim, real.join(n)).unwrap();
        }
        std::fs::write(staging.path().join("a.csv"), "new a").unwrap();
        std::fs::write(staging.path().join("b.csv"), "new b").unwrap();
        t.install(staging).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(o.join("a.csv")).unwrap(), "new a");
        assert_eq!(std::fs::read_to_string(o.join("b.csv")).unwrap(), "new b");
        assert!(!o.join("c.csv").exists() && std::fs::symlink_metadata(real.join("c.csv")).is_ok(), "only what this run wrote is installed");
        assert_eq!(std::fs::read_to_string(o.join("mine.txt")).unwrap(), "mine");
    }

    fn swapped_for_a_link(relative: bool) {
        let d = tempfile::tempdir().unwrap();
        let (o, moved, victim) = (d.path().join("o"), d.path().join("o.moved"), d.path().join("victim"));
        // `../../tmp/.tmpX/o` from the working directory (no chdir: tests share it)
        let cwd = std::env::current_dir().unwrap();
        let up: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
        let given = if relative { up.join(o.strip_prefix("/").unwrap()) } else { o.clone() };
        std::fs::create_dir(&o).unwrap();
        std::fs::write(o.join("a.csv"), "old a").unwrap();
        std::fs::write(o.join("mine.txt"), "mine").unwrap();
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("v.txt"), "victim").unwrap();
        let t = Target::new(&given, Path::new("/no/such/input"), true, own);
        t.check().unwrap();
        let staging = t.stage().unwrap();
        std::fs::write(staging.path().join("a.csv"), "new a").unwrap();
        std::fs::write(staging.path().join("b.csv"), "new b").unwrap();
        let (o2, moved2, victim2) = (o.clone(), moved.clone(), victim.clone());
        BEFORE_MOVES.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                std::fs::rename(&o2, &moved2).unwrap();
                std::os::unix::fs::symlink(&victim2, &o2).unwrap();
            }))
        });
        t.install(staging).unwrap();
        let names = |p: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&victim), ["v.txt"], "something went through the link");
        assert_eq!(std::fs::read_to_string(victim.join("v.txt")).unwrap(), "victim");
        assert_eq!(std::fs::read_to_string(moved.join("a.csv")).unwrap(), "new a");
        assert_eq!(std::fs::read_to_string(moved.join("b.csv")).unwrap(), "new b");
        assert_eq!(std::fs::read_to_string(moved.join("mine.txt")).unwrap(), "mine");
        // and the staging directory is gone from where it really was
        assert_eq!(names(&moved), ["a.csv", "b.csv", "mine.txt"]);
    }

    fn own(n: &str) -> bool {
        n.ends_with(".csv")
    }

    /// A run killed in the middle of its moves: its staging directory, holding the old files
    /// it set aside, is left and reported, never removed (the only copy of the old files) nor
    /// moved into place; one without set-aside files is removed; a planted one (not this
    /// host's, or a link) is left alone.
    #[test]
    fn a_killed_runs_set_aside_files_are_kept_and_nothing_is_moved_into_place() {
        let d = tempfile::tempdir().unwrap();
        let o = d.path().join("o");
        let here = host_ns();
        let mk = |name: &str, owner: &str| {
            let st = o.join(format!("{PREFIX}{name}"));
            std::fs::create_dir_all(&st).unwrap();
            std::fs::write(st.join(OWNER), owner).unwrap();
            std::fs::write(st.join("b.csv"), "staged").unwrap();
            st
        };
        let killed = mk("999999999-Kill", &format!("{here} 999999999\n"));
        std::fs::create_dir(killed.join(REPLACED)).unwrap();
        std::fs::write(killed.join(REPLACED).join("a.csv"), "old a").unwrap();
        let clean = mk("999999998-Clean", &format!("{here} 999999998\n"));
        let theirs = mk("999999997-Theirs", "otherhost pid:[1] 999999997\n");
        std::os::unix::fs::symlink(&clean, o.join(format!("{PREFIX}999999996-Link"))).unwrap();
        std::fs::write(o.join("a.csv"), "new a").unwrap();
        let t = Target::new(&o, Path::new("/no/such/input"), true, own);
        let staging = t.stage().unwrap();
        assert!(killed.join(REPLACED).join("a.csv").exists() && killed.join("b.csv").exists());
        assert!(!clean.exists() && theirs.exists());
        assert!(std::fs::symlink_metadata(o.join(format!("{PREFIX}999999996-Link"))).is_ok());
        assert_eq!(std::fs::read_to_string(o.join("a.csv")).unwrap(), "new a");
        assert!(!o.join("b.csv").exists(), "nothing staged is moved into place");
        assert!(staging.shown().starts_with(&o), "an existing --out stages inside itself");
        // a run without --force is refused, and told why the directory may be mixed
        let e = format!("{:#}", Target::new(&o, Path::new("/no/such/input"), false, own).check().unwrap_err());
        assert!(e.contains("is not empty") && e.contains("may have left it mixing") && e.contains(".replaced"), "{e}");
    }

    /// Losing the race for a new `--out` (another run made it and wrote into it while this
    /// one worked): refused without `--force`, saying so; the other run's files untouched.
    #[test]
    fn a_new_out_that_appears_meanwhile_is_named_as_such() {
        let d = tempfile::tempdir().unwrap();
        let o = d.path().join("o");
        let t = Target::new(&o, Path::new("/no/such/input"), false, own);
        t.check().unwrap();
        let staging = t.stage().unwrap();
        std::fs::write(staging.path().join("a.csv"), "mine").unwrap();
        std::fs::create_dir(&o).unwrap();
        std::fs::write(o.join("a.csv"), "theirs").unwrap();
        let e = format!("{:#}", t.install(staging).unwrap_err());
        assert!(e.contains("appeared while this run worked") && e.contains("is not empty"), "{e}");
        assert_eq!(std::fs::read_to_string(o.join("a.csv")).unwrap(), "theirs");
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
}
