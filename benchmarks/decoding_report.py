"""Decoding and confidence report: greedy vs constrained (vs CRF) decoding, calibration, abstaining.

    python benchmarks/decoding_report.py --model_dir output/nlpcc2018-nano-scratch-tokenwise/infer_model \
        --crf_model_dir output/nlpcc2018-nano-scratch/infer_model --data_dir data/prepared/nlpcc2018 \
        --output_dir benchmarks/results

On the dev and test splits, through Paddle Inference:
  * decoders: greedy per-token argmax and constrained Viterbi on the same logits of --model_dir
    (and constrained with the CRF's transitions for --crf_model_dir): sentence accuracy (strict
    and reference-compatible), intent accuracy, slot F1, and the spans no annotator would write:
    spans that start with an I- tag and slot types never seen with the predicted intent in
    training; the same counts on tests/edge_cases.json plus a few garbage utterances;
  * calibration: expected calibration error (15 bins) of the intent confidence, of the slot-span
    confidence and of the answer score (the weakest confidence of a result, against strict
    sentence correctness), with temperatures 1 and with the ones fitted on dev; reliability
    diagrams (reliability.png);
  * abstaining: accuracy of the answered utterances against the share answered on test
    (coverage.png); the --min_confidence that keeps dev accuracy >= --target_accuracy and what
    it gives on test;
  * decoding time per utterance in Python (decoding.Decoder: numpy, and deploy/cpp/decoding.cc
    through ctypes when built) and in C++ (slu_demo --logits_file, if --cpp_demo exists) next to
    the model's batch-1 time on the same utterances.
Writes decoding.json and decoding.md (and the PNGs) to --output_dir.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np

from backends import open_predictor
from data.corpus import read_corpus
from decoding import (
    CONSTRAINED,
    GREEDY,
    Calibration,
    Decoder,
    SpanOutcomes,
    coverage_curve,
    expected_calibration_error,
    reliability_bins,
    threshold_for_accuracy,
)
from metrics import sentence_correct
from predictor import score
from utils import PROJECT_DIR, markdown_table, pad_batch, save_figure, save_json, write_text

GARBAGE = ["<singer>x</singer>", "ＡＢＣ全角字母测试", "la la la", "我想听周杰伦的晴天", "asdfghjkl", "？？？", "123 456 789",
           "的的的的的的的的", "导航去去去去去", "打电话给给给给"]


def bad_spans(predictions, decoder: Decoder) -> dict:
    """Spans that start inside an entity (an I- tag opens them) and spans of a type never seen
    with the predicted intent in training."""
    labels, table = decoder.labels, decoder.constraints
    starts_inside = incompatible = 0
    for p in predictions:
        for kind, s, _ in p.spans:
            starts_inside += labels.slot_tags[p.tag_ids[s]].startswith("I-")
            incompatible += not table.intent_tags[p.intent_id][labels.slot_tags.index("B-" + kind)]
    return {"spans_starting_inside": starts_inside, "intent_incompatible_spans": incompatible}


def redecode(predictions, decoder: Decoder):
    return [decoder(p.intent_logits, p.slot_logits) for p in predictions]


def calibration_figures(decoder: Decoder, predictions, utterances) -> dict:
    """ECE and reliability bins of the intent, span and answer-score confidences."""
    labels = decoder.labels
    intent_conf = np.array([p.confidence for p in predictions])
    intent_ok = np.array([labels.intents[p.intent_id] == u.intent for p, u in zip(predictions, utterances)])
    spans = SpanOutcomes(decoder, predictions, utterances)
    span_conf = spans.confidences(decoder.calibration.slot_temperature)
    answer = np.array([p.answer_score for p in predictions])
    sentence_ok = sentence_outcomes(predictions, utterances, labels)
    return {name: {"ece": expected_calibration_error(c, ok), "count": len(c), "bins": reliability_bins(c, ok)}
            for name, c, ok in (("intent", intent_conf, intent_ok), ("slot_span", span_conf, spans.correct),
                                ("answer_score", answer, sentence_ok))}


def sentence_outcomes(predictions, utterances, labels) -> np.ndarray:
    return np.array([sentence_correct(u, labels.intents[p.intent_id], [labels.slot_tags[t] for t in p.tag_ids])
                     for p, u in zip(predictions, utterances)])


def calibration_before_after(predictor, predictions, utterances) -> dict:
    """calibration_figures with temperatures 1 and with the predictor's own (fitted on dev)."""
    uncalibrated = Decoder.for_task(predictor.task, Calibration(), CONSTRAINED, predictor.decoder.transitions)
    return {"before": calibration_figures(uncalibrated, redecode(predictions, uncalibrated), utterances),
            "after": calibration_figures(predictor.decoder, predictions, utterances)}


def decode_timing(predictor, test, merged, cpp_demo: str, model_dir: str, repeats: int = 3) -> dict:
    """Per-utterance decoding time, Python and C++ (of `merged`, the predictions of `test`), and
    the model's batch-1 time for scale."""
    texts = [u.text for u in test]
    encoded = predictor.task.encode_corpus(test)  # with their session context, as the model reads them
    d = predictor.decoder
    out = {"utterances": len(texts)}
    for implementation in ("numpy", "native"):
        decoder = Decoder.for_task(predictor.task, d.calibration, d.decoder, d.transitions, native=implementation == "native")
        if decoder.implementation != implementation:
            continue  # build/libslu_decoding.so not built
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for p in merged:
                decoder(p.intent_logits, p.slot_logits)
            best = min(best, time.perf_counter() - start)
        out[f"python_{implementation}_decode_us"] = 1e6 * best / len(texts)
    sample = encoded[:300]
    start = time.perf_counter()
    for enc in sample:
        predictor.logits_fn(pad_batch(enc.windows, predictor.task.tokenizer.pad_id))
    out["paddle_inference_model_batch1_us"] = 1e6 * (time.perf_counter() - start) / len(sample)
    if cpp_demo and os.path.isfile(cpp_demo):
        with tempfile.TemporaryDirectory() as tmp:
            logits_file = os.path.join(tmp, "logits.f32")
            with open(logits_file, "wb") as f:
                for p in merged:
                    f.write(p.intent_logits.astype("float32").tobytes() + p.slot_logits.astype("float32").tobytes())
            runs = []
            for _ in range(repeats):
                proc = subprocess.run([cpp_demo, "--model_dir", model_dir, "--logits_file", logits_file],
                                      input="".join(t + "\n" for t in texts), capture_output=True, text=True, check=True)
                runs.append(float(proc.stderr.rsplit("decoding ", 1)[1].split(" ms")[0]))
        out["cpp_decode_us"] = 1e3 * min(runs) / len(texts)
    return out


def plot(report: dict, output_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["intent", "slot_span", "answer_score"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, name in zip(axes, names):
        for when, style in (("before", "o--"), ("after", "s-")):
            fig_data = report["calibration"]["test"][when][name]
            bins = [b for b in fig_data["bins"] if b["count"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style,
                    label=f"{'T = 1' if when == 'before' else 'fitted on dev'} (ECE {fig_data['ece']:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set_title(f"{name.replace('_', ' ')} confidence (test)")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left")
    fig.tight_layout()
    save_figure(fig, os.path.join(output_dir, "reliability.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    curve = report["selective"]["test_curve"]
    ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], label="test")
    chosen = report["selective"]["test_at_dev_threshold"]
    if chosen:
        ax.plot([chosen["coverage"]], [chosen["accuracy"]], "o", label=f"threshold {report['selective']['dev_threshold']:.3f} (from dev)")
    ax.axhline(report["selective"]["target_accuracy"], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("share of utterances answered")
    ax.set_ylabel("strict sentence accuracy of the answered")
    ax.set_title("selective prediction by answer score")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, os.path.join(output_dir, "coverage.png"), dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    pct = lambda v: f"{100 * v:.2f}"
    rows = [[r["decoder"], r["split"], pct(r["sentence_acc"]), pct(r["sentence_acc_ref"]), pct(r["intent_acc"]), pct(r["slot_f1"]),
             str(r["spans_starting_inside"]), str(r["intent_incompatible_spans"])] for r in report["decoders"]]
    lines = ["Decoders on the same logits (CRF: its own model, same recipe):", ""]
    lines += markdown_table(["decoder", "split", "sentence acc", "sentence acc (ref)", "intent acc", "slot F1",
                             "spans starting inside", "intent-incompatible spans"], rows)
    lines += ["", "Garbage and edge-case inputs (%d utterances):" % report["garbage"]["utterances"], ""]
    lines += markdown_table(["decoder", "spans starting inside", "intent-incompatible spans", "spans"],
                            [[k, str(v["spans_starting_inside"]), str(v["intent_incompatible_spans"]), str(v["spans"])]
                             for k, v in report["garbage"]["by_decoder"].items()])
    cal = report["calibration"]
    lines += ["", f"Calibration (test, 15-bin ECE); temperatures fitted on dev: intent {cal['intent_temperature']:.3f}, "
              f"slot {cal['slot_temperature']:.3f}:", ""]
    rows = [[n, f"{cal['test']['before'][n]['ece']:.4f}", f"{cal['test']['after'][n]['ece']:.4f}", str(cal["test"]["after"][n]["count"])]
            for n in ("intent", "slot_span", "answer_score")]
    if "crf" in cal:
        c = cal["crf"]
        rows += [[f"CRF model: {n} (T {c['intent_temperature' if n == 'intent' else 'slot_temperature']:.3f})" if n != "answer_score"
                  else f"CRF model: {n}", f"{c['test']['before'][n]['ece']:.4f}", f"{c['test']['after'][n]['ece']:.4f}",
                  str(c["test"]["after"][n]["count"])] for n in ("intent", "slot_span", "answer_score")]
    lines += markdown_table(["confidence", "ECE, T = 1", "ECE, calibrated", "count"], rows)
    sel = report["selective"]
    if sel["dev_at_threshold"] is None:
        lines += ["", f"Abstaining: no threshold keeps dev strict sentence accuracy >= {pct(sel['target_accuracy'])} %."]
    else:
        lines += ["", f"Abstaining: the largest-coverage threshold with dev strict sentence accuracy >= {pct(sel['target_accuracy'])} % "
                  f"is --min_confidence {sel['dev_threshold']:.4f} (dev: {pct(sel['dev_at_threshold']['coverage'])} % answered at "
                  f"{pct(sel['dev_at_threshold']['accuracy'])} %); on test it answers {pct(sel['test_at_dev_threshold']['coverage'])} % "
                  f"at {pct(sel['test_at_dev_threshold']['accuracy'])} % (all answered: {pct(sel['test_all_accuracy'])} %)."]
    t = report["timing"]
    lines += [
        "",
        f"Decoding time per utterance (test, {t['utterances']} utterances): Python with numpy {t['python_numpy_decode_us']:.0f} µs"
        + (f", Python with decoding.cc (ctypes) {t['python_native_decode_us']:.1f} µs" if "python_native_decode_us" in t else "")
        + (f", C++ {t['cpp_decode_us']:.1f} µs" if "cpp_decode_us" in t else "")
        + f"; the model itself (Paddle Inference, batch 1) {t['paddle_inference_model_batch1_us']:.0f} µs.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="exported model (calibrated at export)")
    parser.add_argument("--crf_model_dir", help="an exported model trained with --slot_crf, same recipe otherwise")
    parser.add_argument("--data_dir", required=True, help="dev.txt and test.txt of prepare_data.py")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--target_accuracy", type=float, default=0.95, help="answered-utterance accuracy the threshold must keep on dev")
    parser.add_argument("--cpp_demo", default=os.path.join(PROJECT_DIR, "build", "cpp", "slu_demo"), help="slu_demo for the C++ timing")
    parser.add_argument("--cpu_threads", type=int, default=0)
    args = parser.parse_args(argv)

    predictor = open_predictor(args.model_dir, "paddle-inference", args.cpu_threads)
    labels, calibration = predictor.task.labels, predictor.decoder.calibration
    splits = {name: read_corpus(os.path.join(args.data_dir, f"{name}.txt"), labels) for name in ("dev", "test")}
    predictions = {name: predictor.corpus_predictions(utts) for name, utts in splits.items()}
    decoders = {GREEDY: Decoder.for_task(predictor.task, calibration, GREEDY), CONSTRAINED: predictor.decoder}
    crf = open_predictor(args.crf_model_dir, "paddle-inference", args.cpu_threads) if args.crf_model_dir else None
    crf_predictions = {name: crf.corpus_predictions(utts) for name, utts in splits.items()} if crf else {}

    report = {"model_dir": args.model_dir, "crf_model_dir": args.crf_model_dir, "decoders": []}
    for name, utts in splits.items():
        runs = [(GREEDY, decoders[GREEDY], redecode(predictions[name], decoders[GREEDY])),
                (CONSTRAINED, predictor.decoder, predictions[name])]
        if crf:
            runs.append(("CRF + constrained", crf.decoder, crf_predictions[name]))
        for d, decoder, preds in runs:
            metrics = score(utts, preds, predictor.task)
            report["decoders"].append({"decoder": d, "split": name, **{k: metrics[k] for k in (
                "sentence_acc", "sentence_acc_ref", "intent_acc", "slot_f1")}, **bad_spans(preds, decoder)})

    with open(os.path.join(PROJECT_DIR, "tests", "edge_cases.json"), encoding="utf-8") as f:
        garbage = [c["text"] for c in json.load(f)] + GARBAGE
    garbage = [t for t in garbage if predictor.text_error(t) is None]
    garbage_preds = predictor.records_and_predictions(garbage)[1]
    by_decoder = {}
    for d, decoder in decoders.items():
        preds = redecode(garbage_preds, decoder)
        by_decoder[d] = {**bad_spans(preds, decoder), "spans": sum(len(p.spans) for p in preds)}
    report["garbage"] = {"utterances": len(garbage), "by_decoder": by_decoder,
                         "records": predictor.predict(GARBAGE)}

    report["calibration"] = {
        "intent_temperature": calibration.intent_temperature, "slot_temperature": calibration.slot_temperature,
        "fitted_on": calibration.fitted_on, "test": calibration_before_after(predictor, predictions["test"], splits["test"]),
    }
    if crf:
        report["calibration"]["crf"] = {
            "intent_temperature": crf.decoder.calibration.intent_temperature, "slot_temperature": crf.decoder.calibration.slot_temperature,
            "test": calibration_before_after(crf, crf_predictions["test"], splits["test"])}
    curves = {name: coverage_curve([p.answer_score for p in predictions[name]],
                                   sentence_outcomes(predictions[name], splits[name], labels)) for name in splits}
    dev_point = threshold_for_accuracy(curves["dev"], args.target_accuracy)
    test_point = None
    if dev_point:
        answered = [p for p in curves["test"] if p["threshold"] >= dev_point["threshold"]]
        test_point = answered[-1] if answered else {"coverage": 0.0, "accuracy": float("nan")}
    report["selective"] = {"target_accuracy": args.target_accuracy, "dev_threshold": dev_point and dev_point["threshold"],
                           "dev_at_threshold": dev_point, "test_at_dev_threshold": test_point,
                           "test_all_accuracy": curves["test"][-1]["accuracy"],
                           "test_curve": curves["test"][:: max(1, len(curves["test"]) // 200)] + curves["test"][-1:]}
    report["timing"] = decode_timing(predictor, splits["test"], predictions["test"], args.cpp_demo, args.model_dir)

    os.makedirs(args.output_dir, exist_ok=True)
    save_json(os.path.join(args.output_dir, "decoding.json"), report)
    write_text(os.path.join(args.output_dir, "decoding.md"), markdown(report))
    plot(report, args.output_dir)
    print(markdown(report))


if __name__ == "__main__":
    main()
