"""The data model: calibration, dose bookkeeping, immutability, HyperSpy/xarray interop."""

from __future__ import annotations

import numpy as np
import pytest

import perovstem as ps


def test_series_dose_bookkeeping():
    s = ps.Series(
        np.zeros((4, 8, 8)),
        0.5,
        time_s=[0, 2, 4, 6],
        dose_e_per_A2=[10, 20, 30, 40],
        initial_dose_e_per_A2=5.0,
    )
    np.testing.assert_allclose(s.cumulative_dose_e_per_A2, [15, 35, 65, 105])
    np.testing.assert_allclose(s.dose_rate_e_per_A2_s, [5, 10, 15, 20])
    t = s.frames_table()
    assert list(t.columns[:4]) == ["frame", "time_s", "dose_e_per_A2", "cumulative_dose_e_per_A2"]
    assert t["cumulative_dose_e_per_A2"].iloc[-1] == 105
    f = s.frame(2)
    assert isinstance(f, ps.Image) and f.dose_e_per_A2 == 30 and f.time_s == 4


def test_scalar_conditions_broadcast_to_frames():
    s = ps.Series(np.zeros((3, 4, 4)), 1.0, temperature_K=373.0, pressure_Pa=100.0, gas="H2O")
    np.testing.assert_array_equal(s.temperature_K, [373.0] * 3)
    assert s.frames_table()["gas"].tolist() == ["H2O"] * 3


def test_replace_returns_copy_and_never_mutates():
    a = np.arange(16.0).reshape(4, 4)
    img = ps.Image(a, 0.3)
    img2 = img.replace(pixel_size_A=0.6)
    assert img.pixel_size_A == 0.3 and img2.pixel_size_A == 0.6
    with pytest.raises(AttributeError):
        img.pixel_size_A = 1.0  # frozen


def test_repr_is_short():
    r = repr(ps.Image(np.zeros((512, 512)), 0.25, dose_e_per_A2=1e4))
    assert r == "<Image 512×512 float64, 0.25 Å/px, 1e+04 e⁻/Å²>"


def test_time_must_not_go_backwards():
    with pytest.raises(ps.ParameterError, match="time_s"):
        ps.Series(np.zeros((3, 4, 4)), 1.0, time_s=[0, 2, 1])


def test_to_xarray_coordinates_follow_pixel_centre_convention():
    pytest.importorskip("xarray")
    img = ps.Image(np.zeros((3, 4)), 0.5, origin_A=(1.0, 2.0))
    da = img.to_xarray()
    np.testing.assert_allclose(da.x.values, [1.0, 1.5, 2.0, 2.5])
    np.testing.assert_allclose(da.y.values, [2.0, 2.5, 3.0])


def test_hyperspy_roundtrip():
    pytest.importorskip("hyperspy")
    img = ps.Image(np.random.default_rng(0).random((6, 7)), 0.3109, dose_e_per_A2=2e4)
    sig = img.to_hyperspy()
    assert sig.axes_manager.signal_axes[0].units == "Å"
    back = ps.Image.from_hyperspy(sig)
    np.testing.assert_array_equal(back.data, img.data)
    assert back.pixel_size_A == pytest.approx(0.3109) and back.dose_e_per_A2 == 2e4

    s = ps.Series(
        np.ones((3, 4, 4)),
        0.5,
        time_s=[0, 1, 2],
        dose_e_per_A2=5.0,
        temperature_K=[300, 350, 400],
        gas="O2",
    )
    sb = ps.from_hyperspy(s.to_hyperspy())
    assert isinstance(sb, ps.Series)
    np.testing.assert_allclose(sb.time_s, [0, 1, 2])
    np.testing.assert_allclose(sb.temperature_K, [300, 350, 400])
    assert sb.gas == "O2"

    t = ps.TiltSeries(np.ones((3, 4, 4)), [-50, 0, 50], 3.36, tilt_axis_deg=-2.79)
    tb = ps.from_hyperspy(t.to_hyperspy())
    assert isinstance(tb, ps.TiltSeries)
    np.testing.assert_allclose(tb.angles_deg, [-50, 0, 50])
    assert tb.tilt_axis_deg == pytest.approx(-2.79)


def test_hyperspy_nm_axes_are_converted_to_angstrom():
    hs = pytest.importorskip("hyperspy.api")
    sig = hs.signals.Signal2D(np.zeros((4, 4)))
    for ax in sig.axes_manager.signal_axes:
        ax.scale, ax.units = 0.0127, "nm"
    assert ps.from_hyperspy(sig).pixel_size_A == pytest.approx(0.127)


def test_series_frame_carries_the_detector_calibration(tmp_path):
    """Audit: `atoms fit --frame` of a series with gain 4 and offset 100 warned "detector gain
    and offset unknown" (the series' frame dropped them) and normalised the raw counts:
    Pb-Br cross-sections 4x too high, 844 atoms tracked for ~200."""
    import pandas as pd

    from perovstem.cli.main import main

    s = ps.Series(np.ones((2, 16, 16)), 0.5, metadata={"gain": 4.0, "offset": 100.0})
    assert {k: s.frame(1).metadata[k] for k in ("gain", "offset")} == {
        "gain": 4.0,
        "offset": 100.0,
    }
    assert "gain" not in ps.Series(np.ones((2, 16, 16)), 0.5).frame(0).metadata
    out = tmp_path / "g.npz"
    sim = ["simulate", "series", "-o", str(out), "--frames", "2", "--edge-A", "30"]
    assert main([*sim, "--seed", "2", "--gain", "4", "--offset", "100"]) == 0
    fit = ["atoms", "fit", str(out), "--frame", "1", "--cell", "cspbbr3", "--normalize"]
    assert main([*fit, "-o", str(tmp_path / "a.parquet")]) == 0
    given = ["--gain", "4", "--offset", "100", "-o", str(tmp_path / "b.parquet")]
    assert main([*fit, *given]) == 0
    a, b = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in "ab")
    med = [float(t.loc[t["type"] == "PbBr", "scs"].median()) for t in (a, b)]
    assert med[0] == pytest.approx(med[1], rel=1e-6), med
    from perovstem.io import read_table

    # ... and the frame and its time go into the table (`atoms track` checks their order)
    attrs = read_table(tmp_path / "a.parquet").attrs
    assert attrs["frame"] == 1 and attrs["time_s"] == pytest.approx(1.0)
