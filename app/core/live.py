"""Live wake-ups for the streams.

The database is the truth: streams always read what they send from it. After a commit that
adds job events or metric points, or changes a job, the writer rings a doorbell (Redis
pub/sub) so that waiting streams read again at once. Without Redis (the embedded mode) the
streams poll the database on a short interval instead. A lost ring only delays a stream.
"""

from __future__ import annotations

import asyncio
import logging
from functools import lru_cache
from typing import TYPE_CHECKING, Self

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.config import get_settings

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

# redis is imported where it is used, not here: the embedded mode never needs it, and it is
# a tenth of the web app's start-up.

log = logging.getLogger(__name__)

_PENDING = "tunelab_doorbells"
# With Redis, streams still look at the database this often in case a ring was lost.
SAFETY_POLL_S = 2.0


def job_channel(job_id: int) -> str:
    return f"tunelab:job:{job_id}"


def team_channel(team_id: int) -> str:
    return f"tunelab:team:{team_id}"


def completion_channel(completion_id: int) -> str:
    return f"tunelab:completion:{completion_id}"


def ring_after_commit(session: Session, *channels: str) -> None:
    """Ring these channels once the session's transaction commits (never before: a stream
    woken early would read the database before the new rows are visible)."""
    session.info.setdefault(_PENDING, set()).update(channels)


@event.listens_for(Session, "after_commit")
def _ring_pending(session: Session) -> None:
    channels = session.info.pop(_PENDING, None)
    if channels:
        ring(*channels)


@event.listens_for(Session, "after_rollback")
def _forget_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


@lru_cache
def _client(url: str) -> redis.Redis:
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def ring(*channels: str) -> None:
    url = get_settings().redis_url
    if not url:
        return
    import redis

    try:
        pipe = _client(url).pipeline(transaction=False)
        for channel in channels:
            pipe.publish(channel, b"1")
        pipe.execute()
    except redis.RedisError as error:  # the streams' safety poll still picks the change up
        log.warning("live push failed (%s); streams will catch up by polling", error)


class Doorbell:
    """What a stream waits on between reads of the database::

    async with Doorbell(job_channel(7)) as bell:
        while True:
            ... read and send what is new ...
            await bell.wait()
    """

    def __init__(self, *channels: str) -> None:
        self.channels = channels
        settings = get_settings()
        self._url = settings.redis_url
        self._poll_s = settings.stream_poll_interval_s
        self._redis: aioredis.Redis | None = None
        self._pubsub = None

    async def __aenter__(self) -> Self:
        if self._url:
            import redis
            import redis.asyncio as aioredis

            try:
                self._redis = aioredis.Redis.from_url(self._url, socket_connect_timeout=2)
                self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(*self.channels)
            except (redis.RedisError, OSError) as error:
                log.warning("live push unavailable (%s); polling the database", error)
                await self._close()
        return self

    async def __aexit__(self, *_exc) -> None:
        await self._close()

    async def _close(self) -> None:
        import redis

        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except (redis.RedisError, OSError):
                pass
        if self._redis is not None:
            await self._redis.aclose()
        self._pubsub = self._redis = None

    async def wait(self) -> None:
        """Return when rung, or after the polling interval."""
        if self._pubsub is None:
            await asyncio.sleep(self._poll_s)
            return
        import redis

        try:
            message = await self._pubsub.get_message(timeout=SAFETY_POLL_S)
            # Drain rings that arrived together: one database read answers all of them.
            while message is not None:
                message = await self._pubsub.get_message(timeout=0)
        except (redis.RedisError, OSError) as error:
            log.warning("live push lost (%s); polling the database", error)
            await self._close()
