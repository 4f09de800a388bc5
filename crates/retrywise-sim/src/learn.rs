//! The loop, closed: traffic → records → a model → better retries, round after round.
//!
//! Round 0 runs the rule-based policy (`rule-adaptive`) with exploration of its waits,
//! records every attempt, compacts the records to Parquet and trains a model. Each further
//! round runs the model-driven policy (`adaptive`) with the previous round's model — also
//! exploring, so the data keeps teaching what waiting does — records, and retrains on
//! everything recorded so far.
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
    /// from `seed ..= seed + rounds` and from `gate_seed`).
    pub eval_seed: u64,
    /// The challenger and the policy in service are compared on this seed, which no round
    /// records.
    pub gate_seed: u64,
    /// Exploration of retry waits while recording: factors `[lo, hi]`, probability.
    pub explore: (f64, f64, f64),
}

impl LearnOptions {
    /// Three rounds after round 0, recording seeds 101…, gated on seed 2, scored on seed 1,
    /// exploring
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
            explore: (0.25, 4.0, 0.5),
        }
    }
}

/// One round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Its number (0: the rules).
    pub round: u32,
    /// The model version the round's recorded traffic was decided with (none in round 0).
    pub recorded_with: Option<u32>,
    /// The model version in service after the round's gate (none: the rules).
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

/// A gate: the challenger and the policy in service on the gate seed.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    /// The challenger's success rate.
    pub challenger_success_rate: f64,
    /// The challenger's attempts per request.
    pub challenger_attempts_per_request: f64,
    /// The policy in service's success rate.
    pub incumbent_success_rate: f64,
    /// The policy in service's attempts per request.
    pub incumbent_attempts_per_request: f64,
}

impl Gate {
    /// Whether the challenger earns its place: no more than half a point of success lost,
    /// and success gained or attempts saved.
    pub fn passed(&self) -> bool {
        self.challenger_success_rate >= self.incumbent_success_rate - 0.005
            && (self.challenger_success_rate > self.incumbent_success_rate
                || self.challenger_attempts_per_request < self.incumbent_attempts_per_request)
    }
}

fn io(op: &str, path: &Path, source: std::io::Error) -> SimError {
    SimError::Io {
        op: format!("{op} {}", path.display()),
        source,
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
    let last_recorded = opts.seed.saturating_add(u64::from(opts.rounds));
    for (field, seed) in [("eval_seed", opts.eval_seed), ("gate_seed", opts.gate_seed)] {
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
    if opts.eval_seed == opts.gate_seed {
        return Err(SimError::Option {
            field: "eval_seed",
            problem: "must differ from the gate seed: the score must come from traffic the gate did not see".into(),
        });
    }
    let data = opts.out.join("data");
    let models = opts.out.join("models");
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
    std::fs::create_dir_all(&data).map_err(|e| io("create", &data, e))?;
    let mut rounds = Vec::new();
    // The latest model (the challenger) and the one in service (none: the rules).
    let mut latest: Option<(u32, Arc<dyn SuccessModel>)> = None;
    let mut serving: Option<(u32, Arc<dyn SuccessModel>)> = None;
    let scored = |model: &Option<(u32, Arc<dyn SuccessModel>)>, seed: u64| {
        let spec = policies::find(if model.is_some() {
            "adaptive"
        } else {
            "rule-adaptive"
        })?;
        let mut run = RunOptions::new(Arc::clone(&opts.scenario));
        run.seed = seed;
        run.model = model.as_ref().map(|(_, m)| Arc::clone(m));
        Ok::<_, SimError>(score(&driver::run(spec, &run)?, &opts.scenario, run.rps))
    };
    for k in 0..=opts.rounds {
        let _span = tracing::info_span!("round", k).entered();
        let policy = if latest.is_some() {
            "adaptive"
        } else {
            "rule-adaptive"
        };
        // Gate the latest model against the policy in service.
        let mut gate = None;
        if let Some(challenger) = &latest {
            on_step(k, "gating");
            let c = scored(&Some(challenger.clone()), opts.gate_seed)?;
            let i = scored(&serving, opts.gate_seed)?;
            let g = Gate {
                challenger_success_rate: c.success_rate,
                challenger_attempts_per_request: c.attempts_per_request,
                incumbent_success_rate: i.success_rate,
                incumbent_attempts_per_request: i.attempts_per_request,
            };
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
        let train = retrywise_train::TrainOptions::new(
            vec![data.to_string_lossy().into_owned()],
            &models,
            &opts.name,
        );
        let trained = retrywise_train::train(&train, &mut |_| {})?;
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
