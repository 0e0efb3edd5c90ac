"""Corpus parsing and writing, malformed-line errors, the synthetic corpus, reading a corpus by flag."""
import collections
import os
import subprocess
import sys

import pytest

import utils
from data import prepare_data, synthetic
from data.corpus import CorpusError, Slot, read_corpus, write_corpus

GOOD = (
    "s1\t再来一个菲菲唱的那个船鞋\tmusic.play\t再来一个<singer>菲菲||云菲菲</singer>唱的那个<song>船鞋</song>\r\n"
    "s1\t取消\tnavigation.cancel_navigation\t取消\r\n"
    "\r\n"
    "s2\t给来首la la的歌\tmusic.play\t给来首<singer>la la||娜娜</singer>的歌\r\n"
    "s2\t拨打13812345678\tphone_call.make_a_phone_call\t拨打<phone_num>13812345678</phone_num>\r\n"
)


def write(tmp_path, text, name="corpus.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def test_parse_corrections_spans_and_tags(tmp_path, labels):
    utts = read_corpus(write(tmp_path, "\ufeff" + GOOD), labels)
    assert [u.line_no for u in utts] == [1, 2, 4, 5]
    first = utts[0]
    assert first.session_id == "s1" and first.intent == "music.play"
    assert first.slots == (Slot("singer", 4, 6, "云菲菲"), Slot("song", 10, 12, "船鞋"))
    assert first.has_correction and not utts[3].has_correction
    assert first.char_tags() == ["O"] * 4 + ["B-singer", "I-singer"] + ["O"] * 4 + ["B-song", "I-song"]
    assert utts[1].slots == () and utts[1].char_tags() == ["O", "O"]
    # the space inside "la la" belongs to the slot span
    assert utts[2].slots == (Slot("singer", 3, 8, "娜娜"),)
    assert utts[2].text[3:8] == "la la"


def test_write_then_read_round_trips(tmp_path, labels):
    utts = read_corpus(write(tmp_path, GOOD), labels)
    out = str(tmp_path / "again.txt")
    write_corpus(out, utts)
    again = read_corpus(out, labels)
    assert [(u.session_id, u.text, u.intent, u.slots) for u in again] == [(u.session_id, u.text, u.intent, u.slots) for u in utts]
    assert open(out, encoding="utf-8").read().count("\n\n") == 1  # one blank line between the two sessions


@pytest.mark.parametrize(
    "line, problem",
    [
        ("s\t导航\tnavigation.open", "expected 4 TAB-separated fields, found 3"),
        ("s\t导航\tnavigation.open\t导航\textra", "expected 4 TAB-separated fields, found 5"),
        ("s\t去北京\tnavigation.navigation\t去<destination>北京", "unclosed tag <destination>"),
        ("s\t去北京\tnavigation.navigation\t去北京</destination>", "unbalanced tag </destination>"),
        ("s\t去北京\tnavigation.navigation\t去<destination>北京</origin>", "unbalanced tag </origin>"),
        ("s\t去北京\tnavigation.navigation\t<origin>去<destination>北京</destination></origin>", "unbalanced tag <destination>"),
        ("s\t去北京\tnavigation.navigation\t去<city>北京</city>", "slot type 'city' is not in the model's label files"),
        ("s\t去北京\tnavigation.navigation\t去<destination>南京</destination>", "does not reproduce the query"),
        ("s\t去北京\tnavigation.navigation\t去<destination></destination>北京", "bad slot content"),
        ("s\t去北京\tnavigation.navigation\t去<destination>北京||</destination>", "bad slot content"),
        ("s\t去北京\tnavigation.navigation\t去北京>", "stray '<' or '>'"),
        ("s\t去北京\tnavigation.fly\t去北京", "intent 'navigation.fly' is not in"),
        ("\t去北京\tnavigation.navigation\t去北京", "empty session id"),
        ("s\t \tOTHERS\t ", "empty query"),
        ("s\t去 北京\tnavigation.navigation\t去< destination> </destination>北京", "bad slot tag < destination>"),
        ("s\t去  北京\tnavigation.navigation\t去<destination>  </destination>北京", "bad slot content '  '"),
        ("\ufeffs\t去北京\tnavigation.navigation\t去北京", "a byte-order mark (U+FEFF) inside the file"),
    ],
)
def test_malformed_line_names_file_line_and_problem(tmp_path, labels, line, problem):
    path = write(tmp_path, GOOD + "\r\n" + line + "\r\n")
    with pytest.raises(CorpusError) as err:
        read_corpus(path, labels)
    assert err.value.path == path and err.value.line_no == 7
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{path}:7: ")


def test_non_utf8_line_is_reported(tmp_path, labels):
    path = tmp_path / "latin1.txt"
    path.write_bytes(GOOD.encode("utf-8") + "s3\tcafé\tOTHERS\tcafé\r\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1.txt:6: not UTF-8"):
        read_corpus(str(path), labels)


def test_whole_corpus_parses_without_loss(corpus, corpus_path):
    """Every utterance of the real corpus, with docs/data.md's figures."""
    assert len(corpus) == 21352
    with open(corpus_path, "rb") as f:
        lines = f.read().decode("utf-8").split("\r\n")
    assert len([line for line in lines if line.strip()]) == len(corpus)
    assert len({u.session_id for u in corpus}) == 4705
    assert sum(u.has_correction for u in corpus) == 205
    intents = collections.Counter(u.intent for u in corpus)
    assert intents["OTHERS"] == 6628 and intents["music.play"] == 6403 and intents["music.prev"] == 5
    assert len(intents) == 11 and len({s.type for u in corpus for s in u.slots}) == 15
    for u in corpus:  # the annotation is rebuilt exactly from the parsed slots
        assert lines[u.line_no - 1].split("\t")[3] == u.annotated()


def test_synthetic_corpus_covers_every_label_and_hard_case(labels):
    utts = synthetic.generate(3000)
    assert synthetic.generate(3000) == utts  # seeded
    assert {u.intent for u in utts} == set(labels.intents)
    assert {s.type for u in utts for s in u.slots} == set(labels.slot_types)
    assert any(u.has_correction for u in utts)
    assert any(" " in u.text[s.start : s.end] for u in utts for s in u.slots)  # Latin words with spaces
    assert any(any(c.isdigit() for c in u.text) for u in utts)
    assert any("１" in u.text for u in utts)  # full-width digits


def test_prepare_data_reads_a_corpus_file_given_by_flag(tmp_path):
    out = str(tmp_path / "prep")
    prepare_data.main(["--corpus_file", write(tmp_path, GOOD), "--output_dir", out])
    stats = utils.load_json(os.path.join(out, "stats.json"))
    assert stats["utterances"] == 4 and stats["sessions"] == 2 and stats["corrections"] == 2
    assert len(stats["source"]["sha256"]) == 64
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        prepare_data.main(["--corpus_file", str(tmp_path / "missing.txt"), "--output_dir", out])


def test_a_huge_bad_line_is_named_not_echoed(tmp_path, labels):
    path = write(tmp_path, GOOD + "\r\n" + "s\t去北京\tnavigation.navigation\t" + "去" * 1_000_000 + "\r\n")
    with pytest.raises(CorpusError) as err:
        read_corpus(path, labels)
    assert err.value.line_no == 7 and len(str(err.value)) < 500 and "characters in all" in str(err.value)
    proc = subprocess.run([sys.executable, "data/prepare_data.py", "--corpus_file", path, "--output_dir", str(tmp_path / "out")],
                          cwd=utils.PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith(f"prepare_data: {path}:7: ") and "Traceback" not in proc.stderr
