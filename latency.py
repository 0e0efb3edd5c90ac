"""Speed, memory and accuracy of one exported model on one backend with one thread count, measured
in a fresh process (`measure_in_subprocess`): its RSS is its own, and FastDeploy never shares a
process with paddle. Used by benchmarks/inference.py and run_distill.py; `stage_dirs` and
`stage_name` list a compression run's stages for the benchmarks.

Batch-1 latency is split into tokenization, model and post-processing (decoding to the result
record); batch-32 throughput runs over the whole test file; accuracy is scored on it too."""
import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import time
import zlib

import numpy as np

from backends import open_predictor
from data.corpus import read_corpus
from export_format import GRAPH_FILE
from predictor import describe, merge_windows, score
from utils import load_json, pad_batch


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def measure(model_dir: str, backend: str, threads: int, test_file: str, num_utterances: int, warmup: int,
            prediction_keys: bool = False) -> dict:
    """Measured in this process; see measure_in_subprocess."""
    rss_before_model = rss_mb()
    predictor = open_predictor(model_dir, backend, threads)
    task = predictor.task
    test = read_corpus(test_file, task.labels)
    texts = [u.text for u in test]
    histories = task.corpus_histories(test)  # context of its session

    row_lengths = collections.Counter()  # tokens per graph row of the timed calls -> rows (the benchmark's work count)

    def one(text, history):
        t0 = time.perf_counter()
        enc = task.encode(text, history)
        ids = pad_batch(enc.windows, task.tokenizer.pad_id)
        t1 = time.perf_counter()
        row_lengths[ids.shape[1]] += ids.shape[0]
        intent_logits, slot_logits = predictor.logits_fn(ids)
        t2 = time.perf_counter()
        describe(merge_windows(intent_logits, slot_logits, [enc], predictor.decoder)[0], enc, task.labels)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    latency_inputs = [(texts[i % len(texts)], histories[i % len(texts)]) for i in range(num_utterances)]
    for text, history in latency_inputs[:warmup]:
        one(text, history)
    row_lengths.clear()
    phases = np.array([one(text, history) for text, history in latency_inputs]) * 1000  # ms, [n, 3]
    total = phases.sum(1)

    predictor.predict(texts[:256], batch_size=32, histories=histories[:256])  # warm-up of batch shapes
    start = time.perf_counter()
    predictor.predict(texts, batch_size=32, histories=histories)
    throughput = len(texts) / (time.perf_counter() - start)

    predictions = predictor.corpus_predictions(test, batch_size=32)
    metrics = score(test, predictions, task)
    keys = [zlib.crc32(np.array([p.intent_id, *p.tag_ids], np.int32).tobytes()) for p in predictions] if prediction_keys else None
    return {
        **({"prediction_keys": keys} if prediction_keys else {}),
        "latency_ms": {f"p{q}": float(np.percentile(total, q)) for q in (50, 90, 99)},
        "latency_mean_ms": {name: float(phases[:, i].mean()) for i, name in enumerate(("tokenization", "model", "postprocess"))},
        "latency_utterances": len(latency_inputs),
        "decoding": predictor.decoder.implementation,  # native (deploy/cpp/decoding.cc) or numpy
        "latency_row_lengths": {str(n): rows for n, rows in sorted(row_lengths.items())},
        "throughput_batch32_utt_per_s": throughput,
        **{k: metrics[k] for k in ("sentence_acc", "sentence_acc_ref", "intent_acc", "slot_f1")},
        "test_utterances": len(test),
        "rss_before_model_mb": rss_before_model,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure_in_subprocess(model_dir: str, backend: str, threads: int, test_file: str, num_utterances: int = 1000,
                          warmup: int = 50, prediction_keys: bool = False) -> dict:
    """`measure` in a fresh Python process; a backend that cannot load or run the model gives
    {"error": its own words} instead of a number. prediction_keys: also one number per test
    utterance for its intent and tags (the benchmark compares backends with them)."""
    cell = {"model_dir": model_dir, "backend": backend, "threads": threads}
    cmd = [sys.executable, "-m", "latency", "--model_dir", model_dir, "--backend", backend, "--threads", str(threads),
           "--test_file", test_file, "--num_utterances", str(num_utterances), "--warmup", str(warmup)]
    cmd += ["--prediction_keys"] if prediction_keys else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode == 0:
        return {**cell, **json.loads(proc.stdout.strip().splitlines()[-1])}
    # the backend's own words: which operators it lacks, and the final error line
    output = (proc.stdout + "\n" + proc.stderr).splitlines()  # paddle2onnx reports on stdout
    lines = [line.strip() for line in output if line.strip() and not line.strip().startswith("raise ")]
    specific = [line for line in lines if any(k in line for k in ("not supported", "unsupported", "cannot run"))]
    hints = specific or [line for line in lines if "Error" in line]
    reason = " / ".join(dict.fromkeys(hints[-2:] or lines[-1:]))
    return {**cell, "error": f"exit code {proc.returncode}: {reason[:400]}"}


def stage_dirs(stages_dir: str):
    """Stages in the order the compression report lists them, else alphabetical with fp32 first."""
    report = os.path.join(os.path.dirname(stages_dir), "compress_report.json")
    if os.path.isfile(report):
        names = [s["stage"] for s in load_json(report)["stages"]]
    else:
        names = sorted(os.listdir(stages_dir), key=lambda n: (n != "fp32", n))
    dirs = [os.path.join(stages_dir, n) for n in names if os.path.isfile(os.path.join(stages_dir, n, GRAPH_FILE))]
    if not dirs:
        raise SystemExit(f"{stages_dir}: no exported stage (model.pdmodel) found; run the compression first (make compress)")
    return dirs


def stage_name(directory: str) -> str:
    """width_mult_0.75-int8 for a stage; distilled for .../distilled/infer_model."""
    head, tail = os.path.split(os.path.normpath(directory))
    return os.path.basename(head) if tail == "infer_model" else tail

if __name__ == "__main__":  # the worker of measure_in_subprocess
    parser = argparse.ArgumentParser()
    for flag, kind in (("--model_dir", str), ("--backend", str), ("--threads", int), ("--test_file", str),
                       ("--num_utterances", int), ("--warmup", int)):
        parser.add_argument(flag, type=kind, required=True)
    parser.add_argument("--prediction_keys", action="store_true")
    a = parser.parse_args()
    print(json.dumps(measure(a.model_dir, a.backend, a.threads, a.test_file, a.num_utterances, a.warmup, a.prediction_keys)))
