//! From log files to training rows: resolve paths, scan with polars, check the schema,
//! clean, and turn each row back into an [`AttemptContext`] for the encoder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use polars::prelude::*;
use retrywise::attempt::{AttemptContext, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Columns a log must have; the others of the attempt schema are optional.
pub const REQUIRED: &[&str] = &["started_at_ms", "target", "attempt", "outcome"];

/// The columns read, with the type each is read as: integers as i64 (so a negative value
/// is seen, and counted, rather than failing the cast), floats as f64.
fn wanted() -> Vec<(&'static str, DataType)> {
    vec![
        ("started_at_ms", DataType::Int64),
        ("target", DataType::String),
        ("attempt", DataType::Int64),
        ("error", DataType::String),
        ("status", DataType::Int64),
        ("latency_ms", DataType::Float64),
        ("elapsed_ms", DataType::Float64),
        ("retry_after_ms", DataType::Float64),
        ("delay_ms", DataType::Float64),
        ("failure_rate", DataType::Float64),
        ("latency_p95_ms", DataType::Float64),
        ("in_flight", DataType::Int64),
        ("outcome", DataType::String),
    ]
}

/// The kind of a log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Parquet (from `retrywise compact` or `sim generate`).
    Parquet,
    /// NDJSON segments (from the collector).
    Ndjson,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Its path as found.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Its size in bytes.
    pub bytes: u64,
}

fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".parquet") {
        Some(Format::Parquet)
    } else if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
        // `.ndjson.open` (a segment being written) does not match: only closed segments.
        Some(Format::Ndjson)
    } else {
        None
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TrainError> {
    let entries = std::fs::read_dir(dir).map_err(|e| TrainError::io("read directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io("read directory", dir, e))?;
        let path = entry.path();
        // Symbolic links to folders are not followed (a link loop would never end).
        let is_dir = entry
            .file_type()
            .map_err(|e| TrainError::io("read directory", dir, e))?
            .is_dir();
        if is_dir {
            walk(&path, out)?;
        } else if format_of(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// Resolves files, folders (searched recursively for `*.parquet`, `*.ndjson`, `*.jsonl`)
/// and glob patterns into a sorted, de-duplicated list of input files.
///
/// # Errors
/// [`TrainError::NoData`] if nothing matches; [`TrainError::Input`] for a path that does
/// not exist or a file of an unknown kind; I/O errors.
pub fn resolve(specs: &[String]) -> Result<Vec<InputFile>, TrainError> {
    let mut paths = Vec::new();
    for spec in specs {
        let p = Path::new(spec);
        if p.is_dir() {
            walk(p, &mut paths)?;
        } else if p.is_file() {
            if format_of(p).is_none() {
                return Err(TrainError::Input {
                    path: p.to_path_buf(),
                    problem: "is neither Parquet (.parquet) nor NDJSON (.ndjson, .jsonl)".into(),
                });
            }
            paths.push(p.to_path_buf());
        } else if spec.contains(['*', '?', '[']) {
            let matches = glob::glob(spec).map_err(|e| TrainError::Input {
                path: p.to_path_buf(),
                problem: format!("is not a valid glob: {e}"),
            })?;
            for m in matches {
                let m = m.map_err(|e| {
                    let path = e.path().to_path_buf();
                    TrainError::io("glob", &path, e.into())
                })?;
                if m.is_dir() {
                    walk(&m, &mut paths)?;
                } else if format_of(&m).is_some() {
                    paths.push(m);
                }
            }
        } else {
            return Err(TrainError::Input {
                path: p.to_path_buf(),
                problem: "does not exist".into(),
            });
        }
    }
    paths.sort();
    paths.dedup();
    if paths.is_empty() {
        return Err(TrainError::NoData(format!(
            "no Parquet or NDJSON files in {}",
            specs.join(", ")
        )));
    }
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::metadata(&path)
                .map_err(|e| TrainError::io("stat", &path, e))?
                .len();
            let format = format_of(&path).unwrap_or(Format::Parquet);
            Ok(InputFile {
                path,
                format,
                bytes,
            })
        })
        .collect()
}

/// Which rows to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
    /// Only attempts started at or after this time, ms since the epoch.
    pub from_ms: Option<u64>,
    /// Only attempts started before this time.
    pub until_ms: Option<u64>,
}

/// What loading read and dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Files read.
    pub files: usize,
    /// Rows read (after the filter).
    pub rows_read: u64,
    /// Rows kept.
    pub rows: u64,
    /// Rows dropped, by reason.
    pub skipped: BTreeMap<String, u64>,
}

impl LoadSummary {
    fn skip(&mut self, reason: &str, n: u64) {
        if n > 0 {
            *self.skipped.entry(reason.to_owned()).or_default() += n;
        }
    }

    /// All rows dropped.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// Training rows: one attempt each, its context, its outcome and when it started.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// What was known before each attempt.
    pub contexts: Vec<AttemptContext>,
    /// Whether it succeeded.
    pub success: Vec<bool>,
    /// When it started, ms since the epoch.
    pub started_at_ms: Vec<u64>,
}

impl Rows {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.success.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.success.is_empty()
    }

    /// The rows at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Rows {
        Rows {
            contexts: idx.iter().map(|&i| self.contexts[i].clone()).collect(),
            success: idx.iter().map(|&i| self.success[i]).collect(),
            started_at_ms: idx.iter().map(|&i| self.started_at_ms[i]).collect(),
        }
    }
}

fn scan(file: &InputFile) -> Result<LazyFrame, TrainError> {
    let path = file.path.to_str().ok_or_else(|| TrainError::Input {
        path: file.path.clone(),
        problem: "is not valid UTF-8".into(),
    })?;
    let polars = |e: PolarsError| TrainError::Polars {
        path: file.path.clone(),
        source: e,
    };
    match file.format {
        Format::Parquet => {
            LazyFrame::scan_parquet(PlRefPath::new(path), ScanArgsParquet::default())
                .map_err(polars)
        }
        Format::Ndjson => {
            // Read as the types `wanted` asks for (polars' JSON reader does not build every
            // narrow integer type); a value of the wrong type reads as null and is counted.
            let schema: Schema = wanted()
                .into_iter()
                .map(|(name, dt)| Field::new(name.into(), dt))
                .collect();
            LazyJsonLineReader::new(PlRefPath::new(path))
                .with_schema(Some(Arc::new(schema)))
                .with_ignore_errors(true)
                .finish()
                .map_err(polars)
        }
    }
}

/// Checks a file's columns: the required ones must exist, and every wanted one present
/// must have a type that converts.
fn check_schema(file: &InputFile, lf: &mut LazyFrame) -> Result<Vec<Expr>, TrainError> {
    let schema = lf.collect_schema().map_err(|e| TrainError::Polars {
        path: file.path.clone(),
        source: e,
    })?;
    for col in REQUIRED {
        if schema.get(col).is_none() {
            return Err(TrainError::Schema {
                path: file.path.clone(),
                column: (*col).to_owned(),
                problem: "is missing".into(),
            });
        }
    }
    let mut exprs = Vec::new();
    for (name, want) in wanted() {
        match schema.get(name) {
            None => exprs.push(lit(NULL).cast(want).alias(name)),
            Some(have) => {
                let ok = if want == DataType::String {
                    have == &DataType::String
                } else {
                    have.is_primitive_numeric()
                };
                if !ok {
                    return Err(TrainError::Schema {
                        path: file.path.clone(),
                        column: name.to_owned(),
                        problem: format!("has type {have}, expected {want}"),
                    });
                }
                // Lossless for every integer and float type but u64 beyond i64::MAX, which
                // becomes null and is counted below as unreadable.
                exprs.push(col(name).cast(want.clone()).alias(name));
            }
        }
    }
    Ok(exprs)
}

/// Reads every file, keeps the rows that pass `filter`, and turns them into [`Rows`].
///
/// Rows that cannot be used are dropped and counted by reason in the summary: a required
/// value missing (or unreadable), an unknown outcome or error kind, negative or non-finite
/// durations, negative counts, an impossible HTTP status, a failure rate outside `[0, 1]`
/// or NaN, and hedges cancelled before they ended (their outcome is unknown).
///
/// # Errors
/// Unreadable files, missing required columns, columns of the wrong type.
pub fn load(
    files: &[InputFile],
    filter: &Filter,
    mut on_file: impl FnMut(&InputFile),
) -> Result<(Rows, LoadSummary), TrainError> {
    let mut summary = LoadSummary {
        files: files.len(),
        ..LoadSummary::default()
    };
    let mut rows = Rows::default();
    for file in files {
        let mut lf = scan(file)?;
        let exprs = check_schema(file, &mut lf)?;
        let mut lf = lf.select(exprs);
        if !filter.targets.is_empty() {
            let targets = Series::new("targets".into(), filter.targets.clone());
            lf = lf.filter(col("target").is_in(lit(targets).implode(false), false));
        }
        if let Some(from) = filter.from_ms {
            lf = lf.filter(col("started_at_ms").gt_eq(lit(from)));
        }
        if let Some(until) = filter.until_ms {
            lf = lf.filter(col("started_at_ms").lt(lit(until)));
        }
        let df = lf.collect().map_err(|e| TrainError::Polars {
            path: file.path.clone(),
            source: e,
        })?;
        convert(&df, &mut rows, &mut summary).map_err(|e| TrainError::Polars {
            path: file.path.clone(),
            source: e,
        })?;
        on_file(file);
    }
    summary.rows = rows.len() as u64;
    Ok((rows, summary))
}

/// Milliseconds to a duration exactly as records and the HTTP API read them (the same
/// function), so training and serving see the same numbers.
fn ms(v: f64) -> Option<Duration> {
    retrywise::attempt::ms_to_duration(v).ok()
}

/// Appends the rows of `df` (already cast to the wanted types) to `rows`.
fn convert(df: &DataFrame, rows: &mut Rows, summary: &mut LoadSummary) -> PolarsResult<()> {
    let n = df.height();
    summary.rows_read += n as u64;
    let started = df.column("started_at_ms")?.i64()?;
    let target = df.column("target")?.str()?;
    let attempt = df.column("attempt")?.i64()?;
    let error = df.column("error")?.str()?;
    let status = df.column("status")?.i64()?;
    let latency = df.column("latency_ms")?.f64()?;
    let elapsed = df.column("elapsed_ms")?.f64()?;
    let retry_after = df.column("retry_after_ms")?.f64()?;
    let delay = df.column("delay_ms")?.f64()?;
    let failure_rate = df.column("failure_rate")?.f64()?;
    let p95 = df.column("latency_p95_ms")?.f64()?;
    let in_flight = df.column("in_flight")?.i64()?;
    let outcome = df.column("outcome")?.str()?;
    let mut targets: BTreeMap<String, Arc<str>> = BTreeMap::new();
    for i in 0..n {
        let (Some(t0), Some(tgt), Some(att), Some(out)) = (
            started.get(i),
            target.get(i),
            attempt.get(i),
            outcome.get(i),
        ) else {
            summary.skip("a required value is missing or unreadable", 1);
            continue;
        };
        let success = match out {
            "success" => true,
            "retryable" | "permanent" => false,
            "cancelled" => {
                summary.skip("cancelled hedge (outcome unknown)", 1);
                continue;
            }
            _ => {
                summary.skip("unknown outcome", 1);
                continue;
            }
        };
        let (Ok(t0), Ok(att)) = (u64::try_from(t0), u32::try_from(att)) else {
            summary.skip("negative or out-of-range start time or attempt", 1);
            continue;
        };
        if att == 0 {
            summary.skip("attempt 0", 1);
            continue;
        }
        let st = match status.get(i) {
            None => None,
            Some(v) => match u16::try_from(v) {
                Ok(v) if (100..=599).contains(&v) => Some(v),
                _ => {
                    summary.skip("HTTP status outside 100..=599", 1);
                    continue;
                }
            },
        };
        let flight = match in_flight.get(i) {
            None => None,
            Some(v) => match u32::try_from(v) {
                Ok(v) => Some(v),
                Err(_) => {
                    summary.skip("negative or out-of-range calls in flight", 1);
                    continue;
                }
            },
        };
        let err = match error.get(i) {
            None => None,
            Some(s) => match s.parse::<ErrorKind>() {
                Ok(k) => Some(k),
                Err(_) => {
                    summary.skip("unknown error kind", 1);
                    continue;
                }
            },
        };
        // Optional durations: null means unknown; a present value must be a valid one.
        let opt = |v: Option<f64>| -> Result<Option<Duration>, ()> {
            match v {
                None => Ok(None),
                Some(v) => ms(v).map(Some).ok_or(()),
            }
        };
        let (Ok(lat), Ok(ra), Ok(p95v)) = (
            opt(latency.get(i)),
            opt(retry_after.get(i)),
            opt(p95.get(i)),
        ) else {
            summary.skip("negative or non-finite duration", 1);
            continue;
        };
        let (Some(el), Some(de)) = (
            ms(elapsed.get(i).unwrap_or(0.0)),
            ms(delay.get(i).unwrap_or(0.0)),
        ) else {
            summary.skip("negative or non-finite duration", 1);
            continue;
        };
        let rate = failure_rate.get(i);
        if rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            summary.skip("failure rate outside [0, 1] or NaN", 1);
            continue;
        }
        let tgt = match targets.get(tgt) {
            Some(t) => Arc::clone(t),
            None => {
                let t: Arc<str> = Arc::from(tgt);
                targets.insert(tgt.to_owned(), Arc::clone(&t));
                t
            }
        };
        let mut ctx = AttemptContext::first(tgt);
        ctx.attempt = att;
        ctx.error = err;
        ctx.status = st;
        ctx.latency = lat;
        ctx.elapsed = el;
        ctx.retry_after = ra;
        ctx.delay = de;
        ctx.failure_rate = rate;
        ctx.latency_p95 = p95v;
        ctx.in_flight = flight;
        rows.contexts.push(ctx);
        rows.success.push(success);
        rows.started_at_ms.push(t0);
    }
    Ok(())
}
