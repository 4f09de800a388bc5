"""The Parquet layout stays readable by other engines: DuckDB reads `data/sample` (every
day partition) with the row count polars and the files' own footers give, and with the
column types `data/README.md` documents (the attempt schema's table), column for column.

Run: python3 tests/python/check_parquet.py [DIR]  (default: data/sample)
"""

import re
import sys
from pathlib import Path

import duckdb
import polars as pl

ROOT = Path(__file__).resolve().parents[2]

# The documented Parquet type of a column -> what DuckDB and polars call it.
DUCKDB = {
    "String": "VARCHAR",
    "UInt64": "UBIGINT",
    "UInt32": "UINTEGER",
    "UInt16": "USMALLINT",
    "Float64": "DOUBLE",
    "Boolean": "BOOLEAN",
}
POLARS = {
    "String": pl.String,
    "UInt64": pl.UInt64,
    "UInt32": pl.UInt32,
    "UInt16": pl.UInt16,
    "Float64": pl.Float64,
    "Boolean": pl.Boolean,
}


UNKNOWN_FIELDS = "unknown_fields"


def documented(minor: int) -> list[tuple[str, str]]:
    """(column, Parquet type) in the order of data/README.md's attempt-schema table, of
    the columns a file written with schema 1.`minor` has: a later minor adds optional
    columns (marked "(since 1.N)"), which older files lack and readers fill with nulls."""
    rows = []
    for line in (ROOT / "data" / "README.md").read_text().splitlines():
        m = re.match(r"^\| `([a-z_0-9]+)` \| [a-z0-9?]+ \((\w+)\) \|", line)
        if m:
            since = re.search(r"\(since 1\.(\d+)\) \|$", line)
            if since is None or int(since.group(1)) <= minor:
                rows.append((m.group(1), m.group(2)))
    if not rows:
        sys.exit("data/README.md documents no column: its schema table changed shape")
    return rows


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "sample"
    files = sorted(data.glob("date=*/*.parquet"))
    if not files:
        sys.exit(f"no Parquet files under {data}/date=*/")
    glob = str(data / "date=*" / "*.parquet")
    con = duckdb.connect()
    # The partition column is the path's, not the schema's: compare the files' columns.
    described = con.execute(
        "DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = false)", [glob]
    ).fetchall()
    duck_types = [(name, kind) for name, kind, *_ in described]
    versions = con.execute(
        "SELECT DISTINCT schema_version FROM read_parquet(?, hive_partitioning = false)", [glob]
    ).fetchall()
    minors = [int(v.split(".")[1]) for (v,) in versions if v.startswith("1.")]
    if len(minors) != len(versions) or not minors:
        sys.exit(f"schema versions other than 1.x in {data}: {versions}")
    want = documented(max(minors))
    # After the table's columns, files compacted by this build have `unknown_fields`
    # (data/README.md: the fields of a newer minor version, as a JSON object).
    if duck_types and duck_types[-1][0] == UNKNOWN_FIELDS:
        want.append((UNKNOWN_FIELDS, "String"))
    problems = []
    if [c for c, _ in duck_types] != [c for c, _ in want]:
        problems.append(
            f"columns differ:\n  duckdb: {[c for c, _ in duck_types]}\n  "
            f"documented: {[c for c, _ in want]}"
        )
    for (column, kind), (_, duck) in zip(want, duck_types):
        if DUCKDB.get(kind) != duck:
            problems.append(f"{column}: documented {kind}, duckdb reads {duck}")
    schema = pl.scan_parquet(glob, hive_partitioning=False).collect_schema()
    for column, kind in want:
        if schema.get(column) != POLARS.get(kind):
            problems.append(f"{column}: documented {kind}, polars reads {schema.get(column)}")

    duck_rows = con.execute("SELECT count(*) FROM read_parquet(?)", [glob]).fetchone()[0]
    footer_rows = con.execute(
        "SELECT sum(num_rows) FROM (SELECT DISTINCT file_name, row_group_id, row_group_num_rows AS num_rows FROM parquet_metadata(?))",
        [glob],
    ).fetchone()[0]
    polars_rows = pl.scan_parquet(glob).select(pl.len()).collect().item()
    if not duck_rows == footer_rows == polars_rows:
        problems.append(
            f"row counts differ: duckdb {duck_rows}, footers {footer_rows}, polars {polars_rows}"
        )
    if duck_rows == 0:
        problems.append("no rows")
    if problems:
        sys.exit("Parquet layout check failed:\n" + "\n".join(problems))
    print(
        f"DuckDB {duckdb.__version__} reads {len(files)} files, {duck_rows} rows "
        f"({polars_rows} by polars), {len(want)} columns of the documented types"
    )


if __name__ == "__main__":
    main()
