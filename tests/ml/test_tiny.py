"""Tiny models of real architectures, built offline, the same for the same seed."""

from __future__ import annotations

import hashlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from worker.ml.tiny import ARCHITECTURES, make_tiny_model


def digest(path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_the_same_seed_writes_the_same_files(tmp_path):
    first = digest(make_tiny_model(tmp_path / "a", seed=7))
    assert first == digest(make_tiny_model(tmp_path / "b", seed=7))
    assert first["model.safetensors"] != digest(make_tiny_model(tmp_path / "c", seed=8))["model.safetensors"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_loads_like_a_downloaded_model(arch, tmp_path):
    path = make_tiny_model(tmp_path / arch, arch=arch)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == arch
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello there!"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0]) == text  # byte-level: any text round-trips
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_unknown_architectures_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown architecture 'gpt9'"):
        make_tiny_model(tmp_path / "x", arch="gpt9")
