//! The aggregation API's types: the methods, their options, and what a fit returns.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{CrowdError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Vote fractions as posteriors; hard label by plurality, ties broken by a seeded hash.
    MajorityVote,
    /// Dawid & Skene (1979): one free confusion matrix per worker.
    DawidSkene,
    /// One accuracy per worker, errors spread evenly.
    OneCoin,
    /// One confusion matrix shared by all workers.
    Pooled,
    /// Per-worker matrices shrunk toward the pooled matrix (Dirichlet prior per true class,
    /// MAP EM; centre and concentrations by empirical Bayes).
    Shrunk,
    /// Fit every method above and keep the one whose model best predicts answers it was
    /// not fitted on (leave-one-item-out predictive log-likelihood; see [`crate::select`]).
    Auto,
}

impl Method {
    /// The fitted models (what `Auto` chooses among).
    pub const ALL: [Method; 5] = [Method::MajorityVote, Method::DawidSkene, Method::OneCoin, Method::Pooled, Method::Shrunk];
    pub fn name(self) -> &'static str {
        match self {
            Method::MajorityVote => "majority-vote",
            Method::DawidSkene => "dawid-skene",
            Method::OneCoin => "one-coin",
            Method::Pooled => "pooled",
            Method::Shrunk => "shrunk",
            Method::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = CrowdError;
    fn from_str(s: &str) -> Result<Method> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "mv" | "majority-vote" | "majority" => Method::MajorityVote,
            "ds" | "dawid-skene" | "dawidskene" => Method::DawidSkene,
            "one-coin" | "onecoin" => Method::OneCoin,
            "pooled" => Method::Pooled,
            "shrunk" | "shrunk-ds" | "hierarchical" => Method::Shrunk,
            "auto" | "default" => Method::Auto,
            other => {
                return Err(CrowdError::Option {
                    option: "method".into(),
                    message: format!(
                        "unknown method \"{other}\" (expected one of: auto, majority-vote, dawid-skene, one-coin, pooled, shrunk)"
                    ),
                })
            }
        })
    }
}

/// How EM treats the class prior.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassPrior {
    /// Estimated by EM (with `EmOptions::prior_smoothing` pseudo-counts).
    Learned,
    /// Held at 1/k: right for a balanced design (the study: 100 images per class).
    Uniform,
    /// Held at these weights (normalised; one per class).
    Fixed(Vec<f64>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmOptions {
    pub max_iter: usize,
    /// Stop when the objective rose by less than `tol * |objective|` (never on a dip).
    pub tol: f64,
    pub class_prior: ClassPrior,
    /// Pseudo-count added to every confusion cell (keeps log-likelihood finite).
    pub smoothing: f64,
    /// Pseudo-count per class for a learned class prior.
    pub prior_smoothing: f64,
    /// `Shrunk`: weight of the pooled matrix, in answers per true class (the same for every
    /// class); `None` = estimated from the data, per true class (empirical Bayes: the
    /// Dirichlet concentration that best explains how much workers' expected counts for
    /// that class differ from the pooled matrix).
    pub shrink_strength: Option<f64>,
    /// Extra pseudo-count on the diagonal of the pooled matrix (answers per true class):
    /// a prior that workers are more often right than wrong, which keeps EM on sparse data
    /// from drifting to a matrix that trades accuracy against the class prior.
    pub diag_prior: f64,
    /// Seed of the tie-break between equally likely labels.
    pub seed: u64,
}

impl Default for EmOptions {
    fn default() -> Self {
        EmOptions {
            max_iter: 100,
            tol: 1e-7,
            class_prior: ClassPrior::Learned,
            smoothing: 0.01,
            prior_smoothing: 1.0,
            shrink_strength: None,
            diag_prior: 30.0,
            seed: 0,
        }
    }
}

/// What every method returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aggregation {
    pub method: Method,
    pub classes: Vec<String>,
    /// `n_items x k`, row-major; each row sums to 1.
    pub posteriors: Vec<f64>,
    pub labels: Vec<usize>,
    pub class_prior: Vec<f64>,
    /// `n_workers x k x k`, `[worker][answer][true]`; each column sums to 1.
    pub worker_matrices: Vec<f64>,
    /// The pooled matrix (`k x k`, `[answer][true]`): the answers of all workers together.
    pub pooled_matrix: Vec<f64>,
    /// Probability that the worker's answer is right: `sum_j prior_j * m[j][j]`.
    pub worker_quality: Vec<f64>,
    /// The MAP objective after each EM iteration (empty for majority vote).
    pub objective: Vec<f64>,
    pub converged: bool,
    /// `Shrunk`: the concentration used per true class (given or estimated).
    pub shrink_strength: Option<Vec<f64>>,
    /// `Shrunk`: the prior mean of the worker matrices (`k x k`, `[answer][true]`).
    #[serde(default)]
    pub shrink_center: Option<Vec<f64>>,
    /// `Auto`: which model was chosen, and the score of every candidate.
    #[serde(default)]
    pub selection: Option<Selection>,
}

/// How `Method::Auto` chose (see [`crate::select`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Selection {
    pub chosen: Method,
    /// The eligible candidate with the best held-out score; `chosen` differs from it when a
    /// model with fewer parameters is within one standard error of it. Absent in records
    /// written before the rule (then read as `chosen`'s).
    #[serde(default)]
    pub best: Option<Method>,
    #[serde(default)]
    pub best_class_prior: String,
    /// What the scores are and the rule that chose.
    pub criterion: String,
    /// Answers scored (all, or a hash-chosen subset of items on large data).
    pub scored_answers: usize,
    /// Items scored: the folds of the cross-validation, over which standard errors are taken.
    #[serde(default)]
    pub scored_items: usize,
    /// The chosen candidate first, then the other eligible ones best first, then the others.
    pub candidates: Vec<CandidateScore>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateScore {
    pub method: Method,
    /// The class prior it was fitted with: `learned`, `uniform` or `fixed`.
    pub class_prior: String,
    /// Sum over scored answers of ln P(answer | the item's other answers, parameters fitted
    /// without the item).
    pub heldout_loglik: f64,
    /// `heldout_loglik / scored_answers`.
    pub per_answer: f64,
    /// Free parameters (see [`crate::select`]): the rule prefers fewer. Absent (0) in
    /// records written before the rule.
    #[serde(default)]
    pub parameters: usize,
    /// `heldout_loglik` minus the best eligible candidate's (0 for the best, else negative).
    #[serde(default)]
    pub vs_best: f64,
    /// Standard error of that difference over the scored items (0 for the best).
    #[serde(default)]
    pub se_vs_best: f64,
    /// Why the candidate could not be chosen however well it scored (see
    /// [`crate::select::below_chance_class`]); `None`: eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

impl Selection {
    /// The chosen candidate's score minus the best other eligible candidate's, total nats over
    /// the scored answers (0 with one eligible candidate); negative when the one-standard-error
    /// rule kept a simpler model than the best-scoring one (then the runner-up is the best).
    pub fn margin(&self) -> f64 {
        let Some(chosen) = self.candidates.first() else { return 0.0 };
        match self.candidates.get(1) {
            Some(b) if b.rejected.is_none() => chosen.heldout_loglik - b.heldout_loglik,
            _ => 0.0,
        }
    }
    /// The best other eligible candidate.
    pub fn runner_up(&self) -> Option<Method> {
        self.candidates.get(1).filter(|c| c.rejected.is_none()).map(|c| c.method)
    }
}

impl Aggregation {
    pub fn k(&self) -> usize {
        self.classes.len()
    }
    pub fn posterior(&self, i: usize) -> &[f64] {
        let k = self.k();
        &self.posteriors[i * k..(i + 1) * k]
    }
    pub fn worker_matrix(&self, w: usize) -> &[f64] {
        let k = self.k();
        &self.worker_matrices[w * k * k..(w + 1) * k * k]
    }
    pub fn mean_max_posterior(&self) -> f64 {
        let n = self.labels.len();
        if n == 0 {
            return 0.0;
        }
        (0..n).map(|i| self.posterior(i).iter().cloned().fold(0.0, f64::max)).sum::<f64>() / n as f64
    }
}
