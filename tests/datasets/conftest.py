from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.datasets.validation import DatasetValidator, ValidationReport

DATA = Path(__file__).parent / "data"


def _validate(data: bytes, *, chunk_size: int | None = None, **options) -> ValidationReport:
    """Feed `data` to a validator in chunks of `chunk_size` bytes (all at once by default)."""
    validator = DatasetValidator(**options)
    step = chunk_size or max(len(data), 1)
    for start in range(0, len(data), step):
        validator.feed(data[start : start + step])
    return validator.finish()


@pytest.fixture
def validate() -> Callable[..., ValidationReport]:
    return _validate


@pytest.fixture
def data_dir() -> Path:
    return DATA
