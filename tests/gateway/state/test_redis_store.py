"""State stores against a real redis-server and a real three-master Redis Cluster (no mocks);
the memory store passes the same single-process behaviour. Time is passed in explicitly
(``now``), so nothing sleeps."""
from __future__ import annotations

import asyncio
import logging
import random
import time
from decimal import Decimal

import pytest
import redis
from redis.crc import key_slot

from gateway.config import StateConfig
from gateway.state import build_store
from gateway.state.memory import MemoryStore
from gateway.state.redis_store import BUCKET_TTL_S, RedisStore, hash_tag
from gateway.state.volume import BUCKET_S, WINDOWS_S
from redis_server import FaultyProxy

T0 = 1_700_000_000.0  # unix s, a bucket boundary
KEY = ("openai", "gpt-4o-mini")
LOGGER = "gateway.state.redis_store"


def run(coro):
    return asyncio.run(coro)


def redis_store(server, prefix: str = "gw", url: str | None = None) -> RedisStore:
    """A store on ``server`` (a RedisServer or the RedisClusterServer), or on ``url``."""
    return RedisStore(StateConfig(redis_url=url or server.url, key_prefix=prefix, flush_interval_s=1.0,
                                  redis_cluster=server.cluster))


async def started(*stores):
    for s in stores:
        await s.start()
    return stores


async def closed(*stores):
    for s in stores:
        assert s.healthy, "the test ran on the store's local view only: Redis never answered"
        await s.close()


@pytest.fixture(params=["memory", "redis", "cluster"])
def make_store(request):
    """A factory of (unstarted) stores of one kind; redis ones share one fresh server (cluster)."""
    if request.param == "memory":
        return lambda: MemoryStore(StateConfig())
    server = request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster")
    return lambda: redis_store(server)


def windows(store, now, **match):
    return [store.volume().window(now, s, **match) for s in WINDOWS_S]


# -- the same behaviour from both stores --------------------------------------------------
def test_windows_count_what_was_recorded(make_store):
    async def go():
        (store,) = await started(make_store())
        for i in range(300):  # one request a second for 5 minutes, syncing as the app does
            store.record(*KEY, 100, 10, T0 + i)
            store.record("sagemaker", "llama", 7, 3, T0 + i)
            await store.sync(T0 + i)
        now = T0 + 299.5
        w60, w300, w3600 = windows(store, now, backend="openai")
        assert (w60.requests, w60.prompt_tokens, w60.completion_tokens) == (60, 6000, 600)
        assert w300.requests == 300 and w3600.requests == 300
        assert windows(store, now)[2].completion_tokens == 300 * 13
        await closed(store)
    run(go())


def test_spend_totals_exact_to_the_nano_dollar(make_store):
    async def go():
        (store,) = await started(make_store())
        tick = Decimal("0.00000015")  # 150 nano-USD
        for i in range(1_000_000):
            store.add_spend(*KEY, tick)
            if i % 100_000 == 0:
                await store.sync(T0 + i / 1000)
        for _ in range(7):  # 0.3 nano-USD each: only the carried remainder keeps them
            store.add_spend("sagemaker", "llama", Decimal("0.0000000003"))
            await store.sync(T0 + 1000)
        totals = await store.spend_totals()
        assert totals[KEY] == Decimal("0.15")
        assert totals[("sagemaker", "llama")] == Decimal("0.0000000021")
        await closed(store)
    run(go())


def test_claim_accrual_hands_out_each_second_once(make_store):
    async def go():
        (store,) = await started(make_store())
        assert await store.claim_accrual("ep", 0.0) == 0.0  # the first claim starts the clock
        assert await store.claim_accrual("ep", 2.5) == 2.5
        assert await store.claim_accrual("ep", 2.0) == 0.0  # a late clock claims nothing...
        assert await store.claim_accrual("ep", 3.0) == 0.5  # ...and moves nothing back
        assert await store.claim_accrual("other", 3.0) == 0.0  # keys are independent
        await closed(store)
    run(go())


# -- several processes, one Redis ---------------------------------------------------------
def test_two_stores_share_windows_and_spend(shared_redis):
    async def go():
        a, b = await started(redis_store(shared_redis), redis_store(shared_redis))
        both = MemoryStore()  # what one process seeing all traffic would count
        for i in range(400):  # 400 s of traffic; both replicas sync every second
            for store in (a, both):
                store.record(*KEY, 100, 10, T0 + i)
            for store in (b, both):
                store.record(*KEY, 50, 5, T0 + i + 0.5)
                store.record("sagemaker", "llama", 1, 1, T0 + i + 0.5)
            a.add_spend(*KEY, Decimal("0.001"))
            b.add_spend(*KEY, Decimal("0.002"))
            await a.sync(T0 + i + 0.9)
            await b.sync(T0 + i + 0.9)
        await a.sync(T0 + 400)  # a reads what b pushed after a's last sync
        now = T0 + 400
        assert windows(a, now) == windows(b, now) == windows(both, now)
        assert windows(a, now, backend="openai") == windows(both, now, backend="openai")
        w60, w300, w3600 = windows(a, now, backend="openai")  # on a bucket boundary: the whole 60 s and 300 s
        assert (w60.requests, w300.requests, w3600.requests) == (2 * 60, 2 * 300, 2 * 400)
        assert await a.spend_totals() == await b.spend_totals() == {KEY: Decimal("1.2")}
        await closed(a, b)
    run(go())


def test_claim_accrual_across_stores_sums_to_wall_time(shared_redis):
    async def go():
        stores = await started(*(redis_store(shared_redis) for _ in range(3)))
        rng = random.Random(7)
        now, first, claimed = T0, T0, 0.0
        await stores[0].claim_accrual("ep", first)
        for _ in range(300):
            now += rng.choice((0.0, 0.25, 1.0, 3.7))
            # all three claim the same instant at once: only one gets the time
            got = await asyncio.gather(*(s.claim_accrual("ep", now - rng.random() * 0.1) for s in stores))
            claimed += sum(got)
        claimed += await stores[1].claim_accrual("ep", now + 1)
        assert claimed == pytest.approx(now + 1 - first, abs=1e-6)
        await closed(*stores)
    run(go())


def test_sync_rereads_only_recent_buckets_but_catches_late_pushes(shared_redis):
    async def go():
        a, b = await started(redis_store(shared_redis), redis_store(shared_redis))
        await a.sync(T0)
        assert a.last_sync_commands >= 363  # first sync: every bucket of the hour (+3 commands)
        await a.sync(T0 + 1)
        assert a.last_sync_commands <= 3 + 4 + 7  # spend, accrual, the watch, ~4 recent, ~6 older
        b.record(*KEY, 1, 1, T0 - 1800)  # e.g. a backlog pushed late into a closed bucket
        await b.sync(T0 + 1)
        for i in range(60):  # within one full cycle (60 syncs) a has re-read that bucket
            await a.sync(T0 + 2 + i)
        assert a.volume().window(T0 + 62, 3600).requests == 1
        await closed(a, b)
    run(go())


def test_windows_start_where_the_replicas_began_watching(make_store):
    # traffic before anyone watched is unknown, not zero: a fresh gateway's hour is the minutes it
    # has seen. A replica that joins later reads the fleet's watch start from the shared state.
    async def go():
        a = make_store()
        await a.start()
        a.record(*KEY, 1, 1, T0 + 5)
        await a.sync(T0 + 10)
        assert a.volume().since == T0 + 5
        assert a.volume().window(T0 + 600, 3600).seconds == 595.0  # watched from T0 + 5
        if isinstance(a, MemoryStore):
            return
        b = make_store()
        await b.start()
        await b.sync(T0 + 600)
        assert b.volume().since == T0 + 5
        assert b.volume().window(T0 + 600, 3600).requests == 1
        await closed(a, b)
    run(go())


# -- Redis outages --------------------------------------------------------------------------
def test_outage_buffers_everything_and_it_lands_exactly_once(persistent_shared_redis, caplog):
    server = persistent_shared_redis
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def go():
        a, b = await started(redis_store(server), redis_store(server))
        a.record(*KEY, 10, 1, T0)
        a.add_spend(*KEY, Decimal("1.000000001"))
        assert await a.claim_accrual("ep", T0) == 0.0
        await a.sync(T0)
        server.stop()  # SIGKILL mid-run

        for i in range(1, 6):  # the request path keeps working; syncs fail fast
            a.record(*KEY, 10, 1, T0 + i)
            a.add_spend(*KEY, Decimal("0.25"))
            started_at = time.perf_counter()
            await a.sync(T0 + i)
            assert time.perf_counter() - started_at < 1.0
            assert not a.healthy
        assert await a.claim_accrual("ep", T0 + 5) == 0.0  # no claim while down...
        assert await a.spend_totals() == {KEY: Decimal("2.250000001")}  # local view stays whole
        assert a.volume().window(T0 + 5, 60).requests == 6

        server.restart()  # the AOF brings back what was acknowledged
        await a.sync(T0 + 6)  # the batch that failed, resent under its own number
        await a.sync(T0 + 7)  # then what piled up behind it
        assert a.healthy
        await b.sync(T0 + 7)
        for store in (a, b):
            assert await store.spend_totals() == {KEY: Decimal("2.250000001")}
            assert store.volume().window(T0 + 7, 60).requests == 6
            assert store.volume().window(T0 + 7, 60).prompt_tokens == 60
        assert await b.claim_accrual("ep", T0 + 8) == 8.0  # ...the gap is claimed afterwards
        await closed(a, b)

    run(go())
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert [("unreachable" in r.message, "back after" in r.message) for r in warnings] == [
        (True, False), (False, True)]  # one warning per outage, one when it ends


def test_accrual_survives_a_restart_that_lost_the_markers(shared_redis):
    async def go():
        a, b = await started(redis_store(shared_redis), redis_store(shared_redis))
        assert await a.claim_accrual("ep", T0) == 0.0
        assert await b.claim_accrual("ep", T0 + 10) == 10.0
        await a.sync(T0 + 10)  # a learns b's marker (T0 + 10) from the accrual hash
        shared_redis.restart()  # no persistence: the marker is gone
        assert await a.claim_accrual("ep", T0 + 30) == 20.0  # a's fallback covers the gap
        assert await b.claim_accrual("ep", T0 + 31) == 1.0
        await closed(a, b)
    run(go())


@pytest.mark.parametrize("times", [1, 2], ids=["redis-py-retries", "sync-fails"])
@pytest.mark.parametrize("lost", ["reply", "request"])
def test_a_lost_reply_or_request_is_applied_exactly_once(redis_server, lost, times):
    """The pipeline's connection drops after Redis ran the batch (lost reply) or before it
    saw it (lost request). Once: redis-py's own retry resends it. Twice: the retry (or its
    reconnect handshake) is lost too, sync fails, and the next sync resends the batch."""
    with FaultyProxy(redis_server.port) as proxy:
        async def go():
            a, b = await started(redis_store(redis_server, url=proxy.url), redis_store(redis_server))
            await a.sync(T0)  # connection and scripts in place: the next request is the batch
            a.record(*KEY, 10, 1, T0 + 1)
            a.add_spend(*KEY, Decimal("0.5"))
            proxy.lose_next(lost, times)
            await a.sync(T0 + 1)
            assert a.healthy == (times == 1)
            await a.sync(T0 + 2)
            await b.sync(T0 + 2)
            assert proxy.faults_injected == times
            assert await b.spend_totals() == await a.spend_totals() == {KEY: Decimal("0.5")}
            assert b.volume().window(T0 + 2, 60).requests == 1 == a.volume().window(T0 + 2, 60).requests
            await closed(a, b)
        run(go())


def test_a_hung_redis_times_out_fast_and_its_late_run_is_not_counted_twice(shared_redis):
    """SIGSTOP: the sync times out (~0.5 s) with the batch sitting in Redis' socket buffer;
    on SIGCONT Redis runs it anyway. The resend must then be skipped."""
    async def go():
        a, b = await started(redis_store(shared_redis), redis_store(shared_redis))
        await a.sync(T0)
        a.record(*KEY, 10, 1, T0 + 1)
        a.add_spend(*KEY, Decimal("0.5"))
        shared_redis.pause()
        try:
            began = time.perf_counter()
            await a.sync(T0 + 1)
            assert time.perf_counter() - began < 1.0 and not a.healthy
        finally:
            shared_redis.resume()
        await a.sync(T0 + 2)
        await b.sync(T0 + 2)
        assert a.healthy
        assert await b.spend_totals() == await a.spend_totals() == {KEY: Decimal("0.5")}
        assert b.volume().window(T0 + 2, 60).requests == 1
        await closed(a, b)
    run(go())


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "cluster"])
def test_unreachable_from_the_start_still_serves_requests(caplog, cluster):
    from redis_server import free_port

    async def go():
        store = RedisStore(StateConfig(redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
                                       redis_cluster=cluster))
        await store.start()
        assert not store.healthy
        store.record(*KEY, 1, 1, T0)
        store.add_spend(*KEY, Decimal("0.1"))
        await store.sync(T0)
        assert await store.spend_totals() == {KEY: Decimal("0.1")}
        assert store.volume().window(T0, 60).requests == 1
        await store.close()  # logs what it could not flush; does not raise
    caplog.set_level(logging.ERROR, logger=LOGGER)
    run(go())
    assert any("0.1" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


# -- keys, lifecycle, config ------------------------------------------------------------------
def test_keys_share_one_slot_and_all_expire(shared_redis):
    async def go():
        (a,) = await started(redis_store(shared_redis))
        a.record(*KEY, 1, 1, T0)
        a.add_spend(*KEY, Decimal("0.1"))
        await a.claim_accrual("ep", T0)
        await a.sync(T0)
        await closed(a)
    run(go())
    client = (redis.RedisCluster if shared_redis.cluster else redis.Redis).from_url(shared_redis.url,
                                                                                    decode_responses=True)
    keys = list(client.scan_iter("*"))  # on a cluster: every master's
    kinds = {k.split(":")[1] for k in keys}
    assert kinds == {"vol", "spend", "accrued", "seq", "watching_since"}
    assert all(k.startswith("{gw}:") for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1  # one Redis Cluster slot
    ttls = {k: client.ttl(k) for k in keys}
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    assert all(ttl <= BUCKET_TTL_S for k, ttl in ttls.items() if ":vol:" in k)
    assert BUCKET_TTL_S >= 3600 + BUCKET_S  # a bucket outlives the longest window
    client.close()


def test_hash_tag_is_derived_from_the_prefix():
    assert hash_tag("gw") == "{gw}"
    assert hash_tag("prod{gw}") == "prod{gw}"  # already tagged: used as is
    assert hash_tag("odd{}") == "{odd{}}"  # an empty {} is no tag to Redis


def test_close_flushes_what_is_left(shared_redis):
    async def go():
        (a,) = await started(redis_store(shared_redis))
        a.record(*KEY, 5, 5, T0)
        a.add_spend(*KEY, Decimal("0.0000000016"))  # 1.6 nano-USD: rounds to 2 at close
        await a.close()
        (b,) = await started(redis_store(shared_redis))
        await b.sync(T0 + 1)
        assert await b.spend_totals() == {KEY: Decimal("0.000000002")}
        assert b.volume().window(T0 + 1, 60).prompt_tokens == 5
        await closed(b)
    run(go())


def test_build_store_chooses_by_config(redis_server, redis_cluster):
    assert isinstance(build_store(StateConfig()), MemoryStore)
    assert isinstance(build_store(StateConfig(redis_url=redis_server.url)), RedisStore)

    async def client_kinds():
        kinds = []
        for server in (redis_server, redis_cluster):
            store = build_store(StateConfig(redis_url=server.url, redis_cluster=server.cluster))
            await store.start()
            kinds.append((type(store._redis).__name__, store.healthy))
            await store.close()
        return kinds
    assert asyncio.run(client_kinds()) == [("Redis", True), ("RedisCluster", True)]


def test_redis_cluster_switch_comes_from_the_environment():
    from pathlib import Path

    from gateway.config import ConfigError, load_config

    default = Path(__file__).resolve().parents[3] / "config.yaml"
    env = {"OPENAI_API_KEY": "sk-test", "REDIS_URL": "redis://10.0.0.5:6379/0"}
    assert load_config(str(default), env).state.redis_cluster is False
    on = load_config(str(default), {**env, "REDIS_CLUSTER": "true"}).state
    assert (on.redis_url, on.redis_cluster) == ("redis://10.0.0.5:6379/0", True)
    with pytest.raises(ConfigError, match=r"state\.redis_cluster: needs state\.redis_url"):
        load_config(str(default), {**env, "REDIS_URL": "", "REDIS_CLUSTER": "true"})
    with pytest.raises(ConfigError, match=r"state\.redis_url: a Redis Cluster has only database 0"):
        load_config(str(default), {**env, "REDIS_URL": "redis://10.0.0.5:6379/2", "REDIS_CLUSTER": "true"})
    assert load_config(str(default), {**env, "REDIS_URL": "rediss://:p@h:6379", "REDIS_CLUSTER": "1"}).state.redis_cluster
