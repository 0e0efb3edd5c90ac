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


def test_pickle_globals_reads_imports_without_loading(tmp_path):
    """Both ways a pickle names what it imports (GLOBAL up to protocol 3, STACK_GLOBAL with memoised
    strings from protocol 4), read without unpickling."""
    import collections
    import pickle

    import numpy as np

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        with open(path, "wb") as f:
            pickle.dump({"w": np.zeros(2), "o": collections.OrderedDict(a=np.ones(1)), "x": Payload()}, f, protocol=protocol)
        found = utils.pickle_globals(str(path))
        assert "collections.OrderedDict" in found and any(g.startswith("numpy.") for g in found)
        assert found & {"io.open", "builtins.open"} and "?" not in found, (protocol, found)
    assert not marker.exists()
