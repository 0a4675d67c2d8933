//! Hashing a stage's inputs into what its key needs: shared by `plan` (which only looks)
//! and the engine (which then runs), so `plan` does not depend on the engine.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cache::{Cache, CacheError, FileEntry, KeyInputs, Manifest};
use super::{InputSource, StageNode};

/// Why a stage's inputs cannot be hashed; worded as the run record and `plan` show it.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input `{input}`: stage `{stage}` has no output")]
    NoOutput { input: String, stage: String },
    #[error("input `{input}`: the output of stage `{stage}` has nothing at `{subpath}`")]
    EmptySubpath { input: String, stage: String, subpath: String },
    /// A directory holding the cache would change with every run it feeds.
    #[error("input `{input}`: directory {} contains the cache {}: name a directory that does not", dir.display(), cache.display())]
    ContainsCache { input: String, dir: PathBuf, cache: PathBuf },
    #[error("input `{input}`: {source}")]
    Input { input: String, source: CacheError },
    #[error("param `{param}`: {source}")]
    ParamFile { param: String, source: CacheError },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The inputs of a stage as the key sees them.
#[derive(Debug, Clone, Default)]
pub struct ResolvedInputs {
    pub digests: BTreeMap<String, String>,
    pub param_files: BTreeMap<String, String>,
    pub sources: BTreeMap<String, String>,
}

impl ResolvedInputs {
    pub fn key_inputs(&self, node: &StageNode) -> KeyInputs {
        let mut k = KeyInputs::new(node.kind.kind(), node.kind.version(), &node.key_params());
        k.inputs = self.digests.clone();
        k.param_files = self.param_files.clone();
        k
    }
}

/// Hash a stage's inputs. `upstream(name)` gives the output digest of an upstream stage.
pub fn resolve_inputs(
    cache: &Cache,
    node: &StageNode,
    upstream: &dyn Fn(&str) -> Option<String>,
) -> Result<ResolvedInputs, InputError> {
    let mut r = ResolvedInputs::default();
    for (name, src) in &node.inputs {
        let digest = match src {
            InputSource::Stage { stage, subpath } => {
                let out = upstream(stage).ok_or_else(|| InputError::NoOutput { input: name.clone(), stage: stage.clone() })?;
                match subpath {
                    None => out,
                    Some(sub) => {
                        let m = cache.manifest(&out)?.unwrap_or_default();
                        let part = m.subtree(sub);
                        if part.files.is_empty() {
                            return Err(InputError::EmptySubpath { input: name.clone(), stage: stage.clone(), subpath: sub.clone() });
                        }
                        part.digest()
                    }
                }
            }
            InputSource::File(p) => cache.digest_file(p).map_err(|source| InputError::Input { input: name.clone(), source })?,
            InputSource::Dir(p) => {
                if std::fs::canonicalize(p).map(|c| cache.root().starts_with(&c)).unwrap_or(false) {
                    return Err(InputError::ContainsCache { input: name.clone(), dir: p.clone(), cache: cache.root().to_path_buf() });
                }
                cache.digest_dir(p).map_err(|source| InputError::Input { input: name.clone(), source })?.digest()
            }
            InputSource::Glob { matches, .. } => {
                let mut m = Manifest::default();
                for p in matches {
                    let d = cache.digest_file(p).map_err(|source| InputError::Input { input: name.clone(), source })?;
                    let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                    let fname = p.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
                    m.files.push(FileEntry { path: fname, digest: d, size, executable: false });
                }
                m.digest()
            }
        };
        r.digests.insert(name.clone(), digest);
        r.sources.insert(name.clone(), src.describe());
    }
    for (name, p) in &node.param_files {
        r.param_files.insert(name.clone(), cache.digest_file(p).map_err(|source| InputError::ParamFile { param: name.clone(), source })?);
    }
    Ok(r)
}
