//! Retry storms, end to end: the same outage under open-loop load, with and without
//! budgets and breakers.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::time::Duration;

use retrywise::attempt::HttpClassifier;
use retrywise::breaker::{CircuitBreaker, SlidingWindow};
use retrywise::budget::{RatioBudget, TokenBucket};
use retrywise::policy::Policy;
use retrywise::retry::{Backoff, RetryRules};
use retrywise_tests::open_loop;

const MS: Duration = Duration::from_millis(1);

fn retry() -> RetryRules {
    RetryRules::builder()
        .max_attempts(4)
        .backoff(Backoff::exponential(50 * MS, 2.0, Duration::from_secs(1)).unwrap())
        .seed(1)
        .build()
        .unwrap()
}

const CALLS: u32 = 400;
const EVERY: Duration = Duration::from_millis(25);
const OUTAGE: Duration = Duration::from_secs(5);
/// Calls offered while the upstream is down.
const CALLS_IN_OUTAGE: u32 = 200;

#[tokio::test(start_paused = true)]
async fn without_a_budget_retries_multiply_the_load_of_an_outage() {
    let p = Policy::builder("t")
        .retry(retry())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let run = open_loop(p, CALLS, EVERY, OUTAGE).await;
    // Every call offered during the outage makes all 4 attempts.
    assert!(
        run.requests_during_outage >= 4 * CALLS_IN_OUTAGE - 40,
        "{run:?}"
    );
    // Half the calls meet the outage and make 4 requests: (4 × 200 + 200) / 400 ≈ 2.5.
    assert!(run.amplification() > 2.25, "{run:?}");
    assert!(run.successes >= CALLS - CALLS_IN_OUTAGE, "{run:?}");
}

#[tokio::test(start_paused = true)]
async fn a_token_bucket_keeps_the_outage_load_near_the_offered_load() {
    let p = Policy::builder("t")
        .retry(retry())
        .budget(TokenBucket::new(10, 0.1).unwrap())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let run = open_loop(p, CALLS, EVERY, OUTAGE).await;
    // gRPC throttling: at most max_tokens / 2 retries before the bucket is at half.
    assert!(
        run.requests_during_outage <= CALLS_IN_OUTAGE + 10,
        "{run:?}"
    );
    assert!(
        run.successes >= CALLS - CALLS_IN_OUTAGE,
        "recovery is not hindered: {run:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_ratio_budget_caps_retries_at_its_share() {
    let p = Policy::builder("t")
        .retry(retry())
        .budget(RatioBudget::new(Duration::from_secs(10), 1, 0.2).unwrap())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let run = open_loop(p, CALLS, EVERY, OUTAGE).await;
    let retries = run.requests_during_outage - CALLS_IN_OUTAGE;
    // 20 % of 200 calls + 1/s × 10 s: at most that, and (every failure wanting retries)
    // its share spent, not refused outright.
    assert!(
        f64::from(retries) <= 0.2 * f64::from(CALLS_IN_OUTAGE) + 10.0 + 1.0,
        "{run:?}"
    );
    assert!(
        f64::from(retries) >= 0.2 * f64::from(CALLS_IN_OUTAGE),
        "{run:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_breaker_sheds_the_outage_and_recovers() {
    let breaker = CircuitBreaker::builder("t")
        .window(SlidingWindow::Count(20))
        .minimum_calls(10)
        .open_for(Duration::from_millis(500))
        .permitted_calls_in_half_open(3)
        .build()
        .unwrap();
    let p = Policy::builder("t")
        .retry(retry())
        .breaker(breaker.clone())
        .classifier(HttpClassifier)
        .build()
        .unwrap();
    let run = open_loop(p, CALLS, EVERY, OUTAGE).await;
    assert!(
        run.requests_during_outage < CALLS_IN_OUTAGE,
        "most outage calls fail fast: {run:?}"
    );
    assert!(
        run.successes >= CALLS - CALLS_IN_OUTAGE - 20,
        "closes after the outage: {run:?}"
    );
    assert_eq!(breaker.state(), retrywise::breaker::State::Closed);
}
