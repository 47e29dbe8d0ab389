"""Optional API keys on the REST API: `Authorization: Bearer KEY`, checked in constant time.

/health and /metrics stay open for probes and scrapers, and so do the playground's page and files
(they hold no data; the page sends the key typed into it, like any other client). A refusal is a
401 in OpenAI's error envelope with a WWW-Authenticate challenge; the key itself is never echoed.
"""
from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from rest_bridge.errors import APIError
from rest_bridge.routes.playground import STATIC_PREFIX
from tokenwire.api_keys import bearer_token, key_allowed

OPEN_PATHS = frozenset({"/health", "/metrics", "/"})
_REALM = 'Bearer realm="tokenwire"'


def unauthorized(token: str | None) -> APIError:
    """The 401 for a request that sent no key (`token` None) or a wrong one."""
    if token is None:
        message = (
            "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
            "(Authorization: Bearer YOUR_KEY)."
        )
        challenge = _REALM
    else:
        message = "Incorrect API key provided."
        challenge = f'{_REALM}, error="invalid_token"'
    return APIError(
        401, message, type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": challenge}
    )


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(f"{STATIC_PREFIX}/")


class ApiKeyMiddleware:
    """Answers 401 unless the request carries one of `keys` (or asks for an open path)."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = tuple(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = bearer_token(Headers(scope=scope).get("authorization"))
        if key_allowed(token, self.keys):
            await self.app(scope, receive, send)
            return
        await unauthorized(token).response()(scope, receive, send)
