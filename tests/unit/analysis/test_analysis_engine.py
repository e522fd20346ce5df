"""End-to-end behaviour of the built-in analyzer on the committed espeak-ng fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from vocalborn_tasks.analysis import AnalysisOptions, BuiltinAnalyzer, analyze_recording
from vocalborn_tasks.models import AnalysisResult

#: File-name suffix of each framing: padded (silence around the speech) and tight (speech
#: from the first to the last sample, digital zeros between words).
FRAMINGS = {"padded": "", "tight": "_tight"}


def _run(
    analyzer: BuiltinAnalyzer, audio_dir: Path, lang: str, name: str, framing: str = "padded"
) -> AnalysisResult:
    prefix = "en" if lang == "en" else "zh"
    suffix = FRAMINGS[framing]
    return analyzer.analyze(
        audio_dir / f"{prefix}_{name}{suffix}.flac",
        audio_dir / f"{prefix}_reference{suffix}.flac",
        language=lang,
    )


@pytest.mark.parametrize("framing", list(FRAMINGS))
@pytest.mark.parametrize("lang", ["en", "zh-TW"])
def test_same_sentence_beats_different(
    analyzer: BuiltinAnalyzer, audio_dir: Path, lang: str, framing: str
) -> None:
    same = _run(analyzer, audio_dir, lang, "other_voice", framing)
    different = _run(analyzer, audio_dir, lang, "different_sentence", framing)
    assert same.pronunciation_accuracy >= different.pronunciation_accuracy + 30
    assert different.level == 5
    assert same.level <= 3


@pytest.mark.parametrize("framing", list(FRAMINGS))
@pytest.mark.parametrize("lang", ["en", "zh-TW"])
def test_half_sentence_is_incomplete(
    analyzer: BuiltinAnalyzer, audio_dir: Path, lang: str, framing: str
) -> None:
    result = _run(analyzer, audio_dir, lang, "truncated_half", framing)
    assert result.completeness_score < 30
    assert result.level >= 3
    assert any(f.code == "missing_end" for f in result.findings)


@pytest.mark.parametrize("framing", list(FRAMINGS))
@pytest.mark.parametrize("lang", ["en", "zh-TW"])
def test_pauses_hurt_fluency(
    analyzer: BuiltinAnalyzer, audio_dir: Path, lang: str, framing: str
) -> None:
    result = _run(analyzer, audio_dir, lang, "pauses", framing)
    assert result.fluency_score < 70
    assert result.rhythm_score < 70
    pauses = [f for f in result.findings if f.code == "extra_pauses"]
    assert pauses
    assert pauses[0].start_s is not None


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_noise_is_unreliable(analyzer: BuiltinAnalyzer, audio_dir: Path, framing: str) -> None:
    result = _run(analyzer, audio_dir, "en", "noise_0db", framing)
    assert not result.reliable
    assert "too_noisy" in result.reliability_issues


@pytest.mark.parametrize("name", ["en_reference.flac", "en_reference_tight.flac"])
def test_identical_is_perfect(analyzer: BuiltinAnalyzer, audio_dir: Path, name: str) -> None:
    ref = audio_dir / name
    result = analyzer.analyze(ref, ref)
    assert result.overall_score >= 95
    assert result.level == 1
    assert result.reliable


def test_traditional_chinese_advice(analyzer: BuiltinAnalyzer, audio_dir: Path) -> None:
    result = _run(analyzer, audio_dir, "zh-TW", "truncated_half")
    text = " ".join(result.improvement_areas + result.suggestions)
    assert "句子" in text
    english = _run(analyzer, audio_dir, "en", "truncated_half")
    assert "sentence" in " ".join(english.improvement_areas)


def test_progress_increases_to_100(analyzer: BuiltinAnalyzer, audio_dir: Path) -> None:
    seen: list[tuple[str, float]] = []
    analyzer.analyze(
        audio_dir / "en_other_voice.flac",
        audio_dir / "en_reference.flac",
        on_progress=lambda step, pct: seen.append((step, pct)),
    )
    percents = [p for _, p in seen]
    assert percents == sorted(percents)
    assert len(set(percents)) == len(percents) >= 5
    assert seen[-1] == ("done", 100.0)


def test_reference_cache_hit(audio_dir: Path) -> None:
    analyzer = BuiltinAnalyzer(AnalysisOptions(reference_cache_size=2))
    ref = audio_dir / "en_reference.flac"
    first = analyzer.analyze(audio_dir / "en_other_voice.flac", ref)
    second = analyzer.analyze(audio_dir / "en_substitution.flac", ref.read_bytes())
    assert first.metrics["reference_cached"] is False
    assert second.metrics["reference_cached"] is True
    info = analyzer.cache_info()
    assert (info.hits, info.misses, info.size) == (1, 1, 1)


def test_bytes_input_and_default_entry_point(audio_dir: Path) -> None:
    result = analyze_recording(
        (audio_dir / "en_other_voice.flac").read_bytes(),
        audio_dir / "en_reference.flac",
        language="en-US",
    )
    assert result.analyzer.name == "vocalborn-builtin"
    assert result.practice_record_id is None
    assert result.model_dump(mode="json")["metrics"]["coverage"] is not None


@pytest.mark.parametrize("lang", ["en", "zh-TW"])
def test_tight_and_padded_framings_agree(
    analyzer: BuiltinAnalyzer, audio_dir: Path, lang: str
) -> None:
    """The same reading scores alike whether or not the files hold silence around it."""
    padded = _run(analyzer, audio_dir, lang, "other_voice", "padded")
    tight = _run(analyzer, audio_dir, lang, "other_voice", "tight")
    assert tight.level == padded.level
    assert abs(tight.pronunciation_accuracy - padded.pronunciation_accuracy) <= 10


def test_results_carry_the_analyzer_version(analyzer: BuiltinAnalyzer, audio_dir: Path) -> None:
    result = _run(analyzer, audio_dir, "en", "other_voice", "tight")
    assert result.analyzer.version == "1.4.0"
