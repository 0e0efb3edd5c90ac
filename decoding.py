"""From logits to a trustworthy answer: constrained slot decoding, calibrated confidences and the
numbers that say how well they are calibrated. numpy, and no paddle (FastDeploy front ends use it);
deploy/cpp/decoding.cc is the C++ twin of its Viterbi and forward-backward (tested identical), which
the Decoder runs through ctypes when `make setup` has built it, because numpy's per-call overhead
on arrays this small is comparable to the smallest model's own time (docs/performance.md, "Targets").

Decoding. Slot tags are decoded jointly per utterance (Viterbi) under two constraints:
  * BIO: an I-x tag only continues a B-x or I-x; PAD is never output;
  * intent: only slot types seen with the predicted intent in training (Task.intent_slot_types).
The path maximises the sum of the chosen tags' slot logits (plus learned transitions when the
model has a CRF). Per-token normalisation and the temperature change no path, so the path is
computed on raw logits, in float64, first maximum on ties: additions only, bit-identical in C++.

Confidence. A temperature per head, fitted on dev (Calibration):
  * intent: softmax(intent logits / T_intent); `intent_ranking` is its top 3;
  * slot span: the marginal probability of the span (its tags, then no continuation of it) over
    every tag path the constraints allow, by forward-backward on slot logits / T_slot (plus the
    CRF's transitions); T_slot is fitted by the likelihood of the spans being right on dev;
  * a result is answered (not `fallback`) when every one of its confidences reaches
    `min_confidence`: the intent's and each slot's (answer_score).
"""
import ctypes
import dataclasses
import functools
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from task import OUTSIDE_LABEL, PAD_LABEL, LabelMaps, bio_spans

# deploy/cpp/decoding.cc through ctypes (`make setup` builds it with g++): softmax64, viterbi and
# span_confidences without numpy's per-call overhead, the same paths and confidences (tested)
NATIVE_LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", "libslu_decoding.so")
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
        self.usable = usable
        self.start_ok = usable & ~is_inside
        continues = np.array([[kind[p] is not None and kind[p] == kind[t] for t in range(len(tags))] for p in range(len(tags))])
        self.transition_ok = usable[None, :] & (~is_inside[None, :] | continues)
        self.intent_tags = np.array([[usable[t] and (tags[t] == OUTSIDE_LABEL or kind[t] in set(intent_slot_types.get(intent, ())))
                                      for t in range(len(tags))] for intent in labels.intents])


def transition_scores(transition_ok: np.ndarray, transitions: Optional[np.ndarray] = None) -> np.ndarray:
    """[previous, current] scores a path adds per step: a CRF's transitions (or 0), -inf where BIO forbids."""
    return np.where(transition_ok, 0.0 if transitions is None else transitions, -np.inf)


def viterbi(scores: np.ndarray, allowed: np.ndarray, start_ok: np.ndarray, step: np.ndarray) -> List[int]:
    """The best tag path of one utterance: scores [n, T] (float64), allowed [T] tags, the tags that
    may open it, step scores [T, T] (transition_scores). First maximum on ties."""
    n, tags = len(scores), np.flatnonzero(allowed)
    if n == 0 or len(tags) == 1:  # no choice: an intent without slots allows O alone
        return tags.tolist() * n
    emit = np.where(allowed[None, :], scores, -np.inf)
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


def softmax64(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) over the last axis in float64."""
    z = np.asarray(logits, dtype="float64") / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def span_confidences(slot_logits: np.ndarray, tag_ids: Sequence[int], spans: Sequence[Tuple[str, int, int]], allowed: np.ndarray,
                     start_ok: np.ndarray, step: np.ndarray, continues: Sequence[Optional[int]], temperature: float) -> List[float]:
    """The probability of each decoded span (type, start, end-exclusive) being exactly right: the
    marginal, over every tag path the constraints allow, of the span's tags followed by no
    continuation of it. Paths weigh exp(sum of logits / T + step scores); forward-backward with
    each step normalised (the scale factors c_i cancel out of the marginal but for those inside
    the span). `continues[k]` is the I- tag of span k's type (None if it has none)."""
    if not spans:
        return []
    z = np.where(allowed, np.asarray(slot_logits, dtype="float64") / temperature, -np.inf)  # [n, T]
    psi = np.exp(z - z.max(axis=1, keepdims=True))  # potentials, 0 outside `allowed`
    moves = np.exp(step)  # [previous, current], 0 where BIO forbids
    n = len(z)
    alpha, beta, scale = np.empty_like(psi), np.ones_like(psi), np.empty(n)
    alpha[0] = np.where(start_ok, psi[0], 0.0)
    scale[0] = alpha[0].sum()
    alpha[0] /= scale[0]
    for i in range(1, n):
        alpha[i] = (alpha[i - 1] @ moves) * psi[i]
        scale[i] = alpha[i].sum()
        alpha[i] /= scale[i]
    for i in range(n - 2, -1, -1):
        beta[i] = moves @ (psi[i + 1] * beta[i + 1]) / scale[i + 1]
    out = []
    for (_, s, e), inside in zip(spans, continues):
        p = alpha[s, tag_ids[s]]
        for i in range(s + 1, e):
            p *= moves[tag_ids[i - 1], tag_ids[i]] * psi[i, tag_ids[i]] / scale[i]
        if e < n:
            after = moves[tag_ids[e - 1]] * psi[e] * beta[e]
            p *= (after.sum() - (0.0 if inside is None else after[inside])) / scale[e]
        out.append(float(p))
    return out


def answer_score(intent_confidence: float, slot_confidences: Sequence[float]) -> float:
    """What --min_confidence is compared with: the weakest part of the result."""
    return min([intent_confidence, *slot_confidences])


@functools.lru_cache(maxsize=None)
def native_library() -> Optional[ctypes.CDLL]:
    """build/libslu_decoding.so, or None when it is not built (decoding then runs in numpy)."""
    if not os.path.isfile(NATIVE_LIBRARY):
        return None
    try:
        lib = ctypes.CDLL(NATIVE_LIBRARY)
    except OSError as e:
        raise RuntimeError(f"{NATIVE_LIBRARY}: cannot be loaded ({e}); rebuild it with `make setup` or delete it") from None
    p, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    lib.slu_decoding_new.restype, lib.slu_decoding_new.argtypes = p, [i, i, p, p, p, p, p]
    lib.slu_decoding_free.restype, lib.slu_decoding_free.argtypes = None, [p]
    lib.slu_decode.restype, lib.slu_decode.argtypes = i, [p, p, i, d, p, i, p, p]
    lib.slu_span_confidences.restype, lib.slu_span_confidences.argtypes = i, [p, p, p, i, i, d, p, i, p]
    return lib


class NativeDecoding:
    """softmax64, viterbi and span_confidences under one label set's constraints, run by
    deploy/cpp/decoding.cc (its twins of them)."""

    def __init__(self, lib: ctypes.CDLL, constraints: SlotConstraints, transitions: Optional[np.ndarray], inside_tags: np.ndarray):
        self.lib, tags, self.num_intents = lib, len(constraints.start_ok), len(constraints.intent_tags)
        # 0/1 tables as C char arrays; slu_decoding_new copies them
        tables = [
            np.ascontiguousarray(a, dtype=np.int8) for a in (constraints.start_ok, constraints.transition_ok, constraints.intent_tags)
        ]
        crf = None if transitions is None else np.ascontiguousarray(transitions, dtype=np.float64)
        inside = np.ascontiguousarray(inside_tags, dtype=np.int32)
        self.handle = lib.slu_decoding_new(tags, self.num_intents, tables[0].ctypes.data, tables[1].ctypes.data,
                                           None if crf is None else crf.ctypes.data, tables[2].ctypes.data, inside.ctypes.data)
        if not self.handle:
            raise MemoryError("slu_decoding_new")

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.slu_decoding_free(self.handle)

    def decode(self, intent_logits: np.ndarray, slot_logits: np.ndarray, intent_temperature: float) -> Tuple[int, np.ndarray, List[int]]:
        """(intent id, softmax64 of the intent logits, viterbi path) of float32 C-contiguous logits."""
        probs, tag_ids = np.empty(len(intent_logits)), np.empty(len(slot_logits), dtype=np.int32)
        intent_id = self.lib.slu_decode(self.handle, intent_logits.ctypes.data, len(intent_logits), intent_temperature,
                                        slot_logits.ctypes.data, len(slot_logits), probs.ctypes.data, tag_ids.ctypes.data)
        if intent_id < 0:
            raise ValueError(f"slu_decode failed: {len(intent_logits)} intent logits for {self.num_intents} intents")
        return intent_id, probs, tag_ids.tolist()

    def span_confidences(self, slot_logits: np.ndarray, tag_ids: Sequence[int], spans: Sequence[Tuple[str, int, int]],
                         intent_id: int, temperature: float) -> List[float]:
        if not spans:
            return []
        ids = np.asarray(tag_ids, dtype=np.int32)
        bounds = np.array([(s, e) for _, s, e in spans], dtype=np.int32)
        out = np.empty(len(spans), dtype=np.float64)
        if self.lib.slu_span_confidences(self.handle, slot_logits.ctypes.data, ids.ctypes.data, len(ids), intent_id, temperature,
                                         bounds.ctypes.data, len(spans), out.ctypes.data):
            raise ValueError(f"slu_span_confidences failed (intent {intent_id})")
        return out.tolist()


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
    """Logits of one utterance -> Prediction, under a label set's constraints and a calibration.
    `native`: constrained decoding runs in deploy/cpp/decoding.cc when build/libslu_decoding.so
    is built (`implementation` says which ran); False: numpy always (the reference)."""

    def __init__(self, labels: LabelMaps, intent_slot_types: Dict[str, Sequence[str]], calibration: Calibration = Calibration(),
                 decoder: str = CONSTRAINED, transitions: Optional[np.ndarray] = None, native: bool = True):
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}: use one of {DECODERS}")
        if transitions is not None:
            transitions = np.asarray(transitions, dtype="float64")
            if transitions.shape != (len(labels.slot_tags),) * 2:
                raise ValueError(
                    f"slot transitions of shape {transitions.shape}; {len(labels.slot_tags)} slot tags need a square of that size"
                )
            if decoder == GREEDY:
                raise ValueError("a CRF's transitions need the constrained (Viterbi) decoder")
        self.labels, self.calibration, self.decoder, self.transitions = labels, calibration, decoder, transitions
        self.constraints = SlotConstraints(labels, intent_slot_types)
        self.step = transition_scores(self.constraints.transition_ok, transitions)
        self.inside_tag = {tag[2:]: i for i, tag in enumerate(labels.slot_tags) if tag.startswith("I-")}
        lib = native_library() if native and decoder == CONSTRAINED else None
        inside_of_tag = [self.inside_tag.get(tag[2:], -1) if tag[:2] in ("B-", "I-") else -1 for tag in labels.slot_tags]
        self.native = NativeDecoding(lib, self.constraints, transitions, np.array(inside_of_tag)) if lib else None

    @property
    def implementation(self) -> str:
        return "native" if self.native else "numpy"

    @classmethod
    def for_task(cls, task, calibration: Calibration = Calibration(), decoder: str = CONSTRAINED,
                 transitions: Optional[np.ndarray] = None, native: bool = True) -> "Decoder":
        return cls(task.labels, task.intent_slot_types, calibration, decoder, transitions, native)

    def __call__(self, intent_logits: np.ndarray, slot_logits: np.ndarray) -> Prediction:
        intent_logits, slot_logits = (
            np.ascontiguousarray(intent_logits, dtype="float32"),
            np.ascontiguousarray(slot_logits, dtype="float32"),
        )
        if self.native:
            intent_id, probs, tag_ids = self.native.decode(intent_logits, slot_logits, self.calibration.intent_temperature)
        else:
            intent_id = int(intent_logits.argmax())
            probs = softmax64(intent_logits, self.calibration.intent_temperature)
            if self.decoder == GREEDY:
                tag_ids = slot_logits.argmax(-1).tolist()
            else:
                tag_ids = viterbi(
                    slot_logits.astype("float64"), self.constraints.intent_tags[intent_id], self.constraints.start_ok, self.step
                )
        spans = bio_spans([self.labels.slot_tags[t] for t in tag_ids])
        confidences = self.span_confidences(slot_logits, tag_ids, spans, intent_id, self.calibration.slot_temperature)
        return Prediction(intent_id, probs, tag_ids, spans, confidences, intent_logits, slot_logits)

    def allowed_tags(self, intent_id: int) -> np.ndarray:
        """Tags the lattice holds: the intent's (constrained decoding), or every usable tag (greedy)."""
        return self.constraints.intent_tags[intent_id] if self.decoder == CONSTRAINED else self.constraints.usable

    def span_confidences(self, slot_logits, tag_ids, spans, intent_id: int, temperature: float) -> List[float]:
        if self.native:
            return self.native.span_confidences(np.ascontiguousarray(slot_logits, dtype="float32"), tag_ids, spans, intent_id, temperature)
        inside = [self.inside_tag.get(kind) for kind, _, _ in spans]
        return span_confidences(slot_logits, tag_ids, spans, self.allowed_tags(intent_id), self.constraints.start_ok, self.step,
                                inside, temperature)

    def fit(self, predictions: Sequence[Prediction], utterances, fitted_on: str) -> Calibration:
        """Temperatures fitted on labelled utterances (data.corpus.Utterance) and this decoder's
        predictions of them: intent by likelihood, slots by span correctness."""
        gold = np.array([self.labels.intent_id[u.intent] for u in utterances])
        intent_t = fit_intent_temperature(np.stack([p.intent_logits for p in predictions]), gold)
        spans = SpanOutcomes(self, predictions, utterances)
        return Calibration(intent_t, fit_span_temperature(spans.confidences, spans.correct), fitted_on)


class SpanOutcomes:
    """Every predicted span of a set of predictions and whether the gold annotation has it
    exactly (type, start, end); `confidences(T)` recomputes their confidences at temperature T."""

    def __init__(self, decoder: Decoder, predictions: Sequence[Prediction], utterances):
        self.decoder, self.predictions, correct = decoder, [p for p in predictions if p.spans], []
        for p, utt in zip(predictions, utterances):
            gold = set(bio_spans(utt.token_tags()))
            correct.extend(span in gold for span in p.spans)
        self.correct = np.array(correct, dtype=float)

    def confidences(self, temperature: float) -> np.ndarray:
        return np.array([c for p in self.predictions
                         for c in self.decoder.span_confidences(p.slot_logits, p.tag_ids, p.spans, p.intent_id, temperature)])


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

    def loss(log_t: float) -> float:
        p = np.clip(span_confidence_at(math.exp(log_t)), 1e-12, 1 - 1e-12)
        return float(-(correct * np.log(p) + (1 - correct) * np.log(1 - p)).mean())

    # golden-section search on log T over the grid's range (each evaluation is a forward-backward per utterance)
    low, high = math.log(TEMPERATURE_GRID[0]), math.log(TEMPERATURE_GRID[-1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss(a), loss(b)
    while high - low > 1e-3:
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss(b)
    return math.exp((low + high) / 2)


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
