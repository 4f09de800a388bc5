//! The open-loop load driver: logical requests arrive on a schedule (Poisson at the offered
//! rate), whatever earlier requests are doing — a closed loop would slow down exactly when
//! retries pile up, and hide the storm.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use retrywise::model::SuccessModel;
use retrywise::recorder::Recorder;
use retrywise_collect::{SegmentRecorder, WriterConfig};
use tokio::time::Instant;

use crate::SimError;
use crate::policies::{Contender, PolicyContext, Strategy};
use crate::queueing::{Fate, UpstreamModel};
use crate::rng::Rng;
use crate::scenario::{Arrivals, MAX_NUMBER, MIN_DURATION_MS, Scenario};
use crate::transport::{Reply, Transport, deliver};

/// Where the driver sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The scenario's upstream in process, on tokio's paused clock: deterministic for a
    /// seed, minutes of traffic in a fraction of a second.
    Virtual,
    /// Over HTTP on the real clock: to the scenario's upstream served on 127.0.0.1 (a
    /// fresh one per policy), or to `target` if given.
    Http {
        /// Any HTTP endpoint to drive instead of the built-in upstream.
        target: Option<String>,
    },
}

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// The scenario.
    pub scenario: Arc<Scenario>,
    /// Logical requests to offer.
    pub requests: u64,
    /// Offered rate, per second.
    pub rps: f64,
    /// Seeds arrivals, the upstream and the policies.
    pub seed: u64,
    /// Virtual time or HTTP.
    pub mode: Mode,
    /// Record every attempt into this segment directory (one subdirectory per policy).
    pub record: Option<PathBuf>,
    /// Explore retry delays: factors `[lo, hi]` with probability `p`.
    pub explore: Option<(f64, f64, f64)>,
    /// Width of the time-series bins.
    pub bin: Duration,
    /// HTTP mode: connections open at once (requests beyond wait for one).
    pub max_connections: usize,
    /// The success model of the `adaptive` policy.
    pub model: Option<Arc<dyn SuccessModel>>,
}

impl RunOptions {
    /// The scenario's own rate and length, in virtual time, seed 1.
    pub fn new(scenario: Arc<Scenario>) -> Self {
        let requests = match scenario.arrivals {
            Arrivals::Poisson => (scenario.rps * scenario.duration_s).round() as u64,
            Arrivals::Burst => scenario.rps.round() as u64,
        };
        Self {
            rps: scenario.rps,
            requests,
            scenario,
            seed: 1,
            mode: Mode::Virtual,
            record: None,
            explore: None,
            bin: Duration::from_secs(1),
            max_connections: 2048,
            model: None,
        }
    }
}

/// What happened to one logical request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// When it arrived, since the start.
    pub arrival: Duration,
    /// When it ended, since the start.
    pub done: Duration,
    /// Whether it succeeded (a 2xx answer).
    pub ok: bool,
    /// Requests it sent upstream.
    pub attempts: u32,
    /// The last HTTP status it got, if any.
    pub status: Option<u16>,
}

/// Counts per time bin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// The bin width.
    pub bin: Duration,
    /// Logical requests arriving in each bin.
    pub offered: Vec<u64>,
    /// Requests sent upstream in each bin (the load it saw).
    pub attempts: Vec<u64>,
    /// Logical requests that succeeded, by the bin they ended in.
    pub goodput: Vec<u64>,
}

impl Series {
    fn slot(v: &mut Vec<u64>, i: usize) -> &mut u64 {
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        &mut v[i]
    }

    fn index(&self, at: Duration) -> usize {
        (at.as_nanos() / self.bin.as_nanos().max(1)) as usize
    }

    fn add(&mut self, which: fn(&mut Series) -> &mut Vec<u64>, at: Duration) {
        let i = self.index(at);
        *Self::slot(which(self), i) += 1;
    }
}

/// One policy's run.
#[derive(Debug, Clone)]
pub struct PolicyRun {
    /// The policy.
    pub policy: String,
    /// Every logical request, in arrival order.
    pub outcomes: Vec<Outcome>,
    /// Counts over time.
    pub series: Series,
    /// Wall-clock time the run took.
    pub wall: std::time::Duration,
    /// Calls the policy gave up on, by reason (`"budget_exhausted"`, …; the policy's own
    /// count, [`retrywise::policy::PolicyMetrics::stops`]), the reasons that never
    /// happened left out; empty for the oracle. A request whose deadline ran out while
    /// its call waited or ran is not a stop: the driver cancelled it.
    pub stops: std::collections::BTreeMap<String, u64>,
}

struct Shared {
    start: Instant,
    series: Mutex<Series>,
}

impl Shared {
    fn since(&self) -> Duration {
        self.start.elapsed()
    }

    fn count(&self, which: fn(&mut Series) -> &mut Vec<u64>) {
        self.count_at(which, self.since());
    }

    fn count_at(&self, which: fn(&mut Series) -> &mut Vec<u64>, at: Duration) {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(which, at);
    }
}

/// The most logical requests one run sends (its outcomes are kept in memory, 56 bytes
/// each, and a scoreboard runs its policies side by side): the scenario's own limit,
/// [`crate::scenario::MAX_REQUESTS`].
pub const MAX_REQUESTS: u64 = crate::scenario::MAX_REQUESTS as u64;

/// The longest a run's arrivals may last, in seconds of its clock: a week (its goodput and
/// load series keep a bucket per second).
pub const MAX_RUN_S: f64 = 7.0 * 86_400.0;

/// The most requests a run may have in flight at once: each is a task of some 6 KiB
/// until it ends (its deadline at the latest), so this bounds a run's memory to about
/// 1.5 GiB. A burst sends all its requests at once; Poisson arrivals keep about `rps` x
/// the deadline in flight at worst.
pub const MAX_IN_FLIGHT: f64 = 262_144.0;

/// The queue between a recording run and its segment writer, in records. A run that
/// outpaces its writer by more fails with [`SimError::RecordsLost`].
const RECORD_QUEUE: usize = 1 << 20;

/// Runs `spec` under `opts`.
///
/// # Errors
/// The oracle outside virtual time; policy construction errors; recorder or HTTP setup
/// failures.
pub fn run(spec: &Contender, opts: &RunOptions) -> Result<PolicyRun, SimError> {
    check(opts)?;
    let wall = std::time::Instant::now();
    let recorder = match &opts.record {
        Some(dir) => Some(SegmentRecorder::open(
            dir.join(spec.name),
            WriterConfig {
                queue_capacity: RECORD_QUEUE,
                ..WriterConfig::default()
            },
        )?),
        None => None,
    };
    let rt = match &opts.mode {
        Mode::Virtual => tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build(),
        Mode::Http { .. } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    }
    .map_err(|source| SimError::Io {
        op: "start a runtime".into(),
        source,
    })?;
    let result = rt.block_on(drive(
        spec,
        opts,
        recorder
            .as_ref()
            .map(|r| Arc::new(r.clone()) as Arc<dyn Recorder>),
    ));
    if let Some(r) = recorder {
        // (Its error, when records were dropped, is the one below, which names the
        // policy: what was lost is said first.)
        let closed = r.close();
        // A virtual run outpacing its writer thread drops records rather than waiting:
        // data with holes must not pass for a run's whole record.
        let stats = r.stats();
        if stats.dropped_queue_full + stats.dropped_closed + stats.dropped_invalid > 0 {
            return Err(SimError::RecordsLost {
                policy: spec.name.to_owned(),
                queue_full: stats.dropped_queue_full,
                invalid: stats.dropped_invalid,
                closed: stats.dropped_closed,
                capacity: RECORD_QUEUE,
            });
        }
        closed?;
    }
    let (outcomes, series, stops) = result?;
    Ok(PolicyRun {
        policy: spec.name.to_owned(),
        outcomes,
        series,
        wall: wall.elapsed(),
        stops,
    })
}

/// `target` as the URL a run over HTTP sends to: plain HTTP only.
fn target_url(target: &str) -> Result<reqwest::Url, SimError> {
    let url = reqwest::Url::parse(target).map_err(|e| SimError::Option {
        field: "target",
        problem: format!("`{target}` is not a URL: {e}"),
    })?;
    if url.scheme() != "http" {
        return Err(SimError::Option {
            field: "target",
            problem: format!(
                "`{url}`: the simulator speaks plain HTTP (`http://`), not `{}`",
                url.scheme()
            ),
        });
    }
    Ok(url)
}

/// Whether a run under `opts` can be made: what [`run`] checks before it starts (a
/// caller that makes many runs checks them all first).
///
/// # Errors
/// [`SimError::Option`] naming the option or scenario field a run cannot hold.
pub fn check(opts: &RunOptions) -> Result<(), SimError> {
    if opts.requests == 0 {
        return Err(SimError::Option {
            field: "requests",
            problem: "must be at least 1".into(),
        });
    }
    if opts.bin < Duration::from_millis(1) {
        return Err(SimError::Option {
            field: "bin",
            problem: format!(
                "must be at least 1 ms (a bin per nanosecond would not fit in memory), got {:?}",
                opts.bin
            ),
        });
    }
    if !(opts.rps.is_finite() && opts.rps > 0.0) {
        return Err(SimError::Option {
            field: "rps",
            problem: format!("must be positive, got {}", opts.rps),
        });
    }
    if opts.requests > MAX_REQUESTS {
        return Err(SimError::Option {
            field: "requests",
            problem: format!(
                "a run of {} requests is more than a run holds ({MAX_REQUESTS})",
                opts.requests
            ),
        });
    }
    let arrivals_s = opts.requests as f64 / opts.rps;
    if arrivals_s > MAX_RUN_S {
        return Err(SimError::Option {
            field: "rps",
            problem: format!(
                "{} requests at {}/s would arrive over {arrivals_s:.0} s; a run lasts at most {MAX_RUN_S} s (a week)",
                opts.requests, opts.rps
            ),
        });
    }
    if let Some(dir) = &opts.record
        && dir.exists()
        && !dir.is_dir()
    {
        return Err(SimError::Option {
            field: "record",
            problem: format!("{} is a file, not a folder", dir.display()),
        });
    }
    if let Mode::Http {
        target: Some(target),
    } = &opts.mode
    {
        target_url(target)?;
    }
    // A scenario's fields are public (the command line sets some after parsing): what the
    // run turns into durations and indexes is checked again here.
    let sc = &opts.scenario;
    for (field, ms) in [
        ("scenario.deadline_ms", sc.deadline_ms),
        ("scenario.attempt_timeout_ms", sc.attempt_timeout_ms),
    ] {
        if !(MIN_DURATION_MS..=MAX_NUMBER).contains(&ms) {
            return Err(SimError::Option {
                field,
                problem: format!("must be within [{MIN_DURATION_MS}, {MAX_NUMBER}] ms, got {ms}"),
            });
        }
    }
    if sc.upstream.replicas == 0 || sc.upstream.workers == 0 {
        return Err(SimError::Option {
            field: "scenario.upstream",
            problem: format!(
                "needs at least one replica of one worker, got {} of {}",
                sc.upstream.replicas, sc.upstream.workers
            ),
        });
    }
    let deadline_s = opts.scenario.deadline_ms / 1e3;
    let (in_flight, how) = match opts.scenario.arrivals {
        Arrivals::Burst => (opts.requests as f64, "a burst sends them all at once"),
        Arrivals::Poisson => (
            (opts.rps * deadline_s).min(opts.requests as f64),
            "rps x the deadline",
        ),
    };
    if in_flight > MAX_IN_FLIGHT {
        return Err(SimError::Option {
            field: "rps",
            problem: format!(
                "{in_flight:.0} requests would be in flight at once ({how}: {} a second, a {deadline_s} s deadline, {} requests); a run holds at most {MAX_IN_FLIGHT} (about 6 KiB each)",
                opts.rps, opts.requests
            ),
        });
    }
    Ok(())
}

/// The connections a run over HTTP may hold: `wanted`, or fewer where the process's
/// open-files limit would run out first - a socket that cannot be opened would be scored
/// as the upstream refusing it. Each connection takes one descriptor, two with the
/// upstream `in_process`; a reserve is left for everything else.
fn connections_within_limit(wanted: usize, in_process: bool) -> usize {
    const RESERVE: u64 = 128;
    let wanted = wanted.max(1);
    let Ok((soft, _)) = rlimit::Resource::NOFILE.get() else {
        return wanted;
    };
    let per = if in_process { 2 } else { 1 };
    let room = usize::try_from(soft.saturating_sub(RESERVE) / per)
        .unwrap_or(usize::MAX)
        .max(1);
    if room < wanted {
        tracing::warn!(
            wanted,
            room,
            open_files = soft,
            "the open-files limit holds fewer connections than asked: requests beyond wait for one (raise `ulimit -n`)"
        );
    }
    wanted.min(room)
}

async fn drive(
    spec: &Contender,
    opts: &RunOptions,
    recorder: Option<Arc<dyn Recorder>>,
) -> Result<
    (
        Vec<Outcome>,
        Series,
        std::collections::BTreeMap<String, u64>,
    ),
    SimError,
> {
    let scenario = &opts.scenario;
    let ctx = PolicyContext {
        target: Arc::from(scenario.name.as_str()),
        attempt_timeout: Duration::from_secs_f64(scenario.attempt_timeout_ms / 1e3),
        deadline: Duration::from_secs_f64(scenario.deadline_ms / 1e3),
        seed: opts.seed,
        recorder,
        explore: opts.explore,
        model: opts.model.clone(),
    };
    let strategy = Arc::new((spec.build)(&ctx)?);
    let upstream = UpstreamModel::new(Arc::clone(scenario), opts.seed);
    let (transport, _server) = match &opts.mode {
        Mode::Virtual => (Transport::Virtual(upstream.clone()), None),
        Mode::Http { target } => {
            if matches!(*strategy, Strategy::Oracle) {
                return Err(SimError::VirtualOnly(spec.name.to_owned()));
            }
            let (url, server) = match target {
                Some(t) => (t.clone(), None),
                None => {
                    let server = crate::server::spawn(upstream.clone(), "127.0.0.1:0").await?;
                    (format!("http://{}/", server.addr), Some(server))
                }
            };
            let url = target_url(&url)?;
            // A load tool's requests go where they are aimed: not through a proxy the
            // environment names (`HTTP_PROXY` would take the loopback upstream's traffic
            // elsewhere and reshape its faults), and a 3xx is an answer, not a hop the
            // attempt count would miss.
            let client = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(opts.max_connections)
                .tcp_nodelay(true)
                .build()
                .map_err(|e| SimError::Option {
                    field: "target",
                    problem: e.to_string(),
                })?;
            let connections = connections_within_limit(opts.max_connections, server.is_some());
            let permits = Arc::new(tokio::sync::Semaphore::new(connections));
            (
                Transport::Http {
                    client,
                    url,
                    permits,
                },
                server,
            )
        }
    };
    let shared = Arc::new(Shared {
        start: Instant::now(),
        series: Mutex::new(Series {
            bin: opts.bin,
            ..Series::default()
        }),
    });
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(opts.requests as usize)));
    let mut arrivals = Rng::new(opts.seed);
    let mut at = 0.0f64;
    // Tasks run detached, so each is freed as it finishes; every task holds a sender, and
    // the channel closes when the last one is done.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    // Over HTTP on the real clock, a request arrives when it was scheduled to, however
    // late a busy runtime starts it: its latency and its deadline count from then (no
    // coordinated omission). In virtual time it starts when scheduled, on the timer's
    // whole millisecond. (The policy's own deadline counts from when its call starts: a
    // request started late may be cut off by the driver's before the policy's runs out,
    // as a caller's deadline cuts off a policy that started late.)
    let on_schedule = matches!(opts.mode, Mode::Http { .. });
    for i in 0..opts.requests {
        if scenario.arrivals == Arrivals::Poisson {
            at += arrivals.exponential(opts.rps);
            tokio::time::sleep_until(shared.start + Duration::from_secs_f64(at)).await;
        }
        let scheduled = shared.start + Duration::from_secs_f64(at);
        let (strategy, transport, shared, outcomes, upstream) = (
            Arc::clone(&strategy),
            transport.clone(),
            Arc::clone(&shared),
            Arc::clone(&outcomes),
            upstream.clone(),
        );
        let deadline = ctx.deadline;
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let start = if on_schedule {
                scheduled
            } else {
                Instant::now()
            };
            let arrival = start.saturating_duration_since(shared.start);
            shared.count_at(|s| &mut s.offered, arrival);
            let attempts = AtomicU32::new(0);
            let last = match &*strategy {
                Strategy::Policy(p) => {
                    let call = p.call(|_| {
                        transport.send_counted(i, || {
                            attempts.fetch_add(1, Ordering::Relaxed);
                            shared.count(|s| &mut s.attempts);
                        })
                    });
                    match tokio::time::timeout_at(start + deadline, call).await {
                        Ok(Ok(reply)) => Some(reply),
                        _ => None,
                    }
                }
                Strategy::Oracle => oracle(&upstream, i, &shared, &attempts, deadline).await,
            };
            let ok = last
                .as_ref()
                .is_some_and(|r| (200..300).contains(&r.status));
            if ok {
                shared.count(|s| &mut s.goodput);
            }
            let outcome = Outcome {
                arrival,
                done: shared.since(),
                ok,
                attempts: attempts.load(Ordering::Relaxed),
                status: last.map(|r| r.status),
            };
            outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((i, outcome));
        });
    }
    drop(alive);
    let _ = all_done.recv().await;
    let mut outcomes: Vec<(u64, Outcome)> =
        std::mem::take(&mut *outcomes.lock().unwrap_or_else(|p| p.into_inner()));
    outcomes.sort_by_key(|(i, _)| *i);
    // A request whose task panicked left no outcome (tokio keeps the panic to itself):
    // the run fails rather than scoring the rest as if they were all.
    if outcomes.len() as u64 != opts.requests {
        let first = outcomes
            .iter()
            .enumerate()
            .find(|(k, (i, _))| *k as u64 != *i)
            .map_or(outcomes.len() as u64, |(k, _)| k as u64);
        return Err(SimError::OutcomesLost {
            lost: opts.requests - outcomes.len() as u64,
            requests: opts.requests,
            first,
        });
    }
    let series = shared
        .series
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let stops = match &*strategy {
        Strategy::Policy(p) => p
            .metrics()
            .stops
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| (reason.to_owned(), n))
            .collect(),
        Strategy::Oracle => Default::default(),
    };
    Ok((
        outcomes.into_iter().map(|(_, o)| o).collect(),
        series,
        stops,
    ))
}

/// The oracle: looks at what an attempt would do before sending it, sends only one that
/// succeeds within the deadline, and otherwise waits for the upstream to change.
async fn oracle(
    upstream: &UpstreamModel,
    request: u64,
    shared: &Shared,
    attempts: &AtomicU32,
    deadline: Duration,
) -> Option<Reply> {
    let end = Instant::now() + deadline;
    loop {
        let now = Instant::now();
        if now >= end {
            return None;
        }
        let remaining = end - now;
        // Several looks at once: a random failure is a draw, not a state.
        for _ in 0..16 {
            let accept = |f: &Fate| f.is_success() && f.after() <= remaining;
            if let Some(fate) = upstream.serve_if(now, Some(request), accept) {
                attempts.fetch_add(1, Ordering::Relaxed);
                shared.count(|s| &mut s.attempts);
                return deliver(fate).await.ok();
            }
        }
        // The upstream refuses for now: wait for its next change (or a little).
        let t = now
            .saturating_duration_since(upstream.origin())
            .as_secs_f64();
        let step = upstream
            .scenario()
            .next_change(t)
            .map_or(Duration::from_millis(50), |c| {
                Duration::from_secs_f64((c - t).max(0.001))
            })
            .min(Duration::from_millis(50));
        tokio::time::sleep(step.min(remaining)).await;
    }
}
