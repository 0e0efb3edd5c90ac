"""Training throughput of run_train.py (PaddleNLP Trainer, from-scratch nano) on this CPU: the
setup as found and with each fix added, and one process x 2 threads against two data-parallel
processes x 1 thread (paddle.distributed.launch, gloo) at the same global batch, measured in one
run so the ratios compare like for like.

    python benchmarks/train_throughput.py [--data_dir data/prepared/nlpcc2018] [--max_steps 60]

Each configuration runs in its own process(es), with its own environment (MKL_DEBUG_CPU_TYPE,
threads). Writes train_throughput.json and train_throughput.md to --output_dir.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from utils import PROJECT_DIR as ROOT
from utils import markdown_table, save_json, write_text

# name, extra environment, --cpu_threads per process, batch size per process, processes
AVX2 = {"MKL_DEBUG_CPU_TYPE": "5"}
CONFIGS = [
    ("as found: OMP_NUM_THREADS=1, MKL generic kernels, batch 32", {"MKL_DEBUG_CPU_TYPE": ""}, 1, 32, 1),
    ("+ 2 threads", {"MKL_DEBUG_CPU_TYPE": ""}, 2, 32, 1),
    ("+ MKL AVX2 kernels (MKL_DEBUG_CPU_TYPE=5)", AVX2, 2, 32, 1),
    ("+ batch 64 (project default): 1 process x 2 threads", AVX2, 2, 64, 1),
    ("data parallel: 2 processes x 1 thread, 32 each (global batch 64)", AVX2, 1, 32, 2),
]


def run(data_dir, out_dir, env, threads, batch, processes, max_steps):
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(processes), "--log_dir", out_dir + "-logs"]
    cmd = launcher + [
        os.path.join(ROOT, "run_train.py"), "--from_scratch", "--data_dir", data_dir,
        "--output_dir", out_dir, "--do_train", "--max_steps", str(max_steps), "--cpu_threads", str(threads),
        "--per_device_train_batch_size", str(batch), "--evaluation_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--logging_steps", str(max_steps), "--disable_tqdm", "true",
    ]
    proc = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(out_dir, "train_results.json")) as f:
        return json.load(f)  # samples/s of the global batch (rank 0 writes it)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="prepared splits (default: NLPCC if prepared, else synthetic)")
    parser.add_argument("--max_steps", type=int, default=60, help="optimizer steps per configuration")
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "output", "benchmarks"),
                        help="where train_throughput.json and .md are written")
    args = parser.parse_args()

    data_dir = args.data_dir or next(
        (d for d in (os.path.join(ROOT, "data", "prepared", "nlpcc2018"), os.path.join(ROOT, "data", "prepared"))
         if os.path.isfile(os.path.join(d, "train.txt"))), None)
    if data_dir is None:
        sys.exit("no prepared data: run `make data` (or `python data/prepare_data.py`) first")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, env, threads, batch, processes) in enumerate(CONFIGS):
            result = run(data_dir, os.path.join(tmp, str(i)), env, threads, batch, processes, args.max_steps)
            rows.append({"config": name, "processes": processes, "cpu_threads": threads, "batch_size": batch,
                         "global_batch": batch * processes, "samples_per_second": result["train_samples_per_second"],
                         "train_runtime_s": result["train_runtime"]})
            print(f"{name}: {rows[-1]['samples_per_second']:.1f} samples/s", file=sys.stderr)
    base = rows[0]["samples_per_second"]
    for row in rows:
        row["speedup"] = row["samples_per_second"] / base
    single, parallel = rows[-2], rows[-1]
    report = {"data_dir": os.path.abspath(data_dir), "max_steps": args.max_steps, "cpu_count": os.cpu_count(), "results": rows,
              "data_parallel_vs_threads": parallel["samples_per_second"] / single["samples_per_second"]}
    lines = markdown_table(["configuration", "processes", "threads each", "batch each", "samples/s", "speedup"],
                           [[r["config"], r["processes"], r["cpu_threads"], r["batch_size"], f"{r['samples_per_second']:.1f}",
                             f"{r['speedup']:.2f}x"] for r in rows])
    lines.append(f"\n{args.max_steps} steps per configuration on {data_dir}; {os.cpu_count()} CPU cores. Same global batch "
                 f"(64): 2 processes x 1 thread run at {report['data_parallel_vs_threads']:.2f}x the samples/s of "
                 "1 process x 2 threads.")
    os.makedirs(args.output_dir, exist_ok=True)
    save_json(os.path.join(args.output_dir, "train_throughput.json"), report)
    write_text(os.path.join(args.output_dir, "train_throughput.md"), "\n".join(lines) + "\n")
    print("\n".join(lines) + f"\n\nwritten to {args.output_dir}/train_throughput.{{json,md}}")


if __name__ == "__main__":
    main()
