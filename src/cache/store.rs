//! sled trees, the blob store, views, the stat memo and the process lock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::key::{canonical_json, CacheKey, KeyInputs};
use super::outcome::StageOutcome;

// In its own file so `ingest` (which `store` calls) need not import `store`.
use super::error::CacheError;
use crate::regular::read_regular;

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

/// The longest file path an artifact may hold (bytes, relative to the artifact): a view puts
/// it under the cache's `views/<digest>/`, and the whole must stay under PATH_MAX (4096).
pub const MAX_PATH: usize = 3000;
/// The most parts a file path of an artifact may have.
pub const MAX_DEPTH: usize = 256;

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
        // saturating: a forged manifest's sizes can sum past u64 (a wrapped sum looked small)
        self.files.iter().fold(0u64, |t, f| t.saturating_add(f.size))
    }
    /// `Err(what)` for the first file path that is not a plain relative path (absolute, `..`,
    /// `.`, empty parts, backslashes, NUL), or that no file system holds (a part over 255
    /// bytes, the whole over [`MAX_PATH`] bytes or [`MAX_DEPTH`] parts), and for a blob listed
    /// twice with two sizes: such a manifest (from a damaged or hostile remote) would write
    /// outside a view or an export directory, or wedge every later run (found by a hostile
    /// pass: a pulled 300-byte name failed every run after it, `cache verify` found nothing).
    pub fn check_paths(&self) -> Result<(), String> {
        let shown = |p: &str| format!("the path {:?}", crate::text::cap(p, 200));
        let mut sizes: HashMap<&str, u64> = HashMap::new();
        for (i, f) in self.files.iter().enumerate() {
            let p = f.path.as_str();
            let bad = p.is_empty()
                || p.starts_with('/')
                || p.contains('\\')
                || p.chars().any(|c| c.is_control())
                || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
            if bad {
                return Err(format!("{}, which is not a plain relative path", shown(p)));
            }
            if p.len() > MAX_PATH || p.split('/').count() > MAX_DEPTH || p.split('/').any(|c| c.len() > 255) {
                return Err(format!("{}, longer than a file system holds (parts of at most 255 bytes, at most {MAX_DEPTH} parts and {MAX_PATH} bytes)", shown(p)));
            }
            if *sizes.entry(f.digest.as_str()).or_insert(f.size) != f.size {
                return Err(format!("the blob {} twice with two sizes", f.digest));
            }
            // Sorted, unique, and no file that is also a directory of another (`a` and `a/b`).
            if let Some(next) = self.files.get(i + 1) {
                if next.path.as_str() <= p || next.path.starts_with(&format!("{p}/")) {
                    return Err(format!("{}, out of order, twice, or both a file and a directory", shown(&next.path)));
                }
            }
            if self.files[i + 1..].iter().take_while(|n| n.path.starts_with(p)).any(|n| n.path.starts_with(&format!("{p}/"))) {
                return Err(format!("{}, both a file and a directory", shown(p)));
            }
        }
        Ok(())
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
    /// A write with the mtime set back moves the ctime (found by a hostile pass: an edited
    /// input with its mtime restored kept its old digest). Memos of older builds have none:
    /// they never match, and the file is hashed once more.
    #[serde(default)]
    ctime_ns: i128,
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

/// Largest run id (a file `runs/<id>.json` above it is somebody else's).
pub const MAX_RUN_ID: u64 = 1 << 48;

/// The run records in `runs/` (the copies every run writes beside the database), oldest
/// first: id, bytes as written, JSON. Regular files only, ids up to [`MAX_RUN_ID`]; anything
/// else there is not a record (a FIFO hung the rebuild, and the web view's plan page).
fn run_files(root: &Path) -> Vec<(u64, Vec<u8>, serde_json::Value)> {
    let mut runs: Vec<(u64, Vec<u8>, serde_json::Value)> = fs::read_dir(root.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|f| {
            let id: u64 = f.file_name().to_str()?.strip_suffix(".json")?.parse().ok().filter(|&id| id <= MAX_RUN_ID)?;
            let bytes = read_regular(&f.path(), 64 << 20)?;
            let json = serde_json::from_slice(&bytes).ok()?;
            Some((id, bytes, json))
        })
        .collect();
    runs.sort_by_key(|r| r.0);
    runs
}

/// The records in `index/` (each entry and its manifest, written beside every commit), and
/// how many files there are none (unreadable, or not a regular file).
fn index_files(root: &Path) -> Result<(Vec<IndexRecord>, usize), CacheError> {
    let dir = root.join("index");
    let (mut records, mut unreadable) = (Vec::new(), 0);
    for f in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
        match read_regular(&f.path(), 256 << 20).and_then(|b| serde_json::from_slice::<IndexRecord>(&b).ok()) {
            Some(r) => records.push(r),
            None => unreadable += 1,
        }
    }
    Ok((records, unreadable))
}

/// Each stage's current output as the runs say, oldest run first (so the newest wins when
/// applied in order): (pipeline, stage, key) for every stage with an output, a hit or a
/// commit, what `set_last` records.
fn lasts_in(runs: &[(u64, Vec<u8>, serde_json::Value)]) -> Vec<(String, String, CacheKey)> {
    let mut out = Vec::new();
    for (_, _, r) in runs {
        let pipeline = r["pipeline"].as_str().unwrap_or_default();
        for st in r["stages"].as_array().into_iter().flatten() {
            if let (Some(stage), Some(key), true) = (st["name"].as_str(), st["key"].as_str(), st["output"].is_string()) {
                out.push((pipeline.to_string(), stage.to_string(), CacheKey(key.to_string())));
            }
        }
    }
    out
}

impl Cache {
    /// Open (creating) the cache at `root`. Only one process may have it open; a second gets
    /// [`CacheError::Busy`] naming the first, or waits for it with `wait`.
    pub fn open(root: &Path, wait: bool) -> Result<Self, CacheError> {
        Self::open_inner(root, wait, None)
    }

    /// Records in `index/` and in `runs/` beside a database without entries: a database that
    /// was lost (a first commit killed between its index record and the database leaves a
    /// record, but no run record: that cache opens, and `gc` clears the record; found by a
    /// hostile pass, which locked such a cache out).
    fn lost_history(root: &Path) -> bool {
        let runs = fs::read_dir(root.join("runs")).map(|rd| rd.flatten().any(|f| f.file_name().to_string_lossy().ends_with(".json"))).unwrap_or(false);
        runs && Self::indexed(root) > 0
    }

    /// Entries recorded in `index/` (one file each, written beside every commit).
    fn indexed(root: &Path) -> usize {
        fs::read_dir(root.join("index")).map(|rd| rd.flatten().filter(|f| f.file_name().to_string_lossy().ends_with(".json")).count()).unwrap_or(0)
    }

    /// `rebuild_into`: open the database at that name instead of `db/` (a rebuild fills it and
    /// renames it into place once complete), without the checks on `db/`.
    fn open_inner(root: &Path, wait: bool, rebuild_into: Option<&str>) -> Result<Self, CacheError> {
        // `--cache .` or `--cache ~` would empty the directory's `tmp/` and `views/`; so would a
        // project that happens to have an `objects/` (a hostile pass: `tmp/`, `index/` and
        // `views/` of such a directory were emptied; `--cache repo/.git` failed obscurely).
        // A cache is a directory this program tagged, or one an earlier build made (a sled
        // database in `db/`, or `index/` records beside `objects/`); anything else must be
        // empty (hidden files aside) to become one.
        let tagged = is_tagged_cache(root);
        if !tagged {
            let foreign = fs::read_dir(root).map(|rd| rd.flatten().any(|d| !d.file_name().to_string_lossy().starts_with('.'))).unwrap_or(false);
            if foreign && !is_legacy_cache(root) {
                return Err(CacheError::Refused(format!(
                    "{} is not a pipeline cache (no {TAG} of this program's, nor a cache's database or records) and is not empty: refusing to use it as one; pass --cache with a new or empty directory",
                    root.display()
                )));
            }
        }
        // Its own directories must be real ones: `gc` and `verify` delete inside them, and a
        // link would send that into its target (a hostile pass: the files of a linked
        // `views/` or `index/` were deleted).
        for d in ["db", "objects", "views", "tmp", "index", "runs", TAG, "LOCK"] {
            if fs::symlink_metadata(root.join(d)).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(CacheError::Refused(format!(
                    "{}: a symbolic link; a cache's own directories and files must not be links (what the cache deletes there would be deleted in the link's target): move the cache, or --cache the directory it points into",
                    root.join(d).display()
                )));
            }
        }
        // What is at the tag's and the lock's names must be a regular file (a FIFO there
        // blocked every command on the write below; found by a hostile pass).
        for f in [TAG, "LOCK"] {
            if fs::symlink_metadata(root.join(f)).is_ok_and(|m| !m.is_file()) {
                return Err(CacheError::Refused(format!("{}: not a regular file; a cache's own files must be (remove it)", root.join(f).display())));
            }
        }
        if fs::symlink_metadata(root.join(TAG)).is_ok() && !tagged {
            return Err(CacheError::Refused(format!("{}: a file of that name that this program did not write (a cache directory tag of another program?): refusing to use the directory as a cache", root.join(TAG).display())));
        }
        for d in ["objects", "views", "tmp", "index"] {
            fs::create_dir_all(root.join(d)).map_err(io_err(root))?;
        }
        // Stages run in other working directories: every path handed out must be absolute.
        let root = &fs::canonicalize(root).map_err(io_err(root))?;
        let db_path = root.join(rebuild_into.unwrap_or("db"));
        // found by a hostile pass: with db/ gone, an empty one was made, every entry looked
        // absent, `verify --rebuild` said "nothing to rebuild", and the next run's id 1
        // overwrote the history's runs/1.json
        let lost = |what: &str| {
            CacheError::Refused(format!(
                "{}: the database (db/) {what} but index/ records {} entries: run `pipeline --cache {} cache verify --rebuild` to restore them from it",
                root.display(),
                Self::indexed(root),
                root.display()
            ))
        };
        // A `cache verify --rebuild` in progress holds `db.rebuilding/` and has moved or will
        // move `db/`: wait for it (`--wait`) or say so, rather than call the database lost.
        // A rebuild closes its database just before renaming it to `db/`: with `--wait`, a
        // missing `db/` beside `db.rebuilding/` is given a few seconds to appear (a rebuild
        // killed half-way leaves that directory for good, and the error below then says so).
        let mut grace = 25;
        while rebuild_into.is_none() {
            if rebuilding(root) {
                if !wait {
                    return Err(busy(root));
                }
            } else if !(wait && grace > 0 && !db_path.exists() && root.join("db.rebuilding").is_dir()) {
                break;
            } else {
                grace -= 1;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if rebuild_into.is_none() && !db_path.exists() && Self::lost_history(root) {
            return Err(lost("is missing"));
        }
        let db = loop {
            // No background flusher: we flush at each commit, and its thread makes every exit wait.
            match sled::Config::new().path(&db_path).cache_capacity(16 << 20).flush_every_ms(None).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                    if wait {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    return Err(busy(root));
                }
                Err(source) => return Err(CacheError::DbDamaged { path: db_path, source }),
            }
        };
        // Tagged once the database has opened: a directory whose `db/` is not a sled database
        // must not become a cache by a failed open (found by a hostile pass).
        if !tagged {
            let tag = root.join(TAG);
            fs::write(&tag, TAG_TEXT).map_err(io_err(&tag))?;
        }
        // args_os: a non-UTF-8 argument (a directory name) panicked in args()
        let cmd: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
        // redacted: a secret passed on the command line must not sit in a world-readable file
        let _ = fs::write(root.join("LOCK"), format!("{}\n{}\n", std::process::id(), crate::text::redact(&cmd.join(" "))));
        let tree = |n: &str| db.open_tree(n).map_err(|source| CacheError::Db { path: db_path.clone(), source });
        // An empty database beside records: db/ emptied, or made before the check above.
        if rebuild_into.is_none() && tree("entries")?.is_empty() && Self::lost_history(root) {
            return Err(lost("holds no entry"));
        }
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
        let _ = super::ingest::remove_tree(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))
    }

    fn index_path(&self, key: &CacheKey) -> PathBuf {
        self.root.join("index").join(format!("{}.json", key.0))
    }

    /// Drop an entry from sled and its record from `index/`.
    fn remove_entry(&self, key: &CacheKey) -> Result<(), CacheError> {
        self.entries.remove(key.0.as_bytes()).map_err(self.db_err())?;
        let _ = fs::remove_file(self.index_path(key));
        Ok(())
    }

    /// Move a damaged database aside and rebuild entries, manifests and current outputs from
    /// `index/`, keeping only records whose blobs are all present and hash right. Run history
    /// and the stat memo start empty. Returns (entries restored, records skipped).
    pub fn rebuild(root: &Path) -> Result<(usize, usize), CacheError> {
        // found by a hostile pass: pointed at a directory that is no cache, the check below
        // made a db/ there, and the next run took it for one (emptying its tmp/)
        if !["index", "objects"].iter().any(|d| root.join(d).is_dir()) || !(is_tagged_cache(root) || is_legacy_cache(root)) {
            return Err(CacheError::Refused(format!("{}: not a pipeline cache (no cache tag, nor a cache's records): nothing to rebuild", root.display())));
        }
        let db = root.join("db");
        // The probe below makes an empty db/ where there was none: that one is removed, not
        // "moved aside as damaged".
        let had_db = db.exists();
        // Only a database that cannot be opened, or one with no entry beside index/ records,
        // is rebuilt; one in use is never touched.
        match sled::Config::new().path(&db).flush_every_ms(None).open() {
            Ok(d) if d.open_tree("entries").map(|t| t.is_empty()).unwrap_or(false) && Self::indexed(root) > 0 => drop(d),
            Ok(d) => {
                drop(d);
                return Err(CacheError::Refused(format!("{}: the database opens fine: nothing to rebuild (`pipeline cache verify` checks the blobs)", db.display())));
            }
            Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                return Err(busy(root));
            }
            Err(_) => {}
        }
        // Built aside and renamed into place when complete: a rebuild killed half-way (it
        // rehashes every blob) must not leave a db/ that holds only some of the entries, which
        // `cache gc` would then take the others for garbage.
        const BUILDING: &str = "db.rebuilding";
        let building = root.join(BUILDING);
        // only our own directory: a link there sent the rebuild into its target
        if let Ok(m) = fs::symlink_metadata(&building) {
            if !m.is_dir() {
                return Err(CacheError::Refused(format!("{}: not a directory a rebuild made (a link or a file): remove it, then rebuild", building.display())));
            }
        }
        match sled::Config::new().path(&building).flush_every_ms(None).open() {
            Err(sled::Error::Io(e)) if is_lock_error(&e) => return Err(busy(root)),
            _ => {}
        }
        if building.exists() {
            fs::remove_dir_all(&building).map_err(io_err(&building))?;
        }
        let cache = Cache::open_inner(root, false, Some(BUILDING))?;
        let (mut restored, mut skipped) = (0, 0);
        // The run history, from the copies every run writes beside the database.
        let runs = run_files(&cache.root);
        for (id, bytes, _) in &runs {
            cache.runs.insert(id.to_be_bytes(), bytes.as_slice()).map_err(cache.db_err())?;
        }
        let (mut records, unreadable) = index_files(&cache.root)?;
        skipped += unreadable;
        records.sort_by_key(|r| r.entry.created);
        let mut unusable = Vec::new();
        for r in records {
            let ok = r.manifest.digest() == r.entry.output
                && r.manifest.files.iter().all(|f| hash_file(&cache.blob_path(&f.digest)).ok().as_deref() == Some(f.digest.as_str()));
            if ok {
                cache.commit(&r.entry, &r.manifest)?;
                restored += 1;
            } else {
                skipped += 1;
                unusable.push(cache.index_path(&r.entry.key));
            }
        }
        // Each stage's current output is what the newest run used (found by a hostile pass:
        // the newest *created* entry was taken, and `gc --keep-last 0` deleted the one in use).
        for (pipeline, stage, key) in lasts_in(&runs) {
            if cache.entries.contains_key(key.0.as_bytes()).unwrap_or(false) {
                cache.set_last(&pipeline, &stage, &key)?;
            }
        }
        cache.flush()?;
        drop(cache);
        // Records nothing can be restored from (their blobs gone or damaged) are set aside, not
        // left to lock the cache out for ever (found by a hostile pass).
        if !unusable.is_empty() {
            let aside = root.join(format!("index.skipped-{}", now_millis()));
            fs::create_dir_all(&aside).map_err(io_err(&aside))?;
            for p in &unusable {
                if let Some(name) = p.file_name() {
                    let _ = fs::rename(p, aside.join(name));
                }
            }
            eprintln!("set aside {} index records whose files are gone or damaged in {}", unusable.len(), aside.display());
        }
        if db.exists() && !had_db {
            fs::remove_dir_all(&db).map_err(io_err(&db))?;
        } else if db.exists() {
            let aside = root.join(format!("db.broken-{}", now_millis()));
            fs::rename(&db, &aside).map_err(io_err(&db))?;
            eprintln!("moved the damaged database to {}", aside.display());
        }
        fs::rename(&building, &db).map_err(io_err(&building))?;
        Ok((restored, skipped))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("objects").join(&digest[..2]).join(&digest[2..])
    }

    // ---------- hashing ----------

    /// blake3 of a file's content, via the stat memo when (dev, inode, size, mtime) match.
    pub fn digest_file(&self, path: &Path) -> Result<String, CacheError> {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        let (dev, ino, mtime_ns) = stat_identity(&meta);
        let ctime_ns = file_state(&meta).ctime_ns;
        let memo_key = path.to_string_lossy().as_bytes().to_vec();
        if let Ok(Some(v)) = self.stat.get(&memo_key) {
            if let Ok(m) = serde_json::from_slice::<StatMemo>(&v) {
                if m.dev == dev && m.ino == ino && m.size == meta.len() && m.mtime_ns == mtime_ns && m.ctime_ns == ctime_ns {
                    return Ok(m.digest);
                }
            }
        }
        let digest = hash_file(path)?;
        let memo = StatMemo { dev, ino, size: meta.len(), mtime_ns, ctime_ns, digest: digest.clone() };
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

    /// Take every file under a stage's output directory `dir` into the blob store and return
    /// the manifest. Files the stage created there are moved; anything else (hard links,
    /// what symlinks point to) is copied, never moved: see [`super::ingest`]. Every blob is
    /// hashed as it is written, and a blob already in the store is rehashed: a damaged one
    /// is replaced, not trusted.
    pub fn store_dir(&self, dir: &Path) -> Result<Manifest, CacheError> {
        use super::ingest::{collect_output, copy_hashing, Source};
        let found = collect_output(dir)?;
        let mut files = Vec::with_capacity(found.len());
        // Copies first: a link may point at a file of the stage's own that is moved below.
        for own in [false, true] {
            for f in found.iter().filter(|f| matches!(f.source, Source::Own(_)) == own) {
                let (staged, digest, size) = match &f.source {
                    Source::Copy(src) => {
                        let staged = self.staging_path();
                        let (digest, size) = copy_hashing(src, &staged)?;
                        (staged, digest, size)
                    }
                    Source::Own(src) => {
                        // Into a private name first: the hash is of the file that is committed.
                        let staged = self.staging_path();
                        fs::rename(src, &staged).map_err(io_err(src))?;
                        let size = fs::metadata(&staged).map_err(io_err(&staged))?.len();
                        (staged.clone(), hash_file(&staged)?, size)
                    }
                };
                self.put_blob(&staged, &digest, size)?;
                files.push(FileEntry { path: f.rel.clone(), digest, size, executable: f.executable });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Manifest { files })
    }

    /// The path of a blob in `objects/` (which may not exist).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        self.blob_path(digest)
    }

    /// Whether the store holds a blob of this digest that has this size and hashes right.
    pub fn has_good_blob(&self, digest: &str, size: u64) -> bool {
        let blob = self.blob_path(digest);
        fs::metadata(&blob).map(|m| m.is_file() && m.len() == size).unwrap_or(false) && hash_file(&blob).ok().as_deref() == Some(digest)
    }

    /// A fresh private path under `tmp/`, to write a blob into before [`Cache::install_blob`].
    pub fn staging_file(&self) -> PathBuf {
        self.staging_path()
    }

    /// Install a staged file whose digest and size the caller verified.
    pub fn install_blob(&self, staged: &Path, digest: &str, size: u64) -> Result<(), CacheError> {
        self.put_blob(staged, digest, size)
    }

    /// A fresh private path under `tmp/` for a blob being written.
    fn staging_path(&self) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        self.tmp_dir().join(format!("blob-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
    }

    /// Install `staged` (content `digest`, `size` bytes) as a blob. If the blob exists and
    /// rehashes to its digest, `staged` is dropped; if it is damaged (truncated, flipped
    /// bytes), it is replaced.
    fn put_blob(&self, staged: &Path, digest: &str, size: u64) -> Result<(), CacheError> {
        let blob = self.blob_path(digest);
        if let Ok(m) = fs::symlink_metadata(&blob) {
            if m.is_file() && m.len() == size && hash_file(&blob).ok().as_deref() == Some(digest) {
                let _ = fs::remove_file(staged);
                self.blob_checked(digest);
                return Ok(());
            }
            let _ = super::ingest::remove_tree(&blob);
            let _ = fs::remove_file(&blob);
            // The entries that need this blob are whole again once it is replaced, but what was
            // computed from them while it was damaged is not (found by a hostile pass: such a
            // result stayed cached, and `cache verify` found nothing wrong).
            let dropped = self.drop_downstream(&self.entries_needing(&[digest.to_string()]))?.len();
            tracing::warn!(blob = %blob.display(), dropped, "damaged blob replaced by a good copy; the entries computed from the results that need it are dropped (they may have read the damaged bytes)");
        }
        let parent = blob.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        finish_blob(staged, &blob)?;
        self.blob_checked(digest);
        Ok(())
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

    /// Record a stage result: manifest and entry in one sled transaction, then flush; the
    /// entry becomes its stage's current output. Blobs must already be stored (see
    /// [`Cache::store_dir`]).
    pub fn commit(&self, entry: &Entry, manifest: &Manifest) -> Result<(), CacheError> {
        self.commit_with(entry, manifest, true)
    }

    /// [`Cache::commit`] of a result that came from elsewhere (a remote): it becomes nobody's
    /// current output here. The run that asked for it marks it for its own stage; an entry's
    /// pipeline and stage names are what a remote says, and a pulled entry moved another
    /// pipeline's current output (found by a hostile pass: `cache export` then gave the
    /// remote's files, and `gc --keep-last` deleted the user's own results).
    pub fn commit_unclaimed(&self, entry: &Entry, manifest: &Manifest) -> Result<(), CacheError> {
        self.commit_with(entry, manifest, false)
    }

    fn commit_with(&self, entry: &Entry, manifest: &Manifest, claim: bool) -> Result<(), CacheError> {
        use sled::Transactional;
        // The same record as a file first, for `cache verify --rebuild` if sled is ever lost.
        let side = IndexRecord { entry: entry.clone(), manifest: manifest.clone() };
        let path = self.index_path(&entry.key);
        let tmp = self.staging_path();
        fs::write(&tmp, serde_json::to_vec(&side).unwrap_or_default()).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        let mbytes = serde_json::to_vec(manifest).unwrap_or_default();
        let ebytes = serde_json::to_vec(entry).unwrap_or_default();
        let last_key = last_key(&entry.pipeline, &entry.stage);
        let last_val = LastRecord { key: entry.key.clone(), at_ms: now_millis() }.to_bytes();
        (&self.manifests, &self.entries, &self.last)
            .transaction(|(m, e, l)| {
                m.insert(entry.output.as_bytes(), mbytes.as_slice())?;
                e.insert(entry.key.0.as_bytes(), ebytes.as_slice())?;
                if claim {
                    l.insert(last_key.as_slice(), last_val.as_slice())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| CacheError::Corrupt(entry.key.0.clone(), format!("{e:?}")))?;
        self.flush()
    }

    /// Mark `key` as the current output of a stage (after a hit; a commit does it too, in
    /// its transaction). The one writer of the `last` tree besides [`Cache::commit`], with
    /// the same record.
    pub fn set_last(&self, pipeline: &str, stage: &str, key: &CacheKey) -> Result<(), CacheError> {
        let v = LastRecord { key: key.clone(), at_ms: now_millis() }.to_bytes();
        self.last.insert(last_key(pipeline, stage), v).map_err(self.db_err())?;
        Ok(())
    }

    pub fn last(&self, pipeline: &str, stage: &str) -> Option<CacheKey> {
        self.last.get(last_key(pipeline, stage)).ok().flatten().map(|v| LastRecord::parse(&v).key)
    }

    /// Every stage's current output key, in every pipeline (what `gc` must keep).
    pub fn current_keys(&self) -> HashSet<String> {
        self.last.iter().filter_map(|kv| kv.ok()).map(|(_, v)| LastRecord::parse(&v).key.0).collect()
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
                    let r = LastRecord::parse(&v);
                    (pipeline, r.key, r.at_ms)
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

    /// An entry whose blobs are all present and intact ([`Cache::blob_state`]: rehashed
    /// only when a blob's stat moved since it last hashed right). A damaged blob is removed
    /// with every entry that needs it and every entry computed from those, so the stage reruns
    /// and so do the stages after it (found by a hostile pass: a blob rewritten in place at its
    /// size was handed to the next stage, whose result then outlived the blob's repair).
    pub fn usable_entry(&self, key: &CacheKey) -> Result<Option<Entry>, CacheError> {
        self.usable_entry_with(key, true)
    }

    /// [`Cache::usable_entry`] without removing anything (for `plan`): a damaged blob makes
    /// the entry unusable, and the run that follows drops it.
    pub fn usable_entry_readonly(&self, key: &CacheKey) -> Result<Option<Entry>, CacheError> {
        self.usable_entry_with(key, false)
    }

    fn usable_entry_with(&self, key: &CacheKey, repair: bool) -> Result<Option<Entry>, CacheError> {
        let Some(e) = self.entry(key)? else { return Ok(None) };
        let Some(m) = self.manifest(&e.output)? else { return Ok(None) };
        if let Err(why) = m.check_paths() {
            // no view nor export can be made of it (a remote's, pulled before the checks)
            tracing::warn!(stage = %e.stage, "entry {} dropped: its manifest names {why}", &key.0[..12.min(key.0.len())]);
            if repair {
                self.drop_entries(vec![e])?;
            }
            return Ok(None);
        }
        match self.first_unusable_blob(&m)? {
            None => Ok(Some(e)),
            Some((f, BlobState::Damaged)) if repair => {
                self.drop_damaged(&f.digest)?;
                Ok(None)
            }
            Some(_) => Ok(None),
        }
    }

    /// The first file of `m` whose blob is not [`BlobState::Intact`], with its state.
    fn first_unusable_blob<'m>(&self, m: &'m Manifest) -> Result<Option<(&'m FileEntry, BlobState)>, CacheError> {
        for f in &m.files {
            match self.blob_state(&f.digest, f.size)? {
                BlobState::Intact => {}
                other => return Ok(Some((f, other))),
            }
        }
        Ok(None)
    }

    /// Whether the blob of `digest` is there, of `size` bytes, and still hashes to `digest`.
    /// A blob that hashed right is remembered with its inode, size, mtime and ctime, and
    /// rehashed only when one of them moved: any write to it, even one that sets the mtime
    /// back, moves its ctime, which nothing but the clock can set.
    fn blob_state(&self, digest: &str, size: u64) -> Result<BlobState, CacheError> {
        let blob = self.blob_path(digest);
        let meta = match fs::symlink_metadata(&blob) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BlobState::Missing),
            Err(e) => return Err(CacheError::Io { path: blob, source: e }),
        };
        if !meta.is_file() || meta.len() != size {
            return Ok(BlobState::Damaged);
        }
        let memo_key = blob_memo_key(digest);
        let now = blob_stamp(&meta);
        if self.stat.get(&memo_key).ok().flatten().is_some_and(|v| v.as_ref() == now.as_bytes()) {
            return Ok(BlobState::Intact);
        }
        if hash_file(&blob)? != digest {
            return Ok(BlobState::Damaged);
        }
        // the stat after hashing: a write during the hash moves it, and the next check rehashes
        if let Ok(after) = fs::symlink_metadata(&blob) {
            if blob_stamp(&after) == now {
                let _ = self.stat.insert(memo_key, now.as_bytes());
            }
        }
        Ok(BlobState::Intact)
    }

    /// Remember that the blob of `digest` hashed right as it is now (just written or rehashed).
    fn blob_checked(&self, digest: &str) {
        if let Ok(m) = fs::symlink_metadata(self.blob_path(digest)) {
            let _ = self.stat.insert(blob_memo_key(digest), blob_stamp(&m).as_bytes());
        }
    }

    /// A damaged blob: removed, with every entry that needs it and every entry computed from
    /// those (their results came from the damaged bytes, or may have). Returns how many entries.
    fn drop_damaged(&self, digest: &str) -> Result<usize, CacheError> {
        let blob = self.blob_path(digest);
        tracing::warn!(blob = %blob.display(), "damaged blob (its content no longer hashes to its name): removed with the entries that need it and those computed from them");
        let _ = super::ingest::remove_tree(&blob);
        let _ = fs::remove_file(&blob);
        let _ = self.stat.remove(blob_memo_key(digest));
        self.drop_entries_needing(&[digest.to_string()])
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

    /// A directory with the artifact's files (hard links to blobs), built once per digest and
    /// checked against the manifest each time it is handed out: a view someone changed
    /// (a file deleted, added or replaced) is rebuilt, never served.
    pub fn view(&self, output: &str) -> Result<PathBuf, CacheError> {
        let dir = self.root.join("views").join(output);
        let m = self.manifest(output)?.ok_or_else(|| CacheError::NotFound(output.to_string()))?;
        m.check_paths().map_err(|why| CacheError::Corrupt(output.to_string(), format!("its manifest names {why}")))?;
        // A view's files are hard links to the blobs: a blob damaged in place would be handed
        // out as it is. Every blob is checked first (a stat each, a rehash if it moved).
        match self.first_unusable_blob(&m)? {
            None => {}
            Some((f, BlobState::Missing)) => {
                return Err(CacheError::Corrupt(output.to_string(), format!("`{}` (blob {}) is missing from the store: run again to recompute it", f.path, f.digest)));
            }
            Some((f, _)) => {
                let n = self.drop_damaged(&f.digest)?;
                return Err(CacheError::Corrupt(
                    output.to_string(),
                    format!("`{}` (blob {}) is damaged (its content no longer hashes to its name): removed with the {n} entries that needed it or were computed from them; run again to recompute them", f.path, f.digest),
                ));
            }
        }
        if dir.is_dir() {
            match self.view_problem(&dir, &m) {
                None => return Ok(dir),
                Some(why) => {
                    tracing::warn!(view = %dir.display(), "view rebuilt: {why}");
                    super::ingest::remove_tree(&dir).map_err(io_err(&dir))?;
                }
            }
        }
        let tmp = self.staging_path();
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        // (the new hard links move each blob's ctime: the next check rehashes them once; a
        // stamp taken here could not tell a write in the meantime from a link, found by a
        // hostile pass)
        for f in &m.files {
            let dst = tmp.join(&f.path);
            if let Some(p) = dst.parent() {
                fs::create_dir_all(p).map_err(io_err(p))?;
            }
            let blob = self.blob_path(&f.digest);
            if f.executable {
                // A copy with the executable bits (blobs are 0444).
                fs::copy(&blob, &dst).map_err(io_err(&blob))?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&dst, fs::Permissions::from_mode(0o555)).map_err(io_err(&dst))?;
                }
            } else if fs::hard_link(&blob, &dst).is_err() {
                fs::copy(&blob, &dst).map_err(io_err(&blob))?;
            }
        }
        match fs::rename(&tmp, &dir) {
            Ok(()) => Ok(dir),
            Err(_) if dir.is_dir() => {
                let _ = super::ingest::remove_tree(&tmp);
                Ok(dir)
            }
            Err(e) => Err(CacheError::Io { path: dir, source: e }),
        }
    }

    /// Why a view directory does not match its manifest, if it does not: a file missing,
    /// added, not a regular file, or not the blob (another inode whose content differs).
    fn view_problem(&self, dir: &Path, m: &Manifest) -> Option<String> {
        let found = match list_tree(dir) {
            Ok(f) => f,
            Err(e) => return Some(e),
        };
        let want: BTreeMap<&str, &FileEntry> = m.files.iter().map(|f| (f.path.as_str(), f)).collect();
        for (rel, meta) in &found {
            let Some(f) = want.get(rel.as_str()) else { return Some(format!("`{rel}` is not part of the artifact")) };
            if !meta.is_file() {
                return Some(format!("`{rel}` is not a regular file"));
            }
            let same_inode = fs::metadata(self.blob_path(&f.digest)).map(|b| stat_identity(&b).1 == stat_identity(meta).1).unwrap_or(false);
            if !same_inode && (meta.len() != f.size || hash_file(&dir.join(rel)).ok().as_deref() != Some(f.digest.as_str())) {
                return Some(format!("`{rel}` differs from the artifact"));
            }
        }
        if found.len() != want.len() {
            let have: HashSet<&str> = found.iter().map(|(r, _)| r.as_str()).collect();
            let missing = want.keys().find(|k| !have.contains(*k)).copied().unwrap_or("?");
            return Some(format!("`{missing}` is missing"));
        }
        None
    }

    /// The state of a view before a stage reads it, to prove afterwards that the stage
    /// changed nothing in it (hard links share the blob's inode: a write through one is a
    /// write to the store).
    pub fn snapshot_view(&self, output: &str) -> Result<ViewSnapshot, CacheError> {
        let dir = self.root.join("views").join(output);
        let files = list_tree(&dir)
            .map_err(|e| CacheError::Corrupt(output.to_string(), e))?
            .into_iter()
            .map(|(rel, m)| (rel, file_state(&m)))
            .collect();
        Ok(ViewSnapshot { output: output.to_string(), files })
    }

    /// `Err(what changed)` when a view differs from its snapshot. The view is removed (it is
    /// rebuilt from the blobs when next needed); a blob changed through a hard link is
    /// rehashed, and if damaged deleted with every entry that needed it.
    pub fn check_view(&self, snap: &ViewSnapshot) -> Result<(), String> {
        let dir = self.root.join("views").join(&snap.output);
        let now: BTreeMap<String, FileState> = match list_tree(&dir) {
            Ok(f) => f.into_iter().map(|(rel, m)| (rel, file_state(&m))).collect(),
            // another stage's check found the view changed and removed it
            Err(_) if !dir.exists() => return Err("the view was found changed by another stage reading it at the same time, and removed".into()),
            Err(e) => return Err(format!("the view cannot be listed ({e})")),
        };
        if now == snap.files {
            return Ok(());
        }
        let mut changes = Vec::new();
        let mut touched = Vec::new();
        for (rel, st) in &now {
            match snap.files.get(rel) {
                None => changes.push(format!("`{rel}` added")),
                Some(old) if (old.ino, old.size, old.mtime_ns, old.mode) != (st.ino, st.size, st.mtime_ns, st.mode) => {
                    changes.push(format!("`{rel}` changed"));
                    touched.push(rel.clone());
                }
                // Only the ctime moved: a write with its mtime set back, or just a hard link
                // made or removed meanwhile (another view, a sibling stage's `ln`). The content
                // decides (below). A write undone before this check is not seen: telling it
                // apart from a link by the link count failed legitimate stages and did not stop
                // a write that also left a link (tried, session 15).
                Some(old) if old != st => touched.push(rel.clone()),
                _ => {}
            }
        }
        for rel in snap.files.keys().filter(|r| !now.contains_key(*r)) {
            changes.push(format!("`{rel}` deleted"));
        }
        // A write through a hard link changes the blob itself: rehash what was touched.
        let mut damaged = Vec::new();
        if let Ok(Some(m)) = self.manifest(&snap.output) {
            for f in m.files.iter().filter(|f| touched.contains(&f.path)) {
                let blob = self.blob_path(&f.digest);
                if fs::metadata(&blob).map(|b| b.len()).ok() != Some(f.size) || hash_file(&blob).ok().as_deref() != Some(f.digest.as_str()) {
                    if !changes.iter().any(|c| c.contains(&format!("`{}`", f.path))) {
                        changes.push(format!("`{}` rewritten in place", f.path));
                    }
                    damaged.push(f.digest.clone());
                }
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let _ = super::ingest::remove_tree(&dir);
        if !damaged.is_empty() {
            for d in &damaged {
                let _ = fs::remove_file(self.blob_path(d));
            }
            let _ = self.drop_entries_needing(&damaged);
        }
        let shown: Vec<String> = changes.iter().take(5).cloned().collect();
        Err(format!(
            "{}{}{}",
            shown.join(", "),
            if changes.len() > 5 { format!(" and {} more", changes.len() - 5) } else { String::new() },
            if damaged.is_empty() { String::new() } else { format!("; {} damaged blob(s) removed from the store with the entries that needed them", damaged.len()) }
        ))
    }

    /// Remove every entry whose manifest names one of `digests`. Returns how many.
    fn drop_entries_needing(&self, digests: &[String]) -> Result<usize, CacheError> {
        self.drop_entries(self.entries_needing(digests))
    }

    /// Every entry whose manifest names one of `digests` (or whose manifest is unreadable).
    fn entries_needing(&self, digests: &[String]) -> Vec<Entry> {
        let bad: HashSet<&str> = digests.iter().map(|s| s.as_str()).collect();
        self.entries()
            .into_iter()
            .filter(|e| match self.manifest(&e.output) {
                Ok(Some(m)) => m.files.iter().any(|f| bad.contains(f.digest.as_str())),
                _ => true,
            })
            .collect()
    }

    /// Remove `entries` (and their views) and every entry computed from them. Returns how many.
    fn drop_entries(&self, entries: Vec<Entry>) -> Result<usize, CacheError> {
        for e in &entries {
            self.remove_entry(&e.key)?;
            let _ = super::ingest::remove_tree(&self.root.join("views").join(&e.output));
        }
        let n = entries.len() + self.drop_downstream(&entries)?.len();
        self.flush()?;
        Ok(n)
    }

    /// Drop every entry computed from a dropped one (its key names a dropped output, or a
    /// part of one), recursively: a result made from damaged data is damaged too, even when
    /// the upstream stage later recomputes the same, correct, digest.
    fn drop_downstream(&self, dropped: &[Entry]) -> Result<Vec<Entry>, CacheError> {
        let mut tainted: HashSet<String> = HashSet::new();
        let taint = |e: &Entry, tainted: &mut HashSet<String>| {
            tainted.insert(e.output.clone());
            if let Ok(Some(m)) = self.manifest(&e.output) {
                let mut parts: BTreeSet<String> = BTreeSet::new();
                for f in &m.files {
                    let mut p = f.path.as_str();
                    parts.insert(p.to_string());
                    while let Some((dir, _)) = p.rsplit_once('/') {
                        parts.insert(dir.to_string());
                        p = dir;
                    }
                }
                for p in parts {
                    tainted.insert(m.subtree(&p).digest());
                }
            }
        };
        for e in dropped {
            taint(e, &mut tainted);
        }
        let mut more = Vec::new();
        loop {
            let next: Vec<Entry> = self.entries().into_iter().filter(|e| e.key_inputs.inputs.values().any(|d| tainted.contains(d))).collect();
            if next.is_empty() {
                break;
            }
            for e in next {
                self.remove_entry(&e.key)?;
                let _ = super::ingest::remove_tree(&self.root.join("views").join(&e.output));
                taint(&e, &mut tainted);
                more.push(e);
            }
        }
        Ok(more)
    }

    /// Copy an artifact's files out of the cache (writable copies, not links) into `dir`, a
    /// fresh directory nobody else writes (a staging directory: `pipeline cache export`
    /// installs it into the user's directory afterwards, see `outdir`). Every blob is hashed
    /// as it is copied: a damaged one fails the export, and the caller drops what was written.
    /// `m` is the entry's manifest (`output`'s), which the caller has read.
    pub fn export_into(&self, output: &str, m: &Manifest, dir: &Path) -> Result<usize, CacheError> {
        m.check_paths().map_err(|why| CacheError::Corrupt(output.to_string(), format!("its manifest names {why}")))?;
        let umask = umask();
        for f in &m.files {
            let dst = dir.join(&f.path);
            if let Some(p) = dst.parent() {
                fs::create_dir_all(p).map_err(io_err(p))?;
            }
            self.copy_verified(output, f, &dst)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                // as `cp` would make them: the user's umask applies (077 keeps them private)
                let mode = if f.executable { 0o755 } else { 0o644 } & !umask;
                fs::set_permissions(&dst, fs::Permissions::from_mode(mode)).map_err(io_err(&dst))?;
            }
        }
        Ok(m.files.len())
    }

    /// Copy the blob of `f` (a file of `output`) to the new file `to`, hashing as it copies: a
    /// blob missing from the store or damaged is an error naming it (and `to` is removed).
    fn copy_verified(&self, output: &str, f: &FileEntry, to: &Path) -> Result<(), CacheError> {
        let blob = self.blob_path(&f.digest);
        if !blob.is_file() {
            return Err(missing_blob(output, f));
        }
        let (digest, size) = super::ingest::copy_hashing(&blob, to)?;
        if digest != f.digest || size != f.size {
            let _ = fs::remove_file(to);
            return Err(CacheError::Corrupt(
                output.to_string(),
                format!("blob {} of `{}` is damaged; run `pipeline cache verify` (and rerun the stage)", &f.digest[..12], f.path),
            ));
        }
        Ok(())
    }

    /// Copy an artifact's files out of the cache (writable copies, not links) into `dest`,
    /// which must be empty or absent (or `force`), and outside the cache. (`promote` builds
    /// its own staging directory with it; `pipeline cache export` uses [`Cache::export_into`].)
    pub fn export(&self, output: &str, dest: &Path, force: bool) -> Result<usize, CacheError> {
        let m = self.manifest(output)?.ok_or_else(|| CacheError::NotFound(output.to_string()))?;
        m.check_paths().map_err(|why| CacheError::Corrupt(output.to_string(), format!("its manifest names {why}")))?;
        let abs = absolute(dest);
        if abs.starts_with(&self.root) || self.root.starts_with(&abs) {
            return Err(CacheError::Refused(format!(
                "refusing to export into {}: it is inside the cache {} (or contains it); choose a directory outside it",
                dest.display(),
                self.root.display()
            )));
        }
        if !force {
            if let Ok(mut rd) = fs::read_dir(dest) {
                if rd.next().is_some() {
                    return Err(CacheError::Refused(format!(
                        "refusing to export into {}: it is not empty (pass --force to overwrite the files it has in common with the artifact)",
                        dest.display()
                    )));
                }
            } else if dest.exists() {
                return Err(CacheError::Refused(format!("{} exists and is not a directory", dest.display())));
            }
        }
        // Everything that can refuse is checked before the first write, so a refused export
        // leaves nothing behind (it used to create directories through a symlinked one and
        // write the files before it, a half model).
        for f in &m.files {
            // `--force` into a tree with a symlinked directory must not write through it.
            let mut at = dest.to_path_buf();
            for part in Path::new(&f.path).parent().map(|p| p.components().collect::<Vec<_>>()).unwrap_or_default() {
                at.push(part);
                if fs::symlink_metadata(&at).map(|m| m.file_type().is_symlink()).unwrap_or(false) {
                    return Err(CacheError::Refused(format!("refusing to export through {}: it is a symlink", at.display())));
                }
            }
            if !self.blob_path(&f.digest).is_file() {
                return Err(missing_blob(output, f));
            }
        }
        for f in &m.files {
            let dst = dest.join(&f.path);
            if let Some(p) = dst.parent() {
                fs::create_dir_all(p).map_err(io_err(p))?;
            }
            let _ = fs::remove_file(&dst);
            // Copy and hash in one pass: a damaged blob is never handed out.
            let tmp = dst.with_file_name(format!(".{}.export-{}", dst.file_name().and_then(|n| n.to_str()).unwrap_or("f"), std::process::id()));
            let _ = fs::remove_file(&tmp);
            self.copy_verified(output, f, &tmp)?;
            fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
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
    /// Also past every `runs/<id>.json`: an id is never given twice, whatever the database
    /// lost (a record there is the history the web view reads).
    pub fn next_run_id(&self) -> Result<u64, CacheError> {
        let last = self.runs.last().map_err(self.db_err())?;
        let in_db = last.map(|(k, _)| u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]))).unwrap_or(0);
        let on_disk = fs::read_dir(self.root.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| f.file_name().to_str()?.strip_suffix(".json")?.parse::<u64>().ok())
            // found by a hostile pass: `runs/18446744073709551615.json` wrapped the next id
            // to 0, and every later run overwrote run 0
            .filter(|&id| id <= MAX_RUN_ID)
            .max()
            .unwrap_or(0);
        let last = in_db.max(on_disk);
        if last >= MAX_RUN_ID {
            return Err(CacheError::Refused(format!("{}: run ids have reached {MAX_RUN_ID}", self.root.display())));
        }
        Ok(last + 1)
    }

    pub fn put_run<T: Serialize>(&self, id: u64, run: &T) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(run).unwrap_or_default();
        // Also as `runs/<id>.json` (tmp + rename, no fsync): readers that must not take the
        // lock (`pipeline ui`) read the history from there, never from `db/`.
        let dir = self.root.join("runs");
        let tmp = self.staging_path();
        if fs::create_dir_all(&dir).and_then(|_| fs::write(&tmp, &bytes)).and_then(|_| fs::rename(&tmp, dir.join(format!("{id}.json")))).is_err() {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(run = id, "could not write runs/{id}.json (the web view will not list this run)");
        }
        self.runs.insert(id.to_be_bytes(), bytes).map_err(self.db_err())?;
        self.flush()
    }

    /// A stand-in for the cache built from the files every commit and run write (`index/`,
    /// `runs/`) in a temporary database: `db/` is never opened, so a reader using it (the
    /// web view's plan page) never waits for nor blocks the process holding the lock. Each
    /// stage's current output is the key of the newest run that had one. For lookups and
    /// `plan` only: nothing written to it reaches the cache, and `view` must not be asked.
    pub fn snapshot(root: &Path) -> Result<Self, CacheError> {
        let root = fs::canonicalize(root).map_err(io_err(root))?;
        let tmp_err = |source| CacheError::Db { path: PathBuf::from("(temporary)"), source };
        let db = sled::Config::new().temporary(true).flush_every_ms(None).open().map_err(tmp_err)?;
        let tree = |n: &str| db.open_tree(n).map_err(tmp_err);
        let c = Self { entries: tree("entries")?, manifests: tree("manifests")?, last: tree("last")?, runs: tree("runs")?, stat: tree("stat")?, root, db };
        for r in index_files(&c.root).map(|(records, _)| records).unwrap_or_default() {
            let _ = c.manifests.insert(r.entry.output.as_bytes(), serde_json::to_vec(&r.manifest).unwrap_or_default());
            let _ = c.entries.insert(r.entry.key.0.as_bytes(), serde_json::to_vec(&r.entry).unwrap_or_default());
        }
        let runs = run_files(&c.root);
        for (id, bytes, _) in &runs {
            let _ = c.runs.insert(id.to_be_bytes(), bytes.as_slice());
        }
        for (pipeline, stage, key) in lasts_in(&runs) {
            let _ = c.set_last(&pipeline, &stage, &key);
        }
        Ok(c)
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
        let lasts = self.current_keys();
        if let Some(keep) = keep {
            for e in self.entries() {
                if !keep.contains(&e.key.0) && !lasts.contains(&e.key.0) {
                    self.remove_entry(&e.key)?;
                    removed += 1;
                }
            }
        }
        let live_manifests: HashSet<String> = self.entries().into_iter().map(|e| e.output).collect();
        // Views first: a view is derived and rebuilt when needed, so one removed before its
        // manifest costs nothing, while a kill between the manifests' removal and the views'
        // left views of no artifact, which `cache verify` reported as damage.
        let views = self.root.join("views");
        for d in fs::read_dir(&views).map_err(io_err(&views))?.flatten() {
            if !live_manifests.contains(&d.file_name().to_string_lossy().to_string()) {
                let _ = super::ingest::remove_tree(&d.path());
            }
        }
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
        let (blobs, junk) = self.blobs()?;
        for j in &junk {
            tracing::warn!(path = %j.display(), "not a blob: left alone (remove it by hand)");
        }
        for (digest, path, size) in blobs {
            if !live_blobs.contains(&digest) {
                freed += size;
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        // Index records of entries that are gone (or were never committed: a kill between
        // the record and the sled transaction).
        let keys: HashSet<String> = self.entries().into_iter().map(|e| e.key.0).collect();
        let index = self.root.join("index");
        for f in fs::read_dir(&index).map_err(io_err(&index))?.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if !name.strip_suffix(".json").map(|k| keys.contains(k)).unwrap_or(false) {
                let _ = fs::remove_file(f.path());
            }
        }
        self.clear_tmp()?;
        Ok((removed, freed))
    }

    /// Every blob as (digest, path, size), and the paths under `objects/` that are not blobs
    /// (a stray file, a misnamed directory): reported, never deleted.
    fn blobs(&self) -> Result<(Vec<(String, PathBuf, u64)>, Vec<PathBuf>), CacheError> {
        let mut out = Vec::new();
        let mut junk = Vec::new();
        let objects = self.root.join("objects");
        let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        for d in fs::read_dir(&objects).map_err(io_err(&objects))?.flatten() {
            let prefix = d.file_name().to_string_lossy().to_string();
            let is_dir = d.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir || prefix.len() != 2 || !is_hex(&prefix) {
                junk.push(d.path());
                continue;
            }
            for f in fs::read_dir(d.path()).map_err(io_err(&d.path()))?.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                let is_file = f.file_type().map(|t| t.is_file()).unwrap_or(false);
                if !is_file || name.len() != 62 || !is_hex(&name) {
                    // tmp names of a blob being installed never live here; anything else is junk
                    junk.push(f.path());
                    continue;
                }
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((format!("{prefix}{name}"), f.path(), size));
            }
        }
        Ok((out, junk))
    }

    /// Rehash every blob (deleting bad ones and dropping the entries that needed them) and
    /// check every view against its manifest (removing a changed one: views are rebuilt).
    pub fn verify(&self) -> Result<VerifyReport, CacheError> {
        let (blobs, junk) = self.blobs()?;
        let mut r = VerifyReport { checked: blobs.len(), junk, ..Default::default() };
        for (digest, path, _) in &blobs {
            if hash_file(path)? != *digest {
                r.bad_blobs.push(digest.clone());
                let _ = fs::remove_file(path);
            }
        }
        for e in self.entries() {
            // a manifest no view or export can be made of (pulled before the checks) is damaged
            let ok = match self.manifest(&e.output) {
                Ok(Some(m)) => m.check_paths().is_ok() && m.files.iter().all(|f| self.blob_path(&f.digest).is_file() && !r.bad_blobs.contains(&f.digest)),
                _ => false,
            };
            if !ok {
                self.remove_entry(&e.key)?;
                let _ = super::ingest::remove_tree(&self.root.join("views").join(&e.output));
                r.dropped.push(e);
            }
        }
        let downstream = self.drop_downstream(&r.dropped)?;
        r.dropped.extend(downstream);
        self.flush()?;
        let views = self.root.join("views");
        for d in fs::read_dir(&views).map_err(io_err(&views))?.flatten() {
            let name = d.file_name().to_string_lossy().to_string();
            let problem = match self.manifest(&name) {
                Ok(Some(m)) if d.path().is_dir() => self.view_problem(&d.path(), &m),
                Ok(Some(_)) => Some("not a directory".into()),
                _ => Some("no such artifact".into()),
            };
            if let Some(why) = problem {
                let _ = super::ingest::remove_tree(&d.path());
                let _ = fs::remove_file(d.path());
                r.bad_views.push((name, why));
            }
        }
        Ok(r)
    }
}

/// An entry and its manifest as one file under `index/` (written at each commit).
#[derive(Serialize, Deserialize)]
struct IndexRecord {
    entry: Entry,
    manifest: Manifest,
}

/// What `cache verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub bad_blobs: Vec<String>,
    pub dropped: Vec<Entry>,
    /// (artifact digest, what was wrong): removed, rebuilt on next use.
    pub bad_views: Vec<(String, String)>,
    /// Paths under `objects/` that are not blobs (left alone).
    pub junk: Vec<PathBuf>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.bad_blobs.is_empty() && self.dropped.is_empty() && self.bad_views.is_empty()
    }
}

/// A view's files as (path -> inode, size, mtime, ctime, mode) before a stage ran. The
/// ctime catches what `touch -d` hides: any write or chmod sets it, and nothing can set it back.
#[derive(Debug, Clone)]
pub struct ViewSnapshot {
    output: String,
    files: BTreeMap<String, FileState>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FileState {
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    mode: u32,
}

#[cfg(unix)]
fn file_state(m: &fs::Metadata) -> FileState {
    use std::os::unix::fs::MetadataExt;
    FileState {
        ino: m.ino(),
        size: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        mode: m.mode(),
    }
}

/// Everything below `dir` that is not a directory, without following symlinks, as
/// (relative path, metadata). `Err` names what could not be read.
fn list_tree(dir: &Path) -> Result<Vec<(String, fs::Metadata)>, String> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((rel, abs)) = stack.pop() {
        let rd = fs::read_dir(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
        for d in rd {
            let d = d.map_err(|e| format!("{}: {e}", abs.display()))?;
            let name = d.file_name().to_string_lossy().to_string();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let m = fs::symlink_metadata(d.path()).map_err(|e| format!("{}: {e}", d.path().display()))?;
            if m.is_dir() {
                stack.push((r, d.path()));
            } else {
                out.push((r, m));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The error for a file of `output` whose blob is not in the store.
fn missing_blob(output: &str, f: &FileEntry) -> CacheError {
    CacheError::Corrupt(output.to_string(), format!("blob {} of `{}` is missing from the store; run `pipeline cache verify`", &f.digest[..12], f.path))
}

/// The process's umask, read from /proc (umask(2) can only be read by setting it, which
/// races other threads); 0o022 when /proc cannot say.
pub fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string())))
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
        .unwrap_or(0o022)
}

/// `p` made absolute against the working directory: canonical where it exists; else its
/// nearest existing directory, canonical, and the rest resolved lexically (see below).
pub fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = fs::canonicalize(p) {
        return c;
    }
    // The nearest existing ancestor, canonical, plus the rest. The rest does not exist yet:
    // it will be made of real directories, so a `..` in it goes up lexically, as the kernel
    // will resolve it once they exist (appended as is, `ghost/../cache` did not start with
    // the cache and passed the checks made with it).
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let parts: Vec<std::path::Component> = abs.components().collect();
    for i in (1..parts.len()).rev() {
        let prefix: PathBuf = parts[..i].iter().collect();
        if let Ok(mut out) = fs::canonicalize(&prefix) {
            // only where the rest truly does not exist under a directory: `..` after a
            // dangling link or through a file is the kernel's to refuse, not ours to resolve
            if !out.is_dir() || fs::symlink_metadata(prefix.join(parts[i])).is_ok() {
                return abs;
            }
            for c in &parts[i..] {
                match c {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => out.push(other),
                }
            }
            return out;
        }
    }
    abs
}

/// The value of the `last` tree: a stage's current output and when it became current
/// (a bare stage name resolves to the pipeline that set it most recently).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRecord {
    pub key: CacheKey,
    pub at_ms: u64,
}

impl LastRecord {
    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    /// JSON; older caches hold `key NUL millis` or a bare key (time 0).
    fn parse(v: &[u8]) -> LastRecord {
        if let Ok(r) = serde_json::from_slice::<LastRecord>(v) {
            return r;
        }
        let mut parts = v.splitn(2, |b| *b == 0);
        let key = String::from_utf8_lossy(parts.next().unwrap_or_default()).to_string();
        let at_ms = parts.next().and_then(|t| std::str::from_utf8(t).ok()?.parse().ok()).unwrap_or(0);
        LastRecord { key: CacheKey(key), at_ms }
    }
}

fn last_key(pipeline: &str, stage: &str) -> Vec<u8> {
    let mut k = pipeline.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(stage.as_bytes());
    k
}

/// "in use by pid N (command)", from the holder's `LOCK` file.
fn busy(root: &Path) -> CacheError {
    let info = fs::read_to_string(root.join("LOCK")).unwrap_or_default();
    let mut lines = info.lines();
    CacheError::Busy {
        root: root.to_path_buf(),
        pid: lines.next().unwrap_or("?").to_string(),
        command: lines.next().unwrap_or("unknown command").to_string(),
    }
}

/// Whether another process is rebuilding the database: sled holds an exclusive `flock` on
/// `db.rebuilding/db` while it is open. Probed without creating anything (a rebuild may rename
/// the directory into place at any moment) and without following a link.
fn rebuilding(root: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(root.join("db.rebuilding").join("db")) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; a shared lock taken here is released when `f` drops
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    r != 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// The Cache Directory Tagging Specification's file (backup tools skip a tagged directory);
/// this program's text in it says the directory is a pipeline cache.
const TAG: &str = "CACHEDIR.TAG";
const TAG_TEXT: &str = "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by pipeline (a content-addressed pipeline cache).\n# For information about cache directory tags see https://bford.info/cachedir/\n";

/// Whether `root` holds this program's cache tag (a regular file, read up to 4 KB).
fn is_tagged_cache(root: &Path) -> bool {
    let tag = root.join(TAG);
    if !fs::symlink_metadata(&tag).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut buf = Vec::new();
    File::open(&tag).and_then(|f| f.take(4096).read_to_end(&mut buf)).is_ok() && String::from_utf8_lossy(&buf).contains("created by pipeline")
}

/// A cache made by a build from before the tag: `index/` records that parse as this
/// program's (an entry and its manifest) beside `objects/`, or a sled database in `db/` (its
/// `conf` file as sled writes it). A project with `objects/` and `index/*.json` of its own, or
/// some program's `db/conf`, is not one (found by a hostile pass: both passed for caches,
/// and their `tmp/`, `index/` and `views/` were emptied).
fn is_legacy_cache(root: &Path) -> bool {
    let sled_conf = || {
        let conf = root.join("db").join("conf");
        fs::symlink_metadata(&conf).is_ok_and(|m| m.is_file() && m.len() < 4096)
            && fs::read_to_string(&conf).is_ok_and(|t| t.contains("segment_size") && t.contains("version"))
    };
    let records = || {
        root.join("objects").is_dir()
            && fs::read_dir(root.join("index")).into_iter().flatten().flatten().filter(|f| f.file_name().to_string_lossy().ends_with(".json")).take(8).any(|f| {
                fs::symlink_metadata(f.path()).is_ok_and(|m| m.is_file() && m.len() < (64 << 20))
                    && fs::read(f.path()).ok().and_then(|b| serde_json::from_slice::<IndexRecord>(&b).ok()).is_some()
            })
    };
    sled_conf() || records()
}

/// What [`Cache::blob_state`] found.
enum BlobState {
    Intact,
    Missing,
    /// Not a regular file, the wrong size, or content that no longer hashes to its name.
    Damaged,
}

/// The stat memo's key for a blob: a NUL first, which no file path the memo holds has.
fn blob_memo_key(digest: &str) -> Vec<u8> {
    let mut k = b"\0blob\0".to_vec();
    k.extend_from_slice(digest.as_bytes());
    k
}

/// A blob's identity for the memo: inode, size, mtime and ctime (nanoseconds).
fn blob_stamp(m: &fs::Metadata) -> String {
    let s = file_state(m);
    format!("{}:{}:{}:{}", s.ino, s.size, s.mtime_ns, s.ctime_ns)
}

fn is_lock_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.to_string().contains("lock")
}

fn finish_blob(src: &Path, blob: &Path) -> Result<(), CacheError> {
    File::open(src).and_then(|f| f.sync_all()).map_err(io_err(src))?;
    // Every blob is 0444, whatever file it came from: one content is one blob, and its mode
    // must not depend on which file was stored first (executables get copies in views).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(src, fs::Permissions::from_mode(0o444));
    }
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
            } else if meta.is_file() {
                out.push((r, p));
            } else {
                // Hashing a FIFO or a device would block or never end.
                return Err(CacheError::UnsafeOutput { path: p, message: "is not a regular file (FIFO, socket or device): inputs must be regular files".into() });
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

use super::ingest::is_exec;

#[cfg(test)]
mod tests {
    /// `..` in the part that does not exist goes up as the kernel will resolve it once that
    /// part is made: `ghost/../cache` is the cache (it passed the inside-the-cache checks).
    #[test]
    fn absolute_resolves_dotdot_in_the_part_that_does_not_exist() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("cache")).unwrap();
        assert_eq!(super::absolute(&root.join("ghost/../cache/objects")), root.join("cache/objects"));
        assert_eq!(super::absolute(&root.join("cache/ghost/../../x/./y")), root.join("x/y"));
        assert_eq!(super::absolute(&root.join("cache/..")), root);
        assert!(!root.join("ghost").exists());
        // after a dangling link or through a file the kernel refuses the path: left as given
        std::os::unix::fs::symlink(root.join("nowhere"), root.join("dang")).unwrap();
        std::fs::write(root.join("f"), "").unwrap();
        for p in ["dang/../x", "f/../x"] {
            assert_eq!(super::absolute(&root.join(p)), root.join(p), "{p}");
        }
    }

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
        let r = cache.verify().unwrap();
        assert_eq!((r.checked, r.bad_blobs.len(), r.dropped.len()), (1, 1, 1));
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

/// The local cache is one [`super::remote::ArtifactStore`]: the same questions a remote answers.
impl super::remote::ArtifactStore for Cache {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }
    fn get_entry(&self, key: &CacheKey) -> Result<Option<Entry>, super::remote::RemoteError> {
        Ok(self.entry(key)?)
    }
    fn put_entry(&self, entry: &Entry) -> Result<(), super::remote::RemoteError> {
        let m = self.manifest(&entry.output)?.ok_or_else(|| CacheError::NotFound(entry.output.clone()))?;
        Ok(self.commit(entry, &m)?)
    }
    fn get_manifest(&self, digest: &str) -> Result<Option<Manifest>, super::remote::RemoteError> {
        Ok(self.manifest(digest)?)
    }
    fn put_manifest(&self, manifest: &Manifest) -> Result<(), super::remote::RemoteError> {
        self.put_manifest(manifest)?;
        Ok(())
    }
    fn has_blob(&self, digest: &str, size: u64) -> Result<bool, super::remote::RemoteError> {
        Ok(self.has_good_blob(digest, size))
    }
    fn get_blob(&self, digest: &str, dst: &Path) -> Result<bool, super::remote::RemoteError> {
        let blob = self.blob_path(digest);
        if !blob.is_file() {
            return Ok(false);
        }
        super::ingest::copy_hashing(&blob, dst)?;
        Ok(true)
    }
    fn put_blob(&self, digest: &str, src: &Path) -> Result<u64, super::remote::RemoteError> {
        let staged = self.staging_path();
        let (d, size) = super::ingest::copy_hashing(src, &staged)?;
        if d != digest {
            let _ = fs::remove_file(&staged);
            return Err(CacheError::Corrupt(digest.to_string(), format!("{} does not hash to it", src.display())).into());
        }
        Cache::put_blob(self, &staged, digest, size)?;
        Ok(size)
    }
}
