//! Backoff curves and jitter.

use std::time::Duration;

use crate::error::{Check, ConfigError};

const CHECK: Check = Check::new("retry");

/// How the wait before a retry grows with the number of retries.
///
/// Built with the checked constructors; every curve is capped, and [`Jitter`] never takes
/// a delay above the cap either.
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// The same wait before every retry (zero makes immediate retries).
    Constant {
        /// The wait.
        delay: Duration,
    },
    /// `initial + step × (n - 1)` before retry `n`, capped at `max`.
    Linear {
        /// The wait before the first retry.
        initial: Duration,
        /// Added per retry.
        step: Duration,
        /// The cap.
        max: Duration,
    },
    /// `initial × multiplier^(n - 1)` before retry `n`, capped at `max`.
    Exponential {
        /// The wait before the first retry.
        initial: Duration,
        /// The growth factor, at least 1.
        multiplier: f64,
        /// The cap.
        max: Duration,
    },
    /// AWS's "decorrelated jitter": `min(max, uniform(base, 3 × previous wait))`.
    ///
    /// Random by construction, so it is normally used with [`Jitter::None`].
    DecorrelatedJitter {
        /// The smallest wait and the first one's lower bound.
        base: Duration,
        /// The cap.
        max: Duration,
    },
}

impl Backoff {
    /// The same wait before every retry.
    ///
    /// # Errors
    /// A wait beyond [`crate::MAX_CONFIG_DURATION`].
    pub fn constant(delay: Duration) -> Result<Self, ConfigError> {
        let b = Backoff::Constant { delay };
        b.check()?;
        Ok(b)
    }

    /// A wait growing by `step` per retry from `initial`, capped at `max`.
    ///
    /// # Errors
    /// `initial` above `max`; a duration beyond [`crate::MAX_CONFIG_DURATION`].
    pub fn linear(initial: Duration, step: Duration, max: Duration) -> Result<Self, ConfigError> {
        let b = Backoff::Linear { initial, step, max };
        b.check()?;
        Ok(b)
    }

    /// A wait multiplied by `multiplier` per retry from `initial`, capped at `max`.
    ///
    /// # Errors
    /// `multiplier` below 1, NaN or infinite; `initial` above `max`; a duration beyond
    /// [`crate::MAX_CONFIG_DURATION`].
    pub fn exponential(
        initial: Duration,
        multiplier: f64,
        max: Duration,
    ) -> Result<Self, ConfigError> {
        let b = Backoff::Exponential {
            initial,
            multiplier,
            max,
        };
        b.check()?;
        Ok(b)
    }

    /// Decorrelated jitter between `base` and `max`.
    ///
    /// # Errors
    /// `base` zero (the curve would never leave zero) or above `max`; `max` beyond
    /// [`crate::MAX_CONFIG_DURATION`].
    pub fn decorrelated_jitter(base: Duration, max: Duration) -> Result<Self, ConfigError> {
        let b = Backoff::DecorrelatedJitter { base, max };
        b.check()?;
        Ok(b)
    }

    /// Checks a curve as its constructor does (the variants are public, so a curve may be
    /// built without one; [`RetryRules`](super::RetryRules)' builder checks it again).
    ///
    /// # Errors
    /// What the curve's constructor refuses.
    pub fn check(&self) -> Result<(), ConfigError> {
        let below_max = |field: &'static str, d: Duration, max: Duration| {
            if d > max {
                return Err(CHECK.err(field, format!("{d:?} is above max {max:?}")));
            }
            Ok(())
        };
        match *self {
            Backoff::Constant { delay } => CHECK.bounded("delay", delay),
            Backoff::Linear { initial, step, max } => {
                CHECK.bounded("max", max)?;
                CHECK.bounded("step", step)?;
                below_max("initial", initial, max)
            }
            Backoff::Exponential {
                initial,
                multiplier,
                max,
            } => {
                CHECK.in_range("multiplier", multiplier, 1.0, 1e6)?;
                CHECK.bounded("max", max)?;
                below_max("initial", initial, max)
            }
            Backoff::DecorrelatedJitter { base, max } => {
                CHECK.positive("base", base)?;
                CHECK.bounded("max", max)?;
                below_max("base", base, max)
            }
        }
    }

    /// The cap no delay of this curve exceeds.
    pub fn max(&self) -> Duration {
        match self {
            Backoff::Constant { delay } => *delay,
            Backoff::Linear { max, .. }
            | Backoff::Exponential { max, .. }
            | Backoff::DecorrelatedJitter { max, .. } => *max,
        }
    }

    /// The wait before retry `retry` (1 = the first retry), before jitter.
    ///
    /// `previous` is the wait before the previous attempt (decorrelated jitter grows from
    /// it) and `u` a uniform number in `[0, 1)` (only decorrelated jitter draws).
    pub fn delay(&self, retry: u32, previous: Duration, u: f64) -> Duration {
        let n = retry.max(1);
        match *self {
            Backoff::Constant { delay } => delay,
            Backoff::Linear { initial, step, max } => {
                initial.saturating_add(step.saturating_mul(n - 1)).min(max)
            }
            Backoff::Exponential {
                initial,
                multiplier,
                max,
            } => {
                // A zero start stays zero however far the curve goes (0 × ∞ is NaN, which
                // would read as the cap).
                if initial.is_zero() {
                    return Duration::ZERO;
                }
                let exp = i32::try_from(n - 1).unwrap_or(i32::MAX);
                let secs = initial.as_secs_f64() * multiplier.powi(exp);
                secs_capped(secs, max)
            }
            Backoff::DecorrelatedJitter { base, max } => {
                let lo = base.as_secs_f64();
                let hi = (previous.max(base).as_secs_f64() * 3.0).max(lo);
                secs_capped(lo + (hi - lo) * u, max)
            }
        }
    }
}

/// `secs` as a duration, or `max` when it is larger (or not a number).
fn secs_capped(secs: f64, max: Duration) -> Duration {
    if secs.is_finite() && secs < max.as_secs_f64() {
        Duration::try_from_secs_f64(secs.max(0.0))
            .unwrap_or(max)
            .min(max)
    } else {
        max
    }
}

/// How randomness spreads the waits of many clients so that they do not retry in
/// lockstep (Brooker, "Exponential Backoff and Jitter", 2015).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// The curve's wait exactly.
    None,
    /// `uniform(0, wait)`: the fewest calls under contention.
    Full,
    /// `wait / 2 + uniform(0, wait / 2)`.
    Equal,
    /// `wait × (1 ± factor)`, uniformly (the design sketch's `jitterFactor = 0.1`).
    Proportional(f64),
}

impl Jitter {
    /// `wait × (1 ± factor)`.
    ///
    /// # Errors
    /// `factor` outside `[0, 1]` or not a number.
    pub fn proportional(factor: f64) -> Result<Self, ConfigError> {
        CHECK.in_range("jitter", factor, 0.0, 1.0)?;
        Ok(Jitter::Proportional(factor))
    }

    /// Applies the jitter to `wait` with a uniform `u` in `[0, 1)`; never above `cap`.
    pub fn apply(&self, wait: Duration, u: f64, cap: Duration) -> Duration {
        let u = u.clamp(0.0, 1.0);
        let w = wait.as_secs_f64();
        let out = match *self {
            Jitter::None => return wait.min(cap),
            Jitter::Full => w * u,
            Jitter::Equal => w / 2.0 + w / 2.0 * u,
            Jitter::Proportional(f) => w * (1.0 + f * (2.0 * u - 1.0)),
        };
        secs_capped(out, cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn curves() {
        let e = Backoff::exponential(100 * MS, 2.0, 10_000 * MS).unwrap();
        let got: Vec<_> = (1..=9).map(|n| e.delay(n, Duration::ZERO, 0.5)).collect();
        assert_eq!(
            got,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000].map(|m| m * MS)
        );
        let l = Backoff::linear(100 * MS, 50 * MS, 220 * MS).unwrap();
        assert_eq!(l.delay(1, Duration::ZERO, 0.0), 100 * MS);
        assert_eq!(l.delay(2, Duration::ZERO, 0.0), 150 * MS);
        assert_eq!(l.delay(3, Duration::ZERO, 0.0), 200 * MS);
        assert_eq!(l.delay(4, Duration::ZERO, 0.0), 220 * MS);
        let c = Backoff::constant(Duration::ZERO).unwrap();
        assert_eq!(c.delay(5, Duration::ZERO, 0.9), Duration::ZERO);
        let d = Backoff::decorrelated_jitter(100 * MS, 1000 * MS).unwrap();
        assert_eq!(d.delay(1, Duration::ZERO, 0.0), 100 * MS);
        assert_eq!(d.delay(2, 200 * MS, 0.5), 350 * MS);
        assert_eq!(d.delay(9, 900 * MS, 0.99), 1000 * MS);
    }

    #[test]
    fn huge_exponents_saturate_at_the_cap() {
        let e = Backoff::exponential(MS, 10.0, Duration::from_secs(30)).unwrap();
        assert_eq!(
            e.delay(u32::MAX, Duration::ZERO, 0.0),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn jitter_kinds() {
        let w = 1000 * MS;
        let cap = 10_000 * MS;
        assert_eq!(Jitter::None.apply(w, 0.3, cap), w);
        assert_eq!(Jitter::Full.apply(w, 0.25, cap), 250 * MS);
        assert_eq!(Jitter::Equal.apply(w, 0.5, cap), 750 * MS);
        assert_eq!(Jitter::Proportional(0.1).apply(w, 0.0, cap), 900 * MS);
        assert_eq!(Jitter::Proportional(0.1).apply(w, 1.0, cap), 1100 * MS);
        assert_eq!(Jitter::Proportional(0.1).apply(w, 1.0, w), w, "capped");
    }

    #[test]
    fn refuses_bad_configuration() {
        assert_eq!(
            Backoff::exponential(MS, 0.5, MS).unwrap_err().field,
            "multiplier"
        );
        assert_eq!(
            Backoff::exponential(MS, f64::NAN, MS).unwrap_err().field,
            "multiplier"
        );
        assert_eq!(
            Backoff::exponential(2 * MS, 2.0, MS).unwrap_err().field,
            "initial"
        );
        assert_eq!(
            Backoff::linear(2 * MS, MS, MS).unwrap_err().field,
            "initial"
        );
        assert_eq!(
            Backoff::decorrelated_jitter(Duration::ZERO, MS)
                .unwrap_err()
                .field,
            "base"
        );
        assert_eq!(Jitter::proportional(-0.1).unwrap_err().field, "jitter");
        assert_eq!(
            Jitter::proportional(f64::INFINITY).unwrap_err().field,
            "jitter"
        );
    }

    fn millis(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn any_backoff() -> impl Strategy<Value = Backoff> {
        let ms = || 0u64..100_000;
        prop_oneof![
            ms().prop_map(|d| Backoff::constant(millis(d)).unwrap()),
            (ms(), ms(), ms()).prop_map(|(a, s, m)| {
                Backoff::linear(millis(a.min(m)), millis(s), millis(m)).unwrap()
            }),
            (ms(), 1.0f64..20.0, ms()).prop_map(|(a, f, m)| {
                Backoff::exponential(millis(a.min(m)), f, millis(m)).unwrap()
            }),
            (1u64..100_000, ms()).prop_map(|(b, m)| {
                Backoff::decorrelated_jitter(millis(b), millis(b.max(m))).unwrap()
            }),
        ]
    }

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            (0.0f64..=1.0).prop_map(Jitter::Proportional),
        ]
    }

    /// A curve that starts at zero stays there (past the 1,100th retry, 0 × ∞ read as the
    /// cap: a 10 s wait from a curve of zeros).
    #[test]
    fn an_exponential_from_zero_stays_at_zero() {
        let e = Backoff::exponential(Duration::ZERO, 2.0, Duration::from_secs(10)).unwrap();
        for n in [1, 2, 60, 1_100, u32::MAX] {
            assert_eq!(e.delay(n, Duration::ZERO, 0.5), Duration::ZERO, "retry {n}");
        }
    }

    proptest! {
        #[test]
        fn backoff_never_exceeds_its_cap(
            b in any_backoff(), j in any_jitter(), n in 0u32..10_000,
            prev in 0u64..10_000_000, u in 0.0f64..1.0, v in 0.0f64..1.0,
        ) {
            let cap = b.max();
            let d = b.delay(n, Duration::from_micros(prev), u);
            prop_assert!(d <= cap, "{d:?} > {cap:?}");
            prop_assert!(j.apply(d, v, cap) <= cap);
        }

        #[test]
        fn full_jitter_stays_between_zero_and_the_wait(
            w in 0u64..100_000_000, u in 0.0f64..1.0,
        ) {
            let w = Duration::from_micros(w);
            let d = Jitter::Full.apply(w, u, Duration::MAX);
            prop_assert!(d <= w);
        }

        #[test]
        fn exponential_is_monotonic(a in 1u64..1000, f in 1.0f64..4.0, m in 1000u64..100_000, n in 1u32..60) {
            let b = Backoff::exponential(millis(a), f, millis(m)).unwrap();
            prop_assert!(b.delay(n, Duration::ZERO, 0.0) <= b.delay(n + 1, Duration::ZERO, 0.0));
        }
    }
}
