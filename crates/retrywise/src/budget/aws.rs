//! The AWS SDKs' retry modes: the `standard` mode's retry quota and the `adaptive` mode's
//! client-side rate limiter (as the SDKs specify them; botocore's `retries/` is the
//! reference this follows).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::attempt::{AttemptContext, ErrorKind};
use crate::error::{Check, ConfigError};

use super::RetryBudget;

const QUOTA: Check = Check::new("retry_quota");

/// The AWS SDKs' retry quota (`standard` retry mode): a pool of 500 units; a retry costs
/// 5 (10 after a timeout) and is refused when the pool cannot pay; a call that succeeds on
/// its first attempt puts 1 back, a retry that succeeds puts back what it cost. Under an
/// outage about 100 retries drain the pool and retries stop until successes refill it.
///
/// [`after_timeouts`](Self::after_timeouts) charges only the retries after a timeout — the
/// failure whose work the target may still be doing, and the one an overloaded target
/// answers with: what the model-driven policy ([`crate::policy::PolicyBuilder::adaptive`])
/// uses, since it prices every other retry itself.
///
/// Lock-free: the pool is one atomic counter, and one more counts the retries refused
/// while it is dry. Running dry is logged (info, as a circuit breaker's state changes) when
/// the first retry is refused, and the refill once the pool is back to half its capacity
/// (or to the dearest retry, if that is more), with the retries refused meanwhile — a pool
/// hovering near empty, refusing and paying by turns, logs neither again.
#[derive(Debug)]
pub struct RetryQuota {
    capacity: u32,
    retry_cost: u32,
    timeout_cost: u32,
    available: AtomicU32,
    /// Retries (and hedges) refused since the pool was last back at `refill_at`; 0 while
    /// it is not dry.
    refused: AtomicU64,
    /// Where a dry pool counts as refilled: half the capacity, or the dearest retry.
    refill_at: u32,
}

impl Default for RetryQuota {
    /// The SDKs' constants: 500 units, 5 per retry, 10 per retry after a timeout.
    fn default() -> Self {
        Self::full(500, 5, 10)
    }
}

impl RetryQuota {
    /// A full quota of `capacity` units; a retry costs `retry_cost`, `timeout_cost` after
    /// a timeout. A `retry_cost` of 0 makes every retry but those after timeouts free; a
    /// hedge (asked for without a cause) then costs `timeout_cost`, see
    /// [`after_timeouts`](Self::after_timeouts).
    ///
    /// # Errors
    /// A zero capacity or timeout cost, or a cost above the capacity.
    pub fn new(capacity: u32, retry_cost: u32, timeout_cost: u32) -> Result<Self, ConfigError> {
        QUOTA.at_least_one("capacity", u64::from(capacity))?;
        QUOTA.at_least_one("timeout_cost", u64::from(timeout_cost))?;
        for (field, cost) in [("retry_cost", retry_cost), ("timeout_cost", timeout_cost)] {
            if cost > capacity {
                return Err(QUOTA.err(field, format!("{cost} is above the capacity {capacity}")));
            }
        }
        Ok(Self::full(capacity, retry_cost, timeout_cost))
    }

    /// A full quota of checked values.
    fn full(capacity: u32, retry_cost: u32, timeout_cost: u32) -> Self {
        Self {
            capacity,
            retry_cost,
            timeout_cost,
            available: AtomicU32::new(capacity),
            refused: AtomicU64::new(0),
            refill_at: capacity.div_ceil(2).max(retry_cost).max(timeout_cost),
        }
    }

    /// The SDKs' quota (500 units, 10 per retry after a timeout, 1 back for a call that
    /// succeeds at once) charged only for retries after a timeout; every other retry is
    /// free. Retries after timeouts then go on while timeouts stay under about one answer
    /// in eleven (each success puts back a tenth of one), after a burst of 50; a target
    /// that times out more — an overloaded one, whose queue has outgrown the callers'
    /// timeouts — gets no more retries of them than its successes pay for. A hedge, asked
    /// for without a cause ([`RetryBudget::withdraw`]), costs what a retry after a timeout
    /// does: it is sent because its attempt ran past the hedge delay, and an overloaded
    /// target's slow answers draw hedges as they draw timeouts.
    pub fn after_timeouts() -> Self {
        Self::full(500, 0, 10)
    }

    /// The units left.
    pub fn available(&self) -> u32 {
        self.available.load(Ordering::Relaxed)
    }

    /// Whether the quota has refused a retry or hedge since it was last back at half its
    /// capacity (or the dearest retry): a hysteresis, so it stays true while a pool near
    /// empty pays for some retries and refuses others.
    pub fn exhausted(&self) -> bool {
        self.refused.load(Ordering::Relaxed) > 0
    }

    /// What a retry after `error` costs.
    fn cost(&self, error: Option<ErrorKind>) -> u32 {
        if error == Some(ErrorKind::Timeout) {
            self.timeout_cost
        } else {
            self.retry_cost
        }
    }

    /// Takes `cost` units if the quota has them.
    fn take(&self, cost: u32) -> bool {
        let ok = cost == 0
            || self
                .available
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                    a.checked_sub(cost)
                })
                .is_ok();
        if !ok && self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::info!(
                cost,
                capacity = self.capacity,
                "retry quota exhausted: retries it charges are refused until successes pay for them"
            );
        }
        ok
    }

    /// Puts `units` back, up to the capacity.
    fn give(&self, units: u32) {
        let cap = self.capacity;
        // Err (nothing to put back) when the quota is already full: then it is refilled
        // too (a refusal counted while another call's success filled it ends there).
        let after = match self
            .available
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                (a < cap).then(|| a.saturating_add(units).min(cap))
            }) {
            Ok(before) => before.saturating_add(units).min(cap),
            Err(full) => full,
        };
        if after >= self.refill_at && self.refused.load(Ordering::Relaxed) > 0 {
            let refused = self.refused.swap(0, Ordering::Relaxed);
            if refused > 0 {
                tracing::info!(
                    available = after,
                    refused,
                    "retry quota refilled to half its capacity"
                );
            }
        }
    }
}

impl RetryBudget for RetryQuota {
    fn deposit(&self, _now: Instant) {}

    /// A retry of unknown cause costs the plain retry cost — or, when only timeouts are
    /// charged ([`after_timeouts`](RetryQuota::after_timeouts)), the timeout cost: a policy
    /// asks without a cause for a hedge, sent because its attempt ran past the hedge
    /// delay, and an overloaded target's slow answers draw hedges as they draw timeouts.
    fn withdraw(&self, _now: Instant) -> bool {
        self.take(if self.retry_cost == 0 {
            self.timeout_cost
        } else {
            self.retry_cost
        })
    }

    fn withdraw_for(&self, _now: Instant, next: &AttemptContext) -> bool {
        self.take(self.cost(next.error))
    }

    fn refund(&self, _withdrawn_at: Instant, next: &AttemptContext) {
        let cost = self.cost(next.error);
        if cost > 0 {
            self.give(cost);
        }
    }

    fn record_for(&self, ctx: &AttemptContext, success: bool) {
        if !success {
            return;
        }
        // A first attempt puts one unit back; a retry what it cost.
        let back = if ctx.attempt <= 1 {
            1
        } else {
            self.cost(ctx.error)
        };
        if back > 0 {
            self.give(back);
        }
    }
}

/// The AWS SDKs' client-side rate limiter (`adaptive` retry mode).
///
/// Off until the first throttling answer (a 429). From then on every attempt, first ones
/// included, takes a token from a bucket whose fill rate follows CUBIC: a throttling
/// answer sets the rate to 0.7 × the rate measured (the last rate before the cut is
/// remembered as `W_max`), and every other answer grows it along
/// `0.4·(t − K)³ + W_max`, `K = ∛(W_max·0.3/0.4)`, never above twice the measured send
/// rate. The send rate is measured in half-second buckets, smoothed by 0.8. The fill rate
/// is at least 0.5 per second.
///
/// [`try_acquire`](Self::try_acquire) takes a token for an attempt or says how long until
/// one is due; [`on_response`](Self::on_response) reports each answer.
#[derive(Debug)]
pub struct CubicRateLimiter {
    origin: Instant,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    enabled: bool,
    // The token bucket. Capacity may go below zero: reservations made ahead of time.
    fill_rate: f64,
    max_capacity: f64,
    capacity: f64,
    last_refill: f64,
    // CUBIC.
    w_max: f64,
    k: f64,
    last_throttle: f64,
    // The measured send rate.
    measured: f64,
    count: f64,
    last_bucket: f64,
}

const BETA: f64 = 0.7;
const SCALE: f64 = 0.4;
const MIN_RATE: f64 = 0.5;
const SMOOTHING: f64 = 0.8;
const BUCKET_S: f64 = 0.5;
const MAX_ADJUST: f64 = 2.0;

fn zero_point(w_max: f64) -> f64 {
    (w_max * (1.0 - BETA) / SCALE).cbrt()
}

impl Default for CubicRateLimiter {
    fn default() -> Self {
        Self::starting_at(Instant::now())
    }
}

impl CubicRateLimiter {
    /// A limiter whose clock starts at `origin` (the SDKs start `W_max` at 0.5/s).
    pub fn starting_at(origin: Instant) -> Self {
        Self {
            origin,
            state: Mutex::new(LimiterState {
                enabled: false,
                fill_rate: MIN_RATE,
                max_capacity: 1.0,
                capacity: 0.0,
                last_refill: 0.0,
                w_max: MIN_RATE,
                k: zero_point(MIN_RATE),
                last_throttle: 0.0,
                measured: 0.0,
                count: 0.0,
                last_bucket: 0.0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        // The state holds plain numbers, valid whatever a panicking holder left.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn secs(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.origin).as_secs_f64()
    }

    /// Whether a throttling answer has switched it on.
    pub fn enabled(&self) -> bool {
        self.lock().enabled
    }

    /// The current fill rate, tokens per second.
    pub fn rate(&self) -> f64 {
        self.lock().fill_rate
    }

    /// Takes a token for an attempt about to be sent at `now`, or says how long until one
    /// is due at the current rate: the caller sleeps that long and asks again (so a rate
    /// that grows meanwhile serves it sooner, as the SDKs' waiting callers are woken when
    /// the rate changes). Always a token while the limiter is off.
    ///
    /// # Errors
    /// The wait until a token is due, when none is there.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        self.take(now).map(|_| ())
    }

    /// [`try_acquire`](Self::try_acquire), saying whether a token was taken (none is while
    /// the limiter is off): what [`give_back`](Self::give_back) may return.
    pub(crate) fn take(&self, now: Instant) -> Result<bool, Duration> {
        let t = self.secs(now);
        let mut s = self.lock();
        if !s.enabled {
            return Ok(false);
        }
        s.refill(t);
        // (A token due after exactly the wait it announced may fall short of 1 by the
        // rounding of that wait to nanoseconds.)
        if s.capacity >= 1.0 - 1e-6 {
            s.capacity -= 1.0;
            Ok(true)
        } else {
            let due = (1.0 - s.capacity) / s.fill_rate;
            // At least a microsecond, so that a caller that sleeps it finds the token.
            Err(Duration::from_secs_f64(due.clamp(1e-6, 3600.0)))
        }
    }

    /// Gives back a token taken for an attempt that was then not sent (an open circuit
    /// refused it): tokens pace requests sent, and one no request used is not spent. Only
    /// for a token taken (`take` said so): one taken while the limiter was off is none.
    pub(crate) fn give_back(&self) {
        let mut s = self.lock();
        if s.enabled {
            s.capacity = (s.capacity + 1.0).min(s.max_capacity);
        }
    }

    /// An answer arrived at `now`; `throttled` when it was a throttling error (a 429).
    pub fn on_response(&self, now: Instant, throttled: bool) {
        let t = self.secs(now);
        let mut s = self.lock();
        // The send rate, per half-second bucket.
        let bucket = (t / BUCKET_S).floor() * BUCKET_S;
        s.count += 1.0;
        if bucket > s.last_bucket {
            let rate = s.count / (bucket - s.last_bucket);
            s.measured = rate * SMOOTHING + s.measured * (1.0 - SMOOTHING);
            s.count = 0.0;
            s.last_bucket = bucket;
        }
        let new_rate = if throttled {
            let rate = if s.enabled {
                s.measured.min(s.fill_rate)
            } else {
                s.measured
            };
            s.w_max = rate;
            s.k = zero_point(rate);
            s.last_throttle = t;
            s.enabled = true;
            rate * BETA
        } else {
            SCALE * (t - s.last_throttle - s.k).powi(3) + s.w_max
        };
        let limited = new_rate.min(MAX_ADJUST * s.measured);
        s.refill(t);
        s.fill_rate = limited.max(MIN_RATE);
        s.max_capacity = limited.max(1.0);
        s.capacity = s.capacity.min(s.max_capacity);
    }
}

impl LimiterState {
    fn refill(&mut self, t: f64) {
        let dt = (t - self.last_refill).max(0.0);
        self.capacity = (self.capacity + dt * self.fill_rate).min(self.max_capacity);
        // Never back: a caller that read the clock before another took the lock would
        // otherwise have the next refill credit the time between them twice.
        self.last_refill = self.last_refill.max(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn after(kind: ErrorKind, attempt: u32) -> AttemptContext {
        let mut c = AttemptContext::first("t");
        c.attempt = attempt;
        c.error = Some(kind);
        c
    }

    #[test]
    fn a_hundred_retries_drain_the_quota_and_successes_refill_it() {
        let q = RetryQuota::default();
        let now = Instant::now();
        let retry = after(ErrorKind::Http503, 2);
        for _ in 0..100 {
            assert!(q.withdraw_for(now, &retry));
        }
        assert_eq!(q.available(), 0);
        assert!(!q.withdraw_for(now, &retry));
        // A successful retry puts back its cost; a first attempt one unit.
        q.record_for(&retry, true);
        assert_eq!(q.available(), 5);
        q.record_for(&AttemptContext::first("t"), true);
        assert_eq!(q.available(), 6);
        q.record_for(&retry, false);
        assert_eq!(q.available(), 6);
    }

    #[test]
    fn a_retry_after_a_timeout_costs_double() {
        let q = RetryQuota::new(20, 5, 10).unwrap();
        let now = Instant::now();
        assert!(q.withdraw_for(now, &after(ErrorKind::Timeout, 2)));
        assert_eq!(q.available(), 10);
        assert!(q.withdraw_for(now, &after(ErrorKind::Timeout, 3)));
        assert!(!q.withdraw_for(now, &after(ErrorKind::Timeout, 3)));
        q.record_for(&after(ErrorKind::Timeout, 3), true);
        assert_eq!(q.available(), 10);
    }

    #[test]
    fn the_timeouts_quota_charges_only_retries_after_timeouts() {
        let q = RetryQuota::after_timeouts();
        let now = Instant::now();
        // Any number of retries after other failures: free.
        for kind in [ErrorKind::Http503, ErrorKind::Reset, ErrorKind::Connect] {
            for _ in 0..1000 {
                assert!(q.withdraw_for(now, &after(kind, 2)));
            }
        }
        assert_eq!(q.available(), 500);
        // Fifty retries after timeouts drain it.
        for _ in 0..50 {
            assert!(q.withdraw_for(now, &after(ErrorKind::Timeout, 2)));
        }
        assert!(!q.withdraw_for(now, &after(ErrorKind::Timeout, 2)));
        assert!(q.withdraw_for(now, &after(ErrorKind::Http5xx, 2)));
        // Ten calls that succeed at once pay for the next one.
        for _ in 0..9 {
            q.record_for(&AttemptContext::first("t"), true);
        }
        assert!(!q.withdraw_for(now, &after(ErrorKind::Timeout, 2)));
        q.record_for(&AttemptContext::first("t"), true);
        assert!(q.withdraw_for(now, &after(ErrorKind::Timeout, 2)));
        // A free retry that succeeds puts nothing back.
        q.record_for(&after(ErrorKind::Http503, 2), true);
        assert_eq!(q.available(), 0);
        // A hedge (no cause) costs what a retry after a timeout does.
        for _ in 0..10 {
            q.record_for(&AttemptContext::first("t"), true);
        }
        assert!(q.withdraw(now));
        assert_eq!(q.available(), 0);
        assert!(!q.withdraw(now));
        // Dry until refilled to half its capacity, not merely to the next retry's cost.
        assert!(q.exhausted());
        for _ in 0..249 {
            q.record_for(&AttemptContext::first("t"), true);
        }
        assert!(q.exhausted());
        q.record_for(&AttemptContext::first("t"), true);
        assert!(!q.exhausted());
    }

    proptest! {
        /// The quota is the reference arithmetic: a retry is allowed exactly when the
        /// units left pay for it, and the units stay within 0..=capacity; it is exhausted
        /// from a refusal until a success brings it back to half its capacity (or the
        /// dearest retry).
        #[test]
        fn the_quota_keeps_its_books(
            (capacity, retry_cost, timeout_cost) in (1u32..200).prop_flat_map(|c| (Just(c), 0..=c, 1..=c)),
            ops in proptest::collection::vec((any::<bool>(), any::<bool>(), 1u32..4, any::<bool>()), 0..300),
        ) {
            let q = RetryQuota::new(capacity, retry_cost, timeout_cost).unwrap();
            let now = Instant::now();
            let mut left = capacity;
            let refill_at = capacity.div_ceil(2).max(retry_cost).max(timeout_cost);
            let mut dry = false;
            for (retry, timeout, attempt, success) in ops {
                let kind = if timeout { ErrorKind::Timeout } else { ErrorKind::Http503 };
                let cost = if timeout { timeout_cost } else { retry_cost };
                if retry {
                    let ok = q.withdraw_for(now, &after(kind, attempt + 1));
                    prop_assert_eq!(ok, left >= cost);
                    if ok {
                        left -= cost;
                    } else {
                        dry = true;
                    }
                } else {
                    let ctx = if attempt == 1 { AttemptContext::first("t") } else { after(kind, attempt) };
                    q.record_for(&ctx, success);
                    if success {
                        let back = if attempt == 1 { 1 } else { cost };
                        left = (left + back).min(capacity);
                        if back > 0 && left >= refill_at {
                            dry = false;
                        }
                    }
                }
                prop_assert_eq!(q.available(), left);
                prop_assert_eq!(q.exhausted(), dry);
                prop_assert!(left <= capacity);
            }
        }
    }

    #[test]
    fn a_small_quota_is_refilled_only_when_it_pays_for_its_dearest_retry() {
        let q = RetryQuota::new(5, 5, 5).unwrap();
        let now = Instant::now();
        assert!(q.withdraw(now));
        assert!(!q.withdraw(now));
        for _ in 0..4 {
            q.record_for(&AttemptContext::first("t"), true);
            assert!(q.exhausted(), "half of 5 does not pay for a retry of 5");
        }
        q.record_for(&AttemptContext::first("t"), true);
        assert!(!q.exhausted());
        // A refusal counted while another call's success filled the quota ends at the next
        // success, full as it is.
        q.refused.store(1, Ordering::Relaxed);
        q.record_for(&AttemptContext::first("t"), true);
        assert!(!q.exhausted());
    }

    #[test]
    fn refuses_bad_quota_configuration() {
        assert_eq!(RetryQuota::new(0, 5, 10).unwrap_err().field, "capacity");
        assert_eq!(RetryQuota::new(10, 5, 0).unwrap_err().field, "timeout_cost");
        assert_eq!(RetryQuota::new(10, 11, 5).unwrap_err().field, "retry_cost");
        assert_eq!(
            RetryQuota::new(10, 5, 11).unwrap_err().field,
            "timeout_cost"
        );
    }

    #[test]
    fn the_limiter_is_off_until_throttled_then_cuts_and_grows_back() {
        let t0 = Instant::now();
        let l = CubicRateLimiter::starting_at(t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 100 answers a second for 3 s: off, nothing waits.
        for i in 0..300 {
            assert_eq!(l.try_acquire(at(i * 10)), Ok(()));
            l.on_response(at(i * 10), false);
        }
        assert!(!l.enabled());
        // A 429 at 3 s: on, at 0.7 × the measured rate (~100/s).
        l.on_response(at(3000), true);
        assert!(l.enabled());
        let cut = l.rate();
        assert!((55.0..=85.0).contains(&cut), "{cut}");
        // Sending faster than the rate: the bucket holds at most a second's tokens, then
        // an attempt must wait about 1/rate.
        let taken = (0..200)
            .take_while(|_| l.try_acquire(at(3000)).is_ok())
            .count();
        assert!(taken <= cut.ceil() as usize, "{taken} tokens at once");
        let wait = l.try_acquire(at(3000)).unwrap_err();
        assert!(
            wait <= Duration::from_secs_f64(1.0 / cut + 1e-3),
            "{wait:?}"
        );
        assert!(l.try_acquire(at(3000) + wait).is_ok(), "due after the wait");
        // Successes grow the rate back (CUBIC), at most to twice the measured rate.
        for i in 1..=400 {
            l.on_response(at(3000 + i * 10), false);
        }
        assert!(l.rate() > cut, "{} vs {cut}", l.rate());
        // ... and plateaus there: some 100 answers a second, however long they go on.
        for i in 401..=3000 {
            l.on_response(at(3000 + i * 10), false);
        }
        let measured = l.lock().measured;
        assert!((90.0..=110.0).contains(&measured), "{measured}");
        assert!(
            (l.rate() - 2.0 * measured).abs() < 1e-9,
            "{} against {measured}",
            l.rate()
        );
    }

    proptest! {
        /// Whatever the answers, the quota stays within its capacity, the limiter's rate at
        /// or above its floor and at most twice the measured send rate, and every wait
        /// finite.
        #[test]
        fn invariants_hold(events in proptest::collection::vec((0u64..50, any::<bool>(), 1u32..5, any::<bool>()), 1..300)) {
            let q = RetryQuota::default();
            let t0 = Instant::now();
            let l = CubicRateLimiter::starting_at(t0);
            let mut t = t0;
            for (dt, throttled, attempt, timeout) in events {
                t += Duration::from_millis(dt);
                let kind = if timeout { ErrorKind::Timeout } else { ErrorKind::Http429 };
                let _ = q.withdraw_for(t, &after(kind, attempt.max(2)));
                q.record_for(&after(kind, attempt), !throttled);
                prop_assert!(q.available() <= 500);
                if let Err(w) = l.try_acquire(t) {
                    prop_assert!(w > Duration::ZERO && w <= Duration::from_secs(3600));
                }
                l.on_response(t, throttled);
                prop_assert!(l.rate() >= MIN_RATE && l.rate().is_finite());
                // CUBIC grows the rate back, never above twice the send rate measured.
                let measured = l.lock().measured;
                prop_assert!(
                    l.rate() <= (MAX_ADJUST * measured).max(MIN_RATE) + 1e-9,
                    "{} against {measured}", l.rate()
                );
            }
        }
    }
}
