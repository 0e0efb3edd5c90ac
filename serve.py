"""The SLU service: an exported model behind HTTP (FastAPI on uvicorn), with sessions and
micro-batching. Every answer is predictor.py's result record, the one run_eval.py prints.

    python serve.py --model_dir output/demo/infer_model --port 8000   # onnxruntime; --backend: any of backends.py
    make serve MODEL_DIR=output/demo/infer_model BACKEND=onnxruntime-int8
    make serve-redis MODEL_DIR=output/demo/infer_model WORKERS=2        # workers sharing sessions in a local Redis

    POST /v1/parse           {"text": "取消", "context": ["导航去北京"]}   -> a result record
                             {"text": "取消", "session_id": "..."}         (a session the service keeps)
    POST /v1/parse/batch     {"utterances": [<as above>, ...]}              -> {"results": [records]}
    POST /v1/sessions        -> 201 {"session_id": ..., "ttl_s": ..., "context_turns": K, "catalogue_entries": N}
                             optional body {"catalogue": [{"slot", "value", "synonyms"}, ...]}: the
                             session's own slot values (a driver's contacts), consulted first
    DELETE /v1/sessions/ID   -> 204, or 404 when unknown
    GET  /v1/model           labels, format version, backend, context use, limits
    GET  /v1/health, /v1/ready, /v1/stats;  /docs: the OpenAPI page

Context comes from the request itself ("context": earlier utterances of the session, oldest
first; stateless, so any number of workers behind a load balancer) or from a session the service
created and keeps (the last K turns, in this process's memory or in Redis with --session_store,
sessions.py; an unknown or expired id is a 404, never a silent start without context; the store
down is a 503 for session requests only). A model trained without context ignores both; /v1/model
says so.

Concurrent requests are grouped into one model call (MicroBatcher): whatever is queued when the
model is free, up to --max_batch_size utterances, after waiting up to --max_wait_ms for more.
A request the service cannot answer gets a 4xx and {"error": "..."} saying why: not UTF-8, not
JSON, wrong fields or types, an empty, invisible-only or over-long utterance (predictor.py's error
texts), a body over --max_request_bytes or nested too deeply, more than --max_batch_utterances
utterances, an unknown session (its id quoted at most 64 characters long). A refused turn is no
turn of its session, as everywhere (task.session_histories). SIGTERM or Ctrl-C: uvicorn stops
accepting, finishes the requests in flight, then exits.

Python entry point: `create_app(predictor, exported, ServeOptions(...))` is a FastAPI app for any
ASGI server. One model per process; --workers N runs N processes on the port, sharing sessions
through Redis (docs/service.md#sessions).
"""
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, List, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

import export_format
from predictor import Predictor
from sessions import MemoryStore, RedisStore, StoreUnavailable, TurnConflict
from utils import strict_json_loads
from values import NONE, Catalogue, check_entry

logger = logging.getLogger("slu.serve")


@dataclasses.dataclass
class ServeOptions:
    max_batch_size: int = dataclasses.field(default=32, metadata={"help": "most utterances in one model call (1 = one call per request)"})
    max_wait_ms: float = dataclasses.field(
        default=0.0, metadata={"help": "how long a model call waits for more requests once one is queued"}
    )
    max_request_bytes: int = dataclasses.field(default=65536, metadata={"help": "largest request body accepted (413 beyond)"})
    max_batch_utterances: int = dataclasses.field(default=64, metadata={"help": "most utterances in one /v1/parse/batch request"})
    max_context_items: int = dataclasses.field(default=16, metadata={"help": "most earlier utterances in a request's context"})
    max_sessions: int = dataclasses.field(default=10000, metadata={"help": "sessions kept; the least recently used goes first"})
    session_ttl_s: float = dataclasses.field(default=600.0, metadata={"help": "a session is forgotten this long after its last turn"})
    max_session_catalogue: int = dataclasses.field(
        default=2000, metadata={"help": "most catalogue entries a session may bring (a driver's contacts; values.py)"})

    def __post_init__(self):
        for name in ("max_batch_size", "max_request_bytes", "max_batch_utterances", "max_sessions", "max_session_catalogue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("max_wait_ms", "max_context_items", "session_ttl_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")


# ----------------------------------------------------------------------------- request and answer


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape ("\ud800") is valid JSON but no text
        raise ValueError("a lone surrogate escape (\\ud800-\\udfff) is not text") from None
    return value


class Utterance(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(description="the utterance as recognised (ASR output)", examples=["导航去北京"])
    context: Optional[List[str]] = Field(None, description="earlier utterances of its session, oldest first (stateless use)")
    session_id: Optional[str] = Field(None, max_length=64, description="a session from POST /v1/sessions (the service keeps its turns)")
    turn: Optional[int] = Field(None, ge=0, description="with session_id: the number of turns the session had before this one; "
                                "a request sent again after its answer was lost is then taken once (409 if it fits neither)")

    @field_validator("text", "session_id")
    @classmethod
    def _text(cls, value):
        return value if value is None else _unicode(value)

    @field_validator("context")
    @classmethod
    def _context(cls, value):
        return value if value is None else [_unicode(v) for v in value]


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    utterances: List[Utterance]


class Slot(BaseModel):
    slot: str
    entity: str
    pos: List[int] = Field(description="first and last character offsets into text, inclusive")
    confidence: float


class Ranked(BaseModel):
    intent: str
    confidence: float


class Record(BaseModel):
    """predictor.py's result record (run_eval.py prints the same)."""
    session_id: Optional[str] = Field(None, description="present when the request named a session")
    text: str
    intent: str
    confidence: float = Field(description="calibrated probability of the intent")
    intent_ranking: List[Ranked]
    slots: List[Slot]
    fallback: bool = Field(description="true when a confidence is below the service's --min_confidence: ask again")


class BatchAnswer(BaseModel):
    results: List[Record]


class Error(BaseModel):
    error: str
    items: Optional[List[dict]] = Field(None, description="per utterance: {index, error}")


class ClientGone(Exception):
    """The client closed the connection before its body was complete: nobody to answer, and no
    fault of the service (counted as client_disconnected, not as an error)."""


class RequestError(Exception):
    def __init__(self, status: int, message: str, items: Optional[List[dict]] = None):
        super().__init__(message)
        self.status, self.message, self.items = status, message, items


def error_response(status: int, message: str, items: Optional[List[dict]] = None) -> JSONResponse:
    return JSONResponse({"error": message, **({"items": items} if items else {})}, status_code=status)


async def read_json(request: Request, limit: int, allow_empty: bool = False):
    """The request body as strict JSON (UTF-8, no NaN/Infinity), read no further than `limit` bytes
    (None for an empty body where `allow_empty`)."""
    return await parse_body(request.headers.get("content-length"), request.stream(), limit, allow_empty)


async def asgi_chunks(receive):
    """A request body's chunks as an ASGI server hands them over (Request.stream without Starlette)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def parse_body(declared: Optional[str], chunks, limit: int, allow_empty: bool = False):
    """read_json on a declared Content-Length and the body's chunks."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes: at most {limit}")
    body = bytearray()
    try:
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"request body over {limit} bytes")
    except ClientDisconnect:
        raise ClientGone() from None
    if allow_empty and not body.strip():
        return None
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not UTF-8 (byte {e.start})") from None
    try:
        return strict_json_loads(text)
    except ValueError as e:  # JSONDecodeError and the constants
        raise RequestError(400, f"request body is not JSON: {e}") from None
    except RecursionError:  # ~1,000 nested brackets fit in a small body; the client's fault, not the service's
        raise RequestError(400, "request body is not JSON this service reads: nested too deeply") from None


def shown(value: str, limit: int = 64) -> str:
    """A client's string as an error message quotes it: at most `limit` characters (a 70,000-character
    id is not echoed back)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def unknown_session(sid: str) -> "RequestError":
    return RequestError(404, f"unknown or expired session_id {shown(sid)}: start one with POST /v1/sessions")


def validate(model, data):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()[:5])
        raise RequestError(422, f"invalid request: {problems}") from None


# ----------------------------------------------------------------------------- micro-batching


# Below this average of requests waiting for the model (as recent requests found them), the service
# is one client at a time, and a lone utterance runs on the event loop itself.
IDLE_LOAD = 1.5


class MicroBatcher:
    """Groups the utterances of concurrent requests into one model call. When the model is free it
    takes every queued request (up to `max_batch_size` utterances; a larger request runs alone),
    waits up to `max_wait_ms` for more if the batch is not full, and runs them in its one worker
    thread, so the event loop keeps answering meanwhile.

    A service used one request at a time skips all that: a lone utterance, when nothing else waits,
    recent requests found nothing waiting either (IDLE_LOAD) and no `max_wait_ms` asks to wait for
    company, is answered on the event loop without the hop to the worker thread and back, which at
    concurrency 1 cost about as much as the HTTP itself on the fastest stage
    (docs/performance.md#front-ends). Under load requests find others waiting, so they are batched
    as before; the loop is held for at most one utterance."""

    def __init__(self, predict: Callable[[List[str], List[List[str]]], List[dict]], max_batch_size: int, max_wait_ms: float):
        self.predict, self.max_batch_size, self.max_wait_s = predict, max_batch_size, max_wait_ms / 1000
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.queue: Optional[asyncio.Queue] = None
        self.worker: Optional[asyncio.Task] = None
        self.calls = self.utterances = 0
        self._held = None  # a request taken from the queue that did not fit the last batch
        self.busy = False  # a batch in the worker thread
        self.waiting, self.load, self.inline_calls = 0, 1.0, 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self.worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.worker
        self.executor.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self.worker is not None and not self.worker.done()

    def idle(self) -> bool:
        """Nothing waits for the model but the caller, and the worker thread is free."""
        return self.waiting == 1 and not self.busy and self.queue.empty() and self._held is None

    async def submit(self, texts: List[str], histories: List[List[str]]) -> List[dict]:
        self.waiting += 1
        self.load = 0.9 * self.load + 0.1 * self.waiting  # requests waiting, as recent requests found them
        try:
            if len(texts) == 1 and self.max_wait_s == 0 and self.load < IDLE_LOAD and self.idle():
                await asyncio.sleep(0)  # requests that arrived with this one reach submit first, and are seen
                if self.idle():
                    self.calls, self.utterances, self.inline_calls = self.calls + 1, self.utterances + 1, self.inline_calls + 1
                    return self.predict(texts, histories)
            future = asyncio.get_running_loop().create_future()
            await self.queue.put((texts, histories, future))
            return await future
        finally:
            self.waiting -= 1

    async def _next_batch(self, first) -> list:
        jobs, size = [first], len(first[0])
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch_size:
            job = self.queue.get_nowait() if not self.queue.empty() else None
            if job is None:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if size + len(job[0]) > self.max_batch_size:
                self._held = job  # opens the next batch
                break
            jobs.append(job)
            size += len(job[0])
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first, self._held = (self._held, None) if self._held else (await self.queue.get(), None)
            jobs = await self._next_batch(first)
            texts = [t for job in jobs for t in job[0]]
            histories = [h for job in jobs for h in job[1]]
            self.busy = True
            try:
                records = await loop.run_in_executor(self.executor, self.predict, texts, histories)
            except Exception as e:  # a runtime fault: every waiting request learns it (500), the service goes on
                logger.exception("model call failed")
                for *_, future in jobs:
                    if not future.done():
                        future.set_exception(e)
                continue
            finally:
                self.busy = False
            self.calls, self.utterances = self.calls + 1, self.utterances + len(texts)
            start = 0
            for job_texts, _, future in jobs:
                if not future.done():  # the client may have gone
                    future.set_result(records[start : start + len(job_texts)])
                start += len(job_texts)


# ----------------------------------------------------------------------------- the app


def model_metadata(predictor: Predictor, exported: export_format.ExportedModel, backend: str, options: ServeOptions) -> dict:
    task = predictor.task
    return {
        "model_dir": exported.directory,
        "format_version": exported.config["format_version"],
        "backend": backend,
        "intents": task.labels.intents,
        "slot_types": task.labels.slot_types,
        "context_turns": task.context_turns,
        "context": (f"the model reads the last {task.context_turns} utterance(s) of the session" if task.context_turns
                    else "ignored: the model was trained without session context (run_train.py --context_turns 0)"),
        "max_utterance_tokens": predictor.max_utterance_tokens,
        "min_confidence": predictor.min_confidence,
        "limits": dataclasses.asdict(options),
    }


class Service:
    """What the routes answer with: the predictor, the session store, the batcher and the counters."""

    def __init__(self, predictor: Predictor, options: ServeOptions, session_store: str = "memory"):
        self.predictor, self.options = predictor, options
        turns = predictor.task.context_turns
        self.sessions = (MemoryStore(turns, options.max_sessions, options.session_ttl_s, self.build_catalogue) if session_store == "memory"
                         else RedisStore(session_store, turns, options.session_ttl_s, self.build_catalogue))
        self.batcher = MicroBatcher(lambda texts, histories: predictor.predict(texts, options.max_batch_size, histories),
                                    options.max_batch_size, options.max_wait_ms)
        self.counts = collections.Counter()
        self.started = time.time()

    def build_catalogue(self, entries: List[dict]) -> Catalogue:
        """A session's own catalogue from its checked entries, read with the model's pinyin table."""
        base = self.predictor.task.catalogue
        catalogue = Catalogue(pinyin=base.pinyin if base is not None else {})
        for entry in entries:
            catalogue.add_entry(entry)
        return catalogue

    async def contexts(self, items: Sequence[Utterance]):
        """Each utterance's context, from the request or its session (with the request's earlier
        turns of that session), and its session's own catalogue, after checking every item; the
        request's turns join their sessions (sessions.take_turns, per session in order of first
        appearance) before the model answers. A refused request changes no session."""
        options, histories, catalogues, problems = self.options, [None] * len(items), [None] * len(items), []
        of_session = collections.defaultdict(list)  # the request's items per session, in order
        for i, item in enumerate(items):
            if item.context is not None and item.session_id is not None:
                problems.append({"index": i, "error": "give either context or session_id, not both"})
            elif item.context is not None and len(item.context) > options.max_context_items:
                problems.append({"index": i, "error": f"{len(item.context)} context utterances: at most {options.max_context_items}"})
            elif item.turn is not None and item.session_id is None:
                problems.append({"index": i, "error": "a turn number goes with a session_id"})
            elif (error := self.predictor.text_error(item.text)) is not None:
                problems.append({"index": i, "error": error})
            if item.session_id is None:
                histories[i] = list(item.context or [])
            else:
                of_session[item.session_id].append(i)
        for sid, indices in of_session.items():
            first = items[indices[0]].turn
            if any(items[i].turn != (None if first is None else first + k) for k, i in enumerate(indices)):
                problems.append({"index": indices[0], "error": f"the turns of session {shown(sid)} in one request are numbered "
                                                              "one after another, or not at all"})
        if problems:
            message = problems[0]["error"] if len(items) == 1 else f"{len(problems)} of {len(items)} utterances cannot be answered"
            raise RequestError(422, message, problems)
        # A request naming several sessions takes their turns one session after another (their keys
        # live apart in Redis): all are checked to exist first, and a turn number refused on a later
        # one leaves the earlier ones taken — which sending the numbered request again takes once.
        if len(of_session) > 1:
            for sid in of_session:
                if not await self.sessions.exists(sid):
                    raise unknown_session(sid)
        for sid, indices in of_session.items():
            texts = [items[i].text for i in indices]
            try:
                session = await self.sessions.take_turns(sid, texts, items[indices[0]].turn)
            except KeyError:
                raise unknown_session(sid) from None
            except TurnConflict as e:
                raise RequestError(409, str(e)) from None
            for k, i in enumerate(indices):
                histories[i], catalogues[i] = session.turns + texts[:k], session.catalogue
        return histories, catalogues

    async def answer(self, items: Sequence[Utterance]) -> List[dict]:
        """Result records of a request's utterances, in order."""
        if len(items) > self.options.max_batch_utterances:
            raise RequestError(413, f"{len(items)} utterances in one request: at most {self.options.max_batch_utterances}")
        if not items:
            return []
        try:
            histories, catalogues = await self.contexts(items)
        except StoreUnavailable as e:
            raise RequestError(503, f"the session store is unavailable ({e}); requests that bring their own \"context\" are "
                               "still answered") from None
        self.counts["in_flight"] += 1
        try:
            records = await self.batcher.submit([item.text for item in items], histories)
        finally:
            self.counts["in_flight"] -= 1
        self.counts["utterances"] += len(items)
        for own, record in zip(catalogues, records):
            for slot in record.get("slots", []) if own is not None else []:  # the session's catalogue first
                value, resolution = own.resolve(slot["slot"], slot["entity"])
                if resolution != NONE:
                    slot["value"], slot["resolution"] = value, resolution
        return [{"session_id": item.session_id, **r} if item.session_id is not None else r for item, r in zip(items, records)]

    async def parse(self, body: Awaitable) -> dict:
        """POST /v1/parse, `body` its JSON as read_json reads it: the utterance's record."""
        self.counts["requests"] += 1
        return (await self.answer([validate(Utterance, await body)]))[0]

    async def parse_batch(self, body: Awaitable) -> dict:
        """POST /v1/parse/batch, `body` its JSON as read_json reads it: {"results": records, in order}."""
        self.counts["requests"] += 1
        return {"results": await self.answer(validate(BatchRequest, await body).utterances)}

    def session_entries(self, body) -> Optional[List[dict]]:
        """The catalogue entries a POST /v1/sessions body brings ({"catalogue": [entries]}), checked entry by entry."""
        if body is None:
            return None
        if not isinstance(body, dict) or set(body) - {"catalogue"} or not isinstance(body.get("catalogue", []), list):
            raise RequestError(422, 'a session body is {"catalogue": [entries]} (or nothing)')
        entries = body.get("catalogue", [])
        if len(entries) > self.options.max_session_catalogue:
            raise RequestError(413, f"{len(entries)} catalogue entries: at most {self.options.max_session_catalogue}")
        checked, problems = [], []
        for i, entry in enumerate(entries):
            try:
                checked.append(check_entry(entry, self.predictor.task.labels.slot_types))
            except ValueError as e:
                problems.append({"index": i, "error": str(e)})
        if problems:
            raise RequestError(422, f"{len(problems)} of {len(entries)} catalogue entries are not entries", problems[:50])
        return checked

    async def create_session(self, body) -> dict:
        entries = self.session_entries(body)
        try:
            sid = await self.sessions.create(entries)
        except StoreUnavailable as e:
            raise RequestError(503, f"the session store is unavailable ({e})") from None
        return {"session_id": sid, "ttl_s": self.options.session_ttl_s, "context_turns": self.predictor.task.context_turns,
                "catalogue_entries": len(entries) if entries else 0}

    async def delete_session(self, sid: str) -> None:
        try:
            deleted = await self.sessions.delete(sid)
        except StoreUnavailable as e:
            raise RequestError(503, f"the session store is unavailable ({e})") from None
        if not deleted:
            raise RequestError(404, f"unknown or expired session_id {shown(sid)}")

    def stats(self) -> dict:
        counts, batcher = self.counts, self.batcher
        return {"pid": os.getpid(), "uptime_s": round(time.time() - self.started, 1), "requests": counts["requests"],
                "utterances": counts["utterances"], "model_calls": batcher.calls, "model_calls_inline": batcher.inline_calls,
                "utterances_per_call": round(batcher.utterances / max(batcher.calls, 1), 2),
                "in_flight": counts["in_flight"], "client_disconnected": counts["client_disconnected"],
                "errors": {k: v for k, v in counts.items() if k.startswith("http_")}}


def session_store_name(url: str) -> str:
    """The store as /v1/model names it: "memory", or the Redis URL without its password."""
    from urllib.parse import urlsplit

    if url == "memory":
        return url
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.hostname}:{parts.port or 6379}").geturl()


def json_bytes(content) -> bytes:
    """A JSON body as Starlette's JSONResponse writes it."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


# The longest request target (path and query) served; a session id is far shorter (POST /v1/sessions).
MAX_REQUEST_TARGET = 16384
TARGET_TOO_LONG = "serve.target_too_long"  # the scope key by which WholeUrlHttpTools tells ParseRoutes


class ParseRoutes:
    """POST /v1/parse and /v1/parse/batch answered as plain ASGI, in front of FastAPI's routing,
    middleware and endpoint machinery, which on the best stage cost about as much as the model
    (docs/performance.md#front-ends). The same answers, refusals and counters as the FastAPI routes
    they shadow (those stay for the OpenAPI page), and the 414 for a request target over
    MAX_REQUEST_TARGET bytes; every other request goes on to FastAPI."""

    def __init__(self, app, service: "Service"):
        self.app, self.service = app, service
        self.routes = {"/v1/parse": service.parse, "/v1/parse/batch": service.parse_batch}

    async def __call__(self, scope, receive, send):
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None and TARGET_TOO_LONG not in scope:
            return await self.app(scope, receive, send)
        counts = self.service.counts
        declared = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-length"), None)
        try:
            if TARGET_TOO_LONG in scope:
                raise RequestError(414, f"request target of {scope[TARGET_TOO_LONG]} bytes: at most {MAX_REQUEST_TARGET}")
            status, content = 200, await route(parse_body(declared, asgi_chunks(receive), self.service.options.max_request_bytes))
        except RequestError as e:
            counts[f"http_{e.status}"] += 1
            status, content = e.status, {"error": e.message, **({"items": e.items} if e.items else {})}
        except ClientGone:
            counts["client_disconnected"] += 1
            return
        except Exception as e:  # a fault of the service or its runtime, never of the request
            counts["http_500"] += 1
            logger.exception("internal error")
            status, content = 500, {"error": f"internal error: {type(e).__name__}"}
        body = json_bytes(content)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def install_error_handlers(app: FastAPI, counts: collections.Counter) -> None:
    """Every refusal a JSON error with its status, counted; a fault of the service a 500."""
    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        counts[f"http_{e.status}"] += 1
        return error_response(e.status, e.message, e.items)

    @app.exception_handler(ClientGone)
    async def _client_gone(request, e: ClientGone):
        counts["client_disconnected"] += 1
        return Response(status_code=400)  # sent to no one

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):  # unknown routes, wrong methods
        counts[f"http_{e.status_code}"] += 1
        return error_response(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _internal_error(request, e: Exception):  # a fault of the service or its runtime, never of the request
        counts["http_500"] += 1
        logger.exception("internal error")
        return error_response(500, f"internal error: {type(e).__name__}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):  # path parameters
        counts["http_422"] += 1
        return error_response(422, "invalid request: " + "; ".join(str(err.get("msg")) for err in e.errors()[:5]))


def openapi_schema(app: FastAPI) -> dict:
    """FastAPI's schema with the request bodies that read_json + validate parse by hand."""
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (Utterance, BatchRequest):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    return schema


def body_schema(model) -> dict:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def create_app(predictor: Predictor, exported: export_format.ExportedModel, options: ServeOptions = ServeOptions(),
               backend: str = "", session_store: str = "memory") -> FastAPI:
    """The service's FastAPI app around a loaded Predictor (backends.open_predictor); sessions in
    this process's memory, or in the Redis server a redis:// URL names (sessions.py)."""
    service = Service(predictor, options, session_store)
    metadata = {**model_metadata(predictor, exported, backend, options), "session_store": session_store_name(session_store)}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        yield
        await service.batcher.stop()
        await service.sessions.close()

    app = FastAPI(title="ERNIE 3.0 Tiny SLU", version=str(exported.config["format_version"]), lifespan=lifespan,
                  description="Intent and slots of in-car utterances, with session context (serve.py).")
    install_error_handlers(app, service.counts)
    errors = {status: {"model": Error} for status in (400, 404, 409, 413, 422, 503)}

    # answered by ParseRoutes ahead of FastAPI; declared here for the OpenAPI page
    @app.post("/v1/parse", response_model=Record, response_model_exclude_none=True, responses=errors,
              openapi_extra=body_schema(Utterance), summary="intent and slots of one utterance")
    async def parse(request: Request):
        return JSONResponse(await service.parse(read_json(request, options.max_request_bytes)))

    @app.post("/v1/parse/batch", response_model=BatchAnswer, response_model_exclude_none=True, responses=errors,
              openapi_extra=body_schema(BatchRequest), summary="intent and slots of several utterances, in order")
    async def parse_batch(request: Request):
        return JSONResponse(await service.parse_batch(read_json(request, options.max_request_bytes)))

    app.add_middleware(ParseRoutes, service=service)

    @app.post("/v1/sessions", status_code=201, responses=errors, summary="start a session the service keeps (with its own catalogue)")
    async def create_session(request: Request):
        return await service.create_session(await read_json(request, options.max_request_bytes, allow_empty=True))

    @app.delete("/v1/sessions/{session_id}", status_code=204, responses={404: {"model": Error}, 503: {"model": Error}},
                summary="end a session")
    async def delete_session(session_id: str):
        await service.delete_session(session_id)
        return Response(status_code=204)

    @app.get("/v1/model", summary="labels, format version, backend, context use and limits")
    async def model():
        return metadata

    @app.get("/v1/health", summary="liveness: the process answers")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/ready", responses={503: {"model": Error}}, summary="readiness: the model is loaded and its worker runs")
    async def ready():
        # the session store's state is reported, not required: with it down, requests that bring
        # their context are still answered, and a load balancer should keep sending them
        if not service.batcher.running:
            return error_response(503, "the model worker is not running")
        return {"ready": True, "session_store": "ok" if await service.sessions.ping() else "unavailable"}

    @app.get("/v1/stats", summary="counters since start")
    async def stats():
        return {**service.stats(), "sessions": await service.sessions.count()}

    def openapi():
        if app.openapi_schema is None:
            app.openapi_schema = openapi_schema(app)
        return app.openapi_schema

    app.openapi = openapi
    return app


WORKER_ARGV = "SLU_SERVE_ARGV"  # serve.py's arguments, for the worker processes (worker_app)


def parse_args(argv=None):
    import argparse

    from backends import BACKENDS, FRONT_END_BACKEND

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="an exported directory (infer_model/ or a compression stage)")
    parser.add_argument("--backend", default=FRONT_END_BACKEND, choices=list(BACKENDS), help="runtime (backends.py)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--cpu_threads", type=int, default=0, help="CPU math threads of each worker's model; 0 = one per core")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes on the port, each with its own model; more than 1 needs a shared --session_store")
    parser.add_argument("--session_store", default="memory",
                        help="where sessions live: memory (this process; --max_sessions, --session_ttl_s) or redis://host:port/db "
                        "(shared by every worker and instance; Redis's TTL and eviction; docs/service.md#sessions)")
    parser.add_argument("--catalogue_file", action="append", default=[],
                        help="your slot values (JSON lines: slot, value, synonyms; docs/decoding.md#slot-values), added to the "
                        "export's catalogue; repeatable")
    parser.add_argument("--min_confidence", type=float, default=0.0,
                        help="results whose intent or any slot confidence is below this say \"fallback\": true (0 = never)")
    parser.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    for field in dataclasses.fields(ServeOptions):
        parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default, help=field.metadata["help"])
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: at least 1")
    if args.session_store != "memory" and not args.session_store.startswith(("redis://", "rediss://", "unix://")):
        parser.error(f"--session_store {args.session_store!r}: memory or a redis:// URL")
    if args.workers > 1 and args.session_store == "memory":
        parser.error(f"--workers {args.workers} with --session_store memory: each worker would keep sessions of its own, and a "
                     "session's next turn may reach another worker; give --session_store redis://host:port/db")
    return args


def build_app(args) -> FastAPI:
    from backends import open_predictor

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = ServeOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeOptions)})
    predictor = open_predictor(args.model_dir, args.backend, args.cpu_threads, catalogue_files=args.catalogue_file,
                               min_confidence=args.min_confidence)
    logger.info("serving %s on %s (context turns %d, sessions in %s) at http://%s:%d", args.model_dir, args.backend,
                predictor.task.context_turns, session_store_name(args.session_store), args.host, args.port)
    # the directory as open_predictor read it
    return create_app(predictor, predictor.exported, options, args.backend, args.session_store)


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory): serve.py's arguments from the environment."""
    return build_app(parse_args(json.loads(os.environ[WORKER_ARGV])))


class WholeUrlHttpTools(HttpToolsProtocol):
    """uvicorn 0.16's httptools protocol, parsing the request target once it has all of it.

    httptools hands the request line over in as many pieces as it arrived in reads; uvicorn 0.16 parsed
    each piece as the whole URL, so a request line split across TCP segments (a slow client, a long
    URL) was refused and the connection reset (uvicorn issue 1262, fixed upstream in 0.17.5 by pull
    request 1263 in the same way; the uvicorn pin is held by fastdeploy-tools, requirements.txt). A
    target over MAX_REQUEST_TARGET bytes is answered 414: httptools' URL parser counts in 16 bits and
    would hand back a longer one cut short, another path."""

    def on_message_begin(self):
        self.url, self.headers, self.expect_100_continue = b"", [], False

    def on_url(self, url: bytes):
        self.url += url

    def on_headers_complete(self):
        headers, expect_100_continue = self.headers, self.expect_100_continue
        length = len(self.url)
        # builds the request's scope (and clears what it read so far)
        HttpToolsProtocol.on_url(self, self.url if length <= MAX_REQUEST_TARGET else b"/")
        if length > MAX_REQUEST_TARGET:
            self.scope[TARGET_TOO_LONG] = length  # ParseRoutes answers 414
        self.headers = self.scope["headers"] = headers
        self.expect_100_continue = expect_100_continue
        super().on_headers_complete()


def run_workers(args, argv) -> None:
    """`--workers` processes on one socket, each loading its own model; a worker that dies (killed,
    crashed) is replaced, which uvicorn 0.16's own supervisor does not do. SIGTERM or Ctrl-C stops them
    all, each finishing its requests in flight."""
    import uvicorn
    from uvicorn.subprocess import get_subprocess
    from uvicorn.supervisors.multiprocess import Multiprocess

    class Workers(Multiprocess):
        def run(self):
            self.startup()
            while not self.should_exit.wait(0.5):
                for i, process in enumerate(self.processes):
                    if not process.is_alive():
                        logger.warning("worker pid %s exited with code %s; starting another", process.pid, process.exitcode)
                        self.processes[i] = get_subprocess(config=self.config, target=self.target, sockets=self.sockets)
                        self.processes[i].start()
            self.shutdown()

    os.environ[WORKER_ARGV] = json.dumps(argv)
    config = uvicorn.Config("serve:worker_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                            log_level=args.log_level, access_log=False, log_config=None, loop="uvloop", http=WholeUrlHttpTools)
    Workers(config, target=uvicorn.Server(config).run, sockets=[config.bind_socket()]).run()


def main(argv=None):
    import sys

    import uvicorn

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.workers > 1:
        return run_workers(args, argv)
    # uvloop's event loop and httptools' parser (requirements.txt): the pure-Python ones cost more per request than the model
    uvicorn.run(build_app(args), host=args.host, port=args.port, log_level=args.log_level, access_log=False, log_config=None,
                loop="uvloop", http=WholeUrlHttpTools)


if __name__ == "__main__":
    main()
