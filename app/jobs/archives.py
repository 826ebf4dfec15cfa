"""Streaming ZIP archives of artifact directories (adapters, checkpoints, merged models).

The archive is produced while it is sent: constant memory whatever the size (ZIP64 for
files over 4 GiB). Weights are stored uncompressed (they do not compress, and deflating
gigabytes would only cost CPU); text files are deflated. Every member name is a relative
path under one top-level folder, built from the directory walk, never from user input;
symbolic links are skipped, so nothing outside the artifact can be read or named.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

_STORED_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npy", ".msgpack", ".h5", ".zip", ".gz"}
_CHUNK = 1024 * 1024


class _Pipe:
    """A write-only file object whose writes are collected for the response to send."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.position = 0

    def write(self, data: bytes) -> int:
        if data:
            self.chunks.append(bytes(data))
            self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def archive_members(directory: Path) -> list[tuple[Path, str]]:
    """(file, relative name) for every regular file under `directory`, links left out."""
    root = directory.resolve()
    members = []
    for folder, subfolders, files in os.walk(root, followlinks=False):
        subfolders[:] = sorted(d for d in subfolders if not (Path(folder) / d).is_symlink())
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file() or name.startswith(".incoming-"):
                continue
            relative = path.relative_to(root).as_posix()
            if relative.startswith("/") or ".." in relative.split("/"):
                continue  # cannot happen for a walk below root; refused all the same
            members.append((path, relative))
    return members


def stream_zip(directory: Path, folder_name: str) -> Iterator[bytes]:
    """The ZIP of `directory`, with every member under `folder_name/`, as byte chunks."""
    if "/" in folder_name or folder_name in ("", ".", ".."):
        raise ValueError(f"bad archive folder name {folder_name!r}")
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, mode="w", allowZip64=True) as archive:
        for path, relative in archive_members(directory):
            info = zipfile.ZipInfo.from_file(path, arcname=f"{folder_name}/{relative}")
            info.compress_type = zipfile.ZIP_STORED if path.suffix in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            with path.open("rb") as source, archive.open(info, "w", force_zip64=info.file_size > 2**31) as target:
                while chunk := source.read(_CHUNK):
                    target.write(chunk)
                    if len(pipe.chunks) > 4:
                        yield pipe.take()
            if pipe.chunks:
                yield pipe.take()
    if pipe.chunks:
        yield pipe.take()
