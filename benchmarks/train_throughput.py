"""Training throughput of run_train.py (PaddleNLP Trainer, from-scratch nano) on this CPU, for the
setup as found and with each fix added, measured in one run so the ratios compare like for like.

    python benchmarks/train_throughput.py [--data_dir data/prepared/nlpcc2018] [--max_steps 60]

Each configuration runs in its own process, with its own environment (MKL_DEBUG_CPU_TYPE, threads).
Prints a Markdown table and writes JSON (default output/benchmarks/train_throughput.json).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from utils import PROJECT_DIR as ROOT
from utils import save_json

# name, extra environment, --cpu_threads, batch size
CONFIGS = [
    ("as found: OMP_NUM_THREADS=1, MKL generic kernels, batch 32", {"MKL_DEBUG_CPU_TYPE": ""}, 1, 32),
    ("+ 2 threads", {"MKL_DEBUG_CPU_TYPE": ""}, 2, 32),
    ("+ MKL AVX2 kernels (MKL_DEBUG_CPU_TYPE=5)", {"MKL_DEBUG_CPU_TYPE": "5"}, 2, 32),
    ("+ batch 64 (project default)", {"MKL_DEBUG_CPU_TYPE": "5"}, 2, 64),
]


def run(data_dir, out_dir, env, threads, batch, max_steps):
    cmd = [
        sys.executable, os.path.join(ROOT, "run_train.py"), "--from_scratch", "--data_dir", data_dir,
        "--output_dir", out_dir, "--do_train", "--max_steps", str(max_steps), "--cpu_threads", str(threads),
        "--per_device_train_batch_size", str(batch), "--evaluation_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--logging_steps", str(max_steps), "--disable_tqdm", "true",
    ]
    subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(os.path.join(out_dir, "train_results.json")) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="prepared splits (default: NLPCC if prepared, else synthetic)")
    parser.add_argument("--max_steps", type=int, default=60, help="optimizer steps per configuration")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "benchmarks", "train_throughput.json"))
    args = parser.parse_args()

    data_dir = args.data_dir or next(
        (d for d in (os.path.join(ROOT, "data", "prepared", "nlpcc2018"), os.path.join(ROOT, "data", "prepared"))
         if os.path.isfile(os.path.join(d, "train.txt"))), None)
    if data_dir is None:
        sys.exit("no prepared data: run `make data` (or `python data/prepare_data.py`) first")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, env, threads, batch) in enumerate(CONFIGS):
            result = run(data_dir, os.path.join(tmp, str(i)), env, threads, batch, args.max_steps)
            rows.append({"config": name, "cpu_threads": threads, "batch_size": batch,
                         "samples_per_second": result["train_samples_per_second"], "train_runtime_s": result["train_runtime"]})
            print(f"{name}: {rows[-1]['samples_per_second']:.1f} samples/s", file=sys.stderr)
    base = rows[0]["samples_per_second"]
    for row in rows:
        row["speedup"] = row["samples_per_second"] / base
    report = {"data_dir": os.path.abspath(data_dir), "max_steps": args.max_steps, "cpu_count": os.cpu_count(), "results": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_json(args.output, report)
    print("| configuration | threads | batch | samples/s | speedup |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['cpu_threads']} | {r['batch_size']} | {r['samples_per_second']:.1f} | {r['speedup']:.2f}x |")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
