"""Receiving a dataset upload: a multipart/form-data body streamed into the blob store.

The body is read chunk by chunk (the route passes `request.stream()`) and parsed with python-multipart's push parser as it
arrives, so memory holds only a couple of batches (1 MiB each) whatever the file size. The
`file` field's bytes go, batch by batch, to two worker threads: one hashes (sha256) and writes
them to a staged blob, the other feeds them to the validator, by default a child process
(validator_process.py). hashlib, file and pipe writes release the GIL, so the event loop keeps
reading the next batch and serving other requests meanwhile. One batch is in flight at a time:
when the workers fall behind, reading pauses, and TCP slows the client down.

    async with receive_upload(request.stream(), store, content_type=..., content_length=..., max_bytes=...) as upload:
        if not upload.report.ok:
            return JSONResponse(upload.report.error_body(), status_code=422)
        upload.commit(f"datasets/{upload.sha256}.jsonl")
        ...

The staged file is deleted when the block exits, unless it was committed; on every failure
(too large, malformed, client gone, an error in the block) nothing is left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol, Self

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.blobs import BlobStore

from .validation import ValidationReport
from .validator_process import ValidatorProcess

FILE_FIELD = "file"
BATCH_BYTES = 1 << 20
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
# Room in a Content-Length for the boundaries, the part headers and the text fields: a body
# longer than max_bytes plus this holds a file over the limit.
FORM_OVERHEAD_BYTES = MAX_FIELDS * (MAX_FIELD_BYTES + 1024)


class Validator(Protocol):
    """What receive_upload needs of a validator: DatasetValidator, or ValidatorProcess."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> ValidationReport: ...

    def close(self) -> None: ...


class UploadError(Exception):
    status_code = 400


class UploadTooLarge(UploadError):
    status_code = 413

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the file is larger than the upload limit of {_size(max_bytes)}")
        self.max_bytes = max_bytes


class UploadMalformed(UploadError):
    status_code = 400


class UploadStalled(UploadError):
    status_code = 408


@dataclass(frozen=True)
class BodyPace:
    """How slowly a client may send: a body that sends nothing for `idle_timeout_s`, or less
    than `min_bytes_per_s` on average once `grace_s` have passed, is cut off (a slow-loris
    client would otherwise hold its upload slot, its staged file and a validator for ever)."""

    idle_timeout_s: float = 60.0
    min_bytes_per_s: float = 10_240
    grace_s: float = 30.0


async def paced(chunks: AsyncIterator[bytes], pace: BodyPace) -> AsyncIterator[bytes]:
    """The body's chunks, raising UploadStalled when the client falls below `pace`."""
    started = time.monotonic()
    received = 0
    iterator = aiter(chunks)
    while True:
        try:
            async with asyncio.timeout(pace.idle_timeout_s):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadStalled(f"the upload sent nothing for {pace.idle_timeout_s:g} s; try again") from None
        received += len(chunk)
        elapsed = time.monotonic() - started
        if elapsed > pace.grace_s and received / elapsed < pace.min_bytes_per_s:
            raise UploadStalled(
                f"the upload is too slow ({received / elapsed / 1024:.1f} KiB/s after {elapsed:.0f} s; "
                f"at least {pace.min_bytes_per_s / 1024:g} KiB/s is needed)"
            )
        yield chunk


@dataclass
class ReceivedUpload:
    staged_path: Path  # deleted when the receive_upload block exits, unless committed
    sha256: str
    size: int
    filename: str | None  # as the browser named it, without any directory
    fields: dict[str, str]  # the other (text) fields of the form: name, purpose...
    report: ValidationReport
    _store: BlobStore = field(repr=False)

    def commit(self, key: str) -> Path:
        """Move the file into the store under `key`, where it outlives the block."""
        return self._store.commit(self.staged_path, key)


@asynccontextmanager
async def receive_upload(
    chunks: AsyncIterator[bytes],
    store: BlobStore,
    *,
    content_type: str | None,
    content_length: str | None,
    max_bytes: int,
    validator_factory: Callable[[], Validator] = ValidatorProcess,
    pace: BodyPace | None = None,
) -> AsyncIterator[ReceivedUpload]:
    """Stream the form's `file` field into a staged blob, hashing and validating it on the way.
    `chunks` is the request body; `content_type` and `content_length` its headers.

    Raises UploadTooLarge as soon as the file passes `max_bytes` (or when Content-Length says it
    will), and UploadMalformed for a body that is not a complete multipart form with a file.
    `validator_factory` makes the validator: by default one in a child process (see
    validator_process.py); pass e.g. `functools.partial(ValidatorProcess, max_row_chars=...)`.
    With `pace`, a client that sends too slowly gets UploadStalled.
    """
    form = _FormReader(_boundary(content_type), max_bytes)
    declared = content_length or ""
    if declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD_BYTES:
        raise UploadTooLarge(max_bytes)
    with store.staging("upload") as (handle, staged_path):
        async with _Workers(handle, validator_factory()) as workers:
            async for chunk in paced(chunks, pace) if pace else chunks:
                form.write(chunk)
                if form.file_bytes_buffered >= BATCH_BYTES:
                    await workers.submit(form.take_file_bytes())
            form.check_complete()
            await workers.submit(form.take_file_bytes())
            sha256, report = await workers.finish()
        yield ReceivedUpload(
            staged_path=staged_path,
            sha256=sha256,
            size=form.file_size,
            filename=form.filename,
            fields=form.fields,
            report=report,
            _store=store,
        )


def _boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise UploadMalformed(f'send the dataset as multipart/form-data with a "{FILE_FIELD}" field')
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadMalformed("the multipart/form-data content type has no boundary")
    return boundary


class _Workers:
    """Two threads fed one batch at a time: hash + write to the staged file, and validation.
    The validator is theirs: they close it."""

    def __init__(self, handle: BinaryIO, validator: Validator) -> None:
        self._handle = handle
        self._hasher = hashlib.sha256()
        self._validator = validator
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="upload")
        self._in_flight: list[Future[Any]] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # On failure or cancellation a batch may still be in the threads: let it finish (a few
        # milliseconds, blocking) before the staged file is deleted and the validator closed.
        self._executor.shutdown(wait=True)
        self._validator.close()

    def _store_batch(self, batch: bytes) -> None:
        self._hasher.update(batch)
        self._handle.write(batch)

    async def _settle(self) -> None:
        for job in self._in_flight:
            await asyncio.wrap_future(job)
        self._in_flight = []

    async def submit(self, batch: bytes) -> None:
        """Wait for the previous batch, then start this one and return at once."""
        await self._settle()
        if batch:
            self._in_flight = [
                self._executor.submit(self._store_batch, batch),
                self._executor.submit(self._validator.feed, batch),
            ]

    def _flush(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    async def finish(self) -> tuple[str, ValidationReport]:
        """Flush the staged file to disk while the validation finishes; the sha256 and the report."""
        await self._settle()
        self._in_flight = [self._executor.submit(self._flush), self._executor.submit(self._validator.finish)]
        report = await asyncio.wrap_future(self._in_flight[1])
        await self._settle()
        return self._hasher.hexdigest(), report


class _FormReader:
    """The multipart parser's callbacks: the file field's bytes are buffered for the workers,
    the small text fields are collected, and the limits are enforced as the bytes arrive."""

    def __init__(self, boundary: bytes, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self.file_size = 0
        self.file_bytes_buffered = 0
        self._file_pieces: list[bytes] = []
        self._seen_file = False
        self._complete = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part: str | None = None  # FILE_FIELD or a text field's name
        self._field_value = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as error:
            raise UploadMalformed(f"the multipart body is malformed: {error}") from None

    def take_file_bytes(self) -> bytes:
        batch = b"".join(self._file_pieces)
        self._file_pieces.clear()
        self.file_bytes_buffered = 0
        return batch

    def check_complete(self) -> None:
        if not self._complete:
            raise UploadMalformed("the body ended before the end of the multipart form: was the upload interrupted?")
        if not self._seen_file:
            raise UploadMalformed(f'the form has no "{FILE_FIELD}" field: send the dataset file in it')

    # -- parser callbacks ----------------------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._header_name = self._header_value = b""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise UploadMalformed("a part of the form has no field name")
        if name == FILE_FIELD:
            if self._seen_file:
                raise UploadMalformed(f'the form has more than one "{FILE_FIELD}": send one file per upload')
            self._seen_file = True
            filename = options.get(b"filename")
            if filename:
                self.filename = PurePosixPath(filename.decode("utf-8", "replace").replace("\\", "/")).name
        elif b"filename" in options:
            raise UploadMalformed(f'unexpected file in the field "{name}": send the dataset in "{FILE_FIELD}"')
        elif len(self.fields) >= MAX_FIELDS:
            raise UploadMalformed(f"the form has more than {MAX_FIELDS} fields")
        self._part = name
        self._field_value = bytearray()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == FILE_FIELD:
            self.file_size += end - start
            if self.file_size > self.max_bytes:
                raise UploadTooLarge(self.max_bytes)
            self._file_pieces.append(data[start:end])
            self.file_bytes_buffered += end - start
        else:
            self._field_value += data[start:end]
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise UploadMalformed(f'the field "{self._part}" is longer than {_size(MAX_FIELD_BYTES)}')

    def _on_part_end(self) -> None:
        if self._part is not None and self._part != FILE_FIELD:
            try:
                self.fields[self._part] = self._field_value.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadMalformed(f'the field "{self._part}" is not UTF-8 text') from None
        self._part = None

    def _on_end(self) -> None:
        self._complete = True


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"
