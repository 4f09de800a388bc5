//! The KServe Open Inference Protocol v2 (REST), so existing inference clients — the stock
//! `tritonclient[http]` among them — can call the service.
//!
//! A model's inputs are the fields of an attempt context ([`schema::context_fields`]), one
//! tensor each of shape `[n]` (or `[n, 1]`) for a batch of `n` contexts: text fields as
//! `BYTES`, whole numbers as `INT64`, the others as `FP64` (any numeric datatype is read;
//! see [`DATATYPES`]). A dense tensor cannot hold a missing value, so missing is spelt the
//! way the schema says ([`Field::tensor`]): an empty string in `BYTES` (no previous error on
//! a first attempt), `-1` in a whole-number field's tensor (the schema's `INT64` fields;
//! a time or a rate sent in an integer tensor has no missing value: send it as a float,
//! with NaN), NaN in a floating-point one, or `null` in JSON. `attempt` is required; a missing tensor means "missing" for every row (zero for
//! `delay_ms` and `elapsed_ms`; `target` defaults to the model's name). The output is
//! `p_success` (`FP64`, `[n]`), computed by the server's one encoder.
//!
//! Tensors travel as JSON `data`, or with the binary tensor data extension: the request's
//! JSON header (its length in `Inference-Header-Content-Length`) followed by each binary
//! input's raw little-endian bytes in input order (`parameters.binary_data_size`; `BYTES`
//! elements each prefixed by their 4-byte length). Outputs are answered in binary when the
//! request asks: a listed output by its own `parameters.binary_data`, the outputs not listed
//! by the request's `parameters.binary_data_output` (as Triton reads them).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use retrywise::attempt::schema::{self, Field, FieldType, Presence, Value};
use retrywise::attempt::{AttemptContext, AttemptRecord, ErrorKind, ms_to_duration};
use retrywise::model::{SuccessModel, sanitize_probability};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{count_predictions, pick};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{body, content_type};
use crate::openapi::MAX_BATCH;

/// The most input tensors a request may hold: one per context field, with room to spare.
pub(crate) const MAX_INPUTS: usize = 64;

/// The most values a request's or a tensor's `parameters` hold (a flag or a size each).
const MAX_PARAMS: usize = 64;

/// The tensor datatypes read (numeric ones convert to the field's type).
pub const DATATYPES: &[&str] = &[
    "BYTES", "FP64", "FP32", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16",
    "UINT8",
];

/// The header giving the length of the JSON part of a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

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

/// The server's metadata.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerMetadata {
    /// `retrywise`.
    pub name: String,
    /// The service's version.
    pub version: String,
    /// Protocol extensions supported: `binary_tensor_data`.
    pub extensions: Vec<String>,
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
#[serde(deny_unknown_fields)]
pub struct InferInput {
    /// A context field (see the model's metadata).
    pub name: String,
    /// `[n]` (or `[n, 1]`).
    #[schema(value_type = Vec<u64>)]
    pub shape: crate::extract::AtMost<u64, 2>,
    /// Its datatype.
    pub datatype: String,
    /// `binary_data_size` when the values are in the binary part.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<crate::extract::Params<MAX_PARAMS>>,
    /// The `n` values, row-major (absent with binary data); at most
    /// 1000 of them.
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<crate::extract::Scalars<MAX_BATCH>>,
}

/// An output asked for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferOutputRequest {
    /// `p_success`.
    pub name: String,
    /// `binary_data: true` for a binary answer.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<crate::extract::Params<MAX_PARAMS>>,
}

/// An inference request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// Echoed in the response.
    pub id: Option<String>,
    /// `binary_data_output: true` for binary answers (of the outputs not listed in
    /// `outputs`: a listed one follows its own `binary_data`).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<crate::extract::Params<MAX_PARAMS>>,
    /// The input tensors (at most 64).
    #[schema(value_type = Vec<InferInput>)]
    pub inputs: crate::extract::AtMost<InferInput, { MAX_INPUTS }>,
    /// The outputs wanted (all when absent or empty; at most 64).
    #[schema(value_type = Option<Vec<InferOutputRequest>>)]
    pub outputs: Option<crate::extract::AtMost<InferOutputRequest, { MAX_INPUTS }>>,
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
    /// `binary_data_size` when the values follow in binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// p(success) per context (absent when binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<f64>>,
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

fn tensor_metadata(name: &str, datatype: &str) -> TensorMetadata {
    TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape: vec![-1],
    }
}

/// Live.
#[utoipa::path(get, path = "/v2/health/live", responses((status = 200, body = Live)))]
pub(crate) async fn live() -> Json<Live> {
    Json(Live { live: true })
}

/// Ready: the default model is serving (as `/readyz`).
#[utoipa::path(get, path = "/v2/health/ready", responses((status = 200, body = ServerReady), (status = 503, body = ErrorBody)))]
pub(crate) async fn ready(State(st): State<AppState>) -> Result<Json<ServerReady>, ApiError> {
    crate::api::not_ready(&st)?;
    Ok(Json(ServerReady { ready: true }))
}

/// The server's metadata and the protocol extensions it supports.
#[utoipa::path(get, path = "/v2", responses((status = 200, body = ServerMetadata)))]
pub(crate) async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "retrywise".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into()],
    })
}

/// The model serving as `name`, and — when the path names a version — only if that is
/// the version serving (the service serves one version of a model at a time): a 404
/// naming the version that serves otherwise.
fn serving_as(
    st: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<crate::models::LoadedModel>, ApiError> {
    let m = pick(st, Some(name), None)?;
    if let Some(v) = version
        && v != m.version.to_string()
    {
        return Err(ApiError::not_found(format!(
            "model: `{name}` version `{}` is not serving (version {} serves)",
            retrywise::attempt::clipped(v),
            m.version
        )));
    }
    Ok(m)
}

fn metadata_of(m: &crate::models::LoadedModel) -> ModelMetadata {
    ModelMetadata {
        name: m.name.clone(),
        versions: vec![m.version.to_string()],
        platform: "retrywise_logistic".into(),
        inputs: schema::context_fields()
            .map(|f| tensor_metadata(f.name, f.tensor().datatype))
            .collect(),
        outputs: vec![tensor_metadata("p_success", "FP64")],
    }
}

/// A model's metadata: its inputs (the context fields, from the attempt schema) and output.
#[utoipa::path(get, path = "/v2/models/{name}", params(("name" = String, Path, description = "The model")),
    responses((status = 200, body = ModelMetadata), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn metadata(
    State(st): State<AppState>,
    crate::extract::ApiPath(name): crate::extract::ApiPath<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let m = serving_as(&st, &name, None)?;
    Ok(Json(metadata_of(&m)))
}

/// A model version's metadata (404 unless that version is serving).
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", params(("name" = String, Path, description = "The model"),
    ("version" = String, Path, description = "The version")),
    responses((status = 200, body = ModelMetadata), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn version_metadata(
    State(st): State<AppState>,
    crate::extract::ApiPath((name, version)): crate::extract::ApiPath<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let m = serving_as(&st, &name, Some(&version))?;
    Ok(Json(metadata_of(&m)))
}

/// Whether a model is loaded.
#[utoipa::path(get, path = "/v2/models/{name}/ready", params(("name" = String, Path, description = "The model")),
    responses((status = 200, body = ModelReady), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn model_ready(
    State(st): State<AppState>,
    crate::extract::ApiPath(name): crate::extract::ApiPath<String>,
) -> Result<Json<ModelReady>, ApiError> {
    serving_as(&st, &name, None)?;
    Ok(Json(ModelReady { name, ready: true }))
}

/// Whether a model version is loaded and serving.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", params(("name" = String, Path, description = "The model"),
    ("version" = String, Path, description = "The version")),
    responses((status = 200, body = ModelReady), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn version_ready(
    State(st): State<AppState>,
    crate::extract::ApiPath((name, version)): crate::extract::ApiPath<(String, String)>,
) -> Result<Json<ModelReady>, ApiError> {
    serving_as(&st, &name, Some(&version))?;
    Ok(Json(ModelReady { name, ready: true }))
}

/// One element of a tensor, as read.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Text(String),
    Number(f64),
}

fn bad(input: &str, problem: impl std::fmt::Display) -> ApiError {
    // (A caller's name may be as long as the body: said clipped, as targets are.)
    let input = retrywise::attempt::clipped(input);
    ApiError::bad_request(format!("inputs.{input}: {problem}"))
}

/// Bytes per element of a fixed-size datatype.
fn width(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "FP64" | "INT64" | "UINT64" => 8,
        "FP32" | "INT32" | "UINT32" => 4,
        "INT16" | "UINT16" => 2,
        "INT8" | "UINT8" => 1,
        _ => return None,
    })
}

/// Values beyond the `rows` a tensor's shape declares.
fn beyond(input: &InferInput, rows: usize) -> ApiError {
    bad(
        &input.name,
        format!(
            "shape {:?} declares {rows} values, and more follow",
            input.shape
        ),
    )
}

/// The elements of a binary tensor, of at most `rows` (its shape's).
fn decode_binary(input: &InferInput, raw: &[u8], rows: usize) -> Result<Vec<Cell>, ApiError> {
    let name = &input.name;
    if input.datatype == "BYTES" {
        let mut out = Vec::new();
        let mut rest = raw;
        while !rest.is_empty() {
            if out.len() == rows {
                return Err(beyond(input, rows));
            }
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| bad(name, "a BYTES element is cut short"))?;
            let len = u32::from_le_bytes(*len) as usize;
            let bytes = tail
                .get(..len)
                .ok_or_else(|| bad(name, "a BYTES element is cut short"))?;
            let s = std::str::from_utf8(bytes)
                .map_err(|_| bad(name, format!("element {} is not UTF-8", out.len())))?;
            out.push(Cell::Text(s.to_owned()));
            rest = &tail[len..];
        }
        return Ok(out);
    }
    let w = width(&input.datatype)
        .ok_or_else(|| bad(name, format!("datatype {} is not read", input.datatype)))?;
    if !raw.len().is_multiple_of(w) {
        return Err(bad(
            name,
            format!(
                "{} bytes is not a whole number of {} elements",
                raw.len(),
                input.datatype
            ),
        ));
    }
    if raw.len() / w > rows {
        return Err(beyond(input, rows));
    }
    Ok(raw
        .chunks_exact(w)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..w].copy_from_slice(c);
            let x = match input.datatype.as_str() {
                "FP64" => f64::from_le_bytes(b),
                "FP32" => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                "INT64" => i64::from_le_bytes(b) as f64,
                "INT32" => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                "INT16" => f64::from(i16::from_le_bytes([b[0], b[1]])),
                "INT8" => f64::from(i8::from_le_bytes([b[0]])),
                "UINT64" => u64::from_le_bytes(b) as f64,
                "UINT32" => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                "UINT16" => f64::from(u16::from_le_bytes([b[0], b[1]])),
                _ => f64::from(b[0]),
            };
            Cell::Number(x)
        })
        .collect())
}

/// A JSON tensor's elements in row-major order: the protocol lets them come flat
/// (`[1, 2]`) or nested by the shape's dimensions (`[[1], [2]]` for shape `[2, 1]`): then
/// every level holds as many items as its dimension says, and the values sit at the
/// last (`[[1, 2]]` for shape `[2, 1]` is a transposed tensor, not this one).
fn flatten<'a>(
    input: &InferInput,
    data: &'a [serde_json::Value],
    rows: usize,
) -> Result<Vec<&'a serde_json::Value>, ApiError> {
    enum Wrong {
        Deep,
        Beyond,
        /// A level of the nesting that does not hold its dimension's items.
        Shape,
    }
    fn walk<'a>(
        data: &'a [serde_json::Value],
        dims: &[u64],
        rows: usize,
        out: &mut Vec<&'a serde_json::Value>,
    ) -> Result<(), Wrong> {
        let (&dim, below) = dims.split_first().ok_or(Wrong::Deep)?;
        if u64::try_from(data.len()) != Ok(dim) {
            return Err(Wrong::Shape);
        }
        for v in data {
            match v {
                serde_json::Value::Array(inner) if !below.is_empty() => {
                    walk(inner, below, rows, out)?;
                }
                serde_json::Value::Array(_) => return Err(Wrong::Deep),
                _ if !below.is_empty() => return Err(Wrong::Shape),
                _ if out.len() == rows => return Err(Wrong::Beyond),
                v => out.push(v),
            }
        }
        Ok(())
    }
    let mut out = Vec::with_capacity(data.len().min(rows));
    let nested = data.iter().any(serde_json::Value::is_array);
    let walked = if nested {
        walk(data, &input.shape[..], rows, &mut out)
    } else {
        // Flat: the values in row-major order, as many as the shape declares.
        data.iter().try_for_each(|v| {
            if out.len() == rows {
                return Err(Wrong::Beyond);
            }
            out.push(v);
            Ok(())
        })
    };
    walked.map_err(|wrong| match wrong {
        Wrong::Deep => bad(
            &format!("{}.data", input.name),
            format!(
                "nested deeper than its shape {:?} has dimensions",
                input.shape
            ),
        ),
        Wrong::Beyond => beyond(input, rows),
        Wrong::Shape => bad(
            &format!("{}.data", input.name),
            format!(
                "nested other than its shape {:?}: each level must hold as many items as its dimension, the values at the last",
                input.shape
            ),
        ),
    })?;
    Ok(out)
}

/// The elements of a JSON tensor, of at most `rows` (its shape's).
fn decode_json(
    input: &InferInput,
    data: &[serde_json::Value],
    rows: usize,
) -> Result<Vec<Cell>, ApiError> {
    let data = flatten(input, data, rows)?;
    let dt = input.datatype.as_str();
    // The range of an integer datatype, to hold each element to what it declares: from
    // `lo` up to, not including, `end` (2^63 and 2^64 are exact in f64; i64::MAX is not).
    // -1 stands for a missing value in every integer tensor, unsigned ones included.
    let range: Option<(f64, f64)> = match dt {
        "INT8" => Some((f64::from(i8::MIN), 128.0)),
        "INT16" => Some((f64::from(i16::MIN), 32_768.0)),
        "INT32" => Some((f64::from(i32::MIN), 2_147_483_648.0)),
        "INT64" => Some((-9_223_372_036_854_775_808.0, 9_223_372_036_854_775_808.0)),
        "UINT8" => Some((-1.0, 256.0)),
        "UINT16" => Some((-1.0, 65_536.0)),
        "UINT32" => Some((-1.0, 4_294_967_296.0)),
        "UINT64" => Some((-1.0, 18_446_744_073_709_551_616.0)),
        _ => None,
    };
    data.iter()
        .enumerate()
        .map(|(i, v)| {
            let at = || format!("{}.data[{i}]", input.name);
            match v {
                serde_json::Value::Null => Ok(Cell::Null),
                serde_json::Value::String(s) if dt == "BYTES" => Ok(Cell::Text(s.clone())),
                serde_json::Value::Number(x) if dt != "BYTES" => {
                    let x = x
                        .as_f64()
                        .ok_or_else(|| bad(&at(), "not a finite number"))?;
                    match range {
                        Some((lo, end)) if x.fract() != 0.0 || x < lo || x >= end => {
                            Err(bad(&at(), format!("{x} is not a value of datatype {dt}")))
                        }
                        // A 32-bit float holds magnitudes up to about 3.4e38.
                        None if dt == "FP32" && x.abs() > f64::from(f32::MAX) => {
                            Err(bad(&at(), format!("{x:e} is not a value of datatype {dt}")))
                        }
                        _ => Ok(Cell::Number(x)),
                    }
                }
                other => Err(bad(
                    &at(),
                    format!(
                        "expected {} or null for datatype {dt}, got {other}",
                        if dt == "BYTES" {
                            "a string"
                        } else {
                            "a number"
                        }
                    ),
                )),
            }
        })
        .collect()
}

/// The value a cell gives `field` (missing spelt as the schema's tensors spell it).
fn value<'a>(field: &Field, cell: &'a Cell, row: usize) -> Result<Value<'a>, ApiError> {
    // Where, for an error only: the well-formed cell of a request allocates nothing.
    let at = || at(field, row);
    Ok(match (field.ty, cell) {
        (_, Cell::Null) => Value::Null,
        (FieldType::Text, Cell::Text(s)) if s.is_empty() => Value::Null,
        (FieldType::Text, Cell::Text(s)) => Value::Text(s),
        (FieldType::ErrorKind, Cell::Text(s)) if s.is_empty() => Value::Null,
        (FieldType::ErrorKind, Cell::Text(s)) => {
            Value::ErrorKind(s.parse::<ErrorKind>().map_err(|e| bad(&at(), e))?)
        }
        (FieldType::UInt16 | FieldType::UInt32 | FieldType::UInt64, Cell::Number(x)) => {
            if x.is_nan() || *x == -1.0 {
                Value::Null
            } else if x.fract() != 0.0 || *x < 0.0 {
                return Err(bad(
                    &at(),
                    format!("expected a whole number (or -1 for missing), got {x}"),
                ));
            } else {
                let max = field.ty.max_whole().unwrap_or(u64::MAX) as f64;
                if *x > max {
                    return Err(bad(&at(), format!("{x} is out of range")));
                }
                Value::UInt(*x as u64)
            }
        }
        (FieldType::Float64, Cell::Number(x)) if x.is_nan() => Value::Null,
        (FieldType::Float64, Cell::Number(x)) => Value::Float(*x),
        (FieldType::Milliseconds, Cell::Number(x)) if x.is_nan() => Value::Null,
        (FieldType::Milliseconds, Cell::Number(x)) => {
            Value::Duration(ms_to_duration(*x).map_err(|e| bad(&at(), e))?)
        }
        (FieldType::Text | FieldType::ErrorKind, Cell::Number(x)) => {
            return Err(bad(&at(), format!("expected a string (BYTES), got {x}")));
        }
        (_, Cell::Text(s)) => return Err(bad(&at(), format!("expected a number, got {s:?}"))),
        _ => return Err(bad(&at(), "not a context value")),
    })
}

/// A cell's place in the request, for errors: `NAME.data[ROW]`.
fn at(field: &Field, row: usize) -> String {
    format!("{}.data[{row}]", field.name)
}

/// Whether the request asks for binary outputs; a flag that is not `true` or `false` is
/// refused (read as `false`, it would answer JSON to a client waiting for binary).
fn wants_binary(req: &InferRequest) -> Result<bool, ApiError> {
    fn flag(
        parameters: &Option<crate::extract::Params<MAX_PARAMS>>,
        key: &str,
        at: impl FnOnce() -> String,
    ) -> Result<bool, ApiError> {
        match parameters.as_ref().and_then(|p| p.0.get(key)) {
            None => Ok(false),
            Some(serde_json::Value::Bool(b)) => Ok(*b),
            Some(v) => Err(ApiError::bad_request(format!(
                "{}.{key}: expected true or false, got {v}",
                at()
            ))),
        }
    }
    // The request-wide flag covers the outputs the request does not list; a listed output
    // follows its own `binary_data` (unset: JSON), as KServe's binary extension and
    // Triton have it.
    let all = flag(&req.parameters, "binary_data_output", || {
        "parameters".into()
    })?;
    let Some(listed) = req.outputs.as_ref().filter(|o| !o.is_empty()) else {
        return Ok(all);
    };
    let mut any = false;
    for (i, o) in listed.iter().enumerate() {
        any |= flag(&o.parameters, "binary_data", || {
            format!("outputs[{i}].parameters")
        })?;
    }
    Ok(any)
}

/// Splits a request body into its JSON header and binary part.
fn split<'a>(headers: &HeaderMap, bytes: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    // (`extract::body` refuses these first; the same rule here: `Identity` is identity.)
    if let Some(enc) = headers.get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {:?} is not supported; send the body uncompressed",
            enc
        )));
    }
    match headers.get(HEADER_LENGTH) {
        None => Ok((bytes, &[])),
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Inference-Header-Content-Length: not a number")
                })?;
            if n > bytes.len() {
                return Err(ApiError::bad_request(format!(
                    "Inference-Header-Content-Length: {n} is more than the body's {} bytes",
                    bytes.len()
                )));
            }
            Ok(bytes.split_at(n))
        }
    }
}

/// p(success) of a batch of contexts given as one tensor per context field, in JSON or
/// with the binary tensor data extension.
#[utoipa::path(post, path = "/v2/models/{name}/infer", params(("name" = String, Path, description = "The model")),
    request_body = InferRequest,
    responses((status = 200, body = InferResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn infer(
    State(st): State<AppState>,
    crate::extract::ApiPath(name): crate::extract::ApiPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    infer_as(&st, &name, None, req).await
}

/// As `/v2/models/{name}/infer`, by the version serving only (404 otherwise).
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", params(("name" = String, Path, description = "The model"),
    ("version" = String, Path, description = "The version")),
    request_body = InferRequest,
    responses((status = 200, body = InferResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn version_infer(
    State(st): State<AppState>,
    crate::extract::ApiPath((name, version)): crate::extract::ApiPath<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    infer_as(&st, &name, Some(&version), req).await
}

async fn infer_as(
    st: &AppState,
    name: &str,
    version: Option<&str>,
    req: Request,
) -> Result<Response, ApiError> {
    let (headers, bytes) = body(req).await?;
    let ct = content_type(&headers);
    if !(crate::extract::is_json(&ct) || ct == "application/octet-stream") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "expected a JSON or binary-extension body, got Content-Type {ct}"
        )));
    }
    let (json, mut binary) = split(&headers, &bytes)?;
    let req: InferRequest = crate::extract::parse_object(json, String::new)?;
    let inputs = &req.inputs.0;
    // An unknown input is named before a missing `attempt` is: `attemp` is the one
    // misspelt, and "the `attempt` input is required" would not say so.
    if let Some(input) = inputs
        .iter()
        .find(|i| schema::context_fields().all(|f| f.name != i.name))
    {
        let known: Vec<&str> = schema::context_fields().map(|f| f.name).collect();
        return Err(bad(
            &input.name,
            format!("unknown input (expected one of {})", known.join(", ")),
        ));
    }
    if !inputs.iter().any(|i| i.name == "attempt") {
        return Err(ApiError::bad_request(
            "inputs: the `attempt` input is required",
        ));
    }
    let binary_out = wants_binary(&req)?;
    if let Some(o) = req.outputs.iter().flatten().find(|o| o.name != "p_success") {
        return Err(ApiError::bad_request(format!(
            "outputs: unknown output `{}` (the model has `p_success`)",
            retrywise::attempt::clipped(&o.name)
        )));
    }
    // Decode every tensor, in input order (binary parts follow that order).
    let mut columns: Vec<(&'static Field, Vec<Cell>)> = Vec::new();
    let mut n: Option<usize> = None;
    for input in inputs {
        let Some(field) = schema::context_fields().find(|f| f.name == input.name) else {
            // Every input's name was checked above.
            return Err(bad(&input.name, "unknown input"));
        };
        if columns.iter().any(|(f, _)| f.name == field.name) {
            return Err(bad(&input.name, "given twice"));
        }
        if !DATATYPES.contains(&input.datatype.as_str()) {
            return Err(bad(
                &input.name,
                format!(
                    "datatype {} is not one of {}",
                    retrywise::attempt::clipped(&input.datatype),
                    DATATYPES.join(", ")
                ),
            ));
        }
        let binary_size = input
            .parameters
            .as_ref()
            .and_then(|p| p.0.get("binary_data_size"))
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    bad(
                        &input.name,
                        "parameters.binary_data_size: not a whole number",
                    )
                })
            })
            .transpose()?;
        // The rows the shape declares, checked before anything is decoded: values beyond
        // them are refused as they are met, never all decoded first.
        let rows = match &input.shape[..] {
            [k] | [k, 1] => usize::try_from(*k).unwrap_or(usize::MAX),
            _ => {
                return Err(bad(
                    &input.name,
                    format!("shape {:?}: expected [n] (or [n, 1])", input.shape),
                ));
            }
        };
        if rows > MAX_BATCH {
            return Err(bad(
                &input.name,
                format!(
                    "shape {:?}: at most {MAX_BATCH} contexts, got {rows}",
                    input.shape
                ),
            ));
        }
        let cells = match (binary_size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    &input.name,
                    "both `data` and `parameters.binary_data_size`: give one",
                ));
            }
            (Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(bad(
                        &input.name,
                        format!(
                            "binary_data_size {size} is more than the {} bytes left",
                            binary.len()
                        ),
                    ));
                }
                let (raw, rest) = binary.split_at(size);
                binary = rest;
                decode_binary(input, raw, rows)?
            }
            (None, Some(data)) => decode_json(input, &data.0, rows)?,
            (None, None) => {
                return Err(bad(
                    &input.name,
                    "neither `data` nor `parameters.binary_data_size`",
                ));
            }
        };
        if cells.len() != rows {
            let rows = cells.len();
            return Err(bad(
                &input.name,
                format!(
                    "shape {:?} with {rows} values; expected [{rows}] (or [{rows}, 1])",
                    input.shape
                ),
            ));
        }
        match n {
            None => n = Some(rows),
            Some(k) if k != rows => {
                return Err(bad(
                    &input.name,
                    format!("{rows} values, the other inputs have {k}"),
                ));
            }
            Some(_) => {}
        }
        columns.push((field, cells));
    }
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            binary.len()
        )));
    }
    let n = n.unwrap_or(0);
    if n == 0 {
        return Err(ApiError::bad_request(
            "inputs: no contexts (the inputs hold 0 values)",
        ));
    }
    if n > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "inputs: at most {MAX_BATCH} contexts, got {n}"
        )));
    }
    let now = Instant::now();
    // The model's name (the path's) is every context's target unless one is given. A name
    // that is no target name (too long, a control character) is no model's either: the
    // caller is told the model is unknown, not that an input it never sent is wrong.
    if !columns.iter().any(|(f, _)| f.name == "target")
        && let Err(e) = AttemptContext::first(name).validate()
    {
        serving_as(st, name, version)?;
        return Err(bad(
            "target",
            format!("the model's name is no target name, so send a `target` input ({e})"),
        ));
    }
    let target: Arc<str> = Arc::from(name);
    let mut ctxs = Vec::with_capacity(n);
    for i in 0..n {
        let mut rec = AttemptRecord::blank();
        rec.context.target = Arc::clone(&target);
        for (field, cells) in &columns {
            let v = value(field, &cells[i], i)?;
            if v.is_null() && field.presence == Presence::Required && field.name != "target" {
                // A required field missing is said to be (the blank's default would be
                // reported as out of range); `target` defaults to the model's name.
                return Err(bad(
                    &at(field, i),
                    "is required: -1 (or NaN, or null) means missing",
                ));
            }
            if !(v.is_null() && field.name == "target") {
                field.set_context(&mut rec.context, v);
            }
        }
        let mut ctx = rec.context;
        ctx.validate()
            .map_err(|e| bad(&format!("{}.data[{i}]", e.field), e.problem))?;
        st.fleet.fill(&mut ctx, now);
        ctxs.push(ctx);
    }
    // The model is looked up once the request is known to be good: a request that can
    // never succeed is not answered 503 (with a Retry-After) while no model is loaded.
    let m = serving_as(st, name, version)?;
    let p: Vec<f64> = ctxs
        .iter()
        .map(|ctx| sanitize_probability(m.model.p_success(ctx)))
        .collect();
    count_predictions(st, &m, p.len() as u64);
    let output = InferOutput {
        name: "p_success".into(),
        shape: vec![p.len() as u64],
        datatype: "FP64".into(),
        parameters: binary_out.then(|| serde_json::json!({"binary_data_size": p.len() * 8})),
        data: (!binary_out).then(|| p.clone()),
    };
    let response = InferResponse {
        model_name: m.name.clone(),
        model_version: m.version.to_string(),
        id: req.id,
        outputs: vec![output],
    };
    if !binary_out {
        return Ok(Json(response).into_response());
    }
    let mut out = serde_json::to_vec(&response).map_err(ApiError::internal)?;
    let header_len = out.len();
    for x in &p {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let mut r = (StatusCode::OK, Body::from(out)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&header_len.to_string()) {
        r.headers_mut().insert(HEADER_LENGTH, v);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, datatype: &str) -> InferInput {
        InferInput {
            name: name.into(),
            shape: crate::extract::AtMost(vec![2]),
            datatype: datatype.into(),
            parameters: None,
            data: None,
        }
    }

    /// The request-wide `binary_data_output` covers the outputs not listed; a listed
    /// output follows its own `binary_data`, unset meaning JSON (KServe, Triton).
    #[test]
    fn a_listed_output_follows_its_own_binary_flag() {
        let wants = |json: &str| {
            let req: InferRequest = serde_json::from_str(json).unwrap();
            wants_binary(&req).unwrap()
        };
        let all = r#""parameters": {"binary_data_output": true}"#;
        assert!(wants(&format!(r#"{{"inputs": [], {all}}}"#)));
        assert!(wants(&format!(r#"{{"inputs": [], {all}, "outputs": []}}"#)));
        assert!(!wants(&format!(
            r#"{{"inputs": [], {all}, "outputs": [{{"name": "p_success", "parameters": {{"binary_data": false}}}}]}}"#
        )));
        assert!(!wants(&format!(
            r#"{{"inputs": [], {all}, "outputs": [{{"name": "p_success"}}]}}"#
        )));
        assert!(wants(
            r#"{"inputs": [], "outputs": [{"name": "p_success", "parameters": {"binary_data": true}}]}"#
        ));
        assert!(!wants(r#"{"inputs": []}"#));
    }

    #[test]
    fn binary_tensors_decode() {
        let mut raw = Vec::new();
        for s in ["timeout", ""] {
            raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
        assert_eq!(
            decode_binary(&input("error", "BYTES"), &raw, 2).unwrap(),
            [Cell::Text("timeout".into()), Cell::Text(String::new())]
        );
        let raw: Vec<u8> = [2i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            decode_binary(&input("attempt", "INT64"), &raw, 2).unwrap(),
            [Cell::Number(2.0), Cell::Number(-1.0)]
        );
        let raw: Vec<u8> = [0.5f32, f32::NAN]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let cells = decode_binary(&input("failure_rate", "FP32"), &raw, 2).unwrap();
        assert_eq!(cells[0], Cell::Number(0.5));
        assert!(matches!(cells[1], Cell::Number(x) if x.is_nan()));
        assert!(decode_binary(&input("attempt", "INT64"), &[1, 2, 3], 2).is_err());
        assert!(decode_binary(&input("error", "BYTES"), &[9, 0, 0, 0, b'x'], 2).is_err());
        // No more values than the shape's rows are decoded.
        let raw: Vec<u8> = [2i64, 1, 1].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert!(decode_binary(&input("attempt", "INT64"), &raw, 2).is_err());
        let mut raw = Vec::new();
        for _ in 0..3 {
            raw.extend_from_slice(&1u32.to_le_bytes());
            raw.push(b'x');
        }
        let e = decode_binary(&input("error", "BYTES"), &raw, 2).unwrap_err();
        assert!(
            format!("{e:?}").contains("declares 2 values, and more follow"),
            "{e:?}"
        );
    }

    #[test]
    fn missing_is_spelt_as_the_schema_says() {
        let f = |n| schema::field(n).unwrap();
        assert_eq!(
            value(f("error"), &Cell::Text(String::new()), 0).unwrap(),
            Value::Null
        );
        assert_eq!(
            value(f("status"), &Cell::Number(-1.0), 0).unwrap(),
            Value::Null
        );
        assert_eq!(
            value(f("latency_ms"), &Cell::Number(f64::NAN), 0).unwrap(),
            Value::Null
        );
        assert_eq!(
            value(f("status"), &Cell::Number(503.0), 0).unwrap(),
            Value::UInt(503)
        );
        assert!(value(f("status"), &Cell::Number(-2.0), 0).is_err());
        assert!(value(f("attempt"), &Cell::Number(1.5), 0).is_err());
        assert!(value(f("error"), &Cell::Text("gremlins".into()), 0).is_err());
        assert!(value(f("delay_ms"), &Cell::Number(-5.0), 0).is_err());
    }
}
