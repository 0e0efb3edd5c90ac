"""Convert an exported model directory to Paddle Lite's .nb format for the Android app, and verify
the conversion on this machine.

    make lite-setup      # once: the Python 3.7 tool virtualenv .venv-lite (paddlelite 2.12)
    python deploy/android/convert.py --model_dir output/demo/infer_model --output_dir output/android-model \
        --verify_file data/prepared/test.txt

Writes <output_dir>/model.nb (ARM, what the app loads) beside model.pdmodel (its embedding tables
are checked against the vocabulary), vocab.txt, the label files, inference_config.json and a
manifest.json over them all (the app's assets; slu.cc verifies every digest at load). With --verify_file it also converts for x86, runs
that .nb through Paddle Lite's x86 light API (deploy/android/lite_logits.py, in .venv-lite) on
the file's utterances and compares the predictions with Paddle Inference on the same export
(run_eval.py's engine): agreement and largest logit difference go to verify.json, and the exit
code is 1 if agreement is below --min_agreement.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

import export_format
from backends import open_predictor
from data.corpus import read_corpus
from exporting import export_app
from predictor import run_windows
from utils import PROJECT_DIR, save_json

HERE = os.path.dirname(os.path.abspath(__file__))


def lite_tool(lite_venv: str, name: str) -> str:
    path = os.path.join(lite_venv, "bin", name)
    if not os.path.isfile(path):
        sys.exit(f"{path}: not found; create the Paddle Lite tool virtualenv first (make lite-setup)")
    return path


def convert(model_dir: str, target: str, out_prefix: str, lite_venv: str) -> str:
    cmd = [
        lite_tool(lite_venv, "paddle_lite_opt"),
        f"--model_file={os.path.join(model_dir, export_format.GRAPH_FILE)}",
        f"--param_file={os.path.join(model_dir, export_format.PARAMS_FILE)}",
        f"--optimize_out={out_prefix}",
        f"--valid_targets={target}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.isfile(out_prefix + ".nb"):
        sys.exit(f"paddle_lite_opt could not convert {model_dir} for {target}:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return out_prefix + ".nb"


def verify(model_dir: str, nb_x86: str, utterances, lite_venv: str, threads: int) -> dict:
    """Predictions of the x86 .nb against Paddle Inference on the same windows (with the session
    context a context model reads) and batches."""
    reference = open_predictor(model_dir, "paddle-inference", threads)
    pad_id = reference.task.tokenizer.pad_id
    encoded = reference.task.encode_corpus(utterances)
    batches = []

    def recording(ids):
        batches.append(ids)
        return reference.logits_fn(ids)

    expected = run_windows(encoded, recording, pad_id, reference.decoder, batch_size=32)
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "outputs.npz")
        np.savez(inputs, **{f"b{i}": b for i, b in enumerate(batches)})
        proc = subprocess.run([lite_tool(lite_venv, "python"), os.path.join(HERE, "lite_logits.py"), nb_x86, inputs, outputs],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"Paddle Lite's x86 runtime could not run {nb_x86}:\n{proc.stderr[-2000:]}")
        lite = np.load(outputs)
        replay = iter([(lite[f"b{i}_intent"], lite[f"b{i}_slots"]) for i in range(len(batches))])
    got = run_windows(encoded, lambda ids: next(replay), pad_id, reference.decoder, batch_size=32)
    same = sum(g.intent_id == e.intent_id and g.tag_ids == e.tag_ids for g, e in zip(got, expected))
    return {
        "utterances": len(utterances),
        "prediction_agreement": same / len(utterances),
        "max_abs_logit_diff": float(max(max(np.abs(g.intent_logits - e.intent_logits).max(), np.abs(g.slot_logits - e.slot_logits).max())
                                        for g, e in zip(got, expected))),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="an exported directory (infer_model/ or a compression stage)")
    parser.add_argument("--output_dir", required=True, help="gets model.nb (ARM) and the app's assets")
    parser.add_argument("--lite_venv", default=os.path.join(PROJECT_DIR, ".venv-lite"), help="the Paddle Lite tool virtualenv")
    parser.add_argument("--verify_file", help="labelled split (e.g. data/prepared/test.txt): check an x86 .nb against Paddle Inference")
    parser.add_argument("--min_agreement", type=float, default=0.99, help="least share of identical predictions to pass")
    parser.add_argument("--cpu_threads", type=int, default=1, help="Paddle Inference threads in the check")
    args = parser.parse_args(argv)

    exported = export_format.read(args.model_dir)  # refuse a directory that breaks the contract before converting it
    os.makedirs(args.output_dir, exist_ok=True)
    nb = convert(args.model_dir, "arm", os.path.join(args.output_dir, "model"), args.lite_venv)
    files = export_app(exported, nb, args.output_dir)
    print(f"{nb}: {os.path.getsize(nb) / 1e6:.2f} MB (ARM), with {', '.join(files[1:])}")
    if not args.verify_file:
        return
    with tempfile.TemporaryDirectory() as tmp:
        nb_x86 = convert(args.model_dir, "x86", os.path.join(tmp, "model_x86"), args.lite_venv)
        utterances = read_corpus(args.verify_file)
        report = {"model_dir": args.model_dir, "verify_file": args.verify_file, "x86_nb_mb": os.path.getsize(nb_x86) / 1e6,
                  "arm_nb_mb": os.path.getsize(nb) / 1e6, **verify(args.model_dir, nb_x86, utterances, args.lite_venv, args.cpu_threads)}
    save_json(os.path.join(args.output_dir, "verify.json"), report)
    print(f"x86 .nb vs Paddle Inference on {report['utterances']} utterances: {100 * report['prediction_agreement']:.2f} % identical "
          f"predictions, largest logit difference {report['max_abs_logit_diff']:.2e}")
    if report["prediction_agreement"] < args.min_agreement:
        sys.exit(f"agreement below --min_agreement {args.min_agreement}")


if __name__ == "__main__":
    main()
