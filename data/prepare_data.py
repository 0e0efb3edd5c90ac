"""Split a corpus into train/dev/test by session and write them with a stats JSON.

    python data/prepare_data.py --corpus_file path/to/corpus.train.txt --output_dir data/prepared
    python data/prepare_data.py --synthetic --output_dir data/prepared   # embedded offline default

Without --corpus_file the NLPCC 2018 Task 4 corpus is looked for at data/nlpcc2018/corpus.train.txt
and ../shared/data/nlpcc2018/corpus.train.txt; when neither exists that is an error (the synthetic
corpus only with --synthetic). The split is a pure function of the session ids and --seed: the same
files on every machine. Each file is written beside its target and renamed into place, stats.json
last with the sha256 of every split: readers (data.corpus.read_split) refuse a mix of two runs.
"""
import argparse
import os

from data.corpus import STATS_FILE, CorpusError, find_corpus, read_corpus, write_corpus
from data.split import intent_slot_types, split_by_session, split_stats
from data.synthetic import generate
from utils import PROJECT_DIR, file_sha256, save_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_file", help="NLPCC 2018 Task 4 corpus.train.txt (default: search the documented paths)")
    parser.add_argument("--synthetic", action="store_true", help="use the embedded synthetic corpus even if the real one is found")
    parser.add_argument("--synthetic_size", type=int, default=3000, help="utterances in the synthetic corpus")
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
            utterances = read_corpus(corpus)
        except CorpusError as e:  # file, line and problem; no traceback
            raise SystemExit(f"prepare_data: {e}") from None
        if not utterances:
            raise SystemExit(f"{corpus}: no utterance in the corpus")
        source = {"corpus_file": os.path.abspath(corpus), "sha256": file_sha256(corpus)}
    else:
        utterances = generate(args.synthetic_size)
        source = {"synthetic": True, "utterances": args.synthetic_size}
    splits = split_by_session(utterances, args.seed, (args.train_fraction, args.dev_fraction))

    os.makedirs(args.output_dir, exist_ok=True)
    files = {}
    for name, utts in splits.items():
        path = os.path.join(args.output_dir, f"{name}.txt")
        write_corpus(path, utts)
        files[f"{name}.txt"] = {"sha256": file_sha256(path), "utterances": len(utts)}
    stats = {
        "source": source,
        "seed": args.seed,
        "utterances": len(utterances),
        "sessions": len({u.session_id for u in utterances}),
        "corrections": sum(u.has_correction for u in utterances),
        "intent_slot_types": intent_slot_types(splits["train"], []),
        "splits": split_stats(splits),
        "files": files,
    }
    save_json(os.path.join(args.output_dir, STATS_FILE), stats)
    print(f"{'synthetic corpus' if not corpus else corpus}: {stats['utterances']} utterances, {stats['sessions']} sessions, "
          f"{stats['corrections']} with corrections")
    for name, s in stats["splits"].items():
        print(f"  {name:5s} {s['utterances']:6d} utterances {s['sessions']:5d} sessions -> {args.output_dir}/{name}.txt")


if __name__ == "__main__":
    main()
