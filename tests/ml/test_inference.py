"""Chat with a base model and a fine-tuned one (worker.ml.inference): streamed text,
sampling settings, stop strings, token counts, and a model cache that loads each base once
and switches adapters on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from worker.ml import InferenceError, MemoryReporter, train
from worker.ml.inference import ModelCache, Sampling, generate_chat
from worker.ml.tiny import make_tiny_model

QUESTION = [{"role": "user", "content": "What colour is the sky?"}]


@pytest.fixture(scope="module")
def adapter(models_dir, tmp_path_factory) -> Path:
    """A LoRA adapter that learned the colours (trained once for this module)."""
    from tests.ml.conftest import _colour_rows, _make_spec, _write_jsonl

    folder = tmp_path_factory.mktemp("adapter")
    data = _write_jsonl(folder / "colours.jsonl", _colour_rows())
    spec = _make_spec(max_steps=24, learning_rate=1e-2, max_seq_length=128)
    result = train(spec, train_file=data, output_dir=folder / "run", reporter=MemoryReporter(), models_dir=models_dir)
    return result.final_dir


@pytest.fixture(scope="module")
def cache(models_dir) -> ModelCache:
    return ModelCache(models_dir)


def answer(cache: ModelCache, weights: Path | None = None, messages=QUESTION, **sampling):
    pieces: list[str] = []
    with cache.use("tiny-llama", weights) as model:
        reply = generate_chat(model, messages, Sampling(**{"temperature": 0, **sampling}), on_text=pieces.append)
    return reply, pieces


def test_the_fine_tuned_model_answers_what_it_learned_and_the_base_model_does_not(cache, adapter):
    tuned, pieces = answer(cache, adapter, max_tokens=30)
    assert tuned.text == "The sky is blue." and tuned.finish_reason == "stop"
    assert "".join(pieces) == tuned.text and len(pieces) > 1, "the answer arrives in pieces"
    snow, _ = answer(cache, adapter, [{"role": "user", "content": "What colour is the snow?"}], max_tokens=30)
    assert snow.text == "The snow is white."

    base, _ = answer(cache, None, max_tokens=30)
    assert base.text != tuned.text
    fresh, _ = answer(ModelCache(cache.models_dir), None, max_tokens=30)
    assert base == fresh, "the cached base answers with its adapters switched off"


def test_usage_counts_the_prompt_and_the_answer_and_max_tokens_ends_it(cache, tokenizer):
    reply, pieces = answer(cache, None, max_tokens=7)
    template_prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert reply.prompt_tokens == len(tokenizer(template_prompt, add_special_tokens=False)["input_ids"])
    assert reply.completion_tokens == 7 and reply.finish_reason == "length"
    assert "".join(pieces) == reply.text
    assert answer(cache, None, max_tokens=7)[0] == reply, "greedy decoding repeats itself"


def test_a_stop_string_cuts_the_answer_before_it(cache, adapter):
    reply, pieces = answer(cache, adapter, max_tokens=30, stop=[" is", "never"])
    assert reply.text == "The sky" and reply.finish_reason == "stop"
    assert "".join(pieces) == "The sky", "no piece of the stop string is ever shown"


def test_sampling_with_a_seed_repeats_and_different_seeds_differ(cache):
    first = answer(cache, None, max_tokens=20, temperature=1.0, seed=7)[0]
    assert answer(cache, None, max_tokens=20, temperature=1.0, seed=7)[0] == first
    assert {answer(cache, None, max_tokens=20, temperature=1.0, seed=seed)[0].text for seed in (8, 9, 10)} != {
        first.text
    }


def test_the_caller_can_stop_the_answer_early(cache):
    pieces: list[str] = []

    def take_two(piece: str) -> bool:
        pieces.append(piece)
        return len(pieces) < 2

    with cache.use("tiny-llama") as model:
        reply = generate_chat(model, QUESTION, Sampling(max_tokens=200, temperature=0), on_text=take_two)
    assert len(pieces) == 2 and reply.completion_tokens < 200


def test_a_base_is_loaded_once_and_the_least_recently_used_model_leaves(models_dir, tmp_path, adapter):
    shutil.copytree(models_dir / "tiny-llama", tmp_path / "tiny-llama")
    make_tiny_model(tmp_path / "tiny-other", seed=1)
    cache = ModelCache(tmp_path, max_models=1)
    with cache.use("tiny-llama") as first:
        pass
    with cache.use("tiny-llama", adapter) as tuned:
        assert tuned.model.base_model.model is first.model, "the adapter is loaded onto the cached base"
    with cache.use("tiny-other") as other:
        assert other.model is not first.model
    with cache.use("tiny-llama") as again:
        assert again.model is not first.model, "the base was let go for the other model, and loaded again"


def test_conversations_longer_than_the_model_reads_are_refused_and_answers_fit_in_the_rest(tmp_path):
    make_tiny_model(tmp_path / "short", max_positions=40)
    cache = ModelCache(tmp_path)
    with cache.use("short") as model:
        with pytest.raises(InferenceError, match="reads at most 40"):
            generate_chat(model, [{"role": "user", "content": "red green blue " * 30}], Sampling())
        reply = generate_chat(model, QUESTION, Sampling(max_tokens=100, temperature=0))
    assert reply.prompt_tokens + reply.completion_tokens <= 40 and reply.finish_reason == "length"


def test_a_classifier_or_missing_weights_cannot_chat(cache, adapter, tmp_path):
    classifier = shutil.copytree(adapter, tmp_path / "classifier")
    (classifier / "class_names.json").write_text(json.dumps(["negative", "positive"]))
    with pytest.raises(InferenceError, match="classifier"):
        answer(cache, classifier)
    with pytest.raises(InferenceError, match="no longer in the store"):
        answer(cache, tmp_path / "gone")
