"""Runs a Paddle Lite .nb model (x86 build) on batches of input ids; for convert.py's check.
Python 3.7 only (paddlelite 2.12 wheels): run it with .venv-lite/bin/python.

    lite_logits.py MODEL.nb INPUTS.npz OUTPUTS.npz     # INPUTS: arrays b0, b1, ... [batch, seq] int64
"""
import sys

import numpy as np
from paddlelite.lite import MobileConfig, create_paddle_predictor


def main(model_file, inputs_file, outputs_file):
    config = MobileConfig()  # the Python light API has no thread setting
    config.set_model_from_file(model_file)
    predictor = create_paddle_predictor(config)
    inputs = np.load(inputs_file)
    outputs = {}
    for name in inputs.files:
        predictor.get_input(0).from_numpy(inputs[name])
        predictor.run()
        # copies: numpy() views the predictor's buffers, which the next run overwrites
        outputs[name + "_intent"] = predictor.get_output(0).numpy().copy()
        outputs[name + "_slots"] = predictor.get_output(1).numpy().copy()
    np.savez(outputs_file, **outputs)


if __name__ == "__main__":
    main(*sys.argv[1:])
