"""Tunable limits of an analysis, as one frozen, validated model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AnalysisOptions"]


class AnalysisOptions(BaseModel):
    """Limits and switches of one analysis. All have safe defaults.

    Attributes:
        max_duration_s: at most this much of either file is decoded and analysed; longer
            files are capped (the result says so). Bounds time and memory.
        min_duration_s: shorter recordings are refused (``too_short``).
        max_length_ratio: a recording longer than this many times its reference, plus
            ``length_slack_s``, is refused (``too_long``) from its header alone.
        length_slack_s: see ``max_length_ratio``; keeps short references from being too strict.
        reference_cache_size: how many reference profiles a :class:`BuiltinAnalyzer` keeps.
        speaker_normalisation: try several vocal-tract-length warps for the recording and keep
            the best match (a child or a woman against a man's reference).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_duration_s: float = Field(default=60.0, gt=0.0, le=3600.0)
    min_duration_s: float = Field(default=0.3, ge=0.0, le=60.0)
    max_length_ratio: float = Field(default=4.0, ge=1.0, le=100.0)
    length_slack_s: float = Field(default=5.0, ge=0.0, le=600.0)
    reference_cache_size: int = Field(default=64, ge=0, le=100_000)
    speaker_normalisation: bool = True

    def reference_key(self) -> str:
        """The part of the options a cached reference profile depends on."""
        return f"{self.max_duration_s:g}:{self.min_duration_s:g}"
