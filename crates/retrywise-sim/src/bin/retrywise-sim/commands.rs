//! `retrywise-sim list|run|upstream|generate`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use retrywise_sim::driver::{Mode, RunOptions};
use retrywise_sim::generate::{GenerateOptions, generate};
use retrywise_sim::policies::CATALOG;
use retrywise_sim::queueing::UpstreamModel;
use retrywise_sim::scenario::{MAX_NUMBER, MAX_REQUESTS, MIN_DURATION_MS, Scenario};

use crate::progress::Progress;

/// Options of `retrywise-sim run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// A built-in scenario name or a scenario file (not needed with --target).
    #[arg(long, required_unless_present = "target")]
    scenario: Option<String>,
    /// A policy to run (repeat for several; default: all that fit the mode).
    #[arg(long = "policy")]
    policies: Vec<String>,
    /// Virtual time (the default): deterministic and fast.
    #[arg(long, conflicts_with_all = ["http", "target"])]
    r#virtual: bool,
    /// Over HTTP on loopback, against the scenario's upstream (one per policy).
    #[arg(long)]
    http: bool,
    /// Drive this HTTP endpoint instead of the scenario's upstream (implies --http).
    #[arg(long)]
    target: Option<String>,
    /// Logical requests (default: the scenario's rate × duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Offered load, requests per second (default: the scenario's).
    #[arg(long)]
    rps: Option<f64>,
    /// Seed of arrivals, upstream and policies.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Each logical request's deadline, ms (default: the scenario's; 10 000 with --target
    /// and no scenario).
    #[arg(long)]
    deadline_ms: Option<f64>,
    /// Each attempt's timeout, ms (default: the scenario's; 2 000 with --target and no
    /// scenario).
    #[arg(long)]
    attempt_timeout_ms: Option<f64>,
    /// Record every attempt into this directory (a segment directory per policy).
    #[arg(long)]
    record: Option<PathBuf>,
    /// The success model of the `adaptive` policy: a `model.json`, a version directory or
    /// a model directory (its latest version). Default: `models/default` when it exists.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print the scoreboard as JSON.
    #[arg(long)]
    json: bool,
    /// Draw goodput and upstream load over time per policy into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Options of `retrywise-sim upstream`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpstreamArgs {
    /// A built-in scenario name or a scenario file.
    #[arg(long)]
    scenario: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: String,
    /// Seed of the upstream's draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Options of `retrywise-sim generate`.
#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    /// The Parquet dataset to write.
    #[arg(long, default_value = "data/sample")]
    out: PathBuf,
    /// Fraction of each scenario's requests to run (the default, all, makes about 40 MB).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Replace the dataset if `--out` already holds one.
    #[arg(long)]
    force: bool,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How much each phase's length varies from run to run, as factors `LO,HI` of its
    /// written length, drawn log-uniformly per run and phase; `1,1` runs the phases as
    /// written.
    #[arg(long, value_name = "LO,HI", value_parser = parse_factors, default_value = "0.125,4")]
    phase_lengths: (f64, f64),
    /// Only these scenarios, built-in names or TOML files (repeat; default: the built-in
    /// training suite, every built-in scenario but the held-out ones).
    #[arg(long = "scenario", value_name = "SCENARIO")]
    scenarios: Vec<String>,
}

/// Parses `LO,HI`.
fn parse_factors(s: &str) -> Result<(f64, f64), String> {
    let (lo, hi) = s
        .split_once(',')
        .ok_or_else(|| format!("expected LO,HI (two numbers and a comma), got `{s}`"))?;
    let num = |x: &str| {
        x.trim()
            .parse::<f64>()
            .map_err(|e| format!("`{}` is not a number: {e}", x.trim()))
    };
    Ok((num(lo)?, num(hi)?))
}

/// Options of `retrywise-sim learn`.
#[derive(Debug, clap::Args)]
pub(crate) struct LearnArgs {
    /// A built-in scenario name or a scenario file.
    #[arg(long)]
    scenario: String,
    /// Rounds after round 0 (round 0 runs the rules, or the model given with --from).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Start from this model in service, as a deployment running it would (a `model.json`,
    /// a version directory or a model directory: its latest version; e.g. `models/default`):
    /// round 0 runs the adaptive policy with it, exploring, instead of the rules, and each
    /// new model must beat it to serve (it is v0 in the rows).
    #[arg(long, value_name = "MODEL")]
    from: Option<PathBuf>,
    /// Also guard this scenario (a built-in name or a file; repeat for several): a new
    /// model serves only if, on each, it loses no more than half a point of success
    /// against the policy in service on any gate seed - a model trained on one scenario's
    /// traffic alone may forget what the one in service knew of others.
    #[arg(long = "guard", value_name = "SCENARIO")]
    guards: Vec<String>,
    /// Where the data (`DIR/data`) and the models (`DIR/models/NAME/VERSION`) go; it must
    /// not hold a previous loop's data (default: `learn-SCENARIO`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The models' name.
    #[arg(long, default_value = "learned")]
    name: String,
    /// Round k records traffic of seed SEED + k.
    #[arg(long, default_value_t = 101)]
    seed: u64,
    /// Every round is scored on this seed, which no round records nor gates on.
    #[arg(long, default_value_t = 1)]
    eval_seed: u64,
    /// A new model serves only if it beats the policy in service on the gate seeds, which
    /// start here: over all of them it gains success or saves attempts, and on none of them
    /// does it lose more than half a point of success.
    #[arg(long, default_value_t = 2)]
    gate_seed: u64,
    /// How many gate seeds (GATE_SEED, GATE_SEED + 1, …).
    #[arg(long, default_value_t = 3)]
    gate_seeds: u32,
    /// Print one JSON object per round (the scoreboard's fields and the model version).
    #[arg(long)]
    json: bool,
    /// Exit non-zero unless the loop improved — success up or attempts/request down from
    /// round 0 to the last round — and no round lost more than half a point of success
    /// against round 0 (for CI).
    #[arg(long)]
    check: bool,
}

/// Options of `retrywise-sim report`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// The folder to write `results.md`, `scoreboard.md`, `results.json` and the
    /// `goodput-*.svg` plots into.
    #[arg(long)]
    out: PathBuf,
    /// The success model of the `adaptive` policy (default: `models/default`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The seeds, comma-separated (the results are their means).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// Only these scenarios (repeat; default: every built-in one).
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Also judge the model's calibration on these logs (segment folders or Parquet, from
    /// runs it did not train on, e.g. `retrywise-sim generate --seed 13`): the targets
    /// `all/calibration` (ECE <= 0.03) and `SCENARIO/calibration` (ECE <= 0.05, AUC above
    /// the per-error baseline's).
    #[arg(long = "calibration-data")]
    calibration_data: Vec<String>,
    /// Exit non-zero when a target of the model-driven policy is missed (for CI).
    #[arg(long)]
    check: bool,
    /// With --check: a TOML file of known misses (`"SCENARIO/baseline" = "why"`,
    /// `"SCENARIO/goal"`, `"SCENARIO/full"` or `"SCENARIO/calibration"` under `[missed]`),
    /// reported but not failing; a known miss that is met, or not judged (a calibration
    /// check on too few rows), fails the check too, so the file stays true.
    #[arg(long, requires = "check")]
    known_misses: Option<PathBuf>,
}

/// The known-misses file of `report --check`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KnownMisses {
    missed: std::collections::BTreeMap<String, String>,
}

/// Options of `retrywise-sim select`.
#[derive(Debug, clap::Args)]
pub(crate) struct SelectArgs {
    /// A candidate: a `model.json`, a version directory, or a model directory (repeat;
    /// a model directory with several versions stands for each of them).
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// The seed the candidates are compared on (not one they trained on, nor one they will
    /// be evaluated on).
    #[arg(long, default_value_t = 12)]
    seed: u64,
    /// What an attempt costs against a success (the decider's default).
    #[arg(long, default_value_t = 0.1)]
    attempt_cost: f64,
    /// Print only the best candidate's path on stdout, for scripts (the ranking goes to
    /// stderr).
    #[arg(long)]
    best: bool,
}

/// Names the built-in scenarios and the policies.
pub(crate) fn list() -> anyhow::Result<()> {
    outln!("scenarios:");
    for s in Scenario::builtin() {
        outln!("  {:<14} {}", s.name, s.description);
    }
    outln!("policies:");
    for p in CATALOG {
        outln!("  {:<16} {}", p.name, p.description);
    }
    Ok(())
}

/// The policies a run asks for: those named, or every one.
fn policies_wanted(named: &[String]) -> impl Iterator<Item = &str> {
    let all = named.is_empty();
    CATALOG
        .iter()
        .map(|p| p.name)
        .filter(move |n| all || named.iter().any(|x| x == n))
}

/// The shipped model, relative to the repository root: `adaptive`'s model when no
/// `--model` is given.
const SHIPPED_MODEL: &str = "models/default";

/// The model of the `adaptive` policy: the one named (an error if it cannot be loaded), or
/// the shipped `models/default` when it is there (without it, the policy decides by its
/// fallback rules, and says so).
fn adaptive_model(
    path: Option<&std::path::Path>,
) -> anyhow::Result<Option<Arc<dyn retrywise::model::SuccessModel>>> {
    let shipped = std::path::Path::new(SHIPPED_MODEL);
    match path {
        Some(p) => Ok(Some(retrywise_sim::policies::load_model(p)?)),
        None if shipped.is_dir() => Ok(Some(retrywise_sim::policies::load_model(shipped)?)),
        None => {
            errln!(
                "warning: no --model and no models/default here: `adaptive` decides by its fallback rules"
            );
            Ok(None)
        }
    }
}

/// Runs policies and prints the scoreboard.
pub(crate) fn run_board(args: RunArgs) -> anyhow::Result<()> {
    // Before any work (a model to load, a target to reach).
    for (i, p) in args.policies.iter().enumerate() {
        anyhow::ensure!(
            !args.policies[..i].contains(p),
            "--policy {p} is given twice (each policy runs once per scoreboard)"
        );
    }
    if let Some(d) = args.deadline_ms {
        anyhow::ensure!(
            (MIN_DURATION_MS..=MAX_NUMBER).contains(&d),
            "--deadline-ms must be within [0.001, 1e9] (a microsecond to 11.6 days), got {d}"
        );
    }
    if let Some(t) = args.attempt_timeout_ms {
        anyhow::ensure!(
            (MIN_DURATION_MS..=MAX_NUMBER).contains(&t),
            "--attempt-timeout-ms must be within [0.001, 1e9] (a microsecond to 11.6 days), got {t}"
        );
    }
    let mut scenario = match &args.scenario {
        Some(name) => Scenario::load(name)?,
        // Only an endpoint: the load and the timeouts come from the flags.
        None => {
            let rps = args.rps.unwrap_or(100.0);
            let requests = args.requests.unwrap_or(1_000);
            anyhow::ensure!(
                rps.is_finite() && rps > 0.0 && rps <= MAX_NUMBER,
                "--rps must be positive, at most 1e9, got {rps}"
            );
            let duration_s = requests as f64 / rps;
            anyhow::ensure!(
                (1..=MAX_REQUESTS as u64).contains(&requests)
                    && duration_s <= retrywise_sim::driver::MAX_RUN_S,
                "--requests {requests} at --rps {rps}: a run sends 1 to {MAX_REQUESTS} requests \
                 over at most a week ({duration_s:.0} s here)"
            );
            // Checked with the deadline and timeout the run uses (the load in flight is
            // the rate times the deadline).
            Scenario::for_target(
                rps,
                duration_s,
                args.deadline_ms.unwrap_or(10_000.0),
                args.attempt_timeout_ms.unwrap_or(2_000.0),
            )
            .context("--rps, --requests, --deadline-ms and --attempt-timeout-ms")?
        }
    };
    if let Some(d) = args.deadline_ms {
        scenario.deadline_ms = d;
    }
    if let Some(t) = args.attempt_timeout_ms {
        // The scenario's rule, for a simulated upstream: a hang outlasts the attempt
        // timeout (else it is a slow 504, recorded as one, not as a timeout). A real
        // endpoint's hangs are its own.
        anyhow::ensure!(
            args.target.is_some() || args.scenario.is_none() || t < scenario.upstream.hang_ms,
            "--attempt-timeout-ms {t} must be shorter than the scenario's upstream.hang_ms ({}): a hung request outlasts the client's wait",
            scenario.upstream.hang_ms
        );
        scenario.attempt_timeout_ms = t;
    }
    if let Some(path) = &args.plot {
        writable(path).with_context(|| format!("--plot {}", path.display()))?;
    }
    let scenario = Arc::new(scenario);
    let mut opts = RunOptions::new(Arc::clone(&scenario));
    opts.seed = args.seed;
    if let Some(r) = args.rps {
        anyhow::ensure!(
            r.is_finite() && r > 0.0 && r <= MAX_NUMBER,
            "--rps must be positive, at most 1e9, got {r}"
        );
        opts.rps = r;
        // A burst sends its rps at once, whatever its (short) duration; Poisson arrivals
        // come at the rate for the run.
        opts.requests = match scenario.arrivals {
            retrywise_sim::scenario::Arrivals::Burst => r.round() as u64,
            _ => (r * scenario.duration_s).round() as u64,
        };
        anyhow::ensure!(
            opts.requests >= 1 || args.requests.is_some(),
            "--rps {r} over the scenario's {} s is no request at all: raise --rps or give --requests",
            scenario.duration_s
        );
    }
    if let Some(n) = args.requests {
        opts.requests = n;
    }
    anyhow::ensure!(
        opts.requests as f64 <= MAX_REQUESTS,
        "a run of {} requests is more than a run holds ({MAX_REQUESTS}): lower --requests or --rps",
        opts.requests
    );
    opts.record = args.record;
    if policies_wanted(&args.policies).any(|p| p == "adaptive" || p == "adaptive-full") {
        opts.model = adaptive_model(args.model.as_deref())?;
    } else if let Some(m) = &args.model {
        anyhow::bail!(
            "--model {} is for the `adaptive` and `adaptive-full` policies, which this run does not include",
            m.display()
        );
    }
    if let Some(target) = &args.target {
        reachable(target)?;
        // The scenario gives the load and the timeouts; its phases are the target's own
        // business, and began when it did, not with this run: no recovery from them is
        // measured (each policy's run would measure from its own start).
        if opts.scenario.trigger_end().is_some() {
            eprintln!(
                "note: against --target, {}'s phases are not this run's: no recovery is measured",
                opts.scenario.name
            );
            let own = std::sync::Arc::make_mut(&mut opts.scenario);
            own.phases.clear();
            own.trigger_end_s = None;
        }
    }
    if args.http || args.target.is_some() {
        opts.mode = Mode::Http {
            target: args.target,
        };
    }
    let policies: Vec<String> = if args.policies.is_empty() {
        CATALOG
            .iter()
            .filter(|p| opts.mode == Mode::Virtual || p.name != "oracle")
            .map(|p| p.name.to_owned())
            .collect()
    } else {
        args.policies
    };
    // Records of another run in the same folder would share this run's call ids (made of
    // the seed, the policy and the target): a trainer splitting by call would join calls
    // that never were one.
    if let Some(dir) = &opts.record {
        for policy in &policies {
            let segments = dir.join(policy);
            let holds = std::fs::read_dir(&segments).is_ok_and(|mut d| d.next().is_some());
            anyhow::ensure!(
                !holds,
                "--record {}: {} already holds records of another run, whose call ids this run's would repeat; record into an empty folder",
                dir.display(),
                segments.display()
            );
        }
    }
    // One step a policy: over HTTP each run lasts the scenario's whole duration.
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        if opts.mode == Mode::Virtual {
            errln!(
                "running {} policies on {} in virtual time",
                policies.len(),
                scenario.name
            );
        } else {
            errln!(
                "running {} policies on {} over HTTP, one after another: {} requests each at {}/s (about {:.0} s each)",
                policies.len(),
                scenario.name,
                opts.requests,
                opts.rps,
                opts.requests as f64 / opts.rps
            );
        }
    }
    let progress = Progress::new(
        policies.len() as u64,
        &format!(
            "{{spinner}} [{{bar:30}}] {{pos}}/{{len}} policies on {}, {{elapsed}} (about {{eta}} left) {{msg}}",
            scenario.name
        ),
        "run",
    );
    let (board, runs) = retrywise_sim::scoreboard_with(&policies, &opts, |policy| {
        progress.done(policy.to_owned());
    })?;
    progress.finish();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&board)?);
    } else {
        out!("{}", board.table());
    }
    if let Some(path) = args.plot {
        let title = format!("{} — {} at {}/s", scenario.name, board.mode, opts.rps);
        retrywise_sim::plot::plot(&path, &title, &runs, opts.rps)?;
        errln!("plot written to {}", path.display());
    }
    Ok(())
}

/// Refuses a `--target` that nothing listens on: every policy would score 0 % against it
/// and say nothing else. (One that is not a URL, or not plain HTTP, the driver refuses.)
fn reachable(target: &str) -> anyhow::Result<()> {
    let Some(url) = reqwest::Url::parse(target)
        .ok()
        .filter(|u| u.scheme() == "http")
    else {
        return Ok(());
    };
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .with_context(|| format!("--target `{url}`: cannot resolve `{host}`"))?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match std::net::TcpStream::connect_timeout(addr, std::time::Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => anyhow::bail!("cannot connect to --target `{url}`: {e}"),
        None => anyhow::bail!("--target `{url}`: `{host}` resolves to no address"),
    }
}

/// Serves a scenario's upstream until Ctrl-C.
pub(crate) fn serve(args: &UpstreamArgs) -> anyhow::Result<()> {
    let scenario = Arc::new(Scenario::load(&args.scenario)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let upstream = UpstreamModel::new(Arc::clone(&scenario), args.seed);
        let server = retrywise_sim::server::spawn(upstream, &args.addr).await?;
        errln!(
            "serving scenario `{}` on http://{} (phases run from now; Ctrl-C to stop)",
            scenario.name, server.addr
        );
        if !server.addr.ip().is_loopback() {
            errln!(
                "warning: {} is reachable from other machines - this upstream injects faults on purpose; bind 127.0.0.1 unless that is what you want",
                server.addr
            );
        }
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        anyhow::Ok(())
    })
}

/// Generates the training sample.
pub(crate) fn generate_data(args: &GenerateArgs) -> anyhow::Result<()> {
    // Before seventy runs, not after them.
    anyhow::ensure!(
        !args.out.exists() || args.out.is_dir(),
        "--out {} is a file, not a folder",
        args.out.display()
    );
    anyhow::ensure!(
        args.scale.is_finite() && args.scale > 0.0,
        "--scale must be a positive number, got {}",
        args.scale
    );
    // Every scenario read before any run, and before the working folder exists.
    let scenarios = args
        .scenarios
        .iter()
        .map(|s| Scenario::load(s).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let (work, _held) = tempfile_dir(&args.out)?;
    let mut opts = GenerateOptions::new(&args.out, &work);
    if !scenarios.is_empty() {
        opts.scenarios = scenarios;
    }
    opts.scale = args.scale;
    opts.seed = args.seed;
    opts.replace = args.force;
    opts.phase_lengths = args.phase_lengths;
    let total = (opts.scenarios.len() * retrywise_sim::generate::sample_policies().len()) as u64;
    let bar = Progress::new(
        total,
        "{spinner} generating [{bar:30}] {pos}/{len} runs {msg}",
        "run",
    );
    let summary = generate(&opts, |scenario, policy| {
        bar.done(format!("{scenario} / {policy}"));
    });
    bar.finish();
    let _ = std::fs::remove_dir_all(&work);
    let summary = summary?;
    outln!(
        "{} runs, {} logical requests, {} attempt records, {} bytes of Parquet in {}",
        summary.runs,
        summary.requests,
        summary.rows,
        summary.bytes,
        args.out.display()
    );
    Ok(())
}

/// Whether a file can be written at `path`, found before the work whose result it would
/// hold: opened for appending (created, and removed again, when it is not there yet), and,
/// since a regular file is replaced whole, its folder takes a new file.
fn writable(path: &std::path::Path) -> anyhow::Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .context("cannot be written")?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    // A regular file is replaced whole (written beside it, then renamed over it): its
    // folder must take a new file too. (A path that did not exist was just created
    // there: its folder took one.)
    if existed && std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = match real.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let probe = dir.join(format!(".retrywise-sim-check.{}.tmp", std::process::id()));
        std::fs::File::create(&probe)
            .with_context(|| format!("its folder {} takes no new file", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
    }
    Ok(())
}

/// The file in a working folder its run holds locked while it runs (the lock goes with the
/// process, however it ends).
const WORK_LOCK: &str = ".lock";

/// Removes the working folders that runs stopped mid-way (Ctrl-C, a kill) left in
/// `parent`: those whose lock file nobody holds any more. A folder without one, or whose
/// lock cannot be tried, is left alone.
fn sweep_stale_work(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let named = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(".retrywise-generate-"));
        if !named {
            continue;
        }
        let Ok(lock) = std::fs::File::open(e.path().join(WORK_LOCK)) else {
            continue;
        };
        // Held: its run goes on.
        if lock.try_lock().is_err() {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => errln!(
                "removed {}, left by a run that stopped before cleaning up",
                e.path().display()
            ),
            Err(err) => errln!(
                "warning: cannot remove {}, left by a stopped run: {err}",
                e.path().display()
            ),
        }
    }
}

/// A fresh working directory next to the output (same file system: cheap renames), and
/// its lock file, held: keep it until the folder is removed.
fn tempfile_dir(out: &std::path::Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    // Beside the output, never inside it (`--out .` has no parent but the folder itself).
    let out = std::path::absolute(out).with_context(|| format!("resolving {}", out.display()))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    sweep_stale_work(parent);
    let work = parent.join(format!(".retrywise-generate-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let path = work.join(WORK_LOCK);
    let lock = std::fs::File::create(&path)
        .and_then(|f| f.lock().map(|()| f))
        .with_context(|| format!("locking {}", path.display()))?;
    Ok((work, lock))
}

/// Runs the learning loop and prints each round's row.
pub(crate) fn learn(args: &LearnArgs) -> anyhow::Result<()> {
    use retrywise_sim::learn::{LearnOptions, Round};
    let scenario = Arc::new(Scenario::load(&args.scenario)?);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("learn-{}", scenario.name)));
    let mut opts = LearnOptions::new(Arc::clone(&scenario), &out);
    opts.rounds = args.rounds;
    opts.name.clone_from(&args.name);
    opts.seed = args.seed;
    opts.eval_seed = args.eval_seed;
    opts.gate_seed = args.gate_seed;
    opts.gate_seeds = args.gate_seeds;
    if let Some(path) = &args.from {
        opts.from = Some(retrywise_sim::policies::load_model(path)?);
    }
    for guard in &args.guards {
        opts.guards.push(Arc::new(Scenario::load(guard)?));
    }
    // Before the header: a refused option prints nothing else.
    opts.validate()?;
    let round0 = if args.from.is_some() {
        "the adaptive policy with the model given (v0)"
    } else {
        "the rules"
    };
    let bar = Progress::new(
        u64::from(args.rounds) + 1,
        "{spinner} learning [{bar:20}] round {pos}/{len} {msg}",
        "round",
    );
    let guarded = if args.guards.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = opts.guards.iter().map(|g| g.name.as_str()).collect();
        format!(
            " and loses no more than that on any of them on {}",
            names.join(", ")
        )
    };
    if !args.json {
        outln!(
            "learning on `{}`: round 0 runs {round0}; round k records seed {}+k with exploration, using the latest model; a model serves once it beats the policy in service on seeds {}..={} (losing no more than half a point on any){guarded}; each row is the policy in service on seed {}",
            scenario.name,
            args.seed,
            args.gate_seed,
            args.gate_seed
                .saturating_add(u64::from(args.gate_seeds.saturating_sub(1))),
            args.eval_seed
        );
        outln!(
            "{:<6} {:<14} {:>8} {:>9} {:>7} {:>8} {:>9} {:>9} {:>8}  gate (challenger vs in service)",
            "round",
            "in service",
            "success",
            "attempts",
            "peak",
            "p99 ms",
            "recovery",
            "recorded",
            "trained"
        );
    }
    let print = |r: &Round| {
        if args.json {
            match serde_json::to_string(r) {
                Ok(line) => bar.suspend(|| outln!("{line}")),
                Err(e) => bar.suspend(|| errln!("error: {e}")),
            }
        } else {
            let policy = match r.decided_with {
                Some(v) => format!("adaptive (v{v})"),
                None => "rule-adaptive".to_owned(),
            };
            let s = &r.score;
            let gate = r.gate.as_ref().map_or_else(String::new, |g| {
                let guards: String = g
                    .guards
                    .iter()
                    .map(|x| {
                        format!(
                            "; {} {:.1}% vs {:.1}%, worst seed -{:.1}",
                            x.scenario,
                            x.gate.challenger_success_rate * 100.0,
                            x.gate.incumbent_success_rate * 100.0,
                            x.gate.worst_loss * 100.0
                        )
                    })
                    .collect();
                format!(
                    "  v{} {:.1}% @{:.2} vs {:.1}% @{:.2}, worst seed -{:.1}{guards}: {}",
                    r.model_version - 1,
                    g.challenger_success_rate * 100.0,
                    g.challenger_attempts_per_request,
                    g.incumbent_success_rate * 100.0,
                    g.incumbent_attempts_per_request,
                    g.worst_loss * 100.0,
                    if r.promoted { "promoted" } else { "kept out" }
                )
            });
            bar.suspend(|| {
                outln!(
                    "{:<6} {:<14} {:>7.1}% {:>9.2} {:>6.2}x {:>8} {:>9} {:>9} {:>8}{gate}",
                    r.round,
                    policy,
                    s.success_rate * 100.0,
                    s.attempts_per_request,
                    s.peak_load_ratio,
                    s.p99_ms.map_or_else(|| "-".into(), |v| format!("{v:.0}")),
                    s.recovery_s
                        .map_or_else(|| "-".into(), |v| format!("{v:.0} s")),
                    r.recorded,
                    format!("v{}", r.model_version),
                );
            });
        }
        bar.inc();
    };
    let rounds = retrywise_sim::learn::learn(
        &opts,
        |k, step| bar.doing(format!("round {k}: {step}")),
        print,
    )?;
    bar.finish();
    if !args.json
        && let (Some(first), Some(last)) = (rounds.first(), rounds.last())
    {
        outln!(
            "round 0 -> {}: success {:+.1} points, attempts/request {:+.2}; models in {}",
            last.round,
            (last.score.success_rate - first.score.success_rate) * 100.0,
            last.score.attempts_per_request - first.score.attempts_per_request,
            out.join("models").join(&args.name).display()
        );
    }
    if args.check {
        use retrywise_sim::learn::{Verdict, judge};
        let scores: Vec<(f64, f64)> = rounds
            .iter()
            .map(|r| (r.score.success_rate, r.score.attempts_per_request))
            .collect();
        let pct = |x: f64| format!("{:.1} %", x * 100.0);
        let row = |r: Option<&(f64, f64)>| {
            r.map_or_else(|| "-".to_owned(), |&(s, a)| format!("{} at {a:.2}", pct(s)))
        };
        match judge(&scores) {
            Verdict::Improved => {}
            Verdict::Worse {
                round,
                success,
                first,
            } => anyhow::bail!(
                "round {round} serves {} against round 0's {}",
                pct(success),
                pct(first)
            ),
            Verdict::NothingToImprove { attempts } => anyhow::bail!(
                "nothing to improve: round 0 ({round0}) already serves 100.0 % at {attempts:.2} attempts/request on this scenario, so --check cannot tell whether the loop learns; check it on a scenario where it falls short"
            ),
            Verdict::NotImproved => {
                // Say why: no model ever served (each challenger kept out by the gate, so
                // the rules served every round), or the models that served did no better.
                let first = rounds.first().and_then(|r| r.decided_with);
                let why = if rounds.iter().all(|r| r.decided_with == first) {
                    format!(
                        "; no new model served: each round's challenger did not beat {round0} on the gate seeds, so it served every round"
                    )
                } else {
                    format!("; the models that served did no better than {round0}")
                };
                anyhow::bail!(
                    "the loop did not improve: round 0 {}, round {} {}{why}",
                    row(scores.first()),
                    scores.len().saturating_sub(1),
                    row(scores.last())
                )
            }
        }
    }
    Ok(())
}

/// Writes the report and prints the results table.
pub(crate) fn report(args: &ReportArgs) -> anyhow::Result<()> {
    use retrywise_sim::report::ReportOptions;
    anyhow::ensure!(
        !args.out.exists() || args.out.is_dir(),
        "--out {} is a file, not a folder (the report writes its tables and plots into one)",
        args.out.display()
    );
    anyhow::ensure!(!args.seeds.is_empty(), "--seeds names no seed");
    for (i, seed) in args.seeds.iter().enumerate() {
        anyhow::ensure!(
            !args.seeds[..i].contains(seed),
            "--seeds gives seed {seed} twice (the results are means over distinct seeds)"
        );
    }
    // Read before the runs, so that a file that is not there or not TOML is said at once.
    let known = match (&args.known_misses, args.check) {
        (Some(path), true) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<KnownMisses>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
                .missed
        }
        (Some(path), false) => anyhow::bail!(
            "--known-misses {} is read by --check, which this report does not run",
            path.display()
        ),
        (None, _) => Default::default(),
    };
    // A calibration target is judged only on runs the model did not train on: a known
    // miss naming one cannot be checked without them (found now, not after the runs).
    if let Some(id) = known.keys().find(|id| id.ends_with("/calibration"))
        && args.calibration_data.is_empty()
    {
        anyhow::bail!(
            "the known misses name `{id}`, a calibration target, which only --calibration-data DIR judges: give it, or check without that entry"
        );
    }
    let model = adaptive_model(args.model.as_deref())?;
    let origin = match (&args.model, &model) {
        (Some(p), _) => format!("the model at {}", p.display()),
        (None, Some(_)) => "the shipped model (models/default)".to_owned(),
        (None, None) => "no model (its fallback rules)".to_owned(),
    };
    let calibration = if args.calibration_data.is_empty() {
        None
    } else {
        let dir = match (&args.model, &model) {
            (Some(p), _) => retrywise_sim::policies::model_file(p)?,
            (None, Some(_)) => retrywise_sim::policies::model_file(SHIPPED_MODEL.as_ref())?,
            (None, None) => {
                anyhow::bail!("--calibration-data judges a model: name one with --model")
            }
        };
        errln!(
            "evaluating {} on {}",
            dir.display(),
            args.calibration_data.join(", ")
        );
        let e = retrywise_train::eval(
            &dir,
            &args.calibration_data,
            &retrywise_train::data::Filter::default(),
            retrywise_train::data::DEFAULT_MAX_ROWS,
            &mut |step| {
                if let retrywise_train::Step::Loaded(s) = step {
                    errln!("read {} rows from {} files; scoring", s.rows, s.files);
                }
            },
        )
        .with_context(|| format!("evaluating {} for --calibration-data", dir.display()))?;
        Some(e.evaluation)
    };
    let mut opts = ReportOptions::new(model, origin);
    opts.calibration = calibration;
    opts.seeds.clone_from(&args.seeds);
    if !args.scenarios.is_empty() {
        opts.scenarios = args
            .scenarios
            .iter()
            .map(|s| Scenario::load(s).map(Arc::new))
            .collect::<Result<_, _>>()?;
    }
    let bar = Progress::new(
        (opts.scenarios.len() * opts.seeds.len()) as u64,
        "{spinner} scoring [{bar:30}] {pos}/{len} {msg}",
        "scenario and seed",
    );
    let report = retrywise_sim::report::report(&opts, &args.out, |scenario, seed| {
        bar.done(format!("{scenario} seed {seed}"));
    })?;
    bar.finish();
    out!("{}", report.summary_markdown());
    let plots: Vec<String> = report
        .plots
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    errln!(
        "written: {} (results.md, scoreboard.md, results.json{}{})",
        args.out.display(),
        if plots.is_empty() { "" } else { ", " },
        plots.join(", ")
    );
    if plots.is_empty() {
        errln!(
            "no goodput plot: it is drawn for {} only, and none of them was run",
            retrywise_sim::report::PLOTTED.join(", ")
        );
    }
    if !args.check {
        return Ok(());
    }
    let checked = report.check(&known);
    for line in &checked.lines {
        outln!("{line}");
    }
    anyhow::ensure!(
        checked.failures.is_empty(),
        "targets: {}",
        checked.failures.join("; ")
    );
    Ok(())
}

/// Ranks candidate models by their decisions.
pub(crate) fn select(args: &SelectArgs) -> anyhow::Result<()> {
    let mut models = Vec::new();
    for p in args
        .models
        .iter()
        .map(|p| retrywise_sim::select::candidates(p))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
    {
        let m: Arc<dyn retrywise::model::SuccessModel> = retrywise_sim::policies::load_model(&p)?;
        models.push((p.display().to_string(), m));
    }
    let suite = retrywise_sim::select::suite();
    let bar = Progress::new(
        (models.len() * suite.len()) as u64,
        "{spinner} selecting [{bar:30}] {pos}/{len} runs {msg}",
        "run",
    );
    let ranked = retrywise_sim::select::select(
        models,
        &suite,
        args.seed,
        args.attempt_cost,
        |model, scenario| bar.done(format!("{model} on {scenario}")),
    )?;
    bar.finish();
    let mut table = format!(
        "the adaptive policy with each model on the training suite, seed {} (objective: success - {} x attempts)\n{:>9} {:>9} {:>9}  model\n",
        args.seed, args.attempt_cost, "success", "attempts", "objective"
    );
    for c in &ranked {
        table.push_str(&format!(
            "{:>8.2}% {:>9.3} {:>9.4}  {}\n",
            c.success_rate * 100.0,
            c.attempts_per_request,
            c.objective,
            c.model
        ));
    }
    if args.best {
        // The ranking goes to stderr, for the log; stdout is the best path alone.
        errout!("{table}");
        if let Some(best) = ranked.first() {
            outln!("{}", best.model);
        }
    } else {
        out!("{table}");
    }
    Ok(())
}
