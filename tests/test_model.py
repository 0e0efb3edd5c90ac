"""JointErnie: architecture, loss, save/load, offline errors, and a tiny training run."""
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import export_format
import task
from conftest import SYNTHETIC_LABELS
import utils
from model import (
    JointErnie,
    JointLoss,
    build_from_scratch,
    load_pretrained,
    padding_mask,
    save_safe,
    segment_ids,
)
from training import pretrained_tokenizer

LABELS = SYNTHETIC_LABELS

TEXTS = ["导航去北京", "播放周杰伦的稻香", "打电话给13812345678", "暂停"]


@pytest.fixture(scope="module")
def tokenizer():
    return task.CharTokenizer.build(TEXTS)


def small_model(tokenizer, labels, **overrides):
    paddle.seed(0)
    return build_from_scratch("ernie-3.0-tiny-nano-v2-zh", task.Task(tokenizer, labels, 16, task.any_slot_types(labels)), **overrides)


def batch(tokenizer, texts=TEXTS):
    return paddle.to_tensor(
        utils.pad_batch(
            [task.Task(tokenizer, LABELS, 32, task.any_slot_types(LABELS)).encode(t).windows[0] for t in texts], tokenizer.pad_id
        )
    )


def test_from_scratch_has_the_published_nano_architecture(tokenizer, labels):
    model = small_model(tokenizer, labels)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (4, 312, 12, 1248)
    assert c.vocab_size == len(tokenizer) and c.pad_token_id == tokenizer.pad_id
    assert model.ernie.embeddings.word_embeddings.weight.shape == [len(tokenizer), 312]
    intent_logits, slot_logits = model(batch(tokenizer))
    assert intent_logits.shape == [4, len(labels.intents)]
    assert slot_logits.shape == [4, 2 + len("打电话给13812345678"), len(labels.slot_tags)]


def test_padding_mask_gives_the_outputs_of_ernies_own_mask(tokenizer, labels):
    ids = batch(tokenizer)
    for pad_id in (tokenizer.pad_id, 5):
        np.testing.assert_array_equal(padding_mask(ids, pad_id).numpy(), (ids.numpy() != pad_id).astype("float32"))
    model = small_model(tokenizer, labels)
    model.eval()
    ours = model(ids)
    # attention_mask None: ERNIE's `input_ids == pad_token_id`; the same segments as JointErnie derives
    sequence, pooled = model.ernie(ids, token_type_ids=segment_ids(ids, tokenizer.sep_id))
    ernies = (model.intent_classifier(pooled), model.slot_classifier(sequence))
    for a, b in zip(ours, ernies):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_segments_are_derived_from_the_first_sep(tokenizer, labels):
    """[CLS] utterance [SEP] context [SEP]: segment 0 through the first [SEP], 1 after (padding
    too, masked anyway). The model derives them itself, so its graph keeps one input."""
    the_task = task.Task(tokenizer, labels, 16, task.any_slot_types(labels), context_turns=1, max_context_tokens=8)
    rows = [the_task.encode("暂停", ["播放周杰伦的稻香"]).windows[0], the_task.encode("导航去北京").windows[0]]
    ids = paddle.to_tensor(utils.pad_batch(rows, tokenizer.pad_id))
    np.testing.assert_array_equal(segment_ids(ids, tokenizer.sep_id).numpy(), [
        [0, 0, 0, 0] + [1] * 8,  # [CLS] 暂 停 [SEP] | 播 放 周 杰 伦 的 稻 [SEP] (cut to 8)
        [0] * 7 + [1] * 5,  # [CLS] 导 航 去 北 京 [SEP] | padding
    ])
    model = small_model(tokenizer, labels)
    assert model.config.sep_token_id == tokenizer.sep_id
    model.eval()
    derived = model(ids)
    explicit = model(ids, token_type_ids=segment_ids(ids, tokenizer.sep_id))
    zeros = model(ids, token_type_ids=paddle.zeros_like(ids))
    np.testing.assert_allclose(derived[0].numpy(), explicit[0].numpy(), atol=1e-6)
    assert np.abs(derived[0].numpy()[0] - zeros[0].numpy()[0]).max() > 1e-4  # the context row reads its segments
    # a row without context has segment 0 on every real token: the same as no segments at all
    np.testing.assert_allclose(derived[1].numpy()[1, :7], zeros[1].numpy()[1, :7], atol=1e-5)


def test_unknown_architecture_lists_the_tiny_sizes(tokenizer, labels):
    with pytest.raises(ValueError, match="ernie-3.0-tiny-nano-v2-zh"):
        build_from_scratch("ernie-9-huge", task.Task(tokenizer, labels, 16, task.any_slot_types(labels)))


def test_loss_is_intent_ce_plus_slot_ce_over_real_tokens(labels):
    paddle.seed(1)
    intent_logits, slot_logits = paddle.randn([2, 11]), paddle.randn([2, 5, 32])
    intent_label = paddle.to_tensor([3, 7])
    pad = labels.pad_slot_id
    slot_labels = paddle.to_tensor([[pad, 1, 4, 5, pad], [pad, 1, pad, pad, pad]])
    loss = JointLoss(pad, slot_weight=0.5)((intent_logits, slot_logits), (intent_label, slot_labels))
    logp_i, logp_s = F.log_softmax(intent_logits, -1).numpy(), F.log_softmax(slot_logits, -1).numpy()
    intent_ce = -(logp_i[0, 3] + logp_i[1, 7]) / 2
    slot_ce = -(logp_s[0, 1, 1] + logp_s[0, 2, 4] + logp_s[0, 3, 5] + logp_s[1, 1, 1]) / 4
    assert float(loss) == pytest.approx(intent_ce + 0.5 * slot_ce, rel=1e-5)
    # logits at PAD positions do not matter
    changed = slot_logits.numpy()
    changed[:, 0] += 100.0
    changed[1, 2:] -= 50.0
    loss2 = JointLoss(pad, slot_weight=0.5)((intent_logits, paddle.to_tensor(changed)), (intent_label, slot_labels))
    assert float(loss2) == pytest.approx(float(loss), rel=1e-5)


def test_intent_label_smoothing_spreads_the_target(labels):
    """ε = 0.1 over 3 intents: target 0.9 + 0.1/3 on the gold intent, 0.1/3 on the others, by hand."""
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype="float32")
    slot_labels = paddle.full([2, 3], labels.pad_slot_id, dtype="int64")  # no real token: the intent alone
    loss = JointLoss(labels.pad_slot_id, intent_label_smoothing=0.1)(
        (paddle.to_tensor(logits), paddle.zeros([2, 3, 5])), (paddle.to_tensor([0, 2]), slot_labels))
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    target = np.eye(3)[[0, 2]] * 0.9 + 0.1 / 3
    assert float(loss) == pytest.approx(-(target * log_p).sum(1).mean(), rel=1e-5)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def test_an_ensembles_targets_enter_the_loss_as_vanilla_kd(labels):
    """alpha x (intent CE + w x slot CE) + (1 - alpha) x T^2 x (soft intent CE + w x soft slot CE
    over tagged tokens), by hand; the teachers' slot targets on untagged positions do not matter."""
    rng = np.random.RandomState(0)
    pad = labels.pad_slot_id
    intent, slots = rng.randn(2, 4).astype("float32"), rng.randn(2, 3, 5).astype("float32")
    slot_labels = np.array([[pad, 1, 2], [pad, 3, pad]])
    t_intent = softmax(rng.randn(2, 4), axis=-1).astype("float32")
    t_slots = softmax(rng.randn(2, 3, 5), axis=-1).astype("float32")
    loss = JointLoss(pad, slot_weight=0.5, distill_alpha=0.3, temperature=2.0)(
        (paddle.to_tensor(intent), paddle.to_tensor(slots)), (paddle.to_tensor([1, 3]), paddle.to_tensor(slot_labels)),
        ensemble_intent=paddle.to_tensor(t_intent), ensemble_slots=paddle.to_tensor(t_slots))
    log_p = lambda x, t=1.0: np.log(softmax(x / t, axis=-1))
    gold = -(log_p(intent)[0, 1] + log_p(intent)[1, 3]) / 2 - 0.5 * (
        log_p(slots)[0, 1, 1] + log_p(slots)[0, 2, 2] + log_p(slots)[1, 1, 3]) / 3
    soft_slots = -(t_slots * log_p(slots, 2.0)).sum(-1)
    soft = -(t_intent * log_p(intent, 2.0)).sum(-1).mean() + 0.5 * (soft_slots[0, 1] + soft_slots[0, 2] + soft_slots[1, 1]) / 3
    assert float(loss) == pytest.approx(0.3 * gold + 0.7 * 4.0 * soft, rel=1e-5)

    # a row without gold labels (an augmented copy) leaves the gold loss to the other row, not the soft one
    loss = JointLoss(pad, slot_weight=0.5, distill_alpha=0.3, temperature=2.0)(
        (paddle.to_tensor(intent), paddle.to_tensor(slots)), (paddle.to_tensor([1, 3]), paddle.to_tensor(slot_labels)),
        ensemble_intent=paddle.to_tensor(t_intent), ensemble_slots=paddle.to_tensor(t_slots), has_gold=paddle.to_tensor([1.0, 0.0]))
    gold = -log_p(intent)[0, 1] - 0.5 * (log_p(slots)[0, 1, 1] + log_p(slots)[0, 2, 2]) / 2
    assert float(loss) == pytest.approx(0.3 * gold + 0.7 * 4.0 * soft, rel=1e-5)


def test_a_crf_gold_loss_skips_rows_without_gold(labels):
    """With a CRF head, has_gold [1, 0] gives row 0's loss alone, as a batch of that row does."""
    rng = np.random.RandomState(1)
    pad, tags = labels.pad_slot_id, len(labels.slot_tags)
    transitions = paddle.to_tensor(rng.randn(tags, tags).astype("float32"))
    intent, slots = rng.randn(2, 4).astype("float32"), rng.randn(2, 4, tags).astype("float32")
    slot_labels = np.array([[pad, 1, 2, pad], [pad, 3, 4, 5]])
    crf_loss = JointLoss(pad, transitions=transitions)
    both = crf_loss((paddle.to_tensor(intent), paddle.to_tensor(slots)), (paddle.to_tensor([1, 3]), paddle.to_tensor(slot_labels)),
                    has_gold=paddle.to_tensor([1.0, 0.0]))
    alone = crf_loss((paddle.to_tensor(intent[:1]), paddle.to_tensor(slots[:1, :3])),
                     (paddle.to_tensor([1]), paddle.to_tensor(slot_labels[:1, :3])))
    everything = crf_loss((paddle.to_tensor(intent), paddle.to_tensor(slots)), (paddle.to_tensor([1, 3]), paddle.to_tensor(slot_labels)))
    assert float(both) == pytest.approx(float(alone), rel=1e-5) and abs(float(everything) - float(alone)) > 1e-3


def test_save_and_load_round_trip(tmp_path, tokenizer, labels):
    model = small_model(tokenizer, labels)
    model.eval()
    save_safe(model, str(tmp_path))
    export_format.write_vocab(str(tmp_path), tokenizer)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "vocab.txt"]
    loaded = load_pretrained(str(tmp_path), labels)
    loaded.eval()
    assert isinstance(loaded, JointErnie)
    np.testing.assert_array_equal(model(batch(tokenizer))[1].numpy(), loaded(batch(tokenizer))[1].numpy())
    assert pretrained_tokenizer(str(tmp_path)).vocab == tokenizer.vocab


def test_unreachable_model_points_to_from_scratch(tmp_path, labels):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(OSError, match="--from_scratch"):
        load_pretrained(missing, labels)
    with pytest.raises(OSError, match="--from_scratch"):
        pretrained_tokenizer(missing)


def test_a_few_steps_of_training_fit_a_batch(tokenizer, labels):
    model = small_model(tokenizer, labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.train()
    sid = labels.slot_id
    pad = labels.pad_slot_id
    ids = batch(tokenizer)
    tags = [
        ["O", "O", "O", "B-destination", "I-destination"],
        ["O", "O", "B-singer", "I-singer", "I-singer", "O", "B-song", "I-song"],
        ["O"] * 4 + ["B-phone_num"] + ["I-phone_num"] * 10,
        ["O", "O"],
    ]
    slot_labels = paddle.to_tensor(utils.pad_batch([[pad] + [sid[t] for t in row] + [pad] for row in tags], pad))
    intent_label = paddle.to_tensor(
        [labels.intent_id[i] for i in ("navigation.navigation", "music.play", "phone_call.make_a_phone_call", "music.pause")]
    )
    criterion = JointLoss(pad)
    opt = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=model.parameters())
    losses = []
    for _ in range(30):
        loss = criterion(model(ids), (intent_label, slot_labels))
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    intent_logits, slot_logits = model(ids)
    assert intent_logits.argmax(-1).numpy().tolist() == intent_label.numpy().tolist()


def test_loads_a_plain_pretrained_ernie_directory(tmp_path, tokenizer, labels):
    """A local directory as `ErnieModel.save_pretrained` writes it (what a downloaded
    ernie-3.0-tiny-*-zh is): the encoder weights load, the two heads start fresh."""
    from paddlenlp.transformers import ErnieConfig, ErnieModel

    config = ErnieConfig(**{**ErnieConfig.pretrained_init_configuration["ernie-3.0-tiny-nano-v2-zh"], "vocab_size": len(tokenizer)})
    paddle.seed(3)
    encoder = ErnieModel(config)
    encoder.save_pretrained(str(tmp_path))  # pickled, as PaddleNLP's downloads are
    export_format.write_vocab(str(tmp_path), tokenizer)
    model = load_pretrained(str(tmp_path), labels, trust_pickled_weights=True)
    assert model.config.num_intents == len(labels.intents) and model.config.num_slot_tags == len(labels.slot_tags)
    saved = encoder.state_dict()
    for name, value in model.ernie.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), saved[name].numpy())
    assert model.intent_classifier.weight.shape == [312, len(labels.intents)]
    assert pretrained_tokenizer(str(tmp_path)).vocab == tokenizer.vocab


def test_crf_nll_equals_the_enumerated_log_likelihood():
    """-log p(gold path) by enumerating every path of each row's real tokens; rows of different
    lengths, with [CLS] / [SEP] / padding masked out."""
    import itertools

    from model import crf_nll
    rng = np.random.default_rng(0)
    T, S = 4, 6
    emissions = rng.normal(size=(3, S, T)).astype("float32")
    transitions = rng.normal(size=(T, T)).astype("float32")
    lengths = [4, 1, 2]  # real tokens at positions 1..length
    mask = np.zeros((3, S), dtype="float32")
    tags = np.zeros((3, S), dtype="int64")
    for b, n in enumerate(lengths):
        mask[b, 1 : n + 1] = 1
        tags[b, 1 : n + 1] = rng.integers(0, T, size=n)
    got = crf_nll(paddle.to_tensor(emissions), paddle.to_tensor(tags), paddle.to_tensor(mask), paddle.to_tensor(transitions)).numpy()

    def path_score(b, path):
        e = emissions[b, 1 : len(path) + 1]
        return sum(e[i, t] for i, t in enumerate(path)) + sum(transitions[x, y] for x, y in zip(path, path[1:]))

    for b, n in enumerate(lengths):
        log_z = np.log(sum(np.exp(path_score(b, p)) for p in itertools.product(range(T), repeat=n)))
        assert got[b] == pytest.approx(log_z - path_score(b, list(tags[b, 1 : n + 1])), abs=1e-4)


def test_a_saved_model_loaded_with_other_labels_keeps_its_encoder_and_shared_rows(tmp_path, tokenizer, labels, caplog):
    """Fine-tuning onto a changed label set: the encoder as saved, each shared label's classifier
    column and CRF transitions carried over to its new position, new labels fresh, and the
    change logged."""
    model = small_model(tokenizer, labels, slot_crf=True)
    paddle.seed(1)
    model.slot_transitions.set_value(paddle.randn(model.slot_transitions.shape))
    model.eval()
    save_safe(model, str(tmp_path))
    export_format.write_task_files(str(tmp_path), task.Task(tokenizer, labels, 16, task.any_slot_types(labels)))
    dropped_intent, dropped_type = labels.intents[1], labels.slot_types[0]
    new = task.LabelMaps(["climate.ac_on"] + [i for i in reversed(labels.intents) if i != dropped_intent],
                         ["PAD", "O", "B-seat", "I-seat"] + [t for t in labels.slot_tags[2:] if t[2:] != dropped_type])
    with caplog.at_level("INFO", logger="ernie_tiny_slu"):
        loaded = load_pretrained(str(tmp_path), new)
    loaded.eval()
    assert f"added ['climate.ac_on'], removed [{dropped_intent!r}]" in caplog.text
    assert f"added ['B-seat', 'I-seat'], removed ['B-{dropped_type}', 'I-{dropped_type}']" in caplog.text
    for name, value in loaded.ernie.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), model.ernie.state_dict()[name].numpy())
    assert (loaded.config.num_intents, loaded.config.num_slot_tags) == (len(new.intents), len(new.slot_tags))
    old_intent, new_intent = model(batch(tokenizer))[0].numpy(), loaded(batch(tokenizer))[0].numpy()
    for j, intent in enumerate(new.intents):
        if intent in labels.intents:  # same encoder, same column: the same logit
            np.testing.assert_allclose(new_intent[:, j], old_intent[:, labels.intents.index(intent)], rtol=1e-5, atol=1e-5)
    old_t, new_t = model.slot_transitions.numpy(), loaded.slot_transitions.numpy()
    assert new_t.shape == (len(new.slot_tags),) * 2 and not new_t[2].any() and not new_t[:, 3].any()  # B-seat, I-seat fresh
    for a, b in [("O", "B-song"), ("I-singer", "O"), ("B-destination", "I-destination")]:
        if all(t in new.slot_tags for t in (a, b)):
            assert new_t[new.slot_tags.index(a), new.slot_tags.index(b)] == old_t[labels.slot_tags.index(a), labels.slot_tags.index(b)]
    save_safe(loaded, str(tmp_path / "again"))  # the relabelled model saves and loads as any other
    np.testing.assert_array_equal(load_pretrained(str(tmp_path / "again"), new).slot_transitions.numpy(), new_t)
