//! The cost of a learned decision: one p(success) of the shipped model, and one retry
//! decision of the model-driven decider (a 32-wait grid) beside the rule-based ones, on
//! contexts after the failures the deciders meet most.
//!
//! And `Policy::call` with each decider on a call that succeeds at once (`call-ok`).
//!
//! Run: `cargo bench -p retrywise-benches --bench decide`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use retrywise::attempt::{AttemptContext, ErrorKind};
use retrywise::model::{LogisticModel, ModelArtifact, SuccessModel};
use retrywise::retry::{ModelDecider, RetryDecider, RetryRules, RuleBasedAdaptive};

fn shipped() -> Arc<LogisticModel> {
    let text = include_str!("../models/default/1/model.json");
    let artifact: ModelArtifact = serde_json::from_str(text).unwrap();
    Arc::new(LogisticModel::from_artifact(&artifact).unwrap())
}

/// After a 503, a 429 with Retry-After, and a timeout, with the target's health known.
fn contexts() -> Vec<AttemptContext> {
    let mut out = Vec::new();
    for (kind, status, ra) in [
        (ErrorKind::Http503, Some(503), None),
        (
            ErrorKind::Http429,
            Some(429),
            Some(Duration::from_millis(800)),
        ),
        (ErrorKind::Timeout, None, None),
    ] {
        let mut c = AttemptContext::first("payments");
        c.attempt = 2;
        c.error = Some(kind);
        c.status = status;
        c.retry_after = ra;
        c.latency = Some(Duration::from_millis(40));
        c.elapsed = Duration::from_millis(45);
        c.failure_rate = Some(0.2);
        c.latency_p95 = Some(Duration::from_millis(120));
        c.in_flight = Some(12);
        c.failure_rate_recent = Some(0.3);
        c.permanent_rate = Some(0.0);
        c.since_success = Some(Duration::from_millis(300));
        out.push(c);
    }
    out
}

/// The next of `n` contexts in turn (a `%` by a length known only at run time is a
/// division, tens of cycles the loop would wait on before its next load).
fn next(i: usize, n: usize) -> usize {
    if i + 1 == n { 0 } else { i + 1 }
}

fn decide(c: &mut Criterion) {
    let model = shipped();
    let ctxs = contexts();
    let mut g = c.benchmark_group("decide");
    g.bench_function("p_success", |b| {
        let mut i = 0;
        b.iter(|| {
            i = next(i, ctxs.len());
            black_box(model.p_success(black_box(&ctxs[i])))
        });
    });
    // Every context weighed by the model over the whole grid (none left to the rules for
    // lack of support, which would measure the rules).
    let learned = ModelDecider::builder()
        .model(model.clone())
        .deadline(Duration::from_secs(10))
        .min_support(0)
        .build()
        .unwrap();
    for c in &ctxs {
        let w = learned.weigh(c);
        assert!(!w.fell_back() && !w.alternatives.is_empty(), "{c:?}");
    }
    // The same without a retry calendar: what pricing the load of booked retries costs.
    let alone = ModelDecider::builder()
        .model(model.clone())
        .deadline(Duration::from_secs(10))
        .min_support(0)
        .without_calendar()
        .build()
        .unwrap();
    let adaptive = RuleBasedAdaptive::new()
        .with_model(model.clone())
        .deadline(Duration::from_secs(10))
        .unwrap();
    let rules = RetryRules::builder().max_attempts(4).build().unwrap();
    let cases: [(&str, &dyn RetryDecider); 4] = [
        ("model-decider-32", &learned),
        ("model-decider-32-without-calendar", &alone),
        ("rule-adaptive-with-model", &adaptive),
        ("retry-rules", &rules),
    ];
    for (name, d) in cases {
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = next(i, ctxs.len());
                black_box(d.decide(black_box(&ctxs[i])))
            });
        });
    }
    // After a refused connection (the connect-specific age features in every p, and the
    // refusal valuation): a refusal 2 s into an outage, health known.
    let mut refused = ctxs[0].clone();
    refused.error = Some(ErrorKind::Connect);
    refused.status = None;
    refused.latency = Some(Duration::from_millis(1));
    refused.failure_rate = Some(0.6);
    refused.failure_rate_recent = Some(1.0);
    refused.since_success = Some(Duration::from_secs(2));
    let w = learned.weigh(&refused);
    assert!(!w.fell_back() && !w.alternatives.is_empty(), "{refused:?}");
    g.bench_function("model-decider-32-refused", |b| {
        b.iter(|| black_box(learned.decide(black_box(&refused))))
    });
    g.finish();
}

async fn ok1() -> Result<u64, retrywise_benches::BenchError> {
    Ok(1)
}

/// `Policy::call` on a call that succeeds at once, with each decider: the model is consulted
/// only after a failure, so the learned decider must add nothing here.
fn call(c: &mut Criterion) {
    let model = shipped();
    let deciders: [(&str, Arc<dyn RetryDecider>); 3] = [
        (
            "model-decider",
            Arc::new(
                ModelDecider::builder()
                    .model(model.clone())
                    .deadline(Duration::from_secs(10))
                    .build()
                    .unwrap(),
            ),
        ),
        (
            "rule-adaptive-with-model",
            Arc::new(
                RuleBasedAdaptive::new()
                    .with_model(model.clone())
                    .deadline(Duration::from_secs(10))
                    .unwrap(),
            ),
        ),
        (
            "retry-rules",
            Arc::new(RetryRules::builder().max_attempts(4).build().unwrap()),
        ),
    ];
    let rt = retrywise_benches::runtime();
    let mut g = c.benchmark_group("call-ok");
    for (name, d) in deciders {
        let p = retrywise::policy::Policy::builder("bench")
            .decider(d)
            .build()
            .unwrap();
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let t = std::time::Instant::now();
                    for _ in 0..n {
                        black_box(p.call(|_| ok1()).await.unwrap());
                    }
                    t.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decide, call);
criterion_main!(benches);
