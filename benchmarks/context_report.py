"""Session context and whole utterances, measured: one row per recipe (mean ± std over its seeds).

    python benchmarks/context_report.py --data_dir data/prepared/nlpcc2018 --output_dir benchmarks/results \
        --recipe "K=0, window 16=output/ctx/k0-w16-s42,output/ctx/k0-w16-s43" --recipe "K=1=output/ctx/k1-s42" \
        --baseline "K=0, window 16" --chosen "K=1"

A recipe is one or more run_train.py output directories (one per seed, each with infer_model/ and
train_results.json). Every run is scored through Paddle Inference on its own export, on dev and
test, each utterance with its session's earlier turns as the model was trained to read them:
strict and reference-compatible sentence accuracy, intent accuracy, slot F1, and sentence accuracy
on utterances of at most 4 characters, of more than 14, on first turns and on later turns. For
the baseline and the chosen recipe (before and with context; or, for the candidates toward 86, the
default recipe and a candidate) the cost is measured in this run, one after the
other on a quiet CPU: training samples/s (run_train.py for --throughput_steps steps, 2 threads,
the recipe's own flags read from its run) and batch-1 p50 latency (1 thread, a fresh process,
test utterances with their context). The error breakdown of the chosen recipe's first run says
where its remaining errors are. An --ensemble row scores several runs as one model (the mean of
their log-probabilities: what distilling them into one model could reach). Writes context.json,
context.md and context.png.
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile

import numpy as np

from backends import open_predictor
from data.corpus import read_corpus
from latency import measure_in_subprocess
from metrics import sentence_correct
from predictor import score
from teachers import ensemble_predictor
from utils import PROJECT_DIR, load_json, markdown_table, save_figure, save_json, write_text

SUBSETS = {
    "len<=4": lambda u, first: len(u.text) <= 4,
    "len>14": lambda u, first: len(u.text) > 14,
    "first turn": lambda u, first: first,
    "later turns": lambda u, first: not first,
}
METRICS = ["sentence_acc", "sentence_acc_ref", "intent_acc", "slot_f1", "intent_macro_f1"] + [f"acc {name}" for name in SUBSETS]


def first_turns(utterances):
    seen, out = set(), []
    for u in utterances:
        out.append(u.session_id not in seen)
        seen.add(u.session_id)
    return out


def evaluate(predictor, utterances):
    """Metrics of one predictor (an export, or an ensemble of them) on one split, and its (intent,
    tags) per utterance."""
    predictions = predictor.corpus_predictions(utterances)
    labels = predictor.task.labels
    predicted = [(labels.intents[p.intent_id], [labels.slot_tags[t] for t in p.tag_ids]) for p in predictions]
    metrics = {k: v for k, v in score(utterances, predictions, predictor.task).items() if k != "per_intent"}
    correct = [sentence_correct(u, i, t) for u, (i, t) in zip(utterances, predicted)]
    for name, member in SUBSETS.items():
        picked = [c for u, c, first in zip(utterances, correct, first_turns(utterances)) if member(u, first)]
        metrics[f"acc {name}"] = float(np.mean(picked)) if picked else None
        metrics[f"n {name}"] = len(picked)
    return metrics, predicted


def breakdown(utterances, predicted) -> dict:
    """Where the wrong utterances are: intent vs slots, by length and turn, top confusions."""
    firsts = first_turns(utterances)
    rows = collections.Counter()
    confusions = collections.Counter()
    for u, (intent, tags), first in zip(utterances, predicted, firsts):
        if sentence_correct(u, intent, tags):
            continue
        kind = "intent wrong" if intent != u.intent else "slots wrong"
        length = "len<=4" if len(u.text) <= 4 else "len>14" if len(u.text) > 14 else "len 5-14"
        rows[(kind, length, "first turn" if first else "later turn")] += 1
        if intent != u.intent:
            confusions[(u.intent, intent)] += 1
    return {
        "wrong": sum(rows.values()),
        "by_kind_length_turn": [{"kind": k, "length": n, "turn": t, "count": c} for (k, n, t), c in sorted(rows.items())],
        "top_confusions": [{"gold": g, "predicted": p, "count": c} for (g, p), c in confusions.most_common(8)],
    }


def train_flags(run_dir: str) -> list:
    """The run_train.py flags that shape a run's training rows and loss, read from what it saved."""
    exported = load_json(os.path.join(run_dir, "infer_model", "inference_config.json"))
    config = load_json(os.path.join(run_dir, "config.json"))
    flags = ["--max_seq_length", str(exported["max_seq_length"]), "--context_turns", str(exported["context_turns"])]
    if exported["context_turns"]:
        flags += ["--max_context_tokens", str(exported["max_context_tokens"])]
    return flags + (["--slot_crf"] if config.get("slot_crf") else [])


def training_throughput(run_dir: str, data_dir: str, steps: int, extra_flags=()) -> float:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "run_train.py"), "--from_scratch", "--data_dir", data_dir,
                        "--output_dir", out, "--do_train", "--max_steps", str(steps), "--cpu_threads", "2", "--seed", "42",
                        "--evaluation_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                        "--logging_steps", str(steps), "--disable_tqdm", "true", *train_flags(run_dir), *extra_flags],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return load_json(os.path.join(out, "train_results.json"))["train_samples_per_second"]


def mean_std(values):
    values = [v for v in values if v is not None]
    return (float(np.mean(values)), float(np.std(values))) if values else (None, None)


def cell(values, scale=100.0):
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    return f"{scale * mean:.2f}" + (f" ± {scale * std:.2f}" if len(values) > 1 else "")


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["recipes"])
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.5))
    for k, (metric, color) in enumerate((("sentence_acc", "tab:blue"), ("intent_acc", "tab:orange"))):
        stats = [mean_std([r["test"][metric] for r in report["recipes"][n]["runs"]]) for n in names]
        ax.barh(np.arange(len(names)) + 0.4 * k, [100 * m for m, _ in stats], 0.4, xerr=[100 * s for _, s in stats],
                color=color, label=f"test {metric.replace('_', ' ')}")
    ax.axvline(82.34, color="gray", linestyle="--", label="reference, pretrained (82.34)")
    ax.set_yticks(np.arange(len(names)) + 0.2)
    ax.set_yticklabels(names)
    ax.set_xlim(70, 95)
    ax.set_xlabel("%")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--recipe", action="append", required=True, help="NAME=RUN_DIR[,RUN_DIR...] (one run per seed; the last = separates)"
    )
    parser.add_argument("--ensemble", action="append", default=[],
                        help="NAME=RUN_DIR,RUN_DIR[,...]: those runs as one model (teachers.ensemble_predictor), one row")
    parser.add_argument("--baseline", help="the recipe compared against: before context, or the default (timed; none: the "
                        "chosen recipe is timed alone)")
    parser.add_argument("--chosen", required=True, help="the recipe chosen on dev (timed, its errors broken down)")
    parser.add_argument("--chosen_train_flags", default="",
                        help="run_train.py flags of the chosen recipe that its saved files do not record (e.g. --teacher_dirs ...), "
                        "for timing its training")
    parser.add_argument("--data_dir", default="data/prepared/nlpcc2018")
    parser.add_argument("--output_dir", default="benchmarks/results")
    parser.add_argument("--throughput_steps", type=int, default=100, help="training steps timed per recipe (0: skip)")
    parser.add_argument("--latency_utterances", type=int, default=1000)
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--skip_missing", action="store_true",
                        help="leave out runs not trained (no infer_model/), each named; a recipe keeps the seeds that are there")
    args = parser.parse_args(argv)

    splits = {name: read_corpus(os.path.join(args.data_dir, f"{name}.txt")) for name in ("dev", "test")}
    recipes = dict(r.rsplit("=", 1) for r in args.recipe)  # names may hold "=" (K=2), directories do not
    report = {"data_dir": args.data_dir, "baseline": args.baseline, "chosen": args.chosen, "recipes": {}}
    for name, dirs in recipes.items():
        runs = []
        for run_dir in dirs.split(","):
            if args.skip_missing and not os.path.isfile(os.path.join(run_dir, "infer_model", "inference_config.json")):
                print(f"{name}: {run_dir} left out (not trained)", flush=True)
                continue
            run = {"dir": run_dir, "flags": train_flags(run_dir), "train": load_json(os.path.join(run_dir, "train_results.json"))}
            for split, utts in splits.items():
                run[split], predicted = evaluate(open_predictor(os.path.join(run_dir, "infer_model"), "paddle-inference",
                                                                args.cpu_threads), utts)
                if split == "test" and name == args.chosen and not runs:
                    report["chosen_errors"] = breakdown(utts, predicted)
            runs.append(run)
            print(f"{name} {run_dir}: dev {run['dev']['sentence_acc']:.4f}, test {run['test']['sentence_acc']:.4f}", flush=True)
        if runs:
            report["recipes"][name] = {"runs": runs}
    timed = [name for name in (args.baseline, args.chosen) if name]
    missing = [name for name in timed if name not in report["recipes"]]
    if missing:
        raise SystemExit(f"no trained run of {missing}: the baseline and the chosen recipe need one each")
    for name, dirs in (e.rsplit("=", 1) for e in args.ensemble):
        members = dirs.split(",")
        predictor = ensemble_predictor([os.path.join(d, "infer_model") for d in members], "paddle-inference", args.cpu_threads)
        run = {"dir": dirs, **{split: evaluate(predictor, utts)[0] for split, utts in splits.items()}}
        report["recipes"][name] = {"runs": [run], "ensemble_of": len(members)}
        print(f"{name} (ensemble of {len(members)}): dev {run['dev']['sentence_acc']:.4f}, test {run['test']['sentence_acc']:.4f}",
              flush=True)
    for name in timed:
        first = report["recipes"][name]["runs"][0]["dir"]
        cost = {"latency": measure_in_subprocess(os.path.join(first, "infer_model"), "paddle-inference", 1,
                                                 os.path.join(args.data_dir, "test.txt"), args.latency_utterances)}
        if args.throughput_steps:
            extra = args.chosen_train_flags.split() if name == args.chosen else []
            cost["train_samples_per_s"] = training_throughput(first, args.data_dir, args.throughput_steps, extra)
        report["recipes"][name]["cost"] = cost

    os.makedirs(args.output_dir, exist_ok=True)
    save_json(os.path.join(args.output_dir, "context.json"), report)
    plot(report, os.path.join(args.output_dir, "context.png"))
    n_test = report["recipes"][timed[0]]["runs"][0]["test"]
    header = ["recipe", "seeds", "dev sentence acc", *[f"test {m.replace('_', ' ')}" for m in METRICS]]
    rows = [[name, f"ensemble of {r['ensemble_of']}" if "ensemble_of" in r else len(r["runs"]),
             cell([run["dev"]["sentence_acc"] for run in r["runs"]]),
             *[cell([run["test"][m] for run in r["runs"]]) for m in METRICS]] for name, r in report["recipes"].items()]
    lines = [f"Test split of {args.data_dir} ({n_test['num_utterances']} utterances: " + ", ".join(
        f"{n_test[f'n {s}']} {s}" for s in SUBSETS) + "); accuracies in %, mean ± std over seeds.", ""]
    lines += markdown_table(header, rows) + [""]
    cost_rows = [[name, f"{c['train_samples_per_s']:.1f}" if "train_samples_per_s" in c else "-",
                  f"{c['latency']['latency_ms']['p50']:.2f}" if "latency_ms" in c["latency"] else c["latency"].get("error")]
                 for name in timed for c in [report["recipes"][name]["cost"]]]
    lines += [("What the baseline and the chosen recipe cost (measured one after the other in this run, this CPU): training "
               if args.baseline else "What the chosen recipe costs (measured in this run, this CPU): training ")
              + "samples/s with 2 threads "
              f"({args.throughput_steps} steps), batch-1 p50 latency with 1 thread (Paddle Inference, test utterances with "
              "their context).", ""] + markdown_table(["recipe", "training samples/s", "batch-1 p50 (ms)"], cost_rows) + [""]
    errors = report.get("chosen_errors")
    if errors:
        lines += [f"Where the chosen recipe's {errors['wrong']} wrong test utterances are (first seed):", ""]
        lines += markdown_table(["kind", "length", "turn", "count"], [[r["kind"], r["length"], r["turn"], r["count"]]
                                                                      for r in errors["by_kind_length_turn"]], 3) + [""]
        lines += markdown_table(["gold intent", "predicted", "count"], [[c["gold"], c["predicted"], c["count"]]
                                                                       for c in errors["top_confusions"]], 2)
    write_text(os.path.join(args.output_dir, "context.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
