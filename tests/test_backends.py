"""The backend registry: every FastDeploy backend (through deploy/python/infer_demo.py, in a
subprocess: FastDeploy cannot share a process with paddle 2.6) and the runtimes used directly
(onnxruntime, onnxruntime-int8, openvino-f32/-bf16) against Paddle Inference on the shared export,
the work count of onnx_graph.py, and the registry's refusals."""
import collections
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    FASTDEPLOY_DEMO,
    assert_same_records,
    run_fastdeploy_demo,
    strip_confidence,
)

import backends
import export_format
import onnx_graph
import predictor
import utils

# FastDeploy 1.0.7 gives OpenVINO no precision setting, and OpenVINO's CPU plugin runs in bf16 by
# default on CPUs with avx512_bf16 (the machine of earlier sessions; f32 on an AVX2-only one): its
# logits differ by a few hundredths there, not 1e-4.
TOLERANCE = {"fastdeploy-paddle": 1e-4, "fastdeploy-ort": 1e-4, "fastdeploy-openvino": 0.1}


@pytest.mark.parametrize("backend", backends.FASTDEPLOY_BACKENDS)
def test_fastdeploy_backend_matches_paddle_inference(backend, trained, synthetic_splits, tmp_path):
    model_dir = os.path.join(trained, "infer_model")
    texts = [u.text for u in synthetic_splits["test"][:100]]
    logits_file = str(tmp_path / f"{backend}.npz")
    results = run_fastdeploy_demo(model_dir, backend, texts, "--logits_file", logits_file, "--batch_size", "16")
    reference = backends.open_predictor(model_dir)
    expected = reference.predict(texts)
    if TOLERANCE[backend] <= 1e-4:
        assert results == expected
    else:
        same = sum(a == b for a, b in zip(strip_confidence(results), strip_confidence(expected)))
        assert len(results) == len(expected) and same >= 0.99 * len(expected)
    encoded = [reference.task.encode(t) for t in texts]
    preds = predictor.run_windows(encoded, reference.logits_fn, reference.task.tokenizer.pad_id, reference.decoder, batch_size=16)
    got = np.load(logits_file)
    assert np.abs(got["intent"] - np.stack([p.intent_logits for p in preds])).max() <= TOLERANCE[backend]
    assert np.abs(got["slots"] - np.concatenate([p.slot_logits for p in preds])).max() <= TOLERANCE[backend]


def test_fastdeploy_demo_reads_sessions_and_context(trained, synthetic_splits):
    model_dir = os.path.join(trained, "infer_model")
    reference = backends.open_predictor(model_dir)
    lines = [json.dumps({"session_id": u.session_id, "text": u.text}, ensure_ascii=False) for u in synthetic_splits["test"][:60]]
    assert run_fastdeploy_demo(model_dir, "fastdeploy-ort", lines + ["{}"], "--sessions") == reference.predict_sessions(lines + ["{}"])
    texts = ["取消", "下一首"]
    assert run_fastdeploy_demo(model_dir, "fastdeploy-ort", texts, "--context", "播放稻香") == reference.predict(
        texts, histories=[["播放稻香"]] * 2
    )


def test_unknown_backend_and_fastdeploy_beside_paddle_are_refused(trained):
    model_dir = os.path.join(trained, "infer_model")
    with pytest.raises(ValueError, match="unknown backend 'ort'; choose from paddle-inference, fastdeploy-paddle"):
        backends.open_predictor(model_dir, "ort")
    assert "paddle" in sys.modules  # the test process trained the shared model
    with pytest.raises(RuntimeError, match="paddle is already loaded in this process"):
        backends.open_predictor(model_dir, "fastdeploy-ort")


def test_demo_refuses_a_broken_directory_with_a_message(trained, tmp_path):
    """A missing weights file: before the contract, FastDeploy aborted (exit 134) with its own words."""
    broken = str(tmp_path / "broken")
    shutil.copytree(os.path.join(trained, "infer_model"), broken)
    os.remove(os.path.join(broken, "model.pdiparams"))
    proc = subprocess.run(
        [sys.executable, FASTDEPLOY_DEMO, "--model_dir", broken, "--text", "导航"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1 and f"infer_demo: {broken}: missing model.pdiparams" in proc.stderr


def test_graphs_that_disagree_with_their_labels_or_give_nan_are_refused_at_load(trained, tmp_path):
    """What the file checks cannot see, a probe row through the loaded graph does: an intent label
    file one label longer (with a config and a manifest that agree with it). NaN weights are
    refused before the graph is loaded, by every front end in the same words."""
    source = os.path.join(trained, "infer_model")
    longer = str(tmp_path / "longer")
    shutil.copytree(source, longer)
    with open(os.path.join(longer, "intent_label.txt"), "a", encoding="utf-8") as f:
        f.write("weather.query\n")
    config = json.load(open(os.path.join(longer, "inference_config.json"), encoding="utf-8"))
    config["num_intents"] += 1
    config["intent_slot_types"]["weather.query"] = []
    json.dump(config, open(os.path.join(longer, "inference_config.json"), "w", encoding="utf-8"))
    export_format.write_manifest(longer)  # all edited on purpose: only the graph disagrees
    with pytest.raises(ValueError, match=r"longer \(paddle-inference\): model.pdmodel gives 11 intent scores but intent_label.txt has 12"):
        backends.open_predictor(longer)

    nan = str(tmp_path / "nan")
    shutil.copytree(source, nan)
    params = os.path.join(nan, "model.pdiparams")
    data = bytearray(open(params, "rb").read())
    data[-4096:] = np.full(1024, np.nan, dtype="float32").tobytes()  # the last tensors' last values
    open(params, "wb").write(bytes(data))
    with pytest.raises(ValueError, match=r"model.pdiparams: tensor \d+ of \d+ .* not finite") as error:
        backends.open_predictor(nan)
    proc = subprocess.run([sys.executable, FASTDEPLOY_DEMO, "--model_dir", nan, "--backend", "fastdeploy-ort", "--text", "导航"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and f"infer_demo: {error.value}" in proc.stderr and proc.stdout == ""


def _session_lines(utterances):
    return [json.dumps({"session_id": u.session_id, "text": u.text}, ensure_ascii=False) for u in utterances]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino-f32"])
def test_direct_runtime_matches_paddle_inference(backend, trained, synthetic_splits):
    """ONNX Runtime and OpenVINO used directly, fp32: the same records as Paddle Inference on the
    whole test split, each utterance with its session's context, and logits within 1e-4 on a
    padded batch (windows of different lengths in one call)."""
    model_dir = os.path.join(trained, "infer_model")
    reference, direct = backends.open_predictor(model_dir), backends.open_predictor(model_dir, backend)
    lines = _session_lines(synthetic_splits["test"])
    assert_same_records(
        direct.predict_sessions(lines), reference.predict_sessions(lines)
    )  # two runtimes: fp32 rounding may move a 4th decimal
    ids = utils.pad_batch(
        [reference.task.encode(u.text).windows[0] for u in synthetic_splits["test"][:16]], reference.task.tokenizer.pad_id
    )
    for got, expected in zip(direct.logits_fn(ids), reference.logits_fn(ids)):
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4


def test_attention_blocks_become_one_operator_with_the_same_logits(trained, synthetic_splits):
    """fuse_attention: each of the 4 layers' self-attention (Q/K/V projections, scaled Q.K^T, padding
    mask, softmax, P.V, head merge) becomes one Attention node; the logits of rows of different
    lengths in one padded batch stay within 1e-5 of the graph as converted. A graph without the
    pattern is left as it is."""
    import onnx
    import onnxruntime as ort

    exported = export_format.read(os.path.join(trained, "infer_model"))
    converted, fused = onnx_graph.from_paddle(exported), onnx_graph.fuse_attention(onnx_graph.from_paddle(exported))
    kinds = collections.Counter(n.op_type for n in fused.graph.node)
    assert kinds["Attention"] == 4 and kinds["Softmax"] == kinds["Transpose"] == 0 and kinds["MatMul"] == 4 * 3 + 3
    ids = utils.pad_batch([exported.task.encode(u.text).windows[0] for u in synthetic_splits["test"][:16]], exported.task.tokenizer.pad_id)
    assert len({int((row != exported.task.tokenizer.pad_id).sum()) for row in ids}) > 1  # the mask matters
    run = lambda model: ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {export_format.INPUT_NAME: ids}
    )
    for got, expected in zip(run(fused), run(converted)):
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5
    plain = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Softmax", ["x"], ["y"])], "softmax_only",
                                                          [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
                                                          [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])]))
    assert onnx_graph.fuse_attention(onnx.ModelProto.FromString(plain.SerializeToString())) == plain


def test_int8_runtime_runs_integer_kernels_and_agrees(trained, synthetic_splits):
    """onnxruntime-int8: every weight product of the graph runs on integer kernels: the Q/K/V
    projections inside QAttention, the output and FFN products of the 4 layers, the pooler and the
    two heads; the attention products inside QAttention stay fp32; every weight on 7 bits (no
    saturation in AVX2's uint8 x int8 pair products); >= 99.5 % of the test split gets the fp32
    graph's intent and tags."""
    from onnx import numpy_helper

    model_dir = os.path.join(trained, "infer_model")
    graph = onnx_graph.quantize_int8(onnx_graph.fuse_attention(onnx_graph.from_paddle(export_format.read(model_dir))))
    kinds = collections.Counter(n.op_type for n in graph.graph.node)
    assert kinds["QAttention"] == 4 and kinds["MatMulInteger"] == 4 * 3 + 3 and kinds["MatMul"] == kinds["Attention"] == 0
    weights = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    integer = [weights[n.input[1]] for n in graph.graph.node if n.op_type in ("MatMulInteger", "QAttention")]
    assert len(integer) == 19 and all(
        w.dtype == np.int8 and -64 <= w.min() and w.max() <= 64 and int(w.max()) - int(w.min()) > 100 for w in integer
    )
    fp32, int8 = backends.open_predictor(model_dir, "onnxruntime"), backends.open_predictor(model_dir, "onnxruntime-int8")
    test = synthetic_splits["test"]
    same = [
        (a.intent_id, a.tag_ids) == (b.intent_id, b.tag_ids) for a, b in zip(fp32.corpus_predictions(test), int8.corpus_predictions(test))
    ]
    assert len(same) == len(test) and np.mean(same) >= 0.995
    assert abs(int8.evaluate(test)["sentence_acc"] - fp32.evaluate(test)["sentence_acc"]) <= 0.01


def test_bf16_runs_where_the_cpu_has_it_and_is_refused_elsewhere(trained, synthetic_splits):
    """OpenVINO compiles a bf16 request as f32 on a CPU without bf16 and says nothing: the backend
    refuses instead. Where the CPU has it, >= 99.5 % of the test split as fp32."""
    import openvino

    model_dir = os.path.join(trained, "infer_model")
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(RuntimeError, match="openvino-bf16: this CPU cannot run bf16 .*OpenVINO would run f32 instead"):
            backends.open_predictor(model_dir, "openvino-bf16")
        return
    fp32, bf16 = backends.open_predictor(model_dir, "openvino-f32"), backends.open_predictor(model_dir, "openvino-bf16")
    test = synthetic_splits["test"]
    same = [
        (a.intent_id, a.tag_ids) == (b.intent_id, b.tag_ids) for a, b in zip(fp32.corpus_predictions(test), bf16.corpus_predictions(test))
    ]
    assert np.mean(same) >= 0.995


def test_matmul_ops_count_the_nano_encoder_by_hand(trained):
    """ERNIE 3.0 nano (hidden 312, FFN 1248, 4 layers) on a row of L tokens: per layer Q, K, V and
    output projections (4 x L x 312 x 312), FFN (2 x L x 312 x 1248), Q.K^T and P.V (2 x L x L x
    312); then the pooler on [CLS], the intent head and the slot head on every token; x2 for
    multiply + add. The int8 graph does the same work."""
    exported = export_format.read(os.path.join(trained, "infer_model"))
    graph = onnx_graph.from_paddle(exported)
    intents, tags = exported.config["num_intents"], exported.config["num_slot_tags"]
    for n in (5, 9, 40):
        expected = 2 * (4 * (4 * n * 312 * 312 + 2 * n * 312 * 1248 + 2 * n * n * 312) + 312 * 312 + 312 * intents + n * 312 * tags)
        assert onnx_graph.matmul_ops(graph, n) == expected
    assert onnx_graph.ops_per_length_of(os.path.join(trained, "infer_model"), [9, 5]) == {
        5: onnx_graph.matmul_ops(graph, 5),
        9: onnx_graph.matmul_ops(graph, 9),
    }
    assert onnx_graph.matmul_ops(onnx_graph.quantize_int8(graph), 9) == onnx_graph.matmul_ops(graph, 9)


@pytest.mark.parametrize("backend", ["paddle-inference", "onnxruntime", "onnxruntime-int8", "openvino-f32"])
def test_an_answer_does_not_depend_on_the_rest_of_the_batch(backend, trained, synthetic_splits):
    """The same utterances answered alone, in batches of 32 and of 7 in another order: the same
    records, confidences included. onnxruntime-int8 quantizes activations with one scale per call,
    so in a batch one user's utterance moved another's confidences (203 of 600 answers under load)."""
    p = backends.open_predictor(os.path.join(trained, "infer_model"), backend)
    texts = [u.text for u in synthetic_splits["test"][:96]] + ["导航去北京", "播放周杰伦的稻香然后导航去第一人民医院" * 3]
    alone = [p.predict([t], batch_size=1)[0] for t in texts]
    assert p.predict(texts, batch_size=32) == alone
    order = list(range(len(texts)))[::-1]
    assert [p.predict([texts[i] for i in order], batch_size=7)[k] for k in range(len(texts))] == [alone[i] for i in order]


@pytest.mark.parametrize("backend", backends.FASTDEPLOY_BACKENDS)
def test_a_fastdeploy_answer_does_not_depend_on_the_rest_of_the_batch(backend, trained, synthetic_splits):
    texts = [u.text for u in synthetic_splits["test"][:64]] + ["导航去北京", "播放周杰伦的稻香然后导航去第一人民医院" * 3]
    model_dir = os.path.join(trained, "infer_model")
    alone = run_fastdeploy_demo(model_dir, backend, texts, "--batch_size", "1")
    assert run_fastdeploy_demo(model_dir, backend, texts[::-1], "--batch_size", "32")[::-1] == alone
