//! What wraps every request: its id, metrics and log line (`observe`), the bearer token
//! (`authorize`), and the answers of load shedding and the request timeout (`shed`).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::BoxError;

use crate::AppState;
use crate::error::{ApiError, ErrorBody, INTERNAL_MESSAGE, InternalFault, chain};

/// The header carrying a request's id, both ways.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Marks a response as shed (for the metrics).
#[derive(Debug, Clone, Copy)]
struct Shed;

/// Marks a response of the request timeout (counted apart from the shed ones).
#[derive(Debug, Clone, Copy)]
struct TimedOut;

/// Answers what the load-shedding and timeout layers refuse: 503, with `Retry-After: 1`
/// when shed.
pub(crate) async fn shed(err: BoxError) -> Response {
    if err.is::<tower::load_shed::error::Overloaded>() {
        let mut r = ApiError::unavailable(
            "overloaded: too many requests in flight, retry later",
            Some(1),
        )
        .into_response();
        r.extensions_mut().insert(Shed);
        r
    } else if err.is::<tower::timeout::error::Elapsed>() {
        let mut r = ApiError::unavailable(
            "the request took longer than the server's request timeout",
            None,
        )
        .into_response();
        r.extensions_mut().insert(TimedOut);
        r
    } else {
        ApiError::Internal(err).into_response()
    }
}

/// The id of a request: the caller's `x-request-id` if it is short and printable, else a
/// new one — a random start chosen when the process starts, plus a count of requests, so
/// that ids are unique within a process and unlikely to repeat across restarts.
fn request_id(req: &Request) -> String {
    static NEXT: std::sync::LazyLock<AtomicU64> =
        std::sync::LazyLock::new(|| AtomicU64::new(rand::random::<u64>()));
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(
            || format!("{:016x}", NEXT.fetch_add(1, Ordering::Relaxed)),
            str::to_owned,
        )
}

/// Gives every request an id (echoed in `x-request-id`), counts it by route template and
/// status, times it, and logs it. An internal error is logged here, once, with its whole
/// chain and the request id, and its body replaced by a generic one carrying the id.
pub(crate) async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let id = request_id(&req);
    let started = std::time::Instant::now();
    // Around the whole handler (not only its creation): what it logs carries the id. At
    // debug level: an info span per request cost a tenth of /v1/predict's throughput
    // (measured); warnings and errors about a request name its id themselves.
    let span = tracing::debug_span!("request", %method, route = %route, request_id = %id);
    let mut response = tracing::Instrument::instrument(next.run(req), span).await;
    if let Some(InternalFault(e)) = response.extensions_mut().remove::<InternalFault>() {
        tracing::error!(%method, route = %route, request_id = %id, error = %chain(e.as_ref()), "internal error");
        let headers = std::mem::take(response.headers_mut());
        response = (
            response.status(),
            Json(ErrorBody {
                error: INTERNAL_MESSAGE.into(),
                request_id: Some(id.clone()),
            }),
        )
            .into_response();
        for (k, v) in &headers {
            if k != header::CONTENT_LENGTH && k != header::CONTENT_TYPE {
                response.headers_mut().insert(k.clone(), v.clone());
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let status = response.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    let labels = crate::metrics::RouteLabels { route, status };
    st.metrics.requests.get_or_create(&labels).inc();
    st.metrics.latency.get_or_create(&labels).observe(secs);
    if response.extensions().get::<Shed>().is_some() {
        st.metrics.shed.inc();
    }
    if response.extensions().get::<TimedOut>().is_some() {
        st.metrics.timeouts.inc();
        tracing::warn!(%method, route = %labels.route, request_id = %id, "request timed out");
    }
    tracing::debug!(%method, route = %labels.route, status, ms = secs * 1e3, request_id = %id, "request");
    response
}

/// Whether `given` is `token`, in time that depends on `token`'s length alone: every byte
/// of the token is compared (against 0 past the end of what is given), and a difference in
/// length is folded into the same result.
fn tokens_match(given: &[u8], token: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != token.len());
    for (i, t) in token.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(0) ^ t;
    }
    std::hint::black_box(diff) == 0
}

/// Refuses requests without the configured bearer token (401).
pub(crate) async fn authorize(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.config.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme is case-insensitive (RFC 7235).
            .and_then(|v| {
                v.get(..7)
                    .filter(|s| s.eq_ignore_ascii_case("bearer "))
                    .map(|_| &v[7..])
            })
            .unwrap_or("");
        // Compare without stopping at the first difference, nor at a difference of length:
        // the time taken depends on the token's length alone, whatever is given.
        let same = tokens_match(given.as_bytes(), token.as_bytes());
        if !same {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::tokens_match;
    use proptest::prelude::*;

    #[test]
    fn a_token_matches_itself_only() {
        assert!(tokens_match(b"s3cret", b"s3cret"));
        for given in [
            &b""[..],
            b"s3cre",
            b"s3cret ",
            b"s3creT",
            b"s3cret\0",
            b"\0",
        ] {
            assert!(!tokens_match(given, b"s3cret"), "{given:?}");
        }
    }

    proptest! {
        /// Whatever is given, it matches exactly when it equals the token.
        #[test]
        fn matches_exactly_when_equal(given in proptest::collection::vec(any::<u8>(), 0..12),
                                      token in proptest::collection::vec(any::<u8>(), 1..12)) {
            prop_assert_eq!(tokens_match(&given, &token), given == token);
            prop_assert!(tokens_match(&token, &token));
        }
    }
}
