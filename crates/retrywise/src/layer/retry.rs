//! Retries as a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::{BoxError, Error};
use crate::attempt::{AttemptContext, Classifier, ErrorKind, Failure, Verdict};
use crate::budget::RetryBudget;
use crate::retry::{Decision, RetryDecider};
use crate::timeout::{Elapsed, Timeout};

struct Shared<C> {
    decider: Arc<dyn RetryDecider>,
    budget: Option<Arc<dyn RetryBudget>>,
    classifier: C,
    first: AttemptContext,
}

/// Retries calls of the wrapped service as a [`RetryDecider`] decides, within an optional
/// [`RetryBudget`], with the decider's per-attempt timeouts. Requests must be `Clone`.
///
/// When the service answers with a response the classifier judges a failure and the
/// decider stops, that response is returned (as tower's retry does).
pub struct RetryLayer<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C> std::fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("target", &self.shared.first.target)
            .finish()
    }
}

impl<C> RetryLayer<C> {
    /// Retries calls to `target` as `decider` decides, judging results with `classifier`.
    pub fn new(target: impl Into<Arc<str>>, decider: Arc<dyn RetryDecider>, classifier: C) -> Self {
        Self::with_budget(target, decider, None, classifier)
    }

    /// The same, with every retry withdrawn from `budget`.
    pub fn with_budget(
        target: impl Into<Arc<str>>,
        decider: Arc<dyn RetryDecider>,
        budget: Option<Arc<dyn RetryBudget>>,
        classifier: C,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                decider,
                budget,
                classifier,
                first: AttemptContext::first(target),
            }),
        }
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A service whose failed calls are retried.
pub struct RetryService<S, C> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for RetryService<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
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
    S::Error: Into<BoxError>,
    C: Classifier<S::Response, S::Error>,
    Req: Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = RetryFuture<S, Req, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::new)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let start = Instant::now();
        let sh = &*self.shared;
        if let Some(b) = &sh.budget {
            b.deposit(start);
        }
        let timeout = sh.decider.attempt_timeout(&sh.first);
        let fut = Timeout::new(self.inner.call(req.clone()), timeout);
        RetryFuture {
            shared: Arc::clone(&self.shared),
            service: self.inner.clone(),
            request: req,
            ctx: None,
            start,
            attempt_start: start,
            state: State::Calling { fut },
        }
    }
}

pin_project! {
    /// The future of [`RetryService`].
    pub struct RetryFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        shared: Arc<Shared<C>>,
        service: S,
        request: Req,
        // The next attempt's context, once an attempt failed.
        ctx: Option<AttemptContext>,
        start: Instant,
        attempt_start: Instant,
        #[pin]
        state: State<S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            fut: Timeout<F>,
        },
        Sleeping {
            sleep: Pin<Box<Sleep>>,
        },
        Readying,
    }
}

fn finish<T, E: Into<BoxError>>(out: Result<Result<T, E>, Elapsed>) -> Result<T, Error> {
    match out {
        Ok(r) => r.map_err(Error::new),
        Err(elapsed) => Err(Error::new(elapsed)),
    }
}

impl<S, C, Req> Future for RetryFuture<S, Req, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
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
                    let sh = &**this.shared;
                    let verdict = match &out {
                        Ok(r) => sh.classifier.classify(r),
                        Err(_) => Verdict::Retryable(Failure::new(ErrorKind::Timeout)),
                    };
                    if let Some(b) = &sh.budget {
                        b.record(verdict.is_success());
                    }
                    let Verdict::Retryable(failure) = verdict else {
                        return Poll::Ready(finish(out));
                    };
                    let now = Instant::now();
                    let prev = this.ctx.take().unwrap_or_else(|| sh.first.clone());
                    let mut next = prev.next(
                        &failure,
                        now.saturating_duration_since(*this.attempt_start),
                        now.saturating_duration_since(*this.start),
                    );
                    let delay = match sh.decider.decide(&next) {
                        Decision::Stop(_) => return Poll::Ready(finish(out)),
                        Decision::Retry(d) => d,
                    };
                    if sh.budget.as_ref().is_some_and(|b| !b.withdraw(now)) {
                        return Poll::Ready(finish(out));
                    }
                    next.delay = delay;
                    *this.ctx = Some(next);
                    this.state.set(State::Sleeping {
                        sleep: Box::pin(tokio::time::sleep(delay)),
                    });
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(Error::new(e)));
                    }
                    *this.attempt_start = Instant::now();
                    let sh = &**this.shared;
                    let timeout = sh
                        .decider
                        .attempt_timeout(this.ctx.as_ref().unwrap_or(&sh.first));
                    let fut = Timeout::new(this.service.call(this.request.clone()), timeout);
                    this.state.set(State::Calling { fut });
                }
            }
        }
    }
}
