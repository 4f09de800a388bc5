//! `retrywise-sim`: the laboratory's command — scoreboards, the fault-injecting upstream,
//! training data, and the tour of every mechanism — run by `retrywise sim …` and
//! `retrywise demo`.
//!
//! It is a binary of its own because its virtual clock is tokio's paused clock (the
//! `test-util` feature), which the production binary, `retrywise` (the service among its
//! commands), must not link.

// The one copy, shared with `retrywise` (the CLI).
#[macro_use]
#[path = "../../../../retrywise-cli/src/out.rs"]
mod out;
mod commands;
mod demo;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The retrywise laboratory: a fault-injecting upstream, an open-loop load driver and a
/// scoreboard of retry policies, in virtual time or over HTTP.
#[derive(Debug, Parser)]
#[command(name = "retrywise-sim", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Name the built-in scenarios and the policies.
    List,
    /// Run policies against a scenario (or any HTTP endpoint) and print the scoreboard.
    Run(commands::RunArgs),
    /// Serve a scenario's upstream over HTTP.
    Upstream(commands::UpstreamArgs),
    /// Generate training data: the suite, every policy, with exploration, as Parquet.
    Generate(commands::GenerateArgs),
    /// Close the loop on one scenario: record, train, decide with the model, record, retrain…
    /// and print each round's scoreboard row.
    Learn(commands::LearnArgs),
    /// Every policy on every scenario over several seeds: the results table, the full
    /// scoreboard, the model-driven policy's targets and goodput plots, into a folder.
    Report(commands::ReportArgs),
    /// Rank candidate models by the decisions they make on the training suite, on a seed
    /// neither training nor evaluation uses.
    Select(commands::SelectArgs),
    /// Show every resilience policy at work against an in-process flaky upstream, on a
    /// virtual clock (seconds of backoff play out instantly), printing what each did.
    Demo(demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Over HTTP a run holds up to 2,048 connections, two sockets each with the upstream in
    // process: more than the usual soft limit of 1,024 open files. Raised to the hard
    // limit (the driver holds fewer connections where that is still short, and says so).
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    let result = match cli.command {
        Command::List => commands::list(),
        Command::Run(args) => commands::run_board(args),
        Command::Upstream(args) => commands::serve(&args),
        Command::Generate(args) => commands::generate_data(&args),
        Command::Learn(args) => commands::learn(&args),
        Command::Report(args) => commands::report(&args),
        Command::Select(args) => commands::select(&args),
        Command::Demo(args) => demo::run(&args),
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
