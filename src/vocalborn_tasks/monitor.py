"""Monitor: typed, async answers to "are workers alive, how long are the queues, is Redis safe".

It reads what workers publish in their heartbeats (see
:mod:`vocalborn_tasks.worker.heartbeat`) and the broker's own lists and settings, so none of
its calls needs a broadcast to every worker. The health check's reading and rules live in
:mod:`vocalborn_tasks.health` (shared with the synchronous reader of the periodic health task);
their models are re-exported here.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ._connections import async_sentinel_client
from ._redis import Steps, async_client, redis_errors, run_steps
from .config import QUEUES, TaskSettings
from .errors import ManagerClosedError
from .health import (
    HealthLevel,
    HealthReport,
    QueueStats,
    RedisTopology,
    ReplicaStats,
    SentinelStats,
    TaskTypeStats,
    WorkerStats,
    health_steps,
    queue_stats_steps,
    queues_without_worker,
    recent_runs_steps,
    sentinel_commands,
    sentinel_stats,
    task_type_stats_steps,
    worker_stats_steps,
)
from .record import PRIORITY_STEPS, AsyncRecord, RecordKeys, calls, queue_lists
from .record.purge import purge_queue as _purge_queue
from .stats import RunRecord, running_tasks

__all__ = [
    "HealthLevel",
    "HealthReport",
    "Monitor",
    "QueueStats",
    "RedisTopology",
    "ReplicaStats",
    "SentinelStats",
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

T = TypeVar("T")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


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
        self._sentinels: list[tuple[str, aioredis.Redis]] = []
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
        for client in (self._broker, self._backend, *(c for _, c in self._sentinels)):
            if client is not None:
                await client.aclose()  # a sentinel pool closes its lookups too

    def _clients(self) -> tuple[aioredis.Redis, aioredis.Redis]:
        if self._closed:
            raise ManagerClosedError("this Monitor is closed; create a new one")
        if self._broker is None or self._backend is None:
            self._broker = async_client(self.settings, "broker", max_connections=8)
            self._backend = async_client(self.settings, "backend", max_connections=8)
            # A sentinel that does not answer is an answer: no retry, the check goes on.
            self._sentinels = [
                (
                    f"{host}:{port}",
                    async_sentinel_client(self.settings, host, port, retry=Retry(NoBackoff(), 0)),
                )
                for host, port in self.settings.sentinel_addresses
            ]
        return self._broker, self._backend

    async def ask_sentinels(self) -> list[SentinelStats]:
        """What each sentinel says about the master (all asked at once, each bounded by the
        connect timeout); empty without ``REDIS_SENTINELS``."""
        self._clients()
        limit = self.settings.redis_connect_timeout_s

        async def ask(address: str, client: aioredis.Redis) -> SentinelStats:
            try:
                async with asyncio.timeout(limit):
                    pipe = client.pipeline(transaction=False)
                    for command in sentinel_commands(self.settings):
                        pipe.execute_command(*command)
                    replies: list[Any] | BaseException = await pipe.execute(raise_on_error=False)
            except TimeoutError:
                replies = TimeoutError(f"no answer within {limit:g} s")
            except (RedisError, OSError) as exc:
                replies = exc
            return sentinel_stats(address, replies)

        return list(await asyncio.gather(*(ask(a, c) for a, c in self._sentinels)))

    async def _run(self, steps: Steps[T]) -> T:
        """Run a reader's steps (:mod:`vocalborn_tasks.health`) on this Monitor's clients."""
        broker, backend = self._clients()
        return await run_steps(steps, self.settings, broker=broker, backend=backend)

    async def get_worker_stats(self) -> list[WorkerStats]:
        """Workers whose heartbeat is current, sorted by hostname."""
        return await self._run(worker_stats_steps(self.settings))

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

        def steps() -> Steps[list[QueueStats]]:
            workers = yield from worker_stats_steps(self.settings)
            return (yield from queue_stats_steps(self.settings, names, workers))

        return await self._run(steps())

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
        return await self._run(recent_runs_steps(self.settings, since))

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
        return await self._run(task_type_stats_steps(self.settings, window))

    async def health(self) -> HealthReport:
        """Check the server, the workers and the queues; never raises for an unreachable server.

        An unreachable server (connection refused, timed out, credentials refused) is a report
        with ``reachable=False``; any other error propagates.

        UNHEALTHY: the server is unreachable, it may evict queued work (``maxmemory-policy``
        other than ``noeviction``), a required queue (``health_required_queues``) or a queue
        with waiting work has no live worker, or a queue is not draining.
        DEGRADED: no persistence, memory near ``maxmemory``, or a waiting message older than
        ``health_max_message_age_s``.

        The report's ``topology`` says where writes go: the server's role, its replicas and
        their lag, ``min-replicas-to-write``, and with ``REDIS_SENTINELS`` the master each
        sentinel names. UNHEALTHY: the server is a replica, or refuses writes (``NOREPLICAS``,
        ``OOM``...). DEGRADED: fewer connected replicas than ``REDIS_REPLICA_ACKS``;
        ``REDIS_REPLICA_ACKS`` above 0 while ``min-replicas-to-write`` is 0 (a resumed old
        master can acknowledge writes that a failover discards); a sentinel silent, lost,
        disagreeing or without quorum. ``CONFIG GET`` refused (managed Redis) leaves
        ``min_replicas_to_write`` unknown (None), not an error. A single server with
        ``REDIS_REPLICA_ACKS`` 0 (the default without sentinels) reports as before.

        A ping only proves a worker process is alive; workers have been seen to stop
        consuming after a reconnect while still answering. A queue is judged not draining when,
        over at least ``health_stall_after_s``, it had waiting work, its next message stayed the
        same, its consumers' processed counts did not move, and one of them had a free slot
        (the previous observation is kept in Redis between checks).

        The reading and the rules live in :mod:`vocalborn_tasks.health`, shared with the
        synchronous reader the periodic health task uses: the same state gives the same report.
        """
        sentinels = await self.ask_sentinels() if self.settings.uses_sentinel else None
        return await self._run(health_steps(self.settings, sentinels))


def _message_task_name(raw: Any) -> str | None:
    """The task name in a queued message's headers (None for anything else)."""
    try:
        headers = json.loads(_s(raw)).get("headers")
    except (ValueError, AttributeError):
        return None
    name = headers.get("task") if isinstance(headers, dict) else None
    return name if isinstance(name, str) else None
