//! The whole pipeline on one machine: simulate → record → compact → train (a default
//! model, and one of a single target's attempts) → serve → predict and decide over real
//! HTTP (127.0.0.1), that target answered by its own model → a new model version appears while a
//! load runs → no request fails, and the new version answers → the service stops, and what
//! it ingested (one record of a newer minor version among them) compacts without a loss.

#![allow(clippy::unwrap_used, missing_docs)]

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;

use polars::prelude::{LazyFrame, PlRefPath, ScanArgsParquet, col};
use retrywise_collect::compact::{CompactOptions, Disposal, compact};
use retrywise_server::Config;
use retrywise_sim::driver::{RunOptions, run};
use retrywise_sim::policies;
use retrywise_sim::scenario::Scenario;
use retrywise_train::{TrainOptions, train};
use serde_json::{Value, json};

fn simulate_and_record(attempts: &Path) {
    for (scenario, policy, requests) in [
        ("blips", "exp-full-jitter", 4_000),
        ("rate-limited", "exp", 3_000),
        ("outage", "budget", 4_000),
    ] {
        let mut o = RunOptions::new(Arc::new(Scenario::load(scenario).unwrap()));
        o.requests = requests;
        o.record = Some(attempts.join(scenario));
        o.explore = Some((0.25, 4.0, 0.5));
        let r = run(policies::find(policy).unwrap(), &o).unwrap();
        assert_eq!(r.outcomes.len() as u64, requests);
    }
}

/// Compacts the tree of segment directories the runs wrote (one per scenario and policy)
/// in one go, keeping the segments in `archive`.
fn compact_all(attempts: &Path, parquet: &Path, archive: &Path) -> u64 {
    let mut opts = CompactOptions::new(attempts, parquet);
    opts.disposal = Disposal::Archive(archive.to_path_buf());
    let s = compact(&opts, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(s.directories, 3);
    s.rows
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn simulate_record_compact_train_serve_and_swap_a_model_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let (attempts, parquet, models) = (
        dir.path().join("attempts"),
        dir.path().join("parquet"),
        dir.path().join("models"),
    );
    simulate_and_record(&attempts);
    let archive = dir.path().join("archive");
    let rows = compact_all(&attempts, &parquet, &archive);
    assert!(rows > 10_000, "{rows} rows");
    let mut opts = TrainOptions::new(
        vec![parquet.to_string_lossy().into_owned()],
        &models,
        "default",
    );
    opts.fit.alphas = vec![1.0];
    let first = train(&opts, &mut |_| {}).unwrap();
    assert_eq!(first.version, 1);
    // (The three runs follow each other, so the time split validates on the last one: the
    // model's quality is tested elsewhere; here it must simply exist and score.)
    assert!(first.evaluation.model.auc.is_some());
    // A model of one target's attempts alone (`retrywise train --target outage --name
    // outage`), which the service answers that target's requests with.
    let mut outage = TrainOptions::new(
        vec![parquet.to_string_lossy().into_owned()],
        &models,
        "outage",
    );
    outage.fit.alphas = vec![1.0];
    outage.filter.targets = vec!["outage".into()];
    let own = train(&outage, &mut |_| {}).unwrap();
    assert!(
        own.artifact.training["rows"].as_u64().unwrap() < rows,
        "one target's rows"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            models: models.clone(),
            attempts: dir.path().join("ingested"),
            poll_interval: Duration::from_millis(50),
            model_per_target: true,
            ..Config::default()
        };
        let server = common::Running::start(config).await;
        let base = server.base();
        // Straight to loopback (no proxy from the environment), every request bounded.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();

        // Predict and decide over HTTP.
        let ctx = json!({"target": "blips", "attempt": 2, "error": "http_503", "status": 503, "latency_ms": 30, "elapsed_ms": 30, "delay_ms": 200});
        let (s, v) = post(&client, &format!("{base}/v1/predict"), &json!({"context": ctx})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["version"], 1);
        let p = v["p_success"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
        let (s, v) = post(&client, &format!("{base}/v1/decide"), &json!({"context": ctx, "deadline_ms": 10_000})).await;
        assert_eq!(s, 200, "{v}");
        assert!(v["retry"].is_boolean() && v["reason"].is_string(), "{v}");
        assert_eq!(v["model"], "default", "{v}");
        // The target with a model of its own is answered by it (`model_per_target`).
        let refused = json!({"target": "outage", "attempt": 2, "error": "connect", "latency_ms": 0, "elapsed_ms": 1});
        for (route, body) in [("predict", json!({"context": refused})), ("decide", json!({"context": refused, "deadline_ms": 5_000}))] {
            let (s, v) = post(&client, &format!("{base}/v1/{route}"), &body).await;
            assert_eq!((s, v["model"].as_str()), (200, Some("outage")), "{route}: {v}");
        }
        // Ingest what the simulator recorded (the archived segments), as NDJSON batches
        // of 1,000 lines: every record acknowledged.
        let mut acknowledged = 0;
        for seg in std::fs::read_dir(&archive).unwrap() {
            let text = std::fs::read_to_string(seg.unwrap().path()).unwrap();
            let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            for batch in lines.chunks(1_000) {
                let r = client.post(format!("{base}/v1/attempts")).header("content-type", "application/x-ndjson").body(batch.join("\n")).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 202);
                let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                acknowledged += v["accepted"].as_u64().unwrap();
            }
        }
        assert_eq!(acknowledged, rows, "every recorded attempt ingested");
        // One more, of a newer minor version and with a field this build does not know:
        // acknowledged, so it must reach the Parquet with that field (checked below).
        let newer = first_line(&archive)
            .replacen(&format!("\"{}\"", retrywise::attempt::SchemaVersion::CURRENT), "\"1.99\"", 1)
            .replacen('{', r#"{"zone":"eu-1","#, 1);
        let r = client.post(format!("{base}/v1/attempts")).header("content-type", "application/x-ndjson").body(newer).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 202);

        // A load of four clients while version 2 is trained and appears.
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (client, stop, url, ctx) = (client.clone(), Arc::clone(&stop), format!("{base}/v1/predict"), ctx.clone());
            clients.push(tokio::spawn(async move {
                let mut seen: Vec<(u16, Option<u64>)> = Vec::new();
                // Until told to stop and having been answered by version 2 (each client's
                // requests after the swap), bounded in count as well as in time.
                for _ in 0..500_000 {
                    if stop.load(Ordering::Relaxed) && seen.last().is_some_and(|(_, v)| *v == Some(2)) {
                        break;
                    }
                    let (s, v) = post(&client, &url, &json!({"context": ctx})).await;
                    seen.push((s, v["version"].as_u64()));
                }
                seen
            }));
        }
        let mut opts2 = opts.clone();
        opts2.fit.alphas = vec![100.0];
        let second = tokio::task::spawn_blocking(move || train(&opts2, &mut |_| {}).unwrap()).await.unwrap();
        assert_eq!(second.version, 2);
        // The poller picks it up within a few polls.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = post(&client, &format!("{base}/v1/predict"), &json!({"context": ctx})).await;
            if v["version"] == 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "version 2 never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for c in clients {
            let seen = c.await.unwrap();
            total += seen.len();
            assert!(seen.iter().all(|(s, _)| *s == 200), "a request failed during the swap: {:?}", seen.iter().find(|(s, _)| *s != 200));
            // Each client sees version 1, then version 2, never back.
            let versions: Vec<u64> = seen.iter().filter_map(|(_, v)| *v).collect();
            assert!(versions.windows(2).all(|w| w[0] <= w[1]), "versions went back");
            assert_eq!(versions.last(), Some(&2));
        }
        assert!(total > 100, "{total} requests under load");
        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("retrywise_model_serving{model=\"default\",version=\"2\"} 1"), "{metrics}");
        server.stop().await;
    });

    // After the server stopped, what it acknowledged compacts: every record, and the newer
    // one's unknown field in its own column.
    let ingested_parquet = dir.path().join("ingested-parquet");
    let opts = CompactOptions::new(dir.path().join("ingested"), &ingested_parquet);
    let s = compact(&opts, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!((s.rows, s.read.skipped()), (rows + 1, 0), "{s:?}");
    let glob = format!("{}/**/*.parquet", ingested_parquet.display());
    let df = LazyFrame::scan_parquet(PlRefPath::new(&glob), ScanArgsParquet::default())
        .unwrap()
        .filter(col("unknown_fields").is_not_null())
        .collect()
        .unwrap();
    assert_eq!(df.height(), 1);
    let kept = df
        .column("unknown_fields")
        .unwrap()
        .str()
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(kept).unwrap(),
        json!({"zone": "eu-1"})
    );
    assert_eq!(
        df.column("schema_version").unwrap().str().unwrap().get(0),
        Some("1.99")
    );
}

/// The first record of the first segment under `dir`.
fn first_line(dir: &Path) -> String {
    let seg = std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::read_to_string(seg)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned()
}
