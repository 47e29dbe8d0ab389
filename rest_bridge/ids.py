"""Ids of the objects the bridge makes, in OpenAI's forms."""
from __future__ import annotations

import uuid


def new_id(prefix: str) -> str:
    """`prefix` with its separator ("resp_", "file-", "batch_req_") and 32 random hex digits."""
    return prefix + uuid.uuid4().hex
