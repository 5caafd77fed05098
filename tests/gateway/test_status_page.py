"""GET / (the status page) in headless Debian chromium against a live gateway, and GET /status.json."""
from __future__ import annotations

import time
from decimal import Decimal

import httpx
import openai
import pytest

from gateway.demo.clock import SpedUpClock
from gateway_harness import RunningGateway, build_config, standin_config, wait_until
from headless_chromium import HeadlessChromium

ADMIN_KEY = "adm-status-test"


@pytest.fixture
def live_gateway(openai_standin, sagemaker_standin):
    data = standin_config(openai_standin, sagemaker_standin, routing={"policy": "break_even"},
                          state={"flush_interval_s": 0.25})
    # gpt-4o's prices: the endpoint pays off, so the break-even line is a number
    data["backends"]["openai"]["prices"] = {"gpt-4o-mini": {"input": 2.5, "output": 10}}
    cfg = build_config(data, env={"GATEWAY_ADMIN_KEYS": ADMIN_KEY}, openai=openai_standin)
    # a minute per real second: the chart's last hour fills with points within seconds
    with RunningGateway(cfg, clock=SpedUpClock(60)) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        gw.costs = {}
        for i in range(24):  # a few pinned to the API, so that both backends have spend
            raw = client.chat.completions.with_raw_response.create(
                model="openai/gpt-4o-mini" if i % 6 == 0 else "gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": f"question {i} " * 40}])
            backend = raw.headers["x-gateway-backend"]
            gw.costs[backend] = gw.costs.get(backend, Decimal(0)) + Decimal(raw.headers["x-gateway-cost-usd"])
        assert wait_until(lambda: len(gw.app.status.history.points) >= 4, timeout=15)
        yield gw


def _doc(gw, key=ADMIN_KEY):
    return httpx.get(f"{gw.url}/status.json", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=10)


def test_status_json_is_behind_the_admin_key_and_its_spend_is_the_ledger(live_gateway):
    gw = live_gateway
    assert _doc(gw, None).status_code == 401
    assert _doc(gw, "wrong").status_code == 401
    page = httpx.get(f"{gw.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert ADMIN_KEY not in page.text and "connect-src 'self'" in page.headers["content-security-policy"]
    doc = _doc(gw).json()
    totals = {b: Decimal(row["spend_usd"]) for b, row in doc["backends"].items()}
    assert Decimal(doc["spend"]["actual_usd"]) == sum(totals.values()) > 0
    # the API's spend on the page is the sum of what its requests were charged (x-gateway-cost-usd)
    assert totals["openai"] == gw.costs["openai"] > 0
    assert totals["sagemaker"] > 0  # its instance time (one assumed instance)
    assert doc["backends"]["openai"]["requests_1h"] + doc["backends"]["sagemaker"]["requests_1h"] == 24
    ep = doc["endpoints"]["sagemaker"]
    assert ep["instances_in_service"] == 1 and ep["break_even_requests_per_hour"] > 0
    assert len(doc["history"]["points"]) >= 4


def test_status_page_renders_offline_in_headless_chromium(live_gateway, tmp_path):
    gw = live_gateway
    with HeadlessChromium(tmp_path / "profile") as browser:
        page = browser.open(f"{gw.url}/#key={ADMIN_KEY}")
        page.wait_for("Number(document.body.dataset.rendered || 0) >= 2")
        figures = page.evaluate("""({
            volume: document.getElementById('volume').textContent,
            breakeven: document.getElementById('breakeven').textContent,
            instances: document.getElementById('instances').textContent,
            spend: document.getElementById('spend').textContent,
            saved: document.getElementById('saved').textContent,
            volumeLines: document.querySelectorAll('#volchart path.series').length,
            spendLines: document.querySelectorAll('#spendchart path.series').length,
            keyForm: getComputedStyle(document.getElementById('keyform')).display,
            fragmentKept: location.hash,
        })""")
        shot = page.screenshot(tmp_path / "status-page.png")
        time.sleep(2.5)  # one more refresh of the figures, still without an error
        errors = list(browser.errors)
        locked = browser.open(f"{gw.url}/")  # a new tab: no key in its session
        locked.wait_for("document.getElementById('problem').textContent.includes('admin key')")
        assert locked.evaluate("getComputedStyle(document.getElementById('keyform')).display") != "none"
        requests, locked_errors = list(browser.requests), browser.errors[len(errors):]

    assert figures["volume"] not in ("", "–") and figures["breakeven"].endswith("req/h")
    assert figures["instances"] == "1 in service"
    assert "openai" in figures["spend"] and "$" in figures["spend"] and figures["saved"].startswith(("$", "-$"))
    assert figures["volumeLines"] >= 3, figures  # forecast, break-even, instances in service
    assert figures["spendLines"] >= 2, figures  # each backend's spend (and the API alone)
    assert figures["keyForm"] == "none" and figures["fragmentKept"] == ""  # the key left the address bar
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    assert (tmp_path / "status-page.png").stat().st_size == len(shot)
    assert errors == []
    # the tab without a key: its fetch was refused (the browser logs that), nothing else went wrong
    assert locked_errors and all("401" in e and e.endswith("/status.json") for e in locked_errors), locked_errors
    assert requests and all(u.startswith(gw.url + "/") or u == "about:blank" for u in requests), requests
