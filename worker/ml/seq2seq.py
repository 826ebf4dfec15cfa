"""Sequence to sequence: an encoder-decoder (T5, BART...) reads the input and learns to write
the target. Rows → (input ids, label ids), batched by transformers' `DataCollatorForSeq2Seq`
(labels padded with -100, decoder inputs shifted from them by the model), and generation for
the metrics, the playground and a reloaded download."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.contract.formats import SourceTarget

PREDICT_BATCH = 16
MAX_NEW_TOKENS = 128


@dataclass
class Seq2SeqFeatures:
    input_ids: list[list[int]]
    labels: list[list[int]]
    truncated: int = 0  # rows whose input or target was cut to the max length

    def rows(self) -> dict[str, list]:
        return {"input_ids": self.input_ids, "labels": self.labels}


def seq2seq_features(tokenizer, examples: Sequence[SourceTarget], max_length: int) -> Seq2SeqFeatures:
    """Inputs and targets tokenized (each ends with the tokenizer's EOS), cut to `max_length` tokens."""
    sources = tokenizer([e.source for e in examples])["input_ids"]
    targets = tokenizer(text_target=[e.target for e in examples])["input_ids"]
    out = Seq2SeqFeatures([], [])
    for source, target in zip(sources, targets, strict=True):
        if len(source) > max_length or len(target) > max_length:
            out.truncated += 1
        out.input_ids.append(source[:max_length])
        out.labels.append(target[:max_length])
    return out


def generate(model, tokenizer, sources: Sequence[str], *, max_length: int = 512, max_new_tokens: int = MAX_NEW_TOKENS):
    """The model's greedy output for each input (deterministic: the metrics and a reloaded
    download must agree)."""
    import torch

    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(sources), PREDICT_BATCH):
        encoded = tokenizer(
            list(sources[start : start + PREDICT_BATCH]),
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        encoded.pop("token_type_ids", None)
        with torch.no_grad():
            generated = model.generate(
                **{key: value.to(device) for key, value in encoded.items()},
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
            )
        out += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return [text.strip() for text in out]
