"""Every kind of bad input gives a typed AudioError with a stable code, never a crash."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vocalborn_tasks.analysis import AnalysisOptions, BuiltinAnalyzer
from vocalborn_tasks.analysis.io import load_audio
from vocalborn_tasks.errors import AudioError


def _write(path: Path, data: np.ndarray, rate: int = 16_000, subtype: str = "PCM_16") -> Path:
    sf.write(path, data, rate, subtype=subtype)
    return path


def _code(analyzer: BuiltinAnalyzer, recording: object, reference: object) -> str:
    with pytest.raises(AudioError) as info:
        analyzer.analyze(recording, reference)  # type: ignore[arg-type]
    return info.value.code


@pytest.fixture
def reference(audio_dir: Path) -> Path:
    return audio_dir / "en_reference.flac"


@pytest.mark.parametrize(
    ("fixture", "code"),
    [
        ("silence.wav", "no_speech"),
        ("tiny_10ms.wav", "too_short"),
        ("empty.wav", "empty"),
        ("corrupt_header.wav", "unreadable"),
        ("not_audio.wav", "unreadable"),
    ],
)
def test_committed_bad_files(
    analyzer: BuiltinAnalyzer, audio_dir: Path, reference: Path, fixture: str, code: str
) -> None:
    assert _code(analyzer, audio_dir / fixture, reference) == code


def test_truncated_file_is_error_or_result(
    analyzer: BuiltinAnalyzer, audio_dir: Path, reference: Path
) -> None:
    code: str | None = None
    try:
        result = analyzer.analyze(audio_dir / "truncated_file.wav", reference)
    except AudioError as exc:
        code = exc.code
    if code is not None:
        assert code in {"unreadable", "too_short", "no_speech"}
    else:
        assert 0 <= result.overall_score <= 100


@pytest.mark.parametrize("fixture", ["stereo_44k.wav", "pcm8.wav", "float32.wav"])
def test_formats_are_read(
    analyzer: BuiltinAnalyzer, audio_dir: Path, reference: Path, fixture: str
) -> None:
    result = analyzer.analyze(audio_dir / fixture, reference)
    assert result.pronunciation_accuracy > 50


@pytest.mark.parametrize(
    "fixture", ["tight_stereo_44k.flac", "tight_pcm8.wav", "tight_float32.wav"]
)
def test_tight_formats_are_analysed(
    analyzer: BuiltinAnalyzer, audio_dir: Path, fixture: str
) -> None:
    """Issue 11: a tight clip in another format was refused as no_speech."""
    result = analyzer.analyze(audio_dir / fixture, audio_dir / "en_reference_tight.flac")
    assert result.pronunciation_accuracy > 50
    assert result.level <= 2


@pytest.mark.parametrize("subtype", ["FLOAT", "PCM_U8", "PCM_24"])
@pytest.mark.parametrize("rate", [16_000, 44_100, 48_000])
@pytest.mark.parametrize("stereo", [False, True])
def test_every_tight_fixture_format_is_analysed(
    analyzer: BuiltinAnalyzer,
    audio_dir: Path,
    tmp_path: Path,
    subtype: str,
    rate: int,
    stereo: bool,
) -> None:
    """The committed tight attempt, rewritten in each format, is analysed like the original."""
    from scipy.signal import resample_poly

    data, _ = sf.read(audio_dir / "zh_other_voice_tight.flac", dtype="float64")
    if rate != 16_000:
        data = resample_poly(data, rate // 100, 160)
    if stereo:
        data = np.stack([data, 0.8 * data], axis=1)
    path = _write(tmp_path / "converted.wav", np.clip(data, -1.0, 1.0), rate, subtype)
    result = analyzer.analyze(path, audio_dir / "zh_reference_tight.flac", language="zh-TW")
    assert result.level <= 2


def test_tight_clipped_is_unreliable(analyzer: BuiltinAnalyzer, audio_dir: Path) -> None:
    """Issue 11: the tight clip x8, clipped, was refused; it must be analysed as unreliable."""
    result = analyzer.analyze(
        audio_dir / "tight_clipped.wav", audio_dir / "en_reference_tight.flac"
    )
    assert not result.reliable
    assert "clipped" in result.reliability_issues


def test_clipped_is_unreliable(analyzer: BuiltinAnalyzer, audio_dir: Path, reference: Path) -> None:
    result = analyzer.analyze(audio_dir / "clipped.wav", reference)
    assert not result.reliable
    assert "clipped" in result.reliability_issues


def test_synthesised_bad_files(analyzer: BuiltinAnalyzer, reference: Path, tmp_path: Path) -> None:
    (tmp_path / "zero.wav").write_bytes(b"")
    assert _code(analyzer, tmp_path / "zero.wav", reference) == "empty"
    assert _code(analyzer, b"", reference) == "empty"
    assert _code(analyzer, b"RIFF....WAVEfmt garbage", reference) == "unreadable"
    assert _code(analyzer, tmp_path / "missing.wav", reference) == "unreadable"
    header_only = _write(tmp_path / "header.wav", np.zeros(0))
    assert _code(analyzer, header_only, reference) == "empty"
    nan = _write(tmp_path / "nan.wav", np.full(16_000, np.nan), subtype="FLOAT")
    assert _code(analyzer, nan, reference) == "unreadable"
    rng = np.random.default_rng(0)
    noise = _write(tmp_path / "noise.wav", 0.1 * rng.standard_normal(32_000))
    assert _code(analyzer, noise, reference) == "no_speech"
    low_rate = _write(tmp_path / "low.wav", np.zeros(2_000), rate=1_000)
    assert _code(analyzer, low_rate, reference) == "unsupported_format"


def test_bad_reference(analyzer: BuiltinAnalyzer, audio_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "zero.wav").write_bytes(b"")
    code = _code(analyzer, audio_dir / "en_other_voice.flac", tmp_path / "zero.wav")
    assert code == "reference_unusable"


def _ten_minutes(path: Path) -> Path:
    rate = 16_000
    t = np.arange(rate) / rate
    second = (0.3 * np.sin(2 * np.pi * 150 * t) * (t < 0.7)).astype(np.float32)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as f:
        for _ in range(600):
            f.write(second)
    return path


def test_ten_minute_file_refused(
    analyzer: BuiltinAnalyzer, reference: Path, tmp_path: Path
) -> None:
    long = _ten_minutes(tmp_path / "long.wav")
    tracemalloc.start()
    try:
        assert _code(analyzer, long, reference) == "too_long"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_long_file_is_capped_not_read_whole(tmp_path: Path) -> None:
    long = _ten_minutes(tmp_path / "long.wav")
    tracemalloc.start()
    try:
        audio = load_audio(long, max_duration_s=60.0, min_duration_s=0.3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert audio.truncated
    assert audio.duration_s == pytest.approx(60.0)
    assert peak < 60 * 2**20


def test_long_pair_is_capped(tmp_path: Path) -> None:
    long = _ten_minutes(tmp_path / "long.wav")
    options = AnalysisOptions(max_duration_s=8.0)
    result = BuiltinAnalyzer(options).analyze(long, long)
    assert result.metrics["truncated"] is True
    assert result.metrics["duration_s"] == pytest.approx(8.0)
