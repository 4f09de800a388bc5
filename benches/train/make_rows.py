#!/usr/bin/env python3
"""Make an attempts dataset of any size from data/sample, for the trainer's scale runs.

    python3 benches/train/make_rows.py --rows 10000000 --out /tmp/retrywise-rows/10M

Copies every Parquet file of the source (data/sample: 2.02 M rows of the simulator's
suite; the scale runs in docs/results/train-scale.md used the previous 1.21 M-row sample) again and again until the output holds exactly --rows rows (the last file is cut
short). Copy k is a distinct, later period of the same traffic: its start times move k
days later (the files go to that day's `date=YYYY-MM-DD/` folder, as `retrywise compact`
lays them out) and its call ids move by k * 2^53 — the simulator's ids are below 2^53,
so every copy's calls are distinct from every other's, and the ids stay below 2^63 (the
trainer reads them as signed 64-bit integers) for up to 1024 copies. Every other column
is copied as it is, with the source's types; the trainer sees each copy's calls as new
calls, so its sample (a hash of call_id) draws from every copy independently.

Needs polars (notebooks/requirements.txt; .ci/run's virtual environment has it). Write
the output outside the repository: 50 M rows are about 1 GB.
"""

import argparse
import datetime
import pathlib
import sys

import polars as pl

DAY_MS = 86_400_000
ID_STRIDE = 1 << 53
MAX_COPIES = 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True, help="rows to write")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="a new folder")
    parser.add_argument(
        "--source",
        type=pathlib.Path,
        default=pathlib.Path(__file__).resolve().parents[2] / "data" / "sample",
        help="the Parquet files to copy (default: data/sample)",
    )
    args = parser.parse_args()
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")
    sources = sorted(args.source.rglob("*.parquet"))
    if not sources:
        parser.error(f"no Parquet files under {args.source}")
    frames = [pl.read_parquet(p, hive_partitioning=False) for p in sources]
    per_copy = sum(f.height for f in frames)
    max_id = max(f["call_id"].max() or 0 for f in frames)
    if max_id >= ID_STRIDE:
        print(f"call ids reach {max_id}, not below 2^53", file=sys.stderr)
        return 1
    copies = -(-args.rows // per_copy)
    if copies > MAX_COPIES:
        print(f"{args.rows} rows need {copies} copies, more than {MAX_COPIES}", file=sys.stderr)
        return 1

    left = args.rows
    written = 0
    for k in range(copies):
        for path, frame in zip(sources, frames):
            if left == 0:
                break
            part = frame.head(left) if frame.height > left else frame
            part = part.with_columns(
                (pl.col("started_at_ms") + pl.lit(k * DAY_MS, dtype=pl.UInt64)).alias(
                    "started_at_ms"
                ),
                (pl.col("call_id") + pl.lit(k * ID_STRIDE, dtype=pl.UInt64)).alias("call_id"),
            )
            first = part["started_at_ms"].min()
            day = datetime.datetime.fromtimestamp(first / 1000, datetime.timezone.utc).date()
            target = args.out / f"date={day.isoformat()}" / f"copy{k:04d}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            part.write_parquet(target, compression="zstd", statistics=True)
            left -= part.height
            written += 1
    print(f"{args.rows} rows in {written} files ({copies} copies of {per_copy} rows) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
