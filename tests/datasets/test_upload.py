"""receive_upload: the multipart body streamed into a staged blob, hashed and validated; nothing
left behind on any failure."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import httpx
import psutil
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.core.blobs import BlobStore
from app.datasets.upload import UploadError, receive_upload
from app.datasets.validation import DatasetValidator

DATA = Path(__file__).parent / "data"
BOUNDARY = "tunelab-test-boundary"


class Server:
    """A one-route app around receive_upload that records what the block saw."""

    def __init__(
        self, root: Path, *, max_bytes: int = 1 << 20, commit: bool = True, fail_inside: bool = False, **options
    ):
        self.store = BlobStore(root)
        self.seen = None
        self.staged_exists_inside = None

        async def upload(request: Request) -> JSONResponse:
            try:
                headers = request.headers
                async with receive_upload(
                    request.stream(),
                    self.store,
                    content_type=headers.get("content-type"),
                    content_length=headers.get("content-length"),
                    max_bytes=max_bytes,
                    **options,
                ) as got:
                    self.seen = got
                    self.staged_exists_inside = got.staged_path.exists()
                    if fail_inside:
                        raise RuntimeError("the database is down")
                    if commit and got.report.ok:
                        got.commit(f"datasets/{got.sha256}.jsonl")
                    return JSONResponse({"ok": got.report.ok}, status_code=201)
            except UploadError as error:
                return JSONResponse({"detail": str(error)}, status_code=error.status_code)

        self.app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])

    def post(self, **request) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.post("/upload", **request)

        return asyncio.run(send())

    def staged_files(self) -> list[Path]:
        staging = self.store.root / ".staging"
        return list(staging.iterdir()) if staging.exists() else []


def multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart/form-data body from (field name, filename or None, content) parts."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def chunked(body: bytes, size: int):
    async def stream():
        for start in range(0, len(body), size):
            yield body[start : start + size]

    return stream()


FORM = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def test_a_good_file_is_staged_hashed_validated_and_committed(tmp_path):
    content = (DATA / "chat.jsonl").read_bytes()
    server = Server(tmp_path)
    body = multipart(
        ("name", None, b"Marv, sarcastic"),
        ("file", "C:\\Users\\me\\chat.jsonl", content),
        ("purpose", None, b"fine-tune"),
    )
    response = server.post(content=chunked(body, 1000), headers=FORM)

    assert response.status_code == 201
    got = server.seen
    assert (got.sha256, got.size, got.filename) == (hashlib.sha256(content).hexdigest(), len(content), "chat.jsonl")
    assert got.fields == {"name": "Marv, sarcastic", "purpose": "fine-tune"}
    assert (got.report.format, got.report.rows, got.report.error_count) == ("chat", 6, 0)
    assert server.staged_exists_inside
    assert (tmp_path / "datasets" / f"{got.sha256}.jsonl").read_bytes() == content
    assert server.staged_files() == []


def test_a_file_with_errors_reports_them_and_leaves_nothing(tmp_path):
    server = Server(tmp_path)
    body = multipart(("file", "bad.jsonl", (DATA / "chat_with_errors.jsonl").read_bytes()))
    response = server.post(content=body, headers=FORM)
    assert response.json() == {"ok": False}
    assert server.seen.report.error_count == 15
    assert server.seen.report.error_body()["errors"][0] == {
        "line": 1,
        "message": "the file starts with a UTF-8 byte order mark (BOM): save the file as UTF-8 without BOM",
        "count": 1,
        "lines": [1],
    }
    assert server.staged_files() == [] and not (tmp_path / "datasets").exists()


def test_an_error_inside_the_block_leaves_nothing(tmp_path):
    server = Server(tmp_path, fail_inside=True)
    response = server.post(content=multipart(("file", "chat.jsonl", (DATA / "chat.jsonl").read_bytes())), headers=FORM)
    assert response.status_code == 500
    assert server.staged_exists_inside and server.staged_files() == []


def test_a_file_over_the_limit_is_refused_while_streaming(tmp_path):
    read = []

    def body():
        async def stream():
            head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
            yield head.encode()
            for _ in range(100):
                read.append(1)
                yield b'{"text": "' + b"x" * 10_000 + b'"}\n'
            yield f"\r\n--{BOUNDARY}--\r\n".encode()

        return stream()

    server = Server(tmp_path, max_bytes=50 * 1024)
    response = server.post(content=body(), headers=FORM)
    assert response.status_code == 413
    assert response.json() == {"detail": "the file is larger than the upload limit of 50 KiB"}
    assert len(read) < 10  # it stopped reading soon after the limit
    assert server.staged_files() == []
    assert psutil.Process().children() == []  # nor a validator process


def test_a_declared_length_over_the_limit_is_refused_before_reading(tmp_path):
    server = Server(tmp_path, max_bytes=2 * 1024**3)
    response = server.post(content=b"", headers={**FORM, "Content-Length": str(3 * 1024**3)})
    assert response.status_code == 413
    assert response.json() == {"detail": "the file is larger than the upload limit of 2 GiB"}


@pytest.mark.parametrize(
    ("headers", "body", "detail"),
    [
        ({"Content-Type": "application/json"}, b"{}", 'send the dataset as multipart/form-data with a "file" field'),
        ({"Content-Type": "multipart/form-data"}, b"", "the multipart/form-data content type has no boundary"),
        (FORM, multipart(("name", None, b"x")), 'the form has no "file" field: send the dataset file in it'),
        (
            FORM,
            multipart(("file", "a.jsonl", b'{"text": "a"}\n'))[:-20],
            "the body ended before the end of the multipart form: was the upload interrupted?",
        ),
        (
            FORM,
            multipart(("file", "a.jsonl", b'{"text": "a"}\n'), ("file", "b.jsonl", b'{"text": "b"}\n')),
            'the form has more than one "file": send one file per upload',
        ),
        (
            FORM,
            multipart(("validation", "v.jsonl", b'{"text": "a"}\n'), ("file", "a.jsonl", b'{"text": "a"}\n')),
            'unexpected file in the field "validation": send the dataset in "file"',
        ),
        (FORM, multipart(("name", None, b"x" * 70_000)), 'the field "name" is longer than 64 KiB'),
        (FORM, b"--" + BOUNDARY.encode() + b"\r\nbroken header line\r\n\r\n", "the multipart body is malformed: "),
    ],
)
def test_malformed_uploads_are_refused_and_leave_nothing(tmp_path, headers, body, detail):
    server = Server(tmp_path)
    response = server.post(content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["detail"].startswith(detail)
    assert server.staged_files() == []


def test_validation_runs_off_the_event_loop(tmp_path):
    """A slow validator does not stop the event loop: a ticker keeps ticking during the upload."""

    class SlowValidator(DatasetValidator):
        def feed(self, chunk: bytes) -> None:
            time.sleep(0.05)  # blocking, as parsing a big batch is
            super().feed(chunk)

    server = Server(tmp_path, validator_factory=SlowValidator, max_bytes=10 << 20)
    content = b'{"text": "' + b"y" * 100 + b'"}\n'
    body = multipart(("file", "t.jsonl", content * 30_000))  # ~3 MiB: three batches

    async def scenario() -> tuple[int, int]:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/upload", content=chunked(body, 64 * 1024), headers=FORM)
        task.cancel()
        return response.status_code, ticks

    status, ticks = asyncio.run(scenario())
    assert status == 201 and server.seen.report.rows == 30_000
    assert ticks >= 10  # ~150 ms of blocking feeds: the loop kept running meanwhile


def test_an_empty_file_is_received_and_reported_empty(tmp_path):
    server = Server(tmp_path)
    response = server.post(content=multipart(("file", "empty.jsonl", b"")), headers=FORM)
    assert response.json() == {"ok": False}
    assert (server.seen.size, server.seen.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert server.seen.report.errors == [{"line": None, "message": "the file is empty", "count": 1, "lines": [None]}]
    assert server.staged_files() == []


def test_a_body_slower_than_the_minimum_rate_is_cut_off_once_its_grace_is_over():
    from app.datasets.upload import BodyPace, UploadStalled, paced

    async def trickle():
        for _ in range(10):
            await asyncio.sleep(0.05)
            yield b"x"

    async def read(pace: BodyPace) -> bytes:
        return b"".join([chunk async for chunk in paced(trickle(), pace)])

    assert asyncio.run(read(BodyPace(idle_timeout_s=5, min_bytes_per_s=1000, grace_s=60))) == b"x" * 10
    with pytest.raises(UploadStalled, match="too slow"):
        asyncio.run(read(BodyPace(idle_timeout_s=5, min_bytes_per_s=1000, grace_s=0.2)))
    with pytest.raises(UploadStalled, match="sent nothing for 0.01 s"):
        asyncio.run(read(BodyPace(idle_timeout_s=0.01, min_bytes_per_s=0, grace_s=60)))
