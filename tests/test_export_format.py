"""The export contract (export_format.py): a directory is written whole or not at all, read back
as it was written, and every way its files can disagree is refused with the file named. The
C++ side of the contract is checked in test_deploy_cpp.py."""
import json
import os

import numpy as np
import pytest
from conftest import SYNTHETIC_LABELS, embedding_program, weights_file

import export_format
import paddle_format
import decoding
import task
import values

LABELS = SYNTHETIC_LABELS
SLOT_TYPES = {**task.any_slot_types(LABELS), "OTHERS": [], "music.pause": [], "navigation.navigation": ["destination", "origin"]}
CATALOGUE = values.Catalogue()
CATALOGUE.add("singer", "祁隆", ["奇隆"])
CATALOGUE.rules["phone_num"] = values.DIGITS
TASK = task.Task(task.CharTokenizer.build(["导航去北京", "播放音乐"]), LABELS, 16, SLOT_TYPES, context_turns=2, max_context_tokens=24,
                 catalogue=CATALOGUE)


def fake_graph_for(task_):
    """A GraphWriter that needs no paddle: a program with `task_`'s embedding tables, no weights."""
    def write(prefix):
        with open(prefix + ".pdmodel", "wb") as f:
            f.write(embedding_program(len(task_.tokenizer), task_.max_row_length))
        with open(prefix + ".pdiparams", "wb") as f:
            f.write(weights_file(np.ones((len(task_.tokenizer), 8), "float32"), np.arange(6, dtype="int8")))
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
    assert model.task.catalogue == CATALOGUE and model.task.catalogue.resolve("singer", "奇隆") == ("祁隆", values.CATALOGUE)
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


@pytest.mark.parametrize(
    "name, edit, problem",
    [
        ("vocab.txt", lambda t: t + "导\n", r"vocab.txt: vocabulary has repeated tokens \['导'\]"),
        ("catalogue.jsonl", lambda t: t + '{"slot": "weather", "value": "晴"}\n', r"catalogue.jsonl:3: slot type 'weather' is not one "),
        ("catalogue.jsonl", lambda t: t + '{"slot": "song"}\n', r"catalogue.jsonl:3: a value entry is"),
        ("catalogue.jsonl", lambda t: t + '{"slot": "song", "rule": "pinyin"}\n', r"catalogue.jsonl:3: a rule entry is"),
        ("catalogue.jsonl", lambda t: t.replace("祁隆", "邓超"), r"catalogue.jsonl: its content differs from manifest.json"),
        ("vocab.txt", lambda t: t + "新\n", r"vocab.txt: \d+ tokens, inference_config.json says \d+"),
        ("vocab.txt", lambda t: t.replace("[UNK]\n", "[unk]\n"), r"vocab.txt: vocabulary lacks special tokens \['\[UNK\]'\]"),
        ("intent_label.txt", lambda t: t + "weather.query\n", r"intent_label.txt: 12 intents, inference_config.json says 11"),
        ("slot_label.txt", lambda t: t.replace("B-song\n", ""), r"slot_label.txt: 31 slot tags, inference_config.json says 32"),
        ("intent_label.txt", lambda t: t + "OTHERS\n", r"duplicate intent labels \['OTHERS'\]"),
        (
            "inference_config.json",
            edit_config(format_version=4),
            r"inference_config.json: format_version 4; this code reads format_version 5",
        ),
        ("inference_config.json", lambda t: "\ufeff" + t, r"inference_config.json: not valid JSON \(Unexpected UTF-8 BOM"),
        (
            "inference_config.json",
            lambda t: t.replace('"intent_temperature": 1.0', '"intent_temperature": Infinity'),
            r"inference_config.json: not valid JSON \(Infinity is not JSON\)",
        ),
        (
            "inference_config.json",
            lambda t: t.replace('"intent_temperature": 1.0', '"intent_temperature": 1e400'),
            r"calibration intent_temperature must be a positive number, not inf",
        ),
        ("inference_config.json", edit_config(max_context_tokens=0), r"inference_config.json: context_turns 2 with max_context_tokens 0"),
        ("inference_config.json", edit_config(context_turns=-1), r"inference_config.json: context_turns -1 with max_context_tokens 24"),
        ("inference_config.json", edit_config(context_turns=True), r"context_turns must be an integer, not True"),
        ("inference_config.json", lambda t: t[:-10], r"inference_config.json: not valid JSON"),
        ("inference_config.json", edit_config(max_seq_length=2), r"inference_config.json: max_seq_length 2: must hold"),
        ("inference_config.json", edit_config(intent_slot_types={"OTHERS": []}), r"intent_slot_types must name every intent label once"),
        (
            "inference_config.json",
            edit_config(intent_slot_types={**SLOT_TYPES, "OTHERS": ["weather"]}),
            r"slot types \['weather'\] that are not in the slot labels",
        ),
        (
            "inference_config.json",
            edit_config(calibration={"intent_temperature": 0, "slot_temperature": 1, "fitted_on": None}),
            r"calibration intent_temperature must be a positive number, not 0",
        ),
        (
            "inference_config.json",
            edit_config(calibration={"intent_temperature": 1}),
            r"inference_config.json: calibration .* must hold exactly",
        ),
        ("inference_config.json", edit_config(calibration=[1, 1]), r"inference_config.json: calibration \[1, 1\] must hold exactly"),
        ("inference_config.json", edit_config(max_utterance_tokens=0), r"max_utterance_tokens must be a positive integer"),
        ("inference_config.json", edit_config(max_seq_length=16.5), r"max_seq_length must be an integer, not 16.5"),
        ("inference_config.json", edit_config(max_seq_length="16"), r"max_seq_length must be an integer, not '16'"),
        ("inference_config.json", edit_config(num_intents=True), r"num_intents must be an integer, not True"),
        (
            "inference_config.json",
            edit_config(outputs=[{"role": "slot_logits"}, {"role": "intent_logits"}]),
            r"outputs \['slot_logits', 'intent_logits'\]",
        ),
    ],
)
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
    assert paddle_format.lookup_tables(graph) == [(export_format.INPUT_NAME, [len(TASK.tokenizer), 8]), ("position_ids", [40, 8]),
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
    export_format.write_manifest(exported)  # the edits above, made on purpose
    assert export_format.read(exported).task.max_seq_length == 16
    for damage in (b"\x0a\xff\xff\xff", b"graph", b"\x0a\x05\x1a\x03\x0a"):  # cut short, wrong wire type, a field past the end
        with open(graph, "wb") as f:
            f.write(damage)
        with pytest.raises(export_format.ExportError, match=r"model.pdmodel: not a readable Paddle program|expected one embedding lookup"):
            export_format.read(exported)


def test_calibration_is_part_of_the_atomic_write(exported, tmp_path):
    """The temperatures are fitted on the directory as written and go live with it; a calibration
    that fails (a kill between writing and fitting, here an exception) leaves the earlier export."""
    before = {name: open(os.path.join(exported, name), "rb").read() for name in export_format.FILES}
    seen = []

    def calibrate(written):
        seen.append(export_format.read(written).directory)  # a complete export, manifest and all
        return decoding.Calibration(1.5, 0.8, "dev (3 utterances)")

    def failing(written):
        raise KeyboardInterrupt("killed while calibrating (injected)")

    with pytest.raises(KeyboardInterrupt):
        export_format.write(exported, TASK, fake_graph, {"architecture": "test"}, calibrate=failing)
    assert {name: open(os.path.join(exported, name), "rb").read() for name in export_format.FILES} == before
    after = export_format.write(exported, TASK, fake_graph, {"architecture": "test"}, calibrate=calibrate)
    assert seen and seen[0] != exported and os.listdir(tmp_path) == ["infer_model"]
    assert export_format.read(exported).calibration == after.calibration == decoding.Calibration(1.5, 0.8, "dev (3 utterances)")


@pytest.mark.parametrize("damage, problem", [
    (lambda d: corrupt(d, export_format.INTENT_LABEL_FILE, lambda t: "\n".join([t.split("\n")[1], t.split("\n")[0], *t.split("\n")[2:]])),
     r"intent_label.txt: its content differs from manifest.json"),
    (lambda d: flip_bytes(d, export_format.PARAMS_FILE, [-5]), r"model.pdiparams: its content differs from manifest.json"),
    (lambda d: cut(d, export_format.PARAMS_FILE, 10), r"model.pdiparams: not a complete Paddle weights file \(cut short"),
    (lambda d: cut(d, export_format.GRAPH_FILE, 1), r"model.pdmodel: (not a readable Paddle program|\d+ bytes, manifest.json says)"),
    (lambda d: os.remove(os.path.join(d, export_format.MANIFEST_FILE)), r"missing manifest.json"),
    (lambda d: corrupt(d, export_format.MANIFEST_FILE, lambda t: t[:-3]), r"manifest.json: not a manifest"),
])
def test_a_file_changed_after_export_is_refused_by_name(exported, damage, problem):
    """Label order swapped (same count), weights flipped or cut, the manifest gone or broken:
    each passes every check of content, so the manifest names it."""
    export_format.read(exported)
    damage(exported)
    with pytest.raises(export_format.ExportError, match=problem):
        export_format.read(exported)


def flip_bytes(directory, name, positions):
    path = os.path.join(directory, name)
    data = bytearray(open(path, "rb").read())
    for p in positions:
        data[p] ^= 0x01
    open(path, "wb").write(bytes(data))


def cut(directory, name, n):
    path = os.path.join(directory, name)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-n])


@pytest.mark.parametrize("value, dtype", [(np.nan, "float32"), (np.inf, "float32"), (-np.inf, "float64")])
def test_weights_that_are_not_finite_are_refused_at_write_and_read(tmp_path, value, dtype):
    """One NaN in one embedding row answers only the utterances holding that character with NaN
    confidences: no probe row finds it, so every weight is checked."""
    def graph(prefix):
        fake_graph(prefix)
        table = np.ones((len(TASK.tokenizer), 8), dtype)
        table[3, 5] = value
        with open(prefix + ".pdiparams", "wb") as f:
            f.write(weights_file(np.zeros(4, "float32"), table))
        return [export_format.INPUT_NAME], ["intent_out", "slot_out"]

    problem = (rf"model.pdiparams: tensor 2 of 2 \({dtype} \[{len(TASK.tokenizer)}, 8\]\) holds 1 value\(s\) that are not finite "
               r"\(first at flat index 29\)")
    with pytest.raises(export_format.ExportError, match=problem):
        export_format.write(str(tmp_path / "m"), TASK, graph, {})
    assert not os.path.exists(tmp_path / "m")
    good = export_format.write(str(tmp_path / "m"), TASK, fake_graph, {}).directory
    graph(str(tmp_path / "other"))  # the damaged weights put in place of the good ones
    os.replace(str(tmp_path / "other.pdiparams"), os.path.join(good, export_format.PARAMS_FILE))
    with pytest.raises(export_format.ExportError, match=problem):
        export_format.read(good)


def test_an_export_replaces_only_an_export(exported, tmp_path):
    """A mistyped output directory holding something else is never replaced; a symlink to an
    export stays a link and the export it names is replaced."""
    other = tmp_path / "trained_model"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(IsADirectoryError, match="trained_model: is a directory"):
        export_format.write(str(other), TASK, fake_graph, {})
    assert os.listdir(other) == ["notes.txt"]
    link = tmp_path / "current"
    os.symlink(exported, link)
    export_format.write(str(link), TASK, fake_graph, {"architecture": "relinked"})
    assert os.path.islink(link) and export_format.read(str(link)).config["model"] == {"architecture": "relinked"}
    assert export_format.read(exported).config["model"] == {"architecture": "relinked"}


def test_a_catalogue_of_rules_alone_is_exported_and_applied(tmp_path):
    """A catalogue holds no value but a rule: it is still a catalogue (written, read, resolving)."""
    rules_only = values.Catalogue(rules={"phone_num": values.DIGITS})
    task_ = task.Task(TASK.tokenizer, LABELS, 16, SLOT_TYPES, context_turns=2, max_context_tokens=24, catalogue=rules_only)
    model = export_format.write(str(tmp_path / "infer_model"), task_, fake_graph, {"architecture": "test"})
    assert export_format.read(model.directory).task.catalogue.rules == {"phone_num": values.DIGITS}
    assert model.task.catalogue.resolve("phone_num", "幺三八") == ("138", values.RULE)
