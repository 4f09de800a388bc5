//! Reading request bodies: JSON parsed with errors that name the field, NDJSON, media types,
//! and fields that may be absent but not null.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::error::ApiError;

/// The error for a body that does not deserialize: `what` (where in the request, may be
/// empty), then the field path, then what serde said.
fn refusal(what: &str, path: &str, inner: impl std::fmt::Display) -> ApiError {
    let at: Vec<&str> = [what, path]
        .into_iter()
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if at.is_empty() {
        ApiError::bad_request(inner.to_string())
    } else {
        ApiError::bad_request(format!("{}: {inner}", at.join(": ")))
    }
}

/// Parses JSON, naming the field of the first problem (`contexts[2].delay_ms: …`); `what`
/// is only called on failure.
pub(crate) fn parse<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, ApiError> {
    // The fast path; on failure, parse again keeping track of the path, for the message.
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    // What the fast path refused may be a value with more after it (two records on one
    // line, a second array): refused, never read as the first value alone.
    match serde_path_to_error::deserialize(&mut *de) {
        Ok(v) => match de.end() {
            Ok(()) => Ok(v),
            Err(e) => Err(refusal(&what(), "", e)),
        },
        Err(e) => Err(refusal(&what(), &e.path().to_string(), e.inner())),
    }
}

/// Like [`parse`], for a body that must be one JSON object (a request): serde would also
/// read a struct from an array of its fields in order, which no client means.
pub(crate) fn parse_object<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => parse(bytes, what),
        Some(_) => {
            let at = what();
            let at = if at.is_empty() { "body".to_owned() } else { at };
            Err(ApiError::bad_request(format!(
                "{at}: expected a JSON object"
            )))
        }
        None => Err(ApiError::bad_request(
            "body: empty (expected a JSON object)",
        )),
    }
}

/// The media type of a request, lower case, without parameters (`""` when absent).
pub(crate) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a media type is read as JSON: JSON itself, none (most clients send none), and
/// `application/x-www-form-urlencoded`, which `curl -d` puts on the JSON it sends — on
/// every JSON route alike.
pub(crate) fn is_json(ct: &str) -> bool {
    ct.is_empty()
        || ct == "application/json"
        || ct.ends_with("+json")
        || ct == "application/x-www-form-urlencoded"
}

/// Whether a media type is newline-delimited JSON.
pub(crate) fn is_ndjson(ct: &str) -> bool {
    matches!(
        ct,
        "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
    )
}

/// The body limit in force (`Config::body_limit`), for the 413's message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub(crate) usize);

/// The request's headers and body, with 413 for a body over the limit — at once when its
/// `Content-Length` says so, before waiting for a body that will not be kept (read
/// through and dropped meanwhile, up to [`DRAIN_MAX`] and for [`DRAIN_FOR`], so that the
/// connection is not reset under the answer) — and 415
/// for a compressed one (no route reads an encoded body: read as it is, a gzipped body
/// was a puzzling 400, and a plain one that claimed gzip was taken).
pub(crate) async fn body(req: Request) -> Result<(HeaderMap, Bytes), ApiError> {
    // The headers are moved out, not copied: the body limit lives in the extensions.
    let (mut parts, b) = req.into_parts();
    let headers = std::mem::take(&mut parts.headers);
    if let Some(enc) = headers.get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {:?} is not supported; send the body uncompressed",
            enc
        )));
    }
    let limit = parts.extensions.get::<BodyLimit>().map(|l| l.0);
    let too_large = |n: usize| {
        ApiError::PayloadTooLarge(format!(
            "the body is larger than the limit of {n} bytes (setting body_limit_bytes); send fewer records or contexts per request"
        ))
    };
    if let Some(n) = limit
        && let Some(len) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&len| len > n as u64)
    {
        // Answered at once, and the body read (and dropped) meanwhile when it is not too
        // much: closing a connection with a body unread in it resets it, and the client
        // may then never read its 413 - a shipper would send the batch whole again
        // instead of in halves.
        if len <= DRAIN_MAX {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(DRAIN_FOR, drain(b, len)).await;
            });
        }
        return Err(too_large(n));
    }
    let bytes = Bytes::from_request(Request::from_parts(parts, b), &())
        .await
        .map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                match limit {
                    Some(n) => too_large(n),
                    None => ApiError::PayloadTooLarge(r.body_text()),
                }
            } else {
                ApiError::bad_request(r.body_text())
            }
        })?;
    Ok((headers, bytes))
}

/// The largest body over the limit that is read through after its 413 (a larger one is
/// not read, and its client may see the connection reset before the answer).
const DRAIN_MAX: u64 = 16 << 20;

/// How long a body refused as too large is read for, at most.
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads `body` to its end, or past `most` bytes, keeping nothing.
async fn drain(mut body: axum::body::Body, most: u64) {
    use http_body_util::BodyExt;
    let mut read = 0u64;
    while read <= most {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => break,
        }
    }
}

/// A JSON body (`Content-Type` absent or JSON) holding one object - a request; an array,
/// or anything after the object, is a 400 - parsed with field-naming errors.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (headers, bytes) = body(req).await?;
        let ct = content_type(&headers);
        if !is_json(&ct) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "expected a JSON body, got Content-Type {ct}"
            )));
        }
        parse_object(&bytes, String::new).map(ApiJson)
    }
}

/// A path parameter (`/v1/targets/{target}`), with a 400 and a JSON error body for one that
/// cannot be read (not UTF-8, say) instead of axum's plain-text answer.
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(t)| ApiPath(t))
            .map_err(|r| ApiError::bad_request(format!("path: {}", r.body_text())))
    }
}

/// A field that may be absent but, when present, must be a value: `null` is refused (an
/// `Option` would take it for absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Given<T> {
    /// Not in the request.
    #[default]
    Absent,
    /// In the request.
    Given(T),
}

impl<T> Given<T> {
    /// As an option.
    pub fn into_option(self) -> Option<T> {
        match self {
            Given::Absent => None,
            Given::Given(t) => Some(t),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Given<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Given::Given)
    }
}

/// A JSON array of at most `N` items, refused at the first item beyond them: a body of
/// many small items is never held whole in its larger parsed form (a 27-byte context
/// parses into some 250 bytes) only to be refused for its length.
#[derive(Clone, Default, PartialEq)]
pub struct AtMost<T, const N: usize>(pub Vec<T>);

impl<T: std::fmt::Debug, const N: usize> std::fmt::Debug for AtMost<T, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T, const N: usize> std::ops::Deref for AtMost<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<'a, T, const N: usize> IntoIterator for &'a AtMost<T, N> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for AtMost<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items<T, const N: usize>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> serde::de::Visitor<'de> for Items<T, N> {
            type Value = Vec<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an array of at most {N} items")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<T>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
                while let Some(item) = seq.next_element()? {
                    if out.len() == N {
                        return Err(serde::de::Error::custom(format!(
                            "at most {N} items, got more"
                        )));
                    }
                    out.push(item);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Items::<T, N>(std::marker::PhantomData))
            .map(AtMost)
    }
}

/// Builds a JSON value counting every node of it (scalars, arrays and their items,
/// objects and their entries) in `count`, refused at the first past `limit`; objects only
/// where `maps`.
struct Counted<'a> {
    count: &'a std::cell::Cell<usize>,
    limit: usize,
    maps: bool,
    /// Said when the limit is passed.
    said: &'a str,
}

impl Counted<'_> {
    fn node<E: serde::de::Error>(&self) -> Result<(), E> {
        let n = self.count.get() + 1;
        if n > self.limit {
            return Err(E::custom(self.said));
        }
        self.count.set(n);
        Ok(())
    }

    fn again(&self) -> Self {
        Counted {
            count: self.count,
            limit: self.limit,
            maps: self.maps,
            said: self.said,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Counted<'_> {
    type Value = serde_json::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Counted<'_> {
    type Value = serde_json::Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.maps {
            f.write_str("a JSON value")
        } else {
            f.write_str("a number, a string, null, or an array of them")
        }
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.node()?;
        Ok(serde_json::Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.node()?;
        Ok(v.into())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.node()?;
        Ok(v.into())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.node()?;
        Ok(v.into())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.node()?;
        Ok(serde_json::Value::String(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.node()?;
        Ok(serde_json::Value::String(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.node()?;
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.node()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.again())? {
            out.push(v);
        }
        Ok(serde_json::Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if !self.maps {
            return Err(serde::de::Error::invalid_type(
                serde::de::Unexpected::Map,
                &self,
            ));
        }
        self.node()?;
        let mut out = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(self.again())?;
            out.insert(k, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// A tensor's values (the inference protocol's `data`): JSON scalars, flat or in nested
/// arrays, as many as `N` rows hold - `2N + 1` values in all, scalars and arrays alike
/// (`[[1], [2], …]`), refused at the first beyond them, so that a body of a million `1,`s
/// (or `[],`s) is never held as a million parsed values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scalars<const N: usize>(pub Vec<serde_json::Value>);

impl<'de, const N: usize> Deserialize<'de> for Scalars<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{DeserializeSeed, Error};
        let count = std::cell::Cell::new(0);
        // The outer array, and `N` rows: flat, or each nested in an array of its own.
        let said = format!("more values than {N} rows hold");
        let seed = Counted {
            count: &count,
            limit: N.saturating_mul(2).saturating_add(1),
            maps: false,
            said: &said,
        };
        match seed.deserialize(d)? {
            serde_json::Value::Array(values) => Ok(Scalars(values)),
            _ => Err(D::Error::custom("expected an array of values")),
        }
    }
}

/// A small JSON object (the inference protocol's `parameters`): at most `N` nodes in all,
/// refused at the first beyond them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params<const N: usize>(pub serde_json::Map<String, serde_json::Value>);

impl<'de, const N: usize> Deserialize<'de> for Params<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{DeserializeSeed, Error};
        let count = std::cell::Cell::new(0);
        let said = format!("at most {N} values, got more");
        let seed = Counted {
            count: &count,
            limit: N,
            maps: true,
            said: &said,
        };
        match seed.deserialize(d)? {
            serde_json::Value::Object(map) => Ok(Params(map)),
            _ => Err(D::Error::custom("expected an object")),
        }
    }
}
