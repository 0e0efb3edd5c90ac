"""Write the ONNX graphs that the C++ demo's ONNX Runtime engine runs (`slu_demo --runtime
onnxruntime`) beside an exported directory: the same graphs as backends.py's `onnxruntime` (fp32)
and `onnxruntime-int8` (onnx_graph.py: attention fused into one operator; int8: integer kernels for
every weight product), so the C++ records equal the Python ones.

    python deploy/cpp/convert_onnx.py --model_dir output/demo/infer_model              # fp32 and int8
    build/cpp/slu_demo --model_dir output/demo/infer_model --runtime onnxruntime --precision int8 --text 导航去北京

Each file carries the manifest digests of the Paddle graph and weights it came from: slu_demo
refuses a file that a later export left behind (convert again). Files are complete or absent.
docs/deployment.md#c-demo.
"""
import argparse
import sys
import time

import export_format
import onnx_graph


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="an exported directory (run_train.py --do_export, or a compression stage)")
    parser.add_argument("--precision", nargs="+", choices=list(onnx_graph.ONNX_FILES), default=list(onnx_graph.ONNX_FILES),
                        help="which graphs to write: fp32 (model.onnx), int8 (model.int8.onnx)")
    args = parser.parse_args()

    try:
        exported = export_format.read(args.model_dir)  # validated, manifest included, before anything is written
    except export_format.ExportError as e:
        sys.exit(f"convert_onnx.py: {e}")
    for precision in args.precision:
        start = time.perf_counter()
        path = onnx_graph.write_for_onnxruntime(exported, precision)
        print(f"{path}: {precision}, written in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
