//! Shipping records to the service's ingestion endpoint over HTTP.

use std::sync::Arc;
use std::time::Duration;

use retrywise::attempt::{AttemptRecord, HttpClassifier, HttpResponse};
use retrywise::policy::Policy;
use retrywise::recorder::Recorder;
use retrywise::retry::{AttemptTimeout, Backoff, Jitter, RetryRules};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::CollectError;
use crate::stats::{Counters, RecorderStats};

/// How the shipper batches and retries.
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
/// and counted as failed.
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
    /// [`CollectError::Config`] for zero sizes, attempts or timeouts; an error if called
    /// outside a tokio runtime.
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
        for (field, zero) in [
            ("queue_capacity", config.queue_capacity == 0),
            ("batch_size", config.batch_size == 0),
            ("max_attempts", config.max_attempts == 0),
            ("attempt_timeout", config.attempt_timeout.is_zero()),
            ("max_batch_delay", config.max_batch_delay.is_zero()),
        ] {
            if zero {
                return Err(CollectError::config(field, "must be greater than zero"));
            }
        }
        let retry = RetryRules::builder()
            .max_attempts(config.max_attempts)
            .backoff(
                Backoff::exponential(config.backoff.0, 2.0, config.backoff.1)
                    .map_err(|e| CollectError::config("backoff", e.problem))?,
            )
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
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            client: reqwest::Client::new(),
            url,
            token: config.token.clone(),
            batch_size: config.batch_size,
            delay: config.max_batch_delay,
            policy,
            counters: Arc::clone(&counters),
            failed_since_flush: 0,
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

    /// Waits until every record recorded before this call was delivered or given up.
    ///
    /// # Errors
    /// [`CollectError::Flush`] if records were given up (or dropped for a full queue)
    /// since the previous flush.
    pub async fn flush(&self) -> Result<(), CollectError> {
        self.ask(Msg::Flush).await
    }

    /// Ships what is queued and stops the task.
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
    client: reqwest::Client,
    url: reqwest::Url,
    token: Option<String>,
    batch_size: usize,
    delay: Duration,
    policy: Policy<HttpClassifier>,
    counters: Arc<Counters>,
    failed_since_flush: u64,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<AttemptRecord> = Vec::with_capacity(self.batch_size);
        let mut deadline = Instant::now() + self.delay;
        loop {
            let msg = tokio::select! {
                biased;
                msg = rx.recv() => msg,
                () = tokio::time::sleep_until(deadline), if !batch.is_empty() => {
                    self.ship(&mut batch).await;
                    continue;
                }
            };
            match msg {
                Some(Msg::Record(r)) => {
                    if batch.is_empty() {
                        deadline = Instant::now() + self.delay;
                    }
                    batch.push(*r);
                    if batch.len() >= self.batch_size {
                        self.ship(&mut batch).await;
                    }
                }
                Some(Msg::Flush(ack)) => {
                    self.ship(&mut batch).await;
                    let _ = ack.send(self.take_flush_result());
                }
                Some(Msg::Close(ack)) => {
                    self.ship(&mut batch).await;
                    let _ = ack.send(self.take_flush_result());
                    return;
                }
                None => {
                    self.ship(&mut batch).await;
                    return;
                }
            }
        }
    }

    fn take_flush_result(&mut self) -> Result<(), CollectError> {
        let failed = std::mem::take(&mut self.failed_since_flush);
        if failed > 0 {
            return Err(CollectError::Flush {
                reason: format!("{failed} records could not be delivered to {}", self.url),
            });
        }
        Ok(())
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
                    tracing::warn!(endpoint = %self.url, call_id = r.call_id, error = %e, "a record breaks the schema's rules; not shipping it");
                }
                invalid += 1;
                continue;
            }
            if serde_json::to_writer(&mut body, &r).is_ok() {
                body.push(b'\n');
                n += 1;
            }
        }
        Counters::add(&self.counters.dropped_invalid, invalid);
        if n == 0 {
            return;
        }
        let body = bytes::Bytes::from(body);
        let retries_before = self.policy.metrics().retries;
        let result = self
            .policy
            .call(|_| {
                let mut req = self
                    .client
                    .post(self.url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson");
                if let Some(t) = &self.token {
                    req = req.bearer_auth(t);
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
        let retries = self.policy.metrics().retries - retries_before;
        Counters::add(&self.counters.retries, retries);
        match result {
            Ok(a) if (200..300).contains(&a.status) => {
                Counters::add(&self.counters.shipped, n);
                Counters::add(&self.counters.batches, 1);
            }
            Ok(a) => {
                tracing::error!(endpoint = %self.url, status = a.status, records = n, "ingestion refused a batch; dropping it");
                self.failed(n);
            }
            Err(e) => {
                tracing::error!(endpoint = %self.url, error = %e, records = n, "could not deliver a batch; dropping it");
                self.failed(n);
            }
        }
    }

    fn failed(&mut self, n: u64) {
        Counters::add(&self.counters.failed, n);
        self.failed_since_flush += n;
    }
}
