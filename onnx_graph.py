"""The exported Paddle program as an ONNX graph for the runtimes used directly (backends.py:
onnxruntime, onnxruntime-int8) and for counting the work of one utterance (benchmarks/ceiling.py,
benchmarks/inference.py). Paddle-free: paddle2onnx's C++ converter is called without the
`paddle2onnx.export` wrapper, which imports paddle.

Two findings shape it (docs/performance.md, "How far from the hardware limit"):
- paddle2onnx 1.2.11 converts a QAT stage's quantize/dequantize pairs away: its ONNX graph holds
  the fake-quantized weights in fp32 and runs fp32 kernels (the paddle2onnx 1.0.7 inside
  FastDeploy keeps them: its ORT rows differ from fp32 by the activations' rounding). Integer
  kernels come from `quantize_int8`: every weight MatMul becomes int8 x uint8 with per-output-
  channel weight scales (a QAT stage's weights already lie on that grid) and the activations'
  scale taken per call.
- paddle2onnx writes weights as Constant nodes; ONNX Runtime's quantizer only sees initializers.
- ONNX Runtime's transformer optimizer does not recognise paddle2onnx's self-attention (the query
  is scaled before Q.K^T), so `fuse_attention` rewrites each block into ORT's Attention operator
  itself: one packed Q/K/V product and one kernel instead of 17 operators per layer; in the int8
  graph it becomes QAttention, whose Q/K/V product runs on integer kernels too.
"""
import collections
import io
import json
import os
import sys
from typing import Dict, Iterable

import numpy as np

import export_format
import paddle_format
from utils import atomic_path

OPSET = 13
# The converted graphs as files beside an export, for deploy/cpp's ONNX Runtime engine (written by
# deploy/cpp/convert_onnx.py; slu.h kOnnxFile, kOnnxInt8File): by precision of their matrix products.
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
# Metadata key of a written graph: the manifest's sha256 of the Paddle graph and weights it was
# converted from ("<model.pdmodel> <model.pdiparams>"), so that a runtime refuses one a later export left stale.
SOURCE_KEY = "slu.source_sha256"


def from_paddle(exported: export_format.ExportedModel):
    """The graph of an exported directory as an onnx.ModelProto, weights as initializers. A graph
    with an operator paddle2onnx cannot convert is refused with its name (paddle2onnx itself aborts
    the process)."""
    import onnx
    from paddle2onnx import paddle2onnx_cpp2py_export as p2o

    graph = exported.path(export_format.GRAPH_FILE)
    missing = sorted(set(paddle_format.op_types(graph)) - set(p2o.get_all_supported_operators()) - {"feed", "fetch"})
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


class _GraphIndex:
    """Who makes and who reads each tensor of a graph, and the pattern steps fuse_attention walks;
    a step that does not match raises LookupError."""

    def __init__(self, graph, nodes):
        from onnx import numpy_helper

        self.to_array = numpy_helper.to_array
        self.producer = {out: node for node in nodes for out in node.output}
        self.consumers = collections.defaultdict(list)
        for node in nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.weights = {t.name: t for t in graph.initializer}

    def value(self, name):  # an initializer's array, else None
        return self.to_array(self.weights[name]) if name in self.weights else None

    def made_by(self, name, op_type):
        node = self.producer.get(name)
        if node is None or node.op_type != op_type:
            raise LookupError
        return node

    def only_user(self, name, op_type):
        users = self.consumers[name]
        if len(users) != 1 or users[0].op_type != op_type:
            raise LookupError
        return users[0]

    def constant(self, name, expected):
        v = self.value(name)
        if v is None or v.size != 1 or v.item() != expected:
            raise LookupError

    def projection(self, name, transpose):  # Transpose(Reshape(X @ W + b, [0, 0, H, D])) -> (X, W, b, H, D)
        t = self.made_by(name, "Transpose")
        reshape = self.made_by(t.input[0], "Reshape")
        shape, add = self.value(reshape.input[1]), self.made_by(reshape.input[0], "Add")
        (product, bias), = [(self.producer.get(a), b) for a, b in (add.input, add.input[::-1])
                            if a in self.producer and self.producer[a].op_type == "MatMul" and self.value(b) is not None]
        weight = self.value(product.input[1])
        if _perm(t) != transpose or shape is None or list(shape[:2]) != [0, 0] or weight is None:
            raise LookupError
        return product.input[0], weight, self.value(bias), int(shape[2]), int(shape[3])


def _perm(node):
    return [list(a.ints) for a in node.attribute if a.name == "perm"][0]


def _match_attention(g: _GraphIndex, softmax):
    """The attention block around `softmax` as (X, [Wq, Wk, Wv], [bq, bk, bv], heads, scale,
    padding mask, output node), or None when it is not fuse_attention's pattern."""
    try:
        add = g.made_by(softmax.input[0], "Add")
        scores, mask_term = add.input if g.producer.get(add.input[0]) and g.producer[add.input[0]].op_type == "MatMul" else add.input[::-1]
        scores = g.made_by(scores, "MatMul")
        scaled = g.made_by(scores.input[0], "Mul")
        scale = g.value(scaled.input[1])
        x, wq, bq, heads, _ = g.projection(scaled.input[0], [0, 2, 1, 3])
        xk, wk, bk, _, _ = g.projection(scores.input[1], [0, 2, 3, 1])
        context = g.only_user(softmax.output[0], "MatMul")
        xv, wv, bv, _, _ = g.projection(context.input[1], [0, 2, 1, 3])
        merge = g.only_user(context.output[0], "Transpose")
        out = g.only_user(merge.output[0], "Reshape")
        times_big = g.made_by(mask_term, "Mul")
        g.constant(times_big.input[1], -10000.0)
        one_minus = g.made_by(times_big.input[0], "Add")
        g.constant(one_minus.input[1], 1.0)
        negated = g.made_by(one_minus.input[0], "Mul")
        g.constant(negated.input[1], -1.0)
        padding = g.made_by(g.made_by(negated.input[0], "Cast").input[0], "Unsqueeze").input[0]
        if scale is None or scale.size != 1 or not x == xk == xv or _perm(merge) != [0, 2, 1, 3]:
            return None
    except (LookupError, ValueError):
        return None
    return x, (wq, wk, wv), (bq, bk, bv), heads, scale.item(), padding, out


def _live_nodes_in_order(graph, nodes) -> list:
    """The nodes the graph's outputs still need, each after the nodes its inputs come from (in
    waves of the nodes whose inputs are ready, so a fused node goes where its input is)."""
    by_output = {out: node for node in nodes for out in node.output}
    needed, stack = set(), [o.name for o in graph.output]
    while stack:
        node = by_output.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.input)
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered, pending = [], [n for n in nodes if id(n) in needed]
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            raise RuntimeError(f"fuse_attention: {pending[0].name} has an input nothing computes")
        for node in runnable:
            ready.update(node.output)
        ordered.extend(runnable)
        done = {id(n) for n in runnable}
        pending = [n for n in pending if id(n) not in done]
    return ordered


def fuse_attention(model):
    """Each self-attention block of paddle2onnx's pattern as one com.microsoft Attention node; the
    model is edited and returned. The block (per layer, X the layer's input, M the [batch, seq]
    0/1 padding mask the graph computes from the input ids):

        Q = Transpose_0213(Reshape(X @ Wq + bq, [0, 0, H, D])) * scale
        K = Transpose_0231(Reshape(X @ Wk + bk, ...)),  V = Transpose_0213(Reshape(X @ Wv + bv, ...))
        out = Reshape(Transpose_0213(Softmax(Q @ K + (1 - Unsqueeze(M)) * -10000) @ V), [0, 0, H * D])

    becomes Attention(X, [Wq|Wk|Wv], [bq|bk|bv], int32(M); num_heads=H, scale, mask_filter_value
    -10000): the same arithmetic. A Softmax outside that pattern is left as it is."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    nodes = list(graph.node)  # one Python object per node: identities are compared below
    index = _GraphIndex(graph, nodes)
    fused, replaced, mask = [], set(), None
    for softmax in [n for n in nodes if n.op_type == "Softmax"]:
        match = _match_attention(index, softmax)
        if match is None:
            continue
        x, weights, biases, heads, scale, padding, out = match
        if mask is None:
            mask = padding + ".int32"
            fused.append(helper.make_node("Cast", [padding], [mask], to=TensorProto.INT32, name=mask))
        name = f"Attention_{len(replaced)}"
        graph.initializer.extend([numpy_helper.from_array(np.concatenate(weights, 1), name + ".qkv_weight"),
                                  numpy_helper.from_array(np.concatenate(biases), name + ".qkv_bias")])
        fused.append(helper.make_node("Attention", [x, name + ".qkv_weight", name + ".qkv_bias", mask], list(out.output), name=name,
                                      domain="com.microsoft", num_heads=heads, scale=scale, mask_filter_value=-10000.0))
        replaced.add(id(out))
    if not replaced:
        return model
    # the replaced blocks' nodes are now dead: keep what the outputs still need
    ordered = _live_nodes_in_order(graph, [n for n in nodes if id(n) not in replaced] + fused)
    used = {i for n in ordered for i in n.input}
    tensors = [t for t in graph.initializer if t.name in used]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(ordered)
    graph.initializer.extend(tensors)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def fuse_transformer(model):
    """ONNX Runtime's transformer optimizer: LayerNorm, SkipLayerNorm (residual add + norm), Gelu
    and bias fusions (attention: fuse_attention)."""
    from onnxruntime.transformers.optimizer import optimize_model

    return optimize_model(model, model_type="bert", opt_level=0).model


def quantize_int8(model):
    """Every MatMul with a weight operand as an integer MatMul: int8 weights on 7 bits ([-64, 64]),
    one scale per output column; uint8 activations with a scale computed per call (ONNX Runtime's
    dynamic quantization). An Attention node becomes QAttention; the attention products inside it
    (activation x activation) stay fp32, as do MatMuls between two activations.

    7 bits because CPUs without VNNI (AVX2, this one) multiply uint8 x int8 pairs into int16 with
    saturation (vpmaddubsw): with 8-bit weights a pair can overflow (2 x 255 x 127 > 32767; with
    |w| <= 64 it cannot), which cost the width-0.5 QAT stage 0.19 points of test sentence accuracy
    (84.25 on fp32 kernels -> 84.06; 7 bits: 84.34) and the fp32 model 0.09 (84.20 -> 84.11; 7
    bits: 84.29). With no pair saturating, the integer results are the same on VNNI CPUs too."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = onnx.ModelProto(), io.BytesIO()
    source.CopyFrom(model)  # quantize_dynamic edits the graph it is given
    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=["MatMul", "Attention"],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )  # type of Attention's output
    return onnx.load_from_string(target.getvalue())


def onnxruntime_model(exported: export_format.ExportedModel, int8: bool = False):
    """The graph the onnxruntime backends load, as an onnx.ModelProto."""
    model = fuse_attention(from_paddle(exported))
    if int8:
        model = quantize_int8(model)
    return fuse_transformer(model)


def for_onnxruntime(exported: export_format.ExportedModel, int8: bool = False) -> bytes:
    """The serialized graph the onnxruntime backends load."""
    return onnxruntime_model(exported, int8).SerializeToString()


def source_stamp(directory: str) -> str:
    """SOURCE_KEY's value for an exported directory, from its manifest."""
    recorded = export_format.recorded_files(directory)
    return " ".join(recorded[name][1] for name in (export_format.GRAPH_FILE, export_format.PARAMS_FILE))


def write_for_onnxruntime(exported: export_format.ExportedModel, precision: str) -> str:
    """onnxruntime_model's graph written beside the export as ONNX_FILES[precision], stamped with
    source_stamp; complete or absent. Returns its path."""
    import onnx

    model = onnxruntime_model(exported, int8=precision == "int8")
    onnx.helper.set_model_props(model, {SOURCE_KEY: source_stamp(exported.directory)})
    path = exported.path(ONNX_FILES[precision])
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)
    return path


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
