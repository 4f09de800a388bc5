//! `retrywise`: the command-line entry point of the project.

mod compact;
mod demo;
mod serve;
mod sim;
mod train;

use std::process::ExitCode;

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
    /// virtual clock (seconds of backoff play out instantly), printing what each did.
    Demo(demo::Args),
    /// Turn closed NDJSON segments into day-partitioned Parquet (`date=YYYY-MM-DD/`),
    /// removing (or archiving) each segment once its Parquet files are durable.
    Compact(compact::Args),
    /// The laboratory: a fault-injecting upstream, an open-loop load driver, and a
    /// scoreboard of retry policies, in virtual time or over HTTP.
    #[command(subcommand)]
    Sim(sim::Command),
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
        .init();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Compact(args) => compact::run(&args),
        Command::Sim(cmd) => sim::run(cmd),
        Command::Train(args) => train::train(&args),
        Command::Eval(args) => train::eval(&args),
        Command::Inspect(args) => train::inspect(&args),
        Command::Serve(args) => serve::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
