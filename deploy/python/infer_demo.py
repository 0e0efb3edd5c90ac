"""FastDeploy Python demo: intent + slots for utterances with an exported model directory.

    python deploy/python/infer_demo.py --model_dir output/demo/infer_model --backend fastdeploy-ort --text 导航去北京

FastDeploy runs the graph; reading the directory, tokenization and decoding are the project's one
prediction path (export_format.py, predictor.py: numpy only), so the JSON lines are those of
run_eval.py. Paddle itself is never imported here: FastDeploy 1.0.7 bundles its own Paddle
Inference, and with paddle 2.6 loaded in the same process its backends crash.
"""
import argparse
import json
import sys
import time

import numpy as np

from backends import FASTDEPLOY_BACKENDS, open_predictor
from predictor import argv_texts, decode_lines
from utils import positive_int


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="an exported directory (infer_model/ or a compression stage)")
    parser.add_argument("--backend", choices=FASTDEPLOY_BACKENDS, default="fastdeploy-ort", help="FastDeploy CPU backend")
    parser.add_argument("--cpu_threads", type=int, default=0, help="CPU threads; 0 = one per core")
    parser.add_argument("--text", action="append", default=[], help="an utterance; repeat for more (default: stdin lines)")
    parser.add_argument("--context", action="append", default=[],
                        help="an earlier utterance of the --text utterances' session; repeat, oldest first (context models)")
    parser.add_argument("--sessions", action="store_true",
                        help="stdin lines are JSON objects {\"session_id\", \"text\"} in conversation order (run_eval.py --sessions_file)")
    parser.add_argument("--catalogue_file", action="append", default=[],
                        help="your slot values (JSON lines; docs/decoding.md#slot-values), added to the export's; repeatable")
    parser.add_argument("--min_confidence", type=float, default=0.0,
                        help="results whose intent or any slot confidence is below this say \"fallback\": true (0 = never)")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="windows per inference call")
    parser.add_argument(
        "--logits_file", help="also save the merged intent and slot logits (.npz) of the predicted utterances, for parity checks"
    )
    args = parser.parse_args(argv)
    if args.sessions and args.logits_file:
        parser.error("--logits_file goes with utterances, not --sessions")

    try:
        predictor = open_predictor(args.model_dir, args.backend, args.cpu_threads, catalogue_files=args.catalogue_file,
                                   min_confidence=args.min_confidence)
    except (RuntimeError, ValueError) as e:
        sys.exit(f"infer_demo: {e}")
    if None in argv_texts(args.context):
        parser.error("--context: a value is not UTF-8")
    texts = argv_texts(args.text) or decode_lines(sys.stdin.buffer.read())  # None: a line or value that is not UTF-8
    start = time.perf_counter()
    if args.sessions:
        records, predictions = predictor.predict_sessions(texts, args.batch_size), []
    else:
        records, predictions = predictor.records_and_predictions(texts, args.batch_size, histories=[args.context] * len(texts))
    elapsed = time.perf_counter() - start
    if args.logits_file:
        predicted = [p for p in predictions if p is not None]
        np.savez(args.logits_file, intent=np.stack([p.intent_logits for p in predicted]),
                 slots=np.concatenate([p.slot_logits for p in predicted]))
    for record in records:
        print(json.dumps(record, ensure_ascii=False))
    print(f"{args.backend}: {len(texts)} utterances in {elapsed * 1000:.1f} ms (tokenization + model + decoding)", file=sys.stderr)


if __name__ == "__main__":
    main()
