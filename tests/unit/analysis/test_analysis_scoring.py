"""Pure helpers of scoring, advice, options and the DTW."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from vocalborn_tasks.analysis import AnalysisOptions
from vocalborn_tasks.analysis.advice import locale_for
from vocalborn_tasks.analysis.align import align, local_costs
from vocalborn_tasks.analysis.scoring import is_tonal, level_for, ramp


def test_ramp() -> None:
    assert ramp(0.0, 0.0, 1.0) == 100.0
    assert ramp(0.5, 0.0, 1.0) == pytest.approx(50.0)
    assert ramp(2.0, 0.0, 1.0) == 0.0
    assert ramp(0.9, 1.0, 0.0) == pytest.approx(90.0)
    assert ramp(float("nan"), 0.0, 1.0) == 0.0


@pytest.mark.parametrize(
    ("overall", "level"),
    [(100, 1), (85, 1), (84.9, 2), (70, 2), (55, 3), (40, 4), (39.9, 5), (0, 5)],
)
def test_levels(overall: float, level: int) -> None:
    assert level_for(overall) == level


@pytest.mark.parametrize(
    ("language", "tonal", "locale"),
    [
        (None, False, "en"),
        ("en", False, "en"),
        ("en-US", False, "en"),
        ("zh-TW", True, "zh-TW"),
        ("zh-Hant", True, "zh-TW"),
        ("zh_TW", True, "zh-TW"),
        ("cmn-Hant-TW", True, "zh-TW"),
        ("yue", True, "zh-TW"),
        ("th", True, "en"),
        ("vi", True, "en"),
        ("thx", False, "en"),
    ],
)
def test_language_mapping(language: str | None, tonal: bool, locale: str) -> None:
    assert is_tonal(language) is tonal
    assert locale_for(language) == locale


def test_options_are_validated_and_frozen() -> None:
    options = AnalysisOptions(max_duration_s=30)
    assert options.max_duration_s == 30.0
    with pytest.raises(ValidationError):
        AnalysisOptions(max_duration_s=0)
    with pytest.raises(ValidationError):
        AnalysisOptions(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        options.max_duration_s = 5  # type: ignore[misc]


def test_subsequence_alignment_finds_the_part_read() -> None:
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((100, 8))
    part = reference[10:60].repeat(2, axis=0)  # read slowly, first half only
    result = align(local_costs(part, reference))
    assert result.cost == pytest.approx(0.0, abs=0.05)
    assert (result.start, result.end) == (10, 59)
    assert np.all(np.diff(result.ref_index) >= 0)
