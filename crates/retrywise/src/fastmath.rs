//! `ln` and `exp` for the prediction path, inlined.
//!
//! A decision weighs a few dozen waits, and each wait costs logarithms (of the wait, of the
//! failure's age at the attempt) and an exponential (the sigmoid). The C library's `log`
//! and `exp` are accurate to the last bit but are calls the compiler cannot inline or
//! vectorize across a grid of waits; these are plain arithmetic (range reduction and a
//! short polynomial), within a few parts in 10^14 of the exact value over the inputs the
//! encoder and the sigmoid give them — far below anything a model can tell apart. Training
//! and every prediction use the same functions (through [`crate::features`] and
//! [`crate::model::sigmoid`]), so a model never sees two versions of a feature.

use std::f64::consts::{LN_2, SQRT_2};

/// `ln(x)` for positive, normal, finite `x` (what the encoder takes logarithms of:
/// `1 + milliseconds`, `1 + calls`, odds between 1/101 and 101). Other input gives an
/// unspecified value, never a panic.
#[inline]
pub(crate) fn ln(x: f64) -> f64 {
    // x = m · 2^e with m in [1, 2), then m in [√½, √2) so that t = (m − 1)/(m + 1) is
    // within ±0.1716 and the atanh series ln m = 2(t + t³/3 + t⁵/5 + …) converges fast:
    // the first term left out, 2t¹⁹/19, is below 1e-15.
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let mut series = 1.0 / 17.0;
    for c in [
        1.0 / 15.0,
        1.0 / 13.0,
        1.0 / 11.0,
        1.0 / 9.0,
        1.0 / 7.0,
        1.0 / 5.0,
        1.0 / 3.0,
        1.0,
    ] {
        series = series * t2 + c;
    }
    e as f64 * LN_2 + 2.0 * t * series
}

/// `exp(x)`, for `x` in `[-700, 700]` (the sigmoid passes `−|z|` with `|z|` clamped); 0
/// below that range and large but finite above it.
#[inline]
pub(crate) fn exp(x: f64) -> f64 {
    let x = x.clamp(-700.0, 700.0);
    // x = k·ln2 + r with |r| ≤ ln2/2, exp(r) by its Taylor series to r¹²/12! (the first
    // term left out, r¹³/13!, is below 1e-15 of the result), then scaled by 2^k through
    // the exponent bits.
    // ln 2 in two parts (Cody and Waite, as in fdlibm): k × the high part is exact, so r
    // keeps its precision however large k is.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    let k = (x * std::f64::consts::LOG2_E).round();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 479_001_600.0; // 1/12!
    for c in [
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // k is within ±1010, so 1023 + k is a normal exponent; split the scaling in two so
    // that k below −1022 (results below 2^-1022) stays representable.
    let k = k as i64;
    let half = k / 2;
    let s1 = f64::from_bits(((1023 + half) as u64) << 52);
    let s2 = f64::from_bits(((1023 + k - half) as u64) << 52);
    p * s1 * s2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn exact_at_the_points_that_matter() {
        assert_eq!(ln(1.0), 0.0);
        assert!((ln(2.0) - LN_2).abs() < 1e-15);
        assert_eq!(exp(0.0), 1.0);
        assert!(rel(exp(1.0), std::f64::consts::E) < 1e-15);
        assert_eq!(exp(-1e9), exp(-700.0));
        assert!(exp(-700.0) > 0.0 && exp(-700.0) < 1e-300);
        assert!(exp(1e9).is_finite());
    }

    proptest! {
        #[test]
        fn ln_matches_the_library(x in 1e-300f64..1e300) {
            let (a, b) = (ln(x), x.ln());
            prop_assert!((a - b).abs() <= 1e-15 + 1e-13 * b.abs(), "ln({x}) = {a}, not {b}");
        }

        #[test]
        fn ln_near_one(x in 0.5f64..2.0) {
            let (a, b) = (ln(x), x.ln());
            prop_assert!((a - b).abs() <= 1e-15 + 1e-13 * b.abs(), "ln({x}) = {a}, not {b}");
        }

        #[test]
        fn exp_matches_the_library(x in -700.0f64..700.0) {
            let (a, b) = (exp(x), x.exp());
            prop_assert!(rel(a, b) <= 1e-14, "exp({x}) = {a}, not {b}");
        }
    }
}
