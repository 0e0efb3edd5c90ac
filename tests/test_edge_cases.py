"""tests/edge_cases.json through every front end: run_eval.py, the FastDeploy demo on each backend
and the C++ demo must answer each utterance with the same record (confidences may differ in
rounding; OpenVINO through FastDeploy runs bf16, so its confidences by more), and a blank,
invisible-only or over-long utterance always gets an error record, never a guess."""
import json
import os
import subprocess
import sys

import pytest
from conftest import FASTDEPLOY_DEMO, assert_same_records, run_fastdeploy_demo

import backends
import export_format
import predictor
import run_eval
import utils


@pytest.fixture(scope="module")
def model_dir(trained):
    return os.path.join(trained, "infer_model")


@pytest.fixture(scope="module")
def reference(model_dir, edge_cases, tmp_path_factory):
    """run_eval.py's records for the edge cases, from a file of one utterance per line."""
    path = tmp_path_factory.mktemp("edge") / "edge_cases.txt"
    path.write_text("".join(t + "\n" for t in edge_cases), encoding="utf-8")
    out = path.with_suffix(".jsonl")
    run_eval.main(["--model_dir", model_dir, "--input_file", str(path), "--output_file", str(out)])
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_run_eval_answers_every_edge_case_as_specified(reference, edge_cases, model_dir):
    exported = export_format.read(model_dir)
    limit, slot_types = exported.config["max_utterance_tokens"], exported.task.intent_slot_types
    assert [r["text"] for r in reference] == edge_cases
    for text, record in zip(edge_cases, reference):
        visible = [c for c in text if not c.isspace() and c not in "\u200b\u0000\ufeff\u001f\u007f"]
        if not visible:
            assert record == {"text": text, "error": predictor.EMPTY_UTTERANCE}
        elif len(visible) > limit:
            assert record == {"text": text, "error": predictor.too_long_error(len(visible), limit)}
        else:
            assert list(record) == ["text", "intent", "confidence", "intent_ranking", "slots", "fallback"]
            assert record["intent_ranking"][0] == {"intent": record["intent"], "confidence": record["confidence"]}
            for slot in record["slots"]:  # spans never start or end on an invisible character
                first, last = slot["pos"]
                assert text[first : last + 1] == slot["entity"] and text[first] in visible and text[last] in visible
                # constrained decoding: only slot types the intent has in training
                assert slot["slot"] in slot_types[record["intent"]] and 0 < slot["confidence"] <= 1
    errors = [r["error"] for r in reference if "error" in r]
    assert errors.count(predictor.EMPTY_UTTERANCE) == 7 and len(errors) == 9  # as tests/edge_cases.json is written


@pytest.mark.parametrize("backend", backends.FASTDEPLOY_BACKENDS)
def test_fastdeploy_demo_agrees(backend, reference, edge_cases, model_dir):
    got = run_fastdeploy_demo(model_dir, backend, edge_cases)
    assert_same_records(got, reference, confidence_tolerance=0.05 if backend == "fastdeploy-openvino" else 2e-4)


def test_cpp_demo_agrees(cpp_demo, reference, edge_cases, model_dir):
    proc = subprocess.run([cpp_demo, "--model_dir", model_dir], input="".join(t + "\n" for t in edge_cases),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_records([json.loads(line) for line in proc.stdout.splitlines()], reference)


def test_lines_that_are_not_utf8_get_the_same_record_everywhere(model_dir, cpp_demo):
    """Bytes on stdin: a line that is not UTF-8 is named by its number, the others are predicted
    (before, Python front ends stopped with a UnicodeDecodeError or echoed the raw bytes)."""
    data = "导航去北京\n".encode() + b"\xff\xfe\xe5\n" + "\u200b\r\n下一首\n".encode() + b"\xe5\xaf\n"
    runs = {
        "run_eval.py": [sys.executable, os.path.join(utils.PROJECT_DIR, "run_eval.py"), "--model_dir", model_dir, "--input_file", "-"],
        "fastdeploy-ort": [sys.executable, FASTDEPLOY_DEMO, "--model_dir", model_dir, "--backend", "fastdeploy-ort"],
        "slu_demo": [cpp_demo, "--model_dir", model_dir],
    }
    records = {}
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
        records[name] = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    reference = records["run_eval.py"]
    assert reference[1] == {"line": 2, "error": predictor.INVALID_UTF8} == reference[4] | {"line": 2}
    assert reference[2] == {"text": "\u200b", "error": predictor.EMPTY_UTTERANCE}
    assert [r.get("text") for r in reference] == ["导航去北京", None, "\u200b", "下一首", None]
    for name in ("fastdeploy-ort", "slu_demo"):
        assert_same_records(records[name], reference)


def weakest(record):
    return min([record["confidence"]] + [s["confidence"] for s in record["slots"]])


def test_min_confidence_marks_fallback_by_the_weakest_confidence_on_every_front_end(model_dir, edge_cases, cpp_demo):
    """--min_confidence between two results' weakest confidences: exactly the results whose
    intent or some slot confidence is below it fall back, on the library, the C++ demo and the
    FastDeploy demo alike."""
    records = [r for r in backends.open_predictor(model_dir).predict(edge_cases) if "error" not in r]
    scores = sorted({weakest(r) for r in records})
    assert len(scores) >= 2
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # no result sits on it
    flagged = backends.open_predictor(model_dir, min_confidence=threshold).predict(edge_cases)
    answered = [r for r in flagged if "error" not in r]
    assert [r["fallback"] for r in answered] == [weakest(r) < threshold for r in answered]
    assert 0 < sum(r["fallback"] for r in answered) < len(answered)
    lines = "".join(t + "\n" for t in edge_cases)
    proc = subprocess.run([cpp_demo, "--model_dir", model_dir, "--min_confidence", str(threshold)], input=lines,
                          capture_output=True, text=True, timeout=300)
    assert_same_records([json.loads(line) for line in proc.stdout.splitlines()], flagged)
    assert_same_records(run_fastdeploy_demo(model_dir, "fastdeploy-ort", edge_cases, "--min_confidence", str(threshold)), flagged)


def test_a_turn_without_an_answer_is_no_turn_of_the_session_anywhere(model_dir, cpp_demo, tmp_path):
    """A blank or over-long turn gets its error record and is left out of its session's context in
    every front end, as the service (which refuses it) leaves it out: the turn after it is answered
    as if it had not been said."""
    too_long = "导" * 600
    with_gaps = [("a", "导航去北京"), ("a", " \u3000 "), ("b", "播放稻香"), ("b", too_long), ("a", "取消"), ("b", "下一首")]
    without = [turn for turn in with_gaps if turn[1] not in (" \u3000 ", too_long)]
    lines = lambda turns: "".join(json.dumps({"session_id": s, "text": t}, ensure_ascii=False) + "\n" for s, t in turns)  # noqa: E731
    (tmp_path / "gaps.jsonl").write_text(lines(with_gaps), encoding="utf-8")
    (tmp_path / "plain.jsonl").write_text(lines(without), encoding="utf-8")
    records = {}
    for name in ("gaps", "plain"):
        out = tmp_path / f"{name}.out"
        run_eval.main(["--model_dir", model_dir, "--sessions_file", str(tmp_path / f"{name}.jsonl"), "--output_file", str(out)])
        records[name] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records["gaps"][1]["error"] == predictor.EMPTY_UTTERANCE and records["gaps"][3]["error"].startswith("utterance too long")
    answered = [r for r in records["gaps"] if "error" not in r]
    assert answered == records["plain"]
    for cmd in ([sys.executable, FASTDEPLOY_DEMO, "--model_dir", model_dir, "--backend", "fastdeploy-ort", "--sessions"],
                [cpp_demo, "--model_dir", model_dir, "--sessions"]):
        proc = subprocess.run(cmd, input=lines(with_gaps), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert_same_records([json.loads(line) for line in proc.stdout.splitlines()], records["gaps"])


def test_command_line_values_that_are_not_utf8_get_the_invalid_utf8_record(model_dir, cpp_demo):
    """`--text $'\\xff\\xfe播放'`: Python front ends wrote the raw bytes out (not UTF-8, so not JSON)
    and predicted; now every front end gives the defined record and answers the other values."""
    bad = b"\xff\xfe" + "播放".encode()
    runs = {
        "run_eval.py": [
            sys.executable.encode(),
            os.path.join(utils.PROJECT_DIR, "run_eval.py").encode(),
            b"--model_dir",
            model_dir.encode(),
        ],
        "fastdeploy-ort": [sys.executable.encode(), FASTDEPLOY_DEMO.encode(), b"--model_dir", model_dir.encode()],
        "slu_demo": [cpp_demo.encode(), b"--model_dir", model_dir.encode()],
    }
    records = {}
    for name, cmd in runs.items():
        proc = subprocess.run(cmd + [b"--text", bad, b"--text", "导航去北京".encode()], capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
        records[name] = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    assert records["run_eval.py"][0] == {"line": 1, "error": predictor.INVALID_UTF8} and records["run_eval.py"][1]["text"] == "导航去北京"
    for name in ("fastdeploy-ort", "slu_demo"):
        assert_same_records(records[name], records["run_eval.py"])
    proc = subprocess.run(runs["run_eval.py"] + [b"--text", "导航".encode(), b"--context", bad], capture_output=True, timeout=300)
    assert proc.returncode != 0 and b"--context: a value is not UTF-8" in proc.stderr and proc.stdout == b""


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_batch_size_must_be_positive(model_dir, value):
    for script in (os.path.join(utils.PROJECT_DIR, "run_eval.py"), FASTDEPLOY_DEMO):
        proc = subprocess.run([sys.executable, script, "--model_dir", model_dir, "--batch_size", value, "--text", "导航"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and f"argument --batch_size: '{value}' is not a positive integer" in proc.stderr, proc.stderr[-1000:]


def test_an_over_long_line_is_refused_without_building_its_windows(model_dir, monkeypatch):
    """A 31 MB line once cost ~40x its size in memory (its tokens and windows were built before it
    was refused); now its tokens are only counted."""
    import task

    encoded = []
    real_encode = task.Task.encode
    monkeypatch.setattr(task.Task, "encode", lambda self, text, history=(): encoded.append(len(text)) or real_encode(self, text, history))
    p = backends.open_predictor(model_dir, "onnxruntime")
    line = "导航" * 500_000
    records = p.predict([line, "导航去北京"])
    assert records[0] == {"text": line, "error": predictor.too_long_error(1_000_000, p.max_utterance_tokens)}
    assert max(encoded) == len("导航去北京")
