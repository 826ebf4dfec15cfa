"""ValidatorProcess: the same report as the in-process validator, and no child left behind."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from app.datasets.validator_process import ValidatorCrashed, ValidatorProcess

DATA = Path(__file__).parent / "data"


def children() -> list[psutil.Process]:
    return [child for child in psutil.Process().children() if child.status() != psutil.STATUS_ZOMBIE]


def test_the_child_reports_what_the_in_process_validator_reports(validate):
    data = (DATA / "chat_with_errors.jsonl").read_bytes() + (DATA / "chat.jsonl").read_bytes()
    validator = ValidatorProcess(max_row_chars=500, max_listed_errors=5)
    for start in range(0, len(data), 100):
        validator.feed(data[start : start + 100])
    report = validator.finish()
    validator.close()
    assert report == validate(data, max_row_chars=500, max_listed_errors=5)
    assert len(report.errors) == 5 and report.error_count == 16
    assert children() == []


def test_closing_midway_stops_the_child():
    validator = ValidatorProcess()
    validator.feed(b'{"text": "a"}\n')
    assert len(children()) == 1
    validator.close()
    assert children() == []


def test_a_child_that_dies_is_an_error_not_a_report():
    validator = ValidatorProcess()
    (child,) = children()
    child.kill()  # not reaped here: the validator's Popen must see the signal
    with pytest.raises(ValidatorCrashed, match="the validator process ended with code -9"):
        for _ in range(100):  # the pipe may take a few writes to notice
            validator.feed(b'{"text": "a"}\n' * 10_000)
        validator.finish()
    validator.close()
    assert children() == []
