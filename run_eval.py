"""Evaluate or run an exported model (any stage: infer_model/, compress/stages/*) through Paddle
Inference on the CPU.

    python run_eval.py --model_dir output/demo/infer_model --eval_file data/prepared/test.txt
    python run_eval.py --model_dir output/demo/infer_model --text 导航去北京 --text 打电话给老王
    python run_eval.py --model_dir output/demo/infer_model --input_file utterances.txt   # one per line
    echo 播放周杰伦的稻香 | python run_eval.py --model_dir output/demo/infer_model     # stdin

Prediction prints one JSON object per input line: text, intent, confidence and slots as
{slot, entity, pos: [first, last]} (inclusive character offsets into the text as given).
An empty line gives {"text": "", "error": "empty utterance"} instead of a guess. Utterances longer
than the model window (max_seq_length - 2 characters) are predicted in consecutive windows, as in
evaluation, and reported on stderr; characters outside the vocabulary are read as [UNK].
"""
import utils  # first: it configures the CPU math library before paddle loads it

import argparse
import json
import sys

from utils import InferenceModel


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="exported directory: model.pdmodel/.pdiparams, vocab.txt, labels, inference_config.json")
    parser.add_argument("--eval_file", help="labelled file in the corpus format (e.g. a prepared test.txt): print metrics")
    parser.add_argument("--text", action="append", default=[], help="an utterance to predict; repeat for more")
    parser.add_argument("--input_file", help="utterances to predict, one per line ('-' for stdin)")
    parser.add_argument("--output_file", help="write the JSON lines / metrics here instead of stdout")
    parser.add_argument("--batch_size", type=int, default=64, help="windows per inference call")
    parser.add_argument("--cpu_threads", type=int, default=0, help="CPU math threads; 0 = one per core")
    parser.add_argument("--no_onednn", action="store_true", help="plain CPU kernels instead of oneDNN")
    return parser.parse_args(argv)


def read_utterances(args) -> list:
    lines = list(args.text)
    if args.input_file:
        stream = sys.stdin if args.input_file == "-" else open(args.input_file, encoding="utf-8")
        with stream:
            lines += [line.rstrip("\r\n") for line in stream]
    elif not args.text and not args.eval_file:
        lines += [line.rstrip("\r\n") for line in sys.stdin]
    return lines


def predict(model: InferenceModel, texts: list, batch_size: int) -> list:
    """Results in input order; empty utterances get an explicit error record."""
    window = model.config["max_seq_length"] - 2
    for i, text in enumerate(texts):
        tokens = sum(not c.isspace() for c in text)
        if tokens > window:
            windows = len(utils.window_bounds(tokens, window))
            print(f"utterance {i + 1}: {tokens} characters, predicted in {windows} windows of {window}", file=sys.stderr)
    real = [t for t in texts if t.strip()]
    results = iter(model.predict(real, batch_size))
    return [next(results) if t.strip() else {"text": t, "error": "empty utterance"} for t in texts]


def main(argv=None):
    args = parse_args(argv)
    threads = utils.set_cpu_threads(args.cpu_threads)
    model = InferenceModel(args.model_dir, cpu_threads=threads, use_onednn=not args.no_onednn)
    out = open(args.output_file, "w", encoding="utf-8") if args.output_file else sys.stdout
    try:
        if args.eval_file:
            metrics = model.evaluate(utils.read_corpus(args.eval_file, model.labels), args.batch_size)
            out.write(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n")
        texts = read_utterances(args)
        for result in predict(model, texts, args.batch_size):
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    main()
