"""Loading and validating audio: anything libsndfile reads, as mono float64 at 16 kHz.

The header is checked before any sample is read, so an hour-long upload costs a header read,
not an hour of decoded audio: at most ``max_duration_s`` seconds are ever decoded.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from vocalborn_tasks.errors import AudioError

from ._signal import resample_poly

__all__ = [
    "SAMPLE_RATE",
    "AudioInput",
    "AudioMeta",
    "LoadedAudio",
    "content_hash",
    "load_audio",
    "probe_audio",
]

logger = logging.getLogger(__name__)

#: Every analysis runs at this rate: enough for speech (8 kHz bandwidth), cheap to process.
SAMPLE_RATE = 16_000

#: What callers may pass: a path, or the file's bytes.
AudioInput = str | os.PathLike[str] | bytes

_MIN_RATE = 4_000
_MAX_RATE = 384_000
_MAX_CHANNELS = 32
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class AudioMeta:
    """What the header says, before any sample is decoded."""

    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        """Duration in seconds according to the header."""
        return self.frames / self.sample_rate if self.sample_rate else 0.0


@dataclass(frozen=True, slots=True)
class LoadedAudio:
    """Mono samples at :data:`SAMPLE_RATE`, plus what was done to get them."""

    samples: NDArray[np.float64]
    meta: AudioMeta
    truncated: bool
    clipped_fraction: float

    @property
    def duration_s(self) -> float:
        """Duration in seconds of the samples actually analysed."""
        return self.samples.size / SAMPLE_RATE


def _open(source: AudioInput) -> sf.SoundFile:
    handle: str | BinaryIO
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise AudioError("the audio file is empty (0 bytes)", code="empty")
        handle = io.BytesIO(bytes(source))
    else:
        path = Path(os.fspath(source))
        try:
            size = path.stat().st_size
        except OSError as exc:
            message = f"cannot read the audio file: {exc.strerror}"
            raise AudioError(message, code="unreadable") from exc
        if size == 0:
            raise AudioError("the audio file is empty (0 bytes)", code="empty")
        handle = str(path)
    try:
        return sf.SoundFile(handle)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        reason = getattr(exc, "error_string", None) or type(exc).__name__
        raise AudioError(f"not a readable audio file ({reason})", code="unreadable") from exc


def _meta(f: sf.SoundFile) -> AudioMeta:
    return AudioMeta(
        sample_rate=int(f.samplerate),
        channels=int(f.channels),
        frames=max(int(f.frames), 0),
        format=str(f.format),
        subtype=str(f.subtype),
    )


def _check_meta(meta: AudioMeta) -> None:
    if not _MIN_RATE <= meta.sample_rate <= _MAX_RATE:
        raise AudioError(
            f"sample rate {meta.sample_rate} Hz is outside {_MIN_RATE}-{_MAX_RATE} Hz",
            code="unsupported_format",
        )
    if not 1 <= meta.channels <= _MAX_CHANNELS:
        raise AudioError(f"{meta.channels} channels are not supported", code="unsupported_format")
    if meta.frames == 0:
        raise AudioError("the audio file holds no samples", code="empty")


def probe_audio(source: AudioInput) -> AudioMeta:
    """Read only the header of ``source``.

    Raises:
        AudioError: ``unreadable``, ``empty`` or ``unsupported_format``.
    """
    with _open(source) as f:
        meta = _meta(f)
    _check_meta(meta)
    return meta


def load_audio(
    source: AudioInput,
    *,
    max_duration_s: float,
    min_duration_s: float,
) -> LoadedAudio:
    """Decode at most ``max_duration_s`` of ``source``, mix to mono and resample to 16 kHz.

    Args:
        source: a path or the file's bytes.
        max_duration_s: longer files are cut to this length (``truncated`` is then true);
            only that many frames are decoded, so memory is bounded by it.
        min_duration_s: shorter files are refused.

    Raises:
        AudioError: ``unreadable``, ``empty``, ``unsupported_format`` or ``too_short``.
    """
    with _open(source) as f:
        meta = _meta(f)
        _check_meta(meta)
        cap = int(max_duration_s * meta.sample_rate)
        want = min(meta.frames, cap)
        try:
            data = f.read(frames=want, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError, MemoryError) as exc:
            reason = getattr(exc, "error_string", None) or str(exc)
            message = f"the audio data cannot be decoded ({reason})"
            raise AudioError(message, code="unreadable") from exc
    if data.shape[0] == 0:
        raise AudioError("the audio file holds no samples", code="empty")
    if not np.isfinite(data).all():
        raise AudioError("the audio holds NaN or infinite samples", code="unreadable")
    peak = np.abs(data).max(axis=1)
    clipped = float(np.mean(peak >= 0.999))
    mono = data.mean(axis=1, dtype=np.float64)
    del data
    if meta.sample_rate != SAMPLE_RATE:
        g = gcd(meta.sample_rate, SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // g, meta.sample_rate // g).astype(np.float64)
    duration = mono.size / SAMPLE_RATE
    if duration < min_duration_s:
        raise AudioError(
            f"the recording lasts {duration:.2f} s; at least {min_duration_s:.2f} s are needed",
            code="too_short",
        )
    truncated = meta.frames > want
    if truncated:
        logger.info("audio of %.1f s capped to %.1f s", meta.duration_s, max_duration_s)
    return LoadedAudio(samples=mono, meta=meta, truncated=truncated, clipped_fraction=clipped)


def content_hash(source: AudioInput) -> str:
    """SHA-256 of the file's bytes, read in chunks so memory stays constant.

    Raises:
        AudioError: ``unreadable`` when the file cannot be opened.
    """
    digest = hashlib.sha256()
    if isinstance(source, bytes | bytearray | memoryview):
        digest.update(source)
        return digest.hexdigest()
    try:
        with open(os.fspath(source), "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise AudioError(f"cannot read the audio file: {exc.strerror}", code="unreadable") from exc
    return digest.hexdigest()
