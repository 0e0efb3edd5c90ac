"""Character <-> token <-> tag alignment, windows and prediction decoding."""
import numpy as np
import pytest

import utils


def check_alignment(utterances, tokenizer, labels, max_seq_length=16):
    """Gold slots survive tokenization exactly: BIO over tokens -> character spans -> same text."""
    for utt in utterances:
        ids, offsets = tokenizer.tokenize(utt.text)
        assert len(ids) == len(offsets) == sum(not c.isspace() for c in utt.text)
        assert all(not utt.text[o].isspace() for o in offsets)
        tags = utils.token_tags(utt)
        spans = [(k, offsets[s], offsets[e - 1] + 1) for k, s, e in utils.bio_spans(tags)]
        # slots never start or end on a space, so token spans give back the slot spans exactly
        assert spans == [(s.type, s.start, s.end) for s in utt.slots], utt
        # training rows: every window carries the tags of its own tokens
        rows = utils.labelled_windows(tokenizer, utt, labels, max_seq_length)
        window_tags = [labels.slot_tags[t] for r in rows for t in r["slot_labels"][1:-1]]
        assert window_tags == tags
        assert all(len(r["input_ids"]) == len(r["slot_labels"]) <= max_seq_length for r in rows)
        assert [i for r in rows for i in r["input_ids"][1:-1]] == ids


def test_alignment_on_synthetic(synthetic_splits, labels):
    utts = [u for v in synthetic_splits.values() for u in v]
    check_alignment(utts, utils.CharTokenizer.build(u.text for u in utts), labels)


def test_alignment_on_whole_corpus(corpus, labels):
    check_alignment(corpus, utils.CharTokenizer.build(u.text for u in corpus), labels)


def test_normalization_folds_width_and_case_one_char_to_one():
    assert [utils.normalize_char(c) for c in "Ａb１，Ⅱ"] == ["a", "b", "1", ",", "ⅱ"]
    tok = utils.CharTokenizer.build(["ABC１２"])
    assert tok.vocab[:5] == utils.SPECIAL_TOKENS and set(tok.vocab[5:]) == {"a", "b", "c", "1", "2"}
    ids, offsets = tok.tokenize("a C\u3000１z")  # ideographic space is whitespace; z is unknown
    assert offsets == [0, 2, 4, 5]
    assert ids == [tok.token_to_id["a"], tok.token_to_id["c"], tok.token_to_id["1"], tok.unk_id]


def test_vocabulary_is_deterministic_and_saved(tmp_path):
    tok = utils.CharTokenizer.build(["播放音乐", "播放", "导航"])
    assert tok.vocab == utils.SPECIAL_TOKENS + ["播", "放", "乐", "导", "航", "音"]  # by count, then code point
    again = utils.CharTokenizer.from_file(tok.save(str(tmp_path)))
    assert again.vocab == tok.vocab and again.pad_id == 0 and again.cls_id == 1
    with pytest.raises(ValueError, match="special tokens"):
        utils.CharTokenizer(["a", "b"])


def test_windows_cover_long_utterances():
    tok = utils.CharTokenizer.build(["一二三四五六七八九十"])
    enc = utils.encode_for_inference(tok, "一二三四五 六七八九十", max_seq_length=6)  # 4 tokens a window
    assert [len(w) for w in enc.windows] == [6, 6, 4]
    assert enc.windows[0][0] == tok.cls_id and enc.windows[-1][-1] == tok.sep_id
    assert utils.encode_for_inference(tok, "", 6).windows == [[tok.cls_id, tok.sep_id]]
    assert utils.window_bounds(0, 4) == [(0, 0)] and utils.window_bounds(8, 4) == [(0, 4), (4, 8)]


def one_hot_logits(tag_rows, num_tags):
    width = max(len(r) for r in tag_rows) + 2
    out = np.full((len(tag_rows), width, num_tags), -1.0, dtype="float32")
    for i, row in enumerate(tag_rows):
        for j, t in enumerate(row):
            out[i, j + 1, t] = 5.0
    return out


def test_merge_windows_and_describe(labels):
    """Hand-built logits for one two-window utterance and one short one."""
    tok = utils.CharTokenizer.build(["导航去北京 la la的家"])
    long_text, short_text = "导航去北京 la la", "的家"
    encoded = [utils.encode_for_inference(tok, t, 6) for t in (long_text, short_text)]
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
    preds = utils.merge_windows(intent, one_hot_logits(tags, len(labels.slot_tags)), [e.windows for e in encoded])
    first = utils.describe(preds[0], encoded[0], labels)
    assert first["intent"] == "navigation.navigation"
    expected_conf = np.exp(3.0) / (np.exp(3.0) + len(labels.intents) - 1)
    assert first["confidence"] == pytest.approx(expected_conf, abs=1e-4)
    assert first["slots"] == [
        {"slot": "destination", "entity": "北京", "pos": [3, 4]},
        {"slot": "singer", "entity": "la la", "pos": [6, 10]},
    ]
    second = utils.describe(preds[1], encoded[1], labels)
    assert second["intent"] == "OTHERS" and second["slots"] == [{"slot": "custom_destination", "entity": "家", "pos": [1, 1]}]
    assert preds[0].slot_logits.shape == (9, len(labels.slot_tags))


def test_predict_encoded_batches_windows_in_order(labels):
    """The batched runner must hand each window's logits back to its own utterance."""
    tok = utils.CharTokenizer.build(["甲乙丙丁戊己庚辛"])
    texts = ["甲乙丙丁戊己庚辛", "乙", "丙丁戊"]
    encoded = [utils.encode_for_inference(tok, t, 5) for t in texts]

    def echo(ids):  # slot logits peak at tag (token id % T) so the output reveals the input
        intent = np.zeros((len(ids), 3), dtype="float32")
        intent[:, 0] = ids[:, 1]
        return intent, np.eye(7, dtype="float32")[ids % 7]

    preds = utils.predict_encoded(encoded, echo, tok.pad_id, batch_size=2)
    for p, e in zip(preds, encoded):
        assert p.tag_ids == [i % 7 for w in e.windows for i in w[1:-1]]
        assert p.intent_logits[0] == e.windows[0][1]
