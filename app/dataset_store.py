"""Datasets: storing an accepted upload and the rules for deleting one. Shared by the
datasets API and the OpenAI-compatible files API."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.datasets.upload import ReceivedUpload
from app.models import Dataset, Job, JobState
from app.storage import BlobStore

ACTIVE_STATES = (JobState.queued, JobState.running, JobState.cancelling)


def blob_store() -> BlobStore:
    return BlobStore(get_settings().blobs_path)


def dataset_key(team_id: int, sha256: str) -> str:
    return f"datasets/{team_id}/{sha256}.jsonl"


def store_upload(session: Session, *, upload: ReceivedUpload, team_id: int, user_id: int, name: str | None,
                 purpose: str = "fine-tune") -> tuple[Dataset, bool]:  # fmt: skip
    """The team's dataset for a validated upload: the existing one when the team already has
    this exact content (then nothing new is stored), else a new row with its file in the store.
    Returns (dataset, duplicate). Commits, so that file and row exist together or not at
    all: if the row cannot be written, the file is removed again."""
    existing = session.scalar(select(Dataset).where(Dataset.team_id == team_id, Dataset.sha256 == upload.sha256))
    if existing is not None:
        return existing, True
    filename = (upload.filename or "dataset.jsonl")[:255]
    key = dataset_key(team_id, upload.sha256)
    upload.commit(key)
    try:
        dataset = Dataset(team_id=team_id, created_by_id=user_id, name=(name or filename).strip()[:200] or filename,
                          filename=filename, purpose=purpose, format=upload.report.format, sha256=upload.sha256,
                          size_bytes=upload.size, row_count=upload.report.rows, stats=upload.report.stats,
                          line_index=upload.report.line_index, blob_key=key)  # fmt: skip
        session.add(dataset)
        session.commit()
    except BaseException:
        session.rollback()
        blob_store().delete(key)
        raise
    return dataset, False


def jobs_using(session: Session, dataset: Dataset) -> list[int]:
    """Ids of the unfinished jobs that train or evaluate on this dataset."""
    query = select(Job.id).where(
        or_(Job.dataset_id == dataset.id, Job.validation_dataset_id == dataset.id), Job.state.in_(ACTIVE_STATES)
    )
    return list(session.scalars(query))


def delete_dataset(session: Session, dataset: Dataset) -> None:
    """Delete the row, then the file (a file without a row would be invisible; the reverse
    would break previews). Callers check `jobs_using` first."""
    key = dataset.blob_key
    session.delete(dataset)
    session.flush()
    blob_store().delete(key)
