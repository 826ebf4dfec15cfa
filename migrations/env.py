"""Alembic environment: the URL comes from tunelab's settings unless the caller passed a
connection (tests, `tunelab migrate`) in `config.attributes["connection"]`."""

from alembic import context

from app.core.database import get_engine
from app.core.tables import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    with get_engine().connect() as connection:
        _run(connection)


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `tunelab migrate`")
run_migrations_online()
