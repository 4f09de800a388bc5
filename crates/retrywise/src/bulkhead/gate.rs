//! A counting gate: at most `max` holders, entered with one compare-and-swap.
//!
//! tokio's `Semaphore` takes a lock on every release to serve its FIFO wait queue; a
//! bulkhead's fast path (room available, nobody waiting) needs none of that. Here entering
//! is one CAS on a counter and leaving one decrement, plus a wake-up only when someone
//! waits. Waiters are not served in FIFO order; they wait at most the bulkhead's maximum
//! wait, which bounds the unfairness.

use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Bits of [`Gate::state`] holding the number of holders; the rest count admissions.
const ACTIVE_BITS: u32 = 24;
const ACTIVE_MASK: u64 = (1 << ACTIVE_BITS) - 1;
const ADMITTED_ONE: u64 = 1 << ACTIVE_BITS;
/// The largest `max` a gate takes.
pub(crate) const MAX_HOLDERS: u32 = (1 << ACTIVE_BITS) - 1;

#[derive(Debug)]
pub(crate) struct Gate {
    /// Holders now (low 24 bits; never above `max`, every increment is a CAS that checks
    /// it) and admissions ever (high 40 bits, wrapping after 10^12), updated together so
    /// that counting an admission costs nothing extra.
    state: AtomicU64,
    /// The most holders admitted (an adaptive limit moves it; holders already in stay).
    max: AtomicU32,
    /// Tasks inside `enter_within`; `leave` wakes one when non-zero.
    waiting: AtomicU32,
    notify: Notify,
}

impl Gate {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            state: AtomicU64::new(0),
            max: AtomicU32::new(max),
            waiting: AtomicU32::new(0),
            notify: Notify::new(),
        }
    }

    /// The most holders admitted now.
    pub(crate) fn max(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }

    /// Moves the most holders admitted; raising it wakes as many waiters as it makes room
    /// for (one each: a waiter that gets in wakes nobody).
    pub(crate) fn set_max(&self, max: u32) {
        let max = max.min(MAX_HOLDERS);
        // Most samples leave the limit where it was: no write, no shared cache line dirtied.
        if self.max.load(Ordering::Relaxed) == max {
            return;
        }
        let old = self.max.swap(max, Ordering::SeqCst);
        if max > old {
            let waiting = self.waiting.load(Ordering::SeqCst);
            for _ in 0..(max - old).min(waiting) {
                self.notify.notify_one();
            }
        }
    }

    pub(crate) fn active(&self) -> u32 {
        (self.state.load(Ordering::Relaxed) & ACTIVE_MASK) as u32
    }

    /// Counts an admission made by handing a leaving holder's room to a waiter (the
    /// number of holders does not change).
    pub(crate) fn count_admission(&self) {
        self.state.fetch_add(ADMITTED_ONE, Ordering::Relaxed);
    }

    /// Takes back an admission counted for a call that never ran (handed room, then
    /// dropped before taking it).
    pub(crate) fn uncount_admission(&self) {
        self.state.fetch_sub(ADMITTED_ONE, Ordering::Relaxed);
    }

    /// Calls admitted so far.
    pub(crate) fn admitted(&self) -> u64 {
        self.state.load(Ordering::Relaxed) >> ACTIVE_BITS
    }

    /// Enters if there is room now.
    pub(crate) fn try_enter(&self) -> bool {
        self.try_enter_with(Ordering::Acquire)
    }

    fn try_enter_with(&self, success: Ordering) -> bool {
        let mut cur = self.state.load(Ordering::Relaxed);
        let max = u64::from(self.max.load(Ordering::Relaxed));
        loop {
            if (cur & ACTIVE_MASK) >= max {
                return false;
            }
            match self.state.compare_exchange_weak(
                cur,
                cur.wrapping_add(ADMITTED_ONE + 1),
                success,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Enters, waiting up to `max_wait` for room.
    pub(crate) async fn enter_within(&self, max_wait: Duration) -> bool {
        if self.try_enter() {
            return true;
        }
        // (A wait beyond any setting is a wait of that longest setting: no overflow.)
        let deadline = Instant::now() + max_wait.min(crate::MAX_CONFIG_DURATION);
        // Announce the wait before the last look at the counter: either that look sees the
        // room a `leave` made, or that `leave` sees the waiter and wakes it (both sides use
        // SeqCst, so one of the two orders holds).
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            if self.try_enter_with(Ordering::SeqCst) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // A wake-up that raced the timeout is passed on by `Notified`'s drop.
                return self.try_enter_with(Ordering::SeqCst);
            }
        }
    }

    pub(crate) fn leave(&self) {
        self.state.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }
}

struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    /// A limit raised by many places lets as many waiters in at once: waking one of them
    /// would leave the rest waiting for holders to leave (or timing out) beside free room.
    #[tokio::test(start_paused = true)]
    async fn raising_the_limit_lets_in_as_many_waiters_as_it_makes_room_for() {
        let gate = Arc::new(Gate::new(1));
        assert!(gate.try_enter());
        let started = Instant::now();
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let gate = Arc::clone(&gate);
                tokio::spawn(async move { gate.enter_within(Duration::from_secs(1)).await })
            })
            .collect();
        while gate.waiting.load(Ordering::SeqCst) < 5 {
            tokio::task::yield_now().await;
        }
        // Room for three more: three get in now, two wait on until their time is up.
        gate.set_max(4);
        let mut entered = Vec::new();
        for w in waiters {
            entered.push((w.await.unwrap(), started.elapsed()));
        }
        let now: Vec<_> = entered
            .iter()
            .filter(|(ok, at)| *ok && at.is_zero())
            .collect();
        assert_eq!(now.len(), 3, "{entered:?}");
        assert_eq!(gate.active(), 4);
        assert!(
            entered
                .iter()
                .filter(|(ok, _)| !ok)
                .all(|(_, at)| *at == Duration::from_secs(1)),
            "{entered:?}"
        );
    }
}
