//! The circuit breaker: fail fast while an upstream is down, probe it, recover on its own.
//!
//! States CLOSED, OPEN and HALF_OPEN, plus the operator states DISABLED, FORCED_OPEN and
//! METRICS_ONLY; count- and time-based sliding windows; failure-rate and slow-call-rate
//! thresholds with a minimum number of calls; a fixed number of HALF_OPEN probes; an open
//! duration that is fixed, exponential or produced by a function; with a success model
//! ([`Prediction`]), an opening when a fresh call is predicted to fail and an open duration
//! the model chooses;
//! state-change events and a metrics snapshot with the design sketch's totals, success rate and
//! health score.
//!
//! Fixed from the design sketch: failures are counted over a sliding window, not forever;
//! refused calls are counted as *not permitted*, not as failures; HALF_OPEN admits only its
//! probes; results of calls admitted in an earlier state do not decide the current one.

mod config;
mod core;
mod event;
mod predict;
mod window;

pub use config::{
    BreakerBuilder, BreakerConfig, Listener, OpenContext, OpenDuration, SlidingWindow,
};
pub use core::{CallOutcome, CircuitBreaker, Permit};
pub use event::{BreakerEvent, BreakerMetrics, CircuitOpen, State};
pub use predict::{Prediction, Recovery};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::ErrorKind;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_permit_dropped_without_an_outcome_counts_as_ignored_unless_disabled() {
        let b = small().build().unwrap();
        drop(b.try_acquire().unwrap());
        let m = b.metrics();
        assert_eq!(
            (m.successful_calls, m.failed_calls, m.ignored_calls),
            (0, 0, 1)
        );
        assert_eq!(b.window_failure_rate(), None, "it decides nothing");
        b.disable();
        drop(b.try_acquire().unwrap());
        assert_eq!(b.metrics().ignored_calls, 1, "DISABLED counts nothing");
    }

    fn small() -> BreakerBuilder {
        CircuitBreaker::builder("t")
            .window(SlidingWindow::Count(10))
            .minimum_calls(5)
            .failure_rate_threshold(0.5)
            .slow_call_duration(100 * MS)
            .slow_call_rate_threshold(0.8)
            .permitted_calls_in_half_open(2)
            .open_for(Duration::from_secs(30))
    }

    fn call(b: &CircuitBreaker, outcome: CallOutcome) -> Result<(), CircuitOpen> {
        b.try_acquire().map(|p| p.record(outcome, MS))
    }

    #[test]
    fn opens_only_after_the_minimum_number_of_calls() {
        let b = small().build().unwrap();
        for _ in 0..4 {
            call(&b, CallOutcome::Failure).unwrap();
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.failure_rate(), None);
        call(&b, CallOutcome::Failure).unwrap();
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn failures_are_a_window_not_a_lifetime_count() {
        let b = small().build().unwrap();
        let run = |outcome, n| {
            for _ in 0..n {
                call(&b, outcome).unwrap();
            }
        };
        run(CallOutcome::Success, 10);
        run(CallOutcome::Failure, 4);
        assert_eq!(b.state(), State::Closed, "4 of the last 10 calls failed");
        run(CallOutcome::Success, 10);
        run(CallOutcome::Failure, 4);
        assert_eq!(
            b.state(),
            State::Closed,
            "8 failures in all, but 4 of the last 10"
        );
        run(CallOutcome::Failure, 1);
        assert_eq!(b.state(), State::Open, "5 of the last 10");
    }

    #[tokio::test(start_paused = true)]
    async fn call_records_outcomes_and_durations() {
        let b = small().build().unwrap();
        let ok = b.call(async { Ok::<_, ()>(1) }).await.unwrap();
        assert_eq!(ok, Ok(1));
        let slow = b
            .call(async {
                tokio::time::sleep(150 * MS).await;
                Err::<(), _>("boom")
            })
            .await
            .unwrap();
        assert_eq!(slow, Err("boom"));
        let m = b.metrics();
        assert_eq!(
            (m.successful_calls, m.failed_calls, m.slow_calls),
            (1, 1, 1)
        );
        b.trip();
        assert!(b.call(async { Ok::<_, ()>(()) }).await.is_err());
    }

    /// A failure rate exactly at the threshold opens the circuit, whatever the rounding of
    /// the threshold times the calls (`0.07 * 100.0` is `7.000000000000001`: 7 failures
    /// of 100 did not reach 7 %), and one call short of it does not.
    #[test]
    fn a_rate_exactly_at_the_threshold_opens_it() {
        for (threshold, failures) in [(0.07, 7), (0.56, 56), (0.29, 29)] {
            let b = CircuitBreaker::builder("t")
                .window(SlidingWindow::Count(100))
                .minimum_calls(100)
                .failure_rate_threshold(threshold)
                .build()
                .unwrap();
            for _ in 0..100 - failures {
                call(&b, CallOutcome::Success).unwrap();
            }
            for _ in 0..failures - 1 {
                call(&b, CallOutcome::Failure).unwrap();
            }
            assert_eq!(b.state(), State::Closed, "{threshold}");
            call(&b, CallOutcome::Failure).unwrap();
            assert_eq!(b.state(), State::Open, "{threshold}: {failures} of 100");
        }
    }

    #[test]
    fn refused_calls_are_not_failures() {
        let b = small().build().unwrap();
        b.trip();
        for _ in 0..3 {
            assert!(call(&b, CallOutcome::Success).is_err());
        }
        let m = b.metrics();
        assert_eq!(m.not_permitted_calls, 3);
        assert_eq!(m.failed_calls, 0);
        assert_eq!(m.total_calls, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_its_probes_only_then_closes() {
        let b = small().build().unwrap();
        b.trip();
        let err = b.try_acquire().unwrap_err();
        assert_eq!(err.remaining, Some(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.try_acquire().is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        let p1 = b.try_acquire().unwrap();
        assert_eq!(b.state(), State::HalfOpen);
        let p2 = b.try_acquire().unwrap();
        let refused = b.try_acquire().unwrap_err();
        assert_eq!(refused.state, State::HalfOpen);
        p1.record(CallOutcome::Success, MS);
        assert_eq!(b.state(), State::HalfOpen);
        p2.record(CallOutcome::Success, MS);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_longer() {
        let b = small()
            .open_duration(OpenDuration::Exponential {
                initial: Duration::from_secs(10),
                multiplier: 2.0,
                max: Duration::from_secs(25),
            })
            .build()
            .unwrap();
        b.trip();
        assert_eq!(
            b.try_acquire().unwrap_err().remaining,
            Some(Duration::from_secs(10))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        // One failure of two probes is already a 50 % failure rate: reopen at once.
        call(&b, CallOutcome::Failure).unwrap();
        assert_eq!(b.state(), State::Open);
        assert_eq!(
            b.try_acquire().unwrap_err().remaining,
            Some(Duration::from_secs(20))
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        call(&b, CallOutcome::Failure).unwrap();
        assert_eq!(
            b.try_acquire().unwrap_err().remaining,
            Some(Duration::from_secs(25)),
            "capped"
        );
        tokio::time::advance(Duration::from_secs(25)).await;
        call(&b, CallOutcome::Success).unwrap();
        call(&b, CallOutcome::Success).unwrap();
        assert_eq!(b.state(), State::Closed);
        b.trip();
        assert_eq!(
            b.try_acquire().unwrap_err().remaining,
            Some(Duration::from_secs(10)),
            "closing resets the growth"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_gives_its_slot_back() {
        let b = small().build().unwrap();
        b.trip();
        tokio::time::advance(Duration::from_secs(30)).await;
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        drop(p1);
        let p3 = b.try_acquire().expect("the dropped probe's slot");
        p2.record(CallOutcome::Success, MS);
        p3.record(CallOutcome::Success, MS);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_gives_up_after_its_max_wait() {
        let b = small()
            .max_wait_in_half_open(Duration::from_secs(5))
            .build()
            .unwrap();
        b.trip();
        tokio::time::advance(Duration::from_secs(30)).await;
        let stuck = b.try_acquire().unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.try_acquire().is_err());
        assert_eq!(b.state(), State::Open);
        stuck.record(CallOutcome::Success, MS);
        assert_eq!(
            b.state(),
            State::Open,
            "a result from the old HALF_OPEN decides nothing"
        );
    }

    #[test]
    fn outcomes_from_an_earlier_state_do_not_count() {
        let b = small().build().unwrap();
        let held: Vec<_> = (0..5).map(|_| b.try_acquire().unwrap()).collect();
        b.reset();
        for p in held {
            p.record(CallOutcome::Failure, MS);
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.metrics().window_calls, 0);
        assert_eq!(b.metrics().failed_calls, 5, "still in the totals");
    }

    #[test]
    fn slow_calls_open_the_circuit() {
        let b = small().build().unwrap();
        b.try_acquire()
            .unwrap()
            .record(CallOutcome::Success, 10 * MS);
        for _ in 0..3 {
            b.try_acquire()
                .unwrap()
                .record(CallOutcome::Success, 150 * MS);
        }
        assert_eq!(b.state(), State::Closed, "below the minimum of 5 calls");
        b.try_acquire()
            .unwrap()
            .record(CallOutcome::Success, 150 * MS);
        assert_eq!(b.state(), State::Open, "4 of 5 slow reaches 0.8");
        let m = b.metrics();
        assert_eq!(m.slow_calls, 4);
        assert_eq!(m.failed_calls, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn time_window_forgets_old_failures() {
        let b = small()
            .window(SlidingWindow::Time {
                duration: Duration::from_secs(10),
                buckets: 10,
            })
            .build()
            .unwrap();
        for _ in 0..4 {
            call(&b, CallOutcome::Failure).unwrap();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        call(&b, CallOutcome::Failure).unwrap();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.metrics().window_calls, 1);
        for _ in 0..4 {
            call(&b, CallOutcome::Failure).unwrap();
        }
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn operator_states() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let b = small()
            .on_event(move |e| seen.lock().unwrap().push(e.clone()))
            .build()
            .unwrap();

        b.disable();
        for _ in 0..20 {
            call(&b, CallOutcome::Failure).unwrap();
        }
        assert_eq!(b.state(), State::Disabled);
        assert_eq!(b.metrics().total_calls, 0, "disabled records nothing");

        b.metrics_only();
        for _ in 0..20 {
            call(&b, CallOutcome::Failure).unwrap();
        }
        assert_eq!(b.state(), State::MetricsOnly);
        assert_eq!(b.metrics().failure_rate, Some(1.0));

        b.force_open();
        assert_eq!(
            call(&b, CallOutcome::Success).unwrap_err().state,
            State::ForcedOpen
        );
        b.reset();
        assert_eq!(b.state(), State::Closed);

        let events = events.lock().unwrap();
        let transitions: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                BreakerEvent::StateTransition { from, to, .. } => Some((*from, *to)),
                _ => None,
            })
            .collect();
        assert_eq!(
            transitions,
            [
                (State::Closed, State::Disabled),
                (State::Disabled, State::MetricsOnly),
                (State::MetricsOnly, State::ForcedOpen),
                (State::ForcedOpen, State::Closed),
            ]
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, BreakerEvent::FailureRateExceeded { .. }))
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, BreakerEvent::CallNotPermitted { .. }))
        );
    }

    #[test]
    fn metrics_snapshot() {
        let b = small().build().unwrap();
        b.try_acquire()
            .unwrap()
            .record(CallOutcome::Success, 10 * MS);
        b.try_acquire()
            .unwrap()
            .record(CallOutcome::Success, 200 * MS);
        b.try_acquire()
            .unwrap()
            .record(CallOutcome::Failure, 30 * MS);
        b.try_acquire()
            .unwrap()
            .record(CallOutcome::Ignored, 40 * MS);
        let m = b.metrics();
        assert_eq!(m.total_calls, 4);
        assert_eq!(
            (m.successful_calls, m.failed_calls, m.ignored_calls),
            (2, 1, 1)
        );
        assert_eq!(m.avg_response_time, 70 * MS);
        // A call cancelled before its outcome (its permit dropped: a hedge's loser, an
        // outer timeout) is an ignored call of unknown duration, not one of 0 ms.
        drop(b.try_acquire().unwrap());
        let m = b.metrics();
        assert_eq!((m.total_calls, m.ignored_calls), (5, 2));
        assert_eq!(m.avg_response_time, 70 * MS);
        assert!((m.success_rate - 2.0 / 3.0).abs() < 1e-12);
        // The lifetime sum holds what a busy service records for years (in nanoseconds,
        // two calls of 317 years passed what a u64 holds, and the average wrapped).
        let long = Duration::from_secs(10_000_000_000);
        let busy = CircuitBreaker::builder("busy").build().unwrap();
        for _ in 0..2 {
            busy.try_acquire()
                .unwrap()
                .record(CallOutcome::Success, long);
        }
        assert_eq!(busy.metrics().avg_response_time, long);
        // Window: 3 calls, 1 failed, 1 slow.
        let want = (1.0 - 1.0 / 3.0) * (1.0 - 0.5 / 3.0);
        assert!((m.health_score - want).abs() < 1e-12);
        assert_eq!(m.failure_rate, None, "below the minimum of 5");
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["state"], "CLOSED");
    }

    #[test]
    fn invalid_configuration_names_the_field() {
        let cases: Vec<(BreakerBuilder, &str)> = vec![
            (
                small().failure_rate_threshold(0.0),
                "failure_rate_threshold",
            ),
            (
                small().failure_rate_threshold(1.01),
                "failure_rate_threshold",
            ),
            (
                small().failure_rate_threshold(f64::NAN),
                "failure_rate_threshold",
            ),
            (
                small().slow_call_rate_threshold(-1.0),
                "slow_call_rate_threshold",
            ),
            (
                small().slow_call_duration(Duration::ZERO),
                "slow_call_duration",
            ),
            (small().window(SlidingWindow::Count(0)), "window"),
            (small().window(SlidingWindow::Count(u32::MAX)), "window"),
            (
                small().predict(
                    Prediction::new(std::sync::Arc::new(|_: &crate::attempt::AttemptContext| {
                        0.5
                    }))
                    .open_between(MS, Duration::MAX),
                ),
                "predict.max_open",
            ),
            (
                small().window(SlidingWindow::Time {
                    duration: MS,
                    buckets: 10,
                }),
                "window",
            ),
            (
                small().window(SlidingWindow::Time {
                    duration: MS,
                    buckets: 0,
                }),
                "window",
            ),
            (
                small().window(SlidingWindow::Time {
                    duration: Duration::MAX,
                    buckets: 10,
                }),
                "window",
            ),
            (small().minimum_calls(0), "minimum_calls"),
            (
                small().permitted_calls_in_half_open(0),
                "permitted_calls_in_half_open",
            ),
            (
                small().max_wait_in_half_open(Duration::ZERO),
                "max_wait_in_half_open",
            ),
            (small().open_for(Duration::ZERO), "open_duration"),
            (
                small().open_duration(OpenDuration::Exponential {
                    initial: MS,
                    multiplier: 0.5,
                    max: MS,
                }),
                "open_duration",
            ),
            (
                small().open_duration(OpenDuration::Exponential {
                    initial: MS,
                    multiplier: 2.0,
                    max: Duration::MAX,
                }),
                "open_duration",
            ),
            (CircuitBreaker::builder(""), "name"),
        ];
        assert!(
            small().slow_call_duration(Duration::MAX).build().is_ok(),
            "no call slow: slow-call counting off"
        );
        for (b, field) in cases {
            let err = b.build().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_never_admits_more_than_its_probes_under_contention() {
        let b = CircuitBreaker::builder("c")
            .permitted_calls_in_half_open(3)
            .open_for(MS)
            .build()
            .unwrap();
        // The threads read the test's paused clock.
        let rt = tokio::runtime::Handle::current();
        for _ in 0..50 {
            b.trip();
            tokio::time::advance(2 * MS).await;
            let admitted = std::sync::atomic::AtomicU32::new(0);
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        let _clock = rt.enter();
                        barrier.wait();
                        let mut held = vec![];
                        for _ in 0..100 {
                            if let Ok(p) = b.try_acquire() {
                                if p.state() == State::HalfOpen {
                                    admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                }
                                held.push(p);
                            }
                        }
                        std::mem::forget(held);
                    });
                }
            });
            assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 3);
            assert_eq!(b.state(), State::HalfOpen);
        }
    }

    // ----- The state machine against a plain reference model -----

    #[derive(Debug, Clone)]
    enum Op {
        Call {
            failed: bool,
            slow: bool,
            ignored: bool,
        },
        Wait(u64),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                8 => (any::<bool>(), prop::bool::weighted(0.2), prop::bool::weighted(0.05))
                    .prop_map(|(failed, slow, ignored)| Op::Call { failed, slow, ignored }),
                1 => (0u64..40_000).prop_map(Op::Wait),
            ],
            0..300,
        )
    }

    /// The rules, written as plainly as possible.
    struct Model {
        state: State,
        window: VecDeque<(bool, bool)>,
        size: usize,
        min: usize,
        open_until: u64,
        probes: Vec<(bool, bool)>,
        n_probes: usize,
    }

    impl Model {
        fn rates(calls: &[(bool, bool)], denom: usize) -> (f64, f64) {
            let f = calls.iter().filter(|c| c.0).count() as f64 / denom as f64;
            let s = calls.iter().filter(|c| c.1).count() as f64 / denom as f64;
            (f, s)
        }

        /// Returns whether the call was admitted.
        fn call(&mut self, now: u64, failed: bool, slow: bool, ignored: bool) -> bool {
            if self.state == State::Open {
                if now < self.open_until {
                    return false;
                }
                self.state = State::HalfOpen;
                self.probes.clear();
            }
            match self.state {
                State::Closed => {
                    if ignored {
                        return true;
                    }
                    self.window.push_back((failed, slow));
                    if self.window.len() > self.size {
                        self.window.pop_front();
                    }
                    if self.window.len() >= self.min.min(self.size) {
                        let w: Vec<_> = self.window.iter().copied().collect();
                        let (f, s) = Self::rates(&w, w.len());
                        if f >= 0.5 || s >= 0.8 {
                            self.open(now);
                        }
                    }
                }
                State::HalfOpen => {
                    if ignored {
                        return true;
                    }
                    self.probes.push((failed, slow));
                    let (f, s) = Self::rates(&self.probes, self.n_probes);
                    if f >= 0.5 || s >= 0.8 {
                        self.open(now);
                    } else if self.probes.len() == self.n_probes {
                        self.state = State::Closed;
                        self.window.clear();
                    }
                }
                _ => unreachable!(),
            }
            true
        }

        fn open(&mut self, now: u64) {
            self.state = State::Open;
            self.open_until = now + 30_000;
        }
    }

    /// Back 5 s after the last success; until then a fresh call succeeds as often as the
    /// window's calls did.
    fn back_in_5s() -> Arc<dyn crate::model::SuccessModel> {
        Arc::new(|c: &crate::attempt::AttemptContext| {
            assert_eq!((c.attempt, c.error), (1, None), "a fresh call");
            let since = c.since_success.expect("the breaker knows") + c.delay;
            if since >= Duration::from_secs(5) {
                0.9
            } else {
                1.0 - c.failure_rate.unwrap_or(0.0)
            }
        })
    }

    /// Five failures (enough for `small()`'s rate): the circuit is open, for this long.
    fn opened_by_failures(b: &CircuitBreaker) -> Duration {
        for _ in 0..5 {
            call(b, CallOutcome::Failure).unwrap();
        }
        assert_eq!(b.state(), State::Open);
        remaining(b)
    }

    /// How long the open circuit refuses a call for.
    fn remaining(b: &CircuitBreaker) -> Duration {
        call(b, CallOutcome::Success)
            .unwrap_err()
            .remaining
            .expect("OPEN says for how long")
    }

    /// A clock read past what its nanoseconds hold (584 years on) saturates there, and a
    /// success after it overflows nothing (it panicked in a debug build).
    #[tokio::test(start_paused = true)]
    async fn a_success_centuries_on_overflows_nothing() {
        let model = Arc::new(|_: &crate::attempt::AttemptContext| 0.9);
        let b = predictive(model).build().unwrap();
        let far = tokio::time::Instant::now() + Duration::from_secs(600 * 365 * 86_400);
        b.try_acquire()
            .unwrap()
            .record_at(CallOutcome::Success, MS, far);
        b.try_acquire().unwrap().record(CallOutcome::Success, MS);
        b.try_acquire()
            .unwrap()
            .record_at(CallOutcome::Success, MS, far);
        assert_eq!(b.state(), State::Closed);
    }

    fn predictive(model: Arc<dyn crate::model::SuccessModel>) -> BreakerBuilder {
        small()
            .failure_rate_threshold(0.9)
            .predict(Prediction::new(model).threshold(0.5))
    }

    #[tokio::test(start_paused = true)]
    async fn under_traffic_a_probe_is_sent_at_the_shortest_opening_unless_the_target_is_surely_down()
     {
        // A fresh call to a target failing more than 40 % of its calls is predicted to
        // succeed `p_down` of the time, whatever the wait: below the threshold (0.1), so
        // the circuit opens, and alone a probe is never worth it (the configured 30 s).
        let breaker = |p_down: f64, window: SlidingWindow| {
            let model = Arc::new(move |c: &crate::attempt::AttemptContext| {
                if c.failure_rate.unwrap_or(0.0) > 0.4 {
                    p_down
                } else {
                    0.99
                }
            });
            CircuitBreaker::builder("t")
                .window(window)
                .minimum_calls(5)
                .failure_rate_threshold(0.9)
                .open_for(Duration::from_secs(30))
                .predict(Prediction::new(model))
                .build()
                .unwrap()
        };
        // 100 calls a second: successes, then failures until it opens.
        async fn drive(b: &CircuitBreaker) -> Duration {
            for sent in 0..10_000 {
                let outcome = if sent < 60 {
                    CallOutcome::Success
                } else {
                    CallOutcome::Failure
                };
                call(b, outcome).unwrap();
                if b.state() != State::Closed {
                    return remaining(b);
                }
                tokio::time::advance(10 * MS).await;
            }
            panic!("10,000 calls, most of them failures, never opened the circuit");
        }
        let time = || SlidingWindow::Time {
            duration: Duration::from_secs(1),
            buckets: 10,
        };
        // Under traffic a probe answers for the 10 calls of the shortest opening after it
        // (p = 0.05 for 11 calls is worth more than 0.1): the circuit probes at 100 ms.
        let b = breaker(0.05, time());
        assert_eq!(drive(&b).await, Duration::from_millis(100));
        // Refused calls keep it so: the probe fails, and it reopens for 100 ms again.
        for _ in 0..9 {
            tokio::time::advance(10 * MS).await;
            assert!(call(&b, CallOutcome::Success).is_err());
        }
        tokio::time::advance(20 * MS).await;
        call(&b, CallOutcome::Failure).unwrap();
        assert_eq!(b.state(), State::Open);
        let left = remaining(&b);
        assert_eq!(left, Duration::from_millis(100));
        // A model sure the target is down (p = 0.001: not worth it for 11 calls either)
        // keeps the configured duration.
        assert_eq!(
            drive(&breaker(0.001, time())).await,
            Duration::from_secs(30)
        );
        // A count window says nothing of the traffic's rate: the threshold alone.
        assert_eq!(
            drive(&breaker(0.05, SlidingWindow::Count(100))).await,
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn opens_when_a_fresh_call_is_predicted_to_fail_for_as_long_as_the_model_says() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let b = predictive(back_in_5s())
            .on_event(move |e| seen.lock().unwrap().push(e.clone()))
            .build()
            .unwrap();
        for _ in 0..2 {
            call(&b, CallOutcome::Success).unwrap();
        }
        for _ in 0..2 {
            call(&b, CallOutcome::Failure).unwrap();
        }
        // Half the window failed: p = 0.5 is not below the threshold; the rate (0.9) is far.
        assert_eq!(b.state(), State::Closed);
        call(&b, CallOutcome::Failure).unwrap();
        // 3 of 5: p = 0.4.
        assert_eq!(b.state(), State::Open);
        assert!(events.lock().unwrap().iter().any(|e| matches!(
            e,
            BreakerEvent::SuccessPredictedLow { p_success, .. } if (*p_success - 0.4).abs() < 1e-9
        )));
        // Open until the target is predicted back: 5 s after the last success (the grid's
        // step there, 4.67 s to 6.43 s, halved five times), not the configured 30 s.
        let left = remaining(&b);
        assert!(
            left >= Duration::from_secs(5) && left <= Duration::from_millis(5_055),
            "{left:?}"
        );
        tokio::time::advance(left).await;
        // The target is predicted back: one failed probe is not enough to reopen it...
        call(&b, CallOutcome::Failure).unwrap();
        assert_eq!(b.state(), State::HalfOpen);
        // ...two are (the rate); the model predicts the target back at once, so it reopens
        // for the shortest wait allowed.
        call(&b, CallOutcome::Failure).unwrap();
        assert_eq!(b.state(), State::Open);
        let left = remaining(&b);
        assert_eq!(left, Duration::from_millis(100));
        tokio::time::advance(left).await;
        call(&b, CallOutcome::Success).unwrap();
        call(&b, CallOutcome::Success).unwrap();
        assert_eq!(b.state(), State::Closed);
    }

    /// A success reported late (a call another process made that ended before the circuit
    /// opened) says nothing of the target since: the time since the last success a
    /// prediction reads is not moved to now by it. (It was: the probes after the opening
    /// then read a target that had just answered, and reopened for the wait after a
    /// success, 4 s, instead of the shortest.)
    #[tokio::test(start_paused = true)]
    async fn a_late_success_does_not_reset_the_time_since_the_last_one() {
        let b = predictive(back_in_5s()).build().unwrap();
        for _ in 0..2 {
            call(&b, CallOutcome::Success).unwrap();
        }
        for _ in 0..3 {
            call(&b, CallOutcome::Failure).unwrap();
        }
        assert_eq!(b.state(), State::Open);
        let left = remaining(&b);
        tokio::time::advance(left - Duration::from_secs(1)).await;
        b.observe_late(CallOutcome::Success, MS);
        tokio::time::advance(Duration::from_secs(1)).await;
        call(&b, CallOutcome::Failure).unwrap();
        call(&b, CallOutcome::Failure).unwrap();
        assert_eq!(b.state(), State::Open);
        assert_eq!(remaining(&b), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_it_when_a_fresh_call_is_predicted_to_fail() {
        // Never back: every probe that fails says so, and the circuit reopens at once. No
        // wait up to the 60 s allowed is predicted worth a probe, which the model cannot
        // know of a failure longer than it saw: the configured 30 s apply, so the breaker
        // keeps probing.
        let never =
            Arc::new(|c: &crate::attempt::AttemptContext| 1.0 - c.failure_rate.unwrap_or(0.0));
        let b = predictive(never.clone()).build().unwrap();
        let left = opened_by_failures(&b);
        assert_eq!(left, Duration::from_secs(30));
        tokio::time::advance(left).await;
        call(&b, CallOutcome::Failure).unwrap();
        assert_eq!(b.state(), State::Open, "one of two probes failed: p = 0");
        // Held within the model's bounds: a configured 30 s with at most 10 s allowed.
        let b = small()
            .failure_rate_threshold(0.9)
            .predict(
                Prediction::new(never)
                    .threshold(0.5)
                    .open_between(Duration::from_secs(1), Duration::from_secs(10)),
            )
            .build()
            .unwrap();
        assert_eq!(opened_by_failures(&b), Duration::from_secs(10));
    }

    /// The longest open duration a configuration may give: the waits weighed reach it
    /// without overflowing (a product of floats rounded past a `Duration` was a panic).
    #[test]
    fn the_longest_open_duration_allowed_is_weighed_without_overflow() {
        let late = Duration::from_secs(100_000_000);
        let p = Prediction::new(Arc::new(
            move |c: &crate::attempt::AttemptContext| {
                if c.delay >= late { 0.9 } else { 0.0 }
            },
        ))
        .threshold(0.5)
        .open_between(MS, crate::MAX_CONFIG_DURATION);
        match p.recovery(&crate::attempt::AttemptContext::first("t"), None) {
            Recovery::After { wait, .. } => {
                assert!(
                    late <= wait && wait <= crate::MAX_CONFIG_DURATION,
                    "{wait:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// A model that knows what waiting does only for retries: a fresh call looks as bad
    /// after any wait (first attempts never wait in its data), while a retry after a
    /// refused connection is predicted to get through once 3 s have passed since the last
    /// success.
    fn knows_retries() -> Arc<dyn crate::model::SuccessModel> {
        Arc::new(|c: &crate::attempt::AttemptContext| {
            if c.error == Some(ErrorKind::Connect) {
                let since = c.since_success.unwrap_or_default() + c.delay;
                if since >= Duration::from_secs(3) {
                    0.9
                } else {
                    0.0
                }
            } else {
                1.0 - c.failure_rate.unwrap_or(0.0)
            }
        })
    }

    /// The retry after a refused connection, as a policy's decider would see it.
    fn retry_after_refusal() -> crate::attempt::AttemptContext {
        let mut ctx = crate::attempt::AttemptContext::first("p").next(
            &crate::attempt::Failure::new(ErrorKind::Connect),
            MS,
            MS,
        );
        ctx.since_success = Some(Duration::ZERO);
        ctx
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_is_also_read_as_the_retry_after_the_failure() {
        // Told only of failures, the breaker reads a probe as a fresh call: none is worth
        // sending within 60 s, and the configured 30 s apply.
        let b = predictive(knows_retries()).build().unwrap();
        assert_eq!(opened_by_failures(&b), Duration::from_secs(30));
        // Told of each failure with the retry after it, it opens until that retry is
        // predicted to get through: 3 s after the last success (within 1/32 of the grid's
        // step, 1.98 s to 3.03 s, after it).
        let b = predictive(knows_retries()).build().unwrap();
        for _ in 0..5 {
            b.try_acquire()
                .unwrap()
                .record_failure_before(MS, None, &retry_after_refusal());
        }
        assert_eq!(b.state(), State::Open);
        let left = remaining(&b);
        assert!(
            left >= Duration::from_secs(3) && left <= Duration::from_millis(3_033),
            "{left:?}"
        );
        // Failed probes told the same way reopen it by the same reading (the retry's last
        // success, as this caller saw it, is still just now: about 3 s again).
        tokio::time::advance(left).await;
        b.try_acquire()
            .unwrap()
            .record_failure_before(MS, None, &retry_after_refusal());
        assert_eq!(b.state(), State::Open, "a fresh call is predicted to fail");
        let left = remaining(&b);
        assert!(left >= Duration::from_secs(3), "{left:?}");
        // A breaker without a model records a plain failure.
        let plain = small().build().unwrap();
        for _ in 0..5 {
            plain
                .try_acquire()
                .unwrap()
                .record_failure_before(MS, None, &retry_after_refusal());
        }
        assert_eq!(plain.state(), State::Open);
        assert_eq!(plain.metrics().failed_calls, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_reading_answering_nan_is_no_evidence() {
        let model = Arc::new(
            |c: &crate::attempt::AttemptContext| {
                if c.error.is_some() { f64::NAN } else { 0.99 }
            },
        );
        let b = predictive(model).build().unwrap();
        for _ in 0..5 {
            b.try_acquire()
                .unwrap()
                .record_failure_before(MS, None, &retry_after_refusal());
        }
        // The rate opened it; the fresh reading alone would have said 500 ms.
        let left = remaining(&b);
        assert_eq!(left, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rates_still_open_it_and_the_model_still_times_it() {
        // A model that never predicts trouble does not keep the rates from opening the
        // circuit; it then chooses the open duration: the shortest allowed.
        let b = small()
            .predict(Prediction::new(Arc::new(
                |_: &crate::attempt::AttemptContext| 0.99,
            )))
            .build()
            .unwrap();
        let left = opened_by_failures(&b);
        assert_eq!(left, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_answering_nan_is_no_evidence() {
        let nan = Arc::new(|_: &crate::attempt::AttemptContext| f64::NAN);
        let b = predictive(nan).build().unwrap();
        // Every call failed: the rate opens it, and the configured 30 s apply.
        assert_eq!(opened_by_failures(&b), Duration::from_secs(30));
        // And below the rate threshold, NaN never opens it.
        let b = predictive(Arc::new(|_: &crate::attempt::AttemptContext| f64::NAN))
            .build()
            .unwrap();
        for outcome in [CallOutcome::Success, CallOutcome::Failure].repeat(5) {
            call(&b, outcome).unwrap();
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_only_tells_of_the_prediction_and_stays() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let b = predictive(back_in_5s())
            .on_event(move |e| seen.lock().unwrap().push(e.clone()))
            .build()
            .unwrap();
        b.metrics_only();
        call(&b, CallOutcome::Success).unwrap();
        for _ in 0..4 {
            call(&b, CallOutcome::Failure).unwrap();
        }
        assert_eq!(b.state(), State::MetricsOnly);
        assert!(
            events
                .lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e, BreakerEvent::SuccessPredictedLow { .. }))
        );
    }

    #[test]
    fn prediction_settings_are_checked() {
        let m = back_in_5s();
        for (p, field) in [
            (
                Prediction::new(m.clone()).threshold(0.0),
                "predict.threshold",
            ),
            (
                Prediction::new(m.clone()).threshold(1.0),
                "predict.threshold",
            ),
            (
                Prediction::new(m.clone()).threshold(f64::NAN),
                "predict.threshold",
            ),
            (
                Prediction::new(m.clone()).open_between(Duration::ZERO, Duration::from_secs(1)),
                "predict.min_open",
            ),
            (
                Prediction::new(m.clone())
                    .open_between(Duration::from_secs(2), Duration::from_secs(1)),
                "predict.max_open",
            ),
        ] {
            let err = small().predict(p).build().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the model answers, the circuit opens for a duration within the bounds.
        #[test]
        fn the_predicted_open_duration_stays_within_its_bounds(
            back_after_ms in 0u64..200_000,
            p_back in 0.0f64..=1.0,
            p_before in 0.0f64..=1.0,
            min_ms in 1u64..5_000,
            extra_ms in 0u64..100_000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let model = Arc::new(move |c: &crate::attempt::AttemptContext| {
                    let since = c.since_success.unwrap_or_default() + c.delay;
                    if since >= Duration::from_millis(back_after_ms) { p_back } else { p_before }
                });
                let (min, max) = (
                    Duration::from_millis(min_ms),
                    Duration::from_millis(min_ms + extra_ms),
                );
                let b = small()
                    .predict(Prediction::new(model).open_between(min, max))
                    .build()
                    .unwrap();
                let left = opened_by_failures(&b);
                prop_assert!(left >= min && left <= max, "{:?} not in {:?}..={:?}", left, min, max);
                Ok(())
            })?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Reading a probe two ways never keeps the circuit open longer than a reading that
        /// finds a probe worth sending alone would; when neither does, the configured
        /// duration within the bounds.
        #[test]
        fn two_readings_open_no_longer_than_either(
            fresh_back_ms in 1u64..120_000,
            retry_back_ms in 1u64..120_000,
            configured_ms in 1u64..100_000,
        ) {
            let (fresh_back, retry_back) = (
                Duration::from_millis(fresh_back_ms),
                Duration::from_millis(retry_back_ms),
            );
            let model = Arc::new(move |c: &crate::attempt::AttemptContext| {
                let back = if c.error.is_some() { retry_back } else { fresh_back };
                if c.since_success.unwrap_or_default() + c.delay >= back { 0.9 } else { 0.0 }
            });
            let pred = Prediction::new(model);
            let mut fresh = crate::attempt::AttemptContext::first("p");
            fresh.since_success = Some(Duration::ZERO);
            let retry = retry_after_refusal();
            let configured = Duration::from_millis(configured_ms);
            let both = pred.open_for(&fresh, Some(&retry), || configured, 0.0);
            let alone = [&fresh, &retry].map(|c| match pred.recovery(c, None) {
                Recovery::After { wait, .. } => Some(wait),
                _ => None,
            });
            match alone.iter().flatten().min() {
                Some(shortest) => prop_assert!(both <= *shortest, "{:?} > {:?}", both, shortest),
                None => prop_assert_eq!(both, configured.clamp(pred.min_open, pred.max_open)),
            }
        }
    }

    proptest! {
        /// More traffic never holds the circuit longer: a probe answers for the calls the
        /// circuit would refuse after it.
        #[test]
        fn traffic_never_lengthens_an_opening(
            back_ms in 1u64..120_000,
            p_before in 0.0f64..0.1,
            calls_per_s in 0.0f64..10_000.0,
            more in 0.0f64..10_000.0,
        ) {
            let back = Duration::from_millis(back_ms);
            let model = Arc::new(move |c: &crate::attempt::AttemptContext| {
                if c.since_success.unwrap_or_default() + c.delay >= back { 0.9 } else { p_before }
            });
            let pred = Prediction::new(model);
            let mut fresh = crate::attempt::AttemptContext::first("p");
            fresh.since_success = Some(Duration::ZERO);
            let configured = || Duration::from_secs(5);
            let less = pred.open_for(&fresh, None, configured, calls_per_s);
            let busier = pred.open_for(&fresh, None, configured, calls_per_s + more);
            prop_assert!(busier <= less, "{:?} > {:?}", busier, less);
            prop_assert!(busier >= pred.min_open && less <= pred.max_open);
        }
    }

    /// A prediction whose model steps from 0 to 0.9 once `back` has passed since the last
    /// success, opening from `min_ms` to `ratio` times that; the fresh call it is asked
    /// about, just after a success; and the bounds.
    fn step_at(
        back: Duration,
        min_ms: u64,
        ratio: f64,
    ) -> (
        Prediction,
        crate::attempt::AttemptContext,
        Duration,
        Duration,
    ) {
        let model = Arc::new(move |c: &crate::attempt::AttemptContext| {
            if c.since_success.unwrap_or_default() + c.delay >= back {
                0.9
            } else {
                0.0
            }
        });
        let min = Duration::from_millis(min_ms);
        let max = min.mul_f64(ratio);
        let mut ctx = crate::attempt::AttemptContext::first("p");
        ctx.since_success = Some(Duration::ZERO);
        (Prediction::new(model).open_between(min, max), ctx, min, max)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Where a step model crosses the threshold, the wait found is at or after the step
        /// and within 1/32 of the grid's step of it; before the bounds, the shortest wait;
        /// past them, none.
        #[test]
        fn recovery_ends_within_a_32nd_of_a_step_after_the_crossing(
            back_after_us in 1u64..120_000_000,
            min_ms in 1u64..5_000,
            ratio in 1.0f64..1_000.0,
        ) {
            let back = Duration::from_micros(back_after_us);
            let (pred, ctx, min, max) = step_at(back, min_ms, ratio);
            let step = ratio.powf(1.0 / 15.0) - 1.0;
            match pred.recovery(&ctx, None) {
                Recovery::After { wait, p_success } => {
                    prop_assert_eq!(p_success, 0.9);
                    prop_assert!(wait >= min && wait <= max, "{:?}", wait);
                    if back <= min {
                        prop_assert_eq!(wait, min);
                    } else {
                        prop_assert!(wait >= back, "{:?} before {:?}", wait, back);
                        let slack = back.mul_f64(step / 32.0) + Duration::from_micros(1);
                        prop_assert!(wait <= back + slack, "{:?} long after {:?}", wait, back);
                    }
                }
                Recovery::NotWithin => prop_assert!(back > max.mul_f64(1.0 - 1e-9)),
                Recovery::Unknown => prop_assert!(false, "no NaN here"),
            }
        }

        /// Asked for a wait shorter than `within`, it finds one whenever one is worth it -
        /// also one between the grid's last point under `within` and `within` itself (it
        /// answered "not within" there).
        #[test]
        fn recovery_within_a_limit_finds_every_crossing_under_it(
            back_after_us in 1u64..120_000_000,
            within_us in 1u64..120_000_000,
            min_ms in 1u64..5_000,
            ratio in 1.0f64..1_000.0,
        ) {
            let back = Duration::from_micros(back_after_us);
            let within = Duration::from_micros(within_us);
            let (pred, ctx, min, max) = step_at(back, min_ms, ratio);
            // The longest wait it may answer: under `within`, within the bounds.
            let edge = within.saturating_sub(Duration::from_micros(1)).clamp(min, max);
            let findable = edge < within && back <= edge;
            match pred.recovery(&ctx, Some(within)) {
                Recovery::After { wait, p_success } => {
                    prop_assert!(findable, "{:?} found though none is", wait);
                    prop_assert_eq!(p_success, 0.9);
                    prop_assert!(wait < within && wait >= min && wait <= max, "{:?}", wait);
                    prop_assert!(wait >= back || wait == min, "{:?} before {:?}", wait, back);
                }
                Recovery::NotWithin => prop_assert!(!findable, "missed: back {:?}, within {:?}", back, within),
                Recovery::Unknown => prop_assert!(false, "no NaN here"),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn follows_its_state_machine(ops in ops(), size in 1usize..12, min in 1usize..12) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let b = CircuitBreaker::builder("p")
                    .window(SlidingWindow::Count(size as u32))
                    .minimum_calls(min as u32)
                    .failure_rate_threshold(0.5)
                    .slow_call_rate_threshold(0.8)
                    .slow_call_duration(100 * MS)
                    .permitted_calls_in_half_open(3)
                    .open_for(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut m = Model {
                    state: State::Closed,
                    window: VecDeque::new(),
                    size,
                    min,
                    open_until: 0,
                    probes: vec![],
                    n_probes: 3,
                };
                let mut now = 0u64;
                for op in ops {
                    match op {
                        Op::Wait(ms) => {
                            tokio::time::advance(Duration::from_millis(ms)).await;
                            now += ms;
                        }
                        Op::Call { failed, slow, ignored } => {
                            let want = m.call(now, failed, slow, ignored);
                            let outcome = match (ignored, failed) {
                                (true, _) => CallOutcome::Ignored,
                                (false, true) => CallOutcome::Failure,
                                (false, false) => CallOutcome::Success,
                            };
                            let got = b.try_acquire().map(|p| {
                                p.record(outcome, if slow { 150 * MS } else { MS })
                            });
                            prop_assert_eq!(got.is_ok(), want, "admission at {}ms", now);
                        }
                    }
                    prop_assert_eq!(b.state(), m.state);
                }
                Ok(())
            })?;
        }
    }
}
