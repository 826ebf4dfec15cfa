"""Fixtures for the training library: a tiny Llama in a temporary models directory, datasets, specs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from app.contract.spec import TrainingSpec
from worker.ml.tiny import make_tiny_model

TINY = "tiny-llama"

# A mapping the model can learn: each thing has one colour.
COLOURS = {"car": "red", "tree": "green", "sky": "blue", "sun": "yellow", "night": "black", "snow": "white"}


@pytest.fixture(autouse=True, scope="session")
def offline():
    """Nothing here may reach the Hugging Face hub: model lookups see the local cache only."""
    import huggingface_hub.constants

    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models")
    make_tiny_model(path / TINY)
    return path


@pytest.fixture(scope="session")
def tokenizer(models_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models_dir / TINY)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def write_jsonl():
    """write_jsonl(path, rows) -> path"""
    return _write_jsonl


def _colour_rows(count: int = 48, seed: int = 0) -> list[dict]:
    """Instruction rows with a learnable answer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        thing = rng.choice(sorted(COLOURS))
        rows.append({"instruction": f"What colour is the {thing}?", "output": f"The {thing} is {COLOURS[thing]}."})
    return rows


@pytest.fixture
def colour_rows():
    """colour_rows(count=48, seed=0) -> instruction rows with a learnable answer"""
    return _colour_rows


@pytest.fixture
def colour_file(tmp_path) -> Path:
    return _write_jsonl(tmp_path / "colours.jsonl", _colour_rows())


def _make_spec(**overrides) -> TrainingSpec:
    """A spec for the tiny model that trains in a second or two."""
    settings = {
        "base_model": TINY,
        "method": "lora",
        "max_steps": 12,
        "learning_rate": 5e-3,
        "batch_size": 4,
        "max_seq_length": 64,
        "logging_steps": 1,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
    }
    settings.update(overrides)
    return TrainingSpec(**settings)


@pytest.fixture
def make_spec():
    """make_spec(**overrides) -> a TrainingSpec for the tiny model that trains in a second or two"""
    return _make_spec
