"""Files and the Batch API on the real stack, through the official SDK: per-line results and
counts, embeddings and responses batches, cancellation, invalid input, file deletion, and an
interactive request beside a running batch."""
from __future__ import annotations

import json
from collections import Counter

import grpc
import openai
import pytest

from tokenwire.v1 import generation_pb2, generation_pb2_grpc

from .batching import chat_line, results, start, upload, wait_for, wait_until
from .conftest import CHAT_MODEL, EMBEDDING_MODEL


def _custom_ids(lines: list[dict]) -> list[str]:
    return [line["custom_id"] for line in lines]


def test_a_chat_batch_with_a_bad_line(client):
    lines = [chat_line(f"q{i}", f"What is {i} plus {i}?") for i in range(4)]
    lines[2]["body"]["temperature"] = 3  # the endpoint refuses it: that line fails alone
    created = start(client, lines)
    assert created.status == "validating" and created.endpoint == "/v1/chat/completions"
    batch = wait_for(client, created.id)
    assert batch.status == "completed" and batch.completed_at >= batch.in_progress_at >= batch.created_at
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (4, 3, 1)

    outputs, errors = results(client, batch)
    assert _custom_ids(outputs) == ["q0", "q1", "q3"]
    for line, output in zip([lines[0], lines[1], lines[3]], outputs):
        assert output["id"].startswith("batch_req_") and output["error"] is None
        assert output["response"]["status_code"] == 200
        body = output["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 6
        # The same answer as the endpoint gives (greedy).
        direct = client.chat.completions.create(**line["body"])
        assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
    [error] = errors
    assert error["custom_id"] == "q2" and error["error"] is None
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "temperature"

    output_file = client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output" and output_file.filename == f"{batch.id}_output.jsonl"
    assert output_file.bytes == len(client.files.content(batch.output_file_id).content)
    assert batch.id in [listed.id for listed in client.batches.list(limit=100).data]
    with pytest.raises(openai.ConflictError):
        client.with_options(max_retries=0).batches.cancel(batch.id)


def test_an_embeddings_batch(client):
    texts = ["A cat sits on the mat.", "Stock markets fell.", "Water is wet."]
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": EMBEDDING_MODEL, "input": text},
        }
        for i, text in enumerate(texts)
    ]
    batch = wait_for(client, start(client, lines, "/v1/embeddings").id)
    assert batch.status == "completed" and batch.request_counts.completed == 3 and batch.error_file_id is None
    outputs, _ = results(client, batch)
    direct = client.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    for output, expected in zip(outputs, direct.data):
        vector = output["response"]["body"]["data"][0]["embedding"]
        assert len(vector) == 384
        assert vector == pytest.approx(expected.embedding, abs=1e-4)


def test_a_responses_batch_stores_its_responses(client):
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": CHAT_MODEL, "input": question, "max_output_tokens": 6, "temperature": 0},
        }
        for i, question in enumerate(["What is the capital of France?", "Name a planet."])
    ]
    batch = wait_for(client, start(client, lines, "/v1/responses").id)
    assert batch.status == "completed" and batch.request_counts.completed == 2
    outputs, _ = results(client, batch)
    for output in outputs:
        body = output["response"]["body"]
        assert body["object"] == "response" and body["output"][0]["type"] == "message"
        assert client.responses.retrieve(body["id"]).output_text == body["output"][0]["content"][0]["text"]


def test_cancel_ends_with_every_line_once(client):
    lines = [chat_line(f"c{i}", "Write a long story.", max_tokens=24, ignore_eos=True) for i in range(24)]
    created = start(client, lines)
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch = wait_for(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at >= batch.cancelling_at
    outputs, errors = results(client, batch)
    assert sorted(_custom_ids(outputs + errors)) == sorted(_custom_ids(lines))
    not_run = [error for error in errors if error["response"] is None]
    assert all(error["error"]["code"] == "batch_cancelled" for error in not_run) and not_run
    assert batch.request_counts.completed == len(outputs)
    assert batch.request_counts.failed == len(errors) - len(not_run)
    assert client.batches.cancel(batch.id).status == "cancelled"  # already: nothing changes


def test_invalid_input_fails_validation_with_line_numbers(client):
    good = json.dumps(chat_line("a", "Hi"))
    other_url = json.dumps({**chat_line("b", "Hi"), "url": "/v1/completions"})
    content = "\n".join([good, "{not json", good, other_url, json.dumps({**chat_line("c", "Hi"), "method": "GET"})])
    file_id = client.files.create(file=("bad.jsonl", content.encode()), purpose="batch").id
    created = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_for(client, created.id)
    assert batch.status == "failed" and batch.failed_at is not None
    found = [(error.line, error.code, error.param) for error in batch.errors.data]
    assert found == [
        (2, "invalid_json_line", None),
        (3, "duplicate_custom_id", "custom_id"),
        (4, "url_mismatch", "url"),
        (5, "invalid_request", "method"),
    ]
    assert batch.output_file_id is None and batch.error_file_id is None

    empty = client.files.create(file=("empty.jsonl", b"\n"), purpose="batch").id
    failed = wait_for(
        client, client.batches.create(input_file_id=empty, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    assert [error.code for error in failed.errors.data] == ["empty_file"]


def test_create_refuses_what_it_cannot_run(client, http):
    file_id = upload(client, [chat_line("a", "Hi")])

    def refused(status: int, **body: object) -> dict:
        reply = http.post(
            "/v1/batches",
            json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **body},
        )
        assert reply.status_code == status
        return reply.json()["error"]

    assert refused(404, input_file_id="file-missing")["param"] == "file_id"
    assert refused(400, endpoint="/v1/images/generations")["param"] == "endpoint"
    assert refused(400, completion_window="1h")["param"] == "completion_window"
    reply = http.post("/v1/files", files={"file": ("notes.txt", b"hello")}, data={"purpose": "batch"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "file"
    reply = http.post("/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "fine-tune"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "purpose"
    reply = http.post("/v1/files", files={"file": ("a.jsonl", b"{}")})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "purpose"
    assert http.get("/v1/batches/batch_missing").status_code == 404
    assert http.get("/v1/files?limit=0").json()["error"]["param"] == "limit"


def test_files_list_retrieve_and_delete_with_their_bytes(client, bridge_data_dir):
    marker = "tokenwire-deletion-marker-7f3a9c"
    ids = [upload(client, [chat_line(marker, "Hi")], name=f"f{i}.jsonl") for i in range(3)]
    listed = client.files.list(purpose="batch", limit=2, order="asc", after=ids[0])
    assert [file.id for file in listed.data] == ids[1:]
    assert client.files.retrieve(ids[0]).filename == "f0.jsonl"
    assert marker in client.files.content(ids[0]).text

    for file_id in ids:
        assert client.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(ids[0])
    with pytest.raises(openai.NotFoundError):
        client.files.content(ids[0])
    # Gone from the data directory too (the database and its write-ahead log).
    for path in bridge_data_dir.rglob("*"):
        assert marker.encode() not in path.read_bytes(), path


def _steps_to_first_token(stub: generation_pb2_grpc.GenerationStub) -> int:
    """An interactive chat request's wait for its first token, in engine steps."""
    request = generation_pb2.GenerateRequest(
        chat=generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content="Say hello.")]),
        sampling=generation_pb2.SamplingParams(temperature=0),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=2),
    )
    call = stub.GenerateStream(request)
    assert list(call)[-1].HasField("usage")
    return int(dict(call.trailing_metadata())["x-steps-to-first-token"])


def test_an_interactive_request_waits_no_more_steps_beside_a_running_batch(client, worker_address):
    """Time to first token in engine steps, which no machine's speed changes: beside a 64-line
    batch, an interactive request is admitted at once, as on an idle worker (the batch leaves
    it room, and the worker serves it first)."""
    with grpc.insecure_channel(worker_address) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        idle = _steps_to_first_token(stub)
        lines = [chat_line(f"b{i}", "Write a story.", max_tokens=8, ignore_eos=True) for i in range(64)]
        batch = start(client, lines)
        # Lines are flowing: some done, most to come.
        running = wait_until(client, batch.id, lambda batch: batch.request_counts.completed >= 1)
        beside = [_steps_to_first_token(stub) for _ in range(3)]
        during = client.batches.retrieve(batch.id)
        assert during.status == "in_progress" and during.request_counts.completed < 64 - 8  # still running
    assert running.request_counts.total == 64
    assert max(beside) <= idle + 3, (idle, beside)
    finished = wait_for(client, batch.id)
    outputs, errors = results(client, finished)
    assert len(outputs) == 64 and not errors
    assert Counter(_custom_ids(outputs)) == Counter(_custom_ids(lines))
