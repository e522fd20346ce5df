from __future__ import annotations

import json

from vocalborn_tasks._protocol import build_task_message
from vocalborn_tasks.models import TaskState
from vocalborn_tasks.results import status_from_meta


def test_no_meta_no_marker_is_not_found() -> None:
    assert status_from_meta("t", None, None).state is TaskState.NOT_FOUND


def test_marker_without_meta_is_pending_then_expired() -> None:
    marker = {"name": "vocalborn.test", "queue": "health", "t": "1700000000.0"}
    st = status_from_meta("t", None, marker)
    assert st.state is TaskState.PENDING
    assert st.queue == "health" and st.task_name == "vocalborn.test"
    assert st.submitted_at is not None
    assert status_from_meta("t", None, {**marker, "done": "1"}).state is TaskState.EXPIRED


def test_progress_meta() -> None:
    st = status_from_meta("t", {"status": "PROGRESS", "result": {"step": "pitch", "percent": 42.5}})
    assert (st.state, st.step, st.progress) == (TaskState.PROGRESS, "pitch", 42.5)


def test_failure_meta_carries_our_code() -> None:
    meta = {
        "status": "FAILURE",
        "result": {
            "exc_type": "AudioError",
            "exc_message": ["no speech", "no_speech"],
            "exc_module": "vocalborn_tasks.errors",
        },
    }
    st = status_from_meta("t", meta)
    assert st.state is TaskState.FAILURE
    assert st.error is not None
    assert (st.error.type, st.error.message, st.error.code) == (
        "AudioError",
        "no speech",
        "no_speech",
    )


def test_foreign_failures_are_named() -> None:
    meta = {
        "status": "FAILURE",
        "result": {
            "exc_type": "TimeLimitExceeded",
            "exc_message": [300],
            "exc_module": "billiard.exceptions",
        },
    }
    st = status_from_meta("t", meta)
    assert st.error is not None and st.error.code == "time_limit"
    assert status_from_meta("t", {"status": "FAILURE", "result": "weird"}).error is not None


def test_success_and_revoked() -> None:
    st = status_from_meta(
        "t", {"status": "SUCCESS", "result": {"a": 1}, "date_done": "2026-01-01T00:00:00"}
    )
    assert st.state is TaskState.SUCCESS and st.result == {"a": 1} and st.progress == 100.0
    assert st.date_done is not None and st.date_done.tzinfo is not None
    assert status_from_meta("t", {"status": "REVOKED"}).state is TaskState.REVOKED


def test_task_message_envelope() -> None:
    import base64

    raw = json.loads(build_task_message("id-1", "vocalborn.test", {"message": "hi"}, "health"))
    assert raw["headers"]["task"] == "vocalborn.test"
    assert raw["headers"]["id"] == "id-1"
    assert raw["properties"]["delivery_info"]["routing_key"] == "health"
    assert raw["content-type"] == "application/json"
    body = json.loads(base64.b64decode(raw["body"]))
    assert body[0] == [] and body[1] == {"message": "hi"}
    assert set(body[2]) == {"callbacks", "errbacks", "chain", "chord"}
    assert raw["headers"]["eta"] is None  # sent now: the library never delays a message
