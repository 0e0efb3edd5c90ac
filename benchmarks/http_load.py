"""A serve.py process on 127.0.0.1 and an HTTP load against it, shared by benchmarks/serve_load.py
and benchmarks/front_ends.py (a library, not a script)."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np

from predictor import without_confidences
from utils import PROJECT_DIR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def start_server(model_dir, backend, threads, flags, timeout=300):
    """A serve.py process on a free port, once /v1/ready answers: (process, base url)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(PROJECT_DIR, "serve.py"), "--model_dir", model_dir, "--backend", backend,
                             "--port", str(port), "--cpu_threads", str(threads), "--log_level", "warning", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"serve.py exited with {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"serve.py did not become ready in {timeout} s")


def server_stats(url) -> dict:
    with urllib.request.urlopen(url + "/v1/stats") as r:
        return json.load(r)


def stop_server(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def same_record(got: dict, expected: dict) -> bool:
    """Equal but for the last digit of rounded confidences (the model ran in another batch)."""
    return without_confidences(got) == without_confidences(expected) and abs(got["confidence"] - expected["confidence"]) <= 2e-4


async def clients(client, concurrency) -> float:
    """`concurrency` copies of the coroutine `client(session)` on one aiohttp session: their wall time."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return time.perf_counter() - t0


async def load(url, bodies, expected, concurrency):
    """POST bodies[i] for i in order with `concurrency` clients: latencies (s), errors, wall time."""
    latencies, errors, next_index = np.zeros(len(bodies)), [], iter(range(len(bodies)))

    async def client(session):
        for i in next_index:
            t0 = time.perf_counter()
            async with session.post(url + "/v1/parse", data=bodies[i], headers={"Content-Type": "application/json"}) as r:
                body = await r.read()
            latencies[i] = time.perf_counter() - t0
            if r.status != 200:
                errors.append(f"{i}: HTTP {r.status} {body[:200]!r}")
            elif not same_record(json.loads(body), expected[i]):
                errors.append(f"{i}: {body[:300]!r} differs from the in-process record")

    return latencies, errors, await clients(client, concurrency)


async def load_sessions(url, conversations, expected, concurrency):
    """Requests that name a session: `conversations` are lists of (index, text), one session's turns
    in order; each of `concurrency` clients takes whole conversations, creates a session for each
    (POST /v1/sessions) and sends its turns one after another. Latencies of the turns (s, by
    index), errors, wall time (session creation included)."""
    latencies, errors, queue = np.zeros(len(expected)), [], iter(conversations)
    headers = {"Content-Type": "application/json"}

    async def client(session):
        for conversation in queue:
            async with session.post(url + "/v1/sessions") as r:
                if r.status != 201:
                    errors.append(f"POST /v1/sessions: HTTP {r.status} {(await r.read())[:200]!r}")
                    continue
                sid = (await r.json())["session_id"]
            for i, text in conversation:
                body = json.dumps({"text": text, "session_id": sid}, ensure_ascii=False).encode("utf-8")
                t0 = time.perf_counter()
                async with session.post(url + "/v1/parse", data=body, headers=headers) as r:
                    data = await r.read()
                latencies[i] = time.perf_counter() - t0
                record = json.loads(data) if r.status == 200 else None
                if record is None:
                    errors.append(f"{i}: HTTP {r.status} {data[:200]!r}")
                elif record.pop("session_id", None) != sid or not same_record(record, expected[i]):
                    errors.append(f"{i}: {data[:300]!r} differs from the in-process record")

    return latencies, errors, await clients(client, concurrency)


def process_tree_rss_mb(pid: int) -> dict:
    """RSS of a process and of each of its children (a supervisor and its workers), MB."""
    import psutil

    parent = psutil.Process(pid)
    return {str(p.pid): round(p.memory_info().rss / 2**20, 1) for p in [parent, *parent.children(recursive=True)]}
