#!/usr/bin/env python3
"""The service's memory per target of its fleet view.

Starts `retrywise serve` on 127.0.0.1 with the shipped models, posts NDJSON attempt records
for 1,000 fresh targets per round (four rounds; the view keeps at most `max_targets`,
1,000 by default, making room from the idle ones), and prints the process's resident
memory after each round, read from /proc.

    python3 benches/server/fleet_memory.py target/release/retrywise [PORT]

2026-12-06, after the unstriped histograms: 35 MiB at start, 65 MiB after the first 1,000
targets (about 30 KiB each), flat through the next three rounds; the build before: 56 ->
246 MiB, 573 MiB after the same rounds.
"""
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} PATH/TO/retrywise [PORT]")
    binary = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 18191
    work = tempfile.mkdtemp(prefix="fleet-memory-")
    shutil.copytree(os.path.join(ROOT, "models"), os.path.join(work, "models"))
    server = subprocess.Popen(
        [binary, "serve", "--models", os.path.join(work, "models"),
         "--attempts", os.path.join(work, "attempts"), "--addr", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def rss_mib() -> int:
            with open(f"/proc/{server.pid}/status") as f:
                return int(f.read().split("VmRSS:")[1].split()[0]) // 1024

        for _ in range(100):
            if server.poll() is not None:
                sys.exit(f"the service exited with {server.returncode} before it was ready "
                         f"(run `{binary} serve` by hand to see why)")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            sys.exit("the service did not become ready")
        print(f"at start: {rss_mib()} MiB")
        for rnd in range(4):
            now = int(time.time() * 1000)
            lines = [json.dumps({
                "schema_version": "1.4", "started_at_ms": now + i, "call_id": rnd * 10_000 + i,
                "target": f"r{rnd}-{i}", "attempt": 1, "outcome": "success",
                "outcome_latency_ms": 20.0}) for i in range(1000)]
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("POST", "/v1/attempts", "\n".join(lines),
                      {"Content-Type": "application/x-ndjson"})
            r = c.getresponse()
            r.read()
            if r.status != 202:
                sys.exit(f"round {rnd}: answered {r.status}")
            time.sleep(1)
            print(f"after round {rnd} (1,000 fresh targets): {rss_mib()} MiB")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
