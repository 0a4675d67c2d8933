//! Our own training loop: small, explicit, and the data path is a memcpy per batch.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::conv::ModelBackend;
use burn::tensor::{Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::artifact::{ArtifactConfig, ARTIFACT_CONFIG, ARTIFACT_RECORD};
use crate::backend::{run_train, BackendChoice, ResolvedBackend, TrainTask};
use crate::data::{Dataset, IMAGE_SIZE, PIXELS};
use crate::error::{ModelError, Result};
use crate::net::{ModelConfig, Net, TRAIN_LOCK};

// The hyper-parameters live in `config` so `artifact` (which stores them) does not import
// this module; re-exported here, where users look for them.
pub use crate::config::{OptimizerKind, TargetKind, TrainConfig};

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// Training images per second this epoch (validation excluded).
    pub images_per_sec: f64,
    pub seconds: f64,
}

/// Hooks into the loop: a stage drives its progress bar and cancellation through these.
pub trait TrainObserver {
    /// After each epoch (metrics include validation).
    fn epoch(&mut self, _m: &EpochMetrics, _total_epochs: usize) {}
    /// After each training batch: images done this epoch, of `total`.
    fn batch(&mut self, _epoch: usize, _done: usize, _total: usize) {}
    /// Checked between batches; `true` stops with [`ModelError::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

/// Observer that ignores everything.
pub struct NoObserver;
impl TrainObserver for NoObserver {}

/// What `train_to_dir` returns besides the files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub history: Vec<EpochMetrics>,
    /// Epoch (1-based) whose weights were saved.
    pub best_epoch: usize,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub stopped_early: bool,
    /// Mean training throughput over all epochs.
    pub images_per_sec: f64,
    pub backend: String,
    pub backend_detail: String,
}

/// Inputs of one training run.
pub struct TrainRequest<'a> {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub train_set: &'a Dataset,
    pub valid_set: Option<&'a Dataset>,
    /// Pretrained conv weights (vgg16 only).
    pub weights: Option<PathBuf>,
    /// A model directory (another `train`'s output) whose weights training starts from
    /// (fine-tuning): the same network and classes, checked by [`check_init`].
    pub init: Option<PathBuf>,
    pub backend: BackendChoice,
}

/// Train and write the artifact into `out_dir`: `model.mpk` (burn record), `config.json`
/// (rebuilds the net: model + training config + classes), `classes.txt`, `metrics.csv`,
/// `curves.png`.
pub fn train_to_dir(req: &TrainRequest<'_>, out_dir: &Path, observer: &mut dyn TrainObserver) -> Result<TrainSummary> {
    req.model.validate()?;
    req.train.validate()?;
    check_dataset(req.train_set, &req.model, "train")?;
    if let Some(v) = req.valid_set {
        check_dataset(v, &req.model, "valid")?;
    }
    if let Some(dir) = &req.init {
        crate::artifact::check_init(dir, &req.model)?; // before anything is written
    }
    let backend = req.backend.resolve()?;
    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::io(out_dir, e))?;
    let _guard = TRAIN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    keep_freed_memory();
    let summary = with_standardized(req, |req| run_train(backend, Fit { req, out_dir: Some(out_dir), observer }))?;
    write_metrics_csv(&out_dir.join("metrics.csv"), &summary.history)?;
    write_curves(&out_dir.join("curves.png"), &summary.history)?;
    Ok(summary)
}

/// The same loop without writing anything (benchmarks).
pub fn train_in_memory(req: &TrainRequest<'_>, observer: &mut dyn TrainObserver) -> Result<TrainSummary> {
    req.model.validate()?;
    req.train.validate()?;
    check_dataset(req.train_set, &req.model, "train")?;
    let backend = req.backend.resolve()?;
    let _guard = TRAIN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    keep_freed_memory();
    with_standardized(req, |req| run_train(backend, Fit { req, out_dir: None, observer }))
}

/// Run `f` on the request, its images standardised first when `ModelConfig::standardize`
/// asks for it (copies: the caller's data untouched).
fn with_standardized<T>(req: &TrainRequest<'_>, f: impl FnOnce(&TrainRequest<'_>) -> T) -> T {
    if !req.model.standardize {
        return f(req);
    }
    let copy = |d: &Dataset| {
        let mut d = d.clone();
        crate::data::standardize_images(&mut d.pixels);
        d
    };
    let (tr, va) = (copy(req.train_set), req.valid_set.map(copy));
    f(&TrainRequest { train_set: &tr, valid_set: va.as_ref(), ..req.clone_config() })
}

impl<'a> TrainRequest<'a> {
    /// The same request (model, training config, data, weights, backend).
    fn clone_config(&self) -> TrainRequest<'a> {
        TrainRequest {
            model: self.model.clone(),
            train: self.train.clone(),
            train_set: self.train_set,
            valid_set: self.valid_set,
            weights: self.weights.clone(),
            init: self.init.clone(),
            backend: self.backend,
        }
    }
}

/// Training allocates and frees the same multi-megabyte activation buffers every batch;
/// with glibc's defaults each is a fresh mmap whose pages fault in again (11 % of the CPU
/// training time in a profile). Keep them in the heap instead: raise the mmap threshold
/// to its maximum (32 MiB) and never trim. Process-wide, set once.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator tuning parameters.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        });
    }
}

fn check_dataset(ds: &Dataset, model: &ModelConfig, which: &str) -> Result<()> {
    if ds.is_empty() {
        return Err(ModelError::Data(format!("{which} set has no images")));
    }
    if ds.classes != model.classes {
        return Err(ModelError::Data(format!(
            "{which} set classes [{}] differ from the model's [{}]",
            ds.classes.join(", "),
            model.classes.join(", ")
        )));
    }
    if ds.pixels.len() != ds.len() * PIXELS || ds.targets.len() != ds.len() * ds.num_classes() {
        return Err(ModelError::Data(format!("{which} set buffers do not match its image count")));
    }
    Ok(())
}

struct Fit<'a, 'b> {
    req: &'a TrainRequest<'a>,
    out_dir: Option<&'a Path>,
    observer: &'b mut dyn TrainObserver,
}

impl TrainTask for Fit<'_, '_> {
    type Output = Result<TrainSummary>;
    fn run<B: AutodiffBackend + ModelBackend>(self, device: B::Device, backend: ResolvedBackend) -> Result<TrainSummary>
    where
        B::InnerBackend: ModelBackend,
    {
        let req = self.req;
        B::seed(&device, req.train.seed);
        let net = req.model.init::<B>(&device);
        let net = crate::weights::apply_pretrained(net, req.weights.as_deref(), req.model.freeze, &device)?;
        let net = match &req.init {
            Some(dir) => crate::artifact::load_init::<B>(net, dir, &req.model, &device)?,
            None => net,
        };
        let tc = &req.train;
        let wd = (tc.weight_decay > 0.0).then(|| WeightDecayConfig::new(tc.weight_decay as f32));
        let (best, mut summary) = match tc.optimizer {
            OptimizerKind::Adam => {
                let optim = AdamConfig::new().with_weight_decay(wd).init::<B, Net<B>>();
                fit_loop(net, optim, req, &device, self.observer)?
            }
            OptimizerKind::Sgd => {
                let momentum = (tc.momentum > 0.0)
                    .then(|| MomentumConfig { momentum: tc.momentum, dampening: 0.0, nesterov: false });
                let optim = SgdConfig::new().with_weight_decay(wd).with_momentum(momentum).init::<B, Net<B>>();
                fit_loop(net, optim, req, &device, self.observer)?
            }
        };
        summary.backend = backend.name().to_string();
        summary.backend_detail = backend.describe();
        if let Some(dir) = self.out_dir {
            save_artifact(best.valid(), req, &summary, dir)?;
        }
        Ok(summary)
    }
}

fn batch_tensors<B: Backend>(ds: &Dataset, idx: &[usize], x: &mut Vec<f32>, y: &mut Vec<f32>, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 2>) {
    ds.gather(idx, x, y);
    tensors(x, y, idx.len(), ds.num_classes(), device)
}

/// A gathered batch of `b` images and their `k`-class targets as tensors.
fn tensors<B: Backend>(x: &[f32], y: &[f32], b: usize, k: usize, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 2>) {
    let xt = Tensor::from_data(TensorData::new(x.to_vec(), [b, 1, IMAGE_SIZE, IMAGE_SIZE]), device);
    let yt = Tensor::from_data(TensorData::new(y.to_vec(), [b, k]), device);
    (xt, yt)
}

/// Mixup of one batch in place: `x_i <- l x_i + (1 - l) x_p(i)`, the same for the targets,
/// with `l ~ Beta(alpha, alpha)` (Johnk's method: exact for any alpha, fast for small ones)
/// and `p` a random permutation of the batch.
pub(crate) fn mix_batch(x: &mut [f32], y: &mut [f32], b: usize, k: usize, alpha: f64, rng: &mut impl rand::Rng) {
    if b < 2 {
        return;
    }
    // (bounded: alpha >= 0.01 accepts within a few tries; past the bound, no mixing)
    let l = (0..10_000)
        .find_map(|_| {
            let u = rng.gen::<f64>().powf(1.0 / alpha);
            let v = rng.gen::<f64>().powf(1.0 / alpha);
            (u + v <= 1.0 && u + v > 0.0).then(|| (u / (u + v)) as f32)
        })
        .unwrap_or(1.0);
    let mut perm: Vec<usize> = (0..b).collect();
    perm.shuffle(rng);
    let (x0, y0) = (x.to_vec(), y.to_vec());
    let px = x.len() / b;
    for (i, &j) in perm.iter().enumerate() {
        for (a, o) in x[i * px..(i + 1) * px].iter_mut().zip(&x0[j * px..(j + 1) * px]) {
            *a = l * *a + (1.0 - l) * o;
        }
        for (a, o) in y[i * k..(i + 1) * k].iter_mut().zip(&y0[j * k..(j + 1) * k]) {
            *a = l * *a + (1.0 - l) * o;
        }
    }
}

/// Mean of `-sum_k q_k log softmax(logits)_k` over the batch.
pub fn soft_cross_entropy<B: Backend>(logits: Tensor<B, 2>, q: Tensor<B, 2>) -> Tensor<B, 1> {
    (q * log_softmax(logits, 1)).sum_dim(1).mean().neg()
}

/// Sum of the loss and of correct predictions (argmax of logits = argmax of target) over a
/// batch, kept on the device so nothing syncs until the epoch ends.
fn batch_stats<B: Backend>(logits: Tensor<B, 2>, q: Tensor<B, 2>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let loss_sum = (q.clone() * log_softmax(logits.clone(), 1)).sum().neg();
    let correct = logits.argmax(1).equal(q.argmax(1)).float().sum();
    (loss_sum, correct)
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data().convert::<f32>().to_vec::<f32>().ok().and_then(|v| v.first().copied()).unwrap_or(f32::NAN) as f64
}

/// Loss and accuracy of `net` over `ds` (inference, no autodiff).
pub fn evaluate_loss<B: ModelBackend>(net: &Net<B>, ds: &Dataset, device: &B::Device) -> (f64, f64) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut loss = Tensor::<B, 1>::zeros([1], device);
    let mut correct = Tensor::<B, 1>::zeros([1], device);
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(256) {
        let (xt, yt) = batch_tensors::<B>(ds, chunk, &mut x, &mut y, device);
        let (l, c) = batch_stats(net.forward(xt), yt);
        loss = loss + l;
        correct = correct + c;
    }
    let n = ds.len().max(1) as f64;
    (scalar(loss) / n, scalar(correct) / n)
}

fn fit_loop<B: AutodiffBackend + ModelBackend, O: Optimizer<Net<B>, B>>(
    mut net: Net<B>,
    mut optim: O,
    req: &TrainRequest<'_>,
    device: &B::Device,
    observer: &mut dyn TrainObserver,
) -> Result<(Net<B>, TrainSummary)>
where
    B::InnerBackend: ModelBackend,
{
    let tc = &req.train;
    let mut train_set_owned;
    let train_set = if tc.targets == TargetKind::Hard {
        train_set_owned = req.train_set.clone();
        train_set_owned.to_hard_targets();
        &train_set_owned
    } else {
        req.train_set
    };
    let n = train_set.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(tc.seed);
    // its own stream: with mixup off, the batches are those of a build without it
    let mut mix_rng = rand_chacha::ChaCha8Rng::seed_from_u64(tc.seed ^ 0x6d69_7875_70);
    let k = train_set.num_classes();
    let (mut x, mut y) = (Vec::with_capacity(tc.batch_size * PIXELS), Vec::new());
    let mut history = Vec::new();
    let mut best: Option<(Net<B>, f64, usize)> = None;
    let mut since_best = 0;
    let mut stopped_early = false;
    let mut train_secs = 0.0;
    let mut images = 0usize;

    for epoch in 1..=tc.epochs {
        let start = Instant::now();
        order.shuffle(&mut rng);
        let mut loss_sum = Tensor::<B::InnerBackend, 1>::zeros([1], device);
        let mut correct = Tensor::<B::InnerBackend, 1>::zeros([1], device);
        let mut done = 0;
        for chunk in order.chunks(tc.batch_size) {
            if observer.cancelled() {
                return Err(ModelError::Cancelled);
            }
            train_set.gather(chunk, &mut x, &mut y);
            if tc.mixup > 0.0 {
                mix_batch(&mut x, &mut y, chunk.len(), k, tc.mixup, &mut mix_rng);
            }
            let (xt, yt) = tensors::<B>(&x, &y, chunk.len(), k, device);
            let logits = net.forward(xt);
            let loss = soft_cross_entropy(logits.clone(), yt.clone());
            let (l, c) = batch_stats(logits.inner(), yt.inner());
            loss_sum = loss_sum + l;
            correct = correct + c;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(tc.lr, net, grads);
            done += chunk.len();
            observer.batch(epoch, done, n);
        }
        let train_loss = scalar(loss_sum) / n as f64; // syncs the device: the epoch's work is done
        let train_accuracy = scalar(correct) / n as f64;
        let secs = start.elapsed().as_secs_f64();
        train_secs += secs;
        images += n;
        let (val_loss, val_accuracy) = match req.valid_set {
            Some(v) => {
                let (l, a) = evaluate_loss(&net.valid(), v, device);
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let m = EpochMetrics {
            epoch,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            images_per_sec: n as f64 / secs.max(1e-9),
            seconds: start.elapsed().as_secs_f64(),
        };
        observer.epoch(&m, tc.epochs);
        history.push(m);
        if !train_loss.is_finite() {
            return Err(ModelError::Data(format!("training diverged at epoch {epoch} (loss {train_loss}); lower lr")));
        }
        // Without validation the last epoch is "best".
        let score = val_loss.unwrap_or(-(epoch as f64));
        match &best {
            Some((_, b, _)) if score >= *b - 1e-9 => since_best += 1,
            _ => {
                best = Some((net.clone(), score, epoch));
                since_best = 0;
            }
        }
        if tc.patience > 0 && since_best >= tc.patience && epoch < tc.epochs {
            stopped_early = true;
            break;
        }
    }
    let (best_net, _, best_epoch) = best.ok_or_else(|| ModelError::Data("no epoch ran".into()))?;
    let bm = &history[best_epoch - 1];
    let summary = TrainSummary {
        val_loss: bm.val_loss,
        val_accuracy: bm.val_accuracy,
        best_epoch,
        history,
        stopped_early,
        images_per_sec: images as f64 / train_secs.max(1e-9),
        backend: String::new(),
        backend_detail: String::new(),
    };
    Ok((best_net, summary))
}

/// burn draws each parameter's id at random when a net is built, and the record stores them:
/// two trainings of the same key would save different bytes for the same weights (and every
/// stage downstream would miss the cache). Number them in module order instead, so the saved
/// model depends on its weights alone.
struct SequentialIds(u64);

impl SequentialIds {
    fn next(&mut self) -> burn::module::ParamId {
        self.0 += 1;
        burn::module::ParamId::from(self.0)
    }
}

impl<B: Backend> burn::module::ModuleMapper<B> for SequentialIds {
    fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<B, D>>) -> burn::module::Param<Tensor<B, D>> {
        let (_, value, mapper) = param.consume();
        burn::module::Param::from_mapped_value(self.next(), value, mapper)
    }
    fn map_int<const D: usize>(&mut self, param: burn::module::Param<Tensor<B, D, burn::tensor::Int>>) -> burn::module::Param<Tensor<B, D, burn::tensor::Int>> {
        let (_, value, mapper) = param.consume();
        burn::module::Param::from_mapped_value(self.next(), value, mapper)
    }
    fn map_bool<const D: usize>(&mut self, param: burn::module::Param<Tensor<B, D, burn::tensor::Bool>>) -> burn::module::Param<Tensor<B, D, burn::tensor::Bool>> {
        let (_, value, mapper) = param.consume();
        burn::module::Param::from_mapped_value(self.next(), value, mapper)
    }
}

fn save_artifact<B: Backend>(net: Net<B>, req: &TrainRequest<'_>, summary: &TrainSummary, out_dir: &Path) -> Result<()> {
    let mut ids = SequentialIds(0);
    let net = net.map(&mut ids);
    let net = net.renumber_running_states(ids.0);
    let record = out_dir.join(ARTIFACT_RECORD);
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    // burn appends the recorder's extension itself: give it the stem.
    net.save_file(record.with_extension(""), &recorder)
        .map_err(|e| ModelError::bad_file(&record, format!("cannot save record: {e}")))?;
    let cfg = ArtifactConfig {
        format: crate::artifact::ARTIFACT_FORMAT.to_string(),
        record: ARTIFACT_RECORD.to_string(),
        classes: req.model.classes.clone(),
        model: req.model.clone(),
        train: Some(req.train.clone()),
        best_epoch: Some(summary.best_epoch),
        val_loss: summary.val_loss,
        val_accuracy: summary.val_accuracy,
        members: Vec::new(),
    };
    let path = out_dir.join(ARTIFACT_CONFIG);
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| ModelError::bad_file(&path, e))?;
    std::fs::write(&path, text + "\n").map_err(|e| ModelError::io(&path, e))?;
    let classes = out_dir.join("classes.txt");
    std::fs::write(&classes, req.model.classes.join("\n") + "\n").map_err(|e| ModelError::io(&classes, e))?;
    Ok(())
}

/// One trained member of an ensemble, as [`write_ensemble`] lists it.
pub struct EnsembleMember<'a> {
    /// Its model directory, relative to the ensemble's (`members/0`), holding a complete
    /// artifact written by [`train_to_dir`].
    pub dir: String,
    pub summary: &'a TrainSummary,
    /// Images it validated (early stopping) on: weights its validation figures in the mean.
    pub valid_images: usize,
}

/// The ensemble's own files beside its members' directories: `config.json` listing the
/// members' records (predictions average their probabilities), `classes.txt`, `metrics.csv`
/// (every member's epochs, with a `member` column) and `curves.png` (each member's
/// validation loss). `val_loss` / `val_accuracy` in the config are the members' validation
/// figures pooled over their validation images: with disjoint folds that is the out-of-fold
/// estimate of one member's accuracy, not the ensemble's.
pub fn write_ensemble(out_dir: &Path, model: &ModelConfig, train: &TrainConfig, members: &[EnsembleMember<'_>]) -> Result<()> {
    if members.is_empty() {
        return Err(ModelError::Data("an ensemble needs at least one member".into()));
    }
    let pooled = |f: &dyn Fn(&TrainSummary) -> Option<f64>| -> Option<f64> {
        let n: usize = members.iter().map(|m| m.valid_images).sum();
        let mut sum = 0.0;
        for m in members {
            sum += f(m.summary)? * m.valid_images as f64;
        }
        (n > 0).then(|| sum / n as f64)
    };
    let records: Vec<String> = members.iter().map(|m| format!("{}/{ARTIFACT_RECORD}", m.dir)).collect();
    let cfg = ArtifactConfig {
        format: crate::artifact::ENSEMBLE_FORMAT.to_string(),
        record: records[0].clone(),
        classes: model.classes.clone(),
        model: model.clone(),
        train: Some(train.clone()),
        best_epoch: None,
        val_loss: pooled(&|s| s.val_loss),
        val_accuracy: pooled(&|s| s.val_accuracy),
        members: records,
    };
    let path = out_dir.join(ARTIFACT_CONFIG);
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| ModelError::bad_file(&path, e))?;
    std::fs::write(&path, text + "\n").map_err(|e| ModelError::io(&path, e))?;
    let classes = out_dir.join("classes.txt");
    std::fs::write(&classes, model.classes.join("\n") + "\n").map_err(|e| ModelError::io(&classes, e))?;
    let mut csv = String::from("member,epoch,train_loss,train_accuracy,val_loss,val_accuracy\n");
    for (i, m) in members.iter().enumerate() {
        for e in &m.summary.history {
            csv += &format!(
                "{i},{},{:.6},{:.6},{},{}\n",
                e.epoch,
                e.train_loss,
                e.train_accuracy,
                fmt_opt(e.val_loss),
                fmt_opt(e.val_accuracy)
            );
        }
    }
    let metrics = out_dir.join("metrics.csv");
    std::fs::write(&metrics, csv).map_err(|e| ModelError::io(&metrics, e))?;
    let series: Vec<pipeline_report::Series> = members
        .iter()
        .enumerate()
        .map(|(i, m)| pipeline_report::Series {
            name: format!("member {i} val loss"),
            points: m.summary.history.iter().filter_map(|e| e.val_loss.map(|v| (e.epoch as f64, v))).collect(),
        })
        .collect();
    let curves = out_dir.join("curves.png");
    pipeline_report::line_chart_png(&curves, "Ensemble: validation loss per member", "epoch", "val loss", &series)
        .map_err(|e| ModelError::bad_file(&curves, e))
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.6}")).unwrap_or_default()
}

/// Only what the key determines: wall-clock columns (throughput, seconds) would make two runs
/// of one key differ, so they go to the stage's record (`images_per_sec`) and log instead.
pub fn write_metrics_csv(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut s = String::from("epoch,train_loss,train_accuracy,val_loss,val_accuracy\n");
    for m in history {
        s += &format!(
            "{},{:.6},{:.6},{},{}\n",
            m.epoch,
            m.train_loss,
            m.train_accuracy,
            fmt_opt(m.val_loss),
            fmt_opt(m.val_accuracy),
        );
    }
    std::fs::write(path, s).map_err(|e| ModelError::io(path, e))
}

fn write_curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    use pipeline_report::Series;
    let pts = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        history.iter().filter_map(|m| f(m).map(|v| (m.epoch as f64, v))).collect()
    };
    let mut series = vec![
        Series { name: "train loss".into(), points: pts(&|m| Some(m.train_loss)) },
        Series { name: "train accuracy".into(), points: pts(&|m| Some(m.train_accuracy)) },
    ];
    if history.iter().any(|m| m.val_loss.is_some()) {
        series.push(Series { name: "val loss".into(), points: pts(&|m| m.val_loss) });
        series.push(Series { name: "val accuracy".into(), points: pts(&|m| m.val_accuracy) });
    }
    pipeline_report::line_chart_png(path, "Training curves", "epoch", "loss / accuracy", &series)
        .map_err(|e| ModelError::bad_file(path, e))
}
