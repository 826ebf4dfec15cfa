"""How the training library tells the outside world what is happening.

The worker implements `Reporter` (database rows, live pub/sub, cancel flag); the library
only calls these seven methods. `MemoryReporter` keeps everything in lists, for tests and
the benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


def counted(count: int, noun: str) -> str:
    """`count` and its noun, in the plural unless there is one: "1 sequence", "3 sequences"."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


class Reporter(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Every logging step: loss, learning_rate, grad_norm, epoch, tokens_per_second (real, non-pad tokens),
        tokens_seen, peak_memory_mb, and mean_token_accuracy (a classifier: accuracy). At each evaluation:
        eval_loss and eval_mean_token_accuracy (a classifier: eval_accuracy), and epoch."""

    def event(self, message: str, level: str = "info", **data: Any) -> None:
        """A human-readable milestone ("Loaded model ...", "Saved checkpoint at step 40"); level is info|warning."""

    def progress(self, step: int, total_steps: int, epoch: float | None = None) -> None:
        """After every optimizer step, with the (fractional) epoch reached; must be cheap."""

    def flush(self) -> None:
        """Block until everything reported so far is durable. Called just before a checkpoint
        becomes visible to resume, so a crash right after it cannot leave a gap in the series."""

    def checkpoint(self, step: int, path: Path) -> None:
        """A checkpoint directory is complete on disk."""

    def should_stop(self) -> bool:
        """Checked every optimizer step; True stops training cleanly, keeping a last checkpoint."""

    def samples(self, kind: str, step: int, rows: list[dict[str, Any]]) -> None:
        """The model's answers at an evaluation (see `samples.py`): kind "generation" (prompt,
        reference, answer, loss per row), "base" (the base model's, at step 0) or "misclassified"."""


@dataclass
class MemoryReporter:
    """Records every call. `stop_at_step` makes `should_stop` answer True once that step is done
    (0: before training starts)."""

    stop_at_step: int | None = None
    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    checkpoints: list[tuple[int, Path]] = field(default_factory=list)
    # (step, total_steps, time.perf_counter()) of every progress call.
    steps: list[tuple[int, int, float]] = field(default_factory=list)
    epochs: list[float | None] = field(default_factory=list)  # the epoch of every progress call
    sample_sets: list[tuple[str, int, list[dict[str, Any]]]] = field(default_factory=list)  # (kind, step, rows)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def event(self, message: str, level: str = "info", **data: Any) -> None:
        self.events.append((level, message, data))

    def progress(self, step: int, total_steps: int, epoch: float | None = None) -> None:
        self.steps.append((step, total_steps, time.perf_counter()))
        self.epochs.append(epoch)

    def flush(self) -> None:
        pass  # every call is kept the moment it is made

    def checkpoint(self, step: int, path: Path) -> None:
        self.checkpoints.append((step, path))

    def should_stop(self) -> bool:
        last_step = self.steps[-1][0] if self.steps else 0
        return self.stop_at_step is not None and last_step >= self.stop_at_step

    def samples(self, kind: str, step: int, rows: list[dict[str, Any]]) -> None:
        self.sample_sets.append((kind, step, rows))

    def series(self, name: str) -> list[tuple[int, float]]:
        """(step, value) of one metric, in the order logged."""
        return [(step, m[name]) for step, m in self.metrics if name in m]

    def messages(self) -> list[str]:
        return [message for _, message, _ in self.events]
