//! Training data: the scenario suite run by every policy with exploration, recorded and
//! compacted to Parquet.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use retrywise_collect::compact::{CompactOptions, compact};
use serde::Serialize;

use crate::driver::{self, RunOptions};
use crate::policies::CATALOG;
use crate::scenario::{HELD_OUT, Scenario};
use crate::{SimError, par_map};

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// The Parquet dataset to write. It must not exist or be empty, unless `replace`.
    pub out: PathBuf,
    /// A scratch directory on the same file system as `out`: segments are recorded and
    /// compacted there, and the finished dataset is moved into place at the end, so an
    /// interrupted run leaves `out` as it was.
    pub work: PathBuf,
    /// Replace a dataset already at `out`.
    pub replace: bool,
    /// The scenarios.
    pub scenarios: Vec<Arc<Scenario>>,
    /// Fraction of each scenario's own request count to run.
    pub scale: f64,
    /// Seed.
    pub seed: u64,
    /// Exploration of retry delays: factors `[lo, hi]`, probability.
    pub explore: (f64, f64, f64),
}

impl GenerateOptions {
    /// The built-in suite (without the scenarios held out, [`HELD_OUT`]) at 60 % of each
    /// scenario's size (about 1.2 M attempt records, 16 MB of Parquet), exploring half of
    /// the retry delays by factors between 1/4 and 4.
    pub fn new(out: impl Into<PathBuf>, work: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            work: work.into(),
            replace: false,
            scenarios: Scenario::builtin()
                .into_iter()
                .filter(|s| !HELD_OUT.contains(&s.name.as_str()))
                .map(Arc::new)
                .collect(),
            scale: 0.6,
            seed: 1,
            explore: (0.25, 4.0, 0.5),
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenerateSummary {
    /// Runs made (scenario × policy).
    pub runs: u64,
    /// Logical requests simulated.
    pub requests: u64,
    /// Attempt records written.
    pub rows: u64,
    /// Parquet bytes written.
    pub bytes: u64,
}

fn io(op: &str, path: &Path, source: std::io::Error) -> SimError {
    SimError::Io {
        op: format!("{op} {}", path.display()),
        source,
    }
}

/// Runs every scenario with every policy but the oracle (which sends only winning
/// attempts: no data to learn from), recording with exploration, compacts the records
/// to Parquet, and moves the dataset to `out`. Runs use every CPU.
///
/// `on_run` is told each finished run (scenario, policy).
///
/// # Errors
/// [`SimError::Option`] if `out` holds data and `replace` is not set; simulation,
/// recording, compaction and file errors.
pub fn generate(
    opts: &GenerateOptions,
    on_run: impl Fn(&str, &str) + Sync,
) -> Result<GenerateSummary, SimError> {
    if !(opts.scale.is_finite() && opts.scale > 0.0) {
        return Err(SimError::Option {
            field: "scale",
            problem: format!("must be positive, got {}", opts.scale),
        });
    }
    let occupied = std::fs::read_dir(&opts.out).is_ok_and(|mut d| d.next().is_some());
    if occupied && !opts.replace {
        return Err(SimError::Option {
            field: "out",
            problem: format!(
                "{} already holds data; to replace it pass `--force` (`GenerateOptions::replace`)",
                opts.out.display()
            ),
        });
    }
    let staging = opts.work.join("parquet");
    std::fs::create_dir_all(&staging).map_err(|e| io("create", &staging, e))?;
    // The data comes from the sample's rule-based policies: not the model-driven one (it
    // learns from this data) nor the AWS baseline (added later; kept out so that the
    // sample's recipe stays what data/README.md describes).
    let policies: Vec<_> = CATALOG
        .iter()
        .filter(|p| {
            !matches!(
                p.name,
                "oracle" | "adaptive" | "adaptive-full" | "aws-adaptive"
            )
        })
        .collect();
    let mut summary = GenerateSummary::default();
    for scenario in &opts.scenarios {
        let segments = opts.work.join("segments").join(&scenario.name);
        let runs = par_map(&policies, |spec| {
            let mut run = RunOptions::new(Arc::clone(scenario));
            run.requests = ((run.requests as f64 * opts.scale).round() as u64).max(1);
            run.seed = opts.seed;
            run.record = Some(segments.clone());
            run.explore = Some(opts.explore);
            let result = driver::run(spec, &run);
            on_run(&scenario.name, spec.name);
            result
        });
        for run in runs {
            summary.runs += 1;
            summary.requests += run?.outcomes.len() as u64;
        }
        // Compact this scenario's segments (one directory per policy); compaction removes
        // each segment once its rows are durably in Parquet.
        for spec in &policies {
            let dir = segments.join(spec.name);
            if dir.exists() {
                let s = compact(&CompactOptions::new(&dir, &staging), |_| {
                    ControlFlow::Continue(())
                })?;
                summary.rows += s.rows;
                summary.bytes += s.bytes;
            }
        }
    }
    let lock = staging.join(".compact.lock");
    std::fs::remove_file(&lock).map_err(|e| io("remove", &lock, e))?;
    if occupied {
        std::fs::remove_dir_all(&opts.out).map_err(|e| io("remove", &opts.out, e))?;
    } else if opts.out.exists() {
        std::fs::remove_dir(&opts.out).map_err(|e| io("remove", &opts.out, e))?;
    }
    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    std::fs::rename(&staging, &opts.out).map_err(|e| io("move the dataset to", &opts.out, e))?;
    Ok(summary)
}
