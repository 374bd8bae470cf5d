"""The benchmark scripts are run on purpose, not in CI; this only checks that each still imports
(the code it measures moves under it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda path: path.stem)
def test_bench_script_imports(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As `python bench/<script>.py` runs it: its folder on the path (scripts import each other),
    # and the module registered under its name (dataclasses look their module up there).
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(script.stem, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, script.stem, module)
    spec.loader.exec_module(module)  # the scripts do their work only under __main__
    assert callable(getattr(module, "main", None))
