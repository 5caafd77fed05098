"""Live state shared by every gateway process through one Redis.

    store = RedisStore(StateConfig(redis_url="redis://127.0.0.1:6379/0", key_prefix="gw"))
    await store.start()
    store.record("openai", "gpt-4o-mini", 812, 95, now=time.time())   # sync, local
    store.add_spend("openai", "gpt-4o-mini", Decimal("0.000179"))      # sync, local
    await store.sync(time.time())        # every flush_interval_s: one round trip
    store.volume().window(time.time(), 300)
    await store.close()                  # final flush

With ``state.redis_cluster: true`` the same runs on a Redis Cluster (``redis_client``).

Key layout (one hash tag, so every key lives in one Redis Cluster slot and a pipeline
or script may touch any of them; ``{gw}`` is derived from ``key_prefix``):

    {gw}:vol:<bucket>   hash  "r|p|c" US backend US model -> requests/prompt/completion
                        tokens in 10 s bucket <bucket>; expires HORIZON + 80 s after
                        its last write
    {gw}:spend          hash  backend US model -> integer nano-USD (HINCRBY)
    {gw}:accrued        hash  accrual key -> "accrued until" (unix s, Python repr)
    {gw}:seq:<process>  str   last batch sequence number applied for one process
                        (makes a retried batch a no-op); expires after 7 days
(US is the ASCII unit separator, so model names may hold any other character.)

Delivery: ``sync`` swaps the local buffers out into a numbered batch and applies it with
one Lua script that first checks the process's sequence key. A batch whose send failed
(even after Redis executed it: a lost reply) is resent as is, with the same number, until
Redis acknowledges it, and the script skips it if it already ran: every delta lands
exactly once. The remaining edges are in ``RedisStore``'s docstring.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import ClassVar, Mapping

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import register
from .redis_client import SOCKET_TIMEOUT_S, UNAVAILABLE, connect, is_cluster, load_scripts, refresh_topology
from .volume import BUCKET_S, HORIZON_S, VolumeBuckets, bucket_of

log = logging.getLogger(__name__)

US = "\x1f"  # field separator inside hash fields
KINDS = "rpc"  # requests, prompt tokens, completion tokens: VolumeBuckets' row order
NANO = 9  # spend is stored as integer USD * 10**9

BUCKET_TTL_S = HORIZON_S + 2 * BUCKET_S + 60  # outlives the longest window read + slack
SPEND_TTL_S = 90 * 86400  # ledger of a prefix nobody has written to for 90 days goes away
ACCRUAL_TTL_S = 7 * 86400
SEQ_TTL_S = 7 * 86400  # a batch retried after this long could apply twice (see class doc)
WATCH_TTL_S = 60  # (at least 3 syncs) a watch no replica renewed for this long is over: the next begins afresh
RECENT_S = 30.0  # buckets ending this recently are re-read every sync (late pushes land there)
FULL_CYCLE_S = 60.0  # every older bucket is re-read once per this many seconds
HORIZON_BUCKETS = HORIZON_S // BUCKET_S + 1  # what VolumeBuckets.prune keeps besides the current one

# KEYS: seq, spend, bucket hashes...  ARGV: seq, seq_ttl, spend_ttl, bucket_ttl, then for
# the spend hash and each bucket hash in KEYS order: n, field1, incr1, ... fieldn, incrn.
# Type checks come before any write so a bad key fails the whole batch, not half of it.
_APPLY = """
for k = 2, #KEYS do
  local t = redis.call('TYPE', KEYS[k]).ok
  if t ~= 'hash' and t ~= 'none' then return redis.error_reply('WRONGTYPE ' .. KEYS[k]) end
end
local seq = tonumber(ARGV[1])
if seq <= tonumber(redis.call('GET', KEYS[1]) or '0') then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local i = 5
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  for j = 1, n do redis.call('HINCRBY', KEYS[k], ARGV[i + 2 * j - 1], ARGV[i + 2 * j]) end
  if n > 0 then redis.call('EXPIRE', KEYS[k], k == 2 and ARGV[3] or ARGV[4]) end
  i = i + 2 * n + 1
end
return 1
"""

# KEYS: the watch key.  ARGV: this process's watch start (unix s, as a string), ttl.  Keeps the
# earlier of the two (a plain SET/GET: ZADD LT would need Redis 6.2), renews the ttl, returns it.
_WATCH = """
local cur = redis.call('GET', KEYS[1])
if not cur or tonumber(ARGV[1]) < tonumber(cur) then
  redis.call('SET', KEYS[1], ARGV[1])
  cur = ARGV[1]
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return cur
"""

# KEYS: accrued hash.  ARGV: key, now, fallback ("" or the latest marker this process saw),
# ttl.  The last marker is the larger of Redis' and the fallback: the fallback covers a
# key lost (restart without persistence) or rolled back (restored snapshot).  Markers are
# stored and returned as the caller's strings: Lua's tostring would keep only 14 digits.
# Returns {previous marker or "", marker now stored}.
_CLAIM = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local prev = cur
if ARGV[3] ~= '' and (not cur or tonumber(ARGV[3]) > tonumber(cur)) then prev = ARGV[3] end
local marker = prev
if not prev or tonumber(ARGV[2]) > tonumber(prev) then marker = ARGV[2] end
if marker ~= cur then redis.call('HSET', KEYS[1], ARGV[1], marker) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {prev or '', marker}
"""


def hash_tag(key_prefix: str) -> str:
    """``gw`` -> ``{gw}``; a prefix that already holds a ``{tag}`` is used as is."""
    opening = key_prefix.find("{")  # Redis hashes what lies between the first { and the
    if opening >= 0 and key_prefix.find("}", opening + 1) > opening + 1:  # next }, if non-empty
        return key_prefix
    return "{" + key_prefix + "}"


def nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-NANO)


@dataclass
class _Batch:
    """Deltas swapped out of the local buffers; resent unchanged until acknowledged."""

    seq: int
    spend_nanos: dict[tuple[str, str], int]
    volume: VolumeBuckets


@register
class RedisStore:
    """The StateStore that lets several gateway processes share one Redis.

    ``record``/``add_spend`` only touch local buffers. ``sync(now)`` pushes them and pulls
    everyone's totals in one pipelined round trip; if Redis is down it fails within about
    ``SOCKET_TIMEOUT_S``, logs one warning per outage, keeps everything buffered and pushes
    it once Redis is back. ``claim_accrual`` is one script call and returns 0.0 while Redis
    is unreachable (the time is not lost: the first claim afterwards covers the gap).

    Where exactly-once ends:
    - a batch resent more than ``SEQ_TTL_S`` after Redis ran it (its reply lost, then a
      week-long outage) would apply twice;
    - the local buffers die with the process: at most one flush interval of traffic and
      spend (the whole outage if Redis is down then); ``close`` flushes them, rounding
      each sub-nano remainder to the nearest nano-USD;
    - Redis must keep its data: without AOF a restart empties the ledger and windows, and
      a failover to a lagging replica drops acknowledged batches (the sequence keys go
      with them, so nothing applies twice, but nothing is resent either);
    - ``claim_accrual`` whose reply is lost after the script ran (a dropped connection at
      that instant) returns 0.0 but moved the marker: that slice is never handed out;
    - after Redis loses the accrual markers, the first claimer starts from the latest
      marker it saw (its own claims, and all markers read at each sync): time another
      process claimed after that read, at most one flush interval, is handed out twice.
    On a Redis Cluster (``state.redis_cluster``) the same holds: every key shares one slot,
    so the batch script runs whole on one master or not at all. While that slot migrates,
    a batch whose keys straddle two masters gets TRYAGAIN, fails (~1 s: redis-py's retries,
    then reads redirected one by one) and is resent; after a failure the slot map is
    re-read, so a failover to a replica is followed even when the old master hangs.
    Call ``record``/``add_spend`` from the event loop's thread (no locks on the buffers).
    """

    kind: ClassVar[str] = "redis"

    def __init__(self, state_cfg):
        if not state_cfg.redis_url:
            raise ValueError("state.redis_url: RedisStore needs a Redis URL")
        self._url = state_cfg.redis_url
        self._cluster = bool(getattr(state_cfg, "redis_cluster", False))
        self._host = self._url.rsplit("@", 1)[-1]  # for logs: never a password
        tag = hash_tag(state_cfg.key_prefix)
        # Fresh per instance: batch numbers restart at 1, so a reused id would be deduplicated.
        self._process = uuid.uuid4().hex
        self._k_spend, self._k_accrued = f"{tag}:spend", f"{tag}:accrued"
        self._k_seq = f"{tag}:seq:{self._process}"
        self._k_vol = f"{tag}:vol:"
        self._k_watch = f"{tag}:watching_since"  # when the replicas' shared watch of traffic began
        self._watch_ttl_s = max(WATCH_TTL_S, round(3 * float(state_cfg.flush_interval_s)))
        interval = max(float(state_cfg.flush_interval_s), 0.001)
        self._recent_s = max(RECENT_S, 3 * interval)
        self._cycle = max(1, round(FULL_CYCLE_S / interval))  # syncs per full re-read
        self._redis = None  # redis.asyncio.Redis, or its RedisCluster
        self._stale_topology = False  # cluster: re-read the slot map before the next call
        self._sha: dict[str, str] = {}
        self._lock = asyncio.Lock()  # one sync (or the final flush) at a time

        self._pending_vol = VolumeBuckets()  # recorded here, not yet in a batch
        self._pending_spend: dict[tuple[str, str], Decimal] = defaultdict(Decimal)  # USD
        self._outstanding: _Batch | None = None  # sent, not yet acknowledged
        self._seq = 0
        self._view = VolumeBuckets()  # Redis as last read + what this process added since
        self._spend_nanos: dict[tuple[str, str], int] = {}  # Redis as last read
        self._seen: dict[str, float] = {}  # latest accrual markers seen (unix s)
        self._healthy = True
        self._down_since = 0.0  # time.monotonic() of the failure that started the outage
        self._need_full = True  # next successful sync re-reads every bucket
        self._tick = 0
        self.last_sync_commands = 0  # commands in the last sync's pipeline (for tests/metrics)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._redis = connect(self._url, self._cluster, f"gateway-{self._process[:8]}")
        try:
            await self._load_scripts()
        except UNAVAILABLE as exc:
            self._mark_down(exc)  # start anyway: the gateway runs on local state meanwhile

    async def close(self) -> None:
        """Final flush (the outstanding batch, then what is pending), then disconnect.

        Sub-nano remainders are rounded to the nearest nano-USD first: the ledger holds
        whole nano-USD, so each process loses at most 0.5 nano-USD per (backend, model)."""
        if self._redis is None:
            return
        async with self._lock:
            for key, usd in self._pending_spend.items():
                self._pending_spend[key] = usd.quantize(Decimal(1).scaleb(-NANO), ROUND_HALF_EVEN)
            for _ in range(2):  # the outstanding batch, then what piled up behind it
                if (self._outstanding is None and not self._has_pending()) or not await self._flush(None):
                    break
        if self._outstanding is not None or self._has_pending():
            log.error("state store closed with unflushed deltas (Redis unreachable): "
                      "spend %s USD is lost", sum(self._local_spend().values(), Decimal(0)))
        await self._redis.aclose()
        self._redis = None

    @property
    def healthy(self) -> bool:
        return self._healthy

    # -- request path: local only ----------------------------------------------------------
    def record(self, backend: str, model: str, prompt_tokens: int, completion_tokens: int, now: float) -> None:
        b, key = bucket_of(now), (backend, model)
        self._view.watched(now)
        self._pending_vol.add(b, key, 1, int(prompt_tokens), int(completion_tokens))
        self._view.add(b, key, 1, int(prompt_tokens), int(completion_tokens))

    def add_spend(self, backend: str, model: str, usd: Decimal) -> None:
        self._pending_spend[(backend, model)] += usd if isinstance(usd, Decimal) else Decimal(str(usd))

    def volume(self) -> VolumeBuckets:
        return self._view

    async def spend_totals(self) -> Mapping[tuple[str, str], Decimal]:
        """USD per (backend, model): everyone's, as of the last sync, plus what this
        process has not pushed yet."""
        totals = defaultdict(Decimal, {key: nanos_to_usd(n) for key, n in self._spend_nanos.items()})
        for key, usd in self._local_spend().items():
            totals[key] += usd
        return dict(totals)

    # -- background ----------------------------------------------------------------------
    async def sync(self, now: float) -> None:
        if self._redis is None:
            return  # not started, or closed: the background task outlived the app
        self._view.watched(now)  # this process watches from now on, whatever Redis says
        async with self._lock:
            self._pending_vol.prune(now)  # buckets past the horizon would never be read
            await self._flush(now)

    async def claim_accrual(self, key: str, now: float) -> float:
        if self._redis is None:
            return 0.0
        seen = self._seen.get(key)
        args = [key, repr(float(now)), "" if seen is None else repr(seen), ACCRUAL_TTL_S]
        try:
            await self._refresh_if_stale()
            prev, marker = await self._claim(args)
        except UNAVAILABLE as exc:
            self._mark_down(exc)
            return 0.0  # the marker did not move: this time is claimed after recovery
        self._mark_up()
        self._seen[key] = max(float(marker), seen if seen is not None else float("-inf"))
        return max(0.0, float(now) - float(prev)) if prev else 0.0

    # -- internals -----------------------------------------------------------------------
    async def _claim(self, args: list) -> list:
        for attempt in (1, 2):
            try:
                try:
                    return await self._redis.evalsha(self._sha.get("claim", ""), 1, self._k_accrued, *args)
                except NoScriptError:
                    await self._load_scripts()
                    return await self._redis.evalsha(self._sha["claim"], 1, self._k_accrued, *args)
            except RedisConnectionError:
                if not self._resend_dropped(attempt):
                    raise  # (the cluster client has re-read the slot map for the resend)

    def _resend_dropped(self, attempt: int) -> bool:
        """Resend once what failed on a dropped or refused connection? Only on a cluster:
        its client is built not to retry (a retry there re-reads the slot map from every node,
        ~3 x SOCKET_TIMEOUT_S when they hang), so this is the single server's one retry."""
        return self._cluster and attempt == 1

    def _has_pending(self) -> bool:
        return bool(self._pending_vol.buckets) or any(self._pending_spend.values())

    def _local_spend(self) -> dict[tuple[str, str], Decimal]:
        """USD this process added that the last read of Redis did not include."""
        local: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        if self._outstanding is not None:
            for key, nanos in self._outstanding.spend_nanos.items():
                local[key] += nanos_to_usd(nanos)
        for key, usd in self._pending_spend.items():
            local[key] += usd
        return local

    def _take_batch(self) -> _Batch | None:
        """Swap the buffers out: whole nano-USD go, sub-nano remainders stay local."""
        spend: dict[tuple[str, str], int] = {}
        remainders: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for key, usd in self._pending_spend.items():
            whole = int(usd.scaleb(NANO))  # truncates toward zero: refunds work too
            if whole:
                spend[key] = whole
            rest = usd - nanos_to_usd(whole)
            if rest:
                remainders[key] = rest
        vol, self._pending_vol = self._pending_vol, VolumeBuckets()
        self._pending_spend = remainders
        if not spend and not vol.buckets:
            return None
        self._seq += 1
        return _Batch(self._seq, spend, vol)

    def _batch_args(self, batch: _Batch) -> tuple[list[str], list]:
        keys, args = [self._k_seq, self._k_spend], [batch.seq, SEQ_TTL_S, SPEND_TTL_S, BUCKET_TTL_S]
        args.append(len(batch.spend_nanos))
        for (backend, model), nanos in batch.spend_nanos.items():
            args += [f"{backend}{US}{model}", nanos]
        for b, rows in batch.volume.buckets.items():
            keys.append(f"{self._k_vol}{b}")
            args.append(3 * len(rows))
            for (backend, model), counts in rows.items():
                for kind, value in zip(KINDS, counts):
                    args += [f"{kind}{US}{backend}{US}{model}", int(value)]
        return keys, args

    def _buckets_to_read(self, now: float) -> list[int]:
        """The recent buckets every time, older (closed) ones one slice per sync."""
        current = bucket_of(now)
        oldest = current - HORIZON_BUCKETS
        if self._need_full:
            return list(range(oldest, current + 1))
        self._tick += 1
        recent = min(bucket_of(now - self._recent_s), current)
        first = oldest + (self._tick - oldest) % self._cycle
        return list(range(first, recent, self._cycle)) + list(range(recent, current + 1))

    async def _flush(self, now: float | None) -> bool:
        """One round trip: apply the batch, read totals (``now=None``: push only)."""
        if self._outstanding is None:
            self._outstanding = self._take_batch()
        batch = self._outstanding
        reads = [] if now is None else self._buckets_to_read(now)
        try:
            await self._refresh_if_stale()
            results = await self._send(batch, reads, now is not None)
        except UNAVAILABLE as exc:
            self._mark_down(exc)
            return False  # batch stays outstanding, resent as is next time
        self._mark_up()
        self._outstanding = None
        if now is not None:
            self._apply_reads(results, reads, now)
        return True

    async def _send(self, batch: _Batch | None, reads: list[int], totals: bool) -> list:
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            if batch is not None:
                keys, args = self._batch_args(batch)
                # execute_command, not pipe.evalsha: redis-py 8.1's cluster pipeline blocks the
                # latter (redis/redis-py#2914) though it routes EVALSHA by its keys like any other
                pipe.execute_command("EVALSHA", self._sha.get("apply", ""), len(keys), *keys, *args)
            if totals:
                pipe.hgetall(self._k_spend)
                pipe.hgetall(self._k_accrued)
                # the earliest any replica has watched since, for as long as one of them keeps
                # syncing. EVAL, not EVALSHA: a few hundred bytes a second, never NOSCRIPT
                pipe.execute_command("EVAL", _WATCH, 1, self._k_watch, repr(float(self._view.since)),
                                     self._watch_ttl_s)
            for b in reads:
                pipe.hgetall(f"{self._k_vol}{b}")
            self.last_sync_commands = len(pipe)
            if not len(pipe):
                return []
            try:
                results = await pipe.execute(raise_on_error=False)
            except RedisConnectionError:  # the node refused or dropped the connection before any reply
                if not self._resend_dropped(attempt):
                    raise
                await refresh_topology(self._redis)  # a failover may have moved our slot
                continue
            if batch is not None and isinstance(results[0], NoScriptError) and attempt == 1:
                await self._load_scripts()  # Redis restarted or SCRIPT FLUSH: nothing applied
                continue
            dropped = any(isinstance(r, RedisConnectionError) for r in results)
            if dropped and self._resend_dropped(attempt) and not any(isinstance(r, RedisTimeoutError) for r in results):
                continue  # a pooled connection from before a node restart; after a timeout: no
            for r in results:
                if isinstance(r, Exception):
                    raise r  # the batch stays outstanding (if it ran, its resend is skipped)
            return results[1:] if batch is not None else results

    def _apply_reads(self, results: list, reads: list[int], now: float) -> None:
        spend, accrued, watched, buckets = results[0], results[1], results[2], results[3:]
        if watched is not None:
            self._view.since = min(float(watched), self._view.since)
        self._spend_nanos = {tuple(f.split(US, 1)): int(v) for f, v in spend.items()}
        for key, marker in accrued.items():
            self._seen[key] = max(float(marker), self._seen.get(key, float("-inf")))
        for b, fields in zip(reads, buckets):
            rows: dict[tuple[str, str], list] = {}
            for field, value in fields.items():
                kind, backend, model = field.split(US, 2)
                rows.setdefault((backend, model), [0, 0, 0])[KINDS.index(kind)] = int(value)
            for key, counts in self._pending_vol.buckets.get(b, {}).items():
                row = rows.setdefault(key, [0, 0, 0])  # recorded during the round trip
                for i, value in enumerate(counts):
                    row[i] += value
            if rows:
                self._view.buckets[b] = rows
            else:
                self._view.buckets.pop(b, None)
        self._need_full = False
        self._view.prune(now)

    async def _load_scripts(self) -> None:
        self._sha.update(await load_scripts(self._redis, {"apply": _APPLY, "claim": _CLAIM}, self._k_spend))

    async def _refresh_if_stale(self) -> None:
        if self._stale_topology:
            await refresh_topology(self._redis)
            self._stale_topology = False

    def _mark_down(self, exc: BaseException) -> None:
        self._need_full = True  # others' pushes during the outage land in closed buckets
        self._stale_topology = is_cluster(self._redis)  # a failover may have moved our slot
        if self._healthy:
            self._healthy, self._down_since = False, time.monotonic()
            log.warning("Redis at %s unreachable (%s: %s): buffering state locally until it is back",
                        self._host, type(exc).__name__, exc)

    def _mark_up(self) -> None:
        if not self._healthy:
            self._healthy = True
            log.warning("Redis at %s back after %.1f s", self._host, time.monotonic() - self._down_since)
