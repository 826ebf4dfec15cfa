"""Finding, loading and preparing the base model: device, dtype, quantization, adapters.

The method is configuration, as in TRL: `peft_config_for` and `quantization_config_for`
return None for full fine-tuning, and whatever they return goes into the one loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.contract.spec import Method, TrainingSpec

from .data import Task
from .errors import ConfigurationError, ModelNotFoundError


@dataclass(frozen=True)
class DevicePlan:
    """Where and in which precision a job trains."""

    device: str  # "cuda" or "cpu"
    precision: str  # "bf16", "fp16" or "fp32": the autocast dtype (fp32: none)
    attention: str = "sdpa"  # the attention kernel: "sdpa", or "flash_attention_2" (variable-length)

    @property
    def varlen_attention(self) -> bool:
        """Whether the attention kernel keeps examples laid end to end in one row apart by
        itself (from position ids, without a dense mask): what makes packing free."""
        return self.attention.startswith("flash_attention")

    @property
    def dtype(self):
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]

    def describe(self) -> str:
        if self.device == "cuda":
            import torch

            return f"{torch.cuda.get_device_name()} in {self.precision} with {self.attention}"
        return f"CPU in {self.precision}"


def plan_device(spec: TrainingSpec) -> DevicePlan:
    """bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU; an explicit precision is checked."""
    import torch

    if torch.cuda.is_available():
        bf16_ok = torch.cuda.is_bf16_supported()
        precision = ("bf16" if bf16_ok else "fp16") if spec.precision == "auto" else spec.precision
        if precision == "bf16" and not bf16_ok:
            raise ConfigurationError(
                f"{torch.cuda.get_device_name()} does not support bf16; use precision fp16 or auto"
            )
        return DevicePlan("cuda", precision, cuda_attention(precision))
    if spec.precision == "fp16":
        raise ConfigurationError("fp16 training needs a GPU; on CPU use precision auto, fp32 or bf16")
    if spec.method == Method.qlora and spec.precision == "bf16":
        raise ConfigurationError("4-bit layers on CPU compute in fp32; use precision auto or fp32 for qlora on CPU")
    return DevicePlan("cpu", "fp32" if spec.precision == "auto" else spec.precision)


def cuda_attention(precision: str) -> str:
    """flash-attention 2 where it is installed and the precision is one it computes in (its
    variable-length kernel makes packing free), else PyTorch's SDPA."""
    import importlib.util

    if precision in ("bf16", "fp16") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


# What a training job needs from a hub repository (weights in safetensors only).
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def resolve_model(name: str, models_dir: Path | None) -> Path:
    """The local directory of base model `name`: `models_dir/name`, else its Hugging Face hub snapshot.

    `name` is `model` or `org/model`; it can never point outside `models_dir` (no absolute
    paths, no `..`; symlinks an administrator put inside it are followed). Hub snapshots come
    from the local cache, downloaded first when the machine is online (HF_HUB_OFFLINE unset).
    Always handing transformers a directory means a name is never read as a path relative
    to the worker's working directory.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_OFFLINE

    parts = PurePosixPath(name).parts
    if not name or PurePosixPath(name).is_absolute() or len(parts) > 2 or any(p in ("", ".", "..") for p in parts):
        raise ModelNotFoundError(f"'{name}' is not a model name: use 'model' or 'org/model'")
    if models_dir is not None:
        candidate = Path(models_dir, *parts)
        if (candidate / "config.json").is_file():
            return candidate
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES, local_files_only=HF_HUB_OFFLINE))
    except (OSError, ValueError) as error:
        where = f"not in the models directory ({models_dir}) and " if models_dir is not None else ""
        hub = (
            "not in the Hugging Face cache (this worker is offline)"
            if HF_HUB_OFFLINE
            else "not on the Hugging Face hub"
        )
        raise ModelNotFoundError(
            f"Base model '{name}' was not found: {where}{hub}. Details: {str(error).splitlines()[0]}"
        ) from error


def load_tokenizer(source: Path):
    """The base model's tokenizer; one without a pad token pads with EOS (padding never carries loss)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config_for(spec: TrainingSpec, plan: DevicePlan):
    """bitsandbytes 4-bit settings for qlora, None otherwise."""
    if spec.method != Method.qlora:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    settings = spec.quantization
    compute = plan.dtype if settings.compute_dtype == "auto" else getattr(torch, settings.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.quant_type,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=settings.double_quant,
    )


def peft_config_for(spec: TrainingSpec, task: Task):
    """LoRA (or DoRA) settings for lora and qlora, None for full fine-tuning."""
    if not spec.uses_adapter:
        return None
    from peft import LoraConfig

    lora = spec.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_dora=lora.use_dora,
        bias="none",
        task_type=PEFT_TASK_TYPES[task],
        # The new head is trained in full (PEFT's modules_to_save): "all-linear" must not put LoRA on it too.
        exclude_modules=HEAD_MODULES.get(task),
    )


# The head modules that PEFT trains in full for these tasks.
HEAD_MODULES = {Task.token_classification: ["classifier", "score"], Task.question_answering: ["qa_outputs"]}


# PEFT's name for each task (it picks the PeftModel class, and the head it trains in full).
PEFT_TASK_TYPES = {
    Task.causal_lm: "CAUSAL_LM",
    Task.classification: "SEQ_CLS",
    Task.token_classification: "TOKEN_CLS",
    Task.question_answering: "QUESTION_ANS",
    Task.seq2seq: "SEQ_2_SEQ_LM",
}


def auto_model_class(task: Task):
    """The transformers Auto class that puts `task`'s head on a base model."""
    import transformers

    return getattr(transformers, AUTO_CLASSES[task])


AUTO_CLASSES = {
    Task.causal_lm: "AutoModelForCausalLM",
    Task.classification: "AutoModelForSequenceClassification",
    Task.token_classification: "AutoModelForTokenClassification",
    Task.question_answering: "AutoModelForQuestionAnswering",
    Task.seq2seq: "AutoModelForSeq2SeqLM",
}
# Tasks whose head has a label per class: the class (or tag) names go into the model's config.
LABELLED_TASKS = frozenset({Task.classification, Task.token_classification})


def load_model(
    spec: TrainingSpec,
    plan: DevicePlan,
    source: Path,
    *,
    task: Task,
    pad_token_id: int,
    class_names: list[str] | None = None,
):
    """The base model in `source` ready to train: quantized and wrapped with adapters as the method says.

    Full fine-tuning keeps fp32 master weights (autocast does the bf16/fp16 maths); adapters
    sit on a base loaded directly in the training precision, or in 4 bits for qlora.
    """
    import torch
    from transformers import set_seed

    quantization = quantization_config_for(spec, plan)
    kwargs: dict = {
        "attn_implementation": plan.attention,
        "dtype": torch.float32 if spec.method == Method.full else plan.dtype,
    }
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": torch.cuda.current_device() if plan.device == "cuda" else "cpu"}
    if task in LABELLED_TASKS:
        kwargs.update(classifier_kwargs(class_names, pad_token_id))
    if task not in (Task.causal_lm, Task.classification) and plan.attention == "sdpa":
        del kwargs["attn_implementation"]  # encoders without SDPA (T5) take their own default

    set_seed(spec.seed)  # a new head's initial weights (a classifier's, a tagger's, QA's): the same run twice
    model = auto_model_class(task).from_pretrained(source, **kwargs)
    # Training never decodes; without a KV cache, transformers derives the packed-sequence
    # (block-diagonal) mask from position ids.
    model.config.use_cache = False

    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if plan.device == "cpu":
            _keep_4bit_layers_differentiable(model)
    peft_config = peft_config_for(spec, task)
    if peft_config is not None:
        from peft import get_peft_model

        set_seed(spec.seed)  # the adapters' initial weights
        model = get_peft_model(model, peft_config)
        # PEFT records the folder it loaded the base from, a path of this server only; the
        # adapter names its base as the job did (a hub id or the models directory's name).
        model.peft_config["default"].base_model_name_or_path = spec.base_model
    return model


def _keep_4bit_layers_differentiable(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference during evaluation.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 converts a Linear4bit's weights to an
    inference layout the first time it runs in eval mode, for good; later training steps
    then go through a kernel without autograd, and the LoRA layers below get no gradient
    through the base layers (torch warns "an autograd kernel was not registered").
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


# Saved next to a classifier's adapter: the class names in index order, which the base
# model's config cannot hold.
CLASS_NAMES_FILE = "class_names.json"


def classifier_kwargs(class_names: list[str], pad_token_id: int) -> dict:
    """`from_pretrained` arguments that give a sequence classifier these classes."""
    return {
        "num_labels": len(class_names),
        "id2label": dict(enumerate(class_names)),
        "label2id": {name: i for i, name in enumerate(class_names)},
        "pad_token_id": pad_token_id,
    }


def saved_task(directory: Path) -> Task:
    """The task trained weights in `directory` were trained for: an adapter's PEFT task type, or
    the head a full model's config names (`BertForTokenClassification`...); a causal LM by default."""
    adapter_config = directory / "adapter_config.json"
    if adapter_config.exists():
        task_type = json.loads(adapter_config.read_text()).get("task_type")
        return next((task for task, name in PEFT_TASK_TYPES.items() if name == task_type), Task.causal_lm)
    config = directory / "config.json"
    architectures = json.loads(config.read_text()).get("architectures") or [] if config.exists() else []
    heads = {
        "ForTokenClassification": Task.token_classification,
        "ForQuestionAnswering": Task.question_answering,
        "ForConditionalGeneration": Task.seq2seq,
        "ForSequenceClassification": Task.classification,
    }
    for suffix, task in heads.items():
        if any(name.endswith(suffix) for name in architectures):
            return task
    return Task.classification if read_class_names(directory) else Task.causal_lm


def write_class_names(directory: Path, class_names: list[str]) -> None:
    (directory / CLASS_NAMES_FILE).write_text(json.dumps(class_names))


def read_class_names(directory: Path) -> list[str] | None:
    path = directory / CLASS_NAMES_FILE
    return json.loads(path.read_text()) if path.exists() else None


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as the parameters they stand for."""
    trainable = total = 0
    for param in model.parameters():
        count = param.numel()
        if param.__class__.__name__ == "Params4bit":
            count *= 2  # two 4-bit weights per stored byte
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total
