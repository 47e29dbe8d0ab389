"""Where a served model's files are: a model spec (`[ID=]PATH` or a packaged model id) resolved."""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

from service.models.packaged import PACKAGED_MODELS
from service.models.reference import REFERENCE_MODELS


@dataclass(frozen=True)
class ModelSource:
    model_id: str
    path: pathlib.Path


def parse_spec(spec: str) -> ModelSource:
    """`org/name` of a packaged model or of a reference model's config, `ID=PATH`, or a bare
    PATH (id = directory or file name). Raises FileNotFoundError when there is nothing at the path."""
    if spec in PACKAGED_MODELS:
        return ModelSource(spec, PACKAGED_MODELS[spec].locate())
    if spec in REFERENCE_MODELS:
        return ModelSource(spec, REFERENCE_MODELS[spec])
    model_id, sep, path = spec.partition("=")
    if not sep:
        path = spec
        model_id = pathlib.Path(spec).name.removesuffix(".gguf")
    resolved = pathlib.Path(path).expanduser()
    if not resolved.exists():
        raise FileNotFoundError(f"{resolved} does not exist")
    return ModelSource(model_id, resolved)
