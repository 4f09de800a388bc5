//! The semaphore bulkhead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use crate::error::{Check, ConfigError};

const CHECK: Check = Check::new("bulkhead");

/// The bulkhead had no room for the call within its maximum wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead `{name}` is full ({max_concurrent} calls in flight)")]
pub struct BulkheadFull {
    /// The bulkhead's name.
    pub name: Arc<str>,
    /// Its concurrency limit.
    pub max_concurrent: u32,
}

/// Caps how many calls to one dependency run at once, so that a slow dependency cannot
/// take every task, connection or thread of the caller with it.
///
/// A call that finds no room waits up to the maximum wait (the seed: 100 ms), then is
/// rejected with [`BulkheadFull`]. Cloning shares the bulkhead.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use retrywise::bulkhead::Bulkhead;
///
/// let bulkhead = Bulkhead::builder("inventory").max_concurrent(2).max_wait(Duration::ZERO).build()?;
/// let a = bulkhead.try_acquire()?;
/// let b = bulkhead.try_acquire()?;
/// assert!(bulkhead.try_acquire().is_err());
/// drop(a);
/// assert_eq!(bulkhead.call(async { 5 }).await?, 5);
/// assert_eq!(bulkhead.metrics().rejected_calls, 1);
/// # drop(b);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Bulkhead {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    semaphore: Arc<Semaphore>,
    max: u32,
    max_wait: Duration,
    /// Calls that asked for a permit (admitted or not).
    total: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    finished: AtomicU64,
    exec_nanos: AtomicU64,
}

/// A point-in-time view of a [`Bulkhead`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BulkheadMetrics {
    /// The bulkhead's name.
    pub name: Arc<str>,
    /// Calls running now.
    pub active: u32,
    /// Room left.
    pub available: u32,
    /// The concurrency limit.
    pub max_concurrent: u32,
    /// Calls that asked for room.
    pub total_calls: u64,
    /// Calls refused.
    pub rejected_calls: u64,
    /// `rejected / total`, 0 before any call.
    pub rejection_rate: f64,
    /// Admitted calls reported as failed.
    pub failed_calls: u64,
    /// Mean execution time of admitted calls that reported it.
    pub avg_execution_time: Duration,
}

impl Bulkhead {
    /// A builder: 25 concurrent calls and a 100 ms wait unless set.
    pub fn builder(name: impl Into<Arc<str>>) -> BulkheadBuilder {
        BulkheadBuilder {
            name: name.into(),
            max_concurrent: 25,
            max_wait: Duration::from_millis(100),
        }
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    pub(crate) fn full(&self) -> BulkheadFull {
        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
        BulkheadFull {
            name: Arc::clone(&self.shared.name),
            max_concurrent: self.shared.max,
        }
    }

    /// Counts a request and takes room if there is some now; a refusal is not counted yet
    /// (the caller may still wait).
    pub(crate) fn try_acquire_quiet(&self) -> Option<BulkheadPermit<'_>> {
        self.shared.total.fetch_add(1, Ordering::Relaxed);
        self.shared
            .semaphore
            .try_acquire()
            .ok()
            .map(|p| BulkheadPermit {
                bulkhead: self,
                _permit: p,
            })
    }

    /// After [`try_acquire_quiet`](Self::try_acquire_quiet) found no room: waits up to the
    /// maximum wait, counting a rejection if none frees up.
    pub(crate) async fn acquire_after_refusal(&self) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        if self.shared.max_wait.is_zero() {
            return Err(self.full());
        }
        match tokio::time::timeout(self.shared.max_wait, self.shared.semaphore.acquire()).await {
            Ok(Ok(p)) => Ok(BulkheadPermit {
                bulkhead: self,
                _permit: p,
            }),
            // Timed out, or the semaphore was closed (never done here).
            _ => Err(self.full()),
        }
    }

    /// Takes room for a call if there is some now, without waiting.
    ///
    /// # Errors
    /// [`BulkheadFull`] when every permit is taken.
    pub fn try_acquire(&self) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        self.try_acquire_quiet().ok_or_else(|| self.full())
    }

    /// Takes room for a call, waiting up to the maximum wait.
    ///
    /// # Errors
    /// [`BulkheadFull`] when no room freed up in time.
    pub async fn acquire(&self) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        match self.try_acquire_quiet() {
            Some(p) => Ok(p),
            None => self.acquire_after_refusal().await,
        }
    }

    /// Like [`acquire`](Self::acquire), with a permit that owns a handle to the bulkhead
    /// (for futures that must be `'static`, such as tower services').
    ///
    /// # Errors
    /// [`BulkheadFull`] when no room freed up in time.
    pub async fn acquire_owned(&self) -> Result<OwnedBulkheadPermit, BulkheadFull> {
        match self.try_acquire_owned_quiet() {
            Some(p) => Ok(p),
            None => self.acquire_owned_after_refusal().await,
        }
    }

    /// [`try_acquire_quiet`](Self::try_acquire_quiet) with an owned permit.
    pub(crate) fn try_acquire_owned_quiet(&self) -> Option<OwnedBulkheadPermit> {
        self.shared.total.fetch_add(1, Ordering::Relaxed);
        Arc::clone(&self.shared.semaphore)
            .try_acquire_owned()
            .ok()
            .map(|p| OwnedBulkheadPermit {
                bulkhead: self.clone(),
                _permit: p,
            })
    }

    /// [`acquire_after_refusal`](Self::acquire_after_refusal) with an owned permit.
    pub(crate) async fn acquire_owned_after_refusal(
        &self,
    ) -> Result<OwnedBulkheadPermit, BulkheadFull> {
        if self.shared.max_wait.is_zero() {
            return Err(self.full());
        }
        let sem = Arc::clone(&self.shared.semaphore);
        match tokio::time::timeout(self.shared.max_wait, sem.acquire_owned()).await {
            Ok(Ok(p)) => Ok(OwnedBulkheadPermit {
                bulkhead: self.clone(),
                _permit: p,
            }),
            _ => Err(self.full()),
        }
    }

    /// Whether a caller that finds no room waits for some.
    #[cfg(feature = "tower")]
    pub(crate) fn waits(&self) -> bool {
        !self.shared.max_wait.is_zero()
    }

    /// Runs `fut` inside the bulkhead.
    ///
    /// # Errors
    /// [`BulkheadFull`] when there was no room within the maximum wait.
    pub async fn call<F: std::future::Future>(&self, fut: F) -> Result<F::Output, BulkheadFull> {
        let permit = self.acquire().await?;
        let out = fut.await;
        drop(permit);
        Ok(out)
    }

    /// Calls running now.
    pub fn active(&self) -> u32 {
        self.shared.max - self.available()
    }

    fn available(&self) -> u32 {
        u32::try_from(self.shared.semaphore.available_permits()).unwrap_or(u32::MAX)
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> BulkheadMetrics {
        let s = &*self.shared;
        let total = s.total.load(Ordering::Relaxed);
        let rejected = s.rejected.load(Ordering::Relaxed);
        let finished = s.finished.load(Ordering::Relaxed);
        let available = self.available();
        BulkheadMetrics {
            name: Arc::clone(&s.name),
            active: s.max.saturating_sub(available),
            available,
            max_concurrent: s.max,
            total_calls: total,
            rejected_calls: rejected,
            rejection_rate: if total == 0 {
                0.0
            } else {
                rejected as f64 / total as f64
            },
            failed_calls: s.failed.load(Ordering::Relaxed),
            avg_execution_time: Duration::from_nanos(
                s.exec_nanos
                    .load(Ordering::Relaxed)
                    .checked_div(finished)
                    .unwrap_or(0),
            ),
        }
    }

    fn report(&self, failed: bool, took: Duration) {
        let s = &*self.shared;
        s.finished.fetch_add(1, Ordering::Relaxed);
        s.exec_nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if failed {
            s.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Room for one call in a [`Bulkhead`]; released when dropped.
#[derive(Debug)]
#[must_use = "the room is released when the permit is dropped"]
pub struct BulkheadPermit<'a> {
    bulkhead: &'a Bulkhead,
    _permit: SemaphorePermit<'a>,
}

impl BulkheadPermit<'_> {
    /// Reports how the call went (for the execution-time and failure metrics), then
    /// releases the room.
    pub fn finish(self, failed: bool, took: Duration) {
        self.bulkhead.report(failed, took);
    }
}

/// Room for one call in a [`Bulkhead`], owning a handle to it; released when dropped.
#[derive(Debug)]
#[must_use = "the room is released when the permit is dropped"]
pub struct OwnedBulkheadPermit {
    bulkhead: Bulkhead,
    _permit: OwnedSemaphorePermit,
}

impl OwnedBulkheadPermit {
    /// Reports how the call went, then releases the room.
    pub fn finish(self, failed: bool, took: Duration) {
        self.bulkhead.report(failed, took);
    }
}

/// Builds a [`Bulkhead`].
#[derive(Debug, Clone)]
pub struct BulkheadBuilder {
    name: Arc<str>,
    max_concurrent: u32,
    max_wait: Duration,
}

impl BulkheadBuilder {
    /// Calls allowed at once. Defaults to 25.
    pub fn max_concurrent(mut self, n: u32) -> Self {
        self.max_concurrent = n;
        self
    }

    /// How long a call may wait for room before it is rejected; zero rejects at once.
    /// Defaults to 100 ms (the seed's).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Checks and builds.
    ///
    /// # Errors
    /// `max_concurrent` zero or above tokio's semaphore limit; an empty name.
    pub fn build(self) -> Result<Bulkhead, ConfigError> {
        if self.name.is_empty() {
            return Err(CHECK.err("name", "must not be empty"));
        }
        CHECK.at_least_one("max_concurrent", u64::from(self.max_concurrent))?;
        if self.max_concurrent as usize > Semaphore::MAX_PERMITS {
            return Err(CHECK.err(
                "max_concurrent",
                format!("must be at most {}", Semaphore::MAX_PERMITS),
            ));
        }
        Ok(Bulkhead {
            shared: Arc::new(Shared {
                name: self.name,
                semaphore: Arc::new(Semaphore::new(self.max_concurrent as usize)),
                max: self.max_concurrent,
                max_wait: self.max_wait,
                total: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                finished: AtomicU64::new(0),
                exec_nanos: AtomicU64::new(0),
            }),
        })
    }
}
