"""Frame-level measurements: spectra, noise floor, speech/pause detection, cepstral features.

All functions are pure and vectorised over frames (10 ms hop, 25 ms window at 16 kHz).

Speaker normalisation happens in two places: cepstral mean and variance normalisation removes
the channel and the overall spectral tilt of a voice, and :func:`cepstra` accepts a frequency
warp factor (vocal-tract-length normalisation, VTLN) so a short vocal tract (a child, a woman)
can be compared with a long one (a man) by stretching the mel axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy.fft import dct, rfft
from scipy.ndimage import binary_closing, binary_opening

from .io import SAMPLE_RATE

__all__ = [
    "FRAME_LEN",
    "HOP",
    "N_FFT",
    "Spectra",
    "band_level_db",
    "bands_below",
    "broad_band_energies",
    "cepstra",
    "frame_signal",
    "frame_view",
    "mel_edges",
    "mel_power",
    "runs",
    "spectra",
    "speech_mask",
    "speech_threshold",
]

HOP = 160  # 10 ms
FRAME_LEN = 400  # 25 ms
N_FFT = 512
N_MELS = 32
N_CEPS = 8
#: Upper edges (Hz) of the broad bands whose log energies join the cepstra: voicing and F1,
#: F2, F3 and the fricative/burst region. Their contour over time carries the manner of a
#: consonant (a stop's closure and burst, a fricative's noise, a nasal's low-band murmur),
#: which the cepstra, normalised frame by frame in shape only, see poorly.
BROAD_BAND_EDGES_HZ = (1000.0, 2700.0, 4800.0, 7000.0)
_EPS = 1e-10
#: Frames this far below the loud end of the speech band are digital silence (or a fade's
#: tail): never speech, and left out of the noise estimate.
DIGITAL_SILENCE_DB = 70.0
#: Frames within this of the noise floor estimate its frame-to-frame wander (their median's
#: rise above the floor); the speech threshold sits NOISE_WANDER_FACTOR wanders above it.
NEAR_FLOOR_DB = 6.0
NOISE_WANDER_FACTOR = 2.0
#: In a file whose loud end is more than SPEECH_RANGE_DB above its floor (speech, not just
#: noise), the speech threshold never sits higher than MAX_BELOW_LOUD_DB under the loud end.
SPEECH_RANGE_DB = 25.0
MAX_BELOW_LOUD_DB = 15.0
#: Band level (dB re full scale) at or below which a frame is silence, whatever the file:
#: 16-bit quantisation noise lies below it, speech at -40 dBFS well above.
SILENCE_DB = -95.0
#: Runs of speech shorter than ISLAND_FRAMES with no longer run within ISLAND_GAP_FRAMES are
#: noise bursts, not speech (see _drop_islands).
ISLAND_FRAMES = 20
ISLAND_GAP_FRAMES = 50
#: A run that never rises this far (dB) over the speech threshold holds no vowel.
FAINT_RUN_DB = 5.0
#: Frames at each end left out of the noise estimate (their window is partly padding).
EDGE_FRAMES = 2
#: Fewer frames than this above digital silence: nothing to detect speech in.
MIN_LIVE_FRAMES = 10
_FLOOR_DB = -100.0


def frame_view(
    x: NDArray[np.float64], frame_len: int, hop: int, *, edge: bool = False
) -> NDArray[np.float64]:
    """Frames of ``frame_len`` samples every ``hop`` samples, centred on ``k * hop``.

    The signal is padded by half a frame on both sides so frame ``k`` is centred at
    ``k * hop / SAMPLE_RATE`` seconds, the same convention Praat uses for its time axis.
    The padding is zeros, or with ``edge`` the first and last sample repeated: a file with a
    DC offset (or one cut mid-word) then has no step at its ends for a spectrum to see.
    Returns a read-only strided view of the padded copy: index it to get the frames you need.
    """
    half = frame_len // 2
    padded = np.pad(x, (half, half + frame_len), mode="edge" if edge else "constant")
    n = 1 + x.size // hop
    view = np.lib.stride_tricks.sliding_window_view(padded, frame_len)[::hop]
    return view[:n]


def frame_signal(x: NDArray[np.float64], frame_len: int, hop: int) -> NDArray[np.float64]:
    """:func:`frame_view` as a contiguous copy."""
    return np.ascontiguousarray(frame_view(x, frame_len, hop))


@dataclass(frozen=True, slots=True)
class Spectra:
    """Power spectra and per-frame energies of one recording.

    Attributes:
        power: ``(frames, N_FFT // 2 + 1)`` power spectrum (Hann window).
        energy_db: frame energy in dB relative to full scale.
        noise_db: estimated noise floor of the recording in dB (low percentile of frame energy).
        noise_power: ``(N_FFT // 2 + 1,)`` estimated noise power spectrum.
    """

    power: NDArray[np.float64]
    energy_db: NDArray[np.float64]
    noise_db: float
    noise_power: NDArray[np.float64]

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.power.shape[0])


@lru_cache(maxsize=1)
def _window() -> NDArray[np.float64]:
    return np.hanning(FRAME_LEN + 2)[1:-1]


def spectra(x: NDArray[np.float64]) -> Spectra:
    """Power spectra, frame energies and a noise estimate for a 16 kHz signal.

    The noise floor is the 10th percentile of frame energy; the noise spectrum is the mean
    spectrum of the quietest fifth of the frames. Both stand for the noise when the recording
    has some pause; in a tightly trimmed clip they are the gaps between words (digital zeros)
    and the weakest speech, which only adds a little to the reference in noise compensation.
    Speech detection does not rely on them (see :func:`speech_threshold`).
    """
    frames = frame_view(x, FRAME_LEN, HOP, edge=True).astype(np.float32)
    frames -= frames.mean(axis=1, keepdims=True)
    frames *= _window().astype(np.float32)
    spec = rfft(frames, n=N_FFT, axis=1)
    power = (spec.real**2 + spec.imag**2).astype(np.float64)
    power *= 2.0 / float(np.sum(_window() ** 2) * N_FFT) * N_FFT / FRAME_LEN
    energy = power.sum(axis=1) / (N_FFT // 2 + 1)
    energy_db = 10.0 * np.log10(energy + _EPS)
    energy_db = np.maximum(energy_db, _FLOOR_DB)
    noise_db = float(np.percentile(energy_db, 10))
    quiet = energy_db <= np.percentile(energy_db, 20)
    noise_power = power[quiet].mean(axis=0) if quiet.any() else np.zeros(power.shape[1])
    return Spectra(power=power, energy_db=energy_db, noise_db=noise_db, noise_power=noise_power)


def runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``(start, stop)`` index pairs of the runs of ``True`` in ``mask``."""
    if mask.size == 0:
        return []
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def band_level_db(sp: Spectra) -> NDArray[np.float64]:
    """Per-frame energy (dB) in the band of voiced speech, 100-1500 Hz.

    White or pink noise leaves the most speech-to-noise ratio there, and a DC offset or mains
    hum below 100 Hz does not reach it.
    """
    lo, hi = int(100 * N_FFT / SAMPLE_RATE), int(1500 * N_FFT / SAMPLE_RATE)
    band = sp.power[:, lo:hi].sum(axis=1) / (hi - lo)
    return np.asarray(np.maximum(10.0 * np.log10(band + _EPS), _FLOOR_DB), dtype=np.float64)


def speech_threshold(band_db: NDArray[np.float64]) -> float:
    """The band level (dB) above which a frame counts as speech.

    The threshold must not depend on the file holding any silence: a tightly trimmed clip, a
    text-to-speech reference or an app that starts recording on the first word has few or no
    non-speech frames, and what it has may be exact digital zeros. So:

    * digital silence (at or below ``SILENCE_DB``, or ``DIGITAL_SILENCE_DB`` under the loud
      end) is never speech and is left out of the noise estimate: it says nothing about the
      noise, and a few such frames once pulled the old spread estimate down by 100 dB;
    * the noise floor is the 1st percentile of the remaining frames, an upper bound on the
      noise: the room noise when the file has even a few frames of it, otherwise the weakest
      speech (then the threshold is only conservative about the weakest frames);
    * the margin above the floor is twice the wander of the frames *near* the floor
      (within ``NEAR_FLOOR_DB``), so stationary noise alone never reads as speech, or a
      quarter of the floor-to-loud range when that is more;
    * in a file with speech-like dynamics the threshold stays ``MAX_BELOW_LOUD_DB`` under the
      loud end, so the vowels and most consonants are speech whatever the floor estimate.
    """
    # The first and last frames are half padding: they would drag the 1st percentile down.
    core = band_db[EDGE_FRAMES:-EDGE_FRAMES] if band_db.size > 10 * EDGE_FRAMES else band_db
    loud = float(np.percentile(core, 95))
    live = core[core > max(SILENCE_DB, loud - DIGITAL_SILENCE_DB)]
    if live.size < MIN_LIVE_FRAMES:
        return max(loud, SILENCE_DB) + 1.0
    floor = max(float(np.percentile(live, 1)), loud - 55.0)
    near = live[live <= floor + NEAR_FLOOR_DB]
    wander = float(np.percentile(near, 50)) - floor if near.size else 0.0
    threshold = floor + max(2.0, NOISE_WANDER_FACTOR * wander, 0.25 * (loud - floor))
    if loud - floor > SPEECH_RANGE_DB:
        threshold = min(threshold, loud - MAX_BELOW_LOUD_DB)
    return max(threshold, SILENCE_DB)


def speech_mask(sp: Spectra, *, min_gap_frames: int = 8) -> NDArray[np.bool_]:
    """Frames that hold speech.

    A frame is speech when its energy in the band of voiced speech rises above
    :func:`speech_threshold`, which holds whether the file is 0 % or 90 % silence, digital
    or noisy, quiet or clipped. Gaps shorter than ``min_gap_frames`` are filled (stop
    closures are not pauses) and blips shorter than 40 ms are dropped.
    """
    band_db = band_level_db(sp)
    threshold = speech_threshold(band_db)
    mask = band_db > threshold
    mask = binary_closing(mask, structure=np.ones(min_gap_frames, dtype=bool))
    mask = binary_opening(mask, structure=np.ones(4, dtype=bool))
    mask = _drop_faint_runs(np.asarray(mask, dtype=bool), band_db, threshold)
    return _drop_islands(mask)


def _drop_faint_runs(
    mask: NDArray[np.bool_], band_db: NDArray[np.float64], threshold: float
) -> NDArray[np.bool_]:
    """Drop runs that never rise ``FAINT_RUN_DB`` over the threshold, when louder runs exist.

    Speech carries vowels: every run of it peaks well over the threshold (the espeak-ng
    fixtures' runs peak 15-22 dB over it, in every framing of the speech detection tests). A
    wandering room noise crosses the threshold in bursts that peak a dB or two over it, and a
    burst of 200 ms or more next to the speech is neither short nor isolated, so
    :func:`_drop_islands` keeps it. A file whose every run is faint keeps them all (quiet speech
    alone is still speech; the clarity score says it is faint).
    """
    spans = runs(mask)
    peaks = [float(band_db[a:b].max()) for a, b in spans]
    if not peaks or max(peaks) < threshold + FAINT_RUN_DB:
        return mask
    out = mask.copy()
    for (a, b), peak in zip(spans, peaks, strict=True):
        if peak < threshold + FAINT_RUN_DB:
            out[a:b] = False
    return out


def _drop_islands(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Drop short runs far from any longer run of speech.

    A wandering room noise in a mostly silent file leaves bursts of 40-180 ms above any
    threshold that still finds quiet speech; speech itself comes in runs of words. A run
    shorter than ``ISLAND_FRAMES`` with no run of at least that length within
    ``ISLAND_GAP_FRAMES`` is dropped; when no run is that long (one short word), nothing is.
    """
    spans = runs(mask)
    long_spans = [(a, b) for a, b in spans if b - a >= ISLAND_FRAMES]
    if not long_spans:
        return mask
    out = mask.copy()
    for a, b in spans:
        if b - a >= ISLAND_FRAMES:
            continue
        near = any(
            a - lb < ISLAND_GAP_FRAMES and la - b < ISLAND_GAP_FRAMES for la, lb in long_spans
        )
        if not near:
            out[a:b] = False
    return out


def mel_edges() -> NDArray[np.float64]:
    """The ``N_MELS + 2`` band edges in Hz (100 Hz - 7 kHz, mel-spaced); band k spans
    ``edges[k]`` to ``edges[k + 2]``."""

    def mel(f: float) -> float:
        return float(2595.0 * np.log10(1.0 + f / 700.0))

    m = np.linspace(mel(100.0), mel(7000.0), N_MELS + 2)
    return np.asarray(700.0 * (10.0 ** (m / 2595.0) - 1.0), dtype=np.float64)


def bands_below(limit_hz: float) -> int:
    """How many mel bands lie entirely below ``limit_hz`` (all of them for wide-band audio)."""
    return max(8, int(np.sum(mel_edges()[2:] <= limit_hz)))


@lru_cache(maxsize=16)
def _mel_matrix(warp: float) -> NDArray[np.float64]:
    """Triangular mel filters (100 Hz - 7 kHz) on a frequency axis scaled by ``warp``."""
    edges = mel_edges()
    freqs = np.arange(N_FFT // 2 + 1) * SAMPLE_RATE / N_FFT * warp
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), _EPS)
    return weights


def mel_power(sp: Spectra, *, warp: float = 1.0) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mel-band power of every frame and of the noise estimate, on an axis warped by ``warp``.

    ``warp`` is the VTLN factor: values below 1 map a higher-formant voice (a woman, a child)
    onto a lower one.
    """
    matrix = _mel_matrix(warp)
    return sp.power @ matrix.T, sp.noise_power @ matrix.T


def cepstra(mel: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mel cepstra c1..c12 with deltas from mel-band powers (not yet normalised).

    The log is floored 70 dB below the loudest band so digital silence does not dominate.

    Returns:
        ``(frames, 24)`` features.
    """
    peak = float(mel.max()) + _EPS
    log_mel = np.log(np.maximum(mel, peak * 1e-7))
    ceps = dct(log_mel, type=2, norm="ortho", axis=1)[:, 1:N_CEPS]
    delta = np.zeros_like(ceps)
    if ceps.shape[0] > 4:
        delta[2:-2] = (2 * (ceps[4:] - ceps[:-4]) + (ceps[3:-1] - ceps[1:-3])) / 10.0
    return np.concatenate([ceps, delta], axis=1)


@lru_cache(maxsize=N_MELS + 1)
def _broad_band_matrix(n_bands: int) -> NDArray[np.float64]:
    """0/1 matrix summing the first ``n_bands`` mel bands into the broad bands they reach."""
    centres = mel_edges()[1 : N_MELS + 1][:n_bands]
    lows = (0.0, *BROAD_BAND_EDGES_HZ[:-1])
    cols = [
        (centres >= lo) & (centres < hi)
        for lo, hi in zip(lows, BROAD_BAND_EDGES_HZ, strict=True)
        if ((centres >= lo) & (centres < hi)).any()
    ]
    return np.stack(cols, axis=1).astype(np.float64)


def broad_band_energies(mel: NDArray[np.float64]) -> NDArray[np.float64]:
    """Log energies of a few broad frequency bands (see ``BROAD_BAND_EDGES_HZ``).

    Only the bands the given mel columns reach are returned (a telephone recording has no
    fricative band). Floored 70 dB below the loudest band, like :func:`cepstra`.

    Returns:
        ``(frames, bands)`` log energies (not yet normalised).
    """
    energy = mel @ _broad_band_matrix(mel.shape[1])
    peak = float(energy.max()) + _EPS
    return np.asarray(np.log(np.maximum(energy, peak * 1e-7)), dtype=np.float64)
