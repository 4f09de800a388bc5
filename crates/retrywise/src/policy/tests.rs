use super::*;
use crate::attempt::{HttpClassifier, Outcome};
use crate::breaker::{CircuitBreaker, SlidingWindow};
use crate::budget::TokenBucket;
use crate::hedge::HedgeDelay;
use crate::recorder::MemoryRecorder;
use crate::retry::{AttemptTimeout, Backoff, Decision, Jitter};
use std::io;
use std::sync::atomic::AtomicU32;

const MS: Duration = Duration::from_millis(1);

/// At most `max` attempts, 100 ms apart (no jitter), within `deadline`.
fn every_100ms_within(max: u32, deadline: Duration) -> RetryRules {
    RetryRules::builder()
        .max_attempts(max)
        .backoff(Backoff::constant(100 * MS).unwrap())
        .jitter(Jitter::None)
        .deadline(deadline)
        .build()
        .unwrap()
}

fn retry(max: u32, delay_ms: u32) -> RetryRules {
    RetryRules::builder()
        .max_attempts(max)
        .backoff(Backoff::constant(delay_ms * MS).unwrap())
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "reset")
}

#[tokio::test(start_paused = true)]
async fn retries_until_success_and_records_every_attempt() {
    let rec = Arc::new(MemoryRecorder::new(100));
    let p = Policy::builder("inv")
        .retry(retry(5, 100))
        .recorder(rec.clone())
        .build()
        .unwrap();
    let n = AtomicU32::new(0);
    let t0 = Instant::now();
    let v = p
        .call(|a| {
            let k = n.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(a.number, k + 1);
                tokio::time::sleep(10 * MS).await;
                if k < 2 { Err(reset()) } else { Ok("ok") }
            }
        })
        .await
        .unwrap();
    assert_eq!(v, "ok");
    assert_eq!(t0.elapsed(), 3 * 10 * MS + 2 * 100 * MS);
    let recs = rec.take();
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|r| r.call_id == recs[0].call_id));
    assert_eq!(recs[0].context.attempt, 1);
    assert_eq!(recs[0].context.error, None);
    assert_eq!(recs[0].outcome, Outcome::Retryable);
    assert_eq!(recs[0].outcome_error, Some(ErrorKind::Reset));
    assert_eq!(recs[0].outcome_latency, 10 * MS);
    assert_eq!(recs[1].context.attempt, 2);
    assert_eq!(recs[1].context.error, Some(ErrorKind::Reset));
    assert_eq!(recs[1].context.delay, 100 * MS);
    assert_eq!(recs[1].context.latency, Some(10 * MS));
    assert_eq!(recs[1].context.elapsed, 10 * MS);
    assert_eq!(recs[2].outcome, Outcome::Success);
    assert_eq!(recs[2].context.elapsed, 120 * MS);
    assert_eq!(p.metrics().retries, 2);
}

#[tokio::test(start_paused = true)]
async fn seeded_call_ids_are_distinct_and_the_same_in_every_run() {
    let run = |seed| async move {
        let rec = Arc::new(MemoryRecorder::new(100));
        let p = Policy::builder("inv")
            .retry(retry(2, 1))
            .recorder(rec.clone())
            .call_id_seed(seed)
            .build()
            .unwrap();
        for i in 0..5 {
            let _ = p
                .call(|a| async move {
                    if i % 2 == 0 && a.number == 1 {
                        Err(reset())
                    } else {
                        Ok(())
                    }
                })
                .await;
        }
        rec.take()
            .into_iter()
            .map(|r| r.call_id)
            .collect::<Vec<_>>()
    };
    let a = run(7).await;
    assert_eq!(a.len(), 8, "five calls, three of them retried once");
    let mut calls = a.clone();
    calls.dedup();
    assert_eq!(
        calls.len(),
        5,
        "one id per call, shared by its attempts: {a:?}"
    );
    let mut distinct = calls.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 5);
    assert_eq!(run(7).await, a, "the same in every run");
    assert_ne!(run(8).await, a, "another seed, other ids");
}

#[tokio::test(start_paused = true)]
async fn gives_up_with_the_last_error_after_max_attempts() {
    let p = Policy::builder("inv").retry(retry(3, 1)).build().unwrap();
    let n = AtomicU32::new(0);
    let err = p
        .call(|_| {
            n.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(reset()) }
        })
        .await
        .unwrap_err();
    assert_eq!(n.load(Ordering::SeqCst), 3);
    assert_eq!(err.attempts, 3);
    assert_eq!(err.reason, StopReason::MaxAttempts);
    assert!(
        err.to_string()
            .starts_with("gave up after 3 attempts (max_attempts): reset"),
        "{err}"
    );
    assert_eq!(
        err.into_inner().unwrap().kind(),
        io::ErrorKind::ConnectionReset
    );
    let stops = p.metrics().stops;
    assert!(stops.contains(&("max_attempts", 1)));
}

use crate::attempt::TestResponse as Resp;

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_not_retried_and_the_answer_is_returned() {
    let p = Policy::builder("api")
        .retry(retry(5, 1))
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let n = AtomicU32::new(0);
    let r = p
        .call(|_| {
            n.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, io::Error>(Resp(404, None)) }
        })
        .await
        .unwrap();
    assert_eq!(r.0, 404);
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert!(p.metrics().stops.contains(&("not_retryable", 1)));
}

/// A retry the budget refuses is no request for the adaptive throttle: the throttle's odds
/// of refusing follow the requests the calls made, not the retries they were refused (each
/// used to count, raising the odds of refusing first attempts through a whole outage).
#[tokio::test(start_paused = true)]
async fn a_retry_the_budget_refuses_is_not_counted_by_the_throttle() {
    use crate::budget::{AdaptiveThrottle, RetryQuota};
    let throttle = AdaptiveThrottle::new(2.0, Duration::from_secs(120)).unwrap();
    let quota = RetryQuota::new(5, 5, 5).unwrap();
    assert!(
        quota.withdraw(Instant::now()),
        "emptied: every retry is refused"
    );
    let p = Policy::builder("t")
        .retry(retry(3, 1))
        .throttle(throttle)
        .budget(quota)
        .build()
        .unwrap();
    for _ in 0..10 {
        let _ = p.call(|_| async { Err::<(), _>(reset()) }).await;
    }
    // Ten requests, none accepted: (10 - 2 x 0) / (10 + 1). With the refused retries
    // counted it read 11 / 12 (and refused some of the first attempts).
    let odds = p
        .inner
        .throttle
        .as_ref()
        .unwrap()
        .rejection_probability(Instant::now());
    assert!((odds - 10.0 / 11.0).abs() < 1e-9, "{odds}");
}

/// Exploration varies the wait the decider chose, but never to before a Retry-After the
/// decider honoured (an explored quarter of a 3 s Retry-After was a retry at 0.75 s).
#[tokio::test(start_paused = true)]
async fn exploration_never_retries_before_the_retry_after() {
    let rec = Arc::new(MemoryRecorder::new(100));
    let p = Policy::builder("api")
        .retry(retry(2, 10))
        .classifier(HttpClassifier)
        .explore(crate::retry::Exploration::new(0.25, 0.25, 1.0).unwrap())
        .recorder(rec.clone())
        .build()
        .unwrap();
    let t0 = Instant::now();
    let r = p
        .call(|_| async { Ok::<_, io::Error>(Resp(429, Some("3"))) })
        .await
        .unwrap();
    assert_eq!(r.0, 429);
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(3),
        "the Retry-After, not 0.75 s"
    );
    let recs = rec.take();
    assert_eq!(recs[1].context.delay, Duration::from_secs(3));
    // A simulation may explore there (no server to offend): a quarter of it.
    let p = Policy::builder("api")
        .retry(retry(2, 10))
        .classifier(HttpClassifier)
        .explore(
            crate::retry::Exploration::new(0.25, 0.25, 1.0)
                .unwrap()
                .below_retry_after(true),
        )
        .build()
        .unwrap();
    let t0 = Instant::now();
    let _ = p
        .call(|_| async { Ok::<_, io::Error>(Resp(429, Some("3"))) })
        .await;
    assert_eq!(t0.elapsed(), 750 * MS);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_and_the_last_answer_returned() {
    let p = Policy::builder("api")
        .retry(retry(2, 10))
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let r = p
        .call(|_| async { Ok::<_, io::Error>(Resp(429, Some("3"))) })
        .await
        .unwrap();
    assert_eq!(r.0, 429, "exhausted: the upstream's own answer");
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn attempts_time_out_and_timeouts_are_retried() {
    let policy = RetryRules::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::ZERO).unwrap())
        .attempt_timeout(AttemptTimeout::Growing {
            first: 100 * MS,
            step: 100 * MS,
        })
        .build()
        .unwrap();
    let p = Policy::builder("slow").retry(policy).build().unwrap();
    let t0 = Instant::now();
    let r = p
        .call(|a| async move {
            tokio::time::sleep(250 * MS).await;
            Ok::<_, io::Error>(a.number)
        })
        .await;
    // 100 ms, 200 ms: timed out; the third (300 ms) answers after 250 ms.
    assert_eq!(r.unwrap(), 3);
    assert_eq!(t0.elapsed(), 550 * MS);

    let err = Policy::builder("slow")
        .retry(
            RetryRules::builder()
                .max_attempts(1)
                .attempt_timeout(AttemptTimeout::Fixed(MS))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
        .call(|_| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, io::Error>(())
        })
        .await
        .unwrap_err();
    assert!(matches!(err.last, AttemptError::Timeout(_)));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stops_the_call_before_it_is_made() {
    let breaker = CircuitBreaker::builder("b")
        .window(SlidingWindow::Count(4))
        .minimum_calls(4)
        .open_for(Duration::from_secs(10))
        .build()
        .unwrap();
    let rec = Arc::new(MemoryRecorder::new(100));
    let p = Policy::builder("b")
        .retry(retry(10, 1))
        .breaker(breaker.clone())
        .recorder(rec.clone())
        .build()
        .unwrap();
    let n = AtomicU32::new(0);
    let err = p
        .call(|_| {
            n.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(reset()) }
        })
        .await
        .unwrap_err();
    assert_eq!(
        n.load(Ordering::SeqCst),
        4,
        "the breaker opened after 4 failures"
    );
    // A record per request sent, none for the ones the breaker refused.
    assert_eq!(rec.take().len(), 4);
    assert_eq!(err.reason, StopReason::CircuitOpen);
    assert!(matches!(err.last, AttemptError::CircuitOpen(_)));
    let err = p
        .call(|_| async { Ok::<_, io::Error>(()) })
        .await
        .unwrap_err();
    assert_eq!(err.attempts, 0);
    assert!(rec.take().is_empty(), "a refused call is not a request");
}

/// A breaker over the last 4 calls, opened by 4 failures for `open`, one probe in
/// HALF_OPEN.
fn open_breaker(open: Duration) -> CircuitBreaker {
    let breaker = CircuitBreaker::builder("b")
        .window(SlidingWindow::Count(4))
        .minimum_calls(4)
        .permitted_calls_in_half_open(1)
        .open_for(open)
        .build()
        .unwrap();
    for _ in 0..4 {
        breaker
            .try_acquire()
            .unwrap()
            .record(crate::breaker::CallOutcome::Failure, MS);
    }
    assert_eq!(breaker.state(), crate::breaker::State::Open);
    breaker
}

/// A probe answered with a permanent failure (a 404: the target answered, about the
/// request) is a probe's verdict that the target is back: the circuit closes. It was
/// ignored, its place given to the next call, and a circuit whose traffic is mostly
/// lookups answering 404 stayed HALF_OPEN for good. While CLOSED a 404 still counts
/// neither way.
#[tokio::test(start_paused = true)]
async fn a_probe_answered_404_closes_the_circuit() {
    use crate::breaker::State;
    let breaker = open_breaker(Duration::from_secs(1));
    let p = Policy::builder("b")
        .retry(retry(1, 1))
        .breaker(breaker.clone())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    let _ = p
        .call(|_| async { Ok::<_, io::Error>(Resp(404, None)) })
        .await;
    assert_eq!(breaker.state(), State::Closed);
    let before = breaker.metrics();
    let _ = p
        .call(|_| async { Ok::<_, io::Error>(Resp(404, None)) })
        .await;
    let after = breaker.metrics();
    assert_eq!(after.window_calls, before.window_calls, "{after:?}");
    assert_eq!(after.ignored_calls, before.ignored_calls + 1, "{after:?}");
    assert_eq!(breaker.state(), State::Closed);
}

/// A call waiting for a HALF_OPEN circuit's probes looks again every 100 ms: it is one
/// refused call, not ten a second (the predictive breaker reads the rate of refused calls
/// as the load waiting for it).
#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_the_circuit_is_refused_once() {
    use crate::breaker::CallOutcome;
    let breaker = open_breaker(Duration::from_secs(1));
    tokio::time::advance(Duration::from_secs(1)).await;
    // The one probe HALF_OPEN allows is out.
    let probe = breaker.try_acquire().unwrap();
    let p = Policy::builder("b")
        .retry(retry(1, 1))
        .breaker(breaker.clone())
        .wait_for_breaker(Duration::from_secs(60))
        .build()
        .unwrap();
    let before = breaker.metrics().not_permitted_calls;
    let (r, _) = tokio::join!(p.call(|_| async { Ok::<_, io::Error>(()) }), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        probe.record(CallOutcome::Success, MS);
    });
    assert!(r.is_ok());
    assert_eq!(breaker.metrics().not_permitted_calls, before + 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_with_time_waits_for_the_breaker_and_one_without_fails_fast() {
    let breaker = open_breaker(Duration::from_secs(3));
    let within = |deadline| {
        Policy::builder("b")
            .retry(retry(1, 1))
            .breaker(breaker.clone())
            .wait_for_breaker(deadline)
            .build()
            .unwrap()
    };
    // 3 s left of OPEN: a call that must start within 2 s fails at once, sending nothing.
    let n = AtomicU32::new(0);
    let started = Instant::now();
    let err = within(Duration::from_secs(2))
        .call(|_| {
            n.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, io::Error>(()) }
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, n.load(Ordering::SeqCst)),
        (StopReason::CircuitOpen, 0)
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
    // One with 5 s waits the 3 s out, is the probe, and closes the circuit.
    let (ok, report) = within(Duration::from_secs(5))
        .call_with_report(|_| {
            n.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, io::Error>(()) }
        })
        .await;
    ok.unwrap();
    assert_eq!((report.attempts, n.load(Ordering::SeqCst)), (1, 1));
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(breaker.state(), crate::breaker::State::Closed);
}

#[tokio::test(start_paused = true)]
async fn callers_waiting_on_half_open_probes_poll_until_it_closes() {
    let breaker = open_breaker(Duration::from_secs(1));
    let p = Policy::builder("b")
        .retry(retry(1, 1))
        .breaker(breaker.clone())
        .wait_for_breaker(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    // The probe takes 250 ms; the second caller, refused while it is out, polls.
    let slow_probe = p.call(|_| async {
        tokio::time::sleep(250 * MS).await;
        Ok::<_, io::Error>(())
    });
    let second = async {
        tokio::time::sleep(1001 * MS).await;
        p.call(|_| async { Ok::<_, io::Error>(()) }).await
    };
    let (a, b) = tokio::join!(slow_probe, second);
    a.unwrap();
    b.unwrap();
    // The probe closed the circuit at 1.25 s; the second caller got in at its next poll.
    assert_eq!(started.elapsed(), 1001 * MS + 3 * BREAKER_POLL);
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_retry_storms() {
    let rec = Arc::new(MemoryRecorder::new(100));
    let p = Policy::builder("b")
        .retry(retry(10, 1))
        .budget(TokenBucket::new(4, 0.1).unwrap())
        .recorder(rec.clone())
        .build()
        .unwrap();
    let n = AtomicU32::new(0);
    let err = p
        .call(|_| {
            n.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(reset()) }
        })
        .await
        .unwrap_err();
    // 4 tokens: failures take them to 3, then 2 — no retry at or below half.
    assert_eq!(n.load(Ordering::SeqCst), 2);
    assert_eq!(err.reason, StopReason::BudgetExhausted);
    // The two requests sent are recorded; the retry the budget refused is not.
    assert_eq!(rec.take().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_rejects_without_calling() {
    let bulkhead = Bulkhead::one_at_a_time("b", Duration::ZERO);
    let held = bulkhead.try_acquire().unwrap();
    let tokens = Arc::new(TokenBucket::new(4, 0.1).unwrap());
    let rec = Arc::new(MemoryRecorder::new(100));
    let p = Policy::builder("b")
        .retry(retry(3, 1))
        .bulkhead(bulkhead.clone())
        .shared_budget(tokens.clone())
        .recorder(rec.clone())
        .build()
        .unwrap();
    let n = AtomicU32::new(0);
    let err = p
        .call(|_| {
            n.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, io::Error>(()) }
        })
        .await
        .unwrap_err();
    assert_eq!(
        n.load(Ordering::SeqCst),
        0,
        "the operation is not asked for a request the bulkhead refused"
    );
    assert_eq!(err.reason, StopReason::BulkheadFull);
    assert!(rec.take().is_empty(), "nor is one recorded");
    assert_eq!(
        tokens.tokens(),
        4.0,
        "nothing was sent: the budget is untouched"
    );
    drop(held);
    p.call(|_| async { Ok::<_, io::Error>(()) }).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn hedges_are_recorded_and_losers_marked_cancelled() {
    let rec = Arc::new(MemoryRecorder::new(100));
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(50 * MS))
        .no_budget()
        .build()
        .unwrap();
    let p = Policy::builder("h")
        .hedge(hedge)
        .recorder(rec.clone())
        .build()
        .unwrap();
    let t0 = Instant::now();
    let v = p
        .call(|a| async move {
            let took = if a.hedge == 0 { 1000 } else { 20 };
            tokio::time::sleep(took * MS).await;
            Ok::<_, io::Error>(a.hedge)
        })
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert_eq!(t0.elapsed(), 70 * MS);
    let mut recs = rec.take();
    recs.sort_by_key(|r| r.hedge);
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].hedge, recs[0].outcome), (0, Outcome::Cancelled));
    assert_eq!(recs[0].outcome_latency, 70 * MS);
    assert_eq!((recs[1].hedge, recs[1].outcome), (1, Outcome::Success));
    assert_eq!(recs[1].outcome_latency, 20 * MS);
}

/// A primary that runs into its timeout in an attempt that fails (no hedge succeeding) is a
/// latency a predicted hedge delay learns from (known only to be at least that long): one
/// call in ten hanging shows in what it has seen, where before only answered calls did,
/// and a hedge whose hedges were not sent or failed never learned that requests hang. A percentile of the
/// time to a call's first answer has no answer to count.
#[tokio::test(start_paused = true)]
async fn a_primary_that_timed_out_teaches_a_predicted_hedge_its_tail() {
    let seen = async |delay: HedgeDelay| {
        let hedge = Hedge::builder().delay(delay).no_budget().build().unwrap();
        let rules = RetryRules::builder()
            .max_attempts(1)
            .attempt_timeout(crate::retry::AttemptTimeout::Fixed(500 * MS))
            .build()
            .unwrap();
        let p = Policy::builder("h")
            .retry(rules)
            .hedge(hedge)
            .build()
            .unwrap();
        for call in 0..100u32 {
            let _ = p
                .call(|a| async move {
                    if a.hedge > 0 {
                        // Every hedge fails at once: nothing but the primary answers.
                        return Err(reset());
                    }
                    let took = if call % 10 == 0 { 60_000 * MS } else { 20 * MS };
                    tokio::time::sleep(took).await;
                    Ok::<_, io::Error>(())
                })
                .await;
        }
        p.hedge().unwrap().latency_quantile(0.99).unwrap()
    };
    let predicted = HedgeDelay::Predicted {
        min_samples: 100,
        fallback: 5 * MS,
    };
    let (p99, n) = seen(predicted).await;
    assert_eq!(n, 100, "every primary recorded");
    assert!(p99 >= 500 * MS, "{p99:?}");
    let (p99, n) = seen(HedgeDelay::Fixed(5 * MS)).await;
    assert_eq!(n, 90, "the answers only");
    assert!(p99 < 500 * MS, "{p99:?}");
}

#[tokio::test(start_paused = true)]
async fn all_hedges_failing_is_one_failed_attempt() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(5 * MS))
        .max_hedges(2)
        .no_budget()
        .build()
        .unwrap();
    let p = Policy::builder("h")
        .retry(retry(1, 1))
        .hedge(hedge)
        .build()
        .unwrap();
    let err = p
        .call(|_| async {
            tokio::time::sleep(20 * MS).await;
            Err::<(), _>(reset())
        })
        .await
        .unwrap_err();
    match err.last {
        AttemptError::AllHedgesFailed(all) => assert_eq!(all.len(), 3),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn retry_contexts_carry_the_trackers_health_not_the_breakers() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let decider = move |ctx: &AttemptContext| {
        log.lock()
            .unwrap()
            .push((ctx.failure_rate, ctx.in_flight, ctx.health_window));
        Decision::Stop(StopReason::MaxAttempts)
    };
    struct D<F>(F);
    impl<F: Fn(&AttemptContext) -> Decision + Send + Sync> RetryDecider for D<F> {
        fn decide(&self, ctx: &AttemptContext) -> Decision {
            (self.0)(ctx)
        }
    }
    let breaker = CircuitBreaker::builder("t").build().unwrap();
    // The breaker's own window has seen three failures the policy never made.
    for _ in 0..3 {
        breaker
            .try_acquire()
            .unwrap()
            .record(crate::breaker::CallOutcome::Failure, 10 * MS);
    }
    let p = Policy::builder("t")
        .decider(Arc::new(D(decider)))
        .breaker(breaker)
        .bulkhead(Bulkhead::builder("t").build().unwrap())
        .track_health(Duration::from_secs(10))
        .build()
        .unwrap();
    p.call(|_| async { Ok::<_, io::Error>(()) }).await.unwrap();
    let _ = p.call(|_| async { Err::<(), _>(reset()) }).await;
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [(Some(0.5), Some(0), Some(Duration::from_secs(10)))],
        "the tracker's one success and one failure, not the breaker's 3 of 4"
    );
    assert_eq!(p.breaker().unwrap().window_failure_rate(), Some(0.8));
}

#[tokio::test(start_paused = true)]
async fn in_flight_is_the_windows_average_concurrency() {
    let rec = Arc::new(MemoryRecorder::new(1000));
    let p = Policy::builder("t")
        .retry(retry(1, 1))
        .recorder(rec.clone())
        .build()
        .unwrap();
    // 40 calls of 1 s each, 10 at a time: 10 s of work per second... over a 10 s window,
    // 40 s of latency is 4 calls in flight on average.
    for _ in 0..4 {
        let calls = (0..10).map(|_| {
            p.call(|_| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, io::Error>(())
            })
        });
        futures_util::future::join_all(calls).await;
    }
    rec.take();
    p.call(|_| async { Ok::<_, io::Error>(()) }).await.unwrap();
    let r = rec.take();
    assert_eq!(r[0].context.in_flight, Some(4));
    assert_eq!(r[0].context.health_window, Some(DEFAULT_HEALTH_WINDOW));
}

#[tokio::test(start_paused = true)]
async fn a_recording_policy_stamps_every_attempt_with_the_targets_health() {
    let rec = Arc::new(MemoryRecorder::new(100));
    let p = Policy::builder("t")
        .retry(retry(2, 100))
        .recorder(rec.clone())
        .build()
        .unwrap();
    // The first attempt of the first call knows nothing yet, except that nothing was in
    // flight.
    p.call(|_| async {
        tokio::time::sleep(20 * MS).await;
        Ok::<_, io::Error>(())
    })
    .await
    .unwrap();
    // Then: fails (reset), retried after 100 ms.
    let _ = p
        .call(|_| async {
            tokio::time::sleep(20 * MS).await;
            Err::<(), _>(reset())
        })
        .await;
    // A 404 is a healthy target's answer: it does not count as a failure.
    let not_found = Policy::builder("u")
        .retry(retry(1, 100))
        .recorder(rec.clone())
        .classifier(crate::attempt::HttpClassifier)
        .build()
        .unwrap();
    let recs = rec.take();
    assert_eq!(recs.len(), 3);
    let ctx: Vec<_> = recs
        .iter()
        .map(|r| (r.context.failure_rate, r.context.in_flight))
        .collect();
    assert_eq!(
        ctx,
        [(None, Some(0)), (Some(0.0), Some(0)), (Some(0.5), Some(0))]
    );
    assert_eq!(recs[1].context.latency_p95.map(|d| d.as_millis()), Some(20));
    // Two concurrent calls: in flight is the window's average (Little's law), not the
    // calls running at the moment — 80 ms of latency over 10 s rounds to none.
    let (a, b) = tokio::join!(
        p.call(|_| async {
            tokio::time::sleep(20 * MS).await;
            Ok::<_, io::Error>(())
        }),
        p.call(|_| async {
            tokio::time::sleep(20 * MS).await;
            Ok::<_, io::Error>(())
        })
    );
    a.unwrap();
    b.unwrap();
    let recs = rec.take();
    let in_flight: Vec<_> = recs.iter().map(|r| r.context.in_flight).collect();
    assert_eq!(
        in_flight,
        [Some(0), Some(0)],
        "80 ms of latency over 10 s: no call in flight on average"
    );
    for _ in 0..3 {
        let _ = not_found
            .call(|_| async { Ok::<_, io::Error>(Resp(404, None)) })
            .await;
    }
    let recs = rec.take();
    assert_eq!(recs[2].context.failure_rate, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn a_policy_without_a_recorder_tracks_health_only_when_asked() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    struct D(Arc<std::sync::Mutex<Vec<Option<f64>>>>);
    impl RetryDecider for D {
        fn decide(&self, ctx: &AttemptContext) -> Decision {
            self.0.lock().unwrap().push(ctx.failure_rate);
            Decision::Stop(StopReason::MaxAttempts)
        }
    }
    let quiet = Policy::builder("t")
        .decider(Arc::new(D(Arc::clone(&log))))
        .build()
        .unwrap();
    let tracked = Policy::builder("t")
        .decider(Arc::new(D(log)))
        .track_health(Duration::from_secs(1))
        .build()
        .unwrap();
    for p in [&quiet, &tracked] {
        let _ = p.call(|_| async { Err::<(), _>(reset()) }).await;
    }
    assert_eq!(seen.lock().unwrap().as_slice(), [None, Some(1.0)]);
    let e = Policy::builder("t")
        .track_health(Duration::ZERO)
        .build()
        .err()
        .unwrap();
    assert_eq!(e.field, "window");
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_the_last_attempt() {
    let policy = every_100ms_within(10, Duration::from_millis(350));
    let p = Policy::builder("d").retry(policy).build().unwrap();
    let t0 = Instant::now();
    let err = p
        .call(|_| async {
            tokio::time::sleep(50 * MS).await;
            Err::<(), _>(reset())
        })
        .await
        .unwrap_err();
    // Attempts at 0, 150, 300 ms; the third is cut to 50 ms by the deadline... and fails
    // at 350 ms exactly; no room for a fourth.
    assert_eq!(err.reason, StopReason::Deadline);
    assert_eq!(err.attempts, 3);
    assert_eq!(t0.elapsed(), 350 * MS);
}

#[test]
fn refuses_names_a_record_could_not_carry() {
    assert_eq!(Policy::builder("").build().err().unwrap().field, "target");
    // Names a shipped record could not carry: refused here, not at the collector.
    let e = Policy::builder("api\tv2").build().err().unwrap();
    assert_eq!(e.field, "target");
    assert!(e.to_string().contains("control characters"), "{e}");
    let long = "x".repeat(300);
    assert_eq!(
        Policy::builder(long.as_str()).build().err().unwrap().field,
        "target"
    );
    let e = Policy::builder("api").label("a\nb").build().err().unwrap();
    assert_eq!(e.field, "policy");
}

/// Durations beyond what any setting means are refused at build: a health window every
/// record would carry past the schema's limit (each refused where it is shipped, and its
/// batch with it), a wait for the breaker of centuries.
#[test]
fn refuses_durations_beyond_any_setting() {
    let e = Policy::builder("api")
        .track_health(Duration::from_secs(2_000_000_000))
        .build()
        .err()
        .unwrap();
    assert_eq!((e.component, e.field), ("health", "window"));
    let e = Policy::builder("api")
        .wait_for_breaker(Duration::MAX)
        .build()
        .err()
        .unwrap();
    assert_eq!(e.field, "wait_for_breaker");
    assert!(
        Policy::builder("api")
            .track_health(Duration::from_secs(60))
            .wait_for_breaker(Duration::from_secs(60))
            .build()
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn records_carry_the_label_the_planned_delay_and_virtual_time() {
    let rec = Arc::new(MemoryRecorder::new(100));
    let p = Policy::builder("t")
        .retry(retry(3, 100))
        .label("exp-test")
        .explore(crate::retry::Exploration::new(2.0, 2.0, 1.0).unwrap())
        .recorder(rec.clone())
        .build()
        .unwrap();
    let _ = p
        .call(|_| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Err::<(), _>(reset())
        })
        .await;
    let recs = rec.take();
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|r| r.policy.as_deref() == Some("exp-test")));
    assert_eq!(recs[0].context.planned_delay, None);
    assert_eq!(recs[1].context.planned_delay, Some(100 * MS));
    assert_eq!(recs[1].context.delay, 200 * MS, "explored: twice the plan");
    // Timestamps follow the (virtual) clock: 10 s per attempt plus the waits.
    assert_eq!(recs[1].started_at_ms - recs[0].started_at_ms, 10_200);
    assert_eq!(recs[2].started_at_ms - recs[1].started_at_ms, 10_200);
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_throttle_sheds_load_the_backend_refuses() {
    let p = Policy::builder("t")
        .retry(retry(1, 1))
        .throttle(
            crate::budget::AdaptiveThrottle::new(2.0, Duration::from_secs(60))
                .unwrap()
                .seeded(5),
        )
        .build()
        .unwrap();
    let sent = AtomicU32::new(0);
    let mut throttled = 0;
    for _ in 0..1000 {
        let r = p
            .call(|_| {
                sent.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(reset()) }
            })
            .await;
        if matches!(
            r,
            Err(CallError {
                reason: StopReason::Throttled,
                ..
            })
        ) {
            throttled += 1;
        }
    }
    assert_eq!(throttled + sent.load(Ordering::SeqCst), 1000);
    assert!(throttled > 800, "{throttled} refused locally");
    assert!(p.metrics().stops.contains(&("throttled", throttled as u64)));
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_take_no_tokens_from_a_token_bucket() {
    // gRFC A6: only failures the classifier calls retryable drain the bucket. Ten 400s
    // must not switch retries off for every call to the upstream.
    let bucket = Arc::new(TokenBucket::new(10, 0.1).unwrap());
    let p = Policy::builder("a6")
        .retry(retry(2, 10))
        .shared_budget(bucket.clone())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    for _ in 0..10 {
        let (r, report) = p
            .call_with_report(|_| async { Ok::<_, io::Error>(Resp(400, None)) })
            .await;
        assert_eq!(r.unwrap().0, 400);
        assert_eq!(report.stopped, Some(StopReason::NotRetryable));
    }
    assert_eq!(bucket.tokens(), 10.0);
    let n = AtomicU32::new(0);
    let (r, report) = p
        .call_with_report(|_| {
            let k = n.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, io::Error>(Resp(if k == 0 { 503 } else { 200 }, None)) }
        })
        .await;
    assert_eq!(r.unwrap().0, 200, "a 503 is still retried");
    assert_eq!(
        report,
        CallReport {
            attempts: 2,
            stopped: None
        }
    );
}

/// The requests `p` sends for one call whose every request answers after 20 ms.
async fn requests_of_a_20ms_call(p: &Policy) -> u32 {
    let sent = AtomicU32::new(0);
    p.call(|_| {
        sent.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(20 * MS).await;
            Ok::<_, io::Error>(())
        }
    })
    .await
    .unwrap();
    sent.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn hedges_are_throttled_by_the_token_bucket() {
    let bucket = Arc::new(TokenBucket::new(10, 0.1).unwrap());
    for _ in 0..5 {
        bucket.record(false);
    }
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(5 * MS))
        .no_budget()
        .build()
        .unwrap();
    let p = Policy::builder("a6")
        .retry(retry(1, 1))
        .shared_budget(bucket.clone())
        .hedge(hedge)
        .build()
        .unwrap();
    assert_eq!(requests_of_a_20ms_call(&p).await, 1, "half empty: no hedge");
    assert_eq!(p.hedge().unwrap().metrics().hedges, 0);
    for _ in 0..10 {
        bucket.record(true);
    }
    assert_eq!(
        requests_of_a_20ms_call(&p).await,
        2,
        "refilled: the hedge goes"
    );
}

/// A hedge the retry budget refuses was not sent: the hedge budget does not count it
/// either (it went on refusing hedges for a window after the retry budget recovered).
#[tokio::test(start_paused = true)]
async fn a_hedge_the_retry_budget_refuses_spends_no_hedge_budget() {
    let bucket = Arc::new(TokenBucket::new(10, 0.1).unwrap());
    for _ in 0..5 {
        bucket.record(false);
    }
    // One hedge a second, over a window of a second: one hedge in all.
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(5 * MS))
        .budget(0.0, 1)
        .latency_window(Duration::from_secs(1))
        .build()
        .unwrap();
    let p = Policy::builder("a6")
        .retry(retry(1, 1))
        .shared_budget(bucket.clone())
        .hedge(hedge)
        .build()
        .unwrap();
    assert_eq!(requests_of_a_20ms_call(&p).await, 1, "half empty: no hedge");
    assert_eq!(p.hedge().unwrap().metrics().window_hedges, 0);
    for _ in 0..10 {
        bucket.record(true);
    }
    // The hedge budget's one hedge is still there to spend, and then spent.
    assert_eq!(requests_of_a_20ms_call(&p).await, 2);
    assert_eq!(p.hedge().unwrap().metrics().window_hedges, 1);
    assert_eq!(
        requests_of_a_20ms_call(&p).await,
        1,
        "the hedge budget is spent"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hedge_follows_a_failed_primary_at_once() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(500 * MS))
        .no_budget()
        .build()
        .unwrap();
    let rec = Arc::new(MemoryRecorder::new(10));
    let p = Policy::builder("h")
        .retry(retry(1, 1))
        .hedge(hedge)
        .recorder(rec.clone())
        .build()
        .unwrap();
    let t0 = Instant::now();
    let v = p
        .call(|a| async move {
            tokio::time::sleep(10 * MS).await;
            if a.hedge == 0 {
                Err(reset())
            } else {
                Ok(a.hedge)
            }
        })
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert_eq!(t0.elapsed(), 20 * MS, "the hedge went at 10 ms, not 500 ms");
    let recs = rec.take();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].outcome, Outcome::Retryable);
    assert_eq!((recs[1].hedge, recs[1].outcome), (1, Outcome::Success));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_limit_stops_with_its_reason() {
    let rules = RetryRules::builder()
        .max_attempts(5)
        .backoff(Backoff::constant(100 * MS).unwrap())
        .jitter(Jitter::None)
        .retry_after(true, Duration::ZERO, Duration::from_secs(10))
        .build()
        .unwrap();
    let p = Policy::builder("ra")
        .retry(rules)
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let t0 = Instant::now();
    let (r, report) = p
        .call_with_report(|_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, io::Error>(Resp(503, Some("3600"))) }
        })
        .await;
    assert_eq!(r.unwrap().0, 503, "the upstream's answer");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no retry an hour early");
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(
        report,
        CallReport {
            attempts: 1,
            stopped: Some(StopReason::RetryAfterTooLong)
        }
    );
    assert!(p.metrics().stops.contains(&("retry_after_too_long", 1)));
}

#[tokio::test(start_paused = true)]
async fn the_report_says_why_a_failed_answer_ended_the_call() {
    let p = Policy::builder("r")
        .retry(retry(3, 10))
        .budget(TokenBucket::new(2, 0.1).unwrap())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let (r, report) = p
        .call_with_report(|_| async { Ok::<_, io::Error>(Resp(503, None)) })
        .await;
    assert_eq!(r.unwrap().0, 503);
    // Two tokens: the first failure leaves one (not more than half): no retry.
    assert_eq!(
        report,
        CallReport {
            attempts: 1,
            stopped: Some(StopReason::BudgetExhausted)
        }
    );
    let (r, report) = p
        .call_with_report(|_| async { Ok::<_, io::Error>(Resp(200, None)) })
        .await;
    assert_eq!(r.unwrap().0, 200);
    assert_eq!(report.stopped, None);
}

#[tokio::test(start_paused = true)]
async fn the_aws_retry_quota_stops_retries_when_drained_and_refills_on_success() {
    use crate::budget::RetryQuota;
    let quota = Arc::new(RetryQuota::new(20, 5, 10).unwrap());
    let p = Policy::builder("aws")
        .retry(retry(3, 1))
        .shared_budget(quota.clone())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    // Each failing call spends two retries (10 units): two calls drain the quota.
    for _ in 0..2 {
        let (_, report) = p
            .call_with_report(|_| async { Ok::<_, io::Error>(Resp(503, None)) })
            .await;
        assert_eq!(report.attempts, 3);
    }
    assert_eq!(quota.available(), 0);
    let (_, report) = p
        .call_with_report(|_| async { Ok::<_, io::Error>(Resp(503, None)) })
        .await;
    assert_eq!(report.attempts, 1);
    assert_eq!(report.stopped, Some(StopReason::BudgetExhausted));
    // A first-attempt success puts one unit back; a successful retry its cost.
    p.call(|_| async { Ok::<_, io::Error>(Resp(200, None)) })
        .await
        .unwrap();
    assert_eq!(quota.available(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_aws_rate_limiter_spaces_attempts_after_throttling() {
    use crate::budget::CubicRateLimiter;
    let p = Policy::builder("aws")
        .retry(retry(1, 1))
        .rate_limiter(CubicRateLimiter::default())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    // 50 calls a second for 2 s: nothing is held back.
    let t0 = Instant::now();
    for _ in 0..100 {
        p.call(|_| async { Ok::<_, io::Error>(Resp(200, None)) })
            .await
            .unwrap();
        tokio::time::sleep(20 * MS).await;
    }
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    // A 429 turns it on at 0.7 × the measured rate (~50/s): 40 back-to-back calls now
    // take about a second instead of no time.
    let _ = p
        .call(|_| async { Ok::<_, io::Error>(Resp(429, None)) })
        .await;
    let t1 = Instant::now();
    for _ in 0..40 {
        p.call(|_| async { Ok::<_, io::Error>(Resp(200, None)) })
            .await
            .unwrap();
    }
    let took = t1.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took <= Duration::from_secs(3),
        "{took:?}"
    );
}

/// `b` with the AWS SDKs' rate limiter, throttled once: it comes on at its floor rate (0.5
/// a second), and 3 s fill its one token.
async fn throttled(b: PolicyBuilder<HttpClassifier>) -> Policy<HttpClassifier> {
    let p = b
        .retry(retry(1, 1))
        .rate_limiter(crate::budget::CubicRateLimiter::default())
        .build()
        .unwrap();
    let _ = p
        .call(|_| async { Ok::<_, io::Error>(Resp(429, None)) })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    p
}

/// A call refused before it is sent (between `refuse` and `allow`), and why; then whether
/// the next call was sent at once (the rate limiter's token there).
async fn refused_then_sent_at_once(
    p: &Policy<HttpClassifier>,
    refuse: impl FnOnce(),
    allow: impl FnOnce(),
) -> (AttemptError<io::Error>, Option<StopReason>, bool) {
    refuse();
    let (r, report) = p
        .call_with_report(|_| async { Ok::<_, io::Error>(Resp(200, None)) })
        .await;
    allow();
    let t0 = Instant::now();
    p.call(|_| async { Ok::<_, io::Error>(Resp(200, None)) })
        .await
        .unwrap();
    (r.unwrap_err().last, report.stopped, t0.elapsed().is_zero())
}

/// A call the open circuit refuses, or the full bulkhead turns away, sent nothing: the
/// rate limiter's token it took is given back, and the next call sends at once instead of
/// waiting two seconds for a new one (the bulkhead's refusal lost it).
#[tokio::test(start_paused = true)]
async fn a_call_refused_before_it_is_sent_gives_the_limiters_token_back() {
    let breaker = CircuitBreaker::builder("aws").build().unwrap();
    let p = throttled(
        Policy::builder("aws")
            .breaker(breaker.clone())
            .classifier(HttpClassifier),
    )
    .await;
    let (last, stopped, at_once) =
        refused_then_sent_at_once(&p, || breaker.force_open(), || breaker.reset()).await;
    assert!(matches!(last, AttemptError::CircuitOpen(_)));
    assert_eq!(stopped, Some(StopReason::CircuitOpen));
    assert!(at_once, "the token was there");
    let bulkhead = Bulkhead::one_at_a_time("aws", Duration::ZERO);
    let p = throttled(
        Policy::builder("aws")
            .bulkhead(bulkhead.clone())
            .classifier(HttpClassifier),
    )
    .await;
    let held = std::cell::RefCell::new(None);
    let (last, stopped, at_once) = refused_then_sent_at_once(
        &p,
        || *held.borrow_mut() = bulkhead.try_acquire_owned_quiet(),
        || *held.borrow_mut() = None,
    )
    .await;
    assert!(matches!(last, AttemptError::BulkheadFull(_)));
    assert_eq!(stopped, Some(StopReason::BulkheadFull));
    assert!(at_once, "the token was there");
}

/// A call dropped while it waits for the bulkhead's room (its caller's own timeout) sent
/// nothing: the rate limiter's token it took goes back with it, and the next call sends at
/// once (the token was lost, and the next call waited two seconds for a new one).
#[tokio::test(start_paused = true)]
async fn a_call_dropped_before_it_is_sent_gives_the_limiters_token_back() {
    let bulkhead = Bulkhead::one_at_a_time("aws", Duration::from_secs(10));
    let p = throttled(
        Policy::builder("aws")
            .bulkhead(bulkhead.clone())
            .classifier(HttpClassifier),
    )
    .await;
    let held = bulkhead.try_acquire_owned_quiet();
    assert!(held.is_some());
    let waiting = p.call(|_| async { Ok::<_, io::Error>(Resp(200, None)) });
    assert!(
        tokio::time::timeout(Duration::from_millis(100), waiting)
            .await
            .is_err(),
        "it waited for room"
    );
    drop(held);
    let t0 = Instant::now();
    p.call(|_| async { Ok::<_, io::Error>(Resp(200, None)) })
        .await
        .unwrap();
    assert!(
        t0.elapsed().is_zero(),
        "the token was there: {:?}",
        t0.elapsed()
    );
}

/// A call whose wait for the rate limiter's next token would take what is left of its
/// deadline stops at once, sending nothing and taking no token.
#[tokio::test(start_paused = true)]
async fn a_limiter_wait_past_the_deadline_is_not_waited() {
    use crate::budget::CubicRateLimiter;
    let rules = RetryRules::builder()
        .max_attempts(1)
        .deadline(Duration::from_millis(5))
        .build()
        .unwrap();
    let p = Policy::builder("aws")
        .retry(rules)
        .rate_limiter(CubicRateLimiter::default())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    // Throttled at once: the limiter comes on at its floor rate (0.5 a second).
    let _ = p
        .call(|_| async { Ok::<_, io::Error>(Resp(429, None)) })
        .await;
    let sent = AtomicU32::new(0);
    let mut stopped = 0;
    let t0 = Instant::now();
    for _ in 0..5 {
        let (r, report) = p
            .call_with_report(|_| {
                sent.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, io::Error>(Resp(200, None)) }
            })
            .await;
        if report.stopped == Some(StopReason::Deadline) {
            assert!(matches!(r.unwrap_err().last, AttemptError::RateLimited));
            stopped += 1;
        }
    }
    // At most the bucket's one token is sent; the others stop without waiting.
    assert!(
        sent.load(Ordering::SeqCst) <= 1,
        "{}",
        sent.load(Ordering::SeqCst)
    );
    assert!(stopped >= 4, "{stopped}");
    assert!(
        t0.elapsed() < Duration::from_millis(5),
        "{:?}",
        t0.elapsed()
    );
}

/// One call whose every request is served at once: its result, its report, and how many
/// requests it sent.
async fn served_once(p: &Policy) -> (Result<&'static str, CallError<io::Error>>, CallReport, u32) {
    let sent = AtomicU32::new(0);
    let (r, report) = p
        .call_with_report(|_| {
            sent.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, io::Error>("served") }
        })
        .await;
    (r, report, sent.into_inner())
}

#[tokio::test(start_paused = true)]
async fn a_refused_call_goes_to_the_retry_decision_and_waits_out_the_circuit() {
    // Retries 300 ms apart, up to 10 attempts; the circuit stays open for 1 s.
    let p = Policy::builder("refused")
        .retry(retry(10, 300))
        .breaker(open_breaker(Duration::from_secs(1)))
        .decide_when_refused(true)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let (r, report, sent) = served_once(&p).await;
    // Refused at 0 (nothing sent) with the circuit open for 1 s more: a retry 300 ms
    // later would only be refused again, so the decider's 300 ms count from when the
    // circuit lets a probe through - sent at 1.3 s.
    assert_eq!(r.unwrap(), "served");
    assert_eq!(sent, 1);
    assert_eq!(t0.elapsed(), 1300 * MS);
    assert_eq!(report.attempts, 2, "a refusal counts as an attempt");
    // Without the option the same call fails at once.
    let fast = Policy::builder("refused")
        .retry(retry(10, 300))
        .breaker(open_breaker(Duration::from_secs(1)))
        .build()
        .unwrap();
    let (r, report, _) = served_once(&fast).await;
    assert!(matches!(r.unwrap_err().last, AttemptError::CircuitOpen(_)));
    assert_eq!(report.stopped, Some(StopReason::CircuitOpen));
}

/// Waiting out an open circuit is budgeted as the retry it is decided as: with nothing
/// left in the quota the refused call fails fast instead, and sends nothing.
#[tokio::test(start_paused = true)]
async fn waiting_out_a_refusal_is_budgeted_as_a_retry() {
    use crate::budget::RetryQuota;
    let quota = Arc::new(RetryQuota::new(5, 5, 5).unwrap());
    let p = Policy::builder("refused")
        .retry(retry(10, 300))
        .breaker(open_breaker(Duration::from_secs(1)))
        .decide_when_refused(true)
        .shared_budget(quota.clone())
        .build()
        .unwrap();
    assert!(quota.withdraw(Instant::now()));
    let (r, report, sent) = served_once(&p).await;
    assert!(matches!(r.unwrap_err().last, AttemptError::CircuitOpen(_)));
    assert_eq!(report.stopped, Some(StopReason::BudgetExhausted));
    assert_eq!(sent, 0);
    // With the units for one retry, it waits the circuit out and is served; the retry
    // that succeeded puts its cost back.
    for _ in 0..5 {
        quota.record_for(&AttemptContext::first("refused"), true);
    }
    let (r, report, sent) = served_once(&p).await;
    assert_eq!(r.unwrap(), "served");
    assert_eq!((report.attempts, report.stopped), (2, None));
    assert_eq!(sent, 1);
    assert_eq!(quota.available(), 5);
}

/// A refused call's wait is pushed to when the circuit lets calls through again: past
/// the call's deadline, nothing is sent (it used to send an attempt with no time left,
/// which failed at once and took a probe's place).
#[tokio::test(start_paused = true)]
async fn a_refusal_that_outlasts_the_deadline_sends_nothing() {
    // Retries 100 ms apart within `deadline`, behind a circuit open for 10 s, with the
    // AWS SDKs' retry quota (5 units a retry).
    let quota = Arc::new(RetryQuota::new(500, 5, 10).unwrap());
    let refused_for_10s = |deadline: Duration| {
        let rules = every_100ms_within(10, deadline);
        Policy::builder("refused")
            .retry(rules)
            .breaker(open_breaker(Duration::from_secs(10)))
            .decide_when_refused(true)
            .shared_budget(quota.clone())
            .build()
            .unwrap()
    };
    let t0 = Instant::now();
    let (r, report, sent) = served_once(&refused_for_10s(Duration::from_secs(5))).await;
    assert!(matches!(r.unwrap_err().last, AttemptError::CircuitOpen(_)));
    assert_eq!(report.stopped, Some(StopReason::Deadline));
    assert_eq!(sent, 0);
    assert_eq!(t0.elapsed(), Duration::ZERO, "it did not wait for nothing");
    // Nor did it pay for the retry it did not make (it paid 5 units a refused call, and
    // a hundred refused calls emptied the quota for the retries that followed).
    assert_eq!(quota.available(), 500);
    // With time for the circuit's 10 s, it waits them out and is served.
    let (r, _, _) = served_once(&refused_for_10s(Duration::from_secs(30))).await;
    assert_eq!(r.unwrap(), "served");
}

/// Waiting for the breaker within the caller's own bound, a call whose retry rules give it
/// less time sends nothing once that time is spent, rather than an attempt with no time.
#[tokio::test(start_paused = true)]
async fn a_breaker_wait_past_the_rules_deadline_sends_nothing() {
    let rules = RetryRules::builder()
        .max_attempts(3)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let p = Policy::builder("refused")
        .retry(rules)
        .breaker(open_breaker(Duration::from_secs(5)))
        .wait_for_breaker(Duration::from_secs(60))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let (r, report, sent) = served_once(&p).await;
    assert!(matches!(r.unwrap_err().last, AttemptError::CircuitOpen(_)));
    assert_eq!(report.stopped, Some(StopReason::Deadline));
    assert_eq!(sent, 0);
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "the 5 s it could not use were not waited"
    );
}

/// A retry refused by the circuit, and planned again, never sent its first plan either:
/// every plan the circuit refused gives back what it paid (a HALF_OPEN circuit whose one
/// probe is out, held to the end: retries 100 ms apart until the deadline).
#[tokio::test(start_paused = true)]
async fn every_retry_the_circuit_refused_gives_back_what_it_paid() {
    let quota = Arc::new(RetryQuota::new(500, 5, 10).unwrap());
    let breaker = open_breaker(Duration::from_secs(1));
    tokio::time::advance(Duration::from_secs(1)).await;
    let _probe = breaker.try_acquire().unwrap();
    let rules = every_100ms_within(10, Duration::from_secs(1));
    let p = Policy::builder("forced")
        .retry(rules)
        .breaker(breaker.clone())
        .decide_when_refused(true)
        .shared_budget(quota.clone())
        .build()
        .unwrap();
    let (r, report, sent) = served_once(&p).await;
    assert!(matches!(r.unwrap_err().last, AttemptError::CircuitOpen(_)));
    assert!(report.attempts > 2, "refused and planned again: {report:?}");
    assert_eq!(sent, 0);
    assert_eq!(quota.available(), 500);
}

/// A call dropped while it waits to retry gives back what the retry paid: the retry
/// quota's units, and (for a decider that books its retries) the booking.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_it_waits_to_retry_gives_the_retry_back() {
    let quota = Arc::new(RetryQuota::new(500, 5, 10).unwrap());
    let p = Policy::builder("dropped")
        .retry(retry(3, 1000))
        .shared_budget(quota.clone())
        .build()
        .unwrap();
    let call = p.call(|_| async { Err::<(), _>(reset()) });
    assert!(
        tokio::time::timeout(100 * MS, call).await.is_err(),
        "dropped in its 1 s backoff"
    );
    assert_eq!(quota.available(), 500);
    // A retry that is sent keeps what it paid (a failure does not pay it back).
    let _ = p.call(|_| async { Err::<(), _>(reset()) }).await;
    assert_eq!(quota.available(), 500 - 2 * 5);
}

/// A call dropped while its retry waits for the bulkhead's room gives the retry back too:
/// nothing was sent (50 such drops used to empty a 500-unit quota of retries after
/// timeouts, in the overload the adaptive composition is built for). A retry that got its
/// room and left keeps what it paid, whether or not its answer came.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_its_retry_waits_for_room_gives_the_retry_back() {
    use crate::budget::RetryQuota;
    let quota = Arc::new(RetryQuota::new(500, 5, 10).unwrap());
    let bulkhead = Bulkhead::one_at_a_time("full", Duration::from_secs(10));
    let p = Policy::builder("full")
        .retry(retry(3, 100))
        .bulkhead(bulkhead.clone())
        .shared_budget(quota.clone())
        .build()
        .unwrap();
    let sent = AtomicU32::new(0);
    let failing = |_| {
        sent.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(reset()) }
    };
    // The first attempt fails, its retry is paid and waits out its backoff; meanwhile the
    // room is taken, so the retry waits for it - and the call is dropped there.
    let held = Arc::new(std::sync::Mutex::new(None));
    let call = p.call(failing);
    let take = {
        let held = Arc::clone(&held);
        let bulkhead = bulkhead.clone();
        async move {
            tokio::time::sleep(MS).await;
            *held.lock().unwrap() = Some(bulkhead.try_acquire_owned_quiet().unwrap());
        }
    };
    let (r, ()) = tokio::join!(tokio::time::timeout(Duration::from_secs(1), call), take);
    assert!(r.is_err(), "dropped while its retry waited for room");
    assert_eq!(sent.load(Ordering::SeqCst), 1, "the retry never left");
    assert_eq!(quota.available(), 500);
    // Room again: a retry that leaves keeps what it paid, even dropped before its answer.
    drop(held.lock().unwrap().take());
    let call = p.call(|a: Attempt| async move {
        if a.number > 1 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Err::<(), _>(reset())
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .is_err()
    );
    assert_eq!(quota.available(), 500 - 5);
}

/// Polls `call` until it waits (it must), lets the clock run `by` on without it - a task
/// that runs late - then ends it.
async fn late_by<T>(call: impl Future<Output = T>, by: Duration) -> T {
    let mut call = std::pin::pin!(call);
    let waiting =
        std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx).is_pending()))
            .await;
    assert!(waiting, "it waits");
    tokio::time::advance(by).await;
    call.await
}

/// A retry whose wait ends past the deadline (its task ran late) sends nothing and gives
/// back what it paid: the call ends with the failure before it, stopped by the deadline.
#[tokio::test(start_paused = true)]
async fn a_retry_late_past_the_deadline_sends_nothing() {
    use crate::budget::RetryQuota;
    let quota = Arc::new(RetryQuota::new(500, 5, 10).unwrap());
    let rules = every_100ms_within(3, Duration::from_millis(500));
    let p = Policy::builder("late")
        .retry(rules)
        .shared_budget(quota.clone())
        .build()
        .unwrap();
    let sent = AtomicU32::new(0);
    // The first attempt fails; its retry waits 100 ms, and the call is not polled again
    // until well past the 500 ms deadline.
    let call = p.call_with_report(|_| {
        sent.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(reset()) }
    });
    let (r, report) = late_by(call, Duration::from_secs(1)).await;
    assert!(matches!(r.unwrap_err().last, AttemptError::Inner(_)));
    assert_eq!(report.stopped, Some(StopReason::Deadline));
    assert_eq!(
        sent.load(Ordering::SeqCst),
        1,
        "nothing sent with no time left"
    );
    assert_eq!(quota.available(), 500, "the retry given back");
}

/// A wait the plan did not include - for the circuit to let calls through, for the rate
/// limiter's token - that ends past the deadline (the task ran late) sends nothing: the
/// call stops on the deadline, gives back the retry it paid for, and takes no HALF_OPEN
/// probe's place with a request that had no time (one was sent with a timeout of zero,
/// failed as a timeout and opened the circuit again).
#[tokio::test(start_paused = true)]
async fn a_wait_for_the_circuit_or_a_token_late_past_the_deadline_sends_nothing() {
    use crate::breaker::State;
    use crate::budget::CubicRateLimiter;
    let quota = Arc::new(RetryQuota::new(500, 5, 10).unwrap());
    let sent = AtomicU32::new(0);
    // `p`'s call, left sleeping well past its deadline.
    let late = async |p: &Policy| {
        let call = p.call_with_report(|_| {
            sent.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, io::Error>("served") }
        });
        late_by(call, Duration::from_secs(5)).await
    };
    // Refused by a circuit open for 300 ms, the retry decision waits it out, within 1 s.
    let p = Policy::builder("refused")
        .retry(every_100ms_within(10, Duration::from_secs(1)))
        .breaker(open_breaker(Duration::from_millis(300)))
        .decide_when_refused(true)
        .shared_budget(quota.clone())
        .build()
        .unwrap();
    let (r, report) = late(&p).await;
    assert!(matches!(r.unwrap_err().last, AttemptError::CircuitOpen(_)));
    assert_eq!(report.stopped, Some(StopReason::Deadline));
    assert_eq!(
        sent.load(Ordering::SeqCst),
        0,
        "nothing sent with no time left"
    );
    assert_eq!(quota.available(), 500, "the retry given back");
    let state = p.breaker().map(CircuitBreaker::state);
    assert_eq!(state, Some(State::HalfOpen), "its probe still to come");
    // Waiting for the circuit within the caller's bound, the same.
    let p = Policy::builder("waits")
        .retry(every_100ms_within(10, Duration::from_secs(1)))
        .breaker(open_breaker(Duration::from_millis(300)))
        .wait_for_breaker(Duration::from_secs(60))
        .build()
        .unwrap();
    let (r, report) = late(&p).await;
    assert!(matches!(r.unwrap_err().last, AttemptError::CircuitOpen(_)));
    assert_eq!(report.stopped, Some(StopReason::Deadline));
    assert_eq!(sent.load(Ordering::SeqCst), 0);
    // Waiting for the rate limiter's next token (throttled once: 0.5 tokens a second).
    let p = Policy::builder("aws")
        .retry(every_100ms_within(1, Duration::from_secs(3)))
        .rate_limiter(CubicRateLimiter::default())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let _ = p
        .call(|_| async { Ok::<_, io::Error>(Resp(429, None)) })
        .await;
    let call = p.call_with_report(|_| {
        sent.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, io::Error>(Resp(200, None)) }
    });
    let (r, report) = late_by(call, Duration::from_secs(5)).await;
    assert!(matches!(r.unwrap_err().last, AttemptError::RateLimited));
    assert_eq!(report.stopped, Some(StopReason::Deadline));
    assert_eq!(sent.load(Ordering::SeqCst), 0);
}

/// One attempt that hangs, within a deadline (and no attempt timeout of its own).
fn hangs_within(deadline: Duration) -> RetryRules {
    RetryRules::builder()
        .max_attempts(1)
        .deadline(deadline)
        .build()
        .unwrap()
}

/// The time a call takes whose every request hangs for a minute.
async fn time_to_give_up(p: &Policy) -> (Duration, u32) {
    let sent = AtomicU32::new(0);
    let t0 = Instant::now();
    let r = p
        .call(|_| {
            sent.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, io::Error>(())
            }
        })
        .await;
    assert!(r.is_err(), "a request that hangs past the deadline fails");
    (t0.elapsed(), sent.load(Ordering::SeqCst))
}

/// The wait for the bulkhead's room is part of the call's time: the request sent after
/// it gets what the deadline leaves, not a fresh attempt timeout (it used to end at
/// 300 ms of waiting plus the whole 350 ms).
#[tokio::test(start_paused = true)]
async fn a_wait_for_the_bulkhead_never_carries_a_call_past_its_deadline() {
    let bulkhead = Bulkhead::one_at_a_time("b", Duration::from_secs(1));
    let p = Policy::builder("b")
        .retry(hangs_within(350 * MS))
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let held = bulkhead.try_acquire().unwrap();
    let (took, sent) = tokio::join!(time_to_give_up(&p), async {
        tokio::time::sleep(300 * MS).await;
        drop(held);
    })
    .0;
    assert_eq!(
        sent, 1,
        "room came within the deadline: the request was sent"
    );
    assert_eq!(took, 350 * MS);
    // Room that comes exactly at the deadline: nothing is sent (a request with no time
    // to run would fail at once, a fake timeout for health and the budget).
    let held = bulkhead.try_acquire().unwrap();
    let before = bulkhead.metrics();
    let (took, sent) = tokio::join!(time_to_give_up(&p), async {
        tokio::time::sleep(350 * MS).await;
        drop(held);
    })
    .0;
    assert_eq!((took, sent), (350 * MS, 0));
    // Counted once, as turned away (it was counted admitted too).
    let after = bulkhead.metrics();
    assert_eq!(after.total_calls, before.total_calls + 1, "{after:?}");
    assert_eq!(after.rejected_calls, before.rejected_calls + 1, "{after:?}");
    // Room that comes only after the deadline: the call waits no longer than it has.
    let _held = bulkhead.try_acquire().unwrap();
    let (took, sent) = time_to_give_up(&p).await;
    assert_eq!((took, sent), (350 * MS, 0));
}

/// With hedging, the primary too is made only once the bulkhead has room (it used to be
/// made before it waited), and the hedge delay counts from when it went: a wait for room
/// is no slow request to hedge.
#[tokio::test(start_paused = true)]
async fn a_hedged_primary_is_made_once_the_bulkhead_has_room() {
    let bulkhead = Bulkhead::builder("b")
        .max_concurrent(2)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(100 * MS))
        .no_budget()
        .build()
        .unwrap();
    let p = Policy::builder("b")
        .retry(retry(1, 1))
        .bulkhead(bulkhead.clone())
        .hedge(hedge)
        .build()
        .unwrap();
    let held = (
        bulkhead.try_acquire().unwrap(),
        bulkhead.try_acquire().unwrap(),
    );
    let t0 = Instant::now();
    let made = std::sync::Mutex::new(Vec::new());
    let call = p.call(|a| {
        made.lock().unwrap().push((a.hedge, t0.elapsed()));
        async {
            tokio::time::sleep(150 * MS).await;
            Ok::<_, io::Error>(())
        }
    });
    let (r, ()) = tokio::join!(call, async {
        tokio::time::sleep(300 * MS).await;
        assert!(
            made.lock().unwrap().is_empty(),
            "nothing is made while the bulkhead is full"
        );
        drop(held);
    });
    r.unwrap();
    assert_eq!(
        *made.lock().unwrap(),
        vec![(0, 300 * MS), (1, 400 * MS)],
        "the primary when room came, the hedge its delay after"
    );
}

/// A hedge sent late gets what the call's deadline leaves (it used to get a whole attempt
/// timeout from its own start: the call ended at 1.5 s).
#[tokio::test(start_paused = true)]
async fn a_hedge_never_carries_a_call_past_its_deadline() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(500 * MS))
        .no_budget()
        .build()
        .unwrap();
    let p = Policy::builder("h")
        .retry(hangs_within(Duration::from_secs(1)))
        .hedge(hedge)
        .build()
        .unwrap();
    let (took, sent) = time_to_give_up(&p).await;
    assert_eq!((took, sent), (Duration::from_secs(1), 2));
}

/// A primary that ran into the deadline leaves the hedge no time: none is sent (it used
/// to go at once with a zero timeout, spending the budgets and recording a timeout).
#[tokio::test(start_paused = true)]
async fn no_hedge_is_sent_when_the_deadline_has_no_time_left() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(500 * MS))
        .no_budget()
        .build()
        .unwrap();
    let rec = Arc::new(MemoryRecorder::new(10));
    let p = Policy::builder("h")
        .retry(hangs_within(300 * MS))
        .hedge(hedge)
        .recorder(rec.clone())
        .build()
        .unwrap();
    let (took, sent) = time_to_give_up(&p).await;
    assert_eq!((took, sent), (300 * MS, 1));
    assert_eq!(rec.take().len(), 1, "no hedge recorded");
}

/// A failure that asked to back off (a 429 with Retry-After) is not followed by a hedge at
/// once, and the attempt's verdict is that failure - not a hedge's later timeout - so the
/// retry decision waits what it asked.
#[tokio::test(start_paused = true)]
async fn a_failure_that_asks_to_back_off_is_not_hedged_at_once_and_is_the_verdict() {
    let hedge = || {
        Hedge::builder()
            .delay(HedgeDelay::Fixed(10 * MS))
            .no_budget()
            .build()
            .unwrap()
    };
    let rules = || {
        RetryRules::builder()
            .max_attempts(2)
            .backoff(Backoff::constant(MS).unwrap())
            .jitter(Jitter::None)
            .retry_after(true, Duration::ZERO, Duration::from_secs(10))
            .attempt_timeout(AttemptTimeout::Fixed(Duration::from_secs(1)))
            .build()
            .unwrap()
    };
    let policy = || {
        Policy::builder("h")
            .retry(rules())
            .hedge(hedge())
            .classifier(HttpClassifier)
            .build()
            .unwrap()
    };
    // Alone: the primary's 429 at 5 ms, before the hedge's delay, is not hedged at once.
    let p = policy();
    let sent = AtomicU32::new(0);
    let t0 = Instant::now();
    let _ = p
        .call(|_| {
            let n = sent.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(5 * MS).await;
                Ok::<_, io::Error>(Resp(if n == 0 { 429 } else { 200 }, Some("3")))
            }
        })
        .await;
    assert_eq!(sent.load(Ordering::SeqCst), 2, "the retry, and no hedge");
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(3) + 10 * MS,
        "Retry-After honoured"
    );
    // With a hedge running that then times out: the 429 is the attempt's verdict, and
    // the retry waits the 3 s it asked for (not the 1 ms backoff after a timeout).
    let p = policy();
    let sent = AtomicU32::new(0);
    let t0 = Instant::now();
    let _ = p
        .call(|a| {
            sent.fetch_add(1, Ordering::SeqCst);
            async move {
                if a.number == 1 && a.hedge == 0 {
                    tokio::time::sleep(50 * MS).await;
                    Ok::<_, io::Error>(Resp(429, Some("3")))
                } else if a.number == 1 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(Resp(200, None))
                } else {
                    Ok(Resp(200, None))
                }
            }
        })
        .await;
    assert_eq!(sent.load(Ordering::SeqCst), 3, "primary, hedge, retry");
    // The hedge went at 10 ms and timed out at 1.01 s; the retry 3 s after that.
    assert_eq!(t0.elapsed(), Duration::from_millis(4_010));
}

/// A failure that asked to back off holds back the hedges after it whichever request
/// failed last, and its answer is the one the caller gets.
#[tokio::test(start_paused = true)]
async fn a_back_off_is_heard_whatever_fails_after_it() {
    let p = Policy::builder("h")
        .retry(retry(1, 1))
        .hedge(
            Hedge::builder()
                .delay(HedgeDelay::Fixed(40 * MS))
                .max_hedges(2)
                .no_budget()
                .build()
                .unwrap(),
        )
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let sent = AtomicU32::new(0);
    // The first hedge (at 40 ms) answers 503 at 65 ms, after the primary's 429 at 50 ms
    // and before the second hedge's delay (80 ms): no second hedge goes out at once, and
    // the 429 is the answer.
    let r = p
        .call(|a| {
            sent.fetch_add(1, Ordering::SeqCst);
            async move {
                if a.hedge == 0 {
                    tokio::time::sleep(50 * MS).await;
                    Ok::<_, io::Error>(Resp(429, Some("3")))
                } else {
                    tokio::time::sleep(25 * MS).await;
                    Ok(Resp(503, None))
                }
            }
        })
        .await;
    assert_eq!(sent.load(Ordering::SeqCst), 2, "the primary and one hedge");
    assert_eq!(r.unwrap().0, 429);
}

#[tokio::test(start_paused = true)]
async fn a_refused_call_the_decider_would_not_retry_fails_with_the_circuit() {
    // One attempt only: a refusal leaves nothing to wait for.
    let p = Policy::builder("refused")
        .retry(retry(1, 300))
        .breaker(open_breaker(Duration::from_secs(1)))
        .decide_when_refused(true)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let (r, report, _) = served_once(&p).await;
    assert!(matches!(r.unwrap_err().last, AttemptError::CircuitOpen(_)));
    assert_eq!(report.stopped, Some(StopReason::MaxAttempts));
    assert_eq!(t0.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn an_adaptive_limit_learns_from_calls_a_breaker_also_watches() {
    use crate::bulkhead::AdaptiveLimit;
    let limit = AdaptiveLimit::builder()
        .initial(4)
        .bounds(1, 100)
        .build()
        .unwrap();
    let p = Policy::builder("limited")
        .retry(retry(1, 0))
        .breaker(CircuitBreaker::builder("limited").build().unwrap())
        .bulkhead(
            Bulkhead::builder("limited")
                .adaptive(limit)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    // Calls at a steady 10 ms, four at a time: the limit in use probes upwards.
    for _ in 0..50 {
        let calls = (0..4).map(|_| {
            p.call(|_| async {
                tokio::time::sleep(10 * MS).await;
                Ok::<_, io::Error>(())
            })
        });
        futures_util::future::join_all(calls).await;
    }
    let limit = p.bulkhead().unwrap().adaptive_limit().unwrap();
    assert!(
        limit.current() > 4,
        "the limit saw the latencies: {}",
        limit.current()
    );
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_composition_follows_a_swapped_model() {
    use crate::model::SharedModel;
    let model = Arc::new(SharedModel::new(Arc::new(|_: &AttemptContext| 0.9)));
    let p = Policy::builder("composed")
        .adaptive(Arc::clone(&model))
        .unwrap()
        .build()
        .unwrap();
    assert!(p.breaker().is_some() && p.bulkhead().is_some() && p.hedge().is_some());
    let attempts_of = |p: &Policy| {
        let p = p.clone();
        async move {
            let n = AtomicU32::new(0);
            let (_, report) = p
                .call_with_report(|_| {
                    let k = n.fetch_add(1, Ordering::SeqCst);
                    async move { if k == 0 { Err(reset()) } else { Ok(()) } }
                })
                .await;
            report
        }
    };
    // The model expects a retry to succeed: the failure is retried.
    let report = attempts_of(&p).await;
    assert_eq!((report.attempts, report.stopped), (2, None));
    // Swapped for a model that expects nothing to succeed: the same failure ends the call.
    model.swap(Arc::new(|_: &AttemptContext| 0.01));
    let report = attempts_of(&p).await;
    assert_eq!(report.attempts, 1);
    assert!(report.stopped.is_some());
}

/// The adaptive composition's retries after timeouts go on only as far as the target's
/// successes pay for them (the AWS quota, charged for nothing else): a target that times
/// out on every call gets 50 retries of them, then none, while its other failures are
/// still retried; ten calls that succeed at once pay for one more.
#[tokio::test(start_paused = true)]
async fn the_adaptive_composition_rations_retries_after_timeouts() {
    use crate::model::SharedModel;
    let model = Arc::new(SharedModel::new(Arc::new(|_: &AttemptContext| 0.9)));
    let p = Policy::builder("overloaded")
        .adaptive(model)
        .unwrap()
        .build()
        .unwrap();
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "attempt timeout");
    // Calls 2 s apart: the attempts of at most two calls (up to 12) in the breaker's 2 s
    // window, fewer than the 20 its rate trigger needs, so that only the quota stops
    // retries.
    let mut retries = 0;
    let mut stopped = None;
    for _ in 0..20 {
        let (_, report) = p
            .call_with_report(|_| async { Err::<(), _>(timed_out()) })
            .await;
        retries += report.attempts - 1;
        stopped = report.stopped;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(retries, 50, "500 units at 10 a retry after a timeout");
    assert_eq!(stopped, Some(StopReason::BudgetExhausted));
    // Other failures are the decider's to price: still retried.
    let n = AtomicU32::new(0);
    let (r, report) = p
        .call_with_report(|_| {
            let k = n.fetch_add(1, Ordering::SeqCst);
            async move { if k == 0 { Err(reset()) } else { Ok(()) } }
        })
        .await;
    assert!(r.is_ok());
    assert_eq!(report.attempts, 2);
    // (A retry that was free puts nothing back.) Ten calls that succeed at once: one more
    // retry after a timeout.
    for _ in 0..10 {
        tokio::time::sleep(200 * MS).await;
        p.call(|_| async { Ok::<_, io::Error>(()) }).await.unwrap();
    }
    let (_, report) = p
        .call_with_report(|_| async { Err::<(), _>(timed_out()) })
        .await;
    assert_eq!(report.attempts, 2);
    assert_eq!(report.stopped, Some(StopReason::BudgetExhausted));
}

/// The model swapped while calls are in flight: 200 calls, one a millisecond, every other
/// one failing its first attempt after 5 ms (half: the breaker's rate trigger stays out of
/// it). Every retry decision taken before the swap followed the first model (every
/// failure so far retried), none after it did (the second model expects nothing to
/// succeed: no call retries, neither after its own failure nor after the circuit refuses
/// it), and the breaker, asked by the new model, opened.
#[tokio::test(start_paused = true)]
async fn the_adaptive_composition_swaps_its_model_under_load() {
    use crate::model::SharedModel;
    let model = Arc::new(SharedModel::new(Arc::new(|_: &AttemptContext| 0.9)));
    let p = Policy::builder("swapped")
        .adaptive(Arc::clone(&model))
        .unwrap()
        .build()
        .unwrap();
    let first_failures = Arc::new(AtomicU32::new(0));
    let calls: Vec<_> = (0..200u64)
        .map(|i| {
            let (p, failures) = (p.clone(), Arc::clone(&first_failures));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i)).await;
                p.call_with_report(|a| {
                    let failures = Arc::clone(&failures);
                    async move {
                        tokio::time::sleep(5 * MS).await;
                        if a.number > 1 || i % 2 == 0 {
                            return Ok(());
                        }
                        if a.hedge == 0 {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(reset())
                    }
                })
                .await
                .1
            })
        })
        .collect();
    // Half a millisecond past 100 ms: the first attempts that failed by then (at whole
    // milliseconds) were decided by then, each in the poll that saw it fail.
    tokio::time::sleep(Duration::from_micros(100_500)).await;
    let before = p.metrics();
    let failed_before = first_failures.load(Ordering::SeqCst);
    model.swap(Arc::new(|_: &AttemptContext| 0.01));
    let mut reports = Vec::new();
    for c in calls {
        reports.push(c.await.unwrap());
    }
    let after = p.metrics();
    assert!(
        failed_before >= 45,
        "failures before the swap: {failed_before}"
    );
    assert_eq!(
        before.retries,
        u64::from(failed_before),
        "every decision before the swap retried"
    );
    // No decision after it did: the retries made are those decided before that were
    // sent (the circuit, opened on the new model's word, refused some; a retry not sent
    // is not counted), each a call of two attempts.
    assert!(after.retries <= before.retries, "{after:?}");
    let retried = reports.iter().filter(|r| r.attempts == 2).count();
    assert_eq!(after.retries, retried as u64, "{reports:?}");
    // No call retried twice; the calls that failed after the swap (their first attempts
    // end 5 ms after they start, from call 96 on) stopped at once.
    assert!(reports.iter().all(|r| r.attempts <= 2), "{reports:?}");
    for (i, r) in reports.iter().enumerate().skip(96) {
        assert!(r.attempts <= 1, "call {i}: {r:?}");
        if i % 2 == 1 {
            assert!(r.stopped.is_some(), "call {i}: {r:?}");
        }
    }
    // The circuit refused nothing before the swap, and opened on the new model's word.
    let refused = |m: &PolicyMetrics| m.breaker.as_ref().unwrap().not_permitted_calls;
    assert_eq!(refused(&before), 0);
    assert!(refused(&after) > 0, "{:?}", after.breaker);
}

/// One attempt, hedged after 5 ms, through a bulkhead of one request that queues callers
/// for `max_wait`.
fn hedged_through_one_room(max_wait: Duration, budget: Arc<TokenBucket>) -> Policy {
    Policy::builder("one-room")
        .retry(retry(1, 0))
        .shared_budget(budget)
        .bulkhead(Bulkhead::one_at_a_time("one-room", max_wait))
        .hedge(
            Hedge::builder()
                .delay(HedgeDelay::Fixed(5 * MS))
                .budget(0.5, 10)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// A HALF_OPEN probe is one request: the hedge waits until the circuit has closed.
#[tokio::test(start_paused = true)]
async fn a_half_open_probe_is_not_hedged() {
    let breaker = CircuitBreaker::builder("probe")
        .window(SlidingWindow::Count(2))
        .minimum_calls(2)
        .permitted_calls_in_half_open(1)
        .open_for(Duration::from_secs(1))
        .build()
        .unwrap();
    let p = Policy::builder("probe")
        .retry(retry(1, 0))
        .breaker(breaker.clone())
        .hedge(
            Hedge::builder()
                .delay(HedgeDelay::Fixed(5 * MS))
                .no_budget()
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    for _ in 0..2 {
        p.call(|_| async { Err::<(), _>(reset()) })
            .await
            .unwrap_err();
    }
    assert_eq!(breaker.state(), crate::breaker::State::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    let sent = AtomicU32::new(0);
    let slow_call = || {
        p.call(|_| {
            sent.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(20 * MS).await;
                Ok::<_, io::Error>(())
            }
        })
    };
    slow_call().await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 1, "the probe alone");
    assert_eq!(breaker.state(), crate::breaker::State::Closed);
    slow_call().await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 3, "closed: hedged after 5 ms");
}

#[tokio::test(start_paused = true)]
async fn a_hedge_never_waits_for_room_in_the_bulkhead() {
    let bucket = Arc::new(TokenBucket::new(10, 0.1).unwrap());
    let before = bucket.tokens();
    let p = hedged_through_one_room(Duration::from_secs(1), bucket.clone());
    let started = AtomicU32::new(0);
    let t0 = Instant::now();
    let got = p
        .call(|a| {
            started.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(if a.hedge == 0 { 100 * MS } else { MS }).await;
                Ok::<_, io::Error>(a.hedge)
            }
        })
        .await
        .unwrap();
    // The primary holds the only room: the hedge is refused at once instead of waiting for
    // it (it would have got it only when the primary answered).
    assert_eq!(got, 0);
    assert_eq!(t0.elapsed(), 100 * MS);
    let m = p.bulkhead().unwrap().metrics();
    assert_eq!(m.rejected_calls, 1, "{m:?}");
    // The operation is called for requests sent only: not for the hedge turned away.
    assert_eq!(started.load(Ordering::SeqCst), 1);
    // Nor is it counted as sent, or paid for by the hedge's budget or the retry budget.
    let h = p.hedge().unwrap().metrics();
    assert_eq!((h.hedges, h.window_hedges), (0, 0), "{h:?}");
    assert!(bucket.tokens() >= before, "the retry budget's tokens");
}

#[tokio::test(start_paused = true)]
async fn a_hedge_the_model_holds_back_spends_no_budget() {
    let bucket = Arc::new(TokenBucket::new(10, 0.1).unwrap());
    let before = bucket.tokens();
    let hedge = Hedge::builder()
        .predict(Arc::new(|_: &AttemptContext| 0.3))
        .delay(HedgeDelay::Fixed(5 * MS))
        .build()
        .unwrap();
    let p = Policy::builder("held")
        .retry(retry(1, 1))
        .shared_budget(bucket.clone())
        .hedge(hedge)
        .build()
        .unwrap();
    let sent = requests_of_a_20ms_call(&p).await;
    // Asked first, the model keeps the hedge: neither the hedge's budget nor the retry
    // budget pays for a hedge that was never sent.
    let m = p.hedge().unwrap().metrics();
    assert_eq!((sent, m.hedges, m.held_back), (1, 0, 1));
    assert_eq!(m.window_hedges, 0, "the hedge budget's ledger");
    assert!(bucket.tokens() >= before, "the retry budget's tokens");
}

#[tokio::test(start_paused = true)]
async fn a_predictive_breaker_is_told_of_each_failure_with_the_retry_after_it() {
    // The model knows what waiting does only for retries: after a reset a retry gets
    // through once 2 s have passed; a fresh call looks as bad after any wait.
    let model = Arc::new(|c: &AttemptContext| match c.error {
        Some(ErrorKind::Reset) if c.delay >= Duration::from_secs(2) => 0.9,
        Some(_) => 0.0,
        None => 0.05,
    });
    let breaker = CircuitBreaker::builder("b")
        .window(SlidingWindow::Count(4))
        .minimum_calls(4)
        .open_for(Duration::from_secs(30))
        .predict(crate::breaker::Prediction::new(model))
        .build()
        .unwrap();
    let p = Policy::builder("b")
        .retry(retry(1, 1))
        .breaker(breaker.clone())
        .build()
        .unwrap();
    for _ in 0..4 {
        p.call(|_| async { Err::<(), _>(reset()) })
            .await
            .unwrap_err();
    }
    assert_eq!(breaker.state(), crate::breaker::State::Open);
    // Open until the retry after a reset is predicted to get through (2 s, within 1/32 of
    // the grid's step after it), not the configured 30 s a fresh call alone would give.
    let err = p
        .call(|_| async { Ok::<_, io::Error>(()) })
        .await
        .unwrap_err();
    let AttemptError::CircuitOpen(open) = err.last else {
        panic!("refused by the breaker: {:?}", err.last);
    };
    let left = open.remaining.unwrap();
    assert!(
        left >= Duration::from_secs(2) && left <= Duration::from_millis(2_020),
        "{left:?}"
    );
}

/// A decider that explores where it judged no retry worth it: the retry it draws is
/// recorded with its propensity, and the attempts it did not explore carry none.
#[tokio::test(start_paused = true)]
async fn an_explored_retry_is_recorded_with_its_propensity() {
    use crate::retry::ModelDecider;
    let rec = Arc::new(MemoryRecorder::new(100));
    let decider = ModelDecider::builder()
        .model(Arc::new(|_: &AttemptContext| 0.01))
        .explore(1.0)
        .max_attempts(2)
        .seed(7)
        .build()
        .unwrap();
    let n = decider.grid().len() as f64;
    let p = Policy::builder("explored")
        .decider(Arc::new(decider))
        .recorder(rec.clone())
        .build()
        .unwrap();
    let k = AtomicU32::new(0);
    let (_, report) = p
        .call_with_report(|_| {
            let first = k.fetch_add(1, Ordering::SeqCst) == 0;
            async move { if first { Err(reset()) } else { Ok(()) } }
        })
        .await;
    assert_eq!((report.attempts, report.stopped), (2, None));
    let recs = rec.take();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].context.explore_propensity, None);
    let propensity = recs[1].context.explore_propensity.expect("explored");
    // One wait of those weighed (the grid's within the call's time), drawn uniformly:
    // one over a whole number of waits, at most the grid's.
    let waits = 1.0 / propensity;
    assert!(
        (waits - waits.round()).abs() < 1e-9 && (2.0..=n).contains(&waits),
        "{propensity}: 1/{waits} of a grid of {n}"
    );
}

/// A model decider booking its retries in `calendar`: the target is predicted back after a
/// second (so every retry waits at least that long), at most `max` attempts.
fn booking_decider(calendar: &Arc<crate::retry::RetryCalendar>, max: u32) -> Arc<dyn RetryDecider> {
    let back_in_a_second = Arc::new(|c: &AttemptContext| {
        if c.delay >= Duration::from_secs(1) {
            0.95
        } else {
            0.0
        }
    });
    Arc::new(
        crate::retry::ModelDecider::builder()
            .model(back_in_a_second)
            .max_attempts(max)
            .calendar(Arc::clone(calendar))
            .seed(7)
            .build()
            .unwrap(),
    )
}

/// The retries booked at `target` in the minute from `t0`.
fn booked_from(calendar: &crate::retry::RetryCalendar, target: &str, t0: Instant) -> u32 {
    (0..240)
        .map(|k| calendar.booked(target, t0 + crate::retry::calendar::SLOT * k))
        .sum()
}

#[tokio::test(start_paused = true)]
async fn a_retry_the_budget_refuses_leaves_no_booking_behind() {
    let calendar = Arc::new(crate::retry::RetryCalendar::new());
    let p = Policy::builder("b")
        .decider(booking_decider(&calendar, 10))
        .budget(TokenBucket::new(4, 0.1).unwrap())
        .build()
        .unwrap();
    let t0 = Instant::now();
    let n = AtomicU32::new(0);
    let err = p
        .call(|_| {
            n.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(reset()) }
        })
        .await
        .unwrap_err();
    // The budget let one retry through and refused the next (as in the storm test above):
    // only the retry made is booked, so no other caller weighs the load of the refused one.
    assert_eq!(err.reason, StopReason::BudgetExhausted);
    assert_eq!(n.load(Ordering::SeqCst), 2);
    assert_eq!(booked_from(&calendar, "b", t0), 1);
}

#[tokio::test(start_paused = true)]
async fn an_explored_retry_is_booked_where_it_starts() {
    let calendar = Arc::new(crate::retry::RetryCalendar::new());
    let rec = Arc::new(MemoryRecorder::new(10));
    let p = Policy::builder("x")
        .decider(booking_decider(&calendar, 2))
        .explore(crate::retry::Exploration::new(2.0, 2.0, 1.0).unwrap())
        .recorder(rec.clone())
        .build()
        .unwrap();
    let t0 = Instant::now();
    let _ = p.call(|_| async { Err::<(), _>(reset()) }).await;
    let recs = rec.take();
    assert_eq!(recs.len(), 2);
    let planned = recs[1].context.planned_delay.unwrap();
    assert!(planned >= Duration::from_secs(1), "{planned:?}");
    assert_eq!(recs[1].context.delay, planned * 2);
    // Decided at t0 (the attempt failed at once): booked twice the plan ahead, not at it.
    assert_eq!(calendar.booked("x", t0 + planned * 2), 1);
    assert_eq!(calendar.booked("x", t0 + planned), 0);
    assert_eq!(booked_from(&calendar, "x", t0), 1);
}

/// A FORCED_OPEN circuit has no end to wait for (an operator holds it): a call that may
/// wait for the breaker fails at once, sending nothing, instead of polling until its
/// deadline.
#[tokio::test(start_paused = true)]
async fn a_forced_open_circuit_is_not_waited_for() {
    let breaker = CircuitBreaker::builder("b").build().unwrap();
    breaker.force_open();
    let p = Policy::builder("b")
        .retry(retry(1, 1))
        .breaker(breaker.clone())
        .wait_for_breaker(Duration::from_secs(30))
        .build()
        .unwrap();
    let n = AtomicU32::new(0);
    let started = Instant::now();
    let err = p
        .call(|_| {
            n.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, io::Error>(()) }
        })
        .await
        .unwrap_err();
    assert_eq!(err.reason, StopReason::CircuitOpen);
    assert_eq!(n.load(Ordering::SeqCst), 0);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "it polled the forced circuit"
    );
    // Nor does one whose refusals go to the retry decision: nothing to plan a retry for.
    let p = Policy::builder("b")
        .retry(retry(5, 100))
        .breaker(breaker.clone())
        .decide_when_refused(true)
        .build()
        .unwrap();
    let (r, report) = p
        .call_with_report(|_| {
            n.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, io::Error>(()) }
        })
        .await;
    assert_eq!(r.unwrap_err().reason, StopReason::CircuitOpen);
    assert_eq!((report.attempts, n.load(Ordering::SeqCst)), (0, 0));
    assert_eq!(started.elapsed(), Duration::ZERO, "it waited out retries");
}

/// `retries` counts retries sent: one planned whose call is dropped during its wait (or
/// that is otherwise never sent) is not one. And a permanent failure is a failed attempt
/// like any other.
#[tokio::test(start_paused = true)]
async fn retries_count_what_was_sent_and_failed_attempts_count_permanent_ones() {
    let p = Policy::builder("r").retry(retry(3, 100)).build().unwrap();
    let call = p.call(|_| async { Err::<(), _>(reset()) });
    assert!(
        tokio::time::timeout(50 * MS, call).await.is_err(),
        "dropped in its wait"
    );
    let m = p.metrics();
    assert_eq!((m.retries, m.failed_attempts), (0, 1), "{m:?}");
    // Sent, the retry counts.
    let n = AtomicU32::new(0);
    p.call(|_| {
        let k = n.fetch_add(1, Ordering::SeqCst);
        async move { if k == 0 { Err(reset()) } else { Ok(()) } }
    })
    .await
    .unwrap();
    assert_eq!(p.metrics().retries, 1);

    let http = Policy::builder("h")
        .retry(retry(3, 1))
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let _ = http
        .call(|_| async { Ok::<_, io::Error>(Resp(404, None)) })
        .await;
    let m = http.metrics();
    assert_eq!((m.retries, m.failed_attempts), (0, 1), "{m:?}");
}

/// A call the adaptive throttle refuses is sent nowhere: it earns the budget no retries
/// (each used to be deposited first, so a throttle refusing most calls let a ratio budget
/// allow retries for calls never made).
#[tokio::test(start_paused = true)]
async fn a_call_the_throttle_refuses_earns_no_retries() {
    use crate::budget::{AdaptiveThrottle, RatioBudget, RetryBudget};
    let budget = Arc::new(RatioBudget::new(Duration::from_secs(10), 0, 1.0).unwrap());
    let p = Policy::builder("t")
        .retry(retry(1, 1))
        .throttle(
            AdaptiveThrottle::new(2.0, Duration::from_secs(60))
                .unwrap()
                .seeded(5),
        )
        .shared_budget(budget.clone())
        .build()
        .unwrap();
    let sent = AtomicU32::new(0);
    for _ in 0..200 {
        let _ = p
            .call(|_| {
                sent.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(reset()) }
            })
            .await;
    }
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent < 150, "the throttle refused some: {sent} sent");
    // A ratio of one: as many retries as calls sent, not as calls made.
    let now = Instant::now();
    let allowed = (0..200).take_while(|_| budget.withdraw(now)).count();
    assert_eq!(allowed as u32, sent);
}
