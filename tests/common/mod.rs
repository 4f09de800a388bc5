//! Helpers shared by the workspace's integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use retrywise_server::Config;

/// How long starting or stopping a service may take before the test fails (not hangs).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A service serving on 127.0.0.1 until [`stop`](Self::stop)ped.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), retrywise_server::ServerError>>,
}

impl Running {
    /// Serves `config` (its `addr` on port 0 takes a free one) and waits until it listens.
    pub async fn start(config: Config) -> Self {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
        let task = tokio::spawn(retrywise_server::serve(
            config,
            async move {
                let _ = stop_rx.await;
            },
            move |a| {
                let _ = addr_tx.send(a);
            },
        ));
        let addr = tokio::time::timeout(PATIENCE, addr_rx)
            .await
            .expect("the service listens in time")
            .expect("the service listens");
        Self {
            addr,
            stop: Some(stop_tx),
            task,
        }
    }

    /// `http://ADDR`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it and waits until it has stopped (what it acknowledged is written then).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the service stops in time")
            .unwrap()
            .unwrap();
    }
}
