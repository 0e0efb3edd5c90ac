"""Character <-> token <-> tag alignment, windows and prediction decoding."""
import pytest

import task
from conftest import SYNTHETIC_LABELS
import utils
from data.corpus import Utterance

LABELS = SYNTHETIC_LABELS


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
        # training rows: every window carries the tags of its own tokens; the kept parts cover each token once
        the_task = task.Task(tokenizer, labels, max_seq_length, task.any_slot_types(labels))
        enc = the_task.encode(utt.text)
        rows = the_task.labelled_rows(utt, enc)
        for row, (start, end) in zip(rows, enc.bounds):
            assert [labels.slot_tags[t] for t in row["slot_labels"][1 : 1 + end - start]] == tags[start:end]
            assert row["input_ids"][1 : 1 + end - start] == ids[start:end]
            assert len(row["input_ids"]) == len(row["slot_labels"]) <= max_seq_length
        assert [i for keep, end in enc.keeps for i in range(keep, end)] == list(range(len(ids)))


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


def test_windows_overlap_by_half_and_split_overlaps_in_the_middle():
    tok = task.CharTokenizer.build(["一二三四五六七八九十"])
    enc = task.Task(tok, LABELS, 6, task.any_slot_types(LABELS)).encode("一二三四五 六七八九十")  # 4 tokens a window
    assert enc.bounds == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert enc.keeps == [(0, 3), (3, 5), (5, 7), (7, 10)]
    assert [len(w) for w in enc.windows] == [6, 6, 6, 6]
    assert enc.windows[1][1:5] == [tok.token_to_id[c] for c in "三四五六"] and enc.windows[-1][-1] == tok.sep_id
    empty = task.Task(tok, LABELS, 6, task.any_slot_types(LABELS)).encode("")
    assert empty.windows == [[tok.cls_id, tok.sep_id]] and empty.keeps == [(0, 0)]
    assert task.window_bounds(0, 4) == [(0, 0)] and task.window_bounds(4, 4) == [(0, 4)]
    assert task.window_bounds(5, 4) == [(0, 4), (2, 5)] and task.window_bounds(3, 1) == [(0, 1), (1, 2), (2, 3)]
    assert task.window_keeps([(0, 1), (1, 2), (2, 3)]) == [(0, 1), (1, 2), (2, 3)]


def test_session_histories_keep_each_sessions_last_turns():
    turns = [("a", "导航去北京"), ("b", "播放稻香"), ("a", "取消"), ("a", "再见"), ("b", "下一首")]
    assert task.session_histories(turns, 2) == [[], [], ["导航去北京"], ["导航去北京", "取消"], ["播放稻香"]]
    assert task.session_histories(turns, 1)[3] == ["取消"]
    assert task.session_histories(turns, 0) == [[]] * 5


def test_context_is_the_nearest_turns_first_cut_from_the_far_end():
    tok = task.CharTokenizer.build(["导航去北京取消播放稻香好"])
    ids = lambda text: [tok.token_to_id[c] for c in text]
    sep = tok.sep_id
    two = task.Task(tok, LABELS, 16, task.any_slot_types(LABELS), context_turns=2, max_context_tokens=32)
    # ERNIE sentence pair: [CLS] utterance [SEP] previous turn [SEP] the one before [SEP]
    enc = two.encode("取消", ["播放稻香", "导航去北京", "好"])  # oldest first; only the last two are read
    assert enc.windows == [[tok.cls_id] + ids("取消") + [sep] + ids("好") + [sep] + ids("导航去北京") + [sep]]
    cut = task.Task(tok, LABELS, 16, task.any_slot_types(LABELS), context_turns=2, max_context_tokens=5)
    assert cut.context_ids(["导航去北京", "好"]) == ids("好") + [sep] + ids("导航") + [sep]  # the oldest text loses its end
    assert cut.context_ids([]) == [] and two.context_ids([""]) == [sep]
    # tags only on the utterance: PAD on [CLS], [SEP] and the context
    utt = Utterance("s", "取消", "navigation.cancel_navigation")
    row = two.labelled_rows(utt, enc)[0]
    pad, outside = LABELS.pad_slot_id, LABELS.slot_id["O"]
    assert row["slot_labels"] == [pad, outside, outside] + [pad] * (len(row["input_ids"]) - 3)
    # every window of a long utterance carries the same context
    long_enc = task.Task(tok, LABELS, 4, task.any_slot_types(LABELS), 1, 8).encode("导航去北京", ["好"])
    assert [w[-2:] for w in long_enc.windows] == [ids("好") + [sep]] * len(long_enc.windows) == [ids("好") + [sep]] * 4
    with pytest.raises(ValueError, match="max_context_tokens"):
        task.Task(tok, LABELS, 16, task.any_slot_types(LABELS), context_turns=1, max_context_tokens=0)


def test_bio_spans_conlleval_rules():
    assert task.bio_spans(["B-song", "I-song", "O", "B-singer"]) == [("song", 0, 2), ("singer", 3, 4)]
    assert task.bio_spans(["I-song", "I-song"]) == [("song", 0, 2)]  # I- without B- starts a span
    assert task.bio_spans(["B-song", "I-singer"]) == [("song", 0, 1), ("singer", 1, 2)]  # type change
    assert task.bio_spans(["B-song", "B-song"]) == [("song", 0, 1), ("song", 1, 2)]
    assert task.bio_spans(["O", "PAD"]) == [] and task.bio_spans([]) == []


def test_invisible_characters_carry_no_token_and_no_tag():
    assert [task.carries_token(c) for c in "a 导\t\u3000\u200b\u0000\ufeff\u007f😀"] == [
        True,
        False,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        True,
    ]
    tok = task.CharTokenizer.build(["导航"])
    assert tok.tokenize("\ufeff导\u200b航\u0000") == ([tok.token_to_id["导"], tok.token_to_id["航"]], [1, 3])
    with pytest.raises(ValueError, match=r"repeated tokens \['导'\]"):
        task.CharTokenizer(task.SPECIAL_TOKENS + ["导", "导"])
