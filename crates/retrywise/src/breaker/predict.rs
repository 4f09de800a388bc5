//! The breaker's predictive trigger and open duration: what a success model says of a
//! fresh call to the target.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::attempt::AttemptContext;
use crate::error::ConfigError;
use crate::model::SuccessModel;

use super::config::CHECK;

/// Waits weighed for the open duration, log-spaced from the shortest to the longest.
const WAITS: usize = 16;

/// Halvings of the step between the last wait weighed that is not worth a probe and the
/// first that is: the open duration ends within 1/32 of a step (about 1 %) of where the
/// prediction crosses the threshold, not up to a whole step (38 %) after it.
const REFINE: usize = 5;

/// How a [`CircuitBreaker`](super::CircuitBreaker) consults a success model
/// ([`BreakerBuilder::predict`](super::BreakerBuilder::predict)).
///
/// Besides its rate triggers, the breaker then opens when the model predicts that a fresh
/// call to the target — a first attempt, given the window's failure rate and the time
/// since the last success — succeeds with a probability below `threshold` (asked after a
/// failure only: a success never makes a fresh call look worse, and the success path pays
/// nothing but one clock read). Whatever opened it, it stays open for the shortest wait
/// from `min_open` to `max_open` (16 log-spaced, the crossing refined by halving) after
/// which a probe is worth sending, instead of its configured open duration — predicted
/// to succeed at least as often as `threshold`, counted for itself and for the calls the
/// circuit would refuse in its shortest opening after it (a probe that finds the target
/// back lets them through: `p · (1 + λ·min_open) ≥ threshold`, `λ` the calls a second it
/// refused since it last opened, or on a first opening the calls of a time window over its
/// length); when no such wait is predicted, for its configured open
/// duration held within those bounds (the model would only be extrapolating); a failed
/// probe reopens it the same way. A model answering NaN is no evidence: no predictive
/// opening, and the configured open duration.
///
/// A probe after a wait is read two ways, and is worth sending as soon as either reading
/// says so: as a fresh call after that wait, and — when the caller recorded the failure
/// with the retry that would follow it ([`Permit::record_failure_before`]) — as that
/// retry after that wait: the failure's kind and the target's health as the caller's
/// retry decision sees them. The second is the reading the training data supports (first
/// attempts never wait, so what waiting does to a fresh call is the model's guess, and
/// one model's guess can hold the circuit long after the target is back); the first
/// probes sooner when the model thinks a fresh call may get through before the retry
/// would. A probe is one call: sending it early costs little, sending it late costs every
/// call refused meanwhile.
///
/// [`Permit::record_failure_before`]: super::Permit::record_failure_before
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use retrywise::attempt::AttemptContext;
/// use retrywise::breaker::{CallOutcome, CircuitBreaker, Prediction, SlidingWindow, State};
///
/// // Calls succeed as often as the window's calls did, and the target comes back 5 s
/// // after its last success.
/// let model = |c: &AttemptContext| {
///     let since = c.since_success.unwrap_or_default() + c.delay;
///     if since >= Duration::from_secs(5) { 0.9 } else { 1.0 - c.failure_rate.unwrap_or(0.0) }
/// };
/// let breaker = CircuitBreaker::builder("payments")
///     .window(SlidingWindow::Count(10))
///     .minimum_calls(4)
///     .failure_rate_threshold(0.9) // the rate alone would wait for 9 failures in 10
///     .predict(Prediction::new(Arc::new(model)).threshold(0.5))
///     .build()?;
/// for outcome in [CallOutcome::Success, CallOutcome::Failure, CallOutcome::Failure, CallOutcome::Failure] {
///     breaker.try_acquire().expect("closed").record(outcome, Duration::from_millis(3));
/// }
/// // 3 failures in 4: a fresh call is predicted to succeed 25 % of the time.
/// assert_eq!(breaker.state(), State::Open);
/// let refused = breaker.try_acquire().unwrap_err();
/// // Open until about 5 s after the last success (the first wait of the grid past it).
/// let left = refused.remaining.expect("open");
/// assert!(left >= Duration::from_secs(5) && left < Duration::from_secs(8), "{left:?}");
/// # Ok::<(), retrywise::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Prediction {
    pub(crate) model: Arc<dyn SuccessModel>,
    pub(crate) threshold: f64,
    pub(crate) min_open: Duration,
    pub(crate) max_open: Duration,
}

impl fmt::Debug for Prediction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prediction")
            .field("threshold", &self.threshold)
            .field("min_open", &self.min_open)
            .field("max_open", &self.max_open)
            .finish_non_exhaustive()
    }
}

impl Prediction {
    /// Consults `model`: opening below p = 0.1 (the model-driven decider's default cost
    /// of an attempt, against a success), open between 100 ms and 60 s.
    ///
    /// The shortest opening is short because probing early is cheap and probing late is
    /// not: a probe is one of the calls the circuit would otherwise refuse, sent for real
    /// — a target still down costs it one attempt per opening (a refused connection costs
    /// the target nothing, and the call's retry decision then sees the refusal itself
    /// instead of a health window the open circuit keeps stale) — while every call refused
    /// after the target is back is lost to the circuit. Probing every `δ` through an outage
    /// of length `T` at `λ` calls a second spends about `T/δ` attempts and loses about
    /// `λδ/2` calls after its end; at an attempt cost `c` the best `δ` is `√(2cT/λ)`: 60 to
    /// 140 ms for 100 calls a second and outages of 2 to 10 s, longer for less traffic
    /// ([`open_between`](Self::open_between)).
    pub fn new(model: Arc<dyn SuccessModel>) -> Self {
        Self {
            model,
            threshold: 0.1,
            min_open: Duration::from_millis(100),
            max_open: Duration::from_secs(60),
        }
    }

    /// Opens when a fresh call is predicted to succeed less often than `p` (in `(0, 1)`),
    /// and probes once one is predicted to succeed at least that often.
    pub fn threshold(mut self, p: f64) -> Self {
        self.threshold = p;
        self
    }

    /// Bounds the open duration the model chooses (`min ≤ max`, both positive).
    pub fn open_between(mut self, min: Duration, max: Duration) -> Self {
        self.min_open = min;
        self.max_open = max;
        self
    }

    /// The model consulted.
    pub fn model(&self) -> &Arc<dyn SuccessModel> {
        &self.model
    }

    /// Below this predicted p of a fresh call the circuit opens.
    pub fn p_threshold(&self) -> f64 {
        self.threshold
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        CHECK.in_range("predict.threshold", self.threshold, 1e-9, 1.0 - 1e-9)?;
        CHECK.positive("predict.min_open", self.min_open)?;
        CHECK.positive("predict.max_open", self.max_open)?;
        if self.max_open < self.min_open {
            return Err(CHECK.err(
                "predict.max_open",
                format!(
                    "{:?} is below the minimum open duration {:?}",
                    self.max_open, self.min_open
                ),
            ));
        }
        Ok(())
    }

    /// A fresh call to `target`, as the breaker knows the target.
    pub(crate) fn fresh(
        target: &Arc<str>,
        failure_rate: Option<f64>,
        since_success: Duration,
    ) -> AttemptContext {
        let mut ctx = AttemptContext::first(Arc::clone(target));
        ctx.failure_rate = failure_rate;
        ctx.failure_rate_recent = failure_rate;
        ctx.since_success = Some(since_success);
        ctx
    }

    /// The predicted probability that a fresh call succeeds now; `None` on NaN.
    pub(crate) fn p_fresh(&self, ctx: &AttemptContext) -> Option<f64> {
        let p = self.model.p_success(ctx);
        (!p.is_nan()).then(|| p.clamp(0.0, 1.0))
    }

    /// How long the circuit stays open: the shortest wait after which a probe is worth
    /// sending, as a fresh call (`ctx`) or as the retry after the failure that opened it
    /// (`retry`, when the caller gave it); when none is, the breaker's own open duration
    /// (`configured`) within the bounds — a model that sees no probe worth sending within
    /// `max_open` is extrapolating past what it saw end (a model trained on long outages
    /// would otherwise hold the circuit for `max_open` after every failed probe, and sit
    /// out the end of an outage longer than those it saw); `configured` as it is when the
    /// model answered NaN.
    ///
    /// A probe answers for more than itself: while the circuit is open, every call is
    /// refused, so a probe that finds the target back lets through the calls that would
    /// have been refused until the next one. It is worth sending once its predicted p,
    /// counted for itself and for the calls arriving in the shortest opening after it
    /// (`calls_per_s` × `min_open`: the calls the circuit refuses a second, as it last
    /// counted them), reaches the threshold: `p · (1 + λ·min_open) ≥ threshold`. Without
    /// traffic this is the threshold itself; under traffic the circuit probes at its
    /// shortest opening unless the model is sure the target is still down.
    pub(crate) fn open_for(
        &self,
        ctx: &AttemptContext,
        retry: Option<&AttemptContext>,
        configured: impl FnOnce() -> Duration,
        calls_per_s: f64,
    ) -> Duration {
        // At least 1 (NaN and negative rates count as none).
        let answers_for = 1.0 + calls_per_s.max(0.0) * self.min_open.as_secs_f64();
        match self.first_worth(ctx, retry, None, self.threshold / answers_for) {
            Recovery::After { wait, .. } => wait,
            Recovery::NotWithin => configured().clamp(self.min_open, self.max_open),
            Recovery::Unknown => configured(),
        }
    }

    /// The shortest wait between the open-duration bounds (and shorter than `within`,
    /// when given) after which the call in `ctx` is predicted to succeed at least as often
    /// as the threshold — what the breaker stays open for, and how long a caller told to
    /// wait before a first attempt waits. Of 16 log-spaced waits the first worth it is
    /// found, then the step before it is halved five times: the wait returned is worth it,
    /// and (for a prediction that grows with the wait) the one 1/32 of a step shorter is
    /// not.
    pub fn recovery(&self, ctx: &AttemptContext, within: Option<Duration>) -> Recovery {
        self.first_worth(ctx, None, within, self.threshold)
    }

    /// [`recovery`](Self::recovery) of a call read as `ctx` and (when given) as `retry`,
    /// against `threshold`: each wait is worth it when either reading predicts it is.
    fn first_worth(
        &self,
        ctx: &AttemptContext,
        retry: Option<&AttemptContext>,
        within: Option<Duration>,
        threshold: f64,
    ) -> Recovery {
        let (lo, hi) = (self.min_open.as_secs_f64(), self.max_open.as_secs_f64());
        // (At most `WAITS`: the edge takes the place of the grid point it stands for.)
        let mut waits = [Duration::ZERO; WAITS];
        let mut n = 0;
        for i in 0..WAITS {
            let x = lo * (hi / lo).powf(i as f64 / (WAITS - 1) as f64);
            // (A product rounded past what a `Duration` holds is the longest wait.)
            let w = Duration::try_from_secs_f64(x)
                .unwrap_or(self.max_open)
                .clamp(self.min_open, self.max_open);
            if let Some(l) = within
                && w >= l
            {
                // Cut by `within`: the last wait shorter than it is weighed too, so that a
                // crossing between the grid's last point and `within` is found.
                let edge = l
                    .saturating_sub(Duration::from_micros(1))
                    .clamp(self.min_open, self.max_open);
                if edge < l && (n == 0 || edge > waits[n - 1]) {
                    waits[n] = edge;
                    n += 1;
                }
                break;
            }
            waits[n] = w;
            n += 1;
        }
        let waits = &waits[..n];
        // One model for the grid and its refinement, even if it is swapped meanwhile.
        let pinned = self.model.pinned(ctx);
        let model: &dyn SuccessModel = pinned.as_deref().unwrap_or(self.model.as_ref());
        let mut p = [0.0; WAITS];
        if Self::p_by_delay(model, ctx, retry, waits, &mut p[..n]).is_none() {
            return Recovery::Unknown;
        }
        let Some(i) = p[..n].iter().position(|p| *p >= threshold) else {
            return Recovery::NotWithin;
        };
        // The crossing lies between the wait before (not worth it) and this one.
        let (mut below, mut wait, mut p_success) =
            (i.checked_sub(1).map(|j| waits[j]), waits[i], p[i]);
        if let Some(below) = &mut below {
            for _ in 0..REFINE {
                let mid = *below + (wait - *below) / 2;
                let mut q = [0.0];
                if Self::p_by_delay(model, ctx, retry, &[mid], &mut q).is_none() {
                    break;
                }
                if q[0] >= threshold {
                    (wait, p_success) = (mid, q[0]);
                } else {
                    *below = mid;
                }
            }
        }
        Recovery::After { wait, p_success }
    }

    /// The better of the two readings' predictions after each of `waits`, into `out`;
    /// `None` if the model answered NaN.
    fn p_by_delay(
        model: &dyn SuccessModel,
        ctx: &AttemptContext,
        retry: Option<&AttemptContext>,
        waits: &[Duration],
        out: &mut [f64],
    ) -> Option<()> {
        model.p_success_by_delay(ctx, waits, out);
        if let Some(retry) = retry {
            let mut q = [0.0; WAITS];
            let q = &mut q[..waits.len()];
            model.p_success_by_delay(retry, waits, q);
            for (o, q) in out.iter_mut().zip(q.iter()) {
                *o = if q.is_nan() || o.is_nan() {
                    f64::NAN
                } else {
                    o.max(*q)
                };
            }
        }
        (!out.iter().any(|x| x.is_nan())).then_some(())
    }
}

/// What a [`Prediction`] says of waiting before a fresh call ([`Prediction::recovery`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recovery {
    /// After this wait a fresh call is predicted to succeed `p_success` of the time, at
    /// least the threshold.
    After {
        /// The wait.
        wait: Duration,
        /// The predicted probability of success after it.
        p_success: f64,
    },
    /// No wait weighed makes it worth it.
    NotWithin,
    /// The model answered NaN: no evidence.
    Unknown,
}
