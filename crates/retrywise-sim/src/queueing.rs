//! The upstream as a queueing model: what happens to each request sent to a scenario's upstream.
//!
//! The same model serves virtual time (in process, on tokio's paused clock) and HTTP (in
//! the upstream server, on the real clock): it only reads `tokio::time::Instant`.
//!
//! Each replica is a queue in front of `workers` workers (an M/G/c queue). A request takes
//! the first free worker, waiting in line if there is none; when the line is full it is
//! shed with a 503 at once. Service times are lognormal, with rare stragglers. A worker
//! keeps serving a request whose caller has timed out and left — the wasted work that
//! makes overload self-sustaining. Before the queue, a token bucket may answer 429 with
//! Retry-After, and the scenario's phases may refuse every connection (an outage) or
//! change latencies and error rates.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::rng::{Rng, unit_of};
use crate::scenario::{Behaviour, Scenario};

/// What will happen to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// An HTTP answer after `after`.
    Answer {
        /// The status.
        status: u16,
        /// Retry-After, seconds.
        retry_after_s: Option<u32>,
        /// When the answer comes.
        after: Duration,
    },
    /// The connection breaks after `after`.
    Reset {
        /// When.
        after: Duration,
    },
    /// The connection is refused at once.
    Connect,
    /// No answer for `after` (longer than any client waits).
    Hang {
        /// How long the worker is held.
        after: Duration,
    },
}

impl Fate {
    /// Whether this is a successful answer.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            Fate::Answer {
                status: 200..=299,
                ..
            }
        )
    }

    /// How long until the caller hears of it.
    pub fn after(&self) -> Duration {
        match *self {
            Fate::Answer { after, .. } | Fate::Reset { after } | Fate::Hang { after } => after,
            Fate::Connect => Duration::ZERO,
        }
    }
}

#[derive(Debug, Default)]
struct Replica {
    /// When each worker is next free, nanoseconds since the origin.
    free_at: BinaryHeap<Reverse<u64>>,
    /// When each queued request will start.
    waiting: BinaryHeap<Reverse<u64>>,
}

#[derive(Debug)]
struct State {
    rng: Rng,
    next_replica: usize,
    replicas: Vec<Replica>,
    tokens: f64,
    tokens_at: u64,
    last_arrival: Option<u64>,
    counts: Counts,
}

/// What the upstream has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests received.
    pub requests: u64,
    /// Requests it refused at once (outage), shed (full queue, rate limit, conflict).
    pub refused: u64,
    /// Requests it answered with success.
    pub succeeded: u64,
}

/// The upstream of a scenario. Cloning shares it.
#[derive(Debug, Clone)]
pub struct UpstreamModel {
    scenario: Arc<Scenario>,
    origin: Instant,
    /// Keys the per-request draws.
    salt: u64,
    state: Arc<Mutex<State>>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ms_to_nanos(ms: f64) -> u64 {
    (ms.max(0.0) * 1e6) as u64
}

impl UpstreamModel {
    /// The upstream of `scenario`, starting now, drawing from `seed`.
    pub fn new(scenario: Arc<Scenario>, seed: u64) -> Self {
        let burst = scenario.upstream.rate_limit.map_or(0.0, |r| r.burst);
        let replicas = (0..scenario.upstream.replicas)
            .map(|_| Replica::default())
            .collect();
        Self {
            origin: Instant::now(),
            salt: seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ 0x400,
            state: Arc::new(Mutex::new(State {
                rng: Rng::new(seed ^ 0x5EED_0F0B_57EA_4000),
                next_replica: 0,
                replicas,
                tokens: burst,
                tokens_at: 0,
                last_arrival: None,
                counts: Counts::default(),
            })),
            scenario,
        }
    }

    /// The scenario.
    pub fn scenario(&self) -> &Arc<Scenario> {
        &self.scenario
    }

    /// When the upstream started.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// What the upstream has seen so far.
    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receives a request at `now` and decides its fate. `request` names the logical
    /// request the attempt belongs to, when known: an invalid request (`http_400`) is
    /// answered 400 on every attempt, as a real one would be; without a name, each attempt
    /// draws anew.
    pub fn serve(&self, now: Instant, request: Option<u64>) -> Fate {
        self.serve_if(now, request, |_| true)
            .unwrap_or(Fate::Connect)
    }

    /// Decides the fate of a request arriving at `now`, but lets the request in (takes a
    /// worker, a token, a place in line) only if `accept` approves the fate: the oracle
    /// looks before it sends. Returns `None` when it was not accepted; the next look then
    /// goes to the next replica, as the oracle would send elsewhere (else a replica that
    /// refuses every call would hold every look of the round-robin).
    pub fn serve_if(
        &self,
        now: Instant,
        request: Option<u64>,
        accept: impl Fn(&Fate) -> bool,
    ) -> Option<Fate> {
        let t = nanos(now.saturating_duration_since(self.origin));
        let t_s = t as f64 / 1e9;
        let mut st = self.lock();
        let st = &mut *st;
        let replica = st.next_replica % st.replicas.len().max(1);
        let b = self.scenario.behaviour(replica, t_s);
        let fate = self.decide(st, replica, &b, t, request);
        if !accept(&fate) {
            st.next_replica = st.next_replica.wrapping_add(1);
            return None;
        }
        st.next_replica = st.next_replica.wrapping_add(1);
        st.counts.requests += 1;
        self.commit(st, replica, &b, t, &fate);
        Some(fate)
    }

    /// Draws the fate without changing the upstream, except for its random draws.
    fn decide(
        &self,
        st: &mut State,
        replica: usize,
        b: &Behaviour,
        t: u64,
        request: Option<u64>,
    ) -> Fate {
        let u = &self.scenario.upstream;
        if b.outage {
            return Fate::Connect;
        }
        if let Some(w) = u.conflict_window_ms
            && st
                .last_arrival
                .is_some_and(|last| t.saturating_sub(last) < ms_to_nanos(w))
        {
            return Fate::Answer {
                status: 503,
                retry_after_s: None,
                after: Duration::ZERO,
            };
        }
        if let Some(rl) = b.rate_limit {
            let tokens =
                (st.tokens + (t.saturating_sub(st.tokens_at)) as f64 / 1e9 * rl.rps).min(rl.burst);
            if tokens < 1.0 {
                let wait = ((1.0 - tokens) / rl.rps).ceil().max(1.0) as u32;
                return Fate::Answer {
                    status: 429,
                    retry_after_s: Some(wait),
                    after: Duration::ZERO,
                };
            }
        }
        let e = &b.errors;
        // Invalid requests are a property of the request, not of the attempt.
        let invalid = request.map(|id| unit_of(self.salt ^ id) < e.http_400);
        let r = st.rng.unit();
        let mut acc = 0.0;
        let mut pick = |p: f64| {
            acc += p;
            r < acc
        };
        let kind = if invalid == Some(true) {
            Kind::Status(400, None)
        } else if pick(e.connect) {
            return Fate::Connect;
        } else if pick(e.reset) {
            Kind::Reset
        } else if pick(e.timeout) {
            Kind::Hang
        } else if pick(e.http_500) {
            Kind::Status(500, None)
        } else if pick(e.http_503) {
            Kind::Status(503, e.retry_after_s)
        } else if invalid.is_none() && pick(e.http_400) {
            Kind::Status(400, None)
        } else {
            Kind::Status(200, None)
        };
        let l = &b.latency;
        let mut service = st.rng.lognormal(l.median_ms, l.sigma);
        if l.straggler_p > 0.0 && st.rng.unit() < l.straggler_p {
            service *= l.straggler_x;
        }
        if let Kind::Hang = kind {
            service = u.hang_ms;
        }
        // Where this request would stand in its replica's line.
        let rep = &mut st.replicas[replica];
        while rep.waiting.peek().is_some_and(|Reverse(s)| *s <= t) {
            rep.waiting.pop();
        }
        resize(rep, b.workers as usize, t);
        let free = rep.free_at.peek().map_or(t, |Reverse(f)| *f);
        // Only a request that would wait for a worker stands in line (a queue of 0: none
        // waits, and a free worker still serves).
        if free > t && rep.waiting.len() >= u.queue as usize {
            return Fate::Answer {
                status: 503,
                retry_after_s: None,
                after: Duration::ZERO,
            };
        }
        let start = free.max(t);
        // Saturating: a service time beyond 584 years (ms_to_nanos saturates) is forever;
        // at least a nanosecond, since an answer after no time at all is a refusal at the
        // door (`commit`).
        let service_ns = ms_to_nanos(service).max(1);
        let finish = start.saturating_add(service_ns);
        let after = Duration::from_nanos(finish.saturating_sub(t));
        match kind {
            Kind::Reset => Fate::Reset {
                after: Duration::from_nanos((start - t).saturating_add((service_ns / 2).max(1))),
            },
            Kind::Hang => Fate::Hang { after },
            Kind::Status(status, retry_after_s) => Fate::Answer {
                status,
                retry_after_s,
                after,
            },
        }
    }

    /// Lets the request in: takes its worker, token and place in line.
    fn commit(&self, st: &mut State, replica: usize, b: &Behaviour, t: u64, fate: &Fate) {
        st.last_arrival = Some(t);
        if let Some(rl) = b.rate_limit {
            st.tokens =
                (st.tokens + (t.saturating_sub(st.tokens_at)) as f64 / 1e9 * rl.rps).min(rl.burst);
            st.tokens_at = t;
        }
        // Refused at the door (outage, full line, rate limit, conflict): no worker, no token.
        if matches!(fate, Fate::Connect) || fate.after().is_zero() {
            st.counts.refused += 1;
            return;
        }
        if b.rate_limit.is_some() {
            st.tokens -= 1.0;
        }
        if fate.is_success() {
            st.counts.succeeded += 1;
        }
        let rep = &mut st.replicas[replica];
        if let Some(Reverse(free)) = rep.free_at.pop() {
            let start = free.max(t);
            let busy = match *fate {
                Fate::Reset { after } => {
                    // The worker served until the reset.
                    t.saturating_add(nanos(after))
                }
                _ => t.saturating_add(nanos(fate.after())),
            };
            rep.free_at.push(Reverse(busy.max(start)));
            if start > t {
                rep.waiting.push(Reverse(start));
            }
        }
    }
}

enum Kind {
    Reset,
    Hang,
    Status(u16, Option<u32>),
}

/// Makes the replica have `workers` workers (phases may change the count).
fn resize(rep: &mut Replica, workers: usize, t: u64) {
    while rep.free_at.len() < workers {
        rep.free_at.push(Reverse(t));
    }
    if rep.free_at.len() > workers {
        // Keep the workers that are free soonest.
        let mut all: Vec<u64> = rep.free_at.drain().map(|Reverse(f)| f).collect();
        all.sort_unstable();
        all.truncate(workers);
        rep.free_at = all.into_iter().map(Reverse).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(extra: &str) -> Arc<Scenario> {
        let text = format!(
            "name = \"t\"\nrps = 10\nduration_s = 10\n[upstream]\nworkers = 2\nqueue = 2\n{extra}\n[upstream.latency]\nmedian_ms = 100\n"
        );
        Arc::new(Scenario::parse(&text, "t").unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_line_sheds_with_503() {
        let u = UpstreamModel::new(scenario(""), 1);
        let now = Instant::now();
        let fates: Vec<Fate> = (0..6).map(|_| u.serve(now, None)).collect();
        let after: Vec<u64> = fates.iter().map(|f| f.after().as_millis() as u64).collect();
        // Two workers at once, two waiting one service time, then the line is full.
        assert_eq!(after, [100, 100, 200, 200, 0, 0]);
        assert!(matches!(fates[4], Fate::Answer { status: 503, .. }));
        assert_eq!(u.counts().refused, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_queue_free_workers_still_serve() {
        let text = "name = \"t\"\nrps = 10\nduration_s = 10\n[upstream]\nworkers = 2\nqueue = 0\n[upstream.latency]\nmedian_ms = 100\n";
        let u = UpstreamModel::new(Arc::new(Scenario::parse(text, "t").unwrap()), 1);
        let now = Instant::now();
        let after: Vec<u64> = (0..4)
            .map(|_| u.serve(now, None).after().as_millis() as u64)
            .collect();
        assert_eq!(after, [100, 100, 0, 0]);
        assert_eq!((u.counts().succeeded, u.counts().refused), (2, 2));
        // A service time that rounds to nothing is still a service, not a refusal.
        let text = text.replace("median_ms = 100", "median_ms = 1e-300");
        let u = UpstreamModel::new(Arc::new(Scenario::parse(&text, "t").unwrap()), 1);
        let fate = u.serve(now, None);
        assert!(
            fate.is_success() && fate.after() > Duration::ZERO,
            "{fate:?}"
        );
        assert_eq!((u.counts().succeeded, u.counts().refused), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn workers_keep_serving_requests_whose_callers_left() {
        let u = UpstreamModel::new(scenario(""), 1);
        let now = Instant::now();
        for _ in 0..4 {
            u.serve(now, None);
        }
        // Callers gave up at once; the line only clears as the work is done.
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(
            u.serve(Instant::now(), None).after(),
            Duration::from_millis(150)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_answers_429_with_retry_after() {
        let u = UpstreamModel::new(scenario("[upstream.rate_limit]\nrps = 1\nburst = 2"), 1);
        let now = Instant::now();
        assert!(u.serve(now, None).is_success());
        assert!(u.serve(now, None).is_success());
        assert_eq!(
            u.serve(now, None),
            Fate::Answer {
                status: 429,
                retry_after_s: Some(1),
                after: Duration::ZERO
            }
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            u.serve(Instant::now(), None).is_success(),
            "a token came back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_oracle_can_look_without_sending() {
        let u = UpstreamModel::new(scenario(""), 1);
        let now = Instant::now();
        assert_eq!(u.serve_if(now, None, |_| false), None);
        assert_eq!(u.counts().requests, 0);
        assert!(u.serve_if(now, None, Fate::is_success).is_some());
        assert_eq!(u.counts().requests, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_oracle_looks_past_a_replica_that_refuses() {
        let text = "name = \"t\"\nrps = 10\nduration_s = 10\n[upstream]\nreplicas = 2\nworkers = 2\n\
            [upstream.latency]\nmedian_ms = 10\n[[replica]]\n[replica.errors]\nconnect = 1.0\n\
            [[replica]]\n";
        let u = UpstreamModel::new(Arc::new(Scenario::parse(text, "t").unwrap()), 1);
        let now = Instant::now();
        // Replica 0 refuses: not accepted, and the next look reaches replica 1.
        assert_eq!(u.serve_if(now, None, Fate::is_success), None);
        assert!(u.serve_if(now, None, Fate::is_success).is_some());
        // The round-robin goes on from there: replica 0 again, for a call sent anyway.
        assert_eq!(u.serve(now, None), Fate::Connect);
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_request_is_invalid_on_every_attempt() {
        let u = UpstreamModel::new(
            scenario("[upstream.errors]\nhttp_400 = 0.3\nhttp_503 = 0.2"),
            3,
        );
        let mut invalid = 0;
        for id in 0..1000u64 {
            let first = u.serve(Instant::now(), Some(id));
            let is_400 = |f: &Fate| matches!(f, Fate::Answer { status: 400, .. });
            for _ in 0..3 {
                tokio::time::advance(Duration::from_millis(300)).await;
                assert_eq!(
                    is_400(&u.serve(Instant::now(), Some(id))),
                    is_400(&first),
                    "request {id}"
                );
            }
            invalid += u32::from(is_400(&first));
        }
        assert!(
            (250..350).contains(&invalid),
            "{invalid} of 1000 invalid, expected ~300"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_same_fates() {
        let s = scenario("[upstream.errors]\nhttp_503 = 0.3\nreset = 0.1");
        let (a, b) = (
            UpstreamModel::new(Arc::clone(&s), 9),
            UpstreamModel::new(s, 9),
        );
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(7)).await;
            assert_eq!(a.serve(Instant::now(), None), b.serve(Instant::now(), None));
        }
    }
}
