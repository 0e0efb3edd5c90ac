"""Compression of a trained JointErnie with PaddleNLP's compress API: vocabulary pruning, then
DynaBERT width pruning, PTQ or QAT, int8 embeddings (`--strategy`, parts joined by '+'). Every
stage becomes a complete exported directory under <output_dir>/compress/stages/, scored on the
test split through Paddle Inference, and reported (compress_report.json / .md).

The fixes the pinned PaddleNLP / PaddleSlim need are in compat.py."""
import collections
import contextlib
import copy
import dataclasses
import math
import os
import shutil
import time
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import paddle

import compat
import export_format
from backends import model_size_mb, open_predictor
from decoding import Decoder
from exporting import export, export_graph, save_static_graph
from model import JointErnie, save_safe, slot_transitions, soft_cross_entropy as soft_cross_entropy_against
from predictor import merge_windows, run_windows, score
from task import SPECIAL_TOKENS, CharTokenizer, Task
from teachers import Ensemble
from training import build_trainer, dynamic_logits_fn, logger
from utils import markdown_table, save_json, write_text

STRATEGIES = ("dynabert", "ptq", "qat", "embeddings")


def check_strategy(strategy: str) -> None:
    parts = strategy.split("+")
    unknown = [p for p in parts if p not in STRATEGIES]
    if unknown:
        raise ValueError(f"--strategy {strategy!r}: unknown part(s) {unknown}; combine {'/'.join(STRATEGIES)} with '+'")
    if parts == ["embeddings"]:
        raise ValueError("--strategy embeddings quantizes the embeddings of a model that DynaBERT, PTQ or QAT produced: "
                         "use e.g. 'qat+embeddings' or 'dynabert+qat+embeddings'")
    if "ptq" in parts and "qat" in parts:
        raise ValueError(f"--strategy {strategy!r}: choose one of ptq and qat")


def prune_vocabulary(model: JointErnie, task: Task, texts: Iterable[str], max_vocab_size: int, output_dir: str) -> Tuple[JointErnie, Task]:
    """Keep the special tokens and the most frequent tokens of `texts` (ties by id), up to
    `max_vocab_size`; slice the word-embedding rows to match and the position embeddings to the
    longest row (window + context: rows never use later positions). Saves the pruned model and its task files
    to `output_dir` and returns them; the input model is left as it was."""
    tokenizer = task.tokenizer
    counts = collections.Counter(i for text in texts for i in tokenizer.tokenize(text)[0])
    specials = [tokenizer.token_to_id[t] for t in SPECIAL_TOKENS]
    ranked = sorted((i for i in counts if i not in specials), key=lambda i: (-counts[i], i))
    keep = specials + ranked[: max(max_vocab_size - len(specials), 0)]
    pruned_task = dataclasses.replace(task, tokenizer=CharTokenizer([tokenizer.vocab[i] for i in keep]))

    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["ernie.embeddings.word_embeddings.weight"] = state["ernie.embeddings.word_embeddings.weight"][keep]
    state["ernie.embeddings.position_embeddings.weight"] = state["ernie.embeddings.position_embeddings.weight"][: task.max_row_length]
    config = copy.deepcopy(model.config)
    config.vocab_size, config.max_position_embeddings = len(keep), task.max_row_length
    config.pad_token_id, config.sep_token_id = pruned_task.tokenizer.pad_id, pruned_task.tokenizer.sep_id
    pruned = JointErnie(config)
    pruned.set_state_dict(state)
    os.makedirs(output_dir, exist_ok=True)
    save_safe(pruned, output_dir)
    export_format.write_task_files(output_dir, pruned_task)
    return pruned, pruned_task


def make_custom_evaluate(dev, task: Task):
    """trainer.compress's evaluation hook: dev sentence accuracy from the same metric code as
    training. The data loader yields the dev windows in order; during DynaBERT the OFA wrapper
    returns (student outputs, teacher outputs), so nested outputs are unwrapped."""
    dev_encoded = task.encode_corpus(dev)

    @paddle.no_grad()
    def custom_evaluate(trainer, model, data_loader):
        # During DynaBERT (teacher and supernet alike) ERNIE's forward is PaddleNLP's replacement,
        # which takes its mask only as [mask, head_mask] ([None, None]: derived from padding), not
        # the 2-D mask JointErnie passes otherwise.
        dynabert = compat.dynabert_running(trainer)
        model.eval()
        intent_rows, slot_rows = [], []
        for batch in data_loader:
            # a new list per batch: the replacement forward writes the derived mask into it
            outputs = model(input_ids=batch["input_ids"], attention_mask=[None, None] if dynabert else None)
            while isinstance(outputs[0], (tuple, list)):
                outputs = outputs[0]
            intent_rows.extend(outputs[0].numpy())
            slot_rows.extend(outputs[1].numpy())
        decoder = Decoder.for_task(task, transitions=slot_transitions(model))
        metrics = score(dev, merge_windows(intent_rows, slot_rows, dev_encoded, decoder), task)
        logger.info(f"compress eval: sentence_acc {metrics['sentence_acc']:.4f}, intent_acc {metrics['intent_acc']:.4f}, "
                    f"slot_f1 {metrics['slot_f1']:.4f}")
        model.train()
        return metrics["sentence_acc"]

    return custom_evaluate


def stage_transitions(stage_root: str, fallback: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """A CRF head's transitions for a compressed stage: as saved beside it (the DynaBERT width's
    model_state.pdparams, which its int8 / quant_emb stages continue from), else `fallback` (the
    input model's); None for a model without a CRF."""
    state_file = os.path.join(stage_root, "model_state.pdparams")
    if fallback is None or not os.path.isfile(state_file):
        return fallback
    state = paddle.load(state_file, return_numpy=True)
    return np.asarray(state["slot_transitions"], dtype="float64") if "slot_transitions" in state else fallback


def collect_stages(compress_dir: str, stages_dir: str, task: Task, model_info: dict, strategy: str,
                   transitions: Optional[np.ndarray] = None, dev: Sequence = (), threads: int = 0) -> List[str]:
    """Every static model the compress API wrote under `compress_dir` (width_mult_*/model,
    .../int8, .../quant_emb, PTQ outputs) as an exported directory of its own. QAT stages are
    marked for oneDNN's int8 kernels (faster than running their quantize/dequantize pairs in
    fp32, and the same predictions as the dynamic QAT model: checked by qat_agreement); PTQ
    stages are not, because a PTQ model loses accuracy on those kernels (docs/compression.md).
    A CRF model's stages carry their transitions (stage_transitions). Each stage's confidences are
    its own, calibrated on `dev` as it is exported."""
    stages = []
    pipeline_order = {"model.pdmodel": 0, "int8.pdmodel": 1, "quant_emb.pdmodel": 2}
    for root, _, files in sorted(os.walk(compress_dir)):
        if os.path.commonpath([root, stages_dir]) == stages_dir:
            continue
        for name in sorted((f for f in files if f.endswith(".pdmodel")), key=lambda f: (pipeline_order.get(f, 3), f)):
            prefix = os.path.join(root, name[: -len(".pdmodel")])
            if prefix == os.path.join(compress_dir, "model"):  # PTQ's own re-export of the fp32 input
                continue
            stage_name = os.path.relpath(prefix, compress_dir).replace(os.sep, "-")

            qat_int8 = "qat" in strategy and name in ("int8.pdmodel", "quant_emb.pdmodel")
            stage = os.path.join(stages_dir, stage_name)
            crf = stage_transitions(root, transitions)
            export_graph(prefix, task, stage, {**model_info, "stage": stage_name}, qat_int8, crf, dev, threads)
            stages.append(stage)
    return stages


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
        prefix = os.path.join(model_dir, export_format.GRAPH_PREFIX)
        program, _, _ = paddle.static.load_inference_model(prefix, paddle.static.Executor(paddle.CPUPlace()))
        return int(sum(np.prod(v.shape) for v in program.list_vars() if v.persistable and v.name not in ("feed", "fetch")))
    finally:
        paddle.disable_static()


def step_of_stage(stage: str, strategy: str) -> str:
    """Which compression step wrote a stage: width_mult_0.75-model -> dynabert, ...-int8 -> qat/ptq."""
    suffix = stage.rsplit("-", 1)[-1]
    return {"model": "dynabert", "quant_emb": "embeddings", "int8": "ptq" if "ptq" in strategy.split("+") else "qat"}.get(suffix, stage)


def qat_agreement(qat_model, task: Task, test, int8_stage: str, threads: int) -> float:
    """Share of test utterances whose intent and every tag agree between the dynamic QAT model
    and its exported int8 graph run by Paddle Inference."""
    encoded = task.encode_corpus(test)
    decoder = Decoder.for_task(task, transitions=slot_transitions(qat_model))
    dynamic = run_windows(encoded, dynamic_logits_fn(qat_model), task.tokenizer.pad_id, decoder)
    static = run_windows(encoded, open_predictor(int8_stage, "paddle-inference", threads).logits_fn, task.tokenizer.pad_id, decoder)
    same = sum(d.intent_id == s.intent_id and d.tag_ids == s.tag_ids for d, s in zip(dynamic, static))
    return same / len(test)


@contextlib.contextmanager
def slot_distillation_on_utterance_tokens(pad_slot_id: int):
    """Within it, PaddleNLP's DynaBERT loop distils the slot logits on the utterance's tokens only.

    That loop's logit loss is its soft cross-entropy of each output against the teacher's, averaged
    over every position: for [B, S, tags] slot logits that is padding, [CLS], [SEP] and the
    session context too, where the teacher was never trained (their tag is PAD) and the student
    would spend its reduced width imitating noise. Here each batch's slot labels (not PAD: the
    utterance's tokens, as JointLoss counts them) mask that average; the intent's is unchanged."""
    from paddlenlp.trainer import trainer_compress

    training, soft_cross_entropy = trainer_compress._dynabert_training, trainer_compress.soft_cross_entropy
    current = {}

    class BatchesRecordingTheirTokens:  # the loop iterates it once per epoch
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for batch in self.loader:
                current["mask"] = (batch["slot_labels"] != pad_slot_id).astype("float32")
                yield batch

    def masked_soft_cross_entropy(logits, teacher_logits):
        if logits.ndim != 3:
            return soft_cross_entropy(logits, teacher_logits)
        per_token = soft_cross_entropy_against(logits, paddle.nn.functional.softmax(teacher_logits, axis=-1), 1.0)
        mask = current["mask"]
        return (per_token * mask).sum() / paddle.clip(mask.sum(), min=1.0)

    def dynabert_training(self, ofa_model, model, teacher_model, train_dataloader, *args, **kwargs):
        return training(self, ofa_model, model, teacher_model, BatchesRecordingTheirTokens(train_dataloader), *args, **kwargs)

    trainer_compress._dynabert_training, trainer_compress.soft_cross_entropy = dynabert_training, masked_soft_cross_entropy
    try:
        yield
    finally:
        trainer_compress._dynabert_training, trainer_compress.soft_cross_entropy = training, soft_cross_entropy


def qat_with_soft_targets(quant, trainer):
    """trainer.quant whose QAT also learns from the soft targets the training rows carry (the
    input model's own: `compress` with qat_distill_alpha < 1). PaddleNLP's QAT loop hands its
    criterion only the batch fields that label_names names, so for QAT they name those too; the
    other steps (DynaBERT's head importance reads dev, which has none) see the names as before."""
    def run(model_dir, strategy):
        if strategy != "qat":
            return quant(model_dir, strategy)
        names, criterion = trainer.args.label_names, trainer.criterion
        trainer.args.label_names = list(names) + ["ensemble_intent", "ensemble_slots"]
        trainer.criterion = lambda logits, labels: criterion(logits, labels[:2], ensemble_intent=labels[2], ensemble_slots=labels[3])
        try:
            return quant(model_dir, strategy)
        finally:
            trainer.args.label_names, trainer.criterion = names, criterion
    return run


def compress(model, task: Task, train, dev, test, training_args, max_vocab_size: int, model_info: dict, threads: int,
             qat_distill_alpha: float = 0.5, distill_temperature: float = 2.0, utterance_token_distillation: bool = True) -> dict:
    """Vocabulary pruning (--prune_embeddings), then trainer.compress with --strategy; returns the report.
    With `qat_distill_alpha` < 1, QAT's loss is that weight x the gold labels' + the rest x the soft
    targets (at `distill_temperature`) of the model as it entered DynaBERT and QAT (its last stage
    before them: the pruned vocabulary's, else fp32; its logits cached in compress/teacher-logits/),
    as run_train.py --teacher_dirs learns from an ensemble. With `utterance_token_distillation`,
    DynaBERT distils the slot logits on the utterance's tokens only
    (slot_distillation_on_utterance_tokens). docs/compression.md#the-compression-losses."""
    check_strategy(training_args.strategy)
    compress_dir = os.path.join(training_args.output_dir, "compress")
    stages_dir = os.path.join(compress_dir, "stages")
    shutil.rmtree(stages_dir, ignore_errors=True)
    stages = [export(model, task, os.path.join(stages_dir, "fp32"), {**model_info, "stage": "fp32"}, dev, threads).directory]
    seconds = {}
    if training_args.prune_embeddings:
        start = time.time()
        model, task = prune_vocabulary(model, task, (u.text for u in train), max_vocab_size, os.path.join(compress_dir, "pruned_model"))
        stages.append(
            export(model, task, os.path.join(stages_dir, "pruned_vocab"), {**model_info, "stage": "pruned_vocab"}, dev, threads).directory
        )
        seconds["pruned_vocab"] = time.time() - start
        logger.info(f"vocabulary pruned to {len(task.tokenizer)} tokens, positions to {task.max_row_length}")

    args = copy.copy(training_args)  # compress() rewrites fields of its arguments
    args.output_dir = compress_dir
    steps_run = args.strategy.split("+")
    self_teacher = None
    if qat_distill_alpha < 1.0 and "qat" in steps_run:
        # its logits on the training rows, cached with the run's other working files
        self_teacher = Ensemble([stages[-1]], distill_temperature, qat_distill_alpha, os.path.join(compress_dir, "teacher-logits"), threads)
        logger.info(f"QAT learns from the gold labels (x {qat_distill_alpha}) and from {stages[-1]}'s soft targets "
                    f"at T={distill_temperature}")
    trainer = build_trainer(model, task, train, dev, args, ensemble=self_teacher)
    steps = args.max_steps if args.max_steps > 0 else int(len(trainer.get_train_dataloader()) * args.num_train_epochs)
    # DynaBERT and QAT evaluate (and keep a best model) only every save_steps: space the evaluations
    # evenly over the stage, so that the last one falls on (or just before) its last step, where the
    # learning rate has decayed, instead of up to save_steps - 1 steps earlier
    spaced = steps // max(1, math.ceil(steps / args.save_steps))
    if spaced != args.save_steps:
        logger.info(f"--save_steps {args.save_steps}: {steps} steps per compression stage, evaluating every {spaced}")
        args.save_steps = spaced

    def timed(quant):
        def run(model_dir, strategy):
            start = time.time()
            result = quant(model_dir, strategy)
            seconds[strategy] = seconds.get(strategy, 0.0) + time.time() - start
            return result
        return run

    trainer.quant = timed(qat_with_soft_targets(trainer.quant, trainer) if self_teacher else trainer.quant)
    original = copy.deepcopy(model)  # DynaBERT converts the model in place
    start = time.time()
    utterance_tokens = utterance_token_distillation and "dynabert" in steps_run
    with (slot_distillation_on_utterance_tokens(task.labels.pad_slot_id) if utterance_tokens else contextlib.nullcontext()):
        trainer.compress(custom_evaluate=make_custom_evaluate(dev, task))
    if "dynabert" in args.strategy:
        seconds["dynabert"] = time.time() - start - sum(v for k, v in seconds.items() if k != "pruned_vocab")
        export_dynabert_widths(original, args)

    stages += collect_stages(compress_dir, stages_dir, task, model_info, args.strategy, slot_transitions(original), dev, threads)
    report = {"strategy": args.strategy, "prune_embeddings": training_args.prune_embeddings,
              "dynabert_utterance_tokens": utterance_tokens, "stages": []}
    if self_teacher:
        report["qat_distill"] = {"alpha": qat_distill_alpha, "temperature": distill_temperature, "teacher": self_teacher.teacher_dirs[0]}
    for stage in stages:
        metrics = open_predictor(stage, "paddle-inference", threads).evaluate(test)
        name = os.path.basename(stage)
        report["stages"].append({
            "stage": name, "dir": stage, "size_mb": model_size_mb(stage), "parameters": static_param_count(stage),
            "wall_time_s": seconds.get(step_of_stage(name, args.strategy)),
            **{k: metrics[k] for k in ("sentence_acc", "sentence_acc_ref", "intent_acc", "slot_f1")},
        })
    if "qat" in args.strategy:
        int8_stage = next(s for s in stages if s.endswith("int8"))
        report["qat_prediction_agreement"] = qat_agreement(trainer.model, task, test, int8_stage, threads)
    write_report(report, compress_dir)
    return report


def write_report(report: dict, compress_dir: str) -> None:
    save_json(os.path.join(compress_dir, "compress_report.json"), report)
    rows = [[s["stage"], f"{100 * s['sentence_acc']:.2f}", f"{100 * s['sentence_acc_ref']:.2f}", f"{100 * s['intent_acc']:.2f}",
             f"{100 * s['slot_f1']:.2f}", f"{s['size_mb']:.2f}", f"{s['parameters']:,}",
             "" if s["wall_time_s"] is None else f"{s['wall_time_s']:.0f}"] for s in report["stages"]]
    lines = markdown_table(["stage", "sentence acc", "sentence acc (ref)", "intent acc", "slot F1", "size (MB)", "parameters",
                            "stage wall time (s)"], rows)
    if "qat_prediction_agreement" in report:
        lines.append(
            f"\nDynamic QAT model vs exported int8 graph: {100 * report['qat_prediction_agreement']:.2f} % of test predictions identical."
        )
    write_text(os.path.join(compress_dir, "compress_report.md"), "\n".join(lines) + "\n")
    logger.info("compression report:\n" + "\n".join(lines))
