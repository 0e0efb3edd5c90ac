"""Split a corpus into train/dev/test by session and write them with its label files and a stats JSON.

    python data/prepare_data.py --corpus_file path/to/corpus.train.txt --output_dir data/prepared
    python data/prepare_data.py --corpus_file my_data.jsonl --output_dir data/prepared/mine   # JSON lines
    python data/prepare_data.py --synthetic --output_dir data/prepared   # embedded offline default

The corpus is in the project's format or in JSON lines (a .jsonl file; docs/data.md). The labels
come from the data: intent_label.txt and slot_label.txt are derived from the training split
(data/labels.py); an intent or slot type that only dev or test has is an error naming its line,
or with --keep_unseen_labels it is added to the label set and reported.

Without --corpus_file the NLPCC 2018 Task 4 corpus is looked for at data/nlpcc2018/corpus.train.txt
and ../shared/data/nlpcc2018/corpus.train.txt; when neither exists that is an error (the synthetic
corpus only with --synthetic). The split is a pure function of the session ids and --seed: the same
files on every machine. Each file is written beside its target and renamed into place, stats.json
last with the sha256 of every file: readers (data.corpus.check_prepared) refuse a mix of two runs.
"""
import argparse
import os

from data.corpus import STATS_FILE, CorpusError, check_labels, find_corpus, read_corpus, write_corpus
from data.jsonl import read_jsonl
from data.labels import derive_labels, unseen_labels, with_unseen
from export_format import write_labels
from data.split import intent_slot_types, split_by_session, split_stats
from data.synthetic import DOMAINS, generate
from utils import PROJECT_DIR, file_sha256, positive_int, save_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_file", help="a corpus in the project's format, or JSON lines if it ends in .jsonl "
                        "(default: NLPCC 2018 Task 4 corpus.train.txt at the documented paths)")
    parser.add_argument("--synthetic", action="store_true", help="use the embedded synthetic corpus even if the real one is found")
    parser.add_argument("--synthetic_domain", choices=sorted(DOMAINS), default="nlpcc",
                        help="label set of the synthetic corpus: nlpcc (NLPCC 2018's) or vehicle (vehicle controls)")
    parser.add_argument("--synthetic_size", type=positive_int, default=3000, help="utterances in the synthetic corpus")
    parser.add_argument("--keep_unseen_labels", action="store_true",
                        help="add intents and slot types that only dev or test have to the label set (reported) instead of stopping")
    parser.add_argument(
        "--output_dir", default=os.path.join(PROJECT_DIR, "data", "prepared"), help="where train/dev/test.txt and stats.json go"
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the session hash that orders the split")
    parser.add_argument("--train_fraction", type=float, default=0.8, help="share of utterances in train")
    parser.add_argument("--dev_fraction", type=float, default=0.1, help="share of utterances in dev (test gets the rest)")
    args = parser.parse_args(argv)

    if not (0 < args.train_fraction and 0 <= args.dev_fraction and args.train_fraction + args.dev_fraction < 1):
        parser.error(f"--train_fraction {args.train_fraction} and --dev_fraction {args.dev_fraction}: need train > 0, "
                     "dev >= 0 and train + dev < 1 (test gets the rest)")
    corpus = None if args.synthetic else find_corpus(args.corpus_file)
    if corpus:
        try:
            utterances = read_jsonl(corpus) if corpus.endswith(".jsonl") else read_corpus(corpus)
        except CorpusError as e:  # file, line and problem; no traceback
            raise SystemExit(f"prepare_data: {e}") from None
        if not utterances:
            raise SystemExit(f"{corpus}: no utterance in the corpus")
        source = {"corpus_file": os.path.abspath(corpus), "sha256": file_sha256(corpus)}
    else:
        utterances = generate(args.synthetic_size, domain=args.synthetic_domain)
        source = {"synthetic": True, "domain": args.synthetic_domain, "utterances": args.synthetic_size}
    splits = split_by_session(utterances, args.seed, (args.train_fraction, args.dev_fraction))
    labels = derive_labels(splits["train"])
    unseen = unseen_labels(splits["dev"] + splits["test"], labels)
    if any(unseen.values()):
        if not args.keep_unseen_labels:
            try:
                for name in ("dev", "test"):
                    check_labels(corpus or "synthetic corpus", splits[name], labels, f"the training split (it goes to {name})")
            except CorpusError as e:
                raise SystemExit(f"prepare_data: {e}: every label must have training examples; add some, or pass "
                                 "--keep_unseen_labels to score them anyway") from None
        labels = with_unseen(labels, unseen)
        print(f"kept labels that train never has (the model cannot learn them): {unseen}")

    os.makedirs(args.output_dir, exist_ok=True)
    files = {}
    for name, utts in splits.items():
        path = os.path.join(args.output_dir, f"{name}.txt")
        write_corpus(path, utts)
        files[f"{name}.txt"] = {"sha256": file_sha256(path), "utterances": len(utts)}
    for path in write_labels(args.output_dir, labels):
        files[os.path.basename(path)] = {"sha256": file_sha256(path)}
    stats = {
        "source": source,
        "seed": args.seed,
        "utterances": len(utterances),
        "sessions": len({u.session_id for u in utterances}),
        "corrections": sum(u.has_correction for u in utterances),
        "labels": {"intents": labels.intents, "slot_types": labels.slot_types, "unseen_in_train": unseen},
        "intent_slot_types": intent_slot_types(splits["train"], labels.intents),
        "splits": split_stats(splits),
        "files": files,
    }
    save_json(os.path.join(args.output_dir, STATS_FILE), stats)
    print(f"{'synthetic corpus' if not corpus else corpus}: {stats['utterances']} utterances, {stats['sessions']} sessions, "
          f"{stats['corrections']} with corrections")
    for name, s in stats["splits"].items():
        print(f"  {name:5s} {s['utterances']:6d} utterances {s['sessions']:5d} sessions -> {args.output_dir}/{name}.txt")
    print(f"  labels: {len(labels.intents)} intents, {len(labels.slot_types)} slot types -> {args.output_dir}/intent_label.txt, "
          "slot_label.txt")


if __name__ == "__main__":
    main()
