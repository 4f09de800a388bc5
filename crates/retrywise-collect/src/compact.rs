//! Compaction: closed NDJSON segments into day-partitioned Parquet (feature `parquet`).
//!
//! Each closed segment `seg-X.ndjson` becomes one Parquet file per UTC day its records
//! started on, `OUT/date=YYYY-MM-DD/part-seg-X.parquet`, with the explicit schema of
//! [`attempt_schema`] (every column's type is fixed here, never inferred from data). Bad
//! lines are skipped and counted exactly as [`SegmentReader`] does.
//!
//! Crash safety and idempotence come from the naming: a part is written to a temporary
//! file, fsynced and renamed into place, and the segment is removed (or archived) only
//! after all its parts are durable. A run interrupted anywhere leaves either the segment
//! (and a re-run finds the very same part files, so no row is duplicated) or the parts
//! without the segment (and nothing is left to do). Running twice yields the same rows once.
//! A part is never replaced by other rows: a segment whose part exists without some of its
//! rows (one of the same name compacted into the same output before), or damaged, stops the
//! run and is kept ([`CollectError::PartExists`], saying which); one whose part holds all
//! of them (its own, from a run that stopped) leaves it as it is - or, written by an
//! earlier build without columns added since, writes it over with them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use polars::prelude::*;
use retrywise::attempt::schema::{FIELDS, Field as SchemaField, FieldType, Storage, Value};
use retrywise::attempt::{AttemptRecord, SchemaVersion, duration_to_ms};
use serde::Serialize;

use crate::CollectError;
use crate::reader::{ReadSummary, SegmentReader, SkippedLine, copy_skipped_lines};
use crate::segment::{self, Segment};

const MS_PER_DAY: u64 = 86_400_000;

/// The polars type of a schema storage type.
fn dtype(storage: Storage) -> DataType {
    match storage {
        Storage::String => DataType::String,
        Storage::UInt16 => DataType::UInt16,
        Storage::UInt32 => DataType::UInt32,
        Storage::UInt64 => DataType::UInt64,
        Storage::Float64 => DataType::Float64,
    }
}

/// The partition column of a compacted tree (`date=YYYY-MM-DD/`, the UTC day of
/// `started_at_ms`): in the folder's name, and added as a column by readers such as
/// polars, DuckDB and Spark (and in the files of a tree they write back).
pub const PARTITION: &str = "date";

/// The column of the fields a record carried that this build does not know (a newer
/// minor version's): one JSON object per row, null when there were none
/// ([`AttemptRecord::unknown`]). A newer build can read them back; the trainer does not.
pub const UNKNOWN_FIELDS: &str = "unknown_fields";

/// The Parquet schema of attempt records: one column per field of
/// [`retrywise::attempt::schema::FIELDS`], in its order and of its storage type, then
/// [`UNKNOWN_FIELDS`] (the hive partition `date` is in the path, not in the files).
/// Documented in `data/README.md`.
pub fn attempt_schema() -> Schema {
    Schema::from_iter(
        FIELDS
            .iter()
            .map(|f| Field::new(f.name.into(), dtype(f.storage())))
            .chain([Field::new(UNKNOWN_FIELDS.into(), DataType::String)]),
    )
}

/// Builds a [`DataFrame`] of [`attempt_schema`] from records, one column per schema field.
#[derive(Debug, Default)]
pub struct FrameBuilder {
    rows: Vec<AttemptRecord>,
}

impl FrameBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows added so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds one record as a row.
    pub fn push(&mut self, r: AttemptRecord) {
        self.rows.push(r);
    }

    fn column(&self, f: &SchemaField) -> Column {
        let name = f.name.into();
        let rows = &self.rows;
        match f.storage() {
            Storage::String => {
                // Versions repeat: format each distinct one once, then borrow.
                let mut versions: Vec<(SchemaVersion, String)> = Vec::new();
                if f.ty == FieldType::Version {
                    for r in rows {
                        if let Value::Version(v) = f.get(r)
                            && !versions.iter().any(|(k, _)| *k == v)
                        {
                            versions.push((v, v.to_string()));
                        }
                    }
                }
                let values: Vec<Option<&str>> = rows
                    .iter()
                    .map(|r| match f.get(r) {
                        Value::Text(s) => Some(s),
                        Value::ErrorKind(k) => Some(k.as_str()),
                        Value::Outcome(o) => Some(o.as_str()),
                        Value::Version(v) => versions
                            .iter()
                            .find(|(k, _)| *k == v)
                            .map(|(_, s)| s.as_str()),
                        _ => None,
                    })
                    .collect();
                Column::new(name, values)
            }
            Storage::UInt16 => Column::new(name, self.whole(f, |n| u16::try_from(n).ok())),
            Storage::UInt32 => Column::new(name, self.whole(f, |n| u32::try_from(n).ok())),
            Storage::UInt64 => Column::new(name, self.whole(f, Some)),
            Storage::Float64 => {
                let values: Vec<Option<f64>> = rows
                    .iter()
                    .map(|r| match f.get(r) {
                        Value::Float(x) => Some(x),
                        Value::Duration(d) => Some(duration_to_ms(d)),
                        _ => None,
                    })
                    .collect();
                Column::new(name, values)
            }
        }
    }

    fn whole<T>(&self, f: &SchemaField, cast: impl Fn(u64) -> Option<T>) -> Vec<Option<T>> {
        self.rows
            .iter()
            .map(|r| match f.get(r) {
                Value::UInt(n) => cast(n),
                _ => None,
            })
            .collect()
    }

    /// The rows as a frame of exactly [`attempt_schema`].
    ///
    /// # Errors
    /// A polars error if a column cannot be built (which would be a bug), or if the
    /// frame's schema differs from [`attempt_schema`].
    pub fn finish(self) -> PolarsResult<DataFrame> {
        let mut columns: Vec<Column> = FIELDS.iter().map(|f| self.column(f)).collect();
        let unknown: Vec<Option<String>> = self
            .rows
            .iter()
            .map(|r| {
                r.unknown
                    .as_ref()
                    .map(|u| serde_json::Value::Object((**u).clone()).to_string())
            })
            .collect();
        columns.push(Column::new(UNKNOWN_FIELDS.into(), unknown));
        let df = DataFrame::new_infer_height(columns)?;
        let want = attempt_schema();
        if **df.schema() != want {
            return Err(PolarsError::SchemaMismatch(
                format!("built {:?}, expected {want:?}", df.schema()).into(),
            ));
        }
        Ok(df)
    }
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (proleptic Gregorian, UTC).
pub fn day_name(days: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{:02}-{:02}", if m <= 2 { y + 1 } else { y }, m, d)
}

/// What to do with a segment once its Parquet parts are durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposal {
    /// Remove it.
    Delete,
    /// Move it into this directory.
    Archive(PathBuf),
}

/// How to compact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactOptions {
    /// The segment directory.
    pub input: PathBuf,
    /// The root of the Parquet dataset.
    pub output: PathBuf,
    /// What happens to compacted segments. Defaults to [`Disposal::Delete`].
    pub disposal: Disposal,
    /// Segments compacted at once, from 1 to [`MAX_THREADS`]. Defaults to the number of
    /// CPUs (at most that).
    pub threads: usize,
}

impl CompactOptions {
    /// Compacts `input` into `output`, deleting compacted segments, on every CPU.
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        Self {
            input: input.into(),
            output: output.into(),
            disposal: Disposal::Delete,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(MAX_THREADS)),
        }
    }
}

/// A step of a compaction, for progress bars (and cancellation: returning
/// `ControlFlow::Break` stops the run at the next safe point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompactEvent {
    /// The run starts: this many closed segments, this many bytes.
    Started {
        /// Closed segments to compact.
        segments: usize,
        /// Their total size.
        bytes: u64,
    },
    /// A Parquet part is durable.
    PartWritten {
        /// Its path.
        path: PathBuf,
        /// Its rows.
        rows: u64,
    },
    /// A segment is done and disposed of.
    SegmentDone {
        /// The segment.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
}

/// What a compaction read, wrote and skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompactSummary {
    /// Directories under the input that held segments.
    pub directories: u64,
    /// Segments compacted (and disposed of).
    pub segments: u64,
    /// Segments still open (being written, or of a writer that crashed and has not been
    /// restarted): left alone.
    pub open_segments_skipped: u64,
    /// Folders below the input that could not be listed (no permission, or removed
    /// meanwhile): any segments in them were left where they are.
    pub folders_unlisted: Vec<PathBuf>,
    /// Lines and records read, lines skipped by reason.
    pub read: ReadSummary,
    /// Parquet files written.
    pub parts: u64,
    /// Rows written.
    pub rows: u64,
    /// Bytes of Parquet written.
    pub bytes: u64,
    /// Rows written per day.
    pub rows_per_day: BTreeMap<String, u64>,
    /// Whether the run stopped early because the progress callback asked it to.
    pub interrupted: bool,
    /// Segments left in place because not one of their lines was a record (each was
    /// skipped as torn, malformed or of no readable version): removing them would destroy
    /// whatever they hold, and nothing of it reached Parquet.
    pub unreadable_kept: Vec<PathBuf>,
    /// Files holding the skipped lines of segments that were compacted and removed (each
    /// beside its segment, named after it, ending in [`REJECTED`]): removing a segment
    /// must not destroy the lines that could not be read as records.
    pub rejected_kept: Vec<PathBuf>,
}

/// The ending of the file that keeps a removed segment's lines that were not records
/// (`seg-….rejected`: no reader of segments or of NDJSON picks it up).
pub const REJECTED: &str = ".rejected";

/// A path made absolute with every part that exists resolved (symbolic links, `.`, and
/// `..` from where a link led), so that two names of one folder compare equal; the part
/// that does not exist yet is appended as given (its own `..` taken lexically).
fn resolved(path: &Path) -> PathBuf {
    use std::path::Component;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut at = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                // `..` of a link is the parent of where it leads.
                if let Ok(real) = at.canonicalize() {
                    at = real;
                }
                at.pop();
            }
            other => at.push(other),
        }
    }
    // The longest part that exists, resolved; the rest as given.
    let mut existing = at.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return at,
        }
    }
}

/// The input, the output and the archive are three folders apart: the output and the
/// archive neither the same nor one inside the other (the dataset would hold the archived
/// segments, and training read every row twice), and the input not the output or the
/// archive nor inside either (its segments would be skipped as theirs, or read beside
/// their own Parquet). The output and the archive may lie inside the input: they are
/// skipped there.
fn check_folders(options: &CompactOptions) -> Result<(), CollectError> {
    let input = resolved(&options.input);
    let output = resolved(&options.output);
    let inside = |a: &Path, b: &Path| a.starts_with(b);
    let say = |field: &'static str, what: String| Err(CollectError::config(field, what));
    if inside(&input, &output) {
        return say(
            "input",
            format!(
                "{} is the output folder {} or inside it: compacted Parquet and segments must not mix",
                options.input.display(),
                options.output.display()
            ),
        );
    }
    if let Disposal::Archive(dir) = &options.disposal {
        let archive = resolved(dir);
        if inside(&archive, &output) || inside(&output, &archive) {
            return say(
                "archive",
                format!(
                    "{} and the output folder {} are the same or one holds the other: the dataset would hold the archived segments, and training read their rows twice",
                    dir.display(),
                    options.output.display()
                ),
            );
        }
        if inside(&input, &archive) {
            return say(
                "input",
                format!(
                    "{} is the archive folder {} or inside it",
                    options.input.display(),
                    dir.display()
                ),
            );
        }
    }
    Ok(())
}

/// The most worker threads a compaction may run ([`CompactOptions::threads`]): each holds
/// a whole segment's records in memory, and one the system refuses would stop the run.
pub const MAX_THREADS: usize = 256;

/// Compacts every closed segment in the tree under `options.input` (every directory a
/// recorder writes, at any depth) into `options.output`.
///
/// `on_event` is called from the worker threads as the run progresses; returning
/// `ControlFlow::Break(())` stops the run at the next safe point (a segment whose parts
/// are not all written is left in place, to be redone by the next run).
///
/// # Errors
/// I/O errors on the directories or files, a segment of an unsupported schema major
/// version (it is left in place), or a Parquet write failure. Work finished before the
/// error is kept: those segments are disposed of and their parts are durable.
pub fn compact(
    options: &CompactOptions,
    on_event: impl Fn(&CompactEvent) -> ControlFlow<()> + Sync,
) -> Result<CompactSummary, CollectError> {
    if !(1..=MAX_THREADS).contains(&options.threads) {
        return Err(CollectError::config(
            "threads",
            format!(
                "must be within [1, {MAX_THREADS}] (each holds one segment's records), got {}",
                options.threads
            ),
        ));
    }
    let archive = match &options.disposal {
        Disposal::Archive(dir) => Some(("archive", dir)),
        Disposal::Delete => None,
    };
    for (field, dir) in [("input", &options.input), ("output", &options.output)]
        .into_iter()
        .chain(archive)
    {
        if dir.exists() && !dir.is_dir() {
            return Err(CollectError::config(
                field,
                format!("{} is a file, not a folder", dir.display()),
            ));
        }
    }
    check_folders(options)?;
    // Durable before any segment is removed or moved into them.
    segment::create_dir_durable(&options.output)
        .map_err(|e| CollectError::io("create", &options.output, e))?;
    if let Disposal::Archive(dir) = &options.disposal {
        segment::create_dir_durable(dir).map_err(|e| CollectError::io("create", dir, e))?;
    }
    let lock = crate::writer::lock_folder(&options.output, ".compact.lock")?;
    // The input too: two compactions of one folder into two outputs would each write
    // every segment's rows, and one fail to remove what the other removed. (None when
    // it is not there: nothing to compact.)
    let input_lock = if options.input.is_dir() {
        Some(crate::writer::lock_folder(&options.input, INPUT_LOCK)?)
    } else {
        None
    };
    remove_stale_temporaries(&options.output)?;

    let skip: Vec<&Path> = match &options.disposal {
        Disposal::Archive(dir) => vec![dir.as_path(), options.output.as_path()],
        Disposal::Delete => vec![options.output.as_path()],
    };
    let tree = segment::list_tree(&options.input, &skip)?;
    let open = tree.segments.iter().filter(|s| !s.closed).count() as u64;
    let closed: Vec<Segment> = tree.segments.into_iter().filter(|s| s.closed).collect();
    // A segment's Parquet part (and its archived copy) is named after its file name: two
    // of one name in different folders would overwrite each other - and each be removed.
    let mut names = std::collections::HashMap::new();
    for seg in &closed {
        if let Some(first) = names.insert(seg.path.file_name(), &seg.path) {
            return Err(CollectError::DuplicateSegmentName {
                first: first.clone(),
                second: seg.path.clone(),
            });
        }
    }
    let bytes = closed
        .iter()
        .map(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len()))
        .sum();
    let stop = AtomicBool::new(false);
    let emit = |e: CompactEvent| {
        if on_event(&e).is_break() {
            stop.store(true, Ordering::SeqCst);
        }
    };
    emit(CompactEvent::Started {
        segments: closed.len(),
        bytes,
    });

    let summary = Mutex::new(CompactSummary {
        directories: tree.directories as u64,
        open_segments_skipped: open,
        folders_unlisted: tree.unlisted,
        ..CompactSummary::default()
    });
    let first_error: Mutex<Option<CollectError>> = Mutex::new(None);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..options.threads.min(closed.len().max(1)) {
            s.spawn(|| {
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(seg) = closed.get(i) else { return };
                    match compact_segment(seg, options, &stop, &emit) {
                        Ok(done) => {
                            let mut sum = summary.lock().unwrap_or_else(|p| p.into_inner());
                            sum.read.merge(&done.read);
                            if done.finished {
                                sum.segments += 1;
                            }
                            if done.unreadable {
                                sum.unreadable_kept.push(seg.path.clone());
                            }
                            if let Some(kept) = done.rejected {
                                sum.rejected_kept.push(kept);
                            }
                            sum.parts += done.parts;
                            sum.rows += done.rows;
                            sum.bytes += done.bytes;
                            for (day, n) in done.rows_per_day {
                                *sum.rows_per_day.entry(day).or_default() += n;
                            }
                        }
                        Err(e) => {
                            stop.store(true, Ordering::SeqCst);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut summary = summary.into_inner().unwrap_or_else(|p| p.into_inner());
    summary.interrupted = stop.load(Ordering::SeqCst) && summary.segments < closed.len() as u64;
    if summary.segments > 0 {
        let mut parents: Vec<&Path> = closed.iter().filter_map(|s| s.path.parent()).collect();
        parents.sort_unstable();
        parents.dedup();
        for dir in parents {
            segment::sync_dir(dir).map_err(|e| CollectError::io("sync", dir, e))?;
        }
    }
    drop((lock, input_lock));
    Ok(summary)
}

struct SegmentDone {
    read: ReadSummary,
    parts: u64,
    rows: u64,
    bytes: u64,
    rows_per_day: BTreeMap<String, u64>,
    finished: bool,
    /// Lines, but not one record: left in place.
    unreadable: bool,
    /// Where the lines that were not records were kept, when the segment was removed.
    rejected: Option<PathBuf>,
}

fn compact_segment(
    seg: &Segment,
    options: &CompactOptions,
    stop: &AtomicBool,
    emit: &(impl Fn(CompactEvent) + Sync),
) -> Result<SegmentDone, CollectError> {
    let seg_bytes = std::fs::metadata(&seg.path).map_or(0, |m| m.len());
    let mut reader = SegmentReader::over(vec![seg.clone()]).keeping_skipped();
    let mut days: BTreeMap<u64, FrameBuilder> = BTreeMap::new();
    for r in reader.by_ref() {
        let r = r?;
        days.entry(r.started_at_ms / MS_PER_DAY)
            .or_default()
            .push(r);
    }
    let mut done = SegmentDone {
        read: reader.summary().clone(),
        parts: 0,
        rows: 0,
        bytes: 0,
        rows_per_day: BTreeMap::new(),
        finished: false,
        unreadable: false,
        rejected: None,
    };
    for (day, builder) in days {
        if stop.load(Ordering::SeqCst) {
            return Ok(done);
        }
        let name = day_name(day);
        let dir = options.output.join(format!("{PARTITION}={name}"));
        let rows = builder.len() as u64;
        let mut df = builder.finish().map_err(|e| compact_error(&seg.path, &e))?;
        let (path, bytes) = write_part(&dir, &seg.stem, &mut df, &seg.path)?;
        done.parts += 1;
        done.rows += rows;
        done.bytes += bytes;
        *done.rows_per_day.entry(name).or_default() += rows;
        emit(CompactEvent::PartWritten { path, rows });
    }
    if stop.load(Ordering::SeqCst) {
        return Ok(done);
    }
    if done.rows == 0 && done.read.skipped() > 0 {
        // Lines, but no record: keep the file for a person to look at.
        done.unreadable = true;
        return Ok(done);
    }
    let skipped = reader.take_skipped_lines();
    if !skipped.is_empty() && matches!(options.disposal, Disposal::Delete) {
        done.rejected = Some(keep_rejected(seg, &skipped)?);
    }
    dispose(seg, &options.disposal)?;
    done.finished = true;
    emit(CompactEvent::SegmentDone {
        path: seg.path.clone(),
        bytes: seg_bytes,
    });
    Ok(done)
}

fn compact_error(path: &Path, e: &PolarsError) -> CollectError {
    CollectError::Compact {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

/// Writes `df` durably as `dir/part-STEM.parquet` (temporary file, fsync, rename, fsync of
/// the directory). Returns the path and its size.
fn write_part(
    dir: &Path,
    stem: &str,
    df: &mut DataFrame,
    source: &Path,
) -> Result<(PathBuf, u64), CollectError> {
    // The partition folder (`date=D`) durable in its parent before any segment whose
    // rows it holds is removed: else a crash could keep the removal and lose the folder,
    // and the rows with it.
    segment::create_dir_durable(dir).map_err(|e| CollectError::io("create", dir, e))?;
    let tmp = dir.join(format!(".part-{stem}.parquet.tmp"));
    let path = dir.join(format!("part-{stem}.parquet"));
    // A part already there is this segment's from a run that stopped before removing it
    // (it holds every row this run would write — written by this build, kept; or by an
    // earlier one without columns added since, written over with them: the segment's
    // values of those columns would otherwise be lost with it), or another segment's of
    // the same name, which is never replaced.
    let existing = match File::open(&path) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        // There but unreadable (its permissions, say): never written over.
        Err(e) => return Err(CollectError::io("open", &path, e)),
    };
    if let Some(file) = existing {
        // A damaged part is not this segment's part, and is kept (refused below), not the
        // end of the compaction: its footer is checked before the reader reserves what it
        // claims (an abort no `catch_unwind` stops), and a panic of the reader is caught.
        let old = crate::footer::check(&path)
            .map_err(|e| format!("its footer is damaged: {e}"))
            .and_then(|()| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    ParquetReader::new(file)
                        .finish()
                        .map_err(|e| format!("it cannot be read: {e}"))
                }))
                .unwrap_or_else(|_| Err("it cannot be read (the reader panicked)".into()))
            });
        let refused = |why: String| CollectError::PartExists {
            part: path.clone(),
            segment: source.to_path_buf(),
            why,
        };
        let old = old.map_err(refused)?;
        let rows = part_rows(&old, df).ok_or_else(|| {
            refused(
                "it lacks the columns that name an attempt (target, call, attempt, hedge, start)"
                    .into(),
            )
        })?;
        if rows == PartRows::Missing {
            return Err(refused(
                "it lacks rows this segment holds: another segment's, of the same name".into(),
            ));
        }
        let lacks = df
            .get_column_names()
            .into_iter()
            .any(|c| old.column(c).is_err());
        // Written over only when it holds exactly this segment's rows: one with more (rows
        // an earlier build kept that this one skips) is kept as it is, those rows with it.
        if lacks && rows == PartRows::More {
            tracing::warn!(part = %path.display(), "an earlier build's part holds more rows than this build reads from its segment: kept as it is, without the columns added since");
        }
        if !lacks || rows == PartRows::More {
            let bytes = std::fs::metadata(&path)
                .map_err(|e| CollectError::io("stat", &path, e))?
                .len();
            return Ok((path, bytes));
        }
        // An earlier build's part of this segment, without columns added since: written
        // over below (atomically: the old part stays whole until the new one replaces it).
    }
    let file = File::create(&tmp).map_err(|e| CollectError::io("create", &tmp, e))?;
    let level = polars::polars_utils::compression::ZstdLevel::try_new(1)
        .map_err(|e| compact_error(source, &e))?;
    let bytes = ParquetWriter::new(file)
        .with_compression(ParquetCompression::Zstd(Some(level)))
        .with_statistics(StatisticsOptions::full())
        .finish(df)
        .map_err(|e| compact_error(source, &e))?;
    segment::publish(&tmp, &path, dir)?;
    Ok((path, bytes))
}

/// How a part already there holds a segment's rows, by the attempt's identity (target,
/// call, attempt, hedge and start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartRows {
    /// Exactly the segment's.
    Same,
    /// Every one of the segment's, and more.
    More,
    /// Not every one of the segment's.
    Missing,
}

/// How `old` (a part) holds the rows of `new` (a segment's); `None` if either lacks the
/// columns that name an attempt.
fn part_rows(old: &DataFrame, new: &DataFrame) -> Option<PartRows> {
    /// An attempt's identity: target, call, attempt, hedge, start.
    type Key = (String, u64, u32, u32, u64);
    fn keys(df: &DataFrame) -> Option<std::collections::HashSet<Key>> {
        let target = df.column("target").ok()?.str().ok()?;
        let call = df.column("call_id").ok()?.u64().ok()?;
        let attempt = df.column("attempt").ok()?.u32().ok()?;
        let hedge = df.column("hedge").ok()?.u32().ok()?;
        let start = df.column("started_at_ms").ok()?.u64().ok()?;
        Some(
            (0..df.height())
                .map(|i| {
                    (
                        target.get(i).unwrap_or_default().to_owned(),
                        call.get(i).unwrap_or_default(),
                        attempt.get(i).unwrap_or_default(),
                        hedge.get(i).unwrap_or_default(),
                        start.get(i).unwrap_or_default(),
                    )
                })
                .collect(),
        )
    }
    let (old, new) = (keys(old)?, keys(new)?);
    Some(if !new.is_subset(&old) {
        PartRows::Missing
    } else if old.len() == new.len() {
        PartRows::Same
    } else {
        PartRows::More
    })
}

/// Writes the lines of `seg` that were not records durably beside it
/// (`seg-STEM.rejected`: temporary file, fsync, rename, fsync of the directory), before
/// the segment is removed. Written whole each time, so a re-run after a crash writes the
/// same file.
fn keep_rejected(seg: &Segment, lines: &[SkippedLine]) -> Result<PathBuf, CollectError> {
    let dir = seg.path.parent().unwrap_or(Path::new("."));
    let path = dir.join(format!("{}{REJECTED}", seg.stem));
    let tmp = dir.join(format!(".{}{REJECTED}.tmp", seg.stem));
    let written = std::fs::File::create(&tmp)
        .map_err(|e| CollectError::io("create", &tmp, e))
        .and_then(|f| {
            let mut out = std::io::BufWriter::new(f);
            copy_skipped_lines(lines, &mut out, &tmp)?;
            out.flush().map_err(|e| CollectError::io("write", &tmp, e))
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    segment::publish(&tmp, &path, dir)?;
    Ok(path)
}

fn dispose(seg: &Segment, disposal: &Disposal) -> Result<(), CollectError> {
    match disposal {
        Disposal::Delete => {
            std::fs::remove_file(&seg.path).map_err(|e| CollectError::io("remove", &seg.path, e))
        }
        Disposal::Archive(dir) => {
            let Some(name) = seg.path.file_name() else {
                return Ok(());
            };
            let to = dir.join(name);
            if std::fs::rename(&seg.path, &to).is_err() {
                // Another file system: the copy made durable under its name (a temporary
                // file, fsynced, renamed, the archive fsynced) before the segment is
                // removed - never the other way round, which a crash could leave with
                // neither.
                let mut tmp = name.to_owned();
                tmp.push(".tmp");
                let tmp = dir.join(tmp);
                let copied = std::fs::copy(&seg.path, &tmp)
                    .map_err(|e| CollectError::io("archive", &seg.path, e))
                    .and_then(|_| segment::publish(&tmp, &to, dir));
                if let Err(e) = copied {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                std::fs::remove_file(&seg.path)
                    .map_err(|e| CollectError::io("remove", &seg.path, e))?;
                let from = seg.path.parent().unwrap_or(Path::new("."));
                return segment::sync_dir(from).map_err(|e| CollectError::io("sync", from, e));
            }
            segment::sync_dir(dir).map_err(|e| CollectError::io("sync", dir, e))
        }
    }
}

/// The lock file a compaction holds in its input folder.
pub const INPUT_LOCK: &str = ".compact-input.lock";

/// Removes temporary parts left by a run that crashed mid-write.
fn remove_stale_temporaries(output: &Path) -> Result<(), CollectError> {
    let entries = std::fs::read_dir(output).map_err(|e| CollectError::io("list", output, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        for part in std::fs::read_dir(&path)
            .map_err(|e| CollectError::io("list", &path, e))?
            .flatten()
        {
            let name = part.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.starts_with(".part-") && n.ends_with(".tmp"))
            {
                std::fs::remove_file(part.path())
                    .map_err(|e| CollectError::io("remove", part.path(), e))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_names() {
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(day_name(1_764_000_000_000 / MS_PER_DAY), "2025-11-24");
        assert_eq!(day_name(11_016), "2000-02-29");
        assert_eq!(day_name(11_017), "2000-03-01");
        assert_eq!(day_name(19_782), "2024-02-29");
    }
}
