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


def strip_confidence(results):
    return [{k: v for k, v in r.items() if k != "confidence"} for r in results]


# FastDeploy 1.0.7 gives OpenVINO no precision setting, and OpenVINO's CPU plugin runs in bf16 by
# default on CPUs with avx512_bf16 (this one): its logits differ by a few hundredths, not 1e-4.
TOLERANCE = {"paddle": 1e-4, "ort": 1e-4, "openvino": 0.1}


@pytest.mark.parametrize("backend", ["paddle", "ort", "openvino"])
def test_fastdeploy_backend_matches_paddle_inference(backend, trained, synthetic_splits, tmp_path):
    model_dir = os.path.join(trained, "infer_model")
    texts = [u.text for u in synthetic_splits["test"][:100]]
    proc, logits_file = run_demo(model_dir, backend, texts, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    reference = utils.InferenceModel(model_dir)
    expected = reference.predict(texts)
    if TOLERANCE[backend] <= 1e-4:
        assert results == expected
    else:
        same = sum(a == b for a, b in zip(strip_confidence(results), strip_confidence(expected)))
        assert len(results) == len(expected) and same >= 0.99 * len(expected)
    encoded = [reference.encode(t) for t in texts]
    preds = utils.predict_encoded(encoded, reference.logits, reference.tokenizer.pad_id, batch_size=16)
    got = np.load(logits_file)
    assert np.abs(got["intent"] - np.stack([p.intent_logits for p in preds])).max() <= TOLERANCE[backend]
    assert np.abs(got["slots"] - np.concatenate([p.slot_logits for p in preds])).max() <= TOLERANCE[backend]
