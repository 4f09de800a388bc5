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
    let service = Service::new(config)?;
    match service.reload().await {
        Ok(r) if service.state.models.snapshot().is_empty() => {
            tracing::warn!(dir = %service.state.models.dir().display(), refused = r.failed.len(), "no model loaded yet; /readyz answers 503 until one is")
        }
        Ok(r) => tracing::info!(loaded = ?r.loaded, "models loaded"),
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
    tracing::info!(%bound, auth = service.state.config.token.is_some(), "serving");
    on_bound(bound);
    let poller = spawn_poller(&service);
    let fleet_sync = service.spawn_fleet_sync();
    if let Some(url) = &service.state.config.fleet {
        tracing::info!(fleet = %redact(url), cache_ms = service.state.config.fleet_cache.as_millis() as u64, "fleet view shared through Redis");
    }
    let result = axum::serve(listener, service.router())
        .with_graceful_shutdown(shutdown)
        .await;
    poller.abort();
    if let Some(sync) = fleet_sync {
        sync.abort();
    }
    if let Err(e) = service.flush() {
        tracing::error!(error = %e, "could not flush ingested attempts");
    }
    if let Err(e) = service.state.recorder.close() {
        tracing::error!(error = %e, "could not close the attempts folder");
    }
    result.map_err(ServerError::Serve)
}

/// A Redis URL without its password, for logs.
fn redact(url: &str) -> String {
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
