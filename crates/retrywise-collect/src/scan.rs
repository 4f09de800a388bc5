//! A fast path for reading attempt records: a scanner for the flat JSON objects the
//! collector writes, which hands anything unusual to serde.
//!
//! It returns a record only when the line is a valid record it fully understood (a flat
//! object of strings without escapes, numbers and nulls); for everything else — escapes,
//! nested values, bad numbers, missing or duplicate fields, out-of-range values — it steps
//! aside, and serde decides, so errors read exactly the same. Fields are looked up in the
//! schema table ([`retrywise::attempt::schema::FIELDS`]) and set through it, as serde does.
//! A property test checks that both paths agree on records and on garbage; a benchmark
//! (`cargo bench -p retrywise-benches --bench collect -- read`) keeps it honest.

use std::sync::Arc;

use retrywise::attempt::schema::{FIELDS, Field, FieldType, Presence, Value};
use retrywise::attempt::{AttemptRecord, ErrorKind, Outcome, SchemaVersion, ms_to_duration};

/// Remembers recently seen strings (targets, policy names) so that records of the same
/// target share one allocation.
#[derive(Debug, Default)]
pub struct TargetCache {
    recent: Vec<Arc<str>>,
}

impl TargetCache {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(i) = self.recent.iter().position(|t| &**t == s) {
            if i > 0 {
                self.recent.swap(0, i);
            }
            return Arc::clone(&self.recent[0]);
        }
        let t: Arc<str> = Arc::from(s);
        if self.recent.len() == 8 {
            self.recent.pop();
        }
        self.recent.insert(0, Arc::clone(&t));
        t
    }
}

/// Reads a record from one JSON line (the collector's format), sharing target strings
/// through `cache`.
///
/// # Errors
/// The same errors, with the same messages, as `serde_json::from_slice`.
pub fn record_from_json(
    bytes: &[u8],
    cache: &mut TargetCache,
) -> Result<AttemptRecord, serde_json::Error> {
    match (Scanner { b: bytes, i: 0 }).record(cache) {
        Some(r) => Ok(r),
        None => serde_json::from_slice(bytes),
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

#[derive(Clone, Copy)]
enum Raw<'a> {
    /// The bytes between the quotes (no escapes, no control characters; UTF-8 not yet
    /// checked).
    Str(&'a [u8]),
    Num(&'a str),
    Null,
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether `s` is a JSON number.
fn json_number(s: &[u8]) -> bool {
    let mut i = 0;
    if s.first() == Some(&b'-') {
        i += 1;
    }
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while s.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        if !s.get(i).is_some_and(u8::is_ascii_digit) {
            return false;
        }
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !s.get(i).is_some_and(u8::is_ascii_digit) {
            return false;
        }
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    i == s.len()
}

/// A non-negative JSON integer without fraction or exponent (what serde reads as u64).
fn uint(s: &str) -> Option<u64> {
    if s.bytes().all(|c| c.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// A finite number (serde refuses numbers beyond f64's range; `parse` would give inf).
fn float(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Sets `field` from a raw value the way serde would, or `None` when serde must decide.
fn set(
    field: &Field,
    raw: Raw<'_>,
    rec: &mut AttemptRecord,
    cache: &mut TargetCache,
) -> Option<()> {
    let v = match raw {
        Raw::Null if field.presence == Presence::Required => return None,
        Raw::Null => Value::Null,
        Raw::Str(bytes) => {
            let s = std::str::from_utf8(bytes).ok()?;
            match field.ty {
                FieldType::Text => {
                    // Shared, not copied: the cache hands out the same `Arc` per target.
                    field.set(rec, Value::Shared(&cache.get(s)));
                    return Some(());
                }
                FieldType::Version => Value::Version(s.parse::<SchemaVersion>().ok()?),
                FieldType::ErrorKind => Value::ErrorKind(s.parse::<ErrorKind>().ok()?),
                FieldType::Outcome => Value::Outcome(s.parse::<Outcome>().ok()?),
                _ => return None,
            }
        }
        Raw::Num(s) => match field.ty {
            FieldType::UInt16 | FieldType::UInt32 | FieldType::UInt64 => {
                let n = uint(s)?;
                (n <= field.ty.max_whole()?).then_some(Value::UInt(n))?
            }
            FieldType::Float64 => Value::Float(float(s)?),
            FieldType::Milliseconds => Value::Duration(ms_to_duration(float(s)?).ok()?),
            _ => return None,
        },
    };
    field.set(rec, v);
    Some(())
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while self.b.get(self.i).copied().is_some_and(is_ws) {
            self.i += 1;
        }
    }

    fn byte(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// The bytes of a string without escapes or control characters.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.byte(b'"')?;
        let start = self.i;
        let len = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        self.i = start + len;
        if self.b[self.i] != b'"' {
            return None;
        }
        self.i += 1;
        Some(&self.b[start..start + len])
    }

    fn value(&mut self) -> Option<Raw<'a>> {
        self.ws();
        match *self.b.get(self.i)? {
            b'"' => self.string().map(Raw::Str),
            b'n' => {
                let end = self.i + 4;
                (self.b.get(self.i..end)? == b"null").then(|| {
                    self.i = end;
                    Raw::Null
                })
            }
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while self
                    .b
                    .get(self.i)
                    .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    self.i += 1;
                }
                let s = &self.b[start..self.i];
                json_number(s).then(|| Raw::Num(std::str::from_utf8(s).unwrap_or_default()))
            }
            // Booleans, arrays, objects: not ours to judge here.
            _ => None,
        }
    }

    fn record(&mut self, cache: &mut TargetCache) -> Option<AttemptRecord> {
        let mut rec = AttemptRecord::blank();
        let mut seen: u64 = 0;
        self.byte(b'{')?;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            return None;
        }
        loop {
            let key = self.string()?;
            self.byte(b':')?;
            let v = self.value()?;
            match FIELDS.iter().position(|f| f.name.as_bytes() == key) {
                Some(i) => {
                    if seen & (1 << i) != 0 {
                        return None; // serde reports the duplicate
                    }
                    seen |= 1 << i;
                    set(&FIELDS[i], v, &mut rec, cache)?;
                }
                // Unknown scalar fields are ignored, as serde ignores them — once their
                // key and string value are valid UTF-8, which serde checks.
                None => {
                    std::str::from_utf8(key).ok()?;
                    if let Raw::Str(v) = v {
                        std::str::from_utf8(v).ok()?;
                    }
                }
            }
            self.ws();
            match *self.b.get(self.i)? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        self.ws();
        if self.i != self.b.len() {
            return None;
        }
        let complete = FIELDS
            .iter()
            .enumerate()
            .all(|(i, f)| f.presence != Presence::Required || seen & (1 << i) != 0);
        complete.then_some(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn both(s: &str) -> (Option<AttemptRecord>, Result<AttemptRecord, String>) {
        let fast = Scanner {
            b: s.as_bytes(),
            i: 0,
        }
        .record(&mut TargetCache::default());
        let slow = serde_json::from_str::<AttemptRecord>(s).map_err(|e| e.to_string());
        (fast, slow)
    }

    /// The fast path never accepts what serde refuses, and agrees on what both accept.
    fn agree(s: &str) -> Result<(), TestCaseError> {
        let (fast, slow) = both(s);
        if let Some(f) = fast {
            prop_assert_eq!(Ok(f), slow, "{}", s);
        }
        let via =
            record_from_json(s.as_bytes(), &mut TargetCache::default()).map_err(|e| e.to_string());
        prop_assert_eq!(
            via,
            serde_json::from_str::<AttemptRecord>(s).map_err(|e| e.to_string())
        );
        Ok(())
    }

    const GOOD: &str = r#"{"schema_version":"1.2","started_at_ms":1764000000000,"call_id":7,"hedge":0,"policy":"exp","target":"inventory","attempt":2,"error":"http_503","status":503,"latency_ms":12.345,"elapsed_ms":40.0,"delay_ms":200.0,"failure_rate":0.25,"latency_p95_ms":80.0,"in_flight":3,"health_window_ms":10000.0,"outcome":"retryable","outcome_error":"timeout","outcome_latency_ms":1000.0}"#;

    #[test]
    fn takes_the_fast_path_for_what_the_writer_writes() {
        let (fast, slow) = both(GOOD);
        assert!(fast.is_some());
        assert_eq!(fast, slow.ok());
    }

    #[test]
    fn steps_aside_for_what_it_does_not_handle() {
        for s in [
            GOOD.replace("inventory", "inv\\u00e9ntory"), // escape
            GOOD.replace("\"hedge\":0", "\"hedge\":0,\"x\":[1]"), // nested
            GOOD.replace("\"call_id\":7", "\"call_id\":7.0"), // float for an integer
            GOOD.replace("\"call_id\":7", "\"call_id\":07"), // not JSON
            GOOD.replace("\"call_id\":7", "\"call_id\":-7"),
            GOOD.replace("\"status\":503", "\"status\":70000"),
            GOOD.replace("\"hedge\":0,", "\"hedge\":0,\"hedge\":1,"),
            GOOD.replace("\"elapsed_ms\":40.0", "\"elapsed_ms\":-40.0"),
            GOOD.replace("\"error\":\"http_503\"", "\"error\":\"http_418\""),
            GOOD.replace("\"call_id\":7,", ""),
            GOOD.replace("\"target\":\"inventory\"", "\"target\":null"),
            GOOD.replace("}", "} x"),
            GOOD.replace("\"hedge\":0", "\"hedge\":true"),
        ] {
            let (fast, _) = both(&s);
            assert!(fast.is_none(), "{s}");
            agree(&s).unwrap();
        }
    }

    #[test]
    fn nulls_whitespace_and_unknown_fields() {
        let s = r#" { "schema_version" : "1.4" , "started_at_ms":5,"call_id":1,"target":"t","attempt":1,
            "error":null,"status":null,"new_field":"x","outcome":"success","outcome_latency_ms":2.5e0 } "#;
        let (fast, slow) = both(s);
        assert!(fast.is_some());
        assert_eq!(fast, slow.ok());
    }

    #[test]
    fn targets_are_shared() {
        let mut cache = TargetCache::default();
        let a = record_from_json(GOOD.as_bytes(), &mut cache).unwrap();
        let b = record_from_json(GOOD.as_bytes(), &mut cache).unwrap();
        assert!(Arc::ptr_eq(&a.context.target, &b.context.target));
    }

    proptest! {
        #[test]
        fn agrees_with_serde_on_mutations(cut in 0usize..GOOD.len(), insert in "[ -~]{0,4}") {
            let mut s = GOOD.to_owned();
            let at = (0..=cut).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            s.insert_str(at, &insert);
            agree(&s)?;
            agree(&GOOD[..cut])?;
        }

        #[test]
        fn agrees_with_serde_on_garbage(s in "\\PC{0,120}") {
            agree(&s)?;
        }

        #[test]
        fn agrees_on_numbers(n in "-?[0-9]{1,25}(\\.[0-9]{0,5})?([eE][-+]?[0-9]{0,3})?") {
            for field in ["call_id", "hedge", "status", "latency_ms", "failure_rate"] {
                let s = GOOD.replacen(&format!("\"{field}\":"), &format!("\"{field}\":{n},\"x{field}\":"), 1);
                agree(&s)?;
            }
        }
    }
}
