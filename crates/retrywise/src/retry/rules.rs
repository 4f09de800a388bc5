//! The rule-based retry policy: classic backoff, attempt limits, deadlines, per-attempt
//! timeouts and Retry-After.

use std::time::Duration;

use crate::attempt::AttemptContext;
use crate::error::{Check, ConfigError};
use crate::random::RandomSource;

use super::{Backoff, Decision, Jitter, RetryDecider, StopReason};

const CHECK: Check = Check::new("retry");

/// The timeout of each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttemptTimeout {
    /// Attempts are not timed out individually (the deadline still applies).
    #[default]
    None,
    /// Every attempt gets the same timeout.
    Fixed(Duration),
    /// Attempt `n` gets `first + step × (n - 1)`: later attempts may wait longer, as in
    /// the design sketch (`5 s × (attempt + 1)` is `first = step = 5 s`).
    Growing {
        /// The first attempt's timeout.
        first: Duration,
        /// Added per attempt.
        step: Duration,
    },
}

impl AttemptTimeout {
    /// The timeout of attempt `attempt` (1-based).
    pub fn for_attempt(&self, attempt: u32) -> Option<Duration> {
        match *self {
            AttemptTimeout::None => None,
            AttemptTimeout::Fixed(d) => Some(d),
            AttemptTimeout::Growing { first, step } => {
                Some(first.saturating_add(step.saturating_mul(attempt.max(1) - 1)))
            }
        }
    }
}

/// A retry policy built from rules: a backoff curve with jitter, a maximum number of
/// attempts, an overall deadline, per-attempt timeouts and the server's Retry-After.
///
/// ```
/// use std::time::Duration;
/// use retrywise::attempt::{AttemptContext, ErrorKind};
/// use retrywise::retry::{Backoff, Decision, Jitter, RetryDecider, RetryRules, StopReason};
///
/// let policy = RetryRules::builder()
///     .max_attempts(3)
///     .backoff(Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(10))?)
///     .jitter(Jitter::None)
///     .build()?;
///
/// let mut ctx = AttemptContext::first("api");
/// ctx.attempt = 2;
/// ctx.error = Some(ErrorKind::Timeout);
/// assert_eq!(policy.decide(&ctx), Decision::Retry(Duration::from_millis(100)));
/// ctx.attempt = 4;
/// assert_eq!(policy.decide(&ctx), Decision::Stop(StopReason::MaxAttempts));
/// # Ok::<(), retrywise::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RetryRules {
    max_attempts: u32,
    backoff: Backoff,
    jitter: Jitter,
    deadline: Option<Duration>,
    attempt_timeout: AttemptTimeout,
    honour_retry_after: bool,
    retry_after_min: Duration,
    retry_after_max: Duration,
    unhealthy_above: Option<(f64, u32)>,
    random: RandomSource,
}

impl RetryRules {
    /// A builder with the defaults listed on [`RetryRulesBuilder`]'s methods.
    pub fn builder() -> RetryRulesBuilder {
        RetryRulesBuilder::default()
    }

    /// The design sketch's "smart retry": 3 attempts, exponential backoff from 100 ms doubling up
    /// to 10 s, ±10 % jitter, attempt timeouts of `5 s × attempt`, and no retry once the
    /// target's recent failure rate is above 0.8 after the second attempt.
    pub fn conservative() -> Self {
        RetryRulesBuilder::default()
            .max_attempts(3)
            .backoff(Backoff::Exponential {
                initial: Duration::from_millis(100),
                multiplier: 2.0,
                max: Duration::from_secs(10),
            })
            .jitter(Jitter::Proportional(0.1))
            .attempt_timeout(AttemptTimeout::Growing {
                first: Duration::from_secs(5),
                step: Duration::from_secs(5),
            })
            .stop_when_failure_rate_above(0.8, 2)
            .build()
            .unwrap_or_else(|_| unreachable!("the design sketch's constants are valid"))
    }

    /// The maximum number of attempts, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff curve.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The overall deadline, if any.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }
}

impl RetryDecider for RetryRules {
    fn decide(&self, ctx: &AttemptContext) -> Decision {
        if ctx.attempt > self.max_attempts {
            return Decision::Stop(StopReason::MaxAttempts);
        }
        if let (Some((limit, after)), Some(rate)) = (self.unhealthy_above, ctx.failure_rate)
            && ctx.attempt > after
            && rate > limit
        {
            return Decision::Stop(StopReason::TargetUnhealthy);
        }
        let cap = self.backoff.max();
        let base = self.backoff.delay(
            ctx.attempt.saturating_sub(1),
            ctx.delay,
            self.random.next_f64(),
        );
        let mut delay = match self.jitter {
            Jitter::None => base,
            j => j.apply(base, self.random.next_f64(), cap),
        };
        if self.honour_retry_after
            && let Some(ra) = ctx.retry_after
        {
            // Retrying before the upstream asked is what Retry-After forbids: a longer wait
            // than the policy allows stops the call, with its reason.
            if ra > self.retry_after_max {
                return Decision::Stop(StopReason::RetryAfterTooLong);
            }
            delay = delay.max(ra.max(self.retry_after_min));
        }
        if let Some(deadline) = self.deadline
            && ctx.elapsed.saturating_add(delay) >= deadline
        {
            return Decision::Stop(StopReason::Deadline);
        }
        Decision::Retry(delay)
    }

    fn attempt_timeout(&self, ctx: &AttemptContext) -> Option<Duration> {
        let per_attempt = self.attempt_timeout.for_attempt(ctx.attempt);
        let remaining = self
            .deadline
            .map(|d| d.saturating_sub(ctx.elapsed.saturating_add(ctx.delay)));
        match (per_attempt, remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Builds a [`RetryRules`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct RetryRulesBuilder {
    max_attempts: u32,
    backoff: Backoff,
    jitter: Jitter,
    deadline: Option<Duration>,
    attempt_timeout: AttemptTimeout,
    honour_retry_after: bool,
    retry_after_min: Duration,
    retry_after_max: Duration,
    unhealthy_above: Option<(f64, u32)>,
    seed: Option<u64>,
}

impl Default for RetryRulesBuilder {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::Exponential {
                initial: Duration::from_millis(100),
                multiplier: 2.0,
                max: Duration::from_secs(10),
            },
            jitter: Jitter::Full,
            deadline: None,
            attempt_timeout: AttemptTimeout::None,
            honour_retry_after: true,
            retry_after_min: Duration::ZERO,
            retry_after_max: Duration::from_secs(60),
            unhealthy_above: None,
            seed: None,
        }
    }
}

impl RetryRulesBuilder {
    /// The maximum number of attempts, the first included. Defaults to 3.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The backoff curve. Defaults to exponential from 100 ms, ×2, capped at 10 s.
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    /// The jitter. Defaults to [`Jitter::Full`].
    pub fn jitter(mut self, j: Jitter) -> Self {
        self.jitter = j;
        self
    }

    /// No retry starts when it could not begin before `d` after the call started, and the
    /// last attempt's timeout is cut to what remains. Defaults to none.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Per-attempt timeouts. Defaults to none.
    pub fn attempt_timeout(mut self, t: AttemptTimeout) -> Self {
        self.attempt_timeout = t;
        self
    }

    /// Whether to wait at least what the server asked for in Retry-After, and at least
    /// `min`; a Retry-After above `max` stops the call
    /// ([`StopReason::RetryAfterTooLong`]) rather than retrying early. Defaults to yes,
    /// within `[0, 60 s]`.
    pub fn retry_after(mut self, honour: bool, min: Duration, max: Duration) -> Self {
        self.honour_retry_after = honour;
        self.retry_after_min = min;
        self.retry_after_max = max;
        self
    }

    /// Stop retrying once the target's recent failure rate (from the context) is above
    /// `rate`, for attempts after `after_attempt`. Defaults to never.
    pub fn stop_when_failure_rate_above(mut self, rate: f64, after_attempt: u32) -> Self {
        self.unhealthy_above = Some((rate, after_attempt));
        self
    }

    /// Draw jitter from a generator seeded with `seed` (deterministic). Defaults to a
    /// per-thread generator seeded by the OS.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the configuration and builds the policy.
    ///
    /// # Errors
    /// `max_attempts` zero; a `Jitter::Proportional` factor outside `[0, 1]`; a backoff its
    /// constructor would refuse ([`Backoff::check`]); a deadline, fixed or first attempt
    /// timeout of zero; Retry-After `min` above `max`; a failure rate limit outside
    /// `(0, 1]`; a duration beyond [`crate::MAX_CONFIG_DURATION`].
    pub fn build(self) -> Result<RetryRules, ConfigError> {
        CHECK.at_least_one("max_attempts", u64::from(self.max_attempts))?;
        if let Jitter::Proportional(f) = self.jitter {
            CHECK.in_range("jitter", f, 0.0, 1.0)?;
        }
        self.backoff.check()?;
        if let Some(d) = self.deadline {
            CHECK.positive("deadline", d)?;
        }
        match self.attempt_timeout {
            AttemptTimeout::Fixed(d) | AttemptTimeout::Growing { first: d, .. } => {
                CHECK.positive("attempt_timeout", d)?
            }
            AttemptTimeout::None => {}
        }
        CHECK.bounded("retry_after", self.retry_after_max)?;
        if let AttemptTimeout::Growing { step, .. } = self.attempt_timeout {
            CHECK.bounded("attempt_timeout", step)?;
        }
        if self.retry_after_min > self.retry_after_max {
            return Err(CHECK.err(
                "retry_after",
                format!(
                    "min {:?} is above max {:?}",
                    self.retry_after_min, self.retry_after_max
                ),
            ));
        }
        if let Some((rate, _)) = self.unhealthy_above {
            CHECK.rate("stop_when_failure_rate_above", rate)?;
        }
        Ok(RetryRules {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            jitter: self.jitter,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            honour_retry_after: self.honour_retry_after,
            retry_after_min: self.retry_after_min,
            retry_after_max: self.retry_after_max,
            unhealthy_above: self.unhealthy_above,
            random: self.seed.map(RandomSource::seeded).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::ErrorKind;

    const MS: Duration = Duration::from_millis(1);

    fn ctx(attempt: u32) -> AttemptContext {
        let mut c = AttemptContext::first("t");
        c.attempt = attempt;
        c.error = Some(ErrorKind::Http503);
        c
    }

    #[test]
    fn invalid_configuration_names_the_field() {
        let cases: Vec<(RetryRulesBuilder, &str)> = vec![
            (RetryRules::builder().max_attempts(0), "max_attempts"),
            (
                RetryRules::builder().jitter(Jitter::Proportional(1.5)),
                "jitter",
            ),
            (
                RetryRules::builder().jitter(Jitter::Proportional(f64::NAN)),
                "jitter",
            ),
            (RetryRules::builder().deadline(Duration::ZERO), "deadline"),
            (
                RetryRules::builder().attempt_timeout(AttemptTimeout::Fixed(Duration::ZERO)),
                "attempt_timeout",
            ),
            (
                RetryRules::builder().retry_after(true, 2 * MS, MS),
                "retry_after",
            ),
            (
                RetryRules::builder().stop_when_failure_rate_above(1.2, 1),
                "stop_when_failure_rate_above",
            ),
            (
                RetryRules::builder().backoff(Backoff::Exponential {
                    initial: MS,
                    multiplier: -2.0,
                    max: MS,
                }),
                "multiplier",
            ),
            // The variants are public: one built without its constructor is checked too.
            (
                RetryRules::builder().backoff(Backoff::DecorrelatedJitter {
                    base: Duration::ZERO,
                    max: MS,
                }),
                "base",
            ),
            (
                RetryRules::builder().backoff(Backoff::Linear {
                    initial: 2 * MS,
                    step: MS,
                    max: MS,
                }),
                "initial",
            ),
            // Beyond any real setting (a clock plus it would overflow).
            (RetryRules::builder().deadline(Duration::MAX), "deadline"),
            (
                RetryRules::builder().backoff(Backoff::Constant {
                    delay: Duration::MAX,
                }),
                "delay",
            ),
            (
                RetryRules::builder().retry_after(true, MS, Duration::MAX),
                "retry_after",
            ),
        ];
        for (b, field) in cases {
            assert_eq!(b.build().unwrap_err().field, field);
        }
    }

    /// A context of attempt 0 (a caller's mistake: attempts count from 1) is read as the
    /// first retry's, not wrapped to the four billionth.
    #[test]
    fn attempt_zero_is_not_wrapped() {
        let p = RetryRules::builder()
            .backoff(Backoff::exponential(100 * MS, 2.0, Duration::from_secs(10)).unwrap())
            .jitter(Jitter::None)
            .max_attempts(u32::MAX)
            .build()
            .unwrap();
        assert_eq!(p.decide(&ctx(0)), Decision::Retry(100 * MS));
    }

    #[test]
    fn retry_after_is_honoured_and_one_beyond_the_limit_stops_the_call() {
        let p = RetryRules::builder()
            .backoff(Backoff::constant(100 * MS).unwrap())
            .jitter(Jitter::None)
            .retry_after(true, Duration::ZERO, Duration::from_secs(5))
            .build()
            .unwrap();
        let mut c = ctx(2);
        c.retry_after = Some(Duration::from_secs(2));
        assert_eq!(p.decide(&c), Decision::Retry(Duration::from_secs(2)));
        c.retry_after = Some(Duration::from_secs(500));
        assert_eq!(
            p.decide(&c),
            Decision::Stop(StopReason::RetryAfterTooLong),
            "retrying after 5 s would be retrying before the upstream asked"
        );
        c.retry_after = Some(MS);
        assert_eq!(
            p.decide(&c),
            Decision::Retry(100 * MS),
            "never below the backoff"
        );
    }

    #[test]
    fn deadline_stops_and_cuts_the_last_timeout() {
        let p = RetryRules::builder()
            .max_attempts(10)
            .backoff(Backoff::constant(300 * MS).unwrap())
            .jitter(Jitter::None)
            .deadline(Duration::from_secs(1))
            .attempt_timeout(AttemptTimeout::Fixed(Duration::from_secs(2)))
            .build()
            .unwrap();
        let mut c = ctx(2);
        c.elapsed = 600 * MS;
        assert_eq!(p.decide(&c), Decision::Retry(300 * MS));
        c.delay = 300 * MS;
        assert_eq!(p.attempt_timeout(&c), Some(100 * MS));
        c.elapsed = 700 * MS;
        assert_eq!(p.decide(&c), Decision::Stop(StopReason::Deadline));
        assert_eq!(p.attempt_timeout(&ctx(1)), Some(Duration::from_secs(1)));
    }

    #[test]
    fn seed_smart_policy() {
        let p = RetryRules::conservative();
        assert_eq!(p.max_attempts(), 3);
        assert_eq!(p.attempt_timeout(&ctx(1)), Some(Duration::from_secs(5)));
        assert_eq!(p.attempt_timeout(&ctx(3)), Some(Duration::from_secs(15)));
        for _ in 0..100 {
            let Decision::Retry(d) = p.decide(&ctx(2)) else {
                panic!()
            };
            assert!((90 * MS..=110 * MS).contains(&d), "{d:?}");
        }
        let mut sick = ctx(3);
        sick.failure_rate = Some(0.9);
        assert_eq!(p.decide(&sick), Decision::Stop(StopReason::TargetUnhealthy));
        let mut early = ctx(2);
        early.failure_rate = Some(0.9);
        assert!(
            matches!(p.decide(&early), Decision::Retry(_)),
            "only after the second attempt"
        );
    }

    #[test]
    fn seeded_policies_repeat_themselves() {
        let make = || {
            RetryRules::builder()
                .max_attempts(100)
                .seed(7)
                .build()
                .unwrap()
        };
        let (a, b) = (make(), make());
        for n in 2..50 {
            assert_eq!(a.decide(&ctx(n)), b.decide(&ctx(n)));
        }
    }
}
