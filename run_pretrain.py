"""Masked-language-model pretraining of the ERNIE 3.0 Tiny encoder on the training split's own text,
from random initialisation: the offline stand-in for the reference's pretrained weights
(docs/model-and-context.md, "Toward 86"). No external text and no label is read.

    python run_pretrain.py --data_dir data/prepared/nlpcc2018 --context_turns 2 --output_dir output/nano-mlm
    python run_train.py --model_name_or_path output/nano-mlm --data_dir data/prepared/nlpcc2018 ...

The rows are the ones run_train.py reads, `[CLS] utterance [SEP] earlier turns`, so the position
and segment embeddings of the context are pretrained too. Each epoch masks 15 % of each row's
tokens anew (at least one): 80 % become [UNK] rather than [MASK] (a character unseen in training
reads as [UNK] when the model is used, so it learns to read that token from its context), 10 % a
random character, 10 % stay. The output directory is a
local pretrained model (config.json, model.safetensors, vocab.txt) for run_train.py's
--model_name_or_path without --from_scratch: the encoder is loaded, the heads start fresh.
"""
import os
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import paddle
from paddlenlp.data import Pad
from paddlenlp.datasets import MapDataset
from paddlenlp.trainer import PdArgumentParser
from paddlenlp.trainer import TrainingArguments as PaddleTrainingArguments
from paddlenlp.trainer.trainer_utils import set_seed
from paddlenlp.transformers import ErnieForMaskedLM

import compat
import export_format
from data.corpus import read_split
from data.labels import derive_labels, read_data_labels
from data.split import intent_slot_types
from model import save_safe, scratch_config, segment_ids
from task import SPECIAL_TOKENS, CharTokenizer, Task
from training import BucketTrainer, configure_cpu, logger, setup_logging
from utils import save_json

IGNORE = -100  # ErnieForMaskedLM's cross-entropy ignores this label


@dataclass
class PretrainArguments:
    model_name_or_path: str = field(default="ernie-3.0-tiny-nano-v2-zh", metadata={
        "help": "The ERNIE 3.0 Tiny architecture to build (random initialisation; nothing is downloaded)."})
    data_dir: str = field(default=os.path.join("data", "prepared"), metadata={
        "help": "Directory with train.txt (its text is the pretraining corpus) and dev.txt (masked-LM loss per epoch)."})
    context_turns: int = field(default=0, metadata={
        "help": "Earlier utterances of the session in each row, as run_train.py --context_turns (pass the same value)."})
    max_context_tokens: int = field(default=32, metadata={"help": "Tokens of the context segment, as run_train.py's."})
    mask_prob: float = field(default=0.15, metadata={"help": "Share of each row's tokens predicted, in (0, 1)."})
    cpu_threads: int = field(default=0, metadata={"help": "CPU math threads (OpenMP/MKL); 0 = one per core."})


@dataclass
class TrainingArguments(PaddleTrainingArguments):
    output_dir: str = field(default=os.path.join("output", "nano-mlm"), metadata={"help": "The pretrained model and its log."})
    device: str = field(default="gpu" if paddle.is_compiled_with_cuda() else "cpu", metadata={"help": "gpu or cpu."})
    num_train_epochs: float = field(default=40, metadata={"help": "Passes over the training text, each with new masks."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (linear warm-up, then linear decay)."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the steps spent warming up."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Rows per step."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Rows per dev batch."})
    evaluation_strategy: str = field(default="epoch", metadata={"help": "When to compute the dev masked-LM loss."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoints (the final weights are saved regardless)."})
    logging_steps: int = field(default=100, metadata={"help": "Log loss and speed every N steps."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Dev: the loss only (full-vocabulary logits are large)."})


def mask_tokens(ids: List[int], tokenizer: CharTokenizer, mask_prob: float, rng: np.random.RandomState):
    """(masked input ids, labels): `mask_prob` of the row's tokens ([CLS], [SEP] and [PAD] never),
    at least one, chosen by `rng`; labels hold the original id there and IGNORE elsewhere."""
    ids = np.asarray(ids, dtype="int64")
    candidates = np.flatnonzero(~np.isin(ids, [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]))
    labels = np.full_like(ids, IGNORE)
    if len(candidates) == 0:
        return ids, labels
    chosen = candidates[rng.rand(len(candidates)) < mask_prob]
    if len(chosen) == 0:
        chosen = rng.choice(candidates, 1)
    labels[chosen] = ids[chosen]
    masked, roll = ids.copy(), rng.rand(len(chosen))
    masked[chosen[roll < 0.8]] = tokenizer.unk_id
    randoms = chosen[(roll >= 0.8) & (roll < 0.9)]
    first_char = len(SPECIAL_TOKENS)  # characters follow the special tokens in the vocabulary
    masked[randoms] = rng.randint(first_char, len(tokenizer), len(randoms))
    return masked, labels


def make_mlm_collator(tokenizer: CharTokenizer, mask_prob: float, seed: int):
    """Rows -> padded input_ids, token_type_ids, masked_positions (flat indices into the batch's
    tokens: the prediction head runs on those alone) and their labels. Rows that carry their own
    "labels" (dev: masked once, so every epoch scores the same task) keep them; the others are
    masked anew by one seeded generator, so each epoch draws new masks and a run repeats exactly."""
    rng = np.random.RandomState(seed)
    pad_ids, pad_labels = Pad(pad_val=tokenizer.pad_id, dtype="int64"), Pad(pad_val=IGNORE, dtype="int64")

    def collate(rows):
        pairs = [(r["input_ids"], r["labels"]) if "labels" in r else mask_tokens(r["input_ids"], tokenizer, mask_prob, rng)
                 for r in rows]
        input_ids, labels = pad_ids([p[0] for p in pairs]), pad_labels([p[1] for p in pairs]).reshape(-1)
        positions = np.flatnonzero(labels != IGNORE)
        # the segments the fine-tuned model derives from the same ids
        token_type_ids = segment_ids(paddle.to_tensor(input_ids), tokenizer.sep_id).numpy()
        return {"input_ids": input_ids, "token_type_ids": token_type_ids,
                "masked_positions": positions, "labels": labels[positions]}

    return collate


def corpus_rows(task: Task, utterances) -> List[dict]:
    """Every window of every utterance with its session context, as run_train.py reads them."""
    return [{"input_ids": ids} for enc in task.encode_corpus(utterances) for ids in enc.windows]


def main(argv: Optional[List[str]] = None) -> None:
    parser = PdArgumentParser((PretrainArguments, TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if not 0.0 < args.mask_prob < 1.0:
        raise ValueError(f"--mask_prob {args.mask_prob}: must be in (0, 1)")
    training_args.label_names = ["labels"]
    setup_logging(training_args.output_dir, log_name="pretrain.log")
    compat.apply()
    threads = configure_cpu(args.cpu_threads)

    labels = read_data_labels(args.data_dir)
    train, dev = (read_split(args.data_dir, name, labels) for name in ("train", "dev"))
    labels = labels or derive_labels(train)
    # the vocabulary run_train.py --from_scratch builds from the same split
    tokenizer = CharTokenizer.build(u.text for u in train)
    max_seq_length = max(len(u.token_tags()) for u in train) + 2
    task = Task(tokenizer, labels, max_seq_length, intent_slot_types(train, labels.intents), args.context_turns,
                args.max_context_tokens if args.context_turns else 0)
    train_rows = corpus_rows(task, train)
    dev_rng = np.random.RandomState(training_args.seed + 1)
    dev_rows = [dict(zip(("input_ids", "labels"), mask_tokens(r["input_ids"], tokenizer, args.mask_prob, dev_rng)))
                for r in corpus_rows(task, dev)]
    logger.info(f"pretraining text of {args.data_dir}: {len(train_rows)} training rows (context_turns {args.context_turns}), "
                f"{len(dev_rows)} dev rows, vocabulary of {len(tokenizer)}")

    set_seed(training_args.seed)
    # the context settings go into config.json: run_train.py reads rows the same way unless its flags say otherwise
    config = scratch_config(args.model_name_or_path, tokenizer, context_turns=task.context_turns,
                            max_context_tokens=task.max_context_tokens)
    model = ErnieForMaskedLM(config)
    if task.max_row_length > config.max_position_embeddings:
        raise ValueError(f"rows of {task.max_row_length} tokens do not fit the model's {config.max_position_embeddings} positions")

    trainer = BucketTrainer(model=model, args=training_args, train_dataset=MapDataset(train_rows), eval_dataset=MapDataset(dev_rows),
                      data_collator=make_mlm_collator(tokenizer, args.mask_prob, training_args.seed))
    start = time.time()
    result = trainer.train()
    wall = time.time() - start
    dev_metrics = trainer.evaluate()
    # The output is a pretrained model directory: written to a temporary name, renamed when complete.
    final, partial = training_args.output_dir, os.path.join(training_args.output_dir, "pretrained.partial")
    save_safe(model, partial)
    export_format.write_vocab(partial, tokenizer)
    save_json(os.path.join(partial, "pretrain_results.json"), {
        "train_rows": len(train_rows), "dev_rows": len(dev_rows), "context_turns": args.context_turns,
        "max_context_tokens": task.max_context_tokens, "mask_prob": args.mask_prob, "epochs": training_args.num_train_epochs,
        "train_loss": result.training_loss, "dev_mlm_loss": dev_metrics["eval_loss"], "wall_time_s": wall,
        "samples_per_s": len(train_rows) * training_args.num_train_epochs / wall, "cpu_threads": threads})
    # config.json last: a directory without it is not loadable, so a run killed here leaves no half model
    for name in sorted(os.listdir(partial), key=lambda n: n == "config.json"):
        os.replace(os.path.join(partial, name), os.path.join(final, name))
    os.rmdir(partial)
    logger.info(f"pretrained encoder in {final}: dev masked-LM loss {dev_metrics['eval_loss']:.4f}, {wall / 60:.1f} min; "
                f"fine-tune it with run_train.py --model_name_or_path {final}")


if __name__ == "__main__":
    main()
