//! From log files to training rows: resolve paths, scan with polars, check the schema,
//! clean, and turn each row back into an [`AttemptContext`] for the encoder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use polars::prelude::*;
use retrywise::attempt::schema::{
    self, AGREEMENTS, Agreement, Field as SchemaField, FieldType, MAX_LINE_BYTES, Presence, Rule,
    Storage, Value,
};
use retrywise::attempt::{AttemptContext, AttemptRecord, ErrorKind, Outcome, SchemaVersion};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The fields the trainer reads: when each attempt started, which call it belongs to, its
/// context, and its outcome (the label). Derived from the schema, so a field added there is
/// read here.
pub fn fields() -> impl Iterator<Item = &'static SchemaField> {
    schema::FIELDS.iter().filter(|f| {
        f.in_context() || matches!(f.name, "started_at_ms" | CALL_ID | "hedge" | "outcome")
    })
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
/// and counted, rather than failing the cast) but u64 fields as u64 (a call id may use all
/// 64 bits; from NDJSON a negative one reads as null, and is counted as missing), floats
/// as f64, text as strings.
fn read_type(f: &SchemaField) -> DataType {
    match f.storage() {
        Storage::String => DataType::String,
        Storage::UInt16 | Storage::UInt32 => DataType::Int64,
        Storage::UInt64 => DataType::UInt64,
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

/// What a search of folders and patterns found: the input files, the open segments
/// (`*.ndjson.open`: being written, or left by a writer that crashed), which are not
/// read, and the entries named like input files that are not regular files (a pipe, a
/// socket, a device, a broken link: opening a pipe would wait for a writer for ever),
/// which are not read either.
#[derive(Default)]
struct Found {
    files: Vec<PathBuf>,
    open: Vec<PathBuf>,
    special: Vec<PathBuf>,
}

impl Found {
    /// Takes `path`, named like an input file, as one if it is a regular file (or a link
    /// to one).
    fn file(&mut self, path: PathBuf) {
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            self.files.push(path);
        } else {
            self.special.push(path);
        }
    }
}

/// Collects the input files under `dir`, and the open segments and special files beside
/// them, into `found`.
fn walk(dir: &Path, found: &mut Found) -> Result<(), TrainError> {
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
            walk(&path, found)?;
        } else if format_of(&path).is_some() {
            found.file(path);
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".ndjson.open"))
        {
            found.open.push(path);
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
    let mut found = Found::default();
    for spec in specs {
        let p = Path::new(spec);
        let (before, special_before) = (found.files.len(), found.special.len());
        if p.is_dir() {
            walk(p, &mut found)?;
        } else if p.is_file() {
            if format_of(p).is_none() {
                return Err(TrainError::Input {
                    path: p.to_path_buf(),
                    problem: "is neither Parquet (.parquet) nor NDJSON (.ndjson, .jsonl)".into(),
                });
            }
            found.files.push(p.to_path_buf());
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
                    walk(&m, &mut found)?;
                } else if format_of(&m).is_some() {
                    found.file(m);
                }
            }
        } else {
            return Err(TrainError::Input {
                path: p.to_path_buf(),
                problem: if p.exists() {
                    "is neither a file nor a folder (a device, a socket or a pipe)".into()
                } else {
                    "does not exist".into()
                },
            });
        }
        // A pattern that matches nothing is a typo, not "nothing more to read" (a folder
        // may well be empty: compaction empties the segments' folder).
        if found.files.len() == before && !p.is_dir() && spec.contains(['*', '?', '[']) {
            return Err(TrainError::Input {
                path: p.to_path_buf(),
                problem: format!(
                    "matches no Parquet or NDJSON file{}",
                    found
                        .special
                        .get(special_before)
                        .map_or_else(String::new, |first| {
                            format!(
                                " ({} entr{} named like one not a regular file, e.g. {})",
                                found.special.len() - special_before,
                                if found.special.len() - special_before == 1 {
                                    "y"
                                } else {
                                    "ies"
                                },
                                first.display()
                            )
                        })
                ),
            });
        }
    }
    let Found {
        files: mut paths,
        open,
        special,
    } = found;
    if let Some(first) = special.first() {
        tracing::warn!(
            "{} entr{} named like a log not read, e.g. {}: not a regular file (a pipe, a socket, a device, or a link to none)",
            special.len(),
            if special.len() == 1 { "y" } else { "ies" },
            first.display()
        );
    }
    paths.sort();
    // One file named twice (`logs` and `./logs/a.parquet`) is read once: its rows would
    // count twice.
    let mut seen = std::collections::HashSet::new();
    paths.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    // Segments still open are not read (their last line may be half written): said,
    // not passed over.
    let open_note = open.first().map(|first| {
        format!(
            "{} open segment{} not read, e.g. {}: being written, or left by a writer that crashed; a writer that opens the folder again closes it, and `retrywise compact` turns closed segments into Parquet",
            open.len(),
            if open.len() == 1 { "" } else { "s" },
            first.display()
        )
    });
    if paths.is_empty() {
        return Err(TrainError::NoData(format!(
            "no Parquet or NDJSON files in {}{}",
            specs.join(", "),
            open_note.map_or_else(String::new, |n| format!(" ({n})"))
        )));
    }
    if let Some(note) = open_note {
        tracing::warn!("{note}");
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

impl Filter {
    /// Checks that the filter can keep anything: a window whose start is not before its
    /// end (`--from-ms` and `--until-ms` swapped, say) keeps no row of any input, and is
    /// refused before one is read.
    ///
    /// # Errors
    /// [`TrainError::InvalidOption`] naming both ends.
    pub fn check(&self) -> Result<(), TrainError> {
        match (self.from_ms, self.until_ms) {
            (Some(from), Some(until)) if from >= until => Err(TrainError::InvalidOption {
                option: "from_ms",
                problem: format!(
                    "the time window is empty: it starts at {from} ms (from_ms), not before its end at {until} ms (until_ms)"
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// What loading read and dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Files read.
    pub files: usize,
    /// Rows read (after the filter and the sample).
    pub rows_read: u64,
    /// Rows kept.
    pub rows: u64,
    /// Rows dropped, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// The input's size and the sample drawn from it, when the rows were counted first:
    /// training fills it ([`count_rows`], [`Sample::for_rows`]); `None` from [`load`] and
    /// [`load_sample`], which do not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<SampleSummary>,
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

/// The most rows training reads by default (`TrainOptions::max_rows`, `retrywise train
/// --max-rows`): a larger input is read as a uniform sample of whole calls of about this
/// many rows ([`Sample`]). Training peaks near 0.7 KiB per row kept, so the default bounds
/// it near 1.4 GiB whatever the input (`docs/results/train-scale.md`), while `data/sample`
/// (1.21 M rows) and the inputs CI trains on are read whole.
pub const DEFAULT_MAX_ROWS: u64 = 2_000_000;

/// How an input was sampled while it was read (recorded in the artifact's `training`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleSummary {
    /// The most rows asked for (about: the sample keeps whole calls).
    pub max_rows: u64,
    /// Rows in the input that pass the filter, before sampling ([`count_rows`]).
    pub input_rows: u64,
    /// The share of calls (and so, in expectation, of rows) kept: `max_rows / input_rows`,
    /// or 1 when the input has no more than `max_rows` rows and is read whole.
    pub fraction: f64,
}

impl SampleSummary {
    /// Whether rows were left out (the fraction is below 1).
    pub fn sampled(&self) -> bool {
        self.fraction < 1.0
    }
}

/// A uniform sample of whole calls, drawn inside polars while each file is read.
///
/// A row is kept when the draw of its call — [`sample_draw`] of its `call_id` (of its
/// `started_at_ms` in a log without call ids) — is below the sample's threshold, so:
/// - every attempt of a call shares the draw and a call is kept or dropped whole: the split
///   by call and the features of a call's later attempts keep their meaning;
/// - the kept rows keep their order and span the input's whole time range in proportion,
///   as the split by time needs;
/// - the draw is a hash, not a random number: the same input gives the same sample on
///   every run and machine, and it does not depend on the fraction, so a smaller sample of
///   an input is a subset of a larger one;
/// - the draw is independent of the split by call's (another hash, of target and call):
///   a sample's calls split as the input's would.
///
/// The predicate is pushed into the scan, so a file is filtered as it is decoded and the
/// rows left out are never turned into records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The share of calls kept, in (0, 1].
    fraction: f64,
    /// Rows whose draw is below this are kept; `None`: all.
    threshold: Option<u64>,
}

impl Sample {
    /// Every row.
    pub const ALL: Sample = Sample {
        fraction: 1.0,
        threshold: None,
    };

    /// Keeps each call with probability `fraction` (everything at 1 or more).
    ///
    /// # Errors
    /// [`TrainError::InvalidOption`] when `fraction` is not above 0 (or is NaN).
    pub fn with_fraction(fraction: f64) -> Result<Sample, TrainError> {
        if fraction.is_nan() || fraction <= 0.0 {
            return Err(TrainError::InvalidOption {
                option: "sample fraction",
                problem: format!("must be above 0, got {fraction}"),
            });
        }
        if fraction >= 1.0 {
            return Ok(Sample::ALL);
        }
        // fraction × 2^64, below 2^64: the cast cannot saturate.
        let threshold = (fraction * 18_446_744_073_709_551_616.0) as u64;
        Ok(Sample {
            fraction,
            threshold: Some(threshold),
        })
    }

    /// The sample that keeps about `max_rows` of an input of `input_rows` rows: each call
    /// with probability `max_rows / input_rows`, or everything when the input is no larger.
    ///
    /// # Errors
    /// [`TrainError::InvalidOption`] when `max_rows` is 0.
    pub fn for_rows(max_rows: u64, input_rows: u64) -> Result<Sample, TrainError> {
        if max_rows == 0 {
            return Err(TrainError::InvalidOption {
                option: "max_rows",
                problem: "must be at least 1 (it is how many rows to sample the input down to)"
                    .into(),
            });
        }
        if input_rows <= max_rows {
            return Ok(Sample::ALL);
        }
        Sample::with_fraction(max_rows as f64 / input_rows as f64)
    }

    /// The share of calls kept, in (0, 1].
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// Whether the sample keeps a row of the call `call_id` (`None`: a log without call ids,
    /// sampled by the row's start instead) started at `started_at_ms`: what the predicate
    /// pushed into polars decides.
    pub fn keeps(&self, call_id: Option<u64>, started_at_ms: u64) -> bool {
        self.threshold
            .is_none_or(|t| sample_draw(call_id.unwrap_or(started_at_ms)) < t)
    }

    /// The predicate over a file's own columns (before any cast), or `None` for all rows. A
    /// row whose call id is missing or negative is drawn by its start, like [`Sample::keeps`]
    /// does; one without a usable start either is kept, to be counted as skipped later.
    fn predicate(&self, has_call_id: bool) -> Option<Expr> {
        let threshold = self.threshold?;
        let start = col("started_at_ms").cast(DataType::UInt64);
        let key = if has_call_id {
            coalesce(&[col(CALL_ID).cast(DataType::UInt64), start])
        } else {
            start
        };
        Some(
            sample_draw_expr(key)
                .lt(u64_lit(threshold))
                .fill_null(lit(true)),
        )
    }
}

/// The salt of [`sample_draw`], so that key 0 does not draw 0.
const SAMPLE_SALT: u64 = 0x5851_f42d_4c95_7f2d;

/// Where a call falls in the sample: MurmurHash3's 64-bit finalizer of its key (the call
/// id) xor a salt, as a `u64` (a bijection, so distinct calls never share a draw by
/// accident of the hash). Another mixer than the split by call's (`SplitMix64`'s, over an
/// FNV-1a of target and id), so that which calls are sampled says nothing of which are
/// held out. The same on every machine and run; [`Sample`] computes it inside polars with
/// wrapping `u64` arithmetic (a right shift is a division by a power of two), and a test
/// checks that both agree.
pub fn sample_draw(key: u64) -> u64 {
    let mut h = key ^ SAMPLE_SALT;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A `u64` literal typed as such (a plain `lit` is an untyped integer, which polars
/// cannot hold above `i64::MAX` without its 128-bit integers).
fn u64_lit(v: u64) -> Expr {
    lit(Scalar::from(v))
}

/// [`sample_draw`] of a `UInt64` expression, in polars (multiplication of unsigned
/// integers wraps there too).
fn sample_draw_expr(key: Expr) -> Expr {
    // `/` divides integers as Rust does: by a power of two, a right shift.
    let shift = |h: Expr| h.clone().xor(h / u64_lit(1 << 33));
    let h = shift(key.xor(u64_lit(SAMPLE_SALT)));
    let h = shift(h * u64_lit(0xff51_afd7_ed55_8ccd));
    shift(h * u64_lit(0xc4ce_b9fe_1a85_ec53))
}

fn scan(
    file: &InputFile,
) -> Result<(LazyFrame, LineCheck, Option<tempfile::TempPath>), TrainError> {
    let path = file.path.to_str().ok_or_else(|| TrainError::Input {
        path: file.path.clone(),
        problem: "is not valid UTF-8".into(),
    })?;
    match file.format {
        Format::Parquet => {
            // Before polars reserves room for what the footer claims (a damaged length
            // there aborts the process).
            retrywise_collect::footer::check(&file.path).map_err(|problem| TrainError::Input {
                path: file.path.clone(),
                problem,
            })?;
            let lf = guarded(file, || {
                // The file as named: `resolve` expanded the user's patterns, and a name
                // with `[` or `*` in it is no pattern here.
                LazyFrame::scan_parquet(
                    PlRefPath::new(path),
                    ScanArgsParquet {
                        glob: false,
                        ..ScanArgsParquet::default()
                    },
                )
            })?;
            let (lf, bad) = check_versions(file, lf)?;
            Ok((lf, bad, None))
        }
        Format::Ndjson => {
            // Lines are checked as the collector reads segments (a torn last line, lines
            // that are not JSON objects or not records of their schema and an unreadable
            // `schema_version` are skipped and counted; another major version stops the
            // run), then read by polars, chunk by chunk, as the types `wanted` asks for
            // (its JSON reader does not build every narrow integer type). A file with
            // lines to skip is read from a copy without them; so is one whose name polars
            // would take for a pattern (its NDJSON scan always expands `*`, `?` and `[`:
            // `a[1].ndjson` would read `a1.ndjson`).
            let (bad, clean) = check_lines(&file.path, path.contains(['*', '?', '[']))?;
            let read_from = match &clean {
                Some(copy) => PlRefPath::new(copy.to_str().ok_or_else(|| TrainError::Input {
                    path: copy.to_path_buf(),
                    problem: "is not valid UTF-8".into(),
                })?),
                None => PlRefPath::new(path),
            };
            let schema: Schema = wanted()
                .into_iter()
                .map(|(name, dt)| Field::new(name.into(), dt))
                .collect();
            let lf = guarded(file, || {
                LazyJsonLineReader::new(read_from)
                    .with_schema(Some(Arc::new(schema)))
                    .with_ignore_errors(true)
                    .finish()
            })?;
            Ok((lf, bad, clean))
        }
    }
}

/// What the pre-read of a file found: its NDJSON lines or Parquet rows skipped, by
/// reason, and (not a skip) how many NDJSON lines name a call id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LineCheck {
    /// The last line, cut short (a writer that crashed mid-line).
    pub torn: u64,
    /// Lines that are not a JSON object.
    pub malformed: u64,
    /// Lines longer than any record (`MAX_LINE_BYTES`), read past without being held.
    pub too_long: u64,
    /// (Not a skip.) Lines without a version whose whole numbers, written as floats, are
    /// read from a copy as integers.
    pub rewritten: u64,
    /// JSON objects whose `schema_version` is not a version.
    pub unknown_version: u64,
    /// Records of this schema that do not parse as one (a value of the wrong type) or
    /// break its rules.
    pub invalid: u64,
    /// `invalid` by why (the first [`INVALID_REASONS`] reasons; the rest counted in
    /// `invalid` alone).
    pub invalid_why: BTreeMap<String, u64>,
    /// Parquet rows whose `schema_version` is not a version.
    pub unknown_version_rows: u64,
    /// (Not a skip.) NDJSON lines that name a `call_id`: without any, the file is a log
    /// without call ids (its calls unknown), as a Parquet file without the column is.
    pub call_id_lines: u64,
}

/// The most reasons an invalid NDJSON record is counted under, per file (the rest share
/// one): the values of another tool's log are as many as its lines, and so may be the
/// reasons a parser gives.
const INVALID_REASONS: usize = 16;

impl LineCheck {
    /// Counts an invalid record, and why: `why` as a parser or the schema's check says
    /// it, without the position a parser adds (`... at line 1 column 210`), which is the
    /// same line's in every record.
    fn invalid(&mut self, why: &str) {
        self.invalid += 1;
        let why = match why.rfind(" at line ") {
            Some(at) if why[at..].contains(" column ") => &why[..at],
            _ => why,
        };
        if let Some(n) = self.invalid_why.get_mut(why) {
            *n += 1;
        } else if self.invalid_why.len() < INVALID_REASONS {
            self.invalid_why.insert(why.to_owned(), 1);
        }
    }

    fn count_into(&self, summary: &mut LoadSummary) {
        summary.skip("NDJSON line cut short (torn)", self.torn);
        summary.skip("NDJSON line that is not a JSON object", self.malformed);
        summary.skip(
            "NDJSON line longer than any record (1 MiB at most)",
            self.too_long,
        );
        // By reason, [`INVALID_REASONS`] of them over every file at most (a thousand
        // files of another tool's could otherwise bring sixteen thousand).
        const BY_REASON: &str = "NDJSON record: ";
        let mut counted = 0;
        for (why, &n) in &self.invalid_why {
            let key = format!("{BY_REASON}{why}");
            let reasons = summary
                .skipped
                .keys()
                .filter(|k| k.starts_with(BY_REASON))
                .count();
            if summary.skipped.contains_key(&key) || reasons < INVALID_REASONS {
                summary.skip(&key, n);
                counted += n;
            }
        }
        summary.skip(
            "NDJSON record with a value of the wrong type or against the schema's rules",
            self.invalid - counted,
        );
        summary.skip(
            "NDJSON line with an unreadable schema_version",
            self.unknown_version,
        );
        summary.skip(
            "Parquet row with an unreadable schema_version",
            self.unknown_version_rows,
        );
    }

    fn any(&self) -> bool {
        self.torn
            + self.malformed
            + self.too_long
            + self.unknown_version
            + self.invalid
            + self.rewritten
            > 0
    }
}

/// Runs a polars query on `file`'s data. polars returns errors for most bad input, but
/// some decoders panic on a corrupt page instead: that panic is caught here and becomes
/// [`TrainError::Input`] naming the file ("is corrupt"), so that no input ends the process.
fn guarded<T>(file: &InputFile, run: impl FnOnce() -> PolarsResult<T>) -> Result<T, TrainError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r.map_err(|e| TrainError::Polars {
            path: file.path.clone(),
            source: e,
        }),
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            tracing::warn!(path = %file.path.display(), %why, "polars panicked reading a file");
            Err(TrainError::Input {
                path: file.path.clone(),
                problem: format!("is corrupt: polars failed reading it ({why})"),
            })
        }
    }
}

/// The field every record names its schema version in.
const SCHEMA_VERSION: &str = "schema_version";

/// Why a record of version `v`, of another major version than this trainer's, stops the
/// run (skipping it would lose it silently).
fn too_new(v: SchemaVersion) -> String {
    format!(
        "schema version {v}, another major version than this trainer's {} (a newer writer made it): upgrade retrywise to read it",
        SchemaVersion::CURRENT
    )
}

/// Holds a Parquet file's rows to the rules [`check_lines`] holds NDJSON lines to: a row
/// whose `schema_version` is not a version is skipped and counted, a row without one is
/// read, and a row of another major version stops the run (this trainer cannot know what
/// that version's columns mean; skipping them would lose them silently). The versions are
/// read from the one column, grouped, and parsed as the collector parses them.
///
/// # Errors
/// The column is not text; a row of another major version (named, with how many).
fn check_versions(
    file: &InputFile,
    mut lf: LazyFrame,
) -> Result<(LazyFrame, LineCheck), TrainError> {
    let schema = guarded(file, || lf.collect_schema())?;
    match schema.get(SCHEMA_VERSION) {
        None => return Ok((lf, LineCheck::default())),
        Some(DataType::String) => {}
        Some(other) => {
            return Err(TrainError::Schema {
                path: file.path.clone(),
                column: SCHEMA_VERSION.to_owned(),
                problem: format!("has type {other}, expected {}", DataType::String),
            });
        }
    }
    let (names, counts) = guarded(file, || {
        let versions = lf
            .clone()
            .group_by([col(SCHEMA_VERSION)])
            .agg([len().cast(DataType::UInt64).alias("rows")])
            .collect()?;
        let names = versions.column(SCHEMA_VERSION)?.str()?.clone();
        let counts = versions.column("rows")?.u64()?.clone();
        Ok((names, counts))
    })?;
    let mut bad = LineCheck::default();
    let mut readable = Vec::new();
    for (name, rows) in names.iter().zip(counts.iter()) {
        let (Some(name), rows) = (name, rows.unwrap_or(0)) else {
            continue;
        };
        match name.parse::<SchemaVersion>() {
            Err(_) => bad.unknown_version_rows += rows,
            Ok(v) if v.major != SchemaVersion::CURRENT.major => {
                return Err(TrainError::Input {
                    path: file.path.clone(),
                    problem: format!("{rows} rows of {}", too_new(v)),
                });
            }
            Ok(_) => readable.push(name.to_owned()),
        }
    }
    if bad.unknown_version_rows > 0 {
        let readable = Series::new("readable".into(), readable);
        lf = lf.filter(
            col(SCHEMA_VERSION)
                .is_null()
                .or(col(SCHEMA_VERSION).is_in(lit(readable).implode(false), false)),
        );
    }
    Ok((lf, bad))
}

/// Checks the lines of the NDJSON file at `path` one at a time (the collector's rules,
/// `retrywise_collect::SegmentReader`; a line without `schema_version` is read, as a
/// Parquet file needs no such column): what to skip, and - only when there is something to
/// skip or rewrite, or `copy_anyway` - a temporary copy without those lines (deleted when
/// dropped). Memory holds one
/// line at a time, of at most `MAX_LINE_BYTES`: a longer one is skipped as no record.
///
/// # Errors
/// The file cannot be read; a line of another major version (this trainer is too old for
/// it: skipping it would lose it silently), named by its line number.
fn check_lines(
    path: &Path,
    copy_anyway: bool,
) -> Result<(LineCheck, Option<tempfile::TempPath>), TrainError> {
    use std::io::Write;
    let read_error = |e: std::io::Error| TrainError::Input {
        path: path.to_path_buf(),
        problem: format!("cannot be read: {e}"),
    };
    // The copy is the trainer's own file, in the temporary folder: its errors name that
    // (the input is never written).
    let copy_error = |what: &str, e: std::io::Error| TrainError::Input {
        path: path.to_path_buf(),
        problem: format!(
            "has lines to skip or rewrite, and a cleaned copy of it cannot be {} in the temporary folder {} ({e}; set TMPDIR to a folder with room)",
            if what == "create" {
                "created"
            } else {
                "written"
            },
            std::env::temp_dir().display()
        ),
    };
    // Two passes: the first finds what to skip; only then is a copy written.
    let pass = |mut keep: Option<&mut dyn Write>| -> Result<LineCheck, TrainError> {
        let mut reader = std::io::BufReader::new(std::fs::File::open(path).map_err(read_error)?);
        let mut bad = LineCheck::default();
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            let read = retrywise_collect::read_line_bounded(&mut reader, &mut line, MAX_LINE_BYTES)
                .map_err(read_error)?;
            if read.consumed == 0 {
                return Ok(bad);
            }
            number += 1;
            if read.too_long && read.blank {
                continue;
            }
            if read.too_long {
                tracing::debug!(
                    line = number,
                    bytes = read.consumed,
                    "line longer than any record skipped"
                );
                bad.too_long += 1;
                continue;
            }
            let unterminated = !read.terminated;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(text) else {
                if unterminated {
                    bad.torn += 1;
                } else {
                    bad.malformed += 1;
                }
                continue;
            };
            bad.call_id_lines += u64::from(obj.contains_key(CALL_ID));
            // The line as polars should read it, when it is not `text` as written.
            let mut rewritten = false;
            match obj.get(SCHEMA_VERSION) {
                // A line without a version (another tool's log) is read by polars, which
                // reads a value of the wrong JSON type as null (`"delay_ms": "250"`: a wait
                // of 0): such a line is skipped and counted, as a versioned one is; the
                // values' rules are checked on the columns read.
                None => match typed(&mut obj) {
                    Typed::Wrong(f) => {
                        tracing::debug!(
                            line = number,
                            field = f,
                            "record with a value of the wrong type skipped"
                        );
                        bad.invalid(&format!("`{f}` has a value of the wrong type"));
                        continue;
                    }
                    // Whole numbers written as floats (`"status": 503.0`, as a tool that
                    // keeps integers with gaps as floats writes them): read as the
                    // integers they are, as from Parquet - polars would read them as
                    // missing.
                    Typed::Rewritten => {
                        bad.rewritten += 1;
                        rewritten = true;
                    }
                    Typed::AsWritten => {}
                },
                Some(v) => match v.as_str().and_then(|v| v.parse::<SchemaVersion>().ok()) {
                    None => {
                        bad.unknown_version += 1;
                        continue;
                    }
                    Some(v) if v.major != SchemaVersion::CURRENT.major => {
                        return Err(TrainError::Input {
                            path: path.to_path_buf(),
                            problem: format!("line {number}: {}", too_new(v)),
                        });
                    }
                    // A record of this schema is read as the collector reads it: one
                    // that does not parse as one (`"delay_ms": "250"`, which polars
                    // would read as null - a wait of 0) or breaks the schema's rules is
                    // skipped and counted, as the collector skips it as malformed.
                    // (A log without call ids is read, its calls unknown: a line without
                    // one is checked as if it had one.)
                    Some(_) => {
                        let record = if obj.contains_key(CALL_ID) {
                            serde_json::from_slice::<AttemptRecord>(text)
                        } else {
                            let mut with_id = obj.clone();
                            with_id.insert(CALL_ID.to_owned(), 0.into());
                            serde_json::from_value(serde_json::Value::Object(with_id))
                        }
                        .map_err(|e| e.to_string())
                        .and_then(|r: AttemptRecord| r.validate().map_err(|e| e.to_string()));
                        if let Err(why) = record {
                            tracing::debug!(line = number, %why, "invalid record skipped");
                            bad.invalid(&why);
                            continue;
                        }
                    }
                },
            }
            if let Some(out) = keep.as_deref_mut() {
                if rewritten {
                    serde_json::to_writer(&mut *out, &obj).map_err(std::io::Error::from)
                } else {
                    out.write_all(text)
                }
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| copy_error("write", e))?;
            }
        }
    };
    let bad = pass(None)?;
    if !bad.any() && !copy_anyway {
        return Ok((bad, None));
    }
    let copy = tempfile::Builder::new()
        .prefix(".retrywise-cleaned-")
        .suffix(".ndjson")
        .tempfile()
        .map_err(|e| copy_error("create", e))?;
    let mut out = std::io::BufWriter::new(copy.as_file());
    pass(Some(&mut out))?;
    out.flush().map_err(|e| copy_error("write", e))?;
    drop(out);
    Ok((bad, Some(copy.into_temp_path())))
}

/// What [`typed`] found in a line without a schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Typed {
    /// Every value has a type polars reads as it should.
    AsWritten,
    /// Whole numbers written as floats in integer fields were rewritten as integers.
    Rewritten,
    /// This field holds a value of the wrong type: a string for a number or the other way
    /// round, a fraction or a number beyond the column's range in an integer field.
    Wrong(&'static str),
}

/// Checks the types of the schema's fields in `obj` (a line without a schema version,
/// which polars reads as it finds it: a value of the wrong type as null), rewriting whole
/// numbers written as floats in integer fields as integers. `null` is read as missing.
fn typed(obj: &mut serde_json::Map<String, serde_json::Value>) -> Typed {
    use serde_json::Value as Json;
    /// Floats hold every integer up to 2^53 exactly; beyond, `1e300` is no count.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    /// 2^64: the end of what a u64 holds.
    const U64_END: f64 = 18_446_744_073_709_551_616.0;
    let mut found = Typed::AsWritten;
    for f in fields() {
        let Some(v) = obj.get_mut(f.name) else {
            continue;
        };
        let ok = match (f.storage(), &*v) {
            (_, Json::Null) => true,
            (Storage::String, v) => v.is_string(),
            (Storage::Float64, v) => v.is_number(),
            (int, Json::Number(n)) => {
                // Read as i64, or as u64 for the 64-bit fields (`read_type`).
                let in_range = match int {
                    Storage::UInt64 => n.is_u64() || n.is_i64(),
                    _ => n.is_i64(),
                };
                match n.as_f64() {
                    _ if in_range => true,
                    Some(x) if n.is_f64() && x.fract() == 0.0 && x.abs() <= EXACT => {
                        // Exact: |x| <= 2^53 fits an i64 with room to spare.
                        *v = Json::from(x as i64);
                        found = Typed::Rewritten;
                        true
                    }
                    // A 64-bit field (a call id) written as a float beyond 2^53, as the
                    // Parquet path reads one: the whole number the float holds.
                    Some(x)
                        if int == Storage::UInt64
                            && n.is_f64()
                            && x.fract() == 0.0
                            && (0.0..U64_END).contains(&x) =>
                    {
                        *v = Json::from(x as u64);
                        found = Typed::Rewritten;
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if !ok {
            return Typed::Wrong(f.name);
        }
    }
    found
}

/// The schema field a column that is not one may have been meant as: one of `missing`
/// (fields the file lacks) whose name differs from it only in case and separators, by a
/// unit suffix (`retry_after` for `retry_after_ms`), or by a typo or two in a long name.
fn meant_as(column: &str, missing: &[&'static str]) -> Option<&'static str> {
    let plain = |s: &str| -> String {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let given = plain(column);
    missing
        .iter()
        .filter_map(|&field| {
            let want = plain(field);
            let (short, long) = if given.len() <= want.len() {
                (&given, &want)
            } else {
                (&want, &given)
            };
            let distance = strsim::damerau_levenshtein(&given, &want);
            let near = distance == 0
                || (short.len() >= 4
                    && long.starts_with(short.as_str())
                    && long.len() - short.len() <= 2)
                || (short.len() >= 5 && distance <= 2);
            near.then_some((distance, field))
        })
        .min()
        .map(|(_, field)| field)
}

/// Checks a file's columns: the required ones must exist, and every wanted one present
/// must have a type that converts. Returns the expressions that select and cast them,
/// whether the file has call ids, and its columns that are no field of the schema (not
/// read: a newer minor version's, another tool's, or a misnamed field's - each with the
/// field it may have been meant as).
fn check_schema(
    file: &InputFile,
    lf: &mut LazyFrame,
) -> Result<(Vec<Expr>, bool, Vec<UnreadColumn>), TrainError> {
    let schema = guarded(file, || lf.collect_schema())?;
    let missing: Vec<&'static str> = schema::FIELDS
        .iter()
        .map(|f| f.name)
        .filter(|name| schema.get(name).is_none())
        .collect();
    // The keys of a Hive-style layout's folders (`date=2026-12-04/`, as `retrywise
    // compact` writes): polars adds each as a column.
    let partitions: Vec<String> = file
        .path
        .components()
        .filter_map(|c| {
            c.as_os_str()
                .to_str()?
                .split_once('=')
                .map(|(k, _)| k.to_owned())
        })
        .collect();
    let unread: Vec<UnreadColumn> = schema
        .iter_names()
        .filter(|name| schema::FIELDS.iter().all(|f| f.name != name.as_str()))
        // The fields of a newer minor version that `retrywise compact` keeps beside them,
        // and its partition column (in the files of a tree another tool wrote back).
        .filter(|name| {
            ![
                retrywise_collect::compact::UNKNOWN_FIELDS,
                retrywise_collect::compact::PARTITION,
            ]
            .contains(&name.as_str())
        })
        .filter(|name| !partitions.iter().any(|k| k == name.as_str()))
        .map(|name| UnreadColumn {
            name: name.to_string(),
            meant_as: meant_as(name, &missing),
        })
        .collect();
    for col in required() {
        if schema.get(col).is_none() {
            let hint = unread
                .iter()
                .find(|c| c.meant_as == Some(col))
                .map_or_else(String::new, |c| {
                    format!(" (the file has a column `{}`: misnamed?)", c.name)
                });
            return Err(TrainError::Schema {
                path: file.path.clone(),
                column: (*col).to_owned(),
                problem: format!("is missing{hint}"),
            });
        }
    }
    let mut exprs = Vec::new();
    for (name, want) in wanted() {
        match schema.get(name) {
            // A column typed null holds no value (pyarrow and pandas write a column that
            // was empty in every row so: no 429 all day, no `retry_after_ms`): the same as
            // one that is not there.
            None | Some(DataType::Null) => exprs.push(lit(NULL).cast(want).alias(name)),
            Some(have) => {
                let ok = if want == DataType::String {
                    have == &DataType::String
                } else {
                    have.is_primitive_numeric()
                };
                // A whole-number field stored as floats is read as floats, so that a value
                // with a fraction is refused rather than truncated (`value`); a u64 field
                // stored signed is read signed, so that a negative value is seen and
                // counted rather than cast to null.
                let want = if want.is_integer() && have.is_float() {
                    DataType::Float64
                } else if want == DataType::UInt64 && have.is_signed_integer() {
                    DataType::Int64
                } else {
                    want
                };
                if !ok {
                    return Err(TrainError::Schema {
                        path: file.path.clone(),
                        column: name.to_owned(),
                        problem: format!("has type {have}, expected {want}"),
                    });
                }
                // Lossless for every integer and float type, but for a u16 or u32 field
                // stored as u64 whose value is beyond i64::MAX: it becomes null and is
                // counted below as missing.
                exprs.push(col(name).cast(want.clone()).alias(name));
            }
        }
    }
    Ok((exprs, schema.get(CALL_ID).is_some(), unread))
}

/// A column of an input file that is no field of the attempt schema, and so is not read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnreadColumn {
    /// Its name.
    pub name: String,
    /// The field the file lacks that it may have been meant as (its name differs only in
    /// case, separators, a unit suffix or a typo), if any.
    pub meant_as: Option<&'static str>,
}

impl std::fmt::Display for UnreadColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.meant_as {
            Some(field) => write!(f, "`{}` (meant as `{field}`?)", self.name),
            None => write!(f, "`{}`", self.name),
        }
    }
}

/// Warns, once for each set of them, of columns of `prepared` files that are no field of
/// the schema: a field misnamed in a Parquet file written by another tool would otherwise
/// read as missing in every row (no Retry-After, no health) without a word.
fn warn_of_unread_columns(prepared: &[Prepared]) {
    let mut sets: BTreeMap<&[UnreadColumn], (usize, &Path)> = BTreeMap::new();
    for p in prepared.iter().filter(|p| !p.unread.is_empty()) {
        sets.entry(&p.unread).or_insert((0, &p.file.path)).0 += 1;
    }
    for (columns, (files, first)) in sets {
        let list: Vec<String> = columns.iter().map(ToString::to_string).collect();
        tracing::warn!(
            "{files} file{} (e.g. {}) {} columns that are no field of the attempt schema, not read: {}",
            if files == 1 { "" } else { "s" },
            first.display(),
            if files == 1 { "has" } else { "have" },
            list.join(", ")
        );
    }
}

/// An input file opened once for every read of it: its scan with the schema versions
/// held to the collector's rules (`check_lines`, `check_versions`) and its columns
/// checked, what was skipped before reading it, and - for an NDJSON file with lines to
/// skip or rewrite, or a name polars would take for a pattern - the cleaned temporary copy
/// it reads from (deleted when this is dropped). Made by
/// [`prepare`]; counting ([`count_prepared`]) and loading ([`load_prepared`]) both read
/// through it, so a file's lines are checked once however often it is read. It holds a
/// query plan, not rows.
pub struct Prepared {
    file: InputFile,
    /// The scan, versions filtered, before the columns are selected.
    lf: LazyFrame,
    /// The expressions that select and cast the trainer's columns.
    exprs: Vec<Expr>,
    has_call_id: bool,
    bad: LineCheck,
    /// Its columns that are no field of the schema.
    unread: Vec<UnreadColumn>,
    /// The cleaned copy read instead of the file, deleted when this is dropped.
    cleaned_copy: Option<tempfile::TempPath>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("file", &self.file)
            .field("has_call_id", &self.has_call_id)
            .field("bad", &self.bad)
            .field("unread", &self.unread)
            .field("cleaned_copy", &self.cleaned_copy.is_some())
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// The file.
    pub fn file(&self) -> &InputFile {
        &self.file
    }

    /// Its columns that are no field of the attempt schema, and so are not read (a
    /// Parquet file's; an NDJSON file is read with the schema's columns).
    pub fn unread_columns(&self) -> &[UnreadColumn] {
        &self.unread
    }

    /// The scan with `filter` applied and the columns the trainer reads selected and cast
    /// (`sample`'s predicate goes first, on the file's own columns, so that polars pushes
    /// it into the scan).
    fn filtered(&self, filter: &Filter, sample: &Sample) -> LazyFrame {
        let mut lf = self.lf.clone();
        if let Some(p) = sample.predicate(self.has_call_id) {
            lf = lf.filter(p);
        }
        let mut lf = lf.select(self.exprs.clone());
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
        lf
    }
}

/// Opens `files` for reading: each file's versions and columns are checked once, here
/// (an NDJSON file's lines are parsed one at a time; a Parquet file's `schema_version`
/// column is grouped), and what is skipped is counted when the file is loaded. While the
/// result lives, an NDJSON file with lines to skip or rewrite (or a name like a pattern)
/// has a cleaned copy on disk (at most the inputs' size).
///
/// # Errors
/// As [`load`]'s.
pub fn prepare(files: &[InputFile]) -> Result<Vec<Prepared>, TrainError> {
    let prepared = files
        .iter()
        .map(|file| {
            let (mut lf, bad, copy) = scan(file)?;
            let (exprs, has_column, unread) = check_schema(file, &mut lf)?;
            // NDJSON is read with every column of the schema: whether it has call ids is
            // whether any line names one.
            let has_call_id = match file.format {
                Format::Parquet => has_column,
                Format::Ndjson => bad.call_id_lines > 0,
            };
            Ok(Prepared {
                file: file.clone(),
                lf,
                exprs,
                has_call_id,
                bad,
                unread,
                cleaned_copy: copy,
            })
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    warn_of_unread_columns(&prepared);
    Ok(prepared)
}

/// The NDJSON lines (and Parquet rows of an unreadable version) of `files` skipped before
/// any row is read, by why - as a load of them counts them in its summary.
pub fn skipped_lines(files: &[Prepared]) -> BTreeMap<String, u64> {
    let mut summary = LoadSummary::default();
    for p in files {
        p.bad.count_into(&mut summary);
    }
    summary.skipped
}

/// Counts the rows of `files` that pass `filter`, without reading them: polars answers
/// from the Parquet footers (or, with a filter, reads only the filter's columns) and counts
/// an NDJSON file's lines. Each file's schema is checked as [`load`] checks it.
///
/// # Errors
/// As [`load`]'s.
pub fn count_rows(files: &[InputFile], filter: &Filter) -> Result<u64, TrainError> {
    count_prepared(&prepare(files)?, filter)
}

/// [`count_rows`] of files already [`prepare`]d.
///
/// # Errors
/// A file polars cannot read.
pub fn count_prepared(files: &[Prepared], filter: &Filter) -> Result<u64, TrainError> {
    let mut total = 0u64;
    for p in files {
        let lf = p.filtered(filter, &Sample::ALL);
        let n = guarded(&p.file, || {
            let df = lf
                .select([len().cast(DataType::UInt64).alias("rows")])
                .collect()?;
            Ok(df.column("rows")?.u64()?.get(0))
        })?;
        total += n.unwrap_or(0);
    }
    Ok(total)
}

/// The targets `files` hold rows of, sorted, each once: what to tell a user whose target
/// filter matched nothing.
///
/// # Errors
/// As [`load`]'s.
pub fn targets(files: &[InputFile]) -> Result<Vec<String>, TrainError> {
    targets_prepared(&prepare(files)?)
}

/// [`targets`] of files already [`prepare`]d.
///
/// # Errors
/// A file polars cannot read.
pub fn targets_prepared(files: &[Prepared]) -> Result<Vec<String>, TrainError> {
    let mut found = std::collections::BTreeSet::new();
    for p in files {
        let lf = p.filtered(&Filter::default(), &Sample::ALL);
        let names = guarded(&p.file, || {
            let df = lf.select([col("target").unique()]).collect()?;
            Ok(df.column("target")?.str()?.clone())
        })?;
        found.extend(names.iter().flatten().map(str::to_owned));
    }
    Ok(found.into_iter().collect())
}

/// Reads every file, keeps the rows that pass `filter`, and turns them into [`Rows`].
///
/// Rows that cannot be used are dropped and counted by reason in the summary: a required
/// value missing (or unreadable), an unknown outcome or error kind, negative or non-finite
/// durations, negative counts, an impossible HTTP status, a failure rate outside `[0, 1]`
/// or NaN, and hedges cancelled before they ended (their outcome is unknown).
///
/// Memory grows with the rows read: [`load_sample`] bounds it.
///
/// # Errors
/// Unreadable files, missing required columns, columns of the wrong type.
pub fn load(
    files: &[InputFile],
    filter: &Filter,
    on_file: impl FnMut(&InputFile),
) -> Result<(Rows, LoadSummary), TrainError> {
    load_sample(files, filter, &Sample::ALL, on_file)
}

/// Like [`load`], keeping only the rows of the calls `sample` keeps. Files are read one
/// at a time with the sample's predicate inside polars, so memory holds the rows kept so
/// far and one file's (filtered) columns, whatever the input's size.
///
/// # Errors
/// As [`load`]'s.
pub fn load_sample(
    files: &[InputFile],
    filter: &Filter,
    sample: &Sample,
    on_file: impl FnMut(&InputFile),
) -> Result<(Rows, LoadSummary), TrainError> {
    load_prepared(&prepare(files)?, filter, sample, None, on_file)
}

/// [`load_sample`] of files already [`prepare`]d (the lines and rows each file's checks
/// skipped are counted in the summary here). Rows whose target health was measured over
/// another window than the most common one are dropped and counted; with `window` (a
/// model's, for its evaluation), the rows measured over it are kept instead where there
/// are any.
///
/// # Errors
/// A file polars cannot read.
pub fn load_prepared(
    files: &[Prepared],
    filter: &Filter,
    sample: &Sample,
    window: Option<Duration>,
    mut on_file: impl FnMut(&InputFile),
) -> Result<(Rows, LoadSummary), TrainError> {
    let mut summary = LoadSummary {
        files: files.len(),
        ..LoadSummary::default()
    };
    let mut rows = Rows::default();
    let mut hedges = Vec::new();
    for p in files {
        let lf = p.filtered(filter, sample);
        p.bad.count_into(&mut summary);
        let df = guarded(&p.file, || lf.collect())?;
        guarded(&p.file, || {
            convert(&df, p.has_call_id, &mut rows, &mut hedges, &mut summary)
        })?;
        on_file(&p.file);
    }
    drop_duplicates(&mut rows, &hedges, &mut summary);
    drop(hedges);
    settle_health_window(&mut rows, &mut summary, window);
    summary.rows = rows.len() as u64;
    Ok((rows, summary))
}

/// The reason a repeated record is skipped under.
pub const DUPLICATE: &str =
    "duplicate record (the same target, call, attempt, hedge and start as an earlier one)";

/// Drops the rows that repeat an earlier row's attempt — the same target, call, attempt,
/// hedge (`hedges`, beside the rows) and start: one record delivered twice, as shipping
/// and ingestion deliver at least once — and counts them. Rows without a call id are all
/// kept: nothing tells their calls apart.
fn drop_duplicates(rows: &mut Rows, hedges: &[u32], summary: &mut LoadSummary) {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    let keep: Vec<usize> = (0..rows.len())
        .filter(|&i| match rows.call_id[i] {
            Some(call) => seen.insert((
                rows.contexts[i].target.as_ref(),
                call,
                rows.contexts[i].attempt,
                hedges.get(i).copied().unwrap_or(0),
                rows.started_at_ms[i],
            )),
            None => true,
        })
        .collect();
    drop(seen);
    let repeated = rows.len() - keep.len();
    if repeated > 0 {
        summary.skip(DUPLICATE, repeated as u64);
        *rows = rows.select(&keep);
    }
}

/// Makes the rows' health inputs mean one thing: keeps the rows measured over `wanted`
/// when any were, else over the most common health window (and those that do not say,
/// written before schema 1.2), drops and counts the others, and records the window in
/// `rows`.
fn settle_health_window(rows: &mut Rows, summary: &mut LoadSummary, wanted: Option<Duration>) {
    let mut counts: BTreeMap<Duration, usize> = BTreeMap::new();
    for c in &rows.contexts {
        if let Some(w) = c.health_window {
            *counts.entry(w).or_default() += 1;
        }
    }
    let Some(window) = wanted.filter(|w| counts.contains_key(w)).or_else(|| {
        counts
            .iter()
            .max_by_key(|(w, n)| (**n, std::cmp::Reverse(**w)))
            .map(|(w, _)| *w)
    }) else {
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
            "`health_window_ms` is not the {} ms kept",
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
    UInt(&'a UInt64Chunked),
    Float(&'a Float64Chunked),
}

/// The value of `field` in row `i`, converted as records and the HTTP API convert it (the
/// same types, the same millisecond conversion), or why it cannot be.
fn value<'a>(field: &SchemaField, col: &Col<'a>, i: usize) -> Result<Value<'a>, String> {
    let out_of_range = || format!("`{}` {}", field.name, Rule::Range.as_str());
    // (The names it may take, not the value found: the skip reasons are counted by their
    // text, and the values of a column from another tool are as many as its rows.)
    let unknown = |names: &mut dyn Iterator<Item = &'static str>| {
        format!(
            "`{}` is not one of {}",
            field.name,
            names.collect::<Vec<_>>().join(", ")
        )
    };
    Ok(match col {
        Col::Text(c) => match c.get(i) {
            None => Value::Null,
            Some(s) => match field.ty {
                FieldType::Text => Value::Text(s),
                FieldType::ErrorKind => Value::ErrorKind(
                    s.parse::<ErrorKind>()
                        .map_err(|_| unknown(&mut ErrorKind::ALL.iter().map(|k| k.as_str())))?,
                ),
                FieldType::Outcome => Value::Outcome(
                    s.parse::<Outcome>()
                        .map_err(|_| unknown(&mut Outcome::ALL.iter().map(|o| o.as_str())))?,
                ),
                _ => Value::Version(s.parse::<SchemaVersion>().map_err(|_| {
                    format!("`{}` is not a schema version (MAJOR.MINOR)", field.name)
                })?),
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
        Col::UInt(c) => match c.get(i) {
            None => Value::Null,
            Some(n) => {
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
            // A whole-number field stored as floats: whole values only.
            Some(v) if field.ty.max_whole().is_some() => {
                if v.fract() != 0.0 || !v.is_finite() {
                    return Err(format!("`{}` is not a whole number", field.name));
                }
                if v < 0.0 || field.ty.max_whole().is_some_and(|max| v > max as f64) {
                    return Err(out_of_range());
                }
                Value::UInt(v as u64)
            }
            Some(v) => Value::Float(v),
        },
    })
}

/// Appends the rows of `df` (already cast to the wanted types) to `rows`, and each row's
/// hedge number to `hedges`.
///
/// Each row becomes an [`AttemptRecord`] through the schema's setters and is checked with
/// the schema's rules (the checks ingestion and the API apply: each field's, then the
/// agreements between the fields read); a row that breaks one is skipped and counted under
/// the rule, so the summary names the field.
fn convert(
    df: &DataFrame,
    has_call_id: bool,
    rows: &mut Rows,
    hedges: &mut Vec<u32>,
    summary: &mut LoadSummary,
) -> PolarsResult<()> {
    let n = df.height();
    summary.rows_read += n as u64;
    let cols: Vec<(&'static SchemaField, Col<'_>)> = fields()
        .map(|f| {
            let c = df.column(f.name)?;
            // As cast by `check_schema` (a whole-number field may have come as floats).
            let col = match c.dtype() {
                DataType::String => Col::Text(c.str()?),
                DataType::Int64 => Col::Int(c.i64()?),
                DataType::UInt64 => Col::UInt(c.u64()?),
                _ => Col::Float(c.f64()?),
            };
            Ok((f, col))
        })
        .collect::<PolarsResult<_>>()?;
    // The agreements between the fields read (not the outcome's kind of failure, which
    // the trainer does not read: its label is the outcome alone).
    let agreements: Vec<&Agreement> = AGREEMENTS
        .iter()
        .filter(|a| fields().any(|f| f.name == a.field))
        .collect();
    let mut targets: BTreeMap<String, Arc<str>> = BTreeMap::new();
    'rows: for i in 0..n {
        let mut rec = AttemptRecord::blank();
        let mut call_known = true;
        for (f, col) in &cols {
            let v = match value(f, col, i) {
                // A log without call ids (no such column): the call is unknown. A null in
                // the column of a log with them is a record missing a required field.
                Ok(Value::Null) if f.name == CALL_ID && !has_call_id => {
                    call_known = false;
                    continue;
                }
                Ok(Value::Text(t)) if f.name == "target" => {
                    if let Err(e) = f.check(Value::Text(t)) {
                        summary.skip(&e.reason(), 1);
                        continue 'rows;
                    }
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
        if let Err(e) = agreements.iter().try_for_each(|a| a.check(&rec)) {
            summary.skip(&e.reason(), 1);
            continue;
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
        hedges.push(rec.hedge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// [`sample_draw`] as polars computes it, over `keys`.
    fn draws_in_polars(keys: &[u64]) -> Vec<Option<u64>> {
        let df = DataFrame::new_infer_height(vec![Column::new("k".into(), keys)]).unwrap();
        let out = df
            .lazy()
            .select([sample_draw_expr(col("k")).alias("d")])
            .collect()
            .unwrap();
        let d = out.column("d").unwrap().u64().unwrap();
        (0..d.len()).map(|i| d.get(i)).collect()
    }

    /// A panic inside a polars query (its Parquet decoders panic on some corrupt pages:
    /// about one random damage of a small file in sixty) is an error naming the file, with
    /// the panic's message; an error stays the error it was. (Not every such damage can be
    /// caught: one panic inside polars' streaming executor panicked again while unwinding
    /// and aborted the process, so no test damages files at random.)
    #[test]
    fn a_panic_inside_polars_is_an_error_naming_the_file() {
        let file = InputFile {
            path: PathBuf::from("logs/day.parquet"),
            format: Format::Parquet,
            bytes: 1,
        };
        let e = guarded(&file, || -> PolarsResult<()> {
            panic!("index out of bounds: the len is 3 but the index is 7")
        })
        .unwrap_err();
        assert!(matches!(e, TrainError::Input { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "logs/day.parquet is corrupt: polars failed reading it (index out of bounds: the len is 3 but the index is 7)"
        );
        let e = guarded(&file, || -> PolarsResult<()> {
            Err(PolarsError::ComputeError("bad".into()))
        })
        .unwrap_err();
        assert!(matches!(e, TrainError::Polars { .. }), "{e}");
        assert_eq!(guarded(&file, || Ok(7)).unwrap(), 7);
    }

    #[test]
    fn a_pattern_that_matches_nothing_is_an_error_an_empty_folder_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data");
        std::fs::write(data.join("a.parquet"), b"PAR1").expect("file");
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).expect("empty");
        let s = |p: &Path| p.to_string_lossy().into_owned();
        assert_eq!(resolve(&[s(&data)]).expect("one folder").len(), 1);
        // The same file under three spellings is one file.
        let again = dir.path().join("./data/../data/a.parquet");
        assert_eq!(
            resolve(&[s(&data), s(&data.join("a.parquet")), s(&again)])
                .expect("one file")
                .len(),
            1
        );
        assert_eq!(
            resolve(&[s(&data), s(&empty)])
                .expect("an empty folder")
                .len(),
            1
        );
        let typo = format!("{}/**/*.parqet", s(dir.path()));
        let e = resolve(&[s(&data), typo.clone()]).expect_err("refused");
        assert!(
            matches!(&e, TrainError::Input { path, .. } if path == Path::new(&typo)),
            "{e}"
        );
        assert!(e.to_string().contains("matches no"), "{e}");
    }

    #[test]
    fn polars_draws_what_rust_draws_at_the_edges() {
        let keys = [
            0,
            1,
            2,
            SAMPLE_SALT,
            (1 << 33) - 1,
            1 << 33,
            i64::MAX as u64,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ];
        let want: Vec<Option<u64>> = keys.iter().map(|&k| Some(sample_draw(k))).collect();
        assert_eq!(draws_in_polars(&keys), want);
    }

    #[test]
    fn fractions_and_max_rows_are_checked() {
        for bad in [0.0, -0.1, f64::NAN] {
            let e = Sample::with_fraction(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    TrainError::InvalidOption {
                        option: "sample fraction",
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        assert_eq!(Sample::with_fraction(1.0).unwrap(), Sample::ALL);
        assert_eq!(Sample::with_fraction(7.0).unwrap(), Sample::ALL);
        let e = Sample::for_rows(0, 10).unwrap_err();
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
        assert!(
            e.to_string().contains("`max_rows`: must be at least 1"),
            "{e}"
        );
        // An input no larger than asked for is read whole.
        assert_eq!(Sample::for_rows(10, 10).unwrap(), Sample::ALL);
        assert_eq!(Sample::for_rows(10, 0).unwrap(), Sample::ALL);
        assert_eq!(Sample::for_rows(1, 4).unwrap().fraction(), 0.25);
    }

    proptest! {
        /// The predicate polars runs draws exactly what `Sample::keeps` draws, for any ids
        /// (wrapping multiplication, shifts as divisions).
        #[test]
        fn polars_and_rust_agree_on_every_draw(keys in proptest::collection::vec(any::<u64>(), 1..64)) {
            let want: Vec<Option<u64>> = keys.iter().map(|&k| Some(sample_draw(k))).collect();
            prop_assert_eq!(draws_in_polars(&keys), want);
        }

        /// A smaller sample of an input is a subset of a larger one: the draw does not
        /// depend on the fraction, only the threshold does.
        #[test]
        fn a_smaller_sample_is_a_subset_of_a_larger_one(
            ids in proptest::collection::vec(any::<u64>(), 1..200),
            small in 1u64..1_000,
            extra in 0u64..1_000,
            input in 1_000u64..100_000,
        ) {
            let a = Sample::for_rows(small, input).unwrap();
            let b = Sample::for_rows(small + extra, input).unwrap();
            prop_assert!(a.fraction() <= b.fraction());
            for id in ids {
                prop_assert!(!a.keeps(Some(id), 0) || b.keeps(Some(id), 0), "{id}");
            }
        }
    }
}
