"""The perovstem error family.

Every error a user can trigger with bad input is a :class:`PerovstemError`; its message
names the file or parameter and shows the offending value.  The CLI prints the message
(no traceback) and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "PerovstemError",
    "FileFormatError",
    "CalibrationError",
    "ParameterError",
    "DataError",
    "OptionalDependencyError",
    "OutputExistsError",
]


class PerovstemError(Exception):
    """Base class of every error raised on bad user input."""


class FileFormatError(PerovstemError, OSError):
    """A file is missing, unreadable, truncated or not of the expected format."""


class CalibrationError(PerovstemError, ValueError):
    """A file has no usable spatial calibration (and none was given)."""


class ParameterError(PerovstemError, ValueError):
    """A parameter has an absurd or unsupported value."""


class DataError(PerovstemError, ValueError):
    """Array or table content is unusable (NaNs, wrong dimensionality, empty, ...)."""


class OptionalDependencyError(PerovstemError, ImportError):
    """An optional dependency is needed; the message names the pip extra."""


class OutputExistsError(PerovstemError, FileExistsError):
    """Writing would overwrite an input file or an earlier run."""
