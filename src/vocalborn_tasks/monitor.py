"""Monitor: typed, async answers to "are workers alive, how long are the queues, is Redis safe".

It reads what workers publish in their heartbeats (see :mod:`vocalborn_tasks.heartbeat`) and the
broker's own lists and settings, so none of its calls needs a broadcast to every worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, Field

from ._redis import async_client, redis_errors
from .config import QUEUES, TaskSettings
from .errors import ManagerClosedError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["HealthLevel", "HealthReport", "Monitor", "QueueStats", "WorkerStats"]

#: kombu's Redis transport keeps priorities 3, 6 and 9 of a queue in lists named like this.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    """Every Redis list that holds messages of ``queue`` (the base list and its priority lists)."""
    return [queue, *(f"{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS)]


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
            names = sorted(_s(n) for n in await backend.smembers(s.key("workers")))
            pipe = backend.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(s.key("worker", name))
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
        per = len(_PRIORITY_STEPS) + 1
        return {name: sum(counts[i * per : (i + 1) * per]) for i, name in enumerate(names)}

    async def purge_queue(self, queue: str) -> int:
        """Delete every waiting message of ``queue``; returns how many were removed.

        Running tasks are not affected. Use with care: purged analyses are gone.
        """
        broker, _ = self._clients()
        async with redis_errors(self.settings, f"purge {queue}"):
            pipe = broker.pipeline(transaction=True)
            for key in queue_keys(queue):
                pipe.llen(key)
            for key in queue_keys(queue):
                pipe.delete(key)
            results = await pipe.execute()
        return int(sum(results[: len(_PRIORITY_STEPS) + 1]))

    async def health(self) -> HealthReport:
        """Check the server, the workers and the queues; never raises for an unreachable server.

        UNHEALTHY: the server is unreachable, or a queue has waiting work and no live consumer.
        DEGRADED: no persistence, an evicting ``maxmemory-policy``, or no workers while idle.
        """
        broker, backend = self._clients()
        reasons: list[str] = []
        level = HealthLevel.HEALTHY
        now = datetime.now(UTC)
        try:
            async with redis_errors(self.settings, "health"):
                t0 = time.perf_counter()
                await broker.ping()
                broker_ms = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                await backend.ping()
                backend_ms = (time.perf_counter() - t0) * 1000
                persistence_info = await broker.info("persistence")
                memory_info = await broker.info("memory")
        except Exception as exc:
            return HealthReport(
                level=HealthLevel.UNHEALTHY, reasons=[str(exc)], reachable=False, checked_at=now
            )
        persistence = bool(int(persistence_info.get("aof_enabled", 0)))
        if not persistence:
            reasons.append(
                "the server has no AOF persistence: a restart loses queued tasks (appendonly yes)"
            )
            level = HealthLevel.DEGRADED
        policy = _s(memory_info.get("maxmemory_policy", "unknown"))
        if policy != "noeviction":
            reasons.append(
                f"maxmemory-policy is {policy}: the server may evict queued tasks (use noeviction)"
            )
            level = HealthLevel.DEGRADED
        workers = await self.get_worker_stats()
        lengths = await self.get_queue_lengths()
        queues = []
        for name, length in lengths.items():
            consumers = sum(1 for w in workers if name in w.queues)
            queues.append(QueueStats(name=name, length=length, consumers=consumers))
            if consumers == 0 and length > 0:
                reasons.append(f"queue {name} has {length} waiting tasks and no live worker")
                level = HealthLevel.UNHEALTHY
        if not workers and level is HealthLevel.HEALTHY:
            reasons.append("no worker is alive")
            level = HealthLevel.DEGRADED
        return HealthReport(
            level=level,
            reasons=reasons,
            broker_latency_ms=round(broker_ms, 3),
            backend_latency_ms=round(backend_ms, 3),
            workers=len(workers),
            queues=queues,
            persistence=persistence,
            maxmemory_policy=policy,
            used_memory_bytes=int(memory_info.get("used_memory", 0)),
            checked_at=now,
        )
