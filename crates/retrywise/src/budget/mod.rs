//! Retry budgets: limits on retries across all calls, so that retries cannot multiply the
//! load on a struggling upstream.
//!
//! # Why budgets and not just a maximum number of attempts
//!
//! "Retry up to 3 times" looks harmless per call, but when an upstream fails for everyone
//! at once, every caller retries at once: offered load is multiplied by up to 4 exactly when
//! the upstream is least able to take it. That amplification is what turns a short blip
//! into a retry storm, and what keeps a recovered upstream down (a *metastable* failure).
//! A budget caps retries as a share of the traffic, whatever each call would like:
//!
//! - [`TokenBucket`] — gRPC's retry throttling: failures drain tokens, successes refill a
//!   fraction of one, and retries stop while the bucket is at most half full.
//! - [`RatioBudget`] — Finagle's and tower's budget: retries in a sliding window may not
//!   exceed a fixed share (default 20 %) of the calls in it, plus a small floor per second
//!   so that low-traffic clients can still retry.
//! - [`AdaptiveThrottle`] — the SRE book's client-side throttling: refuses *any* request
//!   locally with a probability that grows as the backend accepts fewer of them.
//! - [`RetryQuota`] and [`CubicRateLimiter`] — the AWS SDKs' `standard` retry quota (500
//!   units, 5 per retry, 10 after a timeout) and the `adaptive` mode's client-side rate
//!   limiter, whose rate follows CUBIC after throttling answers.
//!   [`RetryQuota::after_timeouts`] charges only the retries after timeouts (and hedges):
//!   the budget of the model-driven composition.
//!
//! Budgets are shared: one instance per upstream, used by every call to it.

mod aws;
mod ratio;
mod throttle;
mod token_bucket;

pub use aws::{CubicRateLimiter, RetryQuota};
pub use ratio::RatioBudget;
pub use throttle::AdaptiveThrottle;
pub use token_bucket::TokenBucket;

use tokio::time::Instant;

use crate::attempt::AttemptContext;

/// A budget that decides whether the fleet of calls can afford a retry.
///
/// The executor calls [`deposit`](Self::deposit) once per logical call,
/// [`withdraw_for`](Self::withdraw_for) before every retry (a refused withdrawal stops
/// the call with [`StopReason::BudgetExhausted`](crate::retry::StopReason::BudgetExhausted);
/// waiting out a circuit breaker's refusal, decided as a retry, is withdrawn as one),
/// [`withdraw`](Self::withdraw) before every hedge, and [`record_for`](Self::record_for)
/// after every attempt.
///
/// ```
/// use retrywise::budget::{RatioBudget, RetryBudget};
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// // Retries may be 20 % of calls, with no floor.
/// let budget = RatioBudget::new(Duration::from_secs(10), 0, 0.2)?;
/// let now = Instant::now();
/// for _ in 0..10 {
///     budget.deposit(now);
/// }
/// assert!(budget.withdraw(now));
/// assert!(budget.withdraw(now));
/// assert!(!budget.withdraw(now), "a third retry for ten calls is over 20 %");
/// # Ok::<(), retrywise::ConfigError>(())
/// ```
pub trait RetryBudget: Send + Sync {
    /// A logical call was made (its first attempt).
    fn deposit(&self, now: Instant);

    /// Asks to spend one retry; `false` refuses it.
    fn withdraw(&self, now: Instant) -> bool;

    /// An attempt ended: `success` or a failure.
    fn record(&self, success: bool) {
        let _ = success;
    }

    /// Asks to spend one retry on the attempt `next` (its `error` is the failure it
    /// follows), for budgets whose price depends on it; defaults to
    /// [`withdraw`](Self::withdraw).
    fn withdraw_for(&self, now: Instant, next: &AttemptContext) -> bool {
        let _ = next;
        self.withdraw(now)
    }

    /// The attempt made in `ctx` ended, for budgets that care which attempt it was;
    /// defaults to [`record`](Self::record).
    fn record_for(&self, ctx: &AttemptContext, success: bool) {
        let _ = ctx;
        self.record(success);
    }

    /// The retry `next`, paid for at `withdrawn_at` ([`withdraw_for`](Self::withdraw_for)
    /// said yes), will not be sent after all (its call stopped first, or was dropped
    /// while it waited): budgets that spent something on it give it back. Defaults to
    /// nothing (a budget whose `withdraw` spends nothing, like gRFC A6's token bucket).
    fn refund(&self, withdrawn_at: Instant, next: &AttemptContext) {
        let _ = (withdrawn_at, next);
    }
}
