//! Hand-written JSON (de)serialization of [`AttemptRecord`]: one flat object, fields in a
//! fixed order on output, any order and unknown fields tolerated on input.
//!
//! Derived code with `#[serde(flatten)]` buffers every field of a record before assigning
//! them; this visitor assigns as it reads, about twice as fast, which matters to the
//! collector (millions of records written) and the compactor (millions read).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::serde_ms::{duration_to_ms, ms_to_duration};
use super::{AttemptContext, AttemptRecord, ErrorKind, Outcome, SchemaVersion};

impl Serialize for AttemptRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = &self.context;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("schema_version", &self.schema_version)?;
        m.serialize_entry("started_at_ms", &self.started_at_ms)?;
        m.serialize_entry("call_id", &self.call_id)?;
        m.serialize_entry("hedge", &self.hedge)?;
        if let Some(p) = &self.policy {
            m.serialize_entry("policy", &**p)?;
        }
        m.serialize_entry("target", &*c.target)?;
        m.serialize_entry("attempt", &c.attempt)?;
        if let Some(e) = c.error {
            m.serialize_entry("error", e.as_str())?;
        }
        if let Some(v) = c.status {
            m.serialize_entry("status", &v)?;
        }
        if let Some(v) = c.latency {
            m.serialize_entry("latency_ms", &duration_to_ms(v))?;
        }
        m.serialize_entry("elapsed_ms", &duration_to_ms(c.elapsed))?;
        if let Some(v) = c.retry_after {
            m.serialize_entry("retry_after_ms", &duration_to_ms(v))?;
        }
        m.serialize_entry("delay_ms", &duration_to_ms(c.delay))?;
        if let Some(v) = c.failure_rate {
            m.serialize_entry("failure_rate", &v)?;
        }
        if let Some(v) = c.latency_p95 {
            m.serialize_entry("latency_p95_ms", &duration_to_ms(v))?;
        }
        if let Some(v) = c.in_flight {
            m.serialize_entry("in_flight", &v)?;
        }
        if let Some(v) = c.planned_delay {
            m.serialize_entry("planned_delay_ms", &duration_to_ms(v))?;
        }
        m.serialize_entry("outcome", &self.outcome)?;
        if let Some(e) = self.outcome_error {
            m.serialize_entry("outcome_error", e.as_str())?;
        }
        if let Some(v) = self.outcome_status {
            m.serialize_entry("outcome_status", &v)?;
        }
        m.serialize_entry("outcome_latency_ms", &duration_to_ms(self.outcome_latency))?;
        if let Some(v) = self.outcome_retry_after {
            m.serialize_entry("outcome_retry_after_ms", &duration_to_ms(v))?;
        }
        m.end()
    }
}

/// Milliseconds as a duration, with the field named in the error.
struct Ms(Duration);

impl<'de> Deserialize<'de> for Ms {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        ms_to_duration(v).map(Ms).map_err(de::Error::custom)
    }
}

/// A field seen twice is an error, as derived code makes it.
fn set<T, E: de::Error>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(v);
    Ok(())
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = AttemptRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an attempt record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttemptRecord, A::Error> {
        let mut schema_version = None;
        let mut started_at_ms = None;
        let mut call_id = None;
        let mut hedge = None;
        let mut target: Option<Arc<str>> = None;
        let mut attempt = None;
        let mut error: Option<Option<ErrorKind>> = None;
        let mut status: Option<Option<u16>> = None;
        let mut latency: Option<Option<Ms>> = None;
        let mut elapsed: Option<Ms> = None;
        let mut retry_after: Option<Option<Ms>> = None;
        let mut delay: Option<Ms> = None;
        let mut failure_rate: Option<Option<f64>> = None;
        let mut latency_p95: Option<Option<Ms>> = None;
        let mut in_flight: Option<Option<u32>> = None;
        let mut planned_delay: Option<Option<Ms>> = None;
        let mut policy: Option<Option<std::borrow::Cow<'de, str>>> = None;
        let mut outcome = None;
        let mut outcome_error: Option<Option<ErrorKind>> = None;
        let mut outcome_status: Option<Option<u16>> = None;
        let mut outcome_latency: Option<Ms> = None;
        let mut outcome_retry_after: Option<Option<Ms>> = None;

        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "schema_version" => set(
                    &mut schema_version,
                    map.next_value::<SchemaVersion>()?,
                    "schema_version",
                )?,
                "started_at_ms" => set(
                    &mut started_at_ms,
                    map.next_value::<u64>()?,
                    "started_at_ms",
                )?,
                "call_id" => set(&mut call_id, map.next_value::<u64>()?, "call_id")?,
                "hedge" => set(&mut hedge, map.next_value::<u32>()?, "hedge")?,
                "target" => set(
                    &mut target,
                    map.next_value::<std::borrow::Cow<'de, str>>()?.into(),
                    "target",
                )?,
                "attempt" => set(&mut attempt, map.next_value::<u32>()?, "attempt")?,
                "error" => set(&mut error, map.next_value()?, "error")?,
                "status" => set(&mut status, map.next_value()?, "status")?,
                "latency_ms" => set(&mut latency, map.next_value()?, "latency_ms")?,
                "elapsed_ms" => set(&mut elapsed, map.next_value()?, "elapsed_ms")?,
                "retry_after_ms" => set(&mut retry_after, map.next_value()?, "retry_after_ms")?,
                "delay_ms" => set(&mut delay, map.next_value()?, "delay_ms")?,
                "failure_rate" => set(&mut failure_rate, map.next_value()?, "failure_rate")?,
                "latency_p95_ms" => set(&mut latency_p95, map.next_value()?, "latency_p95_ms")?,
                "in_flight" => set(&mut in_flight, map.next_value()?, "in_flight")?,
                "planned_delay_ms" => {
                    set(&mut planned_delay, map.next_value()?, "planned_delay_ms")?
                }
                "policy" => set(&mut policy, map.next_value()?, "policy")?,
                "outcome" => set(&mut outcome, map.next_value::<Outcome>()?, "outcome")?,
                "outcome_error" => set(&mut outcome_error, map.next_value()?, "outcome_error")?,
                "outcome_status" => set(&mut outcome_status, map.next_value()?, "outcome_status")?,
                "outcome_latency_ms" => set(
                    &mut outcome_latency,
                    map.next_value()?,
                    "outcome_latency_ms",
                )?,
                "outcome_retry_after_ms" => set(
                    &mut outcome_retry_after,
                    map.next_value()?,
                    "outcome_retry_after_ms",
                )?,
                // Fields of a newer minor version: ignored, as the schema's rules say.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let missing = de::Error::missing_field;
        Ok(AttemptRecord {
            schema_version: schema_version.ok_or_else(|| missing("schema_version"))?,
            started_at_ms: started_at_ms.ok_or_else(|| missing("started_at_ms"))?,
            call_id: call_id.ok_or_else(|| missing("call_id"))?,
            hedge: hedge.unwrap_or(0),
            policy: policy.flatten().map(Arc::from),
            context: AttemptContext {
                target: target.ok_or_else(|| missing("target"))?,
                attempt: attempt.ok_or_else(|| missing("attempt"))?,
                error: error.flatten(),
                status: status.flatten(),
                latency: latency.flatten().map(|m| m.0),
                elapsed: elapsed.map_or(Duration::ZERO, |m| m.0),
                retry_after: retry_after.flatten().map(|m| m.0),
                delay: delay.map_or(Duration::ZERO, |m| m.0),
                failure_rate: failure_rate.flatten(),
                latency_p95: latency_p95.flatten().map(|m| m.0),
                in_flight: in_flight.flatten(),
                planned_delay: planned_delay.flatten().map(|m| m.0),
            },
            outcome: outcome.ok_or_else(|| missing("outcome"))?,
            outcome_error: outcome_error.flatten(),
            outcome_status: outcome_status.flatten(),
            outcome_latency: outcome_latency
                .ok_or_else(|| missing("outcome_latency_ms"))?
                .0,
            outcome_retry_after: outcome_retry_after.flatten().map(|m| m.0),
        })
    }
}

impl<'de> Deserialize<'de> for AttemptRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RecordVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::{Failure, Verdict};
    use proptest::prelude::*;

    fn any_kind() -> impl Strategy<Value = Option<ErrorKind>> {
        prop::option::of(prop::sample::select(ErrorKind::ALL.to_vec()))
    }

    fn any_ms() -> impl Strategy<Value = Duration> {
        (0u64..10_000_000_000).prop_map(Duration::from_micros)
    }

    prop_compose! {
        fn any_record()(
            started in any::<u64>(), call_id in any::<u64>(), hedge in 0u32..4,
            target in "[a-z0-9.\\-\"\\\\ é]{1,20}", attempt in 1u32..10,
            error in any_kind(), status in prop::option::of(100u16..600),
            latency in prop::option::of(any_ms()), elapsed in any_ms(),
            retry_after in prop::option::of(any_ms()), delay in any_ms(),
            failure_rate in prop::option::of(0.0f64..=1.0), p95 in prop::option::of(any_ms()),
            in_flight in prop::option::of(any::<u32>()), kind in any_kind(),
            out_status in prop::option::of(100u16..600), out_latency in any_ms(),
            out_ra in prop::option::of(any_ms()), cancelled in any::<bool>(),
            planned in prop::option::of(any_ms()), policy in prop::option::of("[a-z\\-]{1,12}"),
        ) -> AttemptRecord {
            let mut ctx = AttemptContext::first(target.as_str());
            ctx.attempt = attempt;
            ctx.error = error;
            ctx.status = status;
            ctx.latency = latency;
            ctx.elapsed = elapsed;
            ctx.retry_after = retry_after;
            ctx.delay = delay;
            ctx.failure_rate = failure_rate;
            ctx.latency_p95 = p95;
            ctx.in_flight = in_flight;
            ctx.planned_delay = planned;
            let verdict = match kind {
                None => Verdict::Success,
                Some(k) => {
                    let mut f = Failure::new(k);
                    f.status = out_status;
                    f.retry_after = out_ra;
                    Verdict::Retryable(f)
                }
            };
            let mut r = AttemptRecord::new(call_id, hedge, started, ctx, &verdict, out_latency);
            if cancelled {
                r.outcome = Outcome::Cancelled;
            }
            r.policy = policy.map(|p| Arc::from(p.as_str()));
            r
        }
    }

    /// Durations travel as f64 milliseconds: equal to within a nanosecond.
    fn close(a: &AttemptRecord, b: &AttemptRecord) -> bool {
        let d = |x: Duration, y: Duration| x.abs_diff(y) <= Duration::from_nanos(1);
        let o = |x: Option<Duration>, y: Option<Duration>| match (x, y) {
            (Some(x), Some(y)) => d(x, y),
            (None, None) => true,
            _ => false,
        };
        let (c, e) = (&a.context, &b.context);
        a.schema_version == b.schema_version
            && a.started_at_ms == b.started_at_ms
            && a.call_id == b.call_id
            && a.hedge == b.hedge
            && c.target == e.target
            && c.attempt == e.attempt
            && c.error == e.error
            && c.status == e.status
            && o(c.latency, e.latency)
            && d(c.elapsed, e.elapsed)
            && o(c.retry_after, e.retry_after)
            && d(c.delay, e.delay)
            && c.failure_rate == e.failure_rate
            && o(c.latency_p95, e.latency_p95)
            && c.in_flight == e.in_flight
            && o(c.planned_delay, e.planned_delay)
            && a.policy == b.policy
            && a.outcome == b.outcome
            && a.outcome_error == b.outcome_error
            && a.outcome_status == b.outcome_status
            && d(a.outcome_latency, b.outcome_latency)
            && o(a.outcome_retry_after, b.outcome_retry_after)
    }

    proptest! {
        #[test]
        fn round_trips(r in any_record()) {
            let json = serde_json::to_string(&r).unwrap();
            let back: AttemptRecord = serde_json::from_str(&json).unwrap();
            prop_assert!(close(&r, &back), "{r:?}\n{json}\n{back:?}");
        }

        #[test]
        fn never_panics_on_garbage(s in ".{0,200}") {
            let _ = serde_json::from_str::<AttemptRecord>(&s);
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_defaults_apply() {
        let r: AttemptRecord = serde_json::from_str(
            r#"{"schema_version":"1.3","started_at_ms":5,"call_id":1,"target":"t","attempt":1,
                "outcome":"success","outcome_latency_ms":2.5,"added_in_1_3":{"x":[1,2]}}"#,
        )
        .unwrap();
        assert_eq!(r.schema_version, SchemaVersion { major: 1, minor: 3 });
        assert_eq!(r.hedge, 0);
        assert_eq!(r.context.delay, Duration::ZERO);
        assert_eq!(r.outcome_latency, Duration::from_micros(2500));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let err = |s: &str| {
            serde_json::from_str::<AttemptRecord>(s)
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"started_at_ms":5}"#).contains("schema_version"));
        assert!(err(r#"{"schema_version":"1.0","started_at_ms":5,"call_id":1,"target":"t","attempt":1,"outcome":"success","outcome_latency_ms":-1}"#).contains("non-negative"));
        assert!(err(r#"{"schema_version":"1.0","started_at_ms":"x"}"#).contains("invalid type"));
        assert!(err(r#"{"schema_version":"1.0","schema_version":"1.0"}"#).contains("duplicate"));
        assert!(err(r#"{"schema_version":"1.0","started_at_ms":5,"call_id":1,"target":"t","attempt":1,"outcome":"maybe","outcome_latency_ms":1}"#).contains("unknown variant"));
    }
}
