//! The JSON API: health, models, predictions, decisions, ingestion, the fleet view and
//! administration. Every error is a 4xx or 5xx with a body `{"error": "…"}` naming the
//! field at fault.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use retrywise::attempt::{AttemptContext, AttemptRecord, ms_to_duration};
use retrywise::model::{SuccessModel, sanitize_probability};
use retrywise::recorder::Recorder;
use retrywise::retry::{Decision, RetryDecider, RuleBasedAdaptive};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::AppState;
use crate::models::LoadedModel;

/// An error answer: a status and `{"error": message}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// What is wrong, naming the field.
    pub message: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, naming the field (`context.attempt: must be at least 1`).
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// The error for a body that does not deserialize: `what` (where in the request, may be
/// empty), then the field path, then what serde said.
fn refusal(
    what: &str,
    path: &serde_path_to_error::Path,
    inner: impl std::fmt::Display,
) -> ApiError {
    let path = path.to_string();
    let at: Vec<&str> = [what, path.as_str()]
        .into_iter()
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if at.is_empty() {
        ApiError::bad_request(inner.to_string())
    } else {
        ApiError::bad_request(format!("{}: {inner}", at.join(": ")))
    }
}

/// Parses JSON, naming the field of the first problem (`contexts[2].delay_ms: …`); `what`
/// is only called on failure.
pub(crate) fn parse<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, ApiError> {
    // The fast path; on failure, parse again keeping track of the path, for the message.
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| refusal(&what(), e.path(), e.inner()))
}

/// Like [`parse`], from a JSON value already parsed.
fn parse_value<T: DeserializeOwned>(
    v: &serde_json::Value,
    what: impl FnOnce() -> String,
) -> Result<T, ApiError> {
    if let Ok(t) = T::deserialize(v) {
        return Ok(t);
    }
    serde_path_to_error::deserialize(v).map_err(|e| refusal(&what(), e.path(), e.inner()))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_ndjson(ct: &str) -> bool {
    matches!(
        ct,
        "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
    )
}

/// The request body, with 413 for one over the limit.
async fn body(req: Request) -> Result<(HeaderMap, Bytes), ApiError> {
    let headers = req.headers().clone();
    let bytes = Bytes::from_request(req, &())
        .await
        .map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    Ok((headers, bytes))
}

/// A JSON body (`Content-Type` absent or JSON), parsed with field-naming errors.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (headers, bytes) = body(req).await?;
        let ct = content_type(&headers);
        if !(ct.is_empty()
            || ct == "application/json"
            || ct.ends_with("+json")
            || ct == "application/x-www-form-urlencoded")
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("expected a JSON body, got Content-Type {ct}"),
            ));
        }
        parse(&bytes, String::new).map(ApiJson)
    }
}

// ---------------------------------------------------------------------------------------
// Documentation-only schemas (the wire types are retrywise's own).

/// What is known before an attempt (the wire form of `retrywise::attempt::AttemptContext`).
/// Durations are milliseconds (fractions allowed); negative, NaN or infinite values are
/// refused.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct Context {
    /// The target called (a service or endpoint name).
    target: String,
    /// The attempt number about to be made, from 1.
    attempt: u32,
    /// How the previous attempt failed: `timeout`, `connect`, `reset`, `http_429`,
    /// `http_503`, `http_5xx`, `http_4xx` or `other`; absent before the first attempt.
    error: Option<String>,
    /// The previous attempt's HTTP status.
    status: Option<u16>,
    /// The previous attempt's latency, ms.
    latency_ms: Option<f64>,
    /// Time since the call's first attempt started, ms.
    elapsed_ms: Option<f64>,
    /// The Retry-After the previous answer asked for, ms.
    retry_after_ms: Option<f64>,
    /// The wait before this attempt, ms (for predictions: the wait being considered).
    delay_ms: Option<f64>,
    /// The target's recent failure rate in [0, 1]; filled from the fleet view if absent.
    failure_rate: Option<f64>,
    /// The target's recent p95 latency, ms; filled from the fleet view if absent.
    latency_p95_ms: Option<f64>,
    /// Calls in flight to the target.
    in_flight: Option<u32>,
}

// ---------------------------------------------------------------------------------------
// Health.

/// Liveness.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// Readiness.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Whether a model is loaded.
    pub ready: bool,
    /// Models serving.
    pub models: usize,
    /// Whether the model used when a request names none is among them.
    pub default_model: bool,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// A model is loaded: 200, else 503.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Ready), (status = 503, body = ErrorBody)))]
pub(crate) async fn readyz(State(st): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let n = st.models.snapshot().len();
    if n == 0 {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model is loaded",
        ));
    }
    Ok(Json(Ready {
        ready: true,
        models: n,
        default_model: st.models.snapshot().contains_key(&st.config.default_model),
    }))
}

// ---------------------------------------------------------------------------------------
// Models.

/// A model serving.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelSummary {
    /// Its name.
    pub name: String,
    /// The version serving.
    pub version: u32,
    /// When it was trained.
    pub created_at: String,
    /// The feature set it was trained on.
    pub feature_set: String,
    /// Validation metrics (AUC, log-loss, Brier, ECE…).
    #[schema(value_type = Object)]
    pub validation: serde_json::Value,
}

/// The models serving.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// One entry per name.
    pub models: Vec<ModelSummary>,
}

/// One feature.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeatureInfo {
    /// Its name.
    pub name: String,
    /// What it holds.
    pub description: String,
    /// Its weight (on the standardized feature).
    pub weight: f64,
}

/// A model in detail.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelDetail {
    /// Its name.
    pub name: String,
    /// The version serving.
    pub version: u32,
    /// The model family.
    pub kind: String,
    /// When it was trained, and by what.
    pub created_at: String,
    /// The trainer's version.
    pub code_version: String,
    /// The feature set.
    pub feature_set: String,
    /// The features, with weights.
    pub features: Vec<FeatureInfo>,
    /// The intercept.
    pub intercept: f64,
    /// Validation metrics of the model and its baseline.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
    /// The training data: rows, time range, files, fingerprint.
    #[schema(value_type = Object)]
    pub training: serde_json::Value,
}

fn summary(m: &LoadedModel) -> ModelSummary {
    ModelSummary {
        name: m.name.clone(),
        version: m.version,
        created_at: m.artifact.created_at.clone(),
        feature_set: m.artifact.features.set.clone(),
        validation: m
            .artifact
            .metrics
            .get("validation")
            .cloned()
            .unwrap_or(serde_json::Value::Null),
    }
}

/// The models serving, with their versions and validation metrics.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub(crate) async fn list_models(State(st): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        models: st.models.snapshot().values().map(|m| summary(m)).collect(),
    })
}

/// One model: version serving, features and weights, metrics, training summary.
#[utoipa::path(get, path = "/v1/models/{name}", params(("name" = String, Path, description = "The model's name")),
    responses((status = 200, body = ModelDetail), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_model(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelDetail>, ApiError> {
    let set = st.models.snapshot();
    let m = set.get(&name).ok_or_else(|| unknown_model(&name, &set))?;
    let a = &m.artifact;
    let mut training = a.training.clone();
    if let Some(t) = training.as_object_mut() {
        // The file list can be long; the fingerprint identifies it.
        if let Some(files) = t.remove("files") {
            t.insert(
                "file_count".into(),
                files.as_array().map_or(0, Vec::len).into(),
            );
        }
    }
    Ok(Json(ModelDetail {
        name: m.name.clone(),
        version: m.version,
        kind: a.kind.clone(),
        created_at: a.created_at.clone(),
        code_version: a.code_version.clone(),
        feature_set: a.features.set.clone(),
        features: a
            .features
            .names
            .iter()
            .zip(&a.features.descriptions)
            .zip(&a.weights)
            .map(|((n, d), w)| FeatureInfo {
                name: n.clone(),
                description: d.clone(),
                weight: *w,
            })
            .collect(),
        intercept: a.intercept,
        metrics: serde_json::json!({
            "validation": a.metrics.get("validation"),
            "baseline": a.metrics.get("baseline").and_then(|b| b.get("validation")),
        }),
        training,
    }))
}

pub(crate) fn unknown_model(name: &str, set: &crate::models::ModelSet) -> ApiError {
    let known: Vec<&str> = set.keys().map(String::as_str).collect();
    ApiError::not_found(format!(
        "model: unknown model `{name}` (serving: {})",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    ))
}

fn pick(st: &AppState, name: Option<&str>) -> Result<Arc<LoadedModel>, ApiError> {
    let set = st.models.snapshot();
    let name = name.unwrap_or(&st.config.default_model);
    set.get(name)
        .cloned()
        .ok_or_else(|| unknown_model(name, &set))
}

// ---------------------------------------------------------------------------------------
// Predictions and decisions.

/// `POST /v1/predict`: one context, or a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// The model's name (default: the default model).
    pub model: Option<String>,
    /// One context.
    #[schema(value_type = Option<Context>)]
    pub context: Option<AttemptContext>,
    /// Several contexts.
    #[schema(value_type = Option<Vec<Context>>)]
    pub contexts: Option<Vec<AttemptContext>>,
}

/// The probability that an attempt in the context succeeds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    /// The model used.
    pub model: String,
    /// Its version.
    pub version: u32,
    /// p(success) in [0, 1].
    pub p_success: f64,
}

/// The probabilities of a batch, in the order of the contexts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchPrediction {
    /// The model used.
    pub model: String,
    /// Its version.
    pub version: u32,
    /// p(success) per context.
    pub p_success: Vec<f64>,
}

/// Checks a context and fills its target's health from the fleet view.
fn prepare(
    st: &AppState,
    mut ctx: AttemptContext,
    field: impl FnOnce() -> String,
    now: Instant,
) -> Result<AttemptContext, ApiError> {
    ctx.validate()
        .map_err(|e| ApiError::bad_request(format!("{}.{}: {}", field(), e.field, e.problem)))?;
    st.fleet.fill(&mut ctx, now);
    Ok(ctx)
}

fn count_predictions(st: &AppState, m: &LoadedModel, n: u64) {
    st.metrics
        .predictions
        .get_or_create(&crate::metrics::ModelLabels {
            model: m.name.clone(),
            version: m.version.to_string(),
        })
        .inc_by(n);
}

/// p(success) of an attempt: `{"context": {…}}` → `{"model", "version", "p_success"}`, or
/// `{"contexts": […]}` → `{"model", "version", "p_success": […]}`.
#[utoipa::path(post, path = "/v1/predict", request_body = PredictRequest,
    responses((status = 200, description = "One prediction (`context`) or a batch (`contexts`)", body = Prediction),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn predict(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Result<Response, ApiError> {
    let m = pick(&st, req.model.as_deref())?;
    let now = Instant::now();
    match (req.context, req.contexts) {
        (Some(ctx), None) => {
            let ctx = prepare(&st, ctx, || "context".into(), now)?;
            let p = sanitize_probability(m.model.p_success(&ctx));
            count_predictions(&st, &m, 1);
            Ok(Json(Prediction {
                model: m.name.clone(),
                version: m.version,
                p_success: p,
            })
            .into_response())
        }
        (None, Some(ctxs)) => {
            let mut p = Vec::with_capacity(ctxs.len());
            for (i, ctx) in ctxs.into_iter().enumerate() {
                let ctx = prepare(&st, ctx, || format!("contexts[{i}]"), now)?;
                p.push(sanitize_probability(m.model.p_success(&ctx)));
            }
            count_predictions(&st, &m, p.len() as u64);
            Ok(Json(BatchPrediction {
                model: m.name.clone(),
                version: m.version,
                p_success: p,
            })
            .into_response())
        }
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "context, contexts: give one, not both",
        )),
        (None, None) => Err(ApiError::bad_request(
            "context: missing field `context` (or `contexts` for a batch)",
        )),
    }
}

/// `POST /v1/decide`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// The model's name (default: the default model).
    pub model: Option<String>,
    /// The context of the attempt that would come next: `attempt` is its number, `error`
    /// how the last one failed, `elapsed_ms` the time spent so far.
    #[schema(value_type = Context)]
    pub context: AttemptContext,
    /// The call's overall deadline from its first attempt, ms: no retry that cannot start
    /// before it.
    pub deadline_ms: Option<f64>,
}

/// Whether to retry, and after how long.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DecideResponse {
    /// Retry or not.
    pub retry: bool,
    /// How long to wait first, ms (0 when not retrying).
    pub delay_ms: f64,
    /// p(success) of the retry after that wait (of an immediate one when not retrying).
    pub p_success: f64,
    /// `retry`, or why not: `max_attempts`, `low_success_probability`, `deadline`.
    pub reason: String,
    /// The model used.
    pub model: String,
    /// Its version.
    pub version: u32,
}

struct Served(Arc<LoadedModel>);

impl SuccessModel for Served {
    fn p_success(&self, ctx: &AttemptContext) -> f64 {
        self.0.model.p_success(ctx)
    }
}

/// Whether to retry and how long to wait: the design sketch's adaptive rules steered by the model
/// (stop when p(success) is below the configured minimum; wait less when it is high, more
/// when it is low; honour Retry-After; respect the deadline).
#[utoipa::path(post, path = "/v1/decide", request_body = DecideRequest,
    responses((status = 200, body = DecideResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn decide(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<DecideRequest>,
) -> Result<Json<DecideResponse>, ApiError> {
    let m = pick(&st, req.model.as_deref())?;
    let ctx = prepare(&st, req.context, || "context".into(), Instant::now())?;
    let mut decider = RuleBasedAdaptive::new()
        .with_model(Arc::new(Served(Arc::clone(&m))))
        .stop_below(st.config.min_p_success)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let deadline = req
        .deadline_ms
        .map(|ms| {
            ms_to_duration(ms).map_err(|e| ApiError::bad_request(format!("deadline_ms: {e}")))
        })
        .transpose()?;
    if let Some(d) = deadline {
        decider = decider
            .deadline(d)
            .map_err(|e| ApiError::bad_request(format!("deadline_ms: {}", e.problem)))?;
    }
    let decision = match decider.decide(&ctx) {
        // The rules cap every wait at 30 s; a longer Retry-After is still honoured, if the
        // deadline allows it.
        Decision::Retry(d) => match ctx.retry_after.filter(|ra| *ra > d) {
            Some(ra) if deadline.is_some_and(|dl| ctx.elapsed.saturating_add(ra) >= dl) => {
                Decision::Stop(retrywise::retry::StopReason::Deadline)
            }
            Some(ra) => Decision::Retry(ra),
            None => Decision::Retry(d),
        },
        stop => stop,
    };
    let (retry, delay, reason) = match decision {
        Decision::Retry(d) => (true, d, "retry".to_owned()),
        Decision::Stop(r) => (false, Duration::ZERO, r.as_str().to_owned()),
    };
    let mut probe = ctx;
    probe.delay = delay;
    let p = sanitize_probability(m.model.p_success(&probe));
    count_predictions(&st, &m, 1);
    st.metrics
        .decisions
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: reason.clone(),
        })
        .inc();
    Ok(Json(DecideResponse {
        retry,
        delay_ms: delay.as_secs_f64() * 1e3,
        p_success: p,
        reason,
        model: m.name.clone(),
        version: m.version,
    }))
}

// ---------------------------------------------------------------------------------------
// Ingestion.

/// What ingestion did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IngestResponse {
    /// Records accepted (written through the collector and learned from by the fleet view).
    pub accepted: u64,
    /// Records refused as invalid.
    pub rejected: u64,
    /// Why, for the first few refused (`[3].outcome: …`, `line 7: …`).
    pub errors: Vec<String>,
}

const MAX_ERRORS: usize = 10;

/// Refuses records this build's readers could not read back (another major schema
/// version) and records with impossible values, naming the field.
fn check_record(r: AttemptRecord, at: impl Fn() -> String) -> Result<AttemptRecord, ApiError> {
    let current = retrywise::attempt::SchemaVersion::CURRENT;
    if r.schema_version.major != current.major {
        return Err(ApiError::bad_request(format!(
            "{}: schema_version: {} is not supported (this service reads {}.x)",
            at(),
            r.schema_version,
            current.major
        )));
    }
    r.context
        .validate()
        .map_err(|e| ApiError::bad_request(format!("{}: {}: {}", at(), e.field, e.problem)))?;
    if let Some(s) = r.outcome_status
        && !(100..=599).contains(&s)
    {
        return Err(ApiError::bad_request(format!(
            "{}: outcome_status: must be an HTTP status within 100..=599, got {s}",
            at()
        )));
    }
    Ok(r)
}

/// Attempt records, as a JSON array (`Content-Type: application/json`) or NDJSON
/// (`application/x-ndjson`); each valid record is written through the collector and feeds
/// the fleet view, each invalid one is counted and refused. 202.
#[utoipa::path(post, path = "/v1/attempts",
    request_body(content = Vec<Object>, description = "Attempt records (see data/README.md), a JSON array or NDJSON"),
    responses((status = 202, body = IngestResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)),
    security(("token" = [])))]
pub(crate) async fn ingest(
    State(st): State<AppState>,
    req: Request,
) -> Result<(StatusCode, Json<IngestResponse>), ApiError> {
    let (headers, bytes) = body(req).await?;
    let ct = content_type(&headers);
    let mut records = Vec::new();
    let mut errors = Vec::new();
    let mut rejected = 0u64;
    let mut refuse = |msg: String| {
        rejected += 1;
        if errors.len() < MAX_ERRORS {
            errors.push(msg);
        }
    };
    if is_ndjson(&ct) {
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse::<AttemptRecord>(line, || format!("line {}", i + 1))
                .and_then(|r| check_record(r, || format!("line {}", i + 1)))
            {
                Ok(r) => records.push(r),
                Err(e) => refuse(e.message),
            }
        }
    } else if ct.is_empty() || ct == "application/json" || ct.ends_with("+json") {
        let items: Vec<serde_json::Value> = parse(&bytes, || "body".into()).map_err(|e| {
            ApiError::bad_request(format!(
                "{} (expected a JSON array of attempt records)",
                e.message
            ))
        })?;
        for (i, v) in items.into_iter().enumerate() {
            match parse_value::<AttemptRecord>(&v, || format!("[{i}]"))
                .and_then(|r| check_record(r, || format!("[{i}]")))
            {
                Ok(r) => records.push(r),
                Err(e) => refuse(e.message),
            }
        }
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected Content-Type application/json or application/x-ndjson, got {ct}"),
        ));
    }
    let now = Instant::now();
    let accepted = records.len() as u64;
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for r in records {
        if st.fleet.observe(&r, now, wall_ms) == crate::fleet::Observed::Full {
            tracing::debug!(target_name = %r.context.target, "fleet view full: target not tracked");
        }
        st.metrics
            .ingested
            .get_or_create(&crate::metrics::TargetLabels {
                target: st.metrics.target_label(&r.context.target),
            })
            .inc();
        st.recorder.record(r);
    }
    st.metrics.rejected.inc_by(rejected);
    st.metrics
        .targets
        .set(i64::try_from(st.fleet.len()).unwrap_or(i64::MAX));
    st.sync_dropped();
    Ok((
        StatusCode::ACCEPTED,
        Json(IngestResponse {
            accepted,
            rejected,
            errors,
        }),
    ))
}

// ---------------------------------------------------------------------------------------
// Fleet, metrics, administration.

/// A target's rolling health and shared breaker state, from the attempts ingested.
#[utoipa::path(get, path = "/v1/targets/{target}", params(("target" = String, Path, description = "The target's name")),
    responses((status = 200, body = crate::fleet::TargetView), (status = 404, body = ErrorBody)))]
pub(crate) async fn target(
    State(st): State<AppState>,
    Path(target): Path<String>,
) -> Result<Json<crate::fleet::TargetView>, ApiError> {
    st.fleet
        .view(&target, Instant::now())
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "target: no attempts to `{target}` have been ingested"
            ))
        })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format 0.0.4", body = String)))]
pub(crate) async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    st.sync_dropped();
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.metrics.render(),
    )
}

/// What a reload did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReloadResponse {
    /// `name/version` swapped in.
    pub loaded: Vec<String>,
    /// `name/version: why` refused (the version before keeps serving).
    pub failed: Vec<String>,
    /// `name/version` serving now.
    pub serving: Vec<String>,
}

/// Looks for new model versions now.
#[utoipa::path(post, path = "/admin/reload", responses((status = 200, body = ReloadResponse), (status = 401, body = ErrorBody),
    (status = 500, body = ErrorBody)), security(("token" = [])))]
pub(crate) async fn reload(State(st): State<AppState>) -> Result<Json<ReloadResponse>, ApiError> {
    let r = crate::reload(&st).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("models: cannot read {}: {e}", st.models.dir().display()),
        )
    })?;
    Ok(Json(ReloadResponse {
        loaded: r.loaded.iter().map(|(n, v)| format!("{n}/{v}")).collect(),
        failed: r
            .failed
            .iter()
            .map(|(n, v, why)| format!("{n}/{v}: {why}"))
            .collect(),
        serving: st
            .models
            .snapshot()
            .values()
            .map(|m| format!("{}/{}", m.name, m.version))
            .collect(),
    }))
}
