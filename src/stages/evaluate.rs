//! Stage kind `evaluate`: score a trained model on an ImageFolder test set.
//!
//! Output: `report.md`, `report.json`, `confusion.png` (rows = predicted class, columns =
//! true class; the study's slides swapped precision and recall, ours name the axes) and
//! `top2.csv` (`fear_00.jpg: surprise 0.96, fear 0.04`). When this stage ran before, the
//! summary prints the change (`accuracy 0.33 -> 0.41`).

use pipeline_model::report::{write_report, REPORT_JSON, REPORT_MD};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::train::{backend_choice, model_error, BackendName};
use super::{InputDecl, Stage, StageContext, StageError, StageOutcome};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateParams {
    /// Guesses kept per image in `top2.csv` / the report.
    pub top_k: usize,
    /// Where to run: provenance only.
    pub backend: BackendName,
}

impl Default for EvaluateParams {
    fn default() -> Self {
        EvaluateParams { top_k: 2, backend: BackendName::Auto }
    }
}

pub struct Evaluate;

impl Stage for Evaluate {
    type Params = EvaluateParams;
    const KIND: &'static str = "evaluate";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Confusion matrix (rows predicted, columns true), per-class precision/recall/F1, accuracy, macro-F1 and top-2 guesses on an ImageFolder test set";
    const INPUTS: &'static [InputDecl] = &[
        InputDecl { name: "model", required: true, doc: "train output (model.mpk + config.json)" },
        InputDecl { name: "test", required: true, doc: "test ImageFolder: <root>/<class>/*.jpg" },
    ];

    fn check_params(p: &EvaluateParams) -> Result<(), StageError> {
        if p.top_k == 0 || p.top_k > 7 {
            return Err(StageError::bad_param("top_k", "must be in 1..=7"));
        }
        Ok(())
    }

    fn run(p: &EvaluateParams, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        let model_dir = ctx.input("model")?;
        let test = ctx.input("test")?;
        ctx.progress.set_message("evaluating");
        let choice = backend_choice(p.backend);
        let backend = choice.resolve().map_err(model_error)?;
        let ev = pipeline_model::evaluate_dir(model_dir, test, p.top_k, choice).map_err(model_error)?;
        ctx.cancel.check()?;
        let model_name = pipeline_model::load_artifact(model_dir)
            .map(|a| a.config.model.kind.name().to_string())
            .unwrap_or_else(|_| "model".into());
        let previous = ctx.previous_output.map(|d| d.join(REPORT_JSON)).filter(|p| p.is_file());
        let changes = write_report(ctx.out_dir, &ev, &model_name, previous.as_deref()).map_err(model_error)?;

        let mut out = StageOutcome::default();
        out.metrics.insert("accuracy".into(), ev.accuracy);
        out.metrics.insert("macro_f1".into(), ev.macro_f1);
        out.provenance.insert("backend".into(), json!(backend.name()));
        out.provenance.insert("device".into(), json!(backend.describe()));
        out.summary.extend(ev.table_lines());
        if !changes.is_empty() {
            out.summary.push(format!("since the earlier report: {}", changes.join(", ")));
        }
        out.summary.push(format!("report: {}", ctx.out_dir.join(REPORT_MD).display()));
        Ok(out)
    }
}
