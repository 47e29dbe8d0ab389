"""The Batch API's JSONL: input validation with line numbers, output and error lines."""
from __future__ import annotations

import json

from rest_bridge.batches import jsonl

ENDPOINT = "/v1/chat/completions"


def _line(custom_id: str, **changes: object) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": {"model": "m"}, **changes})


def test_valid_lines_keep_their_numbers_and_blank_lines_are_skipped():
    content = f"{_line('a')}\n\n{_line('b', body={'messages': []})}\n".encode()
    checked = jsonl.validate(content, ENDPOINT)
    assert checked.errors == []
    assert [(line.line, line.custom_id, line.body) for line in checked.lines] == [
        (1, "a", {"model": "m"}),
        (3, "b", {"messages": []}),
    ]


def test_each_offending_line_is_reported_with_its_number():
    lines = [
        _line("a"),
        "[1, 2]",
        b"\xff\xfe".decode("latin-1"),
        json.dumps({"method": "POST", "url": ENDPOINT, "body": {}}),
        _line("a"),
        _line("c", method="GET"),
        _line("d", url="/v1/embeddings"),
        _line("e", body="text"),
    ]
    checked = jsonl.validate("\n".join(lines).encode(), ENDPOINT)
    assert [(error["line"], error["code"], error["param"]) for error in checked.errors] == [
        (2, "invalid_json_line", None),
        (3, "invalid_json_line", None),
        (4, "invalid_request", "custom_id"),
        (5, "duplicate_custom_id", "custom_id"),
        (6, "invalid_request", "method"),
        (7, "url_mismatch", "url"),
        (8, "invalid_request", "body"),
    ]
    assert "/v1/embeddings" in checked.errors[5]["message"] and ENDPOINT in checked.errors[5]["message"]


def test_an_empty_file_and_too_many_lines_fail_as_a_whole():
    assert [error["code"] for error in jsonl.validate(b"\n  \n", ENDPOINT).errors] == ["empty_file"]
    many = "\n".join(_line(str(i)) for i in range(jsonl.MAX_LINES + 1)).encode()
    [error] = jsonl.validate(many, ENDPOINT).errors
    assert error["code"] == "too_many_tasks" and str(jsonl.MAX_LINES) in error["message"]


def test_output_and_error_lines_have_openai_shape():
    made = jsonl.output_line("batch_req_1", "a", 200, {"object": "chat.completion"})
    assert made == {
        "id": "batch_req_1",
        "custom_id": "a",
        "response": {"status_code": 200, "request_id": "batch_req_1", "body": {"object": "chat.completion"}},
        "error": None,
    }
    unrun = jsonl.unrun_line("batch_req_2", "b", "batch_cancelled", "Not run.")
    assert unrun == {
        "id": "batch_req_2",
        "custom_id": "b",
        "response": None,
        "error": {"code": "batch_cancelled", "message": "Not run."},
    }
    content = jsonl.jsonl([made, unrun])
    assert content.endswith(b"\n") and [json.loads(line) for line in content.splitlines()] == [made, unrun]
