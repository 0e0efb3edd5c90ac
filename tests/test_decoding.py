"""decoding.py: constrained Viterbi against brute force, the constraints on any input, the CRF
likelihood against enumeration (numpy and the native decoding.cc alike, and the two against each
other), temperature fits, ECE and the selective-prediction curve on hand-computed inputs."""
import itertools

import numpy as np
import pytest

import decoding
import task
from conftest import SYNTHETIC_LABELS
from data.corpus import Slot, Utterance

LABELS = task.LabelMaps(["nav", "music", "other"], ["PAD", "O", "B-dest", "I-dest", "B-song", "I-song", "B-singer", "I-singer"])
TYPES = {"nav": ["dest"], "music": ["singer", "song"], "other": []}
IMPLEMENTATIONS = ["numpy", "native"]


def make_decoder(implementation, *args, **kwargs):
    """A Decoder that runs `implementation`; the native library is built by `make setup`."""
    decoder = decoding.Decoder(*args, native=implementation == "native", **kwargs)
    assert decoder.implementation == implementation, f"{decoding.NATIVE_LIBRARY} is missing: run `make setup`"
    return decoder


def valid(tags, intent):
    """BIO-valid and intent-compatible, spelled out independently of decoding.SlotConstraints."""
    prev = "O"
    for tag in tags:
        if tag == "PAD" or (tag != "O" and tag[2:] not in TYPES[intent]):
            return False
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return False
        prev = tag
    return True


def brute_force(scores, intent, transitions=None):
    best, best_path = -np.inf, None
    for path in itertools.product(range(len(LABELS.slot_tags)), repeat=len(scores)):  # lexicographic: first max wins
        if not valid([LABELS.slot_tags[t] for t in path], intent):
            continue
        total = sum(scores[i, t] for i, t in enumerate(path))
        if transitions is not None:
            total += sum(transitions[a, b] for a, b in zip(path, path[1:]))
        if total > best:
            best, best_path = total, list(path)
    return best_path


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("seed", range(30))
def test_viterbi_finds_the_best_valid_path(seed, implementation):
    rng = np.random.default_rng(seed)
    n, intent = int(rng.integers(1, 5)), ["nav", "music", "other"][seed % 3]
    scores = rng.normal(size=(n, len(LABELS.slot_tags))).round(1)  # rounding makes ties, which must break alike
    transitions = rng.normal(size=(len(LABELS.slot_tags),) * 2) if seed % 2 else None
    decoder = make_decoder(implementation, LABELS, TYPES, transitions=transitions)
    pred = decoder(np.eye(3)[LABELS.intents.index(intent)] * 4, scores)
    assert pred.tag_ids == brute_force(scores, intent, transitions)
    assert valid([LABELS.slot_tags[t] for t in pred.tag_ids], intent)


def test_greedy_fragments_are_repaired():
    """Greedy reads I-singer B-song I-dest under music: an I- with no B-, and a type navigation has."""
    sid = LABELS.slot_id
    scores = np.full((4, len(LABELS.slot_tags)), -2.0)
    for i, (tag, second) in enumerate([("I-singer", "B-singer"), ("I-singer", "O"), ("B-song", "O"), ("I-dest", "I-song")]):
        scores[i, sid[tag]], scores[i, sid[second]] = 3.0, 2.5
    music = np.array([0.0, 5.0, 0.0])
    greedy = decoding.Decoder(LABELS, TYPES, decoder=decoding.GREEDY)(music, scores)
    assert [LABELS.slot_tags[t] for t in greedy.tag_ids] == ["I-singer", "I-singer", "B-song", "I-dest"]
    constrained = decoding.Decoder(LABELS, TYPES)(music, scores)
    assert [LABELS.slot_tags[t] for t in constrained.tag_ids] == ["B-singer", "I-singer", "B-song", "I-song"]
    assert constrained.spans == [("singer", 0, 2), ("song", 2, 4)]
    # under an intent without slots nothing is tagged, whatever the scores
    other = decoding.Decoder(LABELS, TYPES)(np.array([0.0, 0.0, 5.0]), scores)
    assert other.spans == [] and other.span_confidences == []


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("seed", range(12))
def test_span_confidence_is_the_exact_span_marginal_over_valid_paths(seed, implementation):
    """P(the span's tags, then no continuation of it), summed over every valid path by enumeration,
    with exp(scores / T + transitions) as the path weight."""
    rng = np.random.default_rng(seed)
    n, T = int(rng.integers(1, 5)), 0.7
    intent = "music" if seed % 2 else "nav"
    scores = rng.normal(scale=2.0, size=(n, len(LABELS.slot_tags))).astype("float32")  # logits are float32
    transitions = rng.normal(size=(len(LABELS.slot_tags),) * 2) if seed % 3 == 0 else None
    decoder = make_decoder(implementation, LABELS, TYPES, decoding.Calibration(slot_temperature=T), transitions=transitions)
    pred = decoder(np.eye(3)[LABELS.intents.index(intent)] * 3, scores)
    weights = {}
    for path in itertools.product(range(len(LABELS.slot_tags)), repeat=n):
        if valid([LABELS.slot_tags[t] for t in path], intent):
            w = sum(scores[i, t] for i, t in enumerate(path)) / T
            if transitions is not None:
                w += sum(transitions[a, b] for a, b in zip(path, path[1:]))
            weights[path] = np.exp(w)
    total = sum(weights.values())
    expected = []
    for kind, s, e in pred.spans:
        tags = [LABELS.slot_tags[t] for t in pred.tag_ids]
        expected.append(sum(w for path, w in weights.items()
                            if [LABELS.slot_tags[t] for t in path[s:e]] == tags[s:e]
                            and (e == n or LABELS.slot_tags[path[e]] != "I-" + kind)) / total)
    assert pred.span_confidences == pytest.approx(expected, rel=1e-9)
    assert pred.answer_score == pytest.approx(min([pred.confidence] + expected))


@pytest.mark.parametrize("crf", [False, True])
def test_native_decoding_gives_the_numpy_paths_and_confidences(crf):
    """The project's own label set, utterances of 1 to 60 tokens, logits on a coarse grid (ties),
    every intent: the same tags (ties broken alike), spans and confidences as numpy, at the
    calibrated temperature and at the ones the span fit tries. (Near 0 they may differ by 1e-31:
    numpy takes the continuation out of a sum by subtraction, C++ leaves it out of the sum.)"""
    labels = SYNTHETIC_LABELS
    rng = np.random.default_rng(7)
    types = {intent: sorted({tag[2:] for tag in labels.slot_tags if tag[:2] == "B-"})[k % 5::3] for k, intent in enumerate(labels.intents)}
    transitions = rng.normal(size=(len(labels.slot_tags),) * 2) if crf else None
    cal = decoding.Calibration(intent_temperature=1.3, slot_temperature=0.8)
    numpy_decoder, native = (make_decoder(i, labels, types, cal, transitions=transitions) for i in IMPLEMENTATIONS)
    spans = 0
    for k in range(300):
        n = int(rng.integers(1, 61))
        intent_logits = np.eye(len(labels.intents))[k % len(labels.intents)] * 3
        slot_logits = (rng.normal(scale=3.0, size=(n, len(labels.slot_tags))) * 2).round() / 2  # float64 in: cast as numpy casts it
        a, b = numpy_decoder(intent_logits, slot_logits), native(intent_logits, slot_logits)
        assert a.tag_ids == b.tag_ids and a.spans == b.spans
        assert b.span_confidences == pytest.approx(a.span_confidences, rel=1e-12, abs=1e-15)
        for t in (0.05, 3.0):
            assert native.span_confidences(slot_logits, b.tag_ids, b.spans, b.intent_id, t) == pytest.approx(
                numpy_decoder.span_confidences(slot_logits, a.tag_ids, a.spans, a.intent_id, t), rel=1e-12, abs=1e-15)
        spans += len(a.spans)
    assert spans > 300  # the lattices produced spans to compare


def test_greedy_and_unbuilt_library_decode_in_numpy(monkeypatch):
    assert decoding.Decoder(LABELS, TYPES, decoder=decoding.GREEDY).implementation == "numpy"
    monkeypatch.setattr(decoding, "NATIVE_LIBRARY", "/nonexistent/libslu_decoding.so")
    decoding.native_library.cache_clear()
    try:
        assert decoding.Decoder(LABELS, TYPES).implementation == "numpy"
    finally:
        decoding.native_library.cache_clear()


def test_tags_outside_the_intent_take_no_probability_and_temperatures_apply():
    sid = LABELS.slot_id
    scores = np.zeros((2, len(LABELS.slot_tags)))
    scores[0, sid["B-dest"]] = scores[1, sid["I-dest"]] = 2.0
    scores[:, sid["B-song"]] = 10.0  # not allowed under nav: must not take probability away
    cal = decoding.Calibration(intent_temperature=2.0, slot_temperature=0.5)
    pred = decoding.Decoder(LABELS, TYPES, cal)(np.array([2.0, 0.0, 0.0]), scores)
    # under nav the valid paths of 2 tokens over O, B-dest, I-dest: O O, O B, B O, B I, B B (weights e^(sum/T))
    w = lambda *s: np.exp(sum(s) / 0.5)
    total = w(0, 0) + w(0, 0) + w(2, 0) + w(2, 2) + w(2, 0)
    assert pred.spans == [("dest", 0, 2)] and pred.span_confidences == pytest.approx([w(2, 2) / total])
    assert pred.confidence == pytest.approx(np.exp(1.0) / (np.exp(1.0) + 2))


def test_intent_temperature_fit_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(20000, 5))
    probs = decoding.softmax64(logits, 2.5)
    gold = np.array([rng.choice(5, p=p) for p in probs])
    assert decoding.fit_intent_temperature(logits, gold) == pytest.approx(2.5, rel=0.05)


def test_span_temperature_fit_and_span_outcomes():
    """Spans whose correctness follows their confidence at T = 2: the fit finds about 2."""
    rng = np.random.default_rng(1)
    preds, utts = [], []
    decoder = decoding.Decoder(LABELS, TYPES)
    for i in range(3000):
        scores = rng.normal(scale=3.0, size=(1, len(LABELS.slot_tags)))
        scores[0, LABELS.slot_id["B-dest"]] = 3.0 + rng.normal()
        pred = decoder(np.array([5.0, 0, 0]), scores)
        if not pred.spans:
            continue
        p_true = decoder.span_confidences(scores, pred.tag_ids, pred.spans, 0, 2.0)[0]
        gold = (Slot("dest", 0, 1, "x"),) if rng.random() < p_true else ()
        preds.append(pred)
        utts.append(Utterance("s", "x", "nav", gold))
    spans = decoding.SpanOutcomes(decoder, preds, utts)
    assert len(spans.correct) == len(preds)
    assert spans.confidences(1.0) == pytest.approx([p.span_confidences[0] for p in preds])
    assert decoder.fit(preds, utts, "test").slot_temperature == pytest.approx(2.0, rel=0.1)


def test_expected_calibration_error_by_hand():
    # bin [0.6, 0.667): confidences 0.6, 0.6 with 1 of 2 right; bin [0.933, 1]: 0.95 x 2, both right
    conf, correct = [0.6, 0.6, 0.95, 0.95], [1, 0, 1, 1]
    assert decoding.expected_calibration_error(conf, correct) == pytest.approx(0.5 * 0.1 + 0.5 * 0.05)
    assert decoding.expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0  # edges fall in the end bins
    bins = decoding.reliability_bins(conf, correct)
    assert len(bins) == 15 and bins[9]["count"] == 2 and bins[9]["accuracy"] == 0.5 and bins[14]["confidence"] == 0.95


def test_coverage_curve_and_threshold():
    score, correct = [0.9, 0.8, 0.8, 0.5, 0.3], [1, 1, 0, 1, 0]
    curve = decoding.coverage_curve(score, correct)
    assert curve == [{"threshold": 0.9, "coverage": 0.2, "accuracy": 1.0},
                     {"threshold": 0.8, "coverage": 0.6, "accuracy": pytest.approx(2 / 3)},
                     {"threshold": 0.5, "coverage": 0.8, "accuracy": 0.75},
                     {"threshold": 0.3, "coverage": 1.0, "accuracy": 0.6}]
    assert decoding.threshold_for_accuracy(curve, 0.7)["threshold"] == 0.5
    assert decoding.threshold_for_accuracy(curve, 1.01) is None


def test_transitions_must_fit_the_labels():
    with pytest.raises(ValueError, match="square"):
        decoding.Decoder(LABELS, TYPES, transitions=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="unknown decoder"):
        decoding.Decoder(LABELS, TYPES, decoder="beam")
