"""Served models and how clients address them: `org/name`, `org/name:VERSION`, `deploy_id:ID`."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.errors import ModelNotFound, NotReady, WrongModelKind

if TYPE_CHECKING:
    from service.engine.embedder import Embedder
    from service.engine.engine import GenerationEngine
    from service.structured.grammar import ConstraintCompiler

DEPLOY_ID_PREFIX = "deploy_id:"


class ModelKind(enum.Enum):
    GENERATION = "generation"
    EMBEDDING = "embedding"


@dataclass(frozen=True)
class KvCacheCard:
    """A generation model's KV cache: `blocks` blocks of `block_size` positions."""

    block_size: int
    blocks: int
    prefix_caching: bool
    bytes_per_token: int

    @property
    def tokens(self) -> int:
        return self.block_size * self.blocks


@dataclass(frozen=True)
class ModelCard:
    """What the Models service reports about a served model."""

    model_id: str
    kind: ModelKind
    version: str
    deploy_id: str
    created: int
    context_length: int
    device: str
    dtype: str
    price_input_per_million: float = 0.0
    price_output_per_million: float = 0.0
    has_chat_template: bool = False
    eos_token_ids: tuple[int, ...] = ()
    embedding_dimension: int = 0
    # "tokenwire", "triton" or "torch": whose kernels compute (runner.ModelRunner.kernels).
    kernels: str = ""
    kv_cache: KvCacheCard | None = None

    @property
    def owned_by(self) -> str:
        return self.model_id.split("/", 1)[0] if "/" in self.model_id else "tokenwire"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.price_input_per_million + completion_tokens * self.price_output_per_million
        ) / 1e6


@dataclass
class GenerationModel:
    card: ModelCard
    tokenizer: Any
    engine: GenerationEngine
    # Sampling defaults from the model's generation_config (only the keys it sets).
    sampling_defaults: dict[str, float] = field(default_factory=dict)
    # Width of the model's logits (config vocab_size), which may exceed len(tokenizer); 0: unknown.
    vocab_size: int = 0
    # Grammars for structured output and tool calls, compiled for this model's tokenizer.
    constraints: ConstraintCompiler | None = None


@dataclass
class EmbeddingModel:
    card: ModelCard
    tokenizer: Any
    embedder: Embedder


ServedModel = GenerationModel | EmbeddingModel


class ModelRegistry:
    def __init__(self) -> None:
        self._models: list[ServedModel] = []
        self.ready = False

    def add(self, model: ServedModel) -> None:
        self._models.append(model)

    def all(self) -> list[ServedModel]:
        """Every model loaded so far, ready or not (for the worker itself)."""
        return list(self._models)

    def served(self) -> list[ServedModel]:
        """Every model, for clients. Raises NotReady while loading: a partial or empty list would
        read as "this model does not exist"."""
        self._require_ready()
        return self.all()

    def find(self, address: str) -> ServedModel:
        """Any served model by address. Raises ModelNotFound."""
        self._require_ready()
        for model in self._models:
            if _matches(model.card, address):
                return model
        raise ModelNotFound(f"The model `{address}` does not exist.", field="model")

    def generation(self, address: str) -> GenerationModel:
        return self._of_kind(address, GenerationModel, ModelKind.GENERATION)

    def embedding(self, address: str) -> EmbeddingModel:
        return self._of_kind(address, EmbeddingModel, ModelKind.EMBEDDING)

    def _of_kind(self, address: str, cls: type, kind: ModelKind) -> Any:
        if not address:
            self._require_ready()
            default = next((m for m in self._models if isinstance(m, cls)), None)
            if default is None:
                raise ModelNotFound(f"No {kind.value} model is served here.", field="model")
            return default
        model = self.find(address)
        if not isinstance(model, cls):
            article = "an" if model.card.kind.value[0] in "aeiou" else "a"
            raise WrongModelKind(
                f"The model `{address}` is {article} {model.card.kind.value} model and cannot serve "
                f"{kind.value} requests.",
                field="model",
            )
        return model

    def _require_ready(self) -> None:
        if not self.ready:
            raise NotReady("The worker is still loading its models; retry shortly.")


def _matches(card: ModelCard, address: str) -> bool:
    if address.startswith(DEPLOY_ID_PREFIX):
        return address[len(DEPLOY_ID_PREFIX) :] == card.deploy_id
    name, _, version = address.partition(":")
    return name == card.model_id and (not version or version == card.version)
