from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session", autouse=True)
def _plugin_path() -> None:
    """Make the test plugin module importable (also for subprocesses via PYTHONPATH)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))


def write_config(folder: Path, body: str, name: str = "analysis.toml") -> Path:
    p = folder / name
    p.write_text(body, encoding="utf-8")
    return p
