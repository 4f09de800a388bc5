//! `retrywise train`, `eval` and `inspect`, run as a user would: simulate a little
//! traffic, train on it, evaluate and inspect the model, and refuse bad input with the
//! whole error chain.

use std::path::Path;
use std::process::{Command, Output};

fn retrywise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retrywise"))
        .args(args)
        .output()
        .expect("runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(args: &[&str]) -> String {
    let out = retrywise(args);
    assert!(
        out.status.success(),
        "retrywise {args:?} failed:\n{}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Records a synthetic fleet's attempts as a recorder would: a tree of segment
/// directories, one per policy (the layout `retrywise sim run --record DIR` writes).
fn record_tree(root: &Path) {
    use retrywise::recorder::Recorder;
    let records = retrywise_train::synthetic::records(6_000, 11);
    for (i, policy) in ["exp", "budget", "rule-adaptive"].iter().enumerate() {
        let rec = retrywise_collect::SegmentRecorder::open(
            root.join(policy),
            retrywise_collect::WriterConfig::default(),
        )
        .expect("recorder");
        for r in records.iter().skip(i).step_by(3) {
            rec.record(r.clone());
        }
        rec.close().expect("close");
    }
}

#[test]
fn train_eval_and_inspect_a_model_of_recorded_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = dir.path().join("attempts");
    let data = dir.path().join("data");
    let models = dir.path().join("models");
    record_tree(&segments);
    // The NDJSON tree trains as it is...
    let run = retrywise(&[
        "train",
        "--data",
        path(&segments),
        "--out",
        path(&models),
        "--name",
        "ndjson",
        "--alphas",
        "1",
    ]);
    let (out, err) = (text(&run.stdout), text(&run.stderr));
    assert!(run.status.success(), "{err}");
    assert!(out.contains("model ndjson version 1 written"), "{out}");
    // ...saying, without a terminal, what it does before the first row is read: each
    // file's lines are checked and counted first (it used to be silent through them).
    let (found, counted, read) = (
        err.find("checking and counting their rows").expect(&err),
        err.find("counted 6000 rows; reading them").expect(&err),
        err.find("read 6000 rows").expect(&err),
    );
    assert!(found < counted && counted < read, "{err}");
    // ...and compacts, every directory of it, into Parquet.
    let out = ok(&[
        "compact",
        "--input",
        path(&segments),
        "--output",
        path(&data),
    ]);
    assert!(
        out.contains("in 3 directories") && out.contains("6000 records"),
        "{out}"
    );

    let out = ok(&[
        "train",
        "--data",
        path(&data),
        "--out",
        path(&models),
        "--name",
        "fleet",
        "--alphas",
        "0.1,10",
        "--json",
    ]);
    let trained: serde_json::Value = serde_json::from_str(&out).expect("train --json");
    assert_eq!(trained["version"], 1);
    let v = &trained["validation"]["model"];
    let b = &trained["validation"]["baseline"];
    for m in ["auc", "log_loss", "brier", "ece"] {
        assert!(v[m].is_number() && b[m].is_number(), "{m}: {trained}");
    }
    let version = models.join("fleet/1");
    for f in ["model.json", "metrics.json", "report.html"] {
        assert!(version.join(f).is_file(), "{f}");
    }

    // A second run is version 2; the first is untouched.
    let before = std::fs::read(version.join("model.json")).expect("model.json");
    let out = ok(&[
        "train",
        "--data",
        path(&data),
        "--out",
        path(&models),
        "--name",
        "fleet",
        "--alphas",
        "1",
    ]);
    assert!(out.contains("model fleet version 2 written"), "{out}");
    assert_eq!(
        std::fs::read(version.join("model.json")).expect("model.json"),
        before
    );

    // eval on the Parquet files, by glob.
    let glob = format!("{}/**/*.parquet", path(&data));
    let out = ok(&["eval", "--model", path(&version), "--data", &glob, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("eval --json");
    assert_eq!(report["model"], "fleet");
    assert_eq!(report["load"]["rows"].as_u64(), Some(6_000));
    assert!(
        report["evaluation"]["by_error"]
            .as_array()
            .expect("by_error")
            .len()
            >= 3
    );
    let table = ok(&["eval", "--model", path(&version), "--data", path(&data)]);
    assert!(
        table.contains("baseline") && table.contains("http_503"),
        "{table}"
    );

    // eval --check judges the calibration: a limit no model meets fails, naming what
    // missed...
    let eval = |extra: &[&str]| {
        let mut a = vec!["eval", "--model", path(&version), "--data", path(&data)];
        a.extend_from_slice(extra);
        retrywise(&a)
    };
    let strict = eval(&["--check", "--max-ece-overall", "0"]);
    assert!(!strict.status.success());
    let err = text(&strict.stderr);
    assert!(
        err.contains("calibration check") && err.contains("every row"),
        "{err}"
    );
    assert!(
        text(&strict.stdout).contains("MISSED every row: ECE"),
        "{}",
        text(&strict.stdout)
    );
    // ...the JSON carries every check, the overall one first, then one per target, and
    // the exit status follows them...
    let loose = eval(&[
        "--json",
        "--check",
        "--max-ece",
        "1",
        "--max-ece-overall",
        "1",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&loose.stdout).expect("eval --check --json");
    let checks = v["checks"].as_array().expect("checks");
    let targets = v["evaluation"]["by_target"].as_array().expect("by_target");
    assert_eq!(checks.len(), 1 + targets.len());
    assert!(checks[0]["target"].is_null());
    assert_eq!(checks[1]["target"], targets[0]["target"]);
    assert_eq!(
        loose.status.success(),
        checks
            .iter()
            .all(|c| c["met"] == true || c["judged"] == false),
        "{v}"
    );
    // ...rows too few to judge anything are said, and fail...
    let few = eval(&["--check", "--min-rows", "1000000"]);
    assert!(!few.status.success());
    assert!(
        text(&few.stderr)
            .contains("too few rows to judge anything (6000 rows; --min-rows 1000000)"),
        "{}",
        text(&few.stderr)
    );
    assert!(
        text(&few.stdout).contains("not judged (too few rows) every row"),
        "{}",
        text(&few.stdout)
    );
    // ...and a limit outside [0, 1] is refused by name.
    let bad = eval(&["--check", "--max-ece", "2"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("--max-ece"),
        "{}",
        text(&bad.stderr)
    );

    // inspect names every feature with its weight.
    let out = ok(&["inspect", "--model", path(&version)]);
    for name in [
        "log_delay_x_http_429",
        "failure_rate",
        "waited_retry_after",
        "intercept",
    ] {
        assert!(out.contains(name), "{name} missing:\n{out}");
    }
    assert!(out.contains("validation (model vs baseline)"), "{out}");
}

#[test]
fn bad_input_is_refused_with_the_whole_error_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let out = retrywise(&[
        "train",
        "--data",
        path(&empty),
        "--out",
        path(&dir.path().join("m")),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no Parquet or NDJSON files"), "{err}");

    // A folder holding only a segment still open (a writer's, or one a crash left) says
    // so, instead of "no files" alone; beside files that are read, a warning says it.
    let open = dir.path().join("open");
    std::fs::create_dir_all(&open).expect("mkdir");
    std::fs::write(open.join("seg-0000000000001-000001.ndjson.open"), "").expect("write");
    let out = retrywise(&["train", "--data", path(&open)]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("1 open segment not read")
            && err.contains("seg-0000000000001-000001.ndjson.open"),
        "{err}"
    );

    let model = dir.path().join("m/x/1");
    std::fs::create_dir_all(&model).expect("mkdir");
    std::fs::write(model.join("model.json"), "{\"format\": 3}").expect("write");
    let out = retrywise(&["inspect", "--model", path(&model)]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("not a valid model artifact: `format`: invalid type: integer `3`"),
        "{err}"
    );

    // The options are checked before anything is read (the folder is empty too).
    let out = retrywise(&["train", "--data", path(&empty), "--alphas", "1,-1"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("alphas must be non-negative numbers, at most 1e12, got [1.0, -1.0]"),
        "{err}"
    );

    // Nothing to read is said, with a failing status, by every command that reads (eval
    // with a valid model: the shipped one).
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/1");
    let out = retrywise(&["eval", "--model", path(&shipped), "--data", path(&empty)]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no Parquet or NDJSON files"), "{err}");
    let parquet = dir.path().join("p");
    let compact = |input: &Path| {
        let out = retrywise(&[
            "compact",
            "--input",
            path(input),
            "--output",
            path(&parquet),
        ]);
        assert!(!out.status.success());
        out
    };
    let out = compact(&empty);
    assert!(
        text(&out.stderr).contains("nothing to compact"),
        "{}",
        text(&out.stderr)
    );
    // Segments, but not one record in them: said, failing, and the segment left in place.
    let junk = dir.path().join("junk");
    std::fs::create_dir_all(&junk).expect("dir");
    let seg = junk.join("seg-0000000000001-000001.ndjson");
    std::fs::write(&seg, "not a record\n").expect("write");
    let out = compact(&junk);
    let err = text(&out.stderr);
    assert!(
        err.contains("nothing compacted") && err.contains("hold no record"),
        "{err}"
    );
    assert!(
        !text(&out.stdout).contains("removed"),
        "{}",
        text(&out.stdout)
    );
    assert!(seg.exists());
}
