//! The durable recorder: a bounded queue in front of a background thread that writes NDJSON
//! segments.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use retrywise::attempt::AttemptRecord;
use retrywise::recorder::Recorder;

use crate::CollectError;
use crate::segment::{self, CLOSED};
use crate::stats::{Counters, RecorderStats};
use crate::storage::{FileSystem, Storage};

/// The lock file that keeps two writers out of one directory.
pub const LOCK_FILE: &str = ".writer.lock";

/// How the segment writer batches, rotates and syncs. Counts of records are at most 2^24
/// and durations at most [`retrywise::MAX_CONFIG_DURATION`] (a value beyond is refused,
/// naming the field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// Records the queue holds before `record()` starts dropping. Defaults to 65 536.
    pub queue_capacity: usize,
    /// A segment is closed once it holds this many bytes. Defaults to 64 MiB.
    pub max_segment_bytes: u64,
    /// A segment is closed once it has been open this long. Defaults to 5 minutes.
    pub max_segment_age: Duration,
    /// Written records are made durable at least this often. Defaults to 1 s.
    pub fsync_interval: Duration,
    /// Serialized records are written to the file in chunks of about this size.
    /// Defaults to 256 KiB.
    pub write_buffer: usize,
    /// [`SegmentRecorder::write_batch`] answers only once the batch is durable (written
    /// and fsynced, with its segment's directory entry), not once it is written: the
    /// batches that arrive while the writer is busy share one fsync (group commit), made
    /// as soon as the queue is empty or 64 batches wait. Defaults to `false` (answered
    /// once written; made durable within `fsync_interval`).
    pub sync_batches: bool,
}

/// Batches answered by one fsync at most, under [`WriterConfig::sync_batches`] (a steady
/// stream of batches never leaves its queue empty).
const GROUP_COMMIT_MAX: usize = 64;

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 65_536,
            max_segment_bytes: 64 << 20,
            max_segment_age: Duration::from_secs(300),
            fsync_interval: Duration::from_secs(1),
            write_buffer: 256 << 10,
            sync_batches: false,
        }
    }
}

impl WriterConfig {
    fn check(&self) -> Result<(), CollectError> {
        CollectError::check_records("queue_capacity", self.queue_capacity)?;
        if self.max_segment_bytes < 1024 {
            return Err(CollectError::config(
                "max_segment_bytes",
                "must be at least 1024",
            ));
        }
        CollectError::check_duration("max_segment_age", self.max_segment_age)?;
        CollectError::check_duration("fsync_interval", self.fsync_interval)?;
        if self.write_buffer == 0 {
            return Err(CollectError::config("write_buffer", "must be at least 1"));
        }
        Ok(())
    }
}

type Ack = mpsc::SyncSender<Result<(), CollectError>>;

/// The answer to a batch: how many records were written, or why not all.
type BatchAck = mpsc::SyncSender<Result<u64, CollectError>>;

// The size difference is the point: records travel unboxed.
#[allow(clippy::large_enum_variant)]
enum Msg {
    /// Unboxed: a record is copied into the queue's preallocated slot, so `record()`
    /// allocates nothing.
    Record(AttemptRecord),
    /// Records to write together, with an answer once they are in the segment file.
    Batch(Vec<AttemptRecord>, BatchAck),
    Flush(Ack),
    Close(Ack),
}

/// What a closed writer leaves: the queue's receiving end, so that nothing offered to the
/// queue goes uncounted.
#[derive(Debug, Default)]
struct AfterClose {
    /// Set by the writer as it takes the close, before its last drain.
    closed: AtomicBool,
    /// The receiving end, handed over under this lock with the last drain.
    rx: Mutex<Option<mpsc::Receiver<Msg>>>,
}

/// A [`Recorder`] that writes records durably to NDJSON segments in a directory.
///
/// [`record`](Recorder::record) only offers the record to a bounded queue and returns: it
/// never blocks or does I/O, and when the queue is full the record is dropped and counted.
/// A background thread batches the records into segments (see [`crate::segment`]), rotates
/// them by size and age, fsyncs on an interval and on close, and survives I/O errors: a
/// full disk or an unwritable directory drops and counts records, and writing resumes by
/// itself once the fault clears. [`flush`](Self::flush) returns once everything recorded
/// before it is durable.
///
/// One writer per directory: a lock file keeps a second one out. On start, segments left
/// open by a writer that crashed are closed (their torn last line stays; readers skip it).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use retrywise::attempt::{AttemptContext, AttemptRecord, Verdict};
/// use retrywise::recorder::Recorder;
/// use retrywise_collect::{SegmentReader, SegmentRecorder, WriterConfig};
///
/// let dir = tempfile::tempdir()?;
/// let recorder = SegmentRecorder::open(dir.path(), WriterConfig::default())?;
/// let ctx = AttemptContext::first("inventory");
/// recorder.record(AttemptRecord::new(1, 0, 1_764_000_000_000, ctx, &Verdict::Success, Default::default()));
/// recorder.flush()?;
/// assert_eq!(recorder.stats().synced, 1);
/// recorder.close()?;
///
/// let mut reader = SegmentReader::open(dir.path())?;
/// assert_eq!(reader.by_ref().filter_map(Result::ok).count(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SegmentRecorder {
    tx: SyncSender<Msg>,
    counters: Arc<Counters>,
    /// Records taken by [`write_batch`](Self::write_batch) and not yet written (a batch
    /// written and waiting for its fsync no longer counts): at most the queue's capacity
    /// (plus one batch taken while none was pending).
    pending: Arc<AtomicU64>,
    capacity: u64,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// The writer thread, to wake it for flushes (records never wake it: see `run`).
    thread: std::thread::Thread,
    /// Once closed: the queue's receiving end, kept (dropped, it would take the records
    /// offered in the moment after the last drain with it, counted as recorded and then
    /// in no count at all) and drained into `dropped_closed` when asked.
    after: Arc<AfterClose>,
    dir: PathBuf,
}

impl SegmentRecorder {
    /// Opens (creating it if needed) the segment directory `dir` and starts the writer.
    ///
    /// # Errors
    /// A refused configuration, a directory that cannot be created or locked, or one
    /// already in use by another writer.
    pub fn open(dir: impl AsRef<Path>, config: WriterConfig) -> Result<Self, CollectError> {
        Self::with_storage(dir, config, FileSystem)
    }

    /// Like [`open`](Self::open), writing through `storage` (tests inject faults here).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn with_storage<S: Storage>(
        dir: impl AsRef<Path>,
        config: WriterConfig,
        storage: S,
    ) -> Result<Self, CollectError> {
        config.check()?;
        let dir = dir.as_ref().to_path_buf();
        if dir.exists() && !dir.is_dir() {
            return Err(CollectError::config(
                "dir",
                format!("{} is a file, not a segment directory", dir.display()),
            ));
        }
        // Durable in its parent: a batch acknowledged as written must not vanish with a
        // new folder whose entry a crash lost.
        crate::segment::create_dir_durable(&dir)
            .map_err(|e| CollectError::io("create", &dir, e))?;
        let lock = lock_dir(&dir)?;
        recover(&dir)?;
        let counters = Arc::new(Counters::default());
        let pending = Arc::new(AtomicU64::new(0));
        let capacity = config.queue_capacity as u64;
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let mut writer = Writer::new(
            storage,
            dir.clone(),
            config,
            Arc::clone(&counters),
            Arc::clone(&pending),
            lock,
        );
        let after = Arc::new(AfterClose::default());
        let handed = Arc::clone(&after);
        let worker = std::thread::Builder::new()
            .name("retrywise-segment-writer".into())
            .spawn(move || writer.run(rx, &handed))
            .map_err(|e| CollectError::io("spawn writer for", &dir, e))?;
        Ok(Self {
            tx,
            counters,
            pending,
            capacity,
            thread: worker.thread().clone(),
            worker: Arc::new(Mutex::new(Some(worker))),
            after,
            dir,
        })
    }

    /// The segment directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RecorderStats {
        self.drain_closed();
        self.counters.snapshot()
    }

    /// Whether the writer took a close.
    fn closed(&self) -> bool {
        self.after.closed.load(Ordering::SeqCst)
    }

    /// After a close: counts what was queued since as dropped (a batch's or a flush's
    /// caller is answered that the writer is gone). Before the writer hands the queue
    /// over it does nothing: the writer's own last drain counts those.
    fn drain_closed(&self) {
        if !self.closed() {
            return;
        }
        if let Ok(slot) = self.after.rx.lock()
            && let Some(rx) = slot.as_ref()
        {
            drain(rx, &self.pending, &self.counters);
        }
    }

    fn ask(&self, make: impl FnOnce(Ack) -> Msg) -> Result<(), CollectError> {
        if self.closed() {
            return Err(CollectError::WriterGone);
        }
        let (ack, done) = mpsc::sync_channel(1);
        let mut msg = make(ack);
        // Not a blocking send: once closed, nobody empties the queue by itself.
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(CollectError::WriterGone),
                Err(TrySendError::Full(m)) => {
                    if self.closed() {
                        return Err(CollectError::WriterGone);
                    }
                    msg = m;
                    self.thread.unpark();
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
        self.thread.unpark();
        // Closed meanwhile, and the message maybe left after the writer's last drain: it
        // is drained here (its answer then says the writer is gone).
        self.drain_closed();
        done.recv().map_err(|_| CollectError::WriterGone)?
    }

    /// Blocks until every record recorded before this call is durable (written and
    /// fsynced, with its segment's directory entry).
    ///
    /// # Errors
    /// [`CollectError::Flush`] if records were lost since the previous flush (to I/O
    /// errors, or dropped because the queue was full) or the sync failed;
    /// [`CollectError::WriterGone`] after [`close`](Self::close).
    pub fn flush(&self) -> Result<(), CollectError> {
        self.ask(Msg::Flush)
    }

    /// Writes `records` to the current segment and answers once they are written (handed
    /// to the operating system: a graceful stop makes them durable) - with
    /// [`WriterConfig::sync_batches`], once they are durable - or why not.
    ///
    /// Unlike [`record`](Recorder::record), which drops what the queue cannot hold, a batch
    /// is either taken whole or refused at once with [`CollectError::Busy`] when the
    /// writer already has `queue_capacity` records to write: the caller knows, and can ask
    /// its own client to come back later. This is what an ingestion endpoint needs to
    /// answer "accepted" only for records that are written.
    ///
    /// # Errors
    /// [`CollectError::Busy`]: not taken, nothing written. [`CollectError::Flush`]: taken,
    /// but an I/O error lost some or all of them (counted as refused, `refused_io`: the
    /// caller was told, and sends them again), naming the file and the system's reason.
    /// [`CollectError::WriterGone`] after [`close`](Self::close).
    pub async fn write_batch(&self, records: Vec<AttemptRecord>) -> Result<u64, CollectError> {
        let n = records.len() as u64;
        if n == 0 {
            return Ok(0);
        }
        if self.closed() {
            return Err(CollectError::WriterGone);
        }
        let before = self.pending.fetch_add(n, Ordering::AcqRel);
        // A batch larger than the queue still goes through when nothing else waits.
        if before > 0 && before + n > self.capacity {
            self.pending.fetch_sub(n, Ordering::AcqRel);
            return Err(CollectError::Busy {
                pending: before,
                capacity: self.capacity,
            });
        }
        let (ack, answer) = mpsc::sync_channel(1);
        match self.tx.try_send(Msg::Batch(records, ack)) {
            Ok(()) => Counters::add(&self.counters.recorded, n),
            Err(e) => {
                self.pending.fetch_sub(n, Ordering::AcqRel);
                return Err(match e {
                    TrySendError::Full(_) => CollectError::Busy {
                        pending: before,
                        capacity: self.capacity,
                    },
                    TrySendError::Disconnected(_) => CollectError::WriterGone,
                });
            }
        }
        self.thread.unpark();
        // Closed meanwhile: see `ask`.
        self.drain_closed();
        // Waited for on the blocking pool: the writer is a thread of its own (and a test's
        // paused clock does not jump ahead while it works).
        tokio::task::spawn_blocking(move || answer.recv())
            .await
            .map_err(|_| CollectError::WriterGone)?
            .map_err(|_| CollectError::WriterGone)?
    }

    /// Records taken by [`write_batch`](Self::write_batch) and not yet written.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// [`flush`](Self::flush) for async code: runs it on tokio's blocking pool.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub async fn flush_async(&self) -> Result<(), CollectError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.flush())
            .await
            .map_err(|_| CollectError::WriterGone)?
    }

    /// Writes and fsyncs what is queued, closes the current segment and stops the writer.
    /// Records offered afterwards are dropped and counted.
    ///
    /// # Errors
    /// As [`flush`](Self::flush); [`CollectError::WriterPanicked`] if the writer thread
    /// had died of a panic (a second close, by another handle, returns `Ok`).
    pub fn close(&self) -> Result<(), CollectError> {
        let result = self.ask(Msg::Close);
        let handle = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        let panicked = handle.and_then(|h| h.join().err());
        self.drain_closed();
        if let Some(panic) = panicked {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            tracing::error!(dir = %self.dir.display(), %message, "the segment writer thread panicked");
            return Err(CollectError::WriterPanicked { message });
        }
        match result {
            Err(CollectError::WriterGone) => Ok(()),
            other => other,
        }
    }
}

impl Recorder for SegmentRecorder {
    fn record(&self, record: AttemptRecord) {
        match self.tx.try_send(Msg::Record(record)) {
            Ok(()) => Counters::add(&self.counters.recorded, 1),
            // (Full after a close: the queue nobody empties any more.)
            Err(TrySendError::Full(_)) if self.closed() => {
                Counters::add(&self.counters.dropped_closed, 1);
            }
            Err(TrySendError::Full(_)) => Counters::add(&self.counters.dropped_full, 1),
            Err(TrySendError::Disconnected(_)) => Counters::add(&self.counters.dropped_closed, 1),
        }
    }
}

/// Locks `dir` for this writer (its [`LOCK_FILE`]).
pub(crate) fn lock_dir(dir: &Path) -> Result<File, CollectError> {
    lock_folder(dir, LOCK_FILE)
}

/// Locks `dir` with the lock file `name` in it (created when missing), held while the
/// file is open: the one rule of a segment writer's folder, a spool's and a compaction's
/// input and output.
///
/// # Errors
/// [`CollectError::DirectoryInUse`] while another holds it; the lock file cannot be
/// opened or locked.
pub(crate) fn lock_folder(dir: &Path, name: &str) -> Result<File, CollectError> {
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CollectError::io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(CollectError::DirectoryInUse {
            dir: dir.to_path_buf(),
            lock: path,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(CollectError::io("lock", &path, e)),
    }
}

/// Closes segments a crashed writer left open (empty ones are removed).
fn recover(dir: &Path) -> Result<(), CollectError> {
    let mut changed = false;
    for seg in segment::list(dir)? {
        if seg.closed {
            continue;
        }
        let empty = std::fs::metadata(&seg.path)
            .map(|m| m.len() == 0)
            .unwrap_or(false);
        if empty {
            std::fs::remove_file(&seg.path)
                .map_err(|e| CollectError::io("remove", &seg.path, e))?;
        } else {
            // What the crashed writer wrote in its last second may still be only in the
            // page cache: made durable before the segment is closed.
            std::fs::File::open(&seg.path)
                .and_then(|f| f.sync_all())
                .map_err(|e| CollectError::io("sync", &seg.path, e))?;
            let closed = dir.join(format!("{}{CLOSED}", seg.stem));
            std::fs::rename(&seg.path, &closed)
                .map_err(|e| CollectError::io("rename", &seg.path, e))?;
            tracing::warn!(segment = %closed.display(), "closed a segment left open by a crashed writer");
        }
        changed = true;
    }
    if changed {
        segment::sync_dir(dir).map_err(|e| CollectError::io("sync", dir, e))?;
    }
    Ok(())
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MIN_PARK: Duration = Duration::from_micros(100);
const MAX_PARK: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct OpenSegment<F> {
    file: F,
    open_path: PathBuf,
    closed_path: PathBuf,
    opened_at: Instant,
    /// Bytes known to be fully written.
    len: u64,
}

struct Writer<S: Storage> {
    storage: S,
    dir: PathBuf,
    cfg: WriterConfig,
    counters: Arc<Counters>,
    seg: Option<OpenSegment<S::File>>,
    /// Serialized records not yet written, and how many.
    buf: Vec<u8>,
    buf_records: u64,
    /// Records written but not yet fsynced.
    unsynced: u64,
    /// Of those, the records of batches waiting for their fsync (`awaiting_sync`): once an
    /// fsync succeeds (a rotation's, say) they are durable, and a later failure costs only
    /// what was written after.
    awaiting_unsynced: u64,
    /// When written records are next fsynced.
    next_sync: Instant,
    /// A segment was created or renamed since the directory was last synced.
    dir_dirty: bool,
    /// After an I/O error, records are dropped until then (then writing is tried again).
    broken_until: Option<Instant>,
    backoff: Duration,
    /// Records lost to I/O errors since the last flush (a flush then reports failure).
    lost_since_flush: u64,
    /// Segments that could not be closed since the last flush (what they hold may be lost;
    /// a flush then reports failure).
    unclosed_since_flush: u64,
    /// Records lost to I/O errors since the start (a batch compares it before and after).
    lost_total: u64,
    /// The last I/O error: what could not be done, to which file, and the system's reason
    /// (the errors that report losses quote it).
    last_io_error: Option<String>,
    /// The records dropped for a full queue as of the last flush (a flush reports those
    /// dropped since).
    full_at_flush: u64,
    /// While a batch is written: records an I/O error costs are the batch's, whose caller
    /// is told (refused, not dropped).
    refusing: bool,
    /// Batches written and not answered yet, with their sizes (`sync_batches`).
    awaiting_sync: Vec<(BatchAck, u64)>,
    /// Failed fsyncs (of a file or the directory) so far.
    sync_failures: u64,
    /// `sync_failures` when the oldest batch in `awaiting_sync` was written: one failed
    /// since (a segment closed under it, say) may have cost it.
    awaiting_since: u64,
    /// Shared with the recorder: batch records not yet answered.
    pending: Arc<AtomicU64>,
    seq: u32,
    /// Tells this writer's segments from other writers'.
    id: u32,
    /// Held for the writer's lifetime.
    _lock: File,
}

impl<S: Storage> Writer<S> {
    /// A writer of segments into `dir` (locked by `lock`), with nothing written yet.
    fn new(
        storage: S,
        dir: PathBuf,
        cfg: WriterConfig,
        counters: Arc<Counters>,
        pending: Arc<AtomicU64>,
        lock: File,
    ) -> Self {
        let next_sync = storage.now() + cfg.fsync_interval;
        Writer {
            storage,
            dir,
            next_sync,
            cfg,
            counters,
            seg: None,
            buf: Vec::new(),
            buf_records: 0,
            unsynced: 0,
            awaiting_unsynced: 0,
            dir_dirty: false,
            broken_until: None,
            backoff: INITIAL_BACKOFF,
            lost_since_flush: 0,
            unclosed_since_flush: 0,
            lost_total: 0,
            last_io_error: None,
            full_at_flush: 0,
            refusing: false,
            awaiting_sync: Vec::new(),
            sync_failures: 0,
            awaiting_since: 0,
            pending,
            seq: 0,
            id: segment::writer_id(),
            _lock: lock,
        }
    }

    /// The writer's loop. It never blocks on the queue: a sender that finds a receiver
    /// blocked must wake it with a system call, on the caller's path. Instead the writer
    /// drains the queue, writes, and parks for a short, growing while (100 µs to 10 ms);
    /// only flushes and closes wake it.
    fn run(&mut self, rx: mpsc::Receiver<Msg>, after: &AfterClose) {
        let mut park = MIN_PARK;
        loop {
            match rx.try_recv() {
                Ok(msg) => {
                    park = MIN_PARK;
                    if let Some(ack) = self.handle(msg) {
                        after.closed.store(true, Ordering::SeqCst);
                        self.close(&ack);
                        // The last drain and the hand-over under one lock: a sender that
                        // finds the writer closed after its send drains what it sent
                        // once the queue is handed over, if this drain missed it.
                        let mut slot = after.rx.lock().unwrap_or_else(|p| p.into_inner());
                        drain(&rx, &self.pending, &self.counters);
                        *slot = Some(rx);
                        return;
                    }
                    if self.buf.len() >= self.cfg.write_buffer {
                        self.write_buf();
                    }
                    if self.awaiting_sync.len() >= GROUP_COMMIT_MAX {
                        self.settle_batches();
                    }
                }
                Err(TryRecvError::Empty) => {
                    // Hand what arrived to the operating system before resting, and
                    // make the batches waiting for it durable.
                    if !self.buf.is_empty() {
                        self.write_buf();
                    }
                    self.settle_batches();
                    self.on_tick();
                    let until_deadline = self
                        .next_deadline()
                        .saturating_duration_since(self.storage.now());
                    std::thread::park_timeout(park.min(until_deadline).max(MIN_PARK));
                    park = (park * 2).min(MAX_PARK);
                    continue;
                }
                Err(TryRecvError::Disconnected) => {
                    self.settle_batches();
                    let _ = self.close_segment();
                    return;
                }
            }
            self.on_tick();
        }
    }

    /// Handles one message; returns the acknowledgement of a close.
    fn handle(&mut self, msg: Msg) -> Option<Ack> {
        match msg {
            Msg::Record(r) => self.append(&r),
            Msg::Batch(records, ack) => self.batch(&records, ack),
            Msg::Flush(ack) => self.flush(&ack),
            Msg::Close(ack) => return Some(ack),
        }
        None
    }

    fn next_deadline(&self) -> Instant {
        let mut at = self.next_sync;
        if let Some(seg) = &self.seg {
            at = at.min(seg.opened_at + self.cfg.max_segment_age);
        }
        at
    }

    /// Periodic work: write and sync on the interval, rotate by size and age.
    fn on_tick(&mut self) {
        let now = self.storage.now();
        if now >= self.next_sync {
            self.next_sync = now + self.cfg.fsync_interval;
            if !self.awaiting_sync.is_empty() {
                // A steady stream of records never leaves the queue empty: the batches
                // waiting are answered by the interval's fsync at the latest.
                self.settle_batches();
            } else if !self.buf.is_empty() || self.unsynced > 0 {
                let _ = self.sync();
            }
        }
        self.rotate_if_due(now);
    }

    /// Closes the current segment once it is full or old enough.
    fn rotate_if_due(&mut self, now: Instant) {
        let due = self.seg.as_ref().is_some_and(|s| {
            s.len >= self.cfg.max_segment_bytes || now >= s.opened_at + self.cfg.max_segment_age
        });
        if due {
            let _ = self.close_segment();
        }
    }

    /// Whether the writer is backing off after an I/O error (records are dropped until
    /// then); clears the backoff once it is over.
    fn broken(&mut self) -> bool {
        match self.broken_until {
            Some(until) if self.storage.now() < until => true,
            Some(_) => {
                self.broken_until = None;
                false
            }
            None => false,
        }
    }

    /// Where records an I/O error costs are counted: refused while a batch is written
    /// (its caller is told), dropped otherwise.
    fn lost_counter(&self) -> &AtomicU64 {
        if self.refusing {
            &self.counters.refused_io
        } else {
            &self.counters.dropped_io
        }
    }

    /// Counts `n` records an I/O error cost (written and failed, or refused while the
    /// writer backs off): a batch's are refused (its caller is told,
    /// and a flush has nothing to add), others dropped (the next flush fails).
    fn lose(&mut self, n: u64) {
        Counters::add(self.lost_counter(), n);
        if !self.refusing {
            self.lost_since_flush += n;
        }
        self.lost_total += n;
    }

    fn append(&mut self, r: &AttemptRecord) {
        // A record that arrives after its segment's time is up starts the next one.
        let now = self.storage.now();
        self.rotate_if_due(now);
        if self.broken() {
            self.lose(1);
            return;
        }
        self.encode(r);
        // A segment never grows past its size limit by more than one record (or batch).
        let len = self.seg.as_ref().map_or(0, |s| s.len);
        if len + self.buf.len() as u64 >= self.cfg.max_segment_bytes {
            self.write_buf();
            let _ = self.close_segment();
        }
    }

    /// Serializes `r` into the buffer, a line.
    fn encode(&mut self, r: &AttemptRecord) {
        let before = self.buf.len();
        match serde_json::to_writer(&mut self.buf, r) {
            Ok(()) => {
                self.buf.push(b'\n');
                self.buf_records += 1;
            }
            Err(e) => {
                // Cannot happen for an AttemptRecord (every field serializes); never panic.
                self.buf.truncate(before);
                Counters::add(&self.counters.dropped_io, 1);
                tracing::error!(error = %e, "could not serialize an attempt record");
            }
        }
    }

    /// Writes a batch whole or not at all, and answers: every record written, or how many
    /// an I/O error lost. The batch goes into one segment in one write (it is not cut by
    /// the segment's size limit: a segment may outgrow it by one batch), so a failure
    /// — a write refused, a backoff still running — leaves none of it behind: the
    /// segment is cut back to before it, and a sender that is told to send it again
    /// stores it once.
    fn batch(&mut self, records: &[AttemptRecord], ack: BatchAck) {
        // What was recorded before the batch is written first: a failure from here on
        // costs the batch's records only, which its caller is told of.
        self.write_buf();
        let now = self.storage.now();
        self.rotate_if_due(now);
        // After the rotation: what closing the old segment costs (a failed fsync of it or
        // of the directory) is the earlier records', counted for the next flush, not the
        // batch's - which is written whole to the new segment.
        let lost_before = self.lost_total;
        self.refusing = true;
        if self.broken() {
            self.lose(records.len() as u64);
        } else {
            for r in records {
                self.encode(r);
            }
            // (A segment it filled is closed by the next message or tick.)
            self.write_buf();
        }
        self.refusing = false;
        let n = records.len() as u64;
        let lost = self.lost_total - lost_before;
        self.pending.fetch_sub(n, Ordering::AcqRel);
        if lost == 0 && self.cfg.sync_batches {
            // Answered once durable, with the batches written meanwhile.
            if self.awaiting_sync.is_empty() {
                self.awaiting_since = self.sync_failures;
            }
            self.awaiting_sync.push((ack, n));
            self.awaiting_unsynced += n;
            return;
        }
        let _ = ack.send(if lost == 0 {
            Ok(n)
        } else {
            Err(CollectError::Flush {
                reason: format!(
                    "an I/O error lost {} of the batch's {n} records ({}; counted as refused_io)",
                    lost.min(n),
                    self.last_error()
                ),
            })
        });
    }

    fn open_segment(&mut self) -> Result<(), std::io::Error> {
        let start_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        loop {
            self.seq = self.seq.wrapping_add(1);
            let open_path = self
                .dir
                .join(segment::file_name(start_ms, self.seq, self.id, true));
            match self.storage.create_new(&open_path) {
                Ok(file) => {
                    let closed_path = self
                        .dir
                        .join(segment::file_name(start_ms, self.seq, self.id, false));
                    self.seg = Some(OpenSegment {
                        file,
                        open_path,
                        closed_path,
                        opened_at: self.storage.now(),
                        len: 0,
                    });
                    self.dir_dirty = true;
                    Counters::add(&self.counters.segments, 1);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the buffer to the current segment (opening one if needed).
    fn write_buf(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        if self.seg.is_none()
            && let Err(e) = self.open_segment()
        {
            self.fail("create a segment in", &e);
            return false;
        }
        let Some(seg) = self.seg.as_mut() else {
            return false;
        };
        match seg.file.write_all(&self.buf) {
            Ok(()) => {
                let n = self.buf.len() as u64;
                seg.len += n;
                Counters::add(&self.counters.written, self.buf_records);
                Counters::add(&self.counters.bytes, n);
                self.unsynced += self.buf_records;
                self.buf.clear();
                self.buf_records = 0;
                self.backoff = INITIAL_BACKOFF;
                true
            }
            Err(e) => {
                self.fail("write", &e);
                false
            }
        }
    }

    /// Writes and fsyncs everything buffered; syncs the directory if segments changed.
    fn sync(&mut self) -> Result<(), CollectError> {
        if !self.write_buf() {
            return Err(CollectError::Flush {
                reason: format!("a write failed ({})", self.last_error()),
            });
        }
        if let Some(seg) = self.seg.as_mut() {
            let path = seg.open_path.clone();
            if let Err(e) = self.storage.sync(&mut seg.file) {
                self.unsure();
                self.fail("sync", &e);
                return Err(CollectError::io("sync", path, e));
            }
        }
        if self.dir_dirty {
            if let Err(e) = self.storage.sync_dir(&self.dir) {
                // The segments' names may not be durable: nor, then, what they hold.
                Counters::add(&self.counters.io_errors, 1);
                self.unsure();
                return Err(CollectError::io("sync", &self.dir, e));
            }
            self.dir_dirty = false;
        }
        Counters::add(&self.counters.synced, self.unsynced);
        self.unsynced = 0;
        self.awaiting_unsynced = 0;
        Ok(())
    }

    fn flush(&mut self, ack: &Ack) {
        self.settle_batches();
        // Rotation due by size or age happens before the acknowledgement, so that a flush
        // leaves the directory in the state its clock implies.
        self.on_tick();
        let mut result = self.sync();
        // (A flush that fails of itself says so, with the losses before it.)
        if let Some(losses) = self.losses("since the previous flush") {
            result = match result {
                Ok(()) => Err(CollectError::Flush { reason: losses }),
                Err(CollectError::Flush { reason }) => Err(CollectError::Flush {
                    reason: format!("{reason}; {losses}"),
                }),
                Err(e) => Err(e),
            };
        }
        let _ = ack.send(result);
    }

    /// Makes the batches written and not yet answered durable with one fsync, and
    /// answers them (`sync_batches`). A failed fsync refuses them: their callers send
    /// them again (at least once - what was written may still be read).
    fn settle_batches(&mut self) {
        if self.awaiting_sync.is_empty() {
            return;
        }
        let waiting = self.awaiting_records();
        let mut synced = self.sync();
        if synced.is_ok() && self.sync_failures != self.awaiting_since {
            synced = Err(CollectError::Flush {
                reason: "an fsync failed since it was written".into(),
            });
        }
        if synced.is_err() {
            // Refused, not lost: their callers are told (and keep them).
            Counters::add(&self.counters.refused_io, waiting);
        }
        for (ack, n) in self.awaiting_sync.drain(..) {
            let _ = ack.send(match &synced {
                Ok(()) => Ok(n),
                Err(e) => Err(CollectError::Flush {
                    reason: format!(
                        "the batch was written but could not be made durable: {}",
                        crate::error::chain(e)
                    ),
                }),
            });
        }
    }

    fn close(&mut self, ack: &Ack) {
        self.settle_batches();
        let mut result = self.close_segment();
        if result.is_ok()
            && let Some(reason) = self.losses("since the last flush")
        {
            result = Err(CollectError::Flush { reason });
        }
        let _ = ack.send(result);
    }

    /// The last I/O error, as the errors that report losses quote it.
    fn last_error(&self) -> &str {
        self.last_io_error
            .as_deref()
            .unwrap_or("no I/O error recorded")
    }

    /// What was lost since the last flush (to I/O errors, or dropped for a full queue),
    /// said `when`, if anything; the counts start again.
    fn losses(&mut self, when: &str) -> Option<String> {
        let lost = std::mem::take(&mut self.lost_since_flush);
        let unclosed = std::mem::take(&mut self.unclosed_since_flush);
        let full = self.counters.dropped_full.load(Ordering::Relaxed);
        let dropped = full.saturating_sub(std::mem::replace(&mut self.full_at_flush, full));
        let mut said = Vec::new();
        if dropped > 0 {
            said.push(format!(
                "{dropped} records were dropped {when} because the writer's queue was full (the disk is slower than they came; see queue_capacity)"
            ));
        }
        if lost > 0 {
            said.push(format!(
                "{lost} records were lost to I/O errors {when} (the last: {}; see the drop counters)",
                self.last_error()
            ));
        }
        if unclosed > 0 {
            said.push(format!(
                "{unclosed} segments could not be closed {when} (the folder changed under the writer: what they hold may be lost)"
            ));
        }
        (!said.is_empty()).then(|| said.join("; "))
    }

    /// Syncs and closes the current segment (renaming it to its closed name).
    fn close_segment(&mut self) -> Result<(), CollectError> {
        let synced = self.sync();
        if let Some(seg) = self.seg.take() {
            drop(seg.file);
            let closed = self
                .storage
                .rename(&seg.open_path, &seg.closed_path)
                .and_then(|()| self.storage.sync_dir(&self.dir));
            if let Err(e) = closed {
                // The directory changed under us (removed, replaced): what the segment
                // holds may be gone. Say so at the next flush, and back off.
                let err = CollectError::io("close segment", &seg.open_path, e);
                tracing::error!(error = %crate::error::chain(&err), "segment could not be closed");
                Counters::add(&self.counters.io_errors, 1);
                self.unclosed_since_flush += 1;
                self.broken_until = Some(self.storage.now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                return Err(err);
            }
        }
        synced
    }

    /// The records of the batches waiting for their fsync (`sync_batches`).
    fn awaiting_records(&self) -> u64 {
        self.awaiting_sync.iter().map(|(_, n)| n).sum()
    }

    /// An fsync failed: the records written since the last one that succeeded may never
    /// reach the disk (after a failed fsync the kernel may drop the pages, and a later
    /// fsync succeeds without them). They are counted lost — the next flush, or the batch
    /// in flight, fails — and never as synced (they stay `written`: they may still be read
    /// back).
    fn unsure(&mut self) {
        self.sync_failures += 1;
        // The records of batches waiting for their fsync are refused when they are
        // answered (`settle_batches`), not lost: the next flush fails for the others.
        // (Only those still unsynced: a batch an earlier fsync made durable - a rotation's
        // - is no excuse for the records written after it.)
        let awaiting = self.awaiting_unsynced.min(self.unsynced);
        self.lost_since_flush += self.unsynced - awaiting;
        self.lost_total += self.unsynced;
        self.unsynced = 0;
        self.awaiting_unsynced = 0;
    }

    /// An I/O error: drop what is buffered, abandon the segment (cut back to its last
    /// whole record and closed), and drop new records for a backoff before trying again.
    fn fail(&mut self, op: &'static str, e: &std::io::Error) {
        Counters::add(&self.counters.io_errors, 1);
        let path = self.seg.as_ref().map_or(&self.dir, |s| &s.open_path);
        self.last_io_error = Some(format!("cannot {op} {}: {e}", path.display()));
        self.lose(self.buf_records);
        self.buf.clear();
        self.buf_records = 0;
        if let Some(mut seg) = self.seg.take() {
            let _ = self.storage.truncate(&mut seg.file, seg.len);
            // What it held before may not be durable: a batch waiting for its fsync is
            // then refused, not answered as durable by a later fsync of another segment.
            if self.storage.sync(&mut seg.file).is_err() && self.unsynced > 0 {
                self.unsure();
            }
            drop(seg.file);
            let _ = self.storage.rename(&seg.open_path, &seg.closed_path);
            let _ = self.storage.sync_dir(&self.dir);
        }
        tracing::warn!(
            dir = %self.dir.display(),
            error = %e,
            retry_in_ms = self.backoff.as_millis() as u64,
            "segment writer could not {op} the directory; dropping records until it can"
        );
        self.broken_until = Some(self.storage.now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// Counts the records queued in `rx` as dropped for the close; a batch's caller is answered
/// that the writer is gone (its answer dropped), and so is a flush's.
fn drain(rx: &mpsc::Receiver<Msg>, pending: &AtomicU64, counters: &Counters) {
    let mut dropped = 0;
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Record(_) => dropped += 1,
            Msg::Batch(records, _) => {
                let n = records.len() as u64;
                pending.fetch_sub(n, Ordering::AcqRel);
                dropped += n;
            }
            Msg::Flush(_) | Msg::Close(_) => {}
        }
    }
    Counters::add(&counters.dropped_closed, dropped);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use retrywise::attempt::{AttemptContext, Verdict};

    use super::*;

    /// The real file system with a clock that moves only when told, and fsyncs (of a file,
    /// of the directory) that fail once when told.
    #[derive(Clone, Default)]
    struct Scripted {
        advanced_ms: Arc<AtomicU64>,
        file_sync_fails: Arc<AtomicBool>,
        dir_sync_fails: Arc<AtomicBool>,
        epoch: Arc<std::sync::OnceLock<Instant>>,
    }

    impl Storage for Scripted {
        type File = File;

        fn create_new(&mut self, path: &Path) -> std::io::Result<File> {
            FileSystem.create_new(path)
        }

        fn sync(&mut self, file: &mut File) -> std::io::Result<()> {
            if self.file_sync_fails.swap(false, Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(5));
            }
            FileSystem.sync(file)
        }

        fn truncate(&mut self, file: &mut File, len: u64) -> std::io::Result<()> {
            FileSystem.truncate(file, len)
        }

        fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
            FileSystem.rename(from, to)
        }

        fn sync_dir(&mut self, dir: &Path) -> std::io::Result<()> {
            if self.dir_sync_fails.swap(false, Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(5));
            }
            FileSystem.sync_dir(dir)
        }

        fn now(&self) -> Instant {
            *self.epoch.get_or_init(Instant::now)
                + Duration::from_millis(self.advanced_ms.load(Ordering::SeqCst))
        }
    }

    fn record(i: u64) -> AttemptRecord {
        AttemptRecord::new(
            i,
            0,
            1_764_000_000_000 + i,
            AttemptContext::first("inventory"),
            &Verdict::Success,
            Duration::from_millis(2),
        )
    }

    /// A writer driven by hand, on the test's thread.
    fn writer(dir: &Path, cfg: WriterConfig) -> (Writer<Scripted>, Scripted) {
        let storage = Scripted::default();
        let lock = lock_dir(dir).unwrap();
        let w = Writer::new(
            storage.clone(),
            dir.to_path_buf(),
            cfg,
            Arc::default(),
            Arc::default(),
            lock,
        );
        (w, storage)
    }

    fn batch(w: &mut Writer<Scripted>, ids: std::ops::Range<u64>) -> Result<u64, CollectError> {
        let records: Vec<AttemptRecord> = ids.map(record).collect();
        w.pending.fetch_add(records.len() as u64, Ordering::SeqCst);
        let (ack, answer) = mpsc::sync_channel(1);
        w.batch(&records, ack);
        w.settle_batches();
        answer.recv().unwrap()
    }

    fn flush(w: &mut Writer<Scripted>) -> Result<(), CollectError> {
        let (ack, answer) = mpsc::sync_channel(1);
        w.flush(&ack);
        answer.recv().unwrap()
    }

    /// A batch that arrives when its segment's time is up starts the next segment; the
    /// rotation's failed directory fsync costs the records written before it - said at the
    /// next flush - not the batch, which is written whole (it used to be answered "an I/O
    /// error lost 1 of the batch's 10 records", its sender sending again what was written).
    #[test]
    fn a_rotation_that_fails_under_a_batch_costs_the_earlier_records_not_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, storage) = writer(dir.path(), WriterConfig::default());
        w.append(&record(0));
        assert!(w.write_buf());
        storage.advanced_ms.store(301_000, Ordering::SeqCst);
        storage.dir_sync_fails.store(true, Ordering::SeqCst);
        assert_eq!(batch(&mut w, 1..11).unwrap(), 10);
        let e = flush(&mut w).unwrap_err();
        assert!(e.to_string().contains("1 records were lost"), "{e}");
        assert_eq!(w.counters.snapshot().refused_io, 0);
    }

    /// With batches answered once durable: a batch that a rotation's fsync made durable
    /// does not cover the records written after it when the next fsync fails - the next
    /// flush fails for them (it used to pass, the five counted neither synced nor lost).
    #[test]
    fn a_failed_fsync_after_a_rotation_fails_the_next_flush_for_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WriterConfig {
            sync_batches: true,
            max_segment_bytes: 4096,
            ..WriterConfig::default()
        };
        let (mut w, storage) = writer(dir.path(), cfg);
        // (A record takes about 200 bytes: forty fill the segment, five do not.)
        // A batch that fills its segment waits for its fsync...
        let (ack, answer) = mpsc::sync_channel(1);
        let records: Vec<AttemptRecord> = (0..40).map(record).collect();
        w.pending.fetch_add(40, Ordering::SeqCst);
        w.batch(&records, ack);
        // ...which the rotation of the full segment gives it.
        w.on_tick();
        assert_eq!(w.unsynced, 0);
        for i in 40..45 {
            w.append(&record(i));
        }
        assert!(w.write_buf());
        assert_eq!(w.unsynced, 5);
        storage.file_sync_fails.store(true, Ordering::SeqCst);
        w.settle_batches();
        // (The batch is refused: an fsync failed since it was written. Its sender sends it
        // again - at least once.)
        // It says why, down to the operating system's reason.
        let refused = answer.recv().unwrap().unwrap_err().to_string();
        assert!(refused.contains("(os error 5)"), "{refused}");
        let e = flush(&mut w).unwrap_err();
        assert!(e.to_string().contains("5 records were lost"), "{e}");
        assert_eq!(w.counters.snapshot().synced, 40);
    }

    /// The file system, but a file's fsync panics (a bug in a `Storage`, say).
    struct PanicsOnSync;

    impl Storage for PanicsOnSync {
        type File = File;

        fn create_new(&mut self, path: &Path) -> std::io::Result<File> {
            FileSystem.create_new(path)
        }

        fn sync(&mut self, _: &mut File) -> std::io::Result<()> {
            panic!("sync exploded")
        }

        fn truncate(&mut self, file: &mut File, len: u64) -> std::io::Result<()> {
            FileSystem.truncate(file, len)
        }

        fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
            FileSystem.rename(from, to)
        }

        fn sync_dir(&mut self, dir: &Path) -> std::io::Result<()> {
            FileSystem.sync_dir(dir)
        }
    }

    /// A writer that died of a panic is not a clean close: what it held may be lost.
    #[test]
    fn closing_a_writer_that_panicked_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let rec = SegmentRecorder::with_storage(dir.path(), WriterConfig::default(), PanicsOnSync)
            .unwrap();
        for i in 0..10 {
            rec.record(record(i));
        }
        assert!(rec.flush().is_err(), "the flush's fsync panicked");
        let e = rec.close().unwrap_err();
        assert!(
            matches!(&e, CollectError::WriterPanicked { message } if message == "sync exploded"),
            "{e}"
        );
    }
}
