"""Run the real gateway in-process on a free loopback port (uvicorn in a thread).

In-process, so the test-wide network guard sees every socket the gateway opens.
"""
from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
import time

import httpx

import orjson
import uvicorn

from gateway.access_log import AccessLog
from gateway.app import create_app
from gateway.config import parse_config
from gateway.http.protocol import DeadlineHttpToolsProtocol
from redis_server import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds; generous defaults: CI shares 2 cores."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class CapturedLog(io.RawIOBase):
    """A binary stream the access log writes to; lines read back as dicts."""

    def __init__(self):
        self._buf = bytearray()
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        with self._lock:
            self._buf += data
        return len(data)

    def entries(self) -> list[dict]:
        with self._lock:
            raw = bytes(self._buf)
        return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def standin_config(openai, sagemaker=None, **sections) -> dict:
    """A config dict routing gpt-4o-mini to both stand-ins (API first) and embeddings to the API."""
    backends = {"openai": {"type": "openai", "base_url": openai.base_url, "api_key_env": "STANDIN_OPENAI_KEY"}}
    routes = [{"backend": "openai", "model": "gpt-4o-mini"}]
    if sagemaker is not None:
        backends["sagemaker"] = {
            "type": "sagemaker", "endpoint_name": "standin-endpoint", "region": "us-east-1",
            "endpoint_url": sagemaker.base_url, "instance_type": "ml.g5.xlarge", "assumed_instances": 1,
            "hourly_price_usd": "1.408", "max_tokens_per_second": 300, "context_window": 8192,
            "poll_interval_s": 0,  # no control plane here; tests/gateway/test_control_wiring.py has moto
            # a stand-in starts at once: a start-up's billing (what break_even's ski-rental account
            # must cover before it scales up) is then repaid within a test's few seconds of traffic
            "startup_s": 5,
        }
        routes.append({"backend": "sagemaker", "model": "gpt-4o-mini"})
    cfg = {
        "routing": {"policy": "first_healthy"},  # predictable order; tests of other policies say so
        "backends": backends,
        "models": {
            "gpt-4o-mini": {"backends": routes},
            "text-embedding-3-small": {"kind": "embeddings", "backends": [{"backend": "openai"}]},
        },
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def build_config(data: dict, env: dict | None = None, openai=None):
    full_env = {"STANDIN_OPENAI_KEY": openai.api_key if openai else ""}
    full_env.update(env or {})
    return parse_config(data, "test-config", full_env)


class RunningGateway:
    """``with RunningGateway(config) as gw:`` → ``gw.base_url`` (…/v1), ``gw.app``, ``gw.log``."""

    def __init__(self, config, **parts):
        self.log = CapturedLog()
        self.app = create_app(config, access_log=AccessLog(io.BufferedWriter(self.log)), **parts)
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=0, loop="asyncio", http=DeadlineHttpToolsProtocol, lifespan="on",
            log_level="warning", access_log=False, limit_concurrency=config.server.max_connections,
        ))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> "RunningGateway":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.url}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)

    def entries(self, at_least: int = 1, timeout: float = 5.0) -> list[dict]:
        """Access-log entries, waiting for ``at_least`` of them: a streamed request is logged
        just after its last event, which the client may have read already."""
        deadline = time.monotonic() + timeout
        while True:
            self.app.access_log.flush()
            found = self.log.entries()
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def sample(self, name: str, **labels) -> float | None:
        return self.app.registry.get_sample_value(name, labels)


class ServedGateway:
    """``gateway serve`` in a subprocess (the real CLI and uvicorn workers), ready on ``url``.

    Not covered by the in-process network guard: give it loopback-only config and env.
    ``env`` is added to this process's environment; a ``None`` value removes the variable.
    After ``__exit__``, ``stderr`` holds the operational log.
    """

    def __init__(self, config_path: str, env: dict | None = None, *extra_args: str, start_timeout: float = 90):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self._args = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path),
                      "--port", str(self.port), *extra_args]
        self._env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
        self._env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.stderr = ""

    def __enter__(self) -> "ServedGateway":
        self.proc = subprocess.Popen(self._args, cwd=ROOT, env=self._env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                return httpx.get(f"{self.url}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        if not wait_until(ready, self._timeout):
            self.__exit__()
            raise RuntimeError("gateway serve did not become ready")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.stderr = self.proc.communicate(timeout=30)[1].decode(errors="replace")
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stderr = self.proc.communicate()[1].decode(errors="replace")
