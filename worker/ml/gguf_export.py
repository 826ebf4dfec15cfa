"""A merged model (one Hugging Face folder) → one GGUF file that llama.cpp, Ollama and
transformers (`from_pretrained(folder, gguf_file=...)`) read, plus an Ollama `Modelfile`.

    export_gguf(merged_dir, out_dir / "model.gguf", quantization="q8_0", on_progress=print)
    write_modelfile(out_dir, gguf_name="model.gguf", chat_template=..., eos_token="<|im_end|>")

The conversion follows llama.cpp's `convert_hf_to_gguf.py` for the Llama family, with the
`gguf` package's writer and tensor-name map: the hyperparameters as `llama.*` metadata, the
tokenizer (vocabulary, merges, special tokens, chat template) as `tokenizer.*`, q/k projections
permuted into llama.cpp's rotary layout. Tensors are written one at a time, so memory holds one
tensor, not the model; the file is written aside and renamed into place whole.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.contract.export import GgufQuantization, gguf_refusal

from .errors import TrainingError

if TYPE_CHECKING:
    import numpy as np


class ExportError(TrainingError):
    """A model this export cannot convert; the message says why."""


# Pre-tokenizer split patterns as tokenizer.json spells them → llama.cpp's `tokenizer.ggml.pre` name.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_NAMES = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


def _quant_type(quantization: GgufQuantization):
    from gguf import GGMLQuantizationType, LlamaFileType

    return {
        GgufQuantization.f16: (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
        GgufQuantization.bf16: (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
        GgufQuantization.q8_0: (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
        GgufQuantization.q5_0: (GGMLQuantizationType.Q5_0, LlamaFileType.MOSTLY_Q5_0),
        GgufQuantization.q4_0: (GGMLQuantizationType.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    }[quantization]


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExportError(f"the merged model has no readable config.json ({error})") from error


def check_exportable(config: dict) -> None:
    """ExportError unless the model is one the GGUF export converts."""
    architecture = (config.get("architectures") or [""])[0]
    if (refusal := gguf_refusal(architecture)) is not None:
        raise ExportError(refusal)


def _rope_theta(config: dict) -> float:
    parameters = config.get("rope_parameters") or {}
    return float(parameters.get("rope_theta") or config.get("rope_theta") or 10000.0)


def _rope_scaling(config: dict) -> dict:
    scaling = dict(config.get("rope_scaling") or {})
    parameters = config.get("rope_parameters") or {}
    if parameters.get("rope_type") not in (None, "default"):
        scaling = {**parameters, **scaling}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in (None, "default"):
        return {}
    if kind not in ("linear", "llama3"):
        raise ExportError(f"the model's rope scaling {kind!r} is not converted (linear and llama3 are)")
    return {**scaling, "rope_type": kind}


def _llama3_rope_factors(config: dict, scaling: dict) -> np.ndarray:
    """llama.cpp's `rope_freqs` tensor for Llama 3.1's frequency scaling (as its converter computes it)."""
    import numpy as np

    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (_rope_theta(config) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows (transformers undoes it on load)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        files = [model_dir / name for name in names]
    else:
        files = [model_dir / "model.safetensors"]
    for file in files:
        # Names come from the model's own index: keep them inside its folder.
        if file.resolve().parent != model_dir.resolve() or not file.is_file():
            raise ExportError(f"the merged model's weights file {file.name} is missing")
    return files


def _load_tensor(file: Path, name: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(file, framework="pt") as handle:
        return handle.get_tensor(name).float().numpy()


class _Tensor:
    """One GGUF tensor to write: its name, type and a way to compute its data."""

    def __init__(self, name: str, shape: tuple[int, ...], qtype, load: Callable[[], np.ndarray]):
        self.name, self.shape, self.qtype, self.load = name, shape, qtype, load


def _plan_tensors(model_dir: Path, config: dict, qtype) -> list[_Tensor]:
    import gguf
    from safetensors import safe_open

    n_head = config["num_attention_heads"]
    n_kv_head = config.get("num_key_value_heads") or n_head
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    plan: list[_Tensor] = []
    scaling = _rope_scaling(config)
    if scaling.get("rope_type") == "llama3":
        factors = _llama3_rope_factors(config, scaling)
        plan.append(_Tensor("rope_freqs.weight", factors.shape, gguf.GGMLQuantizationType.F32, lambda: factors))
    with_shapes = []
    for file in _safetensors_files(model_dir):
        with safe_open(file, framework="pt") as handle:
            stored = handle.keys()
            with_shapes += [(name, tuple(handle.get_slice(name).get_shape()), file) for name in stored]
    for name, shape, file in with_shapes:
        if name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"the merged model has a tensor GGUF's Llama layout has no place for: {name}")

        def load(file=file, name=name) -> np.ndarray:
            data = _load_tensor(file, name)
            if name.endswith("q_proj.weight"):
                data = _permute(data, n_head)
            elif name.endswith("k_proj.weight"):
                data = _permute(data, n_kv_head)
            return data

        if len(shape) < 2:
            tensor_type = gguf.GGMLQuantizationType.F32  # norms: tiny, and llama.cpp wants them F32
        elif shape[-1] % block_size:
            tensor_type = gguf.GGMLQuantizationType.F16  # rows that do not split into whole blocks
        else:
            tensor_type = qtype
        plan.append(_Tensor(gguf_name, shape, tensor_type, load))
    if not any(tensor.name == "token_embd.weight" for tensor in plan):
        raise ExportError("the merged model has no token embeddings")
    return plan


def _add_hyperparameters(writer, config: dict, name: str, file_type) -> None:
    import gguf

    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(config["vocab_size"])
    scaling = _rope_scaling(config)
    if scaling.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:
    """The vocabulary, its merges, the special tokens and the chat template, from tokenizer.json
    (a fast tokenizer, as every tunelab model has), the way llama.cpp's converter lays them out."""
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ExportError("the merged model has no tokenizer.json (a fast tokenizer is needed for GGUF)")
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"the tokenizer is {model.get('type')!r}; GGUF export converts BPE tokenizers")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {token["content"]: token for token in tokenizer.get("added_tokens", [])}
    for content, token in added.items():
        vocab[content] = token["id"]
    by_id = {index: token for token, index in vocab.items()}
    byte_level = "ByteLevel" in json.dumps(tokenizer.get("pre_tokenizer")) or "ByteLevel" in json.dumps(
        tokenizer.get("decoder")
    )
    tokens, types, scores = [], [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token].get("special") else gguf.TokenType.USER_DEFINED)
        elif not byte_level and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            tokens.append(token)
            types.append(gguf.TokenType.BYTE)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
        scores.append(-float(index))
    if byte_level:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer.get("pre_tokenizer")))
    else:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)


def _pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for how a byte-level tokenizer splits text before merging."""
    steps = (pre_tokenizer or {}).get("pretokenizers") or [pre_tokenizer or {}]
    for step in steps:
        if step.get("type") == "Split":
            pattern = (step.get("pattern") or {}).get("Regex")
            if pattern in _SPLIT_NAMES:
                return _SPLIT_NAMES[pattern]
            raise ExportError(
                "the tokenizer splits text with a pattern llama.cpp does not name; it cannot be converted"
            )
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return "gpt2"
    raise ExportError("the tokenizer's pre-tokenizer is not one llama.cpp knows; it cannot be converted")


def export_gguf(
    model_dir: Path,
    output: Path,
    *,
    quantization: GgufQuantization | str = GgufQuantization.f16,
    name: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Path:
    """Convert the Hugging Face model in `model_dir` (a merged model: no adapter) to `output`.

    ExportError for a model this cannot convert (checked before anything is written). The
    file is written to a temporary name beside `output` and renamed when whole.
    """
    import gguf
    import numpy as np

    say = on_progress or (lambda _message: None)
    model_dir, output = Path(model_dir), Path(output)
    quantization = GgufQuantization(quantization)
    qtype, file_type = _quant_type(quantization)
    config = read_config(model_dir)
    check_exportable(config)
    plan = _plan_tensors(model_dir, config, qtype)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _add_hyperparameters(writer, config, name or model_dir.name, file_type)
        _add_tokenizer(writer, model_dir, config["vocab_size"])
        for tensor in plan:
            if tensor.qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32), 4 * math.prod(tensor.shape))
            elif tensor.qtype == gguf.GGMLQuantizationType.F16:
                writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float16), 2 * math.prod(tensor.shape))
            else:
                byte_shape = gguf.quant_shape_to_byte_shape(tensor.shape, tensor.qtype)
                writer.add_tensor_info(
                    tensor.name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=tensor.qtype
                )
        writer.write_header_to_file(partial)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        say(f"Writing {len(plan)} tensors as {quantization.value.upper()}")
        step = max(1, len(plan) // 10)
        for done, tensor in enumerate(plan, start=1):
            writer.write_tensor_data(gguf.quants.quantize(tensor.load(), tensor.qtype))
            if done % step == 0 or done == len(plan):
                say(f"Converted {done} of {len(plan)} tensors")
        writer.close()
        partial.replace(output)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return output


# ---------------------------------------------------------------------------------------------
# Ollama Modelfile

_CHATML_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
_LLAMA3_TEMPLATE = """{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""


def ollama_template(chat_template: str | None) -> tuple[str | None, list[str], str]:
    """(Go template or None, stop tokens, which form was recognised) for a Jinja chat template."""
    template = chat_template or ""
    if "<|im_start|>" in template and "<|im_end|>" in template:
        return _CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"], "ChatML"
    if "<|start_header_id|>" in template and "<|eot_id|>" in template:
        return _LLAMA3_TEMPLATE, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "Llama 3"
    return None, [], "unrecognised"


def write_modelfile(
    folder: Path, *, gguf_name: str, chat_template: str | None, eos_token: str | None, source: str = ""
) -> str:
    """Write `folder/Modelfile` for `ollama create NAME -f Modelfile`; returns which template form it used.

    A ChatML or Llama 3 chat template becomes Ollama's Go template; any other is kept as a
    comment (Ollama then falls back to the template it reads from the GGUF's metadata) with the
    end-of-sequence token as the stop word.
    """
    template, stops, form = ollama_template(chat_template)
    lines = [f"# Ollama Modelfile for {source or gguf_name}, written by tunelab.", f"FROM ./{gguf_name}", ""]
    if template is not None:
        lines += [
            f"# The chat template, converted from the model's {form} Jinja template.",
            f'TEMPLATE """{template}"""',
        ]
    else:
        lines.append("# The chat template could not be converted to Ollama's Go template; the original:")
        lines += [f"#   {line}" for line in (chat_template or "(none)").splitlines()]
        stops = [eos_token] if eos_token else []
    lines += [f'PARAMETER stop "{stop}"' for stop in stops if stop and '"' not in stop]
    (Path(folder) / "Modelfile").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return form


# ---------------------------------------------------------------------------------------------
# The export folder a job hands out

GGUF_FILE = "model.gguf"


def export_folder(
    model_dir: Path,
    output_dir: Path,
    *,
    quantization: GgufQuantization | str,
    name: str,
    on_progress: Callable[[str], None] | None = None,
) -> dict:
    """`output_dir/` with `model.gguf`, an Ollama `Modelfile` and the model card, written aside
    and moved into place whole. Returns what to record about it: the quantisation, the file's
    size and which chat-template form the Modelfile carries."""
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    from .saving import replace_dir

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    quantization = GgufQuantization(quantization)
    check_exportable(read_config(model_dir))
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.partial-"))
    try:
        path = export_gguf(
            model_dir, staging / GGUF_FILE, quantization=quantization, name=name, on_progress=on_progress
        )
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        form = write_modelfile(
            staging,
            gguf_name=GGUF_FILE,
            chat_template=tokenizer.chat_template,
            eos_token=tokenizer.eos_token,
            source=name,
        )
        if (model_dir / "README.md").is_file():
            shutil.copyfile(model_dir / "README.md", staging / "README.md")
        meta = {"quantization": quantization.value, "gguf_bytes": path.stat().st_size, "chat_template": form}
        replace_dir(staging, output_dir)
        return meta
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
