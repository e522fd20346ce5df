from __future__ import annotations

import pytest
from pydantic import ValidationError

from vocalborn_tasks.errors import InvalidRequestError
from vocalborn_tasks.models import (
    FINAL_STATES,
    AnalysisRequest,
    AnalysisResult,
    AnalyzerInfo,
    TaskState,
    state_from_celery,
)


def test_request_accepts_the_design_example() -> None:
    req = AnalysisRequest(
        practice_record_id="rec-123",
        recording="/data/rec-123.wav",
        reference="/data/sentence-9.wav",
        language="zh-TW",
    )
    assert req.language == "zh-TW"
    assert req.analysis_params == {}


@pytest.mark.parametrize(
    "record_id", ["", " ", "a b", "../etc", "x" * 129, "-leading-dash", "semi;colon"]
)
def test_request_rejects_bad_record_ids(record_id: str) -> None:
    with pytest.raises(InvalidRequestError):
        AnalysisRequest(practice_record_id=record_id)


def test_request_rejects_oversized_params() -> None:
    with pytest.raises(InvalidRequestError, match="bytes of JSON"):
        AnalysisRequest(practice_record_id="r1", analysis_params={"blob": "x" * 1_000_000})


def test_request_rejects_nul_and_wrong_types() -> None:
    with pytest.raises(InvalidRequestError):
        AnalysisRequest(practice_record_id="r1", recording="a\x00b")
    with pytest.raises(InvalidRequestError):
        AnalysisRequest.model_validate({"practice_record_id": 5})
    with pytest.raises(InvalidRequestError):
        AnalysisRequest.model_validate({"practice_record_id": "r1", "unknown": 1})
    with pytest.raises(InvalidRequestError):
        AnalysisRequest(practice_record_id="r1", language="not a language")


@pytest.mark.parametrize(
    "fields",
    [
        {"practice_record_id": "r1", "recording": "a\x00b.wav", "reference": "b.wav"},
        {"practice_record_id": "r1", "recording": "a.wav", "reference": "r" * 10_000},
        {"practice_record_id": "x" * 10_000},
    ],
    ids=["nul-byte", "10kB-reference", "10kB-record-id"],
)
async def test_one_exception_type_for_bad_requests(fields: dict[str, str]) -> None:
    """Building the request and the keyword form of submit raise the same library type."""
    from vocalborn_tasks import TaskManager, TaskSettings

    with pytest.raises(InvalidRequestError) as built:
        AnalysisRequest(**fields)  # type: ignore[arg-type]
    assert built.value.code == "invalid_request"
    assert built.value.errors and all(set(e) == {"loc", "msg"} for e in built.value.errors)
    assert "\x00" not in built.value.message and "r" * 200 not in built.value.message
    assert built.value.public_message == built.value.message  # no value echoed: safe to show
    # Nothing is sent: the keyword form fails before any connection is made.
    async with TaskManager(TaskSettings(redis_url="redis://127.0.0.1:1")) as manager:
        with pytest.raises(InvalidRequestError) as keyword:
            await manager.submit_audio_analysis(**fields)
    assert keyword.value.errors == built.value.errors


def test_request_round_trips_through_json() -> None:
    req = AnalysisRequest(
        practice_record_id="r1", recording="a.wav", reference="b.wav", analysis_params={"k": [1, 2]}
    )
    assert AnalysisRequest.model_validate_json(req.model_dump_json()) == req


def _result(**over: object) -> AnalysisResult:
    fields: dict[str, object] = {
        "overall_score": 80.0,
        "level": 2,
        "pronunciation_accuracy": 90.0,
        "fluency_score": 80.0,
        "rhythm_score": 70.0,
        "tone_score": 85.0,
        "clarity_score": 75.0,
        "completeness_score": 100.0,
        "reliable": True,
        "analyzer": AnalyzerInfo(name="x", version="1"),
        "processing_time_s": 0.1,
    }
    fields.update(over)
    return AnalysisResult.model_validate(fields)


def test_result_bounds_are_enforced() -> None:
    assert _result().level == 2
    with pytest.raises(ValidationError):
        _result(level=0)
    with pytest.raises(ValidationError):
        _result(level=6)
    with pytest.raises(ValidationError):
        _result(tone_score=100.5)
    with pytest.raises(ValidationError):
        _result(clarity_score=-1)


@pytest.mark.parametrize(
    ("celery", "ours"),
    [
        ("PENDING", TaskState.PENDING),
        ("RECEIVED", TaskState.PENDING),
        ("STARTED", TaskState.STARTED),
        ("PROGRESS", TaskState.PROGRESS),
        ("RETRY", TaskState.RETRY),
        ("SUCCESS", TaskState.SUCCESS),
        ("FAILURE", TaskState.FAILURE),
        ("REVOKED", TaskState.REVOKED),
        ("REJECTED", TaskState.FAILURE),
        ("success", TaskState.SUCCESS),
        ("MY_CUSTOM_STEP", TaskState.PROGRESS),
    ],
)
def test_state_mapping(celery: str, ours: TaskState) -> None:
    assert state_from_celery(celery) is ours


def test_final_states() -> None:
    assert {s for s in TaskState if s.is_final} == FINAL_STATES
    assert not TaskState.PENDING.is_final
    assert TaskState.LOST.is_final
    assert TaskState.EXPIRED.is_final
    assert TaskState.SUCCESS == "SUCCESS"  # StrEnum: compares to Celery's strings
