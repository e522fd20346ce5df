"""Cheap per-task statistics, recorded where tasks run and read by the Monitor and metrics.

A worker process records, for every task it runs, with no round trip of its own (the start
goes with the delivery check, the end with the stored result):

* ``<prefix>:stats:runs:<task name>`` (sorted set, score = finish time): the most recent runs,
  each a small JSON member ``{"id", "q", "w", "s", "d", "o"}`` (task id, queue, worker,
  start time, duration in seconds, outcome). Capped at ``stats_keep`` runs per task type;
  failure and retry rates and p50/p95 durations over a window are computed from it.
* ``<prefix>:stats:tasks`` (hash): task name -> queue, so a queue's durations can be found.
* ``<prefix>:stats:count`` (hash): ``"<task>|<outcome>"`` -> cumulative count (Prometheus).
* ``<prefix>:stats:hist:<task>`` (hash): duration histogram buckets, ``sum`` and ``count``.
* ``<prefix>:stats:scores`` and ``:stats:levels`` (hashes): analysis score histograms.
* ``<prefix>:stats:running`` (hash): task id -> JSON of the tasks running right now (set when
  one starts, removed when it ends), which the wait estimate uses. Only tasks run through the
  library's runtime (task definitions) are listed.

It hooks Celery's ``task_prerun``/``task_postrun`` signals for one app (:func:`install_stats`)
and the result backend's store, so task bodies stay untouched. Recording never raises into a
task.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import signals

if TYPE_CHECKING:
    import redis

    from .app import VocalbornCelery
    from .config import TaskSettings

__all__ = [
    "DURATION_BUCKETS",
    "OUTCOMES",
    "SCORE_BUCKETS",
    "SCORE_FIELDS",
    "RunRecord",
    "install_stats",
    "parse_run",
    "percentile",
    "running_tasks",
]

logger = logging.getLogger(__name__)

#: Upper bounds (seconds) of the task duration histogram buckets (``+Inf`` is implied).
DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Upper bounds of the analysis score histogram buckets (scores are 0-100).
SCORE_BUCKETS: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
#: The AnalysisResult fields exported as score histograms, by metric label.
SCORE_FIELDS: dict[str, str] = {
    "overall": "overall_score",
    "pronunciation": "pronunciation_accuracy",
    "fluency": "fluency_score",
    "rhythm": "rhythm_score",
    "tone": "tone_score",
    "clarity": "clarity_score",
    "completeness": "completeness_score",
}
#: Outcomes a run is recorded with (Celery's final state of that delivery, lower case).
OUTCOMES: tuple[str, ...] = ("success", "failure", "retry", "revoked", "other")
_OUTCOME_OF = {
    "SUCCESS": "success",
    "FAILURE": "failure",
    "RETRY": "retry",
    "IGNORED": "revoked",
    "REVOKED": "revoked",
}
_ANALYSIS_TASK = "vocalborn.analyze_audio"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One finished run of a task, as recorded by the worker."""

    task_id: str
    task_name: str
    queue: str
    worker: str
    started: float
    duration_s: float
    outcome: str

    @property
    def finished(self) -> float:
        """Wall-clock time the run ended."""
        return self.started + self.duration_s


def _key(settings: TaskSettings, *parts: str) -> str:
    return settings.key("stats", *parts)


def _bucket_label(bound: float) -> str:
    return repr(float(bound))


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

    def finish_ops(self, task_id: str, state: str, retval: Any) -> str | None:
        """The end of ``task_id``'s run as Redis commands (JSON), if it runs in this process.

        Called by the result backend as it stores a state, which applies them in the same
        script; None for a task this process is not running (such as a failure the main
        process stores for a pool child that died) or a state that is not an end.
        """
        outcome = _OUTCOME_OF.get(state)
        if outcome is None:  # not an end (a custom state a task stored for itself)
            return None
        run = self._runs.pop(task_id, None)
        if run is None:
            return None
        return json.dumps(self._ops(task_id, run, outcome, retval).commands)

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
            ops = self._ops(task_id, run, _OUTCOME_OF.get(state or "", "other"), retval)
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
        runs = _key(settings, "runs", name)
        hist = _key(settings, "hist", name)
        bucket = next((b for b in DURATION_BUCKETS if duration <= b), math.inf)
        ops = _Ops()
        ops.add("HDEL", _key(settings, "running"), task_id)
        ops.add("ZADD", runs, repr(now), member)
        ops.add("ZREMRANGEBYRANK", runs, "0", str(-(settings.stats_keep + 1)))
        ops.add("EXPIRE", runs, str(int(settings.stats_window_s * 4) + 60))
        ops.add("HSET", _key(settings, "tasks"), name, run.queue)
        ops.add("HINCRBY", _key(settings, "count"), f"{name}|{outcome}", "1")
        if outcome != "retry":  # a retried run is counted once it ends for good
            ops.add("HINCRBY", hist, _bucket_label(bucket), "1")
            ops.add("HINCRBYFLOAT", hist, "sum", repr(duration))
            ops.add("HINCRBY", hist, "count", "1")
        if outcome == "success" and name == _ANALYSIS_TASK and isinstance(retval, Mapping):
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
    key = _key(settings, "scores")
    for label, field in SCORE_FIELDS.items():
        value = result.get(field)
        if not isinstance(value, int | float):
            continue
        bucket = next((b for b in SCORE_BUCKETS if value <= b), math.inf)
        ops.add("HINCRBY", key, f"{label}|{_bucket_label(bucket)}", "1")
        ops.add("HINCRBYFLOAT", key, f"{label}|sum", repr(float(value)))
        ops.add("HINCRBY", key, f"{label}|count", "1")
    level = result.get("level")
    if isinstance(level, int):
        ops.add("HINCRBY", _key(settings, "levels"), str(level), "1")


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


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_run(name: str, raw: Any) -> RunRecord | None:
    """Decode one member of a ``stats:runs`` sorted set (None if it is not ours)."""
    try:
        data = json.loads(_decode(raw))
        return RunRecord(
            task_id=str(data["id"]),
            task_name=name,
            queue=str(data.get("q", "")),
            worker=str(data.get("w", "")),
            started=float(data["s"]),
            duration_s=float(data["d"]),
            outcome=str(data.get("o", "other")),
        )
    except (ValueError, KeyError, TypeError):
        return None


def running_tasks(raw: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """Decode the ``stats:running`` hash: task id -> ``{"n", "q", "w", "s"}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        try:
            out[_decode(key)] = dict(json.loads(_decode(value)))
        except (ValueError, TypeError):
            continue
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) of ``values`` by linear interpolation; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
