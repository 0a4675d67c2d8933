//! `pipeline-vision`: everything the pipeline does to pixels, without ML.
//!
//! - [`load_image`]: the single definition of how an image file becomes model input
//!   (training, augmentation and evaluation all decode through it).
//! - [`augment`]: Keras `ImageDataGenerator` transforms (plus a few torchvision ones),
//!   deterministic per (seed, source, copy) and parallel over images.
//! - [`balance`]: the per-class fill/sample-down plan.
//! - [`params`]: the augment job as pipeline files write it (the `augment` stage's params);
//!   with the `schema` feature it derives `JsonSchema`.
//! - [`sheet`]: images laid out in a grid (the augment preview).
//! - [`faces`]: a deterministic synthetic face generator for the demo dataset.
//! - [`dedup`]: exact and near-duplicate images between two sets (the leakage guard).

pub mod augment;
pub mod balance;
pub mod decode;
pub mod dedup;
pub mod faces;
pub mod params;
pub mod sheet;

pub use augment::{
    affine_matrix, apply_transform, augment_copy, augment_many, copy_rng, AugmentConfig, CopyJob, CropConfig,
    ErasingConfig, FillMode,
    TransformParams,
};
pub use balance::{plan_balance, BalanceMode, PlanItem};
pub use decode::{decode_bytes, decode_image, load_image, read_image_file, truncated_jpeg, Image, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, TRUNCATED};
pub use faces::render_face;
pub use params::{AugmentParams, Zoom};
pub use sheet::contact_sheet;

/// The seven classes, in the order used everywhere (label index = position).
pub use pipeline_classes::CLASSES;

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("{}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{}: cannot decode image: {message}", path.display())]
    Decode { path: std::path::PathBuf, message: String },
    #[error("{}: cannot encode image: {message}", path.display())]
    Encode { path: std::path::PathBuf, message: String },
    #[error("param \"{param}\": {message}")]
    BadParam { param: &'static str, message: String },
    #[error("class {class} has no source images, so it cannot be filled to {per_class}")]
    EmptyClass { class: usize, per_class: usize },
    #[error("label {label} of item {item} is not below the number of classes ({n_classes})")]
    BadLabel { item: usize, label: usize, n_classes: usize },
}
