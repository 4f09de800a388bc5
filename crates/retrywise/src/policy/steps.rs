//! The steps of a call, shared by [`Policy::call`](super::Policy::call) and the tower
//! retry layer, so that both budget, throttle, decide, explore, track health and record
//! the same way:
//!
//! 1. [`Inner::begin`] — the call is admitted by the throttle, and then deposited in the
//!    budget (a call the throttle refuses is sent nowhere, and earns no retries);
//! 2. each request sent is recorded through a [`RecordGuard`] and observed by the health
//!    tracker ([`Inner::observe`]);
//! 3. [`Inner::settle`] — the attempt's verdict goes to the breaker, the budget (only what
//!    the classifier calls retryable drains a token bucket, as gRFC A6 says) and the
//!    throttle;
//! 4. [`Inner::plan_retry`] — after a retryable failure: the next attempt's context with the
//!    target's health, the decider's wait, exploration, the throttle and the budget; or why
//!    the call stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::attempt::{AttemptContext, AttemptRecord, ErrorKind, Failure, Outcome, Verdict};
use crate::breaker::{CallOutcome, CircuitBreaker, CircuitOpen, Permit};
use crate::budget::{AdaptiveThrottle, CubicRateLimiter, RetryBudget};
use crate::bulkhead::Bulkhead;
use crate::health::{Ended, HealthTracker};
use crate::hedge::Hedge;
use crate::recorder::Recorder;
use crate::retry::{Decision, Exploration, RetryDecider, StopReason};

/// Counted on the failure path only, so successful calls pay nothing for them.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) retries: AtomicU64,
    pub(super) failed_attempts: AtomicU64,
    pub(super) stops: [AtomicU64; StopReason::ALL.len()],
}

/// A policy's mechanisms and state, shared by its clones.
pub(crate) struct Inner {
    pub(super) target: Arc<str>,
    /// The context of every first attempt; cloned only when a call fails or is recorded.
    pub(crate) first: AttemptContext,
    pub(crate) decider: Arc<dyn RetryDecider>,
    pub(super) budget: Option<Arc<dyn RetryBudget>>,
    pub(super) breaker: Option<CircuitBreaker>,
    pub(super) bulkhead: Option<Bulkhead>,
    pub(super) hedge: Option<Hedge>,
    /// The target's health: the one source of the health fields of every context.
    pub(crate) health: Option<HealthTracker>,
    pub(super) recorder: Arc<dyn Recorder>,
    /// `recorder.enabled()`, asked once.
    pub(super) recording: bool,
    /// The policy's name in records.
    pub(super) label: Option<Arc<str>>,
    pub(super) explore: Option<Exploration>,
    pub(super) throttle: Option<AdaptiveThrottle>,
    /// The AWS SDKs' adaptive client-side rate limiter: every attempt waits for a token.
    pub(crate) limiter: Option<CubicRateLimiter>,
    /// Wall-clock time (ms since the epoch) at `anchor`: records are stamped with
    /// `wall_ms + (start - anchor)`, one clock read fewer than `SystemTime::now()`, and in
    /// step with tokio's virtual clock in simulations.
    pub(super) anchor: Instant,
    pub(super) wall_ms: u64,
    pub(super) permanent_is_failure: bool,
    pub(super) counters: Counters,
    /// Recorded calls' ids drawn from this seed and a counter instead of at random
    /// ([`super::PolicyBuilder::call_id_seed`]).
    pub(super) call_ids: Option<(u64, std::sync::atomic::AtomicU64)>,
    /// A call the breaker refuses waits for it while it can still start within this long
    /// of the call's start ([`super::PolicyBuilder::wait_for_breaker`]); none: it fails.
    pub(super) breaker_wait: Option<Duration>,
    /// A call the breaker refuses goes to the retry decision
    /// ([`super::PolicyBuilder::decide_when_refused`]).
    pub(super) decide_refused: bool,
    /// The kind of the last retryable failure (its index in [`ErrorKind::ALL`]; `u8::MAX`
    /// before any): what a refused call is taken to have failed with.
    pub(super) last_failure: std::sync::atomic::AtomicU8,
    /// How long the last retryable failure took to fail, in microseconds.
    pub(super) last_failure_micros: AtomicU64,
}

impl Inner {
    /// Starts a call at `start`: asks the throttle, and deposits a call it admits in the
    /// budget (one it refuses is sent nowhere: it earns no retries). Returns the call's id
    /// in records (0 when nothing is recorded).
    #[inline]
    pub(crate) fn begin(&self, start: Instant) -> Result<u64, StopReason> {
        if let Some(t) = &self.throttle
            && !t.admit(start)
        {
            self.count_stop(StopReason::Throttled);
            return Err(StopReason::Throttled);
        }
        if let Some(b) = &self.budget {
            b.deposit(start);
        }
        Ok(match (&self.call_ids, self.recording) {
            (_, false) => 0,
            (None, true) => rand::random::<u64>() >> 11,
            // SplitMix64 of a seeded counter: distinct, and the same in every run.
            (Some((seed, n)), true) => {
                let mut z = seed.wrapping_add(
                    n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) >> 11
            }
        })
    }

    /// The timeout of the attempt in `ctx` sent at `at`, for the call begun at `start`:
    /// the decider's, counted from when it is really sent. Waits the plan did not include
    /// (the rate limiter's, the breaker's) took time from the deadline: then the context is
    /// read as of `at`. `Some(ZERO)`: no time is left, and nothing may be sent.
    pub(crate) fn attempt_timeout_at(
        &self,
        ctx: &AttemptContext,
        start: Instant,
        at: Instant,
    ) -> Option<Duration> {
        let planned = ctx.elapsed.saturating_add(ctx.delay);
        let actual = at.saturating_duration_since(start);
        // (Within a millisecond of the plan: the decision's own time; read as planned, so
        // that the usual attempt copies no context.)
        if actual <= planned.saturating_add(Duration::from_millis(1)) {
            return self.decider.attempt_timeout(ctx);
        }
        let mut late = ctx.clone();
        late.elapsed = actual;
        late.delay = Duration::ZERO;
        self.decider.attempt_timeout(&late)
    }

    /// A breaker permit for the next attempt, if the policy has a breaker.
    #[inline]
    pub(super) fn permit(&self) -> Result<Option<Permit<&CircuitBreaker>>, CircuitOpen> {
        self.breaker
            .as_ref()
            .map(CircuitBreaker::try_acquire)
            .transpose()
    }

    /// [`permit`](Self::permit) for an attempt the breaker refused that asks again while
    /// it waits for the circuit: a refusal again is not counted.
    pub(super) fn permit_again(&self) -> Result<Option<Permit<&CircuitBreaker>>, CircuitOpen> {
        self.breaker
            .as_ref()
            .map(CircuitBreaker::try_acquire_again)
            .transpose()
    }

    /// Tells the breaker (through its permit), the budget and the throttle how an attempt
    /// ended. A request the bulkhead refused was never sent: it tells them nothing. A
    /// permanent failure (a 400) is an answer, not a sign of trouble: it takes no token
    /// from the budget (gRFC A6) and trips the breaker only if configured to. A breaker
    /// that consults a model is told of a retryable failure with the retry after it, as
    /// the decider would see it (`call_start`: when the call began), to time its opening
    /// by ([`Permit::record_failure_before`]).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn settle(
        &self,
        ctx: &AttemptContext,
        permit: Option<Permit<&CircuitBreaker>>,
        verdict: &Verdict,
        latency: Duration,
        at: Option<Instant>,
        call_start: Instant,
        rejected: bool,
    ) {
        if rejected {
            return; // a dropped permit counts as ignored
        }
        if let Some(l) = &self.limiter {
            let throttled = matches!(verdict, Verdict::Retryable(f) if f.kind == crate::attempt::ErrorKind::Http429);
            l.on_response(Instant::now(), throttled);
        }
        if let Verdict::Retryable(f) = verdict
            && self.decide_refused
            && let Some(i) = ErrorKind::ALL.iter().position(|k| *k == f.kind)
        {
            self.last_failure.store(i as u8, Ordering::Relaxed);
            self.last_failure_micros.store(
                u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        if let Some(permit) = permit {
            let predicts = self
                .breaker
                .as_ref()
                .is_some_and(|b| b.prediction().is_some());
            match verdict {
                Verdict::Retryable(f) if predicts => {
                    let now = at.unwrap_or_else(Instant::now);
                    let elapsed = now.saturating_duration_since(call_start);
                    let mut retry = ctx.next(f, latency, elapsed);
                    self.fill_health(&mut retry, now);
                    permit.record_failure_before(latency, at, &retry);
                }
                _ => {
                    let outcome = match verdict {
                        Verdict::Success => CallOutcome::Success,
                        Verdict::Retryable(_) => CallOutcome::Failure,
                        Verdict::Permanent(_) if self.permanent_is_failure => CallOutcome::Failure,
                        Verdict::Permanent(_) => permit.permanent_outcome(),
                    };
                    match at {
                        Some(at) => permit.record_at(outcome, latency, at),
                        None => permit.record(outcome, latency),
                    }
                }
            }
        }
        if let Some(b) = &self.budget {
            match verdict {
                Verdict::Success => b.record_for(ctx, true),
                Verdict::Retryable(_) => b.record_for(ctx, false),
                Verdict::Permanent(_) => {}
            }
        }
        if let Some(t) = &self.throttle
            && !matches!(verdict, Verdict::Retryable(_))
        {
            t.accepted(Instant::now());
        }
    }

    /// Fills `ctx` with the target's health as of `now`, from the health tracker: the
    /// failure rate, p95 latency and calls in flight of the attempts that ended within its
    /// window, the window, the recent failure rate, the permanent-failure rate and the time
    /// since the last success. Without a tracker, the health fields stay unknown.
    pub(crate) fn fill_health(&self, ctx: &mut AttemptContext, now: Instant) {
        let Some(h) = &self.health else {
            return;
        };
        h.snapshot(now).apply(ctx);
    }

    /// A request ended at `now` after `latency`: the health tracker counts it. A permanent
    /// failure (a 404, say) is an answer from a healthy target.
    #[inline]
    pub(crate) fn observe(&self, now: Instant, verdict: &Verdict, latency: Duration) {
        if let Some(h) = &self.health {
            let ended = match verdict {
                Verdict::Success => Ended::Success,
                Verdict::Retryable(_) => Ended::Failure,
                Verdict::Permanent(_) => Ended::Permanent,
            };
            h.record(now, ended, latency);
        }
    }

    /// After attempt `ctx` failed with `failure`, taking `latency`, at `now` in a call that
    /// started at `call_start`: the context of the next attempt, its `delay` the wait
    /// before it — or why there is none.
    ///
    /// The decider sees the target's health and the previous wait; its wait may be
    /// explored; a wait shorter than `not_before` (what is left of an open circuit's
    /// refusal) is pushed past it, keeping the decider's spread so that the refused do not
    /// all return at once, and a retry pushed past the deadline is not made; the throttle
    /// and the budget have the last word, so that none of them is paid for a retry that
    /// is not made.
    pub(crate) fn plan_retry(
        &self,
        ctx: &AttemptContext,
        failure: &Failure,
        latency: Duration,
        call_start: Instant,
        now: Instant,
        not_before: Option<Duration>,
    ) -> Result<AttemptContext, StopReason> {
        self.counters
            .failed_attempts
            .fetch_add(1, Ordering::Relaxed);
        let mut next = ctx.next(failure, latency, now.saturating_duration_since(call_start));
        self.fill_health(&mut next, now);
        let (decision, propensity) = self.decider.decide_explored(&next);
        let planned = match decision {
            Decision::Stop(reason) => return Err(self.stopped(reason)),
            Decision::Retry(d) => d,
        };
        next.explore_propensity = propensity;
        let mut delay = planned;
        if let Some(x) = &self.explore
            && let Some(explored) = x.apply(planned)
        {
            // Never before a Retry-After the decider honoured: exploring what waiting does
            // does not break what the server asked for (and a decider that honours it
            // never weighs an earlier retry, so there is nothing to learn there).
            let explored = match next.retry_after {
                Some(asked) if planned >= asked && !x.explores_below_retry_after() => {
                    explored.max(asked)
                }
                _ => explored,
            };
            // Keep the explored wait only if the next attempt still has time to run.
            next.delay = explored;
            if self.decider.attempt_timeout(&next) != Some(Duration::ZERO) {
                delay = explored;
                next.planned_delay = Some(planned);
            }
        }
        // A retry refused here is not made, and one explored starts after its explored
        // wait: the decider moves what it booked for it (a calendar of retries).
        let refused = |next: &AttemptContext, reason| {
            self.decider.replanned(next, now, planned, None);
            Err(self.stopped(reason))
        };
        if let Some(r) = not_before
            && delay < r
        {
            delay = delay.saturating_add(r);
            next.delay = delay;
            if self.decider.attempt_timeout(&next) == Some(Duration::ZERO) {
                return refused(&next, StopReason::Deadline);
            }
        }
        // The budget first: a retry it refuses is no request for the throttle to count
        // (each would raise the throttle's odds of refusing first attempts); one the
        // throttle then refuses gives the budget back.
        if let Some(b) = &self.budget
            && !b.withdraw_for(now, &next)
        {
            return refused(&next, StopReason::BudgetExhausted);
        }
        if let Some(t) = &self.throttle
            && !t.admit(now)
        {
            if let Some(b) = &self.budget {
                b.refund(now, &next);
            }
            return refused(&next, StopReason::Throttled);
        }
        if delay != planned {
            self.decider.replanned(&next, now, planned, Some(delay));
        }
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target_name = %self.target,
            attempt = ctx.attempt,
            error = %failure.kind,
            delay_ms = delay.as_secs_f64() * 1e3,
            "retrying"
        );
        next.delay = delay;
        Ok(next)
    }

    /// A retry planned at `decided_at` ([`plan_retry`](Self::plan_retry)) will not be
    /// sent (the call stopped before it, or was dropped while it waited): the budget gets
    /// back what it paid, and the decider's calendar forgets it.
    pub(crate) fn unsent(&self, decided_at: Instant, next: &AttemptContext) {
        self.counters.retries.fetch_sub(1, Ordering::Relaxed);
        if let Some(b) = &self.budget {
            b.refund(decided_at, next);
        }
        self.decider.replanned(next, decided_at, next.delay, None);
    }

    /// A rate limiter's token for the attempt about to be sent at `now` (whether one was
    /// taken: none while the limiter is off, or without one), or how long until one is
    /// due (sleep, then ask again).
    pub(crate) fn limit_taken(&self, now: Instant) -> Result<bool, Duration> {
        match &self.limiter {
            None => Ok(false),
            Some(l) => l.take(now),
        }
    }

    /// Gives back the rate limiter's token taken (`taken`) for an attempt that was not
    /// sent.
    pub(crate) fn unlimit(&self, taken: bool) {
        if taken && let Some(l) = &self.limiter {
            l.give_back();
        }
    }

    /// Whether a hedge may be sent now: the budget, if any, must allow it (gRFC A6
    /// throttles hedges like retries).
    pub(super) fn may_hedge(&self, now: Instant) -> bool {
        self.budget.as_ref().is_none_or(|b| b.withdraw(now))
    }

    /// The kind of the last retryable failure ([`ErrorKind::Other`] before any) and how
    /// long it took.
    pub(super) fn last_failure(&self) -> (ErrorKind, Duration) {
        let kind = ErrorKind::ALL
            .get(usize::from(self.last_failure.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(ErrorKind::Other);
        let took = Duration::from_micros(self.last_failure_micros.load(Ordering::Relaxed));
        (kind, took)
    }

    /// Counts an attempt that failed with a permanent error, and the stop it makes
    /// (`Policy::call` and the retry layer alike).
    pub(crate) fn not_retryable(&self) -> StopReason {
        self.counters
            .failed_attempts
            .fetch_add(1, Ordering::Relaxed);
        self.stopped(StopReason::NotRetryable)
    }

    /// Counts a stop, logs it, and returns its reason.
    pub(crate) fn stopped(&self, reason: StopReason) -> StopReason {
        self.count_stop(reason);
        reason
    }

    fn count_stop(&self, reason: StopReason) {
        if let Some(i) = StopReason::ALL.iter().position(|r| *r == reason) {
            self.counters.stops[i].fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(target_name = %self.target, reason = %reason, "giving up");
    }

    /// Starts recording a request made in `ctx` at `started`, if the policy records.
    #[inline]
    pub(crate) fn guard(
        self: &Arc<Self>,
        ctx: &AttemptContext,
        call_id: u64,
        hedge: u32,
        started: Instant,
    ) -> Option<RecordGuard> {
        if !self.recording {
            return None;
        }
        Some(self.record_guard(ctx, call_id, hedge, started))
    }

    #[cold]
    fn record_guard(
        self: &Arc<Self>,
        ctx: &AttemptContext,
        call_id: u64,
        hedge: u32,
        started: Instant,
    ) -> RecordGuard {
        let mut ctx = ctx.clone();
        // Retry contexts were filled when the retry was decided; a first attempt's health
        // is the tracker's as the request starts.
        if ctx.health_window.is_none() {
            self.fill_health(&mut ctx, started);
        }
        RecordGuard {
            inner: Arc::clone(self),
            ctx: Some(ctx),
            call_id,
            hedge,
            started,
        }
    }
}

/// Records a request that was sent; if dropped before [`finish`](Self::finish) (a hedge
/// that lost, a call abandoned by its caller), records it as cancelled.
pub(crate) struct RecordGuard {
    inner: Arc<Inner>,
    /// Taken when the record is made: a guard records once.
    ctx: Option<AttemptContext>,
    call_id: u64,
    hedge: u32,
    started: Instant,
}

impl RecordGuard {
    fn record(&mut self, verdict: &Verdict, latency: Duration, outcome: Option<Outcome>) {
        let Some(ctx) = self.ctx.take() else {
            return;
        };
        let p = &*self.inner;
        let since = self.started.saturating_duration_since(p.anchor);
        let started_at_ms = p
            .wall_ms
            .saturating_add(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        let mut rec = AttemptRecord::new(
            self.call_id,
            self.hedge,
            started_at_ms,
            ctx,
            verdict,
            latency,
        );
        if let Some(o) = outcome {
            rec.outcome = o;
        }
        rec.policy = p.label.clone();
        p.recorder.record(rec);
    }

    /// The request ended with `verdict` after `latency`.
    pub(crate) fn finish(mut self, verdict: &Verdict, latency: Duration) {
        self.record(verdict, latency, None);
    }

    /// The request was never sent (refused on this side): nothing is recorded.
    #[cfg(feature = "tower")]
    pub(crate) fn discard(mut self) {
        self.ctx = None;
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if self.ctx.is_none() {
            return;
        }
        let latency = Instant::now().saturating_duration_since(self.started);
        self.record(&Verdict::Success, latency, Some(Outcome::Cancelled));
    }
}
