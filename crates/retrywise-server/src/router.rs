//! The routes of a [`Service`], with their limits.

use std::sync::Arc;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tower::ServiceBuilder;

use crate::error::ApiError;
use crate::middleware::{authorize, observe, shed};
use crate::{AppState, Service, api, ingest, oip};

/// `GET /openapi.json`: the document rendered when the service started.
async fn openapi_json(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        st.openapi.clone(),
    )
}

impl Service {
    /// Every route, with the limits: body size on all; load shedding (503 + Retry-After)
    /// and the request timeout on the API routes; the token, when one is configured, on
    /// `/admin/*` and `/v1/attempts`.
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
            .route("/v2/models/{name}/infer", post(oip::infer))
            .route(
                "/v2/models/{name}/versions/{version}",
                get(oip::version_metadata),
            )
            .route(
                "/v2/models/{name}/versions/{version}/ready",
                get(oip::version_ready),
            )
            .route(
                "/v2/models/{name}/versions/{version}/infer",
                post(oip::version_infer),
            );
        // Ingestion within its own share of the room, shed beyond it.
        let ingest_limited = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(shed))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(
                Arc::clone(&st.ingest_in_flight),
            ));
        let guarded = Router::new()
            .route("/v1/attempts", post(ingest::ingest).layer(ingest_limited))
            .route("/admin/reload", post(api::reload))
            .route_layer(middleware::from_fn_with_state(Arc::clone(&st), authorize));
        let api = open.merge(guarded).layer(limited);
        Router::new()
            .route("/healthz", get(api::healthz))
            .route("/readyz", get(api::readyz))
            .route("/v2", get(oip::server_metadata))
            .route("/v2/health/live", get(oip::live))
            .route("/v2/health/ready", get(oip::ready))
            .route("/metrics", get(api::metrics))
            .route("/openapi.json", get(openapi_json))
            .merge(api)
            .fallback(|| async { ApiError::not_found("no such route") })
            .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
            .layer(DefaultBodyLimit::max(c.body_limit))
            .layer(axum::Extension(crate::extract::BodyLimit(c.body_limit)))
            // `layer`, not `route_layer`: an unknown route is a request too (its 404 gets
            // an id and is counted, as `route="unmatched"`).
            .layer(middleware::from_fn_with_state(Arc::clone(&st), observe))
            .with_state(st)
    }
}
