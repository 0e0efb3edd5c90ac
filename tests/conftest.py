"""Shared fixtures: the synthetic splits, the real corpus when present, one small model trained,
evaluated and exported once per session through run_train.py itself, the edge-case utterances
every front end is run on, and how their results are compared."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import predictor
import utils
from export_format import INPUT_NAME
from data import prepare_data
from data.corpus import read_corpus
from data.labels import derive_labels
from data.synthetic import generate

SHARED_CORPUS = os.path.join(utils.PROJECT_DIR, "..", "shared", "data", "nlpcc2018", "corpus.train.txt")
EDGE_CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "edge_cases.json")
FASTDEPLOY_DEMO = os.path.join(utils.PROJECT_DIR, "deploy", "python", "infer_demo.py")
# The label set of the embedded synthetic corpus (NLPCC 2018's intents and slot types), as derived from it.
SYNTHETIC_LABELS = derive_labels(generate())


def confidences(record):
    """Every confidence of a result record, in a fixed order (intent, ranking, slots)."""
    return ([record["confidence"]] if "confidence" in record else []) + [
        item["confidence"] for key in ("intent_ranking", "slots") for item in record.get(key, [])]


def strip_confidence(records):
    """Records without their confidences (the ranking's order and intents stay)."""
    return predictor.without_confidences(list(records))


def assert_same_records(got, expected, confidence_tolerance=2e-4):
    """Result records identical but for the rounding of confidences. (A tie in the ranking or a
    fallback decision that a rounding difference flips would show here as a real difference.)"""
    assert strip_confidence(got) == strip_confidence(expected)
    for g, e in zip(got, expected):
        assert confidences(g) == pytest.approx(confidences(e), abs=confidence_tolerance)


def run_fastdeploy_demo(model_dir, backend, texts, *flags):
    """deploy/python/infer_demo.py's records for `texts` (stdin lines), in a subprocess:
    FastDeploy cannot share a process with paddle 2.6."""
    proc = subprocess.run([sys.executable, FASTDEPLOY_DEMO, "--model_dir", model_dir, "--backend", backend, *flags],
                          input="".join(t + "\n" for t in texts), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def proto(*fields):
    """A protobuf message from (field number, int or bytes) pairs, at the wire level."""
    def varint(n):
        n &= (1 << 64) - 1
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    return b"".join(varint(number << 3 | (2 if isinstance(value, bytes) else 0)) + (
        varint(len(value)) + value if isinstance(value, bytes) else varint(value)) for number, value in fields)


def embedding_program(vocab_rows, position_rows):
    """A stand-in model.pdmodel: a Paddle ProgramDesc with ERNIE's three embedding lookups (word,
    position, token type) and nothing else, for readers that check the tables but run no graph."""
    def var(name, dims):
        return 3, proto((1, name.encode()), (2, proto((1, 7), (3, proto((1, proto((1, 5), *[(2, d) for d in dims])))))))

    def lookup(ids, table):
        return 4, proto((1, proto((1, b"Ids"), (2, ids.encode()))), (1, proto((1, b"W"), (2, table.encode()))),
                        (2, proto((1, b"Out"), (2, b"out"))), (3, b"lookup_table_v2"))

    block = proto((1, 0), (2, 0), var(INPUT_NAME, [-1, -1]), var("word", [vocab_rows, 8]), var("pos", [position_rows, 8]),
                  var("type", [4, 8]), lookup(INPUT_NAME, "word"), lookup("position_ids", "pos"), lookup("type_ids", "type"))
    return proto((1, block))


def weights_file(*arrays):
    """A model.pdiparams (Paddle's save_combine stream) holding `arrays`, for readers that check
    the weights but run no graph."""
    out = b""
    for a in arrays:
        a = np.ascontiguousarray(a)
        code = {"float32": 5, "float64": 6, "int8": 21, "int64": 3}[a.dtype.name]
        desc = proto((1, code), *[(2, d) for d in a.shape])
        out += (0).to_bytes(4, "little") + (0).to_bytes(8, "little") + (0).to_bytes(4, "little") + len(desc).to_bytes(4, "little")
        out += desc + a.astype(a.dtype.newbyteorder("<")).tobytes()
    return out


# Runs a project script with `open` watched, and SIGKILLs the process the moment it opens for writing a
# file whose path matches a glob pattern: a kill at a chosen point, not a timing guess. (utils.atomic_path
# writes FILE as .FILE.<random>/new beside it: "*/.train.txt.*/new" is the moment train.txt is written.)
_KILL_ON_OPEN = """
import builtins, fnmatch, os, runpy, signal, sys
script, pattern, *argv = sys.argv[1:]
real_open = builtins.open
def watched_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and fnmatch.fnmatch(os.fspath(file), pattern) and any(m in mode for m in "wax+"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_open(file, mode, *args, **kwargs)
builtins.open = watched_open
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
"""


def run_killed_at_open(script, pattern, argv, env=None):
    """Run `script` (relative to the project) with `argv` in a subprocess that is SIGKILLed when it
    opens a path matching `pattern` (fnmatch) for writing; asserts that it was killed there."""
    proc = subprocess.run([sys.executable, "-c", _KILL_ON_OPEN, os.path.join(utils.PROJECT_DIR, script), pattern, *argv],
                          cwd=utils.PROJECT_DIR, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {pattern} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir, *flags):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, os.path.join(utils.PROJECT_DIR, "serve.py"), "--model_dir", model_dir,
                                      "--port", str(self.port), "--cpu_threads", "1", "--log_level", "warning", *flags],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 180
        while self.call("GET", "/v1/ready")[0] != 200:
            assert self.proc.poll() is None, self.proc.stderr.read()[-3000:]
            assert time.time() < deadline, "serve.py not ready in 180 s"
            time.sleep(0.3)

    def call(self, method, path, body=None, headers=None):
        """(status, parsed JSON or None); status 0 when nothing answers on the port."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body, ensure_ascii=False).encode("utf-8")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except (ConnectionRefusedError, ConnectionResetError):
            return 0, None
        finally:
            conn.close()
        return response.status, json.loads(data) if data else None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="session")
def edge_cases():
    """Utterances a front end must answer the same way as every other (tests/edge_cases.json)."""
    with open(EDGE_CASES, encoding="utf-8") as f:
        return [case["text"] for case in json.load(f)]


@pytest.fixture(scope="session")
def labels():
    return SYNTHETIC_LABELS


@pytest.fixture(scope="session")
def corpus_path():
    if not os.path.isfile(SHARED_CORPUS):
        pytest.skip("NLPCC 2018 corpus not present at ../shared/data/nlpcc2018/")
    return SHARED_CORPUS


@pytest.fixture(scope="session")
def corpus(corpus_path, labels):
    return read_corpus(corpus_path, labels)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    prepare_data.main(["--synthetic", "--output_dir", out])
    return out


@pytest.fixture(scope="session")
def synthetic_splits(synthetic_dir, labels):
    return {name: read_corpus(os.path.join(synthetic_dir, f"{name}.txt"), labels) for name in ("train", "dev", "test")}


@pytest.fixture(scope="session")
def trained(synthetic_dir, tmp_path_factory):
    """Output directory of a short from-scratch nano run with one turn of session context: train ->
    eval -> export (context-free models are trained in test_training.py)."""
    import run_train

    out = str(tmp_path_factory.mktemp("trained"))
    run_train.main([
        "--from_scratch", "--model_name_or_path", "ernie-3.0-tiny-nano-v2-zh", "--context_turns", "1",
        "--data_dir", synthetic_dir, "--output_dir", out,
        "--do_train", "--do_eval", "--do_export",
        "--num_train_epochs", "3", "--learning_rate", "1e-3", "--warmup_ratio", "0.1",
        "--per_device_train_batch_size", "64", "--logging_steps", "10", "--seed", "42", "--disable_tqdm", "true",
    ])
    return out


@pytest.fixture(scope="session")
def cpp_demo():
    """deploy/cpp's slu_demo, built with `make cpp` (cmake + g++ + the openvino pip wheel)."""
    proc = subprocess.run(["make", "-s", "cpp"], cwd=utils.PROJECT_DIR, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return os.path.join(utils.PROJECT_DIR, "build", "cpp", "slu_demo")


class LocalRedis:
    """A real redis-server on a free 127.0.0.1 port with its data in `directory`
    (sessions.redis_server_command): start, stop (SHUTDOWN: the append-only file is complete), start again."""

    def __init__(self, directory):
        self.directory, self.port, self.proc = str(directory), free_port(), None
        os.makedirs(self.directory, exist_ok=True)
        self.start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)

    def start(self):
        import redis

        import sessions

        self.proc = subprocess.Popen(sessions.redis_server_command(self.port, self.directory), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read()[-2000:]
            try:
                if self.client().ping():
                    return
            except redis.exceptions.ConnectionError:
                assert time.time() < deadline, "redis-server not answering in 30 s"
                time.sleep(0.1)

    def stop(self):
        import redis

        try:
            self.client().shutdown()
        except redis.exceptions.ConnectionError:  # the server closes the connection as it goes
            pass
        self.proc.wait(timeout=30)
