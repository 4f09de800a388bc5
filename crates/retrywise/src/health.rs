//! A target's recent health — failure rate, p95 latency, calls in flight, how the last
//! moments went and how long since it last answered well — as the
//! [`AttemptContext`] carries it to models.
//!
//! **One definition, everywhere.** The numbers are measured from the attempts that
//! *ended* within the health window (default [`DEFAULT_HEALTH_WINDOW`], 10 s):
//!
//! - `failure_rate`: retryable failures among them (a permanent failure such as a 404 is
//!   an answer from a healthy target; cancelled hedges are left out);
//! - `latency_p95`: the 95th percentile of the latencies of those that ended in the
//!   window's later part (its histogram turns over every half window: the last 50–100 %
//!   of it), so that it follows a slowdown within half a window; unknown when none ended
//!   there, even if earlier ones did;
//! - `in_flight`: calls in flight on average over the window — their latencies summed,
//!   over the window's length (Little's law);
//! - `failure_rate_recent`: the failure rate of the attempts that ended in the window's
//!   last two tenths (its current bucket and the one before: 1–2 s of a 10 s window) —
//!   the window's rate lags a recovery by the window's length, this one by a second —
//!   shrunk towards the window's rate by what chance explains of their difference
//!   ([`recent_failure_rate`]), so that a hundred calls' noise does not pass for a change;
//! - `permanent_rate`: permanent failures among the window's attempts (a caller sending
//!   invalid requests: the target is healthy, yet fresh calls fail);
//! - `since_success`: the time since the last success ended (or, before the first, since
//!   the tracker started) — how long an outage has lasted so far.
//!
//! Every number can be computed from attempt records alone, so an embedded
//! [`Policy`](crate::policy::Policy) (which keeps a [`HealthTracker`] whenever it records
//! or is asked to) and the prediction service (which keeps one per target, fed by the
//! records posted to it) arrive at the same features for the same attempts. The window
//! travels with the numbers (`health_window_ms`) and is recorded in the model artifact.
//! A breaker's or hedge's own windows serve their own decisions and never feed a model.
//!
//! Recording is lock-free and cheap: two compare-and-swaps on packed time buckets, one
//! thread-striped histogram increment (plus one more compare-and-swap for a permanent
//! failure, and for a success at most one atomic maximum per millisecond). Reading sums a
//! handful of buckets; the p95 is recomputed at most once per bucket period.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use retrywise::health::HealthTracker;
//! use tokio::time::Instant;
//!
//! use retrywise::health::Ended;
//!
//! let health = HealthTracker::new(Duration::from_secs(10))?;
//! let now = Instant::now();
//! health.record(now, Ended::Success, Duration::from_millis(20));
//! health.record(now, Ended::Failure, Duration::from_millis(900));
//! health.record(now, Ended::Permanent, Duration::from_millis(15));
//! let s = health.snapshot(now);
//! assert_eq!(s.failure_rate, Some(1.0 / 3.0));
//! assert_eq!(s.permanent_rate, Some(1.0 / 3.0));
//!
//! // Five seconds on, the last seconds saw no call: the recent rate is unknown, and the
//! // last success is five seconds old.
//! tokio::time::advance(Duration::from_secs(5)).await;
//! let s = health.snapshot(Instant::now());
//! assert_eq!(s.failure_rate_recent, None);
//! assert_eq!(s.since_success, Duration::from_secs(5));
//!
//! // Ten seconds later the window has forgotten both calls.
//! tokio::time::advance(Duration::from_secs(11)).await;
//! assert_eq!(health.snapshot(Instant::now()).failure_rate, None);
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strength_reduce::StrengthReducedU64;
use tokio::time::Instant;

use crate::attempt::AttemptContext;
use crate::error::{Check, ConfigError};
use crate::hedge::RollingLatency;

const CHECK: Check = Check::new("health");

/// Buckets per window.
const BUCKETS: u64 = 10;
/// Bits of the packed bucket word: `tag (24) | calls (20) | failures (20)`.
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const TAG_BITS: u32 = 64 - 2 * COUNT_BITS;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// Bits of the packed latency-sum word: `tag (24) | microseconds (40)`.
const SUM_BITS: u32 = 64 - TAG_BITS;
const SUM_MAX: u64 = (1 << SUM_BITS) - 1;

/// The window over which health is measured unless told otherwise.
pub const DEFAULT_HEALTH_WINDOW: Duration = Duration::from_secs(10);

/// How a call ended, as health counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It succeeded.
    Success,
    /// It failed in a way a retry may fix (the target's health is in question).
    Failure,
    /// It failed for good (a 400, a 404): an answer from a healthy target about the request.
    Permanent,
}

/// What a [`HealthTracker`] knows of its target at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthSnapshot {
    /// Calls that ended within the window.
    pub calls: u64,
    /// Failures among them.
    pub failures: u64,
    /// `failures / calls`; `None` without calls.
    pub failure_rate: Option<f64>,
    /// The 95th percentile latency of the calls that ended in the window's later part
    /// (the last 50–100 % of it, by half-window periods); `None` without calls there.
    pub latency_p95: Option<Duration>,
    /// Calls in flight on average over the window (see the module's documentation).
    pub in_flight: u32,
    /// The failure rate of the calls that ended in the current and the previous bucket
    /// (the last 10–20 % of the window); `None` without such calls.
    pub failure_rate_recent: Option<f64>,
    /// Permanent failures among the window's calls; `None` without calls.
    pub permanent_rate: Option<f64>,
    /// Time since the last success ended (since the tracker started, before the first).
    pub since_success: Duration,
    /// The window.
    pub window: Duration,
}

/// The bucket of the rolling latency histograms that `latency` falls in (each bucket spans
/// 6.25 % of its values): for histograms kept elsewhere — the service's fleet view shared
/// between replicas — that must give the quantiles a tracker gives.
pub fn latency_bucket(latency: Duration) -> usize {
    crate::hedge::latency::bucket_of(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX))
}

/// The `q`-quantile (e.g. 0.95) of a histogram of [`latency_bucket`]s, as `(bucket, count)`
/// pairs in any order (a bucket may repeat; unknown buckets count in the last): the upper
/// bound of the bucket holding the quantile, in whole milliseconds, as
/// [`HealthTracker::latency_p95`] computes it (the feature a model was trained on from a
/// tracker's records); `None` without samples.
pub fn latency_quantile(hist: impl IntoIterator<Item = (usize, u64)>, q: f64) -> Option<Duration> {
    use crate::hedge::latency::{BUCKETS, upper_of};
    let mut counts = vec![0u64; BUCKETS];
    for (b, n) in hist {
        let slot = &mut counts[b.min(BUCKETS - 1)];
        *slot = slot.saturating_add(n);
    }
    let total = counts.iter().fold(0u64, |a, &n| a.saturating_add(n));
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (b, n) in counts.iter().enumerate() {
        seen = seen.saturating_add(*n);
        if seen >= rank {
            return Some(Duration::from_millis(whole_ms(Duration::from_micros(
                upper_of(b),
            ))));
        }
    }
    Some(Duration::from_millis(whole_ms(Duration::from_micros(
        upper_of(BUCKETS - 1),
    ))))
}

/// A latency quantile as health reports it: whole milliseconds, at most `u32::MAX`.
fn whole_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(0xFFFF_FFFF)
}

/// How many standard deviations of chance a recent failure rate must depart from the
/// window's before [`recent_failure_rate`] reports any of the departure: two, the
/// conventional 95 % test.
pub const RECENT_RATE_SIGNIFICANCE: f64 = 2.0;

/// The recent failure rate as health reports it: the rate of the window's last calls
/// (`recent` = `(failures, calls)`), shrunk towards the whole window's (`window`, which
/// includes them) by as much as chance would explain of their difference; `None` without
/// recent calls.
///
/// If every call of the window failed with one probability `w`, the recent calls' rate
/// would differ from the window's by chance with variance `v = w(1 − w)(1/n − 1/N)` (`n`
/// recent calls of `N`). The difference `d` is kept in the share `max(0, 1 − k²v/d²)`
/// with `k` = [`RECENT_RATE_SIGNIFICANCE`] (a positive-part James–Stein estimate, made
/// stricter): a departure within two standard deviations of chance is reported as the
/// window's rate, one of four keeps three quarters of itself, and an outage's first second
/// (all of 100 calls failing in a window of 1,000 with 15 % failures) keeps 99.4 %. The
/// raw rate of a hundred calls moves by several points with nothing changed, which a model
/// reading the rate's log-odds takes for a change of regime (in `permanent`, where 5 % of
/// calls fail at random, it spread first attempts that all succeed two times in three from
/// p = 0.45 to 0.9).
pub fn recent_failure_rate(recent: (u64, u64), window: (u64, u64)) -> Option<f64> {
    let (rf, rn) = recent;
    if rn == 0 {
        return None;
    }
    let r = rf.min(rn) as f64 / rn as f64;
    let (wf, wn) = window;
    if wn <= rn {
        return Some(r);
    }
    let w = wf.min(wn) as f64 / wn as f64;
    let d = r - w;
    let v = w * (1.0 - w) * (1.0 / rn as f64 - 1.0 / wn as f64);
    if d == 0.0 || v <= 0.0 {
        return Some(r);
    }
    let k2 = RECENT_RATE_SIGNIFICANCE * RECENT_RATE_SIGNIFICANCE;
    let keep = (1.0 - k2 * v / (d * d)).max(0.0);
    Some((w + keep * d).clamp(0.0, 1.0))
}

/// Whether `ctx` already says everything health would tell ([`HealthSnapshot::fill_missing`]
/// would fill nothing).
pub fn knows_health(ctx: &AttemptContext) -> bool {
    ctx.failure_rate.is_some()
        && ctx.latency_p95.is_some()
        && ctx.in_flight.is_some()
        && ctx.failure_rate_recent.is_some()
        && ctx.permanent_rate.is_some()
        && ctx.since_success.is_some()
}

impl HealthSnapshot {
    /// Writes every health field of `ctx` (and the window) from this snapshot: the one
    /// place that says which context fields health fills.
    pub fn apply(&self, ctx: &mut AttemptContext) {
        ctx.failure_rate = self.failure_rate;
        ctx.latency_p95 = self.latency_p95;
        ctx.in_flight = Some(self.in_flight);
        ctx.failure_rate_recent = self.failure_rate_recent;
        ctx.permanent_rate = self.permanent_rate;
        ctx.since_success = Some(self.since_success);
        ctx.health_window = Some(self.window);
    }

    /// Fills only the health fields `ctx` leaves unknown (a caller's own numbers win), and
    /// the window when it filled any and `ctx` names none.
    pub fn fill_missing(&self, ctx: &mut AttemptContext) {
        fn fill<T>(slot: &mut Option<T>, v: Option<T>) -> bool {
            let empty = slot.is_none();
            if empty {
                *slot = v;
            }
            empty
        }
        let filled = [
            fill(&mut ctx.failure_rate, self.failure_rate),
            fill(&mut ctx.latency_p95, self.latency_p95),
            fill(&mut ctx.in_flight, Some(self.in_flight)),
            fill(&mut ctx.failure_rate_recent, self.failure_rate_recent),
            fill(&mut ctx.permanent_rate, self.permanent_rate),
            fill(&mut ctx.since_success, Some(self.since_success)),
        ];
        if filled.contains(&true) && ctx.health_window.is_none() {
            ctx.health_window = Some(self.window);
        }
    }
}

/// A rolling window of a target's call outcomes and latencies.
///
/// The window is split into ten buckets; a call counts in the bucket of the moment it
/// ended, and the window holds the last ten buckets (so between 90 % and 100 % of
/// `window`). Each bucket is two 64-bit words — a 24-bit bucket tag with 20-bit counts of
/// calls and failures, and the tag with the 40-bit sum of their latencies in microseconds
/// — updated by compare-and-swap; a bucket saturates at about a million calls (or 12 days
/// of summed latency), beyond which it rests on what it has. A bucket is recognized by its
/// tag, which wraps after 2²⁴ bucket periods (about 194 days with a 10-second window, 4.7
/// hours with the shortest): so once per bucket period the first call (or reading) sweeps
/// out the slots more than a window old, and after an idle spell of 2²³ periods or more,
/// every slot - no slot lives long enough for its tag to come round again.
#[derive(Debug)]
pub struct HealthTracker {
    bucket_nanos: u64,
    /// Divides by `bucket_nanos` with a multiplication.
    bucket_div: StrengthReducedU64,
    buckets: [AtomicU64; BUCKETS as usize],
    /// Per bucket, `tag << 40 | summed latency in µs`.
    sums: [AtomicU64; BUCKETS as usize],
    latency: RollingLatency,
    /// `(bucket + 1) << 32 | p95 in ms, saturated`, or 0: the last p95 computed.
    p95_cache: AtomicU64,
    /// Per bucket, `tag << 40 | permanent failures`.
    permanents: [AtomicU64; BUCKETS as usize],
    /// When the last success ended, in whole milliseconds since the origin, plus one; 0
    /// before the first.
    last_success_ms: AtomicU64,
    /// The bucket period the slots were last swept in ([`HealthTracker::sweep`]).
    swept: AtomicU64,
}

impl HealthTracker {
    /// A tracker over the last `window` (at least 10 ms).
    ///
    /// # Errors
    /// A window shorter than 10 ms, or longer than [`crate::MAX_CONFIG_DURATION`].
    pub fn new(window: Duration) -> Result<Self, ConfigError> {
        Self::build(window, RollingLatency::new)
    }

    /// A tracker over the last `window` whose latencies are kept unstriped: each one an
    /// atomic add to one shared row rather than a plain store in its thread's own, in 1/17
    /// of the memory (some 10 KiB instead of 161 KiB) — for a process that keeps one per
    /// target (a service's fleet view) rather than one per hot path.
    ///
    /// # Errors
    /// A window shorter than 10 ms, or longer than [`crate::MAX_CONFIG_DURATION`].
    pub fn unstriped(window: Duration) -> Result<Self, ConfigError> {
        Self::build(window, RollingLatency::unstriped)
    }

    fn build(
        window: Duration,
        latency: fn(Duration) -> RollingLatency,
    ) -> Result<Self, ConfigError> {
        if window < Duration::from_millis(10) {
            return Err(CHECK.err("window", format!("must be at least 10 ms, got {window:?}")));
        }
        // (Every record carries it as `health_window_ms`: longer than the schema allows,
        // each would be refused wherever it is shipped, and its batch with it.)
        CHECK.bounded("window", window)?;
        let bucket_nanos =
            u64::try_from(window.as_nanos() / u128::from(BUCKETS)).unwrap_or(u64::MAX);
        Ok(Self {
            bucket_nanos,
            bucket_div: StrengthReducedU64::new(bucket_nanos),
            buckets: Default::default(),
            sums: Default::default(),
            // Its origin is the tracker's: a call's end is read once, in nanoseconds since it.
            latency: latency(window / 2),
            p95_cache: AtomicU64::new(0),
            permanents: Default::default(),
            last_success_ms: AtomicU64::new(0),
            swept: AtomicU64::new(0),
        })
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.bucket_nanos.saturating_mul(BUCKETS))
    }

    /// Nanoseconds from the tracker's origin (its latency histogram's) to `now`.
    fn since_origin(&self, now: Instant) -> u64 {
        self.latency.since_origin(now)
    }

    fn bucket_at(&self, now: Instant) -> u64 {
        let b = self.since_origin(now) / self.bucket_div;
        self.sweep(b);
        b
    }

    /// Once per bucket period (the first call or reading in it): clears the slots that
    /// hold a bucket more than a window behind `b` - all of them after an idle spell of
    /// 2²³ periods, when a tag may have come round - so that no slot's 24-bit tag lives
    /// long enough to wrap and read as current (or as newer, dropping calls). One load on
    /// every other call.
    fn sweep(&self, b: u64) {
        let last = self.swept.load(Ordering::Relaxed);
        if last >= b {
            return;
        }
        // Read before the sweep is claimed: a slot written after this (a call of the new
        // period, by a thread that found the sweep claimed) no longer holds what was read,
        // and is not cleared.
        let read = |slots: &[AtomicU64; BUCKETS as usize]| -> [u64; BUCKETS as usize] {
            std::array::from_fn(|i| slots[i].load(Ordering::Relaxed))
        };
        let seen = [
            read(&self.buckets),
            read(&self.sums),
            read(&self.permanents),
        ];
        if self
            .swept
            .compare_exchange(last, b, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let idle = b - last >= TAG_MASK / 2;
        let now_tag = b & TAG_MASK;
        for ((slots, shift), seen) in [
            (&self.buckets, 2 * COUNT_BITS),
            (&self.sums, SUM_BITS),
            (&self.permanents, SUM_BITS),
        ]
        .into_iter()
        .zip(&seen)
        {
            for (slot, &cur) in slots.iter().zip(seen) {
                let behind = now_tag.wrapping_sub(cur >> shift) & TAG_MASK;
                // Behind by more than two windows (a late call lands at most one behind),
                // and not ahead (a call of the next period, read a moment earlier).
                let old = behind > 2 * BUCKETS && behind < TAG_MASK - 4 * BUCKETS;
                if cur != 0 && (idle || old) {
                    // Lost to a concurrent write: that slot is current again.
                    let _ = slot.compare_exchange(cur, 0, Ordering::Relaxed, Ordering::Relaxed);
                }
            }
        }
    }

    /// Records a call that ended at `now` as `ended`, after `latency`.
    pub fn record(&self, now: Instant, ended: Ended, latency: Duration) {
        // The clock is read once, for the buckets, the last success and the latencies.
        let since = self.since_origin(now);
        let b = since / self.bucket_div;
        self.sweep(b);
        // A call that ended a window or more before the last period swept is out of the
        // window (its slot may hold a period of any age by then): only its latency counts,
        // and - a success - when the target last answered (which no window bounds).
        if b.saturating_add(BUCKETS) <= self.swept.load(Ordering::Relaxed) {
            if ended == Ended::Success {
                self.succeeded(since);
            }
            self.latency.record_since(since, latency);
            return;
        }
        let tag = b & TAG_MASK;
        match ended {
            Ended::Success => self.succeeded(since),
            Ended::Permanent => add_tagged(&self.permanents[(b % BUCKETS) as usize], tag, 1),
            Ended::Failure => {}
        }
        let failed = ended == Ended::Failure;
        let slot = &self.buckets[(b % BUCKETS) as usize];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (t, calls, failures) = unpack(cur);
            let (calls, failures) = if t == tag && cur != 0 {
                (calls, failures)
            } else if cur != 0 && is_ahead(t, tag) {
                // The slot already holds a newer bucket: this call ended out of the window
                // (a thread that read the clock earlier and got here later).
                self.latency.record_since(since, latency);
                return;
            } else {
                (0, 0)
            };
            if calls >= COUNT_MAX {
                break;
            }
            let next = pack(tag, calls + 1, failures + u64::from(failed));
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(SUM_MAX);
        add_tagged(&self.sums[(b % BUCKETS) as usize], tag, micros);
        self.latency.record_since(since, latency);
    }

    /// Calls in flight on average over the window, as of `now`: the latencies of the calls
    /// that ended within it, summed, over its length (Little's law), rounded.
    pub fn in_flight(&self, now: Instant) -> u32 {
        let micros = tagged_sum(&self.sums, self.bucket_at(now));
        let window_micros = self.window().as_micros().max(1) as f64;
        let avg = (micros as f64 / window_micros).round();
        if avg >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            avg as u32
        }
    }

    /// A success ended `since` nanoseconds after the origin: moves the last success
    /// forward (at most once per millisecond, so that a busy target's successes do not
    /// contend on one word).
    fn succeeded(&self, since: u64) {
        let ms = (since / 1_000_000).min(u64::MAX - 1) + 1;
        if self.last_success_ms.load(Ordering::Relaxed) < ms {
            self.last_success_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }

    /// Time since the last success ended as of `now` (since the tracker started, before
    /// the first), to the millisecond.
    pub fn since_success(&self, now: Instant) -> Duration {
        let since = Duration::from_nanos(self.since_origin(now));
        match self.last_success_ms.load(Ordering::Relaxed) {
            0 => since,
            ms => since.saturating_sub(Duration::from_millis(ms - 1)),
        }
    }

    /// Permanent failures that ended within the window, as of `now`.
    pub fn permanent_failures(&self, now: Instant) -> u64 {
        tagged_sum(&self.permanents, self.bucket_at(now))
    }

    /// Calls and failures that ended within the window, as of `now`.
    pub fn counts(&self, now: Instant) -> (u64, u64) {
        self.counts_over(now, BUCKETS)
    }

    /// Calls and failures that ended in the current bucket and the one before it (the
    /// last 10–20 % of the window), as of `now`.
    pub fn recent_counts(&self, now: Instant) -> (u64, u64) {
        self.counts_over(now, 2)
    }

    fn counts_over(&self, now: Instant, buckets: u64) -> (u64, u64) {
        let b = self.bucket_at(now);
        let (mut calls, mut failures) = (0, 0);
        for k in 0..buckets.min(b + 1) {
            let want = (b - k) & TAG_MASK;
            let word = self.buckets[((b - k) % BUCKETS) as usize].load(Ordering::Relaxed);
            let (t, c, f) = unpack(word);
            if word != 0 && t == want {
                calls += c;
                failures += f;
            }
        }
        (calls, failures)
    }

    /// The failure rate within the window, as of `now`; `None` without calls.
    pub fn failure_rate(&self, now: Instant) -> Option<f64> {
        let (calls, failures) = self.counts(now);
        (calls > 0).then(|| failures as f64 / calls as f64)
    }

    /// The 95th percentile latency of the calls that ended in the window's later part
    /// (the current and the previous half-window period: the last 50–100 % of it): the
    /// upper bound of its histogram bucket (within 6.25 % above the latency), truncated to
    /// whole milliseconds (so a p95 under a millisecond reads 0, and one of a few ms up to
    /// a millisecond low), recomputed at most once per bucket period - the first reading
    /// in a bucket period holds for the rest of it; `None` without calls there.
    pub fn latency_p95(&self, now: Instant) -> Option<Duration> {
        let b = self.bucket_at(now);
        let key = (b & 0xFFFF_FFFF) + 1;
        let cached = self.p95_cache.load(Ordering::Relaxed);
        if cached >> 32 == key {
            return Some(Duration::from_millis(cached & 0xFFFF_FFFF));
        }
        let (p95, _) = self.latency.quantile(now, 0.95)?;
        let ms = whole_ms(p95);
        self.p95_cache.store(key << 32 | ms, Ordering::Relaxed);
        Some(Duration::from_millis(ms))
    }

    /// Everything the tracker knows, as of `now`.
    pub fn snapshot(&self, now: Instant) -> HealthSnapshot {
        let (calls, failures) = self.counts(now);
        let (recent_calls, recent_failures) = self.recent_counts(now);
        let rate = |n: u64, of: u64| (of > 0).then(|| n.min(of) as f64 / of as f64);
        HealthSnapshot {
            calls,
            failures,
            failure_rate: rate(failures, calls),
            failure_rate_recent: recent_failure_rate(
                (recent_failures, recent_calls),
                (failures, calls),
            ),
            permanent_rate: rate(self.permanent_failures(now), calls),
            since_success: self.since_success(now),
            latency_p95: if calls > 0 {
                self.latency_p95(now)
            } else {
                None
            },
            in_flight: self.in_flight(now),
            window: self.window(),
        }
    }
}

/// The tagged counts (`tag << 40 | count`) of the window ending in bucket `b`, summed
/// (saturating); a slot holding another bucket counts nothing.
fn tagged_sum(slots: &[AtomicU64; BUCKETS as usize], b: u64) -> u64 {
    (0..BUCKETS.min(b + 1))
        .map(|k| {
            let want = (b - k) & TAG_MASK;
            let word = slots[((b - k) % BUCKETS) as usize].load(Ordering::Relaxed);
            if word != 0 && word >> SUM_BITS == want {
                word & SUM_MAX
            } else {
                0
            }
        })
        .fold(0u64, u64::saturating_add)
}

/// Adds `n` to the tagged count in `slot` (`tag << 40 | count`, saturating), starting the
/// count afresh when the slot holds an older bucket, and dropping `n` when it already
/// holds a newer one (a thread that read the clock earlier and got here later).
fn add_tagged(slot: &AtomicU64, tag: u64, n: u64) {
    let mut cur = slot.load(Ordering::Relaxed);
    loop {
        let (t, sum) = (cur >> SUM_BITS, cur & SUM_MAX);
        let sum = if t == tag && cur != 0 {
            sum
        } else if cur != 0 && is_ahead(t, tag) {
            return;
        } else {
            0
        };
        let next = tag << SUM_BITS | sum.saturating_add(n).min(SUM_MAX);
        match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => cur = seen,
        }
    }
}

/// Whether a slot tagged `t` holds a later bucket than `tag`: a few windows ahead at most
/// (a thread that read the clock earlier and got here later); a tag further round is an
/// old bucket's.
fn is_ahead(t: u64, tag: u64) -> bool {
    let ahead = t.wrapping_sub(tag) & TAG_MASK;
    ahead != 0 && ahead <= 4 * BUCKETS
}

fn pack(tag: u64, calls: u64, failures: u64) -> u64 {
    tag << (2 * COUNT_BITS) | calls << COUNT_BITS | failures
}

fn unpack(word: u64) -> (u64, u64, u64) {
    (
        word >> (2 * COUNT_BITS),
        (word >> COUNT_BITS) & COUNT_MAX,
        word & COUNT_MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ended(failed: bool) -> Ended {
        if failed {
            Ended::Failure
        } else {
            Ended::Success
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_recent_rate_follows_a_recovery_the_window_still_remembers() {
        let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
        // Eight seconds of failures, then two of successes.
        for s in 0..10u64 {
            if s > 0 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            for _ in 0..10 {
                h.record(Instant::now(), ended(s < 8), Duration::from_millis(5));
            }
        }
        let s = h.snapshot(Instant::now());
        assert_eq!(s.failure_rate, Some(0.8));
        // The last two buckets hold seconds 8 and 9: all successes, against 80 % failures
        // in the window - far beyond chance, so nearly all of the departure is kept
        // (v = 0.8 x 0.2 x (1/20 - 1/100) = 0.0064; keep 1 - 4v/0.64 = 0.96).
        let recent = s.failure_rate_recent.unwrap();
        assert!((recent - 0.032).abs() < 1e-9, "{recent}");
        assert_eq!(h.recent_counts(Instant::now()), (20, 0));
        // Half a second later, one failure: the recent rate moves at once.
        tokio::time::advance(Duration::from_millis(500)).await;
        h.record(Instant::now(), Ended::Failure, Duration::from_millis(5));
        assert_eq!(h.recent_counts(Instant::now()), (21, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_fills_what_a_context_leaves_unknown_and_nothing_else() {
        let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
        h.record(Instant::now(), Ended::Failure, Duration::from_millis(40));
        h.record(Instant::now(), Ended::Permanent, Duration::from_millis(40));
        let s = h.snapshot(Instant::now());
        let mut ctx = AttemptContext::first("t");
        ctx.failure_rate = Some(0.9);
        assert!(!knows_health(&ctx));
        s.fill_missing(&mut ctx);
        assert_eq!(ctx.failure_rate, Some(0.9), "the caller's own number wins");
        assert_eq!(ctx.permanent_rate, Some(0.5));
        assert_eq!(ctx.failure_rate_recent, Some(0.5));
        assert_eq!(ctx.since_success, Some(Duration::ZERO));
        assert_eq!(ctx.health_window, Some(Duration::from_secs(10)));
        assert!(knows_health(&ctx));
        // A context that says everything is left as it is, window included.
        let mut known = ctx.clone();
        known.health_window = None;
        s.fill_missing(&mut known);
        assert_eq!(known.health_window, None);
        // `apply` overwrites every field.
        s.apply(&mut ctx);
        assert_eq!(ctx.failure_rate, Some(0.5));
    }

    #[tokio::test(start_paused = true)]
    async fn since_success_is_an_outages_age() {
        let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            h.since_success(Instant::now()),
            Duration::from_secs(3),
            "no success yet: the tracker's age"
        );
        h.record(Instant::now(), Ended::Success, Duration::from_millis(5));
        assert_eq!(h.since_success(Instant::now()), Duration::ZERO);
        for _ in 0..30 {
            tokio::time::advance(Duration::from_millis(250)).await;
            h.record(Instant::now(), Ended::Failure, Duration::from_millis(1));
            h.record(Instant::now(), Ended::Permanent, Duration::from_millis(1));
        }
        // Neither failures nor permanent failures are successes.
        assert_eq!(
            h.since_success(Instant::now()),
            Duration::from_millis(7_500)
        );
        // A success that ended earlier than the last one (a late record) does not move it back.
        h.record(
            Instant::now() - Duration::from_secs(1),
            Ended::Success,
            Duration::ZERO,
        );
        assert_eq!(h.since_success(Instant::now()), Duration::from_secs(1));
        h.record(
            Instant::now() - Duration::from_secs(2),
            Ended::Success,
            Duration::ZERO,
        );
        assert_eq!(h.since_success(Instant::now()), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_count_as_answers_and_have_their_own_rate() {
        let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
        for i in 0..10 {
            let e = match i {
                0..3 => Ended::Permanent,
                3 => Ended::Failure,
                _ => Ended::Success,
            };
            h.record(Instant::now(), e, Duration::from_millis(5));
        }
        let s = h.snapshot(Instant::now());
        assert_eq!((s.calls, s.failures), (10, 1));
        assert_eq!(s.permanent_rate, Some(0.3));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(h.snapshot(Instant::now()).permanent_rate, None);
        assert_eq!(h.permanent_failures(Instant::now()), 0);
    }

    #[test]
    fn rejects_a_tiny_window() {
        let e = HealthTracker::new(Duration::from_millis(5)).unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_bucket_by_bucket() {
        let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
        let t0 = Instant::now();
        // Second 0: 4 calls, 3 failures. Second 5: 4 calls, 1 failure.
        for failed in [true, true, true, false] {
            h.record(t0, ended(failed), Duration::from_millis(10));
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for failed in [true, false, false, false] {
            h.record(Instant::now(), ended(failed), Duration::from_millis(10));
        }
        assert_eq!(h.counts(Instant::now()), (8, 4));
        assert_eq!(h.failure_rate(Instant::now()), Some(0.5));
        // At 10 s the first second's bucket has left the window.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(h.counts(Instant::now()), (4, 1));
        // At 15 s everything has.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(h.counts(Instant::now()), (0, 0));
        assert_eq!(h.snapshot(Instant::now()).failure_rate, None);
        assert_eq!(h.snapshot(Instant::now()).latency_p95, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_slot_forgets_its_old_counts() {
        let h = HealthTracker::new(Duration::from_secs(1)).unwrap();
        h.record(Instant::now(), Ended::Failure, Duration::ZERO);
        // Same slot, ten buckets later.
        tokio::time::advance(Duration::from_secs(1)).await;
        h.record(Instant::now(), Ended::Success, Duration::ZERO);
        assert_eq!(h.counts(Instant::now()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn p95_follows_the_latencies() {
        let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
        let now = Instant::now();
        for i in 0..100u64 {
            h.record(
                now,
                Ended::Success,
                Duration::from_millis(if i < 95 { 10 } else { 2_000 }),
            );
        }
        let p95 = h.latency_p95(now).unwrap();
        assert!(
            p95 >= Duration::from_millis(9) && p95 <= Duration::from_millis(11),
            "{p95:?}"
        );
        // Cached within the bucket period, recomputed in the next one.
        for _ in 0..100 {
            h.record(now, Ended::Success, Duration::from_millis(2_000));
        }
        assert_eq!(h.latency_p95(now), Some(p95));
        tokio::time::advance(Duration::from_secs(1)).await;
        let later = h.latency_p95(Instant::now()).unwrap();
        assert!(later >= Duration::from_millis(1_800), "{later:?}");
    }

    /// A slot's tag is 24 bits and its place the period modulo 10: after 5 x 2²⁴ bucket
    /// periods both come round. A tracker left idle that long (23 hours of the shortest
    /// window's 1 ms buckets) neither reads its old calls as current nor, a little
    /// earlier - or half of the time after 2²³ periods - takes its slots for newer
    /// buckets and drops the calls that land there.
    #[tokio::test(start_paused = true)]
    async fn a_tag_that_comes_round_after_an_idle_spell_reads_nothing_old() {
        let period = Duration::from_millis(1);
        for idle in [5u64 << 24, (5 << 24) - 10, (1 << 23) + 2] {
            let h = HealthTracker::new(Duration::from_millis(10)).unwrap();
            let t0 = Instant::now();
            for _ in 0..5 {
                h.record(t0, Ended::Failure, Duration::from_millis(1));
                h.record(t0, Ended::Permanent, Duration::from_millis(1));
            }
            assert_eq!(h.counts(t0), (10, 5));
            let later = t0 + period * u32::try_from(idle).unwrap();
            assert_eq!(h.counts(later), (0, 0), "idle for {idle} periods");
            assert_eq!(h.permanent_failures(later), 0, "idle for {idle} periods");
            assert_eq!(h.in_flight(later), 0);
            h.record(later, Ended::Success, Duration::from_millis(1));
            assert_eq!(h.counts(later), (1, 0), "counted after {idle} idle periods");
        }
        // Sparse calls keep the tracker swept one slot at a time: a call every 2²² periods,
        // for five times round the tag, always finds its own slot empty of old calls.
        let h = HealthTracker::new(Duration::from_millis(10)).unwrap();
        let t0 = Instant::now();
        for k in 0..=20u32 {
            let at = t0 + period * (k << 22);
            h.record(at, Ended::Failure, Duration::from_millis(1));
            assert_eq!(h.counts(at), (1, 1), "call {k}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_is_littles_law_over_the_window() {
        let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
        let now = Instant::now();
        // 100 calls of 250 ms each within 10 s: 2.5 calls in flight on average.
        for _ in 0..100 {
            h.record(now, Ended::Success, Duration::from_millis(250));
        }
        assert_eq!(h.in_flight(now), 3, "2.5 rounds to 3");
        h.record(now, Ended::Success, Duration::from_millis(4_000));
        assert_eq!(h.in_flight(now), 3, "2.9");
        assert_eq!(h.snapshot(now).in_flight, 3);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(h.in_flight(Instant::now()), 0, "the window forgot them");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_records_are_all_counted() {
        let h = std::sync::Arc::new(HealthTracker::new(Duration::from_secs(60)).unwrap());
        let now = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = std::sync::Arc::clone(&h);
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        h.record(now, ended((i + t) % 4 == 0), Duration::from_millis(1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.counts(now), (40_000, 10_000));
    }

    #[test]
    fn a_recent_rate_within_chance_of_the_window_is_the_window() {
        assert_eq!(recent_failure_rate((0, 0), (5, 100)), None);
        // The recent calls are the window's only calls: nothing to shrink towards.
        assert_eq!(recent_failure_rate((3, 10), (3, 10)), Some(0.3));
        // 5 % of 1,000 fail at random; the last 150 calls saw 4 %, then 7 %: chance (one
        // standard deviation is 1.6 points), reported as the window's 5 %.
        assert_eq!(recent_failure_rate((6, 150), (50, 1_000)), Some(0.05));
        assert_eq!(recent_failure_rate((10, 150), (50, 1_000)), Some(0.05));
        // No failure at all among them is three deviations off: 57 % of it is kept.
        let zero = recent_failure_rate((0, 150), (50, 1_000)).unwrap();
        assert!(zero > 0.0 && zero < 0.05, "{zero}");
        // An outage's first second: 100 calls all failed in a window with 15 % failures.
        let outage = recent_failure_rate((100, 100), (150, 1_000)).unwrap();
        assert!(outage > 0.99, "{outage}");
        // A recovery's first second after a window of failures.
        let back = recent_failure_rate((0, 100), (900, 1_000)).unwrap();
        assert!(back < 0.01, "{back}");
    }

    proptest! {
        #[test]
        fn the_recent_rate_lies_between_the_raw_recent_rate_and_the_windows(
            rn in 1u64..5_000,
            extra in 0u64..20_000,
            rf_share in 0.0f64..=1.0,
            of_share in 0.0f64..=1.0,
        ) {
            let rf = (rn as f64 * rf_share) as u64;
            let wn = rn + extra;
            let wf = rf + (extra as f64 * of_share) as u64;
            let got = recent_failure_rate((rf, rn), (wf, wn)).unwrap();
            let r = rf as f64 / rn as f64;
            let w = wf as f64 / wn as f64;
            prop_assert!((0.0..=1.0).contains(&got));
            prop_assert!(got >= r.min(w) - 1e-12 && got <= r.max(w) + 1e-12, "{} not between {} and {}", got, r, w);
            // A departure kept is one beyond two deviations of chance.
            let v = w * (1.0 - w) * (1.0 / rn as f64 - 1.0 / wn as f64);
            if (r - w).powi(2) <= 4.0 * v {
                prop_assert!((got - w).abs() < 1e-12);
            }
        }
    }

    proptest! {
        /// The window's counts, the recent counts, the permanent failures and the time
        /// since the last success equal a brute-force count of the calls that ended in the
        /// last ten (two) buckets.
        #[test]
        fn counts_match_a_brute_force_window(
            events in proptest::collection::vec((0u64..40_000, 0u8..3), 0..200),
            probe in 0u64..45_000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
                let t0 = Instant::now();
                let kind = |k: u8| [Ended::Success, Ended::Failure, Ended::Permanent][usize::from(k)];
                let mut events = events;
                events.sort_by_key(|e| e.0);
                for &(ms, k) in &events {
                    h.record(t0 + Duration::from_millis(ms), kind(k), Duration::ZERO);
                }
                let at = events.last().map_or(0, |e| e.0).max(probe);
                let now = t0 + Duration::from_millis(at);
                let b = at / 1_000;
                let count = |buckets: u64, k: u8| {
                    events.iter().filter(|e| e.0 / 1_000 + buckets > b && e.1 == k).count() as u64
                };
                let calls = |buckets| (0..3).map(|k| count(buckets, k)).sum::<u64>();
                prop_assert_eq!(h.counts(now), (calls(10), count(10, 1)));
                prop_assert_eq!(h.recent_counts(now), (calls(2), count(2, 1)));
                prop_assert_eq!(h.permanent_failures(now), count(10, 2));
                let last_success = events.iter().rev().find(|e| e.1 == 0).map_or(0, |e| e.0);
                prop_assert_eq!(h.since_success(now), Duration::from_millis(at - last_success));
                Ok(())
            })?;
        }

        /// A histogram kept elsewhere from [`latency_bucket`]s gives, through
        /// [`latency_quantile`], the p95 the tracker gives for the same latencies.
        #[test]
        fn a_shared_histogram_gives_the_trackers_p95(
            micros in proptest::collection::vec(0u64..5_000_000, 1..300),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
                let now = Instant::now();
                let mut shared = Vec::new();
                for &us in &micros {
                    h.record(now, Ended::Success, Duration::from_micros(us));
                    // Split across two "replicas": the buckets merge.
                    shared.push((latency_bucket(Duration::from_micros(us)), 1));
                }
                let tracker = h.latency_p95(now).unwrap();
                let merged = latency_quantile(shared, 0.95).unwrap();
                prop_assert_eq!(tracker, merged);
                Ok(())
            })?;
        }
    }

    #[test]
    fn an_empty_shared_histogram_has_no_quantile() {
        assert_eq!(latency_quantile(std::iter::empty(), 0.95), None);
        assert_eq!(latency_quantile([(3, 0)], 0.95), None);
        // A bucket beyond the last counts in the last.
        assert!(latency_quantile([(usize::MAX, 1)], 0.5).is_some());
    }

    /// A success reported late - ended more than a window before the last period swept
    /// (a service's records, up to a window old) - is out of the window's counts, but
    /// still the target's last answer: the time since it was left at the success before.
    #[tokio::test(start_paused = true)]
    async fn a_late_success_still_moves_the_time_since_the_last_one() {
        let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
        h.record(Instant::now(), Ended::Success, Duration::from_millis(5));
        tokio::time::advance(Duration::from_secs(300)).await;
        let now = Instant::now();
        let _ = h.snapshot(now);
        h.record(
            now - Duration::from_millis(9_500),
            Ended::Success,
            Duration::from_millis(5),
        );
        tokio::time::advance(Duration::from_millis(300)).await;
        let _ = h.snapshot(Instant::now());
        h.record(
            now - Duration::from_millis(9_900),
            Ended::Success,
            Duration::from_millis(5),
        );
        let since = h.since_success(Instant::now());
        assert!(
            since >= Duration::from_millis(9_700) && since <= Duration::from_millis(9_900),
            "{since:?}"
        );
    }
}
