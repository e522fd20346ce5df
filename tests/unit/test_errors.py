from __future__ import annotations

import pickle

import pytest
import redis

from vocalborn_tasks import errors
from vocalborn_tasks.errors import (
    AudioError,
    BrokerAuthError,
    BrokerUnavailableError,
    InvalidRequestError,
    RetryableTaskError,
    TaskFailedError,
    TaskLostError,
    TaskNotFoundError,
    TaskTimeoutError,
    VocalbornTasksError,
    is_retryable,
)


def test_every_error_has_one_root() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, VocalbornTasksError), name


def test_tree_in_docstring_names_every_error() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        if isinstance(getattr(errors, name), type):
            assert name in doc, name


def test_audio_error_code_survives_celery_style_rebuild() -> None:
    exc = AudioError("no speech found", code="no_speech")
    rebuilt = type(exc)(*exc.args)  # what Celery does with the JSON exception args
    assert rebuilt.code == "no_speech"
    assert str(rebuilt) == "no speech found"
    assert pickle.loads(pickle.dumps(exc)).code == "no_speech"


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (AudioError("x", code="empty"), False),
        (InvalidRequestError("x"), False),
        (BrokerUnavailableError("x"), True),
        (BrokerAuthError("x"), False),
        (RetryableTaskError("x"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError("EIO"), True),
        (FileNotFoundError(), False),
        (PermissionError(), False),
        (ValueError("bug"), False),
        (KeyError("bug"), False),
        (redis.exceptions.ConnectionError("refused"), True),
        (redis.exceptions.TimeoutError("slow"), True),
        (redis.exceptions.ResponseError("WRONGTYPE"), False),
    ],
)
def test_classification(exc: BaseException, retryable: bool) -> None:
    assert is_retryable(exc) is retryable


def test_task_errors_carry_the_task_id() -> None:
    exc = TaskFailedError(
        "boom", task_id="t1", remote_type="AudioError", remote_message="m", code="empty"
    )
    assert (exc.task_id, exc.remote_type, exc.code) == ("t1", "AudioError", "empty")
    assert isinstance(TaskTimeoutError("t", task_id="t1"), TimeoutError)
    assert issubclass(TaskLostError, TaskNotFoundError)
    assert TaskLostError("x", task_id="t").code == "lost"
