"""Which of a job's artifacts hold its trained weights: for the adapter download, the merged
model and chat."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Artifact, Job, JobState

FINAL_KINDS = ("adapter", "model")  # an adapter (lora, qlora), or all the weights (full)


def final_weights(session: Session, job: Job) -> Artifact | None:
    """The adapter (or full model) to hand out: the final one, or for a cancelled or failed
    job its latest checkpoint, which holds the adapter too."""
    final = session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.kind.in_(FINAL_KINDS)))
    if final is not None or job.state not in (JobState.cancelled, JobState.failed):
        return final
    return session.scalar(
        select(Artifact).where(Artifact.job_id == job.id, Artifact.kind == "checkpoint").order_by(Artifact.step.desc())
    )


def merged_model(session: Session, job: Job) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.kind == "merged"))
