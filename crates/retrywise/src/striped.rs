//! Counters that many threads can bump without fighting over one cache line.
//!
//! A shared `AtomicU64` incremented on every call becomes the bottleneck as soon as two
//! threads call at once: each increment moves the cache line between cores, and each is a
//! lock-prefixed instruction even on one thread. Here each thread owns a cell of its own
//! (the first [`STRIPES`] threads to count claim one each, and give it back when they
//! exit): an owned cell is updated with a plain load and store, which only its owner ever
//! writes, so no update is lost and none needs a lock prefix. Threads beyond that share one
//! last cell, updated atomically. Reads add the cells up; they are rare (metrics scrapes).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Cells that threads can own.
pub(crate) const STRIPES: usize = 16;

/// Which of the `STRIPES` cells are owned, one bit each.
static CLAIMED: AtomicU32 = AtomicU32::new(0);

/// A thread's claim on a cell, given back when the thread exits.
struct Claim(Option<usize>);

impl Claim {
    fn take() -> Self {
        let mut cur = CLAIMED.load(Ordering::Relaxed);
        loop {
            let free = (!cur).trailing_zeros() as usize;
            if free >= STRIPES {
                return Claim(None);
            }
            // Acquire: whatever the previous owner of this cell wrote is visible to us.
            match CLAIMED.compare_exchange_weak(
                cur,
                cur | (1 << free),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Claim(Some(free)),
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            // Release: our last writes happen before the next owner's first.
            CLAIMED.fetch_and(!(1 << i), Ordering::Release);
        }
    }
}

thread_local! {
    static CLAIM: Claim = Claim::take();
}

/// The cell the calling thread owns, or `None` if it must use the shared one.
pub(crate) fn stripe() -> Option<usize> {
    CLAIM.try_with(|c| c.0).ok().flatten()
}

/// One cell on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Cell64(AtomicU64);

/// A counter incremented from many threads and read rarely.
#[derive(Debug, Default)]
pub(crate) struct Striped {
    /// `STRIPES` owned cells, then the shared one.
    cells: [Cell64; STRIPES + 1],
}

impl Striped {
    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        match stripe() {
            Some(i) => {
                let c = &self.cells[i].0;
                c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
            }
            None => {
                self.cells[STRIPES].0.fetch_add(n, Ordering::Relaxed);
            }
        }
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
    fn no_update_is_lost_with_more_threads_than_cells() {
        let c = Striped::default();
        std::thread::scope(|s| {
            for _ in 0..(STRIPES + 8) {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        c.add(1);
                    }
                });
            }
        });
        assert_eq!(c.get(), (STRIPES as u64 + 8) * 10_000);
    }

    #[test]
    fn cells_are_given_back_when_threads_exit() {
        let c = Striped::default();
        // Many more threads than cells, one after another: each exiting thread gives its
        // cell back, the next claims it, and the total carries over.
        for _ in 0..(3 * STRIPES) {
            std::thread::spawn(|| ()).join().unwrap();
            std::thread::scope(|s| {
                s.spawn(|| c.add(2));
            });
        }
        assert_eq!(c.get(), 6 * STRIPES as u64);
    }
}
