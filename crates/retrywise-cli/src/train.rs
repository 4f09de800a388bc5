//! `retrywise train`, `retrywise eval` and `retrywise inspect`.

use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use retrywise_train::data::{Filter, SampleSummary};
use retrywise_train::evaluate::{CalibrationLimits, Evaluation};
use retrywise_train::fit::FitOptions;
use retrywise_train::metrics::Metrics;
use retrywise_train::{SplitBy, Step, TrainOptions};

/// Which rows to use.
#[derive(Debug, clap::Args)]
pub(crate) struct FilterArgs {
    /// Only attempts to this target (repeat for several).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Only attempts started at or after this time (ms since the Unix epoch).
    #[arg(long)]
    from_ms: Option<u64>,
    /// Only attempts started before this time (ms since the Unix epoch).
    #[arg(long)]
    until_ms: Option<u64>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            targets: self.targets.clone(),
            from_ms: self.from_ms,
            until_ms: self.until_ms,
        }
    }
}

/// Options of `retrywise train`.
#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    /// Parquet or NDJSON logs: files, folders, globs.
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<String>,
    /// The models folder; the model is written to `OUT/NAME/<next version>/`.
    #[arg(long, default_value = "models")]
    out: PathBuf,
    /// The model's name.
    #[arg(long, default_value = "default")]
    name: String,
    #[command(flatten)]
    filter: FilterArgs,
    /// The share of rows held out for validation: the latest of each target's, or a share of
    /// the calls (`--split`).
    #[arg(long, default_value_t = 0.2)]
    validation_fraction: f64,
    /// How validation rows are chosen: `time` holds out each target's latest rows (logs of
    /// real traffic), with a cut-off time per target: no training row of a target is later
    /// than a validation row of the same target, but another target's training rows may
    /// be; `call` holds out a share of the calls, drawn by a hash of target and call id
    /// (simulated runs, whose latest rows are one phase of each scenario).
    #[arg(long, value_enum, default_value_t = SplitArg::Time)]
    split: SplitArg,
    /// The most rows to read, about: a larger input (counted from the Parquet footers
    /// first) is read as a uniform sample of whole calls, a hash of each call id deciding,
    /// in time order (a log without call ids: a hash of each row's start, row by row),
    /// which bounds memory (about 0.7 KiB per row kept) whatever the input's size. Rows
    /// are counted before duplicates and invalid rows are dropped: an input full of them
    /// keeps fewer rows than this, never more. At least 1.
    #[arg(long, default_value_t = retrywise_train::data::DEFAULT_MAX_ROWS)]
    max_rows: u64,
    /// Candidate L2 penalties (scikit-learn's 1/C), comma-separated; the one with the
    /// lowest log-loss on a share of the training rows held out (split as --split says)
    /// is fitted on all of them.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true,
          default_values_t = FitOptions::default().alphas)]
    alphas: Vec<f64>,
    /// L-BFGS iterations per fit at most (scikit-learn's `max_iter`).
    #[arg(long, default_value_t = FitOptions::default().max_iterations)]
    max_iterations: u64,
    /// Stop a fit when the gradient of the mean loss is below this (scikit-learn's `tol`;
    /// from 1e-20 to 1e6).
    #[arg(long, default_value_t = FitOptions::default().tolerance)]
    tolerance: f64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `--split`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum SplitArg {
    /// The latest share of each target's rows.
    Time,
    /// A share of the calls, with all their attempts.
    Call,
}

impl From<SplitArg> for SplitBy {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Time => SplitBy::Time,
            SplitArg::Call => SplitBy::Call,
        }
    }
}

/// Options of `retrywise eval`.
#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    /// A model version folder (models/NAME/VERSION) or its model.json.
    #[arg(long)]
    model: PathBuf,
    /// Parquet or NDJSON logs: files, folders, globs.
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// The most rows to read, about: a larger input is read as a uniform sample of whole
    /// calls, as `retrywise train --max-rows` reads it, which bounds memory whatever the
    /// input's size. At least 1.
    #[arg(long, default_value_t = retrywise_train::data::DEFAULT_MAX_ROWS)]
    max_rows: u64,
    /// Print the metrics as JSON.
    #[arg(long)]
    json: bool,
    /// Exit non-zero unless the model is calibrated enough to decide by: ECE within
    /// --max-ece-overall on every row, and on each target's rows within --max-ece with an
    /// AUC above the per-error baseline's where there is anything to rank (for CI, before
    /// a new model serves).
    #[arg(long)]
    check: bool,
    /// With --check: the largest ECE on each target's rows.
    #[arg(long, default_value_t = CalibrationLimits::default().max_ece, requires = "check", value_parser = unit_interval)]
    max_ece: f64,
    /// With --check: the largest ECE on every row.
    #[arg(long, default_value_t = CalibrationLimits::default().max_ece_overall, requires = "check", value_parser = unit_interval)]
    max_ece_overall: f64,
    /// With --check: the fewest rows a target's check is judged on (below it even a
    /// calibrated model's ECE is mostly noise); a target with fewer is reported as not
    /// judged. The every-row check, to its tighter limit, needs min-rows x
    /// (max-ece / max-ece-overall)^2 rows (5,556 by default).
    #[arg(long, default_value_t = CalibrationLimits::default().min_rows, requires = "check")]
    min_rows: u64,
}

/// A number within `[0, 1]` (clap's parser for the ECE limits).
fn unit_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be within [0, 1], got {v}"))
    }
}

/// Options of `retrywise inspect`.
#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// A model version folder (models/NAME/VERSION) or its model.json.
    #[arg(long)]
    model: PathBuf,
    /// Print the whole artifact as JSON.
    #[arg(long)]
    json: bool,
}

/// A progress display for the steps of a run: a byte bar while reading, then a spinner.
/// The progress of a load, then of `after` ("fitting" for training, "scoring" for an
/// evaluation).
fn progress(after: &'static str) -> (ProgressBar, impl FnMut(Step)) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("reading");
    let b = bar.clone();
    // Without a terminal (CI, a log file) the bar is not drawn: each phase gets a line
    // instead, so a long run is never silent.
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let say = move |line: String| {
        if plain {
            errln!("{line}");
        }
    };
    let on = move |step: Step| match step {
        Step::Resolved { files, bytes } => {
            // Checking every file's lines and counting its rows comes first, a pass over
            // all of them: the bar moves (and a line says so) from now on, not only once
            // reading starts.
            b.set_length(bytes);
            b.set_message(format!("checking and counting the rows of {files} files"));
            b.enable_steady_tick(std::time::Duration::from_millis(100));
            say(format!(
                "found {files} files ({bytes} bytes); checking and counting their rows"
            ));
        }
        Step::Counted(s) => {
            say(format!("counted {} rows; reading them", s.input_rows));
            if s.sampled() {
                // Printed whether or not the bar is drawn (it is not when stderr is no
                // terminal).
                b.suspend(|| errln!("{}", sampling(&s)));
                b.set_message(format!("sampling {:.2} % of the calls", s.fraction * 100.0));
            }
        }
        Step::FileRead(path) => {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            b.inc(size);
            b.set_message(
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        Step::Loaded(s) => {
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_prefix(after);
            b.set_message(format!("{} rows", s.rows));
            b.enable_steady_tick(std::time::Duration::from_millis(100));
            say(format!(
                "read {} rows from {} files; {after}",
                s.rows, s.files
            ));
        }
        Step::Split { train, validation } => {
            let m = format!("{train} training rows, {validation} validation rows");
            say(format!("split: {m}"));
            b.set_message(m);
        }
        Step::Trial(t) => {
            let m = format!(
                "alpha {} → held-out log-loss {:.5}",
                t.alpha, t.validation_log_loss
            );
            say(m.clone());
            b.set_message(m);
        }
        Step::Fingerprinting => {
            let m = "fingerprinting the training files".to_owned();
            say(m.clone());
            b.set_message(m);
        }
        Step::Refit { alpha, rows } => {
            let m = format!("fitting alpha {alpha} on all {rows} training rows");
            say(m.clone());
            b.set_message(m);
        }
        Step::Evaluated => {
            say("evaluated".into());
            b.set_prefix("evaluated");
        }
        Step::Written(_) => {}
    };
    (bar, on)
}

/// What sampling an input means, in a line.
fn sampling(s: &SampleSummary) -> String {
    format!(
        "sampling: {} rows in the input, more than --max-rows {}: reading a uniform sample of whole calls, {:.4} % of them, in time order",
        s.input_rows,
        s.max_rows,
        s.fraction * 100.0
    )
}

fn row(name: &str, m: &Metrics) -> String {
    format!(
        "{name:<28} {:>8} {:>9.4} {:>8.4} {:>8.4} {:>9}",
        m.auc.map_or_else(|| "-".into(), |a| format!("{a:.4}")),
        m.log_loss,
        m.brier,
        m.ece,
        m.rows
    )
}

fn print_evaluation(e: &Evaluation) {
    outln!(
        "{:<28} {:>8} {:>9} {:>8} {:>8} {:>9}",
        "",
        "AUC",
        "log-loss",
        "Brier",
        "ECE",
        "rows"
    );
    outln!("{}", row("model", &e.model));
    outln!("{}", row("baseline (rate per error)", &e.baseline));
    outln!();
    outln!(
        "{:<14} {:>9} {:>8} {:>9} {:>10} {:>8} {:>10}",
        "previous error",
        "rows",
        "success",
        "log-loss",
        "(baseline)",
        "Brier",
        "(baseline)"
    );
    for k in &e.by_error {
        outln!(
            "{:<14} {:>9} {:>7.1}% {:>9.4} {:>10.4} {:>8.4} {:>10.4}",
            k.kind,
            k.rows,
            k.success_rate * 100.0,
            k.model.log_loss,
            k.baseline.log_loss,
            k.model.brier,
            k.baseline.brier
        );
    }
    outln!();
    outln!(
        "{:<16} {:>9} {:>8} {:>7} {:>10} {:>7} {:>10}",
        "target",
        "rows",
        "success",
        "AUC",
        "(baseline)",
        "ECE",
        "(baseline)"
    );
    let auc = |a: Option<f64>| a.map_or_else(|| "-".to_owned(), |a| format!("{a:.4}"));
    for t in &e.by_target {
        outln!(
            "{:<16} {:>9} {:>7.1}% {:>7} {:>10} {:>7.4} {:>10.4}",
            t.target,
            t.rows,
            t.success_rate * 100.0,
            auc(t.model.auc),
            auc(t.baseline.auc),
            t.model.ece,
            t.baseline.ece
        );
    }
}

pub(crate) fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let mut opts = TrainOptions::new(args.data.clone(), &args.out, &args.name);
    opts.filter = args.filter.filter();
    opts.validation_fraction = args.validation_fraction;
    opts.split = args.split.into();
    opts.max_rows = args.max_rows;
    opts.fit.alphas = args.alphas.clone();
    opts.fit.max_iterations = args.max_iterations;
    opts.fit.tolerance = args.tolerance;
    let (bar, mut on) = progress("fitting");
    let started = std::time::Instant::now();
    let trained = retrywise_train::train(&opts, &mut on);
    bar.finish_and_clear();
    let trained = trained.with_context(|| format!("training model `{}`", args.name))?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "name": trained.artifact.name,
                "version": trained.version,
                // (Lossy: `json!` would panic on a path that is not UTF-8.)
                "dir": trained.dir.to_string_lossy(),
                "alpha": trained.artifact.regularization.alpha,
                "training": trained.artifact.training,
                "validation": trained.evaluation,
            }))?
        );
        return Ok(());
    }
    let t = &trained.artifact.training;
    outln!(
        "model {} version {} written to {} in {:.1} s",
        trained.artifact.name,
        trained.version,
        trained.dir.display(),
        started.elapsed().as_secs_f64()
    );
    let held_out = match opts.split {
        SplitBy::Time => format!(
            "the latest of each of {} targets",
            t["validation_from_ms"].as_object().map_or(0, |m| m.len())
        ),
        SplitBy::Call => format!("{} of the calls", opts.validation_fraction),
    };
    outln!(
        "{} rows ({} training, {} validation: {held_out}), {} files, alpha {}; skipped: {}",
        t["rows"],
        t["train_rows"],
        t["validation_rows"],
        t["files"].as_array().map_or(0, Vec::len),
        trained.artifact.regularization.alpha,
        t["skipped"]
    );
    if let Some(on) = t["alpha_chosen_on"]
        .as_str()
        .filter(|on| on.starts_with("the validation rows"))
    {
        outln!("note: the penalty was chosen on {on}; the validation metrics are optimistic");
    }
    let sample = &t["sample"];
    if sample["fraction"].as_f64().is_some_and(|f| f < 1.0) {
        outln!(
            "sampled: {} rows read of {} in the input ({:.4} % of the calls, by a hash of call_id; --max-rows {})",
            sample["rows_read"],
            sample["input_rows"],
            sample["fraction"].as_f64().unwrap_or(1.0) * 100.0,
            sample["max_rows"]
        );
    }
    outln!();
    print_evaluation(&trained.evaluation);
    outln!("\nreport: {}", trained.dir.join("report.html").display());
    Ok(())
}

pub(crate) fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let (bar, mut on) = progress("scoring");
    let report = retrywise_train::eval(
        &args.model,
        &args.data,
        &args.filter.filter(),
        args.max_rows,
        &mut on,
    );
    bar.finish_and_clear();
    let report = report.with_context(|| format!("evaluating {}", args.model.display()))?;
    let checks = args.check.then(|| {
        report.evaluation.check_calibration(&CalibrationLimits {
            max_ece_overall: args.max_ece_overall,
            max_ece: args.max_ece,
            min_rows: args.min_rows,
        })
    });
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(c) = &checks {
            v["checks"] = serde_json::to_value(c)?;
        }
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let skipped = if report.load.skipped_total() == 0 {
            String::new()
        } else {
            let why: Vec<String> = report
                .load
                .skipped
                .iter()
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect();
            format!(": {}", why.join(", "))
        };
        outln!(
            "model {} version {} on {} rows ({} skipped{skipped})\n",
            report.model,
            report.version,
            report.load.rows,
            report.load.skipped_total()
        );
        print_evaluation(&report.evaluation);
    }
    let Some(checks) = checks else {
        return Ok(());
    };
    let name = |c: &retrywise_train::evaluate::CalibrationCheck| {
        c.target.clone().unwrap_or_else(|| "every row".to_owned())
    };
    if !args.json {
        outln!();
        for c in &checks {
            outln!(
                "{} {}: {} ({})",
                match (c.judged, c.met) {
                    (false, _) => "not judged (too few rows)",
                    (true, true) => "met   ",
                    (true, false) => "MISSED",
                },
                name(c),
                c.measured,
                c.goal
            );
        }
    }
    anyhow::ensure!(
        checks.iter().any(|c| c.judged),
        "calibration check: too few rows to judge anything ({} rows; --min-rows {})",
        report.load.rows,
        args.min_rows
    );
    let missed: Vec<String> = checks
        .iter()
        .filter(|c| c.judged && !c.met)
        .map(name)
        .collect();
    anyhow::ensure!(
        missed.is_empty(),
        "calibration check: {} of {} missed: {}",
        missed.len(),
        checks.len(),
        missed.join(", ")
    );
    Ok(())
}

pub(crate) fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let a = retrywise_train::store::load_artifact(&args.model)?;
    if args.json {
        outln!("{}", a.to_json());
        return Ok(());
    }
    outln!(
        "model {} version {} ({}), created {} by {}",
        a.name,
        a.version,
        a.kind,
        a.created_at,
        a.code_version
    );
    outln!(
        "features: {} ({} columns); L2 alpha {}; p(success) = σ(intercept + Σ w·(x − mean)/scale)\n",
        a.features.set,
        a.weights.len(),
        a.regularization.alpha
    );
    let mut order: Vec<usize> = (0..a.weights.len()).collect();
    order.sort_by(|&i, &j| a.weights[j].abs().total_cmp(&a.weights[i].abs()));
    outln!(
        "{:<30} {:>9} {:>9} {:>9}  meaning",
        "feature",
        "weight",
        "mean",
        "scale"
    );
    for i in order {
        outln!(
            "{:<30} {:>+9.4} {:>9.4} {:>9.4}  {}",
            a.features.names[i],
            a.weights[i],
            a.scaler.mean[i],
            a.scaler.scale[i],
            a.features.descriptions.get(i).map_or("", String::as_str)
        );
    }
    outln!("{:<30} {:>+9.4}", "intercept", a.intercept);
    let t = &a.training;
    outln!(
        "\ntraining: {} rows ({} training, {} validation), time range {} ms, {} files, fingerprint {}",
        t["rows"],
        t["train_rows"],
        t["validation_rows"],
        t["time_range_ms"],
        retrywise_train::store::file_count(t),
        t["fingerprint"].as_str().unwrap_or("?")
    );
    if let Some(v) = a.metrics.get("validation") {
        let b = &a.metrics["baseline"]["validation"];
        let f = |x: &serde_json::Value| {
            x.as_f64()
                .map_or_else(|| "?".to_owned(), |x| format!("{x:.4}"))
        };
        outln!(
            "validation (model vs baseline): AUC {} vs {}, log-loss {} vs {}, Brier {} vs {}, ECE {} vs {}",
            f(&v["auc"]),
            f(&b["auc"]),
            f(&v["log_loss"]),
            f(&b["log_loss"]),
            f(&v["brier"]),
            f(&b["brier"]),
            f(&v["ece"]),
            f(&b["ece"])
        );
    }
    Ok(())
}
