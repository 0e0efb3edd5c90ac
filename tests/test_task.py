"""Character <-> token <-> tag alignment, windows and prediction decoding."""
import pytest

import task
import utils

LABELS = task.LabelMaps.from_files()


def check_alignment(utterances, tokenizer, labels, max_seq_length=16):
    """Gold slots survive tokenization exactly: BIO over tokens -> character spans -> same text."""
    for utt in utterances:
        ids, offsets = tokenizer.tokenize(utt.text)
        assert len(ids) == len(offsets) == sum(task.carries_token(c) for c in utt.text)
        assert all(task.carries_token(utt.text[o]) for o in offsets)
        tags = utt.token_tags()
        spans = [(k, offsets[s], offsets[e - 1] + 1) for k, s, e in task.bio_spans(tags)]
        # slots never start or end on a space, so token spans give back the slot spans exactly
        assert spans == [(s.type, s.start, s.end) for s in utt.slots], utt
        # training rows: every window carries the tags of its own tokens
        rows = task.Task(tokenizer, labels, max_seq_length, task.any_slot_types(labels)).labelled_windows(utt)
        window_tags = [labels.slot_tags[t] for r in rows for t in r["slot_labels"][1:-1]]
        assert window_tags == tags
        assert all(len(r["input_ids"]) == len(r["slot_labels"]) <= max_seq_length for r in rows)
        assert [i for r in rows for i in r["input_ids"][1:-1]] == ids


def test_alignment_on_synthetic(synthetic_splits, labels):
    utts = [u for v in synthetic_splits.values() for u in v]
    check_alignment(utts, task.CharTokenizer.build(u.text for u in utts), labels)


def test_alignment_on_whole_corpus(corpus, labels):
    check_alignment(corpus, task.CharTokenizer.build(u.text for u in corpus), labels)


def test_normalization_folds_width_and_case_one_char_to_one():
    assert [task.normalize_char(c) for c in "Ａb１，Ⅱ"] == ["a", "b", "1", ",", "ⅱ"]
    tok = task.CharTokenizer.build(["ABC１２"])
    assert tok.vocab[:5] == task.SPECIAL_TOKENS and set(tok.vocab[5:]) == {"a", "b", "c", "1", "2"}
    ids, offsets = tok.tokenize("a C\u3000１z")  # ideographic space is whitespace; z is unknown
    assert offsets == [0, 2, 4, 5]
    assert ids == [tok.token_to_id["a"], tok.token_to_id["c"], tok.token_to_id["1"], tok.unk_id]


def test_vocabulary_is_deterministic_and_saved(tmp_path):
    tok = task.CharTokenizer.build(["播放音乐", "播放", "导航"])
    assert tok.vocab == task.SPECIAL_TOKENS + ["播", "放", "乐", "导", "航", "音"]  # by count, then code point
    utils.write_lines(str(tmp_path / "vocab.txt"), tok.vocab)
    again = task.CharTokenizer.from_file(str(tmp_path / "vocab.txt"))
    assert again.vocab == tok.vocab and again.pad_id == 0 and again.cls_id == 1
    with pytest.raises(ValueError, match="special tokens"):
        task.CharTokenizer(["a", "b"])


def test_windows_cover_long_utterances():
    tok = task.CharTokenizer.build(["一二三四五六七八九十"])
    enc = task.Task(tok, LABELS, 6, task.any_slot_types(LABELS)).encode("一二三四五 六七八九十")  # 4 tokens a window
    assert [len(w) for w in enc.windows] == [6, 6, 4]
    assert enc.windows[0][0] == tok.cls_id and enc.windows[-1][-1] == tok.sep_id
    assert task.Task(tok, LABELS, 6, task.any_slot_types(LABELS)).encode("").windows == [[tok.cls_id, tok.sep_id]]
    assert task.window_bounds(0, 4) == [(0, 0)] and task.window_bounds(8, 4) == [(0, 4), (4, 8)]


def test_bio_spans_conlleval_rules():
    assert task.bio_spans(["B-song", "I-song", "O", "B-singer"]) == [("song", 0, 2), ("singer", 3, 4)]
    assert task.bio_spans(["I-song", "I-song"]) == [("song", 0, 2)]  # I- without B- starts a span
    assert task.bio_spans(["B-song", "I-singer"]) == [("song", 0, 1), ("singer", 1, 2)]  # type change
    assert task.bio_spans(["B-song", "B-song"]) == [("song", 0, 1), ("song", 1, 2)]
    assert task.bio_spans(["O", "PAD"]) == [] and task.bio_spans([]) == []


def test_invisible_characters_carry_no_token_and_no_tag():
    assert [task.carries_token(c) for c in "a 导\t\u3000\u200b\u0000\ufeff\u007f😀"] == [True, False, True, False, False, False, False, False, False, True]
    tok = task.CharTokenizer.build(["导航"])
    assert tok.tokenize("\ufeff导\u200b航\u0000") == ([tok.token_to_id["导"], tok.token_to_id["航"]], [1, 3])
    with pytest.raises(ValueError, match=r"repeated tokens \['导'\]"):
        task.CharTokenizer(task.SPECIAL_TOKENS + ["导", "导"])
