//! The circuit breaker as a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{BoxError, Error, refused_inside};
use crate::attempt::{Classifier, Verdict};
use crate::breaker::{CallOutcome, CircuitBreaker, CircuitOpen, Permit};

/// Wraps services in a [`CircuitBreaker`]; `classifier` decides which results are failures
/// (permanent failures, such as a 404, are ignored by the breaker). A refusal by a breaker
/// or bulkhead layer inside (`CircuitOpen`, `BulkheadFull`) sent nothing, and tells the
/// breaker nothing: it is ignored, whatever the classifier would make of it (read as a
/// failure, a full bulkhead would open the circuit on an upstream that never failed).
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl<C> CircuitBreakerLayer<C> {
    /// A layer sharing `breaker` among every service it wraps.
    pub fn new(breaker: CircuitBreaker, classifier: C) -> Self {
        Self {
            breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
            refusing: None,
        }
    }
}

/// A service behind a circuit breaker. `poll_ready` looks at the circuit first, without
/// admitting or counting anything: while it is surely refusing (OPEN with time left, or
/// FORCED_OPEN) the handle is ready at once, and the call fails fast with [`CircuitOpen`],
/// never waiting for an inner service that may itself be stuck behind the failing
/// upstream (a concurrency limit held by hung calls, say). Otherwise it waits for the
/// inner service, and the breaker admits the call in `call` (a call it refuses then
/// leaves the inner service's readiness reserved on this handle, as tower's `Filter`
/// does; drop the handle, or call it again, to use it). A handle polled ready and dropped
/// takes no permit and counts no refusal.
#[derive(Debug)]
pub struct CircuitBreakerService<S, C> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
    /// `poll_ready` found the circuit refusing (in this state, with this much of OPEN
    /// left), and did not wait for the inner service.
    refusing: Option<(crate::breaker::State, Option<std::time::Duration>)>,
}

impl<S: Clone, C: Clone> Clone for CircuitBreakerService<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
            refusing: None,
        }
    }
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classifier<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = CircuitBreakerFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Looked at afresh at every poll: a refusal seen before goes with the circuit.
        self.refusing = self.breaker.refuses_now();
        if self.refusing.is_some() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Error::new)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Refused as `poll_ready` saw it, even if the circuit has let calls through again
        // between the two (the service inside was not waited for, and may not be called
        // unready): a refused call, counted as one, not a call admitted and dropped.
        if let Some((state, remaining)) = self.refusing.take() {
            return CircuitBreakerFuture {
                state: State::Refused {
                    open: Some(self.breaker.refuse(state, remaining)),
                },
            };
        }
        match self.breaker.try_acquire_owned() {
            Ok(permit) => CircuitBreakerFuture {
                state: State::Running {
                    fut: self.inner.call(req),
                    permit: Some(permit),
                    started: Instant::now(),
                    classifier: self.classifier.clone(),
                },
            },
            Err(open) => CircuitBreakerFuture {
                state: State::Refused { open: Some(open) },
            },
        }
    }
}

pin_project! {
    /// The future of [`CircuitBreakerService`].
    pub struct CircuitBreakerFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Running {
            #[pin]
            fut: F,
            permit: Option<Permit<CircuitBreaker>>,
            started: Instant,
            classifier: C,
        },
        Refused {
            open: Option<CircuitOpen>,
        },
    }
}

impl<F, C, T, E> Future for CircuitBreakerFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
    C: Classifier<T, E>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Running {
                fut,
                permit,
                started,
                classifier,
            } => {
                let result = std::task::ready!(fut.poll(cx));
                if let Some(permit) = permit.take() {
                    let outcome = match &result {
                        Err(e) if refused_inside(e).is_some() => CallOutcome::Ignored,
                        _ => match classifier.classify(&result) {
                            Verdict::Success => CallOutcome::Success,
                            Verdict::Retryable(_) => CallOutcome::Failure,
                            Verdict::Permanent(_) => permit.permanent_outcome(),
                        },
                    };
                    permit.record(outcome, started.elapsed());
                }
                Poll::Ready(result.map_err(Error::new))
            }
            StateProj::Refused { open } => Poll::Ready(Err(match open.take() {
                Some(e) => Error::new(e),
                None => Error::new("circuit breaker future polled after completion"),
            })),
        }
    }
}
