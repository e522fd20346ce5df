"""Host task definitions the manager contract suite submits (the worker runs them by --include).

``parked`` goes to a queue no worker consumes: on the real side it stays PENDING for as long as
the test wants, which is what ``FakeTaskManager.hold()`` gives on the fake side.
"""

from __future__ import annotations

from vocalborn_tasks import AudioError, TaskContext, task_definition

PARKED_QUEUE = "contract_parked"


@task_definition(name="contract.shout", queue="ai_analysis")
def shout(ctx: TaskContext, text: str) -> str:
    ctx.report_progress("shouting", 50.0)
    return text.upper()


@task_definition(name="contract.reject", queue="ai_analysis")
def reject(ctx: TaskContext, code: str) -> int:
    raise AudioError("the recording at /srv/private/rec.wav is too short", code=code)


@task_definition(name="contract.crash", queue="ai_analysis")
def crash(ctx: TaskContext) -> int:
    raise RuntimeError("cannot open /srv/private/layout/db.sqlite")


@task_definition(name="contract.parked", queue=PARKED_QUEUE)
def parked(ctx: TaskContext) -> str:
    return "ran"
