"""The deterministic session split and what is derived from the training split."""
import collections
import hashlib
from typing import Dict, Iterable, List, Sequence, Tuple

from data.corpus import Utterance


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


def intent_slot_types(utterances: Iterable[Utterance], intents: Sequence[str]) -> Dict[str, List[str]]:
    """The slot types each intent carries in `utterances`, for every intent label (an intent never
    seen carries none): the constraint table of decoding.SlotConstraints. Intents with none are
    the ones the reference-compatible metric scores on intent alone."""
    table = {intent: set() for intent in intents}
    for utt in utterances:
        table.setdefault(utt.intent, set()).update(slot.type for slot in utt.slots)
    return {intent: sorted(types) for intent, types in table.items()}


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

