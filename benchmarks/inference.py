"""Inference benchmark: every exported stage x backend x CPU threads, on real test utterances.

    python benchmarks/inference.py                      # the README's run (NLPCC stages)
    python benchmarks/inference.py --stages_dir output/demo-compress/compress/stages \
        --test_file data/prepared/test.txt --output_dir output/demo-benchmark

For each cell: batch-1 latency p50/p90/p99 over --num_utterances test utterances after warm-up,
split into tokenization, model and post-processing (decoding to the JSON result); batch-32
throughput over the whole test file; test sentence accuracy; peak RSS; model size on disk.
Every cell runs in a fresh process (latency.py), so RSS is its own and FastDeploy never shares a
process with paddle (FastDeploy 1.0.7 crashes when paddle 2.6 is loaded). A backend that cannot load or run a
stage is recorded with its error, not dropped. Speedups are ratios to the fp32 stage on the same
backend and threads, measured in the same run. Writes benchmark.json, benchmark.md and PNG plots.
"""
import argparse
import os
import time

import numpy as np

from backends import BACKENDS, model_size_mb
from export_format import GRAPH_FILE
from latency import measure_in_subprocess
from utils import load_json, markdown_table, save_figure, save_json, write_text

DEFAULT_BACKENDS = ["paddle-inference", "fastdeploy-ort", "fastdeploy-openvino"]


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


def add_speedups(cells):
    """Ratios against the fp32 stage on the same backend and threads (same run)."""
    base = {(c["backend"], c["threads"]): c for c in cells if c["stage"] == "fp32" and "error" not in c}
    for c in cells:
        ref = base.get((c["backend"], c["threads"]))
        if ref and "error" not in c:
            c["speedup_p50_vs_fp32"] = ref["latency_ms"]["p50"] / c["latency_ms"]["p50"]
            c["speedup_throughput_vs_fp32"] = c["throughput_batch32_utt_per_s"] / ref["throughput_batch32_utt_per_s"]


def markdown(result) -> str:
    header = ["stage", "backend", "threads", "size (MB)", "sentence acc / ref (%)", "p50 / p90 / p99 (ms)",
              "tokenize / model / post (ms)", "batch-32 (utt/s)", "peak RSS (MB)", "p50 speedup vs fp32"]
    rows = []
    for c in result["cells"]:
        head = [c["stage"], c["backend"], c["threads"], f"{c['size_mb']:.2f}"]
        if "error" in c:
            rows.append(head + [f"cannot run: {c['error'].replace('|', '/')}"] + [""] * 5)
            continue
        lat, split = c["latency_ms"], c["latency_mean_ms"]
        rows.append(head + [
            f"{100 * c['sentence_acc']:.2f} / {100 * c['sentence_acc_ref']:.2f}",
            f"{lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f}",
            f"{split['tokenization']:.3f} / {split['model']:.3f} / {split['postprocess']:.3f}",
            f"{c['throughput_batch32_utt_per_s']:.0f}", f"{c['peak_rss_mb']:.0f}", f"{c.get('speedup_p50_vs_fp32', float('nan')):.2f}x"])
    intro = (f"Test file: `{result['test_file']}` ({result['cells'][0].get('test_utterances', '?')} utterances); batch-1 latency over "
             f"{result['num_utterances']} utterances after {result['warmup']} warm-up; CPU: {result['cpu']}.")
    return "\n".join([intro, ""] + markdown_table(header, rows, right_aligned_from=2)) + "\n"


def plot(result, output_dir: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in result["cells"] if "error" not in c]
    stages = list(dict.fromkeys(c["stage"] for c in result["cells"]))
    backends = list(dict.fromkeys(c["backend"] for c in result["cells"]))
    threads = sorted({c["threads"] for c in result["cells"]})
    paths = []

    fig, axes = plt.subplots(1, len(threads), figsize=(6 * len(threads), 4.5), sharey=True, squeeze=False)
    width = 0.8 / len(backends)
    for ax, t in zip(axes[0], threads):
        for b_i, backend in enumerate(backends):
            values = [next((c["latency_ms"]["p50"] for c in cells if (c["stage"], c["backend"], c["threads"]) == (s, backend, t)), 0) for s in stages]
            ax.bar(np.arange(len(stages)) + b_i * width, values, width, label=backend)
        ax.set_xticks(np.arange(len(stages)) + 0.4 - width / 2)
        ax.set_xticklabels(stages, rotation=25, ha="right", fontsize=8)
        ax.set_title(f"batch-1 p50 latency, {t} thread(s)")
        ax.set_ylabel("ms (tokenization + model + post-processing)")
        ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(output_dir, "latency_p50.png"))
    save_figure(fig, paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    best = {}
    for c in cells:  # one point per stage: its accuracy and size do not depend on the backend
        best.setdefault(c["stage"], c)
    for stage, c in best.items():
        ax.scatter(c["size_mb"], 100 * c["sentence_acc"], s=40)
        ax.annotate(stage, (c["size_mb"], 100 * c["sentence_acc"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("model size on disk (MB)")
    ax.set_ylabel("test sentence accuracy, strict (%)")
    ax.set_title("size vs accuracy per stage")
    fig.tight_layout()
    paths.append(os.path.join(output_dir, "size_vs_accuracy.png"))
    save_figure(fig, paths[-1], dpi=110)
    plt.close(fig)

    one_thread = [c for c in cells if c["threads"] == threads[0]]
    fig, ax = plt.subplots(figsize=(max(7, 0.55 * len(one_thread)), 4.5))
    bottom = np.zeros(len(one_thread))
    for phase in ("tokenization", "model", "postprocess"):
        values = np.array([c["latency_mean_ms"][phase] for c in one_thread])
        ax.bar(range(len(one_thread)), values, bottom=bottom, label=phase)
        bottom += values
    ax.set_xticks(range(len(one_thread)))
    ax.set_xticklabels([f"{c['stage']}\n{c['backend']}" for c in one_thread], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("mean ms per utterance")
    ax.set_title(f"where batch-1 time goes, {threads[0]} thread(s)")
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(output_dir, "latency_split.png"))
    save_figure(fig, paths[-1], dpi=110)
    plt.close(fig)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages_dir", default="output/nlpcc2018-nano-scratch-compress/compress/stages",
                        help="a compression run's stages/ folder (fp32 and every compressed stage, each exported)")
    parser.add_argument("--extra_stage", action="append", default=[],
                        help="another exported directory to measure beside the stages (repeatable), e.g. a distilled student")
    parser.add_argument("--test_file", default="data/prepared/nlpcc2018/test.txt", help="labelled test split (prepare_data.py output)")
    parser.add_argument("--output_dir", default="benchmarks/results", help="where benchmark.json/.md and the PNG plots go")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), help=f"comma-separated, from {', '.join(BACKENDS)}")
    parser.add_argument("--threads", default="1,2", help="comma-separated CPU thread counts")
    parser.add_argument("--num_utterances", type=int, default=1000, help="batch-1 latency samples (test utterances, cycled if fewer)")
    parser.add_argument("--warmup", type=int, default=50, help="batch-1 calls before timing starts")
    args = parser.parse_args(argv)

    if not os.path.isfile(args.test_file):
        raise SystemExit(f"{args.test_file}: no such test file; prepare the data first (make data / make train-nlpcc)")
    backends = args.backends.split(",")
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"unknown backend(s) {sorted(unknown)}; choose from {sorted(BACKENDS)}")
    threads = [int(t) for t in args.threads.split(",")]
    stages = stage_dirs(args.stages_dir) + args.extra_stage
    os.makedirs(args.output_dir, exist_ok=True)

    cells, total, start = [], len(stages) * len(backends) * len(threads), time.time()
    for stage in stages:
        for backend in backends:
            for t in threads:
                measured = measure_in_subprocess(stage, backend, t, args.test_file, args.num_utterances, args.warmup)
                cell = {"stage": stage_name(stage), "size_mb": model_size_mb(stage), **measured}
                cells.append(cell)
                status = cell.get("error") or f"p50 {cell['latency_ms']['p50']:.3f} ms, {cell['throughput_batch32_utt_per_s']:.0f} utt/s"
                print(f"[{len(cells)}/{total} {time.time() - start:.0f}s] {cell['stage']} / {backend} / {t} thread(s): {status}", flush=True)
    add_speedups(cells)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown")
    result = {"test_file": args.test_file, "stages_dir": args.stages_dir, "num_utterances": args.num_utterances,
              "warmup": args.warmup, "cpu": f"{cpu}, {os.cpu_count()} cores", "backends": {b: BACKENDS[b].description for b in backends}, "cells": cells}
    save_json(os.path.join(args.output_dir, "benchmark.json"), result)
    table = markdown(result)
    write_text(os.path.join(args.output_dir, "benchmark.md"), table)
    plots = plot(result, args.output_dir)
    print(table)
    print("wrote", ", ".join([os.path.join(args.output_dir, "benchmark.json"), os.path.join(args.output_dir, "benchmark.md")] + plots))


if __name__ == "__main__":
    main()
