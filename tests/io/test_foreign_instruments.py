"""Files as other instruments and programs write them: stack axes that are not frames, dose
metadata, detector choice, reciprocal calibrations (generated with the libraries' writers)."""

from __future__ import annotations

import numpy as np
import pytest

import perovstem as ps
from perovstem.errors import DataError

A = np.random.default_rng(1).random((30, 40)).astype(np.float32)


def _hspy(path, data, axes, *, title="HAADF", signal_type="", tem=None, om=None):
    from rsciio.hspy import file_writer

    md = {"General": {"title": title}, "Signal": {"signal_type": signal_type}}
    if tem is not None:
        md["Acquisition_instrument"] = {"TEM": tem}
    file_writer(
        str(path),
        {
            "data": data,
            "axes": axes,
            "metadata": md,
            "original_metadata": om or {},
            "tmp_parameters": {},
            "attributes": {"_lazy": False},
            "package_info": {"name": "hyperspy", "version": "2.0"},
            "learning_results": {},
            "models": {},
        },
    )


SIG = [
    {"name": "y", "size": 30, "scale": 0.02, "offset": 0, "units": "nm", "navigate": False},
    {"name": "x", "size": 40, "scale": 0.02, "offset": 0, "units": "nm", "navigate": False},
]


@pytest.mark.parametrize(
    ("name", "units", "scale", "offset"),
    [
        ("Energy loss", "eV", 1.0, 300.0),  # a DM EELS spectrum image as rsciio reads it
        ("x", "nm", 3.7, 0.0),  # a line scan
        ("bin_outer_angle", "mrad", 1e-3, 5e-4),  # prismatic detector bins, not tilts
    ],
)
def test_stack_axis_that_is_not_frames_or_tilts_is_refused(tmp_path, name, units, scale, offset):
    # old code: a Series of 6 "frames" (eV, nm) or a TiltSeries over 0.0003° (mrad)
    p = tmp_path / "si.hspy"
    nav = {"name": name, "size": 6, "scale": scale, "offset": offset, "units": units}
    _hspy(p, np.stack([A] * 6), [{**nav, "navigate": True}, *SIG])
    with pytest.raises(DataError, match=f"stack axis '{name}'.*{units}"):
        ps.load(p)


def test_dimensionless_stack_axis_is_frames_not_tilt_angles(tmp_path):
    # pint treats "counts" as dimensionless, convertible to degrees (old code: a TiltSeries)
    p = tmp_path / "s.hspy"
    nav = {"name": "frame", "size": 4, "scale": 1.0, "offset": 0.0, "units": "counts"}
    _hspy(p, np.stack([A] * 4), [{**nav, "navigate": True}, *SIG])
    s = ps.load(p)
    assert type(s) is ps.Series and s.n_frames == 4
