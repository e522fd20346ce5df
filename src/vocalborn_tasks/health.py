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
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._redis import Batch, Steps, run_steps_sync, sync_client
from .config import QUEUES, TaskSettings
from .errors import BrokerError, ManagerClosedError
from .record import PRIORITY_STEPS, RecordKeys, queue_lists
from .stats import OUTCOMES, RunRecord, parse_run, percentile

__all__ = [
    "HealthLevel",
    "HealthReport",
    "QueueStats",
    "SyncHealthReader",
    "TaskTypeStats",
    "WorkerStats",
    "drain_verdict",
    "health_report",
    "health_steps",
    "queue_stats_steps",
    "queues_without_worker",
    "recent_runs_steps",
    "task_type_stats",
    "task_type_stats_steps",
    "worker_stats",
    "worker_stats_steps",
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
        yield Batch("backend", update, "queue stats")
    return ages


def _drain_steps(
    settings: TaskSettings, stats: list[QueueStats], workers: Sequence[WorkerStats]
) -> Steps[list[QueueStats]]:
    """Compare each queue with the previous observation (kept in Redis between checks)."""
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
    if update:
        yield Batch("backend", update, "drain check")
    return out


def health_steps(settings: TaskSettings) -> Steps[HealthReport]:
    """The whole health check (see :meth:`Monitor.health` for its rules)."""
    now = datetime.now(UTC)
    try:
        _, broker_ms = yield Batch("broker", [("PING",)], "health")
        _, backend_ms = yield Batch("backend", [("PING",)], "health")
        (persistence_info, memory_info), _ = yield Batch(
            "broker", [("INFO", "persistence"), ("INFO", "memory")], "health"
        )
        workers = yield from worker_stats_steps(settings)
        stats = yield from queue_stats_steps(settings, QUEUES, workers)
        stats = yield from _drain_steps(settings, stats, workers)
    except (BrokerError, RedisConnectionError, RedisTimeoutError) as exc:
        # Only the server's absence or its refusal of our credentials means "unreachable" (and
        # the redis_unreachable alert); any other error is a bug or bad data and must surface
        # as itself, not as an outage.
        return HealthReport(
            level=HealthLevel.UNHEALTHY, reasons=[str(exc)], reachable=False, checked_at=now
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

    def run(self, steps: Steps[T]) -> T:
        """Run a reader's steps on this reader's clients."""
        if self._closed:
            raise ManagerClosedError("this SyncHealthReader is closed; create a new one")
        return run_steps_sync(steps, self.settings, broker=self.broker, backend=self.backend)

    def health(self) -> HealthReport:
        """As :meth:`Monitor.health`."""
        return self.run(health_steps(self.settings))

    def get_task_type_stats(self, window_s: float | None = None) -> list[TaskTypeStats]:
        """As :meth:`Monitor.get_task_type_stats`."""
        window = window_s if window_s is not None else self.settings.stats_window_s
        return self.run(task_type_stats_steps(self.settings, window))


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
