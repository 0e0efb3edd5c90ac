"""serve.py: the real server on a free local port, called over HTTP. Its records equal run_eval.py's
(edge cases, context, sessions); sessions stay apart; concurrent requests share model calls;
hundreds of malformed requests get a 4xx and a JSON error and leave it answering correctly; SIGTERM
finishes a request in flight. The session store and the batcher are also tested in process."""
import asyncio
import http.client
import json
import os
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import SYNTHETIC_LABELS, Server, assert_same_records

import backends
import predictor
import run_eval
import serve
import sessions
import task

TEXTS = ["导航去北京", "取消", "打电话给老王", "播放周杰伦的稻香", "退出"]


@pytest.fixture(scope="module")
def model_dir(trained):
    return os.path.join(trained, "infer_model")


@pytest.fixture(scope="module")
def server(model_dir):
    s = Server(model_dir, "--max_wait_ms", "5")
    yield s
    assert s.stop() == 0, s.proc.stderr.read()[-3000:]


def run_eval_records(model_dir, tmp_path, *args):
    out = tmp_path / "records.jsonl"
    run_eval.main(["--model_dir", model_dir, "--output_file", str(out), *args])
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_metadata_health_and_openapi(server, model_dir):
    assert server.call("GET", "/v1/health") == (200, {"status": "ok"})
    assert server.call("GET", "/v1/ready") == (200, {"ready": True, "session_store": "ok"})
    status, meta = server.call("GET", "/v1/model")
    assert meta["session_store"] == "memory"
    labels = serve.export_format.read(model_dir).task.labels
    assert status == 200 and meta["intents"] == labels.intents and meta["backend"] == backends.FRONT_END_BACKEND
    assert meta["context_turns"] == 1 and meta["format_version"] == serve.export_format.FORMAT_VERSION
    assert meta["limits"]["max_wait_ms"] == 5 and "last 1 utterance" in meta["context"]
    status, spec = server.call("GET", "/openapi.json")
    schemas = spec["components"]["schemas"]
    body = spec["paths"]["/v1/parse"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Utterance"} and set(schemas["Utterance"]["properties"]) == {
        "text",
        "context",
        "session_id",
        "turn",
    }
    batch_items = schemas["BatchRequest"]["properties"]["utterances"]["items"]
    assert batch_items == {"$ref": "#/components/schemas/Utterance"}
    answer = spec["paths"]["/v1/parse"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(schemas[answer["$ref"].split("/")[-1]]["properties"]) == {
        "session_id", "text", "intent", "confidence", "intent_ranking", "slots", "fallback"}
    assert {"400", "404", "409", "413", "422"} <= set(spec["paths"]["/v1/parse"]["post"]["responses"])


def test_edge_cases_answered_as_run_eval(server, model_dir, edge_cases, tmp_path):
    path = tmp_path / "edge.txt"
    path.write_text("".join(t + "\n" for t in edge_cases), encoding="utf-8")
    reference = run_eval_records(model_dir, tmp_path, "--input_file", str(path))
    answers = []
    for text, expected in zip(edge_cases, reference):
        status, record = server.call("POST", "/v1/parse", {"text": text})
        if "error" in expected:  # empty, invisible-only, over-long: a 422 with run_eval's error text, never a guess
            assert (status, record) == (422, {"error": expected["error"], "items": [{"index": 0, "error": expected["error"]}]})
        else:
            assert status == 200
            answers.append(record)
    predicted = [r for r in reference if "error" not in r]
    assert_same_records(answers, predicted)
    status, batch = server.call("POST", "/v1/parse/batch", {"utterances": [{"text": r["text"]} for r in predicted]})
    assert status == 200
    assert_same_records(batch["results"], predicted)


def test_stateless_context_as_run_eval(server, model_dir, tmp_path):
    context = ["打电话给老王", "导航去北京"]
    expected = run_eval_records(model_dir, tmp_path, *[a for t in TEXTS for a in ("--text", t)],
                                *[a for c in context for a in ("--context", c)])
    got = [server.call("POST", "/v1/parse", {"text": t, "context": context})[1] for t in TEXTS]
    assert_same_records(got, expected)
    without = [server.call("POST", "/v1/parse", {"text": t})[1] for t in TEXTS]
    assert_same_records(without, run_eval_records(model_dir, tmp_path, *[a for t in TEXTS for a in ("--text", t)]))


def test_interleaved_sessions_never_mix(server, model_dir, tmp_path):
    turns = [("a", "导航去北京"), ("b", "播放周杰伦的稻香"), ("a", "取消"), ("b", "取消"), ("a", "打电话给老王"), ("b", "退出")]
    sessions_file = tmp_path / "turns.jsonl"
    sessions_file.write_text(
        "".join(json.dumps({"session_id": s, "text": t}, ensure_ascii=False) + "\n" for s, t in turns), encoding="utf-8"
    )
    expected = run_eval_records(model_dir, tmp_path, "--sessions_file", str(sessions_file))
    ids = {}
    for name in "ab":
        status, created = server.call("POST", "/v1/sessions")
        assert status == 201 and created["context_turns"] == 1
        ids[name] = created["session_id"]
    got = []
    for name, text in turns:
        status, record = server.call("POST", "/v1/parse", {"text": text, "session_id": ids[name]})
        assert status == 200 and record["session_id"] == ids[name]
        got.append({**record, "session_id": name})
    assert_same_records(got, expected)
    # the same conversation in one batch request: each turn sees the earlier ones of its session
    ids = {name: server.call("POST", "/v1/sessions")[1]["session_id"] for name in "ab"}
    status, batch = server.call("POST", "/v1/parse/batch", {"utterances": [{"text": t, "session_id": ids[n]} for n, t in turns]})
    assert status == 200
    assert_same_records([{**r, "session_id": n} for (n, _), r in zip(turns, batch["results"])], expected)
    # ended and unknown sessions are refused, not answered without their context
    assert server.call("DELETE", f"/v1/sessions/{ids['a']}")[0] == 204
    for sid in (ids["a"], "no-such-session"):
        status, error = server.call("POST", "/v1/parse", {"text": "取消", "session_id": sid})
        assert status == 404 and "unknown or expired session_id" in error["error"]
    assert server.call("DELETE", "/v1/sessions/no-such-session")[0] == 404
    status, error = server.call("POST", "/v1/parse", {"text": "取消", "session_id": ids["b"], "context": ["导航去北京"]})
    assert status == 422 and error["items"] == [{"index": 0, "error": "give either context or session_id, not both"}]


def test_one_request_at_a_time_is_answered_on_the_event_loop(server, model_dir, tmp_path):
    """A client alone gets its answers without the hop to the model thread (MicroBatcher's inline
    path) — the same records — unless the service was asked to wait for company (--max_wait_ms, as
    the module's server is)."""
    texts = [TEXTS[i % len(TEXTS)] + "吧" * (i % 3) for i in range(12)]
    expected = run_eval_records(model_dir, tmp_path, *[a for t in texts for a in ("--text", t)])
    default = Server(model_dir)
    try:
        for s, inline_expected in ((default, [1] * len(texts)), (server, [0] * len(texts))):
            answers, inline = [], []
            for text in texts:
                before = s.call("GET", "/v1/stats")[1]["model_calls_inline"]
                answers.append(s.call("POST", "/v1/parse", {"text": text}))
                inline.append(s.call("GET", "/v1/stats")[1]["model_calls_inline"] - before)
            assert [status for status, _ in answers] == [200] * len(texts)
            assert_same_records([record for _, record in answers], expected)
            assert inline == inline_expected
    finally:
        assert default.stop() == 0


def test_concurrent_requests_share_model_calls(server, model_dir, tmp_path):
    texts = [TEXTS[i % len(TEXTS)] + "吧" * (i % 3) for i in range(64)]
    expected = run_eval_records(model_dir, tmp_path, *[a for t in texts for a in ("--text", t)])
    before = server.call("GET", "/v1/stats")[1]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda t: server.call("POST", "/v1/parse", {"text": t}), texts))
    after = server.call("GET", "/v1/stats")[1]
    assert [status for status, _ in answers] == [200] * len(texts)
    assert_same_records([record for _, record in answers], expected)
    calls = after["model_calls"] - before["model_calls"]
    assert after["utterances"] - before["utterances"] == len(texts) and calls < len(texts) / 2, (calls, after)


def malformed_requests(seed=7):
    """(description, method, path, body bytes, headers) of requests the service must refuse with a 4xx."""
    rng = random.Random(seed)
    valid = json.dumps({"text": "导航去北京"}, ensure_ascii=False).encode("utf-8")
    cases = []

    def add(what, body, path="/v1/parse", method="POST", headers=None):
        cases.append((what, method, path, body if isinstance(body, bytes) else json.dumps(body).encode("utf-8"),
                      headers or {"Content-Type": "application/json"}))

    for n in range(1, len(valid)):
        add(f"truncated at byte {n}", valid[:n])
    for bad in (b"\xff", b"\xc3\x28", b"\xe5\xaf", b"\xed\xa0\x80", b"\x80abc"):
        add(f"invalid UTF-8 {bad!r}", b'{"text": "' + bad + b'"}')
        add(f"invalid UTF-8 {bad!r} in context", b'{"text": "a", "context": ["' + bad + b'"]}')
    not_a_string = [None, 1, -3.5, True, [], ["导航"], {}, {"text": "x"}]
    for value in not_a_string:
        add(f"text {value!r}", {"text": value})
        if value is not None:  # "session_id": null is no session, as when it is left out
            add(f"session_id {value!r}", {"text": "导航去北京", "session_id": value})
        add(f"batch utterances {value!r}", {"utterances": value if value != [] else [{"txt": 1}]}, "/v1/parse/batch")
    for value in (1, "导航", True, {}, [1], [None], [["导航"]], [{"text": "导航"}]):  # context: a list of strings only
        add(f"context {value!r}", {"text": "导航去北京", "context": value})
    for value in (None, 1, -3.5, True, [], ["导航"], "导航去北京", [{"text": "x"}]):  # a body is an object
        add(f"body {value!r}", value)
    for body in (b"", b"null", b"[]", b'"text"', b"{}", b'{"text": NaN}', b'{"text": "a", "context": [Infinity]}',
                 b'{"text": "\\ud800"}', b'{"text": "a", "context": ["\\udfff"]}', b'{"text": "a", "extra": 1}',
                 b'{"Text": "a"}', b'{"text": "a"', b"{'text': 'a'}", b'{"text": "a"}}', b"\xef\xbb\xbf" + valid):
        add(f"body {body[:30]!r}", body)
    for text in ("", " ", "\u200b", "\u0000", "\ufeff\u3000", "a" * 600):
        add(f"text {text[:5]!r}…", {"text": text})
        add(f"batch item {text[:5]!r}…", {"utterances": [{"text": "导航去北京"}, {"text": text}]}, "/v1/parse/batch")
    add("over 64 KiB", {"text": "导" * 30000})
    add("65 utterances", {"utterances": [{"text": "导航"}] * 65}, "/v1/parse/batch")
    add("17 context utterances", {"text": "取消", "context": ["导航"] * 17})
    add("declared length over the limit", valid, headers={"Content-Type": "application/json", "Content-Length": "999999999"})
    add("session id 65 characters", {"text": "a", "session_id": "x" * 65})
    def random_json(depth=0):
        kind = rng.choice(["null", "int", "float", "str", "list", "dict"] if depth < 3 else ["null", "int", "str"])
        if kind in ("list", "dict"):
            items = [random_json(depth + 1) for _ in range(rng.randrange(4))]
            return items if kind == "list" else {rng.choice(["text", "context", "session_id", "x"]): v for v in items}
        return {"null": None, "int": rng.randrange(-9, 9), "float": rng.random(), "str": rng.choice(["", "导航", "\u200b"])}[kind]

    while len([c for c in cases if c[0].startswith("random JSON")]) < 40:  # random JSON that is no valid request
        value = random_json()
        try:
            serve.Utterance.model_validate(value)
        except Exception:
            add(f"random JSON {value!r:.40}", value)
    for i in range(60):  # random bytes, and random bytes inside a valid body
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        add(f"random bytes #{i}", noise if i % 2 else valid[:8] + noise + valid[8:])
    add("GET a POST route", b"", method="GET")
    add("unknown route", valid, path="/v1/nope")
    add("PUT sessions", b"", path="/v1/sessions", method="PUT")
    return cases


def test_malformed_requests_get_a_4xx_and_change_nothing(server):
    status, good = server.call("POST", "/v1/parse", {"text": "导航去北京", "context": ["打电话给老王"]})
    assert status == 200
    cases = malformed_requests()
    assert len(cases) >= 200
    failures = []
    for what, method, path, body, headers in cases:
        if what == "declared length over the limit":
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            conn.putrequest(method, path)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            response = conn.getresponse()
            status, answer = response.status, json.loads(response.read())
            conn.close()
        else:
            status, answer = server.call(method, path, body, headers)
        valid_after_noise = what.startswith("random bytes") and status == 200  # noise may still spell a valid request
        if not valid_after_noise and not (400 <= status < 500 and isinstance(answer, dict) and isinstance(answer.get("error"), str)):
            failures.append((what, status, answer))
    assert not failures, failures[:5]
    assert server.call("POST", "/v1/parse", {"text": "导航去北京", "context": ["打电话给老王"]}) == (200, good)
    assert server.call("GET", "/v1/ready")[0] == 200
    errors = server.call("GET", "/v1/stats")[1]["errors"]
    assert "http_500" not in errors and sum(errors.values()) >= 200


def test_hostile_bodies_get_a_4xx_and_are_not_echoed(server):
    """990 nested brackets in a 2 KB body (a RecursionError, once a 500 with a traceback), a session
    id of 70,000 characters (once echoed whole), a client that hangs up mid-body (once counted as
    http_500)."""
    before = server.call("GET", "/v1/stats")[1]
    status, error = server.call("POST", "/v1/parse", b"[" * 990 + b"]" * 990)
    assert status == 400 and "nested too deeply" in error["error"]
    status, error = server.call("DELETE", "/v1/sessions/" + "x" * 70000)
    assert status == 414 and len(json.dumps(error)) < 300, (status, str(error)[:300])
    status, error = server.call("DELETE", "/v1/sessions/" + "y" * 3000)
    assert status == 404 and "(3000 characters)" in error["error"] and len(error["error"]) < 200
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/parse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"text\": ")
    deadline = time.time() + 30
    while server.call("GET", "/v1/stats")[1]["client_disconnected"] == before["client_disconnected"] and time.time() < deadline:
        time.sleep(0.2)
    after = server.call("GET", "/v1/stats")[1]
    assert after["client_disconnected"] == before["client_disconnected"] + 1 and "http_500" not in after["errors"]


def test_a_request_that_arrives_in_pieces_is_answered_whole(server):
    """A request line, headers and body split across TCP segments (a slow client; a long URL) are one
    request: uvicorn 0.16's httptools protocol parsed each piece of the request line as the URL and
    reset the connection (serve.WholeUrlHttpTools)."""
    expected = server.call("POST", "/v1/parse", {"text": "导航去北京"})
    body = json.dumps({"text": "导航去北京"}, ensure_ascii=False).encode("utf-8")
    request = (b"POST /v1/pa", b"rse HTTP/1.1\r\nHo", b"st: x\r\nContent-Type: application/json\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body[:5], body[5:])
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in request:
            sock.sendall(piece)
            time.sleep(0.2)  # each piece its own read on the server
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, json.loads(response.read())) == expected
    status, error = server.call("DELETE", "/v1/sessions/" + "z" * 16000)  # over one read
    assert status == 404 and "(16000 characters)" in error["error"]
    assert server.call("GET", "/v1/health?" + "q" * 65535)[0] == 414  # httptools' parser alone: "/v1/health", 200
    status, error = server.call("DELETE", "/v1/sessions/" + "z" * 200_000)
    assert status == 414 and error == {"error": f"request target of {len('/v1/sessions/') + 200_000} bytes: at most 16384"}


def test_a_numbered_turn_sent_again_is_answered_as_the_first_time(server):
    """A client that numbers its turns can send a request again when its answer was lost: the same
    answer, nothing stored twice; a number that fits neither the next turn nor the last request is a
    409 naming the session's count, a number without a session or out of order in a batch a 422."""
    sid = server.call("POST", "/v1/sessions")[1]["session_id"]
    first = server.call("POST", "/v1/parse", {"text": "导航去北京", "session_id": sid, "turn": 0})
    assert first[0] == 200 and server.call("POST", "/v1/parse", {"text": "导航去北京", "session_id": sid, "turn": 0}) == first
    second = server.call("POST", "/v1/parse", {"text": "取消", "session_id": sid, "turn": 1})
    stateless = server.call("POST", "/v1/parse", {"text": "取消", "context": ["导航去北京"]})[1]
    assert second == (200, {**stateless, "session_id": sid})  # its context: the first turn, once
    assert server.call("POST", "/v1/parse", {"text": "取消", "session_id": sid, "turn": 1}) == second
    status, error = server.call("POST", "/v1/parse", {"text": "取消", "session_id": sid, "turn": 5})
    assert status == 409 and "has had 2 turns" in error["error"]
    assert server.call("POST", "/v1/parse", {"text": "退出", "session_id": sid, "turn": 1})[0] == 409  # not the last request's text
    assert server.call("POST", "/v1/parse", {"text": "取消", "context": [], "turn": 0})[0] == 422
    status, error = server.call("POST", "/v1/parse/batch", {"utterances": [{"text": "一", "session_id": sid, "turn": 2},
                                                                           {"text": "二", "session_id": sid, "turn": 4}]})
    assert status == 422 and "one after another" in error["items"][0]["error"]
    status, answer = server.call("POST", "/v1/parse/batch", {"utterances": [{"text": "一", "session_id": sid, "turn": 2},
                                                                           {"text": "二", "session_id": sid, "turn": 3}]})
    assert status == 200 and len(answer["results"]) == 2


def test_a_refused_turn_is_no_turn_of_the_session(server, model_dir, tmp_path):
    """The service refuses a blank turn (422) and leaves it out of the session; the turn after it is
    answered as run_eval.py answers a sessions file holding the blank turn (the one definition of a
    session turn)."""
    turns = [("a", "导航去北京"), ("a", "   "), ("a", "取消")]
    sessions_file = tmp_path / "turns.jsonl"
    sessions_file.write_text(
        "".join(json.dumps({"session_id": s, "text": t}, ensure_ascii=False) + "\n" for s, t in turns), encoding="utf-8"
    )
    expected = run_eval_records(model_dir, tmp_path, "--sessions_file", str(sessions_file))
    sid = server.call("POST", "/v1/sessions")[1]["session_id"]
    statuses, got = [], []
    for _, text in turns:
        status, record = server.call("POST", "/v1/parse", {"text": text, "session_id": sid})
        statuses.append(status)
        got.append(record)
    assert statuses == [200, 422, 200] and got[1]["error"] == expected[1]["error"] == predictor.EMPTY_UTTERANCE
    assert_same_records([{**r, "session_id": "a"} for r in (got[0], got[2])], [expected[0], expected[2]])


def test_sigterm_finishes_the_request_in_flight(model_dir):
    slow = Server(model_dir, "--max_wait_ms", "3000")  # a lone request waits 3 s in the batcher for company
    answer = {}
    thread = threading.Thread(
        target=lambda: answer.update(zip(("status", "record"), slow.call("POST", "/v1/parse", {"text": "导航去北京"})))
    )
    thread.start()
    while slow.call("GET", "/v1/stats")[1]["in_flight"] != 1:
        time.sleep(0.05)
    slow.proc.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert slow.proc.wait(timeout=60) == 0
    assert answer["status"] == 200 and answer["record"]["text"] == "导航去北京" and "intent" in answer["record"]
    assert slow.call("GET", "/v1/health")[0] == 0  # nothing listens any more


# ----------------------------------------------------------------------------- in process


def test_a_session_brings_its_own_catalogue(server):
    """A driver's contacts given with POST /v1/sessions resolve that session's slots first; other
    sessions and stateless requests keep the model's catalogue; bad entries are a 422 by index."""
    plain = server.call("POST", "/v1/parse", {"text": "打电话给老王"})[1]
    assert [(s["slot"], s["entity"], s["value"], s["resolution"]) for s in plain["slots"]] == [("contact_name", "老王", "老王", "exact")]
    contacts = [{"slot": "contact_name", "value": "王建国", "synonyms": ["老王", "王工"]},
                {"slot": "contact_name", "rule": "pronunciation"}]
    status, created = server.call("POST", "/v1/sessions", {"catalogue": contacts})
    assert status == 201 and created["catalogue_entries"] == 2
    status, record = server.call("POST", "/v1/parse", {"text": "打电话给老王", "session_id": created["session_id"]})
    assert status == 200 and record["slots"][0]["value"] == "王建国" and record["slots"][0]["resolution"] == "catalogue"
    other = server.call("POST", "/v1/sessions")[1]  # no body: no catalogue of its own
    assert other["catalogue_entries"] == 0
    assert server.call("POST", "/v1/parse", {"text": "打电话给老王", "session_id": other["session_id"]})[1]["slots"] == plain["slots"]
    status, error = server.call("POST", "/v1/sessions", {"catalogue": [contacts[0], {"slot": "weather", "value": "晴"}, {"value": "x"}]})
    assert status == 422 and [p["index"] for p in error["items"]] == [1, 2] and "slot type 'weather'" in error["items"][0]["error"]
    assert server.call("POST", "/v1/sessions", {"contacts": []})[0] == 422
    assert server.call("POST", "/v1/sessions", {"catalogue": [contacts[0]] * 2001})[0] == 413  # over the body limit or the entry limit


def test_memory_store_bounds_memory_and_forgets_idle_sessions():
    now = [0.0]
    store = sessions.MemoryStore(turns=2, max_sessions=3, ttl_s=10, build_catalogue=lambda entries: entries, clock=lambda: now[0])

    async def scenario():
        a, b, c = await store.create(), await store.create(), await store.create()
        assert [(await store.take_turns(a, [text])).turns for text in ("一", "二", "三")] == [[], ["一"], ["一", "二"]]
        d = await store.create(["entry"])  # a fourth: b, the least recently used, goes
        with pytest.raises(KeyError):
            await store.take_turns(b, ["一"])
        assert await store.count() == 3 and (await store.take_turns(d, ["一"])).catalogue == ["entry"]
        now[0] = 9.0
        assert (await store.take_turns(a, ["四"])).turns == ["二", "三"]  # the last `turns` only
        now[0] = 15.0  # c and d idle since 0 s, a since 9 s
        assert not await store.exists(c) and not await store.exists(d) and await store.exists(a)
        assert (await store.take_turns(a, ["五"])).turns == ["三", "四"] and await store.count() == 1
        assert await store.delete(a) and not await store.delete(a)

    asyncio.run(scenario())


async def numbered_turns_scenario(store):
    """What take_turns gives for numbered requests (K = 2): in order, sent again, unnumbered, out of
    order, the last number with other texts; the same for every store."""
    a, b = await store.create(), await store.create()
    got = []
    for first, texts in ((0, ["一"]), (1, ["二", "三"]), (1, ["二", "三"]), (3, ["四"]), (3, ["四"]), (4, ["五"]),
                         (4, ["五"]), (None, ["六"]), (3, ["四"]), (2, ["三"]), (6, ["七"]), (9, ["八"]), (6, ["不同"])):
        try:
            got.append((await store.take_turns(a, texts, first)).turns)
        except sessions.TurnConflict as e:
            got.append(f"409: {e.turns}")
    with pytest.raises(sessions.TurnConflict):
        await store.take_turns(b, ["一"], 1)
    assert (await store.take_turns(b, ["一"], 0)).turns == []
    return got


NUMBERED_TURNS = [[], ["一"], ["一"], ["二", "三"], ["二", "三"], ["三", "四"], ["三", "四"], ["四", "五"], "409: 6", "409: 6",
                  ["五", "六"], "409: 7", "409: 7"]


def test_numbered_turns_are_taken_once():
    store = sessions.MemoryStore(turns=2, max_sessions=10, ttl_s=60, build_catalogue=lambda entries: entries)
    assert asyncio.run(numbered_turns_scenario(store)) == NUMBERED_TURNS


def test_batcher_groups_requests_in_order_and_survives_a_failing_call():
    calls = []

    def predict(texts, histories):
        calls.append(list(texts))
        if "boom" in texts:
            raise RuntimeError("model failed")
        return [{"text": t, "history": h} for t, h in zip(texts, histories)]

    async def scenario():
        batcher = serve.MicroBatcher(predict, max_batch_size=4, max_wait_ms=50)
        batcher.start()
        small = [batcher.submit([f"t{i}"], [[f"h{i}"]]) for i in range(3)]
        large = batcher.submit([f"L{i}" for i in range(6)], [[]] * 6)  # more than a batch: runs alone
        results = await asyncio.gather(*small, large)
        failing = await asyncio.gather(batcher.submit(["boom"], [[]]), batcher.submit(["x"], [[]]), return_exceptions=True)
        after = await batcher.submit(["ok"], [[]])
        await batcher.stop()
        return results, failing, after

    results, failing, after = asyncio.run(scenario())
    assert [r[0]["text"] for r in results[:3]] == ["t0", "t1", "t2"] and results[0][0]["history"] == ["h0"]
    assert [r["text"] for r in results[3]] == [f"L{i}" for i in range(6)]
    assert calls[:2] == [["t0", "t1", "t2"], [f"L{i}" for i in range(6)]]
    assert all(isinstance(f, RuntimeError) for f in failing)  # both shared the failing call
    assert after == [{"text": "ok", "history": []}]


def test_metadata_says_when_context_is_ignored():
    """A model trained without context: sessions and context are accepted and ignored, and /v1/model says so."""
    labels = SYNTHETIC_LABELS
    no_context = task.Task(task.CharTokenizer.build(["导航去北京"]), labels, 16, task.any_slot_types(labels))
    exported = serve.export_format.ExportedModel("model_dir", {"format_version": serve.export_format.FORMAT_VERSION}, no_context)
    meta = serve.model_metadata(predictor.Predictor(no_context, logits_fn=None), exported, "fastdeploy-ort", serve.ServeOptions())
    assert meta["context_turns"] == 0 and meta["context"].startswith("ignored: the model was trained without session context")
    assert meta["slot_types"] == labels.slot_types and meta["limits"]["max_batch_size"] == 32 and meta["backend"] == "fastdeploy-ort"


def test_options_are_checked():
    with pytest.raises(ValueError, match="max_batch_size"):
        serve.ServeOptions(max_batch_size=0)
    with pytest.raises(ValueError, match="session_ttl_s"):
        serve.ServeOptions(session_ttl_s=-1)


def test_a_runtime_fault_is_a_500_and_the_service_goes_on(model_dir):
    """The parse routes answered ahead of FastAPI (serve.ParseRoutes): a model call that fails is a
    500 with a JSON error naming no more than the exception's type, counted; the next request is
    answered; other paths still reach FastAPI."""
    from starlette.testclient import TestClient

    model = backends.open_predictor(model_dir, "onnxruntime", threads=1)
    healthy = model.logits_fn

    def logits(ids):
        if failing:
            raise RuntimeError("secret detail")
        return healthy(ids)

    model.logits_fn, failing = logits, True
    with TestClient(serve.create_app(model, model.exported)) as client:
        response = client.post("/v1/parse", json={"text": "导航去北京"})
        assert response.status_code == 500 and response.json() == {"error": "internal error: RuntimeError"}
        assert response.headers["content-type"] == "application/json"
        failing = False
        response = client.post("/v1/parse/batch", json={"utterances": [{"text": "导航去北京"}, {"text": "取消"}]})
        assert response.status_code == 200 and [r["text"] for r in response.json()["results"]] == ["导航去北京", "取消"]
        assert client.post("/v1/parse", content=b"[1,").json()["error"].startswith("request body is not JSON")
        assert client.get("/v1/parse").status_code == 405  # FastAPI's answer: the route takes POST
        stats = client.get("/v1/stats").json()
        assert stats["errors"] == {"http_500": 1, "http_400": 1, "http_405": 1} and stats["requests"] == 3


def test_several_workers_need_a_shared_session_store(capsys):
    with pytest.raises(SystemExit):
        serve.parse_args(["--model_dir", "m", "--workers", "2"])
    assert "--workers 2 with --session_store memory: each worker would keep sessions of its own" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.parse_args(["--model_dir", "m", "--session_store", "mysql://x"])
    assert "memory or a redis:// URL" in capsys.readouterr().err
    args = serve.parse_args(["--model_dir", "m", "--workers", "2", "--session_store", "redis://:secret@127.0.0.1:6380/1"])
    assert args.workers == 2 and serve.session_store_name(args.session_store) == "redis://127.0.0.1:6380/1"  # no password shown
