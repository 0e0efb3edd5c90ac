"""Compression: vocabulary pruning, the compatibility fixes, and one short end-to-end
dynabert+qat+embeddings run over the shared trained model that exports every stage."""
import dataclasses
import os

import numpy as np
import paddle
import pytest

import backends
import compat
import compression
import export_format
import onnx_graph
import run_train
import task
from conftest import SYNTHETIC_LABELS
import utils
from compression import check_strategy, prune_vocabulary
from model import build_from_scratch

LABELS = SYNTHETIC_LABELS

STAGES = ["fp32", "pruned_vocab", "width_mult_0.75-model", "width_mult_0.75-int8", "width_mult_0.75-quant_emb"]


LOSS_CALLS = []  # JointLoss calls during the `compressed` run: (ensemble_intent or None, loss, gold-only loss, alpha)


@pytest.fixture(scope="module")
def compressed(trained, tmp_path_factory):
    # The shipped recipe: QAT also learns the model's own soft targets, DynaBERT distils slots on
    # the utterance's tokens. A larger test split than the shared one: QAT flips predictions only
    # at near-ties (about 0.5 % of them on this toy model), so ~2,400 test utterances are needed to
    # measure the >= 99 % agreement reliably; 299 or 800 left it within run-to-run noise. A small train split:
    # PaddleNLP's QAT runs whole epochs whatever --max_steps says (1,200 utterances: 19 steps).
    import model as model_module
    from data import prepare_data

    data_dir = str(tmp_path_factory.mktemp("synthetic4000"))
    prepare_data.main(["--synthetic", "--synthetic_size", "4000", "--train_fraction", "0.3", "--dev_fraction", "0.05",
                       "--output_dir", data_dir])
    out = str(tmp_path_factory.mktemp("compressed"))
    forward = model_module.JointLoss.forward

    def recording(self, logits, labels, ensemble_intent=None, ensemble_slots=None, has_gold=None):
        loss = forward(self, logits, labels, ensemble_intent, ensemble_slots, has_gold)
        LOSS_CALLS.append((ensemble_intent, float(loss), float(forward(self, logits, labels)), self.distill_alpha))
        return loss

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_module.JointLoss, "forward", recording)
        run_train.main([
            "--model_name_or_path", trained, "--data_dir", data_dir, "--output_dir", out,
            "--do_compress", "--strategy", "dynabert+qat+embeddings", "--prune_embeddings", "--max_vocab_size", "250",
            "--max_steps", "8", "--save_steps", "4", "--per_device_train_batch_size", "64", "--learning_rate", "5e-5",
            "--logging_steps", "4", "--seed", "42", "--qat_distill_alpha", "0.25", "--distill_temperature", "3",
            "--dynabert_utterance_tokens", "true",
        ])
    return os.path.join(out, "compress")


def test_every_stage_is_exported_scored_and_self_contained(compressed, synthetic_splits):
    report = utils.load_json(os.path.join(compressed, "compress_report.json"))
    assert [s["stage"] for s in report["stages"]] == STAGES
    assert os.path.isfile(os.path.join(compressed, "compress_report.md"))
    texts = [u.text for u in synthetic_splits["test"][:20]]
    for stage in report["stages"]:
        model = backends.open_predictor(stage["dir"])
        results = model.predict(texts)
        assert [r["text"] for r in results] == texts
        assert all(r["intent"] in model.task.labels.intents for r in results)
        assert 0.0 <= stage["sentence_acc"] <= stage["sentence_acc_ref"] <= 1.0
        assert stage["size_mb"] == pytest.approx(
            sum(os.path.getsize(os.path.join(stage["dir"], f)) for f in ("model.pdmodel", "model.pdiparams")) / 1e6)
    by_name = {s["stage"]: s for s in report["stages"]}
    vocab_size = lambda stage: len(task.CharTokenizer.from_file(os.path.join(by_name[stage]["dir"], "vocab.txt")))
    assert vocab_size("pruned_vocab") == 250 < vocab_size("fp32")
    # DynaBERT at width 0.75 narrows the encoder; int8 weights are stored in a quarter of the bytes
    assert by_name["width_mult_0.75-model"]["parameters"] < by_name["pruned_vocab"]["parameters"]
    assert by_name["width_mult_0.75-int8"]["size_mb"] < 0.4 * by_name["width_mult_0.75-model"]["size_mb"]
    assert by_name["width_mult_0.75-quant_emb"]["size_mb"] < by_name["width_mult_0.75-int8"]["size_mb"]
    # QAT stages run on oneDNN's int8 kernels, the others in fp32
    int8_kernels = {
        s["stage"]: utils.load_json(os.path.join(s["dir"], export_format.CONFIG_FILE)).get("onednn_int8", False) for s in report["stages"]
    }
    assert int8_kernels == {name: name.endswith(("-int8", "-quant_emb")) for name in STAGES}
    # the trained model starts far above chance and compression keeps it useful
    assert by_name["fp32"]["intent_acc"] > 0.9 and by_name["width_mult_0.75-quant_emb"]["intent_acc"] > 0.8


def test_exported_int8_graph_agrees_with_dynamic_qat_model(compressed):
    report = utils.load_json(os.path.join(compressed, "compress_report.json"))
    assert report["qat_prediction_agreement"] >= 0.99


def test_qat_stage_on_the_direct_runtimes(compressed, synthetic_splits):
    """The QAT stage (int8 weights) on onnxruntime-int8 (integer kernels) and openvino-f32 (its
    int8 kernels for the graph's quantize/dequantize pairs): >= 99.5 % of the test split as the
    stage computed in fp32 (onnxruntime: the fake-quantized weights, fp32 activations). The
    quant_emb stage is refused by name: paddle2onnx has no converter for dequantize_log."""
    stages = os.path.join(compressed, "stages")
    qat = os.path.join(stages, "width_mult_0.75-int8")
    test = synthetic_splits["test"]
    reference = [(p.intent_id, p.tag_ids) for p in backends.open_predictor(qat, "onnxruntime").corpus_predictions(test)]
    for backend in ("onnxruntime-int8", "openvino-f32"):
        got = [(p.intent_id, p.tag_ids) for p in backends.open_predictor(qat, backend).corpus_predictions(test)]
        assert np.mean([a == b for a, b in zip(got, reference)]) >= 0.995, backend
    quant_emb = os.path.join(stages, "width_mult_0.75-quant_emb")
    with pytest.raises(RuntimeError, match="paddle2onnx 1.2.11 cannot convert dequantize_log to ONNX"):
        backends.open_predictor(quant_emb, "onnxruntime-int8")
    assert onnx_graph.ops_per_length_of(quant_emb, [5]) == {} and onnx_graph.ops_per_length_of(qat, [5])[5] > 0


def test_pruned_vocabulary_round_trips(tmp_path, labels):
    texts = ["导航去北京", "北京北京", "播放 la la", "去"]
    tokenizer = task.CharTokenizer.build(texts + ["冷门字"])
    paddle.seed(0)
    model = build_from_scratch("ernie-3.0-tiny-nano-v2-zh", task.Task(tokenizer, labels, 16, task.any_slot_types(labels)))
    model.eval()
    context_task = task.Task(tokenizer, labels, 16, task.any_slot_types(labels), context_turns=1, max_context_tokens=8)
    pruned, pruned_task = prune_vocabulary(model, context_task, texts, max_vocab_size=9, output_dir=str(tmp_path))
    pruned_tok = pruned_task.tokenizer
    pruned.eval()
    # specials first, then by frequency in `texts` (ties by old id)
    assert pruned_tok.vocab == task.SPECIAL_TOKENS + ["京", "北", "a", "l"]  # 3, 3, 2, 2 uses; 去 (2) has a higher old id
    assert task.CharTokenizer.from_file(os.path.join(tmp_path, "vocab.txt")).vocab == pruned_tok.vocab
    old_emb = model.ernie.embeddings.word_embeddings.weight.numpy()
    new_emb = pruned.ernie.embeddings.word_embeddings.weight.numpy()
    for new_id, token in enumerate(pruned_tok.vocab):
        np.testing.assert_array_equal(new_emb[new_id], old_emb[tokenizer.token_to_id[token]])
    assert pruned.ernie.embeddings.position_embeddings.weight.shape == [16 + 8, 312]  # the window and the context
    assert pruned_task.context_turns == 1 and pruned.config.sep_token_id == pruned_tok.sep_id
    # text inside the kept vocabulary: identical logits, context included; dropped characters become [UNK]
    row = lambda tok, text: paddle.to_tensor([dataclasses.replace(context_task, tokenizer=tok).encode(text, ["北京 la"]).windows[0]])
    np.testing.assert_allclose(model(row(tokenizer, "北京 la"))[1].numpy(), pruned(row(pruned_tok, "北京 la"))[1].numpy(), atol=1e-6)
    assert pruned_tok.tokenize("导北")[0] == [pruned_tok.unk_id, pruned_tok.token_to_id["北"]]


def test_super_layer_norm_fix_matches_layer_norm():
    from paddleslim.nas.ofa.layers import SuperLayerNorm

    compat.apply()
    paddle.seed(0)
    layer = SuperLayerNorm(8)
    reference = paddle.nn.LayerNorm(8)
    reference.set_state_dict(layer.state_dict())
    x = paddle.randn([2, 3, 8])
    np.testing.assert_allclose(layer(x).numpy(), reference(x).numpy(), atol=1e-6)
    # a narrower input (as at DynaBERT width < 1) uses the first weights
    np.testing.assert_allclose(
        layer(x[..., :6]).numpy(),
        paddle.nn.functional.layer_norm(x[..., :6], [6], layer.weight[:6], layer.bias[:6], layer._epsilon).numpy(),
        atol=1e-6,
    )


@pytest.mark.parametrize("strategy, message", [
    ("dynabert+int4", "unknown part"), ("embeddings", "quantizes the embeddings"), ("ptq+qat", "one of ptq and qat"),
])
def test_unsupported_strategies_fail_clearly(strategy, message):
    with pytest.raises(ValueError, match=message):
        check_strategy(strategy)
    check_strategy("dynabert+qat+embeddings")


def test_prunes_a_40k_vocabulary_pretrained_directory(tmp_path, labels):
    """A plain ERNIE directory with the published vocabulary size, as a pretrained download has."""
    from paddlenlp.transformers import ErnieConfig, ErnieModel

    from model import load_pretrained
    from training import pretrained_tokenizer

    chars = list("导航去北京播放音乐")
    vocab = task.SPECIAL_TOKENS + chars + [f"[unused{i}]" for i in range(40000 - len(task.SPECIAL_TOKENS) - len(chars))]
    config = ErnieConfig(**{**ErnieConfig.pretrained_init_configuration["ernie-3.0-tiny-nano-v2-zh"], "vocab_size": 40000})
    ErnieModel(config).save_pretrained(str(tmp_path / "ernie"), safe_serialization=True)
    export_format.write_vocab(str(tmp_path / "ernie"), task.CharTokenizer(vocab))
    model, tokenizer = load_pretrained(str(tmp_path / "ernie"), labels), pretrained_tokenizer(str(tmp_path / "ernie"))
    pruned, pruned_task = prune_vocabulary(
        model, task.Task(tokenizer, labels, 16, task.any_slot_types(labels)), ["导航去北京", "播放音乐"], 8000, str(tmp_path / "pruned")
    )
    pruned_tok = pruned_task.tokenizer
    assert len(pruned_tok) == len(task.SPECIAL_TOKENS) + len(chars)  # only what the data uses survives
    assert pruned.ernie.embeddings.word_embeddings.weight.shape == [len(pruned_tok), 312]
    assert load_pretrained(str(tmp_path / "pruned"), labels).config.vocab_size == len(pruned_tok)


def test_ptq_strategy_exports_an_int8_stage(trained, synthetic_dir, tmp_path):
    """PTQ goes through the batch_generator -> data_loader adapter of compat.py."""
    out = str(tmp_path / "ptq")
    run_train.main([
        "--model_name_or_path", trained, "--data_dir", synthetic_dir, "--output_dir", out, "--do_compress",
        "--strategy", "ptq", "--algo_list", "hist", "--batch_size_list", "8", "--batch_num_list", "2",
    ])
    report = utils.load_json(os.path.join(out, "compress", "compress_report.json"))
    assert [s["stage"] for s in report["stages"]] == ["fp32", "hist8_2-int8"]
    assert "qat_distill" not in report and report["dynabert_utterance_tokens"] is False  # neither QAT nor DynaBERT ran
    fp32, int8 = report["stages"]
    assert not utils.load_json(os.path.join(int8["dir"], export_format.CONFIG_FILE))["onednn_int8"]
    assert int8["size_mb"] < 0.5 * fp32["size_mb"] and int8["intent_acc"] > 0.9 * fp32["intent_acc"]


def test_dynabert_without_a_saved_width_saves_the_final_weights(tmp_path, labels):
    class Args:
        width_mult_list = [0.5, 0.75]
        output_dir = str(tmp_path)

    class Trainer:
        args = Args()

    os.makedirs(tmp_path / "width_mult_0.5")
    open(tmp_path / "width_mult_0.5" / "model_state.pdparams", "wb").close()  # an evaluation saved this one
    model = build_from_scratch(
        "ernie-3.0-tiny-nano-v2-zh", task.Task(task.CharTokenizer.build(["导航"]), labels, 16, task.any_slot_types(labels))
    )
    training = compat._always_save_dynabert(lambda trainer, ofa_model, model: "ofa")
    assert training(Trainer(), None, model) == "ofa"
    assert os.path.getsize(tmp_path / "width_mult_0.5" / "model_state.pdparams") == 0  # left alone
    saved = paddle.load(str(tmp_path / "width_mult_0.75" / "model_state.pdparams"))
    np.testing.assert_array_equal(saved["intent_classifier.weight"].numpy(), model.intent_classifier.weight.numpy())


def test_stage_transitions_come_from_the_saved_width_else_the_input_model(tmp_path):
    fallback = np.arange(4.0).reshape(2, 2)
    assert compression.stage_transitions(str(tmp_path), None) is None  # no CRF
    assert compression.stage_transitions(str(tmp_path), fallback) is fallback  # nothing saved beside the stage
    paddle.save({"slot_transitions": paddle.to_tensor(np.ones((2, 2), dtype="float32")), "other": paddle.zeros([1])},
                str(tmp_path / "model_state.pdparams"))
    assert compression.stage_transitions(str(tmp_path), fallback).tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_compression_runs_sets_compressions_side_by_side(compressed, synthetic_dir, synthetic_splits, tmp_path):
    """benchmarks/compression_runs.py: each stage's figure as its run reported it, the QAT stage scored
    again on onnxruntime-int8, a missing run left out; with no run at all it stops and writes nothing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compression_runs", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "compression_runs.py"))
    compression_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compression_runs)
    run_dir = os.path.dirname(compressed)
    out = str(tmp_path / "results")
    compression_runs.main(["--data_dir", synthetic_dir, "--output_dir", out, "--skip_missing",
                           "--run", f"this one={run_dir}", "--run", f"not trained={tmp_path / 'missing'}"])
    result = utils.load_json(os.path.join(out, "compression_runs.json"))
    report = utils.load_json(os.path.join(compressed, "compress_report.json"))
    [run] = result["runs"]
    assert run["name"] == "this one" and run["qat_stage"] == "width_mult_0.75-int8"
    assert run["stages"] == {s["stage"]: s["sentence_acc"] for s in report["stages"]}
    qat = os.path.join(compressed, "stages", "width_mult_0.75-int8")
    assert run["qat_on_backend"] == backends.open_predictor(qat, "onnxruntime-int8", 2).evaluate(
        synthetic_splits["test"])["sentence_acc"]
    table = open(os.path.join(out, "compression_runs.md"), encoding="utf-8").read()
    assert f"| this one | {100 * run['fp32']:.2f} |" in table and "not trained" not in table
    assert f"{100 * (run['qat_on_backend'] - run['fp32']):+.2f} |" in table

    # a run moved since its report was written: its stages are read where they are now
    import shutil

    moved = str(tmp_path / "moved")
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("pruned_model", "width_mult_0.75", "teacher-logits"))
    moved_report = utils.load_json(os.path.join(moved, "compress", "compress_report.json"))
    for stage in moved_report["stages"]:
        stage["dir"] = str(tmp_path / "gone" / stage["stage"])
    utils.save_json(os.path.join(moved, "compress", "compress_report.json"), moved_report)
    compression_runs.main(["--data_dir", synthetic_dir, "--output_dir", str(tmp_path / "moved-results"), "--run", f"moved={moved}"])
    [moved_run] = utils.load_json(os.path.join(tmp_path, "moved-results", "compression_runs.json"))["runs"]
    assert moved_run["qat_on_backend"] == run["qat_on_backend"]

    empty = str(tmp_path / "empty")
    with pytest.raises(SystemExit, match="no compress/compress_report.json under any of"):
        compression_runs.main(["--data_dir", synthetic_dir, "--output_dir", empty, "--skip_missing",
                               "--run", f"not trained={tmp_path / 'missing'}"])
    assert not os.path.exists(empty)


def test_qat_learns_the_compressed_models_soft_targets(compressed):
    """--qat_distill_alpha: every QAT step's loss also learns the soft targets at T of the model as it
    entered DynaBERT and QAT (the pruned-vocabulary stage), with JointLoss's alpha: it differs from
    the gold labels' loss alone."""
    report = utils.load_json(os.path.join(compressed, "compress_report.json"))
    assert report["qat_distill"] == {"alpha": 0.25, "temperature": 3.0, "teacher": os.path.join(compressed, "stages", "pruned_vocab")}
    assert report["dynabert_utterance_tokens"] is True
    cache = os.path.join(compressed, "teacher-logits")
    [cached] = os.listdir(cache)
    with np.load(os.path.join(cache, cached)) as saved:  # the teacher's logits on the training rows
        teacher = saved["intent"] / 3.0
    teacher = np.exp(teacher - teacher.max(1, keepdims=True))
    teacher /= teacher.sum(1, keepdims=True)
    distilled = [c for c in LOSS_CALLS if c[0] is not None]
    assert len(distilled) >= 19  # every QAT step (a whole epoch of 19 batches)
    for ensemble_intent, loss, gold_loss, alpha in distilled:
        # each row's target is the teacher's softmax at T = 3 of some training row
        assert np.abs(ensemble_intent.numpy()[:, None, :] - teacher[None]).max(-1).min(-1).max() < 1e-5
        assert alpha == 0.25 and loss != pytest.approx(gold_loss)  # the soft targets' share is in it


def test_dynabert_distils_slots_on_the_utterance_tokens_only(monkeypatch):
    """slot_distillation_on_utterance_tokens: inside DynaBERT's loop (a stand-in that iterates its
    loader for two epochs and takes PaddleNLP's soft cross-entropy, as the real one does) the slot
    logits' soft cross-entropy averages over the batch's non-PAD tokens only, the intent's is
    PaddleNLP's, and both functions are PaddleNLP's again afterwards."""
    from paddlenlp.trainer import trainer_compress

    seen = []

    def loop(self, ofa_model, model, teacher_model, train_dataloader, eval_dataloader, num_train_epochs):
        for _ in range(num_train_epochs):
            for batch in train_dataloader:
                seen.append((len(train_dataloader),
                             float(trainer_compress.soft_cross_entropy(batch["slots"], batch["teacher_slots"])),
                             float(trainer_compress.soft_cross_entropy(batch["intent"], batch["teacher_intent"]))))

    monkeypatch.setattr(trainer_compress, "_dynabert_training", loop)
    paddle_soft_cross_entropy = trainer_compress.soft_cross_entropy
    rng = np.random.default_rng(0)
    batches = []
    for labels in ([[0, 3, 1, 0, 0], [0, 2, 2, 4, 0]], [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]]):
        arrays = {"slots": rng.normal(size=(2, 5, 6)), "teacher_slots": rng.normal(size=(2, 5, 6)),
                  "intent": rng.normal(size=(2, 4)), "teacher_intent": rng.normal(size=(2, 4))}
        batches.append({"slot_labels": paddle.to_tensor(labels), **{k: paddle.to_tensor(v, "float32") for k, v in arrays.items()}})
    with compression.slot_distillation_on_utterance_tokens(pad_slot_id=0):
        trainer_compress._dynabert_training(None, None, None, None, batches, None, 2)
    assert trainer_compress._dynabert_training is loop and trainer_compress.soft_cross_entropy is paddle_soft_cross_entropy

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    expected = []
    for b in batches:
        slots, teacher = b["slots"].numpy(), b["teacher_slots"].numpy()
        per_token = -(np.exp(log_softmax(teacher)) * log_softmax(slots)).sum(-1)
        mask = b["slot_labels"].numpy() != 0
        intent = -(np.exp(log_softmax(b["teacher_intent"].numpy())) * log_softmax(b["intent"].numpy())).sum(-1).mean()
        expected.append((2, per_token[mask].mean(), intent))
    assert np.allclose(seen, expected * 2, atol=1e-5)
    # over every position, as PaddleNLP averages, the first batch's slot term would differ
    assert abs(float(paddle_soft_cross_entropy(batches[0]["slots"], batches[0]["teacher_slots"])) - expected[0][1]) > 1e-3


def test_qat_distill_alpha_out_of_range_fails_clearly(trained, synthetic_dir, tmp_path):
    with pytest.raises(ValueError, match="--qat_distill_alpha 0.0: must be in"):
        run_train.main(["--model_name_or_path", trained, "--data_dir", synthetic_dir, "--output_dir", str(tmp_path),
                        "--do_compress", "--strategy", "qat", "--qat_distill_alpha", "0"])
