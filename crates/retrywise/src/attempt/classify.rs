//! Deciding what a call's result means: success, a failure worth retrying, or a failure
//! that no retry will fix.

use std::time::{Duration, SystemTime};

use super::{ErrorKind, parse_retry_after};

/// A failed attempt, as far as retry decisions and records are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// How it failed.
    pub kind: ErrorKind,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The wait the upstream asked for, when it sent `Retry-After`.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure of `kind` with no status and no Retry-After.
    pub const fn new(kind: ErrorKind) -> Self {
        Self {
            kind,
            status: None,
            retry_after: None,
        }
    }

    /// Sets the HTTP status.
    pub const fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the Retry-After hint.
    pub const fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }
}

/// What a call's result means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The call did what was asked.
    Success,
    /// The call failed in a way another attempt may fix (timeouts, 503, 429, resets...).
    Retryable(Failure),
    /// The call failed in a way no retry will fix (400, 401, 403, 404, 422...).
    Permanent(Failure),
}

impl Verdict {
    /// The failure, unless the call succeeded.
    pub const fn failure(&self) -> Option<&Failure> {
        match self {
            Verdict::Success => None,
            Verdict::Retryable(f) | Verdict::Permanent(f) => Some(f),
        }
    }

    /// Whether the call succeeded.
    pub const fn is_success(&self) -> bool {
        matches!(self, Verdict::Success)
    }
}

/// Maps the result of a call to a [`Verdict`].
///
/// Implement it for your client's response and error types, or use a closure
/// (`Fn(&Result<T, E>) -> Verdict` implements it). Timeouts imposed by this crate never
/// reach the classifier: they are failures of kind [`ErrorKind::Timeout`] by construction.
///
/// ```
/// use retrywise::attempt::{Classifier, ErrorKind, Failure, Verdict};
///
/// /// A database client whose errors say whether they are worth retrying.
/// struct DbClassifier;
///
/// #[derive(Debug)]
/// enum DbError { Deadlock, SyntaxError }
///
/// impl Classifier<u64, DbError> for DbClassifier {
///     fn classify(&self, result: &Result<u64, DbError>) -> Verdict {
///         match result {
///             Ok(_) => Verdict::Success,
///             Err(DbError::Deadlock) => Verdict::Retryable(Failure::new(ErrorKind::Other)),
///             Err(DbError::SyntaxError) => Verdict::Permanent(Failure::new(ErrorKind::Other)),
///         }
///     }
/// }
///
/// assert!(matches!(DbClassifier.classify(&Err(DbError::Deadlock)), Verdict::Retryable(_)));
/// ```
pub trait Classifier<T, E>: Send + Sync {
    /// The verdict on one call's result.
    fn classify(&self, result: &Result<T, E>) -> Verdict;
}

impl<T, E, F> Classifier<T, E> for F
where
    F: Fn(&Result<T, E>) -> Verdict + Send + Sync,
{
    fn classify(&self, result: &Result<T, E>) -> Verdict {
        self(result)
    }
}

/// Treats every `Ok` as success and every `Err` as retryable, with the error kind found by
/// [`ErrorKind::from_error`] (connect errors, resets and timeouts are recognised through
/// the error's source chain).
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAreRetryable;

impl<T, E> Classifier<T, E> for ErrorsAreRetryable
where
    E: std::error::Error + 'static,
{
    fn classify(&self, result: &Result<T, E>) -> Verdict {
        match result {
            Ok(_) => Verdict::Success,
            Err(e) => Verdict::Retryable(Failure::new(ErrorKind::from_error(e))),
        }
    }
}

/// What the HTTP classifier needs from a response.
///
/// Implemented for `http::Response<B>` with the `http` feature; implement it for any
/// other client's response type.
pub trait HttpResponse {
    /// The status code.
    fn status_code(&self) -> u16;
    /// The raw `Retry-After` header value, if present and valid UTF-8.
    fn retry_after_header(&self) -> Option<&str>;
}

#[cfg(feature = "http")]
impl<B> HttpResponse for http::Response<B> {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }

    fn retry_after_header(&self) -> Option<&str> {
        self.headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
    }
}

/// The classifier for HTTP clients.
///
/// - 1xx, 2xx and 3xx are successes;
/// - 408, 425, 429 and every 5xx are retryable, and so is a status outside 100–599 (no
///   HTTP status: a broken upstream's), as `other` without a status;
/// - every other 4xx is permanent (400, 401, 403, 404 and 422 among them);
/// - `Retry-After` is read as seconds or as an HTTP-date (an unreadable value is
///   ignored, never an error);
/// - transport errors are retryable, with timeouts, connect errors and resets told apart
///   through the error's source chain ([`ErrorKind::from_error`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier;

impl HttpClassifier {
    /// The verdict for a response with `status` and an optional raw `Retry-After` value,
    /// with HTTP-dates measured from `now`.
    pub fn classify_status(status: u16, retry_after: Option<&str>, now: SystemTime) -> Verdict {
        if !(100..=599).contains(&status) {
            return Verdict::Retryable(Failure::new(ErrorKind::Other));
        }
        let Some(kind) = ErrorKind::from_status(status) else {
            return Verdict::Success;
        };
        let retry_after = retry_after.and_then(|v| match parse_retry_after(v, now) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::debug!(error = %e, "ignoring Retry-After");
                None
            }
        });
        let failure = Failure {
            kind,
            status: Some(status),
            retry_after,
        };
        if ErrorKind::is_permanent_status(status) {
            Verdict::Permanent(failure)
        } else {
            Verdict::Retryable(failure)
        }
    }
}

impl<R, E> Classifier<R, E> for HttpClassifier
where
    R: HttpResponse,
    E: std::error::Error + 'static,
{
    fn classify(&self, result: &Result<R, E>) -> Verdict {
        match result {
            Ok(resp) => Self::classify_status(
                resp.status_code(),
                resp.retry_after_header(),
                SystemTime::now(),
            ),
            Err(e) => Verdict::Retryable(Failure::new(ErrorKind::from_error(e))),
        }
    }
}

/// A response of a status and a raw Retry-After value, for tests across the crate.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct TestResponse(pub(crate) u16, pub(crate) Option<&'static str>);

#[cfg(test)]
impl HttpResponse for TestResponse {
    fn status_code(&self) -> u16 {
        self.0
    }

    fn retry_after_header(&self) -> Option<&str> {
        self.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn retryable_and_permanent_statuses() {
        for s in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(
                matches!(
                    HttpClassifier::classify_status(s, None, now()),
                    Verdict::Retryable(_)
                ),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(
                matches!(
                    HttpClassifier::classify_status(s, None, now()),
                    Verdict::Permanent(_)
                ),
                "{s}"
            );
        }
        for s in [200, 201, 204, 301, 304] {
            assert_eq!(
                HttpClassifier::classify_status(s, None, now()),
                Verdict::Success
            );
        }
        // No HTTP status (a broken upstream's 600 or 999; 0): retryable, and no status is
        // recorded that the schema would refuse.
        for s in [0, 99, 600, 999, u16::MAX] {
            assert_eq!(
                HttpClassifier::classify_status(s, Some("7"), now()),
                Verdict::Retryable(Failure::new(ErrorKind::Other)),
                "{s}"
            );
        }
    }

    #[test]
    fn retry_after_in_both_forms() {
        let v = HttpClassifier::classify_status(429, Some("7"), now());
        assert_eq!(
            v.failure().unwrap().retry_after,
            Some(Duration::from_secs(7))
        );
        assert_eq!(v.failure().unwrap().kind, ErrorKind::Http429);
        let v = HttpClassifier::classify_status(503, Some("Sun, 06 Nov 1994 08:49:47 GMT"), now());
        assert_eq!(
            v.failure().unwrap().retry_after,
            Some(Duration::from_secs(10))
        );
        let v = HttpClassifier::classify_status(503, Some("later"), now());
        assert_eq!(v.failure().unwrap().retry_after, None);
    }

    use TestResponse as Resp;

    #[test]
    fn transport_errors_keep_their_kind() {
        let r: Result<Resp, std::io::Error> = Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "rst",
        ));
        assert_eq!(
            HttpClassifier.classify(&r),
            Verdict::Retryable(Failure::new(ErrorKind::Reset))
        );
        let ok: Result<Resp, std::io::Error> = Ok(Resp(404, None));
        assert!(matches!(
            HttpClassifier.classify(&ok),
            Verdict::Permanent(_)
        ));
        let ok: Result<Resp, std::io::Error> = Ok(Resp(429, Some("1")));
        assert_eq!(
            HttpClassifier.classify(&ok).failure().unwrap().retry_after,
            Some(Duration::from_secs(1))
        );
    }
}
