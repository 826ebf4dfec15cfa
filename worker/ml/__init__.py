"""tunelab's training library: full, LoRA and QLoRA fine-tuning of a spec on a dataset file.

    from worker.ml import MemoryReporter, train
    result = train(spec, train_file=Path("data.jsonl"), output_dir=Path("runs/42"),
                   reporter=MemoryReporter(), models_dir=Path("/models"))

`train(spec, *, train_file, output_dir, reporter, eval_file=None, models_dir=None, resume=True,
dataset_name=None, start_from=None, start_from_name=None, trackers=None)`
writes checkpoints to `output_dir/checkpoints/step-N/` (a rerun resumes from the latest),
and the adapter or weights, tokenizer and README.md model card to `output_dir/final/`
(plus `output_dir/merged/` when the spec asks). `merge_adapter(base_model, adapter_dir,
output_dir, *, models_dir=None, on_progress=None)` merges an adapter into its base.
`evaluate_on(spec, *, weights, eval_file, reporter, train_file=None, models_dir=None)` evaluates
trained weights on another dataset. `worker.ml.inference` chats with a base or fine-tuned model (`ModelCache`, `generate_chat`).

The run is `training_run.py` (with `arguments.py` and `callbacks.py`); what it leaves,
`saving.py`; the model card, `card.py` and `templates/model_card.md`. TensorBoard event files
always, and the spec's `integrations` (W&B, MLflow), go through `trackers.py` into
`output_dir/tracking/`; `TrackerSettings` holds what the worker decides (keys, default servers).

Importing this package is cheap: torch and transformers load on the first call.
"""

from typing import TYPE_CHECKING

from .errors import (
    ConfigurationError,
    DatasetError,
    DiskFullError,
    InferenceError,
    ModelNotFoundError,
    OutOfMemoryError,
    TrainingError,
)
from .reporting import MemoryReporter, Reporter
from .result import TrainResult

if TYPE_CHECKING:
    from .dataset_evaluation import evaluate_on
    from .saving import merge_adapter
    from .trackers import TrackerSettings
    from .training_run import train

__all__ = [
    "ConfigurationError",
    "DatasetError",
    "DiskFullError",
    "InferenceError",
    "MemoryReporter",
    "ModelNotFoundError",
    "OutOfMemoryError",
    "Reporter",
    "TrackerSettings",
    "TrainResult",
    "TrainingError",
    "evaluate_on",
    "merge_adapter",
    "train",
]


def __getattr__(name: str):
    if name == "train":
        from .training_run import train

        return train
    if name == "TrackerSettings":
        from .trackers import TrackerSettings

        return TrackerSettings
    if name == "evaluate_on":
        from .dataset_evaluation import evaluate_on

        return evaluate_on
    if name == "merge_adapter":
        from .saving import merge_adapter

        return merge_adapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
