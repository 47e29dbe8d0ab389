"""The gRPC side of the bridge: a small round-robin pool of channels per worker address, whose
calls carry the request id (and the worker's API key) and feed the bridge's usage metrics; and
which address serves which model."""
from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from rest_bridge.metrics import client_interceptors
from tokenwire import tracing
from tokenwire.v1 import embedding_pb2_grpc, generation_pb2_grpc, models_pb2_grpc, tokenization_pb2_grpc

_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    # Without it, channels with equal options share one connection and the pool is pointless.
    ("grpc.use_local_subchannel_pool", 1),
    # A worker that restarts is reached within a second of serving again: gRPC's default backoff
    # grows to two minutes between attempts to connect.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# The deadline of metadata calls (health, model cards), whatever the generation deadline: a worker
# answers them at once, so one that has not answered within this is stuck, and the client hears
# so now, not after the request timeout.
METADATA_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Stubs:
    """Every service stub of the worker, bound to one channel."""

    generation: generation_pb2_grpc.GenerationStub
    embedding: embedding_pb2_grpc.EmbeddingStub
    tokenization: tokenization_pb2_grpc.TokenizationStub
    models: models_pb2_grpc.ModelsStub
    health: health_pb2_grpc.HealthStub

    @classmethod
    def on(cls, channel: grpc.aio.Channel) -> Stubs:
        return cls(
            generation=generation_pb2_grpc.GenerationStub(channel),
            embedding=embedding_pb2_grpc.EmbeddingStub(channel),
            tokenization=tokenization_pb2_grpc.TokenizationStub(channel),
            models=models_pb2_grpc.ModelsStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
        )


class Upstream:
    """Channels to the worker, opened on first use inside the running event loop.

    One HTTP/2 connection carries about 100 concurrent streams, so a couple of channels is plenty
    for one bridge process.
    """

    def __init__(self, address: str, timeout: float | None, api_key: str | None = None, size: int = 2) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._size = size
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[Stubs] = []
        self._next = itertools.count()

    def stubs(self) -> Stubs:
        """The stubs of the next channel, round-robin."""
        if not self._channels:
            self._channels = [
                grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS, interceptors=client_interceptors())
                for _ in range(self._size)
            ]
            self._stubs = [Stubs.on(channel) for channel in self._channels]
        return self._stubs[next(self._next) % self._size]

    def call_options(self, request_id: str, max_timeout: float | None = None) -> dict[str, Any]:
        """Keyword arguments of every call: the deadline (the request timeout, or `max_timeout`
        if shorter), and the request id (and the worker's API key, and the trace context, if any)
        as metadata."""
        timeout = min((t for t in (self.timeout, max_timeout) if t is not None), default=None)
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
    ) -> None:
        model_addresses = model_addresses or {}
        addresses = dict.fromkeys([default_address, *model_addresses.values()])  # in order, once each
        by_address = {address: Upstream(address, timeout, api_key) for address in addresses}
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
