//! What a finished stage reports besides its files: stored with its cache entry and in the
//! run record. Plain data, so the cache holds it without knowing about stages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a finished stage tells the engine besides its files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageOutcome {
    /// Numbers worth tracking across runs (`accuracy`, `macro_f1`, `agreement`...).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// How it ran, not what it computed (backend, device, threads): never part of the key.
    #[serde(default)]
    pub provenance: BTreeMap<String, Value>,
    /// Lines printed after the run summary (an evaluation table, where the report is).
    #[serde(default)]
    pub summary: Vec<String>,
}
