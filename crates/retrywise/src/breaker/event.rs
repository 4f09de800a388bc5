//! Breaker states, events, metrics and errors.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum State {
    /// Calls flow; outcomes fill the window; too many failures or slow calls open it.
    Closed = 0,
    /// Calls are refused until the open duration has passed.
    Open = 1,
    /// A limited number of probe calls decide between CLOSED and OPEN.
    HalfOpen = 2,
    /// Every call is allowed and nothing is recorded (set by an operator).
    Disabled = 3,
    /// Every call is refused (set by an operator).
    ForcedOpen = 4,
    /// Every call is allowed; outcomes and rates are recorded and threshold events
    /// emitted, but the circuit never opens (set by an operator, e.g. to trial settings).
    MetricsOnly = 5,
}

impl State {
    pub(crate) fn from_u8(v: u8) -> State {
        match v {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::Disabled,
            4 => State::ForcedOpen,
            _ => State::MetricsOnly,
        }
    }

    /// The state's name (`"HALF_OPEN"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
            State::Disabled => "DISABLED",
            State::ForcedOpen => "FORCED_OPEN",
            State::MetricsOnly => "METRICS_ONLY",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a breaker wants its operators to know.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BreakerEvent {
    /// The state changed.
    StateTransition {
        /// The breaker's name.
        name: Arc<str>,
        /// The state before.
        from: State,
        /// The state after.
        to: State,
    },
    /// A call was refused because the circuit is open (or its probes are all taken).
    CallNotPermitted {
        /// The breaker's name.
        name: Arc<str>,
        /// The state that refused it.
        state: State,
    },
    /// The window's failure rate reached the threshold (emitted in METRICS_ONLY too).
    FailureRateExceeded {
        /// The breaker's name.
        name: Arc<str>,
        /// The rate.
        rate: f64,
    },
    /// The window's slow-call rate reached the threshold (emitted in METRICS_ONLY too).
    SlowCallRateExceeded {
        /// The breaker's name.
        name: Arc<str>,
        /// The rate.
        rate: f64,
    },
    /// The model predicts a fresh call succeeds less often than the breaker's
    /// [`Prediction`](super::Prediction) threshold (emitted in METRICS_ONLY too).
    SuccessPredictedLow {
        /// The breaker's name.
        name: Arc<str>,
        /// The predicted probability.
        p_success: f64,
    },
}

/// A call was refused by an open circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker `{name}` is {state}{}", match remaining {
    Some(d) => format!("; it lets calls through again in {d:?}"),
    None => String::new(),
})]
pub struct CircuitOpen {
    /// The breaker's name.
    pub name: Arc<str>,
    /// OPEN, FORCED_OPEN, or HALF_OPEN with all its probes taken.
    pub state: State,
    /// How long until OPEN ends, when it is OPEN.
    pub remaining: Option<Duration>,
}

/// A point-in-time view of a breaker, for dashboards and health endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerMetrics {
    /// The breaker's name.
    pub name: Arc<str>,
    /// Its state.
    pub state: State,
    /// Failure rate over the window, once it holds the minimum number of calls.
    pub failure_rate: Option<f64>,
    /// Slow-call rate over the window, once it holds the minimum number of calls.
    pub slow_call_rate: Option<f64>,
    /// Calls in the window.
    pub window_calls: u32,
    /// Failed calls in the window.
    pub window_failed_calls: u32,
    /// Slow calls in the window.
    pub window_slow_calls: u32,
    /// Calls that ran through the breaker and were recorded (failures, successes and
    /// ignored outcomes); refused calls are not among them.
    pub total_calls: u64,
    /// Calls that succeeded.
    pub successful_calls: u64,
    /// Calls that failed.
    pub failed_calls: u64,
    /// Calls whose outcome counted neither way (e.g. permanent client errors, cancelled).
    pub ignored_calls: u64,
    /// Calls refused without being made.
    pub not_permitted_calls: u64,
    /// Calls at or above the slow-call duration.
    pub slow_calls: u64,
    /// Mean duration of recorded calls (calls cancelled before their outcome - a permit
    /// dropped - are left out: how long they took is not known).
    #[serde(
        rename = "avg_response_time_ms",
        serialize_with = "crate::attempt::serialize_ms"
    )]
    pub avg_response_time: Duration,
    /// `successful / (successful + failed)` over all time; 1 before any call.
    pub success_rate: f64,
    /// `(1 - window failure rate) × (1 - 0.5 × window slow-call rate)`, in `[0, 1]` —
    /// the design sketch's health score, computed on the window so that it recovers.
    pub health_score: f64,
}
