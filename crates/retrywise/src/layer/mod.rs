//! Tower layers for every mechanism (feature `tower`).
//!
//! Each mechanism is a [`Layer`](tower_layer::Layer) usable around a tower
//! [`Service`](tower_service::Service), and [`PolicyLayer`] applies a whole
//! [`Policy`](crate::policy::Policy). The breaker and timeout layers take any service and
//! request; the bulkhead layer, which waits for room in its future with a clone of the
//! service, a `Clone + Send + 'static` service with a `Send` future and request. The
//! layers that may send a request more than once - [`RetryLayer`],
//! [`HedgeLayer`], [`PolicyLayer`] - need a `Clone` request and a `Clone` service: a
//! request that cannot be cloned (an `http::Request` with a streaming body,
//! `reqwest::Request`) is rebuilt for each attempt by calling the policy with a closure
//! ([`Policy::call`](crate::policy::Policy::call)) instead, and a service that is not
//! `Clone` goes behind tower's `Buffer` (whose `BoxError` a closure classifier judges).
//! Every layer's error is [`Error`]: a transparent wrapper of the inner service's error or
//! of a rejection of this crate ([`CircuitOpen`](crate::breaker::CircuitOpen),
//! [`BulkheadFull`](crate::bulkhead::BulkheadFull), [`Elapsed`](crate::timeout::Elapsed),
//! ...), which callers tell apart with [`Error::downcast_ref`]. Unlike a bare `BoxError`
//! it implements `std::error::Error`, so layers stacked on each other can classify each
//! other's errors; it converts into `BoxError` for the rest of the tower ecosystem.
//! [`PolicyLayer`] gives up with a [`GaveUp`] (the stop's reason, and the last error as its
//! `last` and `source()`): `downcast_ref::<GaveUp>()` first, then its `last`.
//! [`RetryLayer`] ends, as tower's retry does, with its last attempt's error or answer
//! when its policy stops, and with a [`GaveUp`] when a layer inside refuses an attempt
//! unsent, on the client-side throttle, and when the deadline passed before the first
//! attempt could start.
//! A refusal by a breaker or bulkhead layer inside (nothing sent), or a [`GaveUp`] of a
//! retry or policy layer inside that sent nothing, is no failure to a breaker layer
//! outside, no reason to hedge at once, and no attempt to a retry layer.
//!
//! Order matters as in any tower stack: a timeout outside a breaker or an adaptive
//! bulkhead cancels the call they wait on, and a cancelled call is neither a failure to
//! the breaker nor a latency sample to the limit - put the [`TimeoutLayer`] inside them
//! (as below), where its `Elapsed` is an outcome they count.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::time::Duration;
//! use retrywise::attempt::ErrorsAreRetryable;
//! use retrywise::breaker::CircuitBreaker;
//! use retrywise::bulkhead::Bulkhead;
//! use retrywise::layer::{BulkheadLayer, CircuitBreakerLayer, TimeoutLayer};
//! use tower::{Layer, Service, ServiceExt};
//!
//! let breaker = CircuitBreaker::builder("users").build()?;
//! let bulkhead = Bulkhead::builder("users").max_concurrent(64).build()?;
//! let inner = tower::service_fn(|id: u32| async move { Ok::<_, std::io::Error>(id * 2) });
//! let mut svc = CircuitBreakerLayer::new(breaker, ErrorsAreRetryable).layer(
//!     BulkheadLayer::new(bulkhead).layer(TimeoutLayer::new(Duration::from_secs(1)).layer(inner)),
//! );
//! assert_eq!(svc.ready().await?.call(21).await?, 42);
//! # Ok(()) }
//! ```

mod breaker;
mod bulkhead;
mod error;
mod hedge;
mod policy;
mod retry;
mod timeout;

pub use breaker::{CircuitBreakerFuture, CircuitBreakerLayer, CircuitBreakerService};
pub use bulkhead::{BulkheadFuture, BulkheadLayer, BulkheadService, ByOutcome};
pub use error::Error;
pub use hedge::{HedgeLayer, HedgeService};
pub use policy::{GaveUp, PolicyLayer, PolicyService};
pub use retry::{RetryFuture, RetryLayer, RetryService};
pub use timeout::{TimeoutFuture, TimeoutLayer, TimeoutService};

/// A boxed error, as tower services commonly return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, sendable future, for the layers that run several requests per call.
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Takes the service that `poll_ready` made ready, leaving a clone in its place (to be
/// driven to readiness before its own next call): the tower idiom for futures that call
/// the service later.
fn take_ready<S: Clone>(svc: &mut S) -> S {
    let clone = svc.clone();
    std::mem::replace(svc, clone)
}

/// Why a retrywise layer inside refused a request without sending it (the circuit was
/// open, the bulkhead full), if `e` is such a refusal: this crate's [`Error`], or a
/// `BoxError`, that *is* a [`CircuitOpen`](crate::breaker::CircuitOpen) or a
/// [`BulkheadFull`](crate::bulkhead::BulkheadFull), through this crate's own wrappers only,
/// or a [`GaveUp`] of a retry or policy layer inside that made no attempt (its breaker,
/// bulkhead or throttle refused the first, or its deadline passed before it): nothing
/// was sent. Not one found further down a cause chain: an inner policy that sent its
/// attempts and gave up on an open circuit (a [`GaveUp`] with attempts), or a service
/// whose own error wraps a refusal of another call, sent this request.
pub(crate) fn refused_inside<E: 'static>(e: &E) -> Option<crate::retry::StopReason> {
    let any: &dyn std::any::Any = e;
    let mut cur: &(dyn std::error::Error + 'static) = if let Some(e) = any.downcast_ref::<Error>() {
        e.inner()
    } else {
        any.downcast_ref::<BoxError>()?.as_ref()
    };
    loop {
        if cur.is::<crate::breaker::CircuitOpen>() {
            return Some(crate::retry::StopReason::CircuitOpen);
        }
        if cur.is::<crate::bulkhead::BulkheadFull>() {
            return Some(crate::retry::StopReason::BulkheadFull);
        }
        if let Some(g) = cur.downcast_ref::<GaveUp>() {
            return (g.attempts == 0).then_some(g.reason);
        }
        cur = cur.downcast_ref::<Error>()?.inner();
    }
}

tokio::task_local! {
    /// Whether the request being sent is a hedge layer's hedge (not its primary): a
    /// bulkhead layer inside then takes room only if it has some at once. A hedge never
    /// waits for room, as a [`Policy`](crate::policy::Policy)'s hedges never do: queued, it
    /// would compete with other callers' first requests for a slot while its primary may
    /// still answer.
    static HEDGE: bool;
}

/// Whether the request being made is a hedge layer's hedge ([`HEDGE`]).
fn sending_a_hedge() -> bool {
    HEDGE.try_with(|h| *h).unwrap_or(false)
}

/// Drives `svc` to readiness and calls it once.
async fn oneshot<S, Req>(mut svc: S, req: Req) -> Result<S::Response, S::Error>
where
    S: tower_service::Service<Req>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

#[cfg(test)]
mod tests;
