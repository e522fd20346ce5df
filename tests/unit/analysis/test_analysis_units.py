"""Units (issue 20): segmentation, labels, per-unit judgement, and what the result says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vocalborn_tasks.analysis import BuiltinAnalyzer, analyze_recording
from vocalborn_tasks.analysis.advice import SUPPORTED_LANGUAGES, is_supported, ordinal
from vocalborn_tasks.analysis.compare import Comparison, Span, robust_pitch_residual
from vocalborn_tasks.analysis.pitch import without_jumps
from vocalborn_tasks.analysis.units import (
    UnitMeasure,
    cut_points,
    final_rise,
    judge_units,
    text_units,
)
from vocalborn_tasks.models import AnalysisRequest, AnalysisResult

EN_TEXT = "The big ship is waiting in the harbor tonight."
ZH_TEXT = "jin1 tian1 tian1 qi4 zhen1 de5 hen3 hao3"


def _pair(
    analyzer: BuiltinAnalyzer,
    audio_dir: Path,
    prefix: str,
    name: str,
    framing: str,
    language: str | None,
    text: str | None,
) -> AnalysisResult:
    suffix = "_tight" if framing == "tight" else ""
    return analyzer.analyze(
        audio_dir / f"{prefix}_{name}{suffix}.flac",
        audio_dir / f"{prefix}_reference{suffix}.flac",
        language=language,
        reference_text=text,
    )


# --------------------------------------------------------------------------- pure functions


def test_text_units_counts_words_characters_and_pinyin() -> None:
    assert text_units("Can you pass me the salt, please?", "en", tonal=False) == (
        ["Can", "you", "pass", "me", "the", "salt", "please"],
        "word",
    )
    assert text_units("don't stop", "en", tonal=False)[0] == ["don't", "stop"]
    assert text_units("今天天氣很好。", "zh-TW", tonal=True) == (
        ["今", "天", "天", "氣", "很", "好"],
        "syllable",
    )
    assert text_units(ZH_TEXT, "zh-TW", tonal=True) == (ZH_TEXT.split(), "syllable")


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "101st",
    ]


def test_cut_points_split_at_dips_and_at_dropped_pauses() -> None:
    t = np.arange(90, dtype=np.float64)
    # Three syllable-like bumps of 30 frames each, 12 dB deep dips between them.
    env = -12.0 * np.abs(np.cos(np.pi * t / 30.0))
    kept = np.arange(90, dtype=np.intp)
    cuts = cut_points(env, kept, 4.0)
    assert len(cuts) == 2
    assert all(abs(c - e) <= 1 for c, e in zip(cuts, (30, 60), strict=True))
    # A shallow dip is not a boundary at a deeper threshold.
    assert cut_points(env, kept, 20.0) == []
    # A dropped pause (the kept frames jump) always cuts, whatever the envelope.
    flat = np.zeros(40)
    jumped = np.concatenate([np.arange(20), np.arange(60, 80)]).astype(np.intp)
    assert cut_points(flat, jumped, 4.0) == [20]


def _measures(rel: list[float], pitch: list[float] | None = None) -> list[UnitMeasure]:
    pitch = pitch or [0.3] * len(rel)
    return [
        UnitMeasure((i * 0.3, i * 0.3 + 0.3), (i * 0.3, i * 0.3 + 0.3), 20, r, p)
        for i, (r, p) in enumerate(zip(rel, pitch, strict=True))
    ]


def test_only_a_unit_that_stands_out_is_flagged() -> None:
    even = judge_units(_measures([0.9, 0.95, 0.92, 0.97, 0.93, 0.91]), tonal=False)
    assert [j.code for j in even] == [None] * 6
    assert all(j.pronunciation is not None and j.pronunciation > 80 for j in even)
    out = judge_units(_measures([0.9, 0.95, 0.92, 1.6, 0.93, 0.91]), tonal=False)
    assert [j.code for j in out] == [None, None, None, "mispronounced", None, None]
    assert out[3].pronunciation is not None and out[3].pronunciation < 20
    assert all(j.tone is None for j in out)  # not a tonal language


def test_a_wrong_sentence_flags_no_unit() -> None:
    out = judge_units(_measures([0.9, 0.95, 0.92, 1.6, 0.93, 0.91]), tonal=False, enabled=False)
    assert all(j.code is None for j in out)


def test_pitch_is_judged_per_unit_only_for_tonal_languages() -> None:
    rel = [0.9, 0.92, 0.91, 0.93, 0.9, 0.92]
    pitch = [0.3, 0.4, 0.35, 2.8, 0.3, 0.4]
    assert all(j.code is None for j in judge_units(_measures(rel, pitch), tonal=False))
    tonal = judge_units(_measures(rel, pitch), tonal=True)
    assert [j.code for j in tonal] == [None, None, None, "pitch_contour", None, None]
    assert tonal[3].tone is not None and tonal[0].tone is not None
    assert tonal[3].tone < tonal[0].tone


def test_at_most_two_units_are_flagged() -> None:
    out = judge_units(_measures([0.9, 1.8, 0.92, 1.7, 0.93, 1.6, 0.9, 0.91, 0.9]), tonal=False)
    assert sum(j.code is not None for j in out) == 2
    assert out[1].code and out[3].code and out[5].code is None


def test_final_rise() -> None:
    st = np.full(100, np.nan)
    st[10:90] = 0.0
    st[60:90] = np.linspace(0.0, 6.0, 30)
    assert final_rise(st, 95) > 4.0
    st[60:90] = 0.0
    assert abs(final_rise(st, 95)) < 0.5
    assert np.isnan(final_rise(np.full(50, np.nan), 49))


# --------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("framing", ["padded", "tight"])
def test_segments_are_labelled_from_the_text(
    analyzer: BuiltinAnalyzer, audio_dir: Path, framing: str
) -> None:
    result = _pair(analyzer, audio_dir, "zh", "other_voice", framing, "zh-TW", ZH_TEXT)
    metrics = result.metrics
    assert metrics["units_expected"] == 8
    segments = result.segments
    assert segments, "units are always reported"
    if metrics["units_labelled"]:
        assert [s.label for s in segments] == ZH_TEXT.split()
    else:
        assert all(s.label is None for s in segments)
        assert "units_label_issue" in metrics
    for i, seg in enumerate(segments, start=1):
        assert seg.index == i
        assert seg.reference_start_s < seg.reference_end_s
        assert seg.tone_score is not None or seg.start_s is None or seg.kind == "syllable"
    starts = [s.reference_start_s for s in segments]
    assert starts == sorted(starts)


def test_a_count_that_cannot_match_is_said_not_guessed(
    analyzer: BuiltinAnalyzer, audio_dir: Path
) -> None:
    text = " ".join(["word"] * 60)  # far more words than the recording has syllables
    result = _pair(analyzer, audio_dir, "en", "other_voice", "padded", "en", text)
    assert result.metrics["units_labelled"] is False
    assert "60 words" in str(result.metrics["units_label_issue"])
    assert all(s.label is None for s in result.segments)
    assert all(s.kind == "syllable" for s in result.segments)


@pytest.mark.parametrize("framing", ["padded", "tight"])
@pytest.mark.parametrize("prefix", ["en", "zh"])
def test_right_sentence_in_another_voice_gets_no_timed_finding(
    analyzer: BuiltinAnalyzer, audio_dir: Path, prefix: str, framing: str
) -> None:
    language = "en" if prefix == "en" else "zh-TW"
    text = EN_TEXT if prefix == "en" else ZH_TEXT
    for with_text in (None, text):
        result = _pair(analyzer, audio_dir, prefix, "other_voice", framing, language, with_text)
        timed = [f for f in result.findings if f.start_s is not None]
        assert timed == [], timed
        assert all(s.finding is None for s in result.segments)


def test_english_melody_alone_is_never_a_pitch_finding(
    analyzer: BuiltinAnalyzer, audio_dir: Path
) -> None:
    # The chunked reading changes the intonation (tone score ~56) but is no question.
    for framing in ("padded", "tight"):
        result = _pair(analyzer, audio_dir, "en", "pauses", framing, "en", EN_TEXT)
        assert result.metrics["question"] is False
        assert not [f for f in result.findings if f.code == "pitch_contour"]


def test_unit_findings_name_the_unit(analyzer: BuiltinAnalyzer, audio_dir: Path) -> None:
    for framing in ("padded", "tight"):
        result = _pair(analyzer, audio_dir, "zh", "tone_substitution", framing, "zh-TW", ZH_TEXT)
        for finding in result.findings:
            if finding.start_s is not None and finding.code in ("pitch_contour", "mispronounced"):
                assert finding.message.startswith("第 ")
                flagged = [s for s in result.segments if s.finding == finding.code]
                assert flagged


def test_a_wrong_sentence_points_at_no_unit(analyzer: BuiltinAnalyzer, audio_dir: Path) -> None:
    result = _pair(analyzer, audio_dir, "zh", "different_sentence", "padded", "zh-TW", ZH_TEXT)
    assert result.findings[0].code == "wrong_sentence"
    assert all(s.finding is None for s in result.segments)


def test_half_a_recording_is_not_reliable(analyzer: BuiltinAnalyzer, audio_dir: Path) -> None:
    for prefix, language in (("en", "en"), ("zh", "zh-TW")):
        for framing in ("padded", "tight"):
            result = _pair(analyzer, audio_dir, prefix, "truncated_half", framing, language, None)
            assert result.reliable is False
            assert "incomplete" in result.reliability_issues
    clean = _pair(analyzer, audio_dir, "en", "other_voice", "padded", "en", None)
    assert clean.reliable is True


@pytest.mark.parametrize(
    ("language", "advice", "supported"),
    [
        (None, "en", True),
        ("en-GB", "en", True),
        ("zh-TW", "zh-TW", True),
        ("cmn", "zh-TW", True),
        ("fr", "en", False),
        ("th", "en", False),
    ],
)
def test_the_result_names_its_advice_language(
    analyzer: BuiltinAnalyzer,
    audio_dir: Path,
    language: str | None,
    advice: str,
    supported: bool,
) -> None:
    result = _pair(analyzer, audio_dir, "en", "other_voice", "padded", language, None)
    assert result.advice_language == advice
    assert result.metrics["language_supported"] is supported
    assert result.metrics["supported_languages"] == list(SUPPORTED_LANGUAGES)
    assert is_supported(language) is supported


def test_analyze_recording_takes_reference_text(audio_dir: Path) -> None:
    result = analyze_recording(
        audio_dir / "en_other_voice.flac",
        audio_dir / "en_reference.flac",
        language="en",
        reference_text=EN_TEXT,
    )
    assert result.metrics["units_expected"] == 9
    old_style = analyze_recording(
        audio_dir / "en_other_voice.flac", audio_dir / "en_reference.flac"
    )
    assert old_style.metrics["units_expected"] is None
    assert old_style.segments


def test_request_carries_reference_text() -> None:
    request = AnalysisRequest(
        practice_record_id="rec-1", recording="/a.wav", reference="/b.wav", reference_text="你好"
    )
    assert request.reference_text == "你好"
    assert AnalysisRequest(practice_record_id="rec-2").reference_text is None
    dumped = AnalysisResult.model_validate(
        analyze_recording(
            Path(__file__).resolve().parents[2] / "data" / "audio" / "zh_other_voice.flac",
            Path(__file__).resolve().parents[2] / "data" / "audio" / "zh_reference.flac",
            language="zh-TW",
        ).model_dump(mode="json")
    )
    assert dumped.segments and dumped.advice_language == "zh-TW"


def test_one_changed_tone_does_not_shift_the_other_syllables() -> None:
    # Reference: six level syllables at 0, 4, -2, 3, -1, 2 st; the sample says them in a
    # voice with twice the range and 5 st higher, except the 4th, which falls 6 st instead.
    ref = np.repeat([0.0, 4.0, -2.0, 3.0, -1.0, 2.0], 10)
    sample = 2.0 * ref + 5.0
    sample[30:40] = np.linspace(8.0, -4.0, 10)
    residual = robust_pitch_residual(sample, ref)
    assert residual[:30].max() < 0.3 and residual[40:].max() < 0.3
    assert residual[30:40].mean() > 2.0


def test_pitch_tracking_jumps_are_left_out_of_the_tone_residual() -> None:
    st = np.full(40, np.nan)
    st[5:35] = np.linspace(-2.0, 2.0, 30)
    st[5] = 13.0  # an octave error at the voicing onset
    st[20] = -10.0  # a halved period in the middle
    clean = without_jumps(st)
    assert np.isnan(clean[5]) and np.isnan(clean[20])
    kept = np.isfinite(st) & np.isfinite(clean)
    assert kept.sum() == 28
    np.testing.assert_array_equal(clean[kept], st[kept])  # a 4 st glide is left as it is


def test_a_unit_is_judged_against_the_others_not_itself() -> None:
    # The changed syllable (2.0) spills into its neighbour (1.4): with the pair's own median
    # and MAD the spread widens and hides it; against the other units it stands out.
    rel = [0.9] * 6
    pitch = [0.3, 1.4, 2.0, 0.2, 0.6, 0.3]
    out = judge_units(_measures(rel, pitch), tonal=True)
    assert out[2].code == "pitch_contour"
    assert out[0].code is None and out[3].code is None


def _comparison(pauses: list[float], baseline: float) -> Comparison:
    worst = Span(0.0, 0.25, 0.0)
    extra = [Span(1.0 + i, 1.0 + i + p, p) for i, p in enumerate(pauses)]
    return Comparison(
        warp=1.0,
        cost=0.7,
        worst=worst,
        peak=0.0,
        coverage=1.0,
        missing_start=0.0,
        missing_end=0.0,
        tempo=1.0,
        extra_pauses=extra,
        pause_baseline_s=baseline,
    )


def test_only_a_pause_that_stands_out_is_named() -> None:
    # 0.15-0.35 s gaps between words are no hesitation; 0.8 s is.
    assert _comparison([0.17, 0.3], 0.1).notable_pauses() == []
    assert [p.value for p in _comparison([0.17, 0.8], 0.1).notable_pauses()] == [0.8]
    # ... and a reference that itself leaves 0.5 s between two words raises the bar.
    assert _comparison([0.8], 0.5).notable_pauses() == []
    assert len(_comparison([1.2], 0.5).notable_pauses()) == 1
