//! Exploration: randomizing retry delays so that recorded attempts show what waiting longer
//! or shorter would have done.

use std::time::Duration;

use crate::error::{Check, ConfigError};
use crate::random::RandomSource;

const CHECK: Check = Check::new("exploration");

/// Multiplies a decider's delay, with some probability, by a factor drawn log-uniformly
/// from `[min_factor, max_factor]` - a delay under a millisecond (none, or a jitter's
/// smallest) as if it were one, so that "at once" is compared with "a little later" too.
///
/// A model can only learn the effect of waiting from data in which the wait varied for the
/// same situation. A policy that always waits 200 ms after a 503 teaches nothing about
/// 2 s; exploration spreads the waits around each decision. The policy records both the
/// delay it waited and the one the decider planned (`planned_delay_ms`), and since the
/// factor is log-uniform with known bounds, the propensity of each wait is known.
///
/// A [`Policy`](crate::policy::Policy) never explores to before a Retry-After the decider
/// honoured: an explored wait shorter than what the server asked for is the Retry-After
/// (a decider that honours it weighs no earlier retry). A simulation with no server to
/// offend may explore there too ([`below_retry_after`](Self::below_retry_after)).
#[derive(Debug, Clone)]
pub struct Exploration {
    ln_min: f64,
    ln_max: f64,
    probability: f64,
    random: RandomSource,
    below_retry_after: bool,
}

impl Exploration {
    /// Explores with `probability`, by factors in `[min_factor, max_factor]`.
    ///
    /// # Errors
    /// Factors not positive and finite, `min_factor` above `max_factor`, a probability
    /// outside `[0, 1]`.
    pub fn new(min_factor: f64, max_factor: f64, probability: f64) -> Result<Self, ConfigError> {
        CHECK.in_range("min_factor", min_factor, 1e-6, 1e6)?;
        CHECK.in_range("max_factor", max_factor, 1e-6, 1e6)?;
        if min_factor > max_factor {
            return Err(CHECK.err(
                "min_factor",
                format!("{min_factor} is above max_factor {max_factor}"),
            ));
        }
        CHECK.in_range("probability", probability, 0.0, 1.0)?;
        Ok(Self {
            ln_min: min_factor.ln(),
            ln_max: max_factor.ln(),
            probability,
            random: RandomSource::Thread,
            below_retry_after: false,
        })
    }

    /// Explores waits shorter than a Retry-After the decider honoured too - for a
    /// simulated upstream, never a real server, which asked for the wait. Off by default.
    pub fn below_retry_after(mut self, yes: bool) -> Self {
        self.below_retry_after = yes;
        self
    }

    /// Whether it explores waits shorter than a Retry-After the decider honoured.
    pub fn explores_below_retry_after(&self) -> bool {
        self.below_retry_after
    }

    /// Draws from a generator seeded with `seed` (deterministic).
    pub fn seeded(mut self, seed: u64) -> Self {
        self.random = RandomSource::seeded(seed);
        self
    }

    /// The explored delay for a planned one (taken as at least a millisecond), or `None`
    /// when this decision is not explored.
    pub fn apply(&self, planned: Duration) -> Option<Duration> {
        if self.random.next_f64() >= self.probability {
            return None;
        }
        let ln = self.ln_min + (self.ln_max - self.ln_min) * self.random.next_f64();
        // A delay under a millisecond explores around that floor, so that "immediately" is
        // compared with "a little later" too.
        let base = planned.max(Duration::from_millis(1)).as_secs_f64();
        Duration::try_from_secs_f64(base * ln.exp()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_stay_in_bounds_and_spread() {
        let x = Exploration::new(0.25, 4.0, 1.0).unwrap().seeded(9);
        let d = Duration::from_millis(200);
        let got: Vec<f64> = (0..2000)
            .map(|_| x.apply(d).unwrap().as_secs_f64() / 0.2)
            .collect();
        assert!(got.iter().all(|f| (0.25 - 1e-9..=4.0 + 1e-9).contains(f)));
        let below = got.iter().filter(|f| **f < 1.0).count();
        assert!(
            (800..1200).contains(&below),
            "log-uniform: half below 1, got {below}"
        );
    }

    #[test]
    fn probability_zero_never_explores() {
        let x = Exploration::new(0.5, 2.0, 0.0).unwrap();
        assert!((0..100).all(|_| x.apply(Duration::from_secs(1)).is_none()));
    }

    #[test]
    fn refuses_bad_configuration() {
        assert_eq!(
            Exploration::new(0.0, 2.0, 0.5).unwrap_err().field,
            "min_factor"
        );
        assert_eq!(
            Exploration::new(3.0, 2.0, 0.5).unwrap_err().field,
            "min_factor"
        );
        assert_eq!(
            Exploration::new(0.5, f64::NAN, 0.5).unwrap_err().field,
            "max_factor"
        );
        assert_eq!(
            Exploration::new(0.5, 2.0, 1.5).unwrap_err().field,
            "probability"
        );
    }
}
