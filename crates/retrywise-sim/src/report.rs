//! The results: every policy on every scenario over several seeds, the model-driven
//! policy's targets, and the plots — what `retrywise sim report` writes and the README
//! shows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use retrywise::model::SuccessModel;
use retrywise_train::evaluate::{CalibrationLimits, Evaluation};
use serde::Serialize;

use crate::driver::RunOptions;
use crate::policies::{ADAPTIVE_FULL, CATALOG};
use crate::scenario::{HELD_OUT, Scenario};
use crate::score::Score;
use crate::{SimError, scoreboard};

/// The scenarios whose goodput over time is drawn.
pub const PLOTTED: [&str; 3] = ["outage", "metastable", "mix"];

/// The model-driven policy.
const ADAPTIVE: &str = "adaptive";
/// The oracle: a reference, not a baseline.
const ORACLE: &str = "oracle";

/// Whether `policy` is driven by the model (not a baseline).
fn is_learned(policy: &str) -> bool {
    policy == ADAPTIVE || policy == ADAPTIVE_FULL
}

/// What to report on.
#[derive(Clone)]
pub struct ReportOptions {
    /// The scenarios.
    pub scenarios: Vec<Arc<Scenario>>,
    /// The seeds each scenario runs with (the results are their means).
    pub seeds: Vec<u64>,
    /// The model of the `adaptive` policy.
    pub model: Option<Arc<dyn SuccessModel>>,
    /// Where the model came from (for the report's header).
    pub model_origin: String,
    /// The model's calibration on runs it did not train on (`retrywise eval`'s evaluation),
    /// judged as the `SCENARIO/calibration` targets; `None` judges none.
    pub calibration: Option<Evaluation>,
}

impl ReportOptions {
    /// Every built-in scenario, seeds 1 to 3.
    pub fn new(model: Option<Arc<dyn SuccessModel>>, model_origin: impl Into<String>) -> Self {
        Self {
            scenarios: Scenario::builtin().into_iter().map(Arc::new).collect(),
            seeds: vec![1, 2, 3],
            model,
            model_origin: model_origin.into(),
            calibration: None,
        }
    }
}

/// One policy on one scenario: the means over the seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Mean {
    /// The policy.
    pub policy: String,
    /// Logical requests that succeeded.
    pub success_rate: f64,
    /// Attempts per logical request.
    pub attempts_per_request: f64,
    /// The busiest second's upstream load over the offered load.
    pub peak_load_ratio: f64,
    /// 99.9th percentile latency of successes, ms (mean over seeds with successes).
    pub p999_ms: Option<f64>,
    /// Seconds from the trigger's end until goodput recovers (mean over seeds; `None` if
    /// any seed never recovered or the scenario has no trigger).
    pub recovery_s: Option<f64>,
    /// Each seed's score.
    pub seeds: Vec<Score>,
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResults {
    /// The scenario.
    pub scenario: String,
    /// Whether the training sample leaves it out ([`HELD_OUT`]).
    pub held_out: bool,
    /// Every policy, in catalog order.
    pub policies: Vec<Mean>,
}

impl ScenarioResults {
    /// A policy's results.
    pub fn get(&self, policy: &str) -> Option<&Mean> {
        self.policies.iter().find(|m| m.policy == policy)
    }

    /// The fixed (not model-driven, not oracle) policy with the highest success, ties to
    /// fewer attempts.
    pub fn best_baseline(&self) -> Option<&Mean> {
        self.policies
            .iter()
            .filter(|m| !is_learned(&m.policy) && m.policy != ORACLE)
            .max_by(|a, b| {
                baseline_order(
                    (a.success_rate, a.attempts_per_request),
                    (b.success_rate, b.attempts_per_request),
                )
            })
    }
}

/// How baselines rank, `(success rate, attempts per request)`: by success, then by fewer
/// attempts (the table's best and the plot's are chosen alike).
fn baseline_order(a: (f64, f64), b: (f64, f64)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1))
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seeds.
    pub seeds: Vec<u64>,
    /// The model of the `adaptive` policy.
    pub model: String,
    /// Per scenario.
    pub scenarios: Vec<ScenarioResults>,
    /// The targets of the model-driven policy, judged.
    pub targets: Vec<Target>,
    /// The plots written (goodput over time of the [`PLOTTED`] scenarios among those
    /// run); not in `results.json`.
    #[serde(skip)]
    pub plots: Vec<PathBuf>,
}

/// A target of the model-driven policy and whether it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// Its name: `SCENARIO/baseline` (against the best baseline) or `SCENARIO/goal` (the
    /// scenario's own goal).
    pub id: String,
    /// The scenario.
    pub scenario: String,
    /// What is asked.
    pub goal: String,
    /// What was measured.
    pub measured: String,
    /// Whether it was judged: a calibration check on too few rows is not (its ECE would
    /// be mostly noise), and is neither met nor missed.
    pub judged: bool,
    /// Whether it was judged and holds.
    pub met: bool,
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, sum) = xs.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    (n > 0).then(|| sum / n as f64)
}

fn means(policy: &str, seeds: Vec<Score>) -> Mean {
    let m = |f: fn(&Score) -> f64| mean(seeds.iter().map(f)).unwrap_or(f64::NAN);
    Mean {
        policy: policy.to_owned(),
        success_rate: m(|s| s.success_rate),
        attempts_per_request: m(|s| s.attempts_per_request),
        peak_load_ratio: m(|s| s.peak_load_ratio),
        p999_ms: mean(seeds.iter().filter_map(|s| s.p999_ms)),
        recovery_s: if seeds.iter().all(|s| s.recovery_s.is_some()) {
            mean(seeds.iter().filter_map(|s| s.recovery_s))
        } else {
            None
        },
        seeds,
    }
}

/// Runs every policy on every scenario and seed, writes the tables, the JSON and the plots
/// into `out`, and returns the report. `on_run` is told each finished scenario and seed.
///
/// # Errors
/// Simulation, plot and file errors.
pub fn report(
    opts: &ReportOptions,
    out: &Path,
    mut on_run: impl FnMut(&str, u64),
) -> Result<Report, SimError> {
    // The means are over distinct seeds: a repeated one would weigh one run twice.
    for (i, seed) in opts.seeds.iter().enumerate() {
        if opts.seeds[..i].contains(seed) {
            return Err(SimError::Option {
                field: "seeds",
                problem: format!(
                    "seed {seed} is given twice (the results are means over distinct seeds)"
                ),
            });
        }
    }
    if opts.seeds.is_empty() {
        return Err(SimError::Option {
            field: "seeds",
            problem: "names no seed".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| SimError::Io {
        op: format!("create {}", out.display()),
        source: e,
    })?;
    let names: Vec<String> = CATALOG.iter().map(|p| p.name.to_owned()).collect();
    let mut scenarios = Vec::new();
    // Drawn as each scenario's first seed is run, written with the tables once every run
    // is done: a report stopped or failed halfway leaves the last whole set, not new plots
    // beside old tables.
    let mut plots: Vec<(PathBuf, String)> = Vec::new();
    for scenario in &opts.scenarios {
        let mut per_policy: BTreeMap<usize, Vec<Score>> = BTreeMap::new();
        for &seed in &opts.seeds {
            let mut run = RunOptions::new(Arc::clone(scenario));
            run.seed = seed;
            run.model.clone_from(&opts.model);
            let (board, runs) = scoreboard(&names, &run)?;
            if seed == opts.seeds[0] && PLOTTED.contains(&scenario.name.as_str()) {
                plots.push(plot_scenario(scenario, &board.results, &runs, &run, out)?);
            }
            for (i, s) in board.results.into_iter().enumerate() {
                per_policy.entry(i).or_default().push(s);
            }
            on_run(&scenario.name, seed);
        }
        scenarios.push(ScenarioResults {
            scenario: scenario.name.clone(),
            held_out: HELD_OUT.contains(&scenario.name.as_str()),
            policies: per_policy
                .into_iter()
                .map(|(i, seeds)| means(&names[i], seeds))
                .collect(),
        });
    }
    let mut targets = targets(&scenarios);
    if let Some(e) = &opts.calibration {
        targets.extend(calibration_targets(e));
    }
    let report = Report {
        seeds: opts.seeds.clone(),
        model: opts.model_origin.clone(),
        scenarios,
        targets,
        plots: plots.iter().map(|(path, _)| path.clone()).collect(),
    };
    for (path, svg) in &plots {
        write_atomically(path, svg.as_bytes())?;
    }
    let write = |name: &str, text: String| write_atomically(&out.join(name), text.as_bytes());
    write("results.md", report.summary_markdown())?;
    write("scoreboard.md", report.full_markdown())?;
    write(
        "results.json",
        serde_json::to_string_pretty(&report).map_err(|e| SimError::Io {
            op: "serialize the report".into(),
            source: e.into(),
        })?,
    )?;
    Ok(report)
}

/// Writes `bytes` to `path` whole or not at all: into a file beside it, synced, then
/// renamed over it (and the folder synced), so that a report interrupted (or a disk that
/// fills) never leaves a truncated table or plot where the last whole one was. A link is
/// followed (the file it names is replaced); a path that is no regular file
/// (`/dev/stdout`, a pipe) is written to directly.
///
/// # Errors
/// [`SimError::Io`] naming the file and the step that failed; the temporary file is
/// removed.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SimError> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let io = |op: &str, p: &Path, e: std::io::Error| SimError::Io {
        op: format!("{op} {}", p.display()),
        source: e,
    };
    let target = match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            return std::fs::write(path, bytes).map_err(|e| io("write", path, e));
        }
        Ok(_) => std::fs::canonicalize(path).map_err(|e| io("resolve", path, e))?,
        Err(_) => path.to_path_buf(),
    };
    let name = target
        .file_name()
        .map_or_else(|| "report".into(), |n| n.to_string_lossy().into_owned());
    // One name per process and write: two writes of one path never share it.
    let tmp = target.with_file_name(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(|e| io("write", &tmp, e))
        .and_then(|()| std::fs::rename(&tmp, &target).map_err(|e| io("rename into", &target, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // The new entry durable too (best effort: the file itself is whole either way).
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Goodput over time for the model-driven policy beside the baselines that matter there:
/// where it goes, and the plot drawn in memory.
fn plot_scenario(
    scenario: &Scenario,
    scores: &[Score],
    runs: &[crate::driver::PolicyRun],
    run: &RunOptions,
    out: &Path,
) -> Result<(PathBuf, String), SimError> {
    let best = scores
        .iter()
        .filter(|s| !is_learned(&s.policy) && s.policy != ORACLE)
        .max_by(|a, b| {
            baseline_order(
                (a.success_rate, a.attempts_per_request),
                (b.success_rate, b.attempts_per_request),
            )
        })
        .map(|s| s.policy.clone());
    let shown: Vec<crate::driver::PolicyRun> = runs
        .iter()
        .filter(|r| {
            [ADAPTIVE, ADAPTIVE_FULL, "exp-full-jitter", "aws-adaptive"]
                .contains(&r.policy.as_str())
                || Some(&r.policy) == best.as_ref()
        })
        .cloned()
        .collect();
    let path: PathBuf = out.join(format!("goodput-{}.svg", scenario.name));
    let title = format!(
        "{} — goodput and upstream load per second (seed {}, {}/s offered)",
        scenario.name, run.seed, run.rps
    );
    let svg = crate::plot::svg(&path, &title, &shown, run.rps)?;
    Ok((path, svg))
}

/// The targets for the model-driven policy, judged on the means.
fn targets(scenarios: &[ScenarioResults]) -> Vec<Target> {
    let mut out = Vec::new();
    let pct = |x: f64| format!("{:.1} %", x * 100.0);
    for s in scenarios {
        let (Some(a), Some(best), Some(fj)) =
            (s.get(ADAPTIVE), s.best_baseline(), s.get("exp-full-jitter"))
        else {
            continue;
        };
        out.push(Target {
            id: format!("{}/baseline", s.scenario),
            scenario: s.scenario.clone(),
            goal: format!(
                "success >= the best baseline's ({} {}) - 0.5 points, attempts/request <= exp-full-jitter's ({:.2})",
                best.policy,
                pct(best.success_rate),
                fj.attempts_per_request
            ),
            measured: format!("{} at {:.2}", pct(a.success_rate), a.attempts_per_request),
            judged: true,
            // Attempts compared with a tolerance of half the table's last digit (0.005),
            // as success is with half a point: no rounding of either side.
            met: a.success_rate >= best.success_rate - 0.005
                && a.attempts_per_request <= fj.attempts_per_request + 0.005,
        });
        let mut goal = |goal: &str, met: bool| {
            out.push(Target {
                id: format!("{}/goal", s.scenario),
                scenario: s.scenario.clone(),
                goal: goal.to_owned(),
                measured: format!(
                    "{} at {:.2}, peak {:.2}x, recovery {}",
                    pct(a.success_rate),
                    a.attempts_per_request,
                    a.peak_load_ratio,
                    a.recovery_s
                        .map_or_else(|| "never/-".to_owned(), |r| format!("{r:.1} s"))
                ),
                judged: true,
                met,
            });
        };
        match s.scenario.as_str() {
            "outage" => goal(
                "success >= 88 % at <= 1.25 attempts/request, peak load <= 2x offered",
                a.success_rate >= 0.88
                    && a.attempts_per_request <= 1.25
                    && a.peak_load_ratio <= 2.0,
            ),
            "metastable" => {
                let budget = s.get("budget").and_then(|b| b.recovery_s);
                goal(
                    &format!(
                        "recovers no slower than budget ({}), success >= 63 %",
                        budget.map_or_else(|| "never".to_owned(), |r| format!("{r:.1} s"))
                    ),
                    a.success_rate >= 0.63
                        && match (a.recovery_s, budget) {
                            (Some(x), Some(b)) => x <= b + 1e-9,
                            (Some(_), None) => true,
                            (None, _) => false,
                        },
                );
            }
            "mix" => goal(
                "success >= 93 % at <= 1.25 attempts/request",
                a.success_rate >= 0.93 && a.attempts_per_request <= 1.25,
            ),
            "rate-limited" => goal(
                "success >= 71 % at <= 1.5 attempts/request",
                a.success_rate >= 0.71 && a.attempts_per_request <= 1.5,
            ),
            "contention" => goal("writes done >= 99 %", a.success_rate >= 0.99),
            _ => {}
        }
        if let Some(f) = s.get(ADAPTIVE_FULL) {
            out.push(full_target(&s.scenario, f, a));
        }
    }
    out
}

/// The calibration targets of the model the decisions rest on, on rows it did not train
/// on ([`Evaluation::check_calibration`] with the limits): `all/calibration` (ECE
/// <= 0.03 on every row) and, per target of the rows (the simulator's data names each
/// scenario's target after it), `SCENARIO/calibration` (ECE <= 0.05 and an AUC above the
/// per-error baseline's where both rank).
pub fn calibration_targets(e: &Evaluation) -> Vec<Target> {
    e.check_calibration(&CalibrationLimits::default())
        .into_iter()
        .map(|c| {
            let scenario = c.target.unwrap_or_else(|| "all".to_owned());
            Target {
                id: format!("{scenario}/calibration"),
                scenario,
                goal: c.goal,
                measured: c.measured,
                judged: c.judged,
                met: c.met,
            }
        })
        .collect()
}

/// The target of `adaptive-full` (`f`) on `scenario`, where `adaptive` measured `a`: the
/// breaker's and the hedge's own goals in metastable and stragglers, elsewhere no worse
/// than the learned decider alone.
fn full_target(scenario: &str, f: &Mean, a: &Mean) -> Target {
    let pct = |x: f64| format!("{:.1} %", x * 100.0);
    let slowest = f
        .seeds
        .iter()
        .map(|s| s.recovery_s)
        .try_fold(0.0f64, |m, r| r.map(|r| m.max(r)));
    let measured = format!(
        "{} at {:.2}, p99.9 {}, slowest recovery {}",
        pct(f.success_rate),
        f.attempts_per_request,
        f.p999_ms
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.1} ms")),
        slowest.map_or_else(|| "never/-".to_owned(), |r| format!("{r:.1} s"))
    );
    let (goal, met) = match scenario {
        "metastable" => (
            "every seed recovers within 10 s of the trigger's end, success >= 85 %".to_owned(),
            f.success_rate >= 0.85 && slowest.is_some_and(|r| r <= 10.0),
        ),
        // (The p99.9 is of the successes: a policy that failed its slow calls would meet
        // it. Success may not fall below the decider alone's, as elsewhere.)
        "stragglers" => (
            format!(
                "p99.9 <= 60 ms at <= 1.02 attempts/request, success >= adaptive's ({}) - 0.5 points",
                pct(a.success_rate)
            ),
            f.p999_ms.is_some_and(|p| p <= 60.0)
                && f.attempts_per_request <= 1.02
                && f.success_rate >= a.success_rate - 0.005,
        ),
        _ => (
            format!(
                "success >= adaptive's ({}) - 0.5 points, attempts/request <= adaptive's ({:.2})",
                pct(a.success_rate),
                a.attempts_per_request
            ),
            f.success_rate >= a.success_rate - 0.005
                && f.attempts_per_request <= a.attempts_per_request + 0.005,
        ),
    };
    Target {
        id: format!("{scenario}/full"),
        scenario: scenario.to_owned(),
        goal,
        measured,
        judged: true,
        met,
    }
}

/// What [`Report::check`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checked {
    /// One line per target: met, missed and known (with why), or not judged (a
    /// calibration check on too few rows).
    pub lines: Vec<String>,
    /// What fails the check: a miss not known, a known miss that is met or not judged, a
    /// known miss that names no target.
    pub failures: Vec<String>,
}

impl Report {
    /// Judges the targets against `known` misses (target id → why): a miss must be known,
    /// and a known miss must be missed, so that the list stays true.
    pub fn check(&self, known: &BTreeMap<String, String>) -> Checked {
        let mut out = Checked::default();
        for id in known.keys() {
            if self.targets.iter().any(|t| &t.id == id) {
                continue;
            }
            // A known miss of a built-in scenario this report leaves out (`--scenario`
            // picks some) is not judged; one that names no target of a scenario it has, or
            // no scenario at all (a typo, a renamed one), is wrong.
            let scenario = id.split_once('/').map_or(id.as_str(), |(s, _)| s);
            let left_out = !self.targets.iter().any(|t| t.scenario == scenario)
                && crate::scenario::Scenario::builtin_names().contains(&scenario);
            if !left_out {
                out.failures.push(format!(
                    "known misses name `{id}`, which is no target of this report"
                ));
            } else {
                out.lines.push(format!(
                    "known miss {id}: not judged (this report has no `{scenario}`)"
                ));
            }
        }
        for t in &self.targets {
            if !t.judged {
                match known.get(&t.id) {
                    None => out
                        .lines
                        .push(format!("target {}: not judged ({})", t.id, t.measured)),
                    Some(_) => out.failures.push(format!(
                        "{} is not judged ({}) but listed as a known miss: remove it from the file",
                        t.id, t.measured
                    )),
                }
                continue;
            }
            match (t.met, known.get(&t.id)) {
                (true, None) => out.lines.push(format!("target {}: met", t.id)),
                (false, Some(why)) => out
                    .lines
                    .push(format!("target {}: missed, known: {why}", t.id)),
                (false, None) => out.failures.push(format!(
                    "{} missed ({}; measured {})",
                    t.id, t.goal, t.measured
                )),
                (true, Some(_)) => out.failures.push(format!(
                    "{} is met ({}) but listed as a known miss: remove it from the file",
                    t.id, t.measured
                )),
            }
        }
        out
    }

    /// The README's table: per scenario, the model-driven policy beside the best fixed
    /// policy, exponential backoff with full jitter, the AWS SDKs' adaptive mode and the
    /// oracle.
    pub fn summary_markdown(&self) -> String {
        let cell = |m: Option<&Mean>| {
            m.map_or_else(
                || "-".to_owned(),
                |m| {
                    format!(
                        "{:.1} % at {:.2}",
                        m.success_rate * 100.0,
                        m.attempts_per_request
                    )
                },
            )
        };
        let mut t = format!(
            "Success and attempts per request, mean of seeds {:?} (virtual time, each scenario's own load); `adaptive` decides with {}.\n\n",
            self.seeds, self.model
        );
        t.push_str("| scenario | adaptive | adaptive-full | best fixed policy | exp-full-jitter | aws-adaptive | oracle |\n|---|---|---|---|---|---|---|\n");
        for s in &self.scenarios {
            let best = s.best_baseline();
            let _ = writeln!(
                t,
                "| {}{} | **{}** | **{}** | {} ({}) | {} | {} | {} |",
                s.scenario,
                if s.held_out { " (held out)" } else { "" },
                cell(s.get(ADAPTIVE)),
                cell(s.get(ADAPTIVE_FULL)),
                cell(best),
                best.map_or("-", |b| b.policy.as_str()),
                cell(s.get("exp-full-jitter")),
                cell(s.get("aws-adaptive")),
                cell(s.get(ORACLE)),
            );
        }
        t.push_str("\n| target | goal | measured | |\n|---|---|---|---|\n");
        for g in &self.targets {
            let _ = writeln!(
                t,
                "| `{}` | {} | {} | {} |",
                g.id,
                g.goal,
                g.measured,
                match (g.judged, g.met) {
                    (false, _) => "not judged",
                    (true, true) => "met",
                    (true, false) => "**missed**",
                }
            );
        }
        t
    }

    /// Every policy on every scenario.
    pub fn full_markdown(&self) -> String {
        let mut t = format!(
            "Every policy on every scenario, mean of seeds {:?}; `adaptive` decides with {}.\n",
            self.seeds, self.model
        );
        for s in &self.scenarios {
            let _ = write!(
                t,
                "\n### {}{}\n\n| policy | success | attempts/request | peak load | p99.9 ms | recovery s |\n|---|---|---|---|---|---|\n",
                s.scenario,
                if s.held_out {
                    " (held out of the training sample)"
                } else {
                    ""
                }
            );
            for m in &s.policies {
                let _ = writeln!(
                    t,
                    "| {} | {:.1} % | {:.2} | {:.2}x | {} | {} |",
                    m.policy,
                    m.success_rate * 100.0,
                    m.attempts_per_request,
                    m.peak_load_ratio,
                    m.p999_ms.map_or_else(|| "-".into(), |v| format!("{v:.0}")),
                    m.recovery_s
                        .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
                );
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_file_is_replaced_whole_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.md");
        std::fs::write(&path, "the last whole table").unwrap();
        write_atomically(&path, b"the new table").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the new table");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["results.md"], "no temporary file is left");
    }

    #[test]
    fn a_report_file_behind_a_link_is_replaced_and_a_non_file_written_to() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.md");
        std::fs::write(&real, "old").unwrap();
        let link = dir.path().join("link.md");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert!(link.is_symlink(), "the link stays a link");
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
        // Not a regular file: written as it is (here a device that takes anything).
        write_atomically(Path::new("/dev/null"), b"anything").unwrap();
    }

    #[test]
    fn a_report_file_that_cannot_be_written_names_it_and_keeps_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file would go: the rename fails, the folder stays.
        let path = dir.path().join("results.md");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("kept"), "x").unwrap();
        let e = write_atomically(&path, b"new").unwrap_err().to_string();
        assert!(e.contains("results.md"), "{e}");
        assert!(path.join("kept").exists());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["results.md"], "the temporary file is removed");
    }

    fn target(id: &str, met: bool) -> Target {
        Target {
            id: id.to_owned(),
            scenario: id.split('/').next().unwrap_or(id).to_owned(),
            goal: "a goal".into(),
            measured: "a figure".into(),
            judged: true,
            met,
        }
    }

    #[test]
    fn a_miss_must_be_known_and_a_known_miss_must_be_missed() {
        let report = Report {
            seeds: vec![1],
            model: "m".into(),
            scenarios: vec![],
            targets: vec![target("outage/goal", false), target("blips/baseline", true)],
            plots: vec![],
        };
        let known = |ids: &[&str]| -> BTreeMap<String, String> {
            ids.iter()
                .map(|i| ((*i).to_owned(), "why".to_owned()))
                .collect()
        };
        let ok = report.check(&known(&["outage/goal"]));
        assert!(ok.failures.is_empty(), "{ok:?}");
        assert_eq!(
            ok.lines,
            [
                "target outage/goal: missed, known: why",
                "target blips/baseline: met"
            ]
        );
        let unlisted = report.check(&known(&[]));
        assert_eq!(unlisted.failures.len(), 1);
        assert!(unlisted.failures[0].starts_with("outage/goal missed"));
        let stale = report.check(&known(&["outage/goal", "blips/baseline"]));
        assert_eq!(stale.failures.len(), 1);
        assert!(stale.failures[0].contains("listed as a known miss"));
        let unknown = report.check(&known(&["outage/goal", "outage/speed"]));
        assert_eq!(unknown.failures.len(), 1);
        assert!(unknown.failures[0].contains("`outage/speed`"));
        // A known miss of a scenario the report leaves out is not judged, and says so.
        let elsewhere = report.check(&known(&["outage/goal", "mix/goal"]));
        assert!(elsewhere.failures.is_empty(), "{elsewhere:?}");
        // One that names no scenario at all is wrong (a typo would be carried for ever).
        let typo = report.check(&known(&["outage/goal", "outge/goal"]));
        assert_eq!(typo.failures.len(), 1, "{typo:?}");
        assert!(typo.failures[0].contains("`outge/goal`"));
        assert!(
            elsewhere
                .lines
                .iter()
                .any(|l| l.contains("mix/goal: not judged (this report has no `mix`)")),
            "{elsewhere:?}"
        );
    }

    /// A calibration check on too few rows is not judged: neither met nor missed, and not
    /// a miss to list (it failed the check as an unlisted miss, and listed it would have
    /// failed once the rows grew).
    #[test]
    fn a_calibration_check_on_too_few_rows_is_not_judged() {
        use retrywise_train::metrics::Metrics;
        // Twenty rows ranked and calibrated well: too few to judge by default.
        let y: Vec<bool> = (0..20).map(|i| i < 9 || i == 10).collect();
        let sharp: Vec<f64> = (0..20).map(|i| if i < 10 { 0.9 } else { 0.1 }).collect();
        let model = Metrics::compute(&sharp, &y);
        let baseline = Metrics::compute(&[0.5; 20], &y);
        let e = Evaluation {
            model: model.clone(),
            baseline: baseline.clone(),
            by_error: vec![],
            by_target: vec![retrywise_train::evaluate::TargetReport {
                target: "outage".into(),
                rows: 20,
                success_rate: 0.5,
                model,
                baseline,
            }],
        };
        let targets = calibration_targets(&e);
        assert!(targets.iter().all(|t| !t.judged && !t.met), "{targets:?}");
        let report = Report {
            seeds: vec![1],
            model: "m".into(),
            scenarios: vec![],
            targets,
            plots: vec![],
        };
        let checked = report.check(&BTreeMap::new());
        assert!(checked.failures.is_empty(), "{checked:?}");
        assert!(
            checked
                .lines
                .iter()
                .any(|l| l.starts_with("target outage/calibration: not judged")),
            "{checked:?}"
        );
        let listed = report.check(&[("outage/calibration".to_owned(), "why".to_owned())].into());
        assert!(listed.failures[0].contains("not judged"), "{listed:?}");
        assert!(report.summary_markdown().contains("| not judged |"));
    }
}
