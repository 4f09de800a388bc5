//! Counters the service and the CLI report.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters of a recorder, shared by its handle and its background worker.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) recorded: AtomicU64,
    pub(crate) dropped_full: AtomicU64,
    pub(crate) dropped_io: AtomicU64,
    pub(crate) dropped_closed: AtomicU64,
    pub(crate) dropped_invalid: AtomicU64,
    pub(crate) refused_io: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) synced: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) segments: AtomicU64,
    pub(crate) io_errors: AtomicU64,
    pub(crate) shipped: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) spooled: AtomicU64,
    pub(crate) spool_unreadable: AtomicU64,
    /// A gauge: bytes waiting in the shipper's spool.
    pub(crate) spool_bytes: AtomicU64,
    /// A gauge: batches waiting in the shipper's spool.
    pub(crate) spool_batches: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RecorderStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RecorderStats {
            recorded: g(&self.recorded),
            dropped_queue_full: g(&self.dropped_full),
            dropped_io: g(&self.dropped_io),
            dropped_closed: g(&self.dropped_closed),
            dropped_invalid: g(&self.dropped_invalid),
            refused_io: g(&self.refused_io),
            written: g(&self.written),
            synced: g(&self.synced),
            bytes_written: g(&self.bytes),
            segments_opened: g(&self.segments),
            io_errors: g(&self.io_errors),
            shipped: g(&self.shipped),
            failed: g(&self.failed),
            batches: g(&self.batches),
            retries: g(&self.retries),
            spooled: g(&self.spooled),
            spool_unreadable: g(&self.spool_unreadable),
            spool_bytes: g(&self.spool_bytes),
            spool_batches: g(&self.spool_batches),
        }
    }
}

/// A snapshot of a recorder's counters. Every record handed to `record()` ends up in
/// exactly one of `written`/`shipped`, `dropped_*` or `failed` (or is still queued, in
/// memory or in a shipper's spool). A batch's records (`write_batch`) end up `written` or
/// `refused_io` - both, when their fsync failed after they were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RecorderStats {
    /// Records accepted into the queue.
    pub recorded: u64,
    /// Records dropped because the queue was full (the caller was never slowed).
    pub dropped_queue_full: u64,
    /// Records lost to I/O errors (a full disk, an unwritable directory).
    pub dropped_io: u64,
    /// Records offered after the recorder was closed.
    pub dropped_closed: u64,
    /// Records the shipper did not send because they break the schema's rules
    /// (`AttemptRecord::validate`: an empty target name, say): the service would refuse
    /// the whole batch that held one, good records and all.
    pub dropped_invalid: u64,
    /// Records of batches ([`SegmentRecorder::write_batch`]) refused because storage
    /// failed under them: not dropped - the batch's caller was answered an error, and
    /// keeps them (the service answers 503, and its client sends them again). Those
    /// refused because their fsync failed (`WriterConfig::sync_batches`) were written
    /// first, and are counted `written` too.
    ///
    /// [`SegmentRecorder::write_batch`]: crate::SegmentRecorder::write_batch
    pub refused_io: u64,
    /// Records written to a segment (handed to the operating system).
    pub written: u64,
    /// Records made durable by an fsync (a record written whose fsync failed is never
    /// counted here: it stays `written`, and the next flush fails).
    pub synced: u64,
    /// Bytes written to segments.
    pub bytes_written: u64,
    /// Segment files opened.
    pub segments_opened: u64,
    /// I/O errors met (each may drop several records).
    pub io_errors: u64,
    /// Records delivered to the shipping endpoint.
    pub shipped: u64,
    /// Records the shipper gave up on after its retries.
    pub failed: u64,
    /// Batches the shipper delivered.
    pub batches: u64,
    /// Retries the shipper made.
    pub retries: u64,
    /// Records the shipper wrote to its spool because the endpoint did not take them
    /// (or others still waited there); each is counted again in `shipped` once
    /// delivered from it, or in `failed` if the endpoint refuses it as invalid. (A
    /// shipper that opens a spool its predecessor left counts what it delivers from it
    /// in `shipped` only.)
    pub spooled: u64,
    /// Spooled batches set aside because they cannot be read (`….unreadable`: a directory
    /// where a batch file should be, say); their records cannot be counted, so they are in
    /// no other count. A read that fails for a passing reason (too many open files, an I/O
    /// error) is tried again instead.
    pub spool_unreadable: u64,
    /// Bytes of batches waiting in the shipper's spool now (a gauge, not a count): how far
    /// behind the service the shipper is.
    pub spool_bytes: u64,
    /// Batches waiting in the shipper's spool now (a gauge).
    pub spool_batches: u64,
}
