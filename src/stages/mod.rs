//! The one `Stage` abstraction and the registry of stage kinds.
//!
//! A stage kind is a type implementing [`Stage`]: typed params (a serde struct that also
//! derives `JsonSchema`, so validation, defaults, `pipeline schema` and the cache key all
//! come from one definition), declared inputs, an implementation version, and `run`.
//! The engine wraps each kind in [`DynStage`] so the registry can hold them side by side.
//!
//! Contract for `run`: read inputs from `ctx.inputs` (a directory, or the file itself for a
//! file input), write every output file under `ctx.out_dir`, and nothing anywhere else. The
//! engine turns `out_dir` into a content-addressed artifact only after `run` returns `Ok`,
//! so a failing or cancelled stage leaves nothing in the cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub mod command;
#[cfg(feature = "ml")]
pub mod evaluate;
#[cfg(feature = "ml")]
pub mod train;
pub mod amt;
pub mod augment;
pub mod dawid_skene;
pub mod demo_data;

/// What a stage kind declares about one named input.
#[derive(Debug, Clone, Copy)]
pub struct InputDecl {
    pub name: &'static str,
    pub required: bool,
    pub doc: &'static str,
}

/// Cooperative cancellation (Ctrl-C, SIGTERM, a scheduler shutting down).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(StageError::Cancelled)` once cancelled; call it between units of work.
    pub fn check(&self) -> Result<(), StageError> {
        if self.is_cancelled() {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A stage's handle on its progress bar. Cheap to clone; safe from any thread (rayon too).
#[derive(Clone)]
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn new(bar: indicatif::ProgressBar) -> Self {
        Self { bar }
    }
    pub fn hidden() -> Self {
        Self { bar: indicatif::ProgressBar::hidden() }
    }
    /// Switch from a spinner to a bar of `len` units (images, epochs, EM iterations...).
    pub fn set_length(&self, len: u64) {
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.bar.set_style(crate::progress::bar_style());
    }
    pub fn inc(&self, n: u64) {
        self.bar.inc(n)
    }
    pub fn set_position(&self, n: u64) {
        self.bar.set_position(n)
    }
    pub fn set_message(&self, msg: impl Into<String>) {
        self.bar.set_message(msg.into())
    }
    /// Print a line above the bars without tearing them.
    pub fn println(&self, line: impl AsRef<str>) {
        self.bar.println(line.as_ref())
    }
    pub fn bar(&self) -> &indicatif::ProgressBar {
        &self.bar
    }
}

/// Everything a stage may touch while it runs.
pub struct StageContext<'a> {
    /// The stage's name in the pipeline file (not its kind).
    pub name: &'a str,
    /// Input name -> a directory (stage output, directory or glob input) or a file.
    pub inputs: &'a BTreeMap<String, PathBuf>,
    /// Empty directory; every file written here becomes the stage's output artifact.
    pub out_dir: &'a Path,
    /// Directory of the pipeline file: relative paths in params resolve against it.
    pub base_dir: &'a Path,
    /// The last committed output of a stage of the same name in this cache, if any
    /// (lets `evaluate` print `accuracy 0.33 -> 0.41`).
    pub previous_output: Option<&'a Path>,
    pub progress: &'a Progress,
    pub cancel: &'a CancelFlag,
}

impl StageContext<'_> {
    /// Path of a required input; the error names the stage and the input.
    pub fn input(&self, name: &str) -> Result<&Path, StageError> {
        self.inputs
            .get(name)
            .map(|p| p.as_path())
            .ok_or_else(|| StageError::MissingInput { input: name.to_string() })
    }
    pub fn resolve(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

// Defined in `cache` (entries store it), so the cache does not import the stage layer.
pub use crate::cache::StageOutcome;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("input `{input}` is required but not given")]
    MissingInput { input: String },
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    #[error("param \"{param}\": {message}")]
    BadParam { param: String, message: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
}

impl StageError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StageError::Io { path: path.into(), source }
    }
    pub fn bad_file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        StageError::BadFile { path: path.into(), message: message.to_string() }
    }
    pub fn bad_param(param: &str, message: impl std::fmt::Display) -> Self {
        StageError::BadParam { param: param.to_string(), message: message.to_string() }
    }
}

/// `leakage_distance` of `train` and `evaluate`: at most 32 bits of the 256-bit pHash.
#[cfg(feature = "ml")]
pub(crate) fn check_leakage_distance(d: u32) -> Result<(), StageError> {
    if d > 32 {
        return Err(StageError::bad_param(
            "leakage_distance",
            format!("at most 32 bits of {} ({} is the measured default)", pipeline_vision::dedup::PHASH_BITS, pipeline_vision::dedup::DEFAULT_NEAR_DISTANCE),
        ));
    }
    Ok(())
}

/// One stage kind. Implement this; the registry wraps it in [`DynStage`].
pub trait Stage: Send + Sync + 'static {
    /// Params with defaults filled in. `#[serde(deny_unknown_fields, default)]` is expected:
    /// unknown names become "unknown param, did you mean ..." errors.
    type Params: DeserializeOwned + Serialize + schemars::JsonSchema + Send + Sync;
    /// The `kind` string in pipeline files.
    const KIND: &'static str;
    /// Bump whenever the same params and inputs would produce different output:
    /// it is part of every cache key of this kind.
    const VERSION: u32;
    const DESCRIPTION: &'static str;
    /// Named inputs. Names not listed are rejected, unless `OPEN_INPUTS`.
    const INPUTS: &'static [InputDecl];
    const OPEN_INPUTS: bool = false;
    /// Params without a schema of their own (the `command` kind's `$P_*`).
    const OPEN_PARAMS: bool = false;
    /// Params that say how to run, not what to compute (`backend`): recorded, but left out
    /// of the cache key, so a model trained on a GPU is reused on a CPU machine.
    const PROVENANCE_PARAMS: &'static [&'static str] = &[];

    /// Params these params or the stage's wired inputs (`inputs`: their names) make
    /// irrelevant (`valid_fraction` of an ensemble, which validates on folds, or of a train
    /// stage given `inputs.valid`): left out of the key like `PROVENANCE_PARAMS`, so changing
    /// one reruns nothing.
    fn unused_params(_params: &Self::Params, _inputs: &[&str]) -> Vec<&'static str> {
        Vec::new()
    }
    /// A stage that reads the outside world runs every time; its output digest still
    /// decides whether its dependents rerun.
    fn volatile(_params: &Self::Params) -> bool {
        false
    }
    /// Files named by params (pretrained weights...): hashed by content into the key.
    fn param_files(_params: &Self::Params) -> Vec<(String, PathBuf)> {
        Vec::new()
    }
    /// Checks across params that serde cannot express (ranges, exclusive options).
    fn check_params(_params: &Self::Params) -> Result<(), StageError> {
        Ok(())
    }
    fn run(params: &Self::Params, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError>;
}

/// Object-safe face of [`Stage`], used by the registry, validation and the engine.
pub trait DynStage: Send + Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> u32;
    fn description(&self) -> &'static str;
    fn inputs(&self) -> &'static [InputDecl];
    fn open_inputs(&self) -> bool;
    fn open_params(&self) -> bool;
    /// The params that go into the cache key: all but `PROVENANCE_PARAMS` and those the
    /// others or the wired `inputs` make irrelevant (`Stage::unused_params`).
    fn key_params(&self, params: &Value, inputs: &[&str]) -> Value;
    fn params_schema(&self) -> Value;
    /// Validate raw params and return them canonical, defaults filled in.
    fn normalize(&self, raw: &Value) -> Result<Value, ParamError>;
    fn volatile(&self, params: &Value) -> bool;
    fn param_files(&self, params: &Value) -> Vec<(String, PathBuf)>;
    fn run(&self, params: &Value, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError>;
}

/// A param that failed validation: where (JSON path inside `params`) and why.
#[derive(Debug, Clone)]
pub struct ParamError {
    /// Path below the stage's `params`, e.g. `epochs` or `fill.cval`.
    pub path: String,
    pub message: String,
}

struct Wrap<S: Stage>(std::marker::PhantomData<S>);

fn parse_params<S: Stage>(raw: &Value) -> Result<S::Params, ParamError> {
    match deserialize_tracked::<S::Params>(raw) {
        Err(e) if e.path.is_empty() => Err(locate_flattened::<S>(raw).unwrap_or(e)),
        r => r,
    }
}

fn deserialize_tracked<T: DeserializeOwned>(raw: &Value) -> Result<T, ParamError> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(raw, &mut track);
    T::deserialize(de).map_err(|e| {
        let path = track.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ParamError { path, message: e.to_string() }
    })
}

/// Params that embed their crate's config with `#[serde(flatten)]` are deserialized from a
/// buffered map, so an error in the embedded part has no path, and an unknown name no list
/// of the known ones. Find the failing param by deserializing one param at a time, and
/// take the known names from the schema, so messages read as for a plain struct.
fn locate_flattened<S: Stage>(raw: &Value) -> Option<ParamError> {
    let Value::Object(m) = raw else { return None };
    m.iter().find_map(|(name, v)| {
        let one = Value::Object([(name.clone(), v.clone())].into_iter().collect());
        let mut e = deserialize_tracked::<S::Params>(&one).err()?;
        if e.path.is_empty() {
            e.path = name.clone();
        }
        if e.message.starts_with("unknown field `") && !e.message.contains(", expected") {
            let schema = serde_json::to_value(schemars::schema_for!(S::Params)).ok()?;
            let known: Vec<String> = schema.get("properties")?.as_object()?.keys().map(|k| format!("`{k}`")).collect();
            e.message = format!("{}, expected one of {}", e.message, known.join(", "));
        }
        Some(e)
    })
}

impl<S: Stage> DynStage for Wrap<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn version(&self) -> u32 {
        S::VERSION
    }
    fn description(&self) -> &'static str {
        S::DESCRIPTION
    }
    fn inputs(&self) -> &'static [InputDecl] {
        S::INPUTS
    }
    fn open_inputs(&self) -> bool {
        S::OPEN_INPUTS
    }
    fn open_params(&self) -> bool {
        S::OPEN_PARAMS
    }
    fn key_params(&self, params: &Value, inputs: &[&str]) -> Value {
        let mut p = params.clone();
        if let Value::Object(m) = &mut p {
            for name in S::PROVENANCE_PARAMS {
                m.remove(*name);
            }
            if let Ok(parsed) = parse_params::<S>(params) {
                for name in S::unused_params(&parsed, inputs) {
                    m.remove(name);
                }
            }
        }
        p
    }
    fn params_schema(&self) -> Value {
        serde_json::to_value(schemars::schema_for!(S::Params)).unwrap_or(Value::Null)
    }
    fn normalize(&self, raw: &Value) -> Result<Value, ParamError> {
        let p = parse_params::<S>(raw)?;
        S::check_params(&p).map_err(|e| match e {
            StageError::BadParam { param, message } => ParamError { path: param, message },
            other => ParamError { path: String::new(), message: other.to_string() },
        })?;
        serde_json::to_value(&p).map_err(|e| ParamError { path: String::new(), message: e.to_string() })
    }
    fn volatile(&self, params: &Value) -> bool {
        parse_params::<S>(params).map(|p| S::volatile(&p)).unwrap_or(false)
    }
    fn param_files(&self, params: &Value) -> Vec<(String, PathBuf)> {
        parse_params::<S>(params).map(|p| S::param_files(&p)).unwrap_or_default()
    }
    fn run(&self, params: &Value, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let p = parse_params::<S>(params).map_err(|e| StageError::bad_param(&e.path, e.message))?;
        S::run(&p, ctx)
    }
}

pub fn wrap<S: Stage>() -> Box<dyn DynStage> {
    Box::new(Wrap::<S>(std::marker::PhantomData))
}

/// Every stage kind this build knows, in the order `pipeline schema` lists them.
pub fn registry() -> Vec<Box<dyn DynStage>> {
    #[allow(unused_mut)]
    let mut kinds: Vec<Box<dyn DynStage>> = vec![wrap::<command::Command>()];
    // Stage kinds register here, one line each.
    kinds.push(wrap::<augment::Augment>());
    kinds.push(wrap::<demo_data::DemoData>());
    kinds.push(wrap::<amt::Amt>());
    kinds.push(wrap::<dawid_skene::DawidSkene>());
    #[cfg(feature = "ml")]
    kinds.push(wrap::<train::Train>());
    #[cfg(feature = "ml")]
    kinds.push(wrap::<evaluate::Evaluate>());
    kinds
}

pub fn find(kind: &str) -> Option<Box<dyn DynStage>> {
    registry().into_iter().find(|s| s.kind() == kind)
}

/// Runs a stage kind outside the engine, for the kinds' unit tests: a hidden progress bar,
/// no cancellation, no previous output unless given.
#[cfg(test)]
pub(crate) fn test_run<S: Stage>(
    params: &S::Params,
    inputs: &BTreeMap<String, PathBuf>,
    out_dir: &Path,
    base_dir: &Path,
    previous_output: Option<&Path>,
) -> Result<StageOutcome, StageError> {
    let (progress, cancel) = (Progress::hidden(), CancelFlag::new());
    let ctx = StageContext { name: S::KIND, inputs, out_dir, base_dir, previous_output, progress: &progress, cancel: &cancel };
    S::run(params, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields, default)]
    struct P {
        epochs: u32,
        backend: String,
    }
    impl Default for P {
        fn default() -> Self {
            P { epochs: 10, backend: "auto".into() }
        }
    }
    struct K;
    impl Stage for K {
        type Params = P;
        const KIND: &'static str = "k";
        const VERSION: u32 = 1;
        const DESCRIPTION: &'static str = "test kind";
        const INPUTS: &'static [InputDecl] = &[];
        const PROVENANCE_PARAMS: &'static [&'static str] = &["backend"];
        fn run(_: &P, _: &StageContext<'_>) -> Result<StageOutcome, StageError> {
            Ok(StageOutcome::default())
        }
    }

    /// A kind whose params embed a config, as `train` embeds `pipeline_model::TrainConfig`.
    #[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        lr: f64,
        sizes: [u32; 2],
    }
    impl Default for Inner {
        fn default() -> Self {
            Inner { lr: 0.1, sizes: [1, 2] }
        }
    }
    #[derive(Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields, default)]
    struct FlatP {
        epochs: u32,
        #[serde(flatten)]
        inner: Inner,
        backend: String,
    }
    struct Flat;
    impl Stage for Flat {
        type Params = FlatP;
        const KIND: &'static str = "flat";
        const VERSION: u32 = 1;
        const DESCRIPTION: &'static str = "test kind";
        const INPUTS: &'static [InputDecl] = &[];
        fn run(_: &FlatP, _: &StageContext<'_>) -> Result<StageOutcome, StageError> {
            Ok(StageOutcome::default())
        }
    }

    #[test]
    fn flattened_params_keep_their_paths_and_known_names() {
        let k = wrap::<Flat>();
        let v = k.normalize(&serde_json::json!({"lr": 1})).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"epochs":0,"lr":1.0,"sizes":[1,2],"backend":""}"#);
        let e = k.normalize(&serde_json::json!({"epochs": 3, "lrr": 1})).unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), ("lrr", "unknown field `lrr`, expected one of `epochs`, `lr`, `sizes`, `backend`"));
        let e = k.normalize(&serde_json::json!({"epochs": 3, "lr": "x"})).unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), ("lr", "invalid type: string \"x\", expected f64"));
        // Inside an embedded field the path stops at the param.
        let e = k.normalize(&serde_json::json!({"sizes": [1, "x"]})).unwrap_err();
        assert_eq!(e.path, "sizes");
        // Outside the embedded part serde's own path stands.
        let e = k.normalize(&serde_json::json!({"epochs": "x"})).unwrap_err();
        assert_eq!(e.path, "epochs");
    }

    #[test]
    fn normalize_fills_defaults_and_names_unknown_params() {
        let k = wrap::<K>();
        assert_eq!(k.normalize(&serde_json::json!({})).unwrap(), serde_json::json!({"epochs": 10, "backend": "auto"}));
        let e = k.normalize(&serde_json::json!({"epoch": 3})).unwrap_err();
        assert!(e.message.contains("unknown field `epoch`"), "{}", e.message);
        let e = k.normalize(&serde_json::json!({"epochs": "many"})).unwrap_err();
        assert_eq!(e.path, "epochs");
    }

    /// What a kind's params put into its cache key: pinned, so a refactor of a params
    /// struct (say, embedding its crate's config) cannot move a key by accident.
    fn pinned(kind: &str, raw: serde_json::Value) -> String {
        let k = find(kind).unwrap();
        serde_json::to_string(&k.key_params(&k.normalize(&raw).unwrap(), &[])).unwrap()
    }

    #[test]
    fn key_params_of_augment_are_pinned() {
        let study = serde_json::json!({
            "per_class": 300, "size": 48, "channels": 1, "seed": 1,
            "rotation_range": 15, "width_shift_range": 0.1, "height_shift_range": 0.1,
            "shear_range": 5, "zoom_range": 0.1, "horizontal_flip": true, "fill_mode": "nearest"
        });
        assert_eq!(pinned("augment", serde_json::json!({})), r#"{"per_class":300,"mode":"keep","size":48,"channels":1,"seed":0,"rotation_range":15.0,"width_shift_range":0.1,"height_shift_range":0.1,"shear_range":0.0,"zoom_range":0.1,"horizontal_flip":true,"vertical_flip":false,"channel_shift_range":0.0,"brightness_range":null,"fill_mode":"nearest","cval":0.0,"contrast_range":null,"random_crop_scale":null,"random_crop_ratio":[0.75,1.3333333333333333],"random_erasing":0.0,"random_erasing_scale":[0.02,0.33],"random_erasing_ratio":[0.3,3.3],"random_erasing_value":0.0,"preview_per_class":8}"#);
        assert_eq!(pinned("augment", study), r#"{"per_class":300,"mode":"keep","size":48,"channels":1,"seed":1,"rotation_range":15.0,"width_shift_range":0.1,"height_shift_range":0.1,"shear_range":5.0,"zoom_range":0.1,"horizontal_flip":true,"vertical_flip":false,"channel_shift_range":0.0,"brightness_range":null,"fill_mode":"nearest","cval":0.0,"contrast_range":null,"random_crop_scale":null,"random_crop_ratio":[0.75,1.3333333333333333],"random_erasing":0.0,"random_erasing_scale":[0.02,0.33],"random_erasing_ratio":[0.3,3.3],"random_erasing_value":0.0,"preview_per_class":8}"#);
        let other = serde_json::json!({"zoom_range": [0.8, 1.3], "mode": "sample_down", "fill_mode": "constant", "cval": 3,
            "random_crop_scale": [0.5, 1.0], "random_erasing": 0.5, "brightness_range": [0.9, 1.1]});
        assert_eq!(pinned("augment", other), r#"{"per_class":300,"mode":"sample_down","size":48,"channels":1,"seed":0,"rotation_range":15.0,"width_shift_range":0.1,"height_shift_range":0.1,"shear_range":0.0,"zoom_range":[0.8,1.3],"horizontal_flip":true,"vertical_flip":false,"channel_shift_range":0.0,"brightness_range":[0.9,1.1],"fill_mode":"constant","cval":3.0,"contrast_range":null,"random_crop_scale":[0.5,1.0],"random_crop_ratio":[0.75,1.3333333333333333],"random_erasing":0.5,"random_erasing_scale":[0.02,0.33],"random_erasing_ratio":[0.3,3.3],"random_erasing_value":0.0,"preview_per_class":8}"#);
    }

    // Pinned after `TrainParams` embedded `TrainConfig` (flatten); the keys of these params
    // (through `plan --json`) were the same before and after.
    #[cfg(feature = "ml")]
    #[test]
    fn key_params_of_train_are_pinned() {
        let study = serde_json::json!({"model": "cnn", "targets": "soft", "optimizer": "adam", "lr": 0.001, "epochs": 30, "patience": 10, "seed": 1});
        let other = serde_json::json!({"model": "vgg16", "weights": "w.safetensors", "freeze": true, "targets": "hard",
            "optimizer": "sgd", "momentum": 0.5, "batch_size": 8, "weight_decay": 1e-4, "backend": "cpu", "leakage": "warn"});
        assert_eq!([pinned("train", serde_json::json!({})), pinned("train", study), pinned("train", other)], [
            r#"{"model":"cnn","cnn_channels":[16,32,64],"cnn_dense":128,"targets":"soft","optimizer":"adam","lr":0.001,"momentum":0.9,"batch_size":32,"epochs":15,"weight_decay":0.0,"patience":5,"seed":42,"weights":null,"freeze":false,"leakage_distance":24,"valid_fraction":0.15,"leakage":"error"}"#,
            r#"{"model":"cnn","cnn_channels":[16,32,64],"cnn_dense":128,"targets":"soft","optimizer":"adam","lr":0.001,"momentum":0.9,"batch_size":32,"epochs":30,"weight_decay":0.0,"patience":10,"seed":1,"weights":null,"freeze":false,"leakage_distance":24,"valid_fraction":0.15,"leakage":"error"}"#,
            r#"{"model":"vgg16","cnn_channels":[16,32,64],"cnn_dense":128,"targets":"hard","optimizer":"sgd","lr":0.001,"momentum":0.5,"batch_size":8,"epochs":15,"weight_decay":0.0001,"patience":5,"seed":42,"weights":"w.safetensors","freeze":true,"leakage_distance":24,"valid_fraction":0.15,"leakage":"warn"}"#,
        ]);
    }

    /// An ensemble validates on folds: its `valid_fraction` does nothing, so it is not in the
    /// key (changing it retrained every member); a single model's is.
    #[cfg(feature = "ml")]
    #[test]
    fn an_ensembles_valid_fraction_is_not_in_the_key() {
        let k = find("train").unwrap();
        let key = |v: serde_json::Value| k.key_params(&k.normalize(&v).unwrap(), &[]);
        let (a, b) = (key(serde_json::json!({"ensemble": 3})), key(serde_json::json!({"ensemble": 3, "valid_fraction": 0.3})));
        assert_eq!(a, b);
        assert!(a.get("valid_fraction").is_none() && a["ensemble"] == 3, "{a}");
        assert_ne!(key(serde_json::json!({})), key(serde_json::json!({"valid_fraction": 0.3})));
        assert_eq!(pinned("train", serde_json::json!({"ensemble": 1})), pinned("train", serde_json::json!({})));
        // given `inputs.valid`, nothing is held out: the fraction is not in the key either
        let wired = |v: serde_json::Value| k.key_params(&k.normalize(&v).unwrap(), &["images", "valid"]);
        let (a, b) = (wired(serde_json::json!({})), wired(serde_json::json!({"valid_fraction": 0.3})));
        assert_eq!(a, b);
        assert!(a.get("valid_fraction").is_none(), "{a}");
        let mut c = key(serde_json::json!({}));
        c.as_object_mut().unwrap().remove("valid_fraction");
        assert_eq!(a, c, "nothing else leaves the key");
    }

    /// `resnet` has no hidden dense layer: `cnn_dense` is not in its key. Its shortcuts pad
    /// channels, so widths that shrink are refused naming the param, as are VGG16 weights.
    #[cfg(feature = "ml")]
    #[test]
    fn resnet_params_checked_and_its_unused_dense_width_out_of_the_key() {
        let k = find("train").unwrap();
        let key = |v: serde_json::Value| k.key_params(&k.normalize(&v).unwrap(), &[]);
        let a = key(serde_json::json!({"model": "resnet"}));
        assert_eq!(a, key(serde_json::json!({"model": "resnet", "cnn_dense": 7})));
        assert!(a.get("cnn_dense").is_none() && a["model"] == "resnet", "{a}");
        assert_ne!(key(serde_json::json!({"cnn_dense": 7})), key(serde_json::json!({})));
        let e = k.normalize(&serde_json::json!({"model": "resnet", "cnn_channels": [32, 16]})).unwrap_err();
        assert_eq!(e.path, "cnn_channels", "{}", e.message);
        assert!(e.message.contains("must not decrease"), "{}", e.message);
        let e = k.normalize(&serde_json::json!({"model": "resnet", "weights": "w.safetensors"})).unwrap_err();
        assert_eq!(e.path, "weights", "{}", e.message);
    }

    #[cfg(feature = "ml")]
    #[test]
    fn a_typo_in_trains_embedded_config_is_named() {
        let k = find("train").unwrap();
        let e = k.normalize(&serde_json::json!({"epoch": 3})).unwrap_err();
        assert_eq!(e.path, "epoch");
        assert!(e.message.starts_with("unknown field `epoch`, expected one of `model`, `cnn_channels`") && e.message.contains("`epochs`"), "{}", e.message);
        let e = k.normalize(&serde_json::json!({"lr": "x"})).unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), ("lr", "invalid type: string \"x\", expected f64"));
    }

    #[test]
    fn provenance_params_stay_out_of_the_key() {
        let k = wrap::<K>();
        let cpu = k.normalize(&serde_json::json!({"backend": "cpu"})).unwrap();
        let cuda = k.normalize(&serde_json::json!({"backend": "cuda"})).unwrap();
        assert_ne!(cpu, cuda);
        assert_eq!(k.key_params(&cpu, &[]), k.key_params(&cuda, &[]));
        let more = k.normalize(&serde_json::json!({"epochs": 11})).unwrap();
        assert_ne!(k.key_params(&more, &[]), k.key_params(&cpu, &[]));
    }
}
