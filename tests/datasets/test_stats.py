"""Statistics of the accepted rows: lengths, histogram, roles, duplicates, token estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.datasets.stats import Distribution, RowFingerprints

DATA = Path(__file__).parent / "data"


def chat_row(user: str, assistant: str, system: str | None = None) -> bytes:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]
    return json.dumps({"messages": messages}).encode()


def test_chat_stats(validate):
    rows = [
        chat_row("a" * 5, "b" * 5),  # 10 characters
        chat_row("a" * 20, "b" * 20, system="s" * 10),  # 50
        chat_row("a" * 5, "b" * 5),  # a duplicate of line 1
        chat_row("a" * 100, "b" * 900),  # 1000
    ]
    stats = validate(b"\n".join(rows) + b"\n").stats
    assert stats["rows"] == 4
    assert stats["chars_per_row"] == {"min": 10, "median": 10, "p95": 1000, "max": 1000, "mean": 267.5, "total": 1070}
    assert stats["messages_per_row"] == {"min": 2, "median": 2, "p95": 3, "max": 3, "mean": 2.2, "total": 9}
    assert stats["roles"] == {"system": 1, "user": 4, "assistant": 4}
    assert stats["length_histogram"] == [
        {"from": 10, "to": 15, "rows": 2},
        *({"from": low, "to": high, "rows": 0} for low, high in [(15, 20), (20, 30), (30, 40), (40, 50)]),
        {"from": 50, "to": 60, "rows": 1},
        *(
            {"from": low, "to": high, "rows": 0}
            for low, high in [
                (60, 80),
                (80, 100),
                (100, 150),
                (150, 200),
                (200, 300),
                (300, 400),
                (400, 500),
                (500, 600),
                (600, 800),
                (800, 1000),
            ]
        ),
        {"from": 1000, "to": 1500, "rows": 1},
    ]
    assert stats["duplicates"] == {"rows": 1, "first_lines": [3], "complete": True}
    # ceil(1070 / 4) for the text, 4 per message for the template's role markers
    assert stats["estimated_tokens"] == 268 + 4 * 9
    assert "characters / 4" in stats["token_estimate"]


def test_sharegpt_and_instruction_roles_are_the_canonical_ones(validate, data_dir):
    sharegpt = validate((data_dir / "sharegpt.jsonl").read_bytes()).stats
    assert sharegpt["roles"] == {"user": 5, "assistant": 5, "system": 2}
    instruction = validate((data_dir / "instruction.jsonl").read_bytes()).stats
    assert instruction["roles"] == {"user": 5, "assistant": 5, "system": 1}
    assert instruction["messages_per_row"]["max"] == 3


def test_classification_counts_labels_and_text_has_no_messages(validate, data_dir):
    stats = validate((data_dir / "classification.jsonl").read_bytes()).stats
    assert stats["labels"] == {"positive": 2, "negative": 2, "neutral": 1}
    assert stats["messages_per_row"] is None and stats["roles"] == {}
    assert validate(b'{"text": "a", "label": 1}\n{"text": "b", "label": "1"}\n').stats["labels"] == {"1": 2}


def test_stats_count_only_rows_without_errors(validate):
    report = validate(chat_row("hi", "hello") + b'\n{"messages": []}\n')
    assert (report.rows, report.stats["rows"]) == (2, 1)


def test_quantiles_are_exact_for_short_values_and_close_for_long_ones():
    short = Distribution()
    for value in range(1, 1001):
        short.add(value)
    assert (short.quantile(0.5), short.quantile(0.95), short.min, short.max) == (500, 950, 1, 1000)

    long = Distribution()
    for value in range(100_000, 200_001, 10):
        long.add(value)
    assert long.quantile(0.5) == pytest.approx(150_000, rel=5e-4)
    assert long.quantile(0.95) == pytest.approx(195_000, rel=5e-4)
    assert (long.min, long.max) == (100_000, 200_000)


def test_duplicates_stop_being_remembered_when_the_table_is_full():
    fingerprints = RowFingerprints(max_slots=16)  # remembers 10 rows
    assert [fingerprints.seen_before(hash(f"row {n}")) for n in range(10)] == [False] * 10
    assert fingerprints.complete
    assert fingerprints.seen_before(hash("row 3"))  # still found among the remembered
    assert not fingerprints.seen_before(hash("row 10"))
    assert not fingerprints.seen_before(hash("row 10"))  # not remembered: the count is a lower bound
    assert not fingerprints.complete
    fingerprints.close()
