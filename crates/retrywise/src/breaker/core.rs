//! The circuit breaker's state machine.

use std::borrow::Borrow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::attempt::AttemptContext;
use crate::striped::Striped;

use super::window::{Counts, Window};
use super::{
    BreakerBuilder, BreakerConfig, BreakerEvent, BreakerMetrics, CircuitOpen, OpenContext,
    SlidingWindow, State,
};

/// How a call that went through the breaker ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// It worked.
    Success,
    /// It failed in a way that says something about the upstream's health.
    Failure,
    /// It says nothing about the upstream (a permanent client error, a cancelled call):
    /// counted in the totals only, and a HALF_OPEN probe slot is given back.
    Ignored,
}

/// A circuit breaker: stops calling an upstream that is failing, and probes it until it
/// recovers.
///
/// CLOSED lets calls through and keeps their outcomes in a sliding window; when the window
/// holds at least the minimum number of calls and its failure rate or slow-call rate
/// reaches its threshold, the circuit opens. OPEN refuses calls for the open duration,
/// then HALF_OPEN lets a fixed number of probe calls through: if their failure and
/// slow-call rates are below the thresholds the circuit closes, otherwise it opens again.
/// Operators can also disable it, force it open or set it to record metrics only.
///
/// Cloning is cheap and shares the state. The fast path (CLOSED, admitting a call) is one
/// atomic load; recording an outcome takes a short lock. Only calls admitted in the
/// current state count toward its decisions: a slow call admitted while CLOSED that ends
/// during HALF_OPEN does not decide the probe.
///
/// ```
/// use std::time::Duration;
/// use retrywise::breaker::{CallOutcome, CircuitBreaker, SlidingWindow, State};
///
/// let breaker = CircuitBreaker::builder("payments")
///     .window(SlidingWindow::Count(10))
///     .minimum_calls(4)
///     .failure_rate_threshold(0.5)
///     .open_for(Duration::from_secs(30))
///     .build()?;
///
/// for _ in 0..4 {
///     let permit = breaker.try_acquire().expect("closed");
///     permit.record(CallOutcome::Failure, Duration::from_millis(3));
/// }
/// assert_eq!(breaker.state(), State::Open);
/// assert!(breaker.try_acquire().is_err());
/// # Ok::<(), retrywise::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    cfg: BreakerConfig,
    origin: Instant,
    /// `epoch << 8 | state`. The epoch counts transitions, so a permit knows whether the
    /// state it was admitted in is still current. Written only while `core` is locked.
    word: AtomicU64,
    /// End of OPEN in nanoseconds since `origin`. Written only while `core` is locked,
    /// before `word` announces OPEN.
    open_until: AtomicU64,
    /// When the last success ended, in nanoseconds since `origin` (kept only with a
    /// [`super::Prediction`]: the model reads the time since it).
    last_success: AtomicU64,
    /// Refused calls; counted without the lock so refusing stays cheap.
    not_permitted: Striped,
    /// Outcomes of CLOSED and METRICS_ONLY, written without taking `core` (both kinds of
    /// window are lock-free).
    window: Window,
    totals: Totals,
    /// Transitions and HALF_OPEN bookkeeping.
    core: Mutex<Core>,
}

#[derive(Debug)]
struct Core {
    /// Probes admitted, and their outcomes, in the current HALF_OPEN.
    probes: Probes,
    consecutive_opens: u32,
    /// When the circuit last opened (nanoseconds since `origin`), and the refused-call
    /// count then: the calls it refused a second since, for the next opening's length.
    opened: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Probes {
    admitted: u32,
    done: Counts,
    since_nanos: u64,
}

/// Lifetime counters, striped so that concurrent calls do not share a cache line.
#[derive(Debug, Default)]
struct Totals {
    successful: Striped,
    failed: Striped,
    ignored: Striped,
    slow: Striped,
    /// Every recorded call's latency summed, µs (in nanoseconds the sum wrapped after
    /// about 580 years of latency: 21 days of 10,000 calls a second taking a second).
    response_micros: Striped,
    /// Recorded calls whose duration is not known (cancelled before their outcome).
    unmeasured: Striped,
}

/// An epoch no state ever has (epochs are packed in 56 bits): a call recorded with it
/// counts in the totals and decides nothing.
const NO_EPOCH: u64 = u64::MAX;

/// Whether `count` of `calls` reaches the rate `threshold`, compared by multiplying (no
/// division on the call path), with the product's rounding forgiven: `0.07 * 100.0` is
/// `7.000000000000001`, and 7 failures of 100 reach a threshold of 7 %.
#[inline]
fn reaches(count: u32, threshold: f64, calls: u32) -> bool {
    f64::from(count) >= threshold * f64::from(calls) * (1.0 - 1e-12)
}

/// When a recorded call ended.
#[derive(Clone, Copy)]
enum Ended {
    /// Now: the breaker reads its clock if it needs to.
    Now,
    /// At this clock reading, which the caller had.
    At(Instant),
    /// Before the breaker's current state began (a late report): not dated.
    Before,
    /// Now, cancelled before its outcome (a dropped permit): how long it took is not
    /// known, and is left out of the mean response time.
    Cancelled,
}

fn pack(epoch: u64, state: State) -> u64 {
    (epoch << 8) | state as u64
}

fn unpack(w: u64) -> (u64, State) {
    (w >> 8, State::from_u8((w & 0xff) as u8))
}

/// Events produced under the lock, emitted after it is released.
#[derive(Default)]
struct Pending(Vec<BreakerEvent>);

impl CircuitBreaker {
    /// A builder for a breaker named `name` (named in events, errors and metrics).
    pub fn builder(name: impl Into<Arc<str>>) -> BreakerBuilder {
        BreakerBuilder::new(name.into())
    }

    pub(crate) fn from_config(name: Arc<str>, cfg: BreakerConfig) -> Self {
        let window = Window::new(cfg.window);
        Self {
            shared: Arc::new(Shared {
                name,
                cfg,
                origin: Instant::now(),
                word: AtomicU64::new(pack(0, State::Closed)),
                open_until: AtomicU64::new(0),
                last_success: AtomicU64::new(0),
                not_permitted: Striped::default(),
                window,
                totals: Totals::default(),
                core: Mutex::new(Core {
                    probes: Probes::default(),
                    consecutive_opens: 0,
                    opened: None,
                }),
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// The current state.
    pub fn state(&self) -> State {
        unpack(self.shared.word.load(Ordering::Acquire)).1
    }

    /// How long the circuit stays OPEN: the time left of the open duration while OPEN
    /// (zero once it is up, until a call moves it to HALF_OPEN); `None` in every other
    /// state. Asking counts nothing.
    pub fn open_remaining(&self) -> Option<Duration> {
        let s = &*self.shared;
        (self.state() == State::Open).then(|| {
            let until = s.open_until.load(Ordering::Acquire);
            Duration::from_nanos(until.saturating_sub(self.now_nanos()))
        })
    }

    /// The model this breaker consults, if it has a [`super::Prediction`], and its
    /// threshold.
    pub fn prediction(&self) -> Option<&super::Prediction> {
        self.shared.cfg.predict.as_ref()
    }

    /// Asks to make a call. The permit must be given the call's outcome with
    /// [`Permit::record`]; a permit dropped without it counts as [`CallOutcome::Ignored`].
    ///
    /// # Errors
    /// [`CircuitOpen`] when the circuit is OPEN (and its duration has not passed),
    /// FORCED_OPEN, or HALF_OPEN with all its probes admitted.
    pub fn try_acquire(&self) -> Result<Permit<&CircuitBreaker>, CircuitOpen> {
        self.admit()
            .map(|(epoch, state)| Permit::new(self, epoch, state))
    }

    /// [`try_acquire`](Self::try_acquire) for a call already refused that asks again while
    /// it waits for the circuit (`PolicyBuilder::wait_for_breaker`): refused again, it is
    /// neither counted nor announced - one call is one refusal, however often it looks.
    /// (Counted per look, a call polling a HALF_OPEN circuit every 100 ms read as ten
    /// refused calls a second to the predictive breaker's rate of refusals.)
    pub(crate) fn try_acquire_again(&self) -> Result<Permit<&CircuitBreaker>, CircuitOpen> {
        self.try_admit()
            .map(|(epoch, state)| Permit::new(self, epoch, state))
            .map_err(|(state, remaining)| self.open(state, remaining))
    }

    /// Like [`try_acquire`](Self::try_acquire), with a permit that owns a handle to the
    /// breaker (for futures that must be `'static`).
    ///
    /// # Errors
    /// As [`try_acquire`](Self::try_acquire).
    pub fn try_acquire_owned(&self) -> Result<Permit<CircuitBreaker>, CircuitOpen> {
        self.admit()
            .map(|(epoch, state)| Permit::new(self.clone(), epoch, state))
    }

    /// Runs `fut` through the breaker: refused while the circuit is open; otherwise its
    /// outcome (`Ok` a success, `Err` a failure) and duration are recorded.
    ///
    /// # Errors
    /// [`CircuitOpen`] when the call was refused (the future is dropped unpolled).
    pub async fn call<T, E, F>(&self, fut: F) -> Result<Result<T, E>, CircuitOpen>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire()?;
        let started = Instant::now();
        let out = fut.await;
        let outcome = if out.is_ok() {
            CallOutcome::Success
        } else {
            CallOutcome::Failure
        };
        permit.record(outcome, started.elapsed());
        Ok(out)
    }

    /// Whether a call asked now would surely be refused - OPEN with time left, or
    /// FORCED_OPEN - read without admitting, counting or moving the circuit (HALF_OPEN
    /// with its probes taken is not told: only admitting a call finds that out): the state
    /// and the time left of OPEN, or `None`. For a tower layer's `poll_ready`, which must
    /// not take a permit nor count a refusal for a handle that may never be called.
    #[cfg(feature = "tower")]
    pub(crate) fn refuses_now(&self) -> Option<(State, Option<Duration>)> {
        let s = &*self.shared;
        match unpack(s.word.load(Ordering::Acquire)).1 {
            State::ForcedOpen => Some((State::ForcedOpen, None)),
            State::Open => {
                let now = self.now_nanos();
                let until = s.open_until.load(Ordering::Acquire);
                (now < until).then(|| (State::Open, Some(Duration::from_nanos(until - now))))
            }
            _ => None,
        }
    }

    /// Admits a call: the epoch and state it is admitted in.
    fn admit(&self) -> Result<(u64, State), CircuitOpen> {
        self.try_admit()
            .map_err(|(state, remaining)| self.refuse(state, remaining))
    }

    /// Admits a call, or says why not (the state and the time left) without counting the
    /// refusal.
    fn try_admit(&self) -> Result<(u64, State), (State, Option<Duration>)> {
        let s = &*self.shared;
        let word = s.word.load(Ordering::Acquire);
        let (epoch, state) = unpack(word);
        match state {
            State::Closed | State::MetricsOnly | State::Disabled => Ok((epoch, state)),
            State::ForcedOpen => Err((State::ForcedOpen, None)),
            State::Open => {
                let now = self.now_nanos();
                let until = s.open_until.load(Ordering::Acquire);
                if now < until {
                    return Err((State::Open, Some(Duration::from_nanos(until - now))));
                }
                self.acquire_locked(now)
            }
            State::HalfOpen => self.acquire_locked(self.now_nanos()),
        }
    }

    /// Records the outcome of a call made without asking this breaker — one another
    /// process made and reported (the prediction service's fleet view learns so). It counts
    /// as an admitted call would: in the CLOSED window, or as a HALF_OPEN probe (a breaker
    /// OPEN past its wait starts HALF_OPEN). A call made while the breaker would have
    /// refused it counts in the totals only, and is never a refused call: nobody asked.
    pub fn observe(&self, outcome: CallOutcome, latency: Duration) {
        match self.try_admit() {
            Ok((epoch, state)) => Permit::new(self, epoch, state).record(outcome, latency),
            Err(_) => self.record(NO_EPOCH, outcome, latency, Ended::Now, None),
        }
    }

    /// Records the outcome of a call another process made that ended before the breaker's
    /// current state began - a report that arrived late: in the totals only, never in the
    /// CLOSED window nor as a HALF_OPEN probe (it says nothing of the target since).
    /// Nor does its success move the time since the target's last success a prediction
    /// reads: it ended before now.
    pub fn observe_late(&self, outcome: CallOutcome, latency: Duration) {
        self.record(NO_EPOCH, outcome, latency, Ended::Before, None);
    }

    /// [`observe`](Self::observe)s a failure another process reported, with the retry
    /// that would follow it, as [`Permit::record_failure_before`] records one.
    pub fn observe_failure_before(&self, latency: Duration, retry: &AttemptContext) {
        match self.try_admit() {
            Ok((epoch, state)) => {
                Permit::new(self, epoch, state).record_failure_before(latency, None, retry);
            }
            Err(_) => self.record(
                NO_EPOCH,
                CallOutcome::Failure,
                latency,
                Ended::Now,
                Some(retry),
            ),
        }
    }

    /// The slow path: OPEN whose time is up, or HALF_OPEN.
    fn acquire_locked(&self, now: u64) -> Result<(u64, State), (State, Option<Duration>)> {
        let s = &*self.shared;
        let mut pending = Pending::default();
        let result = {
            let mut core = self.lock();
            let (mut epoch, mut state) = unpack(s.word.load(Ordering::Acquire));
            if state == State::Open && now >= s.open_until.load(Ordering::Acquire) {
                epoch = self.transition(
                    &mut core,
                    State::HalfOpen,
                    Some(now),
                    Counts::default(),
                    None,
                    &mut pending,
                );
                state = State::HalfOpen;
            }
            if state == State::HalfOpen
                && let Some(max_wait) = s.cfg.max_wait_in_half_open
                && now.saturating_sub(core.probes.since_nanos) >= duration_nanos(max_wait)
            {
                let done = core.probes.done;
                epoch =
                    self.transition(&mut core, State::Open, Some(now), done, None, &mut pending);
                state = State::Open;
            }
            match state {
                State::HalfOpen if core.probes.admitted < s.cfg.half_open_calls => {
                    core.probes.admitted += 1;
                    Ok((epoch, State::HalfOpen))
                }
                State::Closed | State::MetricsOnly | State::Disabled => Ok((epoch, state)),
                State::Open => {
                    let until = s.open_until.load(Ordering::Acquire);
                    Err((
                        State::Open,
                        Some(Duration::from_nanos(until.saturating_sub(now))),
                    ))
                }
                other => Err((other, None)),
            }
        };
        self.emit(pending);
        result
    }

    /// Refuses a call in `state` (with `remaining` of OPEN), counting the refusal and
    /// telling the listeners; also what a tower layer's `call` answers when its
    /// `poll_ready` found the circuit refusing ([`refuses_now`](Self::refuses_now)), the
    /// circuit not asked again.
    pub(crate) fn refuse(&self, state: State, remaining: Option<Duration>) -> CircuitOpen {
        let s = &*self.shared;
        s.not_permitted.add(1);
        if !s.cfg.listeners.is_empty() {
            self.emit(Pending(vec![BreakerEvent::CallNotPermitted {
                name: Arc::clone(&s.name),
                state,
            }]));
        }
        self.open(state, remaining)
    }

    /// The refusal, not counted.
    fn open(&self, state: State, remaining: Option<Duration>) -> CircuitOpen {
        CircuitOpen {
            name: Arc::clone(&self.shared.name),
            state,
            remaining,
        }
    }

    /// `retry`: the retry that would follow a failure, as the caller's retry decision sees
    /// it (a reading of a probe for the open duration; [`Permit::record_failure_before`]).
    fn record(
        &self,
        epoch: u64,
        outcome: CallOutcome,
        latency: Duration,
        at: Ended,
        retry: Option<&AttemptContext>,
    ) {
        let s = &*self.shared;
        // One clock reading at most (none when the caller has one), and only when needed:
        // a time window dates every outcome, a prediction every success. (A late report
        // is not dated: it counts in the totals only.)
        let dated = matches!(s.cfg.window, SlidingWindow::Time { .. })
            || (outcome == CallOutcome::Success && s.cfg.predict.is_some());
        let stamp = match at {
            _ if !dated => None,
            Ended::Now | Ended::Cancelled => Some(self.now_nanos()),
            Ended::At(i) => Some(self.nanos_at(i)),
            Ended::Before => None,
        };
        let slow = latency >= s.cfg.slow_call_duration;
        let t = &s.totals;
        match outcome {
            CallOutcome::Success => t.successful.add(1),
            CallOutcome::Failure => t.failed.add(1),
            CallOutcome::Ignored => t.ignored.add(1),
        };
        if slow {
            t.slow.add(1);
        }
        if matches!(at, Ended::Cancelled) {
            t.unmeasured.add(1);
        } else {
            t.response_micros
                .add(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        }
        if outcome == CallOutcome::Success
            && s.cfg.predict.is_some()
            && let Some(now) = stamp
            // Moved at most once a millisecond (what the prediction's context needs): a
            // success costs a load, not a compare-and-swap loop.
            // (Saturating: a clock read past what the nanoseconds hold stays there.)
            && now >= s.last_success.load(Ordering::Relaxed).saturating_add(1_000_000)
        {
            s.last_success.fetch_max(now, Ordering::Relaxed);
        }

        let (cur_epoch, state) = unpack(s.word.load(Ordering::Acquire));
        if cur_epoch != epoch {
            // Admitted in an earlier state: it decides nothing now.
            return;
        }
        match state {
            State::Closed | State::MetricsOnly if outcome != CallOutcome::Ignored => {
                // Time windows need the time of every outcome; count windows only read the
                // clock when they transition.
                let now = stamp.filter(|_| matches!(s.cfg.window, SlidingWindow::Time { .. }));
                let failed = outcome == CallOutcome::Failure;
                // `None`: a transition cleared the window for a later state since this call's
                // epoch was read above - it decides nothing.
                let counts = if failed || slow {
                    match s.window.push_in(epoch, now.unwrap_or(0), failed, slow) {
                        Some(counts) => counts,
                        None => return,
                    }
                } else {
                    // A fast success lowers both rates and asks no prediction: a time
                    // window is not summed for it (the next failure sums it). So a success
                    // that brings a time window to its minimum of calls, over a failure
                    // rate above the threshold, does not open it (resilience4j would): the
                    // next failure or slow call does.
                    match s.window.push_quiet_in(epoch, now.unwrap_or(0)) {
                        Some(counts) => counts,
                        None => return,
                    }
                };
                let needed = s.cfg.minimum_calls.min(s.window.capacity());
                if counts.calls >= needed && self.exceeds(counts) {
                    let mut pending = Pending::default();
                    {
                        let mut core = self.lock();
                        // Re-check under the lock: another call may have transitioned.
                        if s.word.load(Ordering::Acquire) == pack(epoch, state) {
                            self.check_rates(&mut core, state, counts, now, retry, &mut pending);
                        }
                    }
                    self.emit(pending);
                } else if counts.calls >= needed
                    && outcome == CallOutcome::Failure
                    && let Some(pred) = &s.cfg.predict
                {
                    self.check_prediction(pred, epoch, state, counts, now, retry);
                }
            }
            State::HalfOpen => {
                let mut pending = Pending::default();
                {
                    let mut core = self.lock();
                    if s.word.load(Ordering::Acquire) == pack(epoch, state) {
                        let now =
                            stamp.filter(|_| matches!(s.cfg.window, SlidingWindow::Time { .. }));
                        self.record_probe(&mut core, outcome, slow, now, retry, &mut pending);
                    }
                }
                self.emit(pending);
            }
            _ => {}
        }
    }

    /// Whether the window's failure or slow-call rate reached its threshold (compared by
    /// multiplying: no division on the call path).
    fn exceeds(&self, counts: Counts) -> bool {
        let cfg = &self.shared.cfg;
        reaches(counts.failures, cfg.failure_rate_threshold, counts.calls)
            || reaches(counts.slow, cfg.slow_call_rate_threshold, counts.calls)
    }

    fn check_rates(
        &self,
        core: &mut Core,
        state: State,
        counts: Counts,
        now: Option<u64>,
        retry: Option<&AttemptContext>,
        pending: &mut Pending,
    ) {
        let cfg = &self.shared.cfg;
        // Compare by multiplying: no division on the call path while rates are low.
        let failing = reaches(counts.failures, cfg.failure_rate_threshold, counts.calls);
        let slow = reaches(counts.slow, cfg.slow_call_rate_threshold, counts.calls);
        if !failing && !slow {
            return;
        }
        let (fr, sr) = (counts.failure_rate(), counts.slow_rate());
        if !cfg.listeners.is_empty() {
            let name = Arc::clone(&self.shared.name);
            if failing {
                pending.0.push(BreakerEvent::FailureRateExceeded {
                    name: Arc::clone(&name),
                    rate: fr,
                });
            }
            if slow {
                pending
                    .0
                    .push(BreakerEvent::SlowCallRateExceeded { name, rate: sr });
            }
        }
        if state == State::Closed {
            self.transition(core, State::Open, now, counts, retry, pending);
        }
    }

    /// After a failure the rates let pass: opens if the model predicts a fresh call
    /// succeeds less often than its threshold.
    fn check_prediction(
        &self,
        pred: &super::Prediction,
        epoch: u64,
        state: State,
        counts: Counts,
        now: Option<u64>,
        retry: Option<&AttemptContext>,
    ) {
        let s = &*self.shared;
        let now = now.unwrap_or_else(|| self.now_nanos());
        let ctx = self.fresh_call(counts, now);
        let Some(p) = pred.p_fresh(&ctx).filter(|p| *p < pred.threshold) else {
            return;
        };
        let mut pending = Pending::default();
        {
            let mut core = self.lock();
            if s.word.load(Ordering::Acquire) == pack(epoch, state) {
                if !s.cfg.listeners.is_empty() {
                    pending.0.push(BreakerEvent::SuccessPredictedLow {
                        name: Arc::clone(&s.name),
                        p_success: p,
                    });
                }
                if state == State::Closed {
                    tracing::debug!(breaker = %s.name, p_success = p, "a fresh call is predicted to fail");
                    self.transition(
                        &mut core,
                        State::Open,
                        Some(now),
                        counts,
                        retry,
                        &mut pending,
                    );
                }
            }
        }
        self.emit(pending);
    }

    /// A fresh call to the target as the breaker knows it at `now`.
    /// The calls a second the circuit would refuse while open: those it refused since it
    /// last opened, over the time since; on a first opening, the calls of a time window
    /// over its length (a count window says nothing of time: none).
    fn call_rate(&self, core: &Core, counts: Counts, now: u64, refused: u64) -> f64 {
        match core.opened {
            Some((at, before)) => {
                let secs = now.saturating_sub(at) as f64 / 1e9;
                if secs > 0.0 {
                    refused.saturating_sub(before) as f64 / secs
                } else {
                    0.0
                }
            }
            None => match self.shared.cfg.window {
                super::SlidingWindow::Time { duration, .. } if !duration.is_zero() => {
                    f64::from(counts.calls) / duration.as_secs_f64()
                }
                _ => 0.0,
            },
        }
    }

    fn fresh_call(&self, counts: Counts, now: u64) -> AttemptContext {
        let s = &*self.shared;
        let since = now.saturating_sub(s.last_success.load(Ordering::Relaxed));
        let rate = (counts.calls > 0).then(|| counts.failure_rate());
        super::Prediction::fresh(&s.name, rate, Duration::from_nanos(since))
    }

    fn record_probe(
        &self,
        core: &mut Core,
        outcome: CallOutcome,
        slow: bool,
        now: Option<u64>,
        retry: Option<&AttemptContext>,
        pending: &mut Pending,
    ) {
        let cfg = &self.shared.cfg;
        let n = cfg.half_open_calls;
        let p = &mut core.probes;
        match outcome {
            CallOutcome::Ignored => {
                // The probe said nothing: give its slot to another call.
                p.admitted = p.admitted.saturating_sub(1);
                return;
            }
            CallOutcome::Success | CallOutcome::Failure => {
                p.done.calls += 1;
                p.done.failures += u32::from(outcome == CallOutcome::Failure);
                p.done.slow += u32::from(slow);
            }
        }
        let done = p.done;
        // Open as soon as the outcome is certain: even if every remaining probe succeeded
        // and was fast, the rates over all `n` probes would reach a threshold.
        if reaches(done.failures, cfg.failure_rate_threshold, n)
            || reaches(done.slow, cfg.slow_call_rate_threshold, n)
        {
            self.transition(core, State::Open, now, done, retry, pending);
        } else if outcome == CallOutcome::Failure
            && let Some(pred) = &cfg.predict
            && let Some(p) = {
                let ctx = self.fresh_call(done, now.unwrap_or_else(|| self.now_nanos()));
                pred.p_fresh(&ctx).filter(|p| *p < pred.threshold)
            }
        {
            // The probes follow the same rule: a failed one after which a fresh call is
            // predicted to fail reopens the circuit.
            if !cfg.listeners.is_empty() {
                pending.0.push(BreakerEvent::SuccessPredictedLow {
                    name: Arc::clone(&self.shared.name),
                    p_success: p,
                });
            }
            self.transition(core, State::Open, now, done, retry, pending);
        } else if done.calls >= n {
            self.transition(core, State::Closed, now, done, None, pending);
        }
    }

    /// Moves to `to`; returns the new epoch. Must be called with `core` locked. `retry`:
    /// the failure that opens it, as the retry after it (for the open duration).
    fn transition(
        &self,
        core: &mut Core,
        to: State,
        now: Option<u64>,
        counts: Counts,
        retry: Option<&AttemptContext>,
        pending: &mut Pending,
    ) -> u64 {
        let s = &*self.shared;
        let (epoch, from) = unpack(s.word.load(Ordering::Acquire));
        let next = epoch + 1;
        let mut now = now;
        let mut now = || *now.get_or_insert_with(|| self.now_nanos());
        match to {
            State::Open => {
                core.consecutive_opens = core.consecutive_opens.saturating_add(1);
                // The model's wait until a probe is worth sending, or the configured one.
                let configured = || {
                    s.cfg.open_duration.for_opening(&OpenContext {
                        name: &s.name,
                        consecutive_opens: core.consecutive_opens,
                        failure_rate: counts.failure_rate(),
                        slow_call_rate: counts.slow_rate(),
                    })
                };
                let refused = s.not_permitted.get();
                let d = match s.cfg.predict.as_ref() {
                    Some(p) => {
                        let rate = self.call_rate(core, counts, now(), refused);
                        let d =
                            p.open_for(&self.fresh_call(counts, now()), retry, configured, rate);
                        tracing::debug!(
                            breaker = %s.name,
                            open_ms = d.as_secs_f64() * 1e3,
                            refused_per_s = rate,
                            "predicted open duration"
                        );
                        d
                    }
                    None => configured(),
                };
                core.opened = Some((now(), refused));
                s.open_until
                    .store(now().saturating_add(duration_nanos(d)), Ordering::Release);
            }
            State::HalfOpen => {
                core.probes = Probes {
                    admitted: 0,
                    done: Counts::default(),
                    since_nanos: now(),
                };
            }
            // Cleared for the new epoch before it is announced: a call of the old one
            // that read its epoch just before counts nothing in the new window.
            State::Closed => {
                core.consecutive_opens = 0;
                core.opened = None;
                s.window.clear_for(next);
            }
            State::Disabled | State::ForcedOpen | State::MetricsOnly => s.window.clear_for(next),
        }
        s.word.store(pack(next, to), Ordering::Release);
        tracing::info!(breaker = %s.name, from = %from, to = %to, "circuit breaker state change");
        pending.0.push(BreakerEvent::StateTransition {
            name: Arc::clone(&s.name),
            from,
            to,
        });
        next
    }

    fn emit(&self, pending: Pending) {
        for event in &pending.0 {
            for l in &self.shared.cfg.listeners {
                l(event);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // Listeners run outside the lock. What runs inside it and could panic is the
        // open duration (a custom function, or the model a `Prediction` asks): a panic
        // there leaves the consecutive-opens count and a probe's count one ahead of a
        // state that did not change - counts, never a torn state word, so a poisoned lock
        // is still used.
        self.shared.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_nanos(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    /// `at` in nanoseconds since the breaker's origin.
    fn nanos_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.shared.origin).as_nanos())
            .unwrap_or(u64::MAX)
    }

    fn set_state(&self, to: State) {
        let mut pending = Pending::default();
        {
            let mut core = self.lock();
            let now = self.now_nanos();
            let counts = self.shared.window.counts(now);
            self.transition(&mut core, to, Some(now), counts, None, &mut pending);
        }
        self.emit(pending);
    }

    /// Closes the circuit and forgets the window (an operator's reset).
    pub fn reset(&self) {
        self.set_state(State::Closed);
    }

    /// Opens the circuit now, for the open duration.
    pub fn trip(&self) {
        self.set_state(State::Open);
    }

    /// Refuses every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.set_state(State::ForcedOpen);
    }

    /// Allows every call and records nothing until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.set_state(State::Disabled);
    }

    /// Allows every call, records outcomes and emits threshold events, but never opens,
    /// until [`reset`](Self::reset).
    pub fn metrics_only(&self) {
        self.set_state(State::MetricsOnly);
    }

    /// A snapshot of the breaker's state and counters.
    pub fn metrics(&self) -> BreakerMetrics {
        let s = &*self.shared;
        let now = self.now_nanos();
        let (_, state) = unpack(s.word.load(Ordering::Acquire));
        let counts = s.window.counts(now);
        let enough = counts.calls >= s.cfg.minimum_calls.min(s.window.capacity());
        let t = &s.totals;
        let (successful, failed, ignored) = (t.successful.get(), t.failed.get(), t.ignored.get());
        let recorded = successful + failed + ignored;
        // (Calls cancelled before their outcome took an unknown time: left out.)
        let measured = recorded.saturating_sub(t.unmeasured.get());
        let avg = Duration::from_micros(t.response_micros.get().checked_div(measured).unwrap_or(0));
        let success_rate = if successful + failed == 0 {
            1.0
        } else {
            successful as f64 / (successful + failed) as f64
        };
        let health =
            ((1.0 - counts.failure_rate()) * (1.0 - 0.5 * counts.slow_rate())).clamp(0.0, 1.0);
        BreakerMetrics {
            name: Arc::clone(&s.name),
            state,
            failure_rate: enough.then(|| counts.failure_rate()),
            slow_call_rate: enough.then(|| counts.slow_rate()),
            window_calls: counts.calls,
            window_failed_calls: counts.failures,
            window_slow_calls: counts.slow,
            total_calls: recorded,
            successful_calls: successful,
            failed_calls: failed,
            ignored_calls: ignored,
            not_permitted_calls: s.not_permitted.get(),
            slow_calls: t.slow.get(),
            avg_response_time: avg,
            success_rate,
            health_score: health,
        }
    }

    /// The failure rate over the window, once it holds the minimum number of calls.
    pub fn failure_rate(&self) -> Option<f64> {
        let s = &*self.shared;
        let counts = s.window.counts(self.now_nanos());
        (counts.calls >= s.cfg.minimum_calls.min(s.window.capacity()))
            .then(|| counts.failure_rate())
    }

    /// The failure rate over the window, whatever its size (`None` when empty): the
    /// target's recent health, as retry contexts report it.
    pub fn window_failure_rate(&self) -> Option<f64> {
        let counts = self.shared.window.counts(self.now_nanos());
        (counts.calls > 0).then(|| counts.failure_rate())
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Permission to make one call; give it the call's outcome with [`record`](Self::record).
///
/// Dropping it without recording counts as [`CallOutcome::Ignored`] (a cancelled call
/// gives its HALF_OPEN probe slot back, as resilience4j releases the permission of a
/// cancelled call: a circuit whose every probe is cancelled - callers whose deadline is
/// shorter than the upstream's hang, with no attempt timeout inside the breaker - keeps
/// probing; give the attempt a timeout, which records a failure, or set
/// [`max_wait_in_half_open`](super::BreakerBuilder::max_wait_in_half_open)). `B` is `&CircuitBreaker` for a borrowed permit
/// and `CircuitBreaker` for an owned one.
#[derive(Debug)]
#[must_use = "a permit must be given the call's outcome"]
pub struct Permit<B: Borrow<CircuitBreaker>> {
    breaker: B,
    epoch: u64,
    state: State,
    recorded: bool,
}

impl<B: Borrow<CircuitBreaker>> Permit<B> {
    fn new(breaker: B, epoch: u64, state: State) -> Self {
        Self {
            breaker,
            epoch,
            state,
            recorded: false,
        }
    }

    /// The state the call was admitted in.
    pub fn state(&self) -> State {
        self.state
    }

    /// What a permanent failure (a 4xx other than 408, 425 and 429: the target answered,
    /// about the request) says of the call: nothing while the circuit is CLOSED (no failure
    /// of the target, and no success to dilute its failure rate with), but that the target
    /// answers while it probes (HALF_OPEN) - a probe's verdict. Ignored there, a probe's
    /// place went to the next call and the circuit never closed on a target whose traffic
    /// is mostly lookups answering 404.
    pub fn permanent_outcome(&self) -> CallOutcome {
        if self.state == State::HalfOpen {
            CallOutcome::Success
        } else {
            CallOutcome::Ignored
        }
    }

    /// Records how the call ended and how long it took.
    pub fn record(mut self, outcome: CallOutcome, latency: Duration) {
        self.recorded = true;
        if self.state != State::Disabled {
            self.breaker
                .borrow()
                .record(self.epoch, outcome, latency, Ended::Now, None);
        }
    }

    /// Records how the call ended, how long it took and when (a clock reading the caller
    /// already has: the breaker reads none of its own).
    pub fn record_at(mut self, outcome: CallOutcome, latency: Duration, at: Instant) {
        self.recorded = true;
        if self.state != State::Disabled {
            self.breaker
                .borrow()
                .record(self.epoch, outcome, latency, Ended::At(at), None);
        }
    }

    /// Records a failure, how long it took, when it ended (when the caller has the clock
    /// reading), and the retry that would follow it: `retry`, the next attempt's context as
    /// the caller's retry decision sees it (the failure's kind, the target's health; its
    /// `delay` is ignored). A breaker that consults a model
    /// ([`Prediction`](super::Prediction)) reads a probe after a wait as that retry after
    /// the wait, besides as a fresh call, and opens until either reading predicts a probe
    /// worth sending; a breaker without one records a plain failure.
    pub fn record_failure_before(
        mut self,
        latency: Duration,
        at: Option<Instant>,
        retry: &AttemptContext,
    ) {
        self.recorded = true;
        if self.state != State::Disabled {
            self.breaker.borrow().record(
                self.epoch,
                CallOutcome::Failure,
                latency,
                at.map_or(Ended::Now, Ended::At),
                Some(retry),
            );
        }
    }
}

impl<B: Borrow<CircuitBreaker>> Drop for Permit<B> {
    fn drop(&mut self) {
        // A call cancelled before its outcome (a timeout, a caller that went away) counts as
        // ignored wherever the breaker counts anything.
        if !self.recorded && self.state != State::Disabled {
            self.breaker.borrow().record(
                self.epoch,
                CallOutcome::Ignored,
                Duration::ZERO,
                Ended::Cancelled,
                None,
            );
        }
    }
}
