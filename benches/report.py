#!/usr/bin/env python3
"""Prints the benchmark table of the README from criterion's results.

Usage: python3 benches/report.py [TARGET_DIR]
(TARGET_DIR defaults to $CARGO_TARGET_DIR or ./target.)

Each figure is the median time of a call minus the median of the matching baseline
(a bare future for direct calls, a bare tower `service_fn` for layers), measured in the
same run: the cost the mechanism adds to a call that succeeds at once.
"""
import json
import os
import sys

target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CARGO_TARGET_DIR", "target")
root = os.path.join(target, "criterion")


def median(group, name, threads):
    path = os.path.join(root, group, name, threads, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except FileNotFoundError:
        return None


# (group, job, retrywise bench, [(peer name, peer bench)], baseline)
ROWS = [
    ("breaker", "breaker around a future", "retrywise-call", [("failsafe", "failsafe-call")], "baseline-future"),
    ("breaker", "breaker as a tower layer", "retrywise-layer", [("tower-resilience", "tower-resilience-layer")], "baseline-service"),
    ("bulkhead", "bulkhead around a future", "retrywise-call", [], "baseline-future"),
    ("bulkhead", "bulkhead as a tower layer", "retrywise-layer", [("tower-resilience", "tower-resilience-layer")], "baseline-service"),
    ("retry", "retry policy around a future", "retrywise-policy", [], "baseline-future"),
    ("retry", "retry as a tower layer", "retrywise-layer", [("tower-resilience", "tower-resilience-layer")], "baseline-service"),
    ("timeout", "timeout around a future", "retrywise-timeout", [], "baseline-future"),
    ("timeout", "timeout as a tower layer", "retrywise-layer", [("tower-resilience", "tower-resilience-layer")], "baseline-service"),
    ("hedge", "hedge around a future", "retrywise-call", [], "baseline-future"),
    ("hedge", "hedge as a tower layer", "retrywise-layer", [("tower-resilience", "tower-resilience-layer")], "baseline-service"),
    ("budget", "token bucket (gRPC)", "retrywise-token-bucket", [], "baseline-future"),
    ("budget", "ratio budget (Finagle)", "retrywise-ratio", [], "baseline-future"),
    ("composition", "full Policy around a future", "retrywise-policy", [], "baseline-future"),
    ("composition", "adaptive composition around a future", "retrywise-adaptive", [], "baseline-future"),
    ("composition", "full Policy as a tower layer", "retrywise-policy-layer", [], "baseline-service"),
    ("composition", "all five layers stacked", "retrywise-layers", [("tower-resilience", "tower-resilience-layers")], "baseline-service"),
    ("waiting", "timeout layer, a call that waits", "retrywise-timeout-layer", [("tower-resilience", "tower-resilience-timeout-layer")], "baseline-service"),
    ("waiting", "hedge layer, a call that waits", "retrywise-hedge-layer", [("tower-resilience", "tower-resilience-hedge-layer")], "baseline-service"),
    ("waiting", "five layers stacked, a call that waits", "retrywise-layers", [("tower-resilience", "tower-resilience-layers")], "baseline-service"),
]


def fmt(ns):
    return "n/a" if ns is None else f"{ns:.1f}"


if not os.path.isdir(root):
    sys.exit(f"no criterion results under {root}: run `cargo bench -p retrywise-benches` first, "
             "or pass the target folder it used (TARGET_DIR, or set CARGO_TARGET_DIR)")

print("| job | threads | retrywise (ns added) | tower-resilience | failsafe | retrywise / fastest peer |")
print("|---|---|---|---|---|---|")
printed = 0
for group, job, ours, peers, base in ROWS:
    for threads in ("1t", "2t"):
        b = median(group, base, threads)
        o = median(group, ours, threads)
        if b is None or o is None:
            continue
        added = o - b
        cols = {"tower-resilience": None, "failsafe": None}
        for peer, bench in peers:
            p = median(group, bench, threads)
            if p is not None:
                cols[peer] = p - b
        present = [v for v in cols.values() if v is not None]
        ratio = f"{added / min(present):.2f}" if present else "-"
        print(f"| {job} | {threads[0]} | {fmt(added)} | {fmt(cols['tower-resilience'])} | "
              f"{fmt(cols['failsafe'])} | {ratio} |")
        printed += 1


def collector():
    """The collector's figures (benches/collect.rs), if that bench was run."""
    base = os.path.join(root, "collect")
    def med(name, base=base):
        try:
            with open(os.path.join(base, name, "new", "estimates.json")) as f:
                return json.load(f)["median"]["point_estimate"]
        except FileNotFoundError:
            return None
    rec = med("record-while-writer-busy")
    write = med("write-ndjson-until-durable")
    comp = med("compact-to-parquet")
    try:
        with open(os.path.join(root, "collect-record-latency.json")) as f:
            lat = json.load(f)
    except FileNotFoundError:
        lat = None
    drains = {n: med(f"{n}-batches", os.path.join(root, "spool-drain")) for n in (250, 2000)}
    if rec is None and write is None and comp is None and all(v is None for v in drains.values()):
        return False
    n = 2_000_000
    print()
    print("| collector | measured | target |")
    print("|---|---|---|")
    if rec is not None:
        print(f"| `record()` on the caller's thread, writer busy: mean | {rec:.1f} ns | — |")
    if lat is not None:
        print(f"| `record()` per call: p50 / p99 / p99.9 (incl. ~{lat['timer_overhead_ns']:.0f} ns of timer) | "
              f"{lat['p50_ns']:.0f} / {lat['p99_ns']:.0f} / {lat['p999_ns']:.0f} ns | p99 ≤ 200 ns |")
    if write is not None:
        print(f"| sustained write to NDJSON, until durable | {n / (write / 1e9) / 1e6:.2f} M records/s | ≥ 1 M/s |")
    if comp is not None:
        print(f"| compaction to Parquet (zstd, 2 threads) | {n / (comp / 1e9) / 1e6:.2f} M records/s | ≥ 2 M/s |")
    if all(v is not None for v in drains.values()):
        per = {k: v / k / 1e6 for k, v in drains.items()}
        print(f"| a spool emptied, per batch: 250 / 2,000 waiting | {per[250]:.2f} / {per[2000]:.2f} ms | "
              f"flat in the batches waiting |")

    return True


if not collector() and printed == 0:
    sys.exit(f"no benchmark results of retrywise-benches under {root}: run "
             "`cargo bench -p retrywise-benches --bench policy` (or `--bench collect`) first")
