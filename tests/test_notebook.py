"""notebooks/ernie_tiny_slu.ipynb runs headlessly from top to bottom (fast mode) and shows what
each step promises: data statistics, test metrics, the compression report, predictions from the
exported model and the benchmark table and plots."""
import json
import os

import nbformat
from nbclient import NotebookClient

import utils

NOTEBOOK = os.path.join(utils.PROJECT_DIR, "notebooks", "ernie_tiny_slu.ipynb")


def text_of(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.extend(str(v) for k, v in out.get("data", {}).items() if k in ("text/plain", "text/markdown"))
    return "".join(parts)


def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("SLU_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("SLU_NOTEBOOK_OUTPUT", str(tmp_path / "nb"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": os.path.join(utils.PROJECT_DIR, "notebooks")}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [text_of(c) for c in code]
    assert "train: 2402 utterances" in outputs[1]
    assert "'intent_acc'" in outputs[2] and "'sentence_acc_ref'" in outputs[2]
    assert "| stage |" in outputs[3] and "quant_emb" in outputs[3]
    predictions = [json.loads(line) for line in outputs[4].splitlines() if line.startswith('{"text"')]
    assert [p["text"] for p in predictions] == ["导航去北京", "打电话给 13812345678", "播放周杰伦的稻香"]
    assert all({"intent", "confidence", "slots"} <= set(p) for p in predictions)
    assert "导航去人民公园" in outputs[5]
    images = [o for o in code[6].outputs if "image/png" in o.get("data", {})]
    assert "| stage | backend |" in outputs[6] and len(images) == 3
