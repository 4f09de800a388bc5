//! The attempt schema has one source, `retrywise::attempt::schema`: the documentation and
//! every other description of it agree with it.

#![allow(clippy::unwrap_used, missing_docs)]

use retrywise::attempt::schema::{self, FIELDS, Presence};

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
    let want: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
    assert_eq!(names, want);
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
