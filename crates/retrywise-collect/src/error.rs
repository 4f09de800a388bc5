//! Errors of the collector, reader, shipper and compactor.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong in `retrywise-collect`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// A configuration value was refused.
    #[error("invalid collector configuration: `{field}` {problem}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Another holds the folder: a segment writer or a shipper's spool (one each per
    /// folder), or a compaction (of that input, or into that output).
    #[error(
        "folder {dir} is in use by another segment writer, shipper's spool or compaction (lock file {lock} is held)"
    )]
    DirectoryInUse {
        /// The directory.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// Two closed segments to compact have the same file name (copied or restored from
    /// elsewhere): their Parquet parts and archived copies would overwrite each other.
    #[error(
        "segments {first} and {second} have the same name: their Parquet parts would overwrite each other; rename one (nothing was compacted)"
    )]
    DuplicateSegmentName {
        /// One of them.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// A part to write exists already and holds other rows: a segment of the same name was
    /// compacted into the same output before (from another folder, or rewritten since).
    #[error(
        "{part} exists without rows segment {segment} would write there ({why}): a segment of the same name was compacted into this output before, or the part is damaged; rename the segment or move the part away (the segment is kept, and the run stopped)"
    )]
    PartExists {
        /// The part already there.
        part: PathBuf,
        /// The segment whose part would have replaced it.
        segment: PathBuf,
        /// What was found: rows of another segment, or a part that cannot be read (and
        /// why).
        why: String,
    },
    /// An I/O operation on a path failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`"create"`, `"write"`, `"sync"`, ...).
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The writer could not make every record recorded before a flush durable.
    #[error("flush failed: {reason}")]
    Flush {
        /// Why.
        reason: String,
    },
    /// The writer has as many records to write as its queue holds: a batch was not taken.
    #[error(
        "the segment writer is busy: {pending} records waiting, capacity {capacity}; try again later"
    )]
    Busy {
        /// Records waiting to be written.
        pending: u64,
        /// The queue's capacity.
        capacity: u64,
    },
    /// The writer thread is gone (the recorder was closed or the thread panicked).
    #[error("the segment writer has stopped")]
    WriterGone,
    /// The writer thread panicked: what it had queued, buffered or not yet synced may be
    /// lost (its counters say what it had written).
    #[error(
        "the segment writer thread panicked ({message}): records queued or not yet synced may be lost"
    )]
    WriterPanicked {
        /// The panic's message, when it had one.
        message: String,
    },
    /// A segment holds records of a schema major version this reader does not know.
    #[error(
        "{path}:{line}: schema version {version} is not supported (this reader knows major {known}); \
         upgrade retrywise to read it"
    )]
    UnsupportedSchema {
        /// The segment.
        path: PathBuf,
        /// The line, from 1.
        line: u64,
        /// The version found.
        version: String,
        /// The major version this reader knows.
        known: u16,
    },
    /// The shipper's endpoint is not a valid URL.
    #[error("invalid shipping endpoint `{endpoint}`: {problem}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Compaction failed.
    #[cfg(feature = "parquet")]
    #[error("compaction of {path}: {problem}")]
    Compact {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

impl CollectError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CollectError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(field: &'static str, problem: impl Into<String>) -> Self {
        CollectError::Config {
            field,
            problem: problem.into(),
        }
    }

    /// Checks a configured duration: above zero and at most
    /// [`retrywise::MAX_CONFIG_DURATION`], the policy crate's bound (a clock plus a
    /// duration beyond any real setting would overflow).
    pub(crate) fn check_duration(field: &'static str, d: Duration) -> Result<(), Self> {
        if d.is_zero() {
            return Err(Self::config(field, "must be greater than zero"));
        }
        let max = retrywise::MAX_CONFIG_DURATION;
        if d > max {
            return Err(Self::config(
                field,
                format!("must be at most {} s, got {d:?}", max.as_secs()),
            ));
        }
        Ok(())
    }

    /// Checks a configured count of records: at least 1 and at most 2^24
    /// (queues and batches are allocated up front).
    pub(crate) fn check_records(field: &'static str, n: usize) -> Result<(), Self> {
        if n == 0 {
            return Err(Self::config(field, "must be at least 1"));
        }
        if n > MAX_CONFIG_RECORDS {
            return Err(Self::config(
                field,
                format!("must be at most {MAX_CONFIG_RECORDS}, got {n}"),
            ));
        }
        Ok(())
    }
}

/// The whole chain of an error, `a: b: c`: what a log line or a flush's reason shows (an
/// [`CollectError::Io`]'s message names the operation and the path; the operating
/// system's reason - no space left, a permission - is its source). The service and the
/// trainer log errors with it too.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// The most records a collector's queue or batch holds (their memory is reserved up front).
pub(crate) const MAX_CONFIG_RECORDS: usize = 1 << 24;
