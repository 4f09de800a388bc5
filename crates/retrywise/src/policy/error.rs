//! What a protected call returns when it gives up without an answer.

use std::fmt;

use crate::breaker::CircuitOpen;
use crate::bulkhead::BulkheadFull;
use crate::retry::StopReason;
use crate::timeout::Elapsed;

/// Why one attempt produced no answer. (More reasons may come: match with a wildcard.)
#[derive(Debug)]
#[non_exhaustive]
pub enum AttemptError<E> {
    /// The operation returned this error.
    Inner(E),
    /// The attempt timed out.
    Timeout(Elapsed),
    /// The circuit breaker refused the attempt.
    CircuitOpen(CircuitOpen),
    /// The bulkhead had no room for the attempt.
    BulkheadFull(BulkheadFull),
    /// The client-side adaptive throttle refused to send it.
    Throttled,
    /// The client-side rate limiter's next token would come when the deadline leaves no
    /// time for the attempt (or came after it had run out): nothing was sent.
    RateLimited,
    /// Every request of a hedged attempt failed; one error per request.
    AllHedgesFailed(Vec<AttemptError<E>>),
}

impl<E: fmt::Display> fmt::Display for AttemptError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Inner(e) => e.fmt(f),
            AttemptError::Timeout(e) => e.fmt(f),
            AttemptError::CircuitOpen(e) => e.fmt(f),
            AttemptError::BulkheadFull(e) => e.fmt(f),
            AttemptError::Throttled => f.write_str("refused by the client-side adaptive throttle"),
            AttemptError::RateLimited => f.write_str(
                "the client-side rate limiter's next token comes too late for the deadline",
            ),
            AttemptError::AllHedgesFailed(all) => {
                write!(f, "all {} hedged requests failed", all.len())?;
                if let Some(last) = all.last() {
                    write!(f, "; the last with: {last}")?;
                }
                Ok(())
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for AttemptError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AttemptError::Inner(e) => Some(e),
            AttemptError::Timeout(e) => Some(e),
            AttemptError::CircuitOpen(e) => Some(e),
            AttemptError::BulkheadFull(e) => Some(e),
            AttemptError::Throttled | AttemptError::RateLimited => None,
            AttemptError::AllHedgesFailed(all) => all.last().map(|e| e as _),
        }
    }
}

/// A call gave up: how many attempts it made, why it stopped, and the last attempt's
/// error (the design sketch's `RetryExhaustedException` carrying the last error).
///
/// A call whose last attempt *answered* — say with an HTTP 503 response that the
/// classifier judged a failure — returns that answer as `Ok`, as tower's retry does, so
/// the caller sees the upstream's own response; `CallError` is for calls with no answer.
#[derive(Debug)]
pub struct CallError<E> {
    /// Attempts made (0 when the first was refused locally).
    pub attempts: u32,
    /// Why no further attempt was made.
    pub reason: StopReason,
    /// The last attempt's error.
    pub last: AttemptError<E>,
}

impl<E> CallError<E> {
    /// The operation's own error, if the last attempt failed with one.
    pub fn into_inner(self) -> Option<E> {
        match self.last {
            AttemptError::Inner(e) => Some(e),
            _ => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up after {} attempt{} ({}): {}",
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.reason,
            self.last
        )
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.last)
    }
}
