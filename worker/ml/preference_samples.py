"""Sample answers for preference runs (DPO, ORPO, KTO): the held-out prompts, with the chosen
answer as the reference, go to the same `samples.py` as supervised runs.

The rows are tokenized as TRL's preference trainers tokenize them: message rows through the
tokenizer's chat template (the prompt with the generation prompt, then prompt and answer
together, the answer starting where the two part), plain-text rows as the prompt and the
prompt followed by the answer. KTO's answers marked bad are no reference and are left out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from app.contract.spec import TrainingSpec

from .data import IGNORE_INDEX, Examples, Task
from .reporting import Reporter
from .samples import samples_callbacks


def _ids(tokenizer, content: str | list[dict[str, Any]], tools, *, add_generation_prompt: bool = False) -> list[int]:
    if isinstance(content, str):
        return list(tokenizer(text=content)["input_ids"])
    encoded = tokenizer.apply_chat_template(
        content, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def reference_examples(rows: Sequence[dict[str, Any]], tokenizer, max_length: int) -> Examples:
    """The preference rows as a causal LM's examples: the prompt, then the chosen answer (a
    KTO row's answer marked good) as its trained tokens, cut to `max_length`."""
    out = Examples(task=Task.causal_lm, input_ids=[], labels=[], rows=len(rows))
    for row in rows:
        answer = row["chosen"] if "chosen" in row else (row["completion"] if row.get("label") else None)
        if answer is None:
            continue
        tools = row.get("tools")
        tools = json.loads(tools) if isinstance(tools, str) else tools
        prompt_ids = _ids(tokenizer, row["prompt"], tools, add_generation_prompt=True)
        full_ids = _ids(tokenizer, row["prompt"] + answer, tools)[:max_length]
        start = _common_prefix(prompt_ids, full_ids)
        if start == 0 or start >= len(full_ids):
            out.dropped += 1
            continue
        out.input_ids.append(full_ids)
        out.labels.append([IGNORE_INDEX] * start + full_ids[start:])
    return out


def preference_samples_callbacks(spec: TrainingSpec, tokenizer, evaluation_rows, reporter: Reporter) -> list:
    """The samples callback of a preference run that evaluates and asks for samples; none otherwise."""
    if not spec.eval_samples or not evaluation_rows:
        return []
    examples = reference_examples(evaluation_rows, tokenizer, spec.max_seq_length)
    return samples_callbacks(spec, tokenizer, Task.causal_lm, examples, None, reporter)
