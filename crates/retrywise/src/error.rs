//! Errors raised when a configuration is built.
//!
//! Runtime outcomes of a protected call (circuit open, bulkhead full, timed out, retries
//! exhausted) are not configuration errors; they live next to the mechanism that produces
//! them and are gathered in [`crate::policy::CallError`].

use std::time::Duration;

/// A configuration value was refused when a policy was built.
///
/// Every constructor and builder in this crate validates its input and returns this error
/// instead of panicking; the error names the offending field so that a configuration file
/// can be fixed without reading source code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {component} configuration: `{field}` {problem}")]
pub struct ConfigError {
    /// The mechanism whose configuration was refused (`"retry"`, `"breaker"`, ...).
    pub component: &'static str,
    /// The name of the field, as spelled by its builder method.
    pub field: &'static str,
    /// What is wrong with the value, in words.
    pub problem: String,
}

impl ConfigError {
    /// A new error for `component.field`.
    pub fn new(component: &'static str, field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            component,
            field,
            problem: problem.into(),
        }
    }
}

/// The longest duration any setting of the crate takes (10^9 s, about 31 years: the
/// longest duration an attempt record holds, [`crate::attempt::schema::MAX_DURATION`]).
pub const MAX_CONFIG_DURATION: Duration = crate::attempt::schema::MAX_DURATION;

/// Validation helpers shared by every builder in the crate.
pub(crate) struct Check {
    pub(crate) component: &'static str,
}

impl Check {
    pub(crate) const fn new(component: &'static str) -> Self {
        Self { component }
    }

    pub(crate) fn err(&self, field: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(self.component, field, problem)
    }

    /// A duration that must be strictly positive, and at most [`MAX_CONFIG_DURATION`].
    pub(crate) fn positive(&self, field: &'static str, d: Duration) -> Result<(), ConfigError> {
        if d.is_zero() {
            return Err(self.err(field, "must be greater than zero"));
        }
        self.bounded(field, d)
    }

    /// A duration of at most [`MAX_CONFIG_DURATION`] (zero allowed): a clock plus a longer
    /// one could overflow, and no real setting is longer.
    pub(crate) fn bounded(&self, field: &'static str, d: Duration) -> Result<(), ConfigError> {
        if d > MAX_CONFIG_DURATION {
            return Err(self.err(
                field,
                format!(
                    "must be at most {} s (about 31 years), got {d:?}",
                    MAX_CONFIG_DURATION.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// A finite factor in `[min, max]`.
    pub(crate) fn in_range(
        &self,
        field: &'static str,
        v: f64,
        min: f64,
        max: f64,
    ) -> Result<(), ConfigError> {
        if !v.is_finite() {
            return Err(self.err(field, format!("must be a finite number, got {v}")));
        }
        if v < min || v > max {
            return Err(self.err(field, format!("must be within [{min}, {max}], got {v}")));
        }
        Ok(())
    }

    /// A rate in `(0, 1]`.
    pub(crate) fn rate(&self, field: &'static str, v: f64) -> Result<(), ConfigError> {
        if !v.is_finite() || v <= 0.0 || v > 1.0 {
            return Err(self.err(field, format!("must be within (0, 1], got {v}")));
        }
        Ok(())
    }

    /// A count that must be at least one.
    pub(crate) fn at_least_one(&self, field: &'static str, n: u64) -> Result<(), ConfigError> {
        if n == 0 {
            return Err(self.err(field, "must be at least 1"));
        }
        Ok(())
    }
}
