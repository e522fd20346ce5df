"""Purge: the record transition that empties a queue and ends every task it held.

Deleting a queue's lists alone strands their tasks: each stays PENDING for ever, its waiters
never wake, and its practice record's in-flight slot keeps pointing at it, so a later submit of
the record gets the dead id back. The ``purge`` script ends each purged task instead (REVOKED
with code ``purged``, published, marker done, slot released), one bounded batch per call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from . import calls
from .calls import AsyncRecord
from .keys import RecordKeys

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..config import TaskSettings

__all__ = ["PURGE_BATCH", "purge_queue"]

#: Messages per script call. A message costs a JSON decode and a few writes: 500 of them keep
#: one call within a few milliseconds, so other clients are never held up for long.
PURGE_BATCH: Final = 500


async def purge_queue(
    broker: aioredis.Redis,
    settings: TaskSettings,
    queue: str,
    *,
    batch_size: int = PURGE_BATCH,
) -> int:
    """Remove every message waiting in ``queue`` (all its priority lists) and end its task.

    Messages already taken by workers (running or reserved) are not touched. Runs the script
    in a loop of bounded batches; it stops after as many messages as the queue held when it
    started, so a producer that keeps submitting cannot keep it going for ever.

    Args:
        broker: a client on the broker database (the script switches to the result database
            for the task records itself).
        settings: the deployment (key prefix, databases, result expiry).
        queue: the queue's name.
        batch_size: messages per script call.

    Returns:
        How many messages were removed.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    keys = RecordKeys.of(settings)
    record = AsyncRecord(broker)

    async def batch(limit: int) -> tuple[int, int]:
        return await record.run(
            calls.purge(
                keys,
                queue=queue,
                limit=limit,
                broker_db=settings.redis_db_broker,
                result_db=settings.redis_db_backend,
                meta_ttl_s=int(settings.result_expires_s),
            )
        )

    total, budget = await batch(batch_size)
    while budget > 0:
        taken, left = await batch(min(batch_size, budget))
        if taken == 0:
            break
        total += taken
        budget = min(budget - taken, left)
    return total
