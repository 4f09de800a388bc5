//! The timeout as a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{BoxError, Error};
use crate::timeout::Timeout;

/// Limits every call of the wrapped service to a duration; a call that takes longer fails
/// with [`Elapsed`](crate::timeout::Elapsed). The timer is armed only for calls that have
/// to wait.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    after: Duration,
}

impl TimeoutLayer {
    /// A layer limiting calls to `after`.
    pub fn new(after: Duration) -> Self {
        Self { after }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            after: self.after,
        }
    }
}

/// A service whose calls are time-limited.
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    after: Duration,
}

impl<S, Req> Service<Req> for TimeoutService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::new)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        TimeoutFuture {
            inner: Timeout::new(self.inner.call(req), Some(self.after)),
        }
    }
}

pin_project! {
    /// The future of [`TimeoutService`].
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: Timeout<F>,
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match std::task::ready!(self.project().inner.poll(cx)) {
            Ok(r) => Poll::Ready(r.map_err(Error::new)),
            Err(elapsed) => Poll::Ready(Err(Error::new(elapsed))),
        }
    }
}
