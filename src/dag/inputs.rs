//! Hashing a stage's inputs into what its key needs: shared by `plan` (which only looks)
//! and the engine (which then runs), so `plan` does not depend on the engine.

use std::collections::BTreeMap;

use crate::cache::{Cache, FileEntry, KeyInputs, Manifest};
use super::{InputSource, StageNode};

/// The inputs of a stage as the key sees them.
#[derive(Debug, Clone, Default)]
pub struct ResolvedInputs {
    pub digests: BTreeMap<String, String>,
    pub param_files: BTreeMap<String, String>,
    pub sources: BTreeMap<String, String>,
}

impl ResolvedInputs {
    pub fn key_inputs(&self, node: &StageNode) -> KeyInputs {
        let mut k = KeyInputs::new(node.kind.kind(), node.kind.version(), &node.kind.key_params(&node.params));
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
) -> Result<ResolvedInputs, String> {
    let mut r = ResolvedInputs::default();
    for (name, src) in &node.inputs {
        let digest = match src {
            InputSource::Stage { stage, subpath } => {
                let out = upstream(stage).ok_or_else(|| format!("input `{name}`: stage `{stage}` has no output"))?;
                match subpath {
                    None => out,
                    Some(sub) => {
                        let m = cache.manifest(&out).map_err(|e| e.to_string())?.unwrap_or_default();
                        let part = m.subtree(sub);
                        if part.files.is_empty() {
                            return Err(format!("input `{name}`: the output of stage `{stage}` has nothing at `{sub}`"));
                        }
                        part.digest()
                    }
                }
            }
            InputSource::File(p) => cache.digest_file(p).map_err(|e| format!("input `{name}`: {e}"))?,
            InputSource::Dir(p) => {
                // A directory holding the cache would change with every run it feeds.
                if std::fs::canonicalize(p).map(|c| cache.root().starts_with(&c)).unwrap_or(false) {
                    return Err(format!("input `{name}`: directory {} contains the cache {}: name a directory that does not", p.display(), cache.root().display()));
                }
                cache.digest_dir(p).map_err(|e| format!("input `{name}`: {e}"))?.digest()
            }
            InputSource::Glob { matches, .. } => {
                let mut m = Manifest::default();
                for p in matches {
                    let d = cache.digest_file(p).map_err(|e| format!("input `{name}`: {e}"))?;
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
        r.param_files.insert(name.clone(), cache.digest_file(p).map_err(|e| format!("param `{name}`: {e}"))?);
    }
    Ok(r)
}
