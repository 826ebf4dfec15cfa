"""train(start_from=...): a run that continues an earlier one's adapter (or weights) starts
where that one ended, not from the base model."""

from __future__ import annotations

import pytest

from worker.ml import ConfigurationError, MemoryReporter, train


def _losses(reporter: MemoryReporter) -> list[float]:
    return [metrics["loss"] for _, metrics in reporter.metrics if "loss" in metrics]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_continued_run_starts_from_its_parents_weights(method, make_spec, colour_file, models_dir, tmp_path):
    lr = 5e-3 if method == "lora" else 1e-3
    spec = make_spec(method=method, max_steps=16, learning_rate=lr)
    parent = MemoryReporter()
    first = train(spec, train_file=colour_file, output_dir=tmp_path / "parent", reporter=parent, models_dir=models_dir)
    parent_losses = _losses(parent)
    assert parent_losses[-1] < parent_losses[0] * 0.6, "the parent learned"

    child = MemoryReporter()
    train(
        make_spec(method=method, max_steps=4, learning_rate=lr),
        train_file=colour_file,
        output_dir=tmp_path / "child",
        reporter=child,
        models_dir=models_dir,
        start_from=first.final_dir,
        start_from_name="job #1",
    )
    child_losses = _losses(child)
    # Its first loss is the parent's last, give or take a batch; a fresh run's first loss is far higher.
    assert child_losses[0] < parent_losses[0] * 0.6
    assert abs(child_losses[0] - parent_losses[-1]) < 0.35 * parent_losses[0]
    assert any(message == "Starting from the trained weights of job #1" for _, message, _ in child.events)


def test_weights_that_do_not_fit_the_model_are_a_clear_error(make_spec, colour_file, models_dir, tmp_path):
    first = train(
        make_spec(max_steps=1, lora={"r": 4}),
        train_file=colour_file,
        output_dir=tmp_path / "parent",
        reporter=MemoryReporter(),
        models_dir=models_dir,
    )
    with pytest.raises(ConfigurationError, match="do not fit"):
        train(
            make_spec(max_steps=1, lora={"r": 8}),
            train_file=colour_file,
            output_dir=tmp_path / "child",
            reporter=MemoryReporter(),
            models_dir=models_dir,
            start_from=first.final_dir,
        )


def test_a_classifier_continues_only_with_the_labels_it_was_trained_on(make_spec, write_jsonl, models_dir, tmp_path):
    rows = [{"text": f"the {word} day", "label": label} for word, label in [("sunny", "warm"), ("snowy", "cool")] * 8]
    first = train(
        make_spec(max_steps=1),
        train_file=write_jsonl(tmp_path / "labels.jsonl", rows),
        output_dir=tmp_path / "parent",
        reporter=MemoryReporter(),
        models_dir=models_dir,
    )
    relabelled = [{**row, "label": {"warm": "hot", "cool": "cold"}[row["label"]]} for row in rows]
    with pytest.raises(ConfigurationError, match="trained with the labels cool, warm, and this dataset has the labels"):
        train(
            make_spec(max_steps=1),
            train_file=write_jsonl(tmp_path / "relabelled.jsonl", relabelled),
            output_dir=tmp_path / "child",
            reporter=MemoryReporter(),
            models_dir=models_dir,
            start_from=first.final_dir,
            start_from_name="job #1",
        )
    continued = MemoryReporter()
    train(
        make_spec(max_steps=1),
        train_file=write_jsonl(tmp_path / "same.jsonl", rows),
        output_dir=tmp_path / "same",
        reporter=continued,
        models_dir=models_dir,
        start_from=first.final_dir,
        start_from_name="job #1",
    )
    assert ("info", "Starting from the trained weights of job #1") in [(lvl, msg) for lvl, msg, _ in continued.events]
