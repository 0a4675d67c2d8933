//! pipeline-crowd: crowd label aggregation, AMT ingest and simulation.
//!
//! Pure algorithms (no file I/O): [`data`] (dense answer matrix), [`aggregate`]
//! (majority vote, Dawid-Skene, one-coin, pooled and shrunk Dawid-Skene), [`spam`],
//! [`sim`] (simulated workers and AMT batch files), [`amt`] (parsing AMT batch-results
//! and crowd-kit CSV text). The MTurk API client (network I/O) lives in [`mturk`], behind
//! the default `mturk` feature, and writing the report files into a directory in [`report`],
//! behind the default `report` feature.
//!
//! Confusion matrices are stored `[answer][true]` (columns = true class), the layout of the
//! study's tables in SEED-FACTS: `m[l * k + j] = P(answer l | true class j)`.

pub mod aggregate;
pub mod select;
pub mod amt;
pub mod data;
pub mod sim;
pub mod spam;

#[cfg(feature = "mturk")]
pub mod mturk;
#[cfg(feature = "report")]
pub mod report;

pub use aggregate::{aggregate, Aggregation, CandidateScore, ClassPrior, EmOptions, Method, Selection};
pub use amt::{parse_amt_batch, parse_crowdkit_csv, AmtBatch, AmtOptions, AmtRecord, OnUnknownLabel};
pub use data::{Answers, AnswersBuilder};
pub use sim::{simulate_amt_batch, SimConfig, SimData};
pub use spam::{detect_spammers, SpamKind, Spammer};

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's civil-from-days):
/// AMT's and SigV4's date formats without a date crate.
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

/// The study's classes, in the order used everywhere.
pub use pipeline_classes::CLASSES as EMOTIONS;

#[derive(Debug, thiserror::Error)]
pub enum CrowdError {
    #[error("{source_name}: row {row}: {message}")]
    Row { source_name: String, row: usize, message: String },
    #[error("{source_name}: missing column \"{column}\"")]
    MissingColumn { source_name: String, column: String },
    #[error("{source_name}: {message}")]
    Format { source_name: String, message: String },
    #[error("invalid option {option}: {message}")]
    Option { option: String, message: String },
    #[error("{0}")]
    Data(String),
    #[error("mturk: {0}")]
    Api(String),
}

pub type Result<T, E = CrowdError> = std::result::Result<T, E>;

/// Deterministic 64-bit mix (splitmix64): seeded tie-breaks that depend on an item's name,
/// not its position, so permuting ids permutes the output.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub(crate) fn hash_str(s: &str) -> u64 {
    // FNV-1a, then mixed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix64(h)
}
