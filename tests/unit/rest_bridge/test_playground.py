"""GET / and /static/: the playground's page and files as the bridge serves them (the page
itself runs in tests/browser)."""
from __future__ import annotations

import re

import httpx

from rest_bridge.routes.playground import STATIC_DIR

# What the page and its modules load: src/href attributes, and static ES module imports.
_PAGE_ASSETS = re.compile(r'(?:src|href)="(/static/[^"]+)"')
_MODULE_IMPORTS = re.compile(r'^import .* from "\./([^"]+)";$', re.MULTILINE)


async def test_the_page_is_served_at_the_root_under_a_strict_content_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/static/playground.js">' in response.text


async def test_every_file_the_page_loads_is_served(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    assets = set(_PAGE_ASSETS.findall(page))
    for module in STATIC_DIR.glob("*.js"):
        assets |= {f"/static/{name}" for name in _MODULE_IMPORTS.findall(module.read_text())}
    assert {"/static/playground.css", "/static/playground.js", "/static/api.js", "/static/markdown.js"} <= assets
    for asset in sorted(assets):
        response = await client.get(asset)
        assert response.status_code == 200, asset
        expected = "text/css" if asset.endswith(".css") else "text/javascript"
        assert response.headers["content-type"].startswith(expected), asset


async def test_a_missing_file_is_a_404_in_the_envelope(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/nothing.js")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Unknown request URL: GET /static/nothing.js."
    assert (await client.post("/")).status_code == 405
