"""The key schema of the task record: every Redis key name, in one place."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .meta import META_PREFIX

if TYPE_CHECKING:
    from ..config import TaskSettings

__all__ = ["PRIORITY_SEP", "PRIORITY_STEPS", "RecordKeys", "owner_tag", "queue_lists"]

#: kombu's Redis transport keeps a queue's priorities 3, 6 and 9 in lists named
#: ``<queue><PRIORITY_SEP><step>`` (``Channel.sep`` and ``Channel.priority_steps``; the
#: worker's table of borrowed names checks both against the installed kombu).
PRIORITY_SEP: Final = "\x06\x16"
PRIORITY_STEPS: Final = (3, 6, 9)


def owner_tag(owner: str) -> str:
    """What the record stores for a task's owner: a digest, never the identity itself.

    An owner is the host's identity of a user (an account id, an e-mail): a patient
    identifier. The record keeps only this 32-character digest, in the submit marker and in
    the in-flight slot's key name, so a ``KEYS``/``MONITOR`` listing, a slow log or a dump
    names no patient; scoping compares digests.
    """
    return hashlib.blake2b(owner.encode(), digest_size=16, person=b"vocalborn-owner").hexdigest()


@dataclass(frozen=True, slots=True)
class RecordKeys:
    """Key names for one deployment (``VOCALBORN_KEY_PREFIX``).

    Result database: ``meta`` (Celery's, which its waiters also read), ``marker``, ``inflight``,
    ``deliveries``, ``revoked``, ``running``, ``sink``, ``epoch``, worker heartbeats. Broker
    database: the queue lists, ``unacked``/``unacked_index`` (kombu's names, which its own
    visibility-timeout restore also reads) and the wake-up lists.
    """

    prefix: str = "vocalborn"

    @classmethod
    def of(cls, settings: TaskSettings) -> RecordKeys:
        return cls(settings.key_prefix)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # --- result database --------------------------------------------------------------------
    @staticmethod
    def meta(task_id: str) -> str:
        """Celery's result meta (JSON), also the pub/sub channel of the task's changes."""
        return META_PREFIX + task_id

    def marker(self, task_id: str) -> str:
        """Submit marker (hash: name, queue, t, record, done): tells PENDING from unknown."""
        return self._key("task", task_id)

    @property
    def marker_prefix(self) -> str:
        return self._key("task", "")

    def inflight(self, practice_record_id: str, owner: str | None = None) -> str:
        """The task id analysing a practice record right now (de-duplication slot).

        With an ``owner`` (an :func:`owner_tag`), the slot is that owner's: two owners who
        send the same practice record id never share a task. Owned slots live under their
        own name (``inflight-owned``), so no record id (which may hold ``:``) can collide
        with an owned slot's name.
        """
        if owner:
            return f"{self.owned_inflight_prefix}{owner}:{practice_record_id}"
        return self._key("inflight", practice_record_id)

    @property
    def owned_inflight_prefix(self) -> str:
        """What an owned slot's name starts with (``<owner>:<record>`` follows)."""
        return self._key("inflight-owned", "")

    def deliveries(self, task_id: str, retry: int) -> str:
        """How many times this (task, retry) message was delivered (the poison cap)."""
        return self._key("deliveries", task_id, str(retry))

    def retried(self, task_id: str, retry: int) -> str:
        """Set once retry ``retry`` of a task is queued: the retry script queues it only once."""
        return self._key("retried", task_id, str(retry))

    @property
    def revoked(self) -> str:
        """Sorted set of cancelled task ids (score: when), checked before every delivery."""
        return self._key("revoked")

    @property
    def terminate(self) -> str:
        """Sorted set of cancelled task ids whose running copy must be stopped (score: when).

        Written with ``revoked`` by a cancel that asks to terminate; every worker's heartbeat
        checks the tasks it runs against it, so a missed message on :attr:`terminate_channel`
        is caught within one heartbeat.
        """
        return self._key("revoked", "terminate")

    @property
    def terminate_channel(self) -> str:
        """Pub/sub channel: a task id to stop now (every worker's heartbeat thread listens)."""
        return self._key("terminate")

    def unknown_offers(self, task_id: str) -> str:
        """How many times workers that do not know a task handed it back (see consumer.py)."""
        return self._key("unknown-offers", task_id)

    @property
    def running(self) -> str:
        """Hash task id -> JSON of the tasks running now (the Monitor's wait estimate)."""
        return self._key("stats", "running")

    def sink(self, task_id: str) -> str:
        """The result-sink claim of a task: a run's token while it calls the sink, then acked."""
        return self._key("sink-acked", task_id)

    @property
    def epoch(self) -> str:
        """When this server's memory of tasks began (microseconds); see task_ids.py."""
        return self._key("epoch")

    def worker(self, hostname: str) -> str:
        """A worker's heartbeat hash (TTL ``WORKER_DEAD_AFTER``)."""
        return self._key("worker", hostname)

    @property
    def workers(self) -> str:
        return self._key("workers")

    @property
    def reaper(self) -> str:
        """Lock: one dead-worker reaper at a time."""
        return self._key("reaper")

    # --- broker database --------------------------------------------------------------------
    @staticmethod
    def queue_lists(queue: str) -> list[str]:
        """Every list holding ``queue``'s messages, in the order workers take them.

        The bare queue (priority 0) first, then one list per priority step.
        """
        return [queue, *(f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS)]

    @staticmethod
    def queue_list(queue: str, priority: int) -> str:
        """The list kombu keeps a message of ``priority`` in: the highest step <= it."""
        steps = [step for step in PRIORITY_STEPS if step <= priority]
        return f"{queue}{PRIORITY_SEP}{steps[-1]}" if steps else queue

    unacked: str = "unacked"
    unacked_index: str = "unacked_index"

    @property
    def wake_prefix(self) -> str:
        return self._key("wake", "")

    @property
    def pause(self) -> str:
        """A list nothing pushes to: a worker pausing its consumption blocks on it."""
        return self._key("pause")

    def wake(self, queue: str) -> str:
        """One token per queued message: what idle workers block on (see reserve.lua)."""
        return self.wake_prefix + queue


#: Every Redis list that holds messages of a queue: the base list, then its priorities.
queue_lists = RecordKeys.queue_lists
