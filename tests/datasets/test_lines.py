"""LineSplitter: lines across any chunk boundaries, and no line held past its limit."""

from __future__ import annotations

import tracemalloc

import pytest

from app.datasets.lines import LineSplitter


def split(data: bytes, chunk_size: int, max_line_bytes: int = 100) -> list[bytes | int]:
    splitter = LineSplitter(max_line_bytes)
    lines: list[bytes | int] = []
    for start in range(0, len(data), chunk_size):
        lines += splitter.feed(data[start : start + chunk_size])
    return lines + splitter.finish()


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 1000])
def test_lines_come_out_whole_whatever_the_chunks(chunk_size):
    assert split(b"one\ntwo\r\n\nthree", chunk_size) == [b"one", b"two\r", b"", b"three"]


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_a_line_that_would_be_held_past_the_limit_comes_out_as_its_length(chunk_size):
    data = b"short\n" + b"x" * 250 + b"\nafter\n" + b"y" * 101
    assert split(data, chunk_size) == [b"short", 250, b"after", 101]


def test_a_long_line_within_one_chunk_is_already_in_memory_and_comes_out_whole():
    assert split(b"x" * 250 + b"\n", 10_000) == [b"x" * 250]


def test_an_endless_line_takes_no_memory():
    splitter = LineSplitter(1 << 20)
    chunk = b"z" * (64 << 10)
    tracemalloc.start()
    for _ in range(320):  # 20 MiB without a newline
        assert splitter.feed(chunk) == []
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2 << 20
    assert splitter.feed(b"\nnext\n") == [320 * len(chunk), b"next"]
