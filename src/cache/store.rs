//! sled trees, the blob store, views, the stat memo and the process lock.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::key::{canonical_json, CacheKey, KeyInputs};
use crate::stages::StageOutcome;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache {} is in use by pid {pid} ({command}); wait for it, or pass --wait", root.display())]
    Busy { root: PathBuf, pid: String, command: String },
    #[error("cache {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cache database {}: {source}", path.display())]
    Db { path: PathBuf, source: sled::Error },
    #[error("cache entry {0}: {1}")]
    Corrupt(String, String),
    #[error("no cache entry matches `{0}`")]
    NotFound(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path with `/` separators.
    pub path: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

/// The files of an artifact, sorted by path. Its digest is the artifact's digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn digest(&self) -> String {
        let v = serde_json::to_value(self).unwrap_or_default();
        blake3::hash(canonical_json(&v).as_bytes()).to_hex().to_string()
    }
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
    /// The part of the manifest under `sub/`, paths relative to it.
    pub fn subtree(&self, sub: &str) -> Manifest {
        let prefix = format!("{}/", sub.trim_end_matches('/'));
        let files = self
            .files
            .iter()
            .filter_map(|f| {
                if f.path == sub {
                    Some(FileEntry { path: f.path.rsplit('/').next().unwrap_or(&f.path).to_string(), ..f.clone() })
                } else {
                    f.path.strip_prefix(&prefix).map(|p| FileEntry { path: p.to_string(), ..f.clone() })
                }
            })
            .collect();
        Manifest { files }
    }
}

/// What sled records for a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub key: CacheKey,
    /// Name of the stage that produced it and its pipeline (informational: not in the key).
    pub stage: String,
    pub pipeline: String,
    pub key_inputs: KeyInputs,
    /// Input name -> where it came from (`stage augment`, `file data/x.csv`).
    #[serde(default)]
    pub input_sources: BTreeMap<String, String>,
    /// Digest of the output manifest.
    pub output: String,
    pub size: u64,
    pub files: usize,
    /// Unix seconds.
    pub created: u64,
    pub duration_ms: u64,
    pub run_id: u64,
    #[serde(default)]
    pub outcome: StageOutcome,
}

#[derive(Serialize, Deserialize)]
struct StatMemo {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    digest: String,
}

pub struct Cache {
    root: PathBuf,
    db: sled::Db,
    entries: sled::Tree,
    manifests: sled::Tree,
    last: sled::Tree,
    runs: sled::Tree,
    stat: sled::Tree,
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Cache {
    /// Open (creating) the cache at `root`. Only one process may have it open; a second gets
    /// [`CacheError::Busy`] naming the first, or waits for it with `wait`.
    pub fn open(root: &Path, wait: bool) -> Result<Self, CacheError> {
        for d in ["objects", "views", "tmp"] {
            fs::create_dir_all(root.join(d)).map_err(io_err(root))?;
        }
        // Stages run in other working directories: every path handed out must be absolute.
        let root = &fs::canonicalize(root).map_err(io_err(root))?;
        let db_path = root.join("db");
        let db = loop {
            // No background flusher: we flush at each commit, and its thread makes every exit wait.
            match sled::Config::new().path(&db_path).cache_capacity(16 << 20).flush_every_ms(None).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                    if wait {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    let info = fs::read_to_string(root.join("LOCK")).unwrap_or_default();
                    let mut lines = info.lines();
                    return Err(CacheError::Busy {
                        root: root.to_path_buf(),
                        pid: lines.next().unwrap_or("?").to_string(),
                        command: lines.next().unwrap_or("unknown command").to_string(),
                    });
                }
                Err(source) => return Err(CacheError::Db { path: db_path, source }),
            }
        };
        let cmd: Vec<String> = std::env::args().collect();
        let _ = fs::write(root.join("LOCK"), format!("{}\n{}\n", std::process::id(), cmd.join(" ")));
        let tree = |n: &str| db.open_tree(n).map_err(|source| CacheError::Db { path: db_path.clone(), source });
        Ok(Self {
            entries: tree("entries")?,
            manifests: tree("manifests")?,
            last: tree("last")?,
            runs: tree("runs")?,
            stat: tree("stat")?,
            root: root.to_path_buf(),
            db,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn db_err(&self) -> impl FnOnce(sled::Error) -> CacheError + '_ {
        move |source| CacheError::Db { path: self.root.join("db"), source }
    }

    pub fn flush(&self) -> Result<(), CacheError> {
        self.db.flush().map(|_| ()).map_err(self.db_err())
    }

    /// Remove leftovers of interrupted runs. Only safe while holding the cache lock.
    pub fn clear_tmp(&self) -> Result<(), CacheError> {
        let tmp = self.tmp_dir();
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("objects").join(&digest[..2]).join(&digest[2..])
    }

    // ---------- hashing ----------

    /// blake3 of a file's content, via the stat memo when (dev, inode, size, mtime) match.
    pub fn digest_file(&self, path: &Path) -> Result<String, CacheError> {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        let (dev, ino, mtime_ns) = stat_identity(&meta);
        let memo_key = path.to_string_lossy().as_bytes().to_vec();
        if let Ok(Some(v)) = self.stat.get(&memo_key) {
            if let Ok(m) = serde_json::from_slice::<StatMemo>(&v) {
                if m.dev == dev && m.ino == ino && m.size == meta.len() && m.mtime_ns == mtime_ns {
                    return Ok(m.digest);
                }
            }
        }
        let digest = hash_file(path)?;
        let memo = StatMemo { dev, ino, size: meta.len(), mtime_ns, digest: digest.clone() };
        let _ = self.stat.insert(memo_key, serde_json::to_vec(&memo).unwrap_or_default());
        Ok(digest)
    }

    /// A manifest of a directory on disk (every file below it, by content).
    pub fn digest_dir(&self, dir: &Path) -> Result<Manifest, CacheError> {
        let mut files = Vec::new();
        for (rel, abs) in walk_files(dir)? {
            let meta = fs::metadata(&abs).map_err(io_err(&abs))?;
            files.push(FileEntry { path: rel, digest: self.digest_file(&abs)?, size: meta.len(), executable: is_exec(&meta) });
        }
        Ok(Manifest { files })
    }

    // ---------- storing ----------

    /// Move every file under `dir` into the blob store (fsync, then rename) and return the
    /// manifest. `dir` must be on the cache's file system (it is: `tmp/`).
    pub fn store_dir(&self, dir: &Path) -> Result<Manifest, CacheError> {
        let mut files = Vec::new();
        for (rel, abs) in walk_files(dir)? {
            let meta = fs::symlink_metadata(&abs).map_err(io_err(&abs))?;
            let digest = hash_file(&abs)?;
            let blob = self.blob_path(&digest);
            if !blob.exists() {
                let parent = blob.parent().unwrap_or(&self.root);
                fs::create_dir_all(parent).map_err(io_err(parent))?;
                if meta.file_type().is_symlink() {
                    // A link out of OUT: store what it points to.
                    let tmp = self.tmp_dir().join(format!("blob-{digest}"));
                    fs::copy(&abs, &tmp).map_err(io_err(&abs))?;
                    finish_blob(&tmp, &blob)?;
                } else {
                    finish_blob(&abs, &blob)?;
                }
            }
            files.push(FileEntry { path: rel, digest, size: fs::metadata(&blob).map_err(io_err(&blob))?.len(), executable: is_exec(&meta) });
        }
        Ok(Manifest { files })
    }

    pub fn put_manifest(&self, m: &Manifest) -> Result<String, CacheError> {
        let d = m.digest();
        self.manifests.insert(d.as_bytes(), serde_json::to_vec(m).unwrap_or_default()).map_err(self.db_err())?;
        Ok(d)
    }

    pub fn manifest(&self, digest: &str) -> Result<Option<Manifest>, CacheError> {
        match self.manifests.get(digest.as_bytes()).map_err(self.db_err())? {
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| CacheError::Corrupt(digest.to_string(), e.to_string())),
            None => Ok(None),
        }
    }

    /// Record a stage result: manifest and entry in one sled transaction, then flush.
    /// Blobs must already be stored (see [`Cache::store_dir`]).
    pub fn commit(&self, entry: &Entry, manifest: &Manifest) -> Result<(), CacheError> {
        use sled::Transactional;
        let mbytes = serde_json::to_vec(manifest).unwrap_or_default();
        let ebytes = serde_json::to_vec(entry).unwrap_or_default();
        let last_key = last_key(&entry.pipeline, &entry.stage);
        (&self.manifests, &self.entries, &self.last)
            .transaction(|(m, e, l)| {
                m.insert(entry.output.as_bytes(), mbytes.as_slice())?;
                e.insert(entry.key.0.as_bytes(), ebytes.as_slice())?;
                l.insert(last_key.as_slice(), entry.key.0.as_bytes())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| CacheError::Corrupt(entry.key.0.clone(), format!("{e:?}")))?;
        self.flush()
    }

    /// Mark `key` as the current output of a stage (a cache hit).
    /// The value is `key NUL millis`: when a stage name is in several pipelines, a bare
    /// name resolves to the one set most recently.
    pub fn set_last(&self, pipeline: &str, stage: &str, key: &CacheKey) -> Result<(), CacheError> {
        let v = format!("{}\0{}", key.0, now_millis());
        self.last.insert(last_key(pipeline, stage), v.as_bytes()).map_err(self.db_err())?;
        Ok(())
    }

    pub fn last(&self, pipeline: &str, stage: &str) -> Option<CacheKey> {
        self.last.get(last_key(pipeline, stage)).ok().flatten().map(|v| parse_last(&v).0)
    }

    /// `(pipeline, key, set at millis)` of every pipeline's current output for `stage`,
    /// most recent first.
    pub fn lasts_for_stage(&self, stage: &str) -> Vec<(String, CacheKey, u64)> {
        let mut out: Vec<(String, CacheKey, u64)> = self
            .last
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(k, v)| {
                let mut parts = k.splitn(2, |b| *b == 0);
                let pipeline = String::from_utf8_lossy(parts.next()?).to_string();
                (parts.next()? == stage.as_bytes()).then(|| {
                    let (key, at) = parse_last(&v);
                    (pipeline, key, at)
                })
            })
            .collect();
        out.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        out
    }

    pub fn entry(&self, key: &CacheKey) -> Result<Option<Entry>, CacheError> {
        match self.entries.get(key.0.as_bytes()).map_err(self.db_err())? {
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| CacheError::Corrupt(key.0.clone(), e.to_string())),
            None => Ok(None),
        }
    }

    /// An entry whose blobs are all present (a quick size check, not a rehash).
    pub fn usable_entry(&self, key: &CacheKey) -> Result<Option<Entry>, CacheError> {
        let Some(e) = self.entry(key)? else { return Ok(None) };
        let Some(m) = self.manifest(&e.output)? else { return Ok(None) };
        for f in &m.files {
            match fs::metadata(self.blob_path(&f.digest)) {
                Ok(meta) if meta.len() == f.size => {}
                _ => return Ok(None),
            }
        }
        Ok(Some(e))
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.entries.iter().filter_map(|kv| kv.ok()).filter_map(|(_, v)| serde_json::from_slice(&v).ok()).collect()
    }

    /// Find entries by key prefix or by stage name (newest first).
    pub fn find(&self, what: &str) -> Result<Vec<Entry>, CacheError> {
        let mut found: Vec<Entry> = self.entries().into_iter().filter(|e| e.key.0.starts_with(what) || e.stage == what).collect();
        found.sort_by(|a, b| b.created.cmp(&a.created));
        if found.is_empty() {
            return Err(CacheError::NotFound(what.to_string()));
        }
        Ok(found)
    }

    /// The entry for `PIPELINE/STAGE`, a stage name (the output of the pipeline that ran it
    /// most recently) or a key prefix (newest first).
    pub fn resolve(&self, what: &str) -> Result<Entry, CacheError> {
        if let Some((pipeline, stage)) = what.split_once('/') {
            if let Some(k) = self.last(pipeline, stage) {
                if let Some(e) = self.entry(&k)? {
                    return Ok(e);
                }
            }
        }
        for (_, k, _) in self.lasts_for_stage(what) {
            if let Some(e) = self.entry(&k)? {
                return Ok(e);
            }
        }
        let found = self.find(what)?;
        let keys: BTreeSet<&str> = found.iter().map(|e| e.key.0.as_str()).collect();
        if keys.len() > 1 && found.iter().all(|e| e.stage != what) {
            return Err(CacheError::Corrupt(what.to_string(), format!("ambiguous: {} keys start with it", keys.len())));
        }
        Ok(found.into_iter().next().expect("find returns at least one"))
    }

    /// A directory with the artifact's files (hard links to blobs), built once per digest.
    pub fn view(&self, output: &str) -> Result<PathBuf, CacheError> {
        let dir = self.root.join("views").join(output);
        if dir.is_dir() {
            return Ok(dir);
        }
        let m = self.manifest(output)?.ok_or_else(|| CacheError::NotFound(output.to_string()))?;
        let tmp = self.tmp_dir().join(format!("view-{output}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        for f in &m.files {
            let dst = tmp.join(&f.path);
            if let Some(p) = dst.parent() {
                fs::create_dir_all(p).map_err(io_err(p))?;
            }
            let blob = self.blob_path(&f.digest);
            if fs::hard_link(&blob, &dst).is_err() {
                fs::copy(&blob, &dst).map_err(io_err(&blob))?;
            }
        }
        match fs::rename(&tmp, &dir) {
            Ok(()) => Ok(dir),
            Err(_) if dir.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(dir)
            }
            Err(e) => Err(CacheError::Io { path: dir, source: e }),
        }
    }

    /// Copy an artifact's files out of the cache (writable copies, not links).
    pub fn export(&self, output: &str, dest: &Path) -> Result<usize, CacheError> {
        let m = self.manifest(output)?.ok_or_else(|| CacheError::NotFound(output.to_string()))?;
        for f in &m.files {
            let dst = dest.join(&f.path);
            if let Some(p) = dst.parent() {
                fs::create_dir_all(p).map_err(io_err(p))?;
            }
            let _ = fs::remove_file(&dst);
            fs::copy(self.blob_path(&f.digest), &dst).map_err(io_err(&dst))?;
            let mut perm = fs::metadata(&dst).map_err(io_err(&dst))?.permissions();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                perm.set_mode(if f.executable { 0o755 } else { 0o644 });
            }
            fs::set_permissions(&dst, perm).map_err(io_err(&dst))?;
        }
        Ok(m.files.len())
    }

    // ---------- runs ----------

    /// 1, 2, 3... (sled's generate_id jumps by a million after each reopen).
    pub fn next_run_id(&self) -> Result<u64, CacheError> {
        let last = self.runs.last().map_err(self.db_err())?;
        Ok(last.map(|(k, _)| u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]))).unwrap_or(0) + 1)
    }

    pub fn put_run<T: Serialize>(&self, id: u64, run: &T) -> Result<(), CacheError> {
        self.runs.insert(id.to_be_bytes(), serde_json::to_vec(run).unwrap_or_default()).map_err(self.db_err())?;
        self.flush()
    }

    pub fn runs<T: for<'de> Deserialize<'de>>(&self) -> Vec<T> {
        self.runs.iter().filter_map(|kv| kv.ok()).filter_map(|(_, v)| serde_json::from_slice(&v).ok()).collect()
    }

    pub fn run<T: for<'de> Deserialize<'de>>(&self, id: u64) -> Option<T> {
        self.runs.get(id.to_be_bytes()).ok().flatten().and_then(|v| serde_json::from_slice(&v).ok())
    }

    // ---------- maintenance ----------

    /// Drop entries not in `keep` (when given), then every manifest, view and blob that no
    /// remaining entry reaches, and temp leftovers. Returns (entries removed, bytes freed).
    pub fn gc(&self, keep: Option<&HashSet<String>>) -> Result<(usize, u64), CacheError> {
        let mut removed = 0;
        let lasts: HashSet<String> = self.last.iter().filter_map(|kv| kv.ok()).map(|(_, v)| String::from_utf8_lossy(&v).to_string()).collect();
        if let Some(keep) = keep {
            for e in self.entries() {
                if !keep.contains(&e.key.0) && !lasts.contains(&e.key.0) {
                    self.entries.remove(e.key.0.as_bytes()).map_err(self.db_err())?;
                    removed += 1;
                }
            }
        }
        let live_manifests: HashSet<String> = self.entries().into_iter().map(|e| e.output).collect();
        let mut live_blobs = HashSet::new();
        for kv in self.manifests.iter() {
            let (k, v) = kv.map_err(self.db_err())?;
            let d = String::from_utf8_lossy(&k).to_string();
            if live_manifests.contains(&d) {
                if let Ok(m) = serde_json::from_slice::<Manifest>(&v) {
                    live_blobs.extend(m.files.into_iter().map(|f| f.digest));
                }
            } else {
                self.manifests.remove(&k).map_err(self.db_err())?;
            }
        }
        self.flush()?;
        let mut freed = 0;
        for (digest, path, size) in self.blobs()? {
            if !live_blobs.contains(&digest) {
                freed += size;
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        let views = self.root.join("views");
        for d in fs::read_dir(&views).map_err(io_err(&views))?.flatten() {
            if !live_manifests.contains(&d.file_name().to_string_lossy().to_string()) {
                let _ = fs::remove_dir_all(d.path());
            }
        }
        self.clear_tmp()?;
        Ok((removed, freed))
    }

    fn blobs(&self) -> Result<Vec<(String, PathBuf, u64)>, CacheError> {
        let mut out = Vec::new();
        let objects = self.root.join("objects");
        for d in fs::read_dir(&objects).map_err(io_err(&objects))?.flatten() {
            let prefix = d.file_name().to_string_lossy().to_string();
            for f in fs::read_dir(d.path()).map_err(io_err(&d.path()))?.flatten() {
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((format!("{prefix}{}", f.file_name().to_string_lossy()), f.path(), size));
            }
        }
        Ok(out)
    }

    /// Rehash every blob; delete bad ones and drop the entries that needed them.
    /// Returns (blobs checked, bad blobs, entries dropped).
    pub fn verify(&self) -> Result<(usize, Vec<String>, Vec<Entry>), CacheError> {
        let blobs = self.blobs()?;
        let mut bad = Vec::new();
        for (digest, path, _) in &blobs {
            if hash_file(path)? != *digest {
                bad.push(digest.clone());
                let _ = fs::remove_file(path);
            }
        }
        let mut dropped = Vec::new();
        for e in self.entries() {
            let ok = match self.manifest(&e.output) {
                Ok(Some(m)) => m.files.iter().all(|f| self.blob_path(&f.digest).is_file() && !bad.contains(&f.digest)),
                _ => false,
            };
            if !ok {
                self.entries.remove(e.key.0.as_bytes()).map_err(self.db_err())?;
                let _ = fs::remove_dir_all(self.root.join("views").join(&e.output));
                dropped.push(e);
            }
        }
        self.flush()?;
        Ok((blobs.len(), bad, dropped))
    }
}

/// `key NUL millis`, or a bare key (caches written before the timestamp: time 0).
fn parse_last(v: &[u8]) -> (CacheKey, u64) {
    let mut parts = v.splitn(2, |b| *b == 0);
    let key = String::from_utf8_lossy(parts.next().unwrap_or_default()).to_string();
    let at = parts.next().and_then(|t| std::str::from_utf8(t).ok()?.parse().ok()).unwrap_or(0);
    (CacheKey(key), at)
}

fn last_key(pipeline: &str, stage: &str) -> Vec<u8> {
    let mut k = pipeline.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(stage.as_bytes());
    k
}

fn is_lock_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.to_string().contains("lock")
}

fn finish_blob(src: &Path, blob: &Path) -> Result<(), CacheError> {
    File::open(src).and_then(|f| f.sync_all()).map_err(io_err(src))?;
    let mut perm = fs::metadata(src).map_err(io_err(src))?.permissions();
    perm.set_readonly(true);
    let _ = fs::set_permissions(src, perm);
    fs::rename(src, blob).map_err(io_err(blob))?;
    if let Some(parent) = blob.parent() {
        // Make the rename itself durable.
        let _ = File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(())
}

pub fn hash_file(path: &Path) -> Result<String, CacheError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Every file below `dir` (following symlinks), as (relative path with '/', absolute path), sorted.
pub fn walk_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, CacheError> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((rel, abs)) = stack.pop() {
        for d in fs::read_dir(&abs).map_err(io_err(&abs))? {
            let d = d.map_err(io_err(&abs))?;
            let name = d.file_name().to_string_lossy().to_string();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let p = d.path();
            let meta = fs::metadata(&p).map_err(io_err(&p))?;
            if meta.is_dir() {
                stack.push((r, p));
            } else {
                out.push((r, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(unix)]
fn stat_identity(m: &fs::Metadata) -> (u64, u64, i128) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128)
}

#[cfg(unix)]
fn is_exec(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_for(cache: &Cache, dir: &Path, stage: &str, n: u32) -> (Entry, Manifest) {
        let m = cache.store_dir(dir).unwrap();
        let ki = KeyInputs::new("command", 1, &serde_json::json!({ "n": n }));
        let e = Entry {
            key: ki.key(),
            stage: stage.into(),
            pipeline: "p".into(),
            key_inputs: ki,
            input_sources: BTreeMap::new(),
            output: m.digest(),
            size: m.size(),
            files: m.files.len(),
            created: now_secs(),
            duration_ms: 1,
            run_id: 1,
            outcome: StageOutcome::default(),
        };
        (e, m)
    }

    #[test]
    fn store_commit_view_roundtrip_and_dedup() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path(), false).unwrap();
        let out = cache.tmp_dir().join("o");
        fs::create_dir_all(out.join("sub")).unwrap();
        fs::write(out.join("a.txt"), "hello").unwrap();
        fs::write(out.join("sub/b.txt"), "hello").unwrap();
        let (e, m) = entry_for(&cache, &out, "a", 1);
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[0].digest, m.files[1].digest, "same content, same blob");
        cache.commit(&e, &m).unwrap();
        assert!(cache.usable_entry(&e.key).unwrap().is_some());
        assert_eq!(cache.last("p", "a"), Some(e.key.clone()));
        let v = cache.view(&e.output).unwrap();
        assert_eq!(fs::read_to_string(v.join("sub/b.txt")).unwrap(), "hello");
        assert_eq!(m.subtree("sub").files[0].path, "b.txt");
    }

    #[test]
    fn second_open_reports_busy_with_pid() {
        let root = tempfile::tempdir().unwrap();
        let _a = Cache::open(root.path(), false).unwrap();
        // sled's lock is per process on some platforms; a child process tests the real case in tests/.
        if let Err(e) = Cache::open(root.path(), false) {
            assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
        }
    }

    #[test]
    fn verify_drops_entries_with_corrupt_blobs_and_gc_frees_orphans() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path(), false).unwrap();
        let out = cache.tmp_dir().join("o");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("a.txt"), "payload").unwrap();
        let (e, m) = entry_for(&cache, &out, "a", 1);
        cache.commit(&e, &m).unwrap();
        let blob = cache.blob_path(&m.files[0].digest);
        let mut p = fs::metadata(&blob).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        p.set_readonly(false);
        fs::set_permissions(&blob, p).unwrap();
        fs::write(&blob, "tampered").unwrap();
        let (checked, bad, dropped) = cache.verify().unwrap();
        assert_eq!((checked, bad.len(), dropped.len()), (1, 1, 1));
        assert!(cache.entry(&e.key).unwrap().is_none());

        // An orphan blob (as after a crash between blob and entry) is freed by gc.
        let out2 = cache.tmp_dir().join("o2");
        fs::create_dir_all(&out2).unwrap();
        fs::write(out2.join("x"), "orphan").unwrap();
        cache.store_dir(&out2).unwrap();
        let (_, freed) = cache.gc(None).unwrap();
        assert_eq!(freed, 6);
    }

    #[test]
    fn stat_memo_notices_content_changes() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path(), false).unwrap();
        let f = root.path().join("input.txt");
        fs::write(&f, "one").unwrap();
        let a = cache.digest_file(&f).unwrap();
        assert_eq!(cache.digest_file(&f).unwrap(), a);
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&f, "two").unwrap();
        assert_ne!(cache.digest_file(&f).unwrap(), a);
    }
}
