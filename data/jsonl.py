"""JSON lines, the second corpus format (docs/data.md#json-lines): one utterance per line,

    {"text": "把副驾车窗打开一半", "intent": "window.open", "session_id": "car-003",
     "slots": [{"slot": "window", "start": 1, "end": 3}, {"slot": "degree", "start": 7, "end": 9}]}

slots as character spans of `text` (end exclusive) with an optional canonical "value" (what an
ASR correction `heard||value` writes in the native format); "session_id" optional (consecutive
lines of one id are one conversation; without it a line is its own session). Every utterance must
also be writable in the native format, since the splits are written in it."""
import json
from typing import List, Sequence

from data.corpus import INTENT_NAME, SLOT_TYPE_NAME, CorpusError, Slot, Utterance, parse_annotation
from utils import atomic_path, strict_json_loads

KEYS = {"text", "intent", "slots", "session_id"}
SLOT_KEYS = {"slot", "start", "end", "value"}


def _slot(item, text: str) -> Slot:
    if not isinstance(item, dict) or not {"slot", "start", "end"} <= set(item) or set(item) - SLOT_KEYS:
        raise ValueError(f"a slot is an object with slot, start, end and optionally value, not {json.dumps(item, ensure_ascii=False)}")
    name, start, end = item["slot"], item["start"], item["end"]
    if not isinstance(name, str) or not SLOT_TYPE_NAME.fullmatch(name):
        raise ValueError(f"bad slot type {name!r}: a name without spaces, '/', '|', '<' or '>'")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)) or not 0 <= start < end <= len(text):
        raise ValueError(f"slot {name!r}: start {start!r} and end {end!r} must be integers with 0 <= start < end <= "
                         f"{len(text)} (the text's length in characters)")
    span = text[start:end]
    value = item.get("value", span)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"slot {name!r}: value must be a non-blank string, not {value!r}")
    return Slot(name, start, end, value)


def parse_line(line: str, line_no: int) -> Utterance:
    """One utterance of a JSON line; ValueError describing the first problem."""
    record = strict_json_loads(line)
    if not isinstance(record, dict) or not {"text", "intent"} <= set(record) or set(record) - KEYS:
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"a line is an object with text, intent and optionally slots and session_id, not {found}")
    text, intent = record["text"], record["intent"]
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-blank string")
    if not isinstance(intent, str) or not INTENT_NAME.fullmatch(intent):
        raise ValueError(f"bad intent {intent!r}: a non-empty name without spaces")
    slots_in = record.get("slots", [])
    if not isinstance(slots_in, list):
        raise ValueError("slots must be a list")
    slots = tuple(sorted((_slot(item, text) for item in slots_in), key=lambda s: s.start))
    for a, b in zip(slots, slots[1:]):
        if b.start < a.end:
            raise ValueError(f"slots {a.type!r} [{a.start}, {a.end}) and {b.type!r} [{b.start}, {b.end}) overlap")
    session_id = record.get("session_id", f"line-{line_no}")
    if not isinstance(session_id, str) or not session_id.strip() or any(c in session_id for c in "\t\r\n"):
        raise ValueError(f"session_id must be a non-blank string without tabs or line breaks, not {session_id!r}")
    utt = Utterance(session_id, text, intent, slots, line_no)
    if any(c in text for c in "\t\r\n") or _written_slots(utt) != slots:
        raise ValueError("the corpus format cannot hold this utterance: tabs, line breaks, '<', '>', or '||' "
                         "inside a slot's text or value")
    return utt


def _written_slots(utt: Utterance):
    try:
        return parse_annotation(utt.text, utt.annotated())
    except ValueError:
        return None


def read_jsonl(path: str) -> List[Utterance]:
    """Every utterance of a JSON lines file; a malformed line raises CorpusError naming the file,
    the line number and the problem. Blank lines are allowed."""
    utterances = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(path, line_no, f"not UTF-8 ({e.reason} at byte {e.start})") from None
            if line_no == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                utterances.append(parse_line(line, line_no))
            except ValueError as e:
                raise CorpusError(path, line_no, str(e)) from None
    return utterances


def write_jsonl(path: str, utterances: Sequence[Utterance]) -> None:
    """Utterances as JSON lines (a value only where it differs from the span), whole or not at all."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for utt in utterances:
            slots = [{"slot": s.type, "start": s.start, "end": s.end,
                      **({"value": s.value} if s.value != utt.text[s.start : s.end] else {})} for s in utt.slots]
            f.write(json.dumps({"session_id": utt.session_id, "text": utt.text, "intent": utt.intent, "slots": slots},
                               ensure_ascii=False) + "\n")
