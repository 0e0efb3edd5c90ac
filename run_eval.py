"""Evaluate or run an exported model (any stage: infer_model/, compress/stages/*) on the CPU, through
ONNX Runtime by default (backends.FRONT_END_BACKEND) or any backend of backends.py (--backend).

    python run_eval.py --model_dir output/demo/infer_model --eval_file data/prepared/test.txt
    python run_eval.py --model_dir output/demo/infer_model --text 导航去北京 --text 打电话给老王
    python run_eval.py --model_dir output/demo/infer_model --input_file utterances.txt   # one per line
    echo 播放周杰伦的稻香 | python run_eval.py --model_dir output/demo/infer_model     # stdin
    python run_eval.py --model_dir M --text 取消 --context 导航去北京                  # with the session so far
    python run_eval.py --model_dir M --sessions_file turns.jsonl   # {"session_id": "a", "text": "导航去北京"} per line

A model trained with context (run_train.py --context_turns K) reads each utterance with the last K
utterances of its session: from --context (oldest first) for --text, from the earlier lines of the
same session_id in a --sessions_file, and from the earlier lines of the same session in a
corpus-format --eval_file. A model without context ignores them.

Prediction prints one JSON object per input line, the result record of predictor.py: text,
intent, confidence, intent_ranking (top 3), slots as {slot, entity, pos: [first, last],
confidence} (inclusive character offsets into the text as given) and fallback, true when a
confidence is below --min_confidence (ask the driver again rather than act). Confidences are
calibrated on dev at export; slots are decoded under BIO and intent constraints (decoding.py). A
line with no visible character gives {"text": ..., "error": "empty utterance"} instead of a
guess, an over-long one (inference_config.json's max_utterance_tokens) an error record too, and a
line or --text value that is not UTF-8 {"line": N, "error": "invalid UTF-8"}. Utterances longer
than the model window (max_seq_length - 2 characters) are predicted in consecutive windows, as in
evaluation, and reported on stderr; characters outside the vocabulary are read as [UNK]. Output
files are written whole or not at all, and never in place of a directory.
"""
import argparse
import json
import sys

import analysis
from backends import BACKENDS, FRONT_END_BACKEND, open_predictor
from data.corpus import read_corpus
from predictor import argv_texts, decode_lines, score
from utils import positive_int, write_text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model_dir", required=True, help="exported directory (export_format.py): graph, vocab, labels, inference_config.json"
    )
    parser.add_argument("--eval_file", help="labelled file in the corpus format (e.g. a prepared test.txt): print metrics")
    parser.add_argument("--catch_all_intent", action="append", default=[],
                        help="with --eval_file: an intent left out of intent_macro_f1, as NLPCC 2018 leaves out its "
                        "catch-all intent; repeatable")
    parser.add_argument("--text", action="append", default=[], help="an utterance to predict; repeat for more")
    parser.add_argument("--context", action="append", default=[],
                        help="an earlier utterance of the session of the --text utterances; repeat, oldest first")
    parser.add_argument("--input_file", help="utterances to predict, one per line ('-' for stdin)")
    parser.add_argument("--sessions_file", help="utterances with their sessions, one JSON object {\"session_id\", \"text\"} per "
                        "line, in conversation order ('-' for stdin); records start with session_id")
    parser.add_argument("--output_file", help="write the JSON lines / metrics here instead of stdout")
    parser.add_argument("--analysis_dir", help="with --eval_file: write the error analysis here (analysis.py: analysis.json, "
                        "analysis.md, confusion.png, errors.png)")
    parser.add_argument("--compare_model_dir", help="with --analysis_dir: a second exported model, analysed on the same file and "
                        "compared (per-category deltas, the utterances that flipped)")
    parser.add_argument("--backend", default=FRONT_END_BACKEND, choices=list(BACKENDS),
                        help="runtime (backends.py; paddle-inference: the training-time engine, slower at small batches); the "
                        "fastdeploy-* ones need a process without paddle, which this script keeps")
    parser.add_argument("--catalogue_file", action="append", default=[],
                        help="your slot values (JSON lines: slot, value, synonyms; docs/decoding.md#slot-values), added to the "
                        "export's catalogue; repeatable")
    parser.add_argument("--min_confidence", type=float, default=0.0,
                        help="results whose intent or any slot confidence is below this say \"fallback\": true (0 = never)")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="windows per inference call")
    parser.add_argument("--cpu_threads", type=int, default=0, help="CPU math threads; 0 = one per core")
    return parser.parse_args(argv)


def read_utterances(args) -> list:
    """--text values, then the lines of --input_file (or stdin); None for a line that is not UTF-8."""
    lines = argv_texts(args.text)
    if args.input_file and args.input_file != "-":
        with open(args.input_file, "rb") as f:
            lines += decode_lines(f.read())
    elif args.input_file == "-" or (not args.text and not args.eval_file and not args.sessions_file):
        lines += decode_lines(sys.stdin.buffer.read())
    return lines


def report_windows(index: int, tokens: int, windows: int, window: int) -> None:
    print(f"utterance {index + 1}: {tokens} characters, predicted in {windows} windows of {window}", file=sys.stderr)


def write_analysis(args, predictor, utterances, predictions) -> None:
    labels = predictor.task.labels
    rows = analysis.utterance_rows(utterances, predictions, labels)
    result = analysis.analyze(rows, labels.intents, labels.slot_types)
    other_rows = other = None
    if args.compare_model_dir:
        second = open_predictor(args.compare_model_dir, args.backend, args.cpu_threads, min_confidence=args.min_confidence)
        if second.task.labels != labels:
            raise ValueError(f"{args.compare_model_dir}: other labels than {args.model_dir}; the analyses cannot be compared")
        other_rows = analysis.utterance_rows(utterances, second.corpus_predictions(utterances, args.batch_size), labels)
        other = analysis.analyze(other_rows, labels.intents, labels.slot_types)
    title = f"Error analysis of {args.model_dir} on {args.eval_file}" + (f" (other: {args.compare_model_dir})" if other else "")
    analysis.write_report(args.analysis_dir, rows, result, title, other_rows, other)
    print(f"error analysis written to {args.analysis_dir}", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    if None in argv_texts(args.context):
        sys.exit("--context: a value is not UTF-8")
    if (args.analysis_dir and not args.eval_file) or (args.compare_model_dir and not args.analysis_dir):
        sys.exit("--analysis_dir needs --eval_file, and --compare_model_dir needs --analysis_dir")
    try:
        predictor = open_predictor(args.model_dir, args.backend, args.cpu_threads, catalogue_files=args.catalogue_file,
                                   min_confidence=args.min_confidence)
    except (ValueError, RuntimeError) as e:  # a broken directory (ExportError), a bad option, a runtime that cannot run it
        sys.exit(f"run_eval: {e}")
    unknown = sorted(set(args.catch_all_intent) - set(predictor.task.labels.intents))
    if unknown:
        sys.exit(f"run_eval: --catch_all_intent {unknown}: not an intent of {args.model_dir}")
    window = predictor.task.max_seq_length - 2
    out = []
    if args.eval_file:
        utterances = read_corpus(args.eval_file, predictor.task.labels)
        predictions = predictor.corpus_predictions(utterances, args.batch_size)
        out.append(json.dumps(score(utterances, predictions, predictor.task, args.catch_all_intent), ensure_ascii=False, indent=2))
        if args.analysis_dir:
            write_analysis(args, predictor, utterances, predictions)
    texts = read_utterances(args)
    histories = [args.context if i < len(args.text) else [] for i in range(len(texts))]
    records, _ = predictor.records_and_predictions(texts, args.batch_size, lambda i, t, w: report_windows(i, t, w, window), histories)
    if args.sessions_file:
        data = sys.stdin.buffer.read() if args.sessions_file == "-" else open(args.sessions_file, "rb").read()
        records += predictor.predict_sessions(decode_lines(data), args.batch_size)
    out += [json.dumps(record, ensure_ascii=False) for record in records]
    text = "".join(line + "\n" for line in out)
    if args.output_file:
        try:
            write_text(args.output_file, text)
        except IsADirectoryError as e:  # never replaced: it may be a whole trained model
            sys.exit(f"run_eval: --output_file {e}")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
