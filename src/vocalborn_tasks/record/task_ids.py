"""Time-ordered task ids and the server epoch: LOST vs NOT_FOUND, the same in every process.

A task id is a UUID version 7: its first 48 bits are the submit time in milliseconds. The
server keeps ``<prefix>:epoch``, the time its memory of tasks began, written once (``SET NX``,
by every submit and by a read that finds it missing). When a server loses its data (a restart
without persistence, a flush), the epoch goes with it and the next writer sets a new one. So
for an id whose record is gone: made before the epoch -> the server forgot it (LOST); made
after -> it was never submitted here (NOT_FOUND). Any process, including one started later,
reads the same epoch and gives the same answer. Ids that carry no time (Celery's own UUID4s)
cannot be told apart and read NOT_FOUND.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Literal

__all__ = ["epoch_seconds", "id_time", "missing_state", "new_task_id"]


def new_task_id() -> str:
    """A fresh UUID7 string (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b
    return str(uuid.UUID(int=value))


def id_time(task_id: str) -> float | None:
    """When a UUID7 id was made (Unix seconds), or None for ids that carry no time."""
    try:
        parsed = uuid.UUID(task_id)
    except ValueError:
        return None
    if parsed.version != 7:
        return None
    return (parsed.int >> 80) / 1000.0


def epoch_seconds(raw: bytes | str | None) -> float | None:
    """Decode the epoch key's value (microseconds since 1970, as written by the prelude)."""
    if raw is None:
        return None
    try:
        return int(raw) / 1_000_000
    except (TypeError, ValueError):
        return None


def missing_state(
    task_id: str, epoch: float | None, *, record_ttl_s: float, now: float | None = None
) -> Literal["LOST", "EXPIRED", "NOT_FOUND"]:
    """What an id whose record is gone is: the same answer in every process.

    Args:
        epoch: the server's epoch (:func:`epoch_seconds`).
        record_ttl_s: how long a submit marker lives; an id older than that would have
            expired anyway.
    """
    made = id_time(task_id)
    if made is None or epoch is None:
        return "NOT_FOUND"
    now = time.time() if now is None else now
    if made < now - record_ttl_s:
        return "EXPIRED"
    if made < epoch:
        return "LOST"
    return "NOT_FOUND"
