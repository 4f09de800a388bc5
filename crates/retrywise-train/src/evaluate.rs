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

    /// Checks that every rate is a probability (a baseline read from a file).
    ///
    /// # Errors
    /// The first rate that is not within `[0, 1]`, named.
    pub fn check(&self) -> Result<(), String> {
        let bad = |p: f64| !(0.0..=1.0).contains(&p);
        if bad(self.overall) {
            return Err(format!("`overall` is {}, not within [0, 1]", self.overall));
        }
        match self.rate.iter().find(|(_, p)| bad(**p)) {
            Some((k, p)) => Err(format!("the rate of `{k}` is {p}, not within [0, 1]")),
            None => Ok(()),
        }
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

/// What calibration a model must have to decide by thresholds: p must mean what it says
/// on every row and in each target's regime ([`Evaluation::check_calibration`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrationLimits {
    /// The largest expected calibration error on all rows (default 0.03).
    pub max_ece_overall: f64,
    /// The largest expected calibration error on each target's rows (default 0.05).
    pub max_ece: f64,
    /// The fewest rows a target's check is judged on (default [`MIN_JUDGED_ROWS`]): below
    /// it the ECE of even a perfectly calibrated model is mostly noise, and the check is
    /// reported as not judged. The every-row check, to its tighter limit, is judged from
    /// `min_rows × (max_ece / max_ece_overall)²` rows.
    pub min_rows: u64,
}

/// Rows below which a target's calibration check is not judged: on fewer, a perfectly calibrated
/// model's ECE (15 bins, predictions spread over `[0, 1]`) averages about 0.04 and
/// exceeds 0.05 one time in twenty at 1,000 rows; at 2,000 it averages 0.028 and stays
/// under 0.04.
pub const MIN_JUDGED_ROWS: u64 = 2_000;

impl Default for CalibrationLimits {
    fn default() -> Self {
        Self {
            max_ece_overall: 0.03,
            max_ece: 0.05,
            min_rows: MIN_JUDGED_ROWS,
        }
    }
}

/// One judged calibration check of [`Evaluation::check_calibration`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationCheck {
    /// The target judged, or `None` for every row.
    pub target: Option<String>,
    /// What is asked.
    pub goal: String,
    /// What was measured.
    pub measured: String,
    /// Whether it was judged: its rows were enough ([`CalibrationLimits::min_rows`] for a
    /// target; scaled to the tighter limit for every row).
    #[serde(default = "judged")]
    pub judged: bool,
    /// Whether it was judged and holds.
    pub met: bool,
}

fn judged() -> bool {
    true
}

impl Evaluation {
    /// Judges the calibration a decider that compares p with thresholds needs: the ECE on
    /// every row within `limits.max_ece_overall`, and on each target's rows within
    /// `limits.max_ece` with an AUC above the per-error baseline's where both rank (the
    /// rows hold successes and failures). Aggregates hide regimes — one large target
    /// predicted well can outweigh a small one predicted no better than chance — so each
    /// target is judged on its own. The first check is the overall one, then the targets in
    /// order.
    pub fn check_calibration(&self, limits: &CalibrationLimits) -> Vec<CalibrationCheck> {
        // What was measured: the model beside the baseline on the same rows.
        let measured = |m: &Metrics, b: &Metrics| {
            let auc = |m: &Metrics| m.auc.map_or_else(|| "-".to_owned(), |a| format!("{a:.3}"));
            format!(
                "ECE {:.3} (baseline {:.3}), AUC {} (baseline {}), {} rows, {:.1} % success",
                m.ece,
                b.ece,
                auc(m),
                auc(b),
                m.rows,
                m.success_rate * 100.0
            )
        };
        let judged = |m: &Metrics| m.rows >= limits.min_rows;
        // A calibrated model's ECE falls as 1/sqrt(rows): the tighter overall limit is
        // judged on as many more rows as keep it as far above that noise as the targets'
        // limit is at `min_rows` (at the defaults 5,556 rows: on 2,000, a perfectly
        // calibrated model's ECE exceeds 0.03 about one time in four).
        let overall_rows =
            if limits.max_ece_overall > 0.0 && limits.max_ece_overall < limits.max_ece {
                let scale = (limits.max_ece / limits.max_ece_overall).powi(2);
                (limits.min_rows as f64 * scale).ceil() as u64
            } else {
                limits.min_rows
            };
        let judged_overall = self.model.rows >= overall_rows;
        let mut out = vec![CalibrationCheck {
            target: None,
            goal: format!(
                "ECE <= {} on every row (judged on {overall_rows} rows or more)",
                limits.max_ece_overall
            ),
            measured: measured(&self.model, &self.baseline),
            judged: judged_overall,
            met: judged_overall && self.model.ece <= limits.max_ece_overall,
        }];
        out.extend(self.by_target.iter().map(|t| {
            let ranks = match (t.model.auc, t.baseline.auc) {
                // (A perfect ranking ties a perfect baseline, and cannot do better.)
                (Some(m), Some(b)) => m > b || m >= 1.0,
                // One class only: nothing to rank, only the level to judge.
                _ => true,
            };
            CalibrationCheck {
                target: Some(t.target.clone()),
                goal: format!(
                    "ECE <= {}, AUC above the per-error baseline's where there is anything to rank",
                    limits.max_ece
                ),
                measured: measured(&t.model, &t.baseline),
                judged: judged(&t.model),
                met: judged(&t.model) && t.model.ece <= limits.max_ece && ranks,
            }
        }));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_report(name: &str, model: &[f64], baseline: &[f64], y: &[bool]) -> TargetReport {
        TargetReport {
            target: name.to_owned(),
            rows: y.len() as u64,
            success_rate: y.iter().filter(|s| **s).count() as f64 / y.len() as f64,
            model: Metrics::compute(model, y),
            baseline: Metrics::compute(baseline, y),
        }
    }

    #[test]
    fn calibration_is_judged_per_target_beside_the_aggregate() {
        // outage: the model ranks every row right at the right rates; the baseline says
        // the mean. Ten rows at p = 0.9 (nine succeed), ten at 0.1 (one succeeds).
        let y: Vec<bool> = (0..20).map(|i| i < 9 || i == 10).collect();
        let sharp: Vec<f64> = (0..20).map(|i| if i < 10 { 0.9 } else { 0.1 }).collect();
        let flat = vec![0.5; 20];
        let outage = target_report("outage", &sharp, &flat, &y);
        // permanent: calibrated on average but ranking worse than the baseline.
        let permanent = target_report("permanent", &flat, &sharp, &y);
        // rate-limited: ranks perfectly, but says 0.95 and 0.85 where half succeed (ECE
        // 0.45).
        let half: Vec<bool> = (0..20).map(|i| i % 2 == 0).collect();
        let overconfident: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { 0.95 } else { 0.85 })
            .collect();
        let rate_limited = target_report("rate-limited", &overconfident, &flat, &half);
        // stragglers: every row succeeds, so there is nothing to rank; p = 0.98 is within
        // 0.05.
        let stragglers = target_report("stragglers", &[0.98; 10], &[0.9; 10], &[true; 10]);
        let e = Evaluation {
            model: Metrics::compute(&sharp, &y),
            baseline: Metrics::compute(&flat, &y),
            by_error: vec![],
            by_target: vec![outage, permanent, rate_limited, stragglers],
        };
        // (Twenty rows a target: judged here from one row on.)
        let limits = CalibrationLimits {
            min_rows: 1,
            ..CalibrationLimits::default()
        };
        let t = e.check_calibration(&limits);
        let judged: Vec<(Option<&str>, bool)> =
            t.iter().map(|t| (t.target.as_deref(), t.met)).collect();
        assert_eq!(
            judged,
            [
                (None, true),
                (Some("outage"), true),
                (Some("permanent"), false),
                (Some("rate-limited"), false),
                (Some("stragglers"), true),
            ]
        );
        assert!(t[3].measured.starts_with("ECE 0.450"), "{}", t[3].measured);
        assert!(
            t[4].measured.contains("AUC - (baseline -)"),
            "{}",
            t[4].measured
        );
        // Looser limits let the overconfident target through; nothing forgives ranking
        // below the baseline.
        let loose = CalibrationLimits {
            max_ece: 0.5,
            ..limits
        };
        assert!(e.check_calibration(&loose)[3].met);
        assert!(!e.check_calibration(&loose)[2].met);
        // An aggregate beyond 0.03 fails the overall check alone.
        let mut worse = e.clone();
        worse.model = Metrics::compute(&[0.9; 20], &y);
        let w = worse.check_calibration(&limits);
        assert!(!w[0].met && w[1].met);
        // By default twenty rows are too few to judge: nothing is met, nothing judged.
        let d = e.check_calibration(&CalibrationLimits::default());
        assert!(d.iter().all(|c| !c.judged && !c.met), "{d:?}");
        // From enough rows a check is judged: a flat model at its target's level is
        // calibrated, but ranks no better than the baseline. The overall limit, tighter,
        // is judged on more rows (ECE's noise falls as 1/sqrt(rows)): 5,556 at the
        // defaults.
        let flat_on = |n: usize| {
            let y: Vec<bool> = (0..n).map(|i| i % 10 < 7).collect();
            let flat = target_report("flat", &vec![0.7; n], &vec![0.7; n], &y);
            Evaluation {
                model: flat.model.clone(),
                baseline: flat.baseline.clone(),
                by_error: vec![],
                by_target: vec![flat],
            }
        };
        let c = flat_on(3_000).check_calibration(&CalibrationLimits::default());
        assert!(!c[0].judged && c[1].judged, "{c:?}");
        assert!(c[0].goal.contains("judged on 5556 rows or more"), "{c:?}");
        let c = flat_on(6_000).check_calibration(&CalibrationLimits::default());
        assert!(c.iter().all(|c| c.judged), "{c:?}");
        assert!(c[0].met && !c[1].met, "{c:?}");
    }

    /// A model that ranks a target perfectly ties a baseline that does too: it cannot
    /// rank better, and is not failed for it.
    #[test]
    fn a_perfect_ranking_ties_a_perfect_baseline() {
        let y = [false, false, true, true];
        let t = target_report("t", &[0.0, 0.0, 1.0, 1.0], &[0.1, 0.2, 0.8, 0.9], &y);
        let e = Evaluation {
            model: t.model.clone(),
            baseline: t.baseline.clone(),
            by_error: vec![],
            by_target: vec![t],
        };
        let limits = CalibrationLimits {
            min_rows: 1,
            ..CalibrationLimits::default()
        };
        assert_eq!(e.by_target[0].baseline.auc, Some(1.0));
        assert!(e.check_calibration(&limits)[1].met);
    }

    /// One large, well-predicted target and a small one the model cannot tell apart: the
    /// aggregate looks good, the small target's own AUC shows chance.
    #[test]
    fn each_target_is_scored_on_its_own() {
        let model =
            LogisticModel::from_weights(0.0, |f| if f == "failure_rate" { -8.0 } else { 0.0 })
                .unwrap();
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
