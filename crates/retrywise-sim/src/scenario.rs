//! Scenario files: how an upstream behaves over time, and the load offered to it.
//!
//! A scenario is TOML (see `data/scenarios/`). Unknown fields are refused, every number
//! that becomes a duration, a rate or a probability is range-checked as it is read (errors
//! name the field and its line), and the rules between fields are checked after (errors
//! name the fields).

use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::SimError;

/// The built-in suite, embedded from `data/scenarios/`.
const BUILTIN: &[(&str, &str)] = &[
    ("blips", include_str!("../../../data/scenarios/blips.toml")),
    (
        "rate-limited",
        include_str!("../../../data/scenarios/rate-limited.toml"),
    ),
    (
        "outage",
        include_str!("../../../data/scenarios/outage.toml"),
    ),
    (
        "metastable",
        include_str!("../../../data/scenarios/metastable.toml"),
    ),
    (
        "stragglers",
        include_str!("../../../data/scenarios/stragglers.toml"),
    ),
    (
        "permanent",
        include_str!("../../../data/scenarios/permanent.toml"),
    ),
    ("mix", include_str!("../../../data/scenarios/mix.toml")),
    (
        "contention",
        include_str!("../../../data/scenarios/contention.toml"),
    ),
    (
        "rolling-deploy",
        include_str!("../../../data/scenarios/rolling-deploy.toml"),
    ),
];

/// Built-in scenarios kept out of the training sample (`sim generate`): what a model
/// trained on the sample has never seen — the contention microbenchmark, and the scenario
/// `sim learn` shows the loop learning from nothing.
pub const HELD_OUT: &[&str] = &["contention", "rolling-deploy"];

fn check<'de, D: Deserializer<'de>, T: Deserialize<'de> + std::fmt::Display>(
    d: D,
    ok: impl Fn(&T) -> bool,
    what: &str,
) -> Result<T, D::Error> {
    let v = T::deserialize(d)?;
    if ok(&v) {
        Ok(v)
    } else {
        Err(de::Error::custom(format!("{what}, got {v}")))
    }
}

/// The largest number a scenario's rates, lengths, times and factors may hold: beyond it
/// a value is a mistake (1e9 ms is 11.6 days, 1e9 s 31.7 years), and the durations and
/// instants it would become overflow.
pub const MAX_NUMBER: f64 = 1e9;

/// The most workers an upstream may have, over all its replicas (each worker is an entry
/// of the model's state).
pub const MAX_WORKERS: u32 = 100_000;

/// The most logical requests a run may hold (`rps` x `duration_s`): each is remembered
/// until the run's report (48 bytes), and a scoreboard runs its policies side by side.
pub const MAX_REQUESTS: f64 = 1e7;

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    check(
        d,
        |v: &f64| v.is_finite() && *v > 0.0 && *v <= MAX_NUMBER,
        "must be a positive number, at most 1e9",
    )
}

/// The shortest deadline or attempt timeout a scenario may give, ms (a microsecond):
/// shorter ones round to a zero duration.
pub const MIN_DURATION_MS: f64 = 1e-3;

/// The most phases a scenario may have (each is checked and looked up as a run goes).
pub const MAX_PHASES: usize = 10_000;

/// The largest scenario file read, bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A deadline or timeout in milliseconds: at least a microsecond, at most 1e9 ms.
fn duration_ms<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    check(
        d,
        |v: &f64| (MIN_DURATION_MS..=MAX_NUMBER).contains(v),
        "must be from 0.001 ms (a microsecond) to at most 1e9 ms",
    )
}

/// The widest lognormal shape a latency may have: at 10 a draw three deviations out is
/// already e^30 (10^13) times the median.
pub const MAX_SIGMA: f64 = 10.0;

fn sigma<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    check(
        d,
        |v: &f64| (0.0..=MAX_SIGMA).contains(v),
        "must be within [0, 10] (a lognormal's shape)",
    )
}

fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    check(
        d,
        |v: &f64| v.is_finite() && *v >= 0.0 && *v <= MAX_NUMBER,
        "must be a non-negative number, at most 1e9",
    )
}

fn probability<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    check(
        d,
        |v: &f64| (0.0..=1.0).contains(v),
        "must be a probability within [0, 1]",
    )
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    check(
        d,
        |v: &u32| (1..=MAX_WORKERS).contains(v),
        "must be within [1, 100000]",
    )
}

fn opt_check<'de, D: Deserializer<'de>, T>(
    d: D,
    f: fn(toml::Value) -> Result<T, toml::de::Error>,
) -> Result<Option<T>, D::Error> {
    let v = toml::Value::deserialize(d)?;
    f(v).map(Some).map_err(|e| de::Error::custom(e.message()))
}

macro_rules! opt_with {
    ($name:ident, $inner:ident, $t:ty) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$t>, D::Error> {
            opt_check(d, |v| $inner(v))
        }
    };
}

opt_with!(opt_positive, positive, f64);
opt_with!(opt_non_negative, non_negative, f64);
opt_with!(opt_sigma, sigma, f64);
opt_with!(opt_probability, probability, f64);
opt_with!(opt_at_least_one, at_least_one, u32);

fn straggler_factor<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    check(
        d,
        |v: &f64| v.is_finite() && *v >= 1.0 && *v <= MAX_NUMBER,
        "must be a factor of at least 1, at most 1e9",
    )
}
opt_with!(opt_straggler_factor, straggler_factor, f64);

/// How logical requests arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// A Poisson process at the offered rate (open loop).
    #[default]
    Poisson,
    /// All requests at once, at the start.
    Burst,
}

/// A latency distribution: lognormal service times, with rare stragglers.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// Median service time, ms.
    #[serde(deserialize_with = "positive")]
    pub median_ms: f64,
    /// Lognormal shape (0: constant; at most [`MAX_SIGMA`]).
    #[serde(default, deserialize_with = "sigma")]
    pub sigma: f64,
    /// Probability that a reply is a straggler.
    #[serde(default, deserialize_with = "probability")]
    pub straggler_p: f64,
    /// How many times slower a straggler is.
    #[serde(default = "one", deserialize_with = "straggler_factor")]
    pub straggler_x: f64,
}

fn one() -> f64 {
    1.0
}

/// Changes to a [`Latency`] (in a phase or a replica).
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyPatch {
    /// See [`Latency::median_ms`].
    #[serde(default, deserialize_with = "opt_positive")]
    pub median_ms: Option<f64>,
    /// See [`Latency::sigma`].
    #[serde(default, deserialize_with = "opt_sigma")]
    pub sigma: Option<f64>,
    /// See [`Latency::straggler_p`].
    #[serde(default, deserialize_with = "opt_probability")]
    pub straggler_p: Option<f64>,
    /// See [`Latency::straggler_x`].
    #[serde(default, deserialize_with = "opt_straggler_factor")]
    pub straggler_x: Option<f64>,
}

impl Latency {
    fn patched(mut self, p: &LatencyPatch) -> Self {
        self.median_ms = p.median_ms.unwrap_or(self.median_ms);
        self.sigma = p.sigma.unwrap_or(self.sigma);
        self.straggler_p = p.straggler_p.unwrap_or(self.straggler_p);
        self.straggler_x = p.straggler_x.unwrap_or(self.straggler_x);
        self
    }
}

/// The probabilities of each failure, per request.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Errors {
    /// The upstream never answers (the request holds a worker for `hang_ms`).
    #[serde(default, deserialize_with = "probability")]
    pub timeout: f64,
    /// The connection is reset mid-request.
    #[serde(default, deserialize_with = "probability")]
    pub reset: f64,
    /// The connection is refused at once.
    #[serde(default, deserialize_with = "probability")]
    pub connect: f64,
    /// HTTP 500.
    #[serde(default, deserialize_with = "probability")]
    pub http_500: f64,
    /// HTTP 503 (with `Retry-After: retry_after_s` when that is set).
    #[serde(default, deserialize_with = "probability")]
    pub http_503: f64,
    /// Invalid requests, answered 400 on every attempt (permanent: no policy may retry
    /// them). Invalidity belongs to the logical request, so a retry meets it again.
    #[serde(default, deserialize_with = "probability")]
    pub http_400: f64,
    /// Retry-After sent with 503s, seconds.
    #[serde(default)]
    pub retry_after_s: Option<u32>,
}

/// Changes to [`Errors`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsPatch {
    /// See [`Errors::timeout`].
    #[serde(default, deserialize_with = "opt_probability")]
    pub timeout: Option<f64>,
    /// See [`Errors::reset`].
    #[serde(default, deserialize_with = "opt_probability")]
    pub reset: Option<f64>,
    /// See [`Errors::connect`].
    #[serde(default, deserialize_with = "opt_probability")]
    pub connect: Option<f64>,
    /// See [`Errors::http_500`].
    #[serde(default, deserialize_with = "opt_probability")]
    pub http_500: Option<f64>,
    /// See [`Errors::http_503`].
    #[serde(default, deserialize_with = "opt_probability")]
    pub http_503: Option<f64>,
    /// See [`Errors::http_400`].
    #[serde(default, deserialize_with = "opt_probability")]
    pub http_400: Option<f64>,
    /// See [`Errors::retry_after_s`].
    #[serde(default)]
    pub retry_after_s: Option<u32>,
}

impl Errors {
    fn patched(mut self, p: &ErrorsPatch) -> Self {
        self.timeout = p.timeout.unwrap_or(self.timeout);
        self.reset = p.reset.unwrap_or(self.reset);
        self.connect = p.connect.unwrap_or(self.connect);
        self.http_500 = p.http_500.unwrap_or(self.http_500);
        self.http_503 = p.http_503.unwrap_or(self.http_503);
        self.http_400 = p.http_400.unwrap_or(self.http_400);
        self.retry_after_s = p.retry_after_s.or(self.retry_after_s);
        self
    }

    /// All failure probabilities together.
    pub fn total(&self) -> f64 {
        self.timeout + self.reset + self.connect + self.http_500 + self.http_503 + self.http_400
    }
}

/// A token bucket in front of the upstream: requests beyond it get 429 with Retry-After.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens per second.
    #[serde(deserialize_with = "positive")]
    pub rps: f64,
    /// Bucket size.
    #[serde(deserialize_with = "positive")]
    pub burst: f64,
}

/// The upstream at rest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Replicas; requests go to them in turn, whichever call they belong to (so a hedge
    /// reaches another replica than its primary's, except when the requests sent between
    /// the two bring the turn round to the same one).
    #[serde(default = "one_u32", deserialize_with = "at_least_one")]
    pub replicas: u32,
    /// Workers per replica: requests served at once.
    #[serde(deserialize_with = "at_least_one")]
    pub workers: u32,
    /// Requests waiting per replica; beyond that, 503 at once.
    #[serde(default = "big_queue")]
    pub queue: u32,
    /// Service times.
    pub latency: Latency,
    /// Failure probabilities.
    #[serde(default)]
    pub errors: Errors,
    /// An optional rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// How long a hung request holds its worker, ms.
    #[serde(default = "hang", deserialize_with = "positive")]
    pub hang_ms: f64,
    /// Optimistic concurrency: a request fails with 503 if another arrived less than this
    /// long before it (the first of a burst wins). Models contention.
    #[serde(default, deserialize_with = "opt_positive")]
    pub conflict_window_ms: Option<f64>,
}

fn one_u32() -> u32 {
    1
}

fn big_queue() -> u32 {
    100_000
}

fn hang() -> f64 {
    30_000.0
}

/// A period during which the upstream behaves differently.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Start, seconds from the beginning of the run.
    #[serde(deserialize_with = "non_negative")]
    pub start_s: f64,
    /// End, seconds.
    #[serde(deserialize_with = "positive")]
    pub end_s: f64,
    /// Every request fails at once (connection refused): a full outage.
    #[serde(default)]
    pub outage: bool,
    /// Workers per replica during the phase.
    #[serde(default, deserialize_with = "opt_at_least_one")]
    pub workers: Option<u32>,
    /// A rate limit during the phase (replacing the upstream's, if any).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Latency changes.
    #[serde(default)]
    pub latency: LatencyPatch,
    /// Error changes.
    #[serde(default)]
    pub errors: ErrorsPatch,
}

/// How one replica differs from the others.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaPatch {
    /// Latency changes.
    #[serde(default)]
    pub latency: LatencyPatch,
    /// Error changes.
    #[serde(default)]
    pub errors: ErrorsPatch,
}

/// A scenario: the upstream, how it changes over time, and the load.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Offered load, logical requests per second.
    #[serde(deserialize_with = "positive")]
    pub rps: f64,
    /// Length of a run at the offered load, seconds.
    #[serde(deserialize_with = "positive")]
    pub duration_s: f64,
    /// Deadline of each logical request, ms.
    #[serde(default = "deadline", deserialize_with = "duration_ms")]
    pub deadline_ms: f64,
    /// Timeout of each attempt, ms (the same for every policy).
    #[serde(default = "attempt_timeout", deserialize_with = "duration_ms")]
    pub attempt_timeout_ms: f64,
    /// How requests arrive.
    #[serde(default)]
    pub arrivals: Arrivals,
    /// When the trigger of a failure ends, seconds (for the recovery time); defaults to the
    /// end of the last phase.
    #[serde(default, deserialize_with = "opt_non_negative")]
    pub trigger_end_s: Option<f64>,
    /// The upstream.
    pub upstream: UpstreamSpec,
    /// Periods of different behaviour.
    #[serde(default)]
    pub phases: Vec<toml::Spanned<Phase>>,
    /// Per-replica differences, in replica order.
    #[serde(default)]
    pub replica: Vec<toml::Spanned<ReplicaPatch>>,
}

fn deadline() -> f64 {
    10_000.0
}

fn attempt_timeout() -> f64 {
    2_000.0
}

/// The line numbers of byte offsets in `text`: its newlines found once, each offset's line
/// by a binary search (a scenario of many phases is checked in linear time).
struct Lines(Vec<usize>);

impl Lines {
    fn of(text: &str) -> Self {
        Self(text.match_indices('\n').map(|(i, _)| i).collect())
    }

    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

impl Scenario {
    /// A scenario for driving an endpoint the simulator does not model (`sim run --target
    /// URL`): only the load and the timeouts matter; the upstream is whatever answers (no
    /// simulated hang limits its attempt timeout).
    ///
    /// # Errors
    /// [`SimError::Scenario`] for a rate, length or timeout that is not positive.
    pub fn for_target(
        rps: f64,
        duration_s: f64,
        deadline_ms: f64,
        attempt_timeout_ms: f64,
    ) -> Result<Self, SimError> {
        const ORIGIN: &str = "--target options";
        // (Checked as a scenario file's is, then set: the simulated hang, which must outlast
        // the attempt timeout, is no part of an endpoint of one's own.)
        if !(MIN_DURATION_MS..=MAX_NUMBER).contains(&attempt_timeout_ms) {
            return Err(SimError::Scenario {
                origin: ORIGIN.to_owned(),
                problem: format!(
                    "attempt_timeout_ms: {attempt_timeout_ms} must be from 0.001 ms (a microsecond) to at most 1e9 ms"
                ),
            });
        }
        let mut s = Self::parse(
            &format!(
                "name = \"target\"\ndescription = \"an endpoint given with --target\"\n\
                 rps = {rps:?}\nduration_s = {duration_s:?}\ndeadline_ms = {deadline_ms:?}\n\
                 attempt_timeout_ms = {MIN_DURATION_MS:?}\n\
                 [upstream]\nworkers = 1\n[upstream.latency]\nmedian_ms = 1\n"
            ),
            ORIGIN,
        )?;
        s.attempt_timeout_ms = attempt_timeout_ms;
        Ok(s)
    }

    /// Parses and checks a scenario; `origin` names it in errors.
    ///
    /// # Errors
    /// [`SimError::Scenario`] naming the field and line.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SimError> {
        let err = |problem: String| SimError::Scenario {
            origin: origin.to_owned(),
            problem,
        };
        let s: Scenario = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        // The name names folders (a run's segments, `sim learn`'s output): one plain
        // path component.
        if s.name.is_empty()
            || s.name == "."
            || s.name == ".."
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(err(format!(
                "name: must be letters, digits, `.`, `_` and `-` (it names folders), got {:?}",
                s.name
            )));
        }
        if s.phases.len() > MAX_PHASES {
            return Err(err(format!(
                "{} phases, more than a scenario may have ({MAX_PHASES})",
                s.phases.len()
            )));
        }
        let lines = Lines::of(text);
        // A burst sends `rps` requests at once; Poisson arrivals `rps` a second for the run.
        let (requests, what) = match s.arrivals {
            Arrivals::Poisson => (s.rps * s.duration_s, "rps x duration_s"),
            Arrivals::Burst => (s.rps, "rps (a burst sends them at once)"),
        };
        if requests.round() < 1.0 {
            return Err(err(format!(
                "{what} is {requests} requests: a run needs at least one"
            )));
        }
        if requests > MAX_REQUESTS {
            return Err(err(format!(
                "{what} is {requests} requests, more than a run holds ({MAX_REQUESTS})"
            )));
        }
        if s.arrivals == Arrivals::Poisson && s.duration_s > crate::driver::MAX_RUN_S {
            return Err(err(format!(
                "duration_s is {} s; a run lasts at most {} s (a week)",
                s.duration_s,
                crate::driver::MAX_RUN_S
            )));
        }
        let (in_flight, how) = match s.arrivals {
            Arrivals::Burst => (s.rps, "a burst sends rps requests at once"),
            // (No more than the run sends, as the driver counts it.)
            Arrivals::Poisson => (
                (s.rps * s.deadline_ms / 1e3).min(s.rps * s.duration_s),
                "rps x deadline_ms",
            ),
        };
        if in_flight > crate::driver::MAX_IN_FLIGHT {
            return Err(err(format!(
                "{in_flight:.0} requests would be in flight at once ({how}); a run holds at most {}",
                crate::driver::MAX_IN_FLIGHT
            )));
        }
        if s.upstream.hang_ms <= s.attempt_timeout_ms {
            return Err(err(format!(
                "upstream.hang_ms ({}) must be longer than attempt_timeout_ms ({}): a hung request outlasts the client's wait (a slow answer is `latency`)",
                s.upstream.hang_ms, s.attempt_timeout_ms
            )));
        }
        let small_burst = |r: &Option<RateLimit>| r.is_some_and(|r| r.burst < 1.0);
        if small_burst(&s.upstream.rate_limit) {
            return Err(err(
                "upstream.rate_limit.burst must be at least 1 (a bucket that cannot hold one token refuses every request)".into(),
            ));
        }
        let workers = u64::from(s.upstream.workers) * u64::from(s.upstream.replicas);
        if workers > u64::from(MAX_WORKERS) {
            return Err(err(format!(
                "upstream: {} replicas of {} workers are {workers} workers, more than {MAX_WORKERS}",
                s.upstream.replicas, s.upstream.workers
            )));
        }
        // A straggler no slower than any reply is none: a `straggler_p` without its
        // `straggler_x` (1 by default) would add no straggler, and say nothing.
        let no_stragglers = |l: Latency| l.straggler_p > 0.0 && l.straggler_x <= 1.0;
        if no_stragglers(s.upstream.latency) {
            return Err(err(
                "upstream.latency: straggler_p without a straggler_x above 1 (how many times slower a straggler is) makes no straggler".into(),
            ));
        }
        let base = s.upstream.errors.total();
        // (A sum of exactly 1 may round a hair above it.)
        if base > 1.0 + 1e-9 {
            return Err(err(format!(
                "upstream.errors: the probabilities add up to {base}, more than 1"
            )));
        }
        for (i, phase) in s.phases.iter().enumerate() {
            let line = lines.line(phase.span().start);
            let p = phase.get_ref();
            if p.end_s <= p.start_s {
                return Err(err(format!(
                    "line {line}: phases[{i}]: end_s ({}) must be after start_s ({})",
                    p.end_s, p.start_s
                )));
            }
            // (A phase past the run's end is allowed: it is what a shortened run of a
            // longer scenario looks like - the recovery it would be measured from is then
            // "n/a" in the table.)
            if !p.outage
                && p.workers.is_none()
                && p.rate_limit.is_none()
                && p.latency == LatencyPatch::default()
                && p.errors == ErrorsPatch::default()
            {
                return Err(err(format!(
                    "line {line}: phases[{i}] changes nothing: give it an outage, workers, a rate_limit, latency or errors"
                )));
            }
            if let Some(w) = p.workers
                && u64::from(w) * u64::from(s.upstream.replicas) > u64::from(MAX_WORKERS)
            {
                return Err(err(format!(
                    "line {line}: phases[{i}].workers: {} replicas of {w} workers are more than {MAX_WORKERS}",
                    s.upstream.replicas
                )));
            }
            let total = s.upstream.errors.patched(&p.errors).total();
            if total > 1.0 + 1e-9 {
                return Err(err(format!(
                    "line {line}: phases[{i}].errors: the probabilities add up to {total}, more than 1"
                )));
            }
            if small_burst(&p.rate_limit) {
                return Err(err(format!(
                    "line {line}: phases[{i}].rate_limit.burst must be at least 1 (a bucket that cannot hold one token refuses every request)"
                )));
            }
            if no_stragglers(s.upstream.latency.patched(&p.latency)) {
                return Err(err(format!(
                    "line {line}: phases[{i}].latency: straggler_p without a straggler_x above 1 (here or in upstream.latency) makes no straggler"
                )));
            }
        }
        // The trigger recovery is measured from ends after the first phase has begun: a
        // trigger that has not begun has nothing to recover from, and every policy would
        // "recover" at once. (One past the run's end is a shortened run's: "n/a".) Nor
        // is there a trigger without a phase.
        if let Some(t) = s.trigger_end_s
            && s.phases.is_empty()
        {
            return Err(err(format!(
                "trigger_end_s ({t}) needs a phase: without one nothing is triggered, and every policy would \"recover\" at once"
            )));
        }
        if let Some(t) = s.trigger_end_s
            && let Some(first) = s
                .phases
                .iter()
                .map(|p| p.get_ref().start_s)
                .reduce(f64::min)
            && t <= first
        {
            return Err(err(format!(
                "trigger_end_s ({t}) must be after the first phase's start ({first} s)"
            )));
        }
        for (i, r) in s.replica.iter().enumerate() {
            let line = lines.line(r.span().start);
            if i as u32 >= s.upstream.replicas {
                return Err(err(format!(
                    "line {line}: replica[{i}]: the upstream has only {} replicas",
                    s.upstream.replicas
                )));
            }
            let total = s.upstream.errors.patched(&r.get_ref().errors).total();
            if total > 1.0 + 1e-9 {
                return Err(err(format!(
                    "line {line}: replica[{i}].errors: the probabilities add up to {total}, more than 1"
                )));
            }
            if no_stragglers(s.upstream.latency.patched(&r.get_ref().latency)) {
                return Err(err(format!(
                    "line {line}: replica[{i}].latency: straggler_p without a straggler_x above 1 (here or in upstream.latency) makes no straggler"
                )));
            }
            // The replica's differences apply within every phase too.
            for (k, p) in s.phases.iter().enumerate() {
                let total = s
                    .upstream
                    .errors
                    .patched(&p.get_ref().errors)
                    .patched(&r.get_ref().errors)
                    .total();
                if total > 1.0 + 1e-9 {
                    return Err(err(format!(
                        "line {line}: replica[{i}].errors within phases[{k}]: the probabilities add up to {total}, more than 1"
                    )));
                }
            }
        }
        Ok(s)
    }

    /// A built-in scenario by name, or a scenario file by path.
    ///
    /// # Errors
    /// Unknown names, unreadable files, invalid scenarios.
    pub fn load(name_or_path: &str) -> Result<Self, SimError> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(text, name_or_path);
        }
        let path = Path::new(name_or_path);
        // A name with a separator or an extension is a path: a missing file is said as such.
        let looks_like_path =
            name_or_path.contains(['/', '\\']) || path.extension().is_some_and(|e| e == "toml");
        if path.exists() || looks_like_path {
            let text = retrywise_collect::read_bounded(path, MAX_FILE_BYTES, "a scenario file")
                .map_err(|source| SimError::ReadScenario {
                    path: path.to_path_buf(),
                    source,
                })?;
            return Self::parse(&text, &path.display().to_string());
        }
        Err(SimError::Unknown {
            what: "scenario",
            name: name_or_path.to_owned(),
            known: Self::builtin_names().join(", "),
        })
    }

    /// The names of the built-in scenarios.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// Every built-in scenario (they are checked by the tests, so this cannot fail).
    pub fn builtin() -> Vec<Scenario> {
        BUILTIN
            .iter()
            .filter_map(|(n, t)| Self::parse(t, n).ok())
            .collect()
    }

    /// When the trigger ends: `trigger_end_s`, or the end of the last phase.
    pub fn trigger_end(&self) -> Option<f64> {
        self.trigger_end_s.or_else(|| {
            self.phases
                .iter()
                .map(|p| p.get_ref().end_s)
                .reduce(f64::max)
        })
    }

    /// The behaviour of replica `replica` at `t` seconds: the base, then the phase that
    /// contains `t` (the last one listed, if several do), then the replica's differences.
    pub fn behaviour(&self, replica: usize, t: f64) -> Behaviour {
        let u = &self.upstream;
        let mut b = Behaviour {
            latency: u.latency,
            errors: u.errors,
            outage: false,
            workers: u.workers,
            rate_limit: u.rate_limit,
        };
        if let Some(p) = self
            .phases
            .iter()
            .rev()
            .map(toml::Spanned::get_ref)
            .find(|p| p.start_s <= t && t < p.end_s)
        {
            b.latency = b.latency.patched(&p.latency);
            b.errors = b.errors.patched(&p.errors);
            b.outage = p.outage;
            b.workers = p.workers.unwrap_or(b.workers);
            b.rate_limit = p.rate_limit.or(b.rate_limit);
        }
        if let Some(r) = self.replica.get(replica) {
            b.latency = b.latency.patched(&r.get_ref().latency);
            b.errors = b.errors.patched(&r.get_ref().errors);
        }
        b
    }

    /// The next time after `t` at which the behaviour may change (a phase boundary).
    pub fn next_change(&self, t: f64) -> Option<f64> {
        self.phases
            .iter()
            .flat_map(|p| [p.get_ref().start_s, p.get_ref().end_s])
            .filter(|x| *x > t)
            .reduce(f64::min)
    }
}

/// How a replica behaves at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    /// Service times.
    pub latency: Latency,
    /// Failure probabilities.
    pub errors: Errors,
    /// Whether every request is refused.
    pub outage: bool,
    /// Workers.
    pub workers: u32,
    /// The rate limit in force.
    pub rate_limit: Option<RateLimit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name = "t"
rps = 100
duration_s = 10

[upstream]
workers = 4
[upstream.latency]
median_ms = 20
[upstream.errors]
http_503 = 0.1

[[phases]]
start_s = 2
end_s = 4
outage = true

[[phases]]
start_s = 5
end_s = 6
[phases.errors]
http_503 = 0.5
"#;

    #[test]
    fn every_builtin_scenario_parses() {
        for (name, text) in BUILTIN {
            let s = Scenario::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&s.name, name);
        }
    }

    #[test]
    fn phases_change_the_behaviour() {
        let s = Scenario::parse(OK, "t").unwrap();
        assert!(!s.behaviour(0, 1.0).outage);
        assert!(s.behaviour(0, 2.0).outage);
        assert_eq!(s.behaviour(0, 5.5).errors.http_503, 0.5);
        assert_eq!(s.behaviour(0, 6.0).errors.http_503, 0.1);
        assert_eq!(s.next_change(2.5), Some(4.0));
        assert_eq!(s.next_change(7.0), None);
        assert_eq!(s.trigger_end(), Some(6.0));
    }

    /// Recovery is measured after every built-in scenario's trigger: it ends where one of
    /// its phases does, with at least five seconds of the run after it (three bins of a
    /// second make a recovery).
    #[test]
    fn every_builtin_trigger_ends_a_phase_with_room_after_it() {
        for s in Scenario::builtin() {
            let Some(end) = s.trigger_end() else {
                continue;
            };
            assert!(
                s.phases.iter().any(|p| p.get_ref().end_s == end),
                "{}: no phase ends at {end} s",
                s.name
            );
            assert!(
                s.duration_s >= end + 5.0,
                "{}: the run ends {end} s in",
                s.name
            );
        }
    }

    fn err(text: &str) -> String {
        Scenario::parse(text, "bad.toml").unwrap_err().to_string()
    }

    /// Probabilities that add up to exactly 1 are not refused because their sum rounds a
    /// hair above it (0.2 + 0.4 + 0.3 + 0.1 is 1.0000000000000002 in this order).
    #[test]
    fn errors_that_add_up_to_one_are_taken() {
        let s = Scenario::parse(
            "name = \"one\"\nrps = 10\nduration_s = 5\n[upstream]\nworkers = 4\n[upstream.latency]\nmedian_ms = 1\n[upstream.errors]\ntimeout = 0.2\nreset = 0.4\nconnect = 0.3\nhttp_500 = 0.1\n",
            "test",
        );
        assert!(s.is_ok(), "{s:?}");
    }

    #[test]
    fn a_replica_whose_errors_overflow_within_a_phase_is_refused() {
        let replicas = OK.replace("workers = 4", "workers = 4\nreplicas = 2");
        let within = format!("{replicas}\n[[replica]]\n[replica.errors]\nhttp_500 = 0.6\n");
        // Alone the replica's 0.6 and the base's 0.1 fit; within the 503 phase (0.5) not.
        let e = err(&within);
        assert!(
            e.contains("replica[0].errors within phases[1]: the probabilities add up to 1.1"),
            "{e}"
        );
        let fits = within.replace("http_500 = 0.6", "http_500 = 0.4");
        assert!(Scenario::parse(&fits, "ok.toml").is_ok());
    }

    #[test]
    fn what_a_run_cannot_hold_or_would_read_as_zero_is_refused_by_name() {
        let e = err(&OK.replace("name = \"t\"", "name = \" \""));
        assert!(e.contains("name: must be letters"), "{e}");
        let e = err(&OK.replace("name = \"t\"", "name = \"a\\nb\""));
        assert!(e.contains("name: must be letters"), "{e}");
        // A deadline that rounds to no time at all, not "must be greater than zero" later.
        for field in ["deadline_ms", "attempt_timeout_ms"] {
            let e = err(&OK.replace(
                "duration_s = 10",
                &format!("duration_s = 10\n{field} = 1e-300"),
            ));
            assert!(e.contains(field) && e.contains("0.001 ms"), "{e}");
        }
        let e = err(&OK.replace("duration_s = 10", "duration_s = 1e-300"));
        assert!(e.contains("a run needs at least one"), "{e}");
        let e = err(&OK.replace("median_ms = 20", "median_ms = 20\nsigma = 1e9"));
        assert!(e.contains("sigma") && e.contains("within [0, 10]"), "{e}");
        // Many phases: refused past the limit, and checked in linear time below it (the
        // line of each is found by a binary search; this took minutes when it rescanned).
        let phase = "[[phases]]\nstart_s = 1\nend_s = 2\noutage = true\n";
        let e = err(&format!("{OK}{}", phase.repeat(MAX_PHASES)));
        assert!(e.contains("10002 phases, more than"), "{e}");
        let many = format!("{OK}{}", phase.repeat(MAX_PHASES - 3));
        assert_eq!(
            Scenario::parse(&many, "t").unwrap().phases.len(),
            MAX_PHASES - 1
        );
        let bad_last = format!("{many}[[phases]]\nstart_s = 3\nend_s = 3\noutage = true\n");
        let line = bad_last.lines().count() - 3;
        let e = err(&bad_last);
        assert!(e.contains(&format!("line {line}: phases[9999]")), "{e}");
    }

    #[test]
    fn a_path_is_read_as_one_and_no_further_than_a_scenario_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere.toml");
        let e = Scenario::load(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, SimError::ReadScenario { .. }), "{e}");
        assert!(e.to_string().contains("nowhere.toml"), "{e}");
        let e = Scenario::load("stress/slowdown").unwrap_err();
        assert!(matches!(e, SimError::ReadScenario { .. }), "{e}");
        // A name that is no path is looked up among the built-in ones.
        let e = Scenario::load("outages").unwrap_err();
        assert!(e.to_string().contains("known: blips"), "{e}");
        let big = dir.path().join("big.toml");
        std::fs::write(
            &big,
            format!("{OK}\n{}", "#".repeat(MAX_FILE_BYTES as usize)),
        )
        .unwrap();
        let e = Scenario::load(big.to_str().unwrap()).unwrap_err();
        assert!(
            std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("larger than a scenario file")),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_field_and_the_line() {
        let e = err(&OK.replace("http_503 = 0.1", "http_503 = 1.5"));
        assert!(e.contains("line 11") && e.contains("probability"), "{e}");
        let e = err(&OK.replace("workers = 4", "workers = 0"));
        assert!(
            e.contains("line 7") && e.contains("within [1, 100000]"),
            "{e}"
        );
        // Numbers past what a run's durations and instants hold, and runs past its memory.
        let e = err(&OK.replace("end_s = 4", "end_s = 1e20"));
        assert!(e.contains("line 15") && e.contains("at most 1e9"), "{e}");
        let e = err(&OK.replace(
            "duration_s = 10",
            "duration_s = 10
deadline_ms = 1e22",
        ));
        assert!(
            e.contains("deadline_ms") && e.contains("at most 1e9"),
            "{e}"
        );
        let e = err(&OK.replace("workers = 4", "workers = 4000000000"));
        assert!(e.contains("within [1, 100000]"), "{e}");
        let e = err(&OK.replace(
            "workers = 4",
            "workers = 1000
replicas = 1000",
        ));
        assert!(e.contains("1000000 workers, more than 100000"), "{e}");
        let e = err(&OK.replace("rps = 100", "rps = 1e9"));
        assert!(e.contains("more than a run holds"), "{e}");
        // A burst's requests are its rps, whatever its (short) duration.
        let e = err(&OK.replace(
            "rps = 100\nduration_s = 10",
            "rps = 1e8\nduration_s = 0.01\narrivals = \"burst\"",
        ));
        assert!(
            e.contains("rps (a burst sends them at once) is 100000000"),
            "{e}"
        );
        let e = err(&OK
            .replace(
                "end_s = 6",
                "end_s = 6
workers = 100000",
            )
            .replace(
                "workers = 4",
                "workers = 4
replicas = 2",
            ));
        assert!(e.contains("phases[1].workers"), "{e}");
        let e = err(&OK.replace("median_ms = 20", "median_ms = -20"));
        assert!(e.contains("line 9") && e.contains("positive"), "{e}");
        let e = err(&OK.replace("rps = 100", "rsp = 100"));
        assert!(e.contains("unknown field `rsp`"), "{e}");
        // The name names folders: one plain path component.
        for name in ["../elsewhere", "/tmp/x", "a b", "..", "."] {
            let e = err(&OK.replace("name = \"t\"", &format!("name = {name:?}")));
            assert!(e.contains("name: must be letters"), "{name}: {e}");
        }
        // An endpoint of its own (`--target`) takes any attempt timeout: its hangs are
        // its own (a 30 s timeout was refused against the simulated hang's 30 s).
        for timeout in [30_000.0, MAX_NUMBER] {
            let s = Scenario::for_target(100.0, 10.0, 60_000.0, timeout).unwrap();
            assert_eq!(s.attempt_timeout_ms, timeout);
        }
        let e = Scenario::for_target(100.0, 10.0, 60_000.0, 2e9).unwrap_err();
        assert!(e.to_string().contains("attempt_timeout_ms"), "{e}");
        // A hang shorter than the attempt timeout would be a slow 504, not a timeout.
        let e = err(&OK.replace("workers = 4", "workers = 4\nhang_ms = 500"));
        assert!(
            e.contains("hang_ms (500) must be longer than attempt_timeout_ms (2000)"),
            "{e}"
        );
        // A bucket that cannot hold a token refuses everything, in the base or a phase.
        let e = err(&OK.replace(
            "[upstream.errors]",
            "[upstream.rate_limit]\nrps = 10\nburst = 0.5\n[upstream.errors]",
        ));
        assert!(
            e.contains("upstream.rate_limit.burst must be at least 1"),
            "{e}"
        );
        let e = err(&OK.replace(
            "[phases.errors]",
            "[phases.rate_limit]\nrps = 10\nburst = 0.5\n[phases.errors]",
        ));
        assert!(e.contains("phases[1].rate_limit.burst"), "{e}");
        // The run's own limits, said of the file's fields rather than of a run option.
        let e = err(&OK.replace(
            "rps = 100\nduration_s = 10",
            "rps = 100000\nduration_s = 10\ndeadline_ms = 5000",
        ));
        assert!(
            e.contains("500000 requests would be in flight at once"),
            "{e}"
        );
        // Nor does one in a scenario without phases (every policy "recovered" at once).
        let blips = BUILTIN.iter().find(|(n, _)| *n == "blips").unwrap().1;
        let e = Scenario::parse(
            &blips.replace("duration_s = 60", "duration_s = 60\ntrigger_end_s = 5"),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("trigger_end_s (5) needs a phase"), "{e}");
        // A trigger that ends before the first phase begins measures nothing.
        let e = err(&OK.replace("duration_s = 10", "duration_s = 10\ntrigger_end_s = 1"));
        assert!(e.contains("trigger_end_s (1) must be after"), "{e}");
        assert!(
            Scenario::parse(
                &OK.replace("duration_s = 10", "duration_s = 10\ntrigger_end_s = 4"),
                "t"
            )
            .is_ok()
        );
        // Stragglers that are no slower than any reply are none.
        let e = err(&OK.replace("median_ms = 20", "median_ms = 20\nstraggler_p = 0.01"));
        assert!(e.contains("upstream.latency: straggler_p"), "{e}");
        let e = err(&OK.replace(
            "[phases.errors]",
            "[phases.latency]\nstraggler_p = 0.01\n[phases.errors]",
        ));
        assert!(e.contains("phases[1].latency: straggler_p"), "{e}");
        assert!(
            Scenario::parse(
                &OK.replace(
                    "median_ms = 20",
                    "median_ms = 20\nstraggler_p = 0.01\nstraggler_x = 10"
                ),
                "t"
            )
            .is_ok()
        );
        // No more in flight than the run sends: a short intense run holds.
        let short = OK.replace(
            "rps = 100\nduration_s = 10",
            "rps = 100000\nduration_s = 0.05\ndeadline_ms = 5000",
        );
        assert!(Scenario::parse(&short, "t").is_ok());
        let e = err(&OK.replace(
            "rps = 100\nduration_s = 10",
            "rps = 0.001\nduration_s = 1e7",
        ));
        assert!(e.contains("duration_s is 10000000 s"), "{e}");
        let e = err(&OK.replace("end_s = 4", "end_s = 1"));
        assert!(e.contains("line 13") && e.contains("phases[0]"), "{e}");
        let e = err(&OK.replace("http_503 = 0.5", "http_503 = 0.5\nhttp_500 = 0.6"));
        assert!(
            e.contains("line 18") && e.contains("phases[1].errors") && e.contains("add up"),
            "{e}"
        );
        // A phase that changes nothing is a mistake.
        let e = err(&format!("{OK}\n[[phases]]\nstart_s = 1\nend_s = 2\n"));
        assert!(e.contains("phases[2] changes nothing"), "{e}");
        let e = err("name = \"t\"\nrps = 1\nduration_s = 1\n");
        assert!(e.contains("missing field `upstream`"), "{e}");
        let e = err("not toml [");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let e = Scenario::load("nope").unwrap_err().to_string();
        assert!(e.contains("metastable"), "{e}");
    }
}
