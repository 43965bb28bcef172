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


def _beam_file(tmp_path, *, tem=None, om=None, name="b.hspy"):
    p = tmp_path / name
    _hspy(p, A, SIG, tem=tem, om=om)
    return p


def test_dose_from_dm_style_metadata_names_its_sources(tmp_path):
    # RosettaSciIO maps DM's "Probe Current (nA)" to beam_current (nA), DigiScan's
    # "Sample Time" to dwell_time (s); 0.2 Å pixels (0.02 nm)
    p = _beam_file(tmp_path, tem={"beam_current": 0.05, "dwell_time": 4e-6})
    img = ps.load(p)
    expected = 0.05e-9 * 4e-6 / 1.602176634e-19 / 0.2**2
    assert img.dose_e_per_A2 == pytest.approx(expected)
    assert img.metadata["beam_current_A_source"].endswith("TEM.beam_current")
    assert img.metadata["dwell_time_s_source"].endswith("TEM.dwell_time")


@pytest.mark.parametrize(
    ("tem", "om", "field"),
    [
        ({"beam_current": -0.05, "dwell_time": 4e-6}, {}, "TEM.beam_current"),
        ({"beam_current": float("nan"), "dwell_time": 4e-6}, {}, "TEM.beam_current"),
        ({"beam_current": 1e9, "dwell_time": 4e-6}, {}, "TEM.beam_current"),  # 1 A
        ({"beam_current": 0.05, "dwell_time": 1e9}, {}, "TEM.dwell_time"),
        (
            {},
            {"Optics": {"LastMeasuredScreenCurrent": "-2e-11"}, "Scan": {"DwellTime": "2e-6"}},
            "Optics.LastMeasuredScreenCurrent",
        ),
    ],
)
def test_absurd_beam_values_give_no_dose_and_a_warning_naming_field_and_file(
    tmp_path, tem, om, field
):
    p = _beam_file(tmp_path, tem=tem, om=om, name="absurd_beam.hspy")
    with pytest.warns(UserWarning, match=rf"absurd_beam\.hspy.*{field}"):
        img = ps.load(p)
    assert img.dose_e_per_A2 is None


def test_absurd_dose_from_plausible_looking_fields_is_refused(tmp_path):
    # 0.9 µA for 0.5 s on a 0.2 Å pixel: 7e16 e⁻/Å² in one frame
    p = _beam_file(tmp_path, tem={"beam_current": 900.0, "dwell_time": 0.5}, name="hot.hspy")
    with pytest.warns(UserWarning, match=r"hot\.hspy.*dose per frame"):
        img = ps.load(p)
    assert img.dose_e_per_A2 is None


def test_zero_beam_current_means_not_recorded_and_falls_back(tmp_path):
    # GMS writes 0 when the microscope does not report the probe current: not an error
    om = {"Optics": {"LastMeasuredScreenCurrent": "5e-11"}}
    p = _beam_file(tmp_path, tem={"beam_current": 0.0, "dwell_time": 2e-6}, om=om)
    img = ps.load(p)
    assert img.dose_e_per_A2 == pytest.approx(5e-11 * 2e-6 / 1.602176634e-19 / 0.04)
    assert img.metadata["beam_current_A_source"].endswith("LastMeasuredScreenCurrent")
