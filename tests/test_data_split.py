"""The deterministic session split, what is derived from the training split, and data/prepare_data.py."""
import collections
import os
import random

import pytest
from conftest import run_killed_at_open

import utils
from data import corpus, prepare_data, split
from data.corpus import Slot, Utterance, read_corpus


def check_split(splits, utterances):
    assert sum(len(v) for v in splits.values()) == len(utterances)
    sessions = {name: {u.session_id for u in utts} for name, utts in splits.items()}
    assert not (sessions["train"] & sessions["dev"]) and not (sessions["train"] & sessions["test"])
    assert not (sessions["dev"] & sessions["test"])


def test_split_is_deterministic_session_disjoint_and_order_independent(synthetic_splits):
    utterances = [u for utts in synthetic_splits.values() for u in utts]
    splits = split.split_by_session(utterances, seed=3)
    check_split(splits, utterances)
    by_session = collections.defaultdict(list)
    for u in utterances:
        by_session[u.session_id].append(u)
    shuffled_sessions = list(by_session.values())
    random.Random(0).shuffle(shuffled_sessions)
    shuffled = [u for s in shuffled_sessions for u in s]
    again = split.split_by_session(shuffled, seed=3)
    assert {k: sorted(u.line_no for u in v) for k, v in again.items()} == {k: sorted(u.line_no for u in v) for k, v in splits.items()}
    assert split.split_by_session(utterances, seed=4)["test"] != splits["test"]


def test_corpus_split_is_80_10_10(corpus):
    splits = split.split_by_session(corpus)
    check_split(splits, corpus)
    sizes = {k: len(v) / len(corpus) for k, v in splits.items()}
    assert sizes["train"] == pytest.approx(0.8, abs=0.01)
    assert sizes["dev"] == pytest.approx(0.1, abs=0.01) and sizes["test"] == pytest.approx(0.1, abs=0.01)
    # docs/data.md's counts
    assert {k: len(v) for k, v in splits.items()} == {"train": 17088, "dev": 2131, "test": 2133}


def test_intent_slot_types_come_from_the_data(corpus, labels):
    table = split.intent_slot_types(corpus, labels.intents)
    assert sorted(i for i, types in table.items() if not types) == [
        "OTHERS", "music.next", "music.pause", "music.prev", "navigation.cancel_navigation",
        "navigation.open", "navigation.start_navigation", "phone_call.cancel",
    ]
    assert set(table) == set(labels.intents) and all(types == sorted(set(types)) for types in table.values())
    utts = [Utterance("a", "放歌", "music.play"), Utterance("a", "放x", "music.play", (Slot("song", 1, 2, "x"),)),
            Utterance("b", "到y", "navigation.navigation", (Slot("destination", 1, 2, "y"),))]
    assert split.intent_slot_types(utts, ["music.play", "navigation.navigation", "OTHERS"]) == {
        "music.play": ["song"], "navigation.navigation": ["destination"], "OTHERS": []}


def test_prepare_data_writes_identical_files_and_stats(tmp_path, labels):
    outs = []
    for name in ("a", "b"):
        out = str(tmp_path / name)
        prepare_data.main(["--synthetic", "--synthetic_size", "500", "--output_dir", out])
        outs.append(out)
    for fname in ("train.txt", "dev.txt", "test.txt", "intent_label.txt", "slot_label.txt", "stats.json"):
        assert open(os.path.join(outs[0], fname), "rb").read() == open(os.path.join(outs[1], fname), "rb").read()
    stats = utils.load_json(os.path.join(outs[0], "stats.json"))
    assert stats["utterances"] == 500 and stats["source"] == {"synthetic": True, "domain": "nlpcc", "utterances": 500}
    splits = {n: read_corpus(os.path.join(outs[0], f"{n}.txt"), labels) for n in ("train", "dev", "test")}
    assert {n: len(v) for n, v in splits.items()} == {n: s["utterances"] for n, s in stats["splits"].items()}
    assert stats["corrections"] == sum(u.has_correction for v in splits.values() for u in v) > 0


def test_a_split_from_another_prepare_data_run_is_refused(tmp_path, labels):
    """A prepare_data SIGKILLed between its files (here as it starts writing test.txt) leaves new
    splits beside an older stats.json: stats.json records each split's sha256, and read_split
    refuses the mix, naming the file. A file it was writing is not there at all."""
    out = str(tmp_path / "prep")
    prepare_data.main(["--synthetic", "--synthetic_size", "300", "--output_dir", out])
    stats = utils.load_json(os.path.join(out, "stats.json"))
    assert set(stats["files"]) == {"train.txt", "dev.txt", "test.txt", "intent_label.txt", "slot_label.txt"}
    assert len(corpus.read_split(out, "train", labels)) == stats["files"]["train.txt"]["utterances"]
    old_test = open(os.path.join(out, "test.txt"), "rb").read()
    run_killed_at_open("data/prepare_data.py", "*/.test.txt.*/new", ["--synthetic", "--synthetic_size", "400", "--output_dir", out])
    assert open(os.path.join(out, "test.txt"), "rb").read() == old_test and utils.load_json(os.path.join(out, "stats.json")) == stats
    for name in ("train", "dev"):  # written by the killed run
        with pytest.raises(ValueError, match=rf"{name}.txt is not the file .*stats.json describes"):
            corpus.read_split(out, name, labels)
    assert len(corpus.read_split(out, "test", labels)) == stats["files"]["test.txt"]["utterances"]
    new_train = len(read_corpus(os.path.join(out, "train.txt"), labels))
    os.remove(os.path.join(out, "stats.json"))  # splits made by hand, without stats.json: read as they are
    assert len(corpus.read_split(out, "train", labels)) == new_train != stats["files"]["train.txt"]["utterances"]
    prepare_data.main(["--synthetic", "--synthetic_size", "400", "--output_dir", out])  # a rerun makes one set again
    assert all(corpus.read_split(out, name, labels) for name in ("train", "dev", "test"))


def test_prepare_data_refuses_what_would_give_empty_or_fake_splits(tmp_path, monkeypatch):
    out = str(tmp_path / "prep")
    monkeypatch.setattr(corpus, "CORPUS_SEARCH_PATH", [str(tmp_path / "nowhere" / "corpus.train.txt")])
    with pytest.raises(FileNotFoundError, match="corpus was not found at .*nowhere.*--synthetic"):
        prepare_data.main(["--output_dir", out])  # asked for the real corpus: no synthetic stand-in
    for train, dev in (("1.5", "0.1"), ("0.8", "-0.2"), ("0.6", "0.4"), ("0", "0.1")):
        with pytest.raises(SystemExit):
            prepare_data.main(["--synthetic", "--train_fraction", train, "--dev_fraction", dev, "--output_dir", out])
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(SystemExit, match="no utterance"):
        prepare_data.main(["--corpus_file", str(empty), "--output_dir", out])
    assert not os.path.exists(out)
