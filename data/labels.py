"""The label set of a corpus, derived from its training split (docs/data.md#labels).

Intents are ordered by how often train has them (most first, then by name); slot types follow the
intents that carry them, each intent's most frequent first, then by name. The order fixes the
class ids and so a from-scratch model's initialisation: the same data gives the same labels on
every machine. prepare_data.py writes the two files beside the splits; run_train.py reads them."""
import collections
import os
from typing import Dict, List, Optional, Sequence

from data.corpus import Utterance, check_prepared
from export_format import INTENT_LABEL_FILE, SLOT_LABEL_FILE, label_files
from task import OUTSIDE_LABEL, PAD_LABEL, LabelMaps


def derive_labels(train: Sequence[Utterance]) -> LabelMaps:
    """The label set of a training split: its intents and slot types in the documented order."""
    intent_count = collections.Counter(u.intent for u in train)
    slot_count = collections.Counter(slot.type for u in train for slot in u.slots)
    intents = sorted(intent_count, key=lambda i: (-intent_count[i], i))
    carried = collections.defaultdict(set)
    for u in train:
        carried[u.intent].update(slot.type for slot in u.slots)
    slot_types: List[str] = []
    for intent in intents:
        slot_types += sorted(carried[intent] - set(slot_types), key=lambda t: (-slot_count[t], t))
    return LabelMaps(intents, [PAD_LABEL, OUTSIDE_LABEL] + [f"{bio}-{t}" for t in slot_types for bio in "BI"])


def unseen_labels(utterances: Sequence[Utterance], labels: LabelMaps) -> Dict[str, Dict[str, int]]:
    """Intents and slot types of `utterances` that `labels` lacks, with how many utterances carry them."""
    intents, slot_types = set(labels.intents), set(labels.slot_types)
    unseen = {"intents": collections.Counter(), "slot_types": collections.Counter()}
    for u in utterances:
        if u.intent not in intents:
            unseen["intents"][u.intent] += 1
        unseen["slot_types"].update({slot.type for slot in u.slots} - slot_types)
    return {kind: dict(sorted(counter.items())) for kind, counter in unseen.items()}


def with_unseen(labels: LabelMaps, unseen: Dict[str, Dict[str, int]]) -> LabelMaps:
    """`labels` with unseen intents and slot types appended (sorted): a model can then be scored
    on them, though it never learns to predict them."""
    return LabelMaps(labels.intents + sorted(unseen["intents"]),
                     labels.slot_tags + [f"{bio}-{t}" for t in sorted(unseen["slot_types"]) for bio in "BI"])


def read_data_labels(data_dir: str) -> Optional[LabelMaps]:
    """The label files prepare_data.py wrote beside the splits (checked against its stats.json),
    or None when the directory has none (splits made by hand: derive_labels of train then)."""
    if not any(os.path.isfile(p) for p in label_files(data_dir)):
        return None
    return LabelMaps.from_files(*(check_prepared(data_dir, name) for name in (INTENT_LABEL_FILE, SLOT_LABEL_FILE)))
