"""Where recordings come from, and the rules that keep requests inside the allowed places.

A request names each recording as a local path or a URI. Plain paths and ``file://`` URIs are
read directly, but only under ``TaskSettings.recording_roots`` when those are set (symlinks and
``..`` are resolved first, so nothing escapes a root). Any other scheme must be listed in
``recording_schemes`` and is read by the host's :class:`RecordingResolver`, which can also map a
bare practice record id to its two recordings (the seed's call form).

The same checks run twice: in the caller before anything is queued (a clear error at once),
and in the worker before a file is opened (the worker does not trust the queue).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from pydantic import JsonValue

from .config import TaskSettings
from .errors import InvalidRequestError, RecordingAccessError

__all__ = [
    "FileRecordingResolver",
    "RecordingPair",
    "RecordingResolver",
    "check_recording_location",
    "load_resolver",
    "local_path",
    "probe_audio_header",
    "warm_up_probe",
]

RecordingPair = tuple[str, str]


@runtime_checkable
class RecordingResolver(Protocol):
    """A host's bridge to its storage.

    ``locate`` runs in the caller (it may query a database); ``fetch`` runs in the worker and
    returns a local path or the file's bytes for a URI of a scheme the host handles.
    """

    async def locate(
        self, practice_record_id: str, analysis_params: dict[str, JsonValue]
    ) -> RecordingPair:
        """Return ``(recording, reference)`` locations for a practice record."""
        ...

    def fetch(self, location: str) -> bytes | Path:
        """Return the content (or a local file) behind ``location`` on the worker."""
        ...


class FileRecordingResolver:
    """The default: local files only, and no record-id lookup (there is no database to ask)."""

    async def locate(
        self, practice_record_id: str, analysis_params: dict[str, JsonValue]
    ) -> RecordingPair:
        raise InvalidRequestError(
            f"practice record {practice_record_id!r} names no recordings and no recording "
            "resolver is configured: pass recording= and reference=, or set RECORDING_RESOLVER"
        )

    def fetch(self, location: str) -> bytes | Path:
        raise RecordingAccessError(f"no resolver for {_scheme_of(location)!r} locations")


def load_resolver(settings: TaskSettings) -> RecordingResolver:
    """The resolver named by ``RECORDING_RESOLVER``, or the local-files default.

    Raises:
        ConfigurationError: the import path is wrong or the object lacks locate()/fetch().
    """
    if settings.recording_resolver is None:
        return FileRecordingResolver()
    from ._imports import load_object
    from .errors import ConfigurationError

    obj = load_object(settings.recording_resolver, "RECORDING_RESOLVER")
    if not isinstance(obj, RecordingResolver):
        raise ConfigurationError("RECORDING_RESOLVER does not provide locate() and fetch()")
    return obj


def _scheme_of(location: str) -> str:
    scheme = urlsplit(location).scheme.lower()
    # A Windows-style drive letter or a bare path has no scheme worth the name.
    return "" if len(scheme) <= 1 else scheme


def local_path(location: str) -> Path | None:
    """The local path a location names, or None when it is a URI of another scheme."""
    scheme = _scheme_of(location)
    if scheme == "":
        return Path(location)
    if scheme == "file":
        parts = urlsplit(location)
        if parts.netloc not in ("", "localhost"):
            raise RecordingAccessError("file:// URIs must not name a remote host")
        return Path(unquote(parts.path))
    return None


def check_recording_location(location: str, settings: TaskSettings, *, what: str) -> str:
    """Validate one recording location against the settings and return it normalised.

    Local paths become absolute, resolved paths that must exist as regular files under one of
    the configured roots (when roots are configured). Other URIs must use an allowed scheme.

    Raises:
        RecordingAccessError: missing file, a path outside the roots, or a refused scheme.
    """
    path = local_path(location)
    if path is None:
        scheme = _scheme_of(location)
        if scheme not in settings.recording_schemes or scheme == "file":
            raise RecordingAccessError(
                f"{what}: the {scheme!r} scheme is not allowed (allowed: "
                f"{', '.join(settings.recording_schemes) or 'none'})"
            )
        return location
    if "file" not in settings.recording_schemes:
        raise RecordingAccessError(f"{what}: local files are not allowed by RECORDING_SCHEMES")
    try:
        resolved = Path(os.path.realpath(path))
    except (OSError, ValueError) as exc:
        raise RecordingAccessError(f"{what}: {location!r} is not a usable path") from exc
    if settings.recording_roots:
        roots = [Path(os.path.realpath(r)) for r in settings.recording_roots]
        if not any(resolved.is_relative_to(root) for root in roots):
            raise RecordingAccessError(
                f"{what}: {location!r} is outside the allowed recording roots"
            )
    if not resolved.is_file():
        raise RecordingAccessError(f"{what}: no such file: {location!r}")
    return str(resolved)


def warm_up_probe() -> None:
    """Import what :func:`probe_audio_header` needs (soundfile, and numpy with it).

    That import takes 30-45 ms on a small VM and holds the GIL while it runs, so even from a
    worker thread it stalls the caller's event loop. ``TaskManager`` calls this in its file
    thread when it opens, so the first submit of a process does not pay it. Blocking: call it
    off the event loop.
    """
    import soundfile  # noqa: F401


def probe_audio_header(path: str, *, what: str) -> None:
    """Refuse a local file that is not audio libsndfile can read, from its header alone.

    This reads a few hundred bytes, so a caller learns at submit time that a file is corrupt
    or empty instead of waiting for a worker to fail on it.

    Raises:
        InvalidRequestError: with code ``unreadable_audio`` or ``empty_audio``.
    """
    import soundfile

    try:
        info = soundfile.info(path)
    except (RuntimeError, OSError, ValueError) as exc:
        raise InvalidRequestError(
            f"{what}: {Path(path).name!r} is not a readable audio file", code="unreadable_audio"
        ) from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise InvalidRequestError(f"{what}: {Path(path).name!r} holds no audio", code="empty_audio")
