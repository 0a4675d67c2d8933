//! Pure evaluation metrics.
//!
//! Confusion matrix layout: **rows = predicted class, columns = true class**, the layout of
//! the study's tables (rows = answer, columns = true). So precision of class c is
//! `M[c][c] / row c sum` and recall is `M[c][c] / column c sum`. (The study's slides named
//! these two the other way round; every report here names its axes.)

use serde::{Deserialize, Serialize};

/// One image's guesses, most probable first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagePrediction {
    /// How reports name the image (file name, or a relative path when names repeat).
    pub file: String,
    /// True class, when known (evaluation).
    #[serde(default)]
    pub truth: Option<String>,
    /// `(class, probability)`, descending.
    pub top: Vec<(String, f32)>,
}

impl ImagePrediction {
    /// `fear_00.jpg: surprise 0.96, fear 0.04`
    pub fn line(&self) -> String {
        let guesses: Vec<String> = self.top.iter().map(|(c, p)| format!("{c} {p:.2}")).collect();
        format!("{}: {}", self.file, guesses.join(", "))
    }
}

/// Name of the confusion matrix's row axis.
pub const CONFUSION_ROWS: &str = "predicted";
/// Name of the confusion matrix's column axis.
pub const CONFUSION_COLS: &str = "true";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    /// Of the images predicted as this class, the share that are (0 when none predicted).
    pub precision: f64,
    /// Of the images of this class, the share predicted as it (0 when none exist).
    pub recall: f64,
    pub f1: f64,
    /// Images whose true class this is.
    pub support: u64,
    /// Images predicted as this class.
    pub predicted: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub classes: Vec<String>,
    /// `confusion[predicted][true]`.
    pub confusion: Vec<Vec<u64>>,
    pub per_class: Vec<ClassMetrics>,
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1 over all classes.
    pub macro_f1: f64,
    pub images: usize,
    /// Top-k guesses per image (top-2 in reports).
    pub predictions: Vec<ImagePrediction>,
}

/// `m[predicted][true]` counts.
pub fn confusion_matrix(predicted: &[usize], truth: &[usize], k: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; k]; k];
    for (&p, &t) in predicted.iter().zip(truth) {
        if p < k && t < k {
            m[p][t] += 1;
        }
    }
    m
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Per-class metrics, accuracy and macro-F1 from a `[predicted][true]` matrix.
pub fn metrics_from_confusion(classes: &[String], m: &[Vec<u64>]) -> (Vec<ClassMetrics>, f64, f64) {
    let k = classes.len();
    let total: u64 = m.iter().flatten().sum();
    let diag: u64 = (0..k).map(|c| m[c][c]).sum();
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|c| {
            let predicted: u64 = m[c].iter().sum();
            let support: u64 = (0..k).map(|r| m[r][c]).sum();
            let precision = ratio(m[c][c], predicted);
            let recall = ratio(m[c][c], support);
            let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            ClassMetrics { class: classes[c].clone(), precision, recall, f1, support, predicted }
        })
        .collect();
    let macro_f1 = if k == 0 { 0.0 } else { per_class.iter().map(|c| c.f1).sum::<f64>() / k as f64 };
    (per_class, ratio(diag, total), macro_f1)
}

/// z of a two-sided 95 % normal interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval for a proportion of `successes` in `n` trials at normal quantile
/// `z` (1.96: 95 %). Unlike the normal approximation it stays inside [0, 1] and is not
/// degenerate at 0 or n successes; with 210 test images at 0.5 it is about +-0.07 wide.
/// `(0, 1)` for `n` = 0.
pub fn wilson_interval(successes: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (successes.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, row[i])).collect()
}

/// Evaluate class probabilities `probs` (`[n, classes]`) against true labels.
pub fn evaluate_predictions(
    classes: &[String],
    probs: &[f32],
    truth: &[usize],
    files: &[String],
    top: usize,
) -> Evaluation {
    let k = classes.len();
    let n = truth.len();
    let mut predicted = Vec::with_capacity(n);
    let mut predictions = Vec::with_capacity(n);
    for i in 0..n {
        let row = &probs[i * k..(i + 1) * k];
        let best = top_k(row, top.max(1));
        predicted.push(best[0].0);
        predictions.push(ImagePrediction {
            file: files.get(i).cloned().unwrap_or_else(|| format!("#{i}")),
            truth: Some(classes[truth[i]].clone()),
            top: best.iter().take(top).map(|&(c, p)| (classes[c].clone(), p)).collect(),
        });
    }
    let confusion = confusion_matrix(&predicted, truth, k);
    let (per_class, accuracy, macro_f1) = metrics_from_confusion(classes, &confusion);
    Evaluation { classes: classes.to_vec(), confusion, per_class, accuracy, macro_f1, images: n, predictions }
}

impl Evaluation {
    /// Correct predictions (the confusion matrix's diagonal).
    pub fn correct(&self) -> u64 {
        (0..self.confusion.len()).map(|c| self.confusion[c].get(c).copied().unwrap_or(0)).sum()
    }

    /// 95 % Wilson interval of the accuracy.
    pub fn accuracy_interval(&self) -> (f64, f64) {
        wilson_interval(self.correct(), self.images as u64, Z95)
    }

    /// `accuracy 0.481 (95 % CI 0.414-0.549, 101/210)`.
    pub fn accuracy_line(&self) -> String {
        let (lo, hi) = self.accuracy_interval();
        format!("accuracy {:.3} (95 % CI {lo:.3}-{hi:.3}, Wilson, {}/{} correct)", self.accuracy, self.correct(), self.images)
    }

    /// The per-class table as aligned text lines (stage summaries, terminals).
    pub fn table_lines(&self) -> Vec<String> {
        let w = self.classes.iter().map(|c| c.len()).max().unwrap_or(5).max(9);
        let mut out = vec![format!("{:<w$} {:>9} {:>9} {:>9} {:>8}", "class", "precision", "recall", "f1", "support")];
        for c in &self.per_class {
            out.push(format!("{:<w$} {:>9.3} {:>9.3} {:>9.3} {:>8}", c.class, c.precision, c.recall, c.f1, c.support));
        }
        out.push(format!("{:<w$} {:>9} {:>9} {:>9.3} {:>8}", "macro-F1", "", "", self.macro_f1, self.images));
        out.push(format!("{:<w$} {:>9} {:>9} {:>9.3} {:>8}", "accuracy", "", "", self.accuracy, self.images));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(k: usize) -> Vec<String> {
        crate::CLASSES.iter().take(k).map(|s| s.to_string()).collect()
    }

    #[test]
    fn precision_is_over_predicted_rows_recall_over_true_columns() {
        // truth:     0 0 0 1 1 2
        // predicted: 0 0 1 1 1 1
        let m = confusion_matrix(&[0, 0, 1, 1, 1, 1], &[0, 0, 0, 1, 1, 2], 3);
        assert_eq!(m, vec![vec![2, 0, 0], vec![1, 2, 1], vec![0, 0, 0]]);
        let (pc, acc, macro_f1) = metrics_from_confusion(&classes(3), &m);
        assert!((acc - 4.0 / 6.0).abs() < 1e-12);
        // class 0: predicted twice, both right -> precision 1; 3 true, 2 found -> recall 2/3.
        assert!((pc[0].precision - 1.0).abs() < 1e-12 && (pc[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!((pc[0].support, pc[0].predicted), (3, 2));
        // class 1: predicted 4 times, 2 right -> 0.5; 2 true, both found -> 1.
        assert!((pc[1].precision - 0.5).abs() < 1e-12 && (pc[1].recall - 1.0).abs() < 1e-12);
        // class 2: never predicted: precision, recall, F1 all 0.
        assert_eq!((pc[2].precision, pc[2].recall, pc[2].f1), (0.0, 0.0, 0.0));
        let f1_0 = 2.0 * (2.0 / 3.0) / (1.0 + 2.0 / 3.0);
        let f1_1 = 2.0 * 0.5 / 1.5;
        assert!((macro_f1 - (f1_0 + f1_1) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn top2_and_evaluation() {
        let cls = classes(3);
        let probs = [0.1, 0.7, 0.2, 0.5, 0.25, 0.25];
        let ev = evaluate_predictions(&cls, &probs, &[1, 2], &["a.jpg".into(), "b.jpg".into()], 2);
        assert_eq!(ev.accuracy, 0.5);
        assert_eq!(ev.predictions[0].top, vec![("disgust".to_string(), 0.7), ("fear".to_string(), 0.2)]);
        // tie between 1 and 2: the lower index first.
        assert_eq!(ev.predictions[1].top[1].0, "disgust");
        assert_eq!(ev.predictions[0].line(), "a.jpg: disgust 0.70, fear 0.20");
        assert_eq!(ev.table_lines().len(), 3 + 3);
        assert_eq!(ev.correct(), 1);
    }

    #[test]
    fn wilson_interval_matches_known_values() {
        // Known values (e.g. statsmodels proportion_confint(method="wilson")).
        let (lo, hi) = wilson_interval(81, 263, Z95);
        assert!((lo - 0.2553).abs() < 1e-3 && (hi - 0.3662).abs() < 1e-3, "{lo} {hi}");
        // 23 of 70 (the study's 33 %): wide.
        let (lo, hi) = wilson_interval(23, 70, Z95);
        assert!((lo - 0.2300).abs() < 1e-3 && (hi - 0.4450).abs() < 1e-3, "{lo} {hi}");
        // Degenerate ends stay inside [0, 1] and are not zero-width.
        let (lo, hi) = wilson_interval(0, 10, Z95);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 1e-3, "{hi}");
        let (lo, hi) = wilson_interval(10, 10, Z95);
        assert!((lo - 0.7225).abs() < 1e-3 && (hi - 1.0).abs() < 1e-12, "{lo} {hi}");
        assert_eq!(wilson_interval(0, 0, Z95), (0.0, 1.0));
    }
}
