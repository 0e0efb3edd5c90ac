"""Fine-tune (or train from scratch) the joint ERNIE 3.0 Tiny intent + slot model, evaluate it on
whole utterances, and export a self-contained static graph for Paddle Inference / FastDeploy.

    python data/prepare_data.py --output_dir data/prepared
    python run_train.py --data_dir data/prepared --output_dir output/nano \
        --model_name_or_path ernie-3.0-tiny-nano-v2-zh --do_train --do_eval --do_export

Add --from_scratch to train the same architecture from random initialisation with a vocabulary
built from the training data (no pretrained weights needed, e.g. offline).
"""
import utils  # first: it configures the CPU math library before paddle loads it

import copy
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import List

import numpy as np
import paddle
from paddlenlp.datasets import MapDataset
from paddlenlp.trainer import CompressionArguments, PdArgumentParser, Trainer
from paddlenlp.utils.log import logger as paddlenlp_logger

import compat
from model import JointErnie, JointLoss, build_from_scratch, load_pretrained, pretrained_tokenizer, prune_vocabulary
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
    max_vocab_size: int = field(
        default=8000,
        metadata={"help": "With --prune_embeddings: keep the special tokens and the most frequent tokens of the "
                  "training data, this many in all."},
    )
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


def build_trainer(model, tokenizer, labels, train, dev, slotless, model_args, training_args) -> Trainer:
    """The Trainer over `tokenizer`'s ids: truncated training rows, every window of dev."""
    train_rows, truncated = [], 0
    for utt in train:
        windows = utils.labelled_windows(tokenizer, utt, labels, model_args.max_seq_length)
        train_rows.append(windows[0])
        truncated += len(windows) > 1
    logger.info(f"max_seq_length {model_args.max_seq_length}: {truncated} of {len(train)} training utterances "
                f"truncated for training; evaluation scores whole utterances")
    dev_windows = [utils.labelled_windows(tokenizer, u, labels, model_args.max_seq_length) for u in dev]
    dev_ids = [[r["input_ids"] for r in rows] for rows in dev_windows]
    trainer = Trainer(
        model=model,
        args=training_args,
        criterion=JointLoss(labels.pad_slot_id, model_args.slot_loss_weight),
        train_dataset=MapDataset(train_rows),
        eval_dataset=MapDataset([row for rows in dev_windows for row in rows]),
        data_collator=make_collator(tokenizer.pad_id, labels.pad_slot_id),
        compute_metrics=make_compute_metrics(dev, dev_ids, labels, slotless),
    )
    trainer.dev_window_ids = dev_ids  # compression's custom_evaluate merges windows the same way
    return trainer


def make_custom_evaluate(dev, labels: LabelMaps, slotless):
    """trainer.compress's evaluation hook: dev sentence accuracy from the same metric code as
    training. The data loader yields the dev windows in order; during DynaBERT the OFA wrapper
    returns (student outputs, teacher outputs), so nested outputs are unwrapped."""

    @paddle.no_grad()
    def custom_evaluate(trainer, model, data_loader):
        # During DynaBERT (teacher and supernet alike) ERNIE's forward is PaddleNLP's replacement,
        # which takes its mask only as [mask, head_mask] ([None, None]: derived from padding), not
        # the 2-D mask JointErnie passes otherwise; compat marks that phase on the trainer.
        dynabert = getattr(trainer, "dynabert_running", False)
        model.eval()
        intent_rows, slot_rows = [], []
        for batch in data_loader:
            # a new list per batch: the replacement forward writes the derived mask into it
            outputs = model(input_ids=batch["input_ids"], attention_mask=[None, None] if dynabert else None)
            while isinstance(outputs[0], (tuple, list)):
                outputs = outputs[0]
            intent_rows.extend(outputs[0].numpy())
            slot_rows.extend(outputs[1].numpy())
        preds = utils.merge_windows(intent_rows, slot_rows, trainer.dev_window_ids)
        metrics = utils.score_predictions(dev, preds, labels, slotless)
        logger.info(f"compress eval: sentence_acc {metrics['sentence_acc']:.4f}, intent_acc {metrics['intent_acc']:.4f}, "
                    f"slot_f1 {metrics['slot_f1']:.4f}")
        model.train()
        return metrics["sentence_acc"]

    return custom_evaluate


COMPRESS_STRATEGIES = ("dynabert", "ptq", "qat", "embeddings")


def check_strategy(strategy: str) -> None:
    parts = strategy.split("+")
    unknown = [p for p in parts if p not in COMPRESS_STRATEGIES]
    if unknown:
        raise ValueError(f"--strategy {strategy!r}: unknown part(s) {unknown}; combine {'/'.join(COMPRESS_STRATEGIES)} with '+'")
    if parts == ["embeddings"]:
        raise ValueError("--strategy embeddings quantizes the embeddings of a model that DynaBERT, PTQ or QAT produced: "
                         "use e.g. 'qat+embeddings' or 'dynabert+qat+embeddings'")
    if "ptq" in parts and "qat" in parts:
        raise ValueError(f"--strategy {strategy!r}: choose one of ptq and qat")


def collect_stages(compress_dir: str, stages_dir: str, tokenizer, labels, config: dict, strategy: str) -> List[str]:
    """Copy every static model the compress API wrote under `compress_dir` (width_mult_*/model,
    .../int8, .../quant_emb, PTQ outputs) into a self-contained stage directory of its own.
    QAT stages are marked for oneDNN's int8 kernels (3-4x faster than running their
    quantize/dequantize pairs in fp32, same predictions as the dynamic QAT model: checked by
    qat_agreement); PTQ stages are not: on oneDNN int8 a PTQ test model lost a third of its
    intent accuracy, while the fp32 simulation of the same graph keeps it."""
    stages = []
    for root, _, files in sorted(os.walk(compress_dir)):
        if os.path.commonpath([root, stages_dir]) == stages_dir:
            continue
        pipeline_order = {"model.pdmodel": 0, "int8.pdmodel": 1, "quant_emb.pdmodel": 2}
        for name in sorted((f for f in files if f.endswith(".pdmodel")), key=lambda f: (pipeline_order.get(f, 3), f)):
            prefix = os.path.join(root, name[: -len(".pdmodel")])
            if prefix == os.path.join(compress_dir, "model"):  # PTQ's own re-export of the fp32 input
                continue
            stage = os.path.join(stages_dir, os.path.relpath(prefix, compress_dir).replace(os.sep, "-"))
            os.makedirs(stage, exist_ok=True)
            for ext in (".pdmodel", ".pdiparams"):
                shutil.copyfile(prefix + ext, os.path.join(stage, "model" + ext))
            qat_int8 = "qat" in strategy and name in ("int8.pdmodel", "quant_emb.pdmodel")
            write_inference_files(stage, tokenizer, labels, {**config, "onednn_int8": qat_int8})
            stages.append(stage)
    return stages


def write_inference_files(export_dir: str, tokenizer: CharTokenizer, labels: LabelMaps, config: dict) -> None:
    tokenizer.save(export_dir)
    labels.save(export_dir)
    utils.save_json(os.path.join(export_dir, INFERENCE_CONFIG), config)


def export_static(model: JointErnie, tokenizer: CharTokenizer, labels: LabelMaps, export_dir: str, config: dict) -> str:
    """model.pdmodel/.pdiparams with dynamic batch and sequence length, plus everything
    inference needs (vocab, labels, max length, lenient-metric intents) beside them."""
    save_static_graph(model, os.path.join(export_dir, "model"))
    write_inference_files(export_dir, tokenizer, labels, config)
    return export_dir


def save_static_graph(model, path_prefix: str) -> None:
    model.eval()
    static = paddle.jit.to_static(
        model, input_spec=[paddle.static.InputSpec([None, None], "int64", "input_ids")], full_graph=True
    )
    paddle.jit.save(static, path_prefix)
    static.forward.rollback()  # to_static converted the layer in place; later training stays dygraph


def export_dynabert_widths(original: JointErnie, args) -> None:
    """With QAT or PTQ after DynaBERT, PaddleNLP exports no fp32 graph of the pruned widths; build
    each as PaddleNLP's own export does (slice the supernet weights saved for that width into a
    narrower copy of the pre-DynaBERT model) and save it as width_mult_*/model."""
    from paddlenlp.trainer.trainer_compress import _get_dynabert_model, _load_parameters

    for width_mult in args.width_mult_list:
        width_dir = os.path.join(args.output_dir, "width_mult_" + str(round(width_mult, 2)))
        if os.path.isfile(os.path.join(width_dir, "model.pdmodel")):
            continue
        narrow = _get_dynabert_model(copy.deepcopy(original), width_mult)
        _load_parameters(narrow, paddle.load(os.path.join(width_dir, "model_state.pdparams")))
        save_static_graph(narrow, os.path.join(width_dir, "model"))


def static_param_count(model_dir: str) -> int:
    paddle.enable_static()
    try:
        program, _, _ = paddle.static.load_inference_model(os.path.join(model_dir, "model"), paddle.static.Executor(paddle.CPUPlace()))
        return int(sum(np.prod(v.shape) for v in program.list_vars() if v.persistable and v.name not in ("feed", "fetch")))
    finally:
        paddle.disable_static()


def compress(model, tokenizer, labels, train, dev, test, slotless, model_args, training_args, threads, config) -> dict:
    """Vocabulary pruning (--prune_embeddings), then PaddleNLP's trainer.compress with
    --strategy; every stage exported self-contained under <output_dir>/compress/stages/ and
    scored on the test split through Paddle Inference. Returns the report."""
    check_strategy(training_args.strategy)
    compress_dir = os.path.join(training_args.output_dir, "compress")
    stages_dir = os.path.join(compress_dir, "stages")
    shutil.rmtree(stages_dir, ignore_errors=True)
    export_static(model, tokenizer, labels, os.path.join(stages_dir, "fp32"), config)
    seconds = {}
    if training_args.prune_embeddings:
        start = time.time()
        model, tokenizer = prune_vocabulary(model, tokenizer, (u.text for u in train), model_args.max_vocab_size,
                                            model_args.max_seq_length, os.path.join(compress_dir, "pruned_model"))
        export_static(model, tokenizer, labels, os.path.join(stages_dir, "pruned_vocab"), config)
        seconds["pruned_vocab"] = time.time() - start
        logger.info(f"vocabulary pruned to {len(tokenizer)} tokens, positions to {model_args.max_seq_length}")

    args = copy.copy(training_args)  # compress() rewrites fields of its arguments
    args.output_dir = compress_dir
    trainer = build_trainer(model, tokenizer, labels, train, dev, slotless, model_args, args)
    steps = args.max_steps if args.max_steps > 0 else int(len(trainer.get_train_dataloader()) * args.num_train_epochs)
    if args.save_steps > steps:  # DynaBERT and QAT evaluate (and keep a best model) only every save_steps
        logger.info(f"--save_steps {args.save_steps} > {steps} steps per compression stage: evaluating every {steps}")
        args.save_steps = steps

    def timed(quant):
        def run(model_dir, strategy):
            start = time.time()
            result = quant(model_dir, strategy)
            seconds[strategy] = seconds.get(strategy, 0.0) + time.time() - start
            return result
        return run

    trainer.quant = timed(trainer.quant)
    original = copy.deepcopy(model)  # DynaBERT converts the model in place
    start = time.time()
    trainer.compress(custom_evaluate=make_custom_evaluate(dev, labels, slotless))
    if "dynabert" in args.strategy:
        seconds["dynabert"] = time.time() - start - sum(v for k, v in seconds.items() if k != "pruned_vocab")
        export_dynabert_widths(original, args)

    stages = [os.path.join(stages_dir, "fp32")] + ([os.path.join(stages_dir, "pruned_vocab")] if training_args.prune_embeddings else [])
    stages += collect_stages(compress_dir, stages_dir, tokenizer, labels, config, args.strategy)
    report = {"strategy": args.strategy, "prune_embeddings": training_args.prune_embeddings, "stages": []}
    for stage in stages:
        metrics = utils.InferenceModel(stage, cpu_threads=threads).evaluate(test)
        name = os.path.basename(stage)
        report["stages"].append({
            "stage": name, "dir": stage, "size_mb": utils.model_size_mb(stage), "parameters": static_param_count(stage),
            "wall_time_s": seconds.get(step_of_stage(name, seconds)),
            **{k: metrics[k] for k in ("sentence_acc", "sentence_acc_ref", "intent_acc", "slot_f1")},
        })
    if "qat" in args.strategy:
        report["qat_prediction_agreement"] = qat_agreement(trainer.model, tokenizer, test, stages, threads)
    write_report(report, compress_dir)
    return report


def step_of_stage(stage: str, seconds: dict) -> str:
    """Which compression step wrote a stage: width_mult_0.75-model -> dynabert, ...-int8 -> qat/ptq."""
    suffix = stage.rsplit("-", 1)[-1]
    return {"model": "dynabert", "quant_emb": "embeddings", "int8": "ptq" if "ptq" in seconds else "qat"}.get(suffix, stage)


def dynamic_logits_fn(model):
    """utils.LogitsFn over a dygraph model (fp32, DynaBERT or QAT-wrapped)."""
    model.eval()

    def logits_fn(input_ids):
        with paddle.no_grad():
            intent_logits, slot_logits = model(paddle.to_tensor(input_ids))
        return intent_logits.numpy(), slot_logits.numpy()

    return logits_fn


def qat_agreement(qat_model, tokenizer, test, stages, threads) -> float:
    """Share of test utterances whose intent and every tag agree between the dynamic QAT model
    and its exported int8 graph run by Paddle Inference."""
    int8 = utils.InferenceModel(next(s for s in stages if s.endswith("int8")), cpu_threads=threads)
    encoded = [int8.encode(u.text) for u in test]
    dynamic = utils.predict_encoded(encoded, dynamic_logits_fn(qat_model), tokenizer.pad_id)
    static = utils.predict_encoded(encoded, int8.logits, tokenizer.pad_id)
    same = sum(d.intent_id == s.intent_id and d.tag_ids == s.tag_ids for d, s in zip(dynamic, static))
    return same / len(test)


def write_report(report: dict, compress_dir: str) -> None:
    utils.save_json(os.path.join(compress_dir, "compress_report.json"), report)
    lines = ["| stage | sentence acc | sentence acc (ref) | intent acc | slot F1 | size (MB) | parameters | stage wall time (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report["stages"]:
        wall = "" if s["wall_time_s"] is None else f"{s['wall_time_s']:.0f}"
        lines.append(f"| {s['stage']} | {100 * s['sentence_acc']:.2f} | {100 * s['sentence_acc_ref']:.2f} | {100 * s['intent_acc']:.2f} "
                     f"| {100 * s['slot_f1']:.2f} | {s['size_mb']:.2f} | {s['parameters']:,} | {wall} |")
    if "qat_prediction_agreement" in report:
        lines.append(f"\nDynamic QAT model vs exported int8 graph: {100 * report['qat_prediction_agreement']:.2f} % of test predictions identical.")
    with open(os.path.join(compress_dir, "compress_report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    logger.info("compression report:\n" + "\n".join(lines))


def main(argv=None):
    parser = PdArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.label_names = ["intent_label", "slot_labels"]  # what the Trainer pops for the criterion
    setup_logging(training_args.output_dir)
    compat.apply()
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

    trainer = build_trainer(model, tokenizer, labels, train, dev, slotless, model_args, training_args)

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
        results = {}
        for name, utts in (("dev", dev), ("test", test)):
            results[name] = utils.evaluate_utterances(
                utts, tokenizer, dynamic_logits_fn(model), labels, model_args.max_seq_length, slotless,
                training_args.per_device_eval_batch_size,
            )
            scalars = {k: v for k, v in results[name].items() if k != "per_intent"}
            logger.info(f"{name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in scalars.items()))
        utils.save_json(os.path.join(training_args.output_dir, "eval_results.json"), results)

    inference_config = {
        "max_seq_length": model_args.max_seq_length,
        "slotless_intents": slotless,
        "architecture": model_args.model_name_or_path,
        "from_scratch": model_args.from_scratch,
        "inputs": ["input_ids"],
        "outputs": ["intent_logits", "slot_logits"],
    }
    if training_args.do_export and trainer.is_world_process_zero():
        export_dir = export_static(model, tokenizer, labels, os.path.join(training_args.output_dir, "infer_model"), inference_config)
        logger.info(f"exported static graph and inference files to {export_dir}; its predictions on test utterances:")
        exported = utils.InferenceModel(export_dir, cpu_threads=threads)
        for result in exported.predict([u.text for u in test[:3]]):
            logger.info(json.dumps(result, ensure_ascii=False))

    if training_args.do_compress:
        compress(model, tokenizer, labels, train, dev, test, slotless, model_args, training_args, threads, inference_config)


if __name__ == "__main__":
    main()
