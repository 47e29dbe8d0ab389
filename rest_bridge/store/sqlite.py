"""The Store on an embedded SQLite database (the standard library's sqlite3), in WAL mode.

Every write is one transaction, synced to disk before it returns (synchronous=FULL): a batch
line's result, once kept, survives a crash of the bridge or of the machine. Deleted rows are
overwritten (secure_delete) and a deleted file's pages leave the write-ahead log at once, so a
deleted file's bytes are gone from the data directory.

One connection serves every thread, one call at a time: calls are short, and the bridge makes
them from a thread pool (asyncio.to_thread), never on its event loop.
"""
from __future__ import annotations

import json
import pathlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rest_bridge.store import BatchLine, Json, LineResult, Order, Page, StoredResponse

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    purpose TEXT NOT NULL,
    object TEXT NOT NULL,
    content BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    object TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (batch_id, line)
);
CREATE TABLE IF NOT EXISTS batch_results (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (batch_id, line)
);
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    object TEXT NOT NULL,
    input_items TEXT NOT NULL,
    history TEXT NOT NULL
);
"""
# Statuses after which a batch never changes again.
_FINAL_STATUSES = ("completed", "failed", "expired", "cancelled")


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class SQLiteStore:
    def __init__(self, path: pathlib.Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # Transactions are explicit (see _transaction); autocommit otherwise.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _page(self, table: str, where: str, args: tuple[Any, ...], after: str | None, limit: int, order: Order) -> Page:
        """Rows of `table` in creation order (or its reverse), after the row with id `after`."""
        direction, compare = ("ASC", ">") if order == "asc" else ("DESC", "<")
        conditions, values = [where] if where else [], list(args)
        if after is not None:
            conditions.append(f"seq {compare} COALESCE((SELECT seq FROM {table} WHERE id = ?), -1)")
            values.append(after)
        clause = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._query(f"SELECT object FROM {table} {clause} ORDER BY seq {direction} LIMIT ?", *values, limit + 1)
        return Page([json.loads(row[0]) for row in rows[:limit]], has_more=len(rows) > limit)

    # Files.

    def add_file(self, file: Json, content: bytes) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO files (id, purpose, object, content) VALUES (?, ?, ?, ?)",
                (file["id"], file["purpose"], _dump(file), content),
            )

    def get_file(self, file_id: str) -> Json | None:
        rows = self._query("SELECT object FROM files WHERE id = ?", file_id)
        return json.loads(rows[0][0]) if rows else None

    def list_files(self, purpose: str | None, after: str | None, limit: int, order: Order) -> Page:
        where, args = ("purpose = ?", (purpose,)) if purpose else ("", ())
        return self._page("files", where, args, after, limit, order)

    def file_content(self, file_id: str) -> bytes | None:
        rows = self._query("SELECT content FROM files WHERE id = ?", file_id)
        return bytes(rows[0][0]) if rows else None

    def delete_file(self, file_id: str) -> bool:
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
        if deleted:
            # The log still holds the pages written with the file: move them into the database
            # file (where secure_delete has zeroed them) and empty the log.
            self._query("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    # Batches.

    def add_batch(self, batch: Json) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO batches (id, status, object) VALUES (?, ?, ?)",
                (batch["id"], batch["status"], _dump(batch)),
            )

    def get_batch(self, batch_id: str) -> Json | None:
        rows = self._query("SELECT object FROM batches WHERE id = ?", batch_id)
        return json.loads(rows[0][0]) if rows else None

    def list_batches(self, after: str | None, limit: int) -> Page:
        return self._page("batches", "", (), after, limit, "desc")

    @staticmethod
    def _update_batch(db: sqlite3.Connection, batch: Json, expected_status: str) -> bool:
        cursor = db.execute(
            "UPDATE batches SET object = ?, status = ? WHERE id = ? AND status = ?",
            (_dump(batch), batch["status"], batch["id"], expected_status),
        )
        return cursor.rowcount > 0

    def update_batch(self, batch: Json, expected_status: str) -> bool:
        with self._transaction() as db:
            return self._update_batch(db, batch, expected_status)

    def unfinished_batches(self) -> list[Json]:
        marks = ", ".join("?" * len(_FINAL_STATUSES))
        rows = self._query(f"SELECT object FROM batches WHERE status NOT IN ({marks}) ORDER BY seq", *_FINAL_STATUSES)
        return [json.loads(row[0]) for row in rows]

    def start_batch(self, batch: Json, lines: list[BatchLine], expected_status: str) -> bool:
        with self._transaction() as db:
            # A validation repeated after a crash must never double the lines.
            db.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch["id"],))
            db.executemany(
                "INSERT INTO batch_lines (batch_id, line, custom_id, body) VALUES (?, ?, ?, ?)",
                [(batch["id"], line.line, line.custom_id, _dump(line.body)) for line in lines],
            )
            return self._update_batch(db, batch, expected_status)

    def pending_lines(self, batch_id: str) -> list[BatchLine]:
        rows = self._query(
            "SELECT line, custom_id, body FROM batch_lines WHERE batch_id = ? AND line NOT IN "
            "(SELECT line FROM batch_results WHERE batch_id = ?) ORDER BY line",
            batch_id,
            batch_id,
        )
        return [BatchLine(line, custom_id, json.loads(body)) for line, custom_id, body in rows]

    def add_result(self, batch_id: str, result: LineResult) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO batch_results (batch_id, line, ok, record) VALUES (?, ?, ?, ?)",
                (batch_id, result.line, int(result.ok), _dump(result.record)),
            )
            return cursor.rowcount > 0

    def result_counts(self, batch_id: str) -> tuple[int, int]:
        rows = self._query(
            "SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0) FROM batch_results WHERE batch_id = ?", batch_id
        )
        return int(rows[0][0]), int(rows[0][1])

    def results(self, batch_id: str) -> list[LineResult]:
        rows = self._query("SELECT line, ok, record FROM batch_results WHERE batch_id = ? ORDER BY line", batch_id)
        return [LineResult(line, bool(ok), json.loads(record)) for line, ok, record in rows]

    def finish_batch(self, batch: Json, files: list[tuple[Json, bytes]], expected_status: str) -> bool:
        with self._transaction() as db:
            if not self._update_batch(db, batch, expected_status):
                return False
            for file, content in files:
                db.execute(
                    "INSERT INTO files (id, purpose, object, content) VALUES (?, ?, ?, ?)",
                    (file["id"], file["purpose"], _dump(file), content),
                )
            db.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch["id"],))
            db.execute("DELETE FROM batch_results WHERE batch_id = ?", (batch["id"],))
            return True

    # Responses.

    def add_response(self, stored: StoredResponse) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO responses (id, object, input_items, history) VALUES (?, ?, ?, ?)",
                (stored.response["id"], _dump(stored.response), _dump(stored.input_items), _dump(stored.history)),
            )

    def get_response(self, response_id: str) -> StoredResponse | None:
        rows = self._query("SELECT object, input_items, history FROM responses WHERE id = ?", response_id)
        if not rows:
            return None
        response, input_items, history = (json.loads(column) for column in rows[0])
        return StoredResponse(response, input_items, history)

    def delete_response(self, response_id: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
