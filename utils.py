"""Small helpers every part of the project shares: files written whole or not at all, JSON,
Markdown tables, padding, the CPU math-library switch. Plain Python + numpy, no
import-time side effects (FastDeploy front ends import this and must never load paddle)."""
import argparse
import contextlib
import hashlib
import json
import os
import pickletools
import shutil
import tempfile
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_path(path: str, replaces: Optional[Callable[[str], bool]] = None):
    """Yields a temporary sibling of `path` (file or directory) to write; on success it replaces
    `path` in one rename, on error it is removed: readers see the old or the new, never a mix.

    An existing directory at `path` is replaced only when `replaces(path)` says it may be (an
    export replaces an earlier export, never a directory someone mistyped as an output file); a
    symlink to a directory stays a link, and the directory it names is the one replaced."""
    if os.path.islink(path) and os.path.isdir(path):
        path = os.path.realpath(path)
    if os.path.isdir(path) and not (replaces and replaces(path)):
        raise IsADirectoryError(f"{path}: is a directory; refusing to replace it with "
                                f"{'a file' if replaces is None else 'this output (it holds something else)'}")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", dir=parent)
    target = os.path.join(tmp, "new")
    try:
        yield target
        if os.path.isdir(path):
            if not (replaces and replaces(path)):  # it may have changed while the new one was written
                raise IsADirectoryError(f"{path}: is a directory that holds something else now; not replaced")
            os.rename(path, os.path.join(tmp, "old"))
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_lines(path: str) -> List[str]:
    """Non-blank lines without their line ends."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def write_lines(path: str, lines: Iterable[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def save_json(path: str, obj) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def save_figure(fig, path: str, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG, written whole or not at all."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def pickle_globals(path: str) -> set:
    """Every "module.name" a pickle file would import when loaded, read from its opcodes without
    loading it (pickletools): what decides whether unpickling can run foreign code. A global whose
    name is not a plain string on the stack is reported as "?"."""
    found, stack, memo = set(), [], {}
    with open(path, "rb") as f:
        for op, arg, _ in pickletools.genops(f):
            if op.name in ("GLOBAL", "INST"):
                found.add(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                module, name = (stack[-2], stack[-1]) if len(stack) >= 2 else (None, None)
                found.add(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else "?")
            if op.name in _STRING_OPS:
                stack.append(arg)
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else None
            elif op.name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg))
            elif op.name != "STOP":
                stack.append(None)  # anything else: not a name (only the last two pushes matter)
    return found


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_json(path: str, strict: bool = False):
    """A JSON file; `strict`: as the C++ reader (nlohmann/json) parses it, so no NaN or Infinity
    (Python's json accepts both; ValueError like any other syntax error)."""
    with open(path, encoding="utf-8") as f:
        return strict_json_loads(f.read()) if strict else json.load(f)


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def strict_json_loads(text: str):
    """json.loads without the NaN and Infinity extensions; ValueError on anything not JSON."""
    return json.loads(text, parse_constant=_not_json)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], right_aligned_from: int = 1) -> List[str]:
    """A Markdown table; columns from `right_aligned_from` on are right-aligned (numbers)."""
    rule = ["---" if i < right_aligned_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(str(c) for c in row) + " |" for row in [header, rule, *rows]]


# ----------------------------------------------------------------------------- arrays


def pad_batch(sequences: Sequence[Sequence[int]], pad_value: int) -> np.ndarray:
    """[len(sequences), longest] int64, right-padded with `pad_value`."""
    width = max(len(s) for s in sequences)
    out = np.full((len(sequences), width), pad_value, dtype="int64")
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out


# ----------------------------------------------------------------------------- CPU


def prefer_avx2_mkl() -> None:
    """The Paddle CPU wheel bundles Intel MKL, which runs its generic (non-AVX2) GEMM kernels on
    AMD CPUs; MKL_DEBUG_CPU_TYPE=5 selects the AVX2 ones (matmuls ~3x faster; docs/training.md,
    "Training speed"). MKL reads it at its first call, so call this before paddle computes anything."""
    try:
        with open("/proc/cpuinfo") as f:
            amd = "AuthenticAMD" in f.read(4096)
    except OSError:
        amd = False
    if amd:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")


def positive_int(value: str) -> int:
    """An argparse type: an integer of at least 1 (--batch_size 0 would loop forever or fail deep inside)."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return number


def cpu_threads(requested: int) -> int:
    """The thread count a `--cpu_threads` flag means: 0 = one per core."""
    return requested or os.cpu_count() or 1
