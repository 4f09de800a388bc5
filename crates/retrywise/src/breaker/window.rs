//! Sliding windows of call outcomes.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

use strength_reduce::StrengthReducedU64;

use super::SlidingWindow;

const FAILED: u8 = 1;
const SLOW: u8 = 2;

/// Aggregate counts of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Counts {
    pub(crate) fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            f64::from(self.failures) / f64::from(self.calls)
        }
    }

    pub(crate) fn slow_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            f64::from(self.slow) / f64::from(self.calls)
        }
    }
}

/// Bits of a bucket's word: the low bits of its epoch (a tag), then its calls, failures
/// and slow calls.
const TAG_BITS: u32 = 20;
const COUNT_BITS: u32 = 14;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Calls a bucket counts at most: a call that finds it full halves its three counts first
/// (its rates stay, its weight against the other buckets halves), so that a bucket of a
/// busy second still sees the failures that come late in it.
const COUNT_MAX: u64 = COUNT_MASK;
/// Buckets a time window may have: far fewer than the tags, so that tags within a window
/// never alias, and few enough that a window's sums fit in a `u32`.
pub(crate) const MAX_TIME_BUCKETS: u32 = 4096;

/// The most calls a count window holds (a slot each, allocated up front).
pub(crate) const MAX_COUNT: u32 = 1 << 20;
/// A slot whose tag is ahead of a call's by at most this many windows holds a newer
/// bucket (the call is late); further ahead, it is a stale bucket whose tag wrapped.
const LATE_WINDOWS: u64 = 4;

fn pack(tag: u64, calls: u64, failures: u64, slow: u64) -> u64 {
    (tag << (3 * COUNT_BITS)) | (calls << (2 * COUNT_BITS)) | (failures << COUNT_BITS) | slow
}

fn unpack(w: u64) -> (u64, u64, u64, u64) {
    (
        w >> (3 * COUNT_BITS),
        (w >> (2 * COUNT_BITS)) & COUNT_MASK,
        (w >> COUNT_BITS) & COUNT_MASK,
        w & COUNT_MASK,
    )
}

/// The calls of the last `duration`, in buckets, recorded without a lock: each bucket is
/// one word (its epoch's tag and its three counts) moved by compare-and-swap, like the
/// health tracker's. A bucket is read as part of the window when its tag is one of the
/// last `buckets` epochs' (tags wrap after 2^20 bucket lengths: a bucket left untouched
/// for exactly that long would be read as current — 2.4 days of silence at 200 ms).
#[derive(Debug)]
pub(crate) struct TimeBuckets {
    buckets: Box<[AtomicU64]>,
    /// Divides by the bucket length (ns) with a multiplication.
    bucket_nanos: StrengthReducedU64,
    /// Divides by the number of buckets likewise.
    len: StrengthReducedU64,
}

impl TimeBuckets {
    /// Counts one call at `now_nanos`; returns the window's aggregates then (one division
    /// for both).
    fn push(&self, now_nanos: u64, failed: bool, slow: bool) -> Counts {
        let epoch = now_nanos / self.bucket_nanos;
        self.push_at(epoch, failed, slow);
        self.counts_at(epoch)
    }

    fn push_at(&self, epoch: u64, failed: bool, slow: bool) {
        let n = self.buckets.len() as u64;
        let tag = epoch & TAG_MASK;
        let slot = &self.buckets[(epoch % self.len) as usize];
        let mut cur = slot.load(Ordering::Acquire);
        loop {
            let (t, calls, failures, slows) = unpack(cur);
            let ahead = t.wrapping_sub(tag) & TAG_MASK;
            let (calls, failures, slows) = if calls > 0 && t == tag {
                (calls, failures, slows)
            } else if calls > 0 && ahead <= LATE_WINDOWS * n {
                // The slot already holds a newer bucket: this call ended before it, and
                // before the window (a thread that read the clock earlier and got here
                // later).
                return;
            } else {
                (0, 0, 0)
            };
            let (calls, failures, slows) = if calls >= COUNT_MAX {
                (calls.div_ceil(2), failures.div_ceil(2), slows.div_ceil(2))
            } else {
                (calls, failures, slows)
            };
            let next = pack(
                tag,
                calls + 1,
                failures + u64::from(failed),
                slows + u64::from(slow),
            );
            match slot.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    fn counts(&self, now_nanos: u64) -> Counts {
        self.counts_at(now_nanos / self.bucket_nanos)
    }

    fn counts_at(&self, epoch: u64) -> Counts {
        let n = self.buckets.len() as u64;
        let tag = epoch & TAG_MASK;
        let mut c = Counts::default();
        for slot in self.buckets.iter() {
            let (t, calls, failures, slows) = unpack(slot.load(Ordering::Acquire));
            if calls > 0 && tag.wrapping_sub(t) & TAG_MASK < n {
                // Each count fits in 14 bits: the sums of a window fit in a u32.
                c.calls += calls as u32;
                c.failures += failures as u32;
                c.slow += slows as u32;
            }
        }
        c
    }

    fn clear(&self) {
        for slot in self.buckets.iter() {
            slot.store(0, Ordering::Release);
        }
    }
}

/// The last `n` calls, recorded without a lock: a ring of outcome flags written with one
/// `fetch_add` (which slot) and one `swap` (what it held before), and aggregate counts
/// adjusted only when the flags change. The aggregates always equal the flags in the ring
/// once concurrent pushes complete; while they are in flight they may be off by those
/// pushes, which rates can afford.
#[derive(Debug)]
pub(crate) struct CountRing {
    slots: Box<[AtomicU8]>,
    /// Pushes since the last clear.
    head: AtomicU64,
    failures: AtomicI64,
    slow: AtomicI64,
}

fn adjust(counter: &AtomicI64, had: bool, has: bool) -> u32 {
    let v = match (had, has) {
        (false, true) => counter.fetch_add(1, Ordering::AcqRel) + 1,
        (true, false) => counter.fetch_sub(1, Ordering::AcqRel) - 1,
        _ => counter.load(Ordering::Acquire),
    };
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

impl CountRing {
    fn new(n: u32) -> Self {
        Self {
            slots: (0..n).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    fn push(&self, failed: bool, slow: bool) -> Counts {
        let flags = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
        let n = self.slots.len() as u64;
        let i = self.head.fetch_add(1, Ordering::AcqRel);
        let old = self.slots[(i % n) as usize].swap(flags, Ordering::AcqRel);
        Counts {
            calls: u32::try_from((i + 1).min(n)).unwrap_or(u32::MAX),
            failures: adjust(&self.failures, old & FAILED != 0, failed),
            slow: adjust(&self.slow, old & SLOW != 0, slow),
        }
    }

    fn counts(&self) -> Counts {
        let n = self.slots.len() as u64;
        let calls = self.head.load(Ordering::Acquire).min(n);
        let read =
            |c: &AtomicI64| u32::try_from(c.load(Ordering::Acquire).max(0)).unwrap_or(u32::MAX);
        Counts {
            calls: u32::try_from(calls).unwrap_or(u32::MAX),
            failures: read(&self.failures),
            slow: read(&self.slow),
        }
    }

    fn clear(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            adjust(&self.failures, old & FAILED != 0, false);
            adjust(&self.slow, old & SLOW != 0, false);
        }
        self.head.store(0, Ordering::Release);
    }
}

/// The last `n` calls, or the calls of the last `duration`.
#[derive(Debug)]
pub(crate) enum Window {
    /// Lock-free.
    Count(CountRing),
    /// Lock-free too.
    Time(TimeBuckets),
}

impl Window {
    pub(crate) fn new(w: SlidingWindow) -> Self {
        match w {
            SlidingWindow::Count(n) => Window::Count(CountRing::new(n)),
            SlidingWindow::Time { duration, buckets } => {
                let buckets = buckets.max(1);
                Window::Time(TimeBuckets {
                    buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
                    bucket_nanos: StrengthReducedU64::new(
                        u64::try_from(duration.as_nanos() / u128::from(buckets))
                            .unwrap_or(u64::MAX)
                            .max(1),
                    ),
                    len: StrengthReducedU64::new(u64::from(buckets)),
                })
            }
        }
    }

    /// The number of calls a full window of this kind can hold (`u32::MAX` for time).
    pub(crate) fn capacity(&self) -> u32 {
        match self {
            Window::Count(r) => u32::try_from(r.slots.len()).unwrap_or(u32::MAX),
            Window::Time(_) => u32::MAX,
        }
    }

    /// Adds a call that ended `now_nanos` after the breaker's origin; returns the
    /// window's counts including it.
    pub(crate) fn push(&self, now_nanos: u64, failed: bool, slow: bool) -> Counts {
        match self {
            Window::Count(r) => r.push(failed, slow),
            Window::Time(t) => t.push(now_nanos, failed, slow),
        }
    }

    /// Adds a call that can open no circuit (a success that was not slow: it lowers both
    /// rates), without summing the window; `None` when the window is a time window (its
    /// sum is the costly part), else the aggregates as [`push`](Self::push) gives them.
    pub(crate) fn push_quiet(&self, now_nanos: u64) -> Option<Counts> {
        match self {
            Window::Count(r) => Some(r.push(false, false)),
            Window::Time(t) => {
                t.push_at(now_nanos / t.bucket_nanos, false, false);
                None
            }
        }
    }

    /// The aggregates of the window as of `now_nanos`.
    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        match self {
            Window::Count(r) => r.counts(),
            Window::Time(t) => t.counts(now_nanos),
        }
    }

    /// Forgets every call.
    pub(crate) fn clear(&self) {
        match self {
            Window::Count(r) => r.clear(),
            Window::Time(t) => t.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn a_quiet_push_counts_without_summing_a_time_window() {
        let t = Window::new(SlidingWindow::Time {
            duration: Duration::from_secs(1),
            buckets: 10,
        });
        t.push(0, true, false);
        assert_eq!(t.push_quiet(150_000_000), None);
        assert_eq!(t.push_quiet(150_000_001), None);
        let c = t.counts(200_000_000);
        assert_eq!((c.calls, c.failures, c.slow), (3, 1, 0));
        // A count window sums for free: it answers.
        let r = Window::new(SlidingWindow::Count(3));
        r.push(0, true, false);
        let c = r.push_quiet(0).unwrap();
        assert_eq!((c.calls, c.failures), (2, 1));
    }

    /// A bucket past its count keeps counting at half weight: the failures of a busy
    /// bucket's end are not lost.
    #[test]
    fn a_full_bucket_still_sees_its_late_failures() {
        let t = Window::new(SlidingWindow::Time {
            duration: Duration::from_secs(1),
            buckets: 10,
        });
        for _ in 0..COUNT_MAX {
            t.push_quiet(0);
        }
        let c = t.counts(0);
        assert_eq!((c.calls, c.failures), (COUNT_MAX as u32, 0));
        for _ in 0..2_000 {
            t.push(0, true, false);
        }
        let c = t.counts(0);
        assert!(c.failures >= 1_000, "{c:?}");
        assert!(
            c.calls <= COUNT_MAX as u32 && c.failures <= c.calls,
            "{c:?}"
        );
    }

    #[test]
    fn count_window_forgets_the_oldest() {
        let w = Window::new(SlidingWindow::Count(3));
        w.push(0, true, false);
        w.push(0, true, true);
        w.push(0, false, false);
        assert_eq!(
            w.counts(0),
            Counts {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        w.push(0, false, false);
        assert_eq!(
            w.counts(0),
            Counts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.push(0, false, false);
        assert_eq!(
            w.counts(0),
            Counts {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
        w.clear();
        assert_eq!(w.counts(0), Counts::default());
    }

    #[test]
    fn time_window_expires_buckets() {
        let s = 1_000_000_000;
        let w = Window::new(SlidingWindow::Time {
            duration: Duration::from_secs(10),
            buckets: 10,
        });
        w.push(0, true, false);
        w.push(5 * s, false, false);
        assert_eq!(w.counts(5 * s).calls, 2);
        assert_eq!(w.counts(9 * s + s / 2).failures, 1);
        assert_eq!(
            w.counts(10 * s),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.counts(15 * s).calls, 0);
        w.push(25 * s, true, true);
        assert_eq!(
            w.counts(25 * s),
            Counts {
                calls: 1,
                failures: 1,
                slow: 1
            }
        );
    }

    #[test]
    fn concurrent_pushes_keep_the_counts_equal_to_the_ring() {
        let w = Window::new(SlidingWindow::Count(37));
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let w = &w;
                s.spawn(move || {
                    let mut x = t + 1;
                    for _ in 0..20_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        w.push(0, x % 3 == 0, x % 5 == 0);
                    }
                });
            }
        });
        let Window::Count(r) = &w else { unreachable!() };
        let flags: Vec<u8> = r.slots.iter().map(|f| f.load(Ordering::Relaxed)).collect();
        let want = Counts {
            calls: 37,
            failures: flags.iter().filter(|f| **f & FAILED != 0).count() as u32,
            slow: flags.iter().filter(|f| **f & SLOW != 0).count() as u32,
        };
        assert_eq!(w.counts(0), want);
    }

    proptest! {
        #[test]
        fn count_window_matches_the_last_n(n in 1u32..20, outcomes in prop::collection::vec((any::<bool>(), any::<bool>()), 0..100)) {
            let w = Window::new(SlidingWindow::Count(n));
            for (i, (f, s)) in outcomes.iter().enumerate() {
                w.push(0, *f, *s);
                let start = (i + 1).saturating_sub(n as usize);
                let last = &outcomes[start..=i];
                let want = Counts {
                    calls: last.len() as u32,
                    failures: last.iter().filter(|o| o.0).count() as u32,
                    slow: last.iter().filter(|o| o.1).count() as u32,
                };
                prop_assert_eq!(w.counts(0), want);
            }
        }

        /// The lock-free time window counts exactly the calls of its last `buckets`
        /// bucket lengths, whatever the gaps between calls.
        #[test]
        fn time_window_matches_the_calls_of_its_last_buckets(
            buckets in 1u32..8,
            calls in prop::collection::vec((0u64..3_000_000, any::<bool>(), any::<bool>()), 0..80),
        ) {
            let bucket = 1_000_000u64; // 1 ms
            let w = Window::new(SlidingWindow::Time {
                duration: std::time::Duration::from_nanos(bucket * u64::from(buckets)),
                buckets,
            });
            let mut now = 0u64;
            let mut seen: Vec<(u64, bool, bool)> = Vec::new();
            for (gap, f, s) in calls {
                // Mostly short gaps; some of up to 3,000 buckets.
                now += if gap % 97 == 0 { gap * 1_000 } else { gap };
                let got = w.push(now, f, s);
                seen.push((now / bucket, f, s));
                let epoch = now / bucket;
                let live: Vec<_> = seen
                    .iter()
                    .filter(|(e, ..)| epoch - e < u64::from(buckets))
                    .collect();
                let want = Counts {
                    calls: live.len() as u32,
                    failures: live.iter().filter(|c| c.1).count() as u32,
                    slow: live.iter().filter(|c| c.2).count() as u32,
                };
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn a_bucket_whose_tag_wrapped_is_stale_and_a_late_call_is_dropped() {
        let ms = 1_000_000u64;
        let w = Window::new(SlidingWindow::Time {
            duration: Duration::from_millis(4),
            buckets: 4,
        });
        w.push(0, true, false);
        // 2^20 + 4 buckets later the slot's tag reads as 4 behind: stale, reset.
        let later = ((1 << 20) + 4) * ms;
        assert_eq!(
            w.push(later, false, false),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        // A call that ended a whole window before the slot's bucket is not counted.
        w.push(later - 4 * ms, true, true);
        assert_eq!(
            w.counts(later),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn concurrent_pushes_into_a_time_window_are_all_counted() {
        let w = Window::new(SlidingWindow::Time {
            duration: Duration::from_secs(10),
            buckets: 10,
        });
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let w = &w;
                s.spawn(move || {
                    for i in 0..3_000u64 {
                        // Four threads over three buckets.
                        w.push((i % 3) * 1_000_000_000 + t, i % 2 == 0, i % 3 == 0);
                    }
                });
            }
        });
        assert_eq!(
            w.counts(2_500_000_000),
            Counts {
                calls: 12_000,
                failures: 6_000,
                slow: 4_000,
            }
        );
    }
}
