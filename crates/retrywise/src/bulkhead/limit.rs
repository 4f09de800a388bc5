//! An adaptive concurrency limit: the gradient of the upstream's latency steers how many
//! calls may be in flight.
//!
//! The algorithm is Netflix concurrency-limits' `Gradient2Limit`, with the `√limit` queue
//! of its older `GradientLimit` (Envoy's adaptive concurrency filter is a gradient
//! controller of that older kind: it measures the unqueued latency in periodic windows
//! with the concurrency pinned low, where Gradient2 keeps a long-term average;
//! failsafe-go's adaptive limiter is a Vegas-style one). All compare the latency now with
//! the latency the upstream has when it is not queueing. Each finished
//! call's latency is a short-term sample; a long-term exponential average (600 samples, the
//! first 10 averaged plainly) stands for the latency without queueing. Their ratio, times a
//! tolerance (1.5: latency may grow by half before the limit shrinks), clamped to
//! `[0.5, 1]`, is the gradient; the new limit is `limit × gradient + queue` (the queue,
//! `√limit` here where Gradient2 defaults to 4 - and 4 once most calls of late did not
//! answer, [`AdaptiveLimit::regrow_cautiously`] - lets the limit probe upwards), smoothed
//! (20 % of the way each sample) and clamped to `[min, max]`. Two rules of Gradient2 keep
//! it stable: the limit does not grow while fewer than half of it are in use (the caller,
//! not the upstream, limits the load), and when the long-term latency is more than twice
//! the sample's it decays by 5 % a sample (latency is back to normal after a long overload:
//! the baseline must come down with it).
//!
//! Only answered calls move the long-term average: a timed-out call's latency is where
//! its caller stopped waiting, a lower bound. Averaged in, an overload in which every call
//! times out would raise the baseline to the timeout within the long window, and from
//! there the gradient could never cut again (no call takes longer than its timeout): the
//! limit grew to its ceiling while the upstream drowned (`metastable` at twice its load
//! served 22 % of requests that way, 42 % now). A call that did not answer still steers
//! the limit, its latency a lower bound of the one it would have had.
//!
//! Gradient2 reads every rise of latency as queueing, and so cuts the limit to its floor
//! when a dependency merely slows down (replies 40 times slower, with room to serve them)
//! and turns away the calls it would have served. One rule more tells the two apart, by
//! Little's law: while the limit binds, the latency of a saturated upstream grows with the
//! calls in flight when each call started, and a slow upstream's does not (`LoadResponse`:
//! the slope of `ln latency` on `ln in-flight` over the answered calls of late). When the
//! slope is below ¼ by two standard errors — the load having varied by a fifth or more,
//! most calls answering — the latency now becomes the baseline and the limit at least
//! twice the load it served of late. The floor is Gradient2's default, 20. And a slowdown
//! that shows before the load rises is taken at once: the calls that started with fewer in
//! flight than half the floor cannot have queued on one another, so when three of the last
//! five calls started that light and took more than twice the baseline (a timeout's
//! latency is the timeout), their latency (the median of the last three slow ones) becomes
//! the baseline, and the limit at least the caller's load then at the new latency (Little's
//! law: the calls in flight times the latency's growth).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
/// // The upstream starts queueing: at the same load, latency triples, and the limit
/// // comes down.
/// for _ in 0..30 {
///     limit.sample(Duration::from_millis(30), grown);
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
    /// Of the last [`UNLOADED`] calls, which started with fewer in flight than half the
    /// floor and took more than twice the baseline (a bit each, the latest lowest);
    /// cleared when it is taken. Written only when it changes, so a steady upstream only
    /// reads it.
    unloaded_slow: AtomicU32,
    /// The latencies of the last [`SLOW_KEPT`] of those slow calls (seconds, `f64` bits),
    /// a ring written at `slow_next`. Plain loads and stores, like `long`.
    slow: [AtomicU64; SLOW_KEPT],
    slow_next: AtomicU32,
    /// Which of `slow`'s calls answered (a bit per place in the ring): a slowdown in
    /// which most did not is a hang, whose latency is only the timeout's.
    slow_answered: AtomicU32,
    /// Whether the limit probes upwards by Gradient2's queue of 4 ([`QUEUE`]) rather than
    /// by `√limit`: set by [`regrow_cautiously`](Self::regrow_cautiously).
    cautious: AtomicBool,
    /// Serializes the limit's updates, and holds what tells a queueing upstream from a
    /// slow one.
    update: Mutex<LoadResponse>,
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
            unloaded_slow: AtomicU32::new(self.unloaded_slow.load(Ordering::Relaxed)),
            slow: std::array::from_fn(|i| AtomicU64::new(self.slow[i].load(Ordering::Relaxed))),
            slow_next: AtomicU32::new(self.slow_next.load(Ordering::Relaxed)),
            slow_answered: AtomicU32::new(self.slow_answered.load(Ordering::Relaxed)),
            cautious: AtomicBool::new(self.cautious.load(Ordering::Relaxed)),
            update: Mutex::new(
                self.update
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            ),
        }
    }
}

impl AdaptiveLimit {
    /// A builder with Gradient2's defaults: start at 20, never below 20 (cut further, a
    /// limit serves an upstream that is slow but not queueing a trickle), at most 1,000
    /// (Gradient2: 200), smoothing 0.2, tolerance 1.5, a long-term window of 600 samples.
    pub fn builder() -> AdaptiveLimitBuilder {
        AdaptiveLimitBuilder {
            initial: 20,
            min: 20,
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

    /// From now on, probes upwards by Gradient2's queue of 4 calls a sample (about 1.8
    /// times the limit per round trip, as TCP's slow start) instead of `√limit` (about
    /// three times at 100): for an upstream that has been overloaded, where the limit
    /// regrows into a queue it cannot see yet. The limit calls it itself once most of the
    /// calls of late, while it bound, did not answer: each time a circuit breaker closed
    /// again on such an upstream whose queue had drained, a limit regrowing by `√limit`
    /// reached hundreds before the queue it filled showed in the latency, every call timed
    /// out, and the circuit opened again (`metastable` at twice its load). A limit that
    /// never sees that keeps the faster probe, which a slowdown with room needs.
    pub fn regrow_cautiously(&self) {
        if !self.cautious.load(Ordering::Relaxed) {
            self.cautious.store(true, Ordering::Relaxed);
        }
    }

    /// Whether [`regrow_cautiously`](Self::regrow_cautiously) was called.
    pub fn is_cautious(&self) -> bool {
        self.cautious.load(Ordering::Relaxed)
    }

    /// The least and the most the limit may become.
    pub fn bounds(&self) -> (u32, u32) {
        (self.min, self.max)
    }

    /// The long-term latency the limit compares samples with; `None` before any sample.
    pub fn baseline(&self) -> Option<Duration> {
        (self.samples.load(Ordering::Relaxed) > 0).then(|| {
            // (A mean of latencies near `Duration::MAX` may round past it: the longest.)
            Duration::try_from_secs_f64(f64::from_bits(self.long.load(Ordering::Relaxed)))
                .unwrap_or(Duration::MAX)
        })
    }

    /// Learns from one finished call that took `latency` and started with `in_flight` calls
    /// (itself included) in flight; returns the new limit. (The load when it started is
    /// what its latency answers: a call queued behind many is slow however few are left
    /// when it ends.)
    pub fn sample(&self, latency: Duration, in_flight: u32) -> u32 {
        self.sample_call(latency, in_flight, true)
    }

    /// Notes an unloaded call of `rtt` seconds against the baseline `long` (`answered`,
    /// or timed out or failed); when most of the last [`UNLOADED`] calls were unloaded and
    /// took more than twice it, and most of the last [`SLOW_KEPT`] slow ones answered,
    /// returns the latency they show: their median (an answer's). (Slow calls none of which answered
    /// are a hang, not a level: taken, a timeout became the baseline, and an upstream that
    /// hung at a light load - or one still working on calls its callers gave up on - had
    /// its limit raised by the timeout's ratio to the baseline, and never cut again while
    /// every call timed out.)
    fn unloaded_slowdown(&self, rtt: f64, long: f64, answered: bool) -> Option<f64> {
        let slow = rtt > 2.0 * long;
        let bits = self.unloaded_slow.load(Ordering::Relaxed);
        let next = pushed(bits, slow);
        if next != bits {
            self.unloaded_slow.store(next, Ordering::Relaxed);
        }
        if !slow {
            return None;
        }
        let i = self.slow_next.load(Ordering::Relaxed);
        self.slow_next.store(i.wrapping_add(1), Ordering::Relaxed);
        let at = i as usize % SLOW_KEPT;
        self.slow[at].store(rtt.to_bits(), Ordering::Relaxed);
        let bit = 1 << at;
        let now = if answered {
            self.slow_answered.fetch_or(bit, Ordering::Relaxed) | bit
        } else {
            self.slow_answered.fetch_and(!bit, Ordering::Relaxed) & !bit
        };
        // Most of the kept slow calls answered: their median is an answer's latency (a
        // timeout's is the longest there is), never the timeout itself.
        if (next.count_ones() as usize) <= UNLOADED / 2
            || (now.count_ones() as usize) <= SLOW_KEPT / 2
        {
            return None;
        }
        let mut v = [0.0; SLOW_KEPT];
        for (v, s) in v.iter_mut().zip(&self.slow) {
            *v = f64::from_bits(s.load(Ordering::Relaxed));
        }
        v.sort_unstable_by(f64::total_cmp);
        // Taken: the next slowdown is read from calls after this one.
        self.unloaded_slow.store(0, Ordering::Relaxed);
        Some(v[SLOW_KEPT / 2])
    }

    /// Notes a call with half the floor or more in flight: in the record of the latest
    /// calls, one that says nothing of a slowdown (an unloaded call's latency is the
    /// upstream's own; a loaded one's may be the caller's queueing).
    fn note_loaded(&self) {
        let bits = self.unloaded_slow.load(Ordering::Relaxed);
        if bits != 0 {
            self.unloaded_slow
                .store(pushed(bits, false), Ordering::Relaxed);
        }
    }

    /// [`sample`](Self::sample) for a call that `answered` or not (timed out, failed):
    /// every call's latency steers the limit, but only answered calls measure the
    /// baseline and tell how the upstream's latency follows the load (a timeout's latency
    /// is the timeout's, whatever the load). Until a call has answered there is no
    /// baseline, and the limit stays where it is.
    pub fn sample_call(&self, latency: Duration, in_flight: u32, answered: bool) -> u32 {
        let rtt = latency.as_secs_f64().max(1e-9);
        let read = self.long.load(Ordering::Relaxed);
        let mut long = f64::from_bits(read);
        // Only an answered call measures the latency: a timeout's is where the caller
        // stopped waiting, and while an upstream is overloaded every call times out - an
        // average over them climbs to the timeout within a long window, and a baseline
        // there leaves the gradient nothing to cut on (no call takes longer than its
        // timeout), so the limit grows to its ceiling while the upstream drowns. A call
        // not answered still steers the limit below: its latency is a lower bound of the
        // one it would have had.
        if answered {
            let n = self.samples.load(Ordering::Relaxed).saturating_add(1);
            self.samples.store(n, Ordering::Relaxed);
            if n <= WARMUP {
                long += (rtt - long) / f64::from(n);
            } else {
                long += (rtt - long) * self.decay;
            }
            if long > 2.0 * rtt {
                long *= 0.95;
            }
            // Moved from what was read, or not at all: a reset of the baseline (a slowdown
            // found, below) made meanwhile by another call is kept, not overwritten by a
            // step from the baseline before it (this step is lost instead, as concurrent
            // steps may lose one another's).
            if let Err(now) = self.long.compare_exchange(
                read,
                long.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                long = f64::from_bits(now);
            }
        } else if self.samples.load(Ordering::Relaxed) == 0 {
            // No latency measured yet: nothing to compare with.
            return self.current();
        }
        // Below half the floor, the limit's own premise (an upstream takes `min` calls at
        // once) says these calls were too few to queue on one another: their latency is
        // the upstream's own - a timeout's, a lower bound of it (`stress/slowdown`'s first
        // slow calls answer near their timeout or just miss it: counting only the answered
        // ones there, the limit stayed at its floor and served 86 % instead of 98 %).
        // When it has risen to
        // twice the baseline, the upstream has slowed down, and the baseline follows at
        // once: Gradient2 would take the slow latency for queueing as soon as the load
        // rose with it (in flight = rate x latency, by Little's law), and cut calls the
        // upstream serves. By the same law the limit makes room at once for the load the
        // caller had, at the new latency: the calls in flight when this one started,
        // times the latency's growth. (Such a call is always below half the limit too.)
        if 2 * u64::from(in_flight) >= u64::from(self.min) {
            self.note_loaded();
        } else if let Some(level) = self.unloaded_slowdown(rtt, long, answered)
            && level > long
        {
            self.long.store(level.to_bits(), Ordering::Relaxed);
            let _held = self
                .update
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let need = (f64::from(in_flight.max(1)) * level / long.max(1e-9))
                .clamp(f64::from(self.min), f64::from(self.max));
            if need > self.estimate() {
                self.estimate.store(need.to_bits(), Ordering::Relaxed);
            }
        }
        // The caller, not the upstream, limits the load: nothing to learn about the limit.
        if f64::from(in_flight) < self.estimate() / 2.0 {
            return self.current();
        }
        // Every update leaves the estimate whole: a poisoned lock guards nothing broken.
        let mut response = self
            .update
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut estimate = self.estimate();
        if let Some(slow) = response.add(rtt, in_flight, answered) {
            // The latency does not follow the load: the upstream is slow, not queueing,
            // and the cuts only turned calls away. Its latency now is the level to compare
            // with, and the load it served at it is room it has - probed twice over, as
            // TCP's slow start doubles its window each round trip until a sign of
            // congestion (here: the latency growing with the load again, which the
            // gradient then cuts).
            if slow.level > long {
                long = slow.level;
                self.long.store(long.to_bits(), Ordering::Relaxed);
            }
            estimate = estimate.max(2.0 * slow.served);
        }
        // Most calls of late, with the limit binding, did not answer: the upstream has been
        // driven past what it serves (or is down), and regrowing into it fast refills a
        // queue it cannot drain.
        if response.calls >= MIN_WEIGHT && response.answered < response.calls / 2.0 {
            self.regrow_cautiously();
        }
        let gradient = (self.tolerance * long / rtt).clamp(0.5, 1.0);
        let queue = if self.cautious.load(Ordering::Relaxed) {
            QUEUE
        } else {
            estimate.sqrt()
        };
        let target = estimate * gradient + queue;
        let next = (estimate * (1.0 - self.smoothing) + target * self.smoothing)
            .clamp(f64::from(self.min), f64::from(self.max));
        self.estimate.store(next.to_bits(), Ordering::Relaxed);
        (next as u32).clamp(self.min, self.max)
    }
}

/// Gradient2's queue: how far a cautious limit probes upwards per sample while it binds.
const QUEUE: f64 = 4.0;

/// A slowdown shows when most of this many latest calls are unloaded and slow: after three
/// slow calls, while a straggler or two among five do not move the baseline.
const UNLOADED: usize = 5;
/// The record of the last [`UNLOADED`] calls `bits` with one more call, slow or not.
fn pushed(bits: u32, slow: bool) -> u32 {
    ((bits << 1) | u32::from(slow)) & ((1 << UNLOADED) - 1)
}

/// The baseline becomes the median latency of this many of the latest slow calls (all of
/// them slow: none older than the last [`UNLOADED`] calls when it is taken).
const SLOW_KEPT: usize = 3;

/// How much of its weight [`LoadResponse`] forgets per sample: the last few dozen samples
/// taken while the limit binds count (a half-life of 22), so that it reads the regime of
/// the last second or two.
const FORGET: f64 = 1.0 / 32.0;
/// The weight (in samples) [`LoadResponse`] needs before it answers.
const MIN_WEIGHT: f64 = 8.0;
/// The least spread (standard deviation) of `ln in-flight` it answers on: the load varied
/// by about a fifth, enough for a saturated upstream's latency to vary as much.
const MIN_SPREAD: f64 = 0.2;
/// The slope below which the latency is taken not to follow the load: a quarter, nearer a
/// slow upstream's 0 than a saturated one's 1, because the two mistakes cost differently -
/// a slow upstream taken for a saturated one keeps Gradient2's cut a while longer, a
/// saturated one taken for a slow one is flooded. (An upstream still working on calls its
/// callers gave up on queues behind work no caller counts in flight, so its slope can come
/// out well below 1: `metastable` shows 0.4.)
const MAX_SLOPE: f64 = 0.25;

/// Whether the upstream's latency follows the load while the limit binds. By Little's law
/// a saturated upstream serves a fixed rate, so a call's latency grows in proportion to
/// the calls in flight when it started (`ln latency` against `ln in-flight`: slope 1),
/// while an upstream that is slow but has room keeps its latency whatever the load (slope
/// 0). Gradient2 alone cannot tell the two apart: it cuts the limit to its floor when a
/// dependency merely slows down, and turns away calls the upstream would have served.
/// (failsafe-go's adaptive limiter reads the same tell from the correlation of in-flight
/// with throughput and latency.) A least-squares slope over exponentially weighted
/// samples.
#[derive(Debug, Clone, Default)]
struct LoadResponse {
    /// Weighted sums: weight, `x = ln in-flight`, `y = ln latency`, `x²`, `x·y`, `y²`.
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
    yy: f64,
    /// Weighted counts of the calls and of those that answered.
    calls: f64,
    answered: f64,
    /// The most calls in flight among the recent samples: a maximum that fades like the
    /// weights (an old overload's load is not room the upstream has now).
    peak: f64,
}

/// What [`LoadResponse`] concluded: the upstream is slow, not queueing.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slow {
    /// The latency (seconds; the samples' geometric mean) to take as unqueued.
    level: f64,
    /// The most calls in flight it served at that latency, of late.
    served: f64,
}

impl LoadResponse {
    /// Adds a sample taken while the limit binds: a call that took `rtt` seconds, started
    /// with `in_flight` calls in flight (itself included), and `answered` or not (a
    /// timeout's latency is the timeout's, whatever the load). Answers [`Slow`] — and
    /// starts over — when most calls answer, the load varied ([`MIN_SPREAD`]) and their
    /// latency grows less than a quarter as fast as the load ([`MAX_SLOPE`]) by two
    /// standard errors.
    fn add(&mut self, rtt: f64, in_flight: u32, answered: bool) -> Option<Slow> {
        let keep = 1.0 - FORGET;
        self.calls = self.calls * keep + 1.0;
        self.answered = self.answered * keep + if answered { 1.0 } else { 0.0 };
        if !answered {
            return None;
        }
        let (x, y) = (f64::from(in_flight.max(1)).ln(), rtt.ln());
        self.w = self.w * keep + 1.0;
        self.x = self.x * keep + x;
        self.y = self.y * keep + y;
        self.xx = self.xx * keep + x * x;
        self.xy = self.xy * keep + x * y;
        self.yy = self.yy * keep + y * y;
        self.peak = (self.peak * keep).max(f64::from(in_flight));
        // When most calls do not answer, those that do are the few that beat the timeout:
        // their latencies say nothing of how latency follows the load.
        if self.answered < self.calls / 2.0 {
            return None;
        }
        if self.w < MIN_WEIGHT {
            return None;
        }
        let (mx, my) = (self.x / self.w, self.y / self.w);
        let var_x = self.xx / self.w - mx * mx;
        let var_y = self.yy / self.w - my * my;
        let cov = self.xy / self.w - mx * my;
        if var_x < MIN_SPREAD * MIN_SPREAD {
            return None;
        }
        // The slope and its standard error (the residual variance over the load's spread).
        let slope = cov / var_x;
        let se = ((var_y - cov * slope).max(0.0) / (var_x * self.w)).sqrt();
        if slope + 2.0 * se >= MAX_SLOPE {
            return None;
        }
        let slow = Slow {
            level: my.exp(),
            served: self.peak,
        };
        *self = Self::default();
        Some(slow)
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

    /// The least and the most it may become (default 20 and 1,000).
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
            unloaded_slow: AtomicU32::new(0),
            slow: std::array::from_fn(|_| AtomicU64::new(0)),
            slow_next: AtomicU32::new(0),
            slow_answered: AtomicU32::new(0),
            cautious: AtomicBool::new(false),
            update: Mutex::new(LoadResponse::default()),
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
        // It keeps coming down while the latency stays high at the same load, to its
        // floor.
        let mut last = after;
        for _ in 0..60 {
            let n = l.sample(100 * MS, before);
            assert!(n <= last);
            last = n;
        }
        assert_eq!(l.current(), 10);
    }

    /// Two limits (floor 1, to see the cuts whole) that have seen 200 calls at 20 ms with
    /// 3 in flight (fewer than half in use: neither moves).
    fn twins() -> (AdaptiveLimit, AdaptiveLimit) {
        let l = AdaptiveLimit::builder().bounds(1, 1000).build().unwrap();
        for _ in 0..200 {
            l.sample(20 * MS, 3);
        }
        assert_eq!(l.current(), 20);
        (l.clone(), l)
    }

    /// Replies become 40 times slower whatever the load (alternately 800 ms and 1 s), and
    /// 90 calls want to be in flight. Told only of calls that did not answer (as Gradient2
    /// alone), the limit is cut and stays cut; told of answers, it sees the latency not
    /// follow the cuts, and comes back to the load.
    #[test]
    fn a_slow_upstream_with_room_gets_its_limit_back() {
        let (answers, gradient2) = twins();
        let mut lowest = u32::MAX;
        for i in 0..200u32 {
            let rtt = if i % 2 == 0 { 800 * MS } else { 1000 * MS };
            answers.sample(rtt, answers.current().min(90));
            gradient2.sample_call(rtt, gradient2.current().min(90), false);
            lowest = lowest.min(answers.current());
        }
        assert!(lowest < 20, "cut first (lowest {lowest})");
        assert!(answers.current() >= 90, "limit {}", answers.current());
        assert!(gradient2.current() < 20, "limit {}", gradient2.current());
        let baseline = answers.baseline().unwrap();
        assert!(
            (800 * MS..=1000 * MS).contains(&baseline),
            "the slow latency is the new baseline: {baseline:?}"
        );
        // Slow, but answering: the limit keeps its fast probe.
        assert!(!answers.is_cautious());
    }

    /// An upstream that serves 100 calls a second: a call's latency is the calls in flight
    /// when it started over 100/s, ±5 % (Little's law), and 300 want to be in flight. The
    /// answers show the latency following the load: the limit moves exactly as Gradient2
    /// alone moves it, sample by sample.
    #[test]
    fn a_saturated_upstream_is_never_taken_for_a_slow_one() {
        let (answers, _) = twins();
        let mut gradient2 = Gradient2::of(&answers);
        for i in 0..250u32 {
            let noise = if i % 2 == 0 { 0.95 } else { 1.05 };
            let a = answers.current().min(300);
            let rtt = Duration::from_secs_f64(f64::from(a) / 100.0 * noise);
            answers.sample(rtt, a);
            gradient2.sample(rtt.as_secs_f64(), a);
            assert_eq!(answers.current(), gradient2.current(), "sample {i}");
            assert_eq!(
                answers.baseline(),
                Some(Duration::from_secs_f64(gradient2.long)),
                "sample {i}"
            );
        }
        assert!(answers.current() < 20, "cut: {}", answers.current());
    }

    /// Gradient2 alone, as Netflix's concurrency-limits computes it with this limit's
    /// parameters (warm-up, long-term average and its decay, gradient, √limit queue,
    /// smoothing, bounds, no growth under half use), from where `l` is.
    struct Gradient2 {
        estimate: f64,
        long: f64,
        samples: u32,
        min: f64,
        max: f64,
        smoothing: f64,
        tolerance: f64,
        decay: f64,
    }

    impl Gradient2 {
        fn of(l: &AdaptiveLimit) -> Self {
            Self {
                estimate: l.estimate(),
                long: l.baseline().unwrap().as_secs_f64(),
                samples: l.samples.load(Ordering::Relaxed),
                min: f64::from(l.min),
                max: f64::from(l.max),
                smoothing: l.smoothing,
                tolerance: l.tolerance,
                decay: l.decay,
            }
        }

        fn sample(&mut self, rtt: f64, in_flight: u32) {
            self.samples += 1;
            if self.samples <= WARMUP {
                self.long += (rtt - self.long) / f64::from(self.samples);
            } else {
                self.long += (rtt - self.long) * self.decay;
            }
            if self.long > 2.0 * rtt {
                self.long *= 0.95;
            }
            if f64::from(in_flight) < self.estimate / 2.0 {
                return;
            }
            let gradient = (self.tolerance * self.long / rtt).clamp(0.5, 1.0);
            let target = self.estimate * gradient + self.estimate.sqrt();
            self.estimate = (self.estimate * (1.0 - self.smoothing) + target * self.smoothing)
                .clamp(self.min, self.max);
        }

        fn current(&self) -> u32 {
            self.estimate as u32
        }
    }

    /// A cautious limit probes upwards by Gradient2's queue of 4 a sample (smoothed: 0.8),
    /// not by `√limit`: from 100, at a steady latency with the limit in use, 50 samples
    /// take it to 140 rather than past 250.
    #[test]
    fn a_cautious_limit_regrows_by_gradient2s_queue() {
        let grow = |cautious: bool| {
            let l = AdaptiveLimit::builder().initial(100).build().unwrap();
            for _ in 0..20 {
                l.sample(10 * MS, 1);
            }
            assert_eq!(l.current(), 100);
            if cautious {
                l.regrow_cautiously();
            }
            assert_eq!(l.is_cautious(), cautious);
            for _ in 0..50 {
                l.sample(10 * MS, l.current());
            }
            l.current()
        };
        assert_eq!(grow(true), 140);
        assert!(grow(false) > 250, "{}", grow(false));
    }

    /// An overloaded upstream where every call times out (at 1 s) for a long while: the
    /// timeouts cut the limit to its floor and keep it there, and the baseline stays the
    /// latency the answered calls had. (Averaged in, the timeouts would raise the
    /// baseline to the timeout within the long window, and a baseline there leaves the
    /// gradient nothing to cut on: the limit grew to its ceiling.)
    #[test]
    fn timeouts_cut_the_limit_and_never_become_the_baseline() {
        let l = AdaptiveLimit::builder().build().unwrap();
        for _ in 0..300 {
            l.sample(100 * MS, l.current());
        }
        let before = l.baseline().unwrap();
        let mut highest = 0;
        for i in 0..5_000 {
            let n = l.sample_call(1000 * MS, l.current(), false);
            if i >= 100 {
                highest = highest.max(n);
            }
        }
        assert_eq!(l.current(), 20, "at the floor");
        assert_eq!(l.baseline(), Some(before));
        assert_eq!(highest, 20, "never let the load back");
        // Most calls did not answer while the limit bound: it will regrow cautiously.
        assert!(l.is_cautious());
        // A limit that has never seen an answer does not move on timeouts.
        let fresh = AdaptiveLimit::builder().initial(50).build().unwrap();
        for _ in 0..100 {
            fresh.sample_call(1000 * MS, 50, false);
        }
        assert_eq!((fresh.current(), fresh.baseline()), (50, None));
    }

    /// An upstream that hangs while the load is light (3 calls in flight, each timing
    /// out at 1 s against a baseline of 100 ms): the slow calls are unloaded, but none
    /// answered - the timeout is no level to take. The baseline stays, and the limit
    /// does not jump (it went to 30, the caller's load times the timeout's ratio, and
    /// from there to its ceiling, since no call takes longer than its timeout). One slow
    /// answer among timeouts is not enough (their median would be the timeout); most of
    /// the kept slow calls answering is a slowdown again, taken at an answer's latency.
    #[test]
    fn a_hang_at_a_light_load_is_no_slowdown_to_take() {
        let l = AdaptiveLimit::builder().build().unwrap();
        for _ in 0..300 {
            l.sample(100 * MS, 3);
        }
        let before = l.baseline().unwrap();
        for _ in 0..50 {
            l.sample_call(1000 * MS, 3, false);
        }
        assert_eq!(l.baseline(), Some(before));
        assert_eq!(l.current(), 20);
        // Answered near the timeout: one is not enough, two are a slowdown after all.
        l.sample_call(900 * MS, 3, true);
        let b = l.baseline().unwrap();
        assert!(b < 2 * before, "only averaged in: {b:?}");
        l.sample_call(950 * MS, 3, true);
        let b = l.baseline().unwrap();
        assert!(b >= 900 * MS && b < 1000 * MS, "{b:?}");
    }

    /// A dependency that slows down 20 times while the caller's load is light (3 calls in
    /// flight at 20 ms): the calls that started before the load rose answer at 400 ms,
    /// and that becomes the baseline before the load follows (in flight = rate x latency),
    /// so the limit grows to the 60 calls that then want to be in flight instead of
    /// holding them to its floor, as it does when the slow answers come only at the load.
    #[test]
    fn a_slowdown_seen_before_the_load_rises_is_not_taken_for_queueing() {
        let light = AdaptiveLimit::builder().build().unwrap();
        for _ in 0..300 {
            light.sample(20 * MS, 3);
        }
        let loaded = light.clone();
        for in_flight in 2..10 {
            light.sample(400 * MS, in_flight);
        }
        let baseline = light.baseline().unwrap();
        assert!(
            (200 * MS..=400 * MS).contains(&baseline),
            "the slow latency is the baseline: {baseline:?}"
        );
        // And room for the load at the new latency, at once: the third slow call started
        // with 4 in flight, and the latency grew about 17 times (from a baseline of 24 ms
        // that the slow calls had begun to move).
        assert!(
            (55..=80).contains(&light.current()),
            "limit {}",
            light.current()
        );
        for _ in 0..150 {
            light.sample(400 * MS, light.current().min(60));
            loaded.sample(400 * MS, loaded.current().min(60));
        }
        assert!(light.current() >= 60, "limit {}", light.current());
        assert_eq!(loaded.current(), 20, "the floor");
    }

    /// Stragglers 100 times slower among light calls - one, or two among five - leave the
    /// baseline to its long average; so do slow light calls with busier ones between
    /// them (the record is of the latest five calls), and a latency that doubles at a load of
    /// half the floor or more (a busy upstream, whose latency may be the caller's own
    /// queueing).
    #[test]
    fn stragglers_interrupted_or_loaded_slowdowns_do_not_move_the_baseline_at_once() {
        let light = || {
            let l = AdaptiveLimit::builder().build().unwrap();
            for _ in 0..300 {
                l.sample(20 * MS, 3);
            }
            l
        };
        let within = |l: &AdaptiveLimit, lo: Duration, hi: Duration| {
            let b = l.baseline().unwrap();
            assert!((lo..hi).contains(&b), "{b:?} not within {lo:?}..{hi:?}");
        };
        let one = light();
        one.sample(2_000 * MS, 3);
        within(&one, 20 * MS, 30 * MS);
        let two = light();
        for ms in [2_000, 20, 2_000, 20] {
            two.sample(ms * MS, 3);
        }
        within(&two, 20 * MS, 35 * MS);
        let interrupted = light();
        interrupted.sample(400 * MS, 3);
        interrupted.sample(400 * MS, 3);
        for _ in 0..3 {
            interrupted.sample(20 * MS, 12);
        }
        interrupted.sample(400 * MS, 3);
        within(&interrupted, 20 * MS, 30 * MS);
        // Three in a row: the slowdown is taken.
        interrupted.sample(400 * MS, 3);
        interrupted.sample(400 * MS, 3);
        within(&interrupted, 399 * MS, 401 * MS);
        // A straggler among the slow calls is not the new level: their median is.
        let mixed = light();
        for ms in [400, 2_000, 400] {
            mixed.sample(ms * MS, 3);
        }
        within(&mixed, 399 * MS, 401 * MS);
        let busy = AdaptiveLimit::builder().initial(140).build().unwrap();
        for _ in 0..300 {
            busy.sample(100 * MS, 28);
        }
        for _ in 0..20 {
            busy.sample(250 * MS, 10);
        }
        within(&busy, 100 * MS, 120 * MS);
    }

    /// Gradient2's floor: however slow the calls at whatever load, the default limit
    /// stays at 20 or more - and so does the estimate behind it, so that it regrows from
    /// the floor at once when the latency falls back, not from wherever cuts drove it.
    #[test]
    fn the_default_limit_never_goes_below_gradient2s_floor() {
        let l = AdaptiveLimit::builder().initial(200).build().unwrap();
        assert_eq!(l.bounds(), (20, 1000));
        for _ in 0..100 {
            l.sample(10 * MS, 150);
        }
        assert!(
            l.current() >= 150,
            "fast calls keep the limit: {}",
            l.current()
        );
        // Queueing: every call ten to a hundred times the baseline, with the limit full.
        let mut lowest = u32::MAX;
        for i in 0..500u32 {
            let limit = l.current();
            l.sample(Duration::from_millis(100 + u64::from(i % 10) * 100), limit);
            lowest = lowest.min(l.current());
            assert!(
                l.estimate() >= 20.0,
                "estimate {} below the floor",
                l.estimate()
            );
        }
        assert_eq!(lowest, 20, "the cuts reach the floor and stop there");
        // Fast again: the limit grows from the floor within a few samples.
        for _ in 0..5 {
            let limit = l.current();
            l.sample(10 * MS, limit);
        }
        assert!(l.current() > 20, "regrows from the floor: {}", l.current());
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
        /// Whatever the latencies, the load and the answers, the limit stays within its
        /// bounds (and nothing overflows).
        #[test]
        fn the_limit_stays_within_its_bounds(
            min in 1u32..50,
            extra in 0u32..500,
            samples in proptest::collection::vec(
                // Any count in flight: a record posted to the service says what it says.
                (0u64..5_000_000, prop_oneof![0u32..2_000, any::<u32>()], any::<bool>()),
                1..300,
            ),
        ) {
            let l = AdaptiveLimit::builder()
                .initial(min)
                .bounds(min, min + extra)
                .build()
                .unwrap();
            for (us, in_flight, answered) in samples {
                let n = l.sample_call(Duration::from_micros(us), in_flight, answered);
                prop_assert!(n >= min && n <= min + extra);
                prop_assert_eq!(n, l.current());
            }
        }

        /// Whatever the latencies and the load, the baseline is never longer than the
        /// slowest call seen, and there is none before a call has answered.
        #[test]
        fn the_baseline_is_never_past_the_slowest_call(
            samples in proptest::collection::vec(
                (1u64..5_000_000, 0u32..40, any::<bool>()),
                1..300,
            ),
        ) {
            let l = AdaptiveLimit::builder().build().unwrap();
            let mut slowest = Duration::ZERO;
            let mut any_answered = false;
            for (us, in_flight, answered) in samples {
                let latency = Duration::from_micros(us);
                slowest = slowest.max(latency);
                any_answered |= answered;
                l.sample_call(latency, in_flight, answered);
                prop_assert_eq!(l.baseline().is_some(), any_answered);
                if let Some(b) = l.baseline() {
                    prop_assert!(b.as_secs_f64() <= slowest.as_secs_f64() * (1.0 + 1e-9), "{:?} past {:?}", b, slowest);
                }
            }
        }

        /// A latency that grows at least ¾ as fast as the load (`c · in-flight^β`,
        /// β ≥ 0.75) is never taken for a slow upstream; one that grows less than a
        /// quarter as fast is, once eight samples or more have seen the load vary (by a
        /// fifth or more: loads drawn from 1 to 1,000 do).
        #[test]
        fn the_load_response_tells_queueing_from_slowness(
            c in 1e-4f64..1.0,
            beta in 0.0f64..2.0,
            loads in proptest::collection::vec(1u32..1_000, 8..200),
        ) {
            prop_assume!(!(0.25..0.75).contains(&beta));
            let mut r = LoadResponse::default();
            let mut answered = None;
            for (i, n) in loads.iter().enumerate() {
                let rtt = c * f64::from(*n).powf(beta);
                if let Some(slow) = r.add(rtt, *n, true) {
                    answered = Some((i, slow));
                    break;
                }
            }
            let varied = loads.iter().any(|n| *n != loads[0]);
            if beta >= 0.75 || !varied {
                prop_assert_eq!(answered, None);
            } else if let Some((i, slow)) = answered {
                prop_assert!(i >= 7, "answered after {} samples", i + 1);
                // The level lies within the latencies seen, the load served is the most
                // seen.
                let lats: Vec<f64> =
                    loads[..=i].iter().map(|n| c * f64::from(*n).powf(beta)).collect();
                let (lo, hi) = lats
                    .iter()
                    .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
                prop_assert!(slow.level >= lo * 0.999 && slow.level <= hi * 1.001);
                let most = loads[..=i].iter().max().copied().unwrap_or(0);
                prop_assert!(slow.served <= f64::from(most));
            } else {
                // Varied only in the last few samples: not enough weight behind it.
                let first_change = loads.iter().position(|n| *n != loads[0]).unwrap_or(0);
                prop_assert!(loads.len() - first_change < 40, "{loads:?}");
            }
        }
    }
}
