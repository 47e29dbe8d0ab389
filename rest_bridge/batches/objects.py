"""The file and batch objects of OpenAI's Files and Batch APIs, as the bridge keeps and shows them."""
from __future__ import annotations

from typing import Any

from rest_bridge.ids import new_id

Json = dict[str, Any]

COMPLETION_WINDOW = "24h"
_COMPLETION_WINDOW_S = 24 * 3600


def file_object(filename: str, size: int, purpose: str, created_at: int) -> Json:
    return {
        "id": new_id("file-"),
        "object": "file",
        "bytes": size,
        "created_at": created_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def new_batch(input_file_id: str, endpoint: str, metadata: dict[str, str] | None, created_at: int) -> Json:
    return {
        "id": new_id("batch_"),
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": COMPLETION_WINDOW,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created_at,
        "in_progress_at": None,
        "expires_at": created_at + _COMPLETION_WINDOW_S,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
    }
