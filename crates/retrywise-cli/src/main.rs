//! `retrywise`: the command-line entry point of the project.

#[macro_use]
mod out;
mod compact;
mod serve;
mod train;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use clap::{Parser, Subcommand};

/// Smart retries: policies that learn from their own traffic.
#[derive(Debug, Parser)]
#[command(name = "retrywise", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show every resilience policy at work against an in-process flaky upstream, on a
    /// virtual clock (seconds of backoff play out instantly): runs `retrywise-sim demo`.
    #[command(disable_help_flag = true)]
    Demo {
        /// Passed to `retrywise-sim demo` (`--seed N`, `--help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Turn closed NDJSON segments into day-partitioned Parquet (`date=YYYY-MM-DD/`),
    /// removing (or archiving) each segment once its Parquet files are durable.
    Compact(compact::Args),
    /// The laboratory: a fault-injecting upstream, an open-loop load driver, and a
    /// scoreboard of retry policies, in virtual time or over HTTP: runs `retrywise-sim`
    /// (`list`, `run`, `upstream`, `generate`, `learn`, `report`, `select`, `demo`;
    /// `retrywise sim --help` for
    /// more).
    #[command(disable_help_flag = true)]
    Sim {
        /// Passed to `retrywise-sim`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Train a success model from Parquet or NDJSON logs; writes a new version
    /// `OUT/NAME/VERSION/{model.json, metrics.json, report.html}`.
    Train(train::TrainArgs),
    /// Evaluate a model on logs, next to its baseline.
    Eval(train::EvalArgs),
    /// Show a model's feature weights and training summary.
    Inspect(train::InspectArgs),
    /// Serve predictions and retry decisions over HTTP (JSON API, Prometheus metrics,
    /// OpenAPI at /openapi.json, KServe v2), hot-swapping new model versions.
    Serve(serve::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The service logs what an operator needs (models loaded and refused) by default.
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Demo { args } => {
            let mut all = vec![OsString::from("demo")];
            all.extend(args);
            return simulator(&all);
        }
        Command::Sim { args } => return simulator(&args),
        Command::Compact(args) => compact::run(&args),
        Command::Train(args) => train::train(&args),
        Command::Eval(args) => train::eval(&args),
        Command::Inspect(args) => train::inspect(&args),
        Command::Serve(args) => serve::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            errln!("error: {err}");
            for cause in err.chain().skip(1) {
                errln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The simulator's binary: next to this one (where cargo builds both), else on `PATH`.
fn simulator_binary() -> Option<PathBuf> {
    let name = format!("retrywise-sim{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(&name))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(&name))
            .find(|p| p.is_file())
    })
}

/// Runs `retrywise-sim` with `args`, as git and cargo run their external commands, and
/// exits as it exits. The simulator is a binary of its own so that tokio's paused clock,
/// which its virtual time needs, never links into this one (the service).
fn simulator(args: &[OsString]) -> ExitCode {
    let run = || -> anyhow::Result<ExitCode> {
        let exe = simulator_binary().context(
            "the simulator is the separate binary `retrywise-sim` (its virtual clock must not be linked \
             into the service), and it is neither next to this binary nor on PATH: build it with \
             `cargo build --release -p retrywise-sim`, or run `cargo run --release -p retrywise-sim -- …`",
        )?;
        let status = std::process::Command::new(&exe)
            .args(args)
            .status()
            .with_context(|| format!("running {}", exe.display()))?;
        if let Some(code) = status.code() {
            return Ok(u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from));
        }
        // Killed by a signal (out of memory, say): say which.
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(signal) = status.signal() {
                anyhow::bail!(
                    "{} was killed by signal {signal}{}",
                    exe.display(),
                    if signal == 9 {
                        " (SIGKILL: the kernel's out-of-memory killer, or a `kill -9`)"
                    } else {
                        ""
                    }
                );
            }
        }
        anyhow::bail!("{} ended without an exit status ({status})", exe.display())
    };
    run().unwrap_or_else(|err| {
        errln!("error: {err}");
        for cause in err.chain().skip(1) {
            errln!("  caused by: {cause}");
        }
        ExitCode::FAILURE
    })
}
