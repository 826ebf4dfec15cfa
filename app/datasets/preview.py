"""Reading pages of rows from a stored dataset file, fast at any offset.

While validating, the validator keeps a sparse index of where lines start: the byte offset of
every `stride`-th line, at most MAX_ENTRIES of them (the stride doubles when it fills up), so the
index stays small enough to keep with the dataset's metadata (~10 KB of JSON) whatever the file
size. A page is read by seeking to the nearest indexed line before it and skipping at most
`stride - 1` lines: for a 2 GiB file that is at most ~2 MB of reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

MAX_ENTRIES = 1024


class LineIndexBuilder:
    """Collects line start offsets; `add` is called for lines 0, stride, 2*stride... (0-based)."""

    def __init__(self) -> None:
        self.stride = 1
        self.offsets: list[int] = []

    def add(self, offset: int) -> None:
        self.offsets.append(offset)
        if len(self.offsets) > MAX_ENTRIES:
            del self.offsets[1::2]
            self.stride *= 2

    def to_dict(self) -> dict[str, Any]:
        return {"stride": self.stride, "offsets": list(self.offsets)}


def read_preview(
    path: Path | str, offset: int, limit: int, line_index: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows `offset` .. `offset + limit - 1` (0-based) of a validated JSONL file, as
    `{"line": 1-based line number, "row": the parsed row}`; fewer (or none) past the end.

    `line_index` is the validation report's `line_index`; without it the file is scanned from
    the start (still only newline counting, but proportional to the offset)."""
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must not be negative")
    stride, offsets = (line_index["stride"], line_index["offsets"] or [0]) if line_index else (1, [0])
    entry = min(offset // stride, len(offsets) - 1)
    line = entry * stride
    rows: list[dict[str, Any]] = []
    with open(path, "rb") as handle:
        handle.seek(offsets[entry])
        while line < offset:
            if not handle.readline():
                return rows
            line += 1
        for line in range(offset, offset + limit):
            text = handle.readline()
            if not text:
                break
            rows.append({"line": line + 1, "row": orjson.loads(text)})
    return rows
