"""The Redis client ``RedisStore`` talks through: one server, or a Redis Cluster.

    client = connect("redis://10.0.0.5:6379/0", cluster=True, name="gateway-1a2b")
    shas = await load_scripts(client, {"apply": APPLY_LUA}, key="{gw}:spend")
    await refresh_topology(client)    # after a failure: who owns which slot may have changed

Every key the store touches shares one hash tag, so on a cluster each pipeline and script
goes to the one master that owns that slot, in one round trip, as on a single server.
redis-py's cluster client follows MOVED (resharding, failover) and ASK/TRYAGAIN (a slot
being migrated); a script's keys never straddle nodes, so a script runs whole or not at all.
"""
from __future__ import annotations

import asyncio
from typing import Mapping

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

SOCKET_TIMEOUT_S = 0.5  # a command against a dead/hung Redis gives up after this

# What a call may raise when Redis (or the cluster's view of it) is unavailable. The cluster
# client's own errors (no reachable node, slot not covered) do not derive from RedisError.
UNAVAILABLE = (RedisError, RedisClusterException, OSError)


def connect(url: str, cluster: bool, name: str):
    """A client that fails fast: ``SOCKET_TIMEOUT_S`` per command, one immediate retry.

    Single server: redis-py retries on a dropped connection only (a pooled connection from
    before a Redis restart fails on first use); a timeout is not retried, so a hung Redis
    costs one ``SOCKET_TIMEOUT_S`` per sync. Cluster: redis-py's own retry would re-read the
    slot map from every node first (3 x ``SOCKET_TIMEOUT_S`` when they hang, plus a 0.25 s
    sleep), so it is off and ``RedisStore`` resends once itself, on a dropped connection.
    Resending is safe either way (batches are deduplicated, reads are idempotent).
    """
    common = dict(decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S,
                  socket_connect_timeout=SOCKET_TIMEOUT_S, client_name=name)
    if cluster:
        # require_full_coverage=False: only our one slot matters, not the rest of the cluster
        return RedisCluster.from_url(url, retry=Retry(NoBackoff(), 0), require_full_coverage=False, **common)
    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                                   **common)


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)


async def load_scripts(client, scripts: Mapping[str, str], key: str) -> dict[str, str]:
    """SCRIPT LOAD each script where ``key`` lives; returns name -> SHA1.

    On a cluster every reachable master gets them (a slot may move there later; a master
    that is down does not stop us), but the one owning ``key`` must: that is where the
    scripts run. A master that lost them (restart, failover) answers NOSCRIPT and the
    caller loads them again."""
    if not is_cluster(client):
        return {name: await client.script_load(src) for name, src in scripts.items()}
    await client.initialize()
    owner = client.get_node_from_key(key)
    shas: dict[str, str] = {}
    for name, src in scripts.items():
        primaries = client.get_primaries()
        replies = await asyncio.gather(
            *(client.execute_command("SCRIPT LOAD", src, target_nodes=node) for node in primaries),
            return_exceptions=True)
        by_node = dict(zip((node.name for node in primaries), replies))
        reply = by_node.get(owner.name)
        if reply is None:  # the owner is not among the primaries we knew: ask it directly
            reply = await client.execute_command("SCRIPT LOAD", src, target_nodes=owner)
        if isinstance(reply, BaseException):
            raise reply
        shas[name] = reply
    return shas


async def refresh_topology(client) -> None:
    """Re-read the cluster's slot map (no-op on a single server).

    After a failover the old master may hang rather than refuse: its commands time out and
    redis-py never learns the new owner by itself. Connections stay open (others may be
    using the client)."""
    if is_cluster(client):
        await client.nodes_manager.initialize()
