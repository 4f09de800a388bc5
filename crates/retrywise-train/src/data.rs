//! From log files to training rows: resolve paths, scan with polars, check the schema,
//! clean, and turn each row back into an [`AttemptContext`] for the encoder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use polars::prelude::*;
use retrywise::attempt::schema::{
    self, Field as SchemaField, FieldType, Presence, Rule, Storage, Value,
};
use retrywise::attempt::{AttemptContext, AttemptRecord, ErrorKind, Outcome, SchemaVersion};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The fields the trainer reads: when each attempt started, which call it belongs to, its
/// context, and its outcome (the label). Derived from the schema, so a field added there is
/// read here.
pub fn fields() -> impl Iterator<Item = &'static SchemaField> {
    schema::FIELDS
        .iter()
        .filter(|f| f.in_context() || matches!(f.name, "started_at_ms" | CALL_ID | "outcome"))
}

/// Columns a log must have: the required fields among those read, but `call_id`, which
/// only the split by call needs (a log without it reads as calls unknown).
pub fn required() -> impl Iterator<Item = &'static str> {
    fields()
        .filter(|f| f.presence == Presence::Required && f.name != CALL_ID)
        .map(|f| f.name)
}

/// The call id's field.
const CALL_ID: &str = "call_id";

/// The polars type each field is read as: integers as i64 (so a negative value is seen,
/// and counted, rather than failing the cast), floats as f64, text as strings.
fn read_type(f: &SchemaField) -> DataType {
    match f.storage() {
        Storage::String => DataType::String,
        Storage::UInt16 | Storage::UInt32 | Storage::UInt64 => DataType::Int64,
        Storage::Float64 => DataType::Float64,
    }
}

fn wanted() -> Vec<(&'static str, DataType)> {
    fields().map(|f| (f.name, read_type(f))).collect()
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
    /// The call it was an attempt of (the record's `call_id`: the attempts of one call
    /// share it); `None` when the log has no `call_id`.
    pub call_id: Vec<Option<u64>>,
    /// The health window the rows' failure rate, p95 latency and calls in flight were
    /// measured over (`health_window_ms`), when the rows say.
    pub health_window: Option<Duration>,
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
            call_id: idx.iter().map(|&i| self.call_id[i]).collect(),
            health_window: self.health_window,
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
    for col in required() {
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
    settle_health_window(&mut rows, &mut summary);
    summary.rows = rows.len() as u64;
    Ok((rows, summary))
}

/// Makes the rows' health inputs mean one thing: keeps the rows measured over the most
/// common health window (and those that do not say, written before schema 1.2), drops and
/// counts the others, and records the window in `rows`.
fn settle_health_window(rows: &mut Rows, summary: &mut LoadSummary) {
    let mut counts: BTreeMap<Duration, usize> = BTreeMap::new();
    for c in &rows.contexts {
        if let Some(w) = c.health_window {
            *counts.entry(w).or_default() += 1;
        }
    }
    let Some((&window, _)) = counts
        .iter()
        .max_by_key(|(w, n)| (**n, std::cmp::Reverse(**w)))
    else {
        return;
    };
    rows.health_window = Some(window);
    if counts.len() == 1 {
        return;
    }
    let keep: Vec<usize> = (0..rows.len())
        .filter(|&i| rows.contexts[i].health_window.is_none_or(|w| w == window))
        .collect();
    summary.skip(
        &format!(
            "`health_window_ms` is not the dataset's {} ms",
            window.as_millis()
        ),
        (rows.len() - keep.len()) as u64,
    );
    *rows = rows.select(&keep);
}

/// A column of the frame, as read.
enum Col<'a> {
    Text(&'a StringChunked),
    Int(&'a Int64Chunked),
    Float(&'a Float64Chunked),
}

/// The value of `field` in row `i`, converted as records and the HTTP API convert it (the
/// same types, the same millisecond conversion), or why it cannot be.
fn value<'a>(field: &SchemaField, col: &Col<'a>, i: usize) -> Result<Value<'a>, String> {
    let out_of_range = || format!("`{}` {}", field.name, Rule::Range.as_str());
    let unknown = || format!("`{}` is not one of its names", field.name);
    Ok(match col {
        Col::Text(c) => match c.get(i) {
            None => Value::Null,
            Some(s) => match field.ty {
                FieldType::Text => Value::Text(s),
                FieldType::ErrorKind => {
                    Value::ErrorKind(s.parse::<ErrorKind>().map_err(|_| unknown())?)
                }
                FieldType::Outcome => Value::Outcome(s.parse::<Outcome>().map_err(|_| unknown())?),
                _ => Value::Version(s.parse::<SchemaVersion>().map_err(|_| unknown())?),
            },
        },
        Col::Int(c) => match c.get(i) {
            None => Value::Null,
            Some(v) => {
                let n = u64::try_from(v).map_err(|_| out_of_range())?;
                if field.ty.max_whole().is_some_and(|max| n > max) {
                    return Err(out_of_range());
                }
                Value::UInt(n)
            }
        },
        Col::Float(c) => match c.get(i) {
            None => Value::Null,
            Some(v) if field.ty == FieldType::Milliseconds => {
                Value::Duration(retrywise::attempt::ms_to_duration(v).map_err(|_| out_of_range())?)
            }
            Some(v) => Value::Float(v),
        },
    })
}

/// Appends the rows of `df` (already cast to the wanted types) to `rows`.
///
/// Each row becomes an [`AttemptRecord`] through the schema's setters and is checked with
/// the schema's rules (the checks ingestion and the API apply); a row that breaks one is
/// skipped and counted under the rule, so the summary names the field.
fn convert(df: &DataFrame, rows: &mut Rows, summary: &mut LoadSummary) -> PolarsResult<()> {
    let n = df.height();
    summary.rows_read += n as u64;
    let cols: Vec<(&'static SchemaField, Col<'_>)> = fields()
        .map(|f| {
            let c = df.column(f.name)?;
            let col = match read_type(f) {
                DataType::String => Col::Text(c.str()?),
                DataType::Int64 => Col::Int(c.i64()?),
                _ => Col::Float(c.f64()?),
            };
            Ok((f, col))
        })
        .collect::<PolarsResult<_>>()?;
    let mut targets: BTreeMap<String, Arc<str>> = BTreeMap::new();
    'rows: for i in 0..n {
        let mut rec = AttemptRecord::blank();
        let mut call_known = true;
        for (f, col) in &cols {
            let v = match value(f, col, i) {
                Ok(Value::Null) if f.name == CALL_ID => {
                    call_known = false;
                    continue;
                }
                Ok(Value::Text(t)) if f.name == "target" => {
                    let shared = match targets.get(t) {
                        Some(s) => Arc::clone(s),
                        None => {
                            let s: Arc<str> = Arc::from(t);
                            targets.insert(t.to_owned(), Arc::clone(&s));
                            s
                        }
                    };
                    f.set(&mut rec, Value::Shared(&shared));
                    continue;
                }
                Ok(v) => v,
                Err(why) => {
                    summary.skip(&why, 1);
                    continue 'rows;
                }
            };
            if let Err(e) = f.check(v) {
                summary.skip(&e.reason(), 1);
                continue 'rows;
            }
            f.set(&mut rec, v);
        }
        let success = match rec.outcome {
            Outcome::Success => true,
            Outcome::Retryable | Outcome::Permanent => false,
            Outcome::Cancelled => {
                summary.skip("cancelled hedge (outcome unknown)", 1);
                continue;
            }
        };
        rows.contexts.push(rec.context);
        rows.success.push(success);
        rows.started_at_ms.push(rec.started_at_ms);
        rows.call_id.push(call_known.then_some(rec.call_id));
    }
    Ok(())
}
