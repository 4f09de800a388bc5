//! Durations on the wire: milliseconds as a number (fractions allowed).

use std::time::Duration;

/// Converts milliseconds to a duration, rounded to the nanosecond, refusing negative or
/// non-finite values.
///
/// The one conversion from milliseconds on the wire — records, NDJSON, Parquet, the HTTP
/// API — so every path builds the same `Duration` from the same number: an integral
/// number gives exactly `Duration::from_millis`, and a duration written with
/// [`duration_to_ms`] reads back unchanged (below 2⁵³ ns, about 104 days).
pub fn ms_to_duration(ms: f64) -> Result<Duration, String> {
    if !ms.is_finite() {
        return Err(format!(
            "expected a finite number of milliseconds, got {ms}"
        ));
    }
    if ms < 0.0 {
        return Err(format!(
            "expected a non-negative number of milliseconds, got {ms}"
        ));
    }
    let nanos = (ms * 1e6).round();
    // u64::MAX as f64 rounds up to 2^64, itself out of range.
    if nanos >= u64::MAX as f64 {
        return Err(format!("{ms} milliseconds does not fit in a duration"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Milliseconds of a duration as `f64` (what records and the HTTP API carry).
pub fn duration_to_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Serializes a duration as milliseconds (`#[serde(serialize_with = ...)]` on the metrics
/// snapshots, whose wire names end in `_ms`).
pub(crate) fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration_to_ms(*d))
}
