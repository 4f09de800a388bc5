//! Durations on the wire: milliseconds as a JSON number (fractions allowed).
//!
//! Deserializing refuses negative, NaN and infinite values with an error that says so;
//! values too large for a [`Duration`] are refused too.

use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};

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

struct MsVisitor;

impl Visitor<'_> for MsVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a non-negative number of milliseconds")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        ms_to_duration(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        if v < 0 {
            return Err(E::custom(format!(
                "expected a non-negative number of milliseconds, got {v}"
            )));
        }
        Ok(Duration::from_millis(v.unsigned_abs()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_millis(v))
    }
}

/// `#[serde(with = "serde_ms")]` for `Duration`.
pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration_to_ms(*d))
}

/// `#[serde(with = "serde_ms")]` for `Duration`.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(MsVisitor)
}

/// `#[serde(with = "serde_ms::option")]` for `Option<Duration>`.
pub(crate) mod option {
    use super::*;

    #[derive(Deserialize)]
    struct Wrapped(#[serde(with = "super")] Duration);

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&duration_to_ms(*d)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}
