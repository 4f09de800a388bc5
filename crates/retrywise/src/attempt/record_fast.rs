//! A fast path for reading attempt records: a scanner for the flat JSON objects the
//! collector writes, which hands anything unusual to serde.
//!
//! It returns a record only when the line is a valid record it fully understood (a flat
//! object of strings without escapes, numbers and nulls); for everything else — escapes,
//! nested values, bad numbers, missing or duplicate fields, out-of-range values — it steps
//! aside, and the derived-quality serde path decides, so errors read exactly the same. A
//! property test checks that both paths agree on records and on garbage.

use std::sync::Arc;
use std::time::Duration;

use super::serde_ms::ms_to_duration;
use super::{AttemptContext, AttemptRecord, ErrorKind, Outcome, SchemaVersion};

/// Remembers recently seen targets so that records of the same target share one
/// allocation.
#[derive(Debug, Default)]
pub struct TargetCache {
    recent: Vec<Arc<str>>,
}

impl TargetCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

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

impl AttemptRecord {
    /// Reads a record from one JSON line (the collector's format), sharing target
    /// strings through `cache`.
    ///
    /// # Errors
    /// The same errors, with the same messages, as `serde_json::from_slice`.
    pub fn from_json(
        bytes: &[u8],
        cache: &mut TargetCache,
    ) -> Result<AttemptRecord, serde_json::Error> {
        match Scanner::new(bytes).record(cache) {
            Some(r) => Ok(r),
            None => serde_json::from_slice(bytes),
        }
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

enum Value<'a> {
    /// The bytes between the quotes (no escapes, no control characters; UTF-8 not yet
    /// checked: only strings that become `str` need it).
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
fn uint(v: &Value<'_>) -> Option<u64> {
    match v {
        Value::Num(s) if !s.starts_with('-') && s.bytes().all(|c| c.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

/// A finite number (serde refuses numbers beyond f64's range; `parse` would give inf).
fn float(v: &Value<'_>) -> Option<f64> {
    match v {
        Value::Num(s) => s.parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

fn ms(v: &Value<'_>) -> Option<Duration> {
    ms_to_duration(float(v)?).ok()
}

/// A nullable field: `Some(None)` for null, `None` when the value does not parse.
fn opt<T>(v: &Value<'_>, f: impl FnOnce(&Value<'_>) -> Option<T>) -> Option<Option<T>> {
    match v {
        Value::Null => Some(None),
        other => f(other).map(Some),
    }
}

fn kind(v: &Value<'_>) -> Option<ErrorKind> {
    match v {
        Value::Str(s) => ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes() == *s),
        _ => None,
    }
}

/// Sets a field once; a second value steps aside (serde reports the duplicate).
fn once<T>(slot: &mut Option<T>, v: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v?);
    Some(())
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, i: 0 }
    }

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

    fn value(&mut self) -> Option<Value<'a>> {
        self.ws();
        match *self.b.get(self.i)? {
            b'"' => self.string().map(Value::Str),
            b'n' => {
                let end = self.i + 4;
                (self.b.get(self.i..end)? == b"null").then(|| {
                    self.i = end;
                    Value::Null
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
                json_number(s).then(|| Value::Num(std::str::from_utf8(s).unwrap_or_default()))
            }
            // Booleans, arrays, objects: not ours to judge here.
            _ => None,
        }
    }

    fn record(&mut self, cache: &mut TargetCache) -> Option<AttemptRecord> {
        let mut schema_version = None;
        let mut started_at_ms = None;
        let mut call_id = None;
        let mut hedge = None;
        let mut target = None;
        let mut attempt = None;
        let mut error = None;
        let mut status = None;
        let mut latency = None;
        let mut elapsed = None;
        let mut retry_after = None;
        let mut delay = None;
        let mut failure_rate = None;
        let mut latency_p95 = None;
        let mut in_flight = None;
        let mut planned_delay = None;
        let mut policy = None;
        let mut outcome = None;
        let mut outcome_error = None;
        let mut outcome_status = None;
        let mut outcome_latency = None;
        let mut outcome_retry_after = None;

        self.byte(b'{')?;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            return None;
        }
        loop {
            let key = self.string()?;
            // Keys are compared as bytes; an unknown key with invalid UTF-8 steps aside.
            self.byte(b':')?;
            let v = self.value()?;
            let u32_ = |v: &Value<'_>| uint(v).and_then(|n| u32::try_from(n).ok());
            let u16_ = |v: &Value<'_>| uint(v).and_then(|n| u16::try_from(n).ok());
            match key {
                b"schema_version" => once(
                    &mut schema_version,
                    match v {
                        Value::Str(s) => std::str::from_utf8(s)
                            .ok()
                            .and_then(|s| s.parse::<SchemaVersion>().ok()),
                        _ => None,
                    },
                )?,
                b"started_at_ms" => once(&mut started_at_ms, uint(&v))?,
                b"call_id" => once(&mut call_id, uint(&v))?,
                b"hedge" => once(&mut hedge, u32_(&v))?,
                b"target" => once(
                    &mut target,
                    match v {
                        Value::Str(s) => std::str::from_utf8(s).ok().map(|s| cache.get(s)),
                        _ => None,
                    },
                )?,
                b"attempt" => once(&mut attempt, u32_(&v))?,
                b"error" => once(&mut error, opt(&v, kind))?,
                b"status" => once(&mut status, opt(&v, u16_))?,
                b"latency_ms" => once(&mut latency, opt(&v, ms))?,
                b"elapsed_ms" => once(&mut elapsed, ms(&v))?,
                b"retry_after_ms" => once(&mut retry_after, opt(&v, ms))?,
                b"delay_ms" => once(&mut delay, ms(&v))?,
                b"failure_rate" => once(&mut failure_rate, opt(&v, float))?,
                b"latency_p95_ms" => once(&mut latency_p95, opt(&v, ms))?,
                b"in_flight" => once(&mut in_flight, opt(&v, u32_))?,
                b"planned_delay_ms" => once(&mut planned_delay, opt(&v, ms))?,
                b"policy" => once(
                    &mut policy,
                    match v {
                        Value::Null => Some(None),
                        Value::Str(s) => std::str::from_utf8(s).ok().map(|s| Some(cache.get(s))),
                        Value::Num(_) => None,
                    },
                )?,
                b"outcome" => once(
                    &mut outcome,
                    match v {
                        Value::Str(b"success") => Some(Outcome::Success),
                        Value::Str(b"retryable") => Some(Outcome::Retryable),
                        Value::Str(b"permanent") => Some(Outcome::Permanent),
                        Value::Str(b"cancelled") => Some(Outcome::Cancelled),
                        _ => None,
                    },
                )?,
                b"outcome_error" => once(&mut outcome_error, opt(&v, kind))?,
                b"outcome_status" => once(&mut outcome_status, opt(&v, u16_))?,
                b"outcome_latency_ms" => once(&mut outcome_latency, ms(&v))?,
                b"outcome_retry_after_ms" => once(&mut outcome_retry_after, opt(&v, ms))?,
                // Unknown scalar fields are ignored, as serde ignores them — once their
                // key and string value are valid UTF-8, which serde checks.
                other => {
                    std::str::from_utf8(other).ok()?;
                    if let Value::Str(v) = v {
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
        Some(AttemptRecord {
            schema_version: schema_version?,
            started_at_ms: started_at_ms?,
            call_id: call_id?,
            hedge: hedge.unwrap_or(0),
            policy: policy.flatten(),
            context: AttemptContext {
                target: target?,
                attempt: attempt?,
                error: error.flatten(),
                status: status.flatten(),
                latency: latency.flatten(),
                elapsed: elapsed.unwrap_or_default(),
                retry_after: retry_after.flatten(),
                delay: delay.unwrap_or_default(),
                failure_rate: failure_rate.flatten(),
                latency_p95: latency_p95.flatten(),
                in_flight: in_flight.flatten(),
                planned_delay: planned_delay.flatten(),
            },
            outcome: outcome?,
            outcome_error: outcome_error.flatten(),
            outcome_status: outcome_status.flatten(),
            outcome_latency: outcome_latency?,
            outcome_retry_after: outcome_retry_after.flatten(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn both(s: &str) -> (Option<AttemptRecord>, Result<AttemptRecord, String>) {
        let fast = Scanner::new(s.as_bytes()).record(&mut TargetCache::new());
        let slow = serde_json::from_str::<AttemptRecord>(s).map_err(|e| e.to_string());
        (fast, slow)
    }

    /// The fast path never accepts what serde refuses, and agrees on what both accept.
    fn agree(s: &str) -> Result<(), TestCaseError> {
        let (fast, slow) = both(s);
        if let Some(f) = fast {
            prop_assert_eq!(Ok(f), slow, "{}", s);
        }
        let via = AttemptRecord::from_json(s.as_bytes(), &mut TargetCache::new())
            .map_err(|e| e.to_string());
        prop_assert_eq!(
            via,
            serde_json::from_str::<AttemptRecord>(s).map_err(|e| e.to_string())
        );
        Ok(())
    }

    const GOOD: &str = r#"{"schema_version":"1.0","started_at_ms":1764000000000,"call_id":7,"hedge":0,"target":"inventory","attempt":2,"error":"http_503","status":503,"latency_ms":12.345,"elapsed_ms":40.0,"delay_ms":200.0,"failure_rate":0.25,"latency_p95_ms":80.0,"in_flight":3,"outcome":"retryable","outcome_error":"timeout","outcome_latency_ms":1000.0}"#;

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
            GOOD.replace("}", "} x"),
            GOOD.replace("\"hedge\":0", "\"hedge\":true"),
        ] {
            let (fast, slow) = both(&s);
            assert!(fast.is_none(), "{s}");
            agree(&s).unwrap();
            let _ = slow;
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
        let mut cache = TargetCache::new();
        let a = AttemptRecord::from_json(GOOD.as_bytes(), &mut cache).unwrap();
        let b = AttemptRecord::from_json(GOOD.as_bytes(), &mut cache).unwrap();
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
