//! An adaptive concurrency limit: the gradient of the upstream's latency steers how many
//! calls may be in flight.
//!
//! The algorithm is Netflix concurrency-limits' `Gradient2Limit` (the one failsafe-go's
//! adaptive limiter and Envoy's adaptive concurrency filter also build on: compare the
//! latency now with the latency the upstream has when it is not queueing). Each finished
//! call's latency is a short-term sample; a long-term exponential average (600 samples, the
//! first 10 averaged plainly) stands for the latency without queueing. Their ratio, times a
//! tolerance (1.5: latency may grow by half before the limit shrinks), clamped to
//! `[0.5, 1]`, is the gradient; the new limit is `limit × gradient + queue` (the queue,
//! `√limit` here where Gradient2 defaults to 4, lets the limit probe upwards), smoothed
//! (20 % of the way each sample) and clamped to `[min, max]`. Two rules of Gradient2 keep
//! it stable: the limit does not grow while fewer than half of it are in use (the caller,
//! not the upstream, limits the load), and when the long-term latency is more than twice
//! the sample's it decays by 5 % a sample (latency is back to normal after a long overload:
//! the baseline must come down with it).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Check, ConfigError};

const CHECK: Check = Check::new("adaptive_limit");

/// Samples averaged plainly before the long-term average starts decaying.
const WARMUP: u32 = 10;

/// A concurrency limit that follows the upstream's latency (Netflix concurrency-limits'
/// Gradient2: the limit shrinks as the latency grows beyond its unqueued level, and probes
/// upwards by √limit); give it to a [`Bulkhead`](super::Bulkhead) with
/// [`BulkheadBuilder::adaptive`](super::BulkheadBuilder::adaptive), or drive it yourself.
///
/// ```
/// use std::time::Duration;
/// use retrywise::bulkhead::AdaptiveLimit;
///
/// let limit = AdaptiveLimit::builder().initial(20).bounds(5, 200).build()?;
/// // Calls at a steady 10 ms with the limit in use: the limit probes upwards.
/// for _ in 0..100 {
///     limit.sample(Duration::from_millis(10), limit.current());
/// }
/// let grown = limit.current();
/// assert!(grown > 20);
/// // The upstream starts queueing: latency triples, and the limit comes down.
/// for _ in 0..30 {
///     limit.sample(Duration::from_millis(30), limit.current());
/// }
/// assert!(limit.current() < grown);
/// # Ok::<(), retrywise::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct AdaptiveLimit {
    min: u32,
    max: u32,
    smoothing: f64,
    tolerance: f64,
    long_window: u32,
    /// The long-term average's weight per sample, `2 / (long_window + 1)`.
    decay: f64,
    /// The limit, unrounded (`f64` bits); written only under `update`.
    estimate: AtomicU64,
    /// The long-term latency average in seconds (`f64` bits), and the samples it rests on:
    /// moved by every sample with a plain load and store — concurrent samples may lose one
    /// another's step, which an average over hundreds of samples can afford — so a sample
    /// that does not move the limit takes no lock.
    long: AtomicU64,
    samples: AtomicU32,
    /// Serializes the limit's updates.
    update: Mutex<()>,
}

impl Clone for AdaptiveLimit {
    /// A limit of its own, starting where this one is.
    fn clone(&self) -> Self {
        Self {
            min: self.min,
            max: self.max,
            smoothing: self.smoothing,
            tolerance: self.tolerance,
            long_window: self.long_window,
            decay: self.decay,
            estimate: AtomicU64::new(self.estimate.load(Ordering::Relaxed)),
            long: AtomicU64::new(self.long.load(Ordering::Relaxed)),
            samples: AtomicU32::new(self.samples.load(Ordering::Relaxed)),
            update: Mutex::new(()),
        }
    }
}

impl AdaptiveLimit {
    /// A builder with Gradient2's defaults: start at 20, within 1 to 1,000, smoothing 0.2,
    /// tolerance 1.5, a long-term window of 600 samples.
    pub fn builder() -> AdaptiveLimitBuilder {
        AdaptiveLimitBuilder {
            initial: 20,
            min: 1,
            max: 1000,
            smoothing: 0.2,
            tolerance: 1.5,
            long_window: 600,
        }
    }

    fn estimate(&self) -> f64 {
        f64::from_bits(self.estimate.load(Ordering::Relaxed))
    }

    /// The limit now.
    pub fn current(&self) -> u32 {
        (self.estimate() as u32).clamp(self.min, self.max)
    }

    /// The least and the most the limit may become.
    pub fn bounds(&self) -> (u32, u32) {
        (self.min, self.max)
    }

    /// The long-term latency the limit compares samples with; `None` before any sample.
    pub fn baseline(&self) -> Option<Duration> {
        (self.samples.load(Ordering::Relaxed) > 0)
            .then(|| Duration::from_secs_f64(f64::from_bits(self.long.load(Ordering::Relaxed))))
    }

    /// Learns from one finished call that took `latency` while `in_flight` calls (itself
    /// included) were in flight; returns the new limit.
    pub fn sample(&self, latency: Duration, in_flight: u32) -> u32 {
        let rtt = latency.as_secs_f64().max(1e-9);
        let n = self.samples.load(Ordering::Relaxed).saturating_add(1);
        self.samples.store(n, Ordering::Relaxed);
        let mut long = f64::from_bits(self.long.load(Ordering::Relaxed));
        if n <= WARMUP {
            long += (rtt - long) / f64::from(n);
        } else {
            long += (rtt - long) * self.decay;
        }
        if long > 2.0 * rtt {
            long *= 0.95;
        }
        self.long.store(long.to_bits(), Ordering::Relaxed);
        // The caller, not the upstream, limits the load: nothing to learn about the limit.
        if f64::from(in_flight) < self.estimate() / 2.0 {
            return self.current();
        }
        // Every update leaves the estimate whole: a poisoned lock guards nothing broken.
        let _serial = self
            .update
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let estimate = self.estimate();
        let gradient = (self.tolerance * long / rtt).clamp(0.5, 1.0);
        let queue = estimate.sqrt();
        let target = estimate * gradient + queue;
        let next = (estimate * (1.0 - self.smoothing) + target * self.smoothing)
            .clamp(f64::from(self.min), f64::from(self.max));
        self.estimate.store(next.to_bits(), Ordering::Relaxed);
        (next as u32).clamp(self.min, self.max)
    }
}

/// Configures an [`AdaptiveLimit`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct AdaptiveLimitBuilder {
    initial: u32,
    min: u32,
    max: u32,
    smoothing: f64,
    tolerance: f64,
    long_window: u32,
}

impl AdaptiveLimitBuilder {
    /// The limit to start from (default 20).
    pub fn initial(mut self, n: u32) -> Self {
        self.initial = n;
        self
    }

    /// The least and the most it may become (default 1 and 1,000).
    pub fn bounds(mut self, min: u32, max: u32) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// How far towards its target the limit moves per sample, in `(0, 1]` (default 0.2).
    pub fn smoothing(mut self, s: f64) -> Self {
        self.smoothing = s;
        self
    }

    /// How much the latency may grow over its long-term average before the limit shrinks,
    /// at least 1 (default 1.5).
    pub fn tolerance(mut self, t: f64) -> Self {
        self.tolerance = t;
        self
    }

    /// The samples the long-term average spans (default 600).
    pub fn long_window(mut self, samples: u32) -> Self {
        self.long_window = samples;
        self
    }

    /// Checks and builds.
    ///
    /// # Errors
    /// A zero minimum, a maximum below the minimum (or above the bulkhead's 2²⁴ − 1), an
    /// initial limit outside the bounds, smoothing outside `(0, 1]`, a tolerance below 1,
    /// a long window under 2 samples.
    pub fn build(self) -> Result<AdaptiveLimit, ConfigError> {
        CHECK.at_least_one("min", u64::from(self.min))?;
        if self.max < self.min || self.max > super::gate::MAX_HOLDERS {
            return Err(CHECK.err(
                "max",
                format!(
                    "must be within [{}, {}], got {}",
                    self.min,
                    super::gate::MAX_HOLDERS,
                    self.max
                ),
            ));
        }
        if !(self.min..=self.max).contains(&self.initial) {
            return Err(CHECK.err(
                "initial",
                format!(
                    "must be within the bounds [{}, {}], got {}",
                    self.min, self.max, self.initial
                ),
            ));
        }
        CHECK.in_range("smoothing", self.smoothing, 1e-6, 1.0)?;
        CHECK.in_range("tolerance", self.tolerance, 1.0, 1e6)?;
        if self.long_window < 2 {
            return Err(CHECK.err(
                "long_window",
                format!("must be at least 2 samples, got {}", self.long_window),
            ));
        }
        Ok(AdaptiveLimit {
            min: self.min,
            max: self.max,
            smoothing: self.smoothing,
            tolerance: self.tolerance,
            long_window: self.long_window,
            decay: 2.0 / (f64::from(self.long_window) + 1.0),
            estimate: AtomicU64::new(f64::from(self.initial).to_bits()),
            long: AtomicU64::new(0f64.to_bits()),
            samples: AtomicU32::new(0),
            update: Mutex::new(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn it_does_not_grow_while_the_caller_uses_less_than_half_of_it() {
        let l = AdaptiveLimit::builder().initial(40).build().unwrap();
        for _ in 0..200 {
            l.sample(10 * MS, 5);
        }
        assert_eq!(l.current(), 40);
        assert_eq!(l.baseline(), Some(10 * MS));
    }

    #[test]
    fn it_shrinks_under_queueing_by_at_most_half_a_sample_and_stops_at_its_minimum() {
        let l = AdaptiveLimit::builder()
            .initial(100)
            .bounds(10, 1000)
            .build()
            .unwrap();
        for _ in 0..20 {
            l.sample(10 * MS, 100);
        }
        let before = l.current();
        // Latency ten times the baseline: the gradient bottoms out at 0.5, and with 20 %
        // smoothing one sample takes at most a tenth (less the queue) off the limit.
        let after = l.sample(100 * MS, before);
        assert!(after < before && f64::from(after) >= 0.9 * f64::from(before) - 1.0);
        // It keeps coming down while the latency stays high, to its floor.
        let mut last = after;
        for _ in 0..60 {
            let n = l.sample(100 * MS, l.current());
            assert!(n <= last);
            last = n;
        }
        assert_eq!(l.current(), 10);
    }

    #[test]
    fn settings_are_checked() {
        let b = AdaptiveLimit::builder;
        for (r, field) in [
            (b().bounds(0, 10).build(), "min"),
            (b().bounds(10, 5).build(), "max"),
            (b().initial(5).bounds(10, 20).build(), "initial"),
            (b().smoothing(0.0).build(), "smoothing"),
            (b().tolerance(0.9).build(), "tolerance"),
            (b().long_window(1).build(), "long_window"),
        ] {
            assert_eq!(r.unwrap_err().field, field);
        }
    }

    proptest! {
        /// Whatever the latencies and the load, the limit stays within its bounds.
        #[test]
        fn the_limit_stays_within_its_bounds(
            min in 1u32..50,
            extra in 0u32..500,
            samples in proptest::collection::vec((0u64..5_000_000, 0u32..2_000), 1..300),
        ) {
            let l = AdaptiveLimit::builder()
                .initial(min)
                .bounds(min, min + extra)
                .build()
                .unwrap();
            for (us, in_flight) in samples {
                let n = l.sample(Duration::from_micros(us), in_flight);
                prop_assert!(n >= min && n <= min + extra);
                prop_assert_eq!(n, l.current());
            }
        }
    }
}
