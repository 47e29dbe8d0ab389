"""The gRPC side of the bridge: a small round-robin pool of channels per worker address, whose
calls carry the request id (and the worker's API key) and feed the bridge's usage metrics; and
which address serves which model."""
from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import grpc

from rest_bridge.config import METADATA_TIMEOUT_S
from rest_bridge.metrics import client_interceptors
from tokenwire import tracing
from tokenwire.limits import MAX_MESSAGE_BYTES
from tokenwire.stubs import WorkerStubs

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Without it, channels with equal options share one connection and the pool is pointless.
    ("grpc.use_local_subchannel_pool", 1),
    # A worker that restarts is reached within a second of serving again: gRPC's default backoff
    # grows to two minutes between attempts to connect.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class Upstream:
    """Channels to the worker, opened on first use inside the running event loop.

    One HTTP/2 connection carries about 100 concurrent streams, so a couple of channels is plenty
    for one bridge process.
    """

    def __init__(
        self,
        address: str,
        timeout: float | None,
        api_key: str | None = None,
        size: int = 2,
        metadata_timeout: float = METADATA_TIMEOUT_S,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.metadata_timeout = metadata_timeout
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._size = size
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[WorkerStubs] = []
        self._next = itertools.count()

    def stubs(self) -> WorkerStubs:
        """The stubs of the next channel, round-robin."""
        if not self._channels:
            self._channels = [
                grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS, interceptors=client_interceptors())
                for _ in range(self._size)
            ]
            self._stubs = [WorkerStubs.on(channel) for channel in self._channels]
        return self._stubs[next(self._next) % self._size]

    def call_options(self, request_id: str, metadata_call: bool = False) -> dict[str, Any]:
        """Keyword arguments of every call: the deadline (the request timeout; for a metadata
        call, the metadata timeout if shorter), and the request id (and the worker's API key, and
        the trace context, if any) as metadata."""
        limits = (self.timeout, self.metadata_timeout if metadata_call else None)
        timeout = min((t for t in limits if t is not None), default=None)
        metadata = (("x-request-id", request_id), *self._metadata, *tracing.outgoing_metadata())
        return {"timeout": timeout, "metadata": metadata}

    async def close(self) -> None:
        channels, self._channels, self._stubs = self._channels, [], []
        for channel in channels:
            await channel.close()


class Upstreams:
    """Every worker address the bridge calls: a default one, and those that serve given models.

    An address may be one worker or a balancer (Envoy) in front of many; models that share an
    address share its channels.
    """

    def __init__(
        self,
        default_address: str,
        timeout: float | None,
        api_key: str | None = None,
        model_addresses: Mapping[str, str] | None = None,
        metadata_timeout: float = METADATA_TIMEOUT_S,
    ) -> None:
        model_addresses = model_addresses or {}
        addresses = dict.fromkeys([default_address, *model_addresses.values()])  # in order, once each
        by_address = {
            address: Upstream(address, timeout, api_key, metadata_timeout=metadata_timeout) for address in addresses
        }
        self.default = by_address[default_address]
        self._by_model = {model: by_address[address] for model, address in model_addresses.items()}
        self.all = list(by_address.values())

    def for_model(self, model: str | None) -> Upstream:
        """Where requests for `model` go: `org/name` and `org/name:VERSION` to the address named
        for `org/name`; no model, any other model and `deploy_id:ID` to the default one."""
        if not model:
            return self.default
        return self._by_model.get(model.split(":", 1)[0], self.default)

    async def close(self) -> None:
        for upstream in self.all:
            await upstream.close()
