//! The scenario's upstream over HTTP (`retrywise sim upstream`), served with axum.
//!
//! Every request except the two below gets the model's fate: an answer after its latency
//! (with Retry-After when the model gives one), a connection closed without an answer for
//! a reset, or - for a refused connection, which cannot be staged per request on a pooled
//! connection already open - a 503 that says so in [`REFUSED_HEADER`] and closes the
//! connection: the simulator's client reads it as the refused connection it stands for
//! (`connect`, as in virtual time; read as a reset, the data taught a model that refusals
//! look like resets). The `x-retrywise-request` header names the logical request (so an
//! invalid request stays invalid on retry).
//!
//! - `GET /_sim/health` — `ok`, never faulted (for readiness checks);
//! - `GET /_sim/counts` — what the upstream has seen, as JSON.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::SimError;
use crate::queueing::{Fate, UpstreamModel};

/// A running upstream server; dropping it stops it: it accepts no more connections and
/// closes those open.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    _stop: watch::Sender<()>,
}

/// Marks a response that must not be sent: the connection is closed instead.
#[derive(Debug, Clone, Copy)]
struct CloseConnection;

#[derive(Debug, thiserror::Error)]
#[error("connection reset by the scenario")]
struct ResetConnection;

/// The axum application of `upstream` (without the connection-closing behaviour, which
/// [`spawn`] adds: a response carrying the close marker ends the connection unanswered).
pub fn router(upstream: UpstreamModel) -> Router {
    Router::new()
        .route("/_sim/health", get(|| async { "ok" }))
        .route("/_sim/counts", get(counts))
        .fallback(answer)
        .with_state(upstream)
}

/// Serves `upstream` on `addr` until the returned [`Server`] is dropped (then its open
/// connections are closed too: a client keeping one alive is not served on).
///
/// Accept errors (such as running out of file descriptors) are logged at most once a
/// second and retried after a short pause, so a loaded machine degrades instead of
/// spinning.
///
/// # Errors
/// [`SimError::Io`] if the address cannot be bound.
pub async fn spawn(upstream: UpstreamModel, addr: &str) -> Result<Server, SimError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Io {
            op: format!("bind {addr}"),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Io {
        op: "local address".into(),
        source,
    })?;
    let app = router(upstream);
    // Dropping the sender ends `changed()` with an error in every receiver: the accept
    // loop and each connection's task stop.
    let (stop, mut stopped) = watch::channel(());
    tokio::spawn(async move {
        let mut last_warning: Option<std::time::Instant> = None;
        let mut suppressed = 0u64;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.changed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, suppressed, "accept failed; pausing");
                        last_warning = Some(std::time::Instant::now());
                        suppressed = 0;
                    } else {
                        suppressed += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        let resp = match app.oneshot(req.map(Body::new)).await {
                            Ok(resp) => resp,
                            Err(never) => match never {},
                        };
                        if resp.extensions().get::<CloseConnection>().is_some() {
                            Err(ResetConnection)
                        } else {
                            Ok(resp)
                        }
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = stopped.changed() => {}
                }
            });
        }
    });
    Ok(Server { addr, _stop: stop })
}

async fn counts(State(upstream): State<UpstreamModel>) -> impl IntoResponse {
    let c = upstream.counts();
    axum::Json(serde_json::json!({
        "requests": c.requests,
        "refused": c.refused,
        "succeeded": c.succeeded,
    }))
}

/// The header naming the logical request an attempt belongs to (see [`UpstreamModel::serve`]).
pub const REQUEST_HEADER: &str = "x-retrywise-request";

/// The header of an answer that stands for a refused connection (see the module's
/// documentation).
pub const REFUSED_HEADER: &str = "x-retrywise-refused";

async fn answer(
    State(upstream): State<UpstreamModel>,
    headers: axum::http::HeaderMap,
) -> Response<Body> {
    let request = headers
        .get(REQUEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let fate = upstream.serve(tokio::time::Instant::now(), request);
    if fate.after() > Duration::ZERO {
        tokio::time::sleep(fate.after()).await;
    }
    let (status, retry_after) = match fate {
        Fate::Answer {
            status,
            retry_after_s,
            ..
        } => (status, retry_after_s),
        Fate::Reset { .. } => {
            let mut resp = Response::new(Body::empty());
            resp.extensions_mut().insert(CloseConnection);
            return resp;
        }
        Fate::Connect => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            let h = resp.headers_mut();
            h.insert(REFUSED_HEADER, axum::http::HeaderValue::from_static("1"));
            h.insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return resp;
        }
        Fate::Hang { .. } => (504, None),
    };
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(s) = retry_after {
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(s),
        );
    }
    resp
}
