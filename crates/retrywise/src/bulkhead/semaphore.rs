//! The semaphore bulkhead.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Check, ConfigError};
use crate::striped::Striped;

use super::gate::{Gate, MAX_HOLDERS};

const CHECK: Check = Check::new("bulkhead");
/// Far above any sensible limit (about 16 million).
const MAX_CONCURRENT: u32 = MAX_HOLDERS;

/// The bulkhead had no room for the call within its maximum wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead `{name}` is full ({max_concurrent} calls in flight)")]
pub struct BulkheadFull {
    /// The bulkhead's name.
    pub name: Arc<str>,
    /// Its concurrency limit.
    pub max_concurrent: u32,
}

/// Caps how many calls to one dependency run at once, so that a slow dependency cannot
/// take every task, connection or thread of the caller with it.
///
/// A call that finds no room waits up to the maximum wait (the design sketch: 100 ms), then is
/// rejected with [`BulkheadFull`]. Cloning shares the bulkhead.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use retrywise::bulkhead::Bulkhead;
///
/// let bulkhead = Bulkhead::builder("inventory").max_concurrent(2).max_wait(Duration::ZERO).build()?;
/// let a = bulkhead.try_acquire()?;
/// let b = bulkhead.try_acquire()?;
/// assert!(bulkhead.try_acquire().is_err());
/// drop(a);
/// assert_eq!(bulkhead.call(async { 5 }).await?, 5);
/// assert_eq!(bulkhead.metrics().rejected_calls, 1);
/// # drop(b);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Bulkhead {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    gate: Gate,
    max_wait: Duration,
    /// The limit that moves the gate's maximum, if it adapts.
    adaptive: Option<super::AdaptiveLimit>,
    /// Waiting calls ordered by predicted p(success), if it sheds by prediction.
    shed: Option<super::shed::ShedQueue>,
    /// Calls refused. Striped, like every per-call counter here, so that concurrent
    /// callers do not contend on it. (Admissions are counted by the gate itself.)
    rejected: Striped,
    failed: Striped,
    finished: Striped,
    /// Every finished call's time summed, µs (in nanoseconds the sum wrapped after about
    /// 580 years of it: 21 days of 10,000 calls a second taking a second).
    exec_micros: Striped,
}

/// A point-in-time view of a [`Bulkhead`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BulkheadMetrics {
    /// The bulkhead's name.
    pub name: Arc<str>,
    /// Calls running now.
    pub active: u32,
    /// Room left.
    pub available: u32,
    /// The concurrency limit.
    pub max_concurrent: u32,
    /// Calls that asked for room.
    pub total_calls: u64,
    /// Calls refused.
    pub rejected_calls: u64,
    /// `rejected / total`, 0 before any call.
    pub rejection_rate: f64,
    /// Admitted calls reported as failed.
    pub failed_calls: u64,
    /// Mean execution time of admitted calls that reported it.
    #[serde(
        rename = "avg_execution_time_ms",
        serialize_with = "crate::attempt::serialize_ms"
    )]
    pub avg_execution_time: Duration,
}

/// A call waiting in a shedding bulkhead's queue. Until its wait is settled, dropping it
/// takes it out of the queue — or, when room was handed to it meanwhile (under the queue's
/// lock, so one or the other holds), gives that room back: otherwise a slot would stay
/// taken for good by a call that never ran.
struct Waiting<'a> {
    bulkhead: &'a Bulkhead,
    id: u64,
    room: tokio::sync::oneshot::Receiver<()>,
    settled: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Some(q) = &self.bulkhead.shared.shed else {
            return;
        };
        if !q.leave_queue(self.id) && self.room.try_recv().is_ok() {
            // Counted admitted when the room was handed over; it never ran.
            self.bulkhead.shared.gate.uncount_admission();
            self.bulkhead.release();
        }
    }
}

impl Bulkhead {
    /// A builder: 25 concurrent calls and a 100 ms wait unless set.
    pub fn builder(name: impl Into<Arc<str>>) -> BulkheadBuilder {
        BulkheadBuilder {
            name: name.into(),
            max_concurrent: 25,
            max_wait: Duration::from_millis(100),
            adaptive: None,
            shed: None,
        }
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    pub(crate) fn full(&self) -> BulkheadFull {
        self.shared.rejected.add(1);
        BulkheadFull {
            name: Arc::clone(&self.shared.name),
            max_concurrent: self.shared.gate.max(),
        }
    }

    /// A permit for room just taken, with the calls in flight now (itself included).
    fn permit(&self) -> BulkheadPermit<'_> {
        BulkheadPermit {
            bulkhead: self,
            in_flight: self.shared.gate.active(),
        }
    }

    /// Counts a request and takes room if there is some now; a refusal is not counted yet
    /// (the caller may still wait).
    pub(crate) fn try_acquire_quiet(&self) -> Option<BulkheadPermit<'_>> {
        self.shared.gate.try_enter().then(|| self.permit())
    }

    /// After [`try_acquire_quiet`](Self::try_acquire_quiet) found no room: waits up to the
    /// maximum wait, counting a rejection if none frees up.
    pub(crate) async fn acquire_after_refusal(&self) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        self.acquire_after_refusal_for(None, None).await
    }

    /// [`acquire_after_refusal`](Self::acquire_after_refusal) for the call about to be
    /// made in `ctx` (which a bulkhead that sheds by prediction ranks it by), waiting no
    /// longer than `within` when it is given and shorter than the maximum wait (the time
    /// the call has left).
    pub(crate) async fn acquire_after_refusal_for(
        &self,
        ctx: Option<&crate::attempt::AttemptContext>,
        within: Option<Duration>,
    ) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        use super::shed::Queued;
        let s = &*self.shared;
        let max_wait = within.map_or(s.max_wait, |w| w.min(s.max_wait));
        if max_wait.is_zero() {
            return Err(self.full());
        }
        let Some(q) = &s.shed else {
            return if s.gate.enter_within(max_wait).await {
                Ok(self.permit())
            } else {
                Err(self.full())
            };
        };
        let granted = match q.join(&s.gate, q.p(ctx)) {
            Queued::Entered => true,
            Queued::Shed => false,
            Queued::Waiting { id, room } => {
                // Dropped while waiting (the caller's own timeout, a client gone), the
                // guard takes the call out of the queue, or gives back the room handed to
                // it that it will never use.
                let mut wait = Waiting {
                    bulkhead: self,
                    id,
                    room,
                    settled: false,
                };
                let given = tokio::time::timeout(max_wait, &mut wait.room).await;
                wait.settled = true;
                match given {
                    Ok(given) => given.is_ok(),
                    // Out of time: out of the queue, unless room came meanwhile.
                    Err(_) => !q.leave_queue(id) && wait.room.try_recv().is_ok(),
                }
            }
        };
        if granted {
            Ok(self.permit())
        } else {
            Err(self.full())
        }
    }

    /// Takes room for the call about to be made in `ctx`, waiting up to the maximum wait;
    /// a bulkhead that sheds by prediction ([`BulkheadBuilder::shed_by`]) ranks the wait by
    /// the call's predicted p(success).
    ///
    /// # Errors
    /// [`BulkheadFull`] when no room freed up in time, or the call was shed.
    pub async fn acquire_for(
        &self,
        ctx: &crate::attempt::AttemptContext,
    ) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        match self.try_acquire_quiet() {
            Some(p) => Ok(p),
            None => self.acquire_after_refusal_for(Some(ctx), None).await,
        }
    }

    /// Calls waiting in a shedding bulkhead's queue.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.shared.shed.as_ref().map_or(0, |q| q.queued())
    }

    /// Gives a holder's room back: to the likeliest waiter when it sheds by prediction.
    fn release(&self) {
        let s = &*self.shared;
        match &s.shed {
            Some(q) => q.release(&s.gate),
            None => s.gate.leave(),
        }
    }

    /// Takes room for a call if there is some now, without waiting.
    ///
    /// # Errors
    /// [`BulkheadFull`] when every permit is taken.
    pub fn try_acquire(&self) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        self.try_acquire_quiet().ok_or_else(|| self.full())
    }

    /// Takes room for a call, waiting up to the maximum wait.
    ///
    /// # Errors
    /// [`BulkheadFull`] when no room freed up in time.
    pub async fn acquire(&self) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        match self.try_acquire_quiet() {
            Some(p) => Ok(p),
            None => self.acquire_after_refusal().await,
        }
    }

    /// Like [`acquire`](Self::acquire), with a permit that owns a handle to the bulkhead
    /// (for futures that must be `'static`, such as tower services').
    ///
    /// # Errors
    /// [`BulkheadFull`] when no room freed up in time.
    pub async fn acquire_owned(&self) -> Result<OwnedBulkheadPermit, BulkheadFull> {
        match self.try_acquire_owned_quiet() {
            Some(p) => Ok(p),
            None => self.acquire_owned_after_refusal().await,
        }
    }

    /// [`try_acquire_quiet`](Self::try_acquire_quiet) with an owned permit.
    pub(crate) fn try_acquire_owned_quiet(&self) -> Option<OwnedBulkheadPermit> {
        self.try_acquire_quiet().map(|p| p.into_owned())
    }

    /// [`acquire_after_refusal`](Self::acquire_after_refusal) with an owned permit.
    pub(crate) async fn acquire_owned_after_refusal(
        &self,
    ) -> Result<OwnedBulkheadPermit, BulkheadFull> {
        self.acquire_after_refusal()
            .await
            .map(BulkheadPermit::into_owned)
    }

    /// Whether a caller that finds no room waits for some.
    #[cfg(feature = "tower")]
    pub(crate) fn waits(&self) -> bool {
        !self.shared.max_wait.is_zero()
    }

    /// A bulkhead of one call that waits `max_wait` for room (tests).
    #[cfg(test)]
    pub(crate) fn one_at_a_time(name: &str, max_wait: Duration) -> Self {
        Self::builder(name)
            .max_concurrent(1)
            .max_wait(max_wait)
            .build()
            .expect("one call, a valid wait")
    }

    /// Runs `fut` inside the bulkhead. A future that completes is a call answered, in the
    /// metrics and for an adaptive limit, which learns from how long it took (whatever it
    /// returned: to tell a failure the upstream did not answer from an answer, take a
    /// permit and [`finish_with`](BulkheadPermit::finish_with) its verdict, or run the
    /// call through a `Policy`); one dropped before it completes teaches the limit nothing.
    ///
    /// # Errors
    /// [`BulkheadFull`] when there was no room within the maximum wait.
    pub async fn call<F: std::future::Future>(&self, fut: F) -> Result<F::Output, BulkheadFull> {
        let permit = self.acquire().await?;
        let started = tokio::time::Instant::now();
        let out = fut.await;
        permit.finish(false, started.elapsed());
        Ok(out)
    }

    /// Calls running now.
    pub fn active(&self) -> u32 {
        self.shared.gate.active()
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> BulkheadMetrics {
        let s = &*self.shared;
        let rejected = s.rejected.get();
        let total = s.gate.admitted() + rejected;
        let finished = s.finished.get();
        let max = s.gate.max();
        let active = self.active();
        BulkheadMetrics {
            name: Arc::clone(&s.name),
            active,
            available: max.saturating_sub(active),
            max_concurrent: max,
            total_calls: total,
            rejected_calls: rejected,
            rejection_rate: if total == 0 {
                0.0
            } else {
                rejected as f64 / total as f64
            },
            failed_calls: s.failed.get(),
            avg_execution_time: Duration::from_micros(
                s.exec_micros.get().checked_div(finished).unwrap_or(0),
            ),
        }
    }

    /// The adaptive limit steering this bulkhead, if it has one.
    pub fn adaptive_limit(&self) -> Option<&super::AdaptiveLimit> {
        self.shared.adaptive.as_ref()
    }

    /// Reports a call that took `took` and started with `in_flight` calls in flight.
    /// Whether its limit follows the calls' latency ([`BulkheadBuilder::adaptive`]): then
    /// every holder should [`finish`](BulkheadPermit::finish) with its call's.
    #[cfg(feature = "tower")]
    pub(crate) fn adapts(&self) -> bool {
        self.shared.adaptive.is_some()
    }

    /// Counts a finished call; an adaptive limit learns from its latency, and only an
    /// `answered` call's measures the upstream (see [`AdaptiveLimit::sample_call`]).
    ///
    /// [`AdaptiveLimit::sample_call`]: super::AdaptiveLimit::sample_call
    fn report(&self, failed: bool, answered: bool, took: Duration, in_flight: u32) {
        let s = &*self.shared;
        if let Some(limit) = &s.adaptive {
            limit.sample_call(took, in_flight, answered);
            // The latest estimate, read just before it is set, not the one this sample
            // computed: a sample computed before it but set after would leave the gate at
            // a stale limit until the next report.
            s.gate.set_max(limit.current());
            if let Some(q) = &s.shed {
                q.grant(&s.gate);
            }
        }
        s.finished.add(1);
        s.exec_micros
            .add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        if failed {
            s.failed.add(1);
        }
    }
}

/// Room for one call in a [`Bulkhead`]; released when dropped.
///
/// A permit dropped without [`finish`](Self::finish) or [`finish_with`](Self::finish_with)
/// (a hedge that lost its race, a call its caller cancelled) gives an adaptive limit no
/// sample: how long it ran is only a lower bound of its latency, which would bias the
/// limit towards a faster upstream than there is (Netflix's concurrency-limits ignores
/// such a request the same way, `Limiter.Listener.onIgnore`).
#[derive(Debug)]
#[must_use = "the room is released when the permit is dropped"]
pub struct BulkheadPermit<'a> {
    bulkhead: &'a Bulkhead,
    /// Calls in flight when it was given (itself included): the load its latency answers.
    in_flight: u32,
}

impl BulkheadPermit<'_> {
    /// Gives the room back unused, the call turned away: room came when the call could no
    /// longer run (no time was left), so it counts as refused, not as admitted too.
    pub(crate) fn turned_away(self) -> BulkheadFull {
        let bulkhead = self.bulkhead;
        bulkhead.shared.gate.uncount_admission();
        drop(self);
        bulkhead.full()
    }

    fn into_owned(self) -> OwnedBulkheadPermit {
        let owned = OwnedBulkheadPermit {
            bulkhead: self.bulkhead.clone(),
            in_flight: self.in_flight,
        };
        // The room now belongs to the owned permit.
        std::mem::forget(self);
        owned
    }

    /// Reports how the call went (for the execution-time and failure metrics), then
    /// releases the room. A failed call is taken for one the upstream did not answer
    /// (an adaptive limit learns its latency as a lower bound only); [`finish_with`]
    /// tells the two apart.
    ///
    /// [`finish_with`]: Self::finish_with
    pub fn finish(self, failed: bool, took: Duration) {
        self.bulkhead.report(failed, !failed, took, self.in_flight);
    }

    /// Reports how the call went by its verdict, then releases the room: a permanent
    /// failure (a 404) is a failure for the metrics, but an answer from a healthy
    /// upstream, whose latency an adaptive limit measures the upstream by as it does a
    /// success's; a retryable one (a timeout, a 503) is not.
    pub fn finish_with(self, verdict: &crate::attempt::Verdict, took: Duration) {
        self.bulkhead.report_verdict(verdict, took, self.in_flight);
    }
}

impl Bulkhead {
    /// [`Self::report`] by a verdict: a permanent failure is an answer (the upstream's
    /// latency), a retryable one is not.
    fn report_verdict(&self, verdict: &crate::attempt::Verdict, took: Duration, in_flight: u32) {
        use crate::attempt::Verdict;
        let answered = matches!(verdict, Verdict::Success | Verdict::Permanent(_));
        self.report(!verdict.is_success(), answered, took, in_flight);
    }
}

impl Drop for BulkheadPermit<'_> {
    fn drop(&mut self) {
        self.bulkhead.release();
    }
}

/// Room for one call in a [`Bulkhead`], owning a handle to it; released when dropped.
#[derive(Debug)]
#[must_use = "the room is released when the permit is dropped"]
pub struct OwnedBulkheadPermit {
    bulkhead: Bulkhead,
    /// As [`BulkheadPermit`]'s.
    in_flight: u32,
}

impl OwnedBulkheadPermit {
    /// Reports how the call went, then releases the room.
    pub fn finish(self, failed: bool, took: Duration) {
        self.bulkhead.report(failed, !failed, took, self.in_flight);
    }

    /// Reports how the call went by its verdict, then releases the room, as
    /// [`BulkheadPermit::finish_with`].
    pub fn finish_with(self, verdict: &crate::attempt::Verdict, took: Duration) {
        self.bulkhead.report_verdict(verdict, took, self.in_flight);
    }
}

impl Drop for OwnedBulkheadPermit {
    fn drop(&mut self) {
        self.bulkhead.release();
    }
}

/// Builds a [`Bulkhead`].
#[derive(Clone)]
pub struct BulkheadBuilder {
    name: Arc<str>,
    max_concurrent: u32,
    max_wait: Duration,
    adaptive: Option<super::AdaptiveLimit>,
    shed: Option<(std::sync::Arc<dyn crate::model::SuccessModel>, usize)>,
}

impl std::fmt::Debug for BulkheadBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkheadBuilder")
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent)
            .field("max_wait", &self.max_wait)
            .field("adaptive", &self.adaptive)
            .field("shed_queue", &self.shed.as_ref().map(|s| s.1))
            .finish()
    }
}

impl BulkheadBuilder {
    /// When the bulkhead is full, ranks the calls that wait by `model`'s predicted
    /// p(success) of each (given with [`Bulkhead::acquire_for`], as
    /// [`Policy`](crate::policy::Policy) does; 0.5 for a call acquired without one): room
    /// that frees up goes to the likeliest, and with `queue` calls waiting, a newcomer
    /// sheds the least likely one if it is likelier itself, or is shed at once. Defaults
    /// to waiting unranked (and unbounded but for the maximum wait).
    pub fn shed_by(
        mut self,
        model: std::sync::Arc<dyn crate::model::SuccessModel>,
        queue: usize,
    ) -> Self {
        self.shed = Some((model, queue));
        self
    }

    /// Lets `limit` set how many calls may run at once, from the latency of the calls that
    /// finish ([`super::AdaptiveLimit`]; reported through the permits' `finish`, as
    /// [`Policy`](crate::policy::Policy) does); `max_concurrent` is then ignored. Defaults to
    /// a fixed limit.
    pub fn adaptive(mut self, limit: super::AdaptiveLimit) -> Self {
        self.adaptive = Some(limit);
        self
    }

    /// Calls allowed at once. Defaults to 25.
    pub fn max_concurrent(mut self, n: u32) -> Self {
        self.max_concurrent = n;
        self
    }

    /// How long a call may wait for room before it is rejected; zero rejects at once.
    /// Defaults to 100 ms (the design sketch's).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Checks and builds.
    ///
    /// # Errors
    /// `max_concurrent` zero or above 2^24 - 1; an empty name; a `max_wait` beyond
    /// [`crate::MAX_CONFIG_DURATION`]; a shed queue of zero or more than 2^24 - 1 calls.
    pub fn build(self) -> Result<Bulkhead, ConfigError> {
        if self.name.is_empty() {
            return Err(CHECK.err("name", "must not be empty"));
        }
        CHECK.bounded("max_wait", self.max_wait)?;
        if let Some((_, queue)) = &self.shed
            && *queue > MAX_CONCURRENT as usize
        {
            return Err(CHECK.err(
                "shed_queue",
                format!("must be at most {MAX_CONCURRENT}, got {queue}"),
            ));
        }
        CHECK.at_least_one("max_concurrent", u64::from(self.max_concurrent))?;
        if let Some((_, queue)) = &self.shed {
            CHECK.at_least_one("shed_queue", *queue as u64)?;
        }
        if self.max_concurrent > MAX_CONCURRENT {
            return Err(CHECK.err(
                "max_concurrent",
                format!("must be at most {MAX_CONCURRENT}"),
            ));
        }
        Ok(Bulkhead {
            shared: Arc::new(Shared {
                name: self.name,
                gate: Gate::new(
                    self.adaptive
                        .as_ref()
                        .map_or(self.max_concurrent, super::AdaptiveLimit::current),
                ),
                max_wait: self.max_wait,
                adaptive: self.adaptive,
                shed: self
                    .shed
                    .map(|(model, queue)| super::shed::ShedQueue::new(model, queue)),
                rejected: Striped::default(),
                failed: Striped::default(),
                finished: Striped::default(),
                exec_micros: Striped::default(),
            }),
        })
    }
}
