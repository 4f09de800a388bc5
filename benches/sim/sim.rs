//! Speed of the simulator.
//!
//! - Virtual time: logical requests per second of wall time for one policy on one thread,
//!   on the built-in scenarios (target: ≥ 200 k/s).
//! - HTTP: attempts per second over loopback, driver and upstream in this process, on a
//!   scenario with ample capacity and 2 ms replies, at offered rates around the target
//!   (≥ 10 k attempts/s) — a rate counts as sustained when the median end-to-end latency
//!   stays under 4× the upstream's.
//!
//! Run: `cargo bench -p retrywise-sim-benches`. Writes `sim.json` under
//! `$CARGO_TARGET_DIR` (or `target/`) and prints a table. Each figure is the median of
//! three runs; this machine is shared, so read the spread too.

#![allow(missing_docs)]

use std::sync::Arc;

use retrywise_sim::driver::{Mode, RunOptions, run};
use retrywise_sim::policies::find;
use retrywise_sim::scenario::Scenario;
use retrywise_sim::score::score;

const FAST: &str = r#"
name = "fast"
description = "ample capacity, 2 ms replies, 5 % 503s"
rps = 10000
duration_s = 10
deadline_ms = 5000
attempt_timeout_ms = 1000

[upstream]
workers = 100000
[upstream.latency]
median_ms = 2
sigma = 0.2
[upstream.errors]
http_503 = 0.05
"#;

struct Measure {
    what: String,
    rate: Vec<f64>,
    p50_ms: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let mut rows: Vec<Measure> = Vec::new();

    for (scenario, policy) in [
        ("blips", "exp-full-jitter"),
        ("metastable", "retry-1s"),
        ("stragglers", "hedge-p95"),
        ("mix", "budget"),
    ] {
        let what = format!("virtual {scenario} / {policy}");
        if !wanted(&what) {
            continue;
        }
        let scenario = Arc::new(Scenario::load(scenario).expect("built-in scenario"));
        let mut opts = RunOptions::new(Arc::clone(&scenario));
        opts.requests = 100_000;
        let spec = find(policy).expect("known policy");
        let mut m = Measure {
            what,
            rate: vec![],
            p50_ms: vec![],
        };
        for _ in 0..3 {
            let r = run(spec, &opts).expect("virtual run");
            m.rate.push(r.outcomes.len() as f64 / r.wall.as_secs_f64());
            m.p50_ms
                .push(score(&r, &scenario, opts.rps).p50_ms.unwrap_or(f64::NAN));
        }
        eprintln!("{}: {:.0} logical requests/s", m.what, median(&m.rate));
        rows.push(m);
    }

    let fast = Arc::new(Scenario::parse(FAST, "bench").expect("bench scenario"));
    for rps in [10_000.0, 20_000.0, 30_000.0] {
        let what = format!("http fast at {rps:.0}/s offered");
        if !wanted(&what) {
            continue;
        }
        let mut opts = RunOptions::new(Arc::clone(&fast));
        opts.mode = Mode::Http { target: None };
        opts.rps = rps;
        opts.requests = (rps * 5.0) as u64;
        let spec = find("exp-full-jitter").expect("known policy");
        let mut m = Measure {
            what,
            rate: vec![],
            p50_ms: vec![],
        };
        for _ in 0..3 {
            let r = run(spec, &opts).expect("http run");
            let s = score(&r, &fast, rps);
            let active = r
                .outcomes
                .last()
                .map_or(0.0, |o| o.done.as_secs_f64())
                .max(1e-9);
            m.rate.push(s.attempts as f64 / active);
            m.p50_ms.push(s.p50_ms.unwrap_or(f64::NAN));
        }
        eprintln!(
            "{}: {:.0} attempts/s, p50 {:.1} ms",
            m.what,
            median(&m.rate),
            median(&m.p50_ms)
        );
        rows.push(m);
    }

    println!(
        "{:<40} {:>14} {:>12} {:>10}",
        "run", "per second", "spread", "p50 ms"
    );
    for m in &rows {
        let lo = m.rate.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = m.rate.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<40} {:>14.0} {:>12} {:>10.1}",
            m.what,
            median(&m.rate),
            format!("{:.0}k–{:.0}k", lo / 1e3, hi / 1e3),
            median(&m.p50_ms)
        );
    }
    let json = serde_json::json!(
        rows.iter()
            .map(|m| serde_json::json!({"run": m.what, "per_second": m.rate, "p50_ms": m.p50_ms}))
            .collect::<Vec<_>>()
    );
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = std::path::Path::new(&dir).join("sim.json");
    if let Err(e) = std::fs::write(&path, json.to_string()) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}
