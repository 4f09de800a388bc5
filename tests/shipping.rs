//! The shipper and the service over real HTTP (127.0.0.1): what one says, the other reads
//! as meant - a batch over the service's body limit is answered 413 (before the body is
//! read) and sent again in halves, not taken for a broken connection and resent whole.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use retrywise::attempt::{AttemptContext, AttemptRecord, Verdict};
use retrywise::recorder::Recorder;
use retrywise_collect::{SegmentReader, ShipperConfig, ShippingRecorder};
use retrywise_server::Config;

fn record(i: u64) -> AttemptRecord {
    AttemptRecord::new(
        i,
        0,
        1_764_000_000_000 + i,
        AttemptContext::first("inventory"),
        &Verdict::Success,
        Duration::from_millis(3),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_body_limit_goes_in_halves_to_the_real_service() {
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("ingested");
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        models,
        attempts: attempts.clone(),
        // A record takes about 200 bytes: 400 of them (one batch) are about 80 KB.
        body_limit: 16 << 10,
        ..Config::default()
    };
    let server = common::Running::start(config).await;
    let shipper = ShippingRecorder::spawn(ShipperConfig {
        batch_size: 400,
        max_batch_delay: Duration::from_millis(50),
        attempt_timeout: Duration::from_secs(5),
        ..ShipperConfig::new(format!("{}/v1/attempts", server.base()))
    })
    .unwrap();
    for i in 0..400 {
        shipper.record(record(i));
    }
    tokio::time::timeout(Duration::from_secs(60), shipper.close())
        .await
        .expect("shipped within a minute")
        .unwrap();
    let s = shipper.stats();
    assert_eq!((s.shipped, s.failed), (400, 0), "{s:?}");
    // Halved until the pieces fit (400 -> 200 -> 100 -> 50), every 413 read as one: no
    // retry of a piece, none spooled.
    assert_eq!((s.batches, s.retries, s.spooled), (8, 0, 0), "{s:?}");
    server.stop().await;
    let mut ids: Vec<u64> = SegmentReader::open(&attempts)
        .unwrap()
        .map(|r| r.unwrap().call_id)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..400).collect::<Vec<_>>(), "each record once");
}
