"""Metadata-borne numbers (time, dose, conditions, tilt axis) are checked where they enter.

Before: ``Image(time_s="x")``, ``time_s=inf``, a NaN frame time, a negative
temperature or pressure, ``initial_dose_e_per_A2=inf`` were stored as given (or raised a raw
``ValueError``), and a file carrying them loaded without complaint; the bad value surfaced
far downstream (a NaN dose rate, a negative Arrhenius temperature).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from perovstem import Image, Series, TiltSeries
from perovstem.errors import CalibrationError, DataError, ParameterError
from perovstem.io import load, save_image

_IMG = np.ones((8, 8))
_STACK = np.ones((3, 8, 8))


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("time_s", "x", "`time_s` must be a number in s, got 'x'"),
        ("time_s", np.inf, "`time_s` must be finite (s), got inf"),
        ("time_s", np.nan, "`time_s` must be finite (s), got nan"),
        ("dose_e_per_A2", "x", "`dose_e_per_A2` must be a number in e⁻/Å², got 'x'"),
        ("dose_e_per_A2", np.inf, "`dose_e_per_A2` must be finite and >= 0 e⁻/Å², got inf"),
        ("dose_e_per_A2", -5.0, "got -5.0"),
    ],
)
def test_image_metadata_numbers_are_checked(field, value, expect):
    with pytest.raises(ParameterError) as info:
        Image(_IMG, 1.0, **{field: value})
    assert expect in str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("time_s", [0.0, np.nan, 2.0], "`time_s` must be finite (s), got nan (frame 1)"),
        ("time_s", "x", "`time_s` must be numbers in s, got 'x'"),
        ("dose_e_per_A2", [1.0, np.inf, 1.0], "got inf (frame 1)"),
        ("temperature_K", -5.0, "`temperature_K` must be finite and > 0 K, got -5.0"),
        ("temperature_K", [300.0, 0.0, 300.0], "> 0 K, got 0.0 (frame 1)"),
        ("pressure_Pa", [1.0, 2.0, -3.0], "`pressure_Pa` must be finite and >= 0 Pa, got -3.0"),
        ("initial_dose_e_per_A2", np.inf, "`initial_dose_e_per_A2` must be finite and >= 0"),
        ("initial_dose_e_per_A2", "x", "`initial_dose_e_per_A2` must be a number"),
        ("gas", 5, "`gas` must be a string, got 5"),
    ],
)
def test_series_metadata_numbers_are_checked(field, value, expect):
    with pytest.raises(ParameterError) as info:
        Series(_STACK, 1.0, **{field: value})
    assert expect in str(info.value)


@pytest.mark.parametrize("value", ["x", np.nan, np.inf])
def test_tilt_axis_is_checked(value):
    with pytest.raises(ParameterError, match="`tilt_axis_deg` must be a finite number"):
        TiltSeries(_STACK, [-10.0, 0.0, 10.0], 1.0, tilt_axis_deg=value)


def test_valid_metadata_still_passes():
    img = Image(_IMG, 1.0, dose_e_per_A2=0, time_s=0)
    assert img.dose_e_per_A2 == 0.0 and img.time_s == 0.0
    # a frame recorded before the time origin (a trigger: heating, gas, beam on)
    assert Image(_IMG, 1.0, time_s=-2.5).time_s == -2.5
    s = Series(_STACK, 1.0, time_s=[0, 1, 2], initial_dose_e_per_A2=None, pressure_Pa=0.0)
    assert s.initial_dose_e_per_A2 == 0.0
    assert TiltSeries(_STACK, [-10, 0, 10], 1.0, tilt_axis_deg=np.float32(3)).tilt_axis_deg == 3


def _npz_with(tmp_path, obj, meta=None, arrays=None):
    p = tmp_path / "good.npz"
    save_image(obj, p)
    with np.load(p) as z:
        files = {k: z[k] for k in z.files}
    m = json.loads(str(files["perovstem_meta"]))
    m.update(meta or {})
    files["perovstem_meta"] = np.array(json.dumps(m))
    files.update(arrays or {})
    bad = tmp_path / "bad.npz"
    np.savez(bad, **files)
    return bad


@pytest.mark.parametrize(
    ("obj", "meta", "arrays", "expect"),
    [
        (Image(_IMG, 1.0, time_s=1.0), {"time_s_scalar": "x"}, None, "`time_s` must be a number"),
        # was loaded as "no time stamp"
        (Image(_IMG, 1.0, time_s=1.0), {"time_s_scalar": float("inf")}, None, "got inf"),
        (Image(_IMG, 1.0, dose_e_per_A2=5.0), {"dose_e_per_A2": "x"}, None, "`dose_e_per_A2`"),
        (Series(_STACK, 1.0, time_s=[0, 1, 2]), None, {"time_s": np.array([0, np.nan, 2])}, "nan"),
        (
            Series(_STACK, 1.0, temperature_K=300.0),
            None,
            {"temperature_K": np.array([300.0, -1.0, 300.0])},
            "`temperature_K` must be finite and > 0 K, got -1.0 (frame 1)",
        ),
        (Series(_STACK, 1.0), {"initial_dose_e_per_A2": "x"}, None, "`initial_dose_e_per_A2`"),
    ],
)
def test_a_file_with_bad_metadata_names_the_file_and_field(tmp_path, obj, meta, arrays, expect):
    bad = _npz_with(tmp_path, obj, meta, arrays)
    with pytest.raises(DataError) as info:
        load(bad)
    msg = str(info.value)
    assert msg.startswith(f"{str(bad)!r}: "), msg
    assert expect in msg, msg


def test_a_file_with_a_non_numeric_pixel_size_names_the_file(tmp_path):
    bad = _npz_with(tmp_path, Image(_IMG, 1.0), {"pixel_size_A": "x"})
    with pytest.raises(CalibrationError) as info:
        load(bad)
    assert str(bad) in str(info.value) and "'x'" in str(info.value)
