"""Model listing and addressing: org/name, org/name:VERSION, deploy_id:ID."""
from __future__ import annotations

import openai
import pytest

from .conftest import CHAT_MODEL, EMBEDDING_MODEL


def test_list_models(client):
    models = {m.id: m for m in client.models.list()}
    assert set(models) >= {CHAT_MODEL, EMBEDDING_MODEL}
    assert all(m.object == "model" and isinstance(m.created, int) and m.owned_by for m in models.values())


def test_retrieve_by_id_version_and_deploy_id(client, http):
    model = http.get(f"/v1/models/{CHAT_MODEL}").json()
    assert model["id"] == CHAT_MODEL and model["object"] == "model"
    version, deploy_id = model["version"], model["deploy_id"]
    assert version and deploy_id
    assert client.models.retrieve(f"{CHAT_MODEL}:{version}").id == CHAT_MODEL
    assert client.models.retrieve(f"deploy_id:{deploy_id}").id == CHAT_MODEL
    for address in (f"deploy_id:{deploy_id}", f"{CHAT_MODEL}:{version}"):
        reply = client.chat.completions.create(
            model=address, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert reply.model == address and reply.choices[0].message.content is not None


@pytest.mark.parametrize("address", [f"{CHAT_MODEL}:0000notaversion", "deploy_id:0000notadeploy", "nobody/nothing"])
def test_wrong_version_or_deploy_id_is_404(client, address):
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve(address)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model=address, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"


def test_embedding_model_addressed_by_version_and_deploy_id(client, http):
    card = http.get(f"/v1/models/{EMBEDDING_MODEL}").json()
    assert card["kind"] == "embedding" and card["version"] and card["deploy_id"]
    for address in (f"{EMBEDDING_MODEL}:{card['version']}", f"deploy_id:{card['deploy_id']}"):
        assert len(client.embeddings.create(model=address, input="hi").data[0].embedding) == 384
