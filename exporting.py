"""Every exported directory is written here, through the contract of export_format.py: a dygraph
model (a trained model, the distilled student, compression's fp32 and pruned stages), a static
graph another tool saved (compression's DynaBERT, QAT and PTQ stages) and the Android app's
directory (Paddle Lite's model.nb in place of the weights). Each is calibrated on dev inside its
atomic write (docs/reliability.md)."""
import logging
import os
import shutil
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import paddle

import export_format
from backends import open_predictor
from data.corpus import Utterance
from decoding import TEMPERATURE_GRID, Calibration
from model import slot_transitions
from task import Task

logger = logging.getLogger("ernie_tiny_slu")


def graph_io(path_prefix: str) -> Tuple[List[str], List[str]]:
    """Feed and fetch names of a static graph saved at `path_prefix`."""
    paddle.enable_static()
    try:
        program, feeds, fetches = paddle.static.load_inference_model(path_prefix, paddle.static.Executor(paddle.CPUPlace()))
        return list(feeds), [v.name for v in fetches]
    finally:
        paddle.disable_static()


def save_static_graph(model, path_prefix: str) -> Tuple[List[str], List[str]]:
    """<prefix>.pdmodel/.pdiparams with dynamic batch and sequence length; returns its feed and
    fetch names (an export_format.GraphWriter)."""
    model.eval()
    spec = [paddle.static.InputSpec([None, None], "int64", export_format.INPUT_NAME)]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    paddle.jit.save(static, path_prefix)
    static.forward.rollback()  # to_static converted the layer in place; later training stays dygraph
    return graph_io(path_prefix)


def calibrator(directory: str, dev: Sequence[Utterance], threads: int = 0) -> Optional[Callable[[str], Calibration]]:
    """The `calibrate` of export_format.write for an export to `directory` (None without dev):
    fits the confidences' temperatures on labelled utterances through the graph as written
    (Paddle Inference). Every stage (fp32, pruned, DynaBERT widths, int8) is calibrated this one way."""
    return (lambda written: fit_calibration(written, directory, list(dev), threads)) if dev else None


def fit_calibration(written: str, directory: str, dev: List[Utterance], threads: int = 0) -> Calibration:
    predictor = open_predictor(written, "paddle-inference", threads, warn_uncalibrated=False)
    calibration = predictor.decoder.fit(predictor.corpus_predictions(dev), dev, f"dev ({len(dev)} utterances)")
    logger.info(f"{directory}: calibrated on dev, intent temperature {calibration.intent_temperature:.3f}, "
                f"slot temperature {calibration.slot_temperature:.3f}")
    bounds = (TEMPERATURE_GRID[0], TEMPERATURE_GRID[-1])
    at_bound = [k for k, t in (("intent", calibration.intent_temperature), ("slot", calibration.slot_temperature))
                if min(abs(t - b) / b for b in bounds) < 0.01]
    if at_bound:  # e.g. a dev split the model gets (almost) all right: nothing to calibrate against
        logger.warning(f"{directory}: the {' and '.join(at_bound)} temperature sits at the search bound {bounds}: dev holds "
                       "too few errors to calibrate against, so those confidences are only as trustworthy as dev is hard")
    return calibration


def export(model, task: Task, directory: str, model_info: dict, dev: Optional[Sequence[Utterance]] = None,
           threads: int = 0) -> export_format.ExportedModel:
    """A dygraph model as a complete exported directory, its confidences calibrated on `dev`
    (without dev: temperatures 1, marked not fitted)."""
    transitions = slot_transitions(model)
    return export_format.write(directory, task, lambda prefix: save_static_graph(model, prefix), model_info,
                               slot_transitions=None if transitions is None else transitions.tolist(),
                               calibrate=calibrator(directory, dev or (), threads))


def export_graph(source_prefix: str, task: Task, directory: str, model_info: dict, onednn_int8: bool = False,
                 transitions: Optional[np.ndarray] = None, dev: Sequence[Utterance] = (), threads: int = 0) -> export_format.ExportedModel:
    """A static graph saved at `source_prefix` (.pdmodel/.pdiparams, e.g. by PaddleNLP's compress
    API) as a complete exported directory, calibrated on `dev`."""
    def copy_graph(target_prefix):
        for ext in (".pdmodel", ".pdiparams"):
            shutil.copyfile(source_prefix + ext, target_prefix + ext)
        return graph_io(target_prefix)

    return export_format.write(directory, task, copy_graph, model_info, onednn_int8=onednn_int8,
                               slot_transitions=None if transitions is None else transitions.tolist(),
                               calibrate=calibrator(directory, dev, threads))


LITE_MODEL_FILE = "model.nb"  # deploy/cpp/slu.h's kLiteModelFile; slu::AppFiles lists the app's files as export_app writes them
# what the app ships besides model.nb and its own manifest: every file of an exported directory but the weights
APP_ASSETS = [f for f in export_format.FILES if f not in (export_format.PARAMS_FILE, export_format.MANIFEST_FILE)]


def export_app(exported: export_format.ExportedModel, lite_model: str, output_dir: str) -> List[str]:
    """The Android app's model directory: Paddle Lite's `lite_model` as model.nb, the exported
    directory's other files, and a manifest over them all (slu.cc verifies it as it verifies an
    export). Returns the files written."""
    os.makedirs(output_dir, exist_ok=True)
    if os.path.abspath(lite_model) != os.path.abspath(os.path.join(output_dir, LITE_MODEL_FILE)):
        shutil.copyfile(lite_model, os.path.join(output_dir, LITE_MODEL_FILE))
    for name in APP_ASSETS:
        shutil.copyfile(exported.path(name), os.path.join(output_dir, name))
    export_format.write_manifest(output_dir, [LITE_MODEL_FILE, *APP_ASSETS])
    return [LITE_MODEL_FILE, *APP_ASSETS, export_format.MANIFEST_FILE]
