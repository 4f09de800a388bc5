//! The fleet view: each target's rolling health and a circuit breaker shared by every
//! caller, fed by ingested attempts.
//!
//! Health here is the embedded policies' health (`retrywise::health`): the same tracker,
//! the same window, the same three numbers measured from the attempts that ended within
//! it — so a context completed by the service carries the features an embedded policy
//! would have put in it for the same attempts.
//!
//! The number of targets tracked is capped, so clients cannot grow the service's memory
//! without bound; attempts to targets beyond the cap are counted and not tracked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use retrywise::attempt::{AttemptContext, AttemptRecord, Failure, Outcome};
use retrywise::breaker::{
    BreakerEvent, BreakerMetrics, CallOutcome, CircuitBreaker, Prediction, State,
};
use retrywise::bulkhead::AdaptiveLimit;
use retrywise::health::{Ended, HealthTracker, knows_health};
use retrywise::hedge::{Hedge, HedgeDelay};
use retrywise::model::SuccessModel;
use serde::Serialize;
use tokio::time::Instant;

use crate::shared::{SharedFleet, SharedTarget, wall_ms};

/// One target's state.
#[derive(Debug)]
pub struct Target {
    health: HealthTracker,
    breaker: CircuitBreaker,
    /// The concurrency limit the reported latencies suggest (Gradient2).
    limit: AdaptiveLimit,
    /// Predicts the hedge delay from the reported latencies (primaries a hedge beat are
    /// censored); never sends anything.
    hedge: Hedge,
    /// How many times the shared breaker has opened (counted by its event listener): a
    /// HALF_OPEN circuit is the end of the opening it follows.
    openings: Arc<AtomicU64>,
    /// The probes admission has let through since the circuit's open time passed.
    probes: Mutex<Probes>,
    /// When the shared breaker last closed after probing (wall ms; 0: never): the fleet's
    /// probing of an opening that ended before it is over here.
    closed_ms: Arc<AtomicU64>,
    /// When the breaker's latest opening ends, and when it last closed after probing.
    moved_on: Arc<Mutex<MovedOn>>,
}

impl Target {
    /// Idle at `now`: nothing within the window, and no circuit still holding - closed,
    /// never used, or open past its time for longer than the fleet reads a circuit as
    /// probing (callers read it as HALF_OPEN; obeying it they report nothing, so it would
    /// otherwise hold for ever). One an operator forced open, disabled or set to metrics
    /// only holds.
    fn idle(&self, now: Instant) -> bool {
        let probing = || {
            self.moved_on
                .lock()
                .ok()
                .and_then(|m| m.open_until)
                .is_some_and(|until| {
                    now.saturating_duration_since(until) < crate::shared::PROBING_AT_MOST
                })
        };
        let holds = match local_circuit(&self.breaker) {
            (State::Open, left) => left.is_some_and(|l| !l.is_zero()),
            (State::HalfOpen, _) => probing(),
            (State::Closed, _) => false,
            (State::ForcedOpen | State::Disabled | State::MetricsOnly, _) => true,
        };
        self.health.counts(now).0 == 0 && !holds
    }
}

/// When a breaker's latest opening ends and when it last closed: on its clock, an attempt
/// that ended before the state the breaker is in began is reported late, and is no probe
/// nor evidence of the target since; on the wall clock, a success the fleet reports after
/// the opening's end answers it.
#[derive(Debug, Default, Clone, Copy)]
struct MovedOn {
    open_until: Option<Instant>,
    /// The same end, wall ms (0: it never opened).
    open_until_ms: u64,
    closed_at: Option<Instant>,
}

/// The probes `/v1/decide` has admitted to a HALF_OPEN circuit: how many, in which lease,
/// after which opening.
#[derive(Debug, Default)]
struct Probes {
    /// The opening the lease follows ([`Target::openings`]).
    opening: u64,
    /// When the lease began: its first probe's admission.
    since: Option<Instant>,
    /// The probes admitted in it.
    admitted: u32,
}

/// What the service knows of a target (`GET /v1/targets/{target}`). With a fleet view
/// shared through Redis (`--fleet`), the counts, rates, latency and circuit are every
/// replica's together (while Redis answers); the concurrency limit, the hedge delay and
/// the breaker's counters (`breaker`) are this replica's own.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TargetView {
    /// The target.
    pub target: String,
    /// Attempts ingested within the health window (attempts that ended before it are not
    /// counted).
    pub calls: u64,
    /// Failures among them.
    pub failures: u64,
    /// `failures / calls`; null without calls.
    pub failure_rate: Option<f64>,
    /// p95 latency of those attempts, ms; null without calls.
    pub latency_p95_ms: Option<f64>,
    /// Calls in flight on average over the window (their latencies summed, over the
    /// window: Little's law).
    pub in_flight: u32,
    /// The failure rate of the attempts that ended in the window's last two tenths; null
    /// without such attempts.
    pub failure_rate_recent: Option<f64>,
    /// Permanent failures among the window's attempts; null without calls.
    pub permanent_rate: Option<f64>,
    /// Time since an attempt to the target last succeeded, ms (since the target was first
    /// seen, before the first success).
    pub since_success_ms: f64,
    /// The health window, ms.
    pub health_window_ms: f64,
    /// The shared breaker's state: `CLOSED`, `OPEN`, `HALF_OPEN`…
    pub breaker_state: String,
    /// Whether a caller should send to the target now (the shared breaker admits calls).
    /// While it is HALF_OPEN this says that probes are wanted, not that this caller's is
    /// one: probes are rationed through `/v1/decide` (a first attempt), which answers
    /// whether this call may go.
    pub allow: bool,
    /// The serving model's probability that a fresh call to the target (a first attempt,
    /// with the health above) succeeds now; null without a model, or when it answers NaN.
    pub p_success: Option<f64>,
    /// How long the shared circuit stays open, ms; null unless it is open.
    pub open_for_ms: Option<f64>,
    /// Why `allow` is what it is.
    pub reason: String,
    /// The concurrency limit a caller's bulkhead should hold for the target: Netflix
    /// concurrency-limits' Gradient2 (as `retrywise::bulkhead::AdaptiveLimit`), fed with
    /// every reported attempt's latency and the caller's calls in flight — it shrinks when
    /// latency grows past 1.5x its long-term average (the target is queueing), unless the
    /// latency does not follow the load: a target that slows down for calls sent with few
    /// in flight, or whose latency stays put as the load varies, is slow, not queueing.
    pub concurrency_limit: u32,
    /// After how long a call still running should be hedged, ms: the earliest time at
    /// which a hedge answers first at least as often as not, predicted from the reported
    /// latencies (`retrywise::hedge::HedgeDelay::Predicted`; 100 ms until 100 are known);
    /// null when no hedge is worth sending for slowness.
    pub hedge_delay_ms: Option<f64>,
    /// The breaker's counters.
    #[schema(value_type = Object)]
    pub breaker: BreakerMetrics,
}

/// What [`Fleet::observe`] did with an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// It counts in its target's health and breaker.
    Tracked,
    /// It ended before the health window: left out.
    Stale,
    /// Its target is new and the fleet is at its cap: left out.
    Full,
}
/// The shortest opening of the fleet's predictive breakers. Longer than an embedded
/// breaker's 100 ms ([`Prediction::new`]): the service learns how a probe went only when
/// its caller reports the attempt (`POST /v1/attempts`, batched by a shipper), so an
/// opening shorter than that feedback lets callers through before the probe's answer is in.
pub const FLEET_MIN_OPEN: Duration = Duration::from_millis(500);

/// The longest opening of the fleet's predictive breakers.
pub const FLEET_MAX_OPEN: Duration = Duration::from_secs(60);

/// The probes a shared circuit judges when its open time has passed (HALF_OPEN): the
/// outcomes of the first this many attempts reported close or reopen it, and admission
/// (`/v1/decide` for a first attempt) lets this many fresh calls through per
/// [`PROBE_LEASE`] - resilience4j's `permittedNumberOfCallsInHalfOpenState`, default 10.
pub const FLEET_PROBES: u32 = 10;

/// How long, at least, the probes admitted to a HALF_OPEN circuit hold their places (the
/// target's p95 latency and a second, when longer, up to [`FLEET_MAX_OPEN`]): while their
/// outcomes are not yet reported, admission tells every other caller to wait; after it,
/// as many again are let through (a probe's report may be lost). A probe's outcome reaches
/// the service when its caller's shipper sends the batch (within its default batch delay
/// of 1 s) after the probe's own time.
pub const PROBE_LEASE: Duration = Duration::from_secs(2);

/// Every target's state. When the fleet is at its cap, a new target takes the place of
/// idle ones (no attempt within the window, no circuit still open); if none is idle, it is
/// not tracked.
pub struct Fleet {
    targets: RwLock<HashMap<Arc<str>, Arc<Target>>>,
    /// How many targets `targets` holds (read without the lock on the prediction path).
    count: AtomicUsize,
    window: Duration,
    max_targets: usize,
    /// How the shared breakers consult the serving default model.
    prediction: Option<Prediction>,
    /// The view shared with the other replicas through Redis, if any.
    shared: Option<Arc<SharedFleet>>,
    /// When the fleet, at its cap, last looked for idle targets to forget: at most once a
    /// tenth of the window (each look holds the map's write lock over every target).
    evicted: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("targets", &self.len())
            .field("window", &self.window)
            .field("max_targets", &self.max_targets)
            .field("prediction", &self.prediction)
            .field("shared", &self.shared)
            .finish()
    }
}

impl Fleet {
    /// An empty fleet tracking at most `max_targets` targets over `window`.
    pub fn new(window: Duration, max_targets: usize) -> Self {
        Self {
            targets: RwLock::new(HashMap::new()),
            count: AtomicUsize::new(0),
            window,
            max_targets,
            prediction: None,
            shared: None,
            evicted: Mutex::new(None),
        }
    }

    /// Shares the view with the service's other replicas through `shared` (Redis): every
    /// ingested attempt is also counted there, a circuit this replica opens is opened for
    /// the fleet, and health and failure rates are answered from the whole fleet's
    /// evidence while Redis answers (from this replica's own view while it does not; a
    /// fleet's opening read before stays open until its end). Each replica's breaker opens
    /// on the attempts ingested there, or on the model's prediction.
    pub fn with_shared(mut self, shared: Arc<SharedFleet>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The shared view, if the fleet has one.
    pub fn shared(&self) -> Option<&Arc<SharedFleet>> {
        self.shared.as_ref()
    }

    /// What the shared view holds of `target`, while it is answered from.
    fn shared_target(&self, target: &str) -> Option<SharedTarget> {
        self.shared.as_ref()?.target(target)
    }

    /// Makes every target's shared breaker predictive ([`Prediction`] with `model`): it
    /// also opens when a fresh call is predicted to succeed less often than `threshold`,
    /// for as long as the model predicts a probe would, and each target's view carries the
    /// predicted p of a fresh call. It opens for [`FLEET_MIN_OPEN`] at least.
    pub fn with_model(mut self, model: Arc<dyn SuccessModel>, threshold: f64) -> Self {
        self.prediction = Some(
            Prediction::new(model)
                .threshold(threshold.clamp(1e-6, 0.999))
                .open_between(FLEET_MIN_OPEN, FLEET_MAX_OPEN),
        );
        self
    }

    /// The shared circuit of `target`: its state, and how long it stays open when OPEN;
    /// `None` for a target not tracked.
    pub fn circuit(&self, target: &str) -> Option<(State, Option<Duration>)> {
        let shared = self.shared_target(target);
        let t = self.get(target);
        let wall = wall_ms();
        if t.is_none() && shared.is_none() && self.fleet_open(target, None, wall).is_none() {
            return None;
        }
        Some(self.read_circuit(target, t.as_deref(), shared.as_ref(), wall))
    }

    /// How long the fleet's circuit for `target` stays open as of `wall`: as the view read
    /// from Redis says, or - the view stale, Redis not answering - as the latest end of it
    /// this replica read (an opening does not end because Redis hiccupped).
    fn fleet_open(
        &self,
        target: &str,
        shared: Option<&SharedTarget>,
        wall: u64,
    ) -> Option<Duration> {
        let read = shared.and_then(|sh| sh.open_remaining(wall));
        let known = self
            .shared
            .as_ref()
            .and_then(|s| s.known_open(target, wall));
        read.max(known)
    }

    /// The circuit as callers read it: this replica's own, the fleet's if it is open
    /// longer, and - its own closed - HALF_OPEN while the fleet probes a circuit whose
    /// open time has passed ([`SharedFleet::probing_since`]: opened by another replica,
    /// this one's breaker never saw it).
    fn read_circuit(
        &self,
        target: &str,
        local: Option<&Target>,
        shared: Option<&SharedTarget>,
        wall: u64,
    ) -> (State, Option<Duration>) {
        if let Some(t) = local {
            self.settle(t, shared);
        }
        let own = local.map_or((State::Closed, None), |t| local_circuit(&t.breaker));
        match merge_circuit(own, self.fleet_open(target, shared, wall)) {
            (State::Closed, _) if self.fleet_probing(target, local, wall).is_some() => {
                (State::HalfOpen, None)
            }
            merged => merged,
        }
    }

    /// Closes this replica's breaker, past its open time, once the fleet reports its
    /// opening answered ([`SharedTarget::answered_since`]: another replica's breaker
    /// closed after probing since, or an attempt succeeded after the opening ended while
    /// the fleet's recent attempts mostly succeed) - as a replica that learned of the
    /// opening from Redis reads it ([`SharedFleet::probing_since`]). Else, when the
    /// probes' reports all reach other replicas, this one would read HALF_OPEN (letting a
    /// lease's probes through, telling everyone else to wait) until its own ingestion saw
    /// them.
    fn settle(&self, t: &Target, shared: Option<&SharedTarget>) {
        let Some(sh) = shared else { return };
        let opening = t.openings.load(Ordering::Relaxed);
        if local_circuit(&t.breaker).0 != State::HalfOpen {
            return;
        }
        let until = t.moved_on.lock().map_or(0, |m| m.open_until_ms);
        let answered = until > 0 && sh.answered_since(until);
        // Still the opening judged (failed probes ingested meanwhile reopen it: a new
        // opening, not answered by what answered this one).
        if answered
            && t.openings.load(Ordering::Relaxed) == opening
            && local_circuit(&t.breaker).0 == State::HalfOpen
        {
            t.breaker.reset();
            t.closed_ms.fetch_max(wall_ms(), Ordering::Relaxed);
            if let Ok(mut m) = t.moved_on.lock() {
                m.closed_at = Some(Instant::now());
            }
        }
    }

    /// Whether the fleet, at its cap, may look for idle targets to forget at `now`: once
    /// a tenth of the window at most (a client naming new targets without end would
    /// otherwise have every request scan the map under its write lock).
    fn may_evict(&self, now: Instant) -> bool {
        let Ok(mut last) = self.evicted.lock() else {
            return false;
        };
        if last.is_some_and(|at| now.saturating_duration_since(at) < self.window / 10) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// When the fleet's circuit for `target` closed its open time, while it is probing -
    /// unless this replica's breaker closed after probing since.
    fn fleet_probing(&self, target: &str, local: Option<&Target>, wall: u64) -> Option<u64> {
        let closed = local.map_or(0, |t| t.closed_ms.load(Ordering::Relaxed));
        self.shared
            .as_ref()?
            .probing_since(target, wall)
            .filter(|&until| closed < until)
    }

    /// Admission of a fresh call to `target` while its shared circuit is HALF_OPEN: `Ok`
    /// lets it through as a probe, one of at most [`FLEET_PROBES`] per lease after each
    /// opening; `Err` says how long the lease of those already let through still runs (the
    /// caller should wait for their verdict), or - the circuit reopened meanwhile - how
    /// long it stays open. A lease lasts [`PROBE_LEASE`], or the target's p95 latency and
    /// a second (a shipper's batch delay) when that is longer: a probe's verdict cannot
    /// come sooner. A target the fleet probes that this replica does not track (opened by
    /// another replica) is tracked from now on, or - no room for it - gets no probe here
    /// (`Err(PROBE_LEASE)`: the replicas tracking it admit theirs); an untracked target the
    /// fleet does not probe is let through. Each replica admits its own probes.
    pub fn admit_probe(&self, target: &str, now: Instant) -> Result<(), Duration> {
        let wall = wall_ms();
        let t = match self.get(target) {
            Some(t) => t,
            // Probed by the fleet, known here only from Redis: tracked from now on (if
            // there is room without making it: else every admission would scan the map).
            None if self.fleet_probing(target, None, wall).is_some() => {
                match self.get_or_create(&Arc::from(target), now) {
                    Some(t) => t,
                    // No room to track it, so none to count its probes: this replica
                    // admits none (the replicas tracking it admit theirs) rather than all.
                    None => return Err(PROBE_LEASE),
                }
            }
            None => return Ok(()),
        };
        self.settle(&t, self.shared_target(target).as_ref());
        // The episode: this replica's own opening while its breaker is HALF_OPEN, else the
        // fleet's (the end of its open time, told apart from the count by the top bit).
        let opening = match (
            local_circuit(&t.breaker).0,
            self.fleet_probing(target, Some(&t), wall),
        ) {
            (State::Closed, Some(until)) => until | 1 << 63,
            _ => t.openings.load(Ordering::Relaxed),
        };
        let Ok(mut probes) = t.probes.lock() else {
            return Ok(());
        };
        // Read under the lock, after the opening: a probe that failed since the caller
        // read the circuit may have reopened it (a new opening, whose lease has not begun).
        if let (State::Open, Some(left)) = local_circuit(&t.breaker) {
            return Err(left);
        }
        // The fleet's p95 where this replica has none of its own (it learned of the
        // target from Redis, or its window aged out during a long opening).
        let p95 = t
            .health
            .snapshot(now)
            .latency_p95
            .or_else(|| self.shared_target(target).and_then(|s| s.latency_p95));
        // (At most the longest opening: a p95 of hours, reported by a caller, would hold
        // the probes' places for hours.)
        let lease = p95.map_or(PROBE_LEASE, |p95| {
            PROBE_LEASE
                .max(p95.saturating_add(Duration::from_secs(1)))
                .min(FLEET_MAX_OPEN)
        });
        let lease_over = probes
            .since
            .is_none_or(|since| now.saturating_duration_since(since) >= lease);
        if probes.opening != opening || lease_over {
            *probes = Probes {
                opening,
                since: Some(now),
                admitted: 0,
            };
        }
        if probes.admitted < FLEET_PROBES {
            probes.admitted += 1;
            return Ok(());
        }
        let since = probes.since.unwrap_or(now);
        Err(lease.saturating_sub(now.saturating_duration_since(since)))
    }

    fn get(&self, target: &str) -> Option<Arc<Target>> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.targets.read().ok()?.get(target).cloned()
    }

    /// The target's state, created if there is room.
    fn get_or_create(&self, target: &Arc<str>, now: Instant) -> Option<Arc<Target>> {
        if let Some(t) = self.get(target) {
            return Some(t);
        }
        if self.len() >= self.max_targets && !self.may_evict(now) {
            return None;
        }
        let mut map = self.targets.write().ok()?;
        if let Some(t) = map.get(target) {
            return Some(Arc::clone(t));
        }
        if map.len() >= self.max_targets {
            // Make room by forgetting targets that are idle: nothing within the window, and
            // no circuit still open - closed, never used, or open past its time for longer
            // than the fleet reads a circuit as probing (callers read it as HALF_OPEN;
            // obeying it they report nothing, so it would otherwise stay for ever; within
            // that time, forgotten, its probes would be nobody's to count). One an
            // operator forced open, disabled or set to metrics only is kept.
            map.retain(|_, t| !t.idle(now));
            self.count.store(map.len(), Ordering::Relaxed);
            if map.len() >= self.max_targets {
                return None;
            }
        }
        let t = self.new_target(target)?;
        map.insert(Arc::clone(target), Arc::clone(&t));
        self.count.store(map.len(), Ordering::Relaxed);
        Some(t)
    }

    /// A target's state as new: its health empty, its breaker closed, its limit and hedge
    /// at their start (tracked once [`get_or_create`](Self::get_or_create) puts it in the
    /// map; else only a view's).
    fn new_target(&self, target: &Arc<str>) -> Option<Arc<Target>> {
        // Unstriped: a service keeps these per target, up to `max_targets` of them.
        let health = HealthTracker::unstriped(self.window).ok()?;
        let openings = Arc::new(AtomicU64::new(0));
        let closed_ms = Arc::new(AtomicU64::new(0));
        let moved_on = Arc::new(Mutex::new(MovedOn::default()));
        let (opened, closed) = (Arc::clone(&openings), Arc::clone(&closed_ms));
        let closed_at = Arc::clone(&moved_on);
        let (shared, name) = (self.shared.clone(), Arc::clone(target));
        let mut breaker = CircuitBreaker::builder(Arc::clone(target))
            .permitted_calls_in_half_open(FLEET_PROBES)
            .on_event(move |e| match e {
                BreakerEvent::StateTransition {
                    to: State::Open, ..
                } => {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                BreakerEvent::StateTransition {
                    from: State::HalfOpen,
                    to: State::Closed,
                    ..
                } => {
                    // Its probes answered: the fleet's probing is over, here at once and
                    // for the other replicas at the next write.
                    let now = wall_ms();
                    closed.store(now, Ordering::Relaxed);
                    if let Ok(mut m) = closed_at.lock() {
                        m.closed_at = Some(Instant::now());
                    }
                    if let Some(shared) = &shared {
                        shared.record_closed(&name, now);
                    }
                }
                _ => {}
            });
        if let Some(p) = &self.prediction {
            breaker = breaker.predict(p.clone());
        }
        let breaker = breaker.build().ok()?;
        let limit = AdaptiveLimit::builder().build().ok()?;
        let hedge = Hedge::builder()
            .delay(HedgeDelay::Predicted {
                min_samples: 100,
                fallback: Duration::from_millis(100),
            })
            .latency_window(self.window)
            .no_budget()
            .unstriped()
            .build()
            .ok()?;
        Some(Arc::new(Target {
            health,
            breaker,
            limit,
            hedge,
            openings,
            probes: Mutex::new(Probes::default()),
            closed_ms,
            moved_on,
        }))
    }

    /// Learns from one ingested attempt that ended by wall-clock time `wall_ms` (ms since
    /// the epoch) at the latest. Attempts that ended before the health window (a backfill,
    /// a replay) are left out: the view is of the target's health now.
    pub fn observe(&self, rec: &AttemptRecord, now: Instant, wall_ms: u64) -> Observed {
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let ended_ms = rec
            .started_at_ms
            .saturating_add(u64::try_from(rec.outcome_latency.as_millis()).unwrap_or(u64::MAX));
        if ended_ms.saturating_add(window_ms) < wall_ms {
            return Observed::Stale;
        }
        let how = match rec.outcome {
            Outcome::Success => Some(Ended::Success),
            Outcome::Permanent => Some(Ended::Permanent),
            Outcome::Retryable => Some(Ended::Failure),
            Outcome::Cancelled => None,
        };
        let Some(t) = self.get_or_create(&rec.context.target, now) else {
            // Not tracked here, nor written to the fleet: a client naming targets without
            // end fills neither this replica's memory nor the shared view.
            return Observed::Full;
        };
        if let (Some(shared), Some(how)) = (&self.shared, how) {
            // Counted when it ended (no later than now, as the local view counts it).
            shared.record(
                &rec.context.target,
                ended_ms.min(wall_ms),
                how,
                rec.outcome_latency,
            );
        }
        // Counted when it ended, as an embedded policy counts it, however late it arrives.
        let age = Duration::from_millis(wall_ms.saturating_sub(ended_ms));
        let ended = now.checked_sub(age).unwrap_or(now);
        // A report that arrived after the breaker moved on - an attempt that ended before
        // its latest opening ended (a shipper batches for up to a second), or before it
        // last closed - is no evidence of the target since: in the totals only.
        let moved_on = t.moved_on.lock().map(|m| *m).unwrap_or_default();
        let late = match t.breaker.state() {
            State::Open | State::HalfOpen => moved_on.open_until.is_some_and(|u| ended < u),
            State::Closed => moved_on.closed_at.is_some_and(|c| ended < c),
            _ => false,
        };
        let Some(how) = how else {
            // Cancelled: a primary a hedge beat, whose latency is longer than it ran.
            if rec.hedge == 0 {
                t.hedge.record_beaten(ended, rec.outcome_latency);
            }
            return Observed::Tracked;
        };
        if rec.hedge == 0 {
            t.hedge.record_latency(ended, rec.outcome_latency);
        }
        let in_flight = rec.context.in_flight.unwrap_or_else(|| t.limit.current());
        t.limit.sample(rec.outcome_latency, in_flight);
        t.health.record(ended, how, rec.outcome_latency);
        let outcome = match rec.outcome {
            Outcome::Success | Outcome::Permanent => CallOutcome::Success,
            Outcome::Retryable => CallOutcome::Failure,
            Outcome::Cancelled => CallOutcome::Ignored,
        };
        // An observation of a call already made, not a request to make one. A predictive
        // breaker is told of a failure with the retry after it, as an embedded policy
        // tells its own: the failure's kind, and the target's health as the caller saw it
        // (carried over, the time since the last success advanced to the failure's end;
        // a snapshot of the fleet's own view here, mid-batch, would fix its p95 for the
        // rest of the health bucket before the batch's later attempts are counted).
        match rec.outcome_error {
            _ if late => t.breaker.observe_late(outcome, rec.outcome_latency),
            Some(kind) if outcome == CallOutcome::Failure && t.breaker.prediction().is_some() => {
                let failure = Failure {
                    kind,
                    status: rec.outcome_status,
                    retry_after: rec.outcome_retry_after,
                };
                let elapsed = rec.context.elapsed + rec.context.delay + rec.outcome_latency;
                let mut retry = rec.context.next(&failure, rec.outcome_latency, elapsed);
                retry.since_success = rec
                    .context
                    .since_success
                    .map(|s| s + rec.context.delay + rec.outcome_latency);
                t.breaker
                    .observe_failure_before(rec.outcome_latency, &retry);
            }
            _ => t.breaker.observe(outcome, rec.outcome_latency),
        }
        // (Open with no time left is an opening that ended, which an attempt reported late
        // leaves as it was: its end is not moved to now.)
        if t.breaker.state() == State::Open
            && let Some(left) = t.breaker.open_remaining()
            && !left.is_zero()
        {
            let until = wall_ms.saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
            if let Ok(mut m) = t.moved_on.lock() {
                m.open_until = m.open_until.max(Some(now + left));
                m.open_until_ms = m.open_until_ms.max(until);
            }
            if let Some(shared) = &self.shared {
                // Open for the whole fleet.
                shared.record_open(&rec.context.target, left);
            }
        }
        Observed::Tracked
    }

    /// Fills what `ctx` does not say about its target's health from the fleet's view:
    /// failure rate, p95 latency, calls in flight, recent failure rate, permanent-failure
    /// rate, time since the last success, and the window they were measured over (unless
    /// the caller gave its own).
    pub fn fill(&self, ctx: &mut AttemptContext, now: Instant) {
        if knows_health(ctx) {
            return;
        }
        if let Some(s) = self.shared_target(&ctx.target) {
            s.snapshot(wall_ms(), self.window).fill_missing(ctx);
            return;
        }
        if let Some(t) = self.get(&ctx.target) {
            t.health.snapshot(now).fill_missing(ctx);
        }
    }

    /// The view of one target, if it is tracked.
    pub fn view(&self, target: &str, now: Instant) -> Option<TargetView> {
        let shared = self.shared_target(target);
        let wall = wall_ms();
        // Known only to the other replicas - from the shared view, or (Redis not
        // answering) by a circuit the fleet opened, which stays open here until its end:
        // tracked here from now on, so that the view says what `/v1/decide` answers.
        // (At the cap of targets, with none idle to make room, still answered - from the
        // fleet's evidence and a state as new - as `/v1/decide` answers: a 404 said "not
        // tracked" of a circuit the fleet had open.)
        let t = match self.get(target) {
            Some(t) => t,
            None if shared.is_some() || self.fleet_open(target, None, wall).is_some() => {
                let name = Arc::from(target);
                self.get_or_create(&name, now)
                    .or_else(|| self.new_target(&name))?
            }
            None => return None,
        };
        let s = shared.map_or_else(
            || t.health.snapshot(now),
            |sh| sh.snapshot(wall, self.window),
        );
        let mut breaker = t.breaker.metrics();
        let local = local_circuit(&t.breaker);
        let (state, open_for) = self.read_circuit(target, Some(&t), shared.as_ref(), wall);
        let by_fleet = state != local.0;
        breaker.state = state;
        let p_success = self
            .prediction
            .as_ref()
            .map(Prediction::model)
            .and_then(|m| {
                let mut ctx = AttemptContext::first(Arc::from(target));
                s.apply(&mut ctx);
                Some(m.p_success(&ctx)).filter(|p| !p.is_nan())
            });
        let threshold = t.breaker.prediction().map(Prediction::p_threshold);
        let reason = match (breaker.state, open_for, p_success, threshold) {
            (State::Open, Some(d), _, _) if by_fleet => format!(
                "the shared circuit is open for another {:.0} ms (opened by another replica)",
                d.as_secs_f64() * 1e3
            ),
            (State::Open, Some(d), _, _) => format!(
                "the shared circuit is open for another {:.0} ms",
                d.as_secs_f64() * 1e3
            ),
            (State::ForcedOpen, ..) => "an operator forced the shared circuit open".to_owned(),
            (State::HalfOpen, ..) if by_fleet => {
                "the shared circuit is probing the target (its open time, set by another replica, has passed and no success has been reported since: send only as a probe)".to_owned()
            }
            (State::HalfOpen, ..) => {
                "the shared circuit is probing the target (send only as a probe)".to_owned()
            }
            (_, _, Some(p), Some(th)) if p < th => format!(
                "a fresh call is predicted to succeed with p = {p:.3}, below {th}; the circuit opens at the next failure reported"
            ),
            (_, _, Some(p), _) => format!(
                "the shared circuit is closed; a fresh call is predicted to succeed with p = {p:.3}"
            ),
            _ => "the shared circuit is closed".to_owned(),
        };
        Some(TargetView {
            target: target.to_owned(),
            calls: s.calls,
            failures: s.failures,
            failure_rate: s.failure_rate,
            latency_p95_ms: s.latency_p95.map(|d| d.as_secs_f64() * 1e3),
            in_flight: s.in_flight,
            failure_rate_recent: s.failure_rate_recent,
            permanent_rate: s.permanent_rate,
            since_success_ms: s.since_success.as_secs_f64() * 1e3,
            health_window_ms: s.window.as_secs_f64() * 1e3,
            breaker_state: breaker.state.as_str().to_owned(),
            allow: !matches!(breaker.state, State::Open | State::ForcedOpen),
            p_success,
            open_for_ms: open_for.map(|d| d.as_secs_f64() * 1e3),
            reason,
            concurrency_limit: t.limit.current(),
            hedge_delay_ms: t.hedge.current_delay().map(|d| d.as_secs_f64() * 1e3),
            breaker,
        })
    }

    /// What the metrics show of a tracked target, without asking the model: whether its
    /// shared circuit refuses fresh calls, the suggested concurrency limit and hedge delay.
    pub fn gauges(&self, target: &str) -> Option<(bool, u32, Option<Duration>)> {
        let t = self.get(target)?;
        let shared_open = self.fleet_open(target, self.shared_target(target).as_ref(), wall_ms());
        Some((
            matches!(local_circuit(&t.breaker).0, State::Open | State::ForcedOpen)
                || shared_open.is_some(),
            t.limit.current(),
            t.hedge.current_delay(),
        ))
    }

    /// The names of the targets tracked.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.targets
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `target` is tracked by this replica.
    pub fn tracks(&self, target: &str) -> bool {
        self.get(target).is_some()
    }

    /// Whether `target` is idle at `now` - nothing within the window, and no circuit that
    /// still holds - as the fleet at its cap forgets such targets; one not tracked is.
    pub fn idle(&self, target: &str, now: Instant) -> bool {
        self.get(target).is_none_or(|t| t.idle(now))
    }

    /// How many targets are tracked.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no target is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// This replica's circuit for a target as a caller should read it: its state and the time
/// it stays open. A breaker leaves OPEN at the first call it is asked to admit after its
/// open time, and the fleet's breaker is asked by no call (attempts are reported after
/// they were made): a circuit whose open time has passed is HALF_OPEN - the next call is a
/// probe - or a caller that waits for it to close would wait for ever.
fn local_circuit(b: &CircuitBreaker) -> (State, Option<Duration>) {
    match (b.state(), b.open_remaining()) {
        (State::Open, Some(left)) if left.is_zero() => (State::HalfOpen, None),
        (state, left) => (state, left),
    }
}

/// A replica's own circuit (state, time left open) beside the fleet's (open for the time
/// given): a circuit forced open stays so; else the fleet's wins while it is open longer.
fn merge_circuit(
    local: (State, Option<Duration>),
    shared_open: Option<Duration>,
) -> (State, Option<Duration>) {
    match (local, shared_open) {
        ((State::ForcedOpen, _), _) | (_, None) => local,
        ((State::Open, Some(mine)), Some(fleet)) if mine >= fleet => local,
        (_, Some(fleet)) => (State::Open, Some(fleet)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use retrywise::attempt::{ErrorKind, Verdict};

    fn refused(target: &str, i: u64, wall: u64) -> AttemptRecord {
        let verdict = if i == 0 {
            Verdict::Success
        } else {
            Verdict::Retryable(Failure::new(ErrorKind::Connect))
        };
        AttemptRecord::new(
            i,
            0,
            wall - 10,
            AttemptContext::first(target),
            &verdict,
            Duration::from_millis(1),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_shared_breaker_reads_a_probe_as_the_retry_after_a_reported_failure() {
        // A model that knows what waiting does only for retries: after a refused connection
        // a retry gets through 3 s after the last success; a fresh call never looks worth it.
        let model = Arc::new(|c: &AttemptContext| {
            let since = c.since_success.unwrap_or_default() + c.delay;
            match c.error {
                Some(ErrorKind::Connect) if since >= Duration::from_secs(3) => 0.9,
                _ => 0.0,
            }
        });
        let fleet = Fleet::new(Duration::from_secs(10), 10).with_model(model, 0.1);
        let wall = 1_800_000_000_000;
        let now = Instant::now();
        for i in 0..20 {
            fleet.observe(&refused("inventory", i, wall), now, wall);
        }
        let (state, left) = fleet.circuit("inventory").expect("tracked");
        assert_eq!(state, State::Open);
        let left = left.expect("open for a while");
        // Read as a fresh call, no probe is worth sending within a minute; read as the
        // retry after the refusals, one is 3 s after the last success.
        assert!(
            left >= Duration::from_millis(2_990) && left <= Duration::from_millis(3_030),
            "{left:?}"
        );
        // Nobody reports anything while it is open (callers obey it). Once its time is up
        // the next call is a probe: the circuit reads HALF_OPEN and allows it, or callers
        // would wait for ever for evidence none of them sends.
        tokio::time::advance(left + Duration::from_millis(1)).await;
        assert_eq!(fleet.circuit("inventory"), Some((State::HalfOpen, None)));
        let view = fleet.view("inventory", Instant::now()).expect("tracked");
        assert_eq!(
            (view.breaker_state.as_str(), view.allow, view.open_for_ms),
            ("HALF_OPEN", true, None)
        );
        assert!(view.reason.contains("probing"), "{}", view.reason);
        assert_eq!(fleet.gauges("inventory").map(|g| g.0), Some(false));
    }

    /// A shared view whose Redis never answers (its view is installed by hand).
    fn unreachable_fleet() -> Arc<SharedFleet> {
        Arc::new(
            SharedFleet::new(
                "redis://127.0.0.1:1",
                Duration::from_secs(10),
                Duration::from_millis(250),
                Duration::from_millis(100),
                10,
                crate::shared::SharedMetrics::default(),
            )
            .unwrap(),
        )
    }

    /// What the fleet's view holds of a target whose calls of late mostly succeed (after
    /// an outage: the window's older calls failed).
    fn recovering(last_success_ms: Option<u64>) -> SharedTarget {
        SharedTarget {
            recent_failures: 1,
            ..failing(None, last_success_ms, None)
        }
    }

    /// What the fleet's view holds of a target whose every call failed of late.
    fn failing(
        open_until_ms: Option<u64>,
        last_success_ms: Option<u64>,
        closed_ms: Option<u64>,
    ) -> SharedTarget {
        SharedTarget {
            calls: 40,
            failures: 40,
            recent_calls: 8,
            recent_failures: 8,
            permanents: 0,
            latency_us: 40_000,
            latency_p95: Some(Duration::from_millis(1)),
            last_success_ms,
            first_seen_ms: 1,
            open_until_ms,
            closed_ms,
            opening_ended_ms: None,
        }
    }

    /// A replica that starts (or first reads the fleet) after the opening ended, while the
    /// fleet probes, reads the circuit as HALF_OPEN from the opening's end Redis keeps (its
    /// `o:` key already gone), not as CLOSED - letting every caller through while the
    /// other replicas ration their probes.
    #[tokio::test]
    async fn a_replica_that_starts_while_the_fleet_probes_probes_too() {
        let shared = unreachable_fleet();
        let fleet = Fleet::new(Duration::from_secs(10), 10).with_shared(Arc::clone(&shared));
        let ended = wall_ms() - 100;
        let probing = SharedTarget {
            opening_ended_ms: Some(ended),
            ..failing(None, Some(ended - 5_000), None)
        };
        shared.install_for_test(HashMap::from([(Arc::<str>::from("db"), probing)]));
        assert_eq!(fleet.circuit("db"), Some((State::HalfOpen, None)));
        // Answered since (a replica's breaker closed after probing): closed.
        shared.install_for_test(HashMap::from([(
            Arc::<str>::from("db"),
            SharedTarget {
                closed_ms: Some(ended + 50),
                ..probing
            },
        )]));
        assert_eq!(fleet.circuit("db"), Some((State::Closed, None)));
        // An opening that ended longer ago than probing lasts is no probing.
        let old = SharedTarget {
            opening_ended_ms: Some(wall_ms() - 3_600_000),
            ..failing(None, None, None)
        };
        shared.install_for_test(HashMap::from([(Arc::<str>::from("cache"), old)]));
        assert_eq!(fleet.circuit("cache").map(|c| c.0), Some(State::Closed));
    }

    /// An opening the fleet answered stays answered: a blip afterwards (the recent
    /// failure rate back at or above a half, nothing else changed) does not turn the
    /// circuit back into HALF_OPEN, with its probes rationed, until the probing time is
    /// up. A new opening is not answered by the last one's answer.
    #[tokio::test]
    async fn an_answered_opening_stays_answered() {
        let shared = unreachable_fleet();
        let fleet = Fleet::new(Duration::from_secs(10), 10).with_shared(Arc::clone(&shared));
        let install = |t: SharedTarget| {
            shared.install_for_test(HashMap::from([(Arc::<str>::from("db"), t)]));
        };
        let ended = wall_ms() - 5_000;
        let probing = SharedTarget {
            opening_ended_ms: Some(ended),
            ..failing(None, Some(ended - 5_000), None)
        };
        install(probing);
        assert_eq!(fleet.circuit("db"), Some((State::HalfOpen, None)));
        // A success after the opening, most recent calls succeeding: answered.
        install(SharedTarget {
            opening_ended_ms: Some(ended),
            ..recovering(Some(ended + 20))
        });
        assert_eq!(fleet.circuit("db"), Some((State::Closed, None)));
        // A blip: the recent calls fail again, the success is still the last.
        install(SharedTarget {
            opening_ended_ms: Some(ended),
            ..failing(None, Some(ended + 20), None)
        });
        assert_eq!(fleet.circuit("db"), Some((State::Closed, None)));
        // Another opening, ended since: probing again.
        let again = wall_ms() - 10;
        install(SharedTarget {
            opening_ended_ms: Some(again),
            ..failing(None, Some(ended + 20), None)
        });
        assert_eq!(fleet.circuit("db"), Some((State::HalfOpen, None)));
    }

    /// A replica that learned of an opening only from Redis (its own breaker never saw
    /// the failures) reads the circuit as HALF_OPEN once the fleet's open time has passed,
    /// and rations its probes as the replica whose breaker opened does - until a success
    /// is reported, or the circuit reopens.
    #[tokio::test]
    async fn a_circuit_opened_by_another_replica_is_probed_here_too() {
        let shared = unreachable_fleet();
        let fleet = Fleet::new(Duration::from_secs(10), 10).with_shared(Arc::clone(&shared));
        let install = |name: &str, t: SharedTarget| {
            shared.install_for_test(HashMap::from([(Arc::<str>::from(name), t)]));
        };
        // Open for the fleet: this replica, which never tracked the target, says so.
        let wall = wall_ms();
        install("cache", failing(Some(wall + 60_000), None, None));
        assert!(matches!(
            fleet.circuit("cache"),
            Some((State::Open, Some(_)))
        ));
        // Read while open, its open time over since (its key then gone from Redis), and
        // nothing succeeded since: probing.
        let closed_at = wall - 100;
        install(
            "db",
            failing(Some(closed_at), Some(closed_at - 5_000), None),
        );
        install("db", failing(None, Some(closed_at - 5_000), None));
        assert_eq!(fleet.circuit("db"), Some((State::HalfOpen, None)));
        let now = Instant::now();
        for _ in 0..FLEET_PROBES {
            assert_eq!(fleet.admit_probe("db", now), Ok(()));
        }
        assert!(fleet.admit_probe("db", now).is_err(), "the probes are out");
        let view = fleet.view("db", now).expect("tracked");
        assert_eq!(view.breaker_state, "HALF_OPEN");
        assert!(view.reason.contains("another replica"), "{}", view.reason);
        // A success reported after the open time, while the fleet's recent calls still
        // fail: one lucky probe, no answer.
        install("db", failing(None, Some(closed_at + 50), None));
        assert_eq!(fleet.circuit("db"), Some((State::HalfOpen, None)));
        // The recent calls mostly succeed: closed, admission is the model's again.
        install("db", recovering(Some(closed_at + 50)));
        assert_eq!(fleet.circuit("db"), Some((State::Closed, None)));
        // Or no success (the probes were answered 4xx), but a replica's breaker closed
        // after probing: closed too.
        install(
            "db",
            failing(None, Some(closed_at - 5_000), Some(closed_at + 80)),
        );
        assert_eq!(fleet.circuit("db"), Some((State::Closed, None)));
        // Answered, it stays answered (a view that no longer shows the answer - here
        // one without the success and the close - does not reopen the probing).
        install("db", failing(None, Some(closed_at - 5_000), None));
        assert_eq!(fleet.circuit("db"), Some((State::Closed, None)));
        // Gone from the view altogether: nothing says it is probing.
        install(
            "gone",
            failing(Some(closed_at), Some(closed_at - 5_000), None),
        );
        install("gone", failing(None, Some(closed_at - 5_000), None));
        assert_eq!(fleet.circuit("gone"), Some((State::HalfOpen, None)));
        install("cache", failing(None, None, None));
        // (Never tracked here: no circuit at all.)
        assert_eq!(fleet.circuit("gone"), None);
        // An opening that ended, a success just after, then failed probes reopening it for
        // 700 ms (the shortest opening is 500 ms): once that ends, the new opening is
        // probed afresh - read as the first one's, the success would close it.
        let first = wall - 2_000;
        install("queue", failing(Some(first), Some(first - 5_000), None));
        install("queue", failing(Some(first + 700), Some(first + 50), None));
        install("queue", recovering(Some(first + 50)));
        assert_eq!(fleet.circuit("queue"), Some((State::HalfOpen, None)));
    }

    /// Opens `target`'s breaker at `wall` with failures reported there, lets its open time
    /// pass on the paused clock, and returns the wall clock then (moved on with it) and
    /// the opening's end.
    async fn opened_and_past(fleet: &Fleet, target: &str, wall: u64) -> (u64, u64) {
        for i in 1..40 {
            fleet.observe(&refused(target, i, wall), Instant::now(), wall);
        }
        let (state, left) = fleet.circuit(target).expect("tracked");
        assert_eq!(state, State::Open);
        let left = left.expect("open");
        let until = wall + u64::try_from(left.as_millis()).unwrap();
        tokio::time::advance(left + Duration::from_millis(1)).await;
        (until + 1, until)
    }

    /// A shipper batches for up to a second: a failure that ended while the circuit was
    /// open and is reported once its open time has passed is no probe, and does not
    /// reopen it; probes that fail after the opening do.
    #[tokio::test(start_paused = true)]
    async fn a_report_that_arrives_late_is_no_probe() {
        let fleet = Fleet::new(Duration::from_secs(600), 10);
        let (wall, until) = opened_and_past(&fleet, "late", 1_800_000_000_000).await;
        // Reported 600 ms after the opening's end, in one batch.
        tokio::time::advance(Duration::from_millis(600)).await;
        let wall = wall + 600;
        for i in 0..FLEET_PROBES {
            // Ended a little before the opening's end.
            let mut r = refused("late", 100 + u64::from(i), until);
            r.started_at_ms = until - 20;
            fleet.observe(&r, Instant::now(), wall);
        }
        assert_eq!(fleet.circuit("late").map(|c| c.0), Some(State::HalfOpen));
        // Probes that ended after the opening's end - before the late ones arrived, which
        // did not move that end to their arrival - and failed: reopened.
        for i in 0..FLEET_PROBES {
            let mut r = refused("late", 200 + u64::from(i), until);
            r.started_at_ms = until + 100;
            fleet.observe(&r, Instant::now(), wall);
        }
        assert_eq!(fleet.circuit("late").map(|c| c.0), Some(State::Open));
    }

    /// The replica whose breaker opened reads it closed once the fleet reports a success
    /// after the opening - its probes' reports may all have reached other replicas - as
    /// the replicas that learned of the opening from Redis read it, instead of HALF_OPEN
    /// until its own ingestion sees probes.
    #[tokio::test(start_paused = true)]
    async fn the_opening_replica_closes_when_the_fleet_reports_its_probes_answered() {
        let shared = unreachable_fleet();
        let fleet = Fleet::new(Duration::from_secs(600), 10).with_shared(Arc::clone(&shared));
        let (_, until) = opened_and_past(&fleet, "db", wall_ms()).await;
        assert_eq!(fleet.circuit("db").map(|c| c.0), Some(State::HalfOpen));
        // A success before the opening ended answers nothing.
        let install = |t| shared.install_for_test(HashMap::from([(Arc::<str>::from("db"), t)]));
        install(failing(None, Some(until - 50), None));
        assert_eq!(fleet.circuit("db").map(|c| c.0), Some(State::HalfOpen));
        // One after it, reported at another replica, among probes that mostly fail (a
        // target serving one call in ten): still probing.
        install(failing(None, Some(until + 20), None));
        assert_eq!(fleet.circuit("db").map(|c| c.0), Some(State::HalfOpen));
        // Among probes that mostly succeed: closed here too.
        install(recovering(Some(until + 20)));
        assert_eq!(fleet.circuit("db"), Some((State::Closed, None)));
        let view = fleet.view("db", Instant::now()).expect("tracked");
        assert!(view.allow && view.breaker_state == "CLOSED", "{view:?}");
    }

    /// At its cap, the fleet keeps a target whose own circuit is probing after its opening
    /// (nothing within the window: callers obeying the circuit report nothing) while the
    /// fleet reads it as probing: forgotten, its probes would be nobody's to count.
    #[tokio::test(start_paused = true)]
    async fn a_circuit_probing_after_its_opening_is_not_forgotten_for_room() {
        let fleet = Fleet::new(Duration::from_secs(10), 1);
        let (wall, _) = opened_and_past(&fleet, "db", wall_ms()).await;
        assert_eq!(fleet.circuit("db").map(|c| c.0), Some(State::HalfOpen));
        let mut other = refused("other", 1, wall);
        other.started_at_ms = wall;
        assert_eq!(fleet.observe(&other, Instant::now(), wall), Observed::Full);
        assert!(fleet.tracks("db"));
    }

    /// A replica at its cap of targets cannot count the probes of a target the fleet is
    /// probing: it lets none through (the replicas tracking it admit theirs), rather than
    /// every caller.
    #[tokio::test]
    async fn a_replica_at_its_cap_lets_no_caller_through_as_a_probe() {
        let shared = unreachable_fleet();
        let fleet = Fleet::new(Duration::from_secs(10), 1).with_shared(Arc::clone(&shared));
        let wall = wall_ms();
        let now = Instant::now();
        assert_eq!(
            fleet.observe(&refused("busy", 1, wall), now, wall),
            Observed::Tracked
        );
        let closed_at = wall - 100;
        shared.install_for_test(HashMap::from([(
            Arc::<str>::from("db"),
            failing(Some(closed_at), None, None),
        )]));
        assert_eq!(fleet.circuit("db"), Some((State::HalfOpen, None)));
        for _ in 0..3 {
            assert_eq!(fleet.admit_probe("db", now), Err(PROBE_LEASE));
        }
    }

    /// A replica at its cap of targets, none idle, still answers the view of a target
    /// the fleet has open - open, from the fleet's evidence, as `circuit` (what
    /// `/v1/decide` reads) says - without tracking it; it answered "not tracked" (404).
    #[tokio::test]
    async fn a_replica_at_its_cap_answers_the_view_of_a_target_the_fleet_has_open() {
        let shared = unreachable_fleet();
        let fleet = Fleet::new(Duration::from_secs(10), 1).with_shared(Arc::clone(&shared));
        let wall = wall_ms();
        let now = Instant::now();
        assert_eq!(
            fleet.observe(&refused("busy", 1, wall), now, wall),
            Observed::Tracked
        );
        shared.install_for_test(HashMap::from([(
            Arc::<str>::from("db"),
            failing(Some(wall + 5_000), None, None),
        )]));
        let (state, open_for) = fleet.circuit("db").unwrap();
        assert_eq!(state, State::Open);
        let view = fleet.view("db", now).expect("answered at the cap");
        assert_eq!(view.breaker_state, "OPEN");
        assert!(!view.allow);
        assert_eq!(view.failures, 40);
        let (seen, said) = (
            open_for.unwrap().as_secs_f64() * 1e3,
            view.open_for_ms.unwrap(),
        );
        assert!((seen - said).abs() < 1_000.0, "{seen} vs {said}");
        assert!(
            view.reason.contains("opened by another replica"),
            "{}",
            view.reason
        );
        assert!(!fleet.tracks("db") && fleet.tracks("busy"));
        // A target the fleet knows nothing of is still not tracked.
        assert!(fleet.view("nobody", now).is_none());
    }

    /// At its cap, the fleet looks for idle targets to forget at most once a tenth of the
    /// window: a client naming new targets without end does not have every request scan
    /// the map under its write lock.
    #[tokio::test(start_paused = true)]
    async fn a_full_fleet_looks_for_room_once_a_tenth_of_the_window() {
        let fleet = Fleet::new(Duration::from_secs(10), 1);
        let wall = 1_800_000_000_000;
        let at = |ms: u64| {
            let fleet = &fleet;
            move |name: &str, i: u64| {
                let mut r = refused(name, i, wall + ms);
                r.outcome = Outcome::Success;
                fleet.observe(&r, Instant::now(), wall + ms)
            }
        };
        assert_eq!(at(0)("a", 1), Observed::Tracked);
        tokio::time::advance(Duration::from_millis(9_500)).await;
        // `a` still active: no room.
        assert_eq!(at(9_500)("b", 2), Observed::Full);
        tokio::time::advance(Duration::from_millis(700)).await;
        // `a` idle now, but the last look was 0.7 s ago.
        assert_eq!(at(10_200)("c", 3), Observed::Full);
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(at(10_600)("d", 4), Observed::Tracked);
        assert!(!fleet.tracks("a") && fleet.tracks("d"));
    }

    /// A target this replica refuses for want of room is not written to the fleet either:
    /// endless target names fill neither its memory nor Redis.
    #[tokio::test]
    async fn a_target_refused_for_room_is_not_written_to_the_fleet() {
        let shared = unreachable_fleet();
        let fleet = Fleet::new(Duration::from_secs(10), 1).with_shared(Arc::clone(&shared));
        let wall = wall_ms();
        let now = Instant::now();
        assert_eq!(
            fleet.observe(&refused("a", 1, wall), now, wall),
            Observed::Tracked
        );
        assert_eq!(
            fleet.observe(&refused("b", 2, wall), now, wall),
            Observed::Full
        );
        assert_eq!(shared.pending_targets(), [Arc::<str>::from("a")]);
    }

    /// A Redis hiccup does not close a circuit another replica opened: its end, read
    /// before, is kept until it passes, while health falls back to the replica's own.
    #[tokio::test]
    async fn a_stale_view_keeps_the_fleets_openings_until_they_end() {
        let shared = unreachable_fleet();
        let fleet = Fleet::new(Duration::from_secs(10), 10).with_shared(Arc::clone(&shared));
        let wall = wall_ms();
        shared.install_for_test(HashMap::from([
            (
                Arc::<str>::from("db"),
                failing(Some(wall + 30_000), None, None),
            ),
            (
                Arc::<str>::from("ended"),
                failing(Some(wall - 1), None, None),
            ),
            (
                Arc::<str>::from("cache"),
                failing(Some(wall + 30_000), None, None),
            ),
        ]));
        fleet
            .view("db", Instant::now())
            .expect("tracked from the view");
        shared.fall_back_for_test();
        assert!(!shared.status().shared);
        assert_eq!(shared.target("db"), None, "health: the replica's own");
        let (state, left) = fleet.circuit("db").expect("known open");
        assert_eq!(state, State::Open);
        assert!(left.unwrap() > Duration::from_secs(29), "{left:?}");
        assert!(fleet.gauges("db").unwrap().0, "the gauge says open too");
        // An opening whose end has passed is over, stale view or not.
        assert_eq!(fleet.circuit("ended"), None);
        // A target this replica never tracked, whose circuit the fleet opened: its view
        // says open, as `/v1/decide` does (it was "not tracked", a 404).
        let view = fleet.view("cache", Instant::now()).expect("known open");
        assert_eq!(view.breaker_state, "OPEN");
        assert!(!view.allow);
    }

    /// The replica whose breaker closed after its probes answered stops reading the
    /// fleet's probing at once (before its own write and the next read carry the news).
    #[tokio::test(start_paused = true)]
    async fn a_breaker_closed_after_probing_ends_the_fleets_probing_here() {
        let shared = unreachable_fleet();
        let fleet = Fleet::new(Duration::from_secs(600), 10).with_shared(Arc::clone(&shared));
        let wall = wall_ms();
        let now = Instant::now();
        for i in 1..40 {
            fleet.observe(&refused("inv", i, wall), now, wall);
        }
        let (_, left) = fleet.circuit("inv").expect("tracked");
        let left = left.expect("open") + Duration::from_millis(1);
        tokio::time::advance(left).await;
        // The reports' wall clock moves on with the paused one (the breaker's close is
        // stamped with the real one, which stands still here).
        let closed_after = wall - 100;
        let wall = wall + u64::try_from(left.as_millis()).unwrap();
        // The fleet's view: its open time ended a moment ago, no success since.
        let t = failing(Some(closed_after), None, None);
        shared.install_for_test(HashMap::from([(Arc::<str>::from("inv"), t)]));
        // Its own probes answer: ten successes close this replica's breaker.
        for i in 0..FLEET_PROBES {
            let ok = AttemptRecord::new(
                100 + u64::from(i),
                0,
                wall - 1,
                AttemptContext::first("inv"),
                &Verdict::Success,
                Duration::from_millis(1),
            );
            fleet.observe(&ok, Instant::now(), wall);
        }
        let t = fleet.get("inv").unwrap();
        assert_eq!(t.breaker.state(), State::Closed);
        assert!(t.closed_ms.load(Ordering::Relaxed) >= closed_after);
        // The view (read before) still says probing; this replica knows better.
        assert_eq!(fleet.circuit("inv"), Some((State::Closed, None)));
    }

    /// Opens `target`'s circuit on calls that each failed after `latency` (in a health
    /// window that still holds them when its open time is up), lets the open time pass and
    /// admits all its probes: how long the next caller is told to wait for their verdict,
    /// and when it was told.
    async fn probes_out(fleet: &Fleet, target: &str, latency: Duration) -> (Instant, Duration) {
        let wall = 1_800_000_000_000;
        let ms = u64::try_from(latency.as_millis()).unwrap();
        let now = Instant::now();
        for i in 0..40 {
            let mut r = refused(target, i + 1, wall);
            r.outcome_latency = latency;
            r.started_at_ms = wall - ms - 10;
            fleet.observe(&r, now, wall);
        }
        let (state, left) = fleet.circuit(target).expect("tracked");
        assert_eq!(state, State::Open);
        tokio::time::advance(left.expect("open") + Duration::from_millis(1)).await;
        let now = Instant::now();
        for _ in 0..FLEET_PROBES {
            assert_eq!(fleet.admit_probe(target, now), Ok(()));
        }
        let wait = fleet
            .admit_probe(target, now)
            .expect_err("the probes are out");
        (now, wait)
    }

    /// A target whose calls take seconds gets a probe lease as long as a probe's verdict
    /// takes to come: its p95 latency and a second, not the 2 s floor (else ten more
    /// probes would go out every 2 s while the first are still running).
    #[tokio::test(start_paused = true)]
    async fn a_slow_target_holds_its_probes_for_as_long_as_their_verdict_takes() {
        let fleet = Fleet::new(Duration::from_secs(600), 10);
        let (now, wait) = probes_out(&fleet, "slow", Duration::from_secs(5)).await;
        assert!(wait >= Duration::from_secs(6), "{wait:?}");
        // Still held after the 2 s floor; let go once the lease is over.
        let later = now + Duration::from_secs(3);
        assert!(fleet.admit_probe("slow", later).is_err());
        assert_eq!(fleet.admit_probe("slow", now + wait), Ok(()));
    }

    /// A p95 latency of hours (a caller's report) holds the probes' places no longer than
    /// the longest opening: admission would otherwise tell every caller to wait for hours.
    #[tokio::test(start_paused = true)]
    async fn a_probe_lease_lasts_no_longer_than_the_longest_opening() {
        let fleet = Fleet::new(Duration::from_secs(600), 10);
        let (now, wait) = probes_out(&fleet, "hours", Duration::from_secs(7_200)).await;
        assert!(wait <= FLEET_MAX_OPEN, "{wait:?}");
        assert_eq!(fleet.admit_probe("hours", now + FLEET_MAX_OPEN), Ok(()));
    }

    /// At its cap the fleet makes room from idle targets: one whose circuit opened, whose
    /// callers then stopped (they obey it), and whose open time has passed is idle too -
    /// else such targets would fill the fleet for good. One still open is kept.
    #[tokio::test(start_paused = true)]
    async fn a_target_whose_circuit_opened_and_went_quiet_makes_room() {
        let fleet = Fleet::new(Duration::from_secs(10), 1);
        let wall = 1_800_000_000_000;
        let now = Instant::now();
        for i in 1..40 {
            fleet.observe(&refused("a", i, wall), now, wall);
        }
        let (state, left) = fleet.circuit("a").expect("tracked");
        assert_eq!(state, State::Open);
        let left = left.expect("open for a while");
        // While it is open, a new target finds no room.
        let ok = AttemptRecord::new(
            1,
            0,
            wall - 10,
            AttemptContext::first("b"),
            &Verdict::Success,
            Duration::from_millis(1),
        );
        assert_eq!(fleet.observe(&ok, Instant::now(), wall), Observed::Full);
        // Two minutes later: nothing in the window, its open time long past.
        tokio::time::advance(Duration::from_secs(120).max(left)).await;
        let wall = wall + 120_000;
        let ok = AttemptRecord::new(
            2,
            0,
            wall - 10,
            AttemptContext::first("b"),
            &Verdict::Success,
            Duration::from_millis(1),
        );
        assert_eq!(fleet.observe(&ok, Instant::now(), wall), Observed::Tracked);
        assert_eq!(fleet.circuit("a"), None);
    }
}
