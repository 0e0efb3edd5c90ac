"""Distillation: slot-preserving augmentation, the two objectives on hand-computed values, the
teacher-logit cache, and a tiny end-to-end run of run_distill.py."""
import os
import shutil

import numpy as np
import paddle
import pytest
from conftest import run_fastdeploy_demo, strip_confidence

import backends
import run_distill
import utils
from model import BiLSTMJoint, DistillLoss
from teachers import session_rows


def test_mse_objective_on_hand_computed_values():
    intent, t_intent = paddle.to_tensor([[1.0, 2.0]]), paddle.to_tensor([[0.0, 4.0]])
    slots, t_slots = paddle.to_tensor([[[1.0, 0.0], [5.0, 5.0]]]), paddle.to_tensor([[[0.0, 0.0], [0.0, 0.0]]])
    mask = paddle.to_tensor([[1.0, 0.0]])  # the second position is padding: ignored
    loss = DistillLoss(pad_slot_id=0, objective="mse")((intent, slots), (t_intent, t_slots), mask)
    assert float(loss) == pytest.approx((1 + 4) / 2 + (1 + 0) / 2)


def test_kd_objective_on_hand_computed_values():
    T, alpha = 2.0, 0.3
    intent, t_intent = np.array([[1.0, 2.0, 0.0], [0.5, 0.0, 0.0]]), np.array([[0.0, 4.0, 0.0], [1.0, 1.0, 0.0]])
    slots, t_slots = np.array([[[2.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]]), np.array([[[1.0, 1.0, 0.0]], [[0.0, 3.0, 0.0]]])
    intent_label, slot_labels, has_gold = np.array([1, 0]), np.array([[2], [1]]), np.array([1.0, 0.0])  # row 2 augmented
    mask = np.ones((2, 1))

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    soft = lambda s, t: -(np.exp(log_softmax(t / T)) * log_softmax(s / T)).sum(-1)
    soft_term = soft(intent, t_intent).mean() + soft(slots, t_slots).mean()
    hard_term = -log_softmax(intent)[0, 1] - log_softmax(slots)[0, 0, 2]  # gold row only; slot tag 2 is not PAD (0)
    expected = alpha * hard_term + (1 - alpha) * T * T * soft_term
    t = lambda a, dtype="float32": paddle.to_tensor(np.asarray(a, dtype=dtype))
    loss = DistillLoss(pad_slot_id=0, objective="kd", temperature=T, alpha=alpha)(
        (t(intent), t(slots)), (t(t_intent), t(t_slots)), t(mask), (t(intent_label, "int64"), t(slot_labels, "int64"), t(has_gold)))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="mse or kd"):
        DistillLoss(0, objective="kl")


def test_student_matches_after_save_load_and_ignores_padding(tmp_path):
    paddle.seed(0)
    student = BiLSTMJoint(vocab_size=30, num_intents=4, num_slot_tags=5, pad_token_id=0, embedding_dim=8, hidden_size=8)
    student.eval()
    ids = paddle.to_tensor([[1, 5, 6, 7, 2, 0, 0], [1, 8, 2, 0, 0, 0, 0]])
    intent, slots = student(ids)
    assert intent.shape == [2, 4] and slots.shape == [2, 7, 5]
    alone = student(ids[1:, :3])  # the same row without padding
    np.testing.assert_allclose(alone[0].numpy(), intent[1:].numpy(), atol=1e-6)
    np.testing.assert_allclose(alone[1].numpy(), slots[1:, :3].numpy(), atol=1e-6)
    student.save(str(tmp_path))
    again = BiLSTMJoint.load(str(tmp_path))
    again.eval()
    np.testing.assert_allclose(again(ids)[0].numpy(), intent.numpy())


def test_teacher_logits_are_cached_and_reused(trained, synthetic_splits, labels, tmp_path, monkeypatch):
    teacher = backends.open_predictor(os.path.join(trained, "infer_model"))
    dev = synthetic_splits["dev"][:40]
    histories = teacher.task.corpus_histories(dev)
    rows = session_rows(dev, histories, teacher.task, has_gold=True)
    assert sum(len(r["input_ids"]) > len(u.token_tags()) + 2 for r, u in zip(rows, dev)) > 20  # with the previous turn
    # distillation matches slot logits on the utterance's characters only, not on the context
    mask = run_distill.make_batch(rows, teacher.task)["token_mask"].numpy()
    assert mask.sum(1).tolist() == [len(u.token_tags()) for u in dev] and mask[:, 0].sum() == 0
    cache = str(tmp_path / "teacher.npz")
    teacher_dir = os.path.join(trained, "infer_model")
    run_distill.teacher_logits(teacher, teacher_dir, rows, cache)
    first = [(r["teacher_intent"].copy(), r["teacher_slots"].copy()) for r in rows]
    assert all(len(r["teacher_slots"]) == len(r["input_ids"]) for r in rows)
    direct = teacher.logits_fn(utils.pad_batch([rows[3]["input_ids"]], teacher.task.tokenizer.pad_id))
    np.testing.assert_allclose(first[3][0], direct[0][0], atol=1e-4)

    logits_fn = teacher.logits_fn
    monkeypatch.setattr(teacher, "logits_fn", lambda ids: pytest.fail("the cache should have been reused"))
    run_distill.teacher_logits(teacher, teacher_dir, rows, cache)
    assert all(np.array_equal(r["teacher_intent"], f[0]) for r, f in zip(rows, first))

    # another teacher with the same vocabulary and rows (its weights changed): recomputed, not reused
    other_dir = str(tmp_path / "other-teacher")
    shutil.copytree(teacher_dir, other_dir)
    params = os.path.join(other_dir, "model.pdiparams")
    data = bytearray(open(params, "rb").read())
    data[-1] ^= 1
    open(params, "wb").write(bytes(data))
    calls = []
    monkeypatch.setattr(teacher, "logits_fn", lambda ids: calls.append(len(ids)) or logits_fn(ids))
    run_distill.teacher_logits(teacher, other_dir, rows, cache)
    assert sum(calls) == len(rows)
    # a cache cut short (a kill mid-write of an older version): recomputed with a warning, not a BadZipFile
    open(cache, "r+b").truncate(os.path.getsize(cache) // 2)
    calls.clear()
    run_distill.teacher_logits(teacher, teacher_dir, rows, cache)
    assert sum(calls) == len(rows) and all(np.allclose(r["teacher_intent"], f[0], atol=1e-5) for r, f in zip(rows, first))


def test_tiny_distillation_run(trained, synthetic_dir, synthetic_splits, tmp_path):
    out = str(tmp_path / "distill")
    report = run_distill.main([
        "--teacher_dir", os.path.join(trained, "infer_model"), "--data_dir", synthetic_dir, "--output_dir", out,
        "--num_train_epochs", "2", "--augment_copies", "1", "--latency_utterances", "30", "--objective", "kd",
    ])
    assert list(report["models"]) == ["teacher (fp32 ERNIE)", "student alone", "distilled student"]
    assert (
        report["augmented_rows"] > 1000
        and report["latency_ratio"]["paddle-inference"] > 1
        and report["latency_ratio"]["fastdeploy-ort"] > 1
    )
    assert os.path.isfile(os.path.join(out, "distill_report.md"))
    for name in ("student_alone", "distilled"):
        student = backends.open_predictor(os.path.join(out, name, "infer_model"))
        results = student.predict(["导航去人民公园", "下一首"])
        assert all(r["intent"] in student.task.labels.intents for r in results)
    assert report["models"]["student alone"]["size_mb"] < 0.2 * report["models"]["teacher (fp32 ERNIE)"]["size_mb"]

    # the exported student on FastDeploy, padded batches included: its reversal must not depend
    # on sequence_length, which ONNX Runtime ignores (OpenVINO runs in bf16 here: near-identical)
    student_dir = os.path.join(out, "distilled", "infer_model")
    texts = [u.text for u in synthetic_splits["test"][:60]]
    expected = backends.open_predictor(student_dir).predict(texts, batch_size=16)
    for backend, share in (("fastdeploy-ort", 1.0), ("fastdeploy-openvino", 0.95)):
        got = run_fastdeploy_demo(student_dir, backend, texts, "--batch_size", "16")
        same = sum(g == e for g, e in zip(strip_confidence(got), strip_confidence(expected)))
        assert len(got) == len(texts) and same >= share * len(texts), backend
