//! The content-addressed cache: blobs on disk, an index in sled.
//!
//! Layout of a cache directory (default `./cache`):
//!
//! | path               | what                                                              |
//! |--------------------|-------------------------------------------------------------------|
//! | `db/`              | sled: entries, manifests, last key per stage, runs, stat memo     |
//! | `objects/ab/cd..`  | file contents by blake3 digest, read-only, written tmp+fsync+rename |
//! | `index/<key>.json` | entry + manifest per commit, for `cache verify --rebuild`          |
//! | `views/<digest>/`  | an output manifest materialised as hard links (rebuildable)       |
//! | `tmp/`             | stage outputs being written; emptied when a run starts            |
//! | `LOCK`             | pid and command of the process that has the cache open            |
//!
//! Order of a commit: every blob is durable on disk before the sled entry that names it
//! is written and flushed, so a crash leaves at worst an orphan blob (`cache gc` removes
//! it), never an entry pointing at a partial blob.

pub mod error;
pub mod ingest;
pub mod key;
pub mod outcome;
pub mod remote;
pub mod store;

pub use key::{CacheKey, KeyInputs};
pub use outcome::StageOutcome;
pub use error::CacheError;
pub use store::{Cache, Entry, FileEntry, Manifest, VerifyReport, ViewSnapshot};
