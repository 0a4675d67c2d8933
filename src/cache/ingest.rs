//! Taking a stage's output directory into the store without touching anyone else's files.
//!
//! The rules (README, "Safety"):
//! - a regular file the stage created inside `$OUT` (its real path is under `$OUT` and it has
//!   one link) may be **moved** into the store: nobody else can see it;
//! - everything else is **copied**: a file with more than one link (a hard link to an input or
//!   a user file), a file reached through a symlink (to a file or a directory, inside `$OUT`
//!   or outside it); the link itself is resolved, what it points to is stored;
//! - special files (FIFOs, sockets, devices), dangling symlinks and symlink loops are refused
//!   with an error naming the path: reading them could hang the run or never end.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::error::CacheError;

/// Where a file of the output comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file the stage created in `$OUT`: may be renamed into the store.
    Own(PathBuf),
    /// Someone else's file (or one reached through a link): copied, never moved.
    Copy(PathBuf),
}

#[derive(Debug, Clone)]
pub struct OutFile {
    /// Path in the artifact, `/`-separated.
    pub rel: String,
    pub source: Source,
    pub executable: bool,
}

/// Symlinked directories nested deeper than this are refused (a cheap guard besides the
/// loop check).
const MAX_LINK_DEPTH: usize = 32;

/// Files reached through symlinked directories, at most (a fan-out of links to links can
/// name millions of copies of a few files).
const MAX_LINKED_FILES: usize = 1_000_000;

fn unsafe_err(path: &Path, message: impl Into<String>) -> CacheError {
    CacheError::UnsafeOutput { path: path.to_path_buf(), message: message.into() }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

/// What a non-regular file is, for messages ("a FIFO", "a character device", ...).
pub(crate) fn special_kind(ft: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
    }
    let _ = ft;
    "not a regular file"
}

#[cfg(unix)]
fn nlink(m: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.nlink()
}

#[cfg(unix)]
pub fn is_exec(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

/// Every file of an output directory and where to take it from, sorted by path.
pub fn collect_output(dir: &Path) -> Result<Vec<OutFile>, CacheError> {
    struct Item {
        rel: String,
        abs: PathBuf,
        /// Reached through a symlink: nothing below it is the stage's own.
        via_link: bool,
        /// Real paths of the linked directories above (loop detection).
        chain: Vec<PathBuf>,
    }
    let shown = |rel: &str| PathBuf::from(format!("$OUT/{rel}"));
    // `dir` is the directory we created, by its real path. A stage that replaced it (or a
    // directory above it) with a symlink would make someone else's files look like its own.
    let real = fs::canonicalize(dir).map_err(|_| unsafe_err(&shown(""), "the stage removed its output directory"))?;
    let lmeta = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if real != dir || !lmeta.is_dir() {
        return Err(unsafe_err(
            &shown(""),
            format!("the stage replaced its output directory (or a directory above it) with a link to {}: refused, nothing was taken", real.display()),
        ));
    }
    let mut linked_files = 0usize;
    let mut out = Vec::new();
    let mut stack = vec![Item { rel: String::new(), abs: dir.to_path_buf(), via_link: false, chain: Vec::new() }];
    while let Some(it) = stack.pop() {
        let rd = fs::read_dir(&it.abs).map_err(io_err(&it.abs))?;
        for d in rd {
            let d = d.map_err(io_err(&it.abs))?;
            let name = d.file_name();
            let Some(name) = name.to_str() else {
                return Err(unsafe_err(&d.path(), "file name is not valid UTF-8"));
            };
            let rel = if it.rel.is_empty() { name.to_string() } else { format!("{}/{name}", it.rel) };
            // What a manifest may hold (Manifest::check_paths): such a name was committed and
            // then refused by every read of the entry, which stayed a hit nothing could use.
            if name.contains('\\') || name.chars().any(char::is_control) {
                return Err(unsafe_err(
                    &PathBuf::from(format!("$OUT/{}", rel.escape_debug())),
                    "the name holds a control character (tab, newline, escape...) or a backslash, which no cached file may have: rename it",
                ));
            }
            if rel.len() > super::store::MAX_PATH || rel.split('/').count() > super::store::MAX_DEPTH {
                return Err(unsafe_err(
                    &PathBuf::from(format!("$OUT/{}...", crate::text::cap(&rel, 200).escape_debug())),
                    format!("the path is longer than a cached file's may be ({} bytes or {} parts at most): a view of it would not fit a file system path", super::store::MAX_PATH, super::store::MAX_DEPTH),
                ));
            }
            let p = d.path();
            let lmeta = fs::symlink_metadata(&p).map_err(io_err(&p))?;
            let ft = lmeta.file_type();
            if ft.is_symlink() {
                let target = fs::read_link(&p).map(|t| t.display().to_string()).unwrap_or_default();
                let real = fs::canonicalize(&p)
                    .map_err(|_| unsafe_err(&shown(&rel), format!("is a symlink to {target}, which does not exist (or is a loop)")))?;
                let meta = fs::metadata(&real).map_err(io_err(&real))?;
                if meta.is_dir() {
                    // A link to `$OUT`, or to a directory above one we are already inside.
                    if dir.starts_with(&real) || it.chain.iter().any(|c| c.starts_with(&real)) {
                        return Err(unsafe_err(&shown(&rel), format!("is a symlink to {}, which contains it: a loop", real.display())));
                    }
                    if it.chain.len() >= MAX_LINK_DEPTH {
                        return Err(unsafe_err(&shown(&rel), "symlinked directories nest too deep"));
                    }
                    let mut chain = it.chain.clone();
                    chain.push(real.clone());
                    stack.push(Item { rel, abs: real, via_link: true, chain });
                } else if meta.is_file() {
                    if real.starts_with("/proc") || real.starts_with("/sys") {
                        return Err(unsafe_err(&shown(&rel), format!("is a symlink to {}: kernel files can block or never end; refused", real.display())));
                    }
                    out.push(OutFile { rel, executable: is_exec(&meta), source: Source::Copy(real) });
                } else {
                    return Err(unsafe_err(
                        &shown(&rel),
                        format!("is a symlink to {}, which is {}: outputs must be regular files", real.display(), special_kind(&meta.file_type())),
                    ));
                }
            } else if ft.is_dir() {
                let chain = it.chain.clone();
                stack.push(Item { rel, abs: p, via_link: it.via_link, chain });
            } else if ft.is_file() {
                if it.via_link {
                    linked_files += 1;
                    if linked_files > MAX_LINKED_FILES {
                        return Err(unsafe_err(&shown(&rel), format!("symlinked directories in $OUT reach more than {MAX_LINKED_FILES} files: refused (a link fan-out?)")));
                    }
                    if p.starts_with("/proc") || p.starts_with("/sys") {
                        return Err(unsafe_err(&shown(&rel), "is reached through a symlink into /proc or /sys: refused"));
                    }
                }
                let source = if it.via_link || nlink(&lmeta) > 1 { Source::Copy(p) } else { Source::Own(p) };
                out.push(OutFile { rel, executable: is_exec(&lmeta), source });
            } else {
                return Err(unsafe_err(&shown(&rel), format!("is {}: outputs must be regular files", special_kind(&ft))));
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Copy `src` to a new file `dst`, hashing exactly the bytes written; fsync `dst`.
/// Returns (blake3 hex, size).
pub fn copy_hashing(src: &Path, dst: &Path) -> Result<(String, u64), CacheError> {
    let mut from = File::open(src).map_err(io_err(src))?;
    let mut to = fs::OpenOptions::new().write(true).create_new(true).open(dst).map_err(io_err(dst))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buf).map_err(io_err(src))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(io_err(dst))?;
        size += n as u64;
    }
    to.sync_all().map_err(io_err(dst))?;
    Ok((h.finalize().to_hex().to_string(), size))
}

/// Remove a directory tree even where a stage made parts of it read-only.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            #[cfg(unix)]
            make_writable(dir);
            fs::remove_dir_all(dir)
        }
    }
}

#[cfg(unix)]
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::symlink_metadata(dir) {
        if m.is_dir() {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(m.permissions().mode() | 0o700));
            if let Ok(rd) = fs::read_dir(dir) {
                for d in rd.flatten() {
                    make_writable(&d.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(files: &[OutFile]) -> Vec<(String, bool)> {
        files.iter().map(|f| (f.rel.clone(), matches!(f.source, Source::Own(_)))).collect()
    }

    #[test]
    fn own_files_move_everything_else_is_copied() {
        let t = tempfile::tempdir().unwrap();
        let user = t.path().join("user");
        fs::create_dir_all(user.join("sub")).unwrap();
        fs::write(user.join("sub/x.txt"), "x").unwrap();
        fs::write(user.join("y.txt"), "y").unwrap();
        let out = t.path().join("out");
        fs::create_dir_all(out.join("d")).unwrap();
        fs::write(out.join("d/own.txt"), "own").unwrap();
        std::os::unix::fs::symlink(&user, out.join("linked")).unwrap();
        std::os::unix::fs::symlink(user.join("y.txt"), out.join("y-link")).unwrap();
        fs::hard_link(user.join("y.txt"), out.join("hard")).unwrap();
        let files = collect_output(&out).unwrap();
        assert_eq!(
            kinds(&files),
            vec![
                ("d/own.txt".into(), true),
                ("hard".into(), false),
                ("linked/sub/x.txt".into(), false),
                ("linked/y.txt".into(), false),
                ("y-link".into(), false),
            ]
        );
    }

    #[test]
    fn special_files_dangling_links_and_loops_are_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        fs::create_dir_all(&out).unwrap();
        std::os::unix::fs::symlink("/dev/zero", out.join("zero")).unwrap();
        let e = collect_output(&out).unwrap_err().to_string();
        assert!(e.contains("$OUT/zero") && e.contains("character device"), "{e}");
        fs::remove_file(out.join("zero")).unwrap();

        let fifo = std::ffi::CString::new(out.join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let e = collect_output(&out).unwrap_err().to_string();
        assert!(e.contains("$OUT/fifo") && e.contains("FIFO"), "{e}");
        fs::remove_file(out.join("fifo")).unwrap();

        std::os::unix::fs::symlink(out.join("nowhere"), out.join("dangling")).unwrap();
        let e = collect_output(&out).unwrap_err().to_string();
        assert!(e.contains("$OUT/dangling") && e.contains("does not exist"), "{e}");
        fs::remove_file(out.join("dangling")).unwrap();

        fs::create_dir_all(out.join("a")).unwrap();
        std::os::unix::fs::symlink(&out, out.join("a/up")).unwrap();
        let e = collect_output(&out).unwrap_err().to_string();
        assert!(e.contains("$OUT/a/up") && e.contains("loop"), "{e}");
        fs::remove_file(out.join("a/up")).unwrap();

        // found by a hostile pass: these names were committed, then every read of the entry
        // refused its manifest (the stage stayed a cache hit that nothing downstream could use)
        for (name, shown) in [("a\tb", "$OUT/a/a\\tb"), ("x\ny", "$OUT/a/x\\ny"), ("e\u{1b}[2J", "$OUT/a/e\\u{1b}[2J"), ("b\\s", "$OUT/a/b\\\\s")] {
            fs::write(out.join("a").join(name), "x").unwrap();
            let e = collect_output(&out).unwrap_err().to_string();
            assert!(e.contains(shown) && e.contains("rename it") && !e.contains('\n'), "{name:?}: {e}");
            fs::remove_file(out.join("a").join(name)).unwrap();
        }
        assert_eq!(collect_output(&out).unwrap().len(), 0);
    }
}
