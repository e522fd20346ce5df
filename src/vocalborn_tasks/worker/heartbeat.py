"""Worker heartbeats in Redis: who is alive, what it holds, and how busy it is.

Each worker's main process writes a small hash every ``worker_heartbeat_s`` seconds, with a
TTL of ``worker_dead_after_s``. It serves two readers:

* the :class:`~vocalborn_tasks.monitor.Monitor`, which lists workers, their pools, queues,
  active and processed counts and memory without a broadcast round trip;
* the dead-worker reaper (in every live worker), which notices a heartbeat that stopped and
  hands the dead worker's unacknowledged messages back to their queues at once, instead of
  after kombu's visibility timeout (an hour by default).

A missing heartbeat proves a worker dead only on a server the reaper has itself watched, without
a break, for ``worker_dead_after_s``: a master promoted by a failover may hold no heartbeats at
all (they went to the old one), and after an outage every key may have expired while the
workers that wrote them were cut off, alive and running their tasks. So the reaper judges
nothing until it has seen the same server (its ``run_id``) answer every beat for that long
(:class:`ServerWatch`); a reconnect, a failed beat or another server starts that clock again.

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
from collections.abc import Callable
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
from .failover import worker_redis

if TYPE_CHECKING:
    import redis
    from redis.typing import EncodableT, FieldT

    from .factory import VocalbornCelery

__all__ = ["HeartbeatStep", "ServerWatch", "process_rss_kb", "restore_dead_worker_messages"]

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


class ServerWatch:
    """How long the reaper has watched one server without a break.

    Args:
        max_gap_s: two observations further apart than this are not "without a break" (the
            reaper's own calls were failing or retrying meanwhile, perhaps reconnecting).
    """

    def __init__(self, max_gap_s: float) -> None:
        self.max_gap_s = max_gap_s
        self._server: str | None = None
        self._since = 0.0
        self._last = 0.0

    @property
    def server(self) -> str | None:
        """The ``run_id`` of the server being watched (None: the clock is stopped)."""
        return self._server

    def observe(self, server: str, now: float) -> float:
        """Record that ``server`` answered at ``now`` (monotonic); seconds watched so far."""
        if server != self._server or now - self._last > self.max_gap_s:
            self._server = server
            self._since = now
        self._last = now
        return now - self._since

    def reset(self) -> None:
        """A failed call: whatever the reaper saw before it proves nothing afterwards."""
        self._server = None


def _run_id(info: Any) -> str:
    """The ``run_id`` of an ``INFO server`` reply (which server process answered)."""
    return str(info.get("run_id", "")) if isinstance(info, dict) else ""


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
        self._watch: ServerWatch | None = None  # the reaper's clock (see the module docstring)

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
        # A beat may take a second or two when the server is slow; a longer gap means our own
        # calls were failing or retrying (reconnecting) meanwhile.
        self._watch = ServerWatch(max_gap_s=max(2 * interval, 1.0))
        while not self._stop.is_set():
            next_beat = time.monotonic() + interval
            try:
                self._beat(worker, app)
                self._reap(worker, app)
            except Exception as exc:
                self._watch.reset()
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
            # Typed from redis-py 8.2, untyped before: through a typed name, mypy --strict
            # passes on both (a "type: ignore" is an error on one or the other).
            open_pubsub: Callable[..., redis.client.PubSub] = _backend_client(app).pubsub
            pubsub = open_pubsub(ignore_subscribe_messages=True)
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
        pipe.info("server")
        for name in names:
            pipe.hget(keys.worker(name), "tags")
        info, *raws = pipe.execute()
        server = _run_id(info)
        watch = self._watch if self._watch is not None else ServerWatch(max_gap_s=1.0)
        previous = watch.server
        watched = watch.observe(server, time.monotonic())
        if previous is not None and previous != server:
            logger.info(
                "reaper: another server answers (run_id %s, was %s): judging no worker dead "
                "for %.1f s",
                server[:8],
                previous[:8],
                settings.worker_dead_after_s,
            )
        if watched < settings.worker_dead_after_s:
            return  # a heartbeat missing here proves nothing yet (see the module docstring)
        live_tags: set[str] = set()
        dead: list[str] = []
        for name, raw in zip(names, raws, strict=True):
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
        bpipe = broker.pipeline(transaction=False)
        bpipe.info("server")
        bpipe.zrangebyscore(keys.unacked_index, "-inf", horizon, 0, 500)
        broker_info, raw_old = bpipe.execute()
        if _run_id(broker_info) != server:
            # The broker's client reached another server than the heartbeats were read from
            # (mid-failover): the two reads do not describe one server.
            watch.reset()
            return
        old = [_text(t) for t in raw_old]
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
            self._broker = worker_redis(app.settings, "broker")
        return self._broker


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _backend_client(app: VocalbornCelery) -> redis.Redis:
    client: redis.Redis = app.backend.client
    return client
