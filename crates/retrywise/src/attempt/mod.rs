//! The attempt schema: what is known before an attempt ([`AttemptContext`]), what happened
//! ([`AttemptRecord`]), and how a call's result is judged ([`Classifier`]).
//!
//! These types are the contract between every part of the project: policies fill the
//! context, deciders and models read it, the recorder stores records, the trainer learns
//! from them and the service accepts them over HTTP.

mod classify;
mod context;
mod kind;
mod record;
mod record_fast;
mod record_serde;
mod retry_after;
pub(crate) mod serde_ms;

#[cfg(test)]
pub(crate) use classify::TestResponse;
pub use classify::{
    Classifier, ErrorsAreRetryable, Failure, HttpClassifier, HttpResponse, Verdict,
};
pub use context::{AttemptContext, InvalidContext};
pub use kind::{ErrorKind, UnknownErrorKind};
pub use record::{AttemptRecord, InvalidSchemaVersion, Outcome, SchemaVersion};
pub use record_fast::TargetCache;
pub use retry_after::{InvalidRetryAfter, parse_retry_after};
pub use serde_ms::{duration_to_ms, ms_to_duration};
