//! The semaphore bulkhead as a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{BoxError, BoxFuture, Error, oneshot, refused_inside, take_ready};
use crate::attempt::{Classifier, ErrorKind, Failure, Verdict};
use crate::bulkhead::{Bulkhead, BulkheadFull, OwnedBulkheadPermit};

/// Wraps services in a [`Bulkhead`].
#[derive(Debug, Clone)]
pub struct BulkheadLayer<C = ByOutcome> {
    bulkhead: Bulkhead,
    classifier: C,
}

impl BulkheadLayer {
    /// A layer sharing `bulkhead` among every service it wraps, telling an adaptive limit
    /// of each call by its outcome alone ([`ByOutcome`]).
    pub fn new(bulkhead: Bulkhead) -> Self {
        Self {
            bulkhead,
            classifier: ByOutcome,
        }
    }
}

impl<C> BulkheadLayer<C> {
    /// Judges each call by `classifier` for an adaptive limit, as a
    /// [`Policy`](crate::policy::Policy) with a bulkhead does: an answer (a success, or a
    /// permanent failure such as a 404) is a latency sample of the upstream; a retryable
    /// failure (a timeout, a 503 shed fast by an overloaded upstream) is a call it did not
    /// answer, never taken for a fast answer. A fixed limit consults no classifier.
    pub fn with_classifier<D>(self, classifier: D) -> BulkheadLayer<D> {
        BulkheadLayer {
            bulkhead: self.bulkhead,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for BulkheadLayer<C> {
    type Service = BulkheadService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: self.bulkhead.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The bulkhead layer's default judge: every `Ok` is an answer, every `Err` a call the
/// upstream did not answer. An HTTP client's 503 is an `Ok`: give the layer an
/// [`HttpClassifier`](crate::attempt::HttpClassifier) with
/// [`BulkheadLayer::with_classifier`] for it to count as one.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByOutcome;

impl<T, E> Classifier<T, E> for ByOutcome {
    fn classify(&self, result: &Result<T, E>) -> Verdict {
        match result {
            Ok(_) => Verdict::Success,
            Err(_) => Verdict::Retryable(Failure::new(ErrorKind::Other)),
        }
    }
}

/// Reports a call that ended to an adaptive limit, by `classifier`'s verdict. A refusal
/// by a retrywise layer inside (an open circuit, a full bulkhead: nothing was sent) is no
/// call of the upstream's: the room is given back unreported.
fn finish<T, E: 'static, C: Classifier<T, E>>(
    permit: OwnedBulkheadPermit,
    classifier: &C,
    out: &Result<T, E>,
    took: std::time::Duration,
) {
    if let Err(e) = out
        && refused_inside(e).is_some()
    {
        drop(permit);
        return;
    }
    permit.finish_with(&classifier.classify(out), took);
}

/// A service behind a bulkhead. Room is taken in `call`: at once when there is some (the
/// request goes straight to the inner service); otherwise the future waits up to the
/// bulkhead's maximum wait with its own clone of the inner service - but a hedge layer's
/// hedge (outside) is refused at once, never queued; a call refused (no room, no wait)
/// gives back the readiness `poll_ready` reserved. With an adaptive limit
/// ([`crate::bulkhead::BulkheadBuilder::adaptive`]) each call's latency goes to it when the
/// call ends, judged by the layer's classifier (by default [`ByOutcome`]: an `Err` is a
/// failure, an `Ok` an answer whatever it holds; see
/// [`BulkheadLayer::with_classifier`]); a refusal by a layer inside is not reported. A
/// fixed limit reads no clock.
#[derive(Debug, Clone)]
pub struct BulkheadService<S, C = ByOutcome> {
    inner: S,
    bulkhead: Bulkhead,
    classifier: C,
}

impl<S, Req, C> Service<Req> for BulkheadService<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: 'static,
    S::Error: Into<BoxError> + 'static,
    C: Classifier<S::Response, S::Error> + Clone + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BulkheadFuture<S::Future, S::Response, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::new)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(permit) = self.bulkhead.try_acquire_owned_quiet() {
            let adapts = self.bulkhead.adapts();
            return BulkheadFuture {
                state: State::Admitted {
                    fut: self.inner.call(req),
                    permit: Some(permit),
                    started: adapts.then(tokio::time::Instant::now),
                    classifier: adapts.then(|| self.classifier.clone()),
                },
            };
        }
        // A hedge layer's hedge waits for no room (its primary is still running).
        if !self.bulkhead.waits() || super::sending_a_hedge() {
            // Nothing is sent: the inner service's reserved readiness (a concurrency
            // limit's permit, say) is not held on this handle for the next call.
            drop(take_ready(&mut self.inner));
            return BulkheadFuture {
                state: State::Full {
                    full: Some(self.bulkhead.full()),
                },
            };
        }
        let svc = take_ready(&mut self.inner);
        let bulkhead = self.bulkhead.clone();
        let classifier = self.classifier.clone();
        BulkheadFuture {
            state: State::Waiting {
                fut: Box::pin(async move {
                    let permit = bulkhead
                        .acquire_owned_after_refusal()
                        .await
                        .map_err(Error::new)?;
                    let started = bulkhead.adapts().then(tokio::time::Instant::now);
                    let out = oneshot(svc, req).await;
                    match started {
                        Some(t) => finish(permit, &classifier, &out, t.elapsed()),
                        None => drop(permit),
                    }
                    out.map_err(Error::new)
                }),
            },
        }
    }
}

pin_project! {
    /// The future of [`BulkheadService`].
    pub struct BulkheadFuture<F, T, C = ByOutcome> {
        #[pin]
        state: State<F, T, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, T, C> {
        Admitted {
            #[pin]
            fut: F,
            permit: Option<OwnedBulkheadPermit>,
            // When the call began, and its judge, for an adaptive limit (none for a fixed
            // one).
            started: Option<tokio::time::Instant>,
            classifier: Option<C>,
        },
        Waiting {
            fut: BoxFuture<Result<T, Error>>,
        },
        Full {
            full: Option<BulkheadFull>,
        },
    }
}

impl<F, T, E, C> Future for BulkheadFuture<F, T, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
    C: Classifier<T, E>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted {
                fut,
                permit,
                started,
                classifier,
            } => {
                let out = std::task::ready!(fut.poll(cx));
                match (permit.take(), started.take(), classifier.take()) {
                    (Some(p), Some(t), Some(c)) => finish(p, &c, &out, t.elapsed()),
                    (p, _, _) => drop(p),
                }
                Poll::Ready(out.map_err(Error::new))
            }
            StateProj::Waiting { fut } => fut.as_mut().poll(cx),
            StateProj::Full { full } => Poll::Ready(Err(match full.take() {
                Some(e) => Error::new(e),
                None => Error::new("bulkhead future polled after completion"),
            })),
        }
    }
}
