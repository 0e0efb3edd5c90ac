"""The one prediction path: text -> checks -> windows -> logits (any runtime) -> decoding -> result
record. run_eval.py, the FastDeploy demo, the benchmark, distillation and the notebook all
predict through `Predictor`; deploy/cpp/slu.cc is its C++ twin (tested identical).

A result record (one JSON object per utterance):

    {"text": ..., "intent": ..., "confidence": p (4 decimals), "slots": [{"slot", "entity", "pos": [first, last]}]}
    {"text": ..., "error": "empty utterance"}                      no visible character
    {"text": ..., "error": "utterance too long: N tokens (at most M)"}
    {"line": N, "error": "invalid UTF-8"}                          input line N (1-based) is not UTF-8

`pos` holds inclusive character offsets into the text as given (as the PaddleNLP demo).
Plain Python + numpy: FastDeploy front ends use it without loading paddle.
"""
import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from export_format import MAX_UTTERANCE_TOKENS, ExportedModel
from metrics import slu_metrics
from task import Encoded, LabelMaps, Task, bio_spans
from utils import pad_batch, softmax

# padded input ids [batch, seq] -> (intent logits [batch, I], slot logits [batch, seq, T]);
# every runtime (dynamic graph, Paddle Inference, FastDeploy, Paddle Lite replay) provides one
LogitsFn = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]

EMPTY_UTTERANCE = "empty utterance"
INVALID_UTF8 = "invalid UTF-8"


def too_long_error(num_tokens: int, limit: int) -> str:
    return f"utterance too long: {num_tokens} tokens (at most {limit})"


def decode_lines(data: bytes) -> List[Optional[str]]:
    """The lines of a UTF-8 input (LF or CRLF ends), None for a line that is not valid UTF-8."""
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out = []
    for raw in lines:
        try:
            out.append(raw.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError:
            out.append(None)
    return out


@dataclasses.dataclass
class Prediction:
    intent_id: int
    intent_probs: np.ndarray
    tag_ids: List[int]  # one per token
    intent_logits: np.ndarray
    slot_logits: np.ndarray  # [tokens, T]


def merge_windows(intent_logits, slot_logits, windows: Sequence[Sequence[Sequence[int]]]) -> List[Prediction]:
    """Per-utterance predictions from per-window logits (rows in window order; `windows[u]` are
    the id rows of utterance u). Slot logits of the real tokens are concatenated; the intent
    comes from the first window, where the command words of an over-long utterance are."""
    predictions, r = [], 0
    for rows in windows:
        intent = np.asarray(intent_logits[r], dtype="float32")
        slots = np.concatenate([np.asarray(slot_logits[r + k][1 : len(w) - 1], dtype="float32") for k, w in enumerate(rows)])
        r += len(rows)
        probs = softmax(intent)
        predictions.append(Prediction(int(probs.argmax()), probs, slots.argmax(-1).tolist(), intent, slots))
    return predictions


def run_windows(encoded: Sequence[Encoded], logits_fn: LogitsFn, pad_id: int, batch_size: int = 64) -> List[Prediction]:
    """All windows of all utterances in batches of `batch_size` rows, merged back per utterance."""
    rows = [w for enc in encoded for w in enc.windows]
    intent_rows, slot_rows = [], []
    for b in range(0, len(rows), batch_size):
        intent_logits, slot_logits = logits_fn(pad_batch(rows[b : b + batch_size], pad_id))
        intent_rows.extend(intent_logits)
        slot_rows.extend(slot_logits)
    return merge_windows(intent_rows, slot_rows, [enc.windows for enc in encoded])


def describe(pred: Prediction, enc: Encoded, labels: LabelMaps) -> dict:
    """The result record of one utterance."""
    slots = []
    for kind, s, e in bio_spans([labels.slot_tags[t] for t in pred.tag_ids]):
        first, last = enc.offsets[s], enc.offsets[e - 1]
        slots.append({"slot": kind, "entity": enc.text[first : last + 1], "pos": [first, last]})
    return {
        "text": enc.text,
        "intent": labels.intents[pred.intent_id],
        "confidence": round(float(pred.intent_probs[pred.intent_id]), 4),
        "slots": slots,
    }


def score(utterances, predictions: Sequence[Prediction], task: Task) -> dict:
    labels = task.labels
    predicted = [(labels.intents[p.intent_id], [labels.slot_tags[t] for t in p.tag_ids]) for p in predictions]
    return slu_metrics(utterances, predicted, task.slotless_intents)


class Predictor:
    """An exported model's task and a runtime's logits function, put together."""

    def __init__(self, task: Task, logits_fn: LogitsFn, max_utterance_tokens: int = MAX_UTTERANCE_TOKENS):
        self.task, self.logits_fn, self.max_utterance_tokens = task, logits_fn, max_utterance_tokens

    @classmethod
    def from_exported(cls, exported: ExportedModel, logits_fn: LogitsFn) -> "Predictor":
        return cls(exported.task, logits_fn, exported.config["max_utterance_tokens"])

    def check(self, enc: Encoded) -> Optional[str]:
        """Why an utterance gets no prediction, or None."""
        if not enc.offsets:
            return EMPTY_UTTERANCE
        if len(enc.offsets) > self.max_utterance_tokens:
            return too_long_error(len(enc.offsets), self.max_utterance_tokens)
        return None

    def predict_with_logits(self, texts: Sequence[Optional[str]], batch_size: int = 64,
                            on_windows: Optional[Callable[[int, int, int], None]] = None) -> Tuple[List[dict], List[Optional[Prediction]]]:
        """Result records in input order, and the merged logits behind each (None for errors); a
        None text is an input line that was not UTF-8 (decode_lines). `on_windows(index, tokens,
        windows)` is told of every utterance that needs several windows."""
        encoded = [self.task.encode(t if t is not None else "") for t in texts]
        errors = [self.check(enc) if t is not None else INVALID_UTF8 for t, enc in zip(texts, encoded)]
        todo = [i for i, error in enumerate(errors) if error is None]
        if on_windows:
            for i in todo:
                if len(encoded[i].windows) > 1:
                    on_windows(i, len(encoded[i].offsets), len(encoded[i].windows))
        preds: List[Optional[Prediction]] = [None] * len(texts)
        for i, p in zip(todo, run_windows([encoded[i] for i in todo], self.logits_fn, self.task.tokenizer.pad_id, batch_size)):
            preds[i] = p

        def record(i: int) -> dict:
            if texts[i] is None:
                return {"line": i + 1, "error": errors[i]}
            if errors[i]:
                return {"text": texts[i], "error": errors[i]}
            return describe(preds[i], encoded[i], self.task.labels)

        return [record(i) for i in range(len(texts))], preds

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> List[dict]:
        return self.predict_with_logits(texts, batch_size)[0]

    def predictions(self, utterances, batch_size: int = 64) -> List[Prediction]:
        """Predictions for corpus utterances, every one scored whole (no request checks)."""
        encoded = [self.task.encode(u.text) for u in utterances]
        return run_windows(encoded, self.logits_fn, self.task.tokenizer.pad_id, batch_size)

    def evaluate(self, utterances, batch_size: int = 64) -> dict:
        return score(utterances, self.predictions(utterances, batch_size), self.task)
