"""Metrics on hand-computed examples."""
import pytest

import utils


def test_bio_spans_conlleval_rules():
    assert utils.bio_spans(["B-song", "I-song", "O", "B-singer"]) == [("song", 0, 2), ("singer", 3, 4)]
    assert utils.bio_spans(["I-song", "I-song"]) == [("song", 0, 2)]  # I- without B- starts a span
    assert utils.bio_spans(["B-song", "I-singer"]) == [("song", 0, 1), ("singer", 1, 2)]  # type change
    assert utils.bio_spans(["B-song", "B-song"]) == [("song", 0, 1), ("song", 1, 2)]
    assert utils.bio_spans(["O", "PAD"]) == [] and utils.bio_spans([]) == []


def utt(text, intent, *slots):
    return utils.Utterance("s", text, intent, tuple(utils.Slot(k, s, e, text[s:e]) for k, s, e in slots))


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
    m = utils.slu_metrics(gold, predicted, slotless_intents=["music.pause", "music.next"])
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
    m = utils.slu_metrics(gold, [("music.play", ["B-singer", "I-singer", "I-singer", "I-singer"])], [])
    assert m["sentence_acc"] == 1.0 and m["slot_f1"] == 1.0
    m = utils.slu_metrics([utt("暂停", "music.pause")], [("music.pause", ["PAD", "O"])], [])
    assert m["sentence_acc"] == 1.0 and m["slot_precision"] == 0.0 and m["slot_f1"] == 0.0


def test_slu_metrics_rejects_misaligned_predictions():
    with pytest.raises(ValueError, match="2 predicted tags for 3 tokens"):
        utils.slu_metrics([utt("下一首", "music.next")], [("music.next", ["O", "O"])], [])
    with pytest.raises(ValueError, match="1 gold utterances but 0 predictions"):
        utils.slu_metrics([utt("下一首", "music.next")], [], [])
