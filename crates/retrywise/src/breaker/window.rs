//! Sliding windows of call outcomes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

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

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    epoch: u64,
    counts: Counts,
}

/// The calls of the last `duration`, in buckets.
#[derive(Debug)]
pub(crate) struct TimeBuckets {
    buckets: Box<[Bucket]>,
    bucket_nanos: u64,
}

impl TimeBuckets {
    /// Counts one call at `now_nanos`; returns the window's aggregates then (one division
    /// for both).
    fn push(&mut self, now_nanos: u64, failed: bool, slow: bool) -> Counts {
        let epoch = now_nanos / self.bucket_nanos;
        self.push_at(epoch, failed, slow);
        self.counts_at(epoch)
    }

    fn push_at(&mut self, epoch: u64, failed: bool, slow: bool) {
        let i = (epoch % self.buckets.len() as u64) as usize;
        let b = &mut self.buckets[i];
        if b.epoch != epoch {
            *b = Bucket {
                epoch,
                counts: Counts::default(),
            };
        }
        b.counts.calls += 1;
        b.counts.failures += u32::from(failed);
        b.counts.slow += u32::from(slow);
    }

    fn counts(&self, now_nanos: u64) -> Counts {
        self.counts_at(now_nanos / self.bucket_nanos)
    }

    fn counts_at(&self, epoch: u64) -> Counts {
        let n = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|b| b.epoch <= epoch && epoch - b.epoch < n && b.counts.calls > 0)
            .fold(Counts::default(), |acc, b| Counts {
                calls: acc.calls + b.counts.calls,
                failures: acc.failures + b.counts.failures,
                slow: acc.slow + b.counts.slow,
            })
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
    /// Behind its own short lock (bucket rotation rewrites several fields).
    Time(Mutex<TimeBuckets>),
}

impl Window {
    pub(crate) fn new(w: SlidingWindow) -> Self {
        match w {
            SlidingWindow::Count(n) => Window::Count(CountRing::new(n)),
            SlidingWindow::Time { duration, buckets } => Window::Time(Mutex::new(TimeBuckets {
                buckets: vec![Bucket::default(); buckets as usize].into_boxed_slice(),
                bucket_nanos: u64::try_from(duration.as_nanos() / u128::from(buckets))
                    .unwrap_or(u64::MAX)
                    .max(1),
            })),
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
            Window::Time(t) => {
                let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
                t.push(now_nanos, failed, slow)
            }
        }
    }

    /// The aggregates of the window as of `now_nanos`.
    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        match self {
            Window::Count(r) => r.counts(),
            Window::Time(t) => t
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .counts(now_nanos),
        }
    }

    /// Forgets every call.
    pub(crate) fn clear(&self) {
        match self {
            Window::Count(r) => r.clear(),
            Window::Time(t) => t
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .buckets
                .fill(Bucket::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

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
    }
}
