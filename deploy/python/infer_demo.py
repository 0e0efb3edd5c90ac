"""FastDeploy Python demo: intent + slots for utterances with an exported model directory.

    python deploy/python/infer_demo.py --model_dir output/demo/infer_model --backend ort --text 导航去北京

Tokenization and decoding are the project's own (utils.py: numpy only), so the results are those
of run_eval.py; FastDeploy runs the graph. Paddle itself is never imported here: FastDeploy 1.0.7
bundles its own Paddle Inference, and with paddle 2.6 loaded in the same process its backends
crash (SIGFPE on `paddle`, an operator-attribute error on `ort`).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import fastdeploy as fd  # noqa: E402
import numpy as np  # noqa: E402

import utils  # noqa: E402

BACKENDS = {"paddle": "use_paddle_infer_backend", "ort": "use_ort_backend", "openvino": "use_openvino_backend"}


class FastDeployModel(utils.ExportedModel):
    def __init__(self, model_dir: str, backend: str, cpu_threads: int = 0):
        super().__init__(model_dir)
        option = fd.RuntimeOption()
        option.set_model_path(os.path.join(model_dir, "model.pdmodel"), os.path.join(model_dir, "model.pdiparams"), fd.ModelFormat.PADDLE)
        option.use_cpu()
        option.set_cpu_thread_num(cpu_threads or os.cpu_count() or 1)
        getattr(option, BACKENDS[backend])()
        try:
            self.runtime = fd.Runtime(option)
        except RuntimeError as e:
            reason = next((line for line in str(e).splitlines() if "Fail to convert" in line), str(e).splitlines()[0])
            raise RuntimeError(f"FastDeploy backend {backend!r} cannot run {model_dir}: {reason}") from None
        self.input_name = self.runtime.get_input_info(0).name

    def logits(self, input_ids: np.ndarray):
        intent_logits, slot_logits = self.runtime.infer({self.input_name: input_ids})
        return intent_logits, slot_logits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="an exported directory (infer_model/ or a compression stage)")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="ort", help="FastDeploy CPU backend")
    parser.add_argument("--cpu_threads", type=int, default=0, help="CPU threads; 0 = one per core")
    parser.add_argument("--text", action="append", default=[], help="an utterance; repeat for more (default: stdin lines)")
    parser.add_argument("--batch_size", type=int, default=64, help="windows per inference call")
    parser.add_argument("--logits_file", help="also save the merged intent and slot logits (.npz), for parity checks")
    args = parser.parse_args(argv)

    fd.set_logger(enable_info=False)  # its [INFO] lines go to stdout, where the JSON results go
    try:
        model = FastDeployModel(args.model_dir, args.backend, args.cpu_threads)
    except RuntimeError as e:
        sys.exit(str(e))
    texts = args.text or [line.rstrip("\r\n") for line in sys.stdin]
    start = time.perf_counter()
    encoded = [model.encode(t) for t in texts]
    preds = utils.predict_encoded(encoded, model.logits, model.tokenizer.pad_id, args.batch_size)
    results = [utils.describe(p, e, model.labels) for p, e in zip(preds, encoded)]
    elapsed = time.perf_counter() - start
    if args.logits_file:
        np.savez(args.logits_file, intent=np.stack([p.intent_logits for p in preds]),
                 slots=np.concatenate([p.slot_logits for p in preds]))
    for result in results:
        print(json.dumps(result, ensure_ascii=False))
    print(f"{args.backend}: {len(texts)} utterances in {elapsed * 1000:.1f} ms (tokenization + model + decoding)", file=sys.stderr)


if __name__ == "__main__":
    main()
