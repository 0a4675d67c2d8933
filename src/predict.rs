//! `pipeline predict`: top-k classes with probabilities for image files.
//! (The CLI resolves `--model STAGE|KEY|PATH` to a model directory and calls this.)

use std::path::{Path, PathBuf};

/// One line per image: `fear_00.jpg: surprise 0.96, fear 0.04`. An image that decodes only
/// partly (a truncated JPEG: the `image` crate fills the missing part in without an error)
/// is still predicted, with a warning on stderr naming it.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("no images given")]
    NoImages,
    #[error(transparent)]
    Model(#[from] pipeline_model::ModelError),
}

pub fn predict_cli(model_dir: &Path, images: &[PathBuf], k: usize) -> Result<String, PredictError> {
    if images.is_empty() {
        return Err(PredictError::NoImages);
    }
    for w in partial_decode_warnings(images) {
        eprintln!("{w}");
    }
    let preds = pipeline_model::predict(model_dir, images, k)?;
    let mut out = String::new();
    for p in preds {
        out += &p.line();
        out.push('\n');
    }
    Ok(out)
}

/// `warning: <file>: truncated JPEG ...` for each image that would decode only partly.
/// Unreadable files are left to the decoder's own error.
pub fn partial_decode_warnings(images: &[PathBuf]) -> Vec<String> {
    images
        .iter()
        .filter(|p| pipeline_vision::read_image_file(p).map(|b| pipeline_vision::truncated_jpeg(&b)).unwrap_or(false))
        .map(|p| {
            format!(
                "warning: {}: truncated JPEG (no end-of-image marker after its last scan): it decodes only partly, \
                 the missing part filled in, so its prediction is unreliable",
                p.display()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_jpeg_is_named_in_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let img = image::GrayImage::from_fn(48, 48, |x, y| image::Luma([((x * 5 + y * 3) % 256) as u8]));
        let whole = d.path().join("whole.jpg");
        img.save(&whole).unwrap();
        let bytes = std::fs::read(&whole).unwrap();
        let cut = d.path().join("cut.jpg");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let png = d.path().join("a.png");
        img.save(&png).unwrap();
        let w = partial_decode_warnings(&[whole, cut.clone(), png, d.path().join("missing.jpg")]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with(&format!("warning: {}: truncated JPEG", cut.display())), "{w:?}");
    }
}
