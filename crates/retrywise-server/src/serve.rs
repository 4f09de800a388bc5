//! Running the service: bind, load, poll, serve, flush.

use std::net::SocketAddr;

use crate::{Config, ServerError, Service, spawn_poller};

/// Binds `config.addr`, loads the models, and serves until `shutdown` resolves; then
/// flushes ingested attempts. Calls `on_bound` with the address bound (useful with port 0).
///
/// The service refuses to listen beyond the loopback interface without a token, unless
/// `config.allow_unauthenticated` says so: whoever reaches it could post attempts and
/// reload models.
///
/// # Errors
/// An unauthenticated non-loopback address; the address cannot be bound; the attempts
/// folder cannot be opened; serving fails.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let addr = config.addr;
    if !addr.ip().is_loopback() && config.token.is_none() && !config.allow_unauthenticated {
        return Err(ServerError::Unauthenticated {
            addr: addr.to_string(),
        });
    }
    check_models_folder(&config.models)?;
    let service = Service::new(config)?;
    match service.reload().await {
        Ok(r) if service.state.models.snapshot().is_empty() => {
            tracing::warn!(dir = %service.state.models.dir().display(), refused = r.failed.len(), "no model loaded yet; /readyz answers 503 until one is")
        }
        Ok(r) => {
            tracing::info!(loaded = ?r.loaded, "models loaded");
            let default = &service.state.config.default_model;
            if !service.state.models.snapshot().contains_key(default) {
                tracing::warn!(default_model = %default, loaded = ?r.loaded, "the default model is not among the models loaded: requests that name no model are answered 404, and /readyz 503, until it is");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, dir = %service.state.models.dir().display(), "cannot read the models folder yet")
        }
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(ServerError::Serve)?;
    let max_connections = connections_within_files(service.state.config.max_connections);
    tracing::info!(%bound, auth = service.state.config.token.is_some(), max_connections, "serving");
    on_bound(bound);
    let poller = spawn_poller(&service);
    let fleet_sync = service.spawn_fleet_sync();
    if let Some(url) = &service.state.config.fleet {
        tracing::info!(fleet = %redact(url), cache_ms = service.state.config.fleet_cache.as_millis() as u64, "fleet view: connecting to Redis to share it (the outcome is logged next)");
    }
    let result = accept(
        listener,
        service.router(),
        Connections {
            max: max_connections,
            header_timeout: header_timeout(service.state.config.request_timeout),
            open: service.state.metrics.connections_open.clone(),
            refused: service.state.metrics.connections_refused.clone(),
        },
        service.state.config.shutdown_timeout,
        shutdown,
    )
    .await;
    poller.abort();
    if let Some(sync) = fleet_sync {
        sync.abort();
        // The task is gone: what it had not yet written goes now, or the other replicas
        // never count this one's last attempts.
        let _ = sync.await;
        if let Some(shared) = service.state.fleet.shared() {
            match shared.close().await {
                Ok(n) => tracing::info!(attempts = n, "fleet view: last counts written to Redis"),
                Err(detail) => {
                    tracing::warn!(%detail, "fleet view: the last counts could not be written to Redis")
                }
            }
        }
    }
    if let Err(e) = service.flush() {
        tracing::error!(error = %e, "could not flush ingested attempts");
    }
    if let Err(e) = service.state.recorder.close() {
        tracing::error!(error = %e, "could not close the attempts folder");
    }
    result.map_err(ServerError::Serve)
}

/// Serves HTTP/1 connections from `listener` until `shutdown` resolves, then lets every
/// open connection finish its request in flight and waits for them to close - for
/// `drain` at most: a client that sends its body a byte at a time, or never reads its
/// answer, does not hold the stop (the connections still open then are dropped, and the
/// collector is flushed and closed all the same).
///
/// How long a connection may take to send a request's headers - and, since hyper starts
/// that clock whenever a connection waits for its next request, how long an idle
/// keep-alive connection stays open: the request timeout, but at least
/// [`MIN_HEADER_TIMEOUT`], so that a load balancer's pooled connections (idle for up to
/// 60 s behind AWS's ALB and nginx by default) are closed by the balancer, not under it.
pub(crate) fn header_timeout(request_timeout: std::time::Duration) -> std::time::Duration {
    request_timeout.max(MIN_HEADER_TIMEOUT)
}

/// The least [`header_timeout`]: longer than the usual 60 s idle timeout of load balancers.
pub(crate) const MIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

/// The connections [`accept`] keeps: how many may be open, and how long each may take
/// to send a request's headers; what it counts.
struct Connections {
    /// `max_connections`.
    max: usize,
    /// [`header_timeout`].
    header_timeout: std::time::Duration,
    /// `retrywise_connections_open`.
    open: prometheus_client::metrics::gauge::Gauge,
    /// `retrywise_connections_refused_total`.
    refused: prometheus_client::metrics::counter::Counter,
}

/// A connection's place among the `max_connections`, held by its task: given back, and
/// the gauge lowered, however the task ends (served, or aborted after the drain).
struct Open {
    _slot: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// `axum::serve`, but with a deadline on reading a request's headers (`header_timeout`):
/// without one a client that sends its headers a byte at a time holds a connection and its
/// task for ever (slowloris), and the request timeout only starts once the headers are in;
/// and with a cap on the connections open (`max_connections`): one more is closed as soon
/// as it is accepted - at once, so that its client can go to another replica, rather than
/// left in the listen queue until its connect times out - and counted.
async fn accept(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: Connections,
    drain: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    // Every connection is a task of `connections` (the server waits until none is left,
    // and aborts those still open after the drain) and watches `stop` (dropped at
    // shutdown).
    let mut connections = tokio::task::JoinSet::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max));
    // Whether the last connection accepted was refused (logged when that begins and ends).
    let mut refusing = false;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // The peer gave up before we took its connection: nothing to serve.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                ) => continue,
                // Out of file descriptors, say: wait for some to be closed.
                Err(e) => {
                    tracing::error!(error = %e, "cannot accept a connection; retrying in 1 s");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            limits.refused.inc();
            if !refusing {
                refusing = true;
                tracing::warn!(
                    max_connections = limits.max,
                    "max_connections are open: new connections are closed as they come until some of those close"
                );
            }
            drop(stream);
            continue;
        };
        if refusing {
            refusing = false;
            tracing::info!(
                max_connections = limits.max,
                refused = limits.refused.get(),
                "below max_connections again: new connections are served"
            );
        }
        limits.open.inc();
        let open = Open {
            _slot: slot,
            gauge: limits.open.clone(),
        };
        let header_timeout = limits.header_timeout;
        let service =
            hyper_util::service::TowerToHyperService::new(router.clone().map_request(
                |r: http::Request<hyper::body::Incoming>| r.map(axum::body::Body::new),
            ));
        let mut stop = stop_rx.clone();
        // (The connections that ended are let go as new ones come.)
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let _open = open;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop((listener, stop_rx));
    drop(stop_tx);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            drain_ms = drain.as_millis() as u64,
            "connections still open after the shutdown timeout; closing them"
        );
        // Closed now, with their requests: none runs on into the collector's close (a
        // batch that does is answered 503, and its client sends it again).
        connections.shutdown().await;
    }
    Ok(())
}

/// Files the service keeps open besides its connections: the listener, segments, model
/// files being read, Redis, the runtime's own.
const OTHER_FILES: usize = 64;

/// The connections the service lets be open: `max_connections`, or fewer when the
/// process's limit of open files would run out first - the accept loop would then wait
/// on "too many open files" instead of closing the extra connections, and the attempts'
/// segments, model files and Redis could not be opened meanwhile. Said in a warning.
/// (The soft limit, from `getrlimit`; `retrywise serve` raises it to the hard limit
/// first.)
fn connections_within_files(max_connections: usize) -> usize {
    let Some(limit) = open_file_limit() else {
        return max_connections;
    };
    let allowed = cap_within(max_connections, limit);
    if allowed < max_connections {
        tracing::warn!(
            max_connections,
            open_file_limit = limit,
            capped_at = allowed,
            "max_connections exceeds what the open-file limit allows ({OTHER_FILES} files kept for the rest): connections are capped at {allowed} - raise the limit (ulimit -n, LimitNOFILE=) or lower max_connections"
        );
    }
    allowed
}

/// `max_connections`, or what an open-file limit of `limit` leaves beside
/// [`OTHER_FILES`] (at least one).
fn cap_within(max_connections: usize, limit: usize) -> usize {
    max_connections.min(limit.saturating_sub(OTHER_FILES).max(1))
}

/// The process's soft limit of open files (`None`: unlimited, or not known).
#[cfg(unix)]
fn open_file_limit() -> Option<usize> {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    if soft == rlimit::INFINITY {
        return None;
    }
    usize::try_from(soft).ok()
}

/// (Not checked where there is no `getrlimit`.)
#[cfg(not(unix))]
fn open_file_limit() -> Option<usize> {
    None
}

/// The models folder holds one folder per model name, each one folder per version
/// (`MODELS/NAME/VERSION/model.json`). An empty one is fine (the service waits for a first
/// model); a missing one, a file, or a folder one or two levels too deep is a mistake that
/// would otherwise only show as "no model loaded yet", every second.
fn check_models_folder(dir: &std::path::Path) -> Result<(), ServerError> {
    let problem = |problem: String| ServerError::ModelsLayout {
        path: dir.to_path_buf(),
        problem,
    };
    let meta = std::fs::metadata(dir).map_err(|e| {
        problem(format!(
            "cannot be read ({e}): create it, or point --models at the folder that holds one folder per model name"
        ))
    })?;
    if !meta.is_dir() {
        return Err(problem("is a file, not a folder".into()));
    }
    if dir.join("model.json").is_file() {
        return Err(problem(format!(
            "is a version folder (it holds model.json): point --models at {}",
            dir.parent()
                .and_then(std::path::Path::parent)
                .map_or_else(|| "its grandparent".to_owned(), |p| p.display().to_string())
        )));
    }
    let entries = std::fs::read_dir(dir).map_err(|source| ServerError::Models {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.parse::<u32>().is_ok())
            && entry.path().join("model.json").is_file()
        {
            return Err(problem(format!(
                "is a model's folder (it holds version {}): point --models at {}",
                name.to_string_lossy(),
                dir.parent()
                    .map_or_else(|| "its parent".to_owned(), |p| p.display().to_string())
            )));
        }
    }
    Ok(())
}

/// A Redis URL without its password, for logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn the_open_file_limit_is_the_process_soft_limit_and_caps_connections() {
        const NOFILE: rlimit::Resource = rlimit::Resource::NOFILE;
        let (soft, hard) = rlimit::getrlimit(NOFILE).unwrap();
        // Lowered for the test, and put back (other tests of this process open files).
        let lower = 1_000.min(hard);
        rlimit::setrlimit(NOFILE, lower, hard).unwrap();
        let (limit, capped) = (open_file_limit(), connections_within_files(4096));
        rlimit::setrlimit(NOFILE, soft, hard).unwrap();
        assert_eq!(limit, Some(lower as usize));
        assert_eq!(capped, lower as usize - OTHER_FILES);
    }

    #[test]
    fn connections_are_capped_below_the_open_file_limit() {
        assert_eq!(cap_within(4096, 1024), 1024 - OTHER_FILES);
        assert_eq!(cap_within(4096, 524_288), 4096);
        assert_eq!(cap_within(100, 164), 100);
        assert_eq!(cap_within(100, 10), 1);
    }
}
