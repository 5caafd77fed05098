"""Virtual key secrets: ``sk-gw-`` + 32 random bytes, shown once, kept only as an HMAC.

The HMAC key (the server secret) comes from an environment variable, so a copy of Redis
alone cannot be used to check guesses offline.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets as _random

PREFIX = "sk-gw-"


def new_secret() -> str:
    return PREFIX + _random.token_urlsafe(32)


def digest(server_secret: bytes, key: str) -> str:
    return hmac.new(server_secret, key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
