"""Exported size of the nano architecture with the published 40,000-token vocabulary, to set our
compression figures beside the reference's (69.0 MB fp32 -> 5.4 MB, 7.8 %). The weights are
random: this measures bytes on disk only, never accuracy.

    python benchmarks/vocab40k_size.py [--compress_report output/.../compress/compress_report.json]
"""
import argparse
import os
import tempfile

from backends import model_size_mb
from model import build_from_scratch
from data.labels import read_data_labels
from task import SPECIAL_TOKENS, CharTokenizer, Task, any_slot_types
from exporting import save_static_graph
from utils import PROJECT_DIR as ROOT
from utils import load_json, save_json


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="ernie-3.0-tiny-nano-v2-zh")
    parser.add_argument("--vocab_size", type=int, default=40000)
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "data", "prepared", "nlpcc2018"),
                        help="prepared splits whose label files size the heads")
    parser.add_argument("--compress_report", help="a compress_report.json whose final stage to compare")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "benchmarks", "vocab40k_size.json"))
    args = parser.parse_args()

    vocab = SPECIAL_TOKENS + [f"[unused{i}]" for i in range(args.vocab_size - len(SPECIAL_TOKENS))]
    labels = read_data_labels(args.data_dir)
    model = build_from_scratch(args.architecture, Task(CharTokenizer(vocab), labels, 16, any_slot_types(labels)))
    with tempfile.TemporaryDirectory() as tmp:
        save_static_graph(model, os.path.join(tmp, "model"))
        size_mb = model_size_mb(tmp)
    result = {"architecture": args.architecture, "vocab_size": args.vocab_size, "fp32_size_mb": size_mb,
              "parameters": sum(p.size for p in model.parameters())}
    print(f"{args.architecture}, vocabulary {args.vocab_size}: fp32 export {size_mb:.2f} MB, {result['parameters']:,} parameters")
    if args.compress_report:
        final = load_json(args.compress_report)["stages"][-1]
        result.update(final_stage=final["stage"], final_size_mb=final["size_mb"], final_vs_40k_fp32=final["size_mb"] / size_mb)
        print(f"final stage {final['stage']}: {final['size_mb']:.2f} MB = {100 * result['final_vs_40k_fp32']:.1f} % of it "
              f"(reference: 5.4 / 69.0 MB = 7.8 %)")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_json(args.output, result)


if __name__ == "__main__":
    main()
