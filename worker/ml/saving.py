"""What a finished run leaves: the adapter or weights with tokenizer and model card, and the merged model."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .card import model_card
from .data import Task
from .loading import (
    CLASS_NAMES_FILE,
    LABELLED_TASKS,
    auto_model_class,
    classifier_kwargs,
    read_class_names,
    resolve_model,
    saved_task,
    write_class_names,
)

if TYPE_CHECKING:
    from transformers import Trainer

    from .training_run import Prepared


def replace_dir(staging: Path, target: Path) -> Path:
    """Move a fully written `staging` directory to `target`, replacing what was there."""
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def save_final(
    trainer: Trainer, prepared: Prepared, final_dir: Path, dataset_name: str, metrics: Mapping[str, float]
) -> Path:
    """The trained adapter or weights, the tokenizer, the class names of a classifier and the model card,
    written aside and moved to `final_dir` whole. In a run of several processes every rank takes
    part in gathering the weights (FSDP) and rank 0 alone writes one ordinary folder."""
    from . import distributed

    staging = final_dir.with_name(final_dir.name + ".partial")
    if distributed.is_main_process():
        shutil.rmtree(staging, ignore_errors=True)
    distributed.barrier()
    trainer.save_model(str(staging))
    if not distributed.is_main_process():
        distributed.barrier()  # until rank 0 has moved the folder into place
        return final_dir
    prepared.tokenizer.save_pretrained(staging)
    if prepared.class_names:
        write_class_names(staging, prepared.class_names)
    (staging / "README.md").write_text(
        model_card(
            prepared.spec,
            dataset_name=dataset_name,
            data_summary=prepared.data_summary(),
            metrics=metrics,
            class_names=prepared.class_names,
            task=getattr(prepared, "task", Task.causal_lm),  # a preference run trains a causal LM
        )
    )
    replace_dir(staging, final_dir)
    distributed.barrier()
    return final_dir


def merge_adapter(
    base_model: str,
    adapter_dir: Path,
    output_dir: Path,
    *,
    models_dir: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Path:
    """Base model + PEFT adapter → one model directory (with the adapter's tokenizer and model card).

    The base is loaded unquantized in its own dtype (a qlora adapter merges into the
    full-precision weights), on the GPU when there is one. `on_progress` hears what it is
    doing. The result is written aside and moved into place whole, so two merges of the same
    adapter at once cannot mix their files.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    say = on_progress or (lambda _message: None)
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    kwargs: dict = {"dtype": "auto", "device_map": {"": 0} if torch.cuda.is_available() else None}
    task = saved_task(adapter_dir)
    auto_class = auto_model_class(task)
    if task in LABELLED_TASKS:
        kwargs.update(classifier_kwargs(read_class_names(adapter_dir), tokenizer.pad_token_id))
    say(f"Loading the base model {base_model}")
    base = auto_class.from_pretrained(resolve_model(base_model, models_dir), **kwargs)
    say("Merging the adapter into the base weights")
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    say("Saving the merged model")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.partial-"))
    try:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name in ("README.md", CLASS_NAMES_FILE):
            if (adapter_dir / name).exists():
                shutil.copyfile(adapter_dir / name, staging / name)
        return replace_dir(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
