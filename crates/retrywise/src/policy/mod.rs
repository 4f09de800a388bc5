//! One call site for every mechanism: the composition that services embed.
//!
//! A [`Policy`] wraps an operation (any `FnMut(Attempt) -> Future<Output = Result<T, E>>`)
//! and applies, from the outside in:
//!
//! 1. **retry budget** — the call is deposited; every retry must be withdrawn;
//! 2. **retry loop** — after a retryable failure, the [`RetryDecider`] chooses to stop or
//!    to wait and try again (permanent failures stop at once);
//! 3. **circuit breaker** — each attempt asks for a permit; OPEN stops the call;
//! 4. **hedge** — an attempt may send hedged requests; the first answer wins;
//! 5. **bulkhead** — each request sent (primary or hedge) takes room in the bulkhead;
//! 6. **timeout** — each request is limited by the decider's attempt timeout;
//! 7. the operation itself, whose result the [`Classifier`] judges.
//!
//! Every request sent upstream is reported to the [`Recorder`] as an
//! [`AttemptRecord`](crate::attempt::AttemptRecord) (none are built with the default
//! no-op recorder). The context of each attempt carries the target's health from one
//! source: a [`HealthTracker`] the policy keeps whenever it records (or is asked to with
//! [`PolicyBuilder::track_health`]) — see [`crate::health`] for what the numbers mean. The
//! breaker's, hedge's and bulkhead's own windows serve their own decisions only.
//!
//! The steps of a call (`steps.rs`) are shared with the tower retry layer, so both retry,
//! budget, throttle, explore, track health and record alike.

mod error;
mod steps;

pub use error::{AttemptError, CallError};
pub(crate) use steps::Inner;
#[cfg(feature = "tower")]
pub(crate) use steps::RecordGuard;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::attempt::{AttemptContext, Classifier, ErrorKind, ErrorsAreRetryable, Failure, Verdict};
use crate::breaker::{CircuitBreaker, CircuitOpen, Prediction, SlidingWindow};
use crate::budget::{AdaptiveThrottle, CubicRateLimiter, RetryBudget, RetryQuota};
use crate::bulkhead::{AdaptiveLimit, Bulkhead, BulkheadFull, BulkheadPermit};
use crate::error::{Check, ConfigError};
use crate::health::HealthTracker;
use crate::hedge::Hedge;
use crate::model::{SharedModel, SuccessModel};
use crate::recorder::{NoopRecorder, Recorder};
use crate::retry::{Exploration, ModelDecider, RetryDecider, RetryRules, StopReason};
use crate::timeout::{Elapsed, Timeout};

use steps::Counters;

const CHECK: Check = Check::new("policy");

pub use crate::health::DEFAULT_HEALTH_WINDOW;

/// How long a call waiting for the circuit breaker ([`PolicyBuilder::wait_for_breaker`])
/// waits again when HALF_OPEN's probes are all out (the breaker names no end to that).
pub const BREAKER_POLL: Duration = Duration::from_millis(100);

/// Which request the operation is asked to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt number, from 1.
    pub number: u32,
    /// 0 for the primary request of the attempt, `k` for its `k`-th hedge.
    pub hedge: u32,
}

/// The resilience policy of one target: retries, budget, breaker, bulkhead, hedging and
/// timeouts behind one `call`. Cloning is cheap and shares all state.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use retrywise::breaker::CircuitBreaker;
/// use retrywise::budget::TokenBucket;
/// use retrywise::policy::Policy;
/// use retrywise::retry::{AttemptTimeout, Backoff, RetryRules};
///
/// let policy = Policy::builder("inventory")
///     .retry(
///         RetryRules::builder()
///             .max_attempts(4)
///             .backoff(Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(2))?)
///             .attempt_timeout(AttemptTimeout::Fixed(Duration::from_secs(1)))
///             .build()?,
///     )
///     .budget(TokenBucket::new(10, 0.1)?)
///     .breaker(CircuitBreaker::builder("inventory").build()?)
///     .build()?;
///
/// // Fails twice with a reset connection, then answers.
/// let calls = AtomicU32::new(0);
/// let stock = policy
///     .call(|_attempt| async {
///         if calls.fetch_add(1, Ordering::SeqCst) < 2 {
///             Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"))
///         } else {
///             Ok(17)
///         }
///     })
///     .await?;
/// assert_eq!(stock, 17);
/// assert_eq!(calls.load(Ordering::SeqCst), 3);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Policy<C = ErrorsAreRetryable> {
    inner: Arc<Inner>,
    classifier: C,
}

/// A point-in-time view of a [`Policy`] and its mechanisms.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyMetrics {
    /// The target.
    pub target: Arc<str>,
    /// Retries sent (a retry planned and then not sent - turned away by the bulkhead, out
    /// of time after its wait, refused by the circuit, or its call dropped - is not one).
    pub retries: u64,
    /// Attempts that failed (retryable or not, timeouts and rejections included).
    pub failed_attempts: u64,
    /// Calls that gave up, by reason (`"max_attempts"`, ...).
    pub stops: Vec<(&'static str, u64)>,
    /// The breaker's view, if there is one.
    pub breaker: Option<crate::breaker::BreakerMetrics>,
    /// The bulkhead's view, if there is one.
    pub bulkhead: Option<crate::bulkhead::BulkheadMetrics>,
    /// The hedge's view, if there is one.
    pub hedge: Option<crate::hedge::HedgeMetrics>,
}

impl Policy {
    /// A builder for the policy of `target` (named in records, errors and metrics).
    pub fn builder(target: impl Into<Arc<str>>) -> PolicyBuilder {
        PolicyBuilder {
            target: target.into(),
            decider: None,
            budget: None,
            breaker: None,
            bulkhead: None,
            hedge: None,
            recorder: Arc::new(NoopRecorder),
            health_window: None,
            permanent_is_failure: false,
            label: None,
            explore: None,
            throttle: None,
            limiter: None,
            breaker_wait: None,
            decide_refused: false,
            call_id_seed: None,
            classifier: ErrorsAreRetryable,
        }
    }
}

/// What a call did besides its result: the attempts it made and, when it ended without a
/// success, why the policy stopped.
///
/// [`Policy::call`] returns the last answer of a call that ended on a failed *answer*
/// (an HTTP 503 response, say) as `Ok`, like tower's retry; the report says why no
/// further attempt was made — the budget, the deadline, the attempts allowed, a
/// Retry-After beyond the policy's limit... ([`Policy::call_with_report`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallReport {
    /// Attempts made (0 when the first was refused locally).
    pub attempts: u32,
    /// Why the call stopped, unless it ended with a success.
    pub stopped: Option<StopReason>,
}

/// A retry planned (its budget paid, its place in the decider's calendar booked) and not
/// sent yet, with when it was decided, and the rate limiter's token taken for the attempt
/// about to go: dropped unsent - the call stopped before it, or was dropped (or its
/// operation panicked) while it waited, for its delay, the breaker or the bulkhead's room
/// - they are given back ([`Inner::unsent`], [`Inner::unlimit`]).
struct Unsent<'a> {
    inner: &'a Inner,
    paid: Option<(Instant, AttemptContext)>,
    /// Whether the attempt about to go took a rate-limiter token.
    token: bool,
    /// Set once the attempt's request leaves (`send`, past any wait for room): from then
    /// on it keeps what it paid, and its token.
    left: AtomicBool,
}

impl Unsent<'_> {
    /// Gives the rate limiter's token back (the attempt will not use it).
    fn unlimit(&mut self) {
        self.inner.unlimit(std::mem::take(&mut self.token));
    }
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        let left = self.left.load(Ordering::Relaxed);
        if let Some((at, planned)) = self.paid.take()
            && !left
        {
            self.inner.unsent(at, &planned);
        }
        if !left {
            self.unlimit();
        }
    }
}

/// The outcome of one request sent upstream.
enum Sent<T, E> {
    /// The operation returned, and the classifier judged it.
    Done(Result<T, E>, Verdict),
    /// The attempt timeout fired.
    TimedOut(Elapsed),
    /// The bulkhead had no room: nothing was sent.
    Rejected(BulkheadFull),
}

impl<T, E> Sent<T, E> {
    fn verdict(&self) -> Verdict {
        match self {
            Sent::Done(_, v) => *v,
            Sent::TimedOut(_) => Verdict::Retryable(Failure::new(ErrorKind::Timeout)),
            // A local rejection: the upstream said nothing.
            Sent::Rejected(_) => Verdict::Retryable(Failure::new(ErrorKind::Other)),
        }
    }

    /// Whether this ends the attempt (an answer, good or permanently bad).
    fn is_final(&self) -> bool {
        matches!(
            self,
            Sent::Done(_, Verdict::Success | Verdict::Permanent(_))
        )
    }
}

/// What an attempt ended with, after hedging.
struct Ended<T, E> {
    verdict: Verdict,
    latency: Duration,
    /// When it ended, if the clock was read for it (the breaker dates outcomes with it).
    at: Option<Instant>,
    /// An answer from the upstream (possibly one classified as a failure).
    answer: Option<T>,
    /// Otherwise, why there was none.
    error: Option<AttemptError<E>>,
    rejected: bool,
}

impl<C> Policy<C> {
    /// The mechanisms and state the policy's steps share (with the tower retry layer).
    #[cfg(feature = "tower")]
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// How results are judged.
    #[cfg(feature = "tower")]
    pub(crate) fn classifier(&self) -> &C {
        &self.classifier
    }

    /// The target's name.
    pub fn target(&self) -> &Arc<str> {
        &self.inner.target
    }

    /// The circuit breaker, if the policy has one.
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.inner.breaker.as_ref()
    }

    /// The bulkhead, if the policy has one.
    pub fn bulkhead(&self) -> Option<&Bulkhead> {
        self.inner.bulkhead.as_ref()
    }

    /// The hedge, if the policy has one.
    pub fn hedge(&self) -> Option<&Hedge> {
        self.inner.hedge.as_ref()
    }

    /// A snapshot of the policy's counters and its mechanisms'.
    pub fn metrics(&self) -> PolicyMetrics {
        let p = &*self.inner;
        PolicyMetrics {
            target: Arc::clone(&p.target),
            retries: p.counters.retries.load(Ordering::Relaxed),
            failed_attempts: p.counters.failed_attempts.load(Ordering::Relaxed),
            stops: StopReason::ALL
                .iter()
                .zip(&p.counters.stops)
                .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
                .collect(),
            breaker: p.breaker.as_ref().map(CircuitBreaker::metrics),
            bulkhead: p.bulkhead.as_ref().map(Bulkhead::metrics),
            hedge: p.hedge.as_ref().map(Hedge::metrics),
        }
    }

    /// Runs `op` under the policy.
    ///
    /// `op` is called once per request, with the attempt number and hedge index, once the
    /// bulkhead has room (a hedge's future is made when the hedge is launched). The
    /// result is the first successful answer; or the last answer, if the last attempt
    /// answered with something the classifier judged a failure and the retry decision
    /// stopped (an HTTP 503 response, say — [`call_with_report`](Self::call_with_report)
    /// also says why no further attempt was made); or a [`CallError`] saying why the call
    /// gave up without an answer. A retry that was decided but refused before it was sent
    /// (an open circuit, a full bulkhead, the rate limiter's wait past the deadline) ends
    /// the call with that refusal as its error, as a breaker or bulkhead layer inside a
    /// retry layer would: the answer before it is not returned.
    ///
    /// # Errors
    /// [`CallError`] when the last attempt produced no answer: the operation's error, a
    /// timeout, an open circuit or a full bulkhead, with the reason the call stopped.
    pub async fn call<T, E, F, Fut>(&self, op: F) -> Result<T, CallError<E>>
    where
        C: Classifier<T, E>,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with_report(op).await.0
    }

    /// Like [`call`](Self::call), with a [`CallReport`]: the attempts made and, when the
    /// call did not end with a success, why the policy stopped — also when its last
    /// attempt *answered* with a failure and that answer is returned as `Ok`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use retrywise::attempt::{HttpClassifier, HttpResponse};
    /// use retrywise::policy::Policy;
    /// use retrywise::retry::{RetryRules, StopReason};
    ///
    /// struct Status(u16);
    /// impl HttpResponse for Status {
    ///     fn status_code(&self) -> u16 { self.0 }
    ///     fn retry_after_header(&self) -> Option<&str> { None }
    /// }
    ///
    /// let policy = Policy::builder("api")
    ///     .retry(RetryRules::builder().max_attempts(2).build()?)
    ///     .classifier(HttpClassifier)
    ///     .build()?;
    /// let (answer, report) = policy
    ///     .call_with_report(|_| async { Ok::<_, std::io::Error>(Status(503)) })
    ///     .await;
    /// assert_eq!(answer?.0, 503, "the last answer is returned");
    /// assert_eq!(report.attempts, 2);
    /// assert_eq!(report.stopped, Some(StopReason::MaxAttempts));
    /// # Ok(()) }
    /// ```
    pub async fn call_with_report<T, E, F, Fut>(
        &self,
        mut op: F,
    ) -> (Result<T, CallError<E>>, CallReport)
    where
        C: Classifier<T, E>,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let p = &*self.inner;
        let start = Instant::now();
        let call_id = match p.begin(start) {
            Ok(id) => id,
            Err(reason) => return refused(0, reason, AttemptError::Throttled),
        };
        // `None` while on the first attempt: its context is the shared `first`.
        let mut next: Option<AttemptContext> = None;
        // The retry planned and not sent yet: given back if the call stops before sending
        // it, or is dropped while it waits.
        let mut unsent = Unsent {
            inner: p,
            paid: None,
            token: false,
            left: AtomicBool::new(false),
        };
        let mut attempt_start = start;
        // What the attempt about to go last waited for that its plan did not include (the
        // rate limiter: `None`; an open circuit: `Some`), if it did: the deadline may have
        // passed meanwhile (a late timer, a busy runtime).
        let mut waited: Option<Option<CircuitOpen>> = None;
        loop {
            let ctx = next.as_ref().unwrap_or(&p.first);
            let number = ctx.attempt;
            // Whether this attempt takes a rate-limiter token (`unsent.token`, false here):
            // a call that ends before the request leaves gives it back through the guard.
            if p.limiter.is_some() {
                loop {
                    let now = Instant::now();
                    let wait = match p.limit_taken(now) {
                        Ok(taken) => {
                            unsent.token = taken;
                            break;
                        }
                        Err(wait) => wait,
                    };
                    // A wait that takes what is left of the deadline is not waited: the
                    // call stops now, and takes no token it could not use.
                    if p.attempt_timeout_at(ctx, start, now + wait) == Some(Duration::ZERO) {
                        let reason = p.stopped(StopReason::Deadline);
                        return refused(number - 1, reason, AttemptError::RateLimited);
                    }
                    tokio::time::sleep(wait).await;
                    attempt_start = Instant::now();
                    waited = Some(None);
                }
            }
            // Whether this attempt was refused already and waits for the circuit: looking
            // again, it is not another refused call.
            let mut refused_once = false;
            let admitted = loop {
                let asked = if refused_once {
                    p.permit_again()
                } else {
                    p.permit()
                };
                match asked {
                    Ok(permit) => break Ok(permit),
                    Err(open) => {
                        // Refused, and the wait for the circuit would end past the
                        // deadline: nothing is sent.
                        let out_of_time = |open| {
                            let reason = p.stopped(StopReason::Deadline);
                            refused(number - 1, reason, AttemptError::CircuitOpen(open))
                        };
                        let wait = open.remaining.unwrap_or(BREAKER_POLL);
                        match p.breaker_wait {
                            // FORCED_OPEN has no end to wait for (an operator holds it),
                            // nor a retry to plan: the call fails fast.
                            _ if open.state == crate::breaker::State::ForcedOpen => {
                                let reason = p.stopped(StopReason::CircuitOpen);
                                return refused(
                                    number - 1,
                                    reason,
                                    AttemptError::CircuitOpen(open),
                                );
                            }
                            Some(deadline) if start.elapsed() + wait < deadline => {
                                // Not waited when it takes what is left of the rules'
                                // deadline: the call stops now.
                                if p.attempt_timeout_at(ctx, start, Instant::now() + wait)
                                    == Some(Duration::ZERO)
                                {
                                    return out_of_time(open);
                                }
                                tokio::time::sleep(wait).await;
                                attempt_start = Instant::now();
                                waited = Some(Some(open));
                                refused_once = true;
                            }
                            _ if p.decide_refused => {
                                // Nothing was sent: the retry decision weighs waiting it
                                // out like a failure of the kind the target fails with,
                                // and the throttle and budget take it as that retry.
                                // Sooner than the circuit lets calls through again
                                // would only be refused again: the wait counts from
                                // then, and a retry pushed past the deadline is not
                                // made (nor paid for).
                                let (kind, took) = p.last_failure();
                                let now = Instant::now();
                                let failure = Failure::new(kind);
                                match p.plan_retry(ctx, &failure, took, start, now, open.remaining)
                                {
                                    Ok(planned) => {
                                        // A retry planned before and refused by the
                                        // circuit was never sent either.
                                        if let Some((at, refused)) =
                                            unsent.paid.replace((now, planned.clone()))
                                        {
                                            p.unsent(at, &refused);
                                        }
                                        // Nor was the rate limiter's token used: the
                                        // retry takes its own.
                                        unsent.unlimit();
                                        break Err((planned, open));
                                    }
                                    Err(reason) => {
                                        return refused(
                                            number - 1,
                                            reason,
                                            AttemptError::CircuitOpen(open),
                                        );
                                    }
                                }
                            }
                            _ => {
                                let reason = p.stopped(StopReason::CircuitOpen);
                                return refused(
                                    number - 1,
                                    reason,
                                    AttemptError::CircuitOpen(open),
                                );
                            }
                        }
                    }
                }
            };
            let permit = match admitted {
                Ok(permit) => permit,
                Err((planned, open)) => {
                    if !planned.delay.is_zero() {
                        tokio::time::sleep(planned.delay).await;
                    }
                    attempt_start = Instant::now();
                    waited = Some(Some(open));
                    next = Some(planned);
                    continue;
                }
            };
            // A wait the plan did not include ended with no time left: nothing is sent (a
            // request with no time would fail at once: a fake timeout for health, the
            // budget and a HALF_OPEN probe), the permit goes back unused and so do the
            // token and the retry paid for it.
            if let Some(cause) = waited.take()
                && p.attempt_timeout_at(ctx, start, attempt_start) == Some(Duration::ZERO)
            {
                drop(permit);
                if let Some((at, paid)) = unsent.paid.take() {
                    p.unsent(at, &paid);
                }
                let reason = p.stopped(StopReason::Deadline);
                let last = match cause {
                    Some(open) => AttemptError::CircuitOpen(open),
                    None => AttemptError::RateLimited,
                };
                return refused(number - 1, reason, last);
            }
            // A HALF_OPEN probe is one request: a hedge beside it would make it two, and
            // let the hedge's answer speak for a primary that failed.
            let probe = permit
                .as_ref()
                .is_some_and(|permit| permit.state() == crate::breaker::State::HalfOpen);
            // Sent once `send` says it left (dropped before, it is refunded; turned away by
            // the bulkhead, below).
            let ended = self
                .attempt(
                    &mut op,
                    ctx,
                    call_id,
                    start,
                    attempt_start,
                    probe,
                    &unsent.left,
                )
                .await;
            let paid = unsent.paid.take();
            if ended.rejected {
                // Turned away by the bulkhead: nothing was sent, so neither the retry nor
                // the rate limiter's token was used.
                if let Some((at, planned)) = &paid {
                    p.unsent(*at, planned);
                }
                unsent.unlimit();
            }
            // Spent, or given back: the next attempt takes its own.
            unsent.token = false;
            // Ready for the next retry planned, which has not left.
            unsent.left.store(false, Ordering::Relaxed);
            p.settle(
                ctx,
                permit,
                &ended.verdict,
                ended.latency,
                ended.at,
                start,
                ended.rejected,
            );
            let failure = match ended.verdict {
                Verdict::Success => return self.succeeded(ended, number),
                Verdict::Permanent(_) => {
                    return give_up(ended, number, p.not_retryable());
                }
                Verdict::Retryable(f) => f,
            };
            if ended.rejected {
                p.counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                // Nothing of this attempt was sent: the call made one attempt fewer (none,
                // when the first was turned away - a refusal, to a layer outside).
                return give_up(ended, number - 1, p.stopped(StopReason::BulkheadFull));
            }
            let now = Instant::now();
            match p.plan_retry(ctx, &failure, ended.latency, start, now, None) {
                Err(reason) => return give_up(ended, number, reason),
                Ok(planned) => {
                    unsent.paid = Some((now, planned.clone()));
                    if !planned.delay.is_zero() {
                        tokio::time::sleep(planned.delay).await;
                    }
                    attempt_start = Instant::now();
                    // The wait ended past the deadline (a late timer, a busy runtime):
                    // nothing is sent - a request with no time would fail at once, a
                    // fake timeout for health and the budget - and the retry is given
                    // back; the call ends with the failure before it.
                    if p.attempt_timeout_at(&planned, start, attempt_start) == Some(Duration::ZERO)
                    {
                        if let Some((at, paid)) = unsent.paid.take() {
                            p.unsent(at, &paid);
                        }
                        return give_up(ended, number, p.stopped(StopReason::Deadline));
                    }
                    next = Some(planned);
                }
            }
        }
    }

    /// One attempt: a request, or hedged requests (never for a HALF_OPEN `probe`); what
    /// it ended with.
    #[allow(clippy::too_many_arguments)]
    async fn attempt<T, E, F, Fut>(
        &self,
        op: &mut F,
        ctx: &AttemptContext,
        call_id: u64,
        call_start: Instant,
        attempt_start: Instant,
        probe: bool,
        left: &AtomicBool,
    ) -> Ended<T, E>
    where
        C: Classifier<T, E>,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let p = &*self.inner;
        let number = ctx.attempt;
        match p.hedge.as_ref().filter(|_| !probe) {
            None => {
                let make = || op(Attempt { number, hedge: 0 });
                let (sent, end) = self
                    .send(
                        make,
                        call_start,
                        attempt_start,
                        ctx,
                        call_id,
                        0,
                        None,
                        Some(left),
                    )
                    .await;
                // Read the clock only if someone needs the latency: the breaker, or the
                // retry decision after a failure.
                let (at, latency) = match end {
                    Some((at, latency)) => (Some(at), latency),
                    None if p.breaker.is_some() || !sent.verdict().is_success() => {
                        let now = Instant::now();
                        (Some(now), now.saturating_duration_since(attempt_start))
                    }
                    None => (None, Duration::ZERO),
                };
                Self::end(sent, latency, at)
            }
            Some(h) => {
                self.hedged(h, op, number, call_start, attempt_start, ctx, call_id, left)
                    .await
            }
        }
    }

    /// The call's success: its answer.
    fn succeeded<T, E>(
        &self,
        ended: Ended<T, E>,
        number: u32,
    ) -> (Result<T, CallError<E>>, CallReport) {
        let report = CallReport {
            attempts: number,
            stopped: None,
        };
        match ended.answer {
            Some(t) => (Ok(t), report),
            // A successful verdict always comes with an answer (`Sent::Done(Ok(_),
            // Success)`); this is the impossible case, without a panic.
            None => refused(
                number,
                StopReason::NotRetryable,
                AttemptError::AllHedgesFailed(Vec::new()),
            ),
        }
    }

    /// Sends one request: bulkhead (unless `admitted` already holds its room), then the
    /// operation (made by `make` once admitted) under its timeout, classification, health,
    /// record. The timeout is the decider's for a request sent when it is (`started`, or
    /// when the bulkhead let it in): a wait for room, or a hedge sent late, never carries
    /// the call past its deadline (`call_start`: when the call began), and the wait for
    /// room lasts no longer than the attempt's timeout.
    #[allow(clippy::too_many_arguments)]
    async fn send<'b, T, E, Fut>(
        &'b self,
        make: impl FnOnce() -> Fut,
        call_start: Instant,
        started: Instant,
        ctx: &AttemptContext,
        call_id: u64,
        hedge: u32,
        admitted: Option<BulkheadPermit<'b>>,
        left: Option<&AtomicBool>,
    ) -> (Sent<T, E>, Option<(Instant, Duration)>)
    where
        C: Classifier<T, E>,
        Fut: Future<Output = Result<T, E>>,
    {
        let p = &*self.inner;
        let (permit, started, timeout) = match admitted {
            Some(permit) => (
                Some(permit),
                started,
                p.attempt_timeout_at(ctx, call_start, started),
            ),
            // (A hedge comes admitted: `hedged` never lets one wait for room.)
            None => match self.admit(call_start, started, ctx).await {
                Ok(admitted) => admitted,
                Err(full) => return (Sent::Rejected(full), None),
            },
        };
        let mut guard = self.inner.guard(ctx, call_id, hedge, started);
        if let Some(left) = left {
            left.store(true, Ordering::Relaxed);
        }
        let sent = match Timeout::starting(make(), started, timeout).await {
            Ok(result) => {
                let verdict = self.classifier.classify(&result);
                Sent::Done(result, verdict)
            }
            Err(elapsed) => Sent::TimedOut(elapsed),
        };
        let mut end = None;
        if permit.is_some() || guard.is_some() || p.health.is_some() {
            let now = Instant::now();
            let latency = now.saturating_duration_since(started);
            end = Some((now, latency));
            let verdict = sent.verdict();
            p.observe(now, &verdict, latency);
            if let Some(permit) = permit {
                // Execution times and failures go to the bulkhead's metrics unless the
                // breaker already keeps them (no need to count every call twice) - but an
                // adaptive limit lives on them.
                if p.breaker.is_none()
                    || p.bulkhead
                        .as_ref()
                        .is_some_and(|b| b.adaptive_limit().is_some())
                {
                    permit.finish_with(&verdict, latency);
                }
            }
            if let Some(g) = guard.take() {
                g.finish(&verdict, latency);
            }
        }
        (sent, end)
    }

    /// Room in the bulkhead (if there is one) for a request to be sent at `started`: the
    /// permit, when the request goes (later than `started` if it waited for room) and its
    /// timeout. The wait for room lasts no longer than the attempt's timeout.
    ///
    /// # Errors
    /// The bulkhead stayed full, or its room came when the deadline had no time left.
    async fn admit<'b>(
        &'b self,
        call_start: Instant,
        started: Instant,
        ctx: &AttemptContext,
    ) -> Result<(Option<BulkheadPermit<'b>>, Instant, Option<Duration>), BulkheadFull> {
        let p = &*self.inner;
        let timeout = p.attempt_timeout_at(ctx, call_start, started);
        let Some(b) = &p.bulkhead else {
            return Ok((None, started, timeout));
        };
        if let Some(permit) = b.try_acquire_quiet() {
            return Ok((Some(permit), started, timeout));
        }
        let permit = b.acquire_after_refusal_for(Some(ctx), timeout).await?;
        let started = Instant::now();
        let timeout = p.attempt_timeout_at(ctx, call_start, started);
        if timeout == Some(Duration::ZERO) {
            // The room came when the deadline had no time left: nothing is sent (a
            // request that cannot succeed, and a fake timeout for health and the budget),
            // as if it never came: a call turned away, not admitted too.
            return Err(permit.turned_away());
        }
        Ok((Some(permit), started, timeout))
    }

    /// One attempt with hedged requests.
    #[allow(clippy::too_many_arguments)]
    async fn hedged<T, E, F, Fut>(
        &self,
        hedge: &Hedge,
        op: &mut F,
        number: u32,
        call_start: Instant,
        attempt_start: Instant,
        ctx: &AttemptContext,
        call_id: u64,
        left: &AtomicBool,
    ) -> Ended<T, E>
    where
        C: Classifier<T, E>,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let p = &*self.inner;
        // The primary waits for its room before anything is made: `op` is called only
        // once a request can go, and the hedge delay counts from when the primary went.
        // Room at once is taken without an await; only a wait for room (boxed: its state
        // would otherwise enlarge every hedged call's future) goes through `admit`.
        let at_once = match &p.bulkhead {
            None => Some(None),
            Some(b) => b.try_acquire_quiet().map(Some),
        };
        let admitted = match at_once {
            Some(room) => Ok((room, attempt_start, None)),
            None => Box::pin(self.admit(call_start, attempt_start, ctx)).await,
        };
        let (mut primary_room, attempt_start) = match admitted {
            Ok((permit, started, _)) => (permit, started),
            Err(full) => {
                let now = Instant::now();
                return Self::end(
                    Sent::Rejected(full),
                    now.saturating_duration_since(attempt_start),
                    Some(now),
                );
            }
        };
        // A hedge never waits for the bulkhead's room (a full bulkhead means the upstream
        // is queueing, where a hedge adds load and wins nothing): the room is asked for
        // before the retry budget's token, and handed to the hedge here; a hedge turned
        // away is no request made, takes no token, gives its share of the hedge budget
        // back at once (`race` counts it first) and is not counted as sent.
        // (A lock, not a cell: the call's future stays `Send`; it is taken only as a hedge
        // fires, never on the primary's path.)
        let room: std::sync::Mutex<Option<BulkheadPermit<'_>>> = std::sync::Mutex::new(None);
        let take_room = || room.lock().ok().and_then(|mut r| r.take());
        let raced = hedge
            .race(
                attempt_start,
                |i| {
                    let admitted = match (i, &p.bulkhead) {
                        // (Launched once: the room taken for it, if any.)
                        (0, _) => Ok(primary_room.take()),
                        (_, None) => Ok(None),
                        (_, Some(b)) => take_room().map_or_else(|| b.try_acquire(), Ok).map(Some),
                    }
                    .map(|permit| (permit, op(Attempt { number, hedge: i })));
                    let started = if i == 0 {
                        attempt_start
                    } else {
                        Instant::now()
                    };
                    async move {
                        let (sent, end) = match admitted {
                            Ok((permit, fut)) => {
                                // The primary tells the retry it carries that it left.
                                let left = (i == 0).then_some(left);
                                self.send(
                                    move || fut,
                                    call_start,
                                    started,
                                    ctx,
                                    call_id,
                                    i,
                                    permit,
                                    left,
                                )
                                .await
                            }
                            Err(full) => (Sent::Rejected(full), None),
                        };
                        let (end, latency) = end.unwrap_or_else(|| {
                            let now = Instant::now();
                            (now, now.saturating_duration_since(started))
                        });
                        if sent.is_final() {
                            // The primary's own latency, or the time to the hedge's answer.
                            let first_answer = if i == 0 {
                                latency
                            } else {
                                end.saturating_duration_since(attempt_start)
                            };
                            Ok((sent, latency, end, first_answer, i))
                        } else {
                            Err((sent, latency, i))
                        }
                    }
                },
                Some(ctx),
                |now| {
                    // No hedge the deadline leaves no time for: it would be sent with a
                    // zero timeout, spend the budgets and record a timeout it never had.
                    if p.attempt_timeout_at(ctx, call_start, now) == Some(Duration::ZERO) {
                        return false;
                    }
                    if let Some(b) = &p.bulkhead {
                        // Turned away, a hedge counts as the bulkhead's rejection (the
                        // pressure an operator should see), not as a request sent.
                        match b.try_acquire() {
                            Ok(permit) => {
                                if let Ok(mut r) = room.lock() {
                                    *r = Some(permit);
                                }
                            }
                            Err(_) => return false,
                        }
                    }
                    // The budget refused it: the room goes back.
                    p.may_hedge(now) || {
                        drop(take_room());
                        false
                    }
                },
                |(sent, _, _)| backs_off(&sent.verdict()),
                |(sent, _, _)| matches!(sent, Sent::Rejected(_)),
            )
            .await;
        match raced {
            Ok(((sent, latency, end, first_answer, winner), at_once, beaten)) => {
                // One latency per answered call: the primary's, or - when a hedge beat
                // it - a lower bound of it (the time to the call's first answer). None
                // for an answer on the first poll, which no hedge could have raced, nor
                // for a primary that had failed before a hedge answered (not slow).
                match (at_once, winner) {
                    (true, _) => {}
                    (false, 0) => hedge.record_latency(end, first_answer),
                    (false, _) if beaten => hedge.record_beaten(end, first_answer),
                    (false, _) => {}
                }
                Self::end(sent, latency, Some(end))
            }
            Err(all) => {
                let mut errors = Vec::new();
                // The answer that goes with the verdict kept, else the last other one.
                let (mut answer, mut other) = (None, None);
                let mut last = None;
                let mut all_rejected = true;
                for (sent, latency, i) in all.errors {
                    // A primary that ran into its timeout in an attempt that failed (no
                    // hedge succeeded) is a latency the hedge has not seen the end of: known only to be longer
                    // than it ran (without it, a predicted delay would never learn that
                    // some requests hang, and never hedge them).
                    if i == 0 && matches!(sent, Sent::TimedOut(_)) {
                        hedge.record_unanswered(Instant::now(), latency);
                    }
                    // The attempt's verdict: the last request's, unless an earlier one
                    // asked to back off (a 429, a Retry-After) and it did not - the retry
                    // decision, the rate limiter and the budget must hear that.
                    let verdict = sent.verdict();
                    let kept = last
                        .as_ref()
                        .is_none_or(|(v, _)| !backs_off(v) || backs_off(&verdict));
                    if kept {
                        last = Some((verdict, latency));
                        if let Some(t) = answer.take() {
                            other = Some(t);
                        }
                    }
                    all_rejected &= matches!(sent, Sent::Rejected(_));
                    match sent {
                        Sent::Done(Ok(t), _) if kept => answer = Some(t),
                        Sent::Done(Ok(t), _) => other = Some(t),
                        Sent::Done(Err(e), _) => errors.push(AttemptError::Inner(e)),
                        Sent::TimedOut(e) => errors.push(AttemptError::Timeout(e)),
                        Sent::Rejected(e) => errors.push(AttemptError::BulkheadFull(e)),
                    }
                }
                let (verdict, latency) = last.unwrap_or((
                    Verdict::Retryable(Failure::new(ErrorKind::Other)),
                    Duration::ZERO,
                ));
                let answer = answer.or(other);
                Ended {
                    verdict,
                    latency,
                    at: None,
                    error: answer
                        .is_none()
                        .then_some(AttemptError::AllHedgesFailed(errors)),
                    answer,
                    rejected: all_rejected,
                }
            }
        }
    }

    fn end<T, E>(sent: Sent<T, E>, latency: Duration, at: Option<Instant>) -> Ended<T, E> {
        let verdict = sent.verdict();
        let (answer, error, rejected) = match sent {
            Sent::Done(Ok(t), _) => (Some(t), None, false),
            Sent::Done(Err(e), _) => (None, Some(AttemptError::Inner(e)), false),
            Sent::TimedOut(e) => (None, Some(AttemptError::Timeout(e)), false),
            Sent::Rejected(e) => (None, Some(AttemptError::BulkheadFull(e)), true),
        };
        Ended {
            verdict,
            latency,
            at,
            answer,
            error,
            rejected,
        }
    }
}

/// A call refused locally before attempt `attempts + 1` (the stop already counted).
fn refused<T, E>(
    attempts: u32,
    reason: StopReason,
    last: AttemptError<E>,
) -> (Result<T, CallError<E>>, CallReport) {
    (
        Err(CallError {
            attempts,
            reason,
            last,
        }),
        CallReport {
            attempts,
            stopped: Some(reason),
        },
    )
}

/// Ends a call after attempt `number` for `reason` (already counted): its last answer if
/// it had one, else the error.
fn give_up<T, E>(
    ended: Ended<T, E>,
    number: u32,
    reason: StopReason,
) -> (Result<T, CallError<E>>, CallReport) {
    let report = CallReport {
        attempts: number,
        stopped: Some(reason),
    };
    match ended.answer {
        Some(t) => (Ok(t), report),
        None => (
            Err(CallError {
                attempts: number,
                reason,
                last: ended
                    .error
                    .unwrap_or_else(|| AttemptError::AllHedgesFailed(Vec::new())),
            }),
            report,
        ),
    }
}

/// Builds a [`Policy`].
pub struct PolicyBuilder<C = ErrorsAreRetryable> {
    target: Arc<str>,
    decider: Option<Arc<dyn RetryDecider>>,
    budget: Option<Arc<dyn RetryBudget>>,
    breaker: Option<CircuitBreaker>,
    bulkhead: Option<Bulkhead>,
    hedge: Option<Hedge>,
    recorder: Arc<dyn Recorder>,
    health_window: Option<Duration>,
    permanent_is_failure: bool,
    label: Option<Arc<str>>,
    explore: Option<Exploration>,
    throttle: Option<AdaptiveThrottle>,
    limiter: Option<CubicRateLimiter>,
    breaker_wait: Option<Duration>,
    decide_refused: bool,
    call_id_seed: Option<u64>,
    classifier: C,
}

impl<C> PolicyBuilder<C> {
    /// Keeps a [`HealthTracker`] over the last `window` (at least 10 ms), so every
    /// attempt's context carries the target's recent failure rate, p95 latency and calls
    /// in flight (for a model deciding retries; see [`crate::health`]). A recording policy
    /// keeps one over [`DEFAULT_HEALTH_WINDOW`] without being asked.
    pub fn track_health(mut self, window: Duration) -> Self {
        self.health_window = Some(window);
        self
    }

    /// Names the policy in its records (`policy`), e.g. the strategy being compared.
    /// Defaults to none.
    pub fn label(mut self, label: impl Into<Arc<str>>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Randomizes retry delays around the decider's choice, recording both (for training
    /// data). Defaults to none.
    pub fn explore(mut self, exploration: Exploration) -> Self {
        self.explore = Some(exploration);
        self
    }

    /// Throttles every attempt with client-side adaptive throttling. Defaults to none.
    pub fn throttle(mut self, throttle: AdaptiveThrottle) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// Sends every attempt, first ones included, through the AWS SDKs' adaptive
    /// client-side rate limiter (off until a 429; then attempts wait for tokens at a rate
    /// that follows CUBIC). Defaults to none.
    pub fn rate_limiter(mut self, limiter: CubicRateLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Retries by `policy`. Defaults to [`RetryRules`]'s defaults (3 attempts,
    /// exponential backoff from 100 ms with full jitter).
    pub fn retry(self, policy: RetryRules) -> Self {
        self.decider(Arc::new(policy))
    }

    /// Retries as `decider` decides (a rule-based or model-driven [`RetryDecider`]).
    pub fn decider(mut self, decider: Arc<dyn RetryDecider>) -> Self {
        self.decider = Some(decider);
        self
    }

    /// Limits retries with `budget`. Defaults to none.
    pub fn budget(mut self, budget: impl RetryBudget + 'static) -> Self {
        self.budget = Some(Arc::new(budget));
        self
    }

    /// Shares `budget` with other policies.
    pub fn shared_budget(mut self, budget: Arc<dyn RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Protects the target with `breaker`. Defaults to none.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Limits concurrent requests with `bulkhead`. Defaults to none.
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Hedges slow requests with `hedge`. Defaults to none.
    pub fn hedge(mut self, hedge: Hedge) -> Self {
        self.hedge = Some(hedge);
        self
    }

    /// Every mechanism driven by one success model, through one handle that can be
    /// swapped at run time ([`SharedModel::swap`]: an embedded service reloading its model
    /// file, and everything below moves to the new model at once):
    ///
    /// - retries decided by the model ([`ModelDecider`]: the wait worth the most, or none);
    /// - a predictive circuit breaker ([`Prediction`]): it opens when a fresh call is
    ///   predicted to succeed less often than the decider's cost of an attempt, and stays
    ///   open until a probe is predicted worth it (its rate trigger only at 100 % failures
    ///   over 2 s, at least 20 calls); a call it refuses goes to the retry decision
    ///   ([`decide_when_refused`](Self::decide_when_refused)), which waits only when
    ///   waiting is worth it;
    /// - an adaptive concurrency limit ([`AdaptiveLimit`], Gradient2) whose queue (up to
    ///   the limit's maximum, each call waiting at most 100 ms) sheds the calls least likely
    ///   to succeed first ([`BulkheadBuilder::shed_by`](crate::bulkhead::BulkheadBuilder::shed_by));
    /// - a predictive hedge ([`HedgeBuilder::predict`](crate::hedge::HedgeBuilder::predict)):
    ///   a request still running is hedged once a hedge is predicted to answer first at
    ///   least as often as not, and the model predicts it likelier to succeed than not;
    /// - the AWS SDKs' retry quota on the retries after timeouts
    ///   ([`RetryQuota::after_timeouts`]): the decider prices a retry by the model's p and
    ///   the load it adds, but a target whose queue has outgrown its callers' timeouts
    ///   still answers a retry more often than not (another replica, a shorter line) while
    ///   every retry lengthens the line for everyone; the quota lets such retries go on
    ///   only as far as the target's successes pay for them (about one timeout in eleven
    ///   answers). On `blips` at twice its load this composition served fewer calls than
    ///   no retries at all (83.4 % against 86.0 %, eight seeds); with the quota 87.0 %.
    ///   It replaces a budget set before `adaptive`, as every part here does;
    /// - the target's health tracked over [`DEFAULT_HEALTH_WINDOW`], for the model.
    ///
    /// Each part can be replaced afterwards (`.decider(..)`, `.breaker(..)`,
    /// `.bulkhead(..)`, `.hedge(..)`, `.budget(..)`), e.g. to give the decider a deadline.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use retrywise::attempt::AttemptContext;
    /// use retrywise::model::SharedModel;
    /// use retrywise::policy::Policy;
    ///
    /// let model = Arc::new(SharedModel::new(Arc::new(|_: &AttemptContext| 0.9)));
    /// let policy = Policy::builder("payments").adaptive(Arc::clone(&model))?.build()?;
    /// let answer = policy.call(|_| async { Ok::<_, std::io::Error>("paid") }).await?;
    /// assert_eq!(answer, "paid");
    /// // A reloaded model: the decider, breaker, bulkhead and hedge all ask it from now on.
    /// model.swap(Arc::new(|_: &AttemptContext| 0.95));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// None in practice (every part's configuration is valid); a [`ConfigError`] if that
    /// ever changes.
    pub fn adaptive(mut self, model: Arc<SharedModel>) -> Result<Self, ConfigError> {
        let m: Arc<dyn SuccessModel> = model;
        self.decider = Some(Arc::new(
            ModelDecider::builder().model(Arc::clone(&m)).build()?,
        ));
        self.breaker = Some(
            CircuitBreaker::builder(Arc::clone(&self.target))
                .failure_rate_threshold(1.0)
                .window(SlidingWindow::Time {
                    duration: Duration::from_secs(2),
                    buckets: 10,
                })
                .minimum_calls(20)
                .open_for(Duration::from_secs(5))
                .predict(Prediction::new(Arc::clone(&m)))
                .build()?,
        );
        let limit = AdaptiveLimit::builder().build()?;
        let queue = limit.bounds().1 as usize;
        self.bulkhead = Some(
            Bulkhead::builder(Arc::clone(&self.target))
                .adaptive(limit)
                .shed_by(Arc::clone(&m), queue)
                .build()?,
        );
        self.hedge = Some(Hedge::builder().predict(m).build()?);
        self.budget = Some(Arc::new(RetryQuota::after_timeouts()));
        self.health_window = Some(DEFAULT_HEALTH_WINDOW);
        self.decide_refused = true;
        Ok(self)
    }

    /// Reports every request sent to `recorder`. Defaults to none.
    pub fn recorder(mut self, recorder: Arc<dyn Recorder>) -> Self {
        self.recorder = recorder;
        self
    }

    /// Draws recorded calls' ids (`call_id`) from `seed` and a counter instead of at random,
    /// so that a replayed run records the same ids (simulations: a split of the records by
    /// call is then the same in every run). Ids stay distinct within the policy; give
    /// policies that record to one place different seeds. Defaults to random ids.
    pub fn call_id_seed(mut self, seed: u64) -> Self {
        self.call_id_seed = Some(seed);
        self
    }

    /// A call the circuit breaker refuses waits until the breaker lets calls through again
    /// (its OPEN duration's end; while HALF_OPEN's probes are all out, another
    /// [`BREAKER_POLL`]) when it can still start within `deadline` of the call's start,
    /// instead of failing at once; the wait sends nothing upstream. With a breaker that
    /// times its openings by a model ([`crate::breaker::Prediction`]), the open duration
    /// is when the target is predicted back, and a call that has time waits for it — the
    /// admission answer "wait, and how long" — rather than failing a call it could still
    /// serve. Defaults to none: a refused call fails fast.
    pub fn wait_for_breaker(mut self, deadline: Duration) -> Self {
        self.breaker_wait = Some(deadline);
        self
    }

    /// A call the circuit breaker refuses goes to the retry decision as a failed attempt
    /// that sent nothing, like the target's last failure (its kind, and the time it took
    /// to fail): the decider may wait
    /// (a model-driven one weighs what waiting is worth, within the deadline, and spreads
    /// the waits of a crowd by the load already booked) or stop, and the call fails with
    /// the open circuit. A wait shorter than the circuit stays open counts from when it
    /// lets calls through again (sooner, the call would only be refused again; counted
    /// from then, the decider's spread keeps the refused from returning at once). A
    /// refusal counts as an attempt in the context and the report.
    /// Defaults to no: a refused call fails fast ([`wait_for_breaker`](Self::wait_for_breaker)
    /// waits for the breaker instead).
    pub fn decide_when_refused(mut self, yes: bool) -> Self {
        self.decide_refused = yes;
        self
    }

    /// Whether permanent failures (4xx) count as failures for the breaker. Defaults to
    /// no: a 404 says nothing about the upstream's health.
    pub fn permanent_failures_trip_breaker(mut self, yes: bool) -> Self {
        self.permanent_is_failure = yes;
        self
    }

    /// Judges results with `classifier`. Defaults to [`ErrorsAreRetryable`].
    pub fn classifier<C2>(self, classifier: C2) -> PolicyBuilder<C2> {
        PolicyBuilder {
            target: self.target,
            decider: self.decider,
            budget: self.budget,
            breaker: self.breaker,
            bulkhead: self.bulkhead,
            hedge: self.hedge,
            recorder: self.recorder,
            health_window: self.health_window,
            permanent_is_failure: self.permanent_is_failure,
            label: self.label,
            explore: self.explore,
            throttle: self.throttle,
            limiter: self.limiter,
            breaker_wait: self.breaker_wait,
            decide_refused: self.decide_refused,
            call_id_seed: self.call_id_seed,
            classifier,
        }
    }

    /// Checks and builds.
    ///
    /// # Errors
    /// An empty target name.
    pub fn build(self) -> Result<Policy<C>, ConfigError> {
        // The names a record carries follow the schema's rules (not empty, at most 256
        // characters, no control characters): a record that breaks them would be refused
        // wherever it is shipped, and its batch with it.
        for (name, value) in [
            ("target", Some(&self.target)),
            ("policy", self.label.as_ref()),
        ] {
            if let (Some(field), Some(v)) = (crate::attempt::schema::field(name), value)
                && let Err(e) = field.check(crate::attempt::schema::Value::Text(v))
            {
                return Err(CHECK.err(name, e.problem));
            }
        }
        if let Some(wait) = self.breaker_wait {
            CHECK.bounded("wait_for_breaker", wait)?;
        }
        let decider: Arc<dyn RetryDecider> = match self.decider {
            Some(d) => d,
            None => Arc::new(RetryRules::builder().build()?),
        };
        let recording = self.recorder.enabled();
        let health = match self.health_window {
            Some(w) => Some(HealthTracker::new(w)?),
            None if recording => Some(HealthTracker::new(DEFAULT_HEALTH_WINDOW)?),
            None => None,
        };
        Ok(Policy {
            inner: Arc::new(Inner {
                first: AttemptContext::first(Arc::clone(&self.target)),
                target: self.target,
                decider,
                budget: self.budget,
                breaker: self.breaker,
                bulkhead: self.bulkhead,
                hedge: self.hedge,
                health,
                recorder: self.recorder,
                recording,
                permanent_is_failure: self.permanent_is_failure,
                label: self.label,
                explore: self.explore,
                throttle: self.throttle,
                limiter: self.limiter,
                anchor: Instant::now(),
                wall_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                counters: Counters::default(),
                breaker_wait: self.breaker_wait,
                decide_refused: self.decide_refused,
                last_failure: std::sync::atomic::AtomicU8::new(u8::MAX),
                last_failure_micros: std::sync::atomic::AtomicU64::new(0),
                call_ids: self
                    .call_id_seed
                    .map(|seed| (seed, std::sync::atomic::AtomicU64::new(0))),
            }),
            classifier: self.classifier,
        })
    }
}

#[cfg(test)]
mod tests;

/// Whether `verdict` is a failure that asked the caller to back off: a 429, or any answer
/// with a Retry-After.
fn backs_off(verdict: &Verdict) -> bool {
    verdict
        .failure()
        .is_some_and(|f| f.retry_after.is_some() || f.kind == ErrorKind::Http429)
}
