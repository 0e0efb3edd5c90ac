"""deploy/cpp: the export contract as slu.cc reads it against export_format.py, the C++ tokenizer
against the Python one, and the OpenVINO C++ demo against the Python prediction path."""
import collections
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_same_records, embedding_program, strip_confidence

import backends
import decoding
import export_format
import exporting
import onnx_graph
import predictor
import task
import utils

TRICKY = [
    "ＡＢＣ１２３导航去北京", "İstanbul ﬁle ß", "播放\u3000周杰伦\t的  稻香", "😀 导航 🚗", "\x1f控制\x7f字符",
    'quote " and back\\slash', "打电话给13812345678然后再导航去上海市浦东新区世纪大道一百号", "Ⅻ ㈱ ｶﾀｶﾅ ½",
]


@pytest.fixture(scope="module")
def demo(cpp_demo):
    return cpp_demo


def run(demo, model_dir, texts, *flags):
    proc = subprocess.run([demo, "--model_dir", model_dir, *flags], input="".join(t + "\n" for t in texts),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_unicode_tables_are_current():
    script = os.path.join(utils.PROJECT_DIR, "deploy", "cpp", "gen_unicode_tables.py")
    proc = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr


def test_cpp_reads_the_contract_python_writes(demo):
    contract = json.loads(subprocess.run([demo, "--print_contract"], capture_output=True, text=True, check=True).stdout)
    assert contract == {
        "format_version": export_format.FORMAT_VERSION, "files": export_format.FILES, "required_keys": export_format.REQUIRED_KEYS,
        "app_files": [exporting.LITE_MODEL_FILE, *exporting.APP_ASSETS, export_format.MANIFEST_FILE],
        "output_roles": export_format.OUTPUT_ROLES, "onnx_files": onnx_graph.ONNX_FILES, "onnx_source_key": onnx_graph.SOURCE_KEY,
        "empty_utterance": predictor.EMPTY_UTTERANCE, "invalid_utf8": predictor.INVALID_UTF8,
        "not_a_turn": predictor.NOT_A_TURN, "too_long_error": predictor.too_long_error(600, 512),
    }


def edit_config(directory, resign=True, **changes):
    """Change inference_config.json; `resign`: on purpose, so the manifest is written anew."""
    path = os.path.join(directory, export_format.CONFIG_FILE)
    utils.save_json(path, {**utils.load_json(path), **changes})
    if resign:
        export_format.write_manifest(directory)


def first_weight_offset(params_path):
    """Byte offset of the first tensor's data in a pdiparams file (no LoD: 4 + 8 + 4 + 4 + TensorDesc)."""
    with open(params_path, "rb") as f:
        head = f.read(20)
    return 20 + int.from_bytes(head[16:20], "little")


def damage(directory, change):
    """One way a directory breaks (the table below): config edits, or a named damage to a file."""
    config, params, intents = (os.path.join(directory, n) for n in (export_format.CONFIG_FILE, export_format.PARAMS_FILE,
                                                                     export_format.INTENT_LABEL_FILE))
    if isinstance(change, dict):
        edit_config(directory, resign=False, **change)
    elif change == "vocab+1":  # a token more in vocab.txt and in vocab_size: only the graph's table disagrees
        with open(os.path.join(directory, "vocab.txt"), "a", encoding="utf-8") as f:
            f.write("新新\n")
        edit_config(directory, resign=False, vocab_size=len(utils.read_lines(os.path.join(directory, "vocab.txt"))))
    elif change == "bom":
        data = open(config, "rb").read()
        open(config, "wb").write(b"\xef\xbb\xbf" + data)
    elif change == "infinite temperature":
        text = open(config, encoding="utf-8").read()
        cal = json.loads(text)["calibration"]
        open(config, "w", encoding="utf-8").write(
            text.replace(f'"intent_temperature": {cal["intent_temperature"]}', '"intent_temperature": Infinity')
        )
    elif change in ("duplicate intent", "swapped intents"):
        labels = utils.read_lines(intents)
        labels[:2] = [labels[1], labels[1]] if change == "duplicate intent" else [labels[1], labels[0]]
        utils.write_lines(intents, labels)
    elif change == "cut weights":
        data = open(params, "rb").read()
        open(params, "wb").write(data[:-1000])
    elif change in ("flipped weights", "nan weight"):
        data = bytearray(open(params, "rb").read())
        if change == "nan weight":  # one NaN in the first row of the word embeddings
            data[first_weight_offset(params) : first_weight_offset(params) + 4] = np.float32(np.nan).tobytes()
        else:
            for k in range(16):  # low mantissa bits of the last weights: no NaN, other answers
                data[-4 * (k + 1)] ^= 0x01
        open(params, "wb").write(bytes(data))
    elif change.startswith("pinyin+"):  # a line added to pinyin.txt
        with open(os.path.join(directory, export_format.PINYIN_FILE), "a", encoding="utf-8") as f:
            f.write(change[len("pinyin+"):] + "\n")
    elif change.startswith("catalogue+"):  # a line added to catalogue.jsonl
        with open(os.path.join(directory, export_format.CATALOGUE_FILE), "a", encoding="utf-8") as f:
            f.write(change[len("catalogue+"):] + "\n")
    elif change == "no manifest":
        os.remove(os.path.join(directory, export_format.MANIFEST_FILE))
    else:
        with open(config, "w") as f:
            f.write(change)


# One table for both readers: each broken directory is refused by export_format.read and by slu.cc,
# both naming the same file and problem (`error` is in both messages).
BROKEN_DIRECTORIES = [
    ("format_version", {"format_version": 4}, "format_version 4; this"),
    ("catalogue slot type", 'catalogue+{"slot": "weather", "value": "晴"}', "slot type 'weather' is not one of the model's ("),
    ("catalogue value", 'catalogue+{"slot": "song", "value": " "}', 'a value entry is {"slot", "value", "synonyms"} with a value'),
    ("catalogue rule", 'catalogue+{"slot": "song", "rule": "pinyin"}',
     "a rule entry is {\"slot\", \"rule\"} with a rule of ['digits', 'pronunciation']"),
    ("catalogue not JSON", "catalogue+{", ": not JSON"),
    ("pinyin table", "pinyin+两个\tliang ge", "expected a character, a tab and its readings (ASCII letters, space-separated)"),
    ("context budget", {"context_turns": 2, "max_context_tokens": 0}, "inference_config.json: context_turns 2 with max_context_tokens 0"),
    ("calibration", {"calibration": {"intent_temperature": -1, "slot_temperature": 1, "fitted_on": None}},
     "calibration intent_temperature must be a positive number, not -1"),
    ("calibration keys", {"calibration": {"intent_temperature": 1}}, "must hold exactly"),
    ("infinite temperature", "infinite temperature", "inference_config.json: not valid JSON"),
    ("BOM", "bom", "inference_config.json: not valid JSON (Unexpected UTF-8 BOM"),
    ("transitions", {"slot_transitions": [[0.0]]}, "slot_transitions must be null or 32 rows of 32 finite numbers"),
    ("slot table", {"intent_slot_types": {"OTHERS": []}}, "intent_slot_types must name every intent label once"),
    ("vocab_size", {"vocab_size": 7}, "vocab.txt: 312 tokens, inference_config.json says 7"),
    ("num_intents", {"num_intents": 12}, "intent_label.txt: 11 intents, inference_config.json says 12"),
    ("duplicate intent label", "duplicate intent", "duplicate intent labels ['"),
    ("missing key", {"max_utterance_tokens": None}, "inference_config.json: max_utterance_tokens must be an integer, not "),
    ("not an integer", {"max_seq_length": 16.5}, "inference_config.json: max_seq_length must be an integer, not 16.5"),
    ("invalid JSON", "{", "inference_config.json: not valid JSON"),
    ("rows beyond the position table", {"max_seq_length": 4096}, "tokens per row, but model.pdmodel has 2048 positions"),
    ("a vocabulary longer than the embedding table", "vocab+1", "model.pdmodel: the word embedding table has"),
    ("cut weights", "cut weights", "model.pdiparams: not a complete Paddle weights file (cut short"),
    ("NaN weight", "nan weight", "model.pdiparams: tensor 1 of"),
    ("flipped weights", "flipped weights", "model.pdiparams: its content differs from manifest.json"),
    ("swapped intent labels", "swapped intents", "intent_label.txt: its content differs from manifest.json"),
    ("edited config", {"model": {"architecture": "other"}}, "bytes, manifest.json says"),
    ("no manifest", "no manifest", ": missing manifest.json"),
]


SAME_WORDS = {"catalogue slot type", "catalogue value", "catalogue rule", "pinyin table", "cut weights", "NaN weight", "flipped weights",
              "swapped intent labels", "edited config", "vocab_size", "num_intents",
              "transitions", "rows beyond the position table"}


@pytest.mark.parametrize("name, change, error", BROKEN_DIRECTORIES, ids=[row[0] for row in BROKEN_DIRECTORIES])
def test_cpp_and_python_refuse_the_same_broken_directories(demo, trained, tmp_path, name, change, error):
    broken = shutil.copytree(os.path.join(trained, "infer_model"), str(tmp_path / "broken"))
    damage(broken, change)
    error = error.replace("312", str(len(utils.read_lines(os.path.join(broken, "vocab.txt")))))
    with pytest.raises(export_format.ExportError) as python_error:
        export_format.read(broken)
    assert error in str(python_error.value) and broken in str(python_error.value)
    proc = subprocess.run([demo, "--model_dir", broken, "--text", "导航"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and f"slu_demo: {broken}" in proc.stderr and error in proc.stderr, proc.stderr
    if name in SAME_WORDS:  # the whole message, path included
        assert str(python_error.value) in proc.stderr, proc.stderr
    if name == "NaN weight":
        assert "holds 1 value(s) that are not finite (first at flat index 0)" in proc.stderr


@pytest.mark.parametrize("value", ["nan", "1.5", "-0.1"])
def test_min_confidence_outside_0_1_is_refused_by_both(demo, trained, value):
    model_dir = os.path.join(trained, "infer_model")
    proc = subprocess.run([demo, "--model_dir", model_dir, "--min_confidence", value, "--text", "导航"], capture_output=True, text=True)
    assert proc.returncode == 2 and f"min_confidence {value}: must lie in [0, 1]" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(utils.PROJECT_DIR, "run_eval.py"),
            "--model_dir",
            model_dir,
            "--backend",
            "onnxruntime",
            "--min_confidence",
            value,
            "--text",
            "导航",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and f"min_confidence {value}: must lie in [0, 1]" in proc.stderr, proc.stderr[-2000:]


def session_lines(turns):
    """(session id, text) pairs as session input lines (run_eval.py --sessions_file)."""
    return [json.dumps({"session_id": sid, "text": text}, ensure_ascii=False) for sid, text in turns]


def test_cpp_tokenizer_matches_python(demo, trained, synthetic_splits, tmp_path, request):
    """The model rows (overlapping windows + the session's context) and offsets of every synthetic
    test utterance, the tricky strings and, when the corpus is present, every NLPCC utterance
    under a vocabulary built from the corpus (so few characters are [UNK]), with windows of 8
    and two turns of context cut at 12 tokens, so that both cuts happen often."""
    model_dir = os.path.join(trained, "infer_model")
    turns = [(u.session_id, u.text) for u in synthetic_splits["test"]] + [("tricky", t) for t in TRICKY]
    cases = [(model_dir, turns)]
    if os.path.isfile(os.path.join(utils.PROJECT_DIR, "..", "shared", "data", "nlpcc2018", "corpus.train.txt")):
        corpus = request.getfixturevalue("corpus")
        corpus_dir = shutil.copytree(model_dir, str(tmp_path / "corpus_vocab"))
        corpus_tokenizer = task.CharTokenizer.build(u.text for u in corpus)
        export_format.write_vocab(corpus_dir, corpus_tokenizer)
        edit_config(corpus_dir, vocab_size=len(corpus_tokenizer), max_seq_length=10, context_turns=2, max_context_tokens=12)
        with open(os.path.join(corpus_dir, export_format.GRAPH_FILE), "wb") as f:  # tables to match: only tokenization runs
            f.write(embedding_program(len(corpus_tokenizer), 22))
        export_format.write_manifest(corpus_dir)
        cases.append((corpus_dir, [(u.session_id, u.text) for u in corpus] + [("tricky", t) for t in TRICKY]))
    for directory, turns in cases:
        the_task = export_format.read(directory).task
        histories = task.session_histories(turns, the_task.context_turns)
        got = run(demo, directory, session_lines(turns), "--sessions", "--tokenize_only")
        expected = [{"windows": e.windows, "offsets": e.offsets} for e in (the_task.encode(t, h) for (_, t), h in zip(turns, histories))]
        assert len(got) == len(turns)
        mismatches = [(t, g, e) for t, g, e in zip(turns, got, expected) if g != e]
        assert not mismatches, mismatches[:3]
        assert (
            sum(len(e["windows"]) > 1 for e in expected) > 0
            and sum(len(w) > len(e["offsets"]) + 2 for e in expected for w in e["windows"]) > 0
        )


def test_cpp_decoding_is_identical_on_the_whole_corpus(demo, trained, synthetic_splits, tmp_path, request):
    """The same logits decoded by decoding.py's numpy reference and slu.cc: random logits (so that every tag and many
    invalid greedy paths occur) for every utterance of the corpus (the synthetic test split
    without it), with and without CRF transitions, and a --min_confidence that splits the
    results. Records equal, confidences to 1e-4."""
    import numpy as np

    texts = [u.text for u in synthetic_splits["test"]] + TRICKY
    if os.path.isfile(os.path.join(utils.PROJECT_DIR, "..", "shared", "data", "nlpcc2018", "corpus.train.txt")):
        texts += [u.text for u in request.getfixturevalue("corpus")]
    rng = np.random.default_rng(0)
    for crf in (False, True):
        model_dir = shutil.copytree(os.path.join(trained, "infer_model"), str(tmp_path / f"crf{crf}"))
        num_tags = len(utils.read_lines(os.path.join(model_dir, "slot_label.txt")))
        edit_config(model_dir, calibration={"intent_temperature": 1.7, "slot_temperature": 0.6, "fitted_on": "test"},
                    slot_transitions=rng.normal(size=(num_tags, num_tags)).round(3).tolist() if crf else None)
        exported = export_format.read(model_dir)
        reference = decoding.Decoder.for_task(exported.task, exported.calibration, transitions=exported.slot_transitions, native=False)
        encoded = [exported.task.encode(t) for t in texts]
        logits = [(rng.normal(scale=3.0, size=len(exported.task.labels.intents)).astype("float32"),
                   rng.normal(scale=3.0, size=(len(e.offsets), num_tags)).astype("float32")) for e in encoded]
        expected = [predictor.describe(reference(i, s), e, exported.task.labels, 0.5, exported.task.catalogue)
                    for (i, s), e in zip(logits, encoded)]
        logits_file = str(tmp_path / "logits.f32")
        with open(logits_file, "wb") as f:
            for i, s in logits:
                f.write(i.tobytes() + s.tobytes())
        got = run(demo, model_dir, texts, "--logits_file", logits_file, "--min_confidence", "0.5")
        assert len(got) == len(texts) and any(r["fallback"] for r in got) and not all(r["fallback"] for r in got)
        assert sum(len(r["slots"]) for r in got) > len(texts) / 2
        assert_same_records(got, expected, confidence_tolerance=1e-4)


def test_cpp_demo_matches_the_python_prediction_path(demo, trained, synthetic_splits):
    model_dir = os.path.join(trained, "infer_model")
    python = backends.open_predictor(model_dir)
    texts = [u.text for u in synthetic_splits["test"][:150]] + TRICKY + ["", "   "]
    assert_same_records(run(demo, model_dir, texts), python.predict(texts))
    # with context: --context for the utterances given, and session input
    assert_same_records(run(demo, model_dir, texts[:20], "--context", "导航去人民公园", "--context", "取消"),
                        python.predict(texts[:20], histories=[["导航去人民公园", "取消"]] * 20))
    lines = session_lines((u.session_id, u.text) for u in synthetic_splits["test"][:150]) + ["{", '{"session_id": 1, "text": "x"}']
    expected = python.predict_sessions(lines)
    assert_same_records(run(demo, model_dir, lines, "--sessions"), expected)
    assert (
        expected[-1] == {"line": 152, "error": predictor.NOT_A_TURN} and expected[0]["session_id"] == synthetic_splits["test"][0].session_id
    )


CONVERT_ONNX = os.path.join(utils.PROJECT_DIR, "deploy", "cpp", "convert_onnx.py")


def test_cpp_onnxruntime_matches_the_python_onnxruntime_backends(demo, trained, synthetic_splits, tmp_path):
    """--runtime onnxruntime on the graphs convert_onnx.py writes: the records of backends.py's
    onnxruntime (f32) and onnxruntime-int8 (each row alone: a long utterance's windows too), with
    context and sessions; a missing graph and one that another export left behind are refused,
    naming the command that writes it."""
    import onnx

    model_dir = shutil.copytree(os.path.join(trained, "infer_model"), str(tmp_path / "model"))
    flags = ["--runtime", "onnxruntime", "--precision"]
    proc = subprocess.run([demo, "--model_dir", model_dir, *flags, "int8", "--text", "导航"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"{model_dir}/model.int8.onnx: missing; write it with `python deploy/cpp/convert_onnx.py --model_dir {model_dir}`" in proc.stderr
    subprocess.run([sys.executable, CONVERT_ONNX, "--model_dir", model_dir], check=True, capture_output=True, timeout=600)
    texts = [u.text for u in synthetic_splits["test"][:150]] + TRICKY + ["", "   ", "导航去人民公园然后播放周杰伦的稻香" * 4]
    lines = session_lines((u.session_id, u.text) for u in synthetic_splits["test"][:150])
    assert len(export_format.read(model_dir).task.encode(texts[-1]).windows) > 1
    for backend, precision in (("onnxruntime", "f32"), ("onnxruntime-int8", "int8")):
        python = backends.open_predictor(model_dir, backend)
        assert_same_records(run(demo, model_dir, texts, *flags, precision), python.predict(texts))
        assert_same_records(run(demo, model_dir, texts[:20], *flags, precision, "--context", "导航去人民公园"),
                            python.predict(texts[:20], histories=[["导航去人民公园"]] * 20))
        assert_same_records(run(demo, model_dir, lines, *flags, precision, "--sessions"), python.predict_sessions(lines))
    graph = os.path.join(model_dir, onnx_graph.ONNX_FILES["fp32"])
    model = onnx.load(graph)
    for stamp, problem in (("0 0", "was converted from another export"), (None, f"carries no {onnx_graph.SOURCE_KEY}")):
        del model.metadata_props[:]
        if stamp:
            onnx.helper.set_model_props(model, {onnx_graph.SOURCE_KEY: stamp})
        onnx.save(model, graph)
        proc = subprocess.run([demo, "--model_dir", model_dir, *flags, "f32", "--text", "导航"], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 1 and proc.stdout == "" and f"{graph}: {problem}" in proc.stderr, proc.stderr
        assert f"convert again: python deploy/cpp/convert_onnx.py --model_dir {model_dir}" in proc.stderr


def test_cpp_demo_names_bad_lines_and_bad_models(demo, trained, tmp_path):
    model_dir = os.path.join(trained, "infer_model")
    proc = subprocess.run([demo, "--model_dir", model_dir], input=b"\xe5\xaf\xbc\n\xff\xfe\n", capture_output=True, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    assert proc.returncode == 0 and lines[1] == {"line": 2, "error": "invalid UTF-8"} and "intent" in lines[0]
    broken = shutil.copytree(model_dir, str(tmp_path / "broken"))
    os.remove(os.path.join(broken, "vocab.txt"))
    proc = subprocess.run([demo, "--model_dir", broken, "--text", "导航"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and f"{broken}: missing vocab.txt" in proc.stderr
    # NaN weights: refused before any answer, in Python's words
    nan = shutil.copytree(model_dir, str(tmp_path / "nan"))
    params = os.path.join(nan, "model.pdiparams")
    data = bytearray(open(params, "rb").read())
    data[-4096:] = np.full(1024, np.nan, dtype="float32").tobytes()
    open(params, "wb").write(bytes(data))
    proc = subprocess.run([demo, "--model_dir", nan, "--text", "导航"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    with pytest.raises(export_format.ExportError) as python_error:
        export_format.read(nan)
    assert f"{nan}/model.pdiparams: tensor " in proc.stderr and "value(s) that are not finite" in proc.stderr
    assert str(python_error.value) in proc.stderr


def test_cpp_demo_bf16_runs_where_the_cpu_has_it_and_is_refused_elsewhere(demo, trained, synthetic_splits):
    """--precision bf16, as backends.py's openvino-bf16: refused in the same words on a CPU without
    bf16 (OpenVINO would quietly run f32); where the CPU has it, >= 99.5 % of the records' intents
    and slots as the f32 run."""
    import openvino

    model_dir = os.path.join(trained, "infer_model")
    texts = [u.text for u in synthetic_splits["test"]]
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        proc = subprocess.run(
            [demo, "--model_dir", model_dir, "--precision", "bf16", "--text", "导航"], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 1 and proc.stdout == ""
        assert "--precision bf16: this CPU cannot run bf16 (OpenVINO's CPU capabilities: " in proc.stderr
        assert "OpenVINO would run f32 instead" in proc.stderr
        return
    f32, bf16 = strip_confidence(run(demo, model_dir, texts)), strip_confidence(run(demo, model_dir, texts, "--precision", "bf16"))
    assert len(bf16) == len(f32) and np.mean([a == b for a, b in zip(f32, bf16)]) >= 0.995


def test_cpp_resolves_slot_values_as_python_on_the_corpus(demo, trained, synthetic_splits, tmp_path, request):
    """values.py and slu.cc give the same value and resolution for every slot of the corpus (the
    synthetic test split without it) as heard, for its canonical value, and for digit strings said
    in words, against the export's catalogue and a user's catalogue added at run time."""
    import values

    corpus = synthetic_splits["train"] + synthetic_splits["test"]
    if os.path.isfile(os.path.join(utils.PROJECT_DIR, "..", "shared", "data", "nlpcc2018", "corpus.train.txt")):
        corpus += request.getfixturevalue("corpus")
    model_dir = os.path.join(trained, "infer_model")
    user = tmp_path / "user.jsonl"
    user.write_text('{"slot": "contact_name", "value": "王晓明", "synonyms": ["小明", "晓明"]}\n'
                    '{"slot": "contact_name", "value": "李晓明", "synonyms": ["晓明"]}\n'  # 晓明: two people, ambiguous
                    '{"slot": "song", "value": "ＡＢＣ", "synonyms": ["a b c"]}\n'
                    '{"slot": "song", "rule": "pronunciation"}\n{"slot": "singer", "rule": "pronunciation"}\n'
                    '{"slot": "destination", "rule": "pronunciation"}\n', encoding="utf-8")
    exported = export_format.read(model_dir)
    catalogue = exported.task.catalogue
    catalogue.update(values.read_catalogue(str(user), exported.task.labels.slot_types))
    queries = sorted({(s.type, text) for u in corpus for s in u.slots for text in (u.text[s.start : s.end], s.value)})
    # each value heard with one character replaced by another of the same most common reading (the sound path)
    by_reading = collections.defaultdict(list)
    for ch in sorted({ch for u in corpus for ch in u.text}):
        if ch in catalogue.pinyin:
            by_reading[catalogue.pinyin[ch][0]].append(ch)
    rng = random.Random(0)
    for slot_type, text in list(queries):
        i = rng.randrange(len(text))
        others = [c for c in by_reading.get(catalogue.pinyin.get(text[i], ("",))[0], []) if c != text[i]]
        if others:
            queries.append((slot_type, text[:i] + rng.choice(others) + text[i + 1 :]))
    queries += [("phone_num", "幺三八 两零零八"), ("phone_num", "１３８－０"), ("contact_name", "小明"), ("contact_name", "晓明"),
                ("song", "abc"), ("song", "A B C")]
    proc = subprocess.run([demo, "--model_dir", model_dir, "--catalogue_file", str(user), "--resolve_only"],
                          input="".join(f"{t}\t{x}\n" for t, x in queries), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = [dict(zip(("value", "resolution"), catalogue.resolve(t, x))) for t, x in queries]
    assert got == expected
    kinds = collections.Counter(r["resolution"] for r in got)
    assert kinds["exact"] > 100 and kinds["rule"] >= 2 and kinds["none"] >= 2 and kinds["catalogue"] >= 2, kinds
    assert kinds["pronunciation"] > 20, kinds
    assert got[-6:] == [{"value": "1382008", "resolution": "rule"}, {"value": "1380", "resolution": "rule"},
                        {"value": "王晓明", "resolution": "catalogue"}, {"value": "晓明", "resolution": "none"},
                        {"value": "ＡＢＣ", "resolution": "exact"}, {"value": "ＡＢＣ", "resolution": "exact"}]
    # a bad line of a user's catalogue: both name it the same way
    user.write_text('{"slot": "weather", "value": "晴"}\n', encoding="utf-8")
    proc = subprocess.run([demo, "--model_dir", model_dir, "--catalogue_file", str(user), "--text", "x"], capture_output=True, text=True)
    with pytest.raises(values.CatalogueError) as python_error:
        values.read_catalogue(str(user), exported.task.labels.slot_types)
    assert proc.returncode != 0 and str(python_error.value) in proc.stderr
