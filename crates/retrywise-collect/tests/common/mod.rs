//! Helpers shared by the collector's integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use retrywise::attempt::{AttemptContext, AttemptRecord, ErrorKind, Failure, Verdict};
use retrywise_collect::{FileSystem, Storage};

/// Record number `i`: its call id is `i`, so tests can tell exactly which survived.
pub fn record(i: u64) -> AttemptRecord {
    let mut ctx = AttemptContext::first("inventory");
    ctx.attempt = 1 + (i % 3) as u32;
    if ctx.attempt > 1 {
        ctx.error = Some(ErrorKind::Http503);
        ctx.status = Some(503);
        ctx.latency = Some(Duration::from_millis(12));
        ctx.delay = Duration::from_millis(100 * i % 700);
        // One retry in ten was an explored decision: its wait drawn at random among four.
        if i % 10 == 5 {
            ctx.explore_propensity = Some(0.25);
        }
    }
    let verdict = if i.is_multiple_of(4) {
        Verdict::Retryable(Failure::new(ErrorKind::Timeout))
    } else {
        Verdict::Success
    };
    // Spread over three days (2025-11-24..26 UTC).
    let started = 1_764_000_000_000 + (i % 3) * 86_400_000 + i;
    AttemptRecord::new(
        i,
        0,
        started,
        ctx,
        &verdict,
        Duration::from_micros(1500 + i % 1000),
    )
}

/// The call ids of the records read back from `dir`.
pub fn read_ids(dir: &Path) -> (Vec<u64>, retrywise_collect::ReadSummary) {
    let mut reader = retrywise_collect::SegmentReader::open(dir).unwrap();
    let ids = reader.by_ref().map(|r| r.unwrap().call_id).collect();
    (ids, reader.summary().clone())
}

/// Controls shared with a [`Faulty`] storage: a full disk, a stuck disk, and a clock that
/// moves only when told.
#[derive(Default)]
pub struct Faults {
    pub full: AtomicBool,
    pub stuck: Mutex<bool>,
    pub unstuck: Condvar,
    pub advanced_ms: AtomicU64,
    /// The next fsync of a file fails (once).
    pub sync_fails: AtomicBool,
    /// When set, files may be created only while `creates_left` lasts (then ENOSPC).
    pub creates_limited: AtomicBool,
    /// Files that may still be created while `creates_limited` is set.
    pub creates_left: AtomicU64,
    /// Directory fsyncs made (each makes new or renamed segments' names durable).
    pub dir_syncs: AtomicU64,
    /// File fsyncs made.
    pub file_syncs: AtomicU64,
    /// The next fsync of a directory fails (once).
    pub dir_sync_fails: AtomicBool,
}

impl Faults {
    pub fn advance(&self, d: Duration) {
        self.advanced_ms
            .fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_stuck(&self, stuck: bool) {
        *self.stuck.lock().unwrap() = stuck;
        self.unstuck.notify_all();
    }
}

/// The real file system, failing or stalling on demand, with a manual clock.
pub struct Faulty {
    pub faults: Arc<Faults>,
    pub epoch: Instant,
}

impl Faulty {
    pub fn new() -> (Self, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (
            Self {
                faults: Arc::clone(&faults),
                epoch: Instant::now(),
            },
            faults,
        )
    }
}

pub struct FaultyFile {
    file: File,
    faults: Arc<Faults>,
}

impl Write for FaultyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        {
            let mut stuck = self.faults.stuck.lock().unwrap();
            while *stuck {
                stuck = self.faults.unstuck.wait(stuck).unwrap();
            }
        }
        if self.faults.full.load(Ordering::SeqCst) {
            // A full disk often takes part of a write before refusing the rest.
            let part = buf.len() / 2;
            if part > 0 {
                self.file.write_all(&buf[..part])?;
            }
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Storage for Faulty {
    type File = FaultyFile;

    fn create_new(&mut self, path: &Path) -> io::Result<FaultyFile> {
        let refused = self.faults.creates_limited.load(Ordering::SeqCst)
            && self
                .faults
                .creates_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err();
        if refused || self.faults.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(FaultyFile {
            file: FileSystem.create_new(path)?,
            faults: Arc::clone(&self.faults),
        })
    }

    fn sync(&mut self, file: &mut FaultyFile) -> io::Result<()> {
        if self.faults.sync_fails.swap(false, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.faults.file_syncs.fetch_add(1, Ordering::SeqCst);
        FileSystem.sync(&mut file.file)
    }

    fn truncate(&mut self, file: &mut FaultyFile, len: u64) -> io::Result<()> {
        FileSystem.truncate(&mut file.file, len)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        FileSystem.rename(from, to)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        if self.faults.dir_sync_fails.swap(false, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.faults.dir_syncs.fetch_add(1, Ordering::SeqCst);
        FileSystem.sync_dir(dir)
    }

    fn now(&self) -> Instant {
        self.epoch + Duration::from_millis(self.faults.advanced_ms.load(Ordering::SeqCst))
    }
}
