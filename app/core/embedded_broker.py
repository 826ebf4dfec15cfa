"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, so that `tunelab
serve` needs no Redis. Registered as the `embedded+sqlite:///...` broker URL.

kombu passes every transport option to `create_engine`, which refuses Celery's
`polling_interval`; this channel passes none, so the polling interval can be set.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy import create_engine

from app.core.queue import EMBEDDED_SCHEME


class Channel(kombu_sqlalchemy.Channel):
    def _engine_from_config(self):
        return create_engine(self.connection.client.hostname, connect_args={"timeout": 30})


class Transport(kombu_sqlalchemy.Transport):
    Channel = Channel


TRANSPORT_ALIASES[EMBEDDED_SCHEME] = f"{__name__}:Transport"
