//! The shipper against a local stub of the ingestion endpoint (127.0.0.1 only), on
//! tokio's paused clock: its backoff, timeouts, spool retries and the stub's delays are
//! virtual time (the clock moves only while every task waits; loopback I/O is polled
//! before it does).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::record;
use retrywise::attempt::AttemptRecord;
use retrywise::recorder::Recorder;
use retrywise_collect::{CollectError, ShipperConfig, ShippingRecorder};

#[derive(Default)]
struct Stub {
    /// Answer this status to the next `fail` requests.
    fail: AtomicU32,
    fail_with: AtomicU32,
    requests: AtomicU32,
    delay_ms: AtomicU32,
    /// Answer 413 to a body of more records than this (0: any number).
    max_records: AtomicU32,
    /// Answer 400 to a body that holds the record of this call id plus one (0: none).
    bad_call: AtomicU64,
    received: Mutex<Vec<AttemptRecord>>,
    auth: Mutex<Vec<Option<String>>>,
    /// Bodies taken.
    accepted: AtomicU32,
    /// Once this many bodies are taken, fail the next this many requests (with `fail_with`).
    burst: Mutex<Option<(u32, u32)>>,
    /// Sent as `Retry-After` with each failure.
    retry_after: Mutex<Option<String>>,
}

impl Stub {
    /// The call ids of the records received, in order.
    fn call_ids(&self) -> Vec<u64> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.call_id)
            .collect()
    }
}

async fn ingest(
    State(stub): State<Arc<Stub>>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = answer(&stub, &headers, body).await;
    match stub.retry_after.lock().unwrap().clone() {
        Some(after) if !status.is_success() => {
            (status, [(axum::http::header::RETRY_AFTER, after)]).into_response()
        }
        _ => status.into_response(),
    }
}

async fn answer(stub: &Stub, headers: &HeaderMap, body: String) -> StatusCode {
    stub.requests.fetch_add(1, Ordering::SeqCst);
    stub.auth.lock().unwrap().push(
        headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
    );
    let delay = stub.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
    }
    if stub
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::from_u16(stub.fail_with.load(Ordering::SeqCst) as u16).unwrap();
    }
    assert_eq!(headers.get("content-type").unwrap(), "application/x-ndjson");
    let records: Vec<AttemptRecord> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let most = stub.max_records.load(Ordering::SeqCst);
    if most > 0 && records.len() > most as usize {
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    let bad = stub.bad_call.load(Ordering::SeqCst);
    if bad > 0 && records.iter().any(|r| r.call_id + 1 == bad) {
        return StatusCode::BAD_REQUEST;
    }
    stub.received.lock().unwrap().extend(records);
    let taken = stub.accepted.fetch_add(1, Ordering::SeqCst) + 1;
    let mut burst = stub.burst.lock().unwrap();
    if let Some((after, failures)) = *burst
        && taken >= after
    {
        stub.fail.fetch_add(failures, Ordering::SeqCst);
        *burst = None;
    }
    StatusCode::ACCEPTED
}

async fn stub() -> (Arc<Stub>, String) {
    let stub = Arc::new(Stub::default());
    let app = axum::Router::new()
        .route("/v1/attempts", post(ingest))
        .with_state(Arc::clone(&stub));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (stub, format!("http://{addr}/v1/attempts"))
}

/// [`config`] with a spool in `dir`.
fn spooling(endpoint: String, dir: &std::path::Path) -> ShipperConfig {
    ShipperConfig {
        spool: Some(dir.to_path_buf()),
        ..config(endpoint)
    }
}

fn config(endpoint: String) -> ShipperConfig {
    ShipperConfig {
        batch_size: 1000,
        max_attempts: 3,
        attempt_timeout: Duration::from_secs(5),
        backoff: (Duration::from_millis(1), Duration::from_millis(10)),
        ..ShipperConfig::new(endpoint)
    }
}

#[tokio::test(start_paused = true)]
async fn ships_every_record_in_batches() {
    let (stub, url) = stub().await;
    let shipper = ShippingRecorder::spawn(config(url)).unwrap();
    for i in 0..2500 {
        shipper.record(record(i));
    }
    shipper.flush().await.unwrap();
    let s = shipper.stats();
    assert_eq!(
        (s.recorded, s.shipped, s.batches, s.failed),
        (2500, 2500, 3, 0)
    );
    let got = stub.received.lock().unwrap();
    assert_eq!(
        got.iter().map(|r| r.call_id).collect::<Vec<_>>(),
        (0..2500).collect::<Vec<_>>()
    );
    assert_eq!(got[7], record(7), "records arrive intact");
}

#[tokio::test(start_paused = true)]
async fn a_record_the_service_would_refuse_does_not_take_its_batch_with_it() {
    let (stub, url) = stub().await;
    let shipper = ShippingRecorder::spawn(config(url)).unwrap();
    for i in 0..10 {
        let mut r = record(i);
        if i == 3 {
            // An empty target name: ingestion refuses a batch that holds it.
            r.context.target = "".into();
        }
        if i == 6 {
            // A success with a kind of failure.
            r.outcome_error = Some(retrywise::attempt::ErrorKind::Reset);
            r.outcome = retrywise::attempt::Outcome::Success;
        }
        if i == 8 {
            // A field this version does not have (a record read back from a file, say).
            let mut extra = retrywise::attempt::UnknownFields::new();
            extra.insert("retry_after_m".into(), serde_json::json!(1000));
            r.unknown = Some(Box::new(extra));
        }
        shipper.record(r);
    }
    // The flush says that records were given up, and how many.
    let e = shipper.flush().await.unwrap_err().to_string();
    assert!(e.contains("3 records broke the schema's rules"), "{e}");
    let s = shipper.stats();
    assert_eq!(
        (s.recorded, s.shipped, s.dropped_invalid, s.failed),
        (10, 7, 3, 0)
    );
    assert_eq!(stub.call_ids(), [0, 1, 2, 4, 5, 7, 9]);
    // ... once: the next flush, with nothing given up since, passes.
    shipper.record(record(10));
    shipper.flush().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retries_unavailable_answers_then_delivers() {
    let (stub, url) = stub().await;
    stub.fail.store(2, Ordering::SeqCst);
    stub.fail_with.store(503, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(config(url)).unwrap();
    for i in 0..10 {
        shipper.record(record(i));
    }
    shipper.flush().await.unwrap();
    let s = shipper.stats();
    assert_eq!((s.shipped, s.retries, s.failed), (10, 2, 0));
    assert_eq!(stub.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_its_attempts_and_says_so() {
    let (stub, url) = stub().await;
    stub.fail.store(u32::MAX, Ordering::SeqCst);
    stub.fail_with.store(503, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(config(url)).unwrap();
    for i in 0..10 {
        shipper.record(record(i));
    }
    let err = shipper.flush().await.unwrap_err();
    assert!(matches!(err, CollectError::Flush { .. }), "{err}");
    assert_eq!(shipper.stats().failed, 10);
    assert_eq!(stub.requests.load(Ordering::SeqCst), 3);
    // The next flush reports only what failed since: nothing.
    shipper.flush().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn refused_batches_are_not_retried() {
    let (stub, url) = stub().await;
    stub.fail.store(1, Ordering::SeqCst);
    stub.fail_with.store(400, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(config(url)).unwrap();
    shipper.record(record(1));
    assert!(shipper.flush().await.is_err());
    assert_eq!(stub.requests.load(Ordering::SeqCst), 1);
    assert_eq!(shipper.stats().failed, 1);
}

#[tokio::test(start_paused = true)]
async fn sends_the_token() {
    let (stub, url) = stub().await;
    let shipper = ShippingRecorder::spawn(ShipperConfig {
        token: Some("s3cret".into()),
        ..config(url)
    })
    .unwrap();
    shipper.record(record(1));
    shipper.close().await.unwrap();
    assert_eq!(
        stub.auth.lock().unwrap().as_slice(),
        [Some("Bearer s3cret".to_owned())]
    );
    // A token no header can carry (read from a file with its newline) is refused at once,
    // naming it: every request would fail unsent, as an error naming nothing.
    let (stub, url) = self::stub().await;
    let Err(e) = ShippingRecorder::spawn(ShipperConfig {
        token: Some("s3cret\n".into()),
        ..config(url)
    }) else {
        panic!("a token with a newline was taken");
    };
    assert!(
        matches!(e, CollectError::Config { field: "token", .. }),
        "{e}"
    );
    assert_eq!(stub.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_spool_that_can_hold_nothing_is_refused_and_keeps_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("batch-00000000000000000001.ndjson");
    std::fs::write(&kept, b"{}\n").unwrap();
    let Err(e) = ShippingRecorder::spawn(ShipperConfig {
        spool_max_bytes: 0,
        ..spooling("http://127.0.0.1:9/v1/attempts".into(), dir.path())
    }) else {
        panic!("a spool of no bytes was taken");
    };
    assert!(
        matches!(
            e,
            CollectError::Config {
                field: "spool_max_bytes",
                ..
            }
        ),
        "{e}"
    );
    // What a predecessor left is not set aside.
    assert!(kept.exists());
}

#[tokio::test(start_paused = true)]
async fn memory_is_bounded_by_the_queue() {
    let (stub, url) = stub().await;
    stub.delay_ms.store(300, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(ShipperConfig {
        queue_capacity: 50,
        batch_size: 10,
        ..config(url)
    })
    .unwrap();
    for i in 0..1000 {
        shipper.record(record(i));
    }
    let s = shipper.stats();
    assert!(s.dropped_queue_full >= 1000 - 50 - 10, "{s:?}");
    assert_eq!(s.recorded + s.dropped_queue_full, 1000);
    stub.delay_ms.store(0, Ordering::SeqCst);
    // The flush says records were lost, and how many (it used to answer Ok).
    let err = shipper.flush().await.unwrap_err();
    assert!(
        matches!(&err, CollectError::Flush { reason }
            if reason.contains(&format!("{} records were dropped", s.dropped_queue_full))),
        "{err}"
    );
    assert_eq!(shipper.stats().shipped, s.recorded);
    // Each loss is told once: the next flush has nothing to report.
    shipper.flush().await.unwrap();
}

/// Records queued behind a close are neither shipped nor lost without a word: they are
/// counted as dropped for the close (they used to end in no count at all).
#[tokio::test(start_paused = true)]
async fn records_queued_behind_a_close_are_counted_as_dropped() {
    let (stub, url) = stub().await;
    let shipper = ShippingRecorder::spawn(config(url)).unwrap();
    shipper.record(record(0));
    let closing = tokio::spawn({
        let shipper = shipper.clone();
        async move { shipper.close().await }
    });
    // The close is asked for (the task sent it, and waits for its answer) before these.
    tokio::task::yield_now().await;
    for i in 1..4 {
        shipper.record(record(i));
    }
    closing.await.unwrap().unwrap();
    let s = shipper.stats();
    assert_eq!((s.recorded, s.shipped), (4, 1), "{s:?}");
    assert_eq!(s.dropped_closed, 3, "{s:?}");
    shipper.record(record(9));
    assert_eq!(shipper.stats().dropped_closed, 4);
    assert_eq!(stub.call_ids().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn bad_endpoints_are_refused() {
    for bad in ["not a url", "ftp://127.0.0.1/x"] {
        let err = ShippingRecorder::spawn(ShipperConfig::new(bad)).unwrap_err();
        assert!(matches!(err, CollectError::Endpoint { .. }), "{err}");
    }
    let base = || ShipperConfig::new("http://127.0.0.1:1/");
    let bad = [
        (
            ShipperConfig {
                batch_size: 0,
                ..base()
            },
            "batch_size",
        ),
        (
            ShipperConfig {
                batch_size: usize::MAX,
                ..base()
            },
            "batch_size",
        ),
        (
            ShipperConfig {
                queue_capacity: usize::MAX,
                ..base()
            },
            "queue_capacity",
        ),
        (
            ShipperConfig {
                max_batch_delay: Duration::MAX,
                ..base()
            },
            "max_batch_delay",
        ),
        (
            ShipperConfig {
                attempt_timeout: Duration::MAX,
                ..base()
            },
            "attempt_timeout",
        ),
        (
            ShipperConfig {
                backoff: (Duration::from_millis(100), Duration::MAX),
                ..base()
            },
            "backoff",
        ),
    ];
    for (cfg, field) in bad {
        match ShippingRecorder::spawn(cfg) {
            Err(CollectError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {:?}", other.err()),
        }
    }
}

/// The batch files waiting in a spool directory.
fn spooled(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("batch-") && n.ends_with(".ndjson"))
        .collect();
    v.sort();
    v
}

/// Waits (bounded: 1,000 polls, 10 s of the paused clock) until `done` holds.
async fn eventually(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10 s");
}

#[tokio::test(start_paused = true)]
async fn batches_the_service_does_not_take_wait_in_the_spool_and_arrive_in_order() {
    let (stub, url) = stub().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // Down for the first batch's three attempts and two tries of the spool (one attempt each).
    stub.fail.store(5, Ordering::SeqCst);
    stub.fail_with.store(503, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(ShipperConfig {
        spool: Some(spool.clone()),
        ..config(url)
    })
    .unwrap();
    for i in 0..1500 {
        shipper.record(record(i));
    }
    // Delivered or kept: nothing was given up.
    shipper.flush().await.unwrap();
    let s = shipper.stats();
    assert_eq!((s.failed, s.dropped_queue_full), (0, 0), "{s:?}");
    assert!(s.spooled >= 1000, "the first batch at least waits: {s:?}");
    assert!(s.spool_bytes > 0 && s.spool_batches > 0, "{s:?}");
    // The service answers again: everything arrives, once and in order, and the spool
    // empties.
    eventually(|| shipper.stats().shipped == 1500).await;
    // (A batch is counted shipped when the service took it, then its file removed.)
    eventually(|| spooled(&spool).is_empty()).await;
    eventually(|| shipper.stats().spool_bytes == 0).await;
    assert_eq!(shipper.stats().spool_batches, 0);
    let got = stub.call_ids();
    assert_eq!(got, (0..1500).collect::<Vec<_>>());
    assert_eq!(shipper.stats().failed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_shipper_sends_what_its_predecessor_kept() {
    let (stub, url) = stub().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    stub.fail.store(u32::MAX, Ordering::SeqCst);
    stub.fail_with.store(503, Ordering::SeqCst);
    let cfg = ShipperConfig {
        spool: Some(spool.clone()),
        ..config(url)
    };
    let first = ShippingRecorder::spawn(cfg.clone()).unwrap();
    // One shipper per spool.
    let err = ShippingRecorder::spawn(cfg.clone()).unwrap_err();
    assert!(matches!(err, CollectError::DirectoryInUse { .. }), "{err}");
    for i in 0..10 {
        first.record(record(i));
    }
    first.close().await.unwrap();
    assert_eq!(first.stats().spooled, 10);
    assert_eq!(spooled(&spool).len(), 1, "kept on disk");
    drop(first);
    // The next process, with the service back.
    stub.fail.store(0, Ordering::SeqCst);
    let second = ShippingRecorder::spawn(cfg).unwrap();
    eventually(|| second.stats().shipped == 10).await;
    assert!(spooled(&spool).is_empty());
    assert_eq!(stub.received.lock().unwrap().len(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_spooled_batch_the_service_refuses_as_invalid_is_set_aside() {
    let (stub, url) = stub().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // Unavailable, then refusing.
    stub.fail.store(u32::MAX, Ordering::SeqCst);
    stub.fail_with.store(503, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(ShipperConfig {
        spool: Some(spool.clone()),
        ..config(url)
    })
    .unwrap();
    shipper.record(record(1));
    shipper.flush().await.unwrap();
    assert_eq!(shipper.stats().spooled, 1);
    stub.fail_with.store(400, Ordering::SeqCst);
    eventually(|| shipper.stats().failed == 1).await;
    stub.fail.store(0, Ordering::SeqCst);
    let kept: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.ends_with(".refused"))
        .collect();
    assert_eq!(kept.len(), 1, "kept for a person to look at");
    assert!(spooled(&spool).is_empty());
    assert!(
        shipper.flush().await.is_err(),
        "the flush says it was given up"
    );
}

/// A record refused as invalid on its first delivery is not lost either: its batch is
/// sent in halves until it stands alone - every good record beside it is delivered - and
/// with a spool it is set aside there for a person, never sent again.
#[tokio::test(start_paused = true)]
async fn a_record_refused_on_its_first_delivery_is_set_aside_alone() {
    let (stub, url) = stub().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    stub.bad_call.store(7 + 1, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(ShipperConfig {
        spool: Some(spool.clone()),
        ..config(url)
    })
    .unwrap();
    for i in 0..20 {
        shipper.record(record(i));
    }
    assert!(shipper.flush().await.is_err(), "one given up, and said so");
    let s = shipper.stats();
    assert_eq!((s.shipped, s.failed), (19, 1));
    // 20 -> 10 + 10 -> 5 + 5 -> 2 + 3 -> 1 + 2 -> 1 + 1: 9 requests.
    assert_eq!(stub.requests.load(Ordering::SeqCst), 9);
    let mut want: Vec<u64> = (0..20).collect();
    want.retain(|&i| i != 7);
    assert_eq!(stub.call_ids(), want, "in order, all but the bad one");
    let kept: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".refused"))
        .collect();
    assert_eq!(kept.len(), 1, "kept for a person to look at");
    let body = std::fs::read_to_string(kept[0].path()).unwrap();
    let ids: Vec<u64> = body
        .lines()
        .map(|l| serde_json::from_str::<AttemptRecord>(l).unwrap().call_id)
        .collect();
    assert_eq!(ids, [7]);
    // Not waiting: nothing is sent again, and what comes next is delivered.
    assert!(spooled(&spool).is_empty());
    shipper.record(record(99));
    shipper.flush().await.unwrap();
    assert_eq!(stub.call_ids().last(), Some(&99));
}

/// A batch too large for the endpoint (413: its body limit) is sent in halves until the
/// pieces fit: nothing is lost because the endpoint takes less at once than the shipper
/// sends.
#[tokio::test(start_paused = true)]
async fn a_batch_too_large_is_sent_in_pieces_that_fit() {
    let (stub, url) = stub().await;
    stub.max_records.store(300, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(config(url)).unwrap();
    for i in 0..1000 {
        shipper.record(record(i));
    }
    shipper.flush().await.unwrap();
    let s = shipper.stats();
    assert_eq!((s.shipped, s.failed, s.batches), (1000, 0, 4));
    // 1000 -> 500 + 500 -> four of 250.
    assert_eq!(stub.requests.load(Ordering::SeqCst), 7);
    assert_eq!(stub.call_ids(), (0..1000).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_full_spool_gives_up_and_says_so() {
    let (stub, url) = stub().await;
    let dir = tempfile::tempdir().unwrap();
    stub.fail.store(u32::MAX, Ordering::SeqCst);
    stub.fail_with.store(503, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(ShipperConfig {
        spool: Some(dir.path().to_path_buf()),
        spool_max_bytes: 100,
        ..config(url)
    })
    .unwrap();
    shipper.record(record(1));
    let err = shipper.flush().await.unwrap_err();
    assert!(matches!(err, CollectError::Flush { .. }), "{err}");
    let s = shipper.stats();
    assert_eq!((s.spooled, s.failed), (0, 1));
    assert!(spooled(dir.path()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_spooled_batch_that_cannot_be_read_is_set_aside_and_the_rest_goes_on() {
    let (stub, url) = stub().await;
    let dir = tempfile::tempdir().unwrap();
    // A crash left an unreadable "batch" (a directory of its name), and a person a pipe
    // of a batch's name (opening it would wait for a writer, and the shipper with it),
    // before a good one.
    std::fs::create_dir(dir.path().join("batch-00000000000000000001.ndjson")).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(dir.path().join("batch-00000000000000000002.ndjson"))
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(
        dir.path().join("batch-00000000000000000003.ndjson"),
        format!("{}\n", serde_json::to_string(&record(7)).unwrap()),
    )
    .unwrap();
    let shipper = ShippingRecorder::spawn(spooling(url, dir.path())).unwrap();
    eventually(|| shipper.stats().shipped == 1).await;
    assert_eq!(stub.received.lock().unwrap()[0].call_id, 7);
    assert!(spooled(dir.path()).is_empty());
    for n in 1..=2 {
        assert!(
            dir.path()
                .join(format!("batch-0000000000000000000{n}.ndjson.unreadable"))
                .symlink_metadata()
                .is_ok()
        );
    }
    assert_eq!(shipper.stats().spool_unreadable, 2);
    // New records follow (through the spool while it still counts itself waiting). The
    // flush says what was set aside since the last (once).
    shipper.record(record(8));
    let e = shipper.flush().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("2 spooled batches could not be read"),
        "{e}"
    );
    eventually(|| shipper.stats().shipped == 2).await;
    assert_eq!(shipper.stats().failed, 0);
    shipper.flush().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_spooled_batch_removed_by_hand_does_not_hold_up_the_rest() {
    let (stub, url) = stub().await;
    let dir = tempfile::tempdir().unwrap();
    for (seq, id) in [(1, 5), (2, 6)] {
        std::fs::write(
            dir.path().join(format!("batch-{seq:020}.ndjson")),
            format!("{}\n", serde_json::to_string(&record(id)).unwrap()),
        )
        .unwrap();
    }
    // Down while the shipper opens its spool and tries the oldest batch.
    stub.fail.store(u32::MAX, Ordering::SeqCst);
    stub.fail_with.store(503, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(spooling(url, dir.path())).unwrap();
    assert_eq!(shipper.stats().spool_batches, 2, "both found when opened");
    // A person takes the oldest away; then the service answers again.
    std::fs::remove_file(dir.path().join(format!("batch-{:020}.ndjson", 1))).unwrap();
    stub.fail.store(0, Ordering::SeqCst);
    eventually(|| shipper.stats().shipped == 1).await;
    let got = stub.call_ids();
    assert_eq!(got, [6]);
    eventually(|| shipper.stats().spool_batches == 0).await;
    assert!(spooled(dir.path()).is_empty());
}

/// The records of every `.ndjson` batch file (waiting or set aside) in `dir`, in name order.
fn spooled_ids(dir: &std::path::Path) -> Vec<u64> {
    spooled(dir)
        .iter()
        .flat_map(|n| {
            std::fs::read_to_string(dir.join(n))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<AttemptRecord>(l).unwrap().call_id)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A spooling shipper whose first `n` records all went to the spool: the endpoint was
/// down (503) throughout. The endpoint stays down until the test says otherwise.
async fn kept_through_an_outage(n: u64) -> (Arc<Stub>, tempfile::TempDir, ShippingRecorder) {
    let (stub, url) = stub().await;
    let dir = tempfile::tempdir().unwrap();
    stub.fail.store(u32::MAX, Ordering::SeqCst);
    stub.fail_with.store(503, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(spooling(url, dir.path())).unwrap();
    for i in 0..n {
        shipper.record(record(i));
    }
    shipper.flush().await.unwrap();
    (stub, dir, shipper)
}

/// The endpoint back with a body limit of 300 records, taking two pieces and then failing
/// once more (503, asking for 30 s).
fn back_with_a_limit_then_a_hiccup(stub: &Stub) {
    stub.max_records.store(300, Ordering::SeqCst);
    *stub.retry_after.lock().unwrap() = Some("30".into());
    *stub.burst.lock().unwrap() = Some((2, 1));
    stub.fail.store(0, Ordering::SeqCst);
}

/// Every one of the `n` records arrives, once each and in order, and the spool empties
/// with nothing given up.
async fn all_arrive_once_in_order(
    stub: &Stub,
    shipper: &ShippingRecorder,
    dir: &std::path::Path,
    n: u64,
) {
    eventually(|| shipper.stats().shipped == n).await;
    assert_eq!(
        stub.call_ids(),
        (0..n).collect::<Vec<_>>(),
        "each record once, in order"
    );
    eventually(|| spooled(dir).is_empty()).await;
    let s = shipper.stats();
    assert_eq!((s.failed, s.spool_bytes, s.spool_batches), (0, 0, 0));
}

/// A batch that waited in the spool through an outage and is then too large for the
/// endpoint (413) is sent in halves, as on a first delivery: not set aside whole. When the
/// endpoint stops taking pieces halfway (503 asking for 30 s), what is left replaces the
/// batch's file, in order, and the spool waits what was asked before it tries again.
#[tokio::test(start_paused = true)]
async fn a_spooled_batch_too_large_goes_in_pieces_and_what_is_left_waits_in_order() {
    let (stub, dir, shipper) = kept_through_an_outage(1010).await;
    assert_eq!(
        spooled(dir.path()).len(),
        2,
        "a batch of 1,000 and one of 10"
    );
    back_with_a_limit_then_a_hiccup(&stub);
    // 1000 -> 413; 500 -> 413; 250 taken; 250 taken; 500 -> 503 (after the batch's
    // three attempts in the outage).
    eventually(|| stub.requests.load(Ordering::SeqCst) >= 3 + 5).await;
    let at = stub.requests.load(Ordering::SeqCst);
    assert_eq!(at, 3 + 5);
    assert_eq!(shipper.stats().shipped, 500);
    assert_eq!(stub.call_ids(), (0..500).collect::<Vec<_>>());
    assert_eq!(
        spooled_ids(dir.path()),
        (500..1010).collect::<Vec<_>>(),
        "what is left waits, in order"
    );
    // Nothing is tried before the 30 s asked have passed.
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(stub.requests.load(Ordering::SeqCst), at);
    all_arrive_once_in_order(&stub, &shipper, dir.path(), 1010).await;
}

/// A batch split on its first delivery whose piece then fails (503) goes to the spool, and
/// the pieces after it join it there: records arrive in order, even though the endpoint
/// takes the next piece at once.
#[tokio::test(start_paused = true)]
async fn the_pieces_after_one_that_failed_follow_it_into_the_spool() {
    let (stub, url) = stub().await;
    let dir = tempfile::tempdir().unwrap();
    stub.max_records.store(300, Ordering::SeqCst);
    stub.fail_with.store(503, Ordering::SeqCst);
    // The first piece is taken; the second fails its three attempts; then all is well.
    *stub.burst.lock().unwrap() = Some((1, 3));
    let shipper = ShippingRecorder::spawn(spooling(url, dir.path())).unwrap();
    for i in 0..1000 {
        shipper.record(record(i));
    }
    shipper.flush().await.unwrap();
    eventually(|| shipper.stats().shipped == 1000).await;
    assert_eq!(stub.call_ids(), (0..1000).collect::<Vec<_>>());
    let s = shipper.stats();
    assert_eq!((s.failed, s.spooled), (0, 750), "{s:?}");
}

/// A 415 refuses how every body is sent, not what a batch holds: the batch is set aside
/// whole, not sent again in ever smaller pieces.
#[tokio::test(start_paused = true)]
async fn a_batch_refused_for_its_media_type_is_not_split() {
    let (stub, url) = stub().await;
    stub.fail.store(u32::MAX, Ordering::SeqCst);
    stub.fail_with.store(415, Ordering::SeqCst);
    let shipper = ShippingRecorder::spawn(config(url)).unwrap();
    for i in 0..100 {
        shipper.record(record(i));
    }
    assert!(shipper.flush().await.is_err());
    assert_eq!(stub.requests.load(Ordering::SeqCst), 1);
    assert_eq!(shipper.stats().failed, 100);
}

/// When what is left of a spooled batch cannot be written back (its disk refuses), the
/// spool remembers where it starts: the records delivered are not sent again, and the
/// rest arrive once each, in order.
#[tokio::test(start_paused = true)]
async fn what_is_left_is_sent_from_where_it_stopped_when_its_file_cannot_be_rewritten() {
    let (stub, dir, shipper) = kept_through_an_outage(1000).await;
    let name = spooled(dir.path()).remove(0);
    // The rewrite's temporary file cannot be created: a folder holds its name.
    std::fs::create_dir(dir.path().join(format!(".{name}.tmp"))).unwrap();
    back_with_a_limit_then_a_hiccup(&stub);
    eventually(|| shipper.stats().shipped == 500).await;
    assert_eq!(
        spooled(dir.path()),
        std::slice::from_ref(&name),
        "the file stays whole"
    );
    // (Tried again once the 30 s asked have passed.)
    tokio::time::sleep(Duration::from_secs(30)).await;
    all_arrive_once_in_order(&stub, &shipper, dir.path(), 1000).await;
}

/// A batch that goes to the spool because the endpoint answered 503 with Retry-After is
/// first tried from there once that wait has passed, not after the shipper's own backoff.
#[tokio::test(start_paused = true)]
async fn the_spool_first_waits_what_the_answer_that_filled_it_asked() {
    let (stub, url) = stub().await;
    let dir = tempfile::tempdir().unwrap();
    stub.fail.store(3, Ordering::SeqCst);
    stub.fail_with.store(503, Ordering::SeqCst);
    *stub.retry_after.lock().unwrap() = Some("2".into());
    let shipper = ShippingRecorder::spawn(ShipperConfig {
        // Beyond the shipper's retries: the spool's first try is its to time.
        max_attempts: 1,
        ..spooling(url, dir.path())
    })
    .unwrap();
    shipper.record(record(1));
    shipper.flush().await.unwrap();
    let t0 = tokio::time::Instant::now();
    assert_eq!(stub.requests.load(Ordering::SeqCst), 1);
    eventually(|| stub.requests.load(Ordering::SeqCst) == 2).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1_990),
        "{:?}",
        t0.elapsed()
    );
}
