//! The cache's one error type, below `store` and `ingest` (both return it).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache {} is in use by pid {pid} ({command}); wait for it, or pass --wait", root.display())]
    Busy { root: PathBuf, pid: String, command: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cache database {}: {source}", path.display())]
    Db { path: PathBuf, source: sled::Error },
    #[error("cache database {} cannot be opened ({source}); to recover, run `pipeline cache verify --rebuild` (moves the database aside and rebuilds the entries from `index/` and the blobs; run history is lost), or move the database aside yourself (stages then rerun)", path.display())]
    DbDamaged { path: PathBuf, source: sled::Error },
    #[error("cache entry {0}: {1}")]
    Corrupt(String, String),
    #[error("no cache entry matches `{0}`")]
    NotFound(String),
    /// A stage output the store refuses to take (special file, dangling link, loop).
    #[error("{}: {message}", path.display())]
    UnsafeOutput { path: PathBuf, message: String },
    /// Anything else that is not a cache path (a destination, an argument).
    #[error("{0}")]
    Refused(String),
}
