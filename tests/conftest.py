"""Shared fixtures: the synthetic splits, the real corpus when present, and one small model
trained, evaluated and exported once per session through run_train.py itself."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import utils  # noqa: E402  (before paddle: CPU math library setup)
from data import prepare_data  # noqa: E402

SHARED_CORPUS = os.path.join(utils.PROJECT_DIR, "..", "shared", "data", "nlpcc2018", "corpus.train.txt")


@pytest.fixture(scope="session")
def labels():
    return utils.LabelMaps.from_files()


@pytest.fixture(scope="session")
def corpus_path():
    if not os.path.isfile(SHARED_CORPUS):
        pytest.skip("NLPCC 2018 corpus not present at ../shared/data/nlpcc2018/")
    return SHARED_CORPUS


@pytest.fixture(scope="session")
def corpus(corpus_path, labels):
    return utils.read_corpus(corpus_path, labels)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    prepare_data.main(["--synthetic", "--output_dir", out])
    return out


@pytest.fixture(scope="session")
def synthetic_splits(synthetic_dir, labels):
    return {name: utils.read_corpus(os.path.join(synthetic_dir, f"{name}.txt"), labels) for name in ("train", "dev", "test")}


@pytest.fixture(scope="session")
def trained(synthetic_dir, tmp_path_factory):
    """Output directory of a short from-scratch nano run: train -> eval -> export."""
    import run_train

    out = str(tmp_path_factory.mktemp("trained"))
    run_train.main([
        "--from_scratch", "--model_name_or_path", "ernie-3.0-tiny-nano-v2-zh",
        "--data_dir", synthetic_dir, "--output_dir", out,
        "--do_train", "--do_eval", "--do_export",
        "--num_train_epochs", "3", "--learning_rate", "1e-3", "--warmup_ratio", "0.1",
        "--per_device_train_batch_size", "64", "--logging_steps", "10", "--seed", "42", "--disable_tqdm", "true",
    ])
    return out
