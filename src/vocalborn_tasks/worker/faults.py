"""Test-only fault injection: SIGKILL this process at a named point of a task's life.

Off unless ``VOCALBORN_FAULT_POINT`` is set in the worker's environment (only the fault tests
set it). It names one point; the process kills itself with SIGKILL the first time it gets
there, so a test reaches a window exactly instead of by luck. With ``VOCALBORN_FAULT_TASK`` set
too, only a run of a task whose id contains that text triggers it. With
``VOCALBORN_FAULT_HOLD=DIR`` the process holds there instead of dying: it writes
``DIR/reached`` (the task id) and waits until ``DIR/release`` exists, so a test can act inside
the window (a cancel that lands as the task finishes, say).

Points, in the order a task passes them:

* ``after_reserve``: transport; the message is taken and recorded as reserved;
* ``after_begin``: STARTED is stored;
* ``in_sink``: the sink's claim is taken, the sink has not committed;
* ``after_sink_commit``: the sink returned; its acknowledgement is not recorded;
* ``before_retry``: a retryable failure; its RETRY and next attempt are not written;
* ``after_retry``: RETRY stored, next attempt queued, delivery acknowledged (one script);
  Celery has not heard of it;
* ``before_store``: the result is computed, not stored;
* ``after_store``: result stored and message acknowledged (one script); the worker's main
  process has not heard of it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["POINTS", "point"]

POINTS = frozenset(
    {
        "after_reserve",
        "after_begin",
        "in_sink",
        "after_sink_commit",
        "before_retry",
        "after_retry",
        "before_store",
        "after_store",
    }
)
_ENV_POINT = "VOCALBORN_FAULT_POINT"
_ENV_TASK = "VOCALBORN_FAULT_TASK"
_ENV_HOLD = "VOCALBORN_FAULT_HOLD"


def point(name: str, task_id: str = "") -> None:
    """Die here if the environment asks for it (a no-op otherwise: one dict lookup)."""
    wanted = os.environ.get(_ENV_POINT)
    if wanted is None or wanted != name:
        return
    only = os.environ.get(_ENV_TASK)
    if only and only not in task_id:
        return
    hold = os.environ.get(_ENV_HOLD)
    if hold:
        _hold(Path(hold), task_id)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _hold(where: Path, task_id: str) -> None:
    """Wait at this point until the test releases us (test-only; polls the file system)."""
    import time

    release = where / "release"
    if release.exists():  # held once per test: later runs pass
        return
    (where / "reached").write_text(task_id, encoding="utf-8")
    while not release.exists():
        time.sleep(0.02)
