//! How good a probability is: discrimination (AUC), proper scores (log-loss, Brier),
//! calibration (ECE over 15 bins, the calibration table), per error kind, and the same for
//! a baseline so a model's gain is visible.

use serde::{Deserialize, Serialize};

/// Bins of the expected calibration error and the calibration table.
pub const CALIBRATION_BINS: usize = 15;

/// Probabilities are clipped to `[EPS, 1 - EPS]` in the log-loss.
const EPS: f64 = 1e-15;

/// One bin of the calibration table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Lower edge of the predicted probability.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Rows whose prediction falls in the bin.
    pub count: u64,
    /// Mean predicted probability in the bin.
    pub mean_predicted: f64,
    /// Observed success rate in the bin.
    pub observed: f64,
}

/// The metrics of predictions against outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows scored.
    pub rows: u64,
    /// Observed success rate.
    pub success_rate: f64,
    /// Area under the ROC curve (ties count half); `None` with a single class or a NaN
    /// score.
    pub auc: Option<f64>,
    /// Mean negative log-likelihood (natural log).
    pub log_loss: f64,
    /// Mean squared error of the probability.
    pub brier: f64,
    /// Expected calibration error over 15 equal-width bins.
    pub ece: f64,
    /// The calibration table (bins without rows omitted).
    pub calibration: Vec<CalibrationBin>,
}

impl Metrics {
    /// Scores probabilities `p` of success against outcomes `y`.
    ///
    /// Both slices have the same length; an empty input scores as zero rows with NaN
    /// means (its ECE too: no row is no evidence of calibration).
    pub fn compute(p: &[f64], y: &[bool]) -> Self {
        let n = p.len().min(y.len());
        let (p, y) = (&p[..n], &y[..n]);
        let nf = n as f64;
        let mut log_loss = 0.0;
        let mut brier = 0.0;
        let mut pos = 0u64;
        let mut bins = vec![(0u64, 0.0f64, 0u64); CALIBRATION_BINS];
        for (&pi, &yi) in p.iter().zip(y) {
            let t = if yi { 1.0 } else { 0.0 };
            let c = pi.clamp(EPS, 1.0 - EPS);
            log_loss -= if yi { c.ln() } else { (1.0 - c).ln() };
            brier += (pi - t) * (pi - t);
            pos += u64::from(yi);
            let b = ((pi * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
            bins[b].0 += 1;
            bins[b].1 += pi;
            bins[b].2 += u64::from(yi);
        }
        let mut ece = if n == 0 { f64::NAN } else { 0.0 };
        let mut calibration = Vec::new();
        for (i, &(count, sum_p, hits)) in bins.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let mean_predicted = sum_p / count as f64;
            let observed = hits as f64 / count as f64;
            ece += count as f64 / nf * (mean_predicted - observed).abs();
            calibration.push(CalibrationBin {
                lo: i as f64 / CALIBRATION_BINS as f64,
                hi: (i + 1) as f64 / CALIBRATION_BINS as f64,
                count,
                mean_predicted,
                observed,
            });
        }
        Self {
            rows: n as u64,
            success_rate: pos as f64 / nf,
            auc: auc(p, y),
            log_loss: log_loss / nf,
            brier: brier / nf,
            ece,
            calibration,
        }
    }
}

/// The area under the ROC curve: the probability that a random success is scored above a
/// random failure, ties counting half (the Mann-Whitney statistic). `None` unless both
/// classes are present, and for a NaN score (it ranks with nothing).
pub fn auc(p: &[f64], y: &[bool]) -> Option<f64> {
    let n = p.len().min(y.len());
    if p[..n].iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_unstable_by(|&a, &b| p[a].total_cmp(&p[b]));
    let pos = y[..n].iter().filter(|v| **v).count() as f64;
    let neg = n as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    // Sum of the (average, for ties) ranks of the successes.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && p[idx[j + 1]] == p[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if y[k] {
                rank_sum += avg_rank;
            }
        }
        i = j + 1;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn perfect_random_and_inverted_rankings() {
        let y = [false, false, true, true];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &y), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &y), Some(0.0));
        assert_eq!(auc(&[0.5; 4], &y), Some(0.5));
        assert_eq!(auc(&[0.5, 0.6], &[true, true]), None);
        // A NaN score ranks with nothing (it sorted above every number: a confident 0 or 1).
        assert_eq!(auc(&[f64::NAN, 0.9], &[false, true]), None);
        assert_eq!(auc(&[f64::NAN, 0.9], &[true, false]), None);
    }

    /// No row is no evidence of calibration: the ECE of nothing is NaN, like the means
    /// (it was 0: a perfect calibration).
    #[test]
    fn nothing_scores_nan_not_perfect() {
        let m = Metrics::compute(&[], &[]);
        assert_eq!(m.rows, 0);
        assert!(m.ece.is_nan() && m.log_loss.is_nan() && m.success_rate.is_nan());
    }

    #[test]
    fn scores_of_a_known_case() {
        let m = Metrics::compute(&[0.8, 0.3], &[true, false]);
        assert!((m.log_loss - (-(0.8f64.ln()) - 0.7f64.ln()) / 2.0).abs() < 1e-12);
        assert!((m.brier - (0.04 + 0.09) / 2.0).abs() < 1e-12);
        // Two bins, each off by 0.2 and 0.3.
        assert!((m.ece - 0.25).abs() < 1e-12, "{}", m.ece);
        assert_eq!(m.calibration.len(), 2);
        assert_eq!(m.success_rate, 0.5);
    }

    #[test]
    fn a_calibrated_constant_has_no_calibration_error() {
        let y: Vec<bool> = (0..1000).map(|i| i % 4 == 0).collect();
        let m = Metrics::compute(&vec![0.25; 1000], &y);
        assert!(m.ece < 1e-12);
        assert_eq!(m.auc, Some(0.5));
    }

    proptest! {
        /// AUC equals the pairwise definition.
        #[test]
        fn auc_matches_the_pairwise_count(v in proptest::collection::vec((0u8..6, any::<bool>()), 2..60)) {
            let p: Vec<f64> = v.iter().map(|(s, _)| f64::from(*s) / 5.0).collect();
            let y: Vec<bool> = v.iter().map(|(_, b)| *b).collect();
            let mut wins = 0.0;
            let mut pairs = 0.0;
            for i in 0..p.len() {
                for j in 0..p.len() {
                    if y[i] && !y[j] {
                        pairs += 1.0;
                        wins += if p[i] > p[j] { 1.0 } else if p[i] == p[j] { 0.5 } else { 0.0 };
                    }
                }
            }
            let expected = if pairs == 0.0 { None } else { Some(wins / pairs) };
            match (auc(&p, &y), expected) {
                (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-12, "{} vs {}", a, b),
                (a, b) => prop_assert_eq!(a, b),
            }
        }

        /// Scores stay in range.
        #[test]
        fn scores_are_bounded(v in proptest::collection::vec((0.0f64..=1.0, any::<bool>()), 1..200)) {
            let p: Vec<f64> = v.iter().map(|(p, _)| *p).collect();
            let y: Vec<bool> = v.iter().map(|(_, b)| *b).collect();
            let m = Metrics::compute(&p, &y);
            prop_assert!((0.0..=1.0).contains(&m.brier));
            prop_assert!((0.0..=1.0).contains(&m.ece));
            prop_assert!(m.log_loss >= 0.0 && m.log_loss.is_finite());
            prop_assert_eq!(m.calibration.iter().map(|b| b.count).sum::<u64>(), p.len() as u64);
        }
    }
}
