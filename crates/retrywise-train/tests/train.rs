//! The trainer end to end on files: training, the never-overwriting store, the feature
//! identity between training and serving, the pinned success label, and bad input.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use polars::prelude::*;
use retrywise::attempt::{AttemptContext, AttemptRecord, ErrorKind, Failure, Verdict};
use retrywise::features;
use retrywise::model::{LogisticModel, SuccessModel};
use retrywise_collect::compact::FrameBuilder;
use retrywise_train::data::{self, Filter};
use retrywise_train::fit::{self, FitOptions};
use retrywise_train::{TrainError, TrainOptions, store, synthetic, train};

fn write_parquet(records: &[AttemptRecord], path: &Path) {
    let mut fb = FrameBuilder::new();
    for r in records {
        fb.push(r.clone());
    }
    let mut df = fb.finish().unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    ParquetWriter::new(std::fs::File::create(path).unwrap())
        .finish(&mut df)
        .unwrap();
}

fn write_ndjson(records: &[AttemptRecord], path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for r in records {
        writeln!(f, "{}", serde_json::to_string(r).unwrap()).unwrap();
    }
}

fn write_df(mut df: DataFrame, path: &Path) {
    ParquetWriter::new(std::fs::File::create(path).unwrap())
        .finish(&mut df)
        .unwrap();
}

fn quiet(_: retrywise_train::Step) {}

// An error and its sources, as `main` prints them.
use retrywise_collect::error_chain as chain;

fn opts(data: &Path, models: &Path) -> TrainOptions {
    let mut o = TrainOptions::new(vec![data.to_string_lossy().into_owned()], models, "test");
    // Two penalties keep the tests quick.
    o.fit.alphas = vec![1.0, 100.0];
    o
}

/// Hand-made records covering what the synthetic set does not: unknown health, statuses
/// without an error, fractional milliseconds, huge and zero durations.
fn edge_records() -> Vec<AttemptRecord> {
    let mut out = Vec::new();
    let mut ctx = AttemptContext::first("edge");
    out.push(AttemptRecord::new(
        1,
        0,
        1_000,
        ctx.clone(),
        &Verdict::Success,
        Duration::from_micros(1_234_567),
    ));
    ctx.attempt = 2;
    ctx.error = Some(ErrorKind::Http429);
    ctx.status = Some(429);
    ctx.retry_after = Some(Duration::from_nanos(1_500_000_001));
    ctx.delay = Duration::from_nanos(1_499_999_999);
    ctx.latency = Some(Duration::from_nanos(123_456_789));
    ctx.elapsed = Duration::from_secs(86_400 * 30);
    ctx.failure_rate = Some(1.0 / 3.0);
    ctx.latency_p95 = Some(Duration::ZERO);
    ctx.in_flight = Some(u32::MAX);
    let fail = Verdict::Retryable(Failure::new(ErrorKind::Timeout));
    out.push(AttemptRecord::new(
        1,
        1,
        2_000,
        ctx.clone(),
        &fail,
        Duration::from_millis(5),
    ));
    ctx.error = Some(ErrorKind::Connect);
    ctx.status = None;
    ctx.retry_after = None;
    ctx.failure_rate = None;
    ctx.latency_p95 = None;
    ctx.in_flight = None;
    out.push(AttemptRecord::new(2, 0, 3_000, ctx, &fail, Duration::ZERO));
    out
}

#[test]
fn ndjson_lines_are_read_as_the_collector_reads_segments() {
    let dir = tempfile::tempdir().unwrap();
    let records = synthetic::records(300, 5);
    let path = dir.path().join("seg.ndjson");
    write_ndjson(&records, &path);
    let line = serde_json::to_string(&records[0]).unwrap();
    let current = format!("\"{}\"", retrywise::attempt::SchemaVersion::CURRENT);
    let unreadable = line.replacen(&current, "\"one point four\"", 1);
    // Without a version it is read, as a Parquet file needs no such column (another call
    // than the first line's: the same would be the same attempt, read once).
    let mut other = records[0].clone();
    other.call_id += 1 << 40;
    let without_version = serde_json::to_string(&other).unwrap().replacen(
        &format!("\"schema_version\":{current},"),
        "",
        1,
    );
    assert!(!without_version.contains("schema_version"));
    // A record whose wait is a string: polars would read it as null (a wait of 0), the
    // collector refuses it; so does the trainer now.
    let start = line.find("\"delay_ms\":").expect(&line) + "\"delay_ms\":".len();
    let end = start + line[start..].find(',').expect(&line);
    let delay_text = format!(
        "{}\"{}\"{}",
        &line[..start],
        &line[start..end],
        &line[end..]
    );
    serde_json::from_str::<serde_json::Value>(&delay_text).expect("still a JSON object");
    // The same without a version: polars would read it as null too.
    let delay_text_unversioned =
        delay_text.replacen(&format!("\"schema_version\":{current},"), "", 1);
    assert!(!delay_text_unversioned.contains("schema_version"));
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        // Not JSON, a version that is not one, one without, a line longer than any record
        // (a record with a 3 MiB field: read past, never held whole), and a last line cut
        // short by a crash mid-write.
        let endless = line.replacen('{', &format!("{{\"note\":\"{}\",", "x".repeat(3 << 20)), 1);
        write!(
            f,
            "garbage\n{unreadable}\n{without_version}\n{delay_text}\n{delay_text_unversioned}\n{endless}\n{}",
            &line[..40]
        )
        .unwrap();
    }
    let files = data::resolve(&[path.to_string_lossy().into_owned()]).unwrap();
    let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(rows.len(), records.len() + 1);
    assert_eq!(
        data::count_rows(&files, &Filter::default()).unwrap(),
        (records.len() + 1) as u64
    );
    for (reason, n) in [
        ("NDJSON line cut short (torn)", 1),
        ("NDJSON line that is not a JSON object", 1),
        ("NDJSON line longer than any record (1 MiB at most)", 1),
        ("NDJSON line with an unreadable schema_version", 1),
        // By why: the reasons a record was refused for, each line's own.
        ("NDJSON record: `delay_ms` has a value of the wrong type", 1),
        (
            "NDJSON record: invalid type: string \"0.0\", expected f64",
            1,
        ),
    ] {
        assert_eq!(
            summary.skipped.get(reason),
            Some(&n),
            "{reason}: {summary:?}"
        );
    }
    // A record of another major version: this trainer is too old for it; it says which line.
    let newer = line.replacen(
        &format!("\"{}\"", retrywise::attempt::SchemaVersion::CURRENT),
        "\"9.0\"",
        1,
    );
    std::fs::write(&path, format!("{line}\n{newer}\n")).unwrap();
    let e = data::load(&files, &Filter::default(), |_| {}).unwrap_err();
    assert!(matches!(e, TrainError::Input { .. }), "{e}");
    assert!(
        e.to_string().contains("line 2") && e.to_string().contains("9.0"),
        "{e}"
    );
}

/// A prepared file is checked once, when prepared: counting and loading it read what that
/// check passed (an NDJSON file with lines to skip, from the cleaned copy), count each
/// skipped line once, and agree with reading the files afresh.
#[test]
fn a_prepared_file_is_checked_once_and_read_by_count_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let records = synthetic::records(200, 8);
    let dirty = dir.path().join("dirty.ndjson");
    write_ndjson(&records, &dirty);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&dirty)
        .unwrap()
        .write_all(b"garbage\n")
        .unwrap();
    let clean = dir.path().join("clean.parquet");
    // Other calls than the first file's (the same call ids would be the same attempts,
    // read once).
    let mut others = synthetic::records(150, 9);
    others.iter_mut().for_each(|r| r.call_id += 1 << 40);
    write_parquet(&others, &clean);
    let specs = [dir.path().to_string_lossy().into_owned()];
    let files = data::resolve(&specs).unwrap();
    let filter = Filter::default();
    let fresh_count = data::count_rows(&files, &filter).unwrap();
    let (fresh_rows, fresh) = data::load(&files, &filter, |_| {}).unwrap();

    let prepared = data::prepare(&files).unwrap();
    assert_eq!(prepared.len(), 2);
    // The NDJSON file is read from the copy its check made: a line of a newer major
    // version written into it now is neither read nor checked again.
    let newer = serde_json::to_string(&records[0]).unwrap().replacen(
        &format!("\"{}\"", retrywise::attempt::SchemaVersion::CURRENT),
        "\"9.0\"",
        1,
    );
    std::fs::write(&dirty, format!("{newer}\n")).unwrap();
    assert_eq!(
        data::count_prepared(&prepared, &filter).unwrap(),
        fresh_count
    );
    let mut seen = Vec::new();
    let (rows, summary) = data::load_prepared(&prepared, &filter, &data::Sample::ALL, None, |f| {
        seen.push(f.path.clone())
    })
    .unwrap();
    assert_eq!(
        seen,
        files.iter().map(|f| f.path.clone()).collect::<Vec<_>>()
    );
    assert_eq!(rows.len(), fresh_rows.len());
    assert_eq!(rows.len() as u64, fresh_count);
    assert_eq!(summary, fresh);
    assert_eq!(
        summary.skipped.get("NDJSON line that is not a JSON object"),
        Some(&1),
        "{summary:?}"
    );
    // Read afresh, the changed file is checked again, and refused.
    let e = data::count_rows(&files, &filter).unwrap_err();
    assert!(e.to_string().contains("9.0"), "{e}");
}

/// A Parquet file's footer is checked before polars decodes it: a list length damaged
/// there (polars reserves room for it at once, and a failed allocation aborts the process),
/// a file cut short and a metadata length beyond the file are errors naming the file; a
/// whole file reads as before.
#[test]
fn a_damaged_parquet_footer_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    write_parquet(&synthetic::records(50, 3), &good);
    let bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    let meta_len = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    // The damage a random search found: 28 bytes from the schema list's length on, each
    // XOR 0xCC. Unchecked, polars read the length, asked for 223 GB and the process
    // aborted (SIGABRT).
    let meta_start = n - 8 - meta_len;
    let mut damaged = bytes.clone();
    for b in &mut damaged[meta_start + 4..meta_start + 32] {
        *b ^= 0xcc;
    }
    let path = dir.path().join("damaged.parquet");
    std::fs::write(&path, &damaged).unwrap();
    let cut = dir.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..n - 3]).unwrap();
    let lying = dir.path().join("lying.parquet");
    let mut long = bytes.clone();
    long[n - 8..n - 4].copy_from_slice(&(n as u32).to_le_bytes());
    std::fs::write(&lying, &long).unwrap();
    for (path, says) in [
        (&path, "claims a list of"),
        (&cut, "does not end with PAR1"),
        (&lying, "more than the file's"),
    ] {
        let files = data::resolve(&[path.to_string_lossy().into_owned()]).unwrap();
        let e = data::count_rows(&files, &Filter::default()).unwrap_err();
        assert!(matches!(e, TrainError::Input { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&*path.to_string_lossy()) && msg.contains(says),
            "{msg}"
        );
    }
    let files = data::resolve(&[good.to_string_lossy().into_owned()]).unwrap();
    assert_eq!(data::count_rows(&files, &Filter::default()).unwrap(), 50);
}

/// A Parquet file's `schema_version` column is held to the NDJSON lines' rules: rows
/// whose version is not one are skipped and counted, rows without one are read, and a row
/// of another major version stops the run, saying which version and how many rows.
#[test]
fn parquet_rows_are_held_to_the_schema_version_rules() {
    let dir = tempfile::tempdir().unwrap();
    let records = synthetic::records(300, 6);
    let mut fb = FrameBuilder::new();
    for r in &records {
        fb.push(r.clone());
    }
    let df = fb.finish().unwrap();
    let n = df.height();
    let current = retrywise::attempt::SchemaVersion::CURRENT.to_string();
    let with_versions = |versions: Vec<Option<&str>>| {
        let mut df = df.clone();
        df.with_column(Column::new("schema_version".into(), versions))
            .unwrap();
        df
    };
    // Three rows of an unreadable version, two without one, the rest current.
    let mut versions: Vec<Option<&str>> = vec![Some(current.as_str()); n];
    versions[0] = Some("one point four");
    versions[1] = Some("1.");
    versions[2] = Some("");
    versions[3] = None;
    versions[4] = None;
    let path = dir.path().join("a.parquet");
    write_df(with_versions(versions.clone()), &path);
    let files = data::resolve(&[path.to_string_lossy().into_owned()]).unwrap();
    let (_, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(summary.rows_read, (n - 3) as u64, "{summary:?}");
    assert_eq!(
        summary
            .skipped
            .get("Parquet row with an unreadable schema_version"),
        Some(&3),
        "{summary:?}"
    );
    assert_eq!(
        data::count_rows(&files, &Filter::default()).unwrap(),
        (n - 3) as u64
    );
    // Two rows of a newer major version: named, with their count, never skipped.
    versions[7] = Some("9.1");
    versions[8] = Some("9.1");
    write_df(with_versions(versions), &path);
    for e in [
        data::load(&files, &Filter::default(), |_| {}).unwrap_err(),
        data::count_rows(&files, &Filter::default()).unwrap_err(),
    ] {
        assert!(matches!(e, TrainError::Input { .. }), "{e}");
        assert!(
            e.to_string().contains("2 rows of schema version 9.1"),
            "{e}"
        );
    }
    // A version column that is not text is a schema error.
    let mut df = df.clone();
    df.with_column(Column::new("schema_version".into(), vec![1u32; n]))
        .unwrap();
    write_df(df, &path);
    let e = data::load(&files, &Filter::default(), |_| {}).unwrap_err();
    assert!(
        matches!(&e, TrainError::Schema { column, .. } if column == "schema_version"),
        "{e}"
    );
}

/// A filter that matches nothing says what it asked for and what the files hold.
#[test]
fn a_filter_that_matches_nothing_names_what_the_files_hold() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let path = dir.path().join("a.parquet");
    write_parquet(&synthetic::records(300, 8), &path);
    let held =
        data::targets(&data::resolve(&[path.to_string_lossy().into_owned()]).unwrap()).unwrap();
    assert!(!held.is_empty());
    let mut o = opts(&path, &models);
    o.filter.targets = vec!["nowhere".into()];
    let e = train(&o, &mut quiet).unwrap_err();
    assert!(matches!(e, TrainError::NoData(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains("no row of target `nowhere`"), "{e}");
    for t in &held {
        assert!(text.contains(&format!("`{t}`")), "{t}: {e}");
    }
    let mut o = opts(&path, &models);
    o.filter.from_ms = Some(u64::MAX / 2);
    let e = train(&o, &mut quiet).unwrap_err();
    assert!(e.to_string().contains("at or after"), "{e}");
}

#[test]
fn a_record_yields_identical_features_in_training_and_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut records = synthetic::records(3_000, 11);
    records.extend(edge_records());
    let parquet = dir.path().join("p/attempts.parquet");
    let ndjson = dir.path().join("n/attempts.ndjson");
    write_parquet(&records, &parquet);
    std::fs::create_dir_all(ndjson.parent().unwrap()).unwrap();
    write_ndjson(&records, &ndjson);
    let model = LogisticModel::from_weights(0.1, |name| (name.len() as f64 - 15.0) / 40.0).unwrap();
    for file in [&parquet, &ndjson] {
        let files = data::resolve(&[file.to_string_lossy().into_owned()]).unwrap();
        let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
        assert_eq!(summary.skipped_total(), 0, "{summary:?}");
        assert_eq!(rows.len(), records.len());
        for (i, r) in records.iter().enumerate() {
            // Serving: the context as the HTTP API receives it, i.e. the record's JSON.
            let served: AttemptRecord =
                serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
            let want = features::encode(&served.context);
            let got = features::encode(&rows.contexts[i]);
            assert_eq!(
                want.map(f64::to_bits),
                got.map(f64::to_bits),
                "row {i} of {}: {:?} vs {:?}",
                file.display(),
                served.context,
                rows.contexts[i]
            );
            // And what the policy itself knew when it made the attempt.
            assert_eq!(
                features::encode(&r.context).map(f64::to_bits),
                want.map(f64::to_bits),
                "row {i}"
            );
            assert_eq!(
                model.p_success(&rows.contexts[i]).to_bits(),
                model.p_success(&r.context).to_bits()
            );
            assert_eq!(
                rows.success[i],
                r.outcome == retrywise::attempt::Outcome::Success
            );
        }
    }
}

#[test]
fn trains_a_model_that_beats_the_baseline_and_never_overwrites_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data/attempts.parquet");
    write_parquet(&synthetic::records(20_000, 5), &data);
    let models = dir.path().join("models");
    let mut steps = Vec::new();
    let first = train(&opts(&data, &models), &mut |s| steps.push(s)).unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(first.dir, models.join("test/1"));
    for f in ["model.json", "metrics.json", "report.html"] {
        assert!(first.dir.join(f).is_file(), "{f}");
    }
    // Every phase of a long run is told: the fingerprint after the read, the trials, then
    // the chosen penalty's fit on all the training rows.
    let at = |want: fn(&retrywise_train::Step) -> bool| steps.iter().position(want);
    let loaded = at(|s| matches!(s, retrywise_train::Step::Loaded(_))).unwrap();
    let hashing = at(|s| matches!(s, retrywise_train::Step::Fingerprinting)).unwrap();
    let trial = at(|s| matches!(s, retrywise_train::Step::Trial(_))).unwrap();
    let refit = at(|s| matches!(s, retrywise_train::Step::Refit { .. })).unwrap();
    assert!(
        loaded < hashing && hashing < trial && trial < refit,
        "{steps:?}"
    );
    assert!(matches!(
        steps[refit],
        retrywise_train::Step::Refit { rows, .. } if rows == first.artifact.training["train_rows"].as_u64().unwrap() as usize
    ));
    // What was written is what the loader accepts, and predicts as trained.
    let art = store::load_artifact(&first.dir).unwrap();
    assert_eq!(art, first.artifact);
    assert_eq!(art.training["rows"], 20_000);
    assert_eq!(
        art.training["train_rows"].as_u64().unwrap()
            + art.training["validation_rows"].as_u64().unwrap(),
        20_000
    );
    assert!(
        art.training["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("blake3:")
    );
    let m = &first.evaluation.model;
    let b = &first.evaluation.baseline;
    assert!(m.auc.unwrap() > b.auc.unwrap() + 0.01, "{m:?} vs {b:?}");
    assert!(
        m.brier < b.brier && m.log_loss < b.log_loss && m.ece < 0.03,
        "{m:?} vs {b:?}"
    );
    let html = std::fs::read_to_string(first.dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("http_429"));
    // The report names the version it was written as, and the split it was validated by.
    assert!(html.contains("<title>retrywise model test — version 1</title>"));
    assert!(html.contains("latest rows of each target"), "time split");

    // Training again makes version 2; version 1 is left byte for byte.
    let before = std::fs::read(first.dir.join("model.json")).unwrap();
    let second = train(&opts(&data, &models), &mut quiet).unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(std::fs::read(first.dir.join("model.json")).unwrap(), before);
    assert_eq!(store::versions(&models.join("test")).unwrap(), [1, 2]);
    // Same data, same fit: the same weights.
    assert_eq!(second.artifact.weights, first.artifact.weights);
    // A leftover staging folder or stray file is not a version.
    std::fs::create_dir_all(models.join("test/.staging-3-1")).unwrap();
    std::fs::write(models.join("test/notes.txt"), "x").unwrap();
    assert_eq!(train(&opts(&data, &models), &mut quiet).unwrap().version, 3);
}

#[test]
fn the_trainer_filters_by_target_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("attempts.parquet");
    let recs = synthetic::records(9_000, 2);
    write_parquet(&recs, &data);
    let files = data::resolve(&[data.to_string_lossy().into_owned()]).unwrap();
    let mid = recs[4_500].started_at_ms;
    let filter = Filter {
        targets: vec!["payments".into()],
        from_ms: Some(mid),
        until_ms: None,
    };
    let (rows, _) = data::load(&files, &filter, |_| {}).unwrap();
    let want = recs
        .iter()
        .filter(|r| &*r.context.target == "payments" && r.started_at_ms >= mid)
        .count();
    assert_eq!(rows.len(), want);
    assert!(rows.contexts.iter().all(|c| &*c.target == "payments"));
    assert!(rows.started_at_ms.iter().all(|t| *t >= mid));
}

/// The trap: linfa-logistic's probabilities are for the class it took as positive, which
/// follows class frequency. When success is rare, linfa takes *failure* as positive; the
/// trainer must still give the probability of success.
#[test]
fn success_keeps_its_meaning_when_it_is_rare_or_common() {
    for shift in [-4.0, 4.0] {
        let recs = synthetic::records_shifted(30_000, 9, shift);
        let ctxs: Vec<_> = recs.iter().map(|r| r.context.clone()).collect();
        let y: Vec<bool> = recs
            .iter()
            .map(|r| r.outcome == retrywise::attempt::Outcome::Success)
            .collect();
        let rate = y.iter().filter(|v| **v).count() as f64 / y.len() as f64;
        assert!(
            if shift < 0.0 { rate < 0.1 } else { rate > 0.9 },
            "success rate {rate}"
        );
        // linfa itself, to show the trap is live in this data.
        let x = fit::matrix(&ctxs);
        let ds = linfa::DatasetView::new(x.view(), ndarray::ArrayView1::from(&y[..]));
        use linfa::prelude::*;
        let raw = linfa_logistic::LogisticRegression::default()
            .max_iterations(5)
            .fit(&ds)
            .unwrap();
        assert_eq!(
            raw.labels().pos.class,
            shift > 0.0,
            "linfa's positive class follows frequency"
        );

        let opts = FitOptions {
            alphas: vec![1.0],
            ..FitOptions::default()
        };
        let (fitted, _) = fit::fit(&ctxs, &y, &[], &[], &opts, |_| {}).unwrap();
        let model = fitted.model().unwrap();
        let p: Vec<f64> = ctxs.iter().map(|c| model.p_success(c)).collect();
        let mean = p.iter().sum::<f64>() / p.len() as f64;
        assert!(
            (mean - rate).abs() < 0.01,
            "mean p(success) {mean} vs success rate {rate}"
        );
        let auc = retrywise_train::metrics::auc(&p, &y).unwrap();
        assert!(auc > 0.7, "p ranks successes first: AUC {auc}");
        // A high failure rate hurts, in the model as in the rule that made the data.
        let mut good = AttemptContext::first("t");
        good.failure_rate = Some(0.0);
        let mut bad = good.clone();
        bad.failure_rate = Some(0.9);
        assert!(model.p_success(&good) > model.p_success(&bad));
    }
}

#[test]
fn the_time_split_never_leaks_the_future_into_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a.parquet");
    let mut recs = synthetic::records(2_000, 3);
    // Shuffle the times, with many ties.
    for (i, r) in recs.iter_mut().enumerate() {
        r.started_at_ms = ((i * 7_919) % 301) as u64;
    }
    write_parquet(&recs, &data);
    let files = data::resolve(&[data.to_string_lossy().into_owned()]).unwrap();
    let (rows, _) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    let (tr, va, s) = retrywise_train::split_by_time(&rows, 0.2).unwrap();
    assert_eq!(tr.len() + va.len(), rows.len());
    assert!(va.len() >= 400);
    // Per target: no training row of a target is later than its validation rows.
    let from = |c: &retrywise::attempt::AttemptContext| s.validation_from_ms[c.target.as_ref()];
    for (c, t) in tr.contexts.iter().zip(&tr.started_at_ms) {
        assert!(*t < from(c));
    }
    for (c, t) in va.contexts.iter().zip(&va.started_at_ms) {
        assert!(*t >= from(c));
    }
}

/// A record delivered twice (shipping and ingestion are at least once) — in one segment,
/// or in two files, NDJSON and Parquet — is read once and counted as a duplicate; two
/// hedges of one attempt started in the same millisecond are two rows; a log without call
/// ids keeps every row.
#[test]
fn a_record_delivered_twice_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let records = synthetic::records(400, 6);
    let n = records.len();
    let mut with_repeats = records.clone();
    with_repeats.extend(records[..10].iter().cloned());
    let mut hedge = records[20].clone();
    hedge.hedge += 1;
    with_repeats.push(hedge);
    write_ndjson(&with_repeats, &dir.path().join("a.ndjson"));
    write_parquet(&records[..5], &dir.path().join("b.parquet"));
    let files = data::resolve(&[dir.path().to_string_lossy().into_owned()]).unwrap();
    let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(rows.len(), n + 1);
    assert_eq!(
        summary.skipped.get(data::DUPLICATE),
        Some(&15),
        "{summary:?}"
    );
    // The first of each is kept, in place.
    assert_eq!(
        rows.started_at_ms[..n],
        records.iter().map(|r| r.started_at_ms).collect::<Vec<_>>()[..]
    );
    // Without call ids nothing tells two calls apart: every row is kept.
    let lines: Vec<String> = with_repeats
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap();
            v.as_object_mut().unwrap().remove("call_id");
            v.to_string()
        })
        .collect();
    let plain = tempfile::tempdir().unwrap();
    std::fs::write(plain.path().join("a.ndjson"), lines.join("\n") + "\n").unwrap();
    let files = data::resolve(&[plain.path().to_string_lossy().into_owned()]).unwrap();
    let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(rows.len(), with_repeats.len(), "{summary:?}");
}

/// A target whose rows mostly share its earliest millisecond (a batch imported at once,
/// then a few more) is validated on the rows after it, not trained on whole.
#[test]
fn a_target_crowded_at_its_first_millisecond_is_still_validated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a.parquet");
    let mut recs = synthetic::records(1_000, 4);
    for (i, r) in recs.iter_mut().enumerate() {
        r.context.target = "t".into();
        r.started_at_ms = if i < 900 { 5_000 } else { 9_000 + i as u64 };
    }
    write_parquet(&recs, &data);
    let files = data::resolve(&[data.to_string_lossy().into_owned()]).unwrap();
    let (rows, _) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    let (tr, va, s) = retrywise_train::split_by_time(&rows, 0.2).unwrap();
    assert_eq!((tr.len(), va.len()), (900, 100));
    assert_eq!(s.validation_from_ms["t"], 9_900);
    assert!(tr.started_at_ms.iter().all(|&t| t == 5_000));
}

#[test]
fn every_target_is_validated_on_its_own_latest_rows() {
    // Two targets recorded one after the other: a single cut-off would validate on the
    // second alone.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a.parquet");
    let mut recs = synthetic::records(4_000, 5);
    for (i, r) in recs.iter_mut().enumerate() {
        r.context.target = if i < 2_000 { "early" } else { "late" }.into();
        r.started_at_ms = i as u64;
    }
    write_parquet(&recs, &data);
    let files = data::resolve(&[data.to_string_lossy().into_owned()]).unwrap();
    let (rows, _) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    let (tr, va, s) = retrywise_train::split_by_time(&rows, 0.2).unwrap();
    assert_eq!(s.validation_from_ms.len(), 2, "{s:?}");
    for target in ["early", "late"] {
        let n = |r: &retrywise_train::data::Rows| {
            r.contexts
                .iter()
                .filter(|c| c.target.as_ref() == target)
                .count()
        };
        let share = n(&va) as f64 / (n(&va) + n(&tr)) as f64;
        assert!((0.19..0.25).contains(&share), "{target}: {share}");
    }
}

/// `recs` grouped, in their order, into calls of one to `longest` attempts (call numbers
/// from `after + 1`, each named `id(number)`), every third call to target "a" and the others
/// to "b", one millisecond apart from `t0`.
fn calls_of(
    mut recs: Vec<AttemptRecord>,
    longest: u64,
    after: u64,
    t0: u64,
    id: impl Fn(u64) -> u64,
) -> Vec<AttemptRecord> {
    let mut call = after;
    let mut left = 0;
    for (i, r) in recs.iter_mut().enumerate() {
        if left == 0 {
            call += 1;
            left = 1 + (call % longest);
        }
        left -= 1;
        r.call_id = id(call);
        r.context.target = if call.is_multiple_of(3) { "a" } else { "b" }.into();
        r.started_at_ms = t0 + i as u64;
    }
    recs
}

/// Rows of 3,000 calls of one to four attempts each over two targets, in time order.
fn call_rows(dir: &Path) -> retrywise_train::data::Rows {
    let data = dir.join("calls.parquet");
    let recs = calls_of(synthetic::records(7_500, 9), 4, 0, 0, |call| call);
    write_parquet(&recs, &data);
    let files = data::resolve(&[data.to_string_lossy().into_owned()]).unwrap();
    data::load(&files, &Filter::default(), |_| {}).unwrap().0
}

/// Each row's target, call, attempt and start, in the rows' order.
fn row_keys(r: &retrywise_train::data::Rows) -> Vec<(String, Option<u64>, u32, u64)> {
    (0..r.len())
        .map(|i| {
            let c = &r.contexts[i];
            (
                c.target.to_string(),
                r.call_id[i],
                c.attempt,
                r.started_at_ms[i],
            )
        })
        .collect()
}

#[test]
fn the_call_split_is_the_same_whatever_the_order_of_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rows = call_rows(dir.path());
    // The same records, read in another order (other files, other clocks).
    let reversed: Vec<usize> = (0..rows.len()).rev().collect();
    let shuffled = rows.select(&reversed);
    let (ta, va, _) = retrywise_train::split_by_call(&rows, 0.2).unwrap();
    let (tb, vb, _) = retrywise_train::split_by_call(&shuffled, 0.2).unwrap();
    assert_eq!(
        row_keys(&ta),
        row_keys(&tb),
        "training rows, in the same order"
    );
    assert_eq!(
        row_keys(&va),
        row_keys(&vb),
        "validation rows, in the same order"
    );
}

#[test]
fn the_call_split_keeps_each_call_whole_and_holds_out_calls_from_all_times() {
    let dir = tempfile::tempdir().unwrap();
    let rows = call_rows(dir.path());
    let (tr, va, s) = retrywise_train::split_by_call(&rows, 0.2).unwrap();
    assert_eq!(s.split, retrywise_train::SplitBy::Call);
    assert_eq!((s.train_rows, s.validation_rows), (tr.len(), va.len()));
    assert_eq!(tr.len() + va.len(), rows.len());
    // No call on both sides.
    let calls =
        |r: &retrywise_train::data::Rows| -> std::collections::BTreeSet<(String, Option<u64>)> {
            r.contexts
                .iter()
                .zip(&r.call_id)
                .map(|(c, id)| (c.target.to_string(), *id))
                .collect()
        };
    let (ct, cv) = (calls(&tr), calls(&va));
    assert!(ct.is_disjoint(&cv));
    // About a fifth of the calls of each target, drawn from every part of the run: the
    // first and the last third both have validation rows in proportion.
    for target in ["a", "b"] {
        let n = |c: &std::collections::BTreeSet<(String, Option<u64>)>| {
            c.iter().filter(|(t, _)| t == target).count()
        };
        let share = n(&cv) as f64 / (n(&cv) + n(&ct)) as f64;
        assert!((0.15..0.25).contains(&share), "{target}: {share}");
    }
    let end = rows.started_at_ms.iter().max().copied().unwrap();
    for third in [0, 2] {
        let (lo, hi) = (end * third / 3, end * (third + 1) / 3);
        let in_third = |r: &retrywise_train::data::Rows| {
            r.started_at_ms
                .iter()
                .filter(|t| (lo..=hi).contains(*t))
                .count()
        };
        let share = in_third(&va) as f64 / (in_third(&va) + in_third(&tr)) as f64;
        assert!((0.12..0.28).contains(&share), "third {third}: {share}");
    }
    // Each side ordered by target, call, attempt and start; the same draw every time.
    for side in [&tr, &va] {
        assert!(row_keys(side).windows(2).all(|w| w[0] <= w[1]));
    }
    let (_, again, _) = retrywise_train::split_by_call(&rows, 0.2).unwrap();
    assert_eq!(again.call_id, va.call_id);
}

#[test]
fn the_call_split_says_why_it_cannot_split() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = call_rows(dir.path());
    for bad in [0.0, 1.0, -0.5, f64::NAN] {
        let e = retrywise_train::split_by_call(&rows, bad).unwrap_err();
        assert!(e.to_string().contains("within (0, 1)"), "{e}");
    }
    // One call cannot be on both sides.
    rows.call_id.iter_mut().for_each(|id| *id = Some(7));
    rows.contexts.iter_mut().for_each(|c| c.target = "a".into());
    let e = retrywise_train::split_by_call(&rows, 0.5).unwrap_err();
    assert!(matches!(e, TrainError::Split(_)), "{e:?}");
    assert!(e.to_string().contains("1 distinct calls"), "{e}");
    // A log without call ids cannot be split by call (it can by time).
    rows.call_id[3] = None;
    let e = retrywise_train::split_by_call(&rows, 0.5).unwrap_err();
    assert!(
        e.to_string().contains("1 of 7500 rows have no `call_id`"),
        "{e}"
    );
}

#[test]
fn training_split_by_call_says_so_in_the_artifact() {
    let dir = tempfile::tempdir().unwrap();
    call_rows(dir.path());
    let models = dir.path().join("models");
    let mut o = opts(&dir.path().join("calls.parquet"), &models);
    o.split = retrywise_train::SplitBy::Call;
    let t = train(&o, &mut quiet).unwrap();
    assert_eq!(t.artifact.training["split"], "call");
    assert_eq!(t.artifact.training["validation_fraction"], 0.2);
    assert_eq!(
        t.artifact.training["validation_from_ms"],
        serde_json::json!({})
    );
    let v = t.artifact.training["validation_rows"].as_u64().unwrap();
    assert!((1_000..2_000).contains(&v), "{v}");
    // The penalty is chosen on a share of the training rows' calls, never on the
    // validation rows (splitting the training rows again by the same draw held out none
    // of them, and the choice fell back to the validation rows every time).
    assert_eq!(
        t.artifact.training["alpha_chosen_on"],
        "a share of the training rows held out as the validation rows are"
    );
    // So does its report: no "latest" rows, no cut-off times.
    let html = std::fs::read_to_string(t.dir.join("report.html")).unwrap();
    assert!(
        html.contains(&format!(
            "validated on {v} rows: every attempt of a share of the calls (0.2)"
        )),
        "call split"
    );
    assert!(!html.contains("latest"), "call split");
    // The default stays the time split.
    let t = train(
        &opts(&dir.path().join("calls.parquet"), &models),
        &mut quiet,
    )
    .unwrap();
    assert_eq!(t.artifact.training["split"], "time");
}

fn err_of(data: &Path, models: &Path) -> TrainError {
    train(&opts(data, models), &mut quiet).unwrap_err()
}

#[test]
fn no_data_empty_data_and_a_single_class_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    // A folder without logs.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = err_of(&empty, &models);
    assert!(matches!(e, TrainError::NoData(_)), "{e}");
    assert!(e.to_string().contains("no Parquet or NDJSON files"), "{e}");
    // A path that does not exist, a file of another kind, a bad glob.
    let e = err_of(&dir.path().join("nowhere"), &models);
    assert!(e.to_string().ends_with("does not exist"), "{e}");
    std::fs::write(dir.path().join("a.csv"), "x\n").unwrap();
    let e = err_of(&dir.path().join("a.csv"), &models);
    assert!(e.to_string().contains("is neither Parquet"), "{e}");
    let e = train(
        &TrainOptions::new(vec![format!("{}/[", dir.path().display())], &models, "t"),
        &mut quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a valid glob"), "{e}");
    // A Parquet file with the schema and no rows.
    let zero = dir.path().join("zero/a.parquet");
    write_parquet(&[], &zero);
    let e = err_of(&zero, &models);
    assert!(matches!(e, TrainError::NoData(_)), "{e}");
    // An NDJSON file of nothing but garbage.
    let junk = dir.path().join("junk.ndjson");
    std::fs::write(&junk, "{not json\n\n42\n").unwrap();
    let e = err_of(&junk, &models);
    assert!(
        matches!(e, TrainError::NoData(_) | TrainError::Polars { .. }),
        "{e}"
    );
    // All successes.
    let all_ok: Vec<_> = synthetic::records(500, 1)
        .into_iter()
        .map(|mut r| {
            r.outcome = retrywise::attempt::Outcome::Success;
            r
        })
        .collect();
    let one = dir.path().join("one/a.parquet");
    write_parquet(&all_ok, &one);
    let e = err_of(&one, &models);
    assert!(
        matches!(
            e,
            TrainError::SingleClass { successes, rows } if successes == rows && (390..=400).contains(&rows)
        ),
        "{e}"
    );
    assert!(e.to_string().contains("single class"), "{e}");
    // Failures only in the log's last minutes (an outage at its end): the time split holds
    // them all out, and says so rather than that the data has no failures.
    let mut late: Vec<_> = synthetic::records(2_000, 2);
    late.sort_by_key(|r| r.started_at_ms);
    let n = late.len();
    for r in &mut late[..n - n / 20] {
        r.outcome = retrywise::attempt::Outcome::Success;
    }
    assert!(
        late[n - n / 20..]
            .iter()
            .any(|r| r.outcome != retrywise::attempt::Outcome::Success)
    );
    let tail = dir.path().join("tail/a.parquet");
    write_parquet(&late, &tail);
    let e = err_of(&tail, &models);
    assert!(matches!(e, TrainError::Split(_)), "{e}");
    assert!(
        e.to_string()
            .contains("holds out every one of the rows' failures"),
        "{e}"
    );
    assert!(e.to_string().contains("--split call"), "{e}");
    // Nothing was written for any of them.
    assert!(!models.exists() || store::versions(&models.join("test")).unwrap().is_empty());
}

fn frame(cols: Vec<Column>) -> DataFrame {
    let h = cols.first().map_or(0, Column::len);
    DataFrame::new(h, cols).unwrap()
}

#[test]
fn missing_and_mistyped_columns_name_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let p = dir.path().join("missing.parquet");
    write_df(
        frame(vec![
            Column::new("started_at_ms".into(), [1u64, 2]),
            Column::new("target".into(), ["a", "b"]),
            Column::new("outcome".into(), ["success", "retryable"]),
        ]),
        &p,
    );
    let e = err_of(&p, &models);
    assert!(
        matches!(&e, TrainError::Schema { column, .. } if column == "attempt"),
        "{e}"
    );
    assert!(
        e.to_string().ends_with("column `attempt` is missing"),
        "{e}"
    );
    let p = dir.path().join("typed.parquet");
    write_df(
        frame(vec![
            Column::new("started_at_ms".into(), [1u64, 2]),
            Column::new("target".into(), [1i32, 2]),
            Column::new("attempt".into(), [1u32, 2]),
            Column::new("outcome".into(), ["success", "retryable"]),
        ]),
        &p,
    );
    let e = err_of(&p, &models);
    assert!(
        e.to_string()
            .contains("column `target` has type i32, expected str"),
        "{e}"
    );
}

/// A Parquet file from another tool whose columns are not all the schema's fields: those
/// columns are not read, and each is named, with the field it may have been meant as
/// (`retry_after` for `retry_after_ms` read as missing in every row: no Retry-After all
/// day, without a word); a required field misnamed is refused naming the column the file
/// has instead. An NDJSON file has no such columns (it is read with the schema's own).
#[test]
fn columns_that_are_no_field_are_named_with_the_field_they_may_mean() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    // In a Hive-style folder, as `retrywise compact` writes: polars reads its key as a
    // column, which is not one to warn of.
    let p = dir
        .path()
        .join("date=2026-12-07")
        .join("other-tool.parquet");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    write_df(
        frame(vec![
            Column::new("started_at_ms".into(), [1u64, 2, 3]),
            Column::new("target".into(), ["a", "a", "b"]),
            Column::new("attempt".into(), [2u32, 1, 1]),
            Column::new("error".into(), [Some("http_429"), None, None]),
            Column::new("retry_after".into(), [Some(250.0), None, None]),
            Column::new("Status".into(), [Some(429u32), None, None]),
            Column::new("__index_level_0__".into(), [0i64, 1, 2]),
            // As a tool writes a compacted tree back: its partition column, in the file.
            Column::new("date".into(), ["2026-12-07", "2026-12-07", "2026-12-07"]),
            Column::new("outcome".into(), ["retryable", "success", "success"]),
        ]),
        &p,
    );
    let files = data::resolve(&[p.to_string_lossy().into_owned()]).unwrap();
    let prepared = data::prepare(&files).unwrap();
    let unread: Vec<String> = prepared[0]
        .unread_columns()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        unread,
        [
            "`retry_after` (meant as `retry_after_ms`?)",
            "`Status` (meant as `status`?)",
            "`__index_level_0__`",
        ]
    );
    // The rows are read all the same.
    let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(rows.len(), 3, "{summary:?}");

    let p = dir.path().join("misnamed.parquet");
    write_df(
        frame(vec![
            Column::new("started_at_ms".into(), [1u64, 2]),
            Column::new("target".into(), ["a", "b"]),
            Column::new("attempt".into(), [1u32, 2]),
            Column::new("Outcome".into(), ["success", "retryable"]),
        ]),
        &p,
    );
    let e = err_of(&p, &models);
    assert!(
        e.to_string()
            .ends_with("column `outcome` is missing (the file has a column `Outcome`: misnamed?)"),
        "{e}"
    );

    // Neither has an NDJSON file, nor one `retrywise compact` writes (its
    // `unknown_fields` column holds a newer minor version's fields).
    let p = dir.path().join("segment.ndjson");
    write_ndjson(&synthetic::records(20, 3), &p);
    let compacted = dir.path().join("compacted.parquet");
    write_parquet(&synthetic::records(20, 3), &compacted);
    for p in [p, compacted] {
        let files = data::resolve(&[p.to_string_lossy().into_owned()]).unwrap();
        assert!(
            data::prepare(&files).unwrap()[0]
                .unread_columns()
                .is_empty(),
            "{}",
            p.display()
        );
    }
}

/// `--target a --target b` where one matches nothing: the rows of the other train a
/// model, and the one without rows is named, with why - not in the input (misspelt?), or
/// in it but outside the time window.
#[test]
fn a_target_asked_for_without_rows_is_named_with_why() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("two.parquet");
    write_df(
        frame(vec![
            Column::new("started_at_ms".into(), [1_000u64, 2_000, 9_000]),
            Column::new("target".into(), ["payments", "payments", "search"]),
            Column::new("attempt".into(), [1u32, 1, 1]),
            Column::new("outcome".into(), ["success", "retryable", "success"]),
        ]),
        &p,
    );
    let files = data::resolve(&[p.to_string_lossy().into_owned()]).unwrap();
    let prepared = data::prepare(&files).unwrap();
    let absent = |filter: &Filter| {
        let (rows, _) = data::load(&files, filter, |_| {}).unwrap();
        retrywise_train::absent_targets(&prepared, filter, &rows).unwrap()
    };
    let mut filter = Filter {
        targets: vec!["payments".into(), "serach".into(), "search".into()],
        ..Filter::default()
    };
    assert_eq!(
        absent(&filter),
        [("serach".to_owned(), "not in the input (misspelt?)")]
    );
    filter.until_ms = Some(5_000);
    let absent = absent(&filter);
    assert_eq!(absent.len(), 2);
    assert_eq!(absent[1].0, "search");
    assert!(
        absent[1].1.contains("outside the time window"),
        "{absent:?}"
    );
    filter.targets = vec!["payments".into()];
    assert_eq!(
        retrywise_train::absent_targets(
            &prepared,
            &filter,
            &data::load(&files, &filter, |_| {}).unwrap().0
        )
        .unwrap(),
        []
    );
}

/// A folder's entries named like logs that are not regular files are passed over (and
/// warned of): a pipe named `*.ndjson` used to be opened, which waits for a writer for
/// ever, and a broken link failed the whole read.
#[cfg(unix)]
#[test]
fn entries_named_like_logs_that_are_not_files_are_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    write_parquet(&synthetic::records(50, 3), &good);
    let fifo = dir.path().join("pipe.ndjson");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    std::os::unix::fs::symlink(
        dir.path().join("gone.parquet"),
        dir.path().join("link.parquet"),
    )
    .unwrap();
    for spec in [
        dir.path().to_string_lossy().into_owned(),
        dir.path().join("*").to_string_lossy().into_owned(),
    ] {
        let files = data::resolve(std::slice::from_ref(&spec)).unwrap();
        let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
        assert_eq!(paths, [good.as_path()], "{spec}");
    }
    // Named on its own, the pipe is refused, naming what it is.
    let e = data::resolve(&[fifo.to_string_lossy().into_owned()]).unwrap_err();
    assert!(e.to_string().contains("a pipe"), "{e}");
}

/// A log whose every record is refused says why, by reason, in the error and in the
/// summary: a file of records of this schema all lacking `outcome` (or with a number
/// written as text) said only "the input file holds no row".
#[test]
fn records_refused_before_any_row_is_read_are_counted_by_why() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let p = dir.path().join("no-outcome.ndjson");
    let mut f = std::fs::File::create(&p).unwrap();
    for (i, r) in synthetic::records(20, 4).iter().enumerate() {
        let mut v = serde_json::to_value(r).unwrap();
        let obj = v.as_object_mut().unwrap();
        if i < 15 {
            obj.remove("outcome");
        } else {
            obj.insert("attempt".into(), "one".into());
        }
        writeln!(f, "{v}").unwrap();
    }
    drop(f);
    let e = err_of(&p, &models).to_string();
    assert!(e.contains("holds no row"), "{e}");
    assert!(
        e.contains("15 × NDJSON record: missing field `outcome`"),
        "{e}"
    );
    assert!(
        e.contains("5 × NDJSON record: invalid type: string \"one\""),
        "{e}"
    );
    // No position in the reason: one reason for every line.
    assert!(!e.contains(" at line "), "{e}");
}

#[test]
fn a_column_typed_null_is_read_as_empty() {
    // As pyarrow writes a log where a column was empty all day (no 429s: no
    // `retry_after_ms`).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pyarrow.parquet");
    write_df(
        frame(vec![
            Column::new("started_at_ms".into(), [1u64, 2, 3]),
            Column::new("target".into(), ["a", "a", "b"]),
            Column::new("attempt".into(), [1u32, 2, 1]),
            Column::new("error".into(), [None, Some("timeout"), None]),
            Column::new_empty("retry_after_ms".into(), &DataType::Null)
                .extend_constant(AnyValue::Null, 3)
                .unwrap(),
            Column::new("outcome".into(), ["retryable", "success", "success"]),
        ]),
        &p,
    );
    let files = data::resolve(&[p.to_string_lossy().into_owned()]).unwrap();
    let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(rows.len(), 3, "{summary:?}");
    assert_eq!(
        rows.contexts
            .iter()
            .map(|c| c.target.as_ref())
            .collect::<Vec<_>>(),
        ["a", "a", "b"]
    );
    assert!(rows.contexts.iter().all(|c| c.retry_after.is_none()));
}

#[test]
fn whole_numbers_stored_as_floats_are_read_when_whole_and_refused_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("floats.parquet");
    write_df(
        frame(vec![
            Column::new("started_at_ms".into(), [1.0f64, 2.0, 3.0]),
            Column::new("target".into(), ["a", "a", "a"]),
            Column::new("attempt".into(), [1.0f64, 1.5, 2.0]),
            Column::new("error".into(), [None, Some("timeout"), Some("timeout")]),
            Column::new("outcome".into(), ["success", "success", "retryable"]),
        ]),
        &p,
    );
    let files = data::resolve(&[p.to_string_lossy().into_owned()]).unwrap();
    let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows.contexts.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        summary.skipped.get("`attempt` is not a whole number"),
        Some(&1),
        "{summary:?}"
    );
}

/// Another tool's NDJSON log (no `schema_version`) that writes integers as floats - as
/// one that keeps integer columns with gaps as floats does - is read as the Parquet path
/// reads such a file: whole numbers as the integers they are (polars' JSON reader read
/// them as missing, silently: every row lost its status), fractions and numbers beyond the
/// column's range skipped and counted.
#[test]
fn ndjson_integers_written_as_floats_are_read_when_whole_and_refused_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.ndjson");
    let current = format!(
        "\"schema_version\":\"{}\",",
        retrywise::attempt::SchemaVersion::CURRENT
    );
    let mut ctx = AttemptContext::first("floats");
    ctx.attempt = 2;
    ctx.error = Some(ErrorKind::Http503);
    ctx.status = Some(503);
    ctx.in_flight = Some(4);
    let lines: Vec<String> = (0..4u64)
        .map(|i| {
            let r = AttemptRecord::new(
                i,
                0,
                1_764_000_000_000 + i,
                ctx.clone(),
                &Verdict::Success,
                Duration::from_millis(3),
            );
            let line = serde_json::to_string(&r).unwrap().replacen(&current, "", 1);
            assert!(line.contains("\"status\":503,"), "{line}");
            match i {
                0 => line,
                // (A call id beyond 2^53, as a float: the whole number it holds.)
                1 => line
                    .replacen("\"status\":503,", "\"status\":503.0,", 1)
                    .replacen("\"in_flight\":4,", "\"in_flight\":4.0,", 1)
                    .replacen("\"call_id\":1,", "\"call_id\":1.2345678901234567e18,", 1),
                2 => line.replacen("\"status\":503,", "\"status\":503.5,", 1),
                _ => line.replacen("\"status\":503,", "\"status\":1e300,", 1),
            }
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let files = data::resolve(&[path.to_string_lossy().into_owned()]).unwrap();
    let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(rows.len(), 2, "{summary:?}");
    for c in &rows.contexts {
        assert_eq!((c.status, c.in_flight), (Some(503), Some(4)), "{summary:?}");
    }
    assert!(
        rows.call_id.contains(&Some(1_234_567_890_123_456_768)),
        "{:?}",
        rows.call_id
    );
    assert_eq!(
        summary
            .skipped
            .get("NDJSON record: `status` has a value of the wrong type"),
        Some(&2),
        "{summary:?}"
    );
}

/// A file whose name holds `[`, `*` or `?` is read as named: polars took such a name for
/// a pattern, refusing `a[1].parquet` or reading `a1.parquet` in its place.
#[test]
fn a_file_named_like_a_pattern_is_read_as_named() {
    let dir = tempfile::tempdir().unwrap();
    let records = synthetic::records(60, 4);
    let (left, right) = records.split_at(records.len() / 2);
    let at = |name: &str| dir.path().join(name);
    write_parquet(left, &at("a[1].parquet"));
    write_parquet(right, &at("a1.parquet"));
    write_ndjson(left, &at("b[1].ndjson"));
    write_ndjson(right, &at("b1.ndjson"));
    for (named, other) in [("a[1].parquet", "a1.parquet"), ("b[1].ndjson", "b1.ndjson")] {
        let files = data::resolve(&[at(named).to_string_lossy().into_owned()]).unwrap();
        let (rows, _) = data::load(&files, &Filter::default(), |_| {}).unwrap();
        assert_eq!(rows.len(), left.len(), "{named}");
        let want: Vec<u64> = left.iter().map(|r| r.started_at_ms).collect();
        let mut got = rows.started_at_ms.clone();
        got.sort_unstable();
        let mut want = want;
        want.sort_unstable();
        assert_eq!(got, want, "{named} read, not {other}");
    }
}

/// Options that cannot work are refused before any input is read: a tolerance a 32-bit
/// fit holds as zero or infinity, a time window that ends before it starts.
#[test]
fn options_that_cannot_work_are_refused_before_the_data_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let models = dir.path().join("models");
    for tolerance in [1e-60, 1e35, 0.0, f64::NAN] {
        let mut o = opts(&missing, &models);
        o.fit.tolerance = tolerance;
        match train(&o, &mut quiet).unwrap_err() {
            TrainError::InvalidOption { option, .. } => assert_eq!(option, "tolerance"),
            e => panic!("{tolerance}: {e}"),
        }
    }
    let mut o = opts(&missing, &models);
    o.filter.from_ms = Some(1_700_000_000_000);
    o.filter.until_ms = Some(1_600_000_000_000);
    let e = train(&o, &mut quiet).unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::InvalidOption {
                option: "from_ms",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("the time window is empty"), "{e}");
}

#[test]
fn bad_values_are_skipped_and_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("values.parquet");
    let n = 12;
    let good = |i: usize| (8..10).contains(&i);
    // Rows 0..8 each carry one bad value; rows 8 and 9 are fine; row 10 is a first
    // attempt that says how the attempt before it failed (each value in range, together
    // a contradiction); row 11 names an empty target.
    write_df(
        frame(vec![
            Column::new(
                "started_at_ms".into(),
                (0..n as i64)
                    .map(|i| if i == 0 { -5 } else { i })
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "target".into(),
                (0..n)
                    .map(|i| match i {
                        1 => None,
                        11 => Some(""),
                        _ => Some("t"),
                    })
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "attempt".into(),
                (0..n)
                    .map(|i| match i {
                        2 => 0i64,
                        10 => 1,
                        _ => 2,
                    })
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "error".into(),
                (0..n)
                    .map(|i| if i == 3 { "gremlins" } else { "timeout" })
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "latency_ms".into(),
                (0..n)
                    .map(|i| if i == 4 { f64::NAN } else { 12.5 })
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "delay_ms".into(),
                (0..n)
                    .map(|i| if i == 5 { -1.0 } else { 100.0 })
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "failure_rate".into(),
                (0..n)
                    .map(|i| if i == 6 { 1.5 } else { 0.2 })
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "in_flight".into(),
                (0..n)
                    .map(|i| if i == 7 { -3i64 } else { 4 })
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "outcome".into(),
                (0..n)
                    .map(|i| if i == 9 { "retryable" } else { "success" })
                    .collect::<Vec<_>>(),
            ),
        ]),
        &p,
    );
    let files = data::resolve(&[p.to_string_lossy().into_owned()]).unwrap();
    let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(rows.len(), (0..n).filter(|i| good(*i)).count());
    assert_eq!(summary.rows_read, 12);
    assert_eq!(summary.rows, 2);
    let reasons: Vec<(&str, u64)> = summary
        .skipped
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        reasons,
        [
            ("`attempt` is out of range", 1),
            ("`delay_ms` is out of range", 1),
            ("`error` contradicts another field", 1),
            (
                "`error` is not one of timeout, connect, reset, http_429, http_503, http_5xx, http_4xx, other",
                1,
            ),
            ("`failure_rate` is out of range", 1),
            ("`in_flight` is out of range", 1),
            ("`latency_ms` is out of range", 1),
            ("`started_at_ms` is out of range", 1),
            ("`target` has the wrong length", 1),
            ("`target` is required", 1),
        ]
    );
    assert_eq!(
        rows.contexts[0].latency,
        Some(Duration::from_micros(12_500))
    );
    assert_eq!(rows.contexts[0].in_flight, Some(4));
}

#[test]
fn a_corrupt_or_mismatched_model_is_refused_by_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a.parquet");
    write_parquet(&synthetic::records(5_000, 4), &data);
    let models = dir.path().join("models");
    let t = train(&opts(&data, &models), &mut quiet).unwrap();
    let path = t.dir.join("model.json");
    let text = std::fs::read_to_string(&path).unwrap();
    // Truncated.
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let e = store::load_artifact(&t.dir).unwrap_err();
    assert!(matches!(e, TrainError::Model { .. }), "{e}");
    assert!(chain(&e).contains("not a valid model artifact"), "{e}");
    // Trained on another feature set.
    std::fs::write(
        &path,
        text.replace(retrywise::features::FEATURE_SET, "retrywise-features/9"),
    )
    .unwrap();
    let e = store::load_artifact(&t.dir).unwrap_err();
    assert!(
        chain(&e).contains("`features.set` is `retrywise-features/9`"),
        "{e}"
    );
    // Copied into another version's folder.
    std::fs::write(&path, &text).unwrap();
    let moved = models.join("test/7");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::write(moved.join("model.json"), &text).unwrap();
    let e = store::load_artifact(&moved).unwrap_err();
    assert!(e.to_string().contains("holds version 1"), "{e}");
    // Copied anywhere else under its version's number: read (the service, reading a
    // models folder, would refuse it under another model's name, and a warning says so).
    let copied = dir.path().join("elsewhere/1");
    std::fs::create_dir_all(&copied).unwrap();
    std::fs::write(copied.join("model.json"), &text).unwrap();
    assert_eq!(store::load_artifact(&copied).unwrap().name, "test");
    // Missing.
    let e = store::load_artifact(&models.join("test/99")).unwrap_err();
    assert!(matches!(e, TrainError::Io { .. }), "{e}");
    // A stored baseline that is not one is refused, not replaced by one fitted on the
    // rows it is judged on.
    let eval_with = |artifact: &str| {
        std::fs::write(&path, artifact).unwrap();
        retrywise_train::eval(
            &t.dir,
            &[data.to_string_lossy().into_owned()],
            &Filter::default(),
            retrywise_train::data::DEFAULT_MAX_ROWS,
            &mut quiet,
        )
        .unwrap_err()
    };
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["metrics"]["baseline"]["rates"] = serde_json::json!("gremlins");
    let e = eval_with(&v.to_string());
    assert!(
        chain(&e).contains("`metrics.baseline.rates` is not a baseline"),
        "{e}"
    );
    // Nor is one whose rates are not probabilities.
    v["metrics"]["baseline"]["rates"] = serde_json::json!({"rate": {"first": 7.5}, "overall": 0.5});
    let e = eval_with(&v.to_string());
    assert!(
        chain(&e).contains("the rate of `first` is 7.5, not within [0, 1]"),
        "{e}"
    );
    v["metrics"]["baseline"]["rates"] = serde_json::json!({"rate": {}, "overall": -3});
    let e = eval_with(&v.to_string());
    assert!(chain(&e).contains("`overall` is -3"), "{e}");
    // Evaluation refuses it too.
    let e = eval_with("{}");
    assert!(chain(&e).contains("missing field"), "{e}");
}

#[test]
fn eval_scores_a_model_on_other_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.parquet");
    write_parquet(&synthetic::records(20_000, 21), &data);
    let models = dir.path().join("models");
    let t = train(&opts(&data, &models), &mut quiet).unwrap();
    // The artifact says how many training rows followed each kind of failure.
    let rows = t.artifact.features.error_rows.clone().unwrap();
    assert_eq!(
        rows.values().sum::<u64>(),
        t.artifact.training["train_rows"].as_u64().unwrap()
    );
    assert!(rows["first"] > 0 && rows.contains_key("reset"));
    // And per region of the context space: the same rows, each in one region.
    let regions = t.artifact.features.region_rows.clone().unwrap();
    assert_eq!(regions.values().sum::<u64>(), rows.values().sum::<u64>());
    assert!(
        regions
            .keys()
            .all(|k| retrywise::features::region_index(k).is_some())
    );
    assert!(regions.values().all(|n| *n > 0), "only regions with rows");
    let other: PathBuf = dir.path().join("other.ndjson");
    write_ndjson(&synthetic::records(5_000, 22), &other);
    let r = retrywise_train::eval(
        &t.dir,
        &[other.to_string_lossy().into_owned()],
        &Filter::default(),
        retrywise_train::data::DEFAULT_MAX_ROWS,
        &mut quiet,
    )
    .unwrap();
    assert_eq!((r.model.as_str(), r.version), ("test", 1));
    assert_eq!(r.load.rows, 5_000);
    assert_eq!(r.evaluation.model.rows, 5_000);
    assert!(r.evaluation.model.auc.unwrap() > r.evaluation.baseline.auc.unwrap());
    assert!(r.evaluation.by_error.iter().any(|k| k.kind == "http_429"));
    // Every target is scored on its own, and the parts add up to the whole.
    assert!(!r.evaluation.by_target.is_empty());
    assert_eq!(
        r.evaluation.by_target.iter().map(|t| t.rows).sum::<u64>(),
        r.evaluation.model.rows
    );
    // Read whole: the sample says so.
    let s = r.load.sample.unwrap();
    assert!(!s.sampled());
    assert_eq!(s.input_rows, 5_000);
    // Bounded like training: a fifth of the calls, read and scored as a sample.
    let small = retrywise_train::eval(
        &t.dir,
        &[other.to_string_lossy().into_owned()],
        &Filter::default(),
        1_000,
        &mut quiet,
    )
    .unwrap();
    let s = small.load.sample.unwrap();
    assert!(s.sampled() && (s.fraction - 0.2).abs() < 1e-12, "{s:?}");
    assert!(
        (700..1_300).contains(&small.load.rows),
        "{}",
        small.load.rows
    );
    assert_eq!(small.evaluation.model.rows, small.load.rows);
    // And refuses a bound of nothing before reading.
    let e = retrywise_train::eval(
        &t.dir,
        &[other.to_string_lossy().into_owned()],
        &Filter::default(),
        0,
        &mut quiet,
    )
    .unwrap_err();
    assert!(matches!(e, TrainError::InvalidOption { .. }), "{e}");
}

/// Where the latest rows say nothing (their outcomes are coin flips), the validation rows
/// would choose the strongest penalty (a flat model loses least on noise), and then report
/// metrics of a model chosen for them. Chosen on training rows held out, the penalty is the
/// weak one the training rows support, and the validation rows only judge it.
#[test]
fn the_penalty_is_chosen_on_held_out_training_rows_not_on_the_validation_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut recs = synthetic::records(20_000, 31);
    let mut coin = 0x9E37_79B9_u64;
    for r in recs.iter_mut().skip(16_000) {
        coin = coin
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let verdict = if coin >> 63 == 1 {
            Verdict::Success
        } else {
            Verdict::Retryable(Failure::new(ErrorKind::Http503).with_status(503))
        };
        *r = AttemptRecord::new(
            r.call_id,
            r.hedge,
            r.started_at_ms,
            r.context.clone(),
            &verdict,
            Duration::from_millis(40),
        );
    }
    let data = dir.path().join("noisy-tail.parquet");
    write_parquet(&recs, &data);
    let mut o = opts(&data, &dir.path().join("models"));
    o.fit.alphas = vec![1e-2, 1e5];
    let t = train(&o, &mut quiet).unwrap();
    let training = &t.artifact.training;
    assert_eq!(
        training["alpha_chosen_on"],
        "a share of the training rows held out as the validation rows are"
    );
    let loss = |i: usize| {
        training["alpha_search"][i]["validation_log_loss"]
            .as_f64()
            .unwrap()
    };
    assert!(loss(0) < loss(1), "{}", training["alpha_search"]);
    assert_eq!(t.artifact.regularization.alpha, 1e-2);
    // The validation rows judge it: on coin flips it is no better than the flat baseline.
    let m = &t.evaluation.model;
    assert!(m.auc.unwrap() < 0.55, "{m:?}");
    // With one penalty there is nothing to choose.
    o.fit.alphas = vec![1.0];
    let t = train(&o, &mut quiet).unwrap();
    assert_eq!(
        t.artifact.training["alpha_chosen_on"],
        "no choice (one penalty)"
    );
}

#[test]
fn eval_refuses_data_whose_health_was_measured_over_another_window() {
    let dir = tempfile::tempdir().unwrap();
    let windowed = |n, seed, ms| {
        let mut recs = synthetic::records(n, seed);
        for r in &mut recs {
            r.context.health_window = Some(Duration::from_millis(ms));
        }
        recs
    };
    let data = dir.path().join("train.parquet");
    write_parquet(&windowed(20_000, 21, 10_000), &data);
    let t = train(&opts(&data, &dir.path().join("models")), &mut quiet).unwrap();
    let eval_on = |ms| {
        let other = dir.path().join(format!("other-{ms}.ndjson"));
        write_ndjson(&windowed(2_000, 22, ms), &other);
        retrywise_train::eval(
            &t.dir,
            &[other.to_string_lossy().into_owned()],
            &Filter::default(),
            retrywise_train::data::DEFAULT_MAX_ROWS,
            &mut quiet,
        )
    };
    assert_eq!(eval_on(10_000).unwrap().evaluation.model.rows, 2_000);
    let e = eval_on(30_000).unwrap_err();
    assert!(
        e.to_string().contains(
            "the model learned target health over 10000 ms, but the data measured it over 30000 ms"
        ),
        "{e}"
    );
    // A fleet part way through a change of window: the rows measured over the model's
    // window are judged even where they are fewer, and the others counted as skipped.
    let mixed = dir.path().join("mixed.ndjson");
    let mut recs = windowed(2_000, 23, 30_000);
    for r in &mut recs[1_200..] {
        r.context.health_window = Some(Duration::from_millis(10_000));
    }
    write_ndjson(&recs, &mixed);
    let report = retrywise_train::eval(
        &t.dir,
        &[mixed.to_string_lossy().into_owned()],
        &Filter::default(),
        retrywise_train::data::DEFAULT_MAX_ROWS,
        &mut quiet,
    )
    .unwrap();
    assert_eq!(report.evaluation.model.rows, 800);
    assert_eq!(
        report
            .load
            .skipped
            .get("`health_window_ms` is not the 10000 ms kept"),
        Some(&1_200),
        "{:?}",
        report.load.skipped
    );
}

/// Records of calls of one to five attempts over two targets, in time order (one
/// millisecond apart), written as `files` Parquet files of consecutive rows: a call's
/// attempts may straddle two files.
fn call_files(dir: &Path, n: usize, files: usize) -> Vec<AttemptRecord> {
    // Ids as a seeded policy records them: far apart, not consecutive.
    let recs = calls_of(
        synthetic::records(n, 17),
        5,
        1_000,
        1_764_000_000_000,
        |call| call.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 12,
    );
    let per = n.div_ceil(files);
    for (k, chunk) in recs.chunks(per).enumerate() {
        write_parquet(chunk, &dir.join(format!("part-{k:02}.parquet")));
    }
    recs
}

/// Each row's call and start, in the rows' order.
fn call_keys(r: &retrywise_train::data::Rows) -> Vec<(Option<u64>, u64)> {
    r.call_id
        .iter()
        .copied()
        .zip(r.started_at_ms.iter().copied())
        .collect()
}

/// The standard deviation of the rows a sample keeps when each group of rows (a call) is
/// kept whole with probability `f`: `sqrt(f (1 − f) Σ m²)` over the groups' sizes `m`.
fn sample_sd(f: f64, sizes: impl Iterator<Item = usize>) -> f64 {
    (f * (1.0 - f) * sizes.map(|m| (m * m) as f64).sum::<f64>()).sqrt()
}

#[test]
fn sampling_keeps_about_n_rows_of_whole_calls_in_time_order_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("calls");
    call_files(&data, 40_000, 4);
    let files = data::resolve(&[data.to_string_lossy().into_owned()]).unwrap();
    assert_eq!(
        data::count_rows(&files, &Filter::default()).unwrap(),
        40_000
    );
    let (all, _) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(all.len(), 40_000);

    let n = 8_000;
    let sample = data::Sample::for_rows(n, 40_000).unwrap();
    assert_eq!(sample.fraction(), 0.2);
    let (kept, summary) = data::load_sample(&files, &Filter::default(), &sample, |_| {}).unwrap();
    assert_eq!(summary.rows_read, kept.len() as u64);
    assert_eq!(summary.skipped_total(), 0);

    // Exactly the rows of the calls the sample keeps, in the input's order: the predicate
    // run inside polars is `Sample::keeps`, and filtering keeps the time order.
    let want: Vec<(Option<u64>, u64)> = call_keys(&all)
        .into_iter()
        .filter(|(id, t)| sample.keeps(*id, *t))
        .collect();
    assert_eq!(call_keys(&kept), want);
    assert!(kept.started_at_ms.windows(2).all(|w| w[0] <= w[1]));

    // Whole calls: a call is kept with all of its attempts or not at all.
    let mut sizes: std::collections::BTreeMap<Option<u64>, usize> = Default::default();
    for id in &all.call_id {
        *sizes.entry(*id).or_default() += 1;
    }
    let mut kept_sizes: std::collections::BTreeMap<Option<u64>, usize> = Default::default();
    for id in &kept.call_id {
        *kept_sizes.entry(*id).or_default() += 1;
    }
    assert!(kept_sizes.iter().all(|(id, m)| sizes[id] == *m));

    // About n rows: within four standard deviations of a sample of whole calls.
    let sd = sample_sd(0.2, sizes.values().copied());
    let off = (kept.len() as f64 - n as f64).abs();
    assert!(
        off <= 4.0 * sd,
        "{} rows kept, {n} asked, sd {sd}",
        kept.len()
    );
    assert!(sd > 50.0, "the tolerance is not vacuous: sd {sd}");

    // Uniform over time: each quarter of the run keeps its share, within the same bound
    // computed over the calls' rows in that quarter.
    let (t0, t1) = (all.started_at_ms[0], all.started_at_ms[all.len() - 1] + 1);
    for q in 0..4 {
        let (lo, hi) = (t0 + (t1 - t0) * q / 4, t0 + (t1 - t0) * (q + 1) / 4);
        let in_q = |r: &retrywise_train::data::Rows| -> Vec<Option<u64>> {
            r.call_id
                .iter()
                .zip(&r.started_at_ms)
                .filter(|(_, t)| (lo..hi).contains(*t))
                .map(|(id, _)| *id)
                .collect()
        };
        let (whole, part) = (in_q(&all), in_q(&kept));
        let mut per_call: std::collections::BTreeMap<Option<u64>, usize> = Default::default();
        for id in &whole {
            *per_call.entry(*id).or_default() += 1;
        }
        let sd = sample_sd(0.2, per_call.values().copied());
        let off = (part.len() as f64 - 0.2 * whole.len() as f64).abs();
        assert!(
            off <= 4.0 * sd,
            "quarter {q}: {} of {}",
            part.len(),
            whole.len()
        );
    }

    // Deterministic: the same rows again, and the same calls from the files in another
    // order.
    let (again, _) = data::load_sample(&files, &Filter::default(), &sample, |_| {}).unwrap();
    assert_eq!(call_keys(&again), call_keys(&kept));
    let reversed: Vec<_> = files.iter().rev().cloned().collect();
    let (other, _) = data::load_sample(&reversed, &Filter::default(), &sample, |_| {}).unwrap();
    let sorted = |r: &retrywise_train::data::Rows| {
        let mut k = call_keys(r);
        k.sort_unstable();
        k
    };
    assert_eq!(sorted(&other), sorted(&kept));

    // A smaller sample is a subset of this one.
    let small = data::Sample::for_rows(2_000, 40_000).unwrap();
    let (fewer, _) = data::load_sample(&files, &Filter::default(), &small, |_| {}).unwrap();
    let kept_set: std::collections::BTreeSet<_> = call_keys(&kept).into_iter().collect();
    assert!(!fewer.is_empty() && fewer.len() < kept.len());
    assert!(call_keys(&fewer).iter().all(|k| kept_set.contains(k)));

    // The split by call works on the sample, holding out about a fifth of its calls: the
    // two draws are independent.
    let (tr, va, _) = retrywise_train::split_by_call(&kept, 0.2).unwrap();
    let calls = |r: &retrywise_train::data::Rows| {
        r.contexts
            .iter()
            .zip(&r.call_id)
            .map(|(c, id)| (c.target.to_string(), *id))
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (ct, cv) = (calls(&tr), calls(&va));
    assert!(ct.is_disjoint(&cv));
    let share = cv.len() as f64 / (ct.len() + cv.len()) as f64;
    let sd = (0.2 * 0.8 / (ct.len() + cv.len()) as f64).sqrt();
    assert!((share - 0.2).abs() <= 4.0 * sd, "{share}");
}

#[test]
fn sampling_counts_after_the_filter_and_samples_a_log_without_call_ids_by_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("calls");
    let recs = call_files(&data, 12_000, 3);
    let files = data::resolve(&[data.to_string_lossy().into_owned()]).unwrap();
    // The count is of the rows the filter lets through.
    let filter = Filter {
        targets: vec!["a".into()],
        from_ms: None,
        until_ms: None,
    };
    let want = recs.iter().filter(|r| &*r.context.target == "a").count() as u64;
    assert_eq!(data::count_rows(&files, &filter).unwrap(), want);
    let sample = data::Sample::for_rows(want / 2, want).unwrap();
    let (kept, _) = data::load_sample(&files, &filter, &sample, |_| {}).unwrap();
    assert!(kept.contexts.iter().all(|c| &*c.target == "a"));
    assert!(kept.len() < want as usize);

    // Without a `call_id` column, rows are sampled by their start.
    let df = ParquetReader::new(std::fs::File::open(&files[0].path).unwrap())
        .finish()
        .unwrap()
        .drop("call_id")
        .unwrap();
    let bare = dir.path().join("bare.parquet");
    write_df(df, &bare);
    let files = data::resolve(&[bare.to_string_lossy().into_owned()]).unwrap();
    let (all, _) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert!(all.call_id.iter().all(Option::is_none));
    let sample = data::Sample::with_fraction(0.3).unwrap();
    let (kept, _) = data::load_sample(&files, &Filter::default(), &sample, |_| {}).unwrap();
    let want: Vec<u64> = all
        .started_at_ms
        .iter()
        .copied()
        .filter(|t| sample.keeps(None, *t))
        .collect();
    assert_eq!(kept.started_at_ms, want);
    let sd = sample_sd(0.3, std::iter::repeat_n(1, all.len()));
    assert!((kept.len() as f64 - 0.3 * all.len() as f64).abs() <= 4.0 * sd);
}

#[test]
fn training_samples_an_input_larger_than_max_rows_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("calls");
    let recs = call_files(&data, 20_000, 2);
    let mut sizes: std::collections::BTreeMap<u64, usize> = Default::default();
    for r in &recs {
        *sizes.entry(r.call_id).or_default() += 1;
    }
    let models = dir.path().join("models");
    let mut o = opts(&data, &models);
    o.split = retrywise_train::SplitBy::Call;
    o.max_rows = 5_000;
    let mut counted = Vec::new();
    let t = train(&o, &mut |s| {
        if let retrywise_train::Step::Counted(c) = s {
            counted.push(c);
        }
    })
    .unwrap();
    assert_eq!(counted.len(), 1);
    assert!(counted[0].sampled());
    let s = &t.artifact.training["sample"];
    assert_eq!(s["max_rows"], 5_000);
    assert_eq!(s["input_rows"], 20_000);
    assert_eq!(s["fraction"], 0.25);
    let rows = t.artifact.training["rows"].as_u64().unwrap();
    assert_eq!(s["rows_read"], rows);
    let sd = sample_sd(0.25, sizes.values().copied());
    assert!((rows as f64 - 5_000.0).abs() <= 4.0 * sd, "{rows}");
    let html = std::fs::read_to_string(t.dir.join("report.html")).unwrap();
    assert!(html.contains("Sampled: the input had 20000 rows"), "report");

    // An input within max_rows is read whole, and the artifact says so.
    o.max_rows = 20_000;
    let t = train(&o, &mut quiet).unwrap();
    assert_eq!(t.artifact.training["rows"], 20_000);
    assert_eq!(t.artifact.training["sample"]["fraction"], 1.0);
    assert_eq!(t.artifact.training["sample"]["input_rows"], 20_000);
    let html = std::fs::read_to_string(t.dir.join("report.html")).unwrap();
    assert!(!html.contains("Sampled:"));
    // A sample so small that it keeps no call says that, not "no data" (these calls'
    // draws, fixed by their ids, keep none of them at a share of 1 in 20,000).
    o.max_rows = 1;
    let e = train(&o, &mut quiet).unwrap_err();
    assert!(
        e.to_string().contains(
            "the sample of about 1 rows (--max-rows) of the 20000 in the input kept no call"
        ),
        "{e}"
    );
    // The default reads inputs of up to two million rows whole.
    assert_eq!(
        TrainOptions::new(vec![], &models, "x").max_rows,
        data::DEFAULT_MAX_ROWS
    );
}

#[test]
fn max_rows_of_zero_is_refused_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    // Not even the data is looked at.
    let mut o = opts(&dir.path().join("nowhere"), &models);
    o.max_rows = 0;
    let e = train(&o, &mut quiet).unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::InvalidOption {
                option: "max_rows",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("max_rows"), "{e}");
    assert!(!models.exists());
}

#[test]
fn bad_options_are_refused_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    // Data that is not there: an option error must come first, naming the option.
    let missing = dir.path().join("no-such-data");
    let models = dir.path().join("models");
    std::fs::write(dir.path().join("file"), b"").unwrap();
    let mut read = 0;
    let mut count = |_: retrywise_train::Step| read += 1;
    for (edit, says) in [
        (
            Box::new(|o: &mut TrainOptions| o.name = "../escape".into())
                as Box<dyn Fn(&mut TrainOptions)>,
            "is not a valid model name",
        ),
        (
            // A stray space from a shell variable: the artifact would refuse it after the fit.
            Box::new(|o: &mut TrainOptions| o.name = "prod ".into()),
            "is not a valid model name",
        ),
        (
            Box::new(|o: &mut TrainOptions| o.validation_fraction = 1.5),
            "the validation fraction must be within (0, 1)",
        ),
        (
            Box::new(|o: &mut TrainOptions| o.fit.alphas = vec![f64::NAN]),
            "alphas must be non-negative numbers",
        ),
        (
            Box::new(|o: &mut TrainOptions| o.fit.max_iterations = 0),
            "max_iterations must be at least 1",
        ),
        (
            Box::new(|o: &mut TrainOptions| o.models.set_file_name("file")),
            "is a file, not a models folder",
        ),
        (
            Box::new(|o: &mut TrainOptions| o.fit.alphas = vec![1.0, 1e300]),
            "at most 1e12",
        ),
        (
            Box::new(|o: &mut TrainOptions| o.models = "/proc/retrywise/models".into()),
            "cannot be written",
        ),
    ] {
        let mut o = opts(&missing, &models);
        edit(&mut o);
        let e = train(&o, &mut count).unwrap_err();
        assert!(chain(&e).contains(says), "{e}");
        if !says.contains("model") && !says.contains("written") {
            assert!(matches!(e, TrainError::InvalidOption { .. }), "{e:?}");
        }
    }
    assert_eq!(read, 0, "nothing was read");
    assert!(!models.exists());
}

/// Input that is neither a file nor a folder (a device) is named as such, not as missing.
#[test]
fn a_device_given_as_data_is_named_for_what_it_is() {
    let e = data::resolve(&["/dev/null".to_owned()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/dev/null") && e.contains("neither a file nor a folder"),
        "{e}"
    );
    let e = data::resolve(&["/no/such/data".to_owned()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
}

/// A call id is any u64 (the schema's, and ingestion's): one beyond `i64::MAX` (a client
/// drawing random 64-bit ids draws one in every other call) is read as itself from
/// Parquet and from NDJSON, never as "no call id".
#[test]
fn call_ids_beyond_i64_are_read_as_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let ids = [u64::MAX, 1 << 63, (1 << 63) - 1, 7];
    let recs = calls_of(synthetic::records(ids.len(), 9), 1, 0, 0, |call| {
        ids[call as usize - 1]
    });
    for (name, write) in [
        ("ids.parquet", write_parquet as fn(&[AttemptRecord], &Path)),
        ("ids.ndjson", write_ndjson),
    ] {
        let path = dir.path().join(name);
        write(&recs, &path);
        let files = data::resolve(&[path.to_string_lossy().into_owned()]).unwrap();
        let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
        let mut got: Vec<Option<u64>> = rows.call_id.clone();
        got.sort();
        let mut want: Vec<Option<u64>> = ids.iter().copied().map(Some).collect();
        want.sort();
        assert_eq!(got, want, "{name}: {summary:?}");
    }
    // A negative one is no call id: the line is counted as skipped, not read as a log
    // without call ids.
    let path = dir.path().join("negative.ndjson");
    write_ndjson(&recs, &path);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"call_id\":7,", "\"call_id\":-7,", 1)).unwrap();
    let files = data::resolve(&[path.to_string_lossy().into_owned()]).unwrap();
    let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(rows.len(), 3, "{summary:?}");
    assert!(rows.call_id.iter().all(Option::is_some));
    assert_eq!(
        summary.skipped.get(
            "NDJSON record: invalid value: integer `-7`, expected a non-negative whole number"
        ),
        Some(&1),
        "{summary:?}"
    );
    // A log whose lines name no call id at all is a log without call ids: its calls are
    // unknown, its rows kept (as from a Parquet file without the column).
    let path = dir.path().join("bare.ndjson");
    let bare: String = recs
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap();
            v.as_object_mut().unwrap().remove("call_id");
            format!("{v}\n")
        })
        .collect();
    std::fs::write(&path, bare).unwrap();
    let files = data::resolve(&[path.to_string_lossy().into_owned()]).unwrap();
    let (rows, summary) = data::load(&files, &Filter::default(), |_| {}).unwrap();
    assert_eq!(rows.len(), 4, "{summary:?}");
    assert!(rows.call_id.iter().all(Option::is_none));
}
