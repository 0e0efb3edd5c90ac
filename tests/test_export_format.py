"""The export contract (export_format.py): a directory is written whole or not at all, read back
as it was written, and every way its files can disagree is refused with the file named. The
C++ side of the contract is checked in test_deploy_cpp.py."""
import json
import os

import pytest
from conftest import embedding_program

import export_format
import decoding
import task

LABELS = task.LabelMaps.from_files()
SLOT_TYPES = {**task.any_slot_types(LABELS), "OTHERS": [], "music.pause": [], "navigation.navigation": ["destination", "origin"]}
TASK = task.Task(task.CharTokenizer.build(["导航去北京", "播放音乐"]), LABELS, 16, SLOT_TYPES, context_turns=2, max_context_tokens=24)


def fake_graph_for(task_):
    """A GraphWriter that needs no paddle: a program with `task_`'s embedding tables, no weights."""
    def write(prefix):
        with open(prefix + ".pdmodel", "wb") as f:
            f.write(embedding_program(len(task_.tokenizer), task_.max_row_length))
        with open(prefix + ".pdiparams", "wb") as f:
            f.write(b"weights")
        return [export_format.INPUT_NAME], ["intent_out", "slot_out"]
    return write


fake_graph = fake_graph_for(TASK)


@pytest.fixture
def exported(tmp_path):
    return export_format.write(str(tmp_path / "infer_model"), TASK, fake_graph, {"architecture": "test"}).directory


def test_write_then_read_round_trips(exported):
    assert sorted(os.listdir(exported)) == sorted(export_format.FILES)
    model = export_format.read(exported)
    assert model.task.tokenizer.vocab == TASK.tokenizer.vocab and model.task.labels == LABELS
    assert model.task.max_seq_length == 16 and model.task.slotless_intents == ["OTHERS", "music.pause"]
    assert (model.task.context_turns, model.task.max_context_tokens) == (2, 24)
    assert model.task.intent_slot_types == SLOT_TYPES and model.calibration == decoding.Calibration()
    config = model.config
    assert config["format_version"] == export_format.FORMAT_VERSION and set(config) == set(export_format.REQUIRED_KEYS)
    assert config["vocab_size"] == len(TASK.tokenizer) and config["num_intents"] == 11 and config["num_slot_tags"] == 32
    assert [o["name"] for o in config["outputs"]] == ["intent_out", "slot_out"]
    assert config["outputs"][1]["shape"] == [-1, -1, 32] and config["model"] == {"architecture": "test"}


def corrupt(directory, name, edit):
    path = os.path.join(directory, name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(edit(text))


def edit_config(**changes):
    return lambda text: json.dumps({**json.loads(text), **changes})


@pytest.mark.parametrize("name, edit, problem", [
    ("vocab.txt", lambda t: t + "导\n", r"vocab.txt: vocabulary has repeated tokens \['导'\]"),
    ("vocab.txt", lambda t: t + "新\n", r"vocab.txt: \d+ tokens, inference_config.json says \d+"),
    ("vocab.txt", lambda t: t.replace("[UNK]\n", "[unk]\n"), r"vocab.txt: vocabulary lacks special tokens \['\[UNK\]'\]"),
    ("intent_label.txt", lambda t: t + "weather.query\n", r"intent_label.txt: 12 intents, inference_config.json says 11"),
    ("slot_label.txt", lambda t: t.replace("B-song\n", ""), r"slot_label.txt: 31 slot tags, inference_config.json says 32"),
    ("intent_label.txt", lambda t: t + "OTHERS\n", r"duplicate intent labels \['OTHERS'\]"),
    ("inference_config.json", edit_config(format_version=2), r"inference_config.json: format_version 2; this code reads format_version 3"),
    ("inference_config.json", edit_config(max_context_tokens=0), r"inference_config.json: context_turns 2 with max_context_tokens 0"),
    ("inference_config.json", edit_config(context_turns=-1), r"inference_config.json: context_turns -1 with max_context_tokens 24"),
    ("inference_config.json", edit_config(context_turns=True), r"context_turns must be an integer, not True"),
    ("inference_config.json", lambda t: t[:-10], r"inference_config.json: not valid JSON"),
    ("inference_config.json", edit_config(max_seq_length=2), r"inference_config.json: max_seq_length 2: must hold"),
    ("inference_config.json", edit_config(intent_slot_types={"OTHERS": []}), r"intent_slot_types must name every intent label once"),
    ("inference_config.json", edit_config(intent_slot_types={**SLOT_TYPES, "OTHERS": ["weather"]}), r"slot types \['weather'\] that are not in the slot labels"),
    ("inference_config.json", edit_config(calibration={"intent_temperature": 0, "slot_temperature": 1, "fitted_on": None}),
     r"calibration intent_temperature must be a positive number, not 0"),
    ("inference_config.json", edit_config(calibration={"intent_temperature": 1}), r"inference_config.json: calibration .* must hold exactly"),
    ("inference_config.json", edit_config(calibration=[1, 1]), r"inference_config.json: calibration \[1, 1\] must hold exactly"),
    ("inference_config.json", edit_config(max_utterance_tokens=0), r"max_utterance_tokens must be a positive integer"),
    ("inference_config.json", edit_config(max_seq_length=16.5), r"max_seq_length must be an integer, not 16.5"),
    ("inference_config.json", edit_config(max_seq_length="16"), r"max_seq_length must be an integer, not '16'"),
    ("inference_config.json", edit_config(num_intents=True), r"num_intents must be an integer, not True"),
    ("inference_config.json", edit_config(outputs=[{"role": "slot_logits"}, {"role": "intent_logits"}]), r"outputs \['slot_logits', 'intent_logits'\]"),
])
def test_a_directory_that_breaks_the_contract_is_refused(exported, name, edit, problem):
    corrupt(exported, name, edit)
    with pytest.raises(export_format.ExportError, match=problem):
        export_format.read(exported)


def test_missing_files_and_keys_are_named(exported):
    corrupt(exported, export_format.CONFIG_FILE, lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "vocab_size"}))
    with pytest.raises(export_format.ExportError, match="lacks vocab_size"):
        export_format.read(exported)
    os.remove(os.path.join(exported, export_format.PARAMS_FILE))
    with pytest.raises(export_format.ExportError, match="missing model.pdiparams"):
        export_format.read(exported)


def test_a_failed_export_leaves_the_previous_one_whole(exported, tmp_path):
    """A fault injected after the graph is written (and a graph with the wrong inputs) must leave
    the earlier export exactly as it was, and no temporary directory behind."""
    before = {name: open(os.path.join(exported, name), "rb").read() for name in export_format.FILES}
    other = task.Task(task.CharTokenizer.build(["打电话给老王"]), LABELS, 12, task.any_slot_types(LABELS))

    def failing_graph(prefix):
        fake_graph_for(other)(prefix)
        raise OSError("disk full (injected)")

    with pytest.raises(OSError, match="injected"):
        export_format.write(exported, other, failing_graph, {})
    with pytest.raises(export_format.ExportError, match=r"takes \['ids'\]"):
        export_format.write(exported, other, lambda prefix: (fake_graph_for(other)(prefix), (["ids"], ["a", "b"]))[1], {})
    assert {name: open(os.path.join(exported, name), "rb").read() for name in export_format.FILES} == before
    assert os.listdir(tmp_path) == ["infer_model"]
    # a successful export replaces the directory as a whole
    export_format.write(exported, other, fake_graph_for(other), {})
    assert export_format.read(exported).task.max_seq_length == 12 and os.listdir(tmp_path) == ["infer_model"]


def test_the_graph_tables_must_fit_the_vocabulary_and_the_rows(exported):
    """A vocabulary longer than the word embedding table, or rows longer than the position table:
    runtimes read past the table without a word, so reading the directory refuses it."""
    graph = os.path.join(exported, export_format.GRAPH_FILE)
    assert export_format.lookup_tables(graph) == [(export_format.INPUT_NAME, [len(TASK.tokenizer), 8]), ("position_ids", [40, 8]),
                                                  ("type_ids", [4, 8])]
    corrupt(exported, export_format.VOCAB_FILE, lambda t: t + "新\n")
    corrupt(exported, export_format.CONFIG_FILE, edit_config(vocab_size=len(TASK.tokenizer) + 1))
    with pytest.raises(export_format.ExportError, match=rf"model.pdmodel: the word embedding table has {len(TASK.tokenizer)} rows but "
                       rf"vocab.txt and inference_config.json give {len(TASK.tokenizer) + 1} tokens"):
        export_format.read(exported)
    corrupt(exported, export_format.VOCAB_FILE, lambda t: t[: -len("新\n")])
    corrupt(exported, export_format.CONFIG_FILE, edit_config(vocab_size=len(TASK.tokenizer), max_seq_length=4096))
    with pytest.raises(export_format.ExportError, match=r"inference_config.json: max_seq_length 4096 \+ max_context_tokens 24 = 4120 "
                       r"tokens per row, but model.pdmodel has 40 positions"):
        export_format.read(exported)
    corrupt(exported, export_format.CONFIG_FILE, edit_config(max_seq_length=16))
    assert export_format.read(exported).task.max_seq_length == 16
    for damage in (b"\x0a\xff\xff\xff", b"graph", b"\x0a\x05\x1a\x03\x0a"):  # cut short, wrong wire type, a field past the end
        with open(graph, "wb") as f:
            f.write(damage)
        with pytest.raises(export_format.ExportError, match=r"model.pdmodel: not a readable Paddle program|expected one embedding lookup"):
            export_format.read(exported)


def test_write_calibration_replaces_only_the_calibration(exported):
    before = export_format.read(exported)
    calibration = decoding.Calibration(1.5, 0.8, "dev (3 utterances)")
    after = export_format.write_calibration(exported, calibration)
    assert after.calibration == calibration
    assert {k: v for k, v in after.config.items() if k != "calibration"} == {k: v for k, v in before.config.items() if k != "calibration"}
