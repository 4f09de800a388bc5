//! Hedged requests as a tower layer.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use futures_util::future::Either;

use super::{BoxError, BoxFuture, Error, oneshot, refused_inside, take_ready};
use crate::hedge::{AllFailed, Hedge};

/// Hedges calls of the wrapped service with a [`Hedge`]: the first `Ok` wins. Requests
/// must be `Clone` and the service `Clone` (each hedge calls its own clone). A request a
/// breaker or bulkhead inside refused (`CircuitOpen`, `BulkheadFull`: nothing was sent)
/// is not hedged at once - the hedge would be refused the same way - and when every
/// request was refused so, the call fails with the refusal itself, so that a retry layer
/// outside reads it as one.
#[derive(Debug, Clone)]
pub struct HedgeLayer {
    hedge: Hedge,
}

impl HedgeLayer {
    /// A layer sharing `hedge` (its latency window and budget) among every service it
    /// wraps.
    pub fn new(hedge: Hedge) -> Self {
        Self { hedge }
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = HedgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService {
            inner,
            hedge: self.hedge.clone(),
        }
    }
}

/// A service whose slow calls are hedged.
#[derive(Debug, Clone)]
pub struct HedgeService<S> {
    inner: S,
    hedge: Hedge,
}

impl<S, Req> Service<Req> for HedgeService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Into<BoxError>,
    Req: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<Result<S::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::new)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let ready = take_ready(&mut self.inner);
        let spare = ready.clone();
        let hedge = self.hedge.clone();
        Box::pin(async move {
            let mut primary = Some(ready);
            let result = hedge
                .call_backing_off(
                    move |i| {
                        let svc = primary.take().unwrap_or_else(|| spare.clone());
                        let req = req.clone();
                        let request = async move { oneshot(svc, req).await.map_err(Error::new) };
                        // A hedge takes a bulkhead's room inside only if there is some (the
                        // primary, most calls' only request, pays nothing for the mark).
                        if i == 0 {
                            Either::Left(request)
                        } else {
                            Either::Right(super::HEDGE.scope(true, request))
                        }
                    },
                    |e: &Error| refused_inside(e).is_some(),
                )
                .await;
            result.map_err(|mut all: AllFailed<Error>| {
                if all.errors.len() == 1 || all.errors.iter().all(|e| refused_inside(e).is_some()) {
                    all.errors.remove(0)
                } else {
                    Error::new(all)
                }
            })
        })
    }
}
