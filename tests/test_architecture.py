"""What docs/architecture.md promises of the layout and the code can check: the numpy-only core
imports without paddle or paddlenlp (FastDeploy front ends use it, and FastDeploy 1.0.7 crashes
beside paddle 2.6)."""
import subprocess
import sys

import utils

NUMPY_ONLY = ["utils", "task", "decoding", "paddle_format", "export_format", "predictor", "metrics", "analysis", "backends",
              "onnx_graph", "latency", "sessions", "teachers", "data.corpus", "data.split", "data.augment", "data.synthetic", "data.labels",
              "data.jsonl", "data.import_rasa"]


def test_the_numpy_only_core_imports_without_paddle():
    code = (f"import sys\nfor m in {NUMPY_ONLY!r}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('paddle', 'paddlenlp', 'paddleslim', 'fastdeploy')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=utils.PROJECT_DIR, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
