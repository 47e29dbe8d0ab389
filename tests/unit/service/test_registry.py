"""The model registry on its own: readiness and model kinds (no models loaded)."""
from __future__ import annotations

import pytest

from service.errors import NotReady, WrongModelKind
from service.models.registry import EmbeddingModel, ModelCard, ModelKind, ModelRegistry

EMBEDDING = ModelCard(
    model_id="acme/embedder", kind=ModelKind.EMBEDDING, version="v1", deploy_id="d1", created=0,
    context_length=512, device="cpu", dtype="float32", embedding_dimension=8,
)


def _registry(ready: bool) -> ModelRegistry:
    registry = ModelRegistry()
    registry.add(EmbeddingModel(card=EMBEDDING, tokenizer=None, embedder=None))  # type: ignore[arg-type]
    registry.ready = ready
    return registry


def test_served_models_are_not_ready_while_loading():
    """A listing made while loading would read as "the model does not exist"."""
    loading = _registry(ready=False)
    with pytest.raises(NotReady):
        loading.served()
    assert [m.card for m in loading.all()] == [EMBEDDING]  # the worker itself sees them
    assert [m.card for m in _registry(ready=True).served()] == [EMBEDDING]


def test_wrong_model_kind_names_the_kind_with_its_article():
    with pytest.raises(WrongModelKind, match="is an embedding model and cannot serve generation requests"):
        _registry(ready=True).generation("acme/embedder")
