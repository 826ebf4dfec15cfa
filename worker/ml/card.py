"""The README.md model card saved next to the trained weights, rendered from `templates/model_card.md`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from app.contract.spec import TrainingSpec

from .data import Task
from .loading import AUTO_CLASSES

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # markdown, not HTML
)


def model_card(
    spec: TrainingSpec,
    *,
    dataset_name: str,
    data_summary: Mapping[str, object],
    metrics: Mapping[str, float],
    class_names: list[str] | None = None,
    task: Task = Task.causal_lm,
) -> str:
    """`class_names`: a classifier's classes, or a token classifier's tags; `task` picks the
    transformers class the card loads the weights with."""
    return _templates.get_template("model_card.md").render(
        spec=spec,
        adapter=spec.uses_adapter,
        dataset_name=dataset_name,
        data_summary=data_summary,
        metrics=metrics,
        class_names=class_names,
        auto_class=AUTO_CLASSES[task],
        hyperparameters=json.dumps(spec.model_dump(mode="json"), indent=2),
    )
