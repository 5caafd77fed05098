"""``gateway keys create|list|revoke``: the admin API from a shell.

    GATEWAY_ADMIN_KEY=... gateway keys create --alias shop --team web --budget-usd 50 --period month --rpm 600
    gateway keys list
    gateway keys revoke shop

The gateway's URL comes from ``--url`` or ``GATEWAY_URL`` (default http://127.0.0.1:8080), the
admin key from ``GATEWAY_ADMIN_KEY`` (never a flag: it would show in the process list).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import httpx


def keys_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gateway keys", description="Manage virtual keys over the admin API.")
    ap.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"))
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="create a key; its secret is printed once")
    c.add_argument("--alias", required=True)
    c.add_argument("--team")
    c.add_argument("--budget-usd")
    c.add_argument("--period", dest="budget_period", choices=("day", "week", "month", "total"))
    c.add_argument("--rpm", type=int)
    c.add_argument("--tpm", type=int)
    c.add_argument("--models", help="comma-separated model names the key may use")
    c.add_argument("--expires-at", help="ISO 8601 time, e.g. 2026-12-31T00:00:00Z")
    sub.add_parser("list", help="every key with its limits and spend this period")
    r = sub.add_parser("revoke", help="revoke a key (every replica within 2 s)")
    r.add_argument("alias")
    args = ap.parse_args(argv)
    admin_key = os.environ.get("GATEWAY_ADMIN_KEY", "")
    headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
    url = args.url.rstrip("/")
    try:
        if args.command == "create":
            body = {k: v for k, v in (("alias", args.alias), ("team", args.team), ("budget_usd", args.budget_usd),
                                      ("budget_period", args.budget_period), ("rpm", args.rpm), ("tpm", args.tpm),
                                      ("expires_at", args.expires_at)) if v is not None}
            if args.models:
                body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
            resp = httpx.post(f"{url}/admin/keys", json=body, headers=headers, timeout=10)
        elif args.command == "list":
            resp = httpx.get(f"{url}/admin/keys", headers=headers, timeout=10)
        else:
            resp = httpx.delete(f"{url}/admin/keys/{args.alias}", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        print(f"gateway keys: cannot reach {url}: {type(e).__name__}", file=sys.stderr)
        return 1
    if resp.status_code >= 300:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {resp.status_code}"
        print(f"gateway keys {args.command}: {message}", file=sys.stderr)
        return 1
    data = resp.json()
    if args.command == "list":
        for k in data["data"]:
            print(f"{k['alias']}\tteam={k['team'] or '-'}\tspend_usd={k['spend_usd']}\tbudget_usd={k['budget_usd'] or '-'}"
                  f"/{k['budget_period']}\trpm={k['rpm'] or '-'}\ttpm={k['tpm'] or '-'}\tresets_at={k['resets_at'] or '-'}")
    else:
        print(json.dumps(data, indent=2))
    return 0
