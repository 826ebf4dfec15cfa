"""One training function for full, lora and qlora, for causal LMs and classifiers.

`prepare` loads the tokenizer, the data and the model; `train` runs them through the
transformers `Trainer` (the one TRL's SFTTrainer builds on) with callbacks that talk to
the reporter, name checkpoints `checkpoints/step-N`, and stop on request.

Not SFTTrainer itself: its assistant-only loss needs `{% generation %}` markers, which
it patches in for a list of known templates only; its packing collator needs a
flash-attention kernel to keep examples apart (see `data.BatchCollator`); and it does not
train classifiers. The data side is `data.py` (with TRL's best-fit packing); the loop is
the Trainer's.
"""

from __future__ import annotations

import gc
import json
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from app.contract.spec import TrainingSpec

from . import data
from .card import model_card
from .errors import ConfigurationError, DatasetError, OutOfMemoryError
from .loading import (
    CLASS_NAMES_FILE,
    DevicePlan,
    classifier_kwargs,
    load_model,
    load_tokenizer,
    parameter_counts,
    plan_device,
    read_class_names,
    resolve_model,
    write_class_names,
)
from .reporting import Reporter
from .result import COMPLETED, STOPPED, TrainResult

CHECKPOINT_PREFIX = "step-"


@dataclass
class Prepared:
    """Everything a training run needs, built from a spec and dataset files."""

    spec: TrainingSpec
    plan: DevicePlan
    tokenizer: Any
    model: Any
    task: str
    train_dataset: Any  # a datasets.Dataset whose rows the collator batches
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


def prepare(
    spec: TrainingSpec,
    *,
    train_file: Path,
    reporter: Reporter,
    eval_file: Path | None = None,
    models_dir: Path | None = None,
    dataset_name: str | None = None,
) -> Prepared:
    """Tokenizer, data (tokenized, split, packed) and model, with an event for each.
    `dataset_name` is what events call the training file (default: its file name)."""
    plan = plan_device(spec)
    source = resolve_model(spec.base_model, models_dir)
    tokenizer = load_tokenizer(source)

    rows = data.read_jsonl(Path(train_file))
    task = data.task_of(rows)
    class_names = data.class_names(rows) if task == data.CLASSIFICATION else None
    if class_names is not None and len(class_names) < 2:
        raise DatasetError("a classification dataset needs at least two different labels")
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
            f"Held out {len(eval_examples)} of {len(train_examples) + len(eval_examples)} examples for evaluation"
        )

    model = load_model(spec, plan, source, task=task, pad_token_id=tokenizer.pad_token_id, class_names=class_names)
    trainable, total = parameter_counts(model)
    reporter.event(
        f"Loaded model {spec.base_model} ({total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable) "
        f"for {spec.method.value} on {plan.describe()}",
        source=str(source),
        parameters=total,
        trainable_parameters=trainable,
    )

    pack = spec.packing and task == data.CAUSAL_LM
    train_dataset = _dataset(train_examples, pack=pack, max_length=spec.max_seq_length)
    eval_dataset = _dataset(eval_examples, pack=pack, max_length=spec.max_seq_length) if eval_examples else None
    if pack:
        reporter.event(
            f"Packed {len(train_examples)} examples into {len(train_dataset)} sequences of up to "
            f"{spec.max_seq_length} tokens"
        )
    return Prepared(
        spec=spec,
        plan=plan,
        tokenizer=tokenizer,
        model=model,
        task=task,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        collator=data.BatchCollator(pad_token_id=tokenizer.pad_token_id),
        train_examples=train_examples,
        eval_examples=eval_examples,
        truncated_rows=truncated_rows,
        class_names=class_names,
    )


def _report_tokenized(reporter: Reporter, name: str, examples: data.Examples, max_length: int) -> None:
    formats = ", ".join(f"{count} {fmt}" for fmt, count in examples.formats.items())
    reporter.event(
        f"Read {examples.rows} rows from {name} ({formats}): {len(examples)} examples, {examples.tokens} tokens",
        rows=examples.rows,
        examples=len(examples),
        tokens=examples.tokens,
    )
    if examples.truncated:
        reporter.event(
            f"Truncated {examples.truncated} rows longer than {max_length} tokens",
            level="warning",
            truncated_rows=examples.truncated,
        )
    if examples.dropped:
        reporter.event(
            f"Skipped {examples.dropped} rows with nothing to learn from (no assistant reply within "
            f"{max_length} tokens)",
            level="warning",
            skipped_rows=examples.dropped,
        )


def _dataset(examples: data.Examples, *, pack: bool, max_length: int):
    """Rows for the trainer: packed sequences, or single examples with their length for grouping."""
    dataset = examples.to_dataset()
    if pack:
        dataset = data.pack(dataset, max_length)
    else:
        dataset = dataset.add_column("length", [len(ids) for ids in examples.input_ids])
    return dataset.with_format("numpy")


class _Trainer(Trainer):
    """Counts the real (non-pad) tokens the collator reports into `state.num_input_tokens_seen`,
    which checkpoints carry across a resume."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        real_tokens = inputs.pop(data.REAL_TOKENS_KEY)
        if model.training:
            self.state.num_input_tokens_seen += real_tokens
        return super().compute_loss(model, inputs, *args, **kwargs)


class _ReporterCallback(TrainerCallback):
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
        self.reporter.progress(state.global_step, state.max_steps)
        if state.global_step < state.max_steps and self.reporter.should_stop():
            self.stopped = True
            control.should_training_stop = True
            control.should_save = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped:  # the step that stopped was saved already; leave at once
            control.should_save = control.should_evaluate = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "eval_loss" in logs:
            self.reporter.log({"eval_loss": logs["eval_loss"], "epoch": state.epoch}, state.global_step)
            return
        if "loss" not in logs:
            return  # the end-of-training summary
        elapsed = time.perf_counter() - self._window_start
        tokens = state.num_input_tokens_seen - self._window_tokens
        metrics = {key: float(logs[key]) for key in ("loss", "learning_rate", "grad_norm") if key in logs}
        metrics.update(
            epoch=float(state.epoch),
            tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
            tokens_seen=float(state.num_input_tokens_seen),
            peak_memory_mb=_peak_memory_mb(self.cuda),
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


def _peak_memory_mb(cuda: bool) -> float:
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def training_arguments(spec: TrainingSpec, plan: DevicePlan, checkpoint_dir: Path, *, packed: bool, has_eval: bool):
    """The spec in the trainer's terms."""
    if spec.early_stopping_patience and not has_eval:
        raise ConfigurationError("early stopping needs evaluation data: set eval_split or give a validation file")
    if spec.eval_steps and not has_eval:
        raise ConfigurationError("eval_steps needs evaluation data: set eval_split or give a validation file")
    eval_strategy = ("steps" if spec.eval_steps else "epoch") if has_eval else "no"
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1,
        learning_rate=spec.effective_learning_rate,
        lr_scheduler_type=spec.lr_scheduler,
        warmup_steps=spec.warmup_ratio,  # a float below 1 is a fraction of the steps
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        logging_strategy="steps",
        logging_steps=spec.logging_steps,
        logging_first_step=True,
        eval_strategy=eval_strategy,
        eval_steps=spec.eval_steps,
        save_strategy="steps" if spec.save_steps else "epoch",
        **({"save_steps": spec.save_steps} if spec.save_steps else {}),
        metric_for_best_model="eval_loss" if spec.early_stopping_patience else None,
        greater_is_better=False,
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        use_cpu=plan.device == "cpu",
        activation_checkpointing=spec.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        train_sampling_strategy="random" if packed else "group_by_length",
        label_names=["labels"],  # a PeftModel's forward does not name them
        remove_unused_columns=False,
        dataloader_pin_memory=plan.device == "cuda",
        report_to="none",
        disable_tqdm=True,
    )


def build_trainer(prepared: Prepared, checkpoint_dir: Path, reporter: Reporter) -> tuple[Trainer, _ReporterCallback]:
    spec = prepared.spec
    args = training_arguments(
        spec,
        prepared.plan,
        checkpoint_dir,
        packed="seq_lengths" in prepared.train_dataset.column_names,
        has_eval=prepared.eval_dataset is not None,
    )
    callback = _ReporterCallback(reporter, keep_checkpoints=spec.keep_checkpoints, cuda=prepared.plan.device == "cuda")
    callbacks: list[TrainerCallback] = [callback]
    if spec.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=spec.early_stopping_patience))
    trainer = _Trainer(
        model=prepared.model,
        args=args,
        train_dataset=prepared.train_dataset,
        eval_dataset=prepared.eval_dataset,
        data_collator=prepared.collator,
        processing_class=prepared.tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer, callback


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
) -> TrainResult:
    import torch

    output_dir = Path(output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    if not resume:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    existing = checkpoints(checkpoint_dir)
    if reporter.should_stop():
        return TrainResult(
            status=STOPPED,
            step=int(existing[-1].name[len(CHECKPOINT_PREFIX) :]) if existing else 0,
            total_steps=0,
            output_dir=output_dir,
            checkpoint_dir=existing[-1] if existing else None,
        )

    dataset_name = dataset_name or Path(train_file).name
    prepared = prepare(
        spec,
        train_file=train_file,
        reporter=reporter,
        eval_file=eval_file,
        models_dir=models_dir,
        dataset_name=dataset_name,
    )
    trainer, callback = build_trainer(prepared, checkpoint_dir, reporter)
    if prepared.plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        if existing and _finished(existing[-1]):
            # The run ended at this checkpoint (a job delivered again after it finished). The
            # trainer, resumed there, would run one step past max_steps when the end falls
            # mid-epoch, so take the checkpoint as it is, with the trainer's own loader.
            reporter.event(f"Training already reached its last step in {existing[-1].name}; finishing from there")
            trainer._load_from_checkpoint(str(existing[-1]))
            trainer.state = TrainerState.load_from_json(str(existing[-1] / TRAINER_STATE_NAME))
        else:
            if existing:
                reporter.event(f"Resuming from the checkpoint at step {existing[-1].name[len(CHECKPOINT_PREFIX) :]}")
            trainer.train(resume_from_checkpoint=str(existing[-1]) if existing else None)
        state = trainer.state
        evaluated_last = any("eval_loss" in entry and entry["step"] == state.global_step for entry in state.log_history)
        if prepared.eval_dataset is not None and not callback.stopped and not evaluated_last:
            trainer.evaluate()
    except torch.OutOfMemoryError as error:
        raise _out_of_memory(spec, prepared.plan) from error
    except MemoryError as error:
        raise _out_of_memory(spec, prepared.plan) from error

    state = trainer.state
    metrics = final_metrics(state)
    result = TrainResult(
        status=STOPPED if callback.stopped else COMPLETED,
        step=state.global_step,
        total_steps=state.max_steps,
        metrics=metrics,
        trained_tokens=int(state.num_input_tokens_seen),
        truncated_rows=prepared.truncated_rows,
        output_dir=output_dir,
        checkpoint_dir=(checkpoints(checkpoint_dir) or [None])[-1],
    )
    if callback.stopped:
        reporter.event(f"Stopped at step {state.global_step} as asked; the checkpoint there can resume the run")
        return result
    if spec.early_stopping_patience and state.global_step < state.max_steps:
        reporter.event(
            f"Stopped early at step {state.global_step}: eval loss did not improve for "
            f"{spec.early_stopping_patience} evaluations"
        )

    result.final_dir = save_final(trainer, prepared, output_dir / "final", dataset_name, metrics)
    reporter.event("Saved the adapter (PEFT format)" if spec.uses_adapter else "Saved the model weights")
    if spec.merge_adapter:
        del trainer, prepared
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        result.merged_dir = merge_adapter(
            spec.base_model, result.final_dir, output_dir / "merged", models_dir=models_dir
        )
        reporter.event("Saved the merged model")
    return result


def _finished(checkpoint: Path) -> bool:
    state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    return state["global_step"] >= state["max_steps"]


def final_metrics(state) -> dict[str, float]:
    """The last logged training loss (with its learning rate and grad norm), the last eval loss and
    the epoch, from the trainer's log history, which checkpoints carry across a resume."""
    history = state.log_history
    last_train = next((entry for entry in reversed(history) if "loss" in entry), {})
    last_eval = next((entry for entry in reversed(history) if "eval_loss" in entry), {})
    metrics = {key: float(last_train[key]) for key in ("loss", "learning_rate", "grad_norm") if key in last_train}
    if last_eval:
        metrics["eval_loss"] = float(last_eval["eval_loss"])
    metrics["epoch"] = float(state.epoch or 0.0)
    return metrics


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


def _replace_dir(staging: Path, target: Path) -> Path:
    """Move a fully written `staging` directory to `target`, replacing what was there."""
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def save_final(trainer: Trainer, prepared: Prepared, final_dir: Path, dataset_name: str, metrics) -> Path:
    staging = final_dir.with_name(final_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))
    prepared.tokenizer.save_pretrained(staging)
    if prepared.class_names:
        write_class_names(staging, prepared.class_names)
    (staging / "README.md").write_text(
        model_card(
            prepared.spec,
            dataset_name=dataset_name,
            data_summary=prepared.data_summary(),
            metrics=metrics,
            class_names=prepared.class_names,
        )
    )
    return _replace_dir(staging, final_dir)


def merge_adapter(
    base_model: str,
    adapter_dir: Path,
    output_dir: Path,
    *,
    models_dir: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Path:
    """Base model + PEFT adapter → one model directory (with the adapter's tokenizer and model card).

    The base is loaded unquantized in its own dtype (a qlora adapter merges into the
    full-precision weights), on the GPU when there is one. `on_progress` hears what it is
    doing. The result is written aside and moved into place whole, so two merges of the same
    adapter at once cannot mix their files.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    say = on_progress or (lambda _message: None)
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    kwargs: dict = {"dtype": "auto", "device_map": {"": 0} if torch.cuda.is_available() else None}
    class_names = read_class_names(adapter_dir)
    if class_names:
        auto_class = AutoModelForSequenceClassification
        kwargs.update(classifier_kwargs(class_names, tokenizer.pad_token_id))
    else:
        auto_class = AutoModelForCausalLM
    say(f"Loading the base model {base_model}")
    base = auto_class.from_pretrained(resolve_model(base_model, models_dir), **kwargs)
    say("Merging the adapter into the base weights")
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    say("Saving the merged model")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.partial-"))
    try:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name in ("README.md", CLASS_NAMES_FILE):
            if (adapter_dir / name).exists():
                shutil.copyfile(adapter_dir / name, staging / name)
        return _replace_dir(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
