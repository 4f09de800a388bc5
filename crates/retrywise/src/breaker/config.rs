//! Circuit breaker configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Check, ConfigError};

use super::{BreakerEvent, CircuitBreaker};

pub(crate) const CHECK: Check = Check::new("breaker");

/// Which recent calls the failure and slow-call rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `duration`, aggregated in `buckets` equal parts (the window
    /// slides one bucket at a time).
    Time {
        /// The length of the window.
        duration: Duration,
        /// How many parts it slides in.
        buckets: u32,
    },
}

/// What the breaker's open duration is told when it is asked for one.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenContext<'a> {
    /// The breaker's name.
    pub name: &'a str,
    /// How many times in a row the circuit opened without closing in between (1 for the
    /// first opening; a failed half-open probe increments it).
    pub consecutive_opens: u32,
    /// The failure rate that tripped the circuit (over the window or the half-open
    /// probes).
    pub failure_rate: f64,
    /// The slow-call rate at the same moment.
    pub slow_call_rate: f64,
}

/// How long the circuit stays open before it lets probes through.
#[derive(Clone)]
pub enum OpenDuration {
    /// Always the same.
    Fixed(Duration),
    /// `initial × multiplier^(consecutive_opens - 1)`, capped at `max`: an upstream that
    /// keeps failing its probes is probed less and less often.
    Exponential {
        /// The first open duration.
        initial: Duration,
        /// The growth per consecutive opening, at least 1.
        multiplier: f64,
        /// The cap.
        max: Duration,
    },
    /// Produced by a function — where a model that predicts recovery plugs in.
    Custom(Arc<dyn Fn(&OpenContext<'_>) -> Duration + Send + Sync>),
}

impl fmt::Debug for OpenDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenDuration::Fixed(d) => f.debug_tuple("Fixed").field(d).finish(),
            OpenDuration::Exponential {
                initial,
                multiplier,
                max,
            } => f
                .debug_struct("Exponential")
                .field("initial", initial)
                .field("multiplier", multiplier)
                .field("max", max)
                .finish(),
            OpenDuration::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl OpenDuration {
    /// The open duration for an opening described by `ctx`.
    pub fn for_opening(&self, ctx: &OpenContext<'_>) -> Duration {
        match self {
            OpenDuration::Fixed(d) => *d,
            OpenDuration::Exponential {
                initial,
                multiplier,
                max,
            } => {
                let n = i32::try_from(ctx.consecutive_opens.saturating_sub(1)).unwrap_or(i32::MAX);
                let secs = initial.as_secs_f64() * multiplier.powi(n);
                if secs.is_finite() && secs < max.as_secs_f64() {
                    Duration::from_secs_f64(secs)
                } else {
                    *max
                }
            }
            OpenDuration::Custom(f) => f(ctx),
        }
    }
}

/// A listener for breaker events. Called synchronously, outside the breaker's lock.
pub type Listener = Arc<dyn Fn(&BreakerEvent) + Send + Sync>;

/// The checked configuration of a [`CircuitBreaker`]; see [`BreakerBuilder`].
#[derive(Clone)]
pub struct BreakerConfig {
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_call_rate_threshold: f64,
    pub(crate) slow_call_duration: Duration,
    pub(crate) window: SlidingWindow,
    pub(crate) minimum_calls: u32,
    pub(crate) half_open_calls: u32,
    pub(crate) max_wait_in_half_open: Option<Duration>,
    pub(crate) open_duration: OpenDuration,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) predict: Option<super::Prediction>,
}

impl fmt::Debug for BreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerConfig")
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("slow_call_rate_threshold", &self.slow_call_rate_threshold)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("window", &self.window)
            .field("minimum_calls", &self.minimum_calls)
            .field("half_open_calls", &self.half_open_calls)
            .field("max_wait_in_half_open", &self.max_wait_in_half_open)
            .field("open_duration", &self.open_duration)
            .field("listeners", &self.listeners.len())
            .field("predict", &self.predict)
            .finish()
    }
}

/// Builds a [`CircuitBreaker`]. Every setter says its default; [`build`](Self::build)
/// checks them all.
#[derive(Debug, Clone)]
pub struct BreakerBuilder {
    name: Arc<str>,
    cfg: BreakerConfig,
}

impl BreakerBuilder {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            cfg: BreakerConfig {
                failure_rate_threshold: 0.5,
                slow_call_rate_threshold: 1.0,
                slow_call_duration: Duration::from_secs(60),
                window: SlidingWindow::Count(100),
                minimum_calls: 20,
                half_open_calls: 10,
                max_wait_in_half_open: None,
                open_duration: OpenDuration::Fixed(Duration::from_secs(60)),
                listeners: Vec::new(),
                predict: None,
            },
        }
    }

    /// The circuit opens when at least this share of the window's calls failed.
    /// Within `(0, 1]`; defaults to 0.5.
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.cfg.failure_rate_threshold = rate;
        self
    }

    /// The circuit opens when at least this share of the window's calls were slow.
    /// Within `(0, 1]`; defaults to 1.0 (only when every call is slow).
    pub fn slow_call_rate_threshold(mut self, rate: f64) -> Self {
        self.cfg.slow_call_rate_threshold = rate;
        self
    }

    /// A call taking at least this long is slow. Defaults to 60 s.
    pub fn slow_call_duration(mut self, d: Duration) -> Self {
        self.cfg.slow_call_duration = d;
        self
    }

    /// The sliding window. Defaults to the last 100 calls.
    pub fn window(mut self, w: SlidingWindow) -> Self {
        self.cfg.window = w;
        self
    }

    /// Rates are not acted on before the window holds this many calls (for a count window,
    /// at most the window's size is required). Defaults to 20.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.cfg.minimum_calls = n;
        self
    }

    /// How many probe calls HALF_OPEN lets through; their rates decide between CLOSED and
    /// OPEN. Defaults to 10.
    pub fn permitted_calls_in_half_open(mut self, n: u32) -> Self {
        self.cfg.half_open_calls = n;
        self
    }

    /// HALF_OPEN returns to OPEN if its probes have not all completed within this time.
    /// Defaults to waiting for ever.
    pub fn max_wait_in_half_open(mut self, d: Duration) -> Self {
        self.cfg.max_wait_in_half_open = Some(d);
        self
    }

    /// How long OPEN lasts. Defaults to a fixed 60 s (the design sketch's `recovery_timeout`).
    pub fn open_duration(mut self, d: OpenDuration) -> Self {
        self.cfg.open_duration = d;
        self
    }

    /// Shorthand for a fixed open duration.
    pub fn open_for(self, d: Duration) -> Self {
        self.open_duration(OpenDuration::Fixed(d))
    }

    /// Consults a success model ([`Prediction`](super::Prediction)): the circuit also
    /// opens when a fresh call is predicted to fail, and stays open for as long as the
    /// model predicts a probe would. Defaults to none: rates and the open duration alone.
    pub fn predict(mut self, prediction: super::Prediction) -> Self {
        self.cfg.predict = Some(prediction);
        self
    }

    /// Calls `listener` on every [`BreakerEvent`].
    pub fn on_event(mut self, listener: impl Fn(&BreakerEvent) + Send + Sync + 'static) -> Self {
        self.cfg.listeners.push(Arc::new(listener));
        self
    }

    /// Checks the configuration and builds the breaker, CLOSED.
    ///
    /// # Errors
    /// Thresholds outside `(0, 1]` or NaN; a zero slow-call duration; an empty window (zero
    /// calls, zero duration, zero buckets or more than 4,096, or buckets shorter than 1
    /// ms) or one of more than 2^20 calls; a duration beyond
    /// [`crate::MAX_CONFIG_DURATION`]; zero minimum
    /// calls; zero half-open calls; a zero max wait in HALF_OPEN; a zero fixed open
    /// duration or an exponential one with `initial` zero or above `max`, or a multiplier
    /// below 1; an empty name.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        let c = &self.cfg;
        if self.name.is_empty() {
            return Err(CHECK.err("name", "must not be empty"));
        }
        CHECK.rate("failure_rate_threshold", c.failure_rate_threshold)?;
        CHECK.rate("slow_call_rate_threshold", c.slow_call_rate_threshold)?;
        // Only compared with latencies: any length (`Duration::MAX` turns slow calls off).
        if c.slow_call_duration.is_zero() {
            return Err(CHECK.err("slow_call_duration", "must be greater than zero"));
        }
        match c.window {
            SlidingWindow::Count(n) => {
                CHECK.at_least_one("window", u64::from(n))?;
                // A slot a call, allocated up front and walked when the window clears.
                if n > super::window::MAX_COUNT {
                    return Err(CHECK.err(
                        "window",
                        format!(
                            "must hold at most {} calls, got {n}",
                            super::window::MAX_COUNT
                        ),
                    ));
                }
            }
            SlidingWindow::Time { duration, buckets } => {
                CHECK.at_least_one("window", u64::from(buckets))?;
                CHECK.bounded("window", duration)?;
                if buckets > super::window::MAX_TIME_BUCKETS {
                    return Err(CHECK.err(
                        "window",
                        format!(
                            "{buckets} buckets: at most {} (each is one word of the window)",
                            super::window::MAX_TIME_BUCKETS
                        ),
                    ));
                }
                if duration / buckets < Duration::from_millis(1) {
                    return Err(CHECK.err(
                        "window",
                        format!(
                            "{duration:?} in {buckets} buckets makes buckets shorter than 1 ms"
                        ),
                    ));
                }
            }
        }
        CHECK.at_least_one("minimum_calls", u64::from(c.minimum_calls))?;
        CHECK.at_least_one("permitted_calls_in_half_open", u64::from(c.half_open_calls))?;
        if let Some(d) = c.max_wait_in_half_open {
            CHECK.positive("max_wait_in_half_open", d)?;
        }
        match &c.open_duration {
            OpenDuration::Fixed(d) => CHECK.positive("open_duration", *d)?,
            OpenDuration::Exponential {
                initial,
                multiplier,
                max,
            } => {
                CHECK.positive("open_duration", *initial)?;
                CHECK.positive("open_duration", *max)?;
                CHECK.in_range("open_duration", *multiplier, 1.0, 1e6)?;
                if initial > max {
                    return Err(CHECK.err(
                        "open_duration",
                        format!("initial {initial:?} is above max {max:?}"),
                    ));
                }
            }
            OpenDuration::Custom(_) => {}
        }
        if let Some(p) = &c.predict {
            p.check()?;
        }
        Ok(CircuitBreaker::from_config(self.name, self.cfg))
    }
}
