"""deploy/android/convert.py: the exported model converted to Paddle Lite's .nb and checked on
x86 through Paddle Lite's light API (in the Python 3.7 tool virtualenv, made by make lite-setup)."""
import os
import shutil
import subprocess
import sys

import utils

CONVERT = os.path.join(utils.PROJECT_DIR, "deploy", "android", "convert.py")


def test_lite_conversion_matches_paddle_inference(trained, synthetic_dir, tmp_path):
    setup = subprocess.run(["make", "-s", "lite-setup"], cwd=utils.PROJECT_DIR, capture_output=True, text=True)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
    out = tmp_path / "android-model"
    proc = subprocess.run([sys.executable, CONVERT, "--model_dir", os.path.join(trained, "infer_model"), "--output_dir", str(out),
                           "--verify_file", os.path.join(synthetic_dir, "test.txt")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(os.listdir(out)) == sorted(["model.nb", "verify.json", "vocab.txt", "intent_label.txt", "slot_label.txt", utils.INFERENCE_CONFIG])
    report = utils.load_json(str(out / "verify.json"))
    assert report["utterances"] == len(utils.read_corpus(os.path.join(synthetic_dir, "test.txt"))) and report["prediction_agreement"] == 1.0 and report["max_abs_logit_diff"] <= 1e-4
    assert report["arm_nb_mb"] > 1


def test_missing_tool_venv_is_named(trained, tmp_path):
    proc = subprocess.run([sys.executable, CONVERT, "--model_dir", os.path.join(trained, "infer_model"), "--output_dir", str(tmp_path / "o"),
                           "--lite_venv", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert proc.returncode != 0 and "make lite-setup" in proc.stderr


def test_lite_conversion_of_the_bilstm_student(trained, synthetic_dir, tmp_path):
    """The student's graph (LSTMs, the permutation that reverses rows) on Paddle Lite: an `==`
    there once broadcast wrongly on x86 and the default LSTM states crashed its runtime."""
    import paddle

    from model import BiLSTMJoint
    from run_train import save_static_graph

    teacher = utils.InferenceModel(os.path.join(trained, "infer_model"))
    paddle.seed(0)
    student = BiLSTMJoint(len(teacher.tokenizer), len(teacher.labels.intents), len(teacher.labels.slot_tags), teacher.tokenizer.pad_id,
                          embedding_dim=32, hidden_size=32)
    student_dir = str(tmp_path / "student")
    save_static_graph(student, os.path.join(student_dir, "model"))
    for name in ("vocab.txt", "intent_label.txt", "slot_label.txt", utils.INFERENCE_CONFIG):
        shutil.copy(os.path.join(trained, "infer_model", name), student_dir)
    out = tmp_path / "android-student"
    proc = subprocess.run([sys.executable, CONVERT, "--model_dir", student_dir, "--output_dir", str(out),
                           "--verify_file", os.path.join(synthetic_dir, "test.txt")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = utils.load_json(str(out / "verify.json"))
    assert report["prediction_agreement"] == 1.0 and report["max_abs_logit_diff"] <= 1e-4
