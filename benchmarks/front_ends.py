"""Every front end beside the engine under it: the same model, the same test turns (each with its
session's context), one model thread, one run (docs/performance.md#front-ends).

    python benchmarks/front_ends.py --model_dir output/nlpcc2018-nano-scratch/infer_model \
        --test_file data/prepared/nlpcc2018/test.txt --output_dir benchmarks/results

Per backend (--backends; the C++ demo runs the same graphs, deploy/cpp/convert_onnx.py):
- engine: the backend's logits function alone on each turn's rows (batch 1), p50; and the Python
  API at batch 32 over the file (utterances/s), the figure a loaded service can at best reach;
- Python API: `Predictor.predict([text], histories=[context])` per turn, p50 (tokenization,
  engine, decoding, the record);
- run_eval.py: `--sessions_file - --batch_size 1` over the turns, per turn: its wall time less
  that of the same command on one turn (the start-up, imports and model load, reported apart);
- service: serve.py on 127.0.0.1, POST /v1/parse with the context in the body: one request at a
  time over a kept-alive connection (p50), and 32 concurrent clients (aiohttp, requests/s);
- C++ demo: `slu_demo --sessions --runtime onnxruntime` (`--precision int8` for onnxruntime-int8),
  its p50 per answer (tokenization, engine, decoding, the record).
--rounds passes take every front end in turn over all the turns (this VM drifts by 20-40 % within
minutes); the table gives medians, ratios taken within each round. Every front end's records must
equal the Python API's in every round (confidences to 2e-4): a difference stops the benchmark. The
clients (Python's http.client at one request at a time, aiohttp under load) share the 2 cores with
what they measure. Writes front_ends.json, front_ends.md and front_ends.png.
"""
import argparse
import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse

import numpy as np

import export_format
import onnx_graph
from backends import open_predictor
from data.corpus import read_corpus
from http_load import load, same_record, start_server, stop_server
from utils import PROJECT_DIR, load_json, markdown_table, pad_batch, save_figure, save_json, write_text

CPP_DEMO = os.path.join(PROJECT_DIR, "build", "cpp", "slu_demo")
CPP_PRECISION = {"onnxruntime": "f32", "onnxruntime-int8": "int8"}  # the backends the C++ demo runs too


def p50_ms(seconds) -> float:
    return round(float(np.median(seconds)) * 1000, 3)


def check_records(front_end: str, got, expected) -> None:
    bad = [i for i, (g, e) in enumerate(zip(got, expected)) if not same_record(g, e)]
    if len(got) != len(expected) or bad:
        i = bad[0] if bad else min(len(got), len(expected))
        sys.exit(f"{front_end}: {len(got)} records for {len(expected)} turns; first difference at turn {i}: "
                 f"{got[i] if i < len(got) else None} against {expected[i] if i < len(expected) else None}")


def engine_and_api(predictor, turns) -> dict:
    """Engine p50 and Python API p50 at batch 1, API throughput at batch 32; the API's records."""
    task = predictor.task
    rows = [pad_batch(task.encode(text, history).windows, task.tokenizer.pad_id) for text, history in turns]
    engine = []
    for ids in rows:
        t0 = time.perf_counter()
        predictor.logits_fn(ids)
        engine.append(time.perf_counter() - t0)
    api, records = [], []
    for text, history in turns:
        t0 = time.perf_counter()
        records.append(predictor.predict([text], histories=[history])[0])
        api.append(time.perf_counter() - t0)
    texts, histories = [t for t, _ in turns], [h for _, h in turns]
    t0 = time.perf_counter()
    predictor.predict(texts, batch_size=32, histories=histories)
    batch32 = len(texts) / (time.perf_counter() - t0)
    return {"engine_p50_ms": p50_ms(engine), "api_p50_ms": p50_ms(api), "api_batch32_utt_per_s": round(batch32, 1), "records": records}


def run_eval_per_turn(model_dir, backend, lines, expected) -> dict:
    """run_eval.py over all session lines and over the first alone: per-turn time and start-up."""
    def run(some):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, os.path.join(PROJECT_DIR, "run_eval.py"), "--model_dir", model_dir, "--backend", backend,
                               "--sessions_file", "-", "--batch_size", "1", "--cpu_threads", "1"],
                              input="".join(line + "\n" for line in some), capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"run_eval.py on {backend}: exit code {proc.returncode}: {proc.stderr[-2000:]}")
        return time.perf_counter() - t0, [json.loads(line) for line in proc.stdout.splitlines()]

    startup, _ = run(lines[:1])
    wall, records = run(lines)
    check_records(f"run_eval.py ({backend})", [{k: v for k, v in r.items() if k != "session_id"} for r in records], expected)
    return {"run_eval_per_turn_ms": round((wall - startup) / (len(lines) - 1) * 1000, 3), "run_eval_startup_s": round(startup, 2)}


def cpp_demo(model_dir, backend, lines, expected) -> dict:
    proc = subprocess.run([CPP_DEMO, "--model_dir", model_dir, "--sessions", "--cpu_threads", "1", "--runtime", "onnxruntime",
                           "--precision", CPP_PRECISION[backend]], input="".join(line + "\n" for line in lines),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"slu_demo on {backend}: exit code {proc.returncode}: {proc.stderr[-2000:]}")
    records = [{k: v for k, v in json.loads(line).items() if k != "session_id"} for line in proc.stdout.splitlines()]
    check_records(f"C++ demo ({backend})", records, expected)
    return {"cpp_p50_ms": float(re.search(r"per answer p50 ([0-9.]+) ms", proc.stderr).group(1))}


def one_at_a_time(url, bodies, expected) -> list:
    """POST /v1/parse one body after another over one kept-alive connection: latencies (s)."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    latencies = []
    for body, record in zip(bodies, expected):
        t0 = time.perf_counter()
        connection.request("POST", "/v1/parse", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        latencies.append(time.perf_counter() - t0)
        if response.status != 200 or not same_record(json.loads(data), record):
            sys.exit(f"service: HTTP {response.status} {data[:300]!r} differs from the in-process record {record}")
    connection.close()
    return latencies


def service(url, bodies, expected, concurrency) -> dict:
    latencies = one_at_a_time(url, bodies, expected)
    _, errors, wall = asyncio.run(load(url, bodies, expected, concurrency))
    if errors:
        sys.exit(f"service at concurrency {concurrency}: {len(errors)} errors, e.g. {errors[0]}")
    return {"service_p50_ms": p50_ms(latencies), "service_loaded_req_per_s": round(len(bodies) / wall, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default="output/nlpcc2018-nano-scratch/infer_model", help="an exported directory")
    parser.add_argument("--test_file", default="data/prepared/nlpcc2018/test.txt", help="corpus-format split: its turns, in sessions")
    parser.add_argument("--backends", default="onnxruntime,onnxruntime-int8", help="comma-separated backends of backends.py")
    parser.add_argument("--concurrency", type=int, default=32, help="clients of the service's throughput figure")
    parser.add_argument("--rounds", type=int, default=3, help="passes that take every front end in turn (this VM drifts)")
    parser.add_argument("--server_flags", default="", help="extra serve.py flags, space-separated")
    parser.add_argument("--output_dir", default=os.path.join(PROJECT_DIR, "benchmarks", "results"))
    parser.add_argument("--report_only", action="store_true", help="rewrite the Markdown and the plot from front_ends.json")
    args = parser.parse_args()
    if args.report_only:
        results = load_json(os.path.join(args.output_dir, "front_ends.json"))
        write_text(os.path.join(args.output_dir, "front_ends.md"), report(results))
        plot(results, os.path.join(args.output_dir, "front_ends.png"))
        return
    if not os.path.isfile(CPP_DEMO):
        sys.exit(f"{CPP_DEMO}: not built; run `make cpp` first")

    results = {"model_dir": args.model_dir, "test_file": args.test_file, "threads": 1, "concurrency": args.concurrency,
               "rounds": args.rounds, "server_flags": args.server_flags, "backends": {}}
    for backend in args.backends.split(","):
        predictor = open_predictor(args.model_dir, backend, 1)
        test = read_corpus(args.test_file, predictor.task.labels)
        turns = list(zip([u.text for u in test], predictor.task.corpus_histories(test)))
        lines = [json.dumps({"session_id": u.session_id, "text": u.text}, ensure_ascii=False) for u in test]
        bodies = [json.dumps({"text": t, "context": h}, ensure_ascii=False).encode("utf-8") for t, h in turns]
        engine_and_api(predictor, turns[:200])  # warm-up
        if backend in CPP_PRECISION:
            onnx_graph.write_for_onnxruntime(export_format.read(args.model_dir), "int8" if CPP_PRECISION[backend] == "int8" else "fp32")
        server, url = start_server(args.model_dir, backend, 1, args.server_flags.split())
        rounds = []
        try:
            one_at_a_time(url, bodies[:200], [predictor.predict([t], histories=[h])[0] for t, h in turns[:200]])  # warm-up
            for r in range(args.rounds):
                cell = engine_and_api(predictor, turns)
                expected = cell.pop("records")
                cell.update(service(url, bodies, expected, args.concurrency))
                if backend in CPP_PRECISION:
                    cell.update(cpp_demo(args.model_dir, backend, lines, expected))
                cell.update(run_eval_per_turn(args.model_dir, backend, lines, expected))
                rounds.append(cell)
                print(f"{backend}, round {r + 1}:", json.dumps(cell), flush=True)
        finally:
            exit_code = stop_server(server)
        del predictor
        results["backends"][backend] = {"rounds": rounds, "service_exit_code": exit_code,
                                        **{key: float(np.median([c[key] for c in rounds])) for key in rounds[0]}}
    results["turns"] = len(lines)
    os.makedirs(args.output_dir, exist_ok=True)
    save_json(os.path.join(args.output_dir, "front_ends.json"), results)
    write_text(os.path.join(args.output_dir, "front_ends.md"), report(results))
    plot(results, os.path.join(args.output_dir, "front_ends.png"))
    print(report(results))


# (name in the table, short name in the plot, key)
FRONT_ENDS = [("Python API (`Predictor.predict`)", "Python API", "api_p50_ms"),
              ("run_eval.py (per turn, start-up apart)", "run_eval.py", "run_eval_per_turn_ms"),
              ("service, one request at a time (HTTP)", "service (HTTP)", "service_p50_ms"),
              ("C++ demo (`slu_demo`)", "C++ demo", "cpp_p50_ms")]


def median_over_rounds(cell, value) -> float:
    return float(np.median([value(r) for r in cell["rounds"]]))


def report(results) -> str:
    rows, throughput = [], []
    for backend, c in results["backends"].items():
        rows.append([backend, "engine alone (logits)", f"{c['engine_p50_ms']:.2f}", "1.00", ""])
        for name, _, key in FRONT_ENDS:
            if key in c:
                ratio = median_over_rounds(c, lambda r: r[key] / r["engine_p50_ms"])
                over_api = median_over_rounds(c, lambda r: r[key] - r["api_p50_ms"])
                rows.append([backend, name, f"{c[key]:.2f}", f"{ratio:.2f}", f"{over_api:+.2f}" if key != "api_p50_ms" else ""])
        share = median_over_rounds(c, lambda r: r["service_loaded_req_per_s"] / r["api_batch32_utt_per_s"])
        throughput.append([backend, f"{c['api_batch32_utt_per_s']:,.0f}", f"{c['service_loaded_req_per_s']:,.0f}", f"{share:.0%}"])
    return "\n".join([
        "# Front ends at the speed of their engine", "",
        f"`{results['model_dir']}`, the {results['turns']} turns of `{results['test_file']}` with their session context, one model "
        f"thread, {results['rounds']} rounds that take every front end in turn; every front end's records equal the Python API's in "
        "every round. Batch-1 p50 per turn, the median over the rounds; ratios and differences are taken within each round, then "
        "their median. run_eval.py's figure is its wall time per turn with its start-up (imports, model load) taken out.", "",
        *markdown_table(["backend", "front end", "p50 (ms)", "× engine", "ms over the Python API"], rows, right_aligned_from=2), "",
        f"Under load: the service with {results['concurrency']} concurrent clients (aiohttp, on the same 2 cores; each request one "
        "turn) against the Python API at batch 32 in process" + (f" (serve.py {results['server_flags']})" if results["server_flags"]
                                                                else "") + ".", "",
        *markdown_table(["backend", "API at batch 32 (utt/s)", f"service at concurrency {results['concurrency']} (req/s)", "share"],
                        throughput, right_aligned_from=1), ""])


def plot(results, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    names = ["engine alone"] + [short for _, short, _ in FRONT_ENDS]
    width = 0.8 / len(results["backends"])
    for b, (backend, c) in enumerate(results["backends"].items()):
        values = [c["engine_p50_ms"]] + [c.get(key, 0.0) for _, _, key in FRONT_ENDS]
        ax.bar(np.arange(len(names)) + b * width, values, width, label=backend)
    ax.set_xticks(np.arange(len(names)) + width * (len(results["backends"]) - 1) / 2)
    ax.set_xticklabels(names)
    ax.set_ylabel("batch-1 p50 per turn (ms)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
