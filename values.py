"""Slot values a car can act on (docs/decoding.md#slot-values): the text as heard resolved to a
canonical value against a catalogue, or by a rule, or left as heard.

A catalogue holds, per slot type, canonical values with their synonyms (other ways the value is
written or heard), and the rules that apply to a slot type. One is derived from the training
split (every canonical value, and every heard -> canonical pair of an ASR correction); users add
their own (a song list, a phone book) as a JSON lines file of the same form:

    {"slot": "artist", "value": "祁隆", "synonyms": ["奇隆"]}
    {"slot": "number", "rule": "digits"}
    {"slot": "artist", "rule": "pronunciation"}     # the list is complete: match by sound

Resolution of a heard text, in order: `exact` (its key, the project's character normalisation of
its token-carrying characters, is the key of one canonical value), `catalogue` (the key of a
synonym of one canonical value), then the slot type's rule: `pronunciation` (one value or synonym
sounds alike, `Catalogue.sound_match`: for slot types whose catalogue lists every value, such as
a phone book or a music service's songs; a partial list would "correct" right values that it
lacks into ones that sound alike) or `rule` (`digits`: a spoken or written digit string), else
`none` (the value is the text as heard). A key that names two different canonical values, or
two values that sound equally close, is ambiguous and resolves to nothing: a wrong correction is
worse than none. deploy/cpp/slu.cc is the C++ twin.

Pronunciation comes from a table of the toneless Mandarin readings of every CJK ideograph
(U+4E00-U+9FFF, most common reading first), built with pypinyin when a catalogue is derived and
shipped in the export (pinyin.txt), so that C++ reads the same table instead of a second library.
"""
import dataclasses
import json
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from task import carries_token, normalize_char
from utils import atomic_path, strict_json_loads

EXACT, CATALOGUE, PRONUNCIATION, RULE, NONE = "exact", "catalogue", "pronunciation", "rule", "none"
DIGITS = "digits"
RULES = (DIGITS, PRONUNCIATION)
# digit words of spoken numbers (幺 and 两 as said in phone numbers) and separators said or written between digits
DIGIT_WORDS = {**{str(d): str(d) for d in range(10)}, "零": "0", "〇": "0", "一": "1", "幺": "1", "二": "2", "两": "2",
               "三": "3", "四": "4", "五": "5", "六": "6", "七": "7", "八": "8", "九": "9"}
DIGIT_SEPARATORS = set("-–—·.()+/")
# a slot type gets the digits rule when at least this share of its canonical values in train are digit strings
DIGITS_SHARE = 0.9


# Confusions speech recognisers make between Mandarin syllables (a southern accent, a noisy car):
# both sides are folded before comparing. Initials first (zh/z, ch/c, sh/s, n/l), then finals.
FUZZY_INITIALS = (("zh", "z"), ("ch", "c"), ("sh", "s"), ("n", "l"))
FUZZY_FINALS = (("iang", "ian"), ("uang", "uan"), ("ang", "an"), ("eng", "en"), ("ing", "in"))
CJK_FIRST, CJK_LAST = 0x4E00, 0x9FFF
# Cost of a syllable edit, in half-units: a syllable read alike 0, alike once folded 1, other 2;
# inserting or deleting one 2. A sound match may cost at most one half-unit per two syllables of
# the candidate (a quarter of an edit per syllable), and needs at least MIN_SOUND_SYLLABLES.
SAME, FOLDED, OTHER = 0, 1, 2
MIN_SOUND_SYLLABLES = 2
MIN_EDIT_SYLLABLES = 4  # the bound allows a whole-syllable edit (2 half-units) from 4 syllables on


def fuzzy(syllable: str) -> str:
    """A toneless pinyin syllable with the recognisers' confusions folded (FUZZY_INITIALS, FUZZY_FINALS)."""
    for a, b in FUZZY_INITIALS:
        if syllable.startswith(a):
            syllable = b + syllable[len(a):]
            break
    for a, b in FUZZY_FINALS:
        if syllable.endswith(a):
            return syllable[: -len(a)] + b
    return syllable


def pinyin_table() -> Dict[str, Tuple[str, ...]]:
    """The toneless readings of every CJK ideograph that pypinyin knows, most common first."""
    from pypinyin import Style, pinyin  # needed where a catalogue is derived, not where one is read

    table = {}
    for code in range(CJK_FIRST, CJK_LAST + 1):
        readings = pinyin(chr(code), style=Style.NORMAL, heteronym=True, errors="ignore")
        # ê (欸) is pinyin's one letter outside ASCII: written e, as recognisers do
        readings = [r.replace("ê", "e") for r in readings[0]] if readings else []
        if readings:
            table[chr(code)] = tuple(dict.fromkeys(readings))
    return table


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
    pinyin: Dict[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict, repr=False)  # character -> readings
    # sound index: slot type + folded syllables (all, and with one left out) -> (canonical value, key it was heard as)
    _sounds: Optional[Dict[str, Set[Tuple[str, str]]]] = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def add(self, slot_type: str, value: str, synonyms: Iterable[str] = ()) -> None:
        self.values.setdefault(slot_type, {}).setdefault(value_key(value), set()).add(value)
        for synonym in synonyms:
            if value_key(synonym) != value_key(value):
                self.synonyms.setdefault(slot_type, {}).setdefault(value_key(synonym), set()).add(value)
        self._sounds = None

    def update(self, other: "Catalogue") -> None:
        for entry in other.entries():
            self.add_entry(entry)
        self.pinyin = {**other.pinyin, **self.pinyin}
        self._sounds = None

    def add_entry(self, entry: dict) -> None:
        if "rule" in entry:
            self.rules[entry["slot"]] = entry["rule"]
            self._sounds = None
        else:
            self.add(entry["slot"], entry["value"], entry.get("synonyms", ()))

    def num_values(self) -> int:
        """Canonical values held (not `__len__`: a catalogue of rules alone holds none, yet applies)."""
        return sum(len(v) for by_key in self.values.values() for v in by_key.values())

    def resolve(self, slot_type: str, heard: str) -> Tuple[str, str]:
        """(value, how it was resolved) of a slot's text as heard."""
        key = value_key(heard)
        for found, how in ((self.values.get(slot_type, {}).get(key), EXACT), (self.synonyms.get(slot_type, {}).get(key), CATALOGUE)):
            if found:
                return (next(iter(found)), how) if len(found) == 1 else (heard, NONE)
        rule = self.rules.get(slot_type)
        if rule == PRONUNCIATION:
            value = self.sound_match(slot_type, key)
            if value is not None:
                return value, PRONUNCIATION
        number = digits(heard) if rule == DIGITS else None
        if number is not None:
            return number, RULE
        return heard, NONE

    # ------------------------------------------------------------------ pronunciation

    def syllables(self, key: str) -> List[Tuple[Tuple[str, ...], Tuple[str, ...]]]:
        """(readings, folded readings) of each character of a key; a character without a reading
        (Latin, digits) is its own one syllable, never folded."""
        out = []
        for ch in key:
            readings = self.pinyin.get(ch)
            out.append((readings, tuple(dict.fromkeys(fuzzy(r) for r in readings))) if readings else ((ch,), (ch,)))
        return out

    def _index_keys(self, slot_type: str, key: str) -> List[str]:
        """Sound-index keys of a text: its folded most common readings, whole and, from
        MIN_EDIT_SYLLABLES on, with each one left out (the edits the bound can afford)."""
        first = [folded[0] for _, folded in self.syllables(key)]
        variants = {" ".join(first)}
        if len(first) >= MIN_EDIT_SYLLABLES:
            variants |= {" ".join(first[:i] + first[i + 1 :]) for i in range(len(first))}
        return [f"{slot_type}\x1f{v}" for v in sorted(variants)]

    def _sound_index(self) -> Dict[str, Set[Tuple[str, str]]]:
        if self._sounds is None:
            self._sounds = {}
            for table in (self.values, self.synonyms):
                for slot_type, by_key in table.items():
                    if self.rules.get(slot_type) != PRONUNCIATION:
                        continue
                    for key, canonical in by_key.items():
                        if len(key) >= MIN_SOUND_SYLLABLES:
                            for index_key in self._index_keys(slot_type, key):
                                self._sounds.setdefault(index_key, set()).update((value, key) for value in canonical)
        return self._sounds

    def sound_distance(self, a: str, b: str) -> int:
        """Edit distance in half-units between the syllables of two keys (SAME, FOLDED, OTHER; 2 per insertion or deletion)."""
        sa, sb = self.syllables(a), self.syllables(b)
        previous = list(range(0, 2 * len(sb) + 1, 2))
        for i, (ra, fa) in enumerate(sa, 1):
            row = [2 * i]
            for j, (rb, fb) in enumerate(sb, 1):
                sub = SAME if set(ra) & set(rb) else FOLDED if set(fa) & set(fb) else OTHER
                row.append(min(previous[j - 1] + sub, previous[j] + 2, row[j - 1] + 2))
            previous = row
        return previous[-1]

    def sound_match(self, slot_type: str, key: str) -> Optional[str]:
        """The one canonical value of `slot_type` whose value or synonym sounds closest to `key`
        within the bound (one half-unit per two syllables of the candidate), or None: none close
        enough, or two values equally close. Candidates share the folded most common readings,
        all, or all but one (one other syllable, one more or fewer) where either side has
        MIN_EDIT_SYLLABLES."""
        if len(key) < MIN_SOUND_SYLLABLES or not self.pinyin:
            return None
        index = self._sound_index()
        candidates = set().union(*(index.get(k, ()) for k in self._index_keys(slot_type, key)))
        best, best_values = None, set()
        for value, candidate in candidates:
            distance = self.sound_distance(key, candidate)
            if distance > len(candidate) // 2:
                continue
            if best is None or distance < best:
                best, best_values = distance, {value}
            elif distance == best:
                best_values.add(value)
        return next(iter(best_values)) if len(best_values) == 1 else None

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
    catalogue.pinyin = pinyin_table()
    return catalogue


def parse_entry(line: str, slot_types: Optional[Sequence[str]] = None) -> dict:
    """One catalogue entry of a JSON line; ValueError describing the first problem."""
    try:
        entry = strict_json_loads(line)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    return check_entry(entry, slot_types)


def check_entry(entry, slot_types: Optional[Sequence[str]] = None) -> dict:
    """`entry` if it is a catalogue entry (of one of `slot_types`); ValueError describing the first problem."""
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


def read_pinyin(path: str) -> Dict[str, Tuple[str, ...]]:
    """A pinyin table file: `character<TAB>reading reading ...` per line."""
    table = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            char, tab, readings = line.rstrip("\n").partition("\t")
            if len(char) != 1 or not tab or not readings.split() or not all(r.isascii() and r.isalpha() for r in readings.split()):
                raise CatalogueError(f"{path}:{line_no}: expected a character, a tab and its readings (ASCII letters, space-separated)")
            table[char] = tuple(readings.split())
    return table


def write_pinyin(path: str, table: Dict[str, Tuple[str, ...]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(f"{char}\t{' '.join(readings)}\n" for char, readings in sorted(table.items()))


def write_catalogue(path: str, catalogue: Catalogue) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(entry, ensure_ascii=False) + "\n" for entry in catalogue.entries())
