//! `retrywise --help`, and `retrywise sim` / `retrywise demo`, which run the simulator's own
//! binary.

use std::process::Command;

fn retrywise(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_retrywise"))
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
fn help_names_every_command() {
    let (ok, out, _) = retrywise(&["--help"]);
    assert!(ok);
    for c in [
        "serve", "compact", "train", "eval", "inspect", "sim", "demo",
    ] {
        assert!(out.contains(c), "{c}: {out}");
    }
}

/// Where cargo puts the simulator when it builds the workspace: next to `retrywise`.
fn simulator_beside() -> bool {
    std::path::Path::new(env!("CARGO_BIN_EXE_retrywise"))
        .with_file_name(format!("retrywise-sim{}", std::env::consts::EXE_SUFFIX))
        .is_file()
}

#[test]
fn sim_and_demo_run_the_simulators_binary_or_say_how_to_build_it() {
    let (ok, out, err) = retrywise(&["sim", "list"]);
    let (demo_ok, demo_out, demo_err) = retrywise(&["demo", "--seed", "3"]);
    if simulator_beside() {
        assert!(ok, "{err}");
        assert!(
            out.contains("scenarios:") && out.contains("metastable"),
            "{out}"
        );
        assert!(demo_ok, "{demo_err}");
        assert!(
            demo_out.contains("retrywise demo — virtual time, seed 3"),
            "{demo_out}"
        );
        // Its exit status is passed on.
        let (ok, _, err) = retrywise(&["sim", "run", "--scenario", "no-such-scenario"]);
        assert!(!ok);
        assert!(err.contains("no-such-scenario"), "{err}");
    } else {
        // Built alone (`cargo test -p retrywise-cli`): the error says what to do.
        assert!(!ok && !demo_ok);
        assert!(
            err.contains("cargo build --release -p retrywise-sim"),
            "{err}"
        );
    }
}

/// Output into a pipe whose reader has gone (`… | head` after its lines) ends the command
/// as SIGPIPE would (status 141), never with 0: a check whose verdict was not printed yet
/// must not pass under `set -o pipefail`.
#[test]
fn a_closed_pipe_ends_the_command_with_141() {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    // Closed before the command writes a line.
    drop(reader);
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/default/1");
    let status = Command::new(env!("CARGO_BIN_EXE_retrywise"))
        .args(["inspect", "--model", model])
        .stdout(writer)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the binary runs");
    assert_eq!(status.code(), Some(141), "{status:?}");
}
