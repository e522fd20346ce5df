"""Celery's result meta: the JSON every state is stored and published as.

Celery's own backend writes results and errors; the record writes STARTED, PROGRESS and a
cancel's REVOKED itself (in the same script as the rest of a transition), in the same format so
that Celery's readers, Flower and ours all understand it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["FINAL_STATES", "META_PREFIX", "celery_meta", "revoked_meta"]

META_PREFIX: Final = "celery-task-meta-"
#: States after which a task's record does not change (prelude.lua's ``FINAL``).
FINAL_STATES: Final = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def celery_meta(task_id: str, status: str, result: Any, *, done: bool = False) -> str:
    """A state in Celery's result-meta format, as JSON.

    Args:
        done: stamp ``date_done`` (final states).
    """
    return json.dumps(
        {
            "status": status,
            "result": result,
            "traceback": None,
            "children": [],
            "date_done": datetime.now(UTC).isoformat() if done else None,
            "task_id": task_id,
        }
    )


def revoked_meta(task_id: str) -> str:
    """REVOKED as Celery stores it (its readers raise ``TaskRevokedError`` from it)."""
    return celery_meta(
        task_id,
        "REVOKED",
        {
            "exc_type": "TaskRevokedError",
            "exc_message": ["revoked"],
            "exc_module": "celery.exceptions",
        },
        done=True,
    )
