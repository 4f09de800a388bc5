//! Timeouts.
/// Elapsed.
#[derive(Debug, thiserror::Error)]
#[error("elapsed")]
pub struct Elapsed;
