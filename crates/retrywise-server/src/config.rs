//! The service's configuration: defaults, then a TOML file, then the environment, then
//! command-line flags (each overriding the one before).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ServerError;

/// The most requests `max_in_flight` may let in at once: far beyond what one process
/// serves, and within what a semaphore can count.
pub const MAX_IN_FLIGHT: usize = 1 << 20;

/// The most connections `max_connections` may let be open at once (each holds a file
/// descriptor).
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// The largest body limit a configuration may set (1 GiB): a body is read into memory
/// whole, so a larger limit is no limit.
pub const MAX_BODY_LIMIT: usize = 1 << 30;

/// The most target names a configuration may give a Prometheus label value each: every
/// one adds a series to each per-target family.
pub const MAX_TARGET_LABELS: usize = 10_000;

/// Everything the service can be told.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where to listen. Default `127.0.0.1:8080`.
    pub addr: SocketAddr,
    /// The models folder (`<name>/<version>/model.json`). Default `models`.
    pub models: PathBuf,
    /// The model used when a request names none. Default `default`.
    pub default_model: String,
    /// A request that names no model is answered by the model named after its context's
    /// target when one is serving (`models/payments/` for target `payments`), and by
    /// `default_model` otherwise - predictions, decisions and the fleet's breakers alike:
    /// targets that fail in different ways each get a model trained on their own attempts
    /// (`retrywise train --target T --name T`) with no change to their callers. Default
    /// no.
    pub model_per_target: bool,
    /// How often the models folder is polled for new versions. Default 1 s.
    pub poll_interval: Duration,
    /// Where ingested attempts are written (NDJSON segments). Default `data/attempts`.
    pub attempts: PathBuf,
    /// `POST /v1/attempts` answers 202 only once the batch is durable (written and
    /// fsynced; the batches that arrive meanwhile share one fsync), not once it is
    /// written: a client (a shipper) that then forgets the batch cannot lose it to a
    /// power cut. Default yes.
    pub sync_ingest: bool,
    /// The largest request body accepted; larger ones get 413. Default 1 MiB; at least
    /// 1024 bytes, at most [`MAX_BODY_LIMIT`].
    pub body_limit: usize,
    /// How long a request may take before it is answered 503. Default 10 s.
    pub request_timeout: Duration,
    /// How long a graceful stop waits for the connections open when it began to finish
    /// their requests; those still open then are closed (an ingested batch not yet
    /// answered is not acknowledged: its client sends it again). Default 30 s.
    pub shutdown_timeout: Duration,
    /// Requests handled at once on the API routes; more are shed with 503 + Retry-After.
    /// Ingestion (`POST /v1/attempts`) takes at most a quarter of them (at least one), so
    /// that batches waiting on slow storage never crowd out predictions (below 4, that one
    /// is half of 2 and all of 1: give a replica that ingests at least 4). Default 1024; at
    /// most [`MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// Connections open at once; one more is closed as soon as it is accepted (counted in
    /// `retrywise_connections_refused_total`), so that idle or trickling clients cannot
    /// take every file descriptor the process has - the models folder, the attempts'
    /// segments and Redis need some too. Where the process's open-file limit (`ulimit
    /// -n`, which `retrywise serve` raises to the hard limit) leaves fewer than it plus 64,
    /// [`crate::serve`] caps connections at that limit less 64, and warns. Default 4096;
    /// at most [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// When set, `/admin/*` and `POST /v1/attempts` require `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Distinct target names given their own Prometheus label value; the rest are counted
    /// as `other`. Default 100; at most [`MAX_TARGET_LABELS`].
    pub max_target_labels: usize,
    /// Targets whose health the fleet view keeps (about 30 KiB each: 1,000 targets took a
    /// service from 35 to 65 MiB); at the cap, idle
    /// targets make room, and attempts to more are not tracked. Default 1000.
    pub max_targets: usize,
    /// The window of each target's rolling health. Default 10 s.
    pub health_window: Duration,
    /// The cost of an attempt `/v1/decide` weighs each wait's p(success) against (divided by
    /// the share of the target's calls that succeed), and the p below which the fleet's
    /// predictive breaker opens and admission holds a fresh call. Default 0.05; above 0
    /// and below 1.
    pub min_p_success: f64,
    /// The share of `/v1/decide`'s "not worth an attempt" stops that retry anyway, after a
    /// wait drawn uniformly from those weighed, and answer `explored: true`
    /// (`retrywise::retry::ModelDeciderBuilder::explore`): so that the attempts callers
    /// record keep teaching the model what happens after the failures it has learned to
    /// give up on. Default 0 (never).
    pub explore: f64,
    /// Listen on a non-loopback address without a token. Default no: the service refuses
    /// to, since anyone who reaches it could post attempts and reload models.
    pub allow_unauthenticated: bool,
    /// Where the fleet view is shared between replicas: a Redis URL
    /// (`redis://HOST:PORT[/DB]`). Default none: every replica keeps its own view in
    /// process (see [`crate::shared`]).
    pub fleet: Option<String>,
    /// How old the shared fleet view a replica answers from may be: what any replica
    /// ingests is written to Redis within a quarter of it and read back by every replica
    /// within the other three quarters. Default 250 ms.
    pub fleet_cache: Duration,
    /// How long a Redis command may take before the replica answers from its own view
    /// (and says so on `/readyz` and `/metrics`). Default 100 ms.
    pub fleet_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            models: PathBuf::from("models"),
            default_model: "default".into(),
            model_per_target: false,
            poll_interval: Duration::from_secs(1),
            attempts: PathBuf::from("data/attempts"),
            sync_ingest: true,
            body_limit: 1 << 20,
            request_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            max_in_flight: 1024,
            max_connections: 4096,
            token: None,
            max_target_labels: 100,
            max_targets: 1000,
            health_window: Duration::from_secs(10),
            min_p_success: 0.05,
            explore: 0.0,
            allow_unauthenticated: false,
            fleet: None,
            fleet_cache: Duration::from_millis(250),
            fleet_timeout: Duration::from_millis(100),
        }
    }
}

/// The settings whose values an error never shows: the token, and the fleet's Redis URL
/// (which may hold a password).
pub const SECRETS: [&str; 2] = ["token", "fleet"];

/// The settings a file, the environment or flags may give; every one optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// `addr`.
    pub addr: Option<String>,
    /// `models`.
    pub models: Option<PathBuf>,
    /// `default_model`.
    pub default_model: Option<String>,
    /// `model_per_target`.
    pub model_per_target: Option<bool>,
    /// `poll_interval_ms`.
    pub poll_interval_ms: Option<u64>,
    /// `attempts`.
    pub attempts: Option<PathBuf>,
    /// `sync_ingest`.
    pub sync_ingest: Option<bool>,
    /// `body_limit_bytes`.
    pub body_limit_bytes: Option<usize>,
    /// `request_timeout_ms`.
    pub request_timeout_ms: Option<u64>,
    /// `shutdown_timeout_ms`.
    pub shutdown_timeout_ms: Option<u64>,
    /// `max_in_flight`.
    pub max_in_flight: Option<usize>,
    /// `max_connections`.
    pub max_connections: Option<usize>,
    /// `token`.
    pub token: Option<String>,
    /// `max_target_labels`.
    pub max_target_labels: Option<usize>,
    /// `max_targets`.
    pub max_targets: Option<usize>,
    /// `health_window_ms`.
    pub health_window_ms: Option<u64>,
    /// `min_p_success`.
    pub min_p_success: Option<f64>,
    /// `explore`.
    pub explore: Option<f64>,
    /// `allow_unauthenticated`.
    pub allow_unauthenticated: Option<bool>,
    /// `fleet` (a Redis URL).
    pub fleet: Option<String>,
    /// `fleet_cache_ms`.
    pub fleet_cache_ms: Option<u64>,
    /// `fleet_timeout_ms`.
    pub fleet_timeout_ms: Option<u64>,
}

/// The environment variables read, and the setting each gives.
pub const ENV: &[(&str, &str)] = &[
    ("RETRYWISE_ADDR", "addr"),
    ("RETRYWISE_MODELS", "models"),
    ("RETRYWISE_DEFAULT_MODEL", "default_model"),
    ("RETRYWISE_MODEL_PER_TARGET", "model_per_target"),
    ("RETRYWISE_POLL_INTERVAL_MS", "poll_interval_ms"),
    ("RETRYWISE_ATTEMPTS", "attempts"),
    ("RETRYWISE_SYNC_INGEST", "sync_ingest"),
    ("RETRYWISE_BODY_LIMIT_BYTES", "body_limit_bytes"),
    ("RETRYWISE_REQUEST_TIMEOUT_MS", "request_timeout_ms"),
    ("RETRYWISE_SHUTDOWN_TIMEOUT_MS", "shutdown_timeout_ms"),
    ("RETRYWISE_MAX_IN_FLIGHT", "max_in_flight"),
    ("RETRYWISE_MAX_CONNECTIONS", "max_connections"),
    ("RETRYWISE_TOKEN", "token"),
    ("RETRYWISE_MAX_TARGET_LABELS", "max_target_labels"),
    ("RETRYWISE_MAX_TARGETS", "max_targets"),
    ("RETRYWISE_HEALTH_WINDOW_MS", "health_window_ms"),
    ("RETRYWISE_MIN_P_SUCCESS", "min_p_success"),
    ("RETRYWISE_EXPLORE", "explore"),
    ("RETRYWISE_ALLOW_UNAUTHENTICATED", "allow_unauthenticated"),
    ("RETRYWISE_FLEET", "fleet"),
    ("RETRYWISE_FLEET_CACHE_MS", "fleet_cache_ms"),
    ("RETRYWISE_FLEET_TIMEOUT_MS", "fleet_timeout_ms"),
];

/// The most targets a fleet view may track (`max_targets`).
pub const MAX_TARGETS: usize = 100_000;

/// The most targets a fleet view shared through Redis may track (`max_targets` with
/// `fleet`).
pub const MAX_SHARED_TARGETS: usize = 10_000;

/// What the process environment says wrongly of the settings, before [`Config::load`]
/// reads it: an error for a setting's variable that is not UTF-8 (read as unset, a token
/// so given would leave the service open), and a warning for each `RETRYWISE_…` variable
/// that names no setting (a misspelling: `RETRYWISE_TOKN`). `vars` is the environment
/// (`std::env::vars_os()`).
///
/// # Errors
/// [`ServerError::Config`] naming the first setting's variable that is not UTF-8.
pub fn check_env(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Vec<String>, ServerError> {
    /// Variables the project's own tests and tools read: not settings, not misspellings.
    const OTHERS: &[&str] = &[
        "RETRYWISE_REQUIRE_REDIS",
        "RETRYWISE_GIT_COMMIT",
        "RETRYWISE_VENV",
        "RETRYWISE_NOTEBOOK_MODEL",
        "RETRYWISE_COMPACT_CRASH_CHILD",
        "RETRYWISE_COLLECT_CRASH_CHILD",
    ];
    let mut warnings = Vec::new();
    for (name, value) in vars {
        let name = name.to_string_lossy();
        if !name.starts_with("RETRYWISE_") {
            continue;
        }
        match ENV.iter().find(|(var, _)| *var == name) {
            Some((var, _)) if value.to_str().is_none() => {
                return Err(invalid("environment", var, "is not valid UTF-8"));
            }
            Some(_) => {}
            None if OTHERS.contains(&name.as_ref()) => {}
            None => warnings.push(format!(
                "{name} is not a setting of the service (settings: {}); ignored",
                ENV.iter().map(|(v, _)| *v).collect::<Vec<_>>().join(", ")
            )),
        }
    }
    Ok(warnings)
}

fn invalid(origin: &str, field: &str, problem: impl Into<String>) -> ServerError {
    ServerError::Config {
        origin: origin.to_owned(),
        field: field.to_owned(),
        problem: problem.into(),
    }
}

impl Overrides {
    /// The overrides of a TOML file.
    ///
    /// # Errors
    /// An unreadable file; a syntax error, unknown key or wrong type, naming the key.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServerError::ConfigFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The overrides of TOML text (`origin` names it in errors; never the text of a line,
    /// nor the value of a [`SECRETS`] key).
    ///
    /// # Errors
    /// A syntax error, unknown key or wrong type, naming the key.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ServerError> {
        toml::from_str(text).map_err(|e| {
            // The key is the one on the line the error points at (a wrong type points at
            // the value, an unknown key at the key); else the one the message quotes.
            let on_line = e.span().and_then(|span| {
                let start = text.get(..span.start)?.rfind('\n').map_or(0, |i| i + 1);
                let key = text.get(start..)?.split(['=', '\n']).next()?.trim();
                let key = key.trim_matches('"');
                (!key.is_empty() && !key.starts_with('[')).then(|| key.to_owned())
            });
            let field = on_line
                .or_else(|| e.message().split('`').nth(1).map(str::to_owned))
                .unwrap_or_else(|| "?".to_owned());
            // The message and where, never the line itself: it may hold the token, or a
            // Redis URL's password, written without quotes.
            let place = e.span().and_then(|span| {
                let before = text.get(..span.start)?;
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                Some(format!(" (line {line}, column {column})"))
            });
            // A wrong type's message quotes the value: not a secret's.
            let message = if SECRETS.contains(&field.as_str()) {
                "has the wrong type or syntax (its value is not shown: it may be a secret)"
                    .to_owned()
            } else {
                e.message().trim().replace('\n', " ")
            };
            invalid(
                origin,
                &field,
                format!("{message}{}", place.unwrap_or_default()),
            )
        })
    }

    /// The overrides of the environment (see [`ENV`]), read through `get`.
    ///
    /// # Errors
    /// A variable that does not parse, naming it.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ServerError> {
        let mut o = Self::default();
        for (var, field) in ENV {
            let Some(v) = get(var) else { continue };
            let bad = |p: String| invalid("environment", var, p);
            let num = |v: &str| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|e| bad(format!("is not a whole number: {e}")))
            };
            let float = |v: &str| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|e| bad(format!("is not a number: {e}")))
            };
            let size = |v: &str| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|e| bad(format!("is not a whole number: {e}")))
            };
            let flag = |v: &str| match v.trim() {
                "1" | "true" | "yes" => Ok(true),
                "0" | "false" | "no" => Ok(false),
                other => Err(bad(format!("is not true or false: {other:?}"))),
            };
            match *field {
                "addr" => o.addr = Some(v),
                "models" => o.models = Some(v.into()),
                "default_model" => o.default_model = Some(v),
                "model_per_target" => o.model_per_target = Some(flag(&v)?),
                "poll_interval_ms" => o.poll_interval_ms = Some(num(&v)?),
                "attempts" => o.attempts = Some(v.into()),
                "sync_ingest" => o.sync_ingest = Some(flag(&v)?),
                "body_limit_bytes" => o.body_limit_bytes = Some(size(&v)?),
                "request_timeout_ms" => o.request_timeout_ms = Some(num(&v)?),
                "shutdown_timeout_ms" => o.shutdown_timeout_ms = Some(num(&v)?),
                "max_in_flight" => o.max_in_flight = Some(size(&v)?),
                "max_connections" => o.max_connections = Some(size(&v)?),
                "token" => o.token = Some(v),
                "max_target_labels" => o.max_target_labels = Some(size(&v)?),
                "max_targets" => o.max_targets = Some(size(&v)?),
                "health_window_ms" => o.health_window_ms = Some(num(&v)?),
                "allow_unauthenticated" => o.allow_unauthenticated = Some(flag(&v)?),
                "min_p_success" => o.min_p_success = Some(float(&v)?),
                "explore" => o.explore = Some(float(&v)?),
                "fleet" => o.fleet = Some(v),
                "fleet_cache_ms" => o.fleet_cache_ms = Some(num(&v)?),
                "fleet_timeout_ms" => o.fleet_timeout_ms = Some(num(&v)?),
                _ => {}
            }
        }
        Ok(o)
    }

    /// Applies these overrides to `config`, checking each value (`origin` names them in
    /// errors).
    ///
    /// # Errors
    /// A value out of range, naming the setting.
    pub fn apply(&self, config: &mut Config, origin: &str) -> Result<(), ServerError> {
        let bad = |field: &str, p: String| invalid(origin, field, p);
        if let Some(a) = &self.addr {
            config.addr = a
                .parse()
                .map_err(|e| {
                    bad(
                        "addr",
                        format!(
                            "is not an IP address and a port ({a:?}; a name such as localhost is not resolved: 127.0.0.1:8080, [::1]:8080): {e}"
                        ),
                    )
                })?;
        }
        if let Some(m) = &self.models {
            config.models.clone_from(m);
        }
        if let Some(d) = &self.default_model {
            if !retrywise::model::is_model_name(d) {
                return Err(bad("default_model", format!("is not a model name: {d:?}")));
            }
            config.default_model.clone_from(d);
        }
        if let Some(p) = self.model_per_target {
            config.model_per_target = p;
        }
        // A duration in milliseconds from `lo` to an hour.
        let up_to_an_hour = |field: &str, ms: u64, lo: u64| {
            if (lo..=3_600_000).contains(&ms) {
                Ok(Duration::from_millis(ms))
            } else {
                Err(bad(
                    field,
                    format!("must be within [{lo}, 3600000] (an hour), got {ms}"),
                ))
            }
        };
        if let Some(ms) = self.poll_interval_ms {
            // At most an hour: a longer one is no poll (one of u64::MAX ticked once, then
            // never again, and models silently stopped reloading).
            config.poll_interval = up_to_an_hour("poll_interval_ms", ms, 10)?;
        }
        if let Some(a) = &self.attempts {
            config.attempts.clone_from(a);
        }
        if let Some(s) = self.sync_ingest {
            config.sync_ingest = s;
        }
        if let Some(b) = self.body_limit_bytes {
            if !(1024..=MAX_BODY_LIMIT).contains(&b) {
                return Err(bad(
                    "body_limit_bytes",
                    format!("must be within [1024, {MAX_BODY_LIMIT}] (1 KiB to 1 GiB), got {b}"),
                ));
            }
            config.body_limit = b;
        }
        if let Some(ms) = self.request_timeout_ms {
            config.request_timeout = up_to_an_hour("request_timeout_ms", ms, 1)?;
        }
        if let Some(ms) = self.shutdown_timeout_ms {
            config.shutdown_timeout = up_to_an_hour("shutdown_timeout_ms", ms, 1)?;
        }
        if let Some(n) = self.max_in_flight {
            if !(1..=MAX_IN_FLIGHT).contains(&n) {
                return Err(bad(
                    "max_in_flight",
                    format!("must be within [1, {MAX_IN_FLIGHT}], got {n}"),
                ));
            }
            config.max_in_flight = n;
        }
        if let Some(n) = self.max_connections {
            if !(1..=MAX_CONNECTIONS).contains(&n) {
                return Err(bad(
                    "max_connections",
                    format!("must be within [1, {MAX_CONNECTIONS}], got {n}"),
                ));
            }
            config.max_connections = n;
        }
        if let Some(t) = &self.token {
            // A secret read from a file usually ends in a newline, which no header can
            // carry: the token is what is left without the white space around it, and it
            // must be something a client can send (visible ASCII, RFC 6750's b64token and
            // more), or every guarded route would answer 401 to every client.
            let t = t.trim();
            if t.is_empty() {
                return Err(bad("token", "must not be empty".into()));
            }
            if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
                return Err(bad(
                    "token",
                    format!(
                        "must be visible ASCII (an Authorization header cannot carry it \
                         otherwise), found {c:?}"
                    ),
                ));
            }
            config.token = Some(t.to_owned());
        }
        if let Some(n) = self.max_target_labels {
            if n > MAX_TARGET_LABELS {
                return Err(bad(
                    "max_target_labels",
                    format!("must be at most {MAX_TARGET_LABELS}, got {n}"),
                ));
            }
            config.max_target_labels = n;
        }
        if let Some(n) = self.max_targets {
            if n == 0 {
                return Err(bad("max_targets", "must be positive".into()));
            }
            config.max_targets = n;
        }
        if let Some(ms) = self.health_window_ms {
            // A day at most: health over a longer window says nothing about now, and the
            // shared view's expiry (twice the window, in ms) must fit its integers.
            if !(10..=86_400_000).contains(&ms) {
                return Err(bad(
                    "health_window_ms",
                    format!("must be within [10, 86400000] (10 ms to a day), got {ms}"),
                ));
            }
            config.health_window = Duration::from_millis(ms);
        }
        if let Some(p) = self.min_p_success {
            // Open at both ends: an attempt that costs nothing, or as much as a certain
            // success, decides nothing (the decider and the breaker would clamp it, and
            // admission, which compares with it as it is, would disagree with them).
            if !(p > 0.0 && p < 1.0) {
                return Err(bad(
                    "min_p_success",
                    format!("must be above 0 and below 1, got {p}"),
                ));
            }
            config.min_p_success = p;
        }
        if let Some(p) = self.explore {
            if !(0.0..=1.0).contains(&p) {
                return Err(bad("explore", format!("must be within [0, 1], got {p}")));
            }
            config.explore = p;
        }
        if let Some(a) = self.allow_unauthenticated {
            config.allow_unauthenticated = a;
        }
        if let Some(url) = &self.fleet {
            let url = url.trim();
            if !url.starts_with("redis://") {
                return Err(bad(
                    "fleet",
                    format!(
                        "is not a Redis URL (redis://HOST:PORT[/DB]; TLS and unix sockets are not supported): {:?}",
                        crate::serve::redact(url)
                    ),
                ));
            }
            if let Err(e) = redis::Client::open(url) {
                return Err(bad(
                    "fleet",
                    format!(
                        "is not a usable Redis URL ({:?}): {e}",
                        crate::serve::redact(url)
                    ),
                ));
            }
            config.fleet = Some(url.to_owned());
        }
        if let Some(ms) = self.fleet_cache_ms {
            if !(10..=10_000).contains(&ms) {
                return Err(bad(
                    "fleet_cache_ms",
                    format!("must be within [10, 10000], got {ms}"),
                ));
            }
            config.fleet_cache = Duration::from_millis(ms);
        }
        if let Some(ms) = self.fleet_timeout_ms {
            if !(1..=10_000).contains(&ms) {
                return Err(bad(
                    "fleet_timeout_ms",
                    format!("must be within [1, 10000], got {ms}"),
                ));
            }
            config.fleet_timeout = Duration::from_millis(ms);
        }
        Ok(())
    }
}

impl Config {
    /// Checks every value as [`Config::load`] checks a setting, for a `Config` built in
    /// code (errors name the setting, from origin `Config`; a duration is taken in whole
    /// milliseconds, as the settings give it).
    ///
    /// # Errors
    /// A value out of range ([`ServerError::Config`]): a zero poll interval, say, which
    /// would stop the model poller at its first tick.
    pub fn validate(&self) -> Result<(), ServerError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let every = Overrides {
            addr: None,
            models: None,
            default_model: Some(self.default_model.clone()),
            model_per_target: None,
            poll_interval_ms: Some(ms(self.poll_interval)),
            attempts: None,
            sync_ingest: None,
            body_limit_bytes: Some(self.body_limit),
            request_timeout_ms: Some(ms(self.request_timeout)),
            shutdown_timeout_ms: Some(ms(self.shutdown_timeout)),
            max_in_flight: Some(self.max_in_flight),
            max_connections: Some(self.max_connections),
            token: self.token.clone(),
            max_target_labels: Some(self.max_target_labels),
            max_targets: Some(self.max_targets),
            health_window_ms: Some(ms(self.health_window)),
            min_p_success: Some(self.min_p_success),
            explore: Some(self.explore),
            allow_unauthenticated: None,
            fleet: self.fleet.clone(),
            fleet_cache_ms: Some(ms(self.fleet_cache)),
            fleet_timeout_ms: Some(ms(self.fleet_timeout)),
        };
        let mut checked = self.clone();
        every.apply(&mut checked, "Config")?;
        self.check_together()?;
        // A loaded token is taken without the white space around it; one given in code
        // with some would never match what a client sends.
        if checked.token != self.token {
            return Err(invalid(
                "Config",
                "token",
                "has white space around it, which no Authorization header carries",
            ));
        }
        Ok(())
    }

    /// The rules between settings (each is checked alone as it is read).
    fn check_together(&self) -> Result<(), ServerError> {
        let ms = |d: Duration| d.as_millis();
        if self.max_targets > MAX_TARGETS {
            return Err(invalid(
                "Config",
                "max_targets",
                format!(
                    "must be at most {MAX_TARGETS} (about 30 KiB of memory each), got {}",
                    self.max_targets
                ),
            ));
        }
        if self.fleet.is_some() {
            if self.max_targets > MAX_SHARED_TARGETS {
                return Err(invalid(
                    "Config",
                    "max_targets",
                    format!(
                        "must be at most {MAX_SHARED_TARGETS} with a fleet view shared through Redis (every read of it is one script over every target's window, which holds Redis meanwhile), got {}",
                        self.max_targets
                    ),
                ));
            }
            // The shared view is answered from for two cache periods and a timeout after
            // its read: no longer than the window it counts.
            let oldest = self.fleet_cache * 2 + self.fleet_timeout;
            if oldest > self.health_window {
                return Err(invalid(
                    "Config",
                    "fleet_cache_ms",
                    format!(
                        "twice it and fleet_timeout_ms ({} ms: how old a shared view may be answered from) must be at most health_window_ms ({} ms), or the counts answered would be older than the window they stand for",
                        ms(oldest),
                        ms(self.health_window)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Defaults, then `file` (if any), then the environment (through `env`), then `flags`.
    ///
    /// # Errors
    /// The first unusable setting, naming where it came from.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Self, ServerError> {
        let mut c = Config::default();
        if let Some(f) = file {
            Overrides::from_file(f)?.apply(&mut c, &f.display().to_string())?;
        }
        Overrides::from_env(env)?.apply(&mut c, "environment")?;
        flags.apply(&mut c, "flags")?;
        c.check_together()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_setting_not_in_utf8_is_refused_and_a_misspelt_one_is_warned_of() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let var = |k: &str, v: Vec<u8>| (OsString::from(k), OsString::from_vec(v));
        let e = check_env([var("RETRYWISE_TOKEN", b"s3cr\xffet".to_vec())]).unwrap_err();
        assert!(
            e.to_string().contains("RETRYWISE_TOKEN") && e.to_string().contains("UTF-8"),
            "{e}"
        );
        let w = check_env([
            var("RETRYWISE_TOKN", b"s3cret".to_vec()),
            var("RETRYWISE_TOKEN", b"s3cret".to_vec()),
            var("RETRYWISE_REQUIRE_REDIS", b"1".to_vec()),
            var("HOME", b"/root".to_vec()),
        ])
        .unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("RETRYWISE_TOKN is not a setting"), "{w:?}");
    }

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("serve.toml");
        std::fs::write(
            &f,
            "addr = \"127.0.0.1:9000\"\nmodels = \"/srv/models\"\nmax_in_flight = 8\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "RETRYWISE_MAX_IN_FLIGHT" => Some("16".to_owned()),
            "RETRYWISE_TOKEN" => Some("s3cret".to_owned()),
            _ => None,
        };
        let flags = Overrides {
            addr: Some("127.0.0.1:9001".into()),
            ..Overrides::default()
        };
        let c = Config::load(Some(&f), env, &flags).unwrap();
        assert_eq!(c.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(c.models, PathBuf::from("/srv/models"));
        assert_eq!(c.max_in_flight, 16);
        assert_eq!(c.token.as_deref(), Some("s3cret"));
        assert_eq!(c.body_limit, 1 << 20);
    }

    /// A `Config` built in code is held to the settings' rules (a zero poll interval
    /// stopped the model poller at its first tick; a 1 ms health window was reported as
    /// "fleet view full" for every target).
    #[test]
    fn a_config_built_in_code_is_checked_as_a_loaded_one() {
        Config::default().validate().unwrap();
        let bad = [
            (
                Config {
                    poll_interval: Duration::ZERO,
                    ..Config::default()
                },
                "poll_interval_ms",
            ),
            (
                Config {
                    health_window: Duration::from_millis(1),
                    ..Config::default()
                },
                "health_window_ms",
            ),
            (
                Config {
                    shutdown_timeout: Duration::ZERO,
                    ..Config::default()
                },
                "shutdown_timeout_ms",
            ),
            (
                Config {
                    request_timeout: Duration::from_secs(3_601),
                    ..Config::default()
                },
                "request_timeout_ms",
            ),
            (
                Config {
                    explore: 2.0,
                    ..Config::default()
                },
                "explore",
            ),
            (
                Config {
                    min_p_success: f64::NAN,
                    ..Config::default()
                },
                "min_p_success",
            ),
            (
                Config {
                    max_targets: 0,
                    ..Config::default()
                },
                "max_targets",
            ),
            (
                Config {
                    fleet_cache: Duration::from_nanos(3),
                    ..Config::default()
                },
                "fleet_cache_ms",
            ),
            (
                Config {
                    token: Some("s3cret\n".into()),
                    ..Config::default()
                },
                "token",
            ),
            // Limits so large they are none.
            (
                Config {
                    body_limit: usize::MAX,
                    ..Config::default()
                },
                "body_limit_bytes",
            ),
            (
                Config {
                    max_target_labels: usize::MAX,
                    ..Config::default()
                },
                "max_target_labels",
            ),
        ];
        for (config, want) in bad {
            match config.validate().unwrap_err() {
                ServerError::Config { origin, field, .. } => {
                    assert_eq!((origin.as_str(), field.as_str()), ("Config", want));
                }
                other => panic!("{want}: {other}"),
            }
        }
    }

    /// A token read from a file ends in a newline, which no header carries: it is taken
    /// without it. One that no client could send is refused, naming the setting.
    #[test]
    fn a_token_is_what_a_client_can_send() {
        let token = |t: &'static str| {
            Config::load(
                None,
                move |k| (k == "RETRYWISE_TOKEN").then(|| t.to_owned()),
                &Overrides::default(),
            )
        };
        assert_eq!(token("s3cret\n").unwrap().token.as_deref(), Some("s3cret"));
        for bad in ["pässwort", "two words", " \n"] {
            match token(bad).unwrap_err() {
                ServerError::Config { field, .. } => assert_eq!(field, "token", "{bad:?}"),
                other => panic!("{bad:?}: {other}"),
            }
        }
    }

    #[test]
    fn settings_that_do_not_fit_together_are_refused_by_name() {
        let fleet = || Overrides {
            fleet: Some("redis://127.0.0.1:6379".into()),
            ..Overrides::default()
        };
        for (flags, field, says) in [
            // A shared view answered from for 20 s counts a 1 s window.
            (
                Overrides {
                    health_window_ms: Some(1_000),
                    fleet_cache_ms: Some(10_000),
                    ..fleet()
                },
                "fleet_cache_ms",
                "at most health_window_ms",
            ),
            // Every read of the shared view covers every target.
            (
                Overrides {
                    max_targets: Some(MAX_SHARED_TARGETS + 1),
                    ..fleet()
                },
                "max_targets",
                "with a fleet view shared",
            ),
            (
                Overrides {
                    max_targets: Some(MAX_TARGETS + 1),
                    ..Overrides::default()
                },
                "max_targets",
                "at most 100000",
            ),
        ] {
            match Config::load(None, |_| None, &flags).unwrap_err() {
                ServerError::Config {
                    field: f, problem, ..
                } => {
                    assert_eq!(f, field);
                    assert!(problem.contains(says), "{problem}");
                }
                other => panic!("{other}"),
            }
        }
        // Alone, each is fine: without a fleet view, and within the window.
        let ok = Overrides {
            max_targets: Some(MAX_SHARED_TARGETS + 1),
            health_window_ms: Some(1_000),
            fleet_cache_ms: Some(10_000),
            ..Overrides::default()
        };
        Config::load(None, |_| None, &ok)
            .unwrap()
            .validate()
            .unwrap();
        let ok = Overrides {
            health_window_ms: Some(30_000),
            fleet_cache_ms: Some(10_000),
            ..fleet()
        };
        Config::load(None, |_| None, &ok)
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn bad_settings_name_their_origin_and_field() {
        let e = Overrides::from_toml("adr = \"x\"", "serve.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("serve.toml") && e.contains("adr"), "{e}");
        // A wrong type is named by its key (the error points at the value).
        for text in [
            "max_in_flight = \"many\"",
            "addr = \"127.0.0.1:1\"\nmax_in_flight = -1",
        ] {
            match Overrides::from_toml(text, "serve.toml").unwrap_err() {
                ServerError::Config { field, .. } => assert_eq!(field, "max_in_flight"),
                other => panic!("{other}"),
            }
        }
        // A secret written without quotes is a wrong type: the error says where, and not
        // the line that holds it.
        let e = Overrides::from_toml("addr = \"127.0.0.1:1\"\ntoken = 8675309\n", "serve.toml")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("8675309"), "{e}");
        assert!(e.contains("token") && e.contains("line 2, column 9"), "{e}");
        // A default model's name read with its newline would match no model, ever.
        for name in ["default\n", " default", "def\u{7}ault"] {
            let e = Config::load(
                None,
                |k| (k == "RETRYWISE_DEFAULT_MODEL").then(|| name.to_owned()),
                &Overrides::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("default_model"), "{e}");
        }
        let e = Config::load(
            None,
            |k| (k == "RETRYWISE_BODY_LIMIT_BYTES").then(|| "big".to_owned()),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("environment") && e.contains("RETRYWISE_BODY_LIMIT_BYTES"),
            "{e}"
        );
        let flags = Overrides {
            addr: Some("localhost".into()),
            ..Overrides::default()
        };
        let e = Config::load(None, |_| None, &flags)
            .unwrap_err()
            .to_string();
        assert!(e.contains("flags") && e.contains("`addr`"), "{e}");
        // The message says why a name is refused (it said "is not HOST:PORT" of one).
        assert!(
            e.contains("a name such as localhost is not resolved"),
            "{e}"
        );
        for (flags, field) in [
            (
                Overrides {
                    min_p_success: Some(1.5),
                    ..Overrides::default()
                },
                "min_p_success",
            ),
            (
                Overrides {
                    min_p_success: Some(1.0),
                    ..Overrides::default()
                },
                "min_p_success",
            ),
            (
                Overrides {
                    min_p_success: Some(0.0),
                    ..Overrides::default()
                },
                "min_p_success",
            ),
            (
                Overrides {
                    health_window_ms: Some(u64::MAX / 2),
                    ..Overrides::default()
                },
                "health_window_ms",
            ),
            (
                Overrides {
                    explore: Some(-0.1),
                    ..Overrides::default()
                },
                "explore",
            ),
            (
                // More than a semaphore can hold (it panicked at start-up).
                Overrides {
                    max_in_flight: Some(1 << 62),
                    ..Overrides::default()
                },
                "max_in_flight",
            ),
            (
                Overrides {
                    max_connections: Some(0),
                    ..Overrides::default()
                },
                "max_connections",
            ),
            (
                Overrides {
                    max_connections: Some((1 << 20) + 1),
                    ..Overrides::default()
                },
                "max_connections",
            ),
        ] {
            assert!(
                Config::load(None, |_| None, &flags)
                    .unwrap_err()
                    .to_string()
                    .contains(field)
            );
        }
        let c = Config::load(
            None,
            |k| (k == "RETRYWISE_EXPLORE").then(|| "0.05".to_owned()),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.explore, 0.05);
        // The shared fleet view: a Redis URL, a cache period and a timeout within bounds.
        let c = Config::load(
            None,
            |k| match k {
                "RETRYWISE_FLEET" => Some("redis://127.0.0.1:6379/2".to_owned()),
                "RETRYWISE_FLEET_CACHE_MS" => Some("100".to_owned()),
                _ => None,
            },
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.fleet.as_deref(), Some("redis://127.0.0.1:6379/2"));
        assert_eq!(c.fleet_cache, Duration::from_millis(100));
        assert_eq!(c.fleet_timeout, Duration::from_millis(100));
        for (flags, field) in [
            (
                Overrides {
                    fleet: Some("localhost:6379".into()),
                    ..Overrides::default()
                },
                "`fleet`",
            ),
            (
                Overrides {
                    fleet_cache_ms: Some(5),
                    ..Overrides::default()
                },
                "fleet_cache_ms",
            ),
            (
                Overrides {
                    fleet_timeout_ms: Some(0),
                    ..Overrides::default()
                },
                "fleet_timeout_ms",
            ),
        ] {
            let e = Config::load(None, |_| None, &flags)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{e}");
        }
        // A URL that does not serve never prints its password.
        for url in [
            "redis://:s3cret@127.0.0.1:notaport",
            "rediss://:s3cret@127.0.0.1:6379",
        ] {
            let flags = Overrides {
                fleet: Some(url.into()),
                ..Overrides::default()
            };
            let e = Config::load(None, |_| None, &flags)
                .unwrap_err()
                .to_string();
            assert!(e.contains("`fleet`") && !e.contains("s3cret"), "{e}");
        }
        let e = Overrides::from_toml("fleet_cache_ms = \"soon\"", "serve.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fleet_cache_ms"), "{e}");
        let e = Config::load(
            Some(Path::new("/nonexistent/serve.toml")),
            |_| None,
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ServerError::ConfigFile { .. }));
    }
}
