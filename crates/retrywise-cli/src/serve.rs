//! `retrywise serve`: the prediction and decision service.

use std::path::PathBuf;

use anyhow::Context as _;
use retrywise_server::config::{Config, Overrides};

/// Options of `retrywise serve` (each overrides the environment, which overrides the file).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The models folder (`NAME/VERSION/model.json`) [default: models].
    #[arg(long)]
    models: Option<PathBuf>,
    /// Where to listen [default: 127.0.0.1:8080].
    #[arg(long)]
    addr: Option<String>,
    /// A TOML file of settings (addr, models, attempts, token, body_limit_bytes,
    /// request_timeout_ms, max_in_flight, …); `RETRYWISE_*` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where ingested attempts are written [default: data/attempts].
    #[arg(long)]
    attempts: Option<PathBuf>,
    /// Listen on a non-loopback address without a token (RETRYWISE_TOKEN). Refused
    /// otherwise: anyone who can reach the service could post attempts and reload models.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// The share of `/v1/decide`'s "not worth an attempt" stops that retry anyway and
    /// answer `explored: true`, so that recorded attempts keep teaching the model what
    /// waiting does (RETRYWISE_EXPLORE) [default: 0].
    #[arg(long)]
    explore: Option<f64>,
    /// Answer a request that names no model with the model named after its target when one
    /// is serving (`models/payments/` for target `payments`), else the default model
    /// (RETRYWISE_MODEL_PER_TARGET) [default: no].
    #[arg(long)]
    model_per_target: bool,
    /// Answer `POST /v1/attempts` with 202 once the batch is written and fsynced (`true`),
    /// or once it is written, made durable within a second (`false`)
    /// (RETRYWISE_SYNC_INGEST) [default: true].
    #[arg(long, value_name = "BOOL")]
    sync_ingest: Option<bool>,
    /// Share the fleet view (target health, failure rates, circuits) with the other
    /// replicas through this Redis: `redis://HOST:PORT[/DB]` (RETRYWISE_FLEET) [default:
    /// none, each replica keeps its own view in process].
    #[arg(long, value_name = "REDIS_URL")]
    fleet: Option<String>,
    /// How old the shared fleet view answered from may be, ms (RETRYWISE_FLEET_CACHE_MS)
    /// [default: 250].
    #[arg(long, value_name = "MS")]
    fleet_cache_ms: Option<u64>,
    /// How long a Redis command may take before the replica answers from its own view, ms
    /// (RETRYWISE_FLEET_TIMEOUT_MS) [default: 100].
    #[arg(long, value_name = "MS")]
    fleet_timeout_ms: Option<u64>,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let flags = Overrides {
        addr: args.addr.clone(),
        models: args.models.clone(),
        attempts: args.attempts.clone(),
        allow_unauthenticated: args.allow_unauthenticated.then_some(true),
        explore: args.explore,
        model_per_target: args.model_per_target.then_some(true),
        sync_ingest: args.sync_ingest,
        fleet: args.fleet.clone(),
        fleet_cache_ms: args.fleet_cache_ms,
        fleet_timeout_ms: args.fleet_timeout_ms,
        ..Overrides::default()
    };
    for warning in retrywise_server::config::check_env(std::env::vars_os())
        .context("reading the configuration")?
    {
        tracing::warn!("{warning}");
    }
    let config = Config::load(args.config.as_deref(), |k| std::env::var(k).ok(), &flags)
        .context("reading the configuration")?;
    // Each connection holds a file: the usual soft limit (1,024 open files) is below the
    // default `max_connections`, so it is raised to the hard limit (the service caps its
    // connections below what is left, and says so).
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    let models = config.models.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime
        .block_on(retrywise_server::serve(
            config,
            retrywise_server::shutdown_signal(),
            |addr| {
                errln!(
                    "retrywise serving on http://{addr} (models from {}; Ctrl-C stops)",
                    models.display()
                );
            },
        ))
        .context("serving")?;
    errln!("retrywise stopped");
    Ok(())
}
