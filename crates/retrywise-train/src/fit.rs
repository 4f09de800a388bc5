//! The fit: the encoder's features, standardized, into linfa-logistic with L2
//! regularization chosen on the rows [`fit`] is given to choose on ([`crate::train`] gives
//! it a share of the training rows held out, so its validation rows only judge).
//!
//! linfa-logistic minimizes `Σᵢ log-loss + α/2 |w|²` — a *sum* over rows, where
//! scikit-learn minimizes the mean. Its default gradient tolerance (1e-4) is absolute, so
//! on a million rows it asks for a gradient a million times flatter than scikit-learn's
//! `tol = 1e-4` does and runs to its iteration limit. We scale the tolerance with the
//! number of rows (the same stopping rule as scikit-learn), standardize the features (a
//! well-conditioned problem needs fewer L-BFGS steps), store the matrix column-major (so
//! `Xᵀr` in the gradient reads contiguous memory), and warm-start each α of the search
//! from the previous solution. See `benches/train/` for the measured effect.

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2, Axis, ShapeBuilder};
use retrywise::attempt::AttemptContext;
use retrywise::features::{self, N_FEATURES};
use retrywise::model::{LogisticModel, Scaler};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// How to fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitOptions {
    /// Candidate L2 penalties (`alpha` = scikit-learn's `1/C`), tried in order.
    pub alphas: Vec<f64>,
    /// Stop when the gradient of the *mean* loss is below this (scikit-learn's `tol`).
    pub tolerance: f64,
    /// L-BFGS iterations per fit at most (scikit-learn's `max_iter`).
    pub max_iterations: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            alphas: vec![1e-2, 1.0, 1e2, 1e4],
            tolerance: 1e-4,
            max_iterations: 100,
        }
    }
}

/// A fitted model on standardized features, success as the positive class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fitted {
    /// The standardization.
    pub scaler: Scaler,
    /// One weight per standardized feature.
    pub weights: Vec<f64>,
    /// The intercept.
    pub intercept: f64,
    /// The penalty chosen.
    pub alpha: f64,
}

impl Fitted {
    /// The model, as every server and policy evaluates it.
    ///
    /// # Errors
    /// A [`retrywise::model::ModelError`] if a number is not finite.
    pub fn model(&self) -> Result<LogisticModel, retrywise::model::ModelError> {
        LogisticModel::from_parts(&self.scaler, &self.weights, self.intercept)
    }
}

/// One candidate penalty and how it did on the rows it was chosen on ([`fit`]'s
/// validation rows: `train` chooses on a share of its training rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlphaTrial {
    /// The penalty.
    pub alpha: f64,
    /// Log-loss on the rows the penalty was chosen on.
    pub validation_log_loss: f64,
}

/// The feature matrix of `contexts`, column-major (one row per context).
pub fn matrix(contexts: &[AttemptContext]) -> Array2<f64> {
    let n = contexts.len();
    let mut x = Array2::<f64>::zeros((n, N_FEATURES).f());
    let mut row = [0.0; N_FEATURES];
    for (i, ctx) in contexts.iter().enumerate() {
        features::encode_into(ctx, &mut row);
        for (j, v) in row.iter().enumerate() {
            x[[i, j]] = *v;
        }
    }
    x
}

/// The mean and standard deviation of each column (a constant column gets scale 1).
pub fn scaler(x: &Array2<f64>) -> Scaler {
    let n = x.nrows().max(1) as f64;
    let mut mean = Vec::with_capacity(x.ncols());
    let mut scale = Vec::with_capacity(x.ncols());
    for c in x.columns() {
        let m = c.sum() / n;
        let var = c.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n;
        let s = var.sqrt();
        mean.push(m);
        scale.push(if s > 1e-12 && s.is_finite() { s } else { 1.0 });
    }
    Scaler { mean, scale }
}

/// `x` standardized with `s`, in `F` precision, column-major.
pub fn standardized<F: Real>(x: &Array2<f64>, s: &Scaler) -> Array2<F> {
    let mut out = Array2::<F>::zeros((x.nrows(), x.ncols()).f());
    for (j, (c, mut o)) in x.columns().into_iter().zip(out.columns_mut()).enumerate() {
        let (m, sd) = (s.mean[j], s.scale[j]);
        o.zip_mut_with(&c, |o, v| *o = F::cast((v - m) / sd));
    }
    out
}

/// Standardizes `x` in place with `s`.
pub fn standardize(x: &mut Array2<f64>, s: &Scaler) {
    for (j, mut c) in x.columns_mut().into_iter().enumerate() {
        let (m, sd) = (s.mean[j], s.scale[j]);
        c.mapv_inplace(|v| (v - m) / sd);
    }
}

fn log_loss(x: &Array2<f64>, y: &[bool], w: &Array1<f64>, b: f64) -> f64 {
    let z = x.dot(w);
    let n = y.len().max(1) as f64;
    z.iter()
        .zip(y)
        .map(|(&z, &y)| {
            // -log σ(±z), computed stably.
            let z = z + b;
            let m = if y { -z } else { z };
            if m > 0.0 {
                m + (-m).exp().ln_1p()
            } else {
                m.exp().ln_1p()
            }
        })
        .sum::<f64>()
        / n
}

/// A floating-point type linfa-logistic fits in: `f32` (what [`fit`] uses: half the
/// memory traffic per L-BFGS step, and the same model to the fourth decimal of AUC) or
/// `f64`.
pub trait Real: linfa::Float {
    /// One linfa-logistic fit from `init` (in linfa's own orientation): the weights, the
    /// intercept, and whether linfa took `true` (success) as its positive class.
    #[doc(hidden)]
    fn fit_linfa(
        x: &Array2<Self>,
        y: &Array1<bool>,
        alpha: f64,
        gradient_tolerance: f64,
        max_iterations: u64,
        init: Option<Array1<Self>>,
    ) -> Result<(Array1<f64>, f64, bool), TrainError>;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            fn fit_linfa(
                x: &Array2<Self>,
                y: &Array1<bool>,
                alpha: f64,
                gradient_tolerance: f64,
                max_iterations: u64,
                init: Option<Array1<Self>>,
            ) -> Result<(Array1<f64>, f64, bool), TrainError> {
                let mut params = LogisticRegression::<$t>::default()
                    .alpha(alpha as $t)
                    .gradient_tolerance(gradient_tolerance as $t)
                    .max_iterations(max_iterations);
                if let Some(init) = init {
                    params = params.initial_params(init);
                }
                let ds = DatasetView::new(x.view(), y.view());
                let fitted = params.fit(&ds).map_err(|source| TrainError::Fit {
                    what: format!(
                        "logistic regression with L2 penalty α = {alpha} on {} rows of {} features",
                        x.nrows(),
                        x.ncols()
                    ),
                    source: Box::new(source),
                })?;
                Ok((
                    fitted.params().mapv(f64::from),
                    f64::from(fitted.intercept()),
                    fitted.labels().pos.class,
                ))
            }
        }
    };
}
real!(f32);
real!(f64);

/// Fits linfa-logistic with one penalty and an absolute gradient tolerance (on the
/// summed loss), optionally warm-started from `start` (weights and intercept for success);
/// returns weights and intercept for success whichever class linfa took as positive.
///
/// # Errors
/// [`TrainError::Fit`] if linfa refuses the data or the solver fails.
pub fn fit_penalty<F: Real>(
    x: &Array2<F>,
    y: &Array1<bool>,
    alpha: f64,
    gradient_tolerance: f64,
    max_iterations: u64,
    start: Option<&(Array1<f64>, f64)>,
) -> Result<(Array1<f64>, f64), TrainError> {
    let n = x.nrows() as f64;
    // linfa's positive class follows class frequency (on a tie, the class seen first):
    // a warm start must be expressed for it.
    let successes = y.iter().filter(|v| **v).count() as f64;
    let success_is_pos =
        successes > n - successes || (successes == n - successes && y.first() == Some(&true));
    let init = start.map(|(w, b)| {
        let sign = if success_is_pos { 1.0 } else { -1.0 };
        let d = x.ncols();
        let mut init = Array1::<F>::zeros(d + 1);
        for j in 0..d.min(w.len()) {
            init[j] = F::cast(sign * w[j]);
        }
        init[d] = F::cast(sign * b);
        init
    });
    let (w, b, pos_is_success) =
        F::fit_linfa(x, y, alpha, gradient_tolerance, max_iterations, init)?;
    // Pin "success": linfa reports the probability of `labels().pos`, whichever class it
    // took as positive.
    if pos_is_success {
        Ok((w, b))
    } else {
        Ok((-w, -b))
    }
}

/// Where the first fit starts: the intercept at the log-odds of the success rate (the
/// optimum with all weights zero), then — when there are enough rows to make it pay — a
/// loose fit on every 20th row, whose solution is a few L-BFGS steps from the full one.
/// Returns weights and intercept for success.
///
/// # Errors
/// [`TrainError::Fit`] if the solver fails on the subsample.
pub fn initial_guess<F: Real>(
    x: &Array2<F>,
    y: &Array1<bool>,
    alpha: f64,
    tolerance: f64,
    max_iterations: u64,
) -> Result<(Array1<f64>, f64), TrainError> {
    const STRIDE: usize = 20;
    const MIN_ROWS: usize = 100_000;
    let n = y.len().max(1) as f64;
    let rate = (y.iter().filter(|v| **v).count() as f64 / n).clamp(1e-6, 1.0 - 1e-6);
    let start = (Array1::zeros(x.ncols()), (rate / (1.0 - rate)).ln());
    if y.len() < MIN_ROWS {
        return Ok(start);
    }
    // A strided subsample: the rows are in time order, so every 20th row spans the period.
    let idx: Vec<usize> = (0..y.len()).step_by(STRIDE).collect();
    let xs = x.select(Axis(0), &idx);
    let ys = y.select(Axis(0), &idx);
    let sub_successes = ys.iter().filter(|v| **v).count();
    if sub_successes == 0 || sub_successes == ys.len() {
        return Ok(start);
    }
    let k = ys.len() as f64;
    // The same problem per row: the penalty shrinks with the rows it is weighed against.
    fit_penalty(
        &xs,
        &ys,
        alpha * k / n,
        tolerance * k,
        max_iterations,
        Some(&start),
    )
}

/// The largest L2 penalty a fit takes: far beyond it every weight is shrunk to zero, and
/// a penalty past `f32::MAX` is infinite to a single-precision fit.
pub const MAX_ALPHA: f64 = 1e12;

/// The smallest gradient tolerance per training row: scaled by one row, still a normal
/// 32-bit float (the f32 fit holds it as one).
pub const MIN_TOLERANCE: f64 = 1e-20;

/// The largest gradient tolerance per training row: scaled by a billion rows, still far
/// from a 32-bit float's infinity (and far above any useful one: the default is 1e-4).
pub const MAX_TOLERANCE: f64 = 1e6;

/// Checks the fit's options: at least one penalty, each a non-negative number, a tolerance
/// from [`MIN_TOLERANCE`] to [`MAX_TOLERANCE`], at least one iteration ([`fit`] does, and `train` before it reads anything).
///
/// # Errors
/// [`TrainError::InvalidOption`] naming the option.
pub fn check_options(opts: &FitOptions) -> Result<(), TrainError> {
    if opts.alphas.is_empty() || opts.alphas.iter().any(|a| !(0.0..=MAX_ALPHA).contains(a)) {
        return Err(TrainError::InvalidOption {
            option: "alphas",
            problem: format!(
                "alphas must be non-negative numbers, at most 1e12, got {:?}",
                opts.alphas
            ),
        });
    }
    if !(MIN_TOLERANCE..=MAX_TOLERANCE).contains(&opts.tolerance) {
        return Err(TrainError::InvalidOption {
            option: "tolerance",
            problem: format!(
                "the tolerance must be a number from {MIN_TOLERANCE:e} to {MAX_TOLERANCE:e} (it is scaled by the training rows and held as a 32-bit float, where a smaller one is zero and a larger one infinite), got {}",
                opts.tolerance
            ),
        });
    }
    if opts.max_iterations == 0 {
        return Err(TrainError::InvalidOption {
            option: "max_iterations",
            problem: "max_iterations must be at least 1, got 0".into(),
        });
    }
    Ok(())
}

/// Checks the training rows and the options, and returns the training rows' scaler, their
/// standardized features in f32 (what the solver reads) and their labels.
fn prepare(
    train: &[AttemptContext],
    y_train: &[bool],
    opts: &FitOptions,
) -> Result<(Scaler, Array2<f32>, Array1<bool>), TrainError> {
    let successes = y_train.iter().filter(|v| **v).count();
    if successes == 0 || successes == y_train.len() {
        return Err(TrainError::SingleClass {
            rows: y_train.len(),
            successes,
        });
    }
    check_options(opts)?;
    let x64 = matrix(train);
    let s = scaler(&x64);
    // Standardized features in f32 for the solver: each L-BFGS step streams the whole
    // matrix twice, so half the bytes is nearly half the time.
    let x = standardized::<f32>(&x64, &s);
    drop(x64);
    Ok((s, x, Array1::from(y_train.to_vec())))
}

/// Standardizes on the training rows and fits the one penalty `alpha` (with `opts`'
/// tolerance and iterations; its penalties are not read), scoring it on nothing: the fit
/// of a penalty already chosen. Its weights are those [`fit`] finds with `alpha` as its
/// only penalty, bit for bit — validation rows only score a penalty, they never steer the
/// solver — without the validation rows' feature matrix (or, given none, a 64-bit copy of
/// the training rows' to score on) that `fit` builds for a score nobody reads.
///
/// # Errors
/// As [`fit`]'s.
pub fn fit_alpha(
    train: &[AttemptContext],
    y_train: &[bool],
    alpha: f64,
    opts: &FitOptions,
) -> Result<Fitted, TrainError> {
    let once = FitOptions {
        alphas: vec![alpha],
        ..opts.clone()
    };
    let (s, x, y) = prepare(train, y_train, &once)?;
    // The start `fit` takes for its first (here its only) penalty.
    let start = initial_guess(&x, &y, alpha, once.tolerance, once.max_iterations)?;
    let (w, b) = fit_penalty(
        &x,
        &y,
        alpha,
        once.tolerance * x.nrows() as f64,
        once.max_iterations,
        Some(&start),
    )?;
    Ok(Fitted {
        scaler: s,
        weights: w.to_vec(),
        intercept: b,
        alpha,
    })
}

/// Standardizes on the training rows and fits every candidate penalty, keeping the one
/// with the lowest log-loss on `validation` (the rows to choose on). `on_trial` is told
/// each penalty tried.
///
/// # Errors
/// [`TrainError::SingleClass`] if the training rows are all successes or all failures;
/// [`TrainError::Fit`] if the solver fails.
pub fn fit(
    train: &[AttemptContext],
    y_train: &[bool],
    validation: &[AttemptContext],
    y_validation: &[bool],
    opts: &FitOptions,
    mut on_trial: impl FnMut(&AlphaTrial),
) -> Result<(Fitted, Vec<AlphaTrial>), TrainError> {
    let (s, x, y) = prepare(train, y_train, opts)?;
    let mut xv = matrix(validation);
    standardize(&mut xv, &s);

    let mut trials = Vec::new();
    let mut best: Option<(f64, Array1<f64>, f64, f64)> = None;
    let mut start = Some(initial_guess(
        &x,
        &y,
        opts.alphas[0],
        opts.tolerance,
        opts.max_iterations,
    )?);
    for &alpha in &opts.alphas {
        let (w, b) = fit_penalty(
            &x,
            &y,
            alpha,
            opts.tolerance * x.nrows() as f64,
            opts.max_iterations,
            start.as_ref(),
        )?;
        // Without validation rows the training loss decides (and the first penalty wins ties).
        let loss = if y_validation.is_empty() {
            log_loss(&x.mapv(f64::from), y_train, &w, b)
        } else {
            log_loss(&xv, y_validation, &w, b)
        };
        let trial = AlphaTrial {
            alpha,
            validation_log_loss: loss,
        };
        on_trial(&trial);
        trials.push(trial);
        if best.as_ref().is_none_or(|(l, ..)| loss < *l) {
            best = Some((loss, w.clone(), b, alpha));
        }
        start = Some((w, b));
    }
    // (`check_options` refuses an empty list of penalties: there is always a best.)
    let (_, w, b, alpha) = best.ok_or_else(|| TrainError::InvalidOption {
        option: "alphas",
        problem: "no penalty to try".into(),
    })?;
    Ok((
        Fitted {
            scaler: s,
            weights: w.to_vec(),
            intercept: b,
            alpha,
        },
        trials,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use retrywise::attempt::Outcome;

    fn rows(n: usize, seed: u64) -> (Vec<AttemptContext>, Vec<bool>) {
        let recs = crate::synthetic::records(n, seed);
        (
            recs.iter().map(|r| r.context.clone()).collect(),
            recs.iter().map(|r| r.outcome == Outcome::Success).collect(),
        )
    }

    /// A warm start is handed to linfa in its own orientation, whichever class it takes
    /// as positive (the more frequent): started at the optimum for success, one L-BFGS
    /// step stays there, where a start with the sign the wrong way round is far off (the
    /// full fits from the other tests converge from any start, and would not tell).
    #[test]
    fn a_warm_start_keeps_its_meaning_when_success_is_rare_or_common() {
        let n = 4_000;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut unit = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut x = Array2::<f64>::zeros((n, 2).f());
        let mut noise = vec![0.0; n];
        for i in 0..n {
            x[[i, 0]] = unit() * 2.0 - 1.0;
            x[[i, 1]] = unit() * 2.0 - 1.0;
            noise[i] = unit();
        }
        for rate in [0.05f64, 0.95] {
            // p(success) = σ(3·x0 − x1 + b), b putting the rate about where it is asked.
            let b = (rate / (1.0 - rate)).ln();
            let y: Vec<bool> = (0..n)
                .map(|i| {
                    let z = 3.0 * x[[i, 0]] - x[[i, 1]] + b;
                    noise[i] < 1.0 / (1.0 + (-z).exp())
                })
                .collect();
            let successes = y.iter().filter(|s| **s).count() as f64 / n as f64;
            assert!((successes < 0.2) == (rate < 0.5), "{successes}");
            let ya = Array1::from(y.clone());
            let best = fit_penalty(&x, &ya, 1.0, 1e-6, 500, None).unwrap();
            let loss = |(w, b): &(Array1<f64>, f64)| log_loss(&x, &y, w, *b);
            let kept = fit_penalty(&x, &ya, 1.0, 1e-6, 1, Some(&best)).unwrap();
            assert!(
                loss(&kept) < loss(&best) + 1e-6,
                "rate {rate}: {} from the optimum against {}",
                loss(&kept),
                loss(&best)
            );
            let flipped = (-best.0.clone(), -best.1);
            let wrong = fit_penalty(&x, &ya, 1.0, 1e-6, 1, Some(&flipped)).unwrap();
            assert!(
                loss(&wrong) > loss(&best) + 1e-3,
                "rate {rate}: the test tells a flipped start ({} against {})",
                loss(&wrong),
                loss(&best)
            );
        }
    }

    /// linfa-logistic's error is kept as the fit error's source (it used to be flattened
    /// into the message), so the binary's error chain shows why the fit failed.
    #[test]
    fn a_fit_failure_carries_linfa_s_error_as_its_source() {
        let mut x = Array2::<f64>::zeros((4, 2).f());
        x[[1, 0]] = f64::NAN;
        let y = Array1::from(vec![true, false, true, false]);
        let e = fit_penalty(&x, &y, 1.0, 1e-4, 10, None).unwrap_err();
        assert!(matches!(e, TrainError::Fit { .. }), "{e:?}");
        let source = std::error::Error::source(&e).expect("linfa's error as the source");
        assert!(
            source.to_string().contains("must be finite"),
            "{e} / {source}"
        );
        assert!(e.to_string().starts_with("fitting failed"), "{e}");
    }

    /// The refit of a chosen penalty scores it on nothing, and its weights are bit for bit
    /// those of a fit with that penalty alone, whichever rows that fit scores on: the
    /// validation rows it no longer builds a matrix of never steered the solver.
    #[test]
    fn the_refit_of_one_penalty_is_the_fit_of_it_alone_bit_for_bit() {
        let (train, y) = rows(3_000, 4);
        let (held, y_held) = rows(800, 5);
        let (other, y_other) = rows(500, 6);
        let opts = FitOptions::default();
        for alpha in [1e-2, 1e2] {
            let once = FitOptions {
                alphas: vec![alpha],
                ..opts.clone()
            };
            let bits = |f: &Fitted| {
                (
                    f.weights.iter().map(|w| w.to_bits()).collect::<Vec<_>>(),
                    f.intercept.to_bits(),
                    f.scaler.clone(),
                    f.alpha,
                )
            };
            let refit = bits(&fit_alpha(&train, &y, alpha, &opts).unwrap());
            for (v, yv) in [(&held[..], &y_held[..]), (&other, &y_other), (&[], &[])] {
                let (fitted, trials) = fit(&train, &y, v, yv, &once, |_| {}).unwrap();
                assert_eq!(trials.len(), 1);
                assert_eq!(
                    bits(&fitted),
                    refit,
                    "alpha {alpha}, {} rows to score",
                    v.len()
                );
            }
        }
    }
}
