//! `pipeline predict`: top-k classes with probabilities for image files.
//! (The CLI resolves `--model STAGE|KEY|PATH` to a model directory and calls this.)

use std::path::{Path, PathBuf};

/// One line per image: `fear_00.jpg: surprise 0.96, fear 0.04`.
pub fn predict_cli(model_dir: &Path, images: &[PathBuf], k: usize) -> anyhow::Result<String> {
    if images.is_empty() {
        anyhow::bail!("no images given");
    }
    let preds = pipeline_model::predict(model_dir, images, k)?;
    let mut out = String::new();
    for p in preds {
        out += &p.line();
        out.push('\n');
    }
    Ok(out)
}
