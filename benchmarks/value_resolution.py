"""Slot values, measured: how often resolution turns a misheard slot into its canonical value, and
how often it changes a slot that was heard right (docs/decoding.md#slot-values).

    python benchmarks/value_resolution.py --data_dir data/prepared/nlpcc2018 --name nlpcc2018

Scored on the gold slots of dev and test (the text as heard of each annotated span), so that the
figures are resolution's alone, not the tagger's. Two catalogues: `train` is what an export
carries (values and heard -> canonical pairs of the training split, and the digits rule);
`full values` stands in for a real catalogue (a car's music service knows every song): the
canonical values of all three splits, with the pairs of train only, so nothing of a dev or test
correction leaks. Per catalogue and split: corrected slots resolved to their canonical value,
false resolutions (a slot heard right given another value), slots left as heard, and the
resolutions by kind; then load and resolve times of a 100,000-entry catalogue. Writes
value_resolution_NAME.json and .md.
"""
import argparse
import collections
import dataclasses
import os
import random
import tempfile
import time

from data.corpus import read_split
from utils import markdown_table, save_json, write_text
from values import NONE, PRONUNCIATION, Catalogue, derive_catalogue, fuzzy, read_catalogue, value_key, write_catalogue


def score(catalogue: Catalogue, utterances) -> dict:
    corrected = resolved = false = kept_right = heard_right = 0
    kinds = collections.Counter()
    for u in utterances:
        for s in u.slots:
            heard = u.text[s.start : s.end]
            value, how = catalogue.resolve(s.type, heard)
            kinds[how] += 1
            if heard != s.value:
                corrected += 1
                resolved += value == s.value
            else:
                heard_right += 1
                false += value != s.value
                kept_right += value == s.value
    return {"slots": sum(kinds.values()), "corrected": corrected, "corrected_resolved": resolved, "heard_right": heard_right,
            "false_resolutions": false, "resolutions": dict(sorted(kinds.items()))}


TITLE = "title"  # the slot type of the synthetic catalogue


def timing(size: int, pinyin: dict, seed: int = 0) -> dict:
    """Write, load and query a catalogue of `size` synthetic names (common CJK characters, a
    synonym each) matched by pronunciation: exact keys, and keys with one character replaced by a
    homophone (the sound path)."""
    rng = random.Random(seed)
    common = [chr(c) for c in range(0x4E00, 0x4E00 + 3000) if chr(c) in pinyin]
    by_reading = collections.defaultdict(list)
    for ch in common:
        by_reading[pinyin[ch][0]].append(ch)
    catalogue = Catalogue(pinyin=pinyin, rules={TITLE: PRONUNCIATION})
    names = ["".join(rng.choice(common) for _ in range(rng.randint(2, 6))) for _ in range(size)]
    for name in names:
        catalogue.add(TITLE, name, [name[::-1]])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "catalogue.jsonl")
        write_catalogue(path, catalogue)
        start = time.perf_counter()
        loaded = read_catalogue(path)
        load_s = time.perf_counter() - start
    loaded.pinyin, loaded.rules = pinyin, {TITLE: PRONUNCIATION}
    start = time.perf_counter()
    loaded.resolve(TITLE, "。。")  # builds the sound index (a key of two or more characters that matches nothing)
    index_s = time.perf_counter() - start
    exact = [rng.choice(names) for _ in range(20000)]
    start = time.perf_counter()
    for q in exact:
        loaded.resolve(TITLE, q)
    exact_us = 1e6 * (time.perf_counter() - start) / len(exact)
    misheard = []
    for name in rng.sample(names, 2000):
        i = rng.randrange(len(name))
        misheard.append(name[:i] + rng.choice(by_reading[pinyin[name[i]][0]]) + name[i + 1 :])
    start = time.perf_counter()
    for q in misheard:
        loaded.resolve(TITLE, q)
    sound_us = 1e6 * (time.perf_counter() - start) / len(misheard)
    return {"entries": size, "load_s": load_s, "sound_index_s": index_s, "exact_us": exact_us, "misheard_us": sound_us}


def asr_check(resolver: Catalogue, test, pool: str, seed: int) -> dict:
    """The canonical values of the test split (slot types matched by pronunciation, 2+ characters),
    each heard through a seeded ASR-like corruption: one character replaced by another of the same
    reading (a homophone), one by a near-homophone (the same reading once folded: zh/z, n/l,
    in/ing...), two homophones, or one character dropped (4+ characters). Replacements are drawn
    from `pool` (the characters of train: what a recogniser writes). Counts resolved to the value,
    to another value, and left as heard."""
    rng = random.Random(seed)
    same, folded = collections.defaultdict(list), collections.defaultdict(list)
    for ch in sorted(set(pool)):
        if ch in resolver.pinyin:
            same[resolver.pinyin[ch][0]].append(ch)
            folded[fuzzy(resolver.pinyin[ch][0])].append(ch)
    values = sorted({(s.type, s.value) for u in test for s in u.slots
                     if resolver.rules.get(s.type) == PRONUNCIATION and len(value_key(s.value)) >= 2})
    counts = collections.Counter()
    for slot_type, value in values:
        positions = [i for i, ch in enumerate(value) if ch in resolver.pinyin]
        kinds = ["homophone", "near-homophone", "two homophones"] + ["drop"] * (len(value) >= 4)
        kind = rng.choice(kinds)
        chars = list(value)
        picks = rng.sample(positions, min(len(positions), 2 if kind == "two homophones" else 1)) if positions else []
        if kind == "drop":
            del chars[rng.randrange(len(chars))]
        for i in picks if kind != "drop" else []:
            reading = resolver.pinyin[chars[i]][0]
            group = same[reading] if kind != "near-homophone" else [c for c in folded[fuzzy(reading)] if resolver.pinyin[c][0] != reading]
            options = [c for c in group if c != chars[i]]
            if options:
                chars[i] = rng.choice(options)
        heard = "".join(chars)
        if value_key(heard) == value_key(value):
            continue  # nothing changed (no such character)
        got, how = resolver.resolve(slot_type, heard)
        counts[kind, "right" if got == value else "left as heard" if how == NONE else "wrong"] += 1
    return {f"{kind}: {outcome}": n for (kind, outcome), n in sorted(counts.items())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data/prepared/nlpcc2018", help="prepared splits")
    parser.add_argument("--name", default="nlpcc2018", help="names the result files")
    parser.add_argument("--output_dir", default="benchmarks/results", help="where the results go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ASR-like corruption")
    parser.add_argument("--full_catalogue_file", help="also write the `full values` catalogue with pronunciation rules here "
                        "(corpus values: keep it out of the repository), for run_eval.py --catalogue_file")
    args = parser.parse_args()

    splits = {name: read_split(args.data_dir, name) for name in ("train", "dev", "test")}
    train = derive_catalogue(splits["train"])  # what an export carries: values and pairs of train, the digits rule
    full = derive_catalogue(splits["train"])
    for name in ("dev", "test"):
        for u in splits[name]:
            for s in u.slots:
                full.add(s.type, s.value)  # the value only: the heard -> canonical pair of dev and test stays unknown
    variants = {}
    for name, base in (("train", train), ("full values", full)):
        exact = dataclasses.replace(base, rules={})
        digits = dataclasses.replace(base, rules=dict(base.rules))
        sound = dataclasses.replace(base, rules={**{t: PRONUNCIATION for t in base.values}, **base.rules})
        variants.update({f"{name}: exact + catalogue": exact, f"{name}: + digits rule": digits, f"{name}: + pronunciation": sound})
    if args.full_catalogue_file:
        write_catalogue(args.full_catalogue_file, variants["full values: + pronunciation"])
    rows = {f"{variant} / {split}": score(catalogue, splits[split]) for variant, catalogue in variants.items() for split in ("dev", "test")}
    pool = "".join(u.text for u in splits["train"])
    corrupted = asr_check(variants["full values: + pronunciation"], splits["test"], pool, args.seed)
    speed = timing(100_000, full.pinyin)
    os.makedirs(args.output_dir, exist_ok=True)
    save_json(os.path.join(args.output_dir, f"value_resolution_{args.name}.json"),
              {"data_dir": args.data_dir, "rows": rows, "asr_like_test_values": corrupted, "catalogue_100k": speed})
    pct = lambda a, b: f"{a}/{b} ({100 * a / b:.1f} %)" if b else "–"  # noqa: E731
    table = markdown_table(
        ["catalogue / split", "slots", "corrected slots resolved to their value", "false resolutions of slots heard right",
         "exact / catalogue / pronunciation / rule / none"],
        [[key, r["slots"], pct(r["corrected_resolved"], r["corrected"]), pct(r["false_resolutions"], r["heard_right"]),
          " / ".join(str(r["resolutions"].get(k, 0)) for k in ("exact", "catalogue", "pronunciation", "rule", "none"))]
         for key, r in rows.items()])
    asr_table = markdown_table(["test value heard through", "resolved to it", "to another value", "left as heard"],
                               [[kind] + [corrupted.get(f"{kind}: {o}", 0) for o in ("right", "wrong", "left as heard")]
                                for kind in ("homophone", "near-homophone", "two homophones", "drop")])
    write_text(os.path.join(args.output_dir, f"value_resolution_{args.name}.md"), "\n".join([
        f"# Slot values: {args.name}", "",
        f"Gold slots of `{args.data_dir}` dev and test, resolved by `values.py`. `train`: the values and heard -> canonical pairs of "
        "train (what an export carries); `full values`: the canonical values of all three splits (a stand-in for a real, complete "
        "catalogue) with the pairs of train only. `exact + catalogue`: no rule; `+ digits rule`: as exported; `+ pronunciation`: "
        "every slot type without the digits rule matched by sound.", "", *table, "",
        "The canonical values of the test split heard through a seeded ASR-like corruption, resolved with `full values: + "
        "pronunciation`:", "", *asr_table, "",
        f"A catalogue of {speed['entries']:,} names (2-6 characters, one synonym each) loads in {speed['load_s']:.2f} s, builds its "
        f"sound index in {speed['sound_index_s']:.2f} s, and resolves a name in {speed['exact_us']:.1f} µs, a misheard one (one "
        f"homophone) in {speed['misheard_us']:.0f} µs (Python, this machine).", ""]))
    print("\n".join(table))


if __name__ == "__main__":
    main()
