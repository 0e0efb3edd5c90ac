"""Data-parallel training under `python -m paddle.distributed.launch`: two CPU processes over
gloo against one process with the same global batch, on the synthetic corpus."""
import glob
import os
import re
import subprocess
import sys

import pytest

import run_distill
import run_train
import utils

# 2 x 32 = 1 x 64: the same global batches (training.LengthBucketSampler); evaluation and
# checkpoints every 40 steps, so distributed evaluation and best-model tracking run too. 80 steps
# take dev intent accuracy from chance to ~0.9.
COMMON = ["--from_scratch", "--do_train", "--do_eval", "--max_steps", "80", "--evaluation_strategy", "steps",
          "--save_strategy", "steps", "--eval_steps", "40", "--save_steps", "40", "--load_best_model_at_end", "false",
          "--learning_rate", "1.5e-3", "--warmup_ratio", "0.1", "--logging_steps", "10", "--seed", "42",
          "--cpu_threads", "1", "--disable_tqdm", "true"]


def start_training(synthetic_dir, out, nproc, batch):
    launcher = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
                "--log_dir", os.path.join(out, "..", os.path.basename(out) + "-launch-logs")] if nproc > 1 else [sys.executable]
    return subprocess.Popen(launcher + ["run_train.py", "--data_dir", synthetic_dir, "--output_dir", out,
                                        "--per_device_train_batch_size", str(batch)] + COMMON,
                            cwd=utils.PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(synthetic_dir, tmp_path_factory):
    """The one-process and the two-process run, side by side (the one-process run leaves a core idle)."""
    root = tmp_path_factory.mktemp("distributed")
    outs = {n: str(root / f"{n}proc") for n in (1, 2)}
    procs = {n: start_training(synthetic_dir, outs[n], n, 64 // n) for n in (1, 2)}
    try:
        for n, proc in procs.items():
            output = proc.communicate(timeout=900)[0]
            assert proc.returncode == 0, f"{n} process(es): " + output[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return outs


def test_two_processes_end_with_identical_weights_and_write_one_set_of_outputs(runs):
    out = runs[2]
    logs = [open(f, encoding="utf-8").read() for f in sorted(glob.glob(out + "-launch-logs/workerlog.*"))]
    assert len(logs) == 2
    digests = [re.findall(r"rank (\d): weights sha256 ([0-9a-f]{64})", log) for log in logs]
    assert [d[0][0] for d in digests] == ["0", "1"] and digests[0][0][1] == digests[1][0][1]
    # rank 0 alone writes the log file, metrics and checkpoints: each line and file once
    log = open(os.path.join(out, "train.log"), encoding="utf-8").read()
    assert log.count("processes: 2 (rank 0); global batch 64 = 32 per process x 2 x 1 accumulation steps") == 1
    assert log.count("training utterances truncated") == 1 and "rank 1" not in log
    files = {n: sorted(f for f in os.listdir(o) if not f.startswith("checkpoint-")) for n, o in runs.items()}
    assert files[1] == files[2] and "vocab.txt" in files[2]
    for checkpoint in glob.glob(os.path.join(out, "checkpoint-*")):  # one rng state file holding both ranks'
        assert [f for f in os.listdir(checkpoint) if f.startswith("rng_state")] == ["rng_state_2.pth"]


def test_distributed_evaluation_gives_the_single_process_answer(runs):
    """The Trainer's dev evaluation splits dev over the ranks and gathers the logits; scored on
    the same final weights it must equal rank 0's one-process evaluation of dev."""
    out = runs[2]
    state = utils.load_json(os.path.join(out, "checkpoint-80", "trainer_state.json"))
    in_training = [e for e in state["log_history"] if "eval_sentence_acc" in e and e["step"] == 80][0]
    after = utils.load_json(os.path.join(out, "eval_results.json"))["dev"]
    assert in_training["eval_sentence_acc"] == after["sentence_acc"] and in_training["eval_intent_acc"] == after["intent_acc"]


def test_two_processes_learn_what_one_process_learns(runs):
    """Same global batches and learning rate; not bitwise equal, because PaddleNLP seeds each
    rank's dropout differently and the slot loss is averaged per rank before the all-reduce.
    Both runs must take dev from chance to ~0.9 alike."""
    dev = {n: utils.load_json(os.path.join(out, "eval_results.json"))["dev"] for n, out in runs.items()}
    assert dev[1]["intent_acc"] > 0.8
    assert abs(dev[1]["intent_acc"] - dev[2]["intent_acc"]) < 0.05
    assert abs(dev[1]["sentence_acc"] - dev[2]["sentence_acc"]) < 0.08
    losses = {n: utils.load_json(os.path.join(out, "checkpoint-80", "trainer_state.json"))["log_history"][0]["loss"]
              for n, out in runs.items()}
    assert losses[1] == pytest.approx(losses[2], rel=0.05)  # the first 10 steps: the same batches, other dropout


def test_single_process_jobs_refuse_the_launcher(monkeypatch, tmp_path):
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    with pytest.raises(SystemExit, match="compression .* runs in a single process"):
        run_train.main(["--do_compress", "--output_dir", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="distillation .* runs in a single process"):
        run_distill.main(["--output_dir", str(tmp_path / "d")])
    assert os.listdir(tmp_path) == []  # refused before writing anything
