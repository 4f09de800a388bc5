//! `POST /v1/attempts`: recorded attempts from callers in any language, written through the
//! collector and learned from by the fleet view.
//!
//! **A 202 means written.** A batch is checked whole — one invalid record refuses it, with
//! a 400 naming the record and the field, and nothing is written — then handed to the
//! collector, and the answer waits until the collector has written it to the segment files
//! and synced them (`sync_ingest`, the default: a 202 survives a crash of the host), or,
//! with `sync_ingest = false`, until it has written them (a graceful stop makes them
//! durable; a host crash can lose the last fsync interval's). When the collector already has as many records to
//! write as its queue holds (slow or failing storage), the batch is refused with 503 and
//! `Retry-After`, which the shipper honours: nothing is acknowledged that is not written.
//! A request that times out while its batch is being written may leave it written (the
//! client then sends it again): delivery is at least once, and the records carry
//! `call_id`, `attempt`, `hedge` and `started_at_ms`, by which the trainer reads a record
//! delivered twice once.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use retrywise::attempt::AttemptRecord;
use retrywise_collect::CollectError;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{body, content_type, is_json, is_ndjson, parse};
use crate::openapi::MAX_BATCH;

/// What ingestion did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IngestResponse {
    /// Records written (and learned from by the fleet view).
    pub accepted: u64,
}

/// Checks a record with the schema's rules (a major version this build reads, values in
/// range, no field its version does not have), naming the record and the field.
fn check_record(r: AttemptRecord, at: impl Fn() -> String) -> Result<AttemptRecord, String> {
    r.validate()
        .map_err(|e| format!("{}: {}: {}", at(), e.field, e.problem))?;
    Ok(r)
}

/// The records of a body, or why it is refused: every invalid record is named (the first
/// ten).
fn records(ct: &str, bytes: &[u8]) -> Result<Vec<AttemptRecord>, ApiError> {
    const MAX_ERRORS: usize = 10;
    let mut records = Vec::new();
    let mut errors = Vec::new();
    let mut invalid = 0usize;
    let mut refuse = |msg: String| {
        invalid += 1;
        if errors.len() < MAX_ERRORS {
            errors.push(msg);
        }
    };
    if is_ndjson(ct) {
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let at = || format!("line {}", i + 1);
            match parse::<AttemptRecord>(line, at)
                .map_err(|e| e.message())
                .and_then(|r| check_record(r, at))
            {
                Ok(r) => records.push(r),
                Err(e) => refuse(e),
            }
        }
    } else if is_json(ct) {
        // Each record kept as its text and read by the record's own deserializer, as an
        // NDJSON line is: read into `Value` maps first, a duplicated key kept its last
        // value silently (an NDJSON line with one is refused).
        // A JSON array is bounded as the OpenAPI document says, refused at the item past
        // the bound (not after every item of a large body was read into memory); NDJSON
        // only by the body limit (shippers send large batches that way).
        let items: crate::extract::AtMost<Box<serde_json::value::RawValue>, MAX_BATCH> =
            parse(bytes, || "body".into()).map_err(|e| {
                // Records one per line, sent without saying so (curl's `--data-binary`
                // says form data, read as JSON): the header is what is missing.
                let objects = bytes
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|&b| b == b'{');
                let hint = if objects {
                    format!(
                        "; the body holds JSON objects, not an array of them: records one per line are NDJSON, sent with Content-Type: application/x-ndjson (this request's: {})",
                        if ct.is_empty() { "none" } else { ct }
                    )
                } else {
                    String::new()
                };
                ApiError::bad_request(format!(
                    "{} (expected a JSON array of at most {MAX_BATCH} attempt records; send NDJSON for more; nothing written){hint}",
                    e.message()
                ))
            })?;
        for (i, v) in items.0.into_iter().enumerate() {
            let at = || format!("[{i}]");
            match parse::<AttemptRecord>(v.get().as_bytes(), at)
                .map_err(|e| e.message())
                .and_then(|r| check_record(r, at))
            {
                Ok(r) => records.push(r),
                Err(e) => refuse(e),
            }
        }
    } else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "expected Content-Type application/json or application/x-ndjson, got {ct}"
        )));
    }
    if invalid > 0 {
        return Err(ApiError::bad_request(format!(
            "{invalid} invalid record{} (nothing written): {}",
            if invalid == 1 { "" } else { "s" },
            errors.join("; ")
        )));
    }
    if records.is_empty() {
        return Err(ApiError::bad_request(
            "body: no attempt record (nothing written)",
        ));
    }
    Ok(records)
}

/// Attempt records, as a JSON array (`Content-Type: application/json`) or NDJSON
/// (`application/x-ndjson`). 202 once the whole batch is written and synced to disk (with
/// the service's default `sync_ingest`; written only without it); 400 if any record is
/// invalid (nothing written); 503 with `Retry-After` when the collector cannot take it now.
#[utoipa::path(post, path = "/v1/attempts",
    request_body(content = Vec<Object>, description = "Attempt records (see data/README.md), a JSON array or NDJSON"),
    responses((status = 202, body = IngestResponse), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn ingest(
    State(st): State<AppState>,
    req: Request,
) -> Result<(StatusCode, Json<IngestResponse>), ApiError> {
    let (headers, bytes) = body(req).await?;
    let records = match records(&content_type(&headers), &bytes) {
        Ok(r) => r,
        Err(e) => {
            // Invalid batches (400), as the counter says: not a body of another media
            // type (415), which no record was read from.
            if matches!(e, ApiError::BadRequest(_)) {
                st.metrics.rejected.inc();
            }
            return Err(e);
        }
    };
    let n = records.len() as u64;
    // The fleet view learns from what is written: keep what it needs of each record.
    let seen: Vec<AttemptRecord> = records.clone();
    // The write goes on a task of its own that holds its place until the writer answers,
    // even once this request has ended: a request timeout frees the request's room, not
    // the thread its write waits on.
    let Ok(place) = Arc::clone(&st.ingest_writing).try_acquire_owned() else {
        st.metrics.busy.inc();
        return Err(ApiError::unavailable(
            "the collector is still writing earlier batches (storage slow): nothing written, send again later",
            Some(1),
        ));
    };
    let recorder = st.recorder.clone();
    let written = tokio::spawn(async move {
        let _place = place;
        recorder.write_batch(records).await
    })
    .await
    .map_err(ApiError::internal)?;
    st.sync_dropped();
    match written {
        Ok(_) => {}
        Err(CollectError::Busy { pending, capacity }) => {
            st.metrics.busy.inc();
            return Err(ApiError::unavailable(
                format!(
                    "the collector is busy ({pending} of {capacity} records waiting to be written): nothing written, send again later"
                ),
                Some(1),
            ));
        }
        Err(e @ CollectError::Flush { .. }) => {
            // Storage failed under the batch: the client keeps it and sends it again.
            st.metrics.storage_failed.inc();
            tracing::warn!(error = %e, records = n, "an ingested batch was not written");
            return Err(ApiError::unavailable(
                "the collector could not write the batch (storage failing): send again later",
                Some(1),
            ));
        }
        Err(CollectError::WriterGone) => {
            // The service is shutting down and closed its collector with this batch still
            // on its way: nothing of it was written, and another replica (or this one,
            // restarted) takes it.
            return Err(ApiError::unavailable(
                "the collector is closed (the service is shutting down): nothing written, send again",
                Some(1),
            ));
        }
        Err(e) => return Err(ApiError::internal(e)),
    }
    let now = Instant::now();
    let wall_ms = crate::shared::wall_ms();
    for r in &seen {
        let observed = st.fleet.observe(r, now, wall_ms);
        let reason = match observed {
            crate::fleet::Observed::Tracked => None,
            crate::fleet::Observed::Stale => Some("stale"),
            crate::fleet::Observed::Full => {
                tracing::debug!(target_name = %r.context.target, "fleet view full: target not tracked");
                Some("fleet_full")
            }
        };
        if let Some(reason) = reason {
            st.metrics
                .untracked
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: reason.into(),
                })
                .inc();
        }
        let tracked = observed == crate::fleet::Observed::Tracked;
        // A busy target is not counted as `other` behind idle ones that hold every slot.
        if tracked
            && st.metrics.labels_full()
            && !st.metrics.has_label(&r.context.target)
            && st
                .metrics
                .may_make_label_room(now, st.config.health_window / 10)
        {
            release_labels(&st, now);
        }
        st.metrics
            .with_target_label(&r.context.target, tracked, |labels| {
                st.metrics.ingested.get_or_create(&labels).inc();
            });
    }
    st.metrics
        .targets
        .set(i64::try_from(st.fleet.len()).unwrap_or(i64::MAX));
    // Each target of the batch, once: its circuit, limit and hedge delay as of now.
    let mut targets: Vec<&str> = seen.iter().map(|r| &*r.context.target).collect();
    targets.sort_unstable();
    targets.dedup();
    set_fleet_gauges(&st, targets);
    Ok((StatusCode::ACCEPTED, Json(IngestResponse { accepted: n })))
}

/// Gives back label slots: those of targets the fleet view forgot and - while every slot
/// is taken - those of targets idle in it, so that a busy target (ingestion calls this for
/// one without a slot) is not counted as `other` behind idle ones holding every slot.
pub(crate) fn release_labels(st: &AppState, now: Instant) {
    let full = st.metrics.labels_full();
    st.metrics
        .release(|name| st.fleet.tracks(name) && !(full && st.fleet.idle(name, now)));
}

/// Gives back the label slots of the targets the fleet view forgot (a scrape's: a gauge of
/// a target nobody tracks would show its last value for ever). Idle targets keep theirs
/// until a busy target needs one.
pub(crate) fn release_forgotten_labels(st: &AppState) {
    st.metrics.release(|name| st.fleet.tracks(name));
}

/// Sets each of `targets`' fleet gauges (circuit open, suggested concurrency limit and
/// hedge delay) as of now: for a batch's targets when it is ingested, and for every tracked
/// target at a scrape (a circuit's open time runs out with nothing ingested).
pub(crate) fn set_fleet_gauges<'a>(st: &AppState, targets: impl IntoIterator<Item = &'a str>) {
    for target in targets {
        let Some((open, limit, hedge)) = st.fleet.gauges(target) else {
            continue;
        };
        st.metrics.with_target_label(target, false, |labels| {
            if labels.target != target || labels.target == "other" {
                return; // `other`: one series for many targets, a gauge of it means nothing
            }
            st.metrics
                .circuit_open
                .get_or_create(&labels)
                .set(i64::from(open));
            st.metrics
                .concurrency_limit
                .get_or_create(&labels)
                .set(i64::from(limit));
            st.metrics
                .hedge_delay_ms
                .get_or_create(&labels)
                .set(hedge.map_or(-1.0, |d| d.as_secs_f64() * 1e3));
        });
    }
}
