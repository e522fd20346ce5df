"""Recording task runs where they happen (worker side of :mod:`vocalborn_tasks.stats`).

It hooks Celery's ``task_prerun``/``task_postrun`` signals for one app (:func:`install_stats`)
and the result backend's store, so task bodies stay untouched. Recording never raises into a
task.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
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

__all__ = ["install_stats", "recorder_of", "running_entry"]

logger = logging.getLogger(__name__)


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

    def _ours(self, task: Any) -> bool:
        return getattr(task, "app", None) is self.app

    def on_prerun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        if task_id is None or not self._ours(sender):
            return
        self._runs[task_id] = _Run.starting(sender)

    def finish_ops(self, task_id: str, state: str, retval: Any) -> tuple[str | None, str | None]:
        """The end of ``task_id``'s run as Redis commands (JSON), if it runs in this process.

        Called by the result backend as it stores a state, which applies them in the same
        script. Returns the commands for the run's own outcome and for the same run counted
        as revoked (which the script applies instead when a cancel got there first); both None
        for a task this process is not running (such as a failure the main process stores for
        a pool child that died) or a state that is not an end.
        """
        outcome = OUTCOME_OF.get(state)
        if outcome is None:
            return None, None
        run = self._runs.pop(task_id, None)
        if run is None:
            return None, None
        ops = self._ops(task_id, run, outcome, retval)
        revoked = self._ops(task_id, run, "revoked", None)
        return json.dumps(ops.commands), json.dumps(revoked.commands)

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
        ops.add("HDEL", stats_key(settings, "running"), task_id)
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
