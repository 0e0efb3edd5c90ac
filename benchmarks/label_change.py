"""Adding an intent to a trained model, measured: fine-tune onto the new label set, or train again.

    python benchmarks/label_change.py --data_dir data/prepared/nlpcc2018 --hold_out INTENT \
        --baseline_dir output/nlpcc2018-nano-scratch --work_dir output/label-change --output_dir benchmarks/results
    make label-change-nlpcc    # the measured run (HOLD_OUT in the Makefile)

1. The prepared splits without the held-out intent's utterances (and so without its slot types,
   when no other intent carries them) go to WORK_DIR/data-holdout, labels derived as
   prepare_data.py derives them.
2. A from-scratch model is trained on them (the baseline's recipe, read from its config).
3. That model is fine-tuned on the full splits with --model_name_or_path: the encoder is kept and
   the heads are rebuilt for the full label set (model.relabel_heads).
The baseline is a from-scratch model of the same recipe on the full splits (make train-nlpcc).
Compared on the full test split (the held-out model on its own test split): sentence accuracy,
intent accuracy, slot F1, sentence accuracy on the added intent, and training time. A stage whose
output directory already holds eval_results.json is not run again. Writes label_change.json and
label_change.md.
"""
import argparse
import os
import subprocess
import sys

from data.corpus import read_split, write_corpus
from data.labels import derive_labels
from export_format import write_labels
from utils import PROJECT_DIR, load_json, markdown_table, save_json, write_text


def hold_out(data_dir: str, intent: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    splits = {name: [u for u in read_split(data_dir, name) if u.intent != intent] for name in ("train", "dev", "test")}
    for name, utts in splits.items():
        write_corpus(os.path.join(out, f"{name}.txt"), utts)
    write_labels(out, derive_labels(splits["train"]))


def train(output_dir: str, data_dir: str, flags, log_file: str) -> None:
    if os.path.isfile(os.path.join(output_dir, "eval_results.json")):
        print(f"{output_dir}: done already")
        return
    cmd = [sys.executable, os.path.join(PROJECT_DIR, "run_train.py"), "--data_dir", data_dir, "--output_dir", output_dir,
           "--do_train", "--do_eval", "--disable_tqdm", "true", *flags]
    print(" ".join(cmd), flush=True)
    with open(log_file, "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_DIR)


def row(name: str, run_dir: str, intent: str, note: str) -> dict:
    test = load_json(os.path.join(run_dir, "eval_results.json"))["test"]
    added = test["per_intent"].get(intent, {"count": 0, "sentence_correct": 0})
    return {"model": name, "test_utterances": test["num_utterances"], "sentence_acc": test["sentence_acc"],
            "intent_acc": test["intent_acc"], "slot_f1": test["slot_f1"],
            "added_intent_acc": added["sentence_correct"] / added["count"] if added["count"] else None,
            "train_s": load_json(os.path.join(run_dir, "train_results.json"))["wall_time_s"], "note": note}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data/prepared/nlpcc2018", help="prepared splits with their label files")
    parser.add_argument("--hold_out", required=True, help="the intent to add back by fine-tuning")
    parser.add_argument("--baseline_dir", default="output/nlpcc2018-nano-scratch", help="a from-scratch run on the full splits")
    parser.add_argument("--work_dir", default="output/label-change", help="where the held-out data and the two runs go")
    parser.add_argument("--fine_tune_epochs", type=int, default=3, help="epochs of the fine-tuning run")
    parser.add_argument("--fine_tune_learning_rate", type=float, default=2e-4, help="peak learning rate of the fine-tuning run")
    parser.add_argument("--output_dir", default="benchmarks/results", help="where label_change.json/.md go")
    args = parser.parse_args()

    config = load_json(os.path.join(args.baseline_dir, "config.json"))
    recipe = ["--slot_crf"] * bool(config.get("slot_crf")) + ["--context_turns", str(config.get("context_turns", 0))]
    holdout_data, holdout_run, tuned_run = (os.path.join(args.work_dir, d) for d in ("data-holdout", "holdout-scratch", "fine-tuned"))
    hold_out(args.data_dir, args.hold_out, holdout_data)
    train(holdout_run, holdout_data, ["--from_scratch", "--model_name_or_path", "ernie-3.0-tiny-nano-v2-zh", "--num_train_epochs", "10",
                                      "--learning_rate", "5e-4", "--warmup_ratio", "0.1", "--seed", "42", *recipe],
          holdout_run + ".log")
    train(tuned_run, args.data_dir, ["--model_name_or_path", holdout_run, "--num_train_epochs", str(args.fine_tune_epochs),
                                     "--learning_rate", str(args.fine_tune_learning_rate), "--warmup_ratio", "0.1", "--seed", "42"],
          tuned_run + ".log")

    rows = [row(f"from scratch without {args.hold_out}", holdout_run, args.hold_out, "10 epochs; its own test split (no added intent)"),
            row(f"that model fine-tuned with {args.hold_out} added", tuned_run, args.hold_out,
                f"{args.fine_tune_epochs} epochs at {args.fine_tune_learning_rate:g}"),
            row("from scratch on all labels", args.baseline_dir, args.hold_out, "10 epochs (the baseline)")]
    os.makedirs(args.output_dir, exist_ok=True)
    save_json(os.path.join(args.output_dir, "label_change.json"), {"hold_out": args.hold_out, "data_dir": args.data_dir,
                                                                  "recipe": recipe, "rows": rows})
    pct = lambda v: "–" if v is None else f"{100 * v:.2f}"  # noqa: E731
    table = markdown_table(["model", "test utt.", "sentence acc", "intent acc", "slot F1", f"acc on {args.hold_out}", "training", "note"],
                           [[r["model"], r["test_utterances"], pct(r["sentence_acc"]), pct(r["intent_acc"]), pct(r["slot_f1"]),
                             pct(r["added_intent_acc"]), f"{r['train_s'] / 60:.1f} min", r["note"]] for r in rows])
    write_text(os.path.join(args.output_dir, "label_change.md"), "\n".join([
        "# Adding an intent: fine-tune or train again", "",
        f"Data: `{args.data_dir}`; held out and added back: `{args.hold_out}`; recipe flags {' '.join(recipe)}; "
        "training time on this machine's CPUs (2 threads).", "", *table, ""]))
    print("\n".join(table))


if __name__ == "__main__":
    main()
