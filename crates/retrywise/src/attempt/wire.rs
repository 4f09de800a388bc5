//! JSON (de)serialization of [`AttemptContext`] and [`AttemptRecord`], driven by the
//! schema table ([`super::schema::FIELDS`]): one flat object, fields in the table's order on
//! output, any order on input.
//!
//! A record keeps unknown fields (a newer minor version adds optional fields) in
//! [`AttemptRecord::unknown`] and writes them back after the known ones; a context refuses
//! them (a misspelt field in an API request is an error, not a silent
//! default). Missing and `null` mean the same: unknown for optional fields, zero for
//! defaulted ones; required fields must be present. Durations must be finite and
//! non-negative; whole numbers must fit their type. Ranges (an attempt of 0, a status of
//! 42) are not checked here but by `validate`, so that a reader can count what it skips.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Unexpected, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ms::{duration_to_ms, ms_to_duration};
use super::schema::{FIELDS, Field, FieldType, Presence, Value};
use super::{AttemptContext, AttemptRecord, ErrorKind, Outcome, SchemaVersion};

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Value::Null => s.serialize_none(),
            Value::Text(t) => s.serialize_str(t),
            Value::Shared(t) => s.serialize_str(t),
            Value::Version(v) => s.collect_str(&v),
            Value::ErrorKind(k) => s.serialize_str(k.as_str()),
            Value::Outcome(o) => s.serialize_str(o.as_str()),
            Value::UInt(n) => s.serialize_u64(n),
            Value::Float(x) => s.serialize_f64(x),
            Value::Duration(d) => s.serialize_f64(duration_to_ms(d)),
        }
    }
}

impl Serialize for AttemptRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for f in &FIELDS {
            let v = f.get(self);
            if !v.is_null() {
                m.serialize_entry(f.name, &v)?;
            }
        }
        for (name, v) in self.unknown.iter().flat_map(|u| u.iter()) {
            m.serialize_entry(name, v)?;
        }
        m.end()
    }
}

impl Serialize for AttemptContext {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for f in &FIELDS {
            if let Some(v) = f.get_context(self)
                && !v.is_null()
            {
                m.serialize_entry(f.name, &v)?;
            }
        }
        m.end()
    }
}

/// Reads one field's value as its type says and sets it in the record.
struct FieldSeed<'r> {
    field: &'static Field,
    rec: &'r mut AttemptRecord,
}

fn parsed<T, E: de::Error>(
    v: Option<T>,
    f: impl FnOnce(T) -> Result<Value<'static>, E>,
) -> Result<Value<'static>, E> {
    v.map_or(Ok(Value::Null), f)
}

fn whole<E: de::Error>(n: u64, ty: FieldType) -> Result<Value<'static>, E> {
    match ty.max_whole() {
        Some(max) if n > max => Err(E::invalid_value(
            Unexpected::Unsigned(n),
            &format!("a whole number within 0..={max}").as_str(),
        )),
        _ => Ok(Value::UInt(n)),
    }
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let f = self.field;
        let required = f.presence == Presence::Required;
        let v = match f.ty {
            FieldType::Text | FieldType::Version | FieldType::ErrorKind | FieldType::Outcome => {
                // Read in place (no copy of the string), parsed and set by `set_text`.
                let rec = self.rec;
                return with_str(d, required, |s| set_text(f, rec, s));
            }
            FieldType::UInt16 | FieldType::UInt32 | FieldType::UInt64 => {
                let n = if required {
                    Some(Whole::deserialize(d)?)
                } else {
                    Option::<Whole>::deserialize(d)?
                };
                parsed(n, |n| whole(n.0, f.ty))?
            }
            FieldType::Float64 => {
                let x = if required {
                    Some(f64::deserialize(d)?)
                } else {
                    Option::<f64>::deserialize(d)?
                };
                x.map_or(Value::Null, Value::Float)
            }
            FieldType::Milliseconds => {
                let x = if required {
                    Some(f64::deserialize(d)?)
                } else {
                    Option::<f64>::deserialize(d)?
                };
                parsed(x, |x| {
                    ms_to_duration(x)
                        .map(Value::Duration)
                        .map_err(de::Error::custom)
                })?
            }
        };
        f.set(self.rec, v);
        Ok(())
    }
}

/// A whole number: an integer, or a number with no fraction (`6.0`, as JSON Schema allows
/// for `integer` and some clients write).
struct Whole(u64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Whole;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative whole number")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Whole, E> {
                Ok(Whole(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Whole, E> {
                u64::try_from(v)
                    .map(Whole)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Whole, E> {
                // Written as a float, a whole number is exact only below 2^53: past it,
                // `9007199254740993.0` would read as ...992 - another call id, silently.
                if v.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&v) {
                    Ok(Whole(v as u64))
                } else if v.fract() == 0.0 && v >= 0.0 {
                    Err(E::custom(format!(
                        "{v} written with a decimal point or an exponent is past 2^53, where a float is no longer exact: write the whole number without one"
                    )))
                } else {
                    Err(E::invalid_value(Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a string value of `f` (or its absence) and sets it in `rec`.
fn set_text(f: &Field, rec: &mut AttemptRecord, s: Option<&str>) -> Result<(), String> {
    let v = match (s, f.ty) {
        (None, _) => Value::Null,
        (Some(s), FieldType::Version) => {
            Value::Version(s.parse::<SchemaVersion>().map_err(|e| e.to_string())?)
        }
        (Some(s), FieldType::ErrorKind) => {
            Value::ErrorKind(s.parse::<ErrorKind>().map_err(|e| e.to_string())?)
        }
        (Some(s), FieldType::Outcome) => {
            Value::Outcome(s.parse::<Outcome>().map_err(|e| e.to_string())?)
        }
        (Some(s), _) => Value::Text(s),
    };
    f.set(rec, v);
    Ok(())
}

/// Hands a string value (borrowed from the input whenever it can be) to `then`; `None` for
/// `null` when the field may be missing.
fn with_str<'de, D: Deserializer<'de>>(
    d: D,
    required: bool,
    then: impl FnOnce(Option<&str>) -> Result<(), String>,
) -> Result<(), D::Error> {
    struct Str<F>(F);

    impl<F: FnOnce(Option<&str>) -> Result<(), String>> Visitor<'_> for Str<F> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
            (self.0)(Some(v)).map_err(E::custom)
        }
    }

    struct OptStr<F>(F);

    impl<'de, F: FnOnce(Option<&str>) -> Result<(), String>> Visitor<'de> for OptStr<F> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<(), E> {
            (self.0)(None).map_err(E::custom)
        }

        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            (self.0)(None).map_err(E::custom)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_str(Str(self.0))
        }
    }

    if required {
        d.deserialize_str(Str(then))
    } else {
        d.deserialize_option(OptStr(then))
    }
}

/// A key of a flat object: a field of the schema (by position), or one it does not know.
enum Key {
    Field(usize),
    Unknown(String),
}

/// Looks a key up in the schema without copying it, starting where the previous key was
/// found (fields usually come in the table's order: this module writes them so). In a
/// context, a key that is not a context field is an error naming it.
struct KeySeed {
    hint: usize,
    context_only: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        let found = (self.hint..FIELDS.len())
            .chain(0..self.hint.min(FIELDS.len()))
            .find(|&i| FIELDS[i].name == v)
            .filter(|&i| !self.context_only || FIELDS[i].in_context());
        match found {
            Some(i) => Ok(Key::Field(i)),
            None if self.context_only => Err(E::unknown_field(&super::clipped(v), CONTEXT_NAMES)),
            None => Ok(Key::Unknown(v.to_owned())),
        }
    }
}

/// Reads the fields of a flat object into `rec`: only the context's when `context_only`
/// (unknown keys refused), else every field (unknown keys kept in `rec.unknown`).
fn read_fields<'de, A: MapAccess<'de>>(
    mut map: A,
    rec: &mut AttemptRecord,
    context_only: bool,
) -> Result<(), A::Error> {
    let mut seen: u64 = 0;
    let mut hint = 0;
    while let Some(key) = map.next_key_seed(KeySeed { hint, context_only })? {
        match key {
            Key::Field(i) => {
                let f = &FIELDS[i];
                if seen & (1 << i) != 0 {
                    return Err(de::Error::duplicate_field(f.name));
                }
                seen |= 1 << i;
                hint = i + 1;
                map.next_value_seed(FieldSeed { field: f, rec })?;
            }
            // Fields of a newer minor version: kept as they came, not read.
            Key::Unknown(name) => {
                let v = map.next_value::<serde_json::Value>()?;
                let unknown = rec.unknown.get_or_insert_with(Default::default);
                if unknown.contains_key(&name) {
                    return Err(de::Error::custom(format_args!("duplicate field `{name}`")));
                }
                unknown.insert(name, v);
            }
        }
    }
    for (i, f) in FIELDS.iter().enumerate() {
        if f.presence == Presence::Required
            && seen & (1 << i) == 0
            && (!context_only || f.in_context())
        {
            return Err(de::Error::missing_field(f.name));
        }
    }
    Ok(())
}

/// The context's field names, for "unknown field" errors.
const CONTEXT_NAMES: &[&str] = &[
    "target",
    "attempt",
    "error",
    "status",
    "latency_ms",
    "elapsed_ms",
    "retry_after_ms",
    "delay_ms",
    "failure_rate",
    "latency_p95_ms",
    "in_flight",
    "health_window_ms",
    "failure_rate_recent",
    "permanent_rate",
    "since_success_ms",
    "planned_delay_ms",
    "explore_propensity",
];

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = AttemptRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an attempt record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AttemptRecord, A::Error> {
        let mut rec = AttemptRecord::blank();
        read_fields(map, &mut rec, false)?;
        Ok(rec)
    }
}

impl<'de> Deserialize<'de> for AttemptRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RecordVisitor)
    }
}

struct ContextVisitor;

impl<'de> Visitor<'de> for ContextVisitor {
    type Value = AttemptContext;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an attempt context (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AttemptContext, A::Error> {
        let mut rec = AttemptRecord::blank();
        read_fields(map, &mut rec, true)?;
        Ok(rec.context)
    }
}

impl<'de> Deserialize<'de> for AttemptContext {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ContextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::schema::context_fields;
    use crate::attempt::{Failure, Verdict};
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn context_names_are_the_schemas() {
        let names: Vec<&str> = context_fields().map(|f| f.name).collect();
        assert_eq!(names, CONTEXT_NAMES);
        assert!(FIELDS.len() < 64, "the seen-set is one u64");
    }

    fn any_kind() -> impl Strategy<Value = Option<ErrorKind>> {
        prop::option::of(prop::sample::select(ErrorKind::ALL.to_vec()))
    }

    fn any_ms() -> impl Strategy<Value = Duration> {
        (0u64..10_000_000_000).prop_map(Duration::from_micros)
    }

    prop_compose! {
        pub(crate) fn any_record()(
            started in any::<u64>(), call_id in any::<u64>(), hedge in 0u32..4,
            target in "[a-z0-9.\\-\"\\\\ é]{1,20}", attempt in 1u32..10,
            error in any_kind(), status in prop::option::of(100u16..600),
            latency in prop::option::of(any_ms()), elapsed in any_ms(),
            retry_after in prop::option::of(any_ms()), delay in any_ms(),
            failure_rate in prop::option::of(0.0f64..=1.0), p95 in prop::option::of(any_ms()),
            in_flight in prop::option::of(any::<u32>()), kind in any_kind(),
            window in prop::option::of(any_ms()),
            out_status in prop::option::of(100u16..600), out_latency in any_ms(),
            out_ra in prop::option::of(any_ms()), cancelled in any::<bool>(),
            planned in prop::option::of(any_ms()), policy in prop::option::of("[a-z\\-]{1,12}"),
            propensity in prop::option::of(1e-6f64..=1.0),
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
            ctx.health_window = window;
            ctx.planned_delay = planned;
            ctx.explore_propensity = propensity;
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
        FIELDS.iter().all(|f| match (f.get(a), f.get(b)) {
            (Value::Duration(x), Value::Duration(y)) => x.abs_diff(y) <= Duration::from_nanos(1),
            (x, y) => x == y,
        })
    }

    proptest! {
        #[test]
        fn round_trips(r in any_record()) {
            let json = serde_json::to_string(&r).unwrap();
            let back: AttemptRecord = serde_json::from_str(&json).unwrap();
            prop_assert!(close(&r, &back), "{r:?}\n{json}\n{back:?}");
            let ctx_json = serde_json::to_string(&r.context).unwrap();
            let ctx: AttemptContext = serde_json::from_str(&ctx_json).unwrap();
            let mut again = r.clone();
            again.context = ctx;
            prop_assert!(close(&r, &again), "{ctx_json}");
        }

        #[test]
        fn never_panics_on_garbage(s in ".{0,200}") {
            let _ = serde_json::from_str::<AttemptRecord>(&s);
            let _ = serde_json::from_str::<AttemptContext>(&s);
        }

        /// Objects that reach the hand-written visitor: a record's own JSON with one
        /// field set to any JSON value, or cut short anywhere. Nothing panics, and what
        /// is accepted is a record that writes and reads back as itself.
        #[test]
        fn any_value_in_any_field_is_read_or_refused(
            r in any_record(),
            field in prop::sample::select(
                FIELDS.iter().map(|f| f.name).chain(["schema_version", "zone", ""]).collect::<Vec<_>>(),
            ),
            v in any_json(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut obj = serde_json::to_value(&r).unwrap();
            obj[field] = v;
            let json = serde_json::to_string(&obj).unwrap();
            let mut end = cut.index(json.len());
            while !json.is_char_boundary(end) {
                end -= 1;
            }
            for text in [json.as_str(), &json[..end]] {
                if let Ok(read) = serde_json::from_str::<AttemptRecord>(text) {
                    let again: AttemptRecord =
                        serde_json::from_str(&serde_json::to_string(&read).unwrap()).unwrap();
                    prop_assert!(close(&read, &again), "{text}");
                }
            }
            if let Ok(ctx) = serde_json::to_value(&r.context) {
                let mut ctx = ctx;
                ctx[field] = obj[field].clone();
                let _ = serde_json::from_value::<AttemptContext>(ctx);
            }
        }
    }

    /// Any JSON value: scalars at the edges of their types, and arrays and objects of them.
    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value as Json;
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            prop_oneof![
                any::<f64>(),
                Just(-0.0),
                Just(1e300),
                Just(f64::MIN_POSITIVE)
            ]
            .prop_map(Json::from),
            "[0-9.\\-a-z\u{e9}]{0,12}".prop_map(Json::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                prop::collection::vec(("[a-z_]{0,8}", inner), 0..4)
                    .prop_map(|kv| Json::Object(kv.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn record_is_flat_in_table_order() {
        let r = crate::attempt::schema::tests::full_record();
        let json = serde_json::to_string(&r).unwrap();
        let keys: Vec<String> =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&json)
                .unwrap()
                .keys()
                .cloned()
                .collect();
        let mut want: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        want.sort_unstable();
        assert_eq!(keys, want, "serde_json's map sorts keys");
        assert!(json.starts_with(r#"{"schema_version":"1.4","started_at_ms":1764000000000,"call_id":7,"hedge":1,"policy":"exp","target":"inventory","attempt":3,"#), "{json}");
    }

    #[test]
    fn unknown_fields_are_kept_in_records_and_refused_in_contexts() {
        let line = r#"{"schema_version":"1.9","started_at_ms":5,"call_id":1,"added_in_1_9":{"x":[1,2.5,null]},"target":"t","attempt":1,
                "outcome":"success","outcome_latency_ms":2.5,"zone":"eu-1"}"#;
        let r: AttemptRecord = serde_json::from_str(line).unwrap();
        assert_eq!(r.schema_version, SchemaVersion { major: 1, minor: 9 });
        assert_eq!(r.hedge, 0);
        assert_eq!(r.context.delay, Duration::ZERO);
        assert_eq!(r.outcome_latency, Duration::from_micros(2500));
        let unknown = r.unknown.as_deref().expect("the unknown fields are kept");
        assert_eq!(unknown.len(), 2);
        assert_eq!(
            unknown["added_in_1_9"],
            serde_json::json!({"x": [1, 2.5, null]})
        );
        assert_eq!(unknown["zone"], "eu-1");
        // Written back after the known fields, as they came: nothing is lost on the way.
        let out = serde_json::to_string(&r).unwrap();
        assert!(
            out.ends_with(
                r#""outcome_latency_ms":2.5,"added_in_1_9":{"x":[1,2.5,null]},"zone":"eu-1"}"#
            ),
            "{out}"
        );
        assert_eq!(serde_json::from_str::<AttemptRecord>(&out).unwrap(), r);
        r.validate().unwrap();
        // What a newer version adds is bounded: a record is no payload.
        let mut big = r.clone();
        let limit = crate::attempt::schema::MAX_UNKNOWN_BYTES;
        big.unknown
            .as_mut()
            .unwrap()
            .insert("zone".into(), serde_json::Value::String("z".repeat(limit)));
        let e = big.validate().unwrap_err();
        assert_eq!(
            (e.field, e.rule),
            ("unknown_fields", crate::attempt::Rule::Length)
        );
        assert!(
            e.to_string().contains(&format!("at most {limit} bytes")),
            "{e}"
        );
        big.unknown.as_mut().unwrap().insert(
            "zone".into(),
            serde_json::Value::String("z".repeat(limit - 100)),
        );
        big.validate().unwrap();
        // A record of this build's version has none.
        let own: AttemptRecord = serde_json::from_str(
            &serde_json::to_string(&{
                let mut r = r.clone();
                r.unknown = None;
                r
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(own.unknown, None);
        // An unknown field twice is as wrong as a known one twice.
        let e = serde_json::from_str::<AttemptRecord>(
            r#"{"schema_version":"1.9","started_at_ms":5,"call_id":1,"target":"t","attempt":1,
                "outcome":"success","outcome_latency_ms":2.5,"zone":"a","zone":"b"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("duplicate field `zone`"), "{e}");
        let e =
            serde_json::from_str::<AttemptContext>(r#"{"target":"t","attempt":1,"dealy_ms":5}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("unknown field `dealy_ms`"), "{e}");
        let e = serde_json::from_str::<AttemptContext>(
            r#"{"target":"t","attempt":1,"outcome":"success"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `outcome`"), "{e}");
    }

    #[test]
    fn null_is_missing() {
        let c: AttemptContext = serde_json::from_str(
            r#"{"target":"t","attempt":2,"error":null,"status":null,"delay_ms":null,"elapsed_ms":null,"failure_rate":null}"#,
        )
        .unwrap();
        assert_eq!(c, {
            let mut want = AttemptContext::first("t");
            want.attempt = 2;
            want
        });
        let e =
            serde_json::from_str::<AttemptContext>(r#"{"target":null,"attempt":2}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type: null"), "{e}");
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let err = |s: &str| {
            serde_json::from_str::<AttemptRecord>(s)
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"started_at_ms":5,"call_id":1,"target":"t","attempt":1,"outcome":"success","outcome_latency_ms":1}"#).contains("missing field `schema_version`"));
        assert!(err(r#"{"schema_version":"1.0","started_at_ms":5,"call_id":1,"target":"t","attempt":1,"outcome":"success","outcome_latency_ms":-1}"#).contains("non-negative"));
        assert!(err(r#"{"schema_version":"1.0","started_at_ms":"x"}"#).contains("invalid type"));
        // A start beyond the year 9999 reads, and is invalid: it names no day (compaction
        // partitions by it).
        let far: AttemptRecord = serde_json::from_str(r#"{"schema_version":"1.0","started_at_ms":9223372036854775808,"call_id":1,"target":"t","attempt":1,"outcome":"success","outcome_latency_ms":1}"#).unwrap();
        let far = far.validate().unwrap_err().to_string();
        assert!(
            far.contains("started_at_ms") && far.contains("at most 253402300799999"),
            "{far}"
        );
        assert!(
            err(r#"{"schema_version":"1.0","schema_version":"1.0"}"#)
                .contains("duplicate field `schema_version`")
        );
        assert!(err(r#"{"schema_version":"1.0","started_at_ms":5,"call_id":1,"target":"t","attempt":1,"outcome":"maybe","outcome_latency_ms":1}"#).contains("unknown outcome `maybe`"));
        assert!(err(r#"{"schema_version":"1.0","started_at_ms":5,"call_id":1,"target":"t","attempt":1,"status":70000,"outcome":"success","outcome_latency_ms":1}"#).contains("0..=65535"));
        assert!(err(r#"{"schema_version":"1.0","started_at_ms":5,"call_id":1,"target":"t","attempt":1,"error":"http_418","outcome":"success","outcome_latency_ms":1}"#).contains("unknown error kind `http_418`"));
        assert!(err(r#"{"schema_version":"1.0","started_at_ms":5,"call_id":1,"target":"t","attempt":1.5,"outcome":"success","outcome_latency_ms":1}"#).contains("a non-negative whole number"));
        assert!(err(r#"{"schema_version":"1.0","started_at_ms":5,"call_id":1,"target":"t","attempt":-1,"outcome":"success","outcome_latency_ms":1}"#).contains("a non-negative whole number"));
        // A long unknown value is quoted in part: an error is not the value sent back.
        let long = "x".repeat(100_000);
        let e = err(&format!(
            r#"{{"schema_version":"1.0","started_at_ms":5,"call_id":1,"target":"t","attempt":1,"outcome":"{long}","outcome_latency_ms":1}}"#
        ));
        assert!(
            e.contains("unknown outcome") && e.len() < 1_000,
            "{}",
            e.len()
        );
        // A call id written as a float past 2^53 would read as another one: refused.
        assert!(err(r#"{"schema_version":"1.0","started_at_ms":5,"call_id":9007199254740993.0,"target":"t","attempt":1,"outcome":"success","outcome_latency_ms":1}"#).contains("past 2^53"));
        let exact: AttemptRecord = serde_json::from_str(r#"{"schema_version":"1.0","started_at_ms":5,"call_id":9007199254740991.0,"target":"t","attempt":1,"outcome":"success","outcome_latency_ms":1}"#).unwrap();
        assert_eq!(exact.call_id, 9_007_199_254_740_991);
        let whole: AttemptContext =
            serde_json::from_str(r#"{"target":"t","attempt":2.0,"status":503.0}"#).unwrap();
        assert_eq!(
            (whole.attempt, whole.status),
            (2, Some(503)),
            "integral numbers are whole numbers"
        );
    }
}
