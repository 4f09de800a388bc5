//! The model-driven decider: the wait worth the most, by what the model predicts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::attempt::{AttemptContext, ErrorKind};
use crate::error::{Check, ConfigError};
use crate::model::SuccessModel;
use crate::random::RandomSource;

use super::{
    Backoff, Decision, Explained, Jitter, RetryCalendar, RetryDecider, RetryRules, StopReason,
};

const CHECK: Check = Check::new("model_decider");

/// The most waits a grid may hold (the Retry-After asked for is weighed beside them).
pub const MAX_GRID: usize = 64;

/// The fewest training rows like a context for a model to be trusted with it, unless
/// configured ([`ModelDeciderBuilder::min_support`]).
pub const DEFAULT_MIN_SUPPORT: u64 = 100;

/// Decides retries by what a [`SuccessModel`] predicts each wait is worth.
///
/// After a retryable failure it weighs candidate waits — a grid from zero to the cap, and
/// exactly the Retry-After when the upstream asked for one (never less) — by their value,
/// in units of one successful call:
///
/// ```text
/// V(w) = p(w) − c·(1 + ρ(w)) / (1 − f) − t·w + (1 − p(w)) · g(w) · V*
/// ```
///
/// - `p(w)`: the model's probability that the attempt after waiting `w` succeeds;
/// - `c·(1 + ρ(w)) / (1 − f)`: the cost of an attempt. `c` (`attempt_cost`, default 0.1) is the load
///   one attempt puts on the upstream, against the value of a success; divided by the share
///   of calls that currently succeed at the target (`1 − f`, `f` its recent failure rate),
///   it becomes what the attempt costs everyone: at a failure rate `f` it takes `1/(1 − f)`
///   attempts to buy one success, and the attempts a struggling target spends on retries
///   are taken from other callers' first attempts. Without a known failure rate, `c`; `f`
///   counts up to [`MAX_COST_FAILURE_RATE`] (the cost up to `5c`): the failure rate looks
///   back over the health window, and a target down for most of it may be back now — the
///   model's `p(w)` says whether it is, and an attempt it predicts succeeds more often than
///   `5c` is worth its load. `ρ(w)` is the load already booked where the retry would
///   land: the retries other decisions sharing its [`RetryCalendar`] scheduled into the
///   same quarter second, over the calls the target is offered in one (estimated from the
///   first attempts that failed in the last second and the failure rate). An attempt that lands where
///   retries already double the load costs twice as much, so a crowd that saw the same
///   failure spreads over the waits still worth a retry, and stops where none is;
/// - `t·w`: the cost of waiting (`time_cost`, default 0.01 per second);
/// - `(1 − p(w)) · g(w) · V*`: what a failure then still leaves — the value of continuing
///   (`V*`, the best value now), scaled by the share of the time to the deadline that
///   would be left after the wait and an attempt as long as the last (`g`), and zero when
///   the attempt would be the last allowed. After a Retry-After, which paces the attempts
///   to come (each waits at least as long), `g` counts attempts instead: how many still fit
///   before the deadline after waiting `w`, against how many after waiting exactly the
///   Retry-After (a wait within the slack loses none; one past it loses a whole attempt,
///   which the share of the time would spread into a small cost over every wait).
///
/// After a refused connection the attempts are not independent: the target is down until
/// it is back, and an attempt succeeds if and only if it is sent after that. There `p(w)`
/// is read as the chance that the target is back by `w` (made non-decreasing in `w`), an
/// attempt costs `c·(1 + ρ(w))` (a target that refuses a connection does no work for it,
/// and takes nothing from other callers' chances: the `1/(1 − f)` above would price a
/// refusal of unknown length out of any retry once it has filled the failure window), and
/// a failure leaves nothing (`g = 0`): it says the target is not back yet, and a later
/// attempt would buy only the chance that it came back in between, at its own price. A
/// retry that failed is not followed by the same chance again, so an outage of uncertain
/// end does not draw retry after retry.
///
/// `V*`, the best of these values, is solved for exactly. It stops when no wait is worth an
/// attempt (`V* ≤ 0`: with the same prediction for every wait this is exactly "stop below
/// p = c", the design sketch's "stop below p = 0.1"), when no wait lets another attempt
/// start before the deadline, after `max_attempts`, or when the upstream asked for a
/// Retry-After beyond the cap. The chosen wait is drawn at random among the near-optimal
/// ones (within `tolerance` of `V*`, and themselves worth an attempt), so that callers that
/// saw the same failure do not retry in lockstep. A context whose `status` is permanent
/// ([`ErrorKind::is_permanent_status`]: a 4xx other than 408, 425 and 429, the
/// [`HttpClassifier`](crate::attempt::HttpClassifier)'s rule) is never retried
/// (`not_retryable`), whatever a classifier made of it, the model or the rules would say:
/// `/v1/decide` is asked by callers without the crate's classifier. Every decision carries the probability it expected
/// ([`RetryDecider::explain`]); [`weigh`](Self::weigh) gives every alternative.
///
/// **Overload.** It weighs each retry by what the model predicts for it; a target whose
/// queue has outgrown its callers' timeouts still answers most retries (on another
/// replica, or a shorter line) while every retry lengthens the line for everyone, and
/// nothing the decider sees tells those timeouts from a slowdown's. A [`crate::policy::Policy`]
/// around it should ration retries after timeouts with
/// [`RetryQuota::after_timeouts`](crate::budget::RetryQuota::after_timeouts) as its budget
/// ([`PolicyBuilder::adaptive`](crate::policy::PolicyBuilder::adaptive) does).
///
/// **Fallback.** Without a model, when the model answers NaN or an infinity, or when the model was
/// trained on fewer than `min_support` rows (default 100) like the context
/// ([`SuccessModel::trained_on`]: rows in the same region of the context space —
/// [`crate::features::region`], which every artifact records: it has not learned that
/// situation, and would only extrapolate), it decides
/// with rules — [`RetryRules`] with AWS's decorrelated jitter from 100 ms, capped at
/// 10 s (on every scenario of the simulator's training suite it serves at least as many
/// requests as full jitter, at about as many attempts), the same attempt limit and
/// deadline — counts it
/// ([`fallbacks`](Self::fallbacks)) and logs a warning once. It never panics on a model's
/// answer.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use retrywise::attempt::{AttemptContext, ErrorKind};
/// use retrywise::model::SuccessModel;
/// use retrywise::retry::{Decision, ModelDecider, RetryDecider, StopReason};
///
/// // Rate limits clear within a second; connections refused stay refused.
/// let model = |c: &AttemptContext| match c.error {
///     Some(ErrorKind::Http429) => (c.delay.as_secs_f64()).min(0.95),
///     _ => 0.01,
/// };
/// let decider = ModelDecider::builder().model(Arc::new(model)).seed(7).build()?;
///
/// let mut ctx = AttemptContext::first("api");
/// ctx.attempt = 2;
/// ctx.error = Some(ErrorKind::Http429);
/// let Decision::Retry(wait) = decider.decide(&ctx) else { panic!() };
/// assert!(wait >= Duration::from_millis(500) && wait <= Duration::from_secs(2));
///
/// ctx.error = Some(ErrorKind::Connect);
/// assert_eq!(decider.decide(&ctx), Decision::Stop(StopReason::LowSuccessProbability));
/// # Ok::<(), retrywise::ConfigError>(())
/// ```
///
/// A clone shares the model and the fallback count; a seeded clone continues its random
/// sequence independently.
#[derive(Clone)]
pub struct ModelDecider {
    model: Option<Arc<dyn SuccessModel>>,
    fallback: RetryRules,
    min_support: u64,
    grid: Vec<Duration>,
    /// `ln(1 + ms)` of each wait of the grid, for the model.
    grid_logs: Vec<f64>,
    cap: Duration,
    attempt_cost: f64,
    time_cost: f64,
    tolerance: f64,
    max_attempts: u32,
    deadline: Option<Duration>,
    random: RandomSource,
    /// The share of "not worth it" stops that retry anyway, to learn from.
    explore: f64,
    /// Decisions made by the rules (shared by clones).
    fallbacks: Arc<AtomicU64>,
    /// Stops explored (shared by clones).
    explored: Arc<AtomicU64>,
    /// Each attempt's timeout and how far it may stretch for a slow but live target.
    timeout: Option<(Duration, Duration)>,
    /// The retries already booked at each target (shared by clones), or none to weigh
    /// every wait as if alone.
    calendar: Option<Arc<RetryCalendar>>,
}

/// The highest failure rate the attempt's cost counts ([`ModelDecider`]): an attempt costs
/// at most five times `attempt_cost`.
pub const MAX_COST_FAILURE_RATE: f64 = 0.8;

/// Why a decision was made without the model (by the rules, or — for a service's admission
/// of a first attempt — by sending it): each is logged once per process (a service that
/// builds a decider per request must not log every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No model is serving.
    NoModel = 0,
    /// The model was trained on too few rows like the context ([`supports`]).
    Unsupported = 1,
    /// The model answered NaN or an infinity (no probability).
    NaN = 2,
}

impl Fallback {
    /// The name a metric labels it with: `no_model`, `unsupported`, `nan`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Fallback::NoModel => "no_model",
            Fallback::Unsupported => "unsupported",
            Fallback::NaN => "nan",
        }
    }

    /// Logs that a decision was made without the model, the first time for each reason
    /// in the process.
    pub fn warn_once(self) {
        static WARNED: [AtomicBool; 3] = [const { AtomicBool::new(false) }; 3];
        if !WARNED[self as usize].swap(true, Ordering::Relaxed) {
            let reason = match self {
                Fallback::NoModel => "no model",
                Fallback::Unsupported => "the model was trained on too few rows like this one",
                Fallback::NaN => "the model answered NaN or an infinity",
            };
            tracing::warn!(reason, "deciding without the model");
        }
    }
}

/// Whether `model` was trained on at least `min_support` rows like `ctx`
/// ([`SuccessModel::trained_on`]; a model that does not say is trusted).
pub fn supports(model: &dyn SuccessModel, ctx: &AttemptContext, min_support: u64) -> bool {
    model.trained_on(ctx).is_none_or(|rows| rows >= min_support)
}

/// Counts a decision made by the rules, and logs its reason the first time.
fn note(fallbacks: &AtomicU64, why: Fallback) {
    fallbacks.fetch_add(1, Ordering::Relaxed);
    why.warn_once();
}

impl std::fmt::Debug for ModelDecider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDecider")
            .field("model", &self.model.is_some())
            .field("grid", &self.grid.len())
            .field("cap", &self.cap)
            .field("attempt_cost", &self.attempt_cost)
            .field("time_cost", &self.time_cost)
            .field("tolerance", &self.tolerance)
            .field("max_attempts", &self.max_attempts)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// One wait the decider weighed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alternative {
    /// The wait.
    pub wait: Duration,
    /// The predicted probability that the attempt after it succeeds.
    pub p_success: f64,
    /// Its value (see [`ModelDecider`]), in units of one successful call.
    pub value: f64,
    /// The retries already booked where it would land, over the calls the target is
    /// offered there ([`RetryCalendar`]; 0 without one).
    pub load: f64,
}

/// A decision with every alternative it weighed (empty when it stopped before weighing or
/// decided by its rules).
#[derive(Debug, Clone, PartialEq)]
pub struct Weighed {
    /// The decision and the probability it expected.
    pub explained: Explained,
    /// Why the rules decided: `no_model`, `nan` or `unsupported` (no model, a model
    /// answering NaN, or a context in a region the model saw too few rows of); `None` when
    /// the model did.
    pub fallback: Option<&'static str>,
    /// The chance of this decision when it explored — the model judged no wait worth an
    /// attempt, and the decider retries anyway (with probability
    /// [`ModelDeciderBuilder::explore`]) after a wait drawn uniformly from those weighed, so
    /// that what the model stopped on keeps being observed: the explore share over the
    /// number of waits weighed. `None` when it did not explore.
    pub propensity: Option<f64>,
    /// The waits weighed, shortest first.
    pub alternatives: Vec<Alternative>,
}

impl Weighed {
    /// Whether the decision explored ([`propensity`](Self::propensity) is its chance).
    pub fn explored(&self) -> bool {
        self.propensity.is_some()
    }

    /// Whether the rules decided ([`fallback`](Self::fallback) says why).
    pub fn fell_back(&self) -> bool {
        self.fallback.is_some()
    }
}

impl ModelDecider {
    /// A builder with the defaults: a 32-wait grid from 0 to a 30 s cap, attempt cost
    /// 0.1, time cost 0.01 per second, tolerance 0.01, at most 6 attempts, no deadline.
    pub fn builder() -> ModelDeciderBuilder {
        ModelDeciderBuilder::default()
    }

    /// How many decisions were made by the rules instead of the model.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// How many decisions explored (retried where the model would have stopped).
    pub fn explored(&self) -> u64 {
        self.explored.load(Ordering::Relaxed)
    }

    /// Whether it has a model to consult.
    pub fn has_model(&self) -> bool {
        self.model.is_some()
    }

    /// The waits it weighs (before the Retry-After), shortest first.
    pub fn grid(&self) -> &[Duration] {
        &self.grid
    }

    /// Decides, and returns every alternative weighed.
    pub fn weigh(&self, ctx: &AttemptContext) -> Weighed {
        self.weigh_after(ctx, Duration::ZERO)
    }

    /// Decides about a retry whose wait began `waited` ago: `ctx` is the context at the
    /// failure (its `elapsed` the time spent until then), and the decision is the one made
    /// then, among the waits not yet over — those of at least `waited`, with `waited`
    /// itself (send now) as the shortest, as a Retry-After is — counted from now: a
    /// `Retry(w)` says wait `w` more, `w` the shortest of the near-optimal waits (not
    /// drawn at random: the spread was the first decision's). The alternatives' waits are counted from now too,
    /// and the calendar reads and books the load where each would land from now. The
    /// failure is not told to the calendar again, and the booking this retry made when it
    /// was told to wait, now due, is taken back ([`CalendarView::unbook_due`](super::calendar::CalendarView::unbook_due)). For a caller that waited as another
    /// part of the system told it (a circuit open a while more) and asks again:
    /// `/v1/decide`'s `waited_ms`. `weigh` is `weigh_after` with no wait begun.
    pub fn weigh_after(&self, ctx: &AttemptContext, waited: Duration) -> Weighed {
        let mut alternatives = Vec::new();
        let (explained, why, propensity) = self.decide_into(ctx, waited, Some(&mut alternatives));
        Weighed {
            explained,
            fallback: why.map(Fallback::as_str),
            propensity,
            alternatives,
        }
    }

    fn stop(reason: StopReason, p: Option<f64>) -> Explained {
        Explained {
            decision: Decision::Stop(reason),
            p_success: p,
        }
    }

    fn by_rules(
        &self,
        ctx: &AttemptContext,
        why: Fallback,
    ) -> (Explained, Option<Fallback>, Option<f64>) {
        note(&self.fallbacks, why);
        (self.fallback.explain(ctx), Some(why), None)
    }

    /// The decision, whether the rules made it, its propensity if it explored (the
    /// explore share over the waits weighed, one drawn uniformly), and (when asked) the
    /// alternatives; with the wait begun `since` ago (see [`weigh_after`](Self::weigh_after)).
    fn decide_into(
        &self,
        ctx: &AttemptContext,
        since: Duration,
        weighed: Option<&mut Vec<Alternative>>,
    ) -> (Explained, Option<Fallback>, Option<f64>) {
        // A wait from the failure, counted from now.
        let ahead = |w: Duration| w.saturating_sub(since);
        // A permanent status (a 400, a 404) is never retried, whatever a model or the
        // rules would make of it: the caller of `/v1/decide` may ask after one.
        if ctx.status.is_some_and(ErrorKind::is_permanent_status) {
            return (Self::stop(StopReason::NotRetryable, None), None, None);
        }
        // Every failure tells the calendar of the target's load (the view it opens reads
        // the retries others booked: the load each wait would land in). The view holds the
        // calendar's lock, so it is opened after the model has answered; a decision that
        // ends before weighing only tells of its failure. Every retry decided is booked,
        // the rules' too, so that `replanned` finds each one it is told of.
        let rate_from = ctx.failure_rate_recent.or(ctx.failure_rate);
        // The decision's instant, read before the model is asked: the caller read its own
        // just before (a retry it does not send is unbooked at that one), so the two fall
        // in the same quarter-second slot but for microseconds at a slot's edge.
        let decided_at = self.calendar.as_ref().map(|_| tokio::time::Instant::now());
        let open = || {
            self.calendar.as_ref().zip(decided_at).map(|(c, now)| {
                // Asked again, the failure was told when it was first asked about, and the
                // retry it was told to make then was booked where it stands now: it is this
                // one, not another's load.
                let first = ctx.attempt == 2 && since.is_zero();
                let mut view = c.after_failure(&ctx.target, now, first, rate_from);
                if !since.is_zero() {
                    view.unbook_due();
                }
                view
            })
        };
        let told = |mut decided: (Explained, Option<Fallback>, Option<f64>)| {
            let view = open();
            if let Decision::Retry(wait) = decided.0.decision {
                decided.0.decision = Decision::Retry(ahead(wait));
                if let Some(mut view) = view {
                    view.book(ahead(wait));
                }
            }
            decided
        };
        let Some(model) = &self.model else {
            return told(self.by_rules(ctx, Fallback::NoModel));
        };
        // One model for the whole decision, even if it is swapped meanwhile.
        let pinned = model.pinned(ctx);
        let model: &dyn SuccessModel = pinned.as_deref().unwrap_or(model.as_ref());
        if !supports(model, ctx, self.min_support) {
            return told(self.by_rules(ctx, Fallback::Unsupported));
        }
        if ctx.attempt > self.max_attempts {
            return told((Self::stop(StopReason::MaxAttempts, None), None, None));
        }
        if ctx.retry_after.is_some_and(|ra| ra > self.cap) {
            return told((Self::stop(StopReason::RetryAfterTooLong, None), None, None));
        }
        // The candidates: the Retry-After itself and the grid past it; without one, the
        // whole grid, from zero. (Likewise the wait already waited, when longer: sending
        // now, and the grid past it.)
        let mut waits = [Duration::ZERO; MAX_GRID + 1];
        let mut logs = [0.0; MAX_GRID + 1];
        let mut n = 0;
        let first = match ctx.retry_after {
            Some(ra) => Some(ra.max(since)),
            None => Some(since).filter(|s| !s.is_zero()),
        };
        if let Some(w) = first {
            waits[0] = w;
            logs[0] = crate::features::log_ms(w);
            n = 1;
        }
        for (w, l) in self.grid.iter().zip(&self.grid_logs) {
            if first.is_none_or(|f| *w > f) {
                waits[n] = *w;
                logs[n] = *l;
                n += 1;
            }
        }
        // No attempt may start at or after the deadline.
        let remaining = self.deadline.map(|d| d.saturating_sub(ctx.elapsed));
        if let Some(r) = remaining {
            while n > 0 && waits[n - 1] >= r {
                n -= 1;
            }
            if n == 0 {
                return told((Self::stop(StopReason::Deadline, None), None, None));
            }
        }
        let waits = &waits[..n];
        let mut p = [0.0; MAX_GRID + 1];
        let p = &mut p[..n];
        model.p_success_by_logged_delay(ctx, waits, &logs[..n], p);
        // NaN or an infinity is no probability: a broken model (a division by zero), not
        // a certainty to clamp.
        if p.iter().any(|x| !x.is_finite()) {
            return told(self.by_rules(ctx, Fallback::NaN));
        }
        let mut view = open();
        // (Filled only when asked again: the usual decision copies nothing.)
        let shifted: [Duration; MAX_GRID + 1];
        let from_now: &[Duration] = if since.is_zero() {
            waits
        } else {
            shifted = std::array::from_fn(|i| waits.get(i).map_or(Duration::ZERO, |w| ahead(*w)));
            &shifted[..n]
        };
        for x in p.iter_mut() {
            *x = x.clamp(0.0, 1.0);
        }
        // The value of each wait, and the best.
        let f = ctx
            .failure_rate
            .filter(|f| f.is_finite())
            .map_or(0.0, |f| f.clamp(0.0, MAX_COST_FAILURE_RATE));
        let cost = self.attempt_cost / (1.0 - f);
        let last = ctx.attempt >= self.max_attempts;
        let refused = ctx.error == Some(ErrorKind::Connect);
        let attempt_time = ctx.latency.unwrap_or(Duration::ZERO);
        // V(w_i) = a_i + b_i·V*: what the attempt is worth now, and the share of the value
        // of continuing that a failure leaves (none after the last attempt allowed; with a
        // deadline, the share of the remaining time left after the wait and an attempt as
        // long as the last). V* = max_i V(w_i) has the exact solution
        // V* = max_i a_i / (1 − b_i) (each wait's value if it were always the choice),
        // since every b_i < 1 wherever a_i > 0.
        let mut a = [0.0; MAX_GRID + 1];
        let mut b = [0.0; MAX_GRID + 1];
        let mut v_star = f64::NEG_INFINITY;
        let mut best = 0;
        let mut load = [0.0; MAX_GRID + 1];
        if let Some(v) = &view {
            v.loads(from_now, &mut load[..n]);
        }
        if refused {
            // After a refused connection the attempts to come are not independent draws:
            // the target is down until it is back, so a retry that fails says the outage
            // goes on. Each wait's p is the chance that the outage is over by then (made
            // non-decreasing in the wait), and each wait is valued as the one attempt it
            // is (`refusal_values`): a failure leaves no fresh chance behind it.
            // (`b` stays 0.) A refused connection costs the target no work: `c`, not
            // `c/(1 − f)`.
            refusal_values(
                from_now,
                p,
                (self.attempt_cost, &load[..n]),
                self.time_cost,
                &mut a[..n],
            );
            for (i, v) in a[..n].iter().enumerate() {
                if *v > v_star {
                    v_star = *v;
                    best = i;
                }
            }
        } else {
            // With a Retry-After the attempts to come are paced by it: each waits at least as
            // long (the next failure is likely to ask the same) and takes as long as the last.
            // What a failure leaves is then how many attempts still fit before the deadline,
            // against how many would after retrying at the Retry-After itself — a wait within
            // the slack costs none, one past it costs a whole attempt. (Without one the pace
            // is the decider's own, and the share of the remaining time stands for it.)
            let paced = match (remaining, ctx.retry_after) {
                (Some(r), Some(ra)) if !last => {
                    let step = ra.saturating_add(attempt_time).as_secs_f64();
                    let allowed = f64::from(self.max_attempts.saturating_sub(ctx.attempt));
                    let fit = move |w: Duration| {
                        let after = r.saturating_sub(w).saturating_sub(attempt_time);
                        if step > 0.0 {
                            (after.as_secs_f64() / step).floor().min(allowed)
                        } else {
                            allowed
                        }
                    };
                    Some((fit, fit(ra)))
                }
                _ => None,
            };
            for i in 0..n {
                let left = match (remaining, &paced) {
                    _ if last => 0.0,
                    (_, Some((fit, most))) => {
                        if *most > 0.0 {
                            fit(waits[i]) / most
                        } else {
                            0.0
                        }
                    }
                    (None, None) => 1.0,
                    (Some(r), None) => {
                        let after = r.saturating_sub(waits[i]).saturating_sub(attempt_time);
                        after.as_secs_f64() / r.as_secs_f64()
                    }
                };
                a[i] = p[i] - cost * (1.0 + load[i]) - self.time_cost * from_now[i].as_secs_f64();
                b[i] = (1.0 - p[i]) * left;
                let v = if b[i] < 1.0 {
                    a[i] / (1.0 - b[i])
                } else {
                    f64::NEG_INFINITY
                };
                if v > v_star {
                    v_star = v;
                    best = i;
                }
            }
        }
        // (No wait has a finite value only when every prediction is 0 and nothing runs
        // out: then continuing is worth nothing.)
        let cont = if v_star.is_finite() { v_star } else { 0.0 };
        let value = |i: usize| a[i] + b[i] * cont;
        if let Some(out) = weighed {
            out.extend((0..n).map(|i| Alternative {
                wait: from_now[i],
                p_success: p[i],
                value: value(i),
                load: load[i],
            }));
        }
        if v_star <= 0.0 {
            if self.explore > 0.0 && self.random.next_f64() < self.explore {
                self.explored.fetch_add(1, Ordering::Relaxed);
                let i = ((self.random.next_f64() * n as f64) as usize).min(n - 1);
                if let Some(v) = &mut view {
                    v.book(from_now[i]);
                }
                return (
                    Explained {
                        decision: Decision::Retry(from_now[i]),
                        p_success: Some(p[i]),
                    },
                    None,
                    Some(self.explore / n as f64),
                );
            }
            return (
                Self::stop(StopReason::LowSuccessProbability, Some(p[best])),
                None,
                None,
            );
        }
        // A near-optimal wait at random: callers that saw the same failure spread out -
        // among the waits worth an attempt (near the best of a best barely worth one, a
        // wait within the tolerance may be worth less than stopping).
        let floor = (v_star - self.tolerance).max(0.0);
        let near = |i: &usize| {
            let v = value(*i);
            v >= floor && (v > 0.0 || *i == best)
        };
        // Asked again after a wait, the spread is done (the wait was drawn, or spread by
        // the circuit that set it): the shortest near-optimal wait, so that a retry asked
        // about again is not drawn again - and told to wait again - each time.
        let chosen = if since.is_zero() {
            let k = (0..n).filter(near).count();
            let pick = ((self.random.next_f64() * k as f64) as usize).min(k.saturating_sub(1));
            (0..n).filter(near).nth(pick).unwrap_or(best)
        } else {
            (0..n).find(near).unwrap_or(best)
        };
        if let Some(v) = &mut view {
            v.book(from_now[chosen]);
        }
        (
            Explained {
                decision: Decision::Retry(from_now[chosen]),
                p_success: Some(p[chosen]),
            },
            None,
            None,
        )
    }
}

/// The value of retrying after each wait when attempts succeed together or not at all:
/// after a refused connection the target is back from some moment on, and an attempt
/// succeeds if and only if it is sent after it. `p[i]` is read as the chance that the
/// target is back by `waits[i]` (ascending waits), made non-decreasing (`F_i`: what was
/// back by one wait is back by the next); an attempt costs `c·(1 + load[i])` for
/// `(c, load)` = `cost`, and waiting `time_cost` (`t`) per second:
///
/// ```text
/// V_i = F_i − c·(1 + load_i) − t·w_i
/// ```
///
/// A failure leaves nothing: it says the target is not back yet, and a later attempt
/// would only buy the chance that it came back in between, at its own price — a plan of
/// two attempts is worth the later one's value less the earlier one's price, never more
/// than the later one alone. (The value of independent draws, which counts a later
/// retry's whole p again after every failure, would send retry after retry into an
/// outage of uncertain end.)
fn refusal_values(
    waits: &[Duration],
    p: &[f64],
    (c, load): (f64, &[f64]),
    time_cost: f64,
    out: &mut [f64],
) {
    let mut back = 0.0f64;
    for (((v, w), p), load) in out.iter_mut().zip(waits).zip(p).zip(load) {
        back = back.max(*p);
        *v = back - c * (1.0 + load) - time_cost * w.as_secs_f64();
    }
}

impl RetryDecider for ModelDecider {
    fn decide(&self, ctx: &AttemptContext) -> Decision {
        self.explain(ctx).decision
    }

    /// The decision and, when it explored, its propensity (what a recorded attempt carries
    /// as `explore_propensity`).
    fn decide_explored(&self, ctx: &AttemptContext) -> (Decision, Option<f64>) {
        let (explained, _, propensity) = self.decide_into(ctx, Duration::ZERO, None);
        (explained.decision, propensity)
    }

    fn explain(&self, ctx: &AttemptContext) -> Explained {
        self.decide_into(ctx, Duration::ZERO, None).0
    }

    /// Moves the retry's booking in the calendar (every retry this decider decides is
    /// booked): to where it will start, or away when it will not be made.
    fn replanned(
        &self,
        ctx: &AttemptContext,
        decided_at: tokio::time::Instant,
        planned: Duration,
        sent: Option<Duration>,
    ) {
        if let Some(c) = &self.calendar {
            c.rebook(&ctx.target, decided_at, planned, sent);
        }
    }

    /// What is left of the deadline, and — with [`ModelDeciderBuilder::attempt_timeout`] —
    /// the attempt's own timeout: the base, or, when the target is slow (its p95 latency
    /// beyond half the base) but alive (the model, trained on enough rows like this context,
    /// predicts this attempt succeeds more often than not), twice its p95 latency up to the
    /// maximum: a timeout shorter than the
    /// target's answers turns a slow success into a failure and a retry. The model is asked
    /// only about slow targets, so a fast call pays nothing for it.
    fn attempt_timeout(&self, ctx: &AttemptContext) -> Option<Duration> {
        let left = self
            .deadline
            .map(|d| d.saturating_sub(ctx.elapsed.saturating_add(ctx.delay)));
        let own = self
            .timeout
            .map(|(base, max)| match (ctx.latency_p95, &self.model) {
                // A NaN answer is no evidence the target is alive, nor one about what the
                // model has barely seen: the base.
                (Some(p95), Some(model))
                    if p95 > base / 2 && {
                        let pinned = model.pinned(ctx);
                        let model: &dyn SuccessModel = pinned.as_deref().unwrap_or(model.as_ref());
                        let p = model.p_success(ctx);
                        supports(model, ctx, self.min_support) && p.is_finite() && p >= 0.5
                    } =>
                {
                    p95.saturating_mul(2).clamp(base, max)
                }
                _ => base,
            });
        [left, own].into_iter().flatten().min()
    }
}

/// Configures a [`ModelDecider`]; every value is checked by [`build`](Self::build).
#[derive(Clone)]
pub struct ModelDeciderBuilder {
    model: Option<Arc<dyn SuccessModel>>,
    grid_len: usize,
    cap: Duration,
    attempt_cost: f64,
    time_cost: f64,
    tolerance: f64,
    max_attempts: u32,
    deadline: Option<Duration>,
    seed: Option<u64>,
    min_support: u64,
    explore: f64,
    timeout: Option<(Duration, Duration)>,
    calendar: Option<Option<Arc<RetryCalendar>>>,
}

impl std::fmt::Debug for ModelDeciderBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDeciderBuilder")
            .field("model", &self.model.is_some())
            .field("grid_len", &self.grid_len)
            .field("cap", &self.cap)
            .field("attempt_cost", &self.attempt_cost)
            .field("time_cost", &self.time_cost)
            .field("tolerance", &self.tolerance)
            .field("max_attempts", &self.max_attempts)
            .field("deadline", &self.deadline)
            .field("seed", &self.seed)
            .field("min_support", &self.min_support)
            .field("explore", &self.explore)
            .field("timeout", &self.timeout)
            .field("calendar", &self.calendar.as_ref().map(Option::is_some))
            .finish()
    }
}

impl Default for ModelDeciderBuilder {
    fn default() -> Self {
        Self {
            model: None,
            grid_len: 32,
            cap: Duration::from_secs(30),
            attempt_cost: 0.1,
            time_cost: 0.01,
            tolerance: 0.01,
            max_attempts: 6,
            deadline: None,
            seed: None,
            min_support: DEFAULT_MIN_SUPPORT,
            explore: 0.0,
            timeout: None,
            calendar: None,
        }
    }
}

impl ModelDeciderBuilder {
    /// The model to consult (without one, the rules decide).
    pub fn model(mut self, model: Arc<dyn SuccessModel>) -> Self {
        self.model = Some(model);
        self
    }

    /// The model to consult, if there is one.
    pub fn maybe_model(mut self, model: Option<Arc<dyn SuccessModel>>) -> Self {
        self.model = model;
        self
    }

    /// The number of waits weighed: zero, then log-spaced from 1 ms to the cap (2 to
    /// [`MAX_GRID`]; with a cap of 1 ms, the two waits there are).
    pub fn grid(mut self, len: usize) -> Self {
        self.grid_len = len;
        self
    }

    /// The longest wait (and the longest Retry-After honoured).
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// The cost of one attempt, in units of a successful call (in `(0, 1)`).
    pub fn attempt_cost(mut self, c: f64) -> Self {
        self.attempt_cost = c;
        self
    }

    /// The cost of waiting one second, in units of a successful call.
    pub fn time_cost(mut self, per_second: f64) -> Self {
        self.time_cost = per_second;
        self
    }

    /// How far below the best a wait may be valued and still be drawn.
    pub fn tolerance(mut self, t: f64) -> Self {
        self.tolerance = t;
        self
    }

    /// The most attempts of one call, the first included.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The call's overall deadline from its first attempt.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// The fewest training rows like a context ([`SuccessModel::trained_on`]) for the
    /// model to be trusted with it (default 100; 0 always trusts it).
    pub fn min_support(mut self, rows: u64) -> Self {
        self.min_support = rows;
        self
    }

    /// The share of decisions to stop as "not worth an attempt" that retry anyway, after a
    /// wait drawn uniformly from those weighed (default 0; in `[0, 1]`). A model only
    /// learns what happens after the decisions it lets happen: one that has learned to
    /// stop on some failure never sees that stopping was wrong, unless some of those
    /// stops explore. Explored decisions say so ([`Weighed::propensity`]) and are counted
    /// ([`ModelDecider::explored`]); the propensity of an explored wait is this share
    /// over the number of waits weighed.
    pub fn explore(mut self, share: f64) -> Self {
        self.explore = share;
        self
    }

    /// Times each attempt out after `base`, stretched up to `max` while the target is slow
    /// but alive ([`ModelDecider`]'s `attempt_timeout`); default none (only the deadline).
    pub fn attempt_timeout(mut self, base: Duration, max: Duration) -> Self {
        self.timeout = Some((base, max));
        self
    }

    /// Books its retries in `calendar` and weighs each wait by the load already booked
    /// there ([`RetryCalendar`]): deciders sharing one spread their retries together (a
    /// service shares one across its requests). By default a decider has a calendar of
    /// its own, shared by its clones.
    pub fn calendar(mut self, calendar: Arc<RetryCalendar>) -> Self {
        self.calendar = Some(Some(calendar));
        self
    }

    /// Weighs every wait as if no other retry were booked (no [`RetryCalendar`]).
    pub fn without_calendar(mut self) -> Self {
        self.calendar = Some(None);
        self
    }

    /// Draws the near-optimal wait from a generator seeded with `seed` (deterministic).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks every value and builds the decider.
    ///
    /// # Errors
    /// A grid of fewer than 2 or more than [`MAX_GRID`] waits, a cap under 1 ms, costs
    /// outside their ranges, a negative tolerance, no attempts, a zero deadline, an attempt
    /// timeout whose base is zero or above its maximum, or whose maximum is beyond
    /// [`crate::MAX_CONFIG_DURATION`].
    pub fn build(self) -> Result<ModelDecider, ConfigError> {
        if !(2..=MAX_GRID).contains(&self.grid_len) {
            return Err(CHECK.err(
                "grid",
                format!("must hold 2 to {MAX_GRID} waits, got {}", self.grid_len),
            ));
        }
        if self.cap < Duration::from_millis(1) {
            return Err(CHECK.err("cap", format!("must be at least 1 ms, got {:?}", self.cap)));
        }
        CHECK.bounded("cap", self.cap)?;
        CHECK.in_range("attempt_cost", self.attempt_cost, 1e-6, 0.999)?;
        CHECK.in_range("time_cost", self.time_cost, 0.0, 1e3)?;
        CHECK.in_range("tolerance", self.tolerance, 0.0, 1.0)?;
        CHECK.in_range("explore", self.explore, 0.0, 1.0)?;
        CHECK.at_least_one("max_attempts", u64::from(self.max_attempts))?;
        if let Some(d) = self.deadline {
            CHECK.positive("deadline", d)?;
        }
        if let Some((base, max)) = self.timeout {
            CHECK.positive("attempt_timeout", base)?;
            CHECK.bounded("attempt_timeout", max)?;
            if max < base {
                return Err(CHECK.err(
                    "attempt_timeout",
                    format!("the maximum ({max:?}) is below the base ({base:?})"),
                ));
            }
        }
        let base = Duration::from_millis(100).min(self.cap);
        let mut fallback = RetryRules::builder()
            .max_attempts(self.max_attempts)
            .backoff(Backoff::decorrelated_jitter(
                base,
                self.cap.min(Duration::from_secs(10)).max(base),
            )?)
            .jitter(Jitter::None)
            // The decider's cap on Retry-After (beyond it, the call stops).
            .retry_after(true, Duration::ZERO, self.cap);
        if let Some(d) = self.deadline {
            fallback = fallback.deadline(d);
        }
        if let Some(seed) = self.seed {
            fallback = fallback.seed(seed ^ 0xFA11);
        }
        let fallback = fallback.build()?;
        // Zero, then log-spaced from 1 ms to the cap.
        let steps = self.grid_len - 1;
        let (lo, hi) = (1e-3f64.ln(), self.cap.as_secs_f64().ln());
        let mut grid: Vec<Duration> = std::iter::once(Duration::ZERO)
            .chain((0..steps).map(|i| {
                let x = if steps == 1 {
                    hi
                } else {
                    lo + (hi - lo) * i as f64 / (steps - 1) as f64
                };
                // (`exp` may round a hair past the cap: the cap.)
                Duration::try_from_secs_f64(x.exp()).map_or(self.cap, |w| w.min(self.cap))
            }))
            .collect();
        // A cap of a millisecond (the shortest) leaves points that coincide: each wait is
        // weighed (and explored, with its propensity) once.
        grid.dedup();
        let grid_logs = grid.iter().map(|w| crate::features::log_ms(*w)).collect();
        Ok(ModelDecider {
            model: self.model,
            fallback,
            min_support: self.min_support,
            grid,
            grid_logs,
            cap: self.cap,
            attempt_cost: self.attempt_cost,
            time_cost: self.time_cost,
            tolerance: self.tolerance,
            max_attempts: self.max_attempts,
            deadline: self.deadline,
            random: self.seed.map_or(RandomSource::Thread, RandomSource::seeded),
            explore: self.explore,
            fallbacks: Arc::default(),
            explored: Arc::default(),
            timeout: self.timeout,
            calendar: self
                .calendar
                .unwrap_or_else(|| Some(Arc::new(RetryCalendar::new()))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_share_of_stops_explores_and_says_so() {
        // A model that sees no point in retrying a connect error.
        let hopeless = |_: &AttemptContext| 0.01;
        let c = after(ErrorKind::Connect, 2);
        let never = ModelDecider::builder()
            .model(Arc::new(hopeless))
            .seed(3)
            .build()
            .unwrap();
        assert!((0..200).all(|_| !never.weigh(&c).explored()));
        let d = ModelDecider::builder()
            .model(Arc::new(hopeless))
            .explore(0.2)
            .seed(3)
            .build()
            .unwrap();
        let mut waits = std::collections::BTreeSet::new();
        let mut explored = 0;
        for _ in 0..2000 {
            let w = d.weigh(&c);
            match w.explained.decision {
                Decision::Retry(wait) => {
                    assert!(w.explored(), "only exploration retries here");
                    // Its chance: the share explored, one wait drawn of those weighed.
                    assert_eq!(w.propensity, Some(0.2 / w.alternatives.len() as f64));
                    assert!(d.grid().contains(&wait));
                    waits.insert(wait);
                    explored += 1;
                }
                Decision::Stop(r) => {
                    assert_eq!(r, StopReason::LowSuccessProbability);
                    assert!(!w.explored());
                }
            }
        }
        assert!((300..500).contains(&explored), "{explored} of 2000 at 0.2");
        assert_eq!(d.explored(), explored);
        assert!(
            waits.len() > 20,
            "waits drawn across the grid: {}",
            waits.len()
        );
        // `decide_explored` (what `Policy` records) says the same.
        let (mut retried, mut stopped) = (0, 0);
        for _ in 0..200 {
            match d.decide_explored(&c) {
                (Decision::Retry(_), Some(p)) => {
                    assert!(p > 0.0 && p < 0.2, "{p}");
                    retried += 1;
                }
                (Decision::Stop(_), None) => stopped += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(retried > 0 && stopped > 0, "{retried} / {stopped}");
        assert_eq!(never.decide_explored(&c).1, None);
        // Exploration never overrides the hard limits.
        let mut last = after(ErrorKind::Connect, 7);
        last.elapsed = Duration::from_millis(20);
        assert!((0..200).all(|_| d.decide(&last) == Decision::Stop(StopReason::MaxAttempts)));
        assert_eq!(
            ModelDecider::builder()
                .explore(1.5)
                .build()
                .unwrap_err()
                .field,
            "explore"
        );
    }

    fn after(kind: ErrorKind, attempt: u32) -> AttemptContext {
        let mut c = AttemptContext::first("t");
        c.attempt = attempt;
        c.error = Some(kind);
        c.latency = Some(Duration::from_millis(20));
        c.elapsed = Duration::from_millis(20);
        c
    }

    /// A crowd of callers that saw the same failure at the same moment, at a target that
    /// fails every call and is predicted back in a second: the retries each books, by the
    /// slot they land in.
    fn crowd(d: &ModelDecider, callers: usize) -> std::collections::BTreeMap<u64, usize> {
        let mut ctx = after(ErrorKind::Connect, 2);
        ctx.failure_rate = Some(1.0);
        let mut landed = std::collections::BTreeMap::new();
        for _ in 0..callers {
            if let Decision::Retry(w) = d.decide(&ctx) {
                let slot = (w.as_nanos() / super::super::calendar::SLOT.as_nanos()) as u64;
                *landed.entry(slot).or_insert(0) += 1;
            }
        }
        landed
    }

    /// A target predicted back a second after the failure: p = 0.95 from a wait of 1 s.
    fn back_in_a_second() -> Arc<dyn SuccessModel> {
        Arc::new(|c: &AttemptContext| {
            if c.delay >= Duration::from_secs(1) {
                0.95
            } else {
                0.0
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_crowd_spreads_its_retries_by_the_load_already_booked() {
        let back_in_a_second = back_in_a_second();
        let alone = decider(back_in_a_second.clone())
            .without_calendar()
            .build()
            .unwrap();
        let apart = decider(back_in_a_second).build().unwrap();
        let callers = 400;
        // Alone, every caller finds the same waits best: a few slots take the crowd.
        let a = crowd(&alone, callers);
        assert_eq!(a.values().sum::<usize>(), callers);
        assert!(a.values().max().unwrap() * 3 >= callers, "{a:?}");
        // Sharing a calendar, no slot is booked beyond the load at which a retry stops
        // being worth its cost: p − c·(1 + ρ)/(1 − f) > 0 with f counted up to 0.8,
        // ρ < 0.95/0.5 − 1 = 0.9 of the target's attempts per slot (400 failures in this
        // second at a failure rate of 1: 100 a slot; fewer while the crowd was arriving).
        let b = crowd(&apart, callers);
        let per_slot = callers as f64 / 4.0;
        assert!(
            b.values().all(|&n| n as f64 <= 0.9 * per_slot + 1.0),
            "{b:?}"
        );
        assert!(b.len() > a.len(), "{a:?} vs {b:?}");
        // Its retries never wait less than the prediction says is worth it.
        assert!(b.keys().all(|&slot| slot >= 4), "{b:?}");
    }

    /// A caller told to wait (by a circuit open a while more) and asking again is the
    /// retry it was booked as, not more load: its booking, where it stands now, is taken
    /// back and booked again where the retry goes now.
    #[tokio::test(start_paused = true)]
    async fn asked_again_a_retry_replaces_its_own_booking() {
        let back_in_a_second = back_in_a_second();
        let calendar = Arc::new(RetryCalendar::new());
        let d = decider(back_in_a_second)
            .calendar(Arc::clone(&calendar))
            .tolerance(0.0)
            .build()
            .unwrap();
        let mut c = after(ErrorKind::Http503, 2);
        c.failure_rate = Some(1.0);
        let Decision::Retry(w) = d.decide(&c) else {
            panic!("should retry");
        };
        assert!(w >= Duration::from_secs(1), "{w:?}");
        let start = tokio::time::Instant::now();
        assert_eq!(calendar.booked(&c.target, start + w), 1);
        // Told to wait twice as long, it asks again then: the retry goes now, once.
        tokio::time::advance(2 * w).await;
        let now = tokio::time::Instant::now();
        calendar.rebook(&c.target, start, w, Some(2 * w));
        assert_eq!(calendar.booked(&c.target, now), 1);
        let again = d.weigh_after(&c, 2 * w);
        assert_eq!(again.explained.decision, Decision::Retry(Duration::ZERO));
        assert_eq!(calendar.booked(&c.target, now), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_failure_rate_the_calendar_weighs_nothing() {
        // The attempt rate is unknown, so no load is estimated: the same draws as alone.
        let m = flat(0.9);
        let alone = decider(m.clone()).without_calendar().build().unwrap();
        let shared = decider(m).build().unwrap();
        let c = after(ErrorKind::Http503, 2);
        for _ in 0..50 {
            assert_eq!(alone.decide(&c), shared.decide(&c));
        }
        let w = shared.weigh(&c);
        assert!(w.alternatives.iter().all(|a| a.load == 0.0));
    }

    fn flat(p: f64) -> Arc<dyn SuccessModel> {
        Arc::new(move |_: &AttemptContext| p)
    }

    fn decider(model: Arc<dyn SuccessModel>) -> ModelDeciderBuilder {
        ModelDecider::builder().model(model).seed(1)
    }

    #[test]
    fn the_attempt_timeout_stretches_for_a_slow_live_target_only() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let d = |p: f64| {
            decider(flat(p))
                .attempt_timeout(s(1), s(5))
                .deadline(s(10))
                .build()
                .unwrap()
        };
        let mut c = after(ErrorKind::Timeout, 2);
        // Health unknown or a fast target: the base.
        assert_eq!(d(0.9).attempt_timeout(&c), Some(s(1)));
        c.latency_p95 = Some(ms(300));
        assert_eq!(d(0.9).attempt_timeout(&c), Some(s(1)));
        // Slow and alive: twice its p95, up to the maximum.
        c.latency_p95 = Some(ms(1_500));
        assert_eq!(d(0.9).attempt_timeout(&c), Some(s(3)));
        c.latency_p95 = Some(s(4));
        assert_eq!(d(0.9).attempt_timeout(&c), Some(s(5)));
        // Slow and (the model says) dead: no reason to wait longer.
        assert_eq!(d(0.1).attempt_timeout(&c), Some(s(1)));
        // A model answering NaN or an infinity says nothing: the base.
        assert_eq!(d(f64::NAN).attempt_timeout(&c), Some(s(1)));
        assert_eq!(d(f64::INFINITY).attempt_timeout(&c), Some(s(1)));
        // Nor does one about what it has barely seen (it stretched the timeout on a
        // prediction every other use of the model would have refused).
        struct Unseen;
        impl SuccessModel for Unseen {
            fn p_success(&self, _: &AttemptContext) -> f64 {
                0.9
            }
            fn trained_on(&self, _: &AttemptContext) -> Option<u64> {
                Some(0)
            }
        }
        let unseen = decider(Arc::new(Unseen))
            .attempt_timeout(s(1), s(5))
            .deadline(s(10))
            .build()
            .unwrap();
        assert_eq!(unseen.attempt_timeout(&c), Some(s(1)));
        // Never beyond the deadline.
        c.elapsed = ms(8_000);
        assert_eq!(d(0.9).attempt_timeout(&c), Some(s(2)));
        // Without a timeout of its own, only the deadline.
        let plain = decider(flat(0.9)).deadline(s(10)).build().unwrap();
        assert_eq!(plain.attempt_timeout(&c), Some(s(2)));
        let e = decider(flat(0.9))
            .attempt_timeout(s(2), s(1))
            .build()
            .unwrap_err();
        assert_eq!(e.field, "attempt_timeout");
    }

    #[test]
    fn the_grid_runs_from_zero_to_the_cap() {
        let d = ModelDecider::builder()
            .cap(Duration::from_secs(10))
            .build()
            .unwrap();
        let g = d.grid();
        assert_eq!(g.len(), 32);
        assert_eq!(g[0], Duration::ZERO);
        assert_eq!(g[1], Duration::from_millis(1));
        assert_eq!(*g.last().unwrap(), Duration::from_secs(10));
        assert!(g.windows(2).all(|w| w[0] < w[1]));
        // The shortest cap, a millisecond: each wait once (63 copies of 1 ms skewed the
        // random pick and the explored waits' propensity).
        let cap = Duration::from_millis(1);
        let d = ModelDecider::builder().cap(cap).grid(64).build().unwrap();
        assert_eq!(d.grid(), [Duration::ZERO, cap]);
    }

    #[test]
    fn waits_where_waiting_pays_and_not_longer() {
        // p rises with the wait until 1 s, then stays: waiting longer only costs time.
        let model = Arc::new(|c: &AttemptContext| (c.delay.as_secs_f64()).min(1.0) * 0.9);
        let d = decider(model).tolerance(0.0).build().unwrap();
        let Decision::Retry(w) = d.decide(&after(ErrorKind::Http503, 2)) else {
            panic!("should retry");
        };
        assert!(
            w >= Duration::from_millis(700) && w <= Duration::from_millis(1500),
            "{w:?}"
        );
    }

    #[test]
    fn every_wait_of_the_grid_is_weighed_from_zero_and_the_retry_after_beside_those_past_it() {
        let d = decider(flat(0.9)).tolerance(0.0).build().unwrap();
        let c = after(ErrorKind::Http503, 2);
        let w = d.weigh(&c);
        let waits: Vec<Duration> = w.alternatives.iter().map(|a| a.wait).collect();
        assert_eq!(waits, d.grid(), "the whole grid, zero included");
        // A flat model: every extra millisecond only costs, so no wait at all.
        assert_eq!(d.decide(&c), Decision::Retry(Duration::ZERO));
        let mut c = after(ErrorKind::Http429, 2);
        c.retry_after = Some(Duration::from_millis(1234));
        let waits: Vec<Duration> = d.weigh(&c).alternatives.iter().map(|a| a.wait).collect();
        assert_eq!(waits[0], Duration::from_millis(1234));
        assert!(waits[1..].iter().all(|w| *w > Duration::from_millis(1234)));
        assert_eq!(
            waits.len(),
            1 + d
                .grid()
                .iter()
                .filter(|g| **g > Duration::from_millis(1234))
                .count()
        );
    }

    #[test]
    fn never_before_the_retry_after_and_never_beyond_the_cap() {
        let d = decider(flat(0.9))
            .cap(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut c = after(ErrorKind::Http429, 2);
        c.retry_after = Some(Duration::from_millis(1234));
        for _ in 0..50 {
            let Decision::Retry(w) = d.decide(&c) else {
                panic!()
            };
            assert!(w >= Duration::from_millis(1234), "{w:?}");
            assert!(w <= Duration::from_secs(5), "{w:?}");
        }
        // A flat model: every extra millisecond only costs, so exactly the Retry-After.
        let exact = decider(flat(0.9)).tolerance(0.0).build().unwrap();
        assert_eq!(
            exact.decide(&c),
            Decision::Retry(Duration::from_millis(1234))
        );
        c.retry_after = Some(Duration::from_secs(6));
        assert_eq!(d.decide(&c), Decision::Stop(StopReason::RetryAfterTooLong));
    }

    #[test]
    fn the_deadline_and_the_attempt_limit_stop_it() {
        let d = decider(flat(0.9))
            .deadline(Duration::from_secs(2))
            .max_attempts(3)
            .build()
            .unwrap();
        let mut c = after(ErrorKind::Http503, 2);
        c.elapsed = Duration::from_secs(2);
        assert_eq!(d.decide(&c), Decision::Stop(StopReason::Deadline));
        c.elapsed = Duration::from_millis(1500);
        let Decision::Retry(w) = d.decide(&c) else {
            panic!()
        };
        assert!(w < Duration::from_millis(500));
        let c = after(ErrorKind::Http503, 4);
        assert_eq!(d.decide(&c), Decision::Stop(StopReason::MaxAttempts));
    }

    #[test]
    fn after_a_retry_after_a_wait_that_loses_an_attempt_to_the_deadline_is_worth_less() {
        // Retry-After 2 s, attempts of 30 ms, 5.24 s left: retrying within 2.0-3.18 s
        // leaves one more attempt before the deadline, waiting longer leaves none.
        let d = decider(flat(0.5))
            .deadline(Duration::from_secs(8))
            .without_calendar()
            .build()
            .unwrap();
        let mut c = after(ErrorKind::Http503, 3);
        c.retry_after = Some(Duration::from_secs(2));
        c.latency = Some(Duration::from_millis(30));
        c.elapsed = Duration::from_millis(2_760);
        let w = d.weigh(&c);
        let value = |ms: u64| {
            w.alternatives
                .iter()
                .rfind(|a| a.wait <= Duration::from_millis(ms))
                .map(|a| (a.wait, a.value))
                .unwrap()
        };
        let (w0, at_ra) = value(2_000);
        assert_eq!(w0, Duration::from_secs(2));
        let (w1, within) = value(3_180);
        let (w2, past) = value(5_000);
        assert!(
            w1 > w0 && w2 > Duration::from_millis(3_180),
            "{w1:?} {w2:?}"
        );
        // Within the slack only the time costs (0.01 a second).
        let slack = (w1 - w0).as_secs_f64() * 0.01;
        assert!((at_ra - within - slack).abs() < 1e-9, "{at_ra} {within}");
        // Past it, the attempt it loses: half the time it would have been needed.
        let v_star = at_ra;
        let lost = 0.5 * v_star;
        let time = (w2 - w0).as_secs_f64() * 0.01;
        assert!((at_ra - past - lost - time).abs() < 1e-9, "{at_ra} {past}");
        // When no attempt fits after this one, a failure leaves nothing at any wait.
        c.elapsed = Duration::from_millis(4_500);
        let w = d.weigh(&c);
        let first = &w.alternatives[0];
        assert_eq!(first.wait, Duration::from_secs(2));
        assert!(
            (first.value - (0.5 - 0.1 - 0.02)).abs() < 1e-9,
            "{}",
            first.value
        );
    }

    #[test]
    fn a_struggling_target_makes_attempts_dearer() {
        let d = decider(flat(0.3)).build().unwrap();
        let mut c = after(ErrorKind::Http503, 2);
        assert!(matches!(d.decide(&c), Decision::Retry(_)));
        c.failure_rate = Some(0.2);
        assert!(matches!(d.decide(&c), Decision::Retry(_)));
        // 0.1 / (1 - 0.8) = 0.5 > 0.3: not worth it.
        c.failure_rate = Some(0.8);
        assert_eq!(
            d.decide(&c),
            Decision::Stop(StopReason::LowSuccessProbability)
        );
    }

    #[test]
    fn after_a_refusal_each_wait_is_worth_the_one_attempt_it_is() {
        let s = Duration::from_secs;
        let waits = [s(0), s(1), s(2), s(3)];
        // The target is back by each wait with these chances (0.3 at 2 s counts as 0.4:
        // what was back by 1 s is still back).
        let p = [0.1, 0.4, 0.3, 0.9];
        let mut v = [0.0; 4];
        refusal_values(&waits, &p, (0.1, &[0.0; 4]), 0.01, &mut v);
        // By hand: F = [0.1, 0.4, 0.4, 0.9]; each is worth F_i - 0.1 - 0.01 w_i.
        let want = [0.0, 0.29, 0.28, 0.77];
        for (got, want) in v.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{v:?}");
        }
        // Waiting 3 s and trying once is best: early tries only buy the chance the target
        // is already back, and each costs an attempt.
        let best = (0..4).max_by(|a, b| v[*a].total_cmp(&v[*b]));
        assert_eq!(best, Some(3));
        // The load booked at a wait raises its price.
        refusal_values(&waits, &p, (0.1, &[0.0, 0.0, 0.0, 1.0]), 0.01, &mut v);
        assert!((v[3] - 0.67).abs() < 1e-12, "{v:?}");
        // In the decider a refusal's failure leaves nothing whether or not the attempt is
        // the last allowed: the values are the same.
        let model = Arc::new(|c: &AttemptContext| (c.delay.as_secs_f64() / 4.0).min(1.0));
        let d = decider(model).without_calendar().build().unwrap();
        let values = |attempt: u32| -> Vec<f64> {
            let mut c = after(ErrorKind::Connect, attempt);
            c.elapsed = Duration::from_millis(1);
            d.weigh(&c).alternatives.iter().map(|a| a.value).collect()
        };
        assert_eq!(values(2), values(6));
    }

    #[test]
    fn a_refusal_is_not_retried_for_the_same_chance_again_and_again() {
        // p = 0.3 whatever the wait. After a 503 each failure leaves another independent
        // 0.3; after a refusal the target is back or not, and a retry that failed says it
        // is not, so the first retry's value is its own: 0.3 - 0.1 - whatever the failure
        // rate: a refused connection costs the target no work (c, not c/(1 - f)).
        let fresh = || decider(flat(0.3)).time_cost(0.0).build().unwrap();
        for f in [None, Some(1.0)] {
            // (A decider of its own each time: the first books its retry in its calendar.)
            let d = fresh();
            let mut c = after(ErrorKind::Connect, 2);
            c.elapsed = Duration::from_millis(1);
            c.failure_rate = f;
            let refused = d.weigh(&c);
            assert!(
                refused
                    .alternatives
                    .iter()
                    .all(|a| (a.value - 0.2).abs() < 1e-12),
                "{f:?}: {:?}",
                refused.alternatives
            );
            assert!(matches!(refused.explained.decision, Decision::Retry(_)));
        }
        let d = fresh();
        let mut c = after(ErrorKind::Http503, 2);
        let independent = d.weigh(&c);
        assert!(independent.alternatives.iter().all(|a| a.value > 0.2 + 0.1));
        // Deep into failures (f counted up to 0.8) a 503 costs c/(1 - f) = 0.5, more than
        // p = 0.3 is worth.
        c.failure_rate = Some(1.0);
        assert_eq!(
            d.weigh(&c).explained.decision,
            Decision::Stop(StopReason::LowSuccessProbability)
        );
    }

    proptest::proptest! {
        #[test]
        fn a_plan_after_a_refusal_is_worth_no_more_than_the_chance_the_target_is_back(
            p in proptest::collection::vec(0.0f64..=1.0, 1..=MAX_GRID),
            cost in 0.0f64..0.5, time_cost in 0.0f64..0.05,
        ) {
            let n = p.len();
            let waits: Vec<Duration> = (0..n).map(|i| Duration::from_millis(250 * i as u64)).collect();
            let loads = vec![0.0; n];
            let mut v = vec![0.0; n];
            refusal_values(&waits, &p, (cost, &loads), time_cost, &mut v);
            let mut back = 0.0f64;
            let top = p.iter().copied().fold(0.0, f64::max);
            for i in 0..n {
                back = back.max(p[i]);
                let own = back - cost - time_cost * waits[i].as_secs_f64();
                // Each wait is worth its own attempt, never less; and no plan succeeds more
                // often than the target is back by the last wait.
                proptest::prop_assert!(v[i] >= own - 1e-12);
                proptest::prop_assert!(v[i] <= top - cost - time_cost * waits[i].as_secs_f64() + 1e-12);
                proptest::prop_assert!((v[i] - own).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn near_optimal_waits_are_drawn_at_random() {
        // Nearly flat in the wait: many waits are within the tolerance.
        let model = Arc::new(|c: &AttemptContext| 0.8 + 0.001 * c.delay.as_secs_f64());
        let d = decider(model).time_cost(0.0).build().unwrap();
        let c = after(ErrorKind::Http503, 2);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            if let Decision::Retry(w) = d.decide(&c) {
                seen.insert(w);
            }
        }
        assert!(seen.len() >= 10, "{} distinct waits", seen.len());
    }

    /// Near a best wait barely worth an attempt, the tolerance reaches waits worth less
    /// than stopping: none is chosen (two such waits were drawn about one time in eleven -
    /// here the last attempt allowed, so a failure leaves nothing, and p = 0.105 for every
    /// wait, so only the wait's own cost tells them apart).
    #[test]
    fn no_wait_worth_less_than_stopping_is_chosen() {
        let d = decider(flat(0.105))
            .without_calendar()
            .max_attempts(2)
            .build()
            .unwrap();
        let c = after(ErrorKind::Http503, 2);
        let mut retried = 0;
        for _ in 0..500 {
            let w = d.weigh(&c);
            let Decision::Retry(wait) = w.explained.decision else {
                continue;
            };
            retried += 1;
            let chosen = w.alternatives.iter().find(|a| a.wait == wait).unwrap();
            assert!(chosen.value >= 0.0, "{wait:?}: {}", chosen.value);
        }
        assert!(retried > 0, "a best wait worth an attempt is taken");
        assert!(
            d.weigh(&c).alternatives.iter().any(|a| a.value < 0.0),
            "some waits weighed are worth less than stopping"
        );
    }

    #[test]
    fn falls_back_to_the_rules_without_a_model_or_on_nan() {
        // The rules: decorrelated jitter from 100 ms — the first wait within 100-300 ms.
        let by_rules = |d: &ModelDecider, c: &AttemptContext| match d.explain(c).decision {
            Decision::Retry(w) => {
                (Duration::from_millis(100)..=Duration::from_millis(300)).contains(&w)
                    && d.weigh(c).fell_back()
            }
            Decision::Stop(_) => false,
        };
        let none = ModelDecider::builder().build().unwrap();
        let c = after(ErrorKind::Http503, 4);
        assert!(by_rules(&none, &c));
        assert_eq!(none.fallbacks(), 2);
        let nan = decider(flat(f64::NAN)).build().unwrap();
        assert!(by_rules(&nan, &c));
        assert_eq!(nan.fallbacks(), 2);
        // An infinity is no probability either (it used to be clamped to a certain
        // success): the rules decide.
        for inf in [f64::INFINITY, f64::NEG_INFINITY] {
            let broken = decider(flat(inf)).build().unwrap();
            assert!(by_rules(&broken, &c), "{inf}");
            assert_eq!(broken.weigh(&c).fallback, Some("nan"));
        }
        assert!(!decider(flat(0.5)).build().unwrap().weigh(&c).fell_back());
        // Decorrelated: each wait drawn between 100 ms and three times the last one.
        let mut waited = c.clone();
        waited.delay = Duration::from_secs(1);
        let waits: Vec<Duration> = (0..200)
            .filter_map(|_| match none.decide(&waited) {
                Decision::Retry(w) => Some(w),
                Decision::Stop(_) => None,
            })
            .collect();
        assert_eq!(waits.len(), 200);
        assert!(
            waits
                .iter()
                .all(|w| (Duration::from_millis(100)..=Duration::from_secs(3)).contains(w))
        );
        assert!(
            waits.iter().any(|w| *w > Duration::from_secs(2)),
            "grows from the last wait"
        );
        // The rules keep the attempt limit.
        assert_eq!(
            none.decide(&after(ErrorKind::Http503, 7)),
            Decision::Stop(StopReason::MaxAttempts)
        );
    }

    /// A model that says it was trained on 5 rows after a 4xx (and plenty after a 503).
    struct Sparse;

    impl SuccessModel for Sparse {
        fn p_success(&self, _: &AttemptContext) -> f64 {
            0.01
        }

        fn trained_on(&self, ctx: &AttemptContext) -> Option<u64> {
            Some(if ctx.error == Some(ErrorKind::Http4xx) {
                5
            } else {
                10_000
            })
        }
    }

    #[test]
    fn a_failure_the_model_has_barely_seen_is_left_to_the_rules() {
        let d = decider(Arc::new(Sparse)).build().unwrap();
        // After a 503 the model decides (p = 0.01: not worth it).
        assert_eq!(
            d.decide(&after(ErrorKind::Http503, 2)),
            Decision::Stop(StopReason::LowSuccessProbability)
        );
        // After a 4xx it has seen 5 times, the rules retry.
        let w = d.weigh(&after(ErrorKind::Http4xx, 2));
        assert!(w.fell_back() && matches!(w.explained.decision, Decision::Retry(_)));
        assert_eq!(d.fallbacks(), 1);
        // Unless told to trust it anyway.
        let trusting = decider(Arc::new(Sparse)).min_support(0).build().unwrap();
        assert!(!trusting.weigh(&after(ErrorKind::Http4xx, 2)).fell_back());
    }

    #[test]
    fn a_permanent_status_is_never_retried() {
        let sure = decider(flat(0.99)).build().unwrap();
        let rules = ModelDecider::builder().build().unwrap();
        for status in [400, 401, 403, 404, 422] {
            let mut c = after(ErrorKind::Http4xx, 2);
            c.status = Some(status);
            for d in [&sure, &rules] {
                let w = d.weigh(&c);
                assert_eq!(
                    w.explained.decision,
                    Decision::Stop(StopReason::NotRetryable),
                    "{status}"
                );
                assert!(!w.fell_back(), "{status}");
            }
        }
        // 408, 425 and 429 are retryable: the model decides.
        for (kind, status) in [
            (ErrorKind::Timeout, 408),
            (ErrorKind::Http4xx, 425),
            (ErrorKind::Http429, 429),
        ] {
            let mut c = after(kind, 2);
            c.status = Some(status);
            assert!(matches!(sure.decide(&c), Decision::Retry(_)), "{status}");
        }
    }

    #[test]
    fn refuses_bad_configuration() {
        let b = ModelDecider::builder;
        assert_eq!(b().grid(1).build().unwrap_err().field, "grid");
        assert_eq!(b().grid(MAX_GRID + 1).build().unwrap_err().field, "grid");
        assert_eq!(b().cap(Duration::ZERO).build().unwrap_err().field, "cap");
        assert_eq!(b().cap(Duration::MAX).build().unwrap_err().field, "cap");
        // The longest cap allowed builds, whatever the grid (`exp` of the last log-spaced
        // wait may round past it).
        for grid in [2, 29, 32, 45, 47, 56, MAX_GRID] {
            let d = b()
                .cap(crate::MAX_CONFIG_DURATION)
                .grid(grid)
                .build()
                .unwrap();
            assert!(d.grid.iter().all(|w| *w <= crate::MAX_CONFIG_DURATION));
        }
        assert_eq!(
            b().attempt_cost(0.0).build().unwrap_err().field,
            "attempt_cost"
        );
        assert_eq!(
            b().time_cost(f64::NAN).build().unwrap_err().field,
            "time_cost"
        );
        assert_eq!(b().tolerance(-1.0).build().unwrap_err().field, "tolerance");
        assert_eq!(
            b().max_attempts(0).build().unwrap_err().field,
            "max_attempts"
        );
        assert_eq!(
            b().deadline(Duration::ZERO).build().unwrap_err().field,
            "deadline"
        );
    }

    proptest! {
        /// With the same prediction for every wait, it retries exactly when p is above the
        /// attempt's cost (the design sketch's "stop below p = 0.1" at the defaults).
        #[test]
        fn a_flat_model_retries_exactly_above_the_cost(p in 0.0f64..1.0, c in 0.01f64..0.9) {
            prop_assume!((p - c).abs() > 1e-3);
            let d = decider(flat(p)).attempt_cost(c).time_cost(0.0).build().unwrap();
            let retried = matches!(d.decide(&after(ErrorKind::Http503, 2)), Decision::Retry(_));
            prop_assert_eq!(retried, p > c);
        }

        /// Whatever the model answers (out of range, infinite, NaN), it decides without
        /// panicking; a retry is never before the Retry-After nor after the deadline, and
        /// the chosen wait is valued within the tolerance of the best.
        #[test]
        fn any_answer_is_handled(
            answers in proptest::collection::vec(prop_oneof![
                -2.0f64..2.0, Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)], 1..8),
            attempt in 2u32..8,
            ra_ms in proptest::option::of(0u64..40_000),
            elapsed_ms in 0u64..12_000,
            rate in proptest::option::of(-1.0f64..2.0),
        ) {
            let answers = Arc::new(answers);
            let a = Arc::clone(&answers);
            let model = Arc::new(move |c: &AttemptContext| a[(c.delay.as_millis() % a.len() as u128) as usize]);
            let d = decider(model).deadline(Duration::from_secs(10)).build().unwrap();
            let mut c = after(ErrorKind::Http429, attempt);
            c.retry_after = ra_ms.map(Duration::from_millis);
            c.elapsed = Duration::from_millis(elapsed_ms);
            c.failure_rate = rate;
            let w = d.weigh(&c);
            if let Decision::Retry(wait) = w.explained.decision {
                prop_assert!(wait >= c.retry_after.unwrap_or_default());
                prop_assert!(c.elapsed + wait < Duration::from_secs(10));
                if !w.fell_back() {
                    let best = w.alternatives.iter().map(|a| a.value).fold(f64::NEG_INFINITY, f64::max);
                    let chosen = w.alternatives.iter().find(|a| a.wait == wait).unwrap();
                    prop_assert!(chosen.value >= best - 0.01 - 1e-9);
                    prop_assert!((0.0..=1.0).contains(&w.explained.p_success.unwrap()));
                }
            }
        }

        /// Asked again after waiting (`weigh_after`), it weighs the waits from the failure
        /// that are not over yet - the wait waited itself (now) and the grid past it, past
        /// a Retry-After too - with the model's p of each wait from the failure, and
        /// answers them counted from now; the chosen one is valued within the tolerance
        /// of the best, and never outlasts the deadline counted from the failure.
        #[test]
        fn asked_again_it_weighs_only_the_waits_not_yet_over(
            waited_ms in 1u64..8_000,
            ra_ms in proptest::option::of(0u64..6_000),
            elapsed_ms in 0u64..2_000,
        ) {
            // p rises with the wait from the failure.
            let model = Arc::new(|c: &AttemptContext| {
                1.0 - (-c.delay.as_secs_f64()).exp() * 0.9
            });
            let d = decider(model).deadline(Duration::from_secs(10)).build().unwrap();
            let mut c = after(ErrorKind::Http429, 2);
            c.retry_after = ra_ms.map(Duration::from_millis);
            c.elapsed = Duration::from_millis(elapsed_ms);
            let waited = Duration::from_millis(waited_ms);
            let w = d.weigh_after(&c, waited);
            let floor = c.retry_after.unwrap_or_default().max(waited);
            let from_failure: Vec<Duration> = w.alternatives.iter().map(|a| a.wait + waited).collect();
            if let Some(first) = from_failure.first() {
                prop_assert_eq!(*first, floor);
                prop_assert!(from_failure[1..].iter().all(|x| *x > floor));
                let expected: Vec<&Duration> = d.grid().iter().filter(|g| **g > floor && c.elapsed + **g < Duration::from_secs(10)).collect();
                prop_assert_eq!(from_failure.len() - 1, expected.len());
            }
            for (a, f) in w.alternatives.iter().zip(&from_failure) {
                let expected = 1.0 - (-f.as_secs_f64()).exp() * 0.9;
                prop_assert!((a.p_success - expected).abs() < 1e-12, "{:?}: {} vs {}", f, a.p_success, expected);
            }
            match w.explained.decision {
                Decision::Retry(wait) => {
                    prop_assert!(wait + waited >= floor);
                    prop_assert!(c.elapsed + waited + wait < Duration::from_secs(10));
                    let best = w.alternatives.iter().map(|a| a.value).fold(f64::NEG_INFINITY, f64::max);
                    let chosen = w.alternatives.iter().find(|a| a.wait == wait).unwrap();
                    prop_assert!(chosen.value >= best - 0.01 - 1e-9);
                }
                Decision::Stop(r) => prop_assert!(
                    w.alternatives.is_empty() == (r == StopReason::Deadline),
                    "{:?} with {} alternatives", r, w.alternatives.len()
                ),
            }
        }
    }
}
