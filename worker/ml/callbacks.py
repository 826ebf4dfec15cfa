"""What runs inside the Trainer's loop: the reporter callback, and the Trainer subclass that
counts real tokens and right predictions. Checkpoints are `checkpoints/step-N`."""

from __future__ import annotations

import math
import resource
import shutil
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .data import IGNORE_INDEX, REAL_TOKENS_KEY, Task
from .reporting import Reporter
from .task_metrics import task_eval_metrics

CHECKPOINT_PREFIX = "step-"

# Checkpointing at every epoch end (the default) saves at most this many times in a run: a
# small dataset trained for many epochs would otherwise write (and announce) a checkpoint
# every few steps.
MAX_EPOCH_CHECKPOINTS = 10

# What the reporter hears of the trainer's logs, at a training step and at an evaluation.
TRAIN_KEYS = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "accuracy")
EVAL_KEYS = ("eval_loss", "eval_mean_token_accuracy", "eval_accuracy")
# The preference trainers' (TRL's) metrics, and the names the reporter hears them under
# ("eval_" in front at an evaluation).
PREFERENCE_KEYS = {
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
    "logps/chosen": "logp_chosen",
    "logps/rejected": "logp_rejected",
}


def preference_metrics(logs: dict[str, float], prefix: str = "") -> dict[str, float]:
    """The preference metrics of a log entry under tunelab's names."""
    return {prefix + name: float(logs[prefix + key]) for key, name in PREFERENCE_KEYS.items() if prefix + key in logs}


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a `step-N` checkpoint was saved at."""
    return int(checkpoint.name[len(CHECKPOINT_PREFIX) :])


def peak_memory_mb(cuda: bool) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of the trained tokens (labels other than -100) whose most likely prediction is the label."""
    predicted = logits[:, :-1].argmax(-1)
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    return ((predicted == targets) & trained).sum() / trained.sum().clamp(min=1)


def row_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of the rows whose most likely class is the label."""
    return (logits.argmax(-1) == labels).float().mean()


class CountingTrainer(Trainer):
    """The Trainer, counting from each batch its real (non-pad) tokens, into
    `state.num_input_tokens_seen` (which checkpoints carry across a resume), and its right
    predictions.

    Accuracy comes, as in TRL's SFTTrainer, from the logits the forward pass made for the loss:
    one value per batch, averaged over the batches since the last log and logged with the
    loss: `mean_token_accuracy` for causal LMs, `accuracy` for classifiers (`eval_`-prefixed
    at an evaluation).
    """

    def __init__(self, *args, task: Task, **kwargs):
        super().__init__(*args, **kwargs)
        self.accuracy_key = "mean_token_accuracy" if task == Task.causal_lm else "accuracy"
        self._accuracy = token_accuracy if task == Task.causal_lm else row_accuracy
        self._batch_accuracies: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real_tokens = inputs.pop(REAL_TOKENS_KEY)
        if model.training:
            self.state.num_input_tokens_seen += real_tokens
        labels = inputs["labels"]
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        with torch.no_grad():
            # Kept on the device: reading it back each step would wait for the GPU.
            self._batch_accuracies["train" if model.training else "eval"].append(
                self._accuracy(outputs.logits.detach(), labels)
            )
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        split = "eval" if "eval_loss" in logs else "train" if "loss" in logs else None
        if split is not None and self._batch_accuracies[split]:
            key = f"eval_{self.accuracy_key}" if split == "eval" else self.accuracy_key
            logs[key] = torch.stack(self._batch_accuracies[split]).mean().item()
            self._batch_accuracies[split].clear()
        super().log(logs, start_time)


class ReporterCallback(TrainerCallback):
    """Forwards progress, metrics and checkpoints to the reporter, and stops when it asks.

    Checkpoints are written by the trainer as `checkpoint-N` and renamed to `step-N` once
    complete, so a `step-N` directory is always whole and a crash mid-save leaves nothing
    that resume would pick up.
    """

    def __init__(self, reporter: Reporter, *, keep_checkpoints: int, cuda: bool):
        self.reporter = reporter
        self.keep_checkpoints = keep_checkpoints
        self.cuda = cuda
        self.stopped = False
        self._window_start = time.perf_counter()
        self._window_tokens = 0

    def _restart_window(self, state) -> None:
        self._window_start = time.perf_counter()
        self._window_tokens = state.num_input_tokens_seen

    def on_train_begin(self, args, state, control, **kwargs):
        self._restart_window(state)

    def on_step_end(self, args, state, control, **kwargs):
        self.reporter.progress(state.global_step, state.max_steps, state.epoch)
        if state.global_step < state.max_steps and self.reporter.should_stop():
            self.stopped = True
            control.should_training_stop = True
            control.should_save = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped:  # the step that stopped was saved already; leave at once
            control.should_save = control.should_evaluate = False
        elif control.should_save and args.save_strategy == "epoch" and state.global_step < state.max_steps:
            every = math.ceil(state.num_train_epochs / MAX_EPOCH_CHECKPOINTS)
            control.should_save = round(state.epoch) % every == 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "eval_loss" in logs:
            metrics = {key: float(logs[key]) for key in EVAL_KEYS if key in logs}
            metrics.update(preference_metrics(logs, "eval_"))
            metrics.update(task_eval_metrics(logs))  # NER, QA and seq2seq (task_training.TaskTrainer)
            self.reporter.log({**metrics, "epoch": state.epoch}, state.global_step)
            return
        if "loss" not in logs:
            return  # the end-of-training summary
        elapsed = time.perf_counter() - self._window_start
        tokens = state.num_input_tokens_seen - self._window_tokens
        metrics = {key: float(logs[key]) for key in TRAIN_KEYS if key in logs}
        metrics.update(preference_metrics(logs))
        metrics.update(
            epoch=float(state.epoch),
            tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
            tokens_seen=float(state.num_input_tokens_seen),
            peak_memory_mb=peak_memory_mb(self.cuda),
        )
        self.reporter.log(metrics, state.global_step)
        self._restart_window(state)

    def on_evaluate(self, args, state, control, **kwargs):
        self._restart_window(state)  # evaluation time does not count against training throughput

    def on_save(self, args, state, control, **kwargs):
        written = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        final = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
        if final.exists():
            shutil.rmtree(final)
        # A crash after the rename resumes from here; the points logged up to here must
        # survive it, or the loss curve would have a hole that no rerun fills.
        self.reporter.flush()
        written.rename(final)
        for old in checkpoints(Path(args.output_dir))[: -self.keep_checkpoints]:
            shutil.rmtree(old)
        self.reporter.event(f"Saved checkpoint at step {state.global_step}", step=state.global_step)
        self.reporter.checkpoint(state.global_step, final)
        self._restart_window(state)
