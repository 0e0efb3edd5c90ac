"""Inference benchmark: every exported stage x backend x CPU threads, on real test utterances.

    python benchmarks/inference.py                      # docs/performance.md's run (NLPCC stages)
    python benchmarks/inference.py --stages_dir output/demo-compress/compress/stages \
        --test_file data/prepared/test.txt --output_dir output/demo-benchmark

For each cell: batch-1 latency p50/p90/p99 over --num_utterances test utterances after warm-up,
split into tokenization, model and post-processing (decoding to the JSON result); batch-32
throughput over the whole test file; test sentence accuracy; peak RSS; model size on disk; the
precision the backend runs the stage in; the model's operations per second and, with
benchmarks/ceiling.py's ceiling.json in --output_dir, their share of this CPU's peak.
Every cell runs in a fresh process (latency.py), so RSS is its own and FastDeploy never shares a
process with paddle (FastDeploy 1.0.7 crashes when paddle 2.6 is loaded). A backend that cannot load or run a
stage is recorded with its error, not dropped. Speedups are ratios to the fp32 stage on the same
backend and threads, and on fastdeploy-ort (the baseline), measured in the same run. Writes
benchmark.json, benchmark.md and PNG plots; --report_only writes them again from the JSON.
"""
import argparse
import os
import time

import numpy as np

import export_format
import onnx_graph
from backends import BACKENDS, model_size_mb, precision
from latency import measure_in_subprocess, stage_dirs, stage_name
from utils import load_json, markdown_table, save_figure, save_json, write_text

DEFAULT_BACKENDS = ["paddle-inference", "fastdeploy-ort", "fastdeploy-openvino", "onnxruntime", "onnxruntime-int8", "openvino-f32",
                    "openvino-bf16"]
BASELINE_BACKEND = "fastdeploy-ort"  # the project's fp32 deployment before the direct runtimes
# What every cell's predictions are compared with: the stage computed in fp32. The onnxruntime backend
# runs every graph on fp32 kernels (a QAT stage: its fake-quantized weights, fp32 activations) and gives
# Paddle Inference's predictions on fp32 graphs (tests/test_backends.py).
REFERENCE_BACKEND = "onnxruntime"


def add_speedups(cells):
    """Ratios against the fp32 stage on the same backend and threads, and against the fp32 stage on
    fastdeploy-ort at the same threads (same run)."""
    base = {(c["backend"], c["threads"]): c for c in cells if c["stage"] == "fp32" and "error" not in c}
    for c in cells:
        if "error" in c:
            continue
        for key, ref in (("fp32", base.get((c["backend"], c["threads"]))), ("baseline", base.get((BASELINE_BACKEND, c["threads"])))):
            if ref:
                c[f"speedup_p50_vs_{key}"] = ref["latency_ms"]["p50"] / c["latency_ms"]["p50"]
                c[f"speedup_throughput_vs_{key}"] = c["throughput_batch32_utt_per_s"] / ref["throughput_batch32_utt_per_s"]


def add_agreement(cells):
    """Share of test utterances whose intent and tags equal the reference backend's on the same
    stage and threads; the per-utterance keys are dropped afterwards."""
    reference = {(c["stage"], c["threads"]): c["prediction_keys"] for c in cells if c["backend"] == REFERENCE_BACKEND and "error" not in c}
    for c in cells:
        keys = c.pop("prediction_keys", None)
        ref = reference.get((c["stage"], c["threads"]))
        if keys is not None and ref is not None:
            c["agreement_with_reference"] = float(np.mean(np.array(keys) == np.array(ref)))


def add_work(cells, stages, ceiling):
    """Each cell's model GOP/s (matrix-product operations of its timed utterances / model time) and
    its share of this CPU's peak in the cell's precision at its thread count (ceiling.json)."""
    for directory in stages:
        mine = [c for c in cells if c["model_dir"] == directory and "error" not in c]
        lengths = {int(n) for c in mine for n in c["latency_row_lengths"]}
        ops = onnx_graph.ops_per_length_of(directory, lengths) if mine else {}
        for c in mine:
            if not ops:
                continue
            work = sum(ops[int(n)] * rows for n, rows in c["latency_row_lengths"].items()) / c["latency_utterances"]
            c["model_gops"] = work / (c["latency_mean_ms"]["model"] / 1000) / 1e9
            peak = (ceiling or {}).get("peak_gops", {}).get(str(c["threads"]), {}).get(c["precision"])
            if peak:
                c["percent_of_peak"] = 100 * c["model_gops"] / peak


def markdown(result) -> str:
    header = [
        "stage",
        "backend",
        "precision",
        "threads",
        "size (MB)",
        "sentence acc / ref (%)",
        f"same as {REFERENCE_BACKEND} (%)",
        "p50 / p90 / p99 (ms)",
        "tokenize / model / post (ms)",
        "model GOP/s (% of peak)",
        "batch-32 (utt/s)",
        "peak RSS (MB)",
        "p50 speedup vs fp32",
        f"p50 speedup vs fp32 {BASELINE_BACKEND}",
    ]
    rows = []
    for c in result["cells"]:
        head = [c["stage"], c["backend"], c["precision"], c["threads"], f"{c['size_mb']:.2f}"]
        if "error" in c:
            rows.append(head + [f"cannot run: {c['error'].replace('|', '/')}"] + [""] * 8)
            continue
        work = f"{c['model_gops']:.1f}" if "model_gops" in c else "n/a"
        work += f" ({c['percent_of_peak']:.0f} %)" if "percent_of_peak" in c else ""
        lat, split = c["latency_ms"], c["latency_mean_ms"]
        rows.append(head + [
            f"{100 * c['sentence_acc']:.2f} / {100 * c['sentence_acc_ref']:.2f}",
            f"{100 * c['agreement_with_reference']:.2f}" if "agreement_with_reference" in c else "n/a",
            f"{lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f}",
            f"{split['tokenization']:.3f} / {split['model']:.3f} / {split['postprocess']:.3f}", work,
            f"{c['throughput_batch32_utt_per_s']:.0f}", f"{c['peak_rss_mb']:.0f}", f"{c.get('speedup_p50_vs_fp32', float('nan')):.2f}x",
            f"{c.get('speedup_p50_vs_baseline', float('nan')):.2f}x"])
    intro = (f"Test file: `{result['test_file']}` ({result['cells'][0].get('test_utterances', '?')} utterances); batch-1 latency over "
             f"{result['num_utterances']} utterances after {result['warmup']} warm-up; CPU: {result['cpu']}.")
    if result.get("rounds", 1) > 1:
        intro += (f" Each cell was measured in {result['rounds']} rounds that took the cells in turn; the round with the median p50 "
                  "is shown (every round's p50 and batch-32 throughput: `p50_rounds_ms`, `throughput_rounds_utt_per_s` in the JSON).")
    peaks = (result.get("ceiling") or {}).get("peak_gops")
    intro += (" Peak GOP/s of this CPU (benchmarks/ceiling.py, best GEMM at 1024^3): " + "; ".join(
        f"{t} thread(s) " + ", ".join(f"{p} {v:.0f}" for p, v in sorted(by.items())) for t, by in peaks.items()) + "."
              if peaks else " No ceiling.json beside it: run benchmarks/ceiling.py first for % of peak.")
    return "\n".join([intro, ""] + markdown_table(header, rows, right_aligned_from=3)) + "\n"


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
            values = [
                next((c["latency_ms"]["p50"] for c in cells if (c["stage"], c["backend"], c["threads"]) == (s, backend, t)), 0)
                for s in stages
            ]
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

    measured = [c for c in one_thread if "percent_of_peak" in c]
    if measured:  # how much of the machine each cell's model time uses (needs ceiling.json)
        fig, ax = plt.subplots(figsize=(max(7, 0.55 * len(measured)), 4.5))
        colours = {"fp32": "tab:blue", "int8": "tab:orange", "bf16": "tab:green"}
        ax.bar(range(len(measured)), [c["percent_of_peak"] for c in measured], color=[colours[c["precision"]] for c in measured])
        ax.set_xticks(range(len(measured)))
        ax.set_xticklabels([f"{c['stage']}\n{c['backend']}" for c in measured], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("model GOP/s as % of this CPU's peak in its precision")
        ax.set_title(f"share of the hardware limit, batch 1, {threads[0]} thread(s) (blue fp32, orange int8, green bf16)")
        fig.tight_layout()
        paths.append(os.path.join(output_dir, "percent_of_peak.png"))
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
    parser.add_argument("--only_stages", default="", help="comma-separated stage names to measure (default: all)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every cell this many times, the cells in turn; a cell reports its median-p50 round")
    parser.add_argument("--report_only", action="store_true",
                        help="measure nothing: the tables, %% of peak and plots again from --output_dir's benchmark.json and ceiling.json")
    args = parser.parse_args(argv)
    ceiling_file = os.path.join(args.output_dir, "ceiling.json")
    ceiling = load_json(ceiling_file) if os.path.isfile(ceiling_file) else None

    if args.report_only:
        result = load_json(os.path.join(args.output_dir, "benchmark.json"))
        cells = result["cells"]
        add_work(cells, list(dict.fromkeys(c["model_dir"] for c in cells)), ceiling)
        return report({**result, "ceiling": _peaks(ceiling)}, args.output_dir)
    if not os.path.isfile(args.test_file):
        raise SystemExit(f"{args.test_file}: no such test file; prepare the data first (make data / make train-nlpcc)")
    backends = args.backends.split(",")
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"unknown backend(s) {sorted(unknown)}; choose from {sorted(BACKENDS)}")
    threads = [int(t) for t in args.threads.split(",")]
    stages = stage_dirs(args.stages_dir) + args.extra_stage
    os.makedirs(args.output_dir, exist_ok=True)

    if args.only_stages:
        stages = [s for s in stages if stage_name(s) in args.only_stages.split(",")]
    plan = [(stage, backend, t) for stage in stages for backend in backends for t in threads]
    runs, start = {key: [] for key in plan}, time.time()
    for r in range(args.rounds):  # rounds take every cell in turn: the machine's drift hits them alike
        for i, (stage, backend, t) in enumerate(plan):
            measured = measure_in_subprocess(stage, backend, t, args.test_file, args.num_utterances, args.warmup, prediction_keys=True)
            runs[stage, backend, t].append(measured)
            status = (
                measured.get("error") or f"p50 {measured['latency_ms']['p50']:.3f} ms, {measured['throughput_batch32_utt_per_s']:.0f} utt/s"
            )
            print(
                f"[round {r + 1}/{args.rounds}, {i + 1}/{len(plan)}, {time.time() - start:.0f}s] "
                f"{stage_name(stage)} / {backend} / {t} thread(s): {status}",
                flush=True,
            )
    cells = []
    for (stage, backend, t), measured in runs.items():
        ok = [m for m in measured if "error" not in m]
        # the round with the median p50 stands for the cell; every round's p50 is kept
        cell = sorted(ok, key=lambda m: m["latency_ms"]["p50"])[len(ok) // 2] if ok else measured[-1]
        cells.append(
            {
                "stage": stage_name(stage),
                "size_mb": model_size_mb(stage),
                "precision": precision(backend, export_format.read(stage).config),
                **cell,
                **(
                    {
                        "p50_rounds_ms": [m["latency_ms"]["p50"] for m in ok],
                        "throughput_rounds_utt_per_s": [m["throughput_batch32_utt_per_s"] for m in ok],
                    }
                    if args.rounds > 1
                    else {}
                ),
            }
        )
    add_speedups(cells)
    add_agreement(cells)
    add_work(cells, stages, ceiling)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown")
    report(
        {
            "test_file": args.test_file,
            "stages_dir": args.stages_dir,
            "num_utterances": args.num_utterances,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "cpu": f"{cpu}, {os.cpu_count()} cores",
            "backends": {b: BACKENDS[b].description for b in backends},
            "ceiling": _peaks(ceiling),
            "cells": cells,
        },
        args.output_dir,
    )


def _peaks(ceiling):
    return ceiling and {"peak_gops": ceiling["peak_gops"], "cpu": ceiling["cpu"]}


def report(result, output_dir: str) -> None:
    save_json(os.path.join(output_dir, "benchmark.json"), result)
    table = markdown(result)
    write_text(os.path.join(output_dir, "benchmark.md"), table)
    plots = plot(result, output_dir)
    print(table)
    print("wrote", ", ".join([os.path.join(output_dir, "benchmark.json"), os.path.join(output_dir, "benchmark.md")] + plots))


if __name__ == "__main__":
    main()
