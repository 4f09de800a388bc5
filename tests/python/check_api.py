#!/usr/bin/env python3
"""The service against the clients its users have: the stock KServe/Triton client
(`tritonclient[http]`) and Schemathesis on the OpenAPI document.

Usage: python3 tests/python/check_api.py PATH/TO/retrywise

Starts `retrywise serve` on a free loopback port with the shipped model and a token, then

1. sends contexts through `tritonclient.http` — JSON tensors, binary tensors (the client's
   default), a batch mixing first attempts (no previous error: an empty string) with
   retries, missing values spelt as the schema says (-1, NaN), binary and JSON outputs —
   and checks every probability against `POST /v1/predict` for the same contexts;
2. asks `POST /v1/decide` as a caller without the crate would: every answer's `reason` is
   one the OpenAPI document lists; after 200 failed attempts to a target are posted, its
   fresh calls are held or sent as the circuit's probes (never simply admitted), and a
   retry to it is never told to go before the circuit lets calls through;
3. runs `st run /openapi.json` with every check (Schemathesis; the checks and their one
   documented exception in schemathesis.toml; bounded and deterministic, the token given)
   and fails on any failure.

Exits non-zero on the first failure, saying what failed.
"""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as triton

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ci-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def wait_ready(base, server):
    deadline = time.time() + 30
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"retrywise serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("retrywise serve was not ready within 30 s")


# Contexts a caller would send: first attempts (no error, no status, no latency) and
# retries of every kind, with and without the target's health.
CONTEXTS = [
    {"target": "payments", "attempt": 1, "failure_rate": 0.1},
    {"target": "payments", "attempt": 2, "error": "connect", "latency_ms": 1.0, "elapsed_ms": 1.0, "delay_ms": 1000.0, "failure_rate": 0.5},
    {"target": "payments", "attempt": 2, "error": "http_429", "status": 429, "latency_ms": 2.0, "elapsed_ms": 2.0,
     "retry_after_ms": 1000.0, "delay_ms": 1200.0, "failure_rate": 0.6},
    {"target": "search", "attempt": 3, "error": "http_503", "status": 503, "latency_ms": 30.0, "elapsed_ms": 900.0,
     "delay_ms": 400.0, "failure_rate": 0.95, "latency_p95_ms": 80.0, "in_flight": 4},
    {"target": "search", "attempt": 1},
    {"target": "search", "attempt": 4, "error": "timeout", "latency_ms": 2000.0, "elapsed_ms": 6100.0, "delay_ms": 50.0},
]

INT_FIELDS = {"attempt", "status", "in_flight"}
TEXT_FIELDS = {"target", "error"}


def tensors(binary):
    """One input per context field, missing values spelt as the schema says."""
    names = ["target", "attempt", "error", "status", "latency_ms", "elapsed_ms", "retry_after_ms",
             "delay_ms", "failure_rate", "latency_p95_ms", "in_flight"]
    inputs = []
    for name in names:
        values = [c.get(name) for c in CONTEXTS]
        if name in TEXT_FIELDS:
            arr = np.array([("" if v is None else v).encode() for v in values], dtype=np.object_)
            datatype = "BYTES"
        elif name in INT_FIELDS:
            arr = np.array([-1 if v is None else v for v in values], dtype=np.int64)
            datatype = "INT64"
        else:
            arr = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
            datatype = "FP64"
        if not binary and datatype == "FP64":
            # JSON has no NaN: a JSON tensor says missing with null, which numpy cannot
            # hold; send the defaulted fields as 0 and leave the others out.
            if any(v is None for v in values) and name not in ("elapsed_ms", "delay_ms"):
                continue
            arr = np.array([0.0 if v is None else v for v in values], dtype=np.float64)
        t = triton.InferInput(name, [len(CONTEXTS)], datatype)
        t.set_data_from_numpy(arr, binary_data=binary)
        inputs.append((name, t))
    return inputs


def check_triton(base, host):
    expected = post(f"{base}/v1/predict", {"contexts": CONTEXTS})["p_success"]
    client = triton.InferenceServerClient(url=host)
    assert client.is_server_live(), "is_server_live"
    assert client.is_server_ready(), "is_server_ready"
    assert client.is_model_ready("default"), "is_model_ready"
    meta = client.get_model_metadata("default")
    assert {i["name"] for i in meta["inputs"]} >= {"attempt", "error", "delay_ms"}, meta
    for binary_in in (True, False):
        inputs = tensors(binary_in)
        for binary_out in (True, False):
            outputs = [triton.InferRequestedOutput("p_success", binary_data=binary_out)]
            result = client.infer("default", [t for _, t in inputs], outputs=outputs)
            got = result.as_numpy("p_success").tolist()
            if binary_in:
                want = expected
            else:
                # Fields left out of the JSON request are missing for every row.
                sent = {n for n, _ in inputs}
                reduced = [{k: v for k, v in c.items() if k in sent} for c in CONTEXTS]
                want = post(f"{base}/v1/predict", {"contexts": reduced})["p_success"]
            if got != want:
                sys.exit(f"tritonclient (binary in: {binary_in}, out: {binary_out}) got {got}, /v1/predict {want}")
    # No outputs named: every output, in binary (the client's default).
    result = client.infer("default", [t for _, t in tensors(True)])
    if result.as_numpy("p_success").tolist() != expected:
        sys.exit("tritonclient without outputs disagrees with /v1/predict")
    # By version (the client's `model_version`: /v2/models/default/versions/1/infer).
    result = client.infer("default", [t for _, t in tensors(True)], model_version="1")
    if result.as_numpy("p_success").tolist() != expected:
        sys.exit("tritonclient by version disagrees with /v1/predict")
    if not client.is_model_ready("default", model_version="1"):
        sys.exit("tritonclient: version 1 of default is not ready")
    print(f"tritonclient: {len(CONTEXTS)} contexts agree with /v1/predict in JSON and binary, both ways")


def check_decide(base):
    reasons = set(get(f"{base}/openapi.json")["components"]["schemas"]["DecideResponse"]["properties"]["reason"]["enum"])
    asked = [
        {"context": {"target": "fine", "attempt": 1, "failure_rate": 0.0}},
        {"context": {"target": "fine", "attempt": 2, "error": "http_503", "status": 503, "latency_ms": 5.0,
                     "elapsed_ms": 5.0, "failure_rate": 0.05}, "deadline_ms": 10000, "alternatives": True},
        {"context": {"target": "fine", "attempt": 2, "error": "http_4xx", "status": 404, "latency_ms": 5.0,
                     "elapsed_ms": 5.0}},
    ]
    for body in asked:
        d = post(f"{base}/v1/decide", body)
        if d["reason"] not in reasons or not isinstance(d["retry"], bool) or d["delay_ms"] < 0:
            sys.exit(f"/v1/decide {body} answered {d}, reasons listed: {sorted(reasons)}")
    if post(f"{base}/v1/decide", asked[2])["retry"]:
        sys.exit("/v1/decide retries a 404")
    # Every reported call to `flaky` failed: the fleet's shared circuit opens.
    now = int(time.time() * 1000)
    records = [{"schema_version": "1.4", "started_at_ms": now - 200 + i % 100, "call_id": i + 1, "target": "flaky",
                "attempt": 1, "outcome": "retryable", "outcome_error": "http_503", "outcome_status": 503,
                "outcome_latency_ms": 5.0} for i in range(200)]
    accepted = post(f"{base}/v1/attempts", records, token=TOKEN)
    if accepted.get("accepted") != 200:
        sys.exit(f"/v1/attempts answered {accepted}")
    view = get(f"{base}/v1/targets/flaky")
    seen = time.monotonic()
    if view["breaker_state"] != "OPEN" or view["allow"]:
        sys.exit(f"200 failures reported, yet the circuit reads {view}")
    fresh = post(f"{base}/v1/decide", {"context": {"target": "flaky", "attempt": 1}})
    # Open, or (its open time over) probing: held, or sent as one of its probes.
    if fresh["reason"] not in ("circuit_open_wait", "probe", "circuit_half_open_wait"):
        sys.exit(f"a fresh call to a target whose circuit opened was answered {fresh}")
    # (Its own health given, so that the decider retries: the circuit, not the failure
    # rate, is what holds it.)
    retry = post(f"{base}/v1/decide", {"context": {"target": "flaky", "attempt": 2, "error": "http_503", "status": 503,
                                                    "latency_ms": 5.0, "elapsed_ms": 5.0, "failure_rate": 0.0},
                                        "deadline_ms": 120000})
    if retry["reason"] not in ("circuit_open_wait", "probe", "circuit_half_open_wait"):
        sys.exit(f"a retry to a target whose circuit opened was answered {retry}")
    if retry["reason"] == "circuit_open_wait":
        # At least what was left of the opening (50 ms of slack for the clocks' reading).
        left = view["open_for_ms"] - (time.monotonic() - seen) * 1e3
        if retry["delay_ms"] < left - 50:
            sys.exit(f"a retry to a target whose circuit was open for {left:.0f} ms more was told to wait {retry}")
    print(f"/v1/decide: {len(asked) + 2} answers with listed reasons; an open circuit holds fresh calls and retries")


def check_schemathesis(base, venv_bin, workdir):
    st = Path(venv_bin) / "st"
    if not st.exists():
        st = shutil.which("st")
    if st is None:
        sys.exit(f"Schemathesis (`st`) is neither in {venv_bin} nor on PATH: "
                 "pip install -r tests/python/requirements.txt")
    cmd = [
        str(st), "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
        "run", f"{base}/openapi.json",
        "--max-examples", os.environ.get("ST_MAX_EXAMPLES", "40"),
        "--generation-deterministic",
        "--workers", "2",
        "--request-timeout", "10",
        "-H", f"Authorization: Bearer {TOKEN}",
        "--no-color",
    ]
    print("+", " ".join(cmd), flush=True)
    # A crash of Schemathesis itself prints the Python stack of every thread.
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    # Schemathesis keeps a cache in its working directory: not in the repository.
    code, out = run_echoed(cmd, workdir, env)
    if code < 0:
        # Killed by a signal: the tool crashed (seen once: SIGSEGV in its coverage phase,
        # on a machine whose disk was nearly full; not reproduced in 55 runs), which says
        # nothing of the service. A finding exits 1, not by a signal. The generation is deterministic, so the run once more tests
        # the same cases; a second crash fails.
        print(f"schemathesis crashed (signal {-code}); running it once more", flush=True)
        code, out = run_echoed(cmd, workdir, env)
    elif code != 0 and tool_error_only(out):
        # The tool's own error while generating a case, no finding (seen once: CPython
        # 3.11.7's `SystemError: AST constructor recursion depth mismatch` inside
        # Hypothesis describing one of its lambdas, reported as a "Runtime Error" of
        # POST /v1/attempts in the coverage phase, whose every request had passed): once
        # more, the same deterministic cases; a second error fails.
        print("schemathesis failed in its own code, with no finding; running it once more", flush=True)
        code, out = run_echoed(cmd, workdir, env)
    if code != 0:
        sys.exit(f"schemathesis failed (exit {code})")


def run_echoed(cmd, workdir, env):
    """Runs `cmd`, echoing its output as it comes; returns its exit code and output."""
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    # Killed after 15 minutes even if it hangs without a word (the read below would wait).
    fired = threading.Event()

    def kill():
        fired.set()
        proc.kill()

    timer = threading.Timer(900, kill)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
        code = proc.wait()
    finally:
        timer.cancel()
    if fired.is_set():
        sys.exit("schemathesis ran for more than 15 minutes")
    return code, "".join(lines)


def tool_error_only(out):
    """Whether a failed run reported no finding, only errors raised inside Python itself
    (a `SystemError`: the interpreter's, never an answer of the service)."""
    return "FAILURES" not in out and "Failures:" not in out and "SystemError:" in out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    port = free_port()
    host = f"127.0.0.1:{port}"
    base = f"http://{host}"
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, RETRYWISE_TOKEN=TOKEN, RUST_LOG="warn")
        server = subprocess.Popen(
            [binary, "serve", "--addr", host, "--models", str(ROOT / "models"), "--attempts", str(Path(tmp) / "attempts")],
            env=env,
        )
        try:
            wait_ready(base, server)
            check_triton(base, host)
            check_decide(base)
            check_schemathesis(base, Path(sys.executable).parent, tmp)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print("API checks passed")


if __name__ == "__main__":
    main()
