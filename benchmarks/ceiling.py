"""How far from this CPU's limit the model runs: the work of one utterance, and the peak of matrix
multiplication on this machine in each precision, with the runtimes the project uses.

    python benchmarks/ceiling.py                        # docs/performance.md's run (NLPCC stages)
    python benchmarks/ceiling.py --stages_dir output/demo-compress/compress/stages \
        --test_file data/prepared/test.txt --output_dir output/demo-benchmark

1. GEMM micro-benchmark: one MatMul graph (ONNX) at the model's own shapes (rows = the test
   split's median tokens per utterance; weights as in its graph) and at 1024^3, on ONNX Runtime
   and OpenVINO, 1 and 2 threads: fp32; int8 (the same graph with QuantizeLinear/DequantizeLinear
   around it, which both runtimes run as integer kernels); bf16 (OpenVINO's inference precision)
   where the CPU has it (on a CPU without, OpenVINO quietly compiles f32: not measured, said so).
   The peak of a precision is its fastest 1024^3 call.
2. Work per utterance of every stage: the operations of its matrix products (onnx_graph.py) at the
   test split's real row lengths (with session context), and the floor it sets: work / peak.
3. What pays on this CPU: the fp32 stage's model-only batch-1 time with ONNX Runtime as converted,
   with its graph optimizations, its transformer fusions and onnx_graph's attention fusion; OpenVINO compiled for dynamic
   shapes against a static shape (the most common length).
benchmarks/inference.py reads ceiling.json to show each latency row's GOP/s and % of peak.
Writes ceiling.json, ceiling.md and ceiling.png.
"""
import argparse
import collections
import os
import time

import numpy as np

import export_format
import onnx_graph
from backends import openvino_options
from data.corpus import read_corpus
from latency import stage_dirs, stage_name
from utils import markdown_table, pad_batch, save_figure, save_json, write_text

LARGE = (1024, 1024, 1024)
CPU_FLAGS = ("fma", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def test_rows(directory: str, test_file: str):
    """The padded input ids of every test utterance predicted alone with its session's earlier
    turns (what latency.py times), [rows, tokens] each."""
    task = export_format.read(directory).task
    test = read_corpus(test_file, task.labels)
    histories = task.corpus_histories(test)
    return [pad_batch(task.encode(u.text, h).windows, task.tokenizer.pad_id) for u, h in zip(test, histories)]


def row_lengths(inputs) -> collections.Counter:
    """tokens per row -> rows"""
    lengths = collections.Counter()
    for ids in inputs:
        lengths[ids.shape[1]] += ids.shape[0]
    return lengths


def gemm_graph(m: int, k: int, n: int, int8: bool) -> bytes:
    """Y = X @ W with X [m, k] fp32 and a random W [k, n]; int8: X quantized to uint8 and W held in
    int8, each dequantized before the MatMul (the QDQ form both runtimes fold into integer kernels)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    if int8:
        inits += [
            numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "Wq"),
            numpy_helper.from_array(np.array(0.02, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
            numpy_helper.from_array(np.array(0.01, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
        ]
        nodes += [helper.make_node("QuantizeLinear", ["X", "x_scale", "x_zero"], ["Xq"]),
                  helper.make_node("DequantizeLinear", ["Xq", "x_scale", "x_zero"], ["Xd"]),
                  helper.make_node("DequantizeLinear", ["Wq", "w_scale", "w_zero"], ["W"]),
                  helper.make_node("MatMul", ["Xd", "W"], ["Y"])]
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W"))
        nodes.append(helper.make_node("MatMul", ["X", "W"], ["Y"]))
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_graph.OPSET)]).SerializeToString()


def runner(runtime: str, precision: str, graph: bytes, threads: int):
    """A function of the input that runs `graph` once on the runtime; None if the CPU lacks the precision."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {session.get_inputs()[0].name: x})
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(graph, b""), "CPU", openvino_options("bf16" if precision == "bf16" else "f32", threads))
    if precision == "bf16" and compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() != "bf16":
        return None
    request = compiled.create_infer_request()
    return lambda x: request.infer([x])


def time_calls(fn, inputs, min_seconds: float = 0.5) -> np.ndarray:
    """Seconds of each fn(x) over `inputs` (cycled), after a warm-up, for at least min_seconds."""
    for x in inputs[:10]:
        fn(x)
    times, start, i = [], time.perf_counter(), 0
    while time.perf_counter() - start < min_seconds or len(times) < 20:
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
        i += 1
    return np.array(times)


def gemm_rows(shapes, threads_list, with_bf16: bool):
    rows = []
    kinds = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
    for threads in threads_list:
        for m, k, n in shapes:
            x = [np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)]
            for runtime, precision in kinds + ([("openvino", "bf16")] if with_bf16 else []):
                seconds = time_calls(runner(runtime, precision, gemm_graph(m, k, n, precision == "int8"), threads), x)
                rows.append({"runtime": runtime, "precision": precision, "threads": threads, "shape": [m, k, n],
                             "microseconds": float(np.median(seconds)) * 1e6, "gops": 2 * m * k * n / np.median(seconds) / 1e9,
                             "best_gops": 2 * m * k * n / seconds.min() / 1e9})
                print(f"GEMM {runtime} {precision} {threads}t {m}x{k}x{n}: {rows[-1]['gops']:.1f} GOP/s", flush=True)
    return rows


def peaks(rows) -> dict:
    """{threads: {precision: the fastest single 1024^3 call of any runtime, GOP/s}}: the limit is
    what the machine reaches at its best (its speed drifts with its neighbours), not a median."""
    out = collections.defaultdict(dict)
    for r in rows:
        if r["shape"] == list(LARGE):
            out[str(r["threads"])][r["precision"]] = max(out[str(r["threads"])].get(r["precision"], 0), r["best_gops"])
    return dict(out)


def runtime_options(directory: str, lengths: collections.Counter, test_inputs, rounds: int = 3) -> list:
    """Model-only batch-1 milliseconds of the fp32 stage, 1 thread, under each runtime setting: the
    median of `rounds` rounds that take the settings in turn (this machine's speed drifts by
    +-20 % over minutes)."""
    import onnxruntime as ort
    import openvino as ov

    exported = export_format.read(directory)
    converted = onnx_graph.from_paddle(exported).SerializeToString()
    fused = onnx_graph.fuse_transformer(onnx_graph.from_paddle(exported)).SerializeToString()
    rows = []
    for name, graph, level in (
        ("onnxruntime, graph as converted (basic optimizations)", converted, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("onnxruntime, all graph optimizations", converted, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        ("onnxruntime, + transformer fusions", fused, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        (
            "onnxruntime, + attention fusion (backend onnxruntime)",
            onnx_graph.for_onnxruntime(exported),
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        ),
    ):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.graph_optimization_level = 1, level
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        rows.append({"setting": name, "inputs": "test utterances", "data": test_inputs,
                     "call": lambda x, s=session: s.run(None, {export_format.INPUT_NAME: x})})
    common = lengths.most_common(1)[0][0]
    same_length = [x for x in test_inputs if x.shape == (1, common)]
    core = ov.Core()
    for name, shape in (
        ("openvino f32, dynamic shape (backend openvino-f32)", None),
        (f"openvino f32, static shape [1, {common}]", [1, common]),
    ):
        model = core.read_model(exported.path(export_format.GRAPH_FILE))
        if shape:
            model.reshape(shape)
        request = core.compile_model(model, "CPU", openvino_options("f32", 1)).create_infer_request()
        rows.append({"setting": name, "inputs": f"test utterances of {common} tokens", "data": same_length,
                     "call": lambda x, r=request: r.infer([x])})
    times = collections.defaultdict(list)
    for _ in range(rounds):
        for r in rows:
            times[r["setting"]].append(1000 * float(np.median(time_calls(r["call"], r["data"], 1.0))))
    out = [
        {"setting": r["setting"], "inputs": r["inputs"], "ms": float(np.median(times[r["setting"]])), "rounds_ms": times[r["setting"]]}
        for r in rows
    ]
    for r in out:
        print(f"{r['setting']}: {r['ms']:.3f} ms", flush=True)
    return out


def markdown(result) -> str:
    cpu = result["cpu"]
    lines = [f"CPU: {cpu['model']}, {cpu['cores']} cores; flags: {', '.join(cpu['flags']) or 'none of ' + ', '.join(CPU_FLAGS)}; "
             f"OpenVINO CPU capabilities: {', '.join(cpu['openvino_capabilities'])}.", "",
             "Matrix multiplication, GOP/s (2 x multiply-adds per second; median of repeated runs):", ""]
    lines += markdown_table(["runtime", "precision", "threads", "shape (m x k x n)", "GOP/s (median)", "GOP/s (best call)", "µs (median)"],
                            [[r["runtime"], r["precision"], r["threads"], "x".join(map(str, r["shape"])), f"{r['gops']:.1f}",
                              f"{r['best_gops']:.1f}", f"{r['microseconds']:.1f}"] for r in result["gemm"]], right_aligned_from=2)
    if result["bf16"] != "measured":
        lines += ["", f"bf16: {result['bf16']}"]
    lines += [
        "",
        "Peak (the fastest 1024x1024x1024 call), GOP/s: "
        + "; ".join(f"{t} thread(s): " + ", ".join(f"{p} {v:.1f}" for p, v in sorted(by.items())) for t, by in result["peak_gops"].items()),
        "",
        f"Work per utterance on `{result['test_file']}` (matrix products at the real row lengths, batch 1) "
        "and the floor it sets at 1 thread:",
        "",
    ]
    peak1 = result["peak_gops"].get("1", {})
    rows = []
    for s in result["stages"]:
        if s["gop_per_utterance"] is None:
            rows.append([s["stage"], "cannot convert to ONNX", "", ""])
            continue
        rows.append(
            [
                s["stage"],
                f"{s['gop_per_utterance']:.4f}",
                *(f"{1000 * s['gop_per_utterance'] / peak1[p]:.3f}" if p in peak1 else "n/a" for p in ("fp32", "int8")),
            ]
        )
    lines += markdown_table(["stage", "GOP / utterance", "floor at fp32 peak (ms)", "floor at int8 peak (ms)"], rows, right_aligned_from=1)
    lines += ["", "What pays on this CPU (fp32 stage, model only, batch 1, 1 thread, median):", ""]
    lines += markdown_table(
        ["setting", "inputs", "ms"],
        [[r["setting"], r["inputs"], f"{r['ms']:.3f}"] for r in result["runtime_options"]],
        right_aligned_from=2,
    )
    return "\n".join(lines) + "\n"


def plot(result, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["gemm"] if r["threads"] == 1]
    shapes = list(dict.fromkeys("x".join(map(str, r["shape"])) for r in rows))
    series = list(dict.fromkeys(f"{r['runtime']} {r['precision']}" for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        values = [
            next((r["gops"] for r in rows if f"{r['runtime']} {r['precision']}" == name and "x".join(map(str, r["shape"])) == s), 0)
            for s in shapes
        ]
        ax.bar(np.arange(len(shapes)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(shapes)) + 0.4 - width / 2)
    ax.set_xticklabels(shapes, fontsize=8)
    ax.set_ylabel("GOP/s, 1 thread")
    ax.set_title("matrix multiplication on this CPU: model shapes and 1024^3")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--stages_dir", default="output/nlpcc2018-nano-scratch-compress/compress/stages", help="a compression run's stages/"
    )
    parser.add_argument("--extra_stage", action="append", default=[], help="another exported directory (repeatable)")
    parser.add_argument("--test_file", default="data/prepared/nlpcc2018/test.txt", help="labelled test split")
    parser.add_argument("--output_dir", default="benchmarks/results", help="where ceiling.json/.md/.png go")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts of the GEMM micro-benchmark")
    parser.add_argument("--large", action=argparse.BooleanOptionalAction, default=True, help="also the 1024^3 GEMM (the peak)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.test_file):
        raise SystemExit(f"{args.test_file}: no such test file; prepare the data first (make data / make train-nlpcc)")
    import openvino as ov

    stages = stage_dirs(args.stages_dir) + args.extra_stage
    first = stages[0]
    test_inputs = test_rows(first, args.test_file)
    lengths = row_lengths(test_inputs)
    median = int(np.median(list(lengths.elements())))
    # the encoder's shapes: the three largest distinct weights (the heads are ~1 % of the work)
    weight_shapes = sorted(set(_weight_shapes(first)), key=lambda kn: -kn[0] * kn[1])[:3]
    shapes = [(median, k, n) for k, n in weight_shapes] + ([LARGE] if args.large else [])
    with_bf16 = runner("openvino", "bf16", gemm_graph(4, 4, 4, False), 1) is not None
    gemm = gemm_rows(shapes, [int(t) for t in args.threads.split(",")], with_bf16)

    stage_rows = []
    for directory in stages:
        inputs = test_rows(directory, args.test_file)  # a stage may tokenize differently (pruned vocabulary, student)
        stage_lengths = row_lengths(inputs)
        ops = onnx_graph.ops_per_length_of(directory, stage_lengths)
        total = sum(ops[n] * rows for n, rows in stage_lengths.items()) if ops else None
        stage_rows.append({"stage": stage_name(directory), "directory": directory,
                           "gop_per_utterance": total / len(inputs) / 1e9 if total else None})
    cpu_flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    result = {
        "cpu": {
            "model": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown"),
            "cores": os.cpu_count(),
            "flags": [f for f in CPU_FLAGS if f in cpu_flags],
            "openvino_capabilities": list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        },
        "test_file": args.test_file,
        "median_row_tokens": median,
        "row_lengths": {str(n): c for n, c in sorted(lengths.items())},
        "gemm": gemm,
        "peak_gops": peaks(gemm),
        "stages": stage_rows,
        "bf16": "measured" if with_bf16 else "not measured: this CPU has no bf16 (OpenVINO compiles a bf16 request as f32)",
        "runtime_options": runtime_options(first, lengths, test_inputs),
    }
    os.makedirs(args.output_dir, exist_ok=True)
    save_json(os.path.join(args.output_dir, "ceiling.json"), result)
    write_text(os.path.join(args.output_dir, "ceiling.md"), markdown(result))
    plot(result, os.path.join(args.output_dir, "ceiling.png"))
    print(markdown(result))


def _weight_shapes(directory: str):
    """(k, n) of every MatMul whose second operand is a weight in the stage's graph."""
    model = onnx_graph.from_paddle(export_format.read(directory))
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    return [
        tuple(weights[node.input[1]]) for node in model.graph.node if node.op_type == "MatMul" and len(weights.get(node.input[1], [])) == 2
    ]


if __name__ == "__main__":
    main()
