//! A rolling latency histogram that records without locking, and what it predicts of a
//! request still running: when a hedge is worth sending.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use strength_reduce::StrengthReducedU64;
use tokio::time::Instant;

use crate::striped::{STRIPES, stripe};

/// Sub-buckets per power of two: values are kept to within 1/16 (6.25 %).
const SUB: u32 = 16;
const SUB_BITS: u32 = 4;
/// Microsecond values up to 2^40 µs (about 12.7 days); larger values go in the last bucket.
const MAX_EXP: u32 = 40;
pub(crate) const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) * SUB) as usize;
/// Kinds of observation: a latency (the request answered after it)...
const ANSWERED: usize = 0;
/// ...or a lower bound of one (the request was still running then, and was cancelled).
const CENSORED: usize = 1;
const KINDS: usize = 2;

pub(crate) fn bucket_of(micros: u64) -> usize {
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
pub(crate) fn upper_of(bucket: usize) -> u64 {
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
    /// The period each owned row last recorded in, written only by its owner: a row of
    /// another period than the histogram's is read as empty, and its owner clears it
    /// before its first write in the new period. (Cleared by whoever saw the period
    /// change instead, an owner's plain store racing the clearing could put back its whole
    /// count of the period before.)
    row_period: Box<[AtomicU64]>,
    /// One row of buckets per owned stripe (thread) and kind of observation, then a
    /// shared row per kind: `(row * KINDS + kind) * BUCKETS + bucket`. Without owned rows
    /// (unstriped) only the shared one.
    counts: Box<[AtomicU32]>,
}

impl Histogram {
    fn new(owned: usize) -> Self {
        Self {
            period: AtomicU64::new(u64::MAX),
            row_period: (0..owned).map(|_| AtomicU64::new(u64::MAX)).collect(),
            counts: (0..BUCKETS * KINDS * (owned + 1))
                .map(|_| AtomicU32::new(0))
                .collect(),
        }
    }

    /// Rows that can be owned; the shared row comes after them.
    fn owned(&self) -> usize {
        self.row_period.len()
    }

    /// The rows holding this histogram's period: the owned rows of its period, and the
    /// shared one.
    fn live_rows(&self) -> impl Iterator<Item = usize> + '_ {
        let p = self.period.load(Ordering::Acquire);
        (0..self.owned())
            .filter(move |&r| self.row_period[r].load(Ordering::Acquire) == p)
            .chain(std::iter::once(self.owned()))
    }

    /// Every count of the period.
    fn total(&self) -> u64 {
        self.live_rows()
            .flat_map(|r| &self.counts[r * KINDS * BUCKETS..(r + 1) * KINDS * BUCKETS])
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum()
    }

    /// Bucket `b` of one kind, summed over the stripes.
    fn bucket_of_kind(&self, b: usize, kind: usize) -> u64 {
        self.live_rows()
            .map(|r| {
                u64::from(self.counts[(r * KINDS + kind) * BUCKETS + b].load(Ordering::Relaxed))
            })
            .sum()
    }

    /// Bucket `b` summed over the stripes and kinds.
    fn bucket(&self, b: usize) -> u64 {
        (0..KINDS).map(|k| self.bucket_of_kind(b, k)).sum()
    }
}

/// Latencies of the current and the previous period (each `period` long), so that
/// percentiles follow the upstream as it changes and never rest on an empty window.
///
/// Each thread records into its own row of buckets with a plain load and store — no
/// lock-prefixed instruction and no cache line shared with other threads (threads beyond
/// the owned rows share one more row, updated atomically); each owner clears its own row
/// when a new period begins. A sample recorded while its period is being cleared may be
/// lost, which a statistic can afford. [`unstriped`](Self::unstriped) keeps only the
/// shared row: 1/17 of the memory (10 KiB instead of 161 KiB), for a process that keeps
/// one per target rather than one per hot path.
#[derive(Debug)]
pub(crate) struct RollingLatency {
    origin: Instant,
    period_nanos: u64,
    /// Divides by `period_nanos` with a multiplication.
    period_div: StrengthReducedU64,
    hists: [Histogram; 2],
}

impl RollingLatency {
    pub(crate) fn new(period: Duration) -> Self {
        Self::with_rows(period, STRIPES)
    }

    /// Without rows owned by threads: every sample is one atomic add to the shared row.
    pub(crate) fn unstriped(period: Duration) -> Self {
        Self::with_rows(period, 0)
    }

    fn with_rows(period: Duration, owned: usize) -> Self {
        let period_nanos = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
        Self {
            origin: Instant::now(),
            period_nanos,
            period_div: StrengthReducedU64::new(period_nanos),
            hists: [Histogram::new(owned), Histogram::new(owned)],
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
        self.since_origin(now) / self.period_div
    }

    /// Records one latency observed at `now`; returns `now` in nanoseconds since the
    /// origin.
    pub(crate) fn record(&self, now: Instant, latency: Duration) -> u64 {
        self.record_kind(now, latency, ANSWERED)
    }

    /// Records, at `now`, a request cancelled after `running` without an answer (a primary
    /// a hedge beat): its latency is at least that. Counts as one latency for
    /// [`count`](Self::count) and [`quantile`](Self::quantile) (the time to the call's
    /// first answer), and as a censored one for [`hedge_delay`](Self::hedge_delay).
    pub(crate) fn record_censored(&self, now: Instant, running: Duration) -> u64 {
        self.record_kind(now, running, CENSORED)
    }

    /// [`record`](Self::record) at `since` nanoseconds from the origin
    /// ([`since_origin`](Self::since_origin)), for an owner that has read it already.
    pub(crate) fn record_since(&self, since: u64, latency: Duration) {
        self.record_kind_since(since, latency, ANSWERED);
    }

    fn record_kind(&self, now: Instant, latency: Duration, kind: usize) -> u64 {
        self.record_kind_since(self.since_origin(now), latency, kind)
    }

    fn record_kind_since(&self, since: u64, latency: Duration, kind: usize) -> u64 {
        let p = since / self.period_div;
        let h = &self.hists[(p % 2) as usize];
        let held = h.period.load(Ordering::Acquire);
        if held != p {
            if held != u64::MAX && held > p {
                // A straggler from an older period: drop it.
                return since;
            }
            // The winner clears the shared row; each owner clears its own.
            if h.period
                .compare_exchange(held, p, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let shared = h.owned();
                for c in &h.counts[shared * KINDS * BUCKETS..] {
                    c.store(0, Ordering::Relaxed);
                }
            }
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        match stripe().filter(|r| *r < h.owned()) {
            // Only this thread writes its row: a plain load and store lose nothing.
            Some(row) => {
                if h.row_period[row].load(Ordering::Relaxed) != p {
                    for c in &h.counts[row * KINDS * BUCKETS..(row + 1) * KINDS * BUCKETS] {
                        c.store(0, Ordering::Relaxed);
                    }
                    h.row_period[row].store(p, Ordering::Release);
                }
                let c = &h.counts[(row * KINDS + kind) * BUCKETS + bucket_of(micros)];
                c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
            }
            None => {
                h.counts[(h.owned() * KINDS + kind) * BUCKETS + bucket_of(micros)]
                    .fetch_add(1, Ordering::Relaxed);
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
        self.live(self.period_of(now)).map(Histogram::total).sum()
    }

    /// The `q`-quantile (e.g. 0.95) of the latencies of the current and previous period,
    /// and how many samples it rests on; `None` without samples.
    pub(crate) fn quantile(&self, now: Instant, q: f64) -> Option<(Duration, u64)> {
        let live: Vec<&Histogram> = self.live(self.period_of(now)).collect();
        // Each bucket read once, and the total summed from those readings: a writer that
        // rolls a histogram over to the next period mid-scan cannot leave the rank beyond
        // every bucket (which read as the largest latency there is).
        let counts: [u64; BUCKETS] =
            std::array::from_fn(|b| live.iter().map(|h| h.bucket(b)).sum());
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (b, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some((Duration::from_micros(upper_of(b)), total));
            }
        }
        Some((Duration::from_micros(upper_of(BUCKETS - 1)), total))
    }

    /// The Kaplan-Meier survival curve of the latencies of the current and previous
    /// period (answers are events, cancelled requests censored): `(µs, P(latency > µs))`
    /// at the middle of each bucket holding an answer, ascending, and the samples it rests
    /// on.
    fn survival(&self, now: Instant) -> (Vec<(f64, f64)>, u64) {
        let live: Vec<&Histogram> = self.live(self.period_of(now)).collect();
        let mut rows = Vec::new();
        let mut total = 0u64;
        for b in 0..BUCKETS {
            let answered: u64 = live.iter().map(|h| h.bucket_of_kind(b, ANSWERED)).sum();
            let censored: u64 = live.iter().map(|h| h.bucket_of_kind(b, CENSORED)).sum();
            if answered + censored > 0 {
                // The bucket's middle: its upper bound would overstate every latency by up
                // to 1/16 (half of that on average), and move the delay with it.
                let lower = if b == 0 { 0 } else { upper_of(b - 1) + 1 };
                rows.push(((lower + upper_of(b)) as f64 / 2.0, answered, censored));
                total += answered + censored;
            }
        }
        let mut at_risk = total;
        let mut s = 1.0;
        let mut curve = Vec::with_capacity(rows.len());
        for (us, answered, censored) in rows {
            if answered > 0 && at_risk > 0 {
                s *= 1.0 - answered as f64 / at_risk as f64;
                curve.push((us, s));
            }
            at_risk = at_risk.saturating_sub(answered + censored);
        }
        (curve, total)
    }

    /// When a hedge is worth sending, predicted from the latencies of the current and
    /// previous period (with the requests hedges beat as censored observations, so a tail
    /// that hedging cuts off stays known): the earliest time `t` at which a hedge sent
    /// then, its latency drawn from the same curve, answers before the primary at least as
    /// often as not — P(L' < L − t | L > t) ≥ ½, so that no more hedges are wasted than
    /// win. A light tail never qualifies (a request slower than most is not much slower
    /// than a hedge would be); a tail of stragglers does, once a request still running is
    /// more likely a straggler than not. `(None, n)` when no time does; `None` without
    /// samples.
    pub(crate) fn hedge_delay(&self, now: Instant) -> Option<(Option<Duration>, u64)> {
        let (curve, total) = self.survival(now);
        if total == 0 {
            return None;
        }
        // The hedge's latency h: the curve's mass at each point (what is left beyond the
        // last one never answers within the window's evidence), as a cumulative sum for
        // P(h < r).
        let mut cdf = Vec::with_capacity(curve.len());
        let (mut prev, mut c) = (1.0, 0.0);
        for (_, s) in &curve {
            c += prev - s;
            cdf.push(c);
            prev = *s;
        }
        let answered = c;
        let below = |r: f64| -> f64 {
            let i = curve.partition_point(|(us, _)| *us < r);
            if i == 0 { 0.0 } else { cdf[i - 1] }
        };
        let mut previous: Option<(f64, f64)> = None;
        for (k, (t, s_t)) in curve.iter().enumerate() {
            if *s_t <= 0.0 {
                break;
            }
            // Over the primary's latency L > t, by the curve's points beyond t: the hedge
            // wins when it answers within the primary's remaining time.
            let mut win = 0.0;
            let mut prev_s = *s_t;
            for (l, s_l) in &curve[k + 1..] {
                win += (prev_s - s_l) / s_t * below(l - t);
                prev_s = *s_l;
            }
            // The primary's tail beyond the last answer is still running (censored):
            // every hedge that answers beats it.
            win += prev_s / s_t * answered;
            if win >= 0.5 {
                // Between two points of the curve (a bucket is 1/16 of its power of two
                // wide), where the win chance crosses one half.
                let at = match previous {
                    Some((t0, w0)) if win > w0 => t0 + (0.5 - w0) / (win - w0) * (t - t0),
                    _ => *t,
                };
                return Some((Some(Duration::from_micros(at as u64)), total));
            }
            previous = Some((*t, win));
        }
        Some((None, total))
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

    /// A thread's row of an older period is read as empty once another thread starts the
    /// histogram's new period, and cleared by its owner before its first write in it -
    /// never added to the new period's counts. (The semantics of the row tags; the race
    /// they close - an owner's store landing after another thread's clearing - is not
    /// reproduced here: no thread clears another's row any more.)
    #[tokio::test(start_paused = true)]
    async fn an_older_periods_row_never_counts_in_a_new_one() {
        let r = std::sync::Arc::new(RollingLatency::new(Duration::from_secs(1)));
        let t0 = Instant::now();
        for _ in 0..100 {
            r.record(t0, Duration::from_millis(5));
        }
        assert_eq!(r.count(t0), 100);
        // Two periods on, the same histogram: another thread records first.
        let later = t0 + Duration::from_secs(2);
        let other = std::sync::Arc::clone(&r);
        std::thread::spawn(move || {
            other.record(later, Duration::from_millis(7));
        })
        .join()
        .unwrap();
        assert_eq!(
            r.count(later),
            1,
            "this thread's 100 are of an older period"
        );
        r.record(later, Duration::from_millis(9));
        assert_eq!(r.count(later), 2);
        let (p50, n) = r.quantile(later, 0.5).unwrap();
        assert_eq!(n, 2);
        assert!(p50 >= Duration::from_millis(7), "{p50:?}");
    }

    proptest! {
        /// Unstriped, a window holds what a striped one does: the same counts, quantiles
        /// and hedge delay, from a sixteenth of the memory and less.
        #[test]
        fn unstriped_keeps_what_striped_does(
            samples in prop::collection::vec((0u64..3_000, 1u64..200_000, any::<bool>()), 1..300),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let striped = RollingLatency::new(Duration::from_secs(1));
                let unstriped = RollingLatency::unstriped(Duration::from_secs(1));
                let t0 = Instant::now();
                for (at_ms, us, censored) in &samples {
                    let at = t0 + Duration::from_millis(*at_ms);
                    for r in [&striped, &unstriped] {
                        if *censored {
                            r.record_censored(at, Duration::from_micros(*us));
                        } else {
                            r.record(at, Duration::from_micros(*us));
                        }
                    }
                }
                let end = t0 + Duration::from_millis(3_000);
                assert_eq!(striped.count(end), unstriped.count(end));
                for q in [0.5, 0.95, 0.999] {
                    assert_eq!(striped.quantile(end, q), unstriped.quantile(end, q));
                }
                assert_eq!(striped.hedge_delay(end), unstriped.hedge_delay(end));
            });
            let size = |r: &RollingLatency| r.hists.iter().map(|h| h.counts.len()).sum::<usize>();
            prop_assert!(
                size(&RollingLatency::unstriped(Duration::from_secs(1))) * 16
                    <= size(&RollingLatency::new(Duration::from_secs(1)))
            );
        }
    }
}
