"""The request path's view of virtual keys: who is calling, may they, and what it cost.

    keys = KeyService(config, metrics, clock)
    grant = keys.authenticate(token)            # None: a GATEWAY_API_KEYS key (or an open gateway)
    keys.check_model(grant, "gpt-4o-mini")      # 403 if the key may not use it
    await keys.admit(rec, grant, model, pinned, prompt_tokens, max_tokens)   # 429 over budget / rate
    grant.rate_headers                           # x-ratelimit-* for every answer (keys with rpm/tpm)
    ...                                          # forward, price (rec.cost)
    keys.settle(rec)                             # once, whatever happened to the request
    await keys.refresh()                         # every tick: records, spend, settlements
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from decimal import Decimal

from ..http.errors import GatewayError
from ..spend.accounting import endpoint_charge_cap
from ..spend.cost import Usage, api_cost
from .ledger import WINDOW_MS, MemoryLedger, Reservation
from .periods import iso, period_end, period_id
from .records import KeyRecord, TeamRecord, nanos_to_usd, usd_to_nanos
from .secrets import PREFIX, digest, new_secret, same

log = logging.getLogger("gateway")
SLOT_GRACE_S = 35 * 86400  # a period's spend stays readable this long after it ends


class LimitError(GatewayError):
    """A 429 that carries ``retry-after`` (the proxy adds the grant's rate-limit headers)."""

    def __init__(self, message: str, code: str, headers: list):
        super().__init__(429, message, code=code)
        self.headers = headers


@dataclass(slots=True)
class Grant:
    """A request's key and, once admitted, what it holds in the ledger."""

    record: KeyRecord
    reserved: int = 0  # nano-USD
    slots: tuple = ()  # (slot, ttl_s) reserved in
    settled: bool = False
    rate_headers: list = ()  # OpenAI's x-ratelimit-* as the reserve script left them (rpm/tpm keys)


class KeyService:
    def __init__(self, config, metrics=None, clock=time.time, endpoints=None):
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.endpoints = endpoints if endpoints is not None else {}  # backend -> EndpointStatus
        if config.state.redis_url:
            from .ledger_redis import RedisLedger
            self.ledger = RedisLedger(config.state)
        else:
            self.ledger = MemoryLedger()
        self.keys: dict[str, KeyRecord] = {}
        self.teams: dict[str, TeamRecord] = {}
        self._by_digest: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._spend_children: dict = {}

    @property
    def _secret(self) -> bytes:
        return self.config.keys.secret.encode()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.ledger.start()
        await self.refresh()

    async def close(self) -> None:
        await self.refresh()
        await self.ledger.close()

    async def refresh(self) -> None:
        """Push settlements, reload records (a revoked key stops here within a tick) and spend."""
        async with self._lock:
            got = await self.ledger.sync(self._slots())
        if got is None:
            return  # Redis down: keep the last records
        keys, teams = got
        self.keys, self.teams = keys, teams
        self._by_digest = {rec.digest: alias for alias, rec in keys.items()}
        self._export_remaining()

    def _slots(self) -> list[str]:
        now = self.clock()
        slots = [self._slot("key", r.alias, r.budget_period, now)[0] for r in self.keys.values()]
        slots += [self._slot("team", t.name, t.budget_period, now)[0] for t in self.teams.values()]
        return slots

    def _slot(self, scope: str, name: str, period: str, now: float) -> tuple[str, int]:
        end = period_end(period, now)
        ttl = 0 if end is None else int(end - now) + SLOT_GRACE_S
        return self.ledger.slot(scope, name, period_id(period, now)), ttl

    # -- request path ------------------------------------------------------------------------
    def authenticate(self, token: str | None) -> Grant | None:
        virtual = bool(token) and token.startswith(PREFIX)
        if virtual and self.config.keys.secret:
            d = digest(self._secret, token)
            alias = self._by_digest.get(d)
            rec = self.keys.get(alias) if alias is not None else None
            if rec is not None and same(rec.digest, d):
                if rec.expires_at is not None and self.clock() >= rec.expires_at:
                    raise GatewayError(401, f"The key '{rec.alias}' expired at {iso(rec.expires_at)}.",
                                       code="invalid_api_key")
                return Grant(rec)
        static = self.config.auth.keys
        # an unknown virtual key (revoked, say) is refused even by a gateway open to anyone
        if not virtual and ((token in static) if static else not self.keys):
            return None
        raise GatewayError(401, "Invalid or missing gateway API key.", code="invalid_api_key")

    @staticmethod
    def check_model(grant: Grant | None, model: str) -> None:
        if grant is not None and grant.record.models is not None and model not in grant.record.models:
            raise GatewayError(403, f"The key '{grant.record.alias}' may not use the model `{model}`.",
                               param="model", code="model_not_allowed")

    def worst_case_nanos(self, model, pinned: str | None, prompt_tokens: int, max_tokens: int | None) -> int:
        """The most the request can cost on any route it may take (only the pinned one, if pinned).

        An API route: counted prompt + ``max_tokens`` at its prices. An endpoint route: the most
        one request can be attributed (``endpoint_charge_cap``), for the instances the endpoint can
        run: ``max_instances`` (the actuator's ceiling), or more if more are in service now.
        """
        out = max_tokens if max_tokens is not None else self.config.keys.default_max_tokens
        usage = Usage(prompt_tokens, out)
        worst = Decimal(0)
        for route in model.routes:
            if pinned is not None and route.backend != pinned:
                continue
            b = self.config.backends[route.backend]
            if b.type == "openai":
                if route.upstream_model in b.prices:
                    worst = max(worst, api_cost(b.prices[route.upstream_model], usage))
            else:
                status = self.endpoints.get(route.backend)
                running = status.instances_in_service if status is not None else 0
                worst = max(worst, endpoint_charge_cap(b.hourly_price_usd, max(b.max_instances, running)))
        return usd_to_nanos(worst)

    async def admit(self, rec, grant: Grant | None, model, pinned: str | None, prompt_tokens: int,
                    max_tokens: int | None) -> None:
        """Reserve the worst case in the key's (and team's) budget and count it against rpm/tpm."""
        if grant is None:
            return
        self.check_model(grant, model.name)
        key = grant.record
        now = self.clock()
        team = self.teams.get(key.team) if key.team else None
        budgeted = key.budget_nanos is not None or (team is not None and team.budget_nanos is not None)
        reserve = self.worst_case_nanos(model, pinned, prompt_tokens, max_tokens) if budgeted else 0
        out = max_tokens if max_tokens is not None else self.config.keys.default_max_tokens
        key_slot, key_ttl = self._slot("key", key.alias, key.budget_period, now)
        team_slot, team_ttl = (self._slot("team", team.name, team.budget_period, now) if team is not None
                               else (None, 0))
        # unique per reservation: a client's repeated x-request-id must not merge rpm entries
        r = Reservation(key.alias, f"{rec.request_id}.{os.urandom(4).hex()}", int(now * 1000), reserve, prompt_tokens + out,
                        key_slot, key.budget_nanos, team_slot, team.budget_nanos if team else None,
                        key.rpm, key.tpm, key_ttl, team_ttl)
        verdict = await self.ledger.reserve(r, key.alias in self.keys, self.config.keys.on_redis_down == "allow")
        kind = verdict[0]
        if kind == "unavailable":
            raise GatewayError(503, "Budgets cannot be checked right now (shared state unreachable); retry "
                               "shortly.", type="server_error", code="budget_unavailable")
        if len(verdict) > 2:  # the key has rpm/tpm: the window as the script saw it (see ledger.py)
            grant.rate_headers = rate_headers(key, verdict[2:], r.now_ms)
        if kind == "ok":
            grant.reserved = reserve
            grant.slots = tuple((s, t) for s, t in ((key_slot, key_ttl), (team_slot, team_ttl)) if s is not None)
            return
        if kind == "revoked":
            raise GatewayError(401, "Invalid or missing gateway API key.", code="invalid_api_key")
        if kind in ("rpm", "tpm"):
            wait_s = max(0.001, (int(verdict[1]) + WINDOW_MS - r.now_ms) / 1000)
            retry = str(max(1, math.ceil(wait_s)))
            what = (f"{key.rpm} requests" if kind == "rpm" else f"{key.tpm} tokens") + " per minute"
            raise LimitError(f"Rate limit reached for key '{key.alias}': {what}. Retry in {retry} s.",
                             "rate_limit_exceeded", [(b"retry-after", retry.encode())])
        if kind == "key":
            scope, name, budget, period = "key", key.alias, key.budget_nanos, key.budget_period
        else:
            scope, name, budget, period = "team", team.name, team.budget_nanos, team.budget_period
        resets = period_end(period, now)
        when = f"it resets at {iso(resets)}" if resets is not None else "it does not reset (budget_period total)"
        raise GatewayError(429, f"Budget exceeded: the {scope} '{name}' has spent "
                           f"${nanos_to_usd(int(verdict[1])).normalize():f} of its ${nanos_to_usd(budget).normalize():f}"
                           f" {period if period != 'total' else 'total'} budget; {when}.",
                           type="insufficient_quota", code="budget_exceeded")

    def settle(self, rec) -> None:
        """Once per admitted request, whatever its path: the reservation becomes the real cost."""
        grant = rec.grant
        if grant is None or grant.settled:
            return
        grant.settled = True
        cost = rec.cost if rec.cost is not None else Decimal(0)
        actual = usd_to_nanos(cost)
        for slot, ttl in grant.slots:
            self.ledger.settle(slot, actual - grant.reserved, ttl)
        if self.metrics is not None and cost:
            key = grant.record
            child = self._spend_children.get(key.alias)
            if child is None:
                child = self._spend_children[key.alias] = self.metrics.key_spend.labels(key.alias, key.team or "")
            child.inc(float(cost))
            tag = rec.tag
            if tag:
                self.metrics.tag_spend.labels(tag).inc(float(cost))

    def tag_of(self, raw: bytes | None) -> str | None:
        """``x-gateway-tags``: the first value in the configured set (bounded labels), else none."""
        if raw is None or not self.config.keys.tags:
            return None
        for t in raw.decode("latin-1").split(","):
            if t.strip() in self.config.keys.tags:
                return t.strip()
        return None

    # -- views for the admin API and /metrics -------------------------------------------------
    def spent(self, scope: str, name: str, period: str) -> tuple[Decimal, float | None]:
        now = self.clock()
        slot, _ = self._slot(scope, name, period, now)
        return nanos_to_usd(self.ledger.local.spent.get(slot, 0)), period_end(period, now)

    def describe(self, rec: KeyRecord) -> dict:
        spent, resets = self.spent("key", rec.alias, rec.budget_period)
        return {**rec.public(), "spend_usd": format(spent.normalize(), "f"), "resets_at": iso(resets)}

    def describe_team(self, team: TeamRecord) -> dict:
        spent, resets = self.spent("team", team.name, team.budget_period)
        return {**team.public(), "spend_usd": format(spent.normalize(), "f"), "resets_at": iso(resets),
                "keys": sorted(a for a, r in self.keys.items() if r.team == team.name)}

    def _export_remaining(self) -> None:
        if self.metrics is None:
            return
        for scope, items in (("key", [(r.alias, r.budget_nanos, r.budget_period) for r in self.keys.values()]),
                             ("team", [(t.name, t.budget_nanos, t.budget_period) for t in self.teams.values()])):
            for name, budget, period in items:
                if budget is not None:
                    spent, _ = self.spent(scope, name, period)
                    self.metrics.budget_remaining.labels(scope, name).set(float(nanos_to_usd(budget) - spent))

    # -- admin operations ---------------------------------------------------------------------
    async def create_key(self, fields: dict) -> tuple[str, KeyRecord]:
        if not self.config.keys.secret:
            raise GatewayError(400, f"Virtual keys are disabled: set {self.config.keys.secret_env} (the server "
                               "secret their hashes are keyed with) on every replica.", code="keys_disabled")
        secret = new_secret()
        rec = KeyRecord(digest=digest(self._secret, secret), **fields)
        if rec.team is not None and rec.team not in self.teams:
            await self.refresh()
            if rec.team not in self.teams:
                raise GatewayError(400, f"No team '{rec.team}': create it with POST /admin/teams first.",
                                   param="team")
        if not await self.ledger.put_key(rec, create=True):
            raise GatewayError(409, f"A key with alias '{rec.alias}' exists.", param="alias", code="alias_taken")
        self._add(rec)
        return secret, rec

    async def update_key(self, alias: str, fields: dict) -> KeyRecord:
        rec = replace(self._known(alias), **fields)
        await self.ledger.put_key(rec, create=False)
        self._add(rec)
        return rec

    async def revoke_key(self, alias: str) -> None:
        self._known(alias)
        await self.ledger.delete_key(alias)
        rec = self.keys.pop(alias)
        self._by_digest.pop(rec.digest, None)

    async def put_team(self, team: TeamRecord) -> None:
        await self.ledger.put_team(team)
        self.teams[team.name] = team

    def _known(self, alias: str) -> KeyRecord:
        rec = self.keys.get(alias)
        if rec is None:
            raise GatewayError(404, f"No key with alias '{alias}'.", code="key_not_found")
        return rec

    def _add(self, rec: KeyRecord) -> None:
        self.keys[rec.alias] = rec
        self._by_digest[rec.digest] = rec.alias


def rate_headers(key: KeyRecord, window, now_ms: int) -> list:
    """OpenAI's ``x-ratelimit-*`` for a key with rpm and/or tpm, from the reserve script's answer.

    ``window``: (requests, oldest request ms, tokens, oldest token entry ms) in the last 60 s,
    this request included if it was admitted. ``reset``: until the oldest entry leaves the
    sliding window, freeing room (what ``retry-after`` waits for on a 429); "0s" when empty.
    """
    requests, oldest_req, tokens, oldest_tok = (int(x) for x in window)
    h = []
    if key.rpm is not None:
        h += [(b"x-ratelimit-limit-requests", str(key.rpm).encode()),
              (b"x-ratelimit-remaining-requests", str(max(0, key.rpm - requests)).encode()),
              (b"x-ratelimit-reset-requests", _reset(requests, oldest_req, now_ms))]
    if key.tpm is not None:
        h += [(b"x-ratelimit-limit-tokens", str(key.tpm).encode()),
              (b"x-ratelimit-remaining-tokens", str(max(0, key.tpm - tokens)).encode()),
              (b"x-ratelimit-reset-tokens", _reset(tokens, oldest_tok, now_ms))]
    return h


def _reset(used: int, oldest_ms: int, now_ms: int) -> bytes:
    if not used:
        return b"0s"
    return f"{max(0, oldest_ms + WINDOW_MS - now_ms) / 1000:.3f}s".encode()
