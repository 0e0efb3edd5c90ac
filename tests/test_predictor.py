"""The prediction path (predictor.py): windows merged back, decoding to result records, batching,
and the request checks (blank, invisible-only and over-long utterances)."""
import numpy as np
import pytest

import decoding
import predictor
import task

LABELS = task.LabelMaps.from_files()

def one_hot_logits(tag_rows, num_tags):
    width = max(len(r) for r in tag_rows) + 2
    out = np.full((len(tag_rows), width, num_tags), -1.0, dtype="float32")
    for i, row in enumerate(tag_rows):
        for j, t in enumerate(row):
            out[i, j + 1, t] = 5.0
    return out


def test_merge_windows_and_describe(labels):
    """Hand-built logits for one two-window utterance and one short one."""
    tok = task.CharTokenizer.build(["导航去北京 la la的家"])
    long_text, short_text = "导航去北京 la la", "的家"
    the_task = task.Task(tok, LABELS, 6, task.any_slot_types(LABELS))
    encoded = [the_task.encode(t) for t in (long_text, short_text)]
    assert [len(e.windows) for e in encoded] == [3, 1]  # 9 tokens in windows of 4
    sid = labels.slot_id
    tags = [
        [sid["O"]] * 3 + [sid["B-destination"]],
        [sid["I-destination"], sid["B-singer"], sid["I-singer"], sid["I-singer"]],
        [sid["I-singer"]],
        [sid["O"], sid["B-custom_destination"]],
    ]
    intent = np.full((4, len(labels.intents)), 0.0, dtype="float32")
    intent[0, labels.intent_id["navigation.navigation"]] = 3.0  # first window decides
    intent[1, labels.intent_id["music.play"]] = 9.0
    intent[3, labels.intent_id["OTHERS"]] = 1.0
    preds = predictor.merge_windows(intent, one_hot_logits(tags, len(labels.slot_tags)), [e.windows for e in encoded],
                                    decoding.Decoder.for_task(the_task))
    first = predictor.describe(preds[0], encoded[0], labels)
    assert first["intent"] == "navigation.navigation" and first["fallback"] is False
    expected_conf = np.exp(3.0) / (np.exp(3.0) + len(labels.intents) - 1)
    assert first["confidence"] == pytest.approx(expected_conf, abs=1e-4)
    assert first["intent_ranking"][0] == {"intent": "navigation.navigation", "confidence": first["confidence"]}
    # the other intents tie: the ranking keeps label order
    assert [r["intent"] for r in first["intent_ranking"][1:]] == labels.intents[:2]
    # span confidences (decoding.span_confidences, checked by enumeration in test_decoding.py), rounded
    conf = [round(c, 4) for c in preds[0].span_confidences]
    assert first["slots"] == [
        {"slot": "destination", "entity": "北京", "pos": [3, 4], "confidence": conf[0]},
        {"slot": "singer", "entity": "la la", "pos": [6, 10], "confidence": conf[1]},
    ]
    assert all(0.9 < c < 1 for c in conf)
    second = predictor.describe(preds[1], encoded[1], labels)
    assert second["intent"] == "OTHERS"
    assert second["slots"] == [{"slot": "custom_destination", "entity": "家", "pos": [1, 1],
                                "confidence": round(preds[1].span_confidences[0], 4)}]
    # OTHERS at e / (e + 10) = 0.2138: the weakest part of the result decides
    assert [predictor.describe(preds[1], encoded[1], labels, min_confidence=m)["fallback"] for m in (0.21, 0.22)] == [False, True]
    assert preds[0].slot_logits.shape == (9, len(labels.slot_tags))


def test_predict_encoded_batches_windows_in_order(labels):
    """The batched runner must hand each window's logits back to its own utterance."""
    tok = task.CharTokenizer.build(["甲乙丙丁戊己庚辛"])
    texts = ["甲乙丙丁戊己庚辛", "乙", "丙丁戊"]
    encoded = [task.Task(tok, LABELS, 5, task.any_slot_types(LABELS)).encode(t) for t in texts]

    def echo(ids):  # slot logits peak at tag (token id % T) so the output reveals the input
        intent = np.zeros((len(ids), 3), dtype="float32")
        intent[:, 0] = ids[:, 1]
        return intent, np.eye(7, dtype="float32")[ids % 7]

    greedy = decoding.Decoder(task.LabelMaps(["a", "b", "c"], ["PAD", "O", "B-x", "I-x", "B-y", "I-y", "B-z"]), {"a": [], "b": [], "c": []},
                              decoder=decoding.GREEDY)
    preds = predictor.run_windows(encoded, echo, tok.pad_id, greedy, batch_size=2)
    for p, e in zip(preds, encoded):
        assert p.tag_ids == [i % 7 for w in e.windows for i in w[1:-1]]
        assert p.intent_logits[0] == e.windows[0][1]


def test_requests_without_a_visible_character_or_too_long_get_error_records():
    """The checks sit inside the prediction path: an error record, in input order, and the
    runtime never sees those utterances."""
    tok = task.CharTokenizer.build(["导航去北京"])
    seen = []

    def logits(ids):
        seen.append(ids.copy())
        intent = np.zeros((len(ids), len(LABELS.intents)), dtype="float32")
        intent[:, LABELS.intent_id["navigation.navigation"]] = 5.0
        return intent, np.zeros(ids.shape + (len(LABELS.slot_tags),), dtype="float32")

    p = predictor.Predictor(task.Task(tok, LABELS, 6, task.any_slot_types(LABELS)), logits, max_utterance_tokens=8)
    texts = ["导航", "", " \t\u3000", "\u200b\ufeff\u0000", "导航去北京导航去北", "导\u200b航去北京导航去", "\u0085"]
    records = p.predict(texts)
    assert [r.get("error") for r in records] == [None, "empty utterance", "empty utterance", "empty utterance",
                                                 "utterance too long: 9 tokens (at most 8)", None, "empty utterance"]
    assert [r["text"] for r in records] == texts and records[5]["intent"] == "navigation.navigation"
    rows = np.concatenate([ids for ids in seen])
    assert len(rows) == 1 + 2  # "导航" in one window, the 8-token utterance in two of 4; nothing else ran
    calls = len(seen)
    assert p.predict([]) == [] and p.predict(["", "\u200b"])[1]["error"] == "empty utterance" and len(seen) == calls
