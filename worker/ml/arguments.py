"""The spec in the transformers Trainer's terms."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainingArguments

from app.contract.spec import Parallelism, TrainingSpec

from .errors import ConfigurationError
from .loading import DevicePlan


def training_arguments(
    spec: TrainingSpec,
    plan: DevicePlan,
    checkpoint_dir: Path,
    *,
    packed: bool,
    has_eval: bool,
    run_name: str | None = None,
) -> TrainingArguments:
    """The spec in the trainer's terms; a spec that asks for evaluation without eval data is refused."""
    return TrainingArguments(
        **training_argument_values(spec, plan, checkpoint_dir, packed=packed, has_eval=has_eval, run_name=run_name)
    )


def training_argument_values(
    spec: TrainingSpec,
    plan: DevicePlan,
    checkpoint_dir: Path,
    *,
    packed: bool,
    has_eval: bool,
    run_name: str | None = None,
) -> dict:
    """`training_arguments` as keyword arguments, for the configs of TRL's trainers (which extend them)."""
    if spec.early_stopping_patience and not has_eval:
        raise ConfigurationError("early stopping needs evaluation data: set eval_split or give a validation file")
    if spec.eval_steps and not has_eval:
        raise ConfigurationError("eval_steps needs evaluation data: set eval_split or give a validation file")
    if spec.load_best_model_at_end and not has_eval:
        raise ConfigurationError(
            "load_best_model_at_end needs evaluation data: set eval_split or give a validation file"
        )
    eval_strategy = ("steps" if spec.eval_steps else "epoch") if has_eval else "no"
    save_steps = spec.save_steps
    if spec.load_best_model_at_end and not save_steps:
        save_steps = spec.eval_steps  # a checkpoint at every evaluation, so that the best one has its own
    return dict(
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
        save_strategy="steps" if save_steps else "epoch",
        **({"save_steps": save_steps} if save_steps else {}),
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
        report_to="none",  # the trackers' callbacks are added guarded (trackers.py), not by name
        run_name=run_name,
        disable_tqdm=True,
        **distributed_arguments(spec, plan),
    )


def distributed_arguments(spec: TrainingSpec, plan: DevicePlan) -> dict:
    """How the Trainer splits a run of several processes: DDP, or FSDP2 through accelerate with
    the spec's FSDP settings (whole-model checkpoints, which resume and load as they are).
    `spec.parallelism` is resolved by then (`auto` is the launcher's to decide)."""
    if not spec.distributed:
        return {}
    backend = {"ddp_backend": "nccl" if plan.device == "cuda" else "gloo"}
    if spec.parallelism != Parallelism.fsdp:
        return {**backend, "ddp_find_unused_parameters": False}
    return {
        **backend,
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP" if spec.fsdp.auto_wrap == "decoder_layer" else "NO_WRAP",
            "cpu_offload": spec.fsdp.cpu_offload,
            "activation_checkpointing": spec.fsdp.activation_checkpointing,
            "state_dict_type": "FULL_STATE_DICT",
        },
    }
