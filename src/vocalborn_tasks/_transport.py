"""kombu's Redis transport, hardened against messages that are not task messages at all.

kombu decodes each popped message with ``json.loads`` inside its event loop: one malformed
entry on a queue (a stray ``LPUSH``, a half-written message) raises there and stops the whole
worker ("Unrecoverable error"), and every worker that pops the next one dies the same way.
This transport drops such an entry with an error log instead; the worker keeps consuming.
Well-formed messages with a bad body (pickle, unknown task) are left to Celery, which already
discards them. It also reuses one command client per connection pool (see ``Channel``).
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport"]

logger = logging.getLogger(__name__)


def _is_envelope(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("properties"), dict)
        and isinstance(message.get("headers", {}), dict)
        and isinstance(message["properties"].get("delivery_tag", ""), str)
    )


class Channel(kombu_redis.Channel):
    """A Redis channel that survives undecodable entries and reuses its command client."""

    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        # kombu builds a new redis.Redis (a ~200-entry callback table) for every ack and
        # every unacked-index write: a tenth of a no-op task's worker time. The client holds
        # no connection of its own (the pool does), so one per pool is as safe and free.
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client

    def _brpop_read(self, **options: Any) -> bool:
        try:
            result: bool = super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except ValueError as exc:  # json.JSONDecodeError: the entry is already popped
            logger.error("discarded a queue entry that is not JSON: %s", exc)
            return True
        return result


class Transport(kombu_redis.Transport):
    """The ``broker_transport`` of the library's apps."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        if not _is_envelope(message):
            logger.error("discarded a queue entry on %r that is not a task message", queue)
            return
        super()._deliver(message, queue)  # type: ignore[no-untyped-call]
