"""GGUF export (worker.ml.gguf_export): a tiny Llama fine-tuned with LoRA, merged, converted
at F16, Q8_0 and Q4_0, and read back by transformers (`gguf_file=`): the logits match the
merged model's within each quantisation's tolerance, and the tokenizer and chat template come
back whole. Other architectures are refused before anything is written; the Ollama Modelfile
carries the chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.ml import MemoryReporter, merge_adapter, train
from worker.ml.gguf_export import ExportError, export_gguf, write_modelfile
from worker.ml.tiny import make_tiny_model

TEXT = "What colour is the sky? The sky is blue 42."


@pytest.fixture(scope="module")
def merged(models_dir, tmp_path_factory) -> Path:
    """The tiny Llama with a LoRA adapter merged in (trained once for this module)."""
    from tests.ml.conftest import _colour_rows, _make_spec, _write_jsonl

    folder = tmp_path_factory.mktemp("gguf")
    data = _write_jsonl(folder / "colours.jsonl", _colour_rows())
    # Packed rows, as when the tolerances below were measured: the greedy check needs no near ties.
    spec = _make_spec(max_steps=6, learning_rate=1e-2, packing="on")
    result = train(spec, train_file=data, output_dir=folder / "run", reporter=MemoryReporter(), models_dir=models_dir)
    return merge_adapter("tiny-llama", result.final_dir, folder / "merged", models_dir=models_dir)


@pytest.fixture(scope="module")
def reference(merged):
    """The merged model's logits for TEXT, and the token ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(merged)(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids, AutoModelForCausalLM.from_pretrained(merged)(ids).logits[0]


def _round_trip(merged: Path, out: Path, quantization: str, ids):
    import torch
    from transformers import AutoModelForCausalLM

    heard: list[str] = []
    path = export_gguf(merged, out / f"model-{quantization}.gguf", quantization=quantization, on_progress=heard.append)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    with torch.no_grad():
        return path, model(ids).logits[0], heard


def _quantized_in_memory(merged: Path, ids, quantization: str):
    """The merged model's logits with each matrix rounded to `quantization` and back in memory."""
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize
    from transformers import AutoModelForCausalLM

    qtype = GGMLQuantizationType[quantization.upper()]
    model = AutoModelForCausalLM.from_pretrained(merged)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                rounded = dequantize(quantize(parameter.numpy(), qtype), qtype)
                parameter.copy_(torch.from_numpy(rounded.reshape(parameter.shape)))
        return model(ids).logits[0]


@pytest.mark.parametrize(
    ("quantization", "max_abs_diff", "min_cosine"),
    [("f16", 0.02, 0.9999), ("q8_0", 0.3, 0.999), ("q4_0", None, 0.85)],
)
def test_gguf_round_trip_matches_the_merged_model(merged, reference, tmp_path, quantization, max_abs_diff, min_cosine):
    import torch

    ids, expected = reference
    path, logits, heard = _round_trip(merged, tmp_path, quantization, ids)
    cosine = torch.nn.functional.cosine_similarity(logits, expected, dim=-1).min().item()
    assert cosine >= min_cosine, f"{quantization}: logits cosine {cosine:.4f}"
    if max_abs_diff is not None:
        diff = (logits - expected).abs().max().item()
        assert diff <= max_abs_diff, f"{quantization}: max abs logit difference {diff:.4f}"
    if quantization != "q4_0":  # 4 bits may flip a near tie; the others keep every greedy choice
        assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    else:  # what differs is the 4-bit rounding and nothing else: the same rounding done in memory agrees
        simulated = _quantized_in_memory(merged, ids, quantization)
        assert (logits - simulated).abs().max().item() < 0.02
    assert heard[0] == f"Writing 21 tensors as {quantization.upper()}"
    assert heard[-1] == "Converted 21 of 21 tensors"
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no partial file is left beside the export"


def test_quantized_files_are_smaller(merged, tmp_path):
    sizes = {
        q: export_gguf(merged, tmp_path / f"{q}.gguf", quantization=q).stat().st_size for q in ("f16", "q8_0", "q4_0")
    }
    assert sizes["q4_0"] < sizes["q8_0"] < 0.6 * sizes["f16"]


def test_tokenizer_and_chat_template_travel_in_the_file(merged, tmp_path):
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(merged)
    path = export_gguf(merged, tmp_path / "model.gguf", quantization="q8_0")
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    chat = [{"role": "user", "content": "Hello there"}]
    text = original.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert loaded.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == text
    assert loaded(text).input_ids == original(text).input_ids  # <|im_start|> and <|im_end|> stay whole
    assert loaded.eos_token == "<|im_end|>"
    assert loaded.decode(original(TEXT).input_ids) == TEXT


def test_other_architectures_are_refused_before_writing(tmp_path):
    qwen = make_tiny_model(tmp_path / "tiny-qwen", arch="qwen2")
    with pytest.raises(ExportError, match="converts the Llama family .*this model is Qwen2ForCausalLM"):
        export_gguf(qwen, tmp_path / "out" / "model.gguf")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_model_without_a_fast_tokenizer_is_refused_and_nothing_is_left(merged, tmp_path):
    import shutil

    copy = shutil.copytree(merged, tmp_path / "merged")
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="no tokenizer.json"):
        export_gguf(copy, tmp_path / "out" / "model.gguf")
    assert list((tmp_path / "out").iterdir()) == []


def test_modelfile_converts_a_chatml_template(merged, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    form = write_modelfile(
        tmp_path, gguf_name="model.gguf", chat_template=tokenizer.chat_template, eos_token="<|im_end|>"
    )
    text = (tmp_path / "Modelfile").read_text()
    assert form == "ChatML"
    assert "FROM ./model.gguf\n" in text
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n' in text
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_modelfile_keeps_an_unknown_template_as_a_comment_with_the_stop_token(tmp_path):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
    form = write_modelfile(tmp_path, gguf_name="model.gguf", chat_template=template, eos_token="</s>")
    text = (tmp_path / "Modelfile").read_text()
    assert form == "unrecognised"
    assert "TEMPLATE" not in text
    assert f"#   {template}" in text
    assert 'PARAMETER stop "</s>"' in text


def test_a_hub_push_is_refused_when_the_machine_is_offline(tmp_path):
    # tests/ml/conftest.py sets HF_HUB_OFFLINE for the whole session, as an offline machine has it.
    from worker.ml.hub import HubError, push_folder

    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(HubError, match=r"offline \(HF_HUB_OFFLINE is set\): nothing was pushed"):
        push_folder(tmp_path, "acme/colours-gguf", token="hf_secret")


def test_a_hub_push_to_an_unreachable_hub_is_refused_without_the_token(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from tests.helpers import free_port
    from worker.ml.hub import HubError, push_folder

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    token = "hf_secret_never_shown"
    with pytest.raises(HubError, match="could not be reached") as refused:
        push_folder(tmp_path, "acme/colours-gguf", token=token, endpoint=f"http://127.0.0.1:{free_port()}")
    assert "ConnectError" in str(refused.value) and token not in str(refused.value)


def _sentencepiece_llama(folder: Path) -> Path:
    """A tiny Llama with a Llama-2 style tokenizer: sentencepiece BPE with byte fallback."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.models.llama.tokenization_llama import LlamaTokenizer

    pieces = ["▁", *"abcdefghijklmnopqrstuvwxyz", "▁t", "▁th", "▁the", "▁w", "or", "▁wor", "ld", "▁world"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256)), *pieces]
    merges = [("▁", "t"), ("▁t", "h"), ("▁th", "e"), ("▁", "w"), ("o", "r"), ("▁w", "or"), ("l", "d"), ("▁wor", "ld")]
    tokenizer = LlamaTokenizer(vocab={token: index for index, token in enumerate(tokens)}, merges=merges)
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_a_sentencepiece_llama_round_trips_with_its_byte_fallback(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = _sentencepiece_llama(tmp_path / "llama2-style")
    text = "the world is théâtre"  # é and â are not in the vocabulary: they go as bytes
    original = AutoTokenizer.from_pretrained(model_dir)
    path = export_gguf(model_dir, tmp_path / "out" / "model.gguf", quantization="f16")
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids = original(text, add_special_tokens=False).input_ids
    assert loaded(text, add_special_tokens=False).input_ids == ids
    assert any(3 <= i < 259 for i in ids), "the accents went through byte tokens"
    assert loaded.decode(ids) == text
    with torch.no_grad():
        batch = torch.tensor([ids])
        expected = AutoModelForCausalLM.from_pretrained(model_dir)(batch).logits
        logits = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)(batch).logits
    assert (logits - expected).abs().max().item() < 0.02


def test_llama3_rope_scaling_is_written_as_llama_cpp_reads_it(merged, tmp_path):
    import json
    import shutil

    import numpy as np
    from gguf import GGUFReader

    model_dir = shutil.copytree(merged, tmp_path / "llama3")
    config = json.loads((model_dir / "config.json").read_text())
    config["rope_parameters"] = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    reader = GGUFReader(export_gguf(model_dir, tmp_path / "model.gguf", quantization="f16"))
    factors = next(t for t in reader.tensors if t.name == "rope_freqs.weight").data
    assert factors.shape == (8,)  # one per pair of the 16 dimensions of a head
    assert factors[0] == 1.0 and factors[-1] == 32.0, "high frequencies kept, the lowest scaled by the factor"
    assert np.all(np.diff(factors) >= 0)
    theta = reader.fields["llama.rope.freq_base"]
    assert float(theta.parts[theta.data[0]][0]) == 500000.0

    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="rope scaling 'yarn' is not converted"):
        export_gguf(model_dir, tmp_path / "yarn.gguf")


def test_modelfile_converts_a_llama3_template(tmp_path):
    template = (
        "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
        "{{ message['content'] }}<|eot_id|>{% endfor %}"
    )
    assert (
        write_modelfile(tmp_path, gguf_name="model.gguf", chat_template=template, eos_token="<|eot_id|>") == "Llama 3"
    )
    text = (tmp_path / "Modelfile").read_text()
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>" in text
    assert 'PARAMETER stop "<|eot_id|>"' in text
