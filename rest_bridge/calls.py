"""The worker calls behind the endpoints' whole (not streamed) answers, without HTTP: the routes
answer with them, and the batch runner runs a batch's lines with them."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rest_bridge import schemas, translate
from rest_bridge.errors import rpc_errors
from rest_bridge.fanout import FanOut, call_starters, responses
from tokenwire.stubs import WorkerStubs
from tokenwire.v1 import generation_pb2

Json = dict[str, Any]


@dataclass(frozen=True)
class Worker:
    """The worker's stubs, and the keyword arguments of every call (deadline, metadata)."""

    stubs: WorkerStubs
    options: dict[str, Any]


class Interrupted(Exception):
    """The worker cut a generation short (FINISH_REASON_ABORTED: it shut down meanwhile)."""


async def generation_answers(
    worker: Worker,
    protos: Sequence[generation_pb2.GenerateRequest],
    params: Mapping[str, str],
    *,
    interrupted_ok: bool = True,
) -> list[generation_pb2.GenerateResponse]:
    """Generate on every prompt (a few at a time); raises APIError, and Interrupted for an
    answer cut short by the worker unless `interrupted_ok`."""
    fanout = FanOut(call_starters(worker.stubs.generation.Generate, protos, worker.options))
    with rpc_errors(params):
        answers = await responses(fanout)
    aborted = generation_pb2.FINISH_REASON_ABORTED
    if not interrupted_ok and any(seq.finish.reason == aborted for answer in answers for seq in answer.sequences):
        raise Interrupted
    return answers


async def generation_json(
    worker: Worker,
    fmt: translate.GenerationFormat,
    body: schemas.GenerationBody,
    protos: Sequence[generation_pb2.GenerateRequest],
    *,
    interrupted_ok: bool = True,
) -> Json:
    """A chat completion or completion (per `fmt`) of the prompts."""
    params = translate.request_params(fmt, body)
    answers = await generation_answers(worker, protos, params, interrupted_ok=interrupted_ok)
    header = translate.ResponseHeader.new(fmt.id_prefix, body.model or answers[0].prompt_info.model)
    # Every prompt's request asks for the same outputs.
    logprobs = protos[0].HasField("logprobs")
    return translate.generation_response(fmt, answers, body.choices_per_prompt, header, logprobs)


async def embedding_json(worker: Worker, body: schemas.EmbeddingRequest, request_id: str) -> Json:
    with rpc_errors(translate.EMBEDDING_PARAMS):
        response = await worker.stubs.embedding.Embed(translate.embed_request(body, request_id), **worker.options)
    return translate.embedding_response(response, body.model or response.model, body.encoding_format)
