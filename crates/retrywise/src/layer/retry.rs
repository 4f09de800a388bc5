//! Retries as a tower layer: the retry loop of a [`Policy`], without boxing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::{BoxError, Error, GaveUp, refused_inside};
use crate::attempt::{AttemptContext, Classifier, ErrorKind, Failure, Verdict};
use crate::policy::{Policy, RecordGuard};
use crate::retry::StopReason;
use crate::timeout::{Elapsed, Timeout};

/// Retries calls of the wrapped service with the retry loop of a [`Policy`]: its
/// [`RetryDecider`](crate::retry::RetryDecider), budget, client-side throttle, exploration,
/// health tracking, per-attempt timeouts and recording — the very steps
/// [`Policy::call`] takes, so a service behind this layer retries, records and throttles
/// as an embedded policy does. Requests must be `Clone`.
///
/// The policy's breaker, bulkhead and hedge, if it has any, are not applied here: stack
/// their own layers, or use [`PolicyLayer`](super::PolicyLayer) for the whole composition.
/// A request a retrywise layer inside refuses unsent (its error holds a
/// [`CircuitOpen`](crate::breaker::CircuitOpen) or a
/// [`BulkheadFull`](crate::bulkhead::BulkheadFull), or is the [`GaveUp`] of a retry or
/// policy layer inside that made no attempt) is no attempt: nothing is recorded, and the
/// call stops with that reason ([`GaveUp`]), as `Policy::call` does. A retry's
/// wait for the service to be ready counts within its attempt timeout.
///
/// When the service answers with a response the classifier judges a failure and the
/// policy stops, that response is returned (as tower's retry does).
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use retrywise::layer::RetryLayer;
/// use retrywise::policy::Policy;
/// use retrywise::retry::RetryRules;
/// use tower::{Layer, Service, ServiceExt};
///
/// let policy = Policy::builder("users").retry(RetryRules::builder().max_attempts(3).build()?).build()?;
/// let calls = AtomicU32::new(0);
/// let flaky = tower::service_fn(|id: u32| {
///     let n = calls.fetch_add(1, Ordering::SeqCst);
///     async move {
///         if n == 0 { Err(std::io::Error::other("blip")) } else { Ok(id * 2) }
///     }
/// });
/// let mut svc = RetryLayer::new(policy).layer(flaky);
/// assert_eq!(svc.ready().await?.call(21).await?, 42);
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// # Ok(()) }
/// ```
pub struct RetryLayer<C> {
    policy: Policy<C>,
}

impl<C: Clone> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy.clone(),
        }
    }
}

impl<C> std::fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("target", self.policy.target())
            .finish()
    }
}

impl<C> RetryLayer<C> {
    /// Retries with the retry loop of `policy`, shared among every service the layer
    /// wraps.
    pub fn new(policy: Policy<C>) -> Self {
        Self { policy }
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// A service whose failed calls are retried.
pub struct RetryService<S, C> {
    inner: S,
    policy: Policy<C>,
}

impl<S: Clone, C: Clone> Clone for RetryService<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for RetryService<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryService")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, C, Req> Service<Req> for RetryService<S, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    C: Classifier<S::Response, S::Error> + Clone,
    Req: Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = RetryFuture<S, Req, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::new)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let start = Instant::now();
        let policy = self.policy.clone();
        let p = policy.inner();
        // The service the future keeps for its retries. When the first attempt is not
        // sent now, the readiness `poll_ready` reserved goes with the future (which sends
        // it later) or is let go (a refusal): kept in `self`, it could hold the only slot
        // of a concurrency limit that the future's clone then waits for.
        let mut service = None;
        let mut token = false;
        let (state, call_id, guard) = match p.begin(start) {
            Err(reason) => {
                drop(super::take_ready(&mut self.inner));
                let refused =
                    Refused::new(reason, 0, "refused by the client-side adaptive throttle");
                (State::Refused { refused }, 0, None)
            }
            Ok(call_id) => match p.limit_taken(start) {
                // The rate limiter asks the first attempt to wait for its token - unless
                // the wait would take what is left of the deadline: then nothing is sent.
                Err(wait)
                    if p.attempt_timeout_at(&p.first, start, start + wait)
                        == Some(Duration::ZERO) =>
                {
                    drop(super::take_ready(&mut self.inner));
                    let reason = p.stopped(StopReason::Deadline);
                    let refused =
                        Refused::new(reason, 0, "the rate limiter's wait would pass the deadline");
                    (State::Refused { refused }, call_id, None)
                }
                Err(wait) => {
                    service = Some(super::take_ready(&mut self.inner));
                    let sleep = Box::pin(tokio::time::sleep(wait));
                    (State::Limited { sleep }, call_id, None)
                }
                Ok(taken) => {
                    token = taken;
                    let timeout = p.decider.attempt_timeout(&p.first);
                    let guard = p.guard(&p.first, call_id, 0, start).map(Box::new);
                    // Counted from the call's start, as its latency and deadline are (and
                    // `Policy::call`'s timeout): a future first polled late is not given
                    // its whole timeout again.
                    let fut = Timeout::starting(self.inner.call(req.clone()), start, timeout);
                    (State::Calling { fut }, call_id, guard)
                }
            },
        };
        RetryFuture {
            policy,
            service: service.unwrap_or_else(|| self.inner.clone()),
            request: req,
            ctx: None,
            paid: Paid::Nothing,
            call_id,
            start,
            attempt_start: start,
            guard,
            last: None,
            token,
            state,
        }
    }
}

pin_project! {
    /// The future of [`RetryService`].
    #[project = RetryFutureProj]
    pub struct RetryFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        policy: Policy<C>,
        service: S,
        request: Req,
        // The next attempt's context, once an attempt failed.
        // (Boxed: allocated only when a call is retried; the future stays small.)
        ctx: Option<Box<AttemptContext>>,
        // The retry in `ctx`, paid for: given back if it is never sent.
        paid: Paid,
        call_id: u64,
        start: Instant,
        attempt_start: Instant,
        // Records the request in flight, if the policy records.
        // (Boxed: a policy that does not record keeps the future small.)
        guard: Option<Box<RecordGuard>>,
        // The last attempt's result while its retry waits: what the call returns if the
        // retry is never sent (the deadline passed meanwhile), as `Policy::call` returns it.
        // (Boxed: allocated only when a call is retried.)
        last: Option<Box<Result<Result<S::Response, S::Error>, Elapsed>>>,
        // The rate limiter's token taken for the attempt in flight: given back if a layer
        // inside turns it away unsent (a token no request used is not spent).
        token: bool,
        #[pin]
        state: State<S::Future>,
    }

    impl<S, Req, C> PinnedDrop for RetryFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        // Dropped while a retry waits (its backoff, the rate limiter, readiness): the
        // retry is never sent, and its budget and booking are given back. (Once handed to
        // the service inside, it keeps them: a bulkhead layer inside that then waits for
        // room in its future is out of this layer's sight - `Policy` with its own bulkhead
        // refunds that case too.)
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if let (Paid::Waiting(at), Some(ctx)) = (*this.paid, this.ctx.as_deref()) {
                this.policy.inner().unsent(at, ctx);
            }
            // Dropped while the service inside was not yet ready: nothing was sent, so no
            // attempt is recorded (a cancelled one would stand in the training data for a
            // request never made).
            if matches!(this.state.as_mut().project(), StateProj::Readying { .. }) {
                if let Some(g) = this.guard.take() {
                    g.discard();
                }
                this.policy.inner().unlimit(std::mem::take(this.token));
            }
        }
    }
}

/// Where the retry planned at a time (its budget paid, its place in the decider's
/// calendar booked) stands.
#[derive(Debug, Clone, Copy)]
enum Paid {
    /// No retry planned (the first attempt), or the planned one settled.
    Nothing,
    /// Planned, not sent yet.
    Waiting(Instant),
    /// Handed to the service inside, which may still turn it away unsent.
    Handed(Instant),
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            fut: Timeout<F>,
        },
        // The wait before a retry.
        Sleeping {
            sleep: Pin<Box<Sleep>>,
        },
        // The wait until the rate limiter's token is due.
        Limited {
            sleep: Pin<Box<Sleep>>,
        },
        // Take the rate limiter's token (or wait for it), then get ready.
        Reserving,
        // Waiting for the service to be ready, within the attempt's timeout (the attempt
        // has started: `Policy` runs readiness and the call under one timeout too).
        Readying {
            timeout: Option<Duration>,
            expires: Option<Pin<Box<Sleep>>>,
        },
        Refused {
            refused: Refused,
        },
    }
}

/// Why a call stops without (another) attempt sent.
#[derive(Debug, Clone, Copy)]
struct Refused {
    reason: StopReason,
    attempts: u32,
    why: &'static str,
}

impl Refused {
    fn new(reason: StopReason, attempts: u32, why: &'static str) -> Self {
        Self {
            reason,
            attempts,
            why,
        }
    }
}

fn finish<T, E: Into<BoxError>>(out: Result<Result<T, E>, Elapsed>) -> Result<T, Error> {
    match out {
        Ok(r) => r.map_err(Error::new),
        Err(elapsed) => Err(Error::new(elapsed)),
    }
}

/// What follows an attempt that ended with `out` (its answer, or its timeout): the call's
/// output when it is over, or `None` with the next state set (the wait before a retry).
fn attempt_ended<S, Req, C>(
    this: &mut RetryFutureProj<'_, S, Req, C>,
    out: Result<Result<S::Response, S::Error>, Elapsed>,
) -> Option<Result<S::Response, Error>>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classifier<S::Response, S::Error>,
{
    let p = this.policy.inner();
    let paid = std::mem::replace(this.paid, Paid::Nothing);
    let token = std::mem::take(this.token);
    // Refused unsent by a retrywise layer inside (an open circuit, a full bulkhead):
    // not an attempt - nothing recorded, no health, no retry budget (what this retry
    // paid is given back) - and the call stops as `Policy::call` stops on its own
    // breaker's or bulkhead's refusal.
    let out = match out {
        Ok(Err(e)) => match refused_inside(&e) {
            Some(reason) => {
                if let Some(g) = this.guard.take() {
                    g.discard();
                }
                p.unlimit(token);
                let ctx = this.ctx.as_deref().unwrap_or(&p.first);
                if let (Paid::Handed(at) | Paid::Waiting(at), Some(planned)) =
                    (paid, this.ctx.as_deref())
                {
                    p.unsent(at, planned);
                }
                let reason = p.stopped(reason);
                return Some(Err(Error::new(GaveUp {
                    target: Arc::clone(this.policy.target()),
                    attempts: ctx.attempt - 1,
                    reason,
                    last: Error::new(e),
                })));
            }
            None => Ok(Err(e)),
        },
        other => other,
    };
    let verdict = match &out {
        Ok(r) => this.policy.classifier().classify(r),
        Err(_) => Verdict::Retryable(Failure::new(ErrorKind::Timeout)),
    };
    let retryable = matches!(verdict, Verdict::Retryable(_));
    // Read the clock only if someone needs it.
    let now = (retryable || this.guard.is_some() || p.health.is_some()).then(Instant::now);
    let latency = now.map_or_else(Default::default, |n| {
        n.saturating_duration_since(*this.attempt_start)
    });
    if let Some(now) = now {
        p.observe(now, &verdict, latency);
    }
    if let Some(g) = this.guard.take() {
        g.finish(&verdict, latency);
    }
    let ctx = this.ctx.as_deref().unwrap_or(&p.first);
    p.settle(ctx, None, &verdict, latency, None, *this.start, false);
    let failure = match verdict {
        Verdict::Success => return Some(finish(out)),
        Verdict::Permanent(_) => {
            p.not_retryable();
            return Some(finish(out));
        }
        Verdict::Retryable(f) => f,
    };
    let now = now.unwrap_or_else(Instant::now);
    let ctx = this.ctx.as_deref().unwrap_or(&p.first);
    match p.plan_retry(ctx, &failure, latency, *this.start, now, None) {
        Err(_) => return Some(finish(out)),
        Ok(next) => {
            let delay = next.delay;
            *this.ctx = Some(Box::new(next));
            *this.paid = Paid::Waiting(now);
            *this.last = Some(Box::new(out));
            if delay.is_zero() {
                this.state.set(State::Reserving);
            } else {
                this.state.set(State::Sleeping {
                    sleep: Box::pin(tokio::time::sleep(delay)),
                });
            }
        }
    }
    None
}

impl<S, C, Req> Future for RetryFuture<S, Req, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classifier<S::Response, S::Error>,
    Req: Clone,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let out = ready!(fut.poll(cx));
                    if let Some(done) = attempt_ended(&mut this, out) {
                        return Poll::Ready(done);
                    }
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Reserving);
                }
                StateProj::Reserving => {
                    let p = this.policy.inner();
                    let ctx = this.ctx.as_deref().unwrap_or(&p.first);
                    let now = Instant::now();
                    // Got here past the deadline (the backoff's timer, or the task, late):
                    // nothing is sent - a request with no time would fail at once, a fake
                    // timeout for health and the budget - and the retry keeps nothing.
                    if p.attempt_timeout_at(ctx, *this.start, now) == Some(Duration::ZERO) {
                        if let Paid::Waiting(at) = std::mem::replace(this.paid, Paid::Nothing) {
                            p.unsent(at, ctx);
                        }
                        let reason = p.stopped(StopReason::Deadline);
                        // The last attempt's failure is the call's, as after the last
                        // attempt the policy allows.
                        if let Some(last) = this.last.take() {
                            return Poll::Ready(finish(*last));
                        }
                        let refused = Refused::new(
                            reason,
                            ctx.attempt.saturating_sub(1),
                            "the deadline passed before the attempt could start",
                        );
                        this.state.set(State::Refused { refused });
                        continue;
                    }
                    match p.limit_taken(now) {
                        Ok(taken) => {
                            *this.token = taken;
                            // The attempt starts: it is recorded from now, and its
                            // timeout (what is left of the deadline, if less) runs from
                            // now, readiness included.
                            *this.attempt_start = now;
                            *this.guard = p.guard(ctx, *this.call_id, 0, now).map(Box::new);
                            let timeout = p.attempt_timeout_at(ctx, *this.start, now);
                            let expires = timeout.map(|t| Box::pin(tokio::time::sleep(t)));
                            // The retry goes: the previous attempt's result is let go now
                            // (a response holding the only connection would keep the
                            // service from becoming ready).
                            *this.last = None;
                            this.state.set(State::Readying { timeout, expires });
                        }
                        // A wait that would take what is left of the deadline is not
                        // waited: the call stops now, and takes no token.
                        Err(wait)
                            if p.attempt_timeout_at(ctx, *this.start, now + wait)
                                == Some(Duration::ZERO) =>
                        {
                            // Nor does the retry keep what it paid.
                            if let Paid::Waiting(at) = std::mem::replace(this.paid, Paid::Nothing) {
                                p.unsent(at, ctx);
                            }
                            let reason = p.stopped(StopReason::Deadline);
                            if let Some(last) = this.last.take() {
                                return Poll::Ready(finish(*last));
                            }
                            let refused = Refused::new(
                                reason,
                                ctx.attempt - 1,
                                "the rate limiter's wait would pass the deadline",
                            );
                            this.state.set(State::Refused { refused });
                        }
                        Err(wait) => this.state.set(State::Limited {
                            sleep: Box::pin(tokio::time::sleep(wait)),
                        }),
                    }
                }
                StateProj::Limited { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Reserving);
                }
                StateProj::Readying { timeout, expires } => match this.service.poll_ready(cx) {
                    Poll::Ready(Err(e)) => {
                        // Nothing was sent: no attempt to record (a cancelled one would
                        // stand in the training data for a request never made).
                        if let Some(g) = this.guard.take() {
                            g.discard();
                        }
                        this.policy.inner().unlimit(std::mem::take(this.token));
                        return Poll::Ready(Err(Error::new(e)));
                    }
                    Poll::Ready(Ok(())) => {
                        let left = expires
                            .as_ref()
                            .map(|e| e.deadline().saturating_duration_since(Instant::now()));
                        let fut = Timeout::new(this.service.call(this.request.clone()), left);
                        if let Paid::Waiting(at) = *this.paid {
                            *this.paid = Paid::Handed(at);
                        }
                        this.state.set(State::Calling { fut });
                    }
                    Poll::Pending => {
                        let Some(e) = expires else {
                            return Poll::Pending;
                        };
                        ready!(e.as_mut().poll(cx));
                        // Never ready within the attempt's time: the attempt timed out.
                        let after = timeout.unwrap_or_default();
                        if let Some(done) = attempt_ended(&mut this, Err(Elapsed { after })) {
                            return Poll::Ready(done);
                        }
                    }
                },
                StateProj::Refused { refused } => {
                    return Poll::Ready(Err(Error::new(GaveUp {
                        target: Arc::clone(this.policy.target()),
                        attempts: refused.attempts,
                        reason: refused.reason,
                        last: Error::new(refused.why),
                    })));
                }
            }
        }
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;
    use crate::breaker::{CircuitOpen, State};

    /// A refusal is this crate's own error, through its wrappers; one further down a
    /// cause chain - an inner policy that sent its attempts and gave up on an open circuit
    /// - is a request that was sent.
    #[test]
    fn only_a_refusal_itself_reads_as_refused() {
        let open = || CircuitOpen {
            name: "db".into(),
            state: State::Open,
            remaining: None,
        };
        assert_eq!(
            refused_inside(&Error::new(open())),
            Some(StopReason::CircuitOpen)
        );
        let boxed: BoxError = Box::new(open());
        assert_eq!(refused_inside(&boxed), Some(StopReason::CircuitOpen));
        let gave_up = Error::new(crate::layer::GaveUp {
            target: "db".into(),
            attempts: 3,
            reason: StopReason::CircuitOpen,
            last: Error::new(open()),
        });
        assert_eq!(refused_inside(&gave_up), None);
        // An inner retry or policy layer that sent nothing: its refusal passes up.
        let unsent = |reason| {
            Error::new(crate::layer::GaveUp {
                target: "db".into(),
                attempts: 0,
                reason,
                last: Error::new(open()),
            })
        };
        for reason in [
            StopReason::CircuitOpen,
            StopReason::BulkheadFull,
            StopReason::Throttled,
            StopReason::Deadline,
        ] {
            assert_eq!(refused_inside(&unsent(reason)), Some(reason));
            let boxed: BoxError = unsent(reason).into();
            assert_eq!(refused_inside(&boxed), Some(reason));
        }
        assert_eq!(refused_inside(&std::io::Error::other("x")), None);
    }
}
