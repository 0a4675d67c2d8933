//! Stage kind `demo-data`: the embedded default data set, generated, so a fresh clone runs
//! the whole study offline with no files from outside the repo.
//!
//! Output layout (mirrors the study's data):
//! - `results/<class>/<class>_NNN.png`: the images the simulated crowd labels (gold = folder);
//! - `amt/batch_results.csv`: a simulated AMT batch-results download for them, in the real
//!   format (`Input.image_url` = `<url_prefix>results/<class>/<class>_NNN.png`);
//! - `valid/<class>/*.png`, `test/<class>/*.png`: ImageFolder sets with true labels;
//! - `gold.csv`: image_url,label for every crowd-labelled image (for benchmarks).

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{InputDecl, Stage, StageContext, StageError, StageOutcome};

use pipeline_vision::CLASSES;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DemoDataParams {
    /// Seed of everything: faces, workers, answers.
    pub seed: u64,
    /// Crowd-labelled images per class (the study: 100).
    pub per_class: usize,
    /// Validation images per class (the study: 30).
    pub valid_per_class: usize,
    /// Test images per class.
    pub test_per_class: usize,
    /// Image side in pixels.
    pub size: u32,
    /// Honest simulated workers (a spammer and a random clicker are added).
    pub workers: usize,
    /// Assignments per HIT (the study: 3).
    pub answers_per_item: usize,
    /// Prefix of `Input.image_url` in the simulated batch file.
    pub url_prefix: String,
}

impl Default for DemoDataParams {
    fn default() -> Self {
        Self {
            seed: 7,
            per_class: 100,
            valid_per_class: 30,
            test_per_class: 30,
            size: 48,
            workers: 30,
            answers_per_item: 3,
            url_prefix: "https://demo.invalid/emotion/".into(),
        }
    }
}

pub struct DemoData;

/// Independent face seeds per split, class and index.
fn face_seed(seed: u64, split: u64, class: usize, i: usize) -> u64 {
    let h = blake3::hash(format!("{seed}/{split}/{class}/{i}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// Write the demo data set into `dir` (which must exist). Returns the number of images.
pub fn write_demo_data(p: &DemoDataParams, dir: &Path, progress: Option<&super::Progress>) -> Result<usize, StageError> {
    let mut jobs = Vec::new();
    for (split, name, n) in [(0u64, "results", p.per_class), (1, "valid", p.valid_per_class), (2, "test", p.test_per_class)] {
        for (c, class) in CLASSES.iter().enumerate() {
            for i in 0..n {
                jobs.push((split, c, i, dir.join(name).join(class).join(format!("{class}_{i:03}.png"))));
            }
        }
    }
    for (_, _, _, path) in &jobs {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
        }
    }
    if let Some(pr) = progress {
        pr.set_length(jobs.len() as u64);
    }
    jobs.par_iter().try_for_each(|(split, c, i, path)| {
        let img = pipeline_vision::faces::render_face(*c, face_seed(p.seed, *split, *c, *i), p.size);
        img.save(path).map_err(|e| StageError::bad_file(path, e))?;
        if let Some(pr) = progress {
            pr.inc(1);
        }
        Ok::<(), StageError>(())
    })?;
    let items: Vec<(String, usize)> = (0..CLASSES.len())
        .flat_map(|c| (0..p.per_class).map(move |i| (c, i)))
        .map(|(c, i)| (format!("{}results/{}/{}_{i:03}.png", p.url_prefix, CLASSES[c], CLASSES[c]), c))
        .collect();
    let csv = pipeline_crowd::sim::simulate_amt_batch(&items, p.workers, p.answers_per_item, p.seed);
    let amt = dir.join("amt");
    std::fs::create_dir_all(&amt).map_err(|e| StageError::io(&amt, e))?;
    std::fs::write(amt.join("batch_results.csv"), csv).map_err(|e| StageError::io(amt.join("batch_results.csv"), e))?;
    let mut gold = String::from("image_url,label\n");
    for (url, c) in &items {
        gold.push_str(&format!("{url},{}\n", CLASSES[*c]));
    }
    std::fs::write(dir.join("gold.csv"), gold).map_err(|e| StageError::io(dir.join("gold.csv"), e))?;
    Ok(jobs.len())
}

impl Stage for DemoData {
    type Params = DemoDataParams;
    const KIND: &'static str = "demo-data";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Generate the embedded demo: synthetic 48x48 faces for 7 emotions and a simulated AMT batch-results file";
    const INPUTS: &'static [InputDecl] = &[];

    fn check_params(p: &DemoDataParams) -> Result<(), StageError> {
        if p.per_class == 0 || p.answers_per_item == 0 || p.workers < p.answers_per_item {
            return Err(StageError::bad_param("per_class", "per_class and answers_per_item must be > 0, workers >= answers_per_item"));
        }
        // found by a hostile pass: per_class 1e12 grew a vector until the machine ran out of memory
        for (name, v, max) in [
            ("per_class", p.per_class, 100_000),
            ("valid_per_class", p.valid_per_class, 100_000),
            ("test_per_class", p.test_per_class, 100_000),
            ("workers", p.workers, 1_000_000),
            ("answers_per_item", p.answers_per_item, 1_000),
        ] {
            if v > max {
                return Err(StageError::bad_param(name, &format!("{v} is above {max}")));
            }
        }
        if !(16..=256).contains(&p.size) {
            return Err(StageError::bad_param("size", "between 16 and 256 pixels"));
        }
        Ok(())
    }

    fn run(p: &DemoDataParams, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let n = write_demo_data(p, ctx.out_dir, Some(ctx.progress))?;
        let mut o = StageOutcome::default();
        o.metrics.insert("images".into(), n as f64);
        o.summary.push(format!("{n} synthetic faces, {} simulated AMT answers", p.per_class * CLASSES.len() * p.answers_per_item));
        Ok(o)
    }
}
