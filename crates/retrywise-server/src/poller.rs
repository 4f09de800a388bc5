//! Watching the models folder.

use std::sync::Arc;

use crate::{Service, reload};

/// Polls the models folder every `config.poll_interval` until the service is dropped,
/// swapping in new versions (see [`crate::models`]).
pub fn spawn_poller(service: &Service) -> tokio::task::JoinHandle<()> {
    let st = Arc::downgrade(&service.state);
    let every = service.state.config.poll_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(st) = st.upgrade() else { return };
            if let Err(e) = reload(&st).await {
                tracing::warn!(error = %e, dir = %st.models.dir().display(), "cannot read the models folder");
            }
        }
    })
}
