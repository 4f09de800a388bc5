//! The JSON API: health, models, predictions, decisions, the fleet view, metrics and
//! administration (ingestion is in `ingest.rs`, the KServe protocol in `oip.rs`). Every
//! error is a 4xx or 5xx with a body `{"error": "…"}` naming the field at fault.
//!
//! A handler parses, completes the context's health from the fleet view, calls the
//! `retrywise` crate, and serializes: the decisions are the crate's, not the handler's.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use retrywise::attempt::schema::MAX_MS;
use retrywise::attempt::{AttemptContext, ms_to_duration};
use retrywise::model::{SuccessModel, sanitize_probability};
use retrywise::retry::{
    DEFAULT_MIN_SUPPORT, Decision, Fallback, ModelDecider, RetryDecider, supports,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Given};
use crate::models::LoadedModel;
use crate::openapi::MAX_BATCH;

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
    /// Whether the model used when a request names none is among them (always, when
    /// ready: without it the answer is 503).
    pub default_model: bool,
    /// Where the fleet view comes from: `in-process` (no `--fleet`), `shared` (Redis
    /// answers) or `local` (Redis unreachable, or the fleet in Redis counts with another
    /// health window: this replica's own view until that changes — the replica stays
    /// ready).
    pub fleet: String,
    /// Why, with a shared fleet view: the last Redis error while `local`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_detail: Option<String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The default model is serving: 200, else 503 naming what is missing.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Ready), (status = 503, body = ErrorBody)))]
pub(crate) async fn readyz(State(st): State<AppState>) -> Result<Json<Ready>, ApiError> {
    not_ready(&st)?;
    let n = st.models.snapshot().len();
    let (fleet, fleet_detail) = match st.fleet.shared().map(|s| s.status()) {
        None => ("in-process", None),
        Some(s) if s.shared => ("shared", Some(s.detail)),
        Some(s) => ("local", Some(s.detail)),
    };
    Ok(Json(Ready {
        ready: true,
        models: n,
        default_model: st.models.snapshot().contains_key(&st.config.default_model),
        fleet: fleet.to_owned(),
        fleet_detail,
    }))
}

/// Why the service is not ready, if it is not: its default model (`default_model`) is not
/// serving - no model is loaded yet, or others are but not that one (its versions refused,
/// or not there): requests that name no model would be answered without it, so a load
/// balancer should send them elsewhere. (`/readyz` and the KServe `/v2/health/ready`.)
pub(crate) fn not_ready(st: &AppState) -> Result<(), ApiError> {
    let set = st.models.snapshot();
    let default = &st.config.default_model;
    if set.contains_key(default) {
        return Ok(());
    }
    Err(ApiError::unavailable(
        if set.is_empty() {
            "no model is loaded".to_owned()
        } else {
            format!(
                "the default model `{default}` (setting `default_model`) is not serving (serving: {})",
                set.keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        None,
    ))
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
    /// Validation metrics (AUC, log-loss, Brier, ECE…); `null` when the model file holds
    /// none.
    #[schema(value_type = Option<Object>)]
    pub validation: Option<serde_json::Value>,
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
            .filter(|v| !v.is_null())
            .cloned(),
    }
}

/// The models serving, with their versions and validation metrics.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList), (status = 503, body = ErrorBody)))]
pub(crate) async fn list_models(State(st): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        models: st.models.snapshot().values().map(|m| summary(m)).collect(),
    })
}

/// One model: version serving, features and weights, metrics, training summary.
#[utoipa::path(get, path = "/v1/models/{name}", params(("name" = String, Path, description = "The model's name")),
    responses((status = 200, body = ModelDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn get_model(
    State(st): State<AppState>,
    crate::extract::ApiPath(name): crate::extract::ApiPath<String>,
) -> Result<Json<ModelDetail>, ApiError> {
    let m = pick(&st, Some(&name), None)?;
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

/// 404 for a model the service does not serve; 503 for the default model (`default`)
/// while it serves none at all - it is starting, or its models folder has no valid
/// version yet (`/readyz` says so too): come back, rather than "no such model". A caller
/// that named no model (`defaulted`) is told which setting named this one; one that named
/// it (a body's `model`, a path) is not.
pub(crate) fn unknown_model(
    name: &str,
    set: &crate::models::ModelSet,
    default: &str,
    defaulted: bool,
) -> ApiError {
    if set.is_empty() && name == default {
        return ApiError::unavailable(
            format!("model: no model is loaded yet (asked for `{name}`)"),
            Some(1),
        );
    }
    let known: Vec<&str> = set.keys().map(String::as_str).collect();
    let serving = if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    };
    if defaulted {
        // The caller named no model: say which setting named this one.
        return ApiError::not_found(format!(
            "model: the default model `{name}` (setting `default_model`) is not serving (serving: {serving}); name one with `model`"
        ));
    }
    // (The name as given may be a megabyte: the answer quotes its first 256 characters.)
    ApiError::not_found(format!(
        "model: unknown model `{}` (serving: {serving})",
        retrywise::attempt::clipped(name)
    ))
}

/// The model a request is answered by: the one it names; else, with `model_per_target`,
/// the one named after `target` (the contexts' one target) when it is serving; else the
/// default model.
pub(crate) fn pick(
    st: &AppState,
    named: Option<&str>,
    target: Option<&str>,
) -> Result<Arc<LoadedModel>, ApiError> {
    if named == Some("") {
        return Err(ApiError::bad_request(
            "model: an empty name names no model (leave it out for the default)",
        ));
    }
    let set = st.models.snapshot();
    if named.is_none()
        && st.config.model_per_target
        && let Some(own) = target.and_then(|t| set.get(t))
    {
        return Ok(Arc::clone(own));
    }
    let name = named.unwrap_or(&st.config.default_model);
    set.get(name)
        .cloned()
        .ok_or_else(|| unknown_model(name, &set, &st.config.default_model, named.is_none()))
}

/// The one target of `ctxs`, if they share one.
fn one_target(ctxs: &[AttemptContext]) -> Option<&str> {
    let first = ctxs.first()?;
    ctxs.iter()
        .all(|c| c.target == first.target)
        .then_some(&*first.target)
}

// ---------------------------------------------------------------------------------------
// Predictions and decisions.

/// `POST /v1/predict`: one context, or a batch (its schema in the OpenAPI document is
/// derived from the attempt schema).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// The model's name (default: with `model_per_target`, the model named after the
    /// target when one is serving; else the default model).
    pub model: Option<String>,
    /// One context.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: Given<AttemptContext>,
    /// Several contexts (at most 1000).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub contexts: Given<crate::extract::AtMost<AttemptContext, { crate::openapi::MAX_BATCH }>>,
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

/// The answer of `/v1/predict`: one prediction, or a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PredictResponse {
    /// For `context`.
    One(Prediction),
    /// For `contexts`.
    Batch(BatchPrediction),
}

/// Checks a context and fills its target's health from the fleet view.
pub(crate) fn prepare(
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

pub(crate) fn count_predictions(st: &AppState, m: &LoadedModel, n: u64) {
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
    responses((status = 200, description = "One prediction (`context`) or a batch (`contexts`)", body = PredictResponse),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn predict(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Result<Json<PredictResponse>, ApiError> {
    let now = Instant::now();
    // Every context is checked before the model is looked up: a request that can never
    // succeed is not answered 503 (with a Retry-After) while no model is loaded.
    let (ctxs, batch) = match (req.context.into_option(), req.contexts.into_option()) {
        (Some(ctx), None) => (vec![prepare(&st, ctx, || "context".into(), now)?], false),
        (None, Some(crate::extract::AtMost(ctxs))) => {
            if ctxs.is_empty() || ctxs.len() > MAX_BATCH {
                return Err(ApiError::bad_request(format!(
                    "contexts: must hold 1 to {MAX_BATCH} contexts, got {}",
                    ctxs.len()
                )));
            }
            let ctxs = ctxs
                .into_iter()
                .enumerate()
                .map(|(i, ctx)| prepare(&st, ctx, || format!("contexts[{i}]"), now))
                .collect::<Result<Vec<_>, _>>()?;
            (ctxs, true)
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "context, contexts: give one, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "context: missing field `context` (or `contexts` for a batch)",
            ));
        }
    };
    let m = pick(&st, req.model.as_deref(), one_target(&ctxs))?;
    let p: Vec<f64> = ctxs
        .iter()
        .map(|ctx| sanitize_probability(m.model.p_success(ctx)))
        .collect();
    count_predictions(&st, &m, p.len() as u64);
    Ok(Json(if batch {
        PredictResponse::Batch(BatchPrediction {
            model: m.name.clone(),
            version: m.version,
            p_success: p,
        })
    } else {
        PredictResponse::One(Prediction {
            model: m.name.clone(),
            version: m.version,
            p_success: p[0],
        })
    }))
}

/// `POST /v1/decide` (its schema in the OpenAPI document is derived from the attempt
/// schema).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// The model's name (default: with `model_per_target`, the model named after the
    /// target when one is serving; else the default model).
    pub model: Option<String>,
    /// The context of the attempt that would come next: `attempt` is its number, `error`
    /// how the last one failed, `elapsed_ms` the time spent so far.
    #[schema(value_type = Object)]
    pub context: AttemptContext,
    /// The call's overall deadline from its first attempt, ms: no retry that cannot start
    /// before it.
    pub deadline_ms: Option<f64>,
    /// Also answer every wait weighed, with its p(success) and value (for debugging). A
    /// retry's decision (`attempt` ≥ 2) weighs a grid of waits; admission (`attempt` 1)
    /// weighs none, and answers an empty list.
    #[serde(default)]
    pub alternatives: bool,
    /// When asking again about a retry after waiting as told (a `circuit_open_wait` or
    /// `circuit_half_open_wait` answer): the time waited since the failure in `context`,
    /// ms (`elapsed_ms` counts it: one shorter reads the failure as at the call's start).
    /// The decider then weighs the retry as at the failure (`elapsed_ms` less this), and
    /// the answer is what is left of its wait
    /// (none when the wait already waited is longer). Without it a retry is decided afresh
    /// from now: its wait, a Retry-After's above all, is waited in full. Admission
    /// (`attempt` 1) ignores it: a fresh call is judged as of now.
    pub waited_ms: Option<f64>,
}

/// One wait `/v1/decide` weighed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AlternativeView {
    /// The wait, ms.
    pub delay_ms: f64,
    /// p(success) of the attempt after it.
    pub p_success: f64,
    /// Its value in units of one successful call (see `retrywise::retry::ModelDecider`).
    pub value: f64,
    /// The retries this service already told callers to make where it would land, over
    /// the calls the target is offered there (`retrywise::retry::RetryCalendar`).
    pub load: f64,
}

/// Whether to retry, and after how long.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DecideResponse {
    /// Retry or not; for a first attempt (`attempt` 1), send the call or not.
    pub retry: bool,
    /// How long to wait first, ms (0 when not retrying, or to send now).
    pub delay_ms: f64,
    /// p(success) the decision rests on: of the retry after that wait, or of the best wait
    /// when not retrying (none when it stopped before weighing).
    pub p_success: Option<f64>,
    /// `retry`, or why not: `max_attempts`, `low_success_probability`, `deadline`,
    /// `retry_after_too_long`, `not_retryable` (a permanent `status`: a 4xx other than 408,
    /// 425 and 429). For a first attempt (admission): `admit` (send now),
    /// `predicted_recovery` (wait `delay_ms`: a fresh call is predicted to fail now and to
    /// succeed often enough after the wait), `circuit_open_wait` (the fleet's shared circuit
    /// is open a while more: `delay_ms` is that time and up to half as much again, drawn per
    /// caller so that callers told at once do not return together, within the deadline), `circuit_open` (open beyond the
    /// deadline, or forced open: fail fast), `probe` (the shared circuit's open time has
    /// passed: send now as one of its probes, whatever the model says), `circuit_half_open_wait`
    /// (its probes are all out: wait for their verdict, `delay_ms` spread as for
    /// `circuit_open_wait`), `circuit_half_open` (its probes are all out and their verdict
    /// will not come within the deadline: fail fast), `low_success_probability` (no wait within the
    /// deadline makes a fresh call worth sending), `deadline` (`elapsed_ms` has already
    /// reached `deadline_ms`: fail fast). An admission that says wait is answered for now:
    /// wait `delay_ms`, then ask again before sending (the circuit may have moved on). A
    /// retry passes the same shared circuit: while it is not closed, a retry is answered
    /// `circuit_open_wait` or `circuit_half_open_wait` (`delay_ms` as above, or the
    /// decider's own wait when longer; then ask again), `circuit_open` or
    /// `circuit_half_open` (not within the deadline), or `probe` (one of a HALF_OPEN
    /// circuit's probes: send now). While the circuit probes, a retry the decider would
    /// send later (its own wait, a Retry-After) is told `circuit_half_open_wait` with that
    /// wait, and takes no probe's place until it asks again. Asking again after any such
    /// wait, give `waited_ms`: the retry is then weighed as at its failure, and only what
    /// is left of its wait is answered.
    pub reason: String,
    /// Whether the rule-based fallback decided: the default model is not serving (it was
    /// asked for, by name or by naming none; `version` is then 0), the model answered NaN, or it was trained on too
    /// few rows like this context. Another model named but not served is a 404 naming the models
    /// that are.
    pub fell_back: bool,
    /// Whether the decision explored: a retry, after a wait drawn uniformly from those
    /// weighed, where the model judged no wait worth an attempt. The service explores that
    /// share of such stops given by its `explore` setting (default 0, never), so that
    /// the attempts callers record keep teaching the model; record the attempt as explored.
    pub explored: bool,
    /// The probability with which this decision was taken when it explored: the `explore`
    /// share times one over the waits weighed (the wait is drawn uniformly among them), for
    /// an unbiased estimate of what each wait does; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propensity: Option<f64>,
    /// Every wait weighed, shortest first (when asked with `"alternatives": true`; empty
    /// for admission, which weighs none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternatives: Option<Vec<AlternativeView>>,
    /// The model used (the default's name when none is serving).
    pub model: String,
    /// Its version; 0 when no model is serving (the rules decided).
    pub version: u32,
}

/// The serving model, as the crate's `SuccessModel`.
/// Counts the predictions made through it (`retrywise_predictions_total`: every p the
/// model computed for a request, whichever step asked).
struct Served(Arc<LoadedModel>, std::sync::atomic::AtomicU64);

impl Served {
    fn new(m: &Arc<LoadedModel>) -> Arc<Self> {
        Arc::new(Self(Arc::clone(m), std::sync::atomic::AtomicU64::new(0)))
    }

    fn made(&self, n: usize) {
        self.1
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts the predictions made so far as the model's.
    fn count(&self, st: &AppState) {
        let n = self.1.load(std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            count_predictions(st, &self.0, n);
        }
    }
}

impl SuccessModel for Served {
    fn p_success(&self, ctx: &AttemptContext) -> f64 {
        self.made(1);
        self.0.model.p_success(ctx)
    }

    fn p_success_by_delay(
        &self,
        ctx: &AttemptContext,
        delays: &[std::time::Duration],
        out: &mut [f64],
    ) {
        self.made(delays.len().min(out.len()));
        self.0.model.p_success_by_delay(ctx, delays, out);
    }

    fn p_success_by_logged_delay(
        &self,
        ctx: &AttemptContext,
        delays: &[std::time::Duration],
        log_delays: &[f64],
        out: &mut [f64],
    ) {
        self.made(delays.len().min(out.len()));
        self.0
            .model
            .p_success_by_logged_delay(ctx, delays, log_delays, out);
    }

    fn trained_on(&self, ctx: &AttemptContext) -> Option<u64> {
        self.0.model.rows_like(ctx)
    }
}

/// The decider `/v1/decide` answers with: the crate's model-driven decider with the
/// serving model, an attempt costing the service's `min_p_success` and the call's
/// deadline — what an embedded policy configured the same way decides (its near-optimal
/// wait drawn at random, as every caller's would be), with one retry calendar for every
/// caller, so that callers told of the same failure are told to retry apart.
fn decider(
    st: &AppState,
    model: Option<Arc<Served>>,
    deadline: Option<std::time::Duration>,
) -> Result<ModelDecider, ApiError> {
    let config = &st.config;
    let mut b = ModelDecider::builder()
        .maybe_model(model.map(|m| m as Arc<dyn SuccessModel>))
        .calendar(Arc::clone(&st.calendar))
        .attempt_cost(config.min_p_success.clamp(1e-6, 0.999))
        .explore(config.explore);
    if let Some(d) = deadline {
        b = b.deadline(d);
    }
    b.build().map_err(|e| {
        if e.field == "deadline" {
            ApiError::bad_request(format!("deadline_ms: {}", e.problem))
        } else {
            ApiError::internal(e)
        }
    })
}

/// Whether to retry and how long to wait: `retrywise::retry::ModelDecider` with the
/// serving model — the wait worth the most by predicted p(success), the attempt's cost
/// (`min_p_success`, dearer when the target fails often) and the deadline; never before
/// Retry-After, and a stop when Retry-After is beyond its 30 s cap. For a first attempt
/// (`attempt` 1), admission: send now, wait (for the fleet's shared circuit, or until a
/// fresh call is predicted worth sending) and how long, or fail fast.
#[utoipa::path(post, path = "/v1/decide", request_body = DecideRequest,
    responses((status = 200, body = DecideResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn decide(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<DecideRequest>,
) -> Result<Json<DecideResponse>, ApiError> {
    // The request is checked before the model is looked up (as `/v1/predict` does): a bad
    // context or deadline is a 400 naming its field, not a 404 for the model it would have
    // used.
    let ctx = prepare(&st, req.context, || "context".into(), Instant::now())?;
    let deadline = req
        .deadline_ms
        .map(|ms| {
            if !(1e-6..=MAX_MS).contains(&ms) {
                return Err(ApiError::bad_request(format!(
                    "deadline_ms: must be within [1e-6, {MAX_MS}] (a nanosecond to about 31 years), got {ms}"
                )));
            }
            ms_to_duration(ms).map_err(|e| ApiError::bad_request(format!("deadline_ms: {e}")))
        })
        .transpose()?;
    let waited = req
        .waited_ms
        .map(|ms| ms_to_duration(ms).map_err(|e| ApiError::bad_request(format!("waited_ms: {e}"))))
        .transpose()?
        .unwrap_or_default();
    // The default model not serving (before it is loaded, or while its only versions are
    // refused, whatever other models serve): the default is answered by the decider's
    // rules, and says so. Another model named but not served stays a 404.
    let m = match pick(&st, req.model.as_deref(), Some(&ctx.target)) {
        Ok(m) => Some(m),
        Err(_)
            if req
                .model
                .as_deref()
                .is_none_or(|m| m == st.config.default_model)
                && !st
                    .models
                    .snapshot()
                    .contains_key(st.config.default_model.as_str()) =>
        {
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| {
                tracing::warn!(
                    model = %st.config.default_model,
                    "the default model is not serving: /v1/decide answers with its rules until it is loaded"
                );
            });
            None
        }
        Err(e) => return Err(e),
    };
    if ctx.attempt == 1 {
        let served = m.as_ref().map(Served::new);
        let (mut answer, fallback) = admit(&st, served.as_ref(), &ctx, deadline);
        if req.alternatives {
            answer.alternatives = Some(Vec::new());
        }
        if let Some(s) = &served {
            s.count(&st);
        }
        if let Some(why) = fallback {
            st.metrics.fallback(why.as_str());
            why.warn_once();
        }
        st.metrics
            .decisions
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: answer.reason.clone(),
            })
            .inc();
        if let Some(p) = answer.p_success {
            st.metrics.decision_p.observe(p);
        }
        return Ok(Json(answer));
    }
    let decided_at = Instant::now();
    let served = m.as_ref().map(Served::new);
    let decider = decider(&st, served.clone(), deadline)?;
    // Asked again after a wait it was told: decided as at the failure, the wait waited
    // already counted towards the decider's.
    let at_failure = {
        let mut c = ctx.clone();
        c.elapsed = c.elapsed.saturating_sub(waited);
        c
    };
    let mut weighed = decider.weigh_after(&at_failure, waited);
    let explained = weighed.explained;
    let (retry, delay, reason) = match explained.decision {
        Decision::Retry(d) => (true, d, "retry"),
        Decision::Stop(r) => (false, std::time::Duration::ZERO, r.as_str()),
    };
    // A retry is a call to the target like a first attempt: the fleet's shared circuit
    // has its say (an embedded policy asks its breaker before every attempt), so that no
    // caller is told to retry in a second into a circuit open for thirty.
    let (retry, delay, reason, p_success) = if retry {
        let left = deadline.map(|d| d.saturating_sub(ctx.elapsed));
        let gated = match gate(&st, &ctx, delay, left) {
            Gate::Pass => (true, delay, reason),
            // One of the probes, sent now (its wait, a Retry-After's above all, is over).
            Gate::Probe => (true, delay, "probe"),
            Gate::Wait(w, why) => (true, w, why),
            Gate::Refuse(why) => (false, std::time::Duration::ZERO, why),
        };
        match gated {
            // The decider's own retry, on its own time: only the reason may differ.
            (true, w, why) if w == delay => (true, w, why, explained.p_success),
            (send, w, why) => {
                // Not the retry the decider weighed: what it booked for it moves (or goes:
                // no phantom load for the callers after), and an explored retry that the
                // circuit moved is no longer the draw its propensity was of.
                decider.replanned(&at_failure, decided_at, delay, send.then_some(w));
                weighed.propensity = None;
                let p = served
                    .as_ref()
                    .filter(|_| send && weighed.fallback.is_none())
                    .map(|m| {
                        let mut c = at_failure.clone();
                        c.delay = w.saturating_add(waited);
                        m.p_success(&c)
                    })
                    .filter(|p| !p.is_nan());
                (send, w, why, p)
            }
        }
    } else {
        (retry, delay, reason, explained.p_success)
    };
    // One p(success) per wait weighed (none when the decision stopped before weighing:
    // a permanent status, the last attempt, no time), and one for a retry the circuit
    // moved.
    if let Some(s) = &served {
        s.count(&st);
    }
    st.metrics
        .decisions
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: reason.to_owned(),
        })
        .inc();
    if let Some(p) = p_success {
        st.metrics.decision_p.observe(p);
    }
    if weighed.explored() {
        st.metrics.decisions_explored.inc();
    }
    let (model, version) = served_as(&st, m.as_ref());
    if let Some(why) = weighed.fallback {
        st.metrics.fallback(why);
        tracing::debug!(
            model = %model,
            version,
            reason = why,
            "/v1/decide fell back to its rules"
        );
    }
    let alternatives = req.alternatives.then(|| {
        weighed
            .alternatives
            .iter()
            .map(|a| AlternativeView {
                delay_ms: a.wait.as_secs_f64() * 1e3,
                p_success: a.p_success,
                value: a.value,
                load: a.load,
            })
            .collect()
    });
    Ok(Json(DecideResponse {
        retry,
        delay_ms: delay.as_secs_f64() * 1e3,
        p_success,
        reason: reason.to_owned(),
        fell_back: weighed.fell_back(),
        explored: weighed.explored(),
        propensity: weighed.propensity,
        alternatives,
        model,
        version,
    }))
}

/// The name and version a decision names: the model's, or — none serving — the default's
/// name and version 0.
fn served_as(st: &AppState, m: Option<&Arc<LoadedModel>>) -> (String, u32) {
    m.map_or_else(
        || (st.config.default_model.clone(), 0),
        |m| (m.name.clone(), m.version),
    )
}

/// The reasons a decision gives besides the stop reasons of `retrywise::retry::StopReason`
/// (the OpenAPI lists them all as `DecideResponse.reason`'s enum).
pub(crate) const DECISION_REASONS: [&str; 7] = [
    "retry",
    "probe",
    "admit",
    "predicted_recovery",
    "circuit_open_wait",
    "circuit_half_open_wait",
    "circuit_half_open",
];

/// What the fleet's shared circuit for a target says of a call to it that would go after
/// `wait` (`left`: the time to the call's deadline).
enum Gate {
    /// Closed: go as decided.
    Pass,
    /// HALF_OPEN, and this call is one of its probes: send it now (the circuit's open time
    /// was its wait; its verdict is what the circuit waits for).
    Probe,
    /// Wait this long, then ask again before sending (the circuit's open time, or its
    /// probes' lease, spread over half as long again within the deadline, or the decider's
    /// own wait when longer: the circuit will have moved on by then), for this reason.
    Wait(std::time::Duration, &'static str),
    /// Fail fast, for this reason: forced open, or open (or probing) beyond the deadline.
    Refuse(&'static str),
}

/// The shared circuit's say in a call that would go after `wait` (see [`Gate`]): a first
/// attempt's admission, and every retry's. While the circuit is not closed no call is
/// simply let through: one that would go after its open time is told to ask again then,
/// as a HALF_OPEN circuit rations its probes when they are sent.
fn gate(
    st: &AppState,
    ctx: &AttemptContext,
    wait: std::time::Duration,
    left: Option<std::time::Duration>,
) -> Gate {
    use retrywise::breaker::State;
    use std::time::Duration;
    let fits = |w: Duration| left.is_none_or(|l| w < l);
    // A wait of `r` for the circuit, spread over half as long again: callers all told the
    // same moment would arrive together at a target just recovering (within the deadline);
    // never sooner than the call would have gone.
    let spread = |r: Duration| {
        let w = r + r.mul_f64(0.5 * rand::random::<f64>());
        (if fits(w) { w } else { r }).max(wait)
    };
    match st.fleet.circuit(&ctx.target) {
        Some((State::ForcedOpen, _)) => Gate::Refuse("circuit_open"),
        Some((State::Open, Some(r))) if fits(r) => Gate::Wait(spread(r), "circuit_open_wait"),
        Some((State::Open, _)) => Gate::Refuse("circuit_open"),
        // Probing, and the call would go later (a retry's own wait, a Retry-After): no
        // probe's place is taken now for a request sent then - the places are rationed
        // per lease, as probes are sent. It waits, and asks again when its wait is over.
        Some((State::HalfOpen, _)) if !wait.is_zero() => Gate::Wait(wait, "circuit_half_open_wait"),
        // Probing: the first few callers go as its probes, now; the rest wait for their
        // verdict (spread as for an open circuit), or fail fast without the time.
        Some((State::HalfOpen, _)) => match st.fleet.admit_probe(&ctx.target, Instant::now()) {
            Ok(()) => Gate::Probe,
            Err(r) if fits(r) => Gate::Wait(spread(r), "circuit_half_open_wait"),
            Err(_) => Gate::Refuse("circuit_half_open"),
        },
        _ => Gate::Pass,
    }
}

/// Admission of a first attempt: send now, wait and how long, or fail fast — by the fleet's
/// shared circuit for the target, then by the serving model's p of a fresh call against the
/// attempt cost (`min_p_success`, the shared breaker's threshold too).
fn admit(
    st: &AppState,
    m: Option<&Arc<Served>>,
    ctx: &AttemptContext,
    deadline: Option<std::time::Duration>,
) -> (DecideResponse, Option<Fallback>) {
    use retrywise::breaker::Recovery;
    use std::time::Duration;
    let left = deadline.map(|d| d.saturating_sub(ctx.elapsed));
    let (model, version) = served_as(st, m.map(|m| &m.0));
    // The model's p of a fresh call now, or why the model is not asked (as for a retry:
    // none serving, too few training rows like this call, a NaN answer): then the fleet's
    // circuit alone decides, and a call is sent.
    let fresh = match m {
        None => Err(Fallback::NoModel),
        Some(m) if !supports(&m.0.model, ctx, DEFAULT_MIN_SUPPORT) => Err(Fallback::Unsupported),
        Some(m) => {
            let mut c = ctx.clone();
            c.delay = Duration::ZERO;
            Some(m.p_success(&c))
                .filter(|p| !p.is_nan())
                .ok_or(Fallback::NaN)
        }
    };
    let fallback = fresh.err();
    let answer = |send: bool, wait: Duration, p: Option<f64>, reason: &str| {
        let response = DecideResponse {
            retry: send,
            delay_ms: wait.as_secs_f64() * 1e3,
            p_success: p,
            reason: reason.to_owned(),
            fell_back: fallback.is_some(),
            explored: false,
            propensity: None,
            alternatives: None,
            model: model.clone(),
            version,
        };
        (response, fallback)
    };
    let p_after = |w: Duration| {
        let mut c = ctx.clone();
        c.delay = w;
        m.filter(|_| fallback.is_none())
            .map(|m| m.p_success(&c))
            .filter(|p| !p.is_nan())
    };
    if left.is_some_and(|l| l.is_zero()) {
        // No call may start at or after the deadline (as for a retry).
        return answer(
            false,
            Duration::ZERO,
            None,
            retrywise::retry::StopReason::Deadline.as_str(),
        );
    }
    match gate(st, ctx, Duration::ZERO, left) {
        Gate::Pass => {}
        Gate::Refuse(why) => return answer(false, Duration::ZERO, None, why),
        Gate::Wait(w, why) => return answer(true, w, p_after(w), why),
        // A probe: sent whatever the model says of a fresh call, or the circuit would
        // wait for ever for evidence nobody sends.
        Gate::Probe => return answer(true, Duration::ZERO, fresh.ok(), "probe"),
    }
    let threshold = st.config.min_p_success;
    let (Ok(now), Some(m)) = (fresh, m) else {
        return answer(true, Duration::ZERO, None, "admit");
    };
    if now >= threshold {
        return answer(true, Duration::ZERO, Some(now), "admit");
    }
    // The breaker's rule for how long to stay open, with the request's model and the
    // call's deadline.
    let prediction = retrywise::breaker::Prediction::new(Arc::clone(m) as Arc<dyn SuccessModel>)
        .threshold(threshold.clamp(1e-6, 0.999));
    match prediction.recovery(ctx, left) {
        Recovery::After { wait, p_success } => {
            answer(true, wait, Some(p_success), "predicted_recovery")
        }
        Recovery::NotWithin | Recovery::Unknown => {
            answer(false, Duration::ZERO, Some(now), "low_success_probability")
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fleet, metrics, administration.

/// A target's rolling health and shared breaker state, from the attempts ingested.
#[utoipa::path(get, path = "/v1/targets/{target}", params(("target" = String, Path, description = "The target's name")),
    responses((status = 200, body = crate::fleet::TargetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn target(
    State(st): State<AppState>,
    crate::extract::ApiPath(target): crate::extract::ApiPath<String>,
) -> Result<Json<crate::fleet::TargetView>, ApiError> {
    // A name no record could carry (too long, control characters) is the caller's
    // mistake, said as such, not a target that was never reported.
    if let Some(field) = retrywise::attempt::schema::field("target")
        && let Err(e) = field.check(retrywise::attempt::schema::Value::Text(&target))
    {
        return Err(ApiError::bad_request(format!("target: {}", e.problem)));
    }
    st.fleet
        .view(&target, Instant::now())
        .map(Json)
        .ok_or_else(|| {
            // Untracked: never reported, only reported with attempts older than the
            // health window (kept on disk, not health now), or past the fleet's cap.
            ApiError::not_found(format!(
                "target: `{}` is not tracked: no attempt to it has been ingested that ended within the last {} s{}",
                retrywise::attempt::clipped(&target),
                st.config.health_window.as_secs_f64(),
                if st.fleet.len() >= st.config.max_targets {
                    format!(
                        ", or the fleet view is at its cap of {} targets (`max_targets`; its attempts are still written)",
                        st.config.max_targets
                    )
                } else {
                    String::new()
                }
            ))
        })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format 0.0.4", body = String)))]
pub(crate) async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    st.sync_dropped();
    crate::ingest::release_forgotten_labels(&st);
    let names = st.fleet.names();
    // Targets come into the fleet view through questions too (`/v1/targets/{t}`, a
    // probe's admission), not only through ingestion: counted as of the scrape.
    st.metrics
        .targets
        .set(i64::try_from(st.fleet.len()).unwrap_or(i64::MAX));
    crate::ingest::set_fleet_gauges(&st, names.iter().map(|n| &**n));
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
    /// `name/version: why` refused by an earlier reload (by the poller, say) and not tried
    /// again since its file has not changed: versions above the one serving that cannot.
    pub still_refused: Vec<String>,
    /// What else an operator should know: the models folder gone while models serve from
    /// memory, a serving version removed from disk, no version found at all.
    pub warnings: Vec<String>,
    /// `name/version` serving now.
    pub serving: Vec<String>,
}

/// Looks for new model versions now.
/// (Its security and 401 are declared when a token guards it: see `openapi`.)
#[utoipa::path(post, path = "/admin/reload", responses((status = 200, body = ReloadResponse),
    (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn reload(State(st): State<AppState>) -> Result<Json<ReloadResponse>, ApiError> {
    let r = crate::reload(&st).await.map_err(|e| {
        ApiError::internal(std::io::Error::new(
            e.kind(),
            format!(
                "cannot read the models folder {}: {e}",
                st.models.dir().display()
            ),
        ))
    })?;
    Ok(Json(ReloadResponse {
        loaded: r.loaded.iter().map(|(n, v)| format!("{n}/{v}")).collect(),
        failed: r
            .failed
            .iter()
            .map(|(n, v, why)| format!("{n}/{v}: {why}"))
            .collect(),
        still_refused: r
            .still_refused
            .iter()
            .map(|(n, v, why)| format!("{n}/{v}: {why}"))
            .collect(),
        warnings: r.warnings.clone(),
        serving: st
            .models
            .snapshot()
            .values()
            .map(|m| format!("{}/{}", m.name, m.version))
            .collect(),
    }))
}
