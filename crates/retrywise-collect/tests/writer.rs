//! The segment writer: batching, rotation, durability, back-pressure by dropping.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Faulty, read_ids, record};
use retrywise::recorder::Recorder;
use retrywise_collect::{CollectError, SegmentRecorder, WriterConfig, segment};

#[test]
fn records_come_back_in_order_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    let rec = SegmentRecorder::open(dir.path(), WriterConfig::default()).unwrap();
    for i in 0..1000 {
        rec.record(record(i));
    }
    rec.flush().unwrap();
    let s = rec.stats();
    assert_eq!(
        (s.recorded, s.written, s.synced, s.dropped_queue_full),
        (1000, 1000, 1000, 0)
    );
    let (ids, summary) = read_ids(dir.path());
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    assert_eq!(summary.skipped(), 0);
    // Still open: one `.open` segment until close.
    let segs = segment::list(dir.path()).unwrap();
    assert_eq!(segs.len(), 1);
    assert!(!segs[0].closed);
    rec.close().unwrap();
    assert!(segment::list(dir.path()).unwrap()[0].closed);
}

#[test]
fn segments_rotate_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        max_segment_bytes: 16 * 1024,
        write_buffer: 4096,
        ..WriterConfig::default()
    };
    let rec = SegmentRecorder::open(dir.path(), cfg).unwrap();
    for i in 0..2000 {
        rec.record(record(i));
    }
    rec.close().unwrap();
    let segs = segment::list(dir.path()).unwrap();
    assert!(segs.len() > 10, "{} segments", segs.len());
    assert!(segs.iter().all(|s| s.closed));
    for s in &segs {
        let len = std::fs::metadata(&s.path).unwrap().len();
        assert!(
            len <= 16 * 1024 + 4096 + 1024,
            "{} is {len} bytes",
            s.path.display()
        );
    }
    let (ids, _) = read_ids(dir.path());
    assert_eq!(
        ids,
        (0..2000).collect::<Vec<_>>(),
        "order survives rotation"
    );
}

#[test]
fn segments_rotate_by_age_on_the_writers_clock() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = Faulty::new();
    let cfg = WriterConfig {
        max_segment_age: Duration::from_secs(60),
        ..WriterConfig::default()
    };
    let rec = SegmentRecorder::with_storage(dir.path(), cfg, storage).unwrap();
    rec.record(record(1));
    rec.flush().unwrap();
    faults.advance(Duration::from_secs(61));
    rec.record(record(2));
    rec.flush().unwrap();
    let segs = segment::list(dir.path()).unwrap();
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert!(segs[0].closed, "the old segment was closed by age");
    rec.close().unwrap();
    assert_eq!(read_ids(dir.path()).0, [1, 2]);
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = Faulty::new();
    let cfg = WriterConfig {
        queue_capacity: 100,
        write_buffer: 1,
        ..WriterConfig::default()
    };
    let rec = SegmentRecorder::with_storage(dir.path(), cfg, storage).unwrap();
    faults.set_stuck(true);
    // 10 000 offers against a stuck disk: a queue of 100 takes what it can and the rest
    // is dropped and counted, so record() returned without waiting for the disk (one that
    // waited would never have found the queue full).
    for i in 0..10_000 {
        rec.record(record(i));
    }
    let s = rec.stats();
    assert!(s.dropped_queue_full >= 10_000 - 1 - 100 - 1, "{s:?}");
    assert_eq!(s.recorded + s.dropped_queue_full, 10_000);
    faults.set_stuck(false);
    // The next flush says so (it used to answer Ok), once.
    let err = rec.flush().unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "{} records were dropped since the previous flush because the writer's queue was full",
            s.dropped_queue_full
        )),
        "{err}"
    );
    rec.flush().unwrap();
    rec.close().unwrap();
    let (ids, _) = read_ids(dir.path());
    assert_eq!(ids.len() as u64, rec.stats().recorded);
}

#[test]
fn one_writer_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = SegmentRecorder::open(dir.path(), WriterConfig::default()).unwrap();
    let second = SegmentRecorder::open(dir.path(), WriterConfig::default());
    assert!(
        matches!(second, Err(CollectError::DirectoryInUse { .. })),
        "{second:?}"
    );
    first.close().unwrap();
    SegmentRecorder::open(dir.path(), WriterConfig::default()).expect("free after close");
}

#[test]
fn segments_left_open_by_a_crash_are_closed_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let line = serde_json::to_string(&record(7)).unwrap();
    std::fs::write(
        dir.path().join("seg-0000000000001-000001.ndjson.open"),
        format!("{line}\n{{\"sche"),
    )
    .unwrap();
    std::fs::write(dir.path().join("seg-0000000000002-000001.ndjson.open"), "").unwrap();
    let rec = SegmentRecorder::open(dir.path(), WriterConfig::default()).unwrap();
    let segs = segment::list(dir.path()).unwrap();
    assert_eq!(segs.len(), 1, "the empty one was removed: {segs:?}");
    assert!(segs[0].closed);
    rec.close().unwrap();
    let (ids, summary) = read_ids(dir.path());
    assert_eq!(ids, [7]);
    assert_eq!(summary.torn, 1);
}

#[test]
fn bad_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        (
            WriterConfig {
                queue_capacity: 0,
                ..WriterConfig::default()
            },
            "queue_capacity",
        ),
        (
            WriterConfig {
                max_segment_bytes: 10,
                ..WriterConfig::default()
            },
            "max_segment_bytes",
        ),
        (
            WriterConfig {
                max_segment_age: Duration::ZERO,
                ..WriterConfig::default()
            },
            "max_segment_age",
        ),
        (
            WriterConfig {
                fsync_interval: Duration::ZERO,
                ..WriterConfig::default()
            },
            "fsync_interval",
        ),
        // Beyond any real setting, where a clock plus it would overflow.
        (
            WriterConfig {
                fsync_interval: Duration::MAX,
                ..WriterConfig::default()
            },
            "fsync_interval",
        ),
        (
            WriterConfig {
                max_segment_age: Duration::MAX,
                ..WriterConfig::default()
            },
            "max_segment_age",
        ),
        (
            WriterConfig {
                queue_capacity: usize::MAX,
                ..WriterConfig::default()
            },
            "queue_capacity",
        ),
    ];
    for (cfg, field) in bad {
        match SegmentRecorder::open(dir.path(), cfg) {
            Err(CollectError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

/// Records offered while the writer closes each end in one count: written, or dropped
/// for the close - none is taken by the queue and then lost with it (the writer used to
/// drop the queue's receiving end after its last drain, and what arrived in between was
/// counted as recorded and then nowhere). Batches sent meanwhile are answered.
#[test]
fn every_record_offered_around_a_close_is_counted_once() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let rec = SegmentRecorder::open(dir.path(), WriterConfig::default()).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let offering: Vec<_> = (0..2)
            .map(|t| {
                let (rec, stop) = (rec.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 200_000 {
                        rec.record(record(t * 1_000_000 + i));
                        i += 1;
                    }
                    i
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2));
        let _ = rec.close();
        // Offered on after the close for a moment.
        std::thread::sleep(Duration::from_millis(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let offered: u64 = offering.into_iter().map(|t| t.join().unwrap()).sum();
        let s = rec.stats();
        assert_eq!(
            offered,
            s.written + s.dropped_queue_full + s.dropped_closed + s.dropped_io + s.dropped_invalid,
            "round {round}: {s:?}"
        );
        assert!(matches!(rec.flush(), Err(CollectError::WriterGone)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let batch = rt.block_on(rec.write_batch(vec![record(1)]));
        assert!(matches!(batch, Err(CollectError::WriterGone)), "{batch:?}");
    }
}

#[test]
fn records_after_close_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let rec = SegmentRecorder::open(dir.path(), WriterConfig::default()).unwrap();
    rec.close().unwrap();
    rec.record(record(1));
    assert_eq!(rec.stats().dropped_closed, 1);
    assert!(matches!(rec.flush(), Err(CollectError::WriterGone)));
}
