"""Virtual keys through the admin API on one in-process gateway (memory state): secrets, auth,
allowed models, attribution in the access log and /metrics, budgets, period reset."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import httpx
import openai
import pytest
from gateway_harness import RunningGateway, build_config
from keys_helpers import ADMIN, MSG, SECRET_ENV, admin, create_key, keys_config
from openai import OpenAI


def _gateway(openai_standin, clock=None, **env):
    cfg = build_config(keys_config(openai_standin), {**SECRET_ENV, **env}, openai=openai_standin)
    return RunningGateway(cfg, **({"clock": clock} if clock else {}))


def _client(gw, key):
    return OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def test_a_key_is_shown_once_stored_as_a_hash_and_attributed(openai_standin):
    with _gateway(openai_standin, GATEWAY_API_KEYS="sk-static-1") as gw:
        assert admin(gw.url, "POST", "/admin/teams", {"team": "web", "budget_usd": 5}).status_code == 201
        secret = create_key(gw.url, alias="shop", team="web")
        assert secret.startswith("sk-gw-") and len(secret) > 40
        listed = admin(gw.url, "GET", "/admin/keys").json()["data"]
        assert [k["alias"] for k in listed] == ["shop"] and listed[0]["team"] == "web"
        assert secret not in str(listed) and "digest" not in listed[0]
        raw = _client(gw, secret).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MSG, extra_headers={"x-gateway-tags": "nope,checkout"})
        cost = Decimal(raw.headers["x-gateway-cost-usd"])
        assert cost > 0
        # GATEWAY_API_KEYS keys keep working, without a budget; anything else is refused
        _client(gw, "sk-static-1").chat.completions.create(model="gpt-4o-mini", messages=MSG)
        with pytest.raises(openai.AuthenticationError):
            _client(gw, secret[:-2] + "xx").chat.completions.create(model="gpt-4o-mini", messages=MSG)
        entries = gw.entries(at_least=3)
        mine = [e for e in entries if e.get("key_alias") == "shop"]
        assert len(mine) == 1 and mine[0]["team"] == "web" and mine[0]["tag"] == "checkout"
        assert secret not in str(entries) and "test-server-secret" not in str(entries)
        assert gw.sample("gateway_key_spend_usd_total", key_alias="shop", team="web") == pytest.approx(float(cost))
        assert gw.sample("gateway_tag_spend_usd_total", tag="checkout") == pytest.approx(float(cost))
        assert secret not in httpx.get(f"{gw.url}/metrics").text
        one = admin(gw.url, "GET", "/admin/keys/shop").json()
        assert Decimal(one["spend_usd"]) == cost
        team = admin(gw.url, "GET", "/admin/teams").json()["data"][0]
        assert team["keys"] == ["shop"] and Decimal(team["spend_usd"]) == cost


def test_keys_cannot_be_managed_without_admin_keys(openai_standin):
    cfg = build_config(keys_config(openai_standin), {"GATEWAY_KEY_SECRET": "s"}, openai=openai_standin)
    with RunningGateway(cfg) as gw:  # a keyless gateway: its other admin views are open, this one is not
        r = httpx.post(f"{gw.url}/admin/keys", json={"alias": "a"})
        assert r.status_code == 403 and "GATEWAY_ADMIN_KEYS" in r.json()["error"]["message"]


def test_admin_api_needs_the_admin_key_and_checks_its_input(openai_standin):
    with _gateway(openai_standin) as gw:
        assert httpx.post(f"{gw.url}/admin/keys", json={"alias": "a"}).status_code == 401
        secret = create_key(gw.url, alias="a")
        r = httpx.get(f"{gw.url}/admin/keys", headers={"authorization": f"Bearer {secret}"})
        assert r.status_code == 401  # an app's key never manages keys
        for body in ({"alias": "a b"}, {"alias": "x", "budget_period": "year"}, {"alias": "x", "rpm": 0},
                     {"alias": "x", "budget_usd": "lots"}, {"alias": "x", "colour": "red"}, [1]):
            r = admin(gw.url, "POST", "/admin/keys", body)
            assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, body
        assert admin(gw.url, "POST", "/admin/keys", {"alias": "a"}).status_code == 409
        assert admin(gw.url, "POST", "/admin/keys", {"alias": "b", "team": "ghost"}).status_code == 400
        assert admin(gw.url, "GET", "/admin/keys/ghost").status_code == 404
        assert admin(gw.url, "PATCH", "/admin/keys/a", {"team": "other"}).status_code == 400


@pytest.mark.parametrize("when", [1e308, -1e308, -1, 18446744073709551615,
                                  "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59"])
def test_an_expiry_datetime_cannot_show_is_refused_before_the_key_is_stored(openai_standin, when):
    # it was stored with a 500 (its secret never shown), and every listing of the keys failed after it
    with _gateway(openai_standin) as gw:
        r = admin(gw.url, "POST", "/admin/keys", {"alias": "late", "expires_at": when})
        assert r.status_code == 400 and r.json()["error"]["param"] == "expires_at", r.text
        assert admin(gw.url, "GET", "/admin/keys/late").status_code == 404
        assert admin(gw.url, "GET", "/admin/keys").status_code == 200
        create_key(gw.url, alias="ok")
        assert admin(gw.url, "PATCH", "/admin/keys/ok", {"expires_at": 1e308}).status_code == 400
        assert admin(gw.url, "GET", "/admin/keys/ok").json()["expires_at"] is None


def test_a_virtual_key_lists_the_models_it_may_use(openai_standin):
    # GET /v1/models took only GATEWAY_API_KEYS: the SDK's models.list() was a 401 for a virtual key
    with _gateway(openai_standin) as gw:
        limited = _client(gw, create_key(gw.url, alias="emb-only", models=["text-embedding-3-small"]))
        assert {m.id.split("/")[-1] for m in limited.models.list()} == {"text-embedding-3-small"}  # (and pinned)
        secret = create_key(gw.url, alias="all")
        assert {"gpt-4o-mini", "text-embedding-3-small"} <= {m.id for m in _client(gw, secret).models.list()}
        admin(gw.url, "DELETE", "/admin/keys/all")
        for refused in (secret, "sk-gw-not-a-key", "unused"):  # revoked, unknown, not a key at all
            with pytest.raises(openai.AuthenticationError):
                _client(gw, refused).models.list()


def test_allowed_models_expiry_and_revocation(openai_standin):
    with _gateway(openai_standin) as gw:
        secret = create_key(gw.url, alias="emb-only", models=["text-embedding-3-small"])
        client = _client(gw, secret)
        with pytest.raises(openai.PermissionDeniedError) as e:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert e.value.body["code"] == "model_not_allowed"
        client.embeddings.create(model="text-embedding-3-small", input="hi")
        r = admin(gw.url, "PATCH", "/admin/keys/emb-only", {"models": None, "expires_at": "2000-01-01T00:00:00Z"})
        assert r.status_code == 200 and r.json()["expires_at"] == "2000-01-01T00:00:00Z"
        with pytest.raises(openai.AuthenticationError, match="expired"):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        admin(gw.url, "PATCH", "/admin/keys/emb-only", {"expires_at": None})
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert admin(gw.url, "DELETE", "/admin/keys/emb-only").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)


class _Clock:
    """Real time shifted: the gateway runs normally, and the test jumps across midnight UTC."""

    def __init__(self, at: datetime):
        import time
        self._time = time.time
        self.offset = at.timestamp() - time.time()

    def __call__(self) -> float:
        return self._time() + self.offset

    def jump_to(self, at: datetime) -> None:
        self.offset = at.timestamp() - self._time()


def test_daily_budget_stops_the_key_and_resets_at_utc_midnight(openai_standin):
    clock = _Clock(datetime(2026, 3, 31, 23, 58, tzinfo=timezone.utc))
    openai_standin.script(prompt_tokens=10, completion_tokens=20)  # 0.000225 USD a request
    with _gateway(openai_standin, clock=clock) as gw:
        secret = create_key(gw.url, alias="daily", budget_usd="0.0005", budget_period="day")
        client = _client(gw, secret)
        costs = []
        with pytest.raises(openai.RateLimitError) as e:
            for _ in range(10):
                raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG,
                                                                       max_tokens=30)
                costs.append(Decimal(raw.headers["x-gateway-cost-usd"]))
        err = e.value.body
        assert err["code"] == "budget_exceeded" and "'daily'" in err["message"]
        assert "2026-04-01T00:00:00Z" in err["message"]
        assert len(costs) == 3 and sum(costs) - costs[-1] < Decimal("0.0005") <= sum(costs)
        listed = admin(gw.url, "GET", "/admin/keys/daily").json()
        assert Decimal(listed["spend_usd"]) == sum(costs) and listed["resets_at"] == "2026-04-01T00:00:00Z"
        left = gw.app.registry.get_sample_value("gateway_budget_remaining_usd", {"scope": "key", "name": "daily"})
        assert left == pytest.approx(float(Decimal("0.0005") - sum(costs)))  # overspent by less than one request
        clock.jump_to(datetime(2026, 4, 1, 0, 0, 1, tzinfo=timezone.utc))
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=30)
        after = admin(gw.url, "GET", "/admin/keys/daily").json()
        assert Decimal(after["spend_usd"]) == costs[0] and after["resets_at"] == "2026-04-02T00:00:00Z"


def test_rate_limit_headers_on_every_answer_in_process(openai_standin):
    """The memory ledger (no Redis; also each replica's view during an outage) gives the same
    x-ratelimit-* as the Lua script: counted down on 2xx, exact on the 429s of either limit."""
    with _gateway(openai_standin) as gw:
        client = _client(gw, create_key(gw.url, alias="metered", rpm=3, tpm=250))

        def ask(max_tokens):
            return client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG,
                                                                    max_tokens=max_tokens)

        first = ask(100).headers
        n = 250 - int(first["x-ratelimit-remaining-tokens"])  # the counted prompt + 100
        assert first["x-ratelimit-remaining-requests"] == "2" and 100 < n < 125
        second = ask(100).headers
        assert second["x-ratelimit-remaining-requests"] == "1"
        assert second["x-ratelimit-remaining-tokens"] == str(250 - 2 * n)
        with pytest.raises(openai.RateLimitError) as e:  # n more tokens do not fit
            ask(100)
        h = e.value.response.headers
        assert e.value.body["code"] == "rate_limit_exceeded" and "250 tokens" in e.value.body["message"]
        assert h["x-ratelimit-remaining-tokens"] == str(250 - 2 * n) and h["x-ratelimit-remaining-requests"] == "1"
        assert 1 <= int(h["retry-after"]) <= 60 and float(h["x-ratelimit-reset-tokens"][:-1]) > 0
        third = ask(1).headers  # n - 99 tokens fit
        assert third["x-ratelimit-remaining-requests"] == "0"
        assert third["x-ratelimit-remaining-tokens"] == str(250 - 3 * n + 99)
        with pytest.raises(openai.RateLimitError) as e:
            ask(1)
        assert "3 requests" in e.value.body["message"]
        assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_cli_creates_lists_and_revokes_over_the_admin_api(openai_standin):
    import subprocess
    import sys

    from gateway_harness import ROOT

    with _gateway(openai_standin) as gw:
        env = {**__import__("os").environ, "GATEWAY_URL": gw.url, "GATEWAY_ADMIN_KEY": ADMIN}

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "gateway.cli", "keys", *args], capture_output=True,
                                  text=True, timeout=60, cwd=ROOT, env=env)

        made = cli("create", "--alias", "cli-key", "--budget-usd", "2.5", "--period", "week", "--rpm", "60")
        assert made.returncode == 0, made.stderr
        import json
        secret = json.loads(made.stdout)["key"]
        _client(gw, secret).chat.completions.create(model="gpt-4o-mini", messages=MSG)
        listed = cli("list")
        assert "cli-key" in listed.stdout and "budget_usd=2.5/week" in listed.stdout and secret not in listed.stdout
        assert cli("revoke", "cli-key").returncode == 0
        with pytest.raises(openai.AuthenticationError):
            _client(gw, secret).chat.completions.create(model="gpt-4o-mini", messages=MSG)
        gone = cli("revoke", "cli-key")
        assert gone.returncode == 1 and "No key with alias" in gone.stderr
        refused = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "list"], capture_output=True,
                                 text=True, timeout=60, cwd=ROOT, env={**env, "GATEWAY_ADMIN_KEY": "wrong"})
        assert refused.returncode == 1 and "admin key" in refused.stderr
