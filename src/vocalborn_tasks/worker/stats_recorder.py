"""Recording task runs where they happen (worker side of :mod:`vocalborn_tasks.stats`).

It hooks Celery's ``task_prerun``/``task_postrun`` signals for one app (:func:`install_stats`)
and the result backend's store, so task bodies stay untouched. Recording never raises into a
task.

**Batching.** A run's statistics are 8-13 commands (the run's member, the trim, the count, the
duration histogram, the analysis scores). A process whose last statistics write is older than
:data:`FLUSH_INTERVAL_S` writes a run's statistics in the store script that ends the run, as
before (no staleness at low rates). A busier process folds them in memory (counts summed, one
variadic ``ZADD`` per task type) and a thread writes the fold once per interval in one
``MULTI``/``EXEC``; the store then only removes the run from ``stats:running``. So under load the
Monitor's and the exporter's figures (runs, counts, histograms, scores) are at most
:data:`FLUSH_INTERVAL_S` (0.5 s) behind the results callers already have; ``stats:running`` is
never behind. A worker process that exits flushes what it holds (Celery's
``worker_process_shutdown``/``worker_shutdown``); one that is SIGKILLed loses at most the last
interval's statistics (never a result). A fold the server refused is kept and sent with the
next one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import signals

from ..stats import (
    ANALYSIS_TASK,
    DURATION_BUCKETS,
    OUTCOME_OF,
    SCORE_BUCKETS,
    SCORE_FIELDS,
    bucket_label,
    stats_key,
)

if TYPE_CHECKING:
    import redis

    from ..config import TaskSettings
    from .factory import VocalbornCelery

__all__ = ["FLUSH_INTERVAL_S", "Finish", "install_stats", "recorder_of", "running_entry"]

logger = logging.getLogger(__name__)

#: Under load, a process writes its runs' statistics at most this often (seconds).
FLUSH_INTERVAL_S = 0.5
#: How long a worker process that exits waits for its last statistics write.
_EXIT_FLUSH_WAIT_S = 2.0


@dataclass(slots=True)
class _Run:
    """What the recorder knows of a run in progress in this process."""

    name: str
    queue: str
    worker: str
    wall: float
    perf: float

    @classmethod
    def starting(cls, task: Any) -> _Run:
        """``task``'s run, starting now."""
        request = task.request
        return cls(
            name=str(task.name),
            queue=_queue_of(request),
            worker=str(getattr(request, "hostname", "") or ""),
            wall=time.time(),
            perf=time.perf_counter(),
        )


class _Recorder:
    """Signal handlers bound to one app (held by the app, connected weakly).

    The start of a run costs no round trip of its own: the library's task runtime lists the
    task as running in the same script that counts the delivery (``running_entry``). The end
    costs none either when the result backend stores the final state: its script applies the
    statistics in the same call (``finish_ops``); ``task_postrun`` records only the runs
    the backend did not store (a cancelled run that raised ``Ignore``, say).
    """

    def __init__(self, app: VocalbornCelery) -> None:
        self.app = app
        self._runs: dict[str, _Run] = {}
        self._batch = _Batch(app)

    def flush(self) -> None:
        """Write the folded statistics now (tests)."""
        self._batch.flush()

    def flush_before_exit(self, sender: Any = None, **_: Any) -> None:
        """A worker process is exiting: write what it folded, waiting at most
        :data:`_EXIT_FLUSH_WAIT_S` (a frozen server must not hold a shutdown for the socket
        timeout; the statistics are what is lost then, never a result)."""
        if not self._batch.commands():
            return
        writer = threading.Thread(target=self._batch.flush, name="vocalborn-stats-exit")
        writer.daemon = True
        writer.start()
        writer.join(_EXIT_FLUSH_WAIT_S)

    def _ours(self, task: Any) -> bool:
        return getattr(task, "app", None) is self.app

    def on_prerun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        if task_id is None or not self._ours(sender):
            return
        self._runs[task_id] = _Run.starting(sender)

    def finish_ops(self, task_id: str, state: str, retval: Any) -> Finish:
        """The end of ``task_id``'s run, if it runs in this process, for the backend's store.

        Called by the result backend as it stores a state. The :class:`Finish` carries the
        commands the store script applies (for the run's own outcome, and for the same run
        counted as revoked, which the script applies instead when a cancel got there first);
        the backend calls :meth:`Finish.settle` once the store returned. Nothing at all for a
        task this process is not running (such as a failure the main process stores for a
        pool child that died) or a state that is not an end.
        """
        outcome = OUTCOME_OF.get(state)
        if outcome is None:
            return _NOTHING
        run = self._runs.pop(task_id, None)
        if run is None:
            return _NOTHING
        ops = self._ops(task_id, run, outcome, retval)
        if self._batch.take_immediate():
            revoked = self._ops(task_id, run, "revoked", None)
            return Finish(json.dumps(ops.commands), json.dumps(revoked.commands))
        # Folded: the store only removes the run from ``stats:running``; the rest waits for
        # the store's verdict (which outcome the record holds), then the next flush.
        running, *rest = ops.commands  # _ops writes the HDEL of ``stats:running`` first
        leave = json.dumps([running])

        def as_revoked() -> list[list[str]]:
            return self._ops(task_id, run, "revoked", None).commands[1:]

        return Finish(leave, leave, self._batch, rest, as_revoked)

    def on_postrun(
        self,
        sender: Any = None,
        task_id: str | None = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        if task_id is None or not self._ours(sender):
            return
        run = self._runs.pop(task_id, None)
        if run is None:  # the backend recorded it with the stored state
            return
        try:
            ops = self._ops(task_id, run, OUTCOME_OF.get(state or "", "other"), retval)
            pipe = _client(self.app).pipeline(transaction=False)
            for command in ops.commands:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            pipe.execute()
        except Exception as exc:  # statistics must never break a task
            logger.debug("stats: could not record end of %s: %s", task_id, exc)

    def _ops(self, task_id: str, run: _Run, outcome: str, retval: Any) -> _Ops:
        settings = self.app.settings
        now = time.time()
        duration = max(0.0, time.perf_counter() - run.perf)
        name = run.name
        member = json.dumps(
            {
                "id": task_id,
                "q": run.queue,
                "w": run.worker,
                "s": round(run.wall, 6),
                "d": round(duration, 6),
                "o": outcome,
            },
            separators=(",", ":"),
        )
        runs = stats_key(settings, "runs", name)
        hist = stats_key(settings, "hist", name)
        bucket = next((b for b in DURATION_BUCKETS if duration <= b), math.inf)
        ops = _Ops()
        ops.add("HDEL", stats_key(settings, "running"), task_id)  # first: see finish_ops
        ops.add("ZADD", runs, repr(now), member)
        ops.add("ZREMRANGEBYRANK", runs, "0", str(-(settings.stats_keep + 1)))
        ops.add("EXPIRE", runs, str(int(settings.stats_window_s * 4) + 60))
        ops.add("HSET", stats_key(settings, "tasks"), name, run.queue)
        ops.add("HINCRBY", stats_key(settings, "count"), f"{name}|{outcome}", "1")
        if outcome != "retry":  # a retried run is counted once it ends for good
            ops.add("HINCRBY", hist, bucket_label(bucket), "1")
            ops.add("HINCRBYFLOAT", hist, "sum", repr(duration))
            ops.add("HINCRBY", hist, "count", "1")
        if outcome == "success" and name == ANALYSIS_TASK and isinstance(retval, Mapping):
            _record_scores(ops, settings, retval)
        return ops


class Finish:
    """The statistics of one run's end, as the backend's store takes them.

    ``stats`` and ``if_revoked`` are the JSON command lists the store (or retry) script
    applies; when the run is folded into the process's batch they only remove it from
    ``stats:running``, and :meth:`settle` adds the rest to the batch once the script said which
    outcome the record holds.
    """

    __slots__ = ("_batch", "_if_revoked_ops", "_ops", "if_revoked", "stats")

    def __init__(
        self,
        stats: str | None,
        if_revoked: str | None,
        batch: _Batch | None = None,
        ops: list[list[str]] | None = None,
        if_revoked_ops: Callable[[], list[list[str]]] | None = None,
    ) -> None:
        self.stats = stats
        self.if_revoked = if_revoked
        self._batch = batch
        self._ops = ops
        self._if_revoked_ops = if_revoked_ops

    @property
    def pending(self) -> bool:
        """Whether :meth:`settle` still has statistics to record."""
        return self._batch is not None

    def settle(self, *, revoked: bool) -> None:
        """The store returned: fold the run in as its own outcome, or as revoked when a cancel
        was stored first (what every caller sees)."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        if revoked:
            commands = self._if_revoked_ops() if self._if_revoked_ops is not None else []
        else:
            commands = self._ops or []
        batch.add(commands)


_NOTHING = Finish(None, None)


class _Batch:
    """This process's runs whose statistics are not written yet, folded (see module docstring).

    Counts and histogram buckets are summed (``HINCRBY``/``HINCRBYFLOAT`` of one field become
    one), the runs' members of one task type go in one ``ZADD``, and the trim, the expiry and
    the type's queue are written once per flush.
    """

    def __init__(self, app: VocalbornCelery) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, ...], list[str]] = {}
        self._last_write = -math.inf
        self._thread_pid: int | None = None
        self._wake = threading.Event()
        # The task thread's client: Celery's ``app.backend`` is per thread, and the flushing
        # thread would otherwise build a backend (and a connection pool) of its own.
        self.client: redis.Redis | None = None

    def take_immediate(self) -> bool:
        """True if this run's statistics should go with its store (nothing folded, and the
        last write is older than the interval); the write counts from now."""
        now = time.monotonic()
        with self._lock:
            if self._slots or now - self._last_write < FLUSH_INTERVAL_S:
                return False
            self._last_write = now
            return True

    def add(self, commands: list[list[str]]) -> None:
        if self._thread_pid != os.getpid():
            self.client = _client(self.app)
        with self._lock:
            for command in commands:
                _fold(self._slots, command)
            self._cap()
        self._ensure_thread()

    def _cap(self) -> None:
        # Only a long outage lets a fold grow: keep the newest ``stats_keep`` runs per type
        # (a ZADD is [op, key, score, member, score, member, ...], newest last).
        keep = 2 * self.app.settings.stats_keep
        for key, command in self._slots.items():
            if key[0] == "ZADD" and len(command) - 2 > keep:
                command[2:] = command[-keep:]

    def commands(self) -> list[list[str]]:
        with self._lock:
            return [list(c) for c in self._slots.values()]

    def flush(self) -> None:
        """Write the fold in one MULTI/EXEC; on a Redis error keep it for the next flush."""
        with self._lock:
            slots, self._slots = self._slots, {}
            self._last_write = time.monotonic()
        if not slots:
            return
        try:
            pipe = (self.client or _client(self.app)).pipeline(transaction=True)
            for command in slots.values():
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            pipe.execute()
        except Exception as exc:  # statistics must never break a worker
            logger.debug("stats: could not write %d folded commands: %s", len(slots), exc)
            with self._lock:
                for command in slots.values():
                    _fold(self._slots, command)
                self._cap()

    def _ensure_thread(self) -> None:
        pid = os.getpid()
        if self._thread_pid == pid:  # started in this process (not inherited through a fork)
            return
        with self._lock:
            if self._thread_pid == pid:
                return
            self._thread_pid = pid
        threading.Thread(target=self._run, name="vocalborn-stats", daemon=True).start()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            try:
                self.flush()
            except Exception as exc:  # pragma: no cover - the thread must survive anything
                logger.debug("stats: flush failed: %s", exc)


def _fold(slots: dict[tuple[str, ...], list[str]], command: list[str]) -> None:
    """Merge ``command`` into ``slots`` (insertion-ordered, so a ``ZADD`` stays before the
    trim and the expiry of its key)."""
    op = command[0]
    if op in ("HINCRBY", "HINCRBYFLOAT"):
        key = (op, command[1], command[2])
        slot = slots.get(key)
        if slot is None:
            slots[key] = list(command)
        elif op == "HINCRBY":
            slot[3] = str(int(slot[3]) + int(command[3]))
        else:
            slot[3] = repr(float(slot[3]) + float(command[3]))
    elif op == "ZADD":
        slot = slots.setdefault((op, command[1]), [op, command[1]])
        slot.extend(command[2:])
    elif op == "HSET":
        slots[(op, command[1], command[2])] = list(command)
    else:  # ZREMRANGEBYRANK, EXPIRE: the latest one is the one that counts
        slots.pop((op, command[1]), None)
        slots[(op, command[1])] = list(command)


class _Ops:
    """Redis commands collected as lists of strings (applied by a script or a pipeline)."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def add(self, *command: str) -> None:
        self.commands.append(list(command))


def running_entry(task: Any) -> str:
    """The ``stats:running`` value for ``task`` starting now (JSON)."""
    run = _Run.starting(task)
    return json.dumps({"n": run.name, "q": run.queue, "w": run.worker, "s": run.wall})


def recorder_of(app: Any) -> _Recorder | None:
    """The statistics recorder installed on ``app``, if any."""
    recorder: _Recorder | None = getattr(app, "_vocalborn_stats", None)
    return recorder


def _record_scores(ops: _Ops, settings: TaskSettings, result: Mapping[str, Any]) -> None:
    key = stats_key(settings, "scores")
    for label, field in SCORE_FIELDS.items():
        value = result.get(field)
        if not isinstance(value, int | float):
            continue
        bucket = next((b for b in SCORE_BUCKETS if value <= b), math.inf)
        ops.add("HINCRBY", key, f"{label}|{bucket_label(bucket)}", "1")
        ops.add("HINCRBYFLOAT", key, f"{label}|sum", repr(float(value)))
        ops.add("HINCRBY", key, f"{label}|count", "1")
    level = result.get("level")
    if isinstance(level, int):
        ops.add("HINCRBY", stats_key(settings, "levels"), str(level), "1")


def _queue_of(request: Any) -> str:
    info = getattr(request, "delivery_info", None) or {}
    queue = info.get("routing_key") or info.get("queue") or ""
    return str(queue)


def _client(app: VocalbornCelery) -> redis.Redis:
    client: redis.Redis = app.backend.client
    return client


def install_stats(app: VocalbornCelery) -> None:
    """Record the runs of ``app``'s tasks (idempotent; called by ``create_celery_app``).

    The handlers are connected weakly and held by the app, so an app that is dropped stops
    recording and is not kept alive by Celery's global signal registry.
    """
    if getattr(app, "_vocalborn_stats", None) is not None:
        return
    recorder = _Recorder(app)
    app._vocalborn_stats = recorder
    signals.task_prerun.connect(recorder.on_prerun, weak=True)
    signals.task_postrun.connect(recorder.on_postrun, weak=True)
    # A pool child (prefork) or the worker itself (solo, threads) writes what it folded.
    signals.worker_process_shutdown.connect(recorder.flush_before_exit, weak=True)
    signals.worker_shutdown.connect(recorder.flush_before_exit, weak=True)
