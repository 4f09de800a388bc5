use super::*;
use crate::attempt::{ErrorsAreRetryable, HttpClassifier};
use crate::breaker::{CircuitBreaker, CircuitOpen, SlidingWindow};
use crate::bulkhead::{Bulkhead, BulkheadFull};
use crate::hedge::{Hedge, HedgeDelay};
use crate::policy::Policy;
use crate::retry::{Backoff, Jitter, RetryRules, StopReason};
use crate::timeout::Elapsed;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

fn failing(
    calls: Arc<AtomicU32>,
    fail_first: u32,
) -> impl Service<u32, Response = u32, Error = io::Error, Future: Send> + Clone + Send + 'static {
    service_fn(move |x: u32| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < fail_first {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            } else {
                Ok(x + 1)
            }
        }
    })
}

fn retry_policy<C>(target: &str, decider: Arc<RetryRules>, classifier: C) -> Policy<C> {
    Policy::builder(target)
        .decider(decider)
        .classifier(classifier)
        .build()
        .unwrap()
}

fn quick_retry(max: u32) -> Arc<RetryRules> {
    Arc::new(
        RetryRules::builder()
            .max_attempts(max)
            .backoff(Backoff::constant(10 * MS).unwrap())
            .jitter(Jitter::None)
            .build()
            .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn breaker_layer_opens_and_fails_fast() {
    let breaker = breaker_of_three();
    let calls = Arc::new(AtomicU32::new(0));
    let mut svc = CircuitBreakerLayer::new(breaker.clone(), ErrorsAreRetryable)
        .layer(failing(calls.clone(), 100));
    for _ in 0..3 {
        let e = svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert!(e.downcast_ref::<io::Error>().is_some());
    }
    let e = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(e.downcast_ref::<CircuitOpen>().is_some(), "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// An open circuit fails a call fast even while the service inside cannot take one (its
/// one slot held by a call to a hung upstream): the breaker is asked before the inner
/// service is waited for (it was asked in `call`, after `ready()` had waited).
#[tokio::test(start_paused = true)]
async fn an_open_circuit_fails_fast_while_the_inner_service_is_not_ready() {
    let breaker = breaker_of_three();
    let hung = service_fn(|_: u32| async {
        std::future::pending::<()>().await;
        Ok::<u32, io::Error>(0)
    });
    let mut svc = CircuitBreakerLayer::new(breaker.clone(), ErrorsAreRetryable)
        .layer(tower::limit::ConcurrencyLimitLayer::new(1).layer(hung));
    let mut other = svc.clone();
    let stuck = tokio::spawn(svc.ready().await.unwrap().call(1));
    tokio::task::yield_now().await;
    breaker.force_open();
    let refused = tokio::time::timeout(Duration::from_secs(1), async {
        other.ready().await.unwrap().call(2).await
    })
    .await
    .expect("refused at once, not after the hung call");
    let e = refused.unwrap_err();
    assert!(e.downcast_ref::<CircuitOpen>().is_some(), "{e}");
    stuck.abort();
}

/// A handle polled ready and dropped (as a policy layer drops its ready handle) takes
/// no permit and counts no refusal; a refusal seen at one poll is looked at again at the
/// next, so a circuit that closed meanwhile lets the call through.
#[tokio::test(start_paused = true)]
async fn readiness_neither_counts_nor_keeps_a_refusal() {
    let breaker = breaker_of_three();
    let calls = Arc::new(AtomicU32::new(0));
    let mut svc = CircuitBreakerLayer::new(breaker.clone(), ErrorsAreRetryable)
        .layer(failing(calls.clone(), 0));
    breaker.force_open();
    for _ in 0..3 {
        let mut handle = svc.clone();
        let _ = handle.ready().await.unwrap();
    }
    let m = breaker.metrics();
    assert_eq!((m.not_permitted_calls, m.ignored_calls), (0, 0), "{m:?}");
    // Polled ready while open, then closed before the call: the next poll looks again.
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    breaker.reset();
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A call while open is one refusal.
    breaker.force_open();
    let e = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(e.downcast_ref::<CircuitOpen>().is_some(), "{e}");
    assert_eq!(breaker.metrics().not_permitted_calls, 1);
    // Polled ready while open, and the circuit let calls through again before the call:
    // refused as polled - one refused call more, in the state the poll saw - and not a
    // call admitted and dropped (it counted as an ignored call, and said CLOSED).
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    breaker.reset();
    let e = svc.call(1).await.unwrap_err();
    let open = e.downcast_ref::<CircuitOpen>().expect("refused");
    assert_eq!(open.state, crate::breaker::State::ForcedOpen);
    let m = breaker.metrics();
    assert_eq!((m.not_permitted_calls, m.ignored_calls), (2, 0), "{m:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "nothing sent");
}

/// A service taking `d` ms to answer `d`.
fn slow()
-> impl Service<u64, Response = u64, Error = io::Error, Future: Send> + Clone + Send + 'static {
    service_fn(|d: u64| async move {
        tokio::time::sleep(Duration::from_millis(d)).await;
        Ok::<_, io::Error>(d)
    })
}

/// A breaker that opens on three failures of three calls.
fn breaker_of_three() -> CircuitBreaker {
    CircuitBreaker::builder("b")
        .window(SlidingWindow::Count(3))
        .minimum_calls(3)
        .build()
        .unwrap()
}

/// While one call holds the only room inside `svc`, three more are given up with no
/// attempt made (`GaveUp`, `BulkheadFull`), and `breaker` outside stays closed.
async fn three_refusals_leave_the_breaker_closed<S>(breaker: &CircuitBreaker, svc: S)
where
    S: Service<u64, Response = u64, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    let hog = tokio::spawn(svc.clone().oneshot(1000));
    tokio::task::yield_now().await;
    for _ in 0..3 {
        let e = svc.clone().oneshot(1).await.unwrap_err();
        let gave_up = e.downcast_ref::<GaveUp>().expect("a GaveUp");
        assert_eq!(
            (gave_up.attempts, gave_up.reason),
            (0, StopReason::BulkheadFull)
        );
    }
    assert_eq!(breaker.state(), crate::breaker::State::Closed);
    hog.await.unwrap().unwrap();
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
}

/// A full bulkhead inside refuses calls without sending them: the breaker outside hears
/// nothing of the upstream from them (it counted them as failures, and opened the circuit
/// on an upstream that never failed).
#[tokio::test(start_paused = true)]
async fn a_breaker_layer_ignores_refusals_by_a_bulkhead_inside() {
    let breaker = breaker_of_three();
    let bulkhead = Bulkhead::one_at_a_time("b", Duration::ZERO);
    let svc = CircuitBreakerLayer::new(breaker.clone(), ErrorsAreRetryable)
        .layer(BulkheadLayer::new(bulkhead).layer(slow()));
    let hog = tokio::spawn(svc.clone().oneshot(1000));
    tokio::task::yield_now().await;
    for _ in 0..3 {
        let e = svc.clone().oneshot(1).await.unwrap_err();
        assert!(e.downcast_ref::<BulkheadFull>().is_some(), "{e}");
    }
    assert_eq!(breaker.state(), crate::breaker::State::Closed);
    hog.await.unwrap().unwrap();
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
}

/// ... and so through a retry layer between them: its `GaveUp` with no attempt made is
/// the same refusal.
#[tokio::test(start_paused = true)]
async fn a_breaker_layer_ignores_refusals_passed_up_by_a_retry_layer() {
    let breaker = breaker_of_three();
    let bulkhead = Bulkhead::one_at_a_time("b", Duration::ZERO);
    let svc = CircuitBreakerLayer::new(breaker.clone(), ErrorsAreRetryable).layer(
        RetryLayer::new(retry_policy("r", quick_retry(3), ErrorsAreRetryable))
            .layer(BulkheadLayer::new(bulkhead).layer(slow())),
    );
    three_refusals_leave_the_breaker_closed(&breaker, svc).await;
}

/// ... and through a policy layer whose own bulkhead turns the first attempt away.
#[tokio::test(start_paused = true)]
async fn a_breaker_layer_ignores_a_policy_layers_own_bulkhead_refusals() {
    let breaker = breaker_of_three();
    let policy = Policy::builder("p")
        .bulkhead(Bulkhead::one_at_a_time("p", Duration::ZERO))
        .build()
        .unwrap();
    let svc = CircuitBreakerLayer::new(breaker.clone(), ErrorsAreRetryable)
        .layer(PolicyLayer::new(policy).layer(slow()));
    three_refusals_leave_the_breaker_closed(&breaker, svc).await;
}

/// A call the bulkhead refuses gives back the readiness `poll_ready` reserved in the
/// service inside (it kept a concurrency limit's only permit on the handle).
#[tokio::test(start_paused = true)]
async fn a_bulkhead_layer_refusal_holds_no_readiness_inside() {
    let bulkhead = Bulkhead::one_at_a_time("b", Duration::ZERO);
    let held = bulkhead.try_acquire().unwrap();
    let limited = tower::limit::ConcurrencyLimitLayer::new(1).layer(slow());
    let mut a = BulkheadLayer::new(bulkhead.clone()).layer(limited.clone());
    let e = a.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(e.downcast_ref::<BulkheadFull>().is_some(), "{e}");
    // `a` lives on; the limit's permit is free for another handle.
    let other = tokio::time::timeout(100 * MS, limited.clone().ready_oneshot()).await;
    assert!(
        other.is_ok(),
        "the permit stayed reserved on the refused handle"
    );
    drop((held, a));
}

/// A primary the bulkhead inside refused sent nothing: no hedge goes at once into the
/// same full bulkhead, no hedge budget is spent, and the refusal itself comes back (not
/// `AllFailed`), so that a retry layer outside reads it as no attempt.
#[tokio::test(start_paused = true)]
async fn a_hedge_layer_does_not_hedge_a_refusal() {
    let bulkhead = Bulkhead::one_at_a_time("b", Duration::ZERO);
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(20 * MS))
        .build()
        .unwrap();
    let svc = HedgeLayer::new(hedge.clone()).layer(BulkheadLayer::new(bulkhead).layer(slow()));
    let hog = tokio::spawn(svc.clone().oneshot(1000));
    tokio::task::yield_now().await;
    let e = svc.clone().oneshot(1).await.unwrap_err();
    assert!(e.downcast_ref::<BulkheadFull>().is_some(), "{e}");
    assert_eq!(hedge.metrics().hedges, 0);
    hog.await.unwrap().unwrap();
}

/// A hedge does not queue for the bulkhead's room inside, as `Policy`'s hedges do not: the
/// primary holds the only room, the hedge is turned away at once (it used to wait the
/// bulkhead's 100 ms in the queue, beside other callers' first requests), and the
/// primary's answer is the call's.
#[tokio::test(start_paused = true)]
async fn a_hedge_layer_s_hedge_waits_for_no_room_inside() {
    let bulkhead = Bulkhead::one_at_a_time("b", 100 * MS);
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(20 * MS))
        .no_budget()
        .build()
        .unwrap();
    let svc =
        HedgeLayer::new(hedge.clone()).layer(BulkheadLayer::new(bulkhead.clone()).layer(slow()));
    let t0 = tokio::time::Instant::now();
    let call = tokio::spawn(svc.clone().oneshot(1000));
    // Past the hedge delay, with the hedge's refusal: the room is still the primary's,
    // and nothing waits for it.
    tokio::time::sleep(30 * MS).await;
    let m = bulkhead.metrics();
    assert_eq!((m.active, m.rejected_calls), (1, 1), "{m:?}");
    // Turned away, the hedge was never sent: not counted as one, nor in the ledger that
    // a budget reads.
    let h = hedge.metrics();
    assert_eq!((h.hedges, h.window_hedges), (0, 0), "{h:?}");
    assert_eq!(call.await.unwrap().unwrap(), 1000);
    assert_eq!(t0.elapsed(), 1000 * MS);
    // A caller's own first request still waits for room: it gets it once freed.
    let hog = tokio::spawn(svc.clone().oneshot(50));
    tokio::task::yield_now().await;
    assert_eq!(svc.clone().oneshot(5).await.unwrap(), 5);
    hog.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn bulkhead_layer_waits_then_rejects() {
    let bulkhead = Bulkhead::one_at_a_time("b", 50 * MS);
    let slow = service_fn(|d: u64| async move {
        tokio::time::sleep(Duration::from_millis(d)).await;
        Ok::<_, io::Error>(d)
    });
    let svc = BulkheadLayer::new(bulkhead.clone()).layer(slow);
    let mut a = svc.clone();
    let first = tokio::spawn(async move { a.ready().await.unwrap().call(30).await });
    tokio::task::yield_now().await;
    // Waits 30 ms for room, then runs.
    assert_eq!(svc.clone().oneshot(10).await.unwrap(), 10);
    assert_eq!(first.await.unwrap().unwrap(), 30);
    let mut b = svc.clone();
    let hog = tokio::spawn(async move { b.ready().await.unwrap().call(500).await });
    tokio::task::yield_now().await;
    let e = svc.clone().oneshot(1).await.unwrap_err();
    assert!(e.downcast_ref::<BulkheadFull>().is_some(), "{e}");
    hog.await.unwrap().unwrap();
    assert_eq!(bulkhead.metrics().rejected_calls, 1);
}

/// A bulkhead whose adaptive limit starts at 4 (between 1 and 100).
fn adaptive_from_four() -> crate::bulkhead::BulkheadBuilder {
    use crate::bulkhead::AdaptiveLimit;
    Bulkhead::builder("b").adaptive(
        AdaptiveLimit::builder()
            .initial(4)
            .bounds(1, 100)
            .build()
            .unwrap(),
    )
}

/// Through the layer, an adaptive limit hears of each call's latency and failure as it
/// does through a `Policy`: its limit moves, and the bulkhead's metrics count them.
#[tokio::test(start_paused = true)]
async fn bulkhead_layer_reports_calls_to_an_adaptive_limit() {
    let bulkhead = adaptive_from_four()
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = BulkheadLayer::new(bulkhead.clone()).layer(service_fn(|fail: bool| async move {
        tokio::time::sleep(10 * MS).await;
        if fail {
            Err(io::Error::other("failed"))
        } else {
            Ok(())
        }
    }));
    // Calls that keep the limit full, fast: the limit grows.
    for round in 0..50 {
        let calls: Vec<_> = (0..bulkhead.metrics().max_concurrent)
            .map(|i| tokio::spawn(svc.clone().oneshot(round == 0 && i == 0)))
            .collect();
        for c in calls {
            let _ = c.await.unwrap();
        }
    }
    let m = bulkhead.metrics();
    assert!(m.max_concurrent > 4, "{m:?}");
    assert_eq!(m.failed_calls, 1, "{m:?}");
    assert_eq!(m.avg_execution_time, 10 * MS, "{m:?}");
}

/// With a classifier, a 503 shed fast by an overloaded upstream is a call it did not
/// answer, not a fast answer that pulls the limit's baseline down; a refusal by a layer
/// inside (nothing sent) is no call of the upstream's at all.
#[tokio::test(start_paused = true)]
async fn an_adaptive_bulkhead_layer_judges_answers_by_its_classifier() {
    let adaptive = || adaptive_from_four().build().unwrap();
    let shed = || {
        service_fn(|status: u16| async move {
            tokio::time::sleep(MS).await;
            Ok::<_, io::Error>(http::Response::builder().status(status).body(()).unwrap())
        })
    };
    let by_outcome = adaptive();
    let svc = BulkheadLayer::new(by_outcome.clone()).layer(shed());
    let judged = adaptive();
    let http = BulkheadLayer::new(judged.clone())
        .with_classifier(HttpClassifier)
        .layer(shed());
    for status in [503, 503, 200, 404] {
        svc.clone().oneshot(status).await.unwrap();
        http.clone().oneshot(status).await.unwrap();
    }
    assert_eq!(by_outcome.metrics().failed_calls, 0, "an `Ok` is an answer");
    // The 503s failed; a 404 is a failure too, though an answer of the upstream's.
    assert_eq!(judged.metrics().failed_calls, 3);
    assert_eq!(judged.metrics().total_calls, 4);

    // An open circuit inside refuses every call unsent: nothing to report.
    let breaker = CircuitBreaker::builder("b").build().unwrap();
    breaker.force_open();
    let refused = adaptive();
    let svc = BulkheadLayer::new(refused.clone())
        .layer(CircuitBreakerLayer::new(breaker, ErrorsAreRetryable).layer(slow()));
    for _ in 0..5 {
        let e = svc.clone().oneshot(1).await.unwrap_err();
        assert!(e.downcast_ref::<CircuitOpen>().is_some(), "{e}");
    }
    let m = refused.metrics();
    assert_eq!((m.failed_calls, m.active), (0, 0), "{m:?}");
}

#[tokio::test(start_paused = true)]
async fn timeout_layer() {
    let slow = service_fn(|d: u64| async move {
        tokio::time::sleep(Duration::from_millis(d)).await;
        Ok::<_, io::Error>(d)
    });
    let svc = TimeoutLayer::new(100 * MS).layer(slow);
    assert_eq!(svc.clone().oneshot(50).await.unwrap(), 50);
    let e = svc.oneshot(500).await.unwrap_err();
    assert!(e.downcast_ref::<Elapsed>().is_some());
}

/// The first attempt's timeout counts from the call, as its latency and deadline do: a
/// future first polled late is not given its whole timeout again.
#[tokio::test(start_paused = true)]
async fn the_first_attempts_timeout_counts_from_the_call() {
    let rules = RetryRules::builder()
        .max_attempts(1)
        .attempt_timeout(crate::retry::AttemptTimeout::Fixed(Duration::from_secs(1)))
        .build()
        .unwrap();
    let mut svc =
        RetryLayer::new(retry_policy("t", Arc::new(rules), ErrorsAreRetryable)).layer(slow());
    let t0 = tokio::time::Instant::now();
    let call = svc.ready().await.unwrap().call(500);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let e = call.await.unwrap_err();
    assert!(e.downcast_ref::<Elapsed>().is_some(), "{e}");
    // Timed out at its first poll, 2 s in, not after 500 ms more of the upstream.
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn retry_layer_retries_and_gives_up() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = RetryLayer::new(retry_policy("r", quick_retry(3), ErrorsAreRetryable))
        .layer(failing(calls.clone(), 2));
    let t0 = tokio::time::Instant::now();
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(t0.elapsed(), 20 * MS);

    let calls = Arc::new(AtomicU32::new(0));
    let svc = RetryLayer::new(retry_policy("r", quick_retry(3), ErrorsAreRetryable))
        .layer(failing(calls.clone(), 100));
    let e = svc.oneshot(1).await.unwrap_err();
    assert!(e.downcast_ref::<io::Error>().is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_layer_returns_the_last_http_answer() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let upstream = service_fn(move |_: ()| {
        c.fetch_add(1, Ordering::SeqCst);
        async {
            Ok::<_, io::Error>(
                http::Response::builder()
                    .status(503)
                    .header("retry-after", "1")
                    .body(())
                    .unwrap(),
            )
        }
    });
    let svc = RetryLayer::new(retry_policy("h", quick_retry(2), HttpClassifier)).layer(upstream);
    let t0 = tokio::time::Instant::now();
    let resp = svc.oneshot(()).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(1),
        "Retry-After was honoured"
    );
}

#[tokio::test(start_paused = true)]
async fn hedge_layer_takes_the_first_answer() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let upstream = service_fn(move |_: ()| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(if n == 0 { 1000 * MS } else { 10 * MS }).await;
            Ok::<_, io::Error>(n)
        }
    });
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(20 * MS))
        .no_budget()
        .build()
        .unwrap();
    let svc = HedgeLayer::new(hedge).layer(upstream);
    let t0 = tokio::time::Instant::now();
    assert_eq!(svc.oneshot(()).await.unwrap(), 1);
    assert_eq!(t0.elapsed(), 30 * MS);
}

#[tokio::test(start_paused = true)]
async fn policy_layer_applies_the_whole_policy() {
    let calls = Arc::new(AtomicU32::new(0));
    let policy = Policy::builder("p")
        .retry(
            RetryRules::builder()
                .max_attempts(4)
                .backoff(Backoff::constant(MS).unwrap())
                .build()
                .unwrap(),
        )
        .breaker(CircuitBreaker::builder("p").build().unwrap())
        .build()
        .unwrap();
    let svc = PolicyLayer::new(policy.clone()).layer(failing(calls.clone(), 3));
    assert_eq!(svc.clone().oneshot(41).await.unwrap(), 42);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    calls.store(0, Ordering::SeqCst);
    let svc = PolicyLayer::new(policy).layer(failing(calls.clone(), 100));
    let e = svc.oneshot(1).await.unwrap_err();
    let gave_up = e.downcast_ref::<policy::GaveUp>().expect("GaveUp");
    assert_eq!(gave_up.attempts, 4);
    assert!(gave_up.last.downcast_ref::<io::Error>().is_some());
    assert_eq!(e.to_string(), "p: gave up after 4 attempts (max_attempts)");
}

#[tokio::test(start_paused = true)]
async fn the_retry_layer_records_tracks_health_and_explores_like_the_policy() {
    let rec = Arc::new(crate::recorder::MemoryRecorder::new(100));
    let policy = Policy::builder("r")
        .decider(quick_retry(3))
        .recorder(rec.clone())
        .label("layer")
        .explore(crate::retry::Exploration::new(2.0, 2.0, 1.0).unwrap())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let svc = RetryLayer::new(policy).layer(failing(calls.clone(), 2));
    let t0 = tokio::time::Instant::now();
    assert_eq!(svc.oneshot(1).await.unwrap(), 2);
    assert_eq!(
        t0.elapsed(),
        40 * MS,
        "explored: twice the planned 10 ms, twice"
    );
    let recs = rec.take();
    assert_eq!(recs.len(), 3);
    assert!(
        recs.iter()
            .all(|r| r.call_id == recs[0].call_id && r.policy.as_deref() == Some("layer"))
    );
    let attempts: Vec<u32> = recs.iter().map(|r| r.context.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(recs[1].context.planned_delay, Some(10 * MS));
    assert_eq!(recs[1].context.delay, 20 * MS);
    assert_eq!(recs[2].context.failure_rate, Some(1.0), "two failures seen");
    assert_eq!(recs[2].outcome, crate::attempt::Outcome::Success);
}

#[tokio::test(start_paused = true)]
async fn the_retry_layer_takes_no_tokens_for_permanent_failures() {
    let bucket = Arc::new(crate::budget::TokenBucket::new(10, 0.1).unwrap());
    let policy = Policy::builder("a6")
        .decider(quick_retry(2))
        .shared_budget(bucket.clone())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let upstream = service_fn(|_: ()| async {
        Ok::<_, io::Error>(http::Response::builder().status(400).body(()).unwrap())
    });
    let svc = RetryLayer::new(policy).layer(upstream);
    for _ in 0..10 {
        assert_eq!(svc.clone().oneshot(()).await.unwrap().status(), 400);
    }
    assert_eq!(bucket.tokens(), 10.0);
}

/// An upstream answering the status `status` holds, and a one-attempt policy with the AWS
/// SDKs' client-side rate limiter.
fn behind_the_aws_limiter(
    status: &Arc<AtomicU32>,
) -> (
    impl Service<(), Response = http::Response<()>, Error = io::Error, Future: Send> + Clone,
    Policy<HttpClassifier>,
) {
    let s = Arc::clone(status);
    let upstream = service_fn(move |_: ()| {
        let code = s.load(Ordering::SeqCst) as u16;
        async move { Ok::<_, io::Error>(http::Response::builder().status(code).body(()).unwrap()) }
    });
    let policy = crate::policy::Policy::builder("aws")
        .decider(quick_retry(1))
        .rate_limiter(crate::budget::CubicRateLimiter::default())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    (upstream, policy)
}

#[tokio::test(start_paused = true)]
async fn retry_layer_waits_for_the_aws_rate_limiter_like_policy() {
    let status = Arc::new(AtomicU32::new(200));
    let (upstream, policy) = behind_the_aws_limiter(&status);
    let mut svc = RetryLayer::new(policy).layer(upstream);
    // 50 calls a second for 2 s: nothing held back.
    let t0 = tokio::time::Instant::now();
    for _ in 0..100 {
        svc.ready().await.unwrap().call(()).await.unwrap();
        tokio::time::sleep(20 * MS).await;
    }
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    // One 429: from now on calls wait for tokens (about 35 a second).
    status.store(429, Ordering::SeqCst);
    let _ = svc.ready().await.unwrap().call(()).await;
    status.store(200, Ordering::SeqCst);
    let t1 = tokio::time::Instant::now();
    for _ in 0..40 {
        svc.ready().await.unwrap().call(()).await.unwrap();
    }
    let took = t1.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took <= Duration::from_secs(3),
        "{took:?}"
    );
}

/// A call a breaker layer inside refuses used no rate limiter token: the token taken for
/// it is given back (every refused call spent one, and an open circuit drained the
/// pacing of the calls after it).
#[tokio::test(start_paused = true)]
async fn a_refused_attempt_gives_its_rate_limiter_token_back() {
    let status = Arc::new(AtomicU32::new(429));
    let (upstream, policy) = behind_the_aws_limiter(&status);
    let breaker = CircuitBreaker::builder("b").build().unwrap();
    let svc = RetryLayer::new(policy.clone())
        .layer(CircuitBreakerLayer::new(breaker.clone(), HttpClassifier).layer(upstream));
    // A 429 turns the limiter on; after a while its bucket holds tokens again.
    let _ = svc.clone().oneshot(()).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let limiter = policy.inner().limiter.as_ref().unwrap();
    assert!(limiter.enabled());
    // How many tokens the bucket holds now: taken one by one (and put back).
    let count = || {
        let now = tokio::time::Instant::now();
        let mut n = 0;
        while limiter.take(now) == Ok(true) {
            n += 1;
        }
        for _ in 0..n {
            limiter.give_back();
        }
        n
    };
    let before = count();
    assert!(before > 0);
    breaker.force_open();
    for _ in 0..3 {
        let e = svc.clone().oneshot(()).await.unwrap_err();
        assert!(e.to_string().contains("circuit"), "{e}");
    }
    assert_eq!(count(), before, "no token spent on a call never sent");
}

/// The first attempt waits for the rate limiter's token while the caller's handle is still
/// held (`ready().await?.call(..)` keeps it): the readiness it reserved - here the only
/// slot of a concurrency limit - goes with the call, which would otherwise wait for the
/// slot its own caller holds, for ever.
#[tokio::test(start_paused = true)]
async fn a_first_attempt_the_rate_limiter_delays_keeps_the_readiness_reserved_for_it() {
    let status = Arc::new(AtomicU32::new(200));
    let (upstream, policy) = behind_the_aws_limiter(&status);
    let limited = tower::limit::ConcurrencyLimitLayer::new(1).layer(upstream);
    let mut svc = RetryLayer::new(policy).layer(limited);
    // One 429 turns the limiter on: from then on first attempts wait for tokens.
    status.store(429, Ordering::SeqCst);
    let _ = svc.ready().await.unwrap().call(()).await;
    status.store(200, Ordering::SeqCst);
    for _ in 0..20 {
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            svc.ready().await.unwrap().call(()).await
        })
        .await
        .expect("a call waiting for its own caller's slot never ends");
        assert_eq!(answer.unwrap().status(), 200);
    }
}

/// The policy layer lets go of the readiness `poll_ready` reserved: while one call waits
/// for an open circuit before its first request, another clone of the service - over the
/// same concurrency limit of one - is ready and served (it waited for the slot the
/// waiting call held).
#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_the_circuit_holds_no_slot_of_the_service_inside() {
    let breaker = CircuitBreaker::builder("b")
        .window(SlidingWindow::Count(2))
        .minimum_calls(2)
        .open_for(Duration::from_secs(1))
        .build()
        .unwrap();
    for _ in 0..2 {
        breaker
            .try_acquire()
            .unwrap()
            .record(crate::breaker::CallOutcome::Failure, MS);
    }
    let waits = Policy::builder("b")
        .decider(quick_retry(1))
        .breaker(breaker)
        .wait_for_breaker(Duration::from_secs(5))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let limited = tower::limit::ConcurrencyLimitLayer::new(1).layer(failing(calls.clone(), 0));
    let mut waiting = PolicyLayer::new(waits).layer(limited.clone());
    let call = waiting.ready().await.unwrap().call(1);
    let waiting_call = tokio::spawn(call);
    tokio::task::yield_now().await;
    // Another service over the same limit, without a circuit of its own.
    let mut other = PolicyLayer::new(
        Policy::builder("o")
            .decider(quick_retry(1))
            .build()
            .unwrap(),
    )
    .layer(limited);
    let served = tokio::time::timeout(100 * MS, async {
        other.ready().await.unwrap().call(5).await
    })
    .await
    .expect("the slot is not held by the call waiting for the circuit");
    assert_eq!(served.unwrap(), 6);
    // The waiting call is sent once the circuit lets it through.
    assert_eq!(waiting_call.await.unwrap().unwrap(), 2);
}

/// Readiness is part of the attempt, as under `Policy` (readiness and the call run under
/// one timeout there): a service that is never ready again does not hold a retry past the
/// deadline.
#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_readiness_no_longer_than_the_deadline() {
    let rules = RetryRules::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(10 * MS).unwrap())
        .jitter(Jitter::None)
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let policy = Policy::builder("never-ready").retry(rules).build().unwrap();
    // Ready once; after that, never again (a limit held by hung calls).
    let mut svc = RetryLayer::new(policy.clone()).layer(ReadyOnce(Arc::new(AtomicU32::new(0))));
    let t0 = tokio::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(60), async {
        svc.ready().await.unwrap().call(1).await
    })
    .await
    .expect("a retry waiting for readiness outlived its deadline");
    assert!(out.is_err());
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    let stops = policy.metrics().stops;
    assert!(stops.contains(&("deadline", 1)), "{stops:?}");
}

/// A wait for the rate limiter's token that would take what is left of the deadline is
/// not waited, as under `Policy`: the call stops at once with `deadline`.
#[tokio::test(start_paused = true)]
async fn a_rate_limiter_wait_past_the_deadline_is_not_waited() {
    use crate::budget::CubicRateLimiter;
    let upstream = service_fn(|_: ()| async {
        Ok::<_, io::Error>(http::Response::builder().status(429).body(()).unwrap())
    });
    let rules = RetryRules::builder()
        .max_attempts(1)
        .deadline(Duration::from_millis(5))
        .build()
        .unwrap();
    let policy = crate::policy::Policy::builder("aws")
        .retry(rules)
        .rate_limiter(CubicRateLimiter::default())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let mut svc = RetryLayer::new(policy.clone()).layer(upstream);
    // Throttled: the limiter comes on at its floor rate, far slower than 5 ms a call.
    let _ = svc.ready().await.unwrap().call(()).await;
    let t0 = tokio::time::Instant::now();
    let mut stopped = 0;
    for _ in 0..5 {
        if let Err(e) = svc.ready().await.unwrap().call(()).await {
            assert!(e.to_string().contains("deadline"), "{e}");
            stopped += 1;
        }
    }
    assert!(stopped > 0);
    assert!(
        t0.elapsed() < Duration::from_millis(25),
        "{:?}",
        t0.elapsed()
    );
}

/// A retry that gets to its turn past the deadline (its task ran late) sends nothing: no
/// request with no time left, no fake timeout; the call stops with `deadline`.
#[tokio::test(start_paused = true)]
async fn a_retry_late_past_the_deadline_sends_nothing() {
    let calls = Arc::new(AtomicU32::new(0));
    let rules = RetryRules::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(100 * MS).unwrap())
        .jitter(Jitter::None)
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let policy = crate::policy::Policy::builder("late")
        .retry(rules)
        .build()
        .unwrap();
    let mut svc = RetryLayer::new(policy).layer(failing(calls.clone(), 100));
    let call = svc.ready().await.unwrap().call(1);
    let mut call = std::pin::pin!(call);
    // The first attempt fails; its retry waits out its 100 ms backoff.
    let first =
        std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx).is_pending()))
            .await;
    assert!(first, "waiting to retry");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The task is not polled again until well past the 500 ms deadline.
    tokio::time::advance(Duration::from_secs(1)).await;
    // The call ends with its last attempt's failure, as `Policy::call` does (it ended
    // with a message of its own, the failure dropped).
    let e = call.await.unwrap_err();
    assert!(e.downcast_ref::<io::Error>().is_some(), "{e}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "nothing sent with no time left"
    );
}

/// A retry layer over a breaker layer: a call the open circuit refuses was never sent - no
/// record of an upstream failure, no retry into the open circuit - and stops as
/// `Policy::call` stops on its own breaker's refusal.
#[tokio::test(start_paused = true)]
async fn a_refusal_by_a_breaker_layer_inside_is_no_attempt() {
    let breaker = CircuitBreaker::builder("b").build().unwrap();
    breaker.force_open();
    let calls = Arc::new(AtomicU32::new(0));
    let rec = Arc::new(crate::recorder::MemoryRecorder::new(10));
    let policy = Policy::builder("b")
        .decider(quick_retry(3))
        .recorder(rec.clone())
        .build()
        .unwrap();
    let mut svc = RetryLayer::new(policy.clone()).layer(
        CircuitBreakerLayer::new(breaker, ErrorsAreRetryable).layer(failing(calls.clone(), 0)),
    );
    let e = svc.ready().await.unwrap().call(1).await.unwrap_err();
    let gave_up = e.downcast_ref::<GaveUp>().expect("a GaveUp");
    assert_eq!(gave_up.reason, crate::retry::StopReason::CircuitOpen, "{e}");
    assert_eq!(gave_up.attempts, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(rec.take().is_empty(), "nothing was sent: nothing recorded");
    let m = policy.metrics();
    assert!(m.stops.contains(&("circuit_open", 1)), "{m:?}");
    assert_eq!(m.retries, 0, "{m:?}");
}

/// A service ready once (for the first attempt, which fails), then never again.
#[derive(Clone)]
struct ReadyOnce(Arc<AtomicU32>);

impl Service<u32> for ReadyOnce {
    type Response = u32;
    type Error = io::Error;
    type Future = std::future::Ready<Result<u32, io::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), io::Error>> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _: u32) -> Self::Future {
        std::future::ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")))
    }
}

/// A retry dropped while the service inside is not yet ready sent nothing: only the first
/// attempt is recorded (a cancelled retry would stand in the training data for a request
/// never made).
#[tokio::test(start_paused = true)]
async fn a_retry_dropped_before_the_service_was_ready_records_nothing() {
    let rec = Arc::new(crate::recorder::MemoryRecorder::new(10));
    let policy = Policy::builder("b")
        .decider(quick_retry(3))
        .recorder(rec.clone())
        .build()
        .unwrap();
    let mut svc = RetryLayer::new(policy).layer(ReadyOnce(Arc::new(AtomicU32::new(0))));
    let call = svc.ready().await.unwrap().call(1);
    // The first attempt fails at once; the retry, 10 ms later, waits for readiness.
    assert!(tokio::time::timeout(50 * MS, call).await.is_err());
    let recs = rec.take();
    assert_eq!(recs.len(), 1, "the first attempt only: {recs:?}");
}

/// A retry the layer paid for and never sent - turned away by a breaker layer inside, or
/// dropped while it waits - gives back what it paid (it kept the AWS retry quota's units).
#[tokio::test(start_paused = true)]
async fn a_retry_never_sent_gives_back_what_it_paid() {
    use crate::budget::RetryQuota;
    let quota = Arc::new(RetryQuota::new(500, 5, 10).unwrap());
    let policy = || {
        Policy::builder("b")
            .decider(quick_retry(3))
            .shared_budget(quota.clone())
            .build()
            .unwrap()
    };
    // The first attempt fails, and the circuit is forced open before the retry.
    let breaker = CircuitBreaker::builder("b").build().unwrap();
    let opens = breaker.clone();
    let upstream = service_fn(move |_: u32| {
        opens.force_open();
        async { Err::<u32, _>(io::Error::new(io::ErrorKind::ConnectionReset, "reset")) }
    });
    let mut svc = RetryLayer::new(policy())
        .layer(CircuitBreakerLayer::new(breaker, ErrorsAreRetryable).layer(upstream));
    let e = svc.ready().await.unwrap().call(1).await.unwrap_err();
    let gave_up = e.downcast_ref::<GaveUp>().expect("a GaveUp");
    assert_eq!(gave_up.reason, crate::retry::StopReason::CircuitOpen, "{e}");
    assert_eq!(quota.available(), 500);
    // Dropped in its 10 ms backoff.
    let calls = Arc::new(AtomicU32::new(0));
    let mut svc = RetryLayer::new(policy()).layer(failing(calls.clone(), 1));
    let call = svc.ready().await.unwrap().call(1);
    assert!(tokio::time::timeout(5 * MS, call).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(quota.available(), 500);
    // A retry sent and failed keeps what it paid.
    let mut svc = RetryLayer::new(policy()).layer(failing(Arc::new(AtomicU32::new(0)), 9));
    assert!(svc.ready().await.unwrap().call(1).await.is_err());
    assert_eq!(quota.available(), 500 - 2 * 5);
}
