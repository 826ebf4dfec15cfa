"""A trained job's weights evaluated on another dataset, through the code path training uses
(`prepare`, `build_trainer`, the trainer's `evaluate`), so its metrics are the ones training logs."""

from __future__ import annotations

import tempfile
from pathlib import Path

from app.contract.spec import TrainingSpec

from .reporting import Reporter
from .training_run import build_trainer, prepare


def evaluate_on(
    spec: TrainingSpec,
    *,
    weights: Path,
    eval_file: Path,
    reporter: Reporter,
    train_file: Path | None = None,
    models_dir: Path | None = None,
) -> dict[str, float]:
    """The evaluation metrics (eval_loss, accuracy, ...) of the base model with `weights` (an adapter
    or a full model's folder) on `eval_file`. `train_file` is the job's training data: a classifier's
    labels are read from it (without it, from `eval_file`)."""
    spec = spec.model_copy(update={"eval_samples": 0, "early_stopping_patience": None})
    prepared = prepare(
        spec,
        train_file=train_file or eval_file,
        eval_file=eval_file,
        reporter=reporter,
        models_dir=models_dir,
        start_from=weights,
        start_from_name="the job's final weights",
    )
    with tempfile.TemporaryDirectory(prefix="tunelab-evaluation-") as scratch:
        trainer, _ = build_trainer(prepared, Path(scratch), reporter)
        metrics = trainer.evaluate()
    return {key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))}
