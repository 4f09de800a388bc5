//! How the driver's requests reach an upstream: in process (virtual time) or over HTTP.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use retrywise::attempt::{Classifier, ErrorKind, Failure, HttpClassifier, HttpResponse, Verdict};

use crate::queueing::{Fate, UpstreamModel};

/// An upstream's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The raw Retry-After value.
    pub retry_after: Option<String>,
}

impl HttpResponse for Reply {
    fn status_code(&self) -> u16 {
        self.status
    }

    fn retry_after_header(&self) -> Option<&str> {
        self.retry_after.as_deref()
    }
}

/// A request that got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The connection was refused.
    #[error("connection refused")]
    Connect,
    /// The connection broke mid-request.
    #[error("connection reset")]
    Reset,
    /// The transport gave up waiting.
    #[error("timed out")]
    Timeout,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl TransportError {
    /// The record's error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TransportError::Connect => ErrorKind::Connect,
            TransportError::Reset => ErrorKind::Reset,
            TransportError::Timeout => ErrorKind::Timeout,
            TransportError::Other(_) => ErrorKind::Other,
        }
    }
}

/// Judges answers as the HTTP classifier does, and transport errors by their kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimClassifier;

impl Classifier<Reply, TransportError> for SimClassifier {
    fn classify(&self, result: &Result<Reply, TransportError>) -> Verdict {
        match result {
            Ok(r) => HttpClassifier::classify_status(
                r.status,
                r.retry_after.as_deref(),
                std::time::SystemTime::now(),
            ),
            Err(e) => Verdict::Retryable(Failure::new(e.kind())),
        }
    }
}

/// Where requests go.
#[derive(Debug, Clone)]
pub enum Transport {
    /// The scenario's upstream, in process.
    Virtual(UpstreamModel),
    /// An HTTP endpoint.
    Http {
        /// The client (connection pool).
        client: reqwest::Client,
        /// The URL requested with GET.
        url: reqwest::Url,
        /// Bounds the connections open at once, as a client's connection pool does: with
        /// HTTP/1.1 every request in flight holds a connection (and, with the upstream in
        /// the same process, two file descriptors). Waiting for a permit counts towards the
        /// attempt's time.
        permits: Arc<Semaphore>,
    },
}

impl Transport {
    /// Sends one attempt of logical request `request`.
    pub async fn send(&self, request: u64) -> Result<Reply, TransportError> {
        self.send_counted(request, || {}).await
    }

    /// [`send`](Self::send), calling `on_sent` when the attempt leaves for the upstream:
    /// over HTTP, once it holds a connection (an attempt that timed out waiting for one
    /// never reached the upstream, and is no load on it).
    pub async fn send_counted(
        &self,
        request: u64,
        on_sent: impl FnOnce(),
    ) -> Result<Reply, TransportError> {
        match self {
            Transport::Virtual(u) => {
                on_sent();
                deliver(u.serve(tokio::time::Instant::now(), Some(request))).await
            }
            Transport::Http {
                client,
                url,
                permits,
            } => {
                let _permit = permits
                    .acquire()
                    .await
                    .map_err(|_| TransportError::Other("client closed".into()))?;
                on_sent();
                let resp = client
                    .get(url.clone())
                    .header(crate::server::REQUEST_HEADER, request)
                    .send()
                    .await
                    .map_err(http_error)?;
                // The simulator's upstream stands for a refused connection so (its
                // connection closes with it).
                if resp.headers().contains_key(crate::server::REFUSED_HEADER) {
                    return Err(TransportError::Connect);
                }
                let reply = Reply {
                    status: resp.status().as_u16(),
                    retry_after: resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                };
                // Read the body so the connection goes back to the pool, a chunk at a time
                // and no further than MAX_BODY: a longer one is dropped with its connection
                // (the simulator only needs the status), never held in memory whole.
                let mut resp = resp;
                let mut read = 0usize;
                while read <= MAX_BODY {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        Ok(None) | Err(_) => break,
                    }
                }
                Ok(reply)
            }
        }
    }
}

/// The most of a reply's body the HTTP transport reads to reuse its connection (64 KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// Plays a fate out in time.
pub async fn deliver(fate: Fate) -> Result<Reply, TransportError> {
    let after = fate.after();
    if after > Duration::ZERO {
        tokio::time::sleep(after).await;
    }
    match fate {
        Fate::Answer {
            status,
            retry_after_s,
            ..
        } => Ok(Reply {
            status,
            retry_after: retry_after_s.map(|s| s.to_string()),
        }),
        Fate::Reset { .. } => Err(TransportError::Reset),
        Fate::Connect => Err(TransportError::Connect),
        Fate::Hang { .. } => Ok(Reply {
            status: 504,
            retry_after: None,
        }),
    }
}

fn http_error(e: reqwest::Error) -> TransportError {
    if let Some(why) = local_limit(&e) {
        // This process ran out of sockets: no answer of the upstream's, and not a refusal
        // to record as one.
        TransportError::Other(why)
    } else if e.is_connect() {
        TransportError::Connect
    } else if e.is_timeout() {
        TransportError::Timeout
    } else if e.is_request() || e.is_body() {
        // The server closed the connection without a (whole) answer.
        TransportError::Reset
    } else {
        TransportError::Other(e.to_string())
    }
}

/// Why `e` is this process's own limit rather than the upstream's doing: a socket could not
/// be opened for want of file descriptors (EMFILE, ENFILE).
fn local_limit(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    // EMFILE and ENFILE have these numbers on Linux, the BSDs and macOS.
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(ENFILE | EMFILE))
        {
            return Some(format!(
                "out of file descriptors, no socket opened ({io}): raise `ulimit -n` or lower the connections"
            ));
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connect failed")]
    struct Wrapped(#[source] std::io::Error);

    #[test]
    fn running_out_of_file_descriptors_is_told_apart_from_a_refusal() {
        for errno in [23, 24] {
            let e = Wrapped(std::io::Error::from_raw_os_error(errno));
            let why = local_limit(&e).unwrap();
            assert!(why.contains("file descriptors"), "{why}");
        }
        // A refused connection is the upstream's doing.
        let refused = Wrapped(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(local_limit(&refused), None);
    }
}
