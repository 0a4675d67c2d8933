//! Training hyper-parameters: what `train` reads and what a model's `config.json` stores
//! (see [`crate::artifact`]). Plain data, below both. With the `schema` feature these derive
//! `schemars::JsonSchema`: the `train` stage's params embed [`TrainConfig`], so the docs
//! here are what `pipeline schema train` shows.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Dawid-Skene posteriors as soft labels: loss `-sum_k q_k log p_k`.
    #[default]
    Soft,
    /// One-hot of the manifest's hard `label` (same loss, q one-hot).
    Hard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Adam,
    /// SGD with (heavy-ball) momentum (`momentum`).
    Sgd,
}

/// Training hyper-parameters; saved in `config.json` next to the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// `soft` (Dawid-Skene posteriors, default) or `hard` labels.
    pub targets: TargetKind,
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// SGD momentum (SGD only).
    pub momentum: f64,
    pub batch_size: usize,
    /// Maximum epochs.
    pub epochs: usize,
    /// L2 penalty added to the gradients (0 = off).
    pub weight_decay: f64,
    /// Early stopping: stop after this many epochs without a lower validation loss (0 =
    /// never stop early); the best epoch's weights are kept either way.
    pub patience: usize,
    pub seed: u64,
    /// Mixup (Zhang et al. 2018): each batch is blended with a shuffled copy of itself,
    /// images and (soft) targets alike, with a weight drawn from Beta(`mixup`, `mixup`) per
    /// batch; 0 = off (default). Typical: 0.1-0.4. Left out of the key and the config when off.
    #[serde(skip_serializing_if = "is_zero")]
    pub mixup: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            targets: TargetKind::Soft,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.9,
            batch_size: 32,
            epochs: 15,
            weight_decay: 0.0,
            patience: 5,
            seed: 42,
            mixup: 0.0,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(ModelError::config("lr", "must be a positive number"));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(ModelError::config("momentum", "must be in [0, 1)"));
        }
        if self.batch_size == 0 || self.batch_size > 4096 {
            return Err(ModelError::config("batch_size", "must be in 1..=4096"));
        }
        if self.epochs == 0 {
            return Err(ModelError::config("epochs", "must be at least 1"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(ModelError::config("weight_decay", "must be >= 0"));
        }
        // below 0.01 the Beta draw is 0 or 1 (no mixing) and its sampler needs ~1/alpha tries
        if !(self.mixup == 0.0 || (self.mixup.is_finite() && (0.01..=10.0).contains(&self.mixup))) {
            return Err(ModelError::config("mixup", "must be 0 (off) or in [0.01, 10]"));
        }
        Ok(())
    }
}
