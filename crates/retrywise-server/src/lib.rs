//! # retrywise-server
//!
//! The prediction and decision service: any caller, in any language, asks "will a retry
//! work, and how long should I wait?" over HTTP.
//!
//! - `POST /v1/predict` — p(success) of an attempt in a context (one, or a batch);
//! - `POST /v1/decide` — retry or not, the wait, p(success) and the reason;
//! - `POST /v1/attempts` — attempt records (JSON array or NDJSON) written through the
//!   collector; they feed each target's rolling health and a shared breaker
//!   (`GET /v1/targets/{target}`), which fill what predictions are not told;
//! - `GET /v1/models[/{name}]`, `POST /admin/reload`, `GET /metrics`, `GET /openapi.json`,
//!   `GET /healthz`, `GET /readyz`, and the KServe v2 routes under `/v2`.
//!
//! Models are `models/<name>/<version>/model.json`; the highest valid version of each name
//! serves, and new versions are swapped in without a request failing or waiting
//! ([`models`]). The features come from `retrywise::features`, the encoder the trainer used.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use retrywise_server::{Config, Service};
//! use tower::ServiceExt;
//!
//! let dir = tempfile::tempdir()?;
//! let config = Config { models: dir.path().join("models"), attempts: dir.path().join("attempts"), ..Config::default() };
//! let service = Service::new(config)?;
//! let response = service
//!     .router()
//!     .oneshot(axum::http::Request::get("/healthz").body(axum::body::Body::empty())?)
//!     .await?;
//! assert_eq!(response.status(), 200);
//! # Ok(()) }
//! ```

pub mod api;
pub mod config;
mod error;
pub mod fleet;
pub mod metrics;
pub mod models;
pub mod oip;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use retrywise_collect::{SegmentRecorder, WriterConfig};
use tower::{BoxError, ServiceBuilder};
use utoipa::OpenApi;

pub use config::Config;
pub use error::ServerError;

use api::ApiError;
use fleet::Fleet;
use metrics::Metrics;
use models::{Models, ReloadReport};

/// The state every handler shares.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The serving models.
    pub models: Models,
    /// The fleet view.
    pub fleet: Fleet,
    /// The metrics.
    pub metrics: Metrics,
    /// Where ingested attempts go.
    pub recorder: SegmentRecorder,
    /// The API routes' concurrency limit, shared by every router of this service.
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// Brings the dropped-records counter up to what the collector reports.
    pub(crate) fn sync_dropped(&self) {
        let s = self.recorder.stats();
        self.metrics
            .set_dropped(s.dropped_queue_full + s.dropped_io + s.dropped_closed);
    }
}

/// A cheap handle on [`Shared`].
pub type AppState = Arc<Shared>;

/// A service instance: its state and its routes.
#[derive(Debug, Clone)]
pub struct Service {
    state: AppState,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "retrywise", description = "Predictions and retry decisions learned from a fleet's own attempts."),
    paths(
        api::healthz, api::readyz, api::list_models, api::get_model, api::predict, api::decide, api::ingest, api::target,
        api::metrics, api::reload, oip::live, oip::ready, oip::metadata, oip::model_ready, oip::infer
    ),
    modifiers(&TokenScheme)
)]
struct ApiDoc;

struct TokenScheme;

impl utoipa::Modify for TokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the service.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Looks for new model versions, counting and logging what happened.
///
/// # Errors
/// The models folder cannot be read.
pub async fn reload(st: &AppState) -> std::io::Result<ReloadReport> {
    let r = match st.models.reload().await {
        Ok(r) => r,
        Err(e) => {
            st.metrics
                .reloads
                .get_or_create(&metrics::ResultLabels {
                    result: "failure".into(),
                })
                .inc();
            return Err(e);
        }
    };
    for _ in &r.loaded {
        st.metrics
            .reloads
            .get_or_create(&metrics::ResultLabels {
                result: "success".into(),
            })
            .inc();
    }
    for _ in &r.failed {
        st.metrics
            .reloads
            .get_or_create(&metrics::ResultLabels {
                result: "failure".into(),
            })
            .inc();
    }
    // Recomputed from what serves now on every reload, so two reloads racing cannot leave
    // a stale version marked as serving.
    let serving: Vec<(String, u32)> = st
        .models
        .snapshot()
        .values()
        .map(|m| (m.name.clone(), m.version))
        .collect();
    st.metrics.set_serving(&serving);
    Ok(r)
}

async fn shed(err: BoxError) -> Response {
    if err.is::<tower::load_shed::error::Overloaded>() {
        let mut r = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded: too many requests in flight, retry later",
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r.extensions_mut().insert(Shed);
        r
    } else if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took longer than the server's request timeout",
        )
        .into_response()
    } else {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {err}"),
        )
        .into_response()
    }
}

/// Marks a response as shed (for the metrics).
#[derive(Debug, Clone, Copy)]
struct Shed;

/// Counts every request by route template and status, times it, and logs it.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let span = tracing::debug_span!("request", %method, route = %route);
    let response = {
        let _e = span.enter();
        next.run(req)
    }
    .await;
    let status = response.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    let labels = metrics::RouteLabels { route, status };
    st.metrics.requests.get_or_create(&labels).inc();
    st.metrics.latency.get_or_create(&labels).observe(secs);
    if response.extensions().get::<Shed>().is_some() {
        st.metrics.shed.inc();
    }
    tracing::debug!(%method, route = %labels.route, status, ms = secs * 1e3, "request");
    response
}

/// Refuses requests without the configured bearer token (401).
async fn authorize(State(st): State<AppState>, req: Request, next: Next) -> Response {
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
        // Compare without stopping at the first difference.
        let same = given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authorization: a valid `Authorization: Bearer <token>` header is required",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

impl Service {
    /// A service with `config`: no model loaded yet (call [`Service::reload`] or
    /// [`serve`]), ingested attempts written under `config.attempts`.
    ///
    /// # Errors
    /// The attempts folder cannot be opened.
    pub fn new(config: Config) -> Result<Self, ServerError> {
        let recorder = SegmentRecorder::open(&config.attempts, WriterConfig::default())
            .map_err(ServerError::Collector)?;
        let state = Arc::new(Shared {
            models: Models::new(config.models.clone()),
            fleet: Fleet::new(config.health_window, config.max_targets),
            metrics: Metrics::new(config.max_target_labels),
            recorder,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
            config,
        });
        Ok(Self { state })
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Looks for new model versions now.
    ///
    /// # Errors
    /// The models folder cannot be read.
    pub async fn reload(&self) -> std::io::Result<ReloadReport> {
        reload(&self.state).await
    }

    /// Every route, with the limits: body size on all; load shedding (503 + Retry-After)
    /// and the request timeout on the API routes; the token on `/admin/*` and
    /// `/v1/attempts`.
    pub fn router(&self) -> Router {
        let st = Arc::clone(&self.state);
        let c = &st.config;
        let limited = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(shed))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(
                Arc::clone(&st.in_flight),
            ))
            .timeout(c.request_timeout);
        let open = Router::new()
            .route("/v1/models", get(api::list_models))
            .route("/v1/models/{name}", get(api::get_model))
            .route("/v1/predict", post(api::predict))
            .route("/v1/decide", post(api::decide))
            .route("/v1/targets/{target}", get(api::target))
            .route("/v2/models/{name}", get(oip::metadata))
            .route("/v2/models/{name}/ready", get(oip::model_ready))
            .route("/v2/models/{name}/infer", post(oip::infer));
        let guarded = Router::new()
            .route("/v1/attempts", post(api::ingest))
            .route("/admin/reload", post(api::reload))
            .route_layer(middleware::from_fn_with_state(Arc::clone(&st), authorize));
        let api = open.merge(guarded).layer(limited);
        Router::new()
            .route("/healthz", get(api::healthz))
            .route("/readyz", get(api::readyz))
            .route("/v2/health/live", get(oip::live))
            .route("/v2/health/ready", get(oip::ready))
            .route("/metrics", get(api::metrics))
            .route("/openapi.json", get(|| async { axum::Json(openapi()) }))
            .merge(api)
            .fallback(|| async { ApiError::not_found("no such route") })
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed on this route",
                )
            })
            .layer(DefaultBodyLimit::max(c.body_limit))
            .route_layer(middleware::from_fn_with_state(Arc::clone(&st), observe))
            .with_state(st)
    }

    /// Flushes the attempts written so far to disk.
    ///
    /// # Errors
    /// What the collector says.
    pub fn flush(&self) -> Result<(), retrywise_collect::CollectError> {
        self.state.recorder.flush()
    }
}

/// Polls the models folder every `config.poll_interval` until the service is dropped.
pub fn spawn_poller(service: &Service) -> tokio::task::JoinHandle<()> {
    let st = Arc::downgrade(&service.state);
    let every = service.state.config.poll_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(st) = st.upgrade() else { return };
            if let Err(e) = reload(&st).await {
                tracing::warn!(error = %e, dir = %st.models.dir().display(), "cannot read the models folder");
            }
        }
    })
}

/// Binds `config.addr`, loads the models, and serves until `shutdown` resolves; then
/// flushes ingested attempts. Calls `on_bound` with the address bound (useful with port 0).
///
/// # Errors
/// The address cannot be bound; the attempts folder cannot be opened; serving fails.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let addr = config.addr;
    let service = Service::new(config)?;
    match service.reload().await {
        Ok(r) if service.state.models.snapshot().is_empty() => {
            tracing::warn!(dir = %service.state.models.dir().display(), refused = r.failed.len(), "no model loaded yet; /readyz answers 503 until one is")
        }
        Ok(r) => tracing::info!(loaded = ?r.loaded, "models loaded"),
        Err(e) => {
            tracing::warn!(error = %e, dir = %service.state.models.dir().display(), "cannot read the models folder yet")
        }
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(ServerError::Serve)?;
    tracing::info!(%bound, "serving");
    on_bound(bound);
    let poller = spawn_poller(&service);
    let result = axum::serve(listener, service.router())
        .with_graceful_shutdown(shutdown)
        .await;
    poller.abort();
    if let Err(e) = service.flush() {
        tracing::error!(error = %e, "could not flush ingested attempts");
    }
    let _ = service.state.recorder.close();
    result.map_err(ServerError::Serve)
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
