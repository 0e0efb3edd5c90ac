"""Shared fixtures: the synthetic splits, the real corpus when present, one small model trained,
evaluated and exported once per session through run_train.py itself, the edge-case utterances
every front end is run on, and how their results are compared."""
import json
import os
import subprocess
import sys

import pytest

import task
import utils
from data import prepare_data
from data.corpus import read_corpus

SHARED_CORPUS = os.path.join(utils.PROJECT_DIR, "..", "shared", "data", "nlpcc2018", "corpus.train.txt")
EDGE_CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "edge_cases.json")
FASTDEPLOY_DEMO = os.path.join(utils.PROJECT_DIR, "deploy", "python", "infer_demo.py")


def confidences(record):
    """Every confidence of a result record, in a fixed order (intent, ranking, slots)."""
    return ([record["confidence"]] if "confidence" in record else []) + [
        item["confidence"] for key in ("intent_ranking", "slots") for item in record.get(key, [])]


def strip_confidence(records):
    """Records without their confidences (the ranking's order and intents stay)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "confidence"}
        return [strip(v) for v in value] if isinstance(value, list) else value
    return [strip(r) for r in records]


def assert_same_records(got, expected, confidence_tolerance=2e-4):
    """Result records identical but for the rounding of confidences. (A tie in the ranking or a
    fallback decision that a rounding difference flips would show here as a real difference.)"""
    assert strip_confidence(got) == strip_confidence(expected)
    for g, e in zip(got, expected):
        assert confidences(g) == pytest.approx(confidences(e), abs=confidence_tolerance)


def run_fastdeploy_demo(model_dir, backend, texts, *flags):
    """deploy/python/infer_demo.py's records for `texts` (stdin lines), in a subprocess:
    FastDeploy cannot share a process with paddle 2.6."""
    proc = subprocess.run([sys.executable, FASTDEPLOY_DEMO, "--model_dir", model_dir, "--backend", backend, *flags],
                          input="".join(t + "\n" for t in texts), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="session")
def edge_cases():
    """Utterances a front end must answer the same way as every other (tests/edge_cases.json)."""
    with open(EDGE_CASES, encoding="utf-8") as f:
        return [case["text"] for case in json.load(f)]


@pytest.fixture(scope="session")
def labels():
    return task.LabelMaps.from_files()


@pytest.fixture(scope="session")
def corpus_path():
    if not os.path.isfile(SHARED_CORPUS):
        pytest.skip("NLPCC 2018 corpus not present at ../shared/data/nlpcc2018/")
    return SHARED_CORPUS


@pytest.fixture(scope="session")
def corpus(corpus_path, labels):
    return read_corpus(corpus_path, labels)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    prepare_data.main(["--synthetic", "--output_dir", out])
    return out


@pytest.fixture(scope="session")
def synthetic_splits(synthetic_dir, labels):
    return {name: read_corpus(os.path.join(synthetic_dir, f"{name}.txt"), labels) for name in ("train", "dev", "test")}


@pytest.fixture(scope="session")
def trained(synthetic_dir, tmp_path_factory):
    """Output directory of a short from-scratch nano run with one turn of session context: train ->
    eval -> export (context-free models are trained in test_training.py)."""
    import run_train

    out = str(tmp_path_factory.mktemp("trained"))
    run_train.main([
        "--from_scratch", "--model_name_or_path", "ernie-3.0-tiny-nano-v2-zh", "--context_turns", "1",
        "--data_dir", synthetic_dir, "--output_dir", out,
        "--do_train", "--do_eval", "--do_export",
        "--num_train_epochs", "3", "--learning_rate", "1e-3", "--warmup_ratio", "0.1",
        "--per_device_train_batch_size", "64", "--logging_steps", "10", "--seed", "42", "--disable_tqdm", "true",
    ])
    return out


@pytest.fixture(scope="session")
def cpp_demo():
    """deploy/cpp's slu_demo, built with `make cpp` (cmake + g++ + the openvino pip wheel)."""
    proc = subprocess.run(["make", "-s", "cpp"], cwd=utils.PROJECT_DIR, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return os.path.join(utils.PROJECT_DIR, "build", "cpp", "slu_demo")
