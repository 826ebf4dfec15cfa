"""A team's datasets: receiving an upload (streamed, validated, stored), listing, reading
and deleting them. Behind the datasets API, OpenAI's files API and the pages."""

from __future__ import annotations

import errno
import functools
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

from anyio import to_thread
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.config import get_settings
from app.core.blobs import blob_store
from app.core.errors import DomainError, Forbidden, TooManyRequests
from app.core.tables import Dataset, Job, JobState
from app.datasets.upload import BodyPace, ReceivedUpload, UploadError, receive_upload
from app.datasets.validation import ValidationReport
from app.datasets.validator_process import ValidatorProcess

ACTIVE_STATES = (JobState.queued, JobState.running, JobState.cancelling)
PURPOSES = ("fine-tune",)


class DatasetRejected(Exception):
    """The uploaded file has errors; `report.errors` lists them with their line numbers."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(f"the file has {report.error_count} error(s)")
        self.report = report


class _UploadSlots:
    """Uploads in flight in this process, bounded in all and per user. Used from the event
    loop only, so plain counters suffice."""

    def __init__(self) -> None:
        self.total = 0
        self.per_user: Counter[int] = Counter()

    @contextmanager
    def hold(self, user_id: int, *, max_total: int, max_per_user: int) -> Iterator[None]:
        if self.total >= max_total:
            raise TooManyRequests(
                "the server is receiving too many uploads at once; try again shortly", retry_after_s=5
            )
        if self.per_user[user_id] >= max_per_user:
            raise TooManyRequests(
                f"you have {self.per_user[user_id]} uploads in progress; wait for one to finish", retry_after_s=5
            )
        self.total += 1
        self.per_user[user_id] += 1
        try:
            yield
        finally:
            self.total -= 1
            self.per_user[user_id] -= 1
            if not self.per_user[user_id]:
                del self.per_user[user_id]


_UPLOADS = _UploadSlots()


def dataset_key(team_id: int, sha256: str) -> str:
    return f"datasets/{team_id}/{sha256}.jsonl"


def _form_team_id(fields: dict[str, str]) -> int | None:
    value = fields.get("team_id", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise DomainError("team_id must be a number", 422)
    return int(value)


async def receive_dataset(
    session: Session,
    access: TeamAccess,
    *,
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
) -> tuple[Dataset, bool]:
    """Stream, validate and store an upload (a multipart form with the file in `file`, and
    optionally `name`, `purpose`, `team_id`). Returns (dataset, duplicate); raises
    DatasetRejected when the file has errors, DomainError for a bad request. Nothing is
    stored unless it returns."""
    if not any(role.can_write for role in access.roles.values()):
        raise Forbidden("viewers cannot upload datasets")
    settings = get_settings()
    validator = functools.partial(ValidatorProcess, max_row_chars=settings.max_row_chars)
    pace = BodyPace(idle_timeout_s=settings.upload_idle_timeout_s, min_bytes_per_s=settings.upload_min_bytes_per_s)
    # However slowly the body comes, the request holds no connection, transaction or lock meanwhile.
    await to_thread.run_sync(session.commit)
    try:
        with _UPLOADS.hold(
            access.user.id, max_total=settings.max_concurrent_uploads, max_per_user=settings.max_uploads_per_user
        ):
            async with receive_upload(
                chunks,
                blob_store(),
                content_type=content_type,
                content_length=content_length,
                max_bytes=settings.max_upload_bytes,
                validator_factory=validator,
                pace=pace,
            ) as upload:
                if not upload.report.ok:
                    raise DatasetRejected(upload.report)
                purpose = upload.fields.get("purpose") or PURPOSES[0]
                if purpose not in PURPOSES:
                    raise DomainError(f"purpose must be {' or '.join(PURPOSES)}")
                team_id = access.team_for_new(_form_team_id(upload.fields))
                store = functools.partial(
                    store_upload,
                    session,
                    upload=upload,
                    team_id=team_id,
                    user_id=access.user.id,
                    name=upload.fields.get("name"),
                    purpose=purpose,
                )
                return await to_thread.run_sync(store)
    except UploadError as error:
        raise DomainError(str(error), error.status_code) from None
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise DomainError("the server's disk is full: nothing was stored; tell an administrator", 507) from None


def _printable(text: str) -> str:
    """A name as it can be stored and shown: control characters (NUL included) left out."""
    return "".join(char for char in text if unicodedata.category(char) != "Cc").strip()


def _team_dataset_with(session: Session, team_id: int, sha256: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.team_id == team_id, Dataset.sha256 == sha256))


def store_upload(
    session: Session,
    *,
    upload: ReceivedUpload,
    team_id: int,
    user_id: int,
    name: str | None,
    purpose: str = "fine-tune",
) -> tuple[Dataset, bool]:
    """The team's dataset for a validated upload: the existing one when the team already has
    this exact content (then nothing new is stored), else a new row with its file in the store.
    Returns (dataset, duplicate). Commits, so that file and row exist together or not at all.

    The file's key is its content's hash, so two identical uploads racing each other write
    the same bytes to the same key: the one whose row loses the unique index is answered
    with the winner's dataset, and the file, which the winner's row points to, is kept."""
    if (existing := _team_dataset_with(session, team_id, upload.sha256)) is not None:
        return existing, True
    filename = _printable(upload.filename or "")[:255] or "dataset.jsonl"
    name = _printable(name or "")
    key = dataset_key(team_id, upload.sha256)
    upload.commit(key)
    dataset = Dataset(
        team_id=team_id,
        created_by_id=user_id,
        name=(name or filename).strip()[:200] or filename,
        filename=filename,
        purpose=purpose,
        format=upload.report.format,
        sha256=upload.sha256,
        size_bytes=upload.size,
        row_count=upload.report.rows,
        stats=upload.report.stats,
        line_index=upload.report.line_index,
        blob_key=key,
    )
    try:
        session.add(dataset)
        session.commit()
    except IntegrityError:
        session.rollback()
        if (winner := _team_dataset_with(session, team_id, upload.sha256)) is not None:
            return winner, True
        _delete_unless_referenced(session, key)
        raise
    except BaseException:
        session.rollback()
        _delete_unless_referenced(session, key)
        raise
    return dataset, False


def _delete_unless_referenced(session: Session, key: str) -> None:
    """Remove a file whose row could not be written, unless another row points to it."""
    if session.scalar(select(Dataset.id).where(Dataset.blob_key == key).limit(1)) is None:
        blob_store().delete(key)


def list_datasets(
    session: Session,
    access: TeamAccess,
    *,
    newest_first: bool = True,
    after_id: int | None = None,
    purpose: str | None = None,
    limit: int | None = None,
) -> list[Dataset]:
    """The caller's teams' datasets, newest first (or oldest first); `after_id` continues
    after that dataset in the same order."""
    query = access.scope(select(Dataset), Dataset).order_by(Dataset.id.desc() if newest_first else Dataset.id)
    if after_id is not None:
        query = query.where(Dataset.id < after_id if newest_first else Dataset.id > after_id)
    if purpose is not None:
        query = query.where(Dataset.purpose == purpose)
    return list(session.scalars(query.limit(limit) if limit else query))


def dataset_file(dataset: Dataset) -> Path:
    """The dataset's file on disk; Gone when it is no longer in the store."""
    return blob_store().existing_file(dataset.blob_key, "the dataset's file")


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
