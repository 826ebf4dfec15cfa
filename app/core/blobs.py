"""The blob store: datasets, checkpoints and adapters, under one root directory. Every
part of tunelab gets it from `blob_store()`.

Keys are relative POSIX paths built by tunelab itself (never taken from user input as-is);
`path()` still refuses anything that would leave the root, so a bug cannot become a path
traversal. Writes go to a temporary file in the same directory and are renamed into place,
so a reader never sees half a file and a failed write leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from app.config import get_settings
from app.core.errors import Gone

_KEY = re.compile(r"^[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*$")


class InvalidKey(ValueError):
    pass


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        """The local path of a key; raises InvalidKey for anything that could escape the root."""
        if not _KEY.fullmatch(key) or any(part in (".", "..") for part in key.split("/")):
            raise InvalidKey(f"invalid blob key: {key!r}")
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise InvalidKey(f"invalid blob key: {key!r}")
        return path

    def key_of(self, path: Path) -> str:
        """The key of a file or directory inside the store (the inverse of `path`)."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def existing_file(self, key: str, what: str = "the file") -> Path:
        """The local path of a stored file; Gone (naming `what`) when it is no longer there."""
        path = self.path(key)
        if not path.is_file():
            raise Gone(f"{what} is no longer in the store")
        return path

    def existing_directory(self, key: str, what: str = "the folder") -> Path:
        """The local path of a stored directory (an adapter, a checkpoint); Gone when it is no longer there."""
        path = self.path(key)
        if not path.is_dir():
            raise Gone(f"{what} is no longer in the store")
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Open a key for writing; the file appears only if the block completes without error."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".incoming-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    @contextmanager
    def staging(self, prefix: str = "incoming") -> Iterator[tuple[BinaryIO, Path]]:
        """A temporary file inside the store, for content whose key is known only at the end
        (it is named by its hash). Move it with `commit()`; otherwise it is deleted on exit."""
        staging_dir = self.root / ".staging"
        staging_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=staging_dir, prefix=f"{prefix}-", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w+b") as handle:
                yield handle, tmp
        finally:
            tmp.unlink(missing_ok=True)

    def commit(self, staged: Path, key: str) -> Path:
        """Move a staged file into place under `key` (atomic within one filesystem)."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        return final

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def delete(self, key: str) -> None:
        """Remove a file or a whole directory; a missing key is not an error."""
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def directory_size(path: Path) -> int:
    """Bytes in a file, or in every file under a directory."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def blob_store() -> BlobStore:
    """The configured store (DATA_DIR/blobs)."""
    return BlobStore(get_settings().blobs_path)
