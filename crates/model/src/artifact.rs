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
/// An ensemble's config: its own format, so a reader that knows only single models (which
/// would load `record`, member 0, and say nothing) refuses it instead.
pub const ENSEMBLE_FORMAT: &str = "pipeline-model/ensemble-1";
/// Most members a config may list (each is a net held in memory while predicting).
pub const MAX_MEMBERS: usize = 64;
pub const ARTIFACT_RECORD: &str = "model.mpk";
pub const ARTIFACT_CONFIG: &str = "config.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactConfig {
    /// `pipeline-model/1`, or `pipeline-model/ensemble-1` with `members`.
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
    load_artifact_at(dir, false)
}

/// `as_member`: read as an ensemble's member, which must be one model: its config is
/// refused before anything it lists is followed (a member directory that is the ensemble's
/// own, or lists itself, recursed until the stack overflowed).
fn load_artifact_at(dir: &Path, as_member: bool) -> Result<ModelArtifact> {
    let path = dir.join(ARTIFACT_CONFIG);
    regular_file(&path, 16 << 20)?;
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let config: ArtifactConfig =
        serde_json::from_str(&text).map_err(|e| ModelError::bad_file(&path, format!("not a model config: {e}")))?;
    if as_member && (!config.members.is_empty() || config.format != ARTIFACT_FORMAT) {
        return Err(ModelError::bad_file(&path, "an ensemble member is itself an ensemble"));
    }
    let expected = if config.members.is_empty() { ARTIFACT_FORMAT } else { ENSEMBLE_FORMAT };
    if config.format != expected {
        return Err(ModelError::bad_file(
            &path,
            format!("format \"{}\", expected \"{expected}\" for a config with {} members", config.format, config.members.len()),
        ));
    }
    if config.members.len() > MAX_MEMBERS {
        return Err(ModelError::bad_file(&path, format!("{} members, at most {MAX_MEMBERS}", config.members.len())));
    }
    if config.classes != config.model.classes {
        return Err(ModelError::bad_file(&path, "\"classes\" and \"model.classes\" differ"));
    }
    config.model.validate().map_err(|e| ModelError::bad_file(&path, e))?;
    let artifact = ModelArtifact { dir: dir.to_path_buf(), config };
    let mut seen_members = std::collections::HashSet::new();
    for (field, rel) in artifact.record_names() {
        // A config is data: it must not send the loader outside the model's directory. Names
        // are shown escaped ({:?}): a control character printed raw could name another file.
        if !is_plain_relative(rel) {
            return Err(ModelError::bad_file(&path, format!("\"{field}\": {rel:?} is not a relative path inside the model directory")));
        }
        // burn's recorder adds the extension itself: `x.mpk.bak` would load `x.mpk`. The last
        // `/` segment is checked, not `Path::extension`, which reads `model.mpk/` and
        // `model.mpk/.` as `model.mpk`, though they name a directory.
        let last = rel.rsplit('/').next().unwrap_or(rel);
        if Path::new(last).extension().and_then(|e| e.to_str()) != Some("mpk") {
            return Err(ModelError::bad_file(&path, format!("\"{field}\": {rel:?} is not a .mpk record")));
        }
        if let Err(link) = no_symlink_below(dir, rel) {
            return Err(ModelError::bad_file(&path, format!("\"{field}\": {} is a symbolic link; a model's records must be files in its directory", link.display())));
        }
        let record = dir.join(rel);
        match std::fs::metadata(&record) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(ModelError::bad_file(&path, format!("\"{field}\": {rel:?} is not a file"))),
            Err(_) => return Err(ModelError::bad_file(&path, format!("\"{field}\": {rel:?}: model record missing"))),
        }
        if field == "members" {
            // One member listed twice would count twice in the average: another model than
            // the one trained, under the same name.
            // compared as paths: `members/0//model.mpk` is the same record
            if !seen_members.insert(Path::new(rel).components().collect::<std::path::PathBuf>()) {
                return Err(ModelError::bad_file(&path, format!("\"members\": {rel:?} is listed twice")));
            }
            // A member is a model directory of its own: its net and classes must be the
            // ensemble's, or its probabilities would be averaged in another class order.
            let member_dir = record.parent().unwrap_or(dir);
            let member = load_artifact_at(member_dir, true)?;
            if member.config.record != Path::new(rel).file_name().and_then(|n| n.to_str()).unwrap_or_default() {
                return Err(ModelError::bad_file(
                    &member_dir.join(ARTIFACT_CONFIG),
                    format!("its record is \"{}\", the ensemble lists \"{rel}\"", member.config.record),
                ));
            }
            if member.config.model != artifact.config.model {
                let what = if member.config.classes != artifact.config.classes {
                    format!("classes {:?}, the ensemble's are {:?}", member.config.classes, artifact.config.classes)
                } else {
                    "another network (model config differs from the ensemble's)".to_string()
                };
                return Err(ModelError::bad_file(&member_dir.join(ARTIFACT_CONFIG), format!("ensemble member with {what}")));
            }
        }
    }
    Ok(artifact)
}

/// Check that the model in `dir` can start a training of `model` (fine-tuning): one model,
/// not an ensemble, with the same network, input handling and classes in the same order
/// (`freeze` aside, a training choice). Returns the artifact.
pub fn check_init(dir: &Path, model: &ModelConfig) -> Result<ModelArtifact> {
    let artifact = load_artifact(dir)?;
    let path = dir.join(ARTIFACT_CONFIG);
    if !artifact.config.members.is_empty() {
        return Err(ModelError::bad_file(&path, format!("an ensemble of {} members: start from one model", artifact.config.members.len())));
    }
    let theirs = &artifact.config.model;
    let differs: Vec<String> = [
        ("kind", format!("{:?}", theirs.kind).to_lowercase(), format!("{:?}", model.kind).to_lowercase()),
        ("classes", format!("{:?}", theirs.classes), format!("{:?}", model.classes)),
        ("cnn_channels", format!("{:?}", theirs.cnn_channels), format!("{:?}", model.cnn_channels)),
        ("cnn_dense", theirs.cnn_dense.to_string(), model.cnn_dense.to_string()),
        ("cnn_dropout", theirs.cnn_dropout.to_string(), model.cnn_dropout.to_string()),
        ("vgg_width_divisor", theirs.vgg_width_divisor.to_string(), model.vgg_width_divisor.to_string()),
        ("standardize", theirs.standardize.to_string(), model.standardize.to_string()),
    ]
    .into_iter()
    .filter(|(_, a, b)| a != b)
    .map(|(f, a, b)| format!("{f} {a} (this training: {b})"))
    .collect();
    if !differs.is_empty() {
        return Err(ModelError::bad_file(&path, format!("not the network being trained: {}", differs.join(", "))));
    }
    Ok(artifact)
}

/// `net` with the weights of the model in `dir` (checked by [`check_init`]). The caller holds
/// the training lock (loading into a built net draws nothing from the RNG).
pub(crate) fn load_init<B: crate::ModelBackend>(net: Net<B>, dir: &Path, model: &ModelConfig, device: &B::Device) -> Result<Net<B>> {
    let artifact = check_init(dir, model)?;
    let record = artifact.dir.join(&artifact.config.record);
    load_checked(net, &record, device, "the model to start from (init): ")
}

/// Load `record` into `net` (built from the config next to it), refusing a record of
/// another network: burn panics on some mismatched shapes and silently takes others (a
/// record of a wider net loaded into a narrower config and trained on), so the loaded
/// net's parameter count must be the config's.
fn load_checked<B: crate::ModelBackend>(net: Net<B>, record: &Path, device: &B::Device, what: &str) -> Result<Net<B>> {
    regular_file(record, 16 << 30)?;
    let want = net.num_params();
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let loaded = quiet_catch_unwind(|| net.load_file(record.with_extension(""), &recorder, device));
    let mismatch = || ModelError::bad_file(record, format!("{what}the record does not match the network in config.json (another architecture or class count)"));
    match loaded {
        Ok(Ok(net)) if net.num_params() == want => Ok(net),
        Ok(Ok(_)) => Err(mismatch()),
        Ok(Err(e)) => Err(ModelError::bad_file(record, format!("{what}cannot load record: {e}"))),
        Err(_) => Err(mismatch()),
    }
}

/// A model file must be a regular file of at most `max` bytes, checked before it is opened:
/// a FIFO at `config.json` or `model.mpk` hung `predict` (found by a hostile pass).
fn regular_file(path: &Path, max: u64) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if !meta.is_file() {
        return Err(ModelError::bad_file(path, "not a regular file (a directory, FIFO or device)"));
    }
    if meta.len() > max {
        return Err(ModelError::bad_file(path, format!("{} bytes, at most {max}", meta.len())));
    }
    Ok(())
}

thread_local! {
    /// Set while this thread runs [`quiet_catch_unwind`]: its panic is an answer, not a crash.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `catch_unwind`, without the default hook's "thread panicked at ..." on stderr before the
/// error the caller then reports (burn panics on a record of another shape). The hook is
/// wrapped once, process-wide; it stays silent only on a thread inside this call, so other
/// threads' panics print as before.
fn quiet_catch_unwind<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r
}

/// No component of `rel` below `dir` is a symbolic link: a model directory's records are its
/// own files (an exported or promoted model is copied, never linked), so a config cannot
/// send the loader to a file elsewhere through a link planted inside the directory.
fn no_symlink_below(dir: &Path, rel: &str) -> std::result::Result<(), PathBuf> {
    let mut at = dir.to_path_buf();
    for c in Path::new(rel).components() {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(at);
        }
    }
    Ok(())
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
        // A record of another network is an error naming the file (see `load_checked`).
        let _rng = crate::net::TRAIN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        load_checked(self.config.model.init::<B>(device), &record, device, "")
    }
}
