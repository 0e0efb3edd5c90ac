"""Slot values a car can act on (docs/decoding.md#slot-values): the text as heard resolved to a
canonical value against a catalogue, or by a rule, or left as heard.

A catalogue holds, per slot type, canonical values with their synonyms (other ways the value is
written or heard), and the rules that apply to a slot type. One is derived from the training
split (every canonical value, and every heard -> canonical pair of an ASR correction); users add
their own (a song list, a phone book) as a JSON lines file of the same form:

    {"slot": "singer", "value": "祁隆", "synonyms": ["奇隆"]}
    {"slot": "phone_num", "rule": "digits"}

Resolution of a heard text, in order: `exact` (its key, the project's character normalisation of
its token-carrying characters, is the key of one canonical value), `catalogue` (the key of a
synonym of one canonical value), `rule` (the slot type's rule gives a value), else `none` (the
value is the text as heard). A key that names two different canonical values is ambiguous and
resolves to nothing: a wrong correction is worse than none. deploy/cpp/slu.cc is the C++ twin.
"""
import dataclasses
import json
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from task import carries_token, normalize_char
from utils import atomic_path, strict_json_loads

EXACT, CATALOGUE, RULE, NONE = "exact", "catalogue", "rule", "none"
DIGITS = "digits"
RULES = (DIGITS,)
# digit words of spoken numbers (幺 and 两 as said in phone numbers) and separators said or written between digits
DIGIT_WORDS = {**{str(d): str(d) for d in range(10)}, "零": "0", "〇": "0", "一": "1", "幺": "1", "二": "2", "两": "2",
               "三": "3", "四": "4", "五": "5", "六": "6", "七": "7", "八": "8", "九": "9"}
DIGIT_SEPARATORS = set("-–—·.()+/")
# a slot type gets the digits rule when at least this share of its canonical values in train are digit strings
DIGITS_SHARE = 0.9


def value_key(text: str) -> str:
    """What values are compared by: the normalised token-carrying characters (task.normalize_char)."""
    return "".join(normalize_char(ch) for ch in text if carries_token(ch))


def digits(text: str) -> Optional[str]:
    """The digit string a spoken or written number stands for (digit words, full-width digits,
    separators dropped), or None when anything else is in it or no digit is."""
    out = []
    for ch in value_key(text):
        if ch in DIGIT_WORDS:
            out.append(DIGIT_WORDS[ch])
        elif ch not in DIGIT_SEPARATORS:
            return None
    return "".join(out) or None


class CatalogueError(ValueError):
    """A malformed catalogue line; the message names the file, the line number and the problem."""


@dataclasses.dataclass
class Catalogue:
    # slot type -> key -> canonical values with that key (one: resolvable; more: ambiguous)
    values: Dict[str, Dict[str, Set[str]]] = dataclasses.field(default_factory=dict)
    synonyms: Dict[str, Dict[str, Set[str]]] = dataclasses.field(default_factory=dict)
    rules: Dict[str, str] = dataclasses.field(default_factory=dict)  # slot type -> rule

    def add(self, slot_type: str, value: str, synonyms: Iterable[str] = ()) -> None:
        self.values.setdefault(slot_type, {}).setdefault(value_key(value), set()).add(value)
        for synonym in synonyms:
            if value_key(synonym) != value_key(value):
                self.synonyms.setdefault(slot_type, {}).setdefault(value_key(synonym), set()).add(value)

    def update(self, other: "Catalogue") -> None:
        for entry in other.entries():
            self.add_entry(entry)

    def add_entry(self, entry: dict) -> None:
        if "rule" in entry:
            self.rules[entry["slot"]] = entry["rule"]
        else:
            self.add(entry["slot"], entry["value"], entry.get("synonyms", ()))

    def __len__(self) -> int:
        return sum(len(v) for by_key in self.values.values() for v in by_key.values())

    def resolve(self, slot_type: str, heard: str) -> Tuple[str, str]:
        """(value, how it was resolved) of a slot's text as heard."""
        key = value_key(heard)
        for found, how in ((self.values.get(slot_type, {}).get(key), EXACT), (self.synonyms.get(slot_type, {}).get(key), CATALOGUE)):
            if found:
                return (next(iter(found)), how) if len(found) == 1 else (heard, NONE)
        if self.rules.get(slot_type) == DIGITS and digits(heard) is not None:
            return digits(heard), RULE
        return heard, NONE

    def entries(self) -> List[dict]:
        """The catalogue as file entries, in a deterministic order (rules first, then by slot type and value)."""
        synonyms_of: Dict[Tuple[str, str], List[str]] = {}
        for slot_type, by_key in self.synonyms.items():
            for key, canonical in by_key.items():
                for value in canonical:
                    synonyms_of.setdefault((slot_type, value), []).append(key)
        out = [{"slot": t, "rule": r} for t, r in sorted(self.rules.items())]
        for slot_type in sorted(self.values):
            for value in sorted(v for values in self.values[slot_type].values() for v in values):
                synonyms = sorted(synonyms_of.get((slot_type, value), []))
                out.append({"slot": slot_type, "value": value, **({"synonyms": synonyms} if synonyms else {})})
        return out


def derive_catalogue(train) -> Catalogue:
    """The catalogue of a training split: every canonical value of each slot type with the heard
    forms that were corrected to it, and the digits rule for slot types whose values are digits."""
    catalogue = Catalogue()
    by_type: Dict[str, List[str]] = {}
    for utt in train:
        for slot in utt.slots:
            heard = utt.text[slot.start : slot.end]
            catalogue.add(slot.type, slot.value, [heard] if heard != slot.value else [])
            by_type.setdefault(slot.type, []).append(slot.value)
    for slot_type, values in by_type.items():
        if sum(digits(v) == value_key(v) for v in values) >= DIGITS_SHARE * len(values):
            catalogue.rules[slot_type] = DIGITS
    return catalogue


def parse_entry(line: str, slot_types: Optional[Sequence[str]] = None) -> dict:
    """One catalogue entry of a JSON line; ValueError describing the first problem."""
    try:
        entry = strict_json_loads(line)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("slot"), str) or not entry["slot"]:
        raise ValueError('an entry is an object with "slot" and either "value" (and optional "synonyms") or "rule"')
    if slot_types is not None and entry["slot"] not in slot_types:
        raise ValueError(f"slot type {entry['slot']!r} is not one of the model's ({', '.join(slot_types)})")
    if "rule" in entry:
        if set(entry) != {"slot", "rule"} or entry["rule"] not in RULES:
            raise ValueError(f'a rule entry is {{"slot", "rule"}} with a rule of {list(RULES)}')
        return entry
    if set(entry) - {"slot", "value", "synonyms"} or not isinstance(entry.get("value"), str) or not value_key(entry["value"]):
        raise ValueError('a value entry is {"slot", "value", "synonyms"} with a value of visible characters')
    synonyms = entry.get("synonyms", [])
    if not isinstance(synonyms, list) or not all(isinstance(s, str) and value_key(s) for s in synonyms):
        raise ValueError("synonyms must be a list of strings of visible characters")
    return entry


def read_catalogue(path: str, slot_types: Optional[Sequence[str]] = None) -> Catalogue:
    """A catalogue JSON lines file; a bad line raises CatalogueError naming file and line."""
    catalogue = Catalogue()
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
                if line_no == 1:
                    line = line.lstrip("\ufeff")
                if line.strip():
                    catalogue.add_entry(parse_entry(line, slot_types))
            except (UnicodeDecodeError, ValueError) as e:
                raise CatalogueError(f"{path}:{line_no}: {e}") from None
    return catalogue


def write_catalogue(path: str, catalogue: Catalogue) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(entry, ensure_ascii=False) + "\n" for entry in catalogue.entries())
