//! Hedged requests: when a call is slower than usual, send a second one and take whichever
//! answers first (Dean & Barroso, "The Tail at Scale", 2013).
//!
//! The primary request goes out at once. If it has not answered after the hedge delay —
//! fixed, or a percentile (e.g. p95) of the latencies of recent calls — a hedge goes out,
//! and so on up to the maximum number of hedges; a request that *fails* while nothing else
//! runs sends the next hedge at once (as gRPC's hedging and Polly do). The first *answer*
//! wins and the others are cancelled (dropped). If every request fails, the error carries
//! every failure. A hedge budget caps the extra load (by default hedges may be at most 5 %
//! of the calls answered in the latency window after a wait - not those answered on the
//! primary's first poll, which no hedge could race - plus one per second of one period over
//! the window's two — half a hedge a second — so that a new or quiet hedge can hedge at
//! all), so hedging can never double the load on a slow upstream.
//!
//! Each answered call contributes one latency to the window: the time to its first answer
//! — the primary's latency, or a lower bound of it when a hedge answered first.

pub(crate) mod latency;

use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::{Instant, Sleep};

use crate::error::{Check, ConfigError};
use crate::model::SuccessModel;
use crate::striped::Striped;

pub(crate) use latency::RollingLatency;

const CHECK: Check = Check::new("hedge");

/// The default budget's floor, in hedges per second whatever the traffic, so that a fresh
/// hedge (or a quiet one) hedges before it has seen calls answered: the budget's window is
/// two periods, and it allows this many per period in it - half a hedge a second, at the
/// default of 1.
pub const DEFAULT_MIN_HEDGES_PER_SEC: u32 = 1;

/// The cached delay is recomputed from the histogram (a scan of about a microsecond) at
/// most this often once it rests on enough samples...
const REFRESH_NANOS: u64 = 100_000_000;
/// ...and every this many latencies (per thread) while it does not yet.
const FILLING_REFRESH_EVERY: u64 = 16;

/// When to send a hedge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// After a fixed time (the design sketch: 200 ms; 100 ms for database replicas).
    Fixed(Duration),
    /// After the `quantile` (e.g. 0.95) of recent latencies; `fallback` until at least
    /// `min_samples` latencies have been seen.
    Percentile {
        /// The quantile, within `(0, 1)`.
        quantile: f64,
        /// Samples needed before the percentile is trusted.
        min_samples: u64,
        /// The delay used until then.
        fallback: Duration,
    },
    /// When a hedge is predicted to be worth its load, from the recent latencies (a
    /// Kaplan-Meier curve: the primaries a hedge beat count as still running when it
    /// answered, so the tail hedging cuts off stays known): the earliest time at which a
    /// hedge sent then answers before the primary at least as often as not (a request
    /// still running then is more likely a straggler than not); an upstream
    /// without stragglers (a light tail) is never hedged for slowness. `fallback` until
    /// `min_samples` latencies have been seen. With [`HedgeBuilder::predict`], a success
    /// model also has to predict the hedge more likely to succeed than not. Unlike the
    /// other delays, a request that *fails* sends no hedge: failures are for the retry
    /// decision, which knows what failed.
    Predicted {
        /// Samples needed before the prediction is trusted.
        min_samples: u64,
        /// The delay used until then.
        fallback: Duration,
    },
}

/// The cached delay's value while it is the fallback.
const FALLBACK: u64 = u64::MAX;
/// The cached delay's value while no hedge is worth sending for slowness.
const NEVER: u64 = u64::MAX - 1;

/// Every request of a hedged call failed.
#[derive(Debug, Clone, PartialEq)]
pub struct AllFailed<E> {
    /// Each request's error, in the order they failed.
    pub errors: Vec<E>,
}

impl<E: fmt::Display> fmt::Display for AllFailed<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {} hedged requests failed", self.errors.len())?;
        if let Some(last) = self.errors.last() {
            write!(f, "; the last with: {last}")?;
        }
        Ok(())
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for AllFailed<E> {}

/// Sends hedged requests. Cloning shares its latency window and budget.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use retrywise::hedge::{Hedge, HedgeDelay};
///
/// let hedge = Hedge::builder().delay(HedgeDelay::Fixed(Duration::from_millis(100))).no_budget().build()?;
/// // The primary (0) would take a second; the hedge (1) answers in 10 ms.
/// let answer = hedge
///     .call(|i| async move {
///         let took = if i == 0 { 1000 } else { 10 };
///         tokio::time::sleep(Duration::from_millis(took)).await;
///         Ok::<_, std::io::Error>(i)
///     })
///     .await?;
/// assert_eq!(answer, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Hedge {
    shared: Arc<Shared>,
}

struct Shared {
    max_hedges: u32,
    delay: HedgeDelay,
    latencies: RollingLatency,
    /// The current hedge delay in nanoseconds ([`FALLBACK`], [`NEVER`]), refreshed from
    /// `latencies`.
    cached_nanos: AtomicU64,
    /// Latencies recorded while the delay is still the fallback; paces refreshes then.
    records: AtomicU64,
    /// When (nanoseconds since the latency window's origin) the delay is next recomputed.
    next_refresh: AtomicU64,
    budget: Option<HedgeBudget>,
    /// Hedges sent in the two most recent periods of the latency window, as
    /// `(period, count)`; the budget's ledger and the source of the hedge rate.
    sent: Mutex<[(u64, u64); 2]>,
    /// Primaries that ran into their timeout in an attempt that failed, recorded in the
    /// latency window as censored (a predicted delay learns from them) in the two most
    /// recent periods, as `sent`'s: no calls answered, so not of the budget's base.
    unanswered: Mutex<[(u64, u64); 2]>,
    hedges: Striped,
    /// Hedges counted in `hedges` that a breaker or bulkhead inside refused: not sent.
    unsent: Striped,
    hedge_wins: Striped,
    /// Hedges the success model held back.
    held_back: Striped,
    /// Asked before each hedge: is it predicted to succeed?
    model: Option<Arc<dyn SuccessModel>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("max_hedges", &self.max_hedges)
            .field("delay", &self.delay)
            .field("budget", &self.budget)
            .field("predicts", &self.model.is_some())
            .finish_non_exhaustive()
    }
}

/// Hedges may be at most `ratio` of the calls answered in the latency window (the current
/// and previous period) after a wait, plus `min_per_sec` per second of one period. The calls are the
/// latency histogram's own counts, so the budget adds nothing to a call that does not hedge.
#[derive(Debug)]
struct HedgeBudget {
    ratio: f64,
    min_per_sec: u32,
}

/// The hedges of `sent` that fall in the window ending in period `p`.
fn in_window(sent: &[(u64, u64); 2], p: u64) -> u64 {
    sent.iter()
        .filter(|(q, _)| *q <= p && p - *q <= 1)
        .map(|(_, n)| n)
        .sum()
}

impl Shared {
    /// The calls answered in the latency window as of `now`: its samples, less the
    /// unanswered primaries among them.
    fn answered_calls(&self, now: Instant) -> u64 {
        let p = self.latencies.period_of(now);
        let unanswered = in_window(
            &self.unanswered.lock().unwrap_or_else(|e| e.into_inner()),
            p,
        );
        self.latencies.count(now).saturating_sub(unanswered)
    }

    /// Counts a hedge about to be sent at `now`, if the budget allows it.
    fn spend(&self, now: Instant) -> bool {
        let p = self.latencies.period_of(now);
        let allowance = self.budget.as_ref().map(|b| {
            let floor = f64::from(b.min_per_sec) * self.latencies.period().as_secs_f64();
            floor + b.ratio * self.answered_calls(now) as f64
        });
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(allowance) = allowance
            && (in_window(&sent, p) + 1) as f64 > allowance + 1e-9
        {
            return false;
        }
        let slot = &mut sent[(p % 2) as usize];
        if slot.0 != p {
            *slot = (p, 0);
        }
        slot.1 += 1;
        true
    }

    /// Takes back a hedge [`spend`](Self::spend) counted at `now` and that was not sent.
    fn unspend(&self, now: Instant) {
        let p = self.latencies.period_of(now);
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut sent[(p % 2) as usize];
        if slot.0 == p {
            slot.1 = slot.1.saturating_sub(1);
        }
    }
}

/// A point-in-time view of a [`Hedge`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HedgeMetrics {
    /// Hedges sent, in all.
    pub hedges: u64,
    /// Calls a hedge answered first, in all.
    pub hedge_wins: u64,
    /// Calls answered within the latency window, after a wait (an answer on the primary's
    /// first poll is no sample, and no call a hedge could race).
    pub window_calls: u64,
    /// Hedges sent within the latency window.
    pub window_hedges: u64,
    /// `window_hedges / window_calls`: the extra load now.
    pub hedge_rate: f64,
    /// The delay a call starting now would wait before hedging; `None` when no hedge
    /// is worth sending for slowness now ([`HedgeDelay::Predicted`]).
    #[serde(rename = "current_delay_ms", serialize_with = "serialize_opt_ms")]
    pub current_delay: Option<Duration>,
    /// Hedges the success model held back as unlikely to succeed ([`HedgeBuilder::predict`]).
    pub held_back: u64,
}

fn serialize_opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => crate::attempt::serialize_ms(d, s),
        None => s.serialize_none(),
    }
}

impl Hedge {
    /// A builder: one hedge after the p95 (100 ms until 20 samples), a budget of 5 % plus
    /// a floor of [`DEFAULT_MIN_HEDGES_PER_SEC`] per second of one period over the
    /// two-period window (half a hedge a second).
    pub fn builder() -> HedgeBuilder {
        HedgeBuilder {
            max_hedges: 1,
            delay: HedgeDelay::Percentile {
                quantile: 0.95,
                min_samples: 20,
                fallback: Duration::from_millis(100),
            },
            window: Duration::from_secs(10),
            budget: Some((0.05, DEFAULT_MIN_HEDGES_PER_SEC)),
            model: None,
            unstriped: false,
        }
    }

    /// The delay before a hedge for a call starting now; `None` when no hedge is worth
    /// sending for slowness ([`HedgeDelay::Predicted`]: a request that fails still
    /// hedges at once).
    pub fn current_delay(&self) -> Option<Duration> {
        let s = &*self.shared;
        match s.delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Percentile { fallback, .. } | HedgeDelay::Predicted { fallback, .. } => {
                match s.cached_nanos.load(Ordering::Relaxed) {
                    FALLBACK => Some(fallback),
                    NEVER => None,
                    n => Some(Duration::from_nanos(n)),
                }
            }
        }
    }

    /// Records the latency of a request that answered (the policy calls this for every
    /// call a primary answered), feeding the percentile or the prediction.
    pub fn record_latency(&self, now: Instant, latency: Duration) {
        let since = self.shared.latencies.record(now, latency);
        self.refresh(now, since);
    }

    /// Records a primary that a hedge beat, cancelled after `running`: for the percentile,
    /// the time to the call's first answer; for the prediction, a latency known to be
    /// longer than `running`.
    pub fn record_beaten(&self, now: Instant, running: Duration) {
        let since = self.shared.latencies.record_censored(now, running);
        self.refresh(now, since);
    }

    /// Records a primary that ran `running` into its timeout in an attempt that failed
    /// (no request of its call succeeded; a hedge may have answered with a failure). A
    /// predicted delay ([`HedgeDelay::Predicted`]) learns from it a latency
    /// known to be longer than that (censored; without it a hedge whose hedges were not
    /// sent, or failed, would never learn that some requests hang); a percentile of the
    /// time to a call's first answer has no answer to count, and is left as it is.
    /// It is no call answered: the hedge budget's base ("the calls answered in the
    /// window") does not grow with it, so an upstream that hangs earns no hedges.
    pub fn record_unanswered(&self, now: Instant, running: Duration) {
        if matches!(self.shared.delay, HedgeDelay::Predicted { .. }) {
            let s = &*self.shared;
            let since = s.latencies.record_censored(now, running);
            let p = s.latencies.period_of(now);
            {
                let mut unanswered = s.unanswered.lock().unwrap_or_else(|e| e.into_inner());
                let slot = &mut unanswered[(p % 2) as usize];
                if slot.0 != p {
                    *slot = (p, 0);
                }
                slot.1 += 1;
            }
            self.refresh(now, since);
        }
    }

    /// Whether a hedge of the request in `ctx` is worth sending by the success model (at
    /// least as likely to succeed as not); true without a model or when it answers NaN.
    /// A [`Policy`](crate::policy::Policy) asks it, with the attempt's context, before the
    /// budgets; [`call`](Self::call) has no context and does not.
    pub fn worth_sending(&self, ctx: &crate::attempt::AttemptContext) -> bool {
        let Some(m) = &self.shared.model else {
            return true;
        };
        let p = m.p_success(ctx);
        if p < 0.5 {
            self.shared.held_back.add(1);
            return false;
        }
        true
    }

    /// Recomputes the cached delay from the window when it is due.
    fn refresh(&self, now: Instant, since: u64) {
        let s = &*self.shared;
        let min_samples = match s.delay {
            HedgeDelay::Fixed(_) => return,
            HedgeDelay::Percentile { min_samples, .. }
            | HedgeDelay::Predicted { min_samples, .. } => min_samples,
        };
        let filling = s.cached_nanos.load(Ordering::Relaxed) == FALLBACK;
        let next = s.next_refresh.load(Ordering::Relaxed);
        let due = if filling {
            s.records
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(FILLING_REFRESH_EVERY)
        } else {
            since >= next
                && s.next_refresh
                    .compare_exchange(
                        next,
                        since.saturating_add(REFRESH_NANOS),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
        };
        if due {
            let nanos = |d: Duration| {
                u64::try_from(d.as_nanos())
                    .unwrap_or(NEVER - 1)
                    .min(NEVER - 1)
            };
            let v = match s.delay {
                HedgeDelay::Percentile { quantile, .. } => {
                    match s.latencies.quantile(now, quantile) {
                        Some((d, n)) if n >= min_samples => nanos(d),
                        _ => FALLBACK,
                    }
                }
                _ => match s.latencies.hedge_delay(now) {
                    Some((Some(d), n)) if n >= min_samples => nanos(d),
                    Some((None, n)) if n >= min_samples => NEVER,
                    _ => FALLBACK,
                },
            };
            s.cached_nanos.store(v, Ordering::Relaxed);
            if filling {
                s.next_refresh
                    .store(since.saturating_add(REFRESH_NANOS), Ordering::Relaxed);
            }
        }
    }

    /// The recent `q`-quantile of recorded latencies, with its sample count.
    pub fn latency_quantile(&self, q: f64) -> Option<(Duration, u64)> {
        self.shared.latencies.quantile(Instant::now(), q)
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> HedgeMetrics {
        let s = &*self.shared;
        let now = Instant::now();
        let window_calls = s.answered_calls(now);
        let window_hedges = {
            let sent = s.sent.lock().unwrap_or_else(|e| e.into_inner());
            in_window(&sent, s.latencies.period_of(now))
        };
        HedgeMetrics {
            // (Read first: every hedge it counts was counted in `hedges` before.)
            hedges: {
                let unsent = s.unsent.get();
                s.hedges.get().saturating_sub(unsent)
            },
            hedge_wins: s.hedge_wins.get(),
            window_calls,
            window_hedges,
            hedge_rate: if window_calls == 0 {
                0.0
            } else {
                window_hedges as f64 / window_calls as f64
            },
            current_delay: self.current_delay(),
            held_back: s.held_back.get(),
        }
    }

    /// Runs a hedged call. `make(i)` starts request `i` (0 is the primary, 1.. the
    /// hedges). An `Ok` is an answer and wins; an `Err` is a failure, and the call goes on
    /// waiting for the requests still running.
    ///
    /// The timer is armed only if the primary is not ready on its first poll, so calls
    /// that answer at once cost no timer and no allocation. Requires a tokio runtime with
    /// time enabled when a request has to wait.
    ///
    /// # Errors
    /// [`AllFailed`] with every request's error when none answered.
    pub async fn call<F, Fut, T, E>(&self, make: F) -> Result<T, AllFailed<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_backing_off(make, |_| false).await
    }

    /// [`call`](Self::call), sending no hedge at once after a failure `backs_off` says to
    /// back off from (a refusal by a breaker or bulkhead inside: nothing was sent, and a
    /// request at once would be refused the same way).
    pub(crate) async fn call_backing_off<F, Fut, T, E>(
        &self,
        make: F,
        backs_off: impl Fn(&E) -> bool,
    ) -> Result<T, AllFailed<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let start = Instant::now();
        let mut make = make;
        let tagged = |i| {
            let request = make(i);
            async move { request.await.map(|v| (v, i)) }
        };
        // (A refusal inside is no request sent: a hedge refused so is taken back.)
        let ((v, winner), at_once, beaten) = self
            .race(start, tagged, None, |_| true, &backs_off, &backs_off)
            .await?;
        // An answer on the first poll could not have been hedged (a cache's hit): it is
        // no sample of the latency a hedge waits out, and would drag the percentile to 0.
        // A primary that failed before a hedge answered is none either (it was not slow).
        if !at_once {
            let now = Instant::now();
            let took = now.saturating_duration_since(start);
            if winner == 0 {
                self.record_latency(now, took);
            } else if beaten {
                self.record_beaten(now, took);
            }
        }
        Ok(v)
    }

    /// The race itself, for a call that started at `start`: reads the clock only to send a
    /// hedge, and records no latency (the caller records the call's, with the clock
    /// reading it already has). Before each hedge: with a context, the success model
    /// ([`worth_sending`](Self::worth_sending), which spends nothing) first; then the
    /// hedge's own budget; then `may_send` (a policy's bulkhead room, and its retry budget,
    /// which throttles hedges too, as gRFC A6 says); a refusal there gives the hedge
    /// budget back and ends the attempt's hedging. A hedge that fails as `unsent` says
    /// (refused inside, by a breaker or bulkhead: nothing reached the upstream) is taken
    /// back too: its share of the hedge budget, and its count as sent.
    ///
    /// A request that fails while nothing else is running sends the next hedge at once,
    /// without waiting for the hedge delay (as gRPC's hedging and Polly do): the delay is
    /// for slow requests, not failed ones.
    ///
    /// The answer comes with whether the primary gave it on its first poll (then nothing
    /// could have been hedged, and the caller records no latency), and whether the primary
    /// was still running when a hedge answered (beaten: its latency is at least the
    /// call's time to that answer; one that had failed is no such sample).
    pub(crate) async fn race<F, Fut, T, E>(
        &self,
        start: Instant,
        mut make: F,
        ctx: Option<&crate::attempt::AttemptContext>,
        mut may_send: impl FnMut(Instant) -> bool,
        backs_off: impl Fn(&E) -> bool,
        unsent: impl Fn(&E) -> bool,
    ) -> Result<(T, bool, bool), AllFailed<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let s = &*self.shared;
        let primary = make(0);
        let mut primary = pin!(primary);
        let mut errors = Vec::new();
        // Fast path: most primaries answer on their first poll, before any hedging state
        // is needed.
        let first = std::future::poll_fn(|cx| Poll::Ready(primary.as_mut().poll(cx))).await;
        let mut primary_running = match first {
            Poll::Ready(Ok(v)) => return Ok((v, true, false)),
            Poll::Ready(Err(e)) => {
                errors.push(e);
                false
            }
            Poll::Pending => true,
        };
        let mut hedges: Option<FuturesUnordered<Fut>> = None;
        let mut timer: Option<Pin<Box<Sleep>>> = None;
        let mut launched = 1u32;
        // When the last hedge was counted (a refusal inside comes back at once: it is that
        // hedge's).
        let mut spent_at = start;
        let mut may_hedge = s.max_hedges > 0;
        // Whether the race ever waited: a primary that failed at once and a hedge that
        // answered at once are an answer on the first poll too.
        let mut waited = false;
        let raced = std::future::poll_fn(|cx| {
            let mut poll = || loop {
                if primary_running && let Poll::Ready(r) = primary.as_mut().poll(cx) {
                    primary_running = false;
                    match r {
                        Ok(v) => return Poll::Ready(Ok(v)),
                        Err(e) => errors.push(e),
                    }
                }
                if let Some(set) = hedges.as_mut() {
                    while let Poll::Ready(Some(r)) = set.poll_next_unpin(cx) {
                        match r {
                            Ok(v) => {
                                s.hedge_wins.add(1);
                                return Poll::Ready(Ok(v));
                            }
                            Err(e) => {
                                if unsent(&e) {
                                    s.unspend(spent_at);
                                    s.unsent.add(1);
                                }
                                errors.push(e);
                            }
                        }
                    }
                }
                let running = primary_running || hedges.as_ref().is_some_and(|h| !h.is_empty());
                if !may_hedge {
                    if running {
                        return Poll::Pending;
                    }
                    return Poll::Ready(Err(AllFailed {
                        errors: std::mem::take(&mut errors),
                    }));
                }
                // While a request runs, the next hedge waits for the delay (or, when no
                // hedge is worth sending for slowness, for a failure); once every request
                // has failed, it goes at once.
                if running {
                    if timer.is_none() {
                        match self.current_delay() {
                            Some(d) => timer = Some(Box::pin(tokio::time::sleep_until(start + d))),
                            None => return Poll::Pending,
                        }
                    }
                    if let Some(t) = timer.as_mut()
                        && t.as_mut().poll(cx).is_pending()
                    {
                        return Poll::Pending;
                    }
                } else if matches!(s.delay, HedgeDelay::Predicted { .. })
                    || errors.iter().any(&backs_off)
                {
                    // A predictive hedge is for slowness: a failure goes back to the
                    // caller's retry decision, which knows what failed. So does a
                    // failure that asked the caller to back off (a 429, a Retry-After),
                    // whichever request failed last: a request sent at once would go
                    // against what it asked.
                    may_hedge = false;
                    continue;
                }
                let now = Instant::now();
                if ctx.is_some_and(|c| !self.worth_sending(c)) || !s.spend(now) {
                    may_hedge = false;
                    continue;
                }
                // The caller's budget refused it: no hedge was sent, and none is counted
                // against the hedge budget (it went on refusing hedges for a window).
                if !may_send(now) {
                    s.unspend(now);
                    may_hedge = false;
                    continue;
                }
                s.hedges.add(1);
                spent_at = now;
                hedges
                    .get_or_insert_with(FuturesUnordered::new)
                    .push(make(launched));
                launched += 1;
                may_hedge = launched <= s.max_hedges;
                if may_hedge {
                    match (self.current_delay(), timer.as_mut()) {
                        (Some(d), Some(t)) => t.as_mut().reset(now + d),
                        (Some(d), None) => {
                            timer = Some(Box::pin(tokio::time::sleep_until(now + d)))
                        }
                        (None, _) => timer = None,
                    }
                }
            };
            let polled = poll();
            waited |= polled.is_pending();
            polled
        })
        .await;
        raced.map(|v| (v, !waited, primary_running))
    }
}

/// The most hedges a call may send (gRPC allows at most 5 attempts: 4 hedges). A request
/// that fails at once sends the next at once, so a large number would be a burst of
/// requests from one call.
pub const MAX_HEDGES: u32 = 16;

/// Builds a [`Hedge`].
#[derive(Clone)]
pub struct HedgeBuilder {
    max_hedges: u32,
    delay: HedgeDelay,
    window: Duration,
    budget: Option<(f64, u32)>,
    model: Option<Arc<dyn SuccessModel>>,
    unstriped: bool,
}

impl fmt::Debug for HedgeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeBuilder")
            .field("max_hedges", &self.max_hedges)
            .field("delay", &self.delay)
            .field("window", &self.window)
            .field("budget", &self.budget)
            .field("predicts", &self.model.is_some())
            .field("unstriped", &self.unstriped)
            .finish()
    }
}

impl HedgeBuilder {
    /// Hedges per call at most, up to [`MAX_HEDGES`]. Defaults to 1.
    pub fn max_hedges(mut self, n: u32) -> Self {
        self.max_hedges = n;
        self
    }

    /// When to hedge. Defaults to the p95 of recent latencies (100 ms until 20 samples).
    pub fn delay(mut self, d: HedgeDelay) -> Self {
        self.delay = d;
        self
    }

    /// How long a latency stays in the percentile: between one and two of these periods.
    /// Defaults to 10 s.
    pub fn latency_window(mut self, d: Duration) -> Self {
        self.window = d;
        self
    }

    /// Hedges may be at most `ratio` of the calls answered in the latency window after a
    /// wait, plus `min_per_sec` per second of one period (the window holds two: half of
    /// `min_per_sec` a second). Defaults to 5 % and [`DEFAULT_MIN_HEDGES_PER_SEC`] (1).
    pub fn budget(mut self, ratio: f64, min_per_sec: u32) -> Self {
        self.budget = Some((ratio, min_per_sec));
        self
    }

    /// Hedges by prediction: the delay [`HedgeDelay::Predicted`] (100 ms until 100
    /// latencies), and before each hedge `model` is asked — a [`Policy`] asks it with the
    /// attempt's context, the target's health included — whether the hedge is at least
    /// as likely to succeed as not; one that is not is held back (a hedge into a failing
    /// upstream is load without gain). Defaults to none.
    ///
    /// [`Policy`]: crate::policy::Policy
    pub fn predict(mut self, model: Arc<dyn SuccessModel>) -> Self {
        self.delay = HedgeDelay::Predicted {
            min_samples: 100,
            fallback: Duration::from_millis(100),
        };
        self.model = Some(model);
        self
    }

    /// Hedge without a budget (for tests, or when the upstream is known to be idle).
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Keeps the latency histogram unstriped: each latency an atomic add to one shared
    /// row rather than a plain store in its thread's own, in 1/17 of the memory (some
    /// 10 KiB instead of 161 KiB) — for a process that keeps a hedge per target (a
    /// service's fleet view) rather than one per hot path. Defaults to striped.
    pub fn unstriped(mut self) -> Self {
        self.unstriped = true;
        self
    }

    /// Checks and builds.
    ///
    /// # Errors
    /// A zero fixed delay or fallback (every call would hedge at once); a quantile outside
    /// `(0, 1)` or NaN; a zero latency window; a budget ratio outside `[0, 1]` or NaN; a
    /// delay, fallback or window beyond [`crate::MAX_CONFIG_DURATION`]; more than
    /// [`MAX_HEDGES`] hedges.
    pub fn build(self) -> Result<Hedge, ConfigError> {
        if self.max_hedges > MAX_HEDGES {
            return Err(CHECK.err(
                "max_hedges",
                format!(
                    "at most {MAX_HEDGES} (each failing at once sends the next), got {}",
                    self.max_hedges
                ),
            ));
        }
        match self.delay {
            HedgeDelay::Fixed(d) => CHECK.positive("delay", d)?,
            HedgeDelay::Percentile {
                quantile, fallback, ..
            } => {
                if !(quantile > 0.0 && quantile < 1.0) {
                    return Err(CHECK.err(
                        "delay",
                        format!("quantile must be within (0, 1), got {quantile}"),
                    ));
                }
                CHECK.positive("delay", fallback)?;
            }
            HedgeDelay::Predicted { fallback, .. } => CHECK.positive("delay", fallback)?,
        }
        CHECK.positive("latency_window", self.window)?;
        let budget = match self.budget {
            Some((ratio, min_per_sec)) => {
                CHECK.in_range("budget", ratio, 0.0, 1.0)?;
                Some(HedgeBudget { ratio, min_per_sec })
            }
            None => None,
        };
        Ok(Hedge {
            shared: Arc::new(Shared {
                max_hedges: self.max_hedges,
                delay: self.delay,
                latencies: if self.unstriped {
                    RollingLatency::unstriped(self.window)
                } else {
                    RollingLatency::new(self.window)
                },
                cached_nanos: AtomicU64::new(u64::MAX),
                records: AtomicU64::new(0),
                next_refresh: AtomicU64::new(0),
                budget,
                sent: Mutex::new([(u64::MAX, 0); 2]),
                unanswered: Mutex::new([(u64::MAX, 0); 2]),
                hedges: Striped::default(),
                unsent: Striped::default(),
                hedge_wins: Striped::default(),
                held_back: Striped::default(),
                model: self.model,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;

    const MS: Duration = Duration::from_millis(1);

    fn fixed(ms: u64, max: u32) -> Hedge {
        Hedge::builder()
            .delay(HedgeDelay::Fixed(Duration::from_millis(ms)))
            .max_hedges(max)
            .no_budget()
            .build()
            .unwrap()
    }

    /// Marks, in a shared log, whether each request finished or was dropped first.
    struct Probe {
        i: u32,
        log: Arc<Mutex<Vec<(u32, &'static str)>>>,
        finished: bool,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            let what = if self.finished {
                "finished"
            } else {
                "cancelled"
            };
            self.log.lock().unwrap().push((self.i, what));
        }
    }

    fn request(
        i: u32,
        took: Duration,
        ok: bool,
        log: &Arc<Mutex<Vec<(u32, &'static str)>>>,
    ) -> impl Future<Output = Result<u32, String>> + use<> {
        let probe = Probe {
            i,
            log: Arc::clone(log),
            finished: false,
        };
        async move {
            let mut probe = probe;
            tokio::time::sleep(took).await;
            probe.finished = true;
            if ok {
                Ok(i)
            } else {
                Err(format!("request {i} failed"))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_fastest_answer_wins_and_the_rest_are_cancelled() {
        let h = fixed(100, 2);
        let log = Arc::new(Mutex::new(vec![]));
        let t0 = Instant::now();
        let lat = [1000u32, 500, 50];
        let r = h
            .call(|i| request(i, lat[i as usize] * MS, true, &log))
            .await;
        // Hedge 1 at 100 ms answers at 600; hedge 2 at 200 ms answers at 250.
        assert_eq!(r, Ok(2));
        assert_eq!(t0.elapsed(), 250 * MS);
        let mut log = log.lock().unwrap().clone();
        log.sort();
        assert_eq!(log, [(0, "cancelled"), (1, "cancelled"), (2, "finished")]);
        assert_eq!(h.metrics().hedges, 2);
        assert_eq!(h.metrics().hedge_wins, 1);
    }

    /// Latencies recorded centuries on (a clock past what the nanoseconds hold) overflow
    /// nothing (the next refresh's time panicked in a debug build).
    #[tokio::test(start_paused = true)]
    async fn latencies_recorded_centuries_on_overflow_nothing() {
        let h = Hedge::builder().build().unwrap();
        let far = Instant::now() + Duration::from_secs(600 * 365 * 86_400);
        for _ in 0..3 {
            h.record_latency(far, 10 * MS);
        }
        h.record_latency(Instant::now(), 10 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn quick_primaries_send_no_hedge() {
        let h = fixed(100, 3);
        let log = Arc::new(Mutex::new(vec![]));
        assert_eq!(h.call(|i| request(i, 99 * MS, true, &log)).await, Ok(0));
        assert_eq!(h.metrics().hedges, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn all_failures_are_reported() {
        let h = fixed(10, 2);
        let log = Arc::new(Mutex::new(vec![]));
        let err = h
            .call(|i| request(i, 50 * MS, false, &log))
            .await
            .unwrap_err();
        assert_eq!(
            err.errors,
            ["request 0 failed", "request 1 failed", "request 2 failed"]
        );
        assert!(err.to_string().contains("all 3 hedged requests failed"));
    }

    /// A request that fails while another is still running does not end the call: the
    /// primary fails at 50 ms, the hedge sent at 10 ms answers at 60 ms.
    #[tokio::test(start_paused = true)]
    async fn a_failure_waits_for_the_others() {
        let h = fixed(10, 1);
        let log = Arc::new(Mutex::new(vec![]));
        let t0 = Instant::now();
        let r = h.call(|i| request(i, 50 * MS, i == 1, &log)).await;
        assert_eq!(r, Ok(1), "the primary failed at 50 ms; the hedge answered");
        assert_eq!(t0.elapsed(), 60 * MS);
        assert_eq!(h.metrics().hedges, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_before_the_delay_sends_the_next_hedge_at_once() {
        let h = fixed(100, 1);
        let log = Arc::new(Mutex::new(vec![]));
        let t0 = Instant::now();
        // The primary fails after 10 ms, long before the 100 ms hedge delay.
        let r = h
            .call(|i| request(i, if i == 0 { 10 * MS } else { 5 * MS }, i == 1, &log))
            .await;
        assert_eq!(r, Ok(1), "the hedge answered");
        assert_eq!(t0.elapsed(), 15 * MS, "sent at 10 ms, not at 100 ms");
        assert_eq!(h.metrics().hedges, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_hedge_with_the_default_budget_hedges() {
        let h = Hedge::builder()
            .delay(HedgeDelay::Fixed(10 * MS))
            .build()
            .unwrap();
        let log = Arc::new(Mutex::new(vec![]));
        let r = h
            .call(|i| request(i, if i == 0 { 100 * MS } else { 5 * MS }, true, &log))
            .await;
        assert_eq!(
            r,
            Ok(1),
            "no call answered yet, yet the floor allows a hedge"
        );
        assert_eq!(h.metrics().hedges, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn percentile_delay_follows_the_latencies() {
        let h = Hedge::builder()
            .delay(HedgeDelay::Percentile {
                quantile: 0.9,
                min_samples: 50,
                fallback: 7 * MS,
            })
            .no_budget()
            .build()
            .unwrap();
        assert_eq!(h.current_delay(), Some(7 * MS));
        for i in 0..=200u64 {
            h.record_latency(Instant::now(), Duration::from_millis(i % 100 + 1));
        }
        // Recomputed while filling, then at most every 100 ms.
        let d = h.current_delay().unwrap();
        assert!(
            d > 7 * MS && d < 88 * MS,
            "from the first 64 samples: {d:?}"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        h.record_latency(Instant::now(), Duration::from_millis(50));
        let d = h.current_delay().unwrap();
        assert!((88 * MS..=95 * MS).contains(&d), "{d:?}");
    }

    /// A primary that ran into its timeout in an attempt that failed teaches a predicted
    /// delay that some requests hang, but is no call answered: the budget's base, and the
    /// metrics' calls in the window, do not grow with it - an upstream that hangs earned
    /// hedges with every timeout (5 % of one each).
    #[tokio::test(start_paused = true)]
    async fn unanswered_primaries_earn_no_hedges() {
        let h = Hedge::builder()
            .delay(HedgeDelay::Predicted {
                min_samples: 10,
                fallback: 7 * MS,
            })
            .budget(0.05, 0)
            .build()
            .unwrap();
        let now = Instant::now();
        for _ in 0..40 {
            h.record_latency(now, 10 * MS);
        }
        for _ in 0..400 {
            h.record_unanswered(now, Duration::from_secs(1));
        }
        assert_eq!(h.metrics().window_calls, 40);
        // 5 % of 40 calls: two hedges, not twenty-two.
        let spent = (0..30).filter(|_| h.shared.spend(now)).count();
        assert_eq!(spent, 2);
    }

    /// Answers on the first poll (a cache's hits) are no samples of the latency a hedge
    /// waits out: 95 % of them would make the p95 zero and hedge every miss at once.
    #[tokio::test(start_paused = true)]
    async fn answers_on_the_first_poll_do_not_set_the_delay() {
        let h = Hedge::builder()
            .delay(HedgeDelay::Percentile {
                quantile: 0.95,
                min_samples: 10,
                fallback: 7 * MS,
            })
            .no_budget()
            .build()
            .unwrap();
        let log = Arc::new(Mutex::new(vec![]));
        for i in 0..400u32 {
            if i % 20 == 0 {
                // A miss: 40 ms upstream.
                let r = h.call(|j| request(j, 40 * MS, true, &log)).await;
                assert!(r.is_ok());
            } else {
                let r = h.call(|j| async move { Ok::<u32, String>(j) }).await;
                assert_eq!(r, Ok(0));
            }
            tokio::time::advance(MS).await;
        }
        assert_eq!(h.metrics().window_calls, 20, "only the misses are samples");
        let d = h.current_delay().unwrap();
        assert!(d >= 35 * MS, "the misses' own p95, not 0: {d:?}");
        // A primary that fails at once sends its hedge at once; answered at once, that is
        // no sample either (the primary was not beaten: it failed).
        let hedges = h.metrics().hedges;
        let r = h
            .call(|j| async move {
                if j == 0 {
                    Err("refused".to_owned())
                } else {
                    Ok(j)
                }
            })
            .await;
        assert_eq!(r, Ok(1));
        assert_eq!(h.metrics().hedges, hedges + 1);
        assert_eq!(h.metrics().window_calls, 20);
        // Nor is a primary that failed after a while, its hedge answering later: it was
        // not slow, and a "slower than the hedge's answer" would weigh the tail (it was
        // counted as beaten).
        let r = h
            .call(|j| async move {
                tokio::time::sleep(if j == 0 { 10 * MS } else { 20 * MS }).await;
                if j == 0 {
                    Err("reset".to_owned())
                } else {
                    Ok(j)
                }
            })
            .await;
        assert_eq!(r, Ok(1));
        assert_eq!(h.metrics().window_calls, 20);
    }

    fn predicted() -> Hedge {
        Hedge::builder()
            .delay(HedgeDelay::Predicted {
                min_samples: 100,
                fallback: 7 * MS,
            })
            .no_budget()
            .build()
            .unwrap()
    }

    /// Latencies of a lognormal body (median 20 ms, shape 0.2) from a fixed sequence of
    /// uniforms, with every `straggle`-th one 100 times slower.
    fn body_and_stragglers(h: &Hedge, n: u64, straggle: Option<u64>) {
        let rng = crate::random::RandomSource::seeded(7);
        for i in 0..n {
            // Box-Muller.
            let (u1, u2) = (rng.next_f64().max(1e-12), rng.next_f64());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let mut ms = 20.0 * (0.2 * z).exp();
            if straggle.is_some_and(|k| i % k == 0) {
                ms *= 100.0;
            }
            h.record_latency(Instant::now(), Duration::from_secs_f64(ms / 1000.0));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_light_tail_is_never_hedged_for_slowness() {
        let h = predicted();
        assert_eq!(
            h.current_delay(),
            Some(7 * MS),
            "the fallback until 100 samples"
        );
        body_and_stragglers(&h, 5_000, None);
        tokio::time::advance(Duration::from_millis(100)).await;
        h.record_latency(Instant::now(), 20 * MS);
        assert_eq!(
            h.current_delay(),
            None,
            "a slow request is as slow as a hedge would be"
        );
        // A primary that is slow is waited for, one that fails is not hedged.
        let started = Instant::now();
        let got = h
            .call(|i| async move {
                tokio::time::sleep(if i == 0 { 500 * MS } else { MS }).await;
                Ok::<_, String>(i)
            })
            .await
            .unwrap();
        assert_eq!((got, started.elapsed()), (0, 500 * MS));
        let failed = h
            .call(|i| async move {
                if i == 0 {
                    Err("refused".to_owned())
                } else {
                    Ok(i)
                }
            })
            .await
            .unwrap_err();
        assert_eq!(
            failed.errors.len(),
            1,
            "a failure is the retry decision's, not the hedge's"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stragglers_are_hedged_between_the_body_and_the_tail() {
        let h = predicted();
        body_and_stragglers(&h, 10_000, Some(100));
        tokio::time::advance(Duration::from_millis(100)).await;
        h.record_latency(Instant::now(), 20 * MS);
        let d = h.current_delay().expect("stragglers are worth hedging");
        // Past nearly all of the body (its p99 is 32 ms), long before a straggler (2 s):
        // a request still running then is more likely a straggler than not.
        assert!(d > 28 * MS && d < 40 * MS, "{d:?}");
        // Hedges beat the stragglers from now on: the beaten primaries are recorded as
        // still running when the hedge answered, so the tail stays known and the delay
        // stays put.
        tokio::time::advance(Duration::from_secs(10)).await;
        let rng = crate::random::RandomSource::seeded(9);
        for i in 0..10_000u64 {
            let (u1, u2) = (rng.next_f64().max(1e-12), rng.next_f64());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let ms = 20.0 * (0.2 * z).exp();
            let took = Duration::from_secs_f64(ms / 1000.0);
            if i % 100 == 0 {
                h.record_beaten(Instant::now(), d + took);
            } else {
                h.record_latency(Instant::now(), took);
            }
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        h.record_latency(Instant::now(), 20 * MS);
        let again = h.current_delay().expect("still worth hedging");
        assert!(again > 28 * MS && again < 40 * MS, "{again:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_holds_back_hedges_it_predicts_to_fail() {
        let p = Arc::new(std::sync::atomic::AtomicU64::new(0.9f64.to_bits()));
        let model = {
            let p = Arc::clone(&p);
            move |_: &crate::attempt::AttemptContext| {
                f64::from_bits(p.load(std::sync::atomic::Ordering::Relaxed))
            }
        };
        let h = Hedge::builder()
            .predict(Arc::new(model))
            .no_budget()
            .build()
            .unwrap();
        let ctx = crate::attempt::AttemptContext::first(Arc::from("api"));
        assert!(h.worth_sending(&ctx));
        p.store(0.3f64.to_bits(), std::sync::atomic::Ordering::Relaxed);
        assert!(!h.worth_sending(&ctx));
        assert_eq!(h.metrics().held_back, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_hedges() {
        let h = Hedge::builder()
            .delay(HedgeDelay::Fixed(MS))
            .budget(0.1, 0)
            .build()
            .unwrap();
        let log = Arc::new(Mutex::new(vec![]));
        for _ in 0..100 {
            h.call(|i| request(i, 10 * MS, true, &log)).await.unwrap();
        }
        let m = h.metrics();
        assert_eq!(m.window_calls, 100);
        assert!(m.hedges <= 10, "{m:?}");
        assert!(m.hedges >= 9, "{m:?}");
        assert_eq!(m.window_hedges, m.hedges);
        assert!((m.hedge_rate - m.hedges as f64 / 100.0).abs() < 1e-12);
    }

    #[test]
    fn refuses_bad_configuration() {
        let b = || Hedge::builder();
        assert_eq!(
            b().delay(HedgeDelay::Fixed(Duration::ZERO))
                .build()
                .unwrap_err()
                .field,
            "delay"
        );
        for q in [0.0, 1.0, f64::NAN] {
            let d = HedgeDelay::Percentile {
                quantile: q,
                min_samples: 1,
                fallback: MS,
            };
            assert_eq!(b().delay(d).build().unwrap_err().field, "delay");
        }
        assert_eq!(
            b().latency_window(Duration::ZERO)
                .build()
                .unwrap_err()
                .field,
            "latency_window"
        );
        assert_eq!(b().budget(-1.0, 0).build().unwrap_err().field, "budget");
        assert_eq!(
            b().max_hedges(MAX_HEDGES + 1).build().unwrap_err().field,
            "max_hedges"
        );
        assert!(b().max_hedges(MAX_HEDGES).build().is_ok());
        // A zero fallback hedges every call at once until the window fills; one beyond
        // any setting overflows the clock.
        for fallback in [Duration::ZERO, Duration::MAX] {
            let d = HedgeDelay::Percentile {
                quantile: 0.95,
                min_samples: 1,
                fallback,
            };
            assert_eq!(b().delay(d).build().unwrap_err().field, "delay");
            let d = HedgeDelay::Predicted {
                min_samples: 1,
                fallback,
            };
            assert_eq!(b().delay(d).build().unwrap_err().field, "delay");
        }
        assert_eq!(
            b().delay(HedgeDelay::Fixed(Duration::MAX))
                .build()
                .unwrap_err()
                .field,
            "delay"
        );
    }

    proptest! {
        /// Whatever the latencies and failures: at most 1 + max_hedges requests start, the
        /// answer is the first success in time, and when the call returns nothing is left
        /// running — every other request finished or was cancelled.
        #[test]
        fn the_winner_is_first_and_losers_are_cancelled(
            reqs in prop::collection::vec((1u64..500, any::<bool>()), 4),
            delay in 1u64..200,
            max_hedges in 0u32..4,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let h = fixed(delay, max_hedges);
                let log = Arc::new(Mutex::new(vec![]));
                let started = Arc::new(Mutex::new(vec![]));
                let t0 = Instant::now();
                let r = h.call(|i| {
                    started.lock().unwrap().push((i, t0.elapsed()));
                    let (ms, ok) = reqs[i as usize];
                    request(i, Duration::from_millis(ms), ok, &log)
                }).await;
                let started = started.lock().unwrap().clone();
                prop_assert!(started.len() as u32 <= 1 + max_hedges);
                // When each request would have finished.
                let ends: Vec<(u32, Duration, bool)> = started.iter()
                    .map(|(i, at)| (*i, *at + Duration::from_millis(reqs[*i as usize].0), reqs[*i as usize].1))
                    .collect();
                let first_ok = ends.iter().filter(|e| e.2).min_by_key(|e| (e.1, e.0));
                match (r, first_ok) {
                    (Ok(i), Some(w)) => {
                        prop_assert_eq!(t0.elapsed(), w.1);
                        prop_assert_eq!(ends[i as usize].1, w.1);
                    }
                    (Err(e), None) => prop_assert_eq!(e.errors.len(), started.len()),
                    (r, w) => prop_assert!(false, "got {:?}, expected winner {:?}", r, w),
                }
                let log = log.lock().unwrap();
                prop_assert_eq!(log.len(), started.len(), "every request ended or was dropped");
                for (i, what) in log.iter() {
                    let end = ends[*i as usize].1;
                    if *what == "cancelled" {
                        prop_assert!(end > t0.elapsed() || (end == t0.elapsed()), "request {} was cancelled", i);
                    } else {
                        prop_assert!(end <= t0.elapsed());
                    }
                }
                Ok(())
            })?;
        }
    }
}
