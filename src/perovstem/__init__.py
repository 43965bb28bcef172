"""perovstem: quantitative HAADF-STEM, in-situ and tomography analysis of halide perovskite
nanocrystal degradation.

Sub-packages are imported lazily so that ``import perovstem`` stays fast:
``perovstem.io``, ``perovstem.simulate``, ``perovstem.atoms``, ``perovstem.insitu``,
``perovstem.tomo``, ``perovstem.quantify``, ``perovstem.plot``, ``perovstem.report``,
``perovstem.pipeline``.
"""

from __future__ import annotations

import importlib
from typing import Any

from perovstem._data import Image, Series, TiltSeries, from_hyperspy
from perovstem.errors import (
    CalibrationError,
    DataError,
    FileFormatError,
    ParameterError,
    PerovstemError,
)

__version__ = "0.1.0"

_SUBPACKAGES = {
    "io",
    "simulate",
    "atoms",
    "insitu",
    "tomo",
    "quantify",
    "plot",
    "report",
    "pipeline",
    "cli",
}

__all__ = [
    "Image",
    "Series",
    "TiltSeries",
    "from_hyperspy",
    "PerovstemError",
    "FileFormatError",
    "CalibrationError",
    "ParameterError",
    "DataError",
    "load",
    "__version__",
    *sorted(_SUBPACKAGES),
]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"perovstem.{name}")
    if name == "load":
        from perovstem.io import load

        return load
    raise AttributeError(f"module 'perovstem' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
