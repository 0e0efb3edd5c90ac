"""Compression run after run: several run_train.py --do_compress outputs side by side, each stage's
test accuracy against its own fp32 model, the QAT stage also on ONNX Runtime int8 (the backend the
speed claims are made on). What docs/compression.md's "Width 0.5, run after run" quotes.

    python benchmarks/compression_runs.py --output_dir benchmarks/results/toward86 \
        --run "default recipe, lr 5e-5=output/nlpcc2018-nano-scratch-compress-width0.5" \
        --run "distilled (kd5) seed 42, lr 2e-4=output/nlpcc2018-nano-scratch-kd5-s42-compress-width0.5-lr2e-4"

Reads each run's compress/compress_report.json (Paddle Inference scores, written by the run) and
scores its QAT int8 stage again on the test split with --backend. Writes compression_runs.json / .md.
"""
import argparse
import os
import sys

from backends import open_predictor
from data.corpus import read_corpus
from utils import load_json, markdown_table, save_json, write_text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="NAME=COMPRESS_OUTPUT_DIR (the last = separates)")
    parser.add_argument("--data_dir", default="data/prepared/nlpcc2018")
    parser.add_argument("--skip_missing", action="store_true", help="leave out (and name) runs that have no compress_report.json")
    parser.add_argument("--backend", default="onnxruntime-int8")
    parser.add_argument("--output_dir", default="benchmarks/results")
    parser.add_argument("--cpu_threads", type=int, default=2)
    args = parser.parse_args(argv)

    test = read_corpus(os.path.join(args.data_dir, "test.txt"))
    runs = []
    named_dirs = [r.rsplit("=", 1) for r in args.run]
    for name, directory in named_dirs:
        report_file = os.path.join(directory, "compress", "compress_report.json")
        if args.skip_missing and not os.path.isfile(report_file):
            print(f"{name}: no {report_file}, left out", file=sys.stderr)
            continue
        report = load_json(report_file)
        stages = {s["stage"]: s for s in report["stages"]}
        qat = next(s for s in stages if s.endswith("-int8"))
        # the stage where it is now: under the run's directory, which may have moved since the report was written
        qat_dir = os.path.join(directory, "compress", "stages", qat)
        on_backend = open_predictor(qat_dir, args.backend, args.cpu_threads).evaluate(test)["sentence_acc"]
        runs.append({"name": name, "dir": directory, "qat_stage": qat, "fp32": stages["fp32"]["sentence_acc"],
                     "stages": {k: s["sentence_acc"] for k, s in stages.items()}, "qat_on_backend": on_backend})
        print(f"{name}: fp32 {runs[-1]['fp32']:.4f}, {qat} {stages[qat]['sentence_acc']:.4f}, on {args.backend} {on_backend:.4f}",
              flush=True)

    if not runs:  # nothing to compare: the results already there stay as they are
        sys.exit(f"no compress/compress_report.json under any of: {', '.join(d for _, d in named_dirs)}")
    os.makedirs(args.output_dir, exist_ok=True)
    save_json(os.path.join(args.output_dir, "compression_runs.json"), {"backend": args.backend, "data_dir": args.data_dir,
                                                                       "runs": runs})
    stage_names = [s for s in runs[0]["stages"] if s != "fp32"]
    header = ["run", "fp32", *stage_names, f"QAT int8 on {args.backend}", "that − fp32"]
    rows = [[r["name"], f"{100 * r['fp32']:.2f}", *[f"{100 * r['stages'].get(s, float('nan')):.2f}" for s in stage_names],
             f"{100 * r['qat_on_backend']:.2f}", f"{100 * (r['qat_on_backend'] - r['fp32']):+.2f}"] for r in runs]
    lines = [f"Strict test sentence accuracy (%) of each stage, {args.data_dir}; stages scored by Paddle Inference "
             f"(QAT stages on oneDNN int8 kernels) as the run reported them, the QAT stage also on {args.backend}.", ""]
    write_text(os.path.join(args.output_dir, "compression_runs.md"), "\n".join(lines + markdown_table(header, rows)) + "\n")
    print("\n".join(lines + markdown_table(header, rows)))


if __name__ == "__main__":
    main()
