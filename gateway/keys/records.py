"""What the admin API stores for a key and a team, validated from its JSON.

Money is kept as integer nano-USD (as the spend ledger in ``gateway.state``); ``None``
means "no limit".
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

from ..http.errors import bad_request
from .periods import PERIODS

NANO = 10**9
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def usd_to_nanos(usd: Decimal) -> int:
    return int((usd * NANO).to_integral_value())


def nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-9)


@dataclass(frozen=True)
class TeamRecord:
    name: str
    budget_nanos: int | None = None
    budget_period: str = "month"

    def public(self) -> dict:
        return {"team": self.name, "budget_usd": _usd(self.budget_nanos), "budget_period": self.budget_period}


@dataclass(frozen=True)
class KeyRecord:
    alias: str
    digest: str = field(repr=False)
    team: str | None = None
    budget_nanos: int | None = None
    budget_period: str = "month"
    rpm: int | None = None
    tpm: int | None = None
    models: tuple[str, ...] | None = None
    expires_at: float | None = None  # unix s

    def public(self) -> dict:
        """Everything but the secret's digest."""
        return {
            "alias": self.alias, "team": self.team, "budget_usd": _usd(self.budget_nanos),
            "budget_period": self.budget_period, "rpm": self.rpm, "tpm": self.tpm,
            "models": list(self.models) if self.models is not None else None,
            "expires_at": None if self.expires_at is None else _shown(self.expires_at),
        }

    def limited(self) -> bool:
        """Whether a request must go through the shared ledger (budget, rate limits, team)."""
        return self.budget_nanos is not None or self.rpm is not None or self.tpm is not None or self.team is not None

    def to_json(self) -> dict:
        d = asdict(self)
        d["models"] = list(self.models) if self.models is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> "KeyRecord":
        models = d.get("models")
        return cls(**{**d, "models": tuple(models) if models is not None else None})


def _shown(unix_s: float) -> str | float:
    """An expiry as ISO 8601 UTC; as stored if datetime cannot show it (a record written before _when's range)."""
    try:
        return datetime.fromtimestamp(unix_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return unix_s


def _usd(nanos: int | None) -> str | None:
    return None if nanos is None else format(nanos_to_usd(nanos).normalize(), "f")


def _name(value, param: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise bad_request(f"'{param}' must be 1-64 characters of letters, digits, '.', '_' or '-'.", param=param)
    return value


def _budget(body: dict) -> dict:
    out = {}
    if "budget_usd" in body:
        raw = body["budget_usd"]
        if raw is None:
            out["budget_nanos"] = None
        else:
            try:
                usd = Decimal(str(raw)) if not isinstance(raw, bool) else None
            except InvalidOperation:
                usd = None
            if usd is None or not usd.is_finite() or usd < 0 or usd > 10**9:
                raise bad_request("'budget_usd' must be a number of USD between 0 and 1e9.", param="budget_usd")
            out["budget_nanos"] = usd_to_nanos(usd)
    if "budget_period" in body:
        if body["budget_period"] not in PERIODS:
            raise bad_request(f"'budget_period' must be one of {', '.join(PERIODS)}.", param="budget_period")
        out["budget_period"] = body["budget_period"]
    return out


def _count(body: dict, key: str) -> dict:
    if key not in body:
        return {}
    v = body[key]
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1 or v > 10**9):
        raise bad_request(f"'{key}' must be a positive integer or null.", param=key)
    return {key: v}


def key_changes(body, creating: bool) -> dict:
    """The fields of a POST (``creating``) or PATCH body, checked; unknown fields are refused."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    allowed = {"alias", "team", "budget_usd", "budget_period", "rpm", "tpm", "models", "expires_at"}
    if not creating:
        allowed -= {"alias", "team"}  # a key's team decides where its spend is pooled: fixed at creation
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"Unknown or unchangeable field '{unknown[0]}'.", param=unknown[0])
    out = {**_budget(body), **_count(body, "rpm"), **_count(body, "tpm")}
    if creating:
        out["alias"] = _name(body.get("alias"), "alias")
        if body.get("team") is not None:
            out["team"] = _name(body["team"], "team")
    if "models" in body:
        m = body["models"]
        if m is not None and not (isinstance(m, list) and all(isinstance(x, str) and x for x in m)):
            raise bad_request("'models' must be an array of model names or null.", param="models")
        out["models"] = tuple(m) if m is not None else None
    if "expires_at" in body:
        out["expires_at"] = _when(body["expires_at"])
    return out


# the last second datetime can show: a later (or negative) expiry was stored, then every listing of
# the keys failed on it with a 500 (datetime.fromtimestamp: year 10000 is out of range)
_LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()


def _when(value) -> float | None:
    if value is None:
        return None
    t = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        t = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            t = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
        except (ValueError, OverflowError, OSError):
            t = None
    if t is None:
        raise bad_request("'expires_at' must be an ISO 8601 time or unix seconds.", param="expires_at")
    if not 0.0 <= t <= _LATEST:  # also NaN
        raise bad_request("'expires_at' must be between 1970-01-01 and 9999-12-31 (UTC).", param="expires_at")
    return t


def team_from(body) -> TeamRecord:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    unknown = sorted(set(body) - {"team", "name", "budget_usd", "budget_period"})
    if unknown:
        raise bad_request(f"Unknown field '{unknown[0]}'.", param=unknown[0])
    name = _name(body.get("team", body.get("name")), "team")
    return replace(TeamRecord(name), **_budget(body))
