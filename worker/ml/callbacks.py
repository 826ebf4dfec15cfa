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

from . import distributed
from .data import IGNORE_INDEX, REAL_TOKENS_KEY, Task
from .evaluation import EvalAccumulator, best_evaluation, perplexity
from .reporting import Reporter, counted
from .task_metrics import task_eval_metrics

CHECKPOINT_PREFIX = "step-"

# Checkpointing at every epoch end (the default) saves at most this many times in a run: a
# small dataset trained for many epochs would otherwise write (and announce) a checkpoint
# every few steps.
MAX_EPOCH_CHECKPOINTS = 10

# What the reporter hears of the trainer's logs, at a training step and at an evaluation.
TRAIN_KEYS = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "accuracy")
EVAL_KEYS = ("eval_loss", "eval_perplexity", "eval_mean_token_accuracy", "eval_accuracy", "eval_f1_macro")
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


def per_rank_metrics(by_rank: list[list[float]]) -> dict[str, float]:
    """Each rank's [tokens/s, peak memory MB] as flat metric values: `tokens_per_second_rank0`,
    `peak_memory_mb_rank0`, ..., and `peak_memory_mb_busiest`, the memory of the device that
    holds the most (the one a job runs out of first)."""
    metrics = {}
    for rank, (tokens_per_second, memory_mb) in enumerate(by_rank):
        metrics[f"tokens_per_second_rank{rank}"] = tokens_per_second
        metrics[f"peak_memory_mb_rank{rank}"] = memory_mb
    metrics["peak_memory_mb_busiest"] = max(memory_mb for _, memory_mb in by_rank)
    return metrics


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

    Train accuracy comes, as in TRL's SFTTrainer, from the logits the forward pass made for
    the loss: one value per batch, averaged over the batches since the last log and logged with
    the loss: `mean_token_accuracy` for causal LMs, `accuracy` for classifiers. An evaluation
    counts over all its rows instead (`evaluation.EvalAccumulator`): eval_mean_token_accuracy
    weighted by tokens, or a classifier's eval_accuracy and eval_f1_macro from its confusion
    matrix; with eval_perplexity from eval_loss.
    """

    def __init__(self, *args, task: Task, class_names: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.accuracy_key = "mean_token_accuracy" if task == Task.causal_lm else "accuracy"
        self._accuracy = token_accuracy if task == Task.causal_lm else row_accuracy
        self._batch_accuracies: dict[str, list[torch.Tensor]] = {"train": []}
        self.task = task
        self.evaluation = EvalAccumulator(task, class_names)

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        distributed.shard_on_cpu_too(self)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real_tokens = inputs.pop(REAL_TOKENS_KEY)
        if model.training:
            # Every rank's tokens, once: the count is the run's, whichever rank saves the state.
            self.state.num_input_tokens_seen += distributed.count_tokens(real_tokens)
        labels = inputs["labels"]
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        with torch.no_grad():
            # Kept on the device: reading it back each step would wait for the GPU.
            if model.training:
                self._batch_accuracies["train"].append(self._accuracy(outputs.logits.detach(), labels))
            else:
                self.evaluation.add(outputs.logits.detach(), labels)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs:
            if self.task == Task.causal_lm:
                logs["eval_perplexity"] = perplexity(logs["eval_loss"])
            if not self.evaluation.empty:
                logs.update(self.evaluation.results())
        elif "loss" in logs and self._batch_accuracies["train"]:
            logs[self.accuracy_key] = torch.stack(self._batch_accuracies["train"]).mean().item()
            self._batch_accuracies["train"].clear()
        super().log(logs, start_time)


class ReporterCallback(TrainerCallback):
    """Forwards progress, metrics and checkpoints to the reporter, and stops when it asks.

    Checkpoints are written by the trainer as `checkpoint-N` and renamed to `step-N` once
    complete, so a `step-N` directory is always whole and a crash mid-save leaves nothing
    that resume would pick up.
    """

    def __init__(self, reporter: Reporter, *, keep_checkpoints: int, cuda: bool, keep_best: str | None = None):
        self.reporter = reporter
        self.keep_checkpoints = keep_checkpoints
        self.cuda = cuda
        # The metric whose best checkpoint is kept from rotation (load_best_model_at_end), if any.
        self.keep_best = keep_best
        # The trainer's accumulator, whose classifier details each evaluation's event carries.
        self.evaluation: EvalAccumulator | None = None
        self.stopped = False
        self._window_start = time.perf_counter()
        self._window_tokens = 0
        self._window_rank_tokens = 0

    def _restart_window(self, state) -> None:
        self._window_start = time.perf_counter()
        self._window_tokens = state.num_input_tokens_seen
        self._window_rank_tokens = distributed.tokens_on_this_rank()

    def on_train_begin(self, args, state, control, **kwargs):
        self._restart_window(state)

    def on_step_end(self, args, state, control, **kwargs):
        self.reporter.progress(state.global_step, state.max_steps, state.epoch)
        # All ranks take the same decision at the same step (rank 0 reads the cancel flag).
        if state.global_step < state.max_steps and distributed.agree_to_stop(self.reporter.should_stop()):
            self.stopped = True
            control.should_training_stop = True
            control.should_save = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped:  # the step that stopped was saved already; leave at once
            control.should_save = control.should_evaluate = False
        elif (
            control.should_save
            and args.save_strategy == "epoch"
            and state.global_step < state.max_steps
            and not self.keep_best  # the best epoch must have its checkpoint
        ):
            every = math.ceil(state.num_train_epochs / MAX_EPOCH_CHECKPOINTS)
            control.should_save = round(state.epoch) % every == 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "eval_loss" in logs:
            metrics = {key: float(logs[key]) for key in EVAL_KEYS if key in logs}
            metrics.update(preference_metrics(logs, "eval_"))
            metrics.update(task_eval_metrics(logs))  # NER, QA and seq2seq (task_training.TaskTrainer)
            self.reporter.log({**metrics, "epoch": float(state.epoch or 0.0)}, state.global_step)
            self._report_classifier_evaluation(state.global_step, metrics)
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
        if distributed.in_group():  # every rank logs at the same steps: each takes part in the gather
            rank_tokens = distributed.tokens_on_this_rank() - self._window_rank_tokens
            mine = [rank_tokens / elapsed if elapsed > 0 else 0.0, metrics["peak_memory_mb"]]
            metrics.update(per_rank_metrics(distributed.gathered_from_ranks(mine)))
        self.reporter.log(metrics, state.global_step)
        self._restart_window(state)

    def _report_classifier_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """A classifier's evaluation as an event: its confusion matrix and per-class figures in the data."""
        details = self.evaluation.last_details if self.evaluation is not None else None
        if details is None or "eval_accuracy" not in metrics:
            return
        self.evaluation.last_details = None
        rows = sum(map(sum, details["confusion_matrix"]))
        self.reporter.event(
            f"{'Baseline (the base model)' if step == 0 else f'Evaluation at step {step}'}: accuracy "
            f"{metrics['eval_accuracy']:.1%}, macro F1 {metrics.get('eval_f1_macro', 0.0):.3f} on "
            f"{counted(rows, 'row')}",
            evaluation={"step": step, **details},
        )

    def on_evaluate(self, args, state, control, **kwargs):
        self._restart_window(state)  # evaluation time does not count against training throughput

    def on_save(self, args, state, control, **kwargs):
        distributed.barrier()  # every rank has written its part of the checkpoint
        if distributed.is_main_process():
            self._publish_checkpoint(args, state)
        distributed.barrier()  # no rank goes on before the checkpoint is whole under its final name
        self._restart_window(state)

    def _publish_checkpoint(self, args, state) -> None:
        written = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        final = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
        if final.exists():
            shutil.rmtree(final)
        # A crash after the rename resumes from here; the points logged up to here must
        # survive it, or the loss curve would have a hole that no rerun fills.
        self.reporter.flush()
        written.rename(final)
        best = self._best_step(state)
        for old in checkpoints(Path(args.output_dir))[: -self.keep_checkpoints]:
            if checkpoint_step(old) != best:
                shutil.rmtree(old)
        self.reporter.event(f"Saved checkpoint at step {state.global_step}", step=state.global_step)
        self.reporter.checkpoint(state.global_step, final)

    def _best_step(self, state) -> int | None:
        """The step of the best evaluation so far, whose checkpoint rotation keeps (load_best_model_at_end)."""
        if not self.keep_best:
            return None
        best = best_evaluation(state.log_history, self.keep_best)
        return best.step if best else None
