//! Sliding windows of call outcomes.

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
pub(crate) struct Bucket {
    epoch: u64,
    counts: Counts,
}

/// The last `n` calls, or the calls of the last `duration`.
#[derive(Debug)]
pub(crate) enum Window {
    Count {
        /// Outcome flags of the last calls, oldest at `next` once full.
        ring: Box<[u8]>,
        next: usize,
        /// Aggregates of the ring's occupied entries; kept in step with every push.
        counts: Counts,
    },
    Time {
        buckets: Box<[Bucket]>,
        bucket_nanos: u64,
    },
}

impl Window {
    pub(crate) fn new(w: SlidingWindow) -> Self {
        match w {
            SlidingWindow::Count(n) => Window::Count {
                ring: vec![0; n as usize].into_boxed_slice(),
                next: 0,
                counts: Counts::default(),
            },
            SlidingWindow::Time { duration, buckets } => Window::Time {
                buckets: vec![Bucket::default(); buckets as usize].into_boxed_slice(),
                bucket_nanos: u64::try_from(duration.as_nanos() / u128::from(buckets))
                    .unwrap_or(u64::MAX)
                    .max(1),
            },
        }
    }

    /// The number of calls a full window of this kind can hold (`u32::MAX` for time).
    pub(crate) fn capacity(&self) -> u32 {
        match self {
            Window::Count { ring, .. } => u32::try_from(ring.len()).unwrap_or(u32::MAX),
            Window::Time { .. } => u32::MAX,
        }
    }

    /// Adds a call that ended `now_nanos` after the breaker's origin.
    pub(crate) fn push(&mut self, now_nanos: u64, failed: bool, slow: bool) {
        let flags = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
        match self {
            Window::Count { ring, next, counts } => {
                let len = ring.len();
                if counts.calls as usize == len {
                    let old = ring[*next];
                    counts.failures -= u32::from(old & FAILED != 0);
                    counts.slow -= u32::from(old & SLOW != 0);
                } else {
                    counts.calls += 1;
                }
                ring[*next] = flags;
                counts.failures += u32::from(failed);
                counts.slow += u32::from(slow);
                *next = if *next + 1 == len { 0 } else { *next + 1 };
            }
            Window::Time {
                buckets,
                bucket_nanos,
            } => {
                let epoch = now_nanos / *bucket_nanos;
                let i = (epoch % buckets.len() as u64) as usize;
                let b = &mut buckets[i];
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
        }
    }

    /// The aggregates of the window as of `now_nanos`.
    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        match self {
            Window::Count { counts, .. } => *counts,
            Window::Time {
                buckets,
                bucket_nanos,
            } => {
                let epoch = now_nanos / *bucket_nanos;
                let n = buckets.len() as u64;
                buckets
                    .iter()
                    .filter(|b| b.epoch <= epoch && epoch - b.epoch < n && b.counts.calls > 0)
                    .fold(Counts::default(), |acc, b| Counts {
                        calls: acc.calls + b.counts.calls,
                        failures: acc.failures + b.counts.failures,
                        slow: acc.slow + b.counts.slow,
                    })
            }
        }
    }

    /// Forgets every call.
    pub(crate) fn clear(&mut self) {
        match self {
            Window::Count { ring, next, counts } => {
                ring.fill(0);
                *next = 0;
                *counts = Counts::default();
            }
            Window::Time { buckets, .. } => buckets.fill(Bucket::default()),
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
        let mut w = Window::new(SlidingWindow::Count(3));
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
        let mut w = Window::new(SlidingWindow::Time {
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

    proptest! {
        #[test]
        fn count_window_matches_the_last_n(n in 1u32..20, outcomes in prop::collection::vec((any::<bool>(), any::<bool>()), 0..100)) {
            let mut w = Window::new(SlidingWindow::Count(n));
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
