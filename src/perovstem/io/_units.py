"""Unit conversion at the I/O boundary (pint)."""

from __future__ import annotations

import functools
import math
from typing import Any

from perovstem.errors import CalibrationError

_UNDEFINED = {"", "<undefined>", "undefined", "none", "px", "pixel", "pixels", "pix"}
_ALIASES = {
    "Å": "angstrom",
    "A": "angstrom",
    "Ang": "angstrom",
    "µm": "micrometer",
    "um": "micrometer",
    "μm": "micrometer",
    "1/nm": None,
}


@functools.lru_cache(maxsize=1)
def _ureg() -> Any:
    import pint

    return pint.UnitRegistry()


def length_to_A(value: float, units: Any, *, what: str) -> float:
    """Convert a length ``value`` in ``units`` to Å.

    Raises :class:`CalibrationError` naming ``what`` when the unit is undefined or not a length,
    or the value is not a positive finite number.
    """
    u = "" if units is None else str(units).strip()
    if u.lower() in _UNDEFINED or (isinstance(units, float) and math.isnan(units)):
        raise CalibrationError(
            f"{what}: no usable spatial calibration (units {units!r}, scale {value!r}); "
            "pass pixel_size= (Å) to set it"
        )
    name = _ALIASES.get(u, u)
    if name is None:
        raise CalibrationError(f"{what}: axis is in reciprocal units {units!r}, not a length")
    try:
        q = _ureg().Quantity(float(value), name).to("angstrom").magnitude
    except Exception:
        raise CalibrationError(
            f"{what}: cannot interpret calibration {value!r} {units!r} as a length"
        ) from None
    if not (math.isfinite(q) and q > 0):
        raise CalibrationError(f"{what}: pixel size must be > 0, got {value!r} {units!r}")
    return float(q)
