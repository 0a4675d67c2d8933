//! Stage kind `evaluate`: score a trained model on an ImageFolder test set.
//!
//! Output: `report.md`, `report.json`, `confusion.png` (rows = predicted class, columns =
//! true class; the study's slides swapped precision and recall, ours name the axes) and
//! `top2.csv` (`fear_00.jpg: surprise 0.96, fear 0.04`). Accuracy comes with its 95 % Wilson
//! interval. Every file depends only on the stage's key (model, test set, params): two runs
//! with the same key write byte-identical files. When this stage ran before, the change
//! (`accuracy 0.33 -> 0.41`) is printed in the summary only.
//!
//! Leakage guard (`leakage: error|warn|off`): the test images are compared with the images
//! the model trained and was selected on (its `training_images.csv`): exact copies and near
//! ones (pHash, mirrored too). `error` fails naming how many and a few; `warn` puts the
//! counts in `report.md`, `report.json` (`"leakage": {"exact": N, "near": M, ...}`) and the
//! summary.

use pipeline_model::data::load_image_folder;
use pipeline_model::leakage::{check_leakage, hash_rows, read_training_images, HashedImage, Role};
use pipeline_model::report::{changes_since, write_report, REPORT_JSON, REPORT_MD};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::train::{backend_choice, folder_names, leakage_verdict, model_error, BackendName, LeakageMode};
use super::{InputDecl, Stage, StageContext, StageError, StageOutcome};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateParams {
    /// Guesses kept per image in `top2.csv` / the report.
    pub top_k: usize,
    /// Where to run: provenance only.
    pub backend: BackendName,
    /// Test images that duplicate images the model trained or was selected on: `error`
    /// (default) fails the stage, `warn` reports the counts, `off` does not check.
    pub leakage: LeakageMode,
    /// Near duplicates: largest pHash Hamming distance (bits of 256) that counts.
    pub leakage_distance: u32,
}

impl Default for EvaluateParams {
    fn default() -> Self {
        EvaluateParams {
            top_k: 2,
            backend: BackendName::Auto,
            leakage: LeakageMode::Error,
            leakage_distance: pipeline_model::leakage::DEFAULT_NEAR_DISTANCE,
        }
    }
}

pub struct Evaluate;

impl Stage for Evaluate {
    type Params = EvaluateParams;
    const KIND: &'static str = "evaluate";
    // 2: files no longer depend on the previous output; Wilson interval; leakage guard.
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "Confusion matrix (rows predicted, columns true), per-class precision/recall/F1, accuracy with its 95 % interval, macro-F1 and top-2 guesses on an ImageFolder test set, checked for test images the model trained on";
    const INPUTS: &'static [InputDecl] = &[
        InputDecl { name: "model", required: true, doc: "train output (model.mpk + config.json)" },
        InputDecl { name: "test", required: true, doc: "test ImageFolder: <root>/<class>/*.jpg" },
    ];

    fn check_params(p: &EvaluateParams) -> Result<(), StageError> {
        if p.top_k == 0 || p.top_k > 7 {
            return Err(StageError::bad_param("top_k", "must be in 1..=7"));
        }
        super::check_leakage_distance(p.leakage_distance)?;
        Ok(())
    }

    fn run(p: &EvaluateParams, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let model_dir = ctx.input("model")?;
        let test = ctx.input("test")?;
        ctx.progress.set_message("evaluating");
        let choice = backend_choice(p.backend);
        let backend = choice.resolve().map_err(model_error)?;
        let artifact = pipeline_model::load_artifact(model_dir).map_err(model_error)?;
        let ds = load_image_folder(test, artifact.classes()).map_err(model_error)?;
        ctx.cancel.check()?;

        let mut notes = Vec::new();
        let leak = match p.leakage {
            LeakageMode::Off => None,
            mode => match read_training_images(model_dir).map_err(model_error)? {
                None => {
                    notes.push(format!(
                        "leakage: not checked, the model records no training images ({} missing: trained before the guard existed; retrain to check)",
                        pipeline_model::TRAINING_IMAGES
                    ));
                    None
                }
                Some(reference) => {
                    let hashes = hash_rows(&ds, &(0..ds.len()).collect::<Vec<_>>());
                    let queries: Vec<HashedImage> = folder_names(test, &ds.files)
                        .into_iter()
                        .zip(hashes)
                        .enumerate()
                        .map(|(i, (name, hash))| HashedImage {
                            name,
                            role: Role::Valid,
                            label: ds.classes[ds.labels[i]].clone(),
                            hash,
                        })
                        .collect();
                    let l = check_leakage(&reference, &queries, Some(p.leakage_distance));
                    leakage_verdict(
                        mode,
                        &l,
                        "test",
                        "images the model trained or was selected on",
                        "Scores on them measure memory, not generalisation: test on images kept out of training, or set `leakage: warn` to report the figures with the counts",
                    )?;
                    Some(l)
                }
            },
        };

        let ev = pipeline_model::evaluate_dataset(&artifact, &ds, Some(test), p.top_k, choice).map_err(model_error)?;
        ctx.cancel.check()?;
        let model_name = match artifact.member_count() {
            1 => artifact.config.model.kind.name().to_string(),
            k => format!("an ensemble of {k} {}", artifact.config.model.kind.name()),
        };
        write_report(ctx.out_dir, &ev, &model_name, leak.as_ref()).map_err(model_error)?;

        let mut out = StageOutcome::default();
        out.metrics.insert("accuracy".into(), ev.accuracy);
        let (lo, hi) = ev.accuracy_interval();
        out.metrics.insert("accuracy_ci95_low".into(), lo);
        out.metrics.insert("accuracy_ci95_high".into(), hi);
        out.metrics.insert("macro_f1".into(), ev.macro_f1);
        out.provenance.insert("backend".into(), json!(backend.name()));
        out.provenance.insert("device".into(), json!(backend.describe()));
        out.summary.extend(ev.table_lines());
        out.summary.push(ev.accuracy_line());
        if let Some(l) = &leak {
            out.metrics.insert("leakage_exact".into(), l.exact as f64);
            out.metrics.insert("leakage_near".into(), l.near as f64);
            if l.total() > 0 {
                out.summary.push(format!(
                    "LEAKAGE (warn): {}: these figures are not held-out figures",
                    l.headline("test", "images the model trained or was selected on")
                ));
                out.summary.extend(l.examples.iter().map(|e| format!("  {e}")));
            } else {
                out.summary.push(format!(
                    "leakage: none of the {} test images duplicates one of the model's {} training and validation images",
                    l.checked, l.reference
                ));
            }
        }
        out.summary.extend(notes);
        // The earlier report is read for the summary only, never for the files (they must
        // depend on the key alone).
        if let Some(prev) = ctx.previous_output.map(|d| d.join(REPORT_JSON)).filter(|p| p.is_file()) {
            let changes = changes_since(&prev, &ev);
            if !changes.is_empty() {
                out.summary.push(format!("since the earlier report: {}", changes.join(", ")));
            }
        }
        out.summary.push(format!("report: {}", ctx.out_dir.join(REPORT_MD).display()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::stages::train::{Train, TrainParams};

    use pipeline_vision::CLASSES;

    fn face(class: usize, seed: u64) -> image::GrayImage {
        pipeline_vision::render_face(class, seed, 48)
    }

    /// An augment-like output: 4 items per class, each with one shifted copy.
    fn augment_dir(dir: &Path) {
        let mut m = String::from("file,source,label,copy\n");
        for (c, name) in CLASSES.iter().enumerate() {
            std::fs::create_dir_all(dir.join("images").join(name)).unwrap();
            for i in 0..4u64 {
                let img = face(c, 100 + 10 * c as u64 + i);
                let f = format!("images/{name}/{name}_{i}.png");
                img.save(dir.join(&f)).unwrap();
                m += &format!("{f},https://x.invalid/b/results/{name}/{name}_{i}.jpg,{name},\n");
                let shifted = image::GrayImage::from_fn(48, 48, |x, y| *img.get_pixel(x.saturating_sub(1), y));
                let f = format!("images/{name}/{name}_{i}_aug0.png");
                shifted.save(dir.join(&f)).unwrap();
                m += &format!("{f},https://x.invalid/b/results/{name}/{name}_{i}.jpg,{name},0\n");
            }
        }
        std::fs::write(dir.join("manifest.csv"), m).unwrap();
    }

    /// A test ImageFolder of new faces, plus (when `leak`) a byte copy of a training original.
    fn test_folder(root: &Path, aug: &Path, leak: bool) {
        for (c, name) in CLASSES.iter().enumerate() {
            std::fs::create_dir_all(root.join(name)).unwrap();
            for i in 0..2u64 {
                face(c, 5000 + 10 * c as u64 + i).save(root.join(format!("{name}/t{i}.png"))).unwrap();
            }
        }
        if leak {
            // Every training original of "angry", so whichever the split kept is there.
            for i in 0..4 {
                std::fs::copy(aug.join(format!("images/angry/angry_{i}.png")), root.join(format!("angry/copy_{i}.png"))).unwrap();
            }
        }
    }

    fn run<S: Stage>(p: &S::Params, inputs: &[(&str, &Path)], out: &Path, previous: Option<&Path>) -> Result<StageOutcome, StageError> {
        let inputs: BTreeMap<String, PathBuf> = inputs.iter().map(|(k, v)| (k.to_string(), v.to_path_buf())).collect();
        std::fs::create_dir_all(out).unwrap();
        crate::stages::test_run::<S>(p, &inputs, out, out, previous)
    }

    fn tiny_train() -> TrainParams {
        TrainParams {
            cnn_channels: vec![4, 8],
            cnn_dense: 16,
            train: pipeline_model::TrainConfig { epochs: 2, batch_size: 8, ..Default::default() },
            valid_fraction: 0.25,
            ..Default::default()
        }
    }

    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect()
    }

    #[test]
    fn output_depends_on_the_key_only_and_leakage_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let aug = t.join("aug");
        augment_dir(&aug);
        // Held-out validation: 1 of 4 items per class, no leakage by construction.
        let model = t.join("model");
        let o = run::<Train>(&tiny_train(), &[("images", aug.as_path())], &model, None).unwrap();
        let s = o.summary.join("\n");
        assert!(s.contains("validation: 7 of 28 items held out"), "{s}");
        assert!(s.contains("leakage: none of the 7 validation images"), "{s}");
        let rec = pipeline_model::leakage::read_training_images(&model).unwrap().unwrap();
        assert_eq!(rec.iter().filter(|r| r.role == Role::Train).count(), 21);
        assert_eq!(rec.iter().filter(|r| r.role == Role::Valid).count(), 7);

        // An explicit validation folder holding training images: error names them, warn goes on.
        let valid = t.join("valid");
        test_folder(&valid, &aug, true);
        let e = run::<Train>(&tiny_train(), &[("images", aug.as_path()), ("valid", valid.as_path())], &t.join("m2"), None).unwrap_err().to_string();
        assert!(e.contains("4 of 18 valid images duplicate training images (4 exact"), "{e}");
        assert!(e.contains("valid/angry/copy_0.png == training image results/angry/angry_0.jpg"), "{e}");
        let warn = TrainParams { leakage: LeakageMode::Warn, ..tiny_train() };
        let o = run::<Train>(&warn, &[("images", aug.as_path()), ("valid", valid.as_path())], &t.join("m3"), None).unwrap();
        assert_eq!(o.metrics["leakage_exact"], 4.0);

        // Evaluate on new faces: the same files whatever the previous output was.
        let test = t.join("test");
        test_folder(&test, &aug, false);
        let p = EvaluateParams { backend: BackendName::Cpu, ..Default::default() };
        let first = t.join("e1");
        let o1 = run::<Evaluate>(&p, &[("model", model.as_path()), ("test", test.as_path())], &first, None).unwrap();
        assert!(o1.summary.iter().any(|l| l.starts_with("accuracy ") && l.contains("95 % CI")), "{:?}", o1.summary);
        let fake_prev = t.join("prev");
        std::fs::create_dir_all(&fake_prev).unwrap();
        std::fs::write(fake_prev.join(REPORT_JSON), r#"{"accuracy": 0.01, "macro_f1": 0.01, "per_class": []}"#).unwrap();
        let second = t.join("e2");
        let o2 = run::<Evaluate>(&p, &[("model", model.as_path()), ("test", test.as_path())], &second, Some(fake_prev.as_path())).unwrap();
        assert_eq!(files(&first), files(&second), "same key, different previous output: files must not differ");
        assert!(o2.summary.iter().any(|l| l.starts_with("since the earlier report: accuracy 0.01 -> ")), "{:?}", o2.summary);
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(first.join(REPORT_JSON)).unwrap()).unwrap();
        assert_eq!(report["leakage"]["exact"], 0);
        let (lo, hi) = (report["accuracy_ci95"]["low"].as_f64().unwrap(), report["accuracy_ci95"]["high"].as_f64().unwrap());
        assert!(lo <= report["accuracy"].as_f64().unwrap() && hi >= report["accuracy"].as_f64().unwrap());
        assert!(std::fs::read_to_string(first.join(REPORT_MD)).unwrap().contains("95 % interval"));

        // Test images the model trained or validated on: error by default, counts with warn.
        let leaky = t.join("leaky");
        test_folder(&leaky, &aug, true);
        let e = run::<Evaluate>(&p, &[("model", model.as_path()), ("test", leaky.as_path())], &t.join("e3"), None).unwrap_err().to_string();
        assert!(e.contains("4 of 18 test images duplicate images the model trained or was selected on (4 exact"), "{e}");
        assert!(e.contains("leaky/angry/copy_0.png == "), "{e}");
        let pw = EvaluateParams { leakage: LeakageMode::Warn, ..p.clone() };
        let o = run::<Evaluate>(&pw, &[("model", model.as_path()), ("test", leaky.as_path())], &t.join("e4"), None).unwrap();
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(t.join("e4").join(REPORT_JSON)).unwrap()).unwrap();
        assert_eq!((report["leakage"]["exact"].as_u64(), report["leakage"]["near"].as_u64()), (Some(4), Some(0)));
        assert!(o.summary.iter().any(|l| l.starts_with("LEAKAGE (warn): 4 of 18")), "{:?}", o.summary);
        assert!(std::fs::read_to_string(t.join("e4").join(REPORT_MD)).unwrap().contains("**4 of 18 test images are images the model trained or was selected on**"));
        let off = EvaluateParams { leakage: LeakageMode::Off, ..p.clone() };
        run::<Evaluate>(&off, &[("model", model.as_path()), ("test", leaky.as_path())], &t.join("e5"), None).unwrap();
    }
}
