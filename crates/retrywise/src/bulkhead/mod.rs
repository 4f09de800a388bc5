//! Bulkheads: isolate dependencies so that one failing dependency cannot take the others
//! down.
//!
//! - [`Bulkhead`] — a semaphore: at most N calls at once, a bounded wait for room, then
//!   [`BulkheadFull`]. Light: the call runs on the caller's task.
//! - [`PoolBulkhead`] — an isolated pool: the dependency's own workers and bounded queue,
//!   with the caller running the task itself (back-pressure) or a rejection when the queue
//!   is full; [`BulkheadRegistry`] keeps one per dependency.
//! - [`AdaptiveLimit`] — a limit for [`Bulkhead`] that follows the upstream's latency
//!   (Netflix concurrency-limits' Gradient2): it comes down as the upstream starts to queue
//!   and probes upwards while it does not.

mod gate;
mod limit;
mod pool;
mod semaphore;
mod shed;

pub use limit::{AdaptiveLimit, AdaptiveLimitBuilder};
pub use pool::{
    BulkheadRegistry, MAX_POOL_WORKERS, PoolBuilder, PoolBulkhead, PoolError, PoolMetrics, WhenFull,
};
pub use semaphore::{
    Bulkhead, BulkheadBuilder, BulkheadFull, BulkheadMetrics, BulkheadPermit, OwnedBulkheadPermit,
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// Yields to the pool's tasks while `busy` holds, a bounded number of times: a pool
    /// that never gets there fails the test instead of hanging it.
    async fn settle(busy: impl Fn() -> bool) {
        for _ in 0..100_000 {
            if !busy() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the pool never settled");
    }

    #[tokio::test(start_paused = true)]
    async fn waits_up_to_max_wait_then_rejects() {
        let b = Bulkhead::one_at_a_time("b", Duration::from_millis(100));
        let held = b.try_acquire().unwrap();
        let t0 = tokio::time::Instant::now();
        let err = b.acquire().await.unwrap_err();
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert_eq!(err.max_concurrent, 1);
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        waiter.await.unwrap().expect("room freed within the wait");
        let m = b.metrics();
        assert_eq!((m.total_calls, m.rejected_calls), (3, 1));
        assert!((m.rejection_rate - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.active, 0);
        assert_eq!(m.available, 1);
    }

    /// Fills the bulkhead (as many permits as it grants), then finishes them all after
    /// `took`; returns how many it granted.
    fn round(b: &Bulkhead, took: Duration) -> u32 {
        round_with(b, |_| took)
    }

    /// Takes every permit, then finishes the `i`-th taken (from 1) after `took(i)`.
    fn round_with(b: &Bulkhead, took: impl Fn(u32) -> Duration) -> u32 {
        let mut held = Vec::new();
        while let Ok(p) = b.try_acquire() {
            held.push(p);
        }
        let n = held.len() as u32;
        for (i, p) in (1..).zip(held) {
            p.finish(false, took(i));
        }
        n
    }

    /// An adaptive limit from 4, between 2 and 64.
    fn from_4_within_2_to_64() -> AdaptiveLimit {
        AdaptiveLimit::builder()
            .initial(4)
            .bounds(2, 64)
            .build()
            .unwrap()
    }

    #[test]
    fn an_adaptive_bulkhead_admits_what_its_limit_says() {
        let b = Bulkhead::builder("b")
            .max_concurrent(1) // ignored: the limit decides
            .adaptive(from_4_within_2_to_64())
            .max_wait(Duration::ZERO)
            .build()
            .unwrap();
        assert_eq!(round(&b, Duration::from_millis(10)), 4);
        // The upstream answers as fast with every permit in use: the limit probes upwards.
        for _ in 0..30 {
            round(&b, Duration::from_millis(10));
        }
        let grown = b.metrics().max_concurrent;
        assert!(grown > 4, "{grown}");
        assert_eq!(grown, b.adaptive_limit().unwrap().current());
        assert_eq!(round(&b, Duration::from_millis(10)), grown);
        // It starts queueing: each call waits for those before it (10 ms apiece, from 5
        // times slower than before), and the bulkhead admits fewer.
        for _ in 0..10 {
            round_with(&b, |i| Duration::from_millis(10) * (4 + i));
        }
        let shrunk = b.metrics().max_concurrent;
        assert!(shrunk < grown, "{shrunk} vs {grown}");
        assert_eq!(b.metrics().active, 0);
    }

    /// `Bulkhead::call` teaches an adaptive limit how long its calls take, and counts
    /// them (it did neither: the limit stayed at its first value for good).
    #[tokio::test(start_paused = true)]
    async fn calls_run_through_the_bulkhead_teach_its_adaptive_limit() {
        let b = Bulkhead::builder("b")
            .adaptive(from_4_within_2_to_64())
            .max_wait(Duration::ZERO)
            .build()
            .unwrap();
        for _ in 0..20 {
            let out = b
                .call(async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    7
                })
                .await;
            assert_eq!(out, Ok(7));
        }
        let baseline = b.adaptive_limit().unwrap().baseline();
        assert_eq!(baseline, Some(Duration::from_millis(10)));
        assert_eq!(b.metrics().total_calls, 20);
        assert_eq!(b.metrics().active, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rising_limit_lets_a_waiter_in_while_the_holder_stays() {
        let gate = Arc::new(gate::Gate::new(1));
        assert!(gate.try_enter());
        let g = Arc::clone(&gate);
        let t0 = tokio::time::Instant::now();
        let waiter = tokio::spawn(async move {
            let entered = g.enter_within(Duration::from_secs(1)).await;
            (entered, t0.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        gate.set_max(2);
        // Woken by the rise, not by its wait running out.
        assert_eq!(waiter.await.unwrap(), (true, Duration::from_millis(10)));
        assert_eq!(gate.active(), 2);
        // Lowering it admits no one new; those inside stay.
        gate.set_max(1);
        assert!(!gate.try_enter());
        assert_eq!(gate.active(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bulkhead_gives_room_to_the_likeliest_and_sheds_the_least_likely() {
        // p(success) = attempt / 10: the contexts below say how likely each call is.
        let model = Arc::new(|c: &crate::attempt::AttemptContext| f64::from(c.attempt) / 10.0);
        let b = Bulkhead::builder("b")
            .max_concurrent(1)
            .max_wait(Duration::from_secs(1))
            .shed_by(model, 2)
            .build()
            .unwrap();
        let held = b.try_acquire().unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let call = |attempt: u32| {
            let (b, order) = (b.clone(), Arc::clone(&order));
            tokio::spawn(async move {
                let mut ctx = crate::attempt::AttemptContext::first("b");
                ctx.attempt = attempt;
                let permit = b.acquire_for(&ctx).await?;
                order.lock().unwrap().push(attempt);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(permit);
                Ok::<_, BulkheadFull>(())
            })
        };
        let a = call(2);
        let bb = call(5);
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The queue holds two: a likelier newcomer sheds the least likely waiter...
        let c = call(9);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(a.is_finished(), "the 0.2 call was shed");
        assert!(a.await.unwrap().is_err());
        // ...and a less likely one is shed at once.
        let d = call(1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(d.await.unwrap().is_err());
        // Room goes to the likeliest first.
        drop(held);
        c.await.unwrap().unwrap();
        bb.await.unwrap().unwrap();
        assert_eq!(*order.lock().unwrap(), vec![9, 5]);
        let m = b.metrics();
        assert_eq!((m.rejected_calls, m.active), (2, 0));
        assert_eq!(
            m.total_calls, 5,
            "the holder, the two let in and the two shed"
        );
    }

    /// A waiter dropped after room was handed to it, before it ran (its caller timed
    /// out, its client left), gives the room back; one dropped while still queued leaves
    /// the queue. Either way the bulkhead keeps its whole capacity.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_in_the_queue_keeps_no_room() {
        let model = Arc::new(|_: &crate::attempt::AttemptContext| 0.5);
        let b = Bulkhead::builder("b")
            .max_concurrent(1)
            .max_wait(Duration::from_secs(60))
            .shed_by(model, 2)
            .build()
            .unwrap();
        let held = b.try_acquire().unwrap();
        let wait = |b: &Bulkhead| {
            let b = b.clone();
            tokio::spawn(async move {
                let ctx = crate::attempt::AttemptContext::first("b");
                b.acquire_for(&ctx).await.map(drop)
            })
        };
        // Still queued when dropped: it leaves the queue.
        let gone = wait(&b);
        settle(|| b.queued() == 0).await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        assert_eq!(b.queued(), 0, "a dropped waiter leaves the queue");
        // Handed the room, then dropped before it ran: the room comes back.
        let handed = wait(&b);
        settle(|| b.queued() == 0).await;
        drop(held);
        handed.abort();
        assert!(handed.await.unwrap_err().is_cancelled());
        assert_eq!(b.metrics().active, 0, "{:?}", b.metrics());
        let again = b.try_acquire();
        assert!(again.is_ok(), "the room came back");
        // ...and nobody is left in the queue to take room meant for a newcomer.
        drop(again);
        let m = b.metrics();
        assert_eq!((m.active, m.available), (0, 1), "{m:?}");
        // Admitted: the holder and the last call; the two dropped never ran.
        assert_eq!(m.total_calls, 2, "{m:?}");
    }

    /// A caller that stops waiting takes its task with it: queued, it never starts;
    /// running, it is dropped - the workers do no work nobody waits for.
    #[tokio::test(start_paused = true)]
    async fn a_task_whose_caller_gave_up_is_not_run_on() {
        let pool = PoolBulkhead::builder("p")
            .workers(1)
            .queue(4)
            .build()
            .unwrap();
        let ran = Arc::new(AtomicU32::new(0));
        let task = |ms: u64| {
            let ran = Arc::clone(&ran);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ran.fetch_add(1, Ordering::SeqCst);
            }
        };
        let give_up = Duration::from_millis(50);
        // The first runs (and is given up on mid-run); the second waits in the queue.
        let (first, queued) = tokio::join!(
            tokio::time::timeout(give_up, pool.execute(task(1_000))),
            tokio::time::timeout(give_up, pool.execute(task(10))),
        );
        assert!(first.is_err() && queued.is_err(), "both given up on");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ran.load(Ordering::SeqCst), 0, "neither ran to its end");
        // The worker is free: a task waited for runs at once.
        pool.execute(task(10)).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(pool.metrics().active, 0);
    }

    /// A task still queued when the pool's runtime shuts down is lost to the shutdown,
    /// and said so (`Closed`), not reported as a panic.
    #[test]
    fn a_queued_task_lost_to_a_shutdown_is_closed_not_panicked() {
        let pool_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let pool = PoolBulkhead::builder("p")
            .workers(1)
            .queue(4)
            .runtime(pool_rt.handle().clone())
            .build()
            .unwrap();
        let caller = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        caller.block_on(async move {
            let (hold, held) = tokio::sync::oneshot::channel::<()>();
            let p = pool.clone();
            let busy = tokio::spawn(async move { p.execute(async move { held.await.ok() }).await });
            let p = pool.clone();
            let queued = tokio::spawn(async move { p.execute(async { 5 }).await });
            for _ in 0..1_000_000 {
                let m = pool.metrics();
                if m.active == 1 && m.queued == 1 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let m = pool.metrics();
            assert_eq!((m.active, m.queued), (1, 1), "{m:?}");
            pool_rt.shutdown_background();
            assert!(matches!(queued.await.unwrap(), Err(PoolError::Closed(_))));
            assert!(matches!(busy.await.unwrap(), Err(PoolError::Closed(_))));
            drop(hold);
        });
    }

    #[test]
    fn a_shedding_queue_needs_a_place() {
        let model = Arc::new(|_: &crate::attempt::AttemptContext| 0.5);
        let err = Bulkhead::builder("b")
            .shed_by(model, 0)
            .build()
            .unwrap_err();
        assert_eq!(err.field, "shed_queue");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ranked_waiter_leaves_the_queue_when_its_wait_runs_out() {
        let model = Arc::new(|_: &crate::attempt::AttemptContext| 0.5);
        let b = Bulkhead::builder("b")
            .max_concurrent(1)
            .max_wait(Duration::from_millis(100))
            .shed_by(model, 4)
            .build()
            .unwrap();
        let held = b.try_acquire().unwrap();
        let t0 = tokio::time::Instant::now();
        let ctx = crate::attempt::AttemptContext::first("b");
        assert!(b.acquire_for(&ctx).await.is_err());
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        // Nobody is left waiting: the room goes back to the bulkhead.
        drop(held);
        assert_eq!(b.metrics().active, 0);
        assert!(b.try_acquire().is_ok());
    }

    /// Holders leaving without the queue's lock (nobody queued) race calls joining it on
    /// four threads: every call gets in (none waits out its generous wait) and the
    /// bulkhead ends empty — no room lost, none counted twice.
    #[test]
    fn no_room_frees_up_unseen_between_threads() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap();
        let model = Arc::new(|_: &crate::attempt::AttemptContext| 0.5);
        let b = Bulkhead::builder("b")
            .max_concurrent(2)
            .max_wait(Duration::from_secs(30))
            .shed_by(model, 64)
            .build()
            .unwrap();
        let refused = rt.block_on(async {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let b = b.clone();
                    tokio::spawn(async move {
                        let ctx = crate::attempt::AttemptContext::first("b");
                        let mut refused = 0u32;
                        for _ in 0..2_000 {
                            match b.acquire_for(&ctx).await {
                                Ok(permit) => {
                                    tokio::task::yield_now().await;
                                    drop(permit);
                                }
                                Err(_) => refused += 1,
                            }
                        }
                        refused
                    })
                })
                .collect();
            let mut refused = 0;
            for t in tasks {
                refused += t.await.unwrap();
            }
            refused
        });
        assert_eq!(refused, 0);
        assert_eq!(b.metrics().active, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn execution_metrics() {
        let b = Bulkhead::builder("b").build().unwrap();
        b.try_acquire()
            .unwrap()
            .finish(false, Duration::from_millis(10));
        b.try_acquire()
            .unwrap()
            .finish(true, Duration::from_millis(30));
        let m = b.metrics();
        assert_eq!(m.failed_calls, 1);
        assert_eq!(m.avg_execution_time, Duration::from_millis(20));
    }

    #[test]
    fn refuses_bad_configuration() {
        assert_eq!(
            Bulkhead::builder("b")
                .max_concurrent(0)
                .build()
                .unwrap_err()
                .field,
            "max_concurrent"
        );
        assert_eq!(Bulkhead::builder("").build().unwrap_err().field, "name");
        assert_eq!(
            Bulkhead::builder("b")
                .max_wait(Duration::MAX)
                .build()
                .unwrap_err()
                .field,
            "max_wait"
        );
        assert_eq!(
            PoolBulkhead::builder("p").build().unwrap_err().field,
            "runtime"
        );
        // (Refused before a runtime is asked for, or a task spawned.)
        assert_eq!(
            PoolBulkhead::builder("p")
                .workers(u32::MAX)
                .build()
                .unwrap_err()
                .field,
            "workers"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Thousands of concurrent tasks: never more than the limit inside at once.
        #[test]
        fn never_admits_more_than_its_limit(limit in 1u32..16, tasks in 500usize..3000, wait_ms in 0u64..5) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
            let (peak, admitted, rejected) = rt.block_on(async move {
                let b = Bulkhead::builder("p").max_concurrent(limit).max_wait(Duration::from_millis(wait_ms)).build().unwrap();
                let inside = Arc::new(AtomicU32::new(0));
                let peak = Arc::new(AtomicU32::new(0));
                let handles: Vec<_> = (0..tasks).map(|i| {
                    let (b, inside, peak) = (b.clone(), Arc::clone(&inside), Arc::clone(&peak));
                    tokio::spawn(async move {
                        b.call(async {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            if i % 3 == 0 { tokio::task::yield_now().await; }
                            inside.fetch_sub(1, Ordering::SeqCst);
                        }).await.is_ok()
                    })
                }).collect();
                let mut admitted = 0u64;
                for h in handles { admitted += u64::from(h.await.unwrap()); }
                let m = b.metrics();
                (peak.load(Ordering::SeqCst), admitted, m.rejected_calls)
            });
            prop_assert!(peak <= limit, "peak {} > limit {}", peak, limit);
            prop_assert_eq!(admitted + rejected, tasks as u64);
        }
    }

    /// Occupies the pool's one worker with a task that answers 1 once released: the
    /// release, and the task's caller.
    async fn occupied(
        pool: &PoolBulkhead,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<i32, PoolError>>,
    ) {
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let p = pool.clone();
        let blocker = tokio::spawn(async move {
            p.execute(async move {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                1
            })
            .await
        });
        started_rx.await.unwrap();
        (release_tx, blocker)
    }

    #[tokio::test]
    async fn pool_runs_on_its_workers_and_applies_back_pressure() {
        let pool = PoolBulkhead::builder("p")
            .workers(1)
            .queue(1)
            .when_full(WhenFull::CallerRuns)
            .build()
            .unwrap();
        let (release_tx, blocker) = occupied(&pool).await;
        // The worker is busy: one task fits in the queue...
        let p = pool.clone();
        let queued = tokio::spawn(async move { p.execute(async { 2 }).await });
        settle(|| pool.metrics().queued < 1).await;
        assert!(!pool.metrics().healthy);
        // ...and the next runs on the caller.
        assert_eq!(pool.execute(async { 3 }).await.unwrap(), 3);
        let m = pool.metrics();
        assert_eq!((m.caller_ran, m.saturated, m.active), (1, 1, 1));
        release_tx.send(()).unwrap();
        assert_eq!(blocker.await.unwrap().unwrap(), 1);
        assert_eq!(queued.await.unwrap().unwrap(), 2);
        assert_eq!(pool.metrics().completed, 2);
    }

    /// A queued task whose caller went away is dropped, not run: it is not among the
    /// tasks the workers finished.
    #[tokio::test]
    async fn a_task_whose_caller_left_is_not_completed() {
        let pool = PoolBulkhead::builder("p")
            .workers(1)
            .queue(2)
            .build()
            .unwrap();
        let (release_tx, blocker) = occupied(&pool).await;
        let ran = Arc::new(AtomicU32::new(0));
        let (p, r) = (pool.clone(), Arc::clone(&ran));
        let left = tokio::spawn(async move {
            p.execute(async move { r.fetch_add(1, Ordering::SeqCst) })
                .await
        });
        settle(|| pool.metrics().queued < 1).await;
        left.abort();
        assert!(left.await.unwrap_err().is_cancelled());
        release_tx.send(()).unwrap();
        assert_eq!(blocker.await.unwrap().unwrap(), 1);
        settle(|| pool.metrics().queued > 0 || pool.metrics().active > 0).await;
        assert_eq!(ran.load(Ordering::SeqCst), 0, "not run");
        assert_eq!(pool.metrics().completed, 1);
    }

    #[tokio::test]
    async fn pool_rejects_when_asked_and_survives_panics() {
        let pool = PoolBulkhead::builder("p")
            .workers(1)
            .queue(1)
            .when_full(WhenFull::Reject)
            .build()
            .unwrap();
        let boom = pool.execute(async { panic!("task bug") }).await;
        assert!(matches!(boom, Err(PoolError::Panicked(_))));
        assert_eq!(
            pool.execute(async { 9 }).await.unwrap(),
            9,
            "the worker survived"
        );

        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let p = pool.clone();
        let busy =
            tokio::spawn(async move { p.execute(async move { release_rx.await.ok() }).await });
        settle(|| pool.metrics().active < 1).await;
        let p = pool.clone();
        let queued = tokio::spawn(async move { p.execute(async {}).await });
        settle(|| pool.metrics().queued < 1).await;
        assert!(matches!(
            pool.execute(async {}).await,
            Err(PoolError::Full(_))
        ));
        assert_eq!(pool.metrics().rejected, 1);
        release_tx.send(()).unwrap();
        busy.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
    }
}
