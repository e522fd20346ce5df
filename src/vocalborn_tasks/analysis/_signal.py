"""The two ``scipy.signal`` functions the engine uses, in numpy, so it never imports
``scipy.signal``.

Importing ``scipy.signal`` loads ~430 modules (all of ``scipy.signal``, and ``scipy.stats``,
``scipy.interpolate``, ``scipy.optimize`` and more with it): +48 MiB RSS and ~1 s in every
worker process, for two small functions. A pool process inherits those pages from the worker's
main process, which imports the engine before it forks, but the main process holds them all the
same, and the worker's total memory is what an operator pays for.

Both functions compute what their ``scipy.signal`` namesakes compute, for the arguments the
engine passes, by the same method: a test compares them on many inputs (``find_peaks`` gives
the same indices; ``resample_poly`` agrees to rounding, ~1e-15, since the sums run in another
order).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["find_peaks", "resample_poly"]

Floats = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]


def _kaiser_lowpass(numtaps: int, cutoff: float) -> Floats:
    """``scipy.signal.firwin(numtaps, cutoff, window=("kaiser", 5.0))``: a windowed sinc,
    cutoff relative to Nyquist, scaled to unit gain at 0 Hz."""
    m = np.arange(numtaps, dtype=np.float64) - 0.5 * (numtaps - 1)
    h = cutoff * np.sinc(cutoff * m)
    h *= np.kaiser(numtaps, 5.0)
    h /= h.sum()
    return h


def resample_poly(x: Floats, up: int, down: int) -> Floats:
    """``scipy.signal.resample_poly(x, up, down)`` for a 1-D float64 signal.

    Upsample by ``up`` (zeros between samples), low-pass with a Kaiser-windowed sinc of
    ``20 * max(up, down) + 1`` taps (beta 5), keep every ``down``-th sample; the first output
    sample is aligned with the first input sample and the ends are padded with zeros. Only the
    kept outputs are computed, one polyphase branch at a time.
    """
    g = math.gcd(up, down)
    up, down = up // g, down // g
    x = np.asarray(x, dtype=np.float64)
    if up == down == 1:
        return x.copy()
    n_in = x.shape[0]
    n_out = -(-n_in * up // down)
    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = _kaiser_lowpass(2 * half_len + 1, 1.0 / max_rate) * up
    n_pre_pad = down - half_len % down
    n_pre_remove = (half_len + n_pre_pad) // down
    length = h.shape[0] + n_pre_pad
    while ((n_in - 1) * up + length - 1) // down + 1 < n_out + n_pre_remove:
        length += 1
    taps = np.zeros(length, dtype=np.float64)
    taps[n_pre_pad : n_pre_pad + h.shape[0]] = h
    # Output m of the full filtering is sum over q of taps[p + q*up] * x[b - q], where
    # t = m*down, p = t % up, b = t // up. Branch p holds every up-th tap from p.
    per_branch = -(-length // up)
    branches = np.zeros((up, per_branch), dtype=np.float64)
    for p in range(up):
        branch = taps[p::up]
        branches[p, : branch.shape[0]] = branch
    # Only the first up outputs are needed to place every branch (see below).
    heads = np.arange(n_pre_remove, n_pre_remove + min(up, n_out)) * down
    phase = heads % up
    base = heads // up
    last_base = (n_pre_remove + n_out - 1) * down // up
    # x padded so that padded[b + per_branch - 1 - q] == x[b - q] (zeros outside x).
    padded = np.zeros(last_base + per_branch + 1, dtype=np.float64)
    padded[per_branch - 1 : per_branch - 1 + n_in] = x
    windows = np.lib.stride_tricks.sliding_window_view(padded, per_branch)
    y = np.empty(n_out, dtype=np.float64)
    reversed_branches = np.ascontiguousarray(branches[:, ::-1])
    for first in range(min(up, n_out)):
        # Outputs first, first + up, ... share a branch (up and down are coprime, so the
        # first up outputs meet every branch once), and their bases are down apart: one
        # strided window per output, times the branch's taps reversed (windows run oldest
        # first).
        b0 = int(base[first])
        count = len(range(first, n_out, up))
        y[first::up] = windows[b0::down][:count] @ reversed_branches[phase[first]]
    return y


def _local_maxima(x: Floats) -> Indices:
    """Midpoints of local maxima, flat tops included, none at either end (scipy's
    ``_local_maxima_1d``): runs of equal samples higher than the runs on both sides."""
    if x.shape[0] < 3:
        return np.zeros(0, dtype=np.intp)
    starts = np.flatnonzero(np.concatenate(([True], x[1:] != x[:-1])))
    ends = np.concatenate((starts[1:] - 1, [x.shape[0] - 1]))
    values = x[starts]
    inner = (values[1:-1] > values[:-2]) & (values[1:-1] > values[2:])
    run = np.flatnonzero(inner) + 1
    return ((starts[run] + ends[run]) // 2).astype(np.intp)


def _select_by_distance(peaks: Indices, priority: Floats, distance: float) -> npt.NDArray[np.bool_]:
    """Keep the highest peaks, dropping lower ones closer than ``distance`` samples."""
    size = peaks.shape[0]
    gap = math.ceil(distance)
    keep = np.ones(size, dtype=np.bool_)
    order = np.argsort(priority)
    for i in range(size - 1, -1, -1):
        j = int(order[i])
        if not keep[j]:
            continue
        k = j - 1
        while k >= 0 and peaks[j] - peaks[k] < gap:
            keep[k] = False
            k -= 1
        k = j + 1
        while k < size and peaks[k] - peaks[j] < gap:
            keep[k] = False
            k += 1
    return keep


def _prominences(x: Floats, peaks: Indices) -> Floats:
    """Each peak's height above the higher of the lowest points on either side before a
    higher sample (or the signal's end); peaks a block at a time, as masks over ``x``."""
    out = np.empty(peaks.shape[0], dtype=np.float64)
    positions = np.arange(x.shape[0])
    for lo in range(0, peaks.shape[0], 256):
        block = peaks[lo : lo + 256]
        top = x[block][:, None]
        here = block[:, None]
        higher = x[None, :] > top
        left = np.where(higher & (positions < here), positions, -1).max(axis=1)[:, None]
        right = np.where(higher & (positions > here), positions, x.shape[0]).min(axis=1)[:, None]
        left_min = np.where((positions > left) & (positions <= here), x, np.inf).min(axis=1)
        right_min = np.where((positions >= here) & (positions < right), x, np.inf).min(axis=1)
        out[lo : lo + block.shape[0]] = x[block] - np.maximum(left_min, right_min)
    return out


def find_peaks(x: Floats, *, prominence: float, distance: float) -> Indices:
    """``scipy.signal.find_peaks(x, prominence=prominence, distance=distance)[0]``.

    Local maxima (a flat top counts once, at its middle), then the highest of any closer
    together than ``distance`` samples, then those at least ``prominence`` above the dips
    around them.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    peaks = _local_maxima(x)
    if peaks.shape[0] == 0:
        return peaks
    peaks = peaks[_select_by_distance(peaks, x[peaks], distance)]
    return peaks[_prominences(x, peaks) >= prominence]
