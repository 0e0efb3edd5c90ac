"""utils.py: files written whole or not at all, and the small numpy helpers."""
import os

import numpy as np
import pytest

import utils

def test_atomic_path_replaces_a_file_whole(tmp_path):
    path = str(tmp_path / "results.json")
    utils.save_json(path, {"a": 1})
    with pytest.raises(ZeroDivisionError):
        with utils.atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write('{"a": ')
            1 / 0
    assert utils.load_json(path) == {"a": 1} and os.listdir(tmp_path) == ["results.json"]


def test_pad_batch_and_markdown_table():
    padded = utils.pad_batch([[1, 2, 3], [4]], pad_value=0)
    assert padded.dtype == np.int64 and padded.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert utils.markdown_table(["a", "b"], [[1, 2]]) == ["| a | b |", "| --- | ---: |", "| 1 | 2 |"]
