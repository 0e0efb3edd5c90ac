"""Intent accuracy, span-level slot precision / recall / F1 (conlleval rules, as seqeval's default
mode), strict and reference-compatible sentence accuracy, per-intent counts."""
import collections
from typing import Iterable, Sequence, Tuple

from data.corpus import Utterance
from task import OUTSIDE_LABEL, PAD_LABEL, bio_spans


def sentence_correct(utt: Utterance, intent: str, tags: Sequence[str]) -> bool:
    """Strict sentence correctness: the intent and every token tag right (PAD read as O)."""
    return intent == utt.intent and [OUTSIDE_LABEL if t == PAD_LABEL else t for t in tags] == utt.token_tags()


def slu_metrics(
    gold: Sequence[Utterance], predicted: Sequence[Tuple[str, Sequence[str]]], slotless_intents: Iterable[str]
) -> dict:
    """Intent accuracy, span-level slot P/R/F1, sentence accuracy and per-intent counts.

    `predicted` holds (intent, token tags) per utterance. Sentence accuracy is strict (intent
    right and every token tag right); `sentence_acc_ref` is the reference's lenient variant,
    where for an intent in `slotless_intents` a right intent alone makes a right sentence."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold utterances but {len(predicted)} predictions")
    slotless = set(slotless_intents)
    intent_right = sentence_right = sentence_ref_right = tp = n_gold = n_pred = 0
    per_intent = collections.defaultdict(lambda: {"count": 0, "intent_correct": 0, "sentence_correct": 0})
    for utt, (intent, tags) in zip(gold, predicted):
        gold_tags = utt.token_tags()
        if len(tags) != len(gold_tags):
            raise ValueError(f"{len(tags)} predicted tags for {len(gold_tags)} tokens in {utt.text!r}")
        tags = [OUTSIDE_LABEL if t == PAD_LABEL else t for t in tags]
        gold_spans, pred_spans = set(bio_spans(gold_tags)), set(bio_spans(tags))
        tp, n_gold, n_pred = tp + len(gold_spans & pred_spans), n_gold + len(gold_spans), n_pred + len(pred_spans)
        intent_ok = intent == utt.intent
        sentence_ok = sentence_correct(utt, intent, tags)
        intent_right += intent_ok
        sentence_right += sentence_ok
        sentence_ref_right += sentence_ok or (intent_ok and utt.intent in slotless)
        stats = per_intent[utt.intent]
        stats["count"] += 1
        stats["intent_correct"] += intent_ok
        stats["sentence_correct"] += sentence_ok
    n = max(len(gold), 1)
    precision, recall = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return {
        "intent_acc": intent_right / n,
        "slot_precision": precision,
        "slot_recall": recall,
        "slot_f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "sentence_acc": sentence_right / n,
        "sentence_acc_ref": sentence_ref_right / n,
        "num_utterances": len(gold),
        "per_intent": {k: per_intent[k] for k in sorted(per_intent)},
    }

