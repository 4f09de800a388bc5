//! Compaction into day-partitioned Parquet: explicit schema, idempotence, interruption.
#![cfg(feature = "parquet")]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::{Command, Stdio};

use common::record;
use polars::prelude::*;
use retrywise::recorder::Recorder;
use retrywise_collect::compact::{CompactEvent, CompactOptions, Disposal, attempt_schema, compact};
use retrywise_collect::{CollectError, SegmentRecorder, WriterConfig, segment};

/// Writes records `ids` through the real writer into `dir`, in segments of ~`seg_bytes`.
fn write(dir: &Path, ids: std::ops::Range<u64>, seg_bytes: u64) {
    let rec = SegmentRecorder::open(
        dir,
        WriterConfig {
            max_segment_bytes: seg_bytes,
            queue_capacity: 1 << 20,
            ..WriterConfig::default()
        },
    )
    .unwrap();
    for i in ids {
        rec.record(record(i));
    }
    rec.close().unwrap();
}

fn scan(out: &Path) -> DataFrame {
    let glob = format!("{}/**/*.parquet", out.display());
    LazyFrame::scan_parquet(PlRefPath::new(&glob), ScanArgsParquet::default())
        .unwrap()
        .collect()
        .unwrap()
}

fn ids(df: &DataFrame) -> Vec<u64> {
    let mut v: Vec<u64> = df
        .column("call_id")
        .unwrap()
        .u64()
        .unwrap()
        .into_no_null_iter()
        .collect();
    v.sort_unstable();
    v
}

fn go(opts: &CompactOptions) -> retrywise_collect::compact::CompactSummary {
    compact(opts, |_| ControlFlow::Continue(())).unwrap()
}

#[test]
fn segments_become_day_partitioned_parquet_with_the_explicit_schema() {
    let root = tempfile::tempdir().unwrap();
    let (input, output) = (root.path().join("in"), root.path().join("out"));
    write(&input, 0..3000, 64 * 1024);
    let segments = segment::list(&input).unwrap().len() as u64;
    assert!(segments > 5);

    let s = go(&CompactOptions::new(&input, &output));
    assert_eq!(s.segments, segments);
    assert_eq!((s.read.records, s.rows, s.read.skipped()), (3000, 3000, 0));
    assert_eq!(
        s.rows_per_day.keys().cloned().collect::<Vec<_>>(),
        ["2025-11-24", "2025-11-25", "2025-11-26"]
    );
    assert!(
        segment::list(&input).unwrap().is_empty(),
        "compacted segments are removed"
    );

    let df = scan(&output);
    assert_eq!(ids(&df), (0..3000).collect::<Vec<_>>());
    // Every column with its declared type, plus the hive partition.
    let schema = df.schema();
    for (name, dtype) in attempt_schema().iter() {
        assert_eq!(schema.get(name), Some(dtype), "{name}");
    }
    assert_eq!(schema.get("date"), Some(&DataType::Date));
    // Values survive: record 5 (attempt 3 after a 503, timeout-free success).
    let five = df
        .clone()
        .lazy()
        .filter(col("call_id").eq(lit(5u64)))
        .collect()
        .unwrap();
    let want = record(5);
    assert_eq!(
        five.column("attempt").unwrap().u32().unwrap().get(0),
        Some(want.context.attempt)
    );
    assert_eq!(
        five.column("error").unwrap().str().unwrap().get(0),
        Some("http_503")
    );
    assert_eq!(
        five.column("status").unwrap().u16().unwrap().get(0),
        Some(503)
    );
    assert_eq!(
        five.column("outcome").unwrap().str().unwrap().get(0),
        Some("success")
    );
    assert_eq!(
        five.column("failure_rate").unwrap().f64().unwrap().get(0),
        None
    );
    let latency = five
        .column("outcome_latency_ms")
        .unwrap()
        .f64()
        .unwrap()
        .get(0)
        .unwrap();
    assert!((latency - want.outcome_latency.as_secs_f64() * 1e3).abs() < 1e-9);
    // An explored decision keeps its propensity (the trainer and any off-policy estimate
    // weigh the row by it); every other row says it did not explore.
    assert_eq!(
        five.column("explore_propensity")
            .unwrap()
            .f64()
            .unwrap()
            .get(0),
        Some(0.25)
    );
    let explored = df
        .column("explore_propensity")
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .zip(
            df.column("call_id")
                .unwrap()
                .u64()
                .unwrap()
                .into_no_null_iter(),
        )
        .filter(|(p, id)| *p != record(*id).context.explore_propensity)
        .count();
    assert_eq!(explored, 0, "rows whose propensity is not the record's");

    // Idempotent: a second run finds nothing to do and the rows are the same, once.
    let again = go(&CompactOptions::new(&input, &output));
    assert_eq!((again.segments, again.rows), (0, 0));
    assert_eq!(ids(&scan(&output)), (0..3000).collect::<Vec<_>>());
}

#[test]
fn bad_lines_are_skipped_and_counted_and_open_segments_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let (input, output) = (root.path().join("in"), root.path().join("out"));
    std::fs::create_dir_all(&input).unwrap();
    let good = serde_json::to_string(&record(1)).unwrap();
    std::fs::write(
        input.join("seg-0000000000001-000001.ndjson"),
        format!("{good}\ngarbage\n{{\"call_id\":1}}\n{}", &good[..30]),
    )
    .unwrap();
    std::fs::write(
        input.join("seg-0000000000002-000001.ndjson.open"),
        format!("{good}\n"),
    )
    .unwrap();
    let s = go(&CompactOptions::new(&input, &output));
    assert_eq!((s.segments, s.rows, s.open_segments_skipped), (1, 1, 1));
    assert_eq!(
        (s.read.malformed, s.read.unknown_version, s.read.torn),
        (1, 1, 1)
    );
    assert_eq!(
        segment::list(&input).unwrap().len(),
        1,
        "the open segment stays"
    );
}

#[test]
fn fields_of_a_newer_minor_version_are_kept_in_their_own_column() {
    let root = tempfile::tempdir().unwrap();
    let (input, output) = (root.path().join("in"), root.path().join("out"));
    std::fs::create_dir_all(&input).unwrap();
    let own = serde_json::to_string(&record(1)).unwrap();
    let newer = serde_json::to_string(&record(2))
        .unwrap()
        .replacen(
            &format!("\"{}\"", retrywise::attempt::SchemaVersion::CURRENT),
            "\"1.99\"",
            1,
        )
        .replacen('{', r#"{"zone":"eu-1","added":{"n":[1,2.5]},"#, 1);
    std::fs::write(
        input.join("seg-0000000000001-000001.ndjson"),
        format!("{own}\n{newer}\n"),
    )
    .unwrap();
    let s = go(&CompactOptions::new(&input, &output));
    assert_eq!((s.rows, s.read.skipped()), (2, 0), "{s:?}");
    let df = scan(&output)
        .sort(["call_id"], SortMultipleOptions::default())
        .unwrap();
    let unknown = df.column("unknown_fields").unwrap().str().unwrap();
    assert_eq!(unknown.get(0), None, "this build's records have none");
    let kept: serde_json::Value = serde_json::from_str(unknown.get(1).unwrap()).unwrap();
    assert_eq!(
        kept,
        serde_json::json!({"zone": "eu-1", "added": {"n": [1, 2.5]}})
    );
    let versions = df.column("schema_version").unwrap().str().unwrap();
    assert_eq!(
        versions.get(1),
        Some("1.99"),
        "the record keeps its version"
    );
}

#[test]
fn an_interrupted_run_is_finished_by_the_next_without_duplicates() {
    let root = tempfile::tempdir().unwrap();
    let (input, output) = (root.path().join("in"), root.path().join("out"));
    write(&input, 0..2000, 1 << 30); // one segment spanning three days: three parts
    let mut opts = CompactOptions::new(&input, &output);
    opts.threads = 1;
    // Stop right after the first part is durable.
    let s = compact(&opts, |e| match e {
        CompactEvent::PartWritten { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .unwrap();
    assert!(s.interrupted);
    assert_eq!((s.segments, s.parts), (0, 1));
    assert_eq!(
        segment::list(&input).unwrap().len(),
        1,
        "the segment is kept until all its parts are"
    );
    // A crash mid-write leaves a temporary part: the next run cleans it up.
    let stray = output.join("date=2025-11-25").join(".part-x.parquet.tmp");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"half a file").unwrap();

    let s = go(&opts);
    assert_eq!((s.segments, s.parts), (1, 3));
    assert!(!stray.exists());
    assert_eq!(
        ids(&scan(&output)),
        (0..2000).collect::<Vec<_>>(),
        "every row once"
    );
}

const CHILD_ENV: &str = "RETRYWISE_COMPACT_CRASH_CHILD";

#[test]
#[ignore = "run as a child process by a_killed_compaction_is_finished_by_the_next"]
fn compact_child() {
    let root = std::path::PathBuf::from(std::env::var(CHILD_ENV).expect("run by its parent"));
    let mut opts = CompactOptions::new(root.join("in"), root.join("out"));
    opts.threads = 1;
    compact(&opts, |e| {
        if let CompactEvent::PartWritten { .. } = e {
            println!("part");
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    println!("done");
}

#[test]
fn a_killed_compaction_is_finished_by_the_next() {
    let root = tempfile::tempdir().unwrap();
    let (input, output) = (root.path().join("in"), root.path().join("out"));
    write(&input, 0..60_000, 256 * 1024);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "compact_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, root.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut parts = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if line.unwrap() == "part" {
            parts += 1;
            if parts == 5 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL, in the middle of the run
    child.wait().unwrap();
    assert_eq!(parts, 5);
    assert!(
        !segment::list(&input).unwrap().is_empty(),
        "killed before the end"
    );

    let s = go(&CompactOptions::new(&input, &output));
    assert!(s.segments > 0);
    assert_eq!(
        ids(&scan(&output)),
        (0..60_000).collect::<Vec<_>>(),
        "no row lost, none twice"
    );
}

#[test]
fn a_segment_without_one_readable_record_is_kept() {
    let root = tempfile::tempdir().unwrap();
    let (input, output) = (root.path().join("in"), root.path().join("out"));
    std::fs::create_dir_all(&input).unwrap();
    let junk = input.join("seg-0000000000001-000001.ndjson");
    std::fs::write(&junk, "junk\n{\"a\":1}\n").unwrap();
    let empty = input.join("seg-0000000000002-000001.ndjson");
    std::fs::write(&empty, "").unwrap();
    let s = go(&CompactOptions::new(&input, &output));
    assert_eq!((s.rows, s.read.malformed + s.read.unknown_version), (0, 2));
    assert_eq!(s.unreadable_kept, vec![junk.clone()]);
    assert_eq!(std::fs::read_to_string(&junk).unwrap(), "junk\n{\"a\":1}\n");
    assert!(!empty.exists(), "an empty segment holds nothing to keep");
}

#[test]
fn the_lines_of_a_removed_segment_that_were_not_records_are_kept_beside_it() {
    let root = tempfile::tempdir().unwrap();
    let (input, output) = (root.path().join("in"), root.path().join("out"));
    std::fs::create_dir_all(&input).unwrap();
    let good = |i: u64| serde_json::to_string(&record(i)).unwrap();
    let seg = input.join("seg-0000000000001-000001.ndjson");
    // Two records, a malformed line between them, a line without a version, a line longer
    // than any record (read past a piece at a time, never held whole), and a torn last
    // line (no newline).
    let endless = format!("{{\"note\":\"{}\"}}", "x".repeat(3 << 20));
    let text = format!(
        "{}\nnot json at all\n{}\n{{\"a\":1}}\n{endless}\n{{\"schema_version\":\"1.4\",\"star",
        good(1),
        good(2)
    );
    std::fs::write(&seg, &text).unwrap();
    let s = go(&CompactOptions::new(&input, &output));
    assert_eq!((s.rows, s.segments), (2, 1));
    assert_eq!(
        (s.read.malformed, s.read.unknown_version, s.read.torn),
        (2, 1, 1)
    );
    assert!(
        s.read.examples.iter().any(|e| e.ends_with(&format!(
            ":5: a line of {} bytes, longer than any record ({} bytes at most)",
            endless.len() + 1,
            retrywise::attempt::schema::MAX_LINE_BYTES
        ))),
        "{:?}",
        s.read.examples
    );
    assert!(
        !seg.exists(),
        "the segment is removed once its records are in Parquet"
    );
    let kept = input.join("seg-0000000000001-000001.rejected");
    assert_eq!(s.rejected_kept, vec![kept.clone()]);
    assert!(
        std::fs::read_to_string(&kept).unwrap()
            == format!(
                "not json at all\n{{\"a\":1}}\n{endless}\n{{\"schema_version\":\"1.4\",\"star\n"
            ),
        "every line that was not a record, byte for byte"
    );
    // Nothing reads it as a segment: a second run finds nothing to do.
    let s = go(&CompactOptions::new(&input, &output));
    assert_eq!((s.segments, s.rows, s.read.lines), (0, 0, 0));
    assert!(kept.exists());
    // A clean segment leaves no such file.
    std::fs::write(
        input.join("seg-0000000000002-000001.ndjson"),
        good(3) + "\n",
    )
    .unwrap();
    let s = go(&CompactOptions::new(&input, &output));
    assert_eq!((s.rows, s.rejected_kept.len()), (1, 0));
}

#[test]
fn segments_of_the_same_name_in_two_folders_are_refused_before_anything_is_written() {
    let root = tempfile::tempdir().unwrap();
    let (input, output) = (root.path().join("in"), root.path().join("out"));
    let good = |i| serde_json::to_string(&record(i)).unwrap();
    for (dir, i) in [("a", 1), ("b", 2)] {
        std::fs::create_dir_all(input.join(dir)).unwrap();
        std::fs::write(
            input
                .join(dir)
                .join("seg-0000000000001-000001-aaaaaaaa.ndjson"),
            format!("{}\n", good(i)),
        )
        .unwrap();
    }
    let err = compact(&CompactOptions::new(&input, &output), |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(
        matches!(err, CollectError::DuplicateSegmentName { .. }),
        "{err}"
    );
    assert_eq!(segment::list(&input.join("a")).unwrap().len(), 1);
    assert_eq!(segment::list(&input.join("b")).unwrap().len(), 1);
    let partitions = std::fs::read_dir(&output)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    assert_eq!(partitions, 0, "no Parquet part written");
}

/// Two compactions of one input into two outputs would each write every segment's rows:
/// the second is refused while the first holds the input.
#[test]
fn an_input_another_compaction_holds_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let held = std::fs::File::create(input.join(retrywise_collect::compact::INPUT_LOCK)).unwrap();
    held.try_lock().unwrap();
    let err = compact(
        &CompactOptions::new(&input, root.path().join("out")),
        |_| ControlFlow::Continue(()),
    )
    .unwrap_err();
    assert!(
        matches!(&err, CollectError::DirectoryInUse { dir, .. } if *dir == input),
        "{err}"
    );
    drop(held);
    compact(
        &CompactOptions::new(&input, root.path().join("out")),
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
}

#[test]
fn a_number_of_threads_out_of_bounds_is_refused_by_name() {
    let root = tempfile::tempdir().unwrap();
    for threads in [0, retrywise_collect::compact::MAX_THREADS + 1, usize::MAX] {
        let mut o = CompactOptions::new(root.path().join("in"), root.path().join("out"));
        o.threads = threads;
        let err = compact(&o, |_| ControlFlow::Continue(())).unwrap_err();
        let said = err.to_string();
        assert!(
            said.contains("threads") && said.contains("must be within [1, 256]"),
            "{said}"
        );
    }
}

#[test]
fn a_part_is_never_replaced_by_another_segments_rows() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, output) = (
        root.path().join("a"),
        root.path().join("b"),
        root.path().join("out"),
    );
    let name = "seg-0000000000001-000001-aaaaaaaa.ndjson";
    let lines = |ids: std::ops::Range<u64>| {
        ids.map(|i| serde_json::to_string(&record(i)).unwrap() + "\n")
            .collect::<String>()
    };
    for (dir, ids) in [(&a, 0..20), (&b, 100..110)] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), lines(ids)).unwrap();
    }
    assert_eq!(go(&CompactOptions::new(&a, &output)).rows, 20);
    // Another folder's segment of the same name, later, into the same output: refused, and
    // both the part and the segment are kept.
    let err = compact(&CompactOptions::new(&b, &output), |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(matches!(err, CollectError::PartExists { .. }), "{err}");
    assert!(err.to_string().contains(name), "{err}");
    assert!(
        err.to_string().contains("it lacks rows this segment holds"),
        "{err}"
    );
    assert_eq!(ids(&scan(&output)), (0..20).collect::<Vec<_>>());
    assert_eq!(segment::list(&b).unwrap().len(), 1, "the segment is kept");
    // The same segment again (a run stopped before removing it): nothing to write, and it
    // is removed.
    std::fs::write(a.join(name), lines(0..20)).unwrap();
    assert_eq!(go(&CompactOptions::new(&a, &output)).rows, 20);
    assert_eq!(ids(&scan(&output)), (0..20).collect::<Vec<_>>());
    assert!(segment::list(&a).unwrap().is_empty());
    // ... also when an earlier build wrote its part (without the columns added since).
    let part = std::fs::read_dir(&output)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    let mut older = ParquetReader::new(std::fs::File::open(&part).unwrap())
        .finish()
        .unwrap()
        .drop("unknown_fields")
        .unwrap();
    ParquetWriter::new(std::fs::File::create(&part).unwrap())
        .finish(&mut older)
        .unwrap();
    std::fs::write(a.join(name), lines(0..20)).unwrap();
    assert_eq!(go(&CompactOptions::new(&a, &output)).rows, 20);
    assert!(segment::list(&a).unwrap().is_empty());
    // ... written over with them: the segment's values of those columns are not lost with
    // it.
    let now = ParquetReader::new(std::fs::File::open(&part).unwrap())
        .finish()
        .unwrap();
    assert!(now.column("unknown_fields").is_ok(), "{:?}", now.schema());
    assert_eq!(ids(&scan(&output)), (0..20).collect::<Vec<_>>());
    // A damaged part of that name: not this segment's, so kept and refused, never read as
    // if it were (nor the end of the run).
    std::fs::write(a.join(name), lines(0..20)).unwrap();
    let part = std::fs::read_dir(&output)
        .unwrap()
        .flatten()
        .filter(|d| d.path().is_dir())
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    // Its metadata claims a list of 2^31 - 1 structs in 8 bytes: read, polars would
    // reserve room for them all, and the process would abort.
    let meta = [0x49, 0xfc, 0xff, 0xff, 0xff, 0xff, 0x07, 0x00];
    let mut damaged = b"PAR1".to_vec();
    damaged.extend(meta);
    damaged.extend((meta.len() as u32).to_le_bytes());
    damaged.extend(b"PAR1");
    std::fs::write(&part, &damaged).unwrap();
    let err = compact(&CompactOptions::new(&a, &output), |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(matches!(err, CollectError::PartExists { .. }), "{err}");
    assert!(err.to_string().contains("its footer is damaged"), "{err}");
    assert_eq!(std::fs::read(&part).unwrap(), damaged, "kept as it was");
    // A part of that name that cannot even be opened (here a link to itself: the open
    // fails, as it would for a file this process may not read): never written over.
    std::fs::remove_file(&part).unwrap();
    std::os::unix::fs::symlink(&part, &part).unwrap();
    let err = compact(&CompactOptions::new(&a, &output), |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(matches!(err, CollectError::Io { .. }), "{err}");
    assert!(
        std::fs::symlink_metadata(&part)
            .unwrap()
            .file_type()
            .is_symlink(),
        "kept as it was"
    );
    assert!(
        !segment::list(&a).unwrap().is_empty(),
        "the segment is kept"
    );
}

#[test]
fn segments_can_be_archived_instead_of_deleted() {
    let root = tempfile::tempdir().unwrap();
    let (input, output, archive) = (
        root.path().join("in"),
        root.path().join("out"),
        root.path().join("old"),
    );
    write(&input, 0..100, 1 << 30);
    let mut opts = CompactOptions::new(&input, &output);
    opts.disposal = Disposal::Archive(archive.clone());
    go(&opts);
    assert!(segment::list(&input).unwrap().is_empty());
    assert_eq!(segment::list(&archive).unwrap().len(), 1);
}

/// An archive on another file system (here /dev/shm, a tmpfs, where the machine has one
/// apart from the temporary folder): segments are copied there whole, nothing temporary is
/// left, and the input is emptied.
#[test]
fn segments_are_archived_across_file_systems() {
    use std::os::unix::fs::MetadataExt;
    let root = tempfile::tempdir().unwrap();
    let Ok(other) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm here: the rename path is tested above");
        return;
    };
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    assert_ne!(dev(root.path()), dev(other.path()), "two file systems");
    let (input, output, archive) = (
        root.path().join("in"),
        root.path().join("out"),
        other.path().join("old"),
    );
    std::fs::create_dir_all(&archive).unwrap();
    write(&input, 0..100, 1 << 30);
    let segments = segment::list(&input).unwrap();
    let bytes: Vec<Vec<u8>> = segments
        .iter()
        .map(|s| std::fs::read(&s.path).unwrap())
        .collect();
    let mut opts = CompactOptions::new(&input, &output);
    opts.disposal = Disposal::Archive(archive.clone());
    assert_eq!(go(&opts).rows, 100);
    assert!(segment::list(&input).unwrap().is_empty());
    let archived = segment::list(&archive).unwrap();
    assert_eq!(archived.len(), segments.len());
    for (a, b) in archived.iter().zip(&bytes) {
        assert_eq!(&std::fs::read(&a.path).unwrap(), b, "copied whole");
    }
    let names: Vec<String> = std::fs::read_dir(&archive)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn an_unknown_major_version_stops_and_keeps_the_segment() {
    let root = tempfile::tempdir().unwrap();
    let (input, output) = (root.path().join("in"), root.path().join("out"));
    std::fs::create_dir_all(&input).unwrap();
    let v2 = serde_json::to_string(&record(1)).unwrap().replace(
        &format!("\"{}\"", retrywise::attempt::SchemaVersion::CURRENT),
        "\"2.0\"",
    );
    std::fs::write(
        input.join("seg-0000000000001-000001.ndjson"),
        format!("{v2}\n"),
    )
    .unwrap();
    let err = compact(&CompactOptions::new(&input, &output), |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(
        matches!(err, CollectError::UnsupportedSchema { .. }),
        "{err}"
    );
    assert_eq!(segment::list(&input).unwrap().len(), 1);
}

#[test]
fn overlapping_folders_are_refused_before_anything_moves() {
    let root = tempfile::tempdir().unwrap();
    let (input, output) = (root.path().join("in"), root.path().join("out"));
    write(&input, 0..50, 1 << 20);
    let before = segment::list(&input).unwrap().len();
    let refused = |opts: CompactOptions, field: &str, says: &str| {
        let err = compact(&opts, |_| ControlFlow::Continue(())).unwrap_err();
        assert!(
            matches!(&err, CollectError::Config { field: f, .. } if *f == field),
            "{err}"
        );
        assert!(err.to_string().contains(says), "{err}");
        assert_eq!(
            segment::list(&input).unwrap().len(),
            before,
            "nothing moved"
        );
    };
    let with_archive = |archive: std::path::PathBuf| {
        let mut o = CompactOptions::new(&input, &output);
        o.disposal = Disposal::Archive(archive);
        o
    };
    // The archive is the output, inside it, or holds it: the dataset would hold the
    // archived segments (two names of one folder included).
    refused(
        with_archive(output.clone()),
        "archive",
        "the same or one holds the other",
    );
    refused(
        with_archive(output.join("old")),
        "archive",
        "the same or one holds the other",
    );
    refused(
        with_archive(root.path().join("in/../out/x/..")),
        "archive",
        "the same or one holds the other",
    );
    let mut o = CompactOptions::new(&input, root.path().join("out/ds"));
    o.disposal = Disposal::Archive(output.clone());
    refused(o, "archive", "the same or one holds the other");
    // Through a link: `..` of a link is the parent of where it leads (`l` leads to `a/b`,
    // so `l/../../out/z` is `out/z`; read as text it would be outside the root).
    std::fs::create_dir_all(root.path().join("a/b")).unwrap();
    std::os::unix::fs::symlink(root.path().join("a/b"), root.path().join("l")).unwrap();
    refused(
        with_archive(root.path().join("l/../../out/z")),
        "archive",
        "the same or one holds the other",
    );
    // A file where the archive folder goes is named as such (it was "File exists"), and
    // nothing is created.
    let file = root.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    let fresh = root.path().join("fresh");
    let mut o = CompactOptions::new(&input, &fresh);
    o.disposal = Disposal::Archive(file);
    refused(o, "archive", "is a file, not a folder");
    assert!(!fresh.exists(), "the output folder was made");
    // The input is the output or the archive, or inside them.
    refused(
        CompactOptions::new(&input, &input),
        "input",
        "is the output folder",
    );
    refused(
        CompactOptions::new(&input, root.path()),
        "input",
        "or inside it",
    );
    refused(
        with_archive(input.clone()),
        "input",
        "is the archive folder",
    );
    // The output and the archive inside the input are skipped there: allowed.
    let mut o = CompactOptions::new(&input, input.join("parquet"));
    o.disposal = Disposal::Archive(input.join("archive"));
    let s = go(&o);
    assert_eq!(s.rows, 50);
    assert_eq!(segment::list(&input.join("archive")).unwrap().len(), before);
    // However the archive is spelled, what was archived is not compacted again: into the
    // same output or a fresh one (which would hold every archived row a second time).
    for (output, archive) in [
        (input.join("parquet"), root.path().join("in/../in/archive")),
        (input.join("fresh"), root.path().join("in/./archive")),
    ] {
        let mut o = CompactOptions::new(&input, output);
        o.disposal = Disposal::Archive(archive);
        let s = go(&o);
        assert_eq!((s.segments, s.rows), (0, 0), "{s:?}");
    }
}
