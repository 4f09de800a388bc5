//! The attempt schema: what is known before an attempt ([`AttemptContext`]), what happened
//! ([`AttemptRecord`]), and how a call's result is judged ([`Classifier`]).
//!
//! These types are the contract between every part of the project: policies fill the
//! context, deciders and models read it, the recorder stores records, the trainer learns
//! from them and the service accepts them over HTTP. [`schema`] describes every field once;
//! their JSON form, validation, Parquet columns, API schema and documentation derive from
//! it.

mod classify;
mod context;
mod kind;
mod ms;
mod record;
mod retry_after;
pub mod schema;
mod wire;

/// `s` as an error quotes it: at most 256 characters (the longest name a record holds),
/// and an ellipsis when cut - a 500 KB value is not sent back whole in a 400.
pub fn clipped(s: &str) -> String {
    match s.char_indices().nth(256) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
pub(crate) use classify::TestResponse;
pub use classify::{
    Classifier, ErrorsAreRetryable, Failure, HttpClassifier, HttpResponse, Verdict,
};
pub use context::AttemptContext;
pub use kind::{ErrorKind, UnknownErrorKind};
pub(crate) use ms::serialize_ms;
pub use ms::{duration_to_ms, ms_to_duration};
pub use record::{
    AttemptRecord, InvalidSchemaVersion, Outcome, SchemaVersion, UnknownFields, UnknownOutcome,
};
pub use retry_after::{InvalidRetryAfter, parse_retry_after};
pub use schema::{InvalidField, Rule};
