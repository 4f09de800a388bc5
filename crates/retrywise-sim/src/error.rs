//! Errors of the simulator.

use std::path::PathBuf;

/// What went wrong in `retrywise-sim`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A scenario file could not be read.
    #[error("cannot read scenario {path}")]
    ReadScenario {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A scenario is invalid; the message names the field and, for files, the line.
    #[error("invalid scenario {origin}: {problem}")]
    Scenario {
        /// The file or built-in scenario name.
        origin: String,
        /// What is wrong, where.
        problem: String,
    },
    /// No scenario or policy by that name.
    #[error("unknown {what} `{name}`; known: {known}")]
    Unknown {
        /// `"scenario"` or `"policy"`.
        what: &'static str,
        /// The name given.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// A policy cannot run in this mode (the oracle needs virtual time).
    #[error("policy `{0}` only runs in virtual time")]
    VirtualOnly(String),
    /// A run parameter is out of range.
    #[error("invalid run option `{field}`: {problem}")]
    Option {
        /// The option.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A policy could not be built.
    #[error("policy configuration")]
    Config(#[from] retrywise::ConfigError),
    /// The HTTP upstream or client failed.
    #[error("{op}")]
    Io {
        /// What was being done.
        op: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Recording or compaction failed.
    #[error(transparent)]
    Collect(#[from] retrywise_collect::CollectError),
    /// A recording run lost attempt records (the writer's queue overflowed): its data
    /// would be incomplete, so the run fails instead.
    #[error(
        "recording `{policy}`: attempt records were dropped ({queue_full} for the writer's queue of {capacity} being full, {invalid} breaking the schema's rules, {closed} after the writer closed); the recorded data is incomplete"
    )]
    RecordsLost {
        /// The policy whose run was recorded.
        policy: String,
        /// Records dropped because the queue was full.
        queue_full: u64,
        /// Records dropped as invalid.
        invalid: u64,
        /// Records offered after the writer closed.
        closed: u64,
        /// The queue's capacity.
        capacity: usize,
    },
    /// Requests of a run ended without an outcome (the task running one panicked - in a
    /// policy, the recorder or the model): scores over the rest would be over fewer
    /// requests than were offered.
    #[error(
        "{lost} of {requests} requests ended without an outcome (their task panicked; the first: request {first})"
    )]
    OutcomesLost {
        /// How many.
        lost: u64,
        /// Requests offered.
        requests: u64,
        /// The first request lost.
        first: u64,
    },
    /// `sim learn`: every attempt recorded so far ended the same way, so no model can be
    /// trained - the scenario leaves the loop nothing to learn (or to improve).
    #[error(
        "round {round}: every training row of the attempts recorded so far {} ({rows} rows): a model needs successes and failures, so the loop has nothing to learn on this scenario - run it on one whose upstream fails at times",
        if *successes == 0 { "failed" } else { "succeeded" }
    )]
    NothingToLearn {
        /// The round whose training found it.
        round: u32,
        /// The training rows.
        rows: usize,
        /// Successes among them.
        successes: usize,
    },
    /// Training a model failed (`sim learn`).
    #[error("training")]
    Train(#[from] retrywise_train::TrainError),
    /// A success model could not be loaded.
    #[error("model {path}")]
    Model {
        /// The file or directory given.
        path: PathBuf,
        /// Why.
        #[source]
        source: retrywise::model::ModelError,
    },
    /// A model directory holds no version.
    #[error("model {path}: no `model.json` there nor in a numbered version directory below it")]
    NoModel {
        /// The directory.
        path: PathBuf,
    },
    /// Drawing the plot failed.
    #[error("plot {path}: {problem}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
}
