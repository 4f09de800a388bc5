//! The semaphore bulkhead as a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{BoxError, BoxFuture, Error, oneshot, take_ready};
use crate::bulkhead::{Bulkhead, BulkheadFull, OwnedBulkheadPermit};

/// Wraps services in a [`Bulkhead`].
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// A layer sharing `bulkhead` among every service it wraps.
    pub fn new(bulkhead: Bulkhead) -> Self {
        Self { bulkhead }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: self.bulkhead.clone(),
        }
    }
}

/// A service behind a bulkhead. Room is taken in `call`: at once when there is some (the
/// request goes straight to the inner service); otherwise the future waits up to the
/// bulkhead's maximum wait with its own clone of the inner service; a call refused (no
/// room, no wait) gives back the readiness `poll_ready` reserved. With an adaptive limit
/// ([`crate::bulkhead::BulkheadBuilder::adaptive`]) each call's latency goes to it when the
/// call ends, an `Err` as a failure and an `Ok` as an answer, whatever it holds: the layer
/// has no classifier, so an HTTP 503 answers as fast as a 200 does here (a
/// [`crate::policy::Policy`] with a bulkhead reports by its classifier's verdict). A
/// fixed limit reads no clock.
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BulkheadFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::new)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(permit) = self.bulkhead.try_acquire_owned_quiet() {
            return BulkheadFuture {
                state: State::Admitted {
                    fut: self.inner.call(req),
                    permit: Some(permit),
                    started: self.bulkhead.adapts().then(tokio::time::Instant::now),
                },
            };
        }
        if !self.bulkhead.waits() {
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
        BulkheadFuture {
            state: State::Waiting {
                fut: Box::pin(async move {
                    let permit = bulkhead
                        .acquire_owned_after_refusal()
                        .await
                        .map_err(Error::new)?;
                    let started = bulkhead.adapts().then(tokio::time::Instant::now);
                    let out = oneshot(svc, req).await.map_err(Error::new);
                    match started {
                        Some(t) => permit.finish(out.is_err(), t.elapsed()),
                        None => drop(permit),
                    }
                    out
                }),
            },
        }
    }
}

pin_project! {
    /// The future of [`BulkheadService`].
    pub struct BulkheadFuture<F, T> {
        #[pin]
        state: State<F, T>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, T> {
        Admitted {
            #[pin]
            fut: F,
            permit: Option<OwnedBulkheadPermit>,
            // When the call began, for an adaptive limit (none for a fixed one).
            started: Option<tokio::time::Instant>,
        },
        Waiting {
            fut: BoxFuture<Result<T, Error>>,
        },
        Full {
            full: Option<BulkheadFull>,
        },
    }
}

impl<F, T, E> Future for BulkheadFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted {
                fut,
                permit,
                started,
            } => {
                let out = std::task::ready!(fut.poll(cx));
                match (permit.take(), started.take()) {
                    (Some(p), Some(t)) => p.finish(out.is_err(), t.elapsed()),
                    (p, _) => drop(p),
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
