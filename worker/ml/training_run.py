"""One training function for full, lora and qlora, for causal LMs and classifiers.

`prepare` loads the tokenizer, the data and the model; `train` runs them through the
transformers `Trainer` (the one TRL's SFTTrainer builds on) with the callbacks of
`callbacks.py`, which talk to the reporter, name checkpoints `checkpoints/step-N`, and stop
on request.

Not SFTTrainer itself: its assistant-only loss needs `{% generation %}` markers, which
it patches in for a list of known templates only; its packing collator needs a
flash-attention kernel to keep examples apart (see `data.BatchCollator`); and it does not
train classifiers. The data side is `data.py` (with TRL's best-fit packing); the loop is
the Trainer's.
"""

from __future__ import annotations

import errno
import gc
import json
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from app.contract.spec import TrainingSpec

from . import data, distributed, preference, task_training
from .arguments import training_arguments
from .callbacks import EVAL_KEYS, CountingTrainer, ReporterCallback, checkpoint_step, checkpoints
from .errors import ConfigurationError, DatasetError, DiskFullError, OutOfMemoryError
from .evaluation import TASK_METRICS, LearningCheck, best_evaluation
from .loading import (
    DevicePlan,
    load_model,
    load_tokenizer,
    parameter_counts,
    plan_device,
    read_class_names,
    resolve_model,
)
from .preference_samples import preference_samples_callbacks
from .reporting import Reporter, counted
from .result import COMPLETED, STOPPED, TrainResult
from .samples import samples_callbacks
from .saving import merge_adapter, save_final
from .task_metrics import task_eval_metrics
from .trackers import TrackerSettings, experiment_trackers


@dataclass
class Prepared:
    """Everything a training run needs, built from a spec and dataset files."""

    spec: TrainingSpec
    plan: DevicePlan
    tokenizer: Any
    model: Any
    task: data.Task
    train_dataset: Any  # a datasets.Dataset whose rows the collator batches
    batching: data.Batching
    eval_dataset: Any | None
    collator: data.BatchCollator
    train_examples: data.Examples
    eval_examples: data.Examples | None
    truncated_rows: int
    class_names: list[str] | None

    def data_summary(self) -> dict[str, object]:
        summary: dict[str, object] = {
            "format": ", ".join(f"{name} ({count} rows)" for name, count in self.train_examples.formats.items()),
            "training_examples": len(self.train_examples),
            "training_tokens": self.train_examples.tokens,
            "truncated_rows": self.truncated_rows,
        }
        if self.eval_examples is not None:
            summary["evaluation_examples"] = len(self.eval_examples)
        return summary


@dataclass
class PreparedPreference:
    """Everything a preference run (DPO, ORPO, KTO) needs: TRL's trainer tokenizes the rows itself."""

    spec: TrainingSpec
    plan: DevicePlan
    tokenizer: Any
    model: Any
    train: preference.PreferenceData
    evaluation: preference.PreferenceData | None
    truncated_rows: int = 0
    class_names: None = None

    def data_summary(self) -> dict[str, object]:
        summary: dict[str, object] = {
            "format": ", ".join(f"{name} ({count} rows)" for name, count in self.train.format_counts.items()),
            "objective": self.spec.objective.value,
            "training_examples": len(self.train.rows),
        }
        if self.evaluation is not None:
            summary["evaluation_examples"] = len(self.evaluation.rows)
        return summary


def prepare(
    spec: TrainingSpec,
    *,
    train_file: Path,
    reporter: Reporter,
    eval_file: Path | None = None,
    models_dir: Path | None = None,
    dataset_name: str | None = None,
    start_from: Path | None = None,
    start_from_name: str | None = None,
) -> Prepared | PreparedPreference | task_training.PreparedTask:
    """Tokenizer, data (tokenized, split, packed) and model, with an event for each.
    `dataset_name` is what events call the training file (default: its file name).
    `start_from`: a folder of trained weights (an adapter in PEFT format, or a full model's
    safetensors) put into the model before training, to keep training them; events call it
    `start_from_name`."""
    plan = plan_device(spec)
    source = resolve_model(spec.base_model, models_dir)
    tokenizer = load_tokenizer(source)
    if spec.is_preference:
        train, evaluation = preference.read_data(
            spec, Path(train_file), eval_file and Path(eval_file), reporter, dataset_name or Path(train_file).name
        )
        model = _load(spec, plan, source, tokenizer, reporter, data.Task.causal_lm, None, start_from, start_from_name)
        return PreparedPreference(spec, plan, tokenizer, model, train, evaluation)

    rows = data.read_jsonl(Path(train_file))
    task = task_training.task_for(rows, source, spec.base_model)
    if task in task_training.HEAD_TASKS:
        return task_training.prepare(
            spec,
            plan=plan,
            tokenizer=tokenizer,
            task=task,
            rows=rows,
            eval_rows=data.read_jsonl(Path(eval_file)) if eval_file is not None else None,
            reporter=reporter,
            dataset_name=dataset_name or Path(train_file).name,
            load=lambda task, tags: _load(
                spec, plan, source, tokenizer, reporter, task, tags, start_from, start_from_name
            ),
        )
    class_names = data.class_names(rows) if task == data.Task.classification else None
    if class_names is not None and len(class_names) < 2:
        raise DatasetError("a classification dataset needs at least two different labels")
    spec = _task_defaults(spec, task, reporter)
    tokenize = data.Tokenization(
        tokenizer, max_length=spec.max_seq_length, train_on_prompt=spec.train_on_prompt, class_names=class_names or ()
    )
    train_examples = tokenize(rows)
    _report_tokenized(reporter, dataset_name or Path(train_file).name, train_examples, spec.max_seq_length)
    if not train_examples:
        raise DatasetError(
            f"none of the {train_examples.rows} rows has a token to learn from within {spec.max_seq_length} tokens: "
            "each needs an assistant reply (or completion) that fits"
        )
    truncated_rows = train_examples.truncated
    eval_examples = None
    if eval_file is not None:
        eval_examples = tokenize(data.read_jsonl(Path(eval_file)))
        _report_tokenized(reporter, Path(eval_file).name, eval_examples, spec.max_seq_length)
        truncated_rows += eval_examples.truncated
        if not eval_examples:
            raise DatasetError(f"none of the rows of {Path(eval_file).name} has a token to evaluate on")
    elif spec.eval_split > 0:
        train_examples, eval_examples = data.split_for_eval(train_examples, spec.eval_split, spec.seed)
        reporter.event(
            f"Held out {len(eval_examples)} of {counted(len(train_examples) + len(eval_examples), 'example')} "
            "for evaluation"
        )

    model = _load(spec, plan, source, tokenizer, reporter, task, class_names, start_from, start_from_name)

    batching = data.choose_batching(
        spec.packing, task=task, attention=plan.attention, varlen_attention=plan.varlen_attention
    )
    reporter.event(
        f"Batching: {batching.describe()}",
        packing=spec.packing.value,
        packed=batching.packed,
        padding_free=batching.padding_free,
    )
    pack = batching.packed
    train_dataset = _dataset(train_examples, pack=pack, max_length=spec.max_seq_length)
    eval_dataset = _dataset(eval_examples, pack=pack, max_length=spec.max_seq_length) if eval_examples else None
    batched_tokens = sum(len(ids) for ids in train_dataset["input_ids"])
    if pack:
        reporter.event(
            f"Packed {counted(len(train_examples), 'example')} into {counted(len(train_dataset), 'sequence')} of up "
            f"to {spec.max_seq_length} tokens: {train_examples.tokens} tokens in, {batched_tokens} trained "
            "(text rows are laid end to end and cut into chunks, never truncated)",
            tokens_before=train_examples.tokens,
            tokens_after=batched_tokens,
            sequences=len(train_dataset),
        )
    elif len(train_dataset) > len(train_examples):
        reporter.event(
            f"Cut the text rows longer than {spec.max_seq_length} tokens into pieces: "
            f"{counted(len(train_examples), 'example')} became {len(train_dataset)} ({batched_tokens} tokens)",
            tokens_before=train_examples.tokens,
            tokens_after=batched_tokens,
            sequences=len(train_dataset),
        )
    return Prepared(
        spec=spec,
        plan=plan,
        tokenizer=tokenizer,
        model=model,
        task=task,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        batching=batching,
        collator=data.BatchCollator(pad_token_id=tokenizer.pad_token_id, padding_free=batching.padding_free),
        train_examples=train_examples,
        eval_examples=eval_examples,
        truncated_rows=truncated_rows,
        class_names=class_names,
    )


def _task_defaults(spec: TrainingSpec, task: data.Task, reporter: Reporter) -> TrainingSpec:
    """The spec with the task's defaults where the user left them unset (said in an event), and
    its best-model metric checked against the task."""
    if spec.metric_for_best_model not in TASK_METRICS[task]:
        raise ConfigurationError(
            f"metric_for_best_model {spec.metric_for_best_model} is not measured for a "
            f"{'classifier' if task == data.Task.classification else 'language model'}: use one of "
            f"{', '.join(TASK_METRICS[task])}"
        )
    if task != data.Task.classification:
        return spec
    chosen = spec.for_classifier()
    if chosen.learning_rate != spec.learning_rate:
        reporter.event(
            f"Classifier defaults: learning rate {chosen.learning_rate:g} (the head is new and trained in full"
            f"{' beside the adapters' if spec.uses_adapter else ''}; set learning_rate to choose another)",
            learning_rate=chosen.learning_rate,
        )
    return chosen


def _load(
    spec: TrainingSpec,
    plan: DevicePlan,
    source: Path,
    tokenizer,
    reporter: Reporter,
    task: data.Task,
    class_names: list[str] | None,
    start_from: Path | None,
    start_from_name: str | None,
):
    """The model to train, with the weights of `start_from` put in when given."""
    model = load_model(spec, plan, source, task=task, pad_token_id=tokenizer.pad_token_id, class_names=class_names)
    trainable, total = parameter_counts(model)
    reporter.event(
        f"Loaded model {spec.base_model} ({total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable) "
        f"for {spec.method.value}{'' if spec.objective.value == 'sft' else ' ' + spec.objective.value.upper()} "
        f"on {plan.describe()}",
        source=str(source),
        parameters=total,
        trainable_parameters=trainable,
    )
    if start_from is not None:
        _start_from(model, Path(start_from), start_from_name or Path(start_from).name, reporter, class_names)
    return model


def _start_from(model, weights: Path, name: str, reporter: Reporter, class_names: list[str] | None) -> None:
    """Put the trained weights in `weights` into `model`; a ConfigurationError when they do not
    fit it, or when a classifier's labels are not the ones those weights were trained on."""
    trained_on = read_class_names(weights)
    if trained_on != class_names:
        had = f"the labels {', '.join(trained_on)}" if trained_on else "no labels (a language model)"
        has = f"the labels {', '.join(class_names)}" if class_names else "no labels"
        raise ConfigurationError(f"{name} was trained with {had}, and this dataset has {has}: they must be the same")
    try:
        load_checkpoint_weights(model, weights)
    except (RuntimeError, ValueError, KeyError, OSError) as error:
        raise ConfigurationError(
            f"The weights of {name} do not fit this job's model (same base model, method and adapter settings "
            f"are needed): {error}"
        ) from error
    reporter.event(f"Starting from the trained weights of {name}", start_from=name)


def _report_tokenized(reporter: Reporter, name: str, examples: data.Examples, max_length: int) -> None:
    formats = ", ".join(f"{count} {fmt}" for fmt, count in examples.formats.items())
    reporter.event(
        f"Read {counted(examples.rows, 'row')} from {name} ({formats}): {counted(len(examples), 'example')}, "
        f"{counted(examples.tokens, 'token')}",
        rows=examples.rows,
        examples=len(examples),
        tokens=examples.tokens,
    )
    if examples.truncated:
        reporter.event(
            f"Truncated {counted(examples.truncated, 'row')} longer than {max_length} tokens "
            f"({examples.truncated_tokens} of {examples.tokens + examples.truncated_tokens} tokens cut off)",
            level="warning",
            truncated_rows=examples.truncated,
            truncated_tokens=examples.truncated_tokens,
        )
    if examples.dropped:
        reporter.event(
            f"Skipped {counted(examples.dropped, 'row')} with nothing to learn from (no assistant reply within "
            f"{max_length} tokens)",
            level="warning",
            skipped_rows=examples.dropped,
        )


def _dataset(examples: data.Examples, *, pack: bool, max_length: int):
    """Rows for the trainer: packed sequences, or single examples with their length for grouping."""
    if pack:
        dataset = data.pack(examples, max_length)
    else:
        examples = data.split_documents(examples, max_length)
        dataset = examples.to_dataset().add_column("length", [len(ids) for ids in examples.input_ids])
    return dataset.with_format("numpy")


def build_trainer(
    prepared: Prepared | PreparedPreference | task_training.PreparedTask,
    checkpoint_dir: Path,
    reporter: Reporter,
    *,
    trackers: list[TrainerCallback] = (),
    run_name: str | None = None,
) -> tuple[Trainer, ReporterCallback]:
    """The trainer for a prepared run, and the callback that tells whether it stopped on request.
    `trackers` are the experiment trackers' callbacks (see `trackers.experiment_trackers`)."""
    spec = prepared.spec
    if isinstance(prepared, PreparedPreference):
        callback, callbacks = _callbacks(spec, prepared.plan, reporter, trackers)
        evaluation_rows = prepared.evaluation.rows if prepared.evaluation is not None else None
        callbacks += preference_samples_callbacks(spec, prepared.tokenizer, evaluation_rows, reporter)
        trainer = preference.build_trainer(
            spec,
            plan=prepared.plan,
            model=prepared.model,
            tokenizer=prepared.tokenizer,
            train=prepared.train,
            evaluation=prepared.evaluation,
            checkpoint_dir=checkpoint_dir,
            reporter=reporter,
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)
        return trainer, callback
    if isinstance(prepared, task_training.PreparedTask):
        args = training_arguments(
            spec,
            prepared.plan,
            checkpoint_dir,
            packed=False,
            has_eval=prepared.evaluation is not None,
            run_name=run_name,
        )
        callback, callbacks = _callbacks(spec, prepared.plan, reporter, trackers)
        trainer = task_training.build_trainer(prepared, args, callbacks)
        trainer.remove_callback(PrinterCallback)
        return trainer, callback
    args = training_arguments(
        spec,
        prepared.plan,
        checkpoint_dir,
        packed="seq_lengths" in prepared.train_dataset.column_names,
        has_eval=prepared.eval_dataset is not None,
        run_name=run_name,
    )
    callback, callbacks = _callbacks(spec, prepared.plan, reporter, trackers, prepared)
    callbacks += samples_callbacks(
        spec, prepared.tokenizer, prepared.task, prepared.eval_examples, prepared.class_names, reporter
    )
    trainer = CountingTrainer(
        model=prepared.model,
        args=args,
        train_dataset=prepared.train_dataset,
        eval_dataset=prepared.eval_dataset,
        data_collator=prepared.collator,
        processing_class=prepared.tokenizer,
        callbacks=callbacks,
        task=prepared.task,
        class_names=prepared.class_names,
    )
    callback.evaluation = trainer.evaluation
    trainer.remove_callback(PrinterCallback)
    return trainer, callback


def _callbacks(
    spec: TrainingSpec,
    plan: DevicePlan,
    reporter: Reporter,
    trackers: list[TrainerCallback] = (),
    prepared: Prepared | None = None,
) -> tuple[ReporterCallback, list]:
    callback = ReporterCallback(
        reporter,
        keep_checkpoints=spec.keep_checkpoints,
        cuda=plan.device == "cuda",
        keep_best=spec.metric_for_best_model if spec.load_best_model_at_end else None,
    )
    callbacks: list[TrainerCallback] = [callback, *trackers]
    task = prepared.task if prepared is not None else data.Task.causal_lm
    classes = len(prepared.class_names) if prepared is not None and prepared.class_names else None
    callbacks.append(LearningCheck(reporter, share=spec.learning_check_at, task=task, num_classes=classes))
    if spec.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=spec.early_stopping_patience))
    return callback, callbacks


def train(
    spec: TrainingSpec,
    *,
    train_file: Path,
    output_dir: Path,
    reporter: Reporter,
    eval_file: Path | None = None,
    models_dir: Path | None = None,
    resume: bool = True,
    dataset_name: str | None = None,
    start_from: Path | None = None,
    start_from_name: str | None = None,
    trackers: TrackerSettings | None = None,
) -> TrainResult:
    """Train `spec` on `train_file`, from the latest checkpoint in `output_dir` when there is one.
    `start_from` (a trained adapter or model folder) continues an earlier run's weights: see `prepare`.
    The metrics also go to TensorBoard files in `output_dir/tracking` and to the spec's `integrations`,
    with the worker's `trackers` settings."""
    output_dir = Path(output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    if not resume:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    latest = (checkpoints(checkpoint_dir) or [None])[-1]
    if distributed.agree_to_stop(reporter.should_stop()):
        return _stopped_before_loading(output_dir, latest)

    dataset_name = dataset_name or Path(train_file).name
    prepared = prepare(
        spec,
        train_file=train_file,
        reporter=reporter,
        eval_file=eval_file,
        models_dir=models_dir,
        dataset_name=dataset_name,
        start_from=start_from,
        start_from_name=start_from_name,
    )
    with experiment_trackers(
        spec, trackers or TrackerSettings(), output_dir, reporter, resuming=latest is not None
    ) as tracking:
        trainer, callback = build_trainer(
            prepared, checkpoint_dir, reporter, trackers=tracking.callbacks, run_name=tracking.run_name
        )
        with _training_memory(spec, prepared.plan), _disk_space(checkpoint_dir):
            _train_from(trainer, latest, reporter)
            if trainer.eval_dataset is not None and not callback.stopped:
                _evaluate_at_the_end(trainer)
                best = _report_best(trainer, spec, reporter)
                if spec.load_best_model_at_end and best is not None:
                    _load_best(trainer, best, checkpoint_dir, reporter)

    result = _result(trainer, prepared, stopped=callback.stopped, output_dir=output_dir, checkpoint_dir=checkpoint_dir)
    if callback.stopped:
        reporter.event(f"Stopped at step {result.step} as asked; the checkpoint there can resume the run")
        return result
    if spec.early_stopping_patience and result.step < result.total_steps:
        reporter.event(
            f"Stopped early at step {result.step}: eval loss did not improve for "
            f"{spec.early_stopping_patience} evaluations"
        )

    preference.drop_reference_adapter(trainer.model)
    with _disk_space(checkpoint_dir):
        result.final_dir = save_final(trainer, prepared, output_dir / "final", dataset_name, result.metrics)
    reporter.event("Saved the adapter (PEFT format)" if spec.uses_adapter else "Saved the model weights")
    if spec.merge_adapter and distributed.is_main_process():
        del trainer, prepared  # the merge loads the base model again
        _release_memory()
        result.merged_dir = merge_adapter(
            spec.base_model, result.final_dir, output_dir / "merged", models_dir=models_dir
        )
        reporter.event("Saved the merged model")
    return result


def _stopped_before_loading(output_dir: Path, latest: Path | None) -> TrainResult:
    """A stop asked for before anything was loaded: the run stays where its latest checkpoint left it."""
    return TrainResult(
        status=STOPPED,
        step=checkpoint_step(latest) if latest else 0,
        total_steps=0,
        output_dir=output_dir,
        checkpoint_dir=latest,
    )


def _train_from(trainer: Trainer, latest: Path | None, reporter: Reporter) -> None:
    """Train from the start, or resume from the `latest` checkpoint, or take it as it is when the run ended there.
    A fresh start with evaluation data first evaluates the starting weights: the step-0 baseline."""
    if latest is not None and _is_last_step(latest):
        # A job delivered again after it finished. The trainer, resumed there, would run one
        # step past max_steps when the end falls mid-epoch.
        reporter.event(f"Training already reached its last step in {latest.name}; finishing from there")
        load_checkpoint_weights(trainer.model, latest)
        trainer.state = TrainerState.load_from_json(str(latest / TRAINER_STATE_NAME))
        return
    if latest is not None:
        reporter.event(f"Resuming from the checkpoint at step {checkpoint_step(latest)}")
    elif trainer.eval_dataset is not None:
        # The baseline: where the curves start from. LearningCheck keeps it in the log history.
        reporter.event("Evaluating the base model before training: the step-0 baseline of every eval curve")
        trainer.evaluate()
    trainer.train(resume_from_checkpoint=str(latest) if latest else None)


def _is_last_step(checkpoint: Path) -> bool:
    state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    return state["global_step"] >= state["max_steps"]


def load_checkpoint_weights(model, checkpoint: Path) -> None:
    """Put the weights a checkpoint holds into `model`: the adapter of a PeftModel, else every weight."""
    from peft import PeftModel, load_peft_weights, set_peft_model_state_dict
    from safetensors.torch import load_file

    if isinstance(model, PeftModel):
        weights = load_peft_weights(str(checkpoint), device="cpu")
        set_peft_model_state_dict(model, weights, adapter_name=model.active_adapter)
        return
    index = checkpoint / SAFE_WEIGHTS_INDEX_NAME
    shards = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [SAFE_WEIGHTS_NAME]
    )
    for shard in shards:
        # Not strict: tied weights (an output layer sharing the embeddings) are saved once.
        model.load_state_dict(load_file(checkpoint / shard), strict=False)


def _evaluate_at_the_end(trainer: Trainer) -> None:
    """Evaluate the final weights, unless the last step was evaluated already."""
    state = trainer.state
    if not any("eval_loss" in entry and entry["step"] == state.global_step for entry in state.log_history):
        trainer.evaluate()


def _report_best(trainer: Trainer, spec: TrainingSpec, reporter: Reporter):
    """The run's best evaluation by the spec's metric (after step 0), said in an event."""
    best = best_evaluation(trainer.state.log_history, spec.metric_for_best_model)
    if best is not None:
        reporter.event(
            f"Best evaluation: step {best.step} ({best.metric} {best.value:.4g})",
            best_step=best.step,
            best_metric=best.metric,
            best_value=best.value,
        )
    return best


def _load_best(trainer: Trainer, best, checkpoint_dir: Path, reporter: Reporter) -> None:
    """Put the best evaluation's checkpoint weights into the model, for the final artifact."""
    if best.step == trainer.state.global_step:
        reporter.event(f"The last step is the best one: its weights are the final ones (step {best.step})")
        return
    saved = {checkpoint_step(path): path for path in checkpoints(checkpoint_dir)}
    if best.step not in saved:
        reporter.event(
            f"The best evaluation's checkpoint (step {best.step}) was not kept; the final weights are the last step's",
            level="warning",
        )
        return
    load_checkpoint_weights(trainer.model, saved[best.step])
    reporter.event(
        f"Loaded the best checkpoint (step {best.step}, {best.metric} {best.value:.4g}) as the final weights",
        best_step=best.step,
    )


def _result(
    trainer: Trainer, prepared: Prepared, *, stopped: bool, output_dir: Path, checkpoint_dir: Path
) -> TrainResult:
    state = trainer.state
    return TrainResult(
        status=STOPPED if stopped else COMPLETED,
        step=state.global_step,
        total_steps=state.max_steps,
        metrics=final_metrics(state),
        trained_tokens=int(state.num_input_tokens_seen),
        truncated_rows=prepared.truncated_rows,
        output_dir=output_dir,
        checkpoint_dir=(checkpoints(checkpoint_dir) or [None])[-1],
    )


def final_metrics(state) -> dict[str, float]:
    """The last logged training loss (with its learning rate and grad norm), the last eval loss and
    the epoch, from the trainer's log history, which checkpoints carry across a resume."""
    history = state.log_history
    last_train = next((entry for entry in reversed(history) if "loss" in entry), {})
    last_eval = next((entry for entry in reversed(history) if "eval_loss" in entry), {})
    metrics = {key: float(last_train[key]) for key in ("loss", "learning_rate", "grad_norm") if key in last_train}
    for key in ("mean_token_accuracy", "accuracy"):
        if key in last_train:
            metrics[key] = float(last_train[key])
    for key in EVAL_KEYS:
        if key in last_eval:
            metrics[key] = float(last_eval[key])
    for metric in ("eval_loss", "eval_mean_token_accuracy", "eval_accuracy", "eval_f1_macro"):
        best = best_evaluation(history, metric)
        if best is not None:
            metrics[f"best_{metric}"] = best.value
            metrics[f"best_{metric}_step"] = float(best.step)
    metrics.update(task_eval_metrics(last_eval))
    metrics["epoch"] = float(state.epoch or 0.0)
    return metrics


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def _training_memory(spec: TrainingSpec, plan: DevicePlan) -> Iterator[None]:
    """Peak GPU memory counts from here; running out of memory becomes an OutOfMemoryError that says what to change."""
    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as error:
        raise _out_of_memory(spec, plan) from error


# What torch's zip writer says when a write comes up short: the disk is full, in its words.
_SHORT_WRITE_MESSAGES = ("unexpected pos", "PytorchStreamWriter failed", "No space left on device")


@contextmanager
def _disk_space(checkpoint_dir: Path) -> Iterator[None]:
    """A full disk becomes a DiskFullError that says where and how much is free, and the
    half-written checkpoint goes, so that the run resumes from its last whole one."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        short_write = getattr(error, "errno", None) == errno.ENOSPC or any(
            text in str(error) for text in _SHORT_WRITE_MESSAGES
        )
        if not short_write:
            raise
        for partial in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            shutil.rmtree(partial, ignore_errors=True)
        free = shutil.disk_usage(checkpoint_dir).free
        whole = checkpoints(checkpoint_dir)
        resume = (
            f"the run can resume from its checkpoint at step {checkpoint_step(whole[-1])}"
            if whole
            else ("no checkpoint was complete yet")
        )
        raise DiskFullError(
            f"Disk full on {socket.gethostname()}: {free} bytes free in {checkpoint_dir}; {resume} once space is freed"
        ) from error


def _out_of_memory(spec: TrainingSpec, plan: DevicePlan) -> OutOfMemoryError:
    where = "GPU" if plan.device == "cuda" else "main"
    advice = [
        "lower batch_size (raise gradient_accumulation_steps to keep the same effective batch)",
        "lower max_seq_length",
    ]
    if not spec.gradient_checkpointing:
        advice.append("turn on gradient_checkpointing")
    if spec.method.value != "qlora":
        advice.append("use qlora")
    return OutOfMemoryError(
        f"Ran out of {where} memory at batch_size {spec.batch_size} x {spec.max_seq_length} tokens. "
        f"Try: {'; '.join(advice)}."
    )
