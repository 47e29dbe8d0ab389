"""Optional API keys, shared by the worker (gRPC) and the bridge (REST).

Both check `Bearer KEY` credentials (the `Authorization` header, or `authorization` metadata)
against every configured key in constant time. No key configured means no authentication.
"""
from __future__ import annotations

import argparse
import hmac
import os
from collections.abc import Sequence

ENV_VAR = "TOKENWIRE_API_KEYS"


def keys_from_env() -> list[str]:
    """TOKENWIRE_API_KEYS, comma-separated; blanks are ignored."""
    return [key.strip() for key in os.environ.get(ENV_VAR, "").split(",") if key.strip()]


def add_api_key_argument(group: argparse._ArgumentGroup) -> None:
    """`--api-key KEY` (repeatable), added to the keys of TOKENWIRE_API_KEYS."""
    group.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        default=keys_from_env(),
        metavar="KEY",
        help="require this key: `Authorization: Bearer KEY` on REST, `authorization: Bearer KEY` "
        "metadata on gRPC; health and metrics stay open (repeatable; env TOKENWIRE_API_KEYS, "
        "comma-separated; default: no authentication)",
    )


def bearer_token(value: str | None) -> str | None:
    """The KEY of a `Bearer KEY` credential, or None when there is none."""
    scheme, _, token = (value or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def key_allowed(token: str | None, keys: Sequence[str]) -> bool:
    """True when `token` is one of `keys`. Compares with every key, in constant time each, so
    the answer's timing does not tell which key (or which prefix) came close."""
    if token is None:
        return False
    presented = token.encode()
    matches = [hmac.compare_digest(presented, key.encode()) for key in keys]
    return any(matches)
