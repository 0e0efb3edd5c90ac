"""Does an answer depend on the rest of its batch, and what does keeping it independent cost?

    python benchmarks/batch_independence.py --model_dir output/nlpcc2018-nano-scratch/infer_model \
        --test_file data/prepared/nlpcc2018/test.txt

onnxruntime-int8 quantizes the activations with one scale per call, over every row and pad of the
batch; the project's backend therefore runs each row alone, without padding (backends.per_row).
This script runs the test split (each utterance with its session's earlier turns) two ways on the
same ONNX Runtime session: one call per batch ("per call", what the backend did before) and one
call per row ("rows alone", what it does). For each: how many records at batch 32 differ from the
same utterance answered alone at batch 1 (confidences included; must be 0), the batch-32 throughput
and the batch-1 p50 latency, over --rounds rounds alternating the two (ratios within one run).
Writes batch_independence.json and batch_independence.md to --output_dir.
"""
import argparse
import os
import time

import numpy as np

import export_format
from backends import onnxruntime_logits, per_row
from data.corpus import read_corpus
from predictor import Predictor
from utils import cpu_threads, markdown_table, save_json, write_text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="an exported directory (any stage)")
    parser.add_argument("--test_file", required=True, help="labelled split in the corpus format: its utterances, with their sessions")
    parser.add_argument("--cpu_threads", type=int, default=1, help="ONNX Runtime threads; 0 = one per core")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds per mode, alternating")
    parser.add_argument("--latency_utterances", type=int, default=300, help="utterances timed one by one per round")
    parser.add_argument("--output_dir", default="benchmarks/results")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    exported = export_format.read(args.model_dir)
    batched = onnxruntime_logits(exported, cpu_threads(args.cpu_threads), int8=True)
    modes = {"per call": batched, "rows alone": per_row(batched, exported.task.tokenizer.pad_id)}
    test = read_corpus(args.test_file, exported.task.labels)
    texts = [u.text for u in test]
    histories = exported.task.corpus_histories(test)
    predictors = {name: Predictor.from_exported(exported, fn) for name, fn in modes.items()}

    result = {"model_dir": args.model_dir, "test_file": args.test_file, "utterances": len(texts), "threads": cpu_threads(args.cpu_threads),
              "rounds": args.rounds, "modes": {}}
    for name, p in predictors.items():
        alone = [p.predict([t], 1, [h])[0] for t, h in zip(texts, histories)]
        together = p.predict(texts, 32, histories)
        differ = sum(a != b for a, b in zip(alone, together))
        intents = sum(a.get("intent") != b.get("intent") for a, b in zip(alone, together))
        result["modes"][name] = {"batch32_records_unlike_batch1": differ, "batch32_intents_unlike_batch1": intents,
                                 "throughput_batch32_utt_per_s": [], "latency_batch1_p50_ms": []}
        print(f"{name}: {differ} of {len(texts)} batch-32 records differ from batch 1 ({intents} intents)", flush=True)
    timed = list(zip(texts, histories))[: args.latency_utterances]
    for r in range(args.rounds):
        for name, p in (predictors.items() if r % 2 == 0 else reversed(predictors.items())):
            start = time.perf_counter()
            p.predict(texts, 32, histories)
            throughput = len(texts) / (time.perf_counter() - start)
            latencies = []
            for t, h in timed:
                start = time.perf_counter()
                p.predict([t], 1, [h])
                latencies.append(1000 * (time.perf_counter() - start))
            cell = result["modes"][name]
            cell["throughput_batch32_utt_per_s"].append(round(throughput, 1))
            cell["latency_batch1_p50_ms"].append(round(float(np.median(latencies)), 3))
            print(f"round {r + 1} {name}: {throughput:.0f} utt/s at batch 32, batch-1 p50 {np.median(latencies):.3f} ms", flush=True)
    for cell in result["modes"].values():
        cell["median_throughput_batch32_utt_per_s"] = float(np.median(cell["throughput_batch32_utt_per_s"]))
        cell["median_latency_batch1_p50_ms"] = float(np.median(cell["latency_batch1_p50_ms"]))
    per_call, alone = result["modes"]["per call"], result["modes"]["rows alone"]
    result["throughput_ratio_rows_alone_vs_per_call"] = (
        alone["median_throughput_batch32_utt_per_s"] / per_call["median_throughput_batch32_utt_per_s"]
    )

    os.makedirs(args.output_dir, exist_ok=True)
    save_json(os.path.join(args.output_dir, "batch_independence.json"), result)
    rows = [[name, f"{c['batch32_records_unlike_batch1']} ({c['batch32_intents_unlike_batch1']} intents)",
             f"{c['median_throughput_batch32_utt_per_s']:.0f} ({', '.join(f'{v:.0f}' for v in c['throughput_batch32_utt_per_s'])})",
             f"{c['median_latency_batch1_p50_ms']:.3f}"] for name, c in result["modes"].items()]
    write_text(os.path.join(args.output_dir, "batch_independence.md"), "\n".join([
        "# Batch independence of onnxruntime-int8",
        "",
        f"`{args.model_dir}` on `{args.test_file}` ({len(texts)} utterances with their sessions' context), "
        f"{result['threads']} thread(s), {args.rounds} rounds alternating the modes (written by benchmarks/batch_independence.py).",
        "",
        *markdown_table(["mode", f"batch-32 records unlike batch 1 (of {len(texts)})", "batch-32 utt/s, median (rounds)",
                         "batch-1 p50 ms, median"], rows),
        "",
        f"Rows alone reach {100 * result['throughput_ratio_rows_alone_vs_per_call']:.0f} % of the per-call throughput at batch 32.",
        "",
    ]))


if __name__ == "__main__":
    main()
