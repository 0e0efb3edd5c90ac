"""Where a model fails, on a labelled split: the intent confusion matrix, per-intent and per-slot-type
precision / recall / F1, errors by kind (intent wrong, or only the slots) and by category (length,
position in the session, ASR corrections), the most frequent confusions with examples, confidence of
right and wrong answers; and two models side by side (per-category deltas, the utterances that
flipped). `run_eval.py --eval_file F --analysis_dir D` writes it (JSON, Markdown, PNGs) from the
one prediction path. Plain Python + numpy; matplotlib only for the plots."""
import collections
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from decoding import Prediction
from task import OUTSIDE_LABEL, PAD_LABEL, LabelMaps, bio_spans, carries_token
from utils import markdown_table, save_figure, save_json, write_text

# (name, shortest, longest) in characters that carry a token
LENGTH_BUCKETS = [("length <= 4", 0, 4), ("length 5-14", 5, 14), ("length > 14", 15, None)]
CONFIDENCE_BINS = np.linspace(0.0, 1.0, 11)
EXAMPLES = 3


def utterance_rows(utterances, predictions: Sequence[Prediction], labels: LabelMaps) -> List[dict]:
    """One row per utterance: what the model said next to the gold labels, and its categories."""
    turn_in_session: Dict[str, int] = collections.Counter()
    rows = []
    for utt, pred in zip(utterances, predictions):
        gold_tags = utt.token_tags()
        tags = [labels.slot_tags[t] for t in pred.tag_ids]
        tags = [OUTSIDE_LABEL if t == PAD_LABEL else t for t in tags]  # as metrics.sentence_correct reads PAD
        offsets = [i for i, ch in enumerate(utt.text) if carries_token(ch)]  # token -> character

        def spans(tag_seq):  # [type, entity, first, last character] as in a result record
            return [[kind, utt.text[offsets[s] : offsets[e - 1] + 1], offsets[s], offsets[e - 1]] for kind, s, e in bio_spans(tag_seq)]

        intent = labels.intents[pred.intent_id]
        position = turn_in_session[utt.session_id]
        turn_in_session[utt.session_id] += 1
        rows.append({
            "line": utt.line_no, "session_id": utt.session_id, "turn": position, "text": utt.text, "tokens": len(gold_tags),
            "gold_intent": utt.intent, "intent": intent, "confidence": round(pred.confidence, 4),
            "gold_slots": spans(gold_tags), "slots": spans(tags),
            "intent_ok": intent == utt.intent, "slots_ok": tags == gold_tags, "correction": utt.has_correction,
        })
    return rows


def categories(row: dict) -> List[str]:
    """The categories an utterance belongs to (besides "all")."""
    length = next(name for name, lo, hi in LENGTH_BUCKETS if row["tokens"] >= lo and (hi is None or row["tokens"] <= hi))
    return [
        length,
        "first turn" if row["turn"] == 0 else "later turn",
        "with ASR correction" if row["correction"] else "without ASR correction",
    ]


def prf(tp: int, n_pred: int, n_gold: int) -> dict:
    p, r = tp / n_pred if n_pred else 0.0, tp / n_gold if n_gold else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0, "support": n_gold}


def analyze(rows: Sequence[dict], intents: Sequence[str], slot_types: Sequence[str]) -> dict:
    index = {name: i for i, name in enumerate(intents)}
    confusion = np.zeros((len(intents), len(intents)), dtype=int)  # [gold, predicted]
    for r in rows:
        confusion[index[r["gold_intent"]], index[r["intent"]]] += 1
    per_intent = {name: prf(int(confusion[i, i]), int(confusion[:, i].sum()), int(confusion[i].sum())) for name, i in index.items()}

    slot_counts = {t: [0, 0, 0] for t in slot_types}  # tp, predicted, gold
    for r in rows:
        gold, pred = {tuple(s) for s in r["gold_slots"]}, {tuple(s) for s in r["slots"]}
        for kind, *_ in pred:
            slot_counts[kind][1] += 1
        for kind, *_ in gold:
            slot_counts[kind][2] += 1
        for kind, *_ in gold & pred:
            slot_counts[kind][0] += 1
    per_slot = {t: prf(*c) for t, c in slot_counts.items() if c[1] or c[2]}

    groups = collections.defaultdict(list)
    for r in rows:
        for name in ["all"] + categories(r):
            groups[name].append(r)
    order = ["all"] + [name for name, *_ in LENGTH_BUCKETS] + ["first turn", "later turn", "with ASR correction", "without ASR correction"]
    by_category = {}
    for name in order:
        members = groups.get(name, [])
        wrong_intent = sum(not r["intent_ok"] for r in members)
        wrong_slots = sum(r["intent_ok"] and not r["slots_ok"] for r in members)
        by_category[name] = {
            "utterances": len(members),
            "sentence_acc": round(1 - (wrong_intent + wrong_slots) / len(members), 4) if members else None,
            "intent_wrong": wrong_intent,
            "only_slots_wrong": wrong_slots,
        }

    pairs = collections.defaultdict(list)
    for r in rows:
        if not r["intent_ok"]:
            pairs[(r["gold_intent"], r["intent"])].append(r["text"])
    confusions = [{"gold": g, "predicted": p, "count": len(texts), "examples": texts[:EXAMPLES]}
                  for (g, p), texts in sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0]))]

    right = [r["confidence"] for r in rows if r["intent_ok"]]
    wrong = [r["confidence"] for r in rows if not r["intent_ok"]]
    return {
        "utterances": len(rows),
        "intents": list(intents),
        "confusion": confusion.tolist(),
        "per_intent": per_intent,
        "per_slot_type": per_slot,
        "by_category": by_category,
        "confusions": confusions,
        "confidence_bins": CONFIDENCE_BINS.round(2).tolist(),
        "confidence_right": np.histogram(right, CONFIDENCE_BINS)[0].tolist(),
        "confidence_wrong": np.histogram(wrong, CONFIDENCE_BINS)[0].tolist(),
    }


def compare(rows: Sequence[dict], other_rows: Sequence[dict], result: dict, other: dict) -> dict:
    """The second model against the first: sentence accuracy per category, and the utterances whose
    sentence correctness flipped (with both answers)."""
    if [r["line"] for r in rows] != [r["line"] for r in other_rows]:
        raise ValueError("the two analyses are of different utterances")
    deltas = {
        name: {
            "sentence_acc": c["sentence_acc"],
            "other_sentence_acc": other["by_category"][name]["sentence_acc"],
            "delta": None if c["sentence_acc"] is None else round(other["by_category"][name]["sentence_acc"] - c["sentence_acc"], 4),
        }
        for name, c in result["by_category"].items()
    }
    flipped = {"fixed": [], "broken": []}
    for a, b in zip(rows, other_rows):
        ok_a, ok_b = a["intent_ok"] and a["slots_ok"], b["intent_ok"] and b["slots_ok"]
        if ok_a != ok_b:
            flipped["fixed" if ok_b else "broken"].append({"line": a["line"], "text": a["text"], "gold_intent": a["gold_intent"],
                                                           "intent": a["intent"], "other_intent": b["intent"],
                                                           "slots": a["slots"], "other_slots": b["slots"], "gold_slots": a["gold_slots"]})
    return {"by_category": deltas, "fixed": flipped["fixed"], "broken": flipped["broken"]}


def answer(intent: str, slots) -> str:
    return intent + "".join(f" {kind}={entity}" for kind, entity, *_ in slots)


def markdown(result: dict, title: str, comparison: Optional[dict] = None, top: int = 10) -> str:
    lines = [f"# {title}", "", f"{result['utterances']} utterances.", "", "## Errors by category", "",
             *markdown_table(["category", "utterances", "sentence acc", "intent wrong", "only slots wrong"],
                             [[name, c["utterances"], "" if c["sentence_acc"] is None else f"{100 * c['sentence_acc']:.2f}",
                               c["intent_wrong"], c["only_slots_wrong"]] for name, c in result["by_category"].items()]),
             "", "## Most frequent intent confusions", "",
             *markdown_table(["gold", "predicted", "examples", "count"],
                             [[c["gold"], c["predicted"], " / ".join(c["examples"]), c["count"]] for c in result["confusions"][:top]], 3),
             "", "## Per intent", "",
             *markdown_table(["intent", "precision", "recall", "F1", "support"],
                             [[k, v["precision"], v["recall"], v["f1"], v["support"]] for k, v in result["per_intent"].items()]),
             "", "## Per slot type (exact spans)", "",
             *markdown_table(["slot type", "precision", "recall", "F1", "support"],
                             [[k, v["precision"], v["recall"], v["f1"], v["support"]] for k, v in result["per_slot_type"].items()]), ""]
    if comparison:
        lines += [
            "## Against the other model",
            "",
            *markdown_table(
                ["category", "sentence acc", "other", "other − this (points)"],
                [
                    [k, *(f"{100 * v[x]:.2f}" if v[x] is not None else "" for x in ("sentence_acc", "other_sentence_acc", "delta"))]
                    for k, v in comparison["by_category"].items()
                ],
            ),
            "",
            f"Fixed by the other model: {len(comparison['fixed'])}; broken: {len(comparison['broken'])}.",
            "",
        ]
        for kind in ("fixed", "broken"):
            lines += [f"### {kind.capitalize()} (first {top})", "",
                      *markdown_table(["line", "text", "gold", "this model", "other model"],
                                      [[f["line"], f["text"], answer(f["gold_intent"], f["gold_slots"]), answer(f["intent"], f["slots"]),
                                        answer(f["other_intent"], f["other_slots"])] for f in comparison[kind][:top]], 5), ""]
    return "\n".join(lines)


def plot(result: dict, output_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion, intents = np.array(result["confusion"]), result["intents"]
    fig, ax = plt.subplots(figsize=(8, 7))
    shown = np.log1p(confusion)  # the diagonal would hide every confusion on a linear scale
    ax.imshow(shown, cmap="Blues")
    for i in range(len(intents)):
        for j in range(len(intents)):
            if confusion[i, j]:
                ax.text(
                    j, i, confusion[i, j], ha="center", va="center", fontsize=7, color="white" if shown[i, j] > shown.max() / 2 else "black"
                )
    ax.set_xticks(range(len(intents)), intents, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(intents)), intents, fontsize=8)
    ax.set_xlabel("predicted intent")
    ax.set_ylabel("gold intent")
    ax.set_title("Intent confusion (counts; colour on a log scale)")
    fig.tight_layout()
    save_figure(fig, os.path.join(output_dir, "confusion.png"))
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    edges = np.array(result["confidence_bins"])
    width = edges[1] - edges[0]
    ax1.bar(edges[:-1], result["confidence_right"], width=width, align="edge", alpha=0.6, label="intent right")
    ax1.bar(edges[:-1], result["confidence_wrong"], width=width, align="edge", alpha=0.6, label="intent wrong")
    ax1.set_yscale("log")
    ax1.set_xlabel("intent confidence")
    ax1.set_ylabel("utterances")
    ax1.legend()
    ax1.set_title("Confidence of right and wrong intents")
    names = [n for n, c in result["by_category"].items() if c["utterances"]]
    x = np.arange(len(names))
    ax2.bar(x, [result["by_category"][n]["intent_wrong"] / result["by_category"][n]["utterances"] for n in names], label="intent wrong")
    ax2.bar(
        x,
        [result["by_category"][n]["only_slots_wrong"] / result["by_category"][n]["utterances"] for n in names],
        bottom=[result["by_category"][n]["intent_wrong"] / result["by_category"][n]["utterances"] for n in names],
        label="only slots wrong",
    )
    ax2.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("share of the category's utterances")
    ax2.legend()
    ax2.set_title("Errors by category")
    fig.tight_layout()
    save_figure(fig, os.path.join(output_dir, "errors.png"))
    plt.close(fig)


def write_report(output_dir: str, rows: Sequence[dict], result: dict, title: str,
                 other_rows: Optional[Sequence[dict]] = None, other: Optional[dict] = None) -> None:
    """analysis.json (the result, every utterance's row, the comparison), analysis.md and the PNGs."""
    os.makedirs(output_dir, exist_ok=True)
    comparison = compare(rows, other_rows, result, other) if other is not None else None
    save_json(os.path.join(output_dir, "analysis.json"), {**result, "comparison": comparison, "rows": list(rows),
                                                           **({"other": other} if other is not None else {})})
    write_text(os.path.join(output_dir, "analysis.md"), markdown(result, title, comparison))
    plot(result, output_dir)
