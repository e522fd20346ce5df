"""Confirmed writes: a transition a caller acts on counts only once replicas hold it.

With asynchronous replication a master acknowledges a write before any replica has it, so a
failover can discard a submit whose id was handed out, a cancel that returned, or a result that
waiters heard. A confirmed run sends ``[script, WAIT n t]`` (and ``INFO replication`` when a
report is due) in one round trip on one connection and accepts the write only when ``n``
replicas hold it; otherwise it runs the (idempotent) transition again, through a fresh
connection to whatever the sentinels name master now, until ``REDIS_FAILOVER_WAIT_S`` runs
out, then fails as unreachable (callers translate that into ``BrokerUnavailableError``).

``WAIT 1`` is not enough with two replicas: in a manual failover the replica that is not
promoted follows the old master for about a second after the promotion and confirms writes
the new master never gets (measured: 19-21 of 150 lost). So ``n`` is not only
``REDIS_REPLICA_ACKS`` but also every replica this process saw connected to the same master
(the same replication id), until its reports have shown it gone for :data:`REPLICA_GRACE_S`
seconds: the promoted replica leaves the old master at once, the old master then has fewer
replicas than it had, and writes wait (and move to the new master when the sentinels name
it) instead of being confirmed by the replica that is about to resync. The grace runs from
the first report that misses a replica, not from when it was last seen: a process paused
(stopped, swapped out) through a failover comes back remembering every replica, where a
wall-clock grace had it forget them all and accept a write the following replica alone
confirmed on the old master (a reservation that then ran twice, in one CI run of
``test_a_task_taken_from_the_old_master_after_the_promotion_runs_once``). The cost: a
replica that really died holds confirmed writes for up to :data:`REPLICA_GRACE_S` after a
report first misses it before the rest continue with one fewer. Writes before the ``WAIT``
on the master are covered too (replication is one stream): confirming a final result
confirms the progress and the sink's marker written before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "REPLICA_GRACE_S",
    "Confirmation",
    "ConfirmedRun",
    "ReplicaShortfallError",
    "is_failover_error",
]

#: How long a replica stays expected to confirm after a report first misses it (see the
#: module docstring).
REPLICA_GRACE_S = 5.0

#: Each WAIT blocks at most this long before the transition is tried again (ms).
_WAIT_STEP_MS = 500

#: The replication report rides along at most this often while writes are confirmed (and
#: with every write after one fell short): parsing it on every write cost a third of the rate
#: of concurrent submits, and the replica set changes far less often than the grace period.
REPORT_EVERY_S = 1.0

#: Error replies a failover produces, after which the same call may succeed on the new master.
#: The worker's connections turn these into reconnects too (worker/failover.py).
FAILOVER_REPLY_CODES: frozenset[str] = frozenset(
    {"UNBLOCKED", "READONLY", "MASTERDOWN", "LOADING", "NOREPLICAS"}
)
_FAILOVER_REPLIES = (*sorted(FAILOVER_REPLY_CODES), "TRYAGAIN")


class ReplicaShortfallError(RedisConnectionError):
    """Too few replicas confirmed a write within ``REDIS_FAILOVER_WAIT_S``.

    A connection error to its callers: the write may or may not survive, exactly as when the
    server went away mid-call, and the caller's retry (same task id) is idempotent.
    """


def is_failover_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what a call sees during a failover (retry it through the sentinels)."""
    if isinstance(
        exc,
        (RedisConnectionError, RedisTimeoutError, ReadOnlyError, BusyLoadingError, NoScriptError),
    ):
        return True
    if not isinstance(exc, ResponseError):
        return False
    # A pipeline's error names the failing command first: "Command # 1 (...) of pipeline
    # caused error: NOREPLICAS ...".
    text = str(exc).rsplit("caused error: ", 1)[-1].lstrip("('\"")
    return text.startswith(_FAILOVER_REPLIES)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Confirmation:
    """How many replicas must hold a write, and this process's memory of who they are.

    One per client (pool): every confirmed run of the process shares the observations.
    """

    #: ``REDIS_REPLICA_ACKS``: replicas that must confirm at the least.
    replicas: int
    #: ``REDIS_FAILOVER_WAIT_S``: how long a confirmed run keeps trying.
    wait_s: float
    grace_s: float = REPLICA_GRACE_S
    #: replica address -> None while reports list it connected, else the monotonic time of the
    #: first report that did not (replicas of the master with replication id ``_replid``).
    _expected: dict[str, float | None] = field(default_factory=dict)
    _replid: str = ""
    _reported_at: float = float("-inf")

    @classmethod
    def of(cls, settings: Any) -> Confirmation | None:
        """From ``TaskSettings``; None when nothing is to be confirmed (acks 0)."""
        replicas = int(settings.replica_acks)
        if replicas <= 0:
            return None
        return cls(replicas=replicas, wait_s=float(settings.redis_failover_wait_s))

    def needed(self) -> int:
        """Replicas the next write must reach on the master last seen."""
        return max(self.replicas, len(self._expected))

    def observe(self, info: Any, now: float | None = None) -> None:
        """Remember the replicas an ``INFO replication`` reply lists as online."""
        now = time.monotonic() if now is None else now
        self._reported_at = now
        if isinstance(info, (bytes, str)):
            info = _parse_info(_text(info))
        replid = str(info.get("master_replid", ""))
        if replid != self._replid:
            # Only the current master's replicas matter; forget an older master's list.
            self._replid = replid
            self._expected = {}
        connected = {
            f"{value.get('ip')}:{value.get('port')}"
            for name, value in info.items()
            if str(name).startswith("slave")
            and isinstance(value, dict)
            and value.get("state") == "online"
        }
        for address in connected:
            self._expected[address] = None
        for address, missing_since in list(self._expected.items()):
            if address in connected:
                continue
            if missing_since is None:
                self._expected[address] = now
            elif now - missing_since >= self.grace_s:
                del self._expected[address]

    def tail(self, needed: int, remaining_s: float) -> tuple[tuple[Any, ...], ...]:
        """The commands sent after the transition: the wait and, when due, the replication
        report (see :data:`REPORT_EVERY_S`)."""
        wait_ms = max(1, min(_WAIT_STEP_MS, int(remaining_s * 1000)))
        wait = ("WAIT", needed, wait_ms)
        if time.monotonic() - self._reported_at >= REPORT_EVERY_S:
            return (wait, ("INFO", "replication"))
        return (wait,)

    def doubt(self) -> None:
        """A write fell short: the next one brings a fresh replication report."""
        self._reported_at = float("-inf")

    def accepted(self, acks: Any, needed: int) -> bool:
        """Whether the wait's reply met ``needed`` (after the report may have raised it)."""
        return int(acks) >= max(needed, self.needed())

    def shortfall(self, acks: int, needed: int) -> ReplicaShortfallError:
        return ReplicaShortfallError(
            f"only {acks} of {needed} replicas confirmed the write within "
            f"{self.wait_s:g} s (REDIS_REPLICA_ACKS, REDIS_FAILOVER_WAIT_S)"
        )


class ConfirmedRun:
    """One confirmed run's attempts: what to send after the transitions, and after each
    attempt whether to accept it, try again (after what pause) or give up.

    The decisions of the sync and the async runner (record/calls.py), which differ only in
    their I/O; one copy, so the two cannot drift apart on the rule.
    """

    def __init__(self, confirm: Confirmation) -> None:
        self.confirm = confirm
        self.deadline = time.monotonic() + confirm.wait_s
        self.attempt = 0
        self._needed = 0

    def tail(self) -> tuple[tuple[Any, ...], ...]:
        """The commands to send after the transitions, for the attempt being built."""
        self._needed = self.confirm.needed()
        return self.confirm.tail(self._needed, self.deadline - time.monotonic())

    def after_error(self, exc: BaseException) -> float | None:
        """The pause before the next attempt after the send raised ``exc`` (the runner asks
        the sentinels again first); None: give up and let ``exc`` out."""
        if not is_failover_error(exc) or time.monotonic() > self.deadline:
            return None
        pause = backoff(self.attempt)
        self.attempt += 1
        return pause

    def after_reply(self, acks: Any, info: Any) -> bool:
        """Whether the write is accepted (``acks``: the WAIT's reply; ``info``: the report,
        None if none was asked for). False: send it again, after asking the sentinels.

        Raises:
            ReplicaShortfallError: too few replicas confirmed before the deadline.
        """
        if info is not None:
            self.confirm.observe(info)
        if self.confirm.accepted(acks, self._needed):
            return True
        self.confirm.doubt()
        if time.monotonic() > self.deadline:
            raise self.confirm.shortfall(int(acks), max(self._needed, self.confirm.needed()))
        self.attempt += 1
        return False


def _parse_info(text: str) -> dict[str, Any]:
    """Enough of an ``INFO`` text reply (when the client returns it raw)."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if not sep or line.startswith("#"):
            continue
        if "=" in value and "," in value:
            out[name] = dict(item.partition("=")[::2] for item in value.split(","))
        else:
            out[name] = value
    return out


def backoff(attempt: int) -> float:
    """Pause before attempt ``attempt + 1`` of a confirmed run (50 ms doubling to 0.5 s)."""
    return float(min(0.5, 0.05 * 2**attempt))


def relocate_sync(client: Any) -> None:
    """Ask the sentinels for the master again (drops idle connections to an old one)."""
    lookup: Callable[[], Any] | None = getattr(client.connection_pool, "get_master_address", None)
    if lookup is not None:
        try:
            lookup()
        except Exception:  # the next attempt reports what is wrong
            return


async def relocate(client: Any) -> None:
    """:func:`relocate_sync` for ``redis.asyncio`` clients."""
    lookup = getattr(client.connection_pool, "get_master_address", None)
    if lookup is not None:
        try:
            await lookup()
        except Exception:
            return


def split_tail(replies: Sequence[Any], tail: int) -> tuple[list[Any], Any, Any]:
    """A confirmed round trip's replies: the transitions', the wait's, the report's (None
    when none was asked for)."""
    head = list(replies[: len(replies) - tail])
    return head, replies[len(replies) - tail], replies[-1] if tail > 1 else None
