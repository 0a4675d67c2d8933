//! The cache key of a stage: what decides whether its recorded output can be reused.
//!
//! A key is blake3 over the canonical JSON of [`KeyInputs`]. Everything that can change a
//! stage's output is in it; nothing else is, so a key is stable across machines, checkouts
//! and runs.
//!
//! | field            | what it is                                        | changes when                         |
//! |------------------|---------------------------------------------------|--------------------------------------|
//! | `format`         | [`KEY_FORMAT`], the version of this encoding      | we change how keys are computed      |
//! | `kind`           | the stage kind (`train`, `command`...)            | the stage's kind is edited           |
//! | `kind_version`   | the kind's implementation version (`VERSION`)     | the code of that kind changes output |
//! | `params`         | canonical params, defaults filled in              | any param, or a `--set`, changes     |
//! | `inputs`         | input name -> blake3 digest of its content        | an upstream output or file changes   |
//! | `param_files`    | param name -> digest of a file a param names      | e.g. the weights file changes        |
//!
//! Not in the key, on purpose: file paths (moving a checkout keeps the cache), mtimes (a
//! `touch` is not a change; the stat memo only avoids rehashing), run ids, timestamps, the
//! stage's name (two stages doing the same work share one entry), the backend a model was
//! trained on (provenance, recorded in the entry), and credentials.
//!
//! Canonical params: object keys sorted, numbers written by serde_json (so `1` and `1.0`
//! differ: they deserialise to the same param only when the param is a float, and the
//! normalised params re-serialise the typed struct, which makes them equal again).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bump when the encoding of [`KeyInputs`] changes.
pub const KEY_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub format: u32,
    pub kind: String,
    pub kind_version: u32,
    pub params: Value,
    pub inputs: BTreeMap<String, String>,
    #[serde(default)]
    pub param_files: BTreeMap<String, String>,
}

/// A stage key: 64 hex digits of blake3.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CacheKey(pub String);

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl CacheKey {
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

impl KeyInputs {
    pub fn new(kind: &str, kind_version: u32, params: &Value) -> Self {
        Self {
            format: KEY_FORMAT,
            kind: kind.to_string(),
            kind_version,
            params: params.clone(),
            inputs: BTreeMap::new(),
            param_files: BTreeMap::new(),
        }
    }

    pub fn key(&self) -> CacheKey {
        let canonical = canonical_json(&serde_json::to_value(self).unwrap_or(Value::Null));
        CacheKey(blake3::hash(canonical.as_bytes()).to_hex().to_string())
    }
}

/// JSON with object keys sorted at every level and no whitespace.
pub fn canonical_json(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sort(v)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> KeyInputs {
        let mut k = KeyInputs::new("train", 3, &json!({"epochs": 10, "lr": 0.001}));
        k.inputs.insert("images".into(), "aa".repeat(32));
        k.param_files.insert("weights".into(), "bb".repeat(32));
        k
    }

    #[test]
    fn equal_inputs_give_equal_keys() {
        assert_eq!(base().key(), base().key());
        // Key order in params does not matter.
        let mut a = base();
        a.params = json!({"lr": 0.001, "epochs": 10});
        assert_eq!(a.key(), base().key());
    }

    #[test]
    fn format_changes_key() {
        let mut k = base();
        k.format += 1;
        assert_ne!(k.key(), base().key());
    }

    #[test]
    fn kind_changes_key() {
        let mut k = base();
        k.kind = "evaluate".into();
        assert_ne!(k.key(), base().key());
    }

    #[test]
    fn kind_version_changes_key() {
        let mut k = base();
        k.kind_version = 4;
        assert_ne!(k.key(), base().key());
    }

    #[test]
    fn params_change_key() {
        let mut k = base();
        k.params["epochs"] = json!(11);
        assert_ne!(k.key(), base().key());
        let mut k = base();
        k.params["extra"] = json!(null);
        assert_ne!(k.key(), base().key());
    }

    #[test]
    fn input_digest_changes_key() {
        let mut k = base();
        k.inputs.insert("images".into(), "cc".repeat(32));
        assert_ne!(k.key(), base().key());
    }

    #[test]
    fn input_name_changes_key() {
        let mut k = base();
        let d = k.inputs.remove("images").unwrap();
        k.inputs.insert("imgs".into(), d);
        assert_ne!(k.key(), base().key());
    }

    #[test]
    fn param_file_digest_changes_key() {
        let mut k = base();
        k.param_files.insert("weights".into(), "dd".repeat(32));
        assert_ne!(k.key(), base().key());
    }

    #[test]
    fn key_is_64_hex_digits() {
        let k = base().key();
        assert_eq!(k.0.len(), 64);
        assert!(k.0.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
