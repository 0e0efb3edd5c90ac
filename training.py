"""Paddle-side steps shared by run_train.py, compression and run_distill.py: CPU setup, logging,
the Trainer over a Task and the dynamic graph as a logits function (exporting.py writes exports)."""
import hashlib
import logging
import os
import sys
from typing import List, Optional, Sequence

import numpy as np
import paddle
from paddle.io import DistributedBatchSampler
from paddlenlp.datasets import MapDataset
from paddlenlp.trainer import Trainer, TrainerCallback
from paddlenlp.transformers import ErnieTokenizer
from paddlenlp.utils.log import logger as paddlenlp_logger

import export_format
from data.corpus import Utterance
from model import JointLoss, offline_hint, slot_transitions, unwrap
from decoding import Decoder
from predictor import LogitsFn, merge_windows, score
from task import CharTokenizer, Task
from teachers import Ensemble
from utils import cpu_threads, file_sha256, load_json, pad_batch, pickle_globals, prefer_avx2_mkl, save_json

logger = logging.getLogger("ernie_tiny_slu")


def configure_cpu(threads: int) -> int:
    """MKL's AVX2 kernels on AMD CPUs and `threads` math threads (0 = one per core), returned.
    The environment may export OMP_NUM_THREADS=1, which halves matmul speed on 2 cores, so the
    scripts always call this with an explicit flag and log the result."""
    prefer_avx2_mkl()
    n = cpu_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(n)
    paddle.set_num_threads(n) if hasattr(paddle, "set_num_threads") else paddle.base.core.set_num_threads(n)
    return n


def setup_logging(output_dir: str, log_name: str = "train.log", to_file: bool = True) -> None:
    """This project's and PaddleNLP's log lines to stdout and, when `to_file` (the process that
    writes the outputs: rank 0 under paddle.distributed.launch), to <output_dir>/<log_name>."""
    if to_file:
        os.makedirs(output_dir, exist_ok=True)
        handler = logging.FileHandler(os.path.join(output_dir, log_name), encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for log in (logger, paddlenlp_logger.logger):
            log.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # paddlenlp configures the root logger too; print once
    logger.addHandler(logging.StreamHandler(sys.stdout))


def launched_processes() -> int:
    """How many processes paddle.distributed.launch started for this job (1 without it)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def refuse_launcher(job: str) -> None:
    """Jobs that run in one process (compression, distillation) stop before any work when
    started by paddle.distributed.launch with several processes, instead of running N copies
    that write the same files."""
    if launched_processes() > 1:
        raise SystemExit(f"{job} runs in a single process: start it without paddle.distributed.launch "
                         f"(this one started {launched_processes()} processes); only training (run_train.py --do_train) "
                         "is data-parallel")


def weights_digest(model) -> str:
    """sha256 of every parameter, in name order: equal on all ranks of a data-parallel run."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(parameter.numpy()).tobytes())
    return digest.hexdigest()


def pretrained_tokenizer(name_or_dir: str) -> CharTokenizer:
    """The character tokenizer over a pretrained model's vocabulary (local vocab.txt or hub)."""
    vocab_file = os.path.join(name_or_dir, export_format.VOCAB_FILE)
    if os.path.isfile(vocab_file):
        return CharTokenizer.from_file(vocab_file)
    try:
        return CharTokenizer(ErnieTokenizer.from_pretrained(name_or_dir).vocab.idx_to_token)
    except OSError as e:
        raise OSError(offline_hint(name_or_dir)) from e


# ----------------------------------------------------------------------------- Trainer


def make_collator(pad_id: int, pad_slot_id: int):
    """Rows -> padded arrays; rows with an ensemble's targets (teachers.py) add "ensemble_intent"
    [B, intents] and "ensemble_slots" [B, S, tags], zero where a row has no slot tag (run_distill.py's
    rows carry their teacher's raw logits as "teacher_*" and pad those itself); batches with
    augmented rows add "has_gold" [B] (0 for those rows)."""
    def collate(rows):
        batch = {
            "input_ids": pad_batch([r["input_ids"] for r in rows], pad_id),
            "intent_label": np.array([r["intent_label"] for r in rows], dtype="int64"),
            "slot_labels": pad_batch([r["slot_labels"] for r in rows], pad_slot_id),
        }
        if "ensemble_intent" in rows[0]:
            batch["ensemble_intent"] = np.stack([r["ensemble_intent"] for r in rows])
            slots = np.zeros(batch["slot_labels"].shape + rows[0]["ensemble_slots"].shape[1:], dtype="float32")
            tagged = batch["slot_labels"] != pad_slot_id
            for i, r in enumerate(rows):
                slots[i, tagged[i]] = r["ensemble_slots"]
            batch["ensemble_slots"] = slots
        if any("has_gold" in r for r in rows):  # a row without the key is a gold one
            batch["has_gold"] = np.array([r.get("has_gold", 1.0) for r in rows], dtype="float32")
        return batch

    return collate


class LengthBucketSampler(DistributedBatchSampler):
    """Training batches of rows of similar length, so that a batch is padded to about its own
    rows' length and training cost follows real lengths, not the longest utterance. Each epoch:
    shuffle (seed + epoch), sort pools of `pool_batches` global batches by length, cut them into
    global batches of batch_size x num_replicas rows, shuffle their order. Rank r of n takes the
    r-th contiguous slice of every global batch, so the sequence of global batches is the same
    for any number of ranks with the same global batch size (1 process x 64 = 2 processes x 32)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 pool_batches: int = 32):
        super().__init__(lengths, batch_size, num_replicas, rank, shuffle=True)
        self.lengths, self.seed = np.asarray(lengths), seed
        self.global_batch = batch_size * num_replicas
        self.pool = pool_batches * self.global_batch

    def global_batches(self, epoch: int) -> List[List[int]]:
        rng = np.random.RandomState(self.seed + epoch)
        order = rng.permutation(len(self.lengths))
        batches = []
        for p in range(0, len(order), self.pool):
            pool = order[p : p + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[b : b + self.global_batch].tolist() for b in range(0, len(pool), self.global_batch)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def rank_slice(self, batch: List[int]) -> List[int]:
        """This rank's rows of a global batch. Only the epoch's last batch can be short: it is
        split as evenly as it goes (sizes differ by at most one); a rank left without a row (fewer
        rows than ranks) repeats the batch's first row, so that every rank takes every step."""
        if len(batch) == self.global_batch:
            return batch[self.local_rank * self.batch_size : (self.local_rank + 1) * self.batch_size]
        pieces = np.array_split(np.asarray(batch), self.nranks)
        return pieces[self.local_rank].tolist() or batch[:1]

    def __iter__(self):
        for batch in self.global_batches(self.epoch):
            yield self.rank_slice(batch)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.global_batch)  # pools hold whole batches: only the last is short


# Written last into a checkpoint: the sha256 of each of its files. PaddleNLP writes a checkpoint's
# files one by one in place; a run killed meanwhile leaves a directory without it.
CHECKPOINT_MANIFEST = "checkpoint_complete.json"
# The Trainer's state is pickled (paddle.save): resuming unpickles the checkpoint's *.pdparams,
# *.pdopt and *.pth (and the best checkpoint's weights at the end). What they may import: numpy
# arrays and paddle's CPU generator state. Anything else (os.system in a crafted file) is refused
# before a byte is unpickled.
RESUMED_PICKLES = (".pdparams", ".pdopt", ".pth")
CHECKPOINT_PICKLE_GLOBALS = {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype", "collections.OrderedDict",
                             "paddle.base.libpaddle.GeneratorState"}


def write_checkpoint_manifest(checkpoint: str, global_step: int) -> None:
    files = sorted(f for f in os.listdir(checkpoint) if f != CHECKPOINT_MANIFEST and os.path.isfile(os.path.join(checkpoint, f)))
    save_json(os.path.join(checkpoint, CHECKPOINT_MANIFEST),
              {"global_step": global_step, "sha256": {f: file_sha256(os.path.join(checkpoint, f)) for f in files}})


class TaskFilesInCheckpoints(TrainerCallback):
    """vocab.txt, the label files and the weights as model.safetensors beside every checkpoint's
    Trainer files, so that a checkpoint can be exported, compressed or fine-tuned on its own
    (--model_name_or_path .../checkpoint-N) without unpickling anything, then the manifest. The
    Trainer's own model_state.pdparams stays: it reloads the best checkpoint and resumes from it."""

    def __init__(self, task: Task):
        self.task = task

    def on_save(self, args, state, control, model=None, **kwargs):
        if args.should_save:
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            export_format.write_task_files(checkpoint, self.task)
            unwrap(model).save_pretrained(checkpoint, safe_serialization=True)
            write_checkpoint_manifest(checkpoint, state.global_step)


def check_checkpoint(checkpoint: str) -> None:
    """Refuse to resume from a checkpoint that was not finished (the run was killed while saving
    it), whose files changed since, or whose pickles would import anything but arrays: ValueError
    naming what is wrong."""
    manifest = os.path.join(checkpoint, CHECKPOINT_MANIFEST)
    if not os.path.isfile(manifest):
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: no {CHECKPOINT_MANIFEST}, so the checkpoint was not finished "
                         "(the run stopped while saving it) or an older version wrote it: resume from an earlier checkpoint")
    for name, digest in load_json(manifest)["sha256"].items():
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path) or file_sha256(path) != digest:
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: {name} is missing or differs from when it was saved")
    state_file = os.path.join(checkpoint, "trainer_state.json")
    best = load_json(state_file).get("best_model_checkpoint") if os.path.isfile(state_file) else None
    for directory in [checkpoint] + ([best] if best and os.path.isdir(best) else []):  # the best one is loaded at the end
        for name in sorted(os.listdir(directory)):
            if name.endswith(RESUMED_PICKLES):
                path = os.path.join(directory, name)
                try:
                    unexpected = sorted(pickle_globals(path) - CHECKPOINT_PICKLE_GLOBALS)
                except Exception as e:  # pickletools on bytes that are no pickle
                    raise ValueError(f"--resume_from_checkpoint {checkpoint}: {path} is not a readable pickle ({e})") from None
                if unexpected:
                    raise ValueError(f"--resume_from_checkpoint {checkpoint}: {path} would import {unexpected} when unpickled; "
                                     "a checkpoint of this project holds arrays only: refused before loading it")


class BucketTrainer(Trainer):
    """PaddleNLP's Trainer with length-bucketed training batches (LengthBucketSampler)."""

    def _get_train_sampler(self):
        lengths = [len(row["input_ids"]) for row in self.train_dataset]
        return LengthBucketSampler(lengths, self.args.per_device_train_batch_size, self.args.seed,
                                   self.args.dataset_world_size, self.args.dataset_rank)


class SluTrainer(BucketTrainer):
    """The task's Trainer, whose loss also takes an ensemble's targets when the batch carries
    them (training rows with --teacher_dirs)."""

    def compute_loss(self, model, inputs, return_outputs=False):
        targets = {k: inputs.pop(k) for k in ("ensemble_intent", "ensemble_slots", "has_gold") if k in inputs}
        labels = tuple(inputs.pop(name) for name in self.args.label_names)
        outputs = model(**inputs)
        loss = self.criterion(outputs, labels, **targets)
        return (loss, (loss, outputs)) if return_outputs else loss


def build_trainer(model, task: Task, train: List[Utterance], dev: List[Utterance], training_args,
                  slot_loss_weight: float = 1.0, intent_label_smoothing: float = 0.0, ensemble: Optional[Ensemble] = None) -> Trainer:
    """The Trainer over `task`: every training utterance with its session context, as one row
    (the first window: an utterance longer than the window is truncated, and counted in the log),
    every window of dev, metrics on whole dev utterances. With an `ensemble` of teachers the
    training rows carry its targets and the loss learns from them too, on the ensemble's augmented
    copies of the training utterances from them alone (teachers.py)."""
    train_rows, truncated = [], 0
    for utt, enc in zip(train, task.encode_corpus(train)):
        train_rows.append(task.labelled_rows(utt, enc)[0])
        truncated += len(enc.windows) > 1
    if ensemble is not None:
        train_rows += ensemble.augmented_rows(train, task)
        ensemble.add_targets(train_rows, task)
    lengths = [len(row["input_ids"]) for row in train_rows]
    logger.info(f"max_seq_length {task.max_seq_length}: {truncated} of {len(train)} training utterances truncated "
                f"(evaluation scores whole utterances); context_turns {task.context_turns}, max_context_tokens "
                f"{task.max_context_tokens}; training rows {np.mean(lengths):.1f} tokens on average, at most {max(lengths)}")
    dev_encoded = task.encode_corpus(dev)

    def compute_metrics(p):
        intent_logits, slot_logits = p.predictions
        decoder = Decoder.for_task(task, transitions=slot_transitions(model))  # a CRF's transitions as trained so far
        metrics = score(dev, merge_windows(intent_logits, slot_logits, dev_encoded, decoder), task)
        metrics.pop("per_intent")  # the Trainer logs scalars only
        return metrics

    return SluTrainer(
        model=model,
        args=training_args,
        criterion=JointLoss(task.labels.pad_slot_id, slot_loss_weight, getattr(model, "slot_transitions", None),
                            intent_label_smoothing, *((ensemble.alpha, ensemble.temperature) if ensemble else ())),
        train_dataset=MapDataset(train_rows),
        eval_dataset=MapDataset([row for utt, enc in zip(dev, dev_encoded) for row in task.labelled_rows(utt, enc)]),
        data_collator=make_collator(task.tokenizer.pad_id, task.labels.pad_slot_id),
        compute_metrics=compute_metrics,
        callbacks=[TaskFilesInCheckpoints(task)],
    )


# ----------------------------------------------------------------------------- the dynamic graph


def dynamic_logits_fn(model) -> LogitsFn:
    """predictor.LogitsFn over a dygraph model (fp32, DynaBERT or QAT-wrapped), in eval mode."""
    model.eval()

    def logits_fn(input_ids):
        with paddle.no_grad():
            intent_logits, slot_logits = model(paddle.to_tensor(input_ids))
        return intent_logits.numpy(), slot_logits.numpy()

    return logits_fn
