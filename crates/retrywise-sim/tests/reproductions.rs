//! The field's known results, reproduced in virtual time with fixed seeds.

// Helpers outside `#[test]` functions unwrap too: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use retrywise_sim::driver::{RunOptions, run};
use retrywise_sim::policies::find;
use retrywise_sim::scenario::Scenario;
use retrywise_sim::score::{Score, score};

fn board(scenario: &str, policies: &[&str], seed: u64) -> Vec<Score> {
    let scenario = Arc::new(Scenario::load(scenario).unwrap());
    let mut opts = RunOptions::new(Arc::clone(&scenario));
    opts.seed = seed;
    policies
        .iter()
        .map(|p| score(&run(find(p).unwrap(), &opts).unwrap(), &scenario, opts.rps))
        .collect()
}

/// Bronson et al., "Metastable Failures in Distributed Systems" (HotOS 2021): a trigger
/// pushes a system at 93 % of capacity into overload; clients that retry keep it there
/// after the trigger ends, while clients whose retries are budgeted let it recover.
#[test]
fn metastable_retries_sustain_the_collapse_and_a_budget_recovers() {
    for seed in [1, 2] {
        let s = board("metastable", &["none", "retry-1s", "budget"], seed);
        let (none, retry, budget) = (&s[0], &s[1], &s[2]);
        assert_eq!(
            retry.recovery_s, None,
            "seed {seed}: retrying once after 1 s recovered: {retry:?}"
        );
        let recovered = budget
            .recovery_s
            .unwrap_or_else(|| panic!("seed {seed}: budget never recovered: {budget:?}"));
        // The queue built up during the 10 s trigger takes a while to drain at 93 % load.
        assert!(recovered < 80.0, "seed {seed}: budget took {recovered} s");
        assert!(
            budget.success_rate > retry.success_rate + 0.2,
            "seed {seed}: budget {:.3} vs retry-1s {:.3}",
            budget.success_rate,
            retry.success_rate
        );
        // Without retries the system also recovers: the retries are what sustain it.
        assert!(none.recovery_s.is_some(), "seed {seed}: {none:?}");
        assert!(
            retry.peak_load_ratio > 1.5,
            "seed {seed}: the retry storm should show: {retry:?}"
        );
    }
}

/// Dean & Barroso, "The Tail at Scale" (CACM 2013): a hedged request sent after the p95
/// latency cuts the far tail by an order of magnitude for a few percent more requests.
#[test]
fn stragglers_hedging_at_p95_cuts_the_far_tail_tenfold() {
    for seed in [1, 2] {
        let s = board("stragglers", &["none", "hedge-p95"], seed);
        let (none, hedge) = (&s[0], &s[1]);
        let (base, hedged) = (none.p999_ms.unwrap(), hedge.p999_ms.unwrap());
        assert!(
            hedged * 10.0 <= base,
            "seed {seed}: p99.9 {base} ms → {hedged} ms"
        );
        assert!(
            hedge.attempts_per_request <= 1.05,
            "seed {seed}: {:.3} attempts per request",
            hedge.attempts_per_request
        );
        assert!(hedge.success_rate >= none.success_rate, "seed {seed}");
    }
}

/// Brooker, "Exponential Backoff and Jitter" (AWS Architecture Blog, 2015): contending
/// clients that back off without jitter collide again in lockstep; full jitter spreads
/// them out and finishes the work with fewer calls.
#[test]
fn contention_full_jitter_needs_fewer_calls_than_plain_exponential_backoff() {
    for seed in [1, 2, 3] {
        let s = board("contention", &["exp", "exp-full-jitter"], seed);
        let (exp, jitter) = (&s[0], &s[1]);
        assert!(
            jitter.attempts_per_request < exp.attempts_per_request,
            "seed {seed}: calls per write {:.2} (full jitter) vs {:.2} (exponential)",
            jitter.attempts_per_request,
            exp.attempts_per_request
        );
        // And it gets the writes done: calls per successful write are lower still.
        let per_success =
            |s: &Score| s.attempts as f64 / (s.success_rate * s.requests as f64).max(1.0);
        assert!(
            per_success(jitter) * 5.0 < per_success(exp),
            "seed {seed}: {jitter:?} vs {exp:?}"
        );
    }
}

/// A dependency that slows down 20 times for 15 s with room for every call
/// (`slowdown-mild`, outside the built-in suite): the adaptive concurrency limit of
/// `adaptive-full` sees the slowdown in the calls that started before the load rose, takes
/// their latency as the baseline, and turns away next to none of the calls the upstream
/// serves - without that, Gradient2 (with the slope rule) reads the slow latency as
/// queueing once the load follows it and holds the calls to its floor (94 % served).
#[test]
fn a_slow_dependency_with_room_keeps_its_calls() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/scenarios/stress/slowdown-mild.toml"
    );
    for seed in [1, 2] {
        let s = board(path, &["adaptive", "adaptive-full"], seed);
        let (alone, full) = (&s[0], &s[1]);
        assert!(
            full.success_rate >= alone.success_rate - 0.015,
            "seed {seed}: adaptive-full {:.4} vs the decider alone {:.4}",
            full.success_rate,
            alone.success_rate
        );
    }
}

/// `blips` at twice its load (400 calls a second): its 1 % of hung requests hold an upstream
/// worker for 30 s, so the hung ones alone fill some 120 of the 150 workers, and retries
/// that add hangs tip it into a queue longer than the 1 s timeout. The model-driven policy
/// rations its retries after timeouts (the AWS quota, `RetryQuota::after_timeouts`): it
/// serves about as many calls as no retries at all, where without the quota it served six
/// points fewer on these seeds (82.5 % against 88.3 %) — a retry storm of its own.
#[test]
fn an_overloaded_upstream_is_not_stormed_by_the_adaptive_policy() {
    let model = retrywise_sim::policies::load_model(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/default"
    )))
    .unwrap();
    let scenario = Arc::new(Scenario::load("blips").unwrap());
    let mean = |policy: &str| {
        let total: f64 = [21, 22]
            .into_iter()
            .map(|seed| {
                let mut opts = RunOptions::new(Arc::clone(&scenario));
                opts.seed = seed;
                opts.rps = 2.0 * scenario.rps;
                opts.requests = (opts.rps * scenario.duration_s).round() as u64;
                opts.model = Some(model.clone());
                score(
                    &run(find(policy).unwrap(), &opts).unwrap(),
                    &scenario,
                    opts.rps,
                )
                .success_rate
            })
            .sum();
        total / 2.0
    };
    let (none, adaptive) = (mean("none"), mean("adaptive"));
    assert!(
        adaptive >= none - 0.01,
        "adaptive {adaptive:.4} against no retries {none:.4}"
    );
}
