"""gRPC servers inside the test process: started on a free loopback port, stopped at once after."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc


@asynccontextmanager
async def listening(server: grpc.aio.Server) -> AsyncIterator[str]:
    """`server`, serving on 127.0.0.1 until the block ends: its address."""
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)
