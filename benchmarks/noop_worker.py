"""Host worker module for the benchmarks: the library's app plus a no-op task definition.

``python -m noop_worker worker --queues health --pool prefork --concurrency 2`` (run with
``benchmarks/`` on ``PYTHONPATH``; the harness does that). Everything else is the library's
defaults (``create_celery_app`` + ``worker_argv``).
"""

from __future__ import annotations

import sys
from typing import Any

from vocalborn_tasks import TaskSettings, create_celery_app, register_task
from vocalborn_tasks.tasks import TaskContext, task_definition


@task_definition(name="bench.noop", queue="health")
def noop(ctx: TaskContext) -> dict[str, int]:
    """Return a small dict and nothing else."""
    return {"ok": 1}


def main(argv: list[str]) -> None:
    from vocalborn_tasks.worker import prepare_worker_environment, worker_argv

    prepare_worker_environment()
    settings = TaskSettings()
    app = create_celery_app(settings)
    register_task(app, noop)
    options: dict[str, Any] = {}
    args = argv[1:]
    for flag in ("--queues", "--concurrency", "--pool", "--hostname"):
        if flag in args:
            options[flag[2:]] = args[args.index(flag) + 1]
    if "queues" in options:
        options["queues"] = options["queues"].split(",")
    if "concurrency" in options:
        options["concurrency"] = int(options["concurrency"])
    app.worker_main(worker_argv(settings, **options))


if __name__ == "__main__":
    main(sys.argv[1:])
