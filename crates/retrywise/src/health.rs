//! A target's recent health — failure rate, p95 latency, calls in flight — as the
//! [`AttemptContext`](crate::attempt::AttemptContext) carries it to models.
//!
//! **One definition, everywhere.** The three numbers are measured from the attempts that
//! *ended* within the health window (default [`DEFAULT_HEALTH_WINDOW`], 10 s):
//!
//! - `failure_rate`: retryable failures among them (a permanent failure such as a 404 is
//!   an answer from a healthy target; cancelled hedges are left out);
//! - `latency_p95`: the 95th percentile of their latencies;
//! - `in_flight`: calls in flight on average over the window — their latencies summed,
//!   over the window's length (Little's law).
//!
//! Every number can be computed from attempt records alone, so an embedded
//! [`Policy`](crate::policy::Policy) (which keeps a [`HealthTracker`] whenever it records
//! or is asked to) and the prediction service (which keeps one per target, fed by the
//! records posted to it) arrive at the same features for the same attempts. The window
//! travels with the numbers (`health_window_ms`) and is recorded in the model artifact.
//! A breaker's or hedge's own windows serve their own decisions and never feed a model.
//!
//! Recording is lock-free and cheap: two compare-and-swaps on packed time buckets, one
//! thread-striped histogram increment. Reading sums a handful of buckets; the p95 is
//! recomputed at most once per bucket period.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use retrywise::health::HealthTracker;
//! use tokio::time::Instant;
//!
//! let health = HealthTracker::new(Duration::from_secs(10))?;
//! let now = Instant::now();
//! health.record(now, false, Duration::from_millis(20));
//! health.record(now, true, Duration::from_millis(900));
//! assert_eq!(health.snapshot(now).failure_rate, Some(0.5));
//!
//! // Ten seconds later the window has forgotten both calls.
//! tokio::time::advance(Duration::from_secs(11)).await;
//! assert_eq!(health.snapshot(Instant::now()).failure_rate, None);
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

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

/// What a [`HealthTracker`] knows of its target at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthSnapshot {
    /// Calls that ended within the window.
    pub calls: u64,
    /// Failures among them.
    pub failures: u64,
    /// `failures / calls`; `None` without calls.
    pub failure_rate: Option<f64>,
    /// The 95th percentile latency of the window's calls; `None` without calls.
    pub latency_p95: Option<Duration>,
    /// Calls in flight on average over the window (see the module's documentation).
    pub in_flight: u32,
    /// The window.
    pub window: Duration,
}

/// A rolling window of a target's call outcomes and latencies.
///
/// The window is split into ten buckets; a call counts in the bucket of the moment it
/// ended, and the window holds the last ten buckets (so between 90 % and 100 % of
/// `window`). Each bucket is two 64-bit words — a 24-bit bucket tag with 20-bit counts of
/// calls and failures, and the tag with the 40-bit sum of their latencies in microseconds
/// — updated by compare-and-swap; a bucket saturates at about a million calls (or 12 days
/// of summed latency), beyond which it rests on what it has. A bucket is recognized by its
/// tag, so a tracker left idle for exactly 2²⁴ bucket periods (about 194 days with a
/// 10-second window) could read one stale bucket.
#[derive(Debug)]
pub struct HealthTracker {
    origin: Instant,
    bucket_nanos: u64,
    buckets: [AtomicU64; BUCKETS as usize],
    /// Per bucket, `tag << 40 | summed latency in µs`.
    sums: [AtomicU64; BUCKETS as usize],
    latency: RollingLatency,
    /// `(bucket + 1) << 32 | p95 in ms, saturated`, or 0: the last p95 computed.
    p95_cache: AtomicU64,
}

impl HealthTracker {
    /// A tracker over the last `window` (at least 10 ms).
    ///
    /// # Errors
    /// A window shorter than 10 ms.
    pub fn new(window: Duration) -> Result<Self, ConfigError> {
        if window < Duration::from_millis(10) {
            return Err(CHECK.err("window", format!("must be at least 10 ms, got {window:?}")));
        }
        let bucket_nanos =
            u64::try_from(window.as_nanos() / u128::from(BUCKETS)).unwrap_or(u64::MAX);
        Ok(Self {
            origin: Instant::now(),
            bucket_nanos,
            buckets: Default::default(),
            sums: Default::default(),
            latency: RollingLatency::new(window / 2),
            p95_cache: AtomicU64::new(0),
        })
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.bucket_nanos.saturating_mul(BUCKETS))
    }

    fn bucket_at(&self, now: Instant) -> u64 {
        let since = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        since / self.bucket_nanos
    }

    /// Records a call that ended at `now`, failed or not, after `latency`.
    pub fn record(&self, now: Instant, failed: bool, latency: Duration) {
        let b = self.bucket_at(now);
        let tag = b & TAG_MASK;
        let slot = &self.buckets[(b % BUCKETS) as usize];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (t, calls, failures) = unpack(cur);
            let (calls, failures) = if t == tag && cur != 0 {
                (calls, failures)
            } else if cur != 0 && t.wrapping_sub(tag) & TAG_MASK < TAG_MASK / 2 {
                // The slot already holds a newer bucket: this call ended out of the window
                // (a thread that read the clock earlier and got here later).
                self.latency.record(now, latency);
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
        let slot = &self.sums[(b % BUCKETS) as usize];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (t, sum) = (cur >> SUM_BITS, cur & SUM_MAX);
            let sum = if t == tag && cur != 0 {
                sum
            } else if cur != 0 && t.wrapping_sub(tag) & TAG_MASK < TAG_MASK / 2 {
                break; // a newer bucket, as above
            } else {
                0
            };
            let next = tag << SUM_BITS | sum.saturating_add(micros).min(SUM_MAX);
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        self.latency.record(now, latency);
    }

    /// Calls in flight on average over the window, as of `now`: the latencies of the calls
    /// that ended within it, summed, over its length (Little's law), rounded.
    pub fn in_flight(&self, now: Instant) -> u32 {
        let b = self.bucket_at(now);
        let mut micros = 0u64;
        for k in 0..BUCKETS.min(b + 1) {
            let want = (b - k) & TAG_MASK;
            let word = self.sums[((b - k) % BUCKETS) as usize].load(Ordering::Relaxed);
            if word != 0 && word >> SUM_BITS == want {
                micros = micros.saturating_add(word & SUM_MAX);
            }
        }
        let window_micros = self.window().as_micros().max(1) as f64;
        let avg = (micros as f64 / window_micros).round();
        if avg >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            avg as u32
        }
    }

    /// Calls and failures that ended within the window, as of `now`.
    pub fn counts(&self, now: Instant) -> (u64, u64) {
        let b = self.bucket_at(now);
        let (mut calls, mut failures) = (0, 0);
        for k in 0..BUCKETS.min(b + 1) {
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

    /// The 95th percentile latency of the window's calls (to within 6.25 %, in whole
    /// milliseconds), recomputed at most once per bucket period; `None` without calls.
    pub fn latency_p95(&self, now: Instant) -> Option<Duration> {
        let b = self.bucket_at(now);
        let key = (b & 0xFFFF_FFFF) + 1;
        let cached = self.p95_cache.load(Ordering::Relaxed);
        if cached >> 32 == key {
            return Some(Duration::from_millis(cached & 0xFFFF_FFFF));
        }
        let (p95, _) = self.latency.quantile(now, 0.95)?;
        let ms = u64::try_from(p95.as_millis())
            .unwrap_or(u64::MAX)
            .min(0xFFFF_FFFF);
        self.p95_cache.store(key << 32 | ms, Ordering::Relaxed);
        Some(Duration::from_millis(ms))
    }

    /// Everything the tracker knows, as of `now`.
    pub fn snapshot(&self, now: Instant) -> HealthSnapshot {
        let (calls, failures) = self.counts(now);
        HealthSnapshot {
            calls,
            failures,
            failure_rate: (calls > 0).then(|| failures as f64 / calls as f64),
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
            h.record(t0, failed, Duration::from_millis(10));
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for failed in [true, false, false, false] {
            h.record(Instant::now(), failed, Duration::from_millis(10));
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
        h.record(Instant::now(), true, Duration::ZERO);
        // Same slot, ten buckets later.
        tokio::time::advance(Duration::from_secs(1)).await;
        h.record(Instant::now(), false, Duration::ZERO);
        assert_eq!(h.counts(Instant::now()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn p95_follows_the_latencies() {
        let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
        let now = Instant::now();
        for i in 0..100u64 {
            h.record(
                now,
                false,
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
            h.record(now, false, Duration::from_millis(2_000));
        }
        assert_eq!(h.latency_p95(now), Some(p95));
        tokio::time::advance(Duration::from_secs(1)).await;
        let later = h.latency_p95(Instant::now()).unwrap();
        assert!(later >= Duration::from_millis(1_800), "{later:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_is_littles_law_over_the_window() {
        let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
        let now = Instant::now();
        // 100 calls of 250 ms each within 10 s: 2.5 calls in flight on average.
        for _ in 0..100 {
            h.record(now, false, Duration::from_millis(250));
        }
        assert_eq!(h.in_flight(now), 3, "2.5 rounds to 3");
        h.record(now, false, Duration::from_millis(4_000));
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
                        h.record(now, (i + t) % 4 == 0, Duration::from_millis(1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.counts(now), (40_000, 10_000));
    }

    proptest! {
        /// The window's counts equal a brute-force count of the calls that ended in the
        /// last ten buckets.
        #[test]
        fn counts_match_a_brute_force_window(
            events in proptest::collection::vec((0u64..40_000, any::<bool>()), 0..200),
            probe in 0u64..45_000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let h = HealthTracker::new(Duration::from_secs(10)).unwrap();
                let t0 = Instant::now();
                let mut events = events;
                events.sort_by_key(|e| e.0);
                for &(ms, failed) in &events {
                    h.record(t0 + Duration::from_millis(ms), failed, Duration::ZERO);
                }
                let at = events.last().map_or(0, |e| e.0).max(probe);
                let b = at / 1_000;
                let live: Vec<_> = events.iter().filter(|e| e.0 / 1_000 + 10 > b).collect();
                let want = (live.len() as u64, live.iter().filter(|e| e.1).count() as u64);
                prop_assert_eq!(h.counts(t0 + Duration::from_millis(at)), want);
                Ok(())
            })?;
        }
    }
}
