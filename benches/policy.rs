//! The cost each mechanism, and the full composition, adds to a call that succeeds at once
//! — retrywise next to tower-resilience and failsafe doing the same job, in the same run,
//! on one thread and on two threads sharing the mechanism's state.
//!
//! Run: `cargo bench -p retrywise-benches --bench policy`, then
//! `python3 benches/report.py` for the table of the README.

#![allow(missing_docs, clippy::unwrap_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use retrywise::attempt::ErrorsAreRetryable;
use retrywise::breaker::{CircuitBreaker, SlidingWindow};
use retrywise::budget::{RatioBudget, RetryBudget, TokenBucket};
use retrywise::bulkhead::Bulkhead;
use retrywise::hedge::{Hedge, HedgeDelay};
use retrywise::layer::{
    BulkheadLayer, CircuitBreakerLayer, HedgeLayer, PolicyLayer, RetryLayer, TimeoutLayer,
};
use retrywise::policy::Policy;
use retrywise::retry::{AttemptTimeout, Backoff, Jitter, RetryRules};
use retrywise_benches::{
    BenchError, drive_op, one_thread_service, runtime, two_threads_op, two_threads_service,
};
use tower::{Layer, Service};

type Ok1 = Result<u64, BenchError>;

/// The trivial inner service every tower case wraps.
fn inner()
-> impl Service<(), Response = u64, Error = BenchError, Future: Send + 'static> + Clone + Send + 'static
{
    tower::service_fn(|_: ()| async { Ok::<u64, BenchError>(1) })
}

async fn ok1() -> Ok1 {
    Ok(1)
}

/// The inner service of the `waiting` group: its answer comes from another task, so it is
/// ready only once the runtime has run that task and woken the call (a network call is
/// never ready at its first poll, nor at a second poll in the same turn), and a
/// mechanism's slow path - a timer armed, hedging state built - is measured, not its
/// shortcut for an answer ready at once. The task and its channel cost the baseline the
/// same.
fn inner_waiting()
-> impl Service<(), Response = u64, Error = BenchError, Future: Send + 'static> + Clone + Send + 'static
{
    tower::service_fn(|_: ()| async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(1u64);
        });
        rx.await.map_err(|_| BenchError)
    })
}

// ----- Configurations shared by retrywise and the peers -----

fn rw_breaker() -> CircuitBreaker {
    CircuitBreaker::builder("bench")
        .window(SlidingWindow::Count(100))
        .failure_rate_threshold(0.5)
        .minimum_calls(20)
        .slow_call_duration(Duration::from_secs(1))
        .open_for(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn rw_bulkhead() -> Bulkhead {
    Bulkhead::builder("bench")
        .max_concurrent(64)
        .max_wait(Duration::ZERO)
        .build()
        .unwrap()
}

fn rw_retry() -> RetryRules {
    RetryRules::builder()
        .max_attempts(3)
        .backoff(
            Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(10)).unwrap(),
        )
        .jitter(Jitter::Full)
        .build()
        .unwrap()
}

fn rw_hedge() -> Hedge {
    Hedge::builder()
        .delay(HedgeDelay::Fixed(Duration::from_millis(200)))
        .max_hedges(1)
        .build()
        .unwrap()
}

fn rw_full_policy() -> Policy {
    Policy::builder("bench")
        .retry(
            RetryRules::builder()
                .max_attempts(3)
                .backoff(
                    Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(10))
                        .unwrap(),
                )
                .jitter(Jitter::Full)
                .attempt_timeout(AttemptTimeout::Fixed(Duration::from_secs(5)))
                .build()
                .unwrap(),
        )
        .budget(TokenBucket::new(10, 0.1).unwrap())
        .breaker(rw_breaker())
        .bulkhead(rw_bulkhead())
        .hedge(Hedge::builder().build().unwrap())
        .build()
        .unwrap()
}

fn tr_breaker() -> tower_resilience::circuitbreaker::CircuitBreakerLayer {
    use tower_resilience::circuitbreaker::{CircuitBreakerLayer, SlidingWindowType};
    CircuitBreakerLayer::builder()
        .sliding_window_type(SlidingWindowType::CountBased)
        .sliding_window_size(100)
        .failure_rate_threshold(0.5)
        .minimum_number_of_calls(20)
        .slow_call_duration_threshold(Duration::from_secs(1))
        .wait_duration_in_open(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn tr_bulkhead() -> tower_resilience::bulkhead::BulkheadLayer {
    tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(64)
        .reject_when_full()
        .build()
        .unwrap()
}

fn tr_retry<E>() -> tower_resilience::retry::RetryLayer<(), u64, E>
where
    E: Send + 'static,
{
    use tower_resilience::retry::{ExponentialBackoff, RetryLayer};
    let backoff = ExponentialBackoff::new(Duration::from_millis(100))
        .multiplier(2.0)
        .unwrap()
        .max_interval(Duration::from_secs(10));
    RetryLayer::<(), u64, E>::builder()
        .max_attempts(3)
        .backoff(backoff)
        .build()
}

fn tr_timeout() -> tower_resilience::timelimiter::TimeLimiterLayer {
    tower_resilience::timelimiter::TimeLimiterLayer::builder()
        .timeout_duration(Duration::from_secs(5))
        .build()
}

fn tr_hedge() -> tower_resilience::hedge::HedgeLayer {
    tower_resilience::hedge::HedgeLayer::builder()
        .delay(Duration::from_millis(200))
        .max_hedged_attempts(2)
        .build()
}

fn fs_breaker() -> impl failsafe::futures::CircuitBreaker + Clone + Send + Sync + 'static {
    use failsafe::{backoff, failure_policy};
    let policy = failure_policy::success_rate_over_time_window(
        0.5,
        20,
        Duration::from_secs(30),
        backoff::constant(Duration::from_secs(30)),
    );
    failsafe::Config::new().failure_policy(policy).build()
}

// ----- Harness -----

/// A mechanism shared by every call (and both threads) for the whole run, so that the
/// operations borrow it instead of cloning an `Arc` per call.
fn leak<T>(t: T) -> &'static T {
    Box::leak(Box::new(t))
}

/// A tower service, on one thread and on two.
fn service<S>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, make: impl Fn() -> S)
where
    S: Service<(), Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    let rt = runtime();
    let mut svc = make();
    g.bench_function(BenchmarkId::new(name, "1t"), |b| {
        b.iter_custom(|n| one_thread_service(&rt, &mut svc, n))
    });
    let svc = make();
    g.bench_function(BenchmarkId::new(name, "2t"), |b| {
        b.iter_custom(|n| two_threads_service(&svc, n))
    });
}

/// An async operation, on one thread and on two (each thread gets `make()`).
fn operation<M, F, Fut, T>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, make: M)
where
    M: Fn() -> F,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let rt = runtime();
    let mut op = make();
    g.bench_function(BenchmarkId::new(name, "1t"), |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let t = Instant::now();
                drive_op(&mut op, n).await;
                t.elapsed()
            })
        })
    });
    g.bench_function(BenchmarkId::new(name, "2t"), |b| {
        b.iter_custom(|n| two_threads_op(&make, n))
    });
}

fn baselines(g: &mut BenchmarkGroup<'_, WallTime>) {
    operation(g, "baseline-future", || ok1);
    service(g, "baseline-service", inner);
}

// ----- Mechanisms -----

fn breaker(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    baselines(&mut g);
    let b: &'static CircuitBreaker = leak(rw_breaker());
    operation(&mut g, "retrywise-call", || move || b.call(ok1()));
    let f = leak(fs_breaker());
    operation(&mut g, "failsafe-call", || {
        move || failsafe::futures::CircuitBreaker::call(f, ok1())
    });
    let shared = rw_breaker();
    service(&mut g, "retrywise-layer", || {
        CircuitBreakerLayer::new(shared.clone(), ErrorsAreRetryable).layer(inner())
    });
    let tr = tr_breaker();
    service(&mut g, "tower-resilience-layer", || tr.layer(inner()));
    g.finish();
}

fn bulkhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulkhead");
    baselines(&mut g);
    let b: &'static Bulkhead = leak(rw_bulkhead());
    operation(&mut g, "retrywise-call", || move || b.call(ok1()));
    let shared = rw_bulkhead();
    service(&mut g, "retrywise-layer", || {
        BulkheadLayer::new(shared.clone()).layer(inner())
    });
    let tr = tr_bulkhead();
    service(&mut g, "tower-resilience-layer", || tr.layer(inner()));
    g.finish();
}

fn retry(c: &mut Criterion) {
    let mut g = c.benchmark_group("retry");
    baselines(&mut g);
    let p: &'static Policy = leak(Policy::builder("bench").retry(rw_retry()).build().unwrap());
    operation(&mut g, "retrywise-policy", || move || p.call(|_| ok1()));
    let layer = RetryLayer::new(Policy::builder("bench").retry(rw_retry()).build().unwrap());
    service(&mut g, "retrywise-layer", || layer.layer(inner()));
    let tr = tr_retry::<BenchError>();
    service(&mut g, "tower-resilience-layer", || tr.layer(inner()));
    g.finish();
}

fn timeout(c: &mut Criterion) {
    let mut g = c.benchmark_group("timeout");
    baselines(&mut g);
    operation(&mut g, "retrywise-timeout", || {
        || retrywise::timeout::timeout(Duration::from_secs(5), ok1())
    });
    service(&mut g, "retrywise-layer", || {
        TimeoutLayer::new(Duration::from_secs(5)).layer(inner())
    });
    let tr = tr_timeout();
    service(&mut g, "tower-resilience-layer", || tr.layer(inner()));
    g.finish();
}

fn hedge(c: &mut Criterion) {
    let mut g = c.benchmark_group("hedge");
    baselines(&mut g);
    let h: &'static Hedge = leak(rw_hedge());
    operation(&mut g, "retrywise-call", || move || h.call(|_| ok1()));
    let shared = rw_hedge();
    service(&mut g, "retrywise-layer", || {
        HedgeLayer::new(shared.clone()).layer(inner())
    });
    let tr = tr_hedge();
    service(&mut g, "tower-resilience-layer", || tr.layer(inner()));
    g.finish();
}

fn budget(c: &mut Criterion) {
    let mut g = c.benchmark_group("budget");
    baselines(&mut g);
    // The clock is read once, outside the calls: a policy passes the reading it already
    // has (the token bucket ignores it; a clock read alone costs about 22 ns here).
    let now = tokio::time::Instant::now();
    let tb: &'static TokenBucket = leak(TokenBucket::new(10, 0.1).unwrap());
    operation(&mut g, "retrywise-token-bucket", || {
        move || {
            let b = tb;
            async move {
                b.deposit(now);
                let r = ok1().await;
                b.record(r.is_ok());
                r
            }
        }
    });
    let rb: &'static RatioBudget = leak(RatioBudget::finagle_default());
    operation(&mut g, "retrywise-ratio", || {
        move || {
            let b = rb;
            async move {
                b.deposit(now);
                let r = ok1().await;
                b.record(r.is_ok());
                r
            }
        }
    });
    g.finish();
}

/// Every mechanism driven by the shipped model (`PolicyBuilder::adaptive`).
fn rw_adaptive_policy() -> Policy {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/default/1/model.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let model = retrywise::model::LogisticModel::from_json(&text).unwrap();
    let shared = std::sync::Arc::new(retrywise::model::SharedModel::new(std::sync::Arc::new(
        model,
    )));
    Policy::builder("bench")
        .adaptive(shared)
        .unwrap()
        .build()
        .unwrap()
}

fn composition(c: &mut Criterion) {
    let mut g = c.benchmark_group("composition");
    baselines(&mut g);
    let p: &'static Policy = leak(rw_full_policy());
    operation(&mut g, "retrywise-policy", || move || p.call(|_| ok1()));
    let a: &'static Policy = leak(rw_adaptive_policy());
    operation(&mut g, "retrywise-adaptive", || move || a.call(|_| ok1()));
    let layer = PolicyLayer::new(rw_full_policy());
    service(&mut g, "retrywise-policy-layer", || layer.layer(inner()));
    stacks(&mut g, inner);
    g.finish();
}

/// All five layers stacked around `inner()`, retrywise's and tower-resilience's.
fn stacks<S>(g: &mut BenchmarkGroup<'_, WallTime>, inner: fn() -> S)
where
    S: Service<(), Response = u64, Error = BenchError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let (b, k, r, h) = (
        rw_breaker(),
        rw_bulkhead(),
        Policy::builder("bench").retry(rw_retry()).build().unwrap(),
        rw_hedge(),
    );
    service(g, "retrywise-layers", || {
        RetryLayer::new(r.clone()).layer(
            CircuitBreakerLayer::new(b.clone(), ErrorsAreRetryable).layer(
                HedgeLayer::new(h.clone()).layer(
                    BulkheadLayer::new(k.clone())
                        .layer(TimeoutLayer::new(Duration::from_secs(5)).layer(inner())),
                ),
            ),
        )
    });
    // tower-resilience's hedge needs a `Clone` error, which only the inner service's is:
    // it goes innermost. Its retry must name the nested error type.
    let (tb, tk, th, tt) = (tr_breaker(), tr_bulkhead(), tr_hedge(), tr_timeout());
    service(g, "tower-resilience-layers", || {
        let stack = tb.layer(tk.layer(tt.layer(th.layer(inner()))));
        tr_retry().layer(stack)
    });
}

/// The timeout, the hedge and the stacked layers around a call that waits for its answer:
/// the path a real call takes (the groups above measure a call ready at once, where
/// retrywise's timeout arms no timer and its hedge builds nothing).
fn waiting(c: &mut Criterion) {
    let mut g = c.benchmark_group("waiting");
    service(&mut g, "baseline-service", inner_waiting);
    service(&mut g, "retrywise-timeout-layer", || {
        TimeoutLayer::new(Duration::from_secs(5)).layer(inner_waiting())
    });
    let tt = tr_timeout();
    service(&mut g, "tower-resilience-timeout-layer", || {
        tt.layer(inner_waiting())
    });
    let shared = rw_hedge();
    service(&mut g, "retrywise-hedge-layer", || {
        HedgeLayer::new(shared.clone()).layer(inner_waiting())
    });
    let th = tr_hedge();
    service(&mut g, "tower-resilience-hedge-layer", || {
        th.layer(inner_waiting())
    });
    stacks(&mut g, inner_waiting);
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = breaker, bulkhead, retry, timeout, hedge, budget, composition, waiting
}
criterion_main!(benches);
