//! The state every handler shares, and the [`Service`] that owns it.

use std::sync::Arc;

use retrywise_collect::{SegmentRecorder, WriterConfig};

use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::models::{Models, ReloadReport};
use crate::shared::SharedFleet;
use crate::{Config, ServerError};

/// The state every handler shares.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The serving models.
    pub models: Arc<Models>,
    /// The fleet view.
    pub fleet: Fleet,
    /// The metrics.
    pub metrics: Metrics,
    /// Where ingested attempts are written.
    pub recorder: SegmentRecorder,
    /// The OpenAPI document, rendered once (it says whether auth is on).
    pub(crate) openapi: bytes::Bytes,
    /// The API routes' concurrency limit, shared by every router of this service.
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    /// Ingestion's own share of it ([`ingest_in_flight`]): batches waiting on slow storage
    /// never take the room predictions and decisions need.
    pub(crate) ingest_in_flight: Arc<tokio::sync::Semaphore>,
    /// The batches being written, as many as ingestion's share: each write holds a place
    /// until the writer answers, also after its request ended (a request timeout, a client
    /// gone) - so a stalled disk parks no more of the blocking pool's threads than that.
    pub(crate) ingest_writing: Arc<tokio::sync::Semaphore>,
    /// The retries `/v1/decide` has told its callers to make, per target and moment, so
    /// that the next caller's lands where the load is lightest.
    pub(crate) calendar: Arc<retrywise::retry::RetryCalendar>,
}

/// The ingestion requests handled at once, of `max_in_flight` API requests: a quarter (at
/// least one). Each waits for its batch to be written (and fsynced, with `sync_ingest`)
/// on a thread of the blocking pool; the rest of the room stays for predictions and
/// decisions, and for model reloads' file reads on that pool.
pub(crate) fn ingest_in_flight(max_in_flight: usize) -> usize {
    (max_in_flight / 4).max(1)
}

impl Shared {
    /// Brings the dropped-records counter up to what the collector reports.
    pub(crate) fn sync_dropped(&self) {
        let s = self.recorder.stats();
        self.metrics.set_dropped(
            s.dropped_queue_full + s.dropped_io + s.dropped_closed + s.dropped_invalid,
        );
        // In `metrics::DROP_CAUSES`' order.
        self.metrics.set_dropped_by([
            s.dropped_queue_full,
            s.dropped_io,
            s.dropped_closed,
            s.dropped_invalid,
        ]);
        self.metrics
            .set_collector_io([s.io_errors, s.written, s.synced]);
        self.metrics
            .collector_pending
            .set(i64::try_from(self.recorder.pending()).unwrap_or(i64::MAX));
    }
}

/// A cheap handle on [`Shared`].
pub type AppState = Arc<Shared>;

/// A service instance: its state and its routes ([`Service::router`]).
#[derive(Debug, Clone)]
pub struct Service {
    pub(crate) state: AppState,
}

impl Service {
    /// A service with `config`: no model loaded yet (call [`Service::reload`] or
    /// [`serve`](crate::serve)), ingested attempts written under `config.attempts`.
    ///
    /// With `config.fleet`, the fleet view is shared through that Redis: call
    /// [`Service::spawn_fleet_sync`] (as [`serve`](crate::serve) does) to keep it in step.
    ///
    /// # Errors
    /// A value of `config` out of range ([`Config::validate`], before the attempts folder
    /// is opened); the attempts folder cannot be opened; `config.fleet` is not a Redis URL.
    pub fn new(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let writer = WriterConfig {
            sync_batches: config.sync_ingest,
            ..WriterConfig::default()
        };
        let recorder =
            SegmentRecorder::open(&config.attempts, writer).map_err(ServerError::Collector)?;
        Self::with_recorder(config, recorder)
    }

    /// A service writing ingested attempts through `recorder` (its own storage, queue
    /// size...; tests inject slow disks here). The recorder's own
    /// [`WriterConfig::sync_batches`] decides when a batch is answered: `config.sync_ingest`
    /// is what [`Service::new`] opens its recorder with.
    ///
    /// # Errors
    /// A value of `config` out of range ([`Config::validate`]: a `Config` built in code
    /// is checked as a loaded one is).
    pub fn with_recorder(config: Config, recorder: SegmentRecorder) -> Result<Self, ServerError> {
        config.validate()?;
        let openapi = crate::openapi::render(config.token.is_some());
        let models = Arc::new(Models::new(config.models.clone()));
        let metrics = if config.fleet.is_some() {
            Metrics::with_shared_fleet(config.max_target_labels)
        } else {
            Metrics::new(config.max_target_labels)
        };
        let mut fleet = Fleet::new(config.health_window, config.max_targets).with_model(
            Arc::new(
                crate::models::Serving::new(models.clone(), config.default_model.clone())
                    .per_target(config.model_per_target),
            ),
            config.min_p_success,
        );
        if let Some(url) = &config.fleet {
            let shared = SharedFleet::new(
                url,
                config.health_window,
                config.fleet_cache,
                config.fleet_timeout,
                config.max_targets,
                metrics.shared_fleet.clone().unwrap_or_default(),
            )?;
            fleet = fleet.with_shared(Arc::new(shared));
        }
        let state = Arc::new(Shared {
            models,
            fleet,
            metrics,
            recorder,
            calendar: Arc::new(retrywise::retry::RetryCalendar::new()),
            openapi,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
            ingest_in_flight: Arc::new(tokio::sync::Semaphore::new(ingest_in_flight(
                config.max_in_flight,
            ))),
            ingest_writing: Arc::new(tokio::sync::Semaphore::new(ingest_in_flight(
                config.max_in_flight,
            ))),
            config,
        });
        Ok(Self { state })
    }

    /// Keeps the fleet view shared through Redis in step (writes what is ingested, reads
    /// the fleet's view back) until the service is dropped; `None` without `config.fleet`.
    pub fn spawn_fleet_sync(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.state.fleet.shared().map(SharedFleet::spawn)
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Looks for new model versions now.
    ///
    /// # Errors
    /// The models folder cannot be read.
    pub async fn reload(&self) -> std::io::Result<ReloadReport> {
        reload(&self.state).await
    }

    /// Flushes the attempts written so far to disk.
    ///
    /// # Errors
    /// What the collector says.
    pub fn flush(&self) -> Result<(), retrywise_collect::CollectError> {
        self.state.recorder.flush()
    }
}

/// Looks for new model versions, counting and logging what happened.
///
/// The reload runs on a task of its own: a caller that stops waiting (an `/admin/reload`
/// past the request timeout, a client gone) does not cut it short, so what it scanned is
/// swapped in, counted and logged, and the next reload waits for it rather than scanning
/// the folder beside it.
///
/// # Errors
/// The models folder cannot be read.
pub async fn reload(st: &AppState) -> std::io::Result<ReloadReport> {
    let st = Arc::clone(st);
    tokio::spawn(async move { reload_here(&st).await })
        .await
        .map_err(std::io::Error::other)?
}

async fn reload_here(st: &AppState) -> std::io::Result<ReloadReport> {
    let count = |result: &str, n: usize| {
        st.metrics
            .reloads
            .get_or_create(&crate::metrics::ResultLabels {
                result: result.into(),
            })
            .inc_by(n as u64);
    };
    let started = std::time::Instant::now();
    let r = st.models.reload().await;
    st.metrics
        .reload_seconds
        .observe(started.elapsed().as_secs_f64());
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            // The folder could not be read: no version was refused.
            count("error", 1);
            return Err(e);
        }
    };
    // A scan of a folder that is gone read nothing: not a success an alert on staleness
    // should take for one.
    if !r.folder_missing
        && let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
    {
        st.metrics.reload_last_success.set(now.as_secs_f64());
    }
    count("success", r.loaded.len());
    count("failure", r.failed.len());
    let window = st.config.health_window;
    for m in st.models.snapshot().values() {
        if let Some(w) = m.artifact.features.health_window()
            && w != window
            && r.loaded
                .iter()
                .any(|(n, v)| *n == m.name && *v == m.version)
        {
            tracing::warn!(
                model = %m.name, version = m.version, trained_window_ms = w.as_millis() as u64,
                fleet_window_ms = window.as_millis() as u64,
                "the model learned target health over another window than the fleet view measures; \
                 predictions that rely on the fleet view's health will be skewed"
            );
        }
    }
    // Recomputed from what serves now on every reload, read under the gauge's lock, so
    // two reloads racing cannot leave a stale version marked as serving.
    st.metrics.set_serving(|| {
        st.models
            .snapshot()
            .values()
            .map(|m| (m.name.clone(), m.version))
            .collect()
    });
    Ok(r)
}
