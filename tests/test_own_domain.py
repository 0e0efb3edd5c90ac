"""A second label set end to end (docs/data.md#your-own-data): the synthetic vehicle-control
domain (other intents, other slot types, slot-less intents, no catch-all) through prepare ->
train -> export -> run_eval.py, the FastDeploy demo, the C++ demo, the service, compression,
distillation, and fine-tuning onto a changed label set, with its labels in every answer."""
import json
import logging
import os
import subprocess

import pytest

import backends
import run_distill
import run_eval
import run_train
import utils
from conftest import Server, assert_same_records, run_fastdeploy_demo
from data import prepare_data
from data.corpus import read_split, write_corpus
from data.labels import derive_labels, read_data_labels
from export_format import write_labels


TURNS = ["打开主驾座椅加热", "调到三档", "把副驾车窗打开一半", "空调调到二十二度", "关窗", "打开物灯", "音量调到5档", "开空调"]


@pytest.fixture(scope="module")
def vehicle_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vehicle-data"))
    prepare_data.main(["--synthetic", "--synthetic_domain", "vehicle", "--synthetic_size", "1200", "--output_dir", out])
    return out


@pytest.fixture(scope="module")
def vehicle_model(vehicle_data, tmp_path_factory):
    """A short from-scratch run with a CRF head and one turn of context."""
    out = str(tmp_path_factory.mktemp("vehicle-model"))
    run_train.main([
        "--from_scratch", "--model_name_or_path", "ernie-3.0-tiny-nano-v2-zh", "--slot_crf", "--context_turns", "1",
        "--data_dir", vehicle_data, "--output_dir", out, "--do_train", "--do_eval", "--do_export",
        "--num_train_epochs", "4", "--learning_rate", "1e-3", "--warmup_ratio", "0.1", "--per_device_train_batch_size", "32",
        "--logging_steps", "20", "--seed", "42", "--disable_tqdm", "true",
    ])
    return out


def vehicle_labels(data_dir):
    labels = read_data_labels(data_dir)
    return set(labels.intents), set(labels.slot_types)


def assert_vehicle_records(records, data_dir):
    intents, slot_types = vehicle_labels(data_dir)
    assert records and all(r["intent"] in intents for r in records if "intent" in r)
    assert all(s["slot"] in slot_types for r in records for s in r.get("slots", []))


def test_the_model_learns_the_new_labels_and_exports_them(vehicle_data, vehicle_model):
    labels = read_data_labels(vehicle_data)
    exported = backends.open_predictor(os.path.join(vehicle_model, "infer_model"))
    assert exported.task.labels == labels and "OTHERS" not in labels.intents
    assert exported.task.slotless_intents and len(labels.slot_types) == 7  # slot-less intents, shared slot types
    test = utils.load_json(os.path.join(vehicle_model, "eval_results.json"))["test"]
    assert test["sentence_acc"] > 0.8 and test["slot_f1"] > 0.8, test
    records = exported.predict(TURNS)
    assert [r["intent"] for r in records[2:4]] == ["window.open", "climate.set_temperature"]
    assert {(s["slot"], s["entity"]) for s in records[2]["slots"]} == {("window", "副驾"), ("degree", "一半")}


def test_run_eval_fastdeploy_and_cpp_answer_with_the_new_labels(vehicle_data, vehicle_model, cpp_demo, tmp_path):
    model_dir = os.path.join(vehicle_model, "infer_model")
    run_eval.main(["--model_dir", model_dir, "--eval_file", os.path.join(vehicle_data, "test.txt"), "--output_file",
                   str(tmp_path / "metrics.json")])
    metrics = utils.load_json(str(tmp_path / "metrics.json"))
    assert set(metrics["per_intent"]) <= vehicle_labels(vehicle_data)[0] and metrics["sentence_acc"] > 0.8
    turns = tmp_path / "turns.jsonl"
    turns.write_text("".join(json.dumps({"session_id": u.session_id, "text": u.text}, ensure_ascii=False) + "\n"
                             for u in read_split(vehicle_data, "test")), encoding="utf-8")
    run_eval.main(["--model_dir", model_dir, "--sessions_file", str(turns), "--output_file", str(tmp_path / "records.jsonl")])
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    assert_vehicle_records(records, vehicle_data)
    assert {r["intent"] for r in records} == vehicle_labels(vehicle_data)[0]  # every intent predicted somewhere
    expected = backends.open_predictor(model_dir).predict(TURNS)
    assert_vehicle_records(expected, vehicle_data)
    assert_same_records(run_fastdeploy_demo(model_dir, "fastdeploy-ort", TURNS), expected)
    proc = subprocess.run([cpp_demo, "--model_dir", model_dir], input="".join(t + "\n" for t in TURNS),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_records([json.loads(line) for line in proc.stdout.splitlines()], expected)


def test_the_service_answers_and_describes_the_new_labels(vehicle_data, vehicle_model):
    model_dir = os.path.join(vehicle_model, "infer_model")
    server = Server(model_dir, "--max_wait_ms", "2")
    try:
        status, meta = server.call("GET", "/v1/model")
        labels = read_data_labels(vehicle_data)
        assert status == 200 and meta["intents"] == labels.intents and meta["slot_types"] == labels.slot_types
        session = server.call("POST", "/v1/sessions")[1]["session_id"]
        answers = [{**server.call("POST", "/v1/parse", {"text": t, "session_id": session})[1], "session_id": "car"} for t in TURNS]
        python = backends.open_predictor(model_dir)
        assert_same_records(answers, python.predict_sessions([json.dumps({"session_id": "car", "text": t}, ensure_ascii=False)
                                                              for t in TURNS]))
        assert_vehicle_records(answers, vehicle_data)
    finally:
        assert server.stop() == 0, server.proc.stderr.read()[-3000:]


def test_compression_and_distillation_keep_the_new_labels(vehicle_data, vehicle_model, tmp_path):
    out = str(tmp_path / "ptq")
    run_train.main(["--model_name_or_path", vehicle_model, "--data_dir", vehicle_data, "--output_dir", out, "--do_compress",
                    "--strategy", "ptq", "--algo_list", "hist", "--batch_size_list", "8", "--batch_num_list", "2"])
    report = utils.load_json(os.path.join(out, "compress", "compress_report.json"))
    int8 = backends.open_predictor(report["stages"][-1]["dir"])
    assert int8.task.labels == read_data_labels(vehicle_data) and report["stages"][-1]["intent_acc"] > 0.8
    assert_vehicle_records(int8.predict(TURNS), vehicle_data)

    distilled = run_distill.main([
        "--teacher_dir", os.path.join(vehicle_model, "infer_model"), "--data_dir", vehicle_data, "--output_dir", str(tmp_path / "kd"),
        "--num_train_epochs", "2", "--augment_copies", "1", "--latency_utterances", "10", "--objective", "kd"])
    student = backends.open_predictor(os.path.join(str(tmp_path / "kd"), "distilled", "infer_model"))
    assert student.task.labels == read_data_labels(vehicle_data) and "distilled student" in distilled["models"]
    assert_vehicle_records(student.predict(TURNS), vehicle_data)


def test_fine_tuning_onto_a_changed_label_set_through_run_train(vehicle_data, vehicle_model, tmp_path, caplog):
    """An intent and its slot type removed, the rest kept: the saved model's heads are rebuilt and
    the log names what changed; the fine-tuned model predicts only the new labels."""
    changed = str(tmp_path / "data")
    os.makedirs(changed)
    splits = {n: [u for u in read_split(vehicle_data, n) if not u.intent.startswith("lights.")] for n in ("train", "dev", "test")}
    for name, utts in splits.items():
        write_corpus(os.path.join(changed, f"{name}.txt"), utts)
    write_labels(changed, derive_labels(splits["train"]))
    out = str(tmp_path / "tuned")
    with caplog.at_level(logging.INFO, logger="ernie_tiny_slu"):
        run_train.main(["--model_name_or_path", vehicle_model, "--data_dir", changed, "--output_dir", out, "--do_train",
                        "--do_eval", "--do_export", "--num_train_epochs", "1", "--learning_rate", "2e-4", "--seed", "42",
                        "--disable_tqdm", "true"])
    assert "intents: 9 kept, added [], removed ['lights.on', 'lights.off']" in caplog.text
    assert "slot tags: 14 kept, added [], removed ['B-light', 'I-light']" in caplog.text
    tuned = backends.open_predictor(os.path.join(out, "infer_model"))
    assert "lights.on" not in tuned.task.labels.intents and tuned.task.labels == read_data_labels(changed)
    assert utils.load_json(os.path.join(out, "eval_results.json"))["test"]["sentence_acc"] > 0.8
