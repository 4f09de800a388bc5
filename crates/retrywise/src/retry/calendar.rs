//! The retries already scheduled at each target, so that the next one lands where the load
//! is lightest.
//!
//! A fleet of callers that saw the same failure would, deciding alone, all find the same
//! moments worth a retry — after an outage, the first second it is over — and retry into
//! it together: each retry is worth its load alone, not with a thousand others. A
//! [`RetryCalendar`] remembers, per target, how many retries were booked into each slot
//! of the coming minute, and estimates the load the target is offered — its calls' first
//! attempts — from the failures it was told of (first attempts that failed, per second,
//! over the failure rate). [`ModelDecider`] asks it for the load a wait would land in — the
//! retries booked in that slot over the first attempts offered in one — and counts an
//! attempt dearer by that much, so the retries
//! of a crowd spread over the waits still worth one, and those that would only crowd a
//! moment already full are not made.
//!
//! [`ModelDecider`]: super::ModelDecider

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The length of one slot of a [`RetryCalendar`].
pub const SLOT: Duration = Duration::from_millis(250);

/// Slots held per target: a minute ahead, and the last second of failures behind.
const SLOTS: usize = 256;

/// How far ahead a booking counts (beyond it a wait is taken to land in no load).
pub const HORIZON: Duration = Duration::from_secs(60);

/// Slots over which the failures that estimate the offered rate are counted (one second).
const RATE_SLOTS: u64 = 4;

/// The lowest failure rate the attempt-rate estimate divides by.
const MIN_FAILURE_RATE: f64 = 0.01;

/// Targets held before the idle ones are dropped.
const MAX_TARGETS: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The slot's number since the calendar's origin (a slot whose tag differs is empty).
    tag: u64,
    /// Retries booked to start within it.
    booked: u32,
    /// Failures of first attempts told of within it.
    first_failed: u32,
}

#[derive(Debug)]
struct Target {
    slots: Box<[Slot; SLOTS]>,
    /// The latest slot anything was written to.
    latest: u64,
}

impl Target {
    fn new() -> Self {
        Self {
            slots: Box::new([Slot::default(); SLOTS]),
            latest: 0,
        }
    }

    fn slot(&mut self, n: u64) -> &mut Slot {
        let s = &mut self.slots[(n % SLOTS as u64) as usize];
        if s.tag != n {
            *s = Slot {
                tag: n,
                ..Slot::default()
            };
        }
        self.latest = self.latest.max(n);
        s
    }

    fn get(&self, n: u64) -> Slot {
        let s = self.slots[(n % SLOTS as u64) as usize];
        if s.tag == n { s } else { Slot::default() }
    }
}

/// The slot a retry `wait` after `from` (nanoseconds from the calendar's origin) starts
/// in; none beyond the horizon.
fn slot_after(from: u64, wait: Duration) -> Option<u64> {
    (wait < HORIZON).then(|| from.saturating_add(wait.as_nanos() as u64) / SLOT.as_nanos() as u64)
}

/// Per target, the retries booked into each quarter second of the coming minute and the
/// first attempts that failed in the last second (see the [module](self)); shared by every decider that
/// should spread its retries with the others (clones of a [`ModelDecider`] share one, and
/// a service shares one across its requests).
///
/// ```
/// use std::time::Duration;
/// use retrywise::retry::RetryCalendar;
///
/// let calendar = RetryCalendar::new();
/// let now = tokio::time::Instant::now();
/// // 50 calls failed their first attempt this second at a target failing every call:
/// // 50 calls a second.
/// for _ in 0..49 {
///     drop(calendar.after_failure("api", now, true, Some(1.0)));
/// }
/// let mut view = calendar.after_failure("api", now, true, Some(1.0));
/// assert!((view.offered_rate() - 50.0).abs() < 1e-9);
/// assert_eq!(view.load(Duration::from_secs(2)), 0.0);
/// for _ in 0..25 {
///     view.book(Duration::from_secs(2));
/// }
/// // 25 retries in a quarter second where 12.5 calls arrive: the load tripled.
/// assert!((view.load(Duration::from_secs(2)) - 2.0).abs() < 1e-9);
/// ```
///
/// [`ModelDecider`]: super::ModelDecider
#[derive(Debug)]
pub struct RetryCalendar {
    origin: Instant,
    targets: Mutex<Targets>,
}

/// The targets' slots, and where each target's are (a decision hashes its target once).
#[derive(Debug, Default)]
struct Targets {
    index: HashMap<Arc<str>, usize>,
    slots: Vec<Target>,
    /// The slot of the last `drop_idle` plus one (0: never): at most one a slot, so that
    /// a full calendar of busy targets does not rebuild itself on every new target's
    /// failure, under the lock every decision takes.
    dropped_in: u64,
}

impl Targets {
    /// Keeps only the targets written to within the last lap of the ring before slot `n`
    /// (at most once a slot: a later call in the same slot finds nothing more to drop).
    fn drop_idle(&mut self, n: u64) {
        if self.dropped_in == n + 1 {
            return;
        }
        self.dropped_in = n + 1;
        let live = |t: &Target| t.latest + SLOTS as u64 > n;
        let old = std::mem::take(&mut self.slots);
        let mut names: Vec<(Arc<str>, usize)> = self.index.drain().collect();
        names.sort_unstable_by_key(|(_, i)| *i);
        for ((name, _), t) in names.into_iter().zip(old) {
            if live(&t) {
                self.index.insert(name, self.slots.len());
                self.slots.push(t);
            }
        }
    }
}

impl Default for RetryCalendar {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryCalendar {
    /// An empty calendar, its slots counted from now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            targets: Mutex::new(Targets::default()),
        }
    }

    /// Nanoseconds from the origin to `at` (`u64` holds 584 years).
    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64
    }

    fn slot_of(&self, at: Instant) -> u64 {
        self.nanos(at) / SLOT.as_nanos() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Targets> {
        // A panic elsewhere while holding the lock leaves counts, never a broken invariant.
        self.targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells of one failure at `target` at `now` (`first`: of a call's first attempt), and
    /// opens the view a decision about it reads: the load each wait would land in, and the
    /// booking of the wait chosen. `failure_rate` is the target's current failure rate: the
    /// offered rate (calls per second) is estimated as the last second's failed first
    /// attempts (this one included) over it, at least 1 %; without one,
    /// loads read as zero.
    pub fn after_failure(
        &self,
        target: &str,
        now: Instant,
        first: bool,
        failure_rate: Option<f64>,
    ) -> CalendarView<'_> {
        let n = self.slot_of(now);
        let since_origin = self.nanos(now);
        let mut all = self.lock();
        let at = match all.index.get(target) {
            Some(i) => *i,
            None => {
                if all.slots.len() >= MAX_TARGETS {
                    all.drop_idle(n);
                }
                if all.slots.len() >= MAX_TARGETS {
                    // Memory stays bounded: a new target beyond the busy ones is weighed
                    // as if alone (no rate known, nothing booked).
                    return CalendarView {
                        all,
                        at: None,
                        since_origin,
                        per_slot: 0.0,
                    };
                }
                let i = all.slots.len();
                all.slots.push(Target::new());
                all.index.insert(Arc::from(target), i);
                i
            }
        };
        let t = &mut all.slots[at];
        if first {
            let s = t.slot(n);
            s.first_failed = s.first_failed.saturating_add(1);
        }
        let failures: u64 = (n.saturating_sub(RATE_SLOTS - 1)..=n)
            .map(|k| u64::from(t.get(k).first_failed))
            .sum();
        let per_slot = failure_rate
            .filter(|f| f.is_finite())
            .map(|f| failures as f64 / f.clamp(MIN_FAILURE_RATE, 1.0) / RATE_SLOTS as f64)
            .unwrap_or(0.0);
        CalendarView {
            all,
            at: Some(at),
            since_origin,
            per_slot,
        }
    }

    /// Moves a retry booked at `target` by a decision at `decided_at` to start after
    /// `booked`: to start after `sent` instead, or (`None`) nowhere — the retry will not
    /// be made (a budget or the throttle refused it) — so that no other decision weighs
    /// the load of a retry nobody sends. A booking the calendar never made (beyond the
    /// horizon, or with no room for the target) is not there to move; a slot whose
    /// bookings were all moved away stays at zero.
    pub fn rebook(
        &self,
        target: &str,
        decided_at: Instant,
        booked: Duration,
        sent: Option<Duration>,
    ) {
        let from = self.nanos(decided_at);
        let slot = |wait| slot_after(from, wait);
        let mut all = self.lock();
        let Some(i) = all.index.get(target).copied() else {
            return;
        };
        let t = &mut all.slots[i];
        if let Some(n) = slot(booked)
            && t.get(n).booked > 0
        {
            let s = t.slot(n);
            s.booked -= 1;
        }
        if let Some(n) = sent.and_then(slot) {
            let s = t.slot(n);
            s.booked = s.booked.saturating_add(1);
        }
    }

    /// The retries booked at `target` to start within the slot holding `at`.
    pub fn booked(&self, target: &str, at: Instant) -> u32 {
        let n = self.slot_of(at);
        let all = self.lock();
        all.index
            .get(target)
            .map_or(0, |i| all.slots[*i].get(n).booked)
    }
}

/// One decision's view of a [`RetryCalendar`] (it holds the calendar's lock: keep it for
/// one decision only).
pub struct CalendarView<'a> {
    all: std::sync::MutexGuard<'a, Targets>,
    /// Where the target's slots are (none when the calendar had no room for it).
    at: Option<usize>,
    /// The decision's moment, in nanoseconds from the calendar's origin.
    since_origin: u64,
    /// Calls (first attempts) the target is offered per slot (estimated).
    per_slot: f64,
}

impl std::fmt::Debug for CalendarView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalendarView")
            .field("target", &self.at)
            .field("per_slot", &self.per_slot)
            .finish()
    }
}

impl CalendarView<'_> {
    /// The calls per second the target is offered (their first attempts), as estimated.
    pub fn offered_rate(&self) -> f64 {
        self.per_slot / SLOT.as_secs_f64()
    }

    fn slot_after(&self, wait: Duration) -> Option<u64> {
        slot_after(self.since_origin, wait)
    }

    /// The retries booked where a retry after `wait` would start, over the first attempts
    /// the target is offered in a slot: 0 where none are booked (or nothing is known of
    /// the target's rate), 1 where they double its load.
    pub fn load(&self, wait: Duration) -> f64 {
        let mut out = [0.0];
        self.loads(&[wait], &mut out);
        out[0]
    }

    /// [`load`](Self::load) of each of `waits` into `out` (one look-up for them all).
    pub fn loads(&self, waits: &[Duration], out: &mut [f64]) {
        let target = self
            .at
            .map(|i| &self.all.slots[i])
            .filter(|_| self.per_slot > 0.0);
        for (w, o) in waits.iter().zip(out.iter_mut()) {
            *o = match (target, self.slot_after(*w)) {
                (Some(t), Some(n)) => f64::from(t.get(n).booked) / self.per_slot,
                _ => 0.0,
            };
        }
    }

    /// Books a retry to start after `wait`.
    pub fn book(&mut self, wait: Duration) {
        let Some(n) = self.slot_after(wait) else {
            return;
        };
        let Some(i) = self.at else {
            return;
        };
        let s = self.all.slots[i].slot(n);
        s.booked = s.booked.saturating_add(1);
    }

    /// Takes back one retry booked to start now: in the current slot, or - none there -
    /// the one before (a caller asking again when its wait is over asks a round trip, and
    /// its timer's lateness, after the slot its retry was booked in). Bookings carry no
    /// name: where several are due, one is taken, whoever's.
    pub fn unbook_due(&mut self) {
        let (Some(n), Some(i)) = (self.slot_after(Duration::ZERO), self.at) else {
            return;
        };
        let t = &mut self.all.slots[i];
        for k in [n, n.saturating_sub(1)] {
            if t.get(k).booked > 0 {
                t.slot(k).booked -= 1;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever failures were told and retries booked, and whenever: every load is a
        /// finite number of at least zero, a booking within the horizon adds exactly one
        /// retry over the calls offered in a slot to the load of its wait, and one beyond
        /// the horizon (or with no rate known) adds nothing.
        #[test]
        fn a_booking_adds_exactly_one_retry_where_it_lands(
            mut events in proptest::collection::vec(
                (0u64..120_000, any::<bool>(), proptest::option::of(0.0f64..=1.0), 0u64..70_000),
                1..150,
            ),
        ) {
            events.sort_by_key(|e| e.0);
            let c = RetryCalendar::new();
            let t0 = Instant::now();
            for (at_ms, first, rate, wait_ms) in events {
                let now = t0 + Duration::from_millis(at_ms);
                let wait = Duration::from_millis(wait_ms);
                let mut v = c.after_failure("t", now, first, rate);
                let per_slot = v.offered_rate() * SLOT.as_secs_f64();
                let before = v.load(wait);
                prop_assert!(before.is_finite() && before >= 0.0, "{before}");
                v.book(wait);
                let after = v.load(wait);
                if wait < HORIZON && per_slot > 0.0 {
                    prop_assert!((after - before - 1.0 / per_slot).abs() <= 1e-9 * (1.0 + after));
                } else {
                    prop_assert_eq!(after, before);
                }
            }
        }

        /// Whatever retries are booked, then kept, called off or moved, in any order: each
        /// slot holds exactly the retries that will start in it (within the horizon).
        #[test]
        fn a_slot_holds_the_retries_that_will_start_in_it(
            plans in proptest::collection::vec(
                (0u64..3_000, 0u64..70_000, proptest::option::of(proptest::option::of(0u64..70_000))),
                1..100,
            ),
            order in any::<proptest::sample::Index>(),
        ) {
            let c = RetryCalendar::new();
            let t0 = Instant::now();
            let ms = Duration::from_millis;
            // Book every retry (slots within one lap of the ring: none is reused).
            for (at, wait, _) in &plans {
                c.after_failure("t", t0 + ms(*at), true, Some(1.0)).book(ms(*wait));
            }
            // Then call off or move some, starting anywhere in the list.
            let start = order.index(plans.len());
            let mut expected = std::collections::BTreeMap::<u64, u32>::new();
            for (at, wait, change) in plans.iter().cycle().skip(start).take(plans.len()) {
                let sent = match change {
                    None => Some(*wait),
                    Some(to) => {
                        c.rebook("t", t0 + ms(*at), ms(*wait), to.map(ms));
                        *to
                    }
                };
                if let Some(w) = sent.filter(|w| ms(*w) < HORIZON) {
                    *expected.entry(c.slot_of(t0 + ms(*at) + ms(w))).or_default() += 1;
                }
            }
            for n in 0..SLOTS as u64 {
                let at = c.origin + SLOT * n as u32;
                prop_assert_eq!(c.booked("t", at), expected.get(&n).copied().unwrap_or(0), "slot {}", n);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_called_off_or_moved_leaves_its_slot() {
        let c = RetryCalendar::new();
        let now = Instant::now();
        let s = Duration::from_secs;
        for _ in 0..2 {
            c.after_failure("a", now, true, Some(1.0)).book(s(1));
        }
        // One is refused by a budget: one is left.
        c.rebook("a", now, s(1), None);
        assert_eq!(c.booked("a", now + s(1)), 1);
        // The other is explored to three seconds.
        c.rebook("a", now, s(1), Some(s(3)));
        assert_eq!(c.booked("a", now + s(1)), 0);
        assert_eq!(c.booked("a", now + s(3)), 1);
        // Nothing left to call off: the slot stays empty; an unknown target is no one's.
        c.rebook("a", now, s(1), None);
        c.rebook("b", now, s(1), Some(s(2)));
        assert_eq!(c.booked("a", now + s(1)), 0);
        assert_eq!(c.booked("b", now + s(2)), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn bookings_expire_as_their_slot_passes() {
        let c = RetryCalendar::new();
        let now = Instant::now();
        let mut v = c.after_failure("a", now, true, Some(0.5));
        v.book(Duration::from_secs(1));
        drop(v);
        assert_eq!(c.booked("a", now + Duration::from_secs(1)), 1);
        assert_eq!(c.booked("b", now + Duration::from_secs(1)), 0);
        // A slot reused a lap later starts empty.
        let lap = SLOT * SLOTS as u32;
        assert_eq!(c.booked("a", now + Duration::from_secs(1) + lap), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_offered_rate_is_first_failures_over_the_failure_rate() {
        let c = RetryCalendar::new();
        let now = Instant::now();
        for _ in 0..9 {
            drop(c.after_failure("a", now, true, None));
        }
        // Ten first attempts failed this second at a 10 % failure rate: 100 calls a second.
        assert!((c.after_failure("a", now, true, Some(0.1)).offered_rate() - 100.0).abs() < 1e-9);
        // A retry's failure is not a call offered.
        assert!((c.after_failure("a", now, false, Some(0.1)).offered_rate() - 100.0).abs() < 1e-9);
        // No failure rate known: no load is estimated.
        let v = c.after_failure("a", now, true, None);
        assert_eq!(v.offered_rate(), 0.0);
        assert_eq!(v.load(Duration::ZERO), 0.0);
        drop(v);
        // A second later only the new failure counts.
        tokio::time::advance(Duration::from_secs(1)).await;
        let v = c.after_failure("a", Instant::now(), true, Some(0.1));
        assert!((v.offered_rate() - 10.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn it_holds_at_most_max_targets_and_makes_room_from_idle_ones() {
        let c = RetryCalendar::new();
        let now = Instant::now();
        for i in 0..MAX_TARGETS {
            drop(c.after_failure(&format!("t{i}"), now, true, Some(1.0)));
        }
        // All busy: one more is weighed as if alone, and not remembered.
        let mut v = c.after_failure("new", now, true, Some(1.0));
        assert_eq!(v.offered_rate(), 0.0);
        v.book(Duration::from_secs(1));
        drop(v);
        assert_eq!(c.booked("new", now + Duration::from_secs(1)), 0);
        assert_eq!(c.lock().slots.len(), MAX_TARGETS);
        // One of them books a retry shortly before the others have been idle a lap.
        let later = now + SLOT * SLOTS as u32;
        let mut v = c.after_failure("t7", later - SLOT * 8, true, Some(1.0));
        v.book(Duration::from_secs(10));
        drop(v);
        // A lap of the ring later the others are idle, and make room.
        let mut v = c.after_failure("new", later, true, Some(1.0));
        assert!(v.offered_rate() > 0.0);
        v.book(Duration::from_secs(1));
        drop(v);
        assert_eq!(c.booked("new", later + Duration::from_secs(1)), 1);
        assert_eq!(c.lock().slots.len(), 2);
        assert_eq!(c.lock().index.len(), 2);
        // The one kept keeps its bookings.
        assert_eq!(
            c.booked("t7", later - SLOT * 8 + Duration::from_secs(10)),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waits_beyond_the_horizon_land_in_no_load() {
        let c = RetryCalendar::new();
        let now = Instant::now();
        let mut v = c.after_failure("a", now, true, Some(1.0));
        v.book(HORIZON);
        assert_eq!(v.load(HORIZON), 0.0);
        v.book(Duration::ZERO);
        assert!(v.load(Duration::ZERO) > 0.0);
    }
}
