"""Measurements of a sample against its reference, along their alignment.

Everything here is a raw measurement (distances, ratios, seconds); turning them into 0-100
scores is :mod:`.scoring`'s job, so the two can be tuned and tested separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from .align import MAX_CELLS, Alignment, align, local_costs, path_costs, pool_frames
from .features import bands_below, broad_band_energies, cepstra, runs
from .profile import FRAME_S, PAUSE_FRAMES, Profile, normalise

__all__ = ["Comparison", "FrameTrack", "Span", "compare"]

#: Window over which the worst stretch of the alignment is found: about one short word.
WINDOW_S = 0.25
#: Window over which the worst stretch of the pitch contour is found: a syllable or two.
PITCH_WINDOW_S = 0.4
#: Reference stretch over which the local tempo is measured for rhythm.
RHYTHM_SEG_S = 0.3
#: A sample pause within this distance of a reference pause counts as the same pause.
PAUSE_TOLERANCE_S = 0.25
#: An extra pause is *named* (a timed finding) only when it lasts at least this long: read
#: sentences carry silences of 0.1-0.35 s between words (stop closures, a breath, one voice's
#: habit of gapping words) that are no hesitation; every extra pause still counts for fluency.
NOTABLE_PAUSE_S = 0.4
#: ... and at least this many times the reference's longest inner silence (:func:`pause_baseline`).
NOTABLE_PAUSE_FACTOR = 2.0
#: Largest semitone difference one frame can contribute (a stray tracking error is bounded).
_MAX_PITCH_DIFF = 4.0
#: Weight of the broad-band energy contours against the cepstra in the frame distance.
ENERGY_WEIGHT = 1.0
#: Scales tried when mapping the sample's contour onto the reference's for units (x0.5..x2,
#: log-spaced): how far a voice's pitch range can differ from the reference's.
UNIT_PITCH_SCALES: tuple[float, ...] = tuple(
    float(k) for k in np.exp(np.linspace(np.log(0.5), np.log(2.0), 15))
)


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of the sample, in seconds, with the value measured over it."""

    start_s: float
    end_s: float
    value: float


@dataclass(frozen=True, slots=True)
class FrameTrack:
    """The alignment frame by frame, for measurements over parts of the sentence (units).

    Attributes:
        s_frames: the sample's kept frames (indices on its 10 ms grid).
        r_kept: for each of them, the matched reference frame as an index into ``ref.kept``.
        rel: relative distance of each matched pair (:func:`relative_costs`).
        pitch_diff: absolute semitone difference where both frames are voiced (``nan``
            elsewhere) on the guided pitch tracks without tracking jumps
            (:attr:`.Profile.st_units`), after the robust mapping of the sample's
            contour onto the reference's (:func:`robust_pitch_residual`), so one changed tone
            does not shift every unit.
    """

    s_frames: NDArray[np.intp]
    r_kept: NDArray[np.intp]
    rel: NDArray[np.float64]
    pitch_diff: NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Comparison:
    """How the sample relates to the reference.

    Attributes:
        warp: VTLN factor that matched best.
        cost: mean alignment distance (0 identical; about 1.0 unrelated speech).
        worst: the window of the sample with the highest mean *relative* distance: each
            matched pair's distance over the typical distance of the two frames to everything
            in the other recording (see :func:`relative_costs`).
        peak: how far the worst window rises above the median window, in the same relative
            units: a local mismatch (one wrong word) against the pair's own baseline, which a
            voice difference raises evenly.
        coverage: share of the reference's speech spanned by the alignment (0..1).
        missing_start: share of the reference before the aligned part.
        missing_end: share of the reference after the aligned part.
        tempo: sample speaking time (extra pauses left out) over the reference's for the part
            read (>1 is slower).
        extra_pauses: sample pauses the reference does not have, or that last much longer.
        pause_baseline_s: the reference's longest silence inside the sentence
            (:func:`pause_baseline`); :meth:`notable_pauses` are judged against it.
        rhythm_dev: mean absolute log2 deviation of the local tempo from its median.
        pitch_dev: mean absolute semitone difference of the aligned contours, each centred on
            its speaker's median and the sample's scaled to the reference's range.
        pitch_worst: the window with the largest pitch difference.
        pitch_pairs: aligned frames voiced in both recordings.
        track: the alignment frame by frame (``None`` only for hand-built comparisons).
    """

    warp: float
    cost: float
    worst: Span
    peak: float
    coverage: float
    missing_start: float
    missing_end: float
    tempo: float
    extra_pauses: list[Span] = field(default_factory=list)
    pause_baseline_s: float = 0.0
    rhythm_dev: float = 0.0
    pitch_dev: float = float("nan")
    pitch_worst: Span | None = None
    pitch_pairs: int = 0
    track: FrameTrack | None = None

    def notable_pauses(self) -> list[Span]:
        """The extra pauses that stand out from the pair's baseline: the ones a finding names.

        Precision first: a pause is named only when it lasts :data:`NOTABLE_PAUSE_S` or more
        *and* at least :data:`NOTABLE_PAUSE_FACTOR` times the longest silence the reference
        leaves between words anyway. Shorter extra pauses still lower fluency.
        """
        bar = max(NOTABLE_PAUSE_S, NOTABLE_PAUSE_FACTOR * self.pause_baseline_s)
        return [p for p in self.extra_pauses if p.value >= bar]


def silent_gaps(profile: Profile) -> NDArray[np.float64]:
    """Lengths (seconds) of every silence between the first and last speech frame."""
    inner = ~profile.speech[profile.first_speech : profile.last_speech + 1]
    return np.array([(b - a) * FRAME_S for a, b in runs(inner)], dtype=np.float64)


def pause_baseline(ref: Profile) -> float:
    """How much silence the reference leaves inside the sentence (seconds): its longest gap.

    Whatever the therapist's own phrasing does is no error, so a practice pause is judged
    against it. (The practice's own gaps are no baseline: its extra pauses are among them.)
    """
    gaps = silent_gaps(ref)
    return float(gaps.max()) if gaps.size else 0.0


def shared_bands(sample: Profile, ref: Profile) -> int:
    """Mel bands both recordings can carry: telephone audio (8 kHz) has nothing above 4 kHz."""
    return bands_below(0.45 * min(sample.source_rate, ref.source_rate))


def frame_features(mel: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-recording normalised cepstra (c1..c7 and deltas) plus broad-band energy contours.

    Both parts are mean- and variance-normalised over the recording, so loudness, channel
    and the overall tilt of a voice drop out; the energy contours keep the manner of each
    consonant (closure, burst, frication), which one changed word often alters.
    """
    ceps = normalise(cepstra(mel))
    energy = normalise(broad_band_energies(mel))
    return np.concatenate([ceps, ENERGY_WEIGHT * energy], axis=1)


def reference_features(sample: Profile, ref: Profile) -> NDArray[np.float64]:
    """Normalised features of the reference as it would sound in the sample's noise.

    Rather than cleaning the sample, the sample's own noise is added to the reference in the
    mel-power domain, scaled to the same speech-to-noise ratio: both then carry the same
    noise and their features stay comparable however noisy the sample is. Only the bands both
    recordings carry are used.
    """
    k = shared_bands(sample, ref)
    noise = sample.noise_mel[1.0] * (ref.speech_power / sample.speech_power)
    return frame_features((ref.mel[1.0] + noise[None, :])[:, :k])


def relative_costs(cost: NDArray[np.float64], path: NDArray[np.intp]) -> NDArray[np.float64]:
    """Each matched pair's distance over the typical distance of its two frames.

    A frame's typical distance is its mean distance to every frame of the other recording.
    A different voice (or noise, or a narrow channel) raises all distances of a frame
    together, so the ratio stays near its usual value; a wrong sound raises the matched
    distance only. Dividing by the geometric mean of the sample frame's and the reference
    frame's typical distance keeps the measure symmetric.
    """
    rows = cost.mean(axis=1)
    cols = cost.mean(axis=0)
    matched = cost[np.arange(cost.shape[0]), path]
    typical = np.sqrt(rows * cols[path])
    return np.asarray(matched / np.maximum(typical, 1e-9), dtype=np.float64)


def _align_best(sample: Profile, ref: Profile) -> tuple[float, Alignment, int, NDArray[np.float64]]:
    """Pick the speaker warp on a coarse (pooled) alignment, then align at full resolution.

    Returns the warp, the alignment, the pooling factor and the relative cost of each
    aligned (pooled) sample frame (:func:`relative_costs`).
    """
    warps = list(sample.mel)
    n, m = sample.kept.size, ref.kept.size
    factor = max(1, int(np.ceil(np.sqrt(n * m / MAX_CELLS))))
    b = reference_features(sample, ref)
    k = shared_bands(sample, ref)
    feats = {w: frame_features(sample.mel[w][:, :k]) for w in warps}
    best = warps[0]
    if len(warps) > 1:
        coarse = 2 * factor
        b_coarse = pool_frames(b, coarse)
        costs = np.stack([local_costs(pool_frames(a, coarse), b_coarse) for a in feats.values()])
        best = warps[int(np.argmin(path_costs(costs)))]
    cost = local_costs(pool_frames(feats[best], factor), pool_frames(b, factor))
    al = align(cost)
    return best, al, factor, relative_costs(cost, al.ref_index)


def _window_means(values: NDArray[np.float64], win: int) -> NDArray[np.float64]:
    if values.size <= win:
        return np.array([float(values.mean())])
    csum = np.concatenate([[0.0], np.cumsum(values)])
    return np.asarray((csum[win:] - csum[:-win]) / win, dtype=np.float64)


def _worst_window(
    values: NDArray[np.float64], times: NDArray[np.float64], window_s: float = WINDOW_S
) -> Span:
    win = max(1, round(window_s / FRAME_S))
    means = _window_means(values, win)
    k = int(np.argmax(means))
    end = min(k + win - 1, times.size - 1)
    return Span(float(times[k]), float(times[end]) + FRAME_S, float(means[k]))


def compare(sample: Profile, ref: Profile) -> Comparison:
    """Align ``sample`` to ``ref`` and measure the differences."""
    warp, al, factor, rel = _align_best(sample, ref)
    # Back to full frame resolution: sample kept frame -> reference kept frame.
    n_s = sample.kept.size
    m_r = ref.kept.size
    s_pos = np.minimum(np.arange(n_s) // factor, al.ref_index.size - 1)
    r_kept_idx = np.minimum(al.ref_index[s_pos] * factor + (np.arange(n_s) % factor), m_r - 1)
    frame_cost = al.frame_cost[s_pos]
    frame_rel = rel[s_pos]
    s_frames = sample.kept
    r_frames = ref.kept[r_kept_idx]
    s_times = np.asarray(s_frames * FRAME_S, dtype=np.float64)

    worst = _worst_window(frame_rel, s_times)
    baseline = float(np.median(_window_means(frame_rel, max(1, round(WINDOW_S / FRAME_S)))))
    start_k, end_k = int(r_kept_idx[0]), int(r_kept_idx[-1])
    coverage = (end_k - start_k + 1) / m_r
    missing_start = start_k / m_r
    missing_end = (m_r - 1 - end_k) / m_r

    ref_span_s = (ref.kept[end_k] - ref.kept[start_k] + 1) * FRAME_S
    extra = _extra_pauses(sample, ref, s_frames, r_frames)
    spoken_s = sample.active_s - sum(p.value for p in extra)
    tempo = spoken_s / max(ref_span_s, 0.2)
    rhythm = _rhythm(s_frames, r_frames)
    pitch_dev, pitch_worst, pairs, pitch_diff = _pitch(sample, ref, s_frames, r_frames)
    return Comparison(
        warp=warp,
        cost=float(frame_cost.mean()),
        worst=worst,
        peak=worst.value - baseline,
        coverage=float(coverage),
        missing_start=float(missing_start),
        missing_end=float(missing_end),
        tempo=float(tempo),
        extra_pauses=extra,
        pause_baseline_s=pause_baseline(ref),
        rhythm_dev=rhythm,
        pitch_dev=pitch_dev,
        pitch_worst=pitch_worst,
        pitch_pairs=pairs,
        track=FrameTrack(
            s_frames=np.asarray(s_frames, dtype=np.intp),
            r_kept=np.asarray(r_kept_idx, dtype=np.intp),
            rel=np.asarray(frame_rel, dtype=np.float64),
            pitch_diff=pitch_diff,
        ),
    )


def _ref_time_of(s_frame: int, s_frames: NDArray[np.intp], r_frames: NDArray[np.intp]) -> int:
    k = int(np.searchsorted(s_frames, s_frame))
    return int(r_frames[min(k, r_frames.size - 1)])


def _extra_pauses(
    sample: Profile, ref: Profile, s_frames: NDArray[np.intp], r_frames: NDArray[np.intp]
) -> list[Span]:
    """Sample pauses with no counterpart in the reference (or much longer than it)."""
    ref_pauses = ref.pauses()
    tol = int(PAUSE_TOLERANCE_S / FRAME_S)
    out: list[Span] = []
    for a, b in sample.pauses():
        r_at = _ref_time_of(a, s_frames, r_frames)
        expected = 0
        for ra, rb in ref_pauses:
            if ra - tol <= r_at <= rb + tol:
                expected = max(expected, rb - ra)
        excess = (b - a) - 2 * expected
        if expected == 0 or excess >= PAUSE_FRAMES:
            out.append(Span(a * FRAME_S, b * FRAME_S, (b - a) * FRAME_S))
    return out


def _rhythm(s_frames: NDArray[np.intp], r_frames: NDArray[np.intp]) -> float:
    """Steadiness of the tempo: how much the local sample/reference time ratio wanders.

    Both time axes keep their pauses, so a pause both speakers make cancels out while a
    pause only the sample makes shows as a stretch of slow local tempo.
    """
    r_unique, first = np.unique(r_frames, return_index=True)
    if r_unique.size < 4:
        return 0.0
    s_at = s_frames[first].astype(np.float64)
    seg = max(2, round(RHYTHM_SEG_S / FRAME_S))
    grid = np.arange(r_unique[0], r_unique[-1] + 1, seg, dtype=np.float64)
    if grid.size < 3:
        return 0.0
    s_grid = np.interp(grid, r_unique.astype(np.float64), s_at)
    ratio = np.maximum(np.diff(s_grid), 0.5) / seg
    logr = np.log2(ratio)
    return float(np.mean(np.abs(logr - np.median(logr))))


def _pitch(
    sample: Profile, ref: Profile, s_frames: NDArray[np.intp], r_frames: NDArray[np.intp]
) -> tuple[float, Span | None, int, NDArray[np.float64]]:
    st_s = sample.st[s_frames]
    st_r = ref.st[r_frames]
    both = np.isfinite(st_s) & np.isfinite(st_r)
    pairs = int(both.sum())
    per_frame = np.full(s_frames.size, np.nan)
    if pairs < 10:
        return float("nan"), None, pairs, per_frame
    a = st_s[both] - np.median(st_s[both])
    b = st_r[both] - np.median(st_r[both])
    # Voices differ in pitch range as well as in pitch: bring the sample's contour to the
    # reference's range (within a factor of two) so only the shape is compared.
    spread_a = float(np.subtract(*np.percentile(a, [90, 10])))
    spread_b = float(np.subtract(*np.percentile(b, [90, 10])))
    scale = float(np.clip(spread_b / max(spread_a, 0.5), 0.5, 2.0))
    diff = np.minimum(np.abs(scale * a - b), _MAX_PITCH_DIFF)
    # Units' tones: the guided track (fewer gaps in a rough voice) without tracking jumps,
    # robustly mapped.
    clean_s = sample.st_units[s_frames]
    clean_r = ref.st_units[r_frames]
    clean = np.isfinite(clean_s) & np.isfinite(clean_r)
    per_frame[clean] = robust_pitch_residual(clean_s[clean], clean_r[clean])
    times = np.asarray(s_frames[both] * FRAME_S, dtype=np.float64)
    worst = _worst_window(diff, times, PITCH_WINDOW_S)
    # The window counts voiced frames, so it may stretch over pauses; report the stretch of at
    # most PITCH_WINDOW_S around its largest difference instead.
    inside = (times >= worst.start_s) & (times < worst.end_s)
    peak_t = float(times[inside][np.argmax(diff[inside])]) if inside.any() else worst.start_s
    half = PITCH_WINDOW_S / 2
    start = max(worst.start_s, peak_t - half)
    end = min(worst.end_s, start + PITCH_WINDOW_S)
    return float(np.mean(diff)), Span(start, end, worst.value), pairs, per_frame


def robust_pitch_residual(
    sample_st: NDArray[np.float64], ref_st: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Per frame, how far the sample's pitch is from the reference's once the voices are matched.

    Why not centre on the medians and scale by the 10-90 % range, as the sentence-level tone
    measure does: one syllable said in another tone moves the sample's median and range, so
    every syllable then differs a little and the changed one no longer stands out (on the
    units corpus' fitting half the changed tone was the most different syllable in 0.81 of
    tight pairs that way, 0.88 with this fit). Here the mapping ``ref ~ k * sample + c`` is the
    one under which the *middle half* of the frames agree best (least median of absolute
    residuals over :data:`UNIT_PITCH_SCALES`, ``c`` the median offset): the frames of a
    changed syllable are outliers of that fit and keep their whole difference.

    Args:
        sample_st: the sample's semitones (against its median) at frames voiced in both.
        ref_st: the matched reference frames' semitones, same length.

    Returns:
        The absolute residual of each frame, bounded like the sentence-level difference.
    """
    if sample_st.size == 0:
        return np.zeros(0)
    k = np.asarray(UNIT_PITCH_SCALES)[:, None]
    offsets = np.median(ref_st[None, :] - k * sample_st[None, :], axis=1, keepdims=True)
    residual = np.abs(ref_st[None, :] - k * sample_st[None, :] - offsets)
    best = int(np.argmin(np.median(residual, axis=1)))
    return np.asarray(np.minimum(residual[best], _MAX_PITCH_DIFF), dtype=np.float64)
