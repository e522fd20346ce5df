"""The engine's numpy versions of scipy.signal's resample_poly and find_peaks match scipy's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from vocalborn_tasks.analysis._signal import find_peaks, resample_poly


@pytest.mark.parametrize(
    ("rate", "n"),
    [
        (8000, 8000),
        (11025, 5000),
        (22050, 22051),
        (24000, 7),
        (32000, 1),
        (44100, 44100),
        (48000, 48001),
        (96000, 12345),
        (12000, 999),
    ],
)
def test_resample_poly_matches_scipy(rate: int, n: int) -> None:
    rng = np.random.default_rng(rate + n)
    x = rng.standard_normal(n)
    g = np.gcd(rate, 16000)
    up, down = 16000 // g, rate // g
    ours = resample_poly(x, up, down)
    theirs = signal.resample_poly(x, up, down)
    assert ours.dtype == np.float64
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


def test_resample_poly_of_equal_rates_is_a_copy() -> None:
    x = np.arange(5.0)
    y = resample_poly(x, 3, 3)
    assert y is not x
    np.testing.assert_array_equal(y, x)


def _signals() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = [
        np.array([]),
        np.array([1.0]),
        np.array([0.0, 1.0]),
        np.array([0.0, 1.0, 0.0]),
        np.array([0.0, 2.0, 2.0, 2.0, 0.0]),  # a flat top
        np.array([0.0, 2.0, 2.0, 3.0, 0.0]),
        np.array([3.0, 2.0, 1.0]),
        np.zeros(50),
    ]
    for size in (20, 100, 400, 1000):
        out.append(rng.standard_normal(size).cumsum())
        out.append(rng.integers(0, 4, size).astype(np.float64))  # plateaus and ties
        out.append(np.round(20 * np.sin(np.arange(size) / 7.0) + rng.standard_normal(size), 0))
    return out


@pytest.mark.parametrize("prominence", [0.0, 0.5, 1.0, 3.0, 6.0])
@pytest.mark.parametrize("distance", [1, 2, 3, 5, 8.5])
def test_find_peaks_matches_scipy(prominence: float, distance: float) -> None:
    for x in _signals():
        ours = find_peaks(x, prominence=prominence, distance=distance)
        theirs, _ = signal.find_peaks(x, prominence=prominence, distance=distance)
        np.testing.assert_array_equal(ours, theirs, err_msg=repr(x))
