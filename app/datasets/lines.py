"""Cutting a byte stream, fed in chunks cut anywhere, into lines."""

from __future__ import annotations


class LineSplitter:
    """Lines without their newline, as chunks complete them. Only the unfinished line is held,
    and not even that once it passes `max_line_bytes`: a line that long comes out as its length
    alone (an int), so one endless line cannot fill the memory. (A line that one chunk holds
    whole comes out whole: it is in memory already.)"""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._partial: list[bytes] = []  # the start of a line whose end has not arrived yet
        self._partial_size = 0
        self._skipping = False  # inside a line already too long to hold

    def feed(self, chunk: bytes) -> list[bytes | int]:
        lines: list[bytes | int] = []
        if self._skipping:
            end = chunk.find(b"\n")
            if end < 0:
                self._partial_size += len(chunk)
                return lines
            lines.append(self._partial_size + end)
            self._partial_size = 0
            self._skipping = False
            chunk = chunk[end + 1 :]
        if b"\n" not in chunk:
            self._hold(chunk)
            return lines
        if self._partial:
            chunk = b"".join((*self._partial, chunk))
            self._partial.clear()
            self._partial_size = 0
        pieces = chunk.split(b"\n")
        self._hold(pieces.pop())
        if lines:
            lines.extend(pieces)
            return lines
        return pieces  # the common case: no copy

    def finish(self) -> list[bytes | int]:
        """The last line, when the stream does not end with a newline."""
        if self._skipping:
            return [self._partial_size]
        return [b"".join(self._partial)] if self._partial else []

    def _hold(self, piece: bytes) -> None:
        if not piece:
            return
        self._partial.append(piece)
        self._partial_size += len(piece)
        if self._partial_size > self.max_line_bytes:
            self._partial.clear()
            self._skipping = True
