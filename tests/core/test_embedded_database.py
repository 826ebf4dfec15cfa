"""The embedded (SQLite) database: its file is readable by its owner only, and it fails on\nvalues it cannot store as Postgres does, so that the API answers both the same way."""

from __future__ import annotations

import stat

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError

from app.core.database import get_engine
from tests.helpers import forget_cached_settings


def test_the_sqlite_file_is_created_private_and_an_existing_one_is_made_private(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNELAB_DATABASE_URL", raising=False)
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path))
    forget_cached_settings()
    try:
        with get_engine().connect() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
            connection.commit()
        database = tmp_path / "tunelab.db"
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
        for companion in tmp_path.glob("tunelab.db-*"):
            assert stat.S_IMODE(companion.stat().st_mode) & 0o077 == 0, companion.name

        forget_cached_settings()
        database.chmod(0o644)
        get_engine()
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
    finally:
        forget_cached_settings()


def test_an_integer_beyond_64_bits_is_a_data_error_as_on_postgres(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNELAB_DATABASE_URL", raising=False)
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path))
    forget_cached_settings()
    try:
        with get_engine().connect() as connection, pytest.raises(DataError):
            connection.execute(text("SELECT :n"), {"n": 2**70})
    finally:
        forget_cached_settings()
