"""Alignment of a sample to its reference: subsequence dynamic time warping.

Every step of the path advances the sample by one frame and the reference by 0, 1 or 2
frames, so the recursion is vectorised over the reference axis (one numpy pass per sample
frame) and the path cost is the mean over sample frames, comparable between recordings of
any length. The path may start and end anywhere in the reference: how much of the reference
it spans is the share of the sentence actually read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Alignment", "align", "align_many", "local_costs", "path_costs", "pool_frames"]

#: Largest cost matrix aligned at full resolution; longer pairs are pooled first.
MAX_CELLS = 1_000_000
_STAY_PENALTY = 0.05
_SKIP_PENALTY = 0.05


@dataclass(frozen=True, slots=True)
class Alignment:
    """A sample-to-reference path.

    Attributes:
        ref_index: for each sample frame, the reference frame it is matched with.
        frame_cost: local distance of each matched pair.
        cost: mean of ``frame_cost``.
        start: first reference frame on the path.
        end: last reference frame on the path (inclusive).
    """

    ref_index: NDArray[np.intp]
    frame_cost: NDArray[np.float64]
    cost: float
    start: int
    end: int


def pool_frames(x: NDArray[np.float64], factor: int) -> NDArray[np.float64]:
    """Average every ``factor`` consecutive frames (the last partial group included)."""
    if factor <= 1:
        return x
    n = x.shape[0]
    groups = -(-n // factor)
    pad = groups * factor - n
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    return np.asarray(x.reshape(groups, factor, -1).mean(axis=1), dtype=np.float64)


def local_costs(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """Euclidean distances between all frames of ``a`` and ``b``, per feature dimension."""
    aa = np.einsum("ij,ij->i", a, a)[:, None]
    bb = np.einsum("ij,ij->i", b, b)[None, :]
    d2 = np.maximum(aa + bb - 2.0 * (a @ b.T), 0.0)
    return np.asarray(np.sqrt(d2 / a.shape[1]), dtype=np.float64)


def align(cost: NDArray[np.float64]) -> Alignment:
    """Subsequence DTW over a ``(sample, reference)`` local cost matrix.

    Steps: reference +0 (the sample lingers, small penalty), +1 (both advance), +2 (the sample
    is faster, small penalty). The sample must be used in full; the reference need not be.
    """
    return align_many(cost[None])[0]


def path_costs(costs: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean cost of the best path of each ``(k, sample, reference)`` matrix, without the path.

    Running the candidates (e.g. speaker warps) together shares the per-row overhead of the
    recursion, which dominates at sentence length.
    """
    acc = _accumulate(costs)
    return np.asarray(acc[-1, :, 2:].min(axis=1) / costs.shape[1], dtype=np.float64)


def _accumulate(costs: NDArray[np.float64]) -> NDArray[np.float64]:
    k, n, m = costs.shape
    acc = np.full((n, k, m + 2), np.inf)
    acc[0, :, 2:] = costs[:, 0]
    best = np.empty((k, m))
    tmp = np.empty((k, m))
    for i in range(1, n):
        prev = acc[i - 1]
        np.add(prev[:, 2:], _STAY_PENALTY, out=best)
        np.minimum(best, prev[:, 1:-1], out=best)
        np.add(prev[:, :-2], _SKIP_PENALTY, out=tmp)
        np.minimum(best, tmp, out=best)
        np.add(best, costs[:, i], out=acc[i, :, 2:])
    return acc


def align_many(costs: NDArray[np.float64]) -> list[Alignment]:
    """:func:`align` for a stack of ``(k, sample, reference)`` cost matrices at once."""
    k, n, _ = costs.shape
    acc = _accumulate(costs)
    out: list[Alignment] = []
    for c in range(k):
        path = _backtrack(acc[:, c], costs[c])
        frame_cost = costs[c][np.arange(n), path]
        out.append(
            Alignment(
                ref_index=path,
                frame_cost=frame_cost,
                cost=float(frame_cost.mean()),
                start=int(path[0]),
                end=int(path[-1]),
            )
        )
    return out


def _backtrack(acc: NDArray[np.float64], cost: NDArray[np.float64]) -> NDArray[np.intp]:
    """Recover the path from the accumulated costs (padded by two columns on the left)."""
    n = acc.shape[0]
    path = np.empty(n, dtype=np.intp)
    j = int(np.argmin(acc[-1, 2:]))
    for i in range(n - 1, 0, -1):
        path[i] = j
        prev = acc[i - 1]
        stay = prev[j + 2] + _STAY_PENALTY
        diag = prev[j + 1]
        skip = prev[j] + _SKIP_PENALTY
        if diag <= stay and diag <= skip:
            j -= 1
        elif skip < stay:
            j -= 2
    path[0] = j
    return path
