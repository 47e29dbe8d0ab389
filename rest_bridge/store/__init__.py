"""The bridge's durable state behind one small interface: files and their bytes, batches with
their lines and per-line results, and stored responses.

Records are the OpenAI JSON objects themselves (a file object, a batch object, a response), so
an implementation only keeps and finds them. SQLite (sqlite.py) is the one implementation; a
shared server database can take its place when several bridges serve the same clients, by
implementing this protocol. Methods are blocking: call them through `asyncio.to_thread`.
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Json = dict[str, Any]
Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class Page:
    """One page of a list, in the order asked for; `has_more` when later pages follow."""

    items: list[Json]
    has_more: bool


@dataclass(frozen=True)
class BatchLine:
    """One request of a batch's input file: its 1-based line number and what it asks."""

    line: int
    custom_id: str
    body: Json


@dataclass(frozen=True)
class LineResult:
    """What one line gave: `record` is its line in the output file (`ok`) or the error file."""

    line: int
    ok: bool
    record: Json


@dataclass(frozen=True)
class StoredResponse:
    """A response with what continues it: its own input items and the items before them."""

    response: Json
    input_items: list[Json]
    # The conversation before this response's input (from previous_response_id), as items.
    history: list[Json]


class Store(Protocol):
    # Files: `content` is the file's bytes; deleting a file deletes them.
    def add_file(self, file: Json, content: bytes) -> None: ...
    def get_file(self, file_id: str) -> Json | None: ...
    def list_files(self, purpose: str | None, after: str | None, limit: int, order: Order) -> Page: ...
    def file_content(self, file_id: str) -> bytes | None: ...
    def delete_file(self, file_id: str) -> bool: ...

    # Batches: the batch object, its lines once validated and one result per line at most. A
    # batch changes only from the status its writer saw (`expected_status`): the runner and a
    # cancellation never undo each other's step; False when the status had changed.
    def add_batch(self, batch: Json) -> None: ...
    def get_batch(self, batch_id: str) -> Json | None: ...
    def list_batches(self, after: str | None, limit: int) -> Page: ...
    def update_batch(self, batch: Json, expected_status: str) -> bool: ...
    def unfinished_batches(self) -> list[Json]: ...
    def start_batch(self, batch: Json, lines: list[BatchLine], expected_status: str) -> bool:
        """Keeps the lines (whatever the status) and updates the batch, at once."""

    def pending_lines(self, batch_id: str) -> list[BatchLine]:
        """The lines without a result, in line order."""

    def add_result(self, batch_id: str, result: LineResult) -> bool:
        """Keeps a line's result; False (and nothing kept) when the line already has one."""

    def result_counts(self, batch_id: str) -> tuple[int, int]:
        """(lines that succeeded, lines that failed) so far."""

    def results(self, batch_id: str) -> list[LineResult]: ...
    def finish_batch(self, batch: Json, files: list[tuple[Json, bytes]], expected_status: str) -> bool:
        """Adds the output and error files, updates the batch and drops its lines and results,
        at once (or nothing, when the status had changed)."""

    # Responses (only those created with store: true).
    def add_response(self, stored: StoredResponse) -> None: ...
    def get_response(self, response_id: str) -> StoredResponse | None: ...
    def delete_response(self, response_id: str) -> bool: ...

    def close(self) -> None: ...


def default_data_dir() -> pathlib.Path:
    """$XDG_DATA_HOME/tokenwire, else ~/.local/share/tokenwire: durable data, unlike the cache."""
    base = os.environ.get("XDG_DATA_HOME") or pathlib.Path.home() / ".local" / "share"
    return pathlib.Path(base) / "tokenwire"


def open_store(data_dir: pathlib.Path) -> Store:
    from rest_bridge.store.sqlite import SQLiteStore

    return SQLiteStore(data_dir / "bridge.sqlite3")
