//! Remote caches: a lab's shared store that every machine reads from and writes to.
//!
//! The seam is [`ArtifactStore`]: what any store of artifacts must do (entry by key,
//! manifest by digest, blob by digest). The local cache ([`crate::cache::Cache`]) is one
//! implementation, [`Remote`] the other; a remote is built from a URL by [`dir`] (a directory,
//! for NFS and other shared file systems) or [`s3`] (S3-compatible object storage), both
//! through the `object_store` crate, which brings retries with backoff and create-if-absent
//! puts.
//!
//! Layout on a remote (under its prefix):
//!
//! | path                    | what                                              |
//! |-------------------------|---------------------------------------------------|
//! | `objects/ab/cdef...`    | file contents by blake3 digest                    |
//! | `manifests/<digest>`    | an artifact's file list (JSON), by its digest     |
//! | `entries/<key>`         | a stage result (JSON): the commit marker          |
//!
//! **Upload order is the commit protocol**: blobs, then the manifest, then the entry, so an
//! entry on the remote implies its manifest and blobs were uploaded before it (a Nix
//! `.narinfo` works the same way). A reader still trusts nothing: everything downloaded is
//! hashed and compared with the digests before it is committed to the local cache
//! ([`transfer::pull`]); a damaged object makes the lookup a miss, the stage reruns, and in
//! read-write mode its upload overwrites the damaged object.

pub mod dir;
pub mod s3;
pub mod transfer;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::key::CacheKey;
use super::store::{Entry, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote {url}: {message}")]
    Config { url: String, message: String },
    #[error("remote {remote}: {object}: {message}")]
    Object { remote: String, object: String, message: String },
    #[error("remote {remote}: {object} is damaged ({message}); it is ignored, and replaced by the next upload of it (a run that reruns the stage, or `pipeline cache push` from a cache that has the entry; `--verify` for a blob of the right size)")]
    Damaged { remote: String, object: String, message: String },
    /// The remote did not answer in time, or refused the connection: a run goes on without
    /// it (with a warning); `cache push/pull` fail.
    #[error("remote {url} is unreachable ({message})")]
    Unreachable { url: String, message: String },
    #[error(transparent)]
    Cache(#[from] super::error::CacheError),
}

/// Blobs above this size are uploaded in parts (S3's minimum part is 5 MiB), streamed from the
/// file: a 2 GB model never sits in memory whole, and a failed part is retried alone.
pub const MULTIPART_ABOVE: u64 = 16 << 20;
const PART_SIZE: usize = 8 << 20;
/// An entry is a few kB (its key inputs and outcome): a bigger object under `entries/` is
/// refused unread, not loaded into memory.
const ENTRY_MAX: u64 = 64 << 20;
/// A manifest is ~150 bytes a file: 256 MiB holds over a million files. A bigger object under
/// `manifests/` is refused unread (a 3 GB one was read whole into memory before it failed).
const MANIFEST_MAX: u64 = 256 << 20;
/// How long the reachability check of [`Remote::connect`] waits.
const PROBE_SECS: u64 = 10;

/// What a store of artifacts must do. Digests and keys are hex strings; a blob is one file.
pub trait ArtifactStore: Send + Sync {
    /// Where it is, for messages (never with credentials).
    fn describe(&self) -> String;
    fn get_entry(&self, key: &CacheKey) -> Result<Option<Entry>, RemoteError>;
    fn put_entry(&self, entry: &Entry) -> Result<(), RemoteError>;
    fn get_manifest(&self, digest: &str) -> Result<Option<Manifest>, RemoteError>;
    fn put_manifest(&self, manifest: &Manifest) -> Result<(), RemoteError>;
    /// Whether a blob of this digest and size is present (not rehashed).
    fn has_blob(&self, digest: &str, size: u64) -> Result<bool, RemoteError>;
    /// Write the blob's bytes to `dst` (a new file). `Ok(false)` if there is no such blob.
    fn get_blob(&self, digest: &str, dst: &Path) -> Result<bool, RemoteError>;
    fn put_blob(&self, digest: &str, src: &Path) -> Result<u64, RemoteError>;
}

/// How a run uses its remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteMode {
    /// Download hits, upload what ran.
    #[default]
    ReadWrite,
    /// Download hits, upload nothing (CI on pull requests).
    ReadOnly,
    /// Ignore the remote.
    Off,
}

/// A remote cache over any `object_store` backend.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// The URL as given, for messages (credentials never come from the URL).
    url: String,
    /// Objects found damaged in this process: their next upload overwrites them.
    damaged: std::sync::Mutex<std::collections::HashSet<String>>,
    /// A directory remote's directory (canonical).
    root: Option<std::path::PathBuf>,
    /// Set once a request got no answer (a timeout, a refused connection): every later one
    /// fails at once. A server that stalls would otherwise cost its timeout and retries on
    /// every lookup and upload (found by a hostile pass: 2 minutes per stage).
    down: std::sync::Mutex<Option<String>>,
}

/// A misspelled URL is not a directory (found by hostile passes: `s3:/bucket`, `file:/x`,
/// `s3//bucket` and a quoted `~/cache` each made a local directory of that name, and the run
/// said it had uploaded to the remote cache). Checked before anything else looks at the URL.
pub fn check_url_shape(url: &str) -> Result<(), RemoteError> {
    const SCHEMES: &[&str] = &["s3", "file", "http", "https", "gs", "gcs", "az", "azure", "abfs", "ssh", "sftp", "hdfs", "webdav"];
    let bad = |message: String| Err(RemoteError::Config { url: url.into(), message });
    if !url.contains("://") {
        if let Some((sch, _)) = url.split_once(':') {
            if SCHEMES.contains(&sch.to_ascii_lowercase().as_str()) {
                return bad(format!("`{sch}:` without `//`: write s3://bucket/prefix or file:///path"));
            }
        }
        if let Some((sch, _)) = url.split_once("//") {
            if SCHEMES.contains(&sch.to_ascii_lowercase().as_str()) {
                return bad(format!("`{sch}//` without `:`: write s3://bucket/prefix or file:///path"));
            }
        }
    }
    if url.starts_with('~') {
        return bad("`~` is not expanded here (the shell expands it only unquoted, at the start of a word): give the full path".into());
    }
    let b = url.as_bytes();
    if b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\' {
        return bad("a Windows path: a remote is s3://bucket/prefix, file:///path or a directory path with `/`".into());
    }
    Ok(())
}

/// An object_store error that means the remote did not answer, not that it refused.
fn is_unreachable(msg: &str) -> bool {
    ["error sending request", "connect", "timed out", "Connection refused", "dns error", "operation timed out", "deadline has elapsed"].iter().any(|m| msg.contains(m))
}

/// The runtime remote I/O runs on: one per process, never dropped (a runtime may not be
/// dropped inside another's async context), so the sync API works from any thread.
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pipeline-remote")
            .enable_all()
            .build()
            .expect("starting the remote I/O runtime")
    })
}

fn on<F: std::future::Future>(f: F) -> F::Output {
    rt().block_on(f)
}

impl Remote {
    /// `s3://bucket/prefix`, `file:///path`, or a directory path.
    pub fn from_url(url: &str) -> Result<Remote, RemoteError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(RemoteError::Config { url: url.into(), message: "empty remote URL".into() });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (store, prefix) = s3::open(url, rest)?;
            return Ok(Remote::new(store, prefix, url));
        }
        check_url_shape(url)?;
        if url.contains("://") && !url.starts_with("file://") {
            return Err(RemoteError::Config {
                url: url.into(),
                message: "unsupported scheme: use s3://bucket/prefix, file:///path or a directory".into(),
            });
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if url.starts_with("file://") && !Path::new(path).is_absolute() {
            // `file://shared` would be a directory of the current one (not of the pipeline
            // file, as a plain relative directory is), and `file://` the current one itself.
            return Err(RemoteError::Config {
                url: url.into(),
                message: "a file:// URL needs an absolute path (file:///path); give a relative directory without file://".into(),
            });
        }
        let mut r = Remote::new(dir::open(url, Path::new(path))?, String::new(), url);
        r.root = Some(crate::cache::store::absolute(Path::new(path)));
        Ok(r)
    }

    /// [`Remote::from_url`], then one listing request under the prefix, so that a bucket that
    /// does not exist or credentials the server refuses are a clear error at once (a lookup
    /// would otherwise read them as "not cached", silently, on every stage), and an endpoint
    /// that does not answer costs one short wait instead of a retry budget per request.
    pub fn connect(url: &str) -> Result<Remote, RemoteError> {
        let r = Remote::from_url(url)?;
        r.probe()?;
        Ok(r)
    }

    /// The reachability check of [`Remote::connect`].
    pub fn probe(&self) -> Result<(), RemoteError> {
        let p = if self.prefix.is_empty() { None } else { Some(ObjPath::from(self.prefix.as_str())) };
        self.check_up()?;
        let res = on(async { tokio::time::timeout(std::time::Duration::from_secs(PROBE_SECS), self.store.list_with_delimiter(p.as_ref())).await });
        let e = match res {
            Ok(Ok(_)) => return Ok(()),
            // A directory remote whose prefix is not there yet is empty, not broken.
            Ok(Err(object_store::Error::NotFound { .. })) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(RemoteError::Unreachable { url: self.url.clone(), message: format!("no answer within {PROBE_SECS} s") });
            }
        };
        let msg = crate::text::clean(&e.to_string());
        let config = |why: &str| RemoteError::Config { url: self.url.clone(), message: format!("{why} ({})", crate::text::cap(&msg, 300)) };
        Err(if msg.contains("NoSuchBucket") {
            config("the bucket does not exist")
        } else if msg.contains("169.254.169.254") || msg.contains("instance metadata") {
            // object_store, finding no keys, asks the cloud instance metadata service
            config("no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials (without them the client asked the cloud instance metadata service)")
        } else if ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403 Forbidden", "401 Unauthorized"].iter().any(|m| msg.contains(m)) {
            config("the server refused the credentials")
        } else if ["error sending request", "connect", "timed out", "Connection refused", "dns error"].iter().any(|m| msg.contains(m)) {
            RemoteError::Unreachable { url: self.url.clone(), message: crate::text::cap(&msg, 300) }
        } else {
            config("listing failed")
        })
    }

    fn new(store: Arc<dyn ObjectStore>, prefix: String, url: &str) -> Remote {
        Remote { store, prefix: prefix.trim_matches('/').to_string(), url: url.to_string(), damaged: Default::default(), root: None, down: Default::default() }
    }

    /// `Err(Unreachable)` once a request of this process got no answer.
    fn check_up(&self) -> Result<(), RemoteError> {
        match self.down.lock().ok().and_then(|d| d.clone()) {
            Some(why) => Err(RemoteError::Unreachable { url: self.url.clone(), message: format!("{why}; not asked again in this process") }),
            None => Ok(()),
        }
    }

    fn path(&self, rel: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn err(&self, object: &str, e: impl std::fmt::Display) -> RemoteError {
        let message = crate::text::clean(&e.to_string());
        if self.root.is_none() && is_unreachable(&message) {
            let why = format!("{object}: no answer ({})", crate::text::cap(&message, 300));
            if let Ok(mut d) = self.down.lock() {
                d.get_or_insert(why.clone());
            }
            return RemoteError::Unreachable { url: self.url.clone(), message: why };
        }
        RemoteError::Object { remote: self.url.clone(), object: object.to_string(), message }
    }

    pub fn damaged(&self, object: &str, message: impl Into<String>) -> RemoteError {
        if let Ok(mut d) = self.damaged.lock() {
            d.insert(object.to_string());
        }
        RemoteError::Damaged { remote: self.url.clone(), object: object.to_string(), message: message.into() }
    }

    /// Whether the remote has an entry for `key` (present and not known to be damaged).
    pub fn has_entry(&self, key: &CacheKey) -> Result<bool, RemoteError> {
        Ok(self.present(&entry_path(key))?.is_some())
    }

    /// The size of the object `rel`, or `None` when it is missing or damaged (known to be, or
    /// a FIFO, device or directory at its name: uploaded again, over it).
    fn present(&self, rel: &str) -> Result<Option<u64>, RemoteError> {
        if self.known_damaged(rel) {
            return Ok(None);
        }
        match self.head(rel) {
            Err(RemoteError::Damaged { .. }) => Ok(None),
            other => other,
        }
    }

    /// Remember an object as damaged: its next upload overwrites it.
    pub fn mark_damaged(&self, object: &str) {
        if let Ok(mut d) = self.damaged.lock() {
            d.insert(object.to_string());
        }
    }

    pub fn put_manifest_overwrite(&self, m: &Manifest) -> Result<(), RemoteError> {
        self.put(&manifest_path(&m.digest()), serde_json::to_vec(m).unwrap_or_default(), true)
    }

    fn known_damaged(&self, object: &str) -> bool {
        self.damaged.lock().map(|d| d.contains(object)).unwrap_or(false)
    }

    /// An object of the remote, refusing (as damaged, before reading it) one above `cap` bytes.
    fn get_capped(&self, rel: &str, cap: u64) -> Result<Option<bytes::Bytes>, RemoteError> {
        self.check_up()?;
        if let Some(root) = &self.root {
            use std::io::Read;
            let Some((f, size)) = self.open_local(root, rel)? else { return Ok(None) };
            if size > cap {
                return Err(self.damaged(rel, format!("{size} bytes, more than such an object can be ({cap}); not read")));
            }
            let mut buf = Vec::with_capacity(size as usize);
            f.take(cap + 1).read_to_end(&mut buf).map_err(|e| self.err(rel, e))?;
            return Ok(Some(bytes::Bytes::from(buf)));
        }
        let p = self.path(rel);
        let got = on(async {
            let g = self.store.get(&p).await?;
            if g.meta.size > cap {
                return Ok(Err(g.meta.size));
            }
            g.bytes().await.map(Ok)
        });
        match got {
            Ok(Err(size)) => Err(self.damaged(rel, format!("{size} bytes, more than such an object can be ({cap}); not read"))),
            Ok(Ok(b)) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Create-if-absent unless `overwrite`; an object that is already there is success
    /// (content-addressed, or the same entry from a concurrent writer).
    fn put(&self, rel: &str, bytes: Vec<u8>, overwrite: bool) -> Result<(), RemoteError> {
        self.check_up()?;
        self.check_dirs(rel)?;
        self.clear_name(rel)?;
        let p = self.path(rel);
        let bytes = bytes::Bytes::from(bytes);
        let mode = if overwrite { PutMode::Overwrite } else { PutMode::Create };
        let opts = PutOptions { mode, ..Default::default() };
        match on(self.store.put_opts(&p, PutPayload::from(bytes.clone()), opts)) {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            // A backend without create-if-absent: a plain put (same content, or a newer
            // entry of the same key: both are fine).
            Err(object_store::Error::NotImplemented) if !overwrite => {
                on(self.store.put(&p, PutPayload::from(bytes))).map(|_| ()).map_err(|e| self.err(rel, e))
            }
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Upload a big file in parts, read [`PART_SIZE`] at a time (at most a few parts in memory).
    /// A failure aborts the upload, so no half object is ever visible under the name.
    fn put_multipart(&self, rel: &str, src: &Path, progress: &dyn Fn(u64)) -> Result<u64, RemoteError> {
        use std::io::Read;
        self.check_up()?;
        self.check_dirs(rel)?;
        self.clear_name(rel)?;
        let p = self.path(rel);
        let mut f = std::fs::File::open(src).map_err(|e| self.err(rel, format!("{}: {e}", src.display())))?;
        on(async {
            let upload = self.store.put_multipart(&p).await.map_err(|e| self.err(rel, e))?;
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            let mut n = 0u64;
            loop {
                let got = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(g) => g,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(self.err(rel, format!("{}: {e}", src.display())));
                    }
                };
                if let Err(e) = w.wait_for_capacity(4).await {
                    let _ = w.abort().await;
                    return Err(self.err(rel, e));
                }
                w.write(&buf[..got]);
                progress(got as u64);
                n += got as u64;
            }
            w.finish().await.map_err(|e| self.err(rel, e))?;
            Ok(n)
        })
    }

    fn head(&self, rel: &str) -> Result<Option<u64>, RemoteError> {
        self.check_up()?;
        if let Some(root) = &self.root {
            // stat, never open: a FIFO blocks the open (a plan or push hung on one)
            return match std::fs::symlink_metadata(root.join(rel)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.err(rel, e)),
                Ok(m) => self.local_kind(rel, &m).map(|()| Some(m.len())),
            };
        }
        let p = self.path(rel);
        match on(self.store.head(&p)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Every object under `rel` as (path relative to the prefix, size, age in seconds).
    pub fn list(&self, rel: &str) -> Result<Vec<(String, u64, u64)>, RemoteError> {
        self.check_up()?;
        let p = self.path(rel);
        let metas: Vec<object_store::ObjectMeta> = on(self.store.list(Some(&p)).try_collect()).map_err(|e| self.err(rel, e))?;
        let now = chrono::Utc::now();
        // As the store spells the prefix (object_store percent-encodes non-ASCII and some
        // ASCII characters, and drops empty segments): else nothing listed would match it.
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", ObjPath::from(self.prefix.as_str())) };
        Ok(metas
            .into_iter()
            .map(|m| {
                let loc = m.location.to_string();
                let rel = loc.strip_prefix(&strip).unwrap_or(&loc).to_string();
                (rel, m.size, (now - m.last_modified).num_seconds().max(0) as u64)
            })
            .collect())
    }

    /// On a directory remote, the first directory of `rel` (below the remote's directory) that
    /// is a symbolic link: listings follow links, so what is found through one may belong to
    /// something else (a local cache's `objects/`).
    pub fn link_in(&self, rel: &str) -> Option<String> {
        let root = self.root.as_ref()?;
        let parts: Vec<&str> = rel.split('/').collect();
        (1..parts.len()).map(|n| parts[..n].join("/")).find(|d| std::fs::symlink_metadata(root.join(d)).map(|m| m.file_type().is_symlink()).unwrap_or(false))
    }

    /// What a directory remote holds at an object's name, from its metadata (not followed):
    /// a regular file is an object; a link, FIFO, socket or device is damaged (not read, and
    /// the next upload replaces it); a directory cannot be replaced by an upload, and says so
    /// (found by a hostile pass: the warning promised a repair that every upload then failed).
    fn local_kind(&self, rel: &str, m: &std::fs::Metadata) -> Result<(), RemoteError> {
        let t = m.file_type();
        if t.is_file() {
            Ok(())
        } else if t.is_dir() {
            Err(RemoteError::Object {
                remote: self.url.clone(),
                object: rel.to_string(),
                message: "a directory where an object belongs: nothing is read from it, and no upload can replace it; remove it (the next upload of the object restores it)".into(),
            })
        } else if t.is_symlink() {
            Err(self.damaged(rel, "a symbolic link where an object belongs; not followed"))
        } else {
            Err(self.damaged(rel, "not a regular file; not read"))
        }
    }

    /// On a directory remote, the object `rel` opened for reading without following a link
    /// and without blocking, and checked on the open descriptor: a check of the path followed
    /// by an open of it could be raced (found by a hostile pass: a FIFO swapped in between
    /// hung the run with the cache locked). `None`: no such object.
    fn open_local(&self, root: &Path, rel: &str) -> Result<Option<(std::fs::File, u64)>, RemoteError> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC).open(root.join(rel)) {
            Ok(f) => {
                let m = f.metadata().map_err(|e| self.err(rel, e))?;
                self.local_kind(rel, &m)?;
                Ok(Some((f, m.len())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(self.damaged(rel, "a symbolic link where an object belongs; not followed")),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Before an upload to a directory remote: a link at the object's name (dangling, a loop,
    /// or pointing anywhere) is removed, never written through (a create-if-absent upload took
    /// a dangling one for the object and said it had uploaded); a directory there is refused.
    fn clear_name(&self, rel: &str) -> Result<(), RemoteError> {
        let Some(root) = &self.root else { return Ok(()) };
        let path = root.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&path).map_err(|e| self.err(rel, e)),
            Ok(m) if m.is_dir() => self.local_kind(rel, &m),
            _ => Ok(()),
        }
    }

    /// On a directory remote, refuse to write through a directory on the way to `rel` that is
    /// a symbolic link (`objects/07` linked elsewhere: a push replaced the files there);
    /// `gc --remote` refuses them too. The object itself may be a link: the write replaces it.
    fn check_dirs(&self, rel: &str) -> Result<(), RemoteError> {
        match self.link_in(rel) {
            Some(link) => Err(RemoteError::Config {
                url: self.url.clone(),
                message: format!("{link} is a symbolic link: nothing is written through a link in a directory remote (it may be another cache's); replace it with a directory"),
            }),
            None => Ok(()),
        }
    }

    /// On a directory remote, the partial uploads (`<name>#<n>`, object_store's temporary
    /// files) under the layout's directories that are older than `grace_secs`, as (path
    /// relative to the remote, size): a killed upload leaves one that nothing else removes
    /// (found by a hostile pass: 12 killed pushes of a 40 MB blob left 239 MB), and listings
    /// do not show them. Regular files only, found without following links.
    pub fn stale_uploads(&self, grace_secs: u64) -> Vec<(String, u64)> {
        let Some(root) = &self.root else { return Vec::new() };
        let now = std::time::SystemTime::now();
        let mut found = Vec::new();
        let mut dirs: Vec<String> = vec!["entries".into(), "manifests".into()];
        if let Ok(rd) = std::fs::read_dir(root.join("objects")) {
            if std::fs::symlink_metadata(root.join("objects")).is_ok_and(|m| m.is_dir()) {
                dirs.extend(rd.flatten().filter(|d| d.file_type().is_ok_and(|t| t.is_dir())).map(|d| format!("objects/{}", d.file_name().to_string_lossy())));
            }
        }
        for d in dirs {
            if !std::fs::symlink_metadata(root.join(&d)).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            for e in std::fs::read_dir(root.join(&d)).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Ok(m) = e.metadata() else { continue };
                let old = m.modified().ok().and_then(|t| now.duration_since(t).ok()).is_some_and(|a| a.as_secs() >= grace_secs);
                if name.contains('#') && m.is_file() && old {
                    found.push((format!("{d}/{name}"), m.len()));
                }
            }
        }
        found
    }

    /// Remove a partial upload [`Remote::stale_uploads`] found.
    pub fn remove_stale_upload(&self, rel: &str) -> Result<(), RemoteError> {
        let Some(root) = &self.root else { return Ok(()) };
        match std::fs::remove_file(root.join(rel)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    pub fn delete(&self, rel: &str) -> Result<(), RemoteError> {
        self.check_up()?;
        let p = self.path(rel);
        match on(self.store.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(rel, e)),
        }
    }
}

pub fn entry_path(key: &CacheKey) -> String {
    format!("entries/{}", key.0)
}
pub fn manifest_path(digest: &str) -> String {
    format!("manifests/{digest}")
}
pub fn blob_path(digest: &str) -> String {
    format!("objects/{}/{}", &digest[..2], &digest[2..])
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ArtifactStore for Remote {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn get_entry(&self, key: &CacheKey) -> Result<Option<Entry>, RemoteError> {
        let rel = entry_path(key);
        let Some(b) = self.get_capped(&rel, ENTRY_MAX)? else { return Ok(None) };
        let e: Entry = serde_json::from_slice(&b).map_err(|e| self.damaged(&rel, format!("not an entry: {e}")))?;
        if e.key != *key || !is_hex64(&e.output) {
            return Err(self.damaged(&rel, "names another key"));
        }
        // Its key inputs must be what the key is the hash of.
        if e.key_inputs.key() != *key {
            return Err(self.damaged(&rel, "its key inputs do not hash to its key"));
        }
        Ok(Some(e))
    }

    fn put_entry(&self, entry: &Entry) -> Result<(), RemoteError> {
        let rel = entry_path(&entry.key);
        let overwrite = self.known_damaged(&rel);
        self.put(&rel, serde_json::to_vec(entry).unwrap_or_default(), overwrite)?;
        if let Ok(mut d) = self.damaged.lock() {
            d.remove(&rel);
        }
        Ok(())
    }

    fn get_manifest(&self, digest: &str) -> Result<Option<Manifest>, RemoteError> {
        let rel = manifest_path(digest);
        let Some(b) = self.get_capped(&rel, MANIFEST_MAX)? else { return Ok(None) };
        let m: Manifest = serde_json::from_slice(&b).map_err(|e| self.damaged(&rel, format!("not a manifest: {e}")))?;
        if m.digest() != digest || m.files.iter().any(|f| !is_hex64(&f.digest)) {
            return Err(self.damaged(&rel, "its content does not hash to its name"));
        }
        if let Err(why) = m.check_paths() {
            return Err(self.damaged(&rel, format!("names {why}")));
        }
        Ok(Some(m))
    }

    fn put_manifest(&self, m: &Manifest) -> Result<(), RemoteError> {
        let d = m.digest();
        let rel = manifest_path(&d);
        let overwrite = self.known_damaged(&rel);
        self.put(&rel, serde_json::to_vec(m).unwrap_or_default(), overwrite)
    }

    fn has_blob(&self, digest: &str, size: u64) -> Result<bool, RemoteError> {
        Ok(self.present(&blob_path(digest))? == Some(size))
    }

    fn get_blob(&self, digest: &str, dst: &Path) -> Result<bool, RemoteError> {
        self.get_blob_counted(digest, dst, None, &|_| {})
    }

    fn put_blob(&self, digest: &str, src: &Path) -> Result<u64, RemoteError> {
        self.put_blob_counted(digest, src, &|_| {})
    }
}

impl Remote {
    /// [`ArtifactStore::get_blob`], calling `progress` with each chunk's size as it arrives.
    /// With `expect`, an object of another size is refused before its bytes are read (a blob
    /// that is far bigger than its manifest says never fills the disk).
    pub fn get_blob_counted(&self, digest: &str, dst: &Path, expect: Option<u64>, progress: &dyn Fn(u64)) -> Result<bool, RemoteError> {
        use std::io::Write;
        let rel = blob_path(digest);
        self.check_up()?;
        let p = self.path(&rel);
        if let Some(root) = &self.root {
            use std::io::Read;
            let Some((mut src, size)) = self.open_local(root, &rel)? else { return Ok(false) };
            if let Some(want) = expect.filter(|w| *w != size) {
                return Err(self.damaged(&rel, format!("{size} bytes, expected {want}; not downloaded")));
            }
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(dst).map_err(|e| self.err(&rel, format!("{}: {e}", dst.display())))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = src.read(&mut buf).map_err(|e| self.err(&rel, e))?;
                if n == 0 {
                    return Ok(true);
                }
                f.write_all(&buf[..n]).map_err(|e| self.err(&rel, format!("{}: {e}", dst.display())))?;
                progress(n as u64);
            }
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(dst).map_err(|e| self.err(&rel, format!("{}: {e}", dst.display())))?;
        let res: Result<bool, RemoteError> = on(async {
            let got = match self.store.get(&p).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(self.err(&rel, e)),
            };
            if let Some(want) = expect.filter(|w| *w != got.meta.size) {
                return Err(self.damaged(&rel, format!("{} bytes, expected {want}; not downloaded", got.meta.size)));
            }
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.try_next().await.map_err(|e| self.err(&rel, e))? {
                f.write_all(&chunk).map_err(|e| self.err(&rel, format!("{}: {e}", dst.display())))?;
                progress(chunk.len() as u64);
            }
            Ok(true)
        });
        res
    }

    /// [`ArtifactStore::put_blob`], calling `progress` with the bytes of each part sent.
    pub fn put_blob_counted(&self, digest: &str, src: &Path, progress: &dyn Fn(u64)) -> Result<u64, RemoteError> {
        let rel = blob_path(digest);
        let size = std::fs::metadata(src).map_err(|e| self.err(&rel, format!("{}: {e}", src.display())))?.len();
        // Overwrite: a blob is uploaded only when the remote lacks a good one.
        let n = if size > MULTIPART_ABOVE {
            self.put_multipart(&rel, src, progress)?
        } else {
            let bytes = std::fs::read(src).map_err(|e| self.err(&rel, format!("{}: {e}", src.display())))?;
            let n = bytes.len() as u64;
            self.put(&rel, bytes, true)?;
            progress(n);
            n
        };
        if let Ok(mut d) = self.damaged.lock() {
            d.remove(&rel);
        }
        Ok(n)
    }
}
