"""The training spec: what a job asks for; and the sampling settings of a chat answer.

This is the one module the web app and the training library share. The app validates a
submission against it; the worker receives exactly the stored JSON and re-validates it
with the same model. It must stay free of ML imports (torch, transformers, ...) and of
the database, so that both sides can import it cheaply.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Method(str, Enum):
    full = "full"
    lora = "lora"
    qlora = "qlora"


# Default learning rates per method: adapters tolerate (and need) much larger steps than
# full fine-tuning. Chosen when the spec leaves `learning_rate` unset ("auto").
DEFAULT_LEARNING_RATE = {Method.full: 2e-5, Method.lora: 2e-4, Method.qlora: 2e-4}

_MODEL_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,199}$")


class Packing(str, Enum):
    """How a job batches its examples. `auto` packs only where the attention kernel keeps packed
    examples apart without a dense mask (flash-attention's variable-length kernel): elsewhere
    length-grouped batches with dynamic padding are the faster of the two (bench/train_throughput.py)."""

    auto = "auto"
    on = "on"
    off = "off"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraSettings(_Strict):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank: size of the low-rank update.")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA alpha: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, le=0.9, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters; 'all-linear' targets every linear layer."
    )
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): slower, sometimes better.")

    @field_validator("target_modules")
    @classmethod
    def _modules_are_names(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one module name, or 'all-linear'")
            for name in value:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{0,99}", name):
                    raise ValueError(f"{name!r} is not a module name")
        return value


class QuantizationSettings(_Strict):
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen base weights.")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Dtype the 4-bit weights are dequantized to for matmuls; auto follows the training precision.",
    )
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit/param).")


class TrainingSpec(_Strict):
    """Hyperparameters and base model of one fine-tuning job. Every field has a default."""

    base_model: str = Field(
        ..., description="A model in the models directory, a local path the workers can read, or a hub id."
    )
    method: Method = Field(
        Method.lora, description="full: train every weight; lora: adapters; qlora: adapters on a 4-bit base."
    )

    epochs: float = Field(
        3.0, gt=0, le=100, description="Passes over the training data (ignored when max_steps is set)."
    )
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Stop after this many optimizer steps.")
    learning_rate: float | None = Field(
        None, gt=0, le=1.0, description="Peak learning rate; empty picks 2e-4 for LoRA/QLoRA, 2e-5 for full."
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="How the learning rate decays after warmup."
    )
    warmup_ratio: float = Field(0.03, ge=0, le=0.5, description="Fraction of the steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, le=1000, description="Gradients are clipped to this norm.")

    batch_size: int = Field(8, ge=1, le=4096, description="Sequences per device per micro-batch.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(
        1024,
        ge=16,
        le=262_144,
        description="Longer conversations are truncated (and counted); text rows are cut into pieces of this length.",
    )
    packing: Packing = Field(
        Packing.auto,
        description="auto: pack rows where the attention kernel keeps them apart for free (flash-attention), "
        "else batch rows of similar length; on: always pack; off: never.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations: less memory, ~30% slower.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU."
    )
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for data order, initialisation and dropout.")
    train_on_prompt: bool = Field(
        False, description="Also compute the loss on prompt / user tokens (default: assistant tokens only)."
    )

    eval_split: float = Field(
        0.0, ge=0, le=0.5, description="Held-out fraction for evaluation when no validation dataset is given."
    )
    eval_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Evaluate every N steps (default: at each epoch end)."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, le=1000, description="Stop when eval loss has not improved for this many evaluations."
    )
    save_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Checkpoint every N steps (default: at each epoch end)."
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=1000, description="Checkpoints kept on the worker's disk; older ones are deleted as new ones land."
    )
    logging_steps: int = Field(5, ge=1, le=100_000, description="Report metrics every N optimizer steps.")

    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: QuantizationSettings = Field(default_factory=QuantizationSettings)
    merge_adapter: bool = Field(False, description="Also save the base model with the adapter merged in.")

    @field_validator("packing", mode="before")
    @classmethod
    def _packing_as_a_switch(cls, value):
        # Specs from before `auto` said true or false; they keep meaning what they meant.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("base_model")
    @classmethod
    def _model_reference(cls, value: str) -> str:
        value = value.strip()
        if not _MODEL_REF.fullmatch(value) or ".." in value.split("/") or "//" in value:
            raise ValueError(
                "must be a model name (letters, digits, '.', '_', '-', '/'), e.g. 'tiny-llama' or 'meta-llama/Llama-3.2-1B'"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSpec:
        if self.method == Method.full and self.merge_adapter:
            raise ValueError("merge_adapter only applies to lora and qlora: full fine-tuning has no adapter")
        return self

    @property
    def effective_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATE[self.method]

    @property
    def uses_adapter(self) -> bool:
        return self.method in (Method.lora, Method.qlora)


class Sampling(_Strict):
    """How a chat answer is sampled (OpenAI's parameters, OpenAI's ranges). temperature 0 is
    greedy decoding."""

    max_tokens: int = Field(512, ge=1, le=32_768, description="Most tokens in the answer.")
    temperature: float = Field(1.0, ge=0, le=2, description="0: always the likeliest token; higher: more varied.")
    top_p: float = Field(1.0, gt=0, le=1, description="Sample from the smallest set of tokens this likely.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="The same seed and settings give the same answer.")
    stop: list[str] = Field(default_factory=list, description="The answer ends before any of these (up to 4).")

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: list[str]) -> list[str]:
        if len(value) > 4 or any(not stop or len(stop) > 200 for stop in value):
            raise ValueError("give up to 4 stop strings of 1-200 characters")
        return value


def field_help() -> dict[str, dict]:
    """Defaults and one-line help for every field, for forms and docs (nested ones dotted)."""
    out: dict[str, dict] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
                continue
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            if isinstance(default, Enum):
                default = default.value
            out[prefix + name] = {"default": default, "help": info.description or "", "required": info.is_required()}

    walk(TrainingSpec, "")
    return out
