"""The export contract: what an exported model directory holds, written by `write` and read and
validated by `read`. Every front end (run_eval.py, the FastDeploy demo, the benchmark, the C++
demo and the Android app through deploy/cpp/slu.cc) reads directories through this contract;
slu.cc checks the same keys and `tests/test_deploy_cpp.py` holds the two sides together.

A directory (format_version 5):

    model.pdmodel, model.pdiparams   the static graph and its weights (Paddle 2.x program); every
                                     floating-point weight finite
    vocab.txt                        one token per line, the line number is the id
    intent_label.txt, slot_label.txt one label per line, the line number is the class id
    catalogue.jsonl                  slot values (values.py): per slot type, canonical values with
                                     their synonyms and the rules, one JSON object per line;
                                     derived from the training split (and the user's catalogue)
    pinyin.txt                       `character<TAB>readings` (toneless, most common first) of every
                                     CJK ideograph: what pronunciation matching compares
    inference_config.json            the keys below (strict JSON: no NaN or Infinity, no BOM)
    manifest.json                    {"format_version", "files": {name: {"bytes", "sha256"}}} of
                                     every other file, written last: which labels, vocabulary,
                                     graph and weights belong together. A reader refuses a file
                                     that differs from it (cut, flipped, swapped) by name, after
                                     the checks that say more precisely what is wrong

inference_config.json:

    format_version        5; a reader refuses a version it does not know (1 had no
                          intent_slot_types and no calibration, 2 no context and no overlapping
                          windows, 3 no manifest, 4 no catalogue)
    max_seq_length        tokens per model window of the utterance, [CLS] and [SEP] included (>= 3);
                          longer utterances are cut into windows overlapping by half (task.window_bounds)
    context_turns         earlier utterances of the session the model reads (0: none)
    max_context_tokens    tokens of the context segment after the utterance's [SEP] (0 without
                          context): the last context_turns utterances, nearest first, each
                          followed by [SEP], cut from the far end (task.Task.context_ids). A row
                          is [CLS] window [SEP] context; the graph derives the segment ids
                          (0 up to the first [SEP], 1 after) from input_ids itself
    max_utterance_tokens  longest utterance (in tokens) a front end predicts; longer ones get an
                          error record, never a truncated guess
    vocab_size            lines of vocab.txt
    special_tokens        {"pad", "cls", "sep", "unk"}: the tokens the windows are built from
    num_intents           lines of intent_label.txt = width of the intent logits
    num_slot_tags         lines of slot_label.txt = width of the slot logits
    intent_slot_types     {intent: [slot types seen with it in training]} for every intent: the
                          slot types constrained decoding allows (decoding.py); intents with none
                          are scored on intent alone by the reference-compatible metric
    slot_transitions      null, or the [num_slot_tags x num_slot_tags] transition scores (previous,
                          current) of a CRF slot head, added to the slot logits in decoding
    calibration           {"intent_temperature", "slot_temperature" (finite, > 0), "fitted_on"}:
                          the temperatures of the confidences (decoding.Calibration), fitted on
                          dev inside the export's atomic write; fitted_on null means not fitted
                          (both 1.0: the export had no dev split)
    inputs                [{"name": "input_ids", "dtype": "int64", "shape": [-1, -1]}]
                          (batch of windows x tokens, padded with the pad token)
    outputs               [{"role": "intent_logits", "name", "dtype": "float32", "shape": [-1, num_intents]},
                           {"role": "slot_logits", "name", "dtype": "float32", "shape": [-1, -1, num_slot_tags]}]
                          in the graph's fetch order
    onednn_int8           Paddle Inference should run the graph on oneDNN's int8 kernels (QAT stages)
    model                 what produced the graph ({"architecture", "from_scratch", "stage", ...}), informative
"""
import dataclasses
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import paddle_format
from decoding import Calibration
from task import (
    CLS_TOKEN,
    PAD_TOKEN,
    SEP_TOKEN,
    UNK_TOKEN,
    CharTokenizer,
    LabelMaps,
    Task,
)
from utils import atomic_path, file_sha256, load_json, save_json, write_lines
from values import Catalogue, CatalogueError, read_catalogue, read_pinyin, write_catalogue, write_pinyin

FORMAT_VERSION = 5
GRAPH_PREFIX = "model"  # the path prefix Paddle saves a static graph at
GRAPH_FILE, PARAMS_FILE = GRAPH_PREFIX + ".pdmodel", GRAPH_PREFIX + ".pdiparams"
VOCAB_FILE, INTENT_LABEL_FILE, SLOT_LABEL_FILE = "vocab.txt", "intent_label.txt", "slot_label.txt"
CATALOGUE_FILE, PINYIN_FILE = "catalogue.jsonl", "pinyin.txt"
CONFIG_FILE, MANIFEST_FILE = "inference_config.json", "manifest.json"
FILES = [GRAPH_FILE, PARAMS_FILE, VOCAB_FILE, INTENT_LABEL_FILE, SLOT_LABEL_FILE, CATALOGUE_FILE, PINYIN_FILE, CONFIG_FILE,
         MANIFEST_FILE]
SPECIAL_TOKENS = {"pad": PAD_TOKEN, "cls": CLS_TOKEN, "sep": SEP_TOKEN, "unk": UNK_TOKEN}
INPUT_NAME = "input_ids"
OUTPUT_ROLES = ["intent_logits", "slot_logits"]
MAX_UTTERANCE_TOKENS = 512
REQUIRED_KEYS = ["format_version", "max_seq_length", "context_turns", "max_context_tokens", "max_utterance_tokens", "vocab_size",
                 "special_tokens", "num_intents", "num_slot_tags", "intent_slot_types", "slot_transitions", "calibration", "inputs",
                 "outputs", "onednn_int8", "model"]

# (input names, output names) of a graph written at a path prefix
GraphWriter = Callable[[str], Tuple[List[str], List[str]]]


class ExportError(ValueError):
    """An exported directory that breaks the contract; the message names the file and the problem."""


@dataclasses.dataclass
class ExportedModel:
    directory: str
    config: dict
    task: Task

    @property
    def slot_transitions(self) -> Optional[np.ndarray]:
        t = self.config["slot_transitions"]
        return None if t is None else np.array(t, dtype="float64")

    @property
    def calibration(self) -> Calibration:
        return Calibration(**self.config["calibration"])

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


def write_vocab(directory: str, tokenizer: CharTokenizer) -> None:
    write_lines(os.path.join(directory, VOCAB_FILE), tokenizer.vocab)


def label_files(directory: str) -> List[str]:
    """The paths of a directory's intent and slot label files (an export, a training output, prepared data)."""
    return [os.path.join(directory, INTENT_LABEL_FILE), os.path.join(directory, SLOT_LABEL_FILE)]


def write_labels(directory: str, labels: LabelMaps) -> List[str]:
    """The two label files, each written whole or not at all; returns their paths."""
    paths = label_files(directory)
    write_lines(paths[0], labels.intents)
    write_lines(paths[1], labels.slot_tags)
    return paths


def write_task_files(directory: str, task: Task) -> None:
    """vocab.txt, the label files and the catalogue (also beside training checkpoints, so an
    output directory can be exported or compressed later)."""
    tokenizer, labels = task.tokenizer, task.labels
    os.makedirs(directory, exist_ok=True)
    write_vocab(directory, tokenizer)
    write_labels(directory, labels)
    catalogue = task.catalogue if task.catalogue is not None else Catalogue()
    write_catalogue(os.path.join(directory, CATALOGUE_FILE), catalogue)
    write_pinyin(os.path.join(directory, PINYIN_FILE), catalogue.pinyin)


def is_export(directory: str) -> bool:
    """What an export may replace: an earlier export (broken or not) or an empty directory, never
    a directory that holds something else (a mistyped --output_dir)."""
    return os.path.isfile(os.path.join(directory, CONFIG_FILE)) or not os.listdir(directory)


def write(directory: str, task: Task, write_graph: GraphWriter, model_info: dict, onednn_int8: bool = False,
          slot_transitions: Optional[List[List[float]]] = None,
          calibrate: Optional[Callable[[str], Calibration]] = None) -> ExportedModel:
    """Write a complete exported directory: the graph (by `write_graph`, at the GRAPH_PREFIX
    path), the task files, inference_config.json (with a CRF's `slot_transitions`) and the
    manifest. `calibrate(directory)` fits the confidences' temperatures on the export as written
    (without it: temperatures 1, not fitted). Everything is built beside `directory`, validated,
    and renamed into place, replacing an earlier export: readers never see half of it, nor an
    uncalibrated one."""
    with atomic_path(directory, replaces=is_export) as tmp:
        os.makedirs(tmp)
        input_names, output_names = write_graph(os.path.join(tmp, GRAPH_PREFIX))
        if input_names != [INPUT_NAME] or len(output_names) != len(OUTPUT_ROLES):
            raise ExportError(f"{directory}: the graph takes {input_names} and returns {len(output_names)} outputs; "
                              f"the contract wants [{INPUT_NAME!r}] and {OUTPUT_ROLES}")
        write_task_files(tmp, task)
        n_intents, n_tags = len(task.labels.intents), len(task.labels.slot_tags)
        config = {
            "format_version": FORMAT_VERSION,
            "max_seq_length": task.max_seq_length,
            "context_turns": task.context_turns,
            "max_context_tokens": task.max_context_tokens,
            "max_utterance_tokens": MAX_UTTERANCE_TOKENS,
            "vocab_size": len(task.tokenizer),
            "special_tokens": SPECIAL_TOKENS,
            "num_intents": n_intents,
            "num_slot_tags": n_tags,
            "intent_slot_types": task.intent_slot_types,
            "slot_transitions": slot_transitions,
            "calibration": Calibration().as_dict(),
            "inputs": [{"name": INPUT_NAME, "dtype": "int64", "shape": [-1, -1]}],
            "outputs": [{"role": role, "name": name, "dtype": "float32", "shape": shape}
                        for role, name, shape in zip(OUTPUT_ROLES, output_names, ([-1, n_intents], [-1, -1, n_tags]))],
            "onednn_int8": onednn_int8,
            "model": model_info,
        }
        save_json(os.path.join(tmp, CONFIG_FILE), config)
        write_manifest(tmp)  # calibration opens the directory through this contract, manifest included
        if calibrate is not None:  # through a runtime, on the directory as it will go live
            save_json(os.path.join(tmp, CONFIG_FILE), {**config, "calibration": calibrate(tmp).as_dict()})
            write_manifest(tmp)
        exported = read(tmp)  # validated before it goes live
    return dataclasses.replace(exported, directory=directory)


def write_manifest(directory: str, names: Sequence[str] = ()) -> None:
    """manifest.json over `names` (default: every file of the contract but the manifest)."""
    names = sorted(names or [f for f in FILES if f != MANIFEST_FILE])
    save_json(os.path.join(directory, MANIFEST_FILE), {"format_version": FORMAT_VERSION, "files": {
        name: {"bytes": os.path.getsize(os.path.join(directory, name)), "sha256": file_sha256(os.path.join(directory, name))}
        for name in names}})


def recorded_files(directory: str) -> Dict[str, Tuple[int, str]]:
    """manifest.json's (bytes, sha256) per file name; ExportError if it is not a manifest."""
    path = os.path.join(directory, MANIFEST_FILE)
    try:
        files = load_json(path, strict=True)["files"]
        return {name: (int(files[name]["bytes"]), str(files[name]["sha256"])) for name in files}
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{path}: not a manifest ({type(e).__name__}: {e}); re-export the model") from None


def check_manifest(directory: str, names: Sequence[str] = ()) -> None:
    """Every file of `names` (default: the contract's) as manifest.json recorded it; raises
    ExportError naming the first file that differs."""
    names = sorted(names or [f for f in FILES if f != MANIFEST_FILE])
    path = os.path.join(directory, MANIFEST_FILE)
    recorded = recorded_files(directory)
    if sorted(recorded) != names:
        raise ExportError(f"{path}: lists {sorted(recorded)}; the directory's files are {names}")
    for name in names:
        size = os.path.getsize(os.path.join(directory, name))
        if size != recorded[name][0]:
            raise ExportError(f"{os.path.join(directory, name)}: {size} bytes, {MANIFEST_FILE} says {recorded[name][0]}: "
                              "the file was cut, extended or replaced after export")
        if file_sha256(os.path.join(directory, name)) != recorded[name][1]:
            raise ExportError(f"{os.path.join(directory, name)}: its content differs from {MANIFEST_FILE} (sha256): the file "
                              "was changed or replaced after export (damaged, or taken from another model)")


def read(directory: str) -> ExportedModel:
    """Read an exported directory and check every file against inference_config.json; raises
    ExportError naming the file and the problem."""
    if not os.path.isdir(directory):
        raise ExportError(f"{directory}: not a directory")
    missing = [name for name in FILES if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise ExportError(f"{directory}: missing {', '.join(missing)} (an exported directory holds {', '.join(FILES)})")
    config_path = os.path.join(directory, CONFIG_FILE)
    try:
        config = load_json(config_path, strict=True)
    except ValueError as e:
        raise ExportError(f"{config_path}: not valid JSON ({e})") from None
    version = config.get("format_version") if isinstance(config, dict) else None
    if version != FORMAT_VERSION:
        raise ExportError(f"{config_path}: format_version {version!r}; this code reads format_version {FORMAT_VERSION} "
                          "(re-export the model with this version of the project)")
    absent = [k for k in REQUIRED_KEYS if k not in config]
    if absent:
        raise ExportError(f"{config_path}: lacks {', '.join(absent)}")

    def check(ok: bool, path: str, problem: str):
        if not ok:
            raise ExportError(f"{os.path.join(directory, path)}: {problem}")

    for key in (
        "max_seq_length",
        "context_turns",
        "max_context_tokens",
        "max_utterance_tokens",
        "vocab_size",
        "num_intents",
        "num_slot_tags",
    ):
        value = config[key]
        check(isinstance(value, int) and not isinstance(value, bool), CONFIG_FILE, f"{key} must be an integer, not {value!r}")
    check(
        config["special_tokens"] == SPECIAL_TOKENS, CONFIG_FILE, f"special_tokens {config['special_tokens']} differ from {SPECIAL_TOKENS}"
    )
    check(config["max_utterance_tokens"] >= 1, CONFIG_FILE, "max_utterance_tokens must be a positive integer")
    inputs = [i.get("name") for i in config["inputs"]]
    roles = [o.get("role") for o in config["outputs"]]
    check(inputs == [INPUT_NAME] and roles == OUTPUT_ROLES, CONFIG_FILE, f"inputs {inputs} / outputs {roles}: the contract wants "
          f"[{INPUT_NAME!r}] / {OUTPUT_ROLES}")
    try:
        tokenizer = CharTokenizer.from_file(os.path.join(directory, VOCAB_FILE))
    except ValueError as e:
        raise ExportError(f"{os.path.join(directory, VOCAB_FILE)}: {e}") from None
    check(len(tokenizer) == config["vocab_size"], VOCAB_FILE, f"{len(tokenizer)} tokens, inference_config.json says {config['vocab_size']}")
    try:
        labels = LabelMaps.from_files(*label_files(directory))
    except ValueError as e:
        raise ExportError(str(e)) from None
    check(len(labels.intents) == config["num_intents"], INTENT_LABEL_FILE,
          f"{len(labels.intents)} intents, inference_config.json says {config['num_intents']}")
    check(len(labels.slot_tags) == config["num_slot_tags"], SLOT_LABEL_FILE,
          f"{len(labels.slot_tags)} slot tags, inference_config.json says {config['num_slot_tags']}")
    transitions, n_tags = config["slot_transitions"], config["num_slot_tags"]
    check(transitions is None or (isinstance(transitions, list) and len(transitions) == n_tags and all(
        isinstance(row, list) and len(row) == n_tags and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                                              for v in row) for row in transitions)),
          CONFIG_FILE, f"slot_transitions must be null or {n_tags} rows of {n_tags} finite numbers")
    keys = sorted(Calibration().as_dict())
    check(isinstance(config["calibration"], dict) and sorted(config["calibration"]) == keys, CONFIG_FILE,
          f"calibration {config['calibration']!r} must hold exactly {keys}")
    try:
        catalogue = read_catalogue(os.path.join(directory, CATALOGUE_FILE), labels.slot_types)
        catalogue.pinyin = read_pinyin(os.path.join(directory, PINYIN_FILE))
    except CatalogueError as e:
        raise ExportError(str(e)) from None
    try:
        task = Task(tokenizer, labels, config["max_seq_length"], config["intent_slot_types"], config["context_turns"],
                    config["max_context_tokens"], catalogue)
        calibration = Calibration(**config["calibration"])
    except (ValueError, TypeError) as e:
        raise ExportError(f"{config_path}: {e}") from None
    for key in ("intent_temperature", "slot_temperature"):
        value = getattr(calibration, key)
        check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0, CONFIG_FILE,
              f"calibration {key} must be a positive number, not {value!r}")
    exported = ExportedModel(directory, config, task)
    check_graph_tables(exported)
    check_weights(exported.path(PARAMS_FILE))
    check_manifest(directory)
    return exported


# ----------------------------------------------------------------------------- checks of the graph and weights


def check_weights(params_path: str) -> None:
    """Every tensor of model.pdiparams whole and every floating-point weight finite: a NaN in one
    embedding row answers only the utterances that hold that character with "confidence": NaN,
    so no probe row finds it. Raises ExportError naming the file and the tensor."""
    try:
        tensors = paddle_format.weight_tensors(params_path)
    except (ValueError, IndexError, KeyError) as e:
        raise ExportError(f"{params_path}: not a complete Paddle weights file ({e})") from None
    for n, (dtype, dims, raw) in enumerate(tensors, 1):
        if dtype in ("float16", "float32", "float64"):
            values = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        elif dtype == "bfloat16":  # the upper half of a float32
            values = (np.frombuffer(raw, dtype="<u2").astype("<u4") << 16).view("<f4")
        else:
            continue
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise ExportError(f"{params_path}: tensor {n} of {len(tensors)} ({dtype} {dims}) holds {len(bad)} value(s) that are "
                              f"not finite (first at flat index {bad[0]}): the weights are damaged or training diverged")


def check_graph_tables(exported: ExportedModel) -> None:
    """The graph's embedding tables against the contract: the word table (looked up by input_ids)
    has vocab_size rows, and the largest other table (the position embeddings) covers the longest
    row a front end builds (max_seq_length + max_context_tokens). A runtime reads past a table
    without a word: ids beyond it give garbage, not an error."""
    graph = exported.path(GRAPH_FILE)
    try:
        tables = paddle_format.lookup_tables(graph)
    except paddle_format.FormatError as e:
        raise ExportError(str(e)) from None
    word = [shape for ids, shape in tables if ids == INPUT_NAME]
    if len(word) != 1 or len(word[0]) != 2:
        raise ExportError(f"{graph}: expected one embedding lookup of {INPUT_NAME}, found {len(word)}")
    vocab_size = exported.config["vocab_size"]
    if word[0][0] != vocab_size:
        raise ExportError(f"{graph}: the word embedding table has {word[0][0]} rows but {VOCAB_FILE} and {CONFIG_FILE} give "
                          f"{vocab_size} tokens: the graph and the vocabulary come from different models")
    others = [shape[0] for ids, shape in tables if ids != INPUT_NAME]
    row = exported.task.max_row_length
    if others and max(others) < row:
        raise ExportError(f"{exported.path(CONFIG_FILE)}: max_seq_length {exported.config['max_seq_length']} + max_context_tokens "
                          f"{exported.config['max_context_tokens']} = {row} tokens per row, but {GRAPH_FILE} has {max(others)} positions")


def check_graph_io(exported: ExportedModel, input_names: Sequence[str], num_outputs: int, runtime: str) -> None:
    """What a runtime found in the graph against what the contract says it holds."""
    expected = [i["name"] for i in exported.config["inputs"]]
    if list(input_names) != expected or num_outputs != len(exported.config["outputs"]):
        raise ExportError(f"{exported.path(GRAPH_FILE)}: {runtime} finds inputs {list(input_names)} and {num_outputs} outputs; "
                          f"{CONFIG_FILE} declares {expected} and {len(exported.config['outputs'])}")


def check_graph_outputs(exported: ExportedModel, logits_fn, runtime: str) -> None:
    """One probe row ([CLS], the last vocabulary id, [SEP]) through a loaded graph (`logits_fn`:
    input ids -> intent and slot logits): its outputs must have the shapes the label files give and
    be finite. A graph from another model, label files of another task, or damaged weights (a
    flipped byte can give NaN) are refused, naming the files, instead of answering with labels read
    past the outputs or "confidence": NaN."""
    tokenizer, labels = exported.task.tokenizer, exported.task.labels
    intent, slots = logits_fn(np.array([[tokenizer.cls_id, len(tokenizer) - 1, tokenizer.sep_id]], dtype="int64"))
    where = f"{exported.directory} ({runtime})"
    if intent.shape != (1, len(labels.intents)):
        raise ExportError(f"{where}: {GRAPH_FILE} gives {intent.shape[-1]} intent scores but {INTENT_LABEL_FILE} has "
                          f"{len(labels.intents)} labels: the graph and the label file come from different models")
    if slots.shape != (1, 3, len(labels.slot_tags)):
        raise ExportError(f"{where}: {GRAPH_FILE} gives slot scores of shape {list(slots.shape)} for 3 tokens but "
                          f"{SLOT_LABEL_FILE} has {len(labels.slot_tags)} tags: the graph and the label file come from different models")
    if not (np.isfinite(intent).all() and np.isfinite(slots).all()):
        raise ExportError(f"{where}: the graph's outputs are not finite (NaN or inf) on a probe input: "
                          f"{PARAMS_FILE} is damaged or not this graph's weights")
