"""Import Rasa NLU training data (YAML) into the project's corpus format (docs/data.md#rasa).

    python data/import_rasa.py --nlu_file data/nlu.yml --output_file my_corpus.txt
    python data/prepare_data.py --corpus_file my_corpus.txt --output_dir data/prepared/mine

Read: `nlu:` items with `intent:` and `examples:` (a `- ` list in a block string, or a list of
{text: ...}), entities written `[text](slot)`, `[text](slot:value)` or `[text]{"entity": "slot",
"value": "..."}`; `synonym:` items give the canonical value of every entity text they list (as
Rasa's synonym mapper does, ignoring case). Each example becomes its own session. Roles and
groups have no counterpart in a flat slot set: an example with one is refused, naming its line.
Regex and lookup items and other sections are not training examples: they are counted and
reported, not imported."""
import argparse
import json
import re
from typing import Dict, List, Tuple

import yaml

from data.corpus import INTENT_NAME, SLOT_TYPE_NAME, CorpusError, Slot, Utterance, parse_annotation, write_corpus

# [text] followed by (slot), (slot:value) or {"entity": ...}
_ENTITY = re.compile(r"\[(?P<text>[^\[\]]+)\](?:\((?P<short>[^()]+)\)|(?P<json>\{[^{}]*\}))")


def parse_example(example: str, synonyms: Dict[str, str]) -> Tuple[str, Tuple[Slot, ...]]:
    """The plain text and slots of one Rasa example; ValueError describing the first problem."""
    text, slots, cursor = "", [], 0
    for m in _ENTITY.finditer(example):
        text += example[cursor : m.start()]
        span = m.group("text")
        if m.group("short") is not None:
            name, _, value = m.group("short").partition(":")
            value = value or None
        else:
            try:
                spec = json.loads(m.group("json"))
            except ValueError as e:
                raise ValueError(f"entity {m.group(0)!r}: not JSON ({e})") from None
            if not isinstance(spec, dict) or "entity" not in spec:
                raise ValueError(f"entity {m.group(0)!r}: the JSON object needs an \"entity\" key")
            if spec.keys() & {"role", "group"}:
                raise ValueError(f"entity {m.group(0)!r}: roles and groups have no counterpart in a flat slot set")
            name, value = spec["entity"], spec.get("value")
        if not isinstance(name, str) or not SLOT_TYPE_NAME.fullmatch(name):
            raise ValueError(f"entity {m.group(0)!r}: bad slot type {name!r}")
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"entity {m.group(0)!r}: the value must be a non-blank string")
        value = value or synonyms.get(span.lower(), span)
        slots.append(Slot(name, len(text), len(text) + len(span), value))
        text += span
        cursor = m.end()
    text += example[cursor:]
    if not text.strip():
        raise ValueError("an empty example")
    if any(c in text for c in "[]<>\t"):
        raise ValueError(f"{text!r}: a '[', ']', '<', '>' or tab left after reading the entities (a malformed entity?)")
    try:
        if parse_annotation(text, Utterance("", text, "", tuple(slots)).annotated()) != tuple(slots):
            raise ValueError
    except ValueError:
        raise ValueError(f"{example!r}: the corpus format cannot hold it ('||' inside an entity?)") from None
    return text, tuple(slots)


def _examples(item: dict, node, path: str) -> List[Tuple[int, str]]:
    """(line number, example) of an item's `examples`, a block string or a list of {text: ...}."""
    value_node = next(v for k, v in node.value if k.value == "examples")
    examples = item["examples"]
    if isinstance(examples, str):
        # a block scalar's content starts on the line after `examples: |`
        first = value_node.start_mark.line + (2 if value_node.style in ("|", ">") else 1)
        return [(first + i, line.strip()[2:].strip()) for i, line in enumerate(examples.split("\n"))
                if line.strip().startswith("- ")]
    if isinstance(examples, list):
        out = []
        for sub_node, sub in zip(value_node.value, examples):
            if not isinstance(sub, dict) or not isinstance(sub.get("text"), str):
                raise CorpusError(path, sub_node.start_mark.line + 1, "an example of the list form needs a text")
            out.append((sub_node.start_mark.line + 1, sub["text"].strip()))
        return out
    raise CorpusError(path, value_node.start_mark.line + 1, "examples must be a block string of '- ' lines or a list")


def read_rasa_nlu(path: str) -> Tuple[List[Utterance], Dict[str, int]]:
    """The utterances of a Rasa NLU YAML file and a count of what was not imported (kind -> items)."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    try:
        data, root = yaml.safe_load(source), yaml.compose(source)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise CorpusError(path, mark.line + 1 if mark else 0, f"not YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("nlu"), list):
        raise CorpusError(path, 1, "no `nlu:` list: not Rasa NLU training data")
    skipped = {key: 1 for key in data if key not in ("nlu", "version")}
    nlu_node = next(v for k, v in root.value if k.value == "nlu")
    synonyms = {}
    for item, node in zip(data["nlu"], nlu_node.value):
        if isinstance(item, dict) and "synonym" in item and "examples" in item:
            for _, variant in _examples(item, node, path):
                synonyms[variant.lower()] = str(item["synonym"])
    utterances = []
    for item, node in zip(data["nlu"], nlu_node.value):
        line = node.start_mark.line + 1
        if not isinstance(item, dict):
            raise CorpusError(path, line, "an nlu item must be a mapping (intent:, synonym:, regex: or lookup:)")
        kind = next((k for k in ("intent", "synonym", "regex", "lookup") if k in item), None)
        if kind is None:
            raise CorpusError(path, line, f"an nlu item with none of intent, synonym, regex, lookup: keys {sorted(item)}")
        if kind in ("regex", "lookup"):
            skipped[kind] = skipped.get(kind, 0) + 1
        if kind != "intent":
            continue
        intent = item["intent"]
        if not isinstance(intent, str) or not INTENT_NAME.fullmatch(intent):
            raise CorpusError(path, line, f"bad intent name {intent!r}")
        if "examples" not in item:
            raise CorpusError(path, line, f"intent {intent!r} has no examples")
        for example_line, example in _examples(item, node, path):
            try:
                text, slots = parse_example(example, synonyms)
            except ValueError as e:
                raise CorpusError(path, example_line, str(e)) from None
            utterances.append(Utterance(f"rasa-{len(utterances) + 1:05d}", text, intent, slots, example_line))
    return utterances, skipped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nlu_file", required=True, help="Rasa NLU training data, YAML (e.g. data/nlu.yml)")
    parser.add_argument("--output_file", required=True, help="the corpus to write, in the project's format")
    args = parser.parse_args(argv)
    try:
        utterances, skipped = read_rasa_nlu(args.nlu_file)
    except CorpusError as e:
        raise SystemExit(f"import_rasa: {e}") from None
    if not utterances:
        raise SystemExit(f"import_rasa: {args.nlu_file}: no intent example to import")
    write_corpus(args.output_file, utterances)
    intents = sorted({u.intent for u in utterances})
    print(f"{args.nlu_file}: {len(utterances)} examples of {len(intents)} intents, "
          f"{sum(len(u.slots) for u in utterances)} entities -> {args.output_file}")
    if skipped:
        print("not imported (not training examples): " + ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items())))


if __name__ == "__main__":
    main()
