"""run_train.py end to end (one shared short run) and training.py: training, best-model selection,
evaluation, and the exported static graph against the dynamic graph."""
import dataclasses
import glob
import os
import pickle
import shutil

import numpy as np
import paddle
import pytest
import safetensors.numpy
from conftest import run_killed_at_open

import backends
import export_format
import predictor
import task
import training
import utils
from model import JointErnie, build_from_scratch
from exporting import save_static_graph
from training import LengthBucketSampler



@pytest.fixture(scope="module")
def dynamic(trained):
    model = JointErnie.from_pretrained(trained)
    model.eval()
    return model


@pytest.fixture(scope="module")
def static(trained):
    return backends.open_predictor(os.path.join(trained, "infer_model"), threads=2)


def test_outputs_logs_and_metrics(trained, synthetic_splits):
    assert not os.path.exists(os.path.join(trained, "model_state.pdparams"))  # the model's weights: no pickle
    for name in ("config.json", "model.safetensors", "vocab.txt", "train.log", "eval_results.json", "train_results.json"):
        assert os.path.isfile(os.path.join(trained, name)), name
    log = open(os.path.join(trained, "train.log"), encoding="utf-8").read()
    assert f"0 of {len(synthetic_splits['train'])} training utterances truncated" in log and "CPU math threads: 2" in log
    assert "context_turns 1, max_context_tokens 32" in log
    results = utils.load_json(os.path.join(trained, "eval_results.json"))
    for split in ("dev", "test"):
        m = results[split]
        assert m["num_utterances"] == len(synthetic_splits[split])
        assert sum(v["count"] for v in m["per_intent"].values()) == m["num_utterances"]
        assert m["sentence_acc"] <= m["sentence_acc_ref"] and m["sentence_acc"] <= m["intent_acc"]
    # three epochs on the templated corpus are enough to learn it well; an untrained model scores ~0
    assert results["test"]["intent_acc"] > 0.9 and results["test"]["slot_f1"] > 0.8
    train = utils.load_json(os.path.join(trained, "train_results.json"))
    assert train["train_samples_per_second"] > 0 and train["cpu_threads"] == 2


def test_best_checkpoint_is_the_one_kept(trained):
    """The saved model is the checkpoint with the best dev sentence accuracy; --save_total_limit 1
    keeps it and, if later, the last one (for resuming), nothing else."""
    states = [utils.load_json(p) for p in glob.glob(os.path.join(trained, "checkpoint-*", "trainer_state.json"))]
    assert 1 <= len(states) <= 2
    state = max(states, key=lambda s: s["global_step"])
    assert state["best_model_checkpoint"] is not None
    evals = [h["eval_sentence_acc"] for h in state["log_history"] if "eval_sentence_acc" in h]
    assert len(evals) == 3 and state["best_metric"] == max(evals)
    dev = utils.load_json(os.path.join(trained, "eval_results.json"))["dev"]
    assert dev["sentence_acc"] == pytest.approx(state["best_metric"], abs=1.5 / dev["num_utterances"])


def test_export_is_self_contained(trained, tmp_path, static, synthetic_splits):
    export = os.path.join(trained, "infer_model")
    assert all(os.path.isfile(os.path.join(export, f)) for f in export_format.FILES)
    config = utils.load_json(os.path.join(export, export_format.CONFIG_FILE))
    longest = max(len(u.token_tags()) for u in synthetic_splits["train"])
    assert config["max_seq_length"] == longest + 2 and config["context_turns"] == 1 and config["max_context_tokens"] == 32
    assert config["intent_slot_types"]["OTHERS"] == [] and config["slot_transitions"] is None
    assert config["calibration"]["fitted_on"] == "dev (299 utterances)" and config["calibration"]["intent_temperature"] != 1.0
    moved = shutil.copytree(export, str(tmp_path / "elsewhere"))
    texts = ["导航去人民公园", "打电话给 13812345678", ""]
    assert backends.open_predictor(moved).predict(texts) == static.predict(texts)


def test_an_export_killed_midway_leaves_the_previous_export_whole(trained, synthetic_dir, tmp_path):
    """run_train.py --do_export SIGKILLed as it opens the new export's vocab.txt (its graph already
    written): the previous infer_model/ is byte-identical and still loads; a rerun replaces it."""
    out = tmp_path / "run"
    previous = shutil.copytree(os.path.join(trained, "infer_model"), out / "infer_model")
    before = {f: open(os.path.join(previous, f), "rb").read() for f in os.listdir(previous)}
    argv = ["--model_name_or_path", trained, "--data_dir", synthetic_dir, "--output_dir", str(out), "--do_export", "--max_seq_length", "12"]
    run_killed_at_open("run_train.py", "*/.infer_model.*/new/.vocab.txt.*/new", argv)  # write_lines is atomic too
    assert {f: open(os.path.join(previous, f), "rb").read() for f in os.listdir(previous)} == before
    assert export_format.read(previous).task.max_seq_length != 12
    leftovers = [f for f in os.listdir(out) if f.startswith(".infer_model.")]  # the killed run's temporary directory, hidden
    assert len(leftovers) == 1 and os.path.isfile(out / leftovers[0] / "new" / export_format.GRAPH_FILE)
    import run_train

    run_train.main(argv)
    assert export_format.read(previous).task.max_seq_length == 12


def test_export_has_no_scalar_fill_constant(trained):
    """The 0-D fill_constant of ERNIE's `input_ids == pad_token_id` stops OpenVINO and Paddle
    Lite; model.padding_mask avoids it."""
    paddle.enable_static()
    try:
        program, _, _ = paddle.static.load_inference_model(
            os.path.join(trained, "infer_model", "model"), paddle.static.Executor(paddle.CPUPlace())
        )
    finally:
        paddle.disable_static()
    ops = program.global_block().ops
    assert not [
        op
        for op in ops
        if op.type == "fill_constant" and list(op.attr("shape")) == [] and not op.input("ShapeTensor") and not op.input("ShapeTensorList")
    ]
    assert not [op for op in ops if op.type in ("equal", "not_equal")]


def test_static_graph_matches_dynamic_graph(dynamic, static, synthetic_splits):
    tokenizer = static.task.tokenizer
    encoded = static.task.encode_corpus(synthetic_splits["test"])  # with the session's previous turn
    windows = [w for e in encoded for w in e.windows]
    assert sum(len(w) > len(e.offsets) + 2 for e in encoded for w in e.windows) > len(encoded) / 2
    for b in range(0, len(windows), 64):
        ids = utils.pad_batch(windows[b : b + 64], tokenizer.pad_id)
        with paddle.no_grad():
            dyn_intent, dyn_slot = (t.numpy() for t in dynamic(paddle.to_tensor(ids)))
        st_intent, st_slot = static.logits_fn(ids)
        assert st_intent.shape == dyn_intent.shape and st_slot.shape == dyn_slot.shape
        assert np.abs(st_intent - dyn_intent).max() <= 1e-4
        assert np.abs(st_slot - dyn_slot).max() <= 1e-4


def test_static_graph_takes_any_batch_and_length(static):
    for shape in [(1, 3), (7, 5), (2, 40)]:
        ids = np.full(shape, static.task.tokenizer.unk_id, dtype="int64")
        ids[:, 0], ids[:, -1] = static.task.tokenizer.cls_id, static.task.tokenizer.sep_id
        intent, slots = static.logits_fn(ids)
        assert intent.shape == (shape[0], len(static.task.labels.intents))
        assert slots.shape == (*shape, len(static.task.labels.slot_tags))


def test_static_evaluation_reproduces_training_evaluation(trained, static, synthetic_splits):
    expected = utils.load_json(os.path.join(trained, "eval_results.json"))["test"]
    got = static.evaluate(synthetic_splits["test"])
    assert got["per_intent"] == expected["per_intent"]
    for key in ("intent_acc", "slot_f1", "sentence_acc", "sentence_acc_ref"):
        assert got[key] == pytest.approx(expected[key], abs=1e-9)


def test_long_utterances_are_scored_whole(static):
    """An utterance longer than the model's window (here a window of 8 on the same graph) is
    predicted in overlapping windows, every character scored."""
    short_window = predictor.Predictor(
        dataclasses.replace(static.task, max_seq_length=8), static.logits_fn, calibration=static.decoder.calibration
    )
    text = "播放林小雨的晚风轻轻吹然后导航去第一人民医院再打电话给老王"  # 29 chars
    assert len(short_window.task.encode(text).windows) == 9  # windows of 6, stride 3
    [result] = short_window.predict([text], histories=[["你好"]])
    for slot in result["slots"]:
        first, last = slot["pos"]
        assert text[first : last + 1] == slot["entity"] and 0 <= first <= last < len(text)
    assert static.predict([text])[0]["intent"] in static.task.labels.intents


def test_the_context_model_reads_the_previous_turn(static):
    """Same utterance, different previous turn: different logits (the graph reads the context)."""
    _, after_music = static.records_and_predictions(["取消"], histories=[["播放周杰伦的稻香"]])
    _, after_navigation = static.records_and_predictions(["取消"], histories=[["导航去人民公园"]])
    _, alone = static.records_and_predictions(["取消"])
    assert np.abs(after_music[0].intent_logits - after_navigation[0].intent_logits).max() > 1e-3
    assert np.abs(after_music[0].intent_logits - alone[0].intent_logits).max() > 1e-3


def test_length_buckets_cover_every_row_once_with_short_padding():
    rng = np.random.RandomState(0)
    lengths = rng.randint(3, 60, size=1000)
    sampler = LengthBucketSampler(lengths, batch_size=16, seed=7)
    sampler.set_epoch(0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63 and sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 1.15 * lengths.sum()  # random batches would pad to ~1.8x
    sampler.set_epoch(1)
    assert list(sampler) != batches  # reshuffled each epoch, the same on every run
    sampler.set_epoch(0)
    assert list(sampler) == batches
    # two ranks of 8: the same global batches as one process of 16, each rank a disjoint half
    ranks = [LengthBucketSampler(lengths, 8, 7, num_replicas=2, rank=r) for r in (0, 1)]
    halves = [list(r) for r in ranks]
    assert len(halves[0]) == len(halves[1]) == len(batches)
    assert [a + b for a, b in zip(*halves)] == batches
    assert all(set(a).isdisjoint(b) for a, b in zip(*halves))
    assert sorted(len(a) for a in halves[0])[:2] == sorted(len(b) for b in halves[1])[:2] == [4, 8]  # 1000 = 62 x 16 + 8
    # a last global batch with fewer rows than ranks: the rank without one repeats a row
    three = [list(LengthBucketSampler(lengths[:17], 4, 7, num_replicas=4, rank=r)) for r in range(4)]
    short = [min(b, key=len) for b in three]
    assert [len(b) for b in short] == [1, 1, 1, 1] and len({i for b in short for i in b}) == 1


def test_a_run_killed_while_saving_resumes_to_the_same_weights(tmp_path, synthetic_dir):
    """run_train.py SIGKILLed as it writes checkpoint-12's optimizer state (after checkpoint-6):
    checkpoint-12 is refused for resuming (no manifest: it was not finished); resumed from
    checkpoint-6 with --resume_from_checkpoint, the run continues the step count, optimizer,
    scheduler and RNG states and ends with the weights of an uninterrupted run. The checkpoint
    exports on its own. The killed run was given an API key: no file of the run holds it."""
    import run_train

    common = ["--from_scratch", "--data_dir", synthetic_dir, "--do_train", "--max_steps", "12", "--save_steps", "6",
              "--eval_steps", "6", "--evaluation_strategy", "steps", "--save_strategy", "steps", "--save_total_limit", "3",
              "--load_best_model_at_end", "false", "--per_device_train_batch_size", "32", "--learning_rate", "1e-3",
              "--seed", "42", "--cpu_threads", "2", "--disable_tqdm", "true"]
    run_train.main(common + ["--output_dir", str(tmp_path / "whole")])

    killed = str(tmp_path / "killed")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    run_killed_at_open(
        "run_train.py", "*/checkpoint-12/optimizer.pdopt", common + ["--output_dir", killed, "--wandb_api_key", "secret-4f9a"], env
    )
    assert {"config.json", "model_state.pdparams", "model.safetensors", "optimizer.pdopt", "scheduler.pdparams", "vocab.txt",
            "intent_label.txt", "slot_label.txt", training.CHECKPOINT_MANIFEST} <= set(os.listdir(os.path.join(killed, "checkpoint-6")))
    assert "optimizer.pdopt" not in os.listdir(os.path.join(killed, "checkpoint-12"))
    with pytest.raises(ValueError, match=rf"checkpoint-12: no {training.CHECKPOINT_MANIFEST}, so the checkpoint was not finished"):
        run_train.main(common + ["--output_dir", killed, "--resume_from_checkpoint", os.path.join(killed, "checkpoint-12")])
    run_train.main(common + ["--output_dir", killed, "--resume_from_checkpoint", os.path.join(killed, "checkpoint-6")])
    log = open(os.path.join(killed, "train.log"), encoding="utf-8").read()
    assert "Continuing training from global step 6" in log
    whole, resumed = (safetensors.numpy.load_file(os.path.join(d, "model.safetensors")) for d in (str(tmp_path / "whole"), killed))
    assert sorted(whole) == sorted(resumed)
    for name in whole:
        np.testing.assert_allclose(resumed[name], whole[name], rtol=0, atol=1e-6, err_msg=name)
    # an API key reaches wandb through its environment variable, never the log or the pickled arguments
    written = [os.path.join(d, f) for d, _, files in os.walk(killed) for f in files]
    assert not [f for f in written if b"secret-4f9a" in open(f, "rb").read()]
    # a checkpoint whose files changed after it was saved is refused too
    with open(os.path.join(killed, "checkpoint-12", "scheduler.pdparams"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="checkpoint-12: scheduler.pdparams is missing or differs from when it was saved"):
        run_train.main(common + ["--output_dir", killed, "--resume_from_checkpoint", os.path.join(killed, "checkpoint-12")])
    # a checkpoint holds its vocabulary and labels: it exports without its run directory
    exported = str(tmp_path / "from-checkpoint")
    run_train.main(["--model_name_or_path", os.path.join(killed, "checkpoint-12"), "--data_dir", synthetic_dir,
                    "--output_dir", exported, "--do_export"])
    assert backends.open_predictor(os.path.join(exported, "infer_model")).predict(["导航去北京"])[0]["text"] == "导航去北京"


def test_resume_refuses_a_checkpoint_whose_pickles_would_run_code(tmp_path):
    """The Trainer's state is pickled; before --resume_from_checkpoint unpickles it, every pickle of
    the checkpoint is read opcode by opcode and one that would import anything but arrays is refused
    (here a crafted optimizer state, with a manifest to match)."""
    checkpoint = tmp_path / "checkpoint-6"
    checkpoint.mkdir()
    paddle.save({"w": np.zeros(3, dtype="float32")}, str(checkpoint / "model_state.pdparams"))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(checkpoint / "optimizer.pdopt", "wb") as f:
        pickle.dump({"moment1": Payload()}, f)
    training.write_checkpoint_manifest(str(checkpoint), 6)
    with pytest.raises(ValueError, match=r"optimizer.pdopt would import \['(io|builtins).open'\] when unpickled"):
        training.check_checkpoint(str(checkpoint))
    assert not marker.exists()
    os.remove(checkpoint / "optimizer.pdopt")
    training.write_checkpoint_manifest(str(checkpoint), 6)
    training.check_checkpoint(str(checkpoint))  # arrays only: accepted


def test_run_train_fine_tunes_a_local_pretrained_directory(tmp_path, synthetic_dir, synthetic_splits):
    """The non-scratch path: --model_name_or_path is a directory holding a plain ERNIE encoder
    and its vocab.txt; the vocabulary is taken from there, not rebuilt from the data."""
    from paddlenlp.transformers import ErnieConfig, ErnieModel

    import run_train

    pretrained = str(tmp_path / "ernie")
    tokenizer = task.CharTokenizer.build(u.text for u in synthetic_splits["dev"])  # deliberately not train's
    config = ErnieConfig(**{**ErnieConfig.pretrained_init_configuration["ernie-3.0-tiny-nano-v2-zh"], "vocab_size": len(tokenizer)})
    ErnieModel(config).save_pretrained(pretrained)  # pickled weights, as PaddleNLP saves by default
    export_format.write_vocab(pretrained, tokenizer)
    out = str(tmp_path / "out")
    flags = ["--model_name_or_path", pretrained, "--data_dir", synthetic_dir, "--output_dir", out,
             "--do_train", "--do_eval", "--do_export", "--max_steps", "3", "--evaluation_strategy", "no", "--save_strategy", "no",
             "--load_best_model_at_end", "false", "--disable_tqdm", "true"]
    # unpickling runs code: a directory with only model_state.pdparams needs the explicit opt-in
    with pytest.raises(ValueError, match="holds pickled weights .* pass --trust_pickled_weights"):
        run_train.main(flags)
    crafted = shutil.copytree(pretrained, str(tmp_path / "crafted"))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(os.path.join(crafted, "model_state.pdparams"), "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(ValueError, match="holds pickled weights"):
        run_train.main([crafted if a == pretrained else a for a in flags])
    assert not marker.exists()  # refused before anything was unpickled
    run_train.main(flags + ["--trust_pickled_weights"])
    assert os.path.isfile(os.path.join(out, "model.safetensors")) and not os.path.exists(os.path.join(out, "model_state.pdparams"))
    assert task.CharTokenizer.from_file(os.path.join(out, "vocab.txt")).vocab == tokenizer.vocab
    # a model without context (the default): rows hold the utterance alone, exported as such
    exported = export_format.read(os.path.join(out, "infer_model"))
    assert exported.config["context_turns"] == 0 and exported.config["max_context_tokens"] == 0
    expected = utils.load_json(os.path.join(out, "eval_results.json"))["test"]
    assert backends.open_predictor(exported.directory).evaluate(synthetic_splits["test"])["per_intent"] == expected["per_intent"]
    assert utils.load_json(os.path.join(out, "eval_results.json"))["test"]["num_utterances"] == len(synthetic_splits["test"])
    assert JointErnie.from_pretrained(out).config.vocab_size == len(tokenizer)


def test_export_leaves_the_model_in_dygraph(tmp_path, labels):
    tokenizer = task.CharTokenizer.build(["导航去北京"])
    model = build_from_scratch("ernie-3.0-tiny-nano-v2-zh", task.Task(tokenizer, labels, 16, task.any_slot_types(labels)))
    forward = model.forward
    save_static_graph(model, str(tmp_path / "model"))
    assert model.forward == forward and os.path.isfile(tmp_path / "model.pdmodel")


def test_crf_head_trains_exports_and_decodes_with_its_transitions(tmp_path, synthetic_dir, synthetic_splits):
    """--slot_crf: the transitions are learned, saved with the model, written into the export and
    used by every decoder: the exported model's evaluation equals the dynamic one's. With two
    turns of context (the CRF's loss runs over the utterance's tags only)."""
    import run_train

    out = str(tmp_path / "crf")
    run_train.main(
        [
            "--from_scratch",
            "--model_name_or_path",
            "ernie-3.0-tiny-nano-v2-zh",
            "--slot_crf",
            "--context_turns",
            "2",
            "--data_dir",
            synthetic_dir,
            "--output_dir",
            out,
            "--do_train",
            "--do_eval",
            "--do_export",
            "--max_steps",
            "40",
            "--learning_rate",
            "1e-3",
            "--evaluation_strategy",
            "no",
            "--save_strategy",
            "no",
            "--load_best_model_at_end",
            "false",
            "--disable_tqdm",
            "true",
        ]
    )
    model = JointErnie.from_pretrained(out)
    learned = model.slot_transitions.numpy()
    exported = export_format.read(os.path.join(out, "infer_model"))
    assert exported.config["context_turns"] == 2 and model.config.context_turns == 2
    assert np.abs(learned).max() > 0.01  # moved from its zero start
    assert np.allclose(exported.slot_transitions, learned, atol=1e-6)
    expected = utils.load_json(os.path.join(out, "eval_results.json"))["test"]
    got = backends.open_predictor(exported.directory).evaluate(synthetic_splits["test"])
    assert got["per_intent"] == expected["per_intent"] and got["slot_f1"] == pytest.approx(expected["slot_f1"], abs=1e-9)
