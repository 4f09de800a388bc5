//! Shared harness of the benchmarks: drive a service or an async operation `n` times on
//! one thread, or on two threads at once sharing the same policy state.
//!
//! Every benchmark times only successful calls that complete at once, so what is measured
//! is the cost a mechanism *adds* to a call, next to a baseline doing the same loop with no
//! mechanism.

use std::future::Future;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tower_service::Service;

/// The inner service's error: `Clone` because tower-resilience's hedge requires it.
#[derive(Debug, Clone)]
pub struct BenchError;

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bench error")
    }
}

impl std::error::Error for BenchError {}

/// A single-threaded runtime with the time driver (several peers panic without it).
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"))
}

/// Drives `svc` through `ready` + `call` `n` times.
pub async fn drive_service<S>(svc: &mut S, n: u64)
where
    S: Service<(), Response = u64>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .unwrap_or_else(|e| panic!("poll_ready failed: {e:?}"));
        let v = svc
            .call(())
            .await
            .unwrap_or_else(|e| panic!("call failed: {e:?}"));
        black_box(v);
    }
}

/// Awaits `op()` `n` times.
pub async fn drive_op<F, Fut, T>(op: &mut F, n: u64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    for _ in 0..n {
        black_box(op().await);
    }
}

/// Times `n` calls of a service on one thread.
pub fn one_thread_service<S>(rt: &Runtime, svc: &mut S, n: u64) -> Duration
where
    S: Service<(), Response = u64>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let t = Instant::now();
        drive_service(svc, n).await;
        t.elapsed()
    })
}

/// Times two threads each making `n` calls of its own clone of `svc` (clones share the
/// mechanism's state, as in a real service); returns the wall time, i.e. the time per call
/// of each thread under contention.
pub fn two_threads_service<S>(svc: &S, n: u64) -> Duration
where
    S: Service<(), Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    two_threads(n, |n| {
        let mut svc = svc.clone();
        let rt = runtime();
        move || rt.block_on(drive_service(&mut svc, n))
    })
}

/// Times two threads each awaiting `make()`'s operation `n` times.
pub fn two_threads_op<M, F, Fut, T>(make: M, n: u64) -> Duration
where
    M: Fn() -> F,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    two_threads(n, |n| {
        let mut op = make();
        let rt = runtime();
        move || rt.block_on(drive_op(&mut op, n))
    })
}

fn two_threads<P, W>(n: u64, prepare: P) -> Duration
where
    P: Fn(u64) -> W,
    W: FnOnce() + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(3));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let work = prepare(n);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                work();
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    for h in handles {
        h.join()
            .unwrap_or_else(|_| panic!("a benchmark thread panicked"));
    }
    t.elapsed()
}
