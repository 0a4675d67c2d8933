//! Stage kind `train`: fit the study's CNN (or VGG16) on the augmented, crowd-labelled
//! images, early-stopping on validation images that are held out of training.
//!
//! Inputs: `images` = an `augment` output (`manifest.csv` with `file,source,label,<one
//! soft-label column per class>,copy,...` and `images/<class>/*.png`); `valid` (optional) =
//! `<root>/<class>/*.jpg`. Without `valid`, `valid_fraction` of the labelled items are held
//! out (stratified by label, seeded; an item, its augmented copies and its duplicates all
//! on one side) and early stopping and the best epoch use only them.
//!
//! `ensemble: k` trains k models whose class probabilities are averaged at prediction. Without
//! `valid` the items are dealt into k stratified folds and member m validates on fold m, so
//! every item validates exactly one member; each member is a complete model directory under
//! `members/<m>/`.
//!
//! Leakage guard (`leakage: error|warn|off`): before training, the validation images are
//! compared with the training images (originals, before augmentation): exact copies (same
//! decoded pixels) and near copies (pHash, mirrored too; `pipeline_vision::dedup`).
//!
//! Output: `model.mpk` (burn record), `config.json` (rebuilds the net: model, classes,
//! training params), `classes.txt`, `metrics.csv` (one row per epoch), `curves.png`,
//! `training_images.csv` (the hashes of every image it trained or selected on, which
//! `evaluate` checks its test images against). `backend` is provenance (recorded, never part
//! of the result); `weights` is hashed into the key by content.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pipeline_model::data::{load_image_folder, load_manifest_rows, manifest_classes, Dataset};
use pipeline_model::leakage::{check_leakage, hash_rows, write_training_images, HashedImage, Leakage, Role};
use pipeline_model::{
    BackendChoice, EpochMetrics, ModelConfig, ModelError, ModelKind, TargetKind, TrainConfig,
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
    /// Small residual net with batch norm: a stem and one residual block per `cnn_channels`
    /// width (non-decreasing), global average pooling, one linear layer.
    Resnet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    /// CUDA when this build has it and a GPU is present, else CPU.
    Auto,
    Cpu,
    Cuda,
}

/// What the leakage guard does when validation or test images duplicate training images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeakageMode {
    /// Fail the stage, naming how many and a few examples.
    Error,
    /// Go on; the counts go into the summary (and `evaluate`'s report).
    Warn,
    /// Do not check.
    Off,
}

/// The `train` stage's params: the network, the training hyper-parameters (the model
/// crate's `TrainConfig`, embedded flat), pretrained weights, where to run, held-out
/// validation and the leakage guard.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    /// Network: `cnn` (default), `vgg16` or `resnet`.
    pub model: ModelName,
    /// `cnn`: output channels of its blocks (3x3 conv, ReLU, 2x2 max-pool each); at most 4.
    /// `resnet`: the stem's and the residual blocks' widths, non-decreasing; at most 4.
    pub cnn_channels: Vec<usize>,
    /// `cnn`: width of the hidden dense layer (`resnet` has none; not in its key).
    pub cnn_dense: usize,
    /// Standardise every image (zero mean, unit variance) before the net sees it, in
    /// training and prediction. Left out of the key when off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub standardize: bool,
    /// The training hyper-parameters (targets, optimizer, lr, momentum, batch_size, epochs,
    /// weight_decay, patience, seed): the model crate's config, embedded, so they and their
    /// docs are defined once. Flat in pipeline files, as before.
    #[serde(flatten)]
    pub train: TrainConfig,
    /// Pretrained VGG16 conv weights: `.safetensors` or PyTorch `.pth` state dict in
    /// torchvision naming (`features.N.weight`). Relative to the pipeline file. Its content
    /// digest is part of the cache key.
    pub weights: Option<String>,
    /// Freeze the VGG16 conv base (as the study did with ImageNet weights).
    pub freeze: bool,
    /// Where to run: provenance only, recorded with the output, never changes what is computed.
    pub backend: BackendName,
    /// Without a `valid` input: the share of labelled items held out for validation
    /// (stratified by label, with `seed`; an item's augmented copies and duplicates stay on
    /// its side).
    pub valid_fraction: f64,
    /// Validation images that duplicate training images: `error` (default) fails the stage,
    /// `warn` goes on and says so, `off` does not check.
    pub leakage: LeakageMode,
    /// Near duplicates: largest pHash Hamming distance (bits of 256) that counts.
    pub leakage_distance: u32,
    /// Train this many models and predict with the mean of their class probabilities
    /// (1 = one model). Without a `valid` input the labelled items are split into
    /// `ensemble` folds (stratified, duplicates together) and member m early-stops on fold
    /// m, trained on the others, so every item validates one member (`valid_fraction` is
    /// not used); with `valid`, every member trains on all items with seed `seed + m`.
    // Left out of the params (and the key) at 1, so every model trained before this param
    // existed keeps its key.
    #[schemars(range(min = 1, max = 20))] // MAX_ENSEMBLE
    #[serde(skip_serializing_if = "is_one")]
    pub ensemble: usize,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            model: ModelName::Cnn,
            // 16-32-64 trains twice as fast as 32-64-128 on 2 CPU cores for the same accuracy
            // on the demo (about a minute for 8 epochs of 2,100 images).
            cnn_channels: vec![16, 32, 64],
            cnn_dense: 128,
            standardize: false,
            train: TrainConfig::default(),
            weights: None,
            freeze: false,
            backend: BackendName::Auto,
            valid_fraction: 0.15,
            leakage: LeakageMode::Error,
            leakage_distance: pipeline_model::leakage::DEFAULT_NEAR_DISTANCE,
            ensemble: 1,
        }
    }
}

impl TrainParams {
    fn model_config(&self) -> ModelConfig {
        ModelConfig {
            kind: match self.model {
                ModelName::Cnn => ModelKind::Cnn,
                ModelName::Vgg16 => ModelKind::Vgg16,
                ModelName::Resnet => ModelKind::Resnet,
            },
            freeze: self.freeze,
            cnn_channels: self.cnn_channels.clone(),
            // resnet has no dense layer: its config (and `init`'s check) must not depend on a
            // value its key leaves out
            cnn_dense: if self.model == ModelName::Resnet { ModelConfig::default().cnn_dense } else { self.cnn_dense },
            standardize: self.standardize,
            ..ModelConfig::default()
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
    /// Epochs of the members trained before this one (the bar spans all members).
    offset: u64,
    /// `member 2/5: ` for an ensemble, empty otherwise.
    prefix: String,
}

impl TrainObserver for Observer<'_> {
    fn epoch(&mut self, m: &EpochMetrics, total: usize) {
        self.progress.set_position(self.offset + m.epoch as u64);
        let val = match (m.val_loss, m.val_accuracy) {
            (Some(l), Some(a)) => format!(" val_loss {l:.3} val_acc {a:.3}"),
            _ => String::new(),
        };
        let line = format!(
            "{}epoch {}/{total} loss {:.3} acc {:.3}{val} ({:.0} img/s)",
            self.prefix, m.epoch, m.train_loss, m.train_accuracy, m.images_per_sec
        );
        self.progress.set_message(line.clone());
        tracing::info!(target: "train", "{line}");
    }
    fn batch(&mut self, epoch: usize, done: usize, total: usize) {
        if done == total || done % 512 < 64 {
            self.progress.set_message(format!("{}epoch {epoch}: {done}/{total} images", self.prefix));
        }
    }
    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Names of images in an ImageFolder for messages: `<root name>/<class>/<file>`.
pub(crate) fn folder_names(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let base = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(root).unwrap_or(f).to_string_lossy().into_owned();
            if base.is_empty() {
                rel
            } else {
                format!("{base}/{rel}")
            }
        })
        .collect()
}

/// Apply the guard's verdict: `Err` in `error` mode when anything leaked.
pub(crate) fn leakage_verdict(mode: LeakageMode, l: &Leakage, what: &str, against: &str, fix: &str) -> Result<(), StageError> {
    if mode == LeakageMode::Error && l.total() > 0 {
        return Err(StageError::Failed(format!(
            "leakage: {}: {}{}. {fix}",
            l.headline(what, against),
            l.examples.join("; "),
            if l.total() > l.examples.len() { "; ..." } else { "" },
        )));
    }
    Ok(())
}

/// One labelled item of the manifest: its rows (original and copies) and the row whose
/// image stands for it (the original, else its first copy).
struct Item {
    source: String,
    rows: Vec<usize>,
    original: usize,
}

fn items_of(rows: &[pipeline_model::data::ManifestRow]) -> Vec<Item> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut items: Vec<Item> = Vec::new();
    let mut has_original: Vec<bool> = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let i = *index.entry(row.source.as_str()).or_insert_with(|| {
            items.push(Item { source: row.source.clone(), rows: Vec::new(), original: r });
            has_original.push(false);
            items.len() - 1
        });
        items[i].rows.push(r);
        if row.copy.is_none() && !has_original[i] {
            items[i].original = r;
            has_original[i] = true;
        }
    }
    items
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// `valid_of` value of an item that validates no member (one model's training items).
const NOT_VALID: usize = usize::MAX;
/// Most members `ensemble` accepts (each is a full training run).
const MAX_ENSEMBLE: usize = 20;

/// How validation images are chosen for every member.
enum Split {
    /// `inputs.valid`: every member trains on all items and validates on these.
    Given { valid: Dataset },
    /// Held-out items: member m validates on the items with `valid_of == m` (originals only)
    /// and trains on every other item with all its copies.
    Folds { valid_of: Vec<usize> },
}

/// Member `m`'s training and validation items under `valid_of`.
fn member_items<'a>(items: &'a [Item], valid_of: &[usize], m: usize) -> (Vec<&'a Item>, Vec<&'a Item>) {
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for (it, &f) in items.iter().zip(valid_of) {
        if f == m {
            va.push(it)
        } else {
            tr.push(it)
        }
    }
    (tr, va)
}

/// Member `m`'s model directory inside the ensemble's.
fn member_dir(m: usize) -> String {
    format!("members/{m}")
}

/// Counts added, examples kept up to the first list's length (at least 5).
fn merge_leakage(mut a: Leakage, b: Leakage) -> Leakage {
    a.checked += b.checked;
    a.reference = a.reference.max(b.reference);
    a.exact += b.exact;
    a.near += b.near;
    let keep = a.examples.len().max(5);
    a.examples.extend(b.examples);
    a.examples.truncate(keep);
    a
}

fn hashed(items: &[&Item], all: &Dataset, hashes: &HashMap<usize, pipeline_vision::dedup::ImageHash>, role: Role) -> Vec<HashedImage> {
    items
        .iter()
        .map(|it| HashedImage {
            name: it.source.clone(),
            role,
            label: all.classes[all.labels[it.original]].clone(),
            hash: hashes[&it.original],
        })
        .collect()
}

pub struct Train;

impl Stage for Train {
    type Params = TrainParams;
    const KIND: &'static str = "train";
    // 2: held-out validation without `valid`, leakage guard, training_images.csv.
    // 3: byte-reproducible outputs (sequential param ids in model.mpk, no wall-clock columns
    //    in metrics.csv).
    const VERSION: u32 = 3;
    const DESCRIPTION: &'static str =
        "Train the CNN (or VGG16) on augmented crowd-labelled images with soft or hard targets; early stopping on held-out items (or an ImageFolder), checked for train/validation leakage";
    const INPUTS: &'static [InputDecl] = &[
        InputDecl { name: "images", required: true, doc: "augment output: manifest.csv + images/<class>/*.png" },
        InputDecl {
            name: "valid",
            required: false,
            doc: "validation ImageFolder: <root>/<class>/*.jpg (optional: without it, valid_fraction of the items are held out)",
        },
        InputDecl {
            name: "init",
            required: false,
            doc: "another train stage's model (one model, the same network and classes): training starts from its weights (fine-tuning, e.g. after pretraining on synthetic faces)",
        },
    ];
    // Where it ran is provenance: a model trained on a GPU is reused on a CPU machine.
    const PROVENANCE_PARAMS: &'static [&'static str] = &["backend"];

    fn unused_params(p: &TrainParams, inputs: &[&str]) -> Vec<&'static str> {
        // an ensemble validates each member on a fold, and `inputs.valid` is validated on
        // as given: neither holds out `valid_fraction` of the items
        let mut unused = Vec::new();
        if p.ensemble > 1 || inputs.contains(&"valid") {
            unused.push("valid_fraction");
        }
        // global average pooling: no hidden dense layer
        if p.model == ModelName::Resnet {
            unused.push("cnn_dense");
        }
        unused
    }

    fn param_files(p: &TrainParams) -> Vec<(String, PathBuf)> {
        // The engine resolves relative paths against the pipeline file like ctx.resolve.
        p.weights.iter().map(|w| ("weights".to_string(), PathBuf::from(w))).collect()
    }

    fn check_params(p: &TrainParams) -> Result<(), StageError> {
        p.train.validate().map_err(model_error)?;
        if p.cnn_channels.is_empty() || p.cnn_channels.len() > 4 || p.cnn_channels.iter().any(|&c| c == 0 || c > 1024) {
            return Err(StageError::bad_param("cnn_channels", "1 to 4 blocks of 1..=1024 channels (48 px halves at each block)"));
        }
        // found by a hostile pass: 100,000,000 aborted the process allocating 921 GB
        if (p.cnn_dense == 0 || p.cnn_dense > 65_536) && p.model != ModelName::Resnet {
            return Err(StageError::bad_param("cnn_dense", "1..=65536 units"));
        }
        if p.model == ModelName::Resnet && p.cnn_channels.windows(2).any(|w| w[1] < w[0]) {
            return Err(StageError::bad_param("cnn_channels", "resnet widths must not decrease, e.g. [16, 32, 64]"));
        }
        if p.model != ModelName::Vgg16 && (p.weights.is_some() || p.freeze) {
            let param = if p.weights.is_some() { "weights" } else { "freeze" };
            return Err(StageError::bad_param(param, "pretrained weights and freeze apply to model \"vgg16\" only"));
        }
        if p.freeze && p.weights.is_none() {
            return Err(StageError::bad_param("freeze", "freezing a randomly initialised conv base needs `weights`"));
        }
        if !(p.valid_fraction > 0.0 && p.valid_fraction < 1.0) {
            return Err(StageError::bad_param("valid_fraction", "must be in (0, 1), e.g. 0.15"));
        }
        super::check_leakage_distance(p.leakage_distance)?;
        if !(1..=MAX_ENSEMBLE).contains(&p.ensemble) {
            return Err(StageError::bad_param("ensemble", format!("members to train: 1 (one model) to {MAX_ENSEMBLE}")));
        }
        Ok(())
    }

    fn run(p: &TrainParams, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let mut model = p.model_config();
        // The classes are the data's (augment's soft-label columns), so a crowd with another
        // class list trains; a hard-label-only manifest keeps the study's seven.
        if let Some(c) = manifest_classes(ctx.input("images")?).map_err(model_error)? {
            model.classes = c;
        }
        let classes = model.classes.clone();
        // Checked before any image is decoded: a model of another network or class list
        // cannot start this training.
        let init = match ctx.inputs.get("init") {
            Some(_) if p.weights.is_some() => {
                // both would set the starting weights; init's would silently win
                return Err(StageError::bad_param("weights", "input `init` gives the starting weights too: give one of them"));
            }
            Some(dir) => {
                pipeline_model::artifact::check_init(dir, &model).map_err(|e| match e {
                    ModelError::BadFile { path, message } => StageError::bad_file(path, format!("input `init`: {message}")),
                    ModelError::Io { path, source } => StageError::bad_file(path, format!("input `init` is not a model directory: {source}")),
                    other => model_error(other),
                })?;
                Some(dir.clone())
            }
            None => None,
        };
        ctx.progress.set_message("decoding images");
        let (all, rows) = load_manifest_rows(ctx.input("images")?, &classes).map_err(model_error)?;
        ctx.cancel.check()?;
        let items = items_of(&rows);
        let originals: Vec<usize> = items.iter().map(|it| it.original).collect();
        let near = (p.leakage != LeakageMode::Off).then_some(p.leakage_distance);
        let hashes: HashMap<usize, pipeline_vision::dedup::ImageHash> =
            originals.iter().copied().zip(hash_rows(&all, &originals)).collect();
        let mut notes = Vec::new();

        let k = p.ensemble;
        let (split, recorded, leak) = match ctx.inputs.get("valid") {
            Some(valid_root) => {
                let valid_set = load_image_folder(valid_root, &classes).map_err(model_error)?;
                let train_items: Vec<&Item> = items.iter().collect();
                let mut recorded = hashed(&train_items, &all, &hashes, Role::Train);
                let names = folder_names(valid_root, &valid_set.files);
                let vh = hash_rows(&valid_set, &(0..valid_set.len()).collect::<Vec<_>>());
                let valid_hashed: Vec<HashedImage> = names
                    .into_iter()
                    .zip(vh)
                    .enumerate()
                    .map(|(i, (name, hash))| HashedImage { name, role: Role::Valid, label: classes[valid_set.labels[i]].clone(), hash })
                    .collect();
                let leak = match p.leakage {
                    LeakageMode::Off => None,
                    mode => {
                        let l = check_leakage(&recorded, &valid_hashed, near);
                        leakage_verdict(
                            mode,
                            &l,
                            "valid",
                            "training images",
                            "Early stopping on them measures memory, not generalisation: drop `inputs.valid` to hold validation items out of training, or set `leakage: warn`",
                        )?;
                        Some(l)
                    }
                };
                recorded.extend(valid_hashed);
                if k > 1 {
                    notes.push(format!(
                        "ensemble: {k} members, each trained on all {} items with seeds {}..={} and early-stopped on `valid`",
                        items.len(),
                        p.train.seed,
                        p.train.seed.wrapping_add(k as u64 - 1)
                    ));
                }
                (Split::Given { valid: valid_set }, recorded, leak)
            }
            None => {
                // Hold items out: duplicates grouped, stratified by label, seeded. One model:
                // `valid_fraction` of the items; an ensemble: k folds, member m validates on
                // fold m, so every item validates exactly one member.
                let item_hashes: Vec<_> = originals.iter().map(|r| hashes[r]).collect();
                let groups = pipeline_vision::dedup::duplicate_groups(&item_hashes, Some(p.leakage_distance));
                let labels: Vec<usize> = originals.iter().map(|&r| all.labels[r]).collect();
                let valid_of: Vec<usize> = if k == 1 {
                    pipeline_model::split::holdout_items(&labels, &groups, p.valid_fraction, p.train.seed)
                        .into_iter()
                        .map(|v| if v { 0 } else { NOT_VALID })
                        .collect()
                } else {
                    // A class's only item is never held out (it would leave a member without
                    // the class), so it does not count as an item to validate on.
                    let mut per_class: HashMap<usize, usize> = HashMap::new();
                    for (i, &g) in groups.iter().enumerate() {
                        if g == i {
                            *per_class.entry(labels[i]).or_default() += 1;
                        }
                    }
                    let distinct: usize = per_class.values().filter(|&&n| n > 1).sum();
                    if distinct < k {
                        return Err(StageError::bad_param(
                            "ensemble",
                            format!("{k} members need {k} distinct items to validate on, one fold each; the manifest has {distinct} (a class's only item is never held out)"),
                        ));
                    }
                    pipeline_model::split::kfold_items(&labels, &groups, k, p.train.seed)
                };
                let dup_items = groups.iter().enumerate().filter(|&(i, &g)| g != i).count();
                let mut leak: Option<Leakage> = None;
                let mut fold_sizes = Vec::with_capacity(k);
                for m in 0..k {
                    let (tr, va) = member_items(&items, &valid_of, m);
                    if va.is_empty() {
                        return Err(StageError::bad_param(
                            "valid_fraction",
                            format!("holds out no item of {} (every class needs 2 items or more), so there is nothing to validate on: give `inputs.valid`", items.len()),
                        ));
                    }
                    fold_sizes.push(va.len());
                    if p.leakage != LeakageMode::Off {
                        let l = check_leakage(&hashed(&tr, &all, &hashes, Role::Train), &hashed(&va, &all, &hashes, Role::Valid), near);
                        leakage_verdict(p.leakage, &l, "held-out", "training images", "This is a bug of the split: please report it")?;
                        leak = Some(match leak {
                            None => l,
                            Some(acc) => merge_leakage(acc, l),
                        });
                    }
                }
                let dup_note = if dup_items > 0 { format!("; {dup_items} duplicate items kept with theirs") } else { String::new() };
                let recorded = if k == 1 {
                    let (tr, va) = member_items(&items, &valid_of, 0);
                    notes.push(format!(
                        "validation: {} of {} items held out (valid_fraction {}, stratified by label, seed {}), with their augmented copies{dup_note}",
                        va.len(),
                        items.len(),
                        p.valid_fraction,
                        p.train.seed,
                    ));
                    let mut recorded = hashed(&tr, &all, &hashes, Role::Train);
                    recorded.extend(hashed(&va, &all, &hashes, Role::Valid));
                    recorded
                } else {
                    notes.push(format!(
                        "ensemble: {k} members; the {} items dealt into {k} folds (stratified by label, seed {}; sizes {fold_sizes:?}){dup_note}{}; member m early-stops on fold m with its augmented copies held out and trains on the rest (seed {} + m)",
                        items.len(),
                        p.train.seed,
                        match valid_of.iter().filter(|&&f| f == k).count() {
                            0 => String::new(),
                            n => format!("; {n} items, each its class's only one, train every member"),
                        },
                        p.train.seed,
                    ));
                    // Every item trains k - 1 members: all of them are training images.
                    hashed(&items.iter().collect::<Vec<_>>(), &all, &hashes, Role::Train)
                };
                (Split::Folds { valid_of }, recorded, leak)
            }
        };
        if let Some(l) = &leak {
            if l.total() > 0 {
                notes.push(format!("LEAKAGE (warn): {}", l.headline("validation", "training images")));
                notes.extend(l.examples.iter().map(|e| format!("  {e}")));
            } else {
                notes.push(format!(
                    "leakage: none of the {} validation images duplicates one of the {} training images",
                    l.checked, l.reference
                ));
            }
        }
        ctx.cancel.check()?;
        let weights = p.weights.as_ref().map(|w| ctx.resolve(w));
        if let Some(w) = &weights {
            if !w.is_file() {
                return Err(StageError::bad_file(w, "weights file not found (ImageNet weights cannot be downloaded here; pass your own)"));
            }
        }
        ctx.progress.set_length((p.train.epochs * k) as u64);
        let mut summaries: Vec<(pipeline_model::TrainSummary, usize, usize)> = Vec::with_capacity(k);
        for m in 0..k {
            let (tr_owned, va_owned);
            let (train_set, valid_set): (&Dataset, &Dataset) = match &split {
                Split::Given { valid } => (&all, valid),
                Split::Folds { valid_of } => {
                    let (tr, va) = member_items(&items, &valid_of, m);
                    let train_rows: Vec<usize> = tr.iter().flat_map(|it| it.rows.iter().copied()).collect();
                    let valid_rows: Vec<usize> = va.iter().map(|it| it.original).collect();
                    let mut v = all.subset(&valid_rows);
                    if p.train.targets == TargetKind::Hard {
                        v.to_hard_targets();
                    }
                    tr_owned = all.subset(&train_rows);
                    va_owned = v;
                    (&tr_owned, &va_owned)
                }
            };
            let mut train = p.train.clone();
            train.seed = p.train.seed.wrapping_add(m as u64);
            let req = TrainRequest {
                model: model.clone(),
                train,
                train_set,
                valid_set: Some(valid_set),
                weights: weights.clone(),
                init: init.clone(),
                backend: backend_choice(p.backend),
            };
            let (dir, prefix) = if k == 1 {
                (ctx.out_dir.to_path_buf(), String::new())
            } else {
                (ctx.out_dir.join(member_dir(m)), format!("member {}/{k}: ", m + 1))
            };
            let mut obs = Observer { progress: ctx.progress, cancel: ctx.cancel, offset: (m * p.train.epochs) as u64, prefix };
            let s = pipeline_model::train_to_dir(&req, &dir, &mut obs).map_err(model_error)?;
            summaries.push((s, train_set.len(), valid_set.len()));
        }
        if k > 1 {
            let members: Vec<pipeline_model::EnsembleMember<'_>> = summaries
                .iter()
                .enumerate()
                .map(|(m, (s, _, v))| pipeline_model::EnsembleMember { dir: member_dir(m), summary: s, valid_images: *v })
                .collect();
            pipeline_model::write_ensemble(ctx.out_dir, &model, &p.train, &members).map_err(model_error)?;
        }
        write_training_images(&ctx.out_dir.join(pipeline_model::TRAINING_IMAGES), &recorded).map_err(model_error)?;

        let mut out = StageOutcome::default();
        if let Some(l) = &leak {
            out.metrics.insert("leakage_exact".into(), l.exact as f64);
            out.metrics.insert("leakage_near".into(), l.near as f64);
        }
        let n_valid: usize = summaries.iter().map(|(_, _, v)| v).sum();
        let folds = matches!(split, Split::Folds { .. });
        // Pooled over the members' validation images (weighted by their count): with an
        // ensemble on folds, the out-of-fold figure of one member, not of the ensemble.
        let pooled = |f: &dyn Fn(&pipeline_model::TrainSummary) -> Option<f64>| -> Option<f64> {
            let mut sum = 0.0;
            for (s, _, v) in &summaries {
                sum += f(s)? * *v as f64;
            }
            (n_valid > 0).then(|| sum / n_valid as f64)
        };
        let val_accuracy = pooled(&|s| s.val_accuracy);
        let val_loss = pooled(&|s| s.val_loss);
        if let Some(v) = val_accuracy {
            out.metrics.insert("val_accuracy".into(), v);
        }
        if let Some(v) = val_loss {
            out.metrics.insert("val_loss".into(), v);
        }
        let best_epoch = summaries.iter().map(|(s, _, _)| s.best_epoch as f64).sum::<f64>() / k as f64;
        out.metrics.insert("best_epoch".into(), best_epoch);
        let first = &summaries[0].0;
        let ips = summaries.iter().map(|(s, _, _)| s.images_per_sec).sum::<f64>() / k as f64;
        out.provenance.insert("backend".into(), json!(first.backend));
        out.provenance.insert("device".into(), json!(first.backend_detail));
        out.provenance.insert("images_per_sec".into(), json!((ips * 10.0).round() / 10.0));
        for (m, (s, n_train, n_val)) in summaries.iter().enumerate() {
            out.summary.push(format!(
                "{}{} on {} images ({} valid), {} epochs{}, best epoch {}: val_loss {:.3} val_accuracy {:.3} [{}]",
                if k > 1 { format!("member {}/{k} ({}): ", m + 1, member_dir(m)) } else { String::new() },
                p.model_config().kind.name(),
                n_train,
                n_val,
                s.history.len(),
                if s.stopped_early { " (early stop)" } else { "" },
                s.best_epoch,
                s.val_loss.unwrap_or(f64::NAN),
                s.val_accuracy.unwrap_or(f64::NAN),
                s.backend_detail,
            ));
        }
        if k > 1 && folds {
            out.summary.push(format!(
                "ensemble of {k}: predictions average the members' class probabilities; out-of-fold val_loss {:.3} val_accuracy {:.3} over {n_valid} validation images (one member's held-out figure; the ensemble itself has no held-out figure here: evaluate it on a test set)",
                val_loss.unwrap_or(f64::NAN),
                val_accuracy.unwrap_or(f64::NAN),
            ));
        } else if k > 1 {
            out.summary.push(format!(
                "ensemble of {k}: predictions average the members' class probabilities; the members' mean val_loss {:.3} val_accuracy {:.3} on the {} `valid` images (each member early-stopped on them, so these flatter it)",
                val_loss.unwrap_or(f64::NAN),
                val_accuracy.unwrap_or(f64::NAN),
                n_valid / k,
            ));
        }
        out.summary.extend(notes);
        out.summary.push(format!("curves: {}", ctx.out_dir.join("curves.png").display()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::stages::augment::{Augment, AugmentParams};

    /// An augment output over two classes, `n` distinct faces each, 3 copies per item.
    fn augmented(tmp: &Path, n: usize) -> PathBuf {
        let input = tmp.join("ds");
        std::fs::create_dir_all(input.join("images")).unwrap();
        let mut labels = String::from("item,label,image\n");
        for (c, class) in ["cat", "dog"].iter().enumerate() {
            for i in 0..n {
                pipeline_vision::render_face(c, i as u64, 48)
                    .save(input.join(format!("images/{class}{i}.png")))
                    .unwrap();
                labels.push_str(&format!("{class}{i},{class},images/{class}{i}.png\n"));
            }
        }
        std::fs::write(input.join("labels.csv"), labels).unwrap();
        std::fs::write(input.join("summary.json"), r#"{"classes": ["cat", "dog"]}"#).unwrap();
        let out = tmp.join("aug");
        std::fs::create_dir_all(&out).unwrap();
        let inputs: BTreeMap<String, PathBuf> = [("labels".to_string(), input.clone())].into();
        crate::stages::test_run::<Augment>(
            &AugmentParams {
                per_class: 3 * n,
                ..Default::default()
            },
            &inputs,
            &out,
            &input,
            None,
        )
        .unwrap();
        out
    }

    fn train(p: &TrainParams, images: &Path, out: &Path) -> Result<StageOutcome, StageError> {
        std::fs::create_dir_all(out).unwrap();
        let inputs = BTreeMap::from([("images".to_string(), images.to_path_buf())]);
        crate::stages::test_run::<Train>(p, &inputs, out, images, None)
    }

    #[test]
    fn an_ensemble_trains_one_member_per_fold_and_predicts_with_their_mean() {
        let tmp = tempfile::tempdir().unwrap();
        let images = augmented(tmp.path(), 6);
        let mut p = TrainParams {
            ensemble: 3,
            ..Default::default()
        };
        p.train.epochs = 1;
        let out = tmp.path().join("t");
        let o = train(&p, &images, &out).unwrap();
        let text = o.summary.join("\n");
        assert!(
            text.contains("ensemble: 3 members; the 12 items dealt into 3 folds"),
            "{text}"
        );
        assert!(text.contains("member 3/3 (members/2): "), "{text}");
        for m in 0..3 {
            assert!(out.join(format!("members/{m}/model.mpk")).is_file());
            assert!(out.join(format!("members/{m}/config.json")).is_file());
        }
        // Each member validates on 4 of the 12 items (fold m) and trains on the other 8 with
        // their copies: 8 items x 3 images.
        assert_eq!(text.matches("on 24 images (4 valid)").count(), 3, "{text}");
        let a = pipeline_model::load_artifact(&out).unwrap();
        assert_eq!(a.member_count(), 3);
        // Every item is recorded as a training image: evaluate's guard sees all of them.
        let rec = std::fs::read_to_string(out.join(pipeline_model::TRAINING_IMAGES)).unwrap();
        assert_eq!(rec.lines().count(), 1 + 12, "{rec}");

        // The ensemble's probabilities are the members' mean.
        let (all, _) = load_manifest_rows(&images, a.classes()).unwrap();
        let probs =
            pipeline_model::predict::artifact_probabilities(&a, &all.pixels, BackendChoice::Cpu)
                .unwrap();
        let mut mean = vec![0f32; probs.len()];
        for m in 0..3 {
            let one = pipeline_model::load_artifact(&out.join(format!("members/{m}"))).unwrap();
            let pm = pipeline_model::predict::artifact_probabilities(
                &one,
                &all.pixels,
                BackendChoice::Cpu,
            )
            .unwrap();
            mean.iter_mut().zip(&pm).for_each(|(s, v)| *s += v / 3.0);
        }
        assert!(probs.iter().zip(&mean).all(|(a, b)| (a - b).abs() < 1e-5));

        // Same key, same bytes: a second run writes an identical ensemble.
        let again = tmp.path().join("t2");
        train(&p, &images, &again).unwrap();
        for f in [
            "config.json",
            "members/0/model.mpk",
            "members/2/model.mpk",
            "metrics.csv",
        ] {
            assert_eq!(
                std::fs::read(out.join(f)).unwrap(),
                std::fs::read(again.join(f)).unwrap(),
                "{f}"
            );
        }

        // A config is data: a member path that leaves the model directory is refused.
        let cfg_path = out.join("config.json");
        let cfg = std::fs::read_to_string(&cfg_path).unwrap();
        std::fs::write(
            &cfg_path,
            cfg.replace("\"members/1/model.mpk\"", "\"../t2/members/1/model.mpk\""),
        )
        .unwrap();
        let e = pipeline_model::load_artifact(&out)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("not a relative path inside the model directory"),
            "{e}"
        );
        std::fs::write(&cfg_path, &cfg).unwrap();
        assert!(cfg.contains("\"format\": \"pipeline-model/ensemble-1\""), "{cfg}");

        // A member whose classes are another order is refused, naming its config (it was
        // averaged in the wrong class order); so is a record under another extension.
        let member_cfg = out.join("members/1/config.json");
        let mc = std::fs::read_to_string(&member_cfg).unwrap();
        let swapped = mc.replace("\"cat\"", "\"TMP\"").replace("\"dog\"", "\"cat\"").replace("\"TMP\"", "\"dog\"");
        std::fs::write(&member_cfg, swapped).unwrap();
        let e = pipeline_model::load_artifact(&out).err().expect("refused").to_string();
        assert!(e.contains("members/1/config.json") && e.contains("ensemble member with classes"), "{e}");
        std::fs::write(&member_cfg, mc).unwrap();
        std::fs::write(&cfg_path, cfg.replace("\"members/1/model.mpk\"", "\"members/1/model.mpk.bak\"")).unwrap();
        let e = pipeline_model::load_artifact(&out).err().expect("refused").to_string();
        assert!(e.contains("is not a .mpk record"), "{e}");
        // a trailing slash names a directory, not the record (it said "record missing")
        std::fs::write(&cfg_path, cfg.replace("\"members/1/model.mpk\"", "\"members/1/model.mpk/\"")).unwrap();
        let e = pipeline_model::load_artifact(&out).err().expect("refused").to_string();
        assert!(e.contains("\"members/1/model.mpk/\" is not a .mpk record"), "{e}");
        for (rel, says) in [
            ("members/1/model.mpk/.", "\"members/1/model.mpk/.\" is not a .mpk record"),
            // the member's directory
            ("members/1", "\"members/1\" is not a .mpk record"),
            // a control character is shown escaped: printed raw it named `model.mpk`
            ("members/1/mo\\u001bdel.mpk", "\"members/1/mo\\u{1b}del.mpk\": model record missing"),
        ] {
            std::fs::write(&cfg_path, cfg.replace("\"members/1/model.mpk\"", &format!("\"{rel}\""))).unwrap();
            let e = pipeline_model::load_artifact(&out).err().expect("refused").to_string();
            assert!(e.contains(says), "{rel}: {e}");
        }
        std::fs::create_dir(out.join("members/1/d.mpk")).unwrap();
        std::fs::write(&cfg_path, cfg.replace("\"members/1/model.mpk\"", "\"members/1/d.mpk\"")).unwrap();
        let e = pipeline_model::load_artifact(&out).err().expect("refused").to_string();
        assert!(e.contains("\"members/1/d.mpk\" is not a file"), "{e}");
        std::fs::write(&cfg_path, &cfg).unwrap();
        assert!(pipeline_model::load_artifact(&out).is_ok());
    }

    #[test]
    fn init_starts_from_another_train_output_and_refuses_what_cannot_start_it() {
        let tmp = tempfile::tempdir().unwrap();
        let images = augmented(tmp.path(), 6);
        let mut p = TrainParams::default();
        p.train.epochs = 1;
        let base = tmp.path().join("base");
        train(&p, &images, &base).unwrap();
        let with_init = |p: &TrainParams, init: &Path, out: &str| {
            let out = tmp.path().join(out);
            std::fs::create_dir_all(&out).unwrap();
            let inputs = BTreeMap::from([("images".to_string(), images.clone()), ("init".to_string(), init.to_path_buf())]);
            crate::stages::test_run::<Train>(p, &inputs, &out, &images, None)
        };
        with_init(&p, &base, "tuned").unwrap();
        assert!(pipeline_model::load_artifact(&tmp.path().join("tuned")).is_ok());
        // another network: refused before any image is decoded, naming the input and field
        let wider = TrainParams { cnn_dense: 64, ..p.clone() };
        let e = with_init(&wider, &base, "wider").unwrap_err().to_string();
        assert!(e.contains("input `init`") && e.contains("cnn_dense 128 (this training: 64)"), "{e}");
        // an ensemble cannot start one model
        let ens = TrainParams { ensemble: 2, ..p.clone() };
        train(&ens, &images, &tmp.path().join("ens")).unwrap();
        let e = with_init(&p, &tmp.path().join("ens"), "from-ens").unwrap_err().to_string();
        assert!(e.contains("input `init`") && e.contains("ensemble of 2 members"), "{e}");
        // not a model at all
        let e = with_init(&p, &images, "from-images").unwrap_err().to_string();
        assert!(e.contains("input `init` is not a model directory"), "{e}");
    }

    #[test]
    fn a_leakage_distance_beyond_the_limit_names_the_hash_size_and_the_default() {
        let p = TrainParams { leakage_distance: 33, ..Default::default() };
        let e = <Train as Stage>::check_params(&p).unwrap_err().to_string();
        // the pHash has 256 bits (it said 64, and a default of 8, from an older hash)
        assert!(e.contains("at most 32 bits of 256 (24 is the measured default)"), "{e}");
    }

    #[test]
    fn an_ensemble_larger_than_the_items_is_refused_naming_the_param() {
        let tmp = tempfile::tempdir().unwrap();
        let images = augmented(tmp.path(), 2);
        let mut p = TrainParams {
            ensemble: 5,
            ..Default::default()
        };
        p.train.epochs = 1;
        let e = train(&p, &images, &tmp.path().join("t"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ensemble") && e.contains("the manifest has 4"),
            "{e}"
        );
        assert!(Train::check_params(&TrainParams {
            ensemble: 0,
            ..Default::default()
        })
        .is_err());
        assert!(Train::check_params(&TrainParams {
            ensemble: MAX_ENSEMBLE + 1,
            ..Default::default()
        })
        .is_err());
    }
}
