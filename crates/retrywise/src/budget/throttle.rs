//! Client-side adaptive throttling, as in Google's SRE book ("Handling Overload").

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Check, ConfigError};
use crate::random::RandomSource;

const CHECK: Check = Check::new("adaptive_throttle");
const SLOTS: usize = 12;

/// Client-side adaptive throttling: each client tracks, over a sliding window (two
/// minutes in the SRE book), how many requests it sent and how many the backend accepted,
/// and refuses new requests locally with probability
/// `max(0, (requests - K × accepts) / (requests + 1))`.
///
/// While the backend accepts everything, nothing is refused. When it starts refusing
/// (overload answers, timeouts), the client sheds load itself — about `1 - K × accept
/// rate` of it — instead of sending requests that would be refused anyway; `K = 2` lets
/// twice as many requests through as the backend accepts. It applies to every request, not
/// only retries, which makes it effective against metastable overload.
#[derive(Debug)]
pub struct AdaptiveThrottle {
    k: f64,
    origin: Instant,
    slot_nanos: u64,
    /// `(epoch, requests, accepts)` per slot.
    slots: Mutex<[(u64, u64, u64); SLOTS]>,
    random: RandomSource,
}

impl AdaptiveThrottle {
    /// A throttle with multiplier `k` over `window`.
    ///
    /// # Errors
    /// `k` below 1 or not a number; `window` below 12 ms or above
    /// [`crate::MAX_CONFIG_DURATION`].
    pub fn new(k: f64, window: Duration) -> Result<Self, ConfigError> {
        CHECK.in_range("k", k, 1.0, 1e6)?;
        if window < Duration::from_millis(SLOTS as u64) {
            return Err(CHECK.err("window", format!("must be at least 12 ms, got {window:?}")));
        }
        CHECK.bounded("window", window)?;
        Ok(Self {
            k,
            origin: Instant::now(),
            slot_nanos: u64::try_from(window.as_nanos() / SLOTS as u128).unwrap_or(u64::MAX),
            slots: Mutex::new([(u64::MAX, 0, 0); SLOTS]),
            random: RandomSource::Thread,
        })
    }

    /// The SRE book's setting: `K = 2` over two minutes.
    pub fn sre_default() -> Self {
        Self::new(2.0, Duration::from_secs(120))
            .unwrap_or_else(|_| unreachable!("constants are valid"))
    }

    /// Draws from a generator seeded with `seed` (deterministic).
    pub fn seeded(mut self, seed: u64) -> Self {
        self.random = RandomSource::seeded(seed);
        self
    }

    fn epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
            / self.slot_nanos
    }

    /// `(requests, accepts)` over the window ending at `epoch`.
    fn totals(slots: &[(u64, u64, u64); SLOTS], epoch: u64) -> (u64, u64) {
        slots
            .iter()
            .filter(|(e, _, _)| *e <= epoch && epoch - *e < SLOTS as u64)
            .fold((0, 0), |(r, a), (_, sr, sa)| (r + sr, a + sa))
    }

    fn slot(slots: &mut [(u64, u64, u64); SLOTS], epoch: u64) -> &mut (u64, u64, u64) {
        let s = &mut slots[(epoch % SLOTS as u64) as usize];
        if s.0 != epoch {
            *s = (epoch, 0, 0);
        }
        s
    }

    /// The probability that a request is refused now.
    pub fn rejection_probability(&self, now: Instant) -> f64 {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let (requests, accepts) = Self::totals(&slots, self.epoch(now));
        ((requests as f64 - self.k * accepts as f64) / (requests as f64 + 1.0)).max(0.0)
    }

    /// Asks to send a request; counts it. `false` refuses it locally.
    pub fn admit(&self, now: Instant) -> bool {
        let p = self.rejection_probability(now);
        let epoch = self.epoch(now);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        Self::slot(&mut slots, epoch).1 += 1;
        drop(slots);
        p <= 0.0 || self.random.next_f64() >= p
    }

    /// A request sent at some point was accepted by the backend (it answered, even with a
    /// client error, rather than refusing or failing under load).
    pub fn accepted(&self, now: Instant) {
        let epoch = self.epoch(now);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        Self::slot(&mut slots, epoch).2 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_what_the_backend_refuses() {
        let t = AdaptiveThrottle::new(2.0, Duration::from_secs(120))
            .unwrap()
            .seeded(3);
        let now = Instant::now();
        // A healthy backend: nothing is refused.
        for _ in 0..1000 {
            assert!(t.admit(now));
            t.accepted(now);
        }
        assert_eq!(t.rejection_probability(now), 0.0);
        // The backend now accepts nothing: the refusal probability climbs towards 1.
        let mut refused = 0;
        for _ in 0..10_000 {
            if !t.admit(now) {
                refused += 1;
            }
        }
        let p = t.rejection_probability(now);
        assert!(p > 0.8, "{p}");
        assert!(refused > 5_000, "{refused}");
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_after_the_window() {
        let t = AdaptiveThrottle::new(2.0, Duration::from_secs(12)).unwrap();
        for _ in 0..100 {
            t.admit(Instant::now());
        }
        assert!(t.rejection_probability(Instant::now()) > 0.9);
        tokio::time::advance(Duration::from_secs(13)).await;
        assert_eq!(t.rejection_probability(Instant::now()), 0.0);
    }

    #[test]
    fn refuses_bad_configuration() {
        assert_eq!(
            AdaptiveThrottle::new(0.5, Duration::from_secs(1))
                .unwrap_err()
                .field,
            "k"
        );
        assert_eq!(
            AdaptiveThrottle::new(2.0, Duration::ZERO)
                .unwrap_err()
                .field,
            "window"
        );
        assert_eq!(
            AdaptiveThrottle::new(2.0, Duration::MAX).unwrap_err().field,
            "window"
        );
    }
}
