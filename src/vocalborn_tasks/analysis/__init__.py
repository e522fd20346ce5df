"""The audio analysis engine: compare a patient's recording with a therapist's reference.

Usable on its own, without Celery or Redis::

    from vocalborn_tasks.analysis import analyze_recording

    result = analyze_recording("attempt.wav", "reference.wav", language="zh-TW")
    result.overall_score, result.level, result.improvement_areas

Pipeline (one module each): :mod:`.io` loads and validates (any libsndfile format, mono,
16 kHz, capped length), :mod:`.features` frames, spectra, noise floor, speech detection and
speaker-normalised cepstra, :mod:`.pitch` a vectorised YIN pitch tracker and harmonicity,
:mod:`.profile` gathers what one recording alone yields (cached for references),
:mod:`.align` subsequence DTW, :mod:`.compare` the measurements along the alignment,
:mod:`.scoring` the 0-100 scores, level and reliability, :mod:`.advice` the findings and
suggestions (English, Traditional Chinese), :mod:`.analyzer` the :class:`Analyzer` protocol,
the built-in analyzer with its reference cache, and :func:`load_analyzer`.

Bad input raises :class:`vocalborn_tasks.errors.AudioError` (permanent) with one of these
stable ``code`` values:

=====================  ====================================================================
``unreadable``         missing file, not audio, corrupt header or data, NaN/inf samples
``unsupported_format`` sample rate outside 4-384 kHz, more than 32 channels
``empty``              0 bytes, or a header with no samples
``too_short``          shorter than ``AnalysisOptions.min_duration_s``
``too_long``           far longer than its reference (``max_length_ratio``); files longer
                       than ``max_duration_s`` are capped instead, and the result says so
``no_speech``          nothing above the noise floor long enough to be speech
``reference_unusable`` the reference itself fails one of the checks above (its own code
                       is named in the message)
=====================  ====================================================================
"""

from .analyzer import (
    Analyzer,
    BuiltinAnalyzer,
    ProgressCallback,
    analyze_recording,
    default_analyzer,
    load_analyzer,
)
from .io import AudioInput
from .options import AnalysisOptions

__all__ = [
    "AnalysisOptions",
    "Analyzer",
    "AudioInput",
    "BuiltinAnalyzer",
    "ProgressCallback",
    "analyze_recording",
    "default_analyzer",
    "load_analyzer",
]
