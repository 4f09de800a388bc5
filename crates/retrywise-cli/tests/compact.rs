//! `retrywise compact`, run as a user would.

use std::process::Command;

use retrywise::attempt::{AttemptContext, AttemptRecord, Verdict};
use retrywise::recorder::Recorder;
use retrywise_collect::{SegmentRecorder, WriterConfig};

#[test]
fn compacts_a_directory_and_reports_what_it_did() {
    let root = tempfile::tempdir().expect("tempdir");
    let input = root.path().join("attempts");
    let output = root.path().join("parquet");
    let rec = SegmentRecorder::open(&input, WriterConfig::default()).expect("recorder");
    for i in 0..500u64 {
        let ctx = AttemptContext::first("inventory");
        rec.record(AttemptRecord::new(
            i,
            0,
            1_764_000_000_000 + i * 3_600_000,
            ctx,
            &Verdict::Success,
            Default::default(),
        ));
    }
    rec.close().expect("close");
    std::fs::write(input.join("seg-0000000000001-000001.ndjson"), "garbage\n").expect("write");

    let out = Command::new(env!("CARGO_BIN_EXE_retrywise"))
        .args(["compact", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("500 records"), "{stdout}");
    assert!(stdout.contains("1 malformed"), "{stdout}");
    assert!(stdout.contains("date=2025-11-24:"), "{stdout}");
    // 500 hours from 2025-11-24 16:00 UTC touch 22 calendar days.
    let days = std::fs::read_dir(&output)
        .expect("output")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("date="))
        })
        .count();
    assert_eq!(days, 22);

    let missing = Command::new(env!("CARGO_BIN_EXE_retrywise"))
        .args(["compact", "--input", "/nonexistent/dir"])
        .output()
        .expect("runs");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
    // A file given as the input folder is named as one.
    let file = output.join("not-a-folder");
    std::fs::write(&file, b"").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_retrywise"))
        .args(["compact", "--input"])
        .arg(&file)
        .args(["--output"])
        .arg(output.join("elsewhere"))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a file, not a folder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A closed standard error (`2>&1 | head` after its lines) loses the messages, never the
/// work: the command goes on and ends as it would (`eprintln!` panicked mid-way, status
/// 101, the segments left uncompacted).
#[test]
fn a_closed_standard_error_loses_messages_not_the_work() {
    let root = tempfile::tempdir().expect("tempdir");
    let input = root.path().join("attempts");
    let output = root.path().join("parquet");
    let rec = SegmentRecorder::open(&input, WriterConfig::default()).expect("recorder");
    for i in 0..10u64 {
        rec.record(AttemptRecord::new(
            i,
            0,
            1_764_000_000_000 + i,
            AttemptContext::first("inventory"),
            &Verdict::Success,
            Default::default(),
        ));
    }
    rec.close().expect("close");
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_retrywise"))
        .args(["compact", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .stderr(writer)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{:?}", out.status);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("10 records"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(output.join("date=2025-11-24").is_dir());
}
