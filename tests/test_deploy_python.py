"""FastDeploy Python demo against Paddle Inference (run_eval.py's engine) on the shared export.
The demo runs in a subprocess: FastDeploy cannot share a process with paddle 2.6."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import utils

DEMO = os.path.join(utils.PROJECT_DIR, "deploy", "python", "infer_demo.py")


def run_demo(model_dir, backend, texts, tmp_path):
    logits = str(tmp_path / f"{backend}.npz")
    proc = subprocess.run(
        [sys.executable, DEMO, "--model_dir", model_dir, "--backend", backend, "--logits_file", logits, "--batch_size", "16"],
        input="\n".join(texts) + "\n", capture_output=True, text=True, timeout=300,
    )
    return proc, logits


@pytest.mark.parametrize("backend", ["paddle", "ort"])
def test_fastdeploy_backend_matches_paddle_inference(backend, trained, synthetic_splits, tmp_path):
    model_dir = os.path.join(trained, "infer_model")
    texts = [u.text for u in synthetic_splits["test"][:100]]
    proc, logits_file = run_demo(model_dir, backend, texts, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    reference = utils.InferenceModel(model_dir)
    assert results == reference.predict(texts)
    encoded = [reference.encode(t) for t in texts]
    preds = utils.predict_encoded(encoded, reference.logits, reference.tokenizer.pad_id, batch_size=16)
    got = np.load(logits_file)
    assert np.abs(got["intent"] - np.stack([p.intent_logits for p in preds])).max() <= 1e-4
    assert np.abs(got["slots"] - np.concatenate([p.slot_logits for p in preds])).max() <= 1e-4


def test_openvino_backend_reports_what_it_cannot_convert(trained, tmp_path):
    """Known limitation (OpenVINO's Paddle frontend and ERNIE's 0-D fill_constant): a clear
    message and a failing exit code, never a silent wrong answer."""
    proc, _ = run_demo(os.path.join(trained, "infer_model"), "openvino", ["导航去人民公园"], tmp_path)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "FastDeploy backend 'openvino' cannot run" in proc.stderr and "fill_constant" in proc.stderr
