//! The feature encoder: the one place where an [`AttemptContext`] becomes the numbers a
//! model sees.
//!
//! The trainer, the prediction service and embedded policies all go through one encoder,
//! [`encode_with`] — [`encode`] and [`encode_into`] write its row, a linear model sums it
//! into its score — so a model can never see different numbers in training and in serving. The set is
//! versioned ([`FEATURE_SET`]); a model artifact names the set it was trained with and is
//! refused if that is not this one.
//!
//! Durations enter as `ln(1 + milliseconds)`: what matters for a retry is the order of
//! magnitude of a wait, and logarithms keep hours-long outliers from dominating. The
//! previous error is one-hot encoded, and the log-delay is also given per error kind, so a
//! linear model can learn that waiting helps after a 429 and not during an outage.
//!
//! ```
//! use std::time::Duration;
//! use retrywise::attempt::{AttemptContext, ErrorKind};
//! use retrywise::features::{self, Feature};
//!
//! let mut ctx = AttemptContext::first("api");
//! ctx.attempt = 2;
//! ctx.error = Some(ErrorKind::Http429);
//! ctx.status = Some(429);
//! ctx.retry_after = Some(Duration::from_secs(1));
//! ctx.delay = Duration::from_millis(1500);
//! let x = features::encode(&ctx);
//! assert_eq!(x[Feature::Retry as usize], 1.0);
//! assert_eq!(x[Feature::ErrorHttp429 as usize], 1.0);
//! assert_eq!(x[Feature::WaitedRetryAfter as usize], 1.0);
//! assert!((x[Feature::LogDelayXHttp429 as usize] - 1501f64.ln()).abs() < 1e-12);
//! ```

use std::time::Duration;

use crate::attempt::{AttemptContext, ErrorKind};
use crate::math::{ln_const, ln_pos};

/// The name and version of this feature set, recorded in every model artifact.
pub const FEATURE_SET: &str = "retrywise-features/5";

/// Retries beyond this count are encoded as this count.
pub const MAX_RETRY: u32 = 10;

/// No feature the encoder makes exceeds this in magnitude (they are logarithms of
/// durations and counts, rates and their log-odds, indicators, and products of these), so a
/// model whose weights keep `|intercept| + Σ |wᵢ| · FEATURE_BOUND` finite can never
/// overflow its logit ([`crate::model::LogisticModel::from_parts`] refuses the others).
pub const FEATURE_BOUND: f64 = 1e4;

/// The error kinds with a one-hot column, in column order.
pub const ERROR_KINDS: [ErrorKind; 8] = ErrorKind::ALL;

macro_rules! features {
    ($($variant:ident = $name:literal: $doc:literal,)*) => {
        /// A column of the feature vector; `Feature::X as usize` is its index.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Feature {
            $(#[doc = $doc] $variant,)*
        }

        /// Every feature, in column order.
        pub const ALL: &[Feature] = &[$(Feature::$variant,)*];

        impl Feature {
            /// The column name (in artifacts, reports and the HTTP API).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Feature::$variant => $name,)*
                }
            }

            /// What the column holds.
            pub const fn description(self) -> &'static str {
                match self {
                    $(Feature::$variant => $doc,)*
                }
            }
        }
    };
}

features! {
    Retry = "retry": "Retries made before this attempt: attempt - 1, capped at 10.",
    LogDelayMs = "log_delay_ms": "ln(1 + the wait before this attempt, ms).",
    LogElapsedMs = "log_elapsed_ms": "ln(1 + time since the call's first attempt started, ms).",
    LogLatencyMs = "log_latency_ms": "ln(1 + the previous attempt's latency, ms); 0 before the first attempt.",
    ErrorTimeout = "error_timeout": "1 if the previous attempt timed out.",
    ErrorConnect = "error_connect": "1 if the previous attempt could not connect.",
    ErrorReset = "error_reset": "1 if the previous attempt's connection was reset.",
    ErrorHttp429 = "error_http_429": "1 if the previous attempt was rate limited (429).",
    ErrorHttp503 = "error_http_503": "1 if the previous attempt got 503.",
    ErrorHttp5xx = "error_http_5xx": "1 if the previous attempt got another 5xx.",
    ErrorHttp4xx = "error_http_4xx": "1 if the previous attempt got a 4xx other than 408 and 429 (a 425, or a permanent one such as 400 or 404).",
    ErrorOther = "error_other": "1 if the previous attempt failed otherwise.",
    Status4xx = "status_4xx": "1 if the previous attempt's HTTP status was 4xx.",
    Status5xx = "status_5xx": "1 if the previous attempt's HTTP status was 5xx.",
    RetryAfter = "retry_after": "1 if the previous answer carried Retry-After.",
    LogRetryAfterMs = "log_retry_after_ms": "ln(1 + the Retry-After asked for, ms); 0 without one.",
    WaitedRetryAfter = "waited_retry_after": "1 if the wait before this attempt is at least the Retry-After asked for.",
    LogShortOfRetryAfterMs = "log_short_of_retry_after_ms": "ln(1 + how much shorter than Retry-After the wait is, ms); 0 if it waited long enough or there is none.",
    FailureRate = "failure_rate": "The target's recent failure rate in [0, 1]; 0 when unknown.",
    FailureRateKnown = "failure_rate_known": "1 if the target's recent failure rate is known.",
    LogLatencyP95Ms = "log_latency_p95_ms": "ln(1 + the target's recent p95 latency, ms); 0 when unknown.",
    LogInFlight = "log_in_flight": "ln(1 + calls in flight to the target); 0 when unknown.",
    FailureRateRecent = "failure_rate_recent": "The target's failure rate over the last two tenths of the health window, shrunk towards the window's by chance (health::recent_failure_rate); the window's rate when unknown, 0 when both are.",
    PermanentRate = "permanent_rate": "Permanent failures among the target's recent calls, in [0, 1]; 0 when unknown.",
    LogSinceSuccessMs = "log_since_success_ms": "ln(1 + ms since a call to the target last succeeded); 0 when unknown.",
    LogDelayXTimeout = "log_delay_x_timeout": "log_delay_ms after a timeout (0 otherwise).",
    LogDelayXConnect = "log_delay_x_connect": "log_delay_ms after a connect error (0 otherwise).",
    LogDelayXReset = "log_delay_x_reset": "log_delay_ms after a reset (0 otherwise).",
    LogDelayXHttp429 = "log_delay_x_http_429": "log_delay_ms after a 429 (0 otherwise).",
    LogDelayXHttp503 = "log_delay_x_http_503": "log_delay_ms after a 503 (0 otherwise).",
    LogDelayXHttp5xx = "log_delay_x_http_5xx": "log_delay_ms after another 5xx (0 otherwise).",
    LogDelayXHttp4xx = "log_delay_x_http_4xx": "log_delay_ms after a retryable 4xx (0 otherwise).",
    LogDelayXOther = "log_delay_x_other": "log_delay_ms after another failure (0 otherwise).",
    LogDelayXFailureRate = "log_delay_x_failure_rate": "log_delay_ms times the recent failure rate.",
    LogDelayXFailureRateRecent = "log_delay_x_failure_rate_recent": "log_delay_ms times failure_rate_recent.",
    LogDelayXLogSinceSuccess = "log_delay_x_log_since_success": "log_delay_ms times log_since_success_ms: waiting out a failure that has lasted.",
    FailureLogOdds = "failure_log_odds": "The failure rate's log-odds, ln((r + 0.01) / (1 - r + 0.01)); 0 when unknown. With it a target that fails a steady share r of calls can be predicted 1 - r, which a weight on r alone cannot do for every r.",
    FailureLogOddsRecent = "failure_log_odds_recent": "failure_rate_recent's log-odds, as failure_log_odds.",
    PermanentLogOddsShift = "permanent_log_odds_shift": "How far permanent failures move the failure log-odds: the log-odds of failure_rate + permanent_rate (as failure_log_odds) minus those of failure_rate, a failure_rate that is unknown counting as 0 in both; 0 without permanent failures. A fresh call to a target that fails a share r of calls, and a share q of them for good, succeeds about 1 - r - q: failure_log_odds plus this shift, with weights near -1, say so for every r and q, which a weight on q alone cannot.",
    PermanentFailures = "permanent_failures": "1 if some of the target's recent calls failed for good (permanent_rate > 0). A logistic fit matches the observed success rate on average only over groups that some feature marks alone; with this one it does for targets that fail for good, which the continuous permanent_rate and permanent_log_odds_shift do not guarantee.",
    LogAgeAtAttemptMs = "log_age_at_attempt_ms": "ln(1 + ms since a call to the target last succeeded, counted at the attempt: the time since the last success plus the wait); 0 when unknown.",
    AgeOver1s = "age_over_1s": "How far log_age_at_attempt_ms is beyond 1 s: max(0, log_age_at_attempt_ms - ln(1 + 1000)). With the other knots, a piecewise-linear curve in the failure's age at the attempt, so that a linear model can say when failures that have lasted tend to end.",
    AgeOver2s = "age_over_2s": "max(0, log_age_at_attempt_ms - ln(1 + 2000)).",
    AgeOver4s = "age_over_4s": "max(0, log_age_at_attempt_ms - ln(1 + 4000)).",
    AgeOver8s = "age_over_8s": "max(0, log_age_at_attempt_ms - ln(1 + 8000)).",
    AgeOver16s = "age_over_16s": "max(0, log_age_at_attempt_ms - ln(1 + 16000)).",
    LogAgeAtAttemptXConnect = "log_age_at_attempt_x_connect": "log_age_at_attempt_ms after a refused connection (0 otherwise): a target that refuses is down, and how long downtime lasts is its own curve, unlike an overload's.",
    AgeOver1sXConnect = "age_over_1s_x_connect": "age_over_1s after a refused connection (0 otherwise).",
    AgeOver2sXConnect = "age_over_2s_x_connect": "age_over_2s after a refused connection (0 otherwise).",
    AgeOver4sXConnect = "age_over_4s_x_connect": "age_over_4s after a refused connection (0 otherwise).",
    AgeOver8sXConnect = "age_over_8s_x_connect": "age_over_8s after a refused connection (0 otherwise).",
    AgeOver16sXConnect = "age_over_16s_x_connect": "age_over_16s after a refused connection (0 otherwise).",
}

/// The number of features.
pub const N_FEATURES: usize = ALL.len();

/// `ln(1 + ms)`: how every duration enters the features (a decider weighing a fixed grid
/// of waits computes it once per wait: [`SuccessModel::p_success_by_logged_delay`]). (`ln`
/// of the sum rather than `ln_1p`: as exact for waits of a microsecond and more.) By the
/// crate's inlined logarithm, as the encoder's other logarithms: within 4 ε · max(|ln|, ½)
/// of `f64::ln` - a few units in the last place, and 4.4e-16 at most near 1 (waits under
/// 8 µs).
///
/// [`SuccessModel::p_success_by_logged_delay`]: crate::model::SuccessModel::p_success_by_logged_delay
pub fn log_ms(d: Duration) -> f64 {
    if d.is_zero() {
        return 0.0;
    }
    ln_pos(one_plus_ms(d))
}

/// `ln(1 + n)`, from a table for the counts of calls in flight a target usually has.
#[inline]
fn log_1p_count(n: u32) -> f64 {
    match LN_1P_COUNTS.get(n as usize) {
        Some(l) => *l,
        None => ln_pos(1.0 + f64::from(n)),
    }
}

/// `ln(1 + n)` for `n` below 256, computed when compiling: `ln x = k·ln 2 + ln m` with
/// `x = 2^k · m`, `m` in `[1, 2)` (`ln m` by [`crate::math::ln_const`]). A test checks it
/// against `f64::ln`.
static LN_1P_COUNTS: [f64; 256] = {
    let mut t = [0.0; 256];
    let mut n = 0;
    while n < 256 {
        let mut m = 1.0 + n as f64;
        let mut k = 0.0;
        while m >= 2.0 {
            m /= 2.0;
            k += 1.0;
        }
        t[n] = k * std::f64::consts::LN_2 + ln_const(m);
        n += 1;
    }
    t
};

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// The feature vector of `ctx`, in the order of [`ALL`].
///
/// Total: every context yields finite numbers (durations are finite by construction; a
/// failure rate outside `[0, 1]` or NaN is clamped, NaN to unknown).
pub fn encode(ctx: &AttemptContext) -> [f64; N_FEATURES] {
    let mut x = [0.0; N_FEATURES];
    encode_into(ctx, &mut x);
    x
}

/// The features that depend on the wait before the attempt (`ctx.delay`): a decider that
/// weighs many waits for one context re-encodes only these ([`encode_delay`]).
pub const DELAY_FEATURES: [Feature; N_LOG_DELAY + 2 + N_AGE] = {
    // The log-delay family, the two Retry-After terms of `delay_terms`, then the age terms
    // of `age_terms`.
    let mut out = [Feature::WaitedRetryAfter; N_LOG_DELAY + 2 + N_AGE];
    let mut i = 0;
    while i < N_LOG_DELAY {
        out[i] = LOG_DELAY_FEATURES[i];
        i += 1;
    }
    out[N_LOG_DELAY] = Feature::WaitedRetryAfter;
    out[N_LOG_DELAY + 1] = Feature::LogShortOfRetryAfterMs;
    let mut j = 0;
    while j < N_AGE {
        out[N_LOG_DELAY + 2 + j] = AGE_FEATURES[j];
        j += 1;
    }
    out
};

/// The number of [`AGE_FEATURES`]: the curve, and the curve after a refused connection.
pub const N_AGE: usize = 2 * (1 + AGE_KNOTS_MS.len());

/// Where the piecewise-linear curve in the failure's age bends: octaves from 1 s, the
/// span over which an outage, a deploy or an overload usually ends (none of them tuned to
/// a scenario: a model learns the slope between each pair).
const AGE_KNOTS_MS: [f64; 5] = [1_000.0, 2_000.0, 4_000.0, 8_000.0, 16_000.0];

/// The features of the failure's age at the attempt, in [`age_terms`]' order.
pub const AGE_FEATURES: [Feature; N_AGE] = [
    Feature::LogAgeAtAttemptMs,
    Feature::AgeOver1s,
    Feature::AgeOver2s,
    Feature::AgeOver4s,
    Feature::AgeOver8s,
    Feature::AgeOver16s,
    Feature::LogAgeAtAttemptXConnect,
    Feature::AgeOver1sXConnect,
    Feature::AgeOver2sXConnect,
    Feature::AgeOver4sXConnect,
    Feature::AgeOver8sXConnect,
    Feature::AgeOver16sXConnect,
];

/// The [`AGE_FEATURES`] of the attempt in `ctx` after a wait of `delay`: `ln(1 + ms)` of
/// the time since the target's last success plus the wait, and how far it is beyond each
/// knot; then the same after a refused connection (zeros otherwise). All zero when the
/// time since the last success is unknown.
#[inline]
pub fn age_terms(ctx: &AttemptContext, delay: Duration) -> [f64; N_AGE] {
    age_terms_logged(
        ctx,
        ctx.since_success
            .map(|since| log_ms(since.saturating_add(delay))),
    )
}

/// [`age_terms`] from `ln(1 + ms)` of the time since the last success plus the wait (none
/// when the time since the last success is unknown).
#[inline]
fn age_terms_logged(ctx: &AttemptContext, age: Option<f64>) -> [f64; N_AGE] {
    const HALF: usize = N_AGE / 2;
    let mut out = [0.0; N_AGE];
    let Some(age) = age else {
        return out;
    };
    out[0] = age;
    for (o, knot) in out[1..HALF].iter_mut().zip(AGE_KNOT_LOGS) {
        *o = (age - knot).max(0.0);
    }
    if ctx.error == Some(ErrorKind::Connect) {
        let (curve, refused) = out.split_at_mut(HALF);
        refused.copy_from_slice(curve);
    }
    out
}

/// `ln(1 + knot ms)` of each [`AGE_KNOTS_MS`] (checked by a test).
const AGE_KNOT_LOGS: [f64; AGE_KNOTS_MS.len()] = [
    6.90875477931522,
    7.601402334583733,
    8.294299608857235,
    8.987321812850125,
    9.680406499268875,
];

/// Writes the feature vector of `ctx` into `x` (for filling rows of a matrix).
pub fn encode_into(ctx: &AttemptContext, x: &mut [f64; N_FEATURES]) {
    x.fill(0.0);
    encode_with(ctx, &mut Row(x));
}

/// Where [`encode_with`] puts the features of a context: each at most once, in any order;
/// a feature not put is zero. A row ([`encode_into`]) stores them; a linear model sums
/// them into its score as they come ([`crate::model::LogisticModel`]), so that one
/// prediction neither stores nor reloads a vector.
pub trait FeatureSink {
    /// Feature `f` of the context has value `v`.
    fn put(&mut self, f: Feature, v: f64);
}

/// A row of [`N_FEATURES`] values, zeroed before the features are put into it.
struct Row<'a>(&'a mut [f64; N_FEATURES]);

impl FeatureSink for Row<'_> {
    #[inline(always)]
    fn put(&mut self, f: Feature, v: f64) {
        self.0[f as usize] = v;
    }
}

/// The one-hot column of an error kind (a `match`, not a table: a sink that sums by column
/// then knows the column when compiled).
#[inline(always)]
fn error_column(kind: ErrorKind) -> Feature {
    match kind {
        ErrorKind::Timeout => Feature::ErrorTimeout,
        ErrorKind::Connect => Feature::ErrorConnect,
        ErrorKind::Reset => Feature::ErrorReset,
        ErrorKind::Http429 => Feature::ErrorHttp429,
        ErrorKind::Http503 => Feature::ErrorHttp503,
        ErrorKind::Http5xx => Feature::ErrorHttp5xx,
        ErrorKind::Http4xx => Feature::ErrorHttp4xx,
        ErrorKind::Other => Feature::ErrorOther,
    }
}

/// The encoder: puts every feature of `ctx` that is not zero into `out` (see
/// [`FeatureSink`]). [`encode`] and [`encode_into`] are this with a row; everything that
/// encodes a context goes through it.
#[inline]
pub fn encode_with<S: FeatureSink>(ctx: &AttemptContext, out: &mut S) {
    use Feature as F;
    out.put(
        F::Retry,
        f64::from(ctx.attempt.saturating_sub(1).min(MAX_RETRY)),
    );
    if let Some(kind) = ctx.error {
        out.put(error_column(kind), 1.0);
    }
    match ctx.status {
        Some(400..=499) => out.put(F::Status4xx, 1.0),
        Some(500..=599) => out.put(F::Status5xx, 1.0),
        _ => {}
    }
    if let Some(n) = ctx.in_flight {
        out.put(F::LogInFlight, log_1p_count(n));
    }
    let rate = failure_rate(ctx);
    let recent = failure_rate_recent(ctx);
    let permanent = unit(ctx.permanent_rate);
    let all = (rate.unwrap_or(0.0) + permanent.unwrap_or(0.0)).min(1.0);
    // Every logarithm of the context first, four at a time, so that they run side by side
    // (an absent value takes `ln 1 = 0`, and is not put).
    let [log_elapsed, log_latency, log_retry_after, log_p95] = ln4([
        one_plus_ms(ctx.elapsed),
        ctx.latency.map_or(1.0, one_plus_ms),
        ctx.retry_after.map_or(1.0, one_plus_ms),
        ctx.latency_p95.map_or(1.0, one_plus_ms),
    ]);
    let [rate_log_odds, recent_log_odds, all_log_odds, log_since] = ln4([
        odds(rate.unwrap_or(0.0)),
        odds(recent),
        odds(all),
        ctx.since_success.map_or(1.0, one_plus_ms),
    ]);
    out.put(F::LogElapsedMs, log_elapsed);
    if ctx.latency.is_some() {
        out.put(F::LogLatencyMs, log_latency);
    }
    if ctx.retry_after.is_some() {
        out.put(F::RetryAfter, 1.0);
        out.put(F::LogRetryAfterMs, log_retry_after);
    }
    if let Some(r) = rate {
        out.put(F::FailureRate, r);
        out.put(F::FailureRateKnown, 1.0);
        out.put(F::FailureLogOdds, rate_log_odds);
    }
    if ctx.latency_p95.is_some() {
        out.put(F::LogLatencyP95Ms, log_p95);
    }
    out.put(F::FailureRateRecent, recent);
    // (A NaN recent rate is unknown, as a NaN rate is.)
    if rate.is_some() || unit(ctx.failure_rate_recent).is_some() {
        out.put(F::FailureLogOddsRecent, recent_log_odds);
    }
    if let Some(q) = permanent {
        out.put(F::PermanentRate, q);
        if q > 0.0 {
            // Never negative: at the edge of a row of the logarithm's table, odds an ulp
            // apart may come out an ulp inverted.
            out.put(
                F::PermanentLogOddsShift,
                (all_log_odds - rate_log_odds).max(0.0),
            );
            out.put(F::PermanentFailures, 1.0);
        }
    }
    let log_since = ctx.since_success.map(|_| log_since);
    if let Some(l) = log_since {
        out.put(F::LogSinceSuccessMs, l);
    }
    // Without a wait, the time short of the Retry-After is the Retry-After, and the
    // failure's age at the attempt is the time since the success.
    let delay = ctx.delay;
    let (terms, age) = if delay.is_zero() {
        let waited = flag(ctx.retry_after.is_some_and(|ra| ra.is_zero()));
        ((0.0, waited, log_retry_after), log_since)
    } else {
        // `delay_terms` and `age_terms` by hand, with their three logarithms side by side
        // (through them, one p(success) took 48 ns instead of 45 in alternating runs, even
        // for contexts without a wait: the whole encoder compiles differently; a proptest
        // holds the two equal to the bit).
        let [log_delay, log_short, log_age, _] = ln4([
            one_plus_ms(delay),
            ctx.retry_after
                .map_or(1.0, |ra| one_plus_ms(ra.saturating_sub(delay))),
            ctx.since_success
                .map_or(1.0, |since| one_plus_ms(since.saturating_add(delay))),
            1.0,
        ]);
        let waited = flag(ctx.retry_after.is_some_and(|ra| delay >= ra));
        (
            (log_delay, waited, log_short),
            ctx.since_success.map(|_| log_age),
        )
    };
    put_delay(
        terms,
        &basis(ctx, rate, recent, log_since),
        &age_terms_logged(ctx, age),
        out,
    );
}

/// `ln` of four numbers ([`ln_pos`]: inlined, so the four run side by side instead of
/// one call after another).
#[inline(always)]
fn ln4(x: [f64; 4]) -> [f64; 4] {
    [ln_pos(x[0]), ln_pos(x[1]), ln_pos(x[2]), ln_pos(x[3])]
}

/// `1 + ms` of a duration, whose `ln` is [`log_ms`] (milliseconds by two
/// multiplications: `as_secs_f64` divides by 10⁹).
#[inline(always)]
fn one_plus_ms(d: Duration) -> f64 {
    1.0 + d.as_secs() as f64 * 1e3 + f64::from(d.subsec_nanos()) * 1e-6
}

/// `(r + 0.01) / (1 − r + 0.01)`: the odds whose logarithm is a rate's log-odds as the
/// features take them, kept finite (within ±4.62) at 0 and 1.
#[inline(always)]
fn odds(r: f64) -> f64 {
    (r + LOG_ODDS_EPS) / (1.0 - r + LOG_ODDS_EPS)
}

/// The position of `kind` in [`ERROR_KINDS`] (its declaration order, checked by a test).
fn error_index(kind: ErrorKind) -> usize {
    kind as usize
}

/// The number of [`LOG_DELAY_FEATURES`].
pub const N_LOG_DELAY: usize = 12;

/// The delay features proportional to `ln(1 + wait ms)`, in [`log_delay_basis`]'s order:
/// the log-delay itself, one per error kind, and the ones scaled by the failure rate, the
/// recent failure rate and the log-time since the last success (how waiting pays depends
/// on how long the failure has lasted). The other
/// [`DELAY_FEATURES`] are given by [`delay_terms`] (`WaitedRetryAfter`,
/// `LogShortOfRetryAfterMs`) and [`age_terms`] (the failure's age at the attempt).
pub const LOG_DELAY_FEATURES: [Feature; N_LOG_DELAY] = [
    Feature::LogDelayMs,
    Feature::LogDelayXTimeout,
    Feature::LogDelayXConnect,
    Feature::LogDelayXReset,
    Feature::LogDelayXHttp429,
    Feature::LogDelayXHttp503,
    Feature::LogDelayXHttp5xx,
    Feature::LogDelayXHttp4xx,
    Feature::LogDelayXOther,
    Feature::LogDelayXFailureRate,
    Feature::LogDelayXFailureRateRecent,
    Feature::LogDelayXLogSinceSuccess,
];

/// How the [`LOG_DELAY_FEATURES`] of `ctx` scale with `ln(1 + wait ms)`: feature
/// `LOG_DELAY_FEATURES[i]` is `basis[i] × ln(1 + wait ms)` for every wait. (A linear model
/// can fold these into one slope per context, and weigh a wait with one multiplication.)
pub fn log_delay_basis(ctx: &AttemptContext) -> [f64; N_LOG_DELAY] {
    basis(
        ctx,
        failure_rate(ctx),
        failure_rate_recent(ctx),
        ctx.since_success.map(log_ms),
    )
}

/// [`log_delay_basis`] from the rates and the log-time since the last success as
/// [`encode_into`] reads them.
fn basis(
    ctx: &AttemptContext,
    rate: Option<f64>,
    recent: f64,
    log_since: Option<f64>,
) -> [f64; N_LOG_DELAY] {
    let mut m = [0.0; N_LOG_DELAY];
    m[0] = 1.0;
    if let Some(i) = ctx.error.map(error_index) {
        m[1 + i] = 1.0;
    }
    m[9] = rate.unwrap_or(0.0);
    m[10] = recent;
    m[11] = log_since.unwrap_or(0.0);
    m
}

/// The terms of the wait before an attempt: `ln(1 + wait ms)`, whether the wait is at
/// least the Retry-After asked for (`WaitedRetryAfter`), and `ln(1 + ms short of it)`
/// (`LogShortOfRetryAfterMs`).
pub fn delay_terms(ctx: &AttemptContext, delay: Duration) -> (f64, f64, f64) {
    delay_terms_logged(ctx, delay, log_ms(delay))
}

/// [`delay_terms`] with the wait's `ln(1 + ms)` already computed (`log_delay` must be
/// [`log_ms`]`(delay)`).
pub fn delay_terms_logged(
    ctx: &AttemptContext,
    delay: Duration,
    log_delay: f64,
) -> (f64, f64, f64) {
    (
        log_delay,
        flag(ctx.retry_after.is_some_and(|ra| delay >= ra)),
        ctx.retry_after
            .map_or(0.0, |ra| log_ms(ra.saturating_sub(delay))),
    )
}

/// Writes the [`DELAY_FEATURES`] of `ctx` as if the wait before the attempt were `delay`
/// (the other features of `x` are left as they are): `encode_delay(ctx, d, x)` after
/// `encode_into(ctx, x)` gives what `encode_into` gives for `ctx` with `delay = d`.
pub fn encode_delay(ctx: &AttemptContext, delay: Duration, x: &mut [f64; N_FEATURES]) {
    for f in DELAY_FEATURES {
        x[f as usize] = 0.0;
    }
    put_delay(
        delay_terms(ctx, delay),
        &log_delay_basis(ctx),
        &age_terms(ctx, delay),
        &mut Row(x),
    );
}

/// Puts the [`DELAY_FEATURES`] that are not zero, from the wait's terms
/// ([`delay_terms`]), the context's [`log_delay_basis`] and the wait's [`age_terms`].
#[inline(always)]
fn put_delay<S: FeatureSink>(
    (log_delay, waited, short): (f64, f64, f64),
    basis: &[f64; N_LOG_DELAY],
    age: &[f64; N_AGE],
    out: &mut S,
) {
    if log_delay != 0.0 {
        for (f, m) in LOG_DELAY_FEATURES.iter().zip(basis) {
            if *m != 0.0 {
                out.put(*f, m * log_delay);
            }
        }
    }
    if waited != 0.0 {
        out.put(Feature::WaitedRetryAfter, waited);
    }
    if short != 0.0 {
        out.put(Feature::LogShortOfRetryAfterMs, short);
    }
    for (f, v) in AGE_FEATURES.iter().zip(age) {
        if *v != 0.0 {
            out.put(*f, *v);
        }
    }
}

/// What keeps a rate's log-odds finite ([`odds`]).
const LOG_ODDS_EPS: f64 = 0.01;

/// A rate as the encoder reads it: clamped to `[0, 1]`, NaN as unknown.
fn unit(rate: Option<f64>) -> Option<f64> {
    rate.filter(|r| !r.is_nan()).map(|r| r.clamp(0.0, 1.0))
}

/// The failure rate as the encoder reads it ([`unit`]).
fn failure_rate(ctx: &AttemptContext) -> Option<f64> {
    unit(ctx.failure_rate)
}

/// The recent failure rate as the encoder reads it: the window's when unknown (no call
/// ended in the last tenths of the window), 0 when both are.
fn failure_rate_recent(ctx: &AttemptContext) -> f64 {
    unit(ctx.failure_rate_recent)
        .or_else(|| failure_rate(ctx))
        .unwrap_or(0.0)
}

/// Latency decades of a region: under 10 ms, 100 ms, 1 s, and longer.
const LATENCY_BANDS: [&str; 4] = ["<10ms", "<100ms", "<1s", ">=1s"];
/// Failure-rate bands of a region.
const FAILING_BANDS: [&str; 3] = ["unknown", "<50%", ">=50%"];
/// Calls-in-flight decades of a region (unknown counts as under 10).
const IN_FLIGHT_BANDS: [&str; 3] = ["<10", "<100", ">=100"];

/// The number of regions ([`region`]).
pub const N_REGIONS: usize =
    (1 + ERROR_KINDS.len()) * LATENCY_BANDS.len() * FAILING_BANDS.len() * IN_FLIGHT_BANDS.len();

/// The coarse region of the context space `ctx` falls in: the previous error (or none),
/// the decade of its latency, whether the target is failing half its calls or more, and
/// the decade of the calls in flight — the axes along which regimes differ (a refusal in
/// a millisecond while hundreds of calls queue is a different world from one in a quiet
/// target). A model artifact counts its training rows per region, so that a decider can
/// tell when a context lies where the model never saw data ([`crate::model::SuccessModel::trained_on`]):
/// there a linear model only extrapolates.
///
/// ```
/// use std::time::Duration;
/// use retrywise::attempt::{AttemptContext, ErrorKind};
/// use retrywise::features::{region, region_index, region_name};
///
/// let mut ctx = AttemptContext::first("api");
/// ctx.attempt = 2;
/// ctx.error = Some(ErrorKind::Http503);
/// ctx.latency = Some(Duration::from_millis(1));
/// ctx.failure_rate = Some(0.99);
/// ctx.in_flight = Some(3);
/// let r = region(&ctx);
/// assert_eq!(region_name(r), "http_503/latency<10ms/failing>=50%/in_flight<10");
/// assert_eq!(region_index(&region_name(r)), Some(r));
/// ```
pub fn region(ctx: &AttemptContext) -> usize {
    let error = ctx.error.map_or(0, |k| error_index(k) + 1);
    let latency = ctx.latency.map_or(0, |d| {
        let ms = d.as_secs_f64() * 1e3;
        if ms < 10.0 {
            0
        } else if ms < 100.0 {
            1
        } else if ms < 1000.0 {
            2
        } else {
            3
        }
    });
    let failing = match failure_rate(ctx) {
        None => 0,
        Some(f) if f < 0.5 => 1,
        Some(_) => 2,
    };
    let in_flight = match ctx.in_flight {
        Some(n) if n >= 100 => 2,
        Some(n) if n >= 10 => 1,
        _ => 0,
    };
    ((error * LATENCY_BANDS.len() + latency) * FAILING_BANDS.len() + failing)
        * IN_FLIGHT_BANDS.len()
        + in_flight
}

/// The name of region `i` (below [`N_REGIONS`]), as artifacts key it:
/// `error/latency…/failing…/in_flight…`, `first` for no previous error.
pub fn region_name(i: usize) -> String {
    let in_flight = i % IN_FLIGHT_BANDS.len();
    let i = i / IN_FLIGHT_BANDS.len();
    let failing = i % FAILING_BANDS.len();
    let i = i / FAILING_BANDS.len();
    let latency = i % LATENCY_BANDS.len();
    let error = i / LATENCY_BANDS.len();
    let error = match error {
        0 => "first",
        e => ERROR_KINDS.get(e - 1).map_or("?", |k| k.as_str()),
    };
    format!(
        "{error}/latency{}/failing{}/in_flight{}",
        LATENCY_BANDS[latency], FAILING_BANDS[failing], IN_FLIGHT_BANDS[in_flight]
    )
}

/// The region named `name` ([`region_name`]), if it is one.
pub fn region_index(name: &str) -> Option<usize> {
    (0..N_REGIONS).find(|i| region_name(*i) == name)
}

/// The names of every feature, in column order.
pub fn names() -> impl Iterator<Item = &'static str> {
    ALL.iter().map(|f| f.name())
}

/// Property-test strategies shared by the crate's tests.
#[cfg(test)]
pub(crate) mod strategies {
    use super::*;
    use proptest::prelude::*;

    /// An error kind or none.
    pub(crate) fn kind() -> impl Strategy<Value = Option<ErrorKind>> {
        prop_oneof![
            Just(None),
            proptest::sample::select(ERROR_KINDS.to_vec()).prop_map(Some)
        ]
    }

    /// A rate as callers may send it: in range, out of it, NaN, or unknown.
    fn rate() -> impl Strategy<Value = Option<f64>> {
        proptest::option::of(prop_oneof![-1.0f64..2.0, Just(f64::NAN)])
    }

    /// A duration in nanoseconds up to a quarter of `u64`'s range, zero included.
    fn nanos() -> impl Strategy<Value = Duration> {
        prop_oneof![Just(0u64), 0u64..u64::MAX / 4].prop_map(Duration::from_nanos)
    }

    /// Any context: every field over its whole range, each optional one sometimes unknown.
    pub(crate) fn any_context() -> impl Strategy<Value = AttemptContext> {
        (
            (
                1u32..=u32::MAX,
                kind(),
                proptest::option::of(100u16..600),
                proptest::option::of(nanos()),
                nanos(),
                proptest::option::of(nanos()),
                nanos(),
            ),
            (
                rate(),
                proptest::option::of(nanos()),
                proptest::option::of(prop_oneof![0u32..300, any::<u32>()]),
                rate(),
                rate(),
                proptest::option::of(nanos()),
            ),
        )
            .prop_map(
                |(
                    (attempt, error, status, latency, elapsed, retry_after, delay),
                    (rate, p95, in_flight, recent, permanent, since),
                )| {
                    let mut ctx = AttemptContext::first("t");
                    ctx.attempt = attempt;
                    ctx.error = error;
                    ctx.status = status;
                    ctx.latency = latency;
                    ctx.elapsed = elapsed;
                    ctx.retry_after = retry_after;
                    ctx.delay = delay;
                    ctx.failure_rate = rate;
                    ctx.latency_p95 = p95;
                    ctx.in_flight = in_flight;
                    ctx.failure_rate_recent = recent;
                    ctx.permanent_rate = permanent;
                    ctx.since_success = since;
                    ctx
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::strategies::any_context;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn columns_are_in_declaration_order_and_named_uniquely() {
        for (i, f) in ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
        }
        let mut names: Vec<_> = names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), N_FEATURES);
        // The one-hot and interaction blocks follow ERROR_KINDS.
        for (i, k) in ERROR_KINDS.iter().enumerate() {
            assert_eq!(
                ALL[Feature::ErrorTimeout as usize + i].name(),
                format!("error_{}", k.as_str())
            );
            assert_eq!(
                ALL[Feature::LogDelayXTimeout as usize + i].name(),
                format!("log_delay_x_{}", k.as_str())
            );
        }
    }

    #[test]
    fn delay_features_are_exactly_those_that_move_with_the_wait() {
        let mut ctx = AttemptContext::first("t");
        ctx.attempt = 2;
        ctx.error = Some(ErrorKind::Http429);
        ctx.retry_after = Some(Duration::from_millis(700));
        ctx.failure_rate = Some(0.4);
        ctx.failure_rate_recent = Some(0.7);
        ctx.permanent_rate = Some(0.1);
        ctx.since_success = Some(Duration::from_secs(4));
        let a = encode(&ctx);
        ctx.delay = Duration::from_secs(3);
        let b = encode(&ctx);
        let moved: Vec<Feature> = ALL
            .iter()
            .copied()
            .filter(|f| a[*f as usize] != b[*f as usize])
            .collect();
        for f in &moved {
            assert!(DELAY_FEATURES.contains(f), "{f:?} moves with the wait");
        }
        for f in ALL.iter().filter(|f| !DELAY_FEATURES.contains(f)) {
            assert_eq!(a[*f as usize], b[*f as usize], "{f:?}");
        }
    }

    #[test]
    fn regions_are_named_uniquely_and_round_trip() {
        let names: std::collections::BTreeSet<String> = (0..N_REGIONS).map(region_name).collect();
        assert_eq!(names.len(), N_REGIONS);
        for i in 0..N_REGIONS {
            assert_eq!(region_index(&region_name(i)), Some(i));
        }
        assert_eq!(
            region_index("http_503/latency<1ms/failing<50%/in_flight<10"),
            None
        );
    }

    proptest! {
        #[test]
        fn every_context_has_a_region_naming_its_error(
            kind in proptest::sample::select(ERROR_KINDS.to_vec()),
            latency_ms in proptest::option::of(0u64..100_000),
            rate in proptest::option::of(proptest::num::f64::ANY),
            in_flight in proptest::option::of(any::<u32>()),
        ) {
            let mut ctx = AttemptContext::first("t");
            ctx.attempt = 2;
            ctx.error = Some(kind);
            ctx.latency = latency_ms.map(Duration::from_millis);
            ctx.failure_rate = rate;
            ctx.in_flight = in_flight;
            let r = region(&ctx);
            prop_assert!(r < N_REGIONS);
            let name = region_name(r);
            let prefix = format!("{}/", kind.as_str());
            prop_assert!(name.starts_with(&prefix), "{}", name);
        }
    }

    #[test]
    fn error_indices_follow_the_one_hot_order_and_rows_are_refilled_whole() {
        for (i, k) in ERROR_KINDS.iter().enumerate() {
            assert_eq!(error_index(*k), i, "{k:?}");
            assert_eq!(
                error_column(*k) as usize,
                Feature::ErrorTimeout as usize + i
            );
        }
        // A row refilled for another context keeps no trace of the first.
        let mut x = [7.0; N_FEATURES];
        let mut ctx = AttemptContext::first("t");
        ctx.attempt = 2;
        ctx.error = Some(ErrorKind::Reset);
        encode_into(&ctx, &mut x);
        assert_eq!(x, encode(&ctx));
    }

    #[test]
    fn the_table_of_counts_holds_their_logarithms() {
        for n in 0..300u32 {
            let want = (1.0 + f64::from(n)).ln();
            let got = log_1p_count(n);
            assert!(
                (got - want).abs() <= 2.0 * f64::EPSILON * want,
                "{n}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn the_age_knots_logs_are_theirs() {
        for (ms, l) in AGE_KNOTS_MS.iter().zip(AGE_KNOT_LOGS) {
            assert!(((1.0 + ms).ln() - l).abs() < 1e-12, "{ms}");
        }
    }

    #[test]
    fn the_age_curve_bends_at_its_knots_and_is_zero_when_unknown() {
        let mut ctx = AttemptContext::first("t");
        ctx.attempt = 2;
        ctx.error = Some(ErrorKind::Connect);
        assert_eq!(age_terms(&ctx, Duration::from_secs(5)), [0.0; N_AGE]);
        ctx.since_success = Some(Duration::from_millis(2_500));
        let t = age_terms(&ctx, Duration::from_millis(500));
        // 3 s at the attempt: beyond the 1 s and 2 s knots, short of 4 s.
        assert!((t[0] - 3001f64.ln()).abs() < 1e-12);
        assert!((t[1] - (3001f64 / 1001.0).ln()).abs() < 1e-12);
        assert!((t[2] - (3001f64 / 2001.0).ln()).abs() < 1e-12);
        assert_eq!(&t[3..6], &[0.0, 0.0, 0.0]);
        // After a refused connection the second half repeats the curve; otherwise zeros.
        assert_eq!(t[..6], t[6..]);
        ctx.error = Some(ErrorKind::Timeout);
        let t = age_terms(&ctx, Duration::from_millis(500));
        assert!(t[0] > 0.0);
        assert_eq!(&t[6..], &[0.0; 6]);
        ctx.error = Some(ErrorKind::Connect);
        // Waiting moves the age, so the terms are delay features.
        let x = encode(&ctx);
        assert!((x[Feature::LogAgeAtAttemptMs as usize] - 2501f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn the_delay_features_are_the_log_delay_family_and_the_retry_after_terms() {
        let mut all: Vec<Feature> = LOG_DELAY_FEATURES.to_vec();
        all.extend([Feature::WaitedRetryAfter, Feature::LogShortOfRetryAfterMs]);
        all.extend(AGE_FEATURES);
        assert_eq!(all.len(), DELAY_FEATURES.len());
        for f in DELAY_FEATURES {
            assert!(all.contains(&f), "{f:?}");
        }
    }

    proptest! {
        /// A linear model may weigh a wait as basis × log-delay plus the Retry-After terms:
        /// exactly what the encoder writes.
        #[test]
        fn the_log_delay_basis_reproduces_the_encoder(
            kind in proptest::option::of(proptest::sample::select(ERROR_KINDS.to_vec())),
            rate in proptest::option::of(proptest::num::f64::ANY),
            recent in proptest::option::of(proptest::num::f64::ANY),
            since_ms in proptest::option::of(0u64..10_000_000),
            ra_ms in proptest::option::of(0u64..100_000),
            delay_ms in prop_oneof![Just(0u64), 0u64..1_000_000],
        ) {
            let mut ctx = AttemptContext::first("t");
            ctx.attempt = 2;
            ctx.error = kind;
            ctx.failure_rate = rate;
            ctx.failure_rate_recent = recent;
            ctx.since_success = since_ms.map(Duration::from_millis);
            ctx.retry_after = ra_ms.map(Duration::from_millis);
            ctx.delay = Duration::from_millis(delay_ms);
            let x = encode(&ctx);
            let (l, waited, short) = delay_terms(&ctx, ctx.delay);
            for (f, m) in LOG_DELAY_FEATURES.iter().zip(log_delay_basis(&ctx)) {
                prop_assert_eq!(x[*f as usize], m * l, "{:?}", f);
            }
            prop_assert_eq!(x[Feature::WaitedRetryAfter as usize], waited);
            prop_assert_eq!(x[Feature::LogShortOfRetryAfterMs as usize], short);
            for (f, v) in AGE_FEATURES.iter().zip(age_terms(&ctx, ctx.delay)) {
                prop_assert_eq!(x[*f as usize], v, "{:?}", f);
            }
        }
    }

    #[test]
    fn a_first_attempt_is_mostly_zeros() {
        let x = encode(&AttemptContext::first("t"));
        assert!(x.iter().all(|v| *v == 0.0), "{x:?}");
    }

    #[test]
    fn retry_after_waited_or_not() {
        let mut ctx = AttemptContext::first("t");
        ctx.attempt = 3;
        ctx.error = Some(ErrorKind::Http503);
        ctx.status = Some(503);
        ctx.retry_after = Some(Duration::from_secs(2));
        ctx.delay = Duration::from_millis(500);
        let x = encode(&ctx);
        assert_eq!(x[Feature::Retry as usize], 2.0);
        assert_eq!(x[Feature::Status5xx as usize], 1.0);
        assert_eq!(x[Feature::WaitedRetryAfter as usize], 0.0);
        assert!((x[Feature::LogShortOfRetryAfterMs as usize] - 1501f64.ln()).abs() < 1e-12);
        ctx.delay = Duration::from_secs(2);
        let x = encode(&ctx);
        assert_eq!(x[Feature::WaitedRetryAfter as usize], 1.0);
        assert_eq!(x[Feature::LogShortOfRetryAfterMs as usize], 0.0);
    }

    #[test]
    fn a_steady_failure_rate_is_its_own_log_odds() {
        let mut ctx = AttemptContext::first("t");
        ctx.failure_rate = Some(0.3);
        let x = encode(&ctx);
        let want = (0.31f64 / 0.71).ln();
        assert!((x[Feature::FailureLogOdds as usize] - want).abs() < 1e-12);
        // The recent rate falls back on the window's, like failure_rate_recent.
        assert!((x[Feature::FailureLogOddsRecent as usize] - want).abs() < 1e-12);
        ctx.failure_rate_recent = Some(1.0);
        let x = encode(&ctx);
        assert!((x[Feature::FailureLogOddsRecent as usize] - 101f64.ln()).abs() < 1e-12);
        // Unknown is 0 (even odds), as the other health features.
        let x = encode(&AttemptContext::first("t"));
        assert_eq!(x[Feature::FailureLogOdds as usize], 0.0);
        assert_eq!(x[Feature::FailureLogOddsRecent as usize], 0.0);
        // So is a NaN recent rate (an embedded caller's: the wire cannot carry one).
        let mut nan = AttemptContext::first("t");
        nan.failure_rate_recent = Some(f64::NAN);
        assert_eq!(encode(&nan), encode(&AttemptContext::first("t")));
    }

    #[test]
    fn permanent_failures_shift_the_failure_log_odds() {
        let mut ctx = AttemptContext::first("t");
        ctx.failure_rate = Some(0.05);
        ctx.permanent_rate = Some(0.3);
        let x = encode(&ctx);
        let shift = x[Feature::PermanentLogOddsShift as usize];
        let want = (0.36f64 / 0.66).ln() - (0.06f64 / 0.96).ln();
        assert!((shift - want).abs() < 1e-12, "{shift} {want}");
        // With weights of -1 on both, the score's health part is the log-odds of success
        // of a call that fails 35 % of the time, permanently or not.
        let health = -(x[Feature::FailureLogOdds as usize] + shift);
        assert!((health - (0.66f64 / 0.36).ln()).abs() < 1e-12);
        // None without permanent failures, or without knowing of them.
        ctx.permanent_rate = Some(0.0);
        assert_eq!(encode(&ctx)[Feature::PermanentLogOddsShift as usize], 0.0);
        ctx.permanent_rate = None;
        assert_eq!(encode(&ctx)[Feature::PermanentLogOddsShift as usize], 0.0);
        // Without a known failure rate, from a rate of 0.
        let mut ctx = AttemptContext::first("t");
        ctx.permanent_rate = Some(0.5);
        let x = encode(&ctx);
        let want = (0.51f64 / 0.51).ln() - (0.01f64 / 1.01).ln();
        assert!((x[Feature::PermanentLogOddsShift as usize] - want).abs() < 1e-12);
    }

    #[test]
    fn retries_are_capped() {
        let mut ctx = AttemptContext::first("t");
        ctx.attempt = u32::MAX;
        assert_eq!(encode(&ctx)[Feature::Retry as usize], f64::from(MAX_RETRY));
    }

    proptest! {
        /// Every context encodes to finite numbers, with exactly one error column set
        /// after a failure (none before), and the interaction equal to the log-delay.
        #[test]
        fn encoding_is_total_and_consistent(ctx in any_context()) {
            let error = ctx.error;
            let x = encode(&ctx);
            let signed = [Feature::FailureLogOdds, Feature::FailureLogOddsRecent];
            prop_assert!(x.iter().all(|v| v.abs() <= FEATURE_BOUND), "{:?}", x);
            prop_assert!(
                ALL.iter().filter(|f| !signed.contains(f)).all(|f| x[*f as usize] >= 0.0),
                "{:?}", x
            );
            for f in signed {
                prop_assert!(x[f as usize].abs() <= 4.62, "{:?}", x);
            }
            // The recent log-odds are the recent rate's; with neither rate known (a NaN
            // one is not), there are none.
            if unit(ctx.failure_rate).is_some() || unit(ctx.failure_rate_recent).is_some() {
                let r = failure_rate_recent(&ctx);
                let want = ((r + 0.01) / (1.0 - r + 0.01)).ln();
                let tolerance = 4.0 * f64::EPSILON * want.abs().max(0.5);
                prop_assert!((x[Feature::FailureLogOddsRecent as usize] - want).abs() <= tolerance);
            } else {
                prop_assert_eq!(x[Feature::FailureLogOddsRecent as usize], 0.0);
            }
            // The shift only ever adds failures: 0 to 2 x 4.62.
            prop_assert!((0.0..=9.24).contains(&x[Feature::PermanentLogOddsShift as usize]), "{:?}", x);
            let hot: f64 = (0..ERROR_KINDS.len()).map(|i| x[Feature::ErrorTimeout as usize + i]).sum();
            prop_assert_eq!(hot, if error.is_some() { 1.0 } else { 0.0 });
            let inter: f64 = (0..ERROR_KINDS.len()).map(|i| x[Feature::LogDelayXTimeout as usize + i]).sum();
            prop_assert_eq!(inter, if error.is_some() { x[Feature::LogDelayMs as usize] } else { 0.0 });
            prop_assert!(x[Feature::FailureRate as usize] <= 1.0);
            prop_assert!(x[Feature::FailureRateRecent as usize] <= 1.0);
            prop_assert!(x[Feature::PermanentRate as usize] <= 1.0);
        }
    }
}
