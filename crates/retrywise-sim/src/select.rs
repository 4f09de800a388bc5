//! Choosing among models by the decisions they make, not by their likelihood.
//!
//! A trainer picks its regularization by held-out log-loss, which is dominated by the calm
//! rows where nothing is decided; the model it prefers need not be the one that retries
//! best. [`select`] runs the model-driven policy with each candidate on every scenario of
//! the training suite, on a seed that neither training nor the final evaluation uses, and
//! ranks them by the decider's own objective: success minus `attempt_cost` per attempt.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use retrywise::model::SuccessModel;
use serde::Serialize;

use crate::driver::RunOptions;
use crate::scenario::{HELD_OUT, Scenario};
use crate::score::Score;
use crate::{SimError, scoreboard};

/// One candidate's results on the selection seed.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// Where the model came from.
    pub model: String,
    /// Mean success rate over the scenarios.
    pub success_rate: f64,
    /// Mean attempts per request over the scenarios.
    pub attempts_per_request: f64,
    /// `success_rate − attempt_cost × attempts_per_request`.
    pub objective: f64,
    /// Per scenario.
    pub scores: Vec<(String, Score)>,
}

/// The scenarios of the training suite (every built-in one but [`HELD_OUT`]).
pub fn suite() -> Vec<Arc<Scenario>> {
    Scenario::builtin()
        .into_iter()
        .filter(|s| !HELD_OUT.contains(&s.name.as_str()))
        .map(Arc::new)
        .collect()
}

/// The candidates a `--model` path stands for: a file (a `model.json`) is one; a model
/// directory is each of its numbered versions; any other directory (a version's) is one.
///
/// # Errors
/// [`SimError::Train`] when a directory cannot be listed.
pub fn candidates(path: &Path) -> Result<Vec<PathBuf>, SimError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let versions = retrywise_train::store::versions(path)?;
    if versions.is_empty() {
        Ok(vec![path.to_path_buf()])
    } else {
        Ok(versions
            .into_iter()
            .map(|v| path.join(v.to_string()))
            .collect())
    }
}

/// Scores each `(name, model)` with the `adaptive` policy on `scenarios` at `seed`, best
/// (highest objective) first. `on_run` is told each finished run (candidate, scenario).
///
/// # Errors
/// [`SimError::Option`] without candidates or with a negative or non-finite cost;
/// simulation errors.
pub fn select(
    candidates: Vec<(String, Arc<dyn SuccessModel>)>,
    scenarios: &[Arc<Scenario>],
    seed: u64,
    attempt_cost: f64,
    mut on_run: impl FnMut(&str, &str),
) -> Result<Vec<Candidate>, SimError> {
    if candidates.is_empty() {
        return Err(SimError::Option {
            field: "model",
            problem: "no candidate to select from".into(),
        });
    }
    if !(attempt_cost.is_finite() && attempt_cost >= 0.0) {
        return Err(SimError::Option {
            field: "attempt_cost",
            problem: format!("must be a non-negative number, got {attempt_cost}"),
        });
    }
    let mut out = Vec::new();
    for (name, model) in candidates {
        let mut scores = Vec::new();
        for scenario in scenarios {
            let mut run = RunOptions::new(Arc::clone(scenario));
            run.seed = seed;
            run.model = Some(Arc::clone(&model));
            let (mut board, _) = scoreboard(&["adaptive".to_owned()], &run)?;
            if let Some(s) = board.results.pop() {
                scores.push((scenario.name.clone(), s));
            }
            on_run(&name, &scenario.name);
        }
        let n = scores.len().max(1) as f64;
        let success_rate = scores.iter().map(|(_, s)| s.success_rate).sum::<f64>() / n;
        let attempts_per_request = scores
            .iter()
            .map(|(_, s)| s.attempts_per_request)
            .sum::<f64>()
            / n;
        out.push(Candidate {
            model: name,
            success_rate,
            attempts_per_request,
            objective: success_rate - attempt_cost * attempts_per_request,
            scores,
        });
    }
    out.sort_by(|a, b| b.objective.total_cmp(&a.objective));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_that_decides_better_ranks_first() {
        // Transient 503s: a model that sees no point in retrying loses the calls that hit
        // one; a model that expects the retry to work saves them.
        let mut blips = Scenario::load("blips").unwrap();
        blips.duration_s = 10.0;
        let scenarios = vec![Arc::new(blips)];
        let hopeless: Arc<dyn SuccessModel> =
            Arc::new(|_: &retrywise::attempt::AttemptContext| 0.0);
        let hopeful: Arc<dyn SuccessModel> = Arc::new(|_: &retrywise::attempt::AttemptContext| 0.9);
        let mut runs = Vec::new();
        let ranked = select(
            vec![("hopeless".into(), hopeless), ("hopeful".into(), hopeful)],
            &scenarios,
            12,
            0.1,
            |model, scenario| runs.push(format!("{model}/{scenario}")),
        )
        .unwrap();
        assert_eq!(runs, ["hopeless/blips", "hopeful/blips"]);
        assert_eq!(ranked[0].model, "hopeful");
        assert!(
            ranked[0].success_rate > 0.99 && ranked[1].success_rate < 0.95,
            "{ranked:?}"
        );
        let c = &ranked[1];
        assert!((c.objective - (c.success_rate - 0.1 * c.attempts_per_request)).abs() < 1e-12);
        assert!(select(vec![], &scenarios, 12, 0.1, |_, _| {}).is_err());
        assert!(suite().iter().all(|s| !HELD_OUT.contains(&s.name.as_str())));
    }

    #[test]
    fn a_model_file_a_version_and_a_model_directory_are_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        for v in ["1", "2"] {
            std::fs::create_dir_all(model.join(v)).unwrap();
            std::fs::write(model.join(v).join("model.json"), "{}").unwrap();
        }
        let file = model.join("2").join("model.json");
        assert_eq!(candidates(&file).unwrap(), std::slice::from_ref(&file));
        assert_eq!(candidates(&model.join("1")).unwrap(), [model.join("1")]);
        assert_eq!(
            candidates(&model).unwrap(),
            [model.join("1"), model.join("2")]
        );
    }
}
