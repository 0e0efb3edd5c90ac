"""deploy/android/convert.py: the exported model converted to Paddle Lite's .nb and checked on
x86 through Paddle Lite's light API (in the Python 3.7 tool virtualenv, made by make lite-setup)."""
import os
import shutil
import subprocess
import sys

import pytest

import backends
import export_format
import utils
from data.corpus import read_corpus

CONVERT = os.path.join(utils.PROJECT_DIR, "deploy", "android", "convert.py")


def test_lite_conversion_matches_paddle_inference(trained, synthetic_dir, tmp_path, cpp_demo):
    setup = subprocess.run(["make", "-s", "lite-setup"], cwd=utils.PROJECT_DIR, capture_output=True, text=True)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
    out = tmp_path / "android-model"
    proc = subprocess.run([sys.executable, CONVERT, "--model_dir", os.path.join(trained, "infer_model"), "--output_dir", str(out),
                           "--verify_file", os.path.join(synthetic_dir, "test.txt")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    shipped = [f for f in export_format.FILES if f != export_format.PARAMS_FILE]
    assert sorted(os.listdir(out)) == sorted(["model.nb", "verify.json"] + shipped)
    # the app directory as slu_jni.cc reads it (slu::Model with model.nb), and a flipped model.nb refused by name
    app = [cpp_demo, "--model_dir", str(out), "--weights_file", "model.nb", "--tokenize_only", "--text", "导航"]
    assert subprocess.run(app, capture_output=True, text=True).returncode == 0
    data = bytearray((out / "model.nb").read_bytes())
    data[len(data) // 2] ^= 1
    (out / "model.nb").write_bytes(bytes(data))
    proc = subprocess.run(app, capture_output=True, text=True)
    assert proc.returncode == 1 and f"{out}/model.nb: its content differs from manifest.json" in proc.stderr, proc.stderr
    report = utils.load_json(str(out / "verify.json"))
    assert (
        report["utterances"] == len(read_corpus(os.path.join(synthetic_dir, "test.txt")))
        and report["prediction_agreement"] == 1.0
        and report["max_abs_logit_diff"] <= 1e-4
    )
    assert report["arm_nb_mb"] > 1


def test_missing_tool_venv_is_named(trained, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            CONVERT,
            "--model_dir",
            os.path.join(trained, "infer_model"),
            "--output_dir",
            str(tmp_path / "o"),
            "--lite_venv",
            str(tmp_path / "nowhere"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "make lite-setup" in proc.stderr


def test_lite_conversion_of_the_bilstm_student(trained, synthetic_dir, tmp_path):
    """The student's graph (LSTMs, the permutation that reverses rows) on Paddle Lite: an `==`
    there once broadcast wrongly on x86 and the default LSTM states crashed its runtime."""
    import paddle

    from model import BiLSTMJoint
    from exporting import export

    teacher = backends.open_predictor(os.path.join(trained, "infer_model"))
    paddle.seed(0)
    student = BiLSTMJoint(
        len(teacher.task.tokenizer),
        len(teacher.task.labels.intents),
        len(teacher.task.labels.slot_tags),
        teacher.task.tokenizer.pad_id,
        embedding_dim=32,
        hidden_size=32,
    )
    student_dir = export(student, teacher.task, str(tmp_path / "student"), {"architecture": "bilstm-student"}).directory
    out = tmp_path / "android-student"
    proc = subprocess.run([sys.executable, CONVERT, "--model_dir", student_dir, "--output_dir", str(out),
                           "--verify_file", os.path.join(synthetic_dir, "test.txt")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = utils.load_json(str(out / "verify.json"))
    assert report["prediction_agreement"] == 1.0 and report["max_abs_logit_diff"] <= 1e-4


def test_jni_bridge_compiles_against_slu_cc():
    """slu_jni.cc with the real slu.h, nlohmann/json and the JDK's jni.h, and a declaration-only
    stub of Paddle Lite's API (tests/stubs): catches a bridge that no longer fits slu.cc."""
    javac = shutil.which("javac")
    if javac is None:
        pytest.skip("no JDK (javac) on this machine")
    jdk = os.path.dirname(os.path.dirname(os.path.realpath(javac)))
    cpp = os.path.join(utils.PROJECT_DIR, "deploy", "cpp")
    bridge = os.path.join(utils.PROJECT_DIR, "deploy", "android", "app", "src", "main", "cpp", "slu_jni.cc")
    stubs = os.path.join(utils.PROJECT_DIR, "tests", "stubs")
    proc = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-I{stubs}", f"-I{jdk}/include",
                           f"-I{jdk}/include/linux", f"-I{cpp}", f"-I{cpp}/third_party", bridge], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
