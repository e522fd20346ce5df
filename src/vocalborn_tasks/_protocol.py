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
) -> bytes:
    """Serialise one task message, ready to LPUSH onto the ``queue`` list.

    Args:
        task_id: the id callers will query.
        name: the registered task name.
        kwargs: JSON-safe keyword arguments.
        queue: the queue (Redis list) it goes to; also recorded as the routing key.
    """
    body = json.dumps([[], kwargs, _EMBED], separators=(",", ":")).encode()
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": _short_repr(kwargs),
            "origin": _ORIGIN,
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope, separators=(",", ":")).encode()
