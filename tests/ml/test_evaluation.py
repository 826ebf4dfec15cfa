"""Evaluation: the metrics against a hand computation, the step-0 baseline, the verdict on a run
that does not learn, and the best checkpoint."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from worker.ml import MemoryReporter, train
from worker.ml.callbacks import checkpoint_step, checkpoints
from worker.ml.data import IGNORE_INDEX, Task
from worker.ml.evaluation import EvalAccumulator, classification_report


def one_hot_logits(predicted: list[int], classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), classes).float()


def test_classifier_metrics_match_a_hand_computation_over_batches():
    accumulator = EvalAccumulator(Task.classification, ["cat", "dog", "fox"])
    # true, predicted of 10 rows, in three batches of different sizes
    true = [0, 0, 0, 1, 1, 1, 1, 2, 2, 0]
    predicted = [0, 1, 0, 1, 1, 2, 1, 2, 0, 0]
    for start, end in ((0, 4), (4, 5), (5, 10)):
        accumulator.add(one_hot_logits(predicted[start:end], 3), torch.tensor(true[start:end]))
    metrics = accumulator.results()
    details = accumulator.last_details

    assert details["confusion_matrix"] == [[3, 1, 0], [0, 3, 1], [1, 0, 1]]
    assert sum(map(sum, details["confusion_matrix"])) == len(true)
    assert metrics["eval_accuracy"] == pytest.approx(7 / 10)
    # cat: precision 3/4, recall 3/4; dog: 3/4, 3/4; fox: 1/2, 1/2
    f1 = [0.75, 0.75, 0.5]
    assert metrics["eval_f1_macro"] == pytest.approx(sum(f1) / 3)
    by_label = {row["label"]: row for row in details["per_class"]}
    assert by_label["fox"] == {"label": "fox", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert by_label["cat"]["precision"] == pytest.approx(0.75) and by_label["dog"]["recall"] == pytest.approx(0.75)
    assert accumulator.empty, "each evaluation starts from zero"


def test_a_class_never_predicted_counts_zero_not_an_error():
    metrics, details = classification_report(np.array([[2, 0], [2, 0]]), ["no", "yes"])
    assert metrics["eval_accuracy"] == 0.5
    assert details["per_class"][1] == {"label": "yes", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert metrics["eval_f1_macro"] == pytest.approx((2 / 3 + 0) / 2)


def test_token_accuracy_is_weighted_by_tokens_not_a_mean_of_batches():
    accumulator = EvalAccumulator(Task.causal_lm)
    vocab = 5
    # Batch 1: one row, 4 trained tokens, all right. Batch 2: one row, 1 trained token, wrong.
    labels_1 = torch.tensor([[IGNORE_INDEX, 1, 2, 3, 4]])
    logits_1 = one_hot_logits([1, 2, 3, 4, 0], vocab)[None]  # position i predicts token i + 1
    labels_2 = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3]])
    logits_2 = one_hot_logits([0, 1, 0], vocab)[None]
    accumulator.add(logits_1, labels_1)
    accumulator.add(logits_2, labels_2)
    assert accumulator.results()["eval_mean_token_accuracy"] == pytest.approx(4 / 5)  # a mean of batches: 0.5


def label_rows(count: int = 64, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    warm, cold = ["sun", "fire", "summer", "hot"], ["snow", "ice", "winter", "cold"]
    filler = ["the", "a", "day", "was", "very", "and", "today", "really"]
    rows = []
    for i in range(count):
        label, words = ("warm", warm) if i % 2 else ("cool", cold)
        rows.append({"text": " ".join(rng.sample(filler, 4) + [rng.choice(words)]), "label": label})
    return rows


def verdicts(reporter: MemoryReporter) -> list[tuple[str, dict]]:
    return [(message, data) for level, message, data in reporter.events if data.get("verdict") == "not_learning"]


def test_a_classifier_run_logs_its_baseline_metrics_and_confusion_matrices(
    make_spec, write_jsonl, models_dir, tmp_path
):
    reporter = MemoryReporter()
    spec = make_spec(max_steps=40, learning_rate=3e-3, eval_split=0.25, eval_steps=10)
    result = train(
        spec,
        train_file=write_jsonl(tmp_path / "labels.jsonl", label_rows()),
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
    )
    steps = [step for step, _ in reporter.series("eval_loss")]
    assert steps == [0, 10, 20, 30, 40], "the base model is evaluated first, at step 0"
    assert [step for step, _ in reporter.series("eval_f1_macro")] == steps
    evaluations = [data["evaluation"] for _, _, data in reporter.events if "evaluation" in data]
    assert [e["step"] for e in evaluations] == steps
    for evaluation in evaluations:
        assert evaluation["class_names"] == ["cool", "warm"]
        assert sum(map(sum, evaluation["confusion_matrix"])) == 16, "every held-out row, once"
        assert [row["support"] for row in evaluation["per_class"]] == [
            sum(row) for row in evaluation["confusion_matrix"]
        ]
    last = evaluations[-1]
    assert last["confusion_matrix"][0][0] + last["confusion_matrix"][1][1] == 16  # the tiny model learns it
    assert reporter.series("eval_accuracy")[-1] == (40, 1.0)
    assert not verdicts(reporter), "a run that learns gets no warning"
    assert result.metrics["best_eval_accuracy"] == 1.0 and result.metrics["eval_f1_macro"] == 1.0


def test_the_verdict_fires_on_a_classifier_that_cannot_learn(make_spec, write_jsonl, models_dir, tmp_path):
    reporter = MemoryReporter()
    spec = make_spec(max_steps=20, learning_rate=1e-9, eval_split=0.25, eval_steps=5, logging_steps=2)
    train(
        spec,
        train_file=write_jsonl(tmp_path / "labels.jsonl", label_rows()),
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
    )
    (message, data), *more = verdicts(reporter)
    assert not more, "one verdict per run"
    assert data["step"] == 10, "at the first evaluation half-way through"
    assert any("eval accuracy" in reason for reason in data["reasons"]), data["reasons"]
    assert "learning rate" in message and "frozen" in message
    level = next(level for level, text, _ in reporter.events if text == message)
    assert level == "warning"


def test_a_language_model_gets_perplexity_and_a_verdict_when_its_loss_does_not_fall(
    make_spec, colour_file, models_dir, tmp_path
):
    reporter = MemoryReporter()
    spec = make_spec(max_steps=8, learning_rate=1e-9, eval_split=0.25, eval_steps=4)
    train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)
    evals = dict(reporter.series("eval_loss"))
    assert sorted(evals) == [0, 4, 8]
    for step, perplexity in reporter.series("eval_perplexity"):
        assert perplexity == pytest.approx(math.exp(evals[step]))
    (_, data), *_ = verdicts(reporter)
    assert any("not falling" in reason for reason in data["reasons"]), data["reasons"]
    assert any("eval loss" in reason for reason in data["reasons"]), data["reasons"]


def test_a_language_model_that_learns_gets_no_verdict(make_spec, colour_file, models_dir, tmp_path):
    reporter = MemoryReporter()
    spec = make_spec(max_steps=12, eval_split=0.25, eval_steps=4)
    train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)
    assert reporter.series("eval_loss")[0][0] == 0
    assert not verdicts(reporter)


def test_the_best_checkpoint_survives_rotation_and_becomes_the_final_weights(
    make_spec, write_jsonl, models_dir, tmp_path
):
    from safetensors.torch import load_file

    reporter = MemoryReporter()
    spec = make_spec(
        max_steps=40,
        learning_rate=3e-3,
        eval_split=0.25,
        eval_steps=5,
        keep_checkpoints=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_accuracy",
    )
    result = train(
        spec,
        train_file=write_jsonl(tmp_path / "labels.jsonl", label_rows()),
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
    )
    accuracy = {step: value for step, value in reporter.series("eval_accuracy") if step > 0}
    best = min(step for step, value in accuracy.items() if value == max(accuracy.values()))  # the first of equals
    assert best < 40, f"the classifier was meant to be right on every row before its last step: {accuracy}"
    assert result.metrics["best_eval_accuracy_step"] == best
    assert result.metrics["best_eval_accuracy"] == accuracy[best]
    kept = [checkpoint_step(path) for path in checkpoints(tmp_path / "run" / "checkpoints")]
    assert kept == [best, 40], "the best checkpoint is kept from rotation beside the last"
    final = load_file(result.final_dir / "adapter_model.safetensors")
    saved = load_file(tmp_path / "run" / "checkpoints" / f"step-{best}" / "adapter_model.safetensors")
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in final)
    assert any(f"Loaded the best checkpoint (step {best}" in message for message in reporter.messages())
