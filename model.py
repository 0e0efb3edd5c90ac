"""Networks and losses: the joint intent + slot model on an ERNIE 3.0 Tiny encoder (built from
scratch or from pretrained weights) and its loss; the Bi-LSTM distillation student and the
distillation losses."""
import json
import logging
import os
from typing import Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import safetensors.numpy
from paddlenlp.transformers import ErnieConfig, ErnieModel, ErniePretrainedModel

import export_format
from task import CharTokenizer, LabelMaps, Task

logger = logging.getLogger("ernie_tiny_slu")  # the project's log (training.setup_logging)


class JointErnie(ErniePretrainedModel):
    """Shared ERNIE encoder; intent head on the pooled [CLS] output, slot head on every token.

    `config.num_intents` and `config.num_slot_tags` size the heads; they are saved in
    config.json, so `JointErnie.from_pretrained(output_dir)` restores the whole model. With
    `config.slot_crf` the slot head is a linear-chain CRF: `slot_transitions` [T, T] scores tag
    pairs (previous, current); the graph still outputs the per-token emissions, and decoding adds
    the transitions (decoding.py), so every runtime runs the same graph."""

    def __init__(self, config: ErnieConfig):
        super().__init__(config)
        self.ernie = ErnieModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob)
        self.intent_classifier = nn.Linear(config.hidden_size, config.num_intents)
        self.slot_classifier = nn.Linear(config.hidden_size, config.num_slot_tags)
        if getattr(config, "slot_crf", False):
            self.slot_transitions = self.create_parameter([config.num_slot_tags] * 2, default_initializer=nn.initializer.Constant(0.0))

    def forward(
        self, input_ids: paddle.Tensor, token_type_ids: paddle.Tensor = None, attention_mask=None
    ) -> Tuple[paddle.Tensor, paddle.Tensor]:
        # attention_mask: None derives it from padding; DynaBERT passes its own ([None, None]).
        if attention_mask is None:
            attention_mask = padding_mask(input_ids, self.config.pad_token_id)
        # segments from the ids themselves, so the graph keeps its one input on every runtime
        # (configs saved before sentence pairs have no sep_token_id: segment 0 throughout)
        if token_type_ids is None and getattr(self.config, "sep_token_id", None) is not None:
            token_type_ids = segment_ids(input_ids, self.config.sep_token_id)
        sequence_output, pooled_output = self.ernie(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        intent_logits = self.intent_classifier(self.dropout(pooled_output))
        slot_logits = self.slot_classifier(self.dropout(sequence_output))
        return intent_logits, slot_logits


def padding_mask(input_ids: paddle.Tensor, pad_id: int) -> paddle.Tensor:
    """[batch, seq] float mask, 1 on tokens and 0 on padding: the tokenizer-style 2-D mask that
    ERNIE, and PaddleNLP's DynaBERT and QAT replacements of its forward, all accept. Built from
    scale/multiply/clip because ERNIE's own `input_ids == pad_token_id` exports a 0-D
    fill_constant that OpenVINO's Paddle frontend and the Paddle Lite runtime reject (and
    FastDeploy's OpenVINO has no `abs`)."""
    offset = paddle.scale(input_ids.astype("float32"), bias=-float(pad_id))
    return paddle.clip(offset * offset, 0.0, 1.0)


def segment_ids(input_ids: paddle.Tensor, sep_id: int) -> paddle.Tensor:
    """[batch, seq] int64 ERNIE token types of `[CLS] utterance [SEP] context...` rows: 0 up to
    the first [SEP], 1 after it (padding too; it is masked). Arithmetic, as padding_mask."""
    offset = paddle.scale(input_ids.astype("float32"), bias=-float(sep_id))
    is_sep = 1.0 - paddle.clip(offset * offset, 0.0, 1.0)
    before = paddle.cumsum(is_sep, axis=1) - is_sep  # [SEP]s strictly before each position
    return paddle.clip(before, 0.0, 1.0).astype("int64")


class JointLoss(nn.Layer):
    """Intent cross-entropy + `slot_weight` x the slot loss over real tokens ([CLS], [SEP] and
    padding carry the PAD tag and are ignored): per-token cross-entropy, or with `transitions`
    (a CRF head's parameter) the CRF's negative log-likelihood per real token. With
    `intent_label_smoothing` ε the intent's target is (1 - ε) on the gold intent + ε spread evenly
    over all intents (a candidate of docs/model-and-context.md, "Toward 86").

    With an ensemble's targets (teachers.py: `ensemble_intent` [B, intents] and `ensemble_slots`
    [B, S, tags], probabilities at `temperature` T) the loss is `distill_alpha` x the above +
    (1 - distill_alpha) x T^2 x the soft cross-entropy of the intent and, weighted as the slot
    loss, of each tagged token's slot emissions against them (vanilla KD, as DistillLoss). Rows
    with `has_gold` 0 ([B]: the ensemble's augmented transfer rows) learn from the ensemble alone."""

    def __init__(self, pad_slot_id: int, slot_weight: float = 1.0, transitions=None, intent_label_smoothing: float = 0.0,
                 distill_alpha: float = 1.0, temperature: float = 1.0):
        super().__init__()
        self.pad_slot_id, self.slot_weight, self.transitions = pad_slot_id, slot_weight, transitions
        self.intent_label_smoothing, self.distill_alpha, self.temperature = intent_label_smoothing, distill_alpha, temperature

    def forward(self, logits, labels, ensemble_intent=None, ensemble_slots=None, has_gold=None):
        intent_logits, slot_logits = logits
        intent_label, slot_labels = labels
        mask = (slot_labels != self.pad_slot_id).astype("float32")
        # rows with has_gold 0 (augmented copies, labelled by the ensemble alone) carry no gold loss
        gold = paddle.ones([intent_label.shape[0]], "float32") if has_gold is None else has_gold
        gold_tokens = paddle.clip((mask * gold.unsqueeze(-1)).sum(), min=1.0)
        intent_loss = F.cross_entropy(intent_logits, intent_label, label_smoothing=self.intent_label_smoothing, reduction="none")
        intent_loss = (intent_loss.reshape([-1]) * gold).sum() / paddle.clip(gold.sum(), min=1.0)
        if self.transitions is None:
            slot_loss = F.cross_entropy(slot_logits, slot_labels.unsqueeze(-1), ignore_index=self.pad_slot_id, reduction="none")
            slot_loss = (slot_loss.squeeze(-1) * mask * gold.unsqueeze(-1)).sum() / gold_tokens
        else:
            # the CRF's loop runs up to the last tagged position, not over the context
            width = int(mask.sum(1).max()) + 1
            nll = crf_nll(slot_logits[:, :width], slot_labels[:, :width], mask[:, :width], self.transitions)
            slot_loss = (nll * gold).sum() / gold_tokens
        loss = intent_loss + self.slot_weight * slot_loss
        if ensemble_intent is None:
            return loss
        t = self.temperature
        soft = soft_cross_entropy(intent_logits, ensemble_intent, t).mean() + \
            self.slot_weight * (soft_cross_entropy(slot_logits, ensemble_slots, t) * mask).sum() / paddle.clip(mask.sum(), min=1.0)
        return self.distill_alpha * loss + (1 - self.distill_alpha) * t * t * soft


def soft_cross_entropy(logits, target_probs, temperature: float):
    """Cross-entropy of softmax(logits / T) against target probabilities, over the last axis."""
    return -(target_probs * F.log_softmax(logits / temperature, axis=-1)).sum(axis=-1)


def crf_nll(emissions, tags, mask, transitions):
    """Negative log-likelihood of each row's tag path under a linear-chain CRF.

    emissions [B, S, T]; tags [B, S]; mask [B, S] 1 on the real tokens, which are contiguous
    (after [CLS]); transitions [T, T] (previous, current). No start/stop scores: decoding's BIO
    masks say which tags may open an utterance. Returns [B]."""
    num_tags = emissions.shape[-1]
    one_hot = F.one_hot(tags.clip(0, num_tags - 1), num_tags)  # [B, S, T]
    gold_emit = (emissions * one_hot).sum(-1)  # [B, S]
    pair = paddle.einsum("bsi,ij,bsj->bs", one_hot[:, :-1], transitions, one_hot[:, 1:])  # [B, S-1]
    gold = (gold_emit * mask).sum(1) + (pair * mask[:, :-1] * mask[:, 1:]).sum(1)
    # forward algorithm; alpha stays at zero before the first real token and carries over padding
    alpha = paddle.zeros_like(emissions[:, 0])  # [B, T]
    started = paddle.zeros_like(mask[:, :1])  # [B, 1]: 1 once a real token was seen
    for s in range(emissions.shape[1]):
        m = mask[:, s : s + 1]
        step = paddle.logsumexp(alpha.unsqueeze(2) + transitions, axis=1) + emissions[:, s]
        new = started * step + (1 - started) * emissions[:, s]  # the first real token: its emissions alone
        alpha = m * new + (1 - m) * alpha
        started = paddle.maximum(started, m)
    log_z = paddle.logsumexp(alpha, axis=1) * started.squeeze(1)
    return log_z - gold


def offline_hint(name: str) -> str:
    return (
        f"could not load {name!r}: it is neither a local directory with model files nor reachable "
        "on the PaddleNLP model hub (no network?). Pass --model_name_or_path a local directory saved "
        "with save_pretrained (config.json, model.safetensors, vocab.txt), or train from scratch "
        "with --from_scratch (same architecture, vocabulary built from the training data)."
    )


SAFE_WEIGHTS, PICKLED_WEIGHTS = "model.safetensors", "model_state.pdparams"  # PaddleNLP's weight file names


def load_pretrained(name_or_dir: str, labels: LabelMaps, trust_pickled_weights: bool = False, **config_overrides) -> JointErnie:
    """ERNIE 3.0 Tiny weights by hub name or local directory; the two heads start fresh unless the
    directory already holds a JointErnie. A JointErnie trained on other labels (its label files
    differ from `labels`) keeps its encoder and gets heads for `labels` with the rows of the labels
    both share carried over (relabel_heads). A local directory is read from model.safetensors; one
    with only pickled weights (model_state.pdparams: unpickling can run any code) is refused unless
    `trust_pickled_weights`. Hub names download PaddleNLP's published (pickled) weights."""
    saved_labels = None
    if os.path.isdir(name_or_dir):
        safe = os.path.isfile(os.path.join(name_or_dir, SAFE_WEIGHTS))
        if not safe and os.path.isfile(os.path.join(name_or_dir, PICKLED_WEIGHTS)):
            if not trust_pickled_weights:
                raise ValueError(f"{name_or_dir} holds pickled weights ({PICKLED_WEIGHTS}) and no {SAFE_WEIGHTS}: loading a "
                                 "pickle runs whatever code it carries. If you made this file, pass --trust_pickled_weights "
                                 "(the run then writes its own weights as safetensors)")
            logger.warning(f"{name_or_dir}: loading pickled weights ({PICKLED_WEIGHTS}) as --trust_pickled_weights asks")
        label_files = export_format.label_files(name_or_dir)
        if all(os.path.isfile(f) for f in label_files):
            saved_labels = LabelMaps.from_files(*label_files)
    try:
        # The config is loaded first: from_pretrained would hand keys that a plain ERNIE config.json
        # lacks (num_intents, num_slot_tags) to __init__ instead of the config.
        config = ErnieConfig.from_pretrained(name_or_dir, **config_overrides)
        heads = saved_labels if saved_labels is not None and getattr(config, "num_intents", None) else labels
        config.num_intents, config.num_slot_tags = len(heads.intents), len(heads.slot_tags)
        model = JointErnie.from_pretrained(name_or_dir, config=config)
    except OSError as e:
        raise OSError(offline_hint(name_or_dir)) from e
    if heads != labels:
        relabel_heads(model, heads, labels)
    return model


def relabel_heads(model: JointErnie, old: LabelMaps, new: LabelMaps) -> dict:
    """Give `model` (trained on `old` labels) heads for `new`: fresh classifier columns, then the
    columns of every label both share copied over, and the CRF transitions between shared slot
    tags. The encoder is untouched. Logs and returns the labels added and removed."""
    change = {}
    for kind, before, after, layer_name in (("intents", old.intents, new.intents, "intent_classifier"),
                                            ("slot tags", old.slot_tags, new.slot_tags, "slot_classifier")):
        layer = getattr(model, layer_name)
        # initialised as a new JointErnie's heads are (normal, the config's initializer_range; bias 0)
        fresh = nn.Linear(layer.weight.shape[0], len(after), weight_attr=nn.initializer.Normal(std=model.config.initializer_range))
        weight, bias = fresh.weight.numpy(), fresh.bias.numpy()
        shared = [(before.index(label), j) for j, label in enumerate(after) if label in before]
        for i, j in shared:
            weight[:, j], bias[j] = layer.weight.numpy()[:, i], layer.bias.numpy()[i]
        fresh.weight.set_value(weight)
        fresh.bias.set_value(bias)
        setattr(model, layer_name, fresh)
        change[kind] = {"kept": len(shared), "added": [x for x in after if x not in before],
                        "removed": [x for x in before if x not in after]}
    if hasattr(model, "slot_transitions"):
        old_t, new_t = model.slot_transitions.numpy(), np.zeros([len(new.slot_tags)] * 2, dtype="float32")
        index = {tag: old.slot_tags.index(tag) for tag in new.slot_tags if tag in old.slot_tags}
        for a, i in index.items():
            for b, k in index.items():
                new_t[new.slot_tags.index(a), new.slot_tags.index(b)] = old_t[i, k]
        model.slot_transitions = model.create_parameter(list(new_t.shape), default_initializer=nn.initializer.Assign(new_t))
    model.config.num_intents, model.config.num_slot_tags = len(new.intents), len(new.slot_tags)
    logger.info("label set changed from the loaded model's: " + "; ".join(
        f"{kind}: {c['kept']} kept, added {c['added']}, removed {c['removed']}" for kind, c in change.items()))
    return change


def unwrap(model):
    """The model inside a paddle.DataParallel wrapper (data-parallel training), or the model."""
    return model._layers if isinstance(model, paddle.DataParallel) else model


def save_safe(model, directory: str) -> None:
    """config.json and the weights as model.safetensors (no pickle), replacing pickled ones."""
    unwrap(model).save_pretrained(directory, safe_serialization=True)
    if os.path.isfile(os.path.join(directory, PICKLED_WEIGHTS)):
        os.remove(os.path.join(directory, PICKLED_WEIGHTS))


def scratch_config(architecture: str, tokenizer: CharTokenizer, **config_overrides) -> ErnieConfig:
    """The published architecture of `architecture` (e.g. ernie-3.0-tiny-nano-v2-zh: 4 layers,
    hidden 312, 12 heads, FFN 1248) over `tokenizer`'s vocabulary. No pretrained weight is involved."""
    known = ErnieConfig.pretrained_init_configuration
    if architecture not in known:
        sizes = sorted(k for k in known if k.startswith("ernie-3.0-tiny"))
        raise ValueError(f"unknown architecture {architecture!r}; ERNIE 3.0 Tiny sizes: {', '.join(sizes)}")
    config = ErnieConfig(**{**known[architecture], **config_overrides})
    config.vocab_size, config.pad_token_id, config.sep_token_id = len(tokenizer), tokenizer.pad_id, tokenizer.sep_id
    return config


def build_from_scratch(architecture: str, task: Task, **config_overrides) -> JointErnie:
    """A randomly initialised JointErnie of `architecture` (scratch_config) with the task's
    vocabulary and labels."""
    config = scratch_config(architecture, task.tokenizer, **config_overrides)
    config.num_intents, config.num_slot_tags = len(task.labels.intents), len(task.labels.slot_tags)
    return JointErnie(config)


class BiLSTMJoint(nn.Layer):
    """The distillation student: character embedding -> Bi-LSTM -> intent head on the mean of the
    real tokens' states, slot head on every token. Same input and outputs as JointErnie, so the
    same windows, metrics, export and inference code serve both.

    The backward direction is a second LSTM over each row reversed up to its length, with the
    reversal done as a matmul by a permutation matrix: nn.LSTM's own `direction="bidirect"` needs
    `sequence_length` to keep padding out, which ONNX Runtime ignores and FastDeploy's OpenVINO
    cannot convert; this form gives the same states on every backend (Paddle Inference, ONNX
    Runtime, OpenVINO, Paddle Lite), padded or not."""

    def __init__(self, vocab_size: int, num_intents: int, num_slot_tags: int, pad_token_id: int = 0,
                 embedding_dim: int = 128, hidden_size: int = 128, dropout: float = 0.1):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, num_intents=num_intents, num_slot_tags=num_slot_tags, pad_token_id=pad_token_id,
                           embedding_dim=embedding_dim, hidden_size=hidden_size, dropout=dropout)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_token_id)
        self.lstm_forward = nn.LSTM(embedding_dim, hidden_size)
        self.lstm_backward = nn.LSTM(embedding_dim, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.intent_classifier = nn.Linear(2 * hidden_size, num_intents)
        self.slot_classifier = nn.Linear(2 * hidden_size, num_slot_tags)

    def forward(self, input_ids: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        mask = padding_mask(input_ids, self.config["pad_token_id"])  # [B, S]
        lengths = mask.sum(axis=1, keepdim=True)
        positions = paddle.cumsum(paddle.ones_like(mask), axis=1) - 1
        source = mask * (lengths - 1 - positions) + (1 - mask) * positions  # reversed within the length
        # [B, S, S] one-hot rows, its own inverse; arithmetic rather than `==`, which Paddle Lite's
        # x86 runtime broadcasts wrongly
        offset = source.unsqueeze(2) - positions.unsqueeze(1)
        reverse = 1 - paddle.clip(offset * offset, 0.0, 1.0)
        embedded = self.dropout(self.embedding(input_ids))
        # explicit zero states: the default ones export as a fill_constant FastDeploy's OpenVINO rejects
        zeros = paddle.zeros_like(embedded[:, 0, :1]).expand([-1, self.config["hidden_size"]]).unsqueeze(0)
        forward_states, _ = self.lstm_forward(embedded, (zeros, zeros))
        backward_states, _ = self.lstm_backward(paddle.matmul(reverse, embedded), (zeros, zeros))
        states = paddle.concat([forward_states, paddle.matmul(reverse, backward_states)], axis=-1)
        pooled = (states * mask.unsqueeze(-1)).sum(axis=1) / lengths
        return self.intent_classifier(self.dropout(pooled)), self.slot_classifier(self.dropout(states))

    def save(self, directory: str) -> None:
        """student_config.json and the weights as model.safetensors (no pickle)."""
        os.makedirs(directory, exist_ok=True)
        safetensors.numpy.save_file({k: v.numpy() for k, v in self.state_dict().items()}, os.path.join(directory, SAFE_WEIGHTS))
        with open(os.path.join(directory, "student_config.json"), "w") as f:
            json.dump(self.config, f, indent=2)

    @classmethod
    def load(cls, directory: str) -> "BiLSTMJoint":
        with open(os.path.join(directory, "student_config.json")) as f:
            model = cls(**json.load(f))
        model.set_state_dict(
            {k: paddle.to_tensor(v) for k, v in safetensors.numpy.load_file(os.path.join(directory, SAFE_WEIGHTS)).items()}
        )
        return model


class DistillLoss(nn.Layer):
    """Student against teacher logits, on intent and on the slot logits of real tokens.

    objective "mse": mean squared error on logits (the PaddleNLP ERNIE -> Bi-LSTM tutorial).
    objective "kd": vanilla KD: alpha x cross-entropy with the gold labels (rows that have them,
    `has_gold` = 1) + (1 - alpha) x T^2 x soft cross-entropy against softmax(teacher / T)."""

    def __init__(self, pad_slot_id: int, objective: str = "mse", temperature: float = 1.0, alpha: float = 0.5, slot_weight: float = 1.0):
        super().__init__()
        if objective not in ("mse", "kd"):
            raise ValueError(f"unknown distillation objective {objective!r}: use mse or kd")
        self.pad_slot_id, self.objective, self.temperature, self.alpha, self.slot_weight = (
            pad_slot_id,
            objective,
            temperature,
            alpha,
            slot_weight,
        )

    def forward(self, logits, teacher_logits, token_mask, gold=None):
        """token_mask [B, S]: 1 on real characters. gold: (intent_label [B], slot_labels [B, S],
        has_gold [B]) for "kd"."""
        (intent, slots), (t_intent, t_slots) = logits, teacher_logits
        tokens = token_mask.sum()
        if self.objective == "mse":
            intent_term = ((intent - t_intent) ** 2).mean()
            slot_term = (((slots - t_slots) ** 2).mean(axis=-1) * token_mask).sum() / tokens
            return intent_term + self.slot_weight * slot_term
        t = self.temperature
        soft_ce = lambda s, teacher: soft_cross_entropy(s, F.softmax(teacher / t, axis=-1), t)
        soft = soft_ce(intent, t_intent).mean() + self.slot_weight * (soft_ce(slots, t_slots) * token_mask).sum() / tokens
        intent_label, slot_labels, has_gold = gold
        hard = JointLoss(self.pad_slot_id, self.slot_weight)(logits, (intent_label, slot_labels), has_gold=has_gold)
        return self.alpha * hard + (1 - self.alpha) * t * t * soft


def slot_transitions(model) -> Optional[np.ndarray]:
    """A CRF slot head's transition scores [T, T] (float64), or None; found by name, so that
    compression's wrappers (DynaBERT's OFA, QAT) around the model do not hide it."""
    for name, parameter in model.named_parameters():
        if name.split(".")[-1] == "slot_transitions":
            return parameter.numpy().astype("float64")
    return None
