"""What only a Redis Cluster does to the shared state, on a real three-master cluster: its
slot moves to another master key by key (ASK, TRYAGAIN, then MOVED), the master owning it
dies alone, or forgets its scripts. Every delta must still land exactly once."""
from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import redis

from gateway.config import StateConfig
from gateway.state.redis_store import RedisStore

T0 = 1_700_000_000.0
KEY = ("openai", "gpt-4o-mini")
SPEND_KEY = "{gw}:spend"


def cluster_store(cluster) -> RedisStore:
    return RedisStore(StateConfig(redis_url=cluster.url, redis_cluster=True, flush_interval_s=1.0))


async def started(*stores):
    for s in stores:
        await s.start()
    return stores


def test_a_slot_moving_to_another_master_mid_run_loses_and_doubles_nothing(redis_cluster):
    slot = redis_cluster.slot_of(SPEND_KEY)
    source = redis_cluster.node_for(SPEND_KEY)
    target = next(node for node in redis_cluster.nodes if node is not source)

    async def go():
        a, b = await started(cluster_store(redis_cluster), cluster_store(redis_cluster))
        spent, requests, claimed, now = Decimal(0), 0, 0.0, T0
        await a.claim_accrual("ep", now)
        for i in range(4):  # history in a few buckets: the slot holds ~8 keys, moved one at a time
            now = T0 + 10 * i
            for store, usd in ((a, "0.001"), (b, "0.002")):
                store.record(*KEY, 10, 1, now)
                store.add_spend(*KEY, Decimal(usd))
                spent, requests = spent + Decimal(usd), requests + 1
                await store.sync(now)
        steps = 0
        for _moved in redis_cluster.migrate_slot(slot, target):  # between each key moved:
            steps += 1
            now += 1
            # one store a step (each failing sync costs ~1 s: TRYAGAIN retries, reads redirected one by one)
            store, usd = ((a, "0.000000007"), (b, "0.000000011"))[steps % 2]
            store.record(*KEY, 10, 1, now)
            store.add_spend(*KEY, Decimal(usd))
            spent, requests = spent + Decimal(usd), requests + 1
            await store.sync(now)  # may fail (TRYAGAIN while its keys straddle two masters)
            claimed += await store.claim_accrual("ep", now)
        assert redis_cluster.node_for(SPEND_KEY) is target and steps >= 7
        for store in (a, b, a, b, a):  # MOVED now; a failed batch is resent, then what piled up behind it
            now += 1
            await store.sync(now)
        claimed += await b.claim_accrual("ep", now)
        for store in (a, b):
            assert store.healthy
            assert await store.spend_totals() == {KEY: spent}
            assert store.volume().window(now, 3600).requests == requests
        assert claimed == now - T0  # each second handed out once, wherever the marker lived
        for store in (a, b):
            await store.close()
        return target

    asyncio.run(go())
    direct = redis.Redis(port=target.port, decode_responses=True)
    assert direct.hlen(SPEND_KEY) == 1  # the ledger lives on the new master now
    direct.close()


def test_the_master_owning_the_slot_dying_alone_then_returning(persistent_redis_cluster):
    cluster = persistent_redis_cluster
    owner = cluster.node_for(SPEND_KEY)

    async def go():
        a, b = await started(cluster_store(cluster), cluster_store(cluster))
        a.add_spend(*KEY, Decimal("1.5"))
        a.record(*KEY, 10, 1, T0)
        await a.sync(T0)
        owner.stop()  # SIGKILL one master; the other two still answer (for other slots)
        for i in range(1, 4):
            a.add_spend(*KEY, Decimal("0.25"))
            a.record(*KEY, 10, 1, T0 + i)
            began = time.perf_counter()
            await a.sync(T0 + i)
            assert time.perf_counter() - began < 1.0 and not a.healthy
        assert await a.claim_accrual("ep", T0 + 3) == 0.0
        cluster.start_stopped()  # same port, its AOF and nodes.conf: same slots, same data
        await a.sync(T0 + 4)
        await a.sync(T0 + 5)
        await b.sync(T0 + 5)
        for store in (a, b):
            assert store.healthy
            assert await store.spend_totals() == {KEY: Decimal("2.25")}
            assert store.volume().window(T0 + 5, 60).requests == 4
            await store.close()

    asyncio.run(go())


def test_a_master_that_forgot_the_scripts_gets_them_again(redis_cluster):
    async def go():
        (a,) = await started(cluster_store(redis_cluster))
        owner = redis.Redis(port=redis_cluster.node_for(SPEND_KEY).port)
        owner.script_flush()  # what a restart or a failover to a replica looks like
        owner.close()
        a.add_spend(*KEY, Decimal("0.5"))
        await a.sync(T0)
        assert await a.claim_accrual("ep", T0) == 0.0 and await a.claim_accrual("ep", T0 + 2) == 2.0
        redis_cluster.reset()  # every master flushed: the claim script is gone too
        assert await a.claim_accrual("ep", T0 + 3) == 1.0  # its own last marker covers the loss
        assert a.healthy
        await a.close()
        return await _ledger(redis_cluster)

    assert asyncio.run(go()) == {}  # reset emptied it; nothing was pushed after


async def _ledger(cluster) -> dict:
    (b,) = await started(cluster_store(cluster))
    await b.sync(T0 + 10)
    totals = await b.spend_totals()
    await b.close()
    return totals


def test_a_failover_to_a_replica_is_followed_and_nothing_is_lost_or_doubled():
    """Three masters with one replica each (their own cluster: ~4 s to form). The master
    owning the slot is killed once its replica has every acknowledged batch; the replica
    is promoted (it has no scripts: NOSCRIPT), the stores find it and push what they buffered."""
    from redis_server import RedisClusterServer

    with RedisClusterServer(replicas=1) as cluster:
        owner = cluster.node_for(SPEND_KEY)
        replica = cluster.replica_of(owner)

        async def go():
            a, b = await started(cluster_store(cluster), cluster_store(cluster))
            for i, store in enumerate((a, b)):
                store.add_spend(*KEY, Decimal("1.25"))
                store.record(*KEY, 10, 1, T0 + i)
                await store.sync(T0 + i)
            cluster.wait_replicated(owner)  # replication is async: what it lacks a failover drops
            owner.stop()
            now, deadline, added = T0 + 2, time.monotonic() + 30, 0
            while not (a.healthy and b.healthy and cluster.node_for(SPEND_KEY) is replica):
                assert time.monotonic() < deadline, "the stores never found the promoted replica"
                now += 1
                a.add_spend(*KEY, Decimal("0.000000001"))  # spend keeps coming during the failover
                a.record(*KEY, 10, 1, now)
                added += 1
                for store in (a, b):
                    await store.sync(now)
                await asyncio.sleep(0.2)  # the cluster's own failure detection runs on its clock
            for store in (a, b, a, b):
                now += 1
                await store.sync(now)
            totals = [await s.spend_totals() for s in (a, b)]
            requests = [s.volume().window(now, 3600).requests for s in (a, b)]
            for store in (a, b):
                await store.close()
            return totals, requests, added

        totals, requests, added = asyncio.run(go())
        assert added >= 2  # the failover took at least two syncs: something was buffered
        assert totals == [{KEY: Decimal("2.5") + Decimal("0.000000001") * added}] * 2
        assert requests == [2 + added] * 2
