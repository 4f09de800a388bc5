//! Errors of the trainer.

use std::path::{Path, PathBuf};

/// What went wrong in `retrywise-train`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A file operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An input path is unusable.
    #[error("{path} {problem}")]
    Input {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// An option has a value it cannot take (`max_rows` of 0, a sample fraction of 0).
    #[error("invalid option `{option}`: {problem}")]
    InvalidOption {
        /// The option, as the library's options name it.
        option: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// No data to work with.
    #[error("no data: {0}")]
    NoData(String),
    /// A log file lacks a column or has one of the wrong type.
    #[error("{path}: column `{column}` {problem}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// What is wrong.
        problem: String,
    },
    /// polars could not read a file.
    #[error("cannot read {path}")]
    Polars {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: polars::prelude::PolarsError,
    },
    /// Only one outcome in the training rows: nothing to learn from.
    #[error(
        "the training rows hold a single class ({successes} successes in {rows} rows): a model needs successes and failures"
    )]
    SingleClass {
        /// Training rows.
        rows: usize,
        /// Successes among them.
        successes: usize,
    },
    /// The rows cannot be split into training and validation (too few rows, times or
    /// calls, or a fraction out of range).
    #[error("cannot split the rows for validation: {0}")]
    Split(String),
    /// linfa-logistic refused the data or its solver failed.
    #[error("fitting failed: {what}")]
    Fit {
        /// What was being fitted: the penalty, and the rows and features it was fitted on.
        what: String,
        /// linfa-logistic's error (boxed: no linfa type in this crate's API).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A model artifact is unusable.
    #[error("model {path} is refused")]
    Model {
        /// The artifact.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        source: retrywise::model::ModelError,
    },
    /// The report could not be drawn.
    #[error("report: {0}")]
    Report(String),
}

impl TrainError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
