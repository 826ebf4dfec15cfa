"""What an evaluation measures, and what the run's evaluations say about it.

`EvalAccumulator` adds each evaluation batch's counts up on the device (and, in a run on
several devices, over the ranks, each of which evaluated its share), so evaluation never
holds the logits of the whole eval set: right and trained tokens for a causal LM, a confusion
matrix for a classifier (scikit-learn turns it into accuracy, macro F1 and per-class precision,
recall and F1 at the end).

`LearningCheck` keeps the step-0 baseline (the base model evaluated before training) in the
trainer's log history, and once a share of the run is done says, in a warning event, when the
run does not learn: the eval metric no better than the baseline, or the train loss at chance
(ln of the number of classes) or not falling.

`best_evaluation` finds the best evaluation of a run in its log history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from .data import IGNORE_INDEX, Task
from .distributed import summed_across_ranks
from .reporting import Reporter

# Metrics where a higher value is the better one; every other (eval_loss) is better lower.
HIGHER_IS_BETTER = {"eval_accuracy", "eval_f1_macro", "eval_mean_token_accuracy"}
# Which metrics each task has, for `metric_for_best_model`.
TASK_METRICS = {
    Task.causal_lm: ("eval_loss", "eval_mean_token_accuracy"),
    Task.classification: ("eval_loss", "eval_accuracy", "eval_f1_macro"),
}


def perplexity(loss: float) -> float:
    """e to the mean loss per token; infinity for a loss too large to exponentiate."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


class EvalAccumulator:
    """The counts of one evaluation, batch by batch, kept on the device until `results`."""

    def __init__(self, task: Task, class_names: list[str] | None = None):
        self.task = task
        self.class_names = list(class_names or [])
        self.last_details: dict[str, Any] | None = None  # the latest classifier evaluation's details
        self.reset()

    def reset(self) -> None:
        self._right: torch.Tensor | int = 0
        self._trained: torch.Tensor | int = 0
        self._confusion: torch.Tensor | None = None

    @torch.no_grad()
    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.task == Task.causal_lm:
            predicted = logits[:, :-1].argmax(-1)  # the prediction at position i is for token i + 1
            targets = labels[:, 1:]
            trained = targets != IGNORE_INDEX
            self._right = self._right + ((predicted == targets) & trained).sum()
            self._trained = self._trained + trained.sum()
            return
        classes = logits.shape[-1]
        cells = labels.long() * classes + logits.argmax(-1)
        counts = torch.bincount(cells, minlength=classes * classes).view(classes, classes)
        self._confusion = counts if self._confusion is None else self._confusion + counts

    @property
    def empty(self) -> bool:
        return self._confusion is None and not isinstance(self._trained, torch.Tensor)

    def results(self) -> dict[str, float]:
        """The evaluation's metrics (eval_-prefixed), then a fresh start for the next one. A
        classifier's confusion matrix and per-class figures go to `last_details`."""
        if self.task == Task.causal_lm:
            right, trained = summed_across_ranks(
                torch.stack([torch.as_tensor(self._right), torch.as_tensor(self._trained)])
            ).tolist()
            metrics = {"eval_mean_token_accuracy": right / trained if trained else 0.0}
        else:
            confusion = (
                summed_across_ranks(self._confusion).cpu().numpy()
                if self._confusion is not None
                else np.zeros((0, 0), int)
            )
            metrics, self.last_details = classification_report(confusion, self.class_names)
        self.reset()
        return metrics


def classification_report(confusion: np.ndarray, class_names: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """Accuracy and macro F1 (the metrics), and per-class precision, recall, F1 and support with
    the confusion matrix (rows: true label, columns: predicted), from the confusion matrix."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    classes = confusion.shape[0]
    labels = list(range(classes))
    # The rows the matrix counts, as (true, predicted) pairs: what scikit-learn reads.
    true = np.repeat(np.repeat(labels, classes), confusion.reshape(-1))
    predicted = np.repeat(np.tile(labels, classes), confusion.reshape(-1))
    if not len(true):
        return {"eval_accuracy": 0.0, "eval_f1_macro": 0.0}, {"class_names": class_names, "confusion_matrix": []}
    precision, recall, f1, support = precision_recall_fscore_support(true, predicted, labels=labels, zero_division=0)
    metrics = {"eval_accuracy": float(accuracy_score(true, predicted)), "eval_f1_macro": float(np.mean(f1))}
    details = {
        "class_names": class_names,
        "confusion_matrix": confusion.astype(int).tolist(),
        "per_class": [
            {
                "label": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
    }
    return metrics, details


@dataclass(frozen=True)
class BestEvaluation:
    step: int
    metric: str
    value: float


def best_evaluation(log_history: list[dict], metric: str, *, steps: set[int] | None = None) -> BestEvaluation | None:
    """The best evaluation after step 0 by `metric` (the earliest of equals), among `steps` when given."""
    higher = metric in HIGHER_IS_BETTER
    best: BestEvaluation | None = None
    for entry in log_history:
        value, step = entry.get(metric), entry.get("step", 0)
        if value is None or step <= 0 or (steps is not None and step not in steps) or not math.isfinite(value):
            continue
        if best is None or (value > best.value if higher else value < best.value):
            best = BestEvaluation(step, metric, float(value))
    return best


def _baseline(log_history: list[dict]) -> dict | None:
    return next((entry for entry in log_history if "eval_loss" in entry and entry.get("step") == 0), None)


# What a run that does not learn most often needs, in the words of its warning.
LIKELY_CAUSES = [
    "the learning rate is too low (or too high: a diverging loss)",
    "too few steps: raise epochs or max_steps",
    "the part that must learn is frozen (a classifier's head, or adapters on the wrong modules)",
]


class LearningCheck(TrainerCallback):
    """Keeps the baseline evaluation (step 0) in the log history, so that it survives `train`
    starting a fresh state and a resume; and once `share` of the steps are done (at the first
    evaluation from there, or the first log when there is no eval data) warns when the run does
    not learn. Silent on a run that does. One verdict per run, given in the process that
    crosses `share`."""

    # A loss must fall by more than this share of itself, an accuracy rise by this many points, to count.
    LOSS_MARGIN = 0.01
    ACCURACY_MARGIN = 0.01

    def __init__(self, reporter: Reporter, *, share: float, task: Task, num_classes: int | None = None):
        self.reporter = reporter
        self.share = share
        self.task = task
        self.chance_loss = math.log(num_classes) if task == Task.classification and num_classes else None
        self.metric = "eval_accuracy" if task == Task.classification else "eval_loss"
        self.baseline: dict | None = None
        self.done = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if state.max_steps == 0 and "eval_loss" in logs:  # evaluated before training began
            self.baseline = {**logs, "step": 0, "epoch": 0.0}
            return
        if self.done or not state.max_steps or state.global_step < math.ceil(self.share * state.max_steps):
            return
        if "eval_loss" not in logs and (args.eval_strategy != "no" or "loss" not in logs):
            return
        self.done = True
        reasons = self.reasons(state.log_history)
        if reasons:
            self.reporter.event(
                f"This run does not seem to learn (step {state.global_step} of {state.max_steps}): "
                f"{'; '.join(reasons)}. Likely causes: {'; '.join(LIKELY_CAUSES)}.",
                level="warning",
                verdict="not_learning",
                step=state.global_step,
                reasons=reasons,
                causes=LIKELY_CAUSES,
                learning_rate=args.learning_rate,
            )

    def on_train_begin(self, args, state, control, **kwargs):
        if self.baseline is not None and _baseline(state.log_history) is None:
            state.log_history.insert(0, self.baseline)
        self.done = bool(state.max_steps) and state.global_step >= math.ceil(self.share * state.max_steps)

    def reasons(self, history: list[dict]) -> list[str]:
        """Why the run so far does not look like learning; empty when it does."""
        reasons = []
        baseline = _baseline(history)
        evaluated = [entry for entry in history if self.metric in entry and entry.get("step", 0) > 0]
        if baseline is not None and self.metric in baseline and evaluated:
            start = baseline[self.metric]
            best = best_evaluation(history, self.metric)
            if best is not None and not self._improved(start, best.value):
                name = self.metric.removeprefix("eval_").replace("_", " ")
                reasons.append(
                    f"the best eval {name} so far ({best.value:.4g}) is no better than the base model's "
                    f"({start:.4g} at step 0)"
                )
        train_losses = [entry["loss"] for entry in history if "loss" in entry and math.isfinite(entry["loss"])]
        if train_losses:
            recent = float(np.mean(train_losses[-3:]))
            if self.chance_loss is not None and recent >= 0.95 * self.chance_loss:
                reasons.append(
                    f"the train loss ({recent:.3f}) stays at chance (ln {round(math.exp(self.chance_loss))} = "
                    f"{self.chance_loss:.3f}): the classifier guesses"
                )
            elif len(train_losses) > 1 and recent >= (1 - self.LOSS_MARGIN * 2) * train_losses[0]:
                reasons.append(f"the train loss is not falling ({train_losses[0]:.4g} at first, {recent:.4g} now)")
        return reasons

    def _improved(self, start: float, best: float) -> bool:
        if self.metric in HIGHER_IS_BETTER:
            return best > start + self.ACCURACY_MARGIN
        return best < start - self.LOSS_MARGIN * abs(start)
