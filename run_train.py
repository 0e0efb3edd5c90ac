"""Fine-tune (or train from scratch) the joint ERNIE 3.0 Tiny intent + slot model, evaluate it on
whole utterances, and export a self-contained static graph for Paddle Inference / FastDeploy.

    python data/prepare_data.py --output_dir data/prepared
    python run_train.py --data_dir data/prepared --output_dir output/nano \
        --model_name_or_path ernie-3.0-tiny-nano-v2-zh --do_train --do_eval --do_export

Add --from_scratch to train the same architecture from random initialisation with a vocabulary
built from the training data (no pretrained weights needed, e.g. offline).
"""
import utils  # first: it configures the CPU math library before paddle loads it

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List

import numpy as np
import paddle
from paddlenlp.datasets import MapDataset
from paddlenlp.trainer import CompressionArguments, PdArgumentParser, Trainer
from paddlenlp.utils.log import logger as paddlenlp_logger

from model import JointErnie, JointLoss, build_from_scratch, load_pretrained, pretrained_tokenizer
from utils import INFERENCE_CONFIG, CharTokenizer, LabelMaps, logger


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="ernie-3.0-tiny-nano-v2-zh",
        metadata={"help": "ERNIE 3.0 Tiny hub name (ernie-3.0-tiny-{nano,micro,mini,medium,base}-v2-zh, pico...) "
                  "or a local directory saved with save_pretrained. With --from_scratch: the architecture to build."},
    )
    from_scratch: bool = field(
        default=False,
        metadata={"help": "Random initialisation with the architecture of --model_name_or_path and a character "
                  "vocabulary built from the training data. Needs no download; far below pretrained accuracy."},
    )
    max_seq_length: int = field(
        default=16,
        metadata={"help": "Tokens per model window, [CLS] and [SEP] included. Training truncates longer utterances "
                  "(the count is logged); evaluation and prediction cover them with consecutive windows."},
    )
    slot_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the slot loss next to the intent loss."})
    cpu_threads: int = field(
        default=0, metadata={"help": "CPU math threads (OpenMP/MKL); 0 = one per core. Overrides OMP_NUM_THREADS."}
    )


@dataclass
class DataArguments:
    data_dir: str = field(
        default=os.path.join(utils.DATA_DIR, "prepared"),
        metadata={"help": "Directory with train.txt, dev.txt, test.txt written by data/prepare_data.py."},
    )
    intent_label_file: str = field(default=utils.INTENT_LABEL_FILE, metadata={"help": "One intent per line."})
    slot_label_file: str = field(default=utils.SLOT_LABEL_FILE, metadata={"help": "PAD, O and B-/I- tags, one per line."})


@dataclass
class TrainingArguments(CompressionArguments):
    """PaddleNLP's training + compression arguments with this task's defaults: evaluate and keep
    the best checkpoint every epoch by dev sentence accuracy."""

    output_dir: str = field(default="output", metadata={"help": "Checkpoints, logs, metrics and infer_model/."})
    evaluation_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on dev: no, steps, epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint (match --evaluation_strategy)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Reload the best dev checkpoint after training."})
    metric_for_best_model: str = field(default="sentence_acc", metadata={"help": "Dev metric that picks the best checkpoint."})
    save_total_limit: int = field(default=1, metadata={"help": "Checkpoints kept besides the best one."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per device."})
    logging_steps: int = field(default=50, metadata={"help": "Log loss and speed every N steps."})


def read_split(data_dir: str, name: str, labels: LabelMaps) -> List[utils.Utterance]:
    path = os.path.join(data_dir, f"{name}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python data/prepare_data.py --output_dir {data_dir}` first")
    return utils.read_corpus(path, labels)


def setup_logging(output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    handler = logging.FileHandler(os.path.join(output_dir, "train.log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for log in (logger, paddlenlp_logger.logger):
        log.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # paddlenlp configures the root logger too; print once
    logger.addHandler(logging.StreamHandler(sys.stdout))


def make_collator(pad_id: int, pad_slot_id: int):
    def collate(rows):
        return {
            "input_ids": utils.pad_batch([r["input_ids"] for r in rows], pad_id),
            "intent_label": np.array([r["intent_label"] for r in rows], dtype="int64"),
            "slot_labels": utils.pad_batch([r["slot_labels"] for r in rows], pad_slot_id),
        }

    return collate


def make_compute_metrics(utterances, windows, labels: LabelMaps, slotless_intents):
    """Trainer metrics on whole utterances: the eval dataset holds every window of every utterance
    in order, so its logits are merged back per utterance before scoring."""

    def compute_metrics(p):
        intent_logits, slot_logits = p.predictions
        preds = utils.merge_windows(intent_logits, slot_logits, windows)
        metrics = utils.score_predictions(utterances, preds, labels, slotless_intents)
        metrics.pop("per_intent")  # the Trainer logs scalars only
        return metrics

    return compute_metrics


def export_static(model: JointErnie, tokenizer: CharTokenizer, labels: LabelMaps, export_dir: str, config: dict) -> str:
    """model.pdmodel/.pdiparams with dynamic batch and sequence length, plus everything
    inference needs (vocab, labels, max length, lenient-metric intents) beside them."""
    model.eval()
    static = paddle.jit.to_static(
        model, input_spec=[paddle.static.InputSpec([None, None], "int64", "input_ids")], full_graph=True
    )
    paddle.jit.save(static, os.path.join(export_dir, "model"))
    tokenizer.save(export_dir)
    labels.save(export_dir)
    utils.save_json(os.path.join(export_dir, INFERENCE_CONFIG), config)
    return export_dir


def main(argv=None):
    parser = PdArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.label_names = ["intent_label", "slot_labels"]  # what the Trainer pops for the criterion
    setup_logging(training_args.output_dir)
    threads = utils.set_cpu_threads(model_args.cpu_threads)
    logger.info(f"CPU math threads: {threads} (MKL_DEBUG_CPU_TYPE={os.environ.get('MKL_DEBUG_CPU_TYPE', 'unset')}), "
                f"device: {paddle.get_device()}")

    labels = LabelMaps.from_files(data_args.intent_label_file, data_args.slot_label_file)
    train, dev, test = (read_split(data_args.data_dir, name, labels) for name in ("train", "dev", "test"))
    slotless = utils.intents_without_slots(train)
    logger.info(f"data {data_args.data_dir}: train {len(train)}, dev {len(dev)}, test {len(test)} utterances; "
                f"intents without slots in train: {slotless}")

    if model_args.from_scratch:
        tokenizer = CharTokenizer.build(u.text for u in train)
        model = build_from_scratch(model_args.model_name_or_path, tokenizer, labels)
        logger.info(f"from scratch: {model_args.model_name_or_path} architecture, vocabulary of {len(tokenizer)} from train")
    else:
        tokenizer = pretrained_tokenizer(model_args.model_name_or_path)
        model = load_pretrained(model_args.model_name_or_path, labels)
    logger.info(f"parameters: {sum(p.size for p in model.parameters()):,}")
    if not 3 <= model_args.max_seq_length <= model.config.max_position_embeddings:
        raise ValueError(f"--max_seq_length {model_args.max_seq_length}: must hold [CLS], one token and [SEP] "
                         f"and fit the model's {model.config.max_position_embeddings} positions")

    train_rows, truncated = [], 0
    for utt in train:
        windows = utils.labelled_windows(tokenizer, utt, labels, model_args.max_seq_length)
        train_rows.append(windows[0])
        truncated += len(windows) > 1
    logger.info(f"max_seq_length {model_args.max_seq_length}: {truncated} of {len(train)} training utterances "
                f"truncated for training; evaluation scores whole utterances")
    dev_windows = [utils.labelled_windows(tokenizer, u, labels, model_args.max_seq_length) for u in dev]

    trainer = Trainer(
        model=model,
        args=training_args,
        criterion=JointLoss(labels.pad_slot_id, model_args.slot_loss_weight),
        train_dataset=MapDataset(train_rows),
        eval_dataset=MapDataset([row for rows in dev_windows for row in rows]),
        data_collator=make_collator(tokenizer.pad_id, labels.pad_slot_id),
        compute_metrics=make_compute_metrics(dev, [[r["input_ids"] for r in rows] for rows in dev_windows], labels, slotless),
    )

    if training_args.do_train:
        start = time.time()
        result = trainer.train()
        trainer.save_model()  # the best checkpoint when --load_best_model_at_end
        tokenizer.save(training_args.output_dir)
        labels.save(training_args.output_dir)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", {**result.metrics, "wall_time_s": time.time() - start, "cpu_threads": threads})

    # Under `python -m paddle.distributed.launch` only the first process evaluates and writes files.
    if training_args.do_eval and trainer.is_world_process_zero():
        model.eval()

        def logits_fn(input_ids):
            with paddle.no_grad():
                intent_logits, slot_logits = model(paddle.to_tensor(input_ids))
            return intent_logits.numpy(), slot_logits.numpy()

        results = {}
        for name, utts in (("dev", dev), ("test", test)):
            results[name] = utils.evaluate_utterances(
                utts, tokenizer, logits_fn, labels, model_args.max_seq_length, slotless, training_args.per_device_eval_batch_size
            )
            scalars = {k: v for k, v in results[name].items() if k != "per_intent"}
            logger.info(f"{name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items()))
        utils.save_json(os.path.join(training_args.output_dir, "eval_results.json"), results)

    if training_args.do_export and trainer.is_world_process_zero():
        export_dir = export_static(model, tokenizer, labels, os.path.join(training_args.output_dir, "infer_model"), {
            "max_seq_length": model_args.max_seq_length,
            "slotless_intents": slotless,
            "architecture": model_args.model_name_or_path,
            "from_scratch": model_args.from_scratch,
            "inputs": ["input_ids"],
            "outputs": ["intent_logits", "slot_logits"],
        })
        logger.info(f"exported static graph and inference files to {export_dir}; its predictions on test utterances:")
        exported = utils.InferenceModel(export_dir, cpu_threads=threads)
        for result in exported.predict([u.text for u in test[:3]]):
            logger.info(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
