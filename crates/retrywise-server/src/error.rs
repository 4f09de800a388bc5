//! Errors of the service (start-up and configuration; request errors are [`ApiError`]s).
//!
//! [`ApiError`]: crate::api::ApiError

use std::path::PathBuf;

/// What went wrong in `retrywise-server`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A configuration value is unusable; names where it came from and the field.
    #[error("invalid configuration ({origin}): `{field}` {problem}")]
    Config {
        /// The file, `environment` or `flags`.
        origin: String,
        /// The setting.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The models folder could not be read.
    #[error("cannot read the models folder {path}")]
    Models {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The attempt collector could not be opened.
    #[error("cannot open the attempts folder")]
    Collector(#[source] retrywise_collect::CollectError),
    /// Serving failed.
    #[error("the server stopped")]
    Serve(#[source] std::io::Error),
}
