"""What a call to `train` hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

COMPLETED = "completed"
STOPPED = "stopped"


@dataclass
class TrainResult:
    status: str  # "completed", or "stopped" when the reporter asked to stop
    step: int  # optimizer steps done, counting those before a resume
    total_steps: int
    metrics: dict[str, float] = field(default_factory=dict)  # last train loss, eval_loss, epoch, ...
    trained_tokens: int = 0  # real (non-pad) tokens seen, counting those before a resume
    truncated_rows: int = 0  # rows cut to max_seq_length (train and eval data)
    output_dir: Path | None = None
    final_dir: Path | None = None  # adapter or full weights + tokenizer + README.md; None when stopped
    merged_dir: Path | None = None  # base model with the adapter merged in, when the spec asks for it
    checkpoint_dir: Path | None = None  # the latest checkpoint, from which a rerun resumes

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED
