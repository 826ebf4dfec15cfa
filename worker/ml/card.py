"""The README.md model card saved next to the trained weights."""

from __future__ import annotations

import json
from collections.abc import Mapping

from app.contract.spec import TrainingSpec


def model_card(
    spec: TrainingSpec,
    *,
    dataset_name: str,
    data_summary: Mapping[str, object],
    metrics: Mapping[str, float],
    class_names: list[str] | None = None,
) -> str:
    adapter = spec.uses_adapter
    front_matter = [
        "---",
        f"base_model: {spec.base_model}",
        f"library_name: {'peft' if adapter else 'transformers'}",
        "tags:",
        "- tunelab",
        f"- {spec.method.value}",
        "---",
        "",
    ]
    title = f"# {spec.method.value} fine-tune of {spec.base_model}"
    if adapter:
        load = (
            "```python\n"
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")\n'
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
            "```"
        )
        if class_names:
            load = load.replace("AutoPeftModelForCausalLM", "AutoPeftModelForSequenceClassification")
    else:
        auto = "AutoModelForSequenceClassification" if class_names else "AutoModelForCausalLM"
        load = (
            "```python\n"
            f"from transformers import {auto}, AutoTokenizer\n\n"
            f'model = {auto}.from_pretrained("path/to/this/folder")\n'
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
            "```"
        )
    lines = [
        *front_matter,
        title,
        "",
        f"Trained with tunelab ({'an adapter in PEFT format' if adapter else 'all weights'}).",
        "",
        "## Data",
        "",
        f"- Dataset: {dataset_name}",
        *(f"- {key.replace('_', ' ').capitalize()}: {value}" for key, value in data_summary.items()),
    ]
    if class_names:
        lines.append(f"- Classes: {', '.join(class_names)}")
    lines += ["", "## Results", ""]
    lines += [f"- {name}: {value:.4g}" for name, value in metrics.items()] or ["- (no metrics)"]
    lines += [
        "",
        "## Hyperparameters",
        "",
        "```json",
        json.dumps(spec.model_dump(mode="json"), indent=2),
        "```",
        "",
        "## Use",
        "",
        load,
        "",
    ]
    return "\n".join(lines)
