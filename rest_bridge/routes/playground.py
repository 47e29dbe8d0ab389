"""GET /: the chat playground, plain static files shipped in rest_bridge/static (no build step,
no CDN). The page talks to this bridge's own OpenAI API, like any other client."""
from __future__ import annotations

import pathlib

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

STATIC_DIR = pathlib.Path(__file__).resolve().parents[1] / "static"
STATIC_PREFIX = "/static"

# The page loads only its own files and calls only this origin: even if a bug ever let model
# output into the DOM as HTML, no inline script, handler or foreign resource would run.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

static_files = StaticFiles(directory=STATIC_DIR)


async def page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)
