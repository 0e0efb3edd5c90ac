"""The runtimes that run an exported graph, behind one registry: `open_predictor(model_dir,
backend)` reads and validates the directory (export_format), starts the runtime and returns the
Predictor. Runtimes are imported only when asked for: FastDeploy 1.0.7 crashes when paddle 2.6
is loaded in the same process, so a process uses paddle-inference or the fastdeploy-* backends,
never both (the benchmark gives each measurement a process of its own). The runtimes used directly
(onnxruntime, onnxruntime-int8: the graph converted by onnx_graph.py; openvino-f32/-bf16: the Paddle
program read as deploy/cpp reads it) share a process with paddle. `precision` says what each
backend's matrix products run in: docs/performance.md's deployment advice comes from benchmarks/inference.py."""
import os
import sys
from typing import Callable, Dict, NamedTuple, Sequence

import numpy as np

import export_format
import onnx_graph
from predictor import LogitsFn, Predictor
from utils import cpu_threads, prefer_avx2_mkl
from values import read_catalogue


class Backend(NamedTuple):
    description: str
    load: Callable[[export_format.ExportedModel, int], LogitsFn]  # (exported, threads) -> logits function
    precision: str = "fp32"  # what its matrix products run in
    qat_int8: bool = False  # runs a QAT stage's quantize/dequantize pairs as int8 kernels (else in fp32)
    # rows of one call change each other's results (per_row): each row then runs alone, without padding
    rows_alone: bool = False


def precision(backend: str, exported_config: dict) -> str:
    """fp32, bf16 or int8: the arithmetic of the matrix products of this graph on this backend."""
    b = BACKENDS[backend]
    return "int8" if b.qat_int8 and exported_config.get("onednn_int8") else b.precision


def _cannot_run(backend: str, exported: export_format.ExportedModel, error: Exception) -> RuntimeError:
    """A converter's failure in one line: the operator it could not convert, else its first line."""
    lines = str(error).splitlines()
    reason = next((line for line in lines if "Fail to convert" in line), lines[0] if lines else repr(error))
    return RuntimeError(f"{backend} cannot run {exported.directory}: {reason}")


def _paddle_inference(exported: export_format.ExportedModel, threads: int) -> LogitsFn:
    prefer_avx2_mkl()  # before paddle's MKL runs its first kernel
    from paddle import inference

    config = inference.Config(exported.path(export_format.GRAPH_FILE), exported.path(export_format.PARAMS_FILE))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads)
    config.enable_mkldnn()
    # oneDNN keeps its primitives for a bounded number of input shapes by default, fewer than the
    # row lengths an utterance stream brings, so it kept building them again (QAT int8 primitives
    # cost most to build); 0 lifts the bound (docs/performance.md#paddle-inference-at-batch-1)
    config.set_mkldnn_cache_capacity(0)
    if exported.config["onednn_int8"]:
        # QAT stages: without this Paddle Inference runs their quantize/dequantize pairs in fp32
        # plus extra operators, slower than the fp32 graph itself (docs/performance.md).
        config.enable_mkldnn_int8()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    output_names = predictor.get_output_names()
    export_format.check_graph_io(exported, predictor.get_input_names(), len(output_names), "Paddle Inference")
    input_handle = predictor.get_input_handle(predictor.get_input_names()[0])
    outputs = [predictor.get_output_handle(n) for n in output_names]

    def logits(input_ids: np.ndarray):
        input_handle.reshape(input_ids.shape)
        input_handle.copy_from_cpu(input_ids)
        predictor.run()
        intent_logits, slot_logits = (o.copy_to_cpu() for o in outputs)
        return intent_logits, slot_logits

    return logits


def _fastdeploy(engine: str) -> Callable[[export_format.ExportedModel, int], LogitsFn]:
    def load(exported: export_format.ExportedModel, threads: int) -> LogitsFn:
        if "paddle" in sys.modules:
            raise RuntimeError(f"fastdeploy-{engine}: paddle is already loaded in this process, and FastDeploy 1.0.7 crashes "
                               "beside it; run FastDeploy backends in a process of their own (deploy/python/infer_demo.py)")
        import fastdeploy as fd

        fd.set_logger(enable_info=False)  # its [INFO] lines go to stdout, where JSON results go
        option = fd.RuntimeOption()
        option.set_model_path(exported.path(export_format.GRAPH_FILE), exported.path(export_format.PARAMS_FILE), fd.ModelFormat.PADDLE)
        option.use_cpu()
        option.set_cpu_thread_num(threads)
        {"paddle": option.use_paddle_infer_backend, "ort": option.use_ort_backend, "openvino": option.use_openvino_backend}[engine]()
        if engine == "paddle":
            # The Paddle Inference bundled in FastDeploy 1.0.7 returns wrong logits on oneDNN once the
            # batch size changes between calls (1 then 2 rows: near-uniform intents), which the probe
            # row of check_graph_outputs made every run hit; without oneDNN it matches paddle 2.6.
            option.paddle_infer_option.enable_mkldnn = False
        try:
            runtime = fd.Runtime(option)
        except RuntimeError as e:
            raise _cannot_run(f"fastdeploy-{engine}", exported, e) from None
        inputs = [runtime.get_input_info(i).name for i in range(runtime.num_inputs())]
        export_format.check_graph_io(exported, inputs, runtime.num_outputs(), f"fastdeploy-{engine}")

        def logits(input_ids: np.ndarray):
            intent_logits, slot_logits = runtime.infer({inputs[0]: input_ids})
            return intent_logits, slot_logits

        return logits

    return load


def onnxruntime_logits(exported: export_format.ExportedModel, threads: int, int8: bool) -> LogitsFn:
    """The converted graph on ONNX Runtime, one call per batch (int8: activations scaled per call)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # + its own integer-MatMul fusions
    session = ort.InferenceSession(onnx_graph.for_onnxruntime(exported, int8), options, providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    export_format.check_graph_io(exported, input_names, len(session.get_outputs()), "onnxruntime-int8" if int8 else "onnxruntime")

    def logits(input_ids: np.ndarray):
        intent_logits, slot_logits = session.run(None, {input_names[0]: input_ids})
        return intent_logits, slot_logits

    return logits


def _onnxruntime(int8: bool) -> Callable[[export_format.ExportedModel, int], LogitsFn]:
    def load(exported: export_format.ExportedModel, threads: int) -> LogitsFn:
        return onnxruntime_logits(exported, threads, int8)

    return load


def per_row(logits: LogitsFn, pad_id: int) -> LogitsFn:
    """A logits function run one row at a time, each without its padding. onnxruntime-int8 quantizes
    the activations with one scale per call, taken over every row and pad of the batch: in a batch,
    one user's utterance would move another's confidences (and flip a --min_confidence threshold).
    FastDeploy's OpenVINO gives a row other confidences (by up to 1e-3) in a batch than alone. Alone
    and unpadded, a row's answer is a function of that row only, whatever batch it came in
    (tests/test_backends.py answers the same rows alone and in mixed batches on every backend)."""
    def run(input_ids: np.ndarray):
        if len(input_ids) == 1 and input_ids[0, -1] != pad_id:  # one row, unpadded: as it is
            return logits(input_ids)
        intent_rows, slot_rows = [], []
        for row in input_ids:
            length = len(row) - int(np.argmax(row[::-1] != pad_id)) if (row != pad_id).any() else len(row)
            intent_logits, slot_logits = logits(row[None, :length])
            intent_rows.append(intent_logits[0])
            slot_rows.append(slot_logits[0])
        slots = np.zeros((len(input_ids), input_ids.shape[1], slot_rows[0].shape[-1]), dtype=slot_rows[0].dtype)
        for r, row_slots in enumerate(slot_rows):  # pads keep zero slot scores: nothing reads them
            slots[r, : len(row_slots)] = row_slots
        return np.stack(intent_rows), slots

    return run


def openvino_options(precision: str, threads: int) -> dict:
    """OpenVINO CPU settings for batch-1 latency: one stream, `threads` threads, inference precision
    stated (OpenVINO's default is bf16 on CPUs that have it)."""
    return {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}


def _openvino(precision: str) -> Callable[[export_format.ExportedModel, int], LogitsFn]:
    def load(exported: export_format.ExportedModel, threads: int) -> LogitsFn:
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(exported.path(export_format.GRAPH_FILE))  # the Paddle frontend, as deploy/cpp
            compiled = core.compile_model(model, "CPU", openvino_options(precision, threads))
        except RuntimeError as e:
            raise _cannot_run(f"openvino-{precision}", exported, e) from None
        # OpenVINO quietly runs f32 where the CPU lacks bf16 (avx512_bf16 / AMX): say so instead
        runs = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if runs != precision:
            capabilities = ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            raise RuntimeError(f"openvino-{precision}: this CPU cannot run {precision} (OpenVINO's CPU capabilities: "
                               f"{capabilities}); OpenVINO would run {runs} instead")
        export_format.check_graph_io(exported, [i.get_any_name() for i in compiled.inputs], len(compiled.outputs), f"openvino-{precision}")
        request = compiled.create_infer_request()

        def logits(input_ids: np.ndarray):
            request.infer([input_ids])
            intent_logits, slot_logits = (request.get_output_tensor(i).data.copy() for i in range(2))
            return intent_logits, slot_logits

        return logits

    return load


BACKENDS: Dict[str, Backend] = {
    "paddle-inference": Backend(
        "Paddle Inference 2.6 from the paddle wheel (oneDNN; oneDNN int8 kernels for QAT graphs): run_eval.py's engine",
        _paddle_inference,
        qat_int8=True,
    ),
    "fastdeploy-paddle": Backend("Paddle Inference bundled in FastDeploy 1.0.7", _fastdeploy("paddle")),
    # FastDeploy's own paddle2onnx (1.0.7) keeps a QAT stage's quantize/dequantize pairs, which its ORT 1.12 folds into
    # integer kernels (its logits differ from the fp32 kernels' by the activations' rounding)
    "fastdeploy-ort": Backend(
        "ONNX Runtime 1.12 in FastDeploy 1.0.7 (graph converted by its paddle2onnx 1.0.7)", _fastdeploy("ort"), qat_int8=True
    ),
    "fastdeploy-openvino": Backend(
        "OpenVINO in FastDeploy 1.0.7 (Paddle frontend; bf16 on CPUs with avx512_bf16, "
        "FastDeploy has no precision setting; each row runs alone)",
        _fastdeploy("openvino"),
        qat_int8=True,
        rows_alone=True,
    ),
    "onnxruntime": Backend(
        "ONNX Runtime 1.23 used directly on the paddle2onnx graph, attention as one operator, with its transformer fusions (fp32)",
        _onnxruntime(int8=False),
    ),
    "onnxruntime-int8": Backend(
        "onnxruntime with every weight product on int8 kernels (per-channel int8 weights on 7 bits, "
        "activations quantized per call, so each row runs alone; Q/K/V inside QAttention)",
        _onnxruntime(int8=True),
        precision="int8",
        rows_alone=True,
    ),
    "openvino-f32": Backend(
        "OpenVINO 2024.6 used directly (Paddle frontend, as deploy/cpp), f32 inference precision; QAT graphs run its int8 kernels",
        _openvino("f32"),
        qat_int8=True,
    ),
    "openvino-bf16": Backend(
        "openvino-f32 with bf16 inference precision; refused on CPUs without bf16", _openvino("bf16"), precision="bf16", qat_int8=True
    ),
}
FASTDEPLOY_BACKENDS = [name for name in BACKENDS if name.startswith("fastdeploy-")]
# The default of the command-line front ends (run_eval.py, serve.py, make serve): the fastest backend that the
# tests hold to Paddle Inference's answers (test_direct_runtime_matches_paddle_inference). Paddle Inference
# itself, 2-3x slower at batch 1 on these small graphs, stays the reference of training and export checks
# (docs/performance.md#paddle-inference-at-batch-1).
FRONT_END_BACKEND = "onnxruntime"


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def open_predictor(model_dir: str, backend: str = "paddle-inference", threads: int = 0, warn_uncalibrated: bool = True,
                   catalogue_files: Sequence[str] = (), **options) -> Predictor:
    """The Predictor of an exported directory on a backend; `threads` 0 = one per core; `options`
    go to Predictor (min_confidence, decoder); `catalogue_files` (values.py) add to the export's
    catalogue. Says on stderr when the confidences were not calibrated (`warn_uncalibrated`: not
    while the export itself is being calibrated)."""
    check_backend(backend)
    exported = export_format.read(model_dir)
    for path in catalogue_files:  # a CatalogueError (a ValueError) names the file and line
        exported.task.catalogue.update(read_catalogue(path, exported.task.labels.slot_types))
    logits_fn = BACKENDS[backend].load(exported, cpu_threads(threads))
    if BACKENDS[backend].rows_alone:
        logits_fn = per_row(logits_fn, exported.task.tokenizer.pad_id)
    export_format.check_graph_outputs(exported, logits_fn, backend)
    if warn_uncalibrated and exported.calibration.fitted_on is None:  # exported without a dev split: say so where they are used
        print(f"warning: {model_dir}: confidences not calibrated (exported without a dev split; temperatures 1.0)", file=sys.stderr)
    return Predictor.from_exported(exported, logits_fn, **options)


def model_size_mb(model_dir: str) -> float:
    """Size on disk of an exported graph and its weights (what a deployment ships besides the vocabulary)."""
    files = (export_format.GRAPH_FILE, export_format.PARAMS_FILE)
    return sum(os.path.getsize(os.path.join(model_dir, f)) for f in files) / 1e6
