"""run_eval.py on the shared exported model: metrics, and predictions from flags, file and stdin."""
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import run_killed_at_open

import backends
import run_eval
import task
import utils
from data.corpus import CorpusError

HARD = [
    "导航去人民公园",
    "",
    "打电话给 13812345678",  # space and digits
    "播放ＡＢ乐队的歌曲然后导航去第一人民医院再打电话给老王好吗" * 2,  # full-width, 58 characters: several windows
    "😀🚗",  # characters outside the vocabulary
    "   ",
]


@pytest.fixture(scope="module")
def model_dir(trained):
    return os.path.join(trained, "infer_model")


def run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8")), encoding="utf-8"))
    run_eval.main(argv)
    out = capsys.readouterr()
    return out.out, out.err


def test_eval_file_scores_like_training(model_dir, synthetic_dir, trained, capsys):
    out, _ = run(["--model_dir", model_dir, "--eval_file", os.path.join(synthetic_dir, "test.txt")], capsys)
    metrics = json.loads(out)
    expected = utils.load_json(os.path.join(trained, "eval_results.json"))["test"]
    assert metrics["per_intent"] == expected["per_intent"]
    assert metrics["sentence_acc"] == pytest.approx(expected["sentence_acc"]) and metrics["slot_f1"] == pytest.approx(expected["slot_f1"])


def test_input_file_gives_one_defined_result_per_line(model_dir, tmp_path, capsys):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(HARD) + "\n", encoding="utf-8")
    out, err = run(["--model_dir", model_dir, "--input_file", str(path), "--batch_size", "2"], capsys)
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in results] == HARD
    labels = task.LabelMaps.from_files(os.path.join(model_dir, "intent_label.txt"), os.path.join(model_dir, "slot_label.txt"))
    for text, r in zip(HARD, results):
        if not any(map(task.carries_token, text)):
            assert r == {"text": text, "error": "empty utterance"}
            continue
        assert r["intent"] in labels.intents and 0.0 < r["confidence"] <= 1.0
        for slot in r["slots"]:
            first, last = slot["pos"]
            assert slot["slot"] in labels.slot_types and text[first : last + 1] == slot["entity"]
            assert not text[first].isspace() and not text[last].isspace()
    window = backends.open_predictor(model_dir, backends.FRONT_END_BACKEND).task.max_seq_length - 2
    assert f"utterance 4: 58 characters, predicted in {len(task.window_bounds(58, window))} windows of {window}" in err
    # the same predictions as the library call, batched differently
    model = backends.open_predictor(model_dir, backends.FRONT_END_BACKEND)
    real = [t for t in HARD if any(map(task.carries_token, t))]
    assert [r for r in results if "error" not in r] == model.predict(real, batch_size=64)


def test_text_flags_and_stdin(model_dir, capsys, monkeypatch):
    out, _ = run(["--model_dir", model_dir, "--text", "导航去人民公园", "--text", "下一首"], capsys)
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["导航去人民公园", "下一首"]
    out, _ = run(["--model_dir", model_dir], capsys, stdin="下一首\n打开导航\n", monkeypatch=monkeypatch)
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["下一首", "打开导航"]


def test_context_flags_and_session_files(model_dir, tmp_path, capsys, monkeypatch):
    """--context for --text, --sessions_file (a file or stdin) for sessions: the records of the
    library calls, each session with its own history."""
    model = backends.open_predictor(model_dir, backends.FRONT_END_BACKEND)
    out, _ = run(["--model_dir", model_dir, "--text", "取消", "--text", "下一首", "--context", "播放稻香"], capsys)
    assert [json.loads(line) for line in out.splitlines()] == model.predict(["取消", "下一首"], histories=[["播放稻香"]] * 2)
    lines = ['{"session_id": "a", "text": "导航去人民公园"}', '{"session_id": "b", "text": "播放稻香"}', '["a", "取消"]',
             '{"session_id": "a", "text": "取消"}', '{"session_id": "b", "text": "取消"}']
    path = tmp_path / "turns.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out, _ = run(["--model_dir", model_dir, "--sessions_file", str(path)], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert records == model.predict_sessions(lines)
    assert records[2] == {"line": 3, "error": 'expected a JSON object with string "session_id" and "text"'}
    assert records[3]["text"] == records[4]["text"] == "取消" and [r["session_id"] for r in records[3:]] == ["a", "b"]
    assert records[3]["intent_ranking"] == model.predict(["取消"], histories=[["导航去人民公园"]])[0]["intent_ranking"]
    out, _ = run(["--model_dir", model_dir, "--sessions_file", "-"], capsys, stdin="\n".join(lines) + "\n", monkeypatch=monkeypatch)
    assert [json.loads(line) for line in out.splitlines()] == records


def test_malformed_eval_file_names_the_line(model_dir, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("s\t导航\tnavigation.open\t导航\ns\t去\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad.txt:2: expected 4 TAB-separated fields"):
        run_eval.main(["--model_dir", model_dir, "--eval_file", str(path)])


def test_earlier_output_survives_a_bad_input(model_dir, tmp_path):
    """--output_file is written whole once everything is computed: a malformed --eval_file leaves
    the earlier results in place."""
    out = tmp_path / "results.jsonl"
    out.write_text("earlier results\n", encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_text("s\t导航\tnavigation.open\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="bad.txt:1"):
        run_eval.main(["--model_dir", model_dir, "--eval_file", str(bad), "--output_file", str(out)])
    assert out.read_text(encoding="utf-8") == "earlier results\n" and sorted(os.listdir(tmp_path)) == ["bad.txt", "results.jsonl"]
    run_eval.main(["--model_dir", model_dir, "--text", "下一首", "--output_file", str(out)])
    assert json.loads(out.read_text(encoding="utf-8"))["text"] == "下一首"
    # SIGKILLed the moment it starts writing the results: the earlier ones are still there, whole
    run_killed_at_open(
        "run_eval.py", "*/.results.jsonl.*/new", ["--model_dir", model_dir, "--text", "导航去北京", "--output_file", str(out)]
    )
    assert json.loads(out.read_text(encoding="utf-8"))["text"] == "下一首"


def test_output_file_naming_a_directory_is_refused_and_the_directory_kept(trained, model_dir, tmp_path):
    """`--output_file output/victim` (a trained model's directory) once replaced the whole directory
    with a 307-byte file, exit 0."""
    victim = tmp_path / "victim"
    import shutil

    shutil.copytree(trained, victim, ignore=shutil.ignore_patterns("checkpoint-*"))
    before = sorted(str(p.relative_to(victim)) for p in victim.rglob("*"))
    proc = subprocess.run([sys.executable, os.path.join(utils.PROJECT_DIR, "run_eval.py"), "--model_dir", model_dir, "--text", "导航",
                           "--output_file", str(victim)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and f"{victim}: is a directory; refusing to replace it with a file" in proc.stderr
    assert sorted(str(p.relative_to(victim)) for p in victim.rglob("*")) == before and sorted(os.listdir(tmp_path)) == ["victim"]
    link = tmp_path / "link"
    os.symlink(victim, link)  # a link to a directory is a directory too
    with pytest.raises(SystemExit, match="is a directory"):
        run_eval.main(["--model_dir", model_dir, "--text", "导航", "--output_file", str(link)])
    assert os.path.islink(link) and sorted(str(p.relative_to(victim)) for p in victim.rglob("*")) == before


def test_min_confidence_flag(model_dir, capsys):
    texts = ["导航去人民公园", "下一首", "打电话给老王", "la la la", "？？？", "ＡＢＣ全角字母测试"]
    out, _ = run(["--model_dir", model_dir, "--min_confidence", "1.0"] + [a for t in texts for a in ("--text", t)], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    weakest = [min([r["confidence"]] + [s["confidence"] for s in r["slots"]]) for r in records]
    assert all(r["fallback"] for r, w in zip(records, weakest) if w <= 0.9999)  # (4-decimal rounding: 1.0 may be 0.99995)
    assert any(w <= 0.9999 for w in weakest)
    out, _ = run(["--model_dir", model_dir] + [a for t in texts for a in ("--text", t)], capsys)
    assert not any(json.loads(line)["fallback"] for line in out.splitlines())  # 0 = never
    with pytest.raises(SystemExit, match="min_confidence 1.5: must lie in"):
        run(["--model_dir", model_dir, "--min_confidence", "1.5", "--text", "下一首"], capsys)
