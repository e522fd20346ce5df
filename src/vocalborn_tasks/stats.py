"""Cheap per-task statistics, recorded where tasks run and read by the Monitor and metrics.

A worker process records, for every task it runs, with no round trip of its own (the start
goes with the delivery check, the end with the stored result). Under load (more than one run
per 0.5 s in a process) the end of a run is folded in the process and written at most every
0.5 s, so everything below but ``stats:running`` may be up to 0.5 s behind the results callers
already have (``worker/stats_recorder.py``):

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

The recording side (Celery signal handlers and the backend's hook) lives in
:mod:`vocalborn_tasks.worker.stats_recorder`; this module only defines the layout and reads it,
so the Monitor and the metrics exporter never import Celery.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TaskSettings

__all__ = [
    "DURATION_BUCKETS",
    "OUTCOMES",
    "SCORE_BUCKETS",
    "SCORE_FIELDS",
    "RunRecord",
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
OUTCOME_OF = {
    "SUCCESS": "success",
    "FAILURE": "failure",
    "RETRY": "retry",
    "IGNORED": "revoked",
    "REVOKED": "revoked",
}
ANALYSIS_TASK = "vocalborn.analyze_audio"


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


def stats_key(settings: TaskSettings, *parts: str) -> str:
    return settings.key("stats", *parts)


def bucket_label(bound: float) -> str:
    return repr(float(bound))


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
