//! The attempt schema has one source, `retrywise::attempt::schema`: the documentation and
//! every other description of it agree with it.

#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use retrywise::attempt::schema::{self, AGREEMENTS, FIELDS, Presence, Rule};
use retrywise::attempt::{AttemptContext, AttemptRecord};
use serde_json::json;

const BEGIN: &str =
    "<!-- schema:begin (generated from retrywise::attempt::schema; tests/schema.rs checks it) -->";
const END: &str = "<!-- schema:end -->";

#[test]
fn the_readme_column_table_is_the_schemas() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let start = readme
        .find(BEGIN)
        .expect("data/README.md has the schema markers")
        + BEGIN.len();
    let end = readme[start..].find(END).expect("the end marker") + start;
    let table = readme[start..end].trim();
    let want = schema::markdown_table();
    assert_eq!(
        table,
        want.trim(),
        "data/README.md's column table differs from the schema; replace it with:\n\n{want}"
    );
}

#[test]
fn the_parquet_schema_is_the_schemas() {
    let parquet = retrywise_collect::compact::attempt_schema();
    let names: Vec<String> = parquet.iter_names().map(|n| n.to_string()).collect();
    // The schema's fields, then the fields of a newer minor version kept as they came.
    let want: Vec<&str> = FIELDS
        .iter()
        .map(|f| f.name)
        .chain([retrywise_collect::compact::UNKNOWN_FIELDS])
        .collect();
    assert_eq!(names, want);
    assert_eq!(
        parquet
            .get(retrywise_collect::compact::UNKNOWN_FIELDS)
            .unwrap()
            .to_string(),
        "str"
    );
    for f in &FIELDS {
        let dtype = parquet.get(f.name).unwrap().to_string();
        let expected = match f.storage().name() {
            "String" => "str",
            "UInt16" => "u16",
            "UInt32" => "u32",
            "UInt64" => "u64",
            _ => "f64",
        };
        assert_eq!(dtype, expected, "{}", f.name);
    }
}

#[test]
fn the_trainer_reads_every_context_field_and_requires_what_the_schema_requires() {
    let read: Vec<&str> = retrywise_train::data::fields().map(|f| f.name).collect();
    for f in schema::context_fields() {
        assert!(
            read.contains(&f.name),
            "the trainer does not read {}",
            f.name
        );
    }
    let required: Vec<&str> = retrywise_train::data::required().collect();
    // The call id is read for the split by call only; a log without it still trains (split
    // by time), so the trainer does not require it.
    assert!(read.contains(&"call_id") && !required.contains(&"call_id"));
    for f in FIELDS
        .iter()
        .filter(|f| read.contains(&f.name) && f.name != "call_id")
    {
        assert_eq!(
            required.contains(&f.name),
            f.presence == Presence::Required,
            "{}",
            f.name
        );
    }
}

#[test]
fn the_openapi_context_and_the_kserve_inputs_are_the_schemas() {
    let doc = retrywise_server::openapi(false);
    assert_eq!(
        doc["components"]["schemas"]["AttemptContext"],
        schema::context_json_schema()
    );
    assert_eq!(
        doc["components"]["schemas"]["AttemptRecord"],
        schema::record_json_schema()
    );
    let names = doc["components"]["schemas"]["InferInput"]["properties"]["name"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(
        names,
        schema::context_fields().map(|f| f.name).collect::<Vec<_>>()
    );
}

/// A JSON object with the fields the agreements between fields read, each present or
/// missing, in or out of its own range (`context`: only a context's fields; a record may
/// carry a field no version has, in a record of this build's version or a newer one).
fn any_object(context: bool) -> impl Strategy<Value = serde_json::Value> {
    let kind = prop::option::of(prop::sample::select(vec![
        "timeout", "connect", "http_429", "http_503", "other",
    ]));
    let ms = prop::option::of(prop_oneof![0.0f64..20_000.0, Just(-1.0)]);
    (
        0u32..4,
        kind.clone(),
        prop::option::of(prop_oneof![100u16..600, Just(42u16)]),
        ms.clone(),
        ms,
        prop::sample::select(vec!["success", "retryable", "permanent", "cancelled"]),
        kind,
        any::<bool>(),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            move |(
                attempt,
                error,
                status,
                latency,
                retry_after,
                outcome,
                outcome_error,
                nulls,
                (extra, newer),
            )| {
                let mut o = serde_json::Map::new();
                if !context {
                    // A field this build does not know, in a record of its version or of a
                    // newer minor one.
                    let current = retrywise::attempt::SchemaVersion::CURRENT;
                    let minor = current.minor + u16::from(newer);
                    o.insert(
                        "schema_version".into(),
                        json!(format!("{}.{minor}", current.major)),
                    );
                    if extra {
                        o.insert("zone".into(), json!("eu-1"));
                    }
                    o.insert("started_at_ms".into(), json!(1_764_000_000_000u64));
                    o.insert("call_id".into(), json!(7));
                }
                o.insert("target".into(), json!("inventory"));
                o.insert("attempt".into(), json!(attempt));
                // A missing field is left out, or written as null.
                let mut put = |name: &str, v: Option<serde_json::Value>| match v {
                    Some(v) => {
                        o.insert(name.into(), v);
                    }
                    None if nulls => {
                        o.insert(name.into(), serde_json::Value::Null);
                    }
                    None => {}
                };
                put("error", error.map(|k| json!(k)));
                put("status", status.map(|s| json!(s)));
                put("latency_ms", latency.map(|x| json!(x)));
                put("retry_after_ms", retry_after.map(|x| json!(x)));
                if !context {
                    put("outcome", Some(json!(outcome)));
                    put("outcome_error", outcome_error.map(|k| json!(k)));
                    put("outcome_latency_ms", Some(json!(12.5)));
                }
                serde_json::Value::Object(o)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// What the OpenAPI document tells a client about a record (the body of
    /// `POST /v1/attempts`) or a context (the body of a prediction or a decision) is what
    /// the service accepts: each field's own rules and the agreements between them.
    /// Schemathesis relies on it (valid data must be accepted, invalid refused), and so
    /// does every client that validates before sending.
    #[test]
    fn the_openapi_schemas_accept_what_validation_accepts(
        (context, obj) in any::<bool>().prop_flat_map(|c| any_object(c).prop_map(move |o| (c, o)))
    ) {
        let (schema, accepted) = if context {
            let accepted = serde_json::from_value::<AttemptContext>(obj.clone())
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.to_string()));
            (schema::context_json_schema(), accepted)
        } else {
            let accepted = serde_json::from_value::<AttemptRecord>(obj.clone())
                .map_err(|e| e.to_string())
                .and_then(|r| r.validate().map_err(|e| e.to_string()));
            (schema::record_json_schema(), accepted)
        };
        let validator = jsonschema::validator_for(&schema).unwrap();
        prop_assert_eq!(
            validator.is_valid(&obj),
            accepted.is_ok(),
            "{} -> {:?}",
            obj,
            accepted
        );
    }
}

/// The schema tells a client what ingestion does with a field this build does not know:
/// refused in a record of this build's version or an older one (a misspelling), kept in a
/// record of a newer minor version.
#[test]
fn unknown_fields_are_for_newer_minor_versions_only() {
    let validator = jsonschema::validator_for(&schema::record_json_schema()).unwrap();
    let record = |version: &str, extra: bool| {
        let mut o = json!({
            "schema_version": version, "started_at_ms": 1_764_000_000_000u64, "call_id": 7,
            "target": "inventory", "attempt": 1, "outcome": "success", "outcome_latency_ms": 12.5,
        });
        if extra {
            o["retry_after_m"] = json!(1000);
        }
        o
    };
    let current = retrywise::attempt::SchemaVersion::CURRENT;
    let newer = format!("{}.{}", current.major, current.minor + 1);
    for (version, extra, valid) in [
        (current.to_string(), false, true),
        (current.to_string(), true, false),
        (format!("{}.0{}", current.major, current.minor), true, false),
        (format!("{}.0", current.major), true, false),
        (newer.clone(), true, true),
        (format!("{}.{}0", current.major, current.minor), true, true),
    ] {
        assert_eq!(
            validator.is_valid(&record(&version, extra)),
            valid,
            "{version} with an unknown field: {extra}"
        );
    }
}

#[test]
fn a_record_that_contradicts_itself_is_refused_naming_the_field() {
    let rec = |attempt: u32, error: Option<&str>, outcome: &str, outcome_error: Option<&str>| {
        let mut o = json!({
            "schema_version": "1.4", "started_at_ms": 1, "call_id": 1, "target": "t",
            "attempt": attempt, "outcome": outcome, "outcome_latency_ms": 3.0,
        });
        if let Some(e) = error {
            o["error"] = json!(e);
            o["latency_ms"] = json!(2.0);
        }
        if let Some(e) = outcome_error {
            o["outcome_error"] = json!(e);
        }
        serde_json::from_value::<AttemptRecord>(o).unwrap()
    };
    // Consistent records: a first attempt that succeeded, a retry after a timeout that
    // failed with a 503, a hedge cancelled.
    for ok in [
        rec(1, None, "success", None),
        rec(2, Some("timeout"), "retryable", Some("http_503")),
        rec(3, Some("http_503"), "permanent", Some("http_4xx")),
        rec(1, None, "cancelled", None),
    ] {
        assert_eq!(ok.validate(), Ok(()), "{ok:?}");
    }
    for (bad, field, says) in [
        (
            rec(1, None, "success", Some("timeout")),
            "outcome_error",
            "must be missing when `outcome` is success or cancelled (only a failure has a kind of failure), got timeout",
        ),
        (
            rec(1, Some("connect"), "retryable", Some("connect")),
            "error",
            "must be missing when `attempt` is 1 (a first attempt has no attempt before it), got connect",
        ),
    ] {
        let e = bad.validate().unwrap_err();
        assert_eq!((e.field, e.rule), (field, Rule::Agreement), "{bad:?}");
        assert_eq!(e.problem, says);
        assert_eq!(e.reason(), format!("`{field}` contradicts another field"));
    }
    // Missing is unknown, not a contradiction: a failure without its kind, a retry without
    // the previous attempt's error.
    assert_eq!(rec(1, None, "retryable", None).validate(), Ok(()));
    assert_eq!(rec(2, None, "success", None).validate(), Ok(()));
    // A first attempt's latency or Retry-After is the previous attempt's: it has none.
    let mut first = rec(1, None, "success", None);
    first.context.latency = Some(std::time::Duration::from_millis(5));
    assert_eq!(first.validate().unwrap_err().field, "latency_ms");
    first.context.latency = None;
    first.context.retry_after = Some(std::time::Duration::from_secs(1));
    assert_eq!(first.validate().unwrap_err().field, "retry_after_ms");
    // A context may ask about a retry without saying how the attempt before failed; it
    // may not say how the attempt before a first attempt failed.
    let mut ctx = AttemptContext::first("t");
    ctx.attempt = 2;
    assert_eq!(ctx.validate(), Ok(()));
    ctx.attempt = 1;
    ctx.status = Some(503);
    assert_eq!(ctx.validate().unwrap_err().field, "status");
}

#[test]
fn every_agreement_names_a_field_of_the_schema_and_the_readme_lists_them() {
    for a in &AGREEMENTS {
        let f = schema::field(a.field).unwrap_or_else(|| panic!("{} is no field", a.field));
        // A context keeps only rules about its own fields.
        assert!(!a.in_context() || f.in_context(), "{}", a.field);
        // A field that must be missing somewhere is not required.
        assert_ne!(f.presence, Presence::Required, "{}", a.field);
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let want = schema::markdown_agreements();
    assert!(
        readme.contains(want.trim()),
        "data/README.md does not list the agreements between fields as the schema states them; add:\n\n{want}"
    );
}
