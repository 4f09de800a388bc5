//! gRPC-style retry throttling.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::error::{Check, ConfigError};

use super::RetryBudget;

const CHECK: Check = Check::new("token_bucket");
/// Tokens are kept in thousandths, as gRPC specifies, so fractional ratios add up exactly.
const MILLI: u64 = 1000;

/// Retry throttling as specified for gRPC (gRFC A6): a bucket of `max_tokens` that starts
/// full; every failed attempt takes one token, every success puts back `token_ratio`, and
/// retries are allowed only while more than half the tokens remain.
///
/// Under a full outage every attempt fails, the bucket drains to half after
/// `max_tokens / 2` failures and retries stop altogether — the load is then just the
/// callers' own calls — until successes refill it.
#[derive(Debug)]
pub struct TokenBucket {
    /// Current tokens × 1000, always within `[0, max]`.
    tokens: AtomicU64,
    /// `max_tokens × 1000`.
    max: u64,
    /// `token_ratio × 1000`, rounded.
    refill: u64,
}

impl TokenBucket {
    /// A full bucket of `max_tokens`, refilled by `token_ratio` per success (gRPC's
    /// defaults in its examples: 10 and 0.1). As in gRFC A6, any positive ratio is
    /// accepted (gRPC's own tests use 1.6), kept to three decimals.
    ///
    /// # Errors
    /// `max_tokens` outside `[1, 1000]` (gRPC's range), `token_ratio` not positive and
    /// finite, or above `max_tokens`.
    pub fn new(max_tokens: u32, token_ratio: f64) -> Result<Self, ConfigError> {
        if !(1..=1000).contains(&max_tokens) {
            return Err(CHECK.err(
                "max_tokens",
                format!("must be within 1..=1000, got {max_tokens}"),
            ));
        }
        if !(token_ratio.is_finite() && token_ratio > 0.0 && token_ratio <= f64::from(max_tokens)) {
            return Err(CHECK.err(
                "token_ratio",
                format!(
                    "must be positive and at most max_tokens ({max_tokens}), got {token_ratio}"
                ),
            ));
        }
        let max = u64::from(max_tokens) * MILLI;
        // token_ratio is in (0, max_tokens]: the product is within (0, max].
        let refill = ((token_ratio * MILLI as f64).round() as u64).clamp(1, max);
        Ok(Self {
            tokens: AtomicU64::new(max),
            max,
            refill,
        })
    }

    /// The tokens left.
    pub fn tokens(&self) -> f64 {
        self.tokens.load(Ordering::Relaxed) as f64 / MILLI as f64
    }

    fn update(&self, f: impl Fn(u64) -> u64) {
        // The closure always returns Some, so fetch_update cannot fail.
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(f(t)));
    }
}

impl RetryBudget for TokenBucket {
    fn deposit(&self, _now: Instant) {}

    fn withdraw(&self, _now: Instant) -> bool {
        self.tokens.load(Ordering::Acquire) * 2 > self.max
    }

    fn record(&self, success: bool) {
        if success {
            if self.tokens.load(Ordering::Relaxed) < self.max {
                let (max, refill) = (self.max, self.refill);
                self.update(|t| (t + refill).min(max));
            }
        } else {
            self.update(|t| t.saturating_sub(MILLI));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against gRFC A6 kept in thousandths by hand: after any sequence of successes,
        /// failures and asks, the bucket holds what the specification says (within
        /// `[0, max_tokens]`), and a retry is allowed exactly while more than half of it
        /// remains.
        #[test]
        fn the_bucket_is_grfc_a6(
            max_tokens in 1u32..=1000,
            ratio_share in 0.001f64..=1.0,
            ops in proptest::collection::vec(0u8..3, 0..400),
        ) {
            let ratio = (ratio_share * f64::from(max_tokens) * 1000.0).round().max(1.0) / 1000.0;
            let b = TokenBucket::new(max_tokens, ratio).unwrap();
            let (max, refill) = (u64::from(max_tokens) * 1000, (ratio * 1000.0).round() as u64);
            let mut tokens = max;
            let now = Instant::now();
            for op in ops {
                match op {
                    0 => {
                        b.record(true);
                        tokens = (tokens + refill).min(max);
                    }
                    1 => {
                        b.record(false);
                        tokens = tokens.saturating_sub(1000);
                    }
                    _ => prop_assert_eq!(b.withdraw(now), tokens * 2 > max),
                }
                prop_assert!((b.tokens() - tokens as f64 / 1000.0).abs() < 1e-9);
                prop_assert!((0.0..=f64::from(max_tokens)).contains(&b.tokens()));
            }
        }
    }

    #[test]
    fn drains_to_half_then_refills() {
        let b = TokenBucket::new(10, 0.1).unwrap();
        let now = Instant::now();
        assert!(b.withdraw(now));
        for _ in 0..4 {
            b.record(false);
        }
        assert!(b.withdraw(now), "6 tokens > 5");
        b.record(false);
        assert!(!b.withdraw(now), "5 tokens is not more than half");
        for _ in 0..10 {
            b.record(false);
        }
        assert_eq!(b.tokens(), 0.0);
        for _ in 0..51 {
            b.record(true);
        }
        assert!((b.tokens() - 5.1).abs() < 1e-9);
        assert!(b.withdraw(now));
        for _ in 0..1000 {
            b.record(true);
        }
        assert_eq!(b.tokens(), 10.0, "never above max");
    }

    #[test]
    fn refuses_bad_configuration() {
        assert_eq!(TokenBucket::new(0, 0.1).unwrap_err().field, "max_tokens");
        assert_eq!(TokenBucket::new(1001, 0.1).unwrap_err().field, "max_tokens");
        assert_eq!(TokenBucket::new(10, 0.0).unwrap_err().field, "token_ratio");
        assert_eq!(
            TokenBucket::new(10, f64::NAN).unwrap_err().field,
            "token_ratio"
        );
        assert_eq!(TokenBucket::new(10, 11.0).unwrap_err().field, "token_ratio");
    }

    #[test]
    fn a_ratio_above_one_refills_faster() {
        // gRPC's own tests: 10 tokens, ratio 1.6.
        let b = TokenBucket::new(10, 1.6).unwrap();
        for _ in 0..6 {
            b.record(false);
        }
        assert!(!b.withdraw(Instant::now()), "4 tokens");
        b.record(true);
        assert!((b.tokens() - 5.6).abs() < 1e-9);
        assert!(b.withdraw(Instant::now()));
    }
}
