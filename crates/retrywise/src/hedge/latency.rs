//! A rolling latency histogram that records without locking.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::striped::{STRIPES, stripe};

/// Sub-buckets per power of two: values are kept to within 1/16 (6.25 %).
const SUB: u32 = 16;
const SUB_BITS: u32 = 4;
/// Microsecond values up to 2^40 µs (about 12.7 days); larger values go in the last bucket.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) * SUB) as usize;

fn bucket_of(micros: u64) -> usize {
    if micros < u64::from(SUB) {
        return micros as usize;
    }
    let exp = 63 - micros.leading_zeros();
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = (micros >> (exp - SUB_BITS)) & u64::from(SUB - 1);
    (SUB + (exp - SUB_BITS) * SUB) as usize + sub as usize
}

/// The upper bound of a bucket, in microseconds.
fn upper_of(bucket: usize) -> u64 {
    let b = bucket as u64;
    if b < u64::from(SUB) {
        return b;
    }
    let exp = (b - u64::from(SUB)) / u64::from(SUB) + u64::from(SUB_BITS);
    let sub = (b - u64::from(SUB)) % u64::from(SUB);
    let base = 1u64 << exp;
    base + (sub + 1) * (base >> SUB_BITS) - 1
}

#[derive(Debug)]
struct Histogram {
    /// The period this histogram holds, or `u64::MAX` while never used.
    period: AtomicU64,
    /// One row of buckets per owned stripe (thread), then a shared row:
    /// `row * BUCKETS + bucket`.
    counts: Box<[AtomicU32]>,
}

impl Histogram {
    fn new() -> Self {
        Self {
            period: AtomicU64::new(u64::MAX),
            counts: (0..BUCKETS * (STRIPES + 1))
                .map(|_| AtomicU32::new(0))
                .collect(),
        }
    }

    /// Bucket `b` summed over the stripes.
    fn bucket(&self, b: usize) -> u64 {
        (0..=STRIPES)
            .map(|s| u64::from(self.counts[s * BUCKETS + b].load(Ordering::Relaxed)))
            .sum()
    }
}

/// Latencies of the current and the previous period (each `period` long), so that
/// percentiles follow the upstream as it changes and never rest on an empty window.
///
/// Each thread records into its own row of buckets with a plain load and store — no
/// lock-prefixed instruction and no cache line shared with other threads (threads beyond
/// the owned rows share one more row, updated atomically). A sample recorded while its
/// period is being cleared may be lost, which a statistic can afford.
#[derive(Debug)]
pub(crate) struct RollingLatency {
    origin: Instant,
    period_nanos: u64,
    hists: [Histogram; 2],
}

impl RollingLatency {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            origin: Instant::now(),
            period_nanos: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1),
            hists: [Histogram::new(), Histogram::new()],
        }
    }

    /// The length of a period.
    pub(crate) fn period(&self) -> Duration {
        Duration::from_nanos(self.period_nanos)
    }

    /// Nanoseconds from the window's origin to `now`.
    pub(crate) fn since_origin(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn period_of(&self, now: Instant) -> u64 {
        self.since_origin(now) / self.period_nanos
    }

    /// Records one latency observed at `now`; returns `now` in nanoseconds since the
    /// origin.
    pub(crate) fn record(&self, now: Instant, latency: Duration) -> u64 {
        let since = self.since_origin(now);
        let p = since / self.period_nanos;
        let h = &self.hists[(p % 2) as usize];
        let held = h.period.load(Ordering::Acquire);
        if held != p {
            if held != u64::MAX && held > p {
                // A straggler from an older period: drop it.
                return since;
            }
            if h.period
                .compare_exchange(held, p, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                for c in h.counts.iter() {
                    c.store(0, Ordering::Relaxed);
                }
            }
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        match stripe() {
            // Only this thread writes its row: a plain load and store lose nothing.
            Some(row) => {
                let c = &h.counts[row * BUCKETS + bucket_of(micros)];
                c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
            }
            None => {
                h.counts[STRIPES * BUCKETS + bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
            }
        }
        since
    }

    /// The histograms holding the current and the previous period.
    fn live(&self, p: u64) -> impl Iterator<Item = &Histogram> {
        self.hists.iter().filter(move |h| {
            let hp = h.period.load(Ordering::Acquire);
            hp != u64::MAX && hp <= p && p - hp <= 1
        })
    }

    /// How many latencies the current and previous period hold.
    pub(crate) fn count(&self, now: Instant) -> u64 {
        self.live(self.period_of(now))
            .flat_map(|h| h.counts.iter())
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum()
    }

    /// The `q`-quantile (e.g. 0.95) of the latencies of the current and previous period,
    /// and how many samples it rests on; `None` without samples.
    pub(crate) fn quantile(&self, now: Instant, q: f64) -> Option<(Duration, u64)> {
        let live: Vec<&Histogram> = self.live(self.period_of(now)).collect();
        let total: u64 = live
            .iter()
            .flat_map(|h| h.counts.iter())
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for b in 0..BUCKETS {
            seen += live.iter().map(|h| h.bucket(b)).sum::<u64>();
            if seen >= rank {
                return Some((Duration::from_micros(upper_of(b)), total));
            }
        }
        Some((Duration::from_micros(upper_of(BUCKETS - 1)), total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            15,
            16,
            17,
            31,
            32,
            100,
            1_000,
            65_535,
            1 << 30,
            1 << 40,
        ] {
            let b = bucket_of(v);
            assert!(b >= last);
            last = b;
            let up = upper_of(b);
            assert!(up >= v, "{v} -> bucket {b} up to {up}");
            assert!(up as f64 <= v as f64 * 1.0625 + 1.0, "{v} -> {up}");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    proptest! {
        #[test]
        fn every_value_is_within_its_bucket(v in 0u64..(1 << 40)) {
            let b = bucket_of(v);
            prop_assert!(upper_of(b) >= v);
            if b > 0 {
                prop_assert!(upper_of(b - 1) < v);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn quantiles_roll_with_time() {
        let r = RollingLatency::new(Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(r.quantile(now, 0.95), None);
        for i in 1..=100u64 {
            r.record(now, Duration::from_millis(i));
        }
        let (p95, n) = r.quantile(now, 0.95).unwrap();
        assert_eq!(n, 100);
        assert!(
            (Duration::from_millis(95)..=Duration::from_millis(101)).contains(&p95),
            "{p95:?}"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            r.quantile(Instant::now(), 0.95).unwrap().1,
            100,
            "previous period still counts"
        );
        for _ in 0..100 {
            r.record(Instant::now(), Duration::from_millis(1));
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let (p50, n) = r.quantile(Instant::now(), 0.5).unwrap();
        assert_eq!(n, 100, "the first period expired");
        assert!(p50 <= Duration::from_micros(1063));
    }
}
