//! Three replicas of the service sharing their fleet view through a real Redis: a
//! `redis-server` started on a free loopback port (these tests say why and return where the
//! binary is not installed; `.ci/run` installs it and sets `RETRYWISE_REQUIRE_REDIS`, so
//! CI always runs them: there a missing binary fails them).
//!
//! - attempts ingested at one replica move the failure rate the other two report;
//! - a circuit opened by evidence posted to one replica is open at the other two;
//! - Redis killed under load: no request fails, each replica falls back to its own view
//!   and says so (`/metrics`, `/readyz`); Redis restarted: shared again.
//!
//! Everything talks to 127.0.0.1; every wait is bounded.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use retrywise_server::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long any condition is waited for before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);
/// The replicas' cache period (how old a shared view they answer from may be).
const CACHE: Duration = Duration::from_millis(100);

/// The `redis-server` binary: `$REDIS_SERVER`, else the first on `PATH`.
fn redis_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` on 127.0.0.1, killed when dropped.
struct Redis {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// Starts one, or says why it cannot and gives `None`.
    async fn start() -> Option<Self> {
        let Some(bin) = redis_binary() else {
            // CI installs it and says so: there a missing binary fails, never skips.
            assert!(
                std::env::var_os("RETRYWISE_REQUIRE_REDIS").is_none(),
                "RETRYWISE_REQUIRE_REDIS is set and redis-server is not installed"
            );
            eprintln!(
                "SKIPPED: redis-server is not installed (apt-get install redis-server; .ci/run installs it)"
            );
            return None;
        };
        let mut r = Self {
            bin,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.restart().await;
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port) and waits until it answers PING.
    async fn restart(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && s.read_exact(&mut buf).await.is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(started.elapsed() < PATIENCE, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops (`STOP`) or resumes (`CONT`) the server: a Redis that accepts connections and
    /// never answers, as under a long fork or a swap storm.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let s = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        assert!(s.success());
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The number of keys in the Redis on `port` (`DBSIZE`).
async fn dbsize(port: u16) -> u64 {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"DBSIZE\r\n").await.unwrap();
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).await.unwrap();
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    text.trim()
        .strip_prefix(':')
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap()
}

/// A replica's configuration: a free loopback port, sharing through `fleet`, attempts
/// written under `dir/name`.
fn replica_config(fleet: &str, dir: &Path, name: &str, window: Duration) -> Config {
    Config {
        health_window: window,
        addr: "127.0.0.1:0".parse().unwrap(),
        models: Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"),
        attempts: dir.join(name),
        fleet: Some(fleet.to_owned()),
        fleet_cache: CACHE,
        fleet_timeout: Duration::from_millis(50),
        ..Config::default()
    }
}

/// One replica of the service on a free loopback port, sharing through `fleet`.
struct Replica {
    base: String,
    server: common::Running,
}

impl Replica {
    async fn start(fleet: &str, dir: &Path, name: &str) -> Self {
        Self::start_with(fleet, dir, name, Duration::from_secs(10)).await
    }

    async fn start_with(fleet: &str, dir: &Path, name: &str, window: Duration) -> Self {
        Self::start_config(replica_config(fleet, dir, name, window)).await
    }

    async fn start_config(config: Config) -> Self {
        let server = common::Running::start(config).await;
        Self {
            base: server.base(),
            server,
        }
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// `n` attempt records to `target` that ended just now, the first `failures` of them
/// retryable failures.
fn attempts(target: &str, n: u64, failures: u64) -> String {
    let now = now_ms();
    (0..n)
        .map(|i| {
            json!({
                "schema_version": "1.3", "started_at_ms": now - 20, "call_id": i, "hedge": 0,
                "target": target, "attempt": 1, "delay_ms": 0.0,
                "outcome": if i < failures { "retryable" } else { "success" },
                "outcome_error": if i < failures { Some("http_503") } else { None },
                "outcome_latency_ms": 20.0,
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A client for the replicas: straight to loopback (no proxy from the environment), and no
/// request outlasting [`PATIENCE`] - a replica that blocked on a stopped Redis fails the
/// test instead of hanging it.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

async fn ingest(client: &reqwest::Client, base: &str, body: String) {
    let r = client
        .post(format!("{base}/v1/attempts"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn target(client: &reqwest::Client, base: &str, name: &str) -> Option<Value> {
    let (s, text) = get(client, &format!("{base}/v1/targets/{name}")).await;
    (s == 200).then(|| serde_json::from_str(&text).unwrap())
}

/// A replica's `retrywise_fleet_shared` gauge.
async fn shared_gauge(client: &reqwest::Client, base: &str) -> Option<i64> {
    let (_, text) = get(client, &format!("{base}/metrics")).await;
    text.lines()
        .find_map(|l| l.strip_prefix("retrywise_fleet_shared "))
        .map(|v| v.trim().parse().unwrap())
}

/// Two replicas sharing through `redis`, once both say so.
async fn two_sharing(redis: &Redis, dir: &Path, client: &reqwest::Client) -> (Replica, Replica) {
    let (a, b) = (
        Replica::start(&redis.url(), dir, "a").await,
        Replica::start(&redis.url(), dir, "b").await,
    );
    for r in [&a, &b] {
        until("shared", || async {
            shared_gauge(client, &r.base).await == Some(1)
        })
        .await;
    }
    (a, b)
}

/// Waits until `check` holds, failing after [`PATIENCE`]; returns how long it took.
async fn until<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A replica that stops writes what it counted and had not yet written: with a cache
/// period of 10 s (the most allowed), its sync task writes every 2.5 s, and the attempts
/// ingested just before it stops would otherwise never reach the other replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_writes_its_last_counts() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let slow = |name: &str| {
        // The longest cache period a setting allows (within a window that holds twice
        // it): no tick writes the counts before the stop does.
        let mut config = replica_config(&redis.url(), dir.path(), name, Duration::from_secs(30));
        config.fleet_cache = Duration::from_secs(10);
        config
    };
    let a = Replica::start_config(slow("a")).await;
    until("shared", || async {
        shared_gauge(&client, &a.base).await == Some(1)
    })
    .await;
    ingest(&client, &a.base, attempts("db", 10, 2)).await;
    a.stop().await;
    // A replica started after it reads the whole fleet's counts at once.
    let b = Replica::start_config(slow("b")).await;
    until("the stopped replica's attempts are counted", || async {
        target(&client, &b.base, "db")
            .await
            .is_some_and(|v| v["calls"] == 10 && v["failures"] == 2)
    })
    .await;
    b.stop().await;
}

/// A replica that stops while a write is on its way (here queued behind a busy Redis, its
/// script not yet known to it: the write that would follow the refusal is never sent)
/// sends that batch again as it closes, under its name: the attempts are counted once,
/// not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_mid_write_sends_the_batch_again() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let mut config = replica_config(&redis.url(), dir.path(), "a", Duration::from_secs(10));
    config.fleet_timeout = Duration::from_secs(5);
    let a = Replica::start_config(config).await;
    until("shared", || async {
        shared_gauge(&client, &a.base).await == Some(1)
    })
    .await;
    let stall = tokio::spawn(busy(redis.port, 600));
    tokio::time::sleep(Duration::from_millis(20)).await;
    ingest(&client, &a.base, attempts("db", 10, 3)).await;
    // Several write periods: the write is out, waiting behind the busy script.
    tokio::time::sleep(CACHE).await;
    a.stop().await;
    tokio::time::timeout(PATIENCE, stall)
        .await
        .unwrap()
        .unwrap();
    let b = Replica::start(&redis.url(), dir.path(), "b").await;
    until(
        "the attempts of the cut-short write are counted",
        || async {
            target(&client, &b.base, "db")
                .await
                .is_some_and(|v| v["calls"] == 10)
        },
    )
    .await;
    tokio::time::sleep(CACHE * 5).await;
    let v = target(&client, &b.base, "db").await.unwrap();
    assert_eq!(
        (v["calls"].as_u64(), v["failures"].as_u64()),
        (Some(10), Some(3)),
        "{v}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_health_and_circuits() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        Replica::start(&redis.url(), dir.path(), "a").await,
        Replica::start(&redis.url(), dir.path(), "b").await,
        Replica::start(&redis.url(), dir.path(), "c").await,
    );
    let client = client();
    for r in [&a, &b, &c] {
        until("every replica reads the shared view", || async {
            shared_gauge(&client, &r.base).await == Some(1)
        })
        .await;
        let (s, ready) = get(&client, &format!("{}/readyz", r.base)).await;
        assert_eq!(s, 200, "{ready}");
        assert_eq!(
            serde_json::from_str::<Value>(&ready).unwrap()["fleet"],
            "shared"
        );
    }

    // 40 attempts at A, 10 of them failures: B and C report them as their own.
    ingest(&client, &a.base, attempts("db", 40, 10)).await;
    for r in [&b, &c] {
        let took = until("B and C report what A ingested", || async {
            target(&client, &r.base, "db")
                .await
                .is_some_and(|v| v["calls"] == 40)
        })
        .await;
        eprintln!("seen at {} after {took:?}", r.base);
        let v = target(&client, &r.base, "db").await.unwrap();
        assert_eq!(v["failure_rate"], 0.25, "{v}");
        assert_eq!(v["failures"], 10, "{v}");
        assert!(v["latency_p95_ms"].as_f64().unwrap() >= 20.0, "{v}");
    }
    // C has ingested nothing, yet tracks the target it was asked about: its gauge says so
    // (it was set by ingestion only, and read 0 here).
    let (_, text) = get(&client, &format!("{}/metrics", c.base)).await;
    assert!(
        text.lines().any(|l| l == "retrywise_fleet_targets 1"),
        "{text}"
    );
    // A replica started now is not blind: it answers from what the fleet knows.
    let d = Replica::start(&redis.url(), dir.path(), "d").await;
    until("a new replica reads the shared view", || async {
        target(&client, &d.base, "db")
            .await
            .is_some_and(|v| v["calls"] == 40 && v["failure_rate"] == 0.25)
    })
    .await;
    d.stop().await;
    // Evidence split between replicas adds up everywhere: 10 more failures at B.
    ingest(&client, &b.base, attempts("db", 10, 10)).await;
    for r in [&a, &b, &c] {
        until("all three count the evidence of A and B", || async {
            target(&client, &r.base, "db").await.is_some_and(|v| {
                v["calls"] == 50 && v["failures"] == 20 && v["failure_rate"] == 0.4
            })
        })
        .await;
    }

    // A circuit opened by evidence posted to A (30 failures in a row) is open at B and C,
    // which saw none of it.
    ingest(&client, &a.base, attempts("payments", 30, 30)).await;
    let at_a = target(&client, &a.base, "payments").await.unwrap();
    assert_eq!(at_a["breaker_state"], "OPEN", "{at_a}");
    for r in [&b, &c] {
        until("B and C report the circuit A opened", || async {
            target(&client, &r.base, "payments")
                .await
                .is_some_and(|v| v["breaker_state"] == "OPEN" && v["allow"] == false)
        })
        .await;
        let v = target(&client, &r.base, "payments").await.unwrap();
        assert!(
            v["reason"].as_str().unwrap().contains("another replica"),
            "{v}"
        );
        assert!(v["open_for_ms"].as_f64().unwrap() > 0.0, "{v}");
        // And a first attempt asked of B's /v1/decide is held back.
        let r = client
            .post(format!("{}/v1/decide", r.base))
            .header("content-type", "application/json")
            .body(
                json!({"context": {"target": "payments", "attempt": 1}, "deadline_ms": 100})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        let d: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(d["retry"], false, "{d}");
        assert_eq!(d["reason"], "circuit_open", "{d}");
    }
    // A replica started once the opening has ended, while the fleet probes (no probe has
    // answered), reads the circuit as HALF_OPEN from the end Redis keeps - not as CLOSED,
    // letting every caller through while the others ration their probes.
    let open_for = at_a["open_for_ms"].as_f64().unwrap();
    assert!(open_for <= 60_000.0, "{at_a}");
    tokio::time::sleep(Duration::from_millis(open_for as u64 + 300)).await;
    let d = Replica::start(&redis.url(), dir.path(), "d2").await;
    until(
        "a replica started while the fleet probes reads it probing",
        || async {
            target(&client, &d.base, "payments")
                .await
                .is_some_and(|v| v["breaker_state"] == "HALF_OPEN")
        },
    )
    .await;
    d.stop().await;
    for r in [a, b, c] {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_then_restarted() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let replicas = Arc::new([
        Replica::start(&redis.url(), dir.path(), "a").await,
        Replica::start(&redis.url(), dir.path(), "b").await,
        Replica::start(&redis.url(), dir.path(), "c").await,
    ]);
    let client = client();
    for r in replicas.iter() {
        until("every replica reads the shared view", || async {
            shared_gauge(&client, &r.base).await == Some(1)
        })
        .await;
    }

    // Two clients: predictions (health filled from the fleet view) and ingestion, spread
    // over the three replicas, until told to stop (at most 20,000 requests each).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for kind in 0..2u64 {
        let (stop, ok, failed, client) = (stop.clone(), ok.clone(), failed.clone(), client.clone());
        let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
        load.push(tokio::spawn(async move {
            for i in 0..20_000usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let base = &bases[i % 3];
                let r = if kind == 0 {
                    client
                        .post(format!("{base}/v1/predict"))
                        .header("content-type", "application/json")
                        .body(json!({"context": {"target": "db", "attempt": 2, "error": "http_503", "delay_ms": 100}}).to_string())
                        .send()
                        .await
                } else {
                    client
                        .post(format!("{base}/v1/attempts"))
                        .header("content-type", "application/x-ndjson")
                        .body(attempts("db", 20, 5))
                        .send()
                        .await
                };
                match r {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let a = &replicas[0];
    until("the load reaches the shared view", || async {
        target(&client, &replicas[1].base, "db")
            .await
            .is_some_and(|v| v["calls"].as_u64().unwrap() > 100)
    })
    .await;

    // Redis dies under the load: every replica falls back, and says so.
    redis.kill();
    for r in replicas.iter() {
        until("the fallback shows in /metrics", || async {
            shared_gauge(&client, &r.base).await == Some(0)
        })
        .await;
        let (s, ready) = get(&client, &format!("{}/readyz", r.base)).await;
        assert_eq!(s, 200, "still ready: {ready}");
        let ready: Value = serde_json::from_str(&ready).unwrap();
        assert_eq!(ready["fleet"], "local", "{ready}");
        assert!(
            ready["fleet_detail"].as_str().unwrap().contains("Redis"),
            "{ready}"
        );
    }
    let (_, metrics) = get(&client, &format!("{}/metrics", a.base)).await;
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("retrywise_fleet_redis_errors_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(errors >= 1.0, "{metrics}");
    // Each answers from its own view meanwhile: A reports what it ingested itself.
    ingest(&client, &a.base, attempts("local-only", 7, 0)).await;
    let v = target(&client, &a.base, "local-only").await.unwrap();
    assert_eq!(v["calls"], 7, "{v}");

    // Redis comes back (empty): shared again, and what is ingested at A is seen at C.
    let before = ok.load(Ordering::Relaxed);
    redis.restart().await;
    for r in replicas.iter() {
        until("the shared view returns", || async {
            shared_gauge(&client, &r.base).await == Some(1)
        })
        .await;
    }
    ingest(&client, &a.base, attempts("after", 12, 3)).await;
    until("C reports what A ingested after the restart", || async {
        target(&client, &replicas[2].base, "after")
            .await
            .is_some_and(|v| v["calls"] == 12 && v["failures"] == 3)
    })
    .await;
    until("the load goes on", || async {
        ok.load(Ordering::Relaxed) > before + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests answered, {failed} failed");
    assert!(ok > 100, "{ok}");
    assert_eq!(failed, 0, "no request fails because of Redis");
    let replicas = Arc::into_inner(replicas).unwrap();
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_is_fallen_back_from_and_returned_to() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let (a, b) = two_sharing(&redis, dir.path(), &client).await;
    ingest(&client, &a.base, attempts("db", 10, 5)).await;
    until("B sees A's attempts", || async {
        target(&client, &b.base, "db")
            .await
            .is_some_and(|v| v["calls"] == 10)
    })
    .await;
    // Redis hangs: commands time out, each replica answers from its own view meanwhile
    // (B never saw an attempt to db itself) and every request is still answered.
    redis.signal("STOP");
    until("B falls back", || async {
        shared_gauge(&client, &b.base).await == Some(0)
    })
    .await;
    let (s, ready) = get(&client, &format!("{}/readyz", b.base)).await;
    assert_eq!(s, 200);
    assert!(ready.contains("longer than 50 ms"), "{ready}");
    let v = target(&client, &b.base, "db").await.unwrap();
    assert_eq!(v["calls"], 0, "B's own view: {v}");
    // Attempts ingested at A while Redis hangs are kept and written when it answers.
    ingest(&client, &a.base, attempts("db", 6, 0)).await;
    redis.signal("CONT");
    until("B sees all of A's attempts once Redis answers", || async {
        shared_gauge(&client, &b.base).await == Some(1)
            && target(&client, &b.base, "db")
                .await
                .is_some_and(|v| v["calls"] == 16 && v["failures"] == 5)
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// Keeps the Redis on `port` busy for `ms` milliseconds (a script that loops until then,
/// as a slow command or a long fork would): commands sent meanwhile wait, and run after it.
async fn busy(port: u16, ms: u64) {
    let script = format!(
        "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] \
         while true do local n = redis.call('TIME') \
         if n[1] * 1000000 + n[2] - s > {} then break end end return 1",
        ms * 1000
    );
    let cmd = format!(
        "*3\r\n$4\r\nEVAL\r\n${}\r\n{script}\r\n$1\r\n0\r\n",
        script.len()
    );
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(cmd.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b":1\r\n");
}

/// A write that times out on the replica's side may still run on Redis's (a command
/// queued behind a slow one): the replica sends the same batch again, under the same name,
/// and the fleet counts each attempt once - neither lost nor twice. Redis is kept busy
/// while the attempts arrive, so the replica's write waits behind the busy script and
/// times out there. (Here redis-rs's dropped connection does not get its command run;
/// the script's own test of a name written twice is in `shared.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_timed_out_is_sent_again_and_counted_once() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let (a, b) = two_sharing(&redis, dir.path(), &client).await;
    let stall = tokio::spawn(busy(redis.port, 400));
    tokio::time::sleep(Duration::from_millis(20)).await;
    ingest(&client, &a.base, attempts("db", 10, 4)).await;
    until("A's write times out", || async {
        shared_gauge(&client, &a.base).await == Some(0)
    })
    .await;
    tokio::time::timeout(PATIENCE, stall)
        .await
        .unwrap()
        .unwrap();
    until("A shares again", || async {
        shared_gauge(&client, &a.base).await == Some(1)
    })
    .await;
    until("B sees A's attempts", || async {
        target(&client, &b.base, "db")
            .await
            .is_some_and(|v| v["calls"] != 0)
    })
    .await;
    // A few more cache periods: every try of the batch has run by now.
    tokio::time::sleep(CACHE * 5).await;
    let v = target(&client, &b.base, "db").await.unwrap();
    assert_eq!(
        (v["calls"].as_u64(), v["failures"].as_u64()),
        (Some(10), Some(4)),
        "{v}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_fleet_leaves_nothing_in_redis() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A 300 ms health window: keys live two windows after their last write.
    let a = Replica::start_with(&redis.url(), dir.path(), "a", Duration::from_millis(300)).await;
    let client = client();
    ingest(&client, &a.base, attempts("db", 10, 2)).await;
    until("the attempts reach Redis", || async {
        dbsize(redis.port).await > 0
    })
    .await;
    until("every key expires once the target is idle", || async {
        dbsize(redis.port).await == 0
    })
    .await;
    a.stop().await;
}

/// Each replica caps only its own targets: two replicas of `max_targets = 2`, each with
/// two targets of its own, write four, and a read takes the two most recently written.
/// The replica says how many it left out (`retrywise_fleet_unread_targets`) instead of
/// answering the rest from its own evidence unsaid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_beyond_what_a_read_takes_are_counted() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let capped = |name: &str| {
        let mut config = replica_config(&redis.url(), dir.path(), name, Duration::from_secs(10));
        config.max_targets = 2;
        config
    };
    let a = Replica::start_config(capped("a")).await;
    let b = Replica::start_config(capped("b")).await;
    let unread = |base: String| {
        let client = client.clone();
        async move {
            let (_, text) = get(&client, &format!("{base}/metrics")).await;
            text.lines()
                .find_map(|l| l.strip_prefix("retrywise_fleet_unread_targets "))
                .map(|v| v.trim().parse::<i64>().unwrap())
        }
    };
    assert_eq!(unread(a.base.clone()).await, Some(0));
    for (r, names) in [(&a, ["a1", "a2"]), (&b, ["b1", "b2"])] {
        for name in names {
            ingest(&client, &r.base, attempts(name, 4, 0)).await;
        }
    }
    for r in [&a, &b] {
        until("two targets left out of the read", || async {
            unread(r.base.clone()).await == Some(2)
        })
        .await;
    }
    a.stop().await;
    b.stop().await;
}
