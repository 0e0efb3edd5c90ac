"""The prediction path (predictor.py): windows merged back, decoding to result records, batching,
and the request checks (blank, invisible-only and over-long utterances)."""
import numpy as np
import pytest

import decoding
import predictor
import task
import values
from conftest import SYNTHETIC_LABELS
import utils

LABELS = SYNTHETIC_LABELS

def window_logits(encoded, utterance_tags, num_tags, noise_tag):
    """[rows, width, T] slot logits with each utterance's tags one-hot on the tokens a window keeps
    (task.window_keeps) and `noise_tag` on the tokens it does not: merging must pick the kept ones."""
    rows = [(enc, tags, k) for enc, tags in zip(encoded, utterance_tags) for k in range(len(enc.windows))]
    out = np.full((len(rows), max(len(w) for e in encoded for w in e.windows), num_tags), -1.0, dtype="float32")
    for r, (enc, tags, k) in enumerate(rows):
        (start, end), (keep, keep_end) = enc.bounds[k], enc.keeps[k]
        for t in range(start, end):
            out[r, 1 + t - start, tags[t] if keep <= t < keep_end else noise_tag] = 5.0
    return out


def test_merge_windows_and_describe(labels):
    """Hand-built logits for one four-window utterance and one short one."""
    tok = task.CharTokenizer.build(["导航去北京 la la的家"])
    long_text, short_text = "导航去北京 la la", "的家"
    the_task = task.Task(tok, LABELS, 6, task.any_slot_types(LABELS))
    encoded = [the_task.encode(t) for t in (long_text, short_text)]
    assert [len(e.windows) for e in encoded] == [4, 1]  # 9 tokens in windows of 4, overlapping by 2
    sid = labels.slot_id
    tags = [
        [sid["O"]] * 3 + [sid["B-destination"], sid["I-destination"], sid["B-singer"], sid["I-singer"], sid["I-singer"], sid["I-singer"]],
        [sid["O"], sid["B-custom_destination"]],
    ]
    intent = np.full((5, len(labels.intents)), 0.0, dtype="float32")
    intent[0, labels.intent_id["navigation.navigation"]] = 3.0  # first window decides
    intent[1, labels.intent_id["music.play"]] = 9.0
    intent[4, labels.intent_id["OTHERS"]] = 1.0
    preds = predictor.merge_windows(intent, window_logits(encoded, tags, len(labels.slot_tags), sid["B-song"]), encoded,
                                    decoding.Decoder.for_task(the_task))
    assert [p.tag_ids for p in preds] == tags
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
        {"slot": "destination", "entity": "北京", "pos": [3, 4], "confidence": conf[0], "value": "北京", "resolution": "none"},
        {"slot": "singer", "entity": "la la", "pos": [6, 10], "confidence": conf[1], "value": "la la", "resolution": "none"},
    ]
    # with a catalogue: la la is heard for 娜娜 (a synonym), 北京 is a value as it is
    catalogue = values.Catalogue()
    catalogue.add("singer", "娜娜", ["LA LA"])
    catalogue.add("destination", "北京")
    resolved = predictor.describe(preds[0], encoded[0], labels, catalogue=catalogue)["slots"]
    assert [(s["entity"], s["value"], s["resolution"]) for s in resolved] == [("北京", "北京", "exact"), ("la la", "娜娜", "catalogue")]
    assert all(0.9 < c < 1 for c in conf)
    second = predictor.describe(preds[1], encoded[1], labels)
    assert second["intent"] == "OTHERS"
    assert second["slots"] == [{"slot": "custom_destination", "entity": "家", "pos": [1, 1],
                                "confidence": round(preds[1].span_confidences[0], 4), "value": "家", "resolution": "none"}]
    # OTHERS at e / (e + 10) = 0.2138: the weakest part of the result decides
    assert [predictor.describe(preds[1], encoded[1], labels, min_confidence=m)["fallback"] for m in (0.21, 0.22)] == [False, True]
    assert preds[0].slot_logits.shape == (9, len(labels.slot_tags))


def test_predict_encoded_batches_windows_in_order(labels):
    """The batched runner must hand each window's logits back to its own utterance."""
    tok = task.CharTokenizer.build(["甲乙丙丁戊己庚辛"])
    texts = ["甲乙丙丁戊己庚辛", "乙", "丙丁戊"]
    encoded = [task.Task(tok, LABELS, 5, task.any_slot_types(LABELS)).encode(t) for t in texts]
    assert [len(e.windows) for e in encoded] == [6, 1, 1]  # 8 tokens in windows of 3, stride 1

    def echo(ids):  # slot logits peak at tag (token id % T) so the output reveals the input
        intent = np.zeros((len(ids), 3), dtype="float32")
        intent[:, 0] = ids[:, 1]
        return intent, np.eye(7, dtype="float32")[ids % 7]

    greedy = decoding.Decoder(task.LabelMaps(["a", "b", "c"], ["PAD", "O", "B-x", "I-x", "B-y", "I-y", "B-z"]), {"a": [], "b": [], "c": []},
                              decoder=decoding.GREEDY)
    preds = predictor.run_windows(encoded, echo, tok.pad_id, greedy, batch_size=2)
    for p, e in zip(preds, encoded):
        kept = [i for w, (start, _), (keep, end) in zip(e.windows, e.bounds, e.keeps) for i in w[1 + keep - start : 1 + end - start]]
        assert p.tag_ids == [i % 7 for i in kept] and len(kept) == len(e.offsets)
        assert p.intent_logits[0] == e.windows[0][1]
    # rows are batched shortest first: two long and two short utterances in turn pad to 3 and 10, not 10 and 10
    long_window = task.Task(tok, LABELS, 16, task.any_slot_types(LABELS))
    widths = []
    counted = lambda ids: widths.append(ids.shape[1]) or echo(ids)
    preds = predictor.run_windows(
        [long_window.encode(t) for t in ["甲乙丙丁戊己庚辛", "乙", "甲乙丙丁戊己庚辛", "丙"]], counted, tok.pad_id, greedy, batch_size=2
    )
    assert widths == [3, 10] and [p.intent_logits[0] for p in preds] == [tok.token_to_id[c] for c in "甲乙甲丙"]


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
    assert len(rows) == 1 + 3  # "导航" in one window, the 8-token utterance in three of 4; nothing else ran
    calls = len(seen)
    assert p.predict([]) == [] and p.predict(["", "\u200b"])[1]["error"] == "empty utterance" and len(seen) == calls


def test_an_entity_across_a_window_boundary_comes_out_whole(labels):
    """A model that tags a digit B- when the token before it is not a digit, I- otherwise: the
    windows' first digits look like the start of a number. Overlapping windows take each token
    from the window that sees its left context, so 13812345678 stays one phone number
    (consecutive windows gave 1381 + 2345678)."""
    tok = task.CharTokenizer.build(["打电话给0123456789"])
    digits = {tok.token_to_id[d] for d in "0123456789"}
    sid, intent_id = labels.slot_id, labels.intent_id["phone_call.make_a_phone_call"]

    def left_context_model(ids):
        slots = np.zeros(ids.shape + (len(labels.slot_tags),), dtype="float32")
        for r, row in enumerate(ids):
            for p in range(1, len(row)):
                is_digit, after_digit = int(row[p]) in digits, int(row[p - 1]) in digits
                slots[r, p, sid["I-phone_num" if after_digit else "B-phone_num"] if is_digit else sid["O"]] = 5.0
        intent = np.zeros((len(ids), len(labels.intents)), dtype="float32")
        intent[:, intent_id] = 5.0
        return intent, slots

    text = "打电话给 13812345678"  # 15 tokens; windows of 6 cut the number after 1381
    p = predictor.Predictor(task.Task(tok, LABELS, 8, task.any_slot_types(LABELS)), left_context_model)
    assert len(p.task.encode(text).windows) == 4
    [record] = p.predict([text])
    assert [(s["slot"], s["entity"], s["pos"]) for s in record["slots"]] == [("phone_num", "13812345678", [5, 15])]
    consecutive = [(0, 6), (6, 12), (12, 15)]  # what non-overlapping windows would have kept
    rows = [[tok.cls_id] + tok.tokenize(text)[0][s:e] + [tok.sep_id] for s, e in consecutive]
    _, slots = left_context_model(utils.pad_batch(rows, tok.pad_id))
    assert slots[1, 1].argmax() == sid["B-phone_num"]  # the cut that overlapping windows avoid


def test_sessions_give_each_utterance_its_own_sessions_earlier_turns(labels):
    """predict_sessions: interleaved sessions never see each other's turns; bad lines get a line
    error and do not enter any history."""
    tok = task.CharTokenizer.build(["导航去北京取消播放稻香"])
    seen = []

    def logits(ids):
        seen.extend(tuple(int(i) for i in row if i != tok.pad_id) for row in ids)
        return np.zeros((len(ids), len(labels.intents)), dtype="float32"), np.zeros(ids.shape + (len(labels.slot_tags),), dtype="float32")

    p = predictor.Predictor(task.Task(tok, LABELS, 16, task.any_slot_types(LABELS), 1, 8), logits)
    lines = ['{"session_id": "a", "text": "导航去北京"}', '{"session_id": "b", "text": "播放稻香"}', "not json", None,
             '{"session_id": "a", "text": 3}', '{"session_id": "a", "text": "取消", "x": NaN}', '{"session_id": "b", "text": "取消"}',
             '{"session_id": "a", "text": "取消"}', '{"session_id": "a", "text": "\\ud800"}', '{"session_id": "c", "text": ""}']
    records = p.predict_sessions(lines)
    bad = 'expected a JSON object with string "session_id" and "text"'
    assert [r.get("error") for r in records] == [None, None, bad, "invalid UTF-8", bad, bad, None, None, bad, "empty utterance"]
    assert [r.get("session_id") for r in records] == ["a", "b", None, None, None, None, "b", "a", None, "c"]
    assert [r.get("line") for r in records] == [None, None, 3, 4, 5, 6, None, None, 9, None]
    ids = lambda text: tuple(tok.token_to_id[c] for c in text)
    row = lambda text, previous: (tok.cls_id,) + ids(text) + (tok.sep_id,) + (ids(previous) + (tok.sep_id,) if previous else ())
    # the rows the runtime saw (run_windows batches them shortest first)
    assert sorted(seen) == sorted([row("导航去北京", ""), row("播放稻香", ""), row("取消", "播放稻香"), row("取消", "导航去北京")])
