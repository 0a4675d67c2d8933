//! The study's seven emotion classes, in the order of its labelling UI (options 1-7).
//!
//! A crate of its own because it sits below every other one: the crowd crate (AMT defaults,
//! simulations) and the vision crate (synthetic faces, augment's fallback) do not depend on
//! each other, and `pipeline-model` and the stages use them through those.
//! Where the data names its classes (a `summary.json`, an augment manifest), the data wins.

pub const CLASSES: [&str; 7] = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"];
