"""SIGTERM (issue 8, item 9): stop accepting, let in-flight streams finish, flush, say what was done."""
from __future__ import annotations

import signal
import threading
import time

import httpx
import yaml
from gateway_harness import ServedGateway, standin_config, wait_until


def test_sigterm_lets_a_stream_finish_then_flushes_and_exits(openai_standin, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(standin_config(openai_standin, server={"shutdown_grace_s": 30})))
    words = [f"w{i} " for i in range(12)]
    openai_standin.script(text=words, chunk_delay=0.25)  # ~3 s of stream
    got: list[str] = []
    first = threading.Event()
    gw = ServedGateway(path, {"STANDIN_OPENAI_KEY": openai_standin.api_key})
    with gw:
        def stream():
            with httpx.stream("POST", f"{gw.base_url}/chat/completions", timeout=60, json={
                    "model": "gpt-4o-mini", "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                for line in r.iter_lines():
                    got.append(line)
                    if '"w0 "' in line:
                        first.set()

        t = threading.Thread(target=stream)
        t.start()
        assert first.wait(30)
        gw.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                httpx.get(f"{gw.url}/healthz", timeout=2)
                return False
            except httpx.TransportError:
                return True

        assert wait_until(refused, 10), "still accepting connections after SIGTERM"
        t.join(timeout=60)
        # uvicorn re-raises the signal once it has shut down cleanly: the exit status says "SIGTERM"
        assert gw.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    text = "".join(got)
    assert all(f'"{w}"' in text for w in words) and [x for x in got if x][-1] == "data: [DONE]"  # the stream was not cut
    assert "shutting down: no request in flight" in gw.stderr
    assert "shutdown complete: endpoint time and spend flushed" in gw.stderr
