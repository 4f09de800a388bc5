//! The KServe Open Inference Protocol v2 (REST), so existing inference clients can call
//! the service.
//!
//! A model's inputs are the fields of an attempt context, one tensor each of shape `[n]`
//! for a batch of `n` contexts: `attempt` (INT64), `delay_ms`, `elapsed_ms`, `latency_ms`,
//! `retry_after_ms`, `failure_rate`, `latency_p95_ms` (FP64), `status`, `in_flight`
//! (INT64), `error` and `target` (BYTES). `attempt` is required; a `null` element or a
//! missing tensor means "unknown" (zero for `delay_ms` and `elapsed_ms`). The output is
//! `p_success` (FP64, `[n]`). The features are computed by the server's one encoder.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use retrywise::attempt::{AttemptContext, ErrorKind, ms_to_duration};
use retrywise::model::{SuccessModel, sanitize_probability};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiError, ApiJson, ErrorBody, unknown_model};

/// `{"live": true}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Live {
    /// Always true when answering.
    pub live: bool,
}

/// `{"ready": bool}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerReady {
    /// Whether a model is loaded.
    pub ready: bool,
}

/// `{"name", "ready"}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelReady {
    /// The model.
    pub name: String,
    /// Whether it is loaded.
    pub ready: bool,
}

/// A tensor's description.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TensorMetadata {
    /// Its name.
    pub name: String,
    /// `FP64`, `INT64` or `BYTES`.
    pub datatype: String,
    /// `[-1]`: one element per context.
    pub shape: Vec<i64>,
}

/// A model's metadata.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelMetadata {
    /// The model.
    pub name: String,
    /// The version serving.
    pub versions: Vec<String>,
    /// `retrywise_logistic`.
    pub platform: String,
    /// The context fields.
    pub inputs: Vec<TensorMetadata>,
    /// `p_success`.
    pub outputs: Vec<TensorMetadata>,
}

/// One input tensor.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferInput {
    /// A context field (see the model's metadata).
    pub name: String,
    /// `[n]` (or `[n, 1]`).
    pub shape: Vec<u64>,
    /// Its datatype.
    pub datatype: String,
    /// Optional parameters (ignored).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// The `n` values, row-major.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<serde_json::Value>,
}

/// An output asked for.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferOutputRequest {
    /// `p_success`.
    pub name: String,
    /// Optional parameters (ignored).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
}

/// An inference request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferRequest {
    /// Echoed in the response.
    pub id: Option<String>,
    /// Optional parameters (ignored).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// The input tensors.
    pub inputs: Vec<InferInput>,
    /// The outputs wanted (all when absent).
    pub outputs: Option<Vec<InferOutputRequest>>,
}

/// An output tensor.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InferOutput {
    /// `p_success`.
    pub name: String,
    /// `[n]`.
    pub shape: Vec<u64>,
    /// `FP64`.
    pub datatype: String,
    /// p(success) per context.
    pub data: Vec<f64>,
}

/// An inference response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InferResponse {
    /// The model.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// The request's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The outputs.
    pub outputs: Vec<InferOutput>,
}

const FP64: &[&str] = &[
    "delay_ms",
    "elapsed_ms",
    "latency_ms",
    "retry_after_ms",
    "failure_rate",
    "latency_p95_ms",
];
const INT64: &[&str] = &["attempt", "status", "in_flight"];
const BYTES: &[&str] = &["error", "target"];

fn inputs() -> Vec<TensorMetadata> {
    let t = |name: &str, dt: &str| TensorMetadata {
        name: name.into(),
        datatype: dt.into(),
        shape: vec![-1],
    };
    INT64
        .iter()
        .map(|n| t(n, "INT64"))
        .chain(FP64.iter().map(|n| t(n, "FP64")))
        .chain(BYTES.iter().map(|n| t(n, "BYTES")))
        .collect()
}

/// Live.
#[utoipa::path(get, path = "/v2/health/live", responses((status = 200, body = Live)))]
pub(crate) async fn live() -> Json<Live> {
    Json(Live { live: true })
}

/// Ready: a model is loaded.
#[utoipa::path(get, path = "/v2/health/ready", responses((status = 200, body = ServerReady), (status = 503, body = ErrorBody)))]
pub(crate) async fn ready(State(st): State<AppState>) -> Result<Json<ServerReady>, ApiError> {
    if st.models.snapshot().is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model is loaded",
        ));
    }
    Ok(Json(ServerReady { ready: true }))
}

/// A model's metadata.
#[utoipa::path(get, path = "/v2/models/{name}", params(("name" = String, Path, description = "The model")),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody)))]
pub(crate) async fn metadata(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let set = st.models.snapshot();
    let m = set.get(&name).ok_or_else(|| unknown_model(&name, &set))?;
    Ok(Json(ModelMetadata {
        name: m.name.clone(),
        versions: vec![m.version.to_string()],
        platform: "retrywise_logistic".into(),
        inputs: inputs(),
        outputs: vec![TensorMetadata {
            name: "p_success".into(),
            datatype: "FP64".into(),
            shape: vec![-1],
        }],
    }))
}

/// Whether a model is loaded.
#[utoipa::path(get, path = "/v2/models/{name}/ready", params(("name" = String, Path, description = "The model")),
    responses((status = 200, body = ModelReady), (status = 404, body = ErrorBody)))]
pub(crate) async fn model_ready(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelReady>, ApiError> {
    let set = st.models.snapshot();
    set.get(&name).ok_or_else(|| unknown_model(&name, &set))?;
    Ok(Json(ModelReady { name, ready: true }))
}

fn column(input: &InferInput, n: usize) -> Result<(), ApiError> {
    let len = input
        .shape
        .iter()
        .try_fold(1u64, |acc, d| acc.checked_mul(*d));
    let ok_shape = matches!(input.shape.as_slice(), [k] | [k, 1] if *k == n as u64);
    if !ok_shape || len != Some(input.data.len() as u64) {
        return Err(ApiError::bad_request(format!(
            "inputs.{}: shape {:?} with {} values; expected [{n}] like the other inputs",
            input.name,
            input.shape,
            input.data.len()
        )));
    }
    Ok(())
}

fn number(input: &InferInput, i: usize) -> Result<Option<f64>, ApiError> {
    match &input.data[i] {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(x) => x.as_f64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "inputs.{}.data[{i}]: not a finite number",
                input.name
            ))
        }),
        other => Err(ApiError::bad_request(format!(
            "inputs.{}.data[{i}]: expected a number, got {other}",
            input.name
        ))),
    }
}

fn whole<T: TryFrom<i64>>(input: &InferInput, i: usize) -> Result<Option<T>, ApiError> {
    let Some(v) = number(input, i)? else {
        return Ok(None);
    };
    if v.fract() != 0.0 || v < 0.0 {
        return Err(ApiError::bad_request(format!(
            "inputs.{}.data[{i}]: expected a non-negative whole number, got {v}",
            input.name
        )));
    }
    T::try_from(v as i64).map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "inputs.{}.data[{i}]: {v} is out of range",
            input.name
        ))
    })
}

fn ms(input: &InferInput, i: usize) -> Result<Option<std::time::Duration>, ApiError> {
    number(input, i)?
        .map(|v| {
            ms_to_duration(v)
                .map_err(|e| ApiError::bad_request(format!("inputs.{}.data[{i}]: {e}", input.name)))
        })
        .transpose()
}

/// p(success) of a batch of contexts given as one tensor per context field.
#[utoipa::path(post, path = "/v2/models/{name}/infer", params(("name" = String, Path, description = "The model")),
    request_body = InferRequest,
    responses((status = 200, body = InferResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn infer(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<InferRequest>,
) -> Result<Json<InferResponse>, ApiError> {
    let set = st.models.snapshot();
    let m = Arc::clone(set.get(&name).ok_or_else(|| unknown_model(&name, &set))?);
    let attempt = req
        .inputs
        .iter()
        .find(|i| i.name == "attempt")
        .ok_or_else(|| ApiError::bad_request("inputs: the `attempt` input is required"))?;
    let n = attempt.data.len();
    let mut ctxs: Vec<AttemptContext> = (0..n).map(|_| AttemptContext::first("oip")).collect();
    for input in &req.inputs {
        if !(FP64.contains(&input.name.as_str())
            || INT64.contains(&input.name.as_str())
            || BYTES.contains(&input.name.as_str()))
        {
            return Err(ApiError::bad_request(format!(
                "inputs.{}: unknown input (expected one of {})",
                input.name,
                inputs()
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        column(input, n)?;
        for (i, ctx) in ctxs.iter_mut().enumerate() {
            match input.name.as_str() {
                "attempt" => {
                    ctx.attempt = whole::<u32>(input, i)?.ok_or_else(|| {
                        ApiError::bad_request(format!("inputs.attempt.data[{i}]: must not be null"))
                    })?;
                }
                "status" => ctx.status = whole::<u16>(input, i)?,
                "in_flight" => ctx.in_flight = whole::<u32>(input, i)?,
                "delay_ms" => ctx.delay = ms(input, i)?.unwrap_or_default(),
                "elapsed_ms" => ctx.elapsed = ms(input, i)?.unwrap_or_default(),
                "latency_ms" => ctx.latency = ms(input, i)?,
                "retry_after_ms" => ctx.retry_after = ms(input, i)?,
                "latency_p95_ms" => ctx.latency_p95 = ms(input, i)?,
                "failure_rate" => ctx.failure_rate = number(input, i)?,
                "error" => {
                    ctx.error = match &input.data[i] {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => {
                            Some(s.parse::<ErrorKind>().map_err(|e| {
                                ApiError::bad_request(format!("inputs.error.data[{i}]: {e}"))
                            })?)
                        }
                        other => {
                            return Err(ApiError::bad_request(format!(
                                "inputs.error.data[{i}]: expected a string, got {other}"
                            )));
                        }
                    };
                }
                "target" => {
                    if let serde_json::Value::String(s) = &input.data[i] {
                        ctx.target = Arc::from(s.as_str());
                    }
                }
                _ => {}
            }
        }
    }
    let now = Instant::now();
    let mut p = Vec::with_capacity(n);
    for (i, mut ctx) in ctxs.into_iter().enumerate() {
        ctx.validate().map_err(|e| {
            ApiError::bad_request(format!("inputs.{}.data[{i}]: {}", e.field, e.problem))
        })?;
        st.fleet.fill(&mut ctx, now);
        p.push(sanitize_probability(m.model.p_success(&ctx)));
    }
    if let Some(outs) = &req.outputs
        && let Some(o) = outs.iter().find(|o| o.name != "p_success")
    {
        return Err(ApiError::bad_request(format!(
            "outputs: unknown output `{}` (the model has `p_success`)",
            o.name
        )));
    }
    st.metrics
        .predictions
        .get_or_create(&crate::metrics::ModelLabels {
            model: m.name.clone(),
            version: m.version.to_string(),
        })
        .inc_by(p.len() as u64);
    Ok(Json(InferResponse {
        model_name: m.name.clone(),
        model_version: m.version.to_string(),
        id: req.id,
        outputs: vec![InferOutput {
            name: "p_success".into(),
            shape: vec![p.len() as u64],
            datatype: "FP64".into(),
            data: p,
        }],
    }))
}
