"""Base models the workers can load: folders in MODELS_DIR and models in the Hugging Face
cache. Read from `config.json` and the safetensors headers only, so the app learns a
model's size without importing torch or reading the weights."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from app.config import get_settings

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True)
class BaseModelInfo:
    name: str  # what a job spec's base_model says
    source: str  # "local" or "hf-cache"
    path: Path
    architecture: str
    model_type: str
    parameters: int
    hidden_size: int | None
    num_layers: int | None
    vocab_size: int | None
    max_positions: int | None
    has_chat_template: bool
    intermediate_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    encoder_decoder: bool = False  # config.json's is_encoder_decoder (T5, BART): it trains seq2seq

    @property
    def parameters_human(self) -> str:
        count = self.parameters
        for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if count >= size:
                return f"{count / size:.1f}{unit}"
        return str(count)


def _safetensors_parameters(folder: Path) -> int | None:
    """Exact parameter count from the safetensors headers (8-byte length, then JSON)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                return None
            header = json.loads(handle.read(length))
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            total += count
    return total


def _estimated_parameters(config: dict) -> int:
    """Decoder-only transformer estimate for models with no local weights."""
    hidden = config.get("hidden_size") or config.get("n_embd") or 0
    layers = config.get("num_hidden_layers") or config.get("n_layer") or 0
    vocab = config.get("vocab_size") or 0
    intermediate = config.get("intermediate_size") or 4 * hidden
    heads = config.get("num_attention_heads") or 1
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or (hidden // heads if heads else 0)
    attention = hidden * head_dim * (heads * 2 + kv_heads * 2)
    mlp = 3 * hidden * intermediate
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * (attention + mlp + 2 * hidden) + embeddings + hidden


def read_model_info(name: str, folder: Path, source: str) -> BaseModelInfo | None:
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    parameters = _safetensors_parameters(folder) or _estimated_parameters(config)
    chat_template = (folder / "chat_template.jinja").exists()
    if not chat_template and (folder / "tokenizer_config.json").exists():
        try:
            chat_template = bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
        except ValueError:
            chat_template = False
    return BaseModelInfo(
        name=name,
        source=source,
        path=folder,
        architecture=(config.get("architectures") or ["unknown"])[0],
        model_type=config.get("model_type", "unknown"),
        parameters=parameters,
        hidden_size=config.get("hidden_size"),
        num_layers=config.get("num_hidden_layers"),
        vocab_size=config.get("vocab_size"),
        max_positions=config.get("max_position_embeddings"),
        has_chat_template=chat_template,
        intermediate_size=config.get("intermediate_size"),
        num_heads=config.get("num_attention_heads"),
        num_kv_heads=config.get("num_key_value_heads") or config.get("num_attention_heads"),
        head_dim=config.get("head_dim"),
        encoder_decoder=bool(config.get("is_encoder_decoder")),
    )


def _hf_cache_dir() -> Path:
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache)
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def list_local_models() -> list[BaseModelInfo]:
    """Models in MODELS_DIR (`name/` or `org/name/`, each listed once), then those in the Hugging Face cache."""
    found: dict[str, BaseModelInfo] = {}
    root = get_settings().models_path
    if root.is_dir():
        models = sorted(root.glob("*/config.json"))
        # `org/name/` folders, but not the subfolders of a model (a sentence-transformers model
        # keeps a config.json in `1_Pooling/`): a folder with its own config.json is one model.
        models += [
            config for config in root.glob("*/*/config.json") if not (config.parent.parent / "config.json").exists()
        ]
        for config in sorted(models):
            name = config.parent.relative_to(root).as_posix()
            if not name.startswith(".") and (info := read_model_info(name, config.parent, "local")):
                found.setdefault(name, info)
    cache = _hf_cache_dir()
    if cache.is_dir():
        for repo in sorted(cache.glob("models--*")):
            name = repo.name.removeprefix("models--").replace("--", "/")
            snapshots = sorted((repo / "snapshots").glob("*/config.json"), key=lambda p: p.stat().st_mtime)
            if snapshots and name not in found and (info := read_model_info(name, snapshots[-1].parent, "hf-cache")):
                found[name] = info
    return list(found.values())


def find_model(name: str) -> BaseModelInfo | None:
    return next((model for model in list_local_models() if model.name == name), None)
