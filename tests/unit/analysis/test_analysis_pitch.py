"""The YIN pitch tracker agrees with Praat (parselmouth) on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# praat-parselmouth is a dev dependency: the comparison with Praat must run, never skip.
import parselmouth
import pytest
from scipy.signal import lfilter

from vocalborn_tasks.analysis.features import spectra, speech_mask
from vocalborn_tasks.analysis.io import SAMPLE_RATE, load_audio
from vocalborn_tasks.analysis.pitch import semitones, track_pitch

FILES = ["en_reference.flac", "en_other_voice.flac", "zh_reference.flac", "zh_other_voice.flac"]


def _errors(path: Path) -> np.ndarray:
    x = load_audio(path, max_duration_s=60.0, min_duration_s=0.1).samples
    ours = track_pitch(x, speech_mask(spectra(x)))
    praat = parselmouth.Sound(x, sampling_frequency=SAMPLE_RATE).to_pitch(
        time_step=0.01, pitch_floor=75.0, pitch_ceiling=600.0
    )
    times = praat.xs()
    f_praat = praat.selected_array["frequency"]
    idx = np.clip(np.round(times / 0.01).astype(int), 0, ours.f0.size - 1)
    f_ours = ours.f0[idx]
    both = (f_praat > 0) & np.isfinite(f_ours)
    assert both.sum() > 50
    return np.abs(12.0 * np.log2(f_ours[both] / f_praat[both]))


def test_pitch_agrees_with_praat(audio_dir: Path) -> None:
    errors = np.concatenate([_errors(audio_dir / name) for name in FILES])
    assert np.median(errors) <= 0.1
    assert np.mean(errors > 2.0) < 0.02


def test_pure_tone() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    x = 0.5 * np.sin(2 * np.pi * 220.0 * t)
    track = track_pitch(x)
    voiced = track.f0[np.isfinite(track.f0)]
    assert voiced.size > 80
    assert np.median(voiced) == pytest.approx(220.0, rel=0.002)
    assert np.nanmax(np.abs(semitones(track.f0)[5:-5])) < 0.05


def test_guided_pass_keeps_the_strict_track_and_fills_a_rough_voice() -> None:
    # A rough voice: every other glottal period 10 % longer and 30 % weaker (espeak-ng's
    # "roughness", a dysphonic patient), through two resonances. YIN's strict threshold
    # leaves some of it unvoiced; the pass guided by the speaker's median fills them.
    n = int(1.5 * SAMPLE_RATE)
    pulses = np.zeros(n)
    pos, k = 0.0, 0
    while pos < n - 1:
        pulses[int(pos)] = 0.7 if k % 2 else 1.0
        pos += SAMPLE_RATE / 110 * (1.1 if k % 2 else 0.9)
        k += 1
    voice = lfilter([1.0], [1.0, -0.5, 0.3], lfilter([1.0], [1.0, -1.6, 0.8], pulses))
    track = track_pitch(voice)
    strict = np.isfinite(track.f0)
    guided = np.isfinite(track.guided)
    assert (guided | ~strict).all()  # every strictly voiced frame stays voiced
    assert guided.sum() > strict.sum() + 5
    assert 90 < float(np.nanmedian(track.guided)) < 140
