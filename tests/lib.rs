//! Helpers of the workspace-level tests: a simulated upstream on tokio's virtual clock and
//! an open-loop load that offers calls on a schedule, whatever the previous calls do (a
//! closed loop would hide retry storms: it slows down exactly when retries pile up).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use retrywise::attempt::HttpResponse;
use retrywise::policy::Policy;
use tokio::time::Instant;

/// An upstream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply(pub u16);

impl HttpResponse for Reply {
    fn status_code(&self) -> u16 {
        self.0
    }

    fn retry_after_header(&self) -> Option<&str> {
        None
    }
}

/// What an open-loop run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    /// Logical calls offered.
    pub calls: u32,
    /// Requests the upstream received (attempts).
    pub requests: u32,
    /// Requests received while the upstream was failing.
    pub requests_during_outage: u32,
    /// Calls that ended with a 200.
    pub successes: u32,
}

impl Run {
    /// Requests per logical call.
    pub fn amplification(&self) -> f64 {
        f64::from(self.requests) / f64::from(self.calls)
    }
}

/// Offers `calls` calls, one every `every`, to an upstream that answers 503 until
/// `outage_ends` and 200 afterwards (each answer takes 10 ms). Must run on a paused clock.
pub async fn open_loop<C>(
    policy: Policy<C>,
    calls: u32,
    every: Duration,
    outage_ends: Duration,
) -> Run
where
    C: retrywise::attempt::Classifier<Reply, io::Error> + Clone + 'static,
{
    let requests = Arc::new(AtomicU32::new(0));
    let during = Arc::new(AtomicU32::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        let policy = policy.clone();
        let (requests, during) = (Arc::clone(&requests), Arc::clone(&during));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(t0 + every * i).await;
            let r = policy
                .call(|_| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let down = t0.elapsed() < outage_ends;
                    if down {
                        during.fetch_add(1, Ordering::Relaxed);
                    }
                    async move {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Ok::<_, io::Error>(Reply(if down { 503 } else { 200 }))
                    }
                })
                .await;
            matches!(r, Ok(Reply(200)))
        }));
    }
    let mut successes = 0;
    for t in tasks {
        // A call that panicked fails the test, not only its call.
        successes += u32::from(t.await.expect("a call panicked"));
    }
    Run {
        calls,
        requests: requests.load(Ordering::Relaxed),
        requests_during_outage: during.load(Ordering::Relaxed),
        successes,
    }
}
