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
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator


class Method(str, Enum):
    full = "full"
    lora = "lora"
    qlora = "qlora"


class Objective(str, Enum):
    """What training optimises. sft: imitate the answers; dpo, orpo, kto: prefer the chosen
    answers to the rejected ones (preference data)."""

    sft = "sft"
    dpo = "dpo"
    orpo = "orpo"
    kto = "kto"


# Default learning rates per method: adapters tolerate (and need) much larger steps than
# full fine-tuning. Chosen when the spec leaves `learning_rate` unset ("auto").
DEFAULT_LEARNING_RATE = {Method.full: 2e-5, Method.lora: 2e-4, Method.qlora: 2e-4}
# A classifier's head starts from random weights and is trained in full beside the adapters (or
# the whole model): it needs larger steps than an adapter on a language model to leave chance on
# a few hundred rows. Chosen when the spec leaves `learning_rate` unset and the data is text+label.
DEFAULT_CLASSIFIER_LEARNING_RATE = {Method.full: 5e-5, Method.lora: 1e-3, Method.qlora: 1e-3}
# Preference objectives move a model that already answers well: TRL's defaults (1e-6 for full
# fine-tuning), and the usual rate of LoRA DPO recipes for adapters.
DEFAULT_PREFERENCE_LEARNING_RATE = {Method.full: 1e-6, Method.lora: 5e-5, Method.qlora: 5e-5}
# DPO's losses (TRL's names): sigmoid is the paper's, ipo and hinge its best-known variants.
DPO_LOSS_TYPES = (
    "sigmoid",
    "ipo",
    "hinge",
    "robust",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
)

_MODEL_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,199}$")


class Packing(str, Enum):
    """How a job batches its examples. `auto` packs only where the attention kernel keeps packed
    examples apart without a dense mask (flash-attention's variable-length kernel): elsewhere
    length-grouped batches with dynamic padding are the faster of the two (bench/train_throughput.py)."""

    auto = "auto"
    on = "on"
    off = "off"


class Parallelism(str, Enum):
    """How a job of several devices splits its work. `ddp`: every device holds the whole model and
    trains on its share of each batch; `fsdp`: the weights, gradients and optimizer states are
    sharded across the devices (FSDP full-shard); `auto`: DDP when the model fits one device with
    the method, else FSDP (decided on the worker, which knows its devices)."""

    auto = "auto"
    ddp = "ddp"
    fsdp = "fsdp"


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


class FsdpSettings(_Strict):
    """The FSDP settings that matter; the defaults suit Llama-style models. Used when a job of
    several devices runs sharded (parallelism `fsdp`, or `auto` choosing it)."""

    auto_wrap: Literal["decoder_layer", "none"] = Field(
        "decoder_layer",
        description="decoder_layer: each decoder layer (the model's own no-split block) is its own shard unit; "
        "none: the whole model is one unit (gathered whole at every step: only for small models).",
    )
    cpu_offload: bool = Field(
        False,
        description="Keep the sharded weights and optimizer states in CPU memory between uses: slower, less GPU memory.",
    )
    activation_checkpointing: bool = Field(
        False,
        description="Recompute each wrapped layer's activations in the backward pass (FSDP's gradient checkpointing).",
    )


# W&B project and entity names: what its site allows, kept to what is safe in an environment variable.
_WANDB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


class WandbSettings(_Strict):
    """OpenAI's `wandb` integration object: where the run goes in Weights & Biases."""

    project: str = Field(..., description="W&B project the run is logged to.")
    name: str | None = Field(None, max_length=128, description="Display name of the run (default: the job's name).")
    entity: str | None = Field(None, description="W&B team or user that owns the project (default: the key's own).")
    tags: list[str] = Field(default_factory=list, description="Tags on the run (up to 20, no commas).")

    @field_validator("project", "entity")
    @classmethod
    def _wandb_name(cls, value: str | None) -> str | None:
        if value is not None and not _WANDB_NAME.fullmatch(value):
            raise ValueError("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or not value.isprintable()):
            raise ValueError("must be printable text")
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value):
        if value is None:  # OpenAI's clients may send null for no tags
            return []
        if isinstance(value, list) and len(value) > 20:
            raise ValueError("give up to 20 tags")
        for tag in value if isinstance(value, list) else []:
            if not isinstance(tag, str) or not 1 <= len(tag) <= 64 or "," in tag or not tag.isprintable():
                raise ValueError(f"{tag!r} is not a tag: 1-64 printable characters, no comma")
        return value


class MlflowSettings(_Strict):
    """Where the run goes in MLflow."""

    tracking_uri: str | None = Field(
        None,
        max_length=2000,
        description="http(s) URL of the MLflow tracking server (default: the workers' TUNELAB_MLFLOW_TRACKING_URI).",
    )
    experiment_name: str | None = Field(
        None, max_length=256, description="MLflow experiment the run goes into (default: MLflow's default one)."
    )

    @field_validator("tracking_uri")
    @classmethod
    def _http_uri(cls, value: str | None) -> str | None:
        """Only a server over http(s): a file path or database URI would have the worker write
        wherever the job's author says. Credentials stay in the workers' environment
        (MLFLOW_TRACKING_TOKEN, ...), never in a job's spec, which its whole team can read."""
        if value is None:
            return None
        value = value.strip()
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as error:
            raise ValueError(f"not a URL: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL of an MLflow tracking server")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials: give them to the workers (MLFLOW_TRACKING_TOKEN)")
        if not value.isprintable() or " " in value:
            raise ValueError("must not contain spaces or control characters")
        return value

    @field_validator("experiment_name")
    @classmethod
    def _printable_experiment(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or not value.isprintable()):
            raise ValueError("must be printable text")
        return value


class Integration(_Strict):
    """OpenAI's integration object, `{"type": "wandb", "wandb": {...}}`, and MLflow in the same
    shape. TensorBoard needs none: its event files are always among the job's artifacts."""

    type: Literal["wandb", "mlflow"] = Field(..., description="Which tracker: wandb or mlflow.")
    wandb: WandbSettings | None = None
    mlflow: MlflowSettings | None = None

    @model_validator(mode="after")
    def _settings_of_its_type(self) -> Integration:
        for kind in ("wandb", "mlflow"):
            given = getattr(self, kind) is not None
            if kind == self.type and not given:
                raise ValueError(f'a {kind} integration needs its settings: {{"type": "{kind}", "{kind}": {{...}}}}')
            if kind != self.type and given:
                raise ValueError(f"a {self.type} integration takes no {kind} settings")
        return self

    @model_serializer(mode="wrap")
    def _only_its_settings(self, handler) -> dict:
        data = handler(self)
        return {"type": data["type"], self.type: data[self.type]}


class PreferenceSettings(_Strict):
    """Settings of the preference objectives (DPO, ORPO, KTO); ignored when training supervised."""

    beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="DPO/KTO: how far from the reference model training may go (higher: closer); ORPO: the "
        "weight of the preference term.",
    )
    loss_type: Literal[DPO_LOSS_TYPES] = Field(  # type: ignore[valid-type]
        "sigmoid", description="DPO's loss: sigmoid (the paper's), ipo, hinge, and other TRL variants."
    )
    rpo_alpha: float | None = Field(
        None,
        ge=0,
        le=10,
        description="DPO: also learn the chosen answers (supervised loss with this weight, RPO); 1.0 is usual.",
    )
    reference_free: bool = Field(
        False,
        description="DPO: no reference model; prefer the chosen answers outright (saves the reference's memory "
        "and forward pass).",
    )
    desirable_weight: float | None = Field(
        None, gt=0, le=100, description="KTO: weight of the good answers; empty balances the labels' counts."
    )
    undesirable_weight: float | None = Field(
        None, gt=0, le=100, description="KTO: weight of the bad answers; empty balances the labels' counts."
    )


class TrainingSpec(_Strict):
    """Hyperparameters and base model of one fine-tuning job. Every field has a default."""

    base_model: str = Field(
        ..., description="A model in the models directory, a local path the workers can read, or a hub id."
    )
    method: Method = Field(
        Method.lora, description="full: train every weight; lora: adapters; qlora: adapters on a 4-bit base."
    )
    objective: Objective = Field(
        Objective.sft,
        description="sft: learn the answers; dpo / orpo: prefer chosen over rejected answers (pairs); "
        "kto: learn from answers marked good or bad.",
    )

    epochs: float = Field(
        3.0, gt=0, le=100, description="Passes over the training data (ignored when max_steps is set)."
    )
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Stop after this many optimizer steps.")
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="Peak learning rate; empty picks 2e-4 for LoRA/QLoRA, 2e-5 for full (classifiers: 1e-3, 5e-5).",
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
    load_best_model_at_end: bool = Field(
        False,
        description="Make the checkpoint of the best evaluation (by metric_for_best_model) the final weights; "
        "checkpoints are then saved at every evaluation.",
    )
    metric_for_best_model: Literal["eval_loss", "eval_accuracy", "eval_f1_macro", "eval_mean_token_accuracy"] = Field(
        "eval_loss",
        description="Which evaluation is the best: eval_loss (lowest), or the highest eval_accuracy / eval_f1_macro "
        "(classifiers) or eval_mean_token_accuracy (language models).",
    )
    learning_check_at: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the run after which a run whose eval metric is no better than the base model's (step "
        "0), or whose train loss stays at chance, gets a warning.",
    )
    save_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Checkpoint every N steps (default: at each epoch end)."
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=1000, description="Checkpoints kept on the worker's disk; older ones are deleted as new ones land."
    )
    logging_steps: int = Field(5, ge=1, le=100_000, description="Report metrics every N optimizer steps.")
    eval_samples: int = Field(
        8,
        ge=0,
        le=64,
        description="At each evaluation, the model's answers to this many fixed held-out prompts, beside the "
        "reference and the base model's answer (a classifier: its misclassified rows); 0: none.",
    )
    eval_sample_max_new_tokens: int = Field(
        48,
        ge=1,
        le=1024,
        description="Most tokens in each sample answer; answers also stop at 4% of the time since the last "
        "evaluation (0.5-30 s).",
    )

    num_devices: int = Field(
        1,
        ge=1,
        le=64,
        description="Devices (GPUs, or CPU processes) one job trains on at once, one process each (torchrun); "
        "batch_size is per device.",
    )
    num_nodes: int = Field(
        1,
        ge=1,
        le=32,
        description="Machines (workers) one job trains on at once, each with num_devices devices: the world size is "
        "num_nodes x num_devices. More than 1: the job is gang-placed on that many workers of its queue.",
    )
    parallelism: Parallelism = Field(
        Parallelism.auto,
        description="With several devices: ddp (a whole model on each), fsdp (sharded), or auto (ddp when it fits).",
    )
    fsdp: FsdpSettings = Field(default_factory=FsdpSettings)

    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: QuantizationSettings = Field(default_factory=QuantizationSettings)
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    merge_adapter: bool = Field(False, description="Also save the base model with the adapter merged in.")
    integrations: list[Integration] = Field(
        default_factory=list,
        description="Experiment trackers the metrics also go to: W&B, MLflow (TensorBoard files are always written).",
    )

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
        kinds = [integration.type for integration in self.integrations]
        if len(kinds) != len(set(kinds)):
            raise ValueError("give each integration (wandb, mlflow) at most once")
        preference = self.preference
        if self.objective != Objective.dpo:
            if preference.loss_type != "sigmoid":
                raise ValueError(f"preference.loss_type only applies to dpo, not {self.objective.value}")
            if preference.rpo_alpha is not None:
                raise ValueError(f"preference.rpo_alpha only applies to dpo, not {self.objective.value}")
            if preference.reference_free:
                raise ValueError(f"preference.reference_free only applies to dpo, not {self.objective.value}")
        if self.objective != Objective.kto and (
            preference.desirable_weight is not None or preference.undesirable_weight is not None
        ):
            raise ValueError("preference.desirable_weight and undesirable_weight only apply to kto")
        if self.objective == Objective.kto and self.batch_size < 2:
            raise ValueError(
                "kto needs batch_size 2 or more: it compares each answer with another prompt's in its batch"
            )
        if self.load_best_model_at_end and self.is_preference and self.metric_for_best_model != "eval_loss":
            raise ValueError(f"{self.objective.value} picks its best checkpoint by eval_loss")
        if self.objective != Objective.sft and self.train_on_prompt:
            raise ValueError(f"train_on_prompt only applies to sft: {self.objective.value} learns from the answers")
        self._check_parallelism()
        return self

    def _check_parallelism(self) -> None:
        """The combinations of devices, method and objective that are refused, and why."""
        if self.world_size == 1:
            if self.parallelism != Parallelism.auto:
                raise ValueError(
                    f"parallelism {self.parallelism.value} splits a job across devices: set num_devices to 2 or more"
                )
            return
        if self.is_preference:
            where = "num_devices to 1" if self.num_nodes == 1 else "num_nodes and num_devices to 1"
            raise ValueError(
                f"{self.objective.value} trains on one device only for now: set {where} "
                "(its reference model is not yet split across devices)"
            )
        if self.world_size > 512:
            raise ValueError(f"num_nodes x num_devices is {self.world_size}: at most 512 processes train one job here")
        if self.method == Method.qlora and self.parallelism == Parallelism.fsdp:
            raise ValueError(
                "qlora cannot be sharded with fsdp here: bitsandbytes' 4-bit weights shard only when stored in the "
                "compute dtype on CUDA, which tunelab does not set up; use parallelism ddp (each device holds the "
                "whole 4-bit base, small already) or lora with fsdp"
            )
        if self.parallelism == Parallelism.fsdp and self.gradient_checkpointing:
            raise ValueError(
                "with fsdp, set fsdp.activation_checkpointing instead of gradient_checkpointing (FSDP recomputes "
                "its wrapped layers itself)"
            )

    @property
    def world_size(self) -> int:
        """The processes that train the job together: one per device, on every node."""
        return self.num_nodes * self.num_devices

    @property
    def distributed(self) -> bool:
        """Trained by several processes (torchrun), one per device."""
        return self.world_size > 1

    @property
    def multi_node(self) -> bool:
        """Trained by several workers at once (a gang, meeting through torchrun's rendezvous)."""
        return self.num_nodes > 1

    def integration(self, kind: str) -> WandbSettings | MlflowSettings | None:
        """The settings of the `kind` integration ("wandb", "mlflow"), or None when not asked for."""
        return next((getattr(item, kind) for item in self.integrations if item.type == kind), None)

    @property
    def default_learning_rate(self) -> float:
        """The learning rate an unset `learning_rate` stands for: per method, gentler for preferences."""
        defaults = DEFAULT_LEARNING_RATE if self.objective == Objective.sft else DEFAULT_PREFERENCE_LEARNING_RATE
        return defaults[self.method]

    def for_classifier(self) -> TrainingSpec:
        """The spec a text+label dataset trains with: an unset learning rate is the classifier's default."""
        if self.learning_rate is not None or self.is_preference:
            return self
        return self.model_copy(update={"learning_rate": DEFAULT_CLASSIFIER_LEARNING_RATE[self.method]})

    @property
    def effective_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else self.default_learning_rate

    @property
    def is_preference(self) -> bool:
        """Trained on preference data (DPO, ORPO, KTO) rather than answers to imitate."""
        return self.objective != Objective.sft

    @property
    def has_reference(self) -> bool:
        """Training measures the model against a reference: DPO (unless reference-free) and KTO; ORPO has none."""
        if self.objective == Objective.dpo:
            return not self.preference.reference_free
        return self.objective == Objective.kto

    @property
    def uses_adapter(self) -> bool:
        return self.method in (Method.lora, Method.qlora)

    def values_used(self) -> dict:
        """The spec as training runs it, for people to read: the learning rate resolved, and no
        settings the method ignores (LoRA's on a full fine-tune, quantization but on QLoRA)."""
        used = self.model_dump(mode="json")
        used["learning_rate"] = self.effective_learning_rate
        if self.method != Method.qlora:
            del used["quantization"]
        if not self.uses_adapter:
            del used["lora"]
        if not self.multi_node:
            del used["num_nodes"]
        if not self.distributed:
            del used["num_devices"], used["parallelism"], used["fsdp"]
        elif self.parallelism == Parallelism.ddp:
            del used["fsdp"]
        if not self.is_preference:
            del used["preference"]
        else:
            del used["packing"], used["train_on_prompt"]
        return used


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
