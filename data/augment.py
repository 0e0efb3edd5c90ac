"""Slot-preserving data augmentation for distillation, after PaddleNLP's ERNIE -> Bi-LSTM recipe."""
import collections
import random
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from data.corpus import Slot, Utterance

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


def augment_corpus(utterances: Sequence[Utterance], copies: int, seed: int, **probabilities) -> List[Tuple[int, Utterance]]:
    """`copies` augmented versions of every utterance (seeded), without blanks and without copies
    identical to their source, each with the index of its source (whose session context it shares)."""
    rng, lexicon = random.Random(seed), augmentation_lexicon(utterances)
    out = []
    for i, utt in enumerate(utterances):
        for _ in range(copies):
            new = augment(utt, lexicon, rng, **probabilities)
            if new.text.strip() and new.text != utt.text:
                out.append((i, new))
    return out

