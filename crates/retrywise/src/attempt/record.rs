//! What happened in one attempt: the record the collector stores and the trainer learns
//! from.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::schema::InvalidField;
use super::{AttemptContext, ErrorKind, Verdict};

/// The version of the [`AttemptRecord`] schema.
///
/// The major version changes when a field changes meaning or type; readers refuse majors
/// they do not know. The minor version changes when optional fields are added; readers
/// accept any minor of a major they know, and keep the fields they do not know without
/// reading them ([`AttemptRecord::unknown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchemaVersion {
    /// Changes meaning or type of existing fields.
    pub major: u16,
    /// Adds optional fields.
    pub minor: u16,
}

impl SchemaVersion {
    /// The version this crate writes.
    pub const CURRENT: SchemaVersion = SchemaVersion { major: 1, minor: 4 };
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The text is not `MAJOR.MINOR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid schema version `{0}`: expected MAJOR.MINOR, each 0 to 9999 without leading zeros, e.g. 1.0"
)]
pub struct InvalidSchemaVersion(pub String);

impl FromStr for SchemaVersion {
    type Err = InvalidSchemaVersion;

    /// Only the canonical form, as this crate writes it and the OpenAPI schema's pattern
    /// allows: `1.4`, never `01.4`, `1.04`, `+1.4` or `1.10000` (each read as a version,
    /// and written back as another text, would disagree with a reader of the pattern).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidSchemaVersion(s.chars().take(32).collect());
        let number = |part: &str| -> Option<u16> {
            let canonical = (1..=4).contains(&part.len())
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'));
            canonical.then(|| part.parse().ok()).flatten()
        };
        let (major, minor) = s.split_once('.').ok_or_else(bad)?;
        Ok(SchemaVersion {
            major: number(major).ok_or_else(bad)?,
            minor: number(minor).ok_or_else(bad)?,
        })
    }
}

impl Serialize for SchemaVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SchemaVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It succeeded.
    Success,
    /// It failed in a way another attempt may fix.
    Retryable,
    /// It failed in a way no retry will fix.
    Permanent,
    /// It was abandoned before it finished: a hedge that lost the race, or a call whose
    /// caller went away. Its latency is how long it ran.
    Cancelled,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Success,
        Outcome::Retryable,
        Outcome::Permanent,
        Outcome::Cancelled,
    ];

    /// The wire name (`"retryable"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Retryable => "retryable",
            Outcome::Permanent => "permanent",
            Outcome::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string named no known [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown outcome `{0}`; expected one of success, retryable, permanent, cancelled")]
pub struct UnknownOutcome(pub String);

impl FromStr for Outcome {
    type Err = UnknownOutcome;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownOutcome(super::clipped(s)))
    }
}

/// One attempt: the context it was made in, how it ended, and when.
///
/// This is the unit of the training data. One record is written per request actually sent
/// upstream — every retry and every hedge — never for calls rejected locally by a breaker,
/// bulkhead or budget (those sent nothing).
///
/// Flat on the wire: `schema_version`, `started_at_ms`, `call_id`, `hedge`, `policy`, the
/// context's fields, then `outcome`, `outcome_error`, `outcome_status`,
/// `outcome_latency_ms`, `outcome_retry_after_ms`: the order and rules of
/// [`super::schema::FIELDS`] (see also `data/README.md`). Fields this build does not know
/// (added by a newer minor version) are kept in [`unknown`](Self::unknown) and written back
/// after the known ones, so a record passed on — ingested, shipped, compacted — loses none.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// The schema version the record was written with.
    pub schema_version: SchemaVersion,
    /// Start of the attempt, milliseconds since the Unix epoch (wall clock).
    pub started_at_ms: u64,
    /// Identifies the logical call the attempt belongs to (unique within a process run).
    pub call_id: u64,
    /// 0 for the primary request of an attempt, `k` for its `k`-th hedge.
    pub hedge: u32,
    /// The name of the policy that made the attempt, when it has one (since 1.1).
    pub policy: Option<Arc<str>>,
    /// What was known before the attempt.
    pub context: AttemptContext,
    /// How it ended.
    pub outcome: Outcome,
    /// The kind of failure, unless it succeeded or was cancelled.
    pub outcome_error: Option<ErrorKind>,
    /// The HTTP status it ended with, when it had one.
    pub outcome_status: Option<u16>,
    /// How long it took (`outcome_latency_ms`).
    pub outcome_latency: Duration,
    /// The wait the upstream asked for in its answer (`outcome_retry_after_ms`).
    pub outcome_retry_after: Option<Duration>,
    /// The fields of the record this build does not know (a newer minor version's), as
    /// they came: written back after the known fields, and kept as one JSON object in the
    /// Parquet column `unknown_fields`. `None` when there are none (records this build
    /// writes).
    pub unknown: Option<Box<UnknownFields>>,
}

/// Fields of a record that the schema of this build does not know: name → JSON value
/// ([`AttemptRecord::unknown`]).
pub type UnknownFields = serde_json::Map<String, serde_json::Value>;

impl AttemptRecord {
    /// A record of an attempt made in `context` that ended with `verdict` after `latency`.
    pub fn new(
        call_id: u64,
        hedge: u32,
        started_at_ms: u64,
        context: AttemptContext,
        verdict: &Verdict,
        latency: Duration,
    ) -> Self {
        let (outcome, failure) = match verdict {
            Verdict::Success => (Outcome::Success, None),
            Verdict::Retryable(f) => (Outcome::Retryable, Some(f)),
            Verdict::Permanent(f) => (Outcome::Permanent, Some(f)),
        };
        Self {
            schema_version: SchemaVersion::CURRENT,
            started_at_ms,
            call_id,
            hedge,
            policy: None,
            context,
            outcome,
            outcome_error: failure.map(|f| f.kind),
            outcome_status: failure.and_then(|f| f.status),
            outcome_latency: latency,
            outcome_retry_after: failure.and_then(|f| f.retry_after),
            unknown: None,
        }
    }

    /// Whether the attempt succeeded (the training label).
    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Success
    }

    /// Checks every field against the schema's rules ([`super::schema::FIELDS`]): a
    /// schema major this build reads, the context's rules, an HTTP status within
    /// 100..=599, no field this build does not know unless the record is of a newer minor
    /// version. Ingestion, the shipper, the trainer and the API all check records with
    /// this.
    ///
    /// # Errors
    /// Names the first field that breaks a rule.
    pub fn validate(&self) -> Result<(), InvalidField> {
        super::schema::validate_record(self)
    }

    /// A record with every field zero, empty or missing, for readers that fill it field by
    /// field through [`super::schema::Field::set`].
    pub fn blank() -> Self {
        // One shared empty name: a blank record allocates nothing.
        static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
        Self {
            schema_version: SchemaVersion::CURRENT,
            started_at_ms: 0,
            call_id: 0,
            hedge: 0,
            policy: None,
            context: AttemptContext::first(Arc::clone(&EMPTY)),
            outcome: Outcome::Success,
            outcome_error: None,
            outcome_status: None,
            outcome_latency: Duration::ZERO,
            outcome_retry_after: None,
            unknown: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::Failure;

    #[test]
    fn schema_version_text() {
        assert_eq!(SchemaVersion::CURRENT.to_string(), "1.4");
        assert_eq!(
            "2.13".parse::<SchemaVersion>().unwrap(),
            SchemaVersion {
                major: 2,
                minor: 13
            }
        );
        for bad in [
            "1", "1.x", "", "a.b", "1.0.0", "01.4", "1.04", "+1.4", "1.+4", "1.10000", " 1.4",
            "1.4 ", "-1.4", "1.",
        ] {
            assert!(bad.parse::<SchemaVersion>().is_err(), "{bad}");
        }
        for good in ["0.0", "1.0", "1.4", "1.9999", "9999.10"] {
            let v: SchemaVersion = good.parse().unwrap();
            assert_eq!(v.to_string(), good, "read and written back alike");
        }
    }

    proptest::proptest! {
        /// Whatever text is read as a version is the text the version writes: the parser
        /// takes exactly the canonical form (and so the OpenAPI pattern's).
        #[test]
        fn a_version_read_is_written_back_as_its_text(s in "[-+0-9.]{0,8}") {
            if let Ok(v) = s.parse::<SchemaVersion>() {
                proptest::prop_assert_eq!(v.to_string(), s);
            }
        }
    }

    #[test]
    fn record_is_flat_and_round_trips() {
        let mut ctx = AttemptContext::first("inventory");
        ctx.attempt = 3;
        ctx.error = Some(ErrorKind::Timeout);
        ctx.delay = Duration::from_millis(400);
        let verdict = Verdict::Retryable(
            Failure::new(ErrorKind::Http503)
                .with_status(503)
                .with_retry_after(Duration::from_secs(1)),
        );
        let rec = AttemptRecord::new(
            7,
            0,
            1_764_000_000_000,
            ctx,
            &verdict,
            Duration::from_millis(12),
        );
        let json = serde_json::to_string(&rec).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["schema_version"], "1.4");
        assert_eq!(v["target"], "inventory");
        assert_eq!(v["attempt"], 3);
        assert_eq!(v["error"], "timeout");
        assert_eq!(v["outcome"], "retryable");
        assert_eq!(v["outcome_error"], "http_503");
        assert_eq!(v["outcome_status"], 503);
        assert_eq!(v["outcome_latency_ms"], 12.0);
        assert_eq!(v["outcome_retry_after_ms"], 1000.0);
        let back: AttemptRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        assert!(!back.succeeded());
    }
}
