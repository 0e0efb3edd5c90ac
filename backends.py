"""The runtimes that run an exported graph, behind one registry: `open_predictor(model_dir,
backend)` reads and validates the directory (export_format), starts the runtime and returns the
Predictor. Runtimes are imported only when asked for: FastDeploy 1.0.7 crashes when paddle 2.6
is loaded in the same process, so a process uses paddle-inference or the fastdeploy-* backends,
never both (the benchmark gives each measurement a process of its own)."""
import os
import sys
from typing import Callable, Dict, NamedTuple

import numpy as np

import export_format
from predictor import LogitsFn, Predictor
from utils import cpu_threads, prefer_avx2_mkl


class Backend(NamedTuple):
    description: str
    load: Callable[[export_format.ExportedModel, int], LogitsFn]  # (exported, threads) -> logits function


def _paddle_inference(exported: export_format.ExportedModel, threads: int) -> LogitsFn:
    prefer_avx2_mkl()  # before paddle's MKL runs its first kernel
    from paddle import inference

    config = inference.Config(exported.path(export_format.GRAPH_FILE), exported.path(export_format.PARAMS_FILE))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads)
    config.enable_mkldnn()
    if exported.config["onednn_int8"]:
        # QAT stages: without this Paddle Inference runs their quantize/dequantize pairs in fp32
        # plus extra operators, 3-4x slower than the fp32 graph (README, "Inference benchmark").
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
            reason = next((line for line in str(e).splitlines() if "Fail to convert" in line), str(e).splitlines()[0])
            raise RuntimeError(f"fastdeploy-{engine} cannot run {exported.directory}: {reason}") from None
        inputs = [runtime.get_input_info(i).name for i in range(runtime.num_inputs())]
        export_format.check_graph_io(exported, inputs, runtime.num_outputs(), f"fastdeploy-{engine}")

        def logits(input_ids: np.ndarray):
            intent_logits, slot_logits = runtime.infer({inputs[0]: input_ids})
            return intent_logits, slot_logits

        return logits

    return load


BACKENDS: Dict[str, Backend] = {
    "paddle-inference": Backend("Paddle Inference 2.6 from the paddle wheel (oneDNN; oneDNN int8 kernels for QAT graphs): "
                                "run_eval.py's engine", _paddle_inference),
    "fastdeploy-paddle": Backend("Paddle Inference bundled in FastDeploy 1.0.7", _fastdeploy("paddle")),
    "fastdeploy-ort": Backend("ONNX Runtime in FastDeploy 1.0.7 (graph converted by paddle2onnx)", _fastdeploy("ort")),
    "fastdeploy-openvino": Backend("OpenVINO in FastDeploy 1.0.7 (Paddle frontend; bf16 on CPUs with avx512_bf16, "
                                   "FastDeploy has no precision setting)", _fastdeploy("openvino")),
}
FASTDEPLOY_BACKENDS = [name for name in BACKENDS if name.startswith("fastdeploy-")]


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def open_predictor(model_dir: str, backend: str = "paddle-inference", threads: int = 0, **options) -> Predictor:
    """The Predictor of an exported directory on a backend; `threads` 0 = one per core; `options`
    go to Predictor (min_confidence, decoder)."""
    check_backend(backend)
    exported = export_format.read(model_dir)
    logits_fn = BACKENDS[backend].load(exported, cpu_threads(threads))
    export_format.check_graph_outputs(exported, logits_fn, backend)
    return Predictor.from_exported(exported, logits_fn, **options)


def model_size_mb(model_dir: str) -> float:
    """Size on disk of an exported graph and its weights (what a deployment ships besides the vocabulary)."""
    files = (export_format.GRAPH_FILE, export_format.PARAMS_FILE)
    return sum(os.path.getsize(os.path.join(model_dir, f)) for f in files) / 1e6
