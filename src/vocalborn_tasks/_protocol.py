"""Celery task messages (protocol 2) as kombu's Redis transport stores them.

The manager publishes with ``redis.asyncio`` instead of kombu's blocking producer, so it needs
the exact envelope a Celery worker expects on the queue list: a JSON object whose ``body`` is
the base64 of ``[args, kwargs, embed]``. Building it by hand is a few dictionary literals; the
integration tests prove real workers accept it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

__all__ = ["build_task_message"]

_ORIGIN = f"vocalborn@{socket.gethostname()}:{os.getpid()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_REPR_MAX = 512


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 3] + "..."


def build_task_message(
    task_id: str,
    name: str,
    kwargs: dict[str, Any],
    queue: str,
    *,
    retries: int = 0,
    eta: str | None = None,
    priority: int = 0,
    root_id: str | None = None,
    parent_id: str | None = None,
    group: str | None = None,
    group_index: int | None = None,
    timelimit: tuple[float | None, float | None] = (None, None),
    ignore_result: bool = False,
    embed: dict[str, Any] | None = None,
) -> bytes:
    """Serialise one task message, ready to LPUSH onto the ``queue`` list.

    The keywords after ``queue`` carry a delivery's lineage into its retry (what Celery's
    ``Task.retry`` keeps from the request); a first submit leaves them as they are.

    Args:
        task_id: the id callers will query.
        name: the registered task name.
        kwargs: JSON-safe keyword arguments.
        queue: the queue (Redis list) it goes to; also recorded as the routing key.
        retries: how many retries came before this message.
        eta: ISO 8601 time before which a worker holds the message.
        embed: callbacks, errbacks, chain and chord (Celery's canvas links), if any.
    """
    links = _EMBED if embed is None else {**_EMBED, **embed}
    body = json.dumps([[], kwargs, links], separators=(",", ":")).encode()
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": None,
            "eta": eta,
            "expires": None,
            "group": group,
            "group_index": group_index,
            "retries": retries,
            "timelimit": list(timelimit),
            "root_id": root_id or task_id,
            "parent_id": parent_id,
            "argsrepr": "()",
            "kwargsrepr": _short_repr(kwargs),
            "origin": _ORIGIN,
            "ignore_result": ignore_result,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope, separators=(",", ":")).encode()
