//! x
#![allow(missing_docs)]
pub mod attempt;
pub mod breaker;
pub mod bulkhead;
pub mod hedge;
pub mod budget;
mod error;
pub mod model;
pub mod policy;
pub mod recorder;
mod random;
pub mod retry;
pub mod timeout;
pub use error::ConfigError;
