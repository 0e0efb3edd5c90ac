"""From logits to a trustworthy answer: constrained slot decoding, calibrated confidences and the
numbers that say how well they are calibrated. numpy only (FastDeploy front ends use it without
paddle); deploy/cpp/slu.cc is its C++ twin, tested identical.

Decoding. Slot tags are decoded jointly per utterance (Viterbi) under two constraints:
  * BIO: an I-x tag only continues a B-x or I-x; PAD is never output;
  * intent: only slot types seen with the predicted intent in training (Task.intent_slot_types).
The path maximises the sum of the chosen tags' slot logits (plus learned transitions when the
model has a CRF). Per-token normalisation and the temperature change no path, so the path is
computed on raw logits, in float64, first maximum on ties: additions only, bit-identical in C++.

Confidence. A temperature per head, fitted on dev (Calibration):
  * intent: softmax(intent logits / T_intent); `intent_ranking` is its top 3;
  * slot span: product over its tokens of softmax(slot logits / T_slot) over the tags allowed
    under the intent, taken at the decoded tag; T_slot is fitted so that this is the probability
    that the span (type, start, end) is right;
  * a result is answered (not `fallback`) when every one of its confidences reaches
    `min_confidence`: the intent's and each slot's (answer_score).
"""
import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from task import OUTSIDE_LABEL, PAD_LABEL, LabelMaps, bio_spans

GREEDY, CONSTRAINED = "greedy", "constrained"
DECODERS = [GREEDY, CONSTRAINED]
ECE_BINS = 15
RANKING_SIZE = 3
TEMPERATURE_GRID = np.geomspace(0.05, 20.0, 400)


@dataclasses.dataclass(frozen=True)
class Calibration:
    intent_temperature: float = 1.0
    slot_temperature: float = 1.0
    fitted_on: Optional[str] = None  # what the temperatures were fitted on; None: not fitted

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class SlotConstraints:
    """The allowed tags of a label set: BIO transitions, and the tags of each intent's slot types.

    `start_ok[t]`: tag t may open an utterance; `transition_ok[p, t]`: tag t may follow tag p;
    `intent_tags[i]`: tags allowed under intent i (O, and B-/I- of its slot types)."""

    def __init__(self, labels: LabelMaps, intent_slot_types: Dict[str, Sequence[str]]):
        tags = labels.slot_tags
        kind = [t[2:] if t[:2] in ("B-", "I-") else None for t in tags]
        is_inside = np.array([t.startswith("I-") for t in tags])
        usable = np.array([t != PAD_LABEL for t in tags])
        self.start_ok = usable & ~is_inside
        continues = np.array([[kind[p] is not None and kind[p] == kind[t] for t in range(len(tags))] for p in range(len(tags))])
        self.transition_ok = usable[None, :] & (~is_inside[None, :] | continues)
        self.intent_tags = np.array([[usable[t] and (tags[t] == OUTSIDE_LABEL or kind[t] in set(intent_slot_types.get(intent, ())))
                                      for t in range(len(tags))] for intent in labels.intents])


def viterbi(scores: np.ndarray, allowed: np.ndarray, start_ok: np.ndarray, transition_ok: np.ndarray,
            transitions: Optional[np.ndarray] = None) -> List[int]:
    """The best tag path of one utterance: scores [n, T] (float64), allowed [T] tags, BIO masks,
    optional learned transitions [T, T]. First maximum on ties."""
    n = len(scores)
    if n == 0:
        return []
    emit = np.where(allowed[None, :], scores, -np.inf)
    step = np.where(transition_ok, 0.0 if transitions is None else transitions, -np.inf)
    best = np.where(start_ok, emit[0], -np.inf)
    back = np.zeros((n, len(allowed)), dtype=np.int64)
    for i in range(1, n):
        candidates = best[:, None] + step  # [previous, current]
        back[i] = candidates.argmax(axis=0)
        best = candidates[back[i], np.arange(len(allowed))] + emit[i]
    path = [int(best.argmax())]
    for i in range(n - 1, 0, -1):
        path.append(int(back[i, path[-1]]))
    return path[::-1]


def decode_slots(slot_logits: np.ndarray, intent_id: int, constraints: SlotConstraints, decoder: str = CONSTRAINED,
                 transitions: Optional[np.ndarray] = None) -> List[int]:
    """Tag ids of one utterance's tokens from its slot logits [n, T]."""
    if decoder == GREEDY:
        return slot_logits.argmax(-1).tolist()
    if decoder != CONSTRAINED:
        raise ValueError(f"unknown decoder {decoder!r}: use one of {DECODERS}")
    return viterbi(slot_logits.astype("float64"), constraints.intent_tags[intent_id], constraints.start_ok,
                   constraints.transition_ok, transitions)


def softmax64(logits: np.ndarray, temperature: float, allowed: Optional[np.ndarray] = None) -> np.ndarray:
    """softmax(logits / T) over the last axis in float64, zero outside `allowed`."""
    z = np.asarray(logits, dtype="float64") / temperature
    if allowed is not None:
        z = np.where(allowed, z, -np.inf)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def span_confidences(slot_logits: np.ndarray, tag_ids: Sequence[int], spans: Sequence[Tuple[str, int, int]],
                     allowed: Optional[np.ndarray], temperature: float) -> List[float]:
    """The confidence of each span (type, start, end-exclusive): the product of its tokens'
    probabilities of their decoded tags."""
    if not spans:
        return []
    probs = softmax64(slot_logits, temperature, allowed)
    token_p = probs[np.arange(len(tag_ids)), tag_ids]
    return [float(np.prod(token_p[s:e])) for _, s, e in spans]


def answer_score(intent_confidence: float, slot_confidences: Sequence[float]) -> float:
    """What --min_confidence is compared with: the weakest part of the result."""
    return min([intent_confidence, *slot_confidences])


@dataclasses.dataclass
class Prediction:
    """One utterance decoded: the intent, its calibrated probabilities, a tag per token, the slot
    spans (type, start token, end token exclusive) with their confidences, and the merged logits."""

    intent_id: int
    intent_probs: np.ndarray  # [I], calibrated
    tag_ids: List[int]
    spans: List[Tuple[str, int, int]]
    span_confidences: List[float]
    intent_logits: np.ndarray  # [I]
    slot_logits: np.ndarray  # [tokens, T]

    @property
    def confidence(self) -> float:
        return float(self.intent_probs[self.intent_id])

    @property
    def answer_score(self) -> float:
        return answer_score(self.confidence, self.span_confidences)


class Decoder:
    """Logits of one utterance -> Prediction, under a label set's constraints and a calibration."""

    def __init__(self, labels: LabelMaps, intent_slot_types: Dict[str, Sequence[str]], calibration: Calibration = Calibration(),
                 decoder: str = CONSTRAINED, transitions: Optional[np.ndarray] = None):
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}: use one of {DECODERS}")
        if transitions is not None:
            transitions = np.asarray(transitions, dtype="float64")
            if transitions.shape != (len(labels.slot_tags),) * 2:
                raise ValueError(f"slot transitions of shape {transitions.shape}; {len(labels.slot_tags)} slot tags need a square of that size")
            if decoder == GREEDY:
                raise ValueError("a CRF's transitions need the constrained (Viterbi) decoder")
        self.labels, self.calibration, self.decoder, self.transitions = labels, calibration, decoder, transitions
        self.constraints = SlotConstraints(labels, intent_slot_types)

    @classmethod
    def for_task(cls, task, calibration: Calibration = Calibration(), decoder: str = CONSTRAINED,
                 transitions: Optional[np.ndarray] = None) -> "Decoder":
        return cls(task.labels, task.intent_slot_types, calibration, decoder, transitions)

    def __call__(self, intent_logits: np.ndarray, slot_logits: np.ndarray) -> Prediction:
        intent_logits, slot_logits = np.asarray(intent_logits, dtype="float32"), np.asarray(slot_logits, dtype="float32")
        intent_id = int(intent_logits.argmax())
        tag_ids = decode_slots(slot_logits, intent_id, self.constraints, self.decoder, self.transitions)
        spans = bio_spans([self.labels.slot_tags[t] for t in tag_ids])
        # greedy tags may lie outside the intent's tags: their confidences are then over all tags
        confidences = span_confidences(slot_logits, tag_ids, spans, self.allowed_tags(intent_id), self.calibration.slot_temperature)
        probs = softmax64(intent_logits, self.calibration.intent_temperature)
        return Prediction(intent_id, probs, tag_ids, spans, confidences, intent_logits, slot_logits)

    def allowed_tags(self, intent_id: int) -> Optional[np.ndarray]:
        return self.constraints.intent_tags[intent_id] if self.decoder == CONSTRAINED else None

    def fit(self, predictions: Sequence[Prediction], utterances, fitted_on: str) -> Calibration:
        """Temperatures fitted on labelled utterances (data.corpus.Utterance) and this decoder's
        predictions of them: intent by likelihood, slots by span correctness."""
        gold = np.array([self.labels.intent_id[u.intent] for u in utterances])
        intent_t = fit_intent_temperature(np.stack([p.intent_logits for p in predictions]), gold)
        spans = SpanTokens(self, predictions, utterances)
        return Calibration(intent_t, fit_span_temperature(spans.confidences, spans.correct), fitted_on)


class SpanTokens:
    """The tokens of every predicted span of a set of predictions, stacked, so that the span
    confidences at any temperature are a few array operations (calibration fits try hundreds)."""

    def __init__(self, decoder: Decoder, predictions: Sequence[Prediction], utterances):
        rows, chosen, owner, correct = [], [], [], []
        for p, utt in zip(predictions, utterances):
            gold = set(bio_spans(utt.token_tags()))
            allowed = decoder.allowed_tags(p.intent_id)
            logits = p.slot_logits.astype("float64") if allowed is None else np.where(allowed, p.slot_logits, -np.inf)
            for span in p.spans:
                _, s, e = span
                rows.append(logits[s:e])
                chosen.extend(p.tag_ids[s:e])
                owner.extend([len(correct)] * (e - s))
                correct.append(span in gold)
        self.rows = np.concatenate(rows) if rows else np.zeros((0, len(decoder.labels.slot_tags)))
        self.chosen, self.owner, self.correct = np.array(chosen, dtype=int), np.array(owner, dtype=int), np.array(correct, dtype=float)

    def confidences(self, temperature: float) -> np.ndarray:
        z = self.rows / temperature
        z = z - z.max(axis=1, keepdims=True)
        token_logp = z[np.arange(len(z)), self.chosen] - np.log(np.exp(z).sum(axis=1))
        return np.exp(np.bincount(self.owner, weights=token_logp, minlength=len(self.correct)))


# ----------------------------------------------------------------------------- calibration


def fit_intent_temperature(intent_logits: np.ndarray, gold: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the gold intents."""
    z = np.asarray(intent_logits, dtype="float64")
    nll = [-np.log(np.maximum(softmax64(z, t)[np.arange(len(gold)), gold], 1e-300)).mean() for t in TEMPERATURE_GRID]
    return float(TEMPERATURE_GRID[int(np.argmin(nll))])


def fit_span_temperature(span_confidence_at: Callable[[float], np.ndarray], correct: np.ndarray) -> float:
    """The temperature that minimises the binary cross-entropy of span confidences against span
    correctness; `span_confidence_at(T)` gives the confidences of the same spans at T."""
    if len(correct) == 0:
        return 1.0
    losses = []
    for t in TEMPERATURE_GRID:
        p = np.clip(span_confidence_at(t), 1e-12, 1 - 1e-12)
        losses.append(-(correct * np.log(p) + (1 - correct) * np.log(1 - p)).mean())
    return float(TEMPERATURE_GRID[int(np.argmin(losses))])


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with `bins` equal-width bins: sum over bins of |bin share| x |accuracy - mean confidence|."""
    confidence, correct = np.asarray(confidence, dtype="float64"), np.asarray(correct, dtype="float64")
    if len(confidence) == 0:
        return 0.0
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        member = which == b
        if member.any():
            ece += member.mean() * abs(correct[member].mean() - confidence[member].mean())
    return float(ece)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> List[dict]:
    """Per bin: its range, count, mean confidence and accuracy (a reliability diagram's data)."""
    confidence, correct = np.asarray(confidence, dtype="float64"), np.asarray(correct, dtype="float64")
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        member = which == b
        out.append({"low": b / bins, "high": (b + 1) / bins, "count": int(member.sum()),
                    "confidence": float(confidence[member].mean()) if member.any() else None,
                    "accuracy": float(correct[member].mean()) if member.any() else None})
    return out


def coverage_curve(score: np.ndarray, correct: np.ndarray) -> List[dict]:
    """Selective prediction: answering the utterances with score >= each threshold, the share
    answered and the accuracy of the answered ones (thresholds = the distinct scores, descending)."""
    score, correct = np.asarray(score, dtype="float64"), np.asarray(correct, dtype="float64")
    order = np.argsort(-score, kind="stable")
    s, c = score[order], np.cumsum(correct[order])
    out = []
    for k in range(len(s)):
        if k + 1 < len(s) and s[k + 1] == s[k]:
            continue  # thresholds answer all utterances with the same score together
        out.append({"threshold": float(s[k]), "coverage": (k + 1) / len(s), "accuracy": float(c[k] / (k + 1))})
    return out


def threshold_for_accuracy(curve: Sequence[dict], target: float) -> Optional[dict]:
    """The point of the largest coverage whose answered accuracy reaches `target` (None if none)."""
    ok = [p for p in curve if p["accuracy"] >= target]
    return max(ok, key=lambda p: p["coverage"]) if ok else None
