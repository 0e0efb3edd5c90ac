"""The backend registry: every FastDeploy backend (through deploy/python/infer_demo.py, in a
subprocess: FastDeploy cannot share a process with paddle 2.6) against Paddle Inference on the
shared export, and the registry's refusals."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    FASTDEPLOY_DEMO,
    run_fastdeploy_demo,
    strip_confidence,
)

import backends
import predictor

# FastDeploy 1.0.7 gives OpenVINO no precision setting, and OpenVINO's CPU plugin runs in bf16 by
# default on CPUs with avx512_bf16 (this one): its logits differ by a few hundredths, not 1e-4.
TOLERANCE = {"fastdeploy-paddle": 1e-4, "fastdeploy-ort": 1e-4, "fastdeploy-openvino": 0.1}


@pytest.mark.parametrize("backend", backends.FASTDEPLOY_BACKENDS)
def test_fastdeploy_backend_matches_paddle_inference(backend, trained, synthetic_splits, tmp_path):
    model_dir = os.path.join(trained, "infer_model")
    texts = [u.text for u in synthetic_splits["test"][:100]]
    logits_file = str(tmp_path / f"{backend}.npz")
    results = run_fastdeploy_demo(model_dir, backend, texts, "--logits_file", logits_file, "--batch_size", "16")
    reference = backends.open_predictor(model_dir)
    expected = reference.predict(texts)
    if TOLERANCE[backend] <= 1e-4:
        assert results == expected
    else:
        same = sum(a == b for a, b in zip(strip_confidence(results), strip_confidence(expected)))
        assert len(results) == len(expected) and same >= 0.99 * len(expected)
    encoded = [reference.task.encode(t) for t in texts]
    preds = predictor.run_windows(encoded, reference.logits_fn, reference.task.tokenizer.pad_id, reference.decoder, batch_size=16)
    got = np.load(logits_file)
    assert np.abs(got["intent"] - np.stack([p.intent_logits for p in preds])).max() <= TOLERANCE[backend]
    assert np.abs(got["slots"] - np.concatenate([p.slot_logits for p in preds])).max() <= TOLERANCE[backend]


def test_fastdeploy_demo_reads_sessions_and_context(trained, synthetic_splits):
    model_dir = os.path.join(trained, "infer_model")
    reference = backends.open_predictor(model_dir)
    lines = [json.dumps({"session_id": u.session_id, "text": u.text}, ensure_ascii=False) for u in synthetic_splits["test"][:60]]
    assert run_fastdeploy_demo(model_dir, "fastdeploy-ort", lines + ["{}"], "--sessions") == reference.predict_sessions(lines + ["{}"])
    texts = ["取消", "下一首"]
    assert run_fastdeploy_demo(model_dir, "fastdeploy-ort", texts, "--context", "播放稻香") == reference.predict(texts, histories=[["播放稻香"]] * 2)


def test_unknown_backend_and_fastdeploy_beside_paddle_are_refused(trained):
    model_dir = os.path.join(trained, "infer_model")
    with pytest.raises(ValueError, match="unknown backend 'ort'; choose from paddle-inference, fastdeploy-paddle"):
        backends.open_predictor(model_dir, "ort")
    assert "paddle" in sys.modules  # the test process trained the shared model
    with pytest.raises(RuntimeError, match="paddle is already loaded in this process"):
        backends.open_predictor(model_dir, "fastdeploy-ort")


def test_demo_refuses_a_broken_directory_with_a_message(trained, tmp_path):
    """A missing weights file: before the contract, FastDeploy aborted (exit 134) with its own words."""
    broken = str(tmp_path / "broken")
    shutil.copytree(os.path.join(trained, "infer_model"), broken)
    os.remove(os.path.join(broken, "model.pdiparams"))
    proc = subprocess.run([sys.executable, FASTDEPLOY_DEMO, "--model_dir", broken, "--text", "导航"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and f"infer_demo: {broken}: missing model.pdiparams" in proc.stderr


def test_graphs_that_disagree_with_their_labels_or_give_nan_are_refused_at_load(trained, tmp_path):
    """What the file checks cannot see, a probe row through the loaded graph does: an intent label
    file one label longer (with a config that agrees with it), and NaN weights."""
    source = os.path.join(trained, "infer_model")
    longer = str(tmp_path / "longer")
    shutil.copytree(source, longer)
    with open(os.path.join(longer, "intent_label.txt"), "a", encoding="utf-8") as f:
        f.write("weather.query\n")
    config = json.load(open(os.path.join(longer, "inference_config.json"), encoding="utf-8"))
    config["num_intents"] += 1
    config["intent_slot_types"]["weather.query"] = []
    json.dump(config, open(os.path.join(longer, "inference_config.json"), "w", encoding="utf-8"))
    with pytest.raises(ValueError, match=r"longer \(paddle-inference\): model.pdmodel gives 11 intent scores but intent_label.txt has 12"):
        backends.open_predictor(longer)

    nan = str(tmp_path / "nan")
    shutil.copytree(source, nan)
    params = os.path.join(nan, "model.pdiparams")
    data = bytearray(open(params, "rb").read())
    data[-4096:] = np.full(1024, np.nan, dtype="float32").tobytes()  # the last tensors' last values
    open(params, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="outputs are not finite .* model.pdiparams is damaged"):
        backends.open_predictor(nan)
    proc = subprocess.run([sys.executable, FASTDEPLOY_DEMO, "--model_dir", nan, "--backend", "fastdeploy-ort", "--text", "导航"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "outputs are not finite" in proc.stderr and proc.stdout == ""
