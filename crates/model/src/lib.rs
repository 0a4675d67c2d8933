//! pipeline-model: the study's CNN training, evaluation and prediction, on burn.
//!
//! - [`data`]: decode images once into one contiguous `f32` buffer (48x48 grayscale, the same
//!   rule everywhere: `image` decode, `Triangle` resize to 48x48, `to_luma8`).
//! - [`net`]: the models (`cnn`, the default small net; `vgg16`, the study's network) and
//!   pretrained conv weights from safetensors / PyTorch `.pth` in torchvision naming.
//! - [`train`]: our own training loop (soft or hard targets, Adam / SGD+momentum, early
//!   stopping with best-checkpoint restore, per-epoch callback, metrics CSV + curves PNG);
//!   its hyper-parameters in [`config`], which [`artifact`] stores beside the record.
//! - [`eval`]: pure metrics (confusion matrix with named axes, per-class P/R/F1, macro-F1,
//!   top-k) and [`report`]: Markdown / JSON / heatmap PNG / top-2 CSV, change since last run.
//! - [`leakage`]: hashes of a model's training images (kept in its artifact) and the check of
//!   validation / test images against them (exact and near duplicates).
//! - [`predict`]: top-k classes for any image files, decoded as training did.
//! - [`backend`]: CPU (burn `flex`) by default; CUDA when built with `cuda` and a driver exists.

pub mod artifact;
pub mod backend;
pub mod config;
pub mod conv;
pub mod data;
pub mod error;
pub mod eval;
pub mod leakage;
pub mod net;
pub mod predict;
pub mod report;
pub mod split;
pub mod train;
pub mod weights;

#[cfg(test)]
mod tests;

pub use artifact::{load_artifact, ModelArtifact, ARTIFACT_CONFIG, ARTIFACT_RECORD};
pub use backend::{BackendChoice, ResolvedBackend};
pub use conv::ModelBackend;
pub use data::{decode_image, Dataset, IMAGE_SIZE};
pub use error::ModelError;
pub use eval::{evaluate_predictions, wilson_interval, Evaluation};
pub use leakage::{check_leakage, HashedImage, Leakage, Role, TRAINING_IMAGES};
pub use net::{ModelConfig, ModelKind};
pub use predict::{evaluate_dataset, evaluate_dir, predict, predict_with, ImagePrediction};
pub use report::write_report;
pub use train::{
    train_to_dir, write_ensemble, EnsembleMember, EpochMetrics, NoObserver, OptimizerKind, TargetKind, TrainConfig, TrainObserver, TrainRequest,
    TrainSummary,
};

/// The study's classes, in the one order used everywhere (defined once, in the vision crate).
pub use pipeline_vision::CLASSES;

/// The classes as owned strings (what configs and reports store).
pub fn default_classes() -> Vec<String> {
    CLASSES.iter().map(|s| s.to_string()).collect()
}
