"""The schema changes only through migrations: upgrade and downgrade work on Postgres and
SQLite, and the migrated schema is exactly what the models describe."""

from __future__ import annotations

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from app.core import migrations
from app.core.database import get_engine
from app.core.tables import Base
from tests.helpers import POSTGRES_ADMIN_URL, forget_cached_settings

EXPECTED_TABLES = {
    "teams",
    "users",
    "memberships",
    "api_tokens",
    "datasets",
    "jobs",
    "job_events",
    "job_metrics",
    "job_samples",
    "job_evaluations",
    "sweeps",
    "artifacts",
    "workers",
    "completions",
    "browser_sessions",
    "invitations",
    "webhook_endpoints",
    "webhook_deliveries",
}


@pytest.fixture(params=["postgres", "sqlite"])
def empty_database(request, tmp_path, monkeypatch):
    """A brand-new, empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
        yield_url = url
        cleanup = None
    else:
        name = f"tunelab_migrations_{tmp_path.name[-12:].replace('-', '_').lower()}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        yield_url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
        cleanup = name
    monkeypatch.setenv("TUNELAB_DATABASE_URL", yield_url)
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path))
    forget_cached_settings()
    yield request.param
    forget_cached_settings()
    if cleanup:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{cleanup}" WITH (FORCE)')


def _tables() -> set[str]:
    return set(inspect(get_engine()).get_table_names()) - {"alembic_version"}


def test_upgrade_creates_every_table_and_downgrade_removes_them(empty_database):
    assert migrations.current_revision() is None
    migrations.upgrade()
    assert migrations.is_up_to_date()
    assert _tables() == EXPECTED_TABLES

    migrations.downgrade("base")
    assert migrations.current_revision() is None
    assert _tables() == set()

    migrations.upgrade()  # and back up again, from scratch
    assert _tables() == EXPECTED_TABLES


def test_migrated_schema_matches_the_models(empty_database):
    migrations.upgrade()
    with get_engine().connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], "models changed without a migration (run alembic revision --autogenerate)"


def test_every_revision_downgrades_one_step_at_a_time(empty_database):
    from alembic.script import ScriptDirectory

    revisions = list(ScriptDirectory.from_config(migrations.alembic_config()).walk_revisions())
    migrations.upgrade()
    for revision in revisions:  # newest first
        assert migrations.current_revision() == revision.revision
        migrations.downgrade("-1")
    assert migrations.current_revision() is None
