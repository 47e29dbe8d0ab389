"""The shapes of the models tokenwire's users serve, as their `config.json` only (no weights: the
machines have no model hub). Served with `--load-format dummy`, each becomes a model of the real
shape with random weights, which is what speed depends on."""
from __future__ import annotations

import pathlib

_HERE = pathlib.Path(__file__).parent

# Model id as users name it -> the directory of its config.json.
REFERENCE_MODELS: dict[str, pathlib.Path] = {
    model_id: _HERE / directory
    for model_id, directory in (
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b-instruct"),
        ("Qwen/Qwen2-7B-Instruct", "qwen2-7b-instruct"),
        ("mistralai/Mistral-Nemo-Instruct-2407", "mistral-nemo-instruct-2407"),
        ("01-ai/Yi-34B-Chat", "yi-34b-chat"),
    )
}
