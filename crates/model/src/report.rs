//! Evaluation report files: `report.md`, `report.json`, `confusion.png`, `top2.csv`, and the
//! change since an earlier `report.json` (`accuracy 0.33 -> 0.41`) for the stage's summary.
//!
//! The files depend only on the evaluation (and the leakage check): never on an earlier
//! report, so the same cache key always gives byte-identical files.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{ModelError, Result};
use crate::eval::{Evaluation, CONFUSION_COLS, CONFUSION_ROWS};
use crate::leakage::Leakage;

pub const REPORT_MD: &str = "report.md";
pub const REPORT_JSON: &str = "report.json";
pub const CONFUSION_PNG: &str = "confusion.png";
pub const TOP2_CSV: &str = "top2.csv";

/// The report as JSON (what `report.json` holds, and what a later run compares against).
/// `leakage`: the guard's counts when it ran.
pub fn report_json(ev: &Evaluation, model: &str, leakage: Option<&Leakage>) -> Value {
    let (lo, hi) = ev.accuracy_interval();
    let mut v = json!({
        "model": model,
        "images": ev.images,
        "accuracy": ev.accuracy,
        "accuracy_ci95": {"method": "wilson", "low": lo, "high": hi, "correct": ev.correct()},
        "macro_f1": ev.macro_f1,
        "classes": ev.classes,
        "confusion": {
            "rows": CONFUSION_ROWS,
            "columns": CONFUSION_COLS,
            "matrix": ev.confusion,
        },
        "per_class": ev.per_class,
        "top2": ev.predictions.iter().map(|p| json!({
            "file": p.file,
            "true": p.truth,
            "top": p.top.iter().map(|(c, pr)| json!({"class": c, "p": pr})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    if let Some(l) = leakage {
        v["leakage"] = json!({
            "exact": l.exact,
            "near": l.near,
            "checked": l.checked,
            "training_images": l.reference,
            "max_distance": l.max_distance,
            "examples": l.examples,
        });
    }
    v
}

/// Lines like `accuracy 0.33 -> 0.41` against an earlier `report.json` (empty if none or
/// unreadable: a missing history is not an error).
pub fn changes_since(previous_report: &Path, ev: &Evaluation) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(previous_report) else { return Vec::new() };
    let Ok(prev) = serde_json::from_str::<Value>(&text) else { return Vec::new() };
    let mut out = Vec::new();
    for (name, now) in [("accuracy", ev.accuracy), ("macro_f1", ev.macro_f1)] {
        if let Some(before) = prev.get(name).and_then(Value::as_f64) {
            out.push(format!("{name} {before:.2} -> {now:.2}"));
        }
    }
    if let Some(pcs) = prev.get("per_class").and_then(Value::as_array) {
        for c in &ev.per_class {
            let before = pcs
                .iter()
                .find(|p| p.get("class").and_then(Value::as_str) == Some(c.class.as_str()))
                .and_then(|p| p.get("f1"))
                .and_then(Value::as_f64);
            if let Some(b) = before {
                if (b - c.f1).abs() >= 0.005 {
                    out.push(format!("f1 {} {b:.2} -> {:.2}", c.class, c.f1));
                }
            }
        }
    }
    out
}

/// The one Markdown table writer (`pipeline_report`), which escapes `|` in cells.
fn md_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    pipeline_report::markdown_table(&headers, rows)
}

fn markdown(ev: &Evaluation, model: &str, leakage: Option<&Leakage>) -> String {
    let mut s = format!("# Evaluation of {model}\n\n");
    let (lo, hi) = ev.accuracy_interval();
    s += &format!(
        "{} test images. **Accuracy {:.3}** (95 % interval {lo:.3}-{hi:.3}, Wilson, {} correct), **macro-F1 {:.3}**.\n\n",
        ev.images,
        ev.accuracy,
        ev.correct(),
        ev.macro_f1
    );
    if ev.images < 1000 {
        s += &format!(
            "With {} test images the interval is {:.2} wide: differences between models smaller than that are not evidence.\n\n",
            ev.images,
            hi - lo
        );
    }
    if let Some(l) = leakage {
        s += "## Leakage\n\n";
        if l.total() == 0 {
            s += &format!(
                "None of the {} test images duplicates one of the model's {} training images (exact pixels, or pHash within {} bits, mirrored too).\n\n",
                l.checked, l.reference, l.max_distance
            );
        } else {
            s += &format!(
                "**{} of {} test images are images the model trained or was selected on** ({} exact, {} near duplicates \
                 within {} bits of pHash): on those the figures above measure memory, not generalisation.\n\n",
                l.total(),
                l.checked,
                l.exact,
                l.near,
                l.max_distance
            );
            for e in &l.examples {
                s += &format!("- `{e}`\n");
            }
            s += "\n";
        }
    }
    s += "## Per class\n\nPrecision: of the images predicted as the class, the share that are. \
          Recall: of the images of the class, the share found.\n\n";
    let headers: Vec<String> = ["class", "precision", "recall", "F1", "support"].iter().map(|h| h.to_string()).collect();
    let rows: Vec<Vec<String>> = ev
        .per_class
        .iter()
        .map(|c| {
            vec![c.class.clone(), format!("{:.3}", c.precision), format!("{:.3}", c.recall), format!("{:.3}", c.f1), c.support.to_string()]
        })
        .collect();
    s += &md_table(&headers, &rows);
    s += &format!(
        "\n## Confusion matrix\n\nRows = **{CONFUSION_ROWS}** class, columns = **{CONFUSION_COLS}** class \
         (each column sums to that class's support). ![confusion matrix]({CONFUSION_PNG})\n\n"
    );
    let mut headers = vec![format!("{CONFUSION_ROWS} \\ {CONFUSION_COLS}")];
    headers.extend(ev.classes.iter().cloned());
    let rows: Vec<Vec<String>> = ev
        .classes
        .iter()
        .zip(&ev.confusion)
        .map(|(c, row)| std::iter::once(c.clone()).chain(row.iter().map(|v| v.to_string())).collect())
        .collect();
    s += &md_table(&headers, &rows);
    s += &format!("\n## Top-2 guesses per image\n\nAlso in `{TOP2_CSV}`.\n\n```\n");
    for p in &ev.predictions {
        s += &p.line();
        if let Some(t) = &p.truth {
            s += &format!("   (true: {t})");
        }
        s += "\n";
    }
    s += "```\n";
    s
}

fn top2_csv(ev: &Evaluation) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut s = String::from("file,true,first,first_p,second,second_p,summary\n");
    for p in &ev.predictions {
        let get = |i: usize| p.top.get(i).map(|(c, pr)| (c.clone(), format!("{pr:.4}"))).unwrap_or_default();
        let (c1, p1) = get(0);
        let (c2, p2) = get(1);
        s += &format!(
            "{},{},{},{},{},{},{}\n",
            field(&p.file),
            field(p.truth.as_deref().unwrap_or("")),
            c1,
            p1,
            c2,
            p2,
            field(&p.line())
        );
    }
    s
}

/// Write all report files into `out_dir`. They depend on `ev`, `model` and `leakage` only.
pub fn write_report(out_dir: &Path, ev: &Evaluation, model: &str, leakage: Option<&Leakage>) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::io(out_dir, e))?;
    let write = |name: &str, text: String| -> Result<()> {
        let p = out_dir.join(name);
        std::fs::write(&p, text).map_err(|e| ModelError::io(&p, e))
    };
    let json = serde_json::to_string_pretty(&report_json(ev, model, leakage)).map_err(|e| ModelError::bad_file(out_dir.join(REPORT_JSON), e))?;
    write(REPORT_JSON, json + "\n")?;
    write(REPORT_MD, markdown(ev, model, leakage))?;
    write(TOP2_CSV, top2_csv(ev))?;
    let png = out_dir.join(CONFUSION_PNG);
    let matrix: Vec<Vec<f64>> = ev.confusion.iter().map(|r| r.iter().map(|&v| v as f64).collect()).collect();
    pipeline_report::heatmap_png(
        &png,
        &format!("Confusion matrix ({model})"),
        &matrix,
        &ev.classes,
        &ev.classes,
        CONFUSION_ROWS,
        CONFUSION_COLS,
    )
    .map_err(|e| ModelError::bad_file(&png, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md_table_escapes_pipes_in_cells() {
        let t = md_table(&["class".into(), "f1".into()], &[vec!["a|b".into(), "0.50".into()]]);
        assert_eq!(t, "| class | f1 |\n| --- | --- |\n| a\\|b | 0.50 |\n");
    }
}
