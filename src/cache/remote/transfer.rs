//! Moving results between the local cache and a remote: [`pull`] (verify everything, then
//! commit locally) and [`push`] (blobs, manifest, entry last).

use super::{blob_path, manifest_path, ArtifactStore, Remote, RemoteError};
use crate::cache::key::CacheKey;
use crate::cache::store::{hash_file, Cache, Entry};

/// What one transfer moved.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Moved {
    pub files: usize,
    pub bytes: u64,
}

/// Fetch the result of `key` from the remote into the local cache: the entry, its manifest
/// (which must hash to the entry's output digest) and every blob the local cache lacks
/// (each must hash to its digest and have its size). Only then is it committed locally.
/// `Ok(None)`: the remote has no such entry. A damaged or missing object is an error naming
/// it; nothing is committed.
///
/// `owner`: the (pipeline, stage) a run pulls it for: the local copy is recorded under those
/// names (the same key may be another pipeline's stage on the remote). Either way it becomes
/// nobody's current output here: the run marks it for its own stage, `cache pull` for none.
pub fn pull(cache: &Cache, remote: &Remote, key: &CacheKey, owner: Option<(&str, &str)>) -> Result<Option<(Entry, Moved)>, RemoteError> {
    let r = pull_inner(cache, remote, key, owner);
    if matches!(r, Err(RemoteError::Damaged { .. })) {
        // The entry names something damaged: the next upload replaces the entry too.
        remote.mark_damaged(&super::entry_path(key));
    }
    r
}

fn pull_inner(cache: &Cache, remote: &Remote, key: &CacheKey, owner: Option<(&str, &str)>) -> Result<Option<(Entry, Moved)>, RemoteError> {
    let Some(mut entry) = remote.get_entry(key)? else { return Ok(None) };
    // What a remote says is printed and stored: clean it as our own stages' text.
    entry.stage = crate::text::strip_controls(&entry.stage);
    entry.pipeline = crate::text::strip_controls(&entry.pipeline);
    for l in entry.outcome.summary.iter_mut() {
        *l = crate::text::clean(l);
    }
    let mrel = manifest_path(&entry.output);
    let manifest = remote.get_manifest(&entry.output)?.ok_or_else(|| remote.damaged(&mrel, "the entry's manifest is missing"))?;
    // A path the manifest may hold (at most 3,000 bytes) can still be too long under this
    // cache's root: the pulled entry was committed and every downstream stage failed on its
    // view (found by a hostile pass, a cache root of 1,000 bytes). Refused, the stage runs here.
    if let Some(longest) = manifest.files.iter().map(|f| f.path.len()).max() {
        let rel = cache.root().join("views").join(&entry.output);
        let view = std::path::absolute(&rel).unwrap_or(rel);
        let full = view.as_os_str().len() + 1 + longest;
        if full >= PATH_MAX {
            return Err(remote.err(&mrel, format!("names a path of {longest} bytes, {full} bytes under this cache's views ({}), over the system's limit of {PATH_MAX}; not downloaded", view.display())));
        }
    }
    let mut moved = Moved::default();
    let mut seen = std::collections::HashSet::new();
    let wanted: Vec<_> = manifest.files.iter().filter(|f| seen.insert(f.digest.clone()) && !cache.has_good_blob(&f.digest, f.size)).collect();
    // A manifest may name blobs bigger than the disk (a forged one, a sparse 4 GB blob each
    // reader downloaded into `tmp/` before the hash refused it): refused before any byte. The
    // sum is checked: sizes chosen to wrap it to 1 filled a file system (found by a hostile pass).
    let total = wanted.iter().try_fold(0u64, |t, f| t.checked_add(f.size));
    let _room = match total.ok_or_else(|| "more bytes than a u64 holds".to_string()).and_then(|t| Reservation::take(&cache.tmp_dir(), t)) {
        Ok(r) => r,
        Err(why) => return Err(remote.err(&super::entry_path(key), format!("{} files to download: {why}; not downloaded", wanted.len()))),
    };
    let total = total.unwrap_or_default();
    let bar = crate::progress::transfer_bar(&entry.stage, total);
    bar.set_message("downloading");
    for f in wanted {
        let staged = fetch_verified(cache, remote, &f.digest, f.size, &|n| bar.inc(n))?;
        cache.install_blob(&staged, &f.digest, f.size)?;
        moved.files += 1;
        moved.bytes += f.size;
    }
    bar.finish_and_clear();
    let mut local = entry.clone();
    local.size = manifest.size();
    local.files = manifest.files.len();
    if let Some((pipeline, stage)) = owner {
        local.pipeline = pipeline.to_string();
        local.stage = stage.to_string();
    }
    cache.commit_unclaimed(&local, &manifest)?;
    Ok(Some((local, moved)))
}

/// What a lookup on the remote would find for `key`, without downloading blobs: `Ok(None)`
/// no entry; `Ok(Some(Err(why)))` an entry that a pull would refuse (its manifest or a blob
/// the local cache lacks is missing, or a blob has the wrong size); `Ok(Some(Ok(())))` an
/// entry whose objects are all there (their contents are still verified by the pull).
/// This is what `plan` reports, so that it does not promise a remote hit that `run` then
/// misses.
pub fn probe_entry(cache: &Cache, remote: &Remote, key: &CacheKey) -> Result<Option<Result<(), String>>, RemoteError> {
    let entry = match remote.get_entry(key) {
        Ok(Some(e)) => e,
        Ok(None) => return Ok(None),
        Err(RemoteError::Damaged { message, .. }) => return Ok(Some(Err(format!("its entry is damaged ({message})")))),
        Err(e) => return Err(e),
    };
    let manifest = match remote.get_manifest(&entry.output) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(Some(Err(format!("its manifest {} is missing", &entry.output[..12])))),
        Err(RemoteError::Damaged { message, .. }) => return Ok(Some(Err(format!("its manifest is damaged ({message})")))),
        Err(e) => return Err(e),
    };
    let mut seen = std::collections::HashSet::new();
    for f in &manifest.files {
        if !seen.insert(f.digest.clone()) || cache.has_good_blob(&f.digest, f.size) {
            continue;
        }
        if !remote.has_blob(&f.digest, f.size)? {
            return Ok(Some(Err(format!("the blob of {} ({}) is missing or has the wrong size", f.path, &f.digest[..12]))));
        }
    }
    Ok(Some(Ok(())))
}

/// Upload a committed local entry: the blobs the remote lacks, the manifest, then the entry
/// (the commit marker). Blobs are rehashed locally before they leave.
/// Upload `entry`: blobs the remote lacks, then its manifest, then the entry. With `verify`,
/// a blob the remote has at the right size is downloaded and hashed too, and uploaded again
/// when its bytes are not the blob's (a same-size change is otherwise only seen by the
/// process that reads it, and a plain push found nothing to do).
pub fn push(cache: &Cache, remote: &Remote, entry: &Entry, verify: bool) -> Result<Moved, RemoteError> {
    let manifest = cache
        .manifest(&entry.output)?
        .ok_or_else(|| RemoteError::Cache(crate::cache::CacheError::NotFound(format!("manifest {}", &entry.output[..12]))))?;
    let mut moved = Moved::default();
    let mut seen = std::collections::HashSet::new();
    let mut wanted = Vec::new();
    for f in &manifest.files {
        if seen.insert(f.digest.clone()) && (!remote.has_blob(&f.digest, f.size)? || (verify && !intact(cache, remote, &f.digest, f.size)?)) {
            wanted.push(f);
        }
    }
    let bar = crate::progress::transfer_bar(&entry.stage, wanted.iter().map(|f| f.size).sum());
    bar.set_message("uploading");
    for f in wanted {
        let path = cache.blob_file(&f.digest);
        if hash_file(&path)? != f.digest {
            return Err(RemoteError::Cache(crate::cache::CacheError::Corrupt(
                entry.key.0.clone(),
                format!("local blob {} is damaged: run `pipeline cache verify`; nothing uploaded", &f.digest[..12]),
            )));
        }
        moved.bytes += remote.put_blob_counted(&f.digest, &path, &|n| bar.inc(n))?;
        moved.files += 1;
    }
    bar.finish_and_clear();
    remote.put_manifest(&manifest)?;
    remote.put_entry(entry)?;
    // An entry or manifest already there is kept (create-if-absent): one that does not read
    // back as this one (damaged: a FIFO, other bytes) is written again over it (reading it
    // marked it damaged). A `gc --remote` that listed the entries before this one existed may
    // have deleted an old manifest this entry reuses: uploaded again too.
    if let Err(RemoteError::Damaged { .. }) = remote.get_entry(&entry.key) {
        remote.put_entry(entry)?;
    }
    match remote.get_manifest(&entry.output) {
        Ok(Some(_)) => {}
        Ok(None) | Err(RemoteError::Damaged { .. }) => remote.put_manifest_overwrite(&manifest)?,
        Err(e) => return Err(e),
    }
    for f in &manifest.files {
        if !remote.has_blob(&f.digest, f.size)? {
            moved.bytes += remote.put_blob(&f.digest, &cache.blob_file(&f.digest))?;
            moved.files += 1;
        }
    }
    Ok(moved)
}

/// Linux's PATH_MAX, with its terminating NUL: the longest path a system call takes.
const PATH_MAX: usize = 4096;

/// Space a download leaves free on the cache's file system, whatever it brings: this much,
/// or a twentieth of a smaller file system (a flat 256 MiB refused every pull into a
/// 100 MiB one; found by a hostile pass).
const KEEP_FREE: u64 = 256 << 20;

/// Bytes this process's downloads in flight have been granted: parallel pulls of one run
/// each found room for themselves, and together filled the disk (found by a hostile pass).
static RESERVED: std::sync::Mutex<u64> = std::sync::Mutex::new(0);

/// Room for one download on the cache's file system, held until dropped.
struct Reservation(u64);

impl Reservation {
    fn take(dir: &std::path::Path, bytes: u64) -> Result<Reservation, String> {
        let mut held = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        room_for(dir, bytes.saturating_add(*held)).map_err(|why| if *held > 0 { format!("{bytes} bytes, with {} more being downloaded: {why}", *held) } else { format!("{bytes} bytes: {why}") })?;
        *held += bytes;
        Ok(Reservation(bytes))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        *held = held.saturating_sub(self.0);
    }
}

/// `Ok` when `bytes` fit on `dir`'s file system with [`KEEP_FREE`] (or a twentieth of the
/// file system, the smaller) left over, or when the free space cannot be read (the write
/// itself then fails cleanly); else why not.
fn room_for(dir: &std::path::Path, bytes: u64) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return Ok(()) };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed statvfs buffer of the right type
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Ok(());
    }
    let unit = st.f_frsize as u64;
    let free = (st.f_bavail as u64).saturating_mul(unit);
    let keep = KEEP_FREE.min((st.f_blocks as u64).saturating_mul(unit) / 20);
    if bytes.saturating_add(keep) > free {
        return Err(format!("{} has {free} bytes free (keeping {keep})", dir.display()));
    }
    Ok(())
}

/// Download the blob `digest` into a fresh file under the cache's `tmp/` and check its size
/// and hash: its path, or an error (`Damaged`, the remote marked, for a missing or
/// mismatching blob) with nothing left behind.
fn fetch_verified(cache: &Cache, remote: &Remote, digest: &str, size: u64, progress: &dyn Fn(u64)) -> Result<std::path::PathBuf, RemoteError> {
    let staged = cache.staging_file();
    let brel = blob_path(digest);
    let check = match remote.get_blob_counted(digest, &staged, Some(size), progress) {
        Ok(true) => {
            let got = std::fs::metadata(&staged).map(|m| m.len()).unwrap_or(0);
            match hash_file(&staged) {
                Ok(h) if got == size && h == digest => Ok(()),
                Ok(h) => Err(remote.damaged(&brel, format!("{got} bytes hashing to {}, expected {size} bytes hashing to {}", &h[..12], &digest[..12]))),
                Err(e) => Err(e.into()),
            }
        }
        Ok(false) => Err(remote.damaged(&brel, "missing (the entry names it)")),
        Err(e) => Err(e),
    };
    match check {
        Ok(()) => Ok(staged),
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            Err(e)
        }
    }
}

/// Whether the remote's blob `digest` hashes to its name (downloaded, hashed, removed).
fn intact(cache: &Cache, remote: &Remote, digest: &str, size: u64) -> Result<bool, RemoteError> {
    match fetch_verified(cache, remote, digest, size, &|_| {}) {
        Ok(staged) => {
            let _ = std::fs::remove_file(&staged);
            Ok(true)
        }
        Err(RemoteError::Damaged { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `cache gc --remote`: delete blobs and manifests no entry on the remote needs, and that are
/// older than `grace_secs` (a concurrent writer uploads blobs before its entry: a young orphan
/// may be the start of a commit). Returns (objects deleted, bytes freed).
pub fn gc(remote: &Remote, grace_secs: u64) -> Result<(usize, u64), RemoteError> {
    let mut live_manifests = std::collections::HashSet::new();
    let mut live_blobs = std::collections::HashSet::new();
    for (rel, _, _) in remote.list("entries")? {
        let Some(key) = rel.strip_prefix("entries/") else { continue };
        // Only a missing or damaged entry (or manifest) frees what it names: an entry that
        // cannot be read now (a network error, a refused request) stops the collection, or
        // its live blobs would be deleted as orphans.
        let e = match remote.get_entry(&CacheKey(key.to_string())) {
            Ok(Some(e)) => e,
            Ok(None) | Err(RemoteError::Damaged { .. }) => continue,
            Err(e) => return Err(e),
        };
        live_manifests.insert(manifest_path(&e.output));
        match remote.get_manifest(&e.output) {
            Ok(Some(m)) => live_blobs.extend(m.files.iter().map(|f| blob_path(&f.digest))),
            Ok(None) | Err(RemoteError::Damaged { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let (mut n, mut bytes) = (0, 0);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    // Only names of the layout are ours to delete: anything else (a README, a symlinked
    // directory's files) is left alone.
    let ours = |rel: &str| match rel.split('/').collect::<Vec<_>>().as_slice() {
        ["manifests", d] => hex(d, 64),
        ["objects", a, b] => hex(a, 2) && hex(b, 62),
        _ => false,
    };
    for (rel, size, age) in remote.list("manifests")?.into_iter().chain(remote.list("objects")?) {
        if age < grace_secs || !ours(&rel) || live_manifests.contains(&rel) || live_blobs.contains(&rel) {
            continue;
        }
        if let Some(link) = remote.link_in(&rel) {
            return Err(RemoteError::Config {
                url: remote.describe(),
                message: format!("{link} is a symbolic link: gc --remote deletes nothing found through a link (it may be another cache's); {n} objects deleted before it"),
            });
        }
        remote.delete(&rel)?;
        n += 1;
        bytes += size;
    }
    for (rel, size) in remote.stale_uploads(grace_secs) {
        if remote.link_in(&rel).is_some() {
            continue;
        }
        remote.remove_stale_upload(&rel)?;
        n += 1;
        bytes += size;
    }
    Ok((n, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_bigger_than_the_free_space_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(room_for(d.path(), 1).is_ok());
        let e = room_for(d.path(), u64::MAX / 2).unwrap_err();
        assert!(e.contains("bytes free") && e.contains(&d.path().display().to_string()), "{e}");
        // what cannot be measured is not refused (the write fails on its own)
        assert!(room_for(std::path::Path::new("/no/such/dir"), u64::MAX / 2).is_ok());
        // reservations add up, and are given back when dropped
        let free = {
            let c = std::ffi::CString::new(d.path().to_str().unwrap()).unwrap();
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
            st.f_bavail as u64 * st.f_frsize as u64
        };
        let half = (free / 2).saturating_sub(64 << 20);
        let a = Reservation::take(d.path(), half).unwrap();
        let e = Reservation::take(d.path(), half).err().expect("two halves plus the margin do not fit");
        assert!(e.contains("more being downloaded"), "{e}");
        drop(a);
        drop(Reservation::take(d.path(), half).unwrap());
    }
}
