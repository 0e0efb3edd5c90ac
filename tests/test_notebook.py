"""notebooks/ernie_tiny_slu.ipynb is committed with its outputs (`make notebook`), and they come from
the committed code: every code cell carries the sha256 of the source that produced its outputs, and
a headless re-run (fast mode) gives outputs of the same kinds, cell by cell, with the tables, plots
and predictions each step promises (numbers differ: fast mode trains less)."""
import importlib.util
import json
import os

import nbformat

import utils

spec = importlib.util.spec_from_file_location("execute_notebook", os.path.join(utils.PROJECT_DIR, "notebooks", "execute.py"))
execute_notebook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute_notebook)


def kinds(cell):
    """What a cell showed: (output type, MIME types) of each output, in order; streams merged.
    Library noise on stderr (a warning on first import, glog lines) depends on the environment and
    is left out."""
    out = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream" and o.get("name") == "stderr":
            continue
        kind = (o["output_type"], tuple(sorted(o.get("data", {}))))
        if not (out and kind == out[-1] and o["output_type"] == "stream"):
            out.append(kind)
    return out


def text_of(cell) -> str:
    return "".join(o.get("text", "") + "".join(str(v) for k, v in o.get("data", {}).items() if k in ("text/plain", "text/markdown"))
                   for o in cell.get("outputs", []))


def test_committed_outputs_come_from_the_committed_cells():
    nb = nbformat.read(execute_notebook.NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("outputs") for c in code), "run `make notebook` and commit the notebook with its outputs"
    stale = [i for i, c in enumerate(code) if c.metadata.get(execute_notebook.STAMP) != execute_notebook.source_sha256(c)]
    assert not stale, f"code cells {stale} changed since their outputs were made: run `make notebook`"
    assert not [o for c in code for o in c.outputs if o["output_type"] == "error"]
    assert sum(1 for c in code for o in c.outputs if "image/png" in o.get("data", {})) >= 4


def test_notebook_reruns_with_the_same_kinds_of_output(tmp_path, monkeypatch):
    monkeypatch.setenv("SLU_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("SLU_NOTEBOOK_OUTPUT", str(tmp_path / "nb"))
    committed = nbformat.read(execute_notebook.NOTEBOOK, as_version=4)
    rerun = execute_notebook.execute(nbformat.read(execute_notebook.NOTEBOOK, as_version=4), timeout=900)
    code = [c for c in rerun.cells if c.cell_type == "code"]
    assert [kinds(c) for c in code] == [kinds(c) for c in committed.cells if c.cell_type == "code"]
    outputs = [text_of(c) for c in code]
    assert "| train | 1200 |" in outputs[1] and "navigation" in outputs[1]
    assert "| test |" in outputs[3] and "sentence_acc" in outputs[3]
    assert "| length <= 4 |" in outputs[4] and "| first turn |" in outputs[4]
    predictions = [json.loads(line) for line in outputs[5].splitlines() if line.startswith('{"text"')]
    assert [p["text"] for p in predictions] == ["导航去北京", "打电话给 13812345678", "播放周杰伦的稻香", "导航去人民公园", "取消"]
    assert all({"intent", "confidence", "slots", "fallback"} <= set(p) for p in predictions)
    assert "| stage |" in outputs[6] and "quant_emb" in outputs[6]
    assert "| stage | backend |" in outputs[7]
