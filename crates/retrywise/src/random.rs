//! Where jitter and exploration draw their random numbers.

use std::cell::RefCell;
use std::sync::Mutex;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

thread_local! {
    // Seeded once per thread from the OS-backed thread RNG; cheap to draw from afterwards.
    static THREAD_RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// A source of uniform numbers in `[0, 1)`.
///
/// By default each thread draws from its own fast generator, so concurrent callers never
/// contend. A seeded source is deterministic (for tests and simulations) and shares one
/// generator behind a lock.
#[derive(Debug, Default)]
pub(crate) enum RandomSource {
    /// A per-thread generator seeded from the operating system.
    #[default]
    Thread,
    /// One generator seeded with a fixed value: the same seed gives the same sequence.
    Seeded(Mutex<SmallRng>),
}

impl RandomSource {
    /// A deterministic source seeded with `seed`.
    pub(crate) fn seeded(seed: u64) -> Self {
        Self::Seeded(Mutex::new(SmallRng::seed_from_u64(seed)))
    }

    /// A uniform number in `[0, 1)`.
    pub(crate) fn next_f64(&self) -> f64 {
        match self {
            Self::Thread => THREAD_RNG.with(|r| r.borrow_mut().random::<f64>()),
            Self::Seeded(m) => {
                // A poisoned lock only means another thread panicked mid-draw; the
                // generator state is still a valid generator state.
                let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
                g.random::<f64>()
            }
        }
    }
}

impl Clone for RandomSource {
    /// A clone of a seeded source continues from the same state independently.
    fn clone(&self) -> Self {
        match self {
            Self::Thread => Self::Thread,
            Self::Seeded(m) => {
                let g = m.lock().unwrap_or_else(|p| p.into_inner());
                Self::Seeded(Mutex::new(g.clone()))
            }
        }
    }
}
