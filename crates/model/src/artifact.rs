//! The trained model on disk: `model.mpk` (burn record, full precision) + `config.json`
//! (everything that rebuilds the net: model config with class names, training config).

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
    let record = dir.join(&config.record);
    if !record.is_file() {
        return Err(ModelError::bad_file(&record, "model record missing"));
    }
    Ok(ModelArtifact { dir: dir.to_path_buf(), config })
}

impl ModelArtifact {
    pub fn classes(&self) -> &[String] {
        &self.config.classes
    }

    /// Rebuild the net from the config and load the record onto `device`.
    pub fn load_net<B: crate::ModelBackend>(&self, device: &B::Device) -> Result<Net<B>> {
        let record = self.dir.join(&self.config.record);
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        self.config
            .model
            .init::<B>(device)
            .load_file(record.with_extension(""), &recorder, device)
            .map_err(|e| ModelError::bad_file(&record, format!("cannot load record: {e}")))
    }
}
