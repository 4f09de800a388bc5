//! Shipping records to the service's ingestion endpoint over HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use retrywise::attempt::{AttemptRecord, HttpClassifier, HttpResponse};
use retrywise::policy::Policy;
use retrywise::recorder::Recorder;
use retrywise::retry::{AttemptTimeout, Backoff, Jitter, RetryRules};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::CollectError;
use crate::spool::{self, Spool};
use crate::stats::{Counters, RecorderStats};

/// How the shipper batches and retries. Counts of records are at most 2^24 and durations
/// at most [`retrywise::MAX_CONFIG_DURATION`] (a value beyond is refused, naming the field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipperConfig {
    /// The ingestion endpoint, e.g. `http://127.0.0.1:8080/v1/attempts`.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// Records the queue holds before `record()` starts dropping. Defaults to 65 536 (the
    /// shipper's memory bound, with one batch in flight).
    pub queue_capacity: usize,
    /// Records per request. Defaults to 1 000.
    pub batch_size: usize,
    /// A partial batch is sent after waiting this long. Defaults to 1 s.
    pub max_batch_delay: Duration,
    /// Attempts per batch before it is given up (and counted as failed). Defaults to 5.
    pub max_attempts: u32,
    /// Timeout of each request. Defaults to 10 s.
    pub attempt_timeout: Duration,
    /// First and largest wait between attempts (exponential, full jitter). Defaults to
    /// 200 ms and 10 s.
    pub backoff: (Duration, Duration),
    /// A directory where batches the endpoint did not take are kept, durably, until it
    /// takes them (oldest first; while any wait there, new batches join them, so records
    /// arrive in order). `None` (the default): such a batch is given up and counted as
    /// failed. Locked by one shipper at a time; batches left by a previous process are
    /// shipped by the next.
    pub spool: Option<PathBuf>,
    /// The most bytes the spool holds; a batch that would exceed it is given up and
    /// counted as failed. Defaults to 1 GiB.
    pub spool_max_bytes: u64,
}

impl ShipperConfig {
    /// The defaults, shipping to `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            token: None,
            queue_capacity: 65_536,
            batch_size: 1_000,
            max_batch_delay: Duration::from_secs(1),
            max_attempts: 5,
            attempt_timeout: Duration::from_secs(10),
            backoff: (Duration::from_millis(200), Duration::from_secs(10)),
            spool: None,
            spool_max_bytes: 1 << 30,
        }
    }
}

enum Msg {
    Record(Box<AttemptRecord>),
    Flush(oneshot::Sender<Result<(), CollectError>>),
    Close(oneshot::Sender<Result<(), CollectError>>),
}

/// A [`Recorder`] that ships records to an HTTP endpoint as NDJSON batches.
///
/// `record()` offers the record to a bounded queue and returns at once; when the queue is
/// full the record is dropped and counted. A background task sends batches (by size or
/// after a delay) with `POST` and `Content-Type: application/x-ndjson`, retrying with
/// exponential backoff and full jitter through retrywise's own [`Policy`] (Retry-After is
/// honoured; 4xx answers are not retried). A batch that exhausts its attempts is dropped
/// and counted as failed — unless a spool is configured ([`ShipperConfig::spool`]): then
/// it is written there durably and sent again, oldest first, until the endpoint takes it
/// (a restarted shipper sends what its predecessor left), one attempt at a time with the
/// backoff between (or the wait a Retry-After asks, if longer, up to an hour); only what
/// the endpoint refuses as invalid (400, 413, 415, 422) is given up, and with a spool kept
/// beside the others as `batch-….ndjson.refused` (a spooled batch that cannot be read, as
/// `….unreadable`, counted in `spool_unreadable` and reported by the next flush). A batch
/// refused for what it holds (400, 413, 422: not 415, which refuses how every body is
/// sent) is sent again in halves, down to single records, on its first delivery and from
/// the spool alike: a batch too large for the endpoint's body limit goes in pieces that
/// fit, and only a record the endpoint refuses is given up (set aside alone), not the good
/// records beside it; pieces after one that failed follow it into the spool, in order.
/// A batch the spool cannot keep (full, or its disk refusing) is sent once more directly
/// before it is given up. Delivery is at least once: a batch sent but not acknowledged (a
/// timeout, a crash before its file is removed) is sent again. The spool's file operations
/// run on tokio's blocking pool, and the queue is read between the spooled batches it
/// sends.
#[derive(Debug, Clone)]
pub struct ShippingRecorder {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
}

/// What the classifier needs of an HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
}

impl Answer {
    /// The wait its Retry-After asks for, if it says one.
    fn asked(&self) -> Option<std::time::Duration> {
        let v = self.retry_after.as_deref()?;
        retrywise::attempt::parse_retry_after(v, std::time::SystemTime::now()).ok()
    }
}

impl HttpResponse for Answer {
    fn status_code(&self) -> u16 {
        self.status
    }

    fn retry_after_header(&self) -> Option<&str> {
        self.retry_after.as_deref()
    }
}

impl ShippingRecorder {
    /// Starts the shipper on the current tokio runtime.
    ///
    /// # Errors
    /// [`CollectError::Endpoint`] for an endpoint that is not an `http(s)` URL;
    /// [`CollectError::Config`] for zero sizes, attempts or timeouts, or a token a header
    /// cannot carry; an error if called
    /// outside a tokio runtime; for a spool, [`CollectError::Io`] if its directory cannot
    /// be created or read, [`CollectError::DirectoryInUse`] if another shipper holds it.
    pub fn spawn(config: ShipperConfig) -> Result<Self, CollectError> {
        let url = reqwest::Url::parse(&config.endpoint).map_err(|e| CollectError::Endpoint {
            endpoint: config.endpoint.clone(),
            problem: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CollectError::Endpoint {
                endpoint: config.endpoint.clone(),
                problem: format!("scheme `{}` is not http or https", url.scheme()),
            });
        }
        // A token that cannot be a header (a newline read from a file with it) would make
        // every request fail before it is sent, as a retryable error naming nothing.
        let auth = config
            .token
            .as_deref()
            .map(|t| {
                let mut v = reqwest::header::HeaderValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| {
                        CollectError::config(
                            "token",
                            "holds a character a header cannot carry (a newline or another control character; trim a token read from a file)",
                        )
                    })?;
                v.set_sensitive(true);
                Ok::<_, CollectError>(v)
            })
            .transpose()?;
        CollectError::check_records("queue_capacity", config.queue_capacity)?;
        CollectError::check_records("batch_size", config.batch_size)?;
        if config.max_attempts == 0 {
            return Err(CollectError::config(
                "max_attempts",
                "must be greater than zero",
            ));
        }
        if config.spool.is_some() && config.spool_max_bytes == 0 {
            // Every batch kept would be given up, and every batch a predecessor left set
            // aside as unreadable.
            return Err(CollectError::config(
                "spool_max_bytes",
                "must be greater than zero with a spool (leave `spool` unset to keep none)",
            ));
        }
        CollectError::check_duration("attempt_timeout", config.attempt_timeout)?;
        CollectError::check_duration("max_batch_delay", config.max_batch_delay)?;
        let backoff = Backoff::exponential(config.backoff.0, 2.0, config.backoff.1)
            .map_err(|e| CollectError::config("backoff", e.problem))?;
        let retry = RetryRules::builder()
            .max_attempts(config.max_attempts)
            .backoff(backoff.clone())
            .jitter(Jitter::Full)
            .attempt_timeout(AttemptTimeout::Fixed(config.attempt_timeout))
            .retry_after(
                true,
                Duration::ZERO,
                config.backoff.1.max(Duration::from_secs(60)),
            )
            .build()
            .map_err(|e| CollectError::config(e.field, e.problem))?;
        let policy = Policy::builder("retrywise-ingest")
            .retry(retry)
            .classifier(HttpClassifier)
            .build()
            .map_err(|e| CollectError::config(e.field, e.problem))?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            CollectError::config(
                "runtime",
                "the shipper must be started inside a tokio runtime",
            )
        })?;
        let spool = config
            .spool
            .as_deref()
            .map(|dir| Spool::open(dir, config.spool_max_bytes))
            .transpose()?;
        // A spooled batch is tried once at a time: the spool's own backoff is its retry.
        let once = Policy::builder("retrywise-ingest-spool")
            .retry(
                RetryRules::builder()
                    .max_attempts(1)
                    .attempt_timeout(AttemptTimeout::Fixed(config.attempt_timeout))
                    .build()
                    .map_err(|e| CollectError::config(e.field, e.problem))?,
            )
            .classifier(HttpClassifier)
            .build()
            .map_err(|e| CollectError::config(e.field, e.problem))?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let counters = Arc::new(Counters::default());
        if let Some(s) = &spool {
            s.gauge(&counters);
        }
        let worker = Worker {
            spool,
            schedule: spool::Schedule::new(backoff, Instant::now()),
            once,
            drain: config.queue_capacity,
            client: client_for(&url)?,
            url,
            auth,
            batch_size: config.batch_size,
            delay: config.max_batch_delay,
            policy,
            counters: Arc::clone(&counters),
            failed_since_flush: 0,
            unreadable_since_flush: 0,
            full_at_flush: 0,
            invalid_at_flush: 0,
        };
        handle.spawn(worker.run(rx));
        Ok(Self { tx, counters })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RecorderStats {
        self.counters.snapshot()
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), CollectError>>) -> Msg,
    ) -> Result<(), CollectError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(make(ack))
            .await
            .map_err(|_| CollectError::WriterGone)?;
        done.await.map_err(|_| CollectError::WriterGone)?
    }

    /// Waits until every record recorded before this call was delivered, written to the
    /// spool, or given up.
    ///
    /// # Errors
    /// [`CollectError::Flush`] if records were given up (undeliverable, dropped for a full
    /// queue, or breaking the schema's rules) since the previous flush.
    pub async fn flush(&self) -> Result<(), CollectError> {
        self.ask(Msg::Flush).await
    }

    /// Ships what is queued and stops the task (batches in the spool stay there for the
    /// next shipper of that directory).
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub async fn close(&self) -> Result<(), CollectError> {
        match self.ask(Msg::Close).await {
            Err(CollectError::WriterGone) => Ok(()),
            other => other,
        }
    }
}

impl Recorder for ShippingRecorder {
    fn record(&self, record: AttemptRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => Counters::add(&self.counters.recorded, 1),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::add(&self.counters.dropped_full, 1)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Counters::add(&self.counters.dropped_closed, 1)
            }
        }
    }
}

struct Worker {
    spool: Option<Spool>,
    /// When to try the spool's oldest batch again.
    schedule: spool::Schedule,
    /// The policy of a spooled batch: one attempt.
    once: Policy<HttpClassifier>,
    /// The most messages taken from the queue after each spooled batch tried.
    drain: usize,
    client: reqwest::Client,
    url: reqwest::Url,
    /// `Authorization: Bearer <token>`, checked at spawn.
    auth: Option<reqwest::header::HeaderValue>,
    batch_size: usize,
    delay: Duration,
    policy: Policy<HttpClassifier>,
    counters: Arc<Counters>,
    failed_since_flush: u64,
    /// Spooled batches set aside unreadable since the last flush.
    unreadable_since_flush: u64,
    /// Records dropped for a full queue as of the previous flush (the count itself is the
    /// handle's: the worker never sees them).
    full_at_flush: u64,
    /// `dropped_invalid` at the last flush.
    invalid_at_flush: u64,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<AttemptRecord> = Vec::with_capacity(self.batch_size);
        let mut deadline = Instant::now() + self.delay;
        loop {
            let retry_spool = self
                .spool
                .as_ref()
                .filter(|s| s.waiting())
                .map(|_| self.schedule.due());
            // The spool first, so that a steady stream of records does not keep it waiting;
            // after each batch tried from it, what arrived meanwhile is taken (so neither
            // intake nor a flush waits for a whole drain).
            let msg = tokio::select! {
                biased;
                () = tokio::time::sleep_until(retry_spool.unwrap_or(deadline)), if retry_spool.is_some() => {
                    self.reship().await;
                    for _ in 0..self.drain {
                        let Ok(msg) = rx.try_recv() else { break };
                        if self.handle(msg, &mut batch, &mut deadline).await.is_break() {
                            return self.drop_queued(&mut rx);
                        }
                    }
                    continue;
                }
                msg = rx.recv() => msg,
                () = tokio::time::sleep_until(deadline), if !batch.is_empty() => {
                    self.ship(&mut batch).await;
                    continue;
                }
            };
            let Some(msg) = msg else {
                self.ship(&mut batch).await;
                return;
            };
            if self.handle(msg, &mut batch, &mut deadline).await.is_break() {
                return self.drop_queued(&mut rx);
            }
        }
    }

    /// After a close: takes no more records, and counts those queued behind the close as
    /// dropped (they were recorded, and would otherwise end in no count at all). A flush
    /// queued there is answered that the shipper is gone.
    fn drop_queued(&self, rx: &mut mpsc::Receiver<Msg>) {
        rx.close();
        let mut dropped = 0;
        while let Ok(msg) = rx.try_recv() {
            if matches!(msg, Msg::Record(_)) {
                dropped += 1;
            }
        }
        Counters::add(&self.counters.dropped_closed, dropped);
    }

    /// One message from the queue; `Break` after a close.
    async fn handle(
        &mut self,
        msg: Msg,
        batch: &mut Vec<AttemptRecord>,
        deadline: &mut Instant,
    ) -> std::ops::ControlFlow<()> {
        match msg {
            Msg::Record(r) => {
                if batch.is_empty() {
                    *deadline = Instant::now() + self.delay;
                }
                batch.push(*r);
                if batch.len() >= self.batch_size {
                    self.ship(batch).await;
                }
            }
            Msg::Flush(ack) => {
                self.ship(batch).await;
                let _ = ack.send(self.take_flush_result());
            }
            Msg::Close(ack) => {
                self.ship(batch).await;
                // The spool's lock is released before the close is acknowledged: a shipper
                // started right after may take it.
                self.spool = None;
                let _ = ack.send(self.take_flush_result());
                return std::ops::ControlFlow::Break(());
            }
        }
        std::ops::ControlFlow::Continue(())
    }

    fn take_flush_result(&mut self) -> Result<(), CollectError> {
        let failed = std::mem::take(&mut self.failed_since_flush);
        let unreadable = std::mem::take(&mut self.unreadable_since_flush);
        let full = self.counters.dropped_full.load(Ordering::Relaxed);
        let dropped = full.saturating_sub(std::mem::replace(&mut self.full_at_flush, full));
        let bad = self.counters.dropped_invalid.load(Ordering::Relaxed);
        let invalid = bad.saturating_sub(std::mem::replace(&mut self.invalid_at_flush, bad));
        let mut lost = Vec::new();
        if failed > 0 {
            lost.push(format!(
                "{failed} records could not be delivered to {}",
                self.url
            ));
        }
        if dropped > 0 {
            lost.push(format!(
                "{dropped} records were dropped because the shipper's queue was full"
            ));
        }
        if invalid > 0 {
            lost.push(format!(
                "{invalid} records broke the schema's rules and were not shipped"
            ));
        }
        if unreadable > 0 {
            lost.push(format!(
                "{unreadable} spooled batches could not be read and were set aside (`….unreadable`)"
            ));
        }
        if lost.is_empty() {
            Ok(())
        } else {
            Err(CollectError::Flush {
                reason: lost.join("; "),
            })
        }
    }

    async fn ship(&mut self, batch: &mut Vec<AttemptRecord>) {
        if batch.is_empty() {
            return;
        }
        // A record the service would refuse is not sent: it would take the good records
        // of its batch with it (a batch is taken whole or not at all).
        let mut body = Vec::with_capacity(batch.len() * 360);
        let (mut n, mut invalid) = (0u64, 0u64);
        for r in batch.drain(..) {
            if let Err(e) = r.validate() {
                if invalid == 0 {
                    tracing::warn!(endpoint = %self.url, call_id = r.call_id, error = %crate::error::chain(&e), "a record breaks the schema's rules; not shipping it");
                }
                invalid += 1;
                continue;
            }
            let at = body.len();
            if serde_json::to_writer(&mut body, &r).is_ok() {
                body.push(b'\n');
                n += 1;
            } else {
                // Counted like a record that breaks the rules (a serializer error is one),
                // and nothing of it sent.
                body.truncate(at);
                invalid += 1;
            }
        }
        Counters::add(&self.counters.dropped_invalid, invalid);
        if n == 0 {
            return;
        }
        let body = bytes::Bytes::from(body);
        // While batches wait in the spool, a new one joins them: records arrive in order.
        if self.spool.as_ref().is_some_and(Spool::waiting) {
            self.spill(body, n, None).await;
            return;
        }
        // A batch refused for what it holds is split in halves, each sent on its own, down
        // to single records: a body too large for the endpoint (413) goes in smaller
        // pieces, and a record the endpoint refuses (400: a newer schema's rule, say) is
        // all that is given up, not the good records beside it.
        let mut pieces = vec![(body, n)];
        while let Some((body, n)) = pieces.pop() {
            // A piece that failed went to the spool: the pieces after it join it, in order.
            if self.spool.as_ref().is_some_and(Spool::waiting) {
                self.spill(body, n, None).await;
                continue;
            }
            match self.post(&self.policy, body.clone()).await {
                Ok(a) if splits(a.status) && n > 1 => {
                    let (first, second) = split_lines(&body, n);
                    tracing::warn!(endpoint = %self.url, status = a.status, records = n, "ingestion refused a batch; sending it in halves");
                    pieces.push(second);
                    pieces.push(first);
                }
                answer => self.delivered(body, n, answer).await,
            }
        }
    }

    /// What becomes of a batch after its delivery was tried and answered (or not).
    async fn delivered(
        &mut self,
        body: bytes::Bytes,
        n: u64,
        answer: Result<Answer, retrywise::policy::CallError<reqwest::Error>>,
    ) {
        match answer {
            Ok(a) if (200..300).contains(&a.status) => {
                Counters::add(&self.counters.shipped, n);
                Counters::add(&self.counters.batches, 1);
            }
            Ok(a) if refused(a.status) => self.refused_live(body, n, a.status).await,
            Ok(a) if self.spool.is_some() => {
                tracing::warn!(endpoint = %self.url, status = a.status, records = n, "ingestion did not take a batch; keeping it in the spool");
                let asked = a.asked();
                self.spill(body, n, asked).await;
            }
            Err(e) if self.spool.is_some() => {
                tracing::warn!(endpoint = %self.url, error = %crate::error::chain(&e), records = n, "could not deliver a batch; keeping it in the spool");
                self.spill(body, n, None).await;
            }
            Ok(a) => {
                tracing::error!(endpoint = %self.url, status = a.status, records = n, "ingestion refused a batch; dropping it");
                self.failed(n);
            }
            Err(e) => {
                tracing::error!(endpoint = %self.url, error = %crate::error::chain(&e), records = n, "could not deliver a batch; dropping it");
                self.failed(n);
            }
        }
    }

    /// A batch the endpoint refused as invalid (400, 413, 415, 422) on its first delivery,
    /// a single record once halving found it (or a record too large alone): never sent
    /// again, but with a spool kept there for a person as `….refused`, as a spooled batch
    /// refused is; given up either way (`failed`).
    async fn refused_live(&mut self, body: bytes::Bytes, n: u64, status: u16) {
        let url = self.url.clone();
        match &self.spool {
            Some(_) => match self.set_aside_new(body).await {
                Ok(path) => {
                    tracing::error!(endpoint = %url, status, records = n, path = %path.display(), "ingestion refused a batch as invalid; set aside in the spool");
                }
                Err(e) => {
                    tracing::error!(endpoint = %url, status, records = n, error = %crate::error::chain(&e), "ingestion refused a batch as invalid and the spool could not keep it; dropping it");
                }
            },
            None => {
                tracing::error!(endpoint = %url, status, records = n, "ingestion refused a batch as invalid; dropping it");
            }
        }
        self.failed(n);
    }

    /// Writes refused records into the spool as a new `….refused` file, for a person (not
    /// counted in the spool's bytes: nothing waits on it). Returns its path.
    async fn set_aside_new(&mut self, body: bytes::Bytes) -> Result<PathBuf, CollectError> {
        let Some(spool) = &mut self.spool else {
            return Err(CollectError::Flush {
                reason: "no spool to set a batch aside in".into(),
            });
        };
        let name = spool.next_name()?;
        let dir = spool.dir.clone();
        let aside = format!("{name}.{}", spool::REFUSED);
        let path = dir.join(&aside);
        blocking(move || spool::write(&dir, &aside, &body)).await?;
        Ok(path)
    }

    /// Keeps a batch the endpoint did not take in the spool. If it cannot be written there
    /// (the spool is full, or its disk refuses), it is sent once more directly — out of
    /// order, but not lost — and given up only if that fails too.
    async fn spill(&mut self, body: bytes::Bytes, n: u64, asked: Option<Duration>) {
        let Some(spool) = &mut self.spool else {
            self.failed(n);
            return;
        };
        let was_waiting = spool.waiting();
        match keep(spool, &body).await {
            Ok(()) => {
                if !was_waiting {
                    // The endpoint just failed: the spool's first try waits a backoff, or
                    // what its answer asked for if longer.
                    self.schedule.failed_asked(Instant::now(), asked);
                }
                spool.gauge(&self.counters);
                Counters::add(&self.counters.spooled, n);
            }
            Err(e) => {
                tracing::error!(endpoint = %self.url, error = %crate::error::chain(&e), records = n, "could not keep a batch in the spool; sending it once more directly");
                match self.post(&self.once, body).await {
                    Ok(a) if (200..300).contains(&a.status) => {
                        Counters::add(&self.counters.shipped, n);
                        Counters::add(&self.counters.batches, 1);
                    }
                    _ => {
                        tracing::error!(endpoint = %self.url, records = n, "could not deliver a batch the spool could not keep; dropping it");
                        self.failed(n);
                    }
                }
            }
        }
    }

    /// Tries to deliver the oldest batch of the spool, once: removed when the endpoint took
    /// it, else tried again after a backoff (or the wait its answer asked for, if longer).
    /// A batch refused for what it holds (400, 413, 422) is sent again in halves at once,
    /// as on its first delivery, down to single records; a record refused alone is set
    /// aside in a `….refused` file of its own, and a whole file refused (a 415, which
    /// halving cannot help, or a batch of one) is renamed so. If the endpoint stops taking
    /// pieces halfway, what is left replaces the batch's file, in order, and waits (if the
    /// file cannot be rewritten, the spool remembers where what is left starts). A batch
    /// handled whose file cannot be removed is skipped for the rest of the process (a
    /// restart sends a delivered one again: at least once); a batch that cannot be read is
    /// tried again if the failure may pass, and set aside as `.unreadable` if not (a
    /// directory where the file should be, a file this process may not read), so nothing
    /// behind it waits for it.
    async fn reship(&mut self) {
        let Some(spool) = &mut self.spool else {
            return;
        };
        let Some(path) = spool.oldest().map(Path::to_path_buf) else {
            return;
        };
        let read = {
            let path = path.clone();
            // Bounded, and never a pipe (opening one waits for a writer, and the worker
            // with it) nor a link to a device: a file a person put there may be anything;
            // what is no batch is set aside as unreadable.
            let max = spool.max_bytes;
            blocking(move || {
                // A read that panics is the file's doing, every time (set aside); the
                // task failing otherwise - cancelled at a shutdown - is not (read again).
                std::panic::catch_unwind(|| {
                    crate::read_bounded(&path, max, "a spooled batch (the spool's max_bytes)")
                })
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "reading it panicked",
                    ))
                })
                .map(String::into_bytes)
                .map_err(|e| CollectError::io("read", &path, e))
            })
            .await
        };
        let skip = usize::try_from(spool.oldest_skip()).unwrap_or(usize::MAX);
        let body = match read {
            // What is left of it (all of it, unless a rewrite of it failed).
            Ok(b) => {
                let b = bytes::Bytes::from(b);
                b.slice(skip.min(b.len())..)
            }
            // Taken away by a person: nothing waits on it any more.
            Err(CollectError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::warn!(path = %path.display(), "a spooled batch is gone from the spool; going on with the next");
                spool.handled_oldest();
                spool.gauge(&self.counters);
                self.schedule.handled(Instant::now());
                return;
            }
            Err(e) if unreadable_for_good(&e) => {
                tracing::error!(error = %crate::error::chain(&e), "cannot read a spooled batch; setting it aside");
                Counters::add(&self.counters.spool_unreadable, 1);
                self.unreadable_since_flush += 1;
                self.settle(path, Some(spool::UNREADABLE)).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot read a spooled batch now; trying again later");
                self.schedule.failed(Instant::now());
                return;
            }
        };
        let n = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count() as u64;
        let mut pieces = vec![(body.clone(), n)];
        let mut handled = false;
        // Counted once the file is settled or what is left of it recorded: the counters
        // never say delivered what the spool still holds as waiting.
        let (mut shipped, mut batches) = (0, 0);
        while let Some((piece, k)) = pieces.pop() {
            match self.post(&self.once, piece.clone()).await {
                Ok(a) if (200..300).contains(&a.status) => {
                    handled = true;
                    shipped += k;
                    batches += 1;
                }
                Ok(a) if splits(a.status) && k > 1 => {
                    tracing::warn!(path = %path.display(), status = a.status, records = k, "ingestion refused a spooled batch; sending it in halves");
                    let (first, second) = split_lines(&piece, k);
                    pieces.push(second);
                    pieces.push(first);
                }
                // The whole file refused (a 415, or a batch of one): set aside as it is, a
                // rename that needs no room on a disk that may be full.
                Ok(a) if refused(a.status) && !handled && pieces.is_empty() && skip == 0 => {
                    tracing::error!(path = %path.display(), status = a.status, records = k, "ingestion refused a spooled batch as invalid; setting it aside");
                    self.settle(path, Some(spool::REFUSED)).await;
                    self.failed(k);
                    return;
                }
                Ok(a) if refused(a.status) => {
                    handled = true;
                    match self.set_aside_new(piece).await {
                        Ok(aside) => {
                            tracing::error!(path = %aside.display(), status = a.status, records = k, "ingestion refused spooled records as invalid; set aside");
                        }
                        Err(e) => {
                            tracing::error!(path = %path.display(), status = a.status, records = k, error = %crate::error::chain(&e), "ingestion refused spooled records as invalid and they cannot be set aside; dropping them");
                        }
                    }
                    self.failed(k);
                }
                answer => {
                    let asked = answer.as_ref().ok().and_then(Answer::asked);
                    if handled {
                        // What is left, in order: this piece, then the others.
                        let mut left = Vec::with_capacity(piece.len());
                        left.extend_from_slice(&piece);
                        for (p, _) in pieces.iter().rev() {
                            left.extend_from_slice(p);
                        }
                        let done = skip + (body.len() - left.len());
                        self.rewrite_oldest(&path, left, done as u64).await;
                    }
                    Counters::add(&self.counters.shipped, shipped);
                    Counters::add(&self.counters.batches, batches);
                    self.schedule.failed_asked(Instant::now(), asked);
                    return;
                }
            }
        }
        self.settle(path, None).await;
        Counters::add(&self.counters.shipped, shipped);
        Counters::add(&self.counters.batches, batches);
    }

    /// Replaces the oldest batch's file with `left` (what is left of it to deliver, after
    /// the first `done` bytes of the file). If it cannot be rewritten, the file stays and
    /// the spool remembers where what is left starts: what was delivered is not sent
    /// again by this process (a restart sends it again: at least once).
    async fn rewrite_oldest(&mut self, path: &Path, left: Vec<u8>, done: u64) {
        let Some(spool) = &mut self.spool else {
            return;
        };
        let dir = spool.dir.clone();
        let len = left.len() as u64;
        let name = path.file_name().and_then(|n| n.to_str()).map(str::to_owned);
        let written = match name {
            Some(name) => blocking(move || spool::write(&dir, &name, &left)).await,
            None => Err(CollectError::Flush {
                reason: "a spooled batch's name is not UTF-8".into(),
            }),
        };
        match written {
            Ok(()) => spool.rewrote_oldest(len, 0),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %crate::error::chain(&e), "cannot rewrite a spooled batch with what is left of it; sending the rest from where it stopped");
                spool.rewrote_oldest(len, done);
            }
        }
        spool.gauge(&self.counters);
    }

    /// Removes a delivered batch file (`aside` none) or sets it aside as `NAME.aside`;
    /// either way it no longer waits, and the next batch is tried at once.
    async fn settle(&mut self, path: PathBuf, aside: Option<&'static str>) {
        let Some(spool) = &mut self.spool else {
            return;
        };
        let dir = spool.dir.clone();
        let p = path.clone();
        let done = blocking(move || match aside {
            None => spool::remove(&dir, &p),
            Some(suffix) => spool::set_aside(&dir, &p, suffix),
        })
        .await;
        if let Err(e) = done {
            tracing::error!(path = %path.display(), error = %crate::error::chain(&e), "a spooled batch was handled but its file stays; skipping it until the shipper restarts");
        }
        spool.handled_oldest();
        spool.gauge(&self.counters);
        self.schedule.handled(Instant::now());
    }

    /// One `POST` of `body` under `policy` (the shipper's retries, or one attempt).
    async fn post(
        &self,
        policy: &Policy<HttpClassifier>,
        body: bytes::Bytes,
    ) -> Result<Answer, retrywise::policy::CallError<reqwest::Error>> {
        let retries_before = policy.metrics().retries;
        let result = policy
            .call(|_| {
                let mut req = self
                    .client
                    .post(self.url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson");
                if let Some(v) = &self.auth {
                    req = req.header(reqwest::header::AUTHORIZATION, v.clone());
                }
                // `Bytes` clones share the buffer: each attempt sends the same body.
                let req = req.body(body.clone());
                async move {
                    let resp = req.send().await?;
                    Ok::<_, reqwest::Error>(Answer {
                        status: resp.status().as_u16(),
                        retry_after: resp
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    })
                }
            })
            .await;
        let retries = policy.metrics().retries.saturating_sub(retries_before);
        Counters::add(&self.counters.retries, retries);
        result
    }

    fn failed(&mut self, n: u64) {
        Counters::add(&self.counters.failed, n);
        self.failed_since_flush += n;
    }
}

/// Writes `body` into `spool` as its newest batch, or says why it cannot (the spool is
/// full, out of batch numbers, or its disk refuses).
async fn keep(spool: &mut Spool, body: &bytes::Bytes) -> Result<(), CollectError> {
    let len = body.len() as u64;
    if spool.bytes + len > spool.max_bytes {
        return Err(CollectError::Flush {
            reason: format!(
                "the spool {} is full ({} of {} bytes)",
                spool.dir.display(),
                spool.bytes,
                spool.max_bytes
            ),
        });
    }
    let name = spool.next_name()?;
    let (dir, b) = (spool.dir.clone(), body.clone());
    let path = dir.join(&name);
    blocking(move || spool::write(&dir, &name, &b)).await?;
    spool.kept(path, len);
    Ok(())
}

/// Runs the spool's file work `f` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CollectError> + Send + 'static,
) -> Result<T, CollectError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(CollectError::Flush {
            reason: format!("the spool's file task failed: {e}"),
        })
    })
}

/// An NDJSON body of `n` records (one a line) cut into its first `n / 2` records and the
/// rest, without copying.
fn split_lines(body: &bytes::Bytes, n: u64) -> ((bytes::Bytes, u64), (bytes::Bytes, u64)) {
    let half = n / 2;
    let cut = body
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(usize::try_from(half.saturating_sub(1)).unwrap_or(usize::MAX))
        .map_or(body.len(), |(i, _)| i + 1);
    ((body.slice(..cut), half), (body.slice(cut..), n - half))
}

/// Whether an answer refuses the batch for what it holds (sending it again would not help):
/// a malformed or too large body, or one of the wrong type.
fn refused(status: u16) -> bool {
    matches!(status, 400 | 413 | 415 | 422)
}

/// Whether a refusal may be for some of the batch's records (a malformed one, a body too
/// large), so that halves of it may be taken: not a 415, which refuses how every body is
/// sent.
fn splits(status: u16) -> bool {
    refused(status) && status != 415
}

/// Whether a spooled batch's file cannot be read for good (a directory or something else
/// that is not a file where it should be, a file this process may not read), rather than
/// for a reason that may pass (too many open files, an I/O error, no memory).
fn unreadable_for_good(e: &CollectError) -> bool {
    use std::io::ErrorKind;
    match e {
        CollectError::Io { source, .. } => matches!(
            source.kind(),
            ErrorKind::IsADirectory
                | ErrorKind::InvalidData
                | ErrorKind::InvalidInput
                | ErrorKind::PermissionDenied
        ),
        // The blocking task that reads it failed (cancelled at a shutdown; a read that
        // panics is an `InvalidData` above): nothing is known of the file, which is read
        // again later.
        _ => false,
    }
}

/// The HTTP client for `url`: the environment's proxy settings (`HTTPS_PROXY`, …) apply,
/// except to an endpoint on this machine, which no proxy should stand between.
fn client_for(url: &reqwest::Url) -> Result<reqwest::Client, CollectError> {
    let local = url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    let builder = reqwest::Client::builder();
    let builder = if local { builder.no_proxy() } else { builder };
    builder.build().map_err(|e| CollectError::Endpoint {
        endpoint: url.to_string(),
        problem: format!("no HTTP client for it: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only what the file itself is (not a file, not readable by this process, not a
    /// batch) sets a spooled batch aside for good; a read that failed for a passing
    /// reason, or whose task failed, is tried again.
    #[test]
    fn only_a_file_that_cannot_be_read_for_good_is_set_aside() {
        let io = |kind| CollectError::io("read", "spool/x", std::io::Error::from(kind));
        use std::io::ErrorKind as K;
        for kind in [
            K::IsADirectory,
            K::InvalidData,
            K::InvalidInput,
            K::PermissionDenied,
        ] {
            assert!(unreadable_for_good(&io(kind)), "{kind:?}");
        }
        for kind in [K::Interrupted, K::OutOfMemory, K::Other] {
            assert!(!unreadable_for_good(&io(kind)), "{kind:?}");
        }
        let task = CollectError::Flush {
            reason: "the spool's file task failed: task 7 panicked".into(),
        };
        assert!(!unreadable_for_good(&task));
    }
}
