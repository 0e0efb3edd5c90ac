"""deploy/cpp: the C++ tokenizer against the Python one, and the OpenVINO C++ demo against
run_eval.py. The demo is built here with `make cpp` (cmake + g++ + the openvino pip wheel)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import utils

sys.path.insert(0, os.path.join(utils.PROJECT_DIR, "deploy", "cpp"))
import gen_unicode_tables  # noqa: E402
from test_deploy_python import strip_confidence  # noqa: E402

DEMO = os.path.join(utils.PROJECT_DIR, "build", "cpp", "slu_demo")
TRICKY = [
    "ＡＢＣ１２３导航去北京", "İstanbul ﬁle ß", "播放\u3000周杰伦\t的  稻香", "😀 导航 🚗", "\x1f控制\x7f字符",
    'quote " and back\\slash', "打电话给13812345678然后再导航去上海市浦东新区世纪大道一百号", "Ⅻ ㈱ ｶﾀｶﾅ ½",
]


@pytest.fixture(scope="module")
def demo():
    proc = subprocess.run(["make", "-s", "cpp"], cwd=utils.PROJECT_DIR, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return DEMO


def run(demo, model_dir, texts, *flags):
    proc = subprocess.run([demo, "--model_dir", model_dir, *flags], input="".join(t + "\n" for t in texts),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_unicode_tables_are_current():
    with open(gen_unicode_tables.OUTPUT, encoding="utf-8") as f:
        assert f.read() == gen_unicode_tables.render(), "run python deploy/cpp/gen_unicode_tables.py"


def test_cpp_tokenizer_matches_python(demo, trained, synthetic_splits, tmp_path, request):
    """Every synthetic test utterance, the tricky strings and, when the corpus is present, every
    NLPCC utterance under a vocabulary built from the corpus (so few characters are [UNK])."""
    model_dir = os.path.join(trained, "infer_model")
    cases = [(model_dir, [u.text for u in synthetic_splits["test"]] + TRICKY)]
    if os.path.isfile(os.path.join(utils.PROJECT_DIR, "..", "shared", "data", "nlpcc2018", "corpus.train.txt")):
        corpus = request.getfixturevalue("corpus")
        corpus_dir = shutil.copytree(model_dir, str(tmp_path / "corpus_vocab"))
        utils.CharTokenizer.build(u.text for u in corpus).save(corpus_dir)
        cases.append((corpus_dir, [u.text for u in corpus] + TRICKY))
    for directory, texts in cases:
        tokenizer = utils.CharTokenizer.from_file(os.path.join(directory, "vocab.txt"))
        got = run(demo, directory, texts, "--tokenize_only")
        expected = [dict(zip(("ids", "offsets"), tokenizer.tokenize(t))) for t in texts]
        assert len(got) == len(texts)
        mismatches = [(t, g, e) for t, g, e in zip(texts, got, expected) if g != e]
        assert not mismatches, mismatches[:3]


def test_cpp_demo_matches_run_eval(demo, trained, synthetic_splits):
    model_dir = os.path.join(trained, "infer_model")
    texts = [u.text for u in synthetic_splits["test"][:150]] + TRICKY + ["", "   "]
    got = run(demo, model_dir, texts)
    import run_eval

    expected = run_eval.predict(utils.InferenceModel(model_dir), texts, batch_size=64)
    assert strip_confidence(got) == strip_confidence(expected)
    for g, e in zip(got, expected):
        assert g.get("confidence", 0) == pytest.approx(e.get("confidence", 0), abs=2e-4)


def test_cpp_demo_names_bad_lines_and_bad_models(demo, trained, tmp_path):
    model_dir = os.path.join(trained, "infer_model")
    proc = subprocess.run([demo, "--model_dir", model_dir], input=b"\xe5\xaf\xbc\n\xff\xfe\n", capture_output=True, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    assert proc.returncode == 0 and lines[1] == {"line": 2, "error": "invalid UTF-8"} and "intent" in lines[0]
    broken = shutil.copytree(model_dir, str(tmp_path / "broken"))
    os.remove(os.path.join(broken, "vocab.txt"))
    proc = subprocess.run([demo, "--model_dir", broken, "--text", "导航"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and f"{broken}/vocab.txt: cannot open" in proc.stderr
