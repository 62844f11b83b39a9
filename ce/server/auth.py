"""The bearer token check (the TLS layer has already required a client certificate signed by the job's CA)."""
from __future__ import annotations

import hmac

PUBLIC_ENDPOINTS = {"health"}


def token_ok(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
