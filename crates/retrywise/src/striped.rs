//! Counters that many threads can bump without fighting over one cache line.
//!
//! A shared `AtomicU64` incremented on every call becomes the bottleneck as soon as two
//! threads call at once: each increment moves the cache line between cores. A striped
//! counter (Java's `LongAdder`, which resilience4j uses for the same reason) gives each
//! thread its own padded cell and adds the cells up only when read — and reads are rare
//! (metrics scrapes).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes per counter; threads beyond this many share stripes.
pub(crate) const STRIPES: usize = 8;

/// One cell per cache-line pair (adjacent-line prefetching makes 128 bytes the safe size).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cell128(AtomicU64);

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's stripe: threads are numbered in the order they first count.
pub(crate) fn stripe() -> usize {
    STRIPE.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_THREAD.fetch_add(1, Ordering::Relaxed) % STRIPES;
        s.set(v);
        v
    })
}

/// A counter incremented from many threads and read rarely.
#[derive(Debug, Default)]
pub(crate) struct Striped {
    cells: [Cell128; STRIPES],
}

impl Striped {
    /// Adds `n`; returns the calling thread's cell after the addition (a cheap local
    /// count for "every k-th call" decisions).
    pub(crate) fn add(&self, n: u64) -> u64 {
        self.cells[stripe()]
            .0
            .fetch_add(n, Ordering::Relaxed)
            .wrapping_add(n)
    }

    /// The total (not a snapshot: concurrent additions may or may not be included).
    pub(crate) fn get(&self) -> u64 {
        self.cells
            .iter()
            .fold(0u64, |acc, c| acc.wrapping_add(c.0.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_across_threads() {
        let c = Striped::default();
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        c.add(1);
                    }
                });
            }
        });
        assert_eq!(c.get(), 120_000);
        assert!(c.add(5) >= 5);
    }
}
