"""Data reading, label maps, tokenization, metrics and small shared helpers.

Everything here is plain Python + numpy so that data preparation, tests and every
inference front end (dynamic graph, Paddle Inference, FastDeploy) share one implementation.
"""
import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import unicodedata
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(PROJECT_DIR, "data")
INTENT_LABEL_FILE = os.path.join(DATA_DIR, "intent_label.txt")
SLOT_LABEL_FILE = os.path.join(DATA_DIR, "slot_label.txt")
# Where the NLPCC 2018 Task 4 corpus is looked for when no --corpus_file is given.
CORPUS_SEARCH_PATH = [
    os.path.join(DATA_DIR, "nlpcc2018", "corpus.train.txt"),
    os.path.join(PROJECT_DIR, "..", "shared", "data", "nlpcc2018", "corpus.train.txt"),
]

PAD_LABEL, OUTSIDE_LABEL = "PAD", "O"
PAD_TOKEN, CLS_TOKEN, SEP_TOKEN, UNK_TOKEN, MASK_TOKEN = "[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"
SPECIAL_TOKENS = [PAD_TOKEN, CLS_TOKEN, SEP_TOKEN, UNK_TOKEN, MASK_TOKEN]

logger = logging.getLogger("ernie_tiny_slu")


def _is_amd_cpu() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "AuthenticAMD" in f.read(4096)
    except OSError:
        return False


# The Paddle CPU wheel bundles Intel MKL, which runs its generic (non-AVX2) GEMM kernels on AMD
# CPUs: measured here on an AMD EPYC, matmul ran 2.5x faster with this switch. It must be set
# before paddle loads MKL, hence at import of this module, which the scripts import first.
if _is_amd_cpu():
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")


# ----------------------------------------------------------------------------- labels


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def write_lines(path: str, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


@dataclasses.dataclass
class LabelMaps:
    intents: List[str]
    slot_tags: List[str]  # PAD, O, B-x, I-x, ...

    @classmethod
    def from_files(cls, intent_file: str = INTENT_LABEL_FILE, slot_file: str = SLOT_LABEL_FILE) -> "LabelMaps":
        maps = cls(read_lines(intent_file), read_lines(slot_file))
        for path, labels in ((intent_file, maps.intents), (slot_file, maps.slot_tags)):
            if len(set(labels)) != len(labels):
                raise ValueError(f"{path}: duplicate labels")
        if PAD_LABEL not in maps.slot_tags or OUTSIDE_LABEL not in maps.slot_tags:
            raise ValueError(f"{slot_file}: must list {PAD_LABEL} and {OUTSIDE_LABEL}")
        return maps

    def save(self, directory: str) -> None:
        write_lines(os.path.join(directory, "intent_label.txt"), self.intents)
        write_lines(os.path.join(directory, "slot_label.txt"), self.slot_tags)

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


# ----------------------------------------------------------------------------- corpus


class CorpusError(ValueError):
    """A malformed corpus line; the message names file, line number and problem."""

    def __init__(self, path: str, line_no: int, problem: str):
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


def parse_annotation(query: str, annotated: str, slot_types: Sequence[str]) -> Tuple[Slot, ...]:
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
            if not span or (sep and not value) or "||" in value:
                raise ValueError(f"bad slot content {chunk!r} in <{open_tag}>")
            slots.append(Slot(open_tag, len(text), len(text) + len(span), value if sep else span))
            text += span
        if i == len(tags):
            break
        slash, name = tags[i]
        if name not in slot_types:
            raise ValueError(f"unknown slot tag <{slash}{name}>")
        if (slash == "/") != (open_tag is not None) or (slash and name != open_tag):
            raise ValueError(f"unbalanced tag <{slash}{name}> (open: {open_tag})")
        open_tag = None if slash else name
    if open_tag is not None:
        raise ValueError(f"unclosed tag <{open_tag}>")
    if text != query:
        raise ValueError(f"annotation without tags {text!r} does not reproduce the query {query!r}")
    return tuple(slots)


def read_corpus(path: str, labels: Optional[LabelMaps] = None) -> List[Utterance]:
    """Parse an NLPCC 2018 Task 4 file: `session<TAB>query<TAB>intent<TAB>annotated query` lines,
    blank lines between sessions, CRLF or LF. Every utterance is returned; any malformed line
    raises CorpusError naming the file, the line number and the problem."""
    labels = labels or LabelMaps.from_files()
    intents, slot_types = set(labels.intents), set(labels.slot_types)
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
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise CorpusError(path, line_no, f"expected 4 TAB-separated fields, found {len(fields)}")
        session_id, query, intent, annotated = fields
        if not session_id.strip():
            raise CorpusError(path, line_no, "empty session id")
        if intent not in intents:
            raise CorpusError(path, line_no, f"unknown intent {intent!r} (not in intent_label.txt)")
        try:
            slots = parse_annotation(query, annotated, slot_types)
        except ValueError as e:
            raise CorpusError(path, line_no, str(e)) from None
        utterances.append(Utterance(session_id, query, intent, slots, line_no))
    return utterances


def write_corpus(path: str, utterances: Sequence[Utterance]) -> None:
    """Write utterances in the corpus format, a blank line between sessions."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        previous = None
        for utt in utterances:
            if previous is not None and utt.session_id != previous:
                f.write("\n")
            f.write("\t".join([utt.session_id, utt.text, utt.intent, utt.annotated()]) + "\n")
            previous = utt.session_id


def find_corpus(corpus_file: Optional[str] = None) -> Optional[str]:
    """The corpus given by flag, else the first one found on CORPUS_SEARCH_PATH, else None."""
    if corpus_file:
        if not os.path.isfile(corpus_file):
            raise FileNotFoundError(f"corpus file not found: {corpus_file}")
        return corpus_file
    return next((os.path.normpath(p) for p in CORPUS_SEARCH_PATH if os.path.isfile(p)), None)


def split_by_session(
    utterances: Sequence[Utterance], seed: int = 42, fractions: Tuple[float, float] = (0.8, 0.1)
) -> Dict[str, List[Utterance]]:
    """Deterministic train/dev/test split that never puts one session in two splits.

    Sessions are ordered by a hash of (seed, session id) - the same on every machine and
    independent of file order - then filled into train until it holds `fractions[0]` of the
    utterances, dev until `sum(fractions)`, the rest go to test."""
    sessions: Dict[str, List[Utterance]] = collections.OrderedDict()
    for utt in utterances:
        sessions.setdefault(utt.session_id, []).append(utt)
    order = sorted(sessions, key=lambda sid: hashlib.sha256(f"{seed}:{sid}".encode()).hexdigest())
    total, seen = len(utterances), 0
    splits = {"train": [], "dev": [], "test": []}
    for sid in order:
        name = "train" if seen < fractions[0] * total else "dev" if seen < sum(fractions) * total else "test"
        splits[name].extend(sessions[sid])
        seen += len(sessions[sid])
    return splits


def intents_without_slots(utterances: Iterable[Utterance]) -> List[str]:
    """Intents that never carry a slot in `utterances` (the reference scores these leniently)."""
    seen, with_slots = [], set()
    for utt in utterances:
        if utt.intent not in seen:
            seen.append(utt.intent)
        if utt.slots:
            with_slots.add(utt.intent)
    return sorted(i for i in seen if i not in with_slots)


def split_stats(splits: Dict[str, List[Utterance]]) -> dict:
    return {
        name: {
            "utterances": len(utts),
            "sessions": len({u.session_id for u in utts}),
            "corrections": sum(u.has_correction for u in utts),
            "intents": dict(collections.Counter(u.intent for u in utts).most_common()),
        }
        for name, utts in splits.items()
    }


# ----------------------------------------------------------------------------- augmentation (distillation)

# Masked words become this private-use character: no vocabulary holds it, so it reads as [UNK].
MASK_CHAR = "\ue000"


def word_pieces(utt: Utterance) -> List[Tuple[str, Optional[Slot], str]]:
    """(text, slot, part of speech) pieces that concatenate to the query: every slot whole, the
    text between slots cut into jieba words (dictionary only, so deterministic)."""
    import jieba.posseg

    pieces, cursor = [], 0
    for slot in list(utt.slots) + [None]:
        end = slot.start if slot else len(utt.text)
        if end > cursor:
            pieces += [(w.word, None, w.flag) for w in jieba.posseg.lcut(utt.text[cursor:end], HMM=False)]
        if slot:
            pieces.append((utt.text[slot.start : slot.end], slot, "slot:" + slot.type))
            cursor = slot.end
    return pieces


def augmentation_lexicon(utterances: Iterable[Utterance]) -> Dict[str, List[str]]:
    """Substitutes by kind: slot values of each slot type ("slot:<type>") and words of each jieba
    part of speech, all from the given (training) utterances; sorted, so draws are reproducible."""
    lexicon = collections.defaultdict(set)
    for utt in utterances:
        for text, _, kind in word_pieces(utt):
            if text.strip():
                lexicon[kind].add(text)
    return {kind: sorted(words) for kind, words in lexicon.items()}


def augment(utt: Utterance, lexicon: Dict[str, List[str]], rng, p_mask: float = 0.1, p_substitute: float = 0.1,
            p_ngram: float = 0.25) -> Utterance:
    """One augmented copy, after the PaddleNLP ERNIE -> Bi-LSTM distillation recipe, keeping slots
    exact: each piece is masked with p_mask, else replaced with p_substitute by a training word of
    the same part of speech (a slot value by a training value of the same slot type); then with
    p_ngram only a random run of whole pieces is kept, so no slot is ever cut. Slot spans are
    recomputed, so char_tags() is exact; the intent is the source's, but distillation labels
    augmented copies with the teacher's logits, never with these."""
    pieces = []
    for text, slot, kind in word_pieces(utt):
        draw = rng.random()
        if draw < p_mask and text.strip():
            text = MASK_CHAR * len(text)
        elif draw < p_mask + p_substitute and lexicon.get(kind):
            text = rng.choice(lexicon[kind])
        pieces.append((text, slot))
    if rng.random() < p_ngram and len(pieces) > 1:
        n = rng.randint(1, len(pieces) - 1)
        start = rng.randint(0, len(pieces) - n)
        pieces = pieces[start : start + n]
    text, slots = "", []
    for piece, slot in pieces:
        if slot:
            same = piece == utt.text[slot.start : slot.end]
            slots.append(Slot(slot.type, len(text), len(text) + len(piece), slot.value if same else piece))
        text += piece
    return Utterance(utt.session_id, text, utt.intent, tuple(slots))


def augment_corpus(utterances: Sequence[Utterance], copies: int, seed: int, **probabilities) -> List[Utterance]:
    """`copies` augmented versions of every utterance (seeded), without blanks and without copies
    identical to their source."""
    import random

    rng, lexicon = random.Random(seed), augmentation_lexicon(utterances)
    out = []
    for utt in utterances:
        for _ in range(copies):
            new = augment(utt, lexicon, rng, **probabilities)
            if new.text.strip() and new.text != utt.text:
                out.append(new)
    return out


# ----------------------------------------------------------------------------- tokenization


def normalize_char(ch: str) -> str:
    """Full-width -> half-width and lower case (ERNIE vocabularies are uncased), one char to one."""
    folded = unicodedata.normalize("NFKC", ch).lower()
    return folded if len(folded) == 1 else ch.lower()


class CharTokenizer:
    """One token per non-whitespace character of the query.

    ERNIE's Chinese vocabularies hold every CJK character, digit and Latin letter as a token,
    so per-character tokens keep the character <-> token <-> tag alignment exact by
    construction (a WordPiece split of "la la" or "13812345678" would not). Whitespace
    carries no token; a slot's character span still covers the spaces inside it."""

    def __init__(self, vocab: Sequence[str]):
        self.vocab = list(vocab)
        self.token_to_id = {tok: i for i, tok in enumerate(self.vocab)}
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
        counts = collections.Counter(normalize_char(ch) for text in texts for ch in text if not ch.isspace())
        chars = sorted((c for c, n in counts.items() if n >= min_freq and c not in SPECIAL_TOKENS), key=lambda c: (-counts[c], c))
        if max_size is not None:
            chars = chars[: max_size - len(SPECIAL_TOKENS)]
        return cls(SPECIAL_TOKENS + chars)

    def save(self, directory: str) -> str:
        path = os.path.join(directory, "vocab.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(tok + "\n" for tok in self.vocab)
        return path

    def __len__(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> Tuple[List[int], List[int]]:
        """Token ids and, for each token, the offset of its character in `text`."""
        ids, offsets = [], []
        for i, ch in enumerate(text):
            if not ch.isspace():
                ids.append(self.token_to_id.get(normalize_char(ch), self.unk_id))
                offsets.append(i)
        return ids, offsets


# ----------------------------------------------------------------------------- features


def window_bounds(num_tokens: int, window: int) -> List[Tuple[int, int]]:
    """Consecutive token windows covering a whole utterance (one, possibly empty, at least)."""
    return [(s, min(s + window, num_tokens)) for s in range(0, max(num_tokens, 1), window)]


@dataclasses.dataclass
class EncodedUtterance:
    text: str
    offsets: List[int]  # character offset of every token
    windows: List[List[int]]  # [CLS] + up to max_seq_length-2 token ids + [SEP]


def encode_for_inference(tokenizer: CharTokenizer, text: str, max_seq_length: int) -> EncodedUtterance:
    """Split an utterance into model windows so that no character is left unscored."""
    ids, offsets = tokenizer.tokenize(text)
    windows = [[tokenizer.cls_id] + ids[s:e] + [tokenizer.sep_id] for s, e in window_bounds(len(ids), max_seq_length - 2)]
    return EncodedUtterance(text, offsets, windows)


def labelled_windows(tokenizer: CharTokenizer, utt: Utterance, labels: LabelMaps, max_seq_length: int) -> List[dict]:
    """Model rows of one utterance with their labels, one per window. Training keeps the first
    (i.e. truncates); evaluation keeps all, so the whole utterance is scored."""
    enc = encode_for_inference(tokenizer, utt.text, max_seq_length)
    char_tags, slot_id, pad = utt.char_tags(), labels.slot_id, labels.pad_slot_id
    tags = [slot_id[char_tags[o]] for o in enc.offsets]
    bounds = window_bounds(len(tags), max_seq_length - 2)
    return [
        {"input_ids": ids, "intent_label": labels.intent_id[utt.intent], "slot_labels": [pad] + tags[s:e] + [pad]}
        for ids, (s, e) in zip(enc.windows, bounds)
    ]


def pad_batch(sequences: Sequence[Sequence[int]], pad_value: int) -> np.ndarray:
    width = max(len(s) for s in sequences)
    out = np.full((len(sequences), width), pad_value, dtype="int64")
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out


# ----------------------------------------------------------------------------- prediction

# A function from padded input ids [batch, seq] to (intent logits [batch, I], slot logits [batch, seq, T]);
# every front end (dynamic graph, Paddle Inference, FastDeploy) provides one.
LogitsFn = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class Prediction:
    intent_id: int
    intent_probs: np.ndarray
    tag_ids: List[int]  # one per token
    intent_logits: np.ndarray
    slot_logits: np.ndarray  # [tokens, T]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def merge_windows(intent_logits: np.ndarray, slot_logits: np.ndarray, windows: Sequence[Sequence[Sequence[int]]]) -> List[Prediction]:
    """Per-utterance predictions from per-window logits (rows in window order; `windows[u]` are
    the id rows of utterance u). Slot logits of the real tokens are concatenated; the intent
    comes from the first window, where the command words of an over-long utterance are."""
    predictions, r = [], 0
    for rows in windows:
        intent = np.asarray(intent_logits[r], dtype="float32")
        slots = np.concatenate([np.asarray(slot_logits[r + k][1 : len(w) - 1], dtype="float32") for k, w in enumerate(rows)])
        r += len(rows)
        probs = softmax(intent)
        predictions.append(Prediction(int(probs.argmax()), probs, slots.argmax(-1).tolist(), intent, slots))
    return predictions


def predict_encoded(encoded: Sequence[EncodedUtterance], logits_fn: LogitsFn, pad_id: int, batch_size: int = 64) -> List[Prediction]:
    """Run all windows of all utterances in batches of `batch_size` rows and merge them back."""
    rows = [w for enc in encoded for w in enc.windows]
    intent_rows, slot_rows = [], []
    for b in range(0, len(rows), batch_size):
        intent_logits, slot_logits = logits_fn(pad_batch(rows[b : b + batch_size], pad_id))
        intent_rows.extend(intent_logits)
        slot_rows.extend(slot_logits)
    return merge_windows(intent_rows, slot_rows, [enc.windows for enc in encoded])


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


def describe(pred: Prediction, enc: EncodedUtterance, labels: LabelMaps) -> dict:
    """The structured result of one utterance: intent, confidence, slots with character spans
    (`pos` = [first, last] character offsets, inclusive, as in the PaddleNLP demo)."""
    tags = [labels.slot_tags[t] for t in pred.tag_ids]
    slots = []
    for kind, s, e in bio_spans(tags):
        first, last = enc.offsets[s], enc.offsets[e - 1]
        slots.append({"slot": kind, "entity": enc.text[first : last + 1], "pos": [first, last]})
    return {
        "text": enc.text,
        "intent": labels.intents[pred.intent_id],
        "confidence": round(float(pred.intent_probs[pred.intent_id]), 4),
        "slots": slots,
    }


# ----------------------------------------------------------------------------- metrics


def token_tags(utt: Utterance) -> List[str]:
    """Gold BIO tag of every token (non-whitespace character)."""
    return [tag for ch, tag in zip(utt.text, utt.char_tags()) if not ch.isspace()]


def slu_metrics(
    gold: Sequence[Utterance], predicted: Sequence[Tuple[str, Sequence[str]]], slotless_intents: Iterable[str]
) -> dict:
    """Intent accuracy, span-level slot P/R/F1, sentence accuracy and per-intent counts.

    `predicted` holds (intent, token tags) per utterance. Sentence accuracy is strict (intent
    right and every token tag right); `sentence_acc_ref` is the reference's lenient variant,
    where for an intent in `slotless_intents` a right intent alone makes a right sentence."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold utterances but {len(predicted)} predictions")
    slotless = set(slotless_intents)
    intent_right = sentence_right = sentence_ref_right = tp = n_gold = n_pred = 0
    per_intent = collections.defaultdict(lambda: {"count": 0, "intent_correct": 0, "sentence_correct": 0})
    for utt, (intent, tags) in zip(gold, predicted):
        gold_tags = token_tags(utt)
        if len(tags) != len(gold_tags):
            raise ValueError(f"{len(tags)} predicted tags for {len(gold_tags)} tokens in {utt.text!r}")
        tags = [OUTSIDE_LABEL if t == PAD_LABEL else t for t in tags]
        gold_spans, pred_spans = set(bio_spans(gold_tags)), set(bio_spans(tags))
        tp, n_gold, n_pred = tp + len(gold_spans & pred_spans), n_gold + len(gold_spans), n_pred + len(pred_spans)
        intent_ok = intent == utt.intent
        sentence_ok = intent_ok and tags == gold_tags
        intent_right += intent_ok
        sentence_right += sentence_ok
        sentence_ref_right += sentence_ok or (intent_ok and utt.intent in slotless)
        stats = per_intent[utt.intent]
        stats["count"] += 1
        stats["intent_correct"] += intent_ok
        stats["sentence_correct"] += sentence_ok
    n = max(len(gold), 1)
    precision, recall = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return {
        "intent_acc": intent_right / n,
        "slot_precision": precision,
        "slot_recall": recall,
        "slot_f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "sentence_acc": sentence_right / n,
        "sentence_acc_ref": sentence_ref_right / n,
        "num_utterances": len(gold),
        "per_intent": {k: per_intent[k] for k in sorted(per_intent)},
    }


def score_predictions(utterances: Sequence[Utterance], preds: Sequence[Prediction], labels: LabelMaps, slotless_intents: Iterable[str]) -> dict:
    predicted = [(labels.intents[p.intent_id], [labels.slot_tags[t] for t in p.tag_ids]) for p in preds]
    return slu_metrics(utterances, predicted, slotless_intents)


def evaluate_utterances(
    utterances: Sequence[Utterance], tokenizer: CharTokenizer, logits_fn: LogitsFn, labels: LabelMaps,
    max_seq_length: int, slotless_intents: Iterable[str], batch_size: int = 64,
) -> dict:
    """Score whole utterances (all windows) with any front end's logits function."""
    encoded = [encode_for_inference(tokenizer, u.text, max_seq_length) for u in utterances]
    preds = predict_encoded(encoded, logits_fn, tokenizer.pad_id, batch_size)
    return score_predictions(utterances, preds, labels, slotless_intents)


# ----------------------------------------------------------------------------- exported models

INFERENCE_CONFIG = "inference_config.json"


class ExportedModel:
    """An exported directory (model.pdmodel/.pdiparams, vocab.txt, label files,
    inference_config.json): tokenization, windows and decoding; subclasses run the graph."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.config = load_json(os.path.join(model_dir, INFERENCE_CONFIG))
        self.tokenizer = CharTokenizer.from_file(os.path.join(model_dir, "vocab.txt"))
        self.labels = LabelMaps.from_files(os.path.join(model_dir, "intent_label.txt"), os.path.join(model_dir, "slot_label.txt"))

    def logits(self, input_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def encode(self, text: str) -> EncodedUtterance:
        return encode_for_inference(self.tokenizer, text, self.config["max_seq_length"])

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> List[dict]:
        encoded = [self.encode(t) for t in texts]
        preds = predict_encoded(encoded, self.logits, self.tokenizer.pad_id, batch_size)
        return [describe(p, e, self.labels) for p, e in zip(preds, encoded)]

    def evaluate(self, utterances: Sequence[Utterance], batch_size: int = 64) -> dict:
        return evaluate_utterances(
            utterances, self.tokenizer, self.logits, self.labels, self.config["max_seq_length"],
            self.config["slotless_intents"], batch_size,
        )


class InferenceModel(ExportedModel):
    """An exported directory run through Paddle Inference on the CPU."""

    def __init__(self, model_dir: str, cpu_threads: int = 0, use_onednn: bool = True):
        from paddle import inference

        super().__init__(model_dir)
        config = inference.Config(os.path.join(model_dir, "model.pdmodel"), os.path.join(model_dir, "model.pdiparams"))
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(cpu_threads or os.cpu_count() or 1)
        if use_onednn:
            config.enable_mkldnn()
            if self.config.get("onednn_int8"):
                # QAT stages (see run_train.collect_stages): without this Paddle Inference runs their
                # quantize/dequantize pairs in fp32 plus extra ops, 3-4x slower than the fp32 model.
                config.enable_mkldnn_int8()
        config.disable_glog_info()
        self.predictor = inference.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.outputs = [self.predictor.get_output_handle(n) for n in self.predictor.get_output_names()]

    def logits(self, input_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        self.input.reshape(input_ids.shape)
        self.input.copy_from_cpu(input_ids)
        self.predictor.run()
        intent_logits, slot_logits = (o.copy_to_cpu() for o in self.outputs)
        return intent_logits, slot_logits


# ----------------------------------------------------------------------------- misc


def set_cpu_threads(num_threads: int) -> int:
    """Set the CPU math threads (OpenMP/MKL) of this process; 0 means one per core.

    The environment may export OMP_NUM_THREADS=1, which halves matmul speed on 2 cores, so the
    scripts always call this with an explicit flag and log the result."""
    import paddle

    n = num_threads or os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(n)
    paddle.set_num_threads(n) if hasattr(paddle, "set_num_threads") else paddle.base.core.set_num_threads(n)
    return n


def model_size_mb(model_dir: str) -> float:
    """Size on disk of an exported graph and its weights (what a deployment ships besides the vocabulary)."""
    return sum(os.path.getsize(os.path.join(model_dir, f)) for f in ("model.pdmodel", "model.pdiparams")) / 1e6


def save_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def load_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
