#!/usr/bin/env python3
"""The model-driven policies beyond the suite: every scenario (built-in and stress) at its
own load, half and twice it, and with half and twice its deadline, on seeds no model or
choice ever used, against the best fixed policy of the same run.

    python3 benches/sim/generalization.py [--sim PATH] [--model DIR] [--seeds 21,22]

Prints one row per scenario and variant (the mean over the seeds) and how many cells each
of `adaptive` and `adaptive-full` serves within half a point of the best fixed policy. The
simulator defaults to the release build (`cargo build --release -p retrywise-sim`), the
model to the shipped one. Virtual time: about eight minutes on two cores.
"""
import argparse
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = ["blips", "rate-limited", "outage", "metastable", "stragglers", "permanent", "mix",
           "contention", "rolling-deploy"]
FIXED = {"none", "immediate3", "retry-1s", "exp", "exp-full-jitter", "decorrelated", "budget",
         "sre-throttle", "aws-adaptive", "rule-adaptive", "hedge-p95"}


def scenario_file(s):
    return ROOT / "data" / "scenarios" / f"{s}.toml" if not s.endswith(".toml") else ROOT / s


def run(sim, model, scenario, seed, extra):
    cmd = [sim, "run", "--scenario", scenario, "--seed", str(seed), "--json"] + extra
    if model:
        cmd += ["--model", model]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return {r["policy"]: r for r in json.loads(done.stdout)["results"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--sim", default=str(target / "release" / "retrywise-sim"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", default="21,22")
    ap.add_argument("--only", default=None,
                    help="comma-separated scenario names (built-in or stress) to run, instead of all")
    args = ap.parse_args()
    if not Path(args.sim).is_file():
        sys.exit(f"no simulator at {args.sim}: build it with `cargo build --release -p retrywise-sim`, "
                 "or pass --sim")
    seeds = [int(s) for s in args.seeds.split(",")]
    stress = sorted(f"data/scenarios/stress/{p.name}" for p in (ROOT / "data/scenarios/stress").glob("*.toml"))
    scenarios = BUILTIN + stress
    if args.only:
        wanted = set(args.only.split(","))
        scenarios = [s for s in scenarios if Path(s).stem in wanted]
        missing = wanted - {Path(s).stem for s in scenarios}
        if missing:
            ap.error(f"no such scenario: {', '.join(sorted(missing))}")
    cells = []
    for s in scenarios:
        t = tomllib.loads(scenario_file(s).read_text())
        variants = [("own", [])]
        if t.get("rps"):
            variants += [("load/2", ["--rps", str(t["rps"] / 2)]), ("load*2", ["--rps", str(t["rps"] * 2)])]
        if t.get("deadline_ms"):
            variants += [("deadline/2", ["--deadline-ms", str(t["deadline_ms"] // 2)]),
                         ("deadline*2", ["--deadline-ms", str(t["deadline_ms"] * 2)])]
        for name, extra in variants:
            runs = [run(args.sim, args.model, s, seed, extra) for seed in seeds]
            mean = lambda f: sum(f(r) for r in runs) / len(runs)
            best = mean(lambda r: max(r[p]["success_rate"] for p in FIXED if p in r)) * 100
            row = {"scenario": Path(s).stem, "variant": name, "best_fixed": best}
            for p in ("adaptive", "adaptive-full"):
                row[p] = (mean(lambda r: r[p]["success_rate"]) * 100, mean(lambda r: r[p]["attempts_per_request"]))
            cells.append(row)
            print(f"{row['scenario']:20s} {name:10s} best fixed {best:5.1f} %"
                  + "".join(f" | {p} {row[p][0]:5.1f} % at {row[p][1]:.2f} ({row[p][0] - best:+.1f})"
                            for p in ("adaptive", "adaptive-full")), flush=True)
    for p in ("adaptive", "adaptive-full"):
        ok = sum(1 for c in cells if c[p][0] >= c["best_fixed"] - 0.5)
        print(f"{p}: within 0.5 points of the best fixed policy in {ok} of {len(cells)} cells")


if __name__ == "__main__":
    main()
