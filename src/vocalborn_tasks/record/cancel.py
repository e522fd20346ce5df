"""Cancelling a task: the ``revoke`` transition, and what a worker checks to stop a running copy.

The caller side calls :func:`revoke` (``redis.asyncio``); the worker's heartbeat calls
:func:`terminate_requested` (``redis``). Neither needs Celery: a cancel that terminates reaches
the worker on the record's own pub/sub channel, not through a Celery control broadcast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .keys import RecordKeys
from .meta import revoked_meta
from .scripts import ScriptSet

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = ["revoke", "terminate_requested", "terminated_ids"]


async def revoke(
    scripts: ScriptSet, keys: RecordKeys, task_id: str, *, now: float, ttl_s: int, terminate: bool
) -> bool:
    """Store REVOKED for an unfinished task (the ``revoke`` script, one round trip).

    Args:
        scripts: the record's scripts on an async client.
        keys: the deployment's key schema.
        task_id: the task to cancel.
        now: when (seconds since the epoch): the score in the revoke sets, trimmed by cleanup.
        ttl_s: how long the REVOKED meta lives.
        terminate: also ask the worker running it, if any, to stop it now.

    Returns:
        True if REVOKED was stored, False if the task had already finished.
    """
    stored = await scripts["revoke"](
        keys=[
            keys.revoked,
            keys.meta(task_id),
            keys.marker(task_id),
            keys.terminate,
            keys.terminate_channel,
        ],
        args=[task_id, now, revoked_meta(task_id), ttl_s, "1" if terminate else "0"],
    )
    return bool(stored)


def terminate_requested(pipe: Any, keys: RecordKeys, task_ids: Collection[str]) -> None:
    """Queue, on a sync pipeline, the read of which of ``task_ids`` a cancel asked to stop.

    Its reply (one list, in ``task_ids`` order, ``None`` for "not asked") is read by
    :func:`terminated_ids`. A pipeline, so the heartbeat adds the check to its own round trip.
    """
    pipe.zmscore(keys.terminate, list(task_ids))


def terminated_ids(task_ids: Collection[str], reply: list[float | None] | None) -> set[str]:
    """The ids of ``task_ids`` that :func:`terminate_requested`'s ``reply`` marks."""
    return {t for t, score in zip(task_ids, reply or [], strict=False) if score is not None}
