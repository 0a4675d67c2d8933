//! A remote cache in a directory: a shared file system (NFS, SMB, a mounted bucket) that
//! every machine of the lab sees. `object_store`'s local backend writes each object to a
//! temporary file and renames it into place, so readers never see half an object.

use std::path::Path;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::ObjectStore;

use super::RemoteError;

pub fn open(url: &str, dir: &Path) -> Result<Arc<dyn ObjectStore>, RemoteError> {
    let cfg = |message: String| RemoteError::Config { url: url.to_string(), message };
    let abs = crate::cache::store::absolute(dir);
    if abs.exists() && !abs.is_dir() {
        return Err(cfg(format!("{} is not a directory", abs.display())));
    }
    // A pipeline cache (it has db/ and views/), or a directory inside one, is not a remote:
    // `gc --remote` would delete its blobs, and `tmp/` is emptied at every run. Checked
    // before anything is created (a refused `ghost/../cache` used to leave `ghost/`).
    if let Some(cache) = enclosing_cache(&abs) {
        return Err(cfg(format!("{} is (inside) the pipeline cache {}: a remote must be a directory of its own", abs.display(), cache.display())));
    }
    std::fs::create_dir_all(&abs).map_err(|e| cfg(format!("creating {}: {e}", abs.display())))?;
    if !abs.is_dir() {
        return Err(cfg(format!("{} is not a directory", abs.display())));
    }
    // Not writable is not fatal here: a read-only mount works for --remote-mode read-only.
    let fs = LocalFileSystem::new_with_prefix(&abs).map_err(|e| cfg(e.to_string()))?;
    Ok(Arc::new(fs))
}

/// The pipeline cache (a directory with `db/` and `views/`) that `abs` is or lies inside.
pub fn enclosing_cache(abs: &Path) -> Option<&Path> {
    abs.ancestors().find(|d| d.join("db").is_dir() && d.join("views").is_dir())
}
