"""The Batch API's JSONL files (pure functions): input lines checked for the batch, output and
error lines in OpenAI's format.

Input line:  {"custom_id": "…", "method": "POST", "url": "/v1/chat/completions", "body": {…}}
Output line: {"id": "batch_req_…", "custom_id": "…", "response": {"status_code": 200,
              "request_id": "…", "body": {…}}, "error": null}
Error line:  the same with the failed request's status and error body in "response" (the
             request was made), or "response": null and "error": {"code", "message"} (it was
             not: the batch was cancelled or expired first).

A file that is not a batch's input fails the batch's validation, with an error per offending line
(its 1-based number): lines that are not JSON objects, a missing or repeated custom_id, a method
other than POST, a url other than the batch's endpoint, a body that is not an object. A body that
the endpoint refuses is that line's own failure (a 400 in the error file), not the batch's.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rest_bridge.store import BatchLine

Json = dict[str, Any]

MAX_LINES = 50_000
# Errors reported for an invalid file at most (the rest are like them).
MAX_ERRORS = 100


@dataclass
class Validation:
    lines: list[BatchLine] = field(default_factory=list)
    # OpenAI's batch errors: {"code", "message", "param", "line"}.
    errors: list[Json] = field(default_factory=list)

    def fail(self, code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})


def _check_line(number: int, raw: bytes, endpoint: str, seen: set[str], result: Validation) -> None:
    try:
        request = json.loads(raw)
    except ValueError:  # not UTF-8 or not JSON
        request = None
    if not isinstance(request, dict):
        result.fail("invalid_json_line", "This line is not parseable as valid JSON.", number)
        return
    custom_id, body = request.get("custom_id"), request.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        result.fail("invalid_request", "Each line needs a 'custom_id' string.", number, "custom_id")
    elif custom_id in seen:
        result.fail(
            "duplicate_custom_id", f"The custom_id {custom_id!r} is used by an earlier line.", number, "custom_id"
        )
    elif request.get("method") != "POST":
        result.fail("invalid_request", "The 'method' of each line must be 'POST'.", number, "method")
    elif request.get("url") != endpoint:
        message = f"The url {request.get('url')!r} of this line differs from the batch's endpoint {endpoint!r}."
        result.fail("url_mismatch", message, number, "url")
    elif not isinstance(body, dict):
        result.fail("invalid_request", "The 'body' of each line must be a JSON object.", number, "body")
    else:
        seen.add(custom_id)
        result.lines.append(BatchLine(number, custom_id, body))


def validate(content: bytes, endpoint: str) -> Validation:
    """The requests of a batch's input file, or its errors (then it runs none)."""
    result, seen = Validation(), set()
    numbered = [(number, raw) for number, raw in enumerate(content.splitlines(), start=1) if raw.strip()]
    if not numbered:
        result.fail("empty_file", "The input file has no requests.")
    elif len(numbered) > MAX_LINES:
        result.fail("too_many_tasks", f"A batch takes at most {MAX_LINES} requests; the file has {len(numbered)}.")
    else:
        for number, raw in numbered:
            _check_line(number, raw, endpoint, seen, result)
    return result


def output_line(line_id: str, custom_id: str, status_code: int, body: Json) -> Json:
    """The line of a request that was made: in the output file (2xx) or the error file. The line's
    id is also the request id its call went out with."""
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": line_id, "body": body},
        "error": None,
    }


def unrun_line(line_id: str, custom_id: str, code: str, message: str) -> Json:
    """The error-file line of a request that was never made (batch_cancelled, batch_expired)."""
    return {"id": line_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}


def jsonl(records: Iterable[Json]) -> bytes:
    return b"".join(
        json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for record in records
    )
