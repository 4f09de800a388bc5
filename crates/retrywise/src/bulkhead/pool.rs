//! The isolated-pool bulkhead: its own workers and its own bounded queue per dependency.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use futures_util::FutureExt;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::{Check, ConfigError};

const CHECK: Check = Check::new("pool_bulkhead");

/// The most workers a pool may have: each is a task spawned when it is built.
pub const MAX_POOL_WORKERS: u32 = 1 << 16;

/// A queued task; says whether it ran to its end (not when its caller went away first).
type Job = Pin<Box<dyn Future<Output = bool> + Send>>;

/// What a full pool does with one more task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The caller runs the task itself: back-pressure, as the design sketch's `CallerRunsPolicy`.
    CallerRuns,
    /// The task is refused with [`PoolError::Full`].
    Reject,
}

/// Why a pool did not produce the task's output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The queue was full and the pool rejects in that case.
    #[error("pool bulkhead `{0}` is full")]
    Full(Arc<str>),
    /// The task panicked in a worker.
    #[error("a task in pool bulkhead `{0}` panicked")]
    Panicked(Arc<str>),
    /// The pool shut down before running the task.
    #[error("pool bulkhead `{0}` shut down")]
    Closed(Arc<str>),
    /// No pool is registered under this name.
    #[error("unknown bulkhead `{0}`")]
    Unknown(String),
}

/// A point-in-time view of a [`PoolBulkhead`] (the design sketch's per-bulkhead status).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolMetrics {
    /// The pool's name.
    pub name: Arc<str>,
    /// Workers running a task now.
    pub active: u32,
    /// Workers in the pool.
    pub workers: u32,
    /// Tasks waiting in the queue.
    pub queued: u32,
    /// The queue's size.
    pub queue_capacity: u32,
    /// Room left in the queue.
    pub remaining_capacity: u32,
    /// Tasks finished by the workers (run to their end, or to a panic; not those whose
    /// caller went away before or while they ran, which were dropped).
    pub completed: u64,
    /// Times a task found the queue full (run by its caller or rejected).
    pub saturated: u64,
    /// Tasks run by their caller because the queue was full.
    pub caller_ran: u64,
    /// Tasks rejected because the queue was full.
    pub rejected: u64,
    /// Whether the queue has room.
    pub healthy: bool,
    /// What happens when the queue is full.
    pub when_full: WhenFull,
}

/// A bulkhead with its own workers and bounded queue: tasks for one dependency run only on
/// that dependency's workers, so a dependency that hangs can exhaust only its own pool.
///
/// The workers are tasks spawned on the runtime given to the builder (by default, the one
/// the pool is built in). Give each pool a runtime of its own to isolate CPU-bound or
/// blocking work onto separate threads — the design sketch's per-dependency thread pools.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use retrywise::bulkhead::{PoolBulkhead, WhenFull};
///
/// let payments = PoolBulkhead::builder("payment").workers(4).queue(100).when_full(WhenFull::CallerRuns).build()?;
/// let total = payments.execute(async { 40 + 2 }).await?;
/// assert_eq!(total, 42);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PoolBulkhead {
    shared: Arc<PoolShared>,
}

#[derive(Debug)]
struct PoolShared {
    name: Arc<str>,
    tx: mpsc::Sender<Job>,
    workers: u32,
    queue: u32,
    when_full: WhenFull,
    active: Arc<AtomicU32>,
    completed: Arc<AtomicU64>,
    saturated: AtomicU64,
    caller_ran: AtomicU64,
    rejected: AtomicU64,
}

impl PoolBulkhead {
    /// A builder: 4 workers, a queue of 64, the caller runs tasks the queue has no room for.
    pub fn builder(name: impl Into<Arc<str>>) -> PoolBuilder {
        PoolBuilder {
            name: name.into(),
            workers: 4,
            queue: 64,
            when_full: WhenFull::CallerRuns,
            handle: None,
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// Runs `task` on the pool's workers and returns its output.
    ///
    /// A caller that stops waiting (drops the returned future: its own timeout, say) takes
    /// its task with it: one still queued is not started, and one running is dropped where
    /// it stands - the pool's workers do no work nobody waits for, which is what a pool
    /// behind a hanging dependency needs to recover.
    ///
    /// # Errors
    /// [`PoolError::Full`] when the queue is full and the pool rejects;
    /// [`PoolError::Panicked`] when the task panicked; [`PoolError::Closed`] when the
    /// pool's runtime shut down.
    pub async fn execute<F, T>(&self, task: F) -> Result<T, PoolError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let s = &*self.shared;
        let (tx, rx) = oneshot::channel::<Option<T>>();
        let mut tx = tx;
        let job: Job = Box::pin(async move {
            // Its caller gone while it waited in the queue: not run.
            if tx.is_closed() {
                return false;
            }
            // A panicking task must not take its worker down; the caller hears of it
            // (`None`). A job dropped unrun (the runtime shut down) sends nothing.
            let finished = {
                let run = std::pin::pin!(AssertUnwindSafe(task).catch_unwind());
                let gone = std::pin::pin!(tx.closed());
                match futures_util::future::select(run, gone).await {
                    futures_util::future::Either::Left((out, _)) => Some(out),
                    // Its caller gone while it ran: dropped where it stands.
                    futures_util::future::Either::Right(_) => None,
                }
            };
            let ran = finished.is_some();
            if let Some(out) = finished {
                let _ = tx.send(out.ok());
            }
            ran
        });
        match s.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                s.saturated.fetch_add(1, Ordering::Relaxed);
                match s.when_full {
                    WhenFull::Reject => {
                        s.rejected.fetch_add(1, Ordering::Relaxed);
                        return Err(PoolError::Full(Arc::clone(&s.name)));
                    }
                    WhenFull::CallerRuns => {
                        s.caller_ran.fetch_add(1, Ordering::Relaxed);
                        let _ = job.await;
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(PoolError::Closed(Arc::clone(&s.name)));
            }
        }
        match rx.await {
            Ok(Some(out)) => Ok(out),
            Ok(None) => Err(PoolError::Panicked(Arc::clone(&s.name))),
            Err(_) => Err(PoolError::Closed(Arc::clone(&s.name))),
        }
    }

    /// A snapshot of the pool.
    pub fn metrics(&self) -> PoolMetrics {
        let s = &*self.shared;
        let remaining = u32::try_from(s.tx.capacity()).unwrap_or(u32::MAX);
        PoolMetrics {
            name: Arc::clone(&s.name),
            active: s.active.load(Ordering::Relaxed),
            workers: s.workers,
            queued: s.queue.saturating_sub(remaining),
            queue_capacity: s.queue,
            remaining_capacity: remaining,
            completed: s.completed.load(Ordering::Relaxed),
            saturated: s.saturated.load(Ordering::Relaxed),
            caller_ran: s.caller_ran.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            healthy: remaining > 0,
            when_full: s.when_full,
        }
    }
}

/// Builds a [`PoolBulkhead`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    name: Arc<str>,
    workers: u32,
    queue: u32,
    when_full: WhenFull,
    handle: Option<Handle>,
}

impl PoolBuilder {
    /// Tasks run at once. Defaults to 4.
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    /// Tasks that may wait for a worker. Defaults to 64.
    pub fn queue(mut self, n: u32) -> Self {
        self.queue = n;
        self
    }

    /// What to do when the queue is full. Defaults to [`WhenFull::CallerRuns`].
    pub fn when_full(mut self, w: WhenFull) -> Self {
        self.when_full = w;
        self
    }

    /// The runtime the workers run on. Defaults to the runtime `build` is called in.
    pub fn runtime(mut self, handle: Handle) -> Self {
        self.handle = Some(handle);
        self
    }

    /// Checks the configuration, spawns the workers and returns the pool. The workers stop
    /// when the last handle to the pool is dropped and the queue is drained.
    ///
    /// # Errors
    /// Zero workers or more than [`MAX_POOL_WORKERS`], a zero queue, an empty name, or no runtime to spawn on (no
    /// [`runtime`](Self::runtime) given and not called within one).
    pub fn build(self) -> Result<PoolBulkhead, ConfigError> {
        if self.name.is_empty() {
            return Err(CHECK.err("name", "must not be empty"));
        }
        CHECK.at_least_one("workers", u64::from(self.workers))?;
        // (Each is a task spawned now: four billion would exhaust memory, not fail.)
        if self.workers > MAX_POOL_WORKERS {
            return Err(CHECK.err(
                "workers",
                format!("must be at most {MAX_POOL_WORKERS}, got {}", self.workers),
            ));
        }
        CHECK.at_least_one("queue", u64::from(self.queue))?;
        let handle = match self.handle {
            Some(h) => h,
            None => Handle::try_current()
                .map_err(|_| CHECK.err("runtime", "no tokio runtime to spawn the workers on"))?,
        };
        let (tx, rx) = mpsc::channel::<Job>(self.queue as usize);
        let rx = Arc::new(Mutex::new(rx));
        let active = Arc::new(AtomicU32::new(0));
        let completed = Arc::new(AtomicU64::new(0));
        for _ in 0..self.workers {
            let rx = Arc::clone(&rx);
            let active = Arc::clone(&active);
            let completed = Arc::clone(&completed);
            handle.spawn(async move {
                loop {
                    // One idle worker waits on the queue at a time; the others wait for it.
                    let job = rx.lock().await.recv().await;
                    let Some(job) = job else { break };
                    active.fetch_add(1, Ordering::Relaxed);
                    let ran = job.await;
                    active.fetch_sub(1, Ordering::Relaxed);
                    if ran {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        Ok(PoolBulkhead {
            shared: Arc::new(PoolShared {
                name: self.name,
                tx,
                workers: self.workers,
                queue: self.queue,
                when_full: self.when_full,
                active,
                completed,
                saturated: AtomicU64::new(0),
                caller_ran: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
            }),
        })
    }
}

/// Pools by dependency name: one isolated pool per dependency.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use retrywise::bulkhead::{BulkheadRegistry, PoolBulkhead, PoolError};
///
/// let registry = BulkheadRegistry::new()
///     .with(PoolBulkhead::builder("payment").workers(20).queue(100).build()?)
///     .with(PoolBulkhead::builder("notification").workers(5).queue(20).build()?);
/// assert_eq!(registry.execute("payment", async { "charged" }).await?, "charged");
/// assert!(matches!(registry.execute("shipping", async {}).await, Err(PoolError::Unknown(_))));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct BulkheadRegistry {
    pools: HashMap<Arc<str>, PoolBulkhead>,
}

impl BulkheadRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the pool under its name.
    pub fn with(mut self, pool: PoolBulkhead) -> Self {
        self.pools.insert(Arc::clone(pool.name()), pool);
        self
    }

    /// The pool named `name`.
    pub fn get(&self, name: &str) -> Option<&PoolBulkhead> {
        self.pools.get(name)
    }

    /// Runs `task` in the pool named `name`.
    ///
    /// # Errors
    /// [`PoolError::Unknown`] for a name no pool has, and the pool's own errors.
    pub async fn execute<F, T>(&self, name: &str, task: F) -> Result<T, PoolError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self
            .pools
            .get(name)
            .ok_or_else(|| PoolError::Unknown(name.chars().take(128).collect()))?;
        pool.execute(task).await
    }

    /// Every pool's status, by name.
    pub fn status(&self) -> Vec<PoolMetrics> {
        let mut all: Vec<_> = self.pools.values().map(PoolBulkhead::metrics).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
