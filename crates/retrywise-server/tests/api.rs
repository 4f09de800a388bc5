//! The service's handlers, in process (`oneshot`): every route, the limits, hot swap, and
//! bad input of every kind.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use proptest::prelude::*;
use retrywise::attempt::{AttemptContext, AttemptRecord, ErrorKind, Failure, Verdict};
use retrywise::model::{
    ARTIFACT_FORMAT, ARTIFACT_SCHEMA, FeatureSpec, LOGISTIC, LabelSpec, ModelArtifact,
    POSITIVE_LABEL, Regularization, Scaler,
};
use retrywise_server::{Config, Service};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A model whose log-odds are `intercept + w · failure_rate` (so tests can tell versions
/// apart and see the fleet view at work).
fn artifact(name: &str, version: u32, intercept: f64) -> ModelArtifact {
    let spec = FeatureSpec::current().with_region_rows(
        (0..retrywise::features::N_REGIONS)
            .map(|i| (retrywise::features::region_name(i), 1_000))
            .collect(),
    );
    let n = spec.names.len();
    let weights = spec
        .names
        .iter()
        .map(|f| if f == "failure_rate" { -4.0 } else { 0.0 })
        .collect();
    ModelArtifact {
        format: ARTIFACT_FORMAT.into(),
        schema_version: ARTIFACT_SCHEMA.into(),
        name: name.into(),
        version,
        kind: LOGISTIC.into(),
        label: LabelSpec {
            positive: POSITIVE_LABEL.into(),
            definition: "outcome == \"success\"".into(),
        },
        features: spec,
        scaler: Scaler {
            mean: vec![0.0; n],
            scale: vec![1.0; n],
        },
        weights,
        intercept,
        regularization: Regularization {
            kind: "l2".into(),
            alpha: 1.0,
        },
        training: json!({"rows": 10, "files": [{"path": "x"}]}),
        metrics: json!({"validation": {"auc": 0.8}, "baseline": {"validation": {"auc": 0.7}}}),
        created_at: "2026-11-27T00:00:00Z".into(),
        code_version: "test".into(),
    }
}

/// Reports 200 failed calls to `target`: the fleet's shared circuit opens. How long it
/// stays open (ms), and the target's view.
async fn open_circuit(h: &Harness, target: &str) -> (f64, Value) {
    let bad: Vec<AttemptRecord> = (0..200).map(|i| record(target, false, i)).collect();
    h.post("/v1/attempts", &serde_json::to_string(&bad).unwrap())
        .await;
    let (_, t) = h.get(&format!("/v1/targets/{target}")).await;
    assert_eq!(t["breaker_state"].as_str(), Some("OPEN"), "{t}");
    (t["open_for_ms"].as_f64().unwrap(), t)
}

/// `a` with the weight of `feature` set to `w`.
fn weighted(mut a: ModelArtifact, feature: &str, w: f64) -> ModelArtifact {
    let i = a.features.names.iter().position(|n| n == feature).unwrap();
    a.weights[i] = w;
    a
}

fn write_model(models: &Path, a: &ModelArtifact) {
    let dir = models.join(&a.name).join(a.version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.json"), a.to_json()).unwrap();
}

struct Harness {
    _dir: tempfile::TempDir,
    models: std::path::PathBuf,
    service: Service,
}

impl Harness {
    async fn new(edit: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        write_model(&models, &artifact("default", 1, 0.0));
        let mut config = Config {
            models: models.clone(),
            attempts: dir.path().join("attempts"),
            ..Config::default()
        };
        edit(&mut config);
        let service = Service::new(config).unwrap();
        service.reload().await.unwrap();
        Self {
            _dir: dir,
            models,
            service,
        }
    }

    fn router(&self) -> Router {
        self.service.router()
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let resp = self.router().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, headers, v)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (s, _, v) = self
            .call(Request::get(uri).body(Body::empty()).unwrap())
            .await;
        (s, v)
    }

    /// `retrywise_predictions_total` of the default model's `version` (0 before any).
    async fn predictions(&self, version: u32) -> u64 {
        let (_, m) = self.get("/metrics").await;
        let text = m.as_str().unwrap().to_owned();
        let series =
            format!("retrywise_predictions_total{{model=\"default\",version=\"{version}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    }

    async fn post(&self, uri: &str, body: &str) -> (StatusCode, Value) {
        let (s, _, v) = self
            .call(
                Request::post(uri)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body.to_owned()))
                    .unwrap(),
            )
            .await;
        (s, v)
    }
}

fn p_of(v: &Value) -> f64 {
    v["p_success"].as_f64().unwrap()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[tokio::test]
async fn health_readiness_and_models() {
    let h = Harness::new(|_| {}).await;
    assert_eq!(
        h.get("/healthz").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        h.get("/readyz").await,
        (
            StatusCode::OK,
            json!({"ready": true, "models": 1, "default_model": true, "fleet": "in-process"})
        )
    );
    assert_eq!(
        h.get("/v2/health/live").await,
        (StatusCode::OK, json!({"live": true}))
    );
    assert_eq!(
        h.get("/v2/health/ready").await,
        (StatusCode::OK, json!({"ready": true}))
    );
    let (s, v) = h.get("/v1/models").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["models"][0]["name"], "default");
    assert_eq!(v["models"][0]["version"], 1);
    let (s, v) = h.get("/v1/models/default").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["features"].as_array().unwrap().len(),
        retrywise::features::N_FEATURES
    );
    assert_eq!(v["training"]["file_count"], 1);
    let (s, v) = h.get("/v1/models/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown model `nope` (serving: default)"),
        "{v}"
    );

    // No model at all: not ready.
    let empty = Harness::new(|c| c.models = c.models.with_file_name("empty")).await;
    assert_eq!(
        empty.get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        empty.get("/v2/health/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // (A models folder that is not there: the scans read nothing, and the staleness gauge
    // never says they did.)
    let (_, m) = empty.get("/metrics").await;
    let stamp: f64 = m
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("retrywise_model_reload_last_success_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(stamp, 0.0);
    let (s, v) = empty
        .post(
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 1}}"#,
        )
        .await;
    // Not a model that does not exist (404): none is loaded yet, come back.
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no model is loaded yet"),
        "{v}"
    );
    let (s, h, _) = empty
        .call(
            Request::post("/v2/models/default/infer")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1]}]}"#,
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h[header::RETRY_AFTER], "1");
    // A request that can never succeed is refused as such, not told to come back.
    let (s, v) = empty
        .post(
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 0}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = empty
        .post(
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [0]}]}"#,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Decisions fall back to the rules, and say so: a retry after a 503 by full-jitter
    // backoff, a first attempt sent.
    let (s, v) = empty
        .post(
            "/v1/decide",
            r#"{"context": {"target": "t", "attempt": 2, "error": "http_503"}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["retry"].as_bool(),
            v["fell_back"].as_bool(),
            v["version"].as_u64()
        ),
        (Some(true), Some(true), Some(0)),
        "{v}"
    );
    assert_eq!(v["model"], "default", "{v}");
    let (s, v) = empty
        .post(
            "/v1/decide",
            r#"{"context": {"target": "t", "attempt": 1}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["retry"].as_bool(),
            v["reason"].as_str(),
            v["fell_back"].as_bool()
        ),
        (Some(true), Some("admit"), Some(true)),
        "{v}"
    );
    let (_, m) = empty.get("/metrics").await;
    let text = m.as_str().unwrap();
    assert!(
        text.contains("retrywise_decision_fallbacks_total 2"),
        "{text}"
    );
    assert!(
        text.contains("retrywise_decision_fallbacks_by_reason_total{reason=\"no_model\"} 2"),
        "{text}"
    );
    // The default model named explicitly is the default: the rules decide.
    let (s, v) = empty
        .post(
            "/v1/decide",
            r#"{"model": "default", "context": {"target": "t", "attempt": 2, "error": "http_503"}}"#,
        )
        .await;
    assert_eq!(
        (s, v["fell_back"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{v}"
    );
    // Another model named but not served is still not found.
    let (s, v) = empty
        .post(
            "/v1/decide",
            r#"{"model": "nope", "context": {"target": "t", "attempt": 2, "error": "http_503"}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // Another model serving does not make the default's absence a 404: while the
    // default is not serving (its version refused, say), its decisions are the rules'.
    write_model(
        &empty.models.with_file_name("empty"),
        &artifact("payments", 1, 0.0),
    );
    empty.service.reload().await.unwrap();
    for context in [
        r#"{"target": "t", "attempt": 2, "error": "http_503"}"#,
        r#"{"target": "t", "attempt": 1}"#,
    ] {
        let (s, v) = empty
            .post("/v1/decide", &format!(r#"{{"context": {context}}}"#))
            .await;
        assert_eq!(
            (s, v["fell_back"].as_bool(), v["version"].as_u64()),
            (StatusCode::OK, Some(true), Some(0)),
            "{v}"
        );
    }
    // A bad request is a 400 naming its field before any model is looked up.
    let (s, v) = empty
        .post(
            "/v1/decide",
            r#"{"model": "nope", "deadline_ms": -5, "context": {"target": "t", "attempt": 2, "error": "http_503"}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("deadline_ms"), "{v}");
}

#[tokio::test]
async fn predictions_single_batch_and_over_the_inference_protocol_agree() {
    let h = Harness::new(|_| {}).await;
    let (s, v) = h.post("/v1/predict", r#"{"context": {"target": "t", "attempt": 2, "error": "http_503", "failure_rate": 0.5}}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["model"].as_str(), v["version"].as_u64()),
        (Some("default"), Some(1))
    );
    assert!((p_of(&v) - sigmoid(-2.0)).abs() < 1e-12);
    let (s, v) = h
        .post("/v1/predict", r#"{"model": "default", "contexts": [{"target": "t", "attempt": 1, "failure_rate": 0}, {"target": "t", "attempt": 2, "failure_rate": 0.25}]}"#)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ps: Vec<f64> = v["p_success"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(
        (ps[0] - 0.5).abs() < 1e-12 && (ps[1] - sigmoid(-1.0)).abs() < 1e-12,
        "{ps:?}"
    );
    // An empty model name is a bad request (the schema's minLength 1), not a model
    // that does not exist.
    for uri in ["/v1/predict", "/v1/decide"] {
        let (s, v) = h
            .post(
                uri,
                r#"{"model": "", "context": {"target": "t", "attempt": 2, "error": "http_503"}}"#,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert!(v["error"].as_str().unwrap().contains("model"), "{v}");
    }
    let body = json!({"id": "r1", "inputs": [
        {"name": "attempt", "shape": [2], "datatype": "INT64", "data": [1, 2]},
        {"name": "failure_rate", "shape": [2], "datatype": "FP64", "data": [0.0, 0.25]},
        {"name": "error", "shape": [2], "datatype": "BYTES", "data": [null, "timeout"]}
    ]});
    let (s, v) = h.post("/v2/models/default/infer", &body.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["id"], "r1");
    assert_eq!(v["model_version"], "1");
    let out = &v["outputs"][0];
    assert_eq!(
        (out["name"].as_str(), out["shape"][0].as_u64()),
        (Some("p_success"), Some(2))
    );
    assert!((out["data"][1].as_f64().unwrap() - ps[1]).abs() < 1e-12);
    let (s, v) = h.get("/v2/models/default").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["outputs"][0]["name"], "p_success");
    assert!(
        v["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "delay_ms")
    );
    assert_eq!(
        h.get("/v2/models/default/ready").await,
        (StatusCode::OK, json!({"name": "default", "ready": true}))
    );
    assert_eq!(
        h.get("/v2/models/other/ready").await.0,
        StatusCode::NOT_FOUND
    );
    // The same tensors nested by the shape's dimensions ([2, 1]), as the protocol allows:
    // the same answer; nested deeper than the shape is refused, naming the input.
    let nested = json!({"id": "r1", "inputs": [
        {"name": "attempt", "shape": [2, 1], "datatype": "INT64", "data": [[1], [2]]},
        {"name": "failure_rate", "shape": [2], "datatype": "FP64", "data": [0.0, 0.25]},
        {"name": "error", "shape": [2, 1], "datatype": "BYTES", "data": [[null], ["timeout"]]}
    ]});
    let (s, nv) = h
        .post("/v2/models/default/infer", &nested.to_string())
        .await;
    assert_eq!(s, StatusCode::OK, "{nv}");
    assert_eq!(nv["outputs"], v_outputs(&h, &body).await);
    let mut deep = nested.clone();
    deep["inputs"][1]["data"] = json!([[0.0], [0.25]]);
    let (s, e) = h.post("/v2/models/default/infer", &deep.to_string()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(e.to_string().contains("failure_rate.data"), "{e}");
    // Nested other than the shape - transposed, or at mixed depths - is refused, not read
    // as its values in order.
    for data in [json!([[1, 2]]), json!([1, [2]]), json!([[], [1], [2]])] {
        let mut odd = nested.clone();
        odd["inputs"][0]["data"] = data.clone();
        let (s, e) = h.post("/v2/models/default/infer", &odd.to_string()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{data}: {e}");
        assert!(e.to_string().contains("attempt.data"), "{data}: {e}");
    }
    // By version: the version serving answers as the model does; another is a 404 naming
    // the version that serves.
    let (s, vv) = h
        .post("/v2/models/default/versions/1/infer", &body.to_string())
        .await;
    assert_eq!(s, StatusCode::OK, "{vv}");
    assert_eq!(vv["outputs"], v_outputs(&h, &body).await);
    assert_eq!(
        h.get("/v2/models/default/versions/1").await.1["versions"],
        json!(["1"])
    );
    assert_eq!(
        h.get("/v2/models/default/versions/1/ready").await,
        (StatusCode::OK, json!({"name": "default", "ready": true}))
    );
    for (s, e) in [
        h.post("/v2/models/default/versions/7/infer", &body.to_string())
            .await,
        h.get("/v2/models/default/versions/7").await,
        h.get("/v2/models/default/versions/7/ready").await,
        h.get("/v2/models/other/versions/1/ready").await,
    ] {
        assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    }
    let (_, e) = h.get("/v2/models/default/versions/7").await;
    assert!(e.to_string().contains("version 1 serves"), "{e}");
    // A model name that could be no target's is an unknown model (it was a 400 about a
    // `target` input the caller never sent).
    let one =
        json!({"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1]}]});
    for name in ["x".repeat(300), "a%0Ab".to_owned()] {
        let (s, e) = h
            .post(&format!("/v2/models/{name}/infer"), &one.to_string())
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{name}: {e}");
    }
    // Too many contexts is said before they are decoded: by the shape, or by the values
    // beyond it (a body of 10,000 values was decoded whole, then refused).
    let many = vec![1; 10_000];
    for (input, said) in [
        (
            json!({"name": "attempt", "shape": [10_000], "datatype": "INT64", "data": many}),
            "inputs[0].data[2000]: more values than 1000 rows hold",
        ),
        // Empty arrays are values too (they were not counted).
        (
            json!({"name": "attempt", "shape": [1], "datatype": "INT64", "data": vec![json!([]); 5_000]}),
            "inputs[0].data[2000]: more values than 1000 rows hold",
        ),
        // Free-form parameters are bounded as well.
        (
            json!({"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1],
                   "parameters": {"x": vec![0; 1_000]}}),
            "inputs[0].parameters.x[62]: at most 64 values, got more",
        ),
        (
            json!({"name": "attempt", "shape": [2_000], "datatype": "INT64", "data": [1, 1]}),
            "inputs.attempt: shape [2000]: at most 1000 contexts, got 2000",
        ),
        (
            json!({"name": "attempt", "shape": [2], "datatype": "INT64", "data": [1, 1, 1, 1]}),
            "inputs.attempt: shape [2] declares 2 values, and more follow",
        ),
        (
            json!({"name": "attempt", "shape": [2, 1], "datatype": "INT64", "data": [[1, 1, 1, 1]]}),
            "inputs.attempt.data: nested other than its shape [2, 1]",
        ),
    ] {
        let (s, e) = h
            .post(
                "/v2/models/default/infer",
                &json!({"inputs": [input]}).to_string(),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(e.to_string().contains(said), "{said}: {e}");
    }
    // A whole batch, each value nested in its own row, is taken.
    let rows = json!({"inputs": [
        {"name": "attempt", "shape": [1_000, 1], "datatype": "INT64", "data": vec![json!([1]); 1_000]}
    ]});
    let (s, v) = h.post("/v2/models/default/infer", &rows.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["outputs"][0]["shape"], json!([1_000]));
    // And on /v1/predict: contexts beyond the batch's limit are refused as they are met.
    let contexts = vec![json!({"target": "t", "attempt": 1}); 5_000];
    let (s, e) = h
        .post("/v1/predict", &json!({"contexts": contexts}).to_string())
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e.to_string()
            .contains("contexts: at most 1000 items, got more"),
        "{e}"
    );
}

/// The outputs `/v2/models/default/infer` answers to `body`.
async fn v_outputs(h: &Harness, body: &Value) -> Value {
    let (s, v) = h.post("/v2/models/default/infer", &body.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["outputs"].clone()
}

/// With `explore = 1`, every "not worth it" stop retries anyway, says so with its
/// propensity, and is counted; with the default 0 the same context stops.
#[tokio::test]
async fn the_service_explores_the_share_of_stops_it_is_told() {
    let body = json!({"context": {"target": "t", "attempt": 2, "error": "http_503", "failure_rate": 0.9}, "alternatives": true}).to_string();
    let h = Harness::new(|c| c.min_p_success = 0.2).await;
    let (_, v) = h.post("/v1/decide", &body).await;
    assert_eq!(
        (v["retry"].as_bool(), v["explored"].as_bool()),
        (Some(false), Some(false)),
        "{v}"
    );
    assert!(v.get("propensity").is_none(), "{v}");
    let h = Harness::new(|c| {
        c.min_p_success = 0.2;
        c.explore = 1.0;
    })
    .await;
    let (s, v) = h.post("/v1/decide", &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["retry"].as_bool(), v["explored"].as_bool()),
        (Some(true), Some(true)),
        "{v}"
    );
    // The wait is one of those weighed, each drawn with chance 1/n: its propensity.
    let waits: Vec<f64> = v["alternatives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["delay_ms"].as_f64().unwrap())
        .collect();
    assert!(waits.contains(&v["delay_ms"].as_f64().unwrap()), "{v}");
    assert!(waits.len() > 1, "{v}");
    assert_eq!(
        v["propensity"].as_f64(),
        Some(1.0 / waits.len() as f64),
        "{v}"
    );
    let (_, m) = h.get("/metrics").await;
    let text = m.as_str().unwrap();
    assert!(
        text.contains("retrywise_decisions_explored_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn decisions_follow_the_model_the_deadline_and_the_attempt_limit() {
    let h = Harness::new(|c| c.min_p_success = 0.2).await;
    let ctx = |rate: f64, attempt: u32| json!({"target": "t", "attempt": attempt, "error": "http_503", "failure_rate": rate});
    let (s, v) = h
        .post("/v1/decide", &json!({"context": ctx(0.0, 2)}).to_string())
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("retry"))
    );
    // The model does not care how long one waits: any wait whose cost in time (0.01 per
    // second) is within the tolerance (0.01) of the best may be drawn — up to a second.
    let d = v["delay_ms"].as_f64().unwrap();
    assert!((0.0..=1_000.0).contains(&d), "{v}");
    // p(success) = σ(-4 × 0.9) ≈ 0.03 < 0.2: stop.
    let (_, v) = h
        .post("/v1/decide", &json!({"context": ctx(0.9, 2)}).to_string())
        .await;
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("low_success_probability")),
        "{v}"
    );
    assert_eq!(v["delay_ms"], 0.0);
    let (_, v) = h
        .post("/v1/decide", &json!({"context": ctx(0.0, 9)}).to_string())
        .await;
    assert_eq!(v["reason"], "max_attempts", "{v}");
    // A permanent status is never retried, however healthy the target; a 425 is retried.
    for (status, reason) in [
        (400, "not_retryable"),
        (404, "not_retryable"),
        (425, "retry"),
    ] {
        let mut c = ctx(0.0, 2);
        c["error"] = json!("http_4xx");
        c["status"] = json!(status);
        let (_, v) = h
            .post("/v1/decide", &json!({"context": c}).to_string())
            .await;
        assert_eq!(v["reason"], reason, "{status}: {v}");
        assert_eq!(v["fell_back"], false, "{status}: {v}");
    }
    let mut late = ctx(0.0, 2);
    late["elapsed_ms"] = json!(5_000);
    let (_, v) = h
        .post(
            "/v1/decide",
            &json!({"context": late, "deadline_ms": 5000}).to_string(),
        )
        .await;
    assert_eq!(v["reason"], "deadline", "{v}");
    // Retry-After is honoured.
    let mut ra = ctx(0.0, 2);
    ra["retry_after_ms"] = json!(3_000);
    let (_, v) = h
        .post("/v1/decide", &json!({"context": ra}).to_string())
        .await;
    assert!(v["delay_ms"].as_f64().unwrap() >= 3_000.0, "{v}");
    // Beyond the decider's 30 s cap, retrying early would go against the upstream: stop,
    // and say why.
    let mut long = ctx(0.0, 2);
    long["retry_after_ms"] = json!(120_000);
    let (_, v) = h
        .post("/v1/decide", &json!({"context": long}).to_string())
        .await;
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("retry_after_too_long")),
        "{v}"
    );
    let (_, m) = h.get("/metrics").await;
    let text = m.as_str().unwrap();
    assert!(
        text.contains("retrywise_decisions_total{reason=\"low_success_probability\"} 1"),
        "{text}"
    );
    // The p each decision expected: the retry (about 0.5) and the stop at about 0.03 among
    // them, the stop in the bucket up to 0.05 and the retry not.
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
    };
    let count = value("retrywise_decision_p_success_count ");
    let low = value("retrywise_decision_p_success_bucket{le=\"0.05\"} ");
    assert!(count >= 2.0 && low >= 1.0 && low < count, "{text}");
    // Predictions are counted as made: one per wait weighed, none for a decision that
    // stopped before asking the model (a permanent status).
    let predictions = || h.predictions(1);
    let before = predictions().await;
    let mut c = ctx(0.0, 2);
    c["error"] = json!("http_4xx");
    c["status"] = json!(404);
    h.post("/v1/decide", &json!({"context": c}).to_string())
        .await;
    assert_eq!(predictions().await, before, "a 404 asks the model nothing");
    let (_, v) = h
        .post(
            "/v1/decide",
            &json!({"context": ctx(0.0, 2), "alternatives": true}).to_string(),
        )
        .await;
    let weighed = v["alternatives"].as_array().unwrap().len() as u64;
    assert!(weighed > 1, "{v}");
    assert_eq!(predictions().await, before + weighed);
}

#[tokio::test]
async fn bad_bodies_are_4xx_naming_the_field() {
    let h = Harness::new(|_| {}).await;
    let cases: &[(&str, &str, &str)] = &[
        ("/v1/predict", "{", "EOF while parsing"),
        ("/v1/predict", "[]", "body: expected a JSON object"),
        (
            "/v1/predict",
            r#"{"context": {"attempt": 1}}"#,
            "context: missing field `target`",
        ),
        (
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": "two"}}"#,
            "context.attempt: invalid type: string",
        ),
        (
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": -1}}"#,
            "context.attempt: invalid value: integer `-1`",
        ),
        (
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 0}}"#,
            "context.attempt: must be at least 1",
        ),
        (
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 1, "delay_ms": -5}}"#,
            "context.delay_ms: expected a non-negative",
        ),
        (
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 1, "latency_ms": 1e999}}"#,
            "context.latency_ms",
        ),
        (
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 1, "failure_rate": 2}}"#,
            "context.failure_rate: must be within [0, 1]",
        ),
        (
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 1, "error": "gremlins"}}"#,
            "context.error: unknown error kind `gremlins`",
        ),
        (
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 1, "status": 42}}"#,
            "context.status: must be within [100, 599]",
        ),
        (
            "/v1/decide",
            r#"{"context": {"target": "t", "attempt": 1, "error": "timeout"}}"#,
            "context.error: must be missing when `attempt` is 1 (a first attempt has no attempt before it), got timeout",
        ),
        (
            "/v1/predict",
            r#"{"contexts": [{"target": "t", "attempt": 1}, {"target": "t", "attempt": 0}]}"#,
            "contexts[1].attempt",
        ),
        (
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 1}, "contexts": []}"#,
            "give one, not both",
        ),
        ("/v1/predict", r#"{}"#, "missing field `context`"),
        ("/v1/predict", r#"{"contxt": {}}"#, "unknown field `contxt`"),
        (
            "/v1/predict",
            r#"{"model": "nope", "context": {"target": "t", "attempt": 1}}"#,
            "unknown model `nope`",
        ),
        (
            "/v1/decide",
            r#"{"context": {"target": "t", "attempt": 2}, "deadline_ms": -1}"#,
            "deadline_ms: must be within [1e-6",
        ),
        (
            "/v1/decide",
            r#"{"deadline_ms": 5}"#,
            "missing field `context`",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": []}"#,
            "the `attempt` input is required",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "failure_rate", "shape": [0], "datatype": "FP64", "data": []}]}"#,
            "the `attempt` input is required",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [0], "datatype": "INT64", "data": []}]}"#,
            "inputs: no contexts",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1]}], "ouputs": []}"#,
            "unknown field `ouputs`",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "dta": [1]}]}"#,
            "unknown field `dta`",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1]}], "parameters": {"binary_data_output": "true"}}"#,
            "parameters.binary_data_output: expected true or false, got \"true\"",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1]}], "outputs": [{"name": "p_success", "parameters": {"binary_data": 1}}]}"#,
            "outputs[0].parameters.binary_data: expected true or false, got 1",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1], "parameters": {"binary_data_size": 8}}]}"#,
            "both `data` and `parameters.binary_data_size`",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [2], "datatype": "INT64", "data": [1]}]}"#,
            "inputs.attempt: shape [2] with 1 values",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1.5]}]}"#,
            "inputs.attempt.data[0]: 1.5 is not a value of datatype INT64",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT8", "data": [4000000000]}]}"#,
            "inputs.attempt.data[0]: 4000000000 is not a value of datatype INT8",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [9223372036854775808]}]}"#,
            "is not a value of datatype INT64",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1]}, {"name": "failure_rate", "shape": [1], "datatype": "FP32", "data": [1e300]}]}"#,
            "inputs.failure_rate.data[0]: 1e300 is not a value of datatype FP32",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [-1]}]}"#,
            "attempt.data[0]: is required: -1 (or NaN, or null) means missing",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "BYTES", "data": [2]}]}"#,
            "inputs.attempt.data[0]: expected a string or null for datatype BYTES",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "FP64", "data": ["2"]}]}"#,
            "inputs.attempt.data[0]: expected a number or null for datatype FP64",
        ),
        (
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1]}, {"name": "wat", "shape": [1], "datatype": "FP64", "data": [1]}]}"#,
            "inputs.wat: unknown input",
        ),
        (
            // A misspelt `attempt` is named as unknown, not only "attempt is required".
            "/v2/models/default/infer",
            r#"{"inputs": [{"name": "attemp", "shape": [1], "datatype": "INT64", "data": [1]}]}"#,
            "inputs.attemp: unknown input (expected one of",
        ),
        (
            "/v2/models/nope/infer",
            r#"{"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1]}]}"#,
            "unknown model `nope`",
        ),
    ];
    for (uri, body, want) in cases {
        let (s, v) = h.post(uri, body).await;
        assert!(s.is_client_error(), "{uri} {body}: {s} {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{uri} {body}: no error body: {v}"));
        assert!(msg.contains(want), "{uri} {body}: {msg:?} lacks {want:?}");
    }
    // A name as long as the body is said clipped (256 characters and an ellipsis), in the
    // error of an unknown input, datatype or output alike.
    let long = "x".repeat(100_000);
    for body in [
        json!({"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1]}, {"name": long, "shape": [1], "datatype": "INT64", "data": [1]}]}),
        json!({"inputs": [{"name": "attempt", "shape": [1], "datatype": long, "data": [1]}]}),
        json!({"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1]}], "outputs": [{"name": long}]}),
    ] {
        let (s, v) = h.post("/v2/models/default/infer", &body.to_string()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let msg = v["error"].as_str().unwrap();
        assert!(msg.len() < 1_000 && msg.contains('…'), "{msg}");
    }
    // Not JSON at all.
    let (s, _, v) = h
        .call(
            Request::post("/v1/predict")
                .header(header::CONTENT_TYPE, "text/csv")
                .body(Body::from("a,b"))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");
    // A path parameter that is not UTF-8: a JSON 400 like every other bad input.
    for uri in ["/v1/targets/%FF", "/v1/models/%FF", "/v2/models/%FF/ready"] {
        let (s, v) = h.get(uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert!(
            v["error"].as_str().unwrap().starts_with("path:"),
            "{uri}: {v}"
        );
    }
    // A target name no record could carry: a 400 naming why, not "not tracked".
    let long = format!("/v1/targets/{}", "t".repeat(300));
    for (uri, says) in [
        (long.as_str(), "target: must have at most 256 characters"),
        (
            "/v1/targets/a%0Ab",
            "target: must not hold control characters",
        ),
    ] {
        let (s, v) = h.get(uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(says), "{uri}: {v}");
    }
    // An unknown route is answered, identified and counted like any request.
    let (s, headers, v) = h
        .call(Request::get("/v1/nowhere").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(headers.contains_key("x-request-id"));
    let (_, m) = h.get("/metrics").await;
    assert!(
        m.as_str()
            .unwrap()
            .contains(r#"retrywise_http_requests_total{route="unmatched",status="404"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let h = Harness::new(|c| c.body_limit = 4096).await;
    let big = format!(
        r#"{{"contexts": [{}]}}"#,
        vec![r#"{"target": "t", "attempt": 1}"#; 200].join(",")
    );
    let (s, v) = h.post("/v1/predict", &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("larger than the limit of 4096 bytes (setting body_limit_bytes)"),
        "{v}"
    );
}

fn record(target: &str, ok: bool, i: u64) -> AttemptRecord {
    let mut ctx = AttemptContext::first(target);
    ctx.attempt = 1;
    let verdict = if ok {
        Verdict::Success
    } else {
        Verdict::Retryable(Failure::new(ErrorKind::Http503).with_status(503))
    };
    AttemptRecord::new(i, 0, now_ms() + i, ctx, &verdict, Duration::from_millis(20))
}

/// A batch of one successful attempt to each of `targets`, as JSON.
fn successes(targets: &[&str]) -> String {
    let recs: Vec<AttemptRecord> = targets
        .iter()
        .enumerate()
        .map(|(i, n)| record(n, true, i as u64))
        .collect();
    serde_json::to_string(&recs).unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn ingestion_refuses_records_it_could_not_read_back_or_that_make_no_sense() {
    let h = Harness::new(|_| {}).await;
    let good = serde_json::to_value(record("payments", true, 1)).unwrap();
    let with = |k: &str, v: Value| {
        let mut r = good.clone();
        r[k] = v;
        r
    };
    let body = json!([
        good,
        with("schema_version", json!("9.0")),
        with("attempt", json!(0)),
        with("target", json!("")),
        with("failure_rate", json!(7.5)),
        with("status", json!(42)),
        with("outcome_status", json!(42)),
        with("target", json!("a\u{0}b")),
        // Each value in range, but contradicting another of the record.
        with("outcome_error", json!("timeout")),
        with("error", json!("connect")),
    ]);
    let (s, v) = h.post("/v1/attempts", &body.to_string()).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "one invalid record refuses the batch: {v}"
    );
    let error = v["error"].as_str().unwrap();
    assert!(
        error.starts_with("9 invalid records (nothing written): "),
        "{error}"
    );
    for (i, want) in [
        (1, "schema_version: 9.0 is not supported"),
        (2, "attempt: must be at least 1"),
        (3, "target: must not be empty"),
        (4, "failure_rate: must be within [0, 1]"),
        (5, "status: must be within [100, 599]"),
        (6, "outcome_status: must be within [100, 599]"),
        (7, "target: must not hold control characters"),
        (
            8,
            "outcome_error: must be missing when `outcome` is success or cancelled (only a failure has a kind of failure), got timeout",
        ),
        (
            9,
            "error: must be missing when `attempt` is 1 (a first attempt has no attempt before it), got connect",
        ),
    ] {
        assert!(error.contains(&format!("[{i}]: {want}")), "{error}");
    }
    // Nothing of it was written, nor learned from.
    assert_eq!(h.get("/v1/targets/payments").await.0, StatusCode::NOT_FOUND);
    // A batch with nothing in it is refused too.
    for empty in ["[]", "[{}]"] {
        let (s, v) = h.post("/v1/attempts", empty).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{empty}: {v}");
    }
    // Old attempts (a backfill) are kept but do not count as the target's health now.
    let mut old = record("archive", false, 1);
    old.started_at_ms -= 3_600_000;
    let (s, v) = h
        .post("/v1/attempts", &serde_json::to_string(&[old]).unwrap())
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (StatusCode::ACCEPTED, Some(1)));
    assert_eq!(h.get("/v1/targets/archive").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_body_with_more_after_its_value_is_refused_and_nothing_written() {
    let h = Harness::new(|_| {}).await;
    let line = |id: u64| serde_json::to_string(&record("joined", true, id)).unwrap();
    let ndjson = |body: String| {
        Request::post("/v1/attempts")
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Body::from(body))
            .unwrap()
    };
    // Two records on one line (or split by a lone carriage return) are not one record:
    // acknowledging the first and dropping the second would lose an acknowledged write.
    for body in [
        format!("{}{}", line(1), line(2)),
        format!("{}\r{}", line(1), line(2)),
        format!("{}\n{} {}", line(1), line(2), line(3)),
    ] {
        let (s, _, v) = h.call(ndjson(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(error.contains("trailing characters"), "{error}");
        assert!(error.contains("nothing written"), "{error}");
    }
    let (s, v) = h
        .post("/v1/attempts", &format!("[{}] [{}]", line(1), line(2)))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(h.get("/v1/targets/joined").await.0, StatusCode::NOT_FOUND);
    // A request followed by anything, or a request written as an array of its fields.
    let ctx = json!({"target": "t", "attempt": 2});
    for (uri, body) in [
        (
            "/v1/predict",
            format!("{} trailing", json!({"context": ctx})),
        ),
        ("/v1/decide", format!("{} {{}}", json!({"context": ctx}))),
        ("/v1/predict", json!([null, ctx]).to_string()),
        ("/v1/decide", json!([null, ctx, null, true]).to_string()),
        ("/v2/models/default/infer", "[[]]".to_owned()),
    ] {
        let (s, v) = h.post(uri, &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri} {body}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("trailing characters") || error.contains("expected a JSON object"),
            "{uri} {body}: {error}"
        );
    }
}

#[tokio::test]
async fn misspelled_fields_wrong_methods_and_absurd_shapes_are_4xx() {
    let h = Harness::new(|_| {}).await;
    let (s, v) = h
        .post(
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 2, "latncy_ms": 5}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `latncy_ms`"),
        "{v}"
    );
    let (s, _, v) = h
        .call(Request::get("/v1/predict").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(v["error"].is_string(), "{v}");
    let body = json!({"inputs": [{"name": "attempt", "shape": [u64::MAX, 2], "datatype": "INT64", "data": [1]}]});
    let (s, v) = h.post("/v2/models/default/infer", &body.to_string()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn a_rollback_or_a_rewritten_version_is_followed() {
    let h = Harness::new(|_| {}).await;
    let ask = r#"{"context": {"target": "t", "attempt": 1, "failure_rate": 0}}"#;
    write_model(&h.models, &artifact("default", 2, 1.0));
    h.post("/admin/reload", "").await;
    assert_eq!(h.post("/v1/predict", ask).await.1["version"], 2);
    // Version 2 removed: version 1 serves again.
    std::fs::remove_dir_all(h.models.join("default/2")).unwrap();
    let (_, v) = h.post("/admin/reload", "").await;
    assert_eq!(v["serving"], json!(["default/1"]), "{v}");
    let (_, v) = h.post("/v1/predict", ask).await;
    assert_eq!((v["version"].as_u64(), p_of(&v)), (Some(1), 0.5));
    // A new version 2 (another model under a number used before) is taken.
    write_model(&h.models, &artifact("default", 2, -1.0));
    h.post("/admin/reload", "").await;
    let (_, v) = h.post("/v1/predict", ask).await;
    assert_eq!(v["version"], 2);
    assert!((p_of(&v) - sigmoid(-1.0)).abs() < 1e-12, "{v}");
    let (_, m) = h.get("/metrics").await;
    let text = m.as_str().unwrap();
    assert!(
        text.contains("retrywise_model_serving{model=\"default\",version=\"2\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("retrywise_model_serving{model=\"default\",version=\"1\"} 0"),
        "{text}"
    );
    // Version 2 rewritten in place and caught half-written: refused, and the version in
    // memory keeps serving - version 1 does not take its place.
    std::fs::write(h.models.join("default/2/model.json"), "{").unwrap();
    // Every later reload too, while the file stays refused; and when it is removed.
    for edit in [
        None,
        None,
        Some(|m: &std::path::Path| std::fs::remove_file(m.join("default/2/model.json")).unwrap()),
        None,
    ] {
        if let Some(edit) = edit {
            edit(&h.models);
        }
        let (_, v) = h.post("/admin/reload", "").await;
        assert_eq!(v["serving"], json!(["default/2"]), "{v}");
        let (_, v) = h.post("/v1/predict", ask).await;
        assert_eq!(v["version"], 2);
        assert!((p_of(&v) - sigmoid(-1.0)).abs() < 1e-12, "{v}");
    }
    // A copy that keeps the file's size and modification time (`cp -p`, `rsync -t`): a
    // new model all the same, and followed.
    let file = h.models.join("default/2/model.json");
    write_model(&h.models, &artifact("default", 2, -1.0));
    h.post("/admin/reload", "").await;
    let before = std::fs::metadata(&file).unwrap();
    let mut same_size = artifact("default", 2, -3.0).to_json();
    assert!(
        same_size.len() <= before.len() as usize,
        "{}",
        same_size.len()
    );
    same_size.push_str(&" ".repeat(before.len() as usize - same_size.len()));
    let copy = h.models.join("default/2/.model.json.copy");
    std::fs::write(&copy, &same_size).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    std::fs::rename(&copy, &file).unwrap();
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap())
    );
    let (_, v) = h.post("/admin/reload", "").await;
    assert_eq!(v["loaded"], json!(["default/2"]), "{v}");
    let (_, v) = h.post("/v1/predict", ask).await;
    assert!((p_of(&v) - sigmoid(-3.0)).abs() < 1e-12, "{v}");
    // A folder named `02` is not version 2 (nor `+3` version 3): not served, and said so.
    std::fs::remove_dir_all(h.models.join("default/2")).unwrap();
    write_model(&h.models, &artifact("default", 3, 2.0));
    std::fs::rename(h.models.join("default/3"), h.models.join("default/+3")).unwrap();
    let (_, v) = h.post("/admin/reload", "").await;
    assert_eq!(v["serving"], json!(["default/1"]), "{v}");
    assert!(
        v.to_string().contains("`+3` is not a version number"),
        "{v}"
    );
}

/// `curl -d` labels the JSON it sends as a form: every JSON route reads it as JSON —
/// predictions, ingestion and KServe inference alike.
#[tokio::test]
async fn curls_json_is_read_as_json_on_every_route() {
    let h = Harness::new(|_| {}).await;
    let form = |uri: &str, body: String| {
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap()
    };
    let ask = r#"{"context": {"target": "t", "attempt": 1}}"#.to_owned();
    let (s, _, v) = h.call(form("/v1/predict", ask)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let recs: Vec<AttemptRecord> = (0..3).map(|i| record("payments", true, i)).collect();
    let (s, _, v) = h
        .call(form("/v1/attempts", serde_json::to_string(&recs).unwrap()))
        .await;
    assert_eq!(
        (s, v["accepted"].as_u64()),
        (StatusCode::ACCEPTED, Some(3)),
        "{v}"
    );
    // Records one per line sent so (`curl --data-binary @records.ndjson`): refused, the
    // answer naming the header that is missing.
    let lines: Vec<String> = recs
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let (s, _, v) = h.call(form("/v1/attempts", lines.join("\n"))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("sent with Content-Type: application/x-ndjson (this request's: application/x-www-form-urlencoded)"),
        "{error}"
    );
    let infer =
        json!({"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [1]}]});
    let (s, _, v) = h
        .call(form("/v2/models/default/infer", infer.to_string()))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn ingestion_feeds_the_collector_and_the_fleet_view_and_guards_with_the_token() {
    let h = Harness::new(|c| c.token = Some("s3cret".into())).await;
    let recs: Vec<AttemptRecord> = (0..10)
        .map(|i| record("payments", i % 5 != 0 && i < 6, i))
        .collect();
    let array = serde_json::to_string(&recs).unwrap();
    // No token, wrong token: 401.
    let (s, v) = h.post("/v1/attempts", &array).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let req = |body: String, ct: &str, token: &str| {
        Request::post("/v1/attempts")
            .header(header::CONTENT_TYPE, ct)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::from(body))
            .unwrap()
    };
    assert_eq!(
        h.call(req(array.clone(), "application/json", "s3cre"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (s, _, v) = h.call(req(array, "application/json", "s3cret")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"].as_u64(), Some(10));
    // A JSON array past the batch's bound is refused at the item past it (it was read
    // whole into memory first), nothing of it written.
    let long = format!("[{}]", vec!["1"; 1001].join(","));
    let (s, _, v) = h.call(req(long, "application/json", "s3cret")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("at most 1000 items, got more") && e.contains("nothing written"),
        "{e}"
    );
    // NDJSON, with a bad line and a blank one: refused whole, naming the line.
    let mut nd: Vec<String> = (10..14)
        .map(|i| serde_json::to_string(&record("payments", false, i)).unwrap())
        .collect();
    nd.insert(2, r#"{"schema_version": "1.1", "target": 7}"#.into());
    nd.insert(3, String::new());
    let (s, _, v) = h
        .call(req(nd.join("\n"), "application/x-ndjson", "s3cret"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("line 3: "), "{v}");
    nd.remove(2);
    // A record of a newer minor version, with a field this build does not know: accepted,
    // and written with that field.
    let newer = nd[3].replacen(
        &format!("\"{}\"", retrywise::attempt::SchemaVersion::CURRENT),
        "\"1.99\"",
        1,
    );
    nd[3] = newer.replacen('{', r#"{"zone":"eu-1","#, 1);
    let (s, _, v) = h
        .call(req(nd.join("\n"), "application/x-ndjson", "s3cret"))
        .await;
    assert_eq!(
        (s, v["accepted"].as_u64()),
        (StatusCode::ACCEPTED, Some(4)),
        "{v}"
    );
    // A field this build does not know in a record of its own version: a misspelling,
    // refused (written, the value it was meant to carry would be lost).
    let typo = nd[0].replacen('{', r#"{"retry_after_m":1000,"#, 1);
    let (s, _, v) = h.call(req(typo, "application/x-ndjson", "s3cret")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("line 1: unknown_fields: `retry_after_m` is not a field of schema_version"),
        "{v}"
    );
    // A start no day can name (beyond 9999-12-31): refused, naming the field.
    let mut far: serde_json::Value = serde_json::from_str(&nd[0]).unwrap();
    far["started_at_ms"] = serde_json::json!(1u64 << 63);
    let far = far.to_string();
    let (s, _, v) = h.call(req(far, "application/x-ndjson", "s3cret")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("started_at_ms"),
        "{v}"
    );
    // Not an array.
    let (s, _, v) = h.call(req("{}".into(), "application/json", "s3cret")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // A body of another media type: 415, no invalid batch (none was read).
    let (s, _, v) = h.call(req(nd[0].clone(), "text/plain", "s3cret")).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");

    // The fleet view: 14 attempts, 4 + 5 failed... counted as ingested.
    let (s, v) = h.get("/v1/targets/payments").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let failures = recs
        .iter()
        .filter(|r| r.outcome != retrywise::attempt::Outcome::Success)
        .count() as u64
        + 4;
    assert_eq!(
        (v["calls"].as_u64(), v["failures"].as_u64()),
        (Some(14), Some(failures)),
        "{v}"
    );
    assert!(v["latency_p95_ms"].as_f64().unwrap() > 15.0);
    assert_eq!(h.get("/v1/targets/unknown").await.0, StatusCode::NOT_FOUND);
    // Predictions that do not say the failure rate get the fleet's.
    let rate = failures as f64 / 14.0;
    let (_, v) = h
        .post(
            "/v1/predict",
            r#"{"context": {"target": "payments", "attempt": 2}}"#,
        )
        .await;
    assert!((p_of(&v) - sigmoid(-4.0 * rate)).abs() < 1e-9, "{v}");
    let (_, v) = h
        .post(
            "/v1/predict",
            r#"{"context": {"target": "payments", "attempt": 2, "failure_rate": 0}}"#,
        )
        .await;
    assert!((p_of(&v) - 0.5).abs() < 1e-12, "{v}");
    // Written through the collector.
    h.service.flush().unwrap();
    let read: Vec<AttemptRecord> =
        retrywise_collect::SegmentReader::open(&h.service.state().config.attempts)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(read.len(), 14);
    let kept: Vec<_> = read.iter().filter(|r| r.unknown.is_some()).collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].unknown.as_deref().unwrap()["zone"], "eu-1");
    assert_eq!(kept[0].schema_version.to_string(), "1.99");
    // And counted.
    let (_, m) = h.get("/metrics").await;
    let text = m.as_str().unwrap();
    assert!(
        text.contains("retrywise_ingested_attempts_total{target=\"payments\"} 14"),
        "{text}"
    );
    // The collector's backlog is exported (nothing waits once flushed).
    assert!(
        text.contains("retrywise_collector_pending_records 0"),
        "{text}"
    );
    assert!(
        text.contains("retrywise_rejected_attempt_batches_total 5"),
        "{text}"
    );
    assert!(
        text.contains("retrywise_http_requests_total{route=\"/v1/attempts\",status=\"401\"} 2"),
        "{text}"
    );
    // The admin route needs the token too.
    assert_eq!(
        h.post("/admin/reload", "").await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn target_labels_are_capped() {
    let h = Harness::new(|c| c.max_target_labels = 2).await;
    let recs: Vec<AttemptRecord> = (0..5).map(|i| record(&format!("t{i}"), true, i)).collect();
    let (s, v) = h
        .post("/v1/attempts", &serde_json::to_string(&recs).unwrap())
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (_, m) = h.get("/metrics").await;
    let text = m.as_str().unwrap();
    assert!(
        text.contains("target=\"t0\"") && text.contains("target=\"t1\""),
        "{text}"
    );
    assert!(!text.contains("target=\"t2\""), "{text}");
    assert!(
        text.contains("retrywise_ingested_attempts_total{target=\"other\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reload_whose_caller_stops_waiting_still_swaps_its_version_in() {
    let h = Harness::new(|_| {}).await;
    write_model(&h.models, &artifact("default", 2, 1.0));
    // The caller gives up once the reload has started (a request timeout, a client gone).
    let call = h
        .router()
        .oneshot(Request::post("/admin/reload").body(Body::empty()).unwrap());
    let mut call = Box::pin(call);
    assert!(futures_util::FutureExt::now_or_never(call.as_mut()).is_none());
    drop(call);
    // The next reload waits for that one, which loaded version 2: nothing is left to load.
    let (s, v) = h.post("/admin/reload", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["loaded"], json!([]), "{v}");
    assert_eq!(v["serving"], json!(["default/2"]), "{v}");
    let (_, text) = h.get("/metrics").await;
    assert!(
        text.as_str()
            .unwrap()
            .contains("retrywise_model_reloads_total{result=\"success\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_new_version_is_swapped_in_and_a_corrupt_one_refused() {
    let h = Harness::new(|_| {}).await;
    let ask = r#"{"context": {"target": "t", "attempt": 1, "failure_rate": 0}}"#;
    let (_, v) = h.post("/v1/predict", ask).await;
    assert_eq!((v["version"].as_u64(), p_of(&v)), (Some(1), 0.5));
    write_model(&h.models, &artifact("default", 2, 1.0));
    let (s, v) = h.post("/admin/reload", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["loaded"], json!(["default/2"]));
    let (_, v) = h.post("/v1/predict", ask).await;
    assert_eq!(v["version"], 2);
    assert!((p_of(&v) - sigmoid(1.0)).abs() < 1e-12);
    // Version 3 is corrupt: refused, version 2 keeps serving, and it is said once.
    let v3 = h.models.join("default/3");
    std::fs::create_dir_all(&v3).unwrap();
    std::fs::write(
        v3.join("model.json"),
        "{\"format\": \"retrywise-model\", \"weights\": [",
    )
    .unwrap();
    let (_, v) = h.post("/admin/reload", "").await;
    assert!(
        v["failed"][0].as_str().unwrap().starts_with("default/3: "),
        "{v}"
    );
    assert_eq!(v["serving"], json!(["default/2"]));
    let (_, v) = h.post("/admin/reload", "").await;
    assert_eq!(
        v["failed"],
        json!([]),
        "a refused version is not retried until it changes"
    );
    // ... but it is still said, with why.
    assert!(
        v["still_refused"][0]
            .as_str()
            .unwrap()
            .starts_with("default/3: "),
        "{v}"
    );
    assert_eq!(h.post("/v1/predict", ask).await.1["version"], 2);
    // Fixed in place: taken.
    std::fs::write(v3.join("model.json"), artifact("default", 3, 2.0).to_json()).unwrap();
    let (_, v) = h.post("/admin/reload", "").await;
    assert_eq!(v["loaded"], json!(["default/3"]), "{v}");
    // Another model name appears.
    write_model(&h.models, &artifact("payments", 1, -1.0));
    h.post("/admin/reload", "").await;
    let (_, v) = h
        .post(
            "/v1/predict",
            r#"{"model": "payments", "context": {"target": "t", "attempt": 1, "failure_rate": 0}}"#,
        )
        .await;
    assert_eq!(v["model"], "payments");
    let (_, m) = h.get("/metrics").await;
    let text = m.as_str().unwrap();
    assert!(
        text.contains("retrywise_model_reloads_total{result=\"failure\"} 1"),
        "{text}"
    );
    // Every reload timed, and the last good one stamped.
    assert!(
        text.contains("retrywise_model_reload_duration_seconds_count "),
        "{text}"
    );
    let stamp: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("retrywise_model_reload_last_success_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(stamp > 1.7e9, "{stamp}");
    assert!(
        text.contains("retrywise_model_serving{model=\"default\",version=\"3\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("retrywise_model_serving{model=\"default\",version=\"2\"} 0"),
        "{text}"
    );
    // A model in a folder that is not a version number is not served, and said so (it
    // used to be skipped without a word); nor is version 0, which the answers use for "no
    // model: the rules decided".
    for (folder, version) in [("v4", 4), ("0", 0)] {
        let named = h.models.join("default").join(folder);
        std::fs::create_dir_all(&named).unwrap();
        std::fs::write(
            named.join("model.json"),
            artifact("default", version, 1.0).to_json(),
        )
        .unwrap();
        let (_, v) = h.post("/admin/reload", "").await;
        assert_eq!(v["loaded"], json!([]), "{v}");
        let says =
            format!("default/{folder} holds a model.json but `{folder}` is not a version number");
        assert!(v["warnings"][0].as_str().unwrap().contains(&says), "{v}");
        assert_eq!(h.post("/v1/predict", ask).await.1["version"], 3);
        std::fs::remove_dir_all(&named).unwrap();
    }
    // A model's folder gone: it keeps serving from memory, and the reload says so.
    std::fs::remove_dir_all(h.models.join("payments")).unwrap();
    let (_, v) = h.post("/admin/reload", "").await;
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("the folder of model `payments` was removed"),
        "{v}"
    );
    // The folder gone: the versions loaded keep serving from memory, and the reload says so.
    let metrics = || async { h.get("/metrics").await.1.as_str().unwrap().to_owned() };
    let stamp_of = |text: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix("retrywise_model_reload_last_success_timestamp_seconds "))
            .unwrap()
            .to_owned()
    };
    let before = stamp_of(&metrics().await);
    std::fs::remove_dir_all(&h.models).unwrap();
    let (s, v) = h.post("/admin/reload", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("does not exist: the versions loaded keep serving from memory"),
        "{v}"
    );
    assert_eq!(h.post("/v1/predict", ask).await.1["version"], 3);
    // ... and it is no clean scan: the staleness gauge stands still.
    let text = metrics().await;
    assert_eq!(stamp_of(&text), before, "{text}");
    // A folder that cannot be read is a scan's error, not a version refused.
    std::fs::write(&h.models, "not a folder").unwrap();
    let (s, v) = h.post("/admin/reload", "").await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    let text = metrics().await;
    assert!(
        text.contains("retrywise_model_reloads_total{result=\"error\"} 1")
            && text.contains("retrywise_model_reloads_total{result=\"failure\"} 1"),
        "{text}"
    );
    assert_eq!(stamp_of(&text), before, "{text}");
    assert_eq!(h.post("/v1/predict", ask).await.1["version"], 3);
}

#[tokio::test]
async fn a_model_trained_on_too_few_calls_like_this_one_is_not_trusted_with_its_admission() {
    let h = Harness::new(|_| {}).await;
    let mut thin = artifact("thin", 1, -5.0);
    thin.features = thin.features.with_region_rows(
        (0..retrywise::features::N_REGIONS)
            .map(|i| (retrywise::features::region_name(i), 10))
            .collect(),
    );
    write_model(&h.models, &thin);
    h.post("/admin/reload", "").await;
    // Its p of a fresh call is 0.7 %, below the threshold, but it has seen 10 such calls:
    // the call is sent, as without a model, and the answer says it fell back.
    for (ctx, reason) in [
        (r#"{"target": "t", "attempt": 1}"#, "admit"),
        (
            r#"{"target": "t", "attempt": 2, "error": "http_503"}"#,
            "retry",
        ),
    ] {
        let (s, v) = h
            .post(
                "/v1/decide",
                &format!(r#"{{"model": "thin", "context": {ctx}}}"#),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            (v["reason"].as_str(), v["fell_back"].as_bool()),
            (Some(reason), Some(true)),
            "{v}"
        );
    }
    let (_, m) = h.get("/metrics").await;
    let text = m.as_str().unwrap();
    assert!(
        text.contains("retrywise_decision_fallbacks_by_reason_total{reason=\"unsupported\"} 2"),
        "{text}"
    );
    // The same model with the support it needs is trusted: a fresh call it gives 0.7 % is
    // not sent.
    write_model(&h.models, &artifact("strict", 1, -5.0));
    h.post("/admin/reload", "").await;
    let (_, v) = h
        .post(
            "/v1/decide",
            r#"{"model": "strict", "context": {"target": "t", "attempt": 1}}"#,
        )
        .await;
    assert_eq!(
        (v["retry"].as_bool(), v["fell_back"].as_bool()),
        (Some(false), Some(false)),
        "{v}"
    );
}

#[tokio::test]
async fn a_default_model_that_is_not_serving_is_named_as_the_default() {
    let h = Harness::new(|c| c.default_model = "nosuch".into()).await;
    let (s, v) = h
        .post(
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 1}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("the default model `nosuch` (setting `default_model`) is not serving"),
        "{e}"
    );
    // Other models serve, not the default: not ready (a load balancer sends the requests
    // that name no model elsewhere), and both readiness routes say why.
    for route in ["/readyz", "/v2/health/ready"] {
        let (s, v) = h.get(route).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{route}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(
                "the default model `nosuch` (setting `default_model`) is not serving (serving: default)"
            ),
            "{route}: {v}"
        );
    }
}

// On the paused clock, the sleep below returns only once every task is idle: the slow
// request has taken the slot and waits for its body.
#[tokio::test(start_paused = true)]
async fn too_many_requests_in_flight_are_shed_with_retry_after() {
    let h = Harness::new(|c| c.max_in_flight = 1).await;
    // A request whose body never finishes holds the only slot.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let stream = tokio_stream_from(rx);
    let router = h.router();
    let slow = tokio::spawn(
        router.clone().oneshot(
            Request::post("/v1/predict")
                .body(Body::from_stream(stream))
                .unwrap(),
        ),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, headers, v) = h
        .call(
            Request::post("/v1/predict")
                .body(Body::from(r#"{"context": {"target": "t", "attempt": 1}}"#))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "1");
    assert!(v["error"].as_str().unwrap().contains("overloaded"));
    // Health checks are not shed.
    assert_eq!(h.get("/healthz").await.0, StatusCode::OK);
    tx.send(Ok(bytes::Bytes::from_static(
        br#"{"context": {"target": "t", "attempt": 1}}"#,
    )))
    .await
    .unwrap();
    drop(tx);
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
    let (_, m) = h.get("/metrics").await;
    assert!(
        m.as_str()
            .unwrap()
            .contains("retrywise_shed_requests_total 1")
    );
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core_stream::Stream<Item = T> + Send + 'static {
    futures_core_stream::from_fn(move |cx| rx.poll_recv(cx))
}

/// A minimal `Stream` over a poll function (no extra dependency).
mod futures_core_stream {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(super) use futures_util::Stream;

    pub(super) struct FromFn<F>(F);

    impl<T, F: FnMut(&mut Context<'_>) -> Poll<Option<T>> + Unpin> Stream for FromFn<F> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            (self.0)(cx)
        }
    }

    pub(super) fn from_fn<T, F: FnMut(&mut Context<'_>) -> Poll<Option<T>> + Unpin>(
        f: F,
    ) -> FromFn<F> {
        FromFn(f)
    }
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let h = Harness::new(|_| {}).await;
    let (s, v) = h.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    // Every route the router serves, read from its source (`.route("PATH", …)`): a route
    // added there without its documentation fails here. (`/openapi.json` serves the
    // document itself.)
    let source = include_str!("../src/router.rs");
    let routes: Vec<&str> = source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
        .filter(|path| *path != "/openapi.json")
        .collect();
    assert!(routes.len() >= 19, "{routes:?}");
    for path in &routes {
        assert!(v["paths"].get(*path).is_some(), "{path} missing");
    }
    // And nothing is documented that is not served.
    for path in v["paths"].as_object().unwrap().keys() {
        assert!(
            routes.contains(&path.as_str()),
            "{path} documented, not served"
        );
    }
    // The context a caller sends is described by the attempt schema itself.
    assert_eq!(
        v["components"]["schemas"]["AttemptContext"],
        retrywise::attempt::schema::context_json_schema()
    );
    // No token configured: the document says nothing is guarded.
    assert!(v["paths"]["/v1/attempts"]["post"].get("security").is_none());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any body on any POST route gets an answer below 500 (and never a panic).
    #[test]
    fn arbitrary_bodies_never_get_a_5xx(
        route in prop::sample::select(vec!["/v1/predict", "/v1/decide", "/v1/attempts", "/v2/models/default/infer"]),
        body in prop_oneof![
            ".{0,200}",
            any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            arb_json().prop_map(|v| v.to_string()),
            arb_json().prop_map(|v| json!({"context": v}).to_string()),
            arb_json().prop_map(|v| json!({"contexts": [v], "model": "default"}).to_string()),
            arb_json().prop_map(|v| json!({"inputs": [{"name": "attempt", "shape": [1], "datatype": "INT64", "data": [v]}]}).to_string()),
        ],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let h = Harness::new(|_| {}).await;
            let (s, v) = h.post(route, &body).await;
            prop_assert!(s.as_u16() < 500, "{} {:?} -> {} {}", route, body, s, v);
            if !s.is_success() {
                prop_assert!(v["error"].is_string(), "{} {:?} -> {} {}", route, body, s, v);
            }
            Ok(())
        })?;
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z_0-9]{0,8}".prop_map(Value::from),
        prop::sample::select(vec!["target", "attempt", "timeout", "http_429", "delay_ms"])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "target".to_owned(),
                    "attempt".to_owned(),
                    "error".to_owned(),
                    "delay_ms".to_owned(),
                    "failure_rate".to_owned(),
                    "status".to_owned(),
                    "schema_version".to_owned(),
                    "outcome".to_owned(),
                ]),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[tokio::test]
async fn decide_answers_admission_for_a_first_attempt() {
    let h = Harness::new(|_| {}).await;
    let ask = |ctx: &str, deadline: Option<u64>| {
        let d = deadline.map_or(String::new(), |ms| format!(r#", "deadline_ms": {ms}"#));
        format!(r#"{{"context": {ctx}{d}}}"#)
    };
    // A healthy target (this harness's model: sigmoid(-4 x the failure rate), 0.5 at 0):
    // send now.
    let (s, v) = h
        .post(
            "/v1/decide",
            &ask(
                r#"{"target": "a", "attempt": 1, "failure_rate": 0.0}"#,
                None,
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("admit")),
        "{v}"
    );
    assert_eq!(v["delay_ms"].as_f64(), Some(0.0));
    assert!((v["p_success"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{v}");
    // Admission weighs no waits: asked for them, it says so with an empty list (it used
    // to leave the field out, as if not asked).
    let (s, v) = h
        .post(
            "/v1/decide",
            r#"{"context": {"target": "a", "attempt": 1}, "alternatives": true}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["alternatives"], json!([]), "{v}");
    // The same call with its deadline already spent: no attempt starts at or after it.
    let late = r#"{"target": "a", "attempt": 1, "failure_rate": 0.0, "elapsed_ms": 5000}"#;
    let (_, v) = h.post("/v1/decide", &ask(late, Some(1_000))).await;
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("deadline")),
        "{v}"
    );
    // Every call failing: p = 0.018, below the attempt cost (0.05), and waiting changes
    // nothing in this model: fail fast.
    let failing = r#"{"target": "a", "attempt": 1, "failure_rate": 1.0}"#;
    let (_, v) = h.post("/v1/decide", &ask(failing, None)).await;
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("low_success_probability")),
        "{v}"
    );
    // A model that expects the target back after about 9 s (the wait's log-odds climb):
    // wait for it when the deadline allows, fail fast when it does not.
    write_model(
        &h.models,
        &weighted(artifact("default", 2, -8.0), "log_delay_ms", 1.0),
    );
    h.service.reload().await.unwrap();
    let predictions = || h.predictions(2);
    let before = predictions().await;
    let (_, v) = h.post("/v1/decide", &ask(failing, Some(30_000))).await;
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("predicted_recovery")),
        "{v}"
    );
    // Counted as made: the fresh call's p, and each wait of the scan for the recovery
    // (16 log-spaced, then the crossing refined).
    let made = predictions().await - before;
    assert!(made > 16, "{made} predictions counted");
    let waited = v["delay_ms"].as_f64().unwrap();
    assert!((8_600.0..12_000.0).contains(&waited), "{v}");
    assert!(v["p_success"].as_f64().unwrap() >= 0.05, "{v}");
    let (_, v) = h.post("/v1/decide", &ask(failing, Some(5_000))).await;
    assert_eq!(v["reason"].as_str(), Some("low_success_probability"), "{v}");
    // The fleet's shared circuit opens for the target (every reported call failed): a
    // caller with time waits it out, one without fails fast, whatever the model says.
    let (open_for, t) = open_circuit(&h, "b").await;
    let fresh = r#"{"target": "b", "attempt": 1}"#;
    let (_, v) = h.post("/v1/decide", &ask(fresh, None)).await;
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("circuit_open_wait")),
        "{v}"
    );
    let wait = v["delay_ms"].as_f64().unwrap();
    assert!(wait > 0.0 && wait <= 1.5 * open_for, "{v} vs {t}");
    // Callers asking at once are spread over the open time and half as long again, not
    // sent back together at its end.
    let mut waits = Vec::new();
    for _ in 0..20 {
        let (_, v) = h.post("/v1/decide", &ask(fresh, None)).await;
        waits.push(v["delay_ms"].as_f64().unwrap());
    }
    let (lo, hi) = waits
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), w| (lo.min(*w), hi.max(*w)));
    assert!(hi - lo > 0.1 * open_for, "{waits:?}");
    assert!(hi <= 1.5 * open_for, "{waits:?}");
    let (_, v) = h.post("/v1/decide", &ask(fresh, Some(10))).await;
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("circuit_open")),
        "{v}"
    );
    // Counted by reason.
    let (_, m) = h.get("/metrics").await;
    let m = m.as_str().unwrap().to_owned();
    for reason in [
        "admit",
        "predicted_recovery",
        "circuit_open_wait",
        "circuit_open",
    ] {
        assert!(
            m.contains(&format!("reason=\"{reason}\"")),
            "{reason} not counted"
        );
    }
}

/// A retry passes the fleet's shared circuit as a first attempt does (an embedded policy
/// asks its breaker before every attempt): a decider that would retry in a few hundred
/// milliseconds into a circuit open for longer is answered with the circuit's wait, or
/// told to stop when that wait does not fit the deadline. (Retries went straight to the
/// decider, which knows nothing of the circuit.)
#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_the_shared_circuit_as_a_first_attempt_does() {
    let h = Harness::new(|_| {}).await;
    // p = 0.95 at once, falling with the wait (0.86 after 10 ms, 0.67 after 100 ms): the
    // decider retries within milliseconds.
    write_model(
        &h.models,
        &weighted(artifact("default", 2, 3.0), "log_delay_ms", -0.5),
    );
    h.service.reload().await.unwrap();
    let retry = |deadline: f64| {
        format!(
            r#"{{"context": {{"target": "b", "attempt": 2, "error": "http_503", "status": 503, "latency_ms": 5, "elapsed_ms": 5, "failure_rate": 0.0}}, "deadline_ms": {deadline}}}"#
        )
    };
    let (_, v) = h.post("/v1/decide", &retry(120_000.0)).await;
    assert_eq!(v["reason"], "retry", "{v}");
    let soon = v["delay_ms"].as_f64().unwrap();
    let (open_for, t) = open_circuit(&h, "b").await;
    assert!(soon < open_for, "{soon} vs {open_for}");
    let (_, v) = h.post("/v1/decide", &retry(120_000.0)).await;
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("circuit_open_wait")),
        "{v}"
    );
    let wait = v["delay_ms"].as_f64().unwrap();
    assert!(wait >= open_for && wait <= 1.5 * open_for, "{v} vs {t}");
    assert!(v["p_success"].as_f64().is_some_and(|p| p > 0.0), "{v}");
    let (_, v) = h.post("/v1/decide", &retry(open_for / 2.0)).await;
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("circuit_open")),
        "{v}"
    );
}

/// A retry the decider would send after the circuit's open time is not simply let through
/// (it would reach a HALF_OPEN circuit uncounted, beside its rationed probes): it is told
/// to wait its own wait and ask again. Asked again with the wait it waited (`waited_ms`),
/// once the circuit probes, a retry goes at once as one of its probes while they last, and
/// then waits for their verdict like a fresh call.
#[tokio::test(start_paused = true)]
async fn a_retry_after_the_open_time_asks_again_and_probes_are_rationed_for_retries_too() {
    use retrywise_server::fleet::FLEET_PROBES;
    let h = Harness::new(|_| {}).await;
    // The longer the wait the likelier success (0.55 after 0.5 s, 0.96 after 10 s): the
    // decider waits seconds, longer than the circuit's open time.
    write_model(
        &h.models,
        &weighted(artifact("default", 2, -6.0), "log_delay_ms", 1.0),
    );
    h.service.reload().await.unwrap();
    let retry = r#"{"context": {"target": "b", "attempt": 2, "error": "http_503", "status": 503, "latency_ms": 5, "elapsed_ms": 5, "failure_rate": 0.0}, "deadline_ms": 120000}"#;
    let (open_for, t) = open_circuit(&h, "b").await;
    let (_, v) = h.post("/v1/decide", retry).await;
    assert_eq!(
        (v["retry"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("circuit_open_wait")),
        "{v}"
    );
    let told = v["delay_ms"].as_f64().unwrap();
    assert!(told >= open_for, "{v} vs {t}");
    // The open time over: the circuit probes, and a retry asked again after its wait goes
    // now as a probe, while probes last (fresh calls and retries draw on the same few),
    // unless it is weighed worth more a while later: then it waits that long, taking no
    // probe's place.
    tokio::time::advance(Duration::from_secs_f64(told / 1e3 + 0.001)).await;
    let again = format!(
        r#"{{"context": {{"target": "b", "attempt": 2, "error": "http_503", "status": 503, "latency_ms": 5, "elapsed_ms": {}, "failure_rate": 0.0}}, "deadline_ms": 120000, "waited_ms": {told}}}"#,
        5.0 + told
    );
    let mut reasons = Vec::new();
    for _ in 0..6 * FLEET_PROBES {
        let (_, v) = h.post("/v1/decide", &again).await;
        reasons.push((
            v["reason"].as_str().unwrap().to_owned(),
            v["delay_ms"].as_f64().unwrap(),
        ));
    }
    // (Each weighed as at its failure, among the waits not yet over.)
    assert!(
        reasons.iter().all(
            |(r, d)| (r == "probe" && *d == 0.0) || (r == "circuit_half_open_wait" && *d > 0.0)
        ),
        "{reasons:?}"
    );
    let probes = reasons.iter().filter(|(r, _)| r == "probe").count();
    assert_eq!(probes, FLEET_PROBES as usize, "{reasons:?} after {told}");
    let last = reasons.last().unwrap();
    assert_eq!(last.0, "circuit_half_open_wait", "{reasons:?}");
}

/// A retry asked about for the first time while the circuit probes is told to wait the
/// decider's own wait, never less than the Retry-After the target gave (a probe is no
/// licence to ignore the target's word), and takes no probe's place meanwhile: places are
/// rationed per lease as probes are sent. Asked again with the time it waited, what is
/// left of the wait is answered, and once it is over it goes as a probe; a negative
/// `waited_ms` is refused, naming the field.
#[tokio::test(start_paused = true)]
async fn a_retry_probes_a_half_open_circuit_after_its_own_wait_and_retry_after() {
    use retrywise_server::fleet::FLEET_PROBES;
    let h = Harness::new(|_| {}).await;
    // p = 0.95 whatever the wait (at no failure rate): each millisecond only costs.
    write_model(&h.models, &artifact("default", 2, 3.0));
    h.service.reload().await.unwrap();
    let (open_for, _) = open_circuit(&h, "b").await;
    tokio::time::advance(Duration::from_secs_f64(open_for / 1e3 + 0.001)).await;
    let (_, t) = h.get("/v1/targets/b").await;
    assert_eq!(t["breaker_state"].as_str(), Some("HALF_OPEN"), "{t}");
    let ask = |elapsed: f64, waited: Option<f64>| {
        let w = waited.map_or(String::new(), |ms| format!(r#", "waited_ms": {ms}"#));
        format!(
            r#"{{"context": {{"target": "b", "attempt": 2, "error": "http_429", "status": 429, "retry_after_ms": 4000, "latency_ms": 5, "elapsed_ms": {elapsed}, "failure_rate": 0.0}}, "deadline_ms": 60000{w}}}"#
        )
    };
    let mut first = 0.0;
    for _ in 0..2 * FLEET_PROBES {
        let (status, v) = h.post("/v1/decide", &ask(5.0, None)).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["reason"].as_str(), Some("circuit_half_open_wait"), "{v}");
        assert_eq!(v["retry"].as_bool(), Some(true), "{v}");
        first = v["delay_ms"].as_f64().unwrap();
        assert!(first >= 4000.0, "a retry sent before its Retry-After: {v}");
    }
    // None of them took a probe's place: a fresh call still goes as one.
    let (_, v) = h
        .post(
            "/v1/decide",
            r#"{"context": {"target": "b", "attempt": 1}}"#,
        )
        .await;
    assert_eq!(v["reason"].as_str(), Some("probe"), "{v}");
    // Asked again 3 s into that wait: only the rest of it (the same decision, as at the
    // failure).
    let (_, v) = h.post("/v1/decide", &ask(3005.0, Some(3000.0))).await;
    assert_eq!(v["reason"].as_str(), Some("circuit_half_open_wait"), "{v}");
    // (Not drawn again: the shortest of the near-optimal waits, the Retry-After's 4 s.)
    let rest = v["delay_ms"].as_f64().unwrap();
    assert!((rest - 1000.0).abs() < 1.0, "{v} after {first}");
    // Waited past it (and past every wait the grid holds): a probe, now.
    let (_, v) = h.post("/v1/decide", &ask(59_005.0, Some(59_000.0))).await;
    assert_eq!(v["reason"].as_str(), Some("probe"), "{v}");
    assert_eq!(v["delay_ms"].as_f64(), Some(0.0), "{v}");
    // No number is no wait.
    let bad = ask(5.0, None).replace(r#""deadline_ms""#, r#""waited_ms": -1, "deadline_ms""#);
    let (status, v) = h.post("/v1/decide", &bad).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("waited_ms"), "{v}");
    // More waited than the time spent says: the failure read as at the call's start, the
    // 10 ms waited counted off the Retry-After's 4 s.
    let (status, v) = h.post("/v1/decide", &ask(5.0, Some(10.0))).await;
    assert_eq!(status, 200, "{v}");
    let rest = v["delay_ms"].as_f64().unwrap();
    assert!((rest - 3990.0).abs() < 1.0, "{v}");
}

/// A shared circuit whose open time has passed lets a few fresh calls through as its
/// probes and holds the rest until their verdict, as an embedded breaker's HALF_OPEN does:
/// admitting every caller would send the whole fleet's traffic at a target just
/// recovering.
#[tokio::test(start_paused = true)]
async fn admission_lets_a_half_open_circuit_probe_with_a_few_calls() {
    use retrywise_server::fleet::{FLEET_PROBES, PROBE_LEASE};
    let h = Harness::new(|_| {}).await;
    let ask = |deadline: Option<u64>| {
        let d = deadline.map_or(String::new(), |ms| format!(r#", "deadline_ms": {ms}"#));
        format!(r#"{{"context": {{"target": "b", "attempt": 1}}{d}}}"#)
    };
    let reason = |v: &Value| {
        (
            v["retry"].as_bool(),
            v["reason"].as_str().map(str::to_owned),
        )
    };
    let (open_for, _) = open_circuit(&h, "b").await;
    let open_for = Duration::from_secs_f64(open_for / 1e3);
    tokio::time::advance(open_for + Duration::from_millis(1)).await;
    let (_, t) = h.get("/v1/targets/b").await;
    assert_eq!(t["breaker_state"].as_str(), Some("HALF_OPEN"), "{t}");
    // The probes: sent now, whatever the model says of a fresh call.
    for _ in 0..FLEET_PROBES {
        let (_, v) = h.post("/v1/decide", &ask(None)).await;
        assert_eq!(reason(&v), (Some(true), Some("probe".to_owned())), "{v}");
        assert_eq!(v["delay_ms"].as_f64(), Some(0.0), "{v}");
    }
    // Everyone after them waits for their verdict, at most the lease and half again...
    let lease = PROBE_LEASE.as_secs_f64() * 1e3;
    let (_, v) = h.post("/v1/decide", &ask(None)).await;
    assert_eq!(
        reason(&v),
        (Some(true), Some("circuit_half_open_wait".to_owned())),
        "{v}"
    );
    let wait = v["delay_ms"].as_f64().unwrap();
    assert!(wait > 0.0 && wait <= 1.5 * lease, "{v}");
    // ... or, without the time, fails fast.
    let (_, v) = h.post("/v1/decide", &ask(Some(10))).await;
    assert_eq!(
        reason(&v),
        (Some(false), Some("circuit_half_open".to_owned())),
        "{v}"
    );
    // No verdict within the lease (a probe's report lost): as many probes again.
    tokio::time::advance(PROBE_LEASE).await;
    let (_, v) = h.post("/v1/decide", &ask(None)).await;
    assert_eq!(reason(&v), (Some(true), Some("probe".to_owned())), "{v}");
    // The probes succeed: the circuit closes and admission is the model's again.
    let ok: Vec<AttemptRecord> = (300..300 + u64::from(FLEET_PROBES))
        .map(|i| record("b", true, i))
        .collect();
    h.post("/v1/attempts", &serde_json::to_string(&ok).unwrap())
        .await;
    let (_, t) = h.get("/v1/targets/b").await;
    assert_eq!(t["breaker_state"].as_str(), Some("CLOSED"), "{t}");
    let (_, v) = h.post("/v1/decide", &ask(None)).await;
    assert_ne!(reason(&v).1.as_deref(), Some("probe"), "{v}");
    assert_ne!(
        reason(&v).1.as_deref(),
        Some("circuit_half_open_wait"),
        "{v}"
    );
    // A second opening probes afresh, with a lease of its own.
    let bad: Vec<AttemptRecord> = (400..600).map(|i| record("b", false, i)).collect();
    h.post("/v1/attempts", &serde_json::to_string(&bad).unwrap())
        .await;
    let (_, t) = h.get("/v1/targets/b").await;
    assert_eq!(t["breaker_state"].as_str(), Some("OPEN"), "{t}");
    let open_for = Duration::from_secs_f64(t["open_for_ms"].as_f64().unwrap() / 1e3);
    tokio::time::advance(open_for + Duration::from_millis(1)).await;
    let (_, v) = h.post("/v1/decide", &ask(None)).await;
    assert_eq!(reason(&v), (Some(true), Some("probe".to_owned())), "{v}");
    let (_, m) = h.get("/metrics").await;
    let m = m.as_str().unwrap().to_owned();
    for r in ["probe", "circuit_half_open_wait", "circuit_half_open"] {
        assert!(m.contains(&format!("reason=\"{r}\"")), "{r} not counted");
    }
}

#[tokio::test]
async fn the_fleet_predicts_with_the_model_serving_now() {
    let h = Harness::new(|_| {}).await;
    let ok: Vec<AttemptRecord> = (0..15).map(|i| record("inventory", true, i)).collect();
    h.post("/v1/attempts", &serde_json::to_string(&ok).unwrap())
        .await;
    let (_, v) = h.get("/v1/targets/inventory").await;
    assert!((v["p_success"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{v}");
    // A new version that expects every fresh call to fail: the shared breaker and the
    // view follow it without a restart.
    write_model(&h.models, &artifact("default", 2, -10.0));
    h.service.reload().await.unwrap();
    let (_, v) = h.get("/v1/targets/inventory").await;
    assert!(v["p_success"].as_f64().unwrap() < 1e-3, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("below 0.05"), "{v}");
    assert_eq!(v["breaker_state"].as_str(), Some("CLOSED"), "{v}");
    // Five failures in twenty calls: a quarter, half the rate threshold; the prediction
    // opens the shared circuit once the window holds its minimum of 20 calls, and keeps
    // it open for as long as the model predicts a probe would fail (its maximum here).
    let bad: Vec<AttemptRecord> = (15..20).map(|i| record("inventory", false, i)).collect();
    h.post("/v1/attempts", &serde_json::to_string(&bad).unwrap())
        .await;
    let (_, v) = h.get("/v1/targets/inventory").await;
    assert_eq!(
        (v["breaker_state"].as_str(), v["allow"].as_bool()),
        (Some("OPEN"), Some(false)),
        "{v}"
    );
    assert!(v["open_for_ms"].as_f64().unwrap() > 59_000.0, "{v}");
}

/// With `model_per_target`, a request that names no model is answered by the model named
/// after its target when one is serving - predictions, decisions and the fleet's view -
/// and by the default model for every other target; a model named in the request wins.
/// Without it, the default model answers everything.
#[tokio::test]
async fn each_target_is_answered_by_its_own_model_when_asked_to() {
    for per_target in [true, false] {
        let h = Harness::new(|c| c.model_per_target = per_target).await;
        // `payments` has a model of its own, which expects every call to it to fail.
        write_model(&h.models, &artifact("payments", 1, -10.0));
        h.service.reload().await.unwrap();
        let own = if per_target { "payments" } else { "default" };
        let ctx = |target: &str| json!({"target": target, "attempt": 2, "error": "http_503"});
        for (target, model) in [("payments", own), ("search", "default")] {
            let (s, v) = h
                .post(
                    "/v1/predict",
                    &json!({ "context": ctx(target) }).to_string(),
                )
                .await;
            assert_eq!(
                (s, v["model"].as_str()),
                (StatusCode::OK, Some(model)),
                "{v}"
            );
            let batch = json!({ "contexts": [ctx(target), ctx(target)] });
            let (_, v) = h.post("/v1/predict", &batch.to_string()).await;
            assert_eq!(v["model"].as_str(), Some(model), "{v}");
            let (_, v) = h
                .post("/v1/decide", &json!({ "context": ctx(target) }).to_string())
                .await;
            assert_eq!(v["model"].as_str(), Some(model), "{v}");
        }
        // A batch over several targets, and a request that names its model: as named, or
        // the default.
        let mixed = json!({ "contexts": [ctx("payments"), ctx("search")] });
        let (_, v) = h.post("/v1/predict", &mixed.to_string()).await;
        assert_eq!(v["model"].as_str(), Some("default"), "{v}");
        let named = json!({ "model": "default", "context": ctx("payments") });
        let (_, v) = h.post("/v1/predict", &named.to_string()).await;
        assert_eq!(v["model"].as_str(), Some("default"), "{v}");
        // The fleet's view of a fresh call asks the target's model too.
        let ok: Vec<AttemptRecord> = (0..15).map(|i| record("payments", true, i)).collect();
        h.post("/v1/attempts", &serde_json::to_string(&ok).unwrap())
            .await;
        let (_, v) = h.get("/v1/targets/payments").await;
        let p = v["p_success"].as_f64().unwrap();
        if per_target {
            assert!(p < 1e-3, "{v}");
        } else {
            assert!((p - 0.5).abs() < 1e-9, "{v}");
        }
    }
}

#[tokio::test]
async fn the_fleet_opens_a_shared_circuit_when_a_target_keeps_failing() {
    let h = Harness::new(|_| {}).await;
    let ok: Vec<AttemptRecord> = (0..10).map(|i| record("inventory", true, i)).collect();
    h.post("/v1/attempts", &serde_json::to_string(&ok).unwrap())
        .await;
    let (_, v) = h.get("/v1/targets/inventory").await;
    assert_eq!(
        (v["breaker_state"].as_str(), v["allow"].as_bool()),
        (Some("CLOSED"), Some(true)),
        "{v}"
    );
    // The serving model's p of a fresh call (this harness's model: sigmoid(-4 x the
    // failure rate), 0.5 for a healthy target), and why calls are allowed.
    let healthy = v["p_success"].as_f64().expect("the serving model answers");
    assert!((healthy - 0.5).abs() < 1e-9, "{v}");
    assert!(v["open_for_ms"].is_null(), "{v}");
    assert!(v["reason"].as_str().unwrap().contains("closed"), "{v}");
    // The breaker's default window is 100 calls with a 50 % threshold.
    let bad: Vec<AttemptRecord> = (10..200).map(|i| record("inventory", false, i)).collect();
    h.post("/v1/attempts", &serde_json::to_string(&bad).unwrap())
        .await;
    let (_, v) = h.get("/v1/targets/inventory").await;
    assert_eq!(
        (v["breaker_state"].as_str(), v["allow"].as_bool()),
        (Some("OPEN"), Some(false)),
        "{v}"
    );
    assert!(v["failure_rate"].as_f64().unwrap() > 0.9, "{v}");
    // A fresh call now looks worse, and the answer says for how long the circuit is open
    // (as long as the model predicts a probe would fail: within the prediction's bounds).
    assert!(v["p_success"].as_f64().unwrap() < healthy, "{v}");
    let open_for = v["open_for_ms"].as_f64().unwrap();
    assert!((0.0..=60_000.0).contains(&open_for), "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("open for another"),
        "{v}"
    );
    // Attempts posted while the circuit is open are observations of calls already made,
    // not calls the shared breaker refused; and durations are milliseconds.
    assert_eq!(v["breaker"]["not_permitted_calls"], 0, "{v}");
    assert_eq!(v["breaker"]["total_calls"], 200, "{v}");
    assert_eq!(v["breaker"]["avg_response_time_ms"], 20.0, "{v}");
    assert!(v["breaker"].get("avg_response_time").is_none(), "{v}");
    assert_eq!(v["health_window_ms"], 10_000.0, "{v}");
}

#[tokio::test(start_paused = true)]
async fn a_request_slower_than_the_timeout_gets_503() {
    let h = Harness::new(|c| c.request_timeout = Duration::from_millis(100)).await;
    // A body that never arrives.
    let (_tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let (s, _, v) = h
        .call(
            Request::post("/v1/predict")
                .body(Body::from_stream(tokio_stream_from(rx)))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("request timeout"),
        "{v}"
    );
    // Counted apart from the requests shed.
    let (_, m) = h.get("/metrics").await;
    let text = m.as_str().unwrap();
    assert!(
        text.contains("retrywise_request_timeouts_total 1"),
        "{text}"
    );
    assert!(text.contains("retrywise_shed_requests_total 0"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn at_its_cap_the_fleet_forgets_idle_targets() {
    let h = Harness::new(|c| {
        c.max_targets = 2;
        c.max_target_labels = 2;
        c.health_window = Duration::from_secs(10);
    })
    .await;
    h.post("/v1/attempts", &successes(&["a", "b"])).await;
    // Full, and nobody idle: "c" is not tracked, and the answer says why it may not be.
    h.post("/v1/attempts", &successes(&["c"])).await;
    let (s, v) = h.get("/v1/targets/c").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("not tracked") && error.contains("at its cap of 2 targets"),
        "{error}"
    );
    // A name no target could have is refused without being quoted back.
    let long = "x".repeat(1_000);
    let (s, v) = h.get(&format!("/v1/targets/{long}")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().len() < 100, "{v}");
    // Two metric labels for two tracked targets; "c", past the cap, is `other`.
    let scrape = || async {
        let (_, m) = h.get("/metrics").await;
        m.as_str().unwrap().to_owned()
    };
    let series = |m: &str, target: &str| {
        m.lines()
            .filter(|l| l.contains(&format!("target=\"{target}\"")))
            .count()
    };
    let shows = |m: &str, lines: &[&str]| {
        for line in lines {
            assert!(m.contains(line), "{line} not in {m}");
        }
    };
    let m = scrape().await;
    shows(
        &m,
        &[
            r#"retrywise_ingested_attempts_total{target="a"} 1"#,
            r#"retrywise_ingested_attempts_total{target="other"} 1"#,
            // Said why it is not in the fleet view (it was counted nowhere).
            r#"retrywise_untracked_attempts_total{reason="fleet_full"} 1"#,
        ],
    );
    assert_eq!(series(&m, "c"), 0, "{m}");
    // "a" and "b" fall idle; "c" takes a place.
    tokio::time::advance(Duration::from_secs(11)).await;
    h.post("/v1/attempts", &successes(&["c"])).await;
    assert_eq!(h.get("/v1/targets/c").await.0, StatusCode::OK);
    // The forgotten targets' labels are given back, with their series (a gauge nobody
    // updates would show its last value for ever), and "c" takes one at once: every slot
    // was taken, by targets idle or gone.
    let m = scrape().await;
    assert_eq!((series(&m, "a"), series(&m, "b")), (0, 0), "{m}");
    h.post("/v1/attempts", &successes(&["c"])).await;
    let m = scrape().await;
    shows(
        &m,
        &[
            r#"retrywise_ingested_attempts_total{target="c"} 2"#,
            r#"retrywise_fleet_concurrency_limit{target="c"}"#,
        ],
    );
}

#[tokio::test]
async fn a_batch_that_meets_the_collector_closed_is_told_to_come_again() {
    // As a connection still uploading when a shutdown closed the collector.
    let h = Harness::new(|_| {}).await;
    h.service.state().recorder.close().unwrap();
    let (s, v) = h.post("/v1/attempts", &successes(&["a"])).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("the collector is closed (the service is shutting down): nothing written"),
        "{v}"
    );
}

/// Below the fleet's cap, the label slots follow activity: targets idle in the fleet view
/// give theirs back, while every slot is taken, to a busy target that has none (the first
/// `max_target_labels` targets ever seen kept every slot, and a busy target's series and
/// circuit gauges never showed).
#[tokio::test(start_paused = true)]
async fn busy_targets_take_the_label_slots_of_idle_ones() {
    let h = Harness::new(|c| {
        c.max_target_labels = 2;
        c.health_window = Duration::from_secs(10);
    })
    .await;
    h.post("/v1/attempts", &successes(&["a", "b"])).await;
    // While "a" and "b" are busy, "c" is `other`.
    h.post("/v1/attempts", &successes(&["c"])).await;
    let (_, m) = h.get("/metrics").await;
    let m = m.as_str().unwrap().to_owned();
    assert!(!m.contains(r#"target="c""#), "{m}");
    // Idle, with nobody waiting for a slot: a scrape leaves their series as they are.
    tokio::time::advance(Duration::from_secs(11)).await;
    let (_, m) = h.get("/metrics").await;
    let m = m.as_str().unwrap().to_owned();
    for line in [
        r#"retrywise_ingested_attempts_total{target="a"} 1"#,
        r#"retrywise_ingested_attempts_total{target="b"} 1"#,
        r#"retrywise_ingested_attempts_total{target="other"} 1"#,
    ] {
        assert!(m.contains(line), "{line} not in {m}");
    }
    // A busy target without one: "c" takes a slot at once, with its gauges; what the idle
    // targets counted moves to `other` (the sum never goes down).
    h.post("/v1/attempts", &successes(&["c", "a"])).await;
    let (_, m) = h.get("/metrics").await;
    let m = m.as_str().unwrap().to_owned();
    for line in [
        r#"retrywise_ingested_attempts_total{target="c"} 1"#,
        r#"retrywise_fleet_circuit_open{target="c"} 0"#,
        r#"retrywise_ingested_attempts_total{target="a"} 1"#,
        r#"retrywise_ingested_attempts_total{target="other"} 3"#,
    ] {
        assert!(m.contains(line), "{line} not in {m}");
    }
    assert!(!m.contains(r#"target="b""#), "{m}");
}

#[tokio::test]
async fn a_target_view_suggests_a_concurrency_limit_and_a_hedge_delay() {
    let h = Harness::new(|_| {}).await;
    // 2,000 answers at 20 ms with 30 in flight, every 100th a straggler at 2 s.
    let recs: Vec<AttemptRecord> = (0..2000)
        .map(|i| {
            let mut ctx = AttemptContext::first("search");
            ctx.in_flight = Some(30);
            let took = if i % 100 == 0 { 2000 } else { 20 + i % 7 };
            AttemptRecord::new(
                i,
                0,
                now_ms(),
                ctx,
                &Verdict::Success,
                Duration::from_millis(took),
            )
        })
        .collect();
    for chunk in recs.chunks(500) {
        let (s, _) = h
            .post("/v1/attempts", &serde_json::to_string(chunk).unwrap())
            .await;
        assert!(s.is_success());
    }
    let (_, v) = h.get("/v1/targets/search").await;
    // Gradient2 from its initial 20: steady latency with more than half of it in use, so
    // the limit probes upwards - to where 30 in flight are no longer half of it.
    let limit = v["concurrency_limit"].as_u64().unwrap();
    assert!((50..=80).contains(&limit), "{v}");
    // The hedge: past the body (20-26 ms), long before the stragglers' 2 s.
    let delay = v["hedge_delay_ms"]
        .as_f64()
        .expect("stragglers are worth hedging");
    assert!(delay > 20.0 && delay < 100.0, "{v}");

    // A target without stragglers: no hedge is worth it for slowness.
    let even: Vec<AttemptRecord> = (0..500)
        .map(|i| {
            let ctx = AttemptContext::first("ledger");
            AttemptRecord::new(
                i,
                0,
                now_ms(),
                ctx,
                &Verdict::Success,
                Duration::from_millis(20 + i % 3),
            )
        })
        .collect();
    h.post("/v1/attempts", &serde_json::to_string(&even).unwrap())
        .await;
    let (_, v) = h.get("/v1/targets/ledger").await;
    assert!(v["hedge_delay_ms"].is_null(), "{v}");
    // The same on /metrics, per target.
    let (_, _, m) = h
        .call(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    let m = m.as_str().unwrap();
    assert!(
        m.contains(&format!(
            "retrywise_fleet_concurrency_limit{{target=\"search\"}} {limit}"
        )),
        "{m}"
    );
    assert!(
        m.contains("retrywise_fleet_hedge_delay_ms{target=\"ledger\"} -1"),
        "{m}"
    );
    assert!(
        m.contains("retrywise_fleet_circuit_open{target=\"search\"} 0"),
        "{m}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_circuit_whose_open_time_is_up_reads_half_open_in_the_view_and_the_metrics() {
    let h = Harness::new(|_| {}).await;
    let bad: Vec<AttemptRecord> = (0..200).map(|i| record("down", false, i)).collect();
    h.post("/v1/attempts", &serde_json::to_string(&bad).unwrap())
        .await;
    let (_, v) = h.get("/v1/targets/down").await;
    assert_eq!(v["breaker_state"].as_str(), Some("OPEN"), "{v}");
    let open_for = v["open_for_ms"].as_f64().unwrap();
    let gauge = |m: &Value, open: u8| {
        m.as_str().unwrap().contains(&format!(
            "retrywise_fleet_circuit_open{{target=\"down\"}} {open}"
        ))
    };
    assert!(gauge(&h.get("/metrics").await.1, 1));
    // Callers obey it: nothing more is reported. Once its time is up the next call is a
    // probe, in the view and on /metrics alike.
    tokio::time::advance(Duration::from_secs_f64(open_for / 1e3) + Duration::from_millis(1)).await;
    let (_, v) = h.get("/v1/targets/down").await;
    assert_eq!(
        (v["breaker_state"].as_str(), v["allow"].as_bool()),
        (Some("HALF_OPEN"), Some(true)),
        "{v}"
    );
    let (_, m) = h.get("/metrics").await;
    assert!(gauge(&m, 0), "{m}");
}

#[tokio::test]
async fn a_version_holding_another_models_name_is_refused() {
    let h = Harness::new(|_| {}).await;
    let v2 = h.models.join("default/2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(
        v2.join("model.json"),
        artifact("payments", 2, 1.0).to_json(),
    )
    .unwrap();
    let (_, v) = h.post("/admin/reload", "").await;
    let failed = v["failed"][0].as_str().unwrap();
    assert!(
        failed.starts_with("default/2: ")
            && failed.contains("holds model `payments`, but sits in the folder of model `default`"),
        "{v}"
    );
    assert_eq!(v["serving"], json!(["default/1"]));
}

/// README's reference tables cannot drift from the service: every route of the OpenAPI
/// document (as `METHOD path`), every metric `/metrics` exposes, and every setting with its
/// variable is named there.
#[tokio::test]
async fn the_readme_names_every_route_metric_and_setting() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let h = Harness::new(|_| {}).await;
    let (_, doc) = h.get("/openapi.json").await;
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 16, "{}", paths.len());
    for (path, methods) in paths {
        for method in methods.as_object().expect("methods").keys() {
            let route = format!("`{} {path}`", method.to_uppercase());
            assert!(readme.contains(&route), "README does not name {route}");
        }
    }
    // A family shows on /metrics once it has a value: a prediction, decisions (one by the
    // rules' fallback) and an ingested record give most of them one.
    let ctx = json!({"target": "t", "attempt": 2, "error": "http_503"});
    h.post("/v1/predict", &json!({ "context": ctx }).to_string())
        .await;
    h.post("/v1/decide", &json!({ "context": ctx }).to_string())
        .await;
    let body = serde_json::to_string(&[record("t", true, 1)]).unwrap();
    assert_eq!(h.post("/v1/attempts", &body).await.0, StatusCode::ACCEPTED);
    let (_, m) = h.get("/metrics").await;
    let names: Vec<&str> = m
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.len() >= 20, "{names:?}");
    for name in names {
        assert!(
            readme.contains(&format!("`{name}")),
            "README does not name {name}"
        );
    }
    // Requests are counted by route template, never by the raw path (a label per target
    // or model name would grow without bound): three targets none has reported on, 404.
    for target in ["a", "b", "c"] {
        h.get(&format!("/v1/targets/{target}")).await;
    }
    let (_, m) = h.get("/metrics").await;
    let text = m.as_str().unwrap();
    assert!(
        text.contains(
            "retrywise_http_requests_total{route=\"/v1/targets/{target}\",status=\"404\"} 3"
        ),
        "{text}"
    );
    assert!(!text.contains("route=\"/v1/targets/a\""), "{text}");
    for (var, key) in retrywise_server::config::ENV {
        assert!(
            readme.contains(&format!("| `{key}` | `{var}` |")),
            "README's settings table does not give {key} ({var})"
        );
    }
}

/// Bodies the service cannot read as sent are refused at once and by what is wrong: a
/// duplicated key in a record of a JSON array (as in an NDJSON line), a compressed body
/// (415), a Content-Length over the limit (413 before any of the body is read), and a
/// huge model name is quoted only in part.
#[tokio::test]
async fn bodies_it_cannot_read_as_sent_are_refused_by_what_is_wrong() {
    let h = Harness::new(|c| c.body_limit = 4096).await;
    let good = serde_json::to_string(&record("t", true, 1)).unwrap();
    let dup = good.replacen(
        "\"outcome\":\"success\"",
        "\"outcome\":\"success\",\"outcome\":\"permanent\"",
        1,
    );
    assert_ne!(dup, good);
    let (s, v) = h.post("/v1/attempts", &format!("[{dup}]")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("duplicate field `outcome`"),
        "{v}"
    );
    let (s, _) = h.post("/v1/attempts", &format!("[{good}]")).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // Compressed, or claiming to be.
    for (path, body) in [
        (
            "/v1/predict",
            r#"{"context": {"target": "t", "attempt": 1}}"#.to_owned(),
        ),
        ("/v1/attempts", format!("[{good}]")),
    ] {
        for enc in ["gzip", "br"] {
            let (s, _, v) = h
                .call(
                    Request::post(path)
                        .header(header::CONTENT_TYPE, "application/json")
                        .header(header::CONTENT_ENCODING, enc)
                        .body(Body::from(body.clone()))
                        .unwrap(),
                )
                .await;
            assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path} {enc}: {v}");
            assert!(
                v["error"].as_str().unwrap().contains("Content-Encoding"),
                "{v}"
            );
        }
    }
    // A Content-Length past the limit is answered before a body that never comes.
    let (s, _, v) = h
        .call(
            Request::post("/v1/attempts")
                .header(header::CONTENT_TYPE, "application/x-ndjson")
                .header(header::CONTENT_LENGTH, "5000000")
                .body(Body::from_stream(futures_never()))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    // An unknown model's name is quoted in part.
    let name = "m".repeat(3_000);
    let (s, v) = h
        .post(
            "/v1/predict",
            &json!({"model": name, "context": {"target": "t", "attempt": 1}}).to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        v["error"].as_str().unwrap().len() < 1_000,
        "{}",
        v["error"].as_str().unwrap().len()
    );
}

/// A body that never sends a byte: answered or dropped before it is read.
fn futures_never() -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::pending()
}

/// A `model.json` that is a pipe (a read would block the reload until something writes
/// to it) is refused as not a regular file, and the version serving keeps serving.
#[tokio::test]
async fn a_model_file_that_is_not_a_regular_file_is_refused_without_reading_it() {
    let h = Harness::new(|_| {}).await;
    let v2 = h.models.join("default/2");
    std::fs::create_dir_all(&v2).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(v2.join("model.json"))
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let report = tokio::time::timeout(Duration::from_secs(10), h.service.reload())
        .await
        .expect("the reload does not wait on the pipe")
        .unwrap();
    assert!(report.loaded.is_empty(), "{report:?}");
    assert!(
        report
            .failed
            .iter()
            .any(|(n, v, why)| n == "default" && *v == 2 && why.contains("not a regular file")),
        "{report:?}"
    );
    let (_, v) = h.get("/v1/models/default").await;
    assert_eq!(v["version"], 1, "{v}");
}
