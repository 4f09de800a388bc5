//! The encoder's logarithm, inlined ([`ln_pos`]).
//!
//! `f64::ln` is a call into the C library: each call spills every live floating-point
//! register around it, and the calls run one after another. One prediction encodes a
//! context with eight logarithms (eleven with a wait), one after another in a chain that
//! ends in the logistic function, so it waits on each (p(success) 56 ns, a third of it in
//! the calls). Inlined and without a division, [`crate::features::encode_with`]'s run
//! side by side (44 ns). It follows the table-driven reduction of ARM's
//! optimized-routines `log`, written for the arguments it gets here (no zeros,
//! infinities or subnormals): within 4 ε · max(|ln x|, ½) of `f64::ln` - a few units in
//! the last place away from 1, and at most 4.4e-16 absolute near it, where the features'
//! values are nearly 0 anyway (tests below hold it to that). Not monotonic to the last
//! bit: odds an ulp apart at the edge of a table row may come out an ulp inverted.
//!
//! Every computed logarithm of the features goes through it - in
//! [`crate::features::encode_with`], which training and every prediction use, and in
//! [`crate::features::log_ms`], which a decider's loop over its waits uses - so that the
//! encoder is one implementation to the bit. (The logarithms of the calls in flight below
//! 256 and of the age curve's knots are tables and constants, computed once.)
//!
//! (The logistic function's exponential stays `f64::exp`: it ends the chain, so only its
//! latency counts, and an inlined one without fused multiply-adds measured slower, 48 ns
//! against 44.)

/// `ln x` for a positive, finite, normal `x` (the encoder's arguments: `1 + ms` of a
/// duration, at least 1, and odds, at least 0.01/1.01), inlined and without a division:
/// `x = 2^k z` with `z` in `[0.6875, 1.375)`, `z = c (1 + r)` with `c` the middle of the
/// 128th of that range (by bits) that `z` falls in (1 for the two next to 1, so that
/// `ln 1` is 0 exactly and `ln x` has its sign however near 1 `x` is), `|r| < 0.008`, and `ln x = k ln 2 + ln c + ln(1 + r)`, the last by
/// six terms of its series (error below `r^7 / 7 < 3e-16`).
#[inline(always)]
pub(crate) fn ln_pos(x: f64) -> f64 {
    let bits = x.to_bits();
    let tmp = bits.wrapping_sub(LN_OFF);
    let i = ((tmp >> (52 - LN_TABLE_BITS)) as usize) % LN_TABLE.len();
    let k = (tmp as i64) >> 52;
    let z = f64::from_bits(bits.wrapping_sub(tmp & (0xfff << 52)));
    let (inv_c, ln_c) = LN_TABLE[i];
    let r = z * inv_c - 1.0;
    let r2 = r * r;
    // r - r^2/2 + r^3/3 - r^4/4 + r^5/5 - r^6/6, by Estrin's scheme.
    let hi = (1.0 / 3.0 - 0.25 * r) + r2 * (0.2 - r / 6.0);
    let p = (r - 0.5 * r2) + r2 * r * hi;
    (k as f64 * std::f64::consts::LN_2 + ln_c) + p
}

/// The bits of 0.6875, where [`ln_pos`]'s reduced argument starts.
const LN_OFF: u64 = 0x3fe6_0000_0000_0000;

/// How many bits of the mantissa pick [`LN_TABLE`]'s entry.
const LN_TABLE_BITS: u32 = 7;

/// `(1/c, ln c)` for the `c` of each 128th (by bits) of `[0.6875, 1.375)` (see
/// [`ln_pos`]), computed when compiling.
static LN_TABLE: [(f64, f64); 1 << LN_TABLE_BITS] = {
    let mut t = [(0.0, 0.0); 1 << LN_TABLE_BITS];
    let mut i = 0;
    while i < t.len() {
        let lo = f64::from_bits(LN_OFF + ((i as u64) << (52 - LN_TABLE_BITS)));
        let hi = f64::from_bits(LN_OFF + ((i as u64 + 1) << (52 - LN_TABLE_BITS)));
        let c = if lo == 1.0 || hi == 1.0 {
            1.0
        } else {
            0.5 * (lo + hi)
        };
        t[i] = (1.0 / c, ln_const(c));
        i += 1;
    }
    t
};

/// `ln x` for `x` in `[0.5, 2]`, when compiling: `2 atanh((x - 1)/(x + 1))` by 60 terms
/// of its series (exact in `f64` there).
pub(crate) const fn ln_const(x: f64) -> f64 {
    let z = (x - 1.0) / (x + 1.0);
    let z2 = z * z;
    let mut term = z;
    let mut sum = 0.0;
    let mut i = 0;
    while i < 60 {
        sum += term / (2 * i + 1) as f64;
        term *= z2;
        i += 1;
    }
    2.0 * sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `ln_pos(x)`'s distance from `f64::ln`, in units of `f64::EPSILON` times the
    /// result (at least a half: near 1, where the result is near 0, absolute).
    fn ln_error(x: f64) -> f64 {
        let (got, want) = (ln_pos(x), x.ln());
        (got - want).abs() / (f64::EPSILON * want.abs().max(0.5))
    }

    #[test]
    fn the_logarithm_is_the_logarithm() {
        // Every 128th's edges and middle, and their neighbours, in octaves around 1 and
        // far out.
        let mut worst = 0.0f64;
        for k in [-6i32, -1, 0, 1, 2, 10, 40, 70] {
            for i in 0..=(2u64 << LN_TABLE_BITS) {
                let z = f64::from_bits(LN_OFF + (i << (51 - LN_TABLE_BITS)));
                for x in [
                    z,
                    f64::from_bits(z.to_bits() - 1),
                    f64::from_bits(z.to_bits() + 1),
                ] {
                    worst = worst.max(ln_error(x * 2f64.powi(k)));
                }
            }
        }
        assert_eq!(ln_pos(1.0), 0.0);
        // Next to 1 the result has its sign, and is the logarithm to the last few bits.
        for d in [1e-15, 1e-12, 1e-9, 1e-6, 1e-3] {
            for x in [1.0 - d, 1.0 + d] {
                let (got, want) = (ln_pos(x), x.ln());
                assert_eq!(got.signum(), want.signum(), "{x}");
                assert!((got - want).abs() <= 4.0 * f64::EPSILON * want.abs(), "{x}");
            }
        }
        assert!(worst <= 4.0, "{worst}");
    }

    proptest! {
        /// Over every argument the encoder takes (`1 + ms` of up to `Duration::MAX`, odds
        /// from 0.01/1.01), log-uniformly.
        #[test]
        fn the_logarithm_holds_everywhere(l in (0.0099f64).ln()..(2e22f64).ln()) {
            let x = l.exp();
            prop_assert!(ln_error(x) <= 4.0, "{x}: {} vs {}", ln_pos(x), x.ln());
        }

    }
}
