"""Shared fixtures: the ../shared/data folder (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    env = os.environ.get("PEROVSTEM_SHARED_DATA")
    cand = Path(env) if env else _REPO.parent / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; the test is skipped when it is absent."""
    path = _shared_data()
    if path is None:
        pytest.skip("../shared/data is absent (set PEROVSTEM_SHARED_DATA to point at it)")
    return path


@pytest.fixture(scope="session")
def statstem_data(shared_data: Path) -> Path:
    p = shared_data / "statstem"
    if not p.is_dir():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(scope="session")
def tomo_data(shared_data: Path) -> Path:
    p = shared_data / "tomo"
    if not p.is_dir():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(scope="session")
def bench_module():
    """``bench_module("bench_kinetics")``: the module ``benchmarks/<name>.py`` (the
    benchmarks are scripts, not a package), loaded once per session."""
    import importlib.util

    loaded: dict[str, object] = {}

    def load(name: str):
        if name not in loaded:
            path = _REPO / "benchmarks" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            loaded[name] = mod
        return loaded[name]

    return load
