//! The attempt schema, described once.
//!
//! [`FIELDS`] lists every field of an [`AttemptRecord`] — the fields of its
//! [`AttemptContext`] among them — with its wire name, type, unit, whether it may be
//! missing, its range and its description, and how to read and write it on the Rust
//! types. Everything else is derived from this table or tested against it:
//!
//! - JSON (de)serialization of [`AttemptContext`] and [`AttemptRecord`] (`wire.rs`);
//! - validation ([`AttemptContext::validate`], [`AttemptRecord::validate`]), used by
//!   ingestion, the trainer and the HTTP API alike;
//! - the Parquet schema and the compactor's columns (`retrywise-collect`), the trainer's
//!   columns (`retrywise-train`), the OpenAPI schema of a context and the KServe v2 input
//!   tensors (`retrywise-server`), all through [`Field::storage`], [`Field::json_schema`]
//!   and [`Field::tensor`];
//! - the column table of `data/README.md` ([`markdown_table`]; a test fails when they
//!   disagree).
//!
//! Adding a field is one entry here (and the struct field it reads and writes), plus its
//! tests.
//!
//! ```
//! use retrywise::attempt::schema::{self, Part};
//!
//! let attempt = schema::field("attempt").unwrap();
//! assert_eq!(attempt.part, Part::Context);
//! assert_eq!(attempt.min, Some(1.0));
//! assert_eq!(attempt.storage().name(), "UInt32");
//! // The fields a caller sends to the HTTP API are the context's.
//! assert!(schema::context_fields().any(|f| f.name == "delay_ms"));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::ms::duration_to_ms;
use super::{AttemptContext, AttemptRecord, ErrorKind, Outcome, SchemaVersion};

/// The longest duration a field holds, in milliseconds (about 31.7 years): longer ones
/// are refused as the mistakes they are.
pub const MAX_MS: f64 = 1e12;

/// [`MAX_MS`] as a duration: the longest a record holds.
pub const MAX_DURATION: Duration = Duration::from_secs(1_000_000_000);

/// The longest text a field holds, in characters (target and policy names).
pub const MAX_TEXT: usize = 256;

/// The most bytes the fields of a newer minor version ([`AttemptRecord::unknown`]) take
/// in a record, written as JSON: a record is a few hundred bytes, and what a newer
/// version adds is of that order, not a payload.
pub const MAX_UNKNOWN_BYTES: usize = 64 << 10;

/// The longest line readers of NDJSON logs hold in memory: a line longer than this
/// (no record is: its text fields and its [unknown fields](MAX_UNKNOWN_BYTES) are bounded)
/// is skipped as no record without being read into memory whole - a file that is one
/// endless line does not exhaust memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Which part of a record a field belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Bookkeeping of the record: version, time, call, hedge, policy.
    Record,
    /// What was known before the attempt ([`AttemptContext`]): the model's input, and what
    /// callers of the HTTP API send.
    Context,
    /// How the attempt ended.
    Outcome,
}

/// The type of a field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Free text (UTF-8).
    Text,
    /// `MAJOR.MINOR`.
    Version,
    /// One of the [`ErrorKind`] wire names.
    ErrorKind,
    /// One of the [`Outcome`] wire names.
    Outcome,
    /// A whole number in `0..=65535`.
    UInt16,
    /// A whole number in `0..=4294967295`.
    UInt32,
    /// A whole number in `0..=2⁶⁴-1`.
    UInt64,
    /// A finite number.
    Float64,
    /// A duration: a finite, non-negative number of milliseconds (fractions allowed).
    Milliseconds,
}

/// How a field's values are stored in Parquet and Arrow (the compactor writes these types,
/// the trainer reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// UTF-8 strings.
    String,
    /// Unsigned 16-bit integers.
    UInt16,
    /// Unsigned 32-bit integers.
    UInt32,
    /// Unsigned 64-bit integers.
    UInt64,
    /// 64-bit floats.
    Float64,
}

impl Storage {
    /// The type's name as polars and Arrow spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Storage::String => "String",
            Storage::UInt16 => "UInt16",
            Storage::UInt32 => "UInt32",
            Storage::UInt64 => "UInt64",
            Storage::Float64 => "Float64",
        }
    }
}

impl FieldType {
    /// The Parquet/Arrow type of the field's column.
    pub const fn storage(self) -> Storage {
        match self {
            FieldType::Text | FieldType::Version | FieldType::ErrorKind | FieldType::Outcome => {
                Storage::String
            }
            FieldType::UInt16 => Storage::UInt16,
            FieldType::UInt32 => Storage::UInt32,
            FieldType::UInt64 => Storage::UInt64,
            FieldType::Float64 | FieldType::Milliseconds => Storage::Float64,
        }
    }

    /// The JSON Schema type of a value: `string`, `integer` or `number`.
    pub const fn json_type(self) -> &'static str {
        match self.storage() {
            Storage::String => "string",
            Storage::UInt16 | Storage::UInt32 | Storage::UInt64 => "integer",
            Storage::Float64 => "number",
        }
    }

    /// The largest value the type holds, for whole numbers.
    pub const fn max_whole(self) -> Option<u64> {
        match self {
            FieldType::UInt16 => Some(u16::MAX as u64),
            FieldType::UInt32 => Some(u32::MAX as u64),
            FieldType::UInt64 => Some(u64::MAX),
            _ => None,
        }
    }

    /// The names a value may take, for enumerations.
    pub fn choices(self) -> Option<Vec<&'static str>> {
        match self {
            FieldType::ErrorKind => Some(ErrorKind::ALL.iter().map(|k| k.as_str()).collect()),
            FieldType::Outcome => Some(Outcome::ALL.iter().map(|o| o.as_str()).collect()),
            _ => None,
        }
    }
}

/// Whether a field may be missing, and what a missing value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Always present.
    Required,
    /// May be missing (absent or `null`); missing means zero.
    Defaulted,
    /// May be missing (absent or `null`); missing means what the text says ("unknown",
    /// "no previous failure"...).
    Optional(&'static str),
}

impl Presence {
    /// What a missing value means, in words; `None` for a required field.
    pub const fn missing_means(self) -> Option<&'static str> {
        match self {
            Presence::Required => None,
            Presence::Defaulted => Some("0"),
            Presence::Optional(m) => Some(m),
        }
    }
}

/// How a field is carried as a KServe v2 (Open Inference Protocol) input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tensor {
    /// The tensor datatype: `BYTES`, `INT64` or `FP64`.
    pub datatype: &'static str,
    /// What an element holds when the value is missing (a dense tensor has no null).
    pub missing: &'static str,
}

/// One value of a field, borrowed from a record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// Missing (absent or null).
    Null,
    /// Text.
    Text(&'a str),
    /// Text to be shared rather than copied when set (readers that intern targets); reads
    /// never return it.
    Shared(&'a Arc<str>),
    /// A schema version.
    Version(SchemaVersion),
    /// An error kind.
    ErrorKind(ErrorKind),
    /// An outcome.
    Outcome(Outcome),
    /// A whole number.
    UInt(u64),
    /// A number.
    Float(f64),
    /// A duration.
    Duration(Duration),
}

impl Value<'_> {
    /// Whether the value is missing.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as a number, for range checks: whole numbers, numbers and milliseconds.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::UInt(n) => Some(n as f64),
            Value::Float(x) => Some(x),
            Value::Duration(d) => Some(duration_to_ms(d)),
            _ => None,
        }
    }

    /// The value as text, for strings and enumerations (versions are formatted).
    pub fn to_text(&self) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match self {
            Value::Text(s) => Some(Cow::Borrowed(s)),
            Value::Shared(s) => Some(Cow::Borrowed(s)),
            Value::ErrorKind(k) => Some(Cow::Borrowed(k.as_str())),
            Value::Outcome(o) => Some(Cow::Borrowed(o.as_str())),
            Value::Version(v) => Some(Cow::Owned(v.to_string())),
            _ => None,
        }
    }
}

impl<'a> Value<'a> {
    fn str(self) -> Option<&'a str> {
        match self {
            Value::Text(s) => Some(s),
            Value::Shared(s) => Some(s),
            _ => None,
        }
    }

    fn uint(self) -> Option<u64> {
        match self {
            Value::UInt(n) => Some(n),
            _ => None,
        }
    }

    fn float(self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(x),
            _ => None,
        }
    }

    fn duration(self) -> Option<Duration> {
        match self {
            Value::Duration(d) => Some(d),
            _ => None,
        }
    }

    fn kind(self) -> Option<ErrorKind> {
        match self {
            Value::ErrorKind(k) => Some(k),
            _ => None,
        }
    }
}

/// Reads a field from, and writes it to, the type that holds it.
#[derive(Clone, Copy)]
enum Access {
    Context {
        get: for<'a> fn(&'a AttemptContext) -> Value<'a>,
        set: fn(&mut AttemptContext, Value<'_>),
    },
    Record {
        get: for<'a> fn(&'a AttemptRecord) -> Value<'a>,
        set: fn(&mut AttemptRecord, Value<'_>),
    },
}

/// One field of the attempt schema.
#[derive(Clone, Copy)]
pub struct Field {
    /// Its name on the wire: the JSON key, the Parquet column, the tensor name.
    pub name: &'static str,
    /// The part of the record it belongs to.
    pub part: Part,
    /// The type of its values.
    pub ty: FieldType,
    /// Whether it may be missing.
    pub presence: Presence,
    /// Its unit, or `""`.
    pub unit: &'static str,
    /// The smallest value allowed (numbers), inclusive.
    pub min: Option<f64>,
    /// The largest value allowed (numbers), inclusive.
    pub max: Option<f64>,
    /// The shortest text allowed, in characters.
    pub min_len: usize,
    /// The minor version of schema 1 that added it.
    pub since: u16,
    /// What it holds.
    pub description: &'static str,
    access: Access,
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field")
            .field("name", &self.name)
            .field("part", &self.part)
            .field("ty", &self.ty)
            .field("presence", &self.presence)
            .finish_non_exhaustive()
    }
}

/// A rule of the schema a value can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// A required field is missing.
    Required,
    /// A number outside the field's range (or not finite).
    Range,
    /// Text shorter or longer than allowed.
    Length,
    /// Text with control characters (a newline, a NUL): names never hold them, and they
    /// would break the lines of logs and of the metrics' text format.
    Characters,
    /// A schema major version this build does not read.
    Version,
    /// A value that contradicts another field of the record (an [`Agreement`]).
    Agreement,
    /// A field the record's schema version does not have: only a newer minor version than
    /// this build's may add fields ([`AttemptRecord::unknown`]); in a record of this
    /// build's version or an older one it is a misspelling.
    Unknown,
}

impl Rule {
    /// The rule in words, without the value (for counting refusals by reason).
    pub const fn as_str(self) -> &'static str {
        match self {
            Rule::Required => "is required",
            Rule::Range => "is out of range",
            Rule::Length => "has the wrong length",
            Rule::Characters => "holds control characters",
            Rule::Version => "has an unsupported major version",
            Rule::Agreement => "contradicts another field",
            Rule::Unknown => "is not a field of its schema version",
        }
    }
}

impl InvalidField {
    /// The field and the rule it breaks, without the value: `` `attempt` is out of range``
    /// (what readers count skipped rows by).
    pub fn reason(&self) -> String {
        format!("`{}` {}", self.field, self.rule.as_str())
    }
}

/// A value breaks the schema's rules for its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct InvalidField {
    /// The field's wire name.
    pub field: &'static str,
    /// Which rule it breaks.
    pub rule: Rule,
    /// What is wrong with it, with the value.
    pub problem: String,
}

impl Field {
    /// The Parquet/Arrow type of its column.
    pub const fn storage(&self) -> Storage {
        self.ty.storage()
    }

    /// Whether it belongs to [`AttemptContext`].
    pub const fn in_context(&self) -> bool {
        matches!(self.part, Part::Context)
    }

    /// The field's value in `rec`.
    pub fn get<'a>(&self, rec: &'a AttemptRecord) -> Value<'a> {
        match self.access {
            Access::Context { get, .. } => get(&rec.context),
            Access::Record { get, .. } => get(rec),
        }
    }

    /// The field's value in `ctx`, or `None` for a field that is not part of the context.
    pub fn get_context<'a>(&self, ctx: &'a AttemptContext) -> Option<Value<'a>> {
        match self.access {
            Access::Context { get, .. } => Some(get(ctx)),
            Access::Record { .. } => None,
        }
    }

    /// Sets the field in `rec`. A value of another type than the field's, or a missing
    /// value of a required field, leaves a zero or empty value.
    pub fn set(&self, rec: &mut AttemptRecord, v: Value<'_>) {
        match self.access {
            Access::Context { set, .. } => set(&mut rec.context, v),
            Access::Record { set, .. } => set(rec, v),
        }
    }

    /// Sets the field in `ctx`; does nothing for a field that is not part of the context.
    pub fn set_context(&self, ctx: &mut AttemptContext, v: Value<'_>) {
        if let Access::Context { set, .. } = self.access {
            set(ctx, v);
        }
    }

    /// Checks a value against the field's rules: presence, range, length, enumeration.
    ///
    /// # Errors
    /// Names the field and what is wrong.
    pub fn check(&self, v: Value<'_>) -> Result<(), InvalidField> {
        let bad = |rule: Rule, problem: String| {
            Err(InvalidField {
                field: self.name,
                rule,
                problem,
            })
        };
        match v {
            Value::Null => {
                if self.presence == Presence::Required {
                    return bad(Rule::Required, "is required".into());
                }
            }
            // The fast paths: what parsing already guarantees is not checked again (whole
            // numbers fit their type; durations are finite and non-negative).
            Value::UInt(_) if self.min.is_none() && self.max.is_none() => {}
            Value::Duration(d) if self.min.is_none() && self.max.is_none() => {
                if d > MAX_DURATION {
                    return bad(
                        Rule::Range,
                        format!("must be at most {MAX_MS}, got {}", duration_to_ms(d)),
                    );
                }
            }
            Value::UInt(_) | Value::Float(_) | Value::Duration(_) => {
                let x = v.as_f64().unwrap_or(f64::NAN);
                if !x.is_finite() {
                    return bad(
                        Rule::Range,
                        format!("must be a finite number, got {}", shown(x)),
                    );
                }
                let (lo, hi) = self.bounds();
                match (lo, hi) {
                    // Both bounds the field's own: say both.
                    (Some(lo), Some(hi)) if self.min.is_some() && self.max.is_some() => {
                        if !(lo..=hi).contains(&x) {
                            return bad(
                                Rule::Range,
                                format!(
                                    "must be within [{}, {}], got {}",
                                    shown(lo),
                                    shown(hi),
                                    shown(x)
                                ),
                            );
                        }
                    }
                    (lo, hi) => {
                        if let Some(lo) = lo
                            && x < lo
                        {
                            return bad(
                                Rule::Range,
                                format!("must be at least {}, got {}", shown(lo), shown(x)),
                            );
                        }
                        if let Some(hi) = hi
                            && x > hi
                        {
                            return bad(
                                Rule::Range,
                                format!("must be at most {}, got {}", shown(hi), shown(x)),
                            );
                        }
                    }
                }
            }
            Value::Text(_) | Value::Shared(_) => {
                let s = v.str().unwrap_or_default();
                // Characters are counted only when bytes cannot settle it.
                if s.len() > MAX_TEXT && s.chars().count() > MAX_TEXT {
                    return bad(
                        Rule::Length,
                        format!(
                            "must have at most {MAX_TEXT} characters, got {}",
                            s.chars().count()
                        ),
                    );
                }
                if let Some(c) = s.chars().find(|c| c.is_control()) {
                    return bad(
                        Rule::Characters,
                        format!("must not hold control characters, got {c:?}"),
                    );
                }
                if self.min_len > 0
                    && (s.len() < self.min_len
                        || (self.min_len > 1 && s.chars().count() < self.min_len))
                {
                    return bad(
                        Rule::Length,
                        if self.min_len == 1 {
                            "must not be empty".into()
                        } else {
                            format!("must have at least {} characters", self.min_len)
                        },
                    );
                }
            }
            Value::Version(ver) if ver.major != SchemaVersion::CURRENT.major => {
                return bad(
                    Rule::Version,
                    format!(
                        "{ver} is not supported (this build reads {}.x)",
                        SchemaVersion::CURRENT.major
                    ),
                );
            }
            Value::Version(_) | Value::ErrorKind(_) | Value::Outcome(_) => {}
        }
        Ok(())
    }

    /// The range a value must be within, the type's own limits included: whole numbers
    /// from 0 to their type's maximum, durations from 0 to [`MAX_MS`].
    pub fn bounds(&self) -> (Option<f64>, Option<f64>) {
        let (lo, hi) = match self.ty {
            FieldType::UInt16 | FieldType::UInt32 | FieldType::UInt64 => {
                (Some(0.0), self.ty.max_whole().map(|m| m as f64))
            }
            FieldType::Milliseconds => (Some(0.0), Some(MAX_MS)),
            _ => (None, None),
        };
        (self.min.or(lo), self.max.or(hi))
    }

    /// The JSON Schema (OpenAPI 3.1) of the field's values, with its range, length,
    /// enumeration and description; a field that may be missing also accepts `null`.
    pub fn json_schema(&self) -> serde_json::Value {
        let mut s = serde_json::Map::new();
        let ty = self.ty.json_type();
        s.insert(
            "type".into(),
            if self.presence == Presence::Required {
                json!(ty)
            } else {
                json!([ty, "null"])
            },
        );
        let whole = self.ty.max_whole();
        let (lo, hi) = self.bounds();
        if let Some(m) = lo {
            s.insert("minimum".into(), number(m, whole.is_some()));
        }
        match (self.max, whole) {
            // The type's own bound, exactly (u64::MAX is not an f64).
            (None, Some(m)) => {
                s.insert("maximum".into(), json!(m));
            }
            _ => {
                if let Some(m) = hi {
                    s.insert("maximum".into(), number(m, whole.is_some()));
                }
            }
        }
        if self.ty == FieldType::UInt64 {
            s.insert("format".into(), json!("uint64"));
        }
        if self.min_len > 0 {
            s.insert("minLength".into(), json!(self.min_len));
        }
        if self.ty == FieldType::Text {
            s.insert("maxLength".into(), json!(MAX_TEXT));
            // No control characters (Unicode's Cc: what `char::is_control` refuses).
            s.insert("pattern".into(), json!(r"^[^\u0000-\u001F\u007F-\u009F]*$"));
        }
        if let Some(choices) = self.ty.choices() {
            let mut values: Vec<serde_json::Value> =
                choices.into_iter().map(|c| json!(c)).collect();
            if self.presence != Presence::Required {
                values.push(serde_json::Value::Null);
            }
            s.insert("enum".into(), serde_json::Value::Array(values));
        }
        if self.ty == FieldType::Version {
            // Only the major this build reads: another is refused.
            s.insert(
                "pattern".into(),
                json!(format!(
                    r"^{}\.(0|[1-9][0-9]{{0,3}})$",
                    SchemaVersion::CURRENT.major
                )),
            );
        }
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.unit)
        };
        let missing = self
            .presence
            .missing_means()
            .map_or(String::new(), |m| format!(" Missing means {m}."));
        s.insert(
            "description".into(),
            json!(format!(
                "{}{unit}.{missing}",
                self.description.trim_end_matches('.')
            )),
        );
        serde_json::Value::Object(s)
    }

    /// How the field travels as a KServe v2 input tensor.
    pub const fn tensor(&self) -> Tensor {
        match self.ty.storage() {
            Storage::String => Tensor {
                datatype: "BYTES",
                missing: "an empty string",
            },
            Storage::UInt16 | Storage::UInt32 | Storage::UInt64 => Tensor {
                datatype: "INT64",
                missing: "-1 (or null in JSON)",
            },
            Storage::Float64 => Tensor {
                datatype: "FP64",
                missing: "NaN (or null in JSON)",
            },
        }
    }
}

/// A bound as JSON: an integer for whole-number fields.
fn number(x: f64, whole: bool) -> serde_json::Value {
    if whole && x.fract() == 0.0 && x >= 0.0 && x < 2f64.powi(63) {
        json!(x as u64)
    } else {
        json!(x)
    }
}

// -------------------------------------------------------------------------------------
// The table.

fn arc(v: Value<'_>) -> Option<Arc<str>> {
    match v {
        Value::Shared(s) => Some(Arc::clone(s)),
        other => other.str().map(Arc::from),
    }
}

fn u16_of(v: Value<'_>) -> Option<u16> {
    v.uint().and_then(|n| u16::try_from(n).ok())
}

fn u32_of(v: Value<'_>) -> Option<u32> {
    v.uint().and_then(|n| u32::try_from(n).ok())
}

fn opt_ms(d: Option<Duration>) -> Value<'static> {
    d.map_or(Value::Null, Value::Duration)
}

fn opt_kind(k: Option<ErrorKind>) -> Value<'static> {
    k.map_or(Value::Null, Value::ErrorKind)
}

fn opt_uint(n: Option<impl Into<u64>>) -> Value<'static> {
    n.map_or(Value::Null, |n| Value::UInt(n.into()))
}

const NO_RANGE: (Option<f64>, Option<f64>) = (None, None);

/// A number as an error message shows it: in scientific notation when plain digits would
/// run long (`1e300`, not three hundred digits).
pub(crate) fn shown(x: f64) -> String {
    if x != 0.0 && x.is_finite() && (x.abs() >= 1e15 || x.abs() < 1e-6) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// The last millisecond of 9999-12-31 UTC since the Unix epoch: the latest start a record
/// may carry (compaction partitions by `date=YYYY-MM-DD`).
pub const LAST_MS_OF_9999: f64 = 253_402_300_799_999.0;

macro_rules! field {
    (
        $name:literal, $part:ident, $ty:ident, $presence:expr, unit $unit:literal,
        range $range:expr, min_len $min_len:literal, since $since:literal, $desc:literal,
        $access:ident { get: $get:expr, set: $set:expr $(,)? } $(,)?
    ) => {
        Field {
            name: $name,
            part: Part::$part,
            ty: FieldType::$ty,
            presence: $presence,
            unit: $unit,
            min: $range.0,
            max: $range.1,
            min_len: $min_len,
            since: $since,
            description: $desc,
            access: Access::$access {
                get: $get,
                set: $set,
            },
        }
    };
}

/// Every field, in wire order (the order records are written and columns stored).
pub static FIELDS: [Field; 27] = [
    field!("schema_version", Record, Version, Presence::Required, unit "", range NO_RANGE, min_len 0, since 0,
        "`MAJOR.MINOR` of the schema the record was written with, each 0 to 9999 without leading zeros (`1.4`); readers refuse unknown majors and accept any minor",
        Record { get: |r| Value::Version(r.schema_version), set: |r, v| if let Value::Version(x) = v { r.schema_version = x } }),
    field!("started_at_ms", Record, UInt64, Presence::Required, unit "ms since the Unix epoch", range (None::<f64>, Some(LAST_MS_OF_9999)), min_len 0, since 0,
        "Wall-clock start of the attempt (at most the last millisecond of 9999-12-31 UTC: the day it names is a `YYYY-MM-DD` partition)",
        Record { get: |r| Value::UInt(r.started_at_ms), set: |r, v| r.started_at_ms = v.uint().unwrap_or(0) }),
    field!("call_id", Record, UInt64, Presence::Required, unit "", range NO_RANGE, min_len 0, since 0,
        "The logical call the attempt belongs to (random per call)",
        Record { get: |r| Value::UInt(r.call_id), set: |r, v| r.call_id = v.uint().unwrap_or(0) }),
    field!("hedge", Record, UInt32, Presence::Defaulted, unit "", range NO_RANGE, min_len 0, since 0,
        "0 for the primary request of an attempt, `k` for its `k`-th hedge",
        Record { get: |r| Value::UInt(r.hedge.into()), set: |r, v| r.hedge = u32_of(v).unwrap_or(0) }),
    field!("policy", Record, Text, Presence::Optional("unknown"), unit "", range NO_RANGE, min_len 0, since 1,
        "The name of the policy that made the attempt",
        Record { get: |r| r.policy.as_deref().map_or(Value::Null, Value::Text), set: |r, v| r.policy = arc(v) }),
    field!("target", Context, Text, Presence::Required, unit "", range NO_RANGE, min_len 1, since 0,
        "The logical name of what is called (a service, host or endpoint)",
        Context { get: |c| Value::Text(&c.target), set: |c, v| c.target = arc(v).unwrap_or_else(|| Arc::from("")) }),
    field!("attempt", Context, UInt32, Presence::Required, unit "", range (Some(1.0), None::<f64>), min_len 0, since 0,
        "The number of the attempt, from 1",
        Context { get: |c| Value::UInt(c.attempt.into()), set: |c, v| c.attempt = u32_of(v).unwrap_or(0) }),
    field!("error", Context, ErrorKind, Presence::Optional("no previous failure (the first attempt)"), unit "", range NO_RANGE, min_len 0, since 0,
        "How the previous attempt failed",
        Context { get: |c| opt_kind(c.error), set: |c, v| c.error = v.kind() }),
    field!("status", Context, UInt16, Presence::Optional("no status (no answer, or a first attempt)"), unit "", range (Some(100.0), Some(599.0)), min_len 0, since 0,
        "The previous attempt's HTTP status",
        Context { get: |c| opt_uint(c.status), set: |c, v| c.status = u16_of(v) }),
    field!("latency_ms", Context, Milliseconds, Presence::Optional("no previous attempt"), unit "ms", range NO_RANGE, min_len 0, since 0,
        "How long the previous attempt took",
        Context { get: |c| opt_ms(c.latency), set: |c, v| c.latency = v.duration() }),
    field!("elapsed_ms", Context, Milliseconds, Presence::Defaulted, unit "ms", range NO_RANGE, min_len 0, since 0,
        "Time since the call's first attempt started",
        Context { get: |c| Value::Duration(c.elapsed), set: |c, v| c.elapsed = v.duration().unwrap_or_default() }),
    field!("retry_after_ms", Context, Milliseconds, Presence::Optional("no Retry-After"), unit "ms", range NO_RANGE, min_len 0, since 0,
        "The wait the upstream asked for (Retry-After) on the previous attempt",
        Context { get: |c| opt_ms(c.retry_after), set: |c, v| c.retry_after = v.duration() }),
    field!("delay_ms", Context, Milliseconds, Presence::Defaulted, unit "ms", range NO_RANGE, min_len 0, since 0,
        "The wait before this attempt (for a prediction: the wait being considered)",
        Context { get: |c| Value::Duration(c.delay), set: |c, v| c.delay = v.duration().unwrap_or_default() }),
    field!("failure_rate", Context, Float64, Presence::Optional("unknown (no attempt ended within the window)"), unit "[0, 1]", range (Some(0.0), Some(1.0)), min_len 0, since 0,
        "The target's recent failure rate: retryable failures among the attempts that ended within the health window",
        Context { get: |c| c.failure_rate.map_or(Value::Null, Value::Float), set: |c, v| c.failure_rate = v.float() }),
    field!("latency_p95_ms", Context, Milliseconds, Presence::Optional("unknown (no attempt ended within the window)"), unit "ms", range NO_RANGE, min_len 0, since 0,
        "The target's recent 95th-percentile latency, of the attempts that ended within the health window",
        Context { get: |c| opt_ms(c.latency_p95), set: |c, v| c.latency_p95 = v.duration() }),
    field!("in_flight", Context, UInt32, Presence::Optional("unknown"), unit "calls", range NO_RANGE, min_len 0, since 0,
        "Calls to the target in flight, on average over the health window: the latencies of the attempts that ended within it, summed, over its length (Little's law; before 1.2, the count at the moment)",
        Context { get: |c| opt_uint(c.in_flight), set: |c, v| c.in_flight = u32_of(v) }),
    field!("health_window_ms", Context, Milliseconds, Presence::Optional("unknown"), unit "ms", range NO_RANGE, min_len 0, since 2,
        "The health window over which failure_rate, latency_p95_ms and in_flight were measured",
        Context { get: |c| opt_ms(c.health_window), set: |c, v| c.health_window = v.duration() }),
    field!("failure_rate_recent", Context, Float64, Presence::Optional("unknown (no attempt ended in the window's last two tenths)"), unit "[0, 1]", range (Some(0.0), Some(1.0)), min_len 0, since 3,
        "The target's failure rate over the last two tenths of the health window (its current and previous bucket: 1-2 s of a 10 s window), shrunk towards the window's rate by what chance explains of their difference (retrywise::health::recent_failure_rate; records written before 2026-12-03 carry the raw rate); it follows a recovery the window's rate still lags",
        Context { get: |c| c.failure_rate_recent.map_or(Value::Null, Value::Float), set: |c, v| c.failure_rate_recent = v.float() }),
    field!("permanent_rate", Context, Float64, Presence::Optional("unknown (no attempt ended within the window)"), unit "[0, 1]", range (Some(0.0), Some(1.0)), min_len 0, since 3,
        "Permanent failures (invalid requests: a 400, a 404) among the attempts that ended within the health window",
        Context { get: |c| c.permanent_rate.map_or(Value::Null, Value::Float), set: |c, v| c.permanent_rate = v.float() }),
    field!("since_success_ms", Context, Milliseconds, Presence::Optional("unknown"), unit "ms", range NO_RANGE, min_len 0, since 3,
        "Time since an attempt to the target last succeeded (since health tracking started, before the first): how long an outage has lasted so far",
        Context { get: |c| opt_ms(c.since_success), set: |c, v| c.since_success = v.duration() }),
    field!("planned_delay_ms", Context, Milliseconds, Presence::Optional("the delay was not explored"), unit "ms", range NO_RANGE, min_len 0, since 1,
        "The delay the decider chose, when exploration changed it into delay_ms",
        Context { get: |c| opt_ms(c.planned_delay), set: |c, v| c.planned_delay = v.duration() }),
    field!("explore_propensity", Context, Float64, Presence::Optional("the decision to make this attempt did not explore"), unit "[0, 1]", range (Some(0.0), Some(1.0)), min_len 0, since 4,
        "The chance with which the decision to make this attempt was drawn, when the decider explored (it judged no retry worth an attempt and retried anyway, after a wait drawn uniformly among those weighed: the explore share over the waits weighed), so that what each wait does can be estimated without bias; the decider's are above 0, and a reader weighing by its inverse skips a 0",
        Context { get: |c| c.explore_propensity.map_or(Value::Null, Value::Float), set: |c, v| c.explore_propensity = v.float() }),
    field!("outcome", Outcome, Outcome, Presence::Required, unit "", range NO_RANGE, min_len 0, since 0,
        "How the attempt ended (`cancelled`: a hedge that lost, or a call its caller abandoned; the training label is `success`)",
        Record { get: |r| Value::Outcome(r.outcome), set: |r, v| if let Value::Outcome(o) = v { r.outcome = o } }),
    field!("outcome_error", Outcome, ErrorKind, Presence::Optional("none (a success, or cancelled), or not known"), unit "", range NO_RANGE, min_len 0, since 0,
        "The kind of failure of this attempt",
        Record { get: |r| opt_kind(r.outcome_error), set: |r, v| r.outcome_error = v.kind() }),
    field!("outcome_status", Outcome, UInt16, Presence::Optional("no status"), unit "", range (Some(100.0), Some(599.0)), min_len 0, since 0,
        "This attempt's HTTP status",
        Record { get: |r| opt_uint(r.outcome_status), set: |r, v| r.outcome_status = u16_of(v) }),
    field!("outcome_latency_ms", Outcome, Milliseconds, Presence::Required, unit "ms", range NO_RANGE, min_len 0, since 0,
        "How long this attempt took",
        Record { get: |r| Value::Duration(r.outcome_latency), set: |r, v| r.outcome_latency = v.duration().unwrap_or_default() }),
    field!("outcome_retry_after_ms", Outcome, Milliseconds, Presence::Optional("no Retry-After"), unit "ms", range NO_RANGE, min_len 0, since 0,
        "The wait this attempt's answer asked for (Retry-After)",
        Record { get: |r| opt_ms(r.outcome_retry_after), set: |r, v| r.outcome_retry_after = v.duration() }),
];

/// The field named `name`.
pub fn field(name: &str) -> Option<&'static Field> {
    index(name).map(|i| &FIELDS[i])
}

/// The position of the field named `name` in [`FIELDS`].
pub fn index(name: &str) -> Option<usize> {
    FIELDS.iter().position(|f| f.name == name)
}

/// The fields of [`AttemptContext`], in wire order: what the HTTP API takes as a context.
pub fn context_fields() -> impl Iterator<Item = &'static Field> {
    FIELDS.iter().filter(|f| f.in_context())
}

/// Checks every field of `rec`, then the [`AGREEMENTS`] between them.
pub(crate) fn validate_record(rec: &AttemptRecord) -> Result<(), InvalidField> {
    FIELDS.iter().try_for_each(|f| f.check(f.get(rec)))?;
    check_agreements(rec)?;
    check_unknown(rec)
}

/// A field this build does not know is kept only in a record of a newer minor version
/// (which adds fields); in one of this build's version or an older one it is a misspelling,
/// which would be written without the value it was meant to carry. Named `unknown_fields`
/// after the column such fields are kept in. They take at most [`MAX_UNKNOWN_BYTES`].
fn check_unknown(rec: &AttemptRecord) -> Result<(), InvalidField> {
    let current = SchemaVersion::CURRENT;
    match rec.unknown.as_ref().and_then(|u| u.keys().next()) {
        Some(name) if rec.schema_version.minor <= current.minor => Err(InvalidField {
            field: "unknown_fields",
            rule: Rule::Unknown,
            problem: format!(
                "`{}` is not a field of schema_version {} (only a newer minor version than this build's {current} may add fields)",
                super::clipped(name),
                rec.schema_version
            ),
        }),
        Some(_) => {
            let size = json_size(rec.unknown.as_deref());
            if size > MAX_UNKNOWN_BYTES {
                return Err(InvalidField {
                    field: "unknown_fields",
                    rule: Rule::Length,
                    problem: format!(
                        "the fields of a newer minor version take at most {MAX_UNKNOWN_BYTES} bytes as JSON, got {size}"
                    ),
                });
            }
            Ok(())
        }
        None => Ok(()),
    }
}

/// How many bytes `value` takes written as JSON (without writing it anywhere).
fn json_size(value: impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a JSON map to a writer that takes every byte cannot fail.
    let _ = serde_json::to_writer(&mut count, &value);
    count.0
}

/// Checks every field of `ctx`, then the [`AGREEMENTS`] a context must keep.
pub(crate) fn validate_context(ctx: &AttemptContext) -> Result<(), InvalidField> {
    context_fields().try_for_each(|f| f.check(f.get_context(ctx).unwrap_or(Value::Null)))?;
    AGREEMENTS
        .iter()
        .filter(|a| a.in_context())
        .try_for_each(|a| a.check_context(ctx))
}

// -------------------------------------------------------------------------------------
// Agreements between fields.

/// When an [`Agreement`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// `attempt` is 1: the call's first attempt, with no attempt before it.
    FirstAttempt,
    /// `outcome` is one of these.
    Outcome(&'static [Outcome]),
}

impl When {
    fn holds(self, attempt: u32, outcome: Option<Outcome>) -> bool {
        match self {
            When::FirstAttempt => attempt == 1,
            When::Outcome(set) => outcome.is_some_and(|o| set.contains(&o)),
        }
    }

    /// The condition in words: "`attempt` is 1".
    fn describe(self) -> String {
        match self {
            When::FirstAttempt => "`attempt` is 1".into(),
            When::Outcome(set) => {
                let names: Vec<&str> = set.iter().map(|o| o.as_str()).collect();
                format!("`outcome` is {}", names.join(" or "))
            }
        }
    }

    /// The condition as a JSON Schema (the `if` of an `if`/`then`).
    fn json_schema(self) -> serde_json::Value {
        match self {
            When::FirstAttempt => {
                json!({"properties": {"attempt": {"const": 1}}, "required": ["attempt"]})
            }
            When::Outcome(set) => {
                let names: Vec<&str> = set.iter().map(|o| o.as_str()).collect();
                json!({"properties": {"outcome": {"enum": names}}, "required": ["outcome"]})
            }
        }
    }
}

/// A rule between fields that each field's own rules cannot state: when a condition on
/// one field holds, another must be missing. A value that breaks one
/// contradicts another value of the same record: a success with a kind of failure, a first
/// attempt that says how the attempt before it failed. Such a record would teach the
/// model from something that did not happen, so ingestion refuses it (naming the field and
/// the rule), the trainer skips it (counted under the rule), and the OpenAPI schema states
/// each rule as an `if`/`then`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// When the rule applies.
    pub when: When,
    /// The field that must then be missing.
    pub field: &'static str,
    /// Why, in a few words.
    pub why: &'static str,
}

const DONE: &[Outcome] = &[Outcome::Success, Outcome::Cancelled];

/// Every agreement between fields, checked after each field's own rules.
///
/// Only contradictions are refused. A failure without its kind is not one (the kind may be
/// unknown to whoever logged it), nor a retry that does not say how the attempt before
/// it failed (a prediction may ask about one): missing there means unknown.
pub static AGREEMENTS: [Agreement; 5] = [
    Agreement {
        when: When::FirstAttempt,
        field: "error",
        why: "a first attempt has no attempt before it",
    },
    Agreement {
        when: When::FirstAttempt,
        field: "status",
        why: "a first attempt has no attempt before it",
    },
    Agreement {
        when: When::FirstAttempt,
        field: "latency_ms",
        why: "a first attempt has no attempt before it",
    },
    Agreement {
        when: When::FirstAttempt,
        field: "retry_after_ms",
        why: "a first attempt has no attempt before it",
    },
    Agreement {
        when: When::Outcome(DONE),
        field: "outcome_error",
        why: "only a failure has a kind of failure",
    },
];

impl Agreement {
    /// Whether a context keeps it: every field it reads is the context's (a rule about
    /// the outcome is a record's only).
    pub fn in_context(&self) -> bool {
        !matches!(self.when, When::Outcome(_)) && self.field().in_context()
    }

    fn field(&self) -> &'static Field {
        // Every agreement names a field of the table (a test checks it).
        field(self.field).unwrap_or(&FIELDS[0])
    }

    fn check_values(
        &self,
        attempt: u32,
        outcome: Option<Outcome>,
        v: Value<'_>,
    ) -> Result<(), InvalidField> {
        if v.is_null() || !self.when.holds(attempt, outcome) {
            return Ok(());
        }
        let got = v
            .to_text()
            .map(|t| t.into_owned())
            .or_else(|| v.as_f64().map(|x| x.to_string()))
            .unwrap_or_default();
        let problem = format!(
            "must be missing when {} ({}), got {got}",
            self.when.describe(),
            self.why
        );
        Err(InvalidField {
            field: self.field,
            rule: Rule::Agreement,
            problem,
        })
    }

    /// Checks the rule on a record.
    ///
    /// # Errors
    /// Names the field that contradicts the condition.
    pub fn check(&self, rec: &AttemptRecord) -> Result<(), InvalidField> {
        self.check_values(
            rec.context.attempt,
            Some(rec.outcome),
            self.field().get(rec),
        )
    }

    /// Checks the rule on a context (a rule about the outcome never applies to one).
    ///
    /// # Errors
    /// Names the field that contradicts the condition.
    pub fn check_context(&self, ctx: &AttemptContext) -> Result<(), InvalidField> {
        let v = self.field().get_context(ctx).unwrap_or(Value::Null);
        self.check_values(ctx.attempt, None, v)
    }

    /// The rule as a JSON Schema `if`/`then`.
    pub fn json_schema(&self) -> serde_json::Value {
        json!({
            "if": self.when.json_schema(),
            "then": {"properties": {self.field: {"type": "null"}}},
        })
    }

    /// The rule in words, for the documentation: "when `attempt` is 1, `error` is missing:
    /// a first attempt has no attempt before it".
    pub fn describe(&self) -> String {
        format!(
            "when {}, `{}` is missing: {}",
            self.when.describe(),
            self.field,
            self.why
        )
    }
}

/// Checks every agreement on a record (what [`AttemptRecord::validate`] does after each
/// field's own rules; readers that check field by field call this after them).
///
/// # Errors
/// Names the first field that contradicts another.
pub fn check_agreements(rec: &AttemptRecord) -> Result<(), InvalidField> {
    AGREEMENTS.iter().try_for_each(|a| a.check(rec))
}

/// The JSON Schema (OpenAPI 3.1) of a context object: every context field with its range,
/// the required ones listed, unknown fields refused.
pub fn context_json_schema() -> serde_json::Value {
    object_schema(
        context_fields(),
        AGREEMENTS.iter().filter(|a| a.in_context()),
        true,
        "What is known before an attempt: the input of every prediction and decision. Durations are milliseconds.",
    )
}

/// The JSON Schema of an attempt record (unknown fields of a newer minor version are
/// accepted, and kept: [`AttemptRecord::unknown`]).
pub fn record_json_schema() -> serde_json::Value {
    let mut schema = object_schema(
        FIELDS.iter(),
        AGREEMENTS.iter(),
        false,
        "One attempt: what was known before it, and how it ended (see data/README.md).",
    );
    // Only a newer minor version adds fields: a record of this build's version or an older
    // one has none but the schema's (another is a misspelling, and ingestion refuses it).
    let current = SchemaVersion::CURRENT;
    let minors: Vec<String> = (0..=current.minor).map(|m| m.to_string()).collect();
    let names: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
    if let Some(all) = schema.get_mut("allOf").and_then(|a| a.as_array_mut()) {
        all.push(json!({
            "description": "A record of this build's schema version or an older one has only the fields above (a newer minor version may add some).",
            "if": {
                "required": ["schema_version"],
                "properties": {"schema_version": {
                    "type": "string",
                    "pattern": format!(r"^{}\.0*({})$", current.major, minors.join("|")),
                }},
            },
            "then": {"propertyNames": {"enum": names}},
        }));
    }
    schema
}

fn object_schema<'a>(
    fields: impl Iterator<Item = &'a Field>,
    agreements: impl Iterator<Item = &'a Agreement>,
    closed: bool,
    description: &str,
) -> serde_json::Value {
    let mut props = serde_json::Map::new();
    let mut required = Vec::new();
    for f in fields {
        props.insert(f.name.into(), f.json_schema());
        if f.presence == Presence::Required {
            required.push(json!(f.name));
        }
    }
    json!({
        "type": "object",
        "description": description,
        "properties": props,
        "required": required,
        "additionalProperties": !closed,
        "allOf": agreements.map(Agreement::json_schema).collect::<Vec<_>>(),
    })
}

/// The agreements between fields as `data/README.md` lists them: one line each.
pub fn markdown_agreements() -> String {
    AGREEMENTS
        .iter()
        .map(|a| {
            let scope = if a.in_context() {
                ""
            } else {
                " (records only)"
            };
            format!("- {}{scope}.\n", a.describe())
        })
        .collect()
}

/// The column table of `data/README.md`, one row per field: name, JSON and Parquet type,
/// unit, meaning.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| column | JSON type (Parquet type) | unit | meaning |\n|---|---|---|---|\n");
    for f in &FIELDS {
        let json = match f.ty {
            FieldType::UInt16 => "u16",
            FieldType::UInt32 => "u32",
            FieldType::UInt64 => "u64",
            FieldType::Float64 | FieldType::Milliseconds => "f64",
            _ => "string",
        };
        let optional = if f.presence == Presence::Required {
            ""
        } else {
            "?"
        };
        let unit = if f.unit.is_empty() { "—" } else { f.unit };
        let mut meaning = f.description.to_owned();
        if let Some(choices) = f.ty.choices() {
            let list: Vec<String> = choices.iter().map(|c| format!("`{c}`")).collect();
            meaning.push_str(&format!(": {}", list.join(", ")));
        }
        if let Some(lo) = f.min {
            match f.max {
                Some(hi) => meaning.push_str(&format!("; within [{lo}, {hi}]")),
                None => meaning.push_str(&format!("; at least {lo}")),
            }
        }
        if f.min_len > 0 {
            meaning.push_str("; not empty");
        }
        if f.ty == FieldType::Text {
            meaning.push_str(&format!(
                "; at most {MAX_TEXT} characters, no control characters"
            ));
        }
        if let Some(m) = f.presence.missing_means() {
            meaning.push_str(&format!("; missing: {m}"));
        }
        if f.since > 0 {
            meaning.push_str(&format!(" (since 1.{})", f.since));
        }
        out.push_str(&format!(
            "| `{}` | {json}{optional} ({}) | {unit} | {meaning} |\n",
            f.name,
            f.storage().name(),
        ));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attempt::{Failure, Verdict};

    /// A record with every field set to a value other than its default.
    pub(crate) fn full_record() -> AttemptRecord {
        let mut ctx = AttemptContext::first("inventory");
        ctx.attempt = 3;
        ctx.error = Some(ErrorKind::Http503);
        ctx.status = Some(503);
        ctx.latency = Some(Duration::from_millis(12));
        ctx.elapsed = Duration::from_millis(420);
        ctx.retry_after = Some(Duration::from_secs(1));
        ctx.delay = Duration::from_millis(250);
        ctx.failure_rate = Some(0.25);
        ctx.latency_p95 = Some(Duration::from_millis(80));
        ctx.in_flight = Some(4);
        ctx.health_window = Some(Duration::from_secs(10));
        ctx.failure_rate_recent = Some(0.5);
        ctx.permanent_rate = Some(0.125);
        ctx.since_success = Some(Duration::from_millis(1500));
        ctx.planned_delay = Some(Duration::from_millis(125));
        ctx.explore_propensity = Some(0.03125);
        let verdict = Verdict::Retryable(
            Failure::new(ErrorKind::Timeout)
                .with_status(408)
                .with_retry_after(Duration::from_millis(700)),
        );
        let mut r = AttemptRecord::new(
            7,
            1,
            1_764_000_000_000,
            ctx,
            &verdict,
            Duration::from_millis(30),
        );
        r.policy = Some(Arc::from("exp"));
        r
    }

    #[test]
    fn names_are_unique_and_snake_case() {
        for (i, f) in FIELDS.iter().enumerate() {
            assert_eq!(index(f.name), Some(i), "{} is listed twice", f.name);
            assert!(
                f.name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c == b'_' || c.is_ascii_digit())
            );
            assert_eq!(
                f.ty == FieldType::Milliseconds,
                f.name.ends_with("_ms") && f.name != "started_at_ms",
                "{}: every duration, and only durations, are `_ms`",
                f.name
            );
            assert!(f.since <= SchemaVersion::CURRENT.minor);
        }
        assert!(
            FIELDS
                .iter()
                .any(|f| f.since == SchemaVersion::CURRENT.minor),
            "the current minor added a field"
        );
    }

    #[test]
    fn every_field_reads_what_it_writes() {
        let full = full_record();
        let mut empty = AttemptRecord::new(
            0,
            0,
            0,
            AttemptContext::first("x"),
            &Verdict::Success,
            Duration::ZERO,
        );
        empty.schema_version = SchemaVersion { major: 0, minor: 0 };
        for f in &FIELDS {
            let v = f.get(&full);
            assert!(!v.is_null(), "{}: the full record sets every field", f.name);
            assert_ne!(
                f.get(&empty),
                v,
                "{}: differs from the empty record",
                f.name
            );
            f.set(&mut empty, v);
            assert_eq!(f.get(&empty), v, "{}", f.name);
            assert_eq!(
                f.get_context(&full.context).is_some(),
                f.in_context(),
                "{}",
                f.name
            );
        }
        assert_eq!(
            empty, full,
            "setting every field rebuilds the record: no field is missing from the table"
        );
        for f in FIELDS.iter().filter(|f| f.presence != Presence::Required) {
            f.set(&mut empty, Value::Null);
            assert!(
                f.get(&empty).is_null() || f.presence == Presence::Defaulted,
                "{}",
                f.name
            );
        }
    }

    #[test]
    fn checks_name_the_field() {
        let mut r = full_record();
        assert_eq!(r.validate(), Ok(()));
        r.context.attempt = 0;
        assert_eq!(r.validate().unwrap_err().field, "attempt");
        r.context.attempt = 1;
        r.context.target = Arc::from("");
        let e = r.validate().unwrap_err();
        assert_eq!(
            (e.field, e.problem.as_str()),
            ("target", "must not be empty")
        );
        for name in ["a\nb", "\u{0}", "tab\there"] {
            r.context.target = Arc::from(name);
            let e = r.validate().unwrap_err();
            assert_eq!((e.field, e.rule), ("target", Rule::Characters), "{name:?}");
        }
        r.context.target = Arc::from("t");
        r.outcome_status = Some(42);
        assert_eq!(r.validate().unwrap_err().field, "outcome_status");
        r.outcome_status = None;
        r.context.failure_rate = Some(f64::NAN);
        assert_eq!(r.validate().unwrap_err().field, "failure_rate");
        r.context.failure_rate = Some(1.5);
        assert_eq!(r.validate().unwrap_err().field, "failure_rate");
        r.context.failure_rate = None;
        r.context.delay = Duration::from_secs(40 * 365 * 86_400);
        assert_eq!(r.validate().unwrap_err().field, "delay_ms");
        r.context.delay = Duration::ZERO;
        r.schema_version = SchemaVersion { major: 2, minor: 0 };
        assert_eq!(r.validate().unwrap_err().field, "schema_version");
    }

    #[test]
    fn json_schema_carries_the_ranges() {
        let s = context_json_schema();
        assert_eq!(s["required"], json!(["target", "attempt"]));
        assert_eq!(s["additionalProperties"], json!(false));
        let p = &s["properties"];
        assert_eq!(p["attempt"]["minimum"], json!(1));
        assert_eq!(p["attempt"]["maximum"], json!(u32::MAX));
        assert_eq!(p["status"]["minimum"], json!(100));
        assert_eq!(p["status"]["maximum"], json!(599));
        assert_eq!(p["status"]["type"], json!(["integer", "null"]));
        assert_eq!(p["target"]["minLength"], json!(1));
        assert_eq!(p["failure_rate"]["maximum"], json!(1.0));
        assert_eq!(p["delay_ms"]["minimum"], json!(0.0));
        assert_eq!(p["delay_ms"]["maximum"], json!(MAX_MS));
        assert_eq!(
            record_json_schema()["properties"]["call_id"]["maximum"],
            json!(u64::MAX)
        );
        assert_eq!(
            p["error"]["enum"].as_array().map(Vec::len),
            Some(ErrorKind::ALL.len() + 1)
        );
        assert!(p.get("outcome").is_none(), "a context has no outcome");
        let r = record_json_schema();
        assert_eq!(
            r["properties"].as_object().map(|o| o.len()),
            Some(FIELDS.len())
        );
    }

    #[test]
    fn markdown_table_has_a_row_per_field() {
        let t = markdown_table();
        assert_eq!(t.lines().count(), FIELDS.len() + 2);
        assert!(
            t.contains(
                "| `attempt` | u32 (UInt32) | — | The number of the attempt, from 1; at least 1 |"
            ),
            "{t}"
        );
    }

    #[test]
    fn tensors() {
        assert_eq!(field("error").map(|f| f.tensor().datatype), Some("BYTES"));
        assert_eq!(field("attempt").map(|f| f.tensor().datatype), Some("INT64"));
        assert_eq!(field("delay_ms").map(|f| f.tensor().datatype), Some("FP64"));
    }
}
