//! Finagle/tower-style retry budget: retries as a share of calls over a sliding window.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Check, ConfigError};

use super::RetryBudget;

const CHECK: Check = Check::new("ratio_budget");
const SLOTS: u32 = 10;
const PPM: u128 = 1_000_000;

/// A counter that belongs to one time slot, packed as `epoch << 32 | count` so that moving
/// it to a new slot and counting are one atomic step.
#[derive(Debug, Default)]
struct SlotCounter(AtomicU64);

impl SlotCounter {
    /// Adds one for `epoch`, resetting the counter if it holds another epoch. A counter
    /// already moved to a newer epoch (a caller that read its epoch earlier) is left
    /// alone: the event is dropped, which can only make the budget stricter. One "ahead"
    /// by more than a quarter of the epochs there are is an old epoch seen across the
    /// wrap of the epoch counter (after a long idle spell): it is reset, not left to drop
    /// every event.
    fn incr(&self, epoch: u32) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (e, n) = unpack(v);
                if e == epoch {
                    Some(pack(e, n.saturating_add(1)))
                } else if ahead_by_a_little(e, epoch) {
                    None
                } else {
                    Some(pack(epoch, 1))
                }
            });
    }

    /// Takes one back for `epoch`, if the counter still holds that epoch and counted one
    /// (a counter moved on has forgotten it already).
    fn decr(&self, epoch: u32) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (e, n) = unpack(v);
                (e == epoch && n > 0).then(|| pack(e, n - 1))
            });
    }

    /// The count if the counter belongs to a slot within `window` slots up to `epoch`.
    fn count_within(&self, epoch: u32, window: u32) -> u64 {
        let (e, n) = unpack(self.0.load(Ordering::Acquire));
        if epoch.wrapping_sub(e) < window {
            u64::from(n)
        } else {
            0
        }
    }
}

fn pack(epoch: u32, n: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(n)
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// Whether epoch `a` is after `b` (allowing for wrap-around) by less than a quarter of
/// the epochs there are: a counter a caller that read its epoch earlier (a racing or
/// stalled one) finds moved on. Further "ahead" is an old epoch, from before the wrap.
fn ahead_by_a_little(a: u32, b: u32) -> bool {
    (1..1 << 30).contains(&a.wrapping_sub(b))
}

#[derive(Debug, Default)]
struct Slot {
    deposits: SlotCounter,
    withdrawals: SlotCounter,
}

/// Retries may not exceed `ratio` of the calls made in the last `ttl`, plus a floor of
/// `min_per_sec` retries per second (the budget of Finagle and of tower's `TpsBudget`;
/// Finagle's defaults are 20 % and 10 per second over 10 s).
///
/// The window slides in ten steps of `ttl / 10`. At every retry it allows, retries in the
/// window (that one included) are at most `min_per_sec × ttl + ratio × calls in the
/// window`. Calls are counted without locking; retries, which are rare and must be checked
/// and counted atomically, take a lock.
#[derive(Debug)]
pub struct RatioBudget {
    origin: Instant,
    slot_nanos: u64,
    slots: [Slot; SLOTS as usize],
    /// Retries always allowed per window.
    floor: u64,
    /// The ratio in whole parts per million, never above the configured one.
    ratio_ppm: u64,
    withdraw: Mutex<()>,
}

impl RatioBudget {
    /// Retries ≤ `ratio` × calls + `min_per_sec` × `ttl`, over a window of `ttl`.
    ///
    /// # Errors
    /// `ttl` below 10 ms or above one day; `ratio` outside `[0, 1000]` or not a number.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Result<Self, ConfigError> {
        if ttl < Duration::from_millis(10) || ttl > Duration::from_secs(86_400) {
            return Err(CHECK.err("ttl", format!("must be within [10 ms, 1 day], got {ttl:?}")));
        }
        CHECK.in_range("ratio", ratio, 0.0, 1000.0)?;
        let slot_nanos = u64::try_from(ttl.as_nanos() / u128::from(SLOTS)).unwrap_or(u64::MAX);
        // min_per_sec ≤ u32::MAX and ttl ≤ 1 day: the product fits in f64 exactly enough.
        let floor = (f64::from(min_per_sec) * ttl.as_secs_f64()).floor() as u64;
        Ok(Self {
            origin: Instant::now(),
            slot_nanos,
            slots: Default::default(),
            floor,
            // Down to a whole part per million, so that the budget never allows more than
            // `ratio` (0.116666549 allowed 7 retries for 60 calls when rounded up to
            // 116,667 ppm); the millionth of a part keeps a decimal ratio whose double is
            // a hair under it (0.29 × 10⁶ = 289,999.99999999994) at its own value.
            ratio_ppm: (ratio * PPM as f64 + 1e-6).floor() as u64,
            withdraw: Mutex::new(()),
        })
    }

    /// Finagle's defaults: 20 % of calls plus 10 per second, over 10 s.
    pub fn finagle_default() -> Self {
        Self::new(Duration::from_secs(10), 10, 0.2)
            .unwrap_or_else(|_| unreachable!("constants are valid"))
    }

    fn epoch(&self, now: Instant) -> u32 {
        // u64 nanoseconds last 584 years; u64 division is several times cheaper than u128.
        let nanos = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        // Truncation wraps the epoch; comparisons are wrap-aware.
        (nanos / self.slot_nanos) as u32
    }

    fn totals(&self, epoch: u32) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(d, w), s| {
            (
                d + s.deposits.count_within(epoch, SLOTS),
                w + s.withdrawals.count_within(epoch, SLOTS),
            )
        })
    }

    fn allows(&self, deposits: u64, withdrawals: u64) -> bool {
        let allowance =
            u128::from(self.floor) * PPM + u128::from(self.ratio_ppm) * u128::from(deposits);
        (u128::from(withdrawals) + 1) * PPM <= allowance
    }

    /// Retries the budget would allow right now.
    pub fn available(&self, now: Instant) -> u64 {
        let (d, w) = self.totals(self.epoch(now));
        let allowance =
            (u128::from(self.floor) * PPM + u128::from(self.ratio_ppm) * u128::from(d)) / PPM;
        u64::try_from(allowance)
            .unwrap_or(u64::MAX)
            .saturating_sub(w)
    }
}

impl RetryBudget for RatioBudget {
    fn deposit(&self, now: Instant) {
        let e = self.epoch(now);
        self.slots[(e % SLOTS) as usize].deposits.incr(e);
    }

    fn withdraw(&self, now: Instant) -> bool {
        // Check and count must be one step, or concurrent retries could all see the same
        // balance and overdraw it.
        let _guard = self.withdraw.lock().unwrap_or_else(|p| p.into_inner());
        let e = self.epoch(now);
        let (d, w) = self.totals(e);
        if !self.allows(d, w) {
            return false;
        }
        self.slots[(e % SLOTS) as usize].withdrawals.incr(e);
        true
    }

    fn refund(&self, withdrawn_at: Instant, _next: &crate::attempt::AttemptContext) {
        let e = self.epoch(withdrawn_at);
        self.slots[(e % SLOTS) as usize].withdrawals.decr(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn the_ratio_is_never_exceeded_and_a_decimal_ratio_is_kept() {
        let allowed = |ratio: f64, calls: usize| {
            let b = RatioBudget::new(Duration::from_secs(10), 0, ratio).unwrap();
            let now = Instant::now();
            for _ in 0..calls {
                b.deposit(now);
            }
            (0..calls).filter(|_| b.withdraw(now)).count()
        };
        // 60 × 0.116666549… = 6.99999…: six, not seven.
        assert_eq!(allowed(0.116_666_549_709_315, 60), 6);
        // 0.29 is a hair under 0.29 as a double: still 29 of 100.
        assert_eq!(allowed(0.29, 100), 29);
        assert_eq!(allowed(0.2, 1000), 200);
    }

    /// A slot counter still holding an epoch from before the epoch counter wrapped (a long
    /// idle spell: 2^31 slot periods, 25 days with 1 ms slots) reads as "newer" by
    /// wrapping arithmetic: it is reset, not left to drop every event (withdrawals
    /// dropped read as none, and a floor then allowed every retry). One moved on by a
    /// ring, by a caller racing ahead, is still left alone.
    #[test]
    fn a_slot_from_before_the_epoch_wrapped_is_reset() {
        let c = SlotCounter::default();
        let old = 3_000_000_000u32;
        c.incr(old);
        c.incr(old);
        assert_eq!(c.count_within(old, SLOTS), 2);
        // 2^31 + 10 epochs later (the same slot), wrapped past u32::MAX.
        let now = old.wrapping_add((1 << 31) + 10);
        c.incr(now);
        assert_eq!(c.count_within(now, SLOTS), 1);
        // A caller a ring behind: dropped, the newer count kept.
        c.incr(now - SLOTS);
        assert_eq!(c.count_within(now, SLOTS), 1);
    }

    #[test]
    fn floor_allows_retries_without_traffic() {
        let b = RatioBudget::new(Duration::from_secs(10), 1, 0.0).unwrap();
        let now = Instant::now();
        for _ in 0..10 {
            assert!(b.withdraw(now));
        }
        assert!(!b.withdraw(now));
    }

    #[tokio::test(start_paused = true)]
    async fn window_slides() {
        let b = RatioBudget::new(Duration::from_secs(10), 0, 0.5).unwrap();
        for _ in 0..4 {
            b.deposit(Instant::now());
        }
        assert!(b.withdraw(Instant::now()));
        assert!(b.withdraw(Instant::now()));
        assert!(!b.withdraw(Instant::now()));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.withdraw(Instant::now()), "still within the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.available(Instant::now()), 0);
        for _ in 0..2 {
            b.deposit(Instant::now());
        }
        assert!(
            b.withdraw(Instant::now()),
            "old calls and retries expired together"
        );
        assert!(!b.withdraw(Instant::now()));
    }

    #[test]
    fn refuses_bad_configuration() {
        assert_eq!(
            RatioBudget::new(Duration::ZERO, 1, 0.2).unwrap_err().field,
            "ttl"
        );
        assert_eq!(
            RatioBudget::new(Duration::from_secs(1), 1, -0.2)
                .unwrap_err()
                .field,
            "ratio"
        );
        assert_eq!(
            RatioBudget::new(Duration::from_secs(1), 1, f64::NAN)
                .unwrap_err()
                .field,
            "ratio"
        );
    }

    #[test]
    fn concurrent_retries_never_overdraw() {
        let b = Arc::new(RatioBudget::new(Duration::from_secs(60), 0, 0.2).unwrap());
        let now = Instant::now();
        for _ in 0..1000 {
            b.deposit(now);
        }
        let granted: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let b = Arc::clone(&b);
                    s.spawn(move || (0..500).filter(|_| b.withdraw(now)).count())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 200);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Call,
        Retry,
        Wait(u64),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                6 => Just(Op::Call),
                3 => Just(Op::Retry),
                1 => (0u64..3_000).prop_map(Op::Wait),
            ],
            0..400,
        )
    }

    proptest! {
        /// At every retry it grants, retries in the trailing window stay within
        /// `floor + ratio × calls` — checked against a plain log of events.
        #[test]
        fn never_exceeds_ratio_plus_floor(
            ops in ops(), floor_per_sec in 0u32..3, ratio in 0.0f64..1.0,
        ) {
            let ttl = Duration::from_secs(10);
            let b = RatioBudget::new(ttl, floor_per_sec, ratio).unwrap();
            let origin = b.origin;
            let slot = ttl / 10;
            let mut t = Duration::ZERO;
            let mut calls: Vec<u128> = vec![];
            let mut retries: Vec<u128> = vec![];
            let floor = u64::from(floor_per_sec) * 10;
            for op in ops {
                match op {
                    Op::Wait(ms) => t += Duration::from_millis(ms),
                    Op::Call => {
                        b.deposit(origin + t);
                        calls.push(t.as_nanos() / slot.as_nanos());
                    }
                    Op::Retry => {
                        if b.withdraw(origin + t) {
                            let s = t.as_nanos() / slot.as_nanos();
                            retries.push(s);
                            let in_window = |x: &&u128| s - **x < 10;
                            let r = retries.iter().filter(in_window).count() as f64;
                            let c = calls.iter().filter(in_window).count() as f64;
                            prop_assert!(
                                r <= floor as f64 + ratio * c + 1e-6,
                                "{r} retries for {c} calls at ratio {ratio} floor {floor}"
                            );
                        }
                    }
                }
            }
        }
    }
}
