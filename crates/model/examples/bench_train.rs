//! Training throughput of our loop (the benches in `bench/` call this).
//!
//! `bench_train [--model cnn|vgg16] [--images DIR | --synthetic N] [--batch B] [--epochs E]
//!              [--backend auto|cpu|cuda] [--channels 32,64,128] [--freeze]`
//! Prints one line per epoch, then `ours <images/s>` = mean over epochs after the first
//! (the first pays for allocation and, on CUDA, kernel compilation/autotune).

use std::path::PathBuf;

use pipeline_model::data::{load_image_folder, Dataset, PIXELS};
use pipeline_model::train::{train_in_memory, EpochMetrics, TrainObserver};
use pipeline_model::{BackendChoice, ModelConfig, ModelKind, TrainConfig, TrainRequest};

struct Print;
impl TrainObserver for Print {
    fn epoch(&mut self, m: &EpochMetrics, total: usize) {
        eprintln!(
            "epoch {}/{total}: loss {:.4} acc {:.3} {:.1} images/s ({:.2}s)",
            m.epoch, m.train_loss, m.train_accuracy, m.images_per_sec, m.seconds
        );
    }
}

fn synthetic(n: usize, classes: Vec<String>, seed: u64) -> Dataset {
    // Deterministic pseudo-random pixels; throughput does not depend on content.
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    let k = classes.len();
    let pixels: Vec<f32> = (0..n * PIXELS).map(|_| next()).collect();
    let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
    let mut targets = vec![0.0; n * k];
    for (i, &l) in labels.iter().enumerate() {
        targets[i * k + l] = 1.0;
    }
    Dataset { pixels, targets, labels, files: vec![PathBuf::new(); n], classes }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut model = ModelConfig::default();
    let mut tc = TrainConfig { patience: 0, epochs: 3, ..Default::default() };
    let mut images: Option<PathBuf> = None;
    let mut synth = 0usize;
    let mut backend = BackendChoice::Cpu;
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--model" => {
                model.kind = match val().as_str() {
                    "vgg16" => ModelKind::Vgg16,
                    _ => ModelKind::Cnn,
                }
            }
            "--images" => images = Some(PathBuf::from(val())),
            "--synthetic" => synth = val().parse().expect("--synthetic N"),
            "--batch" => tc.batch_size = val().parse().expect("--batch B"),
            "--epochs" => tc.epochs = val().parse().expect("--epochs E"),
            "--lr" => tc.lr = val().parse().expect("--lr"),
            "--channels" => model.cnn_channels = val().split(',').map(|c| c.parse().expect("--channels a,b,c")).collect(),
            "--dense" => model.cnn_dense = val().parse().expect("--dense"),
            "--backend" => {
                backend = match val().as_str() {
                    "cuda" => BackendChoice::Cuda,
                    "auto" => BackendChoice::Auto,
                    _ => BackendChoice::Cpu,
                }
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let classes = model.classes.clone();
    let ds = match (&images, synth) {
        (Some(dir), _) => load_image_folder(dir, &classes).unwrap_or_else(|e| panic!("{e}")),
        (None, n) if n > 0 => synthetic(n, classes, 7),
        _ => panic!("give --images DIR or --synthetic N"),
    };
    let resolved = backend.resolve().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "model {} {:?} batch {} epochs {} on {} images, {}",
        model.kind.name(),
        model.cnn_channels,
        tc.batch_size,
        tc.epochs,
        ds.len(),
        resolved.describe()
    );
    let req = TrainRequest { model, train: tc, train_set: &ds, valid_set: None, weights: None, init: None, backend };
    let s = train_in_memory(&req, &mut Print).unwrap_or_else(|e| panic!("{e}"));
    let rest: Vec<f64> = s.history.iter().skip(1).map(|m| m.images_per_sec).collect();
    let ips = if rest.is_empty() { s.history[0].images_per_sec } else { rest.iter().sum::<f64>() / rest.len() as f64 };
    println!("ours {ips:.1}");
}
