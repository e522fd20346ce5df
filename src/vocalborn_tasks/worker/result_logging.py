"""Keep task results out of worker logs unless the host asks for them.

Celery logs every success at INFO as ``Task name[id] succeeded in 0.05s: <repr of the result>``.
For an analysis that repr is a patient's practice record id, scores and advice: health data in
plain log files, shipped wherever the host's logs go. The worker of a library app therefore
replaces the return value in that line (and in the record's ``data`` extra, which custom
handlers read) with a placeholder, unless ``LOG_TASK_RESULTS`` is true.

Two more things a worker's log should say plainly: a patient's unusable recording (an
"expected" failure, see ``EXPECTED_FAILURES`` in :mod:`.runtime`) is one WARNING line with its
code, written by the runtime, so Celery's own INFO line for it is dropped here; and a worker
that reads recordings from any path (no ``RECORDING_ROOTS``) says so at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import bootsteps

__all__ = [
    "HIDDEN",
    "DropExpectedFailuresFilter",
    "HideResultsFilter",
    "HideResultsStep",
    "StartupChecksStep",
    "note_cancelled_while_finishing",
]

logger = logging.getLogger("vocalborn_tasks.worker")

#: What the log line shows instead of the result.
HIDDEN = "<result not logged; set LOG_TASK_RESULTS=true to log it>"
_TRACE_LOGGER = "celery.app.trace"
#: Tasks of this process whose result was discarded because a cancel was stored first; the
#: next "succeeded" line of each is rewritten (then forgotten). Bounded: a line never logged
#: (a log level above INFO) must not make it grow.
_CANCELLED: dict[str, None] = {}
_CANCELLED_KEEP = 1000
_CANCELLED_MSG = (
    "Task %(name)s[%(id)s] revoked: cancelled as it finished in %(runtime)ss; its result "
    "was discarded"
)


def note_cancelled_while_finishing(task_id: str) -> None:
    """Have this process's success line for ``task_id`` say what callers see: revoked."""
    _CANCELLED[task_id] = None
    while len(_CANCELLED) > _CANCELLED_KEEP:
        del _CANCELLED[next(iter(_CANCELLED))]


class HideResultsFilter(logging.Filter):
    """Replace ``return_value`` in Celery's task-success records."""

    def __init__(self, *, hide: bool = True) -> None:
        super().__init__()
        self.hide = hide

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, Mapping) and "return_value" in args and args.get("id") in _CANCELLED:
            _CANCELLED.pop(str(args["id"]), None)
            record.msg = _CANCELLED_MSG
            record.args = {**args, "return_value": HIDDEN}
            return True
        if self.hide and isinstance(args, Mapping) and "return_value" in args:
            record.args = {**args, "return_value": HIDDEN}
            data = getattr(record, "data", None)
            if isinstance(data, Mapping):
                record.data = {**data, "return_value": HIDDEN}
        return True


class DropExpectedFailuresFilter(logging.Filter):
    """Drop Celery's "raised expected" line: the runtime logged a WARNING with the code."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, Mapping) and args.get("description") == "raised expected")


def _add_trace_filter(new: logging.Filter) -> None:
    """Add ``new`` to Celery's task-trace logger unless a filter of its kind is there already
    (a second app in the same process must not stack them)."""
    trace_logger = logging.getLogger(_TRACE_LOGGER)
    if not any(type(f) is type(new) for f in trace_logger.filters):
        trace_logger.addFilter(new)


class StartupChecksStep(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: quiet expected failures; warn about settings unsafe in production."""

    label = "vocalborn start-up checks"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        _add_trace_filter(DropExpectedFailuresFilter())
        if not worker.app.settings.recording_roots:
            logger.warning(
                "RECORDING_ROOTS is not set: this worker reads recordings from ANY local path "
                "a request names. Set RECORDING_ROOTS (directories, comma-separated or a JSON "
                "list) in production; an empty list is meant for development only."
            )


class HideResultsStep(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: install the filter before the pool forks (children inherit it)."""

    label = "vocalborn result logging"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # Installed even with LOG_TASK_RESULTS (then it hides nothing): it also rewrites the
        # success line of a run a cancel overtook.
        _add_trace_filter(HideResultsFilter(hide=not worker.app.settings.log_task_results))
