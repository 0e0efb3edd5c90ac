"""The NLPCC 2018 Task 4 corpus format: `session<TAB>query<TAB>intent<TAB>annotated query` lines,
slots marked `<type>text</type>` or `<type>text||value</type>`, blank lines between sessions."""
import dataclasses
import os
import re
from typing import List, Optional, Sequence, Tuple

from task import OUTSIDE_LABEL, LabelMaps, carries_token
from utils import PROJECT_DIR, atomic_path, file_sha256, load_json

# Where the corpus is looked for when no --corpus_file is given.
STATS_FILE = "stats.json"  # beside the splits of data/prepare_data.py
CORPUS_SEARCH_PATH = [
    os.path.join(PROJECT_DIR, "data", "nlpcc2018", "corpus.train.txt"),
    os.path.join(PROJECT_DIR, "..", "shared", "data", "nlpcc2018", "corpus.train.txt"),
]


class CorpusError(ValueError):
    """A malformed corpus line; the message names file, line number and problem."""

    MAX_PROBLEM_CHARS = 300  # a 20 MB line is named, not echoed

    def __init__(self, path: str, line_no: int, problem: str):
        if len(problem) > self.MAX_PROBLEM_CHARS:
            problem = f"{problem[: self.MAX_PROBLEM_CHARS]}... ({len(problem):,} characters in all)"
        super().__init__(f"{path}:{line_no}: {problem}")
        self.path, self.line_no, self.problem = path, line_no, problem


@dataclasses.dataclass(frozen=True)
class Slot:
    type: str
    start: int  # character offset in the query, inclusive
    end: int  # exclusive
    value: str  # normalized entity (the `||value` correction, else the span text itself)


@dataclasses.dataclass(frozen=True)
class Utterance:
    session_id: str
    text: str
    intent: str
    slots: Tuple[Slot, ...] = ()
    line_no: int = 0

    @property
    def has_correction(self) -> bool:
        return any(slot.value != self.text[slot.start : slot.end] for slot in self.slots)

    def char_tags(self) -> List[str]:
        """BIO tag of every character of the query (spaces inside a slot get I-)."""
        tags = [OUTSIDE_LABEL] * len(self.text)
        for slot in self.slots:
            tags[slot.start] = "B-" + slot.type
            for i in range(slot.start + 1, slot.end):
                tags[i] = "I-" + slot.type
        return tags

    def token_tags(self) -> List[str]:
        """BIO tag of every token (every character that carries one, task.carries_token)."""
        return [tag for ch, tag in zip(self.text, self.char_tags()) if carries_token(ch)]

    def annotated(self) -> str:
        """The query with `<slot>text||value</slot>` marks, as in the corpus."""
        parts, cursor = [], 0
        for slot in self.slots:
            span = self.text[slot.start : slot.end]
            inner = span if slot.value == span else f"{span}||{slot.value}"
            parts += [self.text[cursor : slot.start], f"<{slot.type}>{inner}</{slot.type}>"]
            cursor = slot.end
        return "".join(parts) + self.text[cursor:]


_TAG = re.compile(r"<(/?)([^<>]*)>")
SLOT_TYPE_NAME = re.compile(r"[^\s<>/|]+")  # what a <tag> can name
INTENT_NAME = re.compile(r"\S+")


def parse_annotation(query: str, annotated: str) -> Tuple[Slot, ...]:
    """Slots of one annotated query; raises ValueError describing the first problem."""
    parts = _TAG.split(annotated)  # text, "/"?, name, text, "/"?, name, ..., text
    chunks, tags = parts[0::3], list(zip(parts[1::3], parts[2::3]))
    slots, text, open_tag = [], "", None
    for i, chunk in enumerate(chunks):
        if "<" in chunk or ">" in chunk:
            raise ValueError(f"stray '<' or '>' in annotation {annotated!r}")
        if open_tag is None:
            text += chunk
        else:
            span, sep, value = chunk.partition("||")
            if not span.strip() or (sep and not value.strip()) or "||" in value:
                raise ValueError(f"bad slot content {chunk!r} in <{open_tag}>: empty, only spaces, or a third '||' part")
            slots.append(Slot(open_tag, len(text), len(text) + len(span), value if sep else span))
            text += span
        if i == len(tags):
            break
        slash, name = tags[i]
        if not SLOT_TYPE_NAME.fullmatch(name):
            raise ValueError(f"bad slot tag <{slash}{name}>: a slot type is a name without spaces, '/', '|', '<' or '>'")
        if (slash == "/") != (open_tag is not None) or (slash and name != open_tag):
            raise ValueError(f"unbalanced tag <{slash}{name}> (open: {open_tag})")
        open_tag = None if slash else name
    if open_tag is not None:
        raise ValueError(f"unclosed tag <{open_tag}>")
    if text != query:
        raise ValueError(f"annotation without tags {text!r} does not reproduce the query {query!r}")
    return tuple(slots)


def read_corpus(path: str, labels: Optional[LabelMaps] = None, where: str = "the model's label files") -> List[Utterance]:
    """Every utterance of a corpus-format file (CRLF or LF); any malformed line raises
    CorpusError naming the file, the line number and the problem. With `labels`, an intent or
    slot type outside them is such a problem too (`where` names the label set)."""
    with open(path, "rb") as f:
        raw = f.read()
    utterances = []
    for line_no, line_bytes in enumerate(raw.split(b"\n"), start=1):
        try:
            line = line_bytes.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise CorpusError(path, line_no, f"not UTF-8 ({e.reason} at byte {e.start})") from None
        if line_no == 1:
            line = line.lstrip("\ufeff")
        if "\ufeff" in line:
            raise CorpusError(path, line_no, "a byte-order mark (U+FEFF) inside the file: only the first line may start with one")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise CorpusError(path, line_no, f"expected 4 TAB-separated fields, found {len(fields)}")
        session_id, query, intent, annotated = fields
        if not session_id.strip():
            raise CorpusError(path, line_no, "empty session id")
        if not query.strip():
            raise CorpusError(path, line_no, "empty query")
        if not INTENT_NAME.fullmatch(intent):
            raise CorpusError(path, line_no, f"bad intent {intent!r}: empty or with spaces")
        try:
            slots = parse_annotation(query, annotated)
        except ValueError as e:
            raise CorpusError(path, line_no, str(e)) from None
        utterances.append(Utterance(session_id, query, intent, slots, line_no))
    if labels is not None:
        check_labels(path, utterances, labels, where)
    return utterances


def check_labels(path: str, utterances: Sequence[Utterance], labels: LabelMaps, where: str) -> None:
    """Raise CorpusError at the first utterance of `path` whose intent or slot type is not in
    `labels` (`where` names the label set in the message)."""
    intents, slot_types = set(labels.intents), set(labels.slot_types)
    for u in utterances:
        if u.intent not in intents:
            raise CorpusError(path, u.line_no, f"intent {u.intent!r} is not in {where}")
        for slot in u.slots:
            if slot.type not in slot_types:
                raise CorpusError(path, u.line_no, f"slot type {slot.type!r} is not in {where}")


def write_corpus(path: str, utterances: Sequence[Utterance]) -> None:
    """Write utterances in the corpus format, a blank line between sessions."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        previous = None
        for utt in utterances:
            if previous is not None and utt.session_id != previous:
                f.write("\n")
            f.write("\t".join([utt.session_id, utt.text, utt.intent, utt.annotated()]) + "\n")
            previous = utt.session_id


def find_corpus(corpus_file: Optional[str] = None) -> str:
    """The corpus given by flag, else the first one found on CORPUS_SEARCH_PATH; an error that says
    where to put it when there is none (the synthetic corpus is used only when asked for)."""
    if corpus_file:
        if not os.path.isfile(corpus_file):
            raise FileNotFoundError(f"corpus file not found: {corpus_file}")
        return corpus_file
    found = next((os.path.normpath(p) for p in CORPUS_SEARCH_PATH if os.path.isfile(p)), None)
    if found is None:
        raise FileNotFoundError(
            "the NLPCC 2018 Task 4 corpus was not found at " + " or ".join(os.path.normpath(p) for p in CORPUS_SEARCH_PATH)
            + ": put corpus.train.txt there, pass --corpus_file, or ask for the synthetic corpus with --synthetic")
    return found


def check_prepared(data_dir: str, file_name: str) -> str:
    """The path of `file_name` in a data directory of data/prepare_data.py, checked against the
    sha256 its stats.json records: a file from another run (a prepare_data killed between its
    files) is refused. A directory without stats.json (made by hand) is taken as it is."""
    path = os.path.join(data_dir, file_name)
    stats_path = os.path.join(data_dir, STATS_FILE)
    expected = load_json(stats_path).get("files", {}).get(file_name) if os.path.isfile(stats_path) else None
    if expected and file_sha256(path) != expected["sha256"]:
        raise ValueError(f"{path} is not the file {stats_path} describes (another prepare_data run, or one cut short): "
                         f"run `python data/prepare_data.py --output_dir {data_dir}` again")
    return path


def read_split(data_dir: str, name: str, labels: Optional[LabelMaps] = None, where: str = "the label files") -> List[Utterance]:
    """train/dev/test.txt of data/prepare_data.py (check_prepared), with every intent and slot
    type in `labels` when given."""
    path = os.path.join(data_dir, f"{name}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python data/prepare_data.py --output_dir {data_dir}` first")
    return read_corpus(check_prepared(data_dir, f"{name}.txt"), labels, where)
