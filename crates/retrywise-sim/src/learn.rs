//! The loop, closed: traffic → records → a model → better retries, round after round.
//!
//! Round 0 runs the rule-based policy (`rule-adaptive`) with exploration of its waits,
//! records every attempt, compacts the records to Parquet and trains a model. Each further
//! round runs the model-driven policy (`adaptive`) with the previous round's model — also
//! exploring, so the data keeps teaching what waiting does — records, and retrains on
//! everything recorded so far.
//!
//! A loop can also start where a deployment stands: with a model already in service
//! ([`LearnOptions::from`], `learn --from MODEL`, the shipped one say). Round 0 then runs
//! the model-driven policy with that model (version 0 in the rounds), exploring as every
//! later round does, and each new model must beat it to serve: what the traffic of a
//! regime the model never saw teaches it, with no rule-based round in between.
//!
//! A model trained on one scenario's traffic alone may forget what the model in service
//! knew of others (a dead replica's refusals taught, an outage's forgotten): the gate can
//! also guard other scenarios ([`LearnOptions::guards`], `learn --guard S`), on each of
//! which the challenger must lose no more than half a point of success on any gate seed.
//!
//! A model decides in service only once it has earned it, as a canary would: the policy
//! in service (the rules at first) and the model-driven challenger are both run on a gate
//! seed that no round records, and the challenger is promoted when it loses no more than
//! half a point of success there and either gains success or spends fewer attempts. (A
//! first model, trained on the rules' narrow range of waits, can extrapolate badly; the
//! gate keeps it from serving until the data it gathers has taught it better.) The row a
//! round reports is the policy in service after its gate, scored on the evaluation seed —
//! a third seed, neither recorded nor gated on — without exploration.
//!
//! The folder it writes (`out`):
//!
//! ```text
//! out/data/               Parquet, every round's records (what the models train on)
//! out/models/NAME/1/      the model trained after round 0, then 2, 3, …
//! ```

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use retrywise_collect::compact::{CompactOptions, compact};
use serde::Serialize;

use crate::SimError;
use crate::driver::{self, RunOptions};
use crate::policies;
use crate::scenario::Scenario;
use crate::score::{Score, score};
use retrywise::model::{LogisticModel, SuccessModel};

/// The version number the rounds give the model a loop starts from ([`LearnOptions::from`]).
pub const FROM_VERSION: u32 = 0;

/// The most gate seeds a loop may judge on (each is a run of both policies per round).
pub const MAX_GATE_SEEDS: u32 = 1_000;

/// How to learn.
#[derive(Debug, Clone)]
pub struct LearnOptions {
    /// The scenario the traffic comes from.
    pub scenario: Arc<Scenario>,
    /// Rounds after round 0 (`rounds = 3` runs rounds 0 to 3).
    pub rounds: u32,
    /// The folder of the data and the models; it must not hold a previous loop's data.
    pub out: PathBuf,
    /// The model's name in `out/models/`.
    pub name: String,
    /// Round `k` records traffic of seed `seed + k`.
    pub seed: u64,
    /// Every round is scored on this seed, which no round records nor gates on (must differ
    /// from `seed ..= seed + rounds` and from the gate seeds).
    pub eval_seed: u64,
    /// The challenger and the policy in service are compared on the seeds `gate_seed ..
    /// gate_seed + gate_seeds`, which no round records.
    pub gate_seed: u64,
    /// How many gate seeds (1 to [`MAX_GATE_SEEDS`]).
    pub gate_seeds: u32,
    /// Exploration of retry waits while recording: factors `[lo, hi]`, probability.
    pub explore: (f64, f64, f64),
    /// The model in service when the loop starts (version [`FROM_VERSION`] in the rounds):
    /// round 0 runs the model-driven policy with it instead of the rules, and the first
    /// model trained must beat it to serve. `None`: round 0 runs the rules.
    pub from: Option<Arc<LogisticModel>>,
    /// Other scenarios the gate guards: on each, the challenger and the policy in service
    /// run on the gate seeds too, and the challenger serves only if it loses no more than
    /// half a point of success on any of them there. Empty: the scenario alone.
    pub guards: Vec<Arc<Scenario>>,
}

impl LearnOptions {
    /// Three rounds after round 0, recording seeds 101…, gated on seeds 2, 3 and 4, scored
    /// on seed 1, exploring
    /// half of the waits by factors between 1/4 and 4 (as `sim generate` does).
    pub fn new(scenario: Arc<Scenario>, out: impl Into<PathBuf>) -> Self {
        Self {
            scenario,
            rounds: 3,
            out: out.into(),
            name: "learned".into(),
            seed: 101,
            eval_seed: 1,
            gate_seed: 2,
            gate_seeds: 3,
            explore: (0.25, 4.0, 0.5),
            from: None,
            guards: Vec::new(),
        }
    }
}

/// One round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Its number (0: the rules, or the model the loop started from).
    pub round: u32,
    /// The model version the round's recorded traffic was decided with (none: the rules;
    /// [`FROM_VERSION`]: the model the loop started from).
    pub recorded_with: Option<u32>,
    /// The model version in service after the round's gate (none: the rules;
    /// [`FROM_VERSION`]: the model the loop started from).
    pub decided_with: Option<u32>,
    /// Whether this round's challenger was promoted (round 0 has none).
    pub promoted: bool,
    /// The challenger on the gate seed, beside the policy it challenged (rounds ≥ 1).
    pub gate: Option<Gate>,
    /// The model version trained after the round, on every round's records so far.
    pub model_version: u32,
    /// Attempt records this round added.
    pub recorded: u64,
    /// Training rows of the new model (every round so far, less validation).
    pub train_rows: usize,
    /// The round's policy on the evaluation seed: the scoreboard's fields.
    #[serde(flatten)]
    pub score: Score,
}

/// A gate: the challenger and the policy in service on the gate seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    /// The gate seeds.
    pub seeds: Vec<u64>,
    /// The challenger's success rate, mean over the seeds.
    pub challenger_success_rate: f64,
    /// The challenger's attempts per request, mean over the seeds.
    pub challenger_attempts_per_request: f64,
    /// The policy in service's success rate, mean over the seeds.
    pub incumbent_success_rate: f64,
    /// The policy in service's attempts per request, mean over the seeds.
    pub incumbent_attempts_per_request: f64,
    /// The most success the challenger lost against the policy in service on one seed (0
    /// when it lost none).
    pub worst_loss: f64,
    /// The same on each guarded scenario ([`LearnOptions::guards`]).
    pub guards: Vec<Guarded>,
}

/// A gate's look at one guarded scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Guarded {
    /// The scenario's name.
    pub scenario: String,
    /// The challenger and the policy in service on it, on the gate seeds (its own
    /// `guards` empty).
    #[serde(flatten)]
    pub gate: Gate,
}

/// Which run of the policy in service a gate reads: scenario (its address: the loop's
/// scenarios live as long as it does), seed, model version (none: the rules).
type IncumbentRun = (usize, u64, Option<u32>);

/// One policy's run on a gate seed: (success rate, attempts per request).
pub type GateRun = (f64, f64);

impl Gate {
    /// The gate over paired runs `(challenger, incumbent)` of `seeds`.
    pub fn new(seeds: Vec<u64>, runs: &[(GateRun, GateRun)]) -> Self {
        let n = runs.len().max(1) as f64;
        let mean = |f: &dyn Fn(&(GateRun, GateRun)) -> f64| runs.iter().map(f).sum::<f64>() / n;
        Self {
            seeds,
            challenger_success_rate: mean(&|r| r.0.0),
            challenger_attempts_per_request: mean(&|r| r.0.1),
            incumbent_success_rate: mean(&|r| r.1.0),
            incumbent_attempts_per_request: mean(&|r| r.1.1),
            worst_loss: runs.iter().map(|r| r.1.0 - r.0.0).fold(0.0, f64::max),
            guards: Vec::new(),
        }
    }

    /// Whether the challenger earns its place: on no seed more than half a point of success
    /// lost, and over all of them success gained or attempts saved. (One seed is one
    /// draw of the traffic; a model that wins on one and loses on another is not yet
    /// better.) On every guarded scenario, too, no seed lost more than half a point.
    pub fn passed(&self) -> bool {
        self.worst_loss <= 0.005
            && (self.challenger_success_rate > self.incumbent_success_rate
                || self.challenger_attempts_per_request < self.incumbent_attempts_per_request)
            && self.guards.iter().all(|g| g.gate.worst_loss <= 0.005)
    }
}

fn io(op: &str, path: &Path, source: std::io::Error) -> SimError {
    SimError::Io {
        op: format!("{op} {}", path.display()),
        source,
    }
}

impl LearnOptions {
    /// Checks the options before anything runs: at least one round and one gate seed, a
    /// valid model name, and evaluation and gate seeds that are not among the recorded
    /// ones (models are judged on traffic they did not train on) nor each other.
    ///
    /// # Errors
    /// [`SimError::Option`] naming the option, or the name's error.
    pub fn validate(&self) -> Result<(), SimError> {
        let opts = self;
        if opts.rounds == 0 {
            return Err(SimError::Option {
                field: "rounds",
                problem: "must be at least 1: round 0 runs the policy in service (the rules, or the model the loop starts from), and what the loop learns shows in the rounds after it".into(),
            });
        }
        let Some(last_recorded) = opts.seed.checked_add(u64::from(opts.rounds)) else {
            return Err(SimError::Option {
                field: "seed",
                problem: format!(
                    "{} plus {} rounds is past the largest seed",
                    opts.seed, opts.rounds
                ),
            });
        };
        // Checked before round 0 records and trains: a bad name found after it would leave
        // data behind that refuses the corrected re-run.
        retrywise_train::store::check_name(&opts.out.join("models"), &opts.name)?;
        if !(1..=MAX_GATE_SEEDS).contains(&opts.gate_seeds) {
            return Err(SimError::Option {
                field: "gate_seeds",
                problem: format!(
                    "must be within [1, {MAX_GATE_SEEDS}] (each is a run of both policies per round), got {}",
                    opts.gate_seeds
                ),
            });
        }
        let Some(last_gate) = opts.gate_seed.checked_add(u64::from(opts.gate_seeds) - 1) else {
            return Err(SimError::Option {
                field: "gate_seed",
                problem: format!(
                    "{} plus {} gate seeds is past the largest seed",
                    opts.gate_seed, opts.gate_seeds
                ),
            });
        };
        let gate_seeds: Vec<u64> = (opts.gate_seed..=last_gate).collect();
        let checked = std::iter::once(("eval_seed", opts.eval_seed))
            .chain(gate_seeds.iter().map(|s| ("gate_seed", *s)));
        for (field, seed) in checked {
            if (opts.seed..=last_recorded).contains(&seed) {
                return Err(SimError::Option {
                    field,
                    problem: format!(
                        "{seed} is one of the recorded seeds {}..={last_recorded}: models must be judged on traffic they did not train on",
                        opts.seed
                    ),
                });
            }
        }
        if gate_seeds.contains(&opts.eval_seed) {
            return Err(SimError::Option {
                field: "eval_seed",
                problem: format!(
                    "{} is one of the gate seeds {gate_seeds:?}: the score must come from traffic the gate did not see",
                    opts.eval_seed
                ),
            });
        }
        Ok(())
    }
}

/// Runs the loop; `on_round` is told each round as it finishes (and `on_step` what is
/// happening, for a progress display).
///
/// # Errors
/// [`SimError::Option`] for bad options or an `out` that already holds data; simulation,
/// recording, compaction and training errors.
pub fn learn(
    opts: &LearnOptions,
    mut on_step: impl FnMut(u32, &str),
    mut on_round: impl FnMut(&Round),
) -> Result<Vec<Round>, SimError> {
    opts.validate()?;
    let gate_seeds: Vec<u64> = (0..u64::from(opts.gate_seeds))
        .map(|i| opts.gate_seed.saturating_add(i))
        .collect();
    let data = opts.out.join("data");
    let models = opts.out.join("models");
    // A folder of its own: anything else in `out` (another dataset, say) would be read
    // with the loop's data by whatever is trained on the folder later, and its files
    // mixed with the loop's.
    if let Ok(entries) = std::fs::read_dir(&opts.out) {
        let other = entries
            .flatten()
            .map(|e| e.file_name())
            .find(|n| !["data", "models", ".segments"].iter().any(|own| n == *own));
        if let Some(other) = other {
            return Err(SimError::Option {
                field: "out",
                problem: format!(
                    "{} holds other files ({}): the loop writes its data and models into a folder of its own; choose an empty or new one",
                    opts.out.display(),
                    other.to_string_lossy()
                ),
            });
        }
    } else if opts.out.exists() {
        return Err(SimError::Option {
            field: "out",
            problem: format!("{} is not a folder", opts.out.display()),
        });
    }
    for dir in [&data, &models.join(&opts.name)] {
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(SimError::Option {
                field: "out",
                problem: format!(
                    "{} already holds a loop's data; choose another folder or remove it",
                    dir.display()
                ),
            });
        }
    }
    // Segments an interrupted loop left behind are no round's whole record: a round's
    // recording starts from an empty folder, or its data would hold them twice.
    let scratch = opts.out.join(".segments");
    if scratch.exists() {
        tracing::warn!(dir = %scratch.display(), "removing the segments an interrupted loop left");
        std::fs::remove_dir_all(&scratch).map_err(|e| io("remove", &scratch, e))?;
    }
    std::fs::create_dir_all(&data).map_err(|e| io("create", &data, e))?;
    let mut rounds = Vec::new();
    // The latest model (the challenger) and the one in service (none: the rules), both the
    // model the loop starts from, if any.
    let start = opts
        .from
        .as_ref()
        .map(|m| (FROM_VERSION, Arc::clone(m) as Arc<dyn SuccessModel>));
    let mut latest: Option<(u32, Arc<dyn SuccessModel>)> = start.clone();
    let mut serving: Option<(u32, Arc<dyn SuccessModel>)> = start;
    let scored_on =
        |scenario: &Arc<Scenario>, model: &Option<(u32, Arc<dyn SuccessModel>)>, seed: u64| {
            let spec = policies::find(if model.is_some() {
                "adaptive"
            } else {
                "rule-adaptive"
            })?;
            let mut run = RunOptions::new(Arc::clone(scenario));
            run.seed = seed;
            run.model = model.as_ref().map(|(_, m)| Arc::clone(m));
            Ok::<_, SimError>(score(&driver::run(spec, &run)?, scenario, run.rps))
        };
    let scored = |model: &Option<(u32, Arc<dyn SuccessModel>)>, seed: u64| {
        scored_on(&opts.scenario, model, seed)
    };
    // The policy in service on a gate seed, by scenario, seed and model version (none: the
    // rules): a run is a pure function of them, and the policy in service is gated against
    // round after round until a challenger replaces it.
    let incumbent_runs =
        std::cell::RefCell::new(std::collections::HashMap::<IncumbentRun, Score>::new());
    // The challenger and the policy in service on `scenario`, paired by gate seed.
    let gate_on = |scenario: &Arc<Scenario>,
                   challenger: &(u32, Arc<dyn SuccessModel>),
                   serving: &Option<(u32, Arc<dyn SuccessModel>)>| {
        let mut runs = Vec::with_capacity(gate_seeds.len());
        for &seed in &gate_seeds {
            let c = scored_on(scenario, &Some(challenger.clone()), seed)?;
            // The scenario by identity: a guard's file may reuse another's name.
            let key = (
                Arc::as_ptr(scenario) as usize,
                seed,
                serving.as_ref().map(|(v, _)| *v),
            );
            let cached = incumbent_runs.borrow().get(&key).cloned();
            let i = match cached {
                Some(i) => i,
                None => {
                    let i = scored_on(scenario, serving, seed)?;
                    incumbent_runs.borrow_mut().insert(key, i.clone());
                    i
                }
            };
            runs.push((
                (c.success_rate, c.attempts_per_request),
                (i.success_rate, i.attempts_per_request),
            ));
        }
        Ok::<_, SimError>(Gate::new(gate_seeds.clone(), &runs))
    };
    for k in 0..=opts.rounds {
        let _span = tracing::info_span!("round", k).entered();
        let policy = if latest.is_some() {
            "adaptive"
        } else {
            "rule-adaptive"
        };
        // Gate the latest model against the policy in service (not the model the loop
        // started from against itself).
        let mut gate = None;
        let in_service = serving.as_ref().map(|(v, _)| *v);
        if let Some(challenger) = latest.as_ref().filter(|(v, _)| in_service != Some(*v)) {
            on_step(k, "gating");
            let mut g = gate_on(&opts.scenario, challenger, &serving)?;
            for guard in &opts.guards {
                g.guards.push(Guarded {
                    scenario: guard.name.clone(),
                    gate: gate_on(guard, challenger, &serving)?,
                });
            }
            if g.passed() {
                serving = Some(challenger.clone());
            }
            gate = Some(g);
        }
        // Record this round's traffic with the latest model, exploring.
        on_step(k, "recording");
        let segments = opts.out.join(".segments").join(format!("round-{k}"));
        let mut run = RunOptions::new(Arc::clone(&opts.scenario));
        run.seed = opts.seed + u64::from(k);
        run.record = Some(segments.clone());
        run.explore = Some(opts.explore);
        run.model = latest.as_ref().map(|(_, m)| Arc::clone(m));
        driver::run(policies::find(policy)?, &run)?;
        on_step(k, "compacting");
        let summary = compact(&CompactOptions::new(segments.join(policy), &data), |_| {
            ControlFlow::Continue(())
        })?;
        let lock = data.join(".compact.lock");
        std::fs::remove_file(&lock).map_err(|e| io("remove", &lock, e))?;
        std::fs::remove_dir_all(&segments).map_err(|e| io("remove", &segments, e))?;
        // Score the policy in service on traffic nothing recorded or gated on.
        on_step(k, "scoring");
        let score = scored(&serving, opts.eval_seed)?;
        // Retrain on everything so far.
        on_step(k, "training");
        let mut train = retrywise_train::TrainOptions::new(
            vec![data.to_string_lossy().into_owned()],
            &models,
            &opts.name,
        );
        // Simulated runs each pass through the scenario's phases once: validate on a share
        // of the calls, not on the last phase.
        train.split = retrywise_train::SplitBy::Call;
        let trained = retrywise_train::train(&train, &mut |_| {}).map_err(|e| match e {
            retrywise_train::TrainError::SingleClass { rows, successes } => {
                SimError::NothingToLearn {
                    round: k,
                    rows,
                    successes,
                }
            }
            e => e.into(),
        })?;
        let round = Round {
            round: k,
            recorded_with: latest.as_ref().map(|(v, _)| *v),
            decided_with: serving.as_ref().map(|(v, _)| *v),
            promoted: gate.as_ref().is_some_and(Gate::passed),
            gate,
            model_version: trained.version,
            recorded: summary.rows,
            train_rows: trained.artifact.training["train_rows"]
                .as_u64()
                .unwrap_or(0) as usize,
            score,
        };
        on_round(&round);
        rounds.push(round);
        // The model just trained, from the artifact in hand (no second read of the file).
        let model: Arc<dyn SuccessModel> = Arc::new(
            LogisticModel::from_artifact(&trained.artifact).map_err(|source| SimError::Model {
                path: trained.dir.clone(),
                source,
            })?,
        );
        latest = Some((trained.version, model));
    }
    let scratch = opts.out.join(".segments");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(|e| io("remove", &scratch, e))?;
    }
    Ok(rounds)
}

/// What `learn --check` concludes from the rounds' (success rate, attempts per request) on
/// the evaluation seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Success rose or attempts fell from round 0 to the last round, and no round lost
    /// more than half a point of success against round 0.
    Improved,
    /// A round served more than half a point less than round 0.
    Worse {
        /// The round.
        round: usize,
        /// Its success rate.
        success: f64,
        /// Round 0's.
        first: f64,
    },
    /// Round 0 already serves every request at one attempt each (at the table's
    /// precision): no policy can do better, so the scenario cannot show the loop learning.
    NothingToImprove {
        /// Round 0's attempts per request.
        attempts: f64,
    },
    /// Neither more success nor fewer attempts in the last round (or no round after 0).
    NotImproved,
}

/// Judges a loop's rounds, `(success rate, attempts per request)` each, round 0 first.
pub fn judge(rounds: &[(f64, f64)]) -> Verdict {
    let Some(&(s0, a0)) = rounds.first() else {
        return Verdict::NotImproved;
    };
    if let Some((round, &(success, _))) = rounds
        .iter()
        .enumerate()
        .find(|(_, (s, _))| *s < s0 - 0.005)
    {
        return Verdict::Worse {
            round,
            success,
            first: s0,
        };
    }
    if s0 >= 0.9995 && a0 < 1.005 {
        return Verdict::NothingToImprove { attempts: a0 };
    }
    match rounds.last() {
        Some(&(s, a)) if rounds.len() > 1 && (s > s0 || a < a0) => Verdict::Improved,
        _ => Verdict::NotImproved,
    }
}

#[cfg(test)]
mod tests {
    use super::{Gate, Guarded, Verdict, judge};

    #[test]
    fn the_loop_is_judged_on_its_first_and_last_rounds_and_its_worst() {
        assert_eq!(
            judge(&[(0.909, 1.40), (1.0, 1.15), (1.0, 1.15)]),
            Verdict::Improved
        );
        // Fewer attempts at the same success is an improvement too.
        assert_eq!(judge(&[(0.7, 1.04), (0.7, 1.02)]), Verdict::Improved);
        // Better at the end, but one round on the way lost more than half a point.
        assert_eq!(
            judge(&[(0.9, 1.3), (0.89, 1.2), (0.95, 1.1)]),
            Verdict::Worse {
                round: 1,
                success: 0.89,
                first: 0.9
            }
        );
        assert_eq!(judge(&[(0.9, 1.3), (0.9, 1.3)]), Verdict::NotImproved);
        assert_eq!(judge(&[(0.9, 1.3)]), Verdict::NotImproved);
        assert_eq!(judge(&[]), Verdict::NotImproved);
        // The rules already at the ceiling: said so, not called a failure to learn.
        assert_eq!(
            judge(&[(1.0, 1.0002), (1.0, 1.0002)]),
            Verdict::NothingToImprove { attempts: 1.0002 }
        );
        assert_eq!(
            judge(&[(1.0, 1.06), (1.0, 1.01)]),
            Verdict::Improved,
            "every request served, at attempts to save"
        );
    }

    #[test]
    fn a_gate_promotes_only_a_challenger_that_loses_on_no_seed() {
        // Better on average (+0.4 points, far fewer attempts), but 1.7 points worse on one
        // seed: kept out.
        let g = Gate::new(
            vec![2, 3, 4],
            &[
                ((0.95, 1.0), (0.90, 1.4)),
                ((0.90, 1.0), (0.917, 1.4)),
                ((0.92, 1.0), (0.915, 1.4)),
            ],
        );
        assert!((g.worst_loss - 0.017).abs() < 1e-9, "{g:?}");
        assert!(g.challenger_success_rate > g.incumbent_success_rate);
        assert!(!g.passed());
        // Level on every seed within half a point, with fewer attempts: promoted.
        let g = Gate::new(
            vec![2, 3],
            &[((0.90, 1.1), (0.903, 1.4)), ((0.91, 1.1), (0.91, 1.4))],
        );
        assert!(g.passed(), "{g:?}");
        // Level, with no fewer attempts and no more success: kept out.
        let g = Gate::new(vec![2], &[((0.91, 1.4), (0.91, 1.4))]);
        assert!(!g.passed());
        assert_eq!(g.worst_loss, 0.0);
    }

    /// `out` is the loop's own folder: one holding anything else (another dataset) is
    /// refused before any round runs - its data would be mixed with the loop's, and read
    /// with it by whatever is trained on the folder later. A new or empty one is fine.
    #[test]
    fn a_folder_holding_other_files_is_refused_before_any_round() {
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("gen");
        std::fs::create_dir_all(out.join("date=2026-12-07")).unwrap();
        let scenario = Arc::new(crate::scenario::Scenario::load("blips").unwrap());
        let opts = super::LearnOptions::new(scenario, &out);
        let ran = std::cell::Cell::new(0);
        let e = super::learn(
            &opts,
            |_, _| ran.set(ran.get() + 1),
            |_| ran.set(ran.get() + 1),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("date=2026-12-07") && msg.contains("own"),
            "{msg}"
        );
        assert_eq!(ran.get(), 0, "refused before any step");
        assert!(!out.join("data").exists(), "nothing written");
        // A file where the folder should be.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let opts = super::LearnOptions::new(
            Arc::new(crate::scenario::Scenario::load("blips").unwrap()),
            &file,
        );
        let e = super::learn(&opts, |_, _| {}, |_| {}).unwrap_err();
        assert!(e.to_string().contains("not a folder"), "{e}");
    }

    #[test]
    fn a_guarded_scenario_lost_on_one_seed_keeps_a_winner_out() {
        let mut g = Gate::new(vec![2], &[((0.99, 1.5), (0.90, 1.4))]);
        assert!(g.passed());
        // Half a point on the guard at most: still promoted.
        g.guards.push(Guarded {
            scenario: "outage".into(),
            gate: Gate::new(vec![2], &[((0.906, 1.2), (0.91, 1.2))]),
        });
        assert!(g.passed(), "{g:?}");
        // More on a second guard: kept out.
        g.guards.push(Guarded {
            scenario: "mix".into(),
            gate: Gate::new(vec![2], &[((0.92, 1.2), (0.94, 1.2))]),
        });
        assert!(!g.passed(), "{g:?}");
    }
}
