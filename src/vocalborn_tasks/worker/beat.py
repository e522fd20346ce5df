"""A beat scheduler that is safe to start twice: one leader at a time, each job sent once.

Celery beat assumes exactly one beat process; two (a second deployment, a forgotten ``tmux``
pane) send every periodic job twice. :class:`LockedScheduler` makes that harmless:

* **Leader lock.** A beat sends jobs only while it holds ``<prefix>:beat:leader`` in Redis
  (``SET NX PX``, renewed every third of ``beat_lock_ttl_s``). Others stand by and take over
  within one TTL when the leader stops (a clean stop releases the lock at once).
* **Per-job guard.** Each send first claims ``<prefix>:beat:fired:<job>`` for half the job's
  period, so even during a hand-over no job is sent twice in one period.
* **State in Redis, not a shelve file.** The last run of each job lives in
  ``<prefix>:beat:last-run`` (two beats in one directory never fight over a file, and a new
  leader continues the schedule instead of restarting it). ``<prefix>:beat:runs:<job>`` keeps
  the times of the recent sends for operators.

It is the app's ``beat_scheduler`` (set by
:func:`~vocalborn_tasks.worker.factory.create_celery_app`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celery.beat import ScheduleEntry, Scheduler

from ..config import TaskSettings
from ..record import Record, calls
from ..record.confirm import Confirmation
from .failover import worker_redis

if TYPE_CHECKING:
    import redis

__all__ = ["LockedScheduler", "beat_runs"]

logger = logging.getLogger(__name__)

_RUNS_KEPT = 200


def _period_s(entry: ScheduleEntry) -> float:
    run_every = getattr(entry.schedule, "run_every", None)
    if run_every is not None and hasattr(run_every, "total_seconds"):
        return max(float(run_every.total_seconds()), 0.001)
    return 60.0  # crontab-like schedules: at most one send a minute per job


def beat_runs(client: redis.Redis, settings: TaskSettings, job: str) -> list[float]:
    """Times (epoch seconds) of the recent sends of beat job ``job``, oldest first."""
    raw: Any = client.zrange(settings.key("beat", "runs", job), 0, -1, withscores=True)
    return [float(pair[1]) for pair in raw]


class LockedScheduler(Scheduler):  # type: ignore[misc]
    """Celery beat scheduler with a Redis leader lock and per-job send guard."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self._settings: TaskSettings = getattr(app, "settings", None) or TaskSettings()
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._client: redis.Redis | None = None
        self._record_cache: Record | None = None
        self._leader = False
        kwargs.pop("schedule_filename", None)  # state lives in Redis, not in a shelve file
        super().__init__(app, *args, **kwargs)

    # --- Redis ---------------------------------------------------------------------------
    @property
    def redis(self) -> redis.Redis:
        if self._client is None:
            # Through the sentinels when they are configured; a failover reply is an error
            # of the lock's round (logged, not sending) and the next one reconnects.
            self._client = worker_redis(self._settings, "backend")
        return self._client

    @property
    def _record(self) -> Record:
        client = self.redis
        if self._record_cache is None or self._record_cache.client is not client:
            self._record_cache = Record(client, Confirmation.of(self._settings))
        return self._record_cache

    def _key(self, *parts: str) -> str:
        return self._settings.key("beat", *parts)

    def _hold_lock(self) -> bool:
        ttl_ms = int(self._settings.beat_lock_ttl_s * 1000)
        try:
            call = calls.lock(key=self._key("leader"), token=self._token, ttl_ms=ttl_ms)
            # Taking the lock is confirmed by replicas (a failover must not let a second beat
            # take a lock the first already acted on); renewing it is not.
            held = self._record.run(call) if self._leader else self._record.run_confirmed(call)
        except Exception as exc:
            logger.warning("beat: cannot reach Redis for the leader lock (%s); not sending", exc)
            held = False
        if held and not self._leader:
            logger.info("beat: this process (%s) is the leader; sending periodic jobs", self._token)
            self._load_last_runs()
            self._heap = None
        elif not held and self._leader:
            logger.warning("beat: lost the leader lock; standing by")
        elif not held and not self._leader:
            logger.debug("beat: another beat holds the lock; standing by")
        self._leader = held
        return held

    def _load_last_runs(self) -> None:
        try:
            raw = self.redis.hgetall(self._key("last-run"))
        except Exception as exc:
            logger.warning("beat: could not read the last runs (%s)", exc)
            return
        last = {(k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in raw.items()}
        for name, entry in self.schedule.items():
            if name in last:
                entry.last_run_at = datetime.fromtimestamp(last[name], UTC)

    # --- Scheduler hooks -------------------------------------------------------------------
    def setup_schedule(self) -> None:
        super().setup_schedule()
        self._load_last_runs()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        renew = max(self._settings.beat_lock_ttl_s / 3, 0.05)
        if not self._hold_lock():
            return float(min(renew, self.max_interval))
        return float(min(super().tick(*args, **kwargs), renew))

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        period = _period_s(entry)
        now = time.time()
        try:
            claimed = self.redis.set(
                self._key("fired", entry.name),
                self._token,
                nx=True,
                px=max(int(period * 500), 1),
            )
        except Exception as exc:
            logger.warning("beat: cannot claim %s (%s); not sending it now", entry.name, exc)
            return
        if not claimed:
            logger.info("beat: %s was already sent this period; skipping", entry.name)
            return
        super().apply_entry(entry, producer=producer)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(self._key("last-run"), entry.name, repr(now))
            runs = self._key("runs", entry.name)
            pipe.zadd(runs, {f"{now!r}:{self._token}": now})
            pipe.zremrangebyrank(runs, 0, -(_RUNS_KEPT + 1))
            pipe.execute()
        except Exception as exc:
            logger.warning("beat: could not record the run of %s (%s)", entry.name, exc)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._client is not None:
                try:
                    Record(self._client).run(
                        calls.release(key=self._key("leader"), token=self._token)
                    )
                except Exception as exc:  # the TTL frees it anyway
                    logger.debug("beat: could not release the lock: %s", exc)
                self._client.close()
                self._client = None
            self._leader = False

    @property
    def info(self) -> str:
        return f"redis lock {self._key('leader')} (ttl {self._settings.beat_lock_ttl_s:g} s)"
