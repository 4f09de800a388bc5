//! The design sketch's rule-based adaptive retry.

use std::sync::Arc;
use std::time::Duration;

use crate::attempt::{AttemptContext, ErrorKind};
use crate::error::{Check, ConfigError};
use crate::model::{SuccessModel, sanitize_probability};

use super::{Decision, Explained, RetryDecider, StopReason};

const CHECK: Check = Check::new("rule_based_adaptive");

/// The design sketch's adaptive retry, made sound.
///
/// The wait before retry `n` (after `n` failures) is `base × 2^n`, then
/// - ×2 after a timeout, ×5 after a rate limit (429), ÷2 after a connect error;
/// - with a [`SuccessModel`]: stop when the predicted probability of success is below
///   0.1, halve the wait above 0.5, triple it below 0.2;
/// - at least the server's Retry-After, and never above the cap (30 s): a Retry-After
///   beyond the cap stops the call ([`StopReason::RetryAfterTooLong`]) instead of retrying
///   before the upstream asked.
///
/// The maximum number of attempts depends on the error kind ("the maximum number of
/// attempts depends on the context").
///
/// Unlike the design sketch, the probability is evaluated for the wait actually about to be
/// chosen (the context's `delay` is set to it), and Retry-After is honoured.
#[derive(Clone)]
pub struct RuleBasedAdaptive {
    base: Duration,
    cap: Duration,
    max_attempts: [u32; ErrorKind::ALL.len()],
    model: Option<Arc<dyn SuccessModel>>,
    stop_below: f64,
    deadline: Option<Duration>,
}

impl std::fmt::Debug for RuleBasedAdaptive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleBasedAdaptive")
            .field("base", &self.base)
            .field("cap", &self.cap)
            .field("max_attempts", &self.max_attempts)
            .field("model", &self.model.is_some())
            .field("stop_below", &self.stop_below)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Default for RuleBasedAdaptive {
    /// Base 100 ms, cap 30 s, 4 attempts for every kind, stop below p = 0.1, no model.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
            max_attempts: [4; ErrorKind::ALL.len()],
            model: None,
            stop_below: 0.1,
            deadline: None,
        }
    }
}

impl RuleBasedAdaptive {
    /// The design sketch's constants (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Consult `model` for the probability of success.
    pub fn with_model(mut self, model: Arc<dyn SuccessModel>) -> Self {
        self.model = Some(model);
        self
    }

    /// The maximum number of attempts after a failure of `kind`.
    ///
    /// # Errors
    /// `n` zero.
    pub fn max_attempts_for(mut self, kind: ErrorKind, n: u32) -> Result<Self, ConfigError> {
        CHECK.at_least_one("max_attempts", u64::from(n))?;
        if let Some(i) = ErrorKind::ALL.iter().position(|k| *k == kind) {
            self.max_attempts[i] = n;
        }
        Ok(self)
    }

    /// The base wait and the cap.
    ///
    /// # Errors
    /// `base` zero or above `cap`; `cap` beyond [`crate::MAX_CONFIG_DURATION`] (a wait no
    /// record could hold).
    pub fn delays(mut self, base: Duration, cap: Duration) -> Result<Self, ConfigError> {
        CHECK.positive("base", base)?;
        CHECK.bounded("cap", cap)?;
        if base > cap {
            return Err(CHECK.err("base", format!("{base:?} is above cap {cap:?}")));
        }
        self.base = base;
        self.cap = cap;
        Ok(self)
    }

    /// Stop when the predicted probability is below `p` (the design sketch: 0.1).
    ///
    /// # Errors
    /// `p` outside `[0, 1]`.
    pub fn stop_below(mut self, p: f64) -> Result<Self, ConfigError> {
        CHECK.in_range("stop_below", p, 0.0, 1.0)?;
        self.stop_below = p;
        Ok(self)
    }

    /// An overall deadline for the call.
    ///
    /// # Errors
    /// `d` zero.
    pub fn deadline(mut self, d: Duration) -> Result<Self, ConfigError> {
        CHECK.positive("deadline", d)?;
        self.deadline = Some(d);
        Ok(self)
    }

    fn limit(&self, kind: Option<ErrorKind>) -> u32 {
        let kind = kind.unwrap_or(ErrorKind::Other);
        ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(4, |i| self.max_attempts[i])
    }
}

impl RetryDecider for RuleBasedAdaptive {
    fn decide(&self, ctx: &AttemptContext) -> Decision {
        self.explain(ctx).decision
    }

    fn explain(&self, ctx: &AttemptContext) -> Explained {
        // p(success) after waiting `delay`, with the model, if any.
        let p_after = |delay: Duration| {
            self.model.as_ref().map(|m| {
                let mut probe = ctx.clone();
                probe.delay = delay;
                sanitize_probability(m.p_success(&probe))
            })
        };
        let stop = |reason| Explained {
            decision: Decision::Stop(reason),
            p_success: p_after(Duration::ZERO),
        };
        if ctx.attempt > self.limit(ctx.error) {
            return stop(StopReason::MaxAttempts);
        }
        if ctx.retry_after.is_some_and(|ra| ra > self.cap) {
            return stop(StopReason::RetryAfterTooLong);
        }
        let failures = ctx.attempt.saturating_sub(1).min(62);
        let mut secs = self.base.as_secs_f64() * f64::from(1u32 << failures.min(31));
        match ctx.error {
            Some(ErrorKind::Timeout) => secs *= 2.0,
            Some(ErrorKind::Http429) => secs *= 5.0,
            Some(ErrorKind::Connect) => secs /= 2.0,
            _ => {}
        }
        // The server's Retry-After is a floor the wait never goes under: the model is asked
        // about the wait that would be taken, not the backoff's shorter one.
        let floor = ctx.retry_after.unwrap_or(Duration::ZERO);
        let mut delay = cap(secs, self.cap).max(floor);
        if let Some(p) = p_after(delay) {
            if p < self.stop_below {
                return Explained {
                    decision: Decision::Stop(StopReason::LowSuccessProbability),
                    p_success: Some(p),
                };
            }
            if p > 0.5 {
                delay /= 2;
            } else if p < 0.2 {
                delay = cap(delay.as_secs_f64() * 3.0, self.cap);
            }
        }
        let delay = delay.max(floor);
        if let Some(deadline) = self.deadline
            && ctx.elapsed.saturating_add(delay) >= deadline
        {
            return stop(StopReason::Deadline);
        }
        Explained {
            decision: Decision::Retry(delay),
            p_success: p_after(delay),
        }
    }

    fn attempt_timeout(&self, ctx: &AttemptContext) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_sub(ctx.elapsed.saturating_add(ctx.delay)))
    }
}

fn cap(secs: f64, cap: Duration) -> Duration {
    if secs.is_finite() && secs < cap.as_secs_f64() {
        Duration::from_secs_f64(secs.max(0.0))
    } else {
        cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn after(kind: ErrorKind, attempt: u32) -> AttemptContext {
        let mut c = AttemptContext::first("t");
        c.attempt = attempt;
        c.error = Some(kind);
        c
    }

    #[test]
    fn the_seeds_multipliers() {
        let s = RuleBasedAdaptive::new();
        // After the first failure: 100 ms × 2^1.
        assert_eq!(
            s.decide(&after(ErrorKind::Http503, 2)),
            Decision::Retry(200 * MS)
        );
        assert_eq!(
            s.decide(&after(ErrorKind::Http503, 3)),
            Decision::Retry(400 * MS)
        );
        assert_eq!(
            s.decide(&after(ErrorKind::Timeout, 2)),
            Decision::Retry(400 * MS)
        );
        assert_eq!(
            s.decide(&after(ErrorKind::Http429, 2)),
            Decision::Retry(1000 * MS)
        );
        assert_eq!(
            s.decide(&after(ErrorKind::Connect, 2)),
            Decision::Retry(100 * MS)
        );
        assert_eq!(
            s.decide(&after(ErrorKind::Http503, 5)),
            Decision::Stop(StopReason::MaxAttempts)
        );
        let long = s.clone().max_attempts_for(ErrorKind::Http429, 20).unwrap();
        assert_eq!(
            long.decide(&after(ErrorKind::Http429, 10)),
            Decision::Retry(Duration::from_secs(30)),
            "capped at 30 s"
        );
    }

    #[test]
    fn model_stops_speeds_up_and_slows_down() {
        let with =
            |p: f64| RuleBasedAdaptive::new().with_model(Arc::new(move |_: &AttemptContext| p));
        let c = after(ErrorKind::Http503, 2);
        assert_eq!(
            with(0.05).decide(&c),
            Decision::Stop(StopReason::LowSuccessProbability)
        );
        assert_eq!(with(0.9).decide(&c), Decision::Retry(100 * MS));
        assert_eq!(with(0.15).decide(&c), Decision::Retry(600 * MS));
        assert_eq!(with(0.3).decide(&c), Decision::Retry(200 * MS));
        assert_eq!(
            with(f64::NAN).decide(&c),
            Decision::Retry(200 * MS),
            "NaN is unknown"
        );
    }

    /// A model that predicts 0.9 after a wait of `at` or more, `before` for shorter ones.
    fn succeeds_after(at: Duration, before: f64) -> Arc<dyn SuccessModel> {
        Arc::new(move |c: &AttemptContext| if c.delay >= at { 0.9 } else { before })
    }

    #[test]
    fn model_sees_the_delay_it_is_asked_about() {
        let s =
            RuleBasedAdaptive::new().with_model(succeeds_after(Duration::from_millis(400), 0.0));
        assert_eq!(
            s.decide(&after(ErrorKind::Timeout, 2)),
            Decision::Retry(200 * MS)
        );
        assert_eq!(
            s.decide(&after(ErrorKind::Http503, 2)),
            Decision::Stop(StopReason::LowSuccessProbability)
        );
    }

    #[test]
    fn a_retry_after_beyond_the_cap_stops_with_its_reason() {
        let s = RuleBasedAdaptive::new();
        let mut c = after(ErrorKind::Http503, 2);
        c.retry_after = Some(Duration::from_secs(31));
        assert_eq!(s.decide(&c), Decision::Stop(StopReason::RetryAfterTooLong));
        c.retry_after = Some(Duration::from_secs(30));
        assert_eq!(s.decide(&c), Decision::Retry(Duration::from_secs(30)));
    }

    #[test]
    fn explain_gives_the_probability_of_the_chosen_wait() {
        let s = RuleBasedAdaptive::new().with_model(Arc::new(|c: &AttemptContext| {
            c.delay.as_secs_f64().min(0.9)
        }));
        let e = s.explain(&after(ErrorKind::Http503, 3));
        // 400 ms: p = 0.4 (neither halved nor tripled), then p(0.4 s) again.
        assert_eq!(e.decision, Decision::Retry(400 * MS));
        assert_eq!(e.p_success, Some(0.4));
        let stop = s.explain(&after(ErrorKind::Http503, 9));
        assert_eq!(stop.decision, Decision::Stop(StopReason::MaxAttempts));
        assert_eq!(stop.p_success, Some(0.0), "an immediate retry's");
        assert_eq!(
            RuleBasedAdaptive::new()
                .explain(&after(ErrorKind::Http503, 2))
                .p_success,
            None
        );
    }

    #[test]
    fn retry_after_and_deadline() {
        let s = RuleBasedAdaptive::new()
            .deadline(Duration::from_secs(2))
            .unwrap();
        let mut c = after(ErrorKind::Http429, 2);
        c.retry_after = Some(Duration::from_millis(1500));
        assert_eq!(s.decide(&c), Decision::Retry(1500 * MS));
        c.elapsed = Duration::from_millis(600);
        assert_eq!(s.decide(&c), Decision::Stop(StopReason::Deadline));
    }

    /// The model is asked about the wait that will be taken - the Retry-After when it is
    /// longer than the backoff's - not the shorter one: a 429 whose Retry-After clears it
    /// is retried after it (it was given up on by the backoff's p), and halving a wait
    /// never goes under the Retry-After.
    #[test]
    fn the_model_weighs_the_wait_the_retry_after_sets() {
        let s = RuleBasedAdaptive::new().with_model(succeeds_after(Duration::from_secs(5), 0.05));
        let mut c = after(ErrorKind::Http429, 2);
        c.retry_after = Some(Duration::from_secs(5));
        assert_eq!(s.decide(&c), Decision::Retry(Duration::from_secs(5)));
    }

    #[test]
    fn refuses_bad_values() {
        assert_eq!(
            RuleBasedAdaptive::new().stop_below(1.5).unwrap_err().field,
            "stop_below"
        );
        assert_eq!(
            RuleBasedAdaptive::new()
                .delays(Duration::ZERO, MS)
                .unwrap_err()
                .field,
            "base"
        );
        assert_eq!(
            RuleBasedAdaptive::new()
                .delays(2 * MS, MS)
                .unwrap_err()
                .field,
            "base"
        );
        // A cap no record could hold (a retry 190 years on was decided).
        assert_eq!(
            RuleBasedAdaptive::new()
                .delays(MS, Duration::MAX)
                .unwrap_err()
                .field,
            "cap"
        );
        assert_eq!(
            RuleBasedAdaptive::new()
                .max_attempts_for(ErrorKind::Reset, 0)
                .unwrap_err()
                .field,
            "max_attempts"
        );
    }
}
