"""Fine-tune (or train from scratch) the joint ERNIE 3.0 Tiny intent + slot model, evaluate it on
whole utterances, and export a self-contained static graph for Paddle Inference / FastDeploy.

    python data/prepare_data.py --output_dir data/prepared    # splits and their label files
    python run_train.py --data_dir data/prepared --output_dir output/nano \
        --model_name_or_path ernie-3.0-tiny-nano-v2-zh --do_train --do_eval --do_export

Add --from_scratch to train the same architecture from random initialisation with a vocabulary
built from the training data (no pretrained weights needed, e.g. offline).
"""
import json
import os
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import paddle
from paddlenlp.trainer import CompressionArguments, PdArgumentParser
from paddlenlp.trainer.trainer_utils import set_seed

import compat
import export_format
from backends import open_predictor
from compression import compress
from data.corpus import read_split
from data.labels import derive_labels, read_data_labels
from data.split import intent_slot_types
from exporting import export
from model import build_from_scratch, load_pretrained, save_safe, slot_transitions
from predictor import Predictor
from task import CharTokenizer, LabelMaps, Task
from teachers import Ensemble
from training import (
    build_trainer,
    check_checkpoint,
    configure_cpu,
    dynamic_logits_fn,
    logger,
    pretrained_tokenizer,
    refuse_launcher,
    setup_logging,
    weights_digest,
)
from utils import PROJECT_DIR, load_json, save_json
from values import Catalogue, derive_catalogue, read_catalogue


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
        default=0,
        metadata={"help": "Tokens per model window of the utterance, [CLS] and [SEP] included; 0 = the longest training "
                  "utterance + 2, so none is truncated. A smaller window truncates longer training utterances (the count "
                  "is logged); evaluation and prediction cover them with windows overlapping by half."},
    )
    context_turns: Optional[int] = field(
        default=None,
        metadata={"help": "Earlier utterances of the same session the model reads with each utterance, as the second "
                  "segment of an ERNIE sentence pair (0 = one utterance at a time). Default: what the model given by "
                  "--model_name_or_path was trained with, else 0."},
    )
    max_context_tokens: Optional[int] = field(
        default=None,
        metadata={"help": "Tokens of the context segment ([SEP]s included), cut from the far end. Default: the model's, "
                  "else 32. Ignored without context."},
    )
    slot_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the slot loss next to the intent loss."})
    intent_label_smoothing: float = field(default=0.0, metadata={
        "help": "Label smoothing of the intent loss, in [0, 1): the gold intent's target is 1 - this, the rest spread "
                "evenly (a candidate of docs/model-and-context.md, \"Toward 86\")."})
    teacher_dirs: List[str] = field(default_factory=list, metadata={
        "help": "Exported models (infer_model/ of earlier runs on the same data, window and context) whose mean "
                "probabilities the model learns from besides the gold labels: an ensemble distilled into one model "
                "(teachers.py; a candidate of docs/model-and-context.md, \"Toward 86\")."})
    distill_alpha: float = field(default=0.5, metadata={
        "help": "With --teacher_dirs: weight of the gold labels' loss, in [0, 1); the teachers' soft targets take the rest."})
    distill_temperature: float = field(default=2.0, metadata={
        "help": "With --teacher_dirs or --qat_distill_alpha: softmax temperature of the soft targets."})
    augment_copies: int = field(default=0, metadata={
        "help": "With --teacher_dirs: seeded, slot-preserving augmented copies of every training utterance (data/augment.py) "
                "added to the training rows, labelled by the teachers alone."})
    teacher_cache_dir: str = field(default=os.path.join("output", "teacher-logits"), metadata={
        "help": "With --teacher_dirs: where each teacher's logits on the training rows are kept, keyed by its weights and the rows."})
    qat_distill_alpha: float = field(default=0.5, metadata={
        "help": "With --do_compress and QAT: weight of the gold labels' loss during QAT, in (0, 1]; the rest learns the "
                "soft targets (at --distill_temperature) of the model being compressed. 1 = gold labels alone, as "
                "PaddleNLP's QAT (docs/compression.md#the-compression-losses)."})
    dynabert_utterance_tokens: bool = field(default=True, metadata={
        "help": "With --do_compress and DynaBERT: distil the slot logits on the utterance's tokens only, not on padding, "
                "[CLS], [SEP] and the context, where the model being compressed was never trained; false = over every "
                "position, as PaddleNLP's DynaBERT (docs/compression.md#the-compression-losses)."})
    slot_crf: bool = field(
        default=False,
        metadata={"help": "Slot head as a linear-chain CRF (learned tag transitions, CRF likelihood) instead of "
                  "per-token cross-entropy; both are decoded by constrained Viterbi (decoding.py)."},
    )
    max_vocab_size: int = field(
        default=8000,
        metadata={"help": "With --prune_embeddings: keep the special tokens and the most frequent tokens of the "
                  "training data, this many in all."},
    )
    cpu_threads: int = field(
        default=0, metadata={"help": "CPU math threads (OpenMP/MKL); 0 = one per core. Overrides OMP_NUM_THREADS."}
    )
    trust_pickled_weights: bool = field(
        default=False,
        metadata={"help": "Allow --model_name_or_path DIR with only pickled weights (model_state.pdparams; unpickling "
                  "runs any code it carries). This project writes model.safetensors; use it for files you made."},
    )


@dataclass
class DataArguments:
    data_dir: str = field(
        default=os.path.join(PROJECT_DIR, "data", "prepared"),
        metadata={"help": "Directory with train.txt, dev.txt, test.txt written by data/prepare_data.py."},
    )
    intent_label_file: Optional[str] = field(
        default=None, metadata={"help": "One intent per line (default: intent_label.txt of --data_dir, else derived from train)."})
    slot_label_file: Optional[str] = field(
        default=None, metadata={"help": "PAD, O and B-/I- tags, one per line (default: slot_label.txt of --data_dir, else derived)."})
    catalogue_file: Optional[str] = field(
        default=None, metadata={"help": "Your slot values (JSON lines: slot, value, synonyms; docs/decoding.md#slot-values), added to "
                                "the catalogue derived from train; the export carries both."})


@dataclass
class TrainingArguments(CompressionArguments):
    """PaddleNLP's training + compression arguments with this task's defaults: evaluate and keep
    the best checkpoint every epoch by dev sentence accuracy."""

    output_dir: str = field(default="output", metadata={"help": "Checkpoints, logs, metrics and infer_model/."})
    # PaddleNLP defaults to "gpu", which its compression code passes to paddle.set_device even on CPU builds.
    device: str = field(default="gpu" if paddle.is_compiled_with_cuda() else "cpu", metadata={"help": "gpu or cpu."})
    evaluation_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on dev: no, steps, epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint (match --evaluation_strategy)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Reload the best dev checkpoint after training."})
    metric_for_best_model: str = field(default="sentence_acc", metadata={"help": "Dev metric that picks the best checkpoint."})
    save_total_limit: int = field(default=1, metadata={"help": "Checkpoints kept besides the best one."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per device."})
    logging_steps: int = field(default=50, metadata={"help": "Log loss and speed every N steps."})


def saved_context(name_or_dir: str) -> dict:
    """The context settings a saved JointErnie was trained with (its config.json), or {}."""
    path = os.path.join(name_or_dir, "config.json")
    config = load_json(path) if os.path.isfile(path) else {}
    return {k: config[k] for k in ("context_turns", "max_context_tokens") if k in config}


def keep_secrets_out_of_outputs(training_args) -> None:
    """--wandb_api_key would be printed into train.log and pickled into training_args.bin with every
    checkpoint: hand it to wandb through the environment (wandb reads WANDB_API_KEY) and clear it."""
    if training_args.wandb_api_key:
        os.environ["WANDB_API_KEY"] = training_args.wandb_api_key
        training_args.wandb_api_key = None


def first_set(*values):
    return next(v for v in values if v is not None)


def main(argv=None):
    # Each run names parameters and optimizer states from 0, as a fresh process does: a checkpoint's
    # optimizer state is keyed by those names, so --resume_from_checkpoint finds its own in any process.
    with paddle.utils.unique_name.guard():
        run(argv)


def data_labels(data_args: DataArguments) -> Tuple[LabelMaps, str]:
    """The label set and where it comes from: the label files given, else those prepare_data.py
    wrote beside the splits, else derived from the training split (splits made by hand)."""
    if bool(data_args.intent_label_file) != bool(data_args.slot_label_file):
        raise ValueError("--intent_label_file and --slot_label_file go together (or neither: the labels of --data_dir)")
    if data_args.intent_label_file:
        return LabelMaps.from_files(data_args.intent_label_file, data_args.slot_label_file), \
            f"{data_args.intent_label_file} and {data_args.slot_label_file}"
    labels = read_data_labels(data_args.data_dir)
    if labels is not None:
        return labels, f"the label files of {data_args.data_dir}"
    return derive_labels(read_split(data_args.data_dir, "train")), f"derived from {data_args.data_dir}/train.txt"


def build_task_and_model(model_args: ModelArguments, train, labels: LabelMaps, seed: int, catalogue: Catalogue):
    """The task (tokenizer, labels, window, context) and the model, from scratch or pretrained;
    the context settings of a saved model are kept unless the flags set them."""
    slot_types = intent_slot_types(train, labels.intents)
    saved = {} if model_args.from_scratch else saved_context(model_args.model_name_or_path)
    context_turns = first_set(model_args.context_turns, saved.get("context_turns"), 0)
    context = {"context_turns": context_turns,
               "max_context_tokens": first_set(model_args.max_context_tokens, saved.get("max_context_tokens"), 32) if context_turns else 0}
    max_seq_length = model_args.max_seq_length or max(len(u.token_tags()) for u in train) + 2
    set_seed(seed)  # before the model: --seed fixes a from-scratch initialisation too
    if model_args.from_scratch:
        task = Task(CharTokenizer.build(u.text for u in train), labels, max_seq_length, slot_types, **context, catalogue=catalogue)
        model = build_from_scratch(model_args.model_name_or_path, task, slot_crf=model_args.slot_crf, **context)
        logger.info(f"from scratch: {model_args.model_name_or_path} architecture, vocabulary of {len(task.tokenizer)} from train")
    else:
        task = Task(pretrained_tokenizer(model_args.model_name_or_path), labels, max_seq_length, slot_types, **context,
                    catalogue=catalogue)
        # a saved JointErnie keeps its own head; --slot_crf puts a CRF on one that has none
        model = load_pretrained(model_args.model_name_or_path, labels, model_args.trust_pickled_weights,
                                sep_token_id=task.tokenizer.sep_id, **context, **({"slot_crf": True} if model_args.slot_crf else {}))
    logger.info(f"parameters: {sum(p.size for p in model.parameters()):,}")
    if task.max_row_length > model.config.max_position_embeddings:
        raise ValueError(f"max_seq_length {max_seq_length} + max_context_tokens {task.max_context_tokens}: must fit the "
                         f"model's {model.config.max_position_embeddings} positions")
    return task, model, {"architecture": model_args.model_name_or_path, "from_scratch": model_args.from_scratch, **context}


def check_resume(checkpoint: str, task: Task) -> None:
    """A checkpoint to resume from: finished, unchanged, arrays only (check_checkpoint), and of
    this run's vocabulary."""
    check_checkpoint(checkpoint)
    saved_vocab = os.path.join(checkpoint, export_format.VOCAB_FILE)
    if os.path.isfile(saved_vocab) and CharTokenizer.from_file(saved_vocab).vocab != task.tokenizer.vocab:
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: its {export_format.VOCAB_FILE} differs from this run's "
                         "vocabulary (other training data or model?): resume with the data and flags it was trained with")


def train(trainer, model, task: Task, args, threads: int) -> None:
    """trainer.train (resuming a checkpoint of this output directory: step count, optimizer,
    scheduler, RNG states), then the weights as safetensors, the task files, metrics and state."""
    global_batch = args.train_batch_size * args.dataset_world_size * args.gradient_accumulation_steps
    logger.info(f"processes: {args.world_size} (rank {args.process_index}); global batch {global_batch} = "
                f"{args.train_batch_size} per process x {args.dataset_world_size} x "
                f"{args.gradient_accumulation_steps} accumulation steps")
    start = time.time()
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    logger.info(f"rank {args.process_index}: weights sha256 {weights_digest(model)}")  # the same on every rank
    if args.should_save:  # the best checkpoint's weights when --load_best_model_at_end, as safetensors
        save_safe(model, args.output_dir)
        export_format.write_task_files(args.output_dir, task)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", {**result.metrics, "wall_time_s": time.time() - start, "cpu_threads": threads})
    trainer.save_state()  # trainer_state.json: every logged loss and dev evaluation (the training curve), JSON


def evaluate_splits(model, task: Task, splits: dict, batch_size: int, output_dir: str) -> None:
    """Metrics of the dynamic model on each split (whole utterances, with their sessions'
    context), logged and saved as eval_results.json."""
    results = {}
    for name, utts in splits.items():
        predictor = Predictor(task, dynamic_logits_fn(model), transitions=slot_transitions(model))
        results[name] = predictor.evaluate(utts, batch_size)
        scalars = {k: v for k, v in results[name].items() if k != "per_intent"}
        logger.info(f"{name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items()))
    save_json(os.path.join(output_dir, "eval_results.json"), results)


def run(argv=None):
    parser = PdArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.label_names = ["intent_label", "slot_labels"]  # what the Trainer pops for the criterion
    keep_secrets_out_of_outputs(training_args)
    if training_args.do_compress:
        refuse_launcher("compression (--do_compress)")
    setup_logging(training_args.output_dir, to_file=training_args.should_save)
    compat.apply()
    threads = configure_cpu(model_args.cpu_threads)
    logger.info(f"CPU math threads: {threads} (MKL_DEBUG_CPU_TYPE={os.environ.get('MKL_DEBUG_CPU_TYPE', 'unset')}), "
                f"device: {paddle.get_device()}")

    labels, where = data_labels(data_args)
    train_split, dev, test = (read_split(data_args.data_dir, name, labels, where) for name in ("train", "dev", "test"))
    logger.info(f"labels ({where}): {len(labels.intents)} intents {labels.intents}, "
                f"{len(labels.slot_types)} slot types {labels.slot_types}")
    logger.info(f"data {data_args.data_dir}: train {len(train_split)}, dev {len(dev)}, test {len(test)} utterances; "
                f"slot types per intent in train: {intent_slot_types(train_split, labels.intents)}")
    catalogue = derive_catalogue(train_split)
    if data_args.catalogue_file:
        catalogue.update(read_catalogue(data_args.catalogue_file, labels.slot_types))
    logger.info(f"catalogue: {catalogue.num_values():,} values of {len(catalogue.values)} slot types, rules {catalogue.rules}")
    task, model, model_info = build_task_and_model(model_args, train_split, labels, training_args.seed, catalogue)
    if training_args.do_train and training_args.resume_from_checkpoint:
        check_resume(training_args.resume_from_checkpoint, task)

    if not 0.0 <= model_args.intent_label_smoothing < 1.0:
        raise ValueError(f"--intent_label_smoothing {model_args.intent_label_smoothing}: must be in [0, 1)")
    if not 0.0 < model_args.qat_distill_alpha <= 1.0:
        raise ValueError(f"--qat_distill_alpha {model_args.qat_distill_alpha}: must be in (0, 1]")
    if model_args.augment_copies and not model_args.teacher_dirs:
        raise ValueError("--augment_copies: augmented rows are labelled by teachers alone; give --teacher_dirs too")
    ensemble = None
    if model_args.teacher_dirs and training_args.do_train:
        ensemble = Ensemble(model_args.teacher_dirs, model_args.distill_temperature, model_args.distill_alpha,
                            model_args.teacher_cache_dir, threads, model_args.augment_copies, training_args.seed)
    trainer = build_trainer(model, task, train_split, dev, training_args, model_args.slot_loss_weight,
                            model_args.intent_label_smoothing, ensemble)
    if training_args.do_train:
        train(trainer, model, task, training_args, threads)

    # Under `python -m paddle.distributed.launch` only the first process evaluates and writes files.
    # PaddleNLP turns do_eval on with any evaluation_strategy; compression alone scores its fp32 stage itself.
    if training_args.do_eval and (training_args.do_train or not training_args.do_compress) and trainer.is_world_process_zero():
        evaluate_splits(model, task, {"dev": dev, "test": test}, training_args.per_device_eval_batch_size, training_args.output_dir)

    if training_args.do_export and trainer.is_world_process_zero():
        exported = export(model, task, os.path.join(training_args.output_dir, "infer_model"), model_info, dev, threads)
        logger.info(f"exported static graph and inference files to {exported.directory}; its predictions on test utterances:")
        for record in open_predictor(exported.directory, "paddle-inference", threads).predict([u.text for u in test[:3]]):
            logger.info(json.dumps(record, ensure_ascii=False))

    if training_args.do_compress:
        compress(model, task, train_split, dev, test, training_args, model_args.max_vocab_size, model_info, threads,
                 model_args.qat_distill_alpha, model_args.distill_temperature, model_args.dynabert_utterance_tokens)


if __name__ == "__main__":
    main()
