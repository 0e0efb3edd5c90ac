"""Load test of serve.py: a real server process on 127.0.0.1 per batching mode, a fixed number of
requests at each concurrency, and the same utterances predicted in this process for the HTTP
overhead and for parity.

    python benchmarks/serve_load.py --model_dir output/nlpcc2018-nano-scratch/infer_model \
        --test_file data/prepared/nlpcc2018/test.txt --backend fastdeploy-ort

Requests are POST /v1/parse of the test utterances in file order, each with the earlier turns of
its session as stateless "context". Per mode (one call per request: --max_batch_size 1; micro-
batching) and concurrency: throughput, p50/p90/p99 latency, errors (non-200 answers and answers
that differ from the in-process records: must be 0), the server's RSS before and after. The
client (aiohttp) shares the machine with the server: the server gets --cpu_threads model threads.
With --session_modes, two more modes send requests that name a session (`session_id`; each
client takes whole conversations of the test file, one turn after another): one worker keeping
sessions in memory, and --workers processes sharing them through a Redis server started here
(sessions.redis_server_command): throughput, latency, errors, the RSS of every process and of
Redis, and what a session costs in Redis (its used_memory growth per session and per stored turn).
Writes serve_load_<backend>.json, .md and .png to --output_dir.
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import numpy as np

from backends import BACKENDS, FRONT_END_BACKEND, open_predictor
from data.corpus import read_corpus
from http_load import free_port, load, load_sessions, process_tree_rss_mb, server_rss_mb, server_stats, start_server, stop_server
from utils import PROJECT_DIR, markdown_table, save_figure, save_json, write_text

MODES = {"one call per request": ["--max_batch_size", "1"],
         "micro-batching (32, no wait)": ["--max_batch_size", "32", "--max_wait_ms", "0"],
         "micro-batching (32, wait 2 ms)": ["--max_batch_size", "32", "--max_wait_ms", "2"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="exported directory to serve")
    parser.add_argument("--test_file", required=True, help="corpus-format split whose utterances (with their sessions) are sent")
    parser.add_argument("--backend", default=FRONT_END_BACKEND, choices=list(BACKENDS))
    parser.add_argument("--cpu_threads", type=int, default=1, help="the server's model threads (the client takes the rest)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client concurrency levels")
    parser.add_argument("--requests", type=int, default=3500, help="requests per mode and concurrency level")
    parser.add_argument("--session_modes", action="store_true",
                        help="also requests that name a session: 1 worker in memory against --workers sharing a local Redis")
    parser.add_argument("--workers", type=int, default=2, help="workers of the Redis mode")
    parser.add_argument("--output_dir", default=os.path.join(PROJECT_DIR, "benchmarks", "results"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    # the utterances and their in-process answers, one call per utterance (the HTTP-free baseline)
    predictor = open_predictor(args.model_dir, args.backend, args.cpu_threads)
    test = read_corpus(args.test_file, predictor.task.labels)
    histories = predictor.task.corpus_histories(test)
    turns = [(test[i % len(test)].text, histories[i % len(test)]) for i in range(args.requests)]
    bodies = [json.dumps({"text": t, "context": h}, ensure_ascii=False).encode("utf-8") for t, h in turns]
    in_process, expected = [], []
    for text, history in turns[:50]:  # warm-up
        predictor.predict([text], histories=[history])
    for text, history in turns:
        t0 = time.perf_counter()
        expected.append(predictor.predict([text], histories=[history])[0])
        in_process.append(time.perf_counter() - t0)
    session_expected = expected[:len(test)] + [predictor.predict([test[i].text], histories=[histories[i]])[0]
                                               for i in range(len(expected), len(test) if args.session_modes else 0)]
    del predictor  # the server gets the CPU
    results = {"model_dir": args.model_dir, "backend": args.backend, "server_cpu_threads": args.cpu_threads,
               "requests_per_cell": args.requests, "test_file": args.test_file,
               "in_process_p50_ms": round(float(np.percentile(in_process, 50)) * 1000, 3), "modes": {}}
    print(f"in process: p50 {results['in_process_p50_ms']} ms", flush=True)

    for mode, flags in MODES.items():
        proc, url = start_server(args.model_dir, args.backend, args.cpu_threads, flags)
        asyncio.run(load(url, bodies[:200], expected[:200], 8))  # warm-up, not counted
        rss_before, cells = server_rss_mb(proc.pid), []
        for concurrency in levels:
            calls_before = server_stats(url)["model_calls"]
            latencies, errors, wall = asyncio.run(load(url, bodies, expected, concurrency))
            ms = np.percentile(latencies, [50, 90, 99]) * 1000
            cells.append({"concurrency": concurrency, "throughput_rps": round(len(bodies) / wall, 1),
                          "p50_ms": round(float(ms[0]), 3), "p90_ms": round(float(ms[1]), 3), "p99_ms": round(float(ms[2]), 3),
                          "utterances_per_model_call": round(len(bodies) / (server_stats(url)["model_calls"] - calls_before), 2),
                          "errors": len(errors), "error_examples": errors[:3]})
            print(f"{mode}, concurrency {concurrency}: {cells[-1]['throughput_rps']} req/s, p50 {cells[-1]['p50_ms']} ms, "
                  f"errors {len(errors)}", flush=True)
        results["modes"][mode] = {"flags": flags, "cells": cells, "server_rss_mb_before": round(rss_before, 1),
                                  "server_rss_mb_after": round(server_rss_mb(proc.pid), 1), "exit_code": stop_server(proc)}

    if args.session_modes:
        conversations = {}
        for i, u in enumerate(test):
            conversations.setdefault(u.session_id, []).append((i, u.text))
        results["session_modes"] = session_modes(args, list(conversations.values()), session_expected, levels)

    one, batched = results["modes"]["one call per request"], results["modes"]["micro-batching (32, no wait)"]
    top, low = levels.index(max(levels)), levels.index(min(levels))
    results["batching_gain_at_max_concurrency"] = round(batched["cells"][top]["throughput_rps"] / one["cells"][top]["throughput_rps"], 2)
    results["http_overhead_p50_ms"] = round(one["cells"][low]["p50_ms"] - results["in_process_p50_ms"], 3)
    os.makedirs(args.output_dir, exist_ok=True)
    prefix = os.path.join(args.output_dir, f"serve_load_{args.backend}")
    save_json(prefix + ".json", results)
    write_text(prefix + ".md", report(results))
    plot(results, prefix + ".png")
    print(report(results))
    if any(c["errors"] for m in results["modes"].values() for c in m["cells"]) or any(m["exit_code"] for m in results["modes"].values()):
        sys.exit(f"errors under load, or a server that did not exit cleanly: see {prefix}.json")


def session_modes(args, conversations, expected, levels) -> dict:
    """1 worker with sessions in memory against args.workers workers sharing a local Redis."""
    import tempfile

    import redis

    import sessions

    port, modes = free_port(), {}
    with tempfile.TemporaryDirectory() as directory:
        store = subprocess.Popen(sessions.redis_server_command(port, directory), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)
        try:
            for mode, flags in {"1 worker, sessions in memory": [],
                                f"{args.workers} workers, sessions in Redis": ["--workers", str(args.workers), "--session_store",
                                                                               f"redis://127.0.0.1:{port}/0"]}.items():
                client.flushall()
                redis_before = client.info("memory")["used_memory"]
                proc, url = start_server(args.model_dir, args.backend, args.cpu_threads, flags)
                asyncio.run(load_sessions(url, conversations[:20], expected, 4))  # warm-up, every worker loaded
                cells, created = [], 20
                for concurrency in levels:
                    latencies, errors, wall = asyncio.run(load_sessions(url, conversations, expected, concurrency))
                    created += len(conversations)
                    ms = np.percentile(latencies, [50, 90, 99]) * 1000
                    cells.append({"concurrency": concurrency, "throughput_rps": round(len(expected) / wall, 1),
                                  "p50_ms": round(float(ms[0]), 3), "p90_ms": round(float(ms[1]), 3), "p99_ms": round(float(ms[2]), 3),
                                  "errors": len(errors), "error_examples": errors[:3]})
                    print(f"{mode}, concurrency {concurrency}: {cells[-1]['throughput_rps']} req/s, p50 {cells[-1]['p50_ms']} ms, "
                          f"errors {len(errors)}", flush=True)
                modes[mode] = {"flags": flags, "cells": cells, "rss_mb": process_tree_rss_mb(proc.pid), "exit_code": stop_server(proc)}
                if "--session_store" in flags:
                    grown = client.info("memory")["used_memory"] - redis_before
                    kept = sum(client.llen(key) for key in client.scan_iter("slu:*:turns"))
                    modes[mode]["redis"] = {"rss_mb": round(server_rss_mb(store.pid), 1), "sessions": created, "turns_kept": kept,
                                            "bytes_per_session": round(grown / created), "bytes_per_kept_turn": round(grown / max(kept, 1)),
                                            "sessions_per_gb": int(2**30 / (grown / created))}
        finally:
            store.terminate()
            store.wait(timeout=30)
    return modes


def report(results) -> str:
    rows = [[mode, c["concurrency"], f"{c['throughput_rps']:,.0f}", f"{c['p50_ms']:.2f} / {c['p90_ms']:.2f} / {c['p99_ms']:.2f}",
             c["errors"], c["utterances_per_model_call"], f"{m['server_rss_mb_before']:.0f} → {m['server_rss_mb_after']:.0f}"]
            for mode, m in results["modes"].items() for c in m["cells"]]
    return "\n".join([
        f"Model `{results['model_dir']}` on `{results['backend']}`, server model threads {results['server_cpu_threads']}, "
        f"{results['requests_per_cell']} requests per cell (POST /v1/parse, test utterances with their session context), "
        "client (aiohttp) on the same machine.", "",
        *markdown_table(["mode", "concurrency", "req/s", "p50 / p90 / p99 (ms)", "errors", "utterances per model call",
                         "server RSS (MB)"], rows, right_aligned_from=1), "",
        f"In process (no HTTP, one call per utterance): p50 {results['in_process_p50_ms']:.3f} ms; HTTP overhead at "
        f"concurrency 1: {results['http_overhead_p50_ms']:.3f} ms. Micro-batching gain at the highest concurrency: "
        f"{results['batching_gain_at_max_concurrency']}x.", "", *session_report(results.get("session_modes"))])


def session_report(modes) -> list:
    if not modes:
        return []
    rows = [[mode, c["concurrency"], f"{c['throughput_rps']:,.0f}", f"{c['p50_ms']:.2f} / {c['p90_ms']:.2f} / {c['p99_ms']:.2f}",
             c["errors"], ", ".join(f"{v:.0f}" for v in m["rss_mb"].values())] for mode, m in modes.items() for c in m["cells"]]
    lines = ["Requests that name a session (each client takes whole conversations of the test file, one turn after another):", "",
             *markdown_table(["mode", "concurrency", "req/s", "p50 / p90 / p99 (ms)", "errors", "RSS per process (MB)"], rows), ""]
    for mode, m in modes.items():
        if "redis" in m:
            r = m["redis"]
            lines += [f"Redis ({mode}): RSS {r['rss_mb']:.0f} MB; {r['sessions']:,} sessions holding {r['turns_kept']:,} turns took "
                      f"{r['bytes_per_session']:,} bytes each ({r['bytes_per_kept_turn']:,} per kept turn, keys and expiry included): "
                      f"about {r['sessions_per_gb']:,} sessions per GiB.", ""]
    return lines


def plot(results, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, m in results["modes"].items():
        levels = [c["concurrency"] for c in m["cells"]]
        ax1.plot(levels, [c["throughput_rps"] for c in m["cells"]], marker="o", label=mode)
        ax2.plot(levels, [c["p50_ms"] for c in m["cells"]], marker="o", label=f"{mode} p50")
        ax2.plot(levels, [c["p99_ms"] for c in m["cells"]], marker="x", linestyle="--", label=f"{mode} p99")
    for ax, ylabel in ((ax1, "requests/s"), (ax2, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=6)
    fig.suptitle(f"serve.py under load ({results['backend']})")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
