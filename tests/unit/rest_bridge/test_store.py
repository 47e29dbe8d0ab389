"""The SQLite store: what it keeps survives reopening, lists page by creation, a line's result is
kept once, a batch changes only from the status its writer saw, deleted files leave no bytes."""
from __future__ import annotations

import pathlib

import pytest

from rest_bridge.batches.objects import file_object, new_batch
from rest_bridge.store import BatchLine, LineResult, StoredResponse, open_store
from rest_bridge.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: pathlib.Path):
    opened = open_store(tmp_path)
    yield opened
    opened.close()


def test_wal_mode_and_reopening_keeps_everything(tmp_path):
    store = open_store(tmp_path)
    file = file_object("in.jsonl", 3, "batch", 100)
    store.add_file(file, b"abc")
    store.add_response(StoredResponse({"id": "resp_1", "output": []}, [{"id": "msg_1"}], []))
    store.close()
    reopened = open_store(tmp_path)
    assert isinstance(reopened, SQLiteStore)
    assert reopened._query("PRAGMA journal_mode") == [("wal",)]
    assert reopened.get_file(file["id"]) == file and reopened.file_content(file["id"]) == b"abc"
    assert reopened.get_response("resp_1").input_items == [{"id": "msg_1"}]
    reopened.close()


def test_files_page_in_creation_order_by_purpose(store):
    files = [file_object(f"{i}.jsonl", 1, "batch" if i != 2 else "batch_output", 100) for i in range(5)]
    for file in files:
        store.add_file(file, b"x")
    ids = [file["id"] for file in files]
    first = store.list_files(None, None, 2, "desc")
    assert [f["id"] for f in first.items] == [ids[4], ids[3]] and first.has_more
    rest = store.list_files(None, ids[3], 10, "desc")
    assert [f["id"] for f in rest.items] == [ids[2], ids[1], ids[0]] and not rest.has_more
    batch_only = store.list_files("batch", ids[0], 10, "asc")
    assert [f["id"] for f in batch_only.items] == [ids[1], ids[3], ids[4]]


def test_a_line_result_is_kept_once_and_pending_lines_are_the_others(store):
    batch = new_batch("file-1", "/v1/chat/completions", None, 100)
    store.add_batch(batch)
    lines = [BatchLine(number, f"c{number}", {"n": number}) for number in (1, 2, 4)]
    assert store.start_batch({**batch, "status": "in_progress"}, lines, "validating")
    assert store.add_result(batch["id"], LineResult(2, True, {"custom_id": "c2"}))
    assert not store.add_result(batch["id"], LineResult(2, False, {"custom_id": "c2", "again": True}))
    assert store.add_result(batch["id"], LineResult(4, False, {"custom_id": "c4"}))
    assert [line.line for line in store.pending_lines(batch["id"])] == [1]
    assert store.result_counts(batch["id"]) == (1, 1)
    assert [result.record for result in store.results(batch["id"])] == [{"custom_id": "c2"}, {"custom_id": "c4"}]


def test_a_batch_changes_only_from_the_status_its_writer_saw(store):
    batch = new_batch("file-1", "/v1/chat/completions", {"k": "v"}, 100)
    store.add_batch(batch)
    assert store.update_batch({**batch, "status": "cancelling"}, "validating")
    # The runner, which saw it validating, cannot move it on any more.
    assert not store.start_batch({**batch, "status": "in_progress"}, [BatchLine(1, "a", {})], "validating")
    assert store.get_batch(batch["id"])["status"] == "cancelling"
    assert [line.custom_id for line in store.pending_lines(batch["id"])] == ["a"]  # kept for the error file
    assert [b["id"] for b in store.unfinished_batches()] == [batch["id"]]
    output = file_object("out.jsonl", 2, "batch_output", 101)
    assert not store.finish_batch({**batch, "status": "completed"}, [(output, b"{}")], "finalizing")
    assert store.get_file(output["id"]) is None
    assert store.finish_batch({**batch, "status": "cancelled"}, [(output, b"{}")], "cancelling")
    assert store.get_file(output["id"]) is not None and store.unfinished_batches() == []
    assert store.pending_lines(batch["id"]) == []


def test_deleting_a_file_leaves_none_of_its_bytes(tmp_path, store):
    marker = b"secret-bytes-" * 500
    file = file_object("in.jsonl", len(marker), "batch", 100)
    store.add_file(file, marker)
    assert store.delete_file(file["id"]) and not store.delete_file(file["id"])
    assert store.file_content(file["id"]) is None
    for path in tmp_path.iterdir():
        assert b"secret-bytes-" not in path.read_bytes(), path
