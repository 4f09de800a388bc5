//! `retrywise demo` and `retrywise --help`, run as a user would.

use std::process::Command;

fn retrywise(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_retrywise-sim"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_names_the_demo() {
    let (ok, out, _) = retrywise(&["--help"]);
    assert!(ok);
    assert!(out.contains("demo"), "{out}");
}

#[test]
fn demo_shows_every_mechanism_at_work() {
    let (ok, out, err) = retrywise(&["demo", "--seed", "3"]);
    assert!(ok, "{err}");
    for expected in [
        // Retries: three attempts, the third succeeds.
        "attempt 3 after waiting",
        "-> 200 after 3 requests",
        // Retry-After: two seconds waited.
        "attempt 2 after waiting 2000 ms",
        // Permanent errors stop at once.
        "-> 404 after 1 request; stops: [(\"not_retryable\", 1)]",
        // Growing timeouts: the first attempt times out at 5 s.
        "timeout (retryable) in 5000 ms",
        // The design sketch's adaptive delays.
        "http_429      1000 ms    2000 ms    4000 ms",
        // The breaker goes round its states.
        "CLOSED -> OPEN",
        "OPEN -> HALF_OPEN",
        "HALF_OPEN -> CLOSED",
        // The bulkhead rejects what it has no room for.
        "admitted 3, rejected 7",
        "unknown bulkhead `billing`",
        // Records are printed as JSON.
        "\"schema_version\":\"1.4\"",
        "cancelled (another request answered first)",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    // The budgets cut the outage's amplification.
    let amp = |name: &str| -> f64 {
        let line = out.lines().find(|l| l.contains(name)).expect(name);
        line.split_whitespace()
            .rev()
            .nth(3)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(amp("no budget") > 2.0);
    assert!(amp("token bucket") < 1.1);
    assert!(amp("ratio budget") < 1.3);
}

#[test]
fn bad_arguments_are_reported() {
    let (ok, _, err) = retrywise(&["demo", "--seed", "lots"]);
    assert!(!ok);
    assert!(err.contains("--seed"), "{err}");
}
