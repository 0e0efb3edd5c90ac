"""run_pretrain.py: the masking, the batches, and a pretrained directory that run_train.py fine-tunes
with its encoder loaded (docs/model-and-context.md, "Toward 86")."""
import os

import numpy as np
import safetensors.numpy

import export_format
import run_pretrain
import utils
from run_pretrain import IGNORE, make_mlm_collator, mask_tokens
from task import SPECIAL_TOKENS, CharTokenizer

TOKENIZER = CharTokenizer(SPECIAL_TOKENS + list("导航去北京打电话给"))


def test_masking_predicts_a_share_of_the_real_tokens_and_never_the_special_ones():
    tok = TOKENIZER
    row = [tok.cls_id] + tok.tokenize("导航去北京")[0] + [tok.sep_id] + tok.tokenize("打电话")[0] + [tok.sep_id]
    rng = np.random.RandomState(0)
    chosen = kept = unk = randomised = 0
    for _ in range(4000):
        masked, labels = mask_tokens(row, tok, 0.15, rng)
        at = np.flatnonzero(labels != IGNORE)
        assert len(at) >= 1 and not set(at) & {0, 6, 10}  # [CLS] and both [SEP]s are never predicted
        np.testing.assert_array_equal(labels[at], np.asarray(row)[at])
        untouched = np.setdiff1d(np.arange(len(row)), at)
        np.testing.assert_array_equal(masked[untouched], np.asarray(row)[untouched])
        chosen += len(at)
        unk += int((masked[at] == tok.unk_id).sum())
        kept += int((masked[at] == np.asarray(row)[at]).sum())
        randomised += int(((masked[at] != tok.unk_id) & (masked[at] != np.asarray(row)[at])).sum())
        assert (masked[at] >= len(SPECIAL_TOKENS)).sum() + (masked[at] == tok.unk_id).sum() == len(at)
    # 8 real tokens a row, 15 % each, and one more in the rows that drew none (0.85^8 of them)
    assert abs(chosen / (4000 * 8) - (0.15 + 0.85 ** 8 / 8)) < 0.005
    assert abs(unk / chosen - 0.8) < 0.03
    # a random character can be the original one (1 in 9 here), so "kept" is a little over 10 %
    assert abs(kept / chosen - 0.1 - 0.1 / 9) < 0.03 and abs(randomised / chosen - 0.1 * 8 / 9) < 0.03


def test_a_row_draws_at_least_one_token_and_a_row_of_special_tokens_none():
    tok = TOKENIZER
    masked, labels = mask_tokens([tok.cls_id, 7, tok.sep_id], tok, 1e-9, np.random.RandomState(1))
    assert labels.tolist() == [IGNORE, 7, IGNORE]
    masked, labels = mask_tokens([tok.cls_id, tok.sep_id], tok, 0.5, np.random.RandomState(1))
    assert masked.tolist() == [tok.cls_id, tok.sep_id] and labels.tolist() == [IGNORE, IGNORE]


def test_batches_give_segments_and_flat_positions_of_the_predicted_tokens():
    tok = TOKENIZER
    a = [tok.cls_id] + tok.tokenize("导航去")[0] + [tok.sep_id] + tok.tokenize("打电")[0] + [tok.sep_id]
    b = [tok.cls_id] + tok.tokenize("北京")[0] + [tok.sep_id]
    dev = {"input_ids": np.array(b), "labels": np.array([IGNORE, b[1], IGNORE, IGNORE])}
    batch = make_mlm_collator(tok, 0.5, seed=3)([{"input_ids": a}, dev])
    width = len(a)
    assert batch["input_ids"].shape == (2, width) and batch["input_ids"][1, len(b):].tolist() == [tok.pad_id] * (width - len(b))
    # segment 1 after the first [SEP] (padding too: it is masked)
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]]
    positions = batch["masked_positions"]
    flat = np.concatenate([a, b + [tok.pad_id] * (width - len(b))])
    np.testing.assert_array_equal(batch["labels"], flat[positions])
    assert width + 1 in positions.tolist()  # the dev row's own mask, kept as given
    assert [p for p in positions if p >= width] == [width + 1]
    assert all(0 < p < 4 or 5 < p < 7 for p in positions if p < width)  # a's real tokens only
    again = make_mlm_collator(tok, 0.5, seed=3)([{"input_ids": a}, dev])
    np.testing.assert_array_equal(again["masked_positions"], positions)  # seeded: a run repeats


def test_the_pretrained_directory_is_fine_tuned_with_its_encoder(tmp_path, synthetic_dir, labels):
    import run_train
    from data.corpus import read_split
    from model import load_pretrained

    out = str(tmp_path / "mlm")
    run_pretrain.main(["--data_dir", synthetic_dir, "--output_dir", out, "--context_turns", "1", "--max_steps", "3",
                       "--evaluation_strategy", "no", "--disable_tqdm", "true", "--cpu_threads", "1"])
    assert not os.path.exists(os.path.join(out, "pretrained.partial"))
    results = utils.load_json(os.path.join(out, "pretrain_results.json"))
    assert results["context_turns"] == 1 and np.isfinite(results["dev_mlm_loss"]) and results["dev_rows"] > 0
    train = read_split(synthetic_dir, "train")
    assert CharTokenizer.from_file(os.path.join(out, "vocab.txt")).vocab == CharTokenizer.build(u.text for u in train).vocab
    saved = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
    model = load_pretrained(out, labels)
    encoder = {f"ernie.{k}": v.numpy() for k, v in model.ernie.state_dict().items()}
    assert encoder and all(name in saved for name in encoder)
    for name, value in encoder.items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)

    tuned = str(tmp_path / "tuned")
    run_train.main(["--model_name_or_path", out, "--data_dir", synthetic_dir, "--output_dir", tuned, "--slot_crf", "--do_train",
                    "--do_export", "--max_steps", "2", "--evaluation_strategy", "no", "--save_strategy", "no",
                    "--load_best_model_at_end", "false", "--disable_tqdm", "true", "--cpu_threads", "1"])
    exported = export_format.read(os.path.join(tuned, "infer_model"))
    assert exported.config["context_turns"] == 1  # the pretrained rows' context, from its config.json
    assert exported.task.tokenizer.vocab == CharTokenizer.from_file(os.path.join(out, "vocab.txt")).vocab
