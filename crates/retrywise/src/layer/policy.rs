//! A whole [`Policy`] as a tower layer.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::{BoxError, BoxFuture, Error, oneshot, take_ready};
use crate::attempt::Classifier;
use crate::policy::{AttemptError, CallError, Policy};
use crate::retry::StopReason;

/// Applies a [`Policy`] — retries, budget, breaker, hedging, bulkhead, timeouts and
/// recording — to every call of the wrapped service. Requests must be `Clone`.
#[derive(Clone)]
pub struct PolicyLayer<C> {
    policy: Policy<C>,
}

impl<C> PolicyLayer<C> {
    /// A layer sharing `policy` among every service it wraps.
    pub fn new(policy: Policy<C>) -> Self {
        Self { policy }
    }
}

impl<S, C: Clone> Layer<S> for PolicyLayer<C> {
    type Service = PolicyService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// A service whose calls run under a [`Policy`].
#[derive(Clone)]
pub struct PolicyService<S, C> {
    inner: S,
    policy: Policy<C>,
}

/// A call through a [`PolicyService`] gave up without an answer.
#[derive(Debug, thiserror::Error)]
#[error("{target}: gave up after {attempts} attempts ({reason})")]
pub struct GaveUp {
    /// The policy's target.
    pub target: Arc<str>,
    /// Attempts made.
    pub attempts: u32,
    /// Why no further attempt was made.
    pub reason: StopReason,
    /// The last attempt's error.
    #[source]
    pub last: Error,
}

fn boxed<E: Into<BoxError>>(e: AttemptError<E>) -> BoxError {
    match e {
        AttemptError::Inner(e) => e.into(),
        AttemptError::Timeout(e) => Box::new(e),
        AttemptError::CircuitOpen(e) => Box::new(e),
        AttemptError::BulkheadFull(e) => Box::new(e),
        AttemptError::Throttled => "refused by the client-side adaptive throttle".into(),
        AttemptError::RateLimited => {
            "the client-side rate limiter's next token comes too late for the deadline".into()
        }
        AttemptError::AllHedgesFailed(all) => Box::new(crate::hedge::AllFailed {
            errors: all
                .into_iter()
                .map(|e| Error::new(boxed(e)))
                .collect::<Vec<_>>(),
        }),
    }
}

impl<S, C, Req> Service<Req> for PolicyService<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Into<BoxError> + Send,
    C: Classifier<S::Response, S::Error> + Clone + 'static,
    Req: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<Result<S::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::new)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The readiness `poll_ready` reserved is let go: the policy may wait before its
        // first request (for an open circuit, the rate limiter, the bulkhead's room), and
        // held meanwhile it could be the only slot of a concurrency limit inside that
        // every other clone waits for. Each request readies a clone of its own.
        let ready = take_ready(&mut self.inner);
        let spare = ready.clone();
        drop(ready);
        let policy = self.policy.clone();
        Box::pin(async move {
            policy
                .call(move |_| oneshot(spare.clone(), req.clone()))
                .await
                .map_err(|e: CallError<S::Error>| {
                    Error::new(GaveUp {
                        target: Arc::clone(policy.target()),
                        attempts: e.attempts,
                        reason: e.reason,
                        last: Error::new(boxed(e.last)),
                    })
                })
        })
    }
}
