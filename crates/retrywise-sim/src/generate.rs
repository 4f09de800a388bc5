//! Training data: the scenario suite run by every policy with exploration, recorded and
//! compacted to Parquet.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use retrywise_collect::compact::{CompactOptions, compact};
use serde::Serialize;

use crate::driver::{self, RunOptions};
use crate::policies::{CATALOG, Contender};
use crate::rng::Rng;
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
    /// How much each phase's length varies from run to run: every run draws, for each
    /// phase, a factor log-uniformly from `[lo, hi]` and the phase keeps its start and
    /// lasts its written length times that factor. The default is [`PHASE_LENGTHS`];
    /// `(1, 1)` runs the phases as written.
    ///
    /// A suite whose outages all last exactly 10 s teaches a model that a refusal ends
    /// after exactly 10 s: sure that waiting 8 s into it is useless, and sure that one
    /// just begun lasts long. Drawn lengths teach the chance that a failure which has
    /// lasted so long ends within the next wait instead.
    pub phase_lengths: (f64, f64),
}

/// The spread of phase lengths the sample is drawn with (`--phase-lengths 0.125,4`, the
/// default): from an eighth of the written length (a 10 s outage becomes 1.25 s, about one
/// attempt timeout: the shortest refusal that is still more than a blip) to four times it
/// (40 s, eight times the suite's 5 s deadlines), log-uniformly, so that every duration
/// scale in between is as likely as any other, and at full length (`scale` 1) so that the
/// long ones are seen ending. README ("Phase lengths") gives what it wins and loses on the
/// scoreboard against the phases as written.
pub const PHASE_LENGTHS: (f64, f64) = (0.125, 4.0);

/// The policies whose runs make the sample: the rule-based ones - not the oracle (it sends
/// only winning attempts), not the model-driven ones (they learn from this data), nor the
/// AWS baseline (added later; kept out so that the sample's recipe stays what
/// data/README.md describes).
pub fn sample_policies() -> Vec<&'static Contender> {
    CATALOG
        .iter()
        .filter(|p| {
            !matches!(
                p.name,
                "oracle" | "adaptive" | "adaptive-full" | "aws-adaptive"
            )
        })
        .collect()
}

/// The longest a phase may be stretched (`phase_lengths`' upper factor): a thousand times
/// its written length is already longer than any run. Its inverse is the most it may be
/// shrunk (so that the ratio of the two factors, which the draw raises to a power, stays a
/// finite number).
pub const MAX_PHASE_FACTOR: f64 = 1e3;

/// `scenario` with each phase's length multiplied by a factor drawn log-uniformly from
/// `[lo, hi]` (each phase keeps its start), a stretched phase ending at the latest where
/// the next phase that begins within or after it and outlasts it (as written) begins:
/// phases that followed one another as written still do, so that a phase is never cut
/// short by the next and then resumed after it (a 20 s storm stretched four times would
/// run through the rate limit 20 s after it, and come back when that ends), and one that
/// a later phase overlapped does not resume after that one ends. A phase written inside
/// another keeps overriding it, and the other resumes after it as written. The same
/// scenario, factors and seed give the same lengths.
pub fn vary_phase_lengths(scenario: &Scenario, (lo, hi): (f64, f64), seed: u64) -> Scenario {
    let mut varied = scenario.clone();
    let mut rng = Rng::new(seed);
    for phase in &mut varied.phases {
        let p = phase.get_mut();
        let factor = lo * (hi / lo).powf(rng.unit());
        // The first phase to begin within or after this one and outlast it, as written
        // (`p` is still as written, and never outlasts itself).
        let next = scenario
            .phases
            .iter()
            .map(toml::Spanned::get_ref)
            .filter(|q| q.start_s >= p.start_s && q.end_s > p.end_s)
            .map(|q| q.start_s)
            .reduce(f64::min);
        let end = p.start_s + (p.end_s - p.start_s) * factor;
        p.end_s = next.map_or(end, |n| end.min(n.max(p.end_s)));
    }
    varied
}

impl GenerateOptions {
    /// The built-in suite (without the scenarios held out, [`HELD_OUT`]) at each
    /// scenario's full size with its phase lengths drawn ([`PHASE_LENGTHS`]; about 2 M
    /// attempt records, 40 MB of Parquet), exploring half of the retry delays by factors
    /// between 1/4 and 4.
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
            scale: 1.0,
            seed: 1,
            explore: (0.25, 4.0, 0.5),
            phase_lengths: PHASE_LENGTHS,
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

/// `run` with its requests scaled by `scale` (at least one).
fn scaled(mut run: RunOptions, scale: f64) -> RunOptions {
    run.requests = ((run.requests as f64 * scale).round() as u64).max(1);
    run
}

/// Runs every scenario with every policy of [`sample_policies`] (the rule-based ones),
/// recording with exploration, compacts the records to Parquet, and moves the dataset to
/// `out`. Runs use every CPU.
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
    // A scenario's name is its runs' target: two of one name would be one target in the
    // data, and one scenario twice would weigh double.
    for (i, s) in opts.scenarios.iter().enumerate() {
        if opts.scenarios[..i].iter().any(|o| o.name == s.name) {
            return Err(SimError::Option {
                field: "scenarios",
                problem: format!(
                    "`{}` is given twice (a scenario's name is the target its records are of)",
                    s.name
                ),
            });
        }
    }
    // Every run is checked before the first starts, as the driver checks it (a burst's
    // requests arrive at once, scaled or not).
    for s in &opts.scenarios {
        let run = scaled(RunOptions::new(Arc::clone(s)), opts.scale);
        driver::check(&run).map_err(|e| SimError::Option {
            field: "scale",
            problem: format!("{} makes {}'s runs impossible: {e}", opts.scale, s.name),
        })?;
    }
    let (lo, hi) = opts.phase_lengths;
    if !(lo.is_finite()
        && hi.is_finite()
        && lo >= 1.0 / MAX_PHASE_FACTOR
        && lo <= hi
        && hi <= MAX_PHASE_FACTOR)
    {
        return Err(SimError::Option {
            field: "phase_lengths",
            problem: format!(
                "needs {} <= lo <= hi <= {MAX_PHASE_FACTOR}; got [{lo}, {hi}]",
                1.0 / MAX_PHASE_FACTOR
            ),
        });
    }
    // Replacing `out` removes it: never the folder we stand in (or one holding it).
    let out_abs = std::fs::canonicalize(&opts.out)
        .or_else(|_| std::path::absolute(&opts.out))
        .map_err(|e| io("resolve", &opts.out, e))?;
    if std::env::current_dir().is_ok_and(|cwd| cwd.starts_with(&out_abs)) {
        return Err(SimError::Option {
            field: "out",
            problem: format!(
                "{} is the current folder or holds it: write the dataset to a folder of its own",
                opts.out.display()
            ),
        });
    }
    let occupied = std::fs::read_dir(&opts.out).is_ok_and(|mut d| d.next().is_some());
    if occupied && let Some(foreign) = not_a_dataset(&opts.out) {
        return Err(SimError::Option {
            field: "out",
            problem: format!(
                "{} holds {}, which is not part of a Parquet dataset (`date=YYYY-MM-DD/*.parquet`): \
                 refusing to write there, with or without `--force`",
                opts.out.display(),
                foreign.display()
            ),
        });
    }
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
    let policies = sample_policies();
    let mut summary = GenerateSummary::default();
    for (s, scenario) in opts.scenarios.iter().enumerate() {
        let segments = opts.work.join("segments").join(&scenario.name);
        let runs = par_map(&policies, |spec| {
            // One draw of phase lengths per run: each policy sees its own.
            let index = policies
                .iter()
                .position(|p| p.name == spec.name)
                .unwrap_or(0);
            let key = opts.seed ^ ((s as u64) << 40) ^ ((index as u64) << 20) ^ 0x0050_4841_5345;
            let varied = vary_phase_lengths(scenario, opts.phase_lengths, key);
            let mut run = scaled(RunOptions::new(Arc::new(varied)), opts.scale);
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
    // The old dataset steps aside, the new one takes its place, and only then is the old
    // one removed: a failed move puts it back, so `out` is never left without a dataset.
    let backup = occupied.then(|| {
        let name = opts
            .out
            .file_name()
            .map_or_else(|| "dataset".into(), |n| n.to_string_lossy().into_owned());
        // Unique per run: a leftover of a failed run (the same pid in a container) is
        // not in the way.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        opts.out
            .with_file_name(format!(".{name}.replaced-{}-{nanos}", std::process::id()))
    });
    if let Some(b) = &backup {
        std::fs::rename(&opts.out, b).map_err(|e| io("move aside", &opts.out, e))?;
    } else if opts.out.exists() {
        std::fs::remove_dir(&opts.out).map_err(|e| io("remove", &opts.out, e))?;
    }
    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    if let Err(e) = std::fs::rename(&staging, &opts.out) {
        if let Some(b) = &backup {
            let _ = std::fs::rename(b, &opts.out);
        }
        return Err(io("move the dataset to", &opts.out, e));
    }
    if let Some(b) = &backup
        && let Err(e) = std::fs::remove_dir_all(b)
    {
        // The new dataset is in place: the run did what it was asked.
        tracing::warn!(dir = %b.display(), error = %e, "the replaced dataset could not be removed; remove it by hand");
    }
    Ok(summary)
}

/// The first entry of `dir` that a dataset `generate` wrote would not hold (anything but
/// `date=…` partitions of Parquet files), if any.
fn not_a_dataset(dir: &std::path::Path) -> Option<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(_) => return Some(dir.to_path_buf()),
    };
    for entry in entries {
        let Ok(entry) = entry else {
            return Some(dir.to_path_buf());
        };
        let path = entry.path();
        let partition = entry.file_name().to_string_lossy().starts_with("date=") && path.is_dir();
        if !partition {
            return Some(path);
        }
        let Ok(files) = std::fs::read_dir(&path) else {
            return Some(path);
        };
        for file in files {
            let Ok(file) = file else {
                return Some(path);
            };
            let f = file.path();
            if !(f.is_file() && f.extension().is_some_and(|e| e == "parquet")) {
                return Some(f);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mix() -> Scenario {
        Scenario::load("mix").expect("built-in")
    }

    fn lengths(s: &Scenario) -> Vec<f64> {
        s.phases
            .iter()
            .map(|p| p.get_ref().end_s - p.get_ref().start_s)
            .collect()
    }

    #[test]
    fn factors_of_one_keep_the_phases_as_written() {
        assert_eq!(vary_phase_lengths(&mix(), (1.0, 1.0), 7), mix());
    }

    #[test]
    fn the_same_seed_draws_the_same_lengths_and_another_seed_others() {
        let a = vary_phase_lengths(&mix(), PHASE_LENGTHS, 3);
        assert_eq!(a, vary_phase_lengths(&mix(), PHASE_LENGTHS, 3));
        assert_ne!(
            lengths(&a),
            lengths(&vary_phase_lengths(&mix(), PHASE_LENGTHS, 4))
        );
    }

    #[test]
    fn lengths_spread_log_uniformly_over_the_range() {
        // Over many draws of the 10 s outage, as many factors fall below the geometric
        // middle of the range as above it, and each end of the range is reached.
        let (lo, hi) = PHASE_LENGTHS;
        let middle = (lo * hi).sqrt();
        let outage = Scenario::load("outage").expect("built-in");
        let factors: Vec<f64> = (0..2_000)
            .map(|seed| lengths(&vary_phase_lengths(&outage, PHASE_LENGTHS, seed))[0] / 10.0)
            .collect();
        let below = factors.iter().filter(|f| **f < middle).count();
        assert!(
            (900..1_100).contains(&below),
            "{below} of 2000 below {middle}"
        );
        assert!(factors.iter().all(|f| (lo..=hi).contains(f)));
        assert!(factors.iter().any(|f| *f < lo * 1.1) && factors.iter().any(|f| *f > hi * 0.9));
    }

    #[test]
    fn generate_refuses_an_empty_or_inverted_range() {
        let dir = tempfile::tempdir().expect("temp dir");
        for bad in [
            (0.0, 1.0),
            (2.0, 1.0),
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
            (1.0, 1e12),
        ] {
            let mut opts = GenerateOptions::new(dir.path().join("out"), dir.path().join("w"));
            opts.phase_lengths = bad;
            let e = generate(&opts, |_, _| {}).expect_err("a bad range is refused");
            assert!(e.to_string().contains("phase_lengths"), "{e}");
        }
        // A scale that makes a run larger than a run holds.
        let mut opts = GenerateOptions::new(dir.path().join("out"), dir.path().join("w"));
        opts.scale = 1e9;
        let e = generate(&opts, |_, _| {}).expect_err("too large");
        assert!(e.to_string().contains("more than a run holds"), "{e}");
        assert!(!dir.path().join("out").exists(), "nothing written");
    }

    #[test]
    fn every_run_is_checked_as_the_driver_checks_it_before_any_starts() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A burst's requests arrive at once: scaled, more than a run holds in flight,
        // though fewer than a run holds in all.
        let burst = Scenario::parse(
            "name = \"burst\"\narrivals = \"burst\"\nrps = 100000\nduration_s = 0.25\n[upstream]\nworkers = 4\n[upstream.latency]\nmedian_ms = 1\n",
            "test",
        )
        .expect("burst");
        let mut opts = GenerateOptions::new(dir.path().join("out"), dir.path().join("w"));
        opts.scenarios = vec![Arc::new(burst)];
        opts.scale = 3.0;
        let e = generate(&opts, |_, _| {}).expect_err("too many in flight");
        assert!(
            e.to_string().contains("scale") && e.to_string().contains("in flight"),
            "{e}"
        );
        // One scenario twice (or two of one name) would be one target, weighed double.
        let mut opts = GenerateOptions::new(dir.path().join("out"), dir.path().join("w"));
        let blips = Arc::new(Scenario::load("blips").expect("blips"));
        opts.scenarios = vec![Arc::clone(&blips), blips];
        let e = generate(&opts, |_, _| {}).expect_err("twice");
        assert!(e.to_string().contains("`blips` is given twice"), "{e}");
        assert!(!dir.path().join("out").exists(), "nothing written");
    }

    #[test]
    fn generate_never_replaces_a_folder_that_is_not_a_dataset() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        let partition = out.join("date=2026-12-04");
        std::fs::create_dir_all(&partition).expect("partition");
        std::fs::write(partition.join("part-1.parquet"), b"PAR1").expect("part");
        std::fs::write(out.join("notes.txt"), b"keep me").expect("notes");
        let mut opts = GenerateOptions::new(&out, dir.path().join("w"));
        opts.replace = true;
        let e = generate(&opts, |_, _| {}).expect_err("refused");
        assert!(
            e.to_string().contains("notes.txt")
                && e.to_string().contains("not part of a Parquet dataset"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(out.join("notes.txt")).expect("kept"),
            b"keep me"
        );
        assert!(partition.join("part-1.parquet").exists());
        // Without the stray file it is a dataset: replaced only with `replace`.
        std::fs::remove_file(out.join("notes.txt")).expect("remove");
        assert_eq!(not_a_dataset(&out), None);
        opts.replace = false;
        let e = generate(&opts, |_, _| {}).expect_err("refused");
        assert!(e.to_string().contains("--force"), "{e}");
    }

    /// A phase written inside another is not cut short by it, and the other resumes after
    /// it; one that a later phase overlaps (0-20, then 10-30) does not come back after
    /// that one ends.
    #[test]
    fn nested_phases_keep_overriding_and_overlapped_ones_do_not_come_back() {
        // Two of mix's phases at `at`, each stretched twice: their ends.
        let doubled = |at: [(f64, f64); 2]| -> Vec<f64> {
            let mut two = mix();
            two.phases.truncate(2);
            for (phase, (start, end)) in two.phases.iter_mut().zip(at) {
                let p = phase.get_mut();
                (p.start_s, p.end_s) = (start, end);
            }
            let varied = vary_phase_lengths(&two, (2.0, 2.0), 1);
            varied.phases.iter().map(|p| p.get_ref().end_s).collect()
        };
        assert_eq!(doubled([(0.0, 100.0), (40.0, 50.0)]), vec![200.0, 60.0]);
        assert_eq!(doubled([(0.0, 20.0), (10.0, 30.0)]), vec![20.0, 50.0]);
    }

    proptest! {
        #[test]
        fn every_phase_keeps_its_start_and_scales_within_the_range(
            seed in any::<u64>(), lo in 0.01f64..1.0, spread in 1.0f64..10.0,
        ) {
            let hi = lo * spread;
            let written = mix();
            let varied = vary_phase_lengths(&written, (lo, hi), seed);
            for (w, v) in written.phases.iter().zip(&varied.phases) {
                let (w, v) = (w.get_ref(), v.get_ref());
                prop_assert_eq!(w.start_s, v.start_s);
                let factor = (v.end_s - v.start_s) / (w.end_s - w.start_s);
                // Within the range, or stretched up to the next phase's start.
                let next = written
                    .phases
                    .iter()
                    .map(|q| q.get_ref())
                    .filter(|q| q.start_s >= w.start_s && q.end_s > w.end_s)
                    .map(|q| q.start_s)
                    .reduce(f64::min);
                prop_assert!(factor >= lo * (1.0 - 1e-12), "{factor}");
                prop_assert!(factor <= hi * (1.0 + 1e-12) || Some(v.end_s) == next, "{factor}");
                prop_assert!(next.is_none_or(|n| v.end_s <= n), "{} past {:?}", v.end_s, next);
            }
        }

        /// Phases that followed one another as written still do, however they are
        /// stretched: none runs into the next (mix's storm stretched four times ran
        /// through its rate limit and came back after it).
        #[test]
        fn stretched_phases_never_run_into_the_next(seed in any::<u64>()) {
            let varied = vary_phase_lengths(&mix(), PHASE_LENGTHS, seed);
            let phases: Vec<_> = varied.phases.iter().map(|p| p.get_ref()).collect();
            for w in phases.windows(2) {
                prop_assert!(w[0].end_s <= w[1].start_s, "{} > {}", w[0].end_s, w[1].start_s);
            }
        }
    }
}
