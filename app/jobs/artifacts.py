"""What a job leaves behind (checkpoints, the adapter or weights, the merged model), recorded
in one place, and which of them hold its trained weights (for downloads, merging and chat)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import false, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.blobs import BlobStore, directory_size
from app.core.errors import NotFound
from app.core.tables import Artifact, ArtifactKind, Job, JobState
from app.webhooks.events import record_job_event

FINAL_KINDS = (ArtifactKind.adapter, ArtifactKind.model)  # an adapter (lora, qlora), or all the weights (full)


def job_output_key(job_id: int) -> str:
    """Where a job's checkpoints and outputs live in the blob store."""
    return f"jobs/{job_id}"


def record_artifact(
    session: Session,
    store: BlobStore,
    *,
    job_id: int,
    kind: ArtifactKind,
    step: int,
    path: Path,
    meta: dict[str, Any] | None = None,
) -> Artifact:
    """Record a folder the job wrote into the store. Idempotent: a (job, kind, step) already
    recorded, by this process or by a racing one, is answered as it is."""
    query = select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == kind, Artifact.step == step)
    if (existing := session.scalar(query)) is not None:
        return existing
    artifact = Artifact(
        job_id=job_id,
        kind=kind,
        step=step,
        blob_key=store.key_of(path),
        size_bytes=directory_size(path),
        meta=meta or {},
    )
    try:
        with session.begin_nested():
            session.add(artifact)
    except IntegrityError:  # a second writer recorded it at the same moment
        return session.scalar(query)
    if kind == ArtifactKind.checkpoint and (job := session.get(Job, job_id)) is not None:
        record_job_event(
            session, team_id=job.team_id, job_id=job_id, event_type="fine_tuning.job.checkpoint", step=step
        )
    return artifact


def record_tracking_files(session: Session, store: BlobStore, *, job_id: int, step: int, path: Path) -> Artifact:
    """Record the job's experiment-tracking folder (TensorBoard event files, an offline W&B run).
    One row per job: a resumed run adds its files to the same folder, and the row follows it."""
    query = select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == ArtifactKind.tracking)
    if (existing := session.scalar(query)) is None:
        return record_artifact(session, store, job_id=job_id, kind=ArtifactKind.tracking, step=step, path=path)
    existing.step = max(existing.step, step)
    existing.size_bytes = directory_size(path)
    return existing


def forget_rotated_checkpoints(session: Session, store: BlobStore, job_id: int, *, keep_step: int) -> None:
    """Checkpoints the trainer rotated away are no longer downloadable: drop their rows."""
    for artifact in checkpoints(session, job_id):
        if artifact.step != keep_step and not store.exists(artifact.blob_key):
            session.delete(artifact)


def checkpoints(session: Session, job_id: int, *, newest_first: bool = False) -> list[Artifact]:
    query = select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == ArtifactKind.checkpoint)
    return list(session.scalars(query.order_by(Artifact.step.desc() if newest_first else Artifact.step)))


def checkpoints_before(session: Session, job_id: int, *, before_id: int | None, limit: int) -> list[Artifact]:
    """A page of the job's checkpoints, newest first; `before_id` (a checkpoint's id) pages
    towards older ones, and one that is not this job's checkpoint gives an empty page."""
    query = select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == ArtifactKind.checkpoint)
    query = query.order_by(Artifact.step.desc()).limit(limit)
    if before_id is not None:
        previous = session.scalar(select(Artifact.step).where(Artifact.id == before_id, Artifact.job_id == job_id))
        query = query.where(Artifact.step < previous if previous is not None else false())
    return list(session.scalars(query))


def artifact_of(session: Session, job: Job, artifact_id: int) -> Artifact:
    """One of the job's artifacts; NotFound for any other id."""
    artifact = session.scalar(select(Artifact).where(Artifact.id == artifact_id, Artifact.job_id == job.id))
    if artifact is None:
        raise NotFound("artifact not found")
    return artifact


def all_artifacts(session: Session, job_id: int) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.id)))


def final_weights(session: Session, job: Job) -> Artifact | None:
    """The adapter (or full model) to hand out: the final one, or for a cancelled, failed or
    paused job its latest checkpoint, which holds the adapter too."""
    final = session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.kind.in_(FINAL_KINDS)))
    if final is not None or job.state not in (JobState.cancelled, JobState.failed, JobState.paused):
        return final
    latest = checkpoints(session, job.id, newest_first=True)
    return latest[0] if latest else None


def merged_model(session: Session, job: Job) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.kind == ArtifactKind.merged))


def archive_name(job: Job, artifact: Artifact) -> str:
    """The download's file and top folder name: tunelab-job-7-adapter, tunelab-job-7-checkpoint-step-40."""
    suffix = f"-step-{artifact.step}" if artifact.kind == ArtifactKind.checkpoint else ""
    return f"tunelab-job-{job.id}-{artifact.kind.value}{suffix}"
