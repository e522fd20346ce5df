"""Celery's result meta: the JSON every state is stored and published as.

Celery's own backend writes results and errors; the record writes STARTED, PROGRESS and a
cancel's REVOKED itself (in the same script as the rest of a transition), in the same format so
that Celery's readers, Flower and ours all understand it. This module is also the one reader of
that JSON: whoever needs a stored or published meta decodes it here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "FINAL_STATES",
    "META_PREFIX",
    "REVOKE_REASONS",
    "celery_meta",
    "is_final_status",
    "may_be_final",
    "meta_status",
    "read_meta",
    "revoked_meta",
    "revoked_meta_template",
    "revoked_reason",
]

META_PREFIX: Final = "celery-task-meta-"
#: States after which a task's record does not change: the one rule (the scripts' ``FINAL``
#: is generated from it, see scripts.py; ``TaskState.is_final`` reads it too).
FINAL_STATES: Final = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
#: A meta for a final state contains one of these byte strings.
_FINAL_WORDS: Final = tuple(f'"{state}"'.encode() for state in sorted(FINAL_STATES))


def is_final_status(status: object) -> bool:
    """Whether a meta ``status`` value is final."""
    return status in FINAL_STATES


def read_meta(raw: bytes | str | None) -> dict[str, Any] | None:
    """A stored or published meta, decoded; None when missing or not a JSON object."""
    if raw is None:
        return None
    try:
        decoded = json.loads(raw)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


def meta_status(raw: bytes | str | None) -> str | None:
    """The ``status`` of a meta (None when missing; ``PENDING`` when unreadable, as in Lua)."""
    if raw is None:
        return None
    meta = read_meta(raw)
    status = None if meta is None else meta.get("status")
    return status if isinstance(status, str) else "PENDING"


def may_be_final(raw: bytes) -> bool:
    """A cheap test a waiter for the outcome runs before decoding a published message.

    False means the message is certainly not a final state (STARTED, PROGRESS): it is skipped
    without being decoded. True still needs :func:`read_meta`.
    """
    return any(word in raw for word in _FINAL_WORDS)


#: Why a task was REVOKED, stored as the message of its ``TaskRevokedError`` (Celery's own
#: format, so its readers still understand it): a cancel, or a purge of its queue. Readers map
#: it to the error code (:func:`revoked_reason`).
REVOKE_REASONS: Final = frozenset({"revoked", "purged"})
_ID_SLOT: Final = "@@task-id@@"


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


def revoked_meta(task_id: str, reason: str = "revoked") -> str:
    """REVOKED as Celery stores it (its readers raise ``TaskRevokedError`` from it).

    Args:
        reason: one of :data:`REVOKE_REASONS`; the error code a reader reports.
    """
    if reason not in REVOKE_REASONS:
        raise ValueError(f"unknown revoke reason {reason!r}")
    return celery_meta(
        task_id,
        "REVOKED",
        {
            "exc_type": "TaskRevokedError",
            "exc_message": [reason],
            "exc_module": "celery.exceptions",
        },
        done=True,
    )


def revoked_meta_template(reason: str) -> tuple[str, str]:
    """:func:`revoked_meta` cut where the task id goes: a script writing many fills it in.

    Returns:
        ``(head, tail)``: ``head + json.dumps(task_id) + tail`` is the meta of ``task_id``.
    """
    head, tail = revoked_meta(_ID_SLOT, reason).split(json.dumps(_ID_SLOT))
    return head, tail


def revoked_reason(result: Any) -> str:
    """The error code of a REVOKED meta's ``result``: ``purged``, else ``revoked``.

    Celery's own revokes store other messages (``terminated``, ``expired``): all of them are
    cancels to a caller.
    """
    if isinstance(result, dict):
        args = result.get("exc_message")
        if isinstance(args, list | tuple) and args and args[0] in REVOKE_REASONS:
            return str(args[0])
    return "revoked"
