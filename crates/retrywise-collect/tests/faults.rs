//! Faults: a writer killed mid-stream, a full disk, a directory that becomes unwritable.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Faulty, read_ids, record};
use retrywise::recorder::Recorder;
use retrywise_collect::{CollectError, SegmentRecorder, WriterConfig};

const CHILD_ENV: &str = "RETRYWISE_COLLECT_CRASH_CHILD";

/// The child process of `acknowledged_records_survive_sigkill`: records forever, printing
/// how many records each successful flush covered; never returns on its own.
#[test]
#[ignore = "run as a child process by acknowledged_records_survive_sigkill"]
fn crash_child() {
    let dir = std::env::var(CHILD_ENV).expect("run by its parent test");
    let rec = SegmentRecorder::open(
        dir,
        WriterConfig {
            max_segment_bytes: 64 * 1024,
            ..WriterConfig::default()
        },
    )
    .unwrap();
    let mut i = 0u64;
    loop {
        for _ in 0..50 {
            rec.record(record(i));
            i += 1;
        }
        rec.flush().unwrap();
        println!("acked {i}");
        // More records in flight when the kill comes: written or not, never acknowledged.
        for _ in 0..37 {
            rec.record(record(i));
            i += 1;
        }
    }
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0u64;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().unwrap();
            if acked >= 5_000 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(acked >= 5_000, "the child acknowledged only {acked}");

    let (ids, summary) = read_ids(dir.path());
    assert!(
        ids.len() as u64 >= acked,
        "{} read, {acked} acknowledged",
        ids.len()
    );
    assert_eq!(
        &ids[..acked as usize],
        (0..acked).collect::<Vec<_>>(),
        "every acknowledged record, once, in order"
    );
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "no duplicates or gaps after them either"
    );
    assert_eq!(
        summary.malformed + summary.unknown_version,
        0,
        "{summary:?}"
    );
    assert!(
        summary.torn <= 1,
        "at most the last line is torn: {summary:?}"
    );

    // A new writer takes over: the dead writer's lock is free and its segment is closed.
    let rec = SegmentRecorder::open(dir.path(), WriterConfig::default()).unwrap();
    rec.record(record(1_000_000));
    rec.close().unwrap();
    let (again, _) = read_ids(dir.path());
    assert_eq!(again.last(), Some(&1_000_000));
}

#[test]
fn a_full_disk_drops_and_counts_then_writing_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = Faulty::new();
    let rec = SegmentRecorder::with_storage(dir.path(), WriterConfig::default(), storage).unwrap();
    for i in 0..100 {
        rec.record(record(i));
    }
    rec.flush().unwrap();

    faults.full.store(true, Ordering::SeqCst);
    for i in 100..200 {
        rec.record(record(i));
    }
    let err = rec.flush().unwrap_err();
    assert!(matches!(err, CollectError::Flush { .. }), "{err}");
    // It names the file it could not write and the system's reason.
    let said = err.to_string();
    assert!(
        said.contains("cannot write") && said.contains(&dir.path().display().to_string()),
        "{said}"
    );
    assert!(said.contains("os error 28"), "{said}");
    // While the writer backs off, new records are dropped too.
    for i in 200..210 {
        rec.record(record(i));
    }
    assert!(rec.flush().is_err());
    let s = rec.stats();
    assert_eq!(s.dropped_io, 110, "{s:?}");
    assert!(s.io_errors >= 1);

    // Space returns: after the backoff, writing resumes by itself.
    faults.full.store(false, Ordering::SeqCst);
    faults.advance(Duration::from_secs(10));
    for i in 300..400 {
        rec.record(record(i));
    }
    rec.flush().unwrap();
    rec.close().unwrap();
    let (ids, summary) = read_ids(dir.path());
    let want: Vec<u64> = (0..100).chain(300..400).collect();
    assert_eq!(ids, want);
    assert_eq!(
        summary.skipped(),
        0,
        "the half-written batch was cut off: {summary:?}"
    );
}

/// Waits (at most 10 s: the writer's thread parks 10 ms at most) until `done` holds.
fn until(rec: &SegmentRecorder, done: impl Fn(&retrywise_collect::RecorderStats) -> bool) {
    for _ in 0..10_000 {
        if done(&rec.stats()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("the writer never got there: {:?}", rec.stats());
}

#[test]
fn a_background_fsync_that_fails_fails_the_next_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = Faulty::new();
    let rec = SegmentRecorder::with_storage(dir.path(), WriterConfig::default(), storage).unwrap();
    for i in 0..10 {
        rec.record(record(i));
    }
    until(&rec, |s| s.written == 10);
    // The periodic fsync fails (EIO): nobody is waiting on it.
    faults.sync_fails.store(true, Ordering::SeqCst);
    faults.advance(Duration::from_secs(2));
    until(&rec, |s| s.io_errors == 1);
    // The ten may never reach the disk: the next flush says so, and they are never
    // counted durable. (The flush is handled after the failure is, on the writer's
    // thread; the clock moves only after it, so the backoff the failure set is the one
    // it read the clock for.)
    let err = rec.flush().unwrap_err();
    assert!(matches!(err, CollectError::Flush { .. }), "{err}");
    let s = rec.stats();
    assert_eq!((s.written, s.synced), (10, 0), "{s:?}");
    // Past the backoff, what comes after is written and synced as usual.
    faults.advance(Duration::from_secs(10));
    for i in 10..20 {
        rec.record(record(i));
    }
    rec.flush().unwrap();
    assert_eq!(rec.stats().synced, 10);
    rec.close().unwrap();
}

/// A new segment's name is made durable (its directory fsynced) before its records are
/// counted durable: a flush whose directory fsync fails fails, and counts nothing synced.
#[test]
fn a_new_segment_is_durable_only_with_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = Faulty::new();
    let rec = SegmentRecorder::with_storage(dir.path(), WriterConfig::default(), storage).unwrap();
    let before = faults.dir_syncs.load(Ordering::SeqCst);
    // The first segment is created for these: its name is not durable yet.
    faults.dir_sync_fails.store(true, Ordering::SeqCst);
    for i in 0..10 {
        rec.record(record(i));
    }
    let err = rec.flush().unwrap_err();
    assert!(matches!(err, CollectError::Io { .. }), "{err}");
    let s = rec.stats();
    assert_eq!((s.written, s.synced), (10, 0), "{s:?}");
    // The next flush syncs the directory, and what comes after is durable.
    for i in 10..20 {
        rec.record(record(i));
    }
    rec.flush().unwrap();
    assert!(faults.dir_syncs.load(Ordering::SeqCst) > before);
    assert_eq!(rec.stats().synced, 10);
    rec.close().unwrap();
}

/// A batch is written whole or not at all: one that fills its segment is not cut there
/// (the next segment's creation could fail and leave its head written while the sender is
/// told to send it all again), and one that meets a failure leaves nothing behind.
#[tokio::test]
async fn a_batch_is_written_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = Faulty::new();
    // One segment may be created; the disk refuses the next.
    faults.creates_left.store(1, Ordering::SeqCst);
    faults.creates_limited.store(true, Ordering::SeqCst);
    let cfg = WriterConfig {
        max_segment_bytes: 1024,
        ..WriterConfig::default()
    };
    let rec = SegmentRecorder::with_storage(dir.path(), cfg, storage).unwrap();
    // Ten records are about 4 KiB: four segments' worth, written into the one.
    assert_eq!(
        rec.write_batch((0..10).map(record).collect())
            .await
            .unwrap(),
        10
    );
    // The next batch finds the segment full and no room for another: none of it is
    // written.
    let err = rec
        .write_batch((10..20).map(record).collect())
        .await
        .unwrap_err();
    assert!(matches!(err, CollectError::Flush { .. }), "{err}");
    let said = err.to_string();
    assert!(
        said.contains("lost 10 of the batch's 10 records (cannot create a segment in")
            && said.contains("counted as refused_io"),
        "{said}"
    );
    // Nor while the writer backs off, though the disk is back.
    faults.creates_limited.store(false, Ordering::SeqCst);
    assert!(
        rec.write_batch((20..30).map(record).collect())
            .await
            .is_err()
    );
    faults.advance(Duration::from_secs(10));
    assert_eq!(
        rec.write_batch((30..40).map(record).collect())
            .await
            .unwrap(),
        10
    );
    // The refused batches' records are not dropped: their sender was told, and keeps
    // them (they used to be counted as dropped, and the service reported them lost).
    let s = rec.stats();
    assert_eq!((s.refused_io, s.dropped_io), (20, 0), "{s:?}");
    let _ = rec.flush();
    rec.close().unwrap();
    let (ids, summary) = read_ids(dir.path());
    assert_eq!(ids, (0..10).chain(30..40).collect::<Vec<_>>());
    assert_eq!(summary.skipped(), 0, "{summary:?}");
}

#[test]
fn a_directory_that_becomes_unwritable_drops_then_recovers() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("attempts");
    let (storage, faults) = Faulty::new();
    let cfg = WriterConfig {
        max_segment_age: Duration::from_secs(60),
        ..WriterConfig::default()
    };
    let rec = SegmentRecorder::with_storage(&dir, cfg, storage).unwrap();
    for i in 0..50 {
        rec.record(record(i));
    }
    rec.flush().unwrap();

    // Someone replaces the directory with a file. The open segment reaches its age: it
    // cannot be closed (renamed) any more, nor can a new one be created.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    faults.advance(Duration::from_secs(61));
    for i in 50..100 {
        rec.record(record(i));
    }
    // The flush says what happened, each in its own unit.
    let e = rec.flush().unwrap_err().to_string();
    assert!(
        e.contains("1 segments could not be closed") && e.contains("50 records were lost"),
        "{e}"
    );
    let s = rec.stats();
    assert_eq!(s.dropped_io, 50, "{s:?}");
    assert!(s.io_errors >= 1);

    // The directory comes back.
    std::fs::remove_file(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    faults.advance(Duration::from_secs(10));
    for i in 100..150 {
        rec.record(record(i));
    }
    rec.flush().unwrap();
    rec.close().unwrap();
    let (ids, _) = read_ids(&dir);
    assert_eq!(ids, (100..150).collect::<Vec<_>>());
    let s = rec.stats();
    assert_eq!(s.recorded, 150);
    assert_eq!(s.dropped_io, 50, "{s:?}");
}

/// A real full file system: a 256 KiB tmpfs. Needs the right to mount (root here); elsewhere
/// the fault-injecting storage above covers the same paths.
#[test]
fn a_real_full_file_system() {
    let root = tempfile::tempdir().unwrap();
    let mnt = root.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());

    // Fill most of it, leaving room for a few records.
    std::fs::write(mnt.join("filler"), vec![0u8; 200 * 1024]).unwrap();
    let dir = mnt.join("attempts");
    let (storage, faults) = Faulty::new();
    let rec = SegmentRecorder::with_storage(&dir, WriterConfig::default(), storage).unwrap();
    let mut i = 0;
    while rec.stats().dropped_io == 0 && i < 5_000 {
        for _ in 0..100 {
            rec.record(record(i));
            i += 1;
        }
        let _ = rec.flush();
    }
    let full = rec.stats();
    assert!(full.dropped_io > 0, "the disk never filled: {full:?}");
    assert!(full.synced > 0, "some records fit first");

    std::fs::remove_file(mnt.join("filler")).unwrap();
    faults.advance(Duration::from_secs(10));
    for j in 0..100 {
        rec.record(record(1_000_000 + j));
    }
    rec.flush().expect("writing resumes once space returns");
    rec.close().unwrap();
    let (ids, summary) = read_ids(&dir);
    assert_eq!(ids.len() as u64, full.synced + 100, "{summary:?}");
    assert!(ids.ends_with(&(1_000_000..1_000_100).collect::<Vec<_>>()));
}

/// With `sync_batches` a batch is answered once it is durable - and the batches that
/// arrive while the writer is busy share one fsync; a failed fsync refuses the batches
/// waiting on it (their senders keep them), and the next batch is durable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_answered_once_durable_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, faults) = Faulty::new();
    let cfg = WriterConfig {
        sync_batches: true,
        ..WriterConfig::default()
    };
    let rec = std::sync::Arc::new(SegmentRecorder::with_storage(dir.path(), cfg, storage).unwrap());
    // (The clock stands still: no periodic fsync makes anything durable.)
    assert_eq!(
        rec.write_batch((0..10).map(record).collect())
            .await
            .unwrap(),
        10
    );
    let s = rec.stats();
    assert_eq!((s.written, s.synced), (10, 10), "{s:?}");
    // Twenty batches while the disk stalls: they wait in the queue, and once it moves
    // they are written and answered by a few fsyncs, not one each.
    faults.set_stuck(true);
    let syncs = faults.file_syncs.load(Ordering::SeqCst);
    let mut sent = Vec::new();
    for b in 0..20u64 {
        let rec = std::sync::Arc::clone(&rec);
        sent.push(tokio::spawn(async move {
            rec.write_batch((100 + b * 10..110 + b * 10).map(record).collect())
                .await
        }));
    }
    // (Bounded: a batch that never reaches the writer fails the test, not hangs it.)
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while rec.pending() < 200 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the twenty batches reach the writer");
    faults.set_stuck(false);
    for s in sent {
        assert_eq!(s.await.unwrap().unwrap(), 10);
    }
    let s = rec.stats();
    assert_eq!((s.written, s.synced), (210, 210), "{s:?}");
    let shared = faults.file_syncs.load(Ordering::SeqCst) - syncs;
    assert!(shared <= 3, "{shared} fsyncs for 20 batches");
    // The fsync fails: the batch is refused, not dropped; the next one is durable.
    faults.sync_fails.store(true, Ordering::SeqCst);
    let err = rec
        .write_batch((300..310).map(record).collect())
        .await
        .unwrap_err();
    assert!(matches!(err, CollectError::Flush { .. }), "{err}");
    let s = rec.stats();
    assert_eq!((s.refused_io, s.dropped_io), (10, 0), "{s:?}");
    faults.advance(Duration::from_secs(10));
    assert_eq!(
        rec.write_batch((400..410).map(record).collect())
            .await
            .unwrap(),
        10
    );
    assert_eq!(rec.stats().synced, 220);
    rec.flush().unwrap();
}
