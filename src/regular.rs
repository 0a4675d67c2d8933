//! Reading a file that may turn out to be something else: a FIFO (an open that blocks, a read
//! that never ends), a device (`/dev/zero`), a directory, or a file far larger than any the
//! caller expects. Opened non-blocking and checked on the open descriptor, so what is checked
//! is what is read. Found by hostile passes: FIFOs hung `plan`, the web view and
//! `verify --rebuild`, and `/dev/zero` was read until memory ran out.

use std::io::{self, Read};
use std::path::Path;

/// The bytes of `path` when it is a regular file of at most `max` bytes; otherwise an error
/// saying what it is instead (`what` names what was expected: "pipeline file").
pub fn read_bounded(path: &Path, max: u64, what: &str) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).inspect_err(note_exhaustion)?;
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::other(format!("is a directory, not a {what}")));
    }
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file (a FIFO, socket or device): its reading may never end"));
    }
    if meta.len() > max {
        return Err(io::Error::other(format!("{} bytes: a {what} holds at most {max}", meta.len())));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::other(format!("grew past {max} bytes while it was read")));
    }
    Ok(out)
}

thread_local! {
    static EXHAUSTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether `e` is a want of file descriptors (the process's or the system's).
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Records on this thread that `e` was a want of file descriptors (see [`exhausted_during`]).
pub fn note_exhaustion(e: &io::Error) {
    if is_exhaustion(e) {
        EXHAUSTED.with(|x| x.set(true));
    }
}

/// `f`'s result, and whether it may have taken a file it could not open for one that is not
/// there: a read on this thread failed for want of file descriptors meanwhile, or none is
/// left now. The web view answers 503 then instead of "not found" (found by a hostile pass
/// under `ulimit -n 32`).
pub fn exhausted_during<T>(f: impl FnOnce() -> T) -> (T, bool) {
    EXHAUSTED.with(|x| x.set(false));
    let r = f();
    let noted = EXHAUSTED.with(|x| x.replace(false));
    (r, noted || std::fs::File::open("/dev/null").is_err_and(|e| is_exhaustion(&e)))
}

/// [`read_bounded`] for readers to which anything else is simply not there.
pub fn read_regular(path: &Path, max: u64) -> Option<Vec<u8>> {
    read_bounded(path, max, "file").ok()
}
