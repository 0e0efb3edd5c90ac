"""Soft targets of an ensemble of trained models, for training one model against them
(run_train.py --teacher_dirs; docs/model-and-context.md, "Toward 86").

Each teacher is an exported model (the infer_model/ of an earlier run) that reads the training
split exactly as this run does: same vocabulary, labels, window and context. Its intent and slot
logits on every training row are computed once through ONNX Runtime and cached under
`cache_dir`, keyed by the teacher's weights and the rows. The ensemble's target for a row is the
mean over teachers of softmax(logits / T), for the intent and for each utterance token's slot
tag (context and special tokens carry none). With `augment_copies` the ensemble also labels
augmented copies of the training utterances, which the model learns from it alone.
`ensemble_predictor` runs such an ensemble as one model, to measure what distilling it could reach."""
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

import export_format
from backends import open_predictor
from data.augment import augment_corpus
from data.corpus import Utterance
from decoding import softmax64
from predictor import Predictor
from task import Task
from utils import atomic_path, file_sha256, pad_batch

logger = logging.getLogger("ernie_tiny_slu")

BATCH_ROWS = 256


def check_reads_like(teacher: Task, task: Task, teacher_dir: str) -> None:
    """ValueError naming the first setting in which `teacher` reads rows differently from `task`."""
    for what, mine, theirs in [
        ("vocabulary", task.tokenizer.vocab, teacher.tokenizer.vocab),
        ("labels", task.labels, teacher.labels),
        ("max_seq_length", task.max_seq_length, teacher.max_seq_length),
        ("context_turns", task.context_turns, teacher.context_turns),
        ("max_context_tokens", task.max_context_tokens, teacher.max_context_tokens),
    ]:
        if mine != theirs:
            detail = "" if what in ("vocabulary", "labels") else f" ({theirs}, this run {mine})"
            raise ValueError(f"--teacher_dirs {teacher_dir}: its {what} differs from this run's{detail}; a teacher must read "
                             "the training rows as the student does (train it on the same --data_dir with the same window and context)")


def rows_digest(rows: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(np.asarray(row["input_ids"], dtype="int64").tobytes() + b"|")
    return h.hexdigest()


def teacher_logits(teacher_dir: str, rows: Sequence[dict], task: Task, threads: int, cache_dir: str, digest: str = "") -> dict:
    """{"intent": [N, intents], "slots": [tokens, tags]} float32: one teacher's logits on `rows`,
    the slot logits of the utterance tokens of all rows, in row order; read from the cache when
    the same weights saw the same rows before (`digest`: rows_digest(rows), when already known)."""
    exported = export_format.read(teacher_dir)
    check_reads_like(exported.task, task, teacher_dir)
    key = hashlib.sha256((file_sha256(exported.path(export_format.PARAMS_FILE)) + (digest or rows_digest(rows))).encode()).hexdigest()[:24]
    cache = os.path.join(cache_dir, f"{key}.npz")
    if os.path.isfile(cache):
        logger.info(f"teacher {teacher_dir}: logits from {cache}")
        with np.load(cache) as saved:
            return {"intent": saved["intent"], "slots": saved["slots"]}
    logits_fn = open_predictor(teacher_dir, "onnxruntime", threads, warn_uncalibrated=False).logits_fn
    pad, pad_slot = task.tokenizer.pad_id, task.labels.pad_slot_id
    intents: List[np.ndarray] = [None] * len(rows)
    slots: List[np.ndarray] = [None] * len(rows)
    order = np.argsort([len(r["input_ids"]) for r in rows], kind="stable")  # little padding per batch
    for b in range(0, len(order), BATCH_ROWS):
        batch = [rows[i] for i in order[b : b + BATCH_ROWS]]
        intent_logits, slot_logits = logits_fn(pad_batch([r["input_ids"] for r in batch], pad))
        for j, i in enumerate(order[b : b + BATCH_ROWS]):
            tagged = np.asarray(rows[i]["slot_labels"]) != pad_slot
            intents[i], slots[i] = intent_logits[j], slot_logits[j, : len(tagged)][tagged]
    result = {"intent": np.stack(intents).astype("float32"), "slots": np.concatenate(slots).astype("float32")}
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a bare path
            np.savez(f, **result)
    logger.info(f"teacher {teacher_dir}: logits of {len(rows)} training rows, cached in {cache}")
    return result


def session_rows(utterances: Sequence[Utterance], histories: Sequence[Sequence[str]], task: Task, has_gold: bool) -> List[dict]:
    """One training row per utterance with its session's earlier turns as context: its first
    window (a window shorter than the utterance truncates, as run_train.py), marked has_gold 1 or 0
    (an augmented copy, which learns from teachers alone)."""
    rows = [task.labelled_rows(u, task.encode(u.text, h))[0] for u, h in zip(utterances, histories)]
    return [{**row, "has_gold": float(has_gold)} for row in rows]


@dataclass
class Ensemble:
    """Teachers whose mean probabilities at `temperature` a model learns from, besides its gold
    labels (weighted `alpha`; the teachers 1 - alpha, x T^2: model.JointLoss)."""

    teacher_dirs: Sequence[str]
    temperature: float = 2.0
    alpha: float = 0.5
    cache_dir: str = os.path.join("output", "teacher-logits")
    threads: int = 0
    augment_copies: int = 0
    seed: int = 42

    def __post_init__(self):
        if not self.teacher_dirs:
            raise ValueError("an ensemble needs at least one teacher directory")
        if self.temperature <= 0 or not 0.0 <= self.alpha < 1.0 or self.augment_copies < 0:
            raise ValueError(f"distillation temperature {self.temperature} (must be > 0), alpha {self.alpha} (must be in [0, 1)) "
                             f"and augmented copies {self.augment_copies} (must be >= 0)")

    def augmented_rows(self, train: Sequence[Utterance], task: Task) -> List[dict]:
        """`augment_copies` seeded, slot-preserving copies of every training utterance
        (data/augment.py), each as one row with its source's session context and has_gold 0:
        what the ensemble labels and the model learns from the ensemble alone."""
        if not self.augment_copies:
            return []
        histories = task.corpus_histories(train)
        augmented = augment_corpus(train, self.augment_copies, self.seed)
        logger.info(f"augmentation: {len(augmented)} rows from {len(train)} training utterances x {self.augment_copies}, "
                    "labelled by the ensemble alone")
        return session_rows([u for _, u in augmented], [histories[i] for i, _ in augmented], task, has_gold=False)

    def add_targets(self, rows: List[dict], task: Task) -> None:
        """Adds "ensemble_intent" [intents] and "ensemble_slots" [utterance tokens, tags] (the
        teachers' mean probabilities) to every row, in place."""
        intent = slots = 0.0
        digest = rows_digest(rows)  # once, not once per teacher
        for teacher_dir in self.teacher_dirs:
            logits = teacher_logits(teacher_dir, rows, task, self.threads, self.cache_dir, digest)
            intent = intent + softmax64(logits["intent"], self.temperature).astype("float32") / len(self.teacher_dirs)
            slots = slots + softmax64(logits["slots"], self.temperature).astype("float32") / len(self.teacher_dirs)
        start = 0
        for row, row_intent in zip(rows, intent):
            n = sum(tag != task.labels.pad_slot_id for tag in row["slot_labels"])
            row["ensemble_intent"], row["ensemble_slots"] = row_intent, slots[start : start + n]
            start += n
        gold = np.array([row["intent_label"] for row in rows])
        labelled = np.array([row.get("has_gold", 1.0) == 1.0 for row in rows])  # not the augmented copies
        logger.info(f"ensemble of {len(self.teacher_dirs)} teachers at T={self.temperature}: its intent is the gold one on "
                    f"{(intent.argmax(1) == gold)[labelled].mean():.2%} of the {labelled.sum()} labelled training rows")


def ensemble_predictor(model_dirs: Sequence[str], backend: str = "onnxruntime", threads: int = 0) -> Predictor:
    """One Predictor over exported models that read rows alike: the mean of their intent
    log-probabilities, of their slot emissions and of their CRF transitions (a geometric mean of
    their distributions), decoded as one model with the first one's calibration. Each utterance
    costs every member's run: a measure of what distillation could reach, not a model to ship."""
    members = [open_predictor(d, backend, threads, warn_uncalibrated=False) for d in model_dirs]
    first = members[0]
    for d, member in zip(model_dirs[1:], members[1:]):
        check_reads_like(member.task, first.task, d)
    transitions = [m.exported.slot_transitions for m in members]
    if any(t is None for t in transitions) and not all(t is None for t in transitions):
        raise ValueError(f"{', '.join(model_dirs)}: some have a CRF slot head and some not; they cannot be averaged")

    def logits_fn(input_ids):
        outputs = [m.logits_fn(input_ids) for m in members]
        return np.mean([np.log(softmax64(i, 1.0)) for i, _ in outputs], 0), np.mean([s for _, s in outputs], 0)

    return Predictor(first.task, logits_fn, first.exported.config["max_utterance_tokens"], first.exported.calibration,
                     transitions=None if transitions[0] is None else np.mean(transitions, 0))
