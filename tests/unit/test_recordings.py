from __future__ import annotations

from pathlib import Path

import pytest

from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.errors import RecordingAccessError
from vocalborn_tasks.recordings import check_recording_location


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "recordings"
    root.mkdir()
    (root / "a.wav").write_bytes(b"RIFF")
    (tmp_path / "secret.wav").write_bytes(b"RIFF")
    (root / "link.wav").symlink_to(tmp_path / "secret.wav")
    return root


def test_paths_inside_the_root_are_accepted(tree: Path) -> None:
    s = TaskSettings(recording_roots=[tree])
    assert check_recording_location(str(tree / "a.wav"), s, what="recording") == str(tree / "a.wav")
    assert check_recording_location(f"file://{tree / 'a.wav'}", s, what="recording") == str(
        tree / "a.wav"
    )


@pytest.mark.parametrize("name", ["../secret.wav", "link.wav", "missing.wav"])
def test_escapes_and_missing_files_are_refused(tree: Path, name: str) -> None:
    s = TaskSettings(recording_roots=[tree])
    with pytest.raises(RecordingAccessError):
        check_recording_location(str(tree / name), s, what="recording")


@pytest.mark.parametrize(
    "location", ["http://example.com/a.wav", "s3://bucket/a.wav", "file://otherhost/a.wav"]
)
def test_unlisted_schemes_are_refused(tree: Path, location: str) -> None:
    with pytest.raises(RecordingAccessError):
        check_recording_location(location, TaskSettings(recording_roots=[tree]), what="recording")


def test_listed_scheme_goes_to_the_resolver(tree: Path) -> None:
    s = TaskSettings(recording_schemes=["file", "s3"])
    assert check_recording_location("s3://bucket/a.wav", s, what="recording") == "s3://bucket/a.wav"


def test_directories_are_refused(tree: Path) -> None:
    with pytest.raises(RecordingAccessError, match="no such file"):
        check_recording_location(str(tree), TaskSettings(), what="recording")
