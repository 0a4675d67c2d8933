//! Top-k classes for image files, decoded exactly as training decoded them.

use std::path::{Path, PathBuf};

use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};

use crate::artifact::{load_artifact, ModelArtifact};
use crate::backend::{run_infer, BackendChoice, InferTask};
use crate::data::{decode_image, load_image_folder, IMAGE_SIZE, PIXELS};
use crate::error::{ModelError, Result};
use crate::eval::{evaluate_predictions, Evaluation};
use crate::net::Net;

// Defined beside the metrics that consume it, so `eval` does not import this module.
pub use crate::eval::ImagePrediction;

/// Softmax probabilities `[n, classes]` for `n` decoded images, in batches.
pub fn probabilities<B: crate::ModelBackend>(net: &Net<B>, pixels: &[f32], device: &B::Device) -> Vec<f32> {
    let n = pixels.len() / PIXELS;
    let mut out = Vec::new();
    for start in (0..n).step_by(128) {
        let end = (start + 128).min(n);
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(pixels[start * PIXELS..end * PIXELS].to_vec(), [end - start, 1, IMAGE_SIZE, IMAGE_SIZE]),
            device,
        );
        let p = softmax(net.forward(x), 1);
        out.extend(p.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default());
    }
    out
}

struct Probs<'a> {
    artifact: &'a ModelArtifact,
    pixels: &'a [f32],
}

impl InferTask for Probs<'_> {
    type Output = Result<Vec<f32>>;
    fn run<B: crate::ModelBackend>(self, device: B::Device) -> Result<Vec<f32>> {
        // An ensemble's prediction is the mean of its members' class probabilities.
        let mut probs: Vec<f32> = Vec::new();
        let nets = self.artifact.load_nets::<B>(&device)?;
        let standardized;
        let pixels = if self.artifact.config.model.standardize {
            let mut v = self.pixels.to_vec();
            crate::data::standardize_images(&mut v);
            standardized = v;
            &standardized[..]
        } else {
            self.pixels
        };
        for net in &nets {
            let p = probabilities(net, pixels, &device);
            if probs.is_empty() {
                probs = p;
            } else if p.len() == probs.len() {
                probs.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
            } else {
                return Err(ModelError::Backend("ensemble members returned different numbers of outputs".into()));
            }
        }
        if nets.len() > 1 {
            let inv = 1.0 / nets.len() as f32;
            probs.iter_mut().for_each(|v| *v *= inv);
        }
        if probs.len() != self.pixels.len() / PIXELS * self.artifact.classes().len() {
            return Err(ModelError::Backend("the network returned an unexpected number of outputs".into()));
        }
        Ok(probs)
    }
}

/// Class probabilities of a model directory on `pixels` (`[n, 1, 48, 48]`).
pub fn artifact_probabilities(artifact: &ModelArtifact, pixels: &[f32], backend: BackendChoice) -> Result<Vec<f32>> {
    run_infer(backend.resolve()?, Probs { artifact, pixels })
}

/// Names for reports: file names, or paths relative to `root` where file names repeat.
pub fn display_names(files: &[PathBuf], root: Option<&Path>) -> Vec<String> {
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    let unique = sorted.windows(2).all(|w| w[0] != w[1]);
    if unique {
        return names;
    }
    files
        .iter()
        .map(|f| root.and_then(|r| f.strip_prefix(r).ok()).unwrap_or(f).to_string_lossy().into_owned())
        .collect()
}

/// Top-`k` classes for each image, with the model in `model_dir` (CPU: a handful of images
/// does not pay for a GPU context).
pub fn predict(model_dir: &Path, images: &[PathBuf], k: usize) -> Result<Vec<ImagePrediction>> {
    predict_with(model_dir, images, k, BackendChoice::Cpu)
}

pub fn predict_with(model_dir: &Path, images: &[PathBuf], k: usize, backend: BackendChoice) -> Result<Vec<ImagePrediction>> {
    let artifact = load_artifact(model_dir)?;
    let classes = artifact.classes().to_vec();
    let mut pixels = Vec::with_capacity(images.len() * PIXELS);
    for img in images {
        pixels.extend(decode_image(img)?);
    }
    let probs = artifact_probabilities(&artifact, &pixels, backend)?;
    let names = display_names(images, None);
    let kc = classes.len();
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, file)| ImagePrediction {
            file,
            truth: None,
            top: crate::eval::top_k(&probs[i * kc..(i + 1) * kc], k.max(1))
                .into_iter()
                .map(|(c, p)| (classes[c].clone(), p))
                .collect(),
        })
        .collect())
}

/// Evaluate the model in `model_dir` on an ImageFolder test set, keeping top-`k` guesses.
pub fn evaluate_dir(model_dir: &Path, test_root: &Path, k: usize, backend: BackendChoice) -> Result<Evaluation> {
    let artifact = load_artifact(model_dir)?;
    let ds = load_image_folder(test_root, artifact.classes())?;
    evaluate_dataset(&artifact, &ds, Some(test_root), k, backend)
}

/// Evaluate a loaded model on a decoded test set (`root` names its files in reports).
pub fn evaluate_dataset(
    artifact: &ModelArtifact,
    ds: &crate::data::Dataset,
    root: Option<&Path>,
    k: usize,
    backend: BackendChoice,
) -> Result<Evaluation> {
    if ds.classes != artifact.classes() {
        return Err(ModelError::Data("the test set's classes differ from the model's".into()));
    }
    let probs = artifact_probabilities(artifact, &ds.pixels, backend)?;
    let names = display_names(&ds.files, root);
    Ok(evaluate_predictions(artifact.classes(), &probs, &ds.labels, &names, k))
}
