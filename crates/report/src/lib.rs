//! pipeline-report: tables and PNG plots shared by every stage's report.
//! (Signatures fixed; bodies being written.)

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {message}", path.display())]
    Draw { path: PathBuf, message: String },
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A heatmap of `matrix[row][col]` with each cell's value written in it.
/// `row_axis`/`col_axis` name the axes ("predicted", "true") so no report leaves them implicit.
pub fn heatmap_png(
    path: &Path,
    title: &str,
    matrix: &[Vec<f64>],
    row_labels: &[String],
    col_labels: &[String],
    row_axis: &str,
    col_axis: &str,
) -> Result<(), ReportError> {
    let _ = (path, title, matrix, row_labels, col_labels, row_axis, col_axis);
    unimplemented!("heatmap_png")
}

/// Lines over x (training curves, log-likelihood per EM iteration).
pub fn line_chart_png(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<(), ReportError> {
    let _ = (path, title, x_label, y_label, series);
    unimplemented!("line_chart_png")
}

/// A GitHub-flavoured Markdown table.
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let _ = (headers, rows);
    unimplemented!("markdown_table")
}
