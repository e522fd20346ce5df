"""Worker node names: one live worker per name.

Two workers under one name share one heartbeat hash, and each one's beat overwrites the
messages the other holds: the dead-worker reaper then hands a *running* task back to its queue,
and it runs twice. So a worker takes its name before it consumes (:func:`take_worker_name`,
atomic: of two workers starting at once under one name, one gets it) and the heartbeat keeps
it; the hash's TTL frees the name of a worker that died.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import redis as sync_redis

from . import calls
from .calls import Record
from .keys import RecordKeys

if TYPE_CHECKING:
    import redis

__all__ = ["NameHolder", "count_unknown_offer", "release_worker_name", "take_worker_name"]


class NameHolder(NamedTuple):
    """The live worker that holds a name: its machine and main process id."""

    machine: str
    pid: int | None


def take_worker_name(
    client: redis.Redis,
    keys: RecordKeys,
    name: str,
    *,
    pid: int,
    machine: str,
    ttl_s: float,
    stale_pid: int | None = None,
) -> NameHolder | None:
    """Take ``name`` for the worker ``pid`` on ``machine`` (the ``take_name`` script).

    Args:
        client: a client on the result database (where heartbeats live).
        keys: the deployment's key schema.
        name: the worker's node name.
        pid: the worker's main process id.
        machine: this machine's host name.
        ttl_s: how long the name is held before the first heartbeat renews it (a worker that
            dies while starting frees its name after this long).
        stale_pid: replace a holder on this machine with this pid (the caller checked that
            the process is gone).

    Returns:
        None when the name is now ours, else the holder.
    """
    text = Record(client).run(
        calls.take_name(
            keys, name=name, pid=pid, machine=machine, ttl_ms=int(ttl_s * 1000), stale_pid=stale_pid
        )
    )
    if not text:
        return None
    holder_machine, _, holder_pid = text.rpartition(" ")
    return NameHolder(holder_machine, int(holder_pid) if holder_pid.isdigit() else None)


def release_worker_name(client: redis.Redis, keys: RecordKeys, name: str, *, pid: int) -> bool:
    """Give ``name`` back if worker ``pid`` still holds it (a worker that failed to start).

    Returns:
        True if the name was released.
    """
    key = keys.worker(name)
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)  # type: ignore[no-untyped-call]
            holder = pipe.hget(key, "pid")
            if holder is None or int(holder) != pid:
                return False
            pipe.multi()
            pipe.delete(key)
            pipe.execute()
        except sync_redis.WatchError:
            return False
    return True


def count_unknown_offer(
    client: redis.Redis, keys: RecordKeys, task_id: str, *, ttl_s: float
) -> int:
    """Count one hand-back of a task by a worker that does not know it; return the count."""
    key = keys.unknown_offers(task_id)
    pipe = client.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, max(1, int(ttl_s)))
    count, _ = pipe.execute()
    return int(count)
