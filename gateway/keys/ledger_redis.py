"""Key records and the budget/rate ledger on the shared Redis.

Key layout, all under the state store's one hash tag (``{gw}``), so every script and
pipeline touches one Redis Cluster slot:

    {gw}:keys                hash  alias -> key record JSON (digest, never the secret)
    {gw}:teams               hash  team -> team record JSON
    {gw}:kspend:<alias>:<p>  str   nano-USD settled + reserved in period p (see periods.py)
    {gw}:tspend:<team>:<p>   str   the same for a team's keys together
    {gw}:krq:<alias>         zset  request id -> ms: the key's requests in the last 60 s
    {gw}:ktk:<alias>         zset  "id|tokens" -> ms: their tokens
    {gw}:kseq:<process>      str   last settle batch applied for one process

The request path makes one call (``reserve``, one script). Settlements are buffered and
pushed with the periodic ``sync`` in numbered batches that the script applies once (the
approach of ``gateway.state.redis_store``): a batch whose reply was lost is resent as is
and skipped if it already ran, so spend incurred during an outage lands exactly once
when Redis is back.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict

import orjson
from redis.exceptions import NoScriptError

from ..state.redis_client import UNAVAILABLE, connect, load_scripts, refresh_topology
from ..state.redis_store import hash_tag
from .ledger import WINDOW_MS, LocalLedger, Reservation
from .records import KeyRecord, TeamRecord, _budget

log = logging.getLogger(__name__)
SEQ_TTL_S = 7 * 86400

# KEYS: keys hash, key spend, team spend, requests zset, tokens zset, marker (spend keys
# may be unused placeholders). The marker says "this reservation ran" for MARKER_MS: a
# call whose reply was lost is settled by the next batch according to it.  ARGV: alias, member, now_ms, reserve, tokens, key_budget,
# team_budget, rpm, tpm (-1 = none), key ttl, team ttl (0 = none), window_ms.
_RESERVE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {'revoked'} end
local now, window = tonumber(ARGV[3]), tonumber(ARGV[12])
local rpm, tpm = tonumber(ARGV[8]), tonumber(ARGV[9])
local tokens = tonumber(ARGV[5])
local limited = rpm >= 0 or tpm >= 0
local nreq, oreq, used, otok, rows = 0, now, 0, now, 0
if limited then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - window)
  nreq = redis.call('ZCARD', KEYS[4])
  if nreq > 0 then oreq = tonumber(redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')[2]) end
end
if tpm >= 0 then
  local flat = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
  for i = 1, #flat, 2 do used = used + tonumber(string.match(flat[i], '|(%d+)$')) end
  rows = #flat / 2
  if rows > 0 then otok = tonumber(flat[2]) end
end
-- with rpm/tpm, every answer carries the window (the x-ratelimit-* headers: see ledger.py)
local function answer(kind, detail)
  if limited then return {kind, detail, nreq, oreq, used, otok} end
  return {kind, detail}
end
if rpm >= 0 and nreq >= rpm then return answer('rpm', oreq) end
if tpm >= 0 and rows > 0 and used + tokens > tpm then return answer('tpm', otok) end
local kb, tb = tonumber(ARGV[6]), tonumber(ARGV[7])
if kb >= 0 then
  local s = tonumber(redis.call('GET', KEYS[2]) or '0')
  if s >= kb then return answer('key', tostring(s)) end
end
if tb >= 0 then
  local s = tonumber(redis.call('GET', KEYS[3]) or '0')
  if s >= tb then return answer('team', tostring(s)) end
end
local reserve = tonumber(ARGV[4])
for i, k in ipairs({KEYS[2], KEYS[3]}) do
  if ARGV[5 + i] ~= '-2' then
    redis.call('INCRBY', k, reserve)
    if tonumber(ARGV[9 + i]) > 0 then redis.call('EXPIRE', k, ARGV[9 + i]) end
  end
end
if limited then
  redis.call('ZADD', KEYS[4], now, ARGV[2])
  redis.call('ZADD', KEYS[5], now, ARGV[2] .. '|' .. ARGV[5])
  redis.call('PEXPIRE', KEYS[4], window + 1000)
  redis.call('PEXPIRE', KEYS[5], window + 1000)
  nreq = nreq + 1
  if tpm >= 0 then used = used + tokens end
end
if reserve > 0 then redis.call('SET', KEYS[6], '1', 'PX', ARGV[13]) end
if limited then return answer('ok', 0) end
return {'ok'}
"""

# KEYS: seq, n spend keys, then per unsure reservation: its marker and its m spend keys.
# ARGV: seq, seq_ttl, n, per spend key: delta, ttl (0 = none); then per unsure
# reservation: m, reserved nano-USD. An unsure reservation (its reply was lost) is
# counted locally too: if its marker says it also ran in Redis, it is taken back once.
_SETTLE = """
if tonumber(ARGV[1]) <= tonumber(redis.call('GET', KEYS[1]) or '0') then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local ki, ai = 2, 4
for j = 1, tonumber(ARGV[3]) do
  redis.call('INCRBY', KEYS[ki], ARGV[ai])
  if tonumber(ARGV[ai + 1]) > 0 then redis.call('EXPIRE', KEYS[ki], ARGV[ai + 1]) end
  ki, ai = ki + 1, ai + 2
end
while ki <= #KEYS do
  local ran = redis.call('DEL', KEYS[ki]) == 1
  local m, reserved = tonumber(ARGV[ai]), tonumber(ARGV[ai + 1])
  ki, ai = ki + 1, ai + 2
  for s = 1, m do
    if ran then redis.call('DECRBY', KEYS[ki], reserved) end
    ki = ki + 1
  end
end
return 1
"""
MARKER_MS = 60_000  # outlives the lost reply's script by far more than one sync interval


class RedisLedger:
    kind = "redis"

    def __init__(self, state_cfg):
        self._url = state_cfg.redis_url
        self._cluster = bool(getattr(state_cfg, "redis_cluster", False))
        self._host = self._url.rsplit("@", 1)[-1]
        self.tag = hash_tag(state_cfg.key_prefix)
        self._k_keys, self._k_teams = f"{self.tag}:keys", f"{self.tag}:teams"
        self._k_seq = f"{self.tag}:kseq:{uuid.uuid4().hex}"
        self._redis = None
        self._sha: dict[str, str] = {}
        self.local = LocalLedger()  # the view: Redis as last read + what this process reserved since
        self._pending: dict[str, int] = defaultdict(int)  # slot -> nano-USD not yet pushed
        self._ttl: dict[str, int] = {}
        self._outstanding: tuple[int, dict[str, int], list] | None = None
        self._unsure: list[tuple[str, tuple[str, ...], int]] = []  # (marker, slots, reserved nano-USD)
        self._seq = 0
        self.healthy = True
        self._down_since = 0.0

    def slot(self, scope: str, name: str, period: str) -> str:
        return f"{self.tag}:{'kspend' if scope == 'key' else 'tspend'}:{name}:{period}"

    async def start(self) -> None:
        self._redis = connect(self._url, self._cluster, f"gateway-keys-{self._k_seq[-8:]}")
        try:
            await self._load_scripts()
        except UNAVAILABLE as exc:
            self._down(exc)

    async def close(self) -> None:
        if self._redis is not None:
            for _ in range(2):  # the outstanding batch, then what piled up behind it
                if not (self._outstanding or any(self._pending.values())) or not await self._push_only():
                    break
            if self._outstanding or any(self._pending.values()):
                log.error("key ledger closed with unpushed spend (Redis unreachable): %d nano-USD lost",
                          sum(self._pending.values()) + sum((self._outstanding or (0, {}, []))[1].values()))
            await self._redis.aclose()
            self._redis = None

    async def _load_scripts(self) -> None:
        self._sha.update(await load_scripts(self._redis, {"reserve": _RESERVE, "settle": _SETTLE}, key=self._k_keys))

    # -- records -------------------------------------------------------------------------
    async def put_key(self, rec: KeyRecord, create: bool) -> bool:
        value = orjson.dumps(rec.to_json())
        if create:
            return bool(await self._redis.hsetnx(self._k_keys, rec.alias, value))
        await self._redis.hset(self._k_keys, rec.alias, value)
        return True

    async def delete_key(self, alias: str) -> bool:
        return bool(await self._redis.hdel(self._k_keys, alias))

    async def put_team(self, team: TeamRecord) -> None:
        await self._redis.hset(self._k_teams, team.name, orjson.dumps(team.public()))

    # -- request path --------------------------------------------------------------------
    async def reserve(self, r: Reservation, exists: bool, local_ok: bool = True) -> tuple:
        """One script call; while Redis is down, this process's view decides (and the
        reservation is pushed with the settlement once Redis is back)."""
        if self.healthy and self._redis is not None:
            marker = f"{self.tag}:kr:{r.member}"
            keys = [self._k_keys, r.key_slot or f"{self.tag}:none", r.team_slot or f"{self.tag}:none",
                    f"{self.tag}:krq:{r.alias}", f"{self.tag}:ktk:{r.alias}", marker]
            args = [r.alias, r.member, r.now_ms, r.reserve_nanos, r.tokens,
                    _or(r.key_budget, r.key_slot), _or(r.team_budget, r.team_slot),
                    -1 if r.rpm is None else r.rpm, -1 if r.tpm is None else r.tpm,
                    r.slot_ttl_s, r.team_ttl_s, WINDOW_MS, MARKER_MS]
            try:
                try:
                    verdict = await self._redis.evalsha(self._sha.get("reserve", ""), len(keys), *keys, *args)
                except NoScriptError:
                    await self._load_scripts()
                    verdict = await self._redis.evalsha(self._sha["reserve"], len(keys), *keys, *args)
            except UNAVAILABLE as exc:
                self._down(exc)
                slots = tuple(s for s in (r.key_slot, r.team_slot) if s is not None)
                if r.reserve_nanos and slots and not isinstance(exc, NoScriptError):
                    self._unsure.append((marker, slots, r.reserve_nanos))  # it may have run: see _SETTLE
            else:
                verdict = tuple(verdict)
                if verdict[0] == "ok":
                    for slot in (r.key_slot, r.team_slot):
                        if slot is not None:
                            self.local.add(slot, r.reserve_nanos)
                return verdict
        if not local_ok:
            return ("unavailable",)
        verdict = self.local.reserve(r, exists)
        if verdict[0] == "ok":
            for slot, ttl in ((r.key_slot, r.slot_ttl_s), (r.team_slot, r.team_ttl_s)):
                if slot is not None:
                    self._pending[slot] += r.reserve_nanos
                    self._ttl[slot] = ttl
        return verdict

    def settle(self, slot: str, delta_nanos: int, ttl_s: int) -> None:
        """Local: pushed by the next ``sync``."""
        self._pending[slot] += delta_nanos
        self._ttl[slot] = ttl_s
        self.local.add(slot, delta_nanos)

    # -- background ----------------------------------------------------------------------
    async def sync(self, slots: list[str]) -> tuple[dict, dict] | None:
        """Push settlements, read records and the spend of ``slots``: one round trip.

        Returns (key records by alias, teams by name), or None while Redis is unreachable."""
        if self._redis is None:
            return None
        batch = self._batch()
        pipe = self._redis.pipeline(transaction=False)
        if batch is not None:
            # execute_command: redis-py 8.1's cluster pipeline refuses pipe.evalsha (see redis_store)
            pipe.execute_command("EVALSHA", self._sha.get("settle", ""), *self._settle_args(batch))
        pipe.hgetall(self._k_keys)
        pipe.hgetall(self._k_teams)
        if slots:
            pipe.execute_command("MGET", *slots)  # one slot (one tag): allowed on a cluster too
        try:
            results = await pipe.execute(raise_on_error=False)
            if batch is not None and isinstance(results[0], NoScriptError):
                await self._load_scripts()
                return None  # nothing applied: resent next time
            for res in results:
                if isinstance(res, Exception):
                    raise res
        except UNAVAILABLE as exc:
            self._down(exc)
            try:
                await refresh_topology(self._redis)  # a cluster failover may have moved our slot
            except UNAVAILABLE:
                pass
            return None
        self._up()
        self._outstanding = None
        if batch is not None:
            results = results[1:]
        keys = {a: KeyRecord.from_json(orjson.loads(v)) for a, v in results[0].items()}
        teams = {}
        for name, v in results[1].items():
            t = orjson.loads(v)
            teams[name] = TeamRecord(name, **_budget(t))
        if slots:
            for slot, value in zip(slots, results[2]):
                # Redis' value plus what is still buffered here (sent in this very batch: included)
                self.local.spent[slot] = int(value or 0) + self._pending.get(slot, 0)
        return keys, teams

    async def _push_only(self) -> bool:
        batch = self._batch()
        if batch is None:
            return True
        try:
            await self._redis.evalsha(self._sha.get("settle", ""), *self._settle_args(batch))
        except UNAVAILABLE:
            return False
        self._outstanding = None
        return True

    def _batch(self):
        if self._outstanding is None:
            deltas = {slot: n for slot, n in self._pending.items() if n}
            unsure, self._unsure = self._unsure, []
            self._pending = defaultdict(int)
            if deltas or unsure:
                self._seq += 1
                self._outstanding = (self._seq, deltas, unsure)
        return self._outstanding

    def _settle_args(self, batch) -> list:
        seq, deltas, unsure = batch
        keys = [self._k_seq, *deltas]
        args = [seq, SEQ_TTL_S, len(deltas)]
        for slot, n in deltas.items():
            args += [n, self._ttl.get(slot, 0)]
        for marker, slots, reserved in unsure:
            keys += [marker, *slots]
            args += [len(slots), reserved]
        return [len(keys), *keys, *args]

    def _down(self, exc) -> None:
        if self.healthy:
            self.healthy, self._down_since = False, time.monotonic()
            log.warning("key ledger: Redis at %s unreachable (%s): budgets and limits run on this process's "
                        "view until it is back", self._host, type(exc).__name__)

    def _up(self) -> None:
        if not self.healthy:
            self.healthy = True
            log.warning("key ledger: Redis at %s back after %.1f s", self._host, time.monotonic() - self._down_since)


def _or(budget: int | None, slot: str | None) -> int:
    """-2: no such slot (nothing reserved there); -1: reserved but unlimited."""
    if slot is None:
        return -2
    return -1 if budget is None else budget
