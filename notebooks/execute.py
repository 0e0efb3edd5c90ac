"""Execute notebooks/ernie_tiny_slu.ipynb top to bottom and save it with its outputs (`make notebook`),
so that it reads as a document on the web and in AI Studio. Each code cell's metadata records the
sha256 of the source its outputs came from; tests/test_notebook.py checks that every stamp matches
the committed source (no output left from an older version of a cell).

    python notebooks/execute.py [--fast]      # --fast: SLU_NOTEBOOK_FAST=1, as the tests run it
"""
import argparse
import hashlib
import os

import nbformat
from nbclient import NotebookClient

from utils import PROJECT_DIR, write_text

NOTEBOOK = os.path.join(PROJECT_DIR, "notebooks", "ernie_tiny_slu.ipynb")
STAMP = "source_sha256"


def source_sha256(cell) -> str:
    return hashlib.sha256(cell.source.encode("utf-8")).hexdigest()


def execute(nb, timeout: int = 3600):
    """Run every cell in a fresh kernel from notebooks/ (in place); stamp each code cell."""
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata[STAMP] = source_sha256(cell)
    return nb


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="shrink every step (SLU_NOTEBOOK_FAST=1)")
    args = parser.parse_args()
    if args.fast:
        os.environ["SLU_NOTEBOOK_FAST"] = "1"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    write_text(NOTEBOOK, nbformat.writes(execute(nb)) + "\n")  # whole or not at all: a failing cell leaves the old file
    print(f"{NOTEBOOK}: executed and saved with its outputs")


if __name__ == "__main__":
    main()
