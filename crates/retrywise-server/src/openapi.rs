//! The OpenAPI document (`GET /openapi.json`).
//!
//! Routes and response types are described by utoipa; the schemas of what callers send are
//! derived from the attempt schema (`retrywise::attempt::schema`) — every field with its
//! type, range, enumeration and whether it may be missing — so the document accepts
//! exactly what the handlers accept. Whether `/v1/attempts` and `/admin/reload` need a
//! bearer token depends on the configuration, and the document says which.

use retrywise::attempt::schema::{self, MAX_MS};
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::{api, ingest, oip};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "retrywise",
        description = "Predictions and retry decisions learned from a fleet's own attempts."
    ),
    paths(
        api::healthz,
        api::readyz,
        api::list_models,
        api::get_model,
        api::predict,
        api::decide,
        ingest::ingest,
        api::target,
        api::metrics,
        api::reload,
        oip::server_metadata,
        oip::live,
        oip::ready,
        oip::metadata,
        oip::model_ready,
        oip::infer,
        oip::version_metadata,
        oip::version_ready,
        oip::version_infer
    )
)]
struct ApiDoc;

/// The most contexts one batch may carry (`/v1/predict`, KServe), and records one
/// JSON ingestion: a batch of the largest values the schema allows still fits in the
/// default body limit (1 MiB).
pub(crate) const MAX_BATCH: usize = 1_000;

fn component(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The document as JSON: utoipa's, with the request schemas derived from the attempt
/// schema, and security on the guarded routes only when `auth`.
pub fn openapi(auth: bool) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let schemas = &mut doc["components"]["schemas"];
    schemas["AttemptContext"] = schema::context_json_schema();
    schemas["AttemptRecord"] = schema::record_json_schema();
    let model = json!({"type": ["string", "null"], "minLength": 1, "description": "The model's name (default: the service's default model)."});
    schemas["PredictRequest"] = json!({
        "description": "One context (`context`) or a batch (`contexts`), not both.",
        "oneOf": [
            {
                "type": "object",
                "properties": {"model": model, "context": component("AttemptContext")},
                "required": ["context"],
                "additionalProperties": false,
            },
            {
                "type": "object",
                "properties": {
                    "model": model,
                    "contexts": {"type": "array", "items": component("AttemptContext"), "minItems": 1, "maxItems": MAX_BATCH},
                },
                "required": ["contexts"],
                "additionalProperties": false,
            },
        ],
    });
    schemas["DecideRequest"] = json!({
        "type": "object",
        "properties": {
            "model": model,
            "context": component("AttemptContext"),
            "deadline_ms": {
                "type": ["number", "null"], "minimum": 1e-6, "maximum": MAX_MS,
                "description": "The call's overall deadline from its first attempt, ms (at least a nanosecond): no retry that cannot start before it.",
            },
            "alternatives": {
                "type": "boolean",
                "description": "Also answer every wait weighed, with its p(success) and value (for debugging).",
            },
            "waited_ms": {
                "type": ["number", "null"], "minimum": 0, "maximum": MAX_MS,
                "description": "Asking again about a retry after waiting as told (`circuit_open_wait`, `circuit_half_open_wait`): the time waited since the failure in `context`, ms (`elapsed_ms` counts it). The retry is weighed as at its failure, and what is left of its wait is answered.",
            },
        },
        "required": ["context"],
        "additionalProperties": false,
    });
    // Every reason a decision gives, so that a generated client has them as an enum (and a
    // conformance check catches one it does not list).
    let mut reasons: Vec<&str> = crate::api::DECISION_REASONS.to_vec();
    for r in retrywise::retry::StopReason::ALL {
        if !reasons.contains(&r.as_str()) {
            reasons.push(r.as_str());
        }
    }
    schemas["DecideResponse"]["properties"]["reason"]["enum"] = json!(reasons);
    // A target's name in a path is a name a record could carry: the context's `target`.
    let target = schemas["AttemptContext"]["properties"]["target"].clone();
    if let Some(params) = doc["paths"]["/v1/targets/{target}"]["get"]["parameters"].as_array_mut() {
        for p in params.iter_mut().filter(|p| p["name"] == "target") {
            p["schema"] = target.clone();
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    let tensors: Vec<&str> = schema::context_fields().map(|f| f.name).collect();
    schemas["InferInput"] = json!({
        "type": "object",
        "description": "One context field as a tensor of shape [n] (or [n, 1]): one element per context. \
                        With the binary tensor extension, `parameters.binary_data_size` replaces `data`.",
        "properties": {
            "name": {"type": "string", "enum": tensors},
            "shape": {
                "type": "array",
                "prefixItems": [{"type": "integer", "minimum": 1, "maximum": MAX_BATCH}, {"const": 1}],
                "items": false,
                "minItems": 1,
            },
            "datatype": {"type": "string", "enum": oip::DATATYPES},
            "parameters": {"type": ["object", "null"]},
            "data": {
                "type": ["array", "null"], "maxItems": MAX_BATCH,
                "description": "The values, flat or nested exactly by the shape ([[v], [v]] for [2, 1]); the shape's n in all.",
            },
        },
        "required": ["name", "shape", "datatype"],
        "oneOf": [
            {"required": ["data"], "properties": {"data": {"type": "array"}}, "not": {"required": ["parameters"], "properties": {"parameters": {"type": "object", "required": ["binary_data_size"]}}}},
            {"required": ["parameters"], "properties": {"parameters": {"type": "object", "required": ["binary_data_size"]}}, "not": {"required": ["data"], "properties": {"data": {"type": "array"}}}},
        ],
        "additionalProperties": false,
    });
    schemas["InferRequest"] = json!({
        "type": "object",
        "properties": {
            "id": {"type": ["string", "null"]},
            "parameters": {"type": ["object", "null"]},
            "inputs": {"type": "array", "items": component("InferInput"), "minItems": 1, "maxItems": oip::MAX_INPUTS},
            "outputs": {"type": ["array", "null"], "items": component("InferOutputRequest"), "maxItems": oip::MAX_INPUTS},
        },
        "required": ["inputs"],
        "additionalProperties": false,
    });
    // The binary tensor extension: the JSON request, its length in
    // `Inference-Header-Content-Length`, then the tensors' bytes.
    for path in [
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ] {
        doc["paths"][path]["post"]["requestBody"]["content"]["application/octet-stream"] = json!({
            "schema": {"type": "string", "format": "binary",
                       "description": "KServe's binary tensor extension: the JSON InferRequest (its length in the \
                                       Inference-Header-Content-Length header), then the inputs' bytes in input order."},
        });
    }
    doc["paths"]["/v1/attempts"]["post"]["requestBody"] = json!({
        "description": "Attempt records: a JSON array, or NDJSON (one record per line). A batch is written whole or \
                        refused whole: one invalid record refuses it (400, naming the record and field).",
        "required": true,
        "content": {
            "application/json": {"schema": {"type": "array", "items": component("AttemptRecord"), "minItems": 1, "maxItems": MAX_BATCH}},
            "application/x-ndjson": {"schema": {"type": "string", "description": "One record per line; also taken as \
                application/ndjson, application/jsonl, application/x-jsonlines, or with no Content-Type."}},
        },
    });
    if auth {
        doc["components"]["securitySchemes"] =
            json!({"token": {"type": "http", "scheme": "bearer"}});
        for path in ["/v1/attempts", "/admin/reload"] {
            doc["paths"][path]["post"]["security"] = json!([{"token": []}]);
            doc["paths"][path]["post"]["responses"]["401"] = json!({
                "description": "No valid `Authorization: Bearer <token>`.",
                "content": {"application/json": {"schema": component("ErrorBody")}},
            });
        }
    }
    doc
}

/// The document, serialized once at start-up.
pub(crate) fn render(auth: bool) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(&openapi(auth)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decision's reasons are an enum: the stop reasons and the service's own.
    #[test]
    fn a_decisions_reasons_are_listed() {
        let doc = openapi(false);
        let reasons =
            &doc["components"]["schemas"]["DecideResponse"]["properties"]["reason"]["enum"];
        let reasons: Vec<&str> = reasons
            .as_array()
            .expect("an enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for r in [
            "retry",
            "admit",
            "probe",
            "circuit_open",
            "retry_after_too_long",
        ] {
            assert!(reasons.contains(&r), "{r}: {reasons:?}");
        }
        assert_eq!(reasons.len(), 17, "{reasons:?}");
    }

    /// The hand-written `DecideRequest` schema names every field the handler reads, and no
    /// other (the derived one is the struct's): a field added to the request and not here
    /// would be refused by a client or gateway that validates against the document.
    #[test]
    fn the_request_schemas_name_the_requests_fields() {
        let doc = openapi(false);
        let generated = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let keys = |v: &Value| {
            let mut k: Vec<String> = v["properties"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            k.sort();
            k
        };
        let schema = &doc["components"]["schemas"]["DecideRequest"];
        let derived = &generated["components"]["schemas"]["DecideRequest"];
        assert!(!keys(derived).is_empty());
        assert_eq!(keys(schema), keys(derived));
    }

    /// The target in `/v1/targets/{target}` is described as a record's target is: a name
    /// longer or with other characters is refused (400), so a conforming client sends none.
    #[test]
    fn a_target_in_a_path_is_a_records_target() {
        let doc = openapi(false);
        let param = &doc["paths"]["/v1/targets/{target}"]["get"]["parameters"][0];
        assert_eq!(param["name"], "target");
        let target = &doc["components"]["schemas"]["AttemptContext"]["properties"]["target"];
        assert_eq!(param["schema"], *target);
        assert_eq!(param["schema"]["maxLength"], 256);
    }

    #[test]
    fn the_context_schema_is_the_attempt_schemas() {
        let doc = openapi(false);
        let ctx = &doc["components"]["schemas"]["AttemptContext"];
        assert_eq!(*ctx, schema::context_json_schema());
        for f in schema::context_fields() {
            assert!(ctx["properties"].get(f.name).is_some(), "{}", f.name);
        }
        assert!(
            doc["components"]["schemas"]["AttemptContext"]["properties"]["planned_delay_ms"]
                .is_object()
        );
    }

    #[test]
    fn security_follows_the_configuration() {
        let open = openapi(false);
        for path in ["/v1/attempts", "/admin/reload"] {
            let post = &open["paths"][path]["post"];
            assert!(post.get("security").is_none(), "{path}");
            assert!(post["responses"].get("401").is_none(), "{path}");
        }
        assert!(open["components"].get("securitySchemes").is_none());
        assert!(!open.to_string().contains("\"security\""));
        let guarded = openapi(true);
        assert_eq!(
            guarded["paths"]["/admin/reload"]["post"]["security"],
            json!([{"token": []}])
        );
        assert!(
            guarded["paths"]["/v1/predict"]["post"]
                .get("security")
                .is_none()
        );
    }

    #[test]
    fn every_referenced_schema_exists() {
        let doc = openapi(true);
        let text = doc.to_string();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            assert!(
                doc["components"]["schemas"].get(&name).is_some(),
                "{name} is referenced but missing"
            );
        }
    }
}
