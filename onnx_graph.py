"""The exported Paddle program as an ONNX graph for the runtimes used directly (backends.py:
onnxruntime, onnxruntime-int8) and for counting the work of one utterance (benchmarks/ceiling.py,
benchmarks/inference.py). Paddle-free: paddle2onnx's C++ converter is called without the
`paddle2onnx.export` wrapper, which imports paddle.

Two findings shape it (README, "Inference speed, memory and size" / "How far from the hardware limit"):
- paddle2onnx 1.2.11 converts a QAT stage's quantize/dequantize pairs away: its ONNX graph holds
  the fake-quantized weights in fp32 and runs fp32 kernels (the paddle2onnx 1.0.7 inside
  FastDeploy keeps them: its ORT rows differ from fp32 by the activations' rounding). Integer
  kernels come from `quantize_int8`: every weight MatMul becomes int8 x uint8 with per-output-
  channel weight scales (a QAT stage's weights already lie on that grid) and the activations'
  scale taken per call.
- paddle2onnx writes weights as Constant nodes; ONNX Runtime's quantizer only sees initializers.
"""
import io
import json
import os
import sys
from typing import Dict, Iterable

import numpy as np

import export_format

OPSET = 13


def from_paddle(exported: export_format.ExportedModel):
    """The graph of an exported directory as an onnx.ModelProto, weights as initializers. A graph
    with an operator paddle2onnx cannot convert is refused with its name (paddle2onnx itself aborts
    the process)."""
    import onnx
    from paddle2onnx import paddle2onnx_cpp2py_export as p2o

    graph = exported.path(export_format.GRAPH_FILE)
    missing = sorted(set(export_format.op_types(graph)) - set(p2o.get_all_supported_operators()) - {"feed", "fetch"})
    if missing:
        raise RuntimeError(f"{graph}: paddle2onnx 1.2.11 cannot convert {', '.join(missing)} to ONNX; "
                           "run this graph on paddle-inference")
    with _quiet_stdout():  # paddle2onnx prints [Info] lines to stdout, where JSON results go
        data = p2o.export(graph, exported.path(export_format.PARAMS_FILE), OPSET,
                          True, False, True, True, True, {}, "onnxruntime", "", "", False)
    model = onnx.load_from_string(data)
    graph = model.graph
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            graph.node.append(node)
    return model


def fuse_transformer(model):
    """ONNX Runtime's transformer optimizer: LayerNorm, SkipLayerNorm (residual add + norm), Gelu
    and bias fusions. Its attention fusion does not match paddle2onnx's pattern (the query is
    scaled before Q.K^T), so attention stays as MatMul/Softmax nodes."""
    from onnxruntime.transformers.optimizer import optimize_model

    return optimize_model(model, model_type="bert", opt_level=0).model


def quantize_int8(model):
    """Every MatMul with a weight operand as an integer MatMul: int8 weights, one scale per
    output column; uint8 activations with a scale computed per call (ONNX Runtime's dynamic
    quantization). The attention products (activation x activation) stay fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = onnx.ModelProto(), io.BytesIO()
    source.CopyFrom(model)  # quantize_dynamic edits the graph it is given
    quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    return onnx.load_from_string(target.getvalue())


def for_onnxruntime(exported: export_format.ExportedModel, int8: bool = False) -> bytes:
    """The serialized graph the onnxruntime backends load."""
    model = from_paddle(exported)
    if int8:
        model = quantize_int8(model)
    return fuse_transformer(model).SerializeToString()


def matmul_ops(model, seq_len: int) -> float:
    """Operations (2 x multiply-adds) of the matrix products (MatMul, and the LSTM of the student)
    of one row of `seq_len` tokens, float or integer alike. Shapes come from ONNX shape inference with the input fixed at [1, seq_len];
    the rest of the graph (norms, softmax, GELU, adds) is O(seq_len x hidden) and left out."""
    import onnx
    from onnx import shape_inference

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for dim, value in zip(fixed.graph.input[0].type.tensor_type.shape.dim, (1, seq_len)):
        dim.Clear()
        dim.dim_value = value
    inferred = shape_inference.infer_shapes(fixed, data_prop=True)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    shapes.update({t.name: list(t.dims) for t in inferred.graph.initializer})
    def known(name: str, batch_axis: int) -> list:  # the batch axis may stay unknown: it is 1
        dims = shapes.get(name)
        if not dims or None in dims[:batch_axis] + dims[batch_axis + 1:]:
            raise ValueError(f"{node.name}: shape inference left {name} {dims} unknown")
        return [d or 1 for d in dims]

    ops = 0
    for node in inferred.graph.node:
        if node.op_type in ("MatMul", "MatMulInteger"):
            ops += 2 * int(np.prod(known(node.output[0], 0))) * known(node.input[0], 0)[-1]
        elif node.op_type == "LSTM":  # the student: X [seq, batch, in], W [dirs, 4h, in], R [dirs, 4h, h]
            (steps, batch, _), (dirs, gates, inputs), hidden = known(node.input[0], 1), known(node.input[1], 0), known(node.input[2], 0)[2]
            ops += 2 * steps * batch * dirs * gates * (inputs + hidden)
    return float(ops)


def ops_per_length(model, lengths: Iterable[int]) -> Dict[int, float]:
    """matmul_ops at each distinct row length."""
    return {n: matmul_ops(model, n) for n in sorted(set(lengths))}


def ops_per_length_of(directory: str, lengths: Iterable[int]) -> Dict[int, float]:
    """ops_per_length of an exported directory, counted in a process of its own (`python -m
    onnx_graph`): paddle2onnx aborts the process on a graph it cannot convert (a quant_emb stage's
    dequantize_log). {} when it cannot."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "onnx_graph", directory, *map(str, sorted(set(lengths)))], capture_output=True, text=True)
    return {int(n): ops for n, ops in json.loads(proc.stdout.splitlines()[-1]).items()} if proc.returncode == 0 else {}


class _quiet_stdout:
    """Points file descriptor 1 (C++ writes bypass sys.stdout) at stderr for a block."""

    def __enter__(self):
        sys.stdout.flush()
        self._saved = os.dup(1)
        os.dup2(2, 1)

    def __exit__(self, *exc):
        os.dup2(self._saved, 1)
        os.close(self._saved)


if __name__ == "__main__":  # python -m onnx_graph MODEL_DIR LENGTH... -> {"LENGTH": ops} (ops_per_length_of's worker)
    directory, *lengths = sys.argv[1:]
    counted = ops_per_length(from_paddle(export_format.read(directory)), [int(n) for n in lengths])
    print(json.dumps({str(n): ops for n, ops in counted.items()}))
