"""read_preview: pages of rows with their line numbers, at any offset, through the sparse index."""

from __future__ import annotations

import json

import pytest

from app.datasets.preview import MAX_ENTRIES, read_preview


@pytest.fixture
def big_file(tmp_path, validate):
    """5,000 rows of varied lengths, and their validation report."""
    lines = [json.dumps({"text": f"row {n} " + "x" * (n % 37)}).encode() for n in range(5000)]
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    return path, validate(data, chunk_size=4096)


def test_the_index_stays_small_and_points_at_line_starts(big_file):
    path, report = big_file
    index = report.line_index
    assert index["stride"] == 8 and len(index["offsets"]) <= MAX_ENTRIES
    data = path.read_bytes()
    assert all(offset == 0 or data[offset - 1 : offset] == b"\n" for offset in index["offsets"])
    assert data.count(b"\n", 0, index["offsets"][100]) == 100 * index["stride"]


def test_pages_anywhere_in_the_file(big_file):
    path, report = big_file
    page = read_preview(path, 4321, 3, report.line_index)
    assert page == [
        {"line": 4322, "row": {"text": "row 4321 " + "x" * (4321 % 37)}},
        {"line": 4323, "row": {"text": "row 4322 " + "x" * (4322 % 37)}},
        {"line": 4324, "row": {"text": "row 4323 " + "x" * (4323 % 37)}},
    ]
    assert read_preview(path, 4321, 3) == page  # without the index: the same rows, by scanning


def test_the_first_and_the_last_page(big_file):
    path, report = big_file
    assert [row["line"] for row in read_preview(path, 0, 2, report.line_index)] == [1, 2]
    assert [row["line"] for row in read_preview(path, 4998, 50, report.line_index)] == [4999, 5000]
    assert read_preview(path, 5000, 10, report.line_index) == []
    assert read_preview(path, 10**9, 10, report.line_index) == []


def test_negative_offsets_are_refused(big_file):
    path, report = big_file
    with pytest.raises(ValueError):
        read_preview(path, -1, 10, report.line_index)
