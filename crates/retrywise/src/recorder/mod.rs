//! Where attempt records go.
//!
//! Every attempt a [`Policy`](crate::policy::Policy) sends upstream is handed to its
//! [`Recorder`] as an [`AttemptRecord`]. The default records nothing (and the policy then
//! builds no records at all). The durable recorder that writes segments to disk and ships
//! them to the service lives in the `retrywise-collect` crate; this crate does no I/O.

use std::sync::{Arc, Mutex};

use crate::attempt::AttemptRecord;

/// Receives one record per attempt.
///
/// `record` runs on the caller's task, after the attempt, on the retry path: it must not
/// block or wait — queue the record and return. A recorder that cannot keep up should drop
/// records and count the drops rather than slow the calls.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use retrywise::attempt::AttemptRecord;
/// use retrywise::recorder::Recorder;
///
/// /// Counts failed attempts and keeps nothing.
/// #[derive(Default)]
/// struct FailureCounter(AtomicU64);
///
/// impl Recorder for FailureCounter {
///     fn record(&self, record: AttemptRecord) {
///         if !record.succeeded() {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
/// ```
pub trait Recorder: Send + Sync {
    /// Takes one attempt's record. Must not block.
    fn record(&self, record: AttemptRecord);

    /// Whether records are wanted at all; a policy builds none when this is `false`.
    fn enabled(&self) -> bool {
        true
    }
}

impl<R: Recorder + ?Sized> Recorder for Arc<R> {
    fn record(&self, record: AttemptRecord) {
        (**self).record(record);
    }

    fn enabled(&self) -> bool {
        (**self).enabled()
    }
}

/// Records nothing; policies skip building records altogether.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopRecorder;

impl Recorder for NoopRecorder {
    fn record(&self, _record: AttemptRecord) {}

    fn enabled(&self) -> bool {
        false
    }
}

/// Keeps records in memory, up to a limit (then drops and counts) — for tests, demos and
/// small tools.
#[derive(Debug)]
pub struct MemoryRecorder {
    limit: usize,
    inner: Mutex<(Vec<AttemptRecord>, u64)>,
}

impl MemoryRecorder {
    /// A recorder that keeps at most `limit` records.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            inner: Mutex::new((Vec::new(), 0)),
        }
    }

    /// Takes the records kept so far, oldest first.
    pub fn take(&self) -> Vec<AttemptRecord> {
        std::mem::take(&mut self.lock().0)
    }

    /// Records dropped because the limit was reached.
    pub fn dropped(&self) -> u64 {
        self.lock().1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<AttemptRecord>, u64)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Recorder for MemoryRecorder {
    fn record(&self, record: AttemptRecord) {
        let mut g = self.lock();
        if g.0.len() < self.limit {
            g.0.push(record);
        } else {
            g.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::{AttemptContext, Verdict};
    use std::time::Duration;

    #[test]
    fn memory_recorder_keeps_up_to_its_limit() {
        let r = MemoryRecorder::new(2);
        for i in 0..3 {
            r.record(AttemptRecord::new(
                i,
                0,
                0,
                AttemptContext::first("t"),
                &Verdict::Success,
                Duration::ZERO,
            ));
        }
        assert_eq!(r.dropped(), 1);
        let got = r.take();
        assert_eq!(got.iter().map(|r| r.call_id).collect::<Vec<_>>(), [0, 1]);
        assert!(r.take().is_empty());
        assert!(!NoopRecorder.enabled());
        let shared: Arc<dyn Recorder> = Arc::new(MemoryRecorder::new(1));
        assert!(shared.enabled());
    }
}
