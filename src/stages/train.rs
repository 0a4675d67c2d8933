//! Stage kind `train`: fit the study's CNN (or VGG16) on the augmented, crowd-labelled
//! images, early-stopping on an ImageFolder validation set.
//!
//! Inputs: `images` = an `augment` output (`manifest.csv` with `file,source,label,<one
//! soft-label column per class>` and `images/<class>/*.png`); `valid` = `<root>/<class>/*.jpg`.
//! Output: `model.mpk` (burn record), `config.json` (rebuilds the net: model, classes,
//! training params), `classes.txt`, `metrics.csv` (one row per epoch), `curves.png`.
//! `backend` is provenance (recorded, never part of the result); `weights` is hashed into
//! the key by content.

use std::path::PathBuf;

use pipeline_model::data::{load_image_folder, load_manifest};
use pipeline_model::{
    BackendChoice, EpochMetrics, ModelConfig, ModelError, ModelKind, OptimizerKind, TargetKind, TrainConfig,
    TrainObserver, TrainRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{CancelFlag, InputDecl, Progress, Stage, StageContext, StageError, StageOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelName {
    /// Small 3-block CNN: trains on the demo in about a minute on 2 CPU cores.
    Cnn,
    /// VGG16's 13 conv layers + Dense 256 -> ReLU -> Dropout 0.5 -> Dense 7 (the study's net).
    Vgg16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Targets {
    /// Dawid-Skene posteriors as soft labels (cross-entropy -sum q log p).
    Soft,
    /// The manifest's hard `label`.
    Hard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    Adam,
    /// SGD with momentum (`momentum`).
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    /// CUDA when this build has it and a GPU is present, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    /// Network: `cnn` (default) or `vgg16`.
    pub model: ModelName,
    /// `cnn`: output channels of its blocks (3x3 conv, ReLU, 2x2 max-pool each); at most 4.
    pub cnn_channels: Vec<usize>,
    /// `cnn`: width of the hidden dense layer.
    pub cnn_dense: usize,
    /// `soft` (Dawid-Skene posteriors, default) or `hard` labels.
    pub targets: Targets,
    pub optimizer: OptimizerName,
    /// Learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    pub batch_size: usize,
    /// Maximum epochs.
    pub epochs: usize,
    /// L2 penalty (0 = off).
    pub weight_decay: f64,
    /// Early stopping: epochs without a lower validation loss (0 = off). The best epoch's
    /// weights are kept either way.
    pub patience: usize,
    pub seed: u64,
    /// Pretrained VGG16 conv weights: `.safetensors` or PyTorch `.pth` state dict in
    /// torchvision naming (`features.N.weight`). Relative to the pipeline file. Its content
    /// digest is part of the cache key.
    pub weights: Option<String>,
    /// Freeze the VGG16 conv base (as the study did with ImageNet weights).
    pub freeze: bool,
    /// Where to run: provenance only, recorded with the output, never changes what is computed.
    pub backend: BackendName,
}

impl Default for TrainParams {
    fn default() -> Self {
        let t = TrainConfig::default();
        TrainParams {
            model: ModelName::Cnn,
            // 16-32-64 trains twice as fast as 32-64-128 on 2 CPU cores for the same accuracy
            // on the demo (about a minute for 8 epochs of 2,100 images).
            cnn_channels: vec![16, 32, 64],
            cnn_dense: 128,
            targets: Targets::Soft,
            optimizer: OptimizerName::Adam,
            lr: t.lr,
            momentum: t.momentum,
            batch_size: t.batch_size,
            epochs: t.epochs,
            weight_decay: t.weight_decay,
            patience: t.patience,
            seed: t.seed,
            weights: None,
            freeze: false,
            backend: BackendName::Auto,
        }
    }
}

impl TrainParams {
    fn model_config(&self) -> ModelConfig {
        ModelConfig {
            kind: match self.model {
                ModelName::Cnn => ModelKind::Cnn,
                ModelName::Vgg16 => ModelKind::Vgg16,
            },
            freeze: self.freeze,
            cnn_channels: self.cnn_channels.clone(),
            cnn_dense: self.cnn_dense,
            ..ModelConfig::default()
        }
    }
    fn train_config(&self) -> TrainConfig {
        TrainConfig {
            targets: match self.targets {
                Targets::Soft => TargetKind::Soft,
                Targets::Hard => TargetKind::Hard,
            },
            optimizer: match self.optimizer {
                OptimizerName::Adam => OptimizerKind::Adam,
                OptimizerName::Sgd => OptimizerKind::Sgd,
            },
            lr: self.lr,
            momentum: self.momentum,
            batch_size: self.batch_size,
            epochs: self.epochs,
            weight_decay: self.weight_decay,
            patience: self.patience,
            seed: self.seed,
        }
    }
}

pub(crate) fn backend_choice(b: BackendName) -> BackendChoice {
    // PIPELINE_BACKEND overrides the param (same machine-local nature: provenance).
    match std::env::var("PIPELINE_BACKEND").ok().as_deref() {
        Some("cpu") => return BackendChoice::Cpu,
        Some("cuda") => return BackendChoice::Cuda,
        Some("auto") => return BackendChoice::Auto,
        _ => {}
    }
    match b {
        BackendName::Auto => BackendChoice::Auto,
        BackendName::Cpu => BackendChoice::Cpu,
        BackendName::Cuda => BackendChoice::Cuda,
    }
}

pub(crate) fn model_error(e: ModelError) -> StageError {
    match e {
        ModelError::Cancelled => StageError::Cancelled,
        ModelError::Io { path, source } => StageError::Io { path, source },
        ModelError::Image { path, message } => StageError::BadFile { path, message },
        ModelError::BadFile { path, message } => StageError::BadFile { path, message },
        ModelError::Weights { path, message } => StageError::BadFile { path, message: format!("weights: {message}") },
        ModelError::Config { field, message } => StageError::BadParam { param: field, message },
        other => StageError::Failed(other.to_string()),
    }
}

/// Drives the stage's bar: one unit per epoch, message = last epoch's numbers.
struct Observer<'a> {
    progress: &'a Progress,
    cancel: &'a CancelFlag,
}

impl TrainObserver for Observer<'_> {
    fn epoch(&mut self, m: &EpochMetrics, total: usize) {
        self.progress.set_position(m.epoch as u64);
        let val = match (m.val_loss, m.val_accuracy) {
            (Some(l), Some(a)) => format!(" val_loss {l:.3} val_acc {a:.3}"),
            _ => String::new(),
        };
        let line = format!(
            "epoch {}/{total} loss {:.3} acc {:.3}{val} ({:.0} img/s)",
            m.epoch, m.train_loss, m.train_accuracy, m.images_per_sec
        );
        self.progress.set_message(line.clone());
        tracing::info!(target: "train", "{line}");
    }
    fn batch(&mut self, epoch: usize, done: usize, total: usize) {
        if done == total || done % 512 < 64 {
            self.progress.set_message(format!("epoch {epoch}: {done}/{total} images"));
        }
    }
    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

pub struct Train;

impl Stage for Train {
    type Params = TrainParams;
    const KIND: &'static str = "train";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Train the CNN (or VGG16) on augmented crowd-labelled images with soft or hard targets; early stopping on an ImageFolder validation set";
    const INPUTS: &'static [InputDecl] = &[
        InputDecl { name: "images", required: true, doc: "augment output: manifest.csv + images/<class>/*.png" },
        InputDecl { name: "valid", required: true, doc: "validation ImageFolder: <root>/<class>/*.jpg" },
    ];
    // Where it ran is provenance: a model trained on a GPU is reused on a CPU machine.
    const PROVENANCE_PARAMS: &'static [&'static str] = &["backend"];

    fn param_files(p: &TrainParams) -> Vec<(String, PathBuf)> {
        // The engine resolves relative paths against the pipeline file like ctx.resolve.
        p.weights.iter().map(|w| ("weights".to_string(), PathBuf::from(w))).collect()
    }

    fn check_params(p: &TrainParams) -> Result<(), StageError> {
        p.train_config().validate().map_err(model_error)?;
        if p.cnn_channels.is_empty() || p.cnn_channels.len() > 4 || p.cnn_channels.iter().any(|&c| c == 0 || c > 1024) {
            return Err(StageError::bad_param("cnn_channels", "1 to 4 blocks of 1..=1024 channels (48 px halves at each block)"));
        }
        if p.cnn_dense == 0 {
            return Err(StageError::bad_param("cnn_dense", "at least 1"));
        }
        if p.model == ModelName::Cnn && (p.weights.is_some() || p.freeze) {
            let param = if p.weights.is_some() { "weights" } else { "freeze" };
            return Err(StageError::bad_param(param, "pretrained weights and freeze apply to model \"vgg16\" only"));
        }
        if p.freeze && p.weights.is_none() {
            return Err(StageError::bad_param("freeze", "freezing a randomly initialised conv base needs `weights`"));
        }
        Ok(())
    }

    fn run(p: &TrainParams, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let model = p.model_config();
        let classes = model.classes.clone();
        ctx.progress.set_message("decoding images");
        let train_set = load_manifest(ctx.input("images")?, &classes).map_err(model_error)?;
        let valid_set = load_image_folder(ctx.input("valid")?, &classes).map_err(model_error)?;
        ctx.cancel.check()?;
        let weights = p.weights.as_ref().map(|w| ctx.resolve(w));
        if let Some(w) = &weights {
            if !w.is_file() {
                return Err(StageError::bad_file(w, "weights file not found (ImageNet weights cannot be downloaded here; pass your own)"));
            }
        }
        let req = TrainRequest {
            model,
            train: p.train_config(),
            train_set: &train_set,
            valid_set: Some(&valid_set),
            weights,
            backend: backend_choice(p.backend),
        };
        ctx.progress.set_length(p.epochs as u64);
        let mut obs = Observer { progress: ctx.progress, cancel: ctx.cancel };
        let s = pipeline_model::train_to_dir(&req, ctx.out_dir, &mut obs).map_err(model_error)?;

        let mut out = StageOutcome::default();
        if let Some(v) = s.val_accuracy {
            out.metrics.insert("val_accuracy".into(), v);
        }
        if let Some(v) = s.val_loss {
            out.metrics.insert("val_loss".into(), v);
        }
        out.metrics.insert("best_epoch".into(), s.best_epoch as f64);
        out.provenance.insert("backend".into(), json!(s.backend));
        out.provenance.insert("device".into(), json!(s.backend_detail));
        out.provenance.insert("images_per_sec".into(), json!((s.images_per_sec * 10.0).round() / 10.0));
        out.summary.push(format!(
            "{} on {} images ({} valid), {} epochs{}, best epoch {}: val_loss {:.3} val_accuracy {:.3} [{}]",
            p.model_config().kind.name(),
            train_set.len(),
            valid_set.len(),
            s.history.len(),
            if s.stopped_early { " (early stop)" } else { "" },
            s.best_epoch,
            s.val_loss.unwrap_or(f64::NAN),
            s.val_accuracy.unwrap_or(f64::NAN),
            s.backend_detail,
        ));
        out.summary.push(format!("curves: {}", ctx.out_dir.join("curves.png").display()));
        Ok(out)
    }
}
