//! How an attempt failed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of failure an attempt ended with.
///
/// The names on the wire (`"timeout"`, `"http_429"`, ...) are part of the record schema and
/// of the service API; they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No answer within the attempt's timeout (ours or the transport's), or HTTP 408.
    Timeout,
    /// The connection could not be established (refused, unreachable, DNS).
    Connect,
    /// An established connection was reset, aborted or closed mid-response.
    Reset,
    /// HTTP 429 Too Many Requests: the upstream rate-limits us.
    #[serde(rename = "http_429")]
    Http429,
    /// HTTP 503 Service Unavailable: the upstream sheds load or is down.
    #[serde(rename = "http_503")]
    Http503,
    /// Any other 5xx status.
    #[serde(rename = "http_5xx")]
    Http5xx,
    /// A 4xx status other than 408 and 429.
    #[serde(rename = "http_4xx")]
    Http4xx,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Every kind, in declaration order (the order used by one-hot feature encodings).
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::Reset,
        ErrorKind::Http429,
        ErrorKind::Http503,
        ErrorKind::Http5xx,
        ErrorKind::Http4xx,
        ErrorKind::Other,
    ];

    /// The wire name of the kind (`"http_503"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Reset => "reset",
            ErrorKind::Http429 => "http_429",
            ErrorKind::Http503 => "http_503",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::Http4xx => "http_4xx",
            ErrorKind::Other => "other",
        }
    }

    /// The kind an HTTP status denotes, or `None` for statuses below 400.
    pub const fn from_status(status: u16) -> Option<ErrorKind> {
        match status {
            408 => Some(ErrorKind::Timeout),
            429 => Some(ErrorKind::Http429),
            503 => Some(ErrorKind::Http503),
            500..=599 => Some(ErrorKind::Http5xx),
            400..=499 => Some(ErrorKind::Http4xx),
            _ => None,
        }
    }

    /// Whether an HTTP status is a permanent failure, never worth a retry: a 4xx other
    /// than 408, 425 and 429 (400, 401, 403, 404 and 422 among them). The one rule
    /// [`HttpClassifier`](crate::attempt::HttpClassifier) and the
    /// [`ModelDecider`](crate::retry::ModelDecider) share.
    pub const fn is_permanent_status(status: u16) -> bool {
        matches!(status, 400..=499) && !matches!(status, 408 | 425 | 429)
    }

    /// The kind of an I/O error, by its [`std::io::ErrorKind`].
    pub fn from_io(e: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match e.kind() {
            Io::TimedOut | Io::WouldBlock => ErrorKind::Timeout,
            Io::ConnectionRefused
            | Io::NotConnected
            | Io::AddrNotAvailable
            | Io::AddrInUse
            | Io::HostUnreachable
            | Io::NetworkUnreachable
            | Io::NetworkDown => ErrorKind::Connect,
            Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof => {
                ErrorKind::Reset
            }
            _ => ErrorKind::Other,
        }
    }

    /// The kind of an arbitrary error, found by walking its `source()` chain for an I/O
    /// error or a timeout (this crate's [`crate::timeout::Elapsed`] or tokio's).
    ///
    /// HTTP clients such as hyper and reqwest wrap the socket's `io::Error`, so this tells
    /// connect errors, resets and timeouts apart without depending on those crates.
    pub fn from_error(e: &(dyn std::error::Error + 'static)) -> ErrorKind {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            // A layer's error is transparent: what it wraps is the next link.
            #[cfg(feature = "tower")]
            if let Some(wrapper) = err.downcast_ref::<crate::layer::Error>() {
                cur = Some(wrapper.inner());
                continue;
            }
            // Hedged requests that all failed (the hedge and policy layers' error): the
            // kind of the last one's failure, as its message says.
            #[cfg(feature = "tower")]
            if let Some(all) = err.downcast_ref::<crate::hedge::AllFailed<crate::layer::Error>>() {
                cur = all
                    .errors
                    .last()
                    .map(|e| e as &(dyn std::error::Error + 'static));
                continue;
            }
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                let kind = ErrorKind::from_io(io);
                if kind != ErrorKind::Other {
                    return kind;
                }
                // An `io::Error`'s `source()` is the source of the error it wraps, not
                // that error (a timeout or a refused connection wrapped again by a TLS or
                // body adapter): the wrapped error is the next link.
                if let Some(inner) = io.get_ref() {
                    cur = Some(inner);
                    continue;
                }
            }
            if err.is::<crate::timeout::Elapsed>() || err.is::<tokio::time::error::Elapsed>() {
                return ErrorKind::Timeout;
            }
            cur = err.source();
        }
        ErrorKind::Other
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string named no known [`ErrorKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown error kind `{0}`; expected one of timeout, connect, reset, http_429, http_503, http_5xx, http_4xx, other"
)]
pub struct UnknownErrorKind(pub String);

impl FromStr for ErrorKind {
    type Err = UnknownErrorKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownErrorKind(super::clipped(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for k in ErrorKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), k);
            assert_eq!(k.as_str().parse::<ErrorKind>().unwrap(), k);
        }
        assert!("http_418".parse::<ErrorKind>().is_err());
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(ErrorKind::from_status(200), None);
        assert_eq!(ErrorKind::from_status(302), None);
        assert_eq!(ErrorKind::from_status(408), Some(ErrorKind::Timeout));
        assert_eq!(ErrorKind::from_status(429), Some(ErrorKind::Http429));
        assert_eq!(ErrorKind::from_status(503), Some(ErrorKind::Http503));
        assert_eq!(ErrorKind::from_status(500), Some(ErrorKind::Http5xx));
        assert_eq!(ErrorKind::from_status(404), Some(ErrorKind::Http4xx));
        for (status, permanent) in [(400, true), (404, true), (422, true), (499, true)]
            .into_iter()
            .chain([
                (408, false),
                (425, false),
                (429, false),
                (399, false),
                (500, false),
            ])
        {
            assert_eq!(
                ErrorKind::is_permanent_status(status),
                permanent,
                "{status}"
            );
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("client error")]
    struct Wrapper(#[source] std::io::Error);

    #[test]
    fn io_errors_are_found_through_the_source_chain() {
        use std::io;
        let refused = Wrapper(io::Error::new(io::ErrorKind::ConnectionRefused, "no"));
        assert_eq!(ErrorKind::from_error(&refused), ErrorKind::Connect);
        let reset = Wrapper(io::Error::new(io::ErrorKind::ConnectionReset, "rst"));
        assert_eq!(ErrorKind::from_error(&reset), ErrorKind::Reset);
        let timed_out = io::Error::new(io::ErrorKind::TimedOut, "slow");
        assert_eq!(ErrorKind::from_error(&timed_out), ErrorKind::Timeout);
        let other = io::Error::other("?");
        assert_eq!(ErrorKind::from_error(&other), ErrorKind::Other);
        // Wrapped in an `io::Error` again (as TLS and body adapters do): its `source()`
        // skips the wrapped error, which is read all the same.
        let twice = io::Error::other(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(ErrorKind::from_error(&twice), ErrorKind::Connect);
        let elapsed = io::Error::other(crate::timeout::Elapsed {
            after: std::time::Duration::from_millis(5),
        });
        assert_eq!(ErrorKind::from_error(&elapsed), ErrorKind::Timeout);
    }

    /// Hedged requests that all failed are of the kind of the last one's failure (they
    /// read as `other`, and a retry layer outside recorded timeouts as such).
    #[cfg(feature = "tower")]
    #[test]
    fn hedged_requests_that_all_failed_are_of_their_last_failures_kind() {
        use std::io;
        let all = crate::hedge::AllFailed {
            errors: vec![
                crate::layer::Error::new(io::Error::from(io::ErrorKind::ConnectionReset)),
                crate::layer::Error::new(crate::timeout::Elapsed {
                    after: std::time::Duration::from_millis(50),
                }),
            ],
        };
        assert_eq!(ErrorKind::from_error(&all), ErrorKind::Timeout);
        let wrapped = crate::layer::Error::new(all);
        assert_eq!(ErrorKind::from_error(&wrapped), ErrorKind::Timeout);
    }
}
