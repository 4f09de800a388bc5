//! `retrywise-sim demo` (and `retrywise demo`): every mechanism of the policy crate at work against an in-process
//! flaky upstream, on tokio's virtual clock, so the whole tour takes milliseconds and
//! prints the same thing every time for the same seed, but for the wall-clock start times
//! (`started_at_ms`) in the attempt records it shows.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use retrywise::attempt::{AttemptRecord, ErrorKind, HttpClassifier, HttpResponse, Outcome};
use retrywise::breaker::{BreakerEvent, CircuitBreaker, SlidingWindow};
use retrywise::budget::{RatioBudget, TokenBucket};
use retrywise::bulkhead::{Bulkhead, BulkheadRegistry, PoolBulkhead, WhenFull};
use retrywise::hedge::{Hedge, HedgeDelay};
use retrywise::policy::{Attempt, Policy};
use retrywise::recorder::MemoryRecorder;
use retrywise::retry::{
    AttemptTimeout, Backoff, Decision, Jitter, RetryDecider, RetryRules, RuleBasedAdaptive,
};
use tokio::time::Instant;

/// Options of `retrywise-sim demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Seed of the jitter and of the simulated upstream.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

const MS: Duration = Duration::from_millis(1);

/// An upstream's reply, as an HTTP client would see it.
#[derive(Debug, Clone, Copy)]
struct Reply {
    status: u16,
    retry_after: Option<&'static str>,
}

impl HttpResponse for Reply {
    fn status_code(&self) -> u16 {
        self.status
    }

    fn retry_after_header(&self) -> Option<&str> {
        self.retry_after
    }
}

/// What the simulated upstream does with one request.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Answer {
        status: u16,
        retry_after: Option<&'static str>,
        after: Duration,
    },
    Reset {
        after: Duration,
    },
}

use Behaviour::{Answer, Reset};

fn ok(after_ms: u64) -> Behaviour {
    Answer {
        status: 200,
        retry_after: None,
        after: Duration::from_millis(after_ms),
    }
}

fn status(status: u16, after_ms: u64) -> Behaviour {
    Answer {
        status,
        retry_after: None,
        after: Duration::from_millis(after_ms),
    }
}

/// Serves a request per `behaviour`, counting requests.
async fn serve(calls: &AtomicU32, behaviour: Behaviour) -> Result<Reply, io::Error> {
    calls.fetch_add(1, Ordering::Relaxed);
    match behaviour {
        Answer {
            status,
            retry_after,
            after,
        } => {
            tokio::time::sleep(after).await;
            Ok(Reply {
                status,
                retry_after,
            })
        }
        Reset { after } => {
            tokio::time::sleep(after).await;
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            ))
        }
    }
}

/// A small deterministic generator for the simulated upstream (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn heading(title: &str) {
    outln!("\n== {title}");
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn describe(r: &AttemptRecord) -> String {
    let outcome = match (r.outcome, r.outcome_status, r.outcome_error) {
        (Outcome::Success, Some(s), _) => format!("{s} ok"),
        (Outcome::Success, None, _) => "ok".to_owned(),
        (Outcome::Cancelled, ..) => "cancelled (another request answered first)".to_owned(),
        (o, Some(s), _) => format!(
            "{s} ({})",
            if o == Outcome::Permanent {
                "permanent"
            } else {
                "retryable"
            }
        ),
        (_, None, Some(k)) => format!("{k} (retryable)"),
        (o, None, None) => format!("{o:?}"),
    };
    format!(
        "attempt {}{} after waiting {:>7} (elapsed {:>7}): {} in {}",
        r.context.attempt,
        if r.hedge > 0 {
            format!(" hedge {}", r.hedge)
        } else {
            String::new()
        },
        ms(r.context.delay),
        ms(r.context.elapsed),
        outcome,
        ms(r.outcome_latency)
    )
}

/// Runs the demo.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .context("cannot start the demo's runtime")?;
    rt.block_on(tour(args.seed))
}

async fn tour(seed: u64) -> anyhow::Result<()> {
    outln!("retrywise demo — virtual time, seed {seed}");
    retries(seed).await?;
    seed_adaptive();
    budgets(seed).await?;
    breaker().await?;
    bulkheads().await?;
    hedging(seed).await?;
    composition(seed).await?;
    outln!(
        "\nEvery attempt above was recorded as an AttemptRecord — the training data of the model."
    );
    Ok(())
}

async fn retries(seed: u64) -> anyhow::Result<()> {
    heading("retry: exponential backoff (100 ms ×2, cap 2 s) with full jitter; 503, 503, then 200");
    let rec = Arc::new(MemoryRecorder::new(64));
    let policy = Policy::builder("inventory")
        .retry(
            RetryRules::builder()
                .max_attempts(4)
                .backoff(Backoff::exponential(100 * MS, 2.0, Duration::from_secs(2))?)
                .jitter(Jitter::Full)
                .seed(seed)
                .build()?,
        )
        .classifier(HttpClassifier)
        .recorder(rec.clone())
        .build()?;
    let calls = AtomicU32::new(0);
    let script = [status(503, 20), status(503, 20), ok(20)];
    let reply = policy
        .call(|a: Attempt| serve(&calls, script[(a.number as usize - 1).min(2)]))
        .await?;
    for r in rec.take() {
        outln!("  {}", describe(&r));
    }
    outln!(
        "  -> {} after {} requests",
        reply.status,
        calls.load(Ordering::Relaxed)
    );

    heading("retry: Retry-After is honoured (429 with `Retry-After: 2`)");
    let calls = AtomicU32::new(0);
    let script = [
        Answer {
            status: 429,
            retry_after: Some("2"),
            after: 5 * MS,
        },
        ok(5),
    ];
    let t0 = Instant::now();
    let reply = policy
        .call(|a: Attempt| serve(&calls, script[(a.number as usize - 1).min(1)]))
        .await?;
    for r in rec.take() {
        outln!("  {}", describe(&r));
    }
    outln!(
        "  -> {} after {} (the server asked for 2 s; the backoff alone would wait ≤ 100 ms)",
        reply.status,
        ms(t0.elapsed())
    );

    heading("retry: permanent errors are never retried (404)");
    let calls = AtomicU32::new(0);
    let reply = policy.call(|_| serve(&calls, status(404, 5))).await?;
    for r in rec.take() {
        outln!("  {}", describe(&r));
    }
    outln!(
        "  -> {} after {} request; stops: {:?}",
        reply.status,
        calls.load(Ordering::Relaxed),
        nonzero(&policy.metrics().stops)
    );

    heading(
        "retry: per-attempt timeouts grow as in the design sketch (5 s × attempt); the upstream needs 7 s",
    );
    let slow = Policy::builder("reports")
        .retry(RetryRules::conservative())
        .classifier(HttpClassifier)
        .recorder(rec.clone())
        .build()?;
    let calls = AtomicU32::new(0);
    let reply = slow.call(|_| serve(&calls, ok(7000))).await?;
    for r in rec.take() {
        outln!("  {}", describe(&r));
    }
    outln!(
        "  -> {}: attempt 1 timed out at 5 s, attempt 2 had 10 s",
        reply.status
    );
    Ok(())
}

fn nonzero(stops: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
    stops.iter().copied().filter(|(_, n)| *n > 0).collect()
}

fn seed_adaptive() {
    heading(
        "the design sketch's adaptive delay: 100 ms × 2^n; timeouts ×2, rate limits ×5, connect errors ÷2; cap 30 s",
    );
    let decider = RuleBasedAdaptive::new();
    outln!(
        "  {:<10} {:>10} {:>10} {:>10}",
        "after",
        "1st retry",
        "2nd retry",
        "3rd retry"
    );
    for kind in [
        ErrorKind::Http503,
        ErrorKind::Timeout,
        ErrorKind::Http429,
        ErrorKind::Connect,
    ] {
        let mut ctx = retrywise::attempt::AttemptContext::first("api");
        ctx.error = Some(kind);
        let cells: Vec<String> = (2..=4)
            .map(|attempt| {
                ctx.attempt = attempt;
                match decider.decide(&ctx) {
                    Decision::Retry(d) => ms(d),
                    Decision::Stop(r) => r.to_string(),
                }
            })
            .collect();
        outln!(
            "  {:<10} {:>10} {:>10} {:>10}",
            kind.as_str(),
            cells[0],
            cells[1],
            cells[2]
        );
    }
}

/// Open-loop load (a call every `every`, whatever the previous ones do) against an
/// upstream that fails everything before `outage_ends`; returns requests per call.
async fn storm(
    policy: Policy<HttpClassifier>,
    calls: u32,
    every: Duration,
    outage_ends: Duration,
) -> f64 {
    let requests = Arc::new(AtomicU32::new(0));
    let t0 = Instant::now();
    let policy = Arc::new(policy);
    let mut tasks = Vec::new();
    for i in 0..calls {
        let (policy, requests) = (Arc::clone(&policy), Arc::clone(&requests));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(t0 + every * i).await;
            let _ = policy
                .call(|_| {
                    let down = t0.elapsed() < outage_ends;
                    serve(&requests, if down { status(503, 10) } else { ok(10) })
                })
                .await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    f64::from(requests.load(Ordering::Relaxed)) / f64::from(calls)
}

async fn budgets(seed: u64) -> anyhow::Result<()> {
    heading("budgets: 400 calls, one every 25 ms, during a 5 s outage then recovery (open loop)");
    let retry = || -> anyhow::Result<RetryRules> {
        Ok(RetryRules::builder()
            .max_attempts(4)
            .backoff(Backoff::exponential(50 * MS, 2.0, Duration::from_secs(1))?)
            .seed(seed)
            .build()?)
    };
    let every = 25 * MS;
    let outage = Duration::from_secs(5);
    let none = Policy::builder("orders")
        .retry(retry()?)
        .classifier(HttpClassifier)
        .build()?;
    let bucket = Policy::builder("orders")
        .retry(retry()?)
        .budget(TokenBucket::new(10, 0.1)?)
        .classifier(HttpClassifier)
        .build()?;
    let ratio = Policy::builder("orders")
        .retry(retry()?)
        .budget(RatioBudget::new(Duration::from_secs(10), 1, 0.2)?)
        .classifier(HttpClassifier)
        .build()?;
    for (name, policy) in [
        ("no budget", none),
        ("token bucket (10, 0.1)", bucket),
        ("ratio budget (20 % + 1/s)", ratio),
    ] {
        let amp = storm(policy, 400, every, outage).await;
        outln!("  {name:<28} {amp:.2} requests per call");
    }
    outln!("  (during the outage the budgets keep the extra load near zero instead of ×4)");
    Ok(())
}

async fn breaker() -> anyhow::Result<()> {
    heading(
        "circuit breaker: the upstream resets connections for 4 s; a call every 200 ms for 10 s",
    );
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let t0 = Instant::now();
    let log = Arc::clone(&events);
    let breaker = CircuitBreaker::builder("payments")
        .window(SlidingWindow::Count(10))
        .minimum_calls(5)
        .failure_rate_threshold(0.5)
        .permitted_calls_in_half_open(2)
        .open_for(Duration::from_secs(2))
        .on_event(move |e| {
            if let BreakerEvent::StateTransition { from, to, .. } = e
                && let Ok(mut log) = log.lock()
            {
                log.push(format!("t={:>5} {from} -> {to}", ms(t0.elapsed())));
            }
        })
        .build()?;
    let policy = Policy::builder("payments")
        .retry(RetryRules::builder().max_attempts(1).build()?)
        .breaker(breaker.clone())
        .classifier(HttpClassifier)
        .build()?;
    let sent = AtomicU32::new(0);
    let (mut ok_calls, mut refused) = (0, 0);
    for i in 0..50u32 {
        tokio::time::sleep_until(t0 + 200 * MS * i).await;
        let down = t0.elapsed() < Duration::from_secs(4);
        match policy
            .call(|_| serve(&sent, if down { Reset { after: 5 * MS } } else { ok(5) }))
            .await
        {
            Ok(_) => ok_calls += 1,
            Err(e) if e.reason == retrywise::retry::StopReason::CircuitOpen => refused += 1,
            Err(_) => {}
        }
    }
    for line in events.lock().map(|l| l.clone()).unwrap_or_default() {
        outln!("  {line}");
    }
    let m = breaker.metrics();
    outln!(
        "  50 calls: {} sent upstream, {refused} refused at once while open, {ok_calls} succeeded",
        sent.load(Ordering::Relaxed)
    );
    outln!(
        "  metrics: state {}, successful {}, failed {}, not permitted {}, success rate {:.2}, health {:.2}",
        m.state,
        m.successful_calls,
        m.failed_calls,
        m.not_permitted_calls,
        m.success_rate,
        m.health_score
    );
    Ok(())
}

async fn bulkheads() -> anyhow::Result<()> {
    heading("semaphore bulkhead: 10 concurrent calls of 300 ms, room for 3, 100 ms wait");
    let bulkhead = Bulkhead::builder("inventory")
        .max_concurrent(3)
        .max_wait(100 * MS)
        .build()?;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let b = bulkhead.clone();
        tasks.push(tokio::spawn(async move {
            b.call(tokio::time::sleep(300 * MS)).await.is_ok()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += u32::from(t.await.unwrap_or(false));
    }
    let m = bulkhead.metrics();
    outln!(
        "  admitted {admitted}, rejected {} (rejection rate {:.0} %), now active {}",
        m.rejected_calls,
        m.rejection_rate * 100.0,
        m.active
    );

    heading(
        "isolated pools, as the design sketch's thread pools: a hung shipping service cannot starve payments",
    );
    let registry = BulkheadRegistry::new()
        .with(
            PoolBulkhead::builder("payment")
                .workers(20)
                .queue(100)
                .build()?,
        )
        .with(
            PoolBulkhead::builder("inventory")
                .workers(10)
                .queue(50)
                .build()?,
        )
        .with(
            PoolBulkhead::builder("shipping")
                .workers(10)
                .queue(50)
                .when_full(WhenFull::Reject)
                .build()?,
        )
        .with(
            PoolBulkhead::builder("notification")
                .workers(5)
                .queue(20)
                .build()?,
        );
    let registry = Arc::new(registry);
    let hung = Arc::new(AtomicU64::new(0));
    let mut stuck = Vec::new();
    for _ in 0..70 {
        let (r, h) = (Arc::clone(&registry), Arc::clone(&hung));
        stuck.push(tokio::spawn(async move {
            r.execute("shipping", async move {
                h.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(3600)).await;
            })
            .await
        }));
    }
    tokio::time::sleep(10 * MS).await;
    let t0 = Instant::now();
    let paid = registry.execute("payment", async { "charged" }).await?;
    outln!(
        "  payment answered `{paid}` in {} while shipping is stuck",
        ms(t0.elapsed())
    );
    for s in registry.status() {
        outln!(
            "  {:<13} active {:>2}/{:<2} queued {:>3}/{:<3} rejected {:>2} healthy {}",
            s.name,
            s.active,
            s.workers,
            s.queued,
            s.queue_capacity,
            s.rejected,
            s.healthy
        );
    }
    if let Err(e) = registry.execute("billing", async {}).await {
        outln!("  an unknown name is an error: {e}");
    }
    for t in stuck {
        t.abort();
    }
    Ok(())
}

async fn hedging(seed: u64) -> anyhow::Result<()> {
    heading("hedging: 2000 calls; 2 % stragglers take 1 s instead of ~20 ms; hedge after the p95");
    let mut table = Vec::new();
    for hedged in [false, true] {
        let mut rng = Rng::new(seed);
        let mut b = Policy::builder("search").retry(RetryRules::builder().max_attempts(1).build()?);
        let hedge = Hedge::builder()
            .delay(HedgeDelay::Percentile {
                quantile: 0.95,
                min_samples: 50,
                fallback: 100 * MS,
            })
            .build()?;
        if hedged {
            b = b.hedge(hedge.clone());
        }
        let policy = b.classifier(HttpClassifier).build()?;
        let requests = AtomicU32::new(0);
        let mut latencies = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            policy
                .call(|_| {
                    let straggler = rng.unit() < 0.02;
                    let took = if straggler {
                        1000
                    } else {
                        15 + (rng.unit() * 10.0) as u64
                    };
                    serve(&requests, ok(took))
                })
                .await?;
            latencies.push(t.elapsed());
        }
        latencies.sort();
        // Nearest rank, as the scoreboard's quantiles.
        let q = |p: f64| retrywise_sim::score::quantile(&latencies, p).unwrap_or_default();
        table.push((
            if hedged { "hedged (p95)" } else { "no hedge" },
            q(0.5),
            q(0.99),
            q(0.999),
            f64::from(requests.load(Ordering::Relaxed)) / 2000.0 - 1.0,
        ));
    }
    outln!(
        "  {:<14} {:>7} {:>8} {:>8} {:>14}",
        "",
        "p50",
        "p99",
        "p99.9",
        "extra requests"
    );
    for (name, p50, p99, p999, extra) in table {
        outln!(
            "  {name:<14} {:>7} {:>8} {:>8} {:>13.1} %",
            ms(p50),
            ms(p99),
            ms(p999),
            extra * 100.0
        );
    }
    Ok(())
}

async fn composition(seed: u64) -> anyhow::Result<()> {
    heading("the whole composition, and what it records (one JSON line per request sent)");
    let rec = Arc::new(MemoryRecorder::new(16));
    let policy = Policy::builder("checkout")
        .retry(
            RetryRules::builder()
                .max_attempts(3)
                .backoff(Backoff::decorrelated_jitter(
                    50 * MS,
                    Duration::from_secs(1),
                )?)
                .jitter(Jitter::None)
                .attempt_timeout(AttemptTimeout::Fixed(Duration::from_secs(1)))
                .deadline(Duration::from_secs(5))
                .seed(seed)
                .build()?,
        )
        .budget(TokenBucket::new(10, 0.1)?)
        .breaker(CircuitBreaker::builder("checkout").build()?)
        .bulkhead(Bulkhead::builder("checkout").max_concurrent(16).build()?)
        .hedge(
            Hedge::builder()
                .delay(HedgeDelay::Fixed(300 * MS))
                .no_budget()
                .build()?,
        )
        .classifier(HttpClassifier)
        .recorder(rec.clone())
        .build()?;
    let calls = AtomicU32::new(0);
    let reply = policy
        .call(|a: Attempt| {
            let b = match (a.number, a.hedge) {
                (1, _) => Reset { after: 30 * MS },
                (2, 0) => ok(900),
                _ => ok(40),
            };
            serve(&calls, b)
        })
        .await?;
    for r in rec.take() {
        outln!("  {}", describe(&r));
        outln!("    {}", serde_json::to_string(&r)?);
    }
    outln!(
        "  -> {} (reset, then a slow primary beaten by its hedge)",
        reply.status
    );
    Ok(())
}
