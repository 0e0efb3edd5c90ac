"""Metrics on hand-computed examples, and the slot scores against seqeval."""
import os
import random

import pytest
from conftest import SHARED_CORPUS, SYNTHETIC_LABELS

import metrics
from data.corpus import Slot, Utterance


def utt(text, intent, *slots):
    return Utterance("s", text, intent, tuple(Slot(k, s, e, text[s:e]) for k, s, e in slots))


def test_slu_metrics_by_hand():
    gold = [
        utt("导航去北京", "navigation.navigation", ("destination", 3, 5)),
        utt("播放晴天", "music.play", ("song", 2, 4)),
        utt("暂停", "music.pause"),
        utt("下一首", "music.next"),
    ]
    predicted = [
        ("navigation.navigation", ["O", "O", "O", "B-destination", "I-destination"]),  # all right
        ("music.play", ["O", "O", "B-song", "O"]),  # intent right, span wrong
        ("music.pause", ["B-song", "O"]),  # intent right, spurious slot: wrong strictly, right leniently
        ("music.prev", ["O", "O", "O"]),  # intent wrong: wrong either way
    ]
    m = metrics.slu_metrics(gold, predicted, slotless_intents=["music.pause", "music.next"])
    assert m["intent_acc"] == pytest.approx(3 / 4)
    # gold spans: destination(3,5), song(2,4); predicted: destination(3,5), song(2,3), song(0,1)
    assert m["slot_precision"] == pytest.approx(1 / 3) and m["slot_recall"] == pytest.approx(1 / 2)
    assert m["slot_f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert m["sentence_acc"] == pytest.approx(1 / 4)
    assert m["sentence_acc_ref"] == pytest.approx(2 / 4)
    assert m["per_intent"]["music.pause"] == {"count": 1, "intent_correct": 1, "sentence_correct": 0}
    assert m["per_intent"]["music.next"] == {"count": 1, "intent_correct": 0, "sentence_correct": 0}


def test_predicted_pad_counts_as_outside_and_spaces_carry_no_tag():
    gold = [utt("la la", "music.play", ("singer", 0, 5))]
    m = metrics.slu_metrics(gold, [("music.play", ["B-singer", "I-singer", "I-singer", "I-singer"])], [])
    assert m["sentence_acc"] == 1.0 and m["slot_f1"] == 1.0
    m = metrics.slu_metrics([utt("暂停", "music.pause")], [("music.pause", ["PAD", "O"])], [])
    assert m["sentence_acc"] == 1.0 and m["slot_precision"] == 0.0 and m["slot_f1"] == 0.0


def test_slu_metrics_rejects_misaligned_predictions():
    with pytest.raises(ValueError, match="2 predicted tags for 3 tokens"):
        metrics.slu_metrics([utt("下一首", "music.next")], [("music.next", ["O", "O"])], [])
    with pytest.raises(ValueError, match="1 gold utterances but 0 predictions"):
        metrics.slu_metrics([utt("下一首", "music.next")], [], [])


def seqeval_scores(gold_tags, predicted_tags):
    from seqeval.metrics import f1_score, precision_score, recall_score

    return [f(gold_tags, predicted_tags) for f in (precision_score, recall_score, f1_score)]


def test_slot_scores_agree_with_seqeval_on_model_predictions(trained, synthetic_splits):
    """seqeval (default mode: conlleval rules) on the shared model's test-split predictions."""
    import backends

    test = synthetic_splits["test"]
    model = backends.open_predictor(os.path.join(trained, "infer_model"))
    labels = model.task.labels
    predicted = [[labels.slot_tags[t] for t in p.tag_ids] for p in model.corpus_predictions(test)]
    predicted = [["O" if t == "PAD" else t for t in tags] for tags in predicted]
    m = metrics.slu_metrics(test, [(u.intent, tags) for u, tags in zip(test, predicted)], [])
    expected = seqeval_scores([u.token_tags() for u in test], predicted)
    assert [m["slot_precision"], m["slot_recall"], m["slot_f1"]] == pytest.approx(expected, abs=1e-12)


def test_slot_scores_agree_with_seqeval_on_broken_tag_sequences(synthetic_splits, request):
    """Gold tags with random damage (I- without B-, type changes, dropped and spurious tags):
    the corner cases of the span rules, on the synthetic test split and, when present, the corpus."""
    gold = list(synthetic_splits["test"])
    if os.path.isfile(SHARED_CORPUS):
        gold += request.getfixturevalue("corpus")
    rng = random.Random(7)
    tag_set = SYNTHETIC_LABELS.slot_tags[1:]  # without PAD
    predicted = []
    for utt in gold:
        tags = utt.token_tags()
        predicted.append([rng.choice(tag_set) if rng.random() < 0.15 else t for t in tags])
    m = metrics.slu_metrics(gold, [(u.intent, tags) for u, tags in zip(gold, predicted)], [])
    expected = seqeval_scores([u.token_tags() for u in gold], predicted)
    assert 0.2 < m["slot_f1"] < 0.95
    assert [m["slot_precision"], m["slot_recall"], m["slot_f1"]] == pytest.approx(expected, abs=1e-12)


def test_official_nlpcc_scores_by_hand():
    """Subtask 4: the frame intent@type=value over the intent's slot types, canonical gold values,
    de-duplicated and sorted; subtask 2: intent macro-F1 without the catch-all intent."""
    schema = {"music.play": ["singer", "song"], "navigation.navigation": ["destination"], "music.pause": [], "OTHERS": [],
              "music.prev": []}
    corrected = Utterance("s", "播放奇隆的歌", "music.play", (Slot("singer", 2, 4, "祁隆"),))
    gold = [
        corrected,  # heard 奇隆, canonical 祁隆: the text as heard is a wrong value
        utt("导航去北京", "navigation.navigation", ("destination", 3, 5)),
        utt("去 北 京", "navigation.navigation", ("destination", 2, 5)),  # a span with a space inside
        utt("暂停", "music.pause"),
        utt("你好", "OTHERS"),
    ]
    assert metrics.frame("music.play", [("song", "晴天"), ("singer", "周杰伦"), ("song", "晴天"), ("destination", "x")], schema) \
        == "music.play@singer=周杰伦,song=晴天"
    predicted = [
        ("music.play", ["O", "O", "B-singer", "I-singer", "O", "O"]),
        ("navigation.navigation", ["O", "O", "O", "B-destination", "I-destination"]),
        ("navigation.navigation", ["O", "B-destination", "I-destination"]),  # one token per character but the spaces
        ("music.pause", ["B-destination", "I-destination"]),  # a slot outside music.pause's schema: dropped from the frame
        ("music.pause", ["O", "O"]),  # OTHERS predicted as music.pause
    ]
    assert metrics.predicted_slot_texts("去 北 京", ["O", "B-destination", "I-destination"]) == [("destination", "北 京")]
    m = metrics.slu_metrics(gold, predicted, [], schema, catch_all_intents=["OTHERS"])
    assert m["frame_acc"] == pytest.approx(3 / 5)  # the correction and the OTHERS utterance are wrong
    # music.play 1/1 -> F1 1; navigation 2/2 -> 1; music.pause: tp 1, gold 1, predicted 2 -> 2/3; music.prev: none -> 0
    assert m["intent_macro_f1"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    assert m["intent_macro_f1_present"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert "frame_acc" not in metrics.slu_metrics(gold, predicted, [])  # without a schema: not computed
