"""From raw measurements to 0-100 sub-scores, an overall score, a level and reliability.

Every score is a clipped straight line between a "good" and a "bad" value of one measurement
(:func:`ramp`), so each threshold below can be read, questioned and refitted on its own. The
constants were fitted on synthetic espeak-ng speech (see ``docs/analysis.md``); a deployment
should check them against therapist ratings before trusting the levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .compare import Comparison
from .profile import Profile

__all__ = ["WRONG_SENTENCE_PRON", "Scores", "is_tonal", "level_for", "ramp", "score"]

# Pronunciation: mean alignment distance (per-dimension RMS of normalised cepstra and
# broad-band energy contours), which separates the right sentence from a wrong one, and the
# worst 0.25 s window's rise above the pair's own median window ("peak", on the relative
# distance: each matched pair over its frames' typical distance), which points at one wrong
# word.
# Distance -> score knots: 100 up to the first, 20 at the second, 0 at the third. The steep
# part separates the right sentence from a wrong one; the gentle tail keeps ranking noisy
# attempts instead of flattening them all to 0.
# Fitted at the real speaking rate (analyzer 1.4.0; until 1.3.2 every espeak-ng file was
# twice its real rate, and the knots were 0.78 / 0.84). On the corpus' fitting sentences the
# right sentence in another voice, speed, pitch or at 10-20 dB SNR reached 0.716 and a
# different sentence started at 0.785; a wrong sentence reaches level 5 only when its
# pronunciation is under ~35, i.e. at a cost over knee - 0.21 x (knee - first knot). With
# 0.78 / 0.84 up to 2 of 16 different sentences per framing and language (0.785-0.806) scored
# level 3-4; 0.76 / 0.82 and 0.75 / 0.80 still left one or two; 0.74 / 0.79 is the least move
# that sends all of them to level 5 while every right sentence stays at 100 before the peak
# penalty. The price: each step down sends more right sentences read by two *unlike* voices
# to level 5 (cross-synthesizer set, Festival -> Festival: 0.15 at 0.78 / 0.84, 0.42 here):
# the distance scale depends on the pair of voices (docs/analysis.md, "1.4.0" and "Known
# weaknesses"), and only real therapist/patient pairs can place these knots for real use.
PRON_COST = (0.74, 0.79, 1.0)
# Peak -> percent taken off: a little per unit everywhere, much more past the knee.
PRON_PEAK_PER_UNIT = 14.0
PRON_PEAK_KNEE = 0.28
PRON_PEAK_PAST_KNEE = 85.0
# Completeness: share of the reference spanned by the alignment. Nothing is left at half the
# sentence: an attempt cut dead half-way through a tight clip was measured to span 0.38-0.60
# of the reference, so the old 0.40 end gave 30-40 where a half reading must score under 30
# (fitted on sentences 1-4, analyzer 1.2.0).
COVERAGE = (0.90, 0.50)
# Tone: points lost per semitone of mean and of worst-window difference of the aligned
# contours: a few everywhere (no flat "perfect" zone, so the score keeps ranking attempts),
# many past a knee that same-tone readings by other voices rarely cross.
TONE_PER_ST = 3.0
TONE_KNEE_MEAN = 0.6
TONE_KNEE_WORST = 1.0
TONE_PER_ST_PAST_KNEE = 25.0
# Fluency.
PAUSE_PENALTY = 12.0  # per extra pause
PAUSE_TIME_PENALTY = 15.0  # per second of extra pause
TEMPO_SLOW = (1.35, 2.5)  # speaking-time ratio: fine up to 1.35x, nothing left at 2.5x
TEMPO_FAST = (0.75, 0.4)
# Rhythm: mean |log2| deviation of local tempo from its median.
RHYTHM = (0.10, 0.45)
# Clarity.
SNR = (35.0, 10.0)
HNR = (9.0, 0.0)
ENTROPY = (0.65, 0.92)
CLIP_PENALTY = 2000.0  # per unit fraction of clipped samples (1 % costs 20 points)
# Reliability.
MIN_SNR_DB = 8.0
MAX_CLIPPED = 0.005
# "Reliable" means clean *and complete* enough to judge: below this completeness (about a
# third of the sentence missing) the flag is false with ``incomplete`` (issue 20: a half
# recording said "reliable: yes" under a legend that promised completeness).
MIN_COMPLETENESS = 50.0
# Below this pronunciation the sentence is taken as a different one: no unit is judged.
WRONG_SENTENCE_PRON = 30.0
# How far the overall score may rise above the weaker of pronunciation and completeness.
# A different Mandarin sentence shares many syllables with the reference and can reach a
# pronunciation of ~33; with a margin of 10 it then landed on level 4 (fitted on sentences
# 1-4, analyzer 1.2.0: the highest different-sentence pronunciation there was 32.9).
GATE_MARGIN = 5.0
LEVEL_BOUNDS = (85.0, 70.0, 55.0, 40.0)

_TONAL_PREFIXES = ("zh", "cmn", "yue", "th", "vi")


@dataclass(frozen=True, slots=True)
class Scores:
    """All scores of one comparison plus the reliability verdict."""

    pronunciation: float
    completeness: float
    fluency: float
    rhythm: float
    tone: float
    clarity: float
    overall: float
    level: int
    reliable: bool
    reliability_issues: tuple[str, ...]


def ramp(value: float, good: float, bad: float) -> float:
    """100 at ``good`` (or better), 0 at ``bad`` (or worse), a straight line between."""
    if math.isnan(value):
        return 0.0
    frac = (bad - value) / (bad - good)
    return 100.0 * min(1.0, max(0.0, frac))


def is_tonal(language: str | None) -> bool:
    """True for languages where pitch carries word meaning (Mandarin, Cantonese, Thai, ...)."""
    if not language:
        return False
    lang = language.lower().replace("_", "-")
    return any(lang == p or lang.startswith(p + "-") for p in _TONAL_PREFIXES)


def level_for(overall: float) -> int:
    """Level 1 (best) to 5 (worst) from the overall score."""
    for level, bound in enumerate(LEVEL_BOUNDS, start=1):
        if overall >= bound:
            return level
    return 5


def _weights(tonal: bool) -> dict[str, float]:
    if tonal:
        return {"pron": 0.30, "tone": 0.20, "comp": 0.15, "flu": 0.12, "rhy": 0.08, "cla": 0.15}
    return {"pron": 0.35, "tone": 0.08, "comp": 0.15, "flu": 0.15, "rhy": 0.12, "cla": 0.15}


def score(cmp: Comparison, sample: Profile, *, language: str | None) -> Scores:
    """Score one sample against its reference."""
    peak_penalty = PRON_PEAK_PER_UNIT * cmp.peak + PRON_PEAK_PAST_KNEE * max(
        0.0, cmp.peak - PRON_PEAK_KNEE
    )
    good, knee, bad = PRON_COST
    if cmp.cost <= knee:
        global_score = 20.0 + 0.8 * ramp(cmp.cost, good, knee)
    else:
        global_score = 0.2 * ramp(cmp.cost, knee, bad)
    pron = global_score * max(0.0, 1.0 - peak_penalty / 100.0)
    completeness = ramp(cmp.coverage, *COVERAGE)

    if cmp.pitch_pairs >= 10:
        worst = cmp.pitch_worst.value if cmp.pitch_worst else cmp.pitch_dev
        tone = (
            100.0
            - TONE_PER_ST * (cmp.pitch_dev + worst)
            - TONE_PER_ST_PAST_KNEE * max(0.0, cmp.pitch_dev - TONE_KNEE_MEAN)
            - TONE_PER_ST_PAST_KNEE * max(0.0, worst - TONE_KNEE_WORST)
        )
        tone = max(0.0, min(100.0, tone))
    else:
        tone = 50.0

    extra_s = sum(p.value for p in cmp.extra_pauses)
    tempo_score = min(ramp(cmp.tempo, *TEMPO_SLOW), ramp(cmp.tempo, *TEMPO_FAST))
    fluency = tempo_score - PAUSE_PENALTY * len(cmp.extra_pauses) - PAUSE_TIME_PENALTY * extra_s
    fluency = max(0.0, fluency)
    rhythm = ramp(cmp.rhythm_dev, *RHYTHM)

    clarity = (
        0.55 * ramp(sample.snr_db, *SNR)
        + 0.2 * ramp(sample.hnr_db, *HNR)
        + 0.25 * ramp(sample.entropy, *ENTROPY)
        - CLIP_PENALTY * sample.clipped_fraction
    )
    clarity = max(0.0, min(100.0, clarity))

    w = _weights(is_tonal(language))
    weighted = (
        w["pron"] * pron
        + w["tone"] * tone
        + w["comp"] * completeness
        + w["flu"] * fluency
        + w["rhy"] * rhythm
        + w["cla"] * clarity
    ) / sum(w.values())
    overall = min(weighted, min(pron, completeness) + GATE_MARGIN)

    issues: list[str] = []
    if sample.snr_db < MIN_SNR_DB:
        issues.append("too_noisy")
    if sample.clipped_fraction > MAX_CLIPPED:
        issues.append("clipped")
    if completeness < MIN_COMPLETENESS:
        issues.append("incomplete")
    return Scores(
        pronunciation=round(pron, 1),
        completeness=round(completeness, 1),
        fluency=round(fluency, 1),
        rhythm=round(rhythm, 1),
        tone=round(tone, 1),
        clarity=round(clarity, 1),
        overall=round(overall, 1),
        level=level_for(overall),
        reliable=not issues,
        reliability_issues=tuple(issues),
    )
