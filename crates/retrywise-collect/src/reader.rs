//! Reading records back from a directory of segments, tolerating what crashes and bugs leave
//! behind.

use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

use retrywise::attempt::schema::MAX_LINE_BYTES;
use retrywise::attempt::{AttemptRecord, SchemaVersion};
use serde::Serialize;

use crate::CollectError;
use crate::segment::{self, Segment};

/// How many examples of skipped lines a summary keeps.
const EXAMPLES: usize = 5;

/// What a read found: records, and the lines it skipped by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReadSummary {
    /// Segment files read.
    pub files: u64,
    /// Lines read (blank lines excluded).
    pub lines: u64,
    /// Records returned.
    pub records: u64,
    /// Last lines without a newline that are not a whole record (a write cut short by a
    /// crash, or any unterminated last line that is not a JSON object).
    pub torn: u64,
    /// Lines that are not a record: not JSON, wrong types, missing fields, bad values,
    /// longer than any record ([`MAX_LINE_BYTES`], read past without being held).
    pub malformed: u64,
    /// JSON objects without a readable `schema_version`.
    pub unknown_version: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Up to five skipped lines as `file:line: reason`, to show what went wrong.
    pub examples: Vec<String>,
}

impl ReadSummary {
    /// Lines skipped, all reasons together.
    pub fn skipped(&self) -> u64 {
        self.torn + self.malformed + self.unknown_version
    }

    fn example(&mut self, path: &Path, line: u64, reason: impl std::fmt::Display) {
        if self.examples.len() < EXAMPLES {
            self.examples
                .push(format!("{}:{line}: {reason}", path.display()));
        }
    }

    /// Adds another summary's counts to this one.
    pub fn merge(&mut self, other: &ReadSummary) {
        self.files += other.files;
        self.lines += other.lines;
        self.records += other.records;
        self.torn += other.torn;
        self.malformed += other.malformed;
        self.unknown_version += other.unknown_version;
        self.bytes += other.bytes;
        for e in &other.examples {
            if self.examples.len() < EXAMPLES {
                self.examples.push(e.clone());
            }
        }
    }
}

/// Why one line is not a record.
enum Bad {
    Torn,
    Malformed(String),
    UnknownVersion,
    /// Longer than [`MAX_LINE_BYTES`]: this many bytes.
    TooLong(u64),
}

/// Parses one line; `Err(Err(_))` for a fatal unsupported schema.
fn parse_line(bytes: &[u8], last_unterminated: bool) -> Result<AttemptRecord, Result<Bad, String>> {
    match serde_json::from_slice::<AttemptRecord>(bytes) {
        // A record the schema's rules refuse (a start past the year 9999, an unknown field
        // in a version this build knows) is malformed here as it is at ingestion: compacted,
        // it would only be skipped by the trainer, and its segment gone.
        Ok(r) if r.schema_version.major == SchemaVersion::CURRENT.major => match r.validate() {
            Ok(()) => Ok(r),
            Err(e) => Err(Ok(Bad::Malformed(e.to_string()))),
        },
        Ok(r) => Err(Err(r.schema_version.to_string())),
        Err(e) => {
            // The slow path: find out why, to count it right.
            if last_unterminated && e.is_eof() {
                return Err(Ok(Bad::Torn));
            }
            let Ok(serde_json::Value::Object(obj)) =
                serde_json::from_slice::<serde_json::Value>(bytes)
            else {
                return Err(Ok(if last_unterminated {
                    Bad::Torn
                } else {
                    Bad::Malformed(e.to_string())
                }));
            };
            match obj
                .get("schema_version")
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<SchemaVersion>().ok())
            {
                None => Err(Ok(Bad::UnknownVersion)),
                Some(v) if v.major != SchemaVersion::CURRENT.major => Err(Err(v.to_string())),
                Some(_) => Err(Ok(Bad::Malformed(e.to_string()))),
            }
        }
    }
}

/// Streams the records of a directory of segments (closed ones, and ones still open or left
/// open by a crash), oldest segment first.
///
/// Bad lines never stop the stream: a torn last line, malformed lines and lines without a
/// readable schema version are skipped and counted in [`summary`](Self::summary). Records
/// of a newer *minor* version are read, their unknown fields kept
/// ([`retrywise::attempt::AttemptRecord::unknown`]). A record of an unknown
/// *major* version is an error — the reader is too old to read that data, and skipping it
/// silently would lose it — and ends the stream.
#[derive(Debug)]
pub struct SegmentReader {
    segments: std::vec::IntoIter<Segment>,
    current: Option<Current>,
    line: Vec<u8>,
    summary: ReadSummary,
    done: bool,
    /// Where the skipped lines are, when asked for ([`SegmentReader::keeping_skipped`]).
    skipped_lines: Option<Vec<SkippedLine>>,
}

/// The segment being read.
#[derive(Debug)]
struct Current {
    path: PathBuf,
    reader: BufReader<File>,
    /// Lines read so far.
    line: u64,
    /// Bytes read so far: where the next line starts.
    offset: u64,
}

/// Where a line [`SegmentReader`] skipped is: its segment, and its bytes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// The segment.
    pub path: PathBuf,
    /// Where the line starts in it.
    pub offset: u64,
    /// Its length, its newline included.
    pub len: u64,
    /// It ends with a newline (a torn last line does not).
    pub terminated: bool,
}

/// Copies the skipped `lines` from their segments to `out`, byte for byte, each ending
/// with a newline - a line of any length, a piece at a time.
///
/// # Errors
/// A segment cannot be read, or is shorter than a line said ([`CollectError::Io`]);
/// `out` cannot be written (`what_out` names it).
pub fn copy_skipped_lines(
    lines: &[SkippedLine],
    out: &mut impl Write,
    what_out: &Path,
) -> Result<(), CollectError> {
    let write_error = |e| CollectError::io("write", what_out, e);
    let mut piece = Vec::new();
    for l in lines {
        let mut f = File::open(&l.path).map_err(|e| CollectError::io("open", &l.path, e))?;
        f.seek(std::io::SeekFrom::Start(l.offset))
            .map_err(|e| CollectError::io("read", &l.path, e))?;
        // A piece at a time, each error named by its side: the segment's reads, the
        // output's writes.
        // One buffer for every line, as large as the longest needs (64 KiB at most).
        let want = (64 << 10).min(usize::try_from(l.len).unwrap_or(usize::MAX));
        if piece.len() < want {
            piece.resize(want, 0);
        }
        let mut from = (&mut f).take(l.len);
        let mut copied = 0u64;
        loop {
            let n = match from.read(&mut piece) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CollectError::io("read", &l.path, e)),
            };
            out.write_all(&piece[..n]).map_err(write_error)?;
            copied += n as u64;
        }
        if copied != l.len {
            return Err(CollectError::io(
                "read",
                &l.path,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "a skipped line of {} bytes at byte {} is cut short (the segment changed while it was read)",
                        l.len, l.offset
                    ),
                ),
            ));
        }
        if !l.terminated {
            out.write_all(b"\n").map_err(write_error)?;
        }
    }
    Ok(())
}

impl SegmentReader {
    /// A reader over every segment of `dir`.
    ///
    /// # Errors
    /// [`CollectError::Io`] if the directory cannot be listed.
    pub fn open(dir: &Path) -> Result<Self, CollectError> {
        Ok(Self::over(segment::list(dir)?))
    }

    /// A reader over the given segments, in the given order.
    pub fn over(segments: Vec<Segment>) -> Self {
        Self {
            segments: segments.into_iter(),
            current: None,
            line: Vec::with_capacity(1024),
            summary: ReadSummary::default(),
            done: false,
            skipped_lines: None,
        }
    }

    /// Notes where every line it skips is (torn, malformed, of no readable version, too
    /// long), for [`take_skipped_lines`](Self::take_skipped_lines): what a compaction that
    /// removes the segment keeps beside it ([`copy_skipped_lines`]). Memory holds where
    /// they are, not the lines.
    #[must_use]
    pub fn keeping_skipped(mut self) -> Self {
        self.skipped_lines = Some(Vec::new());
        self
    }

    /// Where the lines skipped so far are, when [`keeping_skipped`](Self::keeping_skipped)
    /// (none otherwise); taking them leaves none.
    pub fn take_skipped_lines(&mut self) -> Vec<SkippedLine> {
        self.skipped_lines
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// What has been read and skipped so far.
    pub fn summary(&self) -> &ReadSummary {
        &self.summary
    }
}

impl Iterator for SegmentReader {
    type Item = Result<AttemptRecord, CollectError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            if self.current.is_none() {
                let seg = self.segments.next()?;
                // An open segment may have been closed (renamed) since it was listed:
                // then it is read under its closed name.
                let opened = File::open(&seg.path)
                    .map(|f| (seg.path.clone(), f))
                    .or_else(|e| {
                        let stem = seg
                            .path
                            .to_str()
                            .and_then(|p| p.strip_suffix(segment::OPEN));
                        match stem {
                            Some(stem) if e.kind() == std::io::ErrorKind::NotFound => {
                                let closed = PathBuf::from(format!("{stem}{}", segment::CLOSED));
                                File::open(&closed).map(|f| (closed, f))
                            }
                            _ => Err(e),
                        }
                    });
                match opened {
                    Ok((path, f)) => {
                        self.summary.files += 1;
                        self.current = Some(Current {
                            path,
                            reader: BufReader::with_capacity(256 << 10, f),
                            line: 0,
                            offset: 0,
                        });
                    }
                    // Compacted or removed since it was listed: nothing to read there.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(CollectError::io("open", seg.path, e)));
                    }
                }
            }
            let Some(cur) = self.current.as_mut() else {
                continue;
            };
            let read =
                match crate::read_line_bounded(&mut cur.reader, &mut self.line, MAX_LINE_BYTES) {
                    Ok(read) => read,
                    Err(e) => {
                        self.done = true;
                        // Where in the segment, beside the system's reason.
                        let e = std::io::Error::new(
                            e.kind(),
                            format!("at byte {} (line {}): {e}", cur.offset, cur.line + 1),
                        );
                        return Some(Err(CollectError::io("read", cur.path.clone(), e)));
                    }
                };
            if read.consumed == 0 {
                self.current = None;
                continue;
            }
            let start = cur.offset;
            cur.offset += read.consumed;
            cur.line += 1;
            self.summary.bytes += read.consumed;
            let terminated = read.terminated;
            let body = self.line.trim_ascii();
            if (body.is_empty() && !read.too_long) || read.blank {
                continue;
            }
            self.summary.lines += 1;
            let parsed = if read.too_long {
                Err(Ok(Bad::TooLong(read.consumed)))
            } else {
                parse_line(body, !terminated)
            };
            match parsed {
                Ok(r) => {
                    self.summary.records += 1;
                    return Some(Ok(r));
                }
                Err(Ok(bad)) => {
                    if let Some(kept) = &mut self.skipped_lines {
                        kept.push(SkippedLine {
                            path: cur.path.clone(),
                            offset: start,
                            len: read.consumed,
                            terminated,
                        });
                    }
                    let (path, no) = (cur.path.clone(), cur.line);
                    match bad {
                        Bad::Torn => {
                            self.summary.torn += 1;
                            self.summary
                                .example(&path, no, "torn last line (a crash mid-write)");
                        }
                        Bad::Malformed(why) => {
                            self.summary.malformed += 1;
                            self.summary.example(&path, no, why);
                        }
                        Bad::TooLong(len) => {
                            self.summary.malformed += 1;
                            self.summary.example(
                                &path,
                                no,
                                format!(
                                    "a line of {len} bytes, longer than any record ({MAX_LINE_BYTES} bytes at most)"
                                ),
                            );
                        }
                        Bad::UnknownVersion => {
                            self.summary.unknown_version += 1;
                            self.summary
                                .example(&path, no, "no readable schema_version");
                        }
                    }
                }
                Err(Err(version)) => {
                    self.done = true;
                    return Some(Err(CollectError::UnsupportedSchema {
                        path: cur.path.clone(),
                        line: cur.line,
                        version,
                        known: SchemaVersion::CURRENT.major,
                    }));
                }
            }
        }
    }
}
