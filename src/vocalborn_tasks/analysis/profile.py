"""Everything measured on one recording alone: the part of the work a reference's cache saves.

A :class:`Profile` is immutable and holds only arrays and floats, so a cached reference profile
can be shared between threads and calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from vocalborn_tasks.errors import AudioError

from .features import HOP, N_FFT, mel_power, runs, spectra, speech_mask
from .io import SAMPLE_RATE, LoadedAudio
from .pitch import PitchTrack, semitones, track_pitch, without_jumps

__all__ = ["FRAME_S", "Profile", "build_profile", "normalise"]

FRAME_S = HOP / SAMPLE_RATE
#: Internal silences at least this long are pauses: dropped before alignment, counted for fluency.
PAUSE_FRAMES = 15
#: Speaker warps tried for the sample (VTLN); the reference is kept at 1.0.
WARPS: tuple[float, ...] = (0.80, 0.86, 0.93, 1.0, 1.07, 1.15, 1.24)
_MIN_SPEECH_FRAMES = 15
#: Non-speech frames (0.5 s) from which their median measures the noise.
NOISE_MEDIAN_FRAMES = 50


@dataclass(frozen=True, slots=True)
class Profile:
    """Measurements of one recording on the 10 ms frame grid.

    Attributes:
        duration_s: analysed duration.
        source_duration_s: duration of the whole file, according to its header.
        source_rate: the file's own sample rate (its bandwidth is at most half of it).
        speech: speech mask per frame.
        kept: frames kept for alignment (speech, plus gaps shorter than a pause).
        mel: per-warp mel-band power of the kept frames (``warp -> (kept, bands)``).
        noise_mel: per-warp mel-band power of the noise estimate.
        speech_power: mean mel power of the kept frames with the noise taken out.
        pitch: pitch track over all frames.
        st: pitch in semitones against the speaker's median (``nan`` unvoiced).
        st_units: the same from :attr:`.PitchTrack.guided` (fewer gaps in a rough voice),
            tracking jumps left out (:func:`.pitch.without_jumps`), for the units' tone
            comparison only; computed once per profile, so a cached reference's is reused.
        snr_db, hnr_db, entropy, clipped_fraction, level_db: clarity measurements.
        truncated: the file was longer than the analysis cap.
    """

    duration_s: float
    source_duration_s: float
    source_rate: int
    speech: NDArray[np.bool_]
    kept: NDArray[np.intp]
    mel: dict[float, NDArray[np.float64]]
    noise_mel: dict[float, NDArray[np.float64]]
    speech_power: float
    pitch: PitchTrack
    st: NDArray[np.float64]
    st_units: NDArray[np.float64]
    snr_db: float
    hnr_db: float
    entropy: float
    clipped_fraction: float
    level_db: float
    truncated: bool

    @property
    def first_speech(self) -> int:
        """First speech frame."""
        return int(self.kept[0])

    @property
    def last_speech(self) -> int:
        """Last speech frame."""
        return int(self.kept[-1])

    @property
    def active_s(self) -> float:
        """Time from the first to the last speech frame, pauses included."""
        return (self.last_speech - self.first_speech + 1) * FRAME_S

    def pauses(self) -> list[tuple[int, int]]:
        """Internal pauses as ``(start, stop)`` frame ranges."""
        inner = ~self.speech[self.first_speech : self.last_speech + 1]
        off = self.first_speech
        return [(a + off, b + off) for a, b in runs(inner) if b - a >= PAUSE_FRAMES]


def normalise(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Cepstral mean and variance normalisation over the given frames."""
    mu = x.mean(axis=0, keepdims=True)
    sd = x.std(axis=0, keepdims=True)
    return np.asarray((x - mu) / np.maximum(sd, 1e-6), dtype=np.float64)


def _entropy(power: NDArray[np.float64]) -> float:
    """Mean normalised spectral entropy (0 = one pure tone, 1 = white noise)."""
    if power.shape[0] == 0:
        return float("nan")
    p = power / np.maximum(power.sum(axis=1, keepdims=True), 1e-20)
    h = -(p * np.log(np.maximum(p, 1e-20))).sum(axis=1) / np.log(power.shape[1])
    return float(np.median(h))


def build_profile(audio: LoadedAudio, *, warps: tuple[float, ...] = (1.0,)) -> Profile:
    """Measure one recording.

    Raises:
        AudioError: ``no_speech`` when too little speech is found to compare.
    """
    x = audio.samples
    sp = spectra(x)
    speech = speech_mask(sp)
    if int(speech.sum()) < _MIN_SPEECH_FRAMES:
        raise AudioError("no speech was found in the recording", code="no_speech")
    idx = np.flatnonzero(speech)
    first, last = int(idx[0]), int(idx[-1])
    keep = np.zeros_like(speech)
    keep[first : last + 1] = True
    inner = ~speech[first : last + 1]
    for a, b in runs(inner):
        if b - a >= PAUSE_FRAMES:
            keep[first + a : first + b] = False
    kept = np.flatnonzero(keep)

    mel: dict[float, NDArray[np.float64]] = {}
    noise_mel: dict[float, NDArray[np.float64]] = {}
    for w in sorted({1.0, *warps}):
        full, noise_w = mel_power(sp, warp=w)
        mel[w] = full[kept]
        noise_mel[w] = noise_w
    speech_power = max(
        float(mel[1.0].sum(axis=1).mean() - noise_mel[1.0].sum()),
        1e-12,
    )

    pitch = track_pitch(x, speech)
    level = float(np.percentile(sp.energy_db[speech], 90))
    noise = max(sp.noise_db, level - 80.0)
    quiet = sp.energy_db[~speech]
    if quiet.size >= 10:
        # In a tightly trimmed clip the few non-speech frames are mostly speech edges (weak
        # consonants, closures) about 20 dB under the vowels: their median would read a clean
        # text-to-speech clip as 18 dB SNR. Below NOISE_MEDIAN_FRAMES the quietest of them
        # (5th percentile) is the noise: a room's noise fills the gaps between words, speech
        # edges sit above it.
        percentile = 50 if quiet.size >= NOISE_MEDIAN_FRAMES else 5
        noise = max(float(np.percentile(quiet, percentile)), level - 80.0)
    band_hi = int(7000 * N_FFT / SAMPLE_RATE)
    return Profile(
        duration_s=audio.duration_s,
        source_duration_s=audio.meta.duration_s,
        source_rate=audio.meta.sample_rate,
        speech=speech,
        kept=kept,
        mel=mel,
        noise_mel=noise_mel,
        speech_power=speech_power,
        pitch=pitch,
        st=semitones(pitch.f0),
        st_units=without_jumps(semitones(pitch.guided)),
        snr_db=level - noise,
        hnr_db=pitch.hnr_db(),
        entropy=_entropy(sp.power[speech][:, 3:band_hi]),
        clipped_fraction=audio.clipped_fraction,
        level_db=level,
        truncated=audio.truncated,
    )
