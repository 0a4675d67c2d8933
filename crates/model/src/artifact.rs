//! The trained model on disk: `model.mpk` (burn record, full precision) + `config.json`
//! (everything that rebuilds the net: model config with class names, training config).
//! An ensemble (`train` with `ensemble: k`) lists its members' records in `members`
//! (`members/<m>/model.mpk`, each member a complete model directory); predictions average
//! the members' class probabilities.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::net::{ModelConfig, Net};
use crate::config::TrainConfig;

pub const ARTIFACT_FORMAT: &str = "pipeline-model/1";
pub const ARTIFACT_RECORD: &str = "model.mpk";
pub const ARTIFACT_CONFIG: &str = "config.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactConfig {
    /// `pipeline-model/1`.
    pub format: String,
    /// Record file name, next to this config.
    pub record: String,
    pub classes: Vec<String>,
    pub model: ModelConfig,
    #[serde(default)]
    pub train: Option<TrainConfig>,
    #[serde(default)]
    pub best_epoch: Option<usize>,
    #[serde(default)]
    pub val_loss: Option<f64>,
    #[serde(default)]
    pub val_accuracy: Option<f64>,
    /// Ensemble members' records, relative to this config (empty: one model, `record`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

/// A model directory, config read and checked; the record is loaded per backend.
#[derive(Debug, Clone)]
pub struct ModelArtifact {
    pub dir: PathBuf,
    pub config: ArtifactConfig,
}

/// Read `<dir>/config.json` and check the record is there.
pub fn load_artifact(dir: &Path) -> Result<ModelArtifact> {
    let path = dir.join(ARTIFACT_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let config: ArtifactConfig =
        serde_json::from_str(&text).map_err(|e| ModelError::bad_file(&path, format!("not a model config: {e}")))?;
    if config.format != ARTIFACT_FORMAT {
        return Err(ModelError::bad_file(&path, format!("format \"{}\", expected \"{ARTIFACT_FORMAT}\"", config.format)));
    }
    if config.classes != config.model.classes {
        return Err(ModelError::bad_file(&path, "\"classes\" and \"model.classes\" differ"));
    }
    config.model.validate().map_err(|e| ModelError::bad_file(&path, e))?;
    let artifact = ModelArtifact { dir: dir.to_path_buf(), config };
    for (field, rel) in artifact.record_names() {
        // A config is data: it must not send the loader outside the model's directory.
        if !is_plain_relative(rel) {
            return Err(ModelError::bad_file(&path, format!("\"{field}\": \"{rel}\" is not a relative path inside the model directory")));
        }
        let record = dir.join(rel);
        if !record.is_file() {
            return Err(ModelError::bad_file(&record, "model record missing"));
        }
    }
    Ok(artifact)
}

/// `a/b.mpk`: no root, no `..`, no `.`, not empty.
fn is_plain_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

impl ModelArtifact {
    pub fn classes(&self) -> &[String] {
        &self.config.classes
    }

    /// Members of the ensemble (1 for a single model).
    pub fn member_count(&self) -> usize {
        self.config.members.len().max(1)
    }

    /// `(config field, relative record path)` of every net this artifact holds.
    fn record_names(&self) -> Vec<(&'static str, &str)> {
        if self.config.members.is_empty() {
            vec![("record", self.config.record.as_str())]
        } else {
            self.config.members.iter().map(|m| ("members", m.as_str())).collect()
        }
    }

    /// Rebuild the net from the config and load the record onto `device` (an ensemble: its
    /// first member).
    pub fn load_net<B: crate::ModelBackend>(&self, device: &B::Device) -> Result<Net<B>> {
        self.load_member::<B>(0, device)
    }

    /// Every net of the artifact, in member order.
    pub fn load_nets<B: crate::ModelBackend>(&self, device: &B::Device) -> Result<Vec<Net<B>>> {
        (0..self.member_count()).map(|m| self.load_member::<B>(m, device)).collect()
    }

    fn load_member<B: crate::ModelBackend>(&self, m: usize, device: &B::Device) -> Result<Net<B>> {
        let names = self.record_names();
        let (_, rel) = names.get(m).ok_or_else(|| ModelError::Data(format!("no ensemble member {m}")))?;
        let record = self.dir.join(rel);
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        self.config
            .model
            .init::<B>(device)
            .load_file(record.with_extension(""), &recorder, device)
            .map_err(|e| ModelError::bad_file(&record, format!("cannot load record: {e}")))
    }
}
