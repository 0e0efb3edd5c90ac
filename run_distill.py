"""Distil the fine-tuned ERNIE teacher into a small Bi-LSTM student: PaddleNLP's ERNIE -> Bi-LSTM
recipe (jieba data augmentation, MSE on logits) and vanilla KD, applied to joint intent + slots.

    python run_distill.py --teacher_dir output/nlpcc2018-nano-scratch/infer_model --data_dir data/prepared/nlpcc2018 \
        --output_dir output/nlpcc2018-distill \
        --compressed_dir output/nlpcc2018-nano-scratch-compress/compress/stages/width_mult_0.75-quant_emb

1. Student alone: the Bi-LSTM (model.BiLSTMJoint, the teacher's character vocabulary) trained on
   the gold labels of the training split.
2. --augment_copies seeded, slot-preserving copies of every training utterance (data/augment.py:
   word masking, same part-of-speech / same slot-type substitution, n-gram sampling).
3. The teacher (an exported model, run by Paddle Inference) gives its intent and slot logits for
   the gold and augmented rows; they are cached in --teacher_logits_file and reused while the rows
   are the same.
4. Distilled student: trained on gold + augmented rows against the teacher's logits
   (--objective kd: soft cross-entropy at --temperature plus --alpha x gold cross-entropy on the
   gold rows, augmented rows never using gold labels; or mse: squared error on logits).
5. Both students are exported (<output_dir>/student_alone/infer_model, .../distilled/infer_model:
   run_eval.py and benchmarks/inference.py take them like any stage), and distill_report.json/.md
   compare teacher, compressed ERNIE (--compressed_dir), student alone and distilled student on
   the test split: accuracy, size and batch-1 latency per backend, measured in this run.
"""
import copy
import os
import time
import zipfile
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import paddle
from paddlenlp.trainer import PdArgumentParser

import export_format
from backends import BACKENDS, check_backend, model_size_mb, open_predictor
from data.augment import augment_corpus
from data.corpus import read_corpus, read_split
from exporting import export
from latency import measure_in_subprocess
from model import BiLSTMJoint, DistillLoss, JointLoss
from predictor import Predictor
from task import Task
from teachers import session_rows
from training import (
    configure_cpu,
    dynamic_logits_fn,
    logger,
    make_collator,
    refuse_launcher,
    setup_logging,
)
from utils import (
    PROJECT_DIR,
    atomic_path,
    file_sha256,
    markdown_table,
    pad_batch,
    save_json,
    write_text,
)


@dataclass
class DistillArguments:
    teacher_dir: str = field(default="output/demo/infer_model", metadata={"help": "The teacher: an exported fp32 model directory."})
    data_dir: str = field(
        default=os.path.join(PROJECT_DIR, "data", "prepared"), metadata={"help": "train/dev/test.txt of prepare_data.py."}
    )
    output_dir: str = field(default="output/distill", metadata={"help": "Students, teacher logits, log and report."})
    compressed_dir: Optional[str] = field(default=None, metadata={"help": "A compressed ERNIE stage to compare with (optional)."})
    objective: str = field(
        default="kd", metadata={"help": "kd (soft cross-entropy + gold; measured best here) or mse (logits, the tutorial's choice)."}
    )
    temperature: float = field(default=2.0, metadata={"help": "kd: softmax temperature T (the soft term is scaled by T^2)."})
    alpha: float = field(default=0.5, metadata={"help": "kd: weight of the gold cross-entropy; 1 - alpha on the soft term."})
    augment_copies: int = field(default=4, metadata={"help": "Augmented copies drawn per training utterance."})
    p_mask: float = field(default=0.1, metadata={"help": "Probability of masking a word."})
    p_substitute: float = field(default=0.1, metadata={"help": "Probability of replacing a word by one of its part of speech / slot type."})
    p_ngram: float = field(default=0.25, metadata={"help": "Probability of keeping only a random run of whole words."})
    teacher_logits_file: Optional[str] = field(
        default=None, metadata={"help": "Cache of the teacher's logits (default <output_dir>/teacher_logits.npz)."}
    )
    embedding_dim: int = field(default=128, metadata={"help": "Student character embedding size."})
    hidden_size: int = field(default=128, metadata={"help": "Student LSTM hidden size per direction."})
    dropout: float = field(default=0.1, metadata={"help": "Student dropout."})
    num_train_epochs: int = field(default=10, metadata={"help": "Epochs for each student (best dev epoch kept)."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, shuffling and augmentation."})
    cpu_threads: int = field(default=0, metadata={"help": "CPU math threads; 0 = one per core."})
    latency_backends: str = field(default="paddle-inference,fastdeploy-ort",
                                  metadata={"help": f"Backends of the latency comparison, comma-separated, from {', '.join(BACKENDS)}."})
    latency_utterances: int = field(default=1000, metadata={"help": "Test utterances timed at batch 1 per model."})


def teacher_logits(teacher: Predictor, teacher_dir: str, rows: List[dict], cache: str) -> None:
    """Adds the teacher's logits to every row; reuses `cache` when it was made by the same teacher
    (sha256 of its graph and weights) for the same rows, and recomputes it otherwise, or when it
    cannot be read (a cut file)."""
    ids = [np.asarray(r["input_ids"]) for r in rows]
    flat_ids = np.concatenate(ids)
    fingerprint = ",".join(file_sha256(os.path.join(teacher_dir, name)) for name in (export_format.GRAPH_FILE, export_format.PARAMS_FILE))
    cached = None
    if os.path.isfile(cache):
        try:
            with np.load(cache) as saved:
                if (str(saved["teacher"]) == fingerprint and np.array_equal(saved["ids"], flat_ids)
                        and np.array_equal(saved["lengths"], [len(i) for i in ids])):
                    cached = saved["intent"], saved["slots"]
                    logger.info(f"teacher logits: reusing {cache}")
                else:
                    logger.info(f"teacher logits: {cache} was made by another teacher or for other rows; recomputing")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            logger.warning(f"teacher logits: {cache} cannot be read ({type(e).__name__}: {e}); recomputing")
    if cached is None:
        start, intent, slots = time.time(), [], []
        for b in range(0, len(ids), 256):
            batch = ids[b : b + 256]
            i_logits, s_logits = teacher.logits_fn(pad_batch(batch, teacher.task.tokenizer.pad_id))
            intent.append(i_logits)
            slots += [s_logits[k, : len(row)] for k, row in enumerate(batch)]
        cached = np.concatenate(intent), np.concatenate(slots)
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, teacher=fingerprint, ids=flat_ids, lengths=[len(i) for i in ids], intent=cached[0], slots=cached[1])
        logger.info(f"teacher logits for {len(rows)} rows in {time.time() - start:.0f} s, cached in {cache}")
    intent, slots = cached
    offsets = np.cumsum([0] + [len(i) for i in ids])
    for k, row in enumerate(rows):
        row["teacher_intent"], row["teacher_slots"] = intent[k], slots[offsets[k] : offsets[k + 1]]


def make_batch(rows, task: Task):
    """The Trainer's training batch (ids, intent, slot tags) plus what distillation adds."""
    tokenizer, labels = task.tokenizer, task.labels
    batch = make_collator(tokenizer.pad_id, labels.pad_slot_id)(rows)
    ids = batch["input_ids"]
    # the utterance's characters: after [CLS], before the first [SEP] (not the context, not padding)
    batch["token_mask"] = ((np.cumsum(ids == tokenizer.sep_id, axis=1) == 0) & (ids != tokenizer.cls_id)).astype("float32")
    batch = {name: paddle.to_tensor(value) for name, value in batch.items()}
    if "teacher_intent" in rows[0]:
        slots = np.zeros(ids.shape + (len(labels.slot_tags),), dtype="float32")
        for k, r in enumerate(rows):
            slots[k, : len(r["teacher_slots"])] = r["teacher_slots"]
        batch["teacher_intent"] = paddle.to_tensor(np.stack([r["teacher_intent"] for r in rows]).astype("float32"))
        batch["teacher_slots"] = paddle.to_tensor(slots)
    return batch


def fit(name, model, rows, loss_of_batch, dev, task: Task, args):
    """AdamW over shuffled rows; the epoch with the best dev sentence accuracy is kept."""
    optimizer = paddle.optimizer.AdamW(learning_rate=args.learning_rate, parameters=model.parameters())
    rng, best = np.random.RandomState(args.seed), (-1.0, None, 0)
    for epoch in range(1, args.num_train_epochs + 1):
        start, model_losses = time.time(), []
        model.train()
        order = rng.permutation(len(rows))
        for b in range(0, len(order), args.batch_size):
            loss = loss_of_batch(model, make_batch([rows[i] for i in order[b : b + args.batch_size]], task))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            model_losses.append(float(loss))
        dev_metrics = Predictor(task, dynamic_logits_fn(model)).evaluate(dev)
        logger.info(f"{name} epoch {epoch}/{args.num_train_epochs}: loss {np.mean(model_losses):.4f}, dev sentence_acc "
                    f"{dev_metrics['sentence_acc']:.4f}, intent_acc {dev_metrics['intent_acc']:.4f}, slot_f1 "
                    f"{dev_metrics['slot_f1']:.4f} ({time.time() - start:.0f} s, {len(rows)} rows)")
        if dev_metrics["sentence_acc"] > best[0]:
            best = (dev_metrics["sentence_acc"], copy.deepcopy(model.state_dict()), epoch)
    model.set_state_dict(best[1])
    logger.info(f"{name}: best dev sentence_acc {best[0]:.4f} at epoch {best[2]}")
    return model


def export_student(model, task: Task, directory: str, dev, threads: int) -> str:
    model.save(directory)
    return export(model, task, os.path.join(directory, "infer_model"), {"architecture": "bilstm-student", "from_scratch": True},
                  dev, threads).directory


def compare(models: dict, test_file: str, args) -> dict:
    """Test metrics (Paddle Inference) and batch-1 latency per backend (a fresh process each)."""
    rows = {}
    for name, directory in models.items():
        predictor = open_predictor(directory, "paddle-inference", args.cpu_threads)
        metrics = predictor.evaluate(read_corpus(test_file, predictor.task.labels))
        cells = {backend: measure_in_subprocess(directory, backend, 1, test_file, args.latency_utterances)
                 for backend in args.latency_backends.split(",")}
        rows[name] = {"dir": directory, "size_mb": model_size_mb(directory),
                      **{k: metrics[k] for k in ("intent_acc", "slot_f1", "sentence_acc", "sentence_acc_ref")},
                      "latency_p50_ms": {b: c.get("latency_ms", {}).get("p50") for b, c in cells.items()},
                      "latency_error": {b: c["error"] for b, c in cells.items() if "error" in c}}
        logger.info(f"{name}: {rows[name]}")
    return rows


def write_report(report: dict, output_dir: str) -> None:
    save_json(os.path.join(output_dir, "distill_report.json"), report)
    header = ["model", "intent acc", "slot F1", "sentence acc", "sentence acc (ref)", "size (MB)"]
    header += [f"batch-1 p50 {b} (ms)" for b in report["latency_backends"]]
    rows = [[name, f"{100 * r['intent_acc']:.2f}", f"{100 * r['slot_f1']:.2f}", f"{100 * r['sentence_acc']:.2f}",
             f"{100 * r['sentence_acc_ref']:.2f}", f"{r['size_mb']:.2f}"]
            + [f"{r['latency_p50_ms'][b]:.3f}" if r["latency_p50_ms"][b] is not None else "cannot run" for b in report["latency_backends"]]
            for name, r in report["models"].items()]
    lines = [f"objective {report['objective']}, {report['augmented_rows']} augmented rows; batch-1 latency: "
             f"1 thread, {report['latency_utterances']} test utterances", ""] + markdown_table(header, rows)
    lines += ["", f"Share of the teacher - student-alone sentence-accuracy gap recovered by distillation: "
                  f"{100 * report['gap_recovered']:.1f} %" if report["gap_recovered"] is not None else "",
              "Teacher / distilled student batch-1 latency: "
              + ", ".join(f"{ratio:.2f}x on {b}" for b, ratio in report["latency_ratio"].items() if ratio)]
    lines += [f"{name} cannot run on {b}: {error}" for name, r in report["models"].items() for b, error in r["latency_error"].items()]
    write_text(os.path.join(output_dir, "distill_report.md"), "\n".join(lines) + "\n")
    logger.info("distillation report:\n" + "\n".join(lines))


def main(argv=None):
    (args,) = PdArgumentParser((DistillArguments,)).parse_args_into_dataclasses(args=argv)
    for backend in args.latency_backends.split(","):
        check_backend(backend)
    refuse_launcher("distillation (run_distill.py)")
    setup_logging(args.output_dir, "distill.log")
    threads = configure_cpu(args.cpu_threads)
    paddle.seed(args.seed)
    teacher = open_predictor(args.teacher_dir, "paddle-inference", threads)
    task = teacher.task
    train, dev = (read_split(args.data_dir, name, task.labels) for name in ("train", "dev"))
    logger.info(f"teacher {args.teacher_dir}; data {args.data_dir}: train {len(train)}, dev {len(dev)}; CPU threads {threads}")
    new_student = lambda: BiLSTMJoint(len(task.tokenizer), len(task.labels.intents), len(task.labels.slot_tags), task.tokenizer.pad_id,
                                      args.embedding_dim, args.hidden_size, args.dropout)

    histories = task.corpus_histories(train)
    gold = session_rows(train, histories, task, has_gold=True)
    joint_loss = JointLoss(task.labels.pad_slot_id)
    paddle.seed(args.seed)
    alone = fit("student alone", new_student(), gold, lambda m, b: joint_loss(m(b["input_ids"]), (b["intent_label"], b["slot_labels"])),
                dev, task, args)

    augmented = augment_corpus(train, args.augment_copies, args.seed, p_mask=args.p_mask,
                               p_substitute=args.p_substitute, p_ngram=args.p_ngram)
    logger.info(f"augmentation: {len(augmented)} new rows from {len(train)} training utterances x {args.augment_copies}")
    # an augmented copy reads the context of its source utterance
    rows = gold + session_rows([u for _, u in augmented], [histories[i] for i, _ in augmented], task, has_gold=False)
    teacher_logits(teacher, args.teacher_dir, rows, args.teacher_logits_file or os.path.join(args.output_dir, "teacher_logits.npz"))
    distill_loss = DistillLoss(task.labels.pad_slot_id, args.objective, args.temperature, args.alpha)
    paddle.seed(args.seed)
    distilled = fit("distilled student", new_student(), rows,
                    lambda m, b: distill_loss(m(b["input_ids"]), (b["teacher_intent"], b["teacher_slots"]), b["token_mask"],
                                              (b["intent_label"], b["slot_labels"], b["has_gold"])),
                    dev, task, args)

    models = {"teacher (fp32 ERNIE)": args.teacher_dir}
    if args.compressed_dir:
        models["compressed ERNIE"] = args.compressed_dir
    models["student alone"] = export_student(alone, task, os.path.join(args.output_dir, "student_alone"), dev, threads)
    models["distilled student"] = export_student(distilled, task, os.path.join(args.output_dir, "distilled"), dev, threads)
    results = compare(models, os.path.join(args.data_dir, "test.txt"), args)
    t, a, d = (results[k] for k in ("teacher (fp32 ERNIE)", "student alone", "distilled student"))
    gap = t["sentence_acc"] - a["sentence_acc"]
    report = {
        "objective": args.objective,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "augment_copies": args.augment_copies,
        "augmented_rows": len(augmented),
        "latency_backends": args.latency_backends.split(","),
        "latency_utterances": args.latency_utterances,
        "models": results,
        "gap_recovered": (d["sentence_acc"] - a["sentence_acc"]) / gap if gap > 0 else None,
        "latency_ratio": {
            b: t["latency_p50_ms"][b] / d["latency_p50_ms"][b] if t["latency_p50_ms"][b] and d["latency_p50_ms"][b] else None
            for b in args.latency_backends.split(",")
        },
    }
    write_report(report, args.output_dir)
    return report


if __name__ == "__main__":
    main()
