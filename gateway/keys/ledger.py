"""The budget and rate-limit ledger: reserve before forwarding, settle after.

One ``Reservation`` holds everything a request is checked against; ``LocalLedger`` decides
it in this process (the memory store, and the Redis store's view while Redis is down),
``RedisLedger`` in one Lua script on the shared Redis. Both give the same verdicts:

- ``("ok",)``: admitted; ``reserve_nanos`` is counted against the key's and the team's
  period spend until ``settle`` replaces it with the real cost;
- ``("revoked",)``, ``("rpm", oldest_ms)``, ``("tpm", oldest_ms)``, ``("key", spent)``,
  ``("team", spent)``: refused, and why.

For a key with ``rpm`` or ``tpm`` every verdict but ``revoked`` goes on with the sliding window
as it stands after the decision (``ok``'s second item is 0): ``requests, oldest request ms,
tokens, oldest token entry ms`` (the tokens 0 without ``tpm``), from which every answer gets
OpenAI's ``x-ratelimit-*`` headers with no second look at Redis.

A request is admitted while the spend (settled + reserved) is *below* the budget, so the
last admitted one may cross it: a burst overspends by at most one request's real cost.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

WINDOW_MS = 60_000  # rpm / tpm: any sliding 60 s


@dataclass(frozen=True, slots=True)
class Reservation:
    alias: str
    member: str  # unique per request (the request id): one entry in the sliding windows
    now_ms: int
    reserve_nanos: int
    tokens: int  # counted prompt + max_tokens, as OpenAI counts a request against TPM
    key_slot: str | None = None  # ledger key of the key's period spend (None: no key budget)
    key_budget: int | None = None
    team_slot: str | None = None
    team_budget: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    slot_ttl_s: int = 0  # 0: never expires (budget_period total)
    team_ttl_s: int = 0


class LocalLedger:
    """Spend per ledger key and per-key sliding windows, all in this process."""

    def __init__(self):
        self.spent: dict[str, int] = collections.defaultdict(int)  # nano-USD, settled + reserved
        self._requests: dict[str, collections.deque] = {}  # alias -> (ms, member)
        self._tokens: dict[str, collections.deque] = {}  # alias -> (ms, tokens)

    def reserve(self, r: Reservation, exists: bool) -> tuple:
        if not exists:
            return ("revoked",)
        limited = r.rpm is not None or r.tpm is not None
        start = r.now_ms - WINDOW_MS
        reqs = self._window(self._requests, r.alias, start)
        toks = self._window(self._tokens, r.alias, start)
        used = sum(t for _, t in toks) if r.tpm is not None else 0

        def answer(kind: str, detail) -> tuple:
            if not limited:
                return (kind, detail)
            return (kind, detail, len(reqs), reqs[0][0] if reqs else r.now_ms, used,
                    toks[0][0] if toks and r.tpm is not None else r.now_ms)

        if r.rpm is not None and len(reqs) >= r.rpm:
            return answer("rpm", reqs[0][0])
        if r.tpm is not None and toks and used + r.tokens > r.tpm:
            return answer("tpm", toks[0][0])
        if r.key_slot is not None and r.key_budget is not None and self.spent[r.key_slot] >= r.key_budget:
            return answer("key", self.spent[r.key_slot])
        if r.team_slot is not None and r.team_budget is not None and self.spent[r.team_slot] >= r.team_budget:
            return answer("team", self.spent[r.team_slot])
        for slot in (r.key_slot, r.team_slot):
            if slot is not None:
                self.spent[slot] += r.reserve_nanos
        reqs.append((r.now_ms, r.member))
        toks.append((r.now_ms, r.tokens))
        if r.tpm is not None:
            used += r.tokens
        return answer("ok", 0) if limited else ("ok",)

    def add(self, slot: str, nanos: int) -> None:
        self.spent[slot] += nanos

    @staticmethod
    def _window(table: dict, alias: str, start: int) -> collections.deque:
        q = table.get(alias)
        if q is None:
            q = table[alias] = collections.deque()
        while q and q[0][0] <= start:
            q.popleft()
        return q


class MemoryLedger:
    """One process: records and spend in dicts (the state store has no Redis either)."""

    kind = "memory"
    healthy = True

    def __init__(self):
        self.local = LocalLedger()
        self._keys: dict = {}
        self._teams: dict = {}

    def slot(self, scope: str, name: str, period: str) -> str:
        return f"{scope}:{name}:{period}"

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def put_key(self, rec, create: bool) -> bool:
        if create and rec.alias in self._keys:
            return False
        self._keys[rec.alias] = rec
        return True

    async def delete_key(self, alias: str) -> bool:
        return self._keys.pop(alias, None) is not None

    async def put_team(self, team) -> None:
        self._teams[team.name] = team

    async def reserve(self, r: Reservation, exists: bool, local_ok: bool = True) -> tuple:
        return self.local.reserve(r, exists)

    def settle(self, slot: str, delta_nanos: int, ttl_s: int) -> None:
        self.local.add(slot, delta_nanos)

    async def sync(self, slots):
        return dict(self._keys), dict(self._teams)
