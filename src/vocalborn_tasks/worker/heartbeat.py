"""Worker heartbeats in Redis: who is alive, what it holds, and how busy it is.

Each worker's main process writes a small hash every ``worker_heartbeat_s`` seconds, with a
TTL of ``worker_dead_after_s``. It serves two readers:

* the :class:`~vocalborn_tasks.monitor.Monitor`, which lists workers, their pools, queues,
  active and processed counts and memory without a broadcast round trip;
* the dead-worker reaper (in every live worker), which notices a heartbeat that stopped and
  hands the dead worker's unacknowledged messages back to their queues at once, instead of
  after kombu's visibility timeout (an hour by default).

The same thread stops running tasks that a cancel asked to terminate: between beats it listens
on the record's terminate channel (``TaskManager.cancel`` publishes there, from the ``revoke``
script, so the host needs no Celery app), and each beat also checks the tasks this worker runs
against the persisted terminate set, so a message missed while reconnecting is acted on within
one beat.

The heartbeat lives in a Celery bootstep, so it runs only inside a worker and only for the app
it was added to.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from celery import bootsteps

from ..record import Record, RecordKeys, calls
from ..record.cancel import terminate_requested, terminated_ids
from .celery_private import (
    consumed_queues,
    held_requests,
    pool_child_pids,
    request_counts,
    running_task_ids,
    terminate_running,
)

if TYPE_CHECKING:
    import redis
    from redis.typing import EncodableT, FieldT

    from .factory import VocalbornCelery

__all__ = ["HeartbeatStep", "process_rss_kb", "restore_dead_worker_messages"]

logger = logging.getLogger(__name__)


def process_rss_kb(pid: int) -> int:
    """Resident memory of a process in KiB (0 when unknown, e.g. not on Linux)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def restore_dead_worker_messages(broker: redis.Redis, keys: RecordKeys, tags: list[str]) -> int:
    """Put a dead worker's reserved messages back on their queues; returns how many."""
    record = Record(broker)
    return sum(record.run(calls.restore(keys, delivery_tag=tag)) for tag in tags)


class HeartbeatStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: heartbeat thread plus dead-worker reaper."""

    requires = ("celery.worker.components:Pool",)
    label = "vocalborn heartbeat"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: Any = None
        self._broker: redis.Redis | None = None
        self._pubsub: redis.client.PubSub | None = None
        self._terminated: set[str] = set()  # ids we signalled (not signalled again)

    def start(self, worker: Any) -> None:
        self._worker = worker
        self._thread = threading.Thread(target=self._run, name="vocalborn-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, worker: Any) -> None:
        """Deregister at once: a worker that exits on purpose is gone, not merely silent.

        Celery calls ``stop`` on a warm shutdown and ``terminate`` on a cold one (SIGQUIT, and
        SIGTERM/SIGINT under ``REMAP_SIGTERM=SIGQUIT``); both end here, once.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            app: VocalbornCelery = worker.app
            client = _backend_client(app)
            keys = RecordKeys.of(app.settings)
            client.delete(keys.worker(worker.hostname))
            client.srem(keys.workers, worker.hostname)
        except Exception as exc:  # shutting down: the TTL will clean up anyway
            logger.debug("heartbeat: could not remove our key on stop: %s", exc)

    shutdown = stop
    terminate = stop

    def _run(self) -> None:
        worker = self._worker
        app: VocalbornCelery = worker.app
        interval = app.settings.worker_heartbeat_s
        while not self._stop.is_set():
            next_beat = time.monotonic() + interval
            try:
                self._beat(worker, app)
                self._reap(worker, app)
            except Exception as exc:
                logger.warning("heartbeat failed (%s); retrying in %.1f s", exc, interval)
            self._listen(worker, app, next_beat)
        self._close_pubsub()

    def _listen(self, worker: Any, app: VocalbornCelery, until: float) -> None:
        """Until the next beat: stop the running tasks named on the terminate channel."""
        while not self._stop.is_set() and (left := until - time.monotonic()) > 0:
            try:
                pubsub = self._subscribed(app)
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, 0.5))
            except Exception as exc:  # the beat's check covers what we miss meanwhile
                logger.warning("terminate channel unavailable (%s); checking on each beat", exc)
                self._close_pubsub()
                self._stop.wait(max(0.0, until - time.monotonic()))
                return
            if message is not None and message.get("type") == "message":
                self._terminate(worker, {_text(message["data"])})

    def _subscribed(self, app: VocalbornCelery) -> redis.client.PubSub:
        if self._pubsub is None:
            pubsub = _backend_client(app).pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            pubsub.subscribe(RecordKeys.of(app.settings).terminate_channel)
            self._pubsub = pubsub
        return self._pubsub

    def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception as exc:  # a broken connection: nothing to give back
                logger.debug("terminate channel: close failed: %s", exc)

    def _terminate(self, worker: Any, task_ids: set[str]) -> None:
        """Stop the running copies of ``task_ids`` held here (signals their pool children)."""
        wanted = task_ids - self._terminated
        if not wanted:
            return
        pool = getattr(worker, "pool", None)
        for task_id in terminate_running(wanted, pool):
            self._terminated.add(task_id)
            logger.info("task %s: cancelled while running here; terminating it", task_id)

    def _beat(self, worker: Any, app: VocalbornCelery) -> None:
        settings = app.settings
        held = held_requests()  # copies: the main thread changes these sets while we read
        tags = sorted(
            {str(r.message.delivery_tag) for r in held if getattr(r, "message", None) is not None}
        )
        child_pids = pool_child_pids(getattr(worker, "pool", None))
        rss = process_rss_kb(os.getpid()) + sum(process_rss_kb(p) for p in child_pids)
        queues = consumed_queues(app)
        active, reserved, processed = request_counts()
        record: dict[FieldT, EncodableT] = {
            "hostname": worker.hostname,
            "pid": str(os.getpid()),
            "concurrency": str(getattr(worker, "concurrency", 0) or 0),
            "queues": ",".join(queues),
            "active": str(active),
            "reserved": str(reserved),
            "processed": str(processed),
            "rss_kb": str(rss),
            "last_seen": repr(time.time()),
            "tags": json.dumps(tags),
            "machine": socket.gethostname(),
        }
        client = _backend_client(app)
        keys = RecordKeys.of(settings)
        key = keys.worker(worker.hostname)
        pipe = client.pipeline(transaction=False)
        pipe.hset(key, mapping=record)
        pipe.hsetnx(key, "started_at", repr(time.time()))
        pipe.expire(key, int(max(settings.worker_dead_after_s, 2 * settings.worker_heartbeat_s)))
        pipe.sadd(keys.workers, worker.hostname)
        running = sorted(running_task_ids())
        if running:
            terminate_requested(pipe, keys, running)
        replies = pipe.execute()
        self._terminated &= set(running)
        if running:
            self._terminate(worker, terminated_ids(running, replies[-1]))

    def _reap(self, worker: Any, app: VocalbornCelery) -> None:
        """Hand orphaned unacknowledged messages back to their queues.

        A message is orphaned when it has been unacknowledged for longer than
        ``worker_dead_after_s`` and no live worker lists it in its heartbeat. A live worker
        lists every message it holds within one heartbeat interval, so an older message that
        nobody lists belongs to a worker that died, including one taken after the dead
        worker's last heartbeat. Kombu itself would wait for the visibility timeout.
        """
        settings = app.settings
        keys = RecordKeys.of(settings)
        client = _backend_client(app)
        names = [_text(n) for n in client.smembers(keys.workers)]
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hget(keys.worker(name), "tags")
        live_tags: set[str] = set()
        dead: list[str] = []
        for name, raw in zip(names, pipe.execute(), strict=True):
            if raw is None:
                dead.append(name)
            else:
                live_tags.update(json.loads(raw))
        if dead:
            client.srem(keys.workers, *dead)
            logger.warning("workers stopped sending heartbeats: %s", ", ".join(sorted(dead)))
        # One reaper at a time across all workers.
        lock_ms = max(100, int(settings.worker_heartbeat_s * 1000))
        if not client.set(keys.reaper, worker.hostname, nx=True, px=lock_ms):
            return
        broker = self._broker_client(app)
        horizon = time.time() - settings.worker_dead_after_s
        old = [_text(t) for t in broker.zrangebyscore(keys.unacked_index, "-inf", horizon, 0, 500)]
        orphans = [tag for tag in old if tag not in live_tags]
        if orphans:
            restored = restore_dead_worker_messages(broker, keys, orphans)
            if restored:
                logger.warning(
                    "restored %d unacknowledged tasks whose worker is gone to their queues",
                    restored,
                )

    def _broker_client(self, app: VocalbornCelery) -> redis.Redis:
        """A plain client on the broker database (kombu's own is bound to its channel)."""
        if self._broker is None:
            import redis as sync_redis

            self._broker = sync_redis.Redis.from_url(
                app.settings.broker_url, **app.settings.redis_client_kwargs()
            )
        return self._broker


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _backend_client(app: VocalbornCelery) -> redis.Redis:
    client: redis.Redis = app.backend.client
    return client
