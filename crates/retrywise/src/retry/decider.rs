//! The retry decision, as a trait.

use std::fmt;
use std::time::Duration;

use crate::attempt::AttemptContext;

/// Why a call stops being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The last failure was permanent (a 4xx): no retry can fix it.
    NotRetryable,
    /// The maximum number of attempts was made.
    MaxAttempts,
    /// No attempt could start before the call's deadline (one that starts is given the
    /// time left as its timeout, at most).
    Deadline,
    /// The retry budget refused another retry (a retry storm is being prevented).
    BudgetExhausted,
    /// The predicted probability of success was too low to be worth another attempt.
    LowSuccessProbability,
    /// The target's recent failure rate is above the configured limit.
    TargetUnhealthy,
    /// The upstream asked to wait longer (Retry-After) than the policy is willing to: a
    /// retry before then would go against the upstream's request.
    RetryAfterTooLong,
    /// The circuit breaker refused the attempt.
    CircuitOpen,
    /// The bulkhead had no room for the attempt.
    BulkheadFull,
    /// The client-side adaptive throttle refused the attempt.
    Throttled,
}

impl StopReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [StopReason; 10] = [
        StopReason::NotRetryable,
        StopReason::MaxAttempts,
        StopReason::Deadline,
        StopReason::BudgetExhausted,
        StopReason::LowSuccessProbability,
        StopReason::TargetUnhealthy,
        StopReason::RetryAfterTooLong,
        StopReason::CircuitOpen,
        StopReason::BulkheadFull,
        StopReason::Throttled,
    ];

    /// A stable snake_case name, for metrics labels and the service API.
    pub const fn as_str(self) -> &'static str {
        match self {
            StopReason::NotRetryable => "not_retryable",
            StopReason::MaxAttempts => "max_attempts",
            StopReason::Deadline => "deadline",
            StopReason::BudgetExhausted => "budget_exhausted",
            StopReason::LowSuccessProbability => "low_success_probability",
            StopReason::TargetUnhealthy => "target_unhealthy",
            StopReason::RetryAfterTooLong => "retry_after_too_long",
            StopReason::CircuitOpen => "circuit_open",
            StopReason::BulkheadFull => "bulkhead_full",
            StopReason::Throttled => "throttled",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do after a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Make another attempt after waiting this long.
    Retry(Duration),
    /// Give up.
    Stop(StopReason),
}

/// A decision and what it rests on: the probability of success the decider expected for
/// the attempt it decided about (after the chosen wait; when it stopped, after the wait it
/// found most worth it - which still was not), when it consulted a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Explained {
    /// The decision.
    pub decision: Decision,
    /// p(success) the decider expected, if it consulted a model.
    pub p_success: Option<f64>,
}

/// Decides whether, and when, to retry.
///
/// This is the seam between rules and learning: [`super::RetryRules`] (classic backoff),
/// [`super::RuleBasedAdaptive`] (the design sketch's heuristic) and model-driven deciders all implement
/// it, so call sites never change when the decision moves from rules to a model.
///
/// The executor asks only after a *retryable* failure; permanent failures stop without
/// asking. `ctx` describes the attempt that would come next (`ctx.attempt` ≥ 2) and the
/// failure that preceded it; `ctx.delay` still holds the previous wait (see
/// [`AttemptContext`]).
///
/// ```
/// use std::time::Duration;
/// use retrywise::attempt::{AttemptContext, ErrorKind};
/// use retrywise::retry::{Decision, RetryDecider, StopReason};
///
/// /// Retries rate limits once, after what the server asked for; nothing else.
/// struct OnlyRateLimits;
///
/// impl RetryDecider for OnlyRateLimits {
///     fn decide(&self, ctx: &AttemptContext) -> Decision {
///         match (ctx.error, ctx.attempt) {
///             (Some(ErrorKind::Http429), 2) => {
///                 Decision::Retry(ctx.retry_after.unwrap_or(Duration::from_secs(1)))
///             }
///             (Some(ErrorKind::Http429), _) => Decision::Stop(StopReason::MaxAttempts),
///             _ => Decision::Stop(StopReason::NotRetryable),
///         }
///     }
/// }
///
/// let mut ctx = AttemptContext::first("api");
/// ctx.attempt = 2;
/// ctx.error = Some(ErrorKind::Http429);
/// assert_eq!(OnlyRateLimits.decide(&ctx), Decision::Retry(Duration::from_secs(1)));
/// ```
pub trait RetryDecider: Send + Sync {
    /// Whether to make attempt `ctx.attempt`, and after how long.
    fn decide(&self, ctx: &AttemptContext) -> Decision;

    /// The timeout for attempt `ctx.attempt` (including the first), if any.
    ///
    /// `ctx.delay` is the wait that preceded it. Defaults to no timeout.
    fn attempt_timeout(&self, ctx: &AttemptContext) -> Option<Duration> {
        let _ = ctx;
        None
    }

    /// [`decide`](Self::decide), with the probability of success the decision rests on
    /// (the prediction service answers with it). Deciders that consult a model override
    /// it, and make `decide` its decision; the default has no probability.
    fn explain(&self, ctx: &AttemptContext) -> Explained {
        Explained {
            decision: self.decide(ctx),
            p_success: None,
        }
    }

    /// [`decide`](Self::decide), with the decision's propensity when it explored: the
    /// chance with which a decider that sometimes retries where it judged no retry worth
    /// it drew this retry (`Policy` records it with the attempt as `explore_propensity`,
    /// so that what waiting does can be estimated without bias). Deciders that explore
    /// override it, and make `decide` its decision; the default never explores.
    fn decide_explored(&self, ctx: &AttemptContext) -> (Decision, Option<f64>) {
        (self.decide(ctx), None)
    }

    /// The retry this decider chose for `ctx` — `Retry(planned)`, decided at
    /// `decided_at` — will be made after `sent` instead, or (`None`) not at all: the
    /// executor's throttle or retry budget refused it, or its exploration moved it. A
    /// decider that books its retries so that others weigh their load (the
    /// [`ModelDecider`](super::ModelDecider)'s [`RetryCalendar`](super::RetryCalendar))
    /// moves the booking; the default has nothing to move.
    fn replanned(
        &self,
        ctx: &AttemptContext,
        decided_at: tokio::time::Instant,
        planned: Duration,
        sent: Option<Duration>,
    ) {
        let _ = (ctx, decided_at, planned, sent);
    }
}

/// Never retries: one attempt, then stop.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRetry;

impl RetryDecider for NoRetry {
    fn decide(&self, _ctx: &AttemptContext) -> Decision {
        Decision::Stop(StopReason::MaxAttempts)
    }
}

impl<D: RetryDecider + ?Sized> RetryDecider for std::sync::Arc<D> {
    fn decide(&self, ctx: &AttemptContext) -> Decision {
        (**self).decide(ctx)
    }

    fn attempt_timeout(&self, ctx: &AttemptContext) -> Option<Duration> {
        (**self).attempt_timeout(ctx)
    }

    fn explain(&self, ctx: &AttemptContext) -> Explained {
        (**self).explain(ctx)
    }

    fn decide_explored(&self, ctx: &AttemptContext) -> (Decision, Option<f64>) {
        (**self).decide_explored(ctx)
    }

    fn replanned(
        &self,
        ctx: &AttemptContext,
        decided_at: tokio::time::Instant,
        planned: Duration,
        sent: Option<Duration>,
    ) {
        (**self).replanned(ctx, decided_at, planned, sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` lists the reasons in order, each once (a reason added to the enum makes the
    /// match fail to compile, a reminder to list it in `ALL` too; the test cannot see one
    /// left out of both).
    #[test]
    fn every_stop_reason_is_listed_once() {
        let position = |r: StopReason| match r {
            StopReason::NotRetryable => 0,
            StopReason::MaxAttempts => 1,
            StopReason::Deadline => 2,
            StopReason::BudgetExhausted => 3,
            StopReason::LowSuccessProbability => 4,
            StopReason::TargetUnhealthy => 5,
            StopReason::RetryAfterTooLong => 6,
            StopReason::CircuitOpen => 7,
            StopReason::BulkheadFull => 8,
            StopReason::Throttled => 9,
        };
        for (i, r) in StopReason::ALL.into_iter().enumerate() {
            assert_eq!(position(r), i, "{r}");
        }
    }

    #[test]
    fn object_safe() {
        let d: Box<dyn RetryDecider> = Box::new(NoRetry);
        assert_eq!(
            d.decide(&AttemptContext::first("x")),
            Decision::Stop(StopReason::MaxAttempts)
        );
        assert_eq!(d.attempt_timeout(&AttemptContext::first("x")), None);
    }
}
