use std::path::PathBuf;

/// Every failure names the file (or field) it is about, so a stage error reads on its own.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: cannot decode image: {message}", path.display())]
    Image { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    #[error("{}: weights: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error("config field \"{field}\": {message}")]
    Config { field: String, message: String },
    #[error("backend: {0}")]
    Backend(String),
    #[error("{0}")]
    Data(String),
    #[error("cancelled")]
    Cancelled,
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }
    pub fn bad_file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        ModelError::BadFile { path: path.into(), message: message.to_string() }
    }
    pub fn config(field: &str, message: impl std::fmt::Display) -> Self {
        ModelError::Config { field: field.to_string(), message: message.to_string() }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
