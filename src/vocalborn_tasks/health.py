"""The health check, written once: what it reads, and what it decides from what was read.

Two readers ask for the same data: the async :class:`~vocalborn_tasks.monitor.Monitor` (hosts,
the CLI, probes) and :class:`SyncHealthReader` (the periodic health task in a worker's pool
process, where no event loop runs and none is started). So the reading is written once, as
*steps*: generators that yield the round trips they need (:class:`~._redis.Batch`, a list of
commands for one server's pipeline) and are sent the replies; :func:`~._redis.run_steps` runs
them on ``redis.asyncio``, :func:`~._redis.run_steps_sync` on ``redis``. Every decision (health
level and reasons, drain verdicts, the "no live worker" rule, task-type statistics) is a pure
function of plain data, which unit tests call directly. Same server state, same report,
whichever reader asked.

The report also describes the replication topology (:class:`RedisTopology`): the server's role,
its replicas and their lag, ``min-replicas-to-write``, and with ``REDIS_SENTINELS`` what each
sentinel says. Sentinels are other servers than the two databases the steps read, so each
reader asks them itself (one round trip per sentinel, see :func:`sentinel_commands`) and hands
the answers to the steps; what they mean is decided here, once.
"""

from __future__ import annotations

import ast
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

import redis
import redis.retry
from pydantic import BaseModel, ConfigDict, Field
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._connections import sentinel_kwargs
from ._redis import Batch, Steps, run_steps_sync, sync_client
from .config import QUEUES, TaskSettings
from .errors import BrokerAuthError, BrokerError, BrokerUnavailableError, ManagerClosedError
from .record import PRIORITY_STEPS, RecordKeys, queue_lists
from .stats import OUTCOMES, RunRecord, parse_run, percentile

__all__ = [
    "HealthLevel",
    "HealthReport",
    "QueueStats",
    "RedisTopology",
    "ReplicaStats",
    "SentinelStats",
    "SyncHealthReader",
    "TaskTypeStats",
    "TopologyIssue",
    "WorkerStats",
    "drain_verdict",
    "health_report",
    "health_steps",
    "queue_stats_steps",
    "queues_without_worker",
    "recent_runs_steps",
    "redis_topology",
    "sentinel_commands",
    "sentinel_stats",
    "task_type_stats",
    "task_type_stats_steps",
    "topology_issues",
    "worker_stats",
    "worker_stats_steps",
    "write_refusal",
]

T = TypeVar("T")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class WorkerStats(_Model):
    """One live worker, as of its last heartbeat."""

    hostname: str
    pid: int
    concurrency: int
    queues: list[str]
    active: int
    reserved: int
    processed: int
    rss_kb: int
    last_seen: datetime
    started_at: datetime | None = None


class QueueStats(_Model):
    """One queue: how many messages wait, and which live workers consume it."""

    name: str
    length: int
    consumers: int
    #: Waiting messages per kombu priority list (0 is the base list, consumed first).
    priority_lengths: dict[int, int] = Field(default_factory=dict)
    #: Pool processes of the live consumers (how many of its tasks can run at once).
    consumer_processes: int = 0
    #: Age of the oldest waiting message in seconds (None when the queue is empty).
    oldest_age_s: float | None = None
    #: False when the queue has work, a consumer with a free slot, and nothing moved for
    #: ``health_stall_after_s``; None until two observations are far enough apart.
    draining: bool | None = None


class TaskTypeStats(_Model):
    """Recent runs of one task type over a window (from the workers' run records)."""

    task: str
    queue: str
    window_s: float
    #: Runs (deliveries) that ended in the window, whatever their outcome.
    runs: int
    succeeded: int
    failed: int
    retried: int
    revoked: int
    #: failed / (succeeded + failed); None without finished runs.
    failure_rate: float | None
    #: retried / runs; None without runs.
    retry_rate: float | None
    p50_s: float | None
    p95_s: float | None
    mean_s: float | None


class HealthLevel(StrEnum):
    """Overall verdict of :meth:`Monitor.health`."""

    HEALTHY = "healthy"  # everything as it should be
    DEGRADED = "degraded"  # works, but something needs attention (e.g. no persistence)
    UNHEALTHY = "unhealthy"  # work is not getting done (server down, no workers)


class ReplicaStats(_Model):
    """One replica as the master sees it (``INFO replication``)."""

    #: ``ip:port`` the replica announced to the master.
    address: str
    #: ``online`` once synchronised; ``wait_bgsave``/``send_bulk`` while it (re)synchronises.
    state: str
    #: Seconds since the replica last acknowledged the stream (it does every second).
    lag_s: int | None = None
    #: Bytes of the replication stream it has not acknowledged yet.
    behind_bytes: int | None = None


class SentinelStats(_Model):
    """What one sentinel says about the master it monitors as ``REDIS_SENTINEL_MASTER``."""

    #: ``host:port`` of the sentinel (as in ``REDIS_SENTINELS``).
    address: str
    reachable: bool
    #: ``host:port`` of the master as this sentinel names it; None when it did not answer or
    #: does not monitor that name.
    master: str | None = None
    #: ``SENTINEL CKQUORUM``: True when enough sentinels are reachable to agree on a failover
    #: and authorise it; None when not asked (the sentinel did not answer).
    quorum: bool | None = None
    #: Why it did not answer, or why it refused (the CKQUORUM refusal, for instance).
    error: str | None = None


class RedisTopology(_Model):
    """Where the writes go and who else holds them: what a failover would keep.

    Read from the server the clients reach (``INFO replication``, ``CONFIG GET
    min-replicas-*``) and, with ``REDIS_SENTINELS``, from every sentinel.
    """

    #: ``master`` or ``replica`` (a replica refuses writes).
    role: str
    #: For a replica: ``host:port`` of the master it follows.
    following: str | None = None
    replicas: list[ReplicaStats] = Field(default_factory=list)
    #: Replicas a confirmed write can count on: online, and acknowledged within
    #: ``min-replicas-max-lag`` seconds (10 when that is unknown).
    connected_replicas: int = 0
    #: The server's ``min-replicas-to-write``; None when ``CONFIG GET`` is refused (managed
    #: Redis often renames or forbids it): unknown, not an error.
    min_replicas_to_write: int | None = None
    min_replicas_max_lag_s: int | None = None
    #: True when the server refuses writes without enough acknowledging replicas
    #: (``min-replicas-to-write`` and ``min-replicas-max-lag`` both above 0): a master cut off
    #: from its replicas stops taking writes a failover would discard. Known from ``INFO``
    #: even when ``CONFIG GET`` is refused; None when neither tells.
    write_fencing: bool | None = None
    #: Replicas the server itself counts for ``min-replicas-to-write`` (``INFO``
    #: ``min_slaves_good_slaves``); None without fencing.
    good_replicas: int | None = None
    #: ``REDIS_REPLICA_ACKS``: replicas that must confirm a write callers act on.
    replica_acks: int = 0
    #: With sentinels: ``host:port`` of the master as most of them name it.
    master: str | None = None
    #: With sentinels: each one's answer, in ``REDIS_SENTINELS`` order.
    sentinels: list[SentinelStats] = Field(default_factory=list)
    #: The server refused the health check's own bookkeeping writes (``NOREPLICAS``,
    #: ``READONLY``, ``OOM``, ``MISCONF``...): what a submit meets now.
    writes_refused: str | None = None


class TopologyIssue(NamedTuple):
    """One finding about the topology: a stable kind (an alert key), a level, a reason."""

    kind: str
    level: HealthLevel
    reason: str


class HealthReport(_Model):
    """What :meth:`Monitor.health` found, with the reasons for its verdict."""

    level: HealthLevel
    reasons: list[str] = Field(default_factory=list)
    #: False when the server could not be reached at all (the other fields are then empty).
    reachable: bool = True
    broker_latency_ms: float | None = None
    backend_latency_ms: float | None = None
    workers: int = 0
    queues: list[QueueStats] = Field(default_factory=list)
    persistence: bool | None = None
    maxmemory_policy: str | None = None
    used_memory_bytes: int | None = None
    #: The server's ``maxmemory`` (0: no limit).
    maxmemory_bytes: int | None = None
    #: Age in seconds of the oldest message waiting in any queue.
    oldest_message_age_s: float | None = None
    #: Role, replicas, ``min-replicas-to-write`` and sentinels (None when unreachable).
    topology: RedisTopology | None = None
    checked_at: datetime

    @property
    def healthy(self) -> bool:
        """True unless the verdict is UNHEALTHY."""
        return self.level is not HealthLevel.UNHEALTHY


# --- decisions: pure functions of what was read -------------------------------------------------


def queues_without_worker(
    queues: Iterable[QueueStats], required: Iterable[str]
) -> list[QueueStats]:
    """The "no live worker" rule, written once (health verdicts and alerts both use it).

    A queue needs a live consumer when work waits in it or it is one of ``required``
    (``HEALTH_REQUIRED_QUEUES``). A pure function of what was read, so every reader (async
    Monitor, a synchronous check) gives the same verdict for the same data.
    """
    needed = set(required)
    return [q for q in queues if q.consumers == 0 and (q.length > 0 or q.name in needed)]


_SEVERITY = {HealthLevel.HEALTHY: 0, HealthLevel.DEGRADED: 1, HealthLevel.UNHEALTHY: 2}


def worker_stats(records: Iterable[Mapping[Any, Any]]) -> list[WorkerStats]:
    """Workers from their heartbeat hashes (an empty hash: the heartbeat expired, skipped)."""
    workers = []
    for raw in records:
        if not raw:
            continue  # heartbeat expired: the worker is gone
        rec = {_s(k): _s(v) for k, v in raw.items()}
        workers.append(
            WorkerStats(
                hostname=rec["hostname"],
                pid=int(rec.get("pid", 0)),
                concurrency=int(rec.get("concurrency", 0)),
                queues=[q for q in rec.get("queues", "").split(",") if q],
                active=int(rec.get("active", 0)),
                reserved=int(rec.get("reserved", 0)),
                processed=int(rec.get("processed", 0)),
                rss_kb=int(rec.get("rss_kb", 0)),
                last_seen=datetime.fromtimestamp(float(rec.get("last_seen", 0)), UTC),
                started_at=datetime.fromtimestamp(float(rec["started_at"]), UTC)
                if rec.get("started_at")
                else None,
            )
        )
    return workers


def drain_verdict(
    q: QueueStats,
    consumers: Sequence[WorkerStats],
    head: str,
    previous: Mapping[str, str],
    now: float,
    stall_after_s: float,
) -> tuple[bool | None, bool]:
    """Is ``q`` draining, compared with the previous observation? Returns (verdict, snapshot).

    ``snapshot`` False means: keep the previous observation (it is the one to compare the
    next check against). See :meth:`Monitor.health` for the rule.
    """
    processed = sum(w.processed for w in consumers)
    free_slot = any(w.active + w.reserved < w.concurrency for w in consumers)
    if q.length == 0:
        return True, True
    if not previous or previous.get("head") != head or not consumers:
        return (None if not previous or not consumers else True), True
    if now - float(previous.get("ts", now)) < stall_after_s:
        return {"1": True, "0": False}.get(previous.get("verdict", "")), False
    moved = str(processed) != previous.get("processed")
    return moved or not free_slot, True


#: A replica counts as connected when it acknowledged within this many seconds, if the
#: server's ``min-replicas-max-lag`` is unknown or 0 (replicas acknowledge every second).
DEFAULT_REPLICA_MAX_LAG_S = 10

#: Error codes with which a server refuses a write, whatever the write.
_WRITE_REFUSAL_CODES = ("NOREPLICAS", "READONLY", "OOM", "MISCONF", "MASTERDOWN")

#: redis-py raises these classes with the error code cut off the message (older versions
#: do not keep it in ``status_code``).
_CODE_OF_CLASS: tuple[tuple[type[ResponseError], str], ...] = (
    (ReadOnlyError, "READONLY"),
    (OutOfMemoryError, "OOM"),
    (MasterDownError, "MASTERDOWN"),
)


def write_refusal(exc: BaseException) -> str | None:
    """``CODE message`` when ``exc`` is the server refusing writes; None for any other error.

    ``NOREPLICAS`` (too few replicas for ``min-replicas-to-write``), ``READONLY`` (a
    replica), ``OOM`` (full under ``noeviction``), ``MISCONF`` (snapshots failing),
    ``MASTERDOWN``: each means a submit would fail now, which is what health reports. redis-py
    prefixes a pipeline's error with the failing command and cuts the code off the errors it
    has a class for; both are undone here so every reader gets the same text. The readers'
    error translation wraps a refusal in ``BrokerUnavailableError``: its cause is looked at.
    """
    if isinstance(exc, BrokerError) and isinstance(exc.__cause__, ResponseError):
        exc = exc.__cause__
    if not isinstance(exc, ResponseError):
        return None
    text = str(exc)
    marker = "caused error: "
    if marker in text:
        text = text.split(marker, 1)[1]
        if text.startswith("("):
            # The asyncio pipeline puts the error's args tuple there, not its message.
            with contextlib.suppress(ValueError, SyntaxError):
                args = ast.literal_eval(text)
                if isinstance(args, tuple) and args and isinstance(args[0], str):
                    text = args[0]
    code = getattr(exc, "status_code", None) or next(
        (c for cls, c in _CODE_OF_CLASS if isinstance(exc, cls)), None
    )
    if code is None:
        code, _, text = text.partition(" ")
    elif text.startswith(f"{code} "):
        # redis-py 8.2 sets ``status_code`` on every coded error but keeps the code in the
        # message of those it has no class for (NOREPLICAS); 8.1 set it only with a class.
        text = text[len(code) + 1 :]
    if code not in _WRITE_REFUSAL_CODES:
        return None
    return f"{code} {text.strip()}".strip()


def _config_values(reply: Any) -> dict[str, str]:
    """``CONFIG GET``'s reply (a map, or a flat list under RESP2 without a callback)."""
    if isinstance(reply, Mapping):
        return {_s(k): _s(v) for k, v in reply.items()}
    items = [_s(v) for v in reply or []]
    return dict(zip(items[::2], items[1::2], strict=False))


def _int_or_none(value: Any) -> int | None:
    try:
        return int(_s(value)) if value is not None else None
    except ValueError:
        return None


def _replica(raw: Any, master_offset: int | None) -> ReplicaStats:
    """One ``slaveN`` line of ``INFO replication`` (parsed by redis-py into a mapping)."""
    if isinstance(raw, Mapping):
        fields = {_s(k): _s(v) for k, v in raw.items()}
    else:
        fields = dict(p.partition("=")[::2] for p in _s(raw).split(","))
    offset = _int_or_none(fields.get("offset"))
    return ReplicaStats(
        address=f"{fields.get('ip', '?')}:{fields.get('port', '?')}",
        state=fields.get("state", "unknown"),
        lag_s=_int_or_none(fields.get("lag")),
        behind_bytes=max(master_offset - offset, 0)
        if master_offset is not None and offset is not None
        else None,
    )


def redis_topology(
    settings: TaskSettings,
    *,
    replication_info: Mapping[str, Any],
    min_replicas: Any = None,
    sentinels: Sequence[SentinelStats] | None = None,
    writes_refused: str | None = None,
) -> RedisTopology:
    """The topology from what was read.

    Args:
        replication_info: ``INFO replication`` of the server the clients reach.
        min_replicas: the reply of ``CONFIG GET min-replicas-*``; None when it was refused.
        sentinels: each sentinel's answer (None without sentinels).
        writes_refused: the refusal of the check's own writes (see :func:`write_refusal`).
    """
    info = {_s(k): v for k, v in replication_info.items()}
    role = "replica" if _s(info.get("role", "master")) in ("slave", "replica") else "master"
    following = None
    if role == "replica" and info.get("master_host") is not None:
        following = f"{_s(info['master_host'])}:{_s(info.get('master_port', '?'))}"
    to_write = max_lag = None
    if min_replicas is not None:
        config = _config_values(min_replicas)
        to_write = _int_or_none(config.get("min-replicas-to-write"))
        max_lag = _int_or_none(config.get("min-replicas-max-lag"))
    good = _int_or_none(info.get("min_slaves_good_slaves"))
    fencing: bool | None
    if to_write is not None and max_lag is not None:
        fencing = to_write > 0 and max_lag > 0
    else:
        # The server reports its count of good replicas only while both settings are above
        # 0: its presence says "fenced" even where CONFIG GET is refused.
        fencing = True if good is not None else None
    master_offset = _int_or_none(info.get("master_repl_offset"))
    lines = sorted(
        (int(k.removeprefix("slave")), v)
        for k, v in info.items()
        if k.startswith("slave") and k.removeprefix("slave").isdigit()
    )
    replicas = [_replica(raw, master_offset) for _, raw in lines]
    limit = max_lag if max_lag else DEFAULT_REPLICA_MAX_LAG_S
    connected = sum(
        1 for r in replicas if r.state == "online" and (r.lag_s is None or r.lag_s <= limit)
    )
    named = [s.master for s in sentinels or () if s.master is not None]
    return RedisTopology(
        role=role,
        following=following,
        replicas=replicas,
        connected_replicas=connected,
        min_replicas_to_write=to_write,
        min_replicas_max_lag_s=max_lag,
        write_fencing=fencing,
        good_replicas=good if fencing else None,
        replica_acks=settings.replica_acks,
        master=Counter(named).most_common(1)[0][0] if named else None,
        sentinels=list(sentinels or ()),
        writes_refused=writes_refused,
    )


def topology_issues(settings: TaskSettings, topology: RedisTopology) -> list[TopologyIssue]:
    """What is wrong with the topology, each with a stable kind (alerts key on it).

    UNHEALTHY: the server is a replica, or it refuses writes (seen, or known from too few good
    replicas for ``min-replicas-to-write``). DEGRADED: fewer connected replicas than
    ``REDIS_REPLICA_ACKS`` (confirmed writes wait, then fail); ``REDIS_REPLICA_ACKS`` above 0
    without fencing (``min-replicas-to-write`` 0: a resumed old master acknowledges writes a
    failover discards); with sentinels, a sentinel that does not answer, does not know the
    master, disagrees with the others, or cannot reach a quorum. A single server with
    ``REDIS_REPLICA_ACKS`` 0 and no replicas has nothing to report here.
    """
    t = topology
    out: list[TopologyIssue] = []
    if t.role != "master":
        of = f" of {t.following}" if t.following else ""
        hint = (
            f"the sentinels name {t.master or 'no master'}: a failover is under way, or this "
            "client has not reconnected yet"
            if settings.uses_sentinel
            else "point REDIS_URL at the master, or use REDIS_SENTINELS"
        )
        out.append(
            TopologyIssue(
                "role",
                HealthLevel.UNHEALTHY,
                f"the server is a replica{of}: it refuses writes (READONLY); {hint}",
            )
        )
    if t.writes_refused:
        out.append(
            TopologyIssue(
                "writes",
                HealthLevel.UNHEALTHY,
                f"the server refuses writes ({t.writes_refused}): submits, cancels and results "
                "fail until it takes them again",
            )
        )
    elif (
        t.role == "master"
        and t.write_fencing
        and t.good_replicas is not None
        and t.good_replicas < (t.min_replicas_to_write or 1)
    ):
        needed = t.min_replicas_to_write if t.min_replicas_to_write is not None else "above 0"
        out.append(
            TopologyIssue(
                "writes",
                HealthLevel.UNHEALTHY,
                f"the server refuses writes (NOREPLICAS): {t.good_replicas} replicas "
                f"acknowledged within min-replicas-max-lag, min-replicas-to-write is {needed}",
            )
        )
    if t.connected_replicas < t.replica_acks:
        out.append(
            TopologyIssue(
                "replicas",
                HealthLevel.DEGRADED,
                f"{t.connected_replicas} replicas connected but REDIS_REPLICA_ACKS is "
                f"{t.replica_acks}: confirmed writes (submit, cancel, final results) wait up to "
                f"REDIS_FAILOVER_WAIT_S ({settings.redis_failover_wait_s:g} s) for "
                "acknowledgements, then fail",
            )
        )
    if t.replica_acks > 0 and t.write_fencing is False:
        setting = (
            "min-replicas-max-lag is 0, which turns min-replicas-to-write off"
            if (t.min_replicas_to_write or 0) > 0
            else "min-replicas-to-write is 0"
        )
        out.append(
            TopologyIssue(
                "fencing",
                HealthLevel.DEGRADED,
                f"{setting}: a resumed old master can acknowledge writes that a failover "
                "discards (set min-replicas-to-write 1 and min-replicas-max-lag 10 on every "
                "server)",
            )
        )
    out += _sentinel_issues(settings, t.sentinels)
    return out


def _sentinel_issues(
    settings: TaskSettings, sentinels: Sequence[SentinelStats]
) -> list[TopologyIssue]:
    if not sentinels:
        return []
    degraded = HealthLevel.DEGRADED
    answered = [s for s in sentinels if s.reachable]
    silent = [s for s in sentinels if not s.reachable]
    if not answered:
        return [
            TopologyIssue(
                "sentinels_unreachable",
                degraded,
                f"no sentinel answered ({_listing(silent)}): clients cannot find the master "
                "after a reconnect, and no failover can happen",
            )
        ]
    out: list[TopologyIssue] = []
    if silent:
        out.append(
            TopologyIssue(
                "sentinels_unreachable",
                degraded,
                f"{len(silent)} of {len(sentinels)} sentinels did not answer "
                f"({_listing(silent)}): fewer are left to agree on a failover",
            )
        )
    strangers = [s for s in answered if s.master is None]
    if strangers:
        out.append(
            TopologyIssue(
                "sentinels_unknown_master",
                degraded,
                f"sentinels {', '.join(s.address for s in strangers)} do not monitor "
                f"{settings.redis_sentinel_master!r} (REDIS_SENTINEL_MASTER)",
            )
        )
    if len({s.master for s in answered if s.master is not None}) > 1:
        views = ", ".join(f"{s.address} names {s.master}" for s in answered if s.master)
        out.append(
            TopologyIssue(
                "sentinels_disagree",
                degraded,
                f"the sentinels disagree on the master ({views}): a failover is under way, or "
                "a sentinel is cut off",
            )
        )
    no_quorum = [s for s in answered if s.master is not None and s.quorum is False]
    if no_quorum:
        out.append(
            TopologyIssue(
                "sentinels_quorum",
                degraded,
                f"no failover could be authorised now ({_listing(no_quorum)})",
            )
        )
    return out


def _listing(sentinels: Sequence[SentinelStats]) -> str:
    """``a, b: error; c: other error``: sentinels grouped by what they said."""
    by_error: dict[str, list[str]] = {}
    for s in sentinels:
        by_error.setdefault(s.error or "", []).append(s.address)
    return "; ".join(
        f"{', '.join(addresses)}: {error}" if error else ", ".join(addresses)
        for error, addresses in by_error.items()
    )


def sentinel_commands(settings: TaskSettings) -> list[tuple[Any, ...]]:
    """What a reader asks each sentinel, pipelined (see :func:`sentinel_stats`)."""
    name = settings.redis_sentinel_master
    return [("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name), ("SENTINEL", "CKQUORUM", name)]


def sentinel_stats(address: str, replies: Sequence[Any] | BaseException) -> SentinelStats:
    """One sentinel's answer to :func:`sentinel_commands` (replies with errors in place), or
    the error that kept it from answering."""
    if isinstance(replies, BaseException):
        return SentinelStats(address=address, reachable=False, error=_first_line(replies))
    named, quorum = replies
    if isinstance(named, BaseException):
        return SentinelStats(address=address, reachable=True, error=_first_line(named))
    master = f"{_s(named[0])}:{_s(named[1])}" if named else None
    if master is None:
        # It does not monitor that name (CKQUORUM says so too).
        return SentinelStats(address=address, reachable=True, error=None)
    if isinstance(quorum, BaseException):
        return SentinelStats(
            address=address, reachable=True, master=master, quorum=False, error=_first_line(quorum)
        )
    return SentinelStats(address=address, reachable=True, master=master, quorum=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def health_report(
    settings: TaskSettings,
    *,
    persistence_info: Mapping[str, Any],
    memory_info: Mapping[str, Any],
    workers: Sequence[WorkerStats],
    queues: list[QueueStats],
    broker_ms: float,
    backend_ms: float,
    checked_at: datetime,
    topology: RedisTopology | None = None,
) -> HealthReport:
    """The verdict and its reasons, from what a reader found on a reachable server."""
    s = settings
    reasons: list[str] = []
    level = HealthLevel.HEALTHY

    def worse(new: HealthLevel, reason: str) -> None:
        nonlocal level
        reasons.append(reason)
        if _SEVERITY[new] > _SEVERITY[level]:
            level = new

    persistence = bool(int(persistence_info.get("aof_enabled", 0)))
    if not persistence:
        worse(
            HealthLevel.DEGRADED,
            "the server has no AOF persistence: a restart loses queued tasks (appendonly yes)",
        )
    policy = _s(memory_info.get("maxmemory_policy", "unknown"))
    if policy != "noeviction":
        worse(
            HealthLevel.UNHEALTHY,
            f"maxmemory-policy is {policy}: the server may evict queued tasks (use noeviction)",
        )
    used = int(memory_info.get("used_memory", 0))
    maxmemory = int(memory_info.get("maxmemory", 0))
    if maxmemory and used > s.health_max_memory_ratio * maxmemory:
        worse(
            HealthLevel.DEGRADED,
            f"memory use {used / maxmemory:.0%} of maxmemory ({used} of {maxmemory} bytes)",
        )
    for issue in topology_issues(s, topology) if topology is not None else ():
        worse(issue.level, issue.reason)
    unserved = {q.name for q in queues_without_worker(queues, s.health_required_queues)}
    for q in queues:
        if q.name in unserved:
            worse(HealthLevel.UNHEALTHY, f"queue {q.name} has no live worker ({q.length} waiting)")
        elif q.draining is False:
            worse(
                HealthLevel.UNHEALTHY,
                f"queue {q.name} is not draining: {q.length} waiting and nothing taken for "
                f"{s.health_stall_after_s:g} s although a worker has a free slot",
            )
        if q.oldest_age_s is not None and q.oldest_age_s > s.health_max_message_age_s:
            worse(
                HealthLevel.DEGRADED,
                f"queue {q.name}: oldest waiting message is {q.oldest_age_s:.0f} s old",
            )
    ages = [q.oldest_age_s for q in queues if q.oldest_age_s is not None]
    return HealthReport(
        level=level,
        reasons=reasons,
        broker_latency_ms=round(broker_ms, 3),
        backend_latency_ms=round(backend_ms, 3),
        workers=len(workers),
        queues=queues,
        persistence=persistence,
        maxmemory_policy=policy,
        used_memory_bytes=used,
        maxmemory_bytes=maxmemory,
        oldest_message_age_s=max(ages) if ages else None,
        topology=topology,
        checked_at=checked_at,
    )


def task_type_stats(
    runs: Mapping[str, tuple[str, Sequence[RunRecord]]], window_s: float
) -> list[TaskTypeStats]:
    """Per task type (sorted by name): counts, rates and p50/p95/mean durations of ``runs``."""
    out = []
    for name, (queue, records) in sorted(runs.items()):
        counts = {o: sum(1 for r in records if r.outcome == o) for o in OUTCOMES}
        finished = counts["success"] + counts["failure"]
        durations = [r.duration_s for r in records if r.outcome in ("success", "failure")]
        p50, p95 = percentile(durations, 0.5), percentile(durations, 0.95)
        out.append(
            TaskTypeStats(
                task=name,
                queue=queue,
                window_s=window_s,
                runs=len(records),
                succeeded=counts["success"],
                failed=counts["failure"],
                retried=counts["retry"],
                revoked=counts["revoked"],
                failure_rate=counts["failure"] / finished if finished else None,
                retry_rate=counts["retry"] / len(records) if records else None,
                p50_s=None if p50 is None else round(p50, 4),
                p95_s=None if p95 is None else round(p95, 4),
                mean_s=round(sum(durations) / len(durations), 4) if durations else None,
            )
        )
    return out


# --- reads: the round trips, for either client --------------------------------------------------


def worker_stats_steps(settings: TaskSettings) -> Steps[list[WorkerStats]]:
    """Workers whose heartbeat is current, sorted by hostname."""
    keys = RecordKeys.of(settings)
    (members,), _ = yield Batch("backend", [("SMEMBERS", keys.workers)], "worker stats")
    names = sorted(_s(n) for n in members)
    records, _ = yield Batch(
        "backend", [("HGETALL", keys.worker(name)) for name in names], "worker stats"
    )
    return worker_stats(records)


def queue_stats_steps(
    settings: TaskSettings, names: Sequence[str], workers: Sequence[WorkerStats]
) -> Steps[list[QueueStats]]:
    """Length (per priority list), consumers and oldest message age of each queue."""
    per = len(PRIORITY_STEPS) + 1
    commands: list[tuple[Any, ...]] = []
    for name in names:
        for key in queue_lists(name):
            commands += [("LLEN", key), ("LINDEX", key, -1)]
    raw, _ = yield Batch("broker", commands, "queue stats")
    heads: dict[str, str | None] = {}
    for i, name in enumerate(names):
        for j, key in enumerate(queue_lists(name)):
            heads[key] = _message_id(raw[(i * per + j) * 2 + 1])
    known = [(k, h) for k, h in heads.items() if h is not None]
    ages = yield from _message_ages_steps(settings, known)
    out = []
    for i, name in enumerate(names):
        lengths = {step: int(raw[(i * per + j) * 2]) for j, step in enumerate((0, *PRIORITY_STEPS))}
        key_ages = [ages[k] for k in queue_lists(name) if k in ages]
        consumers = [w for w in workers if name in w.queues]
        out.append(
            QueueStats(
                name=name,
                length=sum(lengths.values()),
                consumers=len(consumers),
                priority_lengths=lengths,
                consumer_processes=sum(w.concurrency for w in consumers),
                oldest_age_s=round(max(key_ages), 3) if key_ages else None,
            )
        )
    return out


def _message_ages_steps(
    settings: TaskSettings, heads: list[tuple[str, str]]
) -> Steps[dict[str, float]]:
    """Age of the oldest message of each list: submit time if known, else first sighting."""
    if not heads:
        return {}
    s = settings
    now = time.time()
    commands: list[tuple[Any, ...]] = []
    for key, task_id in heads:
        commands += [
            ("HGET", RecordKeys.of(s).marker(task_id), "t"),
            ("HMGET", s.key("queue-head", key), "id", "seen"),
        ]
    raw, _ = yield Batch("backend", commands, "queue stats")
    ages: dict[str, float] = {}
    update: list[tuple[Any, ...]] = []
    for n, (key, task_id) in enumerate(heads):
        submitted, (seen_id, seen_at) = raw[2 * n], raw[2 * n + 1]
        if submitted is not None:
            ages[key] = max(0.0, now - float(_s(submitted)))
            continue
        # Sent by something other than TaskManager (beat, plain Celery): no submit time.
        # Remember when we first saw this message at the head; its age is at least that.
        if seen_id is not None and _s(seen_id) == task_id and seen_at is not None:
            ages[key] = max(0.0, now - float(_s(seen_at)))
        else:
            ages[key] = 0.0
            head_key = s.key("queue-head", key)
            update += [("HSET", head_key, "id", task_id, "seen", repr(now))]
            update += [("EXPIRE", head_key, 7 * 86400)]
    if update:
        # A server that refuses writes still has queues to report; health_steps tells.
        yield from _bookkeeping_write(Batch("backend", update, "queue stats"))
    return ages


def _bookkeeping_write(batch: Batch) -> Steps[str | None]:
    """Run the check's own writes; a server refusing writes is a finding, not a crash.

    Returns the refusal (see :func:`write_refusal`), or None when the writes went through.
    """
    try:
        yield batch
    except (ResponseError, BrokerUnavailableError) as exc:
        # The readers translate a refusal (NOREPLICAS, READONLY...) into BrokerUnavailableError.
        refusal = write_refusal(exc)
        if refusal is None:
            raise
        return refusal
    return None


def _min_replicas_steps() -> Steps[Any]:
    """``CONFIG GET min-replicas-*``; None when refused (renamed, forbidden by the ACL or the
    provider): unknown, never an error of the health check."""
    try:
        (reply,), _ = yield Batch("broker", [("CONFIG GET", "min-replicas-*")], "health")
    except ResponseError:
        return None
    except BrokerAuthError as exc:
        if isinstance(exc.__cause__, ResponseError):  # NOPERM for this command only
            return None
        raise
    return reply


def _drain_steps(
    settings: TaskSettings, stats: list[QueueStats], workers: Sequence[WorkerStats]
) -> Steps[tuple[list[QueueStats], str | None]]:
    """Compare each queue with the previous observation (kept in Redis between checks).

    Also returns the server's refusal to store this observation, if it refused.
    """
    s = settings
    now = time.time()
    heads_raw, _ = yield Batch(
        "broker",
        [("LINDEX", key, -1) for q in stats for key in queue_lists(q.name)],
        "drain check",
    )
    previous, _ = yield Batch(
        "backend", [("HGETALL", s.key("drain", q.name)) for q in stats], "drain check"
    )
    out: list[QueueStats] = []
    update: list[tuple[Any, ...]] = []
    per = len(PRIORITY_STEPS) + 1
    for i, q in enumerate(stats):
        ids = [_message_id(r) for r in heads_raw[i * per : (i + 1) * per]]
        head = next((h for h in ids if h is not None), "")
        consumers = [w for w in workers if q.name in w.queues]
        prev = {_s(k): _s(v) for k, v in previous[i].items()}
        verdict, snapshot = drain_verdict(q, consumers, head, prev, now, s.health_stall_after_s)
        if snapshot:
            key = s.key("drain", q.name)
            processed = sum(w.processed for w in consumers)
            flag = {True: "1", False: "0", None: ""}[verdict]
            fields = ("head", head, "processed", str(processed), "ts", repr(now), "verdict", flag)
            update += [
                ("HSET", key, *fields),
                ("EXPIRE", key, int(max(s.health_stall_after_s * 10, 3600))),
            ]
        out.append(q.model_copy(update={"draining": verdict}))
    refused = None
    if update:
        refused = yield from _bookkeeping_write(Batch("backend", update, "drain check"))
    return out, refused


def health_steps(
    settings: TaskSettings, sentinels: Sequence[SentinelStats] | None = None
) -> Steps[HealthReport]:
    """The whole health check (see :meth:`Monitor.health` for its rules).

    Args:
        sentinels: what each sentinel answered (the reader asks them: they are not one of the
            two databases steps read); None without sentinels.
    """
    now = datetime.now(UTC)
    try:
        _, broker_ms = yield Batch("broker", [("PING",)], "health")
        _, backend_ms = yield Batch("backend", [("PING",)], "health")
        (persistence_info, memory_info, replication_info), _ = yield Batch(
            "broker",
            [("INFO", "persistence"), ("INFO", "memory"), ("INFO", "replication")],
            "health",
        )
        min_replicas = yield from _min_replicas_steps()
        workers = yield from worker_stats_steps(settings)
        stats = yield from queue_stats_steps(settings, QUEUES, workers)
        stats, refused = yield from _drain_steps(settings, stats, workers)
    except (BrokerError, RedisConnectionError, RedisTimeoutError) as exc:
        # Only the server's absence or its refusal of our credentials means "unreachable" (and
        # the redis_unreachable alert); any other error is a bug or bad data and must surface
        # as itself, not as an outage.
        return HealthReport(
            level=HealthLevel.UNHEALTHY, reasons=[str(exc)], reachable=False, checked_at=now
        )
    topology = redis_topology(
        settings,
        replication_info=replication_info,
        min_replicas=min_replicas,
        sentinels=sentinels,
        writes_refused=refused,
    )
    return health_report(
        settings,
        persistence_info=persistence_info,
        memory_info=memory_info,
        workers=workers,
        queues=stats,
        broker_ms=broker_ms,
        backend_ms=backend_ms,
        checked_at=now,
        topology=topology,
    )


def recent_runs_steps(
    settings: TaskSettings, since: float
) -> Steps[dict[str, tuple[str, list[RunRecord]]]]:
    """task name -> (queue, runs that ended since ``since``)."""
    s = settings
    (raw_tasks,), _ = yield Batch(
        "backend", [("HGETALL", s.key("stats", "tasks"))], "task statistics"
    )
    tasks = {_s(k): _s(v) for k, v in raw_tasks.items()}
    names = sorted(tasks)
    members, _ = yield Batch(
        "backend",
        [("ZRANGEBYSCORE", s.key("stats", "runs", name), since, "+inf") for name in names],
        "task statistics",
    )
    out: dict[str, tuple[str, list[RunRecord]]] = {}
    for name, raw in zip(names, members, strict=True):
        runs = [r for r in (parse_run(name, m) for m in raw) if r is not None]
        out[name] = (tasks[name], runs)
    return out


def task_type_stats_steps(settings: TaskSettings, window_s: float) -> Steps[list[TaskTypeStats]]:
    """Per task type statistics over the last ``window_s`` seconds."""
    runs = yield from recent_runs_steps(settings, time.time() - window_s)
    return task_type_stats(runs, window_s)


# --- the synchronous reader ---------------------------------------------------------------------


class SyncHealthReader:
    """The health check on synchronous clients, for code that runs no event loop.

    The periodic health task uses it in a worker's pool process. Same steps, same
    decisions, same report as :meth:`Monitor.health`. Use it as ``with SyncHealthReader(s)``.
    """

    def __init__(self, settings: TaskSettings) -> None:
        self.settings = settings
        self.broker = sync_client(settings, "broker")
        self.backend = sync_client(settings, "backend")
        # One client per sentinel (none without sentinels); each connects on first use.
        self._sentinels = [
            (f"{host}:{port}", _sentinel_client(settings, host, port))
            for host, port in settings.sentinel_addresses
        ]
        self._closed = False

    def __repr__(self) -> str:
        return f"<SyncHealthReader {self.settings.redacted_broker_url}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections; further use raises ManagerClosedError."""
        if self._closed:
            return
        self._closed = True
        self.broker.close()
        self.backend.close()
        for _, client in self._sentinels:
            client.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosedError("this SyncHealthReader is closed; create a new one")

    def run(self, steps: Steps[T]) -> T:
        """Run a reader's steps on this reader's clients."""
        self._check_open()
        return run_steps_sync(steps, self.settings, broker=self.broker, backend=self.backend)

    def ask_sentinels(self) -> list[SentinelStats]:
        """Each sentinel's answer, one after the other (each bounded by the connect timeout)."""
        self._check_open()
        answers = []
        for address, client in self._sentinels:
            try:
                pipe = client.pipeline(transaction=False)
                for command in sentinel_commands(self.settings):
                    pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                replies: list[Any] | BaseException = pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                replies = exc
            answers.append(sentinel_stats(address, replies))
        return answers

    def health(self) -> HealthReport:
        """As :meth:`Monitor.health`."""
        sentinels = self.ask_sentinels() if self.settings.uses_sentinel else None
        return self.run(health_steps(self.settings, sentinels))

    def get_task_type_stats(self, window_s: float | None = None) -> list[TaskTypeStats]:
        """As :meth:`Monitor.get_task_type_stats`."""
        window = window_s if window_s is not None else self.settings.stats_window_s
        return self.run(task_type_stats_steps(self.settings, window))


def _sentinel_client(settings: TaskSettings, host: str, port: int) -> redis.Redis:
    """A client of one sentinel: its own credentials and TLS, no retry (a silent sentinel is
    an answer: the check goes on to the next)."""
    return redis.Redis(
        host=host, port=port, retry=redis.retry.Retry(NoBackoff(), 0), **sentinel_kwargs(settings)
    )


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _message_id(raw: Any) -> str | None:
    """The task id in a kombu message envelope (None for an empty list or a foreign message)."""
    if raw is None:
        return None
    try:
        msg = json.loads(raw)
        task_id = msg.get("headers", {}).get("id")
    except (ValueError, AttributeError, TypeError):
        return None
    return str(task_id) if task_id else None
