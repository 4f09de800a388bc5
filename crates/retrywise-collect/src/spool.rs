//! The shipper's spool: batches the endpoint did not take, kept on disk until it does.
//!
//! Each batch is one file, `batch-SEQ.ndjson` with `SEQ` a zero-padded counter that
//! continues from the largest found when the spool is opened, so files sort oldest first
//! whatever the wall clock does. A file is written durably (temporary file, fsync, rename,
//! fsync of the directory). The directory is locked by one shipper at a time, which lists
//! it once, when it opens it, and from then on keeps the queue of waiting batches in
//! memory (so a long outage's thousands of batches cost no listing per batch resent; a
//! file put into the directory by hand is picked up at the next start). Every file
//! operation here blocks: the shipper runs them on tokio's blocking pool. `Schedule`
//! says when the oldest batch is tried next.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use retrywise::retry::Backoff;
use tokio::time::Instant;

use crate::CollectError;
use crate::stats::Counters;

const PREFIX: &str = "batch-";
const SUFFIX: &str = ".ndjson";
/// A spooled batch the endpoint refused as invalid, set aside for a person.
pub(crate) const REFUSED: &str = "refused";
/// The longest wait an answer's Retry-After can ask of the spool.
const MAX_ASKED_WAIT: Duration = Duration::from_secs(3_600);
/// A spooled batch that could not be read, set aside for a person.
pub(crate) const UNREADABLE: &str = "unreadable";

/// The spool's directory, what waits in it, and what to skip.
#[derive(Debug)]
pub(crate) struct Spool {
    pub(crate) dir: PathBuf,
    /// Held for the shipper's life: one shipper per spool.
    _lock: File,
    pub(crate) max_bytes: u64,
    /// Bytes of the batch files waiting.
    pub(crate) bytes: u64,
    /// The batch files waiting with the bytes of each left to deliver and where those
    /// start in the file (0 but after a failed rewrite), oldest first. A batch leaves it
    /// when it is handled (delivered, or set aside), even if its file could not be removed
    /// or renamed: skipped for the rest of this process (a restart sends a delivered one,
    /// or a part of one delivered before a rewrite failed, again: at least once).
    queue: VecDeque<(PathBuf, u64, u64)>,
    /// The next batch file's number; `None` once `u64::MAX` is taken.
    next_seq: Option<u64>,
}

/// When the spool's oldest batch is tried next: after the endpoint fails (a batch spilled
/// into the spool, or a spooled batch not taken), the shipper's backoff for as many
/// failures in a row (without jitter); after a batch is handled, at once, and the count
/// starts again.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    next_try: Instant,
    backoff: Backoff,
    failures: u32,
}

impl Schedule {
    /// Due at once.
    pub(crate) fn new(backoff: Backoff, now: Instant) -> Self {
        Self {
            next_try: now,
            backoff,
            failures: 0,
        }
    }

    /// When the next try is due.
    pub(crate) fn due(&self) -> Instant {
        self.next_try
    }

    /// The endpoint failed at `now`: wait the backoff of one more failure in a row.
    pub(crate) fn failed(&mut self, now: Instant) {
        self.failed_asked(now, None);
    }

    /// A failure whose answer asked for a wait (Retry-After): the next try is after the
    /// backoff's wait or the one asked, whichever is longer (at most an hour).
    pub(crate) fn failed_asked(&mut self, now: Instant, asked: Option<Duration>) {
        self.failures = self.failures.saturating_add(1);
        let backoff = self.backoff.delay(self.failures, Duration::ZERO, 0.0);
        let asked = asked.unwrap_or_default().min(MAX_ASKED_WAIT);
        self.next_try = now + backoff.max(asked);
    }

    /// A batch was handled at `now`: the next is due at once, and a later failure waits
    /// the first backoff again.
    pub(crate) fn handled(&mut self, now: Instant) {
        self.next_try = now;
        self.failures = 0;
    }
}

/// The number of a batch file's name, if it is one.
fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

impl Spool {
    /// Opens (creating it) and locks the spool `dir`, removes the temporary files a crash
    /// left, and counts what waits.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<Self, CollectError> {
        if dir.exists() && !dir.is_dir() {
            return Err(CollectError::config(
                "spool",
                format!("{} is a file, not a spool directory", dir.display()),
            ));
        }
        // Durable in its parent, like the batches counted spooled in it.
        crate::segment::create_dir_durable(dir).map_err(|e| CollectError::io("create", dir, e))?;
        let lock = crate::writer::lock_dir(dir)?;
        let entries = std::fs::read_dir(dir).map_err(|e| CollectError::io("list", dir, e))?;
        // The largest number taken, by a batch waiting or set aside.
        let mut largest = 0;
        let mut queue = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CollectError::io("list", dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(&format!(".{PREFIX}")) && name.ends_with(".tmp") {
                // Written by a shipper that stopped before renaming it: never acknowledged
                // as kept, so the records in it were counted as failed or sent.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if let Some(seq) = seq_of(name) {
                let len = entry
                    .metadata()
                    .map_err(|e| CollectError::io("read the size of", entry.path(), e))?
                    .len();
                queue.push((seq, entry.path(), len));
                largest = largest.max(seq);
            } else if let Some(seq) = name
                .strip_suffix(&format!(".{REFUSED}"))
                .or_else(|| name.strip_suffix(&format!(".{UNREADABLE}")))
                .and_then(seq_of)
            {
                largest = largest.max(seq);
            }
        }
        queue.sort_unstable();
        let bytes = queue.iter().map(|(_, _, len)| len).sum();
        if !queue.is_empty() {
            tracing::info!(spool = %dir.display(), batches = queue.len(), bytes, "batches wait in the spool; shipping them first");
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
            max_bytes,
            bytes,
            queue: queue.into_iter().map(|(_, p, len)| (p, len, 0)).collect(),
            next_seq: largest.checked_add(1),
        })
    }

    /// Whether any batch waits.
    pub(crate) fn waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Shows what waits in the shipper's gauges.
    pub(crate) fn gauge(&self, counters: &Counters) {
        use std::sync::atomic::Ordering::Relaxed;
        counters.spool_bytes.store(self.bytes, Relaxed);
        counters
            .spool_batches
            .store(self.queue.len() as u64, Relaxed);
    }

    /// The oldest batch waiting, if any.
    pub(crate) fn oldest(&self) -> Option<&Path> {
        self.queue.front().map(|(p, _, _)| p.as_path())
    }

    /// A batch of `len` bytes was written as `path`: it waits behind the others.
    pub(crate) fn kept(&mut self, path: PathBuf, len: u64) {
        self.bytes += len;
        self.queue.push_back((path, len, 0));
    }

    /// Of the oldest batch, `len` bytes are left to deliver: its file now holds them alone,
    /// or (`skip`: the file could not be rewritten) they are its last `len` bytes, the
    /// `skip` before them handled already.
    pub(crate) fn rewrote_oldest(&mut self, len: u64, skip: u64) {
        if let Some((_, old, at)) = self.queue.front_mut() {
            self.bytes = self.bytes - *old + len;
            *old = len;
            *at = skip;
        }
    }

    /// Where what is left of the oldest batch starts in its file (0 unless a rewrite of
    /// it failed).
    pub(crate) fn oldest_skip(&self) -> u64 {
        self.queue.front().map_or(0, |(_, _, skip)| *skip)
    }

    /// The oldest batch was handled (delivered, or set aside): it waits no longer.
    pub(crate) fn handled_oldest(&mut self) {
        if let Some((_, len, _)) = self.queue.pop_front() {
            self.bytes -= len;
        }
    }

    /// The name the next batch is kept under, counted; an error once the numbers are used
    /// up (a file numbered `u64::MAX` put there by hand), rather than a name that would
    /// replace a batch waiting.
    pub(crate) fn next_name(&mut self) -> Result<String, CollectError> {
        let seq = self.next_seq.ok_or_else(|| CollectError::Flush {
            reason: format!(
                "the spool {} has used up its batch numbers (the last, {}, is taken)",
                self.dir.display(),
                u64::MAX
            ),
        })?;
        self.next_seq = seq.checked_add(1);
        Ok(format!("{PREFIX}{seq:020}{SUFFIX}"))
    }
}

/// Writes `body` durably as `dir/name` (temporary file, fsync, rename, fsync of the
/// directory); on failure nothing of it is left behind.
pub(crate) fn write(dir: &Path, name: &str, body: &[u8]) -> Result<(), CollectError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = std::fs::write(&tmp, body)
        .map_err(|e| CollectError::io("write", &tmp, e))
        .and_then(|()| crate::segment::publish(&tmp, &dir.join(name), dir));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Removes a delivered batch file durably.
pub(crate) fn remove(dir: &Path, path: &Path) -> Result<(), CollectError> {
    std::fs::remove_file(path).map_err(|e| CollectError::io("remove", path, e))?;
    crate::segment::sync_dir(dir).map_err(|e| CollectError::io("sync", dir, e))
}

/// Sets a batch file aside as `NAME.suffix` (no longer waiting, kept for a person).
pub(crate) fn set_aside(dir: &Path, path: &Path, suffix: &str) -> Result<(), CollectError> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".{suffix}"));
    std::fs::rename(path, &aside).map_err(|e| CollectError::io("rename", path, e))?;
    crate::segment::sync_dir(dir).map_err(|e| CollectError::io("sync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// On the paused clock: the spool's tries after failures wait 200, 400, 800 ms … up to
    /// the largest backoff, and the first batch handled makes the next due at once and the
    /// backoff start again.
    #[tokio::test(start_paused = true)]
    async fn tries_after_failures_back_off_and_a_delivery_starts_again() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Backoff::exponential(200 * MS, 2.0, 1_000 * MS).unwrap(), t0);
        assert_eq!(s.due(), t0, "due at once");
        let mut waits = Vec::new();
        for _ in 0..5 {
            let now = Instant::now();
            s.failed(now);
            waits.push(s.due() - now);
            tokio::time::sleep_until(s.due()).await;
        }
        assert_eq!(
            waits,
            [200 * MS, 400 * MS, 800 * MS, 1_000 * MS, 1_000 * MS]
        );
        assert_eq!(Instant::now() - t0, 3_400 * MS);
        s.handled(Instant::now());
        assert_eq!(s.due(), Instant::now());
        s.failed(Instant::now());
        assert_eq!(s.due() - Instant::now(), 200 * MS);
    }

    proptest::proptest! {
        /// Every wait lies between the first backoff and the largest, and never shrinks
        /// from one failure to the next.
        #[test]
        fn waits_stay_within_the_backoffs_bounds(
            first_ms in 1u64..10_000,
            extra_ms in 0u64..100_000,
            events in proptest::collection::vec(proptest::bool::weighted(0.8), 1..64),
        ) {
            let (first, max) = (
                Duration::from_millis(first_ms),
                Duration::from_millis(first_ms + extra_ms),
            );
            let now = Instant::now();
            let mut s = Schedule::new(Backoff::exponential(first, 2.0, max).unwrap(), now);
            let mut last = None;
            for failure in events {
                if failure {
                    s.failed(now);
                    let wait = s.due() - now;
                    proptest::prop_assert!(first <= wait && wait <= max, "{wait:?}");
                    if let Some(l) = last {
                        proptest::prop_assert!(wait >= l);
                    }
                    last = Some(wait);
                } else {
                    s.handled(now);
                    proptest::prop_assert_eq!(s.due(), now);
                    last = None;
                }
            }
        }
    }

    #[test]
    fn names_sort_oldest_first_and_continue_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let names: Vec<String> = (0..12).map(|_| s.next_name().unwrap()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "the counter orders them, not the clock");
        for n in &names[..3] {
            write(dir.path(), n, b"{}\n").unwrap();
        }
        std::fs::write(dir.path().join(format!(".{}.tmp", names[3])), b"{").unwrap();
        set_aside(dir.path(), &dir.path().join(&names[2]), REFUSED).unwrap();
        drop(s);
        let mut again = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(again.waiting());
        assert_eq!(again.bytes, 6, "two batches of three bytes wait");
        assert_eq!(again.queue.len(), 2);
        assert_eq!(again.oldest(), Some(dir.path().join(&names[0]).as_path()));
        again.handled_oldest();
        assert_eq!(again.oldest(), Some(dir.path().join(&names[1]).as_path()));
        assert_eq!(again.bytes, 3);
        assert!(
            again.next_name().unwrap() > names[2],
            "numbers go on past the last kept"
        );
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(
            left.is_empty(),
            "a crash's temporary file is removed: {left:?}"
        );
    }

    #[test]
    fn the_last_number_is_handed_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let before = format!("{PREFIX}{}{SUFFIX}", u64::MAX - 1);
        write(dir.path(), &before, b"{}\n").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            s.next_name().unwrap(),
            format!("{PREFIX}{}{SUFFIX}", u64::MAX)
        );
        assert!(s.next_name().is_err());
    }

    #[test]
    fn the_last_number_is_not_followed_by_a_name_already_taken() {
        let dir = tempfile::tempdir().unwrap();
        let last = format!("{PREFIX}{}{SUFFIX}", u64::MAX);
        write(dir.path(), &last, b"{}\n").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let err = s.next_name().unwrap_err();
        assert!(
            err.to_string().contains("used up its batch numbers"),
            "{err}"
        );
        assert!(s.next_name().is_err(), "and stays so");
        assert_eq!(s.queue.len(), 1, "the batch waiting is kept");
    }

    #[test]
    fn a_file_is_not_a_spool() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let err = Spool::open(&file, 1).unwrap_err();
        assert!(
            err.to_string().contains("is a file, not a spool directory"),
            "{err}"
        );
    }
}
