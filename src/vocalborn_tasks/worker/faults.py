"""Test-only fault injection: SIGKILL this process at a named point of a task's life.

Off unless ``VOCALBORN_FAULT_POINT`` is set in the worker's environment (only the fault tests
set it). It names one point; the process kills itself with SIGKILL the first time it gets
there, so a test reaches a window exactly instead of by luck. With ``VOCALBORN_FAULT_TASK`` set
too, only a run of a task whose id contains that text triggers it.

Points, in the order a task passes them:

* ``after_reserve``: transport; the message is taken and recorded as reserved;
* ``after_begin``: STARTED is stored;
* ``in_sink``: the sink's claim is taken, the sink has not committed;
* ``after_sink_commit``: the sink returned; its acknowledgement is not recorded;
* ``before_store``: the result is computed, not stored;
* ``after_store``: result stored and message acknowledged (one script); the worker's main
  process has not heard of it.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "point"]

POINTS = frozenset(
    {"after_reserve", "after_begin", "in_sink", "after_sink_commit", "before_store", "after_store"}
)
_ENV_POINT = "VOCALBORN_FAULT_POINT"
_ENV_TASK = "VOCALBORN_FAULT_TASK"


def point(name: str, task_id: str = "") -> None:
    """Die here if the environment asks for it (a no-op otherwise: one dict lookup)."""
    wanted = os.environ.get(_ENV_POINT)
    if wanted is None or wanted != name:
        return
    only = os.environ.get(_ENV_TASK)
    if only and only not in task_id:
        return
    os.kill(os.getpid(), signal.SIGKILL)
