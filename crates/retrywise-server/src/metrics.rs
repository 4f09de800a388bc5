//! Prometheus metrics: one registry per service instance, rendered at `GET /metrics`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template (`/v1/predict`), never the raw path.
    pub route: String,
    /// The status code.
    pub status: u16,
}

/// Labels of a model version.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The model's name.
    pub model: String,
    /// Its version.
    pub version: String,
}

/// Labels of a decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `retry` or why not (`low_success_probability`, `deadline`, …).
    pub reason: String,
}

/// Labels of a per-target count (capped: see [`Metrics::with_target_label`]).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// The target, or `other` beyond the cap.
    pub target: String,
}

/// Labels of a reload outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: String,
}

/// Why the collector dropped an accepted record (`dropped_attempts_by_cause`'s labels).
pub const DROP_CAUSES: [&str; 4] = ["queue_full", "io", "closed", "invalid"];

/// Raises `counter` by what `total` (a running total) has grown since `seen`.
fn advance(counter: &Counter, seen: &AtomicU64, total: u64) {
    let before = seen.fetch_max(total, Ordering::Relaxed);
    if total > before {
        counter.inc_by(total - before);
    }
}

/// Everything the service counts.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status.
    pub requests: Family<RouteLabels, Counter>,
    /// Request latency by route and status, seconds.
    pub latency: Family<RouteLabels, Histogram>,
    /// 1 for each model version serving.
    pub model_serving: Family<ModelLabels, Gauge>,
    /// Probabilities computed, by model.
    pub predictions: Family<ModelLabels, Counter>,
    /// Decisions by reason.
    pub decisions: Family<ReasonLabels, Counter>,
    /// The p(success) each decision expected.
    pub decision_p: Histogram,
    /// Decisions made by the fallback rules (a model answering NaN).
    pub decision_fallbacks: Counter,
    /// Decisions that explored (the `explore` setting).
    pub decisions_explored: Counter,
    /// Attempt records accepted by `/v1/attempts`, by target.
    pub ingested: Family<TargetLabels, Counter>,
    /// Accepted attempt records the fleet view left out of its health and circuits, by
    /// why: `stale` (it ended before the health window), `fleet_full` (its target is new
    /// and the fleet tracks `max_targets` targets, none found idle: it looks for idle ones
    /// to forget at most once a tenth of the health window).
    pub untracked: Family<ReasonLabels, Counter>,
    /// Ingestion batches refused as invalid (nothing of them written).
    pub rejected: Counter,
    /// Ingestion batches refused because the collector was busy (503).
    pub busy: Counter,
    /// Ingestion batches refused because storage failed under them (503).
    pub storage_failed: Counter,
    /// Accepted records the collector dropped (queue full, I/O errors).
    pub dropped: Counter,
    /// Model reloads by result: `success` a version loaded, `failure` a version refused,
    /// `error` a scan that could not read the models folder.
    pub reloads: Family<ResultLabels, Counter>,
    /// Requests shed with 503 because too many were in flight.
    pub shed: Counter,
    /// Requests answered 503 because they outlasted the request timeout.
    pub timeouts: Counter,
    /// HTTP connections open.
    pub connections_open: Gauge,
    /// Connections closed as soon as they were accepted: `max_connections` were open.
    pub connections_refused: Counter,
    /// Model reloads, how long each took (the folder scanned, new versions validated).
    pub reload_seconds: Histogram,
    /// When a reload last ended without an error reading the folder, Unix seconds.
    pub reload_last_success: Gauge<f64, AtomicU64>,
    /// Records the collector has taken and not yet written (ingestion's backlog).
    pub collector_pending: Gauge,
    /// Accepted records the collector dropped, by cause ([`DROP_CAUSES`]).
    pub dropped_by: Family<ReasonLabels, Counter>,
    /// Decisions made by the fallback rules, by why (`no_model`, `unsupported`, `nan`).
    pub fallbacks_by: Family<ReasonLabels, Counter>,
    /// Targets tracked by the fleet view.
    pub targets: Gauge,
    /// Per target (below the label cap): whether the shared circuit refuses fresh calls.
    pub circuit_open: Family<TargetLabels, Gauge>,
    /// Per target: the concurrency limit the fleet suggests.
    pub concurrency_limit: Family<TargetLabels, Gauge>,
    /// Per target: the suggested hedge delay, ms (-1 while no hedge is worth sending).
    pub hedge_delay_ms: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    /// With a fleet view shared through Redis: whether it is answered from, Redis errors,
    /// targets in it.
    pub shared_fleet: Option<crate::shared::SharedMetrics>,
    max_target_labels: usize,
    target_names: Mutex<HashSet<String>>,
    /// When ingestion last looked for idle targets' label slots to give back.
    label_room_at: Mutex<Option<tokio::time::Instant>>,
    dropped_seen: AtomicU64,
    dropped_by_seen: [AtomicU64; DROP_CAUSES.len()],
    /// The collector's storage: I/O errors, records written, records synced.
    collector_io: [Counter; 3],
    collector_io_seen: [AtomicU64; 3],
    /// The `(model, version)` pairs marked: serving (`None`), or retired at a time and
    /// shown at 0 until [`RETIRED_KEPT`] has passed.
    serving: Mutex<HashMap<(String, String), Option<std::time::Instant>>>,
}

/// How long a retired model version's series stay (its `model_serving` at 0, its
/// `predictions_total`) before they go: long enough for every scrape to see the change,
/// and a service retrained every hour keeps a handful, not one per version ever served.
pub const RETIRED_KEPT: Duration = Duration::from_secs(15 * 60);

impl Metrics {
    /// A registry with every metric, giving at most `max_target_labels` targets their own
    /// label value.
    pub fn new(max_target_labels: usize) -> Self {
        Self::build(max_target_labels, false)
    }

    /// [`Metrics::new`], and the series of a fleet view shared through Redis
    /// (`retrywise_fleet_shared`, `retrywise_fleet_redis_errors`,
    /// `retrywise_fleet_shared_targets`, `retrywise_fleet_foreign_targets`).
    pub fn with_shared_fleet(max_target_labels: usize) -> Self {
        Self::build(max_target_labels, true)
    }

    fn build(max_target_labels: usize, shared: bool) -> Self {
        /// Doublings from 50 µs in the request latency histogram (its top: 26.2 s).
        const LATENCY_BUCKETS: u16 = 20;
        let mut registry = Registry::with_prefix("retrywise");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            // 50 µs to 26 s: past the default request timeout (10 s), so that a slow
            // request's quantiles are computed, not lost in +Inf.
            (|| Histogram::new(exponential_buckets(0.000_05, 2.0, LATENCY_BUCKETS)))
                as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        let model_serving = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "model_serving",
            "1 for each model version serving",
            model_serving.clone(),
        );
        let predictions = Family::<ModelLabels, Counter>::default();
        registry.register(
            "predictions",
            "Probabilities of success computed",
            predictions.clone(),
        );
        let decisions = Family::<ReasonLabels, Counter>::default();
        registry.register("decisions", "Retry decisions by reason", decisions.clone());
        let decision_p = Histogram::new((1..=20).map(|i| f64::from(i) / 20.0));
        registry.register(
            "decision_p_success",
            "The p(success) each retry decision expected",
            decision_p.clone(),
        );
        let decision_fallbacks = Counter::default();
        registry.register(
            "decision_fallbacks",
            "Retry decisions made by the rule-based fallback (the model answered NaN or had barely seen the failure)",
            decision_fallbacks.clone(),
        );
        let decisions_explored = Counter::default();
        registry.register(
            "decisions_explored",
            "Retry decisions that explored: retries where the model judged no wait worth an attempt (the `explore` share)",
            decisions_explored.clone(),
        );
        let ingested = Family::<TargetLabels, Counter>::default();
        registry.register(
            "ingested_attempts",
            "Attempt records accepted, by target",
            ingested.clone(),
        );
        let untracked = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "untracked_attempts",
            "Accepted attempt records the fleet view left out of its health and circuits, by why: stale (ended before the health window), fleet_full (a new target while max_targets are tracked and none was found idle; idle ones are looked for once a tenth of the health window)",
            untracked.clone(),
        );
        let rejected = Counter::default();
        registry.register(
            "rejected_attempt_batches",
            "Ingestion batches refused because a record was invalid (nothing written)",
            rejected.clone(),
        );
        let busy = Counter::default();
        registry.register(
            "busy_attempt_batches",
            "Ingestion batches refused with 503 because the collector had too much to write",
            busy.clone(),
        );
        let storage_failed = Counter::default();
        registry.register(
            "storage_failed_attempt_batches",
            "Ingestion batches refused with 503 because storage failed under them (nothing acknowledged: the client sends them again)",
            storage_failed.clone(),
        );
        let dropped = Counter::default();
        registry.register(
            "dropped_attempts",
            "Attempt records the collector dropped (never those of a batch refused with 503)",
            dropped.clone(),
        );
        let collector_io: [Counter; 3] = Default::default();
        for (name, help, c) in [
            (
                "collector_io_errors",
                "I/O errors of the collector's storage (each may cost a batch, refused)",
                &collector_io[0],
            ),
            (
                "collector_written_records",
                "Attempt records the collector wrote to its segments",
                &collector_io[1],
            ),
            (
                "collector_synced_records",
                "Attempt records the collector made durable by an fsync (written minus synced: at risk until the next sync; one whose sync failed never counts here)",
                &collector_io[2],
            ),
        ] {
            registry.register(name, help, c.clone());
        }
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "model_reloads",
            "Model versions loaded (success) or refused (failure), and scans that could not read the models folder (error)",
            reloads.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "shed_requests",
            "Requests answered 503 because too many were in flight",
            shed.clone(),
        );
        let timeouts = Counter::default();
        registry.register(
            "request_timeouts",
            "Requests answered 503 because they outlasted the request timeout",
            timeouts.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "HTTP connections open (idle keep-alive ones included)",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed as soon as they were accepted, because max_connections were open",
            connections_refused.clone(),
        );
        let reload_seconds = Histogram::new(exponential_buckets(0.000_1, 4.0, 10));
        registry.register(
            "model_reload_duration_seconds",
            "How long each model reload took (the folder scanned, new versions validated)",
            reload_seconds.clone(),
        );
        let reload_last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "model_reload_last_success_timestamp_seconds",
            "When a reload last read the models folder without an error, Unix seconds",
            reload_last_success.clone(),
        );
        let collector_pending = Gauge::default();
        registry.register(
            "collector_pending_records",
            "Ingested records taken by the collector and not yet written (its backlog)",
            collector_pending.clone(),
        );
        let dropped_by = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "dropped_attempts_by_cause",
            "Accepted attempt records the collector dropped, by cause (queue_full, io, closed, invalid)",
            dropped_by.clone(),
        );
        let fallbacks_by = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "decision_fallbacks_by_reason",
            "Retry decisions made by the rule-based fallback, by why: no_model, unsupported (the model saw too few rows like the context), nan",
            fallbacks_by.clone(),
        );
        let targets = Gauge::default();
        registry.register(
            "fleet_targets",
            "Targets tracked by the fleet view",
            targets.clone(),
        );
        let circuit_open = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "fleet_circuit_open",
            "Whether the shared circuit of a target refuses fresh calls (1) or not (0), as of its last ingested batch",
            circuit_open.clone(),
        );
        let concurrency_limit = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "fleet_concurrency_limit",
            "The concurrency limit suggested for a target (Gradient2 over the ingested latencies), as of its last ingested batch",
            concurrency_limit.clone(),
        );
        let hedge_delay_ms = Family::<TargetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "fleet_hedge_delay_ms",
            "The hedge delay suggested for a target, ms (-1: no hedge is worth sending for slowness), as of its last ingested batch",
            hedge_delay_ms.clone(),
        );
        let shared_fleet = shared.then(|| {
            let m = crate::shared::SharedMetrics::default();
            registry.register(
                "fleet_shared",
                "1 while this replica answers from the fleet view shared through Redis, 0 while Redis is unreachable and it answers from its own",
                m.shared.clone(),
            );
            registry.register(
                "fleet_redis_errors",
                "Ticks of the shared fleet view (a write, and every third a read) whose Redis commands failed or timed out",
                m.errors.clone(),
            );
            registry.register(
                "fleet_shared_targets",
                "Targets in the shared fleet view, as last read from Redis",
                m.targets.clone(),
            );
            registry.register(
                "fleet_foreign_targets",
                "Targets a write to or a read from Redis skipped: their keys under the fleet's prefix hold what this service did not write (another type, a name that is not UTF-8), or times it would not have written (later than Redis's clock, a circuit open longer than the longest opening: read as none, and as that opening)",
                m.foreign.clone(),
            );
            registry.register(
                "fleet_read_duration_seconds",
                "How long the last read of the shared fleet view from Redis took (it covers every target written of late; past fleet_timeout_ms the replica answers from its own view)",
                m.read_seconds.clone(),
            );
            registry.register(
                "fleet_unread_targets",
                "Targets written to Redis of late that the last read of the shared view left out (beyond max_targets, the most recently written first): answered from this replica's own evidence",
                m.unread.clone(),
            );
            m
        });
        Self {
            registry,
            shared_fleet,
            requests,
            latency,
            model_serving,
            predictions,
            decisions,
            decision_p,
            decision_fallbacks,
            decisions_explored,
            ingested,
            untracked,
            rejected,
            busy,
            storage_failed,
            dropped,
            reloads,
            shed,
            timeouts,
            connections_open,
            connections_refused,
            reload_seconds,
            reload_last_success,
            collector_pending,
            dropped_by,
            fallbacks_by,
            targets,
            circuit_open,
            concurrency_limit,
            hedge_delay_ms,
            max_target_labels,
            target_names: Mutex::new(HashSet::new()),
            label_room_at: Mutex::new(None),
            dropped_seen: AtomicU64::new(0),
            dropped_by_seen: Default::default(),
            collector_io,
            collector_io_seen: Default::default(),
            serving: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` with the label value for `target`: itself while it holds one of the
    /// `max_target_labels` slots, `other` otherwise (so clients cannot explode the series
    /// count). A target takes a free slot only when `tracked` (the fleet view tracks it):
    /// the slots of targets the fleet no longer tracks are given back
    /// ([`release`](Self::release)), and a target past the fleet's cap would otherwise take
    /// one back and forth. `f` runs under the slots' lock, so that a series it creates or
    /// moves is never one a release has just removed (it would stay, without a slot).
    pub fn with_target_label<R>(
        &self,
        target: &str,
        tracked: bool,
        f: impl FnOnce(TargetLabels) -> R,
    ) -> R {
        let Ok(mut names) = self.target_names.lock() else {
            return f(TargetLabels {
                target: "other".into(),
            });
        };
        // A target named `other` never takes a slot: its series is the overflow's.
        let own = target != "other"
            && (names.contains(target)
                || (tracked
                    && names.len() < self.max_target_labels
                    && names.insert(target.to_owned())));
        f(TargetLabels {
            target: if own { target } else { "other" }.to_owned(),
        })
    }

    /// Whether every label slot is taken.
    pub fn labels_full(&self) -> bool {
        self.target_names
            .lock()
            .map_or(true, |n| n.len() >= self.max_target_labels)
    }

    /// Whether ingestion may look for label slots to give back at `now`: once per `every`
    /// at most (a stream of new targets would otherwise have every batch scan the slots).
    pub fn may_make_label_room(&self, now: tokio::time::Instant, every: Duration) -> bool {
        let Ok(mut last) = self.label_room_at.lock() else {
            return false;
        };
        if last.is_some_and(|at| now.saturating_duration_since(at) < every) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Whether `target` holds a label slot.
    pub fn has_label(&self, target: &str) -> bool {
        self.target_names.lock().is_ok_and(|n| n.contains(target))
    }

    /// Gives back the label slots of the targets `keep` does not keep - those the fleet
    /// view no longer tracks (it forgot them idle to make room) and, while every slot is
    /// taken, those idle there - with their series: a gauge of a target nobody tracks
    /// would show its last value for ever, and the first `max_target_labels` targets ever
    /// seen would keep every slot, the targets after them counted as `other` however busy.
    /// A target that comes back counts afresh; what it had counted moves to `other`, so
    /// that the sum over every series never goes down (and no count since the last scrape
    /// is lost: counts are taken under the same lock). The targets released.
    pub fn release(&self, keep: impl Fn(&str) -> bool) -> usize {
        let Ok(mut names) = self.target_names.lock() else {
            return 0;
        };
        let gone: Vec<String> = names.iter().filter(|n| !keep(n)).cloned().collect();
        let other = TargetLabels {
            target: "other".into(),
        };
        for name in &gone {
            names.remove(name);
            let labels = TargetLabels {
                target: name.clone(),
            };
            let counted = self.ingested.get_or_create(&labels).get();
            if counted > 0 {
                self.ingested.get_or_create(&other).inc_by(counted);
            }
            self.ingested.remove(&labels);
            self.circuit_open.remove(&labels);
            self.concurrency_limit.remove(&labels);
            self.hedge_delay_ms.remove(&labels);
        }
        gone.len()
    }

    /// Brings the collector's storage counters up to its running totals: I/O errors,
    /// records written, records synced.
    pub fn set_collector_io(&self, totals: [u64; 3]) {
        for ((c, seen), total) in self
            .collector_io
            .iter()
            .zip(&self.collector_io_seen)
            .zip(totals)
        {
            advance(c, seen, total);
        }
    }

    /// Brings the dropped counter up to the collector's running total.
    pub fn set_dropped(&self, total: u64) {
        advance(&self.dropped, &self.dropped_seen, total);
    }

    /// Counts a decision made by the fallback rules, in the total and under its `reason`.
    pub fn fallback(&self, reason: &str) {
        self.decision_fallbacks.inc();
        self.fallbacks_by
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Brings the dropped counter of each cause ([`DROP_CAUSES`], in that order) up to the
    /// collector's running total of it.
    pub fn set_dropped_by(&self, totals: [u64; DROP_CAUSES.len()]) {
        for ((cause, total), seen) in DROP_CAUSES.iter().zip(totals).zip(&self.dropped_by_seen) {
            if total > seen.load(Ordering::Relaxed) {
                let counter = self.dropped_by.get_or_create(&ReasonLabels {
                    reason: (*cause).to_owned(),
                });
                advance(&counter, seen, total);
            }
        }
    }

    /// Marks exactly the `(model, version)` pairs `serving` gives (called under the gauge's
    /// lock) as serving (1), and every pair marked before and no longer serving as 0 - for
    /// [`RETIRED_KEPT`], after which its series (and its `predictions_total`) are removed.
    pub fn set_serving(&self, serving: impl FnOnce() -> Vec<(String, u32)>) {
        self.set_serving_at(std::time::Instant::now(), serving);
    }

    /// [`Self::set_serving`] at `now`.
    fn set_serving_at(
        &self,
        now: std::time::Instant,
        serving: impl FnOnce() -> Vec<(String, u32)>,
    ) {
        let Ok(mut marked) = self.serving.lock() else {
            return;
        };
        // Read under the lock: of two reloads racing, the one that marks last reads the
        // set that serves last.
        let live: HashSet<(String, String)> = serving()
            .into_iter()
            .map(|(m, v)| (m, v.to_string()))
            .collect();
        let labels = |(model, version): &(String, String)| ModelLabels {
            model: model.clone(),
            version: version.clone(),
        };
        marked.retain(|pair, retired| {
            if live.contains(pair) {
                return true;
            }
            match retired {
                None => {
                    self.model_serving.get_or_create(&labels(pair)).set(0);
                    *retired = Some(now);
                    true
                }
                Some(at) if now.saturating_duration_since(*at) < RETIRED_KEPT => true,
                Some(_) => {
                    self.model_serving.remove(&labels(pair));
                    self.predictions.remove(&labels(pair));
                    false
                }
            }
        });
        for pair in live {
            self.model_serving.get_or_create(&labels(&pair)).set(1);
            marked.insert(pair, None);
        }
    }

    /// The Prometheus text exposition (format 0.0.4; see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retired version shows 0 for a while, then its series go: a service retrained
    /// every hour does not grow a series per version it ever served.
    #[test]
    fn a_retired_version_s_series_go_after_a_while() {
        let m = Metrics::new(10);
        let t0 = std::time::Instant::now();
        let serving = |t, v: u32| {
            m.set_serving_at(t, || vec![("default".to_owned(), v)]);
            m.predictions
                .get_or_create(&ModelLabels {
                    model: "default".into(),
                    version: v.to_string(),
                })
                .inc();
        };
        let lines = |text: &str, prefix: &str| {
            let mut l: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with(prefix))
                .map(str::to_owned)
                .collect();
            l.sort();
            l
        };
        serving(t0, 1);
        serving(t0 + Duration::from_secs(1), 2);
        let text = m.render();
        assert_eq!(
            lines(&text, "retrywise_model_serving{"),
            [
                "retrywise_model_serving{model=\"default\",version=\"1\"} 0",
                "retrywise_model_serving{model=\"default\",version=\"2\"} 1"
            ]
        );
        // Many versions later, past the time a retired one is kept: only the last ones.
        for v in 3..=30 {
            serving(t0 + RETIRED_KEPT * v, v);
        }
        let text = m.render();
        assert_eq!(
            lines(&text, "retrywise_model_serving{"),
            [
                "retrywise_model_serving{model=\"default\",version=\"29\"} 0",
                "retrywise_model_serving{model=\"default\",version=\"30\"} 1"
            ]
        );
        assert_eq!(
            lines(&text, "retrywise_predictions_total{").len(),
            2,
            "{text}"
        );
        // A version rolled back to serves again.
        serving(t0 + RETIRED_KEPT * 31, 29);
        assert!(
            m.render()
                .contains("retrywise_model_serving{model=\"default\",version=\"29\"} 1")
        );
    }

    /// A request as slow as the request timeout lets it be lands in a bucket of its own,
    /// not in +Inf (the buckets stopped at 1.6 s, below the 10 s timeout).
    #[test]
    fn slow_requests_have_finite_latency_buckets() {
        let m = Metrics::new(10);
        let labels = RouteLabels {
            route: "/v1/attempts".to_owned(),
            status: 202,
        };
        m.latency.get_or_create(&labels).observe(5.0);
        let text = m.render();
        // The cumulative count of the bucket whose bound is `le` (to a relative 1e-9).
        let bucket = |le: f64| {
            text.lines()
                .filter(|l| l.starts_with("retrywise_http_request_duration_seconds_bucket"))
                .find(|l| {
                    l.split("le=\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| ((v - le) / le).abs() < 1e-9)
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(bucket(3.2768).as_deref(), Some("0"), "{text}");
        assert_eq!(bucket(6.5536).as_deref(), Some("1"), "{text}");
        assert!(bucket(26.2144).is_some(), "{text}");
    }
}
