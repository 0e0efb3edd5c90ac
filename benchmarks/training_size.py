"""What a few hundred utterances buy: test accuracy by training-set size, from scratch.

    python benchmarks/training_size.py --data_dir data/prepared/vehicle --name vehicle --sizes 100 300 1000
    python benchmarks/training_size.py --data_dir data/prepared/nlpcc2018 --name nlpcc2018 --sizes 100 300 1000 3000

For each size N, the first sessions of train in a seeded order until N utterances (the same
subset on every machine) are trained from scratch (the demo recipe: nano, per-token slot head, no
context) for max(--min_steps, 10 epochs) steps, the best dev checkpoint kept, and scored on the
full dev and test splits with the data directory's label files (a label the subset never has
counts as an error, as it would for a user). Writes training_size_NAME.json and .md.
"""
import argparse
import hashlib
import math
import os
import subprocess
import sys
import time

from data.corpus import read_split, write_corpus
from data.labels import read_data_labels
from export_format import write_labels
from utils import PROJECT_DIR, load_json, markdown_table, save_json, write_text


def subset(train, size: int, seed: int):
    sessions = {}
    for u in train:
        sessions.setdefault(u.session_id, []).append(u)
    order = sorted(sessions, key=lambda sid: hashlib.sha256(f"{seed}:{sid}".encode()).hexdigest())
    picked = []
    for sid in order:
        if len(picked) >= size:
            break
        picked += sessions[sid]
    return picked[:size]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="prepared splits with their label files (data/prepare_data.py)")
    parser.add_argument("--name", required=True, help="names the result files: training_size_NAME.json/.md")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000], help="training-set sizes in utterances")
    parser.add_argument("--min_steps", type=int, default=300, help="fewest optimizer steps of a run (batch 32)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the subset order and of training")
    parser.add_argument("--work_dir", default="output/training-size", help="where the subsets and runs go")
    parser.add_argument("--output_dir", default="benchmarks/results", help="where the results go")
    args = parser.parse_args()

    labels = read_data_labels(args.data_dir)
    train, dev, test = (read_split(args.data_dir, n, labels) for n in ("train", "dev", "test"))
    rows = []
    for size in args.sizes:
        if size > len(train):
            raise SystemExit(f"--sizes {size}: train has only {len(train)} utterances")
        data_dir, run_dir = (os.path.join(args.work_dir, args.name, f"n{size}", d) for d in ("data", "run"))
        os.makedirs(data_dir, exist_ok=True)
        picked = subset(train, size, args.seed)
        for name, utts in (("train", picked), ("dev", dev), ("test", test)):
            write_corpus(os.path.join(data_dir, f"{name}.txt"), utts)
        write_labels(data_dir, labels)  # the full label set: what the subset lacks is scored as missed
        steps = max(args.min_steps, 10 * math.ceil(size / 32))
        cmd = [sys.executable, os.path.join(PROJECT_DIR, "run_train.py"), "--from_scratch", "--model_name_or_path",
               "ernie-3.0-tiny-nano-v2-zh", "--data_dir", data_dir, "--output_dir", run_dir, "--do_train", "--do_eval",
               "--max_steps", str(steps), "--per_device_train_batch_size", "32", "--learning_rate", "5e-4", "--warmup_ratio", "0.1",
               "--evaluation_strategy", "steps", "--save_strategy", "steps", "--eval_steps", str(steps // 5),
               "--save_steps", str(steps // 5), "--logging_steps", str(steps // 5), "--seed", str(args.seed), "--disable_tqdm", "true"]
        start = time.time()
        print(f"N={size}: {steps} steps -> {run_dir}", flush=True)
        with open(run_dir + ".log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_DIR)
        result = load_json(os.path.join(run_dir, "eval_results.json"))["test"]
        rows.append({"train_utterances": size, "intents_in_train": len({u.intent for u in picked}), "steps": steps,
                     "train_s": time.time() - start, **{k: result[k] for k in ("sentence_acc", "intent_acc", "slot_f1")}})
        print(rows[-1], flush=True)
    save_json(os.path.join(args.output_dir, f"training_size_{args.name}.json"),
              {"data_dir": args.data_dir, "test_utterances": len(test), "intents": len(labels.intents), "rows": rows})
    table = markdown_table(["train utterances", "intents in train", "steps", "test sentence acc", "intent acc", "slot F1", "run"],
                           [[r["train_utterances"], f"{r['intents_in_train']}/{len(labels.intents)}", r["steps"],
                             f"{100 * r['sentence_acc']:.2f}", f"{100 * r['intent_acc']:.2f}", f"{100 * r['slot_f1']:.2f}",
                             f"{r['train_s'] / 60:.1f} min"] for r in rows])
    write_text(os.path.join(args.output_dir, f"training_size_{args.name}.md"), "\n".join([
        f"# Accuracy by training-set size: {args.name}", "",
        f"`{args.data_dir}`: from scratch (nano, per-token slot head, no context, batch 32), scored on its {len(test):,} test "
        "utterances; the run column is wall time on this machine (2 CPU threads, other work beside it).", "", *table, ""]))
    print("\n".join(table))


if __name__ == "__main__":
    main()
