//! pipeline-report: tables and PNG plots shared by every stage's report.
//!
//! Plots are drawn with plotters into an in-memory RGB buffer and then encoded as PNG, so a
//! failed plot never leaves a half-written file. Text uses DejaVu Sans embedded in the binary
//! (`fonts/`, Bitstream Vera licence): no system font or fontconfig is needed at run time.
//!
//! - [`heatmap`]: [`heatmap_png`] (confusion matrices, worker confusion);
//! - [`line_chart`]: [`line_chart_png`] (training curves, EM log-likelihood);
//! - [`markdown`]: [`markdown_table`], the one Markdown table writer;
//! - `draw`: what the plots share (the font, PNG rendering, colours, text fitting).

use std::path::PathBuf;

mod draw;
pub mod heatmap;
pub mod line_chart;
pub mod markdown;

pub use heatmap::{heatmap_png, HEATMAP_SIZE};
pub use line_chart::{line_chart_png, Series, LINE_CHART_SIZE};
pub use markdown::{markdown_table, md_text};


#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {message}", path.display())]
    Draw { path: PathBuf, message: String },
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::Path;

    pub(crate) fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Decodes the PNG and checks its size and that it holds more than a blank canvas.
    pub(crate) fn check_png(path: &Path, size: (u32, u32)) -> image::RgbImage {
        let img = image::open(path).expect("decodes as an image").to_rgb8();
        assert_eq!(img.dimensions(), size);
        let first = *img.get_pixel(0, 0);
        let differing = img.pixels().filter(|p| **p != first).count();
        assert!(
            differing > 1000,
            "only {differing} pixels differ from the background"
        );
        img
    }
}
