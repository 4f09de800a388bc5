//! # retrywise-server
//!
//! The prediction and decision service: any caller, in any language, asks "will a retry
//! work, and how long should I wait?" over HTTP.
//!
//! - `POST /v1/predict` — p(success) of an attempt in a context (one, or a batch);
//! - `POST /v1/decide` — retry or not, the wait, p(success) and the reason: the answer of
//!   the `retrywise` crate's decider, never the handler's own;
//! - `POST /v1/attempts` — attempt records (JSON array or NDJSON) written through the
//!   collector (a 202 means written and fsynced, unless `sync_ingest` is off); they feed each target's rolling health — the same
//!   definition embedded policies use — and a shared breaker (`GET /v1/targets/{target}`),
//!   which fill what predictions are not told;
//! - `GET /v1/models[/{name}]`, `POST /admin/reload`, `GET /metrics`, `GET /openapi.json`,
//!   `GET /healthz`, `GET /readyz`, and the KServe v2 routes under `/v2`.
//!
//! Models are `models/<name>/<version>/model.json`; the highest valid version of each name
//! serves, and new versions are swapped in without a request failing or waiting
//! ([`models`]). The features come from `retrywise::features`, the encoder the trainer used;
//! the request schemas of the OpenAPI document come from the attempt schema.
//!
//! Inside: `state` (the shared state and [`Service`]), [`config`] (defaults, file,
//! environment, flags), `router` (routes and limits), `middleware` (request ids, metrics,
//! the token, shedding), `extract` (bodies read and refused by name), [`api`], `ingest`
//! and [`oip`] (handlers), [`fleet`] (each target's health, circuit, limit and hedge
//! delay), [`shared`] (that view shared between replicas through Redis), [`metrics`],
//! `openapi`, `poller` (model hot swap), `serve` (start and stop).
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
mod extract;
pub mod fleet;
mod ingest;
pub mod metrics;
mod middleware;
pub mod models;
pub mod oip;
mod openapi;
mod poller;
mod router;
mod serve;
pub mod shared;
mod state;

pub use config::Config;
pub use error::{ApiError, ErrorBody, ServerError};
pub use extract::{ApiJson, AtMost, Given, Params, Scalars};
pub use ingest::IngestResponse;
pub use openapi::openapi;
pub use poller::spawn_poller;
pub use serve::{serve, shutdown_signal};
pub use state::{AppState, Service, Shared, reload};
