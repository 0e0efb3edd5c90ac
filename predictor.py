"""The one prediction path: text -> checks -> windows -> logits (any runtime) -> decoding -> result
record. run_eval.py, the FastDeploy demo, the benchmark, distillation and the notebook all
predict through `Predictor`; deploy/cpp/slu.cc is its C++ twin (tested identical).

A result record (one JSON object per utterance):

    {"text": ..., "intent": ..., "confidence": p, "intent_ranking": [{"intent", "confidence"}] (top 3),
     "slots": [{"slot", "entity", "pos": [first, last], "confidence": p, "value", "resolution"}], "fallback": false}
    {"text": ..., "error": "empty utterance"}                      no visible character
    {"text": ..., "error": "utterance too long: N tokens (at most M)"}
    {"line": N, "error": "invalid UTF-8"}                          input line N (1-based) is not UTF-8

Session input (`Predictor.predict_sessions`): one JSON object per line, {"session_id": ..., "text":
...}; each utterance is predicted with the earlier utterances of its session in the input as
context, and its record starts with "session_id". A line that is not such an object gives
{"line": N, "error": "expected a JSON object with string \"session_id\" and \"text\""}.

`pos` holds inclusive character offsets into the text as given (as the PaddleNLP demo); `entity`
is the text as heard, `value` the canonical value to act on and `resolution` how it was found
(values.py: exact, catalogue, pronunciation, rule, or none when the value is the text as heard).
Confidences are calibrated probabilities (4 decimals; decoding.py says how): the intent's, and
each slot span's. `fallback` is true when the weakest of them is below `min_confidence`: the
assistant should ask again rather than act (the intent stays in the ranking).
Plain Python + numpy: FastDeploy front ends use it without loading paddle.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from decoding import CONSTRAINED, RANKING_SIZE, Calibration, Decoder, Prediction
from export_format import MAX_UTTERANCE_TOKENS, ExportedModel
from metrics import slu_metrics
from task import Encoded, LabelMaps, Task, session_histories, token_text
from utils import pad_batch, strict_json_loads
from values import Catalogue

# padded input ids [batch, seq] -> (intent logits [batch, I], slot logits [batch, seq, T]);
# every runtime (dynamic graph, Paddle Inference, FastDeploy, Paddle Lite replay) provides one
LogitsFn = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]

EMPTY_UTTERANCE = "empty utterance"
INVALID_UTF8 = "invalid UTF-8"
NOT_A_TURN = 'expected a JSON object with string "session_id" and "text"'


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


def argv_texts(values: Sequence[str]) -> List[Optional[str]]:
    """Command-line values as texts, None for one whose bytes were not UTF-8 (Python hands such
    an argument over with lone surrogates, which would be written out as raw bytes): the same
    "invalid UTF-8" record as an input line gets."""
    out = []
    for value in values:
        try:
            value.encode("utf-8")
            out.append(value)
        except UnicodeEncodeError:
            out.append(None)
    return out


def parse_turn(line: Optional[str]) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(session id, text, None) of one line of session input, or (None, None, error)."""
    if line is None:
        return None, None, INVALID_UTF8
    try:  # strict JSON, as slu.cc's parser: no NaN/Infinity, no lone surrogate escapes ("\ud800")
        turn = strict_json_loads(line)
        if not (isinstance(turn, dict) and isinstance(turn.get("session_id"), str) and isinstance(turn.get("text"), str)):
            raise ValueError
        turn["text"].encode("utf-8"), turn["session_id"].encode("utf-8")
    except ValueError:  # UnicodeEncodeError included
        return None, None, NOT_A_TURN
    return turn["session_id"], turn["text"], None


def merge_windows(intent_logits, slot_logits, encoded: Sequence[Encoded], decoder: Decoder) -> List[Prediction]:
    """Per-utterance predictions from per-window logits (rows in window order, `encoded[u].windows`
    the rows of utterance u). Each token's slot scores come from the window that keeps it
    (task.window_keeps: overlaps split in the middle), then the utterance is decoded whole; the
    intent comes from the first window, where the command words of an over-long utterance are."""
    predictions, r = [], 0
    for enc in encoded:
        slots = np.concatenate([np.asarray(slot_logits[r + k][1 + keep - start : 1 + end - start], dtype="float32")
                                for k, ((start, _), (keep, end)) in enumerate(zip(enc.bounds, enc.keeps))])
        predictions.append(decoder(intent_logits[r], slots))
        r += len(enc.windows)
    return predictions


def run_windows(encoded: Sequence[Encoded], logits_fn: LogitsFn, pad_id: int, decoder: Decoder, batch_size: int = 64) -> List[Prediction]:
    """All windows of all utterances in batches of `batch_size` rows, merged back per utterance.
    Rows are batched shortest first, so that a batch pads its rows to about their own length
    rather than to the longest row of the input (rows with session context vary several-fold in
    length); each row's answer does not depend on its batch (tests/test_backends.py)."""
    rows = [w for enc in encoded for w in enc.windows]
    order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
    intent_rows, slot_rows = [None] * len(rows), [None] * len(rows)
    for b in range(0, len(rows), batch_size):
        batch = order[b : b + batch_size]
        intent_logits, slot_logits = logits_fn(pad_batch([rows[r] for r in batch], pad_id))
        for r, intent, slots in zip(batch, intent_logits, slot_logits):
            intent_rows[r], slot_rows[r] = intent, slots
    return merge_windows(intent_rows, slot_rows, encoded, decoder)


EMPTY_CATALOGUE = Catalogue()


def describe(pred: Prediction, enc: Encoded, labels: LabelMaps, min_confidence: float = 0.0,
             catalogue: Optional[Catalogue] = None) -> dict:
    """The result record of one utterance; each slot's value resolved against `catalogue` (values.py)."""
    slots = []
    for (kind, s, e), confidence in zip(pred.spans, pred.span_confidences):
        first, last = enc.offsets[s], enc.offsets[e - 1]
        entity = enc.text[first : last + 1]
        value, resolution = (catalogue if catalogue is not None else EMPTY_CATALOGUE).resolve(kind, entity)
        slots.append({"slot": kind, "entity": entity, "pos": [first, last], "confidence": round(confidence, 4), "value": value,
                      "resolution": resolution})
    ranking = np.argsort(-pred.intent_probs, kind="stable")[:RANKING_SIZE]
    return {
        "text": enc.text,
        "intent": labels.intents[pred.intent_id],
        "confidence": round(pred.confidence, 4),
        "intent_ranking": [{"intent": labels.intents[i], "confidence": round(float(pred.intent_probs[i]), 4)} for i in ranking],
        "slots": slots,
        "fallback": not pred.answer_score >= min_confidence,  # NaN falls back
    }


def without_confidences(value):
    """A result record (or a list, or any part of one) without its confidences: what must be equal
    when the same utterance runs in another batch or on another runtime (the ranking's order stays)."""
    if isinstance(value, dict):
        return {k: without_confidences(v) for k, v in value.items() if k != "confidence"}
    return [without_confidences(v) for v in value] if isinstance(value, list) else value


def score(utterances, predictions: Sequence[Prediction], task: Task, catch_all_intents: Sequence[str] = ()) -> dict:
    """metrics.slu_metrics of the predictions, the official scores included (`catch_all_intents`:
    left out of the intent macro-F1, as NLPCC 2018 leaves out its catch-all intent)."""
    labels = task.labels
    predicted = [(labels.intents[p.intent_id], [labels.slot_tags[t] for t in p.tag_ids]) for p in predictions]
    resolve = task.catalogue.resolve if task.catalogue is not None else None
    return slu_metrics(utterances, predicted, task.slotless_intents, task.intent_slot_types, catch_all_intents, resolve)


class Predictor:
    """An exported model's task and calibration and a runtime's logits function, put together.
    `min_confidence`: results whose answer score (decoding.answer_score) is below it say
    `"fallback": true`; `decoder`: decoding.CONSTRAINED, or GREEDY for comparison;
    `transitions`: a CRF head's slot transitions [T, T]."""

    def __init__(self, task: Task, logits_fn: LogitsFn, max_utterance_tokens: int = MAX_UTTERANCE_TOKENS,
                 calibration: Calibration = Calibration(), min_confidence: float = 0.0, decoder: str = CONSTRAINED,
                 transitions: Optional[np.ndarray] = None):
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence {min_confidence}: must lie in [0, 1]")
        self.task, self.logits_fn, self.max_utterance_tokens = task, logits_fn, max_utterance_tokens
        self.min_confidence = min_confidence
        self.decoder = Decoder.for_task(task, calibration, decoder, transitions)
        self.exported: Optional[ExportedModel] = None  # the directory it was opened from, as read and checked

    @classmethod
    def from_exported(cls, exported: ExportedModel, logits_fn: LogitsFn, **options) -> "Predictor":
        predictor = cls(exported.task, logits_fn, exported.config["max_utterance_tokens"], exported.calibration,
                        transitions=exported.slot_transitions, **options)
        predictor.exported = exported
        return predictor

    def _length_error(self, num_tokens: int) -> Optional[str]:
        """The error of an utterance of `num_tokens` tokens, or None."""
        if not num_tokens:
            return EMPTY_UTTERANCE
        if num_tokens > self.max_utterance_tokens:
            return too_long_error(num_tokens, self.max_utterance_tokens)
        return None

    def text_error(self, text: str) -> Optional[str]:
        """Why `text` would get an error record instead of a prediction, or None (its tokens only:
        no windows, no context)."""
        # counted, not built: an over-long line costs no more memory than itself
        return self._length_error(sum(token_text(c) is not None for c in text))

    def records_and_predictions(self, texts: Sequence[Optional[str]], batch_size: int = 64,
                                on_windows: Optional[Callable[[int, int, int], None]] = None,
                                histories: Optional[Sequence[Sequence[str]]] = None) -> Tuple[List[dict], List[Optional[Prediction]]]:
        """Result records in input order, and the merged logits behind each (None for errors); a
        None text is an input line that was not UTF-8 (decode_lines). `histories[i]`: the earlier
        utterances of text i's session, oldest first (a model without context ignores them).
        `on_windows(index, tokens, windows)` is told of every utterance that needs several windows."""
        histories = histories if histories is not None else [()] * len(texts)
        if len(histories) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(histories)} histories")
        errors = [self.text_error(t) if t is not None else INVALID_UTF8 for t in texts]  # before any window is built
        encoded = [self.task.encode(t if error is None else "", h) for t, h, error in zip(texts, histories, errors)]
        todo = [i for i, error in enumerate(errors) if error is None]
        if on_windows:
            for i in todo:
                if len(encoded[i].windows) > 1:
                    on_windows(i, len(encoded[i].offsets), len(encoded[i].windows))
        preds: List[Optional[Prediction]] = [None] * len(texts)
        for i, p in zip(
            todo, run_windows([encoded[i] for i in todo], self.logits_fn, self.task.tokenizer.pad_id, self.decoder, batch_size)
        ):
            preds[i] = p

        def record(i: int) -> dict:
            if texts[i] is None:
                return {"line": i + 1, "error": errors[i]}
            if errors[i]:
                return {"text": texts[i], "error": errors[i]}
            return describe(preds[i], encoded[i], self.task.labels, self.min_confidence, self.task.catalogue)

        return [record(i) for i in range(len(texts))], preds

    def predict(self, texts: Sequence[str], batch_size: int = 64, histories: Optional[Sequence[Sequence[str]]] = None) -> List[dict]:
        """Result records of `texts` in order (records_and_predictions without the predictions)."""
        return self.records_and_predictions(texts, batch_size, histories=histories)[0]

    def predict_sessions(self, lines: Sequence[Optional[str]], batch_size: int = 64) -> List[dict]:
        """Records of session input lines (the module docstring), in input order."""
        turns = [parse_turn(line) for line in lines]
        valid = [i for i, (_, _, error) in enumerate(turns) if error is None]
        histories = session_histories(((turns[i][0], turns[i][1]) for i in valid), self.task.context_turns,
                                      lambda text: self.text_error(text) is None)
        records = self.predict([turns[i][1] for i in valid], batch_size, histories)
        by_line = {i: {"session_id": turns[i][0], **record} for i, record in zip(valid, records)}
        return [by_line.get(i) or {"line": i + 1, "error": turns[i][2]} for i in range(len(lines))]

    def corpus_predictions(self, utterances, batch_size: int = 64) -> List[Prediction]:
        """Predictions for corpus utterances, every one scored whole (no request checks), with the
        earlier turns of its session in the file as context."""
        encoded = self.task.encode_corpus(utterances)
        return run_windows(encoded, self.logits_fn, self.task.tokenizer.pad_id, self.decoder, batch_size)

    def evaluate(self, utterances, batch_size: int = 64) -> dict:
        return score(utterances, self.corpus_predictions(utterances, batch_size), self.task)
