"""Slot-preserving augmentation (data/augment.py): every tag stays aligned, draws are seeded."""
import os
import random

import utils
from data import augment
from data.corpus import Utterance


def check_aligned(aug: Utterance, source: Utterance, lexicon):
    tags = aug.char_tags()
    assert len(tags) == len(aug.text) and aug.text.strip()
    for i, tag in enumerate(tags):  # BIO well formed
        if tag.startswith("I-"):
            assert tags[i - 1] in ("B-" + tag[2:], tag)
    kept, types = [s.type for s in aug.slots], [s.type for s in source.slots]  # n-gram sampling keeps a run of slots
    assert any(types[i : i + len(kept)] == kept for i in range(len(types) - len(kept) + 1))
    for slot in aug.slots:
        span = aug.text[slot.start : slot.end]
        originals = [source.text[s.start : s.end] for s in source.slots if s.type == slot.type]
        assert span in originals or span == augment.MASK_CHAR * len(span) or span in lexicon["slot:" + slot.type]
        assert tags[slot.start] == "B-" + slot.type and all(t == "I-" + slot.type for t in tags[slot.start + 1 : slot.end])


def test_augmentation_keeps_every_tag_aligned(synthetic_splits, request):
    sources = synthetic_splits["train"]
    if os.path.isfile(os.path.join(utils.PROJECT_DIR, "..", "shared", "data", "nlpcc2018", "corpus.train.txt")):
        sources = sources + request.getfixturevalue("corpus")[:3000]
    lexicon = augment.augmentation_lexicon(sources)
    rng, changed = random.Random(0), 0
    for seed_round in range(3):
        for utt in sources:
            aug = augment.augment(utt, lexicon, rng, p_mask=0.2, p_substitute=0.3, p_ngram=0.4)
            if aug.text.strip():
                check_aligned(aug, utt, lexicon)
            changed += aug.text != utt.text
    assert changed > len(sources)  # the operations do fire


def test_augmentation_is_deterministic_under_a_seed(synthetic_splits):
    train = synthetic_splits["train"][:300]
    first, again, other = (augment.augment_corpus(train, 2, seed) for seed in (1, 1, 2))
    assert first == again and first != other
    assert all(a.text.strip() and a.intent == train[i].intent and a.session_id == train[i].session_id for i, a in first)
    assert [i for i, _ in first] == sorted(i for i, _ in first)
