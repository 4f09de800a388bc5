#!/usr/bin/env python3
"""CI check of the notebooks: outputs stripped in git, and every cell runs headless.

Usage: python3 notebooks/check.py [NOTEBOOK ...]   (default: every notebooks/*.ipynb)

A notebook committed with outputs or execution counts fails (strip them with
`python3 notebooks/check.py --strip`); then each notebook is executed top to bottom
with nbclient in its own folder, and any cell that raises fails the check.
"""
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def dirty_cells(nb):
    return [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]


def strip(path):
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = []
            c.execution_count = None
    nbformat.write(nb, path)


def main(args):
    strip_mode = "--strip" in args
    paths = [Path(a) for a in args if a != "--strip"] or sorted(HERE.glob("*.ipynb"))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    failed = False
    for path in paths:
        if strip_mode:
            strip(path)
            print(f"{path}: outputs stripped")
            continue
        nb = nbformat.read(path, as_version=4)
        dirty = dirty_cells(nb)
        if dirty:
            print(f"{path}: cells {dirty} carry outputs; run `python3 notebooks/check.py --strip`", file=sys.stderr)
            failed = True
            continue
        client = NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.resolve().parent)}}
        )
        try:
            client.execute()
        except Exception as e:  # nbclient raises CellExecutionError with the traceback
            print(f"{path}: a cell failed:\n{e}", file=sys.stderr)
            failed = True
            continue
        print(f"{path}: {len(nb.cells)} cells ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
