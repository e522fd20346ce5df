"""Speech detection holds over the framings real recordings come in (issue 11).

A property over framings, not one corpus: the same speech is placed in files that are 0 % to
90 % non-speech, the non-speech being digital zeros or room noise (which also lies under the
speech), with and without a DC offset, at peak levels from -40 dBFS to heavily clipped. The
speech is both synthetic (harmonic syllables separated by digital zeros, as text-to-speech
writes them) and the committed espeak-ng fixtures in their tight framing.

What must hold in every framing:

* the speech is found: at least 90 % of the frames an oracle calls speech (frames of the clean
  clip within 30 dB of its loudest, computed before any framing) are in the mask;
* the added non-speech stays non-speech: digital silence never, room noise in at most 12 % of
  its frames (a few frames next to the speech are excluded: gap closing may bridge them);
* the whole engine analyses the framed clip against the tight reference without an error.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

from vocalborn_tasks.analysis import AnalysisOptions, BuiltinAnalyzer
from vocalborn_tasks.analysis.features import HOP, band_level_db, spectra, speech_mask

RATE = 16_000
NON_SPEECH_SHARES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
BACKGROUNDS = ("digital", "room")
DC_OFFSETS = (0.0, 0.05)
#: Peak level in dBFS, or "clipped": the -1 dBFS signal amplified x8 and clipped.
LEVELS: tuple[float | str, ...] = (-40.0, -20.0, -1.0, "clipped")
#: Room noise under the speech, in dB below the clip's active speech power.
ROOM_SNR_DB = 25.0
#: Frames next to the speech that may join it (gap closing bridges up to 8 frames).
EDGE_FRAMES = 10
MIN_RECALL = 0.90
#: Room noise here is mostly low-frequency and wanders by ~8 dB from frame to frame, so a
#: file that is 70-90 % such noise keeps a few bursts above any threshold that still finds
#: quiet speech; at most 12 % of its frames may end up as speech (measured worst: 10.2 %; the
#: 1.1.0 detector: up to 31 %, and it missed the speech outright in 128 of these 672 framings).
MAX_NOISE_SHARE = 0.12

FloatArray = NDArray[np.float64]
AUDIO = Path(__file__).resolve().parents[2] / "data" / "audio"
TIGHT_FIXTURES = (
    "en_reference_tight.flac",
    "en_other_voice_tight.flac",
    "zh_reference_tight.flac",
    "zh_other_voice_tight.flac",
)


def synthetic_speech(seed: int) -> FloatArray:
    """Four to six voiced "syllables" (harmonics of a gliding f0 under a smooth envelope)
    with digital zeros between them, as text-to-speech output has; starts and ends on a
    syllable (tight)."""
    rng = np.random.default_rng(seed)
    parts: list[FloatArray] = []
    n_syllables = int(rng.integers(4, 7))
    for k in range(n_syllables):
        dur = float(rng.uniform(0.15, 0.35))
        t = np.arange(int(dur * RATE)) / RATE
        f0 = float(rng.uniform(90, 260)) * (1 + 0.15 * np.sin(np.pi * t / dur))
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        voiced = sum(np.sin(h * phase) / h for h in range(1, 12))
        envelope = np.sin(np.pi * t / dur) ** 0.6
        parts.append(0.3 * envelope * voiced)
        if k < n_syllables - 1:
            parts.append(np.zeros(int(float(rng.uniform(0.03, 0.12)) * RATE)))
    return np.concatenate(parts)


def fixture_speech(name: str) -> FloatArray:
    """A committed tight fixture (16 kHz mono)."""
    data, rate = sf.read(AUDIO / name, dtype="float64")
    assert rate == RATE
    return np.asarray(data, dtype=np.float64)


def oracle_frames(clean: FloatArray) -> NDArray[np.bool_]:
    """Frames of the clean, tight clip within 30 dB of its loudest frame (speech-band level)."""
    level = band_level_db(spectra(clean))
    return np.asarray(level > level.max() - 30.0)


def room_noise(n: int, power: float, seed: int) -> FloatArray:
    """Low-pass (room-like) noise plus a little white noise, at the given mean power."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(n)
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(400) / 400, mode="same")
    noise = white / white.std() + 2.0 * brown / max(brown.std(), 1e-12)
    return np.asarray(noise / noise.std() * np.sqrt(power), dtype=np.float64)


def frame(
    clean: FloatArray,
    share: float,
    background: str,
    dc: float,
    level: float | str,
    seed: int = 0,
) -> tuple[FloatArray, int]:
    """Place ``clean`` in a file ``share`` non-speech; returns the file and the speech start.

    Quantised to 16 bits, like every recording the engine reads from a PCM file.
    """
    pad = round(clean.size * share / (1.0 - share))
    before = pad // 2
    x = np.concatenate([np.zeros(before), clean, np.zeros(pad - before)])
    peak = float(np.abs(clean).max())
    active = clean[np.abs(clean) > 0.05 * peak]
    if background == "room":
        power = float(np.mean(active**2)) / 10 ** (ROOM_SNR_DB / 10)
        x = x + room_noise(x.size, power, seed)
    target_db = -1.0 if level == "clipped" else float(level)
    x = x * (10 ** (target_db / 20) / peak)
    if level == "clipped":
        x = x * 8.0
    x = np.clip(x + dc, -1.0, 1.0)
    return np.round(x * 32767.0) / 32767.0, before


def framings() -> list[tuple[float, str, float, float | str]]:
    """Every combination of non-speech share, background, DC offset and level."""
    return list(itertools.product(NON_SPEECH_SHARES, BACKGROUNDS, DC_OFFSETS, LEVELS))


def check_mask(
    clean: FloatArray, share: float, background: str, dc: float, level: float | str
) -> None:
    x, start = frame(clean, share, background, dc, level)
    mask = speech_mask(spectra(x))
    oracle = oracle_frames(clean)
    first = round(start / HOP)
    inside = mask[first : first + oracle.size]
    recall = float(inside[oracle[: inside.size]].mean())
    assert recall >= MIN_RECALL, f"found {recall:.0%} of the speech frames"
    outside = np.concatenate(
        [mask[: max(0, first - EDGE_FRAMES)], mask[first + oracle.size + EDGE_FRAMES :]]
    )
    if outside.size:
        limit = 0.0 if background == "digital" else MAX_NOISE_SHARE
        assert float(outside.mean()) <= limit, f"{outside.mean():.0%} of non-speech marked speech"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_synthetic_speech_is_found_in_every_framing(seed: int) -> None:
    clean = synthetic_speech(seed)
    for share, background, dc, level in framings():
        check_mask(clean, share, background, dc, level)


@pytest.mark.parametrize("name", TIGHT_FIXTURES)
def test_real_speech_is_found_in_every_framing(name: str) -> None:
    clean = fixture_speech(name)
    for share, background, dc, level in framings():
        check_mask(clean, share, background, dc, level)


@pytest.mark.parametrize(
    ("share", "background", "dc", "level"),
    [
        (0.0, "digital", 0.0, -1.0),
        (0.0, "room", 0.05, -40.0),
        (0.9, "room", 0.0, -20.0),
        (0.9, "digital", 0.05, -40.0),
        (0.5, "room", 0.05, "clipped"),
        (0.3, "digital", 0.0, "clipped"),
    ],
)
@pytest.mark.parametrize("lang", ["en", "zh-TW"])
def test_engine_analyses_every_framing(
    tmp_path: Path,
    lang: str,
    share: float,
    background: str,
    dc: float,
    level: float | str,
) -> None:
    prefix = "en" if lang == "en" else "zh"
    x, _ = frame(fixture_speech(f"{prefix}_other_voice_tight.flac"), share, background, dc, level)
    path = tmp_path / "framed.wav"
    sf.write(path, x, RATE, subtype="PCM_16")
    reference = AUDIO / f"{prefix}_reference_tight.flac"
    # A file 90 % silence is ten times its speech: past the default too_long limit, which is
    # a separate policy from speech detection.
    analyzer = BuiltinAnalyzer(AnalysisOptions(max_length_ratio=12.0))
    result = analyzer.analyze(path, reference, language=lang)
    assert result.completeness_score >= 80
    if level == "clipped":
        # Clipping x8 flattens the spectrum, so pronunciation is not trustworthy: the
        # result says so instead of refusing the file.
        assert not result.reliable
        assert "clipped" in result.reliability_issues
    else:
        assert result.pronunciation_accuracy >= 60
        assert result.reliable


def test_silence_and_noise_alone_are_not_speech() -> None:
    """Digital silence, pure DC, 16-bit dither and white noise hold no speech.

    (Wandering low-frequency room noise alone is not reliably refused: see "Known
    weaknesses" in docs/analysis.md.)
    """
    rng = np.random.default_rng(7)
    for x in (
        np.zeros(3 * RATE),
        np.full(3 * RATE, 0.1),
        np.round(0.5 * rng.standard_normal(3 * RATE)) / 32768.0,
        0.01 * rng.standard_normal(3 * RATE),
    ):
        assert int(speech_mask(spectra(x)).sum()) < 15
