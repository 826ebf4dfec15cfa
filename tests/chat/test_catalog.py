"""The base-model catalog: what the new-job page and /v1/models list from the models directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.chat.catalog import find_model, list_local_models
from tests.helpers import forget_cached_settings


def write_model(folder: Path, **config) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"} | config)
    )
    return folder


@pytest.fixture
def models_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("TUNELAB_MODELS_DIR", str(root))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    forget_cached_settings()
    yield root
    forget_cached_settings()


def test_a_sentence_transformers_folder_is_one_model_not_its_pooling_subfolder(models_root):
    model = write_model(models_root / "all-MiniLM-L6-v2", architectures=["BertModel"], model_type="bert")
    (model / "1_Pooling").mkdir()
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384}))
    (model / "2_Normalize").mkdir()
    write_model(models_root / "acme" / "llama-mini")

    assert [info.name for info in list_local_models()] == ["acme/llama-mini", "all-MiniLM-L6-v2"]
    assert find_model("all-MiniLM-L6-v2/1_Pooling") is None


def test_organisation_folders_still_hold_models(models_root):
    write_model(models_root / "meta-llama" / "Llama-3.2-1B")
    write_model(models_root / "qwen-small")
    assert [info.name for info in list_local_models()] == ["meta-llama/Llama-3.2-1B", "qwen-small"]
