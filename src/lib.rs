//! `pipeline`: a declarative, content-cached DAG runner for the crowd-labelling + CNN study.
//!
//! Data flows spec -> dag -> plan -> engine -> cache; see the README for the user's view.

pub mod progress;
pub mod stages;
