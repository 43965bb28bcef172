"""Loading real files: the shared tomography/StatSTEM data and small vendor-format fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import perovstem as ps
from perovstem.errors import CalibrationError

FORMATS = Path(__file__).resolve().parents[1] / "data" / "formats"


def test_needle_mrc_tilts_from_fei_extended_header(tomo_data):
    ts = ps.load(tomo_data / "etspy_needle" / "HAADF.mrc")
    assert isinstance(ts, ps.TiltSeries)
    assert ts.shape == (77, 256, 256)
    assert ts.data.dtype == np.int16
    # 77 angles −76…+76° in 2° steps, read from the FEI extended header
    np.testing.assert_allclose(ts.angles_deg, np.arange(-76, 77, 2))
    assert ts.pixel_size_A == pytest.approx(33.6, rel=1e-6)
    assert ts.metadata["high_tension_kV"] == pytest.approx(300)


def test_needle_rawtlt_agrees_with_header(tomo_data):
    from perovstem.io._mrc import read_angle_file

    ang = read_angle_file(tomo_data / "etspy_needle" / "HAADF.rawtlt")
    ts = ps.load(tomo_data / "etspy_needle" / "HAADF.mrc")
    np.testing.assert_allclose(ts.angles_deg, ang)


def test_serialem_frames_take_pixel_size_and_times_from_mdoc(tomo_data):
    s = ps.load(tomo_data / "etspy_serialem" / "test_000.mrc")
    assert isinstance(s, ps.Series)  # tilt ≈ 0 for both frames: a time series, not a tilt series
    assert s.shape == (2, 1024, 1024)
    assert s.pixel_size_A == pytest.approx(7.88)
    np.testing.assert_allclose(s.time_s, [0.0, 2.0])
    assert s.metadata["exposure_time_s"] == [0.524, 0.524]
    assert s.metadata["counts_per_electron"] == pytest.approx(1.65)
    # "[T =     Tilt axis angle = -90.0, binning = 2 ...]" title line, kept as written
    assert s.metadata["serialem_tilt_axis_angle_deg"] == pytest.approx(-90.0)


def test_serialem_frames_as_tilt_series_name_the_flat_mdoc_angles(tomo_data):
    from perovstem.errors import FileFormatError

    with pytest.raises(
        FileFormatError, match=r"test_000\.mdoc' holds 2 tilt angle\(s\), all within 0\.5°"
    ):
        ps.load(tomo_data / "etspy_serialem" / "test_000.mrc", kind="tilt")


def test_serialem_lazy_frames(tomo_data):
    s = ps.load(tomo_data / "etspy_serialem" / "test_000.mrc", lazy=True)
    assert hasattr(s.data, "dask")
    eager = ps.load(tomo_data / "etspy_serialem" / "test_000.mrc")
    np.testing.assert_array_equal(s.frame(1).data, eager.data[1])


def test_etspy_aligned_hspy(tomo_data):
    ts = ps.load(tomo_data / "etspy_needle" / "HAADF_Aligned.hspy")
    assert isinstance(ts, ps.TiltSeries)
    assert ts.shape == (77, 256, 256)
    assert ts.pixel_size_A == pytest.approx(33.6, rel=1e-6)  # stored in nm, converted to Å
    # ETSpy rotated the data by its axis (-2.79°) and kept the rotation as `tiltaxis`: the
    # data's axis is along x now, the rotation is history (re-aligning it finds -0.14°)
    assert ts.tilt_axis_deg == 0.0
    assert ts.metadata["tilt_axis_applied_deg"] == pytest.approx(-2.79, abs=0.01)
    from perovstem.cli.files import describe

    row = dict(describe(ts))["tilt axis"]
    assert row.startswith("0°") and "turned the data by -2.793°" in row
    assert ts.shifts_px.shape == (77, 2)
    assert np.abs(ts.shifts_px).max() > 10  # ETSpy's shifts reach ~39 px
    np.testing.assert_allclose(ts.angles_deg, np.arange(-76, 77, 2))


@pytest.mark.parametrize(
    ("name", "dx", "shape"),
    [
        ("Example3_CsPbBr3", 0.3109, (241, 246)),
        ("Example2_Pb", 0.22, (291, 341)),
        ("ExampleCsPbBr3", 0.3109, (241, 246)),
        ("ExamplePb", 0.22, (291, 341)),
    ],
)
def test_statstem_npz(statstem_data, name, dx, shape):
    img = ps.load(statstem_data / "npz" / f"{name}.npz")
    assert isinstance(img, ps.Image)
    assert img.shape == shape
    assert img.pixel_size_A == pytest.approx(dx)


def test_statstem_mat_matches_npz(statstem_data):
    a = ps.load(statstem_data / "mat" / "ExampleCsPbBr3.mat")
    b = ps.load(statstem_data / "npz" / "ExampleCsPbBr3.npz")
    np.testing.assert_array_equal(a.data, b.data)
    assert a.pixel_size_A == b.pixel_size_A


def test_statstem_example_converts_one_based_coordinates(statstem_data):
    ex = ps.io.load_statstem(statstem_data / "npz" / "Example3_CsPbBr3.npz")
    raw = np.load(statstem_data / "npz" / "Example3_CsPbBr3.npz")
    dx = float(raw["dx_angstrom"])
    # StatSTEM x = k·dx for k = 1…; perovstem x = j·dx for j = 0…: shift by exactly one pixel
    np.testing.assert_allclose(
        ex.coordinates[["x_A", "y_A"]].to_numpy(), raw["input_coordinates_xy_angstrom"] - dx
    )
    assert len(ex.reference) == 415
    assert set(ex.reference["type"]) == {"PbBr", "Cs"}
    assert ex.background == pytest.approx(8712.88, rel=1e-5)
    # The stored StatSTEM model peaks where the converted coordinates say (0-based pixels).
    model = raw["ref_model"]
    i = int(np.argmax(ex.reference["eta"].to_numpy()))
    x, y = ex.reference.iloc[i][["x_A", "y_A"]]
    r, c = np.unravel_index(
        np.argmax(model[int(y / dx) - 3 : int(y / dx) + 4, int(x / dx) - 3 : int(x / dx) + 4]),
        (7, 7),
    )
    assert abs(int(y / dx) - 3 + r - y / dx) <= 0.5 + 1e-9
    assert abs(int(x / dx) - 3 + c - x / dx) <= 0.5 + 1e-9


def test_statstem_hmm_input(statstem_data):
    hmm = ps.io.load_statstem_hmm(statstem_data / "npz" / "example_HMM_input.npz")
    assert hmm["series"].shape == (5, 361, 361)
    assert hmm["scs"].shape == (5, 117)
    assert hmm["library_scs"].size == 25


def test_dm3_calibrated_haadf():
    img = ps.load(FORMATS / "haadf_calibrated.dm3")
    assert isinstance(img, ps.Image)
    # the file stores its scale in µm; perovstem reports Å
    from rsciio.digitalmicrograph import file_reader

    ax = file_reader(str(FORMATS / "haadf_calibrated.dm3"))[0]["axes"][-1]
    assert ax["units"] == "µm"
    assert img.pixel_size_A == pytest.approx(ax["scale"] * 1e4)


def test_dm3_stack_is_series():
    s = ps.load(FORMATS / "stack.dm3")
    assert isinstance(s, ps.Series)
    assert s.n_frames == 3
    # a GMS stack-builder time series: its stack axis has no unit (no times before); each
    # plane's "added @ tick" (951112745, 951114882, 951117020 ms) gives the frame times,
    # checked against the planes' clock strings (5:00:27, 5:00:29, 5:00:32 PM)
    np.testing.assert_allclose(s.time_s, [0.0, 2.137, 4.275])
    assert "added @ tick" in s.metadata["time_source"]


def test_dm_plane_ticks_of_another_unit_are_not_taken_for_ms():
    from perovstem.io.read import _dm_plane_times_s

    def om(ticks, clocks):
        planes = {
            f"TagGroup{k}": {"added @ tick": t, "added @ time": c}
            for k, (t, c) in enumerate(zip(ticks, clocks, strict=True))
        }
        return {"ImageList": {"TagGroup0": {"ImageTags": {"plane info": planes}}}}

    ok = om([5000, 7000, 9000], ["11:59:59 PM", "12:00:01 AM", "12:00:03 AM"])
    t, _ = _dm_plane_times_s(ok, 3)  # across midnight
    np.testing.assert_allclose(t, [0, 2, 4])
    # ticks of 100 µs (2 s = 20000) read as ms would be 20 s per frame; the clocks say 2 s
    slow = om([500, 20500, 40500], ["1:00:00", "1:00:02", "1:00:04"])
    assert _dm_plane_times_s(slow, 3) is None
    # a plane without its stamp, or ticks that do not increase
    assert _dm_plane_times_s(om([5000, 7000], ["1:00:00", "1:00:02"]), 3) is None
    assert _dm_plane_times_s(om([5000, 5000, 9000], ["1:00:00"] * 2 + ["1:00:04"]), 3) is None


@pytest.mark.parametrize("name", ["uncalibrated.dm3", "uncalibrated.dm4"])
def test_uncalibrated_dm_needs_pixel_size(name):
    with pytest.raises(CalibrationError, match="pixel_size"):
        ps.load(FORMATS / name)
    img = ps.load(FORMATS / name, pixel_size=0.2)
    assert img.pixel_size_A == 0.2
    assert img.metadata["pixel_size_source"] == "user"


def test_tia_ser_image_and_series():
    img = ps.load(FORMATS / "128x128-TEM_search_1.ser")
    assert isinstance(img, ps.Image) and img.shape == (128, 128)
    assert img.pixel_size_A > 0
    s = ps.load(FORMATS / "64x64x5_TEM_preview_1.ser")
    assert isinstance(s, ps.Series) and s.shape == (5, 64, 64)


def test_emd_without_calibration_is_an_error_unless_given():
    with pytest.raises(CalibrationError):
        ps.load(FORMATS / "ncem_example_image.emd")
    img = ps.load(FORMATS / "ncem_example_image.emd", pixel_size=1.5)
    assert img.pixel_size_A == 1.5


def test_dose_from_beam_metadata_hyperspy_and_velox_styles():
    from perovstem.io.read import beam_conditions, dose_per_frame

    hs_md = {
        "Acquisition_instrument": {
            "TEM": {"beam_current": 0.05, "beam_energy": 300, "Detector": {"dwell_time": 2e-6}}
        }
    }
    b = beam_conditions(hs_md, {})
    assert b["beam_current_A"] == pytest.approx(5e-11)  # nA converted to A
    assert b["dwell_time_s"] == 2e-6 and b["high_tension_kV"] == 300.0
    velox_om = {"Optics": {"LastMeasuredScreenCurrent": "5e-11"}, "Scan": {"DwellTime": "2e-6"}}
    assert beam_conditions({}, velox_om) == {"beam_current_A": 5e-11, "dwell_time_s": 2e-6}
    # 50 pA for 2 µs on a 0.5 Å pixel: 624 electrons over 0.25 Å²
    assert dose_per_frame(5e-11, 2e-6, 0.5) == pytest.approx(5e-11 * 2e-6 / 1.602176634e-19 / 0.25)
    assert dose_per_frame(5e-11, 2e-6, 0.5) == pytest.approx(2496.6, rel=1e-4)


def test_statstem_class_based_mat_gets_a_clear_message(statstem_data):
    from perovstem.errors import FileFormatError

    with pytest.raises(FileFormatError, match="MATLAB class objects"):
        ps.load(statstem_data / "mat" / "Example_PtIr.mat")


def test_dm_and_stack_instrument_entries_are_read():
    # RosettaSciIO's file_reader leaves its `mapping` unapplied: the beam energy, dwell
    # time and magnification of DM files stayed in the original metadata (no energy: a
    # 200 kV series was counted with the 300 kV cross-section libraries)
    from perovstem._data import voltage_kV_of

    img = ps.load(FORMATS / "haadf_calibrated.dm3")  # Microscope Info.Voltage 200000 V
    md = img.metadata
    assert md["high_tension_kV"] == 200.0 and voltage_kV_of(md) == 200.0
    assert md["dwell_time_s"] == pytest.approx(1.4e-6)  # DigiScan Sample Time, µs
    assert md["magnification"] == 1.3e6
    assert "beam_current_A" not in md  # its Probe Current (nA) is 0: not recorded
    # a stack keeps them under its source's "Tags at creation"
    s = ps.load(FORMATS / "stack.dm3")
    assert s.metadata["high_tension_kV"] == 200.0
    # the date strings of the locale are not taken (the FILETIME gives the time)
    assert "date" not in md["original"].get("General", {})


@pytest.mark.parametrize("integrate", [0, 1])
def test_dm_dose_from_probe_current_and_dwell_unless_digiscan_summed_frames(monkeypatch, integrate):
    # a DM image whose microscope reports 50 pA: dose = I·t_dwell/(e·px²) from the
    # DigiScan Sample Time (1.4 µs); with Integrate Frames on, DigiScan summed 5 passes
    # into the image, so one pass's dwell time is not its dose: none, said
    import rsciio.digitalmicrograph as dm

    real = dm.file_reader

    def reader(*a, **kw):
        sigs = real(*a, **kw)  # a fresh read each time: changed in place
        tags = sigs[0]["original_metadata"]["ImageList"]["TagGroup0"]["ImageTags"]
        tags["Microscope Info"]["Probe Current (nA)"] = 0.05
        tags["DigiScan"]["Integrate Frames"] = integrate
        return sigs

    monkeypatch.setattr(dm, "file_reader", reader)
    if integrate:
        with pytest.warns(UserWarning, match="DigiScan summed 5 frames"):
            img = ps.load(FORMATS / "haadf_calibrated.dm3")
        assert img.dose_e_per_A2 is None
    else:
        img = ps.load(FORMATS / "haadf_calibrated.dm3")
        assert img.metadata["beam_current_A"] == pytest.approx(5e-11)
        want = 5e-11 * 1.4e-6 / 1.602176634e-19 / img.pixel_size_A**2
        assert img.dose_e_per_A2 == pytest.approx(want, rel=1e-6)


def test_tia_acquisition_and_frame_times_from_the_element_times():
    # each TIA element keeps its acquisition Time (Unix s, to the second); unread before
    s = ps.load(FORMATS / "64x64x5_TEM_preview_1.ser")
    assert s.metadata["acquisition_start_utc"] == "2016-02-21T16:49:05+00:00"
    assert s.time_s is None  # its 5 frames share one second: no frame times
    from perovstem.io.read import _tia_times

    out = {"metadata": {}}
    om = {"ser_header_parameters": {"Time": np.array([1456073345, 1456073347, 1456073349])}}
    _tia_times(om, 3, out)
    np.testing.assert_allclose(out["time_s"], [0, 2, 4])
    assert "TIA" in out["metadata"]["time_source"]
