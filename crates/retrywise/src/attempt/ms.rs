//! Durations on the wire: milliseconds as a number (fractions allowed).

use std::time::Duration;

/// Converts milliseconds to a duration, rounded to the nanosecond, refusing negative,
/// non-finite and larger values than [`MAX_MS`](super::schema::MAX_MS) (about 31.7 years:
/// the schema's bound for every duration), each named with the number as given.
///
/// The one conversion from milliseconds on the wire — records, NDJSON, Parquet, the HTTP
/// API — so every path builds the same `Duration` from the same number: an integral
/// number gives exactly `Duration::from_millis`, and a duration written with
/// [`duration_to_ms`] reads back unchanged below 2⁵⁰ ns (about 13 days; beyond, a number
/// of milliseconds cannot hold every nanosecond).
pub fn ms_to_duration(ms: f64) -> Result<Duration, String> {
    use super::schema::{MAX_MS, shown};
    if !ms.is_finite() {
        return Err(format!(
            "expected a finite number of milliseconds, got {}",
            shown(ms)
        ));
    }
    if ms < 0.0 {
        return Err(format!(
            "expected a non-negative number of milliseconds, got {}",
            shown(ms)
        ));
    }
    // Checked on the number given, not on the duration it would round to (1e12 + 1 read
    // back as 1000000000000.9999).
    if ms > MAX_MS {
        return Err(format!(
            "must be at most {MAX_MS:e} milliseconds (about 31.7 years), got {}",
            shown(ms)
        ));
    }
    // Whole milliseconds and the fraction apart: their product with 10^6 in one would
    // round away whole milliseconds beyond 2^53 ns.
    let whole = ms.trunc();
    Ok(Duration::from_millis(whole as u64)
        + Duration::from_nanos(((ms - whole) * 1e6).round() as u64))
}

/// Milliseconds of a duration as `f64` (what records and the HTTP API carry): a whole
/// number of milliseconds is written as that whole number (`1005`, not the
/// `1004.9999999999999` that seconds times a thousand rounds to).
pub fn duration_to_ms(d: Duration) -> f64 {
    d.as_secs() as f64 * 1e3 + f64::from(d.subsec_nanos()) / 1e6
}

/// Serializes a duration as milliseconds (`#[serde(serialize_with = ...)]` on the metrics
/// snapshots, whose wire names end in `_ms`).
pub(crate) fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration_to_ms(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_number_as_given() {
        for (ms, says) in [
            (f64::NAN, "finite number of milliseconds, got NaN"),
            (-1e-300, "non-negative number of milliseconds, got -1e-300"),
            (
                1e308,
                "at most 1e12 milliseconds (about 31.7 years), got 1e308",
            ),
            (
                1e12 + 1.0,
                "at most 1e12 milliseconds (about 31.7 years), got 1000000000001",
            ),
        ] {
            let e = ms_to_duration(ms).unwrap_err();
            assert!(e.contains(says), "{ms}: {e}");
        }
        assert_eq!(
            ms_to_duration(1e12).unwrap(),
            Duration::from_secs(1_000_000_000)
        );
        assert_eq!(ms_to_duration(2.5).unwrap(), Duration::from_micros(2500));
    }

    proptest::proptest! {
        /// A whole number of milliseconds is written as that number and read back as
        /// exactly that many, to the schema's bound; any duration below 2^50 ns written
        /// in milliseconds reads back as itself, to the nanosecond.
        #[test]
        fn milliseconds_are_written_exactly(ms in 0u64..=1_000_000_000_000, nanos in 0u64..1 << 50) {
            proptest::prop_assert_eq!(duration_to_ms(Duration::from_millis(ms)), ms as f64);
            proptest::prop_assert_eq!(ms_to_duration(ms as f64).unwrap(), Duration::from_millis(ms));
            let d = Duration::from_nanos(nanos);
            proptest::prop_assert_eq!(ms_to_duration(duration_to_ms(d)).unwrap(), d);
        }
    }

    #[test]
    fn a_whole_number_of_milliseconds_is_written_whole() {
        assert_eq!(duration_to_ms(Duration::from_millis(1005)), 1005.0);
        assert_eq!(duration_to_ms(Duration::from_micros(2500)), 2.5);
    }
}
