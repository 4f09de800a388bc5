//! # retrywise
//!
//! Resilience policies for outbound calls — retries with backoff and jitter, retry
//! budgets, circuit breakers, bulkheads, hedged requests and timeouts — built so that a
//! model learned from the service's own traffic can take over their decisions without
//! changing call sites.
//!
//! Every attempt a [`policy::Policy`] makes is described by an
//! [`attempt::AttemptContext`] (what was known before it) and reported to a
//! [`recorder::Recorder`] as an [`attempt::AttemptRecord`] (what happened). Retry
//! decisions go through the [`retry::RetryDecider`] trait, breaker open durations through
//! a function, and predictions through [`model::SuccessModel`]: the seams where learned
//! behaviour plugs in. [`features`] is the one encoder of contexts into model inputs, and
//! [`model::LogisticModel`] evaluates a trained artifact (`model.json`) without any
//! machine-learning dependency. This crate does no file or network I/O of its own.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use retrywise::breaker::CircuitBreaker;
//! use retrywise::budget::TokenBucket;
//! use retrywise::bulkhead::Bulkhead;
//! use retrywise::policy::Policy;
//! use retrywise::retry::{AttemptTimeout, Backoff, Jitter, RetryRules};
//!
//! let policy = Policy::builder("payments")
//!     .retry(
//!         RetryRules::builder()
//!             .max_attempts(3)
//!             .backoff(Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(10))?)
//!             .jitter(Jitter::Full)
//!             .attempt_timeout(AttemptTimeout::Fixed(Duration::from_secs(5)))
//!             .deadline(Duration::from_secs(20))
//!             .build()?,
//!     )
//!     .budget(TokenBucket::new(10, 0.1)?)
//!     .breaker(CircuitBreaker::builder("payments").failure_rate_threshold(0.5).build()?)
//!     .bulkhead(Bulkhead::builder("payments").max_concurrent(20).build()?)
//!     .build()?;
//!
//! let receipt = policy
//!     .call(|attempt| async move {
//!         // Your client call goes here; `attempt.number` counts from 1.
//!         Ok::<_, std::io::Error>(format!("charged on attempt {}", attempt.number))
//!     })
//!     .await?;
//! assert_eq!(receipt, "charged on attempt 1");
//! # Ok(()) }
//! ```
//!
//! With the `tower` feature, `layer` offers every mechanism as a tower `Layer`.

pub mod attempt;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
mod error;
pub mod features;
pub mod health;
pub mod hedge;
#[cfg(feature = "tower")]
pub mod layer;
mod math;
pub mod model;
pub mod policy;
mod random;
pub mod recorder;
pub mod retry;
mod striped;
pub mod timeout;

pub use error::{ConfigError, MAX_CONFIG_DURATION};
