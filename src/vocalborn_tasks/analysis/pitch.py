"""Pitch (fundamental frequency) and harmonicity by a vectorised YIN.

YIN (de Cheveigné and Kawahara, 2002): the cumulative-mean-normalised difference function of
each frame, computed for all frames at once with one FFT each, the first dip under a threshold
taken as the period, refined by parabolic interpolation. Harmonicity (HNR) follows from the
normalised autocorrelation at that period, as in Boersma's definition used by Praat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.fft import irfft, rfft
from scipy.ndimage import median_filter

from .features import HOP, frame_view, runs
from .io import SAMPLE_RATE

__all__ = ["PitchTrack", "semitones", "track_pitch"]

#: Lowest pitch tracked. 50 Hz, not 60 (analyzer 1.4.0): espeak-ng's low male voices at the
#: real rate sit at 55-65 Hz, as low adult male voices do, and at 60 the tracker pinned them
#: to its bound and lost most voiced frames (13 of 323 in one pair), so a pitch-shifted but
#: right Mandarin reading scored tone 0-75. The frame (_WIN + lag) still fits _NFFT.
F0_MIN = 50.0
F0_MAX = 900.0
_WIN = 384  # integration window: 24 ms
_TAU_MIN = int(SAMPLE_RATE / F0_MAX)
_TAU_MAX = int(np.ceil(SAMPLE_RATE / F0_MIN))
_TYPICAL_TAU = 100
_OCTAVE_FOLD = 1.8
_CHUNK = 1024  # frames per YIN batch: bounds memory on long recordings
_NFFT = 720  # >= the frame length (no lag up to _TAU_MAX wraps), and 5-smooth
_THRESHOLD = 0.15
#: A dip under this within _HALF_SPAN (relative) of half the chosen lag is the true period.
_HALF_DIP = 0.45
_HALF_SPAN = 0.12
#: ... only for lags of 80 Hz and lower. A higher voice's half period can dip as low where a
#: formant sits near its second harmonic (espeak-ng's high voices did: checked everywhere,
#: the half-period rule put octave jumps into right readings, tone 98 -> 24-88).
_HALF_FROM_TAU = SAMPLE_RATE // 80
_HALF_OFFSETS = int(np.ceil(_HALF_SPAN * (_TAU_MAX // 2)))  # lags searched either side of the half
_VOICED_MAX = 0.45
#: Second, guided pass (:attr:`PitchTrack.guided`): a strict-unvoiced speech frame gets the
#: deepest YIN dip within this factor of the speaker's median pitch when the dip is under
#: :data:`_GUIDED_MAX` and the autocorrelation there over :data:`_GUIDED_PERIODICITY`.
_GUIDED_OCTAVE = 1.6
_GUIDED_MAX = 0.6
_GUIDED_PERIODICITY = 0.3
_EPS = 1e-12


@dataclass(frozen=True, slots=True)
class PitchTrack:
    """Per-frame pitch on the 10 ms frame grid of :mod:`.features`.

    Attributes:
        f0: fundamental frequency in Hz, ``nan`` on unvoiced frames.
        periodicity: normalised autocorrelation at the period (0..1).
        voiced: frames judged voiced.
        guided: :attr:`f0`, with the speech frames it leaves unvoiced filled by a second pass
            guided by the speaker's median (:func:`_guided`), for units' tones only.
    """

    f0: NDArray[np.float64]
    periodicity: NDArray[np.float64]
    voiced: NDArray[np.bool_]
    guided: NDArray[np.float64]

    def hnr_db(self) -> float:
        """Median harmonics-to-noise ratio over voiced frames, in dB (``nan`` if none)."""
        if not self.voiced.any():
            return float("nan")
        r = np.clip(self.periodicity[self.voiced], 1e-4, 1 - 1e-4)
        return float(np.median(10.0 * np.log10(r / (1.0 - r))))


def track_pitch(x: NDArray[np.float64], speech: NDArray[np.bool_] | None = None) -> PitchTrack:
    """Pitch of a 16 kHz signal, one value per 10 ms frame.

    Args:
        x: the signal.
        speech: optional speech mask on the same frame grid; only those frames are analysed,
            the others are unvoiced (this also saves most of the work on pauses).
    """
    length = _WIN + _TAU_MAX + 2
    # Frames are centred on k * HOP; the lag-tau comparison spans [0, WIN + tau), so shift the
    # signal to centre that span for a typical period (~160 Hz) rather than the longest one.
    offset = length // 2 - (_WIN + _TYPICAL_TAU) // 2
    all_frames = frame_view(np.concatenate([x[offset:], np.zeros(offset)]), length, HOP)
    n = all_frames.shape[0]
    mask = np.ones(n, dtype=bool)
    if speech is not None:
        mask[:] = False
        m = min(speech.size, n)
        mask[:m] = speech[:m]
    chosen = np.flatnonzero(mask)
    f0 = np.full(n, np.nan)
    periodicity = np.zeros(n)
    voiced = np.zeros(n, dtype=bool)
    for start in range(0, chosen.size, _CHUNK):
        part = chosen[start : start + _CHUNK]
        f0_c, per_c, voiced_c = _yin(all_frames[part].astype(np.float32))
        f0[part], periodicity[part], voiced[part] = f0_c, per_c, voiced_c
    f0, voiced = _clean(f0, voiced)
    guided = _guided(all_frames, f0, mask)
    return PitchTrack(f0=f0, periodicity=periodicity, voiced=voiced, guided=guided)


def _guided(
    all_frames: NDArray[np.float64], f0: NDArray[np.float64], mask: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """A second pass over the speech frames the strict track leaves unvoiced.

    A rough voice (jittered or alternating periods: espeak-ng's ``+m1`` has "roughness", so
    do many dysphonic patients) or a creaky tone 3 keeps a clear dip in YIN's difference
    function near the speaker's period, but not under YIN's absolute threshold, and a lax
    threshold alone picks short-lag dips (formants) as well. Knowing the speaker's median
    pitch from the strict frames, the deepest dip within :data:`_GUIDED_OCTAVE` of it is taken
    when it is under :data:`_GUIDED_MAX` with autocorrelation over
    :data:`_GUIDED_PERIODICITY`; the result is cleaned like :attr:`PitchTrack.f0`. Only the
    units' tone comparison uses it (a low male voice of the units corpus had 40 % of its
    speech voiced strictly, so its syllables' tones could not be judged).
    """
    out = f0.copy()
    voiced = np.isfinite(f0)
    if voiced.sum() < 10:
        return out
    centre = float(np.median(f0[voiced]))
    lo = max(_TAU_MIN, int(SAMPLE_RATE / (centre * _GUIDED_OCTAVE)))
    hi = min(_TAU_MAX, int(np.ceil(SAMPLE_RATE * _GUIDED_OCTAVE / centre)))
    todo = np.flatnonzero(mask[: f0.size] & ~voiced)
    for start in range(0, todo.size, _CHUNK):
        part = todo[start : start + _CHUNK]
        dn, r, e0, e_tau = _difference(all_frames[part].astype(np.float32))
        best = np.argmin(dn[:, lo : hi + 1], axis=1) + lo
        rows = np.arange(part.size)
        corr = r[rows, best] / np.sqrt(np.maximum(e0[:, 0] * e_tau[rows, best], _EPS))
        ok = (dn[rows, best] < _GUIDED_MAX) & (corr > _GUIDED_PERIODICITY)
        out[part[ok]] = SAMPLE_RATE / best[ok]
    cleaned, _ = _clean(out, np.isfinite(out))
    return cleaned


def _yin(
    frames: NDArray[np.float32],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """YIN on a stack of frames: pitch (Hz, nan unvoiced), periodicity and voicing."""
    n = frames.shape[0]
    dn, r, e0, e_tau = _difference(frames)

    lo, hi = _TAU_MIN, _TAU_MAX
    seg = dn[:, lo : hi + 1]
    local_min = np.zeros_like(seg, dtype=bool)
    local_min[:, 1:-1] = (seg[:, 1:-1] <= seg[:, :-2]) & (seg[:, 1:-1] <= seg[:, 2:])
    dip = local_min & (seg < _THRESHOLD)
    has_dip = dip.any(axis=1)
    first = np.argmax(dip, axis=1)
    best = np.where(has_dip, first, np.argmin(seg, axis=1)) + lo
    rows = np.arange(n)
    best = _prefer_half_period(dn, np.clip(best, lo + 1, hi), rows)
    y0, y1, y2 = dn[rows, best - 1], dn[rows, best], dn[rows, best + 1]
    denom = y0 - 2 * y1 + y2
    shift = np.where(np.abs(denom) > _EPS, 0.5 * (y0 - y2) / np.where(denom == 0, 1, denom), 0.0)
    shift = np.clip(shift, -0.5, 0.5)
    tau = best + shift
    aperiodicity = y1

    corr = r[rows, best] / np.sqrt(np.maximum(e0[:, 0] * e_tau[rows, best], _EPS))
    periodicity = np.clip(corr, 0.0, 1.0)
    voiced = (aperiodicity < _VOICED_MAX) & (periodicity > 0.4) & (e0[:, 0] > _EPS)
    f0 = np.where(voiced, SAMPLE_RATE / tau, np.nan)
    return f0, periodicity, voiced


def _prefer_half_period(
    dn: NDArray[np.float64], best: NDArray[np.intp], rows: NDArray[np.intp]
) -> NDArray[np.intp]:
    """Take half the chosen lag where YIN's difference also dips there (under _HALF_DIP).

    A rough voice whose periods alternate (every other one longer and weaker: espeak-ng's
    ``+m1``, many dysphonic patients) repeats exactly only every two periods, so its deepest
    dip, the first under the threshold, lies at the double period: an octave too low once
    that lag is in range (it is since F0_MIN went to 50 Hz). Its single periods (one shorter,
    one longer, ~10 % either side of the half) still dip to ~0.4; a truly low voice's half
    period does not (there the waveform is far from itself).
    """
    long = np.flatnonzero(best >= _HALF_FROM_TAU)  # most voices have none: nothing to do
    if long.size == 0:
        return best
    half = best[long] // 2  # 100-160: the candidates stay inside YIN's lag range
    offsets = np.arange(-_HALF_OFFSETS, _HALF_OFFSETS + 1)
    cand = half[:, None] + offsets[None, :]
    values = dn[rows[long, None], cand]
    values = np.where(np.abs(offsets)[None, :] <= _HALF_SPAN * half[:, None], values, np.inf)
    pick = np.argmin(values, axis=1)
    picked = np.arange(long.size)
    low = values[picked, pick] < _HALF_DIP
    out = best.copy()
    out[long[low]] = cand[picked, pick][low]
    return out


def _clean(
    f0: NDArray[np.float64], voiced: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Drop voiced blips under 30 ms and fix octave jumps.

    Jumps are judged first against a running median within each voiced run, then against the
    speaker's overall median: read speech stays well within an octave of it, so a frame
    further than ~0.9 octave below or above is a halving or doubling error (creaky voice).
    """
    voiced = voiced.copy()
    for a, b in runs(voiced):
        if b - a < 3:
            voiced[a:b] = False
    out = np.where(voiced, f0, np.nan)
    for a, b in runs(voiced):
        seg = out[a:b]
        if seg.size >= 5:
            ref = median_filter(seg, size=min(9, seg.size | 1), mode="nearest")
            ratio = seg / ref
            seg = np.where(ratio > 1.7, seg / 2, np.where(ratio < 0.6, seg * 2, seg))
            out[a:b] = seg
    if voiced.sum() >= 10:
        centre = float(np.nanmedian(out))
        out = np.where(out < centre / _OCTAVE_FOLD, out * 2, out)
        out = np.where(out > centre * _OCTAVE_FOLD, out / 2, out)
    return out, voiced


def semitones(f0: NDArray[np.float64]) -> NDArray[np.float64]:
    """Pitch in semitones relative to the speaker's own median voiced pitch (``nan`` unvoiced).

    Measuring against each speaker's median is what makes a woman's and a man's contour
    comparable: only the shape (rises, falls, range) remains.
    """
    voiced = np.isfinite(f0)
    if not voiced.any():
        return np.full_like(f0, np.nan)
    st = 12.0 * np.log2(np.where(voiced, f0, 1.0) / float(np.median(f0[voiced])))
    return np.where(voiced, st, np.nan)


def _difference(
    frames: NDArray[np.float32],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """YIN's cumulative-mean-normalised difference of each frame, with the cross-correlation
    and the energies it came from (for the periodicity at a chosen lag)."""
    n = frames.shape[0]
    padded = np.zeros((n, _NFFT), dtype=np.float32)
    padded[:, : frames.shape[1]] = frames
    padded[:, : frames.shape[1]] -= frames.mean(axis=1, keepdims=True)
    head = np.zeros_like(padded)
    head[:, :_WIN] = padded[:, :_WIN]
    spec_all = rfft(padded, axis=1)
    spec_head = rfft(head, axis=1)
    r = irfft(np.conj(spec_head) * spec_all, n=_NFFT, axis=1)[:, : _TAU_MAX + 2]
    r = r.astype(np.float64)
    sq = np.cumsum(padded[:, : _WIN + _TAU_MAX + 2].astype(np.float64) ** 2, axis=1)
    sq = np.concatenate([np.zeros((n, 1)), sq], axis=1)
    taus = np.arange(_TAU_MAX + 2)
    e0 = sq[:, _WIN][:, None]
    e_tau = sq[:, taus + _WIN] - sq[:, taus]
    d = np.maximum(e0 + e_tau - 2.0 * r, 0.0)
    cum = np.cumsum(d[:, 1:], axis=1)
    dn = np.ones_like(d)
    dn[:, 1:] = d[:, 1:] * taus[1:] / np.maximum(cum, _EPS)
    return dn, r, e0, e_tau


#: A voiced frame further than this (semitones) from the running median of its voiced run is
#: a tracking error (an octave jump at a voicing onset or offset, a creaky period), not a tone:
#: it is left out of the units' pitch residual. Speech moves < 1 st per 10 ms frame.
JUMP_ST = 4.0
#: Running-median width (frames) for :data:`JUMP_ST`.
JUMP_MEDIAN_FRAMES = 5


def without_jumps(st: NDArray[np.float64]) -> NDArray[np.float64]:
    """``st`` with the frames that jump away from their neighbours set to ``nan``.

    A frame more than :data:`JUMP_ST` from the running median (:data:`JUMP_MEDIAN_FRAMES`)
    of its voiced run is a tracking error, not a tone. On the units corpus' fitting half such
    frames (octave errors of 9-15 st at voicing onsets and offsets) were what made a
    syllable of a right sentence in another voice look like a changed tone; dropping them
    let the tone bars come down from z 3.5 / 1 st to z 3 / 0.75 st at the same false alarms.
    """
    out = st.copy()
    for a, b in runs(np.isfinite(st)):
        if b - a < 3:
            continue
        seg = st[a:b]
        med = median_filter(seg, size=min(JUMP_MEDIAN_FRAMES, (b - a) | 1), mode="mirror")
        out[a:b][np.abs(seg - med) > JUMP_ST] = np.nan
    return out
