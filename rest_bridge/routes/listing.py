"""OpenAI's cursor lists: the `after`, `limit` and `order` query parameters, and the list object
`{"object": "list", "data", "first_id", "last_id", "has_more"}`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from rest_bridge.errors import APIError
from rest_bridge.store import Order, Page


@dataclass(frozen=True)
class PageQuery:
    after: str | None
    limit: int
    order: Order


def page_query(request: Request, default_limit: int, max_limit: int) -> PageQuery:
    """The list's query parameters; out of range or malformed ones are a 400 naming them."""
    params = request.query_params
    raw_limit = params.get("limit", str(default_limit))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= max_limit:
        raise APIError(400, f"Invalid value for 'limit': it must be an integer from 1 to {max_limit}.", param="limit")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise APIError(400, "Invalid value for 'order': it must be 'asc' or 'desc'.", param="order")
    return PageQuery(after=params.get("after") or None, limit=int(raw_limit), order=order)  # type: ignore[arg-type]


def list_page(page: Page) -> dict[str, Any]:
    items = page.items
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": page.has_more,
    }
