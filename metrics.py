"""Intent accuracy, span-level slot precision / recall / F1 (conlleval rules, as seqeval's default
mode), strict and reference-compatible sentence accuracy, per-intent counts, and NLPCC 2018 Task
4's official scores: the frame accuracy of its subtask 4 and the intent macro-F1 of its subtask 2
(docs/evaluation.md#the-official-nlpcc-scores)."""
import collections
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from data.corpus import Utterance
from task import OUTSIDE_LABEL, PAD_LABEL, bio_spans, carries_token


def sentence_correct(utt: Utterance, intent: str, tags: Sequence[str]) -> bool:
    """Strict sentence correctness: the intent and every token tag right (PAD read as O)."""
    return intent == utt.intent and [OUTSIDE_LABEL if t == PAD_LABEL else t for t in tags] == utt.token_tags()


def frame(intent: str, slots: Iterable[Tuple[str, str]], intent_slot_types: Dict[str, Sequence[str]]) -> str:
    """The subtask-4 frame `intent@type=value,...`: the (type, value) pairs of the slot types the
    intent carries (intent_slot_types), de-duplicated and sorted; other slots are dropped."""
    allowed = set(intent_slot_types.get(intent, ()))
    return intent + "@" + ",".join(sorted({f"{kind}={value}" for kind, value in slots if kind in allowed}))


def predicted_slot_texts(text: str, tags: Sequence[str]) -> List[Tuple[str, str]]:
    """(type, text as heard) of each span of per-token `tags` over `text` (spaces inside a span kept)."""
    positions = [i for i, ch in enumerate(text) if carries_token(ch)]
    return [(kind, text[positions[start] : positions[end - 1] + 1]) for kind, start, end in bio_spans(tags)]


def intent_macro_f1(gold: Sequence[str], predicted: Sequence[str], intents: Sequence[str]) -> float:
    """The mean over `intents` of each intent's F1 (0 for an intent neither gold nor predicted)."""
    scores = []
    for intent in intents:
        tp = sum(g == p == intent for g, p in zip(gold, predicted))
        n_gold, n_pred = sum(g == intent for g in gold), sum(p == intent for p in predicted)
        scores.append(2 * tp / (n_gold + n_pred) if n_gold + n_pred else 0.0)
    return sum(scores) / max(len(scores), 1)


def official_scores(gold: Sequence[Utterance], predicted: Sequence[Tuple[str, Sequence[str]]],
                    intent_slot_types: Dict[str, Sequence[str]], catch_all_intents: Iterable[str] = (),
                    resolve: Optional[Callable[[str, str], Tuple[str, str]]] = None) -> dict:
    """NLPCC 2018 Task 4's scores. `frame_acc` (subtask 4): the share of utterances whose predicted
    frame (intent, slot texts as predicted) equals the gold frame (intent, canonical values: the
    `||value` of a correction). `intent_macro_f1` (subtask 2): the macro-F1 over every intent label
    but the catch-all ones, as defined (an intent the split lacks scores 0); `intent_macro_f1_present`
    over those the split holds. The labels are intent_slot_types' keys. With `resolve` (slot type,
    text -> value, how: values.Catalogue.resolve) `frame_acc_resolved` scores the resolved values."""
    gold_frames = [frame(u.intent, [(s.type, s.value) for s in u.slots], intent_slot_types) for u in gold]
    heard = [(i, predicted_slot_texts(u.text, tags)) for u, (i, tags) in zip(gold, predicted)]

    def accuracy(value=lambda kind, text: text):
        return sum(g == frame(i, [(k, value(k, t)) for k, t in slots], intent_slot_types)
                   for g, (i, slots) in zip(gold_frames, heard)) / max(len(gold), 1)

    gold_intents, pred_intents = [u.intent for u in gold], [i for i, _ in predicted]
    catch_all, present = set(catch_all_intents), set(gold_intents)
    scored = [i for i in intent_slot_types if i not in catch_all]
    return {
        "frame_acc": accuracy(),
        **({"frame_acc_resolved": accuracy(lambda kind, text: resolve(kind, text)[0])} if resolve is not None else {}),
        "intent_macro_f1": intent_macro_f1(gold_intents, pred_intents, scored),
        "intent_macro_f1_present": intent_macro_f1(gold_intents, pred_intents, [i for i in scored if i in present]),
    }


def slu_metrics(
    gold: Sequence[Utterance], predicted: Sequence[Tuple[str, Sequence[str]]], slotless_intents: Iterable[str],
    intent_slot_types: Optional[Dict[str, Sequence[str]]] = None, catch_all_intents: Iterable[str] = (),
    resolve: Optional[Callable[[str, str], Tuple[str, str]]] = None,
) -> dict:
    """Intent accuracy, span-level slot P/R/F1, sentence accuracy and per-intent counts.

    `predicted` holds (intent, token tags) per utterance. Sentence accuracy is strict (intent
    right and every token tag right); `sentence_acc_ref` is the reference's lenient variant,
    where for an intent in `slotless_intents` a right intent alone makes a right sentence. With
    `intent_slot_types` (every intent label: its slot types) the official scores are added."""
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
        **(official_scores(gold, predicted, intent_slot_types, catch_all_intents, resolve) if intent_slot_types is not None else {}),
        "num_utterances": len(gold),
        "per_intent": {k: per_intent[k] for k in sorted(per_intent)},
    }

