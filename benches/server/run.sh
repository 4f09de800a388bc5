#!/usr/bin/env bash
# The service under HTTP load, on 127.0.0.1, with oha (installed from crates.io if absent):
#   1. maximum throughput of POST /v1/predict and of a trivial axum handler, same run;
#   2. p99 latency of /v1/predict at half its maximum, open loop (fixed arrival rate);
#   3. the batch form: predictions per second with 1000 contexts per request;
#   4. ingestion: 4 clients posting NDJSON batches of 3,000 records as fast as they are
#      answered, while another process writes and fsyncs on the same disk; then a graceful
#      stop, and every acknowledged record is counted in the segments (nothing lost);
#   5. the same service sharing its fleet view through Redis (`--fleet`, redis-server on a
#      loopback port): /v1/predict's maximum throughput beside the in-process one's (1.),
#      and ingestion as in 4., with the attempts Redis then holds counted.
# The server is pinned to core 0 and the load tool to core 1 (a 2-core machine); for the
# batch form a second, unpinned server is used (the load tool barely works there).
# Results: a table on stdout and $CARGO_TARGET_DIR/server-bench.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/retrywise/target}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-64}"
TOOLS="$HOME/.cache/retrywise/tools"
OHA="$(command -v oha || true)"
if [ -z "$OHA" ]; then
  OHA="$TOOLS/bin/oha"
  [ -x "$OHA" ] || cargo install --locked oha --root "$TOOLS"
fi
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (the fleet runs, 5.): apt-get install redis-server" >&2; exit 1; }
done
cargo build --release -q -p retrywise-cli -p retrywise-server-benches
BIN="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

taskset -c 0 "$BIN/retrywise" serve --addr 127.0.0.1:18181 --models models --attempts "$work/attempts" 2>"$work/serve.log" &
taskset -c 0 "$BIN/trivial-server" 127.0.0.1:18182 2>"$work/trivial.log" &
# The batch form moves few, large requests: the load tool needs little, so that server
# gets both cores.
"$BIN/retrywise" serve --addr 127.0.0.1:18183 --models models --attempts "$work/attempts2" 2>"$work/serve2.log" &
"$BIN/retrywise" serve --addr 127.0.0.1:18184 --models models --attempts "$work/ingested" 2>"$work/serve3.log" &
INGEST_PID=$!
REDIS_PORT="${REDIS_PORT:-18190}"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || { echo "redis-server did not start:" >&2; cat "$work/redis.log" >&2; exit 1; }
FLEET="redis://127.0.0.1:$REDIS_PORT"
taskset -c 0 "$BIN/retrywise" serve --addr 127.0.0.1:18185 --models models --attempts "$work/attempts5" --fleet "$FLEET" 2>"$work/serve5.log" &
"$BIN/retrywise" serve --addr 127.0.0.1:18186 --models models --attempts "$work/ingested6" --fleet "$FLEET" 2>"$work/serve6.log" &
FLEET_INGEST_PID=$!
for _ in $(seq 50); do
  curl -sf http://127.0.0.1:18181/readyz >/dev/null && curl -sf http://127.0.0.1:18183/readyz >/dev/null \
    && curl -sf http://127.0.0.1:18184/readyz >/dev/null && curl -s -o /dev/null http://127.0.0.1:18182/ \
    && curl -sf http://127.0.0.1:18185/readyz | grep -q '"fleet":"shared"' && curl -sf http://127.0.0.1:18186/readyz >/dev/null \
    && ready=1 && break
  sleep 0.2
done
if [ -z "${ready:-}" ]; then
  # Measuring a server that is not up (or a fleet view not shared) would report nonsense.
  echo "the servers did not become ready within 10 s:" >&2
  tail -n 5 "$work"/serve*.log "$work/trivial.log" >&2
  exit 1
fi

ONE='{"context":{"target":"payments","attempt":2,"error":"http_503","status":503,"latency_ms":42,"elapsed_ms":45,"delay_ms":200,"failure_rate":0.2}}'
python3 - "$work/batch.json" <<'PY'
import json, sys
ctx = {"target": "payments", "attempt": 2, "error": "http_429", "status": 429, "latency_ms": 12,
       "elapsed_ms": 15, "retry_after_ms": 1000, "delay_ms": 0, "failure_rate": 0.3}
contexts = [dict(ctx, delay_ms=float(i)) for i in range(1000)]
json.dump({"contexts": contexts}, open(sys.argv[1], "w"))
PY
# NDJSON batches of 3,000 attempt records to 20 targets, ending over the seconds after
# the batch is made: made just before each ingestion measure, so that none is older than
# the health window when it arrives (older ones are left out of the fleet view, in process
# as in Redis).
records() { # out-file
  python3 - "$1" <<'PY'
import json, sys, time
now = int(time.time() * 1000) + 2000
with open(sys.argv[1], "w") as f:
    for i in range(3000):
        f.write(json.dumps({"schema_version": "1.3", "started_at_ms": now + i, "call_id": i, "hedge": 0,
            "target": f"svc-{i % 20}", "attempt": 1 + i % 3, "error": None if i % 4 else "http_503",
            "delay_ms": 100.0 * (i % 7), "failure_rate": 0.2, "in_flight": 3, "health_window_ms": 10000.0,
            "outcome": "success" if i % 4 else "retryable", "outcome_latency_ms": 12.5}) + "\n")
PY
}

load() { # url body-file-or-string extra-args... -> json on stdout
  local url="$1" body="$2"; shift 2
  local data=(-d "$body")
  [ -f "$body" ] && data=(-D "$body")
  taskset -c 1 "$OHA" -z "$DURATION" -w --no-tui --output-format json -m POST -T application/json "${data[@]}" "$@" "$url"
}

# The predicted target has a fleet view on both servers (health filled from it): a few of
# its attempts are posted to each every second.
( while :; do
    now=$(date +%s%3N)
    for port in 18181 18185; do
      printf '{"schema_version":"1.3","started_at_ms":%s,"call_id":1,"hedge":0,"target":"payments","attempt":1,"delay_ms":0,"outcome":"success","outcome_latency_ms":12.5}\n' "$now" \
        | curl -s -o /dev/null -X POST -H 'content-type: application/x-ndjson' --data-binary @- "http://127.0.0.1:$port/v1/attempts"
    done
    sleep 1
  done ) &
FEED=$!
sleep 1.5
load http://127.0.0.1:18182/v1/predict "$ONE" -c "$CONNS" > "$work/trivial.json"
load http://127.0.0.1:18181/v1/predict "$ONE" -c "$CONNS" > "$work/predict.json"
load http://127.0.0.1:18185/v1/predict "$ONE" -c "$CONNS" > "$work/predict_fleet.json"
kill "$FEED"; wait "$FEED" 2>/dev/null || true
half=$(python3 -c "import json; print(int(json.load(open('$work/predict.json'))['summary']['requestsPerSec'] / 2))")
load http://127.0.0.1:18181/v1/predict "$ONE" -c "$CONNS" -q "$half" --latency-correction > "$work/half.json"
load http://127.0.0.1:18183/v1/predict "$work/batch.json" -c 8 > "$work/batch_out.json"
# Ingestion, with another process writing and fsyncing on the same disk meanwhile.
( while :; do dd if=/dev/zero of="$work/noise" bs=1M count=256 conv=fsync status=none; done ) &
NOISE=$!
records "$work/records.ndjson"
"$OHA" -z "$DURATION" --no-tui --output-format json -m POST -T application/x-ndjson -D "$work/records.ndjson" \
  -c 4 http://127.0.0.1:18184/v1/attempts > "$work/ingest.json"
# The same into a replica sharing its fleet view through Redis.
records "$work/records_now.ndjson"
"$OHA" -z "$DURATION" --no-tui --output-format json -m POST -T application/x-ndjson -D "$work/records_now.ndjson" \
  -c 4 http://127.0.0.1:18186/v1/attempts > "$work/ingest_fleet.json"
kill "$NOISE"; wait "$NOISE" 2>/dev/null || true
sleep 0.5   # the last writes to Redis (four times per cache period)
# The attempts Redis holds: every bucket's calls (`{bucket}:c` in each target's hash), summed.
redis-cli -p "$REDIS_PORT" --scan --pattern 'retrywise:fleet:B:*' \
  | while read -r k; do redis-cli -p "$REDIS_PORT" hgetall "$k"; done \
  | awk 'NR % 2 == 1 { field = $0; next } field ~ /^[0-9]+:c$/ { s += $1 } END {print s + 0}' > "$work/redis_calls.txt"
curl -s http://127.0.0.1:18186/metrics | grep -E '^retrywise_fleet_(shared|redis_errors)' > "$work/fleet_metrics.txt" || true
kill -TERM "$INGEST_PID"; wait "$INGEST_PID" || true   # a graceful stop: flush and close
kill -TERM "$FLEET_INGEST_PID"; wait "$FLEET_INGEST_PID" || true
"$BIN/retrywise" compact --input "$work/ingested" --output "$work/ingested-parquet" --json > "$work/compacted.json"

python3 - "$work" "$CARGO_TARGET_DIR/server-bench.json" "$half" <<'PY'
import json, sys
work, out, half = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = {k: json.load(open(f"{work}/{f}")) for k, f in
     [("trivial", "trivial.json"), ("predict", "predict.json"), ("half", "half.json"), ("batch", "batch_out.json"),
      ("ingest", "ingest.json"), ("predict_fleet", "predict_fleet.json"), ("ingest_fleet", "ingest_fleet.json")]}
compacted = json.load(open(f"{work}/compacted.json"))
def codes(d): return d.get("statusCodeDistribution", {})
def ok(d): return codes(d).get("200", 0)
res = {
  "trivial_rps": r["trivial"]["summary"]["requestsPerSec"],
  "predict_rps": r["predict"]["summary"]["requestsPerSec"],
  "predict_p99_ms_at_max": r["predict"]["latencyPercentiles"]["p99"] * 1e3,
  "half_rate_rps": half,
  "half_achieved_rps": r["half"]["summary"]["requestsPerSec"],
  "half_p50_ms": r["half"]["latencyPercentiles"]["p50"] * 1e3,
  "half_p99_ms": r["half"]["latencyPercentiles"]["p99"] * 1e3,
  "batch_requests_per_s": r["batch"]["summary"]["requestsPerSec"],
  "batch_predictions_per_s": r["batch"]["summary"]["requestsPerSec"] * 1000,
  "batch_p99_ms": r["batch"]["latencyPercentiles"]["p99"] * 1e3,
  "status_codes": {k: codes(v) for k, v in r.items()},
}
res["predict_over_trivial"] = res["predict_rps"] / res["trivial_rps"]
res["predict_fleet_rps"] = r["predict_fleet"]["summary"]["requestsPerSec"]
res["predict_fleet_over_in_process"] = res["predict_fleet_rps"] / res["predict_rps"]
ingf = r["ingest_fleet"]
res["ingest_fleet_records_per_s"] = codes(ingf).get("202", 0) * 3000 / ingf["summary"]["total"]
res["ingest_fleet_acknowledged_records"] = codes(ingf).get("202", 0) * 3000
res["ingest_fleet_busy_batches"] = codes(ingf).get("503", 0)
res["redis_attempts"] = int(open(f"{work}/redis_calls.txt").read().strip() or 0)
res["fleet_metrics"] = open(f"{work}/fleet_metrics.txt").read().strip().splitlines()
ing = r["ingest"]
acked_batches = codes(ing).get("202", 0)
res["ingest_acknowledged_records"] = acked_batches * 3000
res["ingest_busy_batches"] = codes(ing).get("503", 0)
res["ingest_records_in_segments"] = compacted["read"]["records"]
res["ingest_records_per_s"] = res["ingest_acknowledged_records"] / ing["summary"]["total"]
# Batches still in flight when the load stops may be written without being acknowledged:
# the segments hold at least what was acknowledged.
res["ingest_lost"] = max(0, res["ingest_acknowledged_records"] - res["ingest_records_in_segments"])
json.dump(res, open(out, "w"), indent=2)
print(f"| measure | value | target |\n|---|---|---|")
print(f"| trivial axum handler, max | {res['trivial_rps']:,.0f} req/s | — |")
print(f"| POST /v1/predict, max | {res['predict_rps']:,.0f} req/s ({res['predict_over_trivial']:.0%} of trivial) | ≥ 60 % |")
print(f"| POST /v1/predict, max, fleet view shared through Redis (--fleet) | {res['predict_fleet_rps']:,.0f} req/s ({res['predict_fleet_over_in_process']:.0%} of in-process, same run) | ≥ 90 % |")
print(f"| /v1/predict at half that ({half:,} req/s, open loop) | p50 {res['half_p50_ms']:.2f} ms, p99 {res['half_p99_ms']:.2f} ms | p99 ≤ 5 ms |")
print(f"| batch of 1000 contexts | {res['batch_predictions_per_s']:,.0f} predictions/s (p99 {res['batch_p99_ms']:.1f} ms per request) | ≥ 2 M/s |")
print(f"| ingestion, NDJSON batches of 3,000, 4 clients, disk shared with a writer | {res['ingest_records_per_s']:,.0f} records/s acknowledged; "
      f"{res['ingest_acknowledged_records']:,} acknowledged, {res['ingest_records_in_segments']:,} in the segments after a graceful stop, "
      f"{res['ingest_lost']} lost ({res['ingest_busy_batches']} batches answered 503 busy) | nothing lost |")
print(f"| ingestion as above into a --fleet replica | {res['ingest_fleet_records_per_s']:,.0f} records/s acknowledged; "
      f"{res['ingest_fleet_acknowledged_records']:,} acknowledged, {res['redis_attempts']:,} counted in Redis "
      f"({res['ingest_fleet_busy_batches']} batches answered 503 busy); {'; '.join(res['fleet_metrics'])} | ≥ 50 k/s |")
bad = {k: {c: n for c, n in v.items() if c != "200" and not (k.startswith("ingest") and c in ("202", "503"))}
       for k, v in res["status_codes"].items()}
print("non-200 answers:", {k: v for k, v in bad.items() if v} or "none")
PY
