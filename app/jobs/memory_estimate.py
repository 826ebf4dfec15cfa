"""GPU memory a job will need, estimated before launch from the model's shape and the spec.

An estimate, not a promise: it counts weights, trainable parameters with their gradients
and AdamW states, activations (with or without gradient checkpointing; attention by a
fused kernel, so no seq² term), the logits, and the CUDA context. Good to tell a 24 GB
card from an 80 GB one, which is the decision a user makes with it.

Preference training (DPO, ORPO, KTO) runs two sequences per row (chosen and rejected, or KTO's
answer and its mismatched baseline), and full fine-tuning with DPO or KTO keeps a frozen copy of
the model as its reference (adapters use the base model with the adapter switched off instead;
reference-free DPO has none).

A job on several devices is estimated for its busiest device. DDP keeps a whole model on each
(plus a bucket of gradients it all-reduces); FSDP full-shard splits the weights, gradients and
AdamW states across the devices and gathers one wrapped layer at a time (two with prefetch), or
the whole model when nothing is wrapped; with CPU offload the shards live in CPU memory. `auto`
is estimated as DDP, which the worker picks when it fits.

A classifier has no LM logits: it scores each row once per class, where a causal LM scores
every token against the whole vocabulary (for a 128k vocabulary that is most of the memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.chat.catalog import BaseModelInfo
from app.contract.spec import Method, Parallelism, TrainingSpec

GIB = 1024**3
CUDA_CONTEXT_BYTES = 0.6 * GIB
# Activation bytes kept per token per layer, in units of hidden size (bf16, fused attention,
# after Korthikanti et al. 2022 without the attention-score term).
ACTIVATION_BYTES_PER_HIDDEN = 34
# Compared with only when no live worker reports a GPU (a CPU-only install, or none started yet).
COMMON_GPUS = (
    ("24 GB (RTX 4090, A10G, L4)", 24 * GIB),
    ("40 GB (A100 40G)", 40 * GIB),
    ("48 GB (L40S, A6000)", 48 * GIB),
    ("80 GB (A100 80G, H100)", 80 * GIB),
)
# The part of a GPU's memory a job can count on (the driver and fragmentation take the rest).
USABLE_FRACTION = 0.95


def _gib(size: float) -> str:
    return f"{size / GIB:.0f}" if size >= 10 * GIB else f"{size / GIB:.1f}"


def gpu_targets(live_gpus: list[dict]) -> list[tuple[str, float]]:
    """What to compare an estimate with: the workers' GPUs (as `worker.devices` reports them),
    one line per model and memory size, smallest first; the common sizes when there is none."""
    counts: dict[tuple[str, int], int] = {}
    for gpu in live_gpus:
        total = gpu.get("memory_total_bytes")
        if gpu.get("kind") == "gpu" and isinstance(total, int) and total > 0:
            key = (str(gpu.get("name") or "GPU"), total)
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return list(COMMON_GPUS)
    return [
        (f"{name} ({_gib(total)} GiB){f' × {count}' if count > 1 else ''}, on the workers", total)
        for (name, total), count in sorted(counts.items(), key=lambda item: (item[0][1], item[0][0]))
    ]


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict[str, float]  # name -> bytes
    trainable_parameters: int

    @property
    def total_bytes(self) -> float:
        return sum(self.parts.values())

    def as_dict(self, gpus: list[tuple[str, float]] = COMMON_GPUS) -> dict:
        """The estimate for the page and the API, compared with `gpus` ((label, bytes), from
        `gpu_targets`)."""
        return {
            "total_gib": round(self.total_bytes / GIB, 2),
            "trainable_parameters": self.trainable_parameters,
            "parts": [{"name": name, "gib": round(size / GIB, 2)} for name, size in self.parts.items()],
            "fits": [{"gpu": name, "fits": self.total_bytes <= size * USABLE_FRACTION} for name, size in gpus],
            "gpus_from": "common sizes" if tuple(gpus) == COMMON_GPUS else "workers",
        }


def lora_parameters(model: BaseModelInfo, rank: int) -> int:
    """Trainable LoRA parameters with every linear layer of a Llama-style block targeted:
    rank x (in + out) for q, k, v, o, gate, up and down."""
    hidden = model.hidden_size or 1024
    layers = model.num_layers or 12
    heads = model.num_heads or max(1, hidden // 64)
    head_dim = model.head_dim or hidden // heads
    kv = (model.num_kv_heads or heads) * head_dim
    intermediate = model.intermediate_size or 4 * hidden
    q_and_o = 2 * (hidden + heads * head_dim)
    k_and_v = 2 * (hidden + kv)
    mlp = 3 * (hidden + intermediate)
    return layers * rank * (q_and_o + k_and_v + mlp)


def estimate_memory(model: BaseModelInfo, spec: TrainingSpec, *, classes: int | None = None) -> MemoryEstimate:
    """The estimate for a causal LM, or for a sequence classifier of `classes` classes."""
    hidden, layers, vocab = model.hidden_size or 1024, model.num_layers or 12, model.vocab_size or 32000
    params = model.parameters
    tokens = spec.batch_size * spec.max_seq_length * (2 if spec.is_preference else 1)
    parts: dict[str, float] = {}
    if spec.method == Method.full:
        trainable = params
        parts["weights (bf16)"] = 2 * params
        if spec.has_reference:
            parts["reference model (bf16, frozen)"] = 2 * params
        parts["gradients (bf16)"] = 2 * params
        parts["AdamW states (fp32)"] = 8 * params
    else:
        trainable = lora_parameters(model, spec.lora.r)
        embeddings = 2 * vocab * hidden
        if spec.method == Method.qlora:
            bits = 4.127 if spec.quantization.double_quant else 4.5  # NF4 plus its quantization constants
            parts["base weights (4-bit)"] = (params - embeddings) * bits / 8 + 2 * embeddings
        else:
            parts["base weights (bf16)"] = 2 * params
        parts["LoRA weights, gradients, AdamW (fp32)"] = 16 * trainable
    if spec.distributed:
        _split_across_devices(parts, spec, params=params, trainable=trainable, layers=layers)
    if spec.gradient_checkpointing or (spec.distributed and spec.fsdp.activation_checkpointing):
        parts["activations (checkpointed)"] = tokens * hidden * (2 * layers + ACTIVATION_BYTES_PER_HIDDEN)
    else:
        parts["activations"] = tokens * hidden * layers * ACTIVATION_BYTES_PER_HIDDEN
    if classes is None:
        parts["logits (fp32, with their gradient)"] = tokens * vocab * 4 * 2
    else:
        parts["class scores (fp32, with their gradient)"] = spec.batch_size * classes * 4 * 2
    parts["CUDA context and allocator slack"] = CUDA_CONTEXT_BYTES
    return MemoryEstimate(parts=parts, trainable_parameters=trainable)


# The parts that FSDP shards: the model's weights and what training keeps per trainable weight.
_SHARDED_PARTS = (
    "weights (bf16)",
    "gradients (bf16)",
    "AdamW states (fp32)",
    "base weights (bf16)",
    "base weights (4-bit)",
    "LoRA weights, gradients, AdamW (fp32)",
)


def _split_across_devices(
    parts: dict[str, float], spec: TrainingSpec, *, params: int, trainable: int, layers: int
) -> None:
    """`parts` (one device's, unsplit) as the busiest of the job's devices holds them: FSDP shards
    across every process of the job, on every node (`spec.world_size`), not only this node's."""
    devices = spec.world_size
    if spec.parallelism != Parallelism.fsdp:
        # DDP: a whole model per device, and its gradients once more in the all-reduce buckets.
        parts["DDP gradient buckets"] = (2 if spec.method == Method.full else 4) * trainable
        return
    for name in _SHARDED_PARTS:
        if name in parts:
            parts[f"{name}, 1/{devices} shard"] = 0.0 if spec.fsdp.cpu_offload else parts[name] / devices
            del parts[name]
    gathered_layers = min(2, layers) / layers if spec.fsdp.auto_wrap == "decoder_layer" else 1.0
    parts["gathered weights (bf16, for the layer at work)"] = 2 * params * gathered_layers
