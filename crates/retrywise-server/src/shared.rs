//! The fleet view shared by the service's replicas through Redis
//! (`retrywise serve --fleet redis://HOST:PORT`).
//!
//! Without it each replica knows only the attempts posted to it: with three replicas each
//! sees a third of the evidence, and a circuit opened at one is closed at the other two.
//! With it, every replica writes what it ingests to Redis and reads back the whole fleet's
//! view, so each answers health and failure rates from all the evidence, and a circuit
//! any replica's breaker opens is open at every replica. (A breaker still opens on the
//! attempts ingested at its own replica, or on the model's prediction from the shared
//! health: behind a round-robin balancer, each replica sees enough of a failing target's
//! attempts soon after the fleet does.)
//!
//! # In Redis
//! Keys start with `retrywise:fleet:`:
//! - `targets` — a sorted set: each target, scored by the time (ms) of its last write, or
//!   the end of its circuit's opening when that is later; targets idle for two health
//!   windows (after the opening) leave it, and the set itself expires when the whole fleet
//!   has been idle that long: an idle fleet leaves nothing in Redis. An open circuit keeps
//!   its target listed although callers obeying it report no attempts;
//! - `B:{target}` — one hash per target, its fields `{bucket}:{field}` for each tenth of
//!   the health window (bucket = time / (window / 10), as
//!   `retrywise::health::HealthTracker` splits it): `c` calls, `f` failures, `p`
//!   permanent failures, `s` summed latency (µs) and `h<N>` the latency histogram
//!   ([`retrywise::health::latency_bucket`]). A read takes a target's buckets in one call
//!   (a hash per bucket took ten: `benches/server/fleet_redis.py`); the first write in a
//!   new bucket drops the buckets older than the window and one more, and any later than
//!   Redis's now (`pruned` says which bucket last did); the hash expires two windows after
//!   its last write. (Before 2026-12-08 the
//!   buckets were `b:{target}:{bucket}` keys: a fleet mid-upgrade shares circuits and
//!   targets, but each version counts only its own version's buckets.)
//! - `m:{target}` — `first` (when the fleet first saw the target), `ls` (when an attempt
//!   to it last succeeded), `cl` (when a replica's breaker last closed after probing) and
//!   `ou` (when the circuit's last opening ends: kept after `o:` expires, so that a replica
//!   that starts, or first reads, while the fleet probes knows it does), ms; it expires
//!   when the target goes idle (and its circuit's opening has ended);
//! - `o:{target}` — the shared circuit: present while it is open, its TTL the time left.
//!   A replica whose own breaker opens (on its evidence or on the model's prediction)
//!   writes it; every replica then reports the circuit open and refuses fresh calls;
//! - `w:{replica}` — the number of the replica's last batch added (a replica's name is
//!   drawn at random when it starts): a batch sent again after a write that timed out
//!   on the replica's side but ran on Redis's is added once; it expires two windows
//!   after the replica's last write;
//! - `period` — the bucket length (ms) the fleet writes with; it expires two windows
//!   after the last write. A replica with another health window (so other buckets, and
//!   another window to prune targets by) neither writes nor reads: it answers from its
//!   own view and says why (`/readyz`'s `fleet` detail, the log) until the others have
//!   been gone for two of their windows (a fleet that changes its window all at once
//!   shares again two old windows after its last write with the old one).
//!
//! Keys are built inside the scripts, so the layout needs one Redis primary at a fixed
//! address (standalone; not Redis Cluster, and no Sentinel discovery).
//!
//! # Clock
//! Every time in Redis is on Redis's clock (`TIME`, read by the scripts): a replica sends
//! ages ("this attempt ended 300 ms ago", "this bucket is two before the current one")
//! and times left ("open for 4 s more"), and reads them back the same way, placing them
//! on its own clock. Replicas whose clocks disagree still agree on which buckets are
//! recent, when a target last succeeded and how long a circuit stays open, and one whose
//! clock runs ahead neither hides the others' newest evidence nor prunes their targets. A
//! time in Redis later than its clock (another program's value) reads as none, and a
//! circuit open longer than the fleet's longest opening as open for that long - counted
//! in `retrywise_fleet_foreign_targets_total`.
//!
//! # When
//! Ingested attempts are counted in process and written four times per cache period (250
//! ms by default), each write one Lua script (atomic: no replica sees half a batch). Every
//! three quarters of a cache period one Lua script reads back the whole window of every
//! active target: an attempt ingested at any replica is in every replica's view within one
//! cache period (a quarter until it is written, three until it is read), plus Redis's round
//! trips. The predictions read that copy, so a prediction makes no network round trip.
//!
//! # Faults
//! Every Redis command has a timeout (`fleet_timeout`, 100 ms by default). When one fails
//! or the copy grows older than two cache periods and a timeout, the replica answers from
//! its own in-process view (which it keeps up to date all along) - except that a circuit
//! the fleet opened stays open here until the end this replica last read - says so —
//! `/readyz`'s `fleet` detail, the `retrywise_fleet_shared` gauge, one log line per
//! change — and keeps
//! the counts it could not write (those still within the window) to write them when Redis
//! answers again; then it goes back to the shared view. No request waits on Redis. While
//! Redis keeps failing, the replica tries again after an exponential backoff with jitter
//! (twice the quarter cache period per failure in a row, at most [`RECONNECT_AT_MOST`],
//! drawn between half and all of it, at the first quarter period's tick after it), so that a fleet does not hammer a Redis that is
//! coming back with a new connection from every replica every quarter period.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use retrywise::health::{Ended, HealthSnapshot, latency_bucket, latency_quantile};

use crate::ServerError;

/// Buckets of a health window, as `retrywise::health::HealthTracker` keeps them.
const BUCKETS: u64 = 10;
/// Buckets of the recent failure rate.
const RECENT: u64 = 2;
/// Buckets of a half window: the latency quantile reads the buckets of the current half
/// window and of the one before (the last 50-100 % of the window), as the tracker's
/// histogram, which turns over every half window, does.
const LATENCY: u64 = 5;
/// Where the keys live.
const PREFIX: &str = "retrywise:fleet:";
/// The warnings logged once per change ([`SharedFleet::changed`]): targets a write
/// skipped, a read left out, a read found odd times for.
const WARNED_SKIPPED: usize = 0;
const WARNED_FOREIGN: usize = 1;
const WARNED_ODD: usize = 2;
const WARNED_UNREAD: usize = 3;

/// The clock every replica's times are reckoned on: Redis's own (`TIME`), so that replicas
/// whose clocks disagree still agree on which buckets are recent, on when a target last
/// succeeded, and on how long a circuit stays open. Times cross the wire as ages and times
/// left ("this long ago", "this long from now"), never as one machine's clock readings.
/// (`replicate_commands` lets a script write after reading the clock on a Redis older
/// than 5; later ones always do.)
const CLOCK: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local PERIOD_MISMATCH = 'RETRYWISE the fleet counts in buckets of a tenth of its health window; give every replica the same health_window_ms: the fleet counts in buckets of '
local function num(x)
  local v = tonumber(x)
  if v == nil or v ~= v or v == math.huge or v == -math.huge then return 0 end
  return v
end
";

/// Adds the batch's counts (see the module's documentation for the layout), once: a batch
/// is numbered in its replica's sequence, and one at or below the replica's last number
/// written (a write that timed out on the replica's side and ran on Redis's, sent again)
/// adds nothing - a replica sends its batches in order, a failed one again before any
/// newer, so one number a replica (`w:{replica}`, expiring with the window) is all the
/// memory this takes. `ARGV`: prefix, bucket length (ms), ttl (ms), the longest opening
/// (ms), the replica, the batch's number, then per target: name, how long ago an attempt
/// last succeeded (ms; negative: none), open for (ms, 0: not open), how long ago a
/// replica's breaker last closed after probing (ms; negative: not since the last batch),
/// buckets, then per bucket: how many buckets before the writer's current one it is,
/// fields, then the fields as name/increment pairs. Returns `{added (0: already added),
/// targets skipped}`.
///
/// A target whose circuit is open stays in the targets set (scored by the end of its
/// opening) and keeps its `m:` hash for the opening and a window after it, though no
/// attempt is written meanwhile - callers obeying the circuit send none.
///
/// Nothing in it stops halfway (Redis would not undo what ran before): a key of ours
/// holding another type (written by something else) is found before any write - the
/// targets set refuses the batch, a target's own keys skip that target (counted); a
/// value that is not a number reads as 0, and a time later than now (another program's,
/// or a clock that ran ahead) is replaced; an increment that cannot be added (a count past
/// what Redis holds, or a field that is not an integer) is skipped through `pcall`.
const WRITE: &str = r"
local p = ARGV[1]
local period = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local longest = tonumber(ARGV[4])
local z = p .. 'targets'
local cur = math.floor(now / period)
-- Buckets kept in a target's hash: the window's (the ttl is two windows) and one more,
-- for a write of the oldest bucket a replica still holds.
local kept = math.floor(ttl / (2 * period)) + 1
local function is(key, t)
  local got = redis.call('TYPE', key)['ok']
  return got == 'none' or got == t
end
local function extend(key, ms)
  local left = redis.call('PTTL', key)
  if left < ms then redis.call('PEXPIRE', key, ms) end
end
if not is(z, 'zset') then
  return redis.error_reply('RETRYWISE ' .. z .. ' is not a sorted set: another program writes under the prefix')
end
local w = p .. 'w:' .. ARGV[5]
local seq = tonumber(ARGV[6])
if not is(w, 'string') then
  return redis.error_reply('RETRYWISE ' .. w .. ' is not a string: another program writes under the prefix')
end
local wk = p .. 'period'
if not is(wk, 'string') then
  return redis.error_reply('RETRYWISE ' .. wk .. ' is not a string: another program writes under the prefix')
end
local fleet_period = redis.call('GET', wk)
if fleet_period and fleet_period ~= ARGV[2] then
  return redis.error_reply(PERIOD_MISMATCH .. fleet_period .. ' ms, this replica in buckets of ' .. ARGV[2] .. ' ms')
end
if seq <= num(redis.call('GET', w)) then
  return {0, 0}
end
local skipped = 0
local keep_z = ttl
local i = 7
while i <= #ARGV do
  local name = ARGV[i]
  local ls_age = tonumber(ARGV[i + 1])
  local open = math.min(tonumber(ARGV[i + 2]), longest)
  local cl_age = tonumber(ARGV[i + 3])
  local nb = tonumber(ARGV[i + 4])
  local m = p .. 'm:' .. name
  local o = p .. 'o:' .. name
  local bk = p .. 'B:' .. name
  local ok = is(m, 'hash') and is(o, 'string') and (nb == 0 or is(bk, 'hash'))
  local j = i + 5
  for _ = 1, nb do
    j = j + 2 + 2 * tonumber(ARGV[j + 1])
  end
  if not ok then
    skipped = skipped + 1
    i = j
  else
    i = i + 5
    -- Listed until a window after its last write, or after the end of its opening.
    local score = now + math.max(open, 0)
    local old = tonumber(redis.call('ZSCORE', z, name))
    if old == nil or score > old or old > now + longest then
      redis.call('ZADD', z, score, name)
    end
    keep_z = math.max(keep_z, ttl + open)
    redis.call('HSETNX', m, 'first', now)
    if ls_age >= 0 then
      local ls = now - ls_age
      local was = num(redis.call('HGET', m, 'ls'))
      if ls > was or was > now then redis.call('HSET', m, 'ls', ls) end
    end
    if cl_age >= 0 then
      local cl = now - cl_age
      local was = num(redis.call('HGET', m, 'cl'))
      if cl > was or was > now then redis.call('HSET', m, 'cl', cl) end
    end
    if num(redis.call('HGET', m, 'first')) > now then redis.call('HSET', m, 'first', now) end
    extend(m, ttl + open)
    if open > 0 then
      if open > redis.call('PTTL', o) then redis.call('SET', o, '1', 'PX', open) end
      local ou = now + open
      local was = num(redis.call('HGET', m, 'ou'))
      if ou > was or was > now + longest then redis.call('HSET', m, 'ou', ou) end
    end
    -- The buckets that left the window go, once a bucket period per target (the first
    -- write in a new bucket finds `pruned` elsewhere), and so do buckets later than now
    -- (written while Redis's clock ran ahead) and fields of no bucket.
    if nb > 0 and num(redis.call('HGET', bk, 'pruned')) ~= cur then
      local old = {}
      for _, f in ipairs(redis.call('HKEYS', bk)) do
        local at = string.find(f, ':', 1, true)
        if at then
          local bucket = tonumber(string.sub(f, 1, at - 1))
          if bucket == nil or bucket ~= bucket or bucket <= cur - kept or bucket > cur then
            old[#old + 1] = f
          end
        end
      end
      for s = 1, #old, 1000 do
        redis.call('HDEL', bk, unpack(old, s, math.min(s + 999, #old)))
      end
      redis.call('HSET', bk, 'pruned', cur)
    end
    for _ = 1, nb do
      local bucket = (cur - tonumber(ARGV[i])) .. ':'
      local nf = tonumber(ARGV[i + 1])
      i = i + 2
      for _ = 1, nf do
        redis.pcall('HINCRBY', bk, bucket .. ARGV[i], ARGV[i + 1])
        i = i + 2
      end
    end
    if nb > 0 then redis.call('PEXPIRE', bk, ttl) end
  end
end
redis.call('ZREMRANGEBYSCORE', z, '-inf', now - ttl)
extend(z, keep_z)
redis.call('SET', w, ARGV[6], 'PX', ttl)
redis.call('SET', wk, ARGV[2], 'PX', ttl)
return {1, skipped}
";

/// Reads every active target's window. `ARGV`: prefix, bucket length (ms), ttl (ms), most
/// targets, buckets in the window, in the recent rate, in the latency quantile. Returns
/// per target `{name, {calls, failures, recent calls, recent failures, permanent
/// failures, latency µs, how long ago an attempt last succeeded (ms; -1: none), how long
/// ago the fleet first saw it, circuit open for (ms; negative: closed), how long ago a
/// replica's breaker last closed after probing (-1: never), how long ago its last opening
/// ended (-1: none, or not yet), then histogram bucket/count pairs}}` - ages on Redis's clock, which the reader adds to its own (a time later than
/// Redis's now reads as an age below -1: another program's, or a clock that ran ahead). A
/// key of another type than ours reads as empty, and a value that is not a number as 0:
/// one foreign key does not take the whole view down.
const READ: &str = r"
local p = ARGV[1]
local period = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local most = tonumber(ARGV[4])
local fleet_period = redis.pcall('GET', p .. 'period')
if type(fleet_period) == 'string' and fleet_period ~= ARGV[2] then
  return redis.error_reply(PERIOD_MISMATCH .. fleet_period .. ' ms, this replica in buckets of ' .. ARGV[2] .. ' ms')
end
local buckets = tonumber(ARGV[5])
local recent = tonumber(ARGV[6])
local latency = tonumber(ARGV[7])
local names = redis.call('ZREVRANGEBYSCORE', p .. 'targets', '+inf', now - ttl, 'LIMIT', 0, most)
local b = math.floor(now / period)
-- The latency histogram: the current half window's buckets and the previous half's.
local latency_buckets = latency + (b % latency) + 1
local function table_or_empty(r)
  if type(r) == 'table' and not r['err'] then return r end
  return {}
end
local function age(v)
  if v <= 0 then return -1 end
  if v > now then return math.min(now - v, -2) end
  return now - v
end
local out = {}
for _, name in ipairs(names) do
  local c, f, rc, rf, pm, s = 0, 0, 0, 0, 0, 0
  local hist = {}
  -- One hash per target, its fields `{bucket}:{field}`: one call, not one per bucket.
  local h = table_or_empty(redis.pcall('HGETALL', p .. 'B:' .. name))
  for j = 1, #h, 2 do
    local key = h[j]
    local at = string.find(key, ':', 1, true)
    local k = -1
    if at then k = b - num(string.sub(key, 1, at - 1)) end
    if k >= 0 and k < buckets then
      local field, v = string.sub(key, at + 1), num(h[j + 1])
      if field == 'c' then
        c = c + v
        if k < recent then rc = rc + v end
      elseif field == 'f' then
        f = f + v
        if k < recent then rf = rf + v end
      elseif field == 'p' then pm = pm + v
      elseif field == 's' then s = s + v
      elseif k < latency_buckets and string.sub(field, 1, 1) == 'h' then
        local hb = tonumber(string.sub(field, 2))
        if hb and hb >= 0 and hb < 1024 and hb == math.floor(hb) then hist[hb] = (hist[hb] or 0) + v end
      end
    end
  end
  local m = table_or_empty(redis.pcall('HMGET', p .. 'm:' .. name, 'ls', 'first', 'cl', 'ou'))
  -- The last opening's end, once it has passed (while open, the PTTL says it).
  local ou = num(m[4])
  local ou_age = -1
  if ou > 0 and ou <= now then ou_age = now - ou end
  local row = {c, f, rc, rf, pm, s, age(num(m[1])), age(num(m[2])),
    redis.call('PTTL', p .. 'o:' .. name), age(num(m[3])), ou_age}
  for hb, v in pairs(hist) do
    row[#row + 1] = hb
    row[#row + 1] = v
  end
  out[#out + 1] = {name, row}
end
return {out, redis.call('ZCOUNT', p .. 'targets', now - ttl, '+inf')}
";

/// What `READ` answers: a row per target read (its name, its numbers), and how many the
/// fleet lists in all.
type ReadReply = (Vec<(Vec<u8>, Vec<i64>)>, u64);

/// The counts of one bucket not yet written.
#[derive(Debug, Default, Clone)]
struct BucketDelta {
    calls: u64,
    failures: u64,
    permanents: u64,
    latency_us: u64,
    hist: BTreeMap<usize, u64>,
}

/// One target's counts not yet written.
#[derive(Debug, Default, Clone)]
struct TargetDelta {
    buckets: BTreeMap<u64, BucketDelta>,
    last_success_ms: u64,
    /// Until when this replica's breaker is open (wall ms; 0: not): the time left is
    /// reckoned when written, however long the batch waited.
    open_until_ms: u64,
    closed_ms: u64,
}

/// A batch of counts whose write failed.
#[derive(Debug)]
struct Unsent {
    /// Its number in the replica's sequence (the script adds a number once).
    name: u64,
    batch: HashMap<Arc<str>, TargetDelta>,
}

/// Ends of an opening read at most this far apart are the same opening's, at most: a
/// read reckons the end as its own clock plus the key's time to live, so two reads of one
/// end differ by up to a read's latency (its timeout bounds it) - and a reopening after
/// failed probes lasts the fleet's shortest opening (500 ms) or longer, so half of that
/// tells them apart.
const SAME_OPENING_AT_MOST: Duration = Duration::from_millis(250);

/// How long after its open time a shared circuit with no success reported since is read
/// as probing, at most (then as closed: the longest opening of the fleet's breakers).
pub const PROBING_AT_MOST: Duration = Duration::from_secs(60);

/// The longest a replica waits before it tries Redis again after failures in a row (see
/// the module's documentation).
pub const RECONNECT_AT_MOST: Duration = Duration::from_secs(2);

/// How long to wait before trying Redis again after `failures` in a row (at least one),
/// the writes' period being `every`: `every · 2^failures`, at most [`RECONNECT_AT_MOST`]
/// (and at least `every`), scaled by `jitter` in `[0, 1)` to between half and all of it.
fn reconnect_after(every: Duration, failures: u32, jitter: f64) -> Duration {
    let full = every
        .saturating_mul(1 << failures.min(16))
        .min(RECONNECT_AT_MOST)
        .max(every);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The latency one attempt adds to its bucket's sum, at most (about 28 hours): so that no
/// sum of a bucket's attempts passes what Redis holds (`i64`), whatever the durations
/// recorded.
const MAX_LATENCY_US: u64 = 100_000_000_000;

/// What the shared view holds of one target, as last read from Redis: the whole fleet's
/// evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedTarget {
    /// Calls that ended within the window.
    pub calls: u64,
    /// Failures among them.
    pub failures: u64,
    /// Calls that ended in the window's last two tenths.
    pub recent_calls: u64,
    /// Failures among them.
    pub recent_failures: u64,
    /// Permanent failures within the window.
    pub permanents: u64,
    /// The window's latencies summed, µs.
    pub latency_us: u64,
    /// p95 latency over the window's last half.
    pub latency_p95: Option<Duration>,
    /// When an attempt to the target last succeeded (wall clock, ms).
    pub last_success_ms: Option<u64>,
    /// When the fleet first saw the target (wall clock, ms).
    pub first_seen_ms: u64,
    /// Until when the shared circuit is open (wall clock, ms), if it is.
    pub open_until_ms: Option<u64>,
    /// When a replica's breaker for the target last closed after probing (wall clock, ms).
    pub closed_ms: Option<u64>,
    /// When the shared circuit's last opening ended (wall clock, ms), once it has: a
    /// replica that starts, or first reads, while the fleet probes it learns of it here.
    pub opening_ended_ms: Option<u64>,
}

/// The fleet's recent failure rate below which a success after an opening answers it: the
/// fleet breaker's failure-rate threshold (resilience4j's default, 50 %).
pub const ANSWERED_BELOW: f64 = 0.5;

impl SharedTarget {
    /// Whether the fleet reports the opening that ended at `until` (wall ms) answered: a
    /// replica's breaker closed after probing since (its probes answered, 4xx answers
    /// included, which are no successes), or an attempt succeeded since while the fleet's
    /// recent attempts (the window's last two tenths, every replica's) fail less often
    /// than [`ANSWERED_BELOW`] (or none is recent). One lucky success among failing probes answers nothing: a
    /// target that serves one call in ten would close every replica's circuit with it,
    /// and take the whole fleet's traffic again.
    pub fn answered_since(&self, until: u64) -> bool {
        // (No recent attempt to judge by - the probes reported too late to count as recent
        // - and the success alone answers, as it did before.)
        let recovering = self.recent_calls == 0
            || (self.recent_failures as f64) < ANSWERED_BELOW * self.recent_calls as f64;
        self.closed_ms.is_some_and(|c| c >= until)
            || (recovering && self.last_success_ms.is_some_and(|s| s >= until))
    }

    /// The health this view gives as of `wall_ms`, measured over `window` — the numbers a
    /// `retrywise::health::HealthTracker` fed with every replica's attempts would give.
    pub fn snapshot(&self, wall_ms: u64, window: Duration) -> HealthSnapshot {
        let rate = |n: u64, of: u64| (of > 0).then(|| n.min(of) as f64 / of as f64);
        let window_us = window.as_micros().max(1) as f64;
        let since = wall_ms.saturating_sub(self.last_success_ms.unwrap_or(self.first_seen_ms));
        HealthSnapshot {
            calls: self.calls,
            failures: self.failures,
            failure_rate: rate(self.failures, self.calls),
            latency_p95: if self.calls > 0 {
                self.latency_p95
            } else {
                None
            },
            in_flight: (self.latency_us as f64 / window_us)
                .round()
                .min(f64::from(u32::MAX)) as u32,
            failure_rate_recent: retrywise::health::recent_failure_rate(
                (self.recent_failures, self.recent_calls),
                (self.failures, self.calls),
            ),
            permanent_rate: rate(self.permanents, self.calls),
            since_success: Duration::from_millis(since),
            window,
        }
    }

    /// How long the shared circuit stays open as of `wall_ms`; `None` when it is closed.
    pub fn open_remaining(&self, wall_ms: u64) -> Option<Duration> {
        self.open_until_ms
            .filter(|&until| until > wall_ms)
            .map(|until| Duration::from_millis(until - wall_ms))
    }
}

/// Where a replica's fleet view comes from now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetStatus {
    /// Answering from the shared view (`false`: from its own, Redis being unreachable).
    pub shared: bool,
    /// What happened last (the Redis error while falling back).
    pub detail: String,
}

/// The Prometheus series a [`SharedFleet`] keeps up to date.
#[derive(Debug, Clone, Default)]
pub struct SharedMetrics {
    /// 1 while the replica answers from the shared view, 0 while it falls back.
    pub shared: Gauge,
    /// Ticks (a write, and every third a read) whose Redis commands failed or timed out.
    pub errors: Counter,
    /// Targets in the shared view.
    pub targets: Gauge,
    /// Targets skipped because their keys in Redis hold what the service did not write.
    pub foreign: Counter,
    /// Targets the fleet lists in Redis that the last read left out: beyond the
    /// `max_targets` most recently written (each replica caps only its own).
    pub unread: Gauge,
    /// How long the last read of the shared view took, seconds (a read covers every
    /// target written of late: Redis's time grows with their number, and past
    /// `fleet_timeout` the replica answers from its own view).
    pub read_seconds: Gauge<f64, AtomicU64>,
}

/// The fleet view shared through Redis (see the module's documentation).
pub struct SharedFleet {
    client: redis::Client,
    window: Duration,
    period_ms: u64,
    cache: Duration,
    timeout: Duration,
    max_targets: usize,
    pending: Mutex<HashMap<Arc<str>, TargetDelta>>,
    /// A batch whose write failed, with its number: sent again, whole and under the same
    /// number, before anything newer (so Redis adds it at most once).
    unsent: Mutex<Option<Unsent>>,
    /// This replica's name in Redis: random, so that no two replicas (nor two runs of
    /// one) share a sequence.
    replica: u64,
    /// The next batch's number (from 1).
    sequence: AtomicU64,
    /// Held through a flush: batches are numbered and sent one flush at a time, so a
    /// later number never reaches Redis before an earlier one (which Redis would then
    /// take for a batch already added).
    flushing: tokio::sync::Mutex<()>,
    view: ArcSwap<HashMap<Arc<str>, SharedTarget>>,
    /// The latest end of an open shared circuit read per target (wall ms), kept after the
    /// circuit's key expires: a circuit whose open time has passed, with no success
    /// reported since, is probing ([`probing_since`](Self::probing_since)).
    opened: Mutex<HashMap<Arc<str>, u64>>,
    /// The end (as in `opened`) of each target's opening some read found answered
    /// ([`SharedTarget::answered_since`]): answered once, it stays answered - the recent
    /// failure rate that answered it moves on, and a blip later must not turn a circuit
    /// the fleet closed back into HALF_OPEN until [`PROBING_AT_MOST`] has passed. Under
    /// `opened`'s lock.
    answered: Mutex<HashMap<Arc<str>, u64>>,
    shared: AtomicBool,
    /// Whether a tick's outcome has been logged yet: the first is, shared or not (a
    /// replica that never reaches Redis would otherwise never say so).
    said: AtomicBool,
    /// Whether the view has ever been shared (a later return is "again").
    ever_shared: AtomicBool,
    /// Whether the reads were last said to be slow (more than half the timeout): said
    /// once when they become so, and once when they are fast again (below a quarter).
    slow_reads: AtomicBool,
    /// How many targets the last write skipped, the last read left out, and the last read
    /// found odd times for: each warning is logged when its count changes, not at every
    /// write or read that finds the same foreign keys again (the counter counts them all).
    warned: [AtomicU64; 4],
    /// Wall-clock ms of the last successful read; 0 before the first.
    read_ms: AtomicU64,
    detail: Mutex<String>,
    metrics: SharedMetrics,
    write: redis::Script,
    read: redis::Script,
}

impl std::fmt::Debug for SharedFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFleet")
            .field("window", &self.window)
            .field("cache", &self.cache)
            .field("timeout", &self.timeout)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Wall-clock time, ms since the epoch.
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SharedFleet {
    /// A shared view in the Redis at `url` over a health `window`, read every `cache`,
    /// each command given `timeout`, of at most `max_targets` targets. Connects lazily (in
    /// [`SharedFleet::spawn`]): until Redis answers, the replica answers from its own view.
    ///
    /// # Errors
    /// `url` is not a Redis URL.
    pub fn new(
        url: &str,
        window: Duration,
        cache: Duration,
        timeout: Duration,
        max_targets: usize,
        metrics: SharedMetrics,
    ) -> Result<Self, ServerError> {
        let client = redis::Client::open(url).map_err(|e| ServerError::Config {
            origin: "fleet".into(),
            field: "fleet".into(),
            problem: format!("is not a usable Redis URL: {e}"),
        })?;
        Ok(Self {
            client,
            window,
            period_ms: (ms(window) / BUCKETS).max(1),
            cache,
            timeout,
            max_targets,
            pending: Mutex::new(HashMap::new()),
            unsent: Mutex::new(None),
            replica: rand::random(),
            sequence: AtomicU64::new(1),
            flushing: tokio::sync::Mutex::new(()),
            view: ArcSwap::from_pointee(HashMap::new()),
            opened: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
            warned: Default::default(),
            shared: AtomicBool::new(false),
            said: AtomicBool::new(false),
            ever_shared: AtomicBool::new(false),
            slow_reads: AtomicBool::new(false),
            read_ms: AtomicU64::new(0),
            detail: Mutex::new("connecting to Redis".into()),
            metrics,
            write: redis::Script::new(&format!("{CLOCK}{WRITE}")),
            read: redis::Script::new(&format!("{CLOCK}{READ}")),
        })
    }

    /// Counts an attempt to `target` that ended at `ended_ms` (wall clock) as `how` after
    /// `latency`; written at the next flush.
    pub fn record(&self, target: &Arc<str>, ended_ms: u64, how: Ended, latency: Duration) {
        self.with_pending(target, |t| {
            let b = t.buckets.entry(ended_ms / self.period_ms).or_default();
            b.calls += 1;
            match how {
                Ended::Success => t.last_success_ms = t.last_success_ms.max(ended_ms.max(1)),
                Ended::Failure => b.failures += 1,
                Ended::Permanent => b.permanents += 1,
            }
            let us = u64::try_from(latency.as_micros())
                .map_or(MAX_LATENCY_US, |us| us.min(MAX_LATENCY_US));
            b.latency_us = b.latency_us.saturating_add(us);
            *b.hist.entry(latency_bucket(latency)).or_default() += 1;
        });
    }

    /// Runs `f` on what `target` has not yet written - unless it has nothing pending and
    /// the batch already holds `max_targets` targets (the rest are left out).
    fn with_pending(&self, target: &Arc<str>, f: impl FnOnce(&mut TargetDelta)) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if !pending.contains_key(target) && pending.len() >= self.max_targets {
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| {
                tracing::warn!(
                    max_targets = self.max_targets,
                    "the counts waiting to be written to Redis hold max_targets targets: a new target's are left out of the shared view until they are written"
                );
            });
            return;
        }
        f(pending.entry(Arc::clone(target)).or_default());
    }

    /// A replica's own breaker for `target` is open for `remaining`: the fleet's circuit is
    /// open at least as long (written at the next flush).
    pub fn record_open(&self, target: &Arc<str>, remaining: Duration) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let t = pending.entry(Arc::clone(target)).or_default();
        t.open_until_ms = t
            .open_until_ms
            .max(wall_ms().saturating_add(ms(remaining).max(1)));
    }

    /// A replica's own breaker for `target` closed at `wall_ms` after probing: the fleet's
    /// probing of that circuit is over (written at the next flush).
    pub fn record_closed(&self, target: &Arc<str>, wall_ms: u64) {
        self.with_pending(target, |t| t.closed_ms = t.closed_ms.max(wall_ms.max(1)));
    }

    /// What the shared view holds of `target`, while the replica answers from it (`None`
    /// while it falls back, or for a target the fleet has not seen).
    pub fn target(&self, target: &str) -> Option<SharedTarget> {
        if !self.fresh(wall_ms()) {
            return None;
        }
        self.view.load().get(target).copied()
    }

    /// Whether the shared view may be answered from at `now_ms`: the last read worked and
    /// is at most two cache periods and a timeout old.
    fn fresh(&self, now_ms: u64) -> bool {
        if !self.shared.load(Ordering::Relaxed) {
            return false;
        }
        let max_age = ms(self.cache * 2 + self.timeout);
        now_ms.saturating_sub(self.read_ms.load(Ordering::Relaxed)) <= max_age
    }

    /// Where the replica's view comes from now, and why.
    pub fn status(&self) -> FleetStatus {
        FleetStatus {
            shared: self.fresh(wall_ms()),
            detail: self
                .detail
                .lock()
                .map_or_else(|_| String::new(), |d| d.clone()),
        }
    }

    /// Writes the counts recorded since the last flush, as a named batch Redis adds once.
    /// A batch whose write failed (refused, or timed out - it may still have run on Redis)
    /// is kept whole under its name and sent again, before anything newer, with what is
    /// still within the window; the counts recorded meanwhile wait for the next flush.
    async fn flush(&self, conn: &mut ConnectionManager) -> Result<usize, String> {
        let _one_at_a_time = self.flushing.lock().await;
        let now = wall_ms();
        let oldest = now.saturating_sub(ms(self.window)) / self.period_ms;
        let retried = self.unsent.lock().ok().and_then(|mut u| u.take());
        let (name, mut batch) = match retried {
            Some(u) => {
                // The counts waiting behind a batch Redis keeps refusing lose what has left
                // the window meanwhile (nobody would read it): through a long outage they
                // hold one window, not one bucket a period for as long as it lasts.
                if let Ok(mut p) = self.pending.lock() {
                    let window_start = now.saturating_sub(ms(self.window));
                    for t in p.values_mut() {
                        t.buckets = t.buckets.split_off(&oldest);
                        // An opening over, and stamps from before the window, tell the
                        // view nothing it would read now.
                        if t.open_until_ms <= now {
                            t.open_until_ms = 0;
                        }
                        if t.last_success_ms < window_start {
                            t.last_success_ms = 0;
                        }
                        if t.closed_ms < window_start {
                            t.closed_ms = 0;
                        }
                    }
                    // A target left with nothing to write holds no place: else, through an
                    // outage with targets coming and going, the places fill with stale
                    // entries and a new target's counts are left out.
                    p.retain(|_, t| {
                        !t.buckets.is_empty()
                            || t.last_success_ms > 0
                            || t.open_until_ms > 0
                            || t.closed_ms > 0
                    });
                }
                (u.name, u.batch)
            }
            None => match self.pending.lock() {
                Ok(mut p) if !p.is_empty() => (
                    self.sequence.fetch_add(1, Ordering::Relaxed),
                    std::mem::take(&mut *p),
                ),
                _ => return Ok(0),
            },
        };
        // What is older than the window is read by no one: not sent again; nor is an
        // opening that has ended.
        for t in batch.values_mut() {
            t.buckets.retain(|&b, _| b >= oldest);
            if t.open_until_ms <= now {
                t.open_until_ms = 0;
            }
        }
        batch.retain(|_, t| {
            !t.buckets.is_empty() || t.open_until_ms > 0 || t.last_success_ms > 0 || t.closed_ms > 0
        });
        if batch.is_empty() {
            return Ok(0);
        }
        let ttl = ms(self.window).saturating_mul(2);
        let mut call = self.write.prepare_invoke();
        call.arg(PREFIX)
            .arg(self.period_ms)
            .arg(ttl)
            .arg(ms(crate::fleet::FLEET_MAX_OPEN))
            .arg(self.replica)
            .arg(name);
        // Times go as ages and times left: Redis reckons them on its own clock.
        let age = |at: u64| {
            if at == 0 {
                -1
            } else {
                i64::try_from(now.saturating_sub(at)).unwrap_or(i64::MAX)
            }
        };
        let current = now / self.period_ms;
        let mut attempts = 0;
        for (target, t) in &batch {
            call.arg(&**target)
                .arg(age(t.last_success_ms))
                .arg(t.open_until_ms.saturating_sub(now))
                .arg(age(t.closed_ms))
                .arg(t.buckets.len());
            for (b, d) in &t.buckets {
                attempts += d.calls;
                let fields = 4 + d.hist.len();
                // (A bucket ahead of now - the clock stepped back - is taken as now's.)
                call.arg(current.saturating_sub(*b)).arg(fields);
                call.arg("c").arg(d.calls);
                call.arg("f").arg(d.failures);
                call.arg("p").arg(d.permanents);
                call.arg("s").arg(d.latency_us);
                for (h, n) in &d.hist {
                    call.arg(format!("h{h}")).arg(*n);
                }
            }
        }
        // Kept under its name until Redis answers that it was added: a write that fails,
        // or is cut short (the replica shutting down mid-write: `close` sends it again),
        // is sent again whole, and Redis counts it once.
        if let Ok(mut u) = self.unsent.lock() {
            *u = Some(Unsent { name, batch });
        }
        let result =
            tokio::time::timeout(self.timeout, call.invoke_async::<(i64, u64)>(conn)).await;
        match result {
            Ok(Ok((_, skipped))) => {
                self.metrics.foreign.inc_by(skipped);
                if self.changed(WARNED_SKIPPED, skipped) {
                    tracing::warn!(
                        skipped,
                        "fleet view: targets not written - their keys in Redis hold values of another type than this service writes"
                    );
                }
                if let Ok(mut u) = self.unsent.lock()
                    && u.as_ref().is_some_and(|u| u.name == name)
                {
                    *u = None;
                }
                Ok(usize::try_from(attempts).unwrap_or(usize::MAX))
            }
            failed => Err(self.describe("writing to", failed.ok().and_then(Result::err))),
        }
    }

    /// Notes how long a read of `targets` took: the gauge, and a warning when reads
    /// become slower than half the timeout (a read covers every target written of late,
    /// and Redis's time grows with them: `benches/server/fleet_redis.py`), an info line
    /// when they are below a quarter of it again.
    fn read_took(&self, took: Duration, targets: usize) {
        self.metrics.read_seconds.set(took.as_secs_f64());
        if took > self.timeout / 2 && !self.slow_reads.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                targets,
                fleet_timeout_ms = self.timeout.as_millis() as u64,
                "fleet view: a read of the shared view took more than half fleet_timeout_ms; reads grow with the targets written of late (each read covers them all, up to max_targets), and one past the timeout leaves this replica answering from its own view - raise fleet_timeout_ms, or lower max_targets"
            );
        } else if took < self.timeout / 4 && self.slow_reads.swap(false, Ordering::Relaxed) {
            tracing::info!(
                took_ms = took.as_millis() as u64,
                targets,
                "fleet view: reads of the shared view are fast again"
            );
        }
    }

    /// Whether a warning's count `n` is new and worth a log line: not zero, and not what
    /// the last write or read found (remembered either way).
    fn changed(&self, which: usize, n: u64) -> bool {
        self.warned[which].swap(n, Ordering::Relaxed) != n && n > 0
    }

    /// Reads the whole fleet's view back.
    async fn refresh(&self, conn: &mut ConnectionManager) -> Result<usize, String> {
        let mut call = self.read.prepare_invoke();
        call.arg(PREFIX)
            .arg(self.period_ms)
            .arg(ms(self.window).saturating_mul(2))
            .arg(self.max_targets)
            .arg(BUCKETS)
            .arg(RECENT)
            .arg(LATENCY);
        let (rows, listed) = match tokio::time::timeout(
            self.timeout,
            call.invoke_async::<ReadReply>(conn),
        )
        .await
        {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => return Err(self.describe("reading from", Some(e))),
            Err(_) => {
                return Err(format!(
                    "{} (a read covers every target written of late, up to max_targets = {}: with many, raise fleet_timeout_ms)",
                    self.describe("reading from", None),
                    self.max_targets
                ));
            }
        };
        // Ages and times left on Redis's clock, placed on this replica's as it reads them.
        let now = wall_ms();
        let mut view = HashMap::with_capacity(rows.len());
        let (mut foreign, mut odd) = (0u64, 0u64);
        for (name, row) in rows {
            match (String::from_utf8(name), parse_row(&row, now)) {
                (Ok(name), Some((t, clean))) => {
                    odd += u64::from(!clean);
                    view.insert(Arc::<str>::from(name), t);
                }
                _ => foreign += 1,
            }
        }
        self.metrics.foreign.inc_by(foreign);
        self.metrics.foreign.inc_by(odd);
        // More targets written of late, by every replica, than a read takes: the rest are
        // answered from this replica's own evidence (and their probing is not rationed).
        let unread = listed.saturating_sub(self.max_targets as u64);
        self.metrics
            .unread
            .set(i64::try_from(unread).unwrap_or(i64::MAX));
        if self.changed(WARNED_UNREAD, unread) {
            tracing::warn!(
                unread,
                listed,
                max_targets = self.max_targets,
                "fleet view: more targets are written to Redis than a read takes (max_targets, the most recently written first): the rest are answered from this replica's own evidence - raise max_targets, or route each target's traffic to fewer replicas"
            );
        }
        if self.changed(WARNED_FOREIGN, foreign) {
            tracing::warn!(
                foreign,
                "fleet view: targets left out of the read - a name that is not UTF-8 or a row this service did not write"
            );
        }
        if self.changed(WARNED_ODD, odd) {
            tracing::warn!(
                targets = odd,
                "fleet view: times in Redis this service would not have written (later than Redis's clock, or a circuit open longer than the longest opening) - read as none, and as the longest opening"
            );
        }
        let n = view.len();
        self.install(view, now);
        Ok(n)
    }

    /// Answers from `view`, read at `now` (wall ms) from now on, and keeps the end of each
    /// open circuit in it.
    fn install(&self, view: HashMap<Arc<str>, SharedTarget>, now: u64) {
        let tolerance = ms(self.timeout.min(SAME_OPENING_AT_MOST));
        if let Ok(mut opened) = self.opened.lock() {
            for (name, t) in &view {
                // An open circuit's end, or - closed - that of its last opening, which this
                // replica may never have read open (it started, or Redis was out of its
                // reach, meanwhile): for the probing after it.
                if let Some(until) = t.open_until_ms.or(t.opening_ended_ms) {
                    let u = opened.entry(Arc::clone(name)).or_default();
                    // Read as now + PTTL, the same end reads a few ms apart: a read just
                    // before the key expired is not a reopening once the end has passed.
                    let same = *u <= now && until.saturating_sub(*u) <= tolerance;
                    if !same {
                        *u = (*u).max(until);
                    }
                }
            }
            opened.retain(|_, &mut until| until.saturating_add(ms(PROBING_AT_MOST)) > now);
            // At most twice as many as the view holds targets: the latest kept.
            let cap = 2 * self.max_targets.max(1);
            if opened.len() > cap {
                let mut ends: Vec<u64> = opened.values().copied().collect();
                ends.sort_unstable();
                let keep_from = ends[ends.len() - cap];
                opened.retain(|_, &mut until| until >= keep_from);
            }
            if let Ok(mut answered) = self.answered.lock() {
                // Only the latest opening's answer is kept: one extended, or a new one,
                // is not answered by the last one's.
                answered.retain(|name, until| opened.get(name) == Some(until));
                for (name, &until) in opened.iter() {
                    if until <= now
                        && !answered.contains_key(name)
                        && view.get(name).is_some_and(|t| t.answered_since(until))
                    {
                        answered.insert(Arc::clone(name), until);
                    }
                }
            }
        }
        self.view.store(Arc::new(view));
        self.read_ms.store(now, Ordering::Relaxed);
    }

    /// How long the fleet's circuit for `target` stays open as of `now_ms`, by the latest
    /// end of it read from Redis - kept while the view is stale: a Redis hiccup does not
    /// close a circuit another replica opened, whose end this one already knows (an
    /// opening is only ever extended, and ends when its time is up).
    pub fn known_open(&self, target: &str, now_ms: u64) -> Option<Duration> {
        let until = *self.opened.lock().ok()?.get(target)?;
        (until > now_ms).then(|| Duration::from_millis(until - now_ms))
    }

    /// When the shared circuit of `target` last closed its open time (wall ms), while the
    /// fleet is probing it: that time has passed as of `now_ms` (less than
    /// [`PROBING_AT_MOST`] ago), the opening is not answered since
    /// ([`SharedTarget::answered_since`]), and it has not
    /// reopened. `None` otherwise, and while the view is not answered from. A replica
    /// that learned of the opening only from Redis reads the circuit as HALF_OPEN then, as
    /// the replica whose breaker opened it does, instead of letting every caller through
    /// at once.
    pub fn probing_since(&self, target: &str, now_ms: u64) -> Option<u64> {
        if !self.fresh(now_ms) {
            return None;
        }
        let until = *self.opened.lock().ok()?.get(target)?;
        let view = self.view.load();
        // A target gone from the view (nothing written for two windows, or beyond the
        // targets read) says nothing of its probes: not read as probing.
        let t = view.get(target)?;
        let reopened = t.open_remaining(now_ms).is_some();
        let answered = t.answered_since(until)
            || self
                .answered
                .lock()
                .is_ok_and(|a| a.get(target) == Some(&until));
        (until <= now_ms && now_ms - until < ms(PROBING_AT_MOST) && !reopened && !answered)
            .then_some(until)
    }

    /// Installs `view` as if just read from Redis (tests of what reads it).
    #[cfg(test)]
    pub(crate) fn install_for_test(&self, view: HashMap<Arc<str>, SharedTarget>) {
        self.shared.store(true, Ordering::Relaxed);
        self.install(view, wall_ms());
    }

    /// The targets with counts not yet written (tests).
    #[cfg(test)]
    pub(crate) fn pending_targets(&self) -> Vec<Arc<str>> {
        let mut v: Vec<_> = self.pending.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }

    /// Falls back to the replica's own view as a failed tick does (tests of what reads it).
    #[cfg(test)]
    pub(crate) fn fall_back_for_test(&self) {
        self.set_shared(false, "writing to Redis took longer than 100 ms".into());
    }

    /// What went wrong `doing` Redis: `error`, or no answer within the timeout.
    fn describe(&self, doing: &str, error: Option<redis::RedisError>) -> String {
        describe(doing, error, self.timeout)
    }

    /// Why a connection to Redis cannot be made, found by making one at once (without
    /// the connection manager's retries and their backoff, which outlast the timeout and
    /// leave only "took longer than"): `None` when one can.
    async fn why_unreachable(&self) -> Option<String> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match tokio::time::timeout(
            self.timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(_)) => None,
            Ok(Err(e)) if !e.is_timeout() => {
                Some(format!("cannot connect to Redis: {}", server_text(&e)))
            }
            _ => Some(format!(
                "cannot connect to Redis within {} ms",
                self.timeout.as_millis()
            )),
        }
    }

    /// Marks the view shared or not, logging and counting each change (and the first
    /// outcome).
    fn set_shared(&self, shared: bool, detail: String) {
        let was = self.shared.swap(shared, Ordering::Relaxed);
        let first = !self.said.swap(true, Ordering::Relaxed);
        if was != shared || first {
            if shared {
                let again = self.ever_shared.swap(true, Ordering::Relaxed);
                tracing::info!(
                    %detail,
                    "fleet view: shared through Redis{}",
                    if again { " again" } else { "" }
                );
            } else {
                tracing::warn!(%detail, "fleet view: not shared through Redis, answering from this replica's own view");
            }
        }
        self.metrics.shared.set(i64::from(shared));
        if !shared {
            // No target is answered from the shared view now.
            self.metrics.targets.set(0);
        }
        if let Ok(mut d) = self.detail.lock() {
            *d = detail;
        }
    }

    /// How a connection to Redis is made: each command within the timeout, one retry.
    fn config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
    }

    /// Writes what this replica has counted and not yet written — at shutdown, once the
    /// task [`spawn`](Self::spawn) started has stopped, so that the last quarter cache
    /// period's attempts are not lost to the other replicas: a batch left unsent by a
    /// failed write first, then the rest, on a fresh connection. The attempts written.
    ///
    /// # Errors
    /// Redis cannot be reached, or a write fails (within the timeout): what it says.
    pub async fn close(&self) -> Result<usize, String> {
        let mut conn = ConnectionManager::new_with_config(self.client.clone(), self.config())
            .await
            .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        let mut written = 0;
        // An unsent batch is sent on its own; at most one more holds the rest.
        for _ in 0..2 {
            written += self.flush(&mut conn).await?;
        }
        Ok(written)
    }

    /// Keeps the shared view in step with Redis until `self` is dropped: writes every
    /// quarter of a cache period, reads every three quarters, and after a failure tries
    /// again after a backoff (see the module's documentation).
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me: Weak<Self> = Arc::downgrade(self);
        let every = self.cache / 4;
        tokio::spawn(async move {
            let mut conn: Option<ConnectionManager> = None;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            // Failures in a row, and when to try again after the last.
            let mut failures: u32 = 0;
            let mut resume: Option<tokio::time::Instant> = None;
            let mut was_fresh = false;
            // The view went stale without a failure, and was said to.
            let mut stale = false;
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                // A view that aged past its limit without a failure (reads slower than
                // their period, a starved task) is not answered from either: said as a
                // failure is, in the gauge, the detail and one log line.
                let fresh = me.fresh(wall_ms());
                if was_fresh && !fresh && me.shared.load(Ordering::Relaxed) {
                    let age = wall_ms().saturating_sub(me.read_ms.load(Ordering::Relaxed));
                    tracing::warn!(
                        age_ms = age,
                        "fleet view: the last read from Redis is too old, answering from this replica's own view"
                    );
                    stale = true;
                    me.metrics.targets.set(0);
                    if let Ok(mut d) = me.detail.lock() {
                        *d = format!(
                            "the last read from Redis is {age} ms old (at most {} ms)",
                            ms(me.cache * 2 + me.timeout)
                        );
                    }
                }
                me.metrics.shared.set(i64::from(fresh));
                was_fresh = fresh;
                if resume.is_some_and(|at| tokio::time::Instant::now() < at) {
                    continue;
                }
                let reading = n.is_multiple_of(3);
                n = n.wrapping_add(1);
                let connected = conn.is_some();
                let result = match conn.take().map_or_else(
                    || ConnectionManager::new_lazy_with_config(me.client.clone(), me.config()),
                    Ok,
                ) {
                    Ok(mut c) => {
                        let mut result = me.flush(&mut c).await.map(|_| ());
                        if result.is_ok() && reading {
                            let started = tokio::time::Instant::now();
                            result = me.refresh(&mut c).await.map(|targets| {
                                me.metrics
                                    .targets
                                    .set(i64::try_from(targets).unwrap_or(i64::MAX));
                                me.read_took(started.elapsed(), targets);
                            });
                        }
                        // Kept only while it works: a command that timed out may have left
                        // it stuck, so a failure makes a new one next time.
                        if result.is_ok() {
                            conn = Some(c);
                        }
                        result
                    }
                    Err(e) => Err(format!("cannot connect to Redis: {}", server_text(&e))),
                };
                // A new connection whose first commands went unanswered: whether Redis
                // can be reached at all, and if not why (refused, no such database, a
                // wrong password), rather than "took longer than".
                let result = match result {
                    Err(detail) if !connected && detail.contains("took longer than") => {
                        Err(me.why_unreachable().await.unwrap_or(detail))
                    }
                    other => other,
                };
                match result {
                    Ok(()) => {
                        failures = 0;
                        resume = None;
                        if reading {
                            if stale {
                                tracing::info!("fleet view: shared through Redis again");
                                stale = false;
                            }
                            me.set_shared(true, "shared through Redis".into());
                            was_fresh = true;
                        }
                    }
                    Err(detail) => {
                        me.metrics.errors.inc();
                        me.set_shared(false, detail);
                        was_fresh = false;
                        // A failure's own log line says it from here on.
                        stale = false;
                        // Read again as soon as Redis answers.
                        n = 0;
                        failures = failures.saturating_add(1);
                        resume = Some(
                            tokio::time::Instant::now()
                                + reconnect_after(every, failures, rand::random()),
                        );
                    }
                }
            }
        })
    }
}

/// What went wrong `doing` Redis: `error`, or no answer within `timeout`.
fn describe(doing: &str, error: Option<redis::RedisError>, timeout: Duration) -> String {
    match error {
        Some(e) if !e.is_timeout() => format!("{doing} Redis failed: {}", server_text(&e)),
        _ => format!("{doing} Redis took longer than {} ms", timeout.as_millis()),
    }
}

/// A Redis error as its reply said it: the scripts' own errors (code `RETRYWISE`) by
/// their text alone, another server error as `CODE text` (the client's own rendering
/// quotes a code it does not know, and takes a message without one for its first
/// word), any other error as the client renders it.
fn server_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some("RETRYWISE"), Some(detail)) => detail.to_owned(),
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => e.to_string(),
    }
}

/// One target's row of the read script, placed on this replica's clock at `now` (wall
/// ms): the target, and whether every time in it is one this service would have written -
/// an age in the future (another program's value, or a writer whose clock ran ahead before
/// times went as ages) reads as none, and a circuit open longer than the fleet's longest
/// opening (and a second of slack) as open for that long. `None` when malformed.
fn parse_row(row: &[i64], now: u64) -> Option<(SharedTarget, bool)> {
    let n = |i: usize| row.get(i).map(|&v| u64::try_from(v).unwrap_or(0));
    let hist = row.get(11..)?.chunks_exact(2).map(|p| {
        (
            usize::try_from(p[0]).unwrap_or(0),
            u64::try_from(p[1]).unwrap_or(0),
        )
    });
    let mut clean = true;
    // An age: -1 none, below it a time in the future.
    let mut at = |i: usize| -> Option<Option<u64>> {
        let age = *row.get(i)?;
        if age < -1 {
            clean = false;
        }
        Some(u64::try_from(age).ok().map(|a| now.saturating_sub(a)))
    };
    let last_success_ms = at(6)?;
    let first_seen_ms = at(7)?.unwrap_or(now);
    let closed_ms = at(9)?;
    let opening_ended_ms = at(10)?;
    let longest = ms(crate::fleet::FLEET_MAX_OPEN);
    let pttl = *row.get(8)?;
    let open_for = u64::try_from(pttl).ok().filter(|&t| t > 0).map(|t| {
        if t > longest + 1_000 {
            clean = false;
        }
        t.min(longest)
    });
    Some((
        SharedTarget {
            calls: n(0)?,
            failures: n(1)?,
            recent_calls: n(2)?,
            recent_failures: n(3)?,
            permanents: n(4)?,
            latency_us: n(5)?,
            latency_p95: latency_quantile(hist, 0.95),
            last_success_ms,
            first_seen_ms,
            open_until_ms: open_for.map(|t| now.saturating_add(t)),
            closed_ms,
            opening_ended_ms,
        },
        clean,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_row_reads_back_into_the_trackers_numbers() {
        // Ages on Redis's clock: a success 1 s ago, first seen 9 s ago, closed 0.5 s ago,
        // an opening that ended 8 s ago.
        let row = [
            10, 4, 2, 1, 1, 2_000_000, 1_000, 9_000, 1_500, 500, 8_000, 100, 3, 120, 7,
        ];
        let (t, clean) = parse_row(&row, 10_000).unwrap();
        assert!(clean);
        assert_eq!((t.calls, t.failures, t.recent_calls), (10, 4, 2));
        assert_eq!((t.open_until_ms, t.closed_ms), (Some(11_500), Some(9_500)));
        assert_eq!(t.opening_ended_ms, Some(2_000));
        assert_eq!(t.open_remaining(10_500), Some(Duration::from_millis(1_000)));
        assert_eq!(t.open_remaining(12_000), None);
        let s = t.snapshot(10_000, Duration::from_secs(10));
        assert_eq!(s.failure_rate, Some(0.4));
        // One failure in the two recent calls is within chance of the window's 40 %: the
        // recent rate is the window's (`retrywise::health::recent_failure_rate`).
        assert_eq!(s.failure_rate_recent, Some(0.4));
        assert_eq!(s.permanent_rate, Some(0.1));
        // 2 s of latency over a 10 s window: 0.2 calls in flight, rounded.
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.since_success, Duration::from_millis(1_000));
        assert!(s.latency_p95.is_some());
        // A closed circuit (PTTL -2) and no success yet: since the target was first seen.
        let row = [0, 0, 0, 0, 0, 0, -1, 3_000, -2, -1, -1];
        let (t, clean) = parse_row(&row, 4_000).unwrap();
        assert!(clean);
        assert_eq!((t.open_until_ms, t.closed_ms), (None, None));
        let s = t.snapshot(4_000, Duration::from_secs(10));
        assert_eq!(s.since_success, Duration::from_secs(3));
        assert_eq!((s.failure_rate, s.latency_p95), (None, None));
        // Times another program put there: a success in the future reads as none (not as
        // "just now", for ever), a circuit open for 285,000 years as the longest opening.
        let row = [
            0,
            0,
            0,
            0,
            0,
            0,
            -9_000_000_000,
            3_000,
            9_000_000_000_000_000,
            -1,
            -1,
        ];
        let (t, clean) = parse_row(&row, 4_000).unwrap();
        assert!(!clean);
        assert_eq!(t.last_success_ms, None);
        assert_eq!(t.open_remaining(4_000), Some(crate::fleet::FLEET_MAX_OPEN));
        // Too short: malformed.
        assert_eq!(parse_row(&[1, 2], 0), None);
    }

    /// A fleet at `url` with a 10 s window, a 250 ms cache and a 100 ms timeout.
    fn fleet(url: &str) -> Result<SharedFleet, ServerError> {
        SharedFleet::new(
            url,
            Duration::from_secs(10),
            Duration::from_millis(250),
            Duration::from_millis(100),
            10,
            SharedMetrics::default(),
        )
    }

    /// The view is answered from only while its last read worked and is at most two
    /// cache periods and a timeout old (here 2 × 250 + 100 = 600 ms), to the millisecond.
    #[test]
    fn the_view_is_fresh_for_two_cache_periods_and_a_timeout_after_a_read() {
        let f = fleet("redis://127.0.0.1:1").unwrap();
        f.read_ms.store(10_000, Ordering::Relaxed);
        assert!(!f.fresh(10_000), "not before a read worked");
        f.shared.store(true, Ordering::Relaxed);
        for (now, fresh) in [
            (10_000, true),
            (10_600, true),
            (10_601, false),
            (60_000, false),
        ] {
            assert_eq!(f.fresh(now), fresh, "{now}");
        }
        // A clock that stepped back reads as age 0, not as ancient.
        assert!(f.fresh(9_000));
        f.shared.store(false, Ordering::Relaxed);
        assert!(!f.fresh(10_000), "a failed read falls back at once");
    }

    /// Makes what is pending a batch whose write failed (and the counts waiting behind
    /// it), and flushes to a Redis that is not there.
    async fn flush_behind_a_refused_batch(f: &SharedFleet) {
        let waiting = std::mem::take(&mut *f.pending.lock().unwrap());
        *f.unsent.lock().unwrap() = Some(Unsent {
            name: 1,
            batch: waiting.clone(),
        });
        *f.pending.lock().unwrap() = waiting;
        let mut conn =
            ConnectionManager::new_lazy_with_config(f.client.clone(), f.config()).unwrap();
        assert!(
            f.flush(&mut conn).await.is_err(),
            "nothing listens on port 1"
        );
    }

    /// While Redis refuses a batch, the counts waiting behind it keep one window's worth
    /// of buckets, not one more a period for as long as the outage lasts.
    #[tokio::test]
    async fn counts_waiting_behind_a_refused_batch_keep_one_window() {
        let f = fleet("redis://127.0.0.1:1").unwrap();
        let t: Arc<str> = Arc::from("db");
        let now = wall_ms();
        // An hour of an outage's counts: one every second.
        for s in 0..3_600u64 {
            f.record(
                &t,
                now - s * 1_000,
                Ended::Failure,
                Duration::from_millis(1),
            );
        }
        assert!(f.pending.lock().unwrap()[&t].buckets.len() >= 3_600);
        flush_behind_a_refused_batch(&f).await;
        // The 10 s window in buckets of a tenth of it, and the one being filled.
        let kept = f.pending.lock().unwrap()[&t].buckets.len();
        assert!((10..=12).contains(&kept), "{kept}");
    }

    /// A target whose waiting counts have all left the window holds no place among them:
    /// else, through an outage with targets coming and going, the places fill with empty
    /// entries and a new target's counts are left out unsaid.
    #[tokio::test]
    async fn targets_with_nothing_left_to_write_give_their_place_up() {
        let f = fleet("redis://127.0.0.1:1").unwrap();
        let (old, live): (Arc<str>, Arc<str>) = (Arc::from("gone"), Arc::from("db"));
        let now = wall_ms();
        // A success and a failure from an hour ago: outside the 10 s window.
        f.record(
            &old,
            now - 3_600_000,
            Ended::Failure,
            Duration::from_millis(1),
        );
        f.record(
            &old,
            now - 3_600_000,
            Ended::Success,
            Duration::from_millis(1),
        );
        f.record(&live, now, Ended::Failure, Duration::from_millis(1));
        flush_behind_a_refused_batch(&f).await;
        assert_eq!(f.pending_targets(), vec![live]);
    }

    #[test]
    fn the_backoff_doubles_per_failure_between_half_and_all_of_it_up_to_its_cap() {
        let every = Duration::from_millis(62);
        assert_eq!(reconnect_after(every, 1, 0.999_999).as_millis(), 123);
        assert_eq!(reconnect_after(every, 1, 0.0).as_millis(), 62);
        assert_eq!(reconnect_after(every, 3, 0.0).as_millis(), 248);
        for failures in [6, 40, u32::MAX] {
            assert_eq!(reconnect_after(every, failures, 0.0), RECONNECT_AT_MOST / 2);
            assert!(reconnect_after(every, failures, 0.999) <= RECONNECT_AT_MOST);
        }
        // A period longer than the cap: a wait under a period, so the next tick tries again
        // (or the one after, when the try itself outlasted the wait's lead on that tick).
        let slow = Duration::from_secs(5);
        assert_eq!(reconnect_after(slow, 1, 0.999_999).as_millis(), 4_999);
    }

    /// While Redis cannot be reached, a replica tries it again after a backoff, not at every
    /// quarter period's tick (a 250 ms cache: 199 tries in 20 s without it, each failing
    /// within its 100 ms timeout), and keeps trying.
    #[tokio::test(start_paused = true)]
    async fn an_unreachable_redis_is_tried_again_after_a_backoff() {
        let f = Arc::new(fleet("redis://127.0.0.1:1").unwrap());
        let t: Arc<str> = Arc::from("db");
        f.record(&t, wall_ms(), Ended::Failure, Duration::from_millis(1));
        let task = f.spawn();
        tokio::time::sleep(Duration::from_secs(20)).await;
        let tries = f.metrics.errors.get();
        task.abort();
        // Doubling from 62.5 ms to the 2 s cap (drawn between half and all): about 5 tries
        // on the way up, then one every 1-2 s.
        assert!((8..=30).contains(&tries), "{tries} tries in 20 s");
        assert!(!f.status().shared);
    }

    /// A log written to memory (the tests of what is logged).
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Logs {
        /// What this thread logs from now until the guard is dropped.
        fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
            let logs = Self::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            (logs, tracing::subscriber::set_default(subscriber))
        }
    }

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A Redis that refuses connections from the start is said at once, in one log line
    /// and in the status `/readyz` shows, with its cause: the view started out "not
    /// shared", so no change was logged, and the connection manager's retries outlasted the
    /// timeout, so the status said "took longer than 100 ms".
    #[tokio::test(start_paused = true)]
    async fn a_redis_refusing_from_the_start_is_said_once_with_its_cause() {
        let (logs, _guard) = Logs::capture();
        let f = Arc::new(fleet("redis://127.0.0.1:1").unwrap());
        let task = f.spawn();
        tokio::time::sleep(Duration::from_secs(10)).await;
        task.abort();
        let detail = f.status().detail;
        assert!(
            detail.starts_with("cannot connect to Redis: ") && detail.contains("refused"),
            "{detail}"
        );
        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            logs.matches("fleet view: not shared through Redis").count(),
            1,
            "{logs}"
        );
        assert!(logs.contains("refused"), "{logs}");
    }

    /// The changes of the view's state are logged once each, and "again" only for a
    /// return (a replica that reached Redis after failing from the start said "again");
    /// reads slower than half the timeout are warned of once, and said fast again once
    /// below a quarter of it.
    #[test]
    fn shared_again_only_after_shared_and_slow_reads_said_once() {
        let (logs, _guard) = Logs::capture();
        let f = fleet("redis://127.0.0.1:1").unwrap();
        f.set_shared(false, "cannot connect to Redis: refused".into());
        f.set_shared(true, "shared through Redis".into());
        f.set_shared(false, "writing to Redis failed: broken pipe".into());
        f.set_shared(true, "shared through Redis".into());
        // 100 ms timeout: slow above 50, fast again below 25.
        for ms in [60, 70, 40, 20, 60] {
            f.read_took(Duration::from_millis(ms), 7);
        }
        assert!((f.metrics.read_seconds.get() - 0.06).abs() < 1e-9);
        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = logs
            .lines()
            .filter_map(|l| l.split("fleet view: ").nth(1))
            .map(|l| l.split_once(' ').map_or(l, |(first, _)| first))
            .collect();
        assert_eq!(
            logs.matches("shared through Redis again").count(),
            1,
            "{logs}"
        );
        assert_eq!(
            logs.matches("not shared through Redis").count(),
            2,
            "{logs}"
        );
        assert_eq!(
            logs.matches("took more than half fleet_timeout_ms").count(),
            2,
            "{logs}"
        );
        assert_eq!(logs.matches("are fast again").count(), 1, "{logs}");
        assert_eq!(lines.len(), 7, "{logs}");
    }

    #[test]
    fn unwritten_counts_add_up_and_the_view_is_not_answered_from_before_a_read() {
        let f = fleet("redis://127.0.0.1:1").unwrap();
        let t: Arc<str> = Arc::from("db");
        f.record(&t, 5_000, Ended::Failure, Duration::from_millis(3));
        f.record(&t, 5_100, Ended::Success, Duration::from_millis(5));
        f.record_open(&t, Duration::from_secs(2));
        let p = f.pending.lock().unwrap();
        let d = &p[&t];
        let b = &d.buckets[&5];
        assert_eq!((b.calls, b.failures, b.latency_us), (2, 1, 8_000));
        assert_eq!(d.last_success_ms, 5_100);
        let left = d.open_until_ms - wall_ms();
        assert!((1_900..=2_000).contains(&left), "{left}");
        drop(p);
        // Nothing read yet: the replica answers from its own view.
        assert_eq!(f.target("db"), None);
        assert!(!f.status().shared);
        // A latency past what a bucket's sum may hold adds at most MAX_LATENCY_US.
        f.record(&t, 5_000, Ended::Success, Duration::from_secs(1 << 40));
        let p = f.pending.lock().unwrap();
        assert_eq!(p[&t].buckets[&5].latency_us, 8_000 + MAX_LATENCY_US);
    }

    /// The calls counted in the bucket hash `key`.
    /// The write script against a real `redis-server` (started on a free loopback port;
    /// skipped where none is installed, unless CI's `RETRYWISE_REQUIRE_REDIS` is set): a
    /// batch run twice under one name - a write that timed out on the replica's side, ran
    /// on Redis's, and was sent again - counts once; a count past what Redis holds is
    /// skipped and every key still gets its expiry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_written_twice_under_one_name_counts_once() {
        let Some(bin) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("redis-server"))
                .find(|p| p.is_file())
        }) else {
            assert!(
                std::env::var_os("RETRYWISE_REQUIRE_REDIS").is_none(),
                "RETRYWISE_REQUIRE_REDIS is set and redis-server is not installed"
            );
            eprintln!("SKIPPED: redis-server is not installed");
            return;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = None;
        for _ in 0..500 {
            if let Ok(c) = client.get_multiplexed_async_connection().await {
                conn = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut conn = conn.expect("redis-server answers within 5 s");
        const PERIOD: u64 = 1_000;
        const TTL: u64 = 60_000;
        let longest = ms(crate::fleet::FLEET_MAX_OPEN);
        let write = redis::Script::new(&format!("{CLOCK}{WRITE}"));
        let read_script = redis::Script::new(&format!("{CLOCK}{READ}"));
        // A batch's head: prefix, bucket length, ttl, longest opening, replica, number.
        let head = |replica: u64, seq: u64, ttl: u64| {
            let mut call = write.prepare_invoke();
            call.arg(PREFIX)
                .arg(PERIOD)
                .arg(ttl)
                .arg(longest)
                .arg(replica)
                .arg(seq);
            call
        };
        // db: no success, not open, no close; one bucket (the current one) of 3 calls.
        let run = |seq: u64, s_us: i64| {
            let mut call = head(77, seq, TTL);
            call.arg("db").arg(-1).arg(0).arg(-1).arg(1);
            call.arg(0).arg(2).arg("c").arg(3).arg("s").arg(s_us);
            call
        };
        // What the read script gives back of `name`, on this machine's clock.
        let reader = conn.clone();
        let read = |name: &'static str, ttl: u64| {
            let mut call = read_script.prepare_invoke();
            call.arg(PREFIX).arg(PERIOD).arg(ttl).arg(10);
            call.arg(BUCKETS).arg(RECENT).arg(LATENCY);
            let mut c = reader.clone();
            async move {
                let (rows, _): ReadReply = call.invoke_async(&mut c).await.unwrap();
                rows.iter()
                    .find(|(n, _)| n == name.as_bytes())
                    .map(|(_, row)| parse_row(row, wall_ms()).unwrap())
            }
        };
        let calls = || async { read("db", TTL).await.unwrap().0.calls };
        for (seq, applied) in [(1, 1), (1, 0), (2, 1)] {
            let (n, skipped): (i64, u64) = run(seq, 5).invoke_async(&mut conn).await.unwrap();
            assert_eq!((n, skipped), (applied, 0), "batch {seq}");
        }
        assert_eq!(
            calls().await,
            6,
            "two batches of three, one of them sent twice"
        );
        // Another replica's first batch is its own sequence's: added.
        let mut other = head(78, 1, TTL);
        other.arg("db").arg(-1).arg(0).arg(-1).arg(1);
        other.arg(0).arg(1).arg("c").arg(1);
        let (n, _): (i64, u64) = other.invoke_async(&mut conn).await.unwrap();
        assert_eq!(n, 1);
        assert_eq!(calls().await, 7);
        // A latency sum past i64: that increment is skipped, the rest is written and
        // every key expires.
        let (n, _): (i64, u64) = run(3, i64::MAX).invoke_async(&mut conn).await.unwrap();
        assert_eq!(n, 1);
        assert_eq!(calls().await, 10);
        for k in [
            format!("{PREFIX}B:db"),
            format!("{PREFIX}m:db"),
            format!("{PREFIX}w:77"),
        ] {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 0, "{k} expires: {ttl}");
        }
        // Times go as ages, and come back on the reader's clock: a success 1 s ago, a
        // close after probing 0.5 s ago, a circuit open 5 s more.
        let mut call = head(77, 4, TTL);
        call.arg("db").arg(1_000).arg(5_000).arg(500).arg(0);
        let (n, _): (i64, u64) = call.invoke_async(&mut conn).await.unwrap();
        assert_eq!(n, 1);
        let now = wall_ms();
        let (t, clean) = read("db", TTL).await.unwrap();
        assert!(clean);
        let near = |got: Option<u64>, want: u64| got.is_some_and(|g| g.abs_diff(want) < 500);
        assert!(near(t.last_success_ms, now - 1_000), "{t:?}");
        assert!(near(t.closed_ms, now - 500), "{t:?}");
        let open = t.open_remaining(now).unwrap();
        assert!(open > Duration::from_millis(4_000), "{open:?}");

        // What another program left under the prefix stops nothing halfway. A bucket key
        // of another type: that target is skipped (and counted), the batch's other
        // targets are written, and the batch counts as added.
        let clock: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        let current = (clock.0 * 1_000 + clock.1 / 1_000) / PERIOD;
        let plain = conn.clone();
        let set = |k: String, v: &'static str| {
            let mut c = plain.clone();
            async move {
                let _: () = redis::cmd("SET")
                    .arg(k)
                    .arg(v)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        };
        // The target's buckets held in a string: the target is skipped, the rest written.
        set(format!("{PREFIX}B:bad"), "x").await;
        let mut call = head(77, 5, TTL);
        call.arg("bad").arg(-1).arg(0).arg(-1).arg(1);
        call.arg(0).arg(1).arg("c").arg(1);
        call.arg("db").arg(-1).arg(0).arg(-1).arg(1);
        call.arg(0).arg(1).arg("c").arg(1);
        let (n, skipped): (i64, u64) = call.invoke_async(&mut conn).await.unwrap();
        assert_eq!((n, skipped), (1, 1));
        assert_eq!(calls().await, 11, "db written after the skipped target");
        // A target's hash keeps the window's buckets and one more (a ttl of 60 buckets:
        // 31; 29 back stays should the clock pass into the next bucket meanwhile): the first write in a new bucket drops the older ones, those later than
        // Redis's now (its clock stepped back) and fields of no bucket; the read counts
        // only the window's.
        let _: () = redis::cmd("HSET")
            .arg(format!("{PREFIX}B:pruned"))
            .arg(format!("{}:c", current - 61))
            .arg(5)
            .arg(format!("{}:c", current - 31))
            .arg(6)
            .arg(format!("{}:c", current - 29))
            .arg(4)
            .arg(format!("{}:c", current + 100))
            .arg(8)
            .arg("x:c")
            .arg(9)
            .arg("pruned")
            .arg(current + 100)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut call = head(81, 1, TTL);
        call.arg("pruned").arg(-1).arg(0).arg(-1).arg(1);
        call.arg(0).arg(1).arg("c").arg(3);
        let (n, _): (i64, u64) = call.invoke_async(&mut conn).await.unwrap();
        assert_eq!(n, 1);
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(format!("{PREFIX}B:pruned"))
            .query_async(&mut conn)
            .await
            .unwrap();
        for gone in [
            format!("{}:c", current - 61),
            format!("{}:c", current - 31),
            format!("{}:c", current + 100),
            "x:c".to_owned(),
        ] {
            assert!(!fields.contains(&gone), "{gone}: {fields:?}");
        }
        assert!(
            fields.contains(&format!("{}:c", current - 29)),
            "{fields:?}"
        );
        let pruned: u64 = redis::cmd("HGET")
            .arg(format!("{PREFIX}B:pruned"))
            .arg("pruned")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            pruned == current || pruned == current + 1,
            "{pruned} {current}"
        );
        assert_eq!(read("pruned", TTL).await.unwrap().0.calls, 3);
        // A last success that is not a number reads as none, in the write's comparison
        // and in the read; a count that is not one reads as 0. Nothing fails.
        let _: () = redis::cmd("HSET")
            .arg(format!("{PREFIX}m:db"))
            .arg("ls")
            .arg("x")
            .query_async(&mut conn)
            .await
            .unwrap();
        // Lua reads "nan" as a number, NaN: neither a field named so nor a value so may
        // fail the read or poison the sums (in a bucket of their own, five back).
        let five_back = current - 5;
        let _: () = redis::cmd("HSET")
            .arg(format!("{PREFIX}B:db"))
            .arg(format!("{five_back}:f"))
            .arg("many")
            .arg(format!("{five_back}:hnan"))
            .arg("5")
            .arg(format!("{five_back}:h3"))
            .arg("nan")
            .arg(format!("{five_back}:s"))
            .arg("inf")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut call = head(77, 6, TTL);
        call.arg("db").arg(100).arg(0).arg(-1).arg(1);
        call.arg(5).arg(1).arg("c").arg(2);
        let (n, skipped): (i64, u64) = call.invoke_async(&mut conn).await.unwrap();
        assert_eq!((n, skipped), (1, 0));
        // A field whose bucket is not a number is no bucket's (set after the write, whose
        // pruning would drop it).
        let _: () = redis::cmd("HSET")
            .arg(format!("{PREFIX}B:db"))
            .arg("nan:c")
            .arg("7")
            .query_async(&mut conn)
            .await
            .unwrap();
        let now = wall_ms();
        let (t, _) = read("db", TTL).await.unwrap();
        assert_eq!((t.calls, t.failures), (13, 0));
        assert!(near(t.last_success_ms, now - 100), "{t:?}");
        assert_eq!(
            t.latency_us, 10,
            "an infinite sum reads as 0, the others add up"
        );
        // A last success in the future (a clock that ran ahead, another program): the
        // write replaces it, though the one it brings is older.
        let _: () = redis::cmd("HSET")
            .arg(format!("{PREFIX}m:db"))
            .arg("ls")
            .arg(9_000_000_000_000_000u64)
            .query_async(&mut conn)
            .await
            .unwrap();
        let (t, clean) = read("db", TTL).await.unwrap();
        assert!(!clean && t.last_success_ms.is_none(), "{t:?}");
        let mut call = head(77, 7, TTL);
        call.arg("db").arg(2_000).arg(0).arg(-1).arg(0);
        let _: (i64, u64) = call.invoke_async(&mut conn).await.unwrap();
        let now = wall_ms();
        let (t, clean) = read("db", TTL).await.unwrap();
        assert!(clean && near(t.last_success_ms, now - 2_000), "{t:?}");

        // A circuit open longer than the window keeps its target listed, and its hash,
        // though nothing is written while it is open (callers obey it); an idle target
        // without one leaves the list. Here the window's two are 300 ms.
        let mut call = head(77, 8, 300);
        call.arg("open").arg(-1).arg(3_000).arg(-1).arg(1);
        call.arg(0).arg(1).arg("c").arg(1);
        call.arg("idle").arg(-1).arg(0).arg(-1).arg(1);
        call.arg(0).arg(1).arg("c").arg(1);
        let _: (i64, u64) = call.invoke_async(&mut conn).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (open, _) = read("open", 300).await.expect("listed while open");
        assert!(open.open_remaining(wall_ms()).is_some(), "{open:?}");
        assert!(read("idle", 300).await.is_none(), "idle: gone");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{PREFIX}m:open"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            ttl > 1_000,
            "m:open kept for the opening and a window: {ttl}"
        );

        // A replica with another health window (buckets of 1.1 s, not 1 s) neither writes
        // nor reads: its buckets are not the fleet's, nor is the window it prunes by.
        let mut call = head(80, 1, TTL);
        call.arg("db").arg(-1).arg(0).arg(-1).arg(1);
        call.arg(0).arg(1).arg("c").arg(1);
        let (n, _): (i64, u64) = call.invoke_async(&mut conn).await.unwrap();
        assert_eq!(n, 1);
        let before = calls().await;
        let mut other = write.prepare_invoke();
        other
            .arg(PREFIX)
            .arg(1_100)
            .arg(TTL)
            .arg(longest)
            .arg(79)
            .arg(1);
        other.arg("db").arg(-1).arg(0).arg(-1).arg(1);
        other.arg(0).arg(1).arg("c").arg(1);
        let e = other
            .invoke_async::<(i64, u64)>(&mut conn)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("give every replica the same health_window_ms")
                && e.to_string()
                    .contains("buckets of 1000 ms, this replica in buckets of 1100 ms"),
            "{e}"
        );
        let mut other = read_script.prepare_invoke();
        other.arg(PREFIX).arg(1_100).arg(TTL).arg(10);
        other.arg(BUCKETS).arg(RECENT).arg(LATENCY);
        let e = other
            .invoke_async::<ReadReply>(&mut conn)
            .await
            .unwrap_err();
        // Said as the script said it (the client took its first word for an error code:
        // "reading from Redis failed: \"the\": fleet counts in ...").
        let said = describe("reading from", Some(e), Duration::from_millis(100));
        assert!(
            said.starts_with("reading from Redis failed: the fleet counts in buckets of")
                && said.contains("same health_window_ms"),
            "{said}"
        );
        assert_eq!(calls().await, before, "nothing of it written");

        // The latency quantile reads the current half window's buckets and the previous
        // half's (the last 50-100 % of the window, as a tracker's histogram turning over
        // every half window does; it read the last five buckets, 40-50 %): one call in
        // each of the last ten buckets, the older the slower, so the p95 (of ten: the
        // slowest read) says how far back it read.
        let mut checked = false;
        for seq in 1..=20u64 {
            // Written and read within one bucket (otherwise again, under another name).
            let b = wall_ms() / PERIOD;
            if wall_ms() % PERIOD > PERIOD - 100 {
                tokio::time::sleep(Duration::from_millis(110)).await;
                continue;
            }
            let name: &'static str = Box::leak(format!("lat{seq}").into_boxed_str());
            let mut lat = head(9_001, seq, TTL);
            lat.arg(name).arg(-1).arg(0).arg(-1).arg(10);
            for age in 0..10u64 {
                let bucket =
                    retrywise::health::latency_bucket(Duration::from_millis(100 * (age + 1)));
                lat.arg(age)
                    .arg(2)
                    .arg("c")
                    .arg(1)
                    .arg(format!("h{bucket}"))
                    .arg(1);
            }
            let (n, _): (i64, u64) = lat.invoke_async(&mut conn).await.unwrap();
            assert_eq!(n, 1);
            let p95 = read(name, TTL).await.unwrap().0.latency_p95.unwrap();
            if wall_ms() / PERIOD != b {
                continue;
            }
            let oldest = LATENCY + b % LATENCY;
            let want = Duration::from_millis(100 * (oldest + 1));
            assert!(
                p95 >= want && p95 < want + Duration::from_millis(100),
                "bucket {b}: p95 {p95:?}, want the bucket {oldest} old's {want:?}"
            );
            checked = true;
            break;
        }
        assert!(checked, "never read within one bucket");

        // The targets set of another type refuses the batch before any write.
        set(format!("{PREFIX}targets"), "x").await;
        let e = run(9, 5)
            .invoke_async::<(i64, u64)>(&mut conn)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("is not a sorted set"), "{e}");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// One foreign key found at every write or read is one warning, not sixteen a
    /// second: a warning is logged when its count changes (and again if it comes back).
    #[test]
    fn foreign_keys_are_warned_of_once_per_change() {
        let f = fleet("redis://127.0.0.1:1").unwrap();
        let seen: Vec<bool> = [3, 3, 3, 0, 0, 3, 4]
            .into_iter()
            .map(|n| f.changed(WARNED_FOREIGN, n))
            .collect();
        assert_eq!(seen, [true, false, false, false, false, true, true]);
        // Each kind of warning on its own.
        assert!(f.changed(WARNED_SKIPPED, 4));
        assert!(!f.changed(WARNED_FOREIGN, 4));
    }

    #[test]
    fn a_url_that_is_not_redis_is_refused() {
        let e = fleet("http://x").unwrap_err();
        assert!(e.to_string().contains("fleet"), "{e}");
    }
}
