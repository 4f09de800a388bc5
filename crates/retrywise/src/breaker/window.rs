//! Sliding windows of call outcomes.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

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
/// last `buckets` epochs'. Tags wrap after 2^20 bucket lengths (2.4 days at 200 ms), so
/// once per epoch the first call or reading sweeps out the buckets that have left the
/// window, and after a silence of 2^19 epochs every bucket: none lives long enough for
/// its tag to come round and read as current (or as newer, dropping calls).
#[derive(Debug)]
pub(crate) struct TimeBuckets {
    buckets: Box<[AtomicU64]>,
    /// Divides by the bucket length (ns) with a multiplication.
    bucket_nanos: StrengthReducedU64,
    /// Divides by the number of buckets likewise.
    len: StrengthReducedU64,
    /// The epoch the buckets were last swept in ([`TimeBuckets::sweep`]).
    swept: AtomicU64,
    /// The breaker epoch whose calls the window holds (not a bucket's epoch).
    state: AtomicU64,
}

impl TimeBuckets {
    /// Once per epoch (the first call or reading in it): clears the buckets that have
    /// left the window as of `epoch` - all of them after 2^19 epochs of silence, when a tag
    /// may have come round. One load on every other call.
    fn sweep(&self, epoch: u64) {
        let last = self.swept.load(Ordering::Relaxed);
        if last >= epoch {
            return;
        }
        let silent = epoch - last >= TAG_MASK / 2;
        // After a silence every bucket goes, a tag equal to the new epoch's included: read
        // before the sweep is claimed, so that a bucket written after (a call of the new
        // epoch, by a thread that found the sweep claimed) no longer holds what was read,
        // and is not cleared. (Once per silence: the one allocation on this path.) An
        // ordinary sweep clears only buckets out of the window, which no current call
        // writes without changing them first.
        let seen: Option<Vec<u64>> = silent.then(|| {
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Acquire))
                .collect()
        });
        if self
            .swept
            .compare_exchange(last, epoch, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let n = self.buckets.len() as u64;
        let tag = epoch & TAG_MASK;
        for (i, slot) in self.buckets.iter().enumerate() {
            let cur = seen
                .as_ref()
                .map_or_else(|| slot.load(Ordering::Acquire), |s| s[i]);
            let behind = tag.wrapping_sub(cur >> (3 * COUNT_BITS)) & TAG_MASK;
            // Out of the window, and not a newer bucket (a call that read the clock later
            // and got here first).
            let old = behind >= n && behind <= TAG_MASK - LATE_WINDOWS * n;
            if cur != 0 && (silent || old) {
                // Lost to a concurrent write: that bucket is current again.
                let _ = slot.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Counts one call of breaker epoch `state` at `now_nanos`; returns the window's
    /// aggregates then (one division for both), or `None` when the window holds another
    /// state's calls.
    fn push(&self, state: u64, now_nanos: u64, failed: bool, slow: bool) -> Option<Counts> {
        let epoch = now_nanos / self.bucket_nanos;
        self.push_at(state, epoch, failed, slow)
            .then(|| self.counts_at(epoch))
    }

    /// Counts a call of breaker epoch `state` in bucket `epoch`; false when the window
    /// holds another state's calls. (A push that read the state just before a clear
    /// announced the next can still land after it: one call of the old state in the new
    /// window, counted as it was.)
    fn push_at(&self, state: u64, epoch: u64, failed: bool, slow: bool) -> bool {
        if self.state.load(Ordering::Acquire) != state {
            return false;
        }
        self.sweep(epoch);
        // A call that ended a window or more before the last bucket swept is out of the
        // window: dropped (its slot may hold a bucket of any age by then).
        if epoch.saturating_add(self.buckets.len() as u64) <= self.swept.load(Ordering::Relaxed) {
            return true;
        }
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
                return true;
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
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    fn counts(&self, now_nanos: u64) -> Counts {
        let epoch = now_nanos / self.bucket_nanos;
        self.sweep(epoch);
        self.counts_at(epoch)
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

    fn clear(&self, state: u64) {
        self.state.store(state, Ordering::Release);
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
///
/// The ring holds the calls of one breaker epoch (the state it was cleared for): each
/// flag and each count carries the epoch's low bits, and a push of an earlier epoch's
/// call - one that raced the transition that cleared the ring - changes no count, and
/// its flag, left in a slot, is none of the new epoch's. (At most it adds one to the
/// calls, in the direction that lowers both rates.)
#[derive(Debug)]
pub(crate) struct CountRing {
    /// `tag << 2 | flags`, the tag the low 6 bits of the epoch of the call.
    slots: Box<[AtomicU8]>,
    /// Pushes since the last clear.
    head: AtomicU64,
    /// `epoch << 32 | count` (the epoch's low 32 bits).
    failures: AtomicU64,
    slow: AtomicU64,
    /// The epoch whose calls the ring holds.
    epoch: AtomicU64,
}

/// A slot's tag: the epoch's low 6 bits (the flags take 2). A slot keeps a flag of an
/// earlier epoch only after a push raced a clear, until the next clear zeroes it: tags
/// never come round while one is left.
fn slot_tag(epoch: u64) -> u8 {
    (epoch & 0x3f) as u8
}

/// The count in a counter's low 32 bits: signed, since a push that takes a flag out may
/// be counted before the push that put it in (the sum is right once both are); read as 0
/// meanwhile.
fn count_of(word: u64) -> u32 {
    u32::try_from((word as u32 as i32).max(0)).unwrap_or(0)
}

/// Moves the count in `counter` by the change of a flag from `had` to `has`, if the
/// counter is `epoch`'s; its count then, or `None` for a count of another epoch.
fn adjust(counter: &AtomicU64, epoch: u64, had: bool, has: bool) -> Option<u32> {
    let tag = epoch & 0xffff_ffff;
    let mut cur = counter.load(Ordering::Acquire);
    loop {
        if cur >> 32 != tag {
            return None;
        }
        let count = cur as u32;
        let next = match (had, has) {
            (false, true) => count.wrapping_add(1),
            (true, false) => count.wrapping_sub(1),
            _ => return Some(count_of(cur)),
        };
        let word = tag << 32 | u64::from(next);
        match counter.compare_exchange_weak(cur, word, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(count_of(word)),
            Err(seen) => cur = seen,
        }
    }
}

impl CountRing {
    fn new(n: u32) -> Self {
        Self {
            slots: (0..n).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
        }
    }

    /// Counts a call of `epoch`; `None` when the ring holds another epoch's calls.
    fn push(&self, epoch: u64, failed: bool, slow: bool) -> Option<Counts> {
        if self.epoch.load(Ordering::Acquire) != epoch {
            return None;
        }
        let tag = slot_tag(epoch);
        let flags = tag << 2 | (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
        let n = self.slots.len() as u64;
        let i = self.head.fetch_add(1, Ordering::AcqRel);
        let slot = &self.slots[(i % n) as usize];
        // The slot is read, then the epoch checked, then the flag swapped in only if the
        // slot is as read: a clear and a new epoch's push cannot both come between (the
        // push would change the slot), so this push never evicts a newer epoch's flag -
        // whose count would then outlive it.
        let mut old = slot.load(Ordering::Acquire);
        loop {
            if self.epoch.load(Ordering::Acquire) != epoch {
                return None;
            }
            match slot.compare_exchange_weak(old, flags, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(seen) => old = seen,
            }
        }
        // A flag of another epoch was taken out of the counts when the ring was cleared.
        let had = if old >> 2 == tag { old & 3 } else { 0 };
        Some(Counts {
            calls: u32::try_from((i + 1).min(n)).unwrap_or(u32::MAX),
            failures: adjust(&self.failures, epoch, had & FAILED != 0, failed)?,
            slow: adjust(&self.slow, epoch, had & SLOW != 0, slow)?,
        })
    }

    fn counts(&self) -> Counts {
        let n = self.slots.len() as u64;
        let calls = self.head.load(Ordering::Acquire).min(n);
        let read = |c: &AtomicU64| count_of(c.load(Ordering::Acquire));
        Counts {
            calls: u32::try_from(calls).unwrap_or(u32::MAX),
            failures: read(&self.failures),
            slow: read(&self.slow),
        }
    }

    /// Empties the ring for the calls of `epoch`: announced first, so that a push of an
    /// earlier epoch that comes after changes nothing.
    fn clear(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Release);
        }
        let fresh = (epoch & 0xffff_ffff) << 32;
        self.failures.store(fresh, Ordering::Release);
        self.slow.store(fresh, Ordering::Release);
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
                    swept: AtomicU64::new(0),
                    state: AtomicU64::new(0),
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

    /// Adds a call of breaker epoch `state` that ended `now_nanos` after the breaker's
    /// origin; returns the window's counts including it, or `None` when the window was
    /// cleared for a later state (the call raced a transition: it decides nothing).
    pub(crate) fn push_in(
        &self,
        state: u64,
        now_nanos: u64,
        failed: bool,
        slow: bool,
    ) -> Option<Counts> {
        match self {
            Window::Count(r) => r.push(state, failed, slow),
            Window::Time(t) => t.push(state, now_nanos, failed, slow),
        }
    }

    /// Adds a call that can open no circuit (a success that was not slow: it lowers both
    /// rates), without summing the window; `None` when the window is a time window (its
    /// sum is the costly part) or holds a later state's calls, else the aggregates as
    /// [`push_in`](Self::push_in) gives them.
    pub(crate) fn push_quiet_in(&self, state: u64, now_nanos: u64) -> Option<Counts> {
        match self {
            Window::Count(r) => r.push(state, false, false),
            Window::Time(t) => {
                t.push_at(state, now_nanos / t.bucket_nanos, false, false);
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

    /// Forgets every call, and holds the calls of breaker epoch `state` from now on.
    pub(crate) fn clear_for(&self, state: u64) {
        match self {
            Window::Count(r) => r.clear(state),
            Window::Time(t) => t.clear(state),
        }
    }

    /// The breaker epoch whose calls the window holds (tests).
    #[cfg(test)]
    fn state(&self) -> u64 {
        match self {
            Window::Count(r) => r.epoch.load(Ordering::Acquire),
            Window::Time(t) => t.state.load(Ordering::Acquire),
        }
    }

    /// [`push_in`](Self::push_in) for the state the window holds (tests).
    #[cfg(test)]
    pub(crate) fn push(&self, now_nanos: u64, failed: bool, slow: bool) -> Counts {
        self.push_in(self.state(), now_nanos, failed, slow)
            .unwrap_or_default()
    }

    /// [`push_quiet_in`](Self::push_quiet_in) for the state the window holds (tests).
    #[cfg(test)]
    pub(crate) fn push_quiet(&self, now_nanos: u64) -> Option<Counts> {
        self.push_quiet_in(self.state(), now_nanos)
    }

    /// Forgets every call (tests).
    #[cfg(test)]
    pub(crate) fn clear(&self) {
        self.clear_for(self.state());
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

    /// After a silence of as many epochs as the tags hold (or a few fewer), the old
    /// failures neither read as current nor make the slot look newer than the calls that
    /// land in it: they are swept out.
    #[test]
    fn a_silence_as_long_as_the_tags_go_round_leaves_nothing_behind() {
        let ms = 1_000_000u64;
        for silence in [1u64 << 20, (1 << 20) - 2, (1 << 19) + 1] {
            let w = Window::new(SlidingWindow::Time {
                duration: Duration::from_millis(4),
                buckets: 4,
            });
            for _ in 0..3 {
                w.push(0, true, true);
            }
            let later = silence * ms;
            assert_eq!(w.counts(later), Counts::default(), "after {silence}");
            assert_eq!(
                w.push(later, true, false),
                Counts {
                    calls: 1,
                    failures: 1,
                    slow: 0
                },
                "after {silence}"
            );
        }
        // Calls now and then: each finds its bucket swept of the calls a window ago.
        let w = Window::new(SlidingWindow::Time {
            duration: Duration::from_millis(4),
            buckets: 4,
        });
        for k in 0..40u64 {
            let at = k * (1 << 18) * ms;
            assert_eq!(w.push(at, true, false).calls, 1, "call {k}");
        }
    }

    /// A push of an earlier epoch that raced the clear for a new one counts nothing in
    /// the new window: its flag, left in a slot after the clear, is not the new epoch's
    /// (before, it was a failure with no call behind it: one success later the failure
    /// rate read 100 %).
    #[test]
    fn a_push_that_raced_a_clear_counts_nothing_in_the_new_window() {
        let r = CountRing::new(3);
        assert!(r.push(0, true, true).is_some());
        r.clear(1);
        assert_eq!(r.push(0, true, false), None, "an earlier epoch's call");
        // What a push of epoch 0 leaves when its swap lands after the clear's: a flag in
        // its slot, and one more push counted.
        r.slots[0].store(slot_tag(0) << 2 | FAILED | SLOW, Ordering::Release);
        r.head.fetch_add(1, Ordering::AcqRel);
        assert_eq!(r.counts().failures, 0);
        for _ in 0..3 {
            let c = r.push(1, false, false).unwrap();
            assert_eq!((c.failures, c.slow), (0, 0), "{c:?}");
        }
        let c = r.push(1, true, false).unwrap();
        assert_eq!((c.calls, c.failures, c.slow), (3, 1, 0));
    }

    /// Old-epoch pushes from several threads while the ring is cleared for a new epoch:
    /// whatever the interleaving, the new epoch's counts hold none of them.
    #[test]
    fn concurrent_pushes_of_an_old_epoch_never_reach_a_cleared_ring() {
        for _ in 0..20 {
            let r = CountRing::new(8);
            let go = std::sync::Barrier::new(5);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        go.wait();
                        for _ in 0..2_000 {
                            let _ = r.push(0, true, true);
                        }
                    });
                }
                go.wait();
                std::thread::yield_now();
                r.clear(1);
            });
            let c = r.counts();
            assert_eq!((c.failures, c.slow), (0, 0), "{c:?}");
            let tagged = r
                .slots
                .iter()
                .filter(|s| s.load(Ordering::Acquire) >> 2 == slot_tag(1))
                .count();
            assert_eq!(tagged, 0, "no flag of the new epoch");
        }
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
