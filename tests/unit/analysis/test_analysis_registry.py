"""The Analyzer protocol and load_analyzer's registry by import path."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest

import vocalborn_tasks.analysis as analysis
from vocalborn_tasks.analysis import Analyzer, BuiltinAnalyzer, load_analyzer
from vocalborn_tasks.errors import ConfigurationError
from vocalborn_tasks.models import AnalysisResult, AnalyzerInfo


class FakeAnalyzer:
    name = "fake"
    version = "0.0.1"

    def analyze(self, recording, reference, *, language=None, on_progress=None, options=None):  # type: ignore[no-untyped-def]
        return AnalysisResult(
            overall_score=50.0,
            level=3,
            pronunciation_accuracy=50.0,
            fluency_score=50.0,
            rhythm_score=50.0,
            tone_score=50.0,
            clarity_score=50.0,
            completeness_score=50.0,
            reliable=True,
            analyzer=AnalyzerInfo(name=self.name, version=self.version),
            processing_time_s=0.0,
        )


@pytest.fixture
def plugin_module() -> Iterator[str]:
    module = types.ModuleType("fake_analyzer_plugin")
    module.FakeAnalyzer = FakeAnalyzer  # type: ignore[attr-defined]
    module.instance = FakeAnalyzer()  # type: ignore[attr-defined]
    module.factory = lambda: FakeAnalyzer()  # type: ignore[attr-defined]
    module.not_an_analyzer = object()  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module.__name__
    del sys.modules[module.__name__]


def test_public_names_sorted() -> None:
    assert analysis.__all__ == sorted(analysis.__all__)
    for name in analysis.__all__:
        assert hasattr(analysis, name)


@pytest.mark.parametrize("spec", [None, "builtin", " builtin "])
def test_builtin(spec: str | None) -> None:
    analyzer = load_analyzer(spec)
    assert isinstance(analyzer, BuiltinAnalyzer)
    assert isinstance(analyzer, Analyzer)


def test_builtin_by_path() -> None:
    analyzer = load_analyzer("vocalborn_tasks.analysis:BuiltinAnalyzer")
    assert isinstance(analyzer, BuiltinAnalyzer)


@pytest.mark.parametrize("attr", ["FakeAnalyzer", "instance", "factory"])
def test_custom(plugin_module: str, attr: str) -> None:
    analyzer = load_analyzer(f"{plugin_module}:{attr}")
    assert isinstance(analyzer, FakeAnalyzer)
    assert analyzer.analyze(b"", b"").level == 3


@pytest.mark.parametrize(
    "spec",
    [
        "no_such_module_xyz:Thing",
        "vocalborn_tasks.analysis:NoSuchThing",
        "vocalborn_tasks.analysis",
        ":attr",
        "fake_analyzer_plugin:not_an_analyzer",
    ],
)
def test_bad_specs(plugin_module: str, spec: str) -> None:
    with pytest.raises(ConfigurationError):
        load_analyzer(spec)
