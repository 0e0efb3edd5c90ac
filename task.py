"""The task: labels, the character tokenizer, model windows and the BIO tag scheme, and `Task`,
the one object that carries them (with the window length and the intents without slots) through
training, compression, distillation, export and prediction. Plain Python + numpy."""
import collections
import dataclasses
import functools
import unicodedata
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from utils import read_lines

if TYPE_CHECKING:  # values.py builds on this module
    from values import Catalogue

PAD_LABEL, OUTSIDE_LABEL = "PAD", "O"
PAD_TOKEN, CLS_TOKEN, SEP_TOKEN, UNK_TOKEN, MASK_TOKEN = "[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"
SPECIAL_TOKENS = [PAD_TOKEN, CLS_TOKEN, SEP_TOKEN, UNK_TOKEN, MASK_TOKEN]


# ----------------------------------------------------------------------------- labels


@dataclasses.dataclass
class LabelMaps:
    intents: List[str]
    slot_tags: List[str]  # PAD, O, B-x, I-x, ...

    def __post_init__(self):
        for name, labels in (("intent", self.intents), ("slot", self.slot_tags)):
            duplicates = sorted(label for label, n in collections.Counter(labels).items() if n > 1)
            if duplicates:
                raise ValueError(f"duplicate {name} labels {duplicates}")
        if PAD_LABEL not in self.slot_tags or OUTSIDE_LABEL not in self.slot_tags:
            raise ValueError(f"slot tags must include {PAD_LABEL} and {OUTSIDE_LABEL}")

    @classmethod
    def from_files(cls, intent_file: str, slot_file: str) -> "LabelMaps":
        intents, slot_tags = read_lines(intent_file), read_lines(slot_file)
        try:
            return cls(intents, slot_tags)
        except ValueError as e:
            raise ValueError(f"{intent_file}, {slot_file}: {e}") from None

    @property
    def intent_id(self) -> Dict[str, int]:
        return {label: i for i, label in enumerate(self.intents)}

    @property
    def slot_id(self) -> Dict[str, int]:
        return {label: i for i, label in enumerate(self.slot_tags)}

    @property
    def pad_slot_id(self) -> int:
        return self.slot_tags.index(PAD_LABEL)

    @property
    def slot_types(self) -> List[str]:
        return [tag[2:] for tag in self.slot_tags if tag.startswith("B-")]


def bio_spans(tags: Sequence[str]) -> List[Tuple[str, int, int]]:
    """(type, start, end-exclusive) spans, conlleval style: an I- tag that does not continue a
    span of its own type starts one; PAD and O end spans."""
    spans, current = [], None
    for i, tag in enumerate(list(tags) + [OUTSIDE_LABEL]):
        prefix, kind = (tag[:2], tag[2:]) if tag[:2] in ("B-", "I-") else ("", None)
        if current and (prefix != "I-" or kind != current[0]):
            spans.append((current[0], current[1], i))
            current = None
        if prefix == "B-" or (prefix == "I-" and current is None):
            current = (kind, i)
    return spans


# ----------------------------------------------------------------------------- tokenization


def normalize_char(ch: str) -> str:
    """Full-width -> half-width and lower case (ERNIE vocabularies are uncased), one char to one."""
    folded = unicodedata.normalize("NFKC", ch).lower()
    return folded if len(folded) == 1 else ch.lower()


def carries_token(ch: str) -> bool:
    """Whitespace and invisible characters (controls such as NUL, format characters such as the
    zero-width space or a BOM) carry no token and no tag; every other character carries one."""
    return not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf")


@functools.lru_cache(maxsize=1 << 16)
def token_text(ch: str) -> Optional[str]:
    """What a character is looked up as: its normalized form, or None if it carries no token
    (cached: the Unicode calls are most of a tokenizer's time)."""
    return normalize_char(ch) if carries_token(ch) else None


class CharTokenizer:
    """One token per visible character of the query (see carries_token).

    ERNIE's Chinese vocabularies hold every CJK character, digit and Latin letter as a token,
    so per-character tokens keep the character <-> token <-> tag alignment exact by
    construction (a WordPiece split of "la la" or "13812345678" would not). A slot's character
    span still covers the spaces inside it."""

    def __init__(self, vocab: Sequence[str]):
        self.vocab = list(vocab)
        self.token_to_id = {tok: i for i, tok in enumerate(self.vocab)}
        if len(self.token_to_id) != len(self.vocab):
            repeated = sorted(t for t, n in collections.Counter(self.vocab).items() if n > 1)
            raise ValueError(f"vocabulary has repeated tokens {repeated[:5]}")
        missing = [t for t in SPECIAL_TOKENS if t not in self.token_to_id]
        if missing:
            raise ValueError(f"vocabulary lacks special tokens {missing}")
        self.pad_id, self.cls_id, self.sep_id, self.unk_id = (
            self.token_to_id[t] for t in (PAD_TOKEN, CLS_TOKEN, SEP_TOKEN, UNK_TOKEN)
        )

    @classmethod
    def from_file(cls, path: str) -> "CharTokenizer":
        # Not read_lines: a vocabulary may hold tokens that are whitespace-only lines elsewhere.
        with open(path, encoding="utf-8") as f:
            return cls([line.rstrip("\r\n") for line in f])

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1, max_size: Optional[int] = None) -> "CharTokenizer":
        """Vocabulary from training text: special tokens, then characters by frequency (ties by
        code point, so the result is deterministic)."""
        counts = collections.Counter(normalize_char(ch) for text in texts for ch in text if carries_token(ch))
        chars = sorted((c for c, n in counts.items() if n >= min_freq and c not in SPECIAL_TOKENS), key=lambda c: (-counts[c], c))
        if max_size is not None:
            chars = chars[: max_size - len(SPECIAL_TOKENS)]
        return cls(SPECIAL_TOKENS + chars)

    def __len__(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> Tuple[List[int], List[int]]:
        """Token ids and, for each token, the offset of its character in `text`."""
        ids, offsets = [], []
        for i, ch in enumerate(text):
            looked_up = token_text(ch)
            if looked_up is not None:
                ids.append(self.token_to_id.get(looked_up, self.unk_id))
                offsets.append(i)
        return ids, offsets


# ----------------------------------------------------------------------------- windows and context


def window_bounds(num_tokens: int, window: int) -> List[Tuple[int, int]]:
    """Token windows covering a whole utterance (one, possibly empty, at least). Windows overlap
    by half (stride window // 2), so that every token is scored by a window that sees at least a
    quarter window on each side of it, unless it is near an end of the utterance."""
    stride, bounds, start = max(1, window // 2), [], 0
    while True:
        end = min(start + window, num_tokens)
        bounds.append((start, end))
        if end >= num_tokens:
            return bounds
        start += stride


def window_keeps(bounds: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """The token range each window's slot scores are taken for: an overlap between two windows is
    split in the middle, so each token comes from the window where it sits farther from a cut."""
    cuts = [0] + [(start + bounds[i][1] + 1) // 2 for i, (start, _) in enumerate(bounds[1:])] + [bounds[-1][1]]
    return list(zip(cuts[:-1], cuts[1:]))


def session_histories(turns: Iterable[Tuple[str, str]], context_turns: int,
                      answered: Callable[[str], bool] = lambda text: True) -> List[List[str]]:
    """For (session id, text) pairs in conversation order: the texts of the up to `context_turns`
    turns before each one in its own session, oldest first. What a running assistant knows; no
    label of an earlier turn is used. A turn joins its session only when `answered(text)`: one
    whose record is an error (empty, over-long) is no turn of the conversation, in every front
    end (the service refuses it; slu.h's History)."""
    seen: Dict[str, List[str]] = {}
    histories = []
    for session_id, text in turns:
        previous = seen.setdefault(session_id, [])
        histories.append(list(previous))
        if not answered(text):
            continue
        previous.append(text)
        del previous[: len(previous) - context_turns]  # keeps the last context_turns (none for 0)
    return histories


@dataclasses.dataclass
class Encoded:
    text: str
    offsets: List[int]  # character offset of every token
    # model rows: [CLS] + up to max_seq_length-2 utterance tokens + [SEP] (+ context tokens)
    windows: List[List[int]]
    bounds: List[Tuple[int, int]]  # the utterance tokens [start, end) of each row

    @property
    def keeps(self) -> List[Tuple[int, int]]:
        return window_keeps(self.bounds)


def any_slot_types(labels: LabelMaps) -> Dict[str, List[str]]:
    """Every slot type allowed under every intent: a Task without training data to learn the table from."""
    return {intent: labels.slot_types for intent in labels.intents}


@dataclasses.dataclass
class Task:
    """What a model is trained for and what its exported directory must describe."""

    tokenizer: CharTokenizer
    labels: LabelMaps
    max_seq_length: int  # tokens per model window, [CLS] and [SEP] included
    # slot types seen with each intent in training: what constrained decoding allows
    intent_slot_types: Dict[str, List[str]]
    context_turns: int = 0  # previous utterances of the session the model reads (0: none)
    max_context_tokens: int = 0  # tokens of the context segment, its [SEP]s included
    catalogue: Optional["Catalogue"] = None  # slot values (values.py), derived from train; None: none


    def __post_init__(self):
        if self.max_seq_length < 3:
            raise ValueError(f"max_seq_length {self.max_seq_length}: must hold [CLS], one token and [SEP]")
        if not isinstance(self.intent_slot_types, dict) or sorted(self.intent_slot_types) != sorted(self.labels.intents):
            raise ValueError(f"intent_slot_types must name every intent label once, not {sorted(self.intent_slot_types)}")
        unknown = sorted({t for types in self.intent_slot_types.values() for t in types} - set(self.labels.slot_types))
        if unknown:
            raise ValueError(f"intent_slot_types holds slot types {unknown} that are not in the slot labels")
        if self.context_turns < 0 or (self.context_turns > 0) != (self.max_context_tokens >= 2):
            raise ValueError(f"context_turns {self.context_turns} with max_context_tokens {self.max_context_tokens}: "
                             "a context model needs room for one token and its [SEP] (>= 2), a model without context 0")

    @property
    def max_row_length(self) -> int:
        """The longest model row: a window and the context segment."""
        return self.max_seq_length + self.max_context_tokens

    @property
    def slotless_intents(self) -> List[str]:
        """Intents with no slot type in training (the reference-compatible metric scores them on intent alone)."""
        return [i for i in self.labels.intents if not self.intent_slot_types[i]]

    def context_ids(self, history: Sequence[str]) -> List[int]:
        """The context segment: the last `context_turns` utterances, nearest first, each followed
        by [SEP], cut to `max_context_tokens` from the far end (the oldest text goes first)."""
        ids = []
        for text in reversed(history[-self.context_turns :] if self.context_turns else []):
            ids += self.tokenizer.tokenize(text)[0] + [self.tokenizer.sep_id]
        ids = ids[: self.max_context_tokens]
        if ids and ids[-1] != self.tokenizer.sep_id:
            ids[-1] = self.tokenizer.sep_id  # a cut turn still ends its segment
        return ids

    def encode(self, text: str, history: Sequence[str] = ()) -> Encoded:
        """Model rows of an utterance (overlapping windows, so that no character is left unscored),
        each row an ERNIE sentence pair: [CLS] utterance window [SEP] context. `history`: the
        session's earlier utterances, oldest first (only the last context_turns are read)."""
        ids, offsets = self.tokenizer.tokenize(text)
        tok, context = self.tokenizer, self.context_ids(history)
        bounds = window_bounds(len(ids), self.max_seq_length - 2)
        return Encoded(text, offsets, [[tok.cls_id] + ids[s:e] + [tok.sep_id] + context for s, e in bounds], bounds)

    def corpus_histories(self, utterances) -> List[List[str]]:
        """The context of each corpus utterance: the earlier turns of its session in file order
        (what a running assistant knows of the conversation; no label is used)."""
        return session_histories(((u.session_id, u.text) for u in utterances), self.context_turns)

    def encode_corpus(self, utterances) -> List[Encoded]:
        """Corpus utterances encoded with their sessions' earlier turns (in file order) as context."""
        return [self.encode(u.text, h) for u, h in zip(utterances, self.corpus_histories(utterances))]

    def labelled_rows(self, utt, enc: Encoded) -> List[dict]:
        """Model rows of a corpus utterance with their labels, one per window; the slot labels run
        the row's length, PAD on [CLS], [SEP] and the context (tags only on the utterance)."""
        slot_id, pad = self.labels.slot_id, self.labels.pad_slot_id
        tags = [slot_id[tag] for tag in utt.token_tags()]
        intent = self.labels.intent_id[utt.intent]
        return [{"input_ids": ids, "intent_label": intent, "slot_labels": [pad] + tags[s:e] + [pad] * (len(ids) - 1 - (e - s))}
                for ids, (s, e) in zip(enc.windows, enc.bounds)]
