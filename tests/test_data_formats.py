"""Labels derived from the data, JSON lines, the Rasa importer, the example corpus, and no NLPCC
label in library code (docs/data.md)."""
import json
import os
import re
import subprocess
import sys

import pytest

import utils
from data import import_rasa, prepare_data
from data.corpus import CorpusError, Slot, Utterance, read_corpus, write_corpus
from data.jsonl import read_jsonl, write_jsonl
from data.labels import derive_labels, read_data_labels
from data.split import split_by_session
from data.synthetic import DOMAINS, generate

EXAMPLE = os.path.join(utils.PROJECT_DIR, "examples", "vehicle")


def utt(session, text, intent, *slots):
    return Utterance(session, text, intent, tuple(Slot(*s) for s in slots))


def test_labels_are_ordered_by_frequency_and_slot_types_by_the_intents_that_carry_them():
    train = [utt("a", "关窗", "window.close"), utt("b", "开空调", "ac.on"),
             utt("c", "打开主驾车窗", "window.open", ("window", 2, 4, "主驾")),
             utt("d", "车窗开一半", "window.open", ("degree", 3, 5, "一半")),
             utt("e", "主驾车窗开一半", "window.open", ("window", 0, 2, "主驾"), ("degree", 5, 7, "一半")),
             utt("f", "主驾座椅加热二档", "seat.heat", ("seat", 0, 2, "主驾"), ("level", 6, 8, "二档")),
             utt("g", "座椅加热三档", "seat.heat", ("level", 4, 6, "三档")),
             utt("h", "风量三档", "fan", ("level", 2, 4, "三档"))]
    labels = derive_labels(train)
    # window.open 3, seat.heat 2, then the ones of 1 by name
    assert labels.intents == ["window.open", "seat.heat", "ac.on", "fan", "window.close"]
    # window.open's types (degree 2 = window 2: by name), then seat.heat's new ones (level 3 before seat 1)
    assert labels.slot_types == ["degree", "window", "level", "seat"]
    assert labels.slot_tags[:4] == ["PAD", "O", "B-degree", "I-degree"]


def test_the_nlpcc_label_order_is_the_derived_one(corpus_path, tmp_path):
    """The class ids of the measured NLPCC models: the derived files equal the label files those
    models were trained with, so the NLPCC results stand."""
    prepare_data.main(["--corpus_file", corpus_path, "--output_dir", str(tmp_path)])
    labels = read_data_labels(str(tmp_path))
    assert labels.intents == ["OTHERS", "music.play", "navigation.navigation", "phone_call.make_a_phone_call",
                              "navigation.cancel_navigation", "music.pause", "navigation.open", "music.next",
                              "navigation.start_navigation", "phone_call.cancel", "music.prev"]
    assert labels.slot_types == ["song", "singer", "theme", "style", "age", "toplist", "emotion", "language", "instrument",
                                 "scene", "destination", "custom_destination", "origin", "phone_num", "contact_name"]


def sessions_file(tmp_path, lines):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_a_label_that_only_dev_or_test_has_is_refused_by_line_or_kept_and_reported(tmp_path, capsys):
    lines = [f"s{i:03d}\t关窗\twindow.close\t关窗" for i in range(60)]
    common = [utt(f"s{i:03d}", "关窗", "window.close") for i in range(60)]
    # a session id that the seed-42 split puts outside train
    only = next(f"z{i}" for i in range(100) if not any(u.session_id == f"z{i}" for u in split_by_session(
        common + [utt(f"z{i}", "打开氛围灯", "lights.on", ("light", 2, 5, "氛围灯"))], 42, (0.5, 0.2))["train"]))
    lines += [f"{only}\t打开氛围灯\tlights.on\t打开<light>氛围灯</light>"]
    path = sessions_file(tmp_path, lines)
    prepare_data_args = ["--corpus_file", path, "--output_dir", str(tmp_path / "out"), "--train_fraction", "0.5", "--dev_fraction", "0.2"]
    with pytest.raises(SystemExit, match=rf"corpus.txt:{2 * 60 + 1}: intent 'lights.on' is not in the training split \(it goes "
                                         r"to (dev|test)\).*--keep_unseen_labels"):
        prepare_data.main(prepare_data_args)
    assert not os.path.exists(tmp_path / "out" / "stats.json")
    prepare_data.main(prepare_data_args + ["--keep_unseen_labels"])
    assert "kept labels that train never has" in capsys.readouterr().out
    stats = utils.load_json(str(tmp_path / "out" / "stats.json"))
    assert stats["labels"]["unseen_in_train"] == {"intents": {"lights.on": 1}, "slot_types": {"light": 1}}
    labels = read_data_labels(str(tmp_path / "out"))
    assert labels.intents == ["window.close", "lights.on"] and labels.slot_tags == ["PAD", "O", "B-light", "I-light"]


def test_label_files_from_another_run_are_refused(tmp_path):
    out = str(tmp_path / "prep")
    prepare_data.main(["--synthetic", "--synthetic_size", "300", "--output_dir", out])
    with open(os.path.join(out, "intent_label.txt"), "a", encoding="utf-8") as f:
        f.write("weather.query\n")
    with pytest.raises(ValueError, match=r"intent_label.txt is not the file .*stats.json describes"):
        read_data_labels(out)


def test_json_lines_round_trip_with_the_corpus_format(tmp_path):
    native = read_corpus(os.path.join(EXAMPLE, "corpus.txt"))
    write_jsonl(str(tmp_path / "c.jsonl"), native)
    again = read_jsonl(str(tmp_path / "c.jsonl"))
    assert [(u.session_id, u.text, u.intent, u.slots) for u in again] == [(u.session_id, u.text, u.intent, u.slots) for u in native]
    write_corpus(str(tmp_path / "c.txt"), again)
    assert open(tmp_path / "c.txt", encoding="utf-8").read() == open(os.path.join(EXAMPLE, "corpus.txt"), encoding="utf-8").read()
    corrected = [json.loads(line) for line in open(tmp_path / "c.jsonl", encoding="utf-8") if "副价" in line][0]
    assert corrected["slots"][0] == {"slot": "zone", "start": 0, "end": 2, "value": "副驾"}


def test_json_lines_without_session_ids_are_one_session_each_and_prepare(tmp_path):
    lines = [json.dumps({"text": "关窗", "intent": "window.close"}, ensure_ascii=False)] * 30
    lines += [json.dumps({"text": "打开阅读灯", "intent": "lights.on", "slots": [{"slot": "light", "start": 2, "end": 5}]},
                         ensure_ascii=False)] * 30
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    utts = read_jsonl(str(tmp_path / "c.jsonl"))
    assert len({u.session_id for u in utts}) == 60 and utts[31].slots == (Slot("light", 2, 5, "阅读灯"),)
    prepare_data.main(["--corpus_file", str(tmp_path / "c.jsonl"), "--output_dir", str(tmp_path / "out")])
    assert read_data_labels(str(tmp_path / "out")).slot_types == ["light"]


@pytest.mark.parametrize("line, problem", [
    ('{"text": "关窗"}', "an object with text, intent"),
    ('{"text": "关窗", "intent": "window.close", "extra": 1}', "an object with text, intent"),
    ('["关窗"]', "not list"),
    ('{"text": "关窗", "intent": "window close"}', "bad intent"),
    ('{"text": " ", "intent": "window.close"}', "text must be a non-blank string"),
    ('{"text": "打开阅读灯", "intent": "lights.on", "slots": [{"slot": "light", "start": 2, "end": 9}]}', "0 <= start < end <= 5"),
    ('{"text": "打开阅读灯", "intent": "lights.on", "slots": [{"slot": "light", "start": 2.0, "end": 5}]}', "must be integers"),
    ('{"text": "打开阅读灯", "intent": "lights.on", "slots": [{"slot": "light/x", "start": 2, "end": 5}]}', "bad slot type"),
    ('{"text": "打开阅读灯", "intent": "lights.on", "slots": [{"slot": "a", "start": 0, "end": 3}, {"slot": "b", "start": 2, "end": 5}]}',
     "overlap"),
    ('{"text": "打开<阅读灯>", "intent": "lights.on"}', "the corpus format cannot hold"),
    ('{"text": "打开阅读灯", "intent": "lights.on", "slots": [{"slot": "light", "start": 2, "end": 5, "value": ""}]}', "non-blank"),
    ('{"text": "关窗", "intent": "window.close", "session_id": "a\\tb"}', "session_id"),
    ('{"text": "关窗", "intent": NaN}', "not JSON"),
    ('{"text": "关窗", "intent": "window.close"', "Expecting"),
])
def test_a_bad_json_line_names_file_line_and_problem(tmp_path, line, problem):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "关窗", "intent": "window.close"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError) as err:
        read_jsonl(str(path))
    assert err.value.path == str(path) and err.value.line_no == 3
    assert problem in err.value.problem


def test_the_rasa_example_imports_with_synonyms_as_values_and_prepares(tmp_path):
    out = str(tmp_path / "rasa.txt")
    proc = subprocess.run([sys.executable, os.path.join(utils.PROJECT_DIR, "data", "import_rasa.py"),
                           "--nlu_file", os.path.join(EXAMPLE, "nlu.yml"), "--output_file", out],
                          capture_output=True, text=True, cwd=utils.PROJECT_DIR, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "10 examples of 4 intents, 11 entities" in proc.stdout and "not imported (not training examples): 1 regex" in proc.stdout
    utts = {u.text: u for u in read_corpus(out)}
    assert utts["副驾温度二十二度"].slots == (Slot("zone", 0, 2, "副驾"), Slot("temperature", 4, 8, "二十二度"))
    assert utts["副价温度调到二十度"].slots[0] == Slot("zone", 0, 2, "副驾")  # a synonym of 副驾
    assert utts["打开物灯"].slots == (Slot("light", 2, 4, "雾灯"),)  # an explicit value
    assert utts["开空调"].intent == "climate.ac_on" and utts["开空调"].slots == ()
    assert len({u.session_id for u in utts.values()}) == 10


def test_rasa_round_trip_of_the_corpus_format(tmp_path):
    """Every utterance of the example corpus written as a Rasa example (values as JSON entities)
    imports back to itself."""
    native = read_corpus(os.path.join(EXAMPLE, "corpus.txt"))
    items = {}
    for u in native:
        text, cursor = "", 0
        for s in u.slots:
            spec = json.dumps({"entity": s.type, "value": s.value}, ensure_ascii=False)
            text += u.text[cursor : s.start] + f"[{u.text[s.start : s.end]}]{spec}"
            cursor = s.end
        items.setdefault(u.intent, []).append(text + u.text[cursor:])
    yml = "nlu:\n" + "".join(f"- intent: {i}\n  examples: |\n" + "".join(f"    - {e}\n" for e in ex) for i, ex in items.items())
    (tmp_path / "nlu.yml").write_text(yml, encoding="utf-8")
    imported, skipped = import_rasa.read_rasa_nlu(str(tmp_path / "nlu.yml"))
    key = lambda u: (u.intent, u.text, u.slots)  # noqa: E731
    assert sorted(map(key, imported)) == sorted(map(key, native)) and skipped == {}


@pytest.mark.parametrize("examples, line, problem", [
    ("    - 打开[阅读灯](light\n", 5, "a '[', ']', '<', '>' or tab left"),
    ('    - 打开[阅读灯]{"entity": "light", "role": "front"}\n', 5, "roles and groups"),
    ('    - 打开[阅读灯]{"value": "x"}\n', 5, 'needs an "entity" key'),
    ("    - 打开[阅读灯](light:)\n    - 打开[阅读灯](li ght)\n", 6, "bad slot type"),
])
def test_a_bad_rasa_example_names_its_line(tmp_path, examples, line, problem):
    path = tmp_path / "nlu.yml"
    path.write_text('version: "3.1"\nnlu:\n- intent: lights.on\n  examples: |\n' + examples, encoding="utf-8")
    with pytest.raises(CorpusError) as err:
        import_rasa.read_rasa_nlu(str(path))
    assert (err.value.line_no, problem in err.value.problem) == (line, True), err.value


def test_the_example_corpus_prepares_with_every_label_in_train(tmp_path):
    prepare_data.main(["--corpus_file", os.path.join(EXAMPLE, "corpus.txt"), "--output_dir", str(tmp_path)])
    stats = utils.load_json(str(tmp_path / "stats.json"))
    assert len(stats["labels"]["intents"]) == 11 and stats["labels"]["unseen_in_train"] == {"intents": {}, "slot_types": {}}
    assert "OTHERS" not in stats["labels"]["intents"] and stats["corrections"] == 2


# The NLPCC 2018 label set: nothing outside tests and the synthetic corpus that imitates it may name one.
NLPCC_LABELS = re.compile(
    r"OTHERS|music\.(play|pause|next|prev)|navigation\.(navigation|open|cancel_navigation|start_navigation)|phone_call\.|"
    r"[\"'](B-|I-)?(song|singer|theme|style|age|toplist|emotion|language|instrument|scene|destination|custom_destination|"
    r"origin|phone_num|contact_name)[\"']")


def test_no_nlpcc_label_literal_in_library_code():
    files = subprocess.run(["git", "ls-files", "*.py", "*.cc", "*.h", "*.java"], capture_output=True, text=True,
                           cwd=utils.PROJECT_DIR, check=True).stdout.split()
    found = []
    for name in files:
        if name.startswith("tests/") or name == "data/synthetic.py":
            continue
        with open(os.path.join(utils.PROJECT_DIR, name), encoding="utf-8") as f:
            found += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(f, 1) if NLPCC_LABELS.search(line)]
    assert found == []
    assert NLPCC_LABELS.search('labels.intent_id["music.play"]') and NLPCC_LABELS.search("tag == 'B-song'")  # the pattern bites


def test_the_vehicle_domain_shares_no_label_with_nlpcc():
    vehicle = derive_labels(generate(2000, domain="vehicle"))
    nlpcc = derive_labels(generate(domain="nlpcc"))
    assert not set(vehicle.intents) & set(nlpcc.intents) and not set(vehicle.slot_types) & set(nlpcc.slot_types)
    assert set(vehicle.intents) == set(DOMAINS["vehicle"].intent_weights) and "OTHERS" not in vehicle.intents
