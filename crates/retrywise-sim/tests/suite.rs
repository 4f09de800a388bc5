//! The scenario suite, both modes, recording, plots and training data.

// Helpers outside `#[test]` functions unwrap too: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use retrywise::attempt::Outcome;
use retrywise_collect::SegmentReader;
use retrywise_sim::SimError;
use retrywise_sim::driver::{Mode, RunOptions, run};
use retrywise_sim::generate::{GenerateOptions, generate};
use retrywise_sim::policies::{CATALOG, find};
use retrywise_sim::queueing::UpstreamModel;
use retrywise_sim::scenario::Scenario;
use retrywise_sim::score::score;

fn small(name: &str, requests: u64) -> RunOptions {
    let mut opts = RunOptions::new(Arc::new(Scenario::load(name).unwrap()));
    opts.requests = requests;
    opts
}

#[test]
fn every_policy_runs_every_scenario() {
    for scenario in Scenario::builtin_names() {
        let opts = small(scenario, 400);
        for spec in CATALOG {
            let r = run(spec, &opts).unwrap_or_else(|e| panic!("{scenario}/{}: {e}", spec.name));
            assert_eq!(r.outcomes.len(), 400, "{scenario}/{}", spec.name);
            let s = score(&r, &opts.scenario, opts.rps);
            assert!(
                (0.0..=1.0).contains(&s.success_rate),
                "{scenario}/{}: {s:?}",
                spec.name
            );
            // Attempt counts follow each policy's limits (a hedge adds at most one).
            let most = match spec.name {
                "none" | "oracle" => 1,
                "retry-1s" | "hedge-p95" => 2,
                "adaptive" => 6,
                // Six attempts, each of which may be hedged once.
                "adaptive-full" => 12,
                _ => 4,
            };
            for o in &r.outcomes {
                assert!(o.attempts <= most, "{scenario}/{}: {o:?}", spec.name);
                assert!(o.done >= o.arrival);
                assert!(!o.ok || o.status.is_some_and(|s| (200..300).contains(&s)));
            }
            if spec.name == "none" {
                assert!(r.outcomes.iter().all(|o| o.attempts == 1), "{scenario}");
            }
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_scoreboard() {
    let mut opts = small("mix", 3_000);
    let spec = find("exp-full-jitter").unwrap();
    let strip = |mut s: retrywise_sim::score::Score| {
        s.wall_s = 0.0;
        s
    };
    let a = strip(score(&run(spec, &opts).unwrap(), &opts.scenario, opts.rps));
    let b = strip(score(&run(spec, &opts).unwrap(), &opts.scenario, opts.rps));
    assert_eq!(a, b);
    opts.seed = 2;
    let c = strip(score(&run(spec, &opts).unwrap(), &opts.scenario, opts.rps));
    assert_ne!(a, c, "another seed draws other faults");
}

/// No policy retries a permanent failure: read every recorded attempt back and look for
/// one made after a 400.
#[test]
fn no_policy_retries_a_400() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = small("permanent", 1_500);
    opts.record = Some(dir.path().to_path_buf());
    for spec in CATALOG.iter().filter(|p| p.name != "oracle") {
        let r = run(spec, &opts).unwrap();
        let attempts: u64 = r.outcomes.iter().map(|o| u64::from(o.attempts)).sum();
        let invalid = r.outcomes.iter().filter(|o| o.status == Some(400)).count();
        assert!(
            invalid > 300,
            "{}: the scenario makes ~30 % invalid, saw {invalid}",
            spec.name
        );

        let mut reader = SegmentReader::open(&dir.path().join(spec.name)).unwrap();
        let mut records = 0u64;
        let mut answered_400 = 0u64;
        for rec in reader.by_ref() {
            let rec = rec.unwrap();
            records += 1;
            assert_eq!(rec.policy.as_deref(), Some(spec.name));
            assert_eq!(&*rec.context.target, "permanent");
            assert_ne!(
                rec.context.status,
                Some(400),
                "{}: an attempt followed a 400: {rec:?}",
                spec.name
            );
            if rec.outcome_status == Some(400) {
                answered_400 += 1;
                assert_eq!(rec.outcome, Outcome::Permanent, "{}", spec.name);
            }
        }
        assert_eq!(reader.summary().skipped(), 0);
        // Every attempt was recorded (hedges too), each 400 once.
        assert_eq!(records, attempts, "{}", spec.name);
        assert!(answered_400 >= invalid as u64, "{}", spec.name);
    }
}

#[test]
fn the_oracle_bounds_every_policy() {
    for scenario in ["blips", "outage", "metastable"] {
        let opts = small(scenario, 6_000);
        let oracle = score(
            &run(find("oracle").unwrap(), &opts).unwrap(),
            &opts.scenario,
            opts.rps,
        );
        for spec in CATALOG.iter().filter(|p| p.name != "oracle") {
            let s = score(&run(spec, &opts).unwrap(), &opts.scenario, opts.rps);
            assert!(
                s.success_rate <= oracle.success_rate + 0.005,
                "{scenario}: {} {:.4} beats the oracle {:.4}",
                spec.name,
                s.success_rate,
                oracle.success_rate
            );
        }
    }
}

#[test]
fn over_http_the_same_policies_meet_the_same_faults() {
    let mut opts = small("blips", 300);
    opts.rps = 300.0;
    opts.mode = Mode::Http { target: None };
    let r = run(find("exp-full-jitter").unwrap(), &opts).unwrap();
    let s = score(&r, &opts.scenario, opts.rps);
    assert_eq!(s.requests, 300);
    assert!(s.success_rate > 0.97, "{s:?}");
    // About 10 % of first attempts fail; the retries show.
    assert!(
        s.attempts_per_request > 1.02 && s.attempts_per_request < 1.4,
        "{s:?}"
    );
    assert!(r.outcomes.iter().any(|o| o.attempts > 1));
}

#[test]
fn a_target_url_is_driven_like_the_builtin_upstream() {
    let scenario = Arc::new(Scenario::load("permanent").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let upstream = rt.block_on(async { UpstreamModel::new(Arc::clone(&scenario), 7) });
    let server = rt
        .block_on(retrywise_sim::server::spawn(
            upstream.clone(),
            "127.0.0.1:0",
        ))
        .unwrap();
    let mut opts = RunOptions::new(Arc::clone(&scenario));
    opts.requests = 200;
    opts.rps = 400.0;
    opts.mode = Mode::Http {
        target: Some(format!("http://{}/any/path", server.addr)),
    };
    let r = run(find("immediate3").unwrap(), &opts).unwrap();
    let s = score(&r, &scenario, opts.rps);
    // The upstream saw exactly the attempts the driver made.
    assert_eq!(upstream.counts().requests, s.attempts);
    let invalid = r.outcomes.iter().filter(|o| o.status == Some(400)).count();
    assert!(invalid > 30, "{invalid}");
    assert!(
        r.outcomes
            .iter()
            .filter(|o| o.status == Some(400))
            .all(|o| !o.ok)
    );
    drop(server);
}

/// Over HTTP a refused connection is told from a reset, as in virtual time: the
/// simulator's upstream answers a refusal with a 503 that says so, and the client reads
/// it as `connect` (closed without an answer, it read as a reset).
#[test]
fn over_http_a_refusal_is_a_connect_error_and_a_reset_a_reset() {
    use retrywise_sim::transport::{Transport, TransportError};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for (errors, expected) in [
        ("connect = 1.0", TransportError::Connect),
        ("reset = 1.0", TransportError::Reset),
    ] {
        let toml = format!(
            "name = \"faults\"\nrps = 10\nduration_s = 5\n[upstream]\nworkers = 4\n[upstream.latency]\nmedian_ms = 1\nsigma = 0.1\n[upstream.errors]\n{errors}\n"
        );
        let scenario = Arc::new(Scenario::parse(&toml, "test").unwrap());
        rt.block_on(async {
            let upstream = UpstreamModel::new(Arc::clone(&scenario), 7);
            let server = retrywise_sim::server::spawn(upstream, "127.0.0.1:0")
                .await
                .unwrap();
            let transport = Transport::Http {
                client: reqwest::Client::builder().no_proxy().build().unwrap(),
                url: format!("http://{}/", server.addr).parse().unwrap(),
                permits: Arc::new(tokio::sync::Semaphore::new(4)),
            };
            for request in 0..3 {
                let got = transport.send(request).await;
                assert_eq!(got, Err(expected.clone()), "{errors}");
            }
        });
    }
}

/// A scenario's fields are public: what a library caller sets after parsing is checked
/// again by the run, by name, instead of panicking inside it.
#[test]
fn a_scenario_changed_after_parsing_is_checked_again_by_the_run() {
    for (change, field) in [
        (
            (|s: &mut Scenario| s.deadline_ms = f64::NAN) as fn(&mut Scenario),
            "scenario.deadline_ms",
        ),
        (
            |s| s.attempt_timeout_ms = -1.0,
            "scenario.attempt_timeout_ms",
        ),
        (|s| s.upstream.replicas = 0, "scenario.upstream"),
    ] {
        let mut scenario = Scenario::load("blips").unwrap();
        change(&mut scenario);
        let mut opts = RunOptions::new(Arc::new(scenario));
        opts.requests = 10;
        let e = run(find("none").unwrap(), &opts).unwrap_err();
        assert!(
            matches!(e, SimError::Option { field: f, .. } if f == field),
            "{field}: {e}"
        );
    }
}

/// Dropping the upstream's server stops it whole: a client holding a kept-alive
/// connection is not served on it.
#[test]
fn a_dropped_upstream_closes_its_open_connections() {
    use retrywise_sim::transport::Transport;
    let scenario = Arc::new(Scenario::load("blips").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let upstream = UpstreamModel::new(Arc::clone(&scenario), 7);
        let server = retrywise_sim::server::spawn(upstream.clone(), "127.0.0.1:0")
            .await
            .unwrap();
        let transport = Transport::Http {
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap(),
            url: format!("http://{}/", server.addr).parse().unwrap(),
            permits: Arc::new(tokio::sync::Semaphore::new(1)),
        };
        // One connection, kept alive between the attempts.
        for request in 0..3 {
            let _ = transport.send(request).await;
        }
        let seen = upstream.counts().requests;
        assert_eq!(seen, 3);
        drop(server);
        // Give the connection's task its turn to see the stop.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        for request in 3..6 {
            assert!(transport.send(request).await.is_err());
        }
        assert_eq!(
            upstream.counts().requests,
            seen,
            "nothing served after the drop"
        );
    });
}

#[test]
fn a_target_that_is_not_a_url_is_refused_by_name() {
    let mut opts = small("blips", 10);
    opts.mode = Mode::Http {
        target: Some("not a url".into()),
    };
    let e = run(find("none").unwrap(), &opts).unwrap_err();
    assert!(
        matches!(
            e,
            SimError::Option {
                field: "target",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn nothing_listens_and_every_attempt_is_a_connect_error() {
    // Bind and drop a listener to find a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = small("blips", 20);
    opts.rps = 100.0;
    opts.mode = Mode::Http {
        target: Some(format!("http://127.0.0.1:{port}/")),
    };
    let r = run(find("exp-full-jitter").unwrap(), &opts).unwrap();
    assert!(r.outcomes.iter().all(|o| !o.ok && o.status.is_none()));
    assert!(
        r.outcomes.iter().all(|o| o.attempts > 1),
        "connect errors are retried"
    );
}

#[test]
fn the_oracle_only_runs_in_virtual_time() {
    let mut opts = small("blips", 10);
    opts.mode = Mode::Http { target: None };
    let e = run(find("oracle").unwrap(), &opts).unwrap_err();
    assert!(
        matches!(e, SimError::VirtualOnly(ref p) if p == "oracle"),
        "{e}"
    );
    // A scoreboard refuses it before running the policies named before it: `none` would
    // fail first, on a target it cannot speak to, if it ran.
    opts.mode = Mode::Http {
        target: Some("https://127.0.0.1:9/".into()),
    };
    let e = retrywise_sim::scoreboard(&["none".into(), "oracle".into()], &opts).unwrap_err();
    assert!(
        matches!(e, SimError::VirtualOnly(ref p) if p == "oracle"),
        "{e}"
    );
}

#[test]
fn bad_run_options_are_refused() {
    let mut opts = small("blips", 0);
    assert!(matches!(
        run(find("none").unwrap(), &opts),
        Err(SimError::Option {
            field: "requests",
            ..
        })
    ));
    opts.requests = 10;
    opts.rps = f64::NAN;
    assert!(matches!(
        run(find("none").unwrap(), &opts),
        Err(SimError::Option { field: "rps", .. })
    ));
    // Ten requests a billion seconds apart, or more requests than fit in memory: refused
    // before anything runs (the first ran out of memory keeping a bucket per second).
    opts.rps = 1e-9;
    let e = run(find("none").unwrap(), &opts).unwrap_err().to_string();
    assert!(e.contains("rps") && e.contains("a week"), "{e}");
    opts.rps = 100.0;
    opts.requests = 1 << 40;
    assert!(matches!(
        run(find("none").unwrap(), &opts),
        Err(SimError::Option {
            field: "requests",
            ..
        })
    ));
    // More requests in flight at once than a run's memory holds (about 6 KiB each):
    // 100,000 a second with blips' 5 s deadline.
    opts.requests = 1_000_000;
    opts.rps = 100_000.0;
    let e = run(find("none").unwrap(), &opts).unwrap_err().to_string();
    assert!(
        e.contains("500000 requests would be in flight at once"),
        "{e}"
    );
    let e = find("nope").err().unwrap().to_string();
    assert!(e.contains("exp-full-jitter") && e.contains("oracle"), "{e}");
    // A bin under a millisecond: a bucket per nanosecond would not fit in memory.
    let mut opts = small("blips", 10);
    opts.bin = std::time::Duration::ZERO;
    assert!(matches!(
        run(find("none").unwrap(), &opts),
        Err(SimError::Option { field: "bin", .. })
    ));
}

#[test]
fn the_plot_draws_every_policy() {
    let opts = small("outage", 1_000);
    let runs: Vec<_> = ["none", "budget"]
        .iter()
        .map(|p| run(find(p).unwrap(), &opts).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plot.svg");
    retrywise_sim::plot::plot(&path, "outage", &runs, opts.rps).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("budget") && svg.contains("goodput"),
        "{}",
        &svg[..200]
    );
    let e = retrywise_sim::plot::plot(&dir.path().join("no/such/dir/p.svg"), "x", &runs, 1.0)
        .unwrap_err();
    // Drawn in memory, then written: a file that cannot be written is an I/O error
    // naming it.
    assert!(matches!(e, SimError::Io { .. }), "{e}");
    assert!(e.to_string().contains("p.svg"), "{e}");
}

#[test]
fn generated_training_data_explores_delays_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sample");
    let mut opts = GenerateOptions::new(&out, dir.path().join("work"));
    opts.scenarios
        .retain(|s| s.name == "blips" || s.name == "rate-limited");
    opts.scale = 0.05;
    let runs = std::sync::atomic::AtomicU32::new(0);
    let summary = generate(&opts, |_, _| {
        runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(summary.runs, 20);
    assert_eq!(runs.into_inner(), 20);
    assert!(summary.rows > summary.requests, "{summary:?}");
    let files: Vec<_> = walk(&out);
    assert!(
        !files.is_empty()
            && files
                .iter()
                .all(|f| f.extension().is_some_and(|e| e == "parquet")),
        "{files:?}"
    );
    assert!(files.iter().all(|f| {
        f.parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("date=")
    }));

    // A second run refuses to mix into it; with `replace` it starts over.
    let e = generate(&opts, |_, _| {}).unwrap_err();
    assert!(matches!(e, SimError::Option { field: "out", .. }), "{e}");
    assert_eq!(walk(&out), files);
    opts.replace = true;
    let again = generate(&opts, |_, _| {}).unwrap();
    assert_eq!(again.rows, summary.rows, "deterministic for the seed");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The model-driven policy with the shipped model: it runs, stays within its attempt
/// limit, and never sends an attempt the upstream could not have been asked for (after a
/// 400) — and without a model it still runs, on its fallback rules.
#[test]
fn the_adaptive_policy_runs_with_and_without_a_model() {
    let spec = find("adaptive").unwrap();
    let model =
        retrywise_sim::policies::load_model(std::path::Path::new("../../models/default")).unwrap();
    // Each long enough to hold its faults (the outage starts at 20 s: 2 000 requests in).
    for (scenario, requests) in [("blips", 2_000), ("outage", 4_000), ("permanent", 2_000)] {
        let mut opts = small(scenario, requests);
        let without = score(&run(spec, &opts).unwrap(), &opts.scenario, opts.rps);
        opts.model = Some(model.clone());
        let r = run(spec, &opts).unwrap();
        let with = score(&r, &opts.scenario, opts.rps);
        assert!(r.outcomes.iter().all(|o| o.attempts <= 6), "{scenario}");
        // With a model or without, its retries serve more than none at all; and a 400 is
        // never retried: the calls that end on one are those that end on one without
        // retries (every such call gets it on its first attempt).
        let none = score(
            &run(find("none").unwrap(), &opts).unwrap(),
            &opts.scenario,
            opts.rps,
        );
        for (who, s) in [("with", &with), ("without", &without)] {
            assert!(
                s.success_rate > none.success_rate + 0.02,
                "{scenario} {who}: {s:?} against none's {none:?}"
            );
            assert_eq!(
                s.stops.get("not_retryable"),
                none.stops.get("not_retryable"),
                "{scenario} {who}"
            );
        }
        if scenario != "permanent" {
            // Where retries matter, the model's decisions are not the rules'.
            assert!(
                (with.success_rate, with.attempts_per_request)
                    != (without.success_rate, without.attempts_per_request),
                "{scenario}: {with:?}"
            );
        }
    }
}

#[test]
fn a_model_path_that_holds_no_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = retrywise_sim::policies::load_model(dir.path()).unwrap_err();
    assert!(matches!(e, SimError::NoModel { .. }), "{e}");
    std::fs::write(dir.path().join("model.json"), "{").unwrap();
    let e = retrywise_sim::policies::load_model(dir.path()).unwrap_err();
    assert!(matches!(e, SimError::Model { .. }), "{e}");
    // A model folder's versions are its folders named by a number as written: `09` is
    // none (it was taken for 9, and `9/model.json` looked for), so version 5 is the latest.
    let models = tempfile::tempdir().unwrap();
    for v in ["5", "09", "+7"] {
        std::fs::create_dir(models.path().join(v)).unwrap();
        std::fs::write(models.path().join(v).join("model.json"), "{}").unwrap();
    }
    let file = retrywise_sim::policies::model_file(models.path()).unwrap();
    assert_eq!(file, models.path().join("5").join("model.json"));
}

#[test]
fn drawn_phase_lengths_reach_the_runs() {
    // `outage` at half its length (its 10 s outage from 20 s is inside the 30 s run): as
    // written, and with the outage cut to an eighth (1.25 s). The short outage fails far
    // fewer calls, so every policy retries less and fewer attempts are recorded.
    let rows = |lengths: (f64, f64)| {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = GenerateOptions::new(dir.path().join("sample"), dir.path().join("work"));
        opts.scenarios.retain(|s| s.name == "outage");
        opts.scale = 0.5;
        opts.phase_lengths = lengths;
        let s = generate(&opts, |_, _| {}).unwrap();
        (s.requests, s.rows)
    };
    let (written_requests, written) = rows((1.0, 1.0));
    let (short_requests, short) = rows((0.125, 0.125));
    assert_eq!(written_requests, short_requests);
    assert!(
        short * 10 < written * 9,
        "1.25 s outage: {short} attempts, 10 s: {written}"
    );
}

#[test]
fn a_report_over_no_seed_or_a_seed_twice_is_refused_before_anything_runs() {
    use retrywise_sim::report::{ReportOptions, report};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let mut opts = ReportOptions::new(None, "none");
    for (seeds, says) in [
        (vec![], "names no seed"),
        (vec![1, 2, 1], "seed 1 is given twice"),
    ] {
        opts.seeds = seeds;
        let e = report(&opts, &out, |_, _| panic!("nothing runs")).unwrap_err();
        assert!(
            matches!(e, SimError::Option { field: "seeds", .. }) && e.to_string().contains(says),
            "{e}"
        );
        assert!(!out.exists(), "nothing written");
    }
}

/// Every scenario file of `data/scenarios/stress/` (the README's `stress/NAME`) reads: the
/// files the README's tables quote cannot rot unseen.
#[test]
fn every_stress_scenario_loads() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/scenarios/stress");
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let s = Scenario::load(p.to_str().unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            names.push(s.name);
        }
    }
    names.sort();
    for name in ["flapping", "one-replica-down", "outage-3s", "slowdown"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}

/// A request whose task panics (here: in the model the adaptive policy asks after a
/// failure) leaves no outcome: the run fails naming how many, instead of scoring the
/// others as if they were every request offered.
#[test]
fn a_request_that_panicked_fails_the_run() {
    let model: Arc<dyn retrywise::model::SuccessModel> =
        Arc::new(|_: &retrywise::attempt::AttemptContext| -> f64 { panic!("a broken model") });
    let mut opts = small("blips", 400);
    opts.model = Some(model);
    match run(find("adaptive").unwrap(), &opts) {
        Err(SimError::OutcomesLost { lost, requests, .. }) => {
            assert_eq!(requests, 400);
            assert!(lost > 0 && lost < 400, "{lost}");
        }
        other => panic!("{:?}", other.map(|r| r.outcomes.len())),
    }
}
