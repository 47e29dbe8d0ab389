"""Limits the worker and the bridge share (each checks them on its own side of the API)."""
from __future__ import annotations

import re

# The largest gRPC message either side sends or takes, and the largest REST body.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Inputs of one embedding request, and prompts of one completions request.
MAX_INPUTS = 2048
# A request id, as clients may give it (x-request-id, request_id): it travels in gRPC metadata
# and in logs, so 1 to 128 visible ASCII characters.
REQUEST_ID_PATTERN = re.compile(r"[!-~]{1,128}")
# The worker's default --max-running: sequences generated at once per model. The bridge runs as
# many calls of one request at once, enough to fill that batch.
DEFAULT_MAX_RUNNING = 16
