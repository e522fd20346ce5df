"""The :class:`Analyzer` protocol, the built-in analyzer and the registry by import path."""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Protocol, runtime_checkable

from pydantic import JsonValue

from vocalborn_tasks.errors import AudioError, ConfigurationError
from vocalborn_tasks.models import AnalysisResult, AnalyzerInfo

from .advice import SUPPORTED_LANGUAGES, advise, is_supported, locale_for
from .cache import CacheInfo, LRUCache
from .compare import compare
from .io import AudioInput, content_hash, load_audio, probe_audio
from .options import AnalysisOptions
from .profile import FRAME_S, WARPS, Profile, build_profile
from .scoring import WRONG_SENTENCE_PRON, score
from .units import analyse_units

__all__ = [
    "Analyzer",
    "BuiltinAnalyzer",
    "ProgressCallback",
    "analyze_recording",
    "default_analyzer",
    "load_analyzer",
]

logger = logging.getLogger(__name__)

#: ``on_progress(step, percent)``: step name and 0-100 progress.
ProgressCallback = Callable[[str, float], None]

_VERSION = "1.4.0"


@runtime_checkable
class Analyzer(Protocol):
    """Anything that turns a recording and its reference into an :class:`AnalysisResult`.

    A host plugs in its own model by implementing this and naming it in the configuration
    (``"package.module:attr"``, see :func:`load_analyzer`). Implementations must be safe to
    call repeatedly from one worker process; raise :class:`~vocalborn_tasks.errors.AudioError`
    for bad input.
    """

    name: str
    version: str

    def analyze(
        self,
        recording: AudioInput,
        reference: AudioInput,
        *,
        language: str | None = None,
        on_progress: ProgressCallback | None = None,
        options: AnalysisOptions | None = None,
    ) -> AnalysisResult:
        """Compare ``recording`` with ``reference``."""
        ...


def _clean(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else round(value, 4)


class BuiltinAnalyzer:
    """Signal-processing analyzer: no model weights, numpy and scipy only.

    Keeps a bounded LRU cache of reference profiles keyed by the SHA-256 of the reference
    file's content (plus the options they depend on): one therapist recording is compared with
    many patients' attempts, and its features need computing once.
    """

    name = "vocalborn-builtin"
    version = _VERSION

    def __init__(self, options: AnalysisOptions | None = None) -> None:
        self.options = options or AnalysisOptions()
        self._references: LRUCache[Profile] = LRUCache(self.options.reference_cache_size)

    def cache_info(self) -> CacheInfo:
        """Hit and miss counters of the reference cache."""
        return self._references.info()

    def _reference(self, reference: AudioInput, options: AnalysisOptions) -> tuple[Profile, bool]:
        try:
            key = f"{content_hash(reference)}:{options.reference_key()}"
            cached = self._references.get(key)
            if cached is not None:
                return cached, True
            audio = load_audio(
                reference,
                max_duration_s=options.max_duration_s,
                min_duration_s=options.min_duration_s,
            )
            profile = build_profile(audio)
        except AudioError as exc:
            raise AudioError(
                f"the reference recording cannot be used ({exc.code}): {exc.message}",
                code="reference_unusable",
            ) from exc
        self._references.put(key, profile)
        return profile, False

    def analyze(
        self,
        recording: AudioInput,
        reference: AudioInput,
        *,
        language: str | None = None,
        on_progress: ProgressCallback | None = None,
        options: AnalysisOptions | None = None,
        reference_text: str | None = None,
    ) -> AnalysisResult:
        """Compare ``recording`` with ``reference``; see :func:`analyze_recording`."""
        opts = options or self.options
        started = time.perf_counter()

        def progress(step: str, percent: float) -> None:
            if on_progress is not None:
                on_progress(step, percent)

        progress("reference", 5.0)
        ref, hit = self._reference(reference, opts)
        progress("loading", 20.0)
        meta = probe_audio(recording)
        limit = opts.max_length_ratio * ref.source_duration_s + opts.length_slack_s
        if meta.duration_s > limit:
            raise AudioError(
                f"the recording lasts {meta.duration_s:.1f} s, far longer than its "
                f"{ref.source_duration_s:.1f} s reference (limit {limit:.1f} s)",
                code="too_long",
            )
        audio = load_audio(
            recording, max_duration_s=opts.max_duration_s, min_duration_s=opts.min_duration_s
        )
        progress("features", 35.0)
        sample = build_profile(audio, warps=WARPS if opts.speaker_normalisation else (1.0,))
        progress("alignment", 60.0)
        cmp = compare(sample, ref)
        progress("scoring", 80.0)
        scores = score(cmp, sample, language=language)
        progress("units", 85.0)
        units = analyse_units(
            cmp,
            sample,
            ref,
            language=language,
            reference_text=reference_text,
            judge=scores.pronunciation >= WRONG_SENTENCE_PRON,
        )
        progress("advice", 90.0)
        advice = advise(
            cmp,
            sample,
            scores,
            language=language,
            max_duration_s=opts.max_duration_s,
            units=units.flags,
        )

        metrics: dict[str, JsonValue] = {
            "alignment_cost": _clean(cmp.cost),
            "worst_window_cost": _clean(cmp.worst.value),
            "worst_window_peak": _clean(cmp.peak),
            "worst_window_s": [round(cmp.worst.start_s, 2), round(cmp.worst.end_s, 2)],
            "coverage": _clean(cmp.coverage),
            "missing_start": _clean(cmp.missing_start),
            "missing_end": _clean(cmp.missing_end),
            "tempo_ratio": _clean(cmp.tempo),
            "extra_pauses": len(cmp.extra_pauses),
            "extra_pause_s": _clean(sum(p.value for p in cmp.extra_pauses)),
            "rhythm_deviation": _clean(cmp.rhythm_dev),
            "pitch_deviation_st": _clean(cmp.pitch_dev),
            "pitch_worst_st": _clean(cmp.pitch_worst.value) if cmp.pitch_worst else None,
            "pitch_pairs": cmp.pitch_pairs,
            "speaker_warp": cmp.warp,
            "snr_db": _clean(sample.snr_db),
            "hnr_db": _clean(sample.hnr_db),
            "spectral_entropy": _clean(sample.entropy),
            "clipped_fraction": _clean(sample.clipped_fraction),
            "speech_s": _clean(float(sample.speech.sum()) * FRAME_S),
            "active_s": _clean(sample.active_s),
            "reference_active_s": _clean(ref.active_s),
            "duration_s": _clean(sample.duration_s),
            "reference_duration_s": _clean(ref.duration_s),
            "truncated": sample.truncated,
            "reference_cached": hit,
            "language_supported": is_supported(language),
            "supported_languages": list(SUPPORTED_LANGUAGES),
            **units.metrics,
        }
        result = AnalysisResult(
            overall_score=scores.overall,
            level=scores.level,
            pronunciation_accuracy=scores.pronunciation,
            fluency_score=scores.fluency,
            rhythm_score=scores.rhythm,
            tone_score=scores.tone,
            clarity_score=scores.clarity,
            completeness_score=scores.completeness,
            reliable=scores.reliable,
            reliability_issues=list(scores.reliability_issues),
            improvement_areas=advice.improvement_areas,
            suggestions=advice.suggestions,
            findings=advice.findings,
            language=language,
            advice_language=locale_for(language),
            segments=units.segments,
            metrics=metrics,
            analyzer=AnalyzerInfo(name=self.name, version=self.version),
            processing_time_s=round(time.perf_counter() - started, 4),
        )
        progress("done", 100.0)
        logger.debug("analysis done: overall %.1f level %d", result.overall_score, result.level)
        return result


@lru_cache(maxsize=1)
def default_analyzer() -> BuiltinAnalyzer:
    """The analyzer :func:`analyze_recording` uses, built on first use.

    Cached (not a module-level instance) so importing the package builds nothing, while the
    reference cache still survives between calls in one process, which is its whole point.
    ``default_analyzer.cache_clear()`` drops it.
    """
    return BuiltinAnalyzer()


def analyze_recording(
    recording: AudioInput,
    reference: AudioInput,
    *,
    language: str | None = None,
    on_progress: ProgressCallback | None = None,
    options: AnalysisOptions | None = None,
    reference_text: str | None = None,
) -> AnalysisResult:
    """Compare a patient's recording with the therapist's reference of the same sentence.

    Args:
        recording: the patient's recording: a path or the file's bytes (WAV, FLAC, OGG, ...).
        reference: the reference recording, likewise.
        language: BCP 47 tag; Chinese tags give Traditional Chinese advice, tonal languages
            weight the tone score higher.
        on_progress: called as ``on_progress(step, percent)`` at each stage, ending at 100.
            Exceptions it raises propagate (a task may use that to abort).
        options: limits; the defaults suit one spoken sentence.
        reference_text: the sentence the reference speaks (words; Chinese characters or
            tone-numbered pinyin), when the host has it: labels ``segments`` and the findings
            ("the 3rd word ("boat")"). When its unit count cannot be matched to the
            recording the units stay unlabelled and ``metrics.units_label_issue`` says why.

    Returns:
        The scores (0-100), level (1 best .. 5 worst), advice and raw metrics.

    Raises:
        AudioError: bad input, with a stable ``code`` (see the package docstring).
    """
    return default_analyzer().analyze(
        recording,
        reference,
        language=language,
        on_progress=on_progress,
        options=options,
        reference_text=reference_text,
    )


def load_analyzer(spec: str | None) -> Analyzer:
    """The analyzer named by ``spec``.

    Args:
        spec: ``None`` or ``"builtin"`` for :class:`BuiltinAnalyzer`; otherwise
            ``"package.module:attr"`` where ``attr`` is an analyzer instance, or a class or
            factory called without arguments that returns one.

    Raises:
        ConfigurationError: the spec is malformed, cannot be imported, or does not give an
            object with ``name``, ``version`` and ``analyze``.
    """
    if spec is None or spec.strip() in {"", "builtin"}:
        return BuiltinAnalyzer()
    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"analyzer {spec!r} must be 'builtin' or 'package.module:attribute'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import analyzer module {module_name!r}: {exc}") from exc
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ConfigurationError(f"{module_name!r} has no attribute {attr!r}") from exc
    candidate = target
    if isinstance(candidate, type) or (not isinstance(candidate, Analyzer) and callable(candidate)):
        try:
            candidate = candidate()
        except Exception as exc:
            raise ConfigurationError(f"building analyzer {spec!r} failed: {exc}") from exc
    if not isinstance(candidate, Analyzer):
        raise ConfigurationError(
            f"{spec!r} is not an analyzer: it needs 'name', 'version' and 'analyze(...)'"
        )
    if not isinstance(candidate.name, str) or not isinstance(candidate.version, str):
        raise ConfigurationError(f"{spec!r}: 'name' and 'version' must be strings")
    return candidate
