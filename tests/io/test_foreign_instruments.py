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


def _fei_mrc(path, exttyp, dose_e_per_A2, *, days0=46000.0):
    """A vendor-style FEI1/FEI2 stack: real dates (days since 1899-12-30), dose in e⁻/m²."""
    import mrcfile
    from mrcfile.dtypes import get_ext_header_dtype

    n = len(dose_e_per_A2)
    dt = get_ext_header_dtype(exttyp, "<")
    rec = np.zeros(n, dtype=dt)
    rec["Metadata size"] = dt.itemsize
    rec["Application"] = b"Velox"
    rec["Pixel size X"] = rec["Pixel size Y"] = 2e-11
    rec["Dose"] = np.asarray(dose_e_per_A2, float) * 1e20
    rec["Timestamp"] = days0 + np.arange(n) * 2.0 / 86400
    rec["Bitmask 1"] = (1 << 0) | (1 << 3) | (1 << 6) | (1 << 14) | (1 << 15)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.stack([A[:16, :16]] * n))
        m.set_extended_header(rec)
        m.header.exttyp = exttyp


@pytest.mark.parametrize("exttyp", [b"FEI1", b"FEI2"])
def test_fei_header_dose_and_times_from_a_vendor_file(tmp_path, exttyp):
    p = tmp_path / "velox.mrc"
    _fei_mrc(p, exttyp, [100.0, 100.0, 120.0])
    s = ps.load(p)
    assert s.pixel_size_A == pytest.approx(0.2)
    np.testing.assert_allclose(s.dose_e_per_A2, [100, 100, 120])
    np.testing.assert_allclose(s.time_s, [0, 2, 4], atol=1e-5)  # relative to the first image


@pytest.mark.parametrize("bad", [-100.0, float("nan"), 1e9])
def test_fei_header_absurd_dose_is_dropped_with_a_warning(tmp_path, bad):
    # old code: negative/NaN silently dropped, 1e9 e⁻/Å² per image used
    p = tmp_path / "bad_dose.mrc"
    _fei_mrc(p, b"FEI1", [100.0, bad, 100.0])
    with pytest.warns(UserWarning, match=r"bad_dose\.mrc.*Dose of image 1"):
        s = ps.load(p)
    assert s.dose_e_per_A2 is None


@pytest.mark.parametrize("units", ["1/nm", "1 / nm", "1 / µm", "nm^-1"])
def test_reciprocal_calibration_is_named_and_not_overridden(tmp_path, units):
    # a diffraction pattern passed by mistake: old code said "no usable calibration" and
    # took it as a real-space image once pixel_size= was given
    from perovstem.errors import CalibrationError

    p = tmp_path / "dp.hspy"
    axes = [{**a, "units": units, "scale": 0.17} for a in SIG]
    _hspy(p, A, axes, title="Diffraction")
    for kw in ({}, {"pixel_size": 0.2}):
        with pytest.raises(CalibrationError, match=r"dp\.hspy.*reciprocal units"):
            ps.load(p, **kw)


def _velox_like(title, dtype=np.uint16, units="pm", scale=99.6):
    axes = [
        {
            "name": n,
            "size": 30 if n == "y" else 40,
            "scale": scale,
            "offset": 0.0,
            "units": units,
            "navigate": False,
        }
        for n in ("y", "x")
    ]
    return {
        "data": (A * 1000).astype(dtype),
        "axes": axes,
        "metadata": {"General": {"title": title, "original_filename": "x.emd"}},
        "original_metadata": {},
    }


@pytest.fixture
def fake_emd(tmp_path, monkeypatch):
    """An .emd path whose reader returns the given signal dicts (as RosettaSciIO's Velox
    reader does for a multi-detector acquisition)."""
    import rsciio.emd

    def make(signals):
        p = tmp_path / "multi.emd"
        p.write_bytes(b"placeholder")
        monkeypatch.setattr(rsciio.emd, "file_reader", lambda *a, **k: signals)
        return p

    return make


def test_haadf_is_chosen_among_detectors(fake_emd):
    p = fake_emd([_velox_like("BF"), _velox_like("DF4-A"), _velox_like("HAADF")])
    img = ps.load(p)
    assert img.metadata["original"]["General"]["title"] == "HAADF"
    assert img.pixel_size_A == pytest.approx(0.996)


def test_several_detectors_without_haadf_are_refused_unless_chosen(fake_emd):
    # old code: silently the first image (here the DPC difference "B-D")
    from perovstem.errors import ParameterError

    p = fake_emd([_velox_like("B-D", np.float32), _velox_like("DF4-A"), _velox_like("iDPC")])
    with pytest.raises(DataError, match=r"multi\.emd.*none is titled HAADF.*'DF4-A'.*signal="):
        ps.load(p)
    assert ps.load(p, signal="df4-a").metadata["original"]["General"]["title"] == "DF4-A"
    with pytest.raises(ParameterError, match="`signal`='ADF' matches 0"):
        ps.load(p, signal="ADF")


def test_fft_beside_a_single_real_space_image_is_not_a_candidate(fake_emd):
    fft = _velox_like("Half FFT", np.complex64, units="1 / µm", scale=0.53)
    p = fake_emd([fft, _velox_like("DF-S")])
    assert ps.load(p).metadata["original"]["General"]["title"] == "DF-S"


def test_cli_signal_option_picks_the_detector(fake_emd, tmp_path, capsys):
    from perovstem.cli.main import main

    sig = _velox_like("DF4-B")
    sig["original_metadata"] = {
        "Optics": {"LastMeasuredScreenCurrent": "5e-11"},
        "Scan": {"DwellTime": "2e-6"},
    }
    p = fake_emd([_velox_like("DF4-A"), sig])
    assert main(["info", str(p)]) == 2
    assert "none is titled HAADF" in capsys.readouterr().err
    assert main(["info", str(p), "--signal", "DF4-B"]) == 0
    out = capsys.readouterr().out
    assert "DF4-B" in out and "Optics.LastMeasuredScreenCurrent" in out
    dst = tmp_path / "b.npz"
    assert main(["convert", str(p), str(dst), "--signal", "DF4-B"]) == 0
    assert ps.load(dst).dose_e_per_A2 == pytest.approx(5e-11 * 2e-6 / 1.602176634e-19 / 0.996**2)


def test_velox_reader_gets_images_only_and_a_missing_package_is_named(tmp_path, monkeypatch):
    # RosettaSciIO decodes a Velox spectrum image in full unless told images only, and wants
    # 'sparse' for any file that holds one (raised without a module name)
    import rsciio.emd

    from perovstem.errors import OptionalDependencyError

    seen = {}

    def reader(*args, **kwargs):
        seen.update(kwargs)
        raise ModuleNotFoundError(
            "The 'sparse' library was not found. To load EDS spectrum image data from "
            "Velox EMD files, 'sparse' must be installed."
        )

    monkeypatch.setattr(rsciio.emd, "file_reader", reader)
    p = tmp_path / "si.emd"
    p.write_bytes(b"placeholder")
    with pytest.raises(OptionalDependencyError, match=r"si\.emd.*pip install sparse"):
        ps.load(p)
    assert seen["select_type"] == "images"


def _serialem(tmp_path, n_frames, sections):
    """A stack and its SerialEM .mdoc (the documented text layout: key = value lines,
    one [ZValue = i] section per image)."""
    import mrcfile

    p = tmp_path / "series.mrc"
    with mrcfile.new(p, overwrite=True) as m:
        m.set_data(np.stack([A[:16, :16]] * n_frames))
    txt = "PixelSpacing = 2.5\nVoltage = 300\nImageFile = series.mrc\n\n"
    txt += "[T = SerialEM: Digitized on a Krios   21-Oct-24  10:00:00    ]\n\n"
    for i, sec in enumerate(sections):
        txt += f"[ZValue = {i}]\n" + "".join(f"{k} = {v}\n" for k, v in sec.items()) + "\n"
    (tmp_path / "series.mrc.mdoc").write_text(txt)
    return p


def test_serialem_exposure_dose_is_read_and_named(tmp_path):
    secs = [{"DateTime": f"21-Oct-24  10:00:0{2 * i}", "ExposureDose": 2.5 + i} for i in range(3)]
    s = ps.load(_serialem(tmp_path, 3, secs))
    np.testing.assert_allclose(s.time_s, [0, 2, 4])
    np.testing.assert_allclose(s.dose_e_per_A2, [2.5, 3.5, 4.5])
    assert "ExposureDose" in s.metadata["dose_source"]


def test_tilt_series_keeps_its_exposure_dose(tmp_path, capsys):
    """A TiltSeries has no dose field: the .mdoc's ExposureDose was dropped while
    `dose_source` still named it.  It is kept per projection in the metadata, shown by
    `perovstem info` and written again into an FEI-header .mrc."""
    from perovstem.cli.main import main
    from perovstem.io.write import projection_dose_e_per_A2

    secs = [
        {"TiltAngle": -40 + 20 * i, "DateTime": f"21-Oct-24  10:00:0{i}", "ExposureDose": 2 + i}
        for i in range(5)
    ]
    t = ps.load(_serialem(tmp_path, 5, secs))
    assert isinstance(t, ps.TiltSeries)
    np.testing.assert_allclose(projection_dose_e_per_A2(t), [2, 3, 4, 5, 6])
    assert main(["info", str(tmp_path / "series.mrc")]) == 0
    assert "20 e⁻/Å² in all (2 … 6 per projection)" in capsys.readouterr().out
    ps.io.save_image(t, tmp_path / "copy.mrc")
    np.testing.assert_allclose(
        projection_dose_e_per_A2(ps.load(tmp_path / "copy.mrc")), [2, 3, 4, 5, 6]
    )


def test_serialem_uncalibrated_or_absurd_dose_gives_none(tmp_path):
    zero = [{"ExposureDose": 0} for _ in range(3)]
    assert ps.load(_serialem(tmp_path, 3, zero)).dose_e_per_A2 is None
    bad = [{"ExposureDose": d} for d in (2.5, -1, 2.5)]
    with pytest.warns(UserWarning, match=r"series\.mrc\.mdoc.*ExposureDose"):
        assert ps.load(_serialem(tmp_path, 3, bad)).dose_e_per_A2 is None


def test_mdoc_with_fewer_sections_than_images_names_both_files(tmp_path):
    # an aborted acquisition: old code raised "`time_s` must have one value per frame"
    secs = [{"TiltAngle": -30 + 20 * i, "DateTime": f"21-Oct-24  10:00:0{i}"} for i in range(3)]
    from perovstem.errors import FileFormatError

    with pytest.raises(FileFormatError, match=r"series\.mrc\.mdoc.*3 \[ZValue\].*4 images"):
        ps.load(_serialem(tmp_path, 4, secs))


def test_kind_tilt_on_mdoc_with_flat_angles_says_what_it_found(tmp_path):
    # the .mdoc exists and holds angles, all ≈ 0°: old code said "no tilt angles in the file
    # or a .rawtlt/.tlt/.mdoc side file"
    from perovstem.errors import FileFormatError

    secs = [{"TiltAngle": 0.1 * i, "DateTime": f"21-Oct-24  10:00:0{i}"} for i in range(4)]
    p = _serialem(tmp_path, 4, secs)
    assert isinstance(ps.load(p), ps.Series)
    with pytest.raises(
        FileFormatError,
        match=r"series\.mrc\.mdoc' holds 4 tilt angle\(s\), all within 0\.5° .*frame series",
    ):
        ps.load(p, kind="tilt")
    # a real tilt range still loads as a tilt series
    secs = [{"TiltAngle": -30 + 20 * i, "DateTime": f"21-Oct-24  10:00:0{i}"} for i in range(4)]
    ts = ps.load(_serialem(tmp_path, 4, secs), kind="tilt")
    np.testing.assert_allclose(ts.angles_deg, [-30, -10, 10, 30])


def test_file_pixel_size_outside_1pm_to_1mm_is_a_unit_mistake(tmp_path):
    import mrcfile

    from perovstem.errors import CalibrationError

    p = tmp_path / "metres.mrc"
    with mrcfile.new(p) as m:
        m.set_data(A[:16, :16])
        m.voxel_size = 2e-11  # metres written into the Å field
    with pytest.raises(CalibrationError, match=r"metres\.mrc.*2e-11 Å is outside"):
        ps.load(p)
    assert ps.load(p, pixel_size=0.2).pixel_size_A == 0.2
    h = tmp_path / "one_metre.hspy"
    _hspy(h, A, [{**a, "units": "m", "scale": 1.0} for a in SIG])
    with pytest.raises(CalibrationError, match=r"one_metre\.hspy.*1e\+10 Å is outside"):
        ps.load(h)


def test_file_content_the_data_model_refuses_names_the_file(tmp_path):
    # FEI1 time stamps out of order (frames stored out of acquisition order): the old
    # message was "`time_s` must be non-decreasing over frames", without the file
    import mrcfile
    from mrcfile.dtypes import get_ext_header_dtype

    dt = get_ext_header_dtype(b"FEI1", "<")
    rec = np.zeros(3, dtype=dt)
    rec["Metadata size"] = dt.itemsize
    rec["Pixel size X"] = rec["Pixel size Y"] = 2e-11
    rec["Timestamp"] = 46000 + np.array([0.0, 4.0, 2.0]) / 86400
    rec["Bitmask 1"] = (1 << 0) | (1 << 14) | (1 << 15)
    p = tmp_path / "shuffled.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.stack([A[:16, :16]] * 3))
        m.set_extended_header(rec)
        m.header.exttyp = b"FEI1"
    with pytest.raises(DataError, match=r"shuffled\.mrc.*time_s.*non-decreasing"):
        ps.load(p)


def _de(tmp_path, stem, info, n=4):
    import mrcfile

    p = tmp_path / f"{stem}.mrc"
    with mrcfile.new(p, overwrite=True) as m:
        m.set_data(np.stack([A[:16, :16]] * n) if n else A[:16, :16])
    lines = [f"{k:<64}= {v}" for k, v in info.items()]
    (tmp_path / "20240301_00007_info.txt").write_text("\n".join(lines) + "\n")
    return p


TEM_MOVIE = {
    "Frames Per Second": 400,
    "Autosave Movie Sum Count": 4,
    "Scan - Enable": "Disable",
    "Instrument Project Camera Length (centimeters)": -1,
    "Specimen Pixel Size X (nanometers)": 0.05,
    "Specimen Pixel Size Y (nanometers)": 0.05,
}


def test_direct_electron_tem_movie_takes_pixel_size_and_frame_times_from_info(tmp_path):
    # old code: "no usable spatial calibration"
    s = ps.load(_de(tmp_path, "20240301_00007_movie", TEM_MOVIE))
    assert type(s) is ps.Series and s.pixel_size_A == pytest.approx(0.5)
    np.testing.assert_allclose(s.time_s, [0, 0.01, 0.02, 0.03])  # 4 camera frames / 400 fps
    uncal = {**TEM_MOVIE, "Specimen Pixel Size X (nanometers)": -1}
    from perovstem.errors import CalibrationError

    with pytest.raises(CalibrationError):
        ps.load(_de(tmp_path, "20240301_00007_movie", uncal))


def test_direct_electron_scan_movie_is_refused_as_diffraction_patterns(tmp_path):
    info = {**TEM_MOVIE, "Scan - Enable": "Enable", "Scan - Size X": 2, "Scan - Size Y": 2}
    with pytest.raises(DataError, match=r"00007_movie\.mrc.*STEM scan.*diffraction patterns"):
        ps.load(_de(tmp_path, "20240301_00007_movie", info))
    img = ps.load(_de(tmp_path, "20240301_00007_0_Virt 0_sum", info, n=0))
    assert img.pixel_size_A == pytest.approx(0.5)


def test_mrc_writer_says_which_metadata_it_drops(tmp_path):
    # a uint16 series with its detector gain/offset and a temperature: .mrc has no field for
    # them and re-loading it lost them silently (found by the in-situ QA: Pb0 over-counts)
    import warnings

    import perovstem as ps
    from perovstem import Series

    s = Series(
        np.zeros((2, 16, 16), np.uint16),
        0.5,
        dose_e_per_A2=100.0,
        time_s=np.arange(2.0),
        temperature_K=np.array([300.0, 310.0]),
        metadata={"gain": 4.0, "offset": 2000.0},
    )
    with pytest.warns(UserWarning, match="not gain, offset, temperature_K"):
        ps.io.save_image(s, tmp_path / "s.mrc")
    assert ps.load(tmp_path / "s.mrc").metadata.get("gain") is None  # the documented loss
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: no warning
        ps.io.save_image(Series(np.zeros((2, 16, 16), np.uint16), 0.5), tmp_path / "t.mrc")
