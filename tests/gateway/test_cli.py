"""The ``gateway`` command line: help, and ``serve``'s start-up lines."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx

from gateway.cli import COMMANDS, main
from gateway_harness import ROOT
from redis_server import free_port

CONFIG = """
backends:
  openai: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: CLI_TEST_KEY}
models:
  gpt-4o-mini: {backends: [{backend: openai}]}
"""


def test_help_lists_every_command_with_one_line_and_exits_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        lines = [line for line in out.splitlines() if line.strip().startswith(name + " ")]
        assert len(lines) == 1 and len(lines[0].split(None, 1)[1]) > 20, (name, out)
    assert main([]) == 2 and "demo" in capsys.readouterr().err  # no command: the same list, on stderr


def _serve(tmp_path, port: int) -> subprocess.Popen:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "REDIS_"))}
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--port", str(port)],
                            cwd=ROOT, env={**env, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_ready_is_logged_once_the_port_listens_and_a_busy_port_is_one_clear_line(tmp_path):
    port = free_port()
    proc = _serve(tmp_path, port)
    try:
        deadline = time.monotonic() + 60
        for line in proc.stderr:
            if "gateway ready" in line:
                break
            assert time.monotonic() < deadline and proc.poll() is None, "no 'gateway ready' line"
        # at the moment "ready" is written the port takes connections (and /healthz answers)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200

        busy = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(tmp_path / "config.yaml"),
                               "--port", str(port)], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                              capture_output=True, text=True, timeout=60)
        assert busy.returncode == 2
        assert busy.stderr.strip().splitlines() == [
            f"gateway: cannot listen on 127.0.0.1:{port}: the port is in use by another process; stop that "
            "process, or choose another port (--port, or server.port in the config)"]
    finally:
        proc.terminate()
        proc.wait(30)
