//! What is known before an attempt is made.

use std::sync::Arc;
use std::time::Duration;

use super::schema::{self, InvalidField};
use super::{ErrorKind, Failure};

/// Everything known before an attempt is made: the input of every retry decision and of
/// every success prediction.
///
/// For the first attempt of a call only `target`, `attempt = 1` and the target's recent
/// health are set. Before attempt `n > 1`, the fields describing the previous attempt
/// (`error`, `status`, `latency`, `retry_after`) describe attempt `n - 1`, which failed.
///
/// `delay` is the wait before this attempt. While a [`crate::retry::RetryDecider`] is
/// deciding, it still holds the wait that preceded the attempt that just failed (zero
/// before the second attempt), which stateful backoffs such as decorrelated jitter need;
/// the decider's choice then replaces it, and the context recorded with the attempt
/// carries the delay actually waited.
///
/// On the wire (records, the HTTP API) every duration is milliseconds with an `_ms` name
/// (`latency_ms`, `delay_ms`, ...); each field's name, type, range and meaning is in
/// [`super::schema::FIELDS`], from which its JSON form and [`validate`](Self::validate)
/// derive.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptContext {
    /// The logical name of what is called (a service, host or endpoint).
    pub target: Arc<str>,
    /// The number of the attempt about to be made, starting at 1.
    pub attempt: u32,
    /// How the previous attempt failed; `None` before the first attempt.
    pub error: Option<ErrorKind>,
    /// The previous attempt's HTTP status, when it had one.
    pub status: Option<u16>,
    /// How long the previous attempt took (`latency_ms`).
    pub latency: Option<Duration>,
    /// Time since the first attempt of this call started (`elapsed_ms`).
    pub elapsed: Duration,
    /// The wait the upstream asked for (Retry-After) on the previous attempt
    /// (`retry_after_ms`).
    pub retry_after: Option<Duration>,
    /// The wait before this attempt (`delay_ms`; see the type's documentation for
    /// decision time).
    pub delay: Duration,
    /// The target's recent failure rate in `[0, 1]`, when known (see
    /// [`crate::health`]).
    pub failure_rate: Option<f64>,
    /// The target's recent 95th-percentile latency, when known (`latency_p95_ms`).
    pub latency_p95: Option<Duration>,
    /// Calls to the target in flight, on average over the health window, when known.
    pub in_flight: Option<u32>,
    /// The window the three health fields above were measured over (`health_window_ms`).
    pub health_window: Option<Duration>,
    /// The target's failure rate over the last tenths of the health window (its last two
    /// buckets), shrunk towards the window's by what chance explains of the difference
    /// ([`recent_failure_rate`](crate::health::recent_failure_rate)), when known
    /// (`failure_rate_recent`).
    pub failure_rate_recent: Option<f64>,
    /// The share of the target's recent calls that failed for good (invalid requests),
    /// when known (`permanent_rate`).
    pub permanent_rate: Option<f64>,
    /// Time since a call to the target last succeeded, when known (`since_success_ms`).
    pub since_success: Option<Duration>,
    /// The delay the decider chose, when exploration changed it into `delay` (training
    /// data records both, so that a model can learn what waiting longer or shorter does;
    /// `planned_delay_ms`).
    pub planned_delay: Option<Duration>,
    /// The chance with which the decision to make this attempt was drawn, when the decider
    /// explored: it judged no retry worth an attempt and retried anyway, after a wait drawn
    /// uniformly among those it weighed (`ModelDecider`: its explore share over the waits
    /// weighed) - the chance of the decider's wait, which is `planned_delay` when a
    /// policy's exploration then moved the wait too. `None` when the decision did not
    /// explore (`explore_propensity`).
    pub explore_propensity: Option<f64>,
}

impl AttemptContext {
    /// The context of the first attempt of a call to `target`.
    pub fn first(target: impl Into<Arc<str>>) -> Self {
        Self {
            target: target.into(),
            attempt: 1,
            error: None,
            status: None,
            latency: None,
            elapsed: Duration::ZERO,
            retry_after: None,
            delay: Duration::ZERO,
            failure_rate: None,
            latency_p95: None,
            in_flight: None,
            health_window: None,
            failure_rate_recent: None,
            permanent_rate: None,
            since_success: None,
            planned_delay: None,
            explore_propensity: None,
        }
    }

    /// The context of the attempt that follows this one, after it failed with `failure`
    /// having taken `latency`, `elapsed` after the call started.
    ///
    /// The delay is carried over (see the type's documentation); the target's health
    /// fields are carried over until the caller refreshes them.
    pub fn next(&self, failure: &Failure, latency: Duration, elapsed: Duration) -> Self {
        Self {
            target: Arc::clone(&self.target),
            attempt: self.attempt.saturating_add(1),
            error: Some(failure.kind),
            status: failure.status,
            latency: Some(latency),
            elapsed,
            retry_after: failure.retry_after,
            delay: self.delay,
            failure_rate: self.failure_rate,
            latency_p95: self.latency_p95,
            in_flight: self.in_flight,
            health_window: self.health_window,
            failure_rate_recent: self.failure_rate_recent,
            permanent_rate: self.permanent_rate,
            since_success: self.since_success,
            planned_delay: None,
            explore_propensity: None,
        }
    }

    /// Checks every field against the schema's rules ([`schema::FIELDS`]): `target` not
    /// empty, `attempt` at least 1, `status` within 100..=599, `failure_rate` within
    /// `[0, 1]`.
    ///
    /// # Errors
    /// Names the first field that is out of range.
    pub fn validate(&self) -> Result<(), InvalidField> {
        schema::validate_context(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_durations_as_milliseconds() {
        let mut ctx = AttemptContext::first("payments");
        ctx.attempt = 2;
        ctx.error = Some(ErrorKind::Http503);
        ctx.status = Some(503);
        ctx.latency = Some(Duration::from_micros(12_500));
        ctx.retry_after = Some(Duration::from_secs(2));
        ctx.delay = Duration::from_millis(250);
        let v = serde_json::to_value(&ctx).unwrap();
        assert_eq!(v["latency_ms"], 12.5);
        assert_eq!(v["retry_after_ms"], 2000.0);
        assert_eq!(v["delay_ms"], 250.0);
        assert_eq!(v["error"], "http_503");
        let back: AttemptContext = serde_json::from_value(v).unwrap();
        assert_eq!(back, ctx);
    }

    #[test]
    fn refuses_negative_durations_and_reports_them() {
        let err =
            serde_json::from_str::<AttemptContext>(r#"{"target":"a","attempt":2,"latency_ms":-5}"#)
                .unwrap_err();
        assert!(err.to_string().contains("non-negative"), "{err}");
        let err = serde_json::from_str::<AttemptContext>(
            r#"{"target":"a","attempt":2,"delay_ms":1e400}"#,
        )
        .unwrap_err();
        // Refused by serde_json as it reads the number, at its place in the text.
        assert!(
            err.to_string()
                .contains("number out of range at line 1 column 42"),
            "{err}"
        );
    }

    #[test]
    fn validate_names_the_field() {
        let mut ctx = AttemptContext::first("a");
        ctx.failure_rate = Some(1.5);
        assert_eq!(ctx.validate().unwrap_err().field, "failure_rate");
        ctx.failure_rate = None;
        ctx.attempt = 0;
        assert_eq!(ctx.validate().unwrap_err().field, "attempt");
        ctx.attempt = 1;
        ctx.status = Some(42);
        assert_eq!(ctx.validate().unwrap_err().field, "status");
    }

    #[test]
    fn next_carries_the_failure() {
        let first = AttemptContext::first("a");
        let f = Failure::new(ErrorKind::Http429)
            .with_status(429)
            .with_retry_after(Duration::from_secs(1));
        let second = first.next(&f, Duration::from_millis(30), Duration::from_millis(31));
        assert_eq!(second.attempt, 2);
        assert_eq!(second.error, Some(ErrorKind::Http429));
        assert_eq!(second.status, Some(429));
        assert_eq!(second.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(second.latency, Some(Duration::from_millis(30)));
    }
}
