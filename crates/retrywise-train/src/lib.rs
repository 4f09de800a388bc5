//! # retrywise-train
//!
//! From logged attempts to a calibrated probability that the next attempt succeeds.
//!
//! [`data`] resolves and scans Parquet and NDJSON logs with polars and turns each row back
//! into an `AttemptContext`; the numbers the model sees come from the one feature encoder,
//! `retrywise::features`. [`train`] splits the rows by time, per target (each target's
//! validation rows later than its training rows — not than other targets'; or, for
//! simulated runs, by call: [`SplitBy`]), fits linfa-logistic with the L2 penalty chosen on a share of the training rows held out ([`fit`]),
//! evaluates the model next to a per-error-kind baseline ([`evaluate`](mod@evaluate), [`metrics`]) through
//! the same `LogisticModel` every server and policy uses, and writes a new version
//! `models/<name>/<version>/{model.json, metrics.json, report.html}` ([`store`], [`report`]).
//!
//! ```
//! use std::io::Write;
//! use retrywise_train::{TrainOptions, synthetic, train};
//!
//! // Logged attempts (here synthetic ones) as NDJSON, as the collector writes them.
//! let dir = tempfile::tempdir()?;
//! let mut logs = std::fs::File::create(dir.path().join("seg.ndjson"))?;
//! for r in synthetic::records(2_000, 7) {
//!     writeln!(logs, "{}", serde_json::to_string(&r)?)?;
//! }
//! let models = dir.path().join("models");
//! let mut opts = TrainOptions::new(vec![dir.path().join("seg.ndjson").display().to_string()], &models, "default");
//! opts.fit.alphas = vec![1.0];
//! let trained = train(&opts, &mut |_step| {})?;
//! assert_eq!(trained.version, 1);
//! assert!(trained.dir.join("model.json").exists());
//! // The model's "success" is the attempt's success, whatever class the fit took as positive.
//! assert!(trained.evaluation.model.auc.is_some_and(|auc| auc > 0.5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod data;
mod error;
pub mod evaluate;
pub mod fit;
pub mod metrics;
pub mod report;
pub mod store;
pub mod synthetic;

use std::path::PathBuf;

pub use error::TrainError;
use retrywise::model::{
    ARTIFACT_FORMAT, ARTIFACT_SCHEMA, FeatureSpec, LOGISTIC, LabelSpec, LogisticModel,
    ModelArtifact, POSITIVE_LABEL, Regularization,
};
use serde::Serialize;

use data::{Filter, InputFile, LoadSummary, Rows, Sample, SampleSummary};
use evaluate::{Baseline, Evaluation, evaluate};
use fit::{AlphaTrial, FitOptions};

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Files, folders or globs of Parquet and NDJSON logs.
    pub data: Vec<String>,
    /// The models folder; the model goes to `<models>/<name>/<next version>/`.
    pub models: PathBuf,
    /// The model's name.
    pub name: String,
    /// Which rows.
    pub filter: Filter,
    /// The share of rows held out for validation (the latest, or a share of calls: `split`).
    pub validation_fraction: f64,
    /// How the validation rows are chosen.
    pub split: SplitBy,
    /// The most rows to train and validate on, about: an input with more rows (after the
    /// filter; counted from the Parquet footers first) is read as a uniform sample of
    /// whole calls keeping `max_rows / input rows` of them ([`data::Sample`]), which keeps
    /// memory bounded whatever the input's size. Default [`data::DEFAULT_MAX_ROWS`]; at
    /// least 1 ([`TrainError::InvalidOption`] otherwise). The artifact's `training.sample`
    /// records the input's rows and the fraction kept. The rows are counted before rows
    /// delivered twice and invalid ones are dropped (telling them apart needs every row
    /// read, which the count avoids), so an input full of duplicates keeps fewer rows than
    /// this, never more.
    pub max_rows: u64,
    /// The fit.
    pub fit: FitOptions,
}

impl TrainOptions {
    /// Defaults: all rows (a sample of [`data::DEFAULT_MAX_ROWS`] from larger inputs), the
    /// latest 20 % for validation, the default penalty search.
    pub fn new(data: Vec<String>, models: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            data,
            models: models.into(),
            name: name.into(),
            filter: Filter::default(),
            validation_fraction: 0.2,
            split: SplitBy::Time,
            max_rows: data::DEFAULT_MAX_ROWS,
            fit: FitOptions::default(),
        }
    }
}

/// Progress of a training run, for bars and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Files found.
    Resolved {
        /// How many.
        files: usize,
        /// Their total size.
        bytes: u64,
    },
    /// The input's rows counted (from the Parquet footers), before reading: whether and how
    /// it will be sampled.
    Counted(SampleSummary),
    /// One file read.
    FileRead(PathBuf),
    /// All files read.
    Loaded(LoadSummary),
    /// Rows split.
    Split {
        /// Training rows.
        train: usize,
        /// Validation rows.
        validation: usize,
    },
    /// The training files being fingerprinted (BLAKE3 over every byte, for the artifact's
    /// lineage).
    Fingerprinting,
    /// A penalty fitted.
    Trial(AlphaTrial),
    /// The chosen penalty being fitted on all the training rows (after the trials).
    Refit {
        /// The penalty.
        alpha: f64,
        /// The training rows.
        rows: usize,
    },
    /// Evaluated.
    Evaluated,
    /// Written.
    Written(PathBuf),
}

/// How [`train`] holds rows out for validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitBy {
    /// The latest share of each target's rows ([`split_by_time`]): a target's validation
    /// rows are later than its training rows, as the model will meet the future (another
    /// target's training rows may overlap them in time). For logs of real traffic.
    #[default]
    Time,
    /// A share of the calls, drawn by a hash of target and call id ([`split_by_call`]):
    /// every attempt of a call on one side. For runs that each pass through a regime once —
    /// the simulator's scenarios, whose latest share is mostly one phase (an outage's end,
    /// a recovery), which a time split would hold out of training altogether.
    Call,
}

impl SplitBy {
    /// Its name, as the CLI and the artifact spell it.
    pub fn name(self) -> &'static str {
        match self {
            SplitBy::Time => "time",
            SplitBy::Call => "call",
        }
    }
}

/// The split of rows, per target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitSummary {
    /// How the rows were split.
    pub split: SplitBy,
    /// Training rows.
    pub train_rows: usize,
    /// Validation rows.
    pub validation_rows: usize,
    /// Split by time, per target: its validation rows are those started at or after this
    /// time (ms since the epoch); all its training rows started before it. A target with too
    /// few rows or distinct times to split is left out (all its rows train). Empty when split
    /// by call.
    pub validation_from_ms: std::collections::BTreeMap<String, u64>,
}

/// Splits `rows` as `by` says ([`split_by_time`], [`split_by_call`]).
///
/// # Errors
/// As the split's.
pub fn split(
    rows: &Rows,
    by: SplitBy,
    fraction: f64,
) -> Result<(Rows, Rows, SplitSummary), TrainError> {
    match by {
        SplitBy::Time => split_by_time(rows, fraction),
        SplitBy::Call => split_by_call(rows, fraction),
    }
}

fn check_fraction(fraction: f64) -> Result<(), TrainError> {
    if fraction > 0.0 && fraction < 1.0 {
        Ok(())
    } else {
        Err(TrainError::InvalidOption {
            option: "validation_fraction",
            problem: format!("the validation fraction must be within (0, 1), got {fraction}"),
        })
    }
}

/// Where the call `(target, call_id)` falls in `[0, 1)`: FNV-1a over the target's bytes
/// and the id's, finished by SplitMix64's mixer, so that consecutive ids scatter. The same
/// on every machine and run.
fn call_draw(target: &str, call_id: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.bytes().chain(call_id.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // The top 53 bits as a fraction of 2^53.
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Splits rows by call: the calls whose draw (a hash of target and call id) is below
/// `fraction` go to validation with every attempt they made, the others train. Each side
/// is ordered by the rows' own keys — target, call, attempt, start — so the same records
/// split and train the same whatever the order of the files they were read from (the
/// wall clock of a simulated run is not part of its records' identity).
///
/// A call's attempts stay together because they share what the model learns from (the
/// failure that came before, the target's health at the time): split apart, a retry in
/// validation would be predicted from its own call's first attempt in training.
///
/// # Errors
/// [`TrainError::InvalidOption`] when the fraction is not in (0, 1); [`TrainError::Split`]
/// when a row has no call id, or either side is empty.
pub fn split_by_call(rows: &Rows, fraction: f64) -> Result<(Rows, Rows, SplitSummary), TrainError> {
    split_calls_from(rows, fraction, 0.0)
}

/// [`split_by_call`] among calls whose draws are at least `from` (the training side of a
/// split by call at the fraction `from`): each draw rescaled to `[0, 1)` from there, so
/// that splitting the training rows again holds out `fraction` of their calls (with the
/// draws unscaled, every one is at or above the first split's fraction, and none would).
fn split_calls_from(
    rows: &Rows,
    fraction: f64,
    from: f64,
) -> Result<(Rows, Rows, SplitSummary), TrainError> {
    check_fraction(fraction)?;
    let unknown = rows.call_id.iter().filter(|id| id.is_none()).count();
    if unknown > 0 {
        return Err(TrainError::Split(format!(
            "by call: {unknown} of {} rows have no `call_id` (split by time instead)",
            rows.len()
        )));
    }
    let (mut t, mut v) = (Vec::new(), Vec::new());
    for (i, (c, id)) in rows.contexts.iter().zip(&rows.call_id).enumerate() {
        if (call_draw(&c.target, id.unwrap_or_default()) - from) / (1.0 - from) < fraction {
            v.push(i);
        } else {
            t.push(i);
        }
    }
    if t.is_empty() || v.is_empty() {
        let mut calls: Vec<(&str, Option<u64>)> = rows
            .contexts
            .iter()
            .zip(&rows.call_id)
            .map(|(c, id)| (c.target.as_ref(), *id))
            .collect();
        calls.sort_unstable();
        calls.dedup();
        return Err(TrainError::Split(format!(
            "by call: {} rows of {} distinct calls leave {} to train and {} to validate",
            rows.len(),
            calls.len(),
            t.len(),
            v.len()
        )));
    }
    // Each side in an order of the rows' own (by call, then attempt, then start within
    // the call), not of the files they came from nor of the wall clock the runs started
    // at: the same records train the same model whatever their files' order.
    for side in [&mut t, &mut v] {
        side.sort_by(|&a, &b| {
            let key = |i: usize| {
                let c = &rows.contexts[i];
                (
                    c.target.as_ref(),
                    rows.call_id[i],
                    c.attempt,
                    rows.started_at_ms[i],
                    rows.success[i],
                    c.delay,
                    c.latency,
                    c.elapsed,
                )
            };
            key(a).cmp(&key(b)).then(a.cmp(&b))
        });
    }
    let summary = SplitSummary {
        split: SplitBy::Call,
        train_rows: t.len(),
        validation_rows: v.len(),
        validation_from_ms: Default::default(),
    };
    Ok((rows.select(&t), rows.select(&v), summary))
}

/// Splits rows by time, per target: the latest `fraction` (at least) of each target's
/// rows go to validation; rows sharing a target's cut-off millisecond all go to
/// validation, so no training row of a target is later than a validation row of it.
///
/// Per target, so that every regime in the data is validated on its own latest rows: a
/// single cut-off over data whose targets were recorded one after another (the
/// simulator's suite, or a fleet's targets with different histories) would validate — and
/// choose the regularization — on the last targets alone. A target with a single
/// distinct time trains only; one whose rows mostly share its earliest time validates on
/// the rows after it.
///
/// # Errors
/// [`TrainError::InvalidOption`] when the fraction is not in (0, 1); [`TrainError::Split`]
/// when no target has rows at two distinct times.
pub fn split_by_time(rows: &Rows, fraction: f64) -> Result<(Rows, Rows, SplitSummary), TrainError> {
    check_fraction(fraction)?;
    let n = rows.len();
    if n < 2 {
        return Err(TrainError::Split(format!("{n} rows")));
    }
    let mut by_target: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, c) in rows.contexts.iter().enumerate() {
        by_target.entry(c.target.as_ref()).or_default().push(i);
    }
    let (mut t, mut v) = (Vec::new(), Vec::new());
    let mut from = std::collections::BTreeMap::new();
    for (target, mut idx) in by_target {
        idx.sort_by_key(|&i| rows.started_at_ms[i]);
        let m = idx.len();
        let cut = (((m as f64) * (1.0 - fraction)).floor() as usize).clamp(1, m.max(2) - 1);
        let time = |k: usize| idx.get(k).map(|&i| rows.started_at_ms[i]);
        let mut at = time(cut);
        // Everything at the cut-off time goes to validation.
        let mut first_val = at.map_or(0, |at| idx.partition_point(|&i| rows.started_at_ms[i] < at));
        if first_val == 0
            && let Some(earliest) = at
        {
            // The cut-off fell on the target's earliest millisecond: validate on the rows
            // after it, if any (fewer than the fraction, but the latest there are).
            first_val = idx.partition_point(|&i| rows.started_at_ms[i] <= earliest);
            at = time(first_val);
        }
        match at {
            Some(at) if first_val > 0 => {
                t.extend_from_slice(&idx[..first_val]);
                v.extend_from_slice(&idx[first_val..]);
                from.insert(target.to_owned(), at);
            }
            _ => t.extend_from_slice(&idx),
        }
    }
    if v.is_empty() {
        return Err(TrainError::Split(format!(
            "no target has rows at two distinct milliseconds ({n} rows)"
        )));
    }
    // Each side in time order (ties by position), as the rows came.
    for side in [&mut t, &mut v] {
        side.sort_by_key(|&i| (rows.started_at_ms[i], i));
    }
    let summary = SplitSummary {
        split: SplitBy::Time,
        train_rows: t.len(),
        validation_rows: v.len(),
        validation_from_ms: from,
    };
    Ok((rows.select(&t), rows.select(&v), summary))
}

/// What a training run produced.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The version written.
    pub version: u32,
    /// Its folder.
    pub dir: PathBuf,
    /// The artifact.
    pub artifact: ModelArtifact,
    /// Validation metrics of the model and the baseline.
    pub evaluation: Evaluation,
}

/// A short version string of this build (crate version and, when built from git, the
/// commit).
pub fn code_version() -> String {
    match option_env!("RETRYWISE_GIT_COMMIT") {
        Some(c) if !c.is_empty() => format!("retrywise-train {} ({c})", env!("CARGO_PKG_VERSION")),
        _ => format!("retrywise-train {}", env!("CARGO_PKG_VERSION")),
    }
}

/// Why `files` hold no row that passes `filter`, in the filter's terms: the targets asked
/// for beside those the files hold, and the time window.
fn no_rows(files: &[data::Prepared], filter: &Filter) -> Result<String, TrainError> {
    let mut why = match files.len() {
        1 => "the input file holds no row".to_owned(),
        n => format!("the {n} input files hold no row"),
    };
    if !filter.targets.is_empty() {
        let present = data::targets_prepared(files)?;
        const SHOWN: usize = 20;
        let mut listed = present
            .iter()
            .take(SHOWN)
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if present.len() > SHOWN {
            listed.push_str(&format!(" and {} more", present.len() - SHOWN));
        }
        why.push_str(&format!(
            " of target {} (they hold {})",
            filter
                .targets
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(" or "),
            if present.is_empty() {
                "none".to_owned()
            } else {
                listed
            }
        ));
    }
    let window = match (filter.from_ms, filter.until_ms) {
        (Some(f), Some(u)) => Some(format!("at or after {f} ms and before {u} ms")),
        (Some(f), None) => Some(format!("at or after {f} ms")),
        (None, Some(u)) => Some(format!("before {u} ms")),
        (None, None) => None,
    };
    if let Some(window) = window {
        why.push_str(&format!(" started {window} (ms since the epoch)"));
    }
    // Lines skipped before any row was read: every record of a log refused for one
    // reason said only "no row".
    let skipped = data::skipped_lines(files);
    if !skipped.is_empty() {
        const SHOWN_REASONS: usize = 10;
        let mut list: Vec<String> = skipped
            .iter()
            .take(SHOWN_REASONS)
            .map(|(reason, n)| format!("{n} × {reason}"))
            .collect();
        if skipped.len() > SHOWN_REASONS {
            list.push(format!("{} reasons more", skipped.len() - SHOWN_REASONS));
        }
        why.push_str(&format!("; skipped: {}", list.join("; ")));
    }
    Ok(why)
}

/// The targets `filter` asks for of which `rows` hold none, each with why: not in the
/// input at all (a misspelt `--target` beside ones that matched would otherwise train a
/// model without it, and say nothing), or in it but not read (outside the time window,
/// left out of the sample, or skipped by the rows' rules). Empty when every target asked for has rows, or none was asked
/// for.
///
/// # Errors
/// The input's targets cannot be listed (a file unreadable since it was counted).
pub fn absent_targets(
    files: &[data::Prepared],
    filter: &Filter,
    rows: &data::Rows,
) -> Result<Vec<(String, &'static str)>, TrainError> {
    if filter.targets.is_empty() {
        return Ok(Vec::new());
    }
    let seen: std::collections::HashSet<&str> = rows.contexts.iter().map(|c| &*c.target).collect();
    let unseen: Vec<&String> = filter
        .targets
        .iter()
        .filter(|t| !seen.contains(t.as_str()))
        .collect();
    if unseen.is_empty() {
        return Ok(Vec::new());
    }
    let present = data::targets_prepared(files)?;
    Ok(unseen
        .into_iter()
        .map(|t| {
            let why = if present.binary_search(t).is_ok() {
                "in the input, but none of its rows read (outside the time window, left out of the sample, or skipped: see the rows skipped)"
            } else {
                "not in the input (misspelt?)"
            };
            (t.clone(), why)
        })
        .collect())
}

/// Warns of each of [`absent_targets`].
fn warn_of_absent_targets(
    files: &[data::Prepared],
    filter: &Filter,
    rows: &data::Rows,
) -> Result<(), TrainError> {
    for (target, why) in absent_targets(files, filter, rows)? {
        tracing::warn!("no row of target `{target}`: {why}");
    }
    Ok(())
}

/// Reads `data` through `filter` with memory bounded by `max_rows`: the input's rows are
/// counted first, and a larger input is read as a uniform sample of whole calls
/// ([`Sample::for_rows`]); the summary records the sample. What training and evaluation
/// both read their rows with.
///
/// # Errors
/// `max_rows` of 0 (before any file is opened), unusable inputs, no usable row.
fn read_bounded(
    data: &[String],
    filter: &Filter,
    max_rows: u64,
    window: Option<std::time::Duration>,
    progress: &mut dyn FnMut(Step),
) -> Result<(Vec<InputFile>, data::Rows, LoadSummary, SampleSummary), TrainError> {
    // Checked before any file is opened.
    Sample::for_rows(max_rows, 0)?;
    filter.check()?;
    let files: Vec<InputFile> = data::resolve(data)?;
    progress(Step::Resolved {
        files: files.len(),
        bytes: files.iter().map(|f| f.bytes).sum(),
    });
    // Each file's lines or versions are checked once, for the count and the load.
    let prepared = data::prepare(&files)?;
    let input_rows = data::count_prepared(&prepared, filter)?;
    if input_rows == 0 {
        return Err(TrainError::NoData(no_rows(&prepared, filter)?));
    }
    let sample = Sample::for_rows(max_rows, input_rows)?;
    let sampled = SampleSummary {
        max_rows,
        input_rows,
        fraction: sample.fraction(),
    };
    if sampled.sampled() {
        tracing::info!(
            input_rows,
            max_rows,
            fraction = sample.fraction(),
            "sampling whole calls"
        );
    }
    progress(Step::Counted(sampled));
    let (rows, mut load) = data::load_prepared(&prepared, filter, &sample, window, |f| {
        progress(Step::FileRead(f.path.clone()))
    })?;
    warn_of_absent_targets(&prepared, filter, &rows)?;
    // The cleaned copies of NDJSON files go before the fit.
    drop(prepared);
    load.sample = Some(sampled);
    tracing::info!(
        rows = load.rows,
        rows_read = load.rows_read,
        input_rows,
        fraction = sample.fraction(),
        skipped = load.skipped_total(),
        files = files.len(),
        "loaded"
    );
    progress(Step::Loaded(load.clone()));
    if rows.is_empty() {
        // A sample of a few rows' worth may keep no call at all: say so, not "no data".
        if sampled.sampled() && load.rows_read == 0 {
            return Err(TrainError::NoData(format!(
                "the sample of about {max_rows} rows (--max-rows) of the {input_rows} in the input kept no call: raise it"
            )));
        }
        return Err(TrainError::NoData(format!(
            "{} rows read, none usable (skipped: {:?})",
            load.rows_read, load.skipped
        )));
    }
    Ok((files, rows, load, sampled))
}

/// Refuses a split that left the training rows a single class when the rows as read held
/// both (an outage in the last hours of a log, and the time split holding them all out):
/// the fit's own "single class" would read as if the data had no failures.
fn one_class_by_the_split(
    all: &[bool],
    train: &[bool],
    opts: &TrainOptions,
) -> Result<(), TrainError> {
    let one_class = |ys: &[bool]| {
        let successes = ys.iter().filter(|s| **s).count();
        successes == 0 || successes == ys.len()
    };
    if one_class(train) && !one_class(all) {
        let (held, kept) = if train.first() == Some(&true) {
            ("failures", "successes")
        } else {
            ("successes", "failures")
        };
        let instead = match opts.split {
            SplitBy::Time => "split by call (--split call) or hold out less",
            SplitBy::Call => "hold out less (--validation-fraction)",
        };
        return Err(TrainError::Split(format!(
            "the {} split (--validation-fraction {}) holds out every one of the rows' {held}: \
             the {} training rows are all {kept}; {instead}",
            opts.split.name(),
            opts.validation_fraction,
            train.len()
        )));
    }
    Ok(())
}

/// Trains a model and writes it as a new version.
///
/// # Errors
/// Unusable inputs, no rows, a single class, a failed fit, or a failed write.
pub fn train(opts: &TrainOptions, progress: &mut dyn FnMut(Step)) -> Result<Trained, TrainError> {
    let span = tracing::info_span!("train", name = %opts.name);
    let _enter = span.enter();
    // Options are checked before the data is read: a typo must not cost a long read.
    store::check_name(&opts.models, &opts.name)?;
    check_fraction(opts.validation_fraction)?;
    fit::check_options(&opts.fit)?;
    let (files, rows, load, sampled) =
        read_bounded(&opts.data, &opts.filter, opts.max_rows, None, progress)?;
    // Hashed right after the read (the files likely still in the page cache), so that it
    // names the bytes trained on, and a file compacted away during the fit cannot throw
    // the fit away.
    progress(Step::Fingerprinting);
    let fingerprint = {
        let _s = tracing::info_span!("fingerprint", files = files.len()).entered();
        store::fingerprint(&files)?
    };
    let (tr, va, split) = split(&rows, opts.split, opts.validation_fraction)?;
    one_class_by_the_split(&rows.success, &tr.success, opts)?;
    tracing::info!(
        split = opts.split.name(),
        train = split.train_rows,
        validation = split.validation_rows,
        "split"
    );
    progress(Step::Split {
        train: tr.len(),
        validation: va.len(),
    });
    // What the artifact says of all the rows, taken now: the split holds its own copies,
    // and the rows as read are dropped before the fit builds its matrix.
    let (t0, t1) = (
        rows.started_at_ms.iter().copied().min().unwrap_or(0),
        rows.started_at_ms.iter().copied().max().unwrap_or(0),
    );
    let n_rows = rows.len();
    let success_rate = rows.success.iter().filter(|s| **s).count() as f64 / n_rows as f64;
    let health_window = rows.health_window;
    drop(rows);
    let (fitted, trials, chosen_on) = fit_chosen(&tr, &va, opts, progress)?;
    let baseline = Baseline::fit(&tr.contexts, &tr.success);
    let mut artifact = ModelArtifact {
        format: ARTIFACT_FORMAT.into(),
        schema_version: ARTIFACT_SCHEMA.into(),
        name: opts.name.clone(),
        version: 0,
        kind: LOGISTIC.into(),
        label: LabelSpec {
            positive: POSITIVE_LABEL.into(),
            definition: "outcome == \"success\"".into(),
        },
        features: FeatureSpec::current()
            .with_health_window(health_window)
            .with_error_rows(error_rows(&tr.contexts))
            .with_region_rows(region_rows(&tr.contexts)),
        scaler: fitted.scaler.clone(),
        weights: fitted.weights.clone(),
        intercept: fitted.intercept,
        regularization: Regularization {
            kind: "l2".into(),
            alpha: fitted.alpha,
        },
        training: serde_json::json!({
            "rows": n_rows,
            "split": split.split,
            "validation_fraction": opts.validation_fraction,
            "train_rows": split.train_rows,
            "validation_rows": split.validation_rows,
            "validation_from_ms": split.validation_from_ms,
            "time_range_ms": [t0, t1],
            "success_rate": success_rate,
            "files": files.iter().map(|f| serde_json::json!({"path": f.path, "bytes": f.bytes, "format": f.format})).collect::<Vec<_>>(),
            "fingerprint": fingerprint,
            "filter": {"targets": opts.filter.targets, "from_ms": opts.filter.from_ms, "until_ms": opts.filter.until_ms},
            "sample": {"max_rows": sampled.max_rows, "input_rows": sampled.input_rows, "fraction": sampled.fraction, "rows_read": load.rows_read, "by": "a hash of call_id: whole calls, in time order (rows without one: a hash of started_at_ms, row by row)"},
            "skipped": load.skipped,
            "alpha_search": trials,
            "alpha_chosen_on": chosen_on,
            "solver": {"library": "linfa-logistic 0.8 (L-BFGS)", "precision": "f32", "tolerance": opts.fit.tolerance, "max_iterations": opts.fit.max_iterations, "start": "the success log-odds, then a fit on every 20th row"},
        }),
        metrics: serde_json::Value::Null,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        code_version: code_version(),
    };
    let model = LogisticModel::from_artifact(&artifact).map_err(|e| TrainError::Model {
        path: opts.models.clone(),
        source: e,
    })?;
    let evaluation = evaluate(&model, &baseline, &va.contexts, &va.success);
    progress(Step::Evaluated);
    artifact.metrics = serde_json::json!({
        "validation": evaluation.model,
        "baseline": {"kind": "success rate per previous error kind", "validation": evaluation.baseline, "rates": baseline},
        "by_error": evaluation.by_error,
        "by_target": evaluation.by_target,
        "delay_curves": report::delay_curves(&model, &va),
    });
    let (version, dir) = store::write_new_version(&opts.models, &opts.name, &mut artifact, |a| {
        report::html(a, &evaluation, &model, &va)
    })?;
    tracing::info!(version, dir = %dir.display(), "written");
    progress(Step::Written(dir.clone()));
    Ok(Trained {
        version,
        dir,
        artifact,
        evaluation,
    })
}

/// Fits the model on `tr`, its L2 penalty chosen among several on rows the validation
/// rows `va` are not: the penalties are tried on the training rows split again as `opts`
/// splits (a share held out to choose on), and the one chosen is fitted on all of `tr` —
/// so the metrics `va` gives are of a model no choice was made on them for. With one
/// penalty there is no choice, and its trial is scored on `va`. Returns the fit, the
/// trials and what the choice was made on.
fn fit_chosen(
    tr: &Rows,
    va: &Rows,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(Step),
) -> Result<(fit::Fitted, Vec<fit::AlphaTrial>, &'static str), TrainError> {
    let mut trial = |t: &fit::AlphaTrial| {
        tracing::info!(alpha = t.alpha, log_loss = t.validation_log_loss, "fitted");
        progress(Step::Trial(t.clone()));
    };
    // The training rows split again the way the rows were: by time, the latest share of
    // them; by call, a share of their calls (drawn again among theirs).
    let again = |tr: &Rows| match opts.split {
        SplitBy::Time => split_by_time(tr, opts.validation_fraction),
        SplitBy::Call => split_calls_from(tr, opts.validation_fraction, opts.validation_fraction),
    };
    let choose_on = (opts.fit.alphas.len() > 1)
        .then(|| again(tr).ok())
        .flatten()
        .filter(|(inner, held, _)| {
            let mixed = |r: &Rows| r.success.iter().any(|s| *s) && r.success.iter().any(|s| !*s);
            mixed(inner) && !held.is_empty()
        });
    let Some((inner, held, _)) = choose_on else {
        let (fitted, trials) = fit::fit(
            &tr.contexts,
            &tr.success,
            &va.contexts,
            &va.success,
            &opts.fit,
            &mut trial,
        )?;
        let on = if opts.fit.alphas.len() > 1 {
            // (Training rows too few to split again: said in the artifact and the log.)
            tracing::warn!(
                train_rows = tr.len(),
                "the training rows cannot be split again to choose the penalty on: it is chosen on the validation rows, whose metrics are then optimistic"
            );
            "the validation rows (the training rows could not be split again)"
        } else {
            "no choice (one penalty)"
        };
        return Ok((fitted, trials, on));
    };
    let (chosen, trials) = fit::fit(
        &inner.contexts,
        &inner.success,
        &held.contexts,
        &held.success,
        &opts.fit,
        &mut trial,
    )?;
    drop((inner, held));
    progress(Step::Refit {
        alpha: chosen.alpha,
        rows: tr.len(),
    });
    // The chosen penalty on all the training rows, scored on nothing: the validation rows
    // would only score it (a score nobody reads), at the cost of their feature matrix.
    let fitted = fit::fit_alpha(&tr.contexts, &tr.success, chosen.alpha, &opts.fit)?;
    Ok((
        fitted,
        trials,
        "a share of the training rows held out as the validation rows are",
    ))
}

/// Training rows per region of the context space ([`retrywise::features::region`]), the
/// regions with rows.
fn region_rows(
    contexts: &[retrywise::attempt::AttemptContext],
) -> std::collections::BTreeMap<String, u64> {
    let mut rows = vec![0u64; retrywise::features::N_REGIONS];
    for c in contexts {
        rows[retrywise::features::region(c)] += 1;
    }
    rows.iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (retrywise::features::region_name(i), *n))
        .collect()
}

/// Training rows per previous error kind (`first` for first attempts), every kind listed.
fn error_rows(
    contexts: &[retrywise::attempt::AttemptContext],
) -> std::collections::BTreeMap<String, u64> {
    let mut rows: std::collections::BTreeMap<String, u64> = std::iter::once("first")
        .chain(
            retrywise::attempt::ErrorKind::ALL
                .iter()
                .map(|k| k.as_str()),
        )
        .map(|k| (k.to_owned(), 0))
        .collect();
    for c in contexts {
        *rows
            .entry(evaluate::kind_key(c.error).to_owned())
            .or_default() += 1;
    }
    rows
}

/// A model's evaluation on other data.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The model's name.
    pub model: String,
    /// Its version.
    pub version: u32,
    /// What was read.
    pub load: LoadSummary,
    /// The metrics, with the baseline the model was trained next to.
    pub evaluation: Evaluation,
}

/// Evaluates the model in `model_dir` (a version folder or its `model.json`) on logs.
///
/// The baseline is the one stored with the model (success rates per previous error kind
/// of its training data), so both are judged on data neither has seen. Like training, it
/// reads at most about `max_rows` rows: a larger input is read as a uniform sample of whole
/// calls (`load.sample` says so), so memory stays bounded whatever the input's size.
///
/// # Errors
/// An invalid artifact; `max_rows` of 0; unusable inputs; no usable rows; rows whose
/// target health was measured over another window than the model learned it over.
pub fn eval(
    model_dir: &std::path::Path,
    data: &[String],
    filter: &Filter,
    max_rows: u64,
    progress: &mut dyn FnMut(Step),
) -> Result<EvalReport, TrainError> {
    let artifact = store::load_artifact(model_dir)?;
    let model = LogisticModel::from_artifact(&artifact).map_err(|source| TrainError::Model {
        path: model_dir.to_path_buf(),
        source,
    })?;
    // The stored baseline is checked before any data is read: a bad artifact is refused at
    // once.
    let stored = artifact
        .metrics
        .get("baseline")
        .and_then(|b| b.get("rates"))
        .map(|r| {
            serde_json::from_value::<Baseline>(r.clone())
                .map_err(|e| e.to_string())
                .and_then(|b| b.check().map(|()| b))
                .map_err(|e| TrainError::Input {
                    path: model_dir.join("model.json"),
                    problem: format!("`metrics.baseline.rates` is not a baseline: {e}"),
                })
        })
        .transpose()?;
    // The rows measured over the model's health window are kept where the data holds
    // any (the others are counted as skipped).
    let learned = artifact.features.health_window();
    let (_, rows, load, _) = read_bounded(data, filter, max_rows, learned, progress)?;
    // Health measured over another window means something else to the model: its metrics
    // on those rows would judge a model nobody serves with them.
    if let (Some(learned), Some(measured)) = (learned, rows.health_window)
        && learned != measured
    {
        return Err(TrainError::Input {
            path: model_dir.to_path_buf(),
            problem: format!(
                "the model learned target health over {} ms, but the data measured it over {} ms \
                 (`health_window_ms`): its health features mean something else there",
                learned.as_millis(),
                measured.as_millis()
            ),
        });
    }
    let baseline = match stored {
        Some(b) => b,
        // An artifact written without one (by hand, or by another tool): the baseline is
        // fitted on the rows it is judged on, which flatters it - said, not hidden.
        None => {
            tracing::warn!(
                model = %model_dir.display(),
                "the model stores no baseline (metrics.baseline.rates): fitting it on the evaluation rows, which flatters it"
            );
            Baseline::fit(&rows.contexts, &rows.success)
        }
    };
    let evaluation = evaluate(&model, &baseline, &rows.contexts, &rows.success);
    progress(Step::Evaluated);
    Ok(EvalReport {
        model: artifact.name,
        version: artifact.version,
        load,
        evaluation,
    })
}
