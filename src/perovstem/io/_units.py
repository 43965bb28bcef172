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
        raise CalibrationError(_reciprocal_message(what, units))
    try:
        q = _ureg().Quantity(float(value), name).to("angstrom").magnitude
    except Exception:
        if is_reciprocal_length(u):
            raise CalibrationError(_reciprocal_message(what, units)) from None
        raise CalibrationError(
            f"{what}: cannot interpret calibration {value!r} {units!r} as a length"
        ) from None
    if not (math.isfinite(q) and q > 0):
        raise CalibrationError(f"{what}: pixel size must be > 0, got {value!r} {units!r}")
    return float(q)


def _reciprocal_message(what: str, units: Any) -> str:
    return (
        f"{what}: the image axes are in reciprocal units {units!r}: a diffraction pattern or "
        "FFT, not a real-space image (pixel_size= would not make it one)"
    )


def is_reciprocal_length(units: Any) -> bool:
    """Whether ``units`` (e.g. ``"1/nm"``, ``"1 / µm"``, ``"nm^-1"``, ``"1/Å"``) is an
    inverse length, the calibration of a diffraction pattern or FFT."""
    u = "" if units is None else str(units).strip()
    if not u:
        return False
    if _ALIASES.get(u, "") is None:
        return True
    # pint spells micro "u" and angstrom in full
    u = u.replace("µ", "u").replace("μ", "u").replace("Å", "angstrom")
    try:
        dim = _ureg().Unit(u).dimensionality
    except Exception:
        return False
    return dict(dim) == {"[length]": -1}
