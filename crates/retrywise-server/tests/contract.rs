//! The service answers as the `retrywise` crate does: the same decisions as the crate's
//! decider, the same health features as an embedded policy, errors that leak nothing, and
//! a 202 only for records that are written.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use retrywise::attempt::{AttemptContext, AttemptRecord, ErrorKind, Failure, Verdict};
use retrywise::model::{LogisticModel, SuccessModel};
use retrywise::policy::Policy;
use retrywise::recorder::MemoryRecorder;
use retrywise::retry::{Decision, ModelDecider, RetryDecider, StopReason};
use retrywise_collect::{FileSystem, SegmentRecorder, Storage, WriterConfig};
use retrywise_server::{Config, Service};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The shipped model: real weights, so decisions vary.
fn shipped_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

fn shipped_model() -> LogisticModel {
    let text = std::fs::read_to_string(shipped_models().join("default/1/model.json")).unwrap();
    LogisticModel::from_json(&text).unwrap()
}

async fn service(edit: impl FnOnce(&mut Config)) -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        models: shipped_models(),
        attempts: dir.path().join("attempts"),
        ..Config::default()
    };
    edit(&mut config);
    let s = Service::new(config).unwrap();
    s.reload().await.unwrap();
    (dir, s)
}

async fn call(s: &Service, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = s.router().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, v)
}

async fn post(s: &Service, uri: &str, body: String) -> (StatusCode, Value) {
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    let (st, _, v) = call(s, req).await;
    (st, v)
}

/// A small deterministic generator (SplitMix64).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A context after a failure, with every field the decider and the model read varied.
fn context(g: &mut Gen) -> AttemptContext {
    let mut c = AttemptContext::first(format!("t{}", g.below(3)));
    c.attempt = 2 + g.below(6) as u32;
    let kind = ErrorKind::ALL[g.below(ErrorKind::ALL.len() as u64) as usize];
    c.error = Some(kind);
    c.status = match kind {
        ErrorKind::Http429 => Some(429),
        ErrorKind::Http503 => Some(503),
        ErrorKind::Http5xx => Some(500 + g.below(5) as u16),
        ErrorKind::Http4xx => Some(425),
        _ => None,
    };
    c.latency = Some(Duration::from_micros(g.below(3_000_000)));
    c.elapsed = Duration::from_micros(g.below(20_000_000));
    c.delay = Duration::from_micros(g.below(2_000_000));
    if g.below(3) == 0 {
        // Sometimes beyond the decider's 30 s cap.
        c.retry_after = Some(Duration::from_millis(g.below(60_000)));
    }
    // The health is given (so the fleet view, empty here, changes nothing) — or not.
    if g.below(4) != 0 {
        c.failure_rate = Some(g.unit());
        c.latency_p95 = Some(Duration::from_millis(g.below(5_000)));
        c.in_flight = Some(g.below(100) as u32);
    }
    c
}

#[tokio::test]
async fn decide_answers_exactly_what_the_crates_decider_answers() {
    let (_dir, s) = service(|_| {}).await;
    let model: Arc<dyn SuccessModel> = Arc::new(shipped_model());
    let min_p = s.state().config.min_p_success;
    let mut g = Gen(42);
    let mut reasons = std::collections::BTreeMap::new();
    for i in 0..300 {
        let mut ctx = context(&mut g);
        // A target of its own per context: the service's retry calendar then holds only
        // this failure, like the fresh decider's (a test below shows it spreading a crowd).
        ctx.target = format!("t{i}").into();
        let deadline = (g.below(2) == 0).then(|| Duration::from_millis(1_000 + g.below(30_000)));
        let mut body = json!({ "context": ctx, "alternatives": true });
        let mut decider = ModelDecider::builder()
            .model(Arc::clone(&model))
            .attempt_cost(min_p);
        if let Some(d) = deadline {
            body["deadline_ms"] = json!(d.as_secs_f64() * 1e3);
            decider = decider.deadline(d);
        }
        let decider = decider.build().unwrap();
        let (status, v) = post(&s, "/v1/decide", body.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        // The same weighing: every wait, its p(success) and value.
        let want = decider.weigh(&ctx);
        let weighed: Vec<(f64, f64, f64)> = want
            .alternatives
            .iter()
            .map(|a| (a.wait.as_secs_f64() * 1e3, a.p_success, a.value))
            .collect();
        let served: Vec<(f64, f64, f64)> = v["alternatives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["delay_ms"].as_f64().unwrap(),
                    a["p_success"].as_f64().unwrap(),
                    a["value"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(served, weighed, "context {i}: {body}");
        // The same decision: the reason, and (the wait being drawn among the near-optimal
        // ones, by the service as by every embedded caller) a wait the crate's decider
        // could have drawn, with its p(success).
        let reason = match want.explained.decision {
            Decision::Retry(_) => "retry",
            Decision::Stop(r) => r.as_str(),
        };
        assert_eq!(
            v["fell_back"].as_bool(),
            Some(want.fell_back()),
            "context {i}"
        );
        if want.fell_back() {
            // A context in a region the model was trained on too few rows of (a retryable
            // 4xx, say, or a failure in a quiet target where the sample only failed under
            // load): full-jitter backoff decides, its wait drawn at random below its 10 s cap
            assert!(served.is_empty() && ctx.error.is_some() && model.trained_on(&ctx) < Some(100));
            // (or at least the Retry-After, up to the 30 s cap).
            let delay = v["delay_ms"].as_f64().unwrap();
            match ctx.retry_after.filter(|_| v["retry"] == true) {
                Some(ra) => assert!(
                    delay >= ra.as_secs_f64() * 1e3 - 1e-6 && delay <= 30_000.0,
                    "context {i}: {v}"
                ),
                None => assert!(delay <= 10_000.0, "context {i}: {v}"),
            }
            *reasons.entry("fell_back").or_insert(0) += 1;
            continue;
        }
        assert_eq!(v["reason"].as_str(), Some(reason), "context {i}: {body}");
        if reason == "retry" {
            let delay = v["delay_ms"].as_f64().unwrap();
            let best = weighed
                .iter()
                .map(|w| w.2)
                .fold(f64::NEG_INFINITY, f64::max);
            let chosen = weighed
                .iter()
                .find(|w| w.0 == delay)
                .unwrap_or_else(|| panic!("context {i}: {delay} ms was not weighed"));
            assert!(
                chosen.2 >= best - 0.01 - 1e-9,
                "context {i}: {chosen:?} vs {best}"
            );
            assert_eq!(v["p_success"].as_f64(), Some(chosen.1), "context {i}");
        } else {
            assert_eq!(v["delay_ms"].as_f64(), Some(0.0));
            assert_eq!(v["p_success"].as_f64(), want.explained.p_success);
        }
        *reasons.entry(reason).or_insert(0) += 1;
    }
    // The contexts exercised every kind of answer.
    for r in [
        "retry",
        "low_success_probability",
        "max_attempts",
        "deadline",
        "retry_after_too_long",
        "fell_back",
    ] {
        assert!(reasons.contains_key(r), "{r} never came up: {reasons:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn decide_spreads_a_crowd_that_saw_the_same_failure() {
    // 200 callers told of the same rate limit at the same moment (the clock is paused):
    // alone, each would draw its wait among the same few near-optimal ones; the service
    // books each answer in its retry calendar, so later callers see the load the earlier
    // ones will land in, and are told other waits.
    let (_dir, s) = service(|_| {}).await;
    let body = json!({
        "context": {"target": "payments", "attempt": 2, "error": "http_429", "status": 429,
            "latency_ms": 2, "elapsed_ms": 2, "retry_after_ms": 1000, "failure_rate": 0.6},
        "deadline_ms": 10000, "alternatives": true
    })
    .to_string();
    let (_, first) = post(&s, "/v1/decide", body.clone()).await;
    assert_eq!(first["retry"], true, "{first}");
    let values = |v: &Value| -> Vec<(f64, f64, f64)> {
        v["alternatives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["delay_ms"].as_f64().unwrap(),
                    a["value"].as_f64().unwrap(),
                    a["load"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let alone = values(&first);
    assert!(alone.iter().all(|a| a.2 == 0.0), "{first}");
    let best = alone.iter().map(|a| a.1).fold(f64::NEG_INFINITY, f64::max);
    let near_alone = alone.iter().filter(|a| a.1 >= best - 0.01).count();
    let mut told = std::collections::BTreeSet::new();
    let mut last = first;
    for _ in 0..199 {
        let (status, v) = post(&s, "/v1/decide", body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        if v["retry"] == true {
            told.insert(v["delay_ms"].as_f64().unwrap().to_bits());
        }
        last = v;
    }
    // The crowd was told more waits than a lone caller could have drawn, and the last
    // caller saw the load booked where the earlier ones will land.
    assert!(
        told.len() > near_alone,
        "{} waits vs {near_alone}",
        told.len()
    );
    assert!(values(&last).iter().any(|a| a.2 > 0.0), "{last}");
}

/// A decider that records the context of every decision and stops.
struct Capture(Arc<Mutex<Vec<AttemptContext>>>);

impl RetryDecider for Capture {
    fn decide(&self, ctx: &AttemptContext) -> Decision {
        self.0.lock().unwrap().push(ctx.clone());
        Decision::Stop(StopReason::MaxAttempts)
    }
}

#[tokio::test(start_paused = true)]
async fn the_same_attempts_give_the_same_health_embedded_and_served() {
    let (_dir, s) = service(|c| c.health_window = Duration::from_secs(10)).await;
    let recorder = Arc::new(MemoryRecorder::new(10_000));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let policy = Policy::builder("payments")
        .decider(Arc::new(Capture(Arc::clone(&seen))))
        .recorder(recorder.clone())
        .track_health(Duration::from_secs(10))
        .build()
        .unwrap();
    // One stream of attempts: 200 calls over about two seconds, a third failing, latencies
    // from 1 to 400 ms.
    let mut g = Gen(7);
    let calls = (0..200).map(|i| {
        let latency = Duration::from_millis(1 + g.below(400));
        let fail = g.below(3) == 0;
        let start = Duration::from_millis(i * 10);
        let policy = policy.clone();
        async move {
            tokio::time::sleep(start).await;
            let _ = policy
                .call(|_| async move {
                    tokio::time::sleep(latency).await;
                    if fail {
                        Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
                    } else {
                        Ok(())
                    }
                })
                .await;
        }
    });
    futures_util::future::join_all(calls).await;
    // In a new health bucket, one more failed call: the policy decides with the health its
    // tracker has seen.
    tokio::time::advance(Duration::from_millis(1_500)).await;
    let _ = policy
        .call(|_| async { Err::<(), _>(io::Error::new(io::ErrorKind::ConnectionReset, "reset")) })
        .await;
    let embedded = seen.lock().unwrap().last().cloned().unwrap();
    // The same attempts, posted to the service.
    let records = recorder.take();
    assert_eq!(records.len(), 201);
    let (status, v) = post(&s, "/v1/attempts", serde_json::to_string(&records).unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let (_, _, view) = call(
        &s,
        Request::get("/v1/targets/payments")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        view["failure_rate"].as_f64(),
        embedded.failure_rate,
        "{view}"
    );
    assert_eq!(
        view["latency_p95_ms"].as_f64(),
        embedded.latency_p95.map(|d| d.as_secs_f64() * 1e3),
        "{view}"
    );
    assert_eq!(
        view["in_flight"].as_u64(),
        embedded.in_flight.map(u64::from),
        "{view}"
    );
    assert_eq!(view["health_window_ms"].as_f64(), Some(10_000.0));
    assert_eq!(embedded.health_window, Some(Duration::from_secs(10)));
    assert!(embedded.in_flight.unwrap() > 0, "{embedded:?}");
    // A prediction that leaves the health to the service sees the same features, so the
    // same probability as the embedded context.
    let mut asked = embedded.clone();
    asked.failure_rate = None;
    asked.latency_p95 = None;
    asked.in_flight = None;
    asked.health_window = None;
    let (_, v) = post(&s, "/v1/predict", json!({ "context": asked }).to_string()).await;
    let model = shipped_model();
    assert_eq!(
        v["p_success"].as_f64(),
        Some(model.p_success(&embedded)),
        "{v}"
    );
    assert_eq!(
        retrywise::features::encode(&embedded),
        retrywise::features::encode(&{
            let mut c = asked;
            s.state().fleet.fill(&mut c, tokio::time::Instant::now());
            c
        })
    );
}

/// Captures log lines.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn internal_errors_are_logged_once_and_answered_without_internals() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    // The models folder is a file: reading it fails inside the service.
    let models = dir.path().join("not-a-folder");
    std::fs::write(&models, "x").unwrap();
    let s = Service::new(Config {
        models: models.clone(),
        attempts: dir.path().join("attempts"),
        ..Config::default()
    })
    .unwrap();
    let req = Request::post("/admin/reload")
        .header("x-request-id", "req-123")
        .body(Body::empty())
        .unwrap();
    let (status, headers, v) = call(&s, req).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["x-request-id"], "req-123");
    assert_eq!(v["request_id"], "req-123");
    let body = v.to_string();
    assert!(
        !body.contains("not-a-folder"),
        "internal text leaked: {body}"
    );
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("req-123")).collect();
    assert_eq!(lines.len(), 1, "logged once: {text}");
    assert!(
        lines[0].contains("not-a-folder"),
        "with its chain: {}",
        lines[0]
    );
    // Client errors name the field, and every answer carries an id.
    let (status, headers, v) = call(
        &s,
        Request::post("/v1/predict")
            .body(Body::from(r#"{"context": {"target": "t", "attempt": 0}}"#))
            .unwrap(),
    )
    .await;
    // (A request that can never succeed is refused as such even while no model serves.)
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().starts_with("context.attempt"),
        "{v}"
    );
    assert!(headers.contains_key("x-request-id"));
}

/// The real file system behind a gate: while it is closed, writes wait — a disk that has
/// stopped keeping up.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    fn set_open(&self, open: bool) {
        *self.0.0.lock().unwrap() = open;
        self.0.1.notify_all();
    }

    fn wait_open(&self) {
        let mut open = self.0.0.lock().unwrap();
        while !*open {
            open = self.0.1.wait(open).unwrap();
        }
    }
}

/// The real file system, whose writes wait while the gate is shut (a stalled disk) and
/// fail while `failing` is set (a disk gone read-only).
struct Gated {
    gate: Gate,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Gated {
    fn new(gate: Gate) -> Self {
        Self {
            gate,
            failing: Arc::default(),
        }
    }
}

struct GatedFile {
    file: std::fs::File,
    gate: Gate,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl io::Write for GatedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.gate.wait_open();
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::other("read-only file system"));
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Storage for Gated {
    type File = GatedFile;

    fn create_new(&mut self, path: &Path) -> io::Result<GatedFile> {
        Ok(GatedFile {
            file: FileSystem.create_new(path)?,
            gate: self.gate.clone(),
            failing: Arc::clone(&self.failing),
        })
    }

    fn sync(&mut self, file: &mut GatedFile) -> io::Result<()> {
        FileSystem.sync(&mut file.file)
    }

    fn truncate(&mut self, file: &mut GatedFile, len: u64) -> io::Result<()> {
        FileSystem.truncate(&mut file.file, len)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        FileSystem.rename(from, to)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        FileSystem.sync_dir(dir)
    }
}

/// The service with the shipped models, ingesting into `attempts` through `recorder`.
fn serving(attempts: &Path, recorder: SegmentRecorder) -> Service {
    Service::with_recorder(
        Config {
            models: shipped_models(),
            attempts: attempts.to_path_buf(),
            ..Config::default()
        },
        recorder,
    )
    .unwrap()
}

fn batch(first_id: u64, n: u64) -> Vec<AttemptRecord> {
    (first_id..first_id + n)
        .map(|id| {
            AttemptRecord::new(
                id,
                0,
                1_764_000_000_000 + id,
                AttemptContext::first("payments"),
                &Verdict::Retryable(Failure::new(ErrorKind::Http503)),
                Duration::from_millis(20),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_means_written_even_when_storage_stops_keeping_up() {
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("attempts");
    let gate = Gate::default();
    let recorder = SegmentRecorder::with_storage(
        &attempts,
        WriterConfig {
            queue_capacity: 2_000,
            ..WriterConfig::default()
        },
        Gated::new(gate.clone()),
    )
    .unwrap();
    let s = serving(&attempts, recorder);
    // The disk stalls; eight clients post a batch of 1,000 records each, at once.
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for c in 0..8u64 {
        let (s, tx) = (s.clone(), tx.clone());
        tokio::spawn(async move {
            let recs = batch(c * 1_000, 1_000);
            let req = Request::post("/v1/attempts")
                .body(Body::from(serde_json::to_string(&recs).unwrap()))
                .unwrap();
            let resp = s.router().oneshot(req).await.unwrap();
            let retry_after = resp.headers().contains_key(header::RETRY_AFTER);
            let _ = tx.send((resp.status(), retry_after, recs));
        });
    }
    // The collector takes what its queue holds (two batches) and waits with them; the
    // other six are refused at once with 503 and Retry-After: nothing acknowledged yet.
    let mut acknowledged = Vec::new();
    // Each answer within a minute: a writer that never lets go fails the test, not hangs it.
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(60), answers.recv())
            .await
            .expect("an answer within a minute")
            .expect("a client's answer")
    };
    for _ in 0..6 {
        let (status, retry_after, _) = next().await;
        assert_eq!(
            (status, retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, true)
        );
    }
    assert_eq!(s.state().recorder.pending(), 2_000);
    // The disk catches up: the two batches taken are written, then acknowledged.
    gate.set_open(true);
    for _ in 0..2 {
        let (status, _, recs) = next().await;
        assert_eq!(status, StatusCode::ACCEPTED);
        acknowledged.extend(recs.iter().map(|r| r.call_id));
    }
    // The refused clients send again (as the shipper does on 503): taken now.
    for c in 8..14u64 {
        let recs = batch(c * 1_000, 1_000);
        let (status, v) = post(&s, "/v1/attempts", serde_json::to_string(&recs).unwrap()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        acknowledged.extend(recs.iter().map(|r| r.call_id));
    }
    // A graceful stop, then every acknowledged record is in the segments, once, and
    // nothing else is.
    s.flush().unwrap();
    s.state().recorder.close().unwrap();
    let mut reader = retrywise_collect::SegmentReader::open(&attempts).unwrap();
    let mut written: Vec<u64> = reader.by_ref().map(|r| r.unwrap().call_id).collect();
    written.sort_unstable();
    acknowledged.sort_unstable();
    assert_eq!(written.len(), 8_000);
    assert_eq!(written, acknowledged);
    let stats = s.state().recorder.stats();
    assert_eq!((stats.dropped_queue_full, stats.dropped_io), (0, 0));
    let (_, _, metrics) = call(&s, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("retrywise_busy_attempt_batches_total 6"),
        "{metrics}"
    );
}

/// Ingestion waits on storage within its own share of the room (a quarter of
/// `max_in_flight`): with the disk stalled, the batch being written holds ingestion's one
/// place, the next batch is shed at once with 503 and Retry-After (its client sends it
/// again), and predictions are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_waiting_on_storage_leaves_room_for_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("attempts");
    let gate = Gate::default();
    let recorder =
        SegmentRecorder::with_storage(&attempts, WriterConfig::default(), Gated::new(gate.clone()))
            .unwrap();
    let s = Service::with_recorder(
        Config {
            models: shipped_models(),
            attempts: attempts.clone(),
            max_in_flight: 4,
            ..Config::default()
        },
        recorder,
    )
    .unwrap();
    s.reload().await.unwrap();
    // However the test ends, the disk comes back (a writer stuck on it would hold the
    // runtime's shutdown, and the failure, forever).
    struct Reopen(Gate);
    impl Drop for Reopen {
        fn drop(&mut self) {
            self.0.set_open(true);
        }
    }
    let _reopen = Reopen(gate.clone());
    let first = {
        let s = s.clone();
        tokio::spawn(async move {
            post(
                &s,
                "/v1/attempts",
                serde_json::to_string(&batch(0, 10)).unwrap(),
            )
            .await
        })
    };
    // The first batch is with the writer, which waits for the disk.
    tokio::time::timeout(Duration::from_secs(60), async {
        while s.state().recorder.pending() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first batch reaches the writer");
    let shed_at_once = || async {
        let req = Request::post("/v1/attempts")
            .body(Body::from(serde_json::to_string(&batch(100, 10)).unwrap()))
            .unwrap();
        let (status, headers, v) = tokio::time::timeout(Duration::from_secs(20), call(&s, req))
            .await
            .expect("shed at once, not queued behind the disk");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(headers.contains_key(header::RETRY_AFTER));
    };
    shed_at_once().await;
    for _ in 0..3 {
        let (status, v) = tokio::time::timeout(
            Duration::from_secs(60),
            post(
                &s,
                "/v1/predict",
                r#"{"context": {"target": "t", "attempt": 1}}"#.into(),
            ),
        )
        .await
        .expect("answered while ingestion waits");
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    // The first batch's caller gives up (a request timeout, a client gone): its write
    // still waits on the disk, on a thread of the blocking pool, and keeps its place -
    // the next batch is shed as before rather than parking another thread (a stalled disk
    // took the whole pool that way, 512 threads, and the model reloads with it).
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    shed_at_once().await;
    assert_eq!(s.state().recorder.pending(), 10);
    gate.set_open(true);
    // Written all the same once the disk is back (its client, which saw no answer, sends
    // it again: at least once).
    tokio::time::timeout(Duration::from_secs(60), async {
        while s.state().recorder.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first batch is written");
    s.state().recorder.flush_async().await.unwrap();
    let written = retrywise_collect::SegmentReader::open(&attempts)
        .unwrap()
        .map(|r| r.unwrap().call_id)
        .collect::<Vec<_>>();
    assert_eq!(written.len(), 10, "{written:?}");
    // And the place is free again.
    let (status, v) = post(
        &s,
        "/v1/attempts",
        serde_json::to_string(&batch(200, 10)).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
}

/// By default a 202 means durable: the batch is fsynced (with the batches arriving
/// meanwhile) before it is acknowledged, so a shipper that forgets it on the 202 cannot
/// lose it to a power cut.
#[tokio::test]
async fn a_202_means_durable_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let s = Service::new(Config {
        models: shipped_models(),
        attempts: dir.path().join("attempts"),
        ..Config::default()
    })
    .unwrap();
    for first in [0, 10] {
        let body = serde_json::to_string(&batch(first, 10)).unwrap();
        let (status, v) = post(&s, "/v1/attempts", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        let stats = s.state().recorder.stats();
        assert_eq!(stats.synced, first + 10, "{stats:?}");
    }
}

/// Storage failing under a batch: 503 with Retry-After, nothing of it in the segments,
/// and the metrics say a batch was refused for storage - not that records were dropped
/// (they were counted as dropped, though the client keeps and resends them).
#[tokio::test]
async fn a_batch_storage_fails_under_is_refused_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("attempts");
    let gate = Gate::default();
    gate.set_open(true);
    let storage = Gated::new(gate);
    let failing = Arc::clone(&storage.failing);
    let recorder =
        SegmentRecorder::with_storage(&attempts, WriterConfig::default(), storage).unwrap();
    let s = serving(&attempts, recorder);
    let (status, v) = post(
        &s,
        "/v1/attempts",
        serde_json::to_string(&batch(0, 10)).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let req = Request::post("/v1/attempts")
        .body(Body::from(serde_json::to_string(&batch(10, 10)).unwrap()))
        .unwrap();
    let (status, headers, v) = call(&s, req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(headers.contains_key(header::RETRY_AFTER));
    s.state().recorder.close().unwrap();
    let mut reader = retrywise_collect::SegmentReader::open(&attempts).unwrap();
    let written: Vec<u64> = reader.by_ref().map(|r| r.unwrap().call_id).collect();
    assert_eq!(written, (0..10).collect::<Vec<_>>());
    let (_, _, metrics) = call(&s, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let text = metrics.as_str().unwrap();
    for line in [
        "retrywise_storage_failed_attempt_batches_total 1",
        "retrywise_dropped_attempts_total 0",
        "retrywise_collector_io_errors_total 1",
        "retrywise_collector_written_records_total 10",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}: {text}");
    }
}

#[tokio::test]
async fn it_will_not_listen_beyond_loopback_without_a_token_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        // Never bound: refused before.
        addr: "0.0.0.0:0".parse().unwrap(),
        models: shipped_models(),
        attempts: dir.path().join("attempts"),
        ..Config::default()
    };
    // Were the refusal gone, the service would stop at once instead of listening on
    // every interface until the test ends.
    let e = retrywise_server::serve(config, async {}, |_| panic!("must not listen"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, retrywise_server::ServerError::Unauthenticated { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("--allow-unauthenticated"), "{e}");
    // On loopback no token is needed: the service starts (and stops at once here).
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        models: shipped_models(),
        attempts: dir.path().join("attempts"),
        ..Config::default()
    };
    // A models folder that is not one is refused by name before anything listens: missing,
    // a model's own folder, a version folder.
    for (models, want) in [
        (dir.path().join("nowhere"), "cannot be read"),
        (shipped_models().join("default"), "is a model's folder"),
        (shipped_models().join("default/1"), "is a version folder"),
    ] {
        let config = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            models,
            attempts: dir.path().join("attempts"),
            ..Config::default()
        };
        let e = retrywise_server::serve(config, async {}, |_| panic!("must not listen"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, retrywise_server::ServerError::ModelsLayout { .. }),
            "{e}"
        );
        assert!(e.to_string().contains(want), "{e}");
    }
    retrywise_server::serve(config, async {}, |addr| assert!(addr.ip().is_loopback()))
        .await
        .unwrap();
}

/// The service serving `config` on its loopback address (port 0: a free one) until the
/// sender returned is used: its address, the stop, and the task (its result once stopped,
/// after the graceful flush).
async fn serving_on_loopback(
    config: Config,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), retrywise_server::ServerError>>,
) {
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(retrywise_server::serve(
        config,
        async {
            let _ = stop_rx.await;
        },
        move |addr| {
            let _ = bound_tx.send(addr);
        },
    ));
    let addr = bound_rx.await.expect("the service binds");
    (addr, stop_tx, server)
}

/// Over a real socket on loopback, on the paused clock (it moves on whenever every task
/// waits): a client that never finishes its headers is disconnected once the header
/// timeout has passed (75 s: it is also how long an idle keep-alive connection stays open,
/// longer than a load balancer's usual 60 s), while a connection that sends a request, idles
/// for a minute and sends another is served both times.
#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        models: shipped_models(),
        attempts: dir.path().join("attempts"),
        request_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let (addr, stop_tx, server) = serving_on_loopback(config).await;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 256];
    // Closed without an answer (a read of 0 bytes), or reset.
    let read = tokio::time::timeout(Duration::from_secs(120), slow.read(&mut buf))
        .await
        .expect("still connected two minutes later");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(75) && waited < Duration::from_secs(76),
        "{waited:?}"
    );
    let mut pooled = tokio::net::TcpStream::connect(addr).await.unwrap();
    for connection in ["keep-alive", "close"] {
        let request =
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n");
        pooled.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n = pooled.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{connection}: {answer}");
        // Idle for a minute, longer than the request timeout, as a pooled connection is.
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// One request over `stream`, kept open (keep-alive): the status line of its answer, or
/// `None` when the service closed the connection (or reset it) instead of answering.
async fn get_over(stream: &mut tokio::net::TcpStream, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    // Read until the headers and the body their Content-Length announces are in (one
    // read may return a part of them).
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer or a close within 10 s")
            .ok()?;
        if n == 0 {
            return None;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return Some(text);
            }
        }
    }
}

/// With `max_connections` open (here idle keep-alive connections, as a client that pools
/// them or a slow attacker holds), one more is closed as soon as it is accepted, not
/// served and not left waiting; it is counted on /metrics (read over one of the open
/// ones), and once one of the open connections closes, a new one is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_at_once_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        models: shipped_models(),
        attempts: dir.path().join("attempts"),
        max_connections: 2,
        ..Config::default()
    };
    let (addr, stop_tx, server) = serving_on_loopback(config).await;
    let connect = || tokio::net::TcpStream::connect(addr);
    let mut first = connect().await.unwrap();
    let mut second = connect().await.unwrap();
    for held in [&mut first, &mut second] {
        let answer = get_over(held, "/healthz").await.expect("served");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let mut third = connect().await.unwrap();
    assert_eq!(get_over(&mut third, "/healthz").await, None);
    let metrics = get_over(&mut first, "/metrics").await.expect("served");
    assert!(
        metrics.contains("retrywise_connections_open 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("retrywise_connections_refused_total 1"),
        "{metrics}"
    );
    drop(second);
    // The service sees the close a moment later: the next connections may still be
    // refused until it has (each try is a round trip over loopback, no sleep).
    let mut served = false;
    for _ in 0..500 {
        let mut next = connect().await.unwrap();
        if let Some(answer) = get_over(&mut next, "/healthz").await {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            served = true;
            break;
        }
    }
    assert!(served, "a connection closed, and none was served after it");
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A graceful stop waits for the requests in flight, but not longer than the shutdown
/// timeout: a client that sends its body a trickle at a time (here: never the rest)
/// does not hold it (it held it for the request timeout, up to an hour), and the
/// collector is closed all the same.
#[tokio::test(start_paused = true)]
async fn a_stop_waits_for_a_trickling_client_no_longer_than_the_shutdown_timeout() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        models: shipped_models(),
        attempts: dir.path().join("attempts"),
        request_timeout: Duration::from_secs(3_600),
        shutdown_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let (addr, stop_tx, server) = serving_on_loopback(config).await;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /v1/attempts HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: 100\r\n\r\n{\"sch",
    )
    .await
    .unwrap();
    // The request is in flight (its body half read) when the stop begins.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopping = tokio::time::Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("stopped within a minute")
        .unwrap()
        .unwrap();
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "{took:?}"
    );
    // ... and its connection is closed with the stop, not left running on (it went on
    // waiting for the rest of the body after the server had returned).
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(60), slow.read(&mut buf))
        .await
        .expect("the server closed the connection");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}

/// The collector's shipper against the real service over loopback, both with their
/// defaults but for the service's body limit: a batch too large for the limit (413) is sent
/// in halves until the pieces fit, and a record the service would refuse (an empty target)
/// is not sent at all (the shipper checks each record as the service does), so it takes no
/// batch with it. After a graceful stop the service's segments hold every other record,
/// once each, in the order recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipper_delivers_through_the_services_limits_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("attempts");
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        models: shipped_models(),
        attempts: attempts.clone(),
        // A few hundred records' worth: the shipper's batch of 1,000 does not fit.
        body_limit: 64 << 10,
        ..Config::default()
    };
    let (addr, stop_tx, server) =
        tokio::time::timeout(Duration::from_secs(60), serving_on_loopback(config))
            .await
            .expect("bound within a minute");
    let shipper = retrywise_collect::ShippingRecorder::spawn(retrywise_collect::ShipperConfig {
        batch_size: 1_000,
        backoff: (Duration::from_millis(1), Duration::from_millis(10)),
        ..retrywise_collect::ShipperConfig::new(format!("http://{addr}/v1/attempts"))
    })
    .unwrap();
    let bad = 617;
    let mut records = batch(0, 1_000);
    records[bad].context.target = "".into();
    let one_size = serde_json::to_string(&records[0]).unwrap().len() + 1;
    assert!(one_size * 1_000 > 64 << 10 && one_size * 100 < 64 << 10);
    for r in &records {
        retrywise::recorder::Recorder::record(&shipper, r.clone());
    }
    // The flush says that one record was given up.
    let e = tokio::time::timeout(Duration::from_secs(60), shipper.flush())
        .await
        .expect("shipped within a minute")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("1 records broke the schema's rules and were not shipped"),
        "{e}"
    );
    let s = shipper.stats();
    // The shipper checks each record as the service does: the bad one is set aside (and
    // counted) before it is sent, and takes no batch with it.
    assert_eq!(
        (s.recorded, s.shipped, s.dropped_invalid, s.failed),
        (1_000, 999, 1, 0)
    );
    assert!(s.batches > 1, "sent in pieces: {s:?}");
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    let written: Vec<u64> = retrywise_collect::SegmentReader::open(&attempts)
        .unwrap()
        .map(|r| r.unwrap().call_id)
        .collect();
    let want: Vec<u64> = (0..1_000).filter(|&i| i != bad as u64).collect();
    assert_eq!(written, want);
}
