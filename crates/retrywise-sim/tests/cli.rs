//! `retrywise sim`, run as a user would.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

fn retrywise<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retrywise-sim"))
        .args(args)
        .output()
        .expect("runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `data/scenarios/NAME` with its `duration_s = FROM` made `TO`, written into `dir`.
fn shortened(dir: &std::path::Path, name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/scenarios")
        .join(name);
    let text_of = std::fs::read_to_string(path).expect("scenario");
    let short = text_of.replace(
        &format!("duration_s = {from}"),
        &format!("duration_s = {to}"),
    );
    assert_ne!(short, text_of, "{name} has duration_s = {from}");
    let out = dir.join(format!("short-{}", name.replace('/', "-")));
    std::fs::write(&out, short).expect("write");
    out
}

/// The JSON objects a `--json` run printed, one per line.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// Runs `args`, which must fail with `says` on stderr.
fn refused(args: &[&str], says: &str) {
    let out = retrywise(args);
    assert!(!out.status.success(), "{args:?}");
    assert!(
        text(&out.stderr).contains(says),
        "{args:?}: {}",
        text(&out.stderr)
    );
}

#[test]
fn list_names_every_scenario_and_policy() {
    let out = retrywise(&["list"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    for name in [
        "blips",
        "rate-limited",
        "outage",
        "metastable",
        "stragglers",
        "permanent",
        "mix",
        "none",
        "immediate3",
        "exp-full-jitter",
        "decorrelated",
        "budget",
        "sre-throttle",
        "rule-adaptive",
        "hedge-p95",
        "oracle",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing:\n{stdout}"
        );
    }
}

#[test]
fn run_prints_the_scoreboard_as_json_and_draws_the_plot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plot = dir.path().join("board.svg");
    let record = dir.path().join("attempts");
    let out = retrywise(&[
        "run",
        "--scenario",
        "contention",
        "--policy",
        "exp",
        "--policy",
        "exp-full-jitter",
        "--seed",
        "3",
        "--json",
        "--plot",
        plot.to_str().expect("utf-8"),
        "--record",
        record.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let board: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(board["scenario"], "contention");
    let results = board["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    for (r, name) in results.iter().zip(["exp", "exp-full-jitter"]) {
        assert_eq!(r["policy"], name);
        for key in ["success_rate", "attempts_per_request", "peak_load_ratio"] {
            assert!(r[key].is_number(), "{key} in {r}");
        }
        for key in ["p50_ms", "p99_ms", "p999_ms", "recovery_s"] {
            assert!(r.get(key).is_some(), "{key} in {r}");
        }
    }
    assert!(
        results[1]["attempts_per_request"].as_f64() < results[0]["attempts_per_request"].as_f64()
    );
    // Why the calls that failed gave up: plain exponential backoff's collide until their
    // attempts run out; each failed write is one stop (every call ends within some 5 s of
    // attempts and backoff, far inside its 60 s deadline, so the driver cancels none - in
    // general a cancelled request is failed without a stop).
    for r in results {
        let stops = r["stops"].as_object().expect("stops by reason");
        let failed = r["requests"].as_f64().unwrap() * (1.0 - r["success_rate"].as_f64().unwrap());
        let stopped: u64 = stops.values().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!(stopped, failed.round() as u64, "{r}");
    }
    assert!(results[0]["stops"]["max_attempts"].as_u64() > Some(0));
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.contains("exp-full-jitter"));
    // One segment directory per policy, holding the attempts.
    for name in ["exp", "exp-full-jitter"] {
        let segments = std::fs::read_dir(record.join(name))
            .expect("segments")
            .count();
        assert!(segments > 0, "{name}");
    }
    // Recording again into the same folder would mix two runs under the same call ids:
    // refused before anything runs, the first run's records untouched.
    refused(
        &[
            "run",
            "--scenario",
            "contention",
            "--policy",
            "exp",
            "--seed",
            "4",
            "--record",
            record.to_str().expect("utf-8"),
        ],
        "already holds records of another run",
    );
    let segments = std::fs::read_dir(record.join("exp")).expect("segments");
    assert!(segments.count() > 0);
}

#[test]
fn the_table_has_a_row_per_policy() {
    let out = retrywise(&[
        "run",
        "--scenario",
        "blips",
        "--requests",
        "500",
        "--policy",
        "none",
        "--policy",
        "oracle",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("scenario blips (virtual, 500 requests"),
        "{stdout}"
    );
    assert!(
        stdout.contains("p99.9 ms") && stdout.contains("recovery"),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("none "))
            && stdout.lines().any(|l| l.starts_with("oracle "))
    );
}

#[test]
fn bad_scenarios_and_options_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "name = \"bad\"\nrps = 10\nduration_s = 5\n[upstream]\nworkers = 4\n[upstream.errors]\nhttp_503 = 2.0\n",
    )
    .expect("write");
    let out = retrywise(&["run", "--scenario", file.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("http_503") && stderr.contains("line 7"),
        "{stderr}"
    );

    // Numbers past what a run holds are refused before anything runs.
    for (args, says) in [
        (
            &["run", "--scenario", "blips", "--deadline-ms", "1e22"][..],
            "--deadline-ms must be within [0.001, 1e9]",
        ),
        (
            &["run", "--scenario", "blips", "--attempt-timeout-ms", "1e-7"][..],
            "--attempt-timeout-ms must be within [0.001, 1e9]",
        ),
        (
            &["run", "--scenario", "blips", "--rps", "1e-9"][..],
            "is no request at all",
        ),
        // Where the result would go is checked before the work, not after it.
        (
            &["run", "--scenario", "blips", "--plot", "/proc/board.svg"][..],
            "--plot /proc/board.svg",
        ),
        (
            &[
                "generate",
                "--scale=-1",
                "--out",
                "/tmp/retrywise-never-made/x",
            ][..],
            "--scale must be a positive number",
        ),
        (
            &["run", "--target", "http://127.0.0.1:9/", "--rps", "1e-9"][..],
            "--requests 1000 at --rps 0.000000001",
        ),
        (
            &["run", "--scenario", "blips", "--requests", "1000000000000"][..],
            "more than a run holds",
        ),
    ] {
        let out = retrywise(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    assert!(!std::path::Path::new("/tmp/retrywise-never-made").exists());

    let out = retrywise(&["run", "--scenario", "no-such-scenario"]);
    assert!(
        text(&out.stderr).contains("metastable"),
        "the known names are listed"
    );

    let out = retrywise(&["run", "--scenario", "blips", "--policy", "oracle", "--http"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("virtual time"),
        "{}",
        text(&out.stderr)
    );

    // A target the simulator cannot speak to, or nothing listens on, is named before the
    // run (not scored 0 % by every policy). Port 1 of 127.0.0.1: nothing listens there.
    for (target, says) in [
        ("ftp://127.0.0.1/x", "plain HTTP"),
        ("https://127.0.0.1:1/", "plain HTTP"),
        (
            "http://127.0.0.1:1/",
            "cannot connect to --target `http://127.0.0.1:1/`",
        ),
    ] {
        refused(
            &[
                "run",
                "--target",
                target,
                "--policy",
                "none",
                "--requests",
                "10",
            ],
            says,
        );
    }

    refused(
        &[
            "run",
            "--scenario",
            "blips",
            "--policy",
            "none",
            "--policy",
            "none",
        ],
        "given twice",
    );
    // Options every run shares are refused before any run, and no run is reported done:
    // no requests, a file where the record folder goes, a target that is no URL.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("afile");
    std::fs::write(&file, b"x").expect("write");
    for (args, says) in [
        (
            vec!["run", "--scenario", "blips", "--requests", "0"],
            "must be at least 1",
        ),
        (
            vec![
                "run",
                "--scenario",
                "blips",
                "--requests",
                "10",
                "--record",
                file.to_str().expect("utf-8"),
            ],
            "is a file, not a folder",
        ),
        (
            vec![
                "run",
                "--target",
                "notaurl",
                "--policy",
                "none",
                "--requests",
                "10",
            ],
            "is not a URL",
        ),
    ] {
        let out = retrywise(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains(says) && !err.contains("done:"),
            "{args:?}: {err}"
        );
    }
    // A model given to a run that has no use for it is not silently ignored.
    refused(
        &[
            "run",
            "--scenario",
            "blips",
            "--policy",
            "none",
            "--model",
            "models/default",
        ],
        "adaptive",
    );
    // A model that is not there is named.
    refused(
        &[
            "run",
            "--scenario",
            "blips",
            "--policy",
            "adaptive",
            "--model",
            "no/such/model",
        ],
        "no/such/model",
    );
}

/// Kills the child when dropped, so a failing test leaves no server behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_served_upstream_is_driven_through_target() {
    let child = Command::new(env!("CARGO_BIN_EXE_retrywise-sim"))
        .args([
            "upstream",
            "--scenario",
            "permanent",
            "--addr",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let mut child = Killed(child);
    let stderr = child.0.stderr.take().expect("stderr");
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).expect("a line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();

    let out = retrywise(&[
        "run",
        "--scenario",
        "permanent",
        "--target",
        &url,
        "--policy",
        "exp-full-jitter",
        "--requests",
        "200",
        "--rps",
        "400",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let board: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(board["mode"], "http");
    let r = &board["results"][0];
    // ~30 % of requests are invalid (400, never retried), the rest succeed.
    let success = r["success_rate"].as_f64().expect("number");
    assert!((0.55..0.85).contains(&success), "{r}");

    // A scenario's phases are not the target's: the run says so and measures no
    // recovery from them (each policy's run would measure from its own start).
    let out = retrywise(&[
        "run",
        "--scenario",
        "outage",
        "--target",
        &url,
        "--policy",
        "none",
        "--requests",
        "50",
        "--rps",
        "400",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no recovery is measured"),
        "{}",
        text(&out.stderr)
    );
    let board: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(board["trigger_end_s"].is_null(), "{board}");
    assert!(board["results"][0]["recovery_s"].is_null(), "{board}");

    // A burst scenario's --rps is its burst (all sent at once), not a rate over its
    // duration (this one's 0.25 s would make 8 of 30).
    let dir = tempfile::tempdir().expect("tempdir");
    let burst = shortened(dir.path(), "contention.toml", "1", "0.25");
    let out = retrywise(&[
        "run",
        "--scenario",
        burst.to_str().expect("utf-8"),
        "--policy",
        "none",
        "--rps",
        "30",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let board: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(board["results"][0]["requests"], 30);

    // An endpoint alone needs no scenario: the load and timeouts come from flags.
    let out = retrywise(&[
        "run",
        "--target",
        &url,
        "--policy",
        "none",
        "--requests",
        "100",
        "--rps",
        "200",
        "--attempt-timeout-ms",
        "500",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let board: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(board["scenario"], "target");

    // The load an endpoint alone is checked for is the one the flags make: 50,000 a
    // second within 5 ms deadlines is 250 in flight (within the default 10 s deadline it
    // would be 500,000, more than a run holds).
    let out = retrywise(&[
        "run",
        "--target",
        &url,
        "--policy",
        "none",
        "--requests",
        "100",
        "--rps",
        "50000",
        "--deadline-ms",
        "5",
        "--attempt-timeout-ms",
        "5",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(board["results"][0]["requests"], 100);
    // Without either, the error says what is missing.
    let out = retrywise(&["run", "--policy", "none"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--scenario"),
        "{}",
        text(&out.stderr)
    );
    drop(child);
}

#[test]
fn learn_closes_the_loop_and_writes_a_model_per_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The held-out scenario, shortened to two restarts.
    let scenario = shortened(dir.path(), "rolling-deploy.toml", "120", "30");
    let out_dir = dir.path().join("loop");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "learn",
            "--scenario",
            scenario.to_str().expect("utf-8"),
            "--out",
            out_dir.to_str().expect("utf-8"),
        ];
        if !extra.contains(&"--rounds") {
            a.extend_from_slice(&["--rounds", "1"]);
        }
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| retrywise(&a);
    // Scoring on a recorded seed, or on a gate seed, is refused, before anything is written;
    // so are no rounds to learn in, seeds past the largest, and a name no model can have.
    for (bad, says) in [
        (["--eval-seed", "101"], "eval_seed"),
        (["--eval-seed", "3"], "eval_seed"),
        (["--rounds", "0"], "`rounds`: must be at least 1"),
        (["--seed", "18446744073709551615"], "past the largest seed"),
        (["--gate-seeds", "4294967295"], "must be within [1, 1000]"),
        (
            ["--gate-seed", "18446744073709551615"],
            "gate seeds is past the largest seed",
        ),
        (["--name", "../x"], "is not a valid model name"),
    ] {
        let bad = run(args(&bad));
        assert!(!bad.status.success());
        assert!(text(&bad.stderr).contains(says), "{}", text(&bad.stderr));
        assert!(!out_dir.join("data").exists(), "nothing written");
    }
    assert!(!out_dir.join("models").exists());

    let out = run(args(&["--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Without a terminal the bar is not drawn: each step of each round gets a line.
    let progress = text(&out.stderr);
    for step in ["round 0: recording", "round 0: training", "round 1: gating"] {
        assert!(progress.contains(step), "{step}: {progress}");
    }
    let rounds = json_lines(&out);
    assert_eq!(rounds.len(), 2, "{}", text(&out.stdout));
    // Round 0: the rules, recorded and trained into version 1.
    assert_eq!(rounds[0]["round"], 0);
    assert!(rounds[0]["decided_with"].is_null() && rounds[0]["gate"].is_null());
    assert_eq!(rounds[0]["model_version"], 1);
    assert_eq!(rounds[0]["policy"], "rule-adaptive");
    // Round 1: recorded with version 1, gated, retrained on both rounds into version 2.
    assert_eq!(rounds[1]["recorded_with"], 1);
    assert_eq!(rounds[1]["model_version"], 2);
    let gate = &rounds[1]["gate"];
    let promoted = rounds[1]["promoted"].as_bool().expect("promoted");
    let (c, i) = (
        gate["challenger_success_rate"].as_f64().expect("rate"),
        gate["incumbent_success_rate"].as_f64().expect("rate"),
    );
    let worst = gate["worst_loss"].as_f64().expect("worst loss");
    assert!(!promoted || (c >= i - 0.005 && worst <= 0.005), "{gate}");
    assert!(
        worst >= i - c - 1e-12,
        "no seed lost less than the mean: {gate}"
    );
    assert_eq!(gate["seeds"], serde_json::json!([2, 3, 4]), "{gate}");
    assert_eq!(
        rounds[1]["decided_with"],
        if promoted {
            serde_json::json!(1)
        } else {
            serde_json::Value::Null
        }
    );
    for r in &rounds {
        let s = r["success_rate"].as_f64().expect("scoreboard fields");
        assert!((0.0..=1.0).contains(&s) && r["attempts_per_request"].as_f64().expect("a") >= 1.0);
        assert!(r["recorded"].as_u64().expect("recorded") > 1_000);
    }
    assert!(
        rounds[1]["train_rows"].as_u64() > rounds[0]["train_rows"].as_u64(),
        "retrained on everything so far"
    );
    for v in 1..=2 {
        assert!(
            out_dir
                .join(format!("models/learned/{v}/model.json"))
                .is_file()
        );
    }
    assert!(!out_dir.join(".segments").exists(), "scratch removed");

    // A second loop into the same folder would mix data: refused.
    let again = run(args(&[]));
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already holds"),
        "{}",
        text(&again.stderr)
    );
}

/// The shipped model.
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/default");

/// `learn` for one round on `scenario` into `out`, starting from the model at `from`,
/// printing JSON; `extra` options after.
fn learn_one_round(
    scenario: &std::path::Path,
    out: &std::path::Path,
    from: &str,
    extra: &[&str],
) -> Output {
    let mut a = vec![
        "learn",
        "--scenario",
        scenario.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--rounds",
        "1",
        "--json",
        "--from",
        from,
    ];
    a.extend_from_slice(extra);
    retrywise(&a)
}

/// `out` failed saying `says`, and nothing was written into `dir`.
fn refused_before_writing(out: &Output, says: &str, dir: &std::path::Path) {
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    assert!(!dir.exists(), "nothing written");
}

/// A loop that starts from a model in service (`--from`), as a deployment running the
/// shipped model would: round 0 is that model's (v0), and its own traffic teaches the next
/// model a regime the shipped one never saw - one dead replica of three, whose refusals
/// it reads as an outage - so the next model serves more and replaces it.
#[test]
fn learn_from_the_shipped_model_learns_a_regime_it_never_saw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = shortened(dir.path(), "stress/one-replica-down.toml", "60", "20");
    let out_dir = dir.path().join("loop");
    // A model that cannot be read is refused before anything is written.
    let nothing = dir.path().join("nothing");
    let bad = learn_one_round(&scenario, &out_dir, nothing.to_str().expect("utf-8"), &[]);
    refused_before_writing(&bad, "nothing", &out_dir);

    let out = learn_one_round(&scenario, &out_dir, SHIPPED, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rounds = json_lines(&out);
    assert_eq!(rounds.len(), 2, "{}", text(&out.stdout));
    // Round 0: the shipped model in service, recorded, not gated against itself.
    assert_eq!(rounds[0]["policy"], "adaptive");
    assert_eq!(rounds[0]["recorded_with"], 0);
    assert_eq!(rounds[0]["decided_with"], 0);
    assert!(rounds[0]["gate"].is_null());
    assert_eq!(rounds[0]["model_version"], 1);
    // Round 1: the model trained on that traffic beats it on the gate seeds and serves.
    assert_eq!(rounds[1]["recorded_with"], 1);
    assert_eq!(rounds[1]["promoted"], true, "{}", rounds[1]["gate"]);
    assert_eq!(rounds[1]["decided_with"], 1);
    let success = |r: &serde_json::Value| r["success_rate"].as_f64().expect("rate");
    assert!(
        success(&rounds[1]) > success(&rounds[0]) + 0.03,
        "{} -> {}",
        success(&rounds[0]),
        success(&rounds[1])
    );
}

/// A guarded scenario (`--guard`) keeps out a model that forgets it: the model trained on
/// a dead replica's traffic alone beats the shipped one there, and loses `outage`, which
/// the shipped one knew.
#[test]
fn a_guard_keeps_out_a_model_that_forgets_another_scenario() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = shortened(dir.path(), "stress/one-replica-down.toml", "60", "20");
    let out_dir = dir.path().join("loop");
    let guarded = |guard: &str| {
        learn_one_round(
            &scenario,
            &out_dir,
            SHIPPED,
            &["--gate-seeds", "1", "--guard", guard],
        )
    };
    // A guard that is no scenario is refused before anything is written.
    let bad = guarded("no-such-scenario");
    refused_before_writing(&bad, "no-such-scenario", &out_dir);

    let out = guarded("outage");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rounds = json_lines(&out);
    let gate = &rounds[1]["gate"];
    let rate = |v: &serde_json::Value, k: &str| v[k].as_f64().expect("a rate");
    // It wins its own scenario...
    assert!(
        rate(gate, "challenger_success_rate") > rate(gate, "incumbent_success_rate") + 0.03,
        "{gate}"
    );
    // ... and loses the guarded one, so the shipped model stays in service.
    let guard = &gate["guards"][0];
    assert_eq!(guard["scenario"], "outage", "{gate}");
    assert!(rate(guard, "worst_loss") > 0.005, "{gate}");
    assert_eq!(rounds[1]["promoted"], false, "{gate}");
    assert_eq!(rounds[1]["decided_with"], 0);
}

/// A scenario whose upstream never fails leaves nothing to learn: said so, not "the
/// training rows hold a single class".
#[test]
fn a_loop_on_a_scenario_without_failures_says_there_is_nothing_to_learn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("healthy.toml");
    std::fs::write(
        &scenario,
        "name = \"healthy\"\nrps = 50\nduration_s = 4\ndeadline_ms = 2000\nattempt_timeout_ms = 500\n[upstream]\nworkers = 20\n[upstream.latency]\nmedian_ms = 10\nsigma = 0.2\n",
    )
    .expect("write");
    let out = retrywise(&[
        "learn",
        "--scenario",
        scenario.to_str().expect("utf-8"),
        "--out",
        dir.path().join("loop").to_str().expect("utf-8"),
        "--rounds",
        "1",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("round 0: every training row of the attempts recorded so far succeeded")
            && stderr.contains("the loop has nothing to learn on this scenario"),
        "{stderr}"
    );
}

#[test]
fn a_loop_that_cannot_improve_says_why() {
    // `permanent`, shortened: the rules already serve every request that can be served,
    // so no model beats them on the gate seeds and the rules serve every round.
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = shortened(dir.path(), "permanent.toml", "30", "15");
    let out = retrywise(&[
        "learn",
        "--scenario",
        scenario.to_str().expect("utf-8"),
        "--out",
        dir.path().join("loop").to_str().expect("utf-8"),
        "--rounds",
        "1",
        "--check",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("the loop did not improve"), "{stderr}");
    assert!(
        stderr.contains("no new model served: each round's challenger did not beat the rules"),
        "{stderr}"
    );
}

#[test]
fn report_writes_the_tables_and_checks_the_targets_against_the_known_misses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/default");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "report",
            "--out",
            out.to_str().expect("utf-8"),
            "--model",
            model,
            "--scenario",
            "contention",
            "--seeds",
            "1,2",
        ];
        a.extend_from_slice(extra);
        retrywise(&a)
    };
    let first = run(&[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(text(&first.stdout).contains("| contention (held out) |"));
    // Without a terminal the bar is not drawn: each scenario and seed gets a line.
    let progress = text(&first.stderr);
    for line in [
        "scenario and seed 1/2 done: contention seed 1",
        "scenario and seed 2/2 done: contention seed 2",
    ] {
        assert!(progress.contains(line), "{line}: {progress}");
    }
    for f in ["results.md", "scoreboard.md", "results.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Contention is not plotted: the files written are listed as they are, and no plot
    // is announced (it said `goodput-*.svg` whatever was drawn).
    assert!(
        progress.contains("(results.md, scoreboard.md, results.json)")
            && progress.contains("no goodput plot: it is drawn for outage, metastable, mix only"),
        "{progress}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("read"))
            .expect("json");
    assert_eq!(report["seeds"], serde_json::json!([1, 2]));
    let adaptive = report["scenarios"][0]["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .find(|p| p["policy"] == "adaptive")
        .expect("adaptive")
        .clone();
    assert_eq!(adaptive["seeds"].as_array().expect("seeds").len(), 2);
    let targets = report["targets"].as_array().expect("targets");
    let ids = |met: bool| -> Vec<String> {
        targets
            .iter()
            .filter(|t| t["met"] == met)
            .map(|t| t["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (met, missed) = (ids(true), ids(false));
    assert_eq!(
        met.len() + missed.len(),
        3,
        "contention: baseline, goal, and adaptive-full's"
    );
    let known = |ids: &[String]| {
        let path = dir.path().join("known.toml");
        let body: String = ids.iter().map(|i| format!("\"{i}\" = \"why\"\n")).collect();
        std::fs::write(&path, format!("[missed]\n{body}")).expect("write");
        path
    };
    // Listing exactly the misses passes.
    let exact = known(&missed);
    let ok = run(&["--check", "--known-misses", exact.to_str().expect("utf-8")]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    // Contention's three are met on these seeds (docs/results/results.md): none may be
    // listed as a miss. (An unlisted miss failing the check is `Report::check`'s unit
    // test, `a_miss_must_be_known_and_a_known_miss_must_be_missed`.)
    assert!(
        missed.is_empty() && met.len() == 3,
        "met {met:?}, missed {missed:?}"
    );
    for m in &met {
        let stale = known(std::slice::from_ref(m));
        let bad = run(&["--check", "--known-misses", stale.to_str().expect("utf-8")]);
        assert!(!bad.status.success(), "{m}");
        let err = text(&bad.stderr);
        assert!(
            err.contains("listed as a known miss") && err.contains(m.as_str()),
            "{err}"
        );
    }
    // With runs to judge it on, the model's calibration joins the targets: one over every
    // row, one per scenario of the runs (a model folder stands for its latest version).
    let runs = dir.path().join("runs");
    let generated = retrywise(&[
        "generate",
        "--seed",
        "13",
        "--scale",
        "0.02",
        "--out",
        runs.to_str().expect("utf-8"),
    ]);
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let judged = run(&["--calibration-data", runs.to_str().expect("utf-8")]);
    assert!(judged.status.success(), "{}", text(&judged.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("read"))
            .expect("json");
    let calibration: Vec<&str> = report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .filter(|id| id.ends_with("/calibration"))
        .collect();
    assert_eq!(calibration.first(), Some(&"all/calibration"));
    for scenario in ["metastable", "outage", "mix"] {
        assert!(
            calibration.contains(&format!("{scenario}/calibration").as_str()),
            "{calibration:?}"
        );
    }
    // Bad data is an error that names the flag, not a report without the targets.
    let missing = run(&["--calibration-data", "/nonexistent/runs"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("--calibration-data"),
        "{}",
        text(&missing.stderr)
    );

    // A calibration target listed, and no runs to judge it on: refused before the runs,
    // naming the flag (it failed after them, as "no target of this report").
    let calibration = known(&["blips/calibration".to_owned()]);
    let bad = run(&[
        "--check",
        "--known-misses",
        calibration.to_str().expect("utf-8"),
    ]);
    assert!(!bad.status.success());
    let err = text(&bad.stderr);
    assert!(
        err.contains("--calibration-data") && !err.contains("scenario and seed"),
        "{err}"
    );

    // A file where the report's folder goes is named as such, before any run.
    let file = dir.path().join("afile");
    std::fs::write(&file, b"x").expect("write");
    let bad = retrywise(&[
        "report",
        "--out",
        file.to_str().expect("utf-8"),
        "--scenario",
        "contention",
    ]);
    assert!(!bad.status.success());
    let err = text(&bad.stderr);
    assert!(
        err.contains("is a file, not a folder") && !err.contains("seed 1"),
        "{err}"
    );

    // A name that is no target fails.
    let unknown = known(&["contention/speed".to_owned()]);
    let bad = run(&[
        "--check",
        "--known-misses",
        unknown.to_str().expect("utf-8"),
    ]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("contention/speed"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn generate_refuses_phase_lengths_it_cannot_read_and_names_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("data");
    let out_arg = out_dir.to_str().expect("utf-8 path");
    for (bad, says) in [
        ("2", "expected LO,HI"),
        ("a,2", "`a` is not a number"),
        ("0,2", "phase_lengths"),
        ("2,1", "phase_lengths"),
        // A factor so small that hi/lo is no number: every phase lasted for ever.
        ("1e-309,1", "phase_lengths"),
    ] {
        let out = retrywise(&["generate", "--out", out_arg, "--phase-lengths", bad]);
        assert!(!out.status.success(), "{bad} accepted");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{bad}: {stderr}");
    }
    assert!(!out_dir.exists(), "nothing written");
}

/// `generate --scenario` makes a sample of the scenarios named (a file of one's own
/// regime, say) instead of the training suite; one it cannot find is refused, naming it,
/// before anything is written.
#[test]
fn generate_takes_the_scenarios_it_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("data");
    let out_arg = out_dir.to_str().expect("utf-8 path");
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/scenarios/blips.toml"
    );
    // What a run stopped mid-way left beside the output (its lock file no longer held)
    // is removed; a running one's folder (this test holds its lock) is left alone.
    let stale = dir.path().join(".retrywise-generate-4000000000");
    let running = dir.path().join(".retrywise-generate-4000000001");
    for d in [&stale, &running] {
        std::fs::create_dir_all(d.join("segments")).expect("a working folder");
    }
    std::fs::File::create(stale.join(".lock")).expect("a lock file nobody holds");
    let held = std::fs::File::create(running.join(".lock")).expect("a lock file");
    held.lock().expect("held");
    let one = retrywise(&[
        "generate",
        "--scenario",
        scenario,
        "--scale",
        "0.02",
        "--out",
        out_arg,
    ]);
    assert!(one.status.success(), "{}", text(&one.stderr));
    assert!(!stale.exists(), "{}", text(&one.stderr));
    assert!(text(&one.stderr).contains("left by a run that stopped"));
    assert!(running.exists(), "a running run's folder is kept");
    drop(held);
    let all = retrywise(&[
        "generate",
        "--scale",
        "0.02",
        "--out",
        dir.path().join("all").to_str().expect("utf-8"),
    ]);
    assert!(all.status.success(), "{}", text(&all.stderr));
    // The runs made: the sample's policies on one scenario, against the whole suite.
    let runs = |out: &[u8]| -> u64 {
        text(out)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a count of runs")
    };
    let (one_runs, all_runs) = (runs(&one.stdout), runs(&all.stdout));
    assert!(
        one_runs > 0 && all_runs > one_runs,
        "{one_runs} vs {all_runs}"
    );
    assert_eq!(all_runs % one_runs, 0, "{one_runs} vs {all_runs}");
    let missing = dir.path().join("missing");
    let bad = retrywise(&[
        "generate",
        "--scenario",
        "no-such-scenario",
        "--out",
        missing.to_str().expect("utf-8"),
    ]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("no-such-scenario"),
        "{}",
        text(&bad.stderr)
    );
    assert!(!missing.exists(), "nothing written");
}
