"""Host-side doubles the fault tests load into real workers by import path.

* :class:`FaultAnalyzer` (``ANALYZER=faults.helpers:FaultAnalyzer``) runs the real built-in
  analysis, but first counts the execution in Redis, can stretch itself over
  ``FAULTS_ANALYSIS_DELAY`` seconds (``FAULTS_SLOW_ANALYSIS_DELAY`` for a recording whose file
  name contains ``slow``; so a test can kill a worker half-way), and SIGKILLs its own process
  for any recording whose file name contains ``poison``.
* :func:`counting_sink` (``RESULT_SINK=faults.helpers:counting_sink``) counts each call per task
  id in Redis, so a test can prove the sink saw every result exactly once.
* :data:`count` is a task definition for the load test: it counts its executions per task id,
  hands its value to the sink through the library's real ``deliver_once`` path, and returns.
  ``python -m faults.helpers worker ...`` runs a worker with it registered.

Every counter lives in the result-backend database under ``faults:``; the test reads it there.
With ``FAULTS_RUN_LOG`` set, :data:`count` and :class:`FaultAnalyzer` also append ``<task id
or recording name> <FAULTS_WORKER> <epoch seconds>`` to that file for each execution: a record of runs that a
failover cannot roll back (the writes a demoted master took are discarded with it).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import redis

from vocalborn_tasks import AnalysisResult, TaskSettings, create_celery_app, register_task
from vocalborn_tasks._connections import sync_redis
from vocalborn_tasks.analysis import load_analyzer
from vocalborn_tasks.tasks import TaskContext, task_definition

EXEC_KEY = "faults:exec"  # hash: key (task id or recording name) -> executions started
SINK_KEY = "faults:sink"  # hash: task id -> sink calls


@cache
def _client() -> redis.Redis:
    # Through the sentinels when REDIS_SENTINELS is set.
    return sync_redis(TaskSettings(), "backend")


def _log_run(task_id: str) -> bool:
    """Append this run to ``FAULTS_RUN_LOG``; False when that is not set."""
    path = os.environ.get("FAULTS_RUN_LOG")
    if not path:
        return False
    # One short O_APPEND write per run: lines from several processes never interleave.
    with open(path, "a") as fh:
        fh.write(f"{task_id} {os.environ.get('FAULTS_WORKER', '-')} {time.time():.3f}\n")
    return True


class FaultAnalyzer:
    """The built-in analyzer, slowed down, counted, and poisoned on request."""

    name = "fault-analyzer"
    version = "1"

    def __init__(self) -> None:
        self._inner = load_analyzer(None)
        self._delay = float(os.environ.get("FAULTS_ANALYSIS_DELAY", "0"))

    def analyze(self, recording: Any, reference: Any, **kwargs: Any) -> AnalysisResult:
        name = Path(str(recording)).name
        if not _log_run(name):  # the file is the record; Redis may be failing over
            _client().hincrby(EXEC_KEY, name, 1)
        if "poison" in name:
            os.kill(os.getpid(), signal.SIGKILL)
        delay = self._delay
        if "slow" in name:
            delay = float(os.environ.get("FAULTS_SLOW_ANALYSIS_DELAY", delay))
        on_progress = kwargs.get("on_progress")
        steps = 10
        for i in range(steps):
            if on_progress is not None:
                on_progress("fault-delay", 100.0 * i / steps)
            time.sleep(delay / steps)
        return self._inner.analyze(recording, reference, **kwargs)


def counting_sink(task_id: str, result: Any) -> None:
    """A result sink that counts its calls per task id."""
    _client().hincrby(SINK_KEY, task_id, 1)


@task_definition(name="faults.count", queue="ai_analysis")
def count(
    ctx: TaskContext,
    n: int,
    delay_s: float = 0.0,
    gate_dir: str | None = None,
    fail_first: bool = False,
) -> int:
    """Count this execution, sleep a little, give ``n`` to the sink once, return ``n``.

    With ``fail_first``, a first attempt (no retry before it) fails with a retryable error
    after counting itself, so the worker schedules a retry.

    With ``gate_dir``, the sink is a file (a host database that is not Redis): it writes
    ``entered``, waits for the test to create ``go``, then appends the task id to ``sink``.
    The test can so take Redis away exactly while the sink runs.
    """
    _log_run(ctx.task_id)
    client = _client()
    client.hincrby(EXEC_KEY, ctx.task_id, 1)
    if fail_first and ctx.retries == 0:
        raise ConnectionResetError("the host's database reset the connection")
    if delay_s:
        time.sleep(delay_s)
    assert ctx.runtime is not None
    if gate_dir is None:
        ctx.runtime.deliver_once(ctx.task_id, lambda: client.hincrby(SINK_KEY, ctx.task_id, 1))
    else:
        ctx.runtime.deliver_once(ctx.task_id, lambda: _gated_file_sink(Path(gate_dir), ctx.task_id))
    return n


def _gated_file_sink(gate: Path, task_id: str) -> None:
    (gate / "entered").write_text(task_id)
    deadline = time.monotonic() + 60
    while not (gate / "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        time.sleep(0.02)
    with open(gate / "sink", "a") as fh:
        fh.write(task_id + "\n")


def main(argv: list[str]) -> None:
    """``python -m faults.helpers worker --queues ... --pool ...``: a host worker with ``count``."""
    from vocalborn_tasks.worker import prepare_worker_environment, worker_argv

    prepare_worker_environment()
    settings = TaskSettings()
    app = create_celery_app(settings)
    register_task(app, count)
    options: dict[str, Any] = {}
    args = argv[1:]
    for flag, key in (("--queues", "queues"), ("--concurrency", "concurrency")):
        if flag in args:
            options[key] = args[args.index(flag) + 1]
    for flag, key in (("--pool", "pool"), ("--hostname", "hostname")):
        if flag in args:
            options[key] = args[args.index(flag) + 1]
    if "queues" in options:
        options["queues"] = options["queues"].split(",")
    if "concurrency" in options:
        options["concurrency"] = int(options["concurrency"])
    app.worker_main(worker_argv(settings, **options))


if __name__ == "__main__":
    main(sys.argv[1:])
