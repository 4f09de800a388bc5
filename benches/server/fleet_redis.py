#!/usr/bin/env python3
"""What the fleet view shared through Redis costs Redis, by the number of targets.

For each count of targets (1,000 and 10,000, the most `max_targets` allows with `fleet`),
starts a redis-server and one `retrywise serve --fleet` replica on 127.0.0.1 (the shipped
models, `max_targets` set to the count), posts one attempt to each of that many fresh
targets, and then reads Redis's own timing of every command for a few seconds (SLOWLOG
with a threshold of 0 µs: the time Redis spent executing each script, during which it
serves nobody else). The read script covers every target in the window (it is
O(targets)); the write script only those with new attempts. Also prints whether the
replica kept answering from the shared view throughout (`retrywise_fleet_shared` 1 and no
`retrywise_fleet_redis_errors_total`): a read slower than `fleet_timeout_ms` (100 ms by
default) would make it fall back to its own view.

    python3 benches/server/fleet_redis.py target/release/retrywise [REDIS_PORT] [PORT]

2026-12-08, this 2-core machine, one replica, the default 250 ms cache and 100 ms timeout,
one hash per target (three calls a target). One attempt a target (quiet targets): 1,000
targets 13-15 ms a read (Redis busy with the replica's reads 7-9 % of the time), 2,000
27 ms, 4,000 60-65 ms, 6,000 105 ms, 10,000 168 ms - from about 5,000 on, reads outlast
the timeout and the replica answers from its own view. `FLEET_ATTEMPTS=10` (busy
targets): 1,000 38 ms (Redis busy a fifth of the time), 2,000 77 ms, 4,000 178 ms (past
the timeout). With a hash per bucket (ten calls a target more, before 2026-12-08): quiet
22-26, 49-76, 108-112 and 294 ms for 1,000, 2,000, 4,000 and 10,000
(`fleet_timeout_ms = 2000` kept 10,000 shared); busy 40 ms for 1,000 and 82 ms for 2,000.
`FLEET_WRITING=1` (1,000 targets, each sent an attempt every quarter second while timed):
a write 34 ms and a read 36 ms (median) with one hash per target, 25 ms and 47 ms with a
hash per bucket - Redis 8-10 % busy with the replica either way.

Needs redis-server on the PATH (Debian: redis-server). Talks to 127.0.0.1 only.
"""
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The counts of targets measured (`FLEET_TARGETS=1000,5000` to choose others).
COUNTS = [int(n) for n in os.environ.get("FLEET_TARGETS", "1000,10000").split(",")]
# Attempts posted to each target (`FLEET_ATTEMPTS=10`: one a second over the last ten
# seconds, with latencies from 5 ms to 5 s, so that each target fills the window's buckets
# and a dozen latency buckets, as a busy target does; 1: one attempt, one bucket).
ATTEMPTS = int(os.environ.get("FLEET_ATTEMPTS", "1"))
# `FLEET_WRITING=1`: every target gets a fresh attempt every quarter second while Redis's
# timing is read, so that the writes (and their pruning, once a bucket a target) are
# measured too.
WRITING = os.environ.get("FLEET_WRITING") == "1"
MEASURE_S = 4.0


class Redis:
    """The smallest RESP client: commands as arrays of bulk strings, replies parsed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def call(self, *args):
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = str(a).encode()
            out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return int(rest) if kind == b":" else rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(1 << 16)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")


def wait_for(check, what: str, seconds: float = 20.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{what} did not come up within {seconds:.0f} s")


def get(port: int, path: str) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read().decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def measure(binary: str, targets: int, redis_port: int, port: int, work: str) -> None:
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        wait_for(lambda: Redis(redis_port).call("PING") == "PONG", "redis-server")
        env = dict(os.environ, RETRYWISE_MAX_TARGETS=str(targets))
        server = subprocess.Popen(
            [binary, "serve", "--models", os.path.join(work, "models"),
             "--attempts", os.path.join(work, f"attempts-{targets}"),
             "--addr", f"127.0.0.1:{port}", "--fleet", f"redis://127.0.0.1:{redis_port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: get(port, "/readyz")[0] == 200, "the service")
        def post(lines: list[str]) -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("POST", "/v1/attempts", "\n".join(lines),
                      {"Content-Type": "application/x-ndjson"})
            r = c.getresponse()
            r.read()
            if r.status != 202:
                sys.exit(f"{targets} targets: ingestion answered {r.status}")

        now = int(time.time() * 1000)
        records = [(i, a) for i in range(targets) for a in range(ATTEMPTS)]
        for start in range(0, len(records), 1_000):
            lines = [json.dumps({
                "schema_version": "1.4", "started_at_ms": now - 1_000 * a,
                "call_id": i * ATTEMPTS + a, "target": f"t{i}", "attempt": 1,
                **({"outcome": "success"} if a % 4 else
                   {"outcome": "retryable", "outcome_error": "http_503", "outcome_status": 503}),
                "outcome_latency_ms": 5.0 * 2 ** a}) for i, a in records[start:start + 1_000]]
            post(lines)
        stop = threading.Event()

        def keep_writing() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                at = int(time.time() * 1000)
                for start in range(0, targets, 1_000):
                    post([json.dumps({
                        "schema_version": "1.4", "started_at_ms": at,
                        "call_id": (n << 32) + i, "target": f"t{i}", "attempt": 1,
                        "outcome": "success", "outcome_latency_ms": 20.0})
                        for i in range(start, min(start + 1_000, targets))])
                stop.wait(0.25)

        writer = threading.Thread(target=keep_writing, daemon=True)
        r = Redis(redis_port)
        # Written within a quarter cache period; read back within the next three.
        time.sleep(1.0)
        before = get(port, "/metrics")[1]
        r.call("CONFIG", "SET", "slowlog-log-slower-than", "0")
        r.call("CONFIG", "SET", "slowlog-max-len", "100000")
        r.call("SLOWLOG", "RESET")
        if WRITING:
            writer.start()
        time.sleep(MEASURE_S)
        log = r.call("SLOWLOG", "GET", "-1")
        stop.set()
        if WRITING:
            writer.join()
        after = get(port, "/metrics")[1]
        reads, writes = [], []
        for entry in log:
            args = entry[3]
            if not args or str(args[0]).upper() not in ("EVALSHA", "EVAL"):
                continue
            # The read script takes 7 arguments (no keys): 10 in all; a write many more.
            (reads if len(args) == 10 else writes).append(entry[2] / 1000.0)
        errors = metric(after, "retrywise_fleet_redis_errors_total") - metric(
            before, "retrywise_fleet_redis_errors_total")
        shared = metric(after, "retrywise_fleet_shared")
        in_view = metric(after, "retrywise_fleet_shared_targets")

        def summary(ms: list[float]) -> str:
            if not ms:
                return "none"
            ms = sorted(ms)
            return (f"{len(ms)} runs, median {statistics.median(ms):.2f} ms, "
                    f"max {ms[-1]:.2f} ms")

        busy = sum(reads + writes) / 1000.0 / MEASURE_S
        print(f"{targets:>6} targets x {ATTEMPTS} attempts ({in_view:.0f} in the shared view): "
              f"read {summary(reads)}; write {summary(writes)}; Redis busy with this "
              f"replica {busy:.1%} of the time; shared {shared:.0f}, Redis errors during "
              f"the measure {errors:.0f}")
    finally:
        for p in (server, redis):
            if p is not None:
                p.terminate()
                p.wait()


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} PATH/TO/retrywise [REDIS_PORT] [PORT]")
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is needed (Debian: apt-get install redis-server)")
    binary = sys.argv[1]
    redis_port = int(sys.argv[2]) if len(sys.argv) > 2 else 18193
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 18194
    work = tempfile.mkdtemp(prefix="fleet-redis-")
    try:
        shutil.copytree(os.path.join(ROOT, "models"), os.path.join(work, "models"))
        for targets in COUNTS:
            measure(binary, targets, redis_port, port, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
