"""Monitor: typed, async answers to "are workers alive, how long are the queues, is Redis safe".

It reads what workers publish in their heartbeats (see
:mod:`vocalborn_tasks.worker.heartbeat`) and the broker's own lists and settings, so none of
its calls needs a broadcast to every worker.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._redis import async_client, redis_errors
from .config import QUEUES, TaskSettings
from .errors import BrokerUnavailableError, ManagerClosedError
from .record import PRIORITY_STEPS, AsyncRecord, RecordKeys, calls, queue_lists
from .record.purge import purge_queue as _purge_queue
from .stats import OUTCOMES, RunRecord, parse_run, percentile, running_tasks

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "HealthLevel",
    "HealthReport",
    "Monitor",
    "QueueStats",
    "TaskPosition",
    "TaskTypeStats",
    "WorkerStats",
    "queue_keys",
    "queues_without_worker",
]

#: Every Redis list that holds messages of a queue (the base list and its priority lists).
queue_keys = queue_lists
#: How many messages ahead of a task have their task names read for its wait estimate.
_NAMES_SAMPLE = 1000


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


class TaskPosition(_Model):
    """Where a task stands: waiting (with its place in line), running, or not in a queue."""

    task_id: str
    #: ``waiting``, ``running`` or ``not_queued`` (finished, unknown, or held by a worker).
    state: str
    queue: str | None = None
    #: 1 means "next to be taken"; None unless waiting.
    position: int | None = None
    #: Messages a worker will take before this one (position - 1 plus the ones workers hold).
    ahead: int | None = None
    queue_length: int | None = None
    #: Pool processes of the live workers consuming the queue.
    consumer_processes: int = 0
    #: Seconds until a worker should start it, from the recent durations of each task type
    #: ahead of it and running; None without data or without a consumer.
    estimated_wait_s: float | None = None
    #: Mean duration (s) of this task's type's recent runs (its queue's, when the type has
    #: none): how long it should take once started.
    mean_duration_s: float | None = None


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


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Monitor:
    """Read-mostly view of the system for operators, probes and dashboards.

    Use it as ``async with Monitor(settings) as monitor``.
    """

    def __init__(self, settings: TaskSettings | None = None) -> None:
        self.settings = settings if settings is not None else TaskSettings()
        self._broker: aioredis.Redis | None = None
        self._backend: aioredis.Redis | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Monitor {self.settings.redacted_broker_url}>"

    async def __aenter__(self) -> Self:
        self._clients()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; further use raises ManagerClosedError."""
        if self._closed:
            return
        self._closed = True
        for client in (self._broker, self._backend):
            if client is not None:
                await client.aclose()

    def _clients(self) -> tuple[aioredis.Redis, aioredis.Redis]:
        if self._closed:
            raise ManagerClosedError("this Monitor is closed; create a new one")
        if self._broker is None or self._backend is None:
            self._broker = async_client(self.settings, self.settings.broker_url, max_connections=8)
            self._backend = async_client(
                self.settings, self.settings.backend_url, max_connections=8
            )
        return self._broker, self._backend

    async def get_worker_stats(self) -> list[WorkerStats]:
        """Workers whose heartbeat is current, sorted by hostname."""
        _, backend = self._clients()
        s = self.settings
        async with redis_errors(s, "worker stats"):
            names = sorted(_s(n) for n in await backend.smembers(RecordKeys.of(s).workers))
            pipe = backend.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(RecordKeys.of(s).worker(name))
            records = await pipe.execute()
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

    async def get_queue_length(self, queue: str) -> int:
        """Messages waiting in ``queue`` (priority sub-queues included; running ones excluded)."""
        return (await self.get_queue_lengths([queue]))[queue]

    async def get_queue_lengths(self, queues: Iterable[str] = QUEUES) -> dict[str, int]:
        """Waiting messages per queue, in one round trip."""
        broker, _ = self._clients()
        names = list(queues)
        async with redis_errors(self.settings, "queue lengths"):
            pipe = broker.pipeline(transaction=False)
            for name in names:
                for key in queue_keys(name):
                    pipe.llen(key)
            counts = await pipe.execute()
        per = len(PRIORITY_STEPS) + 1
        return {name: sum(counts[i * per : (i + 1) * per]) for i, name in enumerate(names)}

    async def purge_queue(self, queue: str) -> int:
        """Delete every waiting message of ``queue``; returns how many were removed.

        Each purged task ends REVOKED with error code ``purged`` (its waiters are told at
        once, ``wait_for_result`` raises :class:`TaskRevokedError`), and its practice record
        is free for a new submit. Running tasks are not affected. Use with care: purged
        analyses do not run.
        """
        broker, _ = self._clients()
        async with redis_errors(self.settings, f"purge {queue}"):
            return await _purge_queue(broker, self.settings, queue)

    async def get_queue_stats(self, queues: Iterable[str] = QUEUES) -> list[QueueStats]:
        """Length (per priority list), consumers and oldest message age of each queue."""
        names = list(queues)
        workers = await self.get_worker_stats()
        return await self._queue_stats(names, workers)

    async def _queue_stats(
        self, names: Sequence[str], workers: Sequence[WorkerStats]
    ) -> list[QueueStats]:
        broker, backend = self._clients()
        s = self.settings
        per = len(PRIORITY_STEPS) + 1
        async with redis_errors(s, "queue stats"):
            pipe = broker.pipeline(transaction=False)
            for name in names:
                for key in queue_keys(name):
                    pipe.llen(key)
                    pipe.lindex(key, -1)
            raw = await pipe.execute()
            heads: dict[str, str | None] = {}
            for i, name in enumerate(names):
                for j, key in enumerate(queue_keys(name)):
                    heads[key] = _message_id(raw[(i * per + j) * 2 + 1])
            known = [(k, h) for k, h in heads.items() if h is not None]
            ages = await self._message_ages(backend, known)
        out = []
        for i, name in enumerate(names):
            lengths = {
                step: int(raw[(i * per + j) * 2]) for j, step in enumerate((0, *PRIORITY_STEPS))
            }
            key_ages = [ages[k] for k in queue_keys(name) if k in ages]
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

    async def _message_ages(
        self, backend: aioredis.Redis, heads: list[tuple[str, str]]
    ) -> dict[str, float]:
        """Age of the oldest message of each list: submit time if known, else first sighting."""
        if not heads:
            return {}
        s = self.settings
        now = time.time()
        pipe = backend.pipeline(transaction=False)
        for key, task_id in heads:
            pipe.hget(RecordKeys.of(s).marker(task_id), "t")
            pipe.hmget(s.key("queue-head", key), "id", "seen")
        raw = await pipe.execute()
        ages: dict[str, float] = {}
        update = backend.pipeline(transaction=False)
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
                update.hset(s.key("queue-head", key), mapping={"id": task_id, "seen": repr(now)})
                update.expire(s.key("queue-head", key), 7 * 86400)
        if len(update):
            await update.execute()
        return ages

    async def get_task_position(self, task_id: str, queue: str | None = None) -> TaskPosition:
        """Where ``task_id`` is: its place in line and an estimated wait, or that it runs.

        Args:
            task_id: the task.
            queue: where to look when the task was not sent by a TaskManager (which records
                its queue); the library's queues by default.

        The position counts the messages a worker takes first: earlier messages of the same
        list, then the lists of higher priority. The wait estimate simulates the queue's
        consumers' pool slots taking the messages ahead, each costing the recent mean
        duration of *its own* task type (a 20 s report behind 30 ms analyses counts as 20 s);
        a busy slot frees when its running task reaches its type's mean, so the estimate is
        never less than what the running tasks should still take. Types without recent runs
        cost the queue's mean; the names of at most ``_NAMES_SAMPLE`` messages ahead are
        read, the rest cost their mean.
        """
        broker, backend = self._clients()
        s = self.settings
        async with redis_errors(s, f"position of task {task_id}"):
            pipe = backend.pipeline(transaction=False)
            pipe.hget(RecordKeys.of(s).marker(task_id), "queue")
            pipe.hget(RecordKeys.of(s).running, task_id)
            marker_queue, running = await pipe.execute()
        if running is not None:
            entry = running_tasks({task_id: running}).get(task_id, {})
            return TaskPosition(task_id=task_id, state="running", queue=entry.get("q") or None)
        if marker_queue is not None:
            candidates = [_s(marker_queue)]
        else:
            candidates = [queue] if queue is not None else list(QUEUES)
        found: tuple[str, int, int] | None = None
        async with redis_errors(s, f"position of task {task_id}"):
            record = AsyncRecord(broker)
            for queue in candidates:
                at = await record.run(calls.position(queue=queue, task_id=task_id))
                if at.list_index:
                    found = (queue, at.ahead, at.total)
                    break
        if found is None:
            return TaskPosition(
                task_id=task_id,
                state="not_queued",
                queue=candidates[0] if len(candidates) == 1 else None,
            )
        queue, ahead, total = found
        workers = [w for w in await self.get_worker_stats() if queue in w.queues]
        means, queue_mean = await self._mean_durations(queue)
        own_name = await self._task_name(task_id)
        mean = means.get(own_name, queue_mean) if own_name is not None else queue_mean
        # Celery counts running requests among the reserved ones: only the rest wait.
        held = sum(max(w.reserved - w.active, 0) for w in workers)
        names = await self._names_ahead(queue, ahead)
        wait = await self._estimate_wait(workers, names, ahead + held, means, queue_mean)
        return TaskPosition(
            task_id=task_id,
            state="waiting",
            queue=queue,
            position=ahead + 1,
            ahead=ahead + held,
            queue_length=total,
            consumer_processes=sum(w.concurrency for w in workers),
            estimated_wait_s=None if wait is None else round(wait, 3),
            mean_duration_s=None if mean is None else round(mean, 3),
        )

    async def _recent_runs(self, since: float) -> dict[str, tuple[str, list[RunRecord]]]:
        """task name -> (queue, runs that ended since ``since``)."""
        _, backend = self._clients()
        s = self.settings
        async with redis_errors(s, "task statistics"):
            tasks = {
                _s(k): _s(v) for k, v in (await backend.hgetall(s.key("stats", "tasks"))).items()
            }
            names = sorted(tasks)
            pipe = backend.pipeline(transaction=False)
            for name in names:
                pipe.zrangebyscore(s.key("stats", "runs", name), since, "+inf")
            members = await pipe.execute()
        out: dict[str, tuple[str, list[RunRecord]]] = {}
        for name, raw in zip(names, members, strict=True):
            runs = [r for r in (parse_run(name, m) for m in raw) if r is not None]
            out[name] = (tasks[name], runs)
        return out

    async def _mean_durations(self, queue: str) -> tuple[dict[str, float], float | None]:
        """Mean recent duration per task name, and over ``queue``'s runs (the fallback).

        Each mean is over the type's last 50 runs that were not revoked: the most recent runs
        describe the current backlog best.
        """
        runs = await self._recent_runs(time.time() - self.settings.stats_window_s)
        means: dict[str, float] = {}
        in_queue: list[RunRecord] = []
        for name, (task_queue, records) in runs.items():
            done = sorted((r for r in records if r.outcome != "revoked"), key=lambda r: r.finished)
            if done:
                recent = done[-50:]
                means[name] = sum(r.duration_s for r in recent) / len(recent)
            in_queue += [r for r in done if r.queue == queue or task_queue == queue]
        latest = [r.duration_s for r in sorted(in_queue, key=lambda r: r.finished)][-50:]
        return means, (sum(latest) / len(latest) if latest else None)

    async def _task_name(self, task_id: str) -> str | None:
        """The task's name from its submit marker (None when it was not sent by a manager)."""
        _, backend = self._clients()
        async with redis_errors(self.settings, f"name of task {task_id}"):
            name = await backend.hget(RecordKeys.of(self.settings).marker(task_id), "name")
        return None if name is None else _s(name)

    async def _names_ahead(self, queue: str, ahead: int) -> list[str | None]:
        """Task names of the (at most ``_NAMES_SAMPLE``) messages workers take first.

        In the order workers take them: each list from its right end, the lists in priority
        order. A message that is not a task envelope counts as None (the fallback mean).
        """
        broker, _ = self._clients()
        budget = min(ahead, _NAMES_SAMPLE)
        if budget <= 0:
            return []
        async with redis_errors(self.settings, f"messages ahead in {queue}"):
            pipe = broker.pipeline(transaction=False)
            for key in queue_keys(queue):
                pipe.lrange(key, -budget, -1)
            lists = await pipe.execute()
        names: list[str | None] = []
        for raw_list in lists:
            for raw in reversed(raw_list):  # the right end is taken first
                if len(names) >= budget:
                    return names
                names.append(_message_task_name(raw))
        return names

    async def _estimate_wait(
        self,
        workers: Sequence[WorkerStats],
        names: Sequence[str | None],
        ahead: int,
        means: dict[str, float],
        queue_mean: float | None,
    ) -> float | None:
        """Simulate the consumers' pool slots taking the ``ahead`` messages in front.

        ``names`` are the task names of the first messages ahead; the rest (beyond the
        sample, or held by workers) cost the mean of the sampled ones, else the queue's.
        """
        fallback = queue_mean
        if fallback is None and means:
            fallback = sum(means.values()) / len(means)
        if fallback is None or not workers:
            return None

        def cost(name: str | None) -> float:
            return means.get(name, fallback) if name is not None else fallback

        _, backend = self._clients()
        async with redis_errors(self.settings, "running tasks"):
            running = running_tasks(await backend.hgetall(RecordKeys.of(self.settings).running))
        now = time.time()
        slots: list[float] = []
        for w in workers:
            busy = [
                # What the running task should still take, by its own type's mean.
                max(0.0, cost(e.get("n")) - (now - float(e.get("s", now))))
                for e in running.values()
                if e.get("w") == w.hostname
                and now - float(e.get("s", now)) < self.settings.task_time_limit_s
            ][: max(w.concurrency, 0)]
            slots.extend(busy + [0.0] * max(w.concurrency - len(busy), 0))
        if not slots:
            return None
        sampled = [cost(n) for n in names]
        rest = sum(sampled) / len(sampled) if sampled else fallback
        durations = [*sampled, *([rest] * max(ahead - len(sampled), 0))]
        heapq.heapify(slots)
        for duration in durations:
            heapq.heappush(slots, heapq.heappop(slots) + duration)
        return slots[0]

    async def get_task_type_stats(self, window_s: float | None = None) -> list[TaskTypeStats]:
        """Per task type: runs, failure and retry rates, p50/p95 durations over a window.

        Args:
            window_s: how far back to look; ``stats_window_s`` (one hour) by default.
        """
        window = window_s if window_s is not None else self.settings.stats_window_s
        runs = await self._recent_runs(time.time() - window)
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
                    window_s=window,
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

    async def health(self) -> HealthReport:
        """Check the server, the workers and the queues; never raises for an unreachable server.

        An unreachable server (connection refused, timed out, credentials refused) is a report
        with ``reachable=False``; any other error propagates.

        UNHEALTHY: the server is unreachable, it may evict queued work (``maxmemory-policy``
        other than ``noeviction``), a required queue (``health_required_queues``) or a queue
        with waiting work has no live worker, or a queue is not draining.
        DEGRADED: no persistence, memory near ``maxmemory``, or a waiting message older than
        ``health_max_message_age_s``.
        """
        broker, backend = self._clients()
        s = self.settings
        reasons: list[str] = []
        level = HealthLevel.HEALTHY

        def worse(new: HealthLevel, reason: str) -> None:
            nonlocal level
            reasons.append(reason)
            if _SEVERITY[new] > _SEVERITY[level]:
                level = new

        now = datetime.now(UTC)
        try:
            async with redis_errors(s, "health"):
                t0 = time.perf_counter()
                await broker.ping()
                broker_ms = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                await backend.ping()
                backend_ms = (time.perf_counter() - t0) * 1000
                persistence_info = await broker.info("persistence")
                memory_info = await broker.info("memory")
            workers = await self.get_worker_stats()
            stats = await self._queue_stats(QUEUES, workers)
            stats = await self._with_drain_verdicts(stats, workers)
        except (BrokerUnavailableError, RedisConnectionError, RedisTimeoutError) as exc:
            # Only the server's absence means "unreachable" (and the redis_unreachable alert);
            # any other error is a bug or bad data and must surface as itself, not as an outage.
            return HealthReport(
                level=HealthLevel.UNHEALTHY, reasons=[str(exc)], reachable=False, checked_at=now
            )
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
        unserved = {q.name for q in queues_without_worker(stats, s.health_required_queues)}
        for q in stats:
            if q.name in unserved:
                worse(
                    HealthLevel.UNHEALTHY,
                    f"queue {q.name} has no live worker ({q.length} waiting)",
                )
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
        ages = [q.oldest_age_s for q in stats if q.oldest_age_s is not None]
        return HealthReport(
            level=level,
            reasons=reasons,
            broker_latency_ms=round(broker_ms, 3),
            backend_latency_ms=round(backend_ms, 3),
            workers=len(workers),
            queues=stats,
            persistence=persistence,
            maxmemory_policy=policy,
            used_memory_bytes=used,
            maxmemory_bytes=maxmemory,
            oldest_message_age_s=max(ages) if ages else None,
            checked_at=now,
        )

    async def _with_drain_verdicts(
        self, stats: list[QueueStats], workers: Sequence[WorkerStats]
    ) -> list[QueueStats]:
        """Compare each queue with the previous observation (kept in Redis between checks).

        A ping only proves a worker process is alive; workers have been seen to stop consuming
        after a reconnect while still answering. A queue is judged not draining when, over at
        least ``health_stall_after_s``, it had waiting work, its next message stayed the same,
        its consumers' processed counts did not move, and one of them had a free slot.
        """
        broker, backend = self._clients()
        s = self.settings
        now = time.time()
        async with redis_errors(s, "drain check"):
            pipe = broker.pipeline(transaction=False)
            for q in stats:
                for key in queue_keys(q.name):
                    pipe.lindex(key, -1)
            heads_raw = await pipe.execute()
            pipe = backend.pipeline(transaction=False)
            for q in stats:
                pipe.hgetall(s.key("drain", q.name))
            previous = await pipe.execute()
            out: list[QueueStats] = []
            update = backend.pipeline(transaction=False)
            per = len(PRIORITY_STEPS) + 1
            for i, q in enumerate(stats):
                ids = [_message_id(r) for r in heads_raw[i * per : (i + 1) * per]]
                head = next((h for h in ids if h is not None), "")
                consumers = [w for w in workers if q.name in w.queues]
                processed = sum(w.processed for w in consumers)
                free_slot = any(w.active + w.reserved < w.concurrency for w in consumers)
                prev = {_s(k): _s(v) for k, v in previous[i].items()}
                verdict: bool | None
                snapshot = True
                if q.length == 0:
                    verdict = True
                elif not prev or prev.get("head") != head or not consumers:
                    verdict = None if not prev or not consumers else True
                elif now - float(prev.get("ts", now)) < s.health_stall_after_s:
                    verdict = {"1": True, "0": False}.get(prev.get("verdict", ""))
                    snapshot = False  # keep the older observation to compare against
                else:
                    moved = str(processed) != prev.get("processed")
                    verdict = moved or not free_slot
                if snapshot:
                    key = s.key("drain", q.name)
                    update.hset(
                        key,
                        mapping={
                            "head": head,
                            "processed": str(processed),
                            "ts": repr(now),
                            "verdict": {True: "1", False: "0", None: ""}[verdict],
                        },
                    )
                    update.expire(key, int(max(s.health_stall_after_s * 10, 3600)))
                out.append(q.model_copy(update={"draining": verdict}))
            if len(update):
                await update.execute()
        return out


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


def _message_task_name(raw: Any) -> str | None:
    """The task name in a queued message's headers (None for anything else)."""
    try:
        headers = json.loads(_s(raw)).get("headers")
    except (ValueError, AttributeError):
        return None
    name = headers.get("task") if isinstance(headers, dict) else None
    return name if isinstance(name, str) else None


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
