"""Every private Celery/kombu name the worker side borrows still exists (issue 10, item 6).

An upgrade that renames one fails here, not in production; pyproject pins the tested range.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement

from vocalborn_tasks.worker.celery_private import PRIVATE_NAMES


@pytest.mark.parametrize(("module", "dotted"), PRIVATE_NAMES)
def test_private_name_exists(module: str, dotted: str) -> None:
    obj: object = importlib.import_module(module)
    for part in dotted.split("."):
        assert hasattr(obj, part), f"{module}.{dotted}: {part} is gone"
        obj = getattr(obj, part)


#: Methods we override or call with these parameters: a changed signature breaks us.
SIGNATURES = {
    ("kombu.transport.redis", "Channel._brpop_start"): ["self", "timeout"],
    ("kombu.transport.redis", "Channel._brpop_read"): ["self", "options"],
    ("kombu.transport.redis", "Channel._put"): ["self", "queue", "message", "kwargs"],
    ("kombu.transport.redis", "Channel._do_restore_message"): [
        "self",
        "payload",
        "exchange",
        "routing_key",
        "pipe",
        "leftmost",
    ],
    ("kombu.transport.redis", "QoS.append"): ["self", "message", "delivery_tag"],
    ("kombu.transport.redis", "QoS.ack"): ["self", "delivery_tag"],
    ("kombu.transport.redis", "QoS.restore_unacked"): ["self", "client"],
    ("celery.backends.redis", "RedisBackend._store_result"): [
        "self",
        "task_id",
        "result",
        "state",
        "traceback",
        "request",
        "kwargs",
    ],
}


@pytest.mark.parametrize(("where", "params"), list(SIGNATURES.items()))
def test_private_signature(where: tuple[str, str], params: list[str]) -> None:
    module, dotted = where
    obj: object = importlib.import_module(module)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    assert callable(obj)
    assert list(inspect.signature(obj).parameters) == params


def test_success_log_line_carries_the_return_value_by_name() -> None:
    # worker/result_logging.py hides the result by replacing this argument of the record.
    from celery.app import trace

    assert "%(return_value)s" in trace.LOG_SUCCESS


def test_installed_celery_and_kombu_are_the_pinned_range() -> None:
    # pyproject pins what CI tests; an install outside it is untested (issue 10, item 6).
    from importlib.metadata import requires

    wanted = {
        Requirement(r).name: Requirement(r)
        for r in requires("vocalborn-tasks") or []
        if "extra ==" not in r
    }
    for name in ("celery", "kombu"):
        assert name in wanted, f"{name} is not pinned in pyproject"
        assert wanted[name].specifier.contains(version(name)), (name, version(name))


def test_failure_expires_is_there() -> None:
    # Celery 5.5 had no failure_expires: a failing task never reached FAILURE with it.
    from vocalborn_tasks.config import TaskSettings
    from vocalborn_tasks.worker.celery_private import result_expiry
    from vocalborn_tasks.worker.factory import create_celery_app

    app = create_celery_app(TaskSettings(redis_url="redis://127.0.0.1:1"))
    assert result_expiry(app.backend, "FAILURE") is not None
    assert result_expiry(app.backend, "SUCCESS") is not None


def test_expected_failure_line_is_told_by_its_description() -> None:
    # worker/result_logging.py drops Celery's line for a task's ``throws`` by this description.
    from celery.app import trace

    assert trace.log_policy_expected.description == "raised expected"
    assert "%(description)s" in trace.log_policy_expected.format
