"""Why Paddle Inference is slower than ONNX Runtime at batch 1 on this model: its own settings for
variable-length inputs, measured against ONNX Runtime on the same rows in one run.

    python benchmarks/paddle_inference_settings.py --model_dir output/nlpcc2018-nano-scratch/infer_model \
        --test_file data/prepared/nlpcc2018/test.txt --output_dir benchmarks/results

Each setting runs in a fresh process (one math thread): the test utterances' first rows with their
session context, at batch 1, after a warm-up, in --rounds passes; p50 and mean per call. Settings:
as backends.py configures it (oneDNN, its cache of primitives per input shape unbounded), oneDNN
with that cache at its default bound and at 10 shapes, without oneDNN (MKL), IR passes off with and
without oneDNN, memory optimisation, the new executor; and the `onnxruntime` backend
(`onnxruntime-int8` for a QAT stage, its fastest path). A QAT stage runs oneDNN's int8 kernels
wherever oneDNN is on. Then as configured and ONNX Runtime at batch 32 (rows of similar length
together, as predictor.run_windows batches them): a gap that shrinks with the batch is a cost per
operator call, not per row. The graph's operator count is reported beside them. Writes
paddle_inference_settings.json and .md.
"""
import argparse
import collections
import json
import os
import subprocess
import sys

from utils import load_json, markdown_table, save_json, write_text

SETTINGS = {
    "as configured (oneDNN, its shape cache unbounded)": ["mkldnn", "cache0"],
    "oneDNN, shape cache at its default": ["mkldnn"],
    "oneDNN, shape cache 10": ["mkldnn", "cache10"],
    "no oneDNN (MKL)": [],
    "oneDNN, IR passes off": ["mkldnn", "cache0", "noir"],
    "no oneDNN, IR passes off": ["noir"],
    "oneDNN, memory optimisation": ["mkldnn", "cache0", "memopt"],
    "oneDNN, new executor": ["mkldnn", "cache0", "newexec"],
    "ONNX Runtime (reference)": ["ort"],
    "as configured, batch 32": ["mkldnn", "cache0", "batch32"],
    "ONNX Runtime, batch 32": ["ort", "batch32"],
}
REFERENCE = {1: "ONNX Runtime (reference)", 32: "ONNX Runtime, batch 32"}

# One setting in a process of its own: argv = model_dir, test_file, utterances, rounds, options (JSON).
_RUN = r"""
import json, sys, time
import numpy as np
import backends, export_format
from data.corpus import read_corpus
model_dir, test_file, n, rounds, options = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
exported = export_format.read(model_dir)
task = exported.task
test = read_corpus(test_file)[:n]
rows = [np.array([task.encode(u.text, h).windows[0]], dtype="int64") for u, h in zip(test, task.corpus_histories(test))]
if "batch32" in options:  # similar lengths together, padded to the longest of each 32
    ordered = sorted((r[0] for r in rows), key=len)
    rows = [np.array([list(r) + [task.tokenizer.pad_id] * (len(ordered[min(b + 31, len(ordered) - 1)]) - len(r))
                      for r in ordered[b : b + 32]], dtype="int64") for b in range(0, len(ordered), 32)]
if "ort" in options:  # a QAT stage against ONNX Runtime's int8 kernels, the fastest path for it
    run = backends.BACKENDS[next(o[len("ref="):] for o in options if o.startswith("ref="))].load(exported, 1)
else:
    backends.prefer_avx2_mkl()
    from paddle import inference
    config = inference.Config(exported.path(export_format.GRAPH_FILE), exported.path(export_format.PARAMS_FILE))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(1)
    config.disable_glog_info()
    if "mkldnn" in options:
        config.enable_mkldnn()
        if exported.config["onednn_int8"]:  # a QAT stage: oneDNN's int8 kernels, as backends.py runs it
            config.enable_mkldnn_int8()
    if "cache0" in options:
        config.set_mkldnn_cache_capacity(0)
    if "cache10" in options:
        config.set_mkldnn_cache_capacity(10)
    if "noir" in options:
        config.switch_ir_optim(False)
    if "memopt" in options:
        config.enable_memory_optim()
    if "newexec" in options:
        config.enable_new_executor()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    outputs = [predictor.get_output_handle(name) for name in predictor.get_output_names()]
    def run(ids):
        handle.reshape(ids.shape)
        handle.copy_from_cpu(ids)
        predictor.run()
        return [o.copy_to_cpu() for o in outputs]
for ids in rows[:30]:
    run(ids)
times = []
for _ in range(rounds):
    for ids in rows:
        start = time.perf_counter()
        run(ids)
        times.append(time.perf_counter() - start)
ms = np.array(times) * 1000
print(json.dumps({"p50_ms": float(np.median(ms)), "mean_ms": float(ms.mean()), "calls": len(ms), "batch": 32 if "batch32" in options else 1,
                  "ms_per_utterance": float(ms.sum() / (rounds * len(test)))}))
"""

_OPS = r"""
import collections, json, sys
import paddle
paddle.enable_static()
program, _, _ = paddle.static.load_inference_model(sys.argv[1], paddle.static.Executor(paddle.CPUPlace()))
print(json.dumps(collections.Counter(op.type for op in program.global_block().ops).most_common()))
"""


def reference_backend(config: dict) -> str:
    return "onnxruntime-int8" if config["onednn_int8"] else "onnxruntime"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default="output/nlpcc2018-nano-scratch/infer_model", help="an exported fp32 directory")
    parser.add_argument("--test_file", default="data/prepared/nlpcc2018/test.txt", help="utterances in the corpus format")
    parser.add_argument("--num_utterances", type=int, default=300, help="test utterances timed per round")
    parser.add_argument("--rounds", type=int, default=2, help="passes over them")
    parser.add_argument("--output_dir", default="benchmarks/results", help="where the results go")
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = reference_backend(load_json(os.path.join(args.model_dir, "inference_config.json")))
    results = {}
    for name, options in SETTINGS.items():
        options = options + [f"ref={reference}"] if "ort" in options else options
        proc = subprocess.run([sys.executable, "-c", _RUN, args.model_dir, args.test_file, str(args.num_utterances), str(args.rounds),
                               json.dumps(options)], capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"{name}: exit code {proc.returncode}: {proc.stderr[-2000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: p50 {results[name]['p50_ms']:.2f} ms", flush=True)
    ops = json.loads(subprocess.run([sys.executable, "-c", _OPS, os.path.join(args.model_dir, "model")], capture_output=True,
                                    text=True, check=True, env=env).stdout.strip().splitlines()[-1])
    os.makedirs(args.output_dir, exist_ok=True)
    save_json(os.path.join(args.output_dir, "paddle_inference_settings.json"),
              {"model_dir": args.model_dir, "utterances": args.num_utterances, "rounds": args.rounds, "reference_backend": reference,
               "results": results, "operators": dict(ops)})
    table = markdown_table(["setting", "batch", "p50 per call (ms)", "mean per call (ms)", "ms per utterance",
                            "× ONNX Runtime (same batch)"],
                           [[name, r["batch"], f"{r['p50_ms']:.2f}", f"{r['mean_ms']:.2f}", f"{r['ms_per_utterance']:.3f}",
                             f"{r['ms_per_utterance'] / results[REFERENCE[r['batch']]]['ms_per_utterance']:.2f}"]
                            for name, r in results.items()])
    counts = collections.Counter(dict(ops))
    write_text(os.path.join(args.output_dir, "paddle_inference_settings.md"), "\n".join([
        "# Paddle Inference settings", "",
        f"`{args.model_dir}`: {args.num_utterances} test utterances with their session context, one row each (batch 1) or "
        f"32 rows of similar length per call (batch 32), {args.rounds} rounds, 1 thread, each setting in a fresh process, one run "
        f"on this machine. ONNX Runtime is the `{reference}` backend.", "", *table, "",
        f"The graph has {sum(counts.values())} operators: " + ", ".join(f"{n} {op}" for op, n in counts.most_common(10)) + ".", ""]))
    print("\n".join(table))


if __name__ == "__main__":
    main()
