"""Chat with a base model and a fine-tuned one (worker.ml.inference): streamed text,
sampling settings, stop strings, token counts, conversations fitted to the context, a model
cache that loads each base once and switches adapters on it; and a classifier's label
probabilities."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from worker.ml import InferenceError, MemoryReporter, train
from worker.ml.inference import ModelCache, Sampling, classify, fit_messages, generate_chat
from worker.ml.tiny import make_tiny_model

QUESTION = [{"role": "user", "content": "What colour is the sky?"}]


@pytest.fixture(scope="module")
def adapter(models_dir, tmp_path_factory) -> Path:
    """A LoRA adapter that learned the colours (trained once for this module)."""
    from tests.ml.conftest import _colour_rows, _make_spec, _write_jsonl

    folder = tmp_path_factory.mktemp("adapter")
    data = _write_jsonl(folder / "colours.jsonl", _colour_rows())
    # Packed, each of the 24 steps sees many rows: enough to learn the colours word for word.
    spec = _make_spec(max_steps=24, learning_rate=1e-2, max_seq_length=128, packing="on")
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


def _conversation(turns: int) -> list[dict[str, str]]:
    """A system message and `turns` questions with their answers, then one more question."""
    messages = [{"role": "system", "content": "Answer with a colour."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: what colour is the sky over the sea?"})
        messages.append({"role": "assistant", "content": f"Answer {i}: the sky is blue, the sea is blue too."})
    return messages + [{"role": "user", "content": "And the snow?"}]


def test_a_long_conversation_loses_its_oldest_turns_to_fit_and_keeps_the_system_and_last_question(tmp_path):
    make_tiny_model(tmp_path / "short", max_positions=160)
    cache = ModelCache(tmp_path)
    messages = _conversation(8)
    with cache.use("short") as model:
        with pytest.raises(InferenceError, match="reads at most 160"):
            generate_chat(model, messages, Sampling(max_tokens=20, temperature=0))
        reply = generate_chat(model, messages, Sampling(max_tokens=20, temperature=0), fit_context=True)
        kept, ids = fit_messages(model.tokenizer, messages, 160, 20)

    assert reply.dropped_messages > 0 and reply.dropped_messages % 2 == 0, "whole turns go: a question and its answer"
    assert kept == [messages[0], *messages[1 + reply.dropped_messages :]]
    assert kept[1]["role"] == "user" and kept[-1]["content"] == "And the snow?"
    assert reply.prompt_tokens == len(ids) and len(ids) + 20 <= 160
    assert fit_messages(model.tokenizer, kept[:1] + kept[-3:], 160, 20)[0] == kept[:1] + kept[-3:], "what fits stays"
    shorter, _ = fit_messages(model.tokenizer, messages, 160, 120)
    assert shorter == [messages[0], messages[-1]], (
        "less of the conversation stays when more room is kept for the answer"
    )


def test_a_conversation_that_fits_loses_nothing_and_a_last_question_too_long_is_still_refused(tmp_path):
    make_tiny_model(tmp_path / "short", max_positions=160)
    cache = ModelCache(tmp_path)
    with cache.use("short") as model:
        reply = generate_chat(model, _conversation(1), Sampling(max_tokens=5, temperature=0), fit_context=True)
        assert reply.dropped_messages == 0
        too_long = _conversation(2)[:-1] + [{"role": "user", "content": "red green blue " * 80}]
        with pytest.raises(InferenceError, match="reads at most 160"):
            generate_chat(model, too_long, Sampling(max_tokens=5), fit_context=True)


WARM, COLD = ["sun", "fire", "summer", "hot"], ["snow", "ice", "winter", "cold"]


def _train_classifier(models_dir: Path, folder: Path, **spec) -> Path:
    """A classifier of warm and cool texts: the final folder of its run."""
    import random

    from tests.ml.conftest import _make_spec, _write_jsonl

    rng = random.Random(0)
    filler = ["the", "a", "day", "was", "very", "and", "today", "really"]
    rows = []
    for i in range(64):
        label, words = ("warm", WARM) if i % 2 else ("cool", COLD)
        rows.append({"text": " ".join(rng.sample(filler, 4) + [rng.choice(words)]), "label": label})
    data = _write_jsonl(folder / "labels.jsonl", rows)
    result = train(
        _make_spec(**spec), train_file=data, output_dir=folder / "run", reporter=MemoryReporter(), models_dir=models_dir
    )
    return result.final_dir


@pytest.fixture(scope="module")
def classifier(models_dir, tmp_path_factory) -> Path:
    """A LoRA classifier of warm and cool texts (trained once for this module)."""
    return _train_classifier(models_dir, tmp_path_factory.mktemp("classifier"), max_steps=40, learning_rate=3e-3)


def test_a_classifier_gives_each_label_its_probability(cache, classifier):
    with cache.classifier("tiny-llama", classifier) as model:
        hot = classify(model, "the day was really hot")
        cold = classify(model, "today was very cold")
    for reply in (hot, cold):
        assert list(reply.probabilities) == ["cool", "warm"], "every label, in the classifier's order"
        assert sum(reply.probabilities.values()) == pytest.approx(1.0) and not reply.truncated
    assert hot.probabilities["warm"] > 0.8 and cold.probabilities["cool"] > 0.8
    assert hot.tokens > 3

    with cache.classifier("tiny-llama", classifier) as again:
        assert again.model is model.model, "the classifier is loaded once and cached"
        assert classify(again, "the day was really hot") == hot


def test_a_classifier_cuts_a_text_longer_than_it_reads_and_refuses_an_empty_one(cache, classifier):
    with cache.classifier("tiny-llama", classifier) as model:
        long = classify(model, "the day was really hot " * 2000)
        assert long.truncated and long.tokens == model.max_positions
        with pytest.raises(InferenceError, match="no text"):
            classify(model, "   ")


def test_a_chat_model_is_not_a_classifier_and_a_classifier_does_not_chat(cache, adapter, classifier):
    with pytest.raises(InferenceError, match="not trained to label text"), cache.classifier("tiny-llama", adapter):
        pass
    with pytest.raises(InferenceError, match="classifier"):
        answer(cache, classifier)


def test_a_fully_fine_tuned_classifier_is_a_model_of_its_own(cache, models_dir, tmp_path):
    full = _train_classifier(models_dir, tmp_path, method="full", max_steps=30, learning_rate=1e-3)
    assert not (full / "adapter_config.json").exists()
    with cache.classifier("tiny-llama", full) as model:
        hot = classify(model, "the day was really hot")
    assert list(hot.probabilities) == ["cool", "warm"] and sum(hot.probabilities.values()) == pytest.approx(1.0)
    assert hot.probabilities["warm"] > 0.5
