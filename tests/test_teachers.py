"""teachers.py: an ensemble's soft targets on the training rows (computed in length-sorted
batches, cached, checked against each row run alone), the collator that carries them, the refusal
of a teacher that reads rows differently, and run_train.py --teacher_dirs end to end."""
import dataclasses
import logging
import os
import re

import numpy as np
import pytest

import export_format
import training
from backends import open_predictor
from data.corpus import read_corpus
from decoding import softmax64
from teachers import Ensemble, ensemble_predictor


@pytest.fixture(scope="module")
def teacher(trained):
    return os.path.join(trained, "infer_model")


@pytest.fixture(scope="module")
def rows_and_task(teacher, synthetic_dir):
    task = export_format.read(teacher).task
    train = read_corpus(os.path.join(synthetic_dir, "train.txt"), task.labels)[:300]
    return [task.labelled_rows(u, e)[0] for u, e in zip(train, task.encode_corpus(train))], task


def test_targets_are_the_teachers_mean_probabilities_row_by_row(teacher, rows_and_task, tmp_path, caplog):
    rows, task = rows_and_task
    rows = [dict(r) for r in rows]
    caplog.set_level(logging.INFO, logger="ernie_tiny_slu")
    Ensemble([teacher, teacher], temperature=2.0, cache_dir=str(tmp_path)).add_targets(rows, task)
    assert len(os.listdir(tmp_path)) == 1 and "logits from" in caplog.text  # the second teacher read the first's cache
    logits_fn = open_predictor(teacher, "onnxruntime", 1).logits_fn
    pad = task.labels.pad_slot_id
    for i in (0, 7, 123, 299):  # each row alone, unpadded: the batches' order and padding changed nothing
        intent, slots = logits_fn(np.array([rows[i]["input_ids"]]))
        tagged = np.array(rows[i]["slot_labels"]) != pad
        assert np.allclose(rows[i]["ensemble_intent"], softmax64(intent[0], 2.0), atol=1e-5)
        assert np.allclose(rows[i]["ensemble_slots"], softmax64(slots[0][tagged], 2.0), atol=1e-5)
        assert rows[i]["ensemble_slots"].shape == (tagged.sum(), len(task.labels.slot_tags))

    batch = training.make_collator(task.tokenizer.pad_id, pad)(rows[:5])
    tagged = batch["slot_labels"] != pad
    assert batch["ensemble_intent"].shape == (5, len(task.labels.intents))
    for i in range(5):
        assert np.array_equal(batch["ensemble_slots"][i][tagged[i]], rows[i]["ensemble_slots"])
    assert not batch["ensemble_slots"][~tagged].any()  # context, [CLS], [SEP] and padding learn nothing from teachers


def test_augmented_rows_learn_from_the_ensemble_alone(teacher, synthetic_dir, rows_and_task, tmp_path):
    """Augmented copies: one row each, with their source's context, has_gold 0, the ensemble's
    targets; the collator marks them so in a batch with gold rows."""
    gold_rows, task = rows_and_task
    train = read_corpus(os.path.join(synthetic_dir, "train.txt"), task.labels)[:300]
    ensemble = Ensemble([teacher], cache_dir=str(tmp_path), augment_copies=2, seed=7)
    augmented = ensemble.augmented_rows(train, task)
    assert 300 <= len(augmented) <= 600 and all(r["has_gold"] == 0.0 for r in augmented)
    assert [r["input_ids"] for r in augmented] == [r["input_ids"] for r in ensemble.augmented_rows(train, task)]  # seeded
    rows = [dict(r) for r in gold_rows[:3]] + augmented[:2]
    ensemble.add_targets(rows, task)
    assert all(len(r["ensemble_slots"]) == sum(t != task.labels.pad_slot_id for t in r["slot_labels"]) for r in rows)
    batch = training.make_collator(task.tokenizer.pad_id, task.labels.pad_slot_id)(rows)
    assert batch["has_gold"].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    sep = task.tokenizer.sep_id  # a copy reads its source's context: the session's earlier turns after the [SEP]
    assert any(list(r["input_ids"]).count(sep) > 1 for r in augmented)


def test_a_teacher_that_reads_rows_otherwise_is_refused(teacher, rows_and_task, tmp_path):
    rows, task = rows_and_task
    other = dataclasses.replace(task, context_turns=2, max_context_tokens=32)
    with pytest.raises(ValueError, match=r"infer_model: its context_turns differs from this run's \(1, this run 2\)"):
        Ensemble([teacher], cache_dir=str(tmp_path)).add_targets([dict(r) for r in rows], other)
    with pytest.raises(ValueError, match="alpha"):
        Ensemble([teacher], alpha=1.0)


def test_run_train_learns_from_teachers(teacher, synthetic_dir, tmp_path):
    import run_train

    out = str(tmp_path / "student")
    run_train.main(["--from_scratch", "--model_name_or_path", "ernie-3.0-tiny-nano-v2-zh", "--context_turns", "1",
                    "--data_dir", synthetic_dir, "--output_dir", out, "--do_train", "--max_steps", "4",
                    "--evaluation_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                    "--disable_tqdm", "true", "--teacher_dirs", teacher, teacher, "--distill_alpha", "0.3",
                    "--teacher_cache_dir", str(tmp_path / "cache"), "--augment_copies", "1"])
    log = open(os.path.join(out, "train.log"), encoding="utf-8").read()
    assert "ensemble of 2 teachers at T=2.0" in log and os.path.isfile(os.path.join(out, "model.safetensors"))
    assert re.search(r"augmentation: \d+ rows from \d+ training utterances x 1", log)
    assert len(os.listdir(tmp_path / "cache")) == 1


def test_an_ensemble_of_one_model_twice_predicts_as_the_model(teacher, synthetic_splits):
    """The mean of equal members is the member: same evaluation, intent scores its log-probabilities."""
    single = open_predictor(teacher, "onnxruntime", 1)
    ensemble = ensemble_predictor([teacher, teacher], "onnxruntime", 1)
    test = synthetic_splits["test"]
    assert ensemble.evaluate(test) == single.evaluate(test)
    ids = np.array([single.task.encode("导航去北京").windows[0]])
    (intent, slots), (e_intent, e_slots) = single.logits_fn(ids), ensemble.logits_fn(ids)
    assert np.allclose(np.exp(e_intent).sum(-1), 1.0, atol=1e-5) and np.allclose(e_intent, np.log(softmax64(intent, 1.0)), atol=1e-5)
    assert np.allclose(e_slots, slots, atol=1e-6)
