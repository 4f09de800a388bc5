//! The model artifact (`model.json`) and its evaluation, without polars or linfa.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SuccessModel;
use crate::attempt::{AttemptContext, ErrorKind};
use crate::features::{self, FEATURE_SET, N_FEATURES};

/// The artifact format this crate reads and writes.
pub const ARTIFACT_FORMAT: &str = "retrywise-model";

/// The largest `model.json` a reader takes, bytes (4 MiB; a trained model is some
/// 120 KiB): a larger file is not an artifact, and one without end (a link to
/// `/dev/zero`) must not be read whole. It also bounds what a file of long arrays
/// (`"weights": [0, 0, …]`, or 2 million empty feature names) allocates before its
/// lengths are checked: tens of MiB, not more.
pub const MAX_ARTIFACT_BYTES: u64 = 4 << 20;

/// The artifact schema version this crate writes; it reads any `1.x`.
pub const ARTIFACT_SCHEMA: &str = "1.0";

/// The model family of the artifacts this crate evaluates.
pub const LOGISTIC: &str = "logistic_regression";

/// The class a model's probability is for: always the attempt's success.
pub const POSITIVE_LABEL: &str = "success";

/// Why an artifact was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Not JSON, or not the artifact's shape.
    #[error("not a valid model artifact: {field}: {message} (line {line}, column {column})")]
    Json {
        /// The field where reading failed (`weights[3]`, `label.positive`), or "the document".
        field: String,
        /// What the parser said.
        message: String,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
    },
    /// Another format altogether.
    #[error("`format` is `{0}`, expected `{ARTIFACT_FORMAT}`")]
    Format(String),
    /// A schema version this crate cannot read.
    #[error("`schema_version` {found} is not supported (this build reads 1.x)")]
    Schema {
        /// The version in the file.
        found: String,
    },
    /// A model family this crate cannot evaluate.
    #[error("`kind` is `{0}`, expected `{LOGISTIC}`")]
    Kind(String),
    /// The probability is not for success.
    #[error("`label.positive` is `{0}`, expected `{POSITIVE_LABEL}`")]
    Label(String),
    /// Trained on another feature set than this build encodes.
    #[error("`features.set` is `{found}`, this build encodes `{FEATURE_SET}`")]
    FeatureSet {
        /// The set named in the file.
        found: String,
    },
    /// The feature names differ from the encoder's.
    #[error("`features.names[{index}]` is `{found}`, the encoder's column {index} is `{expected}`")]
    FeatureName {
        /// The column.
        index: usize,
        /// The encoder's name.
        expected: &'static str,
        /// The file's name.
        found: String,
    },
    /// A vector of the wrong length.
    #[error("`{field}` has {found} values, expected {expected}")]
    Length {
        /// The field.
        field: &'static str,
        /// The number of features.
        expected: usize,
        /// What the file has.
        found: usize,
    },
    /// A number that is NaN, infinite or out of range.
    #[error("`{field}` is invalid: {problem}")]
    Value {
        /// The field (with the index for vectors).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// The label a model predicts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSpec {
    /// The class whose probability the model gives: `success`.
    pub positive: String,
    /// How the label is read off a record.
    pub definition: String,
}

/// The features a model was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// The encoder's feature set ([`FEATURE_SET`]).
    pub set: String,
    /// The column names, in order.
    pub names: Vec<String>,
    /// What each column holds.
    pub descriptions: Vec<String>,
    /// The health window the training data's failure rate, p95 latency and calls in
    /// flight were measured over, in ms (see [`crate::health`]); absent when the data did
    /// not say. Predictions are meaningful for health measured over the same window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_window_ms: Option<f64>,
    /// Training rows per previous error kind (`first` for first attempts, else an error
    /// kind's name): what the model saw of each failure, for a person reading the
    /// artifact (deciders judge support by `region_rows`); optional.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "unique_counts"
    )]
    pub error_rows: Option<std::collections::BTreeMap<String, u64>>,
    /// Training rows per region of the context space ([`features::region`]; regions
    /// without rows are left out). Required by [`ModelArtifact::validate`] (every trainer
    /// of this feature set records them): a decider judges the model's support by the
    /// region of a context.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "unique_counts"
    )]
    pub region_rows: Option<std::collections::BTreeMap<String, u64>>,
}

/// A map of row counts in which a key given twice is an error naming it (a plain map
/// would keep the last: a region read as unsupported, or supported, by the order of two
/// lines).
fn unique_counts<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::collections::BTreeMap<String, u64>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<std::collections::BTreeMap<String, u64>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of names to row counts, or null")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = std::collections::BTreeMap::new();
            while let Some((k, v)) = a.next_entry::<String, u64>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "`{}` is given twice",
                        crate::attempt::clipped(&k)
                    )));
                }
                out.insert(k, v);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(V)
}

impl FeatureSpec {
    /// The spec of this build's encoder.
    pub fn current() -> Self {
        Self {
            set: FEATURE_SET.to_owned(),
            names: features::ALL.iter().map(|f| f.name().to_owned()).collect(),
            descriptions: features::ALL
                .iter()
                .map(|f| f.description().to_owned())
                .collect(),
            health_window_ms: None,
            error_rows: None,
            region_rows: None,
        }
    }

    /// The same spec, recording the training rows per previous error kind.
    pub fn with_error_rows(mut self, rows: std::collections::BTreeMap<String, u64>) -> Self {
        self.error_rows = Some(rows);
        self
    }

    /// The same spec, recording the training rows per region ([`features::region`]).
    pub fn with_region_rows(mut self, rows: std::collections::BTreeMap<String, u64>) -> Self {
        self.region_rows = Some(rows);
        self
    }

    /// The same spec, recording the health window of the training data.
    pub fn with_health_window(mut self, window: Option<std::time::Duration>) -> Self {
        self.health_window_ms = window.map(crate::attempt::duration_to_ms);
        self
    }

    /// The health window of the training data, if recorded.
    pub fn health_window(&self) -> Option<std::time::Duration> {
        self.health_window_ms
            .and_then(|ms| crate::attempt::ms_to_duration(ms).ok())
    }
}

/// Standardization applied to each feature before the weights: `(x - mean) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Per-feature mean over the training rows.
    pub mean: Vec<f64>,
    /// Per-feature standard deviation over the training rows (1 where it was 0).
    pub scale: Vec<f64>,
}

/// The regularization the model was fitted with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Regularization {
    /// `l2`.
    pub kind: String,
    /// The penalty `alpha` of `Σ log-loss + alpha/2 · |w|²` (scikit-learn's `1/C`).
    pub alpha: f64,
}

/// A trained model as stored in `models/<name>/<version>/model.json`.
///
/// Everything needed to evaluate it is typed; what describes the training (`training`,
/// `metrics`) is kept as JSON for display. Fields this build does not know (added by a
/// later `1.x`) are ignored: a later minor version may only add what describes a model,
/// never what changes how its p is computed — a calibration step or another link is a
/// new `kind`, which a build that cannot evaluate it refuses
/// ([`ModelError::Kind`]). A missing or mistyped field is an error naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelArtifact {
    /// [`ARTIFACT_FORMAT`].
    pub format: String,
    /// [`ARTIFACT_SCHEMA`] when written by this build.
    pub schema_version: String,
    /// The model's name (its folder).
    pub name: String,
    /// Its version (its subfolder).
    pub version: u32,
    /// [`LOGISTIC`].
    pub kind: String,
    /// What the probability is of.
    pub label: LabelSpec,
    /// The features.
    pub features: FeatureSpec,
    /// The standardization.
    pub scaler: Scaler,
    /// One weight per standardized feature.
    pub weights: Vec<f64>,
    /// The intercept.
    pub intercept: f64,
    /// How it was regularized.
    pub regularization: Regularization,
    /// The training data: rows, time range, files and their fingerprint, the split.
    pub training: serde_json::Value,
    /// Validation metrics of the model and of the baseline.
    pub metrics: serde_json::Value,
    /// When it was trained (RFC 3339, UTC).
    pub created_at: String,
    /// The version of the code that trained it.
    pub code_version: String,
}

fn finite(field: impl fmt::Display, v: f64) -> Result<(), ModelError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(ModelError::Value {
            field: field.to_string(),
            problem: format!("{v} is not a finite number"),
        })
    }
}

/// Whether `name` can name a model: it is the models folder's name for it, a plain folder
/// name - not empty, not starting with a dot, no slashes, no control characters, no
/// surrounding spaces. (An artifact's `name` and a service's `default_model` alike.)
pub fn is_model_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
        && name.trim() == name
}

impl ModelArtifact {
    /// Whether the artifact sits where a models folder keeps it, `<name>/<version>/`:
    /// `None` when the folders `name` and `version` it was read from are its own name and
    /// version, else what disagrees. (One rule for every reader of a models folder: a
    /// model copied under another name, or a version folder renamed, is refused the same
    /// way by the trainer's `eval` and by the service.)
    pub fn misplaced(&self, name: &str, version: u32) -> Option<String> {
        if self.name != name {
            Some(format!(
                "holds model `{}`, but sits in the folder of model `{name}`",
                self.name
            ))
        } else if self.version != version {
            Some(format!(
                "holds version {}, but sits in the folder of version {version}",
                self.version
            ))
        } else {
            None
        }
    }

    /// Parses and validates an artifact.
    ///
    /// # Errors
    /// A [`ModelError`] naming what is wrong.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let json_error = |path: String, inner: serde_json::Error| {
            let (line, column) = (inner.line(), inner.column());
            let message = inner.to_string();
            let suffix = format!(" at line {line} column {column}");
            ModelError::Json {
                field: if path == "." {
                    "the document".to_owned()
                } else {
                    format!("`{path}`")
                },
                message: message.strip_suffix(&suffix).unwrap_or(&message).to_owned(),
                line,
                column,
            }
        };
        // What says which artifact this is comes first: another format, a schema this build
        // does not know, another kind of model, label or feature set is refused as such,
        // not as the field its different shape lacks.
        if let Ok(header) = serde_json::from_str::<Header>(text) {
            header.check()?;
        } else if let Ok(top) = serde_json::from_str::<TopHeader>(text) {
            // `label` or `features` of another shape: what the top level says, at least.
            Header {
                format: top.format,
                schema_version: top.schema_version,
                kind: top.kind,
                label: None,
                features: None,
            }
            .check()?;
        }
        let de = &mut serde_json::Deserializer::from_str(text);
        let artifact: ModelArtifact = serde_path_to_error::deserialize(&mut *de)
            .map_err(|e| json_error(e.path().to_string(), e.into_inner()))?;
        // Anything after the document (a shorter file written over a longer one) makes it
        // no artifact: the tail may be what the writer meant.
        de.end().map_err(|e| json_error(".".to_owned(), e))?;
        artifact.validate()?;
        Ok(artifact)
    }

    /// The artifact as pretty JSON.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and JSON values always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks that this build can evaluate the artifact.
    ///
    /// # Errors
    /// A [`ModelError`] naming the first problem.
    pub fn validate(&self) -> Result<(), ModelError> {
        must_be(&self.format, ARTIFACT_FORMAT, ModelError::Format)?;
        check_schema(&self.schema_version)?;

        // The name is the models folder's name for the model: a plain folder name.
        if !is_model_name(&self.name) {
            return Err(ModelError::Value {
                field: "name".into(),
                problem: format!(
                    "`{}` is not a model name (a plain folder name: not empty, not starting with a dot, no slashes, control characters or surrounding spaces)",
                    self.name
                ),
            });
        }
        if !is_rfc3339(&self.created_at) {
            return Err(ModelError::Value {
                field: "created_at".into(),
                problem: format!(
                    "`{}` is not an RFC 3339 time (YYYY-MM-DDTHH:MM:SS, then Z or an offset)",
                    self.created_at
                ),
            });
        }
        if let Some(w) = self.features.health_window_ms
            && !(w.is_finite() && w > 0.0 && w <= crate::attempt::schema::MAX_MS)
        {
            return Err(ModelError::Value {
                field: "features.health_window_ms".into(),
                problem: format!(
                    "{} is not a positive number of milliseconds, at most 1e12",
                    crate::attempt::schema::shown(w)
                ),
            });
        }
        must_be(&self.kind, LOGISTIC, ModelError::Kind)?;
        must_be(&self.label.positive, POSITIVE_LABEL, ModelError::Label)?;
        must_be(&self.features.set, FEATURE_SET, |found| {
            ModelError::FeatureSet { found }
        })?;
        let n = N_FEATURES;
        for (field, found) in [
            ("features.names", self.features.names.len()),
            ("features.descriptions", self.features.descriptions.len()),
            ("scaler.mean", self.scaler.mean.len()),
            ("scaler.scale", self.scaler.scale.len()),
            ("weights", self.weights.len()),
        ] {
            if found != n {
                return Err(ModelError::Length {
                    field,
                    expected: n,
                    found,
                });
            }
        }
        for (index, (found, f)) in self.features.names.iter().zip(features::ALL).enumerate() {
            if found != f.name() {
                return Err(ModelError::FeatureName {
                    index,
                    expected: f.name(),
                    found: found.clone(),
                });
            }
        }
        if let Some(rows) = &self.features.error_rows
            && let Some(bad) = rows.keys().find(|k| !is_kind_key(k))
        {
            return Err(ModelError::Value {
                field: format!("features.error_rows.{bad}"),
                problem: "is neither `first` nor an error kind".into(),
            });
        }
        // Every trainer of this feature set records them: without them a decider could not
        // tell the contexts the model never saw from those it learned, and would trust it
        // everywhere.
        let Some(rows) = &self.features.region_rows else {
            return Err(ModelError::Value {
                field: "features.region_rows".into(),
                problem: format!(
                    "is missing: a model of feature set {FEATURE_SET} records its training rows per region (deciders check their support with them)"
                ),
            });
        };
        if let Some(bad) = rows.keys().find(|k| features::region_index(k).is_none()) {
            return Err(ModelError::Value {
                field: format!("features.region_rows.{bad}"),
                problem: "is not a region (error/latency…/failing…/in_flight…)".into(),
            });
        }
        LogisticModel::from_parts(&self.scaler, &self.weights, self.intercept)?;
        if !(self.regularization.alpha.is_finite() && self.regularization.alpha >= 0.0) {
            return Err(ModelError::Value {
                field: "regularization.alpha".into(),
                problem: format!(
                    "{} is not a non-negative number",
                    crate::attempt::schema::shown(self.regularization.alpha)
                ),
            });
        }
        Ok(())
    }
}

/// The fields that say which artifact a document is, read whatever shape the rest has
/// (each one only where it is a string).
/// (The other fields are skipped, not kept.)
#[derive(Deserialize)]
struct Header {
    format: Option<serde_json::Value>,
    schema_version: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
    label: Option<LabelHeader>,
    features: Option<FeaturesHeader>,
}

/// [`Header`]'s top-level fields alone, for a document whose `label` or `features` is not
/// an object.
#[derive(Deserialize)]
struct TopHeader {
    format: Option<serde_json::Value>,
    schema_version: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct LabelHeader {
    positive: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct FeaturesHeader {
    set: Option<serde_json::Value>,
}

impl Header {
    /// The first of the checks [`ModelArtifact::validate`] makes of these fields that fails.
    fn check(&self) -> Result<(), ModelError> {
        fn text(v: Option<&serde_json::Value>) -> Option<&str> {
            v.and_then(serde_json::Value::as_str)
        }
        if let Some(f) = text(self.format.as_ref()) {
            must_be(f, ARTIFACT_FORMAT, ModelError::Format)?;
        }
        if let Some(v) = text(self.schema_version.as_ref()) {
            check_schema(v)?;
        }
        if let Some(k) = text(self.kind.as_ref()) {
            must_be(k, LOGISTIC, ModelError::Kind)?;
        }
        if let Some(l) = text(self.label.as_ref().and_then(|l| l.positive.as_ref())) {
            must_be(l, POSITIVE_LABEL, ModelError::Label)?;
        }
        if let Some(set) = text(self.features.as_ref().and_then(|f| f.set.as_ref())) {
            must_be(set, FEATURE_SET, |found| ModelError::FeatureSet { found })?;
        }
        Ok(())
    }
}

/// Nothing, when `found` is `want`; else the error `wrong` makes of what was found.
fn must_be(found: &str, want: &str, wrong: fn(String) -> ModelError) -> Result<(), ModelError> {
    if found == want {
        Ok(())
    } else {
        Err(wrong(found.to_owned()))
    }
}

fn check_schema(version: &str) -> Result<(), ModelError> {
    // `1.MINOR`, the minor a whole number: `1`, `1.`, `1.x` or `1.0.0-rc` are no version
    // this crate knows.
    let minor_ok = |m: &str| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit());
    if matches!(version.split_once('.'), Some(("1", m)) if minor_ok(m)) {
        Ok(())
    } else {
        Err(ModelError::Schema {
            found: version.to_owned(),
        })
    }
}

/// Whether `t` reads as an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS`, optional fractional
/// seconds, then `Z` or `±HH:MM` (what the trainer writes; checked by shape, not calendar).
fn is_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shape = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(b.get(10), Some(b'T' | b't' | b' '))
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19);
    if !shape {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len()
                && digits(i + 1..i + 3)
                && b.get(i + 3) == Some(&b':')
                && digits(i + 4..i + 6)
        }
        _ => false,
    }
}

/// A logistic-regression success model, ready to evaluate: `σ(b + Σ wᵢ (xᵢ - μᵢ) / sᵢ)`
/// over the encoder's features.
///
/// ```
/// use retrywise::attempt::{AttemptContext, ErrorKind};
/// use retrywise::model::{LogisticModel, SuccessModel};
///
/// // A model that only knows that rate limits clear with waiting.
/// let model = LogisticModel::from_weights(-1.0, |name| match name {
///     "log_delay_x_http_429" => 0.5,
///     _ => 0.0,
/// })?;
/// let mut ctx = AttemptContext::first("api");
/// ctx.attempt = 2;
/// ctx.error = Some(ErrorKind::Http429);
/// let soon = model.p_success(&ctx);
/// ctx.delay = std::time::Duration::from_secs(5);
/// assert!(model.p_success(&ctx) > soon);
/// # Ok::<(), retrywise::model::ModelError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticModel {
    mean: [f64; N_FEATURES],
    scale: [f64; N_FEATURES],
    weights: [f64; N_FEATURES],
    intercept: f64,
    /// The scaler folded into the weights: `logit(x) = folded_intercept + folded · x`.
    folded: [f64; N_FEATURES],
    folded_intercept: f64,
    /// Training rows per region, when the artifact recorded them.
    regions: Option<Box<[u64; features::N_REGIONS]>>,
}

/// Whether `key` is `first` or an error kind's name (the keys of `features.error_rows`).
fn is_kind_key(key: &str) -> bool {
    key == "first" || ErrorKind::ALL.iter().any(|k| k.as_str() == key)
}

impl LogisticModel {
    /// The model of a validated artifact.
    ///
    /// # Errors
    /// See [`ModelArtifact::validate`].
    pub fn from_artifact(a: &ModelArtifact) -> Result<Self, ModelError> {
        a.validate()?;
        let mut m = Self::from_parts(&a.scaler, &a.weights, a.intercept)?;
        if let Some(rows) = &a.features.region_rows {
            let mut regions = Box::new([0; features::N_REGIONS]);
            for (k, n) in rows {
                if let Some(i) = features::region_index(k) {
                    regions[i] = *n;
                }
            }
            m.regions = Some(regions);
        }
        Ok(m)
    }

    /// Training rows like `ctx` — those in its region ([`features::region`]) — for a model
    /// read from an artifact; `None` for one built from its parts (nothing says where it
    /// was trained).
    pub fn rows_like(&self, ctx: &AttemptContext) -> Option<u64> {
        self.regions
            .as_ref()
            .map(|regions| regions[features::region(ctx)])
    }

    /// A model from its parts: the scaler, one weight per feature, the intercept.
    ///
    /// # Errors
    /// [`ModelError::Length`] or [`ModelError::Value`] for wrong lengths, non-finite
    /// numbers or non-positive scales, and for parts that are finite but fold into a
    /// model that is not (a weight over a tiny scale).
    pub fn from_parts(
        scaler: &Scaler,
        weights: &[f64],
        intercept: f64,
    ) -> Result<Self, ModelError> {
        let n = N_FEATURES;
        for (field, found) in [
            ("scaler.mean", scaler.mean.len()),
            ("scaler.scale", scaler.scale.len()),
            ("weights", weights.len()),
        ] {
            if found != n {
                return Err(ModelError::Length {
                    field,
                    expected: n,
                    found,
                });
            }
        }
        for (i, ((&mean, &scale), &w)) in scaler
            .mean
            .iter()
            .zip(&scaler.scale)
            .zip(weights)
            .enumerate()
        {
            finite(format_args!("scaler.mean[{i}]"), mean)?;
            finite(format_args!("weights[{i}]"), w)?;
            if !(scale.is_finite() && scale > 0.0) {
                return Err(ModelError::Value {
                    field: format!("scaler.scale[{i}]"),
                    problem: format!("{scale} is not a positive number"),
                });
            }
        }
        finite("intercept", intercept)?;
        let mut m = Self {
            mean: [0.0; N_FEATURES],
            scale: [1.0; N_FEATURES],
            weights: [0.0; N_FEATURES],
            intercept,
            folded: [0.0; N_FEATURES],
            folded_intercept: intercept,
            regions: None,
        };
        m.mean.copy_from_slice(&scaler.mean);
        m.scale.copy_from_slice(&scaler.scale);
        m.weights.copy_from_slice(weights);
        m.fold();
        // Finite parts can fold to infinite ones (a weight over a scale of 1e-310): such a
        // model would predict NaN for every context.
        for (i, &f) in m.folded.iter().enumerate() {
            if !f.is_finite() {
                return Err(ModelError::Value {
                    field: format!("weights[{i}]"),
                    problem: format!(
                        "{} over scaler.scale[{i}] = {:e} is not a finite number",
                        crate::attempt::schema::shown(m.weights[i]),
                        m.scale[i]
                    ),
                });
            }
        }
        if !m.folded_intercept.is_finite() {
            return Err(ModelError::Value {
                field: "intercept".into(),
                problem: format!(
                    "{} less the weights times the scaler's means over its scales is not a finite number",
                    m.intercept
                ),
            });
        }
        // Finite folded weights can still overflow the logit of some context (two weights
        // of 1e308 and -1e308 sum to NaN): the largest logit any encodable context could
        // reach must be a finite number.
        let reach = m.folded_intercept.abs()
            + m.folded
                .iter()
                .map(|w| w.abs() * features::FEATURE_BOUND)
                .sum::<f64>();
        if !reach.is_finite() {
            let (i, _) = m
                .folded
                .iter()
                .enumerate()
                .fold((0, 0.0f64), |best, (i, w)| {
                    if w.abs() > best.1 { (i, w.abs()) } else { best }
                });
            return Err(ModelError::Value {
                field: "weights".into(),
                problem: format!(
                    "the logit could overflow: weights (over their scales) up to {:e} (weights[{i}]) times features up to {:e} is not a finite number",
                    m.folded[i],
                    features::FEATURE_BOUND
                ),
            });
        }
        Ok(m)
    }

    /// Folds the scaler into the weights, so that a prediction is one dot product:
    /// `w · (x − m) / s = (w / s) · x − Σ w m / s`.
    fn fold(&mut self) {
        let mut shift = 0.0;
        for j in 0..N_FEATURES {
            self.folded[j] = self.weights[j] / self.scale[j];
            shift += self.folded[j] * self.mean[j];
        }
        self.folded_intercept = self.intercept - shift;
    }

    /// Parses, validates and loads `model.json`'s text.
    ///
    /// # Errors
    /// See [`ModelArtifact::from_json`].
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        Self::from_artifact(&ModelArtifact::from_json(text)?)
    }

    /// A model on unscaled features with the weights `weight(name)` (for tests, examples
    /// and hand-made models), checked as [`from_parts`](Self::from_parts) checks a model.
    ///
    /// # Errors
    /// [`ModelError::Value`] for a weight or intercept that is not a finite number, or
    /// weights whose logit could overflow for some context.
    pub fn from_weights(intercept: f64, weight: impl Fn(&str) -> f64) -> Result<Self, ModelError> {
        let weights: Vec<f64> = features::ALL.iter().map(|f| weight(f.name())).collect();
        let scaler = Scaler {
            mean: vec![0.0; N_FEATURES],
            scale: vec![1.0; N_FEATURES],
        };
        Self::from_parts(&scaler, &weights, intercept)
    }

    /// The linear score (log-odds of success) of a feature vector.
    pub fn logit(&self, x: &[f64; N_FEATURES]) -> f64 {
        self.folded_intercept + dot(&self.folded, x)
    }

    /// The probability of success of a feature vector.
    pub fn p_features(&self, x: &[f64; N_FEATURES]) -> f64 {
        sigmoid(self.logit(x))
    }

    /// Each feature's contribution to the log-odds for `ctx` (weight × standardized value,
    /// computed with the folded weight - weight over scale - that validation checked
    /// finite: a tiny scale under a zero weight gives 0, not 0 × ∞).
    pub fn contributions(&self, ctx: &AttemptContext) -> [f64; N_FEATURES] {
        let x = features::encode(ctx);
        let mut c = [0.0; N_FEATURES];
        for (((ci, &xi), &m), &f) in c.iter_mut().zip(&x).zip(&self.mean).zip(&self.folded) {
            *ci = f * (xi - m);
        }
        c
    }
}

/// A linear score summed as the encoder puts the features, in four independent sums
/// (by column).
struct Score<'a> {
    weights: &'a [f64; N_FEATURES],
    sums: [f64; 4],
}

impl features::FeatureSink for Score<'_> {
    #[inline(always)]
    fn put(&mut self, f: features::Feature, v: f64) {
        let i = f as usize;
        self.sums[i % 4] += self.weights[i] * v;
    }
}

/// The logistic function, stable for large `|z|`.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `a · b`, in eight independent sums: one chain of additions would wait on each, and a
/// prediction is bound by that latency, not by the arithmetic.
fn dot(a: &[f64; N_FEATURES], b: &[f64; N_FEATURES]) -> f64 {
    let mut acc = [0.0; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    for (k, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[k] += x * y;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

impl SuccessModel for LogisticModel {
    /// The encoder puts each feature straight into the score ([`features::encode_with`]):
    /// a feature vector stored one value at a time and reloaded in pairs for a dot
    /// product stalls on every pair.
    fn p_success(&self, ctx: &AttemptContext) -> f64 {
        let mut score = Score {
            weights: &self.folded,
            sums: [0.0; 4],
        };
        features::encode_with(ctx, &mut score);
        let [a, b, c, d] = score.sums;
        sigmoid(self.folded_intercept + ((a + b) + (c + d)))
    }

    fn trained_on(&self, ctx: &AttemptContext) -> Option<u64> {
        self.rows_like(ctx)
    }

    /// Encodes `ctx` once and folds the features that move with the wait into one slope
    /// per `ln(1 + wait ms)` ([`features::log_delay_basis`]), two Retry-After weights
    /// ([`features::delay_terms`]) and the age curve's weights ([`features::age_terms`]):
    /// a wait then costs two logarithms (one when the caller has the wait's:
    /// `p_success_by_logged_delay`), a few multiplications and a sigmoid.
    fn p_success_by_delay(&self, ctx: &AttemptContext, delays: &[Duration], out: &mut [f64]) {
        self.by_delay(ctx, delays, None, out);
    }

    fn p_success_by_logged_delay(
        &self,
        ctx: &AttemptContext,
        delays: &[Duration],
        log_delays: &[f64],
        out: &mut [f64],
    ) {
        self.by_delay(ctx, delays, Some(log_delays), out);
    }
}

impl LogisticModel {
    /// `p_success_by_delay`, with the waits' logarithms when the caller has them.
    fn by_delay(
        &self,
        ctx: &AttemptContext,
        delays: &[Duration],
        logs: Option<&[f64]>,
        out: &mut [f64],
    ) {
        use features::Feature as F;
        let x = features::encode(ctx);
        let moving = features::DELAY_FEATURES
            .iter()
            .map(|f| self.folded[*f as usize] * x[*f as usize])
            .sum::<f64>();
        let fixed = self.logit(&x) - moving;
        let slope = features::LOG_DELAY_FEATURES
            .iter()
            .zip(features::log_delay_basis(ctx))
            .map(|(f, m)| self.folded[*f as usize] * m)
            .sum::<f64>();
        let waited = self.folded[F::WaitedRetryAfter as usize];
        let short = self.folded[F::LogShortOfRetryAfterMs as usize];
        let age = features::AGE_FEATURES.map(|f| self.folded[f as usize]);
        for (i, (d, o)) in delays.iter().zip(out.iter_mut()).enumerate() {
            let (l, w, s) = match logs.and_then(|l| l.get(i)) {
                Some(log) => features::delay_terms_logged(ctx, *d, *log),
                None => features::delay_terms(ctx, *d),
            };
            let a: f64 = features::age_terms(ctx, *d)
                .iter()
                .zip(&age)
                .map(|(v, k)| v * k)
                .sum();
            *o = fixed + slope * l + waited * w + short * s + a;
        }
        // The logistic function in a loop of its own: its calls into the C library would
        // spill the loop's registers above at every wait.
        for o in out.iter_mut().take(delays.len()) {
            *o = sigmoid(*o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::ErrorKind;
    use crate::features::Feature;
    use proptest::prelude::*;
    use std::time::Duration;

    fn artifact() -> ModelArtifact {
        let n = N_FEATURES;
        ModelArtifact {
            format: ARTIFACT_FORMAT.into(),
            schema_version: ARTIFACT_SCHEMA.into(),
            name: "default".into(),
            version: 1,
            kind: LOGISTIC.into(),
            label: LabelSpec {
                positive: POSITIVE_LABEL.into(),
                definition: "outcome == \"success\"".into(),
            },
            features: FeatureSpec::current().with_region_rows(
                (0..features::N_REGIONS)
                    .map(|i| (features::region_name(i), 1_000))
                    .collect(),
            ),
            scaler: Scaler {
                mean: (0..n).map(|i| i as f64 * 0.1).collect(),
                scale: (0..n).map(|i| 1.0 + i as f64).collect(),
            },
            weights: (0..n)
                .map(|i| if i % 2 == 0 { 0.3 } else { -0.2 })
                .collect(),
            intercept: 0.4,
            regularization: Regularization {
                kind: "l2".into(),
                alpha: 1.0,
            },
            training: serde_json::json!({"rows": 10}),
            metrics: serde_json::Value::Null,
            created_at: "2026-11-27T00:00:00Z".into(),
            code_version: "test".into(),
        }
    }

    fn refused(edit: impl FnOnce(&mut serde_json::Value)) -> ModelError {
        let mut v = serde_json::to_value(artifact()).unwrap();
        edit(&mut v);
        ModelArtifact::from_json(&v.to_string()).unwrap_err()
    }

    #[test]
    fn round_trips_and_evaluates_as_written() {
        let a = artifact();
        let back = ModelArtifact::from_json(&a.to_json()).unwrap();
        assert_eq!(back, a);
        let m = LogisticModel::from_artifact(&back).unwrap();
        let mut ctx = AttemptContext::first("t");
        ctx.attempt = 3;
        ctx.error = Some(ErrorKind::Http503);
        ctx.delay = Duration::from_millis(250);
        let x = features::encode(&ctx);
        let z: f64 = a.intercept
            + (0..N_FEATURES)
                .map(|i| a.weights[i] * (x[i] - a.scaler.mean[i]) / a.scaler.scale[i])
                .sum::<f64>();
        assert!((m.p_success(&ctx) - 1.0 / (1.0 + (-z).exp())).abs() < 1e-12);
        let c: f64 = m.contributions(&ctx).iter().sum();
        assert!((c + a.intercept - z).abs() < 1e-12);
    }

    #[test]
    fn fields_from_a_later_minor_version_are_ignored_and_a_new_way_to_compute_p_refused() {
        let mut v = serde_json::to_value(artifact()).unwrap();
        v["schema_version"] = "1.7".into();
        v["lineage"] = serde_json::json!({"parent": 3});
        assert!(ModelArtifact::from_json(&v.to_string()).is_ok());
        // A model whose p is the logistic's passed through a calibration step is a new
        // kind: evaluating it as a plain logistic would answer other probabilities.
        v["kind"] = "logistic+isotonic".into();
        v["calibration"] = serde_json::json!({"kind": "isotonic"});
        let e = ModelArtifact::from_json(&v.to_string()).unwrap_err();
        assert!(matches!(e, ModelError::Kind(_)), "{e}");
    }

    #[test]
    fn refuses_what_is_not_an_artifact() {
        let e = ModelArtifact::from_json("{\"format\": \"retrywise-model\",").unwrap_err();
        assert!(matches!(e, ModelError::Json { line: 1, .. }), "{e}");
        let e = refused(|v| {
            v.as_object_mut().unwrap().remove("weights");
        });
        assert!(e.to_string().contains("missing field `weights`"), "{e}");
        let e = refused(|v| v["intercept"] = "high".into());
        assert!(
            e.to_string()
                .contains("`intercept`: invalid type: string \"high\""),
            "{e}"
        );
        let e = refused(|v| v["weights"][3] = serde_json::Value::Null);
        assert!(
            e.to_string().contains("`weights[3]`: invalid type: null"),
            "{e}"
        );
        let e = refused(|v| v["label"]["positive"] = 1.into());
        assert!(
            e.to_string()
                .contains("`label.positive`: invalid type: integer `1`"),
            "{e}"
        );
        // A region given twice: refused, naming it (a plain map kept the last).
        let json = artifact().to_json();
        let at = json.find("\"region_rows\"").unwrap();
        let open = at + json[at..].find('{').unwrap() + 1;
        let key_end = open + json[open..].find(':').unwrap();
        let key = json[open..key_end].trim().to_owned();
        let twice = format!("{}{key}: 0, {}", &json[..open], &json[open..]);
        let e = ModelArtifact::from_json(&twice).unwrap_err().to_string();
        assert!(
            e.contains("features.region_rows") && e.contains("is given twice"),
            "{e}"
        );
    }

    #[test]
    fn what_follows_the_document_makes_it_no_artifact() {
        // A shorter artifact written over a longer one, the file not cut to its length.
        let json = artifact().to_json();
        assert!(ModelArtifact::from_json(&format!("{json}\n")).is_ok());
        let e = ModelArtifact::from_json(&format!("{json}0.5, 0.25]}}")).unwrap_err();
        assert!(
            matches!(&e, ModelError::Json { field, .. } if field == "the document")
                && e.to_string().contains("trailing characters"),
            "{e}"
        );
    }

    #[test]
    fn another_kind_of_artifact_is_refused_as_such_whatever_its_shape() {
        let e = ModelArtifact::from_json(r#"{"format": "onnx", "graph": {}}"#).unwrap_err();
        assert!(matches!(&e, ModelError::Format(f) if f == "onnx"), "{e}");
        // A tree model has no scaler or weights: refused for its kind, not for them.
        let mut v = serde_json::to_value(artifact()).unwrap();
        v["kind"] = "gbdt".into();
        v["trees"] = serde_json::json!([]);
        let o = v.as_object_mut().unwrap();
        o.remove("scaler");
        o.remove("weights");
        let e = ModelArtifact::from_json(&v.to_string()).unwrap_err();
        assert!(matches!(&e, ModelError::Kind(k) if k == "gbdt"), "{e}");
        // A schema 2 whose features became a string: the header's objects are not there,
        // its top level is.
        let mut v = serde_json::to_value(artifact()).unwrap();
        v["schema_version"] = "2.0".into();
        v["features"] = "v3".into();
        let e = ModelArtifact::from_json(&v.to_string()).unwrap_err();
        assert!(
            matches!(&e, ModelError::Schema { found } if found == "2.0"),
            "{e}"
        );
        // A schema 2 whose weights became an object.
        let mut v = serde_json::to_value(artifact()).unwrap();
        v["schema_version"] = "2.0".into();
        v["weights"] = serde_json::json!({"bias": 1.0});
        let e = ModelArtifact::from_json(&v.to_string()).unwrap_err();
        assert!(
            matches!(&e, ModelError::Schema { found } if found == "2.0"),
            "{e}"
        );
        // Another feature set, and another label, whatever else changed with them.
        let mut v = serde_json::to_value(artifact()).unwrap();
        v["features"]["set"] = "99".into();
        v["features"]["names"] = serde_json::json!(["a"]);
        let e = ModelArtifact::from_json(&v.to_string()).unwrap_err();
        assert!(
            matches!(&e, ModelError::FeatureSet { found } if found == "99"),
            "{e}"
        );
        let mut v = serde_json::to_value(artifact()).unwrap();
        v["label"]["positive"] = "failure".into();
        v.as_object_mut().unwrap().remove("intercept");
        let e = ModelArtifact::from_json(&v.to_string()).unwrap_err();
        assert!(matches!(&e, ModelError::Label(l) if l == "failure"), "{e}");
    }

    #[test]
    fn a_hand_made_model_is_checked_like_a_loaded_one() {
        let e = LogisticModel::from_weights(f64::NAN, |_| 0.0).unwrap_err();
        assert!(e.to_string().contains("intercept"), "{e}");
        let e = LogisticModel::from_weights(0.0, |n| {
            if n == Feature::ErrorHttp429.name() {
                f64::INFINITY
            } else {
                0.0
            }
        })
        .unwrap_err();
        assert!(e.to_string().contains("weights["), "{e}");
        // Finite weights whose logit could overflow: 1e308 and -1e308 sum to NaN.
        let e = LogisticModel::from_weights(0.0, |_| 1e308).unwrap_err();
        assert!(e.to_string().contains("could overflow"), "{e}");
    }

    #[test]
    fn refuses_an_incompatible_artifact_naming_the_field() {
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let short_weights = format!(
            "`weights` has {} values, expected {}",
            features::N_FEATURES - 1,
            features::N_FEATURES
        );
        let no_descriptions = format!(
            "`features.descriptions` has 0 values, expected {}",
            features::N_FEATURES
        );
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["format"] = "onnx".into()),
                "`format` is `onnx`",
            ),
            (
                Box::new(|v| v["schema_version"] = "2.0".into()),
                "`schema_version` 2.0 is not supported",
            ),
            (
                Box::new(|v| v["schema_version"] = "1".into()),
                "`schema_version` 1 is not supported",
            ),
            (
                Box::new(|v| v["schema_version"] = "1.0.0-rc".into()),
                "`schema_version` 1.0.0-rc is not supported",
            ),
            (
                Box::new(|v| v["schema_version"] = "1.x".into()),
                "`schema_version` 1.x is not supported",
            ),
            (Box::new(|v| v["kind"] = "gbdt".into()), "`kind` is `gbdt`"),
            (
                Box::new(|v| v["label"]["positive"] = "failure".into()),
                "`label.positive` is `failure`",
            ),
            (
                Box::new(|v| v["features"]["set"] = "retrywise-features/0".into()),
                "`features.set` is `retrywise-features/0`",
            ),
            (
                Box::new(|v| v["features"]["names"][1] = "log_wait_ms".into()),
                "`features.names[1]` is `log_wait_ms`, the encoder's column 1 is `log_delay_ms`",
            ),
            (
                Box::new(|v| {
                    v["weights"].as_array_mut().unwrap().pop();
                }),
                &short_weights,
            ),
            (
                Box::new(|v| {
                    v["features"]["descriptions"]
                        .as_array_mut()
                        .unwrap()
                        .clear();
                }),
                &no_descriptions,
            ),
            (
                Box::new(|v| v["scaler"]["scale"][4] = 0.0.into()),
                "`scaler.scale[4]` is invalid: 0 is not a positive number",
            ),
            (
                Box::new(|v| v["scaler"]["scale"][5] = (-2.0).into()),
                "`scaler.scale[5]` is invalid",
            ),
            (
                Box::new(|v| v["regularization"]["alpha"] = (-1.0).into()),
                "`regularization.alpha` is invalid",
            ),
            (
                Box::new(|v| v["created_at"] = "yesterday".into()),
                "`created_at` is invalid: `yesterday` is not an RFC 3339 time",
            ),
            (
                Box::new(|v| v["name"] = "../../etc".into()),
                "`name` is invalid: `../../etc` is not a model name",
            ),
            (
                Box::new(|v| v["name"] = " default".into()),
                "`name` is invalid: ` default` is not a model name",
            ),
            (
                Box::new(|v| v["features"]["health_window_ms"] = (-5.0).into()),
                "`features.health_window_ms` is invalid: -5 is not a positive number",
            ),
            // Finite parts that fold into a model predicting NaN.
            (
                Box::new(|v| {
                    v["scaler"]["scale"][3] = 1e-310.into();
                    v["weights"][3] = 1e10.into();
                }),
                "`weights[3]` is invalid: 10000000000 over scaler.scale[3] = 1e-310 is not a finite number",
            ),
            (
                Box::new(|v| {
                    v["scaler"]["mean"][3] = 1e300.into();
                    v["weights"][3] = 1e300.into();
                }),
                "`intercept` is invalid",
            ),
            // Finite folded weights whose logit overflows for some context.
            (
                Box::new(|v| {
                    v["weights"][0] = 1e308.into();
                    v["weights"][1] = (-1e308).into();
                    v["scaler"]["scale"][0] = 1.0.into();
                    v["scaler"]["scale"][1] = 1.0.into();
                    v["scaler"]["mean"][0] = 0.0.into();
                    v["scaler"]["mean"][1] = 0.0.into();
                }),
                "`weights` is invalid: the logit could overflow",
            ),
        ];
        for (edit, want) in cases {
            let e = refused(edit);
            assert!(e.to_string().contains(want), "{e} (wanted {want})");
        }
        // JSON has no NaN or infinity; an artifact built in code can.
        let mut a = artifact();
        a.weights[2] = f64::NAN;
        assert_eq!(
            a.validate().unwrap_err().to_string(),
            "`weights[2]` is invalid: NaN is not a finite number"
        );
        let mut a = artifact();
        a.intercept = f64::INFINITY;
        assert!(
            a.validate()
                .unwrap_err()
                .to_string()
                .contains("`intercept`")
        );
        assert!(LogisticModel::from_json("[]").is_err());
    }

    #[test]
    fn from_weights_names_features_by_their_column() {
        let m = LogisticModel::from_weights(0.0, |n| {
            if n == Feature::ErrorHttp429.name() {
                2.0
            } else {
                0.0
            }
        })
        .unwrap();
        let mut ctx = AttemptContext::first("t");
        ctx.attempt = 2;
        ctx.error = Some(ErrorKind::Http429);
        assert!((m.p_success(&ctx) - sigmoid(2.0)).abs() < 1e-12);
    }

    #[test]
    fn creation_times_are_rfc3339() {
        for ok in [
            "2026-11-27T00:00:00Z",
            "2026-11-27T00:00:00.123Z",
            "2026-11-27T00:00:00+01:00",
            "2026-11-27 00:00:00-05:30",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "",
            "yesterday",
            "2026-11-27",
            "2026-11-27T00:00:00",
            "2026-11-27T00:00:00.Z",
            "2026-11-27T00:00:00+0100",
            "2026-11-27T00:00:00Zjunk",
            "2026-11-2ÿT00:00:00Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn training_rows_per_failure_are_checked() {
        let mut a = artifact();
        a.features = a.features.with_error_rows(
            [("first".to_owned(), 900), ("http_503".to_owned(), 40)]
                .into_iter()
                .collect(),
        );
        a.validate().unwrap();
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(ModelArtifact::from_json(&text).unwrap(), a);
        a.features.error_rows = Some([("http_999".to_owned(), 1)].into_iter().collect());
        match a.validate() {
            Err(ModelError::Value { field, .. }) => {
                assert_eq!(field, "features.error_rows.http_999")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn training_rows_per_region_say_where_the_model_was_trained() {
        let mut c = AttemptContext::first("t");
        c.attempt = 2;
        c.error = Some(ErrorKind::Http503);
        c.latency = Some(std::time::Duration::from_millis(1));
        c.failure_rate = Some(0.99);
        c.in_flight = Some(2);
        let mut a = artifact();
        a.features = a
            .features
            .with_error_rows([("http_503".to_owned(), 5000)].into_iter().collect())
            .with_region_rows(
                [(
                    "http_503/latency<10ms/failing>=50%/in_flight>=100".to_owned(),
                    5000,
                )]
                .into_iter()
                .collect(),
            );
        let m = LogisticModel::from_artifact(&a).unwrap();
        assert_eq!(
            m.trained_on(&c),
            Some(0),
            "503s seen, but not in a quiet target"
        );
        c.in_flight = Some(300);
        assert_eq!(m.trained_on(&c), Some(5000));
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(ModelArtifact::from_json(&text).unwrap(), a);
        a.features.region_rows = Some([("http_503/soon".to_owned(), 1)].into_iter().collect());
        match a.validate() {
            Err(ModelError::Value { field, .. }) => {
                assert_eq!(field, "features.region_rows.http_503/soon")
            }
            other => panic!("{other:?}"),
        }
        // Without them the model would be trusted everywhere: refused.
        a.features.region_rows = None;
        let err = a.validate().unwrap_err();
        assert!(
            matches!(&err, ModelError::Value { field, .. } if field == "features.region_rows"),
            "{err}"
        );
        assert!(err.to_string().contains("is missing"), "{err}");
    }

    proptest! {
        /// Probabilities are numbers in [0, 1] for every model and context the crate
        /// accepts, and the stable sigmoid agrees with the textbook one.
        #[test]
        fn probabilities_stay_in_the_unit_interval(
            w in proptest::collection::vec(-50.0f64..50.0, N_FEATURES),
            b in -50.0f64..50.0,
            attempt in 1u32..20,
            delay_ms in 0u64..10_000_000,
            rate in proptest::option::of(0.0f64..=1.0),
        ) {
            let scaler = Scaler { mean: vec![0.0; N_FEATURES], scale: vec![1.0; N_FEATURES] };
            let m = LogisticModel::from_parts(&scaler, &w, b).unwrap();
            let mut ctx = AttemptContext::first("t");
            ctx.attempt = attempt;
            ctx.error = (attempt > 1).then_some(ErrorKind::Timeout);
            ctx.delay = Duration::from_millis(delay_ms);
            ctx.failure_rate = rate;
            let p = m.p_success(&ctx);
            prop_assert!((0.0..=1.0).contains(&p));
            let z = b.clamp(-30.0, 30.0);
            prop_assert!((sigmoid(z) - 1.0 / (1.0 + (-z).exp())).abs() < 1e-12);
        }

        /// The score summed as the encoder puts the features is the dot product of the
        /// encoded vector: one encoder, two ways to read it, one answer.
        #[test]
        fn the_streamed_score_is_the_vectors(
            w in proptest::collection::vec(-3.0f64..3.0, N_FEATURES),
            mean in proptest::collection::vec(-2.0f64..2.0, N_FEATURES),
            scale in proptest::collection::vec(0.1f64..5.0, N_FEATURES),
            b in -3.0f64..3.0,
            ctx in crate::features::strategies::any_context(),
        ) {
            let scaler = Scaler { mean, scale };
            let m = LogisticModel::from_parts(&scaler, &w, b).unwrap();
            let dense = m.p_features(&crate::features::encode(&ctx));
            let streamed = m.p_success(&ctx);
            prop_assert!((dense - streamed).abs() < 1e-12, "{} vs {}", dense, streamed);
        }

        /// Weighing many waits at once gives what asking once per wait gives.
        #[test]
        fn by_delay_equals_one_at_a_time(
            w in proptest::collection::vec(-3.0f64..3.0, N_FEATURES),
            mean in proptest::collection::vec(-2.0f64..2.0, N_FEATURES),
            scale in proptest::collection::vec(0.1f64..5.0, N_FEATURES),
            b in -3.0f64..3.0,
            kind in proptest::sample::select(ErrorKind::ALL.to_vec()),
            ra_ms in proptest::option::of(0u64..20_000),
            rate in proptest::option::of(0.0f64..=1.0),
            since_ms in proptest::option::of(0u64..60_000),
            delays in proptest::collection::vec(0u64..60_000, 1..40),
        ) {
            let scaler = Scaler { mean, scale };
            let m = LogisticModel::from_parts(&scaler, &w, b).unwrap();
            let mut ctx = AttemptContext::first("t");
            ctx.attempt = 3;
            ctx.error = Some(kind);
            ctx.retry_after = ra_ms.map(Duration::from_millis);
            ctx.failure_rate = rate;
            // The failure's age moves with the wait too (feature set 3's age curve).
            ctx.since_success = since_ms.map(Duration::from_millis);
            ctx.delay = Duration::from_millis(123);
            let delays: Vec<Duration> = delays.into_iter().map(Duration::from_millis).collect();
            let mut out = vec![0.0; delays.len()];
            m.p_success_by_delay(&ctx, &delays, &mut out);
            // The same, given the waits' logarithms (as a decider's grid has them).
            let logs: Vec<f64> = delays.iter().map(|d| crate::features::log_ms(*d)).collect();
            let mut logged = vec![0.0; delays.len()];
            m.p_success_by_logged_delay(&ctx, &delays, &logs, &mut logged);
            prop_assert_eq!(&logged, &out);
            for (d, p) in delays.iter().zip(&out) {
                let mut c = ctx.clone();
                c.delay = *d;
                prop_assert!((m.p_success(&c) - p).abs() < 1e-9, "{:?}: {} vs {}", d, m.p_success(&c), p);
            }
        }
    }
}
