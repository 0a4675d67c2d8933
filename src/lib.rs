//! `pipeline`: a declarative, content-cached DAG runner for the crowd-labelling + CNN study.
//!
//! Data flows spec -> dag -> plan -> engine -> cache; see the README for the user's view.

pub mod aggregate;
pub mod cache;
pub mod cli;
pub mod dag;
pub mod engine;
pub mod executor;
pub mod fmt;
pub mod outdir;
#[cfg(feature = "ml")]
pub mod predict;
pub mod plan;
pub mod progress;
pub mod promote;
pub mod regular;
pub mod runs;
pub mod schedule;
pub mod schema;
pub mod spec;
pub mod stages;
pub mod suggest;
pub mod supervise;
pub mod text;
pub mod ui;
