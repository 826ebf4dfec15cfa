"""What a model export may ask for, shared by the web app (to refuse a request up front) and
the worker (to convert): the GGUF quantisations tunelab writes and the architectures it converts."""

from __future__ import annotations

import enum


class GgufQuantization(str, enum.Enum):
    """GGUF tensor types tunelab writes (llama.cpp's names, lower case). Norms and biases stay F32;
    a matrix whose rows do not split into whole quantisation blocks is written F16."""

    f16 = "f16"  # half precision: the reference, no quantisation loss
    bf16 = "bf16"  # bfloat16: a model trained in bf16, unchanged
    q8_0 = "q8_0"  # 8 bits per weight in blocks of 32: near-lossless, half the size of f16
    q5_0 = "q5_0"  # 5 bits in blocks of 32
    q4_0 = "q4_0"  # 4 bits in blocks of 32: the smallest, for laptops and Ollama's defaults


# The Hugging Face architectures (config.json `architectures[0]`) converted to GGUF: the Llama
# family, which llama.cpp and transformers both read back as `llama`.
GGUF_ARCHITECTURES = ("LlamaForCausalLM",)


def gguf_refusal(architecture: str) -> str | None:
    """Why a model of `architecture` cannot be exported to GGUF, or None when it can."""
    if architecture in GGUF_ARCHITECTURES:
        return None
    return (
        f"GGUF export converts the Llama family ({', '.join(GGUF_ARCHITECTURES)}); "
        f"this model is {architecture or 'of an unknown architecture'}"
    )
