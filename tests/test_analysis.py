"""analysis.py on hand-made predictions (every count checked by hand), and run_eval.py --analysis_dir
on the shared model (the files it writes, its totals against the metrics of the same run)."""
import json
import os

import numpy as np
import pytest

import analysis
import run_eval
from conftest import SYNTHETIC_LABELS
from data.corpus import Slot, Utterance, read_corpus
from decoding import Prediction

LABELS = SYNTHETIC_LABELS


def utt(session, text, intent, *slots, line=0):
    return Utterance(
        session, text, intent, tuple(Slot(kind, s, e, text[s:e] if value is None else value) for kind, s, e, value in slots), line
    )


def pred(intent, tags, confidence):
    """A Prediction with `intent` at `confidence` and the given tags (names)."""
    probs = np.full(len(LABELS.intents), (1 - confidence) / (len(LABELS.intents) - 1))
    probs[LABELS.intent_id[intent]] = confidence
    ids = [LABELS.slot_id[t] for t in tags]
    return Prediction(
        LABELS.intent_id[intent], probs, ids, [], [], np.zeros(len(LABELS.intents)), np.zeros((len(tags), len(LABELS.slot_tags)))
    )


GOLD = [
    utt("a", "导航去北京", "navigation.navigation", ("destination", 3, 5, None), line=1),  # right
    utt("a", "取消", "navigation.cancel_navigation", line=2),  # intent wrong (-> OTHERS), later turn, short
    utt("b", "播放稻香", "music.play", ("song", 2, 4, None), line=3),  # only the slot wrong (singer)
    utt(
        "b", "打电话给老王吧我们今天晚上一起去吃饭好吗", "phone_call.make_a_phone_call", ("contact_name", 4, 6, "王先生"), line=4
    ),  # long, correction, right
    utt("c", "取消", "navigation.cancel_navigation", line=5),  # intent wrong (-> OTHERS), first turn
]
PREDICTED = [
    pred("navigation.navigation", ["O", "O", "O", "B-destination", "I-destination"], 0.95),
    pred("OTHERS", ["O", "O"], 0.55),
    pred("music.play", ["O", "O", "B-singer", "I-singer"], 0.9),
    pred("phone_call.make_a_phone_call", ["O"] * 4 + ["B-contact_name", "I-contact_name"] + ["O"] * 14, 0.85),
    pred("OTHERS", ["O", "O"], 0.35),
]


@pytest.fixture(scope="module")
def rows():
    return analysis.utterance_rows(GOLD, PREDICTED, LABELS)


def test_rows_say_what_was_predicted_and_where_the_utterance_sits(rows):
    assert [r["turn"] for r in rows] == [0, 1, 0, 1, 0] and [r["tokens"] for r in rows] == [5, 2, 4, 20, 2]
    assert rows[0]["slots"] == rows[0]["gold_slots"] == [["destination", "北京", 3, 4]]
    assert rows[2]["slots"] == [["singer", "稻香", 2, 3]] and rows[2]["gold_slots"] == [["song", "稻香", 2, 3]]
    assert [(r["intent_ok"], r["slots_ok"]) for r in rows] == [(True, True), (False, True), (True, False), (True, True), (False, True)]
    assert [r["correction"] for r in rows] == [False, False, False, True, False]


def test_analysis_counts_match_a_hand_count(rows):
    result = analysis.analyze(rows, LABELS.intents, LABELS.slot_types)
    confusion = np.array(result["confusion"])
    i = LABELS.intent_id
    assert confusion.sum() == 5 and confusion[i["navigation.cancel_navigation"], i["OTHERS"]] == 2
    assert confusion[i["music.play"], i["music.play"]] == 1
    assert result["per_intent"]["OTHERS"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["per_intent"]["navigation.cancel_navigation"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert result["per_intent"]["music.play"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert result["per_slot_type"]["song"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["per_slot_type"]["singer"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["per_slot_type"]["destination"]["f1"] == 1.0 and "age" not in result["per_slot_type"]
    c = result["by_category"]
    assert c["all"] == {"utterances": 5, "sentence_acc": 0.4, "intent_wrong": 2, "only_slots_wrong": 1}
    assert c["length <= 4"] == {"utterances": 3, "sentence_acc": 0.0, "intent_wrong": 2, "only_slots_wrong": 1}
    assert c["length > 14"] == {"utterances": 1, "sentence_acc": 1.0, "intent_wrong": 0, "only_slots_wrong": 0}
    assert c["first turn"]["utterances"] == 3 and c["first turn"]["intent_wrong"] == 1
    assert c["with ASR correction"] == {"utterances": 1, "sentence_acc": 1.0, "intent_wrong": 0, "only_slots_wrong": 0}
    assert result["confusions"] == [
        {"gold": "navigation.cancel_navigation", "predicted": "OTHERS", "count": 2, "examples": ["取消", "取消"]}
    ]
    assert result["confidence_right"][9] == 2 and result["confidence_right"][8] == 1  # 0.95 and 0.9 (bins include their left edge); 0.85
    assert result["confidence_wrong"][5] == 1 and result["confidence_wrong"][3] == 1  # 0.55, 0.35


def test_comparison_finds_the_flipped_utterances(rows):
    better = list(PREDICTED)
    better[1] = pred("navigation.cancel_navigation", ["O", "O"], 0.8)  # fixed
    better[3] = pred("phone_call.make_a_phone_call", ["O"] * 20, 0.8)  # broken (the slot is lost)
    other_rows = analysis.utterance_rows(GOLD, better, LABELS)
    result, other = (analysis.analyze(r, LABELS.intents, LABELS.slot_types) for r in (rows, other_rows))
    comparison = analysis.compare(rows, other_rows, result, other)
    assert [f["line"] for f in comparison["fixed"]] == [2] and [f["line"] for f in comparison["broken"]] == [4]
    assert comparison["broken"][0]["other_slots"] == [] and comparison["by_category"]["all"]["delta"] == 0.0
    assert comparison["by_category"]["later turn"] == {"sentence_acc": 0.5, "other_sentence_acc": 0.5, "delta": 0.0}
    assert comparison["by_category"]["length > 14"]["delta"] == -1.0
    with pytest.raises(ValueError, match="different utterances"):
        analysis.compare(rows, other_rows[:4], result, other)


def test_run_eval_writes_the_analysis(trained, synthetic_dir, tmp_path, capsys):
    model_dir = os.path.join(trained, "infer_model")
    test_file = os.path.join(synthetic_dir, "test.txt")
    out = tmp_path / "analysis"
    run_eval.main(["--model_dir", model_dir, "--eval_file", test_file, "--analysis_dir", str(out), "--compare_model_dir", model_dir])
    metrics = json.loads(capsys.readouterr().out)
    assert sorted(os.listdir(out)) == ["analysis.json", "analysis.md", "confusion.png", "errors.png"]
    report = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    n = len(read_corpus(test_file, LABELS))
    assert report["utterances"] == len(report["rows"]) == n == sum(map(sum, report["confusion"]))
    assert report["by_category"]["all"]["sentence_acc"] == pytest.approx(metrics["sentence_acc"], abs=1e-4)
    right = sum(r["intent_ok"] for r in report["rows"])
    assert right == pytest.approx(metrics["intent_acc"] * n) and sum(report["confidence_right"]) == right
    assert report["comparison"]["fixed"] == report["comparison"]["broken"] == []  # a model against itself
    assert "## Errors by category" in (out / "analysis.md").read_text(encoding="utf-8")
    with pytest.raises(SystemExit, match="--analysis_dir needs --eval_file"):
        run_eval.main(["--model_dir", model_dir, "--text", "导航", "--analysis_dir", str(out)])
