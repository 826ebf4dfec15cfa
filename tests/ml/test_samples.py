"""Sample answers at each evaluation: the same held-out prompts every time, the base model's
answers beside them, batched greedy generation that answers as one prompt at a time would,
and a classifier's misclassified rows."""

from __future__ import annotations

import pytest

from tests.helpers import warm_and_cool_rows
from worker.ml import MemoryReporter, samples, train
from worker.ml.samples import BASE, GENERATION, MAX_MISCLASSIFIED, MISCLASSIFIED, Sampler
from worker.ml.training_run import build_trainer, prepare


def _mean_loss(rows) -> float:
    return sum(row["loss"] for row in rows) / len(rows)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_every_evaluation_answers_the_same_prompts_beside_the_base_answers(
    method, make_spec, colour_file, models_dir, tmp_path, monkeypatch
):
    # Whole answers: time enough for them at every evaluation, however busy the machine is.
    monkeypatch.setattr(samples, "MIN_TIME_S", samples.TIME_LIMIT_S)
    monkeypatch.setattr(samples, "BASE_TIME_S", samples.TIME_LIMIT_S)
    reporter = MemoryReporter()
    spec = make_spec(
        method=method,
        max_steps=16,
        eval_split=0.25,
        eval_steps=4,
        eval_sample_max_new_tokens=24,
        learning_rate=3e-3 if method == "full" else 5e-3,
    )
    train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)

    kinds = [(kind, step) for kind, step, _ in reporter.sample_sets]
    assert kinds == [(BASE, 0), (GENERATION, 4), (GENERATION, 8), (GENERATION, 12), (GENERATION, 16)]
    sets = [rows for _, _, rows in reporter.sample_sets]
    assert len(sets[0]) == spec.eval_samples == 8
    prompts = [[(row["row"], row["prompt"], row["reference"]) for row in rows] for rows in sets]
    assert all(p == prompts[0] for p in prompts), "every evaluation answers the same prompts"
    assert all("What colour is the" in prompt and reference.startswith("The ") for _, prompt, reference in prompts[0])
    assert all(isinstance(row["answer"], str) and row["loss"] > 0 for rows in sets for row in rows)
    # The model learned: its loss on the references fell well below the base model's, and it now
    # answers in the references' form, which the base model (random weights) never does.
    assert _mean_loss(sets[-1]) < 0.5 * _mean_loss(sets[0]), [_mean_loss(rows) for rows in sets]
    assert all(row["answer"].startswith("The ") for row in sets[-1]), [row["answer"] for row in sets[-1]]
    assert not any(row["answer"].startswith("The ") for row in sets[0]), [row["answer"] for row in sets[0]]


def test_batched_left_padded_answers_are_the_answers_of_one_prompt_at_a_time(
    make_spec, colour_rows, write_jsonl, models_dir, tmp_path
):
    rows = colour_rows(48)
    for i, row in enumerate(rows):  # prompts of different lengths, so a batch needs padding
        row["instruction"] = "Please tell me: " * (i % 4) + row["instruction"]
    spec = make_spec(max_steps=10, eval_split=0.25, eval_samples=8, eval_sample_max_new_tokens=16)
    reporter = MemoryReporter()
    prepared = prepare(
        spec, train_file=write_jsonl(tmp_path / "rows.jsonl", rows), reporter=reporter, models_dir=models_dir
    )
    trainer, _ = build_trainer(prepared, tmp_path / "checkpoints", reporter)
    trainer.train()
    sampler = Sampler.of(spec, prepared.tokenizer, prepared.task, prepared.eval_examples)
    assert len({len(prompt.prompt) for prompt in sampler.prompts}) > 1, "the prompts differ in length"
    batched = sampler.answers(trainer.model)
    sampler.batch_size = 1
    alone = sampler.answers(trainer.model)
    assert [row["answer"] for row in batched] == [row["answer"] for row in alone]
    assert [row["loss"] for row in batched] == pytest.approx([row["loss"] for row in alone], rel=1e-4)
    assert not any(row["cut"] for row in batched), "16 new tokens each, in time"

    # Out of time: the answers stop where they are, and say they were cut short.
    sampler.batch_size, sampler.max_new_tokens = 8, 1000
    hurried = sampler.answers(trainer.model, time_limit_s=0.01)
    assert all(row["cut"] for row in hurried)
    assert all(len(row["answer"]) < 40 for row in hurried), "a token or a few, not a thousand"


def test_no_samples_when_asked_for_none(make_spec, colour_file, models_dir, tmp_path):
    reporter = MemoryReporter()
    spec = make_spec(max_steps=4, eval_split=0.25, eval_steps=2, eval_samples=0)
    train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)
    assert reporter.series("eval_loss") and reporter.sample_sets == []


def test_a_classifier_lists_its_misclassified_rows_at_each_evaluation(
    make_spec, write_jsonl, models_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(samples, "MIN_TIME_S", samples.TIME_LIMIT_S)  # every row looked at, however busy the machine
    rows = warm_and_cool_rows(160)
    warm, cold = ["sun", "fire", "summer", "hot"], ["snow", "ice", "winter", "cold"]
    reporter = MemoryReporter()
    spec = make_spec(max_steps=40, learning_rate=3e-3, eval_split=0.5, eval_steps=10)
    train(
        spec,
        train_file=write_jsonl(tmp_path / "labels.jsonl", rows),
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
    )
    sets = reporter.sample_sets
    # Step 0: the untrained head's mistakes, at the baseline evaluation before training.
    assert [(kind, step) for kind, step, _ in sets] == [(MISCLASSIFIED, step) for step in (0, 10, 20, 30, 40)]
    accuracies = [value for _, value in reporter.series("eval_accuracy")]
    for (_, _, wrong), accuracy in zip(sets, accuracies):
        # 80 held-out rows: the misclassified ones, up to the bound, are those the accuracy counts wrong.
        assert len(wrong) == min(MAX_MISCLASSIFIED, round((1 - accuracy) * 80))
        for row in wrong:
            assert row["predicted"] != row["label"] and {row["predicted"], row["label"]} == {"warm", "cool"}
            assert 0.5 <= row["probability"] <= 1 and row["text"].split()[-1] in warm + cold
    assert len(sets[-1][2]) < len(sets[0][2]), "the trained head errs less than the untrained one"
