//! A model against data, next to the baseline: the success rate per previous error kind.

use std::collections::BTreeMap;

use retrywise::attempt::{AttemptContext, ErrorKind};
use retrywise::model::{LogisticModel, SuccessModel};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// The key of a row's previous error kind (`first` before the first attempt).
pub fn kind_key(k: Option<ErrorKind>) -> &'static str {
    k.map_or("first", ErrorKind::as_str)
}

/// The baseline predictor: the success rate observed after each previous error kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Success rate per kind key.
    pub rate: BTreeMap<String, f64>,
    /// The overall rate, for kinds never seen.
    pub overall: f64,
}

impl Baseline {
    /// Learns the rates from training rows.
    pub fn fit(contexts: &[AttemptContext], success: &[bool]) -> Self {
        let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (c, &s) in contexts.iter().zip(success) {
            let e = counts.entry(kind_key(c.error).to_owned()).or_default();
            e.0 += 1;
            e.1 += u64::from(s);
        }
        let n = success.len().max(1) as f64;
        let overall = success.iter().filter(|s| **s).count() as f64 / n;
        let rate = counts
            .into_iter()
            .map(|(k, (n, s))| (k, s as f64 / n as f64))
            .collect();
        Self { rate, overall }
    }
}

impl SuccessModel for Baseline {
    fn p_success(&self, ctx: &AttemptContext) -> f64 {
        self.rate
            .get(kind_key(ctx.error))
            .copied()
            .unwrap_or(self.overall)
    }
}

/// The headline numbers of one error kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindReport {
    /// The previous error kind (`first` for first attempts).
    pub kind: String,
    /// Rows.
    pub rows: u64,
    /// Observed success rate.
    pub success_rate: f64,
    /// The model's metrics on these rows.
    pub model: Metrics,
    /// The baseline's metrics on these rows.
    pub baseline: Metrics,
}

/// The headline numbers of one target (for the simulator's data, one scenario).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// The target.
    pub target: String,
    /// Rows.
    pub rows: u64,
    /// Observed success rate.
    pub success_rate: f64,
    /// The model's metrics on these rows.
    pub model: Metrics,
    /// The baseline's metrics on these rows.
    pub baseline: Metrics,
}

/// A model's evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The model on all rows.
    pub model: Metrics,
    /// The baseline on all rows.
    pub baseline: Metrics,
    /// Per previous error kind.
    pub by_error: Vec<KindReport>,
    /// Per target: aggregates hide regimes (one large, well-predicted target can outweigh
    /// a small one predicted no better than chance), so each is scored on its own.
    #[serde(default)]
    pub by_target: Vec<TargetReport>,
}

/// The rows grouped by `key`, in key order: each key, its row count, and the model's and
/// the baseline's metrics on its rows.
fn groups<'a>(
    contexts: &'a [AttemptContext],
    key: impl Fn(&'a AttemptContext) -> &'a str,
    p: &[f64],
    q: &[f64],
    success: &[bool],
) -> Vec<(String, u64, Metrics, Metrics)> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in contexts.iter().enumerate() {
        groups.entry(key(c)).or_default().push(i);
    }
    groups
        .into_iter()
        .map(|(k, idx)| {
            let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
            let y: Vec<bool> = idx.iter().map(|&i| success[i]).collect();
            (
                k.to_owned(),
                idx.len() as u64,
                Metrics::compute(&pick(p), &y),
                Metrics::compute(&pick(q), &y),
            )
        })
        .collect()
}

/// Scores `model` and `baseline` on rows. Predictions go through [`SuccessModel`], the
/// path every server and embedded policy uses.
pub fn evaluate(
    model: &LogisticModel,
    baseline: &Baseline,
    contexts: &[AttemptContext],
    success: &[bool],
) -> Evaluation {
    let p: Vec<f64> = contexts.iter().map(|c| model.p_success(c)).collect();
    let q: Vec<f64> = contexts.iter().map(|c| baseline.p_success(c)).collect();
    let by_error = groups(contexts, |c| kind_key(c.error), &p, &q, success)
        .into_iter()
        .map(|(kind, rows, model, baseline)| KindReport {
            kind,
            rows,
            success_rate: model.success_rate,
            model,
            baseline,
        })
        .collect();
    let by_target = groups(contexts, |c| &c.target, &p, &q, success)
        .into_iter()
        .map(|(target, rows, model, baseline)| TargetReport {
            target,
            rows,
            success_rate: model.success_rate,
            model,
            baseline,
        })
        .collect();
    Evaluation {
        model: Metrics::compute(&p, success),
        baseline: Metrics::compute(&q, success),
        by_error,
        by_target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One large, well-predicted target and a small one the model cannot tell apart: the
    /// aggregate looks good, the small target's own AUC shows chance.
    #[test]
    fn each_target_is_scored_on_its_own() {
        let model =
            LogisticModel::from_weights(0.0, |f| if f == "failure_rate" { -8.0 } else { 0.0 });
        let mut contexts = Vec::new();
        let mut success = Vec::new();
        let mut x: u64 = 7;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        for i in 0..4_000 {
            let big = i % 10 != 0;
            let mut c = AttemptContext::first(if big { "big" } else { "small" });
            let rate = next();
            c.failure_rate = Some(rate);
            // The big target succeeds when its failure rate is low; the small one at random.
            success.push(if big { rate < 0.5 } else { next() < 0.5 });
            contexts.push(c);
        }
        let baseline = Baseline::fit(&contexts, &success);
        let e = evaluate(&model, &baseline, &contexts, &success);
        assert!(e.model.auc.unwrap() > 0.85, "{:?}", e.model.auc);
        let by: BTreeMap<&str, &TargetReport> =
            e.by_target.iter().map(|t| (t.target.as_str(), t)).collect();
        assert_eq!(by["big"].rows + by["small"].rows, 4_000);
        assert!(by["big"].model.auc.unwrap() > 0.95);
        assert!((0.4..0.6).contains(&by["small"].model.auc.unwrap()));
    }
}
