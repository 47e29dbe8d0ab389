"""The batch runner: every batch from validation to its output and error files, resumable, each
line's result kept exactly once, every line sent at the lowest priority.

A batch's status moves validating → in_progress → finalizing → completed, or to failed (its
input is not a batch's), cancelling → cancelled, or expired (past its 24 h window). Each step
is written to the store before the next begins, and each line's result as soon as it comes, so
a bridge that stops (killed or restarted) resumes its batches where they were when it starts
again: lines with a result are never run again, lines without one run (again). A line's result
is kept only when the worker's answer is final: a refusal for overload (429), an unreachable or
restarting worker (502, 503, 504) or an answer cut short by the worker's shutdown is tried
again, so restarting the whole stack loses no line.

Lines of all batches share `concurrency` calls in flight (--batch-concurrency): enough to keep
the worker's batch busy, and fewer than its sequences so that interactive requests find room at
once. The worker also admits them before any waiting line (priority), and preempts a running
line for them when it has no room left.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any

from rest_bridge import calls
from rest_bridge.batches import jsonl
from rest_bridge.batches.endpoints import ENDPOINTS, Endpoint, LineContext
from rest_bridge.batches.objects import file_object
from rest_bridge.errors import from_exception
from rest_bridge.ids import new_id
from rest_bridge.store import BatchLine, LineResult, Store
from rest_bridge.upstream import Upstreams

log = logging.getLogger("rest_bridge.batches")

Json = dict[str, Any]

# HTTP statuses of failures that say nothing about the request itself: tried again.
_RETRIED = frozenset({429, 502, 503, 504})
_RETRY_FIRST_S, _RETRY_MAX_S = 0.5, 5.0
# Lines never run when a batch ends early go to its error file with these.
_NOT_RUN = {
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
}


class BatchRunner:
    def __init__(
        self,
        store: Store,
        upstreams: Upstreams,
        concurrency: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._upstreams = upstreams
        self._slots = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Set when a running batch is being cancelled.
        self._cancels: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        """Resumes the batches a previous run of the bridge left unfinished."""
        for batch in await asyncio.to_thread(self._store.unfinished_batches):
            log.info("resuming batch %s (%s)", batch["id"], batch["status"])
            self.run(batch["id"])

    def run(self, batch_id: str) -> None:
        """Runs a batch from the status it is in (a new one, or one being cancelled)."""
        self._cancels.setdefault(batch_id, asyncio.Event())
        if batch_id not in self._tasks:
            # A context of its own: the batch is no part of the HTTP request that started it (its
            # trace span, for one).
            task = asyncio.create_task(self._run(batch_id), name=f"batch {batch_id}", context=contextvars.Context())
            self._tasks[batch_id] = task
            task.add_done_callback(lambda _: self._forget(batch_id))

    def cancel(self, batch_id: str) -> None:
        """Stops a batch's lines; its status says cancelling already (written by the caller)."""
        self.run(batch_id)
        self._cancels[batch_id].set()

    def _forget(self, batch_id: str) -> None:
        self._tasks.pop(batch_id, None)
        self._cancels.pop(batch_id, None)

    async def close(self) -> None:
        """Stops every batch where it is: the next start runs their unfinished lines."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _now(self) -> int:
        return int(self._clock())

    async def _reread(self, batch_id: str) -> Json:
        batch = await asyncio.to_thread(self._store.get_batch, batch_id)
        assert batch is not None  # batches are never deleted
        return batch

    async def _run(self, batch_id: str) -> None:
        try:
            batch = await self._reread(batch_id)
            if batch["status"] == "validating":
                batch = await self._validate(batch)
            if batch["status"] == "in_progress":
                batch = await self._run_lines(batch)  # still in_progress: it expired
            if batch["status"] in ("finalizing", "cancelling", "in_progress"):
                await self._finish(batch)
        except asyncio.CancelledError:
            raise
        except Exception:  # left where it is: the next start of the bridge resumes it
            log.exception("batch %s stopped", batch_id)

    async def _validate(self, batch: Json) -> Json:
        content = await asyncio.to_thread(self._store.file_content, batch["input_file_id"])
        if content is None:
            checked = jsonl.Validation()
            checked.fail(
                "file_not_found", f"The input file {batch['input_file_id']} was deleted.", param="input_file_id"
            )
        else:
            checked = await asyncio.to_thread(jsonl.validate, content, batch["endpoint"])
        if checked.errors:
            failed = {
                **batch,
                "status": "failed",
                "failed_at": self._now(),
                "errors": {"object": "list", "data": checked.errors},
            }
            if await asyncio.to_thread(self._store.finish_batch, failed, [], "validating"):
                return failed
        else:
            counts = {"total": len(checked.lines), "completed": 0, "failed": 0}
            started = {**batch, "status": "in_progress", "in_progress_at": self._now(), "request_counts": counts}
            if await asyncio.to_thread(self._store.start_batch, started, checked.lines, "validating"):
                return started
        return await self._reread(batch["id"])  # cancelled meanwhile

    def _expired(self, batch: Json) -> bool:
        return self._clock() >= batch["expires_at"]

    async def _run_lines(self, batch: Json) -> Json:
        """Runs the lines without a result until all have one, the batch is cancelled or it
        expires; returns the batch in its next status (its in_progress self when expired)."""
        cancel = self._cancels[batch["id"]]
        endpoint = ENDPOINTS[batch["endpoint"]]
        running: set[asyncio.Task[None]] = set()
        stopping = asyncio.ensure_future(cancel.wait())
        try:
            for line in await asyncio.to_thread(self._store.pending_lines, batch["id"]):
                if not await self._take_slot(batch, stopping):
                    break
                task = asyncio.create_task(self._run_line(batch["id"], endpoint, line))
                running.add(task)
                task.add_done_callback(lambda done: (running.discard(done), self._slots.release()))
            while running and not stopping.done() and not self._expired(batch):
                left = batch["expires_at"] - self._clock()
                await asyncio.wait({*running, stopping}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        if cancel.is_set() or self._expired(batch):
            return await self._reread(batch["id"])
        finalizing = {**batch, "status": "finalizing", "finalizing_at": self._now()}
        if await asyncio.to_thread(self._store.update_batch, finalizing, "in_progress"):
            return finalizing
        return await self._reread(batch["id"])  # cancelled meanwhile

    async def _take_slot(self, batch: Json, stopping: asyncio.Future[object]) -> bool:
        """Waits for a free slot for the batch's next line; False (and no slot taken) once the
        batch is cancelled or expired."""
        slot = asyncio.ensure_future(self._slots.acquire())
        left = max(0.0, batch["expires_at"] - self._clock())
        await asyncio.wait({slot, stopping}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if slot.done() and not stopping.done() and not self._expired(batch):
            return True
        if slot.done():
            self._slots.release()
        else:
            slot.cancel()
        return False

    def _line_context(self, line_id: str, model: str | None) -> LineContext:
        """What a line's call needs: the worker that serves its model (a fresh deadline each try)."""
        upstream = self._upstreams.for_model(model)
        return LineContext(calls.Worker(upstream.stubs(), upstream.call_options(line_id)), self._store, line_id)

    async def _run_line(self, batch_id: str, endpoint: Endpoint, line: BatchLine) -> None:
        """Runs one line until its answer is final, and keeps it."""
        line_id = new_id("batch_req_")
        wait = _RETRY_FIRST_S
        while True:
            try:
                request = endpoint.request(line.body)
                body = await endpoint.run(self._line_context(line_id, request.model), request)
                result = LineResult(line.line, True, jsonl.output_line(line_id, line.custom_id, 200, body))
                break
            except calls.Interrupted:
                pass
            except Exception as error:
                failure = from_exception(error, {})
                if failure.status not in _RETRIED:
                    record = jsonl.output_line(line_id, line.custom_id, failure.status, failure.body())
                    result = LineResult(line.line, False, record)
                    break
            await asyncio.sleep(wait)
            wait = min(wait * 2, _RETRY_MAX_S)
        await asyncio.to_thread(self._store.add_result, batch_id, result)

    async def _finish(self, batch: Json) -> None:
        """Writes the output and error files and the final status: completed (from finalizing),
        cancelled (from cancelling) or expired (from in_progress), the lines never run then in
        the error file."""
        final = {"finalizing": "completed", "cancelling": "cancelled", "in_progress": "expired"}[batch["status"]]
        results = await asyncio.to_thread(self._store.results, batch["id"])
        outputs = [result.record for result in results if result.ok]
        errors = [result.record for result in results if not result.ok]
        counts = {**batch["request_counts"], "completed": len(outputs), "failed": len(errors)}
        if final in _NOT_RUN:
            code, message = _NOT_RUN[final]
            not_run = await asyncio.to_thread(self._store.pending_lines, batch["id"])
            errors += [jsonl.unrun_line(new_id("batch_req_"), line.custom_id, code, message) for line in not_run]
        now = self._now()
        finished: Json = {**batch, "status": final, f"{final}_at": now, "request_counts": counts}
        files = []
        for key, records, kind in (("output_file_id", outputs, "output"), ("error_file_id", errors, "error")):
            if records:
                content = jsonl.jsonl(records)
                file = file_object(f"{batch['id']}_{kind}.jsonl", len(content), "batch_output", now)
                files.append((file, content))
                finished[key] = file["id"]
        if not await asyncio.to_thread(self._store.finish_batch, finished, files, batch["status"]):
            log.warning("batch %s changed while it was finishing; left as it is", batch["id"])
