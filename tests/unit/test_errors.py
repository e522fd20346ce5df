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


def test_every_code_is_documented_in_one_table() -> None:
    """docs/errors.md lists exactly the codes of ERROR_CODES, with the same cause and text."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[2:4]]
        for line in doc.splitlines()
        if line.startswith("| `")
    }
    assert rows == {
        code: [row.cause, row.public_message] for code, row in errors.ERROR_CODES.items()
    }
    assert "unreadable_audio" in rows


@pytest.mark.parametrize(
    ("exc", "cause", "code"),
    [
        (AudioError("/srv/x.wav: too short", code="too_short"), "input", "too_short"),
        (InvalidRequestError("bad"), "input", "invalid_request"),
        (BrokerUnavailableError("down at redis://10.0.0.1"), "system", "broker_unavailable"),
        (
            TaskFailedError("x", task_id="t", remote_type="AudioError", remote_message="m"),
            "input",
            "internal",
        ),
        (
            TaskFailedError(
                "x", task_id="t", remote_type="AudioError", remote_message="m", code="no_speech"
            ),
            "input",
            "no_speech",
        ),
        (
            TaskFailedError("x", task_id="t", remote_type="KeyError", remote_message="m"),
            "system",
            "internal",
        ),
        (TaskLostError("x", task_id="t"), "system", "lost"),
    ],
)
def test_every_error_has_a_code_a_cause_and_a_public_message(
    exc: VocalbornTasksError, cause: str, code: str
) -> None:
    assert (exc.cause, exc.code) == (cause, code)
    assert exc.public_message and "/" not in exc.public_message
